//! attn-backends device kernels: `#![no_std]` Rust compiled to PTX by `../build.rs`.
//!
//! One file per kernel family: `cache_write` (reshape_and_cache), `paged_decode` (paged
//! attention on tensor cores, split-KV), `flash_prefill` (FlashAttention-2 tiling over the
//! paged cache, varlen and causal with a start offset), `merge` (flash-decoding's merge),
//! `mla_decode` (DeepSeek's latent attention, absorbed form, split-KV), and for Hopper only
//! (the sm_90a module) `flash_prefill_sm90` (the prefill's products on wgmma).
//! They are composed of shared building blocks: `tile` (swizzled shared-memory tiles and the
//! lanes' `ldmatrix` addressing), `softmax` (the online-softmax row state on mma fragments,
//! its rescale and the P fragment), `gather` (request lookup, paged key addressing),
//! `score_mod` (soft-cap and ALiBi as policy types chosen at compile time).
//! `intrinsics` is the only place with inline PTX; `elem` maps f16/bf16 onto it; `params` is
//! shared with the host crate, which names the entry points
//! (`paged_attention_<dtype>_d<head dim>`, `flash_prefill[_sm90]_<dtype>_d<head dim>[_<modifier>]`,
//! `merge_splits_<dtype>`, `reshape_and_cache_b16`) in `attn_host::backend::cuda_paged`, and
//! `mla_decode_<dtype>[_s3]`, `mla_cache_write_b16` in `attn_host::backend::cuda_mla`.
#![no_std]
#![feature(abi_ptx, asm_experimental_arch, stdarch_nvptx, core_intrinsics)]
#![feature(gpu_intrinsics, gpu_launch_sized_workgroup_mem)]
#![allow(internal_features)]

pub mod intrinsics;
pub mod params;

mod elem;
mod gather;
mod score_mod;
mod softmax;
mod tile;
pub mod cache_write;
pub mod paged_decode;
pub mod merge;
pub mod flash_prefill;
pub mod flash_prefill_sm90;
pub mod mla_decode;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    intrinsics::trap()
}
