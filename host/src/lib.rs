//! Host side of attn-backends: the metadata builder, the backend selector, the backends
//! (CPU on rayon; CUDA through the Rust-compiled PTX kernels and cudarc), and the f64 oracle.
//!
//! Plan, then run: [`metadata::MetadataBuilder`] turns a scheduler's step into validated
//! maps once; [`layer::Attention`] runs the selected backend over them for every layer.

pub mod backend;
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod kv_cache;
pub mod layer;
pub mod metadata;
pub mod model;
pub mod oracle;
pub mod selector;
pub mod spec;
pub mod workload;

/// Kernel parameter blocks shared with the device crate (the same source file).
#[path = "../../device-kernels/src/params.rs"]
pub mod params;

pub use backend::{AttentionImpl, BackendName, Platform};
pub use dtype::{DType, Element, KvCacheDType};
pub use error::{AttnError, Result};
pub use kv_cache::{HostKvCache, KvCacheLayout};
pub use metadata::{AttentionMetadata, MetadataBuilder, RequestSchedule, SchedulerOutput};
pub use spec::{AttnSpec, MlaSpec};
