//! Paged attention on tensor cores, one query token per thread block: decode, and (exactly,
//! though not yet fast) the rows of a chunked or fresh prefill. Causal with a start offset,
//! sliding window, logits soft-cap, ALiBi; optionally one split of the keys
//! (flash-decoding), whose mergeable state goes to a workspace for `merge`.
//!
//! The GQA group's query heads are the 16 rows of `mma.m16n8k16` tiles, so a tile of 16 keys
//! costs a handful of tensor-core instructions; the kernel is left with streaming K and V.
//! (A first version on CUDA cores, 4 heads per block with FMAs and warp shuffles, reached
//! 0.5-0.6 of copy bandwidth on GQA 4:1 shapes: instruction-bound. This one: 0.93-0.95.)
//!
//! Arguments (`PagedAttnParams`):
//! - q, out: `[num_tokens, num_q_heads, D]`; caches `[num_blocks, block_size, num_kv_heads, D]`;
//!   block_table `i32 [num_seqs, stride]`; seq_lens `i32`; query_start_loc `i32 [num_seqs+1]`.
//! - Query token `t` of request `r` sits at absolute position
//!   `seq_lens[r] - q_len(r) + (t - query_start_loc[r])` and sees keys `[begin, pos]`
//!   (causal with a start offset; `begin` from the sliding window or the chunk of chunked
//!   local attention); an attention sink per query head joins the final denominator.
//!
//! Per warp and tile of `TILE` = 16 keys (`S = Q K^T`, then `O += P V`, FlashAttention-2
//! style, the score accumulators reused as the A operand of the second product):
//! - `Q` `[16 heads x D]`: A fragments, loaded once (rows past the group are zero);
//! - `K` tile `[16 keys x D]` in shared memory -> B fragments with `ldmatrix` (row-major K
//!   is the column-major B of `Q K^T`); `V` tile -> B fragments with `ldmatrix.trans`;
//! - online softmax per row (head) on the f32 score fragments, in log2 units.
//!
//! Grid: x = query token (or its index in `token_map`), y = kv head x tile of `ROWS` query
//! heads, z = split.
//! Block: `WARPS` warps; warp `w` takes key tiles `w, w + WARPS, ...` of its split, each
//! through its own `STAGES`-deep cp.async pipeline in shared memory (K and V tiles, 16-byte
//! chunks XOR-swizzled by row so `ldmatrix` is free of bank conflicts). The pipelines' space
//! is reused at the end for the cross-warp merge: `[warp][ROWS][D + 2]` f32 (acc, m, l).
//! The host guarantees: block ids inside the cache, block_size a power of two, rows 16-byte
//! aligned, `num_q_heads % num_kv_heads == 0`, seq_lens >= query lengths.

use crate::elem::{convert_word, Elem};
use crate::kv::KvStore;
use crate::gather::{clamp_key, find_request, ld_i32, tile_range, visible_begin, PagedKeys};
use crate::intrinsics::*;
use crate::params::{paged_stored_row, smem_row_chunks, PagedAttnParams, PAGED_ROWS, PAGED_TILE, PAGED_WARPS};
use crate::score_mod::{Dynamic, ScoreMod};
use crate::softmax::{inv_denominator, join_sink, lse, merge_weight, p_fragment, rescale, sink_log2, RowState, NEG_INIT};
use crate::tile::swizzled;

const WARPS: usize = PAGED_WARPS as usize;
/// Query heads per block: the rows of the mma tiles.
const ROWS: usize = PAGED_ROWS as usize;
/// Keys per tile.
const TILE: usize = PAGED_TILE as usize;

/// `E`: the query (and output) type; `K`: the cache's stored element (`kv::Native`, or
/// `kv::E4m3`: tiles land as bytes, K and V fragments are read from them and widened to `E`
/// in registers, the K scale folded into the softmax scale and the V scale into the output;
/// or `kv::E4m3Cvt`, the same widened by the hardware into f16); the MMAs multiply
/// `K::Mma<E>` (`E`, or f16 for `E4m3Cvt`: Q's words are then converted once, as loaded);
/// `D`: head dim; `NT = D / 8` output n-tiles; `KS = D / 16` k-steps of `Q K^T`;
/// `STAGES`: tiles in flight per warp (cp.async pipeline depth), `paged_depth(D, stages)` (the table row's depth, or `paged_stages(D)`);
/// `Q_SMEM`: Q read from shared memory rather than held in registers, `paged_q_in_smem(D)`.
#[inline(always)]
pub(crate) unsafe fn paged_attention<E: Elem, K: KvStore, const D: usize, const NT: usize, const KS: usize, const STAGES: usize, const Q_SMEM: bool>(
    p: &PagedAttnParams,
) {
    let chunks = D / 8; // 16-byte chunks per 16-bit K/V row
    // Shared-memory rows take a power of two of chunks, so the XOR swizzle stays in the row.
    let row_bytes = smem_row_chunks(D as u32) as usize * 16;
    // As stored: 16-byte chunks per row, and the tiles the cp.async pipeline fills (for fp8
    // rows of half the room).
    let stored_chunks = D * K::BYTES / 16;
    let stored_row = paged_stored_row(D as u32, K::BYTES as u32) as usize;
    let stored_tile = TILE * stored_row;
    let warp_bytes = STAGES * 2 * stored_tile;
    let tid = thread_idx_x() as usize;
    let lane = tid % 32;
    let warp = tid / 32;
    // Fragment coordinates: this lane holds rows r0 = lane/4 and r0 + 8, and the column
    // pair 2 (lane % 4), +1 of every 8-wide n-tile.
    let r0 = lane / 4;
    let col = 2 * (lane % 4);

    // This block's row of the workspace, and its query token (through the step's map of
    // decode rows when the step also has prefill rows).
    let slot = block_idx_x();
    let token = if p.token_map != 0 { (unsafe { ld_i32(p.token_map, slot as usize) }) as u32 } else { slot };
    let split = block_idx_z() as usize;
    let group = div_nz(p.num_q_heads as usize, p.num_kv_heads as usize);
    let tiles_per_group = group.div_ceil(ROWS);
    let kv_head = div_nz(block_idx_y() as usize, tiles_per_group);
    let head_tile = block_idx_y() as usize - kv_head * tiles_per_group;
    let head0 = kv_head * group + head_tile * ROWS;
    let ng = if group - head_tile * ROWS < ROWS { group - head_tile * ROWS } else { ROWS };

    // This query's key range [kv_begin, kv_end), and this split's key tiles [t_begin, t_end).
    let seq = unsafe { find_request(p.query_start_loc, p.num_seqs, token) };
    let q_start = unsafe { ld_i32(p.query_start_loc, seq) };
    let q_len = unsafe { ld_i32(p.query_start_loc, seq + 1) } - q_start;
    let seq_len = unsafe { ld_i32(p.seq_lens, seq) };
    let q_pos = (seq_len - q_len + (token as i32 - q_start)) as usize;
    let kv_end = q_pos + 1;
    let mut kv_begin = visible_begin(q_pos, p.sliding_window as usize, p.chunk_size as usize);
    // A request's own first key floors the window (the host keeps it below kv_end).
    if p.first_key != 0 {
        let floor = unsafe { ld_i32(p.first_key, seq) } as usize;
        if floor > kv_begin {
            kv_begin = floor;
        }
    }
    let (first_tile, n_tiles) = tile_range(kv_begin, kv_end, TILE);
    let per_split = div_nz(n_tiles + p.num_splits as usize - 1, p.num_splits as usize);
    let t_begin = first_tile + split * per_split;
    let t_end = if t_begin + per_split < first_tile + n_tiles { t_begin + per_split } else { first_tile + n_tiles };

    // Q as A fragments: qa[ks] = rows (r0, r0 + 8) x dims ks*16 + (col, col + 8), held in
    // registers; or, when `Q_SMEM` (d256, where they would not fit beside the output
    // fragments), a [ROWS x D] tile in shared memory read with ldmatrix at every k-step.
    let q_row = |r: usize, d: usize| -> u32 {
        if r < ng {
            let off = token as u64 * p.q_token_stride + (head0 + r) as u64 * p.q_head_stride + d as u64;
            convert_word::<E, K::Mma<E>>(unsafe { *((p.q as *const u16).add(off as usize) as *const u32) })
        } else {
            0
        }
    };
    // For an fp8 cache the K fragments come straight from the stored bytes (below), so the
    // head dim is permuted inside each pair of k-steps: lane c's fragment columns of k-step
    // `ks` (logical 2c, 2c + 1 and 2c + 8, 2c + 9) are the 4 consecutive dims from
    // `kperm(ks, lane % 4)`, and Q takes the same permutation (a dot product does not see it).
    let kperm = |ks: usize, c: usize| 32 * (ks / 2) + 8 * c + 4 * (ks % 2);
    let mut qa = [[0u32; 4]; KS];
    if !Q_SMEM {
        for ks in 0..KS {
            let (lo, hi) = if K::CONVERT { (kperm(ks, lane % 4), kperm(ks, lane % 4) + 2) } else { (ks * 16 + col, ks * 16 + 8 + col) };
            qa[ks] = [q_row(r0, lo), q_row(r0 + 8, lo), q_row(r0, hi), q_row(r0 + 8, hi)];
        }
    }
    // Soft-cap and ALiBi, decided at run time (`score_mod::Dynamic`): this kernel is bound
    // by memory, one instantiation serves every model.
    let slope = |r: usize| -> f32 { if r < ng { unsafe { *(p.alibi_slopes as *const f32).add(head0 + r) } } else { 0.0 } };
    let slopes = if p.alibi_slopes != 0 { Some([slope(r0), slope(r0 + 8)]) } else { None };
    // The K scale (fp8: per kv head) folds into the softmax scale, the V scale into 1 / l.
    let kv_scale = |ptr: u64| if K::CONVERT && ptr != 0 { unsafe { *(ptr as *const f32).add(kv_head) } } else { 1.0 };
    let (k_scale, v_scale) = (kv_scale(p.k_scale), kv_scale(p.v_scale));
    let modifier = Dynamic::new(p.scale * k_scale, p.softcap, slopes);

    // Online-softmax state of rows r0 and r0 + 8, and their output fragments.
    let mut rows = RowState::new();
    let mut o = [[0.0f32; 4]; NT];

    // The K/V pipeline of this warp. Row `r`'s 16-byte chunk `c` of a 16-bit tile lives at
    // r * row_bytes + ((c ^ (r % 8)) * 16): the 8 rows one ldmatrix reads hit 8 distinct banks.
    // `stored_at`: where the copies land, and where the MMAs' fragments are read from (for
    // fp8 K by 8-byte loads, V by ldmatrix.trans, both widened in registers).
    let smem = dynamic_shared_f32();
    let pipe = cvta_to_shared(smem) + (warp * warp_bytes) as u32;
    // fp8 rows XOR their chunk index with 2 r + r / 4 % 2 (inside the row's power-of-two
    // room): the 8-byte K fragment loads of a half-warp (4 rows x 4 lanes) and the 8 rows of
    // an ldmatrix of V hit distinct banks (d128, d256).
    let room = stored_row / 16;
    let stored_at = |stage: usize, kv: usize, r: usize, c: usize| -> u32 {
        let within = if K::CONVERT { r * stored_row + ((c ^ ((2 * r + r / 4 % 2) & (room - 1))) * 16) } else { swizzled(r, c, row_bytes) };
        pipe + ((stage * 2 + kv) * stored_tile + within) as u32
    };
    // The Q tile, after every warp's pipeline, same swizzle; rows past the group are zero.
    let q_tile = cvta_to_shared(smem) + (WARPS * warp_bytes) as u32;
    let q_at = |r: usize, c: usize| -> u32 { q_tile + swizzled(r, c, row_bytes) as u32 };
    if Q_SMEM {
        let mut u = tid;
        while u < ROWS * chunks {
            let (r, c) = (u / chunks, u % chunks);
            let v = if r >= ng {
                V4::ZERO
            } else if K::CONVERT {
                // Logical chunk c: k-step c / 2, its low (c even) or high fragment columns, in
                // the permuted order of the K fragments: lane j's dims from kperm.
                let (ks, h) = (c / 2, c % 2);
                let word = |j: usize| q_row(r, kperm(ks, j) + 2 * h);
                V4([word(0), word(1), word(2), word(3)])
            } else {
                let off = token as u64 * p.q_token_stride + (head0 + r) as u64 * p.q_head_stride + (c * 8) as u64;
                let v = unsafe { ld_global_nc_v4((p.q as *const u16).add(off as usize)) };
                V4(v.0.map(convert_word::<E, K::Mma<E>>))
            };
            unsafe { st_shared_v4(q_at(r, c), v) };
            u += WARPS * 32;
        }
        bar_sync();
    }
    // ldmatrix lane -> row for A-like 16x16 operands: matrices (rows 0-7, chunk 2k),
    // (rows 8-15, 2k), (rows 0-7, 2k+1), (rows 8-15, 2k+1).
    let arow = ((lane / 8) % 2) * 8 + lane % 8;
    let ahalf = lane / 16;
    let keys = PagedKeys {
        block_table: p.block_table,
        bt_row: seq * p.block_table_stride as usize,
        block_size_log2: p.block_size_log2,
        block_stride: p.cache_block_stride,
        token_stride: p.cache_token_stride,
        head_off: kv_head as u64 * p.cache_head_stride,
    };
    let issue = |t: usize, stage: usize| {
        // 16 rows x `stored_chunks` chunks, 32 per instruction: lane -> (row, chunk). Keys
        // outside the range copy a valid row instead and are masked below.
        let mut u = lane;
        while u < TILE * stored_chunks {
            let r = u / stored_chunks;
            let c = u % stored_chunks;
            let byte = (keys.offset(clamp_key(t * TILE + r, kv_begin, kv_end)) * K::BYTES + c * 16) as usize;
            unsafe {
                cp_async_cg_16(stored_at(stage, 0, r, c), (p.key_cache as *const u8).add(byte) as *const u16);
                cp_async_cg_16(stored_at(stage, 1, r, c), (p.value_cache as *const u8).add(byte) as *const u16);
            }
            u += 32;
        }
    };
    for s in 0..STAGES - 1 {
        let t = t_begin + warp + s * WARPS;
        if t < t_end {
            issue(t, s);
        }
        cp_async_commit_group();
    }
    let mut it = 0usize;
    let mut t = t_begin + warp;
    while t < t_end {
        // Every lane is done reading the stage refilled now (it was read last iteration).
        bar_warp_sync();
        let ahead = t + (STAGES - 1) * WARPS;
        if ahead < t_end {
            issue(ahead, (it + STAGES - 1) % STAGES);
        }
        cp_async_commit_group();
        // Invariant: groups 0..=it are complete: tile t is in stage it % STAGES, for all lanes.
        cp_async_wait_pending(STAGES - 1);
        bar_warp_sync();
        let stage = it % STAGES;

        // S = Q K^T: two 8-key n-tiles. ldmatrix x4 per k-step: matrices (keys 0-7, chunk
        // 2ks), (keys 0-7, 2ks+1), (keys 8-15, 2ks), (keys 8-15, 2ks+1).
        let mut s = [[0.0f32; 4]; 2];
        let lrow = (lane / 16) * 8 + lane % 8;
        let lhalf = (lane / 8) % 2;
        if K::CONVERT {
            // K's B fragments from the stored bytes: key r0 (+ 8), 8 bytes at dims
            // kperm(2m, c) .. + 8 (k-steps 2m, 2m + 1), widened in registers.
            for m in 0..KS / 2 {
                let byte = kperm(2 * m, lane % 4);
                for j in 0..2 {
                    let b = K::widen_pair::<E>(unsafe { ld_shared_v2(stored_at(stage, 0, r0 + 8 * j, byte / 16) + (byte % 16) as u32) });
                    for t in 0..2 {
                        let ks = 2 * m + t;
                        let a = if Q_SMEM { unsafe { ldmatrix_x4(q_at(arow, 2 * ks + ahalf)) } } else { qa[ks] };
                        s[j] = <K::Mma<E>>::mma(a, [b[2 * t], b[2 * t + 1]], s[j]);
                    }
                }
            }
        } else {
            for ks in 0..KS {
                let a = if Q_SMEM { unsafe { ldmatrix_x4(q_at(arow, 2 * ks + ahalf)) } } else { qa[ks] };
                let b = unsafe { ldmatrix_x4(stored_at(stage, 0, lrow, 2 * ks + lhalf)) };
                s[0] = <K::Mma<E>>::mma(a, [b[0], b[1]], s[0]);
                s[1] = <K::Mma<E>>::mma(a, [b[2], b[3]], s[1]);
            }
        }

        // Scores in log2 units, masked outside the key range; s[j][i]: row r0 + 8 (i / 2),
        // key t * TILE + 8 j + col + i % 2.
        for j in 0..2 {
            for i in 0..4 {
                let key = t * TILE + 8 * j + col + (i % 2);
                let x = modifier.apply(s[j][i], i / 2, key as u32, q_pos as u32);
                s[j][i] = if key >= kv_begin && key < kv_end { x } else { f32::NEG_INFINITY };
            }
        }
        // Online softmax (scores already in log2 units): new maxima, probabilities packed as
        // the A operand of P V, the output rescaled.
        let corr = rows.update(&mut s, modifier.exp_factor());
        rescale(&mut o, corr);
        let pa = p_fragment::<K::Mma<E>, 2>(&s, 0);
        // O += P V: ldmatrix.trans x4 per pair of 8-dim n-tiles: matrices (keys 0-7, chunk
        // 2dp), (keys 8-15, 2dp), (keys 0-7, 2dp+1), (keys 8-15, 2dp+1).
        if K::CONVERT {
            // fp8: ldmatrix.trans on the stored bytes seen as 16-bit pairs of dims, 32 dims a
            // x4; each word holds keys (2c, 2c + 1) at dims (2g, 2g + 1), widened into the
            // B fragments of two n-tiles: the even dims and the odd dims of 16 (`o_dim`).
            for q in 0..D / 32 {
                let b = K::widen_trans::<E>(unsafe { ldmatrix_x4_trans(stored_at(stage, 1, arow, 2 * q + ahalf)) });
                o[4 * q] = <K::Mma<E>>::mma(pa, [b[0][0], b[1][0]], o[4 * q]);
                o[4 * q + 1] = <K::Mma<E>>::mma(pa, [b[0][1], b[1][1]], o[4 * q + 1]);
                o[4 * q + 2] = <K::Mma<E>>::mma(pa, [b[2][0], b[3][0]], o[4 * q + 2]);
                o[4 * q + 3] = <K::Mma<E>>::mma(pa, [b[2][1], b[3][1]], o[4 * q + 3]);
            }
        } else {
            for dp in 0..NT / 2 {
                let b = unsafe { ldmatrix_x4_trans(stored_at(stage, 1, arow, 2 * dp + ahalf)) };
                o[2 * dp] = <K::Mma<E>>::mma(pa, [b[0], b[1]], o[2 * dp]);
                o[2 * dp + 1] = <K::Mma<E>>::mma(pa, [b[2], b[3]], o[2 * dp + 1]);
            }
        }
        t += WARPS;
        it += 1;
    }

    // The head dim of output column n of n-tile nt: nt * 8 + n, or for an fp8 cache (its V
    // fragments: n-tiles 4q .. 4q + 3 are the even, odd dims of 32q .. 32q + 15, then of
    // 32q + 16 .. 32q + 31) 32 (nt / 4) + 16 (nt / 2 % 2) + 2 n + nt % 2.
    let o_dim = |nt: usize, n: usize| if K::CONVERT { 32 * (nt / 4) + 16 * (nt / 2 % 2) + 2 * n + nt % 2 } else { nt * 8 + n };
    // Cross-warp merge through shared memory: merged[w][row] = (acc[0..D], m, l).
    cp_async_wait_group::<0>();
    bar_sync();
    let stride = D + 2;
    for h in 0..2 {
        let row = r0 + 8 * h;
        let lsum = rows.denominator(h);
        let base = (warp * ROWS + row) * stride;
        unsafe {
            for nt in 0..NT {
                *smem.add(base + o_dim(nt, col)) = o[nt][2 * h];
                *smem.add(base + o_dim(nt, col + 1)) = o[nt][2 * h + 1];
            }
            if lane % 4 == 0 {
                *smem.add(base + D) = rows.m[h];
                *smem.add(base + D + 1) = lsum;
            }
        }
    }
    bar_sync();
    // Thread -> (row, 8-dim slice), rows of the group only.
    let mut idx = tid;
    while idx < ng * chunks {
        let row = idx / chunks;
        let ds = (idx % chunks) * 8;
        let mut mall = NEG_INIT;
        for w in 0..WARPS {
            mall = mall.max(unsafe { *smem.add((w * ROWS + row) * stride + D) });
        }
        let mut lsum = 0.0f32;
        let mut acc = [0.0f32; 8];
        for w in 0..WARPS {
            let base = (w * ROWS + row) * stride;
            let f = merge_weight(unsafe { *smem.add(base + D) }, mall);
            lsum += unsafe { *smem.add(base + D + 1) } * f;
            for i in 0..8 {
                acc[i] += unsafe { *smem.add(base + ds + i) } * f;
            }
        }
        let head = (head0 + row) as u64;
        // The row's state is final when the keys are not split: the sink joins it here (a
        // split row's joins in the merge).
        let (mall, lsum, f) = if p.num_splits == 1 && p.sinks != 0 { join_sink(mall, lsum, unsafe { sink_log2(p.sinks, head as usize) }) } else { (mall, lsum, 1.0) };
        let inv = inv_denominator(lsum) * v_scale * f;
        for i in 0..8 {
            acc[i] *= inv;
        }
        if p.num_splits == 1 {
            let off = token as u64 * p.out_token_stride + head * p.out_head_stride + ds as u64;
            unsafe { st_global_v4((p.out as *mut u16).add(off as usize) as *mut u32, E::pack8(&acc)) };
            if p.lse != 0 && ds == 0 {
                unsafe { *(p.lse as *mut f32).add((token as u64 * p.num_q_heads as u64 + head) as usize) = lse(mall, lsum) };
            }
        } else {
            let row_idx = (split as u64 * p.num_tokens as u64 + slot as u64) * p.num_q_heads as u64 + head;
            let po = (p.partial_out as *mut f32).wrapping_add((row_idx * D as u64) as usize + ds);
            unsafe {
                st_global_v4(po as *mut u32, V4([acc[0].to_bits(), acc[1].to_bits(), acc[2].to_bits(), acc[3].to_bits()]));
                st_global_v4(po.add(4) as *mut u32, V4([acc[4].to_bits(), acc[5].to_bits(), acc[6].to_bits(), acc[7].to_bits()]));
                if ds == 0 {
                    let ml = (p.partial_ml as *mut f32).add((row_idx * 2) as usize);
                    *ml = mall;
                    *ml.add(1) = lsum;
                }
            }
        }
        idx += block_dim_x() as usize;
    }
}

/// One entry point over a KV store type: the body both instance macros expand to.
macro_rules! paged_attention_entry {
    ($name:ident, $q:ident, $store:ty, $d:literal, $stages:literal) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: $crate::params::PagedAttnParams) {
            use $crate::params::{paged_depth, paged_q_in_smem};
            unsafe {
                $crate::paged_decode::paged_attention::<$crate::elem::$q, $store, $d, { $d / 8 }, { $d / 16 }, { paged_depth($d, $stages) as usize }, { paged_q_in_smem($d) }>(&p)
            }
        }
    };
}
pub(crate) use paged_attention_entry;

/// One entry point (the kernel table's row, `registry::KERNELS`; build.rs writes the calls):
/// `paged_attention_instance!(name, Q, KV, D, SCORE, STAGES)`; decode takes its modifiers at
/// run time (SCORE is `Dynamic`) and its pipeline depth from STAGES (0: one depth a head dim,
/// `paged_stages(D)`).
macro_rules! paged_attention_instance {
    ($name:ident, $q:ident, $kv:ident, $d:literal, $score:ident, $stages:literal) => {
        $crate::paged_decode::paged_attention_entry!($name, $q, $crate::kv::$kv, $d, $stages);
    };
}
pub(crate) use paged_attention_instance;

/// The sm_90a module's rows (`Family::PagedDecodeSm90`): the same kernel over the KV type's
/// hardware-converting store (`kv::Hardware`: fp8 by `cvt.rn.f16x2.e4m3x2`, f16 MMAs), at
/// the deeper pipelines a Hopper block has room for where the portable one leaves the
/// bandwidth short (`params::paged_sm90_stages`: fp8 d128 and d256, 16-bit d256).
macro_rules! paged_attention_sm90_instance {
    ($name:ident, $q:ident, $kv:ident, $d:literal, $score:ident, $stages:literal) => {
        $crate::paged_decode::paged_attention_entry!($name, $q, <$crate::kv::$kv as $crate::kv::Hardware>::Store, $d, $stages);
    };
}
pub(crate) use paged_attention_sm90_instance;
