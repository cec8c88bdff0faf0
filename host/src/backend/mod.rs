//! The roles of an attention backend (after vLLM's v1 attention):
//!
//! | role | here |
//! |------|------|
//! | `Attention` layer | [`crate::layer::Attention`]: what the model calls; backend-agnostic |
//! | `AttentionBackend` | a [`BackendCaps`] row (what it supports) + a module holding the rest |
//! | `AttentionImpl` | [`AttentionImpl`]: the forward that writes the cache and launches kernels |
//! | `AttentionMetadataBuilder` | [`AttentionMetadataBuilder`]: scheduler output -> this backend's metadata |
//!
//! One module per backend: `cpu` (rayon, any platform) and `cuda_paged` (the Rust PTX
//! kernels). Each holds its capabilities, its metadata needs and its launch configuration.

use crate::dtype::{DType, Element, KvCacheDType};
use crate::error::Result;
use crate::kv_cache::HostKvCache;
use crate::metadata::{AttentionMetadata, MetadataBuilder, SchedulerOutput};
use std::fmt;

pub mod cpu;
pub mod cuda_paged;

/// Where attention runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    Cpu,
    /// A CUDA device of this compute capability.
    Cuda { major: u32, minor: u32 },
}

impl Platform {
    /// Compute capability as a number, e.g. 90 for 9.0; `None` on the CPU.
    pub fn compute_capability(&self) -> Option<u32> {
        match self {
            Platform::Cpu => None,
            Platform::Cuda { major, minor } => Some(major * 10 + minor),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Platform::Cpu => f.write_str("CPU"),
            Platform::Cuda { major, minor } => write!(f, "CUDA sm_{major}{minor}"),
        }
    }
}

/// The backends, by the names `ATTN_BACKEND` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendName {
    /// The Rust PTX paged-attention kernels (cache write, paged decode, split-KV + merge).
    CudaPaged,
    /// The rayon CPU backend.
    Cpu,
}

impl BackendName {
    pub const ALL: [BackendName; 2] = [BackendName::CudaPaged, BackendName::Cpu];

    pub const fn as_str(self) -> &'static str {
        match self {
            BackendName::CudaPaged => "CUDA_PAGED",
            BackendName::Cpu => "CPU",
        }
    }

    /// Case-insensitive; `None` for an unknown name.
    pub fn parse(s: &str) -> Option<BackendName> {
        BackendName::ALL.into_iter().find(|b| b.as_str().eq_ignore_ascii_case(s.trim()))
    }

    pub fn caps(self) -> &'static BackendCaps {
        match self {
            BackendName::CudaPaged => &cuda_paged::CAPS,
            BackendName::Cpu => &cpu::CAPS,
        }
    }
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend's row in the selector's table: everything it can and cannot serve.
#[derive(Clone, Debug)]
pub struct BackendCaps {
    pub name: BackendName,
    /// `None`: runs on any platform (the CPU backend). `Some(cc)`: CUDA, compute capability >= cc.
    pub min_compute_capability: Option<u32>,
    pub cpu: bool,
    pub dtypes: &'static [DType],
    pub kv_cache_dtypes: &'static [KvCacheDType],
    /// Head dims of MHA/GQA models; empty means any.
    pub head_dims: &'static [usize],
    pub mha: bool,
    pub mla: bool,
    pub sliding_window: bool,
    pub softcap: bool,
    pub alibi: bool,
    /// Block sizes: powers of two in this inclusive range.
    pub block_sizes: (usize, usize),
    /// Dynamic shared memory a block of the backend's kernel needs for a head dim (the
    /// selector compares it with the architecture's per-block limit); `None` on the CPU.
    pub shared_memory_bytes: Option<fn(usize) -> usize>,
}

/// `AttentionMetadataBuilder`: scheduler output -> this backend's metadata for one step.
/// The common maps come from [`MetadataBuilder`]; a backend adds its own plan.
pub trait AttentionMetadataBuilder {
    type Metadata;
    fn build(&self, step: &SchedulerOutput) -> Result<Self::Metadata>;
}

impl AttentionMetadataBuilder for MetadataBuilder {
    type Metadata = AttentionMetadata;
    fn build(&self, step: &SchedulerOutput) -> Result<AttentionMetadata> {
        MetadataBuilder::build(self, step)
    }
}

/// `AttentionImpl`: one layer's forward on one backend. The impl owns the layer's paged KV
/// cache (in the backend's memory).
pub trait AttentionImpl<T: Element>: Send {
    fn backend(&self) -> BackendName;

    /// One step: write `k`, `v` (`[num_tokens, num_kv_heads, head_dim]`) into the cache at
    /// `meta.slot_mapping()`, then attend `q` (`[num_tokens, num_q_heads, head_dim]`) over
    /// the cache, causally from each request's context length; `out` has q's shape.
    /// Shapes and metadata are checked against the layer before anything is written.
    fn forward(&mut self, q: &[T], k: &[T], v: &[T], meta: &AttentionMetadata, out: &mut [T]) -> Result<()>;

    /// A host copy of the cache (tests, debugging).
    fn cache_snapshot(&self) -> Result<HostKvCache<T>>;

    /// Replaces the whole cache with host contents of the same layout (tests, benchmarks and
    /// the demo start from long cached contexts this way).
    fn load_cache(&mut self, cache: &HostKvCache<T>) -> Result<()>;
}
