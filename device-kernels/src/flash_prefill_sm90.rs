//! Flash prefill on Hopper's warpgroup MMA (`wgmma`, sm_90a only): the portable kernel's
//! tiles, rows and masks (`flash_prefill::PrefillBlock`, `LaneRows`, `store_rows`), its two
//! products issued by warpgroups reading their operands straight from shared memory.
//!
//! Warp-specialized: a producer warp (of a third warpgroup that gives its registers to the
//! consumers with `setmaxnreg`) has the copy engine (TMA) bring K/V tiles, page by page
//! of the paged cache through the block table, into a `STAGES`-deep ring of shared-memory
//! stages, each with a `full` mbarrier (bytes landed) and an `empty` one (both consumers
//! done); two consumer warpgroups compute. No block barrier inside the loop, so the
//! consumers drift apart and one's softmax overlaps the other's products.
//! A block owns `ROWS` = 128 (token, head) rows as the portable kernel does; warpgroup `g`
//! (warps `4 g .. 4 g + 4`) owns rows `64 g .. 64 g + 64`, each warp 16 of them, and the
//! accumulators of `wgmma.m64nNk16` sit in each warp's registers exactly as `mma.m16n8`'s C
//! fragments, so the online softmax (`softmax::RowState`) is the same code. Per K/V tile of
//! `BN` keys:
//! - `S = Q K^T`: `D / 16` `wgmma` m64 n`BN` k16, Q and K both K-major in shared memory
//!   (descriptors of `tile::sw128` tiles), S in registers;
//! - modifier, mask (only where the tile crosses a limit), online softmax;
//! - `O += P V`: `BN / 16` `wgmma` m64 n`D` k16, P from registers (the `mma` A fragment),
//!   V N-major in shared memory (transposed by the descriptor).
//! Each warpgroup reads every K and V byte once for its 64 rows (`mma.sync` re-reads them
//! once per 16). The copy engine writes the tiles in the 128-byte-swizzle layout the
//! descriptors describe (the host encodes the tensor maps with that swizzle).
//!
//! Grid and host guarantees: as `flash_prefill`.

use crate::elem::{Elem, Wgmma};
use crate::flash_prefill::{final_state, store_rows, LaneRows, PrefillBlock};
use crate::gather::{ld_i32, tile_range};
use crate::intrinsics::*;
use crate::params::{PrefillParams, PREFILL_ROWS, PREFILL_SM90_THREADS};
use crate::score_mod::ScoreMod;
use crate::softmax::{p_fragment, rescale, RowState};
use crate::tile::{desc_advance, load_tile_batched, sw128, sw128_desc};

/// Consumer warpgroups (64 rows each), then the producer warpgroup, whose first warp
/// issues the copies.
const CONSUMERS: usize = 2;
const CONSUMER_THREADS: usize = 128 * CONSUMERS;
/// The consumers' named barrier after their Q load (`bar_sync` is 0; 1 and 2 are the
/// warpgroups' own, in the epilogue).
const Q_LOADED: u32 = 3;
const PRODUCER_WARP: usize = 4 * CONSUMERS;
const THREADS: usize = PREFILL_SM90_THREADS as usize;
const ROWS: usize = PREFILL_ROWS as usize;
const _: () = assert!(THREADS == CONSUMER_THREADS + 128 && ROWS == 64 * CONSUMERS);
/// Registers a thread after the split (`setmaxnreg`): the producer warpgroup needs few, the
/// consumers hold S, P and O. The block starts at `ENTRY_REGS` a thread (ptxas's cap for
/// `.maxntid 384`), and `setmaxnreg.inc` draws only on what this block's `dec` released
/// (a larger request waits forever): 128 (entry - producer) must cover 256 (consumer -
/// entry), so 40 / 232.
const ENTRY_REGS: u32 = (65536 / THREADS as u32) / 8 * 8;
const PRODUCER_REGS: u32 = 40;
const CONSUMER_REGS: u32 = 232;
const _: () = assert!(128 * (ENTRY_REGS - PRODUCER_REGS) >= CONSUMER_THREADS as u32 * (CONSUMER_REGS - ENTRY_REGS));
/// Whether the output of head dim `d` leaves through shared memory (`stmatrix` into the
/// warpgroup's Q rows, then 16-byte row stores) rather than 4-byte stores from the
/// fragments. Measured on H100 against the fragment stores: P1 +1.6%, P2 +3.1% at d128,
/// P4 -3.2% at d64.
const fn stmatrix_epilogue(d: usize) -> bool {
    d >= 128
}

/// `D`: head dim, `NT = D / 8` output n-tiles, `KS = D / 16` k-steps of `Q K^T`; `BN` keys a
/// tile, `NB = BN / 8` score n-tiles, `KC = BN / 16` k-steps of `P V`; `STAGES` tiles in
/// flight; `M`: the score modifier.
#[inline(always)]
pub(crate) unsafe fn flash_prefill_sm90<E: Elem + Wgmma, M: ScoreMod, const D: usize, const NT: usize, const KS: usize, const BN: usize, const NB: usize, const KC: usize, const STAGES: usize>(
    p: &PrefillParams,
) {
    let chunks = D / 8;
    let tid = thread_idx_x() as usize;
    let lane = tid % 32;
    let warp = tid / 32;
    let r0 = lane / 4;

    let t = unsafe { PrefillBlock::new(p) };
    let (t_first, n_tiles) = tile_range(t.kv_begin, t.kv_end, BN);

    // Shared memory from the first 1024-byte boundary: the Q tile [ROWS rows], STAGES pairs
    // of K, V tiles [BN rows] (all `sw128` tiles of D columns), then the stages' mbarriers:
    // `full` (the copy engine has landed the tile's bytes), `empty` (both consumer
    // warpgroups are done with it).
    let smem = (cvta_to_shared(dynamic_shared_f32()) + 1023) & !1023;
    let (q_bytes, kv_bytes) = (ROWS * D * 2, BN * D * 2);
    let k_tile = |stage: usize| smem + (q_bytes + stage * 2 * kv_bytes) as u32;
    let v_tile = |stage: usize| smem + (q_bytes + (stage * 2 + 1) * kv_bytes) as u32;
    let bars = smem + (q_bytes + STAGES * 2 * kv_bytes) as u32;
    let full = |stage: usize| bars + 8 * stage as u32;
    let empty = |stage: usize| bars + 8 * (STAGES + stage) as u32;
    if tid == 0 {
        for s in 0..STAGES {
            unsafe {
                mbarrier_init(full(s), 1);
                mbarrier_init(empty(s), CONSUMER_THREADS as u32);
            }
        }
    }

    // The mbarriers, published to the async proxy and every thread; the producer starts the
    // K/V copies at once, while the consumers load the Q tile (below).
    fence_proxy_async_shared_cta();
    bar_sync();

    if warp >= PRODUCER_WARP {
        setmaxnreg_dec::<PRODUCER_REGS>();
        if warp != PRODUCER_WARP {
            return;
        }
        // Producer: tile i into stage i % STAGES once both consumers released it, as boxes
        // of the cache's tensor maps: `rows` keys (a page, or the tile's share of one) x 64
        // columns (a slab), for K and V. Lane 0 announces the tile's bytes; each lane looks
        // up its boxes' pages in the block table and starts their copies.
        // Without a block table (a bidirectional layer's own K/V, `[tokens, kv heads x D]`)
        // a tile is one box of BN rows from the request's first token; its rows past the
        // tensor's end are zero-filled by the copy engine (and masked).
        let contiguous = p.block_table == 0;
        let bs = 1usize << p.block_size_log2;
        let rows = if contiguous || bs >= BN { BN } else { bs };
        let (boxes, slabs) = (BN / rows, D / 64);
        let bt_row = t.req * p.block_table_stride as usize;
        for i in 0..n_tiles {
            let stage = i % STAGES;
            if i >= STAGES {
                unsafe { mbarrier_wait_parity(empty(stage), ((i / STAGES - 1) & 1) as u32) };
            }
            // The lanes left the wait's spin loop separately: reconverge, then one announces
            // the tile's bytes.
            bar_warp_sync();
            if elect_sync() {
                unsafe { mbarrier_arrive_expect_tx(full(stage), (2 * kv_bytes) as u32) };
            }
            let key0 = (t_first + i) * BN;
            let mut j = lane;
            while j < boxes * slabs * 2 {
                let (b, slab, kv) = (j / (2 * slabs), (j / 2) % slabs, j % 2);
                let key = key0 + b * rows;
                // Boxes past the block's keys read the last page (masked all the same), so
                // no lookup leaves the request's blocks.
                let token = if contiguous {
                    t.q_start + key
                } else {
                    let page_key = if key < t.kv_end { key } else { t.kv_end - 1 };
                    let page = unsafe { ld_i32(p.block_table, bt_row + (page_key >> p.block_size_log2)) } as usize;
                    page * bs + (key & (bs - 1))
                };
                let dst = if kv == 0 { k_tile(stage) } else { v_tile(stage) } + (slab * BN * 128 + b * rows * 128) as u32;
                let tmap = if kv == 0 { p.k_tmap } else { p.v_tmap };
                unsafe { cp_async_bulk_tensor_2d(dst, tmap, (t.kv_head * D + slab * 64) as i32, token as i32, full(stage)) };
                j += 32;
            }
        }
        return;
    }

    // Consumers: warpgroup g = warp / 4 owns rows 64 g .. 64 g + 64 of the block, its warp
    // `warp` rows 16 warp .. 16 warp + 16.
    setmaxnreg_inc::<CONSUMER_REGS>();
    // The Q tile by the consumers (rows outside the tile are zero) while the first K/V tiles
    // land, published to the async proxy by the fence and their named barrier.
    let q_row = |m: usize| {
        let off = t.row_token(m) as u64 * p.q_token_stride + t.row_head(m) as u64 * p.q_head_stride;
        if t.row_valid(m) { Some((p.q as *const u16).wrapping_add(off as usize)) } else { None }
    };
    unsafe { load_tile_batched(tid, CONSUMER_THREADS, ROWS, chunks, q_row, |m, c| smem + sw128(m, c, ROWS) as u32) };
    fence_proxy_async_shared_cta();
    bar_sync_named(Q_LOADED, CONSUMER_THREADS as u32);
    // The warpgroup, broadcast from lane 0 so that ptxas sees what derives from it (the Q
    // rows' descriptors) as uniform: `wgmma` reads descriptors from uniform registers.
    let wg = shfl_sync_idx_u32((warp / 4) as u32, 0) as usize;
    let col = 2 * (lane % 4);
    let lanes = unsafe { LaneRows::<M>::new(p, &t, 16 * warp + r0, false) };
    let s_exp = lanes.modifier.exp_factor();
    let mut rows = RowState::new();
    let mut o = [[0.0f32; 4]; NT];
    // This warpgroup's 64 rows of Q: k-step kk is 32 bytes into slab kk / 4.
    let q_rows = smem + (wg * 64 * 128) as u32;
    // Descriptors built once a tile (Q's once): k-step kk advances the start address.
    let q_desc = sw128_desc(q_rows, 16, 1024);

    for i in 0..n_tiles {
        // The ring's stage and phase in 32 bits (in `usize` they are 64-bit multiply-highs).
        // Broadcast from lane 0, as `wg`: the K and V descriptors derive from the stage.
        let (stage, phase) = (shfl_sync_idx_u32(i as u32 % STAGES as u32, 0) as usize, (i as u32 / STAGES as u32) & 1);
        unsafe { mbarrier_wait_parity(full(stage), phase) };
        let key0 = (t_first + i) * BN;

        // S = Q K^T (the first k-step overwrites S).
        let mut s = [[0.0f32; 4]; NB];
        pin_f32(&mut s);
        wgmma_fence();
        // Q's descriptor made opaque each tile, so that its k-steps' descriptors are built
        // here from one value rather than hoisted out of the loop (a register each).
        let q_desc = opaque_u64(q_desc);
        let k_desc = sw128_desc(k_tile(stage), 16, 1024);
        for kk in 0..KS {
            let in_slab = ((kk % 4) * 32) as u32;
            let a = desc_advance(q_desc, ((kk / 4) * ROWS * 128) as u32 + in_slab);
            let b = desc_advance(k_desc, ((kk / 4) * BN * 128) as u32 + in_slab);
            unsafe { E::ss::<NB>(&mut s, a, b, (kk > 0) as u32) };
        }
        wgmma_commit_group();
        wgmma_wait_group_0(&mut s);

        lanes.modify_and_mask(&mut s, &t, key0, BN, col);
        let corr = rows.update(&mut s, s_exp);
        rescale(&mut o, corr);

        // O += P V, 16 keys a step: V's rows 16 kc .. 16 kc + 16, all D columns (slabs
        // BN x 128 bytes apart). P's A fragments first, so that the products issue back to
        // back after one fence.
        let mut pa = [[0u32; 4]; KC];
        for kc in 0..KC {
            pa[kc] = p_fragment::<E, NB>(&s, kc);
        }
        pin_u32(&mut pa);
        pin_f32(&mut o);
        wgmma_fence();
        let v_desc = sw128_desc(v_tile(stage), (BN * 128) as u32, 1024);
        for kc in 0..KC {
            unsafe { E::rs::<NT>(&mut o, pa[kc], desc_advance(v_desc, (kc * 16 * 128) as u32)) };
        }
        wgmma_commit_group();
        wgmma_wait_group_0(&mut o);
        // The stage is free again once both warpgroups' products have read it.
        unsafe { mbarrier_arrive(empty(stage)) };
    }

    if stmatrix_epilogue(D) {
        unsafe { store_rows_stmatrix::<E, NT>(p, &t, &rows, &o, wg, warp, lane, smem, chunks) };
    } else {
        unsafe { store_rows::<E, NT>(p, &t, &rows, &o, 16 * warp + r0, lane, false) };
    }
}

/// The epilogue through shared memory: each warp normalises its 16 rows and writes them with
/// `stmatrix` into its warpgroup's rows of the Q tile (free: the warpgroup's last `Q K^T` has
/// completed, and the other warpgroup reads only its own rows), in the same `sw128` layout;
/// after the warpgroup's named barrier its 128 threads store the 64 rows to global memory
/// in 16-byte chunks (a row's chunks by consecutive threads). The log-sum-exp as
/// `store_rows`.
#[inline(always)]
unsafe fn store_rows_stmatrix<E: Elem, const NT: usize>(
    p: &PrefillParams,
    t: &PrefillBlock,
    rows: &RowState,
    o: &[[f32; 4]; NT],
    wg: usize,
    warp: usize,
    lane: usize,
    smem: u32,
    chunks: usize,
) {
    let r0 = lane / 4;
    let mut inv = [0.0f32; 2];
    for h in 0..2 {
        let mrow = 16 * warp + r0 + 8 * h;
        let (m, lsum, f) = unsafe { final_state(p, t, rows, h, mrow) };
        inv[h] = if lsum > 0.0 { f / lsum } else { 0.0 };
        if p.lse != 0 && lane % 4 == 0 && t.row_valid(mrow) {
            let (token, head) = (t.row_token(mrow) as u64, t.row_head(mrow) as u64);
            unsafe { *(p.lse as *mut f32).add((token * p.num_q_heads as u64 + head) as usize) = crate::softmax::lse(m, lsum) };
        }
    }
    // Matrices of one stmatrix: (n-tile nt, rows 0-7), (nt, rows 8-15), (nt + 1, 0-7),
    // (nt + 1, 8-15); lane l addresses row l % 8 of matrix l / 8.
    let (mi, lr) = (lane / 8, lane % 8);
    let my_row = 16 * warp + (mi % 2) * 8 + lr;
    for np in 0..NT / 2 {
        let (a, b) = (&o[2 * np], &o[2 * np + 1]);
        let r = [
            E::from_f32x2(a[0] * inv[0], a[1] * inv[0]),
            E::from_f32x2(a[2] * inv[1], a[3] * inv[1]),
            E::from_f32x2(b[0] * inv[0], b[1] * inv[0]),
            E::from_f32x2(b[2] * inv[1], b[3] * inv[1]),
        ];
        unsafe { stmatrix_x4(smem + sw128(my_row, 2 * np + mi / 2, ROWS) as u32, r) };
    }
    bar_sync_named(1 + wg as u32, 128);
    let mut u = lane + 32 * (warp % 4);
    while u < 64 * chunks {
        let (m, c) = (64 * wg + u / chunks, u % chunks);
        if t.row_valid(m) {
            let off = t.row_token(m) as u64 * p.out_token_stride + t.row_head(m) as u64 * p.out_head_stride + 8 * c as u64;
            let v = unsafe { ld_shared_v4(smem + sw128(m, c, ROWS) as u32) };
            unsafe { st_global_v4((p.out as *mut u16).add(off as usize) as *mut u32, v) };
        }
        u += 128;
    }
}

/// One entry point (the kernel table's row, `registry::KERNELS`, module `Sm90a`; build.rs
/// writes the calls and gives it its `.maxntid`): `flash_prefill_sm90_instance!(name, Q, KV, D, SCORE, STAGES)`.
macro_rules! flash_prefill_sm90_instance {
    ($name:ident, $q:ident, $kv:ident, $d:literal, $score:ident, $stages:literal) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: $crate::params::PrefillParams) {
            use $crate::params::{prefill_sm90_keys, prefill_sm90_stages};
            unsafe {
                $crate::flash_prefill_sm90::flash_prefill_sm90::<
                    $crate::elem::$q, $crate::score_mod::$score, $d, { $d / 8 }, { $d / 16 },
                    { prefill_sm90_keys($d) as usize }, { prefill_sm90_keys($d) as usize / 8 }, { prefill_sm90_keys($d) as usize / 16 },
                    { prefill_sm90_stages($d) as usize },
                >(&p)
            }
        }
    };
}
pub(crate) use flash_prefill_sm90_instance;
