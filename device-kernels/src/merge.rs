//! Merge of split-KV partial states (flash-decoding's second kernel).
//!
//! Each split `s` left, per (token, head), a normalised partial output `o_s[D]` and its
//! (m_s, l_s): running max in log2 units and denominator. The merged output is
//! `sum_s w_s o_s / sum_s w_s` with `w_s = l_s * 2^(m_s - max_s m_s)`; the result does not
//! depend on the order of the splits, and an empty split (l_s = 0) contributes nothing.
//! Also the merged log-sum-exp when asked for (`lse`). An attention sink (`sinks`) joins
//! the union as a state of one logit and no value.
//! Splits are uniform (every row has `num_splits`), or per token (`token_splits`: MLA's
//! schedule gives each request its own count).
//! Grid: x = workspace row (its token through `token_map`, or itself), y = query head;
//! block: D/8 threads, 8 dims each.
//!
//! Context parallelism's merge (`merge_ranks`) is the same union over the ranks' shards of
//! the keys, from each rank's normalised output and log-sum-exp.

use crate::elem::Elem;
use crate::intrinsics::*;
use crate::params::{MergeParams, MergeRanksParams};
use crate::softmax::{inv_denominator, lse, merge_weight, sink_log2, LOG2E, NEG_INIT};

#[inline(always)]
pub(crate) unsafe fn merge_splits<E: Elem>(p: &MergeParams) {
    let slot = block_idx_x() as u64;
    let token = if p.token_map != 0 { (unsafe { *(p.token_map as *const i32).add(slot as usize) }) as u64 } else { slot };
    let head = block_idx_y() as u64;
    let ds = thread_idx_x() as usize * 8;
    if ds >= p.head_dim as usize {
        return;
    }
    // Split s of this row is workspace row `first + s * step`: uniform splits are
    // [split, token, head]-major, per-token ones (`token_splits`) [slot, head]-major.
    let hq = p.num_q_heads as u64;
    let (first, step, splits) = if p.token_splits != 0 {
        let ts = p.token_splits as *const i32;
        let (slot0, count) = unsafe { (*ts.add(2 * slot as usize) as u64, *ts.add(2 * slot as usize + 1) as u64) };
        if count == 1 {
            return; // written by the attention kernel
        }
        (slot0 * hq + head, hq, count)
    } else {
        (slot * hq + head, p.num_tokens as u64 * hq, p.num_splits as u64)
    };
    let ml = p.partial_ml as *const f32;
    let mut mmax = NEG_INIT;
    for s in 0..splits {
        mmax = mmax.max(unsafe { *ml.add(((first + s * step) * 2) as usize) });
    }
    // An attention sink joins the union as one more state: logit `sink`, no value.
    let sink = unsafe { sink_log2(p.sinks, head as usize) };
    mmax = mmax.max(sink);
    let mut wsum = if p.sinks != 0 { merge_weight(sink, mmax) } else { 0.0 };
    let mut o = [0.0f32; 8];
    for s in 0..splits {
        let r = first + s * step;
        let (ms, ls) = unsafe { (*ml.add((r * 2) as usize), *ml.add((r * 2 + 1) as usize)) };
        let w = ls * merge_weight(ms, mmax);
        wsum += w;
        let po = (p.partial_out as *const u32).wrapping_add((r * p.head_dim as u64) as usize + ds);
        let (a, b) = unsafe { (ld_global_v4(po), ld_global_v4(po.add(4))) };
        for i in 0..4 {
            o[i] += w * f32::from_bits(a.0[i]);
            o[4 + i] += w * f32::from_bits(b.0[i]);
        }
    }
    let inv = inv_denominator(wsum);
    for i in 0..8 {
        o[i] *= inv;
    }
    let off = token * p.out_token_stride + head * p.out_head_stride + ds as u64;
    unsafe { st_global_v4((p.out as *mut u16).add(off as usize) as *mut u32, E::pack8(&o)) };
    // The union's log-sum-exp: sum_s l_s 2^m_s = 2^mmax wsum (log2 units, then natural log).
    if p.lse != 0 && ds == 0 {
        unsafe { *(p.lse as *mut f32).add((token * p.num_q_heads as u64 + head) as usize) = lse(mmax, wsum) };
    }
}

/// Context parallelism's merge: rank `r` attended its shard of each row's keys and left the
/// output `o_r` normalised over them and its log-sum-exp `lse_r`. The output over all keys
/// is `sum_r w_r o_r / sum_r w_r` with `w_r = e^(lse_r - max_r lse_r)` (in log2 units below),
/// and its log-sum-exp `max + ln sum_r w_r`. A rank whose row saw no key (`keys_seen` 0) is
/// not read at all: it ran over a placeholder key, and its output may be anything. A sink
/// joins once, here (the ranks ran without it).
/// Grid: x = token, y = head; block: head_dim / 8 threads, 8 dims each.
#[inline(always)]
pub(crate) unsafe fn merge_ranks<E: Elem>(p: &MergeRanksParams) {
    let token = block_idx_x() as usize;
    let head = block_idx_y() as usize;
    let ds = thread_idx_x() as usize * 8;
    let (n, hq, d, ranks) = (p.num_tokens as usize, p.num_heads as usize, p.head_dim as usize, p.num_ranks as usize);
    if ds >= d {
        return;
    }
    let seen = p.keys_seen as *const i32;
    let (outs, lses) = (p.rank_out as *const u64, p.rank_lse as *const u64);
    // Invariant: `mmax` is the largest log2-unit lse of the ranks read so far (and the sink).
    let lse_log2 = |r: usize| unsafe { *(*lses.add(r) as *const f32).add(token * hq + head) } * LOG2E;
    let reads = |r: usize| unsafe { *seen.add(r * n + token) } > 0;
    let sink = unsafe { sink_log2(p.sinks, head) };
    let mut mmax = if p.sinks != 0 { sink } else { NEG_INIT };
    for r in 0..ranks {
        if reads(r) {
            mmax = mmax.max(lse_log2(r));
        }
    }
    let mut wsum = if p.sinks != 0 { merge_weight(sink, mmax) } else { 0.0 };
    let mut o = [0.0f32; 8];
    for r in 0..ranks {
        if !reads(r) {
            continue;
        }
        let w = merge_weight(lse_log2(r), mmax);
        wsum += w;
        let src = (unsafe { *outs.add(r) } as *const u16).wrapping_add((token * hq + head) * d + ds) as *const u32;
        let x = E::unpack8(unsafe { ld_global_v4(src) });
        for i in 0..8 {
            o[i] += w * x[i];
        }
    }
    let inv = inv_denominator(wsum);
    for x in &mut o {
        *x *= inv;
    }
    let dst = (p.out as *mut u16).wrapping_add((token * hq + head) * d + ds) as *mut u32;
    unsafe { st_global_v4(dst, E::pack8(&o)) };
    if p.lse != 0 && ds == 0 {
        unsafe { *(p.lse as *mut f32).add(token * hq + head) = lse(mmax, wsum) };
    }
}

/// One entry point of the context-parallel merge (`registry::KERNELS`' `MergeRanks` row):
/// `merge_ranks_instance!(name, Q, KV, D, SCORE, STAGES)` (any head dim: D is 0).
macro_rules! merge_ranks_instance {
    ($name:ident, $q:ident, $kv:ident, $d:literal, $score:ident, $stages:literal) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: $crate::params::MergeRanksParams) {
            unsafe { $crate::merge::merge_ranks::<$crate::elem::$q>(&p) }
        }
    };
}
pub(crate) use merge_ranks_instance;

/// One entry point (the kernel table's row, `registry::KERNELS`; build.rs writes the calls):
/// `merge_instance!(name, Q, KV, D, SCORE, STAGES)` (any head dim: D is 0).
macro_rules! merge_instance {
    ($name:ident, $q:ident, $kv:ident, $d:literal, $score:ident, $stages:literal) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: $crate::params::MergeParams) {
            unsafe { $crate::merge::merge_splits::<$crate::elem::$q>(&p) }
        }
    };
}
pub(crate) use merge_instance;
