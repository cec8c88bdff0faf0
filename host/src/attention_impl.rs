//! The role every backend's impl plays for a layer (vLLM's `AttentionImpl`), beneath the
//! backends: they implement it, the layer calls it, and it names none of them.

use crate::backend_name::BackendName;
use crate::cuda_plumbing::DeviceTensors;
use crate::dtype::Element;
use crate::error::{AttnError, Result};
use crate::fp8::KvScales;
use crate::kv_cache::HostKvCache;
use crate::step::Step;

/// `AttentionImpl`: one layer's forward on one backend. The impl owns the layer's paged KV
/// cache (in the backend's memory). Both runs follow the step's plan: they write this step's
/// k, v into the cache at the slot mapping, then attend q over the cache, causally from
/// each request's context length. Shapes are checked against the layer and the step before
/// anything is written; a device run (`run_device`) allocates nothing and uploads nothing
/// (a host run stages its tensors through the device).
pub trait AttentionImpl<T: Element>: Send {
    /// The backend this impl belongs to.
    fn backend(&self) -> BackendName;

    /// One step on host tensors: q, out `[num_tokens, num_q_heads, head_dim]`, k, v
    /// `[num_tokens, num_kv_heads, head_dim]`; with `lse`, each row's log-sum-exp too
    /// (`f32 [num_tokens, num_q_heads]`, natural log, `-inf` for a row that saw no key). The
    /// CPU backend's path; a GPU backend copies through the device (tests, examples) and
    /// synchronizes.
    fn run_host(&mut self, step: &Step, q: &[T], k: &[T], v: &[T], out: &mut [T], lse: Option<&mut [f32]>) -> Result<()>;

    /// One step on device tensors, launches only: no allocation, no upload, no host
    /// synchronization, so it can be captured in a CUDA graph. Backends that run on the host
    /// return an error.
    fn run_device(&mut self, step: &Step, t: DeviceTensors<'_, T>) -> Result<()> {
        let _ = (step, t);
        Err(AttnError::Unsupported { backend: self.backend().as_str(), reason: "runs on host tensors; use forward_host".into() })
    }

    /// Attention alone over the step's cache as it is (no cache write), on device tensors:
    /// what a benchmark times. Backends that run on the host return an error.
    fn attend_device(&mut self, step: &Step, q: &cudarc::driver::CudaSlice<T>, out: &mut cudarc::driver::CudaSlice<T>) -> Result<()> {
        let _ = (step, q, out);
        Err(AttnError::Unsupported { backend: self.backend().as_str(), reason: "runs on host tensors; time forward_host".into() })
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


/// The error of a KV-scale call on an MLA layer's fp8 cache, whose rows carry their scales.
pub(crate) fn latent_rows_have_scales(backend: BackendName) -> AttnError {
    AttnError::Unsupported { backend: backend.as_str(), reason: "an MLA layer's fp8 latent rows carry their own scales (one per 128 values): per-layer k/v scales do not apply".into() }
}
