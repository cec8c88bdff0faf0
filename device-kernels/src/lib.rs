//! attn-backends device kernels: `#![no_std]` Rust compiled to PTX by `../build.rs`.
//!
//! One file per kernel family: `cache_write` (reshape_and_cache), `paged_decode` (paged
//! attention on tensor cores, split-KV), `flash_prefill` (FlashAttention-2 tiling over the
//! paged cache, varlen and causal with a start offset), `merge` (flash-decoding's merge),
//! `mla_decode` (DeepSeek's latent attention, absorbed form, split-KV), and for Hopper only
//! (the sm_90a module) `flash_prefill_sm90` (the prefill's products on wgmma) and
//! `mla_decode_sm90` (MLA's on wgmma, K tiles by TMA).
//! They are composed of shared building blocks: `tile` (swizzled shared-memory tiles and the
//! lanes' `ldmatrix` addressing), `softmax` (the online-softmax row state on mma fragments,
//! its rescale and the P fragment), `gather` (request lookup, paged key addressing),
//! `score_mod` (soft-cap and ALiBi as policy types chosen at compile time).
//! `intrinsics` is the only place with inline PTX; `elem` maps f16/bf16 onto it; `params` is
//! shared with the host crate; `registry.rs` (the kernel table, read by build.rs and the host,
//! not compiled here) lists every instantiation, and build.rs turns it into the entry points
//! included at the end of this file.
#![no_std]
#![feature(abi_ptx, asm_experimental_arch, stdarch_nvptx, core_intrinsics)]
#![feature(gpu_intrinsics, gpu_launch_sized_workgroup_mem)]
#![allow(internal_features)]

pub mod intrinsics;
pub mod params;

mod elem;
mod gather;
mod kv;
mod score_mod;
mod softmax;
mod tile;
pub mod cache_write;
pub mod paged_decode;
pub mod merge;
pub mod flash_prefill;
pub mod flash_prefill_sm90;
pub mod mla_decode;
pub mod mla_decode_sm90;

// The entry points: one per kernel of the table (`registry.rs`), written by build.rs as calls
// of each family's `*_instance!` macro.
include!(env!("ATTN_KERNEL_TABLE"));

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    intrinsics::trap()
}
