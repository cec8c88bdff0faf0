//! attn-backends: the attention layer of LLM inference, in Rust: GPU kernels compiled from
//! Rust to PTX (`device-kernels/`, embedded here), and the host side (`attn_host`,
//! re-exported): metadata builder, selector, backends, CPU oracle and CPU backend.

#![warn(missing_docs)]

pub use attn_host::*;

use std::sync::Arc;

pub mod bench;

/// The PTX modules built from `device-kernels/` by `build.rs`, one per target architecture.
pub mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx_modules.rs"));
}

/// Opens CUDA device `ordinal` with this build's kernels (the module for the newest
/// architecture not above the device's).
pub fn cuda_runtime(ordinal: usize) -> Result<Arc<cuda::CudaRuntime>> {
    cuda::CudaRuntime::new(ordinal, ptx::PTX_MODULES)
}

/// This build's kernels on `stream`, a stream another library made (candle's device stream):
/// launches are then ordered with that library's work.
pub fn cuda_runtime_on_stream(stream: Arc<cudarc::driver::CudaStream>) -> Result<Arc<cuda::CudaRuntime>> {
    cuda::CudaRuntime::on_stream(stream, ptx::PTX_MODULES)
}

/// Device 0 if a CUDA driver and device are present, else `Err` saying why not.
pub fn gpu_if_present() -> Result<Arc<cuda::CudaRuntime>> {
    if !cuda::driver_present() {
        return Err(AttnError::NoCuda("no CUDA driver library (libcuda.so) on this machine".into()));
    }
    cuda_runtime(0)
}
