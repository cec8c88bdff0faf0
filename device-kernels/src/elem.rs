//! The 16-bit element types the kernels are instantiated for, as seen by a kernel:
//! eight of them travel in one 16-byte vector and are computed on in f32.

use crate::intrinsics::{
    bf16x2_to_f32x2, cvt_rn_bf16x2_f32, cvt_rn_f16x2_f32, f16x2_to_f32x2, mma_m16n8k16_bf16, mma_m16n8k16_f16, V4,
};

pub trait Elem {
    fn to_f32x2(x: u32) -> (f32, f32);
    fn from_f32x2(lo: f32, hi: f32) -> u32;
    /// `d = a b + c`, m16n8k16, f32 accumulate, inputs of this type.
    fn mma(a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4];

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

impl Elem for Bf16 {
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
