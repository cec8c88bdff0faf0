//! attn-backends' paged attention as a [candle](https://github.com/huggingface/candle) layer.
//!
//! q, k, v and the output are candle [`Tensor`]s; the KV cache is paged (the layer allocates
//! it, and a caller's cache tensors can be loaded into it and read back); each step's
//! metadata (block tables, slot mapping, sequence lengths) comes from attn-backends'
//! [`MetadataBuilder`]. Errors are candle [`Error`]s carrying this library's message.
//!
//! On candle's CPU device the layer runs attn-backends' CPU backend (rayon). With this
//! crate's `cuda` feature (which turns on candle's, and so needs nvcc to build candle's own
//! kernels), a candle CUDA device runs the backend the selector picks for it, on candle's
//! context and stream: the kernels read candle's tensors in place, the output is a candle
//! tensor, and the launches are ordered with candle's own work on that stream.
//!
//! A model runs one [`PagedStep`] a step (the metadata planned and uploaded once) through
//! every layer ([`PagedAttention::forward_step`]); [`PagedAttention::forward`] plans its own
//! step each call, for one-off use.
//!
//! ```
//! use attn_candle::{PagedAttention, AttnSpec, KvCacheLayout, MetadataBuilder, SchedulerOutput, RequestSchedule};
//! use candle_core::{DType, Device, Tensor};
//! let dev = Device::Cpu;
//! // 4 query heads over 2 kv heads of 16 dims; a cache of 8 blocks of 16 tokens.
//! let layout = KvCacheLayout::new(8, 16, 2, 16).unwrap();
//! let mut attn = PagedAttention::new(AttnSpec::new(4, 2, 16), layout, DType::F32, &dev).unwrap();
//! // One request: a 3-token prompt in block 5.
//! let step = SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 0, num_new_tokens: 3, block_ids: vec![5] }] };
//! let meta = MetadataBuilder::new(layout).build(&step).unwrap();
//! let q = Tensor::randn(0f32, 1.0, (3, 4, 16), &dev).unwrap();
//! let k = Tensor::randn(0f32, 1.0, (3, 2, 16), &dev).unwrap();
//! let v = Tensor::randn(0f32, 1.0, (3, 2, 16), &dev).unwrap();
//! let out = attn.forward(&q, &k, &v, &meta).unwrap();
//! assert_eq!(out.dims(), &[3, 4, 16]);
//! ```

pub use attn_backends::{AttentionMetadata, AttnSpec, BackendName, KvCacheLayout, MetadataBuilder, RequestSchedule, SchedulerOutput, StepLimits};
use attn_backends::layer::Attention;
use attn_backends::{AttnError, HostKvCache, Step};
pub use candle_core::{DType, Device, Error, Result, Tensor};
use half::{bf16, f16};

#[cfg(feature = "cuda")]
mod cuda;
pub mod llama;

/// An attn-backends error as a candle error, its message kept.
pub fn candle_error(e: AttnError) -> Error {
    Error::wrap(e)
}

/// A checked tensor's elements, flattened, on the host.
fn host<T: candle_core::WithDType>(dtype: DType, device: &Device, name: &str, t: &Tensor, rows: usize, row: usize) -> Result<Vec<T>> {
    check(dtype, device, name, t, rows, row)?;
    t.flatten_all()?.to_vec1::<T>()
}

/// Checks a tensor's dtype, device and element count (`rows` x `row`, tokens first).
fn check(dtype: DType, device: &Device, name: &str, t: &Tensor, rows: usize, row: usize) -> Result<()> {
    if t.dtype() != dtype {
        return Err(Error::Msg(format!("attn-candle: {name} is {:?}, the layer computes in {dtype:?}", t.dtype())));
    }
    if !t.device().same_device(device) {
        return Err(Error::Msg(format!("attn-candle: {name} is on {:?}, the layer on {device:?}", t.device())));
    }
    // Tokens first: [rows, ...] whose other dims make `row` (a transposed q would have the
    // right count and the wrong meaning).
    if t.dims().first() != Some(&rows) || t.elem_count() != rows * row {
        return Err(Error::Msg(format!("attn-candle: {name} has shape {:?}; [{rows}, ...] of {rows} x {row} elements expected (tokens first)", t.dims())));
    }
    Ok(())
}

/// The layer in the tensors' element type.
enum Layer {
    F32(Attention<f32>),
    Bf16(Attention<bf16>),
    F16(Attention<f16>),
}

/// One attention layer over a paged KV cache, on candle tensors.
pub struct PagedAttention {
    layer: Layer,
    dtype: DType,
    device: Device,
    spec: AttnSpec,
    layout: KvCacheLayout,
}

impl std::fmt::Debug for PagedAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagedAttention").field("dtype", &self.dtype).field("device", &self.device).field("spec", &self.spec).field("layout", &self.layout).finish()
    }
}

/// The runtime a device runs on: none for the CPU; for a CUDA device, this library's
/// kernels on candle's stream (one runtime a candle device, shared by its layers).
fn runtime_for(device: &Device) -> Result<Option<std::sync::Arc<attn_backends::cuda::CudaRuntime>>> {
    match device {
        Device::Cpu => Ok(None),
        #[cfg(feature = "cuda")]
        Device::Cuda(cd) => cuda::runtime(cd).map(Some),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(Error::Msg("attn-candle: a CUDA device needs attn-candle's `cuda` feature (which builds candle's, with nvcc)".into())),
        other => Err(Error::Msg(format!("attn-candle: device {other:?}: the layer runs on candle's CPU and CUDA devices"))),
    }
}

/// One step's plan, made once ([`PagedStep::prepare`]) and run by every layer of the same
/// shape and cache layout ([`PagedAttention::forward_step`]). Its buffers are sized by its
/// limits; a step past them is re-sized at `prepare`.
pub struct PagedStep {
    step: Step,
    spec: AttnSpec,
    gpu: Option<std::sync::Arc<attn_backends::cuda::CudaRuntime>>,
}

impl std::fmt::Debug for PagedStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagedStep").field("backend", &self.step.backend()).field("limits", self.step.limits()).field("num_tokens", &self.num_tokens()).finish()
    }
}

impl PagedStep {
    /// Plans `meta` (and uploads it, on a GPU); every layer then runs it.
    pub fn prepare(&mut self, meta: &AttentionMetadata) -> Result<()> {
        let l = *self.step.limits();
        if l.check(meta).is_err() {
            // Past the limits: each limit the step passes grows to the next power of two, so a
            // run whose contexts grow a block at a time re-sizes a few times, not every block.
            let m = StepLimits::for_metadata(meta);
            let grow = |have: usize, need: usize| if need <= have { have } else { need.next_power_of_two() };
            let (tokens, reqs) = (grow(l.max_tokens, m.max_tokens), grow(l.max_reqs, m.max_reqs));
            let grown = StepLimits { max_tokens: tokens, max_reqs: reqs, max_blocks_per_req: grow(l.max_blocks_per_req, m.max_blocks_per_req), split_rows: StepLimits::split_rows_for(tokens, reqs) };
            self.step = Step::new(self.step.backend(), self.step.dtype(), &self.spec, *self.step.layout(), grown, self.gpu.clone()).map_err(candle_error)?;
        }
        self.step.prepare(meta).map_err(candle_error)?;
        Ok(())
    }

    /// Query tokens of the prepared step (`None` before the first [`PagedStep::prepare`], or
    /// after one that failed).
    pub fn num_tokens(&self) -> Option<usize> {
        self.step.plan().map(|p| p.num_tokens)
    }
}

impl PagedAttention {
    /// A layer of `spec` over a cache of `layout` (allocated now, on `device`), computing in
    /// `dtype` (f32, bf16 or f16: the dtype of the q, k, v tensors it will take). On a CUDA
    /// device the backend is the selector's for the layer (`ATTN_BACKEND` overrides it).
    pub fn new(spec: AttnSpec, layout: KvCacheLayout, dtype: DType, device: &Device) -> Result<Self> {
        if spec.mla.is_some() {
            return Err(Error::Msg("attn-candle: an MLA layer (latent cache, absorbed queries) is not served by this multi-head layer yet".into()));
        }
        let gpu = runtime_for(device)?;
        macro_rules! make {
            () => {
                match &gpu {
                    None => Attention::new(BackendName::Cpu, spec.clone(), layout, None),
                    Some(rt) => Attention::for_platform(spec.clone(), layout, Some(rt.clone())),
                }
                .map_err(candle_error)?
            };
        }
        let layer = match dtype {
            DType::F32 => Layer::F32(make!()),
            DType::BF16 => Layer::Bf16(make!()),
            DType::F16 => Layer::F16(make!()),
            other => return Err(Error::Msg(format!("attn-candle: dtype {other:?}: the layer computes in f32, bf16 or f16"))),
        };
        Ok(PagedAttention { layer, dtype, device: device.clone(), spec, layout })
    }

    /// The layer's attention spec.
    pub fn spec(&self) -> &AttnSpec {
        &self.spec
    }
    /// The KV cache's layout.
    pub fn layout(&self) -> &KvCacheLayout {
        &self.layout
    }
    /// The backend the layer runs on (`CPU` on candle's CPU device).
    pub fn backend(&self) -> BackendName {
        match &self.layer {
            Layer::F32(a) => a.backend(),
            Layer::Bf16(a) => a.backend(),
            Layer::F16(a) => a.backend(),
        }
    }

    /// A step context for this layer and every layer of its shape, its buffers sized by
    /// `limits` (re-sized at [`PagedStep::prepare`] when a step is past them).
    pub fn new_step(&self, limits: StepLimits) -> Result<PagedStep> {
        let (step, gpu) = match &self.layer {
            Layer::F32(a) => (a.new_step(limits), a.runtime()),
            Layer::Bf16(a) => (a.new_step(limits), a.runtime()),
            Layer::F16(a) => (a.new_step(limits), a.runtime()),
        };
        Ok(PagedStep { step: step.map_err(candle_error)?, spec: self.spec.clone(), gpu })
    }

    /// One step, planned for this call: [`PagedAttention::forward_step`] on a step made and
    /// prepared from `meta` (a model with several layers prepares one [`PagedStep`] for all).
    pub fn forward(&mut self, q: &Tensor, k: &Tensor, v: &Tensor, meta: &AttentionMetadata) -> Result<Tensor> {
        let mut step = self.new_step(StepLimits::for_metadata(meta))?;
        step.prepare(meta)?;
        self.forward_step(q, k, v, &step)
    }

    /// One layer of a prepared step: writes this step's k and v (`[tokens, kv heads, head
    /// dim]`) into the cache at the step's slots, then attends q (`[tokens, q heads, head
    /// dim]`, or `[tokens, q heads x head dim]`) over each request's cached keys, causally.
    /// Returns the output `[tokens, q heads, head dim]` on the layer's device. Bad shapes,
    /// dtypes or devices are errors, raised before the cache is touched.
    pub fn forward_step(&mut self, q: &Tensor, k: &Tensor, v: &Tensor, step: &PagedStep) -> Result<Tensor> {
        let Some(n) = step.num_tokens() else {
            return Err(Error::Msg("attn-candle: the step was not prepared (PagedStep::prepare)".into()));
        };
        let (hq, hkv, d) = (self.spec.num_q_heads, self.spec.num_kv_heads, self.spec.head_dim);
        // A CUDA device with a GPU backend: the kernels on candle's buffers. (A layer no GPU
        // kernel serves, f32, runs the CPU backend through host copies, as on the CPU.)
        if !self.device.is_cpu() && self.backend() != BackendName::Cpu {
            for (name, t, row) in [("q", q, hq * d), ("k", k, hkv * d), ("v", v, hkv * d)] {
                check(self.dtype, &self.device, name, t, n, row)?;
            }
            #[cfg(feature = "cuda")]
            return match &mut self.layer {
                Layer::F32(l) => cuda::forward(l, &step.step, q, k, v, (n, hq, d)),
                Layer::Bf16(l) => cuda::forward(l, &step.step, q, k, v, (n, hq, d)),
                Layer::F16(l) => cuda::forward(l, &step.step, q, k, v, (n, hq, d)),
            };
        }
        macro_rules! run {
            ($layer:expr, $t:ty) => {{
                let qh = host::<$t>(self.dtype, &self.device, "q", q, n, hq * d)?;
                let kh = host::<$t>(self.dtype, &self.device, "k", k, n, hkv * d)?;
                let vh = host::<$t>(self.dtype, &self.device, "v", v, n, hkv * d)?;
                let mut out = vec![<$t as candle_core::WithDType>::from_f64(0.0); n * hq * d];
                $layer.forward_host(&step.step, &qh, &kh, &vh, &mut out).map_err(candle_error)?;
                Tensor::from_vec(out, (n, hq, d), &self.device)
            }};
        }
        match &mut self.layer {
            Layer::F32(l) => run!(l, f32),
            Layer::Bf16(l) => run!(l, bf16),
            Layer::F16(l) => run!(l, f16),
        }
    }

    /// Replaces the cache with a caller's tensors `[blocks, block size, kv heads, head dim]`
    /// (key and value), of the layer's layout and dtype.
    pub fn load_cache(&mut self, key: &Tensor, value: &Tensor) -> Result<()> {
        let l = self.layout;
        let want = [l.num_blocks, l.block_size, l.num_kv_heads, l.head_dim];
        for (name, t) in [("key cache", key), ("value cache", value)] {
            if t.dims() != want {
                return Err(Error::Msg(format!("attn-candle: {name} has shape {:?}; the layout is {want:?}", t.dims())));
            }
        }
        macro_rules! load {
            ($layer:expr, $t:ty) => {{
                let cache = HostKvCache { layout: l, key: host::<$t>(self.dtype, &self.device, "key cache", key, l.num_blocks, l.elements() / l.num_blocks)?, value: host::<$t>(self.dtype, &self.device, "value cache", value, l.num_blocks, l.elements() / l.num_blocks)? };
                $layer.load_cache(&cache).map_err(candle_error)
            }};
        }
        match &mut self.layer {
            Layer::F32(a) => load!(a, f32),
            Layer::Bf16(a) => load!(a, bf16),
            Layer::F16(a) => load!(a, f16),
        }
    }

    /// A copy of the cache as tensors `[blocks, block size, kv heads, head dim]` (key, value).
    pub fn cache(&self) -> Result<(Tensor, Tensor)> {
        let l = self.layout;
        let shape = (l.num_blocks, l.block_size, l.num_kv_heads, l.head_dim);
        macro_rules! snap {
            ($layer:expr) => {{
                let c = $layer.cache_snapshot().map_err(candle_error)?;
                Ok((Tensor::from_vec(c.key, shape, &self.device)?, Tensor::from_vec(c.value, shape, &self.device)?))
            }};
        }
        match &self.layer {
            Layer::F32(a) => snap!(a),
            Layer::Bf16(a) => snap!(a),
            Layer::F16(a) => snap!(a),
        }
    }
}
