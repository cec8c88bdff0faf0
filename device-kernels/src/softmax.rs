//! Online softmax on the f32 accumulator fragments of `mma.m16n8k16`: the building block the
//! decode and prefill kernels share.
//!
//! A lane holds two rows of its warp's 16 (r0 = lane / 4 and r0 + 8) and, for each 8-key
//! n-tile `j` of a score tile, the column pair (2 (lane % 4), +1): `s[j] = [row r0 key c,
//! row r0 key c + 1, row r0 + 8 key c, row r0 + 8 key c + 1]`. The four lanes of a quad
//! share rows, so row-wide reductions are two butterfly shuffles. Maxima are in log2 units
//! (`2^x` is one `ex2.approx`); the state stays finite (`NEG_INIT`) so that rows that have
//! seen no key yet give 0 rather than NaN.

use crate::elem::Elem;
use crate::intrinsics::{ex2_approx, fma, lg2_approx, shfl_sync_bfly_f32};

/// Initial running max: finite, so `2^(m - m_new)` and `2^(-inf - m)` stay well defined.
pub const NEG_INIT: f32 = -1.0e30;
pub const LOG2E: f32 = core::f32::consts::LOG2_E;
pub const LN2: f32 = core::f32::consts::LN_2;

/// Maximum of `x` over the 4 lanes of a quad (the lanes sharing a fragment row).
#[inline(always)]
pub fn quad_max(x: f32) -> f32 {
    let x = x.max(shfl_sync_bfly_f32(x, 1));
    x.max(shfl_sync_bfly_f32(x, 2))
}

/// Sum of `x` over the 4 lanes of a quad.
#[inline(always)]
pub fn quad_sum(x: f32) -> f32 {
    let x = x + shfl_sync_bfly_f32(x, 1);
    x + shfl_sync_bfly_f32(x, 2)
}

/// The online-softmax state of a lane's two rows: running max `m` (log2 units; the quad's
/// lanes agree) and this lane's part of the denominator `l` (sum over the quad at the end).
#[derive(Clone, Copy)]
pub struct RowState {
    pub m: [f32; 2],
    pub l: [f32; 2],
}

impl RowState {
    #[inline(always)]
    pub const fn new() -> Self {
        RowState { m: [NEG_INIT; 2], l: [0.0; 2] }
    }

    /// Folds a tile of `NB` n-tiles of scores in. `s_exp` maps a score to log2 units
    /// (`scale * log2 e` for raw scores, 1 for scores already there; masked scores are
    /// `-inf`). Leaves the probabilities `p = 2^(s s_exp - m_new)` in `s` (one FFMA and one
    /// EX2 each) and returns each row's factor `2^(m_old - m_new)` for the output.
    #[inline(always)]
    pub fn update<const NB: usize>(&mut self, s: &mut [[f32; 4]; NB], s_exp: f32) -> [f32; 2] {
        let mut corr = [1.0f32; 2];
        for h in 0..2 {
            let mut mx = NEG_INIT;
            for j in 0..NB {
                mx = mx.max(s[j][2 * h]).max(s[j][2 * h + 1]);
            }
            let m_new = self.m[h].max(quad_max(mx) * s_exp);
            corr[h] = ex2_approx(self.m[h] - m_new);
            self.m[h] = m_new;
            let mut rowsum = 0.0f32;
            for j in 0..NB {
                let a = ex2_approx(fma(s[j][2 * h], s_exp, -m_new));
                let b = ex2_approx(fma(s[j][2 * h + 1], s_exp, -m_new));
                s[j][2 * h] = a;
                s[j][2 * h + 1] = b;
                rowsum += a + b;
            }
            self.l[h] = self.l[h] * corr[h] + rowsum;
        }
        corr
    }

    /// Moves the rows onto maxima `m` another part of the block computed (larger or equal):
    /// the denominators follow; returns the output's factor `2^(m_old - m)`.
    #[inline(always)]
    pub fn onto(&mut self, m: [f32; 2]) -> [f32; 2] {
        let mut corr = [1.0f32; 2];
        for h in 0..2 {
            corr[h] = ex2_approx(self.m[h] - m[h]);
            self.m[h] = m[h];
            self.l[h] *= corr[h];
        }
        corr
    }

    /// Row `h`'s full denominator: the quad's sum (all four lanes must call it).
    #[inline(always)]
    pub fn denominator(&self, h: usize) -> f32 {
        quad_sum(self.l[h])
    }

    /// Row `h`'s log-sum-exp in natural log, from its full denominator: [`lse`] of the row's
    /// state (written out here, not called: the prefill and MLA kernels' PTX was checked on
    /// the GPU in this form).
    #[inline(always)]
    pub fn lse(&self, h: usize, lsum: f32) -> f32 {
        if lsum > 0.0 { (self.m[h] + lg2_approx(lsum)) * LN2 } else { f32::NEG_INFINITY }
    }
}

/// The natural-log log-sum-exp of a state of max `m` (log2 units) and denominator `lsum`
/// (`-inf` for a row that saw no key).
#[inline(always)]
pub fn lse(m: f32, lsum: f32) -> f32 {
    if lsum > 0.0 { (m + lg2_approx(lsum)) * LN2 } else { f32::NEG_INFINITY }
}

/// The output's normalising factor `1 / lsum` (0 for a row that saw no key: zeros out).
#[inline(always)]
pub fn inv_denominator(lsum: f32) -> f32 {
    if lsum > 0.0 { 1.0 / lsum } else { 0.0 }
}

/// Merging partial states (max `m_s`, denominator `l_s`, accumulator `o_s`) of disjoint key
/// sets: the union's max `M` is the largest `m_s`, and each state enters the sums with the
/// weight `2^(m_s - M)` (`l = sum l_s w_s`, `o = sum o_s w_s`). Used by the split-KV merge and
/// the decode kernel's cross-warp merge; order does not matter, empty states (`l_s = 0`)
/// add nothing.
#[inline(always)]
pub fn merge_weight(m: f32, m_union: f32) -> f32 {
    ex2_approx(m - m_union)
}

/// Joins an attention sink (a logit `sink` in log2 units that enters the denominator and
/// adds no value) to a row's final state of max `m` and full denominator `l`: returns the
/// union's max and denominator and the factor `2^(m - m')` its accumulator takes. A sink of
/// `-inf` changes nothing; a row that saw no key gets `l' = 1` and a zero output.
#[inline(always)]
pub fn join_sink(m: f32, l: f32, sink: f32) -> (f32, f32, f32) {
    let m_union = m.max(sink);
    let f = ex2_approx(m - m_union);
    (m_union, l * f + ex2_approx(sink - m_union), f)
}

/// Query head `head`'s sink logit in log2 units from `f32 [num_q_heads]` at `sinks` (0: none,
/// `-inf`).
#[inline(always)]
pub unsafe fn sink_log2(sinks: u64, head: usize) -> f32 {
    if sinks != 0 { unsafe { *(sinks as *const f32).add(head) * LOG2E } } else { f32::NEG_INFINITY }
}

/// `o *= corr` row by row: the output fragments follow their rows' new maxima.
#[inline(always)]
pub fn rescale<const NT: usize>(o: &mut [[f32; 4]; NT], corr: [f32; 2]) {
    for nt in 0..NT {
        o[nt][0] *= corr[0];
        o[nt][1] *= corr[0];
        o[nt][2] *= corr[1];
        o[nt][3] *= corr[1];
    }
}

/// The probabilities of keys `16 kc .. 16 kc + 16` as the A fragment of `P V` (the score
/// fragments of n-tiles `2 kc` and `2 kc + 1` re-packed as 16-bit pairs).
#[inline(always)]
pub fn p_fragment<E: Elem, const NB: usize>(s: &[[f32; 4]; NB], kc: usize) -> [u32; 4] {
    [
        E::from_f32x2(s[2 * kc][0], s[2 * kc][1]),
        E::from_f32x2(s[2 * kc][2], s[2 * kc][3]),
        E::from_f32x2(s[2 * kc + 1][0], s[2 * kc + 1][1]),
        E::from_f32x2(s[2 * kc + 1][2], s[2 * kc + 1][3]),
    ]
}
