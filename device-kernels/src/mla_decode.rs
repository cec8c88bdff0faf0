//! MLA decode (DeepSeek-V2/V3, Kimi-K2) in the absorbed form, over the paged latent cache,
//! on tensor cores (`mma.sync`: the portable path).
//!
//! Every query head attends to the same latent rows: a key is a `D` = 576-dim row (512
//! latent + 64 rope), its value the row's first `DV` = 512 dims. So a thread block owns
//! `ROWS` = 64 (query token, head) rows of one request and one split of its keys, and each
//! K tile, read from memory once, serves both `S = Q K^T` (576 dims) and, by its first 512
//! dims, `O += P V`.
//!
//! Warps come in pairs per 16-row group (`group = warp / 2`, `half = warp % 2`: a pair sits
//! on two of the SM's four sub-partitions, so a request of 16 rows uses two tensor cores and
//! one of 32 rows all four). Half `h` computes the scores' partial dot products over the
//! k-steps `2 ks + h` (16 dims each, 18 of them); the pair swaps them through shared memory
//! and both hold the full scores, so both run the same online softmax (the same operations
//! in the same order: their states agree bit for bit).
//! Half `h` then owns output columns `256 h .. 256 h + 256`: 128 f32 accumulators a lane.
//! Per K tile of `BN` keys:
//! - partial `S` over this half's 18 k-steps (Q from shared memory, K with `ldmatrix`);
//! - exchange with the partner warp, sum;
//! - the causal mask (query tokens of a request are causal among themselves) only on tiles
//!   that cross a row's position or the split's end;
//! - online softmax (log2 units, the scale folded into the exponent);
//! - `O += P V` over this half's 256 columns (V with `ldmatrix.trans` from the K tile).
//!
//! Split-KV: the plan cuts each request's keys into chunks (its work items, each a request's
//! key range; the schedule balances ragged batches over the SMs); a token whose request has
//! one chunk is written to `out`, others to the workspace, merged by `merge_splits` with
//! per-token counts.
//!
//! An fp8 latent cache (`kv::E4m3`: FlashMLA's 656-byte rows, `params::MLA_FP8_ROW_BYTES`)
//! streams its rows as stored, 43% fewer bytes; after tile i's `P V` the converters (the
//! warps of row groups past the request's rows where there are such, else every thread)
//! convert four 16-value chunks of one key of tile i + 1 (`e4m3 x` its 128-value tile's scale,
//! rounded once to the query type) and one chunk of its rotary dims into the second of two
//! 16-bit K tiles the MMAs read, and the next tile's barrier publishes it.
//!
//! Grid: x = 64-row tiles of the request's rows, y = the plan's work items: a
//! request's row tiles are adjacent in launch order, so they run together and its keys are
//! read from DRAM once, the other tiles' reads hitting L2 (with x the pairs, M2's second
//! wave re-read every request's cache from DRAM: L2 hit rate 26%, DRAM 76% busy).
//! The host guarantees: block ids inside the cache, block_size a power of two, splits
//! inside their request's keys, rows 16-byte aligned.

use crate::elem::Elem;
use crate::gather::{clamp_key, ld_i32, tile_range, PagedKeys};
use crate::intrinsics::*;
use crate::kv::KvStore;
use crate::params::{mla_row_bytes, MlaParams, MLA_FP8_ROPE_AT, MLA_FP8_SCALES_AT, MLA_KEYS, MLA_LATENT_DIM, MLA_RANK, MLA_ROWS, MLA_WARPS};
use crate::softmax::{inv_denominator, p_fragment, rescale, RowState, LOG2E};
use crate::tile::{load_tile, swizzled, LdmLane};

const WARPS: usize = MLA_WARPS as usize;
const ROWS: usize = MLA_ROWS as usize;
/// Keys per tile, score n-tiles per tile (the pipeline's depth, `STAGES`, is the kernel's
/// parameter).
const BN: usize = MLA_KEYS as usize;
const NB: usize = BN / 8;
/// Key (and query) dims, value dims; 16-byte chunks and bytes of a shared-memory row (72
/// chunks: the swizzle moves a chunk only inside its group of 8, so rows need no padding).
const D: usize = MLA_LATENT_DIM as usize;
const DV: usize = MLA_RANK as usize;
const CHUNKS: usize = D / 8;
const ROW_BYTES: usize = D * 2;
/// k-steps of one half's partial scores; output n-tiles of one half's columns.
const KS_HALF: usize = D / 16 / 2;
pub(crate) const NT_HALF: usize = DV / 2 / 8;

#[inline(always)]
pub(crate) unsafe fn mla_decode<E: Elem, K: KvStore, const STAGES: usize>(p: &MlaParams) {
    let tid = thread_idx_x() as usize;
    let lane = tid % 32;
    let warp = tid / 32;
    let group = warp / 2;
    let half = warp % 2;
    // Fragment coordinates: rows r0 and r0 + 8 of the warp's 16, columns (col, col + 1).
    let r0 = lane / 4;
    let col = 2 * (lane % 4);

    let Some(b) = (unsafe { MlaBlock::new(p, block_idx_y() as usize) }) else {
        return; // the whole block: a request with fewer rows than the grid's widest
    };
    let MlaBlock { req, q_start, ctx, min_pos, max_pos, kv_begin, kv_end, .. } = b;
    let (row_valid, row_token, row_head) = (|i| b.row_valid(i), |i| b.row_token(i), |i| b.row_head(i));
    let (t_first, n_tiles) = if kv_end > kv_begin { tile_range(kv_begin, kv_end, BN) } else { (0, 0) };

    // Shared memory: the Q tile [ROWS rows], swizzled rows of CHUNKS chunks; an fp8 cache's
    // two converted K tiles [BN rows] (the same rows); STAGES cache tiles [BN rows of `raw_row`
    // bytes: swizzled 16-bit rows, or fp8 rows as stored]; then the score exchange,
    // [warp][n-tile][lane] 16-byte vectors.
    let raw_row = mla_row_bytes(K::BYTES as u32) as usize;
    let smem = cvta_to_shared(dynamic_shared_f32());
    let converted = smem + (ROWS * ROW_BYTES) as u32;
    let k_base = converted + if K::CONVERT { (2 * BN * ROW_BYTES) as u32 } else { 0 };
    let k_tile = |stage: usize| k_base + (stage * BN * raw_row) as u32;
    let xchg = k_base + (STAGES * BN * raw_row) as u32;
    let x_at = |w: usize, j: usize| xchg + (((w * NB + j) * 32 + lane) * 16) as u32;

    // K tile `t` into `stage`: thread -> one key row (`tpr` threads a row) and every
    // `tpr`-th chunk of it, one block-table lookup per thread and tile.
    let keys = PagedKeys {
        block_table: p.block_table,
        bt_row: req * p.block_table_stride as usize,
        block_size_log2: p.block_size_log2,
        block_stride: p.cache_block_stride,
        // One latent row per token: the token stride is the row (a constant, one register
        // fewer in the loop), in elements of 16 bits or bytes of fp8.
        token_stride: if K::CONVERT { raw_row as u64 } else { D as u64 },
        head_off: 0,
    };
    const THREADS: usize = WARPS * 32;
    let tpr = THREADS / BN;
    let (my_row, my_chunk0) = (tid / tpr, tid % tpr);
    let raw_chunks = raw_row / 16;
    let issue = |t: usize, stage: usize| {
        let off = keys.offset(clamp_key(t * BN + my_row, kv_begin, kv_end));
        let src = unsafe { (p.cache as *const u8).add(off * K::BYTES) };
        let dst = k_tile(stage);
        for k in 0..raw_chunks.div_ceil(tpr) {
            let c = my_chunk0 + k * tpr;
            if c < raw_chunks {
                // 16-bit rows land swizzled for ldmatrix; fp8 rows as stored (the conversion
                // reads them 128 contiguous bytes a quarter-warp: no bank conflicts).
                let at = if K::CONVERT { my_row * raw_row + 16 * c } else { swizzled(my_row, c, ROW_BYTES) };
                unsafe { cp_async_cg_16(dst + at as u32, src.add(16 * c) as *const u16) };
            }
        }
    };
    // Tiles in flight before the loop: STAGES - 1 (16-bit); STAGES for fp8, whose tile i + 1
    // is converted while tile i is computed on.
    let ahead = if K::CONVERT { STAGES } else { STAGES - 1 };
    for s in 0..ahead {
        if s < n_tiles {
            issue(t_first + s, s);
        }
        cp_async_commit_group();
    }

    // Q tile into shared memory (rows past the request's are zero).
    let q_row = |m: usize| {
        let off = (q_start + row_token(m)) as u64 * p.q_token_stride + row_head(m) as u64 * p.q_head_stride;
        if row_valid(m) { Some((p.q as *const u16).wrapping_add(off as usize)) } else { None }
    };
    unsafe { load_tile(tid, THREADS, ROWS, CHUNKS, q_row, |m, c| smem + swizzled(m, c, ROW_BYTES) as u32) };

    let ldm = LdmLane::new(lane, ROW_BYTES);
    // Half h takes the odd or even k-steps (kk = 2 ks + h) of the scores and the chunk
    // pairs 16 h .. 16 h + 16 of the values, so that its swizzle XORs are lane values of
    // four plus compile-time offsets (`LdmLane::xor_k`).
    let (ax_s, bx_s) = (LdmLane::xor_table(ldm.a_x ^ (32 * half as u32)), LdmLane::xor_table(ldm.b_x ^ (32 * half as u32)));
    let ax_v = LdmLane::xor_table(ldm.a_x);
    // This half's first value column, in bytes of a row (256 columns of 2 bytes).
    let v_half = (half * (DV / 2) * 2) as u32;
    let wrow = 16 * group;
    let q_rows = smem + (wrow * ROW_BYTES) as u32;
    // Whether this warp's group holds any row (uniform over the pair): groups past the
    // request's rows only keep the barriers.
    let active = row_valid(wrow);
    // This lane's two rows' positions (rows past the request take the last one's).
    let mut pos = [max_pos; 2];
    for h in 0..2 {
        let i = wrow + r0 + 8 * h;
        if row_valid(i) {
            pos[h] = ctx + row_token(i);
        }
    }
    // fp8 converters of tiles 1..: the warps of groups with no rows where there are any
    // (a decode of 16 or 32 rows: they would only wait at the barriers), so that the
    // conversion leaves the critical path of the warps that compute; else every thread.
    let groups = (b.n_rows - b.row0).min(ROWS).div_ceil(16);
    let conv_first = if groups < ROWS / 16 { groups * 64 } else { 0 };
    // fp8: two converted tiles, tile i in `conv(i % 2)`; tile 0 converted here.
    let conv = |i: usize| converted + ((i % 2) * BN * ROW_BYTES) as u32;
    if K::CONVERT && n_tiles > 0 {
        cp_async_wait_pending(STAGES - 1);
        bar_sync();
        unsafe { convert_fp8_row::<E, K>(k_tile(0) + (my_row * raw_row) as u32, conv(0), my_row, my_chunk0) };
    }
    let s_exp = p.scale * LOG2E;
    let mut rows = RowState::new();
    let mut o = [[0.0f32; 4]; NT_HALF];

    for i in 0..n_tiles {
        // Invariant: tile i is in shared memory for every thread after the barrier (fp8: its
        // converted tile `conv(i)`, and tile i + 1 as stored), and every warp is done with
        // tile i - 1 (its stage is refilled now; fp8: `conv(i + 1)` is free) and with the
        // previous exchange.
        cp_async_wait_pending(STAGES - 2);
        bar_sync();
        if i + ahead < n_tiles {
            issue(t_first + i + ahead, (i + ahead) % STAGES);
        }
        cp_async_commit_group();
        let key0 = (t_first + i) * BN;
        let k_src = if K::CONVERT { conv(i) } else { k_tile(i % STAGES) };
        let (k_rows, v_rows) = (k_src + ldm.b_row, k_src + ldm.a_row);

        // Partial S over this half's k-steps, then published for the partner warp.
        let mut s = [[0.0f32; 4]; NB];
        if active {
            for ks in 0..KS_HALF {
                let a = unsafe { ldmatrix_x4(q_rows + ldm.a_row + LdmLane::xor_k(ax_s, 2 * ks)) };
                for j in 0..BN / 16 {
                    let b = unsafe { ldmatrix_x4(k_rows + (16 * j * ROW_BYTES) as u32 + LdmLane::xor_k(bx_s, 2 * ks)) };
                    s[2 * j] = E::mma(a, [b[0], b[1]], s[2 * j]);
                    s[2 * j + 1] = E::mma(a, [b[2], b[3]], s[2 * j + 1]);
                }
            }
            for j in 0..NB {
                unsafe { st_shared_v4(x_at(warp, j), V4([s[j][0].to_bits(), s[j][1].to_bits(), s[j][2].to_bits(), s[j][3].to_bits()])) };
            }
        }
        bar_sync();
        if active {
        // Full scores: own half + partner's half.
        for j in 0..NB {
            let v = unsafe { ld_shared_v4(x_at(warp ^ 1, j)) };
            for e in 0..4 {
                s[j][e] += f32::from_bits(v.0[e]);
            }
        }
        // Causal mask only where the tile crosses the first row's position or the split's
        // end.
        if key0 + BN > min_pos + 1 || key0 + BN > kv_end {
            for j in 0..NB {
                for e in 0..4 {
                    let key = key0 + 8 * j + col + e % 2;
                    if key > pos[e / 2] || key >= kv_end {
                        s[j][e] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let corr = rows.update(&mut s, s_exp);
        rescale(&mut o, corr);
        // O[:, half's 256 columns] += P V: chunk pairs 16 half + dp of the K rows.
        for kc in 0..BN / 16 {
            let pa = p_fragment::<E, NB>(&s, kc);
            for dp in 0..NT_HALF / 2 {
                let b = unsafe { ldmatrix_x4_trans(v_rows + v_half + (16 * kc * ROW_BYTES) as u32 + LdmLane::xor_k(ax_v, dp)) };
                o[2 * dp] = E::mma(pa, [b[0], b[1]], o[2 * dp]);
                o[2 * dp + 1] = E::mma(pa, [b[2], b[3]], o[2 * dp + 1]);
            }
        }
        }
        // fp8: tile i + 1 into `conv(i + 1)` by the converters (unit u: key row u / tpr widens
        // latent chunks u % tpr + 8 k, 128-value tile k, and rotary chunk u % tpr), while the
        // warps with rows compute; the next barrier publishes it.
        if K::CONVERT && i + 1 < n_tiles && tid >= conv_first {
            let mut u = tid - conv_first;
            while u < BN * tpr {
                let (row, chunk0) = (u / tpr, u % tpr);
                unsafe { convert_fp8_row::<E, K>(k_tile((i + 1) % STAGES) + (row * raw_row) as u32, conv(i + 1), row, chunk0) };
                u += THREADS - conv_first;
            }
        }
    }
    cp_async_wait_group::<0>();

    // Each lane's two rows: to `out`, or to the workspace for the merge.
    unsafe { store_mla_rows::<E>(p, &b, &rows, &o, wrow + r0, half, lane) };
}

/// An MLA block's request, split and rows, from its grid position: `(request, split)` from
/// the plan's schedule (grid y), 64 rows from `row0` (grid x) of the request's (token, head)
/// pairs in q's order, and the split's keys `[kv_begin, kv_end)`, cut after the block's last
/// row's position. Shared by the `mma.sync` and the wgmma (`mla_decode_sm90`) kernels.
#[derive(Clone, Copy)]
pub(crate) struct MlaBlock {
    pub req: usize,
    pub split: usize,
    pub hq: usize,
    pub q_start: usize,
    /// Keys before the request's first query token.
    pub ctx: usize,
    pub n_rows: usize,
    pub row0: usize,
    pub min_pos: usize,
    pub max_pos: usize,
    pub kv_begin: usize,
    pub kv_end: usize,
}

impl MlaBlock {
    /// Work item `item` of the plan (`MlaParams::splits`) on this block's row tile (grid x);
    /// `None` where the tile is past its request's rows (the grid is as wide as the widest).
    #[inline(always)]
    pub unsafe fn new(p: &MlaParams, item: usize) -> Option<MlaBlock> {
        let req = unsafe { ld_i32(p.splits, 4 * item) } as usize;
        let split = unsafe { ld_i32(p.splits, 4 * item + 1) } as usize;
        let hq = p.num_q_heads as usize;
        let q_start = unsafe { ld_i32(p.query_start_loc, req) } as usize;
        let q_end = unsafe { ld_i32(p.query_start_loc, req + 1) } as usize;
        let seq_len = unsafe { ld_i32(p.seq_lens, req) } as usize;
        let ctx = seq_len - (q_end - q_start);
        let n_rows = (q_end - q_start) * hq;
        let row0 = block_idx_x() as usize * ROWS;
        if row0 >= n_rows {
            return None;
        }
        let last = if row0 + ROWS < n_rows { row0 + ROWS - 1 } else { n_rows - 1 };
        let min_pos = ctx + div_rows(row0, hq);
        let max_pos = ctx + div_rows(last, hq);
        // The item's keys, the causal bound of the tile's last row.
        let kv_begin = unsafe { ld_i32(p.splits, 4 * item + 2) } as usize;
        let end = unsafe { ld_i32(p.splits, 4 * item + 3) } as usize;
        let kv_end = if end < max_pos + 1 { end } else { max_pos + 1 };
        Some(MlaBlock { req, split, hq, q_start, ctx, n_rows, row0, min_pos, max_pos, kv_begin, kv_end })
    }
    /// Whether block row `i` is one of the request's rows.
    #[inline(always)]
    pub fn row_valid(&self, i: usize) -> bool {
        self.row0 + i < self.n_rows
    }
    /// Block row `i`'s query token, within the request.
    #[inline(always)]
    pub fn row_token(&self, i: usize) -> usize {
        div_rows(self.row0 + i, self.hq)
    }
    /// Block row `i`'s query head.
    #[inline(always)]
    pub fn row_head(&self, i: usize) -> usize {
        self.row0 + i - self.row_token(i) * self.hq
    }
}

/// A row's query token: `row / hq` in 32 bits (a step's rows are fewer than 2^32; the
/// 64-bit division's run-time check for 32-bit operands is a branch, per lane where the row
/// is, and in the Hopper kernel's item loop such branches made ptxas serialize every wgmma).
#[inline(always)]
fn div_rows(row: usize, hq: usize) -> usize {
    // SAFETY: hq is the layer's head count, validated as non-zero.
    (row as u32 / unsafe { core::num::NonZeroU32::new_unchecked(hq as u32) }) as usize
}

/// A lane's two rows (`m0`, `m0 + 8` of the block) of one half of the value dims (`half`:
/// columns `256 half ..`): to `out` (normalised; the log-sum-exp, by half 0, if asked) when
/// the token has one split, else the normalised partial row and its (max, denominator) to the
/// token's workspace slot for this split. All four lanes of a quad call it.
#[inline(always)]
pub(crate) unsafe fn store_mla_rows<E: Elem>(p: &MlaParams, b: &MlaBlock, rows: &RowState, o: &[[f32; 4]; NT_HALF], m0: usize, half: usize, lane: usize) {
    let col = 2 * (lane % 4);
    let hq = b.hq;
    for h in 0..2 {
        let i = m0 + 8 * h;
        let lsum = rows.denominator(h);
        if !b.row_valid(i) {
            continue;
        }
        let (token, head) = (b.q_start + b.row_token(i), b.row_head(i));
        let (slot0, count) = unsafe { (ld_i32(p.token_splits, 2 * token) as usize, ld_i32(p.token_splits, 2 * token + 1)) };
        let inv = inv_denominator(lsum);
        let c0 = half * (DV / 2) + col;
        if count == 1 {
            let base = token as u64 * p.out_token_stride + head as u64 * p.out_head_stride + c0 as u64;
            for nt in 0..NT_HALF {
                let v = E::from_f32x2(o[nt][2 * h] * inv, o[nt][2 * h + 1] * inv);
                unsafe { *((p.out as *mut u16).add((base + 8 * nt as u64) as usize) as *mut u32) = v };
            }
            if p.lse != 0 && half == 0 && lane % 4 == 0 {
                unsafe { *(p.lse as *mut f32).add(token * hq + head) = rows.lse(h, lsum) };
            }
        } else {
            let r = (slot0 + b.split) * hq + head;
            let po = (p.partial_out as *mut f32).wrapping_add(r * DV + c0);
            for nt in 0..NT_HALF {
                unsafe {
                    *po.add(8 * nt) = o[nt][2 * h] * inv;
                    *po.add(8 * nt + 1) = o[nt][2 * h + 1] * inv;
                }
            }
            if half == 0 && lane % 4 == 0 {
                let ml = p.partial_ml as *mut f32;
                unsafe {
                    *ml.add(2 * r) = rows.m[h];
                    *ml.add(2 * r + 1) = lsum;
                }
            }
        }
    }
}

/// One fp8 latent row of a tile, the part of thread (`row`, `j`) (`j` in `0..8`, the row's 8
/// threads): latent chunks `j + 8 k` (16 e4m3 values each, in 128-value tile `k`) widened
/// (`K::widen`, exact), times the tile's scale in f32, rounded to `E`, into the 16-bit K
/// tile's chunks `2 (j + 8 k)`, `2 (j + 8 k) + 1`; and rotary chunk `j` (8 values of `E`)
/// copied to chunk `64 + j`. `raw` is the row's shared-memory address as stored.
#[inline(always)]
unsafe fn convert_fp8_row<E: Elem, K: KvStore>(raw: u32, tile: u32, row: usize, j: usize) {
    let scales = unsafe { ld_shared_v4(raw + MLA_FP8_SCALES_AT) };
    for k in 0..(DV / 128) {
        let c = j + 8 * k;
        let scale = f32::from_bits(scales.0[k]);
        // Widened as `K::Mma<E>` (`E`, or f16 on the hardware's conversion), stored as `E`.
        let (lo, hi) = K::widen::<E>(unsafe { ld_shared_v4(raw + 16 * c as u32) });
        unsafe {
            st_shared_v4(tile + swizzled(row, 2 * c, ROW_BYTES) as u32, scale_v4::<K::Mma<E>, E>(lo, scale));
            st_shared_v4(tile + swizzled(row, 2 * c + 1, ROW_BYTES) as u32, scale_v4::<K::Mma<E>, E>(hi, scale));
        }
    }
    let rope = unsafe { ld_shared_v4(raw + MLA_FP8_ROPE_AT + 16 * j as u32) };
    unsafe { st_shared_v4(tile + swizzled(row, DV / 8 + j, ROW_BYTES) as u32, rope) };
}

/// Eight widened values of `S` (exact) times `scale` in f32, rounded once to `E` (an fp8
/// latent chunk's 128-dim tile scale; every MLA kernel's one rounding).
#[inline(always)]
pub(crate) fn scale_v4<S: Elem, E: Elem>(v: V4, scale: f32) -> V4 {
    let mut w = V4::ZERO;
    for i in 0..4 {
        let (x, y) = S::to_f32x2(v.0[i]);
        w.0[i] = E::from_f32x2(x * scale, y * scale);
    }
    w
}

/// One entry point (the kernel table's row, `registry::KERNELS`; build.rs writes the calls):
/// `mla_decode_instance!(name, Q, KV, D, SCORE, STAGES)`, STAGES one of `params::mla_stages`.
macro_rules! mla_decode_instance {
    ($name:ident, $q:ident, $kv:ident, $d:literal, $score:ident, $stages:literal) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: $crate::params::MlaParams) {
            unsafe { $crate::mla_decode::mla_decode::<$crate::elem::$q, $crate::kv::$kv, $stages>(&p) }
        }
    };
}
pub(crate) use mla_decode_instance;

/// The same kernel over the hardware's fp8 conversion (`kv::E4m3Cvt`, sm_90a module):
/// `mla_decode_cvt_instance!(name, Q, KV, D, SCORE, STAGES)`, KV `E4m3`.
macro_rules! mla_decode_cvt_instance {
    ($name:ident, $q:ident, $kv:ident, $d:literal, $score:ident, $stages:literal) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: $crate::params::MlaParams) {
            unsafe { $crate::mla_decode::mla_decode::<$crate::elem::$q, <$crate::kv::$kv as $crate::kv::Hardware>::Store, $stages>(&p) }
        }
    };
}
pub(crate) use mla_decode_cvt_instance;
