//! attn-backends' paged attention as a [candle](https://github.com/huggingface/candle) layer.
//!
//! q, k, v and the output are candle [`Tensor`]s; the KV cache is paged (the layer allocates
//! it, and a caller's cache tensors can be loaded into it and read back); each step's
//! metadata (block tables, slot mapping, sequence lengths) comes from attn-backends'
//! [`MetadataBuilder`]. Errors are candle [`Error`]s carrying this library's message.
//!
//! This release runs on candle's CPU device, through attn-backends' CPU backend (rayon).
//! candle's CUDA device is refused with the reason: its `cuda` feature builds cudarc with
//! `dynamic-linking` while attn-backends loads the driver at run time (`dynamic-loading`),
//! two cudarc modes that cannot be in one build (README, "Use it from candle").
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

pub use attn_backends::{AttentionMetadata, AttnSpec, BackendName, KvCacheLayout, MetadataBuilder, RequestSchedule, SchedulerOutput};
use attn_backends::layer::Attention;
use attn_backends::{AttnError, HostKvCache};
pub use candle_core::{DType, Device, Error, Result, Tensor};
use half::{bf16, f16};

pub mod llama;

/// An attn-backends error as a candle error, its message kept.
pub fn candle_error(e: AttnError) -> Error {
    Error::wrap(e)
}

/// Checks a tensor's dtype, device and element count (`rows` x `row`); its elements,
/// flattened.
fn host<T: candle_core::WithDType>(dtype: DType, device: &Device, name: &str, t: &Tensor, rows: usize, row: usize) -> Result<Vec<T>> {
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
    t.flatten_all()?.to_vec1::<T>()
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

/// The CPU backend for a CPU device; candle's CUDA device is refused, naming why.
fn backend_for(device: &Device) -> Result<BackendName> {
    match device {
        Device::Cpu => Ok(BackendName::Cpu),
        other => Err(Error::Msg(format!(
            "attn-candle: device {other:?}: this release runs on candle's CPU device only (candle's `cuda` feature builds cudarc with dynamic-linking, attn-backends with dynamic-loading; they cannot share one build)"
        ))),
    }
}

impl PagedAttention {
    /// A layer of `spec` over a cache of `layout` (allocated now, on `device`), computing in
    /// `dtype` (f32, bf16 or f16: the dtype of the q, k, v tensors it will take).
    pub fn new(spec: AttnSpec, layout: KvCacheLayout, dtype: DType, device: &Device) -> Result<Self> {
        let backend = backend_for(device)?;
        if spec.mla.is_some() {
            return Err(Error::Msg("attn-candle: an MLA layer (latent cache, absorbed queries) is not served by this multi-head layer yet".into()));
        }
        let layer = match dtype {
            DType::F32 => Layer::F32(Attention::new(backend, spec.clone(), layout, None).map_err(candle_error)?),
            DType::BF16 => Layer::Bf16(Attention::new(backend, spec.clone(), layout, None).map_err(candle_error)?),
            DType::F16 => Layer::F16(Attention::new(backend, spec.clone(), layout, None).map_err(candle_error)?),
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

    /// One step: writes this step's k and v (`[tokens, kv heads, head dim]`) into the cache at
    /// the metadata's slots, then attends q (`[tokens, q heads, head dim]`, or
    /// `[tokens, q heads x head dim]`) over each request's cached keys, causally. Returns the
    /// output `[tokens, q heads, head dim]`. Bad metadata or shapes are errors, raised before
    /// the cache is touched.
    pub fn forward(&mut self, q: &Tensor, k: &Tensor, v: &Tensor, meta: &AttentionMetadata) -> Result<Tensor> {
        let n = meta.num_tokens();
        let (hq, hkv, d) = (self.spec.num_q_heads, self.spec.num_kv_heads, self.spec.head_dim);
        macro_rules! run {
            ($layer:expr, $t:ty) => {{
                let qh = host::<$t>(self.dtype, &self.device, "q", q, n, hq * d)?;
                let kh = host::<$t>(self.dtype, &self.device, "k", k, n, hkv * d)?;
                let vh = host::<$t>(self.dtype, &self.device, "v", v, n, hkv * d)?;
                let out = $layer.forward(&qh, &kh, &vh, meta).map_err(candle_error)?;
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
