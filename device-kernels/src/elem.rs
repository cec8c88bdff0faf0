//! The 16-bit element types the kernels are instantiated for, as seen by a kernel:
//! eight of them travel in one 16-byte vector and are computed on in f32.

use crate::intrinsics::{
    bf16x2_to_f32x2, cvt_rn_bf16x2_f32, cvt_rn_f16x2_f32, f16x2_to_f32x2, fma_rn_bf16x2, fma_rn_f16x2, mma_m16n8k16_bf16,
    mma_m16n8k16_f16, V4,
};

pub trait Elem {
    fn to_f32x2(x: u32) -> (f32, f32);
    fn from_f32x2(lo: f32, hi: f32) -> u32;
    /// `d = a b + c`, m16n8k16, f32 accumulate, inputs of this type.
    fn mma(a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4];
    /// Two e4m3 bytes in the high byte of each 16-bit half (`0xBB__AA__`) as two values of
    /// this type (exact: every e4m3 value is one of each 16-bit type; the low bytes are
    /// ignored). The byte's sign is already this type's; its 7 magnitude bits shift under
    /// this type's exponent field, then one multiply by a power of two re-biases the exponent
    /// (e4m3's bias is 7) and turns e4m3 subnormals into normals. A NaN byte (0x7F, 0xFF)
    /// comes out as +-480: `kv::E4m3` makes it a NaN where one is.
    fn from_e4m3_high_bytes(x: u32) -> u32;
    /// Whether this is f16 (tells the two types apart at compile time).
    const IS_F16: bool;
    /// The largest finite value.
    const MAX: f32;

    #[inline(always)]
    fn unpack8(v: V4) -> [f32; 8] {
        let mut o = [0.0f32; 8];
        for i in 0..4 {
            let (a, b) = Self::to_f32x2(v.0[i]);
            o[2 * i] = a;
            o[2 * i + 1] = b;
        }
        o
    }

    #[inline(always)]
    fn pack8(x: &[f32; 8]) -> V4 {
        let mut v = V4::ZERO;
        for i in 0..4 {
            v.0[i] = Self::from_f32x2(x[2 * i], x[2 * i + 1]);
        }
        v
    }
}

pub struct Bf16;
pub struct F16;

/// A word of two `From` values as two `To` values: itself for the same type, else through
/// f32, rounded to nearest even and clamped to `To`'s finite range (a bf16 query beyond f16's
/// 65504 saturates; NaN stays NaN).
#[inline(always)]
pub fn convert_word<From: Elem, To: Elem>(w: u32) -> u32 {
    if From::IS_F16 == To::IS_F16 {
        return w;
    }
    let (lo, hi) = From::to_f32x2(w);
    To::from_f32x2(lo.clamp(-To::MAX, To::MAX), hi.clamp(-To::MAX, To::MAX))
}


impl Elem for Bf16 {
    const IS_F16: bool = false;
    const MAX: f32 = 3.389_531_4e38;
    #[inline(always)]
    fn from_e4m3_high_bytes(x: u32) -> u32 {
        // bf16: 8 exponent bits, 7 mantissa: the magnitude to bits 4-10 (>> 4); x 2^120.
        let h = (x & 0x8000_8000) | ((x >> 4) & 0x07F0_07F0);
        fma_rn_bf16x2(h, 0x7B80_7B80, 0x8000_8000)
    }
    #[inline(always)]
    fn to_f32x2(x: u32) -> (f32, f32) {
        bf16x2_to_f32x2(x)
    }
    #[inline(always)]
    fn from_f32x2(lo: f32, hi: f32) -> u32 {
        cvt_rn_bf16x2_f32(lo, hi)
    }
    #[inline(always)]
    fn mma(a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
        mma_m16n8k16_bf16(a, b, c)
    }
}

impl Elem for F16 {
    const IS_F16: bool = true;
    const MAX: f32 = 65504.0;
    #[inline(always)]
    fn from_e4m3_high_bytes(x: u32) -> u32 {
        // f16: 5 exponent bits, 10 mantissa: the magnitude to bits 7-13 (>> 1); x 2^8.
        let h = (x & 0x8000_8000) | ((x >> 1) & 0x3F80_3F80);
        fma_rn_f16x2(h, 0x5C00_5C00, 0x8000_8000)
    }
    #[inline(always)]
    fn to_f32x2(x: u32) -> (f32, f32) {
        f16x2_to_f32x2(x)
    }
    #[inline(always)]
    fn from_f32x2(lo: f32, hi: f32) -> u32 {
        cvt_rn_f16x2_f32(lo, hi)
    }
    #[inline(always)]
    fn mma(a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
        mma_m16n8k16_f16(a, b, c)
    }
}

/// The warpgroup MMAs of an element type (sm_90a kernels only), by accumulator width: `ss`
/// (`Q K^T`: A and B K-major in shared memory, `N = 8 NB`), `rs` (`P V`: A in registers, B
/// N-major in shared memory, `N = 8 NT`). A width without an instruction is a compile error
/// (the `const` assertion fails where the kernel is instantiated).
pub trait Wgmma {
    unsafe fn ss<const NB: usize>(d: &mut [[f32; 4]; NB], a_desc: u64, b_desc: u64, scale_d: u32);
    unsafe fn rs<const NT: usize>(d: &mut [[f32; 4]; NT], a: [u32; 4], b_desc: u64);
    /// `d += a b` with A (K-major) and B (N-major) both from shared memory; N = 256 only.
    unsafe fn ss_tb<const NT: usize>(d: &mut [[f32; 4]; NT], a_desc: u64, b_desc: u64);
}

macro_rules! wgmma_dispatch {
    ($elem:ty, $ss32:ident, $ss64:ident, $ss128:ident, $rs64:ident, $rs128:ident, $rs256:ident, $sstb256:ident) => {
        impl Wgmma for $elem {
            #[inline(always)]
            unsafe fn ss<const NB: usize>(d: &mut [[f32; 4]; NB], a_desc: u64, b_desc: u64, scale_d: u32) {
                const { assert!(NB == 4 || NB == 8 || NB == 16, "wgmma ss: N must be 32, 64 or 128 (NB 4, 8 or 16)") };
                let p = d as *mut [[f32; 4]; NB];
                // SAFETY (each arm): NB is the array's length, so the cast is to its own type;
                // the assertion above leaves no other NB.
                unsafe {
                    match NB {
                        4 => crate::intrinsics::$ss32(&mut *(p as *mut [[f32; 4]; 4]), a_desc, b_desc, scale_d),
                        8 => crate::intrinsics::$ss64(&mut *(p as *mut [[f32; 4]; 8]), a_desc, b_desc, scale_d),
                        16 => crate::intrinsics::$ss128(&mut *(p as *mut [[f32; 4]; 16]), a_desc, b_desc, scale_d),
                        _ => core::hint::unreachable_unchecked(),
                    }
                }
            }
            #[inline(always)]
            unsafe fn rs<const NT: usize>(d: &mut [[f32; 4]; NT], a: [u32; 4], b_desc: u64) {
                const { assert!(NT == 8 || NT == 16 || NT == 32, "wgmma rs: N must be 64, 128 or 256 (NT 8, 16 or 32)") };
                let p = d as *mut [[f32; 4]; NT];
                // SAFETY: as in `ss`.
                unsafe {
                    match NT {
                        8 => crate::intrinsics::$rs64(&mut *(p as *mut [[f32; 4]; 8]), a, b_desc),
                        16 => crate::intrinsics::$rs128(&mut *(p as *mut [[f32; 4]; 16]), a, b_desc),
                        32 => crate::intrinsics::$rs256(&mut *(p as *mut [[f32; 4]; 32]), a, b_desc),
                        _ => core::hint::unreachable_unchecked(),
                    }
                }
            }
            #[inline(always)]
            unsafe fn ss_tb<const NT: usize>(d: &mut [[f32; 4]; NT], a_desc: u64, b_desc: u64) {
                const { assert!(NT == 32, "wgmma ss_tb: N must be 256 (NT 32)") };
                // SAFETY: as in `ss`.
                unsafe { crate::intrinsics::$sstb256(&mut *(d as *mut [[f32; 4]; NT] as *mut [[f32; 4]; 32]), a_desc, b_desc) }
            }
        }
    };
}
wgmma_dispatch!(Bf16, wgmma_m64n32k16_ss_bf16, wgmma_m64n64k16_ss_bf16, wgmma_m64n128k16_ss_bf16, wgmma_m64n64k16_rs_bf16, wgmma_m64n128k16_rs_bf16, wgmma_m64n256k16_rs_bf16, wgmma_m64n256k16_ss_tb_bf16);
wgmma_dispatch!(F16, wgmma_m64n32k16_ss_f16, wgmma_m64n64k16_ss_f16, wgmma_m64n128k16_ss_f16, wgmma_m64n64k16_rs_f16, wgmma_m64n128k16_rs_f16, wgmma_m64n256k16_rs_f16, wgmma_m64n256k16_ss_tb_f16);
