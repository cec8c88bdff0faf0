//! The fp8 (e4m3) KV cache's element, as vLLM's `--kv-cache-dtype fp8` stores it: one byte
//! per element, `byte = e4m3(x / scale)` with a per-kv-head f32 scale for K and one for V
//! ([`KvScales`]), read back as `dequantize_e4m3(byte) * scale`.
//!
//! The format is OCP / NVIDIA `e4m3fn` (`__nv_fp8_e4m3`): 1 sign bit, 4 exponent bits (bias
//! 7), 3 mantissa bits, no infinities; `0x7F` / `0xFF` are NaN, the largest finite value is
//! `448 = 0x7E`, the smallest subnormal `2^-9 = 0x01`, the smallest normal `2^-6 = 0x08`.
//!
//! ```
//! use attn_host::fp8::{dequantize_e4m3, quantize_e4m3};
//! assert_eq!(quantize_e4m3(3.0, 2.0), 0x3C); // 3 / 2 = 1.5 = 0x3C
//! assert_eq!(dequantize_e4m3(0x3C) * 2.0, 3.0);
//! assert_eq!(quantize_e4m3(1e6, 1.0), 0x7E); // saturates at 448
//! ```

use crate::dtype::{DType, Element};
use crate::error::{AttnError, Result};

pub use float8::F8E4M3;

/// The largest finite e4m3 value (`0x7E`); quantization saturates here.
pub const E4M3_MAX: f32 = 448.0;

/// The stored byte of `x` in an fp8 (e4m3) cache of scale `scale`: `e4m3(x / scale)`, the
/// quotient computed in f32 (`x / scale`, as the GPU kernel computes it), then converted
/// as CUDA's `__nv_cvt_float_to_fp8(.., __NV_SATFINITE, __NV_E4M3)` converts:
///
/// - finite values: round to nearest, ties to even (a single rounding of the f32 quotient);
/// - overflow: a finite quotient beyond the largest value saturates to `+-448` (`0x7E` /
///   `0xFE`); `+-inf` saturates too;
/// - NaN: the e4m3 NaN with the sign kept, `0x7F` (`0xFF` for a NaN whose sign bit is set);
/// - subnormals: magnitudes below the smallest normal `2^-6` round (ties to even) to the
///   subnormals `k * 2^-9`, `k = 1..=7`; magnitudes up to `2^-10` (half the smallest
///   subnormal, a tie) become zero of the same sign (`0x00` / `0x80`).
///
/// The conversion is [`F8E4M3::from_f32`] (float8's port of CUDA's saturating conversion);
/// the unit tests check it against an independent nearest-value search. A scale that is
/// zero, negative or not finite gives whatever `x / scale` gives; [`KvScales::validate`]
/// refuses such scales before a cache uses them.
pub fn quantize_e4m3(x: f32, scale: f32) -> u8 {
    F8E4M3::from_f32(x / scale).to_bits()
}

/// The value of the e4m3 byte `b`, exactly (every e4m3 value is an f32); `0x7F` and `0xFF`
/// are NaN. Multiply by the cache's scale for the logical value.
pub fn dequantize_e4m3(b: u8) -> f32 {
    E4M3_VALUES[b as usize]
}

/// Every byte's value ([`F8E4M3::to_f32`]), computed at compile time: the CPU backend reads
/// a cache element with one load.
static E4M3_VALUES: [f32; 256] = {
    let mut t = [0.0f32; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = F8E4M3::from_bits(b as u8).to_f32();
        b += 1;
    }
    t
};

/// The scales of an fp8 KV cache: one f32 per kv head for K and one for V (a per-layer scale
/// is every head equal, as vLLM's `k_scale` / `v_scale`). Element `(token, head, d)` of K is
/// stored as `quantize_e4m3(x, k[head])` and read as `dequantize_e4m3(b) * k[head]`.
#[derive(Clone, Debug, PartialEq)]
pub struct KvScales {
    /// K's scale of each kv head.
    pub k: Vec<f32>,
    /// V's scale of each kv head.
    pub v: Vec<f32>,
}

impl KvScales {
    /// The same scale `k` for K and `v` for V on every one of `num_kv_heads` heads.
    pub fn uniform(num_kv_heads: usize, k: f32, v: f32) -> KvScales {
        KvScales { k: vec![k; num_kv_heads], v: vec![v; num_kv_heads] }
    }

    /// Scale 1 for K and V on every head (the stored byte is the value itself).
    pub fn ones(num_kv_heads: usize) -> KvScales {
        KvScales::uniform(num_kv_heads, 1.0, 1.0)
    }

    /// One scale per kv head for K and for V (`num_kv_heads` each), every one finite and
    /// positive; an [`AttnError::InvalidConfig`] naming the scale and head otherwise.
    pub fn validate(&self, num_kv_heads: usize) -> Result<()> {
        for (what, s) in [("k", &self.k), ("v", &self.v)] {
            if s.len() != num_kv_heads {
                return Err(AttnError::InvalidConfig(format!(
                    "fp8 KV cache: {} {what} scales for {num_kv_heads} kv heads (one per kv head)",
                    s.len()
                )));
            }
            if let Some((head, x)) = s.iter().enumerate().find(|(_, x)| !(x.is_finite() && **x > 0.0)) {
                return Err(AttnError::InvalidConfig(format!("fp8 KV cache: {what} scale of kv head {head} is {x}; scales must be finite and positive")));
            }
        }
        Ok(())
    }
}

/// MLA's fp8 latent row, as FlashMLA stores DeepSeek-V3.2's cache (656 bytes a token):
/// the `kv_lora_rank = 512` latent values as e4m3 bytes, in 4 tiles of
/// [`LATENT_TILE`] = 128 values each quantized with its own scale; the 4 scales as f32
/// (little-endian); then the 64 rotary dims in the model's 16-bit type, as they came. An
/// MLA layer's `kv_cache_dtype = fp8_e4m3` stores these rows; the per-layer [`KvScales`] do
/// not apply (each row carries its scales).
pub const LATENT_ROW_BYTES: usize = crate::params::MLA_FP8_ROW_BYTES as usize;
/// Latent values sharing one scale in an fp8 latent row.
pub const LATENT_TILE: usize = crate::params::MLA_FP8_TILE as usize;
const LATENT_RANK: usize = crate::params::MLA_RANK as usize;
const LATENT_ROPE: usize = crate::params::MLA_ROPE as usize;
const SCALES_AT: usize = crate::params::MLA_FP8_SCALES_AT as usize;
const ROPE_AT: usize = crate::params::MLA_FP8_ROPE_AT as usize;

/// The scale of one tile of latent values: `max(amax / 448, f32::MIN_POSITIVE)`, `amax` the
/// largest magnitude (NaNs ignored; a tile of zeros gets the smallest normal f32, so every
/// quotient is finite), as vLLM's `concat_and_cache_ds_mla` computes it.
pub fn latent_tile_scale(tile: &[f32]) -> f32 {
    let amax = tile.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    (amax / E4M3_MAX).max(f32::MIN_POSITIVE)
}

/// The 16-bit pattern of a value of a 16-bit element type (f16 or bf16).
fn bits16<T: Element>(x: T) -> Result<u16> {
    match T::DTYPE {
        DType::F16 => Ok(half::f16::from_f32(x.to_f32()).to_bits()),
        DType::Bf16 => Ok(half::bf16::from_f32(x.to_f32()).to_bits()),
        other => Err(AttnError::Unsupported {
            backend: "fp8 latent cache",
            reason: format!("the fp8 latent row keeps the rotary dims in a 16-bit type; {other} is not one (use f16 or bf16, or kv_cache_dtype auto)"),
        }),
    }
}

/// The value of a 16-bit pattern of element type `T` (f16 or bf16), as f32 (exact).
fn from_bits16<T: Element>(b: u16) -> f32 {
    match T::DTYPE {
        DType::F16 => half::f16::from_bits(b).to_f32(),
        _ => half::bf16::from_bits(b).to_f32(),
    }
}

/// One token's fp8 latent row ([`LATENT_ROW_BYTES`]) from its `kv_c` (512 values) and `k_pe`
/// (64): each 128-value tile's [`latent_tile_scale`], its bytes `quantize_e4m3(x, scale)`,
/// the scales, the rotary dims' 16-bit patterns. The GPU's `mla_cache_write_<q>_e4m3` writes
/// the same bytes. Errors on wrong lengths and on a `T` that is not 16-bit.
pub fn quantize_latent_row<T: Element>(kv_c: &[T], k_pe: &[T], row: &mut [u8]) -> Result<()> {
    if kv_c.len() != LATENT_RANK || k_pe.len() != LATENT_ROPE || row.len() != LATENT_ROW_BYTES {
        return Err(AttnError::LengthMismatch {
            what: "fp8 latent row",
            detail: format!("kv_c {}, k_pe {}, row {} bytes: want {LATENT_RANK}, {LATENT_ROPE}, {LATENT_ROW_BYTES}", kv_c.len(), k_pe.len(), row.len()),
        });
    }
    for (i, x) in k_pe.iter().enumerate() {
        row[ROPE_AT + 2 * i..][..2].copy_from_slice(&bits16(*x)?.to_le_bytes());
    }
    for (t, tile) in kv_c.chunks_exact(LATENT_TILE).enumerate() {
        let values: Vec<f32> = tile.iter().map(|x| x.to_f32()).collect();
        let scale = latent_tile_scale(&values);
        row[SCALES_AT + 4 * t..][..4].copy_from_slice(&scale.to_le_bytes());
        for (i, &x) in values.iter().enumerate() {
            row[t * LATENT_TILE + i] = quantize_e4m3(x, scale);
        }
    }
    Ok(())
}

/// An fp8 latent row's 4 tile scales.
pub fn latent_row_scales(row: &[u8]) -> [f32; 4] {
    std::array::from_fn(|t| f32::from_le_bytes(row[SCALES_AT + 4 * t..][..4].try_into().expect("4 bytes")))
}

/// An fp8 latent row's 576 values (512 latent then 64 rotary), exactly, in f64:
/// `dequantize_e4m3(byte) * scale` for the latent values (exact: 4 significant bits times an
/// f32), the rotary dims as `T` (f16 or bf16) reads them. The oracle reads the cache this way.
pub fn dequantize_latent_row<T: Element>(row: &[u8]) -> Vec<f64> {
    let scales = latent_row_scales(row);
    let latent = (0..LATENT_RANK).map(|i| dequantize_e4m3(row[i]) as f64 * scales[i / LATENT_TILE] as f64);
    let rope = (0..LATENT_ROPE).map(|i| from_bits16::<T>(u16::from_le_bytes([row[ROPE_AT + 2 * i], row[ROPE_AT + 2 * i + 1]])) as f64);
    latent.chain(rope).collect()
}

/// An fp8 latent row's values as the GPU kernel hands them to its MMAs: each latent value's
/// product `dequantize_e4m3(byte) * scale` in f32, rounded to `T`; the rotary dims as stored.
/// The CPU backend computes on these.
pub fn widen_latent_row<T: Element>(row: &[u8]) -> Vec<f32> {
    let scales = latent_row_scales(row);
    let latent = (0..LATENT_RANK).map(|i| T::from_f32(dequantize_e4m3(row[i]) * scales[i / LATENT_TILE]).to_f32());
    let rope = (0..LATENT_ROPE).map(|i| from_bits16::<T>(u16::from_le_bytes([row[ROPE_AT + 2 * i], row[ROPE_AT + 2 * i + 1]])));
    latent.chain(rope).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every finite non-negative e4m3 value with its byte, `0x00..=0x7E`, ascending.
    fn finite_values() -> Vec<(u8, f64)> {
        // Built from the format's definition, not from the code under test.
        (0u8..=0x7E)
            .map(|b| {
                let (e, m) = ((b >> 3) as i32, (b & 7) as f64);
                let v = if e == 0 { m * 2f64.powi(-9) } else { (1.0 + m / 8.0) * 2f64.powi(e - 7) };
                (b, v)
            })
            .collect()
    }

    /// An independent e4m3 conversion of an f32: the nearest finite value by search (ties
    /// to the even byte), saturating beyond 448, NaN to 0x7F, the sign bit carried.
    fn reference(y: f32) -> u8 {
        let sign = if y.is_sign_negative() { 0x80 } else { 0 };
        if y.is_nan() {
            return 0x7F | sign;
        }
        let a = (y as f64).abs();
        let mut best = (0u8, f64::INFINITY);
        for (b, v) in finite_values() {
            let d = (v - a).abs();
            if d < best.1 || (d == best.1 && b % 2 == 0) {
                best = (b, d);
            }
        }
        best.0 | sign
    }

    #[test]
    fn latent_row_follows_flashmla_format() {
        use half::bf16;
        // Tile t of the latent holds values of magnitude up to 10^(t - 2); one tile of zeros.
        let kv_c: Vec<bf16> = (0..512).map(|i| {
            let t = i / 128;
            let x = if t == 3 { 0.0 } else { ((i * 37 % 101) as f32 / 50.0 - 1.0) * 10f32.powi(t as i32 - 2) };
            bf16::from_f32(x)
        }).collect();
        let k_pe: Vec<bf16> = (0..64).map(|i| bf16::from_f32(i as f32 * 0.25 - 3.0)).collect();
        let mut row = [0u8; 656];
        quantize_latent_row(&kv_c, &k_pe, &mut row).unwrap();
        for t in 0..4 {
            // The scale, at bytes 512 + 4t: the tile's largest magnitude over 448 (the smallest
            // normal f32 for the zero tile), computed here from the values.
            let amax = kv_c[128 * t..128 * (t + 1)].iter().map(|x| x.to_f32().abs()).fold(0.0f32, f32::max);
            let want = if amax == 0.0 { f32::MIN_POSITIVE } else { amax / 448.0 };
            let got = f32::from_le_bytes(row[512 + 4 * t..516 + 4 * t].try_into().unwrap());
            assert_eq!(got, want, "tile {t}");
            for i in 128 * t..128 * (t + 1) {
                assert_eq!(row[i], reference(kv_c[i].to_f32() / want), "value {i}");
            }
        }
        // The rotary dims' bf16 patterns, little-endian, at bytes 528..656.
        for (i, x) in k_pe.iter().enumerate() {
            assert_eq!(u16::from_le_bytes([row[528 + 2 * i], row[529 + 2 * i]]), x.to_bits());
        }
        // Read back: each value within half an e4m3 step of itself (relative 1/16 for the
        // tile's normals), the rotary dims exact; the largest of a tile is exact (448 x scale).
        let back = dequantize_latent_row::<bf16>(&row);
        for (i, x) in kv_c.iter().enumerate() {
            let (x, s) = (x.to_f32() as f64, latent_row_scales(&row)[i / 128] as f64);
            assert!((back[i] - x).abs() <= (x.abs() / 16.0).max(s * 2f64.powi(-10)) * 1.0001, "value {i}: {} for {x}", back[i]);
        }
        assert!(k_pe.iter().enumerate().all(|(i, x)| back[512 + i] == x.to_f32() as f64));
        // Wrong lengths and a non-16-bit element type are errors.
        assert!(quantize_latent_row(&kv_c[..511], &k_pe, &mut row).is_err());
        let e = quantize_latent_row(&vec![1.0f32; 512], &vec![1.0f32; 64], &mut row).unwrap_err();
        assert!(e.to_string().contains("16-bit type"), "{e}");
    }

    #[test]
    fn dequantize_follows_the_format() {
        for (b, v) in finite_values() {
            assert_eq!(dequantize_e4m3(b) as f64, v, "byte {b:#04x}");
            assert_eq!(dequantize_e4m3(b | 0x80) as f64, -v, "byte {:#04x}", b | 0x80);
        }
        assert!(dequantize_e4m3(0x7F).is_nan() && dequantize_e4m3(0xFF).is_nan());
        assert_eq!(dequantize_e4m3(0x7E), E4M3_MAX);
        assert_eq!(dequantize_e4m3(0x01), 2f32.powi(-9));
        assert_eq!(dequantize_e4m3(0x08), 2f32.powi(-6));
        // float8's own decoding agrees (the crate's type, re-exported).
        assert_eq!(F8E4M3::from_bits(0x3C).to_f32(), 1.5);
    }

    #[test]
    fn all_256_bytes_round_trip() {
        for b in 0..=255u8 {
            let x = dequantize_e4m3(b);
            let back = quantize_e4m3(x, 1.0);
            if x.is_nan() {
                assert_eq!(back & 0x7F, 0x7F, "NaN byte {b:#04x} came back as {back:#04x}");
                assert!(dequantize_e4m3(back).is_nan());
            } else {
                assert_eq!(back, b, "byte {b:#04x} = {x} came back as {back:#04x}");
            }
        }
    }

    #[test]
    fn ties_round_to_even() {
        // 1.0 = 0x38, 1.125 = 0x39, 1.25 = 0x3A: the midpoints go to the even mantissa.
        assert_eq!(quantize_e4m3(1.0625, 1.0), 0x38);
        assert_eq!(quantize_e4m3(1.1875, 1.0), 0x3A);
        assert_eq!(quantize_e4m3(-1.0625, 1.0), 0xB8);
        // Just off the midpoint rounds to the nearer value.
        assert_eq!(quantize_e4m3(f32::from_bits(1.0625f32.to_bits() + 1), 1.0), 0x39);
        assert_eq!(quantize_e4m3(f32::from_bits(1.1875f32.to_bits() - 1), 1.0), 0x39);
        // Across an exponent: 15 (0x57, odd) and 16 (0x58): 15.5 goes up to 16.
        assert_eq!((dequantize_e4m3(0x57), dequantize_e4m3(0x58)), (15.0, 16.0));
        assert_eq!(quantize_e4m3(15.5, 1.0), 0x58);
        // Every midpoint between neighbours, and one f32 ulp either side of it.
        let vals = finite_values();
        for w in vals.windows(2) {
            let ((b0, v0), (b1, v1)) = (w[0], w[1]);
            let mid = ((v0 + v1) / 2.0) as f32;
            assert_eq!(mid as f64, (v0 + v1) / 2.0, "midpoints are f32 values");
            let even = if b0 % 2 == 0 { b0 } else { b1 };
            assert_eq!(quantize_e4m3(mid, 1.0), even, "midpoint {mid} of {v0} and {v1}");
            assert_eq!(quantize_e4m3(f32::from_bits(mid.to_bits() - 1), 1.0), b0, "just below {mid}");
            assert_eq!(quantize_e4m3(f32::from_bits(mid.to_bits() + 1), 1.0), b1, "just above {mid}");
        }
    }

    #[test]
    fn overflow_and_infinity_saturate() {
        assert_eq!(quantize_e4m3(1e6, 1.0), 0x7E);
        assert_eq!(quantize_e4m3(-1e6, 1.0), 0xFE);
        assert_eq!(quantize_e4m3(f32::INFINITY, 1.0), 0x7E);
        assert_eq!(quantize_e4m3(f32::NEG_INFINITY, 1.0), 0xFE);
        assert_eq!(quantize_e4m3(f32::MAX, 1.0), 0x7E);
        // 464 is the midpoint of 448 and the (absent) 480: 448; anything above saturates.
        assert_eq!(quantize_e4m3(464.0, 1.0), 0x7E);
        assert_eq!(quantize_e4m3(465.0, 1.0), 0x7E);
        assert_eq!(quantize_e4m3(449.0, 1.0), 0x7E);
        assert_eq!(dequantize_e4m3(0x7E), 448.0);
    }

    #[test]
    fn nan_keeps_its_sign() {
        assert_eq!(quantize_e4m3(f32::NAN, 1.0), 0x7F);
        assert_eq!(quantize_e4m3(-f32::NAN, 1.0), 0xFF);
        // 0 / 0 is a NaN (its sign bit is the platform's choice).
        assert_eq!(quantize_e4m3(0.0, 0.0) & 0x7F, 0x7F);
    }

    #[test]
    fn subnormals() {
        let p = |e: i32| 2f32.powi(e);
        assert_eq!(quantize_e4m3(p(-9), 1.0), 0x01, "2^-9 is the smallest subnormal");
        assert_eq!(quantize_e4m3(p(-10), 1.0), 0x00, "2^-10 is a tie between 0 and 2^-9: even");
        assert_eq!(quantize_e4m3(-p(-10), 1.0), 0x80, "underflow keeps the sign");
        assert_eq!(quantize_e4m3(1.5 * p(-10), 1.0), 0x01);
        assert_eq!(quantize_e4m3(f32::from_bits(p(-10).to_bits() + 1), 1.0), 0x01);
        assert_eq!(quantize_e4m3(3.0 * p(-10), 1.0), 0x02, "tie between 2^-9 (odd) and 2^-8 (even)");
        assert_eq!(quantize_e4m3(5.0 * p(-10), 1.0), 0x02, "tie between 2^-8 and 3 * 2^-9: even");
        assert_eq!(quantize_e4m3(7.0 * p(-9), 1.0), 0x07, "the largest subnormal");
        assert_eq!(quantize_e4m3(7.5 * p(-9), 1.0), 0x08, "tie up to the smallest normal 2^-6");
        assert_eq!(quantize_e4m3(1e-30, 1.0), 0x00);
        assert_eq!(quantize_e4m3(f32::from_bits(1), 1.0), 0x00, "f32 subnormal");
        assert_eq!(quantize_e4m3(-0.0, 1.0), 0x80);
    }

    #[test]
    fn a_scale_other_than_one() {
        // 3 / 2 = 1.5 = 0x3C; 3 / 0.25 = 12 = 0x54; 1000 / 4 = 250 -> 256 (0x78).
        assert_eq!(quantize_e4m3(3.0, 2.0), 0x3C);
        assert_eq!(quantize_e4m3(3.0, 0.25), 0x54);
        assert_eq!(dequantize_e4m3(0x54), 12.0);
        assert_eq!(quantize_e4m3(1000.0, 4.0), reference(250.0));
        assert_eq!(dequantize_e4m3(quantize_e4m3(1000.0, 4.0)), 256.0);
        // Saturation is on the quotient: 448 * 3 is the largest value a scale of 3 stores.
        assert_eq!(quantize_e4m3(448.0 * 3.0, 3.0), 0x7E);
        assert_eq!(quantize_e4m3(1e5, 3.0), 0x7E);
        assert_eq!(quantize_e4m3(-1e5, 3.0), 0xFE);
        // The quotient is the f32 division, rounded once to e4m3.
        for &(x, s) in &[(0.3f32, 0.7f32), (-5.5, 0.013), (1e-3, 1e-2), (7.0, 3.0)] {
            assert_eq!(quantize_e4m3(x, s), reference(x / s), "{x} / {s}");
        }
    }

    #[test]
    fn every_f16_value_matches_the_search() {
        // 65536 values covering e4m3's whole range (and far beyond) at f16 resolution.
        for bits in 0..=u16::MAX {
            let y = half::f16::from_bits(bits).to_f32();
            assert_eq!(quantize_e4m3(y, 1.0), reference(y), "f16 {bits:#06x} = {y}");
        }
    }

    #[test]
    fn scales_validate() {
        assert!(KvScales::ones(4).validate(4).is_ok());
        assert_eq!(KvScales::uniform(2, 0.5, 2.0), KvScales { k: vec![0.5, 0.5], v: vec![2.0, 2.0] });
        let e = KvScales::ones(3).validate(4).unwrap_err();
        assert!(matches!(e, AttnError::InvalidConfig(_)) && e.to_string().contains("3 k scales for 4 kv heads"), "{e}");
        let mut s = KvScales::ones(4);
        s.v[2] = 0.0;
        let e = s.validate(4).unwrap_err();
        assert!(e.to_string().contains("v scale of kv head 2 is 0"), "{e}");
        s.v[2] = 1.0;
        s.k[1] = f32::NAN;
        assert!(s.validate(4).unwrap_err().to_string().contains("k scale of kv head 1 is NaN"));
        s.k[1] = -1.0;
        assert!(s.validate(4).unwrap_err().to_string().contains("k scale of kv head 1 is -1"));
        s.k[1] = f32::INFINITY;
        assert!(s.validate(4).unwrap_err().to_string().contains("k scale of kv head 1 is inf"));
    }

    proptest! {
        /// Any f32 and any positive scale: the search over e4m3 values of the f32 quotient.
        #[test]
        fn quantize_matches_the_search(bits in any::<u32>(), scale_bits in 0x3A00_0000u32..0x4400_0000) {
            let (x, scale) = (f32::from_bits(bits), f32::from_bits(scale_bits));
            prop_assert_eq!(quantize_e4m3(x, scale), reference(x / scale));
        }
    }
}
