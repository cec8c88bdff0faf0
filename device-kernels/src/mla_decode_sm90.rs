//! MLA decode on Hopper's warpgroup MMA (`wgmma`, sm_90a only): the portable kernel's blocks
//! (`mla_decode`: 64 (query token, head) rows of one request and one split of its keys, the
//! plan's split-KV schedule and workspace), its two products issued by warpgroups reading
//! Q and the latent K tile straight from shared memory, each tile read once per warpgroup.
//!
//! Warp-specialized as `flash_prefill_sm90`: a producer warp (of a third warpgroup that
//! gives its registers away with `setmaxnreg`) has the copy engine (TMA) bring each K tile
//! of `BN` latent rows, page by page through the block table, into a `STAGES`-deep ring of
//! 128-byte-swizzled stages with `full` and `empty` mbarriers; no block barrier in the loop.
//! Two tile shapes (`params::mla_sm90_keys`): 2 stages of 64 keys, or 4 of 32.
//! Consumer warpgroup `g` holds all 64 rows and the value dims `256 g .. 256 g + 256`
//! (128 f32 accumulators a thread). Per tile:
//! - `S = Q K^T` over 576 dims: 36 `wgmma` m64 n`BN` k16 (both warpgroups compute the same S:
//!   the same operations in the same order, so their online softmax states agree bit for
//!   bit; the duplicated product is the price of no exchange between them);
//! - the causal mask (query tokens of a request among themselves) and the split's bounds,
//!   only on tiles that cross them; online softmax in log2 units;
//! - `O += P V`: `BN / 16` `wgmma` m64 n256 k16, P from registers, V = the same tile's columns
//!   `256 g ..` read N-major (transposed by the descriptor).
//! Epilogue as the portable kernel: a token of one split to `out`, else its partial row and
//! (max, denominator) to the workspace for `merge_splits`.
//!
//! Grid and host guarantees: as `mla_decode`, and block sizes of 8 or more tokens.

use crate::elem::{Elem, Wgmma};
use crate::gather::{ld_i32, tile_range};
use crate::intrinsics::*;
use crate::params::{MlaParams, MLA_LATENT_DIM, MLA_ROWS, MLA_SM90_THREADS};
use crate::mla_decode::{store_mla_rows, MlaBlock, NT_HALF};
use crate::softmax::{p_fragment, rescale, RowState, LOG2E};
use crate::tile::{load_tile, sw128, sw128_desc};

const CONSUMER_THREADS: usize = 256;
const PRODUCER_WARP: usize = 8;
const THREADS: usize = MLA_SM90_THREADS as usize;
const _: () = assert!(THREADS == CONSUMER_THREADS + 128);
/// Registers after the split, as `flash_prefill_sm90`'s (entry 168 for `.maxntid 384`).
const PRODUCER_REGS: u32 = 40;
const CONSUMER_REGS: u32 = 232;
const ROWS: usize = MLA_ROWS as usize;
/// Key dims (9 slabs of 64), k-steps of `Q K^T`, a warpgroup's output n-tiles (256 dims).
const D: usize = MLA_LATENT_DIM as usize;
const SLABS: usize = D / 64;
const KS: usize = D / 16;

/// `E`: the query (MMA) type; `BN` keys a tile (`params::mla_sm90_keys`), `NB = BN / 8`
/// score n-tiles, `KC = BN / 16` k-steps of `P V`; `STAGES`: K tiles in flight.
#[inline(always)]
pub(crate) unsafe fn mla_decode_sm90<E: Elem + Wgmma, const BN: usize, const NB: usize, const KC: usize, const STAGES: usize>(p: &MlaParams) {
    let tid = thread_idx_x() as usize;
    let lane = tid % 32;
    let warp = tid / 32;
    let r0 = lane / 4;
    let col = 2 * (lane % 4);

    // The block's (request, split) and rows, as in `mla_decode`.
    let Some(b) = (unsafe { MlaBlock::new(p) }) else {
        return; // the whole block, before any barrier
    };
    let MlaBlock { req, q_start, ctx, min_pos, max_pos, kv_begin, kv_end, .. } = b;
    let (row_valid, row_token, row_head) = (|i| b.row_valid(i), |i| b.row_token(i), |i| b.row_head(i));
    let (t_first, n_tiles) = if kv_end > kv_begin { tile_range(kv_begin, kv_end, BN) } else { (0, 0) };

    // Shared memory from the first 1024-byte boundary: the Q tile [ROWS rows], STAGES K
    // tiles [BN rows] (`sw128` tiles of 576 columns: 9 slabs), the stages' mbarriers.
    let smem = (cvta_to_shared(dynamic_shared_f32()) + 1023) & !1023;
    let (q_bytes, k_bytes) = (ROWS * D * 2, BN * D * 2);
    let k_tile = |stage: usize| smem + (q_bytes + stage * k_bytes) as u32;
    let bars = smem + (q_bytes + STAGES * k_bytes) as u32;
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
    // Q tile by every thread (rows past the request's are zero), published to the async
    // proxy with the mbarriers by the fence and the barrier.
    let q_row = |m: usize| {
        let off = (q_start + row_token(m)) as u64 * p.q_token_stride + row_head(m) as u64 * p.q_head_stride;
        if row_valid(m) { Some((p.q as *const u16).wrapping_add(off as usize)) } else { None }
    };
    unsafe { load_tile(tid, THREADS, ROWS, D / 8, q_row, |m, c| smem + sw128(m, c, ROWS) as u32) };
    fence_proxy_async_shared_cta();
    bar_sync();

    if warp >= PRODUCER_WARP {
        setmaxnreg_dec::<PRODUCER_REGS>();
        if warp != PRODUCER_WARP {
            return;
        }
        // Producer: tile i into stage i % STAGES once both consumers released it, as boxes of
        // `rows` keys (a page, or the tile's share of one) x 64 columns, 9 slabs a box.
        let bs = 1usize << p.block_size_log2;
        let rows = if bs < BN { bs } else { BN };
        let boxes = BN / rows;
        let bt_row = req * p.block_table_stride as usize;
        for i in 0..n_tiles {
            let stage = i % STAGES;
            if i >= STAGES {
                unsafe { mbarrier_wait_parity(empty(stage), ((i / STAGES - 1) & 1) as u32) };
            }
            bar_warp_sync();
            if elect_sync() {
                unsafe { mbarrier_arrive_expect_tx(full(stage), k_bytes as u32) };
            }
            let key0 = (t_first + i) * BN;
            let mut j = lane;
            while j < boxes * SLABS {
                let (b, slab) = (j / SLABS, j % SLABS);
                let key = key0 + b * rows;
                // Boxes past the split's keys read its last page (masked), so no lookup leaves
                // the request's blocks.
                let page_key = if key < kv_end { key } else { kv_end - 1 };
                let page = unsafe { ld_i32(p.block_table, bt_row + (page_key >> p.block_size_log2)) } as usize;
                let token = page * bs + (key & (bs - 1));
                let dst = k_tile(stage) + (slab * BN * 128 + b * rows * 128) as u32;
                unsafe { cp_async_bulk_tensor_2d(dst, p.tmap, (slab * 64) as i32, token as i32, full(stage)) };
                j += 32;
            }
        }
        return;
    }

    // Consumers: warpgroup g holds every row and value dims 256 g .. 256 g + 256; its warp
    // `warp % 4` rows 16 (warp % 4) .. + 16.
    setmaxnreg_inc::<CONSUMER_REGS>();
    let wg = warp / 4;
    let wrow = 16 * (warp % 4);
    let mut pos = [max_pos; 2];
    for h in 0..2 {
        let i = wrow + r0 + 8 * h;
        if row_valid(i) {
            pos[h] = ctx + row_token(i);
        }
    }
    let s_exp = p.scale * LOG2E;
    let mut rows = RowState::new();
    let mut o = [[0.0f32; 4]; NT_HALF];

    for i in 0..n_tiles {
        let stage = i % STAGES;
        unsafe { mbarrier_wait_parity(full(stage), ((i / STAGES) & 1) as u32) };
        let key0 = (t_first + i) * BN;

        // S = Q K^T over 36 k-steps (the first overwrites S): k-step kk is 32 bytes into
        // slab kk / 4 of both tiles.
        let mut s = [[0.0f32; 4]; NB];
        pin_f32(&mut s);
        wgmma_fence();
        for kk in 0..KS {
            let in_slab = ((kk % 4) * 32) as u32;
            let a = sw128_desc(smem + ((kk / 4) * ROWS * 128) as u32 + in_slab, 16, 1024);
            let b = sw128_desc(k_tile(stage) + ((kk / 4) * BN * 128) as u32 + in_slab, 16, 1024);
            unsafe { E::ss::<NB>(&mut s, a, b, (kk > 0) as u32) };
        }
        wgmma_commit_group();
        wgmma_wait_group_0(&mut s);

        // Masked only where the tile crosses the first row's position or the split's bounds.
        if key0 + BN > min_pos + 1 || key0 + BN > kv_end || key0 < kv_begin {
            for j in 0..NB {
                for e in 0..4 {
                    let key = key0 + 8 * j + col + e % 2;
                    if key > pos[e / 2] || key >= kv_end || key < kv_begin {
                        s[j][e] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let corr = rows.update(&mut s, s_exp);
        rescale(&mut o, corr);

        // O += P V over this warpgroup's 256 value dims: slabs 4 wg .. 4 wg + 4 of the tile
        // (BN x 128 bytes apart), keys 16 kc .. 16 kc + 16.
        let mut pa = [[0u32; 4]; KC];
        for kc in 0..KC {
            pa[kc] = p_fragment::<E, NB>(&s, kc);
        }
        pin_u32(&mut pa);
        pin_f32(&mut o);
        wgmma_fence();
        let v_tile = k_tile(stage) + (4 * wg * BN * 128) as u32;
        for kc in 0..KC {
            let b = sw128_desc(v_tile + (kc * 16 * 128) as u32, (BN * 128) as u32, 1024);
            unsafe { E::rs::<NT_HALF>(&mut o, pa[kc], b) };
        }
        wgmma_commit_group();
        wgmma_wait_group_0(&mut o);
        // The stage is free again once both warpgroups' products have read it.
        unsafe { mbarrier_arrive(empty(stage)) };
    }

    // Each lane's two rows of this warpgroup's value dims: to `out`, or to the workspace.
    unsafe { store_mla_rows::<E>(p, &b, &rows, &o, wrow + r0, wg, lane) };
}

/// One entry point (the kernel table's row, `registry::KERNELS`, module `Sm90a`):
/// `mla_decode_sm90_instance!(name, Q, KV, D, SCORE, STAGES)` (KV native; STAGES one of
/// `MLA_SM90_STAGES`, which sets the tile's keys too).
macro_rules! mla_decode_sm90_instance {
    ($name:ident, $q:ident, $kv:ident, $d:literal, $score:ident, $stages:literal) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: $crate::params::MlaParams) {
            use $crate::params::mla_sm90_keys;
            unsafe {
                $crate::mla_decode_sm90::mla_decode_sm90::<
                    $crate::elem::$q, { mla_sm90_keys($stages) as usize }, { mla_sm90_keys($stages) as usize / 8 }, { mla_sm90_keys($stages) as usize / 16 }, $stages,
                >(&p)
            }
        }
    };
}
pub(crate) use mla_decode_sm90_instance;
