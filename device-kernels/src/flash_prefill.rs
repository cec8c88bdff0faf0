//! Flash prefill on tensor cores (FlashAttention-2's tiling with `mma.sync`), varlen and
//! causal with a start offset, K and V read through the block table: fresh prefill, chunked
//! prefill and prefix-cached tokens are one path. Sliding window; logits soft-cap and ALiBi as
//! compile-time score modifiers (`score_mod`), so the plain kernel carries neither;
//! chunked local attention (a row sees its own chunk); attention sinks (a logit per query
//! head joined to each row's final denominator); bidirectional rows over the step's own K/V
//! (an encoder layer: no cache); optionally the log-sum-exp of each row.
//!
//! A thread block owns `ROWS` = 16 x `WARPS` query rows: the (token, query head) pairs of a
//! tile, `heads_per_tile` heads of one kv head's group for each of `tokens_per_tile`
//! consecutive query tokens of one request (row `m`: token `m / heads_per_tile`, head
//! `m % heads_per_tile`), so the GQA group shares every K/V tile. Warp `w` holds rows
//! `16 w .. 16 w + 16` as the rows of its m16n8k16 tiles. Per K/V tile of `BN` keys:
//! - `S = Q K^T` (`Q` as A fragments, in registers for d64, read from shared memory above;
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

use crate::elem::{convert_word, Elem};
use crate::kv::KvStore;
use crate::gather::{clamp_key, ld_i32, tile_range, visible_begin, PagedKeys};
use crate::intrinsics::*;
use crate::params::{PrefillParams, PREFILL_ROWS, PREFILL_WARPS};
use crate::score_mod::ScoreMod;
use crate::softmax::{join_sink, p_fragment, rescale, sink_log2, RowState};
use crate::tile::{load_tile_with, swizzled, LdmLane};

const WARPS: usize = PREFILL_WARPS as usize;
const ROWS: usize = PREFILL_ROWS as usize;

/// `E`: the query (MMA) type; `K`: the cache's stored element (fp8: the stage's tiles are
/// converted by the whole block into one 16-bit pair before the MMAs, the K scale folded
/// into the softmax scale and the V scale into the output);
/// `D`: head dim; `NT = D / 8` output n-tiles; `KS = D / 16` k-steps of `Q K^T`; `BN`: keys
/// per K/V tile, `NB = BN / 8` score n-tiles; `STAGES`: tiles in flight; `RC`: 16-byte chunks per shared-memory row;
/// `Q_SMEM`: Q read from shared memory at every k-step rather than held in registers; `M`:
/// the score modifier (`score_mod`), one instantiation each.
#[inline(always)]
pub(crate) unsafe fn flash_prefill<E: Elem, K: KvStore, M: ScoreMod, const D: usize, const NT: usize, const KS: usize, const BN: usize, const NB: usize, const STAGES: usize, const RC: usize, const Q_SMEM: bool>(
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

    let t = unsafe { PrefillBlock::new(p) };
    let (t_first, n_tiles) = tile_range(t.kv_begin, t.kv_end, BN);

    // Shared memory: the Q tile [ROWS rows], then STAGES pairs of K, V tiles [BN rows] as
    // stored (16-bit: rows of RC swizzled chunks, `tile::swizzled`; fp8: unswizzled rows of
    // half the room), then for fp8 the converted 16-bit pair the MMAs read.
    let smem = cvta_to_shared(dynamic_shared_f32());
    let kv_base = smem + (ROWS * row_bytes) as u32;
    let stored_chunks = D * K::BYTES / 16;
    let stored_row = row_bytes * K::BYTES / 2;
    let stored_k = |stage: usize| kv_base + (stage * 2 * BN * stored_row) as u32;
    let stored_v = |stage: usize| kv_base + ((stage * 2 + 1) * BN * stored_row) as u32;
    let converted = kv_base + (STAGES * 2 * BN * stored_row) as u32;
    let k_tile = |stage: usize| if K::CONVERT { converted } else { stored_k(stage) };
    let v_tile = |stage: usize| if K::CONVERT { converted + (BN * row_bytes) as u32 } else { stored_v(stage) };

    // K/V tile `t` into `stage`, rows gathered through the block table (keys outside
    // [kv_begin, kv_end) copy a valid row and are masked). Thread -> one key row (`tpr`
    // threads per row) and every `tpr`-th 16-byte chunk of it: one block-table lookup per
    // thread and tile.
    let keys = t.keys(p);
    const THREADS: usize = WARPS * 32;
    let tpr = THREADS / BN;
    let (my_row, my_chunk0) = (tid / tpr, tid % tpr);
    let issue = |tile: usize, stage: usize| {
        let byte = keys.offset_or_contiguous(clamp_key(tile * BN + my_row, t.kv_begin, t.kv_end)) * K::BYTES;
        let (ksrc, vsrc) = unsafe { ((p.key_cache as *const u8).add(byte), (p.value_cache as *const u8).add(byte)) };
        let (kdst, vdst) = (stored_k(stage), stored_v(stage));
        for k in 0..stored_chunks.div_ceil(tpr) {
            let c = my_chunk0 + k * tpr;
            if c < stored_chunks {
                let at = if K::CONVERT { my_row * stored_row + 16 * c } else { swizzled(my_row, c, row_bytes) } as u32;
                unsafe {
                    cp_async_cg_16(kdst + at, ksrc.add(16 * c) as *const u16);
                    cp_async_cg_16(vdst + at, vsrc.add(16 * c) as *const u16);
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
    let q_row = |m: usize| {
        let off = t.row_token(m) as u64 * p.q_token_stride + t.row_head(m) as u64 * p.q_head_stride;
        if t.row_valid(m) { Some((p.q as *const u16).wrapping_add(off as usize)) } else { None }
    };
    // In the MMAs' type (`K::Mma<E>`: f16 over `kv::E4m3Cvt`, whatever the query type).
    unsafe { load_tile_with(tid, WARPS * 32, ROWS, chunks, q_row, |m, c| smem + swizzled(m, c, row_bytes) as u32, |v| V4(v.0.map(convert_word::<E, K::Mma<E>>))) };
    bar_sync();
    // This lane's ldmatrix addressing; its warp's 16 rows of Q.
    let ldm = LdmLane::new(lane, row_bytes);
    let wrow = 16 * warp;
    let q_rows = smem + (wrow * row_bytes) as u32;
    let mut qa = [[0u32; 4]; KS];
    if !Q_SMEM {
        for ks in 0..KS {
            qa[ks] = unsafe { ldmatrix_x4(ldm.a(q_rows, ks)) };
        }
    }

    // This lane's two rows: positions, first visible keys, the score modifier.
    let lanes = unsafe { LaneRows::<M>::new(p, &t, wrow + r0, K::CONVERT) };
    // The factor inside the exponent: the scale in log2 units for raw scores (`Plain`), 1
    // for scores already modified into log2 units.
    let s_exp = lanes.modifier.exp_factor();

    // Online-softmax state of rows r0, r0 + 8, and their output fragments.
    let mut rows = RowState::new();
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
        if K::CONVERT {
            // The stage's stored tiles into the converted pair (the barrier above: every warp
            // is done reading it for tile i - 1), then a barrier before the MMAs read it.
            let mut u = tid;
            while u < BN * stored_chunks {
                let (r, c) = (u / stored_chunks, u % stored_chunks);
                let at = (r * stored_row + 16 * c) as u32;
                let widen = |src: u32, dst: u32| {
                    let (lo, hi) = K::widen::<E>(unsafe { ld_shared_v4(src + at) });
                    unsafe {
                        st_shared_v4(dst + swizzled(r, 2 * c, row_bytes) as u32, lo);
                        st_shared_v4(dst + swizzled(r, 2 * c + 1, row_bytes) as u32, hi);
                    }
                };
                widen(stored_k(stage), k_tile(stage));
                widen(stored_v(stage), v_tile(stage));
                u += THREADS;
            }
            bar_sync();
        }
        // This lane's rows of the stage's K and V tiles.
        let (k_rows, v_rows) = (k_tile(stage) + ldm.b_row, v_tile(stage) + ldm.a_row);

        // S = Q K^T for BN keys: n-tile j holds keys key0 + 8 j ...
        let mut s = [[0.0f32; 4]; NB];
        for ks in 0..KS {
            let a = if Q_SMEM { unsafe { ldmatrix_x4(ldm.a(q_rows, ks)) } } else { qa[ks] };
            for j in 0..BN / 16 {
                let b = unsafe { ldmatrix_x4(k_rows + (16 * j * row_bytes) as u32 + (ldm.b_x ^ (32 * ks as u32))) };
                s[2 * j] = <K::Mma<E>>::mma(a, [b[0], b[1]], s[2 * j]);
                s[2 * j + 1] = <K::Mma<E>>::mma(a, [b[2], b[3]], s[2 * j + 1]);
            }
        }

        // Scores through the modifier, masked only where the tile crosses a limit.
        lanes.modify_and_mask(&mut s, &t, key0, BN, col);
        // Online softmax: new maxima, probabilities in place, the output rescaled. (Skipping
        // the rescale where no row's max moved, decided by a warp vote, measured slower: the
        // branch keeps the multiplies from interleaving with the P V products.)
        let corr = rows.update(&mut s, s_exp);
        rescale(&mut o, corr);
        // O += P V, 16 keys at a time: P's A fragment from n-tiles 2 kc, 2 kc + 1.
        for kc in 0..BN / 16 {
            let pa = p_fragment::<K::Mma<E>, NB>(&s, kc);
            for dp in 0..NT / 2 {
                let b = unsafe { ldmatrix_x4_trans(v_rows + (16 * kc * row_bytes) as u32 + (ldm.a_x ^ (32 * dp as u32))) };
                o[2 * dp] = <K::Mma<E>>::mma(pa, [b[0], b[1]], o[2 * dp]);
                o[2 * dp + 1] = <K::Mma<E>>::mma(pa, [b[2], b[3]], o[2 * dp + 1]);
            }
        }
    }
    cp_async_wait_group::<0>();

    // Normalise and store this lane's two rows; the log-sum-exp if asked for.
    unsafe { store_rows::<E, NT>(p, &t, &rows, &o, wrow + r0, lane, K::CONVERT) };
}

/// A prefill block's rows and keys, from its tile (request, first token) and grid y (kv
/// head, head tile): row `m` is (token `tok0 + m / hpt`, head `m % hpt` of the tile's
/// heads); the keys `[kv_begin, kv_end)` run from the first row's window start to the last
/// row's position. Shared by the `mma.sync` and the wgmma (`flash_prefill_sm90`) kernels.
#[derive(Clone, Copy)]
pub(crate) struct PrefillBlock {
    pub req: usize,
    pub tok0: usize,
    pub tok_end: usize,
    pub hpt: usize,
    pub tpt: usize,
    pub group: usize,
    pub kv_head: usize,
    pub head_tile: usize,
    pub q_start: usize,
    /// Keys before the request's first query token (cached context).
    pub ctx: usize,
    pub window: usize,
    /// Chunked local attention's chunk (0 = none).
    pub chunk: usize,
    /// Bidirectional: every row sees the request's keys `[0, seq_len)`.
    pub bidirectional: bool,
    pub seq_len: usize,
    pub min_pos: usize,
    pub max_pos: usize,
    pub kv_begin: usize,
    pub kv_end: usize,
    /// One past the first row's last key, and the last row's first key: tiles inside
    /// `[last_lo, first_hi)` need no mask.
    pub first_hi: usize,
    pub last_lo: usize,
}

impl PrefillBlock {
    #[inline(always)]
    pub unsafe fn new(p: &PrefillParams) -> Self {
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
        let min_pos = ctx + (tok0 - q_start);
        let max_pos = ctx + (tok_end - 1 - q_start);
        let (window, chunk, bidirectional) = (p.sliding_window as usize, p.chunk_size as usize, p.bidirectional != 0);
        // Invariant: the first row sees the earliest keys, the last row the latest (a row's
        // first visible key never decreases with its position).
        let (kv_begin, kv_end) = if bidirectional { (0, seq_len) } else { (visible_begin(min_pos, window, chunk), max_pos + 1) };
        let mut t = PrefillBlock { req, tok0, tok_end, hpt, tpt, group, kv_head, head_tile, q_start, ctx, window, chunk, bidirectional, seq_len, min_pos, max_pos, kv_begin, kv_end, first_hi: 0, last_lo: 0 };
        t.first_hi = t.row_keys(min_pos).1;
        t.last_lo = t.row_keys(max_pos).0;
        t
    }
    /// Row position `pos`'s keys `[lo, hi)`: from its window or chunk start to itself
    /// (bidirectional: all of the request's).
    #[inline(always)]
    pub fn row_keys(&self, pos: usize) -> (usize, usize) {
        if self.bidirectional { (0, self.seq_len) } else { (visible_begin(pos, self.window, self.chunk), pos + 1) }
    }
    /// Whether row `m` is one of the tile's (token, head) pairs.
    #[inline(always)]
    pub fn row_valid(&self, m: usize) -> bool {
        m / self.hpt < self.tpt && self.tok0 + m / self.hpt < self.tok_end && self.head_tile * self.hpt + m % self.hpt < self.group
    }
    #[inline(always)]
    pub fn row_token(&self, m: usize) -> usize {
        self.tok0 + m / self.hpt
    }
    #[inline(always)]
    pub fn row_head(&self, m: usize) -> usize {
        self.kv_head * self.group + self.head_tile * self.hpt + m % self.hpt
    }
    /// The request's keys of this block's kv head in the paged cache (bidirectional: in the
    /// step's K/V, from the request's first token).
    #[inline(always)]
    pub fn keys(&self, p: &PrefillParams) -> PagedKeys {
        PagedKeys {
            block_table: p.block_table,
            bt_row: if p.block_table == 0 { self.q_start } else { self.req * p.block_table_stride as usize },
            block_size_log2: p.block_size_log2,
            block_stride: p.cache_block_stride,
            token_stride: p.cache_token_stride,
            head_off: self.kv_head as u64 * p.cache_head_stride,
        }
    }
    /// Whether a tile of `bn` keys from `key0` crosses the first row's last key, the last
    /// row's first key (window or chunk start), or the block's key range (only such tiles
    /// are masked).
    #[inline(always)]
    pub fn crosses(&self, key0: usize, bn: usize) -> bool {
        key0 + bn > self.first_hi || key0 < self.last_lo || key0 < self.kv_begin
    }
}

/// A lane's two fragment rows (`m0`, `m0 + 8`): positions (rows outside the tile take the
/// last row's: computed, never stored), first visible keys, and the score modifier with
/// their ALiBi slopes.
pub(crate) struct LaneRows<M: ScoreMod> {
    pub pos: [usize; 2],
    pub lo: [usize; 2],
    /// One past each row's last visible key.
    pub hi: [usize; 2],
    pub modifier: M,
}

impl<M: ScoreMod> LaneRows<M> {
    #[inline(always)]
    /// `fp8`: the cache is fp8, its K scale (`p.k_scale[kv head]`) folds into the scale.
    pub unsafe fn new(p: &PrefillParams, t: &PrefillBlock, m0: usize, fp8: bool) -> Self {
        let mut pos = [t.max_pos; 2];
        let mut lo = [0usize; 2];
        let mut hi = [0usize; 2];
        let mut slopes = [0.0f32; 2];
        for h in 0..2 {
            let m = m0 + 8 * h;
            if t.row_valid(m) {
                pos[h] = t.ctx + (t.row_token(m) - t.q_start);
                if M::ALIBI {
                    slopes[h] = unsafe { *(p.alibi_slopes as *const f32).add(t.row_head(m)) };
                }
            }
            (lo[h], hi[h]) = t.row_keys(pos[h]);
        }
        let scale = p.scale * if fp8 { unsafe { kv_scale(p.k_scale, t.kv_head) } } else { 1.0 };
        LaneRows { pos, lo, hi, modifier: M::new(scale, p.softcap, if M::ALIBI { Some(slopes) } else { None }) }
    }

    /// Scores of keys `key0 ..` through the modifier (raw for `Plain`: its scale to log2
    /// units is folded into the exponent), then `-inf` past each row's last key or before
    /// its first (window or chunk start), on tiles that cross one (`PrefillBlock::crosses`).
    #[inline(always)]
    pub fn modify_and_mask<const NB: usize>(&self, s: &mut [[f32; 4]; NB], t: &PrefillBlock, key0: usize, bn: usize, col: usize) {
        let kcol = (key0 + col) as u32;
        for j in 0..NB {
            for e in 0..4 {
                let key = kcol + (8 * j + e % 2) as u32;
                s[j][e] = self.modifier.apply(s[j][e], e / 2, key, self.pos[e / 2] as u32);
            }
        }
        if t.crosses(key0, bn) {
            for j in 0..NB {
                for e in 0..4 {
                    let key = kcol + (8 * j + e % 2) as u32;
                    if key >= self.hi[e / 2] as u32 || key < self.lo[e / 2] as u32 {
                        s[j][e] = f32::NEG_INFINITY;
                    }
                }
            }
        }
    }
}

/// An fp8 cache's scale of `kv_head` (`f32 [num_kv_heads]` at `ptr`), 1 where none is given.
#[inline(always)]
pub(crate) unsafe fn kv_scale(ptr: u64, kv_head: usize) -> f32 {
    if ptr != 0 { unsafe { *(ptr as *const f32).add(kv_head) } } else { 1.0 }
}

/// Normalises and stores a lane's two rows (`m0`, `m0 + 8`) of the output fragments, and
/// their log-sum-exp if asked for; `fp8`: the output also takes the V scale.
#[inline(always)]
pub(crate) unsafe fn store_rows<E: Elem, const NT: usize>(p: &PrefillParams, t: &PrefillBlock, rows: &RowState, o: &[[f32; 4]; NT], m0: usize, lane: usize, fp8: bool) {
    let col = 2 * (lane % 4);
    let v_scale = if fp8 { unsafe { kv_scale(p.v_scale, t.kv_head) } } else { 1.0 };
    for h in 0..2 {
        let mrow = m0 + 8 * h;
        let (m, lsum, f) = unsafe { final_state(p, t, rows, h, mrow) };
        if !t.row_valid(mrow) {
            continue;
        }
        let inv = if lsum > 0.0 { f * v_scale / lsum } else { 0.0 };
        let (token, head) = (t.row_token(mrow) as u64, t.row_head(mrow) as u64);
        let base = token * p.out_token_stride + head * p.out_head_stride;
        for nt in 0..NT {
            let v = E::from_f32x2(o[nt][2 * h] * inv, o[nt][2 * h + 1] * inv);
            unsafe { *((p.out as *mut u16).add((base + (nt * 8 + col) as u64) as usize) as *mut u32) = v };
        }
        if p.lse != 0 && lane % 4 == 0 {
            unsafe { *(p.lse as *mut f32).add((token * p.num_q_heads as u64 + head) as usize) = crate::softmax::lse(m, lsum) };
        }
    }
}

/// Row `h` (block row `mrow`) of a lane's pair, final: (max, full denominator, the
/// accumulator's factor), the row's attention sink joined when the layer has sinks. All four
/// lanes of the quad must call it (the denominator is their sum).
#[inline(always)]
pub(crate) unsafe fn final_state(p: &PrefillParams, t: &PrefillBlock, rows: &RowState, h: usize, mrow: usize) -> (f32, f32, f32) {
    let lsum = rows.denominator(h);
    if p.sinks != 0 && t.row_valid(mrow) {
        join_sink(rows.m[h], lsum, unsafe { sink_log2(p.sinks, t.row_head(mrow)) })
    } else {
        (rows.m[h], lsum, 1.0)
    }
}

/// One entry point over a KV store type: the body both instance macros expand to.
macro_rules! flash_prefill_entry {
    ($name:ident, $q:ident, $store:ty, $d:literal, $score:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: $crate::params::PrefillParams) {
            use $crate::params::{prefill_keys, prefill_q_in_smem, prefill_stages, smem_row_chunks};
            unsafe {
                $crate::flash_prefill::flash_prefill::<
                    $crate::elem::$q, $store, $crate::score_mod::$score, $d, { $d / 8 }, { $d / 16 },
                    { prefill_keys($d) as usize }, { prefill_keys($d) as usize / 8 }, { prefill_stages($d) as usize },
                    { smem_row_chunks($d) as usize }, { prefill_q_in_smem($d) },
                >(&p)
            }
        }
    };
}
pub(crate) use flash_prefill_entry;

/// One entry point (the kernel table's row, `registry::KERNELS`; build.rs writes the calls):
/// `flash_prefill_instance!(name, Q, KV, D, SCORE, STAGES)`.
macro_rules! flash_prefill_instance {
    ($name:ident, $q:ident, $kv:ident, $d:literal, $score:ident, $stages:literal) => {
        $crate::flash_prefill::flash_prefill_entry!($name, $q, $crate::kv::$kv, $d, $score);
    };
}
pub(crate) use flash_prefill_instance;

/// The sm_90a module's rows (`Family::FlashPrefillCvt`): the same kernel over the KV type's
/// hardware-converting store (`kv::Hardware`: fp8 by `cvt.rn.f16x2.e4m3x2`, f16 MMAs).
macro_rules! flash_prefill_cvt_instance {
    ($name:ident, $q:ident, $kv:ident, $d:literal, $score:ident, $stages:literal) => {
        $crate::flash_prefill::flash_prefill_entry!($name, $q, <$crate::kv::$kv as $crate::kv::Hardware>::Store, $d, $score);
    };
}
pub(crate) use flash_prefill_cvt_instance;
