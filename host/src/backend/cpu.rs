//! CPU backend (rayon): the same algorithm as the GPU's paged kernels, on host memory.
//!
//! A step is: check every shape against the layer, write this step's K/V into the paged
//! cache through the slot mapping (negative slots skipped), then for every (token, query
//! head) in parallel run an online softmax in f32 over the request's visible keys, read
//! through its block table a page at a time. With `num_splits > 1` each row's keys are cut
//! into partitions whose mergeable states ([`PartialState`]) are combined by [`merge`]; the
//! cut is the GPU kernel's ([`split_range`]: whole 16-key tiles, aligned to absolute key
//! positions, `ceil(tiles / splits)` tiles per split). The split count is the plan's
//! ([`plan`]): 1 unless the caller forces one; the CPU has no occupancy to balance.
//!
//! ```
//! use attn_host::backend::cpu::CpuImpl;
//! use attn_host::{AttentionImpl, AttnSpec, KvCacheLayout, MetadataBuilder, RequestSchedule, SchedulerOutput};
//! let spec = AttnSpec::new(2, 1, 4);
//! let layout = KvCacheLayout::new(4, 2, 1, 4).unwrap();
//! let mut attn = CpuImpl::<f32>::new(spec, layout).unwrap();
//! let sched = SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 0, num_new_tokens: 3, block_ids: vec![2, 0] }] };
//! let meta = MetadataBuilder::new(layout).build(&sched).unwrap();
//! let (q, kv) = (vec![0.5f32; 3 * 2 * 4], vec![0.25f32; 3 * 4]);
//! let mut out = vec![0.0f32; q.len()];
//! attn.forward_split(&q, &kv, &kv, &meta, &mut out, 1).unwrap();
//! assert!(out.iter().all(|&x| (x - 0.25).abs() < 1e-6));
//! ```

use super::{AttentionImpl, BackendCaps, BackendName};
use crate::dtype::{DType, Element, KvCacheDType};
use crate::error::{AttnError, Result};
use crate::kv_cache::{HostKvCache, KvCacheLayout};
use crate::metadata::AttentionMetadata;
use crate::params::PAGED_TILE;
use crate::spec::{AttnSpec, MlaSpec};
use crate::step::{LayerShape, PlanOptions, Step, StepPlan};
use rayon::prelude::*;
use std::ops::Range;

pub static CAPS: BackendCaps = BackendCaps {
    name: BackendName::Cpu,
    min_compute_capability: None,
    cpu: true,
    dtypes: &[DType::F16, DType::Bf16, DType::F32],
    kv_cache_dtypes: &[KvCacheDType::Auto],
    head_dims: &[],
    mha: true,
    mla: true,
    sliding_window: true,
    softcap: true,
    alibi: true,
    block_sizes: (1, 1024),
    shared_memory_bytes: None,
    kernels: "every row (decode or prefill) -> an f32 online softmax per (token, query head) on rayon, through the block table",
    on_sm90: None,
};

/// Initial running max: finite (as on the GPU), so that merging empty states gives 0, not NaN.
pub const NEG_INIT: f32 = -1.0e30;

/// Keys scored per softmax rescale (within one page).
const CHUNK: usize = 32;

/// The mergeable state of an online softmax over some keys (natural-log units):
/// running max `m` of the scores, denominator `l = sum exp(s - m)`, and the unnormalised
/// accumulator `acc = sum exp(s - m) v`. An empty state has `m = NEG_INIT`, `l = 0`, `acc = 0`.
#[derive(Clone, Debug, PartialEq)]
pub struct PartialState {
    pub m: f32,
    pub l: f32,
    pub acc: Vec<f32>,
}

impl PartialState {
    /// The state of no keys, for values of `dv` dims.
    pub fn empty(dv: usize) -> Self {
        PartialState { m: NEG_INIT, l: 0.0, acc: vec![0.0; dv] }
    }

    pub fn is_empty(&self) -> bool {
        self.l == 0.0
    }

    /// The attention output `acc / l`; zeros for an empty state.
    pub fn finish(&self) -> Vec<f32> {
        let inv = if self.l > 0.0 { 1.0 / self.l } else { 0.0 };
        self.acc.iter().map(|&a| a * inv).collect()
    }

    /// Log-sum-exp of the scores, `m + ln l`; `-inf` for an empty state.
    pub fn lse(&self) -> f32 {
        if self.l > 0.0 { self.m + self.l.ln() } else { f32::NEG_INFINITY }
    }
}

/// Combines states of disjoint key sets into the state of their union. The result does not
/// depend on the order (up to rounding); empty states contribute nothing; merging merged
/// states (a tree) is the same as merging all at once. No states: an empty state of 0 dims.
pub fn merge(states: &[PartialState]) -> PartialState {
    let dv = states.first().map_or(0, |s| s.acc.len());
    let m = states.iter().fold(NEG_INIT, |m, s| m.max(s.m));
    let mut out = PartialState { m, l: 0.0, acc: vec![0.0; dv] };
    for s in states {
        assert_eq!(s.acc.len(), dv, "merged states must have the same value width");
        let w = (s.m - m).exp();
        out.l += s.l * w;
        for (o, &a) in out.acc.iter_mut().zip(&s.acc) {
            *o += a * w;
        }
    }
    out
}

/// The keys a query at `q_pos` sees: `[q_pos + 1 - window, q_pos + 1)` (from 0 without a window).
pub fn visible_keys(q_pos: usize, window: Option<usize>) -> Range<usize> {
    let end = q_pos + 1;
    let begin = window.map_or(0, |w| end.saturating_sub(w));
    begin..end
}

/// Split `split` of `num_splits` parts of `keys`, cut as the GPU's paged kernel cuts them:
/// the 16-key tiles (`PAGED_TILE`, aligned to absolute key positions) that `keys` touches are
/// dealt `ceil(tiles / num_splits)` to a split, and each split keeps its tiles' part of
/// `keys`; trailing splits may be empty.
/// Example: keys 3..40 touch tiles 0, 1, 2; in 2 splits: 3..32 and 32..40.
pub fn split_range(keys: Range<usize>, num_splits: usize, split: usize) -> Range<usize> {
    let tile = PAGED_TILE as usize;
    if keys.is_empty() {
        return keys.end..keys.end;
    }
    let first = keys.start / tile;
    let tiles = keys.end.div_ceil(tile) - first;
    let per = tiles.div_ceil(num_splits.max(1));
    let (t0, t1) = ((first + split * per).min(first + tiles), (first + (split + 1) * per).min(first + tiles));
    let start = (t0 * tile).clamp(keys.start, keys.end);
    start..(t1 * tile).clamp(start, keys.end)
}

/// The CPU backend's plan: no launches; the split count is forced or 1.
pub fn plan(meta: &AttentionMetadata, opts: &PlanOptions) -> Result<StepPlan> {
    let num_splits = match opts.force_splits {
        Some(0) => return Err(AttnError::InvalidConfig("num_splits must be at least 1".into())),
        Some(s) => s,
        None => 1,
    };
    Ok(StepPlan {
        backend: BackendName::Cpu,
        num_tokens: meta.num_tokens(),
        num_reqs: meta.num_reqs(),
        num_splits,
        launches: Vec::new(),
        decode_tokens: Vec::new(),
        prefill_tiles: Vec::new(),
        workspace_bytes: 0,
        key_splits: Vec::new(),
        chunk_keys: 0,
        token_splits: Vec::new(),
    })
}

/// How one query row's scores are formed.
struct Scoring {
    scale: f32,
    softcap: Option<f32>,
    slope: Option<f32>,
}

/// Where the keys and values of a paged cache live, for one kv head.
struct KvSource<'a, T> {
    keys: &'a [T],
    /// Value rows: `dv` elements at the same offsets as the keys (the MLA latent cache
    /// passes its key cache here, values being the first `kv_lora_rank` dims).
    values: &'a [T],
    dv: usize,
    layout: &'a KvCacheLayout,
    kv_head: usize,
    block_ids: &'a [i32],
}

/// Online softmax of one query row over the key positions `keys`, a page (at most `CHUNK`
/// keys) at a time: score the chunk, rescale the state once to the new max, accumulate.
fn attend_core<T: Element>(q: &[f32], q_pos: usize, sc: &Scoring, src: &KvSource<T>, keys: Range<usize>) -> PartialState {
    let (bs, d) = (src.layout.block_size, src.layout.head_dim);
    let mut st = PartialState::empty(src.dv);
    let mut scores = [0.0f32; CHUNK];
    let mut j = keys.start;
    while j < keys.end {
        let page_base = src.block_ids[j / bs] as usize * bs;
        let end = ((j / bs + 1) * bs).min(keys.end).min(j + CHUNK);
        let mut mx = st.m;
        for (t, s) in (j..end).zip(scores.iter_mut()) {
            let off = src.layout.offset(page_base + t % bs, src.kv_head);
            let dot: f32 = q.iter().zip(&src.keys[off..off + d]).map(|(a, b)| a * b.to_f32()).sum();
            let mut x = dot * sc.scale;
            if let Some(cap) = sc.softcap {
                x = cap * (x / cap).tanh();
            }
            if let Some(slope) = sc.slope {
                x += slope * (t as i64 - q_pos as i64) as f32;
            }
            *s = x;
            mx = mx.max(x);
        }
        let r = (st.m - mx).exp();
        st.m = mx;
        st.l *= r;
        for a in st.acc.iter_mut() {
            *a *= r;
        }
        for (t, &s) in (j..end).zip(scores.iter()) {
            let off = src.layout.offset(page_base + t % bs, src.kv_head);
            let p = (s - mx).exp();
            st.l += p;
            for (a, v) in st.acc.iter_mut().zip(&src.values[off..off + src.dv]) {
                *a += p * v.to_f32();
            }
        }
        j = end;
    }
    st
}

/// The state of one (query token, query head) over the key positions `keys` (a sub-range
/// of its visible keys) of a request whose blocks are `block_ids`. `q` is the head's query
/// row in f32; `q_pos` its absolute position (for ALiBi); `head` the query head.
pub fn attend_partition<T: Element>(
    q: &[f32],
    q_pos: usize,
    head: usize,
    spec: &AttnSpec,
    cache: &HostKvCache<T>,
    block_ids: &[i32],
    keys: Range<usize>,
) -> PartialState {
    let sc = Scoring {
        scale: spec.scale,
        softcap: spec.softcap,
        slope: spec.alibi_slopes.as_ref().map(|s| s[head]),
    };
    let src = KvSource {
        keys: &cache.key,
        values: &cache.value,
        dv: cache.layout.head_dim,
        layout: &cache.layout,
        kv_head: head / spec.group_size(),
        block_ids,
    };
    attend_core(q, q_pos, &sc, &src, keys)
}

/// For each query token: its request and absolute position.
fn token_positions(meta: &AttentionMetadata) -> Vec<(usize, usize)> {
    let mut v = Vec::with_capacity(meta.num_tokens());
    for r in 0..meta.num_reqs() {
        let ctx = meta.context_len(r);
        v.extend((0..meta.query_len(r)).map(|i| (r, ctx + i)));
    }
    v
}

fn check_len(what: &'static str, got: usize, tokens: usize, heads: usize, dim: usize, heads_name: &str) -> Result<()> {
    let want = tokens.checked_mul(heads).and_then(|x| x.checked_mul(dim));
    if want == Some(got) {
        return Ok(());
    }
    let want = want.map_or("more than usize can hold".to_string(), |w| w.to_string());
    Err(AttnError::LengthMismatch {
        what,
        detail: format!("{got} elements, but {tokens} tokens x {heads} {heads_name} x {dim} head dim = {want}"),
    })
}

fn check_layout(meta: &AttentionMetadata, cache: &KvCacheLayout) -> Result<()> {
    if meta.layout() == cache {
        return Ok(());
    }
    Err(AttnError::Shape(format!(
        "metadata was built for cache layout {:?}, but this cache is {:?}",
        meta.layout(),
        cache
    )))
}

/// The CPU `AttentionImpl`: one layer's spec and its paged cache in host memory.
#[derive(Clone, Debug)]
pub struct CpuImpl<T> {
    spec: AttnSpec,
    cache: HostKvCache<T>,
}

impl<T: Element> CpuImpl<T> {
    /// A layer with a zeroed cache of `layout`, whose kv heads and head dim must be the spec's.
    pub fn new(spec: AttnSpec, layout: KvCacheLayout) -> Result<Self> {
        layout.validate()?;
        Self::with_cache(spec, HostKvCache::zeros(layout))
    }

    /// A layer over an existing cache (a restored one; tests pre-fill contexts this way).
    pub fn with_cache(spec: AttnSpec, cache: HostKvCache<T>) -> Result<Self> {
        spec.validate()?;
        cache.layout.validate()?;
        let l = &cache.layout;
        match &spec.mla {
            Some(m) => super::check_latent_layout(m, l)?,
            None if l.num_kv_heads != spec.num_kv_heads || l.head_dim != spec.head_dim => {
                return Err(AttnError::InvalidConfig(format!(
                    "cache of {} kv heads x head dim {} for a layer of {} kv heads x head dim {}",
                    l.num_kv_heads, l.head_dim, spec.num_kv_heads, spec.head_dim
                )));
            }
            None => {}
        }
        let elements = l.elements();
        if cache.key.len() != elements || cache.value.len() != elements {
            return Err(AttnError::LengthMismatch {
                what: "kv cache",
                detail: format!("{} key and {} value elements for a layout of {elements}", cache.key.len(), cache.value.len()),
            });
        }
        Ok(CpuImpl { spec, cache })
    }

    pub fn spec(&self) -> &AttnSpec {
        &self.spec
    }

    pub fn cache(&self) -> &HostKvCache<T> {
        &self.cache
    }

    /// Replaces the cache contents with `cache`, which must have this layer's layout.
    pub fn load_cache(&mut self, cache: &HostKvCache<T>) -> Result<()> {
        if cache.layout != self.cache.layout {
            return Err(AttnError::Shape(format!("cache of layout {:?} loaded into a layer of layout {:?}", cache.layout, self.cache.layout)));
        }
        let n = self.cache.layout.elements();
        if cache.key.len() != n || cache.value.len() != n {
            return Err(AttnError::LengthMismatch {
                what: "kv cache",
                detail: format!("{} key and {} value elements for a layout of {n}", cache.key.len(), cache.value.len()),
            });
        }
        self.cache.key.copy_from_slice(&cache.key);
        self.cache.value.copy_from_slice(&cache.value);
        Ok(())
    }

    /// One step on this layer over `meta` directly (no [`Step`]): the cache write, then
    /// attention without splits.
    pub fn forward(&mut self, q: &[T], k: &[T], v: &[T], meta: &AttentionMetadata, out: &mut [T]) -> Result<()> {
        self.forward_split(q, k, v, meta, out, 1)
    }

    /// [`CpuImpl::forward`] with each row's keys cut into `num_splits` partitions
    /// whose states are merged (flash-decoding); `num_splits = 1` is the plain forward.
    pub fn forward_split(&mut self, q: &[T], k: &[T], v: &[T], meta: &AttentionMetadata, out: &mut [T], num_splits: usize) -> Result<()> {
        if num_splits == 0 {
            return Err(AttnError::InvalidConfig("num_splits must be at least 1".into()));
        }
        self.check(q, k, v, meta, out)?;
        tracing::trace!(tokens = meta.num_tokens(), reqs = meta.num_reqs(), num_splits, "cpu attention step");
        self.cache.write_slots(k, v, meta.slot_mapping())?;
        self.attend(q, meta, out, num_splits);
        Ok(())
    }

    /// An MLA step: the latent rows `[kv_c | k_pe]` into the cache's key half at the slot
    /// mapping (the value half stays zero, as on `CUDA_MLA`), then [`mla_decode_cpu`].
    fn forward_mla(&mut self, q: &[T], kv_c: &[T], k_pe: &[T], meta: &AttentionMetadata, out: &mut [T], m: &MlaSpec) -> Result<()> {
        let (n, h, r, rope) = (meta.num_tokens(), m.num_q_heads, m.kv_lora_rank, m.qk_rope_head_dim);
        check_layout(meta, &self.cache.layout)?;
        check_len("q", q.len(), n, h, m.latent_dim(), "query heads")?;
        check_len("k (kv_c)", kv_c.len(), n, 1, r, "latent heads")?;
        check_len("v (k_pe)", k_pe.len(), n, 1, rope, "latent heads")?;
        check_len("out", out.len(), n, h, r, "query heads")?;
        let rows: Vec<T> = (0..n).flat_map(|t| kv_c[t * r..(t + 1) * r].iter().chain(&k_pe[t * rope..(t + 1) * rope])).copied().collect();
        self.cache.write_slots(&rows, &vec![T::default(); rows.len()], meta.slot_mapping())?;
        let latent = mla_decode_cpu(q, &self.cache, meta, m)?;
        for (o, x) in out.iter_mut().zip(latent) {
            *o = T::from_f32(x);
        }
        Ok(())
    }

    /// Every shape against the layer, before anything is written.
    fn check(&self, q: &[T], k: &[T], v: &[T], meta: &AttentionMetadata, out: &[T]) -> Result<()> {
        let s = &self.spec;
        let n = meta.num_tokens();
        check_layout(meta, &self.cache.layout)?;
        check_len("q", q.len(), n, s.num_q_heads, s.head_dim, "query heads")?;
        check_len("k", k.len(), n, s.num_kv_heads, s.head_dim, "kv heads")?;
        check_len("v", v.len(), n, s.num_kv_heads, s.head_dim, "kv heads")?;
        check_len("out", out.len(), n, s.num_q_heads, s.head_dim, "query heads")
    }

    fn attend(&self, q: &[T], meta: &AttentionMetadata, out: &mut [T], num_splits: usize) {
        let (hq, d) = (self.spec.num_q_heads, self.spec.head_dim);
        let tokens = token_positions(meta);
        out.par_chunks_mut(d).enumerate().for_each(|(row, o)| {
            let (token, head) = (row / hq, row % hq);
            let (r, pos) = tokens[token];
            let qrow: Vec<f32> = q[row * d..(row + 1) * d].iter().map(|x| x.to_f32()).collect();
            let keys = visible_keys(pos, self.spec.sliding_window);
            let block_ids = meta.block_ids(r);
            let attend = |range| attend_partition(&qrow, pos, head, &self.spec, &self.cache, block_ids, range);
            let state = if num_splits == 1 {
                attend(keys)
            } else {
                let states: Vec<PartialState> = (0..num_splits).map(|s| attend(split_range(keys.clone(), num_splits, s))).collect();
                merge(&states)
            };
            for (o, x) in o.iter_mut().zip(state.finish()) {
                *o = T::from_f32(x);
            }
        });
    }
}

impl<T: Element> AttentionImpl<T> for CpuImpl<T> {
    fn backend(&self) -> BackendName {
        BackendName::Cpu
    }

    /// MLA layers (as `CUDA_MLA`): `q` absorbed `[T, H, R + rope]`, `k` = kv_c `[T, R]`,
    /// `v` = k_pe `[T, rope]`, `out` latent `[T, H, R]`.
    fn run_host(&mut self, step: &Step, q: &[T], k: &[T], v: &[T], out: &mut [T]) -> Result<()> {
        let plan = step.for_layer(BackendName::Cpu, T::DTYPE, &LayerShape::of(&self.spec), &self.cache.layout)?;
        let meta = step.host_metadata()?;
        match self.spec.mla.clone() {
            Some(m) => self.forward_mla(q, k, v, meta, out, &m),
            None => self.forward_split(q, k, v, meta, out, plan.num_splits),
        }
    }

    fn cache_snapshot(&self) -> Result<HostKvCache<T>> {
        Ok(self.cache.clone())
    }

    fn load_cache(&mut self, cache: &HostKvCache<T>) -> Result<()> {
        CpuImpl::load_cache(self, cache)
    }
}

/// MLA decode in the absorbed form, on the CPU: `q_latent` `[num_tokens, H, R + rope]`
/// (`R = kv_lora_rank`) against a latent cache of one kv head and head dim `R + rope`, whose
/// first `R` dims are also the values (its value half is not read). Causal from each
/// request's context length. Returns the latent output `[num_tokens, H, R]` in f32
/// (`W_UV` is applied by the model).
pub fn mla_decode_cpu<T: Element>(q_latent: &[T], cache: &HostKvCache<T>, meta: &AttentionMetadata, spec: &MlaSpec) -> Result<Vec<f32>> {
    let (h, r, w) = (spec.num_q_heads, spec.kv_lora_rank, spec.latent_dim());
    if h == 0 || r == 0 || !(spec.scale.is_finite() && spec.scale > 0.0) {
        return Err(AttnError::InvalidConfig(format!(
            "MLA with {h} heads, kv_lora_rank {r}, scale {}: heads and rank must be positive, the scale positive and finite",
            spec.scale
        )));
    }
    let l = &cache.layout;
    if l.num_kv_heads != 1 || l.head_dim != w {
        return Err(AttnError::Shape(format!(
            "latent cache has {} kv heads x head dim {}, MLA needs 1 x {w} (kv_lora_rank {r} + rope {})",
            l.num_kv_heads, l.head_dim, spec.qk_rope_head_dim
        )));
    }
    if cache.key.len() != l.elements() {
        return Err(AttnError::LengthMismatch {
            what: "latent cache",
            detail: format!("{} elements for a layout of {}", cache.key.len(), l.elements()),
        });
    }
    check_layout(meta, l)?;
    check_len("q_latent", q_latent.len(), meta.num_tokens(), h, w, "query heads")?;
    let tokens = token_positions(meta);
    let sc = Scoring { scale: spec.scale, softcap: None, slope: None };
    let mut out = vec![0.0f32; meta.num_tokens() * h * r];
    out.par_chunks_mut(r).enumerate().for_each(|(row, o)| {
        let (req, pos) = tokens[row / h];
        let qrow: Vec<f32> = q_latent[row * w..(row + 1) * w].iter().map(|x| x.to_f32()).collect();
        let src = KvSource { keys: &cache.key, values: &cache.key, dv: r, layout: l, kv_head: 0, block_ids: meta.block_ids(req) };
        o.copy_from_slice(&attend_core(&qrow, pos, &sc, &src, visible_keys(pos, None)).finish());
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{MetadataBuilder, RequestSchedule, SchedulerOutput};

    fn state(m: f32, l: f32, acc: &[f32]) -> PartialState {
        PartialState { m, l, acc: acc.to_vec() }
    }

    #[test]
    fn merge_of_empty_states_is_empty_and_finite() {
        let e = merge(&[PartialState::empty(2), PartialState::empty(2)]);
        assert_eq!((e.l, e.acc.clone()), (0.0, vec![0.0, 0.0]));
        assert_eq!(e.finish(), vec![0.0, 0.0]);
        // An empty state next to a real one changes nothing.
        let s = state(0.5, 2.0, &[4.0, 6.0]);
        let m = merge(&[PartialState::empty(2), s.clone()]);
        assert_eq!(m, s);
        assert_eq!(m.finish(), vec![2.0, 3.0]);
        assert_eq!(merge(&[]).acc.len(), 0);
    }

    #[test]
    fn merge_by_hand() {
        // Key A with score ln 3 (value 1), key B with score 0 (value 5): weights 3/4, 1/4.
        let a = state(3f32.ln(), 1.0, &[1.0]);
        let b = state(0.0, 1.0, &[5.0]);
        for m in [merge(&[a.clone(), b.clone()]), merge(&[b, a])] {
            assert!((m.finish()[0] - 2.0).abs() < 1e-6, "{m:?}");
            assert!((m.lse() - 4f32.ln()).abs() < 1e-6, "{m:?}");
        }
    }

    #[test]
    fn split_ranges_cover_the_keys() {
        // Keys 3..40 touch tiles 0..3 (16 keys each): 2 splits take 2 tiles and 1.
        let parts: Vec<_> = (0..2).map(|s| split_range(3..40, 2, s)).collect();
        assert_eq!(parts, vec![3..32, 32..40]);
        // Keys 20..100 touch tiles 1..7 (6 tiles) in 4 splits: 2, 2, 2 tiles and none.
        let parts: Vec<_> = (0..4).map(|s| split_range(20..100, 4, s)).collect();
        assert_eq!(parts, vec![20..48, 48..80, 80..100, 100..100]);
        assert_eq!(split_range(0..2, 4, 3), 2..2);
        assert_eq!(split_range(5..5, 3, 0), 5..5);
        assert_eq!(visible_keys(5, Some(2)), 4..6);
        assert_eq!(visible_keys(1, Some(8)), 0..2);
        assert_eq!(visible_keys(3, None), 0..4);
    }

    fn setup() -> (CpuImpl<f32>, AttentionMetadata) {
        let spec = AttnSpec::new(2, 1, 2);
        let layout = KvCacheLayout::new(2, 2, 1, 2).unwrap();
        let step = SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 1, num_new_tokens: 2, block_ids: vec![1, 0] }] };
        let meta = MetadataBuilder::new(layout).build(&step).unwrap();
        (CpuImpl::new(spec, layout).unwrap(), meta)
    }

    #[test]
    fn shape_errors_name_the_tensor_and_write_nothing() {
        let (mut c, meta) = setup();
        let good = vec![1.0f32; 2 * 2 * 2];
        let kv = vec![1.0f32; 2 * 2];
        let mut out = vec![0.0f32; 8];
        let e = c.forward_split(&good[..7], &kv, &kv, &meta, &mut out, 1).unwrap_err();
        assert!(matches!(e, AttnError::LengthMismatch { what: "q", .. }), "{e}");
        assert!(e.to_string().contains("7 elements") && e.to_string().contains("= 8"), "{e}");
        let e = c.forward_split(&good, &kv, &kv[..3], &meta, &mut out, 1).unwrap_err();
        assert!(matches!(e, AttnError::LengthMismatch { what: "v", .. }), "{e}");
        let e = c.forward_split(&good, &kv, &kv, &meta, &mut out[..6], 1).unwrap_err();
        assert!(matches!(e, AttnError::LengthMismatch { what: "out", .. }), "{e}");
        let other = MetadataBuilder::new(KvCacheLayout::new(3, 2, 1, 2).unwrap())
            .build(&SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 1, num_new_tokens: 2, block_ids: vec![1, 0] }] })
            .unwrap();
        let e = c.forward_split(&good, &kv, &kv, &other, &mut out, 1).unwrap_err();
        assert!(matches!(e, AttnError::Shape(_)), "{e}");
        assert!(c.cache().key.iter().chain(&c.cache().value).all(|&x| x == 0.0));
        assert!(out.iter().all(|&x| x == 0.0));
        assert!(matches!(c.forward_split(&good, &kv, &kv, &meta, &mut out, 0), Err(AttnError::InvalidConfig(_))));
    }

    #[test]
    fn new_rejects_a_cache_of_another_geometry() {
        let e = CpuImpl::<f32>::new(AttnSpec::new(2, 1, 4), KvCacheLayout::new(2, 2, 1, 2).unwrap()).unwrap_err();
        assert!(matches!(e, AttnError::InvalidConfig(_)), "{e}");
        let e = CpuImpl::<f32>::new(AttnSpec::new(3, 2, 2), KvCacheLayout::new(2, 2, 2, 2).unwrap()).unwrap_err();
        assert!(matches!(e, AttnError::InvalidConfig(_)), "{e}");
    }

    #[test]
    fn forward_by_hand() {
        // Context token (position 0) has zero key and value 0; new tokens at positions 1, 2
        // have zero keys too, so every visible key scores 0 and the output is the mean of
        // the visible values: position 1 sees {0, 2} -> 1, position 2 sees {0, 2, 4} -> 2.
        let (mut c, meta) = setup();
        let q = vec![0.7f32; 8];
        let k = vec![0.0f32; 4];
        let v = vec![2.0, 2.0, 4.0, 4.0];
        let mut out = vec![0.0f32; 8];
        c.forward_split(&q, &k, &v, &meta, &mut out, 1).unwrap();
        let want = [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0];
        assert!(out.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{out:?}");
        let mut split = vec![0.0f32; 8];
        c.forward_split(&q, &k, &v, &meta, &mut split, 3).unwrap();
        assert!(split.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{split:?}");
        // Slots: block 1 holds positions 0, 1 (slots 2, 3); block 0 position 2 (slot 0).
        assert_eq!(c.cache().value, vec![4.0, 4.0, 0.0, 0.0, 0.0, 0.0, 2.0, 2.0]);
    }

    #[test]
    fn large_pages_cross_chunk_boundaries() {
        // Block size 64 > CHUNK: rescales happen inside a page. 100 keys, 3 new tokens,
        // window 70, ALiBi, soft-cap; against the f64 oracle.
        let mut spec = AttnSpec::new(4, 2, 8);
        spec.sliding_window = Some(70);
        spec.softcap = Some(3.0);
        spec.alibi_slopes = Some(crate::spec::alibi_slopes(4));
        let layout = KvCacheLayout::new(3, 64, 2, 8).unwrap();
        let step = SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 97, num_new_tokens: 3, block_ids: vec![2, 0] }] };
        let meta = MetadataBuilder::new(layout).build(&step).unwrap();
        let val = |i: usize, salt: f32| ((i as f32 * 0.37 + salt).sin() * 0.9) + 0.05;
        let mut cache = HostKvCache::<f32>::zeros(layout);
        for (i, (k, v)) in cache.key.iter_mut().zip(cache.value.iter_mut()).enumerate() {
            (*k, *v) = (val(i, 0.1), val(i, 0.7));
        }
        let q: Vec<f32> = (0..3 * 4 * 8).map(|i| val(i, 1.3)).collect();
        let kv: Vec<f32> = (0..3 * 2 * 8).map(|i| val(i, 2.9)).collect();
        let mut c = CpuImpl::with_cache(spec.clone(), cache).unwrap();
        for splits in [1, 5] {
            let mut out = vec![f32::NAN; q.len()];
            c.forward_split(&q, &kv, &kv, &meta, &mut out, splits).unwrap();
            let want = crate::oracle::paged_reference(&q, c.cache(), &meta, &spec).unwrap();
            let err = crate::oracle::rel_error(&out, &want);
            assert!(err < 1e-5, "{splits} splits: rel error {err:e}");
        }
    }
}
