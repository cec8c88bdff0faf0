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
use crate::dtype::{DType, Element, KvCacheDType};
use crate::error::{AttnError, Result};
use crate::fp8::KvScales;
use crate::kv_cache::{HostKvCache, KvCacheLayout};
use crate::metadata::AttentionMetadata;
use crate::platform::DeviceProps;
use crate::selector::Requirements;
use crate::spec::AttnSpec;
use crate::step::{LayerShape, PlanOptions, Step, StepLimits, StepPlan};
use cudarc::driver::CudaSlice;
use std::fmt;
use std::sync::Arc;

pub use crate::platform::Platform;

pub mod cpu;
pub mod cuda_cache;
pub mod cuda_mla;
pub mod cuda_paged;

/// Every kernel entry point the PTX module of architecture `arch` must hold: the kernel
/// table's `Portable` kernels, and in an sm_90a module its `Sm90a` ones too.
pub fn kernel_registry(arch: &str) -> Vec<String> {
    let sm90a = arch == "sm_90a";
    let mut names = Vec::new();
    crate::registry::for_each_kernel(|k| {
        if k.module == crate::registry::Module::Portable || sm90a {
            names.push(k.id.name());
        }
    });
    names
}

/// The kernel table's KV element for a cache dtype.
pub(crate) const fn kv_type(kv: KvCacheDType) -> crate::registry::KvType {
    match kv {
        KvCacheDType::Auto => crate::registry::KvType::Native,
        KvCacheDType::Fp8E4m3 => crate::registry::KvType::Fp8E4m3,
    }
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
    /// The rayon CPU backend.
    Cpu,
}

impl BackendName {
    pub const ALL: [BackendName; 4] = [BackendName::CudaPaged, BackendName::CudaMla, BackendName::CudaPagedPortable, BackendName::Cpu];

    pub const fn as_str(self) -> &'static str {
        match self {
            BackendName::CudaPaged => "CUDA_PAGED",
            BackendName::CudaMla => "CUDA_MLA",
            BackendName::CudaPagedPortable => "CUDA_PAGED_PORTABLE",
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
            BackendName::CudaMla => &cuda_mla::CAPS,
            BackendName::CudaPagedPortable => &cuda_paged::PORTABLE_CAPS,
            BackendName::Cpu => &cpu::CAPS,
        }
    }

    /// The backend's plan of a step (a pure function; `props` is the device's, `None` on
    /// the CPU).
    pub fn plan(self, meta: &AttentionMetadata, shape: &LayerShape, dtype: DType, props: Option<&DeviceProps>, limits: &StepLimits, opts: &PlanOptions) -> Result<StepPlan> {
        if let (Some(s), false) = (opts.pipeline_stages, self == BackendName::CudaMla) {
            return Err(AttnError::InvalidConfig(format!("pipeline_stages {s}: only CUDA_MLA's kernel comes in several pipeline depths, not {self}'s")));
        }
        match self {
            BackendName::Cpu => cpu::plan(meta, opts),
            BackendName::CudaPaged | BackendName::CudaPagedPortable => {
                let props = props.ok_or_else(|| AttnError::NoCuda(format!("planning {self} needs the device's properties")))?;
                cuda_paged::plan(meta, shape, dtype, props, limits, opts, self)
            }
            BackendName::CudaMla => {
                let props = props.ok_or_else(|| AttnError::NoCuda("planning CUDA_MLA needs the device's properties".into()))?;
                cuda_mla::plan(meta, shape, dtype, props, limits, opts)
            }
        }
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
            BackendName::CudaMla => {
                let rt = gpu.ok_or_else(|| AttnError::NoCuda(format!("backend {self} needs a CUDA device")))?;
                Box::new(cuda_mla::CudaMlaImpl::<T>::new(rt, spec.clone(), layout)?)
            }
        })
    }
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend's row in the selector's table: everything it can and cannot serve. The one
/// place a backend's limits live: the selector ([`crate::selector::check`]) and the
/// constructors ([`BackendCaps::check_layer`]) both read it.
#[derive(Clone, Debug)]
pub struct BackendCaps {
    pub name: BackendName,
    /// `None`: runs on any platform (the CPU backend). `Some(cc)`: CUDA, compute capability >= cc.
    pub min_compute_capability: Option<u32>,
    pub cpu: bool,
    pub dtypes: &'static [DType],
    pub kv_cache_dtypes: &'static [KvCacheDType],
    /// Head dims of MHA/GQA models; empty means any.
    pub head_dims: &'static [u32],
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
    /// Which kernel serves which rows of a step, and why (shown by `attn select`).
    pub kernels: &'static str,
    /// What changes on compute capability 9.0 (Hopper kernels of the sm_90a module), if
    /// anything (shown by `attn select` for such a platform).
    pub on_sm90: Option<&'static str>,
}

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
            Some(m) if !matches!(self.name, BackendName::CudaMla | BackendName::Cpu) => {
                return Err(AttnError::Unsupported {
                    backend: self.name.as_str(),
                    reason: format!(
                        "the layer is MLA (kv_lora_rank {}, rope dim {}, latent cache of one head of {} dims): the multi-head Attention layer \
                         would compute it as MHA over {} KV heads of {} dims, which is not what the model caches. MLA layers run on CUDA_MLA or CPU",
                        m.kv_lora_rank, m.qk_rope_head_dim, m.latent_dim(), spec.num_kv_heads, spec.head_dim
                    ),
                });
            }
            Some(_) if self.name == BackendName::CudaMla => {
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

/// An MLA layer's cache: one kv head whose rows are the latent `[kv_c | k_pe]`.
pub(crate) fn check_latent_layout(m: &crate::spec::MlaSpec, layout: &KvCacheLayout) -> Result<()> {
    if layout.num_kv_heads != 1 || layout.head_dim != m.latent_dim() {
        return Err(AttnError::InvalidConfig(format!(
            "the latent cache is one kv head of {} dims (kv_lora_rank + rope); this layout has {} kv heads of {}",
            m.latent_dim(),
            layout.num_kv_heads,
            layout.head_dim
        )));
    }
    Ok(())
}

/// A layer's tensors on the device: q, out `[num_tokens, num_q_heads, head_dim]`, k, v
/// `[num_tokens, num_kv_heads, head_dim]` (at least that many rows: buffers sized for the
/// largest step serve smaller ones, as CUDA graphs need); optionally `lse`
/// `[num_tokens, num_q_heads]`, each row's log-sum-exp of its scores (natural log; `-inf`
/// for a row that sees no key), as cascade attention and speculative decoding use it.
pub struct DeviceTensors<'a, T> {
    pub q: &'a CudaSlice<T>,
    pub k: &'a CudaSlice<T>,
    pub v: &'a CudaSlice<T>,
    pub out: &'a mut CudaSlice<T>,
    pub lse: Option<&'a mut CudaSlice<f32>>,
}

/// `AttentionImpl`: one layer's forward on one backend. The impl owns the layer's paged KV
/// cache (in the backend's memory). Both runs follow the step's plan: they write this step's
/// k, v into the cache at the slot mapping, then attend q over the cache, causally from
/// each request's context length. Shapes are checked against the layer and the step before
/// anything is written; a device run (`run_device`) allocates nothing and uploads nothing
/// (a host run stages its tensors through the device).
pub trait AttentionImpl<T: Element>: Send {
    fn backend(&self) -> BackendName;

    /// One step on host tensors: q, out `[num_tokens, num_q_heads, head_dim]`, k, v
    /// `[num_tokens, num_kv_heads, head_dim]`. The CPU backend's path; a GPU backend copies
    /// through the device (tests, examples) and synchronizes.
    fn run_host(&mut self, step: &Step, q: &[T], k: &[T], v: &[T], out: &mut [T]) -> Result<()>;

    /// One step on device tensors, launches only: no allocation, no upload, no host
    /// synchronization, so it can be captured in a CUDA graph. Backends that run on the host
    /// return an error.
    fn run_device(&mut self, step: &Step, t: DeviceTensors<'_, T>) -> Result<()> {
        let _ = (step, t);
        Err(AttnError::Unsupported { backend: self.backend().as_str(), reason: "runs on host tensors; use forward_host".into() })
    }

    /// A host copy of the cache (tests, debugging).
    fn cache_snapshot(&self) -> Result<HostKvCache<T>>;

    /// Replaces the whole cache with host contents of the same layout (tests, benchmarks and
    /// the demo start from long cached contexts this way). An fp8 cache quantizes the
    /// values with the layer's current scales.
    fn load_cache(&mut self, cache: &HostKvCache<T>) -> Result<()>;

    /// Sets the scales of the layer's fp8 KV cache (one per kv head for K and V, already
    /// validated by [`crate::layer::Attention::set_kv_scales`]): the next cache writes
    /// quantize with them and attention reads every byte with them. Bytes already in the
    /// cache are kept. The default (a backend or layer without an fp8 cache): an
    /// [`AttnError::Unsupported`].
    fn set_kv_scales(&mut self, scales: &KvScales) -> Result<()> {
        let _ = scales;
        Err(no_fp8_cache(self.backend()))
    }

    /// A host copy of the fp8 cache's bytes as stored, with its scales (tests, debugging).
    /// The default: an [`AttnError::Unsupported`].
    fn fp8_cache_snapshot(&self) -> Result<(HostKvCache<u8>, KvScales)> {
        Err(no_fp8_cache(self.backend()))
    }

    /// Replaces the whole fp8 cache (same geometry) with `cache`'s bytes and its scales with
    /// `scales`. The default: an [`AttnError::Unsupported`].
    fn load_fp8_cache(&mut self, cache: &HostKvCache<u8>, scales: &KvScales) -> Result<()> {
        let _ = (cache, scales);
        Err(no_fp8_cache(self.backend()))
    }
}

/// The error of an fp8-cache call on a layer that has no fp8 KV cache.
pub(crate) fn no_fp8_cache(backend: BackendName) -> AttnError {
    AttnError::Unsupported {
        backend: backend.as_str(),
        reason: "this layer has no fp8 KV cache (kv_dtype auto, or a backend without fp8 caches): KV scales and fp8 cache copies do not apply".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An impl with only the required methods, as a backend without fp8 caches is.
    struct Plain;

    impl AttentionImpl<f32> for Plain {
        fn backend(&self) -> BackendName {
            BackendName::CudaPaged
        }
        fn run_host(&mut self, _: &Step, _: &[f32], _: &[f32], _: &[f32], _: &mut [f32]) -> Result<()> {
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
