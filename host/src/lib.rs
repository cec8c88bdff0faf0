//! Host side of attn-backends: the metadata builder, the backend selector, the backends
//! (CPU on rayon; CUDA through the Rust-compiled PTX kernels and cudarc), and the f64 oracle.
//!
//! Plan, then run: [`metadata::MetadataBuilder`] turns a scheduler's step into validated
//! maps once; [`step::Step::prepare`] plans the step and uploads the maps once into the
//! step's persistent buffers; [`layer::Attention`] runs the selected backend over them for
//! every layer, launches only (capturable in a CUDA graph on the GPU).

#![warn(missing_docs)]

pub mod attention_impl;
pub mod backend;
pub mod backend_name;
pub mod caps;
pub mod cuda;
pub mod culib;
pub mod cuda_cache;
pub mod cuda_plumbing;
pub mod dcp;
pub mod dtype;
pub mod error;
pub mod fp8;
pub mod kv_cache;
pub mod layer;
pub mod metadata;
pub mod model;
pub mod oracle;
pub mod plan;
pub mod platform;
pub mod selector;
pub mod spec;
pub mod step;
pub mod text;
pub mod workload;

// Kernel parameter blocks shared with the device crate (the same source file; its own
// module docs say what it holds).
#[path = "../../device-kernels/src/params.rs"]
pub mod params;

// The kernel table (the same source file build.rs and the device crate read): every kernel
// instantiation, by typed `registry::KernelId`.
#[path = "../../device-kernels/src/registry.rs"]
pub mod registry;

pub use backend::{AttentionImpl, BackendName, DeviceTensors};
pub use platform::{ArchFeatures, DeviceProps, Platform};
pub use registry::KernelId;
pub use step::{PlanOptions, Step, StepLimits, StepPlan};
pub use dtype::{DType, Element, KvCacheDType};
pub use error::{AttnError, Result};
pub use fp8::KvScales;
pub use kv_cache::{HostKvCache, KvCacheLayout};
pub use metadata::{AttentionMetadata, MetadataBuilder, RequestSchedule, SchedulerOutput};
pub use spec::{AttnSpec, MlaSpec};
// The crates of the public API's types, so that a user's code names the same versions:
// `attn_backends::half::bf16`, `attn_backends::cudarc::driver::CudaSlice`, `attn_backends::float8`.
pub use cudarc;
pub use float8;
pub use half;
