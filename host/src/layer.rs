//! The `Attention` layer: what a model calls, whatever the backend.
//!
//! Once per step the [`Step`] is prepared (plan + one upload); then every layer runs on it.
//! Which call, and when:
//!
//! | call | tensors | plan | for |
//! |---|---|---|---|
//! | [`Attention::forward_device`] | device (`CudaSlice`) | the step's | serving on a GPU: launches only, capturable in a CUDA graph ([`Step::capture`]) |
//! | [`Attention::forward_device_lse`] | device, and each row's log-sum-exp | the step's | the same, when partial results are merged later |
//! | [`Attention::forward_host`] | host slices | the step's | the CPU backend; on a GPU, copies through the device (tests, examples) |
//! | [`Attention::forward`] / [`Attention::forward_into`] | host slices | its own, each call | one-shot use: a test, a demo (returns the output / writes it into a buffer) |
//! | [`Attention::attend_device`] | device | the step's | attention alone, without the cache write: benchmarks |
//!
//! Every call writes this step's `k`, `v` into the layer's cache at the slot mapping (but
//! `attend_device`), then attends `q` over the cache. Shapes, for `tokens` query tokens:
//! - multi-head layers: `q`, `out` `[tokens, q heads, head dim]`; `k`, `v` `[tokens, kv heads,
//!   head dim]`;
//! - MLA layers (the absorbed form): `q` `[tokens, heads, kv_lora_rank + rope]` (the query
//!   after `W_UK`), `k` the latent `kv_c` `[tokens, kv_lora_rank]`, `v` the rotary `k_pe`
//!   `[tokens, rope]`, `out` the latent output `[tokens, heads, kv_lora_rank]` (before `W_UV`).
//!
//! ```
//! use attn_host::{layer::Attention, spec::AttnSpec, kv_cache::KvCacheLayout, BackendName, Step, StepLimits};
//! use attn_host::metadata::{MetadataBuilder, RequestSchedule, SchedulerOutput};
//! let spec = AttnSpec::new(8, 2, 64);
//! let layout = KvCacheLayout::new(16, 16, 2, 64).unwrap();
//! let mut layers: Vec<Attention<f32>> = (0..2).map(|_| Attention::new(BackendName::Cpu, spec.clone(), layout, None).unwrap()).collect();
//! // once: a step context sized for the largest step (tokens, requests, longest sequence)
//! let mut step = Step::new(BackendName::Cpu, attn_host::DType::F32, &spec, layout, StepLimits::new(64, 4, 256, 16), None).unwrap();
//! // per step: plan once ...
//! let sched = SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 0, num_new_tokens: 3, block_ids: vec![4] }] };
//! step.prepare(&MetadataBuilder::new(layout).build(&sched).unwrap()).unwrap();
//! // ... run for every layer
//! let (q, k, v) = (vec![0.5f32; 3 * 8 * 64], vec![0.25f32; 3 * 2 * 64], vec![1.0f32; 3 * 2 * 64]);
//! let mut out = vec![0.0f32; q.len()];
//! for layer in &mut layers {
//!     layer.forward_host(&step, &q, &k, &v, &mut out).unwrap();
//! }
//! assert!(out.iter().all(|&x| (x - 1.0).abs() < 1e-6));
//! ```

use crate::backend::{AttentionImpl, BackendName, DeviceTensors};
use crate::cuda::CudaRuntime;
use crate::dtype::{Element, KvCacheDType};
use crate::error::Result;
use crate::fp8::KvScales;
use crate::kv_cache::{HostKvCache, KvCacheLayout};
use crate::metadata::AttentionMetadata;
use crate::spec::AttnSpec;
use crate::step::{Step, StepLimits};
use cudarc::driver::CudaSlice;
use std::sync::Arc;

/// One attention layer: its spec, its cache layout (with the cache's `kv_dtype`) and the
/// selected backend's impl, which owns the layer's paged KV cache.
pub struct Attention<T: Element> {
    spec: AttnSpec,
    layout: KvCacheLayout,
    gpu: Option<Arc<CudaRuntime>>,
    imp: Box<dyn AttentionImpl<T>>,
}

impl<T: Element> std::fmt::Debug for Attention<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attention")
            .field("dtype", &T::DTYPE)
            .field("backend", &self.imp.backend())
            .field("spec", &self.spec)
            .field("layout", &self.layout)
            .field("gpu", &self.gpu.as_ref().map(|rt| rt.device_name().to_string()))
            .finish()
    }
}

impl<T: Element> Attention<T> {
    /// A layer on `backend`, with its paged cache of `layout` allocated in that backend's
    /// memory, once the backend's capability row accepted the layer (an MLA layer, a head dim
    /// or dtype without a kernel, a window the backend lacks: errors naming it). CUDA
    /// backends need the runtime of the device to run on.
    pub fn new(backend: BackendName, spec: AttnSpec, layout: KvCacheLayout, gpu: Option<Arc<CudaRuntime>>) -> Result<Self> {
        let imp = backend.make_impl::<T>(&spec, layout, gpu.clone())?;
        Ok(Attention { spec, layout, gpu, imp })
    }

    /// A layer on the backend the selector picks for it on this platform: the GPU of `gpu`
    /// when given, else the CPU; `ATTN_BACKEND` overrides the choice, as everywhere the
    /// selector is asked ([`crate::selector::select_from_env`]). [`Attention::new`] takes the
    /// backend it is given and reads no environment.
    pub fn for_platform(spec: AttnSpec, layout: KvCacheLayout, gpu: Option<Arc<CudaRuntime>>) -> Result<Self> {
        let platform = gpu.as_ref().map_or(crate::platform::Platform::Cpu, |rt| rt.platform());
        let req = crate::selector::Requirements::for_layer(&spec, T::DTYPE, &layout);
        let choice = crate::selector::select_from_env(platform, &req)?;
        Attention::new(choice.backend, spec, layout, gpu)
    }

    /// The CUDA runtime the layer runs on; `None` for a host layer.
    pub fn runtime(&self) -> Option<Arc<CudaRuntime>> {
        self.gpu.clone()
    }

    /// The backend the layer runs on.
    pub fn backend(&self) -> BackendName {
        self.imp.backend()
    }
    /// The layer's spec.
    pub fn spec(&self) -> &AttnSpec {
        &self.spec
    }
    /// The layer's cache layout.
    pub fn layout(&self) -> &KvCacheLayout {
        &self.layout
    }

    /// A step context for this layer's backend, shape and cache layout (every layer of the
    /// same shape can run on it).
    pub fn new_step(&self, limits: StepLimits) -> Result<Step> {
        Step::new(self.backend(), T::DTYPE, &self.spec, self.layout, limits, self.gpu.clone())
    }

    /// One layer of a prepared step on device tensors: this step's `k`, `v` into the cache,
    /// then `q` attends over it into `out` (written in place). Launches only.
    pub fn forward_device(&mut self, step: &Step, q: &CudaSlice<T>, k: &CudaSlice<T>, v: &CudaSlice<T>, out: &mut CudaSlice<T>) -> Result<()> {
        self.imp.run_device(step, DeviceTensors { q, k, v, out, lse: None })
    }

    /// [`Attention::forward_device`], also writing each row's log-sum-exp into `lse`
    /// (`f32 [num_tokens, num_q_heads]`, natural log).
    pub fn forward_device_lse(&mut self, step: &Step, q: &CudaSlice<T>, k: &CudaSlice<T>, v: &CudaSlice<T>, out: &mut CudaSlice<T>, lse: &mut CudaSlice<f32>) -> Result<()> {
        self.imp.run_device(step, DeviceTensors { q, k, v, out, lse: Some(lse) })
    }

    /// One layer of a prepared step on host slices (`out` has q's shape).
    pub fn forward_host(&mut self, step: &Step, q: &[T], k: &[T], v: &[T], out: &mut [T]) -> Result<()> {
        self.imp.run_host(step, q, k, v, out, None)
    }

    /// [`Attention::forward_host`], also writing each row's log-sum-exp into `lse`
    /// (`f32 [num_tokens, num_q_heads]`, natural log; `-inf` for a row that saw no key).
    pub fn forward_host_lse(&mut self, step: &Step, q: &[T], k: &[T], v: &[T], out: &mut [T], lse: &mut [f32]) -> Result<()> {
        self.imp.run_host(step, q, k, v, out, Some(lse))
    }

    /// One-shot: plans a step of its own for `meta` (on a GPU: allocates its buffers and
    /// uploads), runs, returns `out` `[num_tokens, num_q_heads, head_dim]`. For trying the
    /// library and for tests; a model prepares one [`Step`] per step for all its layers.
    pub fn forward(&mut self, q: &[T], k: &[T], v: &[T], meta: &AttentionMetadata) -> Result<Vec<T>> {
        // MLA writes the latent output (kv_lora_rank wide per head).
        let row = match &self.spec.mla {
            Some(m) => m.num_q_heads * m.kv_lora_rank,
            None => self.spec.num_q_heads * self.spec.head_dim,
        };
        let mut out = vec![T::default(); meta.num_tokens() * row];
        self.forward_into(q, k, v, meta, &mut out)?;
        Ok(out)
    }

    /// As [`Attention::forward`], into a caller's buffer.
    pub fn forward_into(&mut self, q: &[T], k: &[T], v: &[T], meta: &AttentionMetadata, out: &mut [T]) -> Result<()> {
        let mut step = self.new_step(StepLimits::for_metadata(meta))?;
        step.prepare(meta)?;
        self.forward_host(&step, q, k, v, out)
    }

    /// Attention alone over the step's cache as it is (no cache write) on device tensors (q
    /// `[tokens, q heads, head dim]`; an MLA layer's the absorbed `[tokens, heads, latent]`,
    /// out its latent `[tokens, heads, kv_lora_rank]`): what a benchmark times, with no need
    /// of the backend's own types. An error on a host backend.
    pub fn attend_device(&mut self, step: &Step, q: &CudaSlice<T>, out: &mut CudaSlice<T>) -> Result<()> {
        self.imp.attend_device(step, q, out)
    }

    /// Replaces the layer's whole cache (same layout) with host contents. An MLA layer's
    /// latent rows are `cache.key`; its `value` is not read and may be empty.
    pub fn load_cache(&mut self, cache: &HostKvCache<T>) -> Result<()> {
        self.imp.load_cache(cache)
    }

    /// A host copy of the cache's values (an fp8 cache's dequantized, `byte * scale` as `T`).
    /// An MLA layer's: the latent rows as `key`, `value` empty, on every backend.
    pub fn cache_snapshot(&self) -> Result<HostKvCache<T>> {
        self.imp.cache_snapshot()
    }

    /// What the layer's cache stores (its layout's `kv_dtype`).
    pub fn kv_cache_dtype(&self) -> KvCacheDType {
        self.layout.kv_dtype
    }

    /// Sets the scales of the layer's fp8 KV cache (vLLM's `k_scale` / `v_scale`, one per kv
    /// head): checked against the layout's kv heads first (one finite positive scale per
    /// head for K and V), then handed to the backend. A layer without an fp8 cache: an
    /// [`crate::AttnError::Unsupported`].
    pub fn set_kv_scales(&mut self, scales: KvScales) -> Result<()> {
        scales.validate(self.layout.num_kv_heads)?;
        self.imp.set_kv_scales(&scales)
    }

    /// The fp8 cache's bytes as stored, and its scales.
    pub fn fp8_cache_snapshot(&self) -> Result<(HostKvCache<u8>, KvScales)> {
        self.imp.fp8_cache_snapshot()
    }

    /// Replaces the fp8 cache's bytes (same geometry) and its scales.
    pub fn load_fp8_cache(&mut self, cache: &HostKvCache<u8>, scales: &KvScales) -> Result<()> {
        scales.validate(self.layout.num_kv_heads)?;
        self.imp.load_fp8_cache(cache, scales)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::AttnError;
    use crate::metadata::{MetadataBuilder, RequestSchedule, SchedulerOutput};

    #[test]
    fn sinks_and_encoder_layers_refuse_bad_input_before_anything_runs() {
        // gpt-oss from its config: the layer refuses to run until the sinks are given.
        let cfg = crate::model::preset("gpt-oss-20b").unwrap();
        let spec = cfg.attn_spec_for_layer(0);
        let layout = KvCacheLayout::new(8, 16, 8, 64).unwrap();
        let e = Attention::<f32>::new(BackendName::Cpu, spec.clone(), layout, None).unwrap_err();
        assert!(matches!(e, AttnError::InvalidConfig(_)) && e.to_string().contains("with_sinks"), "{e}");
        let e = Attention::<f32>::new(BackendName::Cpu, spec.clone().with_sinks(vec![0.0; 8]), layout, None).unwrap_err();
        assert!(e.to_string().contains("8 attention-sink logits for 64 query heads"), "{e}");
        let e = Attention::<f32>::new(BackendName::Cpu, spec.clone().with_sinks(vec![f32::NAN; 64]), layout, None).unwrap_err();
        assert!(e.to_string().contains("query head 0 is NaN"), "{e}");
        assert!(Attention::<f32>::new(BackendName::Cpu, spec.with_sinks(vec![0.5; 64]), layout, None).is_ok());
        // An encoder layer: no window, no fp8 cache, no cached context.
        let enc = AttnSpec { causal: false, ..AttnSpec::new(8, 8, 64) };
        let e = AttnSpec { sliding_window: Some(4), ..enc.clone() }.validate().unwrap_err();
        assert!(e.to_string().contains("bidirectional"), "{e}");
        let fp8 = layout.with_kv_dtype(crate::dtype::KvCacheDType::Fp8E4m3);
        let e = Attention::<f32>::new(BackendName::Cpu, enc.clone(), fp8, None).unwrap_err();
        assert!(e.to_string().contains("caches nothing"), "{e}");
        let mut layer = Attention::<f32>::new(BackendName::Cpu, enc, layout, None).unwrap();
        let sched = SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 3, num_new_tokens: 2, block_ids: vec![1] }] };
        let meta = MetadataBuilder::new(layout).build(&sched).unwrap();
        let x = vec![0.5f32; 2 * 8 * 64];
        let e = layer.forward(&x, &x, &x, &meta).unwrap_err();
        assert!(e.to_string().contains("3 cached tokens"), "{e}");
    }

    #[test]
    fn a_cpu_step_has_nothing_to_capture() {
        let layout = KvCacheLayout::new(8, 16, 2, 64).unwrap();
        let layer = Attention::<f32>::new(BackendName::Cpu, AttnSpec::new(8, 2, 64), layout, None).unwrap();
        let mut step = layer.new_step(StepLimits::new(4, 2, 64, 16)).unwrap();
        let e = step.capture(|_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("not prepared"), "{e}");
        let meta = MetadataBuilder::new(layout).build(&SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 0, num_new_tokens: 2, block_ids: vec![1] }] }).unwrap();
        step.prepare(&meta).unwrap();
        let e = step.capture(|_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("nothing to capture"), "{e}");
    }

    #[test]
    fn for_platform_asks_the_selector_and_debug_says_what_the_layer_is() {
        // No GPU: the CPU, for an MHA layer and for an MLA one alike.
        let layout = KvCacheLayout::new(8, 16, 2, 64).unwrap();
        let layer = Attention::<f32>::for_platform(AttnSpec::new(8, 2, 64), layout, None).unwrap();
        assert_eq!(layer.backend(), BackendName::Cpu);
        let shown = format!("{layer:?}");
        assert!(shown.contains("Attention") && shown.contains("backend: Cpu") && shown.contains("dtype: F32"), "{shown}");
        // What no backend serves is the selector's error, before any allocation.
        let bad = KvCacheLayout::new(8, 3, 2, 64);
        assert!(bad.is_err() || Attention::<f32>::for_platform(AttnSpec::new(8, 2, 64), bad.unwrap(), None).is_err());
    }

    #[test]
    fn an_mla_model_runs_on_the_cpu_layer_and_never_as_mha() {
        // README's "Using it" with deepseek-v3 and no GPU: the selector picks the CPU, and
        // the CPU layer serves the MLA spec (latent cache write, then absorbed attention).
        let cfg = crate::model::preset("deepseek-v3").unwrap();
        let spec = cfg.attn_spec();
        let m = spec.mla.clone().expect("MLA spec");
        let (h, r, rope, w) = (m.num_q_heads, m.kv_lora_rank, m.qk_rope_head_dim, m.latent_dim());
        let layout = KvCacheLayout::new(8, 16, 1, w).unwrap();
        // A multi-head backend refuses the MLA spec rather than run 128 x 192 MHA.
        let e = BackendName::CudaPaged.caps().check_layer(crate::platform::Platform::Cuda { major: 9, minor: 0 }, crate::dtype::DType::Bf16, &spec, &layout).unwrap_err();
        assert!(matches!(e, AttnError::Unsupported { .. }) && e.to_string().contains("MLA"), "{e}");
        // A fresh prefill of 5 tokens and a decode over 19 cached: both requests' latent rows
        // go in through the layer.
        let sched = SchedulerOutput {
            requests: vec![RequestSchedule { num_computed_tokens: 0, num_new_tokens: 5, block_ids: vec![3] }, RequestSchedule { num_computed_tokens: 19, num_new_tokens: 1, block_ids: vec![6, 1] }],
        };
        let meta = MetadataBuilder::new(layout).build(&sched).unwrap();
        let mut layer = Attention::<f32>::new(BackendName::Cpu, spec, layout, None).unwrap();
        let mut rng = crate::workload::Rng::new(5);
        let mut cache = HostKvCache::<f32>::zeros(layout);
        // The decode's 19 cached rows, loaded as a restored cache.
        for j in 0..19 {
            let o = meta.slot_of(1, j) * w;
            for x in &mut cache.key[o..o + w] {
                *x = rng.uniform();
            }
        }
        layer.load_cache(&cache).unwrap();
        let n = meta.num_tokens();
        let rand = |rng: &mut crate::workload::Rng, len: usize| (0..len).map(|_| rng.uniform()).collect::<Vec<f32>>();
        let (q, kv_c, k_pe) = (rand(&mut rng, n * h * w), rand(&mut rng, n * r), rand(&mut rng, n * rope));
        let out = layer.forward(&q, &kv_c, &k_pe, &meta).unwrap();
        // The f64 paged reference over the cache as the write should leave it.
        for t in 0..n {
            let o = meta.slot_mapping()[t] as usize * w;
            cache.key[o..o + r].copy_from_slice(&kv_c[t * r..(t + 1) * r]);
            cache.key[o + r..o + w].copy_from_slice(&k_pe[t * rope..(t + 1) * rope]);
        }
        assert_eq!(layer.cache_snapshot().unwrap().key, cache.key, "latent rows at the slot mapping");
        // The latent cache loads without a value half, and comes back without one.
        let latent_only = HostKvCache { layout, key: cache.key.clone(), value: Vec::new() };
        layer.load_cache(&latent_only).unwrap();
        let snap = layer.cache_snapshot().unwrap();
        assert!(snap.value.is_empty() && snap.key == cache.key);
        let want = crate::oracle::paged_mla_reference(&q, &cache, &meta, &m).unwrap();
        let err = crate::oracle::rel_error(&out, &want);
        assert!(err < 1e-5, "CPU MLA layer vs the paged MLA reference: rel err {err:e}");
    }

    #[test]
    fn a_step_serves_only_layers_of_its_shape_and_after_prepare() {
        let spec = AttnSpec::new(4, 2, 8);
        let layout = KvCacheLayout::new(4, 16, 2, 8).unwrap();
        let mut layer = Attention::<f32>::new(BackendName::Cpu, spec.clone(), layout, None).unwrap();
        let mut step = layer.new_step(StepLimits::new(4, 2, 32, 16)).unwrap();
        let (q, kv) = (vec![0.5f32; 4 * 8], vec![0.25f32; 2 * 8]);
        let mut out = vec![0.0f32; q.len()];
        let e = layer.forward_host(&step, &q, &kv, &kv, &mut out).unwrap_err();
        assert!(e.to_string().contains("not prepared"), "{e}");
        let sched = SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 3, num_new_tokens: 1, block_ids: vec![2] }] };
        let meta = MetadataBuilder::new(layout).build(&sched).unwrap();
        let plan = step.prepare(&meta).unwrap().clone();
        assert_eq!((plan.num_tokens, plan.num_splits, plan.launches.len()), (1, 1, 0));
        layer.forward_host(&step, &q, &kv, &kv, &mut out).unwrap();
        // A layer of another shape is refused by the step.
        let mut other = Attention::<f32>::new(BackendName::Cpu, AttnSpec::new(2, 2, 8), layout, None).unwrap();
        let e = other.forward_host(&step, &q[..16], &kv, &kv, &mut out[..16]).unwrap_err();
        assert!(e.to_string().contains("step prepared for"), "{e}");
        // A step beyond the limits names the limit.
        let big = SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 40, num_new_tokens: 1, block_ids: vec![0, 1, 3] }] };
        let e = step.prepare(&MetadataBuilder::new(layout).build(&big).unwrap()).unwrap_err();
        assert!(matches!(e, AttnError::StepTooLarge(_)) && e.to_string().contains("max_blocks_per_req = 2"), "{e}");
        // The CPU backend runs on host tensors only.
        assert!(step.device_props().is_none());
        // A step prepared for another dtype is refused (its plan names other kernels).
        let mut f16_layer = Attention::<half::f16>::new(BackendName::Cpu, spec.clone(), layout, None).unwrap();
        let (qh, kvh) = (vec![half::f16::ONE; 4 * 8], vec![half::f16::ONE; 2 * 8]);
        let mut outh = vec![half::f16::ZERO; qh.len()];
        let e = f16_layer.forward_host(&step, &qh, &kvh, &kvh, &mut outh).unwrap_err();
        assert!(e.to_string().contains("f16"), "{e}");
    }
}
