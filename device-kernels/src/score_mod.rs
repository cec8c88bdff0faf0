//! Score modifiers: what happens to a raw score `q . k` between the product and the softmax,
//! as small policy types. A kernel generic over [`ScoreMod`] is instantiated once per
//! modifier, so the plain case compiles to the bare product (its scale folded into the
//! softmax's exponent FFMA) and pays nothing for the others; the runtime-checked
//! [`Dynamic`] serves kernels that are memory-bound and keep one instantiation (decode).
//!
//! A modifier sees a lane's two fragment rows (`h` = 0, 1: rows r0 and r0 + 8) and the key
//! and query positions; the mask (causal limit, window start) is applied after it, by the
//! kernel, only on tiles that cross a limit.

use crate::intrinsics::{rcp_approx, tanh_approx};
use crate::softmax::LOG2E;

/// A score modifier. `apply` maps a raw score to what the softmax's exponent takes, and
/// `exp_factor` is the factor the exponent multiplies it by (`RowState::update`'s `s_exp`):
/// `2^(apply(s) * exp_factor - m)` is the probability before normalisation.
pub trait ScoreMod: Copy {
    /// Whether the modifier reads per-row ALiBi slopes (the kernel loads them only then).
    const ALIBI: bool;
    /// From the softmax scale, the soft-cap (0 = off) and the lane's two rows' ALiBi slopes
    /// (`None`: the model has none).
    fn new(scale: f32, softcap: f32, slopes: Option<[f32; 2]>) -> Self;
    fn exp_factor(&self) -> f32;
    /// Score of row `h` of the lane's pair at key position `key`, query position `pos`.
    fn apply(&self, s: f32, h: usize, key: u32, pos: u32) -> f32;
}

/// No modifier: scores stay raw and the scale, in log2 units, is the exponent's factor.
#[derive(Clone, Copy)]
pub struct Plain {
    scale_log2: f32,
}

impl ScoreMod for Plain {
    const ALIBI: bool = false;
    #[inline(always)]
    fn new(scale: f32, _softcap: f32, _slopes: Option<[f32; 2]>) -> Self {
        Plain { scale_log2: scale * LOG2E }
    }
    #[inline(always)]
    fn exp_factor(&self) -> f32 {
        self.scale_log2
    }
    #[inline(always)]
    fn apply(&self, s: f32, _h: usize, _key: u32, _pos: u32) -> f32 {
        s
    }
}

/// Logits soft-cap `cap tanh(x / cap)` (Gemma-2, Grok) when `CAP`, ALiBi's linear bias
/// `slope (key - pos)` (BLOOM, MPT) when `ALIBI`, on the scaled score; the result is in log2
/// units, so the exponent's factor is 1.
#[derive(Clone, Copy)]
pub struct Modified<const CAP: bool, const ALIBI: bool> {
    scale: f32,
    cap: f32,
    inv_cap: f32,
    slopes: [f32; 2],
}

impl<const CAP: bool, const ALIBI: bool> ScoreMod for Modified<CAP, ALIBI> {
    const ALIBI: bool = ALIBI;
    #[inline(always)]
    fn new(scale: f32, softcap: f32, slopes: Option<[f32; 2]>) -> Self {
        let inv_cap = if CAP { rcp_approx(softcap) } else { 0.0 };
        Modified { scale, cap: softcap, inv_cap, slopes: slopes.unwrap_or([0.0; 2]) }
    }
    #[inline(always)]
    fn exp_factor(&self) -> f32 {
        1.0
    }
    #[inline(always)]
    fn apply(&self, s: f32, h: usize, key: u32, pos: u32) -> f32 {
        let mut x = s * self.scale;
        if CAP {
            x = self.cap * tanh_approx(x * self.inv_cap);
        }
        if ALIBI {
            x += self.slopes[h] * (key as i32 - pos as i32) as f32;
        }
        x * LOG2E
    }
}

/// The instantiated combinations besides `Plain` (the kernel name suffixes of
/// `registry::ScoreMod`).
pub type SoftCap = Modified<true, false>;
pub type Alibi = Modified<false, true>;
pub type SoftCapAlibi = Modified<true, true>;

/// Soft-cap and ALiBi decided at run time (a soft-cap of 0 is off), by branches uniform
/// across the block: one instantiation for every model, for kernels bound by memory rather
/// than by these few instructions.
#[derive(Clone, Copy)]
pub struct Dynamic {
    scale: f32,
    cap: f32,
    inv_cap: f32,
    slopes: Option<[f32; 2]>,
}

impl ScoreMod for Dynamic {
    const ALIBI: bool = true;
    #[inline(always)]
    fn new(scale: f32, softcap: f32, slopes: Option<[f32; 2]>) -> Self {
        let inv_cap = if softcap != 0.0 { rcp_approx(softcap) } else { 0.0 };
        Dynamic { scale, cap: softcap, inv_cap, slopes }
    }
    #[inline(always)]
    fn exp_factor(&self) -> f32 {
        1.0
    }
    #[inline(always)]
    fn apply(&self, s: f32, h: usize, key: u32, pos: u32) -> f32 {
        let mut x = s * self.scale;
        if self.cap != 0.0 {
            x = self.cap * tanh_approx(x * self.inv_cap);
        }
        if let Some(slopes) = self.slopes {
            x += slopes[h] * (key as i32 - pos as i32) as f32;
        }
        x * LOG2E
    }
}
