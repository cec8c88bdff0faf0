//! Flash prefill on Hopper's warpgroup MMA (`wgmma`, sm_90a only): the portable kernel's
//! tiles, rows and masks (`flash_prefill::PrefillBlock`, `LaneRows`, `store_rows`), its two
//! products issued by warpgroups reading their operands straight from shared memory.
//!
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
//! once per 16). K/V tiles arrive through the same block-table gather and cp.async
//! pipeline, written in the 128-byte-swizzle layout; each thread fences them to the async
//! proxy before the block barrier.
//!
//! Grid and host guarantees: as `flash_prefill`.

use crate::elem::{Bf16, Elem, Wgmma, F16};
use crate::flash_prefill::{store_rows, LaneRows, PrefillBlock};
use crate::gather::{clamp_key, tile_range};
use crate::intrinsics::*;
use crate::params::{prefill_sm90_keys, prefill_sm90_stages, PrefillParams, PREFILL_ROWS, PREFILL_WARPS};
use crate::score_mod::{Alibi, Plain, ScoreMod, SoftCap, SoftCapAlibi};
use crate::softmax::{p_fragment, rescale, RowState};
use crate::tile::{sw128, sw128_desc};

const WARPS: usize = PREFILL_WARPS as usize;
const THREADS: usize = WARPS * 32;
const ROWS: usize = PREFILL_ROWS as usize;

/// `D`: head dim, `NT = D / 8` output n-tiles, `KS = D / 16` k-steps of `Q K^T`; `BN` keys a
/// tile, `NB = BN / 8` score n-tiles, `KC = BN / 16` k-steps of `P V`; `STAGES` tiles in
/// flight; `M`: the score modifier.
#[inline(always)]
unsafe fn flash_prefill_sm90<E: Elem + Wgmma, M: ScoreMod, const D: usize, const NT: usize, const KS: usize, const BN: usize, const NB: usize, const KC: usize, const STAGES: usize>(
    p: &PrefillParams,
) {
    let chunks = D / 8;
    let tid = thread_idx_x() as usize;
    let lane = tid % 32;
    let warp = tid / 32;
    let wg = warp / 4;
    let r0 = lane / 4;
    let col = 2 * (lane % 4);

    let t = unsafe { PrefillBlock::new(p) };
    let (t_first, n_tiles) = tile_range(t.kv_begin, t.kv_end, BN);

    // Shared memory from the first 1024-byte boundary: the Q tile [ROWS rows], then STAGES
    // pairs of K, V tiles [BN rows], all `sw128` tiles of D columns.
    let smem = (cvta_to_shared(dynamic_shared_f32()) + 1023) & !1023;
    let (q_bytes, kv_bytes) = (ROWS * D * 2, BN * D * 2);
    let k_tile = |stage: usize| smem + (q_bytes + stage * 2 * kv_bytes) as u32;
    let v_tile = |stage: usize| smem + (q_bytes + (stage * 2 + 1) * kv_bytes) as u32;

    // K/V tile `tile` into `stage`: thread -> one key row (`tpr` threads a row), every
    // `tpr`-th chunk of it.
    let keys = t.keys(p);
    let tpr = THREADS / BN;
    let (my_row, my_chunk0) = (tid / tpr, tid % tpr);
    let issue = |tile: usize, stage: usize| {
        let off = keys.offset(clamp_key(tile * BN + my_row, t.kv_begin, t.kv_end));
        let (ksrc, vsrc) = unsafe { ((p.key_cache as *const u16).add(off), (p.value_cache as *const u16).add(off)) };
        let (kdst, vdst) = (k_tile(stage), v_tile(stage));
        for k in 0..chunks.div_ceil(tpr) {
            let c = my_chunk0 + k * tpr;
            if c < chunks {
                let at = sw128(my_row, c, BN) as u32;
                unsafe {
                    cp_async_cg_16(kdst + at, ksrc.add(8 * c));
                    cp_async_cg_16(vdst + at, vsrc.add(8 * c));
                }
            }
        }
    };
    for s in 0..STAGES - 1 {
        if s < n_tiles {
            issue(t_first + s, s);
        }
        cp_async_commit_group();
    }

    // Q tile into shared memory (rows outside the tile are zero); the loop's first fence
    // and barrier publish it to the async proxy.
    let mut u = tid;
    while u < ROWS * chunks {
        let (m, c) = (u / chunks, u % chunks);
        let v = if t.row_valid(m) {
            let off = t.row_token(m) as u64 * p.q_token_stride + t.row_head(m) as u64 * p.q_head_stride + (c * 8) as u64;
            unsafe { ld_global_nc_v4((p.q as *const u16).add(off as usize)) }
        } else {
            V4::ZERO
        };
        unsafe { st_shared_v4(smem + sw128(m, c, ROWS) as u32, v) };
        u += THREADS;
    }

    // Warp w's rows are 16 w .. 16 w + 16 of the block (its warpgroup's 64, in order).
    let lanes = unsafe { LaneRows::<M>::new(p, &t, 16 * warp + r0) };
    let s_exp = lanes.modifier.exp_factor();
    let mut rows = RowState::new();
    let mut o = [[0.0f32; 4]; NT];
    // This warpgroup's 64 rows of Q: k-step kk is 32 bytes into slab kk / 4.
    let q_rows = smem + (wg * 64 * 128) as u32;

    for i in 0..n_tiles {
        // Invariant: tile i is in shared memory and visible to the async proxy for every
        // thread after the barrier; every warpgroup is done with tile i - 1.
        cp_async_wait_pending(STAGES - 2);
        fence_proxy_async_shared_cta();
        bar_sync();
        if i + STAGES - 1 < n_tiles {
            issue(t_first + i + STAGES - 1, (i + STAGES - 1) % STAGES);
        }
        cp_async_commit_group();
        let stage = i % STAGES;
        let key0 = (t_first + i) * BN;

        // S = Q K^T (the first k-step overwrites S).
        let mut s = [[0.0f32; 4]; NB];
        pin_f32(&mut s);
        wgmma_fence();
        for kk in 0..KS {
            let in_slab = ((kk % 4) * 32) as u32;
            let a = sw128_desc(q_rows + ((kk / 4) * ROWS * 128) as u32 + in_slab, 16, 1024);
            let b = sw128_desc(k_tile(stage) + ((kk / 4) * BN * 128) as u32 + in_slab, 16, 1024);
            unsafe { E::ss::<NB>(&mut s, a, b, (kk > 0) as u32) };
        }
        wgmma_commit_group();
        wgmma_wait_group_0(&mut s);

        lanes.modify_and_mask(&mut s, &t, key0, BN, col);
        let corr = rows.update(&mut s, s_exp);
        rescale(&mut o, corr);

        // O += P V, 16 keys a step: V's rows 16 kc .. 16 kc + 16, all D columns (slabs
        // BN x 128 bytes apart).
        // P's A fragments first, so that the products issue back to back after one fence.
        let mut pa = [[0u32; 4]; KC];
        for kc in 0..KC {
            pa[kc] = p_fragment::<E, NB>(&s, kc);
        }
        pin_u32(&mut pa);
        pin_f32(&mut o);
        wgmma_fence();
        for kc in 0..KC {
            let b = sw128_desc(v_tile(stage) + (kc * 16 * 128) as u32, (BN * 128) as u32, 1024);
            unsafe { E::rs::<NT>(&mut o, pa[kc], b) };
        }
        wgmma_commit_group();
        wgmma_wait_group_0(&mut o);
    }
    cp_async_wait_group::<0>();

    unsafe { store_rows::<E, NT>(p, &t, &rows, &o, 16 * warp + r0, lane) };
}

macro_rules! flash_prefill_sm90_kernels {
    ($($name:ident: $elem:ty, $d:literal, $modifier:ty;)*) => {$(
        const _: () = assert!(crate::params::registered_head_dim($d), "head dim missing from params::HEAD_DIMS");
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: PrefillParams) {
            unsafe {
                flash_prefill_sm90::<
                    $elem, $modifier, $d, { $d / 8 }, { $d / 16 },
                    { prefill_sm90_keys($d) as usize }, { prefill_sm90_keys($d) as usize / 8 }, { prefill_sm90_keys($d) as usize / 16 },
                    { prefill_sm90_stages($d) as usize },
                >(&p)
            }
        }
    )*};
}

// The instantiation table (dtype x head dim x score modifier, `params::PREFILL_SM90_HEAD_DIMS`
// and `PREFILL_MODIFIERS`), named by the host's `cuda_paged::prefill_kernel`. The `_sm90`
// in the name keeps them out of every module but sm_90a (build.rs).
flash_prefill_sm90_kernels! {
    flash_prefill_sm90_bf16_d64: Bf16, 64, Plain;
    flash_prefill_sm90_bf16_d128: Bf16, 128, Plain;
    flash_prefill_sm90_bf16_d256: Bf16, 256, Plain;
    flash_prefill_sm90_f16_d64: F16, 64, Plain;
    flash_prefill_sm90_f16_d128: F16, 128, Plain;
    flash_prefill_sm90_f16_d256: F16, 256, Plain;
    flash_prefill_sm90_bf16_d64_softcap: Bf16, 64, SoftCap;
    flash_prefill_sm90_bf16_d128_softcap: Bf16, 128, SoftCap;
    flash_prefill_sm90_bf16_d256_softcap: Bf16, 256, SoftCap;
    flash_prefill_sm90_f16_d64_softcap: F16, 64, SoftCap;
    flash_prefill_sm90_f16_d128_softcap: F16, 128, SoftCap;
    flash_prefill_sm90_f16_d256_softcap: F16, 256, SoftCap;
    flash_prefill_sm90_bf16_d64_alibi: Bf16, 64, Alibi;
    flash_prefill_sm90_bf16_d128_alibi: Bf16, 128, Alibi;
    flash_prefill_sm90_bf16_d256_alibi: Bf16, 256, Alibi;
    flash_prefill_sm90_f16_d64_alibi: F16, 64, Alibi;
    flash_prefill_sm90_f16_d128_alibi: F16, 128, Alibi;
    flash_prefill_sm90_f16_d256_alibi: F16, 256, Alibi;
    flash_prefill_sm90_bf16_d64_softcap_alibi: Bf16, 64, SoftCapAlibi;
    flash_prefill_sm90_bf16_d128_softcap_alibi: Bf16, 128, SoftCapAlibi;
    flash_prefill_sm90_bf16_d256_softcap_alibi: Bf16, 256, SoftCapAlibi;
    flash_prefill_sm90_f16_d64_softcap_alibi: F16, 64, SoftCapAlibi;
    flash_prefill_sm90_f16_d128_softcap_alibi: F16, 128, SoftCapAlibi;
    flash_prefill_sm90_f16_d256_softcap_alibi: F16, 256, SoftCapAlibi;
}
