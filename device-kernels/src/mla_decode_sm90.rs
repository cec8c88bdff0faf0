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
//! (128 f32 accumulators a thread). The seesaw: tile `t` is owned by warpgroup `t % 2`,
//! which alone computes
//! - `S = Q K^T` over 576 dims: 36 `wgmma` m64 n`BN` k16;
//! - the causal mask (query tokens of a request among themselves) and the split's bounds,
//!   only on tiles that cross them; the online softmax in log2 units, from the row maxima
//!   after tile `t - 1` (the other warpgroup's);
//! and hands P (its 16-bit A fragments) and the new maxima to the other through shared
//! memory (a named barrier); both then add `O += P V` (`BN / 16` `wgmma` m64 n256 k16, P from
//! registers, V = the tile's columns `256 g ..` read N-major). The tensor cores compute every
//! product once. v4 (v2 at 845d977 and the v3 trial were serialized by ptxas, C7518): a
//! warpgroup computes its own tile's S, then issues the P V of the other's previous tile and
//! runs its own softmax while that P V runs. Each warpgroup sums the probabilities
//! of its own tiles; the two denominators are added in the epilogue.
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

    // Consumers, the seesaw: warpgroup g holds every row (its warp `warp % 4` rows
    // 16 (warp % 4) .. + 16) and value dims 256 g .. 256 g + 256. Tile t is *owned* by
    // warpgroup t % 2, which alone computes S = Q K^T, the mask and the online softmax, and
    // hands the other (the *follower*) its probabilities P and new row maxima through the
    // exchange; both then add P V over their own value dims; a warpgroup's softmax runs
    // while its P V of the other's tile does. Invariant: both warpgroups see the same sequence of row maxima (each
    // tile's, from its owner), so their outputs and denominators share one scale.
    setmaxnreg_inc::<CONSUMER_REGS>();
    // The warpgroup, broadcast from lane 0 so that ptxas sees the branches on it (which
    // tiles a warpgroup owns) as uniform: wgmma in a divergent path is serialized.
    let wg = shfl_sync_idx_u32((warp / 4) as u32, 0) as usize;
    let ct = tid % 128; // the thread's place in its warpgroup: its slot of the exchange
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

    // The exchange: thread `ct`'s P fragments (`KC` x 16 bytes) and two maxima. Thread `ct`
    // of the one warpgroup writes only what thread `ct` of the other reads, so the named
    // barriers READY (owner arrives, follower waits) are the only ordering needed: the next
    // write into a slot comes from the thread that last read it.
    let xp = bars + (16 * STAGES) as u32;
    let x = Exchange { p: xp + (ct * 16) as u32, m: xp + (128 * 16 * KC + ct * 8) as u32, wg: wg as u32 };
    let v_tile = |stage: usize| k_tile(stage) + (4 * wg * BN * 128) as u32;
    let parity = |t: usize| ((t / STAGES) & 1) as u32;
    let bounds = Bounds { min_pos, kv_begin, kv_end, pos, col };
    // A warpgroup's own tile t: S(t), waited for | the other's P(t - 1) and maxima
    // received, O onto those maxima, P V(t - 1) issued | mask, softmax, P(t) sent while
    // that P V runs | P V(t - 1) waited, its stage released; O onto the new maxima; P V(t).
    // (Leaving S(t) in flight across the follow, as v3 did, makes ptxas serialize every
    // wgmma of the kernel: C7518, which tests/ptxas.rs refuses.)
    let mut pa = [[0u32; 4]; KC];
    let mut t = wg;
    while t < n_tiles {
        let stage = t % STAGES;
        unsafe { mbarrier_wait_parity(full(stage), parity(t)) };
        if t > 0 {
            // The other's tile t - 1 too (its bytes, for this warpgroup's P V), waited for
            // before anything is in flight.
            unsafe { mbarrier_wait_parity(full((t - 1) % STAGES), parity(t - 1)) };
        }

        // S = Q K^T over 36 k-steps (the first overwrites S): k-step kk is 32 bytes into
        // slab kk / 4 of both tiles.
        let mut s = [[0.0f32; 4]; NB];
        pin_f32(&mut s);
        // The Q tile's address made opaque each tile: its 36 descriptors are built here
        // rather than hoisted out of the loop, where they held 72 registers (and spilled).
        let q_smem = opaque_u32(smem);
        wgmma_fence();
        for kk in 0..KS {
            let in_slab = ((kk % 4) * 32) as u32;
            let a = sw128_desc(q_smem + ((kk / 4) * ROWS * 128) as u32 + in_slab, 16, 1024);
            let b = sw128_desc(k_tile(stage) + ((kk / 4) * BN * 128) as u32 + in_slab, 16, 1024);
            unsafe { E::ss::<NB>(&mut s, a, b, (kk > 0) as u32) };
        }
        wgmma_commit_group();
        wgmma_wait_group_0(&mut s);
        let corr = if t > 0 {
            // The other's tile t - 1 (its softmax done meanwhile).
            let (mut pf, mf) = unsafe { x.receive::<KC>() };
            onto_maxima(&mut rows, &mut o, mf);
            pin_u32(&mut pf);
            pin_f32(&mut o);
            wgmma_fence();
            unsafe { pv::<E, BN, KC>(&mut o, &pf, v_tile((t - 1) % STAGES)) };
            let corr = unsafe { own_softmax::<E, NB, KC>(&mut s, &mut rows, &mut pa, x, (t_first + t) * BN, &bounds, s_exp) };
            wgmma_wait_group_0(&mut o);
            pin_u32(&mut pf);
            unsafe { mbarrier_arrive(empty((t - 1) % STAGES)) };
            corr
        } else {
            unsafe { own_softmax::<E, NB, KC>(&mut s, &mut rows, &mut pa, x, (t_first + t) * BN, &bounds, s_exp) }
        };
        rescale(&mut o, corr);
        pin_u32(&mut pa);
        pin_f32(&mut o);
        wgmma_fence();
        unsafe { pv::<E, BN, KC>(&mut o, &pa, v_tile(stage)) };
        wgmma_wait_group_0(&mut o);
        pin_u32(&mut pa);
        unsafe { mbarrier_arrive(empty(stage)) };
        t += 2;
    }
    // The other's last tile, where it is theirs.
    if n_tiles > 0 && (n_tiles - 1) % 2 != wg {
        let last = n_tiles - 1;
        let (mut pf, mf) = unsafe { x.receive::<KC>() };
        onto_maxima(&mut rows, &mut o, mf);
        unsafe { mbarrier_wait_parity(full(last % STAGES), parity(last)) };
        pin_u32(&mut pf);
        pin_f32(&mut o);
        wgmma_fence();
        unsafe { pv::<E, BN, KC>(&mut o, &pf, v_tile(last % STAGES)) };
        wgmma_wait_group_0(&mut o);
        pin_u32(&mut pf);
        unsafe { mbarrier_arrive(empty(last % STAGES)) };
    }

    // The denominators: each warpgroup summed its own tiles' probabilities (on the shared
    // maxima); the two parts meet in the Q tile, free once both warpgroups' last S is done
    // (each waited for the other's last tile, or owned it).
    let l_slot = |g: usize| smem + ((g * 128 + ct) * 8) as u32;
    bar_sync_named(DONE, BOTH);
    unsafe { st_shared_v2(l_slot(wg), [rows.l[0].to_bits(), rows.l[1].to_bits()]) };
    bar_sync_named(DONE, BOTH);
    let other = unsafe { ld_shared_v2(l_slot(1 - wg)) };
    for h in 0..2 {
        rows.l[h] += f32::from_bits(other[h]);
    }

    // Each lane's two rows of this warpgroup's value dims: to `out`, or to the workspace.
    unsafe { store_mla_rows::<E>(p, &b, &rows, &o, wrow + r0, wg, lane) };
}

/// Named barriers of the two consumer warpgroups (`bar_sync` is 0): `READY + g`, a tile of
/// warpgroup `g` handed over (`g` arrives, the other waits: one barrier a direction, so an
/// owner's arrival can never meet its own later wait), and both past their last tile.
const READY: u32 = 1;
const DONE: u32 = 3;
const BOTH: u32 = CONSUMER_THREADS as u32;

/// One consumer thread's slot of the exchange: its P fragments at `p + 2048 kc` (slot-major
/// by k-step, 16 bytes a thread) and its two row maxima at `m`; `wg`, its warpgroup.
#[derive(Clone, Copy)]
struct Exchange {
    p: u32,
    m: u32,
    wg: u32,
}

impl Exchange {
    /// The owner's side: writes its P fragments and maxima, then signals READY.
    #[inline(always)]
    unsafe fn send<const KC: usize>(&self, pa: &[[u32; 4]; KC], m: [f32; 2]) {
        for kc in 0..KC {
            unsafe { st_shared_v4(self.p + (kc * 2048) as u32, V4(pa[kc])) };
        }
        unsafe { st_shared_v2(self.m, [m[0].to_bits(), m[1].to_bits()]) };
        bar_arrive_named(READY + self.wg, BOTH);
    }

    /// The follower's side: waits for READY, then reads what the owner's same thread sent.
    #[inline(always)]
    unsafe fn receive<const KC: usize>(&self) -> ([[u32; 4]; KC], [f32; 2]) {
        bar_sync_named(READY + (1 - self.wg), BOTH);
        let mut pa = [[0u32; 4]; KC];
        for kc in 0..KC {
            pa[kc] = unsafe { ld_shared_v4(self.p + (kc * 2048) as u32) }.0;
        }
        let m = unsafe { ld_shared_v2(self.m) };
        (pa, [f32::from_bits(m[0]), f32::from_bits(m[1])])
    }
}

/// `O += P V` over a warpgroup's 256 value dims of the tile at `v_tile` (its first value
/// slab; slabs `BN x 128` bytes apart), keys `16 kc .. 16 kc + 16` a k-step; committed, not
/// waited for.
#[inline(always)]
unsafe fn pv<E: Elem + Wgmma, const BN: usize, const KC: usize>(o: &mut [[f32; 4]; NT_HALF], pa: &[[u32; 4]; KC], v_tile: u32) {
    for kc in 0..KC {
        let b = sw128_desc(v_tile + (kc * 16 * 128) as u32, (BN * 128) as u32, 1024);
        unsafe { E::rs::<NT_HALF>(o, pa[kc], b) };
    }
    wgmma_commit_group();
}

/// What masks a tile: the first row's position (causal among the request's query tokens),
/// the split's keys, each lane's two rows' positions and its fragment column.
struct Bounds {
    min_pos: usize,
    kv_begin: usize,
    kv_end: usize,
    pos: [usize; 2],
    col: usize,
}

/// The follower's rows onto the owner's new maxima `m`: O and the denominators rescaled.
#[inline(always)]
fn onto_maxima<const NT: usize>(rows: &mut RowState, o: &mut [[f32; 4]; NT], m: [f32; 2]) {
    let mut corr = [1.0f32; 2];
    for h in 0..2 {
        corr[h] = ex2_approx(rows.m[h] - m[h]);
        rows.m[h] = m[h];
        rows.l[h] *= corr[h];
    }
    rescale(o, corr);
}

/// The owner's softmax of its tile at `key0`: the mask (only where the tile crosses the
/// first row's position or the split's bounds), the online softmax onto the running maxima,
/// P as A fragments into `pa`, handed with the new maxima to the follower. Returns O's
/// correction.
#[inline(always)]
unsafe fn own_softmax<E: Elem, const NB: usize, const KC: usize>(
    s: &mut [[f32; 4]; NB], rows: &mut RowState, pa: &mut [[u32; 4]; KC], x: Exchange, key0: usize, b: &Bounds, s_exp: f32,
) -> [f32; 2] {
    for j in 0..NB {
        for e in 0..4 {
            let key = key0 + 8 * j + b.col + e % 2;
            if key > b.pos[e / 2] || key >= b.kv_end || key < b.kv_begin {
                s[j][e] = f32::NEG_INFINITY;
            }
        }
    }
    let corr = rows.update(s, s_exp);
    for kc in 0..KC {
        pa[kc] = p_fragment::<E, NB>(s, kc);
    }
    unsafe { x.send(pa, rows.m) };
    corr
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
