//! `reshape_and_cache`: copy this step's K and V rows into the paged cache.
//!
//! - key, value: `[num_tokens, num_kv_heads, head_dim]`, 16-bit elements (f16 or bf16: the
//!   copy is bitwise, so one kernel serves both).
//! - key_cache, value_cache: `[num_blocks, block_size, num_kv_heads, head_dim]`.
//! - slot_mapping: `i64 [num_tokens]`, slot = block * block_size + offset; negative = padding.
//! Grid: one block per token; 128 threads, each moving 16-byte vectors of one (head, 8-dim
//! slice) for K and for V. The host guarantees: every non-negative slot is below
//! `num_blocks * block_size`, head_dim is a multiple of 8 and all rows are 16-byte aligned.

use crate::elem::Elem;
use crate::intrinsics::{block_dim_x, div_nz, block_idx_x, ld_global_nc_v4, shfl_sync_bfly_f32, st_global_v2, st_global_v4, thread_idx_x};
use crate::kv::e4m3_from_f32;
use crate::params::{
    CacheWriteParams, MlaCacheWriteParams, MLA_FP8_ROPE_AT, MLA_FP8_ROW_BYTES, MLA_FP8_SCALES_AT, MLA_FP8_TILE, MLA_LATENT_DIM, MLA_RANK, MLA_ROPE,
};

/// One entry point (the kernel table's row, `registry::KERNELS`; build.rs writes the calls):
/// `cache_write_instance!(name, Q, KV, D, SCORE, STAGES)`; the 16-bit copy is bitwise (Q is `B16`).
macro_rules! cache_write_instance {
    ($name:ident, $q:ident, Native, $d:literal, $score:ident, $stages:literal) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: $crate::params::CacheWriteParams) {
            unsafe { $crate::cache_write::reshape_and_cache(&p) }
        }
    };
    ($name:ident, $q:ident, E4m3, $d:literal, $score:ident, $stages:literal) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: $crate::params::CacheWriteParams) {
            unsafe { $crate::cache_write::reshape_and_cache_e4m3::<$crate::elem::$q>(&p) }
        }
    };
}
pub(crate) use cache_write_instance;

/// Calls `f(head, src, dst)` for each (kv head, 8-element slice) this thread moves of the
/// block's token: `src` its offset in `key`/`value`, `dst` in the caches (in elements).
/// Nothing for a token past the step or a padding slot.
#[inline(always)]
unsafe fn for_each_slice(p: &CacheWriteParams, mut f: impl FnMut(usize, usize, usize)) {
    let token = block_idx_x();
    if token >= p.num_tokens {
        return;
    }
    let slot = unsafe { *(p.slot_mapping as *const i64).add(token as usize) };
    if slot < 0 {
        return;
    }
    let slot = slot as u64;
    let block = div_nz(slot as usize, p.block_size as usize) as u64;
    let offset = slot - block * p.block_size as u64;
    let vecs_per_head = (p.head_dim / 8) as usize;
    let total = p.num_kv_heads as usize * vecs_per_head;
    let mut i = thread_idx_x() as usize;
    while i < total {
        let head = div_nz(i, vecs_per_head);
        let d = ((i - head * vecs_per_head) * 8) as u64;
        let src = token as u64 * p.src_token_stride + head as u64 * p.src_head_stride + d;
        let dst = block * p.cache_block_stride + offset * p.cache_token_stride + head as u64 * p.cache_head_stride + d;
        f(head, src as usize, dst as usize);
        i += block_dim_x() as usize;
    }
}

/// The 16-bit cache write (see the module's header).
pub(crate) unsafe fn reshape_and_cache(p: &CacheWriteParams) {
    unsafe {
        for_each_slice(p, |_, src, dst| {
            let k = ld_global_nc_v4((p.key as *const u16).add(src));
            let v = ld_global_nc_v4((p.value as *const u16).add(src));
            st_global_v4((p.key_cache as *mut u16).add(dst) as *mut u32, k);
            st_global_v4((p.value_cache as *mut u16).add(dst) as *mut u32, v);
        })
    }
}

/// The fp8 cache write: as `reshape_and_cache`, each element quantized on the way,
/// `e4m3(x / scale)` with its kv head's scale (`k_scale`, `v_scale`: `f32 [num_kv_heads]`),
/// rounded to nearest even and saturated at +-448 (`kv::e4m3_from_f32`, bit for bit the
/// host's quantizer). 16 bytes (8 values of `E`) in, 8 bytes out per thread and step; the
/// cache strides count bytes (one an element).
pub(crate) unsafe fn reshape_and_cache_e4m3<E: Elem>(p: &CacheWriteParams) {
    unsafe {
        for_each_slice(p, |head, src, dst| {
            // One row slice of K or V: 8 values in, their 8 e4m3 bytes out.
            let quantize = |x: u64, cache: u64, scale: u64| {
                let scale = *(scale as *const f32).add(head);
                let v = E::unpack8(ld_global_nc_v4((x as *const u16).add(src)));
                let (mut lo, mut hi) = (0u32, 0u32);
                for j in 0..4 {
                    lo |= (e4m3_from_f32(v[j] / scale) as u32) << (8 * j);
                    hi |= (e4m3_from_f32(v[4 + j] / scale) as u32) << (8 * j);
                }
                st_global_v2((cache as *mut u8).add(dst) as *mut u32, lo, hi);
            };
            quantize(p.key, p.key_cache, p.k_scale);
            quantize(p.value, p.value_cache, p.v_scale);
        })
    }
}

/// MLA's cache write: token `t`'s latent row is `kv_c[t]` (`MLA_RANK` dims) then `k_pe[t]`
/// (`MLA_ROPE` dims), stored at its slot of the latent cache `[num_blocks, block_size,
/// MLA_LATENT_DIM]`. Grid: one block per token; each thread moves 16-byte chunks of the row.
/// The host guarantees what `reshape_and_cache_b16` needs, for one head of `MLA_LATENT_DIM`.
/// `mla_cache_write_instance!(name, Q, KV, ..)`: the 16-bit copy is bitwise (Q is `B16`); the
/// fp8 row is [`mla_cache_write_e4m3`]'s.
macro_rules! mla_cache_write_instance {
    ($name:ident, $q:ident, Native, $d:literal, $score:ident, $stages:literal) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: $crate::params::MlaCacheWriteParams) {
            unsafe { $crate::cache_write::mla_cache_write(&p) }
        }
    };
    ($name:ident, $q:ident, E4m3, $d:literal, $score:ident, $stages:literal) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: $crate::params::MlaCacheWriteParams) {
            unsafe { $crate::cache_write::mla_cache_write_e4m3::<$crate::elem::$q>(&p) }
        }
    };
}
pub(crate) use mla_cache_write_instance;

/// The slot of this block's token, as (block, offset in the block); `None` past the step or
/// for a padding slot.
#[inline(always)]
unsafe fn mla_slot(p: &MlaCacheWriteParams) -> Option<(u64, u64)> {
    let token = block_idx_x();
    if token >= p.num_tokens {
        return None;
    }
    let slot = unsafe { *(p.slot_mapping as *const i64).add(token as usize) };
    if slot < 0 {
        return None;
    }
    let block = div_nz(slot as usize, p.block_size as usize) as u64;
    Some((block, slot as u64 - block * p.block_size as u64))
}

/// The fp8 latent row (FlashMLA's DeepSeek-V3.2 format, `params::MLA_FP8_ROW_BYTES` = 656
/// bytes): the `MLA_RANK` latent values as e4m3 bytes, each tile of `MLA_FP8_TILE` = 128 of
/// them scaled by its own `scale = max(amax / 448, f32::MIN_POSITIVE)` (`amax` the tile's
/// largest magnitude; NaNs ignored) and stored `e4m3(x / scale)` (`kv::e4m3_from_f32`);
/// then the 4 scales as f32; then the `MLA_ROPE` rotary dims as they came (16-bit). Bit
/// for bit what the host's `attn_host::fp8::quantize_latent_row` writes.
///
/// Threads `0..64` hold 8 latent values each (a half-warp a tile: its maximum by four
/// butterfly steps inside the half); threads `64..72` copy the rotary dims, 16 bytes each.
pub(crate) unsafe fn mla_cache_write_e4m3<E: Elem>(p: &MlaCacheWriteParams) {
    let Some((block, offset)) = (unsafe { mla_slot(p) }) else { return };
    let token = block_idx_x() as usize;
    let row = (p.cache as *mut u8).wrapping_add((block * p.cache_block_stride + offset * MLA_FP8_ROW_BYTES as u64) as usize);
    let t = thread_idx_x() as usize;
    const LATENT_THREADS: usize = (MLA_RANK / 8) as usize;
    const ROPE_THREADS: usize = (MLA_ROPE / 8) as usize;
    if t < LATENT_THREADS {
        let v = E::unpack8(unsafe { ld_global_nc_v4((p.kv_c as *const u16).add(token * p.kv_c_token_stride as usize + 8 * t)) });
        let mut amax = 0.0f32;
        for x in v {
            amax = amax.max(f32::from_bits(x.to_bits() & 0x7FFF_FFFF));
        }
        // The tile's 16 threads are lanes 0-15 or 16-31 of one warp: XOR masks below 16 stay
        // inside the half.
        for m in [8, 4, 2, 1] {
            amax = amax.max(shfl_sync_bfly_f32(amax, m));
        }
        let scale = (amax / 448.0).max(f32::MIN_POSITIVE);
        let tile_threads = (MLA_FP8_TILE / 8) as usize;
        if t % tile_threads == 0 {
            unsafe { *(row.add(MLA_FP8_SCALES_AT as usize) as *mut f32).add(t / tile_threads) = scale };
        }
        let (mut lo, mut hi) = (0u32, 0u32);
        for j in 0..4 {
            lo |= (e4m3_from_f32(v[j] / scale) as u32) << (8 * j);
            hi |= (e4m3_from_f32(v[4 + j] / scale) as u32) << (8 * j);
        }
        unsafe { st_global_v2(row.add(8 * t) as *mut u32, lo, hi) };
    } else if t < LATENT_THREADS + ROPE_THREADS {
        let c = t - LATENT_THREADS;
        unsafe {
            let v = ld_global_nc_v4((p.k_pe as *const u16).add(token * p.k_pe_token_stride as usize + 8 * c));
            st_global_v4(row.add(MLA_FP8_ROPE_AT as usize + 16 * c) as *mut u32, v);
        }
    }
}

/// The MLA cache write (see above).
pub(crate) unsafe fn mla_cache_write(p: &MlaCacheWriteParams) {
    let Some((block, offset)) = (unsafe { mla_slot(p) }) else { return };
    let token = block_idx_x();
    let dst_row = block * p.cache_block_stride + offset * MLA_LATENT_DIM as u64;
    let (rank_chunks, chunks) = ((MLA_RANK / 8) as usize, (MLA_LATENT_DIM / 8) as usize);
    let mut c = thread_idx_x() as usize;
    while c < chunks {
        let src = if c < rank_chunks {
            (p.kv_c as *const u16).wrapping_add(token as usize * p.kv_c_token_stride as usize + 8 * c)
        } else {
            (p.k_pe as *const u16).wrapping_add(token as usize * p.k_pe_token_stride as usize + 8 * (c - rank_chunks))
        };
        unsafe {
            let v = ld_global_nc_v4(src);
            st_global_v4((p.cache as *mut u16).add(dst_row as usize + 8 * c) as *mut u32, v);
        }
        c += block_dim_x() as usize;
    }
}
