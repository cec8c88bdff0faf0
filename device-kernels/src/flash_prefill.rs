//! Flash prefill on tensor cores (FlashAttention-2's tiling with `mma.sync`), varlen and
//! causal with a start offset, K and V read through the block table: fresh prefill, chunked
//! prefill and prefix-cached tokens are one path. Sliding window, logits soft-cap, ALiBi;
//! optionally the log-sum-exp of each row.
//!
//! A thread block owns `ROWS` = 16 x `WARPS` query rows: the (token, query head) pairs of a
//! tile, `heads_per_tile` heads of one kv head's group for each of `tokens_per_tile`
//! consecutive query tokens of one request (row `m`: token `m / heads_per_tile`, head
//! `m % heads_per_tile`), so the GQA group shares every K/V tile. Warp `w` holds rows
//! `16 w .. 16 w + 16` as the rows of its m16n8k16 tiles. Per K/V tile of `BN` keys:
//! - `S = Q K^T` (`Q` as A fragments, in registers, or read from shared memory for d256;
//!   K as B fragments with `ldmatrix`), `BN / 8` n-tiles of f32 scores per warp;
//! - the mask only where the tile crosses a row's causal limit or window start;
//! - online softmax per row in log2 units (running max, denominator, output rescale);
//! - `O += P V` (the probabilities re-packed as A fragments, V with `ldmatrix.trans`).
//! K/V tiles come through a `STAGES`-deep cp.async pipeline shared by the block, rows
//! gathered through the block table, 16-byte chunks XOR-swizzled by row. Tiles wholly
//! above the block's last diagonal or before its window are never loaded.
//!
//! Grid: x = tile (the host's list of (request, first token)), y = kv head x head tile.
//! The host guarantees: tiles inside their request's query tokens, block ids inside the
//! cache, block_size a power of two, rows 16-byte aligned, seq_lens >= query lengths.

use crate::elem::{Bf16, Elem, F16};
use crate::intrinsics::*;
use crate::paged_decode::{ld_i32, quad_max, quad_sum};
use crate::params::{prefill_keys, prefill_q_in_smem, smem_row_chunks, prefill_stages, PrefillParams, PREFILL_ROWS, PREFILL_WARPS};

const WARPS: usize = PREFILL_WARPS as usize;
const ROWS: usize = PREFILL_ROWS as usize;
const NEG_INIT: f32 = -1.0e30;
const LOG2E: f32 = core::f32::consts::LOG2_E;
const LN2: f32 = core::f32::consts::LN_2;

/// `D`: head dim; `NT = D / 8` output n-tiles; `KS = D / 16` k-steps of `Q K^T`; `BN`: keys
/// per K/V tile, `NB = BN / 8` score n-tiles; `STAGES`: tiles in flight; `RC`: 16-byte chunks per shared-memory row;
/// `Q_SMEM`: Q read from shared memory at every k-step rather than held in registers.
#[inline(always)]
unsafe fn flash_prefill<E: Elem, const D: usize, const NT: usize, const KS: usize, const BN: usize, const NB: usize, const STAGES: usize, const RC: usize, const Q_SMEM: bool>(
    p: &PrefillParams,
) {
    let chunks = D / 8; // 16-byte chunks of a K/V/Q row in memory
    let row_bytes = RC * 16;
    let tid = thread_idx_x() as usize;
    let lane = tid % 32;
    let warp = tid / 32;
    // Fragment coordinates: this lane holds rows r0 and r0 + 8 of its warp's 16, and the
    // column pair (col, col + 1) of every 8-wide n-tile.
    let r0 = lane / 4;
    let col = 2 * (lane % 4);

    // The tile: its request and first query token; this block's kv head and head tile.
    let tile = block_idx_x() as usize;
    let req = unsafe { ld_i32(p.tiles, 2 * tile) } as usize;
    let tok0 = unsafe { ld_i32(p.tiles, 2 * tile + 1) } as usize;
    let group = div_nz(p.num_q_heads as usize, p.num_kv_heads as usize);
    let hpt = p.heads_per_tile as usize;
    let tpt = p.tokens_per_tile as usize;
    let head_tiles = div_nz(group + hpt - 1, hpt);
    let kv_head = div_nz(block_idx_y() as usize, head_tiles);
    let head_tile = block_idx_y() as usize - kv_head * head_tiles;
    let q_start = unsafe { ld_i32(p.query_start_loc, req) } as usize;
    let q_end = unsafe { ld_i32(p.query_start_loc, req + 1) } as usize;
    let seq_len = unsafe { ld_i32(p.seq_lens, req) } as usize;
    let ctx = seq_len - (q_end - q_start);
    let tok_end = if tok0 + tpt < q_end { tok0 + tpt } else { q_end };
    // Row m of the block: (token, head) when it is one of the tile's.
    let row_valid = |m: usize| m / hpt < tpt && tok0 + m / hpt < tok_end && head_tile * hpt + m % hpt < group;
    let row_token = |m: usize| tok0 + m / hpt;
    let row_head = |m: usize| kv_head * group + head_tile * hpt + m % hpt;

    // The block's keys: [kv_begin, kv_end), from the first row's window start to the last
    // row's position; key tiles [t_first, t_last].
    let min_pos = ctx + (tok0 - q_start);
    let max_pos = ctx + (tok_end - 1 - q_start);
    let kv_end = max_pos + 1;
    let window = p.sliding_window as usize;
    let kv_begin = if window > 0 && min_pos + 1 > window { min_pos + 1 - window } else { 0 };
    let t_first = kv_begin / BN;
    let n_tiles = (kv_end - 1) / BN + 1 - t_first;

    // Shared memory: the Q tile [ROWS x RC chunks], then STAGES pairs of K, V tiles
    // [BN x RC chunks]; chunk c of row r at r * row_bytes + (c ^ (r % 8)) * 16.
    let smem = cvta_to_shared(dynamic_shared_f32());
    let q_at = |r: usize, c: usize| -> u32 { smem + (r * row_bytes + ((c ^ (r % 8)) * 16)) as u32 };
    let kv_base = smem + (ROWS * row_bytes) as u32;
    let kv_at = |stage: usize, kv: usize, r: usize, c: usize| -> u32 {
        kv_base + ((stage * 2 + kv) * BN * row_bytes + r * row_bytes + ((c ^ (r % 8)) * 16)) as u32
    };

    // K/V tile `t` into `stage`: key rows gathered through the block table; keys outside
    // [kv_begin, kv_end) copy a valid row instead and are masked. Thread -> one key row
    // (`tpr` threads per row) and every `tpr`-th 16-byte chunk of it: one block-table
    // lookup per thread and tile.
    let bt_row = req * p.block_table_stride as usize;
    let page_mask = (1usize << p.block_size_log2) - 1;
    let head_off = kv_head as u64 * p.cache_head_stride;
    const THREADS: usize = WARPS * 32;
    let tpr = THREADS / BN;
    let my_row = tid / tpr;
    let my_chunk0 = tid % tpr;
    let my_dst = (my_row * row_bytes) as u32;
    let my_x = my_row % 8;
    let issue = |t: usize, stage: usize| {
        let key = t * BN + my_row;
        let kc = if key < kv_begin { kv_begin } else if key >= kv_end { kv_end - 1 } else { key };
        let phys = unsafe { ld_i32(p.block_table, bt_row + (kc >> p.block_size_log2)) };
        let off = (phys as u64 * p.cache_block_stride + (kc & page_mask) as u64 * p.cache_token_stride + head_off) as usize + my_chunk0 * 8;
        let (ksrc, vsrc) = unsafe { ((p.key_cache as *const u16).add(off), (p.value_cache as *const u16).add(off)) };
        let kdst = kv_base + (stage * 2 * BN * row_bytes) as u32 + my_dst;
        let vdst = kdst + (BN * row_bytes) as u32;
        for k in 0..chunks.div_ceil(tpr) {
            let c = my_chunk0 + k * tpr;
            if c < chunks {
                let sw = ((c ^ my_x) * 16) as u32;
                unsafe {
                    cp_async_cg_16(kdst + sw, ksrc.add(8 * (c - my_chunk0)));
                    cp_async_cg_16(vdst + sw, vsrc.add(8 * (c - my_chunk0)));
                }
            }
        }
    };
    // The pipeline's first tiles go out before Q is read.
    for s in 0..STAGES - 1 {
        if s < n_tiles {
            issue(t_first + s, s);
        }
        cp_async_commit_group();
    }

    // Q tile into shared memory (rows outside the tile are zero).
    let mut u = tid;
    while u < ROWS * chunks {
        let (m, c) = (u / chunks, u % chunks);
        let v = if row_valid(m) {
            let off = row_token(m) as u64 * p.q_token_stride + row_head(m) as u64 * p.q_head_stride + (c * 8) as u64;
            unsafe { ld_global_nc_v4((p.q as *const u16).add(off as usize)) }
        } else {
            V4::ZERO
        };
        unsafe { st_shared_v4(q_at(m, c), v) };
        u += WARPS * 32;
    }
    bar_sync();
    // ldmatrix lane -> row for A-like 16x16 operands (Q, and V read transposed): matrices
    // (rows 0-7, chunk 2k), (rows 8-15, 2k), (rows 0-7, 2k+1), (rows 8-15, 2k+1); for K as B:
    // (keys 0-7, chunk 2k), (keys 0-7, 2k+1), (keys 8-15, 2k), (keys 8-15, 2k+1). Every row
    // a lane addresses is lane % 8 modulo 8, so chunk `2k + half` of it sits at byte
    // `((2k + half) ^ (lane % 8)) * 16 = (half ^ lane % 8) * 16 ^ 32 k` of the row: a lane
    // constant XOR a compile-time one. Addresses are 32-bit shared-window offsets.
    let x8 = (lane % 8) as u32;
    let rb = row_bytes as u32;
    let a_row = ((((lane / 8) % 2) * 8 + lane % 8) as u32) * rb;
    let a_x = (((lane / 16) as u32) ^ x8) * 16;
    let k_row = ((((lane / 16) * 8 + lane % 8) as u32)) * rb;
    let k_x = ((((lane / 8) % 2) as u32) ^ x8) * 16;
    let wrow = 16 * warp;
    let q_lane = smem + (wrow as u32) * rb + a_row;
    let q_a = |ks: usize| -> u32 { q_lane + (a_x ^ (32 * ks as u32)) };
    let mut qa = [[0u32; 4]; KS];
    if !Q_SMEM {
        for ks in 0..KS {
            qa[ks] = unsafe { ldmatrix_x4(q_a(ks)) };
        }
    }

    // This lane's two rows: position, first visible key, ALiBi slope. Rows outside the tile
    // take the last row's position (computed, never stored).
    let mut pos = [max_pos; 2];
    let mut lo = [0usize; 2];
    let mut slopes = [0.0f32; 2];
    for h in 0..2 {
        let m = wrow + r0 + 8 * h;
        if row_valid(m) {
            pos[h] = ctx + (row_token(m) - q_start);
            if p.alibi_slopes != 0 {
                slopes[h] = unsafe { *(p.alibi_slopes as *const f32).add(row_head(m)) };
            }
        }
        lo[h] = if window > 0 && pos[h] + 1 > window { pos[h] + 1 - window } else { 0 };
    }
    let plain = p.softcap == 0.0 && p.alibi_slopes == 0;
    // The factor inside the exponent: the scale in log2 units for raw scores, 1 for scores
    // already modified into log2 units.
    let s_exp = if plain { p.scale * LOG2E } else { 1.0 };

    // Online-softmax state of rows r0, r0 + 8: running max (log2 units; the 4 quad lanes
    // agree), this lane's part of the denominator, and the output fragments.
    let mut m = [NEG_INIT; 2];
    let mut l = [0.0f32; 2];
    let mut o = [[0.0f32; 4]; NT];

    for i in 0..n_tiles {
        // Invariant: tile i's copies are complete (this thread's, then everyone's after the
        // barrier), and every warp is done with tile i - 1, whose stage is refilled now.
        cp_async_wait_pending(STAGES - 2);
        bar_sync();
        if i + STAGES - 1 < n_tiles {
            issue(t_first + i + STAGES - 1, (i + STAGES - 1) % STAGES);
        }
        cp_async_commit_group();
        let stage = i % STAGES;
        let key0 = (t_first + i) * BN;
        // This lane's rows of this stage's K and V tiles.
        let k_lane = kv_base + (stage * 2 * BN * row_bytes) as u32 + k_row;
        let v_lane = kv_base + ((stage * 2 + 1) * BN * row_bytes) as u32 + a_row;

        // S = Q K^T for BN keys: n-tile j holds keys key0 + 8 j ...
        let mut s = [[0.0f32; 4]; NB];
        for ks in 0..KS {
            let a = if Q_SMEM { unsafe { ldmatrix_x4(q_a(ks)) } } else { qa[ks] };
            for j in 0..BN / 16 {
                let b = unsafe { ldmatrix_x4(k_lane + (16 * j as u32) * rb + (k_x ^ (32 * ks as u32))) };
                s[2 * j] = E::mma(a, [b[0], b[1]], s[2 * j]);
                s[2 * j + 1] = E::mma(a, [b[2], b[3]], s[2 * j + 1]);
            }
        }

        // Scores: raw (the plain case: the scale to log2 units is folded into the exponent
        // below), or modified (soft-cap, ALiBi) and in log2 units. Masked only where the tile
        // crosses the first row's causal limit, the last row's window start, or the block's
        // key range.
        let masked = key0 + BN > min_pos + 1 || (window > 0 && key0 < max_pos + 1 - window.min(max_pos + 1)) || key0 < kv_begin;
        let kcol = (key0 + col) as u32;
        if !plain {
            for j in 0..NB {
                for e in 0..4 {
                    let key = kcol + (8 * j + e % 2) as u32;
                    let mut x = s[j][e] * p.scale;
                    if p.softcap != 0.0 {
                        x = p.softcap * tanh_approx(x * rcp_approx(p.softcap));
                    }
                    s[j][e] = (x + slopes[e / 2] * (key as i32 - pos[e / 2] as i32) as f32) * LOG2E;
                }
            }
        }
        if masked {
            for j in 0..NB {
                for e in 0..4 {
                    let key = kcol + (8 * j + e % 2) as u32;
                    if key > pos[e / 2] as u32 || key < lo[e / 2] as u32 {
                        s[j][e] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        // Online softmax per row: new max (log2 units), rescale, probabilities in place:
        // p = 2^(s * s_exp - m), one FFMA and one EX2 per score. (Skipping the rescale where
        // no row's max moved, decided by a warp vote, measured slower: the branch keeps the
        // multiplies from interleaving with the P V products.)
        for h in 0..2 {
            let mut mx = NEG_INIT;
            for j in 0..NB {
                mx = mx.max(s[j][2 * h]).max(s[j][2 * h + 1]);
            }
            let m_new = m[h].max(quad_max(mx) * s_exp);
            let corr = ex2_approx(m[h] - m_new);
            m[h] = m_new;
            let mut rowsum = 0.0f32;
            for j in 0..NB {
                let a = ex2_approx(fma(s[j][2 * h], s_exp, -m_new));
                let b = ex2_approx(fma(s[j][2 * h + 1], s_exp, -m_new));
                s[j][2 * h] = a;
                s[j][2 * h + 1] = b;
                rowsum += a + b;
            }
            l[h] = l[h] * corr + rowsum;
            for nt in 0..NT {
                o[nt][2 * h] *= corr;
                o[nt][2 * h + 1] *= corr;
            }
        }
        // O += P V, 16 keys at a time: P's A fragment from n-tiles 2 kc, 2 kc + 1.
        for kc in 0..BN / 16 {
            let pa = [
                E::from_f32x2(s[2 * kc][0], s[2 * kc][1]),
                E::from_f32x2(s[2 * kc][2], s[2 * kc][3]),
                E::from_f32x2(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                E::from_f32x2(s[2 * kc + 1][2], s[2 * kc + 1][3]),
            ];
            for dp in 0..NT / 2 {
                let b = unsafe { ldmatrix_x4_trans(v_lane + (16 * kc as u32) * rb + (a_x ^ (32 * dp as u32))) };
                o[2 * dp] = E::mma(pa, [b[0], b[1]], o[2 * dp]);
                o[2 * dp + 1] = E::mma(pa, [b[2], b[3]], o[2 * dp + 1]);
            }
        }
    }
    cp_async_wait_group::<0>();

    // Normalise and store this lane's two rows; the log-sum-exp if asked for.
    for h in 0..2 {
        let mrow = wrow + r0 + 8 * h;
        let lsum = quad_sum(l[h]);
        if !row_valid(mrow) {
            continue;
        }
        let inv = if lsum > 0.0 { 1.0 / lsum } else { 0.0 };
        let (token, head) = (row_token(mrow) as u64, row_head(mrow) as u64);
        let base = token * p.out_token_stride + head * p.out_head_stride;
        for nt in 0..NT {
            let v = E::from_f32x2(o[nt][2 * h] * inv, o[nt][2 * h + 1] * inv);
            unsafe { *((p.out as *mut u16).add((base + (nt * 8 + col) as u64) as usize) as *mut u32) = v };
        }
        if p.lse != 0 && lane % 4 == 0 {
            let lse = if lsum > 0.0 { (m[h] + lg2_approx(lsum)) * LN2 } else { f32::NEG_INFINITY };
            unsafe { *(p.lse as *mut f32).add((token * p.num_q_heads as u64 + head) as usize) = lse };
        }
    }
}

macro_rules! flash_prefill_kernels {
    ($($name:ident: $elem:ty, $d:literal;)*) => {$(
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: PrefillParams) {
            unsafe {
                flash_prefill::<
                    $elem, $d, { $d / 8 }, { $d / 16 },
                    { prefill_keys($d) as usize }, { prefill_keys($d) as usize / 8 }, { prefill_stages($d) as usize },
                    { smem_row_chunks($d) as usize }, { prefill_q_in_smem($d) },
                >(&p)
            }
        }
    )*};
}

// The instantiation table (dtype x head dim), named by the host's
// `cuda_paged::prefill_kernel`.
flash_prefill_kernels! {
    flash_prefill_bf16_d64: Bf16, 64;
    flash_prefill_bf16_d96: Bf16, 96;
    flash_prefill_bf16_d128: Bf16, 128;
    flash_prefill_bf16_d256: Bf16, 256;
    flash_prefill_f16_d64: F16, 64;
    flash_prefill_f16_d96: F16, 96;
    flash_prefill_f16_d128: F16, 128;
    flash_prefill_f16_d256: F16, 256;
}
