//! Decode context parallelism (DCP): one request's KV cache sharded by token position over
//! the ranks of a group, each rank attending over its shard, the partial results merged by
//! their log-sum-exp (vLLM's `decode_context_parallel_size` and
//! `cp_kv_cache_interleave_size`).
//!
//! ```text
//! position p lives on rank (p / interleave) % ranks, at local index
//!     (p / (interleave x ranks)) x interleave + p % interleave
//! ```
//!
//! Positions, causality and lengths stay global; only where a key is stored is sharded. The
//! block table is shared by the ranks (as in vLLM): request r's logical block b names, on
//! every rank, the physical block holding that rank's local keys `[b x block_size, (b + 1)
//! x block_size)` in that rank's own cache. Rank 0 holds the most keys, so a request needs
//! [`DcpGroup::blocks_needed`] block ids.
//!
//! Why the kernels need (almost) no change: under causal full attention a query at global
//! position p sees, on rank r, exactly the local prefix `[0, L_r(p + 1))` of that rank's keys
//! (`L_r(n)`, [`DcpGroup::local_len`], counts rank r's positions below n). So each rank runs
//! its ordinary kernels over metadata where every query token is a request of one token
//! with `seq_len = L_r(p + 1)` ([`DcpMetadata::rank`]); the cache write stores only the
//! rank's own tokens (the others' slots are -1). A token that sees none of a rank's keys
//! runs over a placeholder key and is marked in [`DcpMetadata::keys_seen`], which the merge
//! reads to skip it. Each rank's outputs and log-sum-exps are exchanged ([`Exchange`]: in
//! process, or NCCL's all-gather behind the `nccl` feature) and merged, on the GPU by the
//! `merge_ranks` kernel (`device-kernels/src/merge.rs`), on the host by [`merge_ranks_host`].
//!
//! Sliding windows and chunked local attention stay global: a query at p sees the global
//! keys `[g, p]` (`g` its window's or chunk's first position), which on rank r are the local
//! keys `[L_r(g), L_r(p + 1))`, a contiguous run since `L_r` only grows. So the rank's maps
//! ([`DcpGroup::shard_for`]) give each one-token request that first key
//! ([`AttentionMetadata::first_keys`]), which the decode kernel and the CPU backend take as a
//! floor under the (local, windowless) keys they read; the rank's layer runs without the
//! window.
//!
//! What is sharded: causal multi-head (paged) layers, full, sliding-window or chunked, and
//! causal full-attention MLA layers, any cache dtype, with attention sinks (joined once, in
//! the merge). ALiBi is refused ([`check_spec`]): its bias depends on key positions, which a
//! rank's kernels see as local indices.
//!
//! ```
//! use attn_host::dcp::{DcpAttention, DcpGroup};
//! use attn_host::metadata::{RequestSchedule, SchedulerOutput};
//! use attn_host::{AttnSpec, BackendName, KvCacheLayout};
//! let group = DcpGroup::new(2, 4).unwrap(); // 2 ranks, runs of 4 positions
//! let layout = KvCacheLayout::new(8, 16, 2, 64).unwrap();
//! // 40 cached tokens and 1 new: rank 0 stores 21 of the 41 (positions 0-3, 8-11, ..., 40),
//! // in 2 blocks of 16; every rank reads its own blocks 3 and 5.
//! assert_eq!(group.blocks_needed(41, 16), 2);
//! let step = SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 40, num_new_tokens: 1, block_ids: vec![3, 5] }] };
//! let meta = group.shard(layout, &step).unwrap();
//! assert_eq!((meta.kv_tokens(0), meta.kv_tokens(1)), (21, 20));
//! // Position 40 is rank 0's local key 20: block 5, offset 4; rank 1 writes nothing.
//! assert_eq!((meta.rank(0).slot_mapping(), meta.rank(1).slot_mapping()), (&[5 * 16 + 4][..], &[-1][..]));
//! let mut layer = DcpAttention::<f32>::in_process(BackendName::Cpu, group, AttnSpec::new(8, 2, 64), layout, None).unwrap();
//! let (q, kv) = (vec![0.5f32; 8 * 64], vec![0.25f32; 2 * 64]);
//! let mut out = vec![f32::NAN; q.len()];
//! layer.forward_host(&q, &kv, &kv, &meta, &mut out, None).unwrap();
//! assert!(out.iter().all(|x| x.is_finite()));
//! ```

use crate::backend::BackendName;
use crate::backend::cpu::{merge, PartialState};
use crate::cuda::CudaRuntime;
use crate::cuda_plumbing::{ptr, query_type, DeviceTensors};
use crate::dtype::Element;
use crate::error::{AttnError, Result};
use crate::kv_cache::{HostKvCache, KvCacheLayout};
use crate::layer::Attention;
use crate::metadata::{AttentionMetadata, MetadataBuilder, RequestSchedule, SchedulerOutput};
use crate::params::MergeRanksParams;
use crate::plan::{StepLimits, StepPlan};
use crate::registry::{Family, KernelId, KvType, ScoreMod};
use crate::spec::{AttnSpec, Sinks};
use crate::step::Step;
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use std::sync::Arc;

pub mod check;
#[cfg(feature = "nccl")]
pub mod nccl;

/// The most ranks a group may have.
pub const MAX_RANKS: usize = 64;

/// A context-parallel group: `ranks` shards, `interleave` consecutive positions a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DcpGroup {
    ranks: usize,
    interleave: usize,
}

impl DcpGroup {
    /// A group of `ranks` (1 to [`MAX_RANKS`]) storing runs of `interleave` positions (1 to
    /// 2^20; vLLM's default is 1) in turn.
    pub fn new(ranks: usize, interleave: usize) -> Result<Self> {
        if ranks == 0 || ranks > MAX_RANKS {
            return Err(AttnError::InvalidShard(format!("{ranks} ranks: a group has 1 to {MAX_RANKS}")));
        }
        if interleave == 0 || interleave > 1 << 20 {
            return Err(AttnError::InvalidShard(format!("interleave {interleave}: it must be 1 to 2^20 positions")));
        }
        Ok(DcpGroup { ranks, interleave })
    }
    /// Ranks in the group.
    pub fn ranks(&self) -> usize {
        self.ranks
    }
    /// Consecutive positions stored on one rank.
    pub fn interleave(&self) -> usize {
        self.interleave
    }
    /// The rank that stores position `pos`.
    pub fn owner(&self, pos: usize) -> usize {
        (pos / self.interleave) % self.ranks
    }
    /// Where position `pos` sits among its owner's keys.
    pub fn local_index(&self, pos: usize) -> usize {
        let (i, period) = (self.interleave, self.interleave * self.ranks);
        (pos / period) * i + pos % i
    }
    /// `L_rank(len)`: how many of the positions `[0, len)` rank `rank` stores.
    pub fn local_len(&self, rank: usize, len: usize) -> usize {
        let (i, period) = (self.interleave, self.interleave * self.ranks);
        (len / period) * i + (len % period).saturating_sub(rank * i).min(i)
    }
    /// Block ids a request of `len` tokens needs in the shared block table (rank 0's keys).
    pub fn blocks_needed(&self, len: usize, block_size: usize) -> usize {
        self.local_len(0, len).div_ceil(block_size.max(1))
    }

    /// [`DcpGroup::shard`] for a layer of `spec`: with its sliding window or chunks, each
    /// rank's one-token requests start at the first of their window's keys that the rank
    /// holds (see the module docs). A layer's metadata must come from its own spec's shard:
    /// the layer checks.
    pub fn shard_for(&self, spec: &AttnSpec, layout: KvCacheLayout, step: &SchedulerOutput) -> Result<DcpMetadata> {
        spec.validate()?;
        self.shard_with(layout, step, Some(spec))
    }

    /// Each rank's maps for a step of `step`'s requests over caches of `layout` (every rank's
    /// cache has this layout): validated once for all ranks, before anything runs. Errors
    /// name the request and the value: no new tokens, too few block ids
    /// ([`DcpGroup::blocks_needed`]), a block id outside the cache, a slot written twice or
    /// over another request's context on some rank.
    pub fn shard(&self, layout: KvCacheLayout, step: &SchedulerOutput) -> Result<DcpMetadata> {
        self.shard_with(layout, step, None)
    }

    /// The shard, for `spec`'s window and chunks where given (full attention else).
    fn shard_with(&self, layout: KvCacheLayout, step: &SchedulerOutput, spec: Option<&AttnSpec>) -> Result<DcpMetadata> {
        layout.validate()?;
        let (window, chunk) = spec.map_or((None, None), |s| (s.sliding_window, s.chunk_size));
        let windowed = window.is_some() || chunk.is_some();
        // A query at global position p sees the global keys [first_global(p), p]: the
        // spec's one rule.
        let first_global = |p: usize| spec.map_or(0, |s| s.visible_keys(p, p + 1).start);
        let bs = layout.block_size;
        let mut tokens: Vec<(usize, usize)> = Vec::new();
        for (r, req) in step.requests.iter().enumerate() {
            if req.num_new_tokens == 0 {
                return Err(AttnError::InvalidRequest { request: r, detail: "schedules no new tokens".into() });
            }
            let Some(seq) = req.num_computed_tokens.checked_add(req.num_new_tokens).filter(|&s| s <= i32::MAX as usize) else {
                return Err(AttnError::InvalidRequest { request: r, detail: format!("{} computed + {} new tokens overflow i32", req.num_computed_tokens, req.num_new_tokens) });
            };
            let needed = self.blocks_needed(seq, bs);
            if req.block_ids.len() < needed {
                return Err(AttnError::TooFewBlocks { request: r, tokens: self.local_len(0, seq), needed, given: req.block_ids.len(), block_size: bs });
            }
            tokens.extend((req.num_computed_tokens..seq).map(|p| (r, p)));
            if tokens.len() > i32::MAX as usize {
                return Err(AttnError::InvalidRequest { request: r, detail: format!("the step's {} tokens overflow i32", tokens.len()) });
            }
        }
        // Each rank's share, checked as a step of its own: block ids inside the cache, no slot
        // written twice, no write over a context key of any request, on any rank.
        let builder = MetadataBuilder::new(layout);
        for rank in 0..self.ranks {
            let share = SchedulerOutput {
                requests: step
                    .requests
                    .iter()
                    .map(|q| {
                        let (c, s) = (self.local_len(rank, q.num_computed_tokens), self.local_len(rank, q.num_computed_tokens + q.num_new_tokens));
                        RequestSchedule { num_computed_tokens: c, num_new_tokens: s - c, block_ids: q.block_ids.clone() }
                    })
                    .collect(),
            };
            builder.build_inner(&share, true)?;
        }
        let n = tokens.len();
        let mut ranks = Vec::with_capacity(self.ranks);
        let mut keys_seen = vec![0i32; self.ranks * n];
        for rank in 0..self.ranks {
            // Request r's row on this rank: the block ids its local keys use (at least one,
            // for the placeholder key of a token that sees none of them).
            let row_len = |r: usize| {
                let q = &step.requests[r];
                self.local_len(rank, q.num_computed_tokens + q.num_new_tokens).div_ceil(bs).max(1)
            };
            let stride = (0..step.requests.len()).map(row_len).max().unwrap_or(1);
            let mut seq_lens = Vec::with_capacity(n);
            let mut block_table = vec![0i32; n * stride];
            let mut slot_mapping = Vec::with_capacity(n);
            let mut first_keys = Vec::with_capacity(if windowed { n } else { 0 });
            for (t, &(r, p)) in tokens.iter().enumerate() {
                let ids = &step.requests[r].block_ids;
                let end = self.local_len(rank, p + 1);
                let first = if windowed { self.local_len(rank, first_global(p)) } else { 0 };
                keys_seen[rank * n + t] = (end - first) as i32;
                seq_lens.push(end.max(1) as i32);
                if windowed {
                    // A token that sees none of this rank's keys reads one placeholder key
                    // (the merge skips it): the first key stays below the length.
                    first_keys.push(first.min(end.max(1) - 1) as i32);
                }
                for (dst, &b) in block_table[t * stride..][..row_len(r)].iter_mut().zip(ids) {
                    *dst = b as i32;
                }
                slot_mapping.push(if self.owner(p) == rank {
                    let li = self.local_index(p);
                    (ids[li / bs] as usize * bs + li % bs) as i64
                } else {
                    -1
                });
            }
            let query_start_loc = (0..=n as i32).collect();
            let m = AttentionMetadata::from_trusted(layout, query_start_loc, seq_lens, block_table, stride, slot_mapping);
            ranks.push(if windowed { m.with_first_keys(first_keys) } else { m });
        }
        let kv_tokens = (0..self.ranks)
            .map(|rank| step.requests.iter().map(|q| self.local_len(rank, q.num_computed_tokens + q.num_new_tokens)).sum())
            .collect();
        Ok(DcpMetadata { group: *self, layout, num_tokens: n, ranks, keys_seen, kv_tokens, window, chunk })
    }
}

/// A step's maps for every rank of a group ([`DcpGroup::shard`]).
#[derive(Clone, Debug)]
pub struct DcpMetadata {
    group: DcpGroup,
    layout: KvCacheLayout,
    num_tokens: usize,
    ranks: Vec<AttentionMetadata>,
    keys_seen: Vec<i32>,
    kv_tokens: Vec<usize>,
    /// The window and chunk it was sharded for ([`DcpGroup::shard_for`]).
    window: Option<usize>,
    chunk: Option<usize>,
}

impl DcpMetadata {
    /// That these maps were sharded for a layer of this (window, chunks); an error naming both.
    fn check_visibility(&self, layer: (Option<usize>, Option<usize>)) -> Result<()> {
        if (self.window, self.chunk) != layer {
            return Err(AttnError::InvalidShard(format!(
                "metadata sharded for window {:?} and chunks {:?}; this layer has window {:?} and chunks {:?} (shard with DcpGroup::shard_for and the layer's spec)",
                self.window, self.chunk, layer.0, layer.1
            )));
        }
        Ok(())
    }

    /// The group it was sharded for.
    pub fn group(&self) -> DcpGroup {
        self.group
    }
    /// The caches' layout.
    pub fn layout(&self) -> &KvCacheLayout {
        &self.layout
    }
    /// Query tokens of the step (rows of q, k, v and out, on every rank).
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }
    /// Rank `rank`'s maps: one request a query token, over the rank's local keys.
    pub fn rank(&self, rank: usize) -> &AttentionMetadata {
        &self.ranks[rank]
    }
    /// `i32 [ranks, num_tokens]`: how many of rank r's keys token t sees (0: none; its row on
    /// that rank is not merged).
    pub fn keys_seen(&self) -> &[i32] {
        &self.keys_seen
    }
    /// Keys rank `rank` holds for the step's requests after its cache write.
    pub fn kv_tokens(&self, rank: usize) -> usize {
        self.kv_tokens[rank]
    }
    /// Step limits that serve this step on every rank (each rank's maps have a request a
    /// query token).
    pub fn limits(&self) -> StepLimits {
        let n = self.num_tokens.max(1);
        let longest = self.ranks.iter().map(|m| m.max_seq_len()).max().unwrap_or(1).max(1);
        StepLimits::new(n, n, longest, self.layout.block_size)
    }
}

/// Refuses what DCP does not shard (see the module docs), naming it.
pub fn check_spec(spec: &AttnSpec) -> Result<()> {
    spec.validate()?;
    let refuse = |what: String| Err(AttnError::InvalidShard(format!("{what}: context parallelism shards causal full-attention layers only (their masks depend on no key position a rank sees only locally); run this layer unsharded")));
    if !spec.causal {
        return refuse("a bidirectional (encoder) layer caches nothing".into());
    }
    if spec.mla.is_some() && (spec.sliding_window.is_some() || spec.chunk_size.is_some()) {
        return refuse("an MLA layer with a window or chunks".into());
    }
    if spec.alibi_slopes.is_some() {
        return refuse("ALiBi (its bias depends on key positions)".into());
    }
    Ok(())
}

/// The merge of every rank's partial result on the host: `rank_out[r]` `[tokens, heads,
/// dim]` normalised over rank r's keys, `rank_lse[r]` `[tokens, heads]`; rows whose
/// `keys_seen` is 0 are skipped; `sinks` (one logit a head) join once. Writes the merged
/// output and log-sum-exp.
pub fn merge_ranks_host(rank_out: &[&[f32]], rank_lse: &[&[f32]], keys_seen: &[i32], heads: usize, dim: usize, sinks: Option<&[f32]>, out: &mut [f32], lse: &mut [f32]) {
    let n = lse.len() / heads.max(1);
    for (row, (o, l)) in out.chunks_mut(dim).zip(lse.iter_mut()).enumerate() {
        let (token, head) = (row / heads, row % heads);
        let states: Vec<PartialState> = (0..rank_out.len())
            .filter(|&r| keys_seen[r * n + token] > 0)
            .map(|r| PartialState { m: rank_lse[r][row], l: 1.0, acc: rank_out[r][row * dim..(row + 1) * dim].to_vec() })
            .collect();
        let state = if states.is_empty() { PartialState::empty(dim) } else { merge(&states) };
        let state = state.with_sink(sinks.map_or(f32::NEG_INFINITY, |s| s[head]));
        *l = state.lse();
        o.copy_from_slice(&state.finish());
    }
}

/// How the ranks' partial results reach the merge.
pub enum Exchange {
    /// Every rank in this process, on one device (a GPU, or the CPU), run in turn; the merge
    /// reads each rank's results where the rank wrote them (no copy).
    InProcess,
    /// NCCL's all-gather, one communicator a local rank (`nccl` feature).
    #[cfg(feature = "nccl")]
    Nccl(Vec<cudarc::nccl::safe::Comm>),
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exchange::InProcess => f.write_str("InProcess"),
            #[cfg(feature = "nccl")]
            Exchange::Nccl(c) => write!(f, "Nccl({} local ranks)", c.len()),
        }
    }
}

/// One attention layer sharded over a DCP group: the ranks this process runs, each an
/// [`Attention`] layer with its own cache (its shard), and the exchange.
pub struct DcpAttention<T: Element> {
    group: DcpGroup,
    spec: AttnSpec,
    layout: KvCacheLayout,
    /// The ranks this process runs, from `first_rank` on.
    ranks: Vec<Attention<T>>,
    first_rank: usize,
    exchange: Exchange,
    /// The merge kernel, on each merge site's device (in process: one; NCCL: a local rank's).
    merge_fns: Vec<CudaFunction>,
    merge_id: Option<KernelId>,
}

impl<T: Element> std::fmt::Debug for DcpAttention<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DcpAttention").field("group", &self.group).field("first_rank", &self.first_rank).field("local_ranks", &self.ranks.len()).field("exchange", &self.exchange).finish()
    }
}

/// Row width and heads of a layer's output: MLA's latent `kv_lora_rank` a head, else the
/// head dim.
fn out_shape(spec: &AttnSpec) -> (usize, usize) {
    match &spec.mla {
        Some(m) => (m.num_q_heads, m.kv_lora_rank),
        None => (spec.num_q_heads, spec.head_dim),
    }
}

/// The spec a rank runs: the layer's, without its sinks (the merge joins them once) and
/// without its window and chunks (the rank's maps carry them as each request's first key).
fn rank_spec(spec: &AttnSpec) -> AttnSpec {
    AttnSpec {
        sinks: if matches!(spec.sinks, Sinks::Logits(_)) { Sinks::None } else { spec.sinks.clone() },
        sliding_window: None,
        chunk_size: None,
        ..spec.clone()
    }
}

impl<T: Element> DcpAttention<T> {
    /// All `group.ranks()` ranks in this process, on one device (`gpu`, or the CPU), each
    /// with a cache of `layout` on `backend`: the in-process exchange. What tests and a user
    /// with one GPU who wants the memory split run.
    pub fn in_process(backend: BackendName, group: DcpGroup, spec: AttnSpec, layout: KvCacheLayout, gpu: Option<Arc<CudaRuntime>>) -> Result<Self> {
        check_spec(&spec)?;
        let ranks = (0..group.ranks()).map(|_| Attention::new(backend, rank_spec(&spec), layout, gpu.clone())).collect::<Result<Vec<_>>>()?;
        let (merge_fns, merge_id) = match &gpu {
            Some(rt) if !backend.caps().cpu => {
                let id = merge_ranks_kernel::<T>(backend)?;
                (vec![rt.function(id)?], Some(id))
            }
            _ => (Vec::new(), None),
        };
        tracing::debug!(ranks = group.ranks(), interleave = group.interleave(), %backend, "DCP layer, ranks in process");
        Ok(DcpAttention { group, spec, layout, ranks, first_rank: 0, exchange: Exchange::InProcess, merge_fns, merge_id })
    }

    /// The group.
    pub fn group(&self) -> DcpGroup {
        self.group
    }
    /// The layer's spec (with its sinks).
    pub fn spec(&self) -> &AttnSpec {
        &self.spec
    }
    /// The backend the ranks run on.
    pub fn backend(&self) -> BackendName {
        self.ranks[0].backend()
    }
    /// The ranks this process runs, `[first, first + len)`.
    pub fn local_ranks(&self) -> std::ops::Range<usize> {
        self.first_rank..self.first_rank + self.ranks.len()
    }
    /// The layer of local rank `rank` (a group-wide index): its cache is the rank's shard.
    pub fn rank_layer(&mut self, rank: usize) -> Result<&mut Attention<T>> {
        let r = self.local_ranks();
        if !r.contains(&rank) {
            return Err(AttnError::InvalidShard(format!("rank {rank} is not run by this process (it runs ranks {r:?})")));
        }
        Ok(&mut self.ranks[rank - self.first_rank])
    }

    /// Loads an unsharded cache's keys into the ranks' shards: request r's positions
    /// `[0, lens[r])`, read from `cache` through `unsharded_blocks[r]` and written through
    /// `blocks[r]` (the shared DCP block table) into the owner's cache. Other slots of the
    /// shards are left as they are. Tests, benchmarks and the demo start from a long context
    /// this way.
    pub fn load_context(&mut self, cache: &HostKvCache<T>, unsharded_blocks: &[Vec<u32>], blocks: &[Vec<u32>], lens: &[usize]) -> Result<()> {
        let (bs_u, bs) = (cache.layout.block_size, self.layout.block_size);
        if (cache.layout.num_kv_heads, cache.layout.head_dim) != (self.layout.num_kv_heads, self.layout.head_dim) {
            return Err(AttnError::Shape(format!("context cache rows of {} kv heads x {} dims; the shards hold {} x {}", cache.layout.num_kv_heads, cache.layout.head_dim, self.layout.num_kv_heads, self.layout.head_dim)));
        }
        if lens.len() != unsharded_blocks.len() || lens.len() != blocks.len() {
            return Err(AttnError::LengthMismatch { what: "load_context", detail: format!("{} lengths, {} unsharded block lists, {} DCP block lists", lens.len(), unsharded_blocks.len(), blocks.len()) });
        }
        for (r, &len) in lens.iter().enumerate() {
            let (need_u, need) = (len.div_ceil(bs_u), self.group.blocks_needed(len, bs));
            if unsharded_blocks[r].len() < need_u || blocks[r].len() < need {
                return Err(AttnError::TooFewBlocks { request: r, tokens: len, needed: need.max(need_u), given: blocks[r].len().min(unsharded_blocks[r].len()), block_size: bs });
            }
            let bad = unsharded_blocks[r].iter().map(|&b| (b, cache.layout.num_blocks)).chain(blocks[r].iter().map(|&b| (b, self.layout.num_blocks))).find(|&(b, nb)| b as usize >= nb);
            if let Some((b, nb)) = bad {
                return Err(AttnError::BlockOutOfRange { request: r, logical: 0, block_id: b as i64, num_blocks: nb });
            }
        }
        let (heads, dim) = (self.layout.num_kv_heads, self.layout.head_dim);
        let mla = self.spec.mla.is_some();
        let mut shards: Vec<HostKvCache<T>> = self.ranks.iter().map(|l| l.cache_snapshot()).collect::<Result<_>>()?;
        for (r, &len) in lens.iter().enumerate() {
            for p in 0..len {
                let rank = self.group.owner(p);
                if !self.local_ranks().contains(&rank) {
                    continue;
                }
                let li = self.group.local_index(p);
                let src = unsharded_blocks[r][p / bs_u] as usize * bs_u + p % bs_u;
                let dst = blocks[r][li / bs] as usize * bs + li % bs;
                let shard = &mut shards[rank - self.first_rank];
                for h in 0..heads {
                    let (s, t) = (cache.layout.offset(src, h), self.layout.offset(dst, h));
                    shard.key[t..t + dim].copy_from_slice(&cache.key[s..s + dim]);
                    if !mla {
                        shard.value[t..t + dim].copy_from_slice(&cache.value[s..s + dim]);
                    }
                }
            }
        }
        for (layer, shard) in self.ranks.iter_mut().zip(&shards) {
            layer.load_cache(shard)?;
        }
        Ok(())
    }

    /// Sets every local rank's fp8 KV scales ([`Attention::set_kv_scales`]).
    pub fn set_kv_scales(&mut self, scales: crate::fp8::KvScales) -> Result<()> {
        self.ranks.iter_mut().try_for_each(|l| l.set_kv_scales(scales.clone()))
    }

    fn check_meta(&self, meta: &DcpMetadata) -> Result<()> {
        if meta.group != self.group || meta.layout != self.layout {
            return Err(AttnError::InvalidShard(format!(
                "metadata sharded for {:?} over {:?}; this layer is {:?} over {:?}",
                meta.group, meta.layout, self.group, self.layout
            )));
        }
        meta.check_visibility((self.spec.sliding_window, self.spec.chunk_size))
    }

    /// One step on host tensors, every rank in this process ([`Exchange::InProcess`]): each
    /// rank writes its own tokens of `k`, `v` into its shard and attends `q` over it; the
    /// results merge into `out` (and the log-sum-exp into `lse`, when given). On a GPU backend
    /// the ranks' runs copy through the device (tests, the demo).
    pub fn forward_host(&mut self, q: &[T], k: &[T], v: &[T], meta: &DcpMetadata, out: &mut [T], lse: Option<&mut [f32]>) -> Result<()> {
        self.check_meta(meta)?;
        if !matches!(self.exchange, Exchange::InProcess) {
            return Err(AttnError::InvalidShard("forward_host runs every rank in this process: use forward_device with an NCCL exchange".into()));
        }
        let (heads, dim) = out_shape(&self.spec);
        let n = meta.num_tokens();
        if out.len() != n * heads * dim {
            return Err(AttnError::LengthMismatch { what: "out", detail: format!("{} elements for {n} tokens x {heads} heads x {dim}", out.len()) });
        }
        let mut outs = Vec::with_capacity(self.ranks.len());
        let mut lses = Vec::with_capacity(self.ranks.len());
        for (rank, layer) in self.ranks.iter_mut().enumerate() {
            let m = meta.rank(rank);
            let mut step = layer.new_step(StepLimits::for_metadata(m))?;
            step.prepare(m)?;
            let mut o = vec![T::default(); n * heads * dim];
            let mut l = vec![0.0f32; n * heads];
            layer.forward_host_lse(&step, q, k, v, &mut o, &mut l)?;
            outs.push(o.iter().map(|x| x.to_f32()).collect::<Vec<f32>>());
            lses.push(l);
        }
        let outs_ref: Vec<&[f32]> = outs.iter().map(|o| o.as_slice()).collect();
        let lses_ref: Vec<&[f32]> = lses.iter().map(|l| l.as_slice()).collect();
        let mut merged = vec![0.0f32; out.len()];
        let mut merged_lse = vec![0.0f32; n * heads];
        merge_ranks_host(&outs_ref, &lses_ref, meta.keys_seen(), heads, dim, self.spec.sink_logits(), &mut merged, &mut merged_lse);
        for (o, x) in out.iter_mut().zip(merged) {
            *o = T::from_f32(x);
        }
        if let Some(l) = lse {
            l.copy_from_slice(&merged_lse);
        }
        Ok(())
    }

    /// A step context for the local ranks, sized for `limits` (every rank's share of the
    /// largest step: [`DcpMetadata::limits`] of it): each rank's [`Step`], its output and
    /// log-sum-exp, and the gathered buffers the merge reads. Allocated once.
    pub fn new_step(&self, limits: StepLimits) -> Result<DcpStep<T>> {
        let (heads, dim) = out_shape(&self.spec);
        let steps = self.ranks.iter().map(|l| l.new_step(limits.clone())).collect::<Result<Vec<_>>>()?;
        let runtimes = self.runtimes()?;
        let (t, n) = (limits.max_tokens, self.group.ranks());
        let mut rank_out = Vec::new();
        let mut rank_lse = Vec::new();
        for rt in &runtimes {
            rank_out.push(rt.stream().clone_htod(&vec![T::default(); t * heads * dim])?);
            rank_lse.push(rt.stream().alloc_zeros::<f32>(t * heads)?);
        }
        // The merge sites: the one device in process; each local rank's under NCCL.
        let sites: Vec<&Arc<CudaRuntime>> = match self.exchange {
            Exchange::InProcess => runtimes.iter().take(1).collect(),
            #[cfg(feature = "nccl")]
            Exchange::Nccl(_) => runtimes.iter().collect(),
        };
        let mut gathered = Vec::new();
        let mut sinks = Vec::new();
        let in_process = matches!(self.exchange, Exchange::InProcess);
        for rt in sites {
            let s = rt.stream();
            // In process the merge reads the ranks' own buffers: their addresses, fixed for the
            // step's life. Under NCCL it reads the gathered buffers, at offsets that depend on
            // the step's token count (DcpStep::prepare writes them).
            let (out, lse, tables) = if in_process {
                let mut table: Vec<u64> = rank_out.iter().map(|o| ptr(o, s)).collect();
                table.extend(rank_lse.iter().map(|l| ptr(l, s)));
                (None, None, s.clone_htod(&table)?)
            } else {
                (Some(s.clone_htod(&vec![T::default(); n * t * heads * dim])?), Some(s.alloc_zeros::<f32>(n * t * heads)?), s.alloc_zeros::<u64>(2 * n)?)
            };
            gathered.push(Gathered { out, lse, tables, keys_seen: s.alloc_zeros::<i32>(n * t)? });
            if let Some(logits) = self.spec.sink_logits() {
                sinks.push(s.clone_htod(logits)?);
            }
        }
        let visibility = (self.spec.sliding_window, self.spec.chunk_size);
        Ok(DcpStep { group: self.group, first_rank: self.first_rank, steps, rank_out, rank_lse, gathered, sinks, limits, num_tokens: None, runtimes, visibility })
    }

    /// Captures one step's launches (every local rank's, the exchange's copies and the merge)
    /// into a CUDA graph, for later steps of the same launches ([`DcpGraph::replay`]). One
    /// device only: in process, or NCCL with one local rank (NCCL's collectives capture).
    pub fn capture(&mut self, step: &mut DcpStep<T>, q: &CudaSlice<T>, k: &CudaSlice<T>, v: &CudaSlice<T>, out: &mut CudaSlice<T>, lse: Option<&mut CudaSlice<f32>>) -> Result<DcpGraph> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        if step.gathered.len() != 1 || step.runtimes.iter().any(|rt| !Arc::ptr_eq(rt, &step.runtimes[0])) {
            return Err(AttnError::InvalidShard("a captured DCP step runs on one device (in process, or one NCCL rank a process)".into()));
        }
        let num_tokens = step.num_tokens.ok_or_else(|| AttnError::InvalidConfig("the DCP step was not prepared: call DcpStep::prepare(&metadata) first".into()))?;
        let plans = step.steps.iter().map(|s| s.plan().cloned()).collect::<Option<Vec<StepPlan>>>().ok_or_else(|| AttnError::InvalidConfig("a rank's step was not prepared".into()))?;
        let stream = step.runtimes[0].stream().clone();
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let recorded = self.forward_device(step, q, k, v, out, lse);
        let graph = stream.end_capture(CUgraphInstantiate_flags(0));
        recorded?;
        let graph = graph?.ok_or_else(|| AttnError::InvalidConfig("the capture recorded no launch".into()))?;
        Ok(DcpGraph { graph, plans, num_tokens })
    }

    /// Each local rank's CUDA runtime (an error for host ranks).
    pub fn local_runtimes(&self) -> Result<Vec<Arc<CudaRuntime>>> {
        self.runtimes()
    }

    /// Devices the merge runs on: one in process, each local rank's under NCCL.
    pub fn merge_sites(&self) -> usize {
        match &self.exchange {
            Exchange::InProcess => 1,
            #[cfg(feature = "nccl")]
            Exchange::Nccl(c) => c.len(),
        }
    }

    fn runtimes(&self) -> Result<Vec<Arc<CudaRuntime>>> {
        self.ranks.iter().map(|l| l.runtime().ok_or_else(|| AttnError::InvalidShard(format!("backend {} runs on the host: use forward_host", l.backend())))).collect()
    }

    /// One step on device tensors, launches only (capturable: [`DcpAttention::capture`]):
    /// every local rank writes its tokens of `k`, `v` into its shard and attends `q` over
    /// it, the exchange gathers the ranks' results, and the merge writes `out` (and `lse`).
    /// In process, one set of tensors on the one device; under NCCL, one set a local rank
    /// ([`DcpAttention::forward_devices`]).
    pub fn forward_device(&mut self, step: &mut DcpStep<T>, q: &CudaSlice<T>, k: &CudaSlice<T>, v: &CudaSlice<T>, out: &mut CudaSlice<T>, lse: Option<&mut CudaSlice<f32>>) -> Result<()> {
        self.forward_devices(step, &mut [DeviceTensors { q, k, v, out, lse }])
    }

    /// [`DcpAttention::forward_device`] with one set of tensors a device: in process one
    /// (every rank reads the same q, k, v), under NCCL one a local rank.
    pub fn forward_devices(&mut self, step: &mut DcpStep<T>, tensors: &mut [DeviceTensors<'_, T>]) -> Result<()> {
        self.check_tensors(step, tensors)?;
        self.attend_ranks(step, tensors)?;
        self.exchange(step)?;
        self.merge(step, tensors)
    }

    /// The prepared step's token count, and `tensors` checked against it: one set a merge
    /// site, out and lse holding the step's rows.
    fn check_tensors(&self, step: &DcpStep<T>, tensors: &[DeviceTensors<'_, T>]) -> Result<usize> {
        let n = step.num_tokens.ok_or_else(|| AttnError::InvalidConfig("the DCP step was not prepared: call DcpStep::prepare(&metadata) first".into()))?;
        let sites = step.gathered.len();
        if tensors.len() != sites {
            return Err(AttnError::InvalidShard(format!("{} tensor sets for {sites} devices (in process: one; NCCL: one a local rank)", tensors.len())));
        }
        let (heads, dim) = out_shape(&self.spec);
        for t in tensors {
            crate::cuda_plumbing::check_rows("out", t.out.len(), n, heads * dim)?;
            if let Some(l) = &t.lse {
                crate::cuda_plumbing::check_rows("lse", l.len(), n, heads)?;
            }
        }
        Ok(n)
    }

    /// The first phase of [`DcpAttention::forward_devices`]: each local rank writes its tokens
    /// into its shard and attends over it, its result into the step's own buffers.
    pub fn attend_ranks(&mut self, step: &mut DcpStep<T>, tensors: &[DeviceTensors<'_, T>]) -> Result<()> {
        self.check_tensors(step, tensors)?;
        let sites = step.gathered.len();
        for (i, layer) in self.ranks.iter_mut().enumerate() {
            let t = &tensors[if sites == 1 { 0 } else { i }];
            layer.forward_device_lse(&step.steps[i], t.q, t.k, t.v, &mut step.rank_out[i], &mut step.rank_lse[i])?;
        }
        Ok(())
    }

    /// The second phase: every rank's result to each merge site (NCCL's all-gather into the
    /// gathered buffers; in process nothing moves: the merge reads the ranks' own buffers).
    pub fn exchange(&mut self, step: &mut DcpStep<T>) -> Result<()> {
        let n = step.num_tokens.ok_or_else(|| AttnError::InvalidConfig("the DCP step was not prepared: call DcpStep::prepare(&metadata) first".into()))?;
        let (heads, dim) = out_shape(&self.spec);
        match &self.exchange {
            Exchange::InProcess => {
                let _ = (n, heads, dim);
            }
            #[cfg(feature = "nccl")]
            Exchange::Nccl(comms) => nccl::all_gather(comms, &step.rank_out, &step.rank_lse, &mut step.gathered, n * heads * dim, n * heads)?,
        }
        Ok(())
    }

    /// The last phase: the merge of the gathered results into each site's `out` (and lse).
    pub fn merge(&mut self, step: &mut DcpStep<T>, tensors: &mut [DeviceTensors<'_, T>]) -> Result<()> {
        let n = self.check_tensors(step, tensors)?;
        let (heads, dim) = out_shape(&self.spec);
        let ranks = self.group.ranks();
        let id = self.merge_id.ok_or_else(|| AttnError::InvalidShard("the ranks run on the host: use forward_host".into()))?;
        for (site, t) in tensors.iter_mut().enumerate() {
            let stream = step.runtimes[site].stream().clone();
            let g = &step.gathered[site];
            let sinks_ptr = step.sinks.get(site).map_or(0, |s| ptr(s, &stream));
            let table = ptr(&g.tables, &stream);
            let p = MergeRanksParams {
                rank_out: table,
                rank_lse: table + 8 * ranks as u64,
                keys_seen: ptr(&g.keys_seen, &stream),
                sinks: sinks_ptr,
                out: ptr(t.out, &stream),
                lse: t.lse.as_ref().map_or(0, |l| ptr(l, &stream)),
                num_ranks: ranks as u32,
                num_tokens: n as u32,
                num_heads: heads as u32,
                head_dim: dim as u32,
            };
            let cfg = LaunchConfig { grid_dim: (n as u32, heads as u32, 1), block_dim: (dim as u32 / 8, 1, 1), shared_mem_bytes: 0 };
            tracing::trace!(kernel = %id, tokens = n, ranks, "DCP merge");
            // SAFETY: the tables point at every rank's rows of this step (its own buffers, or the
            // gathered ones the exchange filled, on this stream), keys_seen holds the step's
            // counts (DcpStep::prepare), out and lse at least the step's rows (checked above).
            unsafe { stream.launch_builder(&self.merge_fns[site]).arg(&p).launch(cfg) }?;
        }
        Ok(())
    }
}


/// What one merge site reads: the gathered buffers (NCCL only: `[ranks, tokens, ...]`),
/// the tables of where each rank's rows start (`u64 [2 ranks]`: outputs, then log-sum-exps)
/// and the step's keys seen.
pub(crate) struct Gathered<T> {
    pub(crate) out: Option<CudaSlice<T>>,
    pub(crate) lse: Option<CudaSlice<f32>>,
    tables: CudaSlice<u64>,
    keys_seen: CudaSlice<i32>,
}

/// The per-step state of a [`DcpAttention`]'s local ranks on the GPU
/// ([`DcpAttention::new_step`]): prepared once a step, for every layer.
pub struct DcpStep<T> {
    group: DcpGroup,
    first_rank: usize,
    steps: Vec<Step>,
    rank_out: Vec<CudaSlice<T>>,
    rank_lse: Vec<CudaSlice<f32>>,
    gathered: Vec<Gathered<T>>,
    sinks: Vec<CudaSlice<f32>>,
    limits: StepLimits,
    num_tokens: Option<usize>,
    runtimes: Vec<Arc<CudaRuntime>>,
    /// The layer's (window, chunks): its metadata must be sharded for them.
    visibility: (Option<usize>, Option<usize>),
}

impl<T> DcpStep<T> {
    /// Plans this step on every local rank and uploads its maps (each rank's, and the merge's
    /// `keys_seen`); a step beyond the limits is an error naming the limit.
    pub fn prepare(&mut self, meta: &DcpMetadata) -> Result<()> {
        if meta.group != self.group {
            return Err(AttnError::InvalidShard(format!("metadata sharded for {:?}; this step serves {:?}", meta.group, self.group)));
        }
        meta.check_visibility(self.visibility)?;
        let n = meta.num_tokens();
        if n > self.limits.max_tokens {
            return Err(AttnError::StepTooLarge(format!("{n} tokens > max_tokens = {}", self.limits.max_tokens)));
        }
        for (i, step) in self.steps.iter_mut().enumerate() {
            step.prepare(meta.rank(self.first_rank + i))?;
        }
        let ranks = self.group.ranks();
        for (site, g) in self.gathered.iter_mut().enumerate() {
            let s = self.runtimes[site].stream();
            s.memcpy_htod(meta.keys_seen(), &mut g.keys_seen.slice_mut(..ranks * n))?;
            // The gathered buffers' layout depends on the token count: rank r's rows at r x n rows.
            if let (Some(out), Some(lse)) = (&g.out, &g.lse) {
                let row_bytes = (out.len() / (ranks * self.limits.max_tokens)) * std::mem::size_of::<T>();
                let (o, l) = (ptr(out, s), ptr(lse, s));
                let lse_row_bytes = (lse.len() / (ranks * self.limits.max_tokens)) * 4;
                let mut table: Vec<u64> = (0..ranks).map(|r| o + (r * n * row_bytes) as u64).collect();
                table.extend((0..ranks).map(|r| l + (r * n * lse_row_bytes) as u64));
                s.memcpy_htod(&table, &mut g.tables)?;
            }
        }
        self.num_tokens = Some(n);
        Ok(())
    }

    /// Local rank `i`'s step (its plan: `step(i).plan()`).
    pub fn rank_step(&self, i: usize) -> &Step {
        &self.steps[i]
    }
}

/// The kernel table's context-parallel merge for queries of `T`.
fn merge_ranks_kernel<T: Element>(backend: BackendName) -> Result<KernelId> {
    Ok(KernelId { family: Family::MergeRanks, q: query_type(T::DTYPE, backend.as_str())?, kv: KvType::Native, head_dim: 0, score: ScoreMod::Plain, stages: 0 })
}

/// A captured DCP step ([`DcpAttention::capture`]).
pub struct DcpGraph {
    graph: cudarc::driver::CudaGraph,
    plans: Vec<StepPlan>,
    num_tokens: usize,
}

impl DcpGraph {
    /// Replays the graph for `step`'s current plans (prepared with the next metadata); an
    /// error, with nothing launched, if any rank's plan launches differ from the captured
    /// ones or the step has another token count.
    pub fn replay<T>(&self, step: &DcpStep<T>) -> Result<()> {
        let same = step.num_tokens == Some(self.num_tokens) && step.steps.iter().zip(&self.plans).all(|(s, p)| s.plan().is_some_and(|q| q.same_launches(p)));
        if !same {
            return Err(AttnError::InvalidConfig("the DCP step's plans launch other kernels, grids or rows than the captured ones: capture it again".into()));
        }
        self.graph.launch()?;
        Ok(())
    }
}
