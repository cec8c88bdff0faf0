//! CPU backend (rayon). Placeholder: being written.
use super::{BackendCaps, BackendName};
use crate::dtype::{DType, KvCacheDType};

pub static CAPS: BackendCaps = BackendCaps {
    name: BackendName::Cpu,
    min_compute_capability: None,
    cpu: true,
    dtypes: &[DType::F16, DType::Bf16, DType::F32],
    kv_cache_dtypes: &[KvCacheDType::Auto],
    head_dims: &[],
    mha: true,
    mla: true,
    sliding_window: true,
    softcap: true,
    alibi: true,
    block_sizes: (1, 1024),
};
