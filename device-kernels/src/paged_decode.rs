//! Paged attention, one query token per thread block: decode, and (slowly but exactly) the
//! rows of a chunked prefill. Online softmax over the block table; a GQA group of up to
//! `MAXG` query heads shares every K/V load; optionally one split of the keys
//! (flash-decoding), whose mergeable state goes to a workspace for `merge`.
//!
//! Arguments (`PagedAttnParams`):
//! - q, out: `[num_tokens, num_q_heads, D]`; caches `[num_blocks, block_size, num_kv_heads, D]`;
//!   block_table `i32 [num_seqs, stride]`; seq_lens `i32`; query_start_loc `i32 [num_seqs+1]`.
//! - Query token `t` of request `r` sits at absolute position
//!   `seq_lens[r] - q_len(r) + (t - query_start_loc[r])` and sees keys `[begin, pos]`
//!   (causal with a start offset; `begin` from the sliding window).
//!
//! Grid: x = query token, y = kv head x tile of `MAXG` query heads, z = split.
//! Block: `WARPS` warps. A K/V row of D 16-bit elements is read by `L = D/8` lanes with one
//! 16-byte load each, so a warp covers `32/L` rows per load and `CHUNK = PASSES * 32/L` rows
//! per iteration; warp `w` takes chunks `w, w + WARPS, ...` of its split.
//! Shared memory (`paged_smem_bytes`): per warp a `STAGES`-deep cp.async pipeline of chunks
//! (K and V, 16 bytes per lane per pass); afterwards reused for the cross-warp merge,
//! `WARPS * MAXG * (D + 2)` f32: each warp's (acc[D], m, l) per head.
//! The host guarantees: block ids inside the cache, block_size a power of two, rows 16-byte
//! aligned, `num_q_heads % num_kv_heads == 0`, seq_lens >= query lengths.

use crate::elem::{Bf16, Elem, F16};
use crate::intrinsics::*;
use crate::params::{PagedAttnParams, PAGED_MAX_GROUP, PAGED_PASSES, PAGED_STAGES, PAGED_WARPS};

const WARPS: usize = PAGED_WARPS as usize;
const MAXG: usize = PAGED_MAX_GROUP as usize;
/// 16-byte rows each lane takes per K and per V per chunk (one softmax rescale per chunk).
const PASSES: usize = PAGED_PASSES as usize;
/// Chunks in flight per warp (cp.async pipeline depth).
const STAGES: usize = PAGED_STAGES as usize;
const PIPE_BYTES_PER_WARP: usize = STAGES * PASSES * 2 * 32 * 16;
/// Initial running max: finite, so that merging two empty states gives 0, not NaN.
const NEG_INIT: f32 = -1.0e30;
const LOG2E: f32 = core::f32::consts::LOG2_E;

#[inline(always)]
pub(crate) unsafe fn ld_i32(p: u64, i: usize) -> i32 {
    unsafe { *(p as *const i32).add(i) }
}

/// The request owning query token `token`: the last `r` with `query_start_loc[r] <= token`
/// (requests with no query tokens this step are skipped over).
#[inline(always)]
pub(crate) unsafe fn find_request(query_start_loc: u64, num_seqs: u32, token: u32) -> usize {
    // invariant: qsl[lo] <= token < qsl[hi]
    let (mut lo, mut hi) = (0u32, num_seqs);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if unsafe { ld_i32(query_start_loc, mid as usize) } as u32 <= token {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo as usize
}

/// Sum of `x` over the `lanes` lanes (a power of two) of an aligned lane group.
#[inline(always)]
fn group_sum(mut x: f32, lanes: usize) -> f32 {
    let mut off = 1;
    while off < lanes {
        x += shfl_sync_bfly_f32(x, off as u32);
        off *= 2;
    }
    x
}

#[inline(always)]
unsafe fn paged_attention<E: Elem, const D: usize>(p: &PagedAttnParams) {
    let lanes_per_row = D / 8;
    let rows_per_pass = 32 / lanes_per_row;
    let chunk = rows_per_pass * PASSES;

    let tid = thread_idx_x() as usize;
    let lane = tid % 32;
    let warp = tid / 32;
    let row = lane / lanes_per_row;
    let dslice = (lane % lanes_per_row) * 8;

    let token = block_idx_x();
    let split = block_idx_z() as usize;
    let group = div_nz(p.num_q_heads as usize, p.num_kv_heads as usize);
    let tiles = group.div_ceil(MAXG);
    let kv_head = div_nz(block_idx_y() as usize, tiles);
    let tile = block_idx_y() as usize - kv_head * tiles;
    let head0 = kv_head * group + tile * MAXG;
    let ng = if group - tile * MAXG < MAXG { group - tile * MAXG } else { MAXG };

    // This query's key range [kv_begin, kv_end).
    let seq = unsafe { find_request(p.query_start_loc, p.num_seqs, token) };
    let q_start = unsafe { ld_i32(p.query_start_loc, seq) };
    let q_len = unsafe { ld_i32(p.query_start_loc, seq + 1) } - q_start;
    let seq_len = unsafe { ld_i32(p.seq_lens, seq) };
    let q_pos = (seq_len - q_len + (token as i32 - q_start)) as usize;
    let kv_end = q_pos + 1;
    let window = p.sliding_window as usize;
    let kv_begin = if window > 0 && kv_end > window { kv_end - window } else { 0 };

    // This split's chunks [c_begin, c_end).
    let first_chunk = kv_begin / chunk;
    let n_chunks = kv_end.div_ceil(chunk) - first_chunk;
    let per_split = div_nz(n_chunks + p.num_splits as usize - 1, p.num_splits as usize);
    let c_begin = first_chunk + split * per_split;
    let c_end = if c_begin + per_split < first_chunk + n_chunks {
        c_begin + per_split
    } else {
        first_chunk + n_chunks
    };

    // q, pre-scaled; log2(e) folded in too when nothing nonlinear follows the dot product.
    let plain = p.softcap == 0.0 && p.alibi_slopes == 0;
    let q_mul = if plain { p.scale * LOG2E } else { p.scale };
    let mut q = [[0.0f32; 8]; MAXG];
    let mut slope = [0.0f32; MAXG];
    for g in 0..MAXG {
        if g < ng {
            let off = token as u64 * p.q_token_stride + (head0 + g) as u64 * p.q_head_stride;
            let v = unsafe { ld_global_nc_v4((p.q as *const u16).add((off as usize) + dslice)) };
            q[g] = E::unpack8(v);
            for i in 0..8 {
                q[g][i] *= q_mul;
            }
            if p.alibi_slopes != 0 {
                slope[g] = unsafe { *(p.alibi_slopes as *const f32).add(head0 + g) };
            }
        }
    }

    // Online-softmax state per head, in log2 units: running max m, denominator l, and the
    // unnormalised accumulator for this lane's 8 dims. All lanes of a row group agree on m, l.
    let mut m = [NEG_INIT; MAXG];
    let mut l = [0.0f32; MAXG];
    let mut acc = [[0.0f32; 8]; MAXG];

    let bt_row = seq * p.block_table_stride as usize;
    let page_mask = (1usize << p.block_size_log2) - 1;
    let head_off = kv_head as u64 * p.cache_head_stride + dslice as u64;
    // Offset of the cache row of key `t`, clamped into the key range: rows outside it load
    // a valid row instead (no branch around the copies) and are masked out of the scores.
    let row_offset = |t: usize| -> usize {
        let tc = if t < kv_begin { kv_begin } else if t >= kv_end { kv_end - 1 } else { t };
        let phys = unsafe { ld_i32(p.block_table, bt_row + (tc >> p.block_size_log2)) };
        (phys as u64 * p.cache_block_stride + (tc & page_mask) as u64 * p.cache_token_stride + head_off) as usize
    };

    // Per-warp pipeline of `STAGES` chunks in shared memory, filled by cp.async: stage s,
    // pass pi, K or V, lane -> 16 bytes. Each lane reads back only what it copied itself, so
    // waiting on its own copy groups is all the synchronisation the pipeline needs.
    let smem = dynamic_shared_f32();
    let pipe = cvta_to_shared(smem) + (warp * PIPE_BYTES_PER_WARP) as u32;
    let slot = |stage: usize, pi: usize, kv: usize| -> u32 {
        pipe + ((((stage * PASSES + pi) * 2 + kv) * 32 + lane) * 16) as u32
    };
    let issue = |c: usize, stage: usize| {
        for pi in 0..PASSES {
            let off = row_offset(c * chunk + pi * rows_per_pass + row);
            unsafe {
                cp_async_cg_16(slot(stage, pi, 0), (p.key_cache as *const u16).add(off));
                cp_async_cg_16(slot(stage, pi, 1), (p.value_cache as *const u16).add(off));
            }
        }
    };
    // Prologue: chunks it = 0..STAGES-1 in flight (one commit group each, empty past the end).
    for s in 0..STAGES - 1 {
        let c = c_begin + warp + s * WARPS;
        if c < c_end {
            issue(c, s);
        }
        cp_async_commit_group();
    }
    let mut it = 0usize;
    let mut c = c_begin + warp;
    while c < c_end {
        // Keep STAGES-1 chunks ahead in flight; the stage refilled is the one consumed last
        // iteration.
        let ahead = c + (STAGES - 1) * WARPS;
        if ahead < c_end {
            issue(ahead, (it + STAGES - 1) % STAGES);
        }
        cp_async_commit_group();
        // Invariant: groups 0..=it are complete, so chunk c (group it) is in stage it % STAGES.
        cp_async_wait_group::<{ STAGES as u32 - 1 }>();
        let stage = it % STAGES;
        let base = c * chunk;
        let mut valid = [false; PASSES];
        let mut kreg = [V4::ZERO; PASSES];
        for pi in 0..PASSES {
            let t = base + pi * rows_per_pass + row;
            valid[pi] = t >= kv_begin && t < kv_end;
            kreg[pi] = unsafe { ld_shared_v4(slot(stage, pi, 0)) };
        }
        // Scores s[g][pi] (log2 units); -inf outside the key range.
        let mut s = [[f32::NEG_INFINITY; PASSES]; MAXG];
        for pi in 0..PASSES {
            let k = E::unpack8(kreg[pi]);
            let t = base + pi * rows_per_pass + row;
            for g in 0..MAXG {
                if g < ng {
                    let mut dot = 0.0f32;
                    for i in 0..8 {
                        dot += q[g][i] * k[i];
                    }
                    let mut x = group_sum(dot, lanes_per_row);
                    if !plain {
                        if p.softcap != 0.0 {
                            x = p.softcap * tanh_approx(x * rcp_approx(p.softcap));
                        }
                        x = (x + slope[g] * (t as f32 - q_pos as f32)) * LOG2E;
                    }
                    if valid[pi] {
                        s[g][pi] = x;
                    }
                }
            }
        }
        // Rescale once per chunk to the new running max, then accumulate p * V.
        for g in 0..MAXG {
            if g < ng {
                let mut mx = m[g];
                for pi in 0..PASSES {
                    mx = mx.max(s[g][pi]);
                }
                let r = ex2_approx(m[g] - mx);
                m[g] = mx;
                l[g] *= r;
                for i in 0..8 {
                    acc[g][i] *= r;
                }
            }
        }
        for pi in 0..PASSES {
            let v = E::unpack8(unsafe { ld_shared_v4(slot(stage, pi, 1)) });
            for g in 0..MAXG {
                if g < ng {
                    let pr = ex2_approx(s[g][pi] - m[g]);
                    l[g] += pr;
                    for i in 0..8 {
                        acc[g][i] += pr * v[i];
                    }
                }
            }
        }
        c += WARPS;
        it += 1;
    }

    // Merge the row groups of each warp (lanes lane ^ L, lane ^ 2L, ...).
    let mut off = lanes_per_row;
    while off < 32 {
        for g in 0..MAXG {
            if g < ng {
                let mo = shfl_sync_bfly_f32(m[g], off as u32);
                let lo = shfl_sync_bfly_f32(l[g], off as u32);
                let mn = m[g].max(mo);
                let a = ex2_approx(m[g] - mn);
                let b = ex2_approx(mo - mn);
                l[g] = l[g] * a + lo * b;
                for i in 0..8 {
                    let ao = shfl_sync_bfly_f32(acc[g][i], off as u32);
                    acc[g][i] = acc[g][i] * a + ao * b;
                }
                m[g] = mn;
            }
        }
        off *= 2;
    }

    // Merge the warps through shared memory: smem[warp][g] = (acc[0..D], m, l), reusing the
    // pipeline's space once every warp is done with it.
    cp_async_wait_group::<0>();
    bar_sync();
    let stride = D + 2;
    if row == 0 {
        for g in 0..MAXG {
            if g < ng {
                let base = (warp * MAXG + g) * stride;
                unsafe {
                    for i in 0..8 {
                        *smem.add(base + dslice + i) = acc[g][i];
                    }
                    if dslice == 0 {
                        *smem.add(base + D) = m[g];
                        *smem.add(base + D + 1) = l[g];
                    }
                }
            }
        }
    }
    bar_sync();
    if tid >= MAXG * lanes_per_row {
        return;
    }
    let g = tid / lanes_per_row;
    if g >= ng {
        return;
    }
    let ds = (tid % lanes_per_row) * 8;
    let mut mall = NEG_INIT;
    for w in 0..WARPS {
        mall = mall.max(unsafe { *smem.add((w * MAXG + g) * stride + D) });
    }
    let mut lsum = 0.0f32;
    let mut o = [0.0f32; 8];
    for w in 0..WARPS {
        let base = (w * MAXG + g) * stride;
        let f = ex2_approx(unsafe { *smem.add(base + D) } - mall);
        lsum += unsafe { *smem.add(base + D + 1) } * f;
        for i in 0..8 {
            o[i] += unsafe { *smem.add(base + ds + i) } * f;
        }
    }
    let inv = if lsum > 0.0 { 1.0 / lsum } else { 0.0 };
    for i in 0..8 {
        o[i] *= inv;
    }
    let head = (head0 + g) as u64;
    if p.num_splits == 1 {
        let off = token as u64 * p.out_token_stride + head * p.out_head_stride + ds as u64;
        unsafe { st_global_v4((p.out as *mut u16).add(off as usize) as *mut u32, E::pack8(&o)) };
    } else {
        let row_idx = (split as u64 * p.num_tokens as u64 + token as u64) * p.num_q_heads as u64 + head;
        let po = (p.partial_out as *mut f32).wrapping_add((row_idx * D as u64) as usize + ds);
        unsafe {
            st_global_v4(po as *mut u32, V4([o[0].to_bits(), o[1].to_bits(), o[2].to_bits(), o[3].to_bits()]));
            st_global_v4(po.add(4) as *mut u32, V4([o[4].to_bits(), o[5].to_bits(), o[6].to_bits(), o[7].to_bits()]));
            if ds == 0 {
                let ml = (p.partial_ml as *mut f32).add((row_idx * 2) as usize);
                *ml = mall;
                *ml.add(1) = lsum;
            }
        }
    }
}

macro_rules! paged_attention_kernels {
    ($($name:ident: $elem:ty, $d:literal;)*) => {$(
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: PagedAttnParams) {
            unsafe { paged_attention::<$elem, $d>(&p) }
        }
    )*};
}

// The instantiation table: (dtype x head dim). The host's table in
// `attn_host::cuda::kernels` names the same entries.
paged_attention_kernels! {
    paged_attention_bf16_d64: Bf16, 64;
    paged_attention_bf16_d128: Bf16, 128;
    paged_attention_bf16_d256: Bf16, 256;
    paged_attention_f16_d64: F16, 64;
    paged_attention_f16_d128: F16, 128;
    paged_attention_f16_d256: F16, 256;
}
