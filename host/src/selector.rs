//! The backend selector: which backend serves a model on a platform, and why.
//!
//! Every backend publishes one [`BackendCaps`] row. [`check`] compares a row with the
//! model's [`Requirements`] and returns every reason it cannot serve (after vLLM's
//! `validate_configuration`), so that a rejection is explained, not just "unsupported".
//! [`select`] walks the platform's explicit priority list and takes the first backend with
//! no reasons; `ATTN_BACKEND=<NAME>` ([`select_from_env`]) forces one, and a forced backend
//! that cannot serve is an error listing what could — never a silent fallback.
//!
//! ```
//! use attn_host::model::preset;
//! use attn_host::selector::{select, Requirements};
//! use attn_host::{BackendName, Platform};
//!
//! let req = Requirements::for_model(&preset("deepseek-v3").unwrap(), 16);
//! let sel = select(Platform::Cuda { major: 9, minor: 0 }, &req, None).unwrap();
//! assert_eq!(sel.backend, BackendName::CudaMla);
//! assert!(sel.reason.contains("CUDA_PAGED: MLA not supported"));
//! ```

use crate::backend_name::BackendName;
use crate::caps::BackendCaps;
use crate::platform::Platform;
use crate::dtype::{DType, KvCacheDType};
use crate::error::{AttnError, Result};
use crate::model::{LayerKind, ModelConfig};
use std::collections::HashSet;
use std::fmt;
use std::sync::{Mutex, OnceLock};

/// The variable that forces a backend by name (case-insensitive), as in vLLM.
pub const ENV_VAR: &str = "ATTN_BACKEND";

/// Priority lists, best first. A new backend is one entry here plus its `CAPS` row;
/// a backend that cannot run on a platform is rejected by [`check`], so the CUDA list may
/// name backends for newer architectures than the device has.
const CUDA_PRIORITY: &[BackendName] = &[BackendName::CudaPaged, BackendName::CudaMla, BackendName::Cpu];
const CPU_PRIORITY: &[BackendName] = &[BackendName::Cpu];

/// The platform's priority list, best first.
pub fn priority(platform: Platform) -> &'static [BackendName] {
    match platform {
        Platform::Cuda { .. } => CUDA_PRIORITY,
        Platform::Cpu => CPU_PRIORITY,
    }
}

/// What a model asks of a backend. Built from a model with [`Requirements::for_model`];
/// fields are public so that the CLI can override the dtype, KV-cache dtype or block size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Requirements {
    /// The activation dtype.
    pub dtype: DType,
    /// The KV cache's element type.
    pub kv_cache_dtype: KvCacheDType,
    /// The head dim the kernels see: the model's head dim, or for MLA the latent width
    /// (`kv_lora_rank + qk_rope_head_dim`, 576 for DeepSeek-V3).
    pub head_dim: usize,
    /// An MLA layer.
    pub mla: bool,
    /// The layer has a sliding window.
    pub sliding_window: bool,
    /// The layer soft-caps its logits.
    pub softcap: bool,
    /// The layer uses ALiBi.
    pub alibi: bool,
    /// The layer uses chunked local attention.
    pub chunked: bool,
    /// The layer has attention sinks.
    pub sinks: bool,
    /// A bidirectional (encoder) layer.
    pub bidirectional: bool,
    /// Tokens per KV-cache block.
    pub block_size: usize,
}

impl Requirements {
    /// The model's requirements in its own dtype, with a KV cache of the same dtype.
    pub fn for_model(model: &ModelConfig, block_size: usize) -> Requirements {
        let groups = model.layer_groups();
        Requirements {
            dtype: model.dtype,
            kv_cache_dtype: KvCacheDType::Auto,
            head_dim: model.mla.map_or(model.head_dim, |m| m.latent_dim()),
            mla: model.is_mla(),
            sliding_window: groups.iter().any(|(k, _)| matches!(k, LayerKind::Sliding(_))),
            softcap: model.softcap.is_some(),
            alibi: model.alibi,
            chunked: groups.iter().any(|(k, _)| matches!(k, LayerKind::Chunked(_))),
            sinks: model.sinks,
            bidirectional: false,
            block_size,
        }
    }

    /// The requirements of the model's layers of type `kind` (one row of `attn select`).
    pub fn for_model_layer(model: &ModelConfig, kind: LayerKind, block_size: usize) -> Requirements {
        Requirements {
            sliding_window: matches!(kind, LayerKind::Sliding(_)),
            chunked: matches!(kind, LayerKind::Chunked(_)),
            ..Requirements::for_model(model, block_size)
        }
    }
}

impl Requirements {
    /// What one layer of `spec` in `dtype` over a cache of `layout` asks: the layout's block
    /// size and KV-cache dtype (`layout.kv_dtype`); for MLA the latent width as the head dim.
    pub fn for_layer(spec: &crate::spec::AttnSpec, dtype: DType, layout: &crate::kv_cache::KvCacheLayout) -> Requirements {
        Requirements {
            dtype,
            kv_cache_dtype: layout.kv_dtype,
            head_dim: spec.mla.as_ref().map_or(spec.head_dim, |m| m.latent_dim()),
            mla: spec.mla.is_some(),
            sliding_window: spec.sliding_window.is_some(),
            softcap: spec.softcap.is_some(),
            alibi: spec.alibi_slopes.is_some(),
            chunked: spec.chunk_size.is_some(),
            sinks: spec.sinks.present(),
            bidirectional: !spec.causal,
            block_size: layout.block_size,
        }
    }
}

/// A short list of what is asked, for reasons and logs:
/// `bf16, head dim 128, MHA/GQA, sliding window, block size 16`.
impl fmt::Display for Requirements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dtype)?;
        if self.kv_cache_dtype != KvCacheDType::Auto {
            write!(f, ", KV cache {}", self.kv_cache_dtype)?;
        }
        if self.mla {
            write!(f, ", MLA (latent dim {})", self.head_dim)?;
        } else {
            write!(f, ", head dim {}, MHA/GQA", self.head_dim)?;
        }
        for (on, what) in [
            (self.sliding_window, "sliding window"),
            (self.chunked, "chunked local attention"),
            (self.sinks, "attention sinks"),
            (self.bidirectional, "bidirectional"),
            (self.softcap, "logits soft-cap"),
            (self.alibi, "ALiBi"),
        ] {
            if on {
                write!(f, ", {what}")?;
            }
        }
        write!(f, ", block size {}", self.block_size)
    }
}

/// The most dynamic shared memory one block may opt into, per compute capability (CUDA
/// programming guide, "Technical Specifications"): 163 KiB on sm_80 / sm_87, 227 KiB on
/// sm_90 / sm_100 / sm_103, 99 KiB on sm_86 / sm_89 / sm_120 and anything not listed.
pub fn max_shared_memory_per_block(cc: u32) -> usize {
    match cc {
        80 | 87 => 166_912,
        90 | 100 | 103 => 232_448,
        _ => 101_376,
    }
}

/// Compute capability 80 -> "8.0", 100 -> "10.0".
fn cc_string(cc: u32) -> String {
    format!("{}.{}", cc / 10, cc % 10)
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(", ")
}

/// Powers of two in `[lo, hi]`: `block_size_ok(16, (1, 256))`, not 24, not 512.
fn block_size_ok(block_size: usize, (lo, hi): (usize, usize)) -> bool {
    block_size.is_power_of_two() && (lo..=hi).contains(&block_size)
}

/// Every reason `caps` cannot serve `req` on `platform`; empty means it can.
///
/// Example: the CUDA paged backend, a bf16 Phi-3 (head dim 96) on a CPU-only host gives
/// `["needs CUDA compute capability >= 8.0, platform is CPU", "head dim 96 not in [64, 128, 256]"]`.
pub fn check(caps: &BackendCaps, platform: Platform, req: &Requirements) -> Vec<String> {
    let mut why = Vec::new();

    // `cpu: true` runs anywhere; otherwise a CUDA device of at least the minimum capability.
    if !caps.cpu {
        match (platform.compute_capability(), caps.min_compute_capability) {
            (Some(cc), Some(min)) if cc < min => {
                why.push(format!("needs CUDA compute capability >= {}, platform is {platform}", cc_string(min)))
            }
            (None, Some(min)) => {
                why.push(format!("needs CUDA compute capability >= {}, platform is {platform}", cc_string(min)))
            }
            (None, None) => why.push(format!("needs a CUDA device, platform is {platform}")),
            (Some(_), _) => {}
        }
    }
    if !caps.dtypes.contains(&req.dtype) {
        why.push(format!("dtype {} not supported ({})", req.dtype, join(caps.dtypes)));
    }
    // An MLA layer's latent cache has its own dtypes (its fp8 format is not the paged one's).
    let (kv_dtypes, of) = if req.mla { (caps.mla_kv_cache_dtypes, " for MLA's latent cache") } else { (caps.kv_cache_dtypes, "") };
    if !req.mla || !caps.mla_kv_cache_dtypes.is_empty() {
        if !kv_dtypes.contains(&req.kv_cache_dtype) {
            why.push(format!("KV cache dtype {} not supported{of} ({})", req.kv_cache_dtype, join(kv_dtypes)));
        }
    }
    // `head_dims` lists the backend's instantiations: MHA/GQA head dims, or for an
    // MLA-only backend the latent widths; empty means any.
    let dims_and_smem = |why: &mut Vec<String>, what: &str| {
        if !caps.head_dims.is_empty() && !caps.head_dims.contains(&(req.head_dim as u32)) {
            why.push(format!("{what} {} not in [{}]", req.head_dim, join(caps.head_dims)));
        } else if let (Some(smem), Some(cc)) = (caps.shared_memory_bytes, platform.compute_capability()) {
            let (need, limit) = (smem(req.head_dim), max_shared_memory_per_block(cc));
            if need > limit {
                why.push(format!("{what} {} needs {need} bytes of shared memory per block, sm_{cc} allows {limit}", req.head_dim));
            }
        }
    };
    if req.mla {
        if !caps.mla {
            why.push("MLA not supported".to_string());
        } else if !caps.mha {
            dims_and_smem(&mut why, "MLA latent dim");
        }
    } else if !caps.mha {
        why.push("MHA/GQA not supported (serves MLA models only)".to_string());
    } else {
        dims_and_smem(&mut why, "head dim");
    }
    for (wanted, supported, what) in [
        (req.sliding_window, caps.sliding_window, "sliding window"),
        (req.softcap, caps.softcap, "logits soft-cap"),
        (req.alibi, caps.alibi, "ALiBi"),
        (req.chunked, caps.chunked, "chunked local attention"),
        (req.sinks, caps.sinks, "attention sinks"),
        (req.bidirectional, caps.bidirectional, "bidirectional (encoder) attention"),
    ] {
        if wanted && !supported {
            why.push(format!("{what} not supported"));
        }
    }
    if req.bidirectional && req.kv_cache_dtype != KvCacheDType::Auto {
        why.push(format!("a bidirectional (encoder) layer caches nothing: KV cache dtype {} does not apply (use auto)", req.kv_cache_dtype));
    }
    if !block_size_ok(req.block_size, caps.block_sizes) {
        let (lo, hi) = caps.block_sizes;
        why.push(format!("block size {} is not a power of two in [{lo}, {hi}]", req.block_size));
    }
    why
}

/// The chosen backend, why, and why each backend ahead of it in the list was passed over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The backend chosen.
    pub backend: BackendName,
    /// Why, in a sentence (the priority list, the rejections, the kernels).
    pub reason: String,
    /// The backends ahead of it in the priority list, each with why it was passed over.
    pub rejected: Vec<(BackendName, Vec<String>)>,
}

/// `CUDA_PAGED: MLA not supported; CPU: dtype f32 not supported (f16, bf16)`.
fn describe_rejections(rejected: &[(BackendName, Vec<String>)]) -> String {
    rejected.iter().map(|(b, why)| format!("{b}: {}", why.join(", "))).collect::<Vec<_>>().join("; ")
}

/// Picks the backend for `req` on `platform`. Pure: `forced` is the caller's override
/// (blank counts as none); [`select_from_env`] reads it from [`ENV_VAR`].
///
/// - forced, unknown name -> [`AttnError::UnknownBackend`] listing every name;
/// - forced, cannot serve -> [`AttnError::ForcedBackendUnusable`] with its reasons and the
///   backends that could;
/// - otherwise the first backend of [`priority`] with no reasons, or
///   [`AttnError::NoBackend`] with every backend's reasons.
pub fn select(platform: Platform, req: &Requirements, forced: Option<&str>) -> Result<Selection> {
    if let Some(name) = forced.map(str::trim).filter(|s| !s.is_empty()) {
        return select_forced(platform, req, name);
    }
    let list = priority(platform);
    let mut rejected = Vec::new();
    for &backend in list {
        let why = check(backend.caps(), platform, req);
        if why.is_empty() {
            let mut reason = format!("first in the {platform} priority list [{}] that supports {req}", join(list));
            if !rejected.is_empty() {
                reason.push_str(&format!(" (rejected {})", describe_rejections(&rejected)));
            }
            reason.push_str(&format!("; kernels: {}", kernels(backend, platform)));
            return Ok(Selection { backend, reason, rejected });
        }
        tracing::debug!(%backend, %platform, reasons = ?why, "backend rejected");
        rejected.push((backend, why));
    }
    Err(AttnError::NoBackend {
        platform: platform.to_string(),
        reasons: format!("{req} asked; {}", describe_rejections(&rejected)),
    })
}

/// Which kernel serves which rows on `platform`: the backend's row, and on compute
/// capability 9.0 what its Hopper kernels change.
fn kernels(backend: BackendName, platform: Platform) -> String {
    let caps = backend.caps();
    match (caps.on_sm90, platform.compute_capability()) {
        (Some(hopper), Some(90)) => format!("{}; {hopper}", caps.kernels),
        _ => caps.kernels.to_string(),
    }
}

fn select_forced(platform: Platform, req: &Requirements, name: &str) -> Result<Selection> {
    let Some(backend) = BackendName::parse(name) else {
        return Err(AttnError::UnknownBackend { name: name.to_string(), valid: join(&BackendName::ALL) });
    };
    let why = check(backend.caps(), platform, req);
    if why.is_empty() {
        return Ok(Selection {
            backend,
            reason: format!("forced by {ENV_VAR}={backend}; supports {req} on {platform}; kernels: {}", kernels(backend, platform)),
            rejected: Vec::new(),
        });
    }
    let could: Vec<BackendName> =
        BackendName::ALL.into_iter().filter(|b| check(b.caps(), platform, req).is_empty()).collect();
    Err(AttnError::ForcedBackendUnusable {
        name: backend.to_string(),
        platform: platform.to_string(),
        reasons: why.join("; "),
        valid: if could.is_empty() { "none".to_string() } else { join(&could) },
    })
}

/// [`select`] with the override read from `ATTN_BACKEND` (unset or blank = none). Logs the
/// choice with `tracing::info!` once per distinct (platform, requirements, override), so a
/// model that selects per layer does not log per layer.
pub fn select_from_env(platform: Platform, req: &Requirements) -> Result<Selection> {
    let forced = std::env::var_os(ENV_VAR).map(|v| v.to_string_lossy().into_owned());
    let selection = select(platform, req, forced.as_deref())?;

    static LOGGED: OnceLock<Mutex<HashSet<(Platform, Requirements, Option<String>)>>> = OnceLock::new();
    let key = (platform, *req, forced.filter(|s| !s.trim().is_empty()));
    let first_time = LOGGED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(key);
    if first_time {
        tracing::info!(backend = %selection.backend, %platform, reason = %selection.reason, "attention backend selected");
        if platform != Platform::Cpu && selection.backend == BackendName::Cpu {
            tracing::warn!(%platform, rejected = %describe_rejections(&selection.rejected), serves = %gpu_serves(platform), "a GPU is present but serves none of this layer: running on the CPU");
        }
    }
    Ok(selection)
}

/// What the GPU backends serve on `platform`, in a line: dtypes, head dims, KV-cache dtypes
/// (for the message that says why a layer falls back to the CPU on a GPU machine).
pub fn gpu_serves(platform: Platform) -> String {
    priority(platform)
        .iter()
        .filter(|b| !b.caps().cpu)
        .map(|b| {
            let c = b.caps();
            let dims = if c.mha { format!("head dims {}", join(c.head_dims)) } else { "MLA models".to_string() };
            format!("{b}: {}, {dims}, KV cache {}", join(c.dtypes), join(c.kv_cache_dtypes))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One cell of the CLI's `attn select` table.
#[derive(Clone, Debug, PartialEq)]
pub struct MatrixRow {
    /// The platform asked about.
    pub platform: Platform,
    /// The dtype asked for.
    pub dtype: DType,
    /// The model's name.
    pub model: String,
    /// The selection, or the error's message.
    pub result: std::result::Result<Selection, String>,
}

/// The (platform x dtype x model) -> backend table, platform-major then dtype then model.
/// Each model is asked for in each listed dtype (overriding its own), no override applies.
pub fn matrix(platforms: &[Platform], dtypes: &[DType], models: &[ModelConfig], block_size: usize) -> Vec<MatrixRow> {
    let mut rows = Vec::with_capacity(platforms.len() * dtypes.len() * models.len());
    for &platform in platforms {
        for &dtype in dtypes {
            for model in models {
                let req = Requirements { dtype, ..Requirements::for_model(model, block_size) };
                rows.push(MatrixRow {
                    platform,
                    dtype,
                    model: model.name.clone(),
                    result: select(platform, &req, None).map_err(|e| e.to_string()),
                });
            }
        }
    }
    rows
}

/// Parses a platform as the CLI takes it: `cpu`, `sm_90`, `sm90a`, `9.0`, `cuda:8.6`.
/// The last digit of an `sm_` number is the minor version (`sm_100` is 10.0).
pub fn parse_platform(s: &str) -> Option<Platform> {
    let s = s.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Some(Platform::Cpu);
    }
    let s = s.strip_prefix("cuda:").unwrap_or(&s);
    if let Some(sm) = s.strip_prefix("sm_").or_else(|| s.strip_prefix("sm")) {
        let digits = sm.strip_suffix('a').unwrap_or(sm);
        if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (major, minor) = digits.split_at(digits.len() - 1);
        return cuda_platform(major.parse().ok()?, minor.parse().ok()?);
    }
    let (major, minor) = s.split_once('.')?;
    cuda_platform(major.parse().ok()?, minor.parse().ok()?)
}

/// A CUDA platform with a plausible compute capability (major 1..=99, minor 0..=9).
fn cuda_platform(major: u32, minor: u32) -> Option<Platform> {
    ((1..=99).contains(&major) && minor <= 9).then_some(Platform::Cuda { major, minor })
}

#[cfg(test)]
mod smem_tests {
    use super::*;
    use crate::model::preset;

    #[test]
    fn head_dim_256_needs_the_shared_memory_of_sm80_or_sm90() {
        let req = Requirements::for_model(&preset("gemma-2-9b").unwrap(), 16);
        for (major, minor, ok) in [(8, 0, true), (9, 0, true), (8, 6, false), (8, 9, false)] {
            let sel = select(Platform::Cuda { major, minor }, &req, None).unwrap();
            assert_eq!(sel.backend == BackendName::CudaPaged, ok, "sm_{major}{minor}: {}", sel.reason);
            if !ok {
                assert!(sel.reason.contains("shared memory"), "{}", sel.reason);
            }
        }
        let llama = Requirements::for_model(&preset("llama-3-8b").unwrap(), 16);
        assert_eq!(select(Platform::Cuda { major: 8, minor: 6 }, &llama, None).unwrap().backend, BackendName::CudaPaged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::preset;

    const SM90: Platform = Platform::Cuda { major: 9, minor: 0 };
    const SM75: Platform = Platform::Cuda { major: 7, minor: 5 };

    fn req(name: &str) -> Requirements {
        Requirements::for_model(&preset(name).unwrap(), 16)
    }

    #[test]
    fn a_gpu_that_serves_none_of_a_layer_says_why_and_what_it_serves() {
        // Head dim 80 on Hopper: the CPU, with CUDA_PAGED's reason among the rejections.
        let r = Requirements { head_dim: 80, ..req("llama-3-8b") };
        let s = select(SM90, &r, None).unwrap();
        assert_eq!(s.backend, BackendName::Cpu);
        let paged = s.rejected.iter().find(|(b, _)| *b == BackendName::CudaPaged).map(|(_, why)| why.join(", ")).unwrap();
        assert!(paged.contains("head dim 80 not in [64, 96, 128, 256]"), "{paged}");
        let serves = gpu_serves(SM90);
        assert!(serves.contains("CUDA_PAGED: f16, bf16, head dims 64, 96, 128, 256, KV cache auto, fp8_e4m3") && serves.contains("CUDA_MLA: f16, bf16, MLA models"), "{serves}");
        assert!(!serves.contains("CPU"), "{serves}");
    }

    #[test]
    fn priority_lists_cover_every_backend() {
        for b in BackendName::ALL {
            // CUDA_PAGED_PORTABLE only by name: it serves what CUDA_PAGED serves.
            assert!(CUDA_PRIORITY.contains(&b) || matches!(b, BackendName::CudaPagedPortable | BackendName::CudaMlaPortable), "{b} missing from the CUDA priority list");
            assert_eq!(b.caps().name, b, "{b}'s CAPS row names another backend");
            assert_eq!(BackendName::parse(b.as_str()), Some(b));
        }
        assert_eq!(priority(SM90), &[BackendName::CudaPaged, BackendName::CudaMla, BackendName::Cpu]);
        assert_eq!(priority(Platform::Cpu), &[BackendName::Cpu]);
        assert!(priority(Platform::Cpu).iter().all(|b| b.caps().cpu));
    }

    #[test]
    fn llama_bf16_on_sm90_is_cuda_paged() {
        let sel = select(SM90, &req("llama-3-8b"), None).unwrap();
        assert_eq!(sel.backend, BackendName::CudaPaged);
        assert!(sel.rejected.is_empty());
        assert!(sel.reason.contains("CUDA sm_90 priority list [CUDA_PAGED, CUDA_MLA, CPU]"), "{}", sel.reason);
        assert!(sel.reason.contains("bf16, head dim 128, MHA/GQA"), "{}", sel.reason);
        // On compute capability 9.0 the reason says the Hopper prefill serves; the portable
        // backend can be forced for comparison and says it keeps mma.sync.
        assert!(sel.reason.contains("flash_prefill_sm90") && sel.reason.contains("wgmma"), "{}", sel.reason);
        let a100 = select(Platform::Cuda { major: 8, minor: 0 }, &req("llama-3-8b"), None).unwrap();
        assert!(!a100.reason.contains("flash_prefill_sm90"), "{}", a100.reason);
        let forced = select(SM90, &req("llama-3-8b"), Some("cuda_paged_portable")).unwrap();
        assert_eq!(forced.backend, BackendName::CudaPagedPortable);
        assert!(forced.reason.contains("portable mma.sync prefill"), "{}", forced.reason);
    }

    #[test]
    fn llama_on_cpu_is_cpu() {
        let sel = select(Platform::Cpu, &req("llama-3-8b"), None).unwrap();
        assert_eq!(sel.backend, BackendName::Cpu);
    }

    #[test]
    fn feature_models_on_sm90_stay_on_cuda() {
        for name in ["mistral-7b", "gemma-2-9b", "bloom-7b1", "falcon-7b", "mpt-7b"] {
            assert_eq!(select(SM90, &req(name), None).unwrap().backend, BackendName::CudaPaged, "{name}");
        }
    }

    #[test]
    fn deepseek_mla_on_sm90_is_cuda_mla() {
        let r = req("deepseek-v3");
        assert!(r.mla);
        assert_eq!(r.head_dim, 576);
        let sel = select(SM90, &r, None).unwrap();
        assert_eq!(sel.backend, BackendName::CudaMla);
        assert!(sel.reason.contains("MLA (latent dim 576)") && sel.reason.contains("mla_decode"), "{}", sel.reason);
        assert_eq!(sel.rejected, vec![(BackendName::CudaPaged, vec!["MLA not supported".to_string()])]);
        // Before sm_80, and in f32, MLA falls back to the CPU; another latent width has no kernel.
        assert_eq!(select(SM75, &r, None).unwrap().backend, BackendName::Cpu);
        assert_eq!(select(SM90, &Requirements { dtype: DType::F32, ..r }, None).unwrap().backend, BackendName::Cpu);
        let other = Requirements { head_dim: 320, ..r };
        assert_eq!(check(BackendName::CudaMla.caps(), SM90, &other), vec!["MLA latent dim 320 not in [576]"]);
    }

    #[test]
    fn phi3_head_dim_96_is_served_by_the_gpu_and_80_is_not() {
        let sel = select(SM90, &req("phi-3-mini"), None).unwrap();
        assert_eq!(sel.backend, BackendName::CudaPaged);
        assert!(sel.reason.contains("head dim 96") && sel.reason.contains("flash_prefill"), "{}", sel.reason);
        let r = Requirements { head_dim: 80, ..req("phi-3-mini") };
        let sel = select(SM90, &r, None).unwrap();
        assert_eq!(sel.backend, BackendName::Cpu);
        assert!(sel.reason.contains("head dim 80 not in [64, 96, 128, 256]"), "{}", sel.reason);
    }

    #[test]
    fn f32_on_sm90_is_cpu() {
        let r = Requirements { dtype: DType::F32, ..req("llama-3-8b") };
        let sel = select(SM90, &r, None).unwrap();
        assert_eq!(sel.backend, BackendName::Cpu);
        assert!(sel.reason.contains("dtype f32 not supported (f16, bf16)"), "{}", sel.reason);
    }

    #[test]
    fn old_gpu_is_rejected_with_its_capability() {
        let why = check(BackendName::CudaPaged.caps(), SM75, &req("llama-3-8b"));
        assert_eq!(why, vec!["needs CUDA compute capability >= 8.0, platform is CUDA sm_75".to_string()]);
        let why = check(BackendName::CudaPaged.caps(), Platform::Cpu, &req("llama-3-8b"));
        assert_eq!(why, vec!["needs CUDA compute capability >= 8.0, platform is CPU".to_string()]);
        assert!(check(BackendName::Cpu.caps(), SM75, &req("llama-3-8b")).is_empty());
    }

    #[test]
    fn layer_requirements_take_the_layouts_kv_dtype() {
        let spec = crate::spec::AttnSpec::new(8, 2, 128);
        let layout = crate::kv_cache::KvCacheLayout::new(4, 32, 2, 128).unwrap();
        let r = Requirements::for_layer(&spec, DType::Bf16, &layout);
        assert_eq!((r.kv_cache_dtype, r.block_size, r.head_dim), (KvCacheDType::Auto, 32, 128));
        let r = Requirements::for_layer(&spec, DType::Bf16, &layout.with_kv_dtype(KvCacheDType::Fp8E4m3));
        assert_eq!(r.kv_cache_dtype, KvCacheDType::Fp8E4m3);
        assert!(r.to_string().contains("KV cache fp8_e4m3"), "{r}");
        // Every backend's row is checked for the KV-cache dtype: a row without fp8 names it.
        for b in BackendName::ALL {
            let why = check(b.caps(), SM90, &r);
            let named = why.iter().any(|w| w.starts_with("KV cache dtype fp8_e4m3 not supported"));
            assert_eq!(named, !b.caps().kv_cache_dtypes.contains(&KvCacheDType::Fp8E4m3), "{b}: {why:?}");
        }
        assert!(check(BackendName::Cpu.caps(), Platform::Cpu, &r).is_empty(), "the CPU serves fp8 caches");
    }

    #[test]
    fn check_collects_every_reason() {
        let r = Requirements {
            dtype: DType::F32,
            kv_cache_dtype: KvCacheDType::Fp8E4m3,
            head_dim: 80,
            block_size: 24,
            ..req("llama-3-8b")
        };
        // CUDA_MLA's row has an fp8 cache too (its latent rows): no KV dtype reason there.
        let why = check(BackendName::CudaPaged.caps(), Platform::Cpu, &r);
        assert!(!check(BackendName::CudaMla.caps(), SM90, &r).iter().any(|w| w.contains("KV cache dtype")));
        assert_eq!(
            why,
            vec![
                "needs CUDA compute capability >= 8.0, platform is CPU",
                "dtype f32 not supported (f16, bf16)",
                "head dim 80 not in [64, 96, 128, 256]",
                "block size 24 is not a power of two in [1, 256]",
            ]
        );
        let big = Requirements { block_size: 512, ..req("llama-3-8b") };
        assert_eq!(check(BackendName::CudaPaged.caps(), SM90, &big), vec!["block size 512 is not a power of two in [1, 256]"]);
        let zero = Requirements { block_size: 0, ..req("llama-3-8b") };
        assert_eq!(check(BackendName::Cpu.caps(), SM90, &zero).len(), 1);
    }

    #[test]
    fn mla_only_backend_rejects_mha_models() {
        let caps = BackendName::CudaMla.caps();
        assert_eq!(check(caps, SM90, &req("llama-3-8b")), vec!["MHA/GQA not supported (serves MLA models only)"]);
        assert!(check(caps, SM90, &req("deepseek-v3")).is_empty(), "the latent width is the MLA kernel's");
        let no_features =
            BackendCaps { sliding_window: false, softcap: false, alibi: false, ..BackendName::CudaPaged.caps().clone() };
        assert_eq!(check(&no_features, SM90, &req("gemma-2-9b")), vec!["sliding window not supported", "logits soft-cap not supported"]);
        assert_eq!(check(&no_features, SM90, &req("bloom-7b1")), vec!["ALiBi not supported"]);
    }

    #[test]
    fn forced_unknown_lists_all_names() {
        match select(SM90, &req("llama-3-8b"), Some("FLASH_ATTN")) {
            Err(e @ AttnError::UnknownBackend { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("FLASH_ATTN") && msg.contains("CUDA_PAGED") && msg.contains("CPU"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forced_cuda_on_cpu_is_unusable_with_reason() {
        match select(Platform::Cpu, &req("llama-3-8b"), Some("CUDA_PAGED")) {
            Err(AttnError::ForcedBackendUnusable { name, platform, reasons, valid }) => {
                assert_eq!((name.as_str(), platform.as_str(), valid.as_str()), ("CUDA_PAGED", "CPU", "CPU"));
                assert!(reasons.contains("needs CUDA compute capability >= 8.0, platform is CPU"), "{reasons}");
            }
            other => panic!("{other:?}"),
        }
        // Never a silent fallback: MLA forced onto CUDA_PAGED fails even though CPU would serve.
        let e = select(SM90, &req("deepseek-v3"), Some("CUDA_PAGED")).unwrap_err().to_string();
        assert!(e.contains("MLA not supported") && e.contains("Backends that can: CUDA_MLA, CUDA_MLA_PORTABLE, CPU"), "{e}");
    }

    #[test]
    fn forced_name_is_case_insensitive() {
        let sel = select(SM90, &req("llama-3-8b"), Some(" cpu ")).unwrap();
        assert_eq!(sel.backend, BackendName::Cpu);
        assert!(sel.reason.contains("forced"), "{}", sel.reason);
        let sel = select(SM90, &req("llama-3-8b"), Some("cuda_paged")).unwrap();
        assert_eq!(sel.backend, BackendName::CudaPaged);
        // Blank means not forced.
        assert_eq!(select(SM90, &req("phi-3-mini"), Some("  ")).unwrap().backend, BackendName::CudaPaged);
    }

    #[test]
    fn nothing_serves_gives_every_reason() {
        let r = Requirements { block_size: 3, ..req("llama-3-8b") };
        match select(SM90, &r, None) {
            Err(AttnError::NoBackend { platform, reasons }) => {
                assert_eq!(platform, "CUDA sm_90");
                assert!(reasons.contains("CUDA_PAGED: block size 3") && reasons.contains("CPU: block size 3"), "{reasons}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn env_override() {
        // The only test that touches ATTN_BACKEND, so tests running in parallel do not race.
        // SAFETY: no other test in this crate reads or writes this variable.
        unsafe { std::env::set_var(ENV_VAR, "cpu") };
        let forced = select_from_env(SM90, &req("llama-3-8b"));
        unsafe { std::env::set_var(ENV_VAR, "") };
        let blank = select_from_env(SM90, &req("llama-3-8b"));
        unsafe { std::env::set_var(ENV_VAR, "nope") };
        let unknown = select_from_env(SM90, &req("llama-3-8b"));
        unsafe { std::env::remove_var(ENV_VAR) };
        assert_eq!(forced.unwrap().backend, BackendName::Cpu);
        assert_eq!(blank.unwrap().backend, BackendName::CudaPaged);
        assert!(matches!(unknown, Err(AttnError::UnknownBackend { .. })));
    }

    #[test]
    fn matrix_covers_every_combination() {
        let models: Vec<ModelConfig> = crate::model::preset_names().iter().map(|n| preset(n).unwrap()).collect();
        let platforms = [Platform::Cpu, SM75, SM90];
        let dtypes = [DType::F16, DType::Bf16, DType::F32];
        let rows = matrix(&platforms, &dtypes, &models, 16);
        assert_eq!(rows.len(), platforms.len() * dtypes.len() * models.len());
        let find = |p: Platform, d: DType, m: &str| {
            rows.iter().find(|r| r.platform == p && r.dtype == d && r.model == m).unwrap().result.clone().unwrap().backend
        };
        assert_eq!(find(SM90, DType::Bf16, "llama-3-8b"), BackendName::CudaPaged);
        assert_eq!(find(SM90, DType::F32, "llama-3-8b"), BackendName::Cpu);
        assert_eq!(find(SM75, DType::F16, "llama-3-8b"), BackendName::Cpu);
        assert_eq!(find(SM90, DType::Bf16, "deepseek-v3"), BackendName::CudaMla);
        assert_eq!(find(SM90, DType::F32, "deepseek-v3"), BackendName::Cpu);
        // The models people serve now: sinks, chunks and windows on the GPU's paged backend.
        for m in ["gpt-oss-20b", "gpt-oss-120b", "llama-4-scout", "gemma-3-27b", "qwen3-32b"] {
            assert_eq!(find(SM90, DType::Bf16, m), BackendName::CudaPaged, "{m}");
            assert_eq!(find(Platform::Cpu, DType::Bf16, m), BackendName::Cpu, "{m}");
        }
        let req = |m: &str| Requirements::for_model(models.iter().find(|c| c.name == m).unwrap(), 16);
        let (oss, scout) = (req("gpt-oss-120b"), req("llama-4-scout"));
        assert!(oss.sinks && oss.sliding_window && !oss.chunked, "{oss:?}");
        assert!(scout.chunked && !scout.sinks && !scout.sliding_window, "{scout:?}");
        let reason = rows.iter().find(|r| r.platform == SM90 && r.dtype == DType::Bf16 && r.model == "gpt-oss-120b").unwrap().result.clone().unwrap().reason;
        assert!(reason.contains("attention sinks") && reason.contains("sliding window"), "{reason}");
        assert!(rows.iter().all(|r| r.result.is_ok()), "the CPU backend serves everything");
    }

    #[test]
    fn platform_spellings() {
        assert_eq!(parse_platform("CPU"), Some(Platform::Cpu));
        assert_eq!(parse_platform("sm_90"), Some(SM90));
        assert_eq!(parse_platform("sm90a"), Some(SM90));
        assert_eq!(parse_platform("sm_100"), Some(Platform::Cuda { major: 10, minor: 0 }));
        assert_eq!(parse_platform("7.5"), Some(SM75));
        assert_eq!(parse_platform("cuda:8.6"), Some(Platform::Cuda { major: 8, minor: 6 }));
        assert_eq!(parse_platform("sm_9"), None);
        assert_eq!(parse_platform("tpu"), None);
    }
}
