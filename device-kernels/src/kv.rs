//! The KV cache's storage element, as seen by a kernel: the query's own 16-bit type
//! (`Native`, copied into the MMA tiles as it is) or fp8 e4m3 (`E4m3`, one byte an element,
//! converted to the query's type in shared memory before the MMAs read it, the scales folded
//! in elsewhere: the K scale into the softmax scale, the V scale into the output).

use crate::elem::Elem;
use crate::intrinsics::V4;

pub trait KvStore {
    /// Bytes of one stored element.
    const BYTES: usize;
    /// Whether tiles must be converted before the MMAs read them.
    const CONVERT: bool;
    /// 16 stored bytes (16 e4m3 values) -> the same values as two 16-byte vectors of `E`
    /// (values 0-7, then 8-15). Only called when `CONVERT`.
    fn widen<E: Elem>(raw: V4) -> (V4, V4);
}

pub struct Native;
pub struct E4m3;

impl KvStore for Native {
    const BYTES: usize = 2;
    const CONVERT: bool = false;
    #[inline(always)]
    fn widen<E: Elem>(raw: V4) -> (V4, V4) {
        (raw, raw)
    }
}

impl KvStore for E4m3 {
    const BYTES: usize = 1;
    const CONVERT: bool = true;
    #[inline(always)]
    fn widen<E: Elem>(raw: V4) -> (V4, V4) {
        // Word i holds values 4i..4i+3 (value 4i in its low byte); each pair of bytes is
        // spread to one byte per 16-bit half and converted.
        let mut o = [0u32; 8];
        for i in 0..4 {
            let x = raw.0[i];
            o[2 * i] = E::from_e4m3x2((x & 0xFF) | ((x & 0xFF00) << 8));
            o[2 * i + 1] = E::from_e4m3x2(((x >> 16) & 0xFF) | ((x >> 8) & 0x00FF_0000));
        }
        (V4([o[0], o[1], o[2], o[3]]), V4([o[4], o[5], o[6], o[7]]))
    }
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
