//! The backends' names: what `ATTN_BACKEND` accepts, what a plan and a step record. A leaf
//! module (it imports nothing of the crate), so that the plan and the step can name a backend
//! without importing the backends; `crate::backend` holds what each name stands for
//! (capabilities, planner, impl).

use std::fmt;

/// The backends, by the names `ATTN_BACKEND` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendName {
    /// The Rust PTX paged-attention kernels (cache write, paged decode, split-KV + merge).
    CudaPaged,
    /// The Rust PTX MLA kernels (latent cache write, MLA decode with split-KV + merge).
    CudaMla,
    /// `CudaPaged` with the portable (`mma.sync`) prefill kernel on every device, Hopper
    /// included (to compare it with the wgmma one).
    CudaPagedPortable,
    /// `CudaMla` with the portable (`mma.sync`) MLA decode on every device, Hopper included
    /// (to compare it with the wgmma one).
    CudaMlaPortable,
    /// The rayon CPU backend.
    Cpu,
}

impl BackendName {
    /// Every backend, in no particular order.
    pub const ALL: [BackendName; 5] = [BackendName::CudaPaged, BackendName::CudaMla, BackendName::CudaPagedPortable, BackendName::CudaMlaPortable, BackendName::Cpu];

    /// The name `ATTN_BACKEND` takes (`CUDA_PAGED`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            BackendName::CudaPaged => "CUDA_PAGED",
            BackendName::CudaMla => "CUDA_MLA",
            BackendName::CudaPagedPortable => "CUDA_PAGED_PORTABLE",
            BackendName::CudaMlaPortable => "CUDA_MLA_PORTABLE",
            BackendName::Cpu => "CPU",
        }
    }

    /// Case-insensitive; `None` for an unknown name.
    pub fn parse(s: &str) -> Option<BackendName> {
        BackendName::ALL.into_iter().find(|b| b.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
