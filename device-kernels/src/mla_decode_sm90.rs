//! MLA decode on Hopper's warpgroup MMA (`wgmma`, sm_90a only): the portable kernel's blocks
//! (`mla_decode`: 64 (query token, head) rows of one request and a range of its keys, the
//! plan's split-KV workspace), its two products issued by warpgroups reading
//! Q and the latent K tile straight from shared memory, each tile read once per warpgroup.
//!
//! Warp-specialized as `flash_prefill_sm90`: a producer warp (of a third warpgroup that
//! gives its registers away with `setmaxnreg`) has the copy engine (TMA) bring each K tile
//! of `BN` latent rows, page by page through the block table, into a `STAGES`-deep ring of
//! 128-byte-swizzled stages; no block barrier in the loop. Each of a stage's 9 slabs (64
//! columns) has its own `full` mbarrier, so S starts on the first slab while the others
//! land (v6: on an H100 M2 1.25x and M4 1.16x of the whole-tile wait, with the grid order);
//! one `empty` mbarrier frees the stage once both consumers are done with it.
//! Two tile shapes (`params::mla_sm90_keys`): 2 stages of 64 keys, or 4 of 32.
//! fp8 latent rows (`K = E4m3`, FlashMLA's 656 bytes): the copy engine brings the rope
//! (16-bit) straight into its slab and the latent bytes raw into the second half of the
//! value slabs; the producer warpgroup's other three warps widen them in place, slab by
//! slab, onto each slab's `full` mbarrier (`convert_fp8`). Correct, but its 96 converters
//! are slower than the portable kernel's conversion (M1 0.20 of copy against 0.39 on an
//! H100), so the plan takes it only where a Hopper depth is asked for.
//! Consumer warpgroup `g` holds all 64 rows and the value dims `256 g .. 256 g + 256`
//! (128 f32 accumulators a thread). The seesaw: tile `t` is owned by warpgroup `t % 2`,
//! which alone computes
//! - `S = Q K^T` over 576 dims: 36 `wgmma` m64 n`BN` k16;
//! - the causal mask (query tokens of a request among themselves) and the split's bounds,
//!   only on tiles that cross them; the online softmax in log2 units, on top of the row
//!   maxima after tile `t - 1` (the other warpgroup's);
//! - `O += P V` over its value dims: `BN / 16` `wgmma` m64 n256 k16, P from registers, V =
//!   the tile's columns read N-major (transposed by the descriptor);
//! and publishes P (a 64 x 64 16-bit `sw128` slab) and the new maxima in the exchange, an
//! mbarrier a warpgroup saying when; the other warpgroup rescales its O onto those maxima
//! and adds `P V` over its own value dims with both operands from shared memory (the SS
//! form: no register operand of another warpgroup's making). Every product is computed
//! once (v1 computed S in both warpgroups), and a warpgroup's softmax runs while the
//! tensor cores run the other's products (on an H100: M2 1.03x and M4 1.10x of v1). Each
//! warpgroup sums the probabilities of its own tiles; the two denominators are added in the
//! epilogue.
//! Epilogue as the portable kernel: a token of one item to `out`, else its partial row and
//! (max, denominator) to the workspace for `merge_splits`.
//!
//! Persistent: a block runs a contiguous run of the plan's work items (`MlaParams::parts`:
//! block y runs items `parts[y] .. parts[y + 1]`, each a request's key range on the block's
//! row tile), the plan balancing the runs' keys over the SMs (`cuda_mla::plan`). The K ring
//! and the exchange run through the items (a tile's stage, phase and owner count every tile
//! of the run before it), so the producer brings the next item's first tiles while the
//! consumers finish this one's; between items the consumers load the next Q tile.
//!
//! Grid and host guarantees: x the row tiles, as `mla_decode` (a request's tiles run
//! together and read its keys from DRAM once), y the runs, no more than the SMs can hold at
//! once; block sizes of 8 or more tokens; items inside their request's keys.

use crate::elem::{Elem, Wgmma, F16};
use crate::gather::{ld_i32, tile_range};
use crate::intrinsics::*;
use crate::kv::{E4m3Cvt, KvStore};
use crate::mla_decode::{scale_v4, store_mla_rows, MlaBlock, NT_HALF};
use crate::params::{MlaParams, MLA_FP8_ROPE_AT, MLA_FP8_SCALES_AT, MLA_LATENT_DIM, MLA_ROWS, MLA_SM90_STAGE_BARS, MLA_SM90_THREADS, TENSOR_MAP_BYTES};
use crate::softmax::{p_fragment, rescale, RowState, LOG2E};
use crate::tile::{load_tile, sw128, sw128_desc};

const CONSUMER_THREADS: usize = 256;
const PRODUCER_WARP: usize = 8;
const THREADS: usize = MLA_SM90_THREADS as usize;
const _: () = assert!(THREADS == CONSUMER_THREADS + 128);
/// Registers after the split, as `flash_prefill_sm90`'s (entry 168 for `.maxntid 384`).
const PRODUCER_REGS: u32 = 40;
/// fp8: the producer warpgroup's warps 9-11 widen the latent bytes in shared memory.
const CONVERTERS: usize = 96;
/// Their named barrier (`bar_sync` is 0, `DONE` 1).
const CONVERTED: u32 = 2;
const CONSUMER_REGS: u32 = 232;
const ROWS: usize = MLA_ROWS as usize;
/// Key dims (9 slabs of 64), k-steps of `Q K^T`, a warpgroup's output n-tiles (256 dims).
const D: usize = MLA_LATENT_DIM as usize;
const SLABS: usize = D / 64;
const KS: usize = D / 16;

/// `E`: the query (MMA) type; `BN` keys a tile (`params::mla_sm90_keys`), `NB = BN / 8`
/// score n-tiles, `KC = BN / 16` k-steps of `P V`; `STAGES`: K tiles in flight.
#[inline(always)]
pub(crate) unsafe fn mla_decode_sm90<E: Elem + Wgmma, K: KvStore, const BN: usize, const NB: usize, const KC: usize, const STAGES: usize>(p: &MlaParams) {
    let tid = thread_idx_x() as usize;
    let lane = tid % 32;
    let warp = tid / 32;
    let r0 = lane / 4;
    // The block's run of work items (the plan's persistent schedule): items
    // `parts[y] .. parts[y + 1]`, each (request, split, key range) on this block's row tile.
    let part = block_idx_y() as usize;
    let (item0, item1) = unsafe { (ld_i32(p.parts, part) as usize, ld_i32(p.parts, part + 1) as usize) };
    // An item's (request, split) and rows, as in `mla_decode`: `None` where this row tile is
    // past the request's rows (every thread of the block skips it alike).
    let block = |item: usize| unsafe { MlaBlock::new(p, item) };
    let tiles = |b: &MlaBlock| if b.kv_end > b.kv_begin { tile_range(b.kv_begin, b.kv_end, BN) } else { (0, 0) };

    // Shared memory from the first 1024-byte boundary: the Q tile [ROWS rows], STAGES K
    // tiles [BN rows] (`sw128` tiles of 576 columns: 9 slabs), the stages' mbarriers.
    let smem = (cvta_to_shared(dynamic_shared_f32()) + 1023) & !1023;
    let (q_bytes, k_bytes) = (ROWS * D * 2, BN * D * 2);
    // Then the exchange (`MLA_SM90_EXCHANGE_BYTES`): the P slab (1024-aligned, as every
    // tile before it), the consumers' maxima slots, the two `ready` mbarriers.
    let x_p = smem + (q_bytes + STAGES * k_bytes) as u32;
    let x_max = x_p + (ROWS * 128) as u32;
    let x_ready = x_max + 128 * 8;
    let ring = Ring::<BN, STAGES> { k0: smem + q_bytes as u32, bars: x_ready + 16 };
    // The producer's stage addresses (the same bytes as `Ring::k_tile`; written through
    // `Ring` the module changes, so it waits for a GPU run: the PTX that ran is this one's).
    let k_tile = |stage: usize| smem + (q_bytes + stage * k_bytes) as u32;
    if tid == 0 {
        for s in 0..STAGES {
            for slab in 0..SLABS {
                // fp8: the converters' arrivals complete the latent slabs, the copy the rope.
                let arrivals = if K::CONVERT && slab < SLABS - 1 { CONVERTERS as u32 } else { 1 };
                unsafe { mbarrier_init(ring.full(s, slab), arrivals) };
            }
            unsafe {
                mbarrier_init(ring.raw(s), 1);
                mbarrier_init(ring.empty(s), CONSUMER_THREADS as u32);
            }
        }
        for g in 0..2 {
            unsafe { mbarrier_init(x_ready + 8 * g, 128) };
        }
    }
    // The mbarriers, published to the async proxy and every thread.
    fence_proxy_async_shared_cta();
    bar_sync();

    // The ring runs through the block's items: a tile's place in it (`g`: its stage
    // `g % STAGES`, its phase `g / STAGES`, its owner `g % 2`) counts every tile of the run
    // before it, so the producer fills the next item's first stages while the consumers
    // finish this one's.
    if warp >= PRODUCER_WARP {
        setmaxnreg_dec::<PRODUCER_REGS>();
        let bs = 1usize << p.block_size_log2;
        let rows = if bs < BN { bs } else { BN };
        let boxes = BN / rows;
        if !K::CONVERT && warp != PRODUCER_WARP {
            return;
        }
        let mut g0 = 0;
        for item in item0..item1 {
            let Some(b) = block(item) else { continue };
            let (t_first, n_tiles) = tiles(&b);
            let kv_end = b.kv_end;
            let bt_row = b.req * p.block_table_stride as usize;
            // A key's cache token (the page of the split's last key past its end: masked keys
            // read the request's own blocks).
            let token = |key: usize| {
                let page_key = if key < kv_end { key } else { kv_end - 1 };
                let page = unsafe { ld_i32(p.block_table, bt_row + (page_key >> p.block_size_log2)) } as usize;
                page * bs + (key & (bs - 1))
            };
            if K::CONVERT && warp > PRODUCER_WARP {
                let c = tid - (PRODUCER_WARP + 1) * 32;
                unsafe { convert_fp8::<E, BN, STAGES>(p, &ring, c, g0, t_first, n_tiles, kv_end, token) };
                g0 += n_tiles;
                continue;
            }
            // Producer: tile i (the ring's g) into stage g % STAGES once both consumers
            // released it, as boxes of `rows` keys (a page, or the tile's share of one) x 64
            // columns.
            for i in 0..n_tiles {
                let g = g0 + i;
                let stage = g % STAGES;
                let key0 = (t_first + i) * BN;
                if g >= STAGES {
                    unsafe { mbarrier_wait_parity(ring.empty(stage), ((g / STAGES - 1) & 1) as u32) };
                }
                if K::CONVERT {
                    // fp8: the rope (16-bit) by the copy engine straight into slab 8 (its map is
                    // the second at `p.tmap`), the latent bytes raw into the second half of the
                    // value slabs (the converters widen them in place).
                    bar_warp_sync();
                    if elect_sync() {
                        unsafe {
                            mbarrier_arrive_expect_tx(ring.full(stage, SLABS - 1), (BN * 128) as u32);
                            mbarrier_arrive_expect_tx(ring.raw(stage), (8 * BN * 64) as u32);
                        }
                    }
                    let mut j = lane;
                    while j < boxes * SLABS {
                        let (b, slab) = (j % boxes, j / boxes);
                        let tok = token(key0 + b * rows);
                        unsafe {
                            if slab == SLABS - 1 {
                                let dst = ring.k_tile(stage) + (8 * BN * 128 + b * rows * 128) as u32;
                                cp_async_bulk_tensor_2d(dst, p.tmap + TENSOR_MAP_BYTES as u64, (MLA_FP8_ROPE_AT / 2) as i32, tok as i32, ring.full(stage, slab));
                            } else {
                                let dst = ring.raw_slab(stage, slab) + (b * rows * 64) as u32;
                                cp_async_bulk_tensor_2d(dst, p.tmap, (slab * 64) as i32, tok as i32, ring.raw(stage));
                            }
                        }
                        j += 32;
                    }
                    continue;
                }
                // Slab by slab, each slab's boxes completing its own `full` mbarrier, so that
                // the consumers' S starts on the first slab while the others land.
                bar_warp_sync();
                if lane < SLABS {
                    unsafe { mbarrier_arrive_expect_tx(ring.full(stage, lane), (BN * 128) as u32) };
                }
                let mut j = lane;
                while j < boxes * SLABS {
                    let (b, slab) = (j % boxes, j / boxes);
                    let dst = k_tile(stage) + (slab * BN * 128 + b * rows * 128) as u32;
                    unsafe { cp_async_bulk_tensor_2d(dst, p.tmap, (slab * 64) as i32, token(key0 + b * rows) as i32, ring.full(stage, slab)) };
                    j += 32;
                }
            }
            g0 += n_tiles;
        }
        return;
    }

    // Consumers, the seesaw: warpgroup g holds every row (its warp `warp % 4` rows
    // 16 (warp % 4) .. + 16) and value dims 256 g .. 256 g + 256. Tile t is *owned* by
    // warpgroup g % 2 (its place in the ring), which alone computes S(t) = Q K^T, the mask
    // and the online softmax, adds P(t) V over its dims from registers, and publishes P(t)
    // (a `sw128` slab) with the new row maxima in the exchange; the other, following, adds
    // P(t) V over its dims with both operands from shared memory. Invariant: both
    // warpgroups see one sequence of row maxima (tile t's, from its owner, on top of tile
    // t - 1's), so their outputs and their denominators (each sums its own tiles') share
    // one scale.
    setmaxnreg_inc::<CONSUMER_REGS>();
    // The warpgroup, broadcast from lane 0 so that ptxas sees the branches on it (which
    // tiles a warpgroup owns) as uniform: wgmma in a divergent path is serialized.
    let wg = shfl_sync_idx_u32((warp / 4) as u32, 0) as usize;
    let ct = tid % 128; // the thread's slot of the exchange's maxima
    let wrow = 16 * (warp % 4);
    let mut g0 = 0;
    for item in item0..item1 {
        let Some(b) = block(item) else { continue };
        let (t_first, n_tiles) = tiles(&b);
        // The ring's count, broadcast from lane 0 so that ptxas sees the stages, phases and
        // owners derived from it as uniform: without it, every wgmma was serialized (C7520).
        g0 = shfl_sync_idx_u32(g0 as u32, 0) as usize;
        // The Q tile (rows past the request's are zero), once both warpgroups are done with
        // the last item's (its words held their denominators); published to the async proxy.
        bar_sync_named(DONE, CONSUMER_THREADS as u32);
        let q_row = |m: usize| {
            let off = (b.q_start + b.row_token(m)) as u64 * p.q_token_stride + b.row_head(m) as u64 * p.q_head_stride;
            if b.row_valid(m) { Some((p.q as *const u16).wrapping_add(off as usize)) } else { None }
        };
        unsafe { load_tile(tid, CONSUMER_THREADS, ROWS, D / 8, q_row, |m, c| smem + sw128(m, c, ROWS) as u32) };
        fence_proxy_async_shared_cta();
        bar_sync_named(DONE, CONSUMER_THREADS as u32);

        let mut pos = [b.max_pos; 2];
        for h in 0..2 {
            let i = wrow + r0 + 8 * h;
            if b.row_valid(i) {
                pos[h] = b.ctx + b.row_token(i);
            }
        }
        let w = Seesaw::<BN, STAGES> {
            q: smem,
            ring: Ring { k0: k_tile(0), ..ring },
            x_p,
            m_slot: x_max + (ct * 8) as u32,
            x_ready,
            wg,
            g0,
            t_first,
            min_pos: b.min_pos,
            kv_begin: b.kv_begin,
            kv_end: b.kv_end,
            pos,
            row: wrow + r0,
            lane,
            s_exp: p.scale * LOG2E,
        };
        let mut rows = RowState::new();
        let mut o = [[0.0f32; 4]; NT_HALF];
        // The item's first tile has no predecessor to follow; every later one has. Nothing is
        // in flight across the loop's back edge or a branch on the tile: where something was,
        // ptxas serialized every wgmma (C7514, C7515, C7518, C7520; `tests/ptxas.rs` refuses
        // them). `t` counts the item's tiles; this warpgroup owns those of its parity in the ring.
        let mut t = (wg + g0) % 2;
        if t == 0 && n_tiles > 0 {
            unsafe { w.tile::<E, NB, KC, false>(0, &mut rows, &mut o) };
            t = 2;
        }
        while t < n_tiles {
            unsafe { w.tile::<E, NB, KC, true>(t, &mut rows, &mut o) };
            t += 2;
        }
        // The other's last tile, where it is theirs.
        if n_tiles > 0 && (g0 + n_tiles - 1) % 2 != wg {
            unsafe { w.follow::<E, KC>(n_tiles - 1, &mut rows, &mut o) };
            wgmma_wait_group_0(&mut o);
            unsafe { mbarrier_arrive(w.empty(n_tiles - 1)) };
        }

        // The denominators: each warpgroup summed its own tiles' probabilities (on the shared
        // maxima); the two parts meet in the Q tile, free once both are past their last tile.
        let l_slot = |g: usize| smem + ((g * 128 + ct) * 8) as u32;
        bar_sync_named(DONE, CONSUMER_THREADS as u32);
        unsafe { st_shared_v2(l_slot(wg), [rows.l[0].to_bits(), rows.l[1].to_bits()]) };
        bar_sync_named(DONE, CONSUMER_THREADS as u32);
        let other = unsafe { ld_shared_v2(l_slot(1 - wg)) };
        for h in 0..2 {
            rows.l[h] += f32::from_bits(other[h]);
        }

        // Each lane's two rows of this warpgroup's value dims: to `out`, or to the workspace.
        unsafe { store_mla_rows::<E>(p, &b, &rows, &o, wrow + r0, wg, lane) };
        g0 += n_tiles;
    }
}

/// The consumers' named barrier (`bar_sync` is 0): both past their last tile.
const DONE: u32 = 1;

/// A consumer thread's view of the block: shared-memory addresses (the Q tile, the K ring,
/// the exchange's P slab, its maxima slot and `ready` mbarriers), its warpgroup, and what
/// masks its rows.
struct Seesaw<const BN: usize, const STAGES: usize> {
    q: u32,
    ring: Ring<BN, STAGES>,
    x_p: u32,
    m_slot: u32,
    x_ready: u32,
    wg: usize,
    /// The ring's tiles before the item's first (tile t of the item is the ring's g0 + t).
    g0: usize,
    t_first: usize,
    min_pos: usize,
    kv_begin: usize,
    kv_end: usize,
    /// The positions of this lane's two rows (causal among the request's query tokens).
    pos: [usize; 2],
    /// This lane's first row (the second is 8 below).
    row: usize,
    lane: usize,
    s_exp: f32,
}

/// The K ring: `STAGES` tiles of `BN` latent rows from `k0` (`sw128`, 9 slabs each), and
/// each stage's `full` (the producer's copy landed) and `empty` (both consumers are done
/// with it) mbarriers from `bars`.
#[derive(Clone, Copy)]
struct Ring<const BN: usize, const STAGES: usize> {
    k0: u32,
    bars: u32,
}

/// The ring's mbarriers (`full` a slab, `empty`, `raw`) are the host's `MLA_SM90_STAGE_BARS` a
/// stage, which sizes the launch's shared memory.
const _: () = assert!(MLA_SM90_STAGE_BARS as usize == SLABS + 2);

impl<const BN: usize, const STAGES: usize> Ring<BN, STAGES> {
    #[inline(always)]
    fn k_tile(&self, stage: usize) -> u32 {
        self.k0 + (stage * BN * D * 2) as u32
    }
    /// Slab `slab` of the stage landed.
    #[inline(always)]
    fn full(&self, stage: usize, slab: usize) -> u32 {
        self.bars + 8 * (stage * SLABS + slab) as u32
    }
    #[inline(always)]
    fn empty(&self, stage: usize) -> u32 {
        self.bars + 8 * (STAGES * SLABS + stage) as u32
    }
    /// fp8: the stage's raw latent bytes landed.
    #[inline(always)]
    fn raw(&self, stage: usize) -> u32 {
        self.bars + 8 * (STAGES * (SLABS + 1) + stage) as u32
    }
    /// fp8: where the copy engine puts the latent bytes of slab `slab` (`BN` rows of 64
    /// bytes, unswizzled): the second half of the value slabs, `BN x 64` bytes a slab.
    #[inline(always)]
    fn raw_slab(&self, stage: usize, slab: usize) -> u32 {
        self.k_tile(stage) + (4 * BN * 128 + slab * BN * 64) as u32
    }
}

impl<const BN: usize, const STAGES: usize> Seesaw<BN, STAGES> {
    #[inline(always)]
    fn k_tile(&self, stage: usize) -> u32 {
        self.ring.k_tile(stage)
    }
    /// The first of this warpgroup's value slabs in a stage (slabs `BN x 128` bytes apart).
    #[inline(always)]
    fn v_tile(&self, stage: usize) -> u32 {
        self.k_tile(stage) + (4 * self.wg * BN * 128) as u32
    }
    /// The stage of the item's tile `t`.
    #[inline(always)]
    fn stage(&self, t: usize) -> usize {
        (self.g0 + t) % STAGES
    }
    /// The `empty` mbarrier of the item's tile `t`'s stage.
    #[inline(always)]
    fn empty(&self, t: usize) -> u32 {
        self.ring.empty(self.stage(t))
    }
    #[inline(always)]
    fn ready(&self, g: usize) -> u32 {
        self.x_ready + 8 * g as u32
    }

    /// Waits for slab `slab` of the item's tile t in its stage (a loop the compiler does not
    /// see: batches may be in flight across it).
    #[inline(always)]
    unsafe fn wait_slab(&self, t: usize, slab: usize) {
        let g = self.g0 + t;
        unsafe { mbarrier_wait_parity_spin(self.ring.full(g % STAGES, slab), ((g / STAGES) & 1) as u32) };
    }

    /// Following the other's tile `t`: its P and maxima awaited (and its bytes), O onto the
    /// maxima, `O += P(t) V` issued with both operands from shared memory (committed).
    #[inline(always)]
    unsafe fn follow<E: Elem + Wgmma, const KC: usize>(&self, t: usize, rows: &mut RowState, o: &mut [[f32; 4]; NT_HALF]) {
        unsafe {
            for slab in 4 * self.wg..4 * self.wg + 4 {
                self.wait_slab(t, slab);
            }
            // The owner's publishes are its tiles of the ring: g / 2 of them before this one.
            mbarrier_wait_parity(self.ready(1 - self.wg), (((self.g0 + t) / 2) & 1) as u32);
        }
        let m = unsafe { ld_shared_v2(self.m_slot) };
        rescale(o, rows.onto([f32::from_bits(m[0]), f32::from_bits(m[1])]));
        pin_f32(o);
        wgmma_fence();
        unsafe { pv_shared::<E, BN, KC>(o, self.x_p, self.v_tile(self.stage(t))) };
    }

    /// `S = Q K^T` of tile `t` over 36 k-steps (the first overwrites S), issued and
    /// committed: k-step kk is 32 bytes into slab kk / 4 of both tiles. The Q tile's address
    /// is made opaque each tile, so its 36 descriptors are built here rather than hoisted
    /// out of the loop (72 registers).
    #[inline(always)]
    unsafe fn scores<E: Elem + Wgmma, const NB: usize>(&self, t: usize, s: &mut [[f32; 4]; NB]) {
        let stage = self.stage(t);
        pin_f32(s);
        let q = opaque_u32(self.q);
        wgmma_fence();
        for kk in 0..KS {
            if kk % 4 == 0 {
                unsafe { self.wait_slab(t, kk / 4) };
            }
            let in_slab = ((kk % 4) * 32) as u32;
            let a = sw128_desc(q + ((kk / 4) * ROWS * 128) as u32 + in_slab, 16, 1024);
            let b = sw128_desc(self.k_tile(stage) + ((kk / 4) * BN * 128) as u32 + in_slab, 16, 1024);
            unsafe { E::ss::<NB>(s, a, b, (kk > 0) as u32) };
        }
        wgmma_commit_group();
    }

    /// This warpgroup's own tile `t` (`FOLLOW`: after following the other's tile `t - 1`):
    /// the follow's `P V` issued, then S(t); the follow waited for and its stage released |
    /// mask, softmax | P(t) and the new maxima published | O onto them, `O += P(t) V` from
    /// registers, waited for; the stage released. The follow goes first so that its stage
    /// is refilled sooner: on an H100 (benches/NOTES-mla.md, v5) M2 338.0 and M4 436.4
    /// TFLOP/s, against 327.0 and 420.9 with S first and the follow under the softmax.
    #[inline(always)]
    unsafe fn tile<E: Elem + Wgmma, const NB: usize, const KC: usize, const FOLLOW: bool>(&self, t: usize, rows: &mut RowState, o: &mut [[f32; 4]; NT_HALF]) {
        let stage = self.stage(t);
        let mut s = [[0.0f32; 4]; NB];
        if FOLLOW {
            unsafe {
                self.follow::<E, KC>(t - 1, rows, o);
                self.scores::<E, NB>(t, &mut s);
            }
            wgmma_wait_group_1(o);
            unsafe { mbarrier_arrive(self.empty(t - 1)) };
            wgmma_wait_group_0(&mut s);
        } else {
            unsafe { self.scores::<E, NB>(t, &mut s) };
            wgmma_wait_group_0(&mut s);
        }

        // Masked only where the tile crosses the first row's position or the split's bounds.
        let key0 = (self.t_first + t) * BN;
        if key0 + BN > self.min_pos + 1 || key0 + BN > self.kv_end || key0 < self.kv_begin {
            let col = 2 * (self.lane % 4);
            for j in 0..NB {
                for e in 0..4 {
                    let key = key0 + 8 * j + col + e % 2;
                    if key > self.pos[e / 2] || key >= self.kv_end || key < self.kv_begin {
                        s[j][e] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let corr = rows.update(&mut s, self.s_exp);
        let mut pa = [[0u32; 4]; KC];
        for kc in 0..KC {
            pa[kc] = p_fragment::<E, NB>(&s, kc);
        }
        unsafe { publish::<E, NB>(&s, rows.m, self.x_p, self.m_slot, self.row, self.lane, self.ready(self.wg)) };

        // O += P V over this warpgroup's 256 value dims: keys 16 kc .. 16 kc + 16.
        rescale(o, corr);
        pin_u32(&mut pa);
        pin_f32(o);
        wgmma_fence();
        let vt = self.v_tile(stage);
        for kc in 0..KC {
            let b = sw128_desc(vt + (kc * 16 * 128) as u32, (BN * 128) as u32, 1024);
            unsafe { E::rs::<NT_HALF>(o, pa[kc], b) };
        }
        wgmma_commit_group();
        wgmma_wait_group_0(o);
        unsafe { mbarrier_arrive(self.empty(t)) };
    }
}

/// fp8 converter `c` (of `CONVERTERS`): for each tile of an item (the ring's tiles `g0 ..`), its keys' four scales (one per 128
/// latent dims) read from the cache, then slab by slab (`j` in 0..8) its 16-byte chunk
/// `c % 4` of keys `c / 4 + 24 m` widened by the hardware (`cvt.rn.f16x2.e4m3x2`, exact),
/// times the scale in f32, rounded once to `E` (the portable kernel's values, bit for bit),
/// into the stage's `sw128` slab j, published to the consumers' `wgmma` (async proxy) and
/// slab j's `full` mbarrier. In place: slab j's 16-bit bytes cover raw slabs 2j - 8 and
/// 2j - 7 only, so every raw slab is read by all converters (their barrier closes each slab)
/// before a later slab's stores; slab 7 covers its own bytes, so its reads come before a
/// barrier and its stores after. Keys past the split's end are stored as zeros (masked in S,
/// so `P V` meets no stale bytes).
#[inline(always)]
unsafe fn convert_fp8<E: Elem, const BN: usize, const STAGES: usize>(
    p: &MlaParams,
    ring: &Ring<BN, STAGES>,
    c: usize,
    g0: usize,
    t_first: usize,
    n_tiles: usize,
    kv_end: usize,
    token: impl Fn(usize) -> usize,
) {
    const KEYS: usize = 3; // ceil(64 keys x 4 chunks / 96 converters)
    let q = c % 4;
    let key_of = |m: usize| c / 4 + 24 * m;
    // 16 e4m3 values -> two chunks of `E` (values 0-7, 8-15), times `scale`; zeros for a dead key.
    let widen = |raw: V4, scale: f32, live: bool| -> [V4; 2] {
        if !live {
            return [V4::ZERO; 2];
        }
        let (lo, hi) = E4m3Cvt::widen::<E>(raw);
        [scale_v4::<F16, E>(lo, scale), scale_v4::<F16, E>(hi, scale)]
    };
    for i in 0..n_tiles {
        let g = g0 + i; // the tile's place in the ring
        let stage = g % STAGES;
        let key0 = (t_first + i) * BN;
        // The keys' scale rows in the cache (read a slab pair at a time, through L1).
        let mut scale_at = [0u64; KEYS];
        for m in 0..KEYS {
            if key_of(m) < BN {
                scale_at[m] = p.cache + token(key0 + key_of(m)) as u64 * p.cache_token_stride + MLA_FP8_SCALES_AT as u64;
            }
        }
        // This thread's offsets within a slab (its keys' rows, its chunk pair: the same in
        // every slab), opaque each tile: LLVM would otherwise hoist all 48 of the stores'
        // addresses out of the tile loop, and ptxas spill them at 40 registers.
        let at = ring.k_tile(stage);
        let mut out_at = [[0u32; 2]; KEYS];
        let mut raw_at = [0u32; KEYS];
        for m in 0..KEYS {
            for h in 0..2 {
                out_at[m][h] = opaque_u32(at + sw128(key_of(m), 2 * q + h, BN) as u32);
            }
            raw_at[m] = opaque_u32(ring.raw_slab(stage, 0) + (key_of(m) * 64 + 16 * q) as u32);
        }
        let store = |m: usize, j: usize, v: [V4; 2]| unsafe {
            st_shared_v4(out_at[m][0] + (j * BN * 128) as u32, v[0]);
            st_shared_v4(out_at[m][1] + (j * BN * 128) as u32, v[1]);
        };
        let raw = |m: usize, j: usize| unsafe { ld_shared_v4(raw_at[m] + (j * BN * 64) as u32) };
        let scale = |m: usize, j: usize| unsafe { ld_global_nc_f32((scale_at[m] + 4 * (j / 2) as u64) as *const f32) };
        unsafe { mbarrier_wait_parity(ring.raw(stage), ((g / STAGES) & 1) as u32) };
        for j in 0..7 {
            for m in 0..KEYS {
                if key_of(m) < BN {
                    store(m, j, widen(raw(m, j), scale(m, j), key0 + key_of(m) < kv_end));
                }
            }
            fence_proxy_async_shared_cta();
            unsafe { mbarrier_arrive(ring.full(stage, j)) };
            bar_sync_named(CONVERTED, CONVERTERS as u32);
        }
        // Slab 7: every converter's reads before any store.
        let mut last = [V4::ZERO; KEYS];
        for m in 0..KEYS {
            if key_of(m) < BN {
                last[m] = raw(m, 7);
            }
        }
        bar_sync_named(CONVERTED, CONVERTERS as u32);
        for m in 0..KEYS {
            if key_of(m) < BN {
                store(m, 7, widen(last[m], scale(m, 7), key0 + key_of(m) < kv_end));
            }
        }
        fence_proxy_async_shared_cta();
        unsafe { mbarrier_arrive(ring.full(stage, 7)) };
    }
}

/// The owner's side of the exchange: P (the probabilities in `s`, 16-bit) into the `sw128`
/// slab at `x_p` (this lane's rows `r` and `r + 8`, its column pair of each 8-key chunk),
/// its rows' maxima `m` into its slot, made visible to the follower's `wgmma` (the async
/// proxy) and released through the `ready` mbarrier.
#[inline(always)]
unsafe fn publish<E: Elem, const NB: usize>(s: &[[f32; 4]; NB], m: [f32; 2], x_p: u32, m_slot: u32, r: usize, lane: usize, ready: u32) {
    // Opaque, so that LLVM does not hoist the 16 addresses out of the tile loop (spilled).
    let x_p = opaque_u32(x_p);
    for h in 0..2 {
        let row = x_p + ((r + 8 * h) * 128 + 4 * (lane % 4)) as u32;
        for j in 0..NB {
            let chunk = ((j ^ (r % 8)) * 16) as u32;
            unsafe { st_shared_u32(row + chunk, E::from_f32x2(s[j][2 * h], s[j][2 * h + 1])) };
        }
    }
    unsafe { st_shared_v2(m_slot, [m[0].to_bits(), m[1].to_bits()]) };
    fence_proxy_async_shared_cta();
    unsafe { mbarrier_arrive(ready) };
}

/// The follower's `O += P V` over its 256 value dims of the tile at `v_tile` (its first
/// value slab; slabs `BN x 128` bytes apart), P the exchange's slab at `x_p` (keys
/// `16 kc .. 16 kc + 16` 32 bytes into it); committed, not waited for.
#[inline(always)]
unsafe fn pv_shared<E: Elem + Wgmma, const BN: usize, const KC: usize>(o: &mut [[f32; 4]; NT_HALF], x_p: u32, v_tile: u32) {
    for kc in 0..KC {
        let a = sw128_desc(x_p + (kc * 32) as u32, 16, 1024);
        let b = sw128_desc(v_tile + (kc * 16 * 128) as u32, (BN * 128) as u32, 1024);
        unsafe { E::ss_tb::<NT_HALF>(o, a, b) };
    }
    wgmma_commit_group();
}

/// One entry point (the kernel table's row, `registry::KERNELS`, module `Sm90a`):
/// `mla_decode_sm90_instance!(name, Q, KV, D, SCORE, STAGES)` (KV native or e4m3; STAGES one of
/// `MLA_SM90_STAGES`, which sets the tile's keys too).
macro_rules! mla_decode_sm90_instance {
    ($name:ident, $q:ident, $kv:ident, $d:literal, $score:ident, $stages:literal) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: $crate::params::MlaParams) {
            use $crate::params::mla_sm90_keys;
            unsafe {
                $crate::mla_decode_sm90::mla_decode_sm90::<
                    $crate::elem::$q, $crate::kv::$kv, { mla_sm90_keys($stages) as usize }, { mla_sm90_keys($stages) as usize / 8 }, { mla_sm90_keys($stages) as usize / 16 }, $stages,
                >(&p)
            }
        }
    };
}
pub(crate) use mla_decode_sm90_instance;
