//! The KV cache's storage element, as seen by a kernel: the query's own 16-bit type
//! (`Native`, copied into the MMA tiles as it is) or fp8 e4m3 (`E4m3`, one byte an element,
//! converted to the query's type in shared memory before the MMAs read it, the scales folded
//! in elsewhere: the K scale into the softmax scale, the V scale into the output).

use crate::elem::{Elem, F16};
use crate::intrinsics::{cvt_rn_f16x2_e4m3x2, prmt_b32, V4};

pub trait KvStore {
    /// The MMA's element type for queries of type `E`: `E` itself, or f16 where the
    /// hardware converts the cache to f16 only (`E4m3Cvt`).
    type Mma<E: Elem>: Elem;
    /// Bytes of one stored element.
    const BYTES: usize;
    /// Whether tiles must be converted before the MMAs read them.
    const CONVERT: bool;
    /// 16 stored bytes (16 e4m3 values) -> the same values as two 16-byte vectors of `E`
    /// (values 0-7, then 8-15). Only called when `CONVERT`.
    fn widen<E: Elem>(raw: V4) -> (V4, V4);
    /// 8 stored bytes (values 0-7, two words) -> four words of `E`: (values 0, 1), (2, 3),
    /// (4, 5), (6, 7). Only called when `CONVERT`.
    fn widen_pair<E: Elem>(raw: [u32; 2]) -> [u32; 4];
    /// The 4 words of an `ldmatrix.x4.trans` of stored bytes seen as 16-bit pairs: each
    /// holds (key a: dims d, d + 1; key a + 1: dims d, d + 1) -> per word the keys' pair at
    /// dim d and their pair at dim d + 1, as words of `E`. Only called when `CONVERT`.
    fn widen_trans<E: Elem>(raw: [u32; 4]) -> [[u32; 2]; 4];
}

pub struct Native;
pub struct E4m3;
/// fp8 e4m3 converted by the hardware (`cvt.rn.f16x2.e4m3x2`, two values an instruction;
/// sm_90a module only): the fragments come out as f16 whatever the query type, so the MMAs
/// are f16 ones (`Mma<E> = F16`) and bf16 queries are converted to f16 once, when loaded.
pub struct E4m3Cvt;

/// The hardware-converting store of a KV type, for the kernel rows of the sm_90a module.
pub trait Hardware {
    type Store: KvStore;
}
impl Hardware for E4m3 {
    type Store = E4m3Cvt;
}
/// A 16-bit cache needs no conversion: its sm_90a rows differ in depth only.
impl Hardware for Native {
    type Store = Native;
}

impl KvStore for Native {
    type Mma<E: Elem> = E;
    const BYTES: usize = 2;
    const CONVERT: bool = false;
    #[inline(always)]
    fn widen<E: Elem>(raw: V4) -> (V4, V4) {
        (raw, raw)
    }
    #[inline(always)]
    fn widen_pair<E: Elem>(raw: [u32; 2]) -> [u32; 4] {
        [raw[0], raw[0], raw[1], raw[1]]
    }
    #[inline(always)]
    fn widen_trans<E: Elem>(raw: [u32; 4]) -> [[u32; 2]; 4] {
        raw.map(|w| [w, w])
    }
}

/// One byte permutation puts values 2, 3 of a word in the high bytes of its two halves and
/// values 0, 1 in the low ones (shifted up by 8 for the first pair); each pair then costs a
/// mask, a shift and a multiply (and the NaN fix-up).
impl KvStore for E4m3 {
    type Mma<E: Elem> = E;
    const BYTES: usize = 1;
    const CONVERT: bool = true;
    #[inline(always)]
    fn widen<E: Elem>(raw: V4) -> (V4, V4) {
        // Word i holds values 4i..4i+3 (value 4i in its low byte).
        let (lo, hi) = (Self::widen_pair::<E>([raw.0[0], raw.0[1]]), Self::widen_pair::<E>([raw.0[2], raw.0[3]]));
        (V4(lo), V4(hi))
    }
    #[inline(always)]
    fn widen_pair<E: Elem>(raw: [u32; 2]) -> [u32; 4] {
        let word = |w: u32| {
            let y = prmt_b32::<0x3120>(w, 0); // bytes (v0, v2, v1, v3)
            [(y << 8, E::from_e4m3_high_bytes(y << 8)), (y, E::from_e4m3_high_bytes(y))]
        };
        let ([a, b], [c, d]) = (word(raw[0]), word(raw[1]));
        let mut out = [a.1, b.1, c.1, d.1];
        // NaN bytes are rare (only a NaN input stores one): one test for the 8 bytes, and
        // the fix-up only where it found one.
        if nan_bytes(raw[0]) | nan_bytes(raw[1]) != 0 {
            out = [e4m3_nan_fixup(a.1, a.0), e4m3_nan_fixup(b.1, b.0), e4m3_nan_fixup(c.1, c.0), e4m3_nan_fixup(d.1, d.0)];
        }
        out
    }
    #[inline(always)]
    fn widen_trans<E: Elem>(raw: [u32; 4]) -> [[u32; 2]; 4] {
        // Bytes (a.d, a.d+1, a+1.d, a+1.d+1): the high bytes of the halves are the keys' dim
        // d + 1, the low bytes (shifted up) their dim d. No byte permutation needed.
        let mut out = raw.map(|w| [E::from_e4m3_high_bytes(w << 8), E::from_e4m3_high_bytes(w)]);
        if nan_bytes(raw[0]) | nan_bytes(raw[1]) | nan_bytes(raw[2]) | nan_bytes(raw[3]) != 0 {
            for i in 0..4 {
                out[i] = [e4m3_nan_fixup(out[i][0], raw[i] << 8), e4m3_nan_fixup(out[i][1], raw[i])];
            }
        }
        out
    }
}

/// One instruction a pair of values; the byte order of each word is already the fragments'
/// (K), or needs one byte permutation (V's transposed words); NaN comes out NaN.
impl KvStore for E4m3Cvt {
    type Mma<E: Elem> = F16;
    const BYTES: usize = 1;
    const CONVERT: bool = true;
    #[inline(always)]
    fn widen<E: Elem>(raw: V4) -> (V4, V4) {
        let w = raw.0.map(cvt_rn_f16x2_e4m3x2);
        (V4([w[0][0], w[0][1], w[1][0], w[1][1]]), V4([w[2][0], w[2][1], w[3][0], w[3][1]]))
    }
    #[inline(always)]
    fn widen_pair<E: Elem>(raw: [u32; 2]) -> [u32; 4] {
        let ([a, b], [c, d]) = (cvt_rn_f16x2_e4m3x2(raw[0]), cvt_rn_f16x2_e4m3x2(raw[1]));
        [a, b, c, d]
    }
    #[inline(always)]
    fn widen_trans<E: Elem>(raw: [u32; 4]) -> [[u32; 2]; 4] {
        // Bytes (a.d, a.d+1, a+1.d, a+1.d+1) -> (a.d, a+1.d, a.d+1, a+1.d+1): the keys' pair
        // at dim d, then at dim d + 1.
        raw.map(|w| cvt_rn_f16x2_e4m3x2(prmt_b32::<0x3120>(w, 0)))
    }
}

/// The halves of `h` whose e4m3 byte (`x`'s high byte of the half) is a NaN, set to a NaN
/// (`from_e4m3_high_bytes` reads 0x7F as 480: the callers fix up only words that hold a NaN).
#[inline(always)]
fn e4m3_nan_fixup(h: u32, x: u32) -> u32 {
    // 0x7F + 1 carries into the half's top bit, and only 0x7F does (the field is 7 bits);
    // n - (n >> 15) turns each such top bit into 0x7FFF.
    let n = ((x & 0x7F00_7F00) + 0x0100_0100) & 0x8000_8000;
    h | (n - (n >> 15))
}

/// The top bit of each byte of `w` that is an e4m3 NaN (low 7 bits all ones), else 0.
#[inline(always)]
fn nan_bytes(w: u32) -> u32 {
    ((w & 0x7F7F_7F7F) + 0x0101_0101) & 0x8080_8080
}

/// Round-to-nearest-even f32 -> e4m3, saturating at +-448 (every finite value beyond it and
/// the infinities become +-448), NaN -> 0x7F with the sign kept: what the host's
/// `attn_host::fp8::quantize_e4m3` computes, bit for bit.
#[inline(always)]
pub fn e4m3_from_f32(x: f32) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let a = bits & 0x7FFF_FFFF;
    if a > 0x7F80_0000 {
        return sign | 0x7F; // NaN
    }
    let af = f32::from_bits(a);
    if af >= 448.0 {
        return sign | 0x7E; // saturate (inf included)
    }
    if a < 0x3C80_0000 {
        // Below 2^-6: e4m3 subnormals, multiples of 2^-9. a * 512 < 8 is exact, and adding
        // 2^23 rounds it to an integer, to nearest even; 8 is 0x08, the smallest normal.
        let m = ((af * 512.0 + 8_388_608.0).to_bits() - 0x4B00_0000) as u8;
        return sign | m;
    }
    // Normal: keep 3 mantissa bits, rounding at bit 20 to nearest even (a carry may bump the
    // exponent, which is right); re-bias the exponent from 127 to 7. 448 <= x rounds only
    // from values caught above, so the result stays at or below 0x7E.
    let r = a + 0x7FFFF + ((a >> 20) & 1);
    let e = (r >> 23) - 120;
    let m = (r >> 20) & 7;
    sign | ((e << 3) | m) as u8
}
