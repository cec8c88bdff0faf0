//! The roles of an attention backend (after vLLM's v1 attention):
//!
//! | role | here |
//! |------|------|
//! | `Attention` layer | [`crate::layer::Attention`]: what the model calls; backend-agnostic |
//! | `AttentionBackend` | [`BackendName`]: its capability row ([`BackendCaps`]), its planner and its impl's constructor |
//! | `AttentionImpl` | [`AttentionImpl`]: the forward that writes the cache and launches kernels |
//! | `AttentionMetadataBuilder` | folded into two callers' steps: [`crate::metadata::MetadataBuilder`] (scheduler output -> the validated maps, once per step) and [`BackendName::plan`] (maps -> this backend's launches), both run before [`crate::step::Step::prepare`] uploads |
//!
//! One module per backend: `cpu` (rayon, any platform), `cuda_paged` (the Rust PTX
//! kernels for MHA/GQA/MQA) and `cuda_mla` (DeepSeek's latent attention). Each holds its capability row, its planner (a pure function of the metadata and
//! the device's properties) and its launch configuration. This module is the one place that
//! maps a backend's name to them.

use crate::cuda::CudaRuntime;
use crate::dtype::{DType, Element};
use crate::error::{AttnError, Result};
use crate::kv_cache::KvCacheLayout;
use crate::metadata::AttentionMetadata;
use crate::platform::DeviceProps;
use crate::selector::Requirements;
use crate::spec::AttnSpec;
use crate::plan::{LayerShape, PlanOptions, StepLimits, StepPlan};

pub use crate::cuda_plumbing::DeviceTensors;
use std::fmt;
use std::sync::Arc;

pub use crate::platform::Platform;

pub mod cpu;
pub mod cuda_mla;
pub mod cuda_paged;

/// Every kernel entry point the PTX module of architecture `arch` must hold: the kernel
/// table's `Portable` kernels, and in an sm_90a module its `Sm90a` ones too.
pub fn kernel_registry(arch: &str) -> Vec<String> {
    let sm90a = crate::platform::ArchFeatures::holds_sm90a_kernels(arch);
    let mut names = Vec::new();
    crate::registry::for_each_kernel(|k| {
        if k.module == crate::registry::Module::Portable || sm90a {
            names.push(k.id.name());
        }
    });
    names
}


impl crate::registry::KernelId {
    /// The table's kernel of entry point `name`, if there is one.
    pub fn by_name(name: &str) -> Option<crate::registry::KernelId> {
        crate::registry::find_by(|k| k.id.name() == name).map(|k| k.id)
    }

    /// The kernel's entry point in the PTX (`paged_attention_bf16_d128`, ...).
    pub fn name(&self) -> String {
        let mut buf = [0u8; 64];
        let n = self.write_name(&mut buf);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl fmt::Display for crate::registry::KernelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

pub use crate::backend_name::BackendName;

/// What each name stands for: its capability row, its planner, its device properties and
/// its impl.
impl BackendName {
    /// The backend's capability row (what it serves, and where).
    pub fn caps(self) -> &'static BackendCaps {
        match self {
            BackendName::CudaPaged => &cuda_paged::CAPS,
            BackendName::CudaMla => &cuda_mla::CAPS,
            BackendName::CudaPagedPortable => &cuda_paged::PORTABLE_CAPS,
            BackendName::CudaMlaPortable => &cuda_mla::PORTABLE_CAPS,
            BackendName::Cpu => &cpu::CAPS,
        }
    }

    /// The backend's plan of a step (a pure function; `props` is the device's, `None` on
    /// the CPU).
    pub fn plan(self, meta: &AttentionMetadata, shape: &LayerShape, dtype: DType, props: Option<&DeviceProps>, limits: &StepLimits, opts: &PlanOptions) -> Result<StepPlan> {
        if let (Some(s), false) = (opts.pipeline_stages, matches!(self, BackendName::CudaMla | BackendName::CudaMlaPortable)) {
            return Err(AttnError::InvalidConfig(format!("pipeline_stages {s}: only CUDA_MLA's kernel comes in several pipeline depths, not {self}'s")));
        }
        match self {
            BackendName::Cpu => cpu::plan(meta, opts),
            BackendName::CudaPaged | BackendName::CudaPagedPortable => {
                let props = props.ok_or_else(|| AttnError::NoCuda(format!("planning {self} needs the device's properties")))?;
                cuda_paged::plan(meta, shape, dtype, props, limits, opts, self)
            }
            BackendName::CudaMla | BackendName::CudaMlaPortable => {
                let props = props.ok_or_else(|| AttnError::NoCuda(format!("planning {self} needs the device's properties")))?;
                cuda_mla::plan(meta, shape, dtype, props, limits, opts, self)
            }
        }
    }

    /// What this (device) backend's planner needs to know of the device for layers of
    /// `dtype` and `shape` over caches of `layout`: SMs, occupancy of its kernel, shared
    /// memory, architecture features.
    pub fn device_props(self, rt: &CudaRuntime, dtype: DType, layout: &KvCacheLayout, shape: &LayerShape) -> Result<DeviceProps> {
        match self {
            BackendName::Cpu => Err(AttnError::InvalidConfig("the CPU backend plans without device properties".into())),
            BackendName::CudaMla | BackendName::CudaMlaPortable => cuda_mla::device_props(rt, dtype, layout, self),
            BackendName::CudaPaged | BackendName::CudaPagedPortable => cuda_paged::device_props(rt, dtype, kv_type(layout.kv_dtype), shape.head_dim),
        }
    }

    /// A (device) step's buffers for this backend: the metadata every CUDA backend uploads
    /// and the split-KV workspace (`crate::cuda_plumbing`), with the backend's own maps
    /// (`cuda_paged::PagedWorkspace`, `cuda_mla::MlaWorkspace`).
    /// `limits` must be validated (`Step::new` does it first).
    pub(crate) fn device_metadata(self, rt: Arc<CudaRuntime>, shape: LayerShape, limits: &StepLimits) -> Result<crate::cuda_plumbing::DeviceMetadata> {
        let stream = rt.stream().clone();
        let rows: Box<dyn crate::cuda_plumbing::DeviceRows> = match self {
            BackendName::Cpu => return Err(AttnError::InvalidConfig("the CPU backend has no device buffers".into())),
            BackendName::CudaPaged | BackendName::CudaPagedPortable => Box::new(cuda_paged::PagedWorkspace::new(&stream, limits)?),
            BackendName::CudaMla | BackendName::CudaMlaPortable => Box::new(cuda_mla::MlaWorkspace::new(&stream, limits)?),
        };
        crate::cuda_plumbing::DeviceMetadata::new(rt, shape, limits, rows)
    }

    /// A layer's impl on this backend, with its cache of `layout` in the backend's memory,
    /// after the capability row accepted the layer.
    pub fn make_impl<T: Element>(self, spec: &AttnSpec, layout: KvCacheLayout, gpu: Option<Arc<CudaRuntime>>) -> Result<Box<dyn AttentionImpl<T>>> {
        let platform = gpu.as_ref().map_or(Platform::Cpu, |rt| rt.platform());
        self.caps().check_layer(platform, T::DTYPE, spec, &layout)?;
        Ok(match self {
            BackendName::Cpu => Box::new(cpu::CpuImpl::<T>::new(spec.clone(), layout)?),
            BackendName::CudaPaged | BackendName::CudaPagedPortable => {
                let rt = gpu.ok_or_else(|| AttnError::NoCuda(format!("backend {self} needs a CUDA device")))?;
                Box::new(cuda_paged::CudaPagedImpl::<T>::with_backend(rt, spec.clone(), layout, self)?)
            }
            BackendName::CudaMla | BackendName::CudaMlaPortable => {
                let rt = gpu.ok_or_else(|| AttnError::NoCuda(format!("backend {self} needs a CUDA device")))?;
                Box::new(cuda_mla::CudaMlaImpl::<T>::with_backend(rt, spec.clone(), layout, self)?)
            }
        })
    }
}

pub use crate::attention_impl::AttentionImpl;
pub use crate::caps::BackendCaps;
use crate::caps::check_latent_layout;
use crate::cuda_plumbing::kv_type;

/// The constructors' check of a capability row (the selector checks the same row).
impl BackendCaps {
    /// Whether this backend serves a layer of `spec` in `dtype` over a cache of `layout` on
    /// `platform`: the selector's check of the same row, and the layout against the spec.
    /// An error listing every reason otherwise.
    pub fn check_layer(&self, platform: Platform, dtype: DType, spec: &AttnSpec, layout: &KvCacheLayout) -> Result<()> {
        spec.validate()?;
        layout.validate()?;
        match &spec.mla {
            // An MLA layer runs where the backend's layer computes MLA (CUDA_MLA, the CPU);
            // never as a multi-head layer over the MHA view of its heads.
            Some(m) if !matches!(self.name, BackendName::CudaMla | BackendName::CudaMlaPortable | BackendName::Cpu) => {
                return Err(AttnError::Unsupported {
                    backend: self.name.as_str(),
                    reason: format!(
                        "the layer is MLA (kv_lora_rank {}, rope dim {}, latent cache of one head of {} dims): the multi-head Attention layer \
                         would compute it as MHA over {} KV heads of {} dims, which is not what the model caches. MLA layers run on CUDA_MLA, CUDA_MLA_PORTABLE or CPU",
                        m.kv_lora_rank, m.qk_rope_head_dim, m.latent_dim(), spec.num_kv_heads, spec.head_dim
                    ),
                });
            }
            Some(_) if matches!(self.name, BackendName::CudaMla | BackendName::CudaMlaPortable) => {
                cuda_mla::check_mla(spec, layout)?;
            }
            Some(m) => check_latent_layout(m, layout)?,
            None => {
                if layout.num_kv_heads != spec.num_kv_heads || layout.head_dim != spec.head_dim {
                    return Err(AttnError::InvalidConfig(format!(
                        "cache layout ({} kv heads, head dim {}) disagrees with the layer ({} kv heads, head dim {})",
                        layout.num_kv_heads, layout.head_dim, spec.num_kv_heads, spec.head_dim
                    )));
                }
            }
        }
        let why = crate::selector::check(self, platform, &Requirements::for_layer(spec, dtype, layout));
        if why.is_empty() {
            return Ok(());
        }
        Err(AttnError::Unsupported { backend: self.name.as_str(), reason: why.join("; ") })
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::KvCacheDType;
    use crate::fp8::KvScales;
    use crate::kv_cache::HostKvCache;
    use crate::step::Step;

    /// An impl with only the required methods, as a backend without fp8 caches is.
    struct Plain;

    impl AttentionImpl<f32> for Plain {
        fn backend(&self) -> BackendName {
            BackendName::CudaPaged
        }
        fn run_host(&mut self, _: &Step, _: &[f32], _: &[f32], _: &[f32], _: &mut [f32], _: Option<&mut [f32]>) -> Result<()> {
            Ok(())
        }
        fn cache_snapshot(&self) -> Result<HostKvCache<f32>> {
            Err(AttnError::InvalidConfig("unused".into()))
        }
        fn load_cache(&mut self, _: &HostKvCache<f32>) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn fp8_methods_default_to_unsupported() {
        let mut p = Plain;
        let layout = KvCacheLayout::new(1, 1, 1, 1).unwrap().with_kv_dtype(KvCacheDType::Fp8E4m3);
        let errors = [p.set_kv_scales(&KvScales::ones(1)).unwrap_err(), p.fp8_cache_snapshot().unwrap_err(), p.load_fp8_cache(&HostKvCache::zeros_fp8(layout), &KvScales::ones(1)).unwrap_err()];
        for e in errors {
            assert!(matches!(e, AttnError::Unsupported { backend: "CUDA_PAGED", .. }) && e.to_string().contains("no fp8 KV cache"), "{e}");
        }
    }
}
