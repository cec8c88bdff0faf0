//! A backend's capability row, the one place a backend's limits live: the selector
//! (`crate::selector::check`) reads it to choose, the backends' constructors
//! (`BackendCaps::check_layer`, in `crate::backend`) to refuse a layer. A leaf module, so that
//! the selector needs no backend.

use crate::backend_name::BackendName;
use crate::dtype::{DType, KvCacheDType};
use crate::error::{AttnError, Result};
use crate::kv_cache::KvCacheLayout;

/// A backend's row in the selector's table: everything it can and cannot serve. The one
/// place a backend's limits live: the selector ([`crate::selector::check`]) and the
/// constructors ([`BackendCaps::check_layer`]) both read it.
#[derive(Clone, Debug)]
pub struct BackendCaps {
    /// The backend this row describes.
    pub name: BackendName,
    /// `None`: runs on any platform (the CPU backend). `Some(cc)`: CUDA, compute capability >= cc.
    pub min_compute_capability: Option<u32>,
    /// Runs on the host (any platform), not on a CUDA device.
    pub cpu: bool,
    /// The activation dtypes it serves.
    pub dtypes: &'static [DType],
    /// The KV-cache dtypes of a multi-head layer it serves.
    pub kv_cache_dtypes: &'static [KvCacheDType],
    /// The KV-cache dtypes of an MLA layer's latent cache (empty: the backend serves no MLA).
    pub mla_kv_cache_dtypes: &'static [KvCacheDType],
    /// Head dims of MHA/GQA models; empty means any.
    pub head_dims: &'static [u32],
    /// Serves multi-head layers (MHA, GQA, MQA).
    pub mha: bool,
    /// Serves MLA layers (DeepSeek's latent attention).
    pub mla: bool,
    /// Serves a sliding window.
    pub sliding_window: bool,
    /// Serves a logits soft-cap.
    pub softcap: bool,
    /// Serves ALiBi.
    pub alibi: bool,
    /// Serves chunked local attention (Llama 4).
    pub chunked: bool,
    /// Serves attention sinks (gpt-oss).
    pub sinks: bool,
    /// Serves bidirectional (encoder) layers over the step's own K/V.
    pub bidirectional: bool,
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
