//! One step of a model on one backend: the plan, and the step context that every layer of
//! the step runs on.
//!
//! ```text
//! Step::new(backend, dtype, spec, layout, limits, gpu)      once, at start-up
//! per step:   step.prepare(&metadata)                       plan + one asynchronous upload
//!             for each layer: layer.forward_device(&step, q, k, v, out)   launches only
//! ```
//!
//! [`StepPlan`] is a pure function of the metadata, the layer's shape, the device's
//! properties ([`DeviceProps`]) and the step limits: which kernel serves which rows, grids,
//! split counts and workspace bytes. [`Step`] owns what the layers share: the plan, and on
//! a GPU the device copies of the metadata and the split workspace, sized once for
//! [`StepLimits`] so that their addresses never change and a captured CUDA graph stays valid.

use crate::backend::{cuda_mla, cuda_paged, BackendName};
use crate::cuda::CudaRuntime;
use crate::dtype::DType;
use crate::error::{AttnError, Result};
use crate::kv_cache::KvCacheLayout;
use crate::metadata::AttentionMetadata;
use crate::platform::{DeviceProps, Platform};
use crate::spec::AttnSpec;
use std::fmt;
use std::sync::Arc;

/// The largest step a [`Step`] serves; device buffers are sized from these once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepLimits {
    /// Query tokens in a step (rows of q, k, v, out).
    pub max_tokens: usize,
    /// Requests in a step.
    pub max_reqs: usize,
    /// Blocks of the KV cache one request may hold (its longest context / block size).
    pub max_blocks_per_req: usize,
    /// (split, token) rows the flash-decoding workspace holds: a plan never splits a step
    /// of `n` tokens into more than `split_rows / n` parts.
    pub split_rows: usize,
}

impl StepLimits {
    /// Limits for `max_tokens` tokens of `max_reqs` requests of up to `max_seq_len` tokens
    /// each, in blocks of `block_size`; the workspace holds up to 16 splits of `max_reqs`
    /// tokens (decode-sized: long prefills are not split).
    pub fn new(max_tokens: usize, max_reqs: usize, max_seq_len: usize, block_size: usize) -> StepLimits {
        StepLimits {
            max_tokens,
            max_reqs,
            max_blocks_per_req: max_seq_len.div_ceil(block_size.max(1)),
            split_rows: max_reqs.saturating_mul(16),
        }
    }

    /// Limits that fit exactly one step's metadata (the one-shot `Attention::forward`).
    pub fn for_metadata(meta: &AttentionMetadata) -> StepLimits {
        let bs = meta.layout().block_size;
        let mut l = StepLimits::new(meta.num_tokens().max(1), meta.num_reqs().max(1), meta.max_seq_len().max(1), bs);
        l.split_rows = l.max_tokens.saturating_mul(cuda_paged::MAX_SPLITS);
        l
    }

    /// Every limit positive and the buffers they size addressable with the kernels' i32
    /// indices.
    pub fn validate(&self) -> Result<()> {
        let fits = |n: usize| n > 0 && n <= i32::MAX as usize;
        if !(fits(self.max_tokens) && fits(self.max_reqs) && fits(self.max_blocks_per_req) && fits(self.split_rows))
            || self.max_reqs.checked_mul(self.max_blocks_per_req).is_none_or(|n| n > i32::MAX as usize)
        {
            return Err(AttnError::InvalidConfig(format!(
                "step limits {self:?}: each must be in 1..=2^31-1, and max_reqs x max_blocks_per_req too"
            )));
        }
        Ok(())
    }

    /// The step fits: tokens, requests and each request's blocks within the limits.
    pub fn check(&self, meta: &AttentionMetadata) -> Result<()> {
        let over = |what: &str, got: usize, limit: usize, name: &str| {
            Err(AttnError::StepTooLarge(format!("{what} {got} exceeds the step limit {name} = {limit}")))
        };
        if meta.num_tokens() > self.max_tokens {
            return over("query tokens", meta.num_tokens(), self.max_tokens, "max_tokens");
        }
        if meta.num_reqs() > self.max_reqs {
            return over("requests", meta.num_reqs(), self.max_reqs, "max_reqs");
        }
        let bs = meta.layout().block_size;
        for r in 0..meta.num_reqs() {
            let blocks = (meta.seq_lens()[r] as usize).div_ceil(bs);
            if blocks > self.max_blocks_per_req {
                return over(&format!("request {r}: blocks ({} tokens)", meta.seq_lens()[r]), blocks, self.max_blocks_per_req, "max_blocks_per_req");
            }
        }
        Ok(())
    }
}

/// Choices a caller may impose on a plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// A fixed split count (flash-decoding) instead of the heuristic's: tests, benchmarks,
    /// and CUDA graphs that must replay one launch shape.
    pub force_splits: Option<usize>,
    /// A fixed pipeline depth for a kernel built with several (MLA decode: 2 or 3 K tiles in
    /// flight) instead of the deepest the device's shared memory allows: tests of the
    /// shallower kernel on a device that could run the deeper.
    pub pipeline_stages: Option<u32>,
}

/// The shape of the layers a step serves (all layers of a model share it), with the score
/// modifiers that choose among a kernel family's instantiations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerShape {
    pub num_q_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Logits soft-cap on (its value is the layer's, a kernel argument).
    pub softcap: bool,
    /// ALiBi biases on (the slopes are the layer's).
    pub alibi: bool,
}

impl LayerShape {
    /// A layer's shape as its kernels see it: for MLA, the absorbed form's heads over one
    /// latent kv head of `kv_lora_rank + rope` dims.
    pub fn of(spec: &AttnSpec) -> LayerShape {
        if let Some(m) = &spec.mla {
            return LayerShape::heads(m.num_q_heads, 1, m.latent_dim());
        }
        LayerShape {
            num_q_heads: spec.num_q_heads,
            num_kv_heads: spec.num_kv_heads,
            head_dim: spec.head_dim,
            softcap: spec.softcap.is_some(),
            alibi: spec.alibi_slopes.is_some(),
        }
    }
    /// Plain multi-head attention of these heads (no soft-cap, no ALiBi).
    pub const fn heads(num_q_heads: usize, num_kv_heads: usize, head_dim: usize) -> LayerShape {
        LayerShape { num_q_heads, num_kv_heads, head_dim, softcap: false, alibi: false }
    }
    pub fn group_size(&self) -> usize {
        self.num_q_heads / self.num_kv_heads.max(1)
    }
}

/// One kernel launch of a layer's step: which kernel, its grid, and how many query tokens
/// it serves (which ones: [`StepPlan::decode_tokens`], [`StepPlan::prefill_tiles`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelLaunch {
    /// The kernel, by its id in the kernel table (`kernel.name()` is its PTX entry point).
    pub kernel: crate::registry::KernelId,
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub shared_mem_bytes: u32,
    /// Query tokens served (the cache write's: the tokens it stores).
    pub tokens: usize,
}

impl fmt::Display for KernelLaunch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (x, y, z) = self.grid;
        write!(f, "{} grid ({x}, {y}, {z}) x {} threads, {} B shared, {} tokens", self.kernel, self.block, self.shared_mem_bytes, self.tokens)
    }
}

/// A tile of the prefill kernel: `tokens` consecutive query tokens of `request`, from the
/// step's token `first_token`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillTile {
    pub request: u32,
    pub first_token: u32,
    pub tokens: u32,
}

/// One block of MLA's split-KV schedule: split `split` of `request`'s keys (keys
/// `[split * chunk_keys, (split + 1) * chunk_keys)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySplit {
    pub request: u32,
    pub split: u32,
}

/// What every layer of a step launches, decided once per step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepPlan {
    pub backend: BackendName,
    pub num_tokens: usize,
    pub num_reqs: usize,
    /// Flash-decoding splits of each query row's keys (1: no split, no merge).
    pub num_splits: usize,
    /// Per layer, in order (empty on the CPU backend, which launches nothing).
    pub launches: Vec<KernelLaunch>,
    /// The query tokens the decode kernel serves, in its grid's order (all of them when no
    /// request goes to the prefill kernel).
    pub decode_tokens: Vec<u32>,
    /// The prefill kernel's tiles, in launch order (longest key range first).
    pub prefill_tiles: Vec<PrefillTile>,
    /// Workspace the plan uses (partial outputs and their (max, sum) pairs when split).
    pub workspace_bytes: usize,
    /// MLA's schedule: the decode kernel's blocks, keys per split, and each query token's
    /// (first workspace slot, split count) (empty on other backends).
    pub key_splits: Vec<KeySplit>,
    pub chunk_keys: usize,
    pub token_splits: Vec<[u32; 2]>,
}

impl StepPlan {
    /// Whether a CUDA graph captured for `self` replays `other`: the same launches (kernel,
    /// grid, rows) and hence the same kernel arguments, the buffers being the step's own.
    pub fn same_launches(&self, other: &StepPlan) -> bool {
        self.backend == other.backend
            && self.num_tokens == other.num_tokens
            && self.num_reqs == other.num_reqs
            && self.launches == other.launches
            && self.decode_tokens == other.decode_tokens
            && self.prefill_tiles == other.prefill_tiles
            && self.key_splits == other.key_splits
            && self.chunk_keys == other.chunk_keys
            && self.token_splits == other.token_splits
    }
}

/// The per-step state every layer of a step runs on (see the module docs). Created once
/// for a backend, a layer shape, a cache layout and [`StepLimits`]; [`Step::prepare`] once
/// per step.
pub struct Step {
    backend: BackendName,
    dtype: DType,
    shape: LayerShape,
    layout: KvCacheLayout,
    limits: StepLimits,
    props: Option<DeviceProps>,
    /// This step's maps, kept on the host for host backends (the CPU) only.
    meta: Option<AttentionMetadata>,
    plan: Option<StepPlan>,
    device: Option<cuda_paged::DeviceMetadata>,
}

impl Step {
    /// A step context for layers of `spec` over caches of `layout`. On a CUDA backend this
    /// allocates the persistent metadata buffers and the workspace (the only allocation of a
    /// step's life) and needs the runtime. The backend's capability row is checked first.
    pub fn new(backend: BackendName, dtype: DType, spec: &AttnSpec, layout: KvCacheLayout, limits: StepLimits, gpu: Option<Arc<CudaRuntime>>) -> Result<Step> {
        limits.validate()?;
        let platform = gpu.as_ref().map_or(Platform::Cpu, |rt| rt.platform());
        backend.caps().check_layer(platform, dtype, spec, &layout)?;
        let shape = LayerShape::of(spec);
        let (props, device) = match backend {
            BackendName::Cpu => (None, None),
            BackendName::CudaPaged | BackendName::CudaPagedPortable | BackendName::CudaMla => {
                let rt = gpu.ok_or_else(|| AttnError::NoCuda(format!("backend {backend} needs a CUDA device")))?;
                let props = match backend {
                    BackendName::CudaMla => cuda_mla::device_props(&rt, dtype)?,
                    _ => cuda_paged::device_props(&rt, dtype, crate::backend::kv_type(layout.kv_dtype), shape.head_dim)?,
                };
                (Some(props), Some(cuda_paged::DeviceMetadata::new(rt, shape, &limits)?))
            }
        };
        Ok(Step { backend, dtype, shape, layout, limits, props, meta: None, plan: None, device })
    }

    /// Plans this step and, on a GPU, uploads its metadata into the persistent buffers (one
    /// asynchronous copy per map; it waits only for the previous step's upload to leave the
    /// staging memory). A step beyond the limits is an error naming the limit.
    pub fn prepare(&mut self, meta: &AttentionMetadata) -> Result<&StepPlan> {
        self.prepare_with(meta, PlanOptions::default())
    }

    /// [`Step::prepare`] with options (a fixed split count).
    pub fn prepare_with(&mut self, meta: &AttentionMetadata, opts: PlanOptions) -> Result<&StepPlan> {
        if *meta.layout() != self.layout {
            return Err(AttnError::Shape(format!("metadata was built for cache {:?}, this step serves caches of {:?}", meta.layout(), self.layout)));
        }
        self.limits.check(meta)?;
        let plan = self.backend.plan(meta, &self.shape, self.dtype, self.props.as_ref(), &self.limits, &opts)?;
        if let Some(dev) = &mut self.device {
            dev.upload(meta, &plan)?;
        }
        // The CPU backend reads the maps from the host; a GPU step has them on the device
        // and keeps no host copy (no per-step clone of the block table).
        self.meta = if self.device.is_none() { Some(meta.clone()) } else { None };
        Ok(self.plan.insert(plan))
    }

    pub fn backend(&self) -> BackendName {
        self.backend
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn shape(&self) -> &LayerShape {
        &self.shape
    }
    pub fn layout(&self) -> &KvCacheLayout {
        &self.layout
    }
    pub fn limits(&self) -> &StepLimits {
        &self.limits
    }
    pub fn device_props(&self) -> Option<&DeviceProps> {
        self.props.as_ref()
    }
    /// The current step's plan; `None` before the first `prepare`.
    pub fn plan(&self) -> Option<&StepPlan> {
        self.plan.as_ref()
    }
    /// The plan of a prepared step whose backend, dtype, shape and layout are a layer's (the
    /// plan names the layer's kernels); an error naming the difference otherwise.
    pub(crate) fn for_layer(&self, backend: BackendName, dtype: DType, shape: &LayerShape, layout: &KvCacheLayout) -> Result<&StepPlan> {
        if backend != self.backend || dtype != self.dtype || *shape != self.shape || *layout != self.layout {
            return Err(AttnError::InvalidConfig(format!(
                "step prepared for {} {} layers of {:?} over cache {:?}; this layer is {backend} {dtype}, {shape:?}, cache {layout:?}",
                self.backend, self.dtype, self.shape, self.layout
            )));
        }
        self.plan.as_ref().ok_or_else(|| AttnError::InvalidConfig("the step was not prepared: call Step::prepare(&metadata) first".into()))
    }

    /// [`Step::for_layer`] for a CUDA layer on runtime `rt`: the plan and the step's device
    /// buffers, which must live on the layer's device (the same runtime).
    pub(crate) fn for_device_layer(&self, backend: BackendName, dtype: DType, shape: &LayerShape, layout: &KvCacheLayout, rt: &Arc<CudaRuntime>) -> Result<(&StepPlan, &cuda_paged::DeviceMetadata)> {
        let plan = self.for_layer(backend, dtype, shape, layout)?;
        let dev = self.device.as_ref().ok_or_else(|| AttnError::InvalidConfig("the step has no device buffers".into()))?;
        if !Arc::ptr_eq(dev.runtime(), rt) {
            return Err(AttnError::InvalidConfig(format!(
                "the step's buffers are on another CUDA runtime ({}) than this layer's ({}): make the step on the layer's device",
                dev.runtime().device_name(),
                rt.device_name()
            )));
        }
        Ok((plan, dev))
    }

    /// The prepared step's maps on the host (kept for host backends only).
    pub(crate) fn host_metadata(&self) -> Result<&AttentionMetadata> {
        self.meta.as_ref().ok_or_else(|| AttnError::InvalidConfig("the step was not prepared for a host backend: call Step::prepare(&metadata) first".into()))
    }
}
