//! The `Attention` layer: what a model calls, whatever the backend.
//!
//! ```no_run
//! use attn_host::{layer::Attention, spec::AttnSpec, kv_cache::KvCacheLayout, BackendName};
//! use attn_host::metadata::{MetadataBuilder, RequestSchedule, SchedulerOutput};
//! let spec = AttnSpec::new(8, 2, 64);
//! let layout = KvCacheLayout::new(16, 16, 2, 64).unwrap();
//! let mut layer = Attention::<f32>::new(BackendName::Cpu, spec, layout, None).unwrap();
//! // plan once per step ...
//! let step = SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 0, num_new_tokens: 3, block_ids: vec![4] }] };
//! let meta = MetadataBuilder::new(layout).build(&step).unwrap();
//! // ... run for every layer
//! let (q, k, v) = (vec![0.5f32; 3 * 8 * 64], vec![0.25f32; 3 * 2 * 64], vec![1.0f32; 3 * 2 * 64]);
//! let out = layer.forward(&q, &k, &v, &meta).unwrap();
//! assert_eq!(out.len(), q.len());
//! ```

use crate::backend::cpu::CpuImpl;
use crate::backend::cuda_paged::CudaPagedImpl;
use crate::backend::{AttentionImpl, BackendName};
use crate::cuda::CudaRuntime;
use crate::dtype::Element;
use crate::error::{AttnError, Result};
use crate::kv_cache::{HostKvCache, KvCacheLayout};
use crate::metadata::AttentionMetadata;
use crate::spec::AttnSpec;
use std::sync::Arc;

pub struct Attention<T: Element> {
    spec: AttnSpec,
    imp: Box<dyn AttentionImpl<T>>,
}

impl<T: Element> Attention<T> {
    /// A layer on `backend`, with its paged cache of `layout` allocated in that backend's
    /// memory. CUDA backends need the runtime of the device to run on.
    pub fn new(backend: BackendName, spec: AttnSpec, layout: KvCacheLayout, gpu: Option<Arc<CudaRuntime>>) -> Result<Self> {
        let imp: Box<dyn AttentionImpl<T>> = match backend {
            BackendName::Cpu => Box::new(CpuImpl::<T>::new(spec.clone(), layout)?),
            BackendName::CudaPaged => {
                let rt = gpu.ok_or_else(|| AttnError::NoCuda("backend CUDA_PAGED needs a CUDA device".into()))?;
                Box::new(CudaPagedImpl::<T>::new(rt, spec.clone(), layout)?)
            }
        };
        Ok(Attention { spec, imp })
    }

    pub fn from_impl(spec: AttnSpec, imp: Box<dyn AttentionImpl<T>>) -> Self {
        Attention { spec, imp }
    }

    pub fn backend(&self) -> BackendName {
        self.imp.backend()
    }
    pub fn spec(&self) -> &AttnSpec {
        &self.spec
    }

    /// One step: this step's `k`, `v` into the cache, then `q` attends over it.
    /// Returns `out` `[num_tokens, num_q_heads, head_dim]`.
    pub fn forward(&mut self, q: &[T], k: &[T], v: &[T], meta: &AttentionMetadata) -> Result<Vec<T>> {
        let mut out = vec![T::default(); meta.num_tokens() * self.spec.num_q_heads * self.spec.head_dim];
        self.imp.forward(q, k, v, meta, &mut out)?;
        Ok(out)
    }

    /// As [`Attention::forward`], into a caller's buffer.
    pub fn forward_into(&mut self, q: &[T], k: &[T], v: &[T], meta: &AttentionMetadata, out: &mut [T]) -> Result<()> {
        self.imp.forward(q, k, v, meta, out)
    }

    /// Replaces the layer's whole cache (same layout) with host contents.
    pub fn load_cache(&mut self, cache: &HostKvCache<T>) -> Result<()> {
        self.imp.load_cache(cache)
    }

    pub fn cache_snapshot(&self) -> Result<HostKvCache<T>> {
        self.imp.cache_snapshot()
    }
}
