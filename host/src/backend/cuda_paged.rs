//! CUDA paged backend. Placeholder: being written.
use super::{BackendCaps, BackendName};
use crate::dtype::{DType, KvCacheDType};

/// Head dims with a compiled kernel (the device crate's instantiation table).
pub const HEAD_DIMS: &[usize] = &[64, 128, 256];

pub static CAPS: BackendCaps = BackendCaps {
    name: BackendName::CudaPaged,
    min_compute_capability: Some(80),
    cpu: false,
    dtypes: &[DType::F16, DType::Bf16],
    kv_cache_dtypes: &[KvCacheDType::Auto],
    head_dims: HEAD_DIMS,
    mha: true,
    mla: false,
    sliding_window: true,
    softcap: true,
    alibi: true,
    block_sizes: (1, 256),
};
