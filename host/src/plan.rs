//! The plan of a step, as data: the limits a step context is sized for, the options a caller
//! may impose, the shape of the layers, and what every layer of the step launches. Pure
//! types: the backends' planners produce them, the step holds them, the CUDA plumbing
//! uploads them; this module imports none of those.

use crate::backend_name::BackendName;
use crate::error::{AttnError, Result};
use crate::metadata::AttentionMetadata;
use crate::spec::AttnSpec;
use std::any::Any;
use std::fmt;

/// Most flash-decoding splits per query token.
pub const MAX_SPLITS: usize = 32;

/// The largest step a [`Step`](crate::step::Step) serves; device buffers are sized from these once.
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
    /// each, in blocks of `block_size`. The workspace follows [`StepLimits::split_rows_for`]:
    /// every request's decode row may be split [`MAX_SPLITS`] ways.
    pub fn new(max_tokens: usize, max_reqs: usize, max_seq_len: usize, block_size: usize) -> StepLimits {
        StepLimits {
            max_tokens,
            max_reqs,
            max_blocks_per_req: max_seq_len.div_ceil(block_size.max(1)),
            split_rows: StepLimits::split_rows_for(max_tokens, max_reqs),
        }
    }

    /// The one rule for the split-KV workspace: `MAX_SPLITS x min(max_tokens, max_reqs)` rows,
    /// so that every request's decode row (a paged decode has one query token a request) may
    /// be split [`MAX_SPLITS`] ways. Prefill rows are not split; an MLA request of several
    /// query tokens (speculative decoding) gets as many splits as the rows allow (its planner
    /// fits them). The engine's constructor ([`StepLimits::new`]) and the one-shot one
    /// ([`StepLimits::for_metadata`]) both use it, so a step's splits do not depend on which
    /// made its limits.
    pub fn split_rows_for(max_tokens: usize, max_reqs: usize) -> usize {
        max_tokens.min(max_reqs).saturating_mul(MAX_SPLITS)
    }

    /// Limits that fit exactly one step's metadata (the one-shot `Attention::forward`).
    pub fn for_metadata(meta: &AttentionMetadata) -> StepLimits {
        let bs = meta.layout().block_size;
        StepLimits::new(meta.num_tokens().max(1), meta.num_reqs().max(1), meta.max_seq_len().max(1), bs)
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
    /// Whole work items packed into at most this many runs a row tile (a block each) in the
    /// Hopper MLA decode's schedule, instead of one item a block: tests of blocks that run
    /// several items. (Cut schedules take as many runs as the SMs hold, or this many.)
    pub persistent_parts: Option<usize>,
}

/// The shape of the layers a step serves (all layers of a model share it), with the score
/// modifiers that choose among a kernel family's instantiations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerShape {
    /// Query heads.
    pub num_q_heads: usize,
    /// KV heads.
    pub num_kv_heads: usize,
    /// The head dim the kernels see (MLA: the latent width).
    pub head_dim: usize,
    /// Logits soft-cap on (its value is the layer's, a kernel argument).
    pub softcap: bool,
    /// ALiBi biases on (the slopes are the layer's).
    pub alibi: bool,
    /// Causal over the cache (`false`: a bidirectional encoder layer over the step's own
    /// K/V, whose plan writes no cache and sends every request to the prefill kernel).
    /// Windows, chunks and sinks do not change a plan: the kernels apply them, so the layers
    /// of a model that differ only in those share one step.
    pub causal: bool,
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
            causal: spec.causal,
        }
    }
    /// Plain multi-head attention of these heads (no soft-cap, no ALiBi).
    pub const fn heads(num_q_heads: usize, num_kv_heads: usize, head_dim: usize) -> LayerShape {
        LayerShape { num_q_heads, num_kv_heads, head_dim, softcap: false, alibi: false, causal: true }
    }
    /// Query heads per KV head.
    pub fn group_size(&self) -> usize {
        self.num_q_heads / self.num_kv_heads.max(1)
    }
}

/// One kernel launch of a layer's step: which kernel, its grid, and how many query tokens
/// it serves (which ones: the backend's [`StepPlan::rows`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelLaunch {
    /// The kernel, by its id in the kernel table (`kernel.name()` is its PTX entry point).
    pub kernel: crate::registry::KernelId,
    /// The launch's grid (x, y, z).
    pub grid: (u32, u32, u32),
    /// Threads per block.
    pub block: u32,
    /// Dynamic shared memory per block, bytes.
    pub shared_mem_bytes: u32,
    /// Query tokens served (the cache write's: the tokens it stores).
    pub tokens: usize,
}

impl fmt::Display for KernelLaunch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (x, y, z) = self.grid;
        write!(f, "{} grid ({x}, {y}, {z}) x {} threads, {} B shared, {}", self.kernel, self.block, self.shared_mem_bytes, crate::text::count(self.tokens, "token"))
    }
}

/// A backend's own part of a step's plan: which rows its kernels serve, in the form they
/// read them. Each backend owns its type (`cuda_paged::PagedRows`, `cuda_mla::MlaRows`; the
/// CPU's is `()`); the plan carries it without knowing it (this module imports no backend).
pub trait PlanRows: fmt::Debug + Send + Sync + 'static {
    /// The rows as `Any`, to read them as their own type.
    fn as_any(&self) -> &dyn Any;
    /// Equal to `other` (rows of another type are not).
    fn same_rows(&self, other: &dyn PlanRows) -> bool;
    /// A boxed copy.
    fn clone_rows(&self) -> Box<dyn PlanRows>;
}

impl<T: fmt::Debug + Clone + PartialEq + Send + Sync + 'static> PlanRows for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn same_rows(&self, other: &dyn PlanRows) -> bool {
        other.as_any().downcast_ref::<T>().is_some_and(|o| o == self)
    }
    fn clone_rows(&self) -> Box<dyn PlanRows> {
        Box::new(self.clone())
    }
}

/// What every layer of a step launches, decided once per step by the backend's planner.
#[derive(Debug)]
pub struct StepPlan {
    /// The backend whose planner made the plan.
    pub backend: BackendName,
    /// Query tokens of the step.
    pub num_tokens: usize,
    /// Requests of the step.
    pub num_reqs: usize,
    /// Flash-decoding splits of each query row's keys (1: no split, no merge).
    pub num_splits: usize,
    /// Per layer, in order (empty on the CPU backend, which launches nothing).
    pub launches: Vec<KernelLaunch>,
    /// Workspace the plan uses (partial outputs and their (max, sum) pairs when split).
    pub workspace_bytes: usize,
    /// The backend's rows (see [`StepPlan::rows`]).
    rows: Box<dyn PlanRows>,
}

impl StepPlan {
    /// A plan of `backend` with its own `rows`.
    pub fn new(backend: BackendName, num_tokens: usize, num_reqs: usize, num_splits: usize, launches: Vec<KernelLaunch>, workspace_bytes: usize, rows: impl PlanRows) -> StepPlan {
        StepPlan { backend, num_tokens, num_reqs, num_splits, launches, workspace_bytes, rows: Box::new(rows) }
    }

    /// The backend's rows, if they are of type `R` (`cuda_paged::PagedRows` for the paged
    /// backends, `cuda_mla::MlaRows` for MLA).
    pub fn rows<R: PlanRows>(&self) -> Option<&R> {
        self.rows.as_any().downcast_ref::<R>()
    }

    /// The launches of kernels of the sm_90a module (wgmma, TMA, the hardware's fp8
    /// conversion): whether, and where, this plan runs Hopper's own kernels.
    pub fn sm90a_launches(&self) -> impl Iterator<Item = &KernelLaunch> {
        self.launches.iter().filter(|l| crate::registry::find(&l.kernel).is_some_and(|k| k.module == crate::registry::Module::Sm90a))
    }

    /// Whether a CUDA graph captured for `self` replays `other`: the same launches (kernel,
    /// grid, rows) and hence the same kernel arguments, the buffers being the step's own.
    pub fn same_launches(&self, other: &StepPlan) -> bool {
        self.backend == other.backend
            && self.num_tokens == other.num_tokens
            && self.num_reqs == other.num_reqs
            && self.launches == other.launches
            && self.rows.same_rows(&*other.rows)
    }
}

impl Clone for StepPlan {
    fn clone(&self) -> StepPlan {
        StepPlan { launches: self.launches.clone(), rows: self.rows.clone_rows(), ..*self }
    }
}

impl PartialEq for StepPlan {
    fn eq(&self, other: &StepPlan) -> bool {
        self.same_launches(other) && self.num_splits == other.num_splits && self.workspace_bytes == other.workspace_bytes
    }
}
impl Eq for StepPlan {}
