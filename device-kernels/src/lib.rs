//! attn-backends device kernels: `#![no_std]` Rust compiled to PTX by `../build.rs`.
//!
//! One file per kernel family; `intrinsics` is the only place with inline PTX;
//! `params` is shared with the host crate. Kernel entry points are listed in
//! [`KERNELS`]'s table on the host side (`attn_host::cuda::kernels`).
#![no_std]
#![feature(abi_ptx, asm_experimental_arch, stdarch_nvptx, core_intrinsics)]
#![feature(gpu_intrinsics, gpu_launch_sized_workgroup_mem)]
#![allow(internal_features)]

pub mod intrinsics;
pub mod params;

mod elem;
pub mod cache_write;
pub mod paged_decode;
pub mod merge;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    intrinsics::trap()
}
