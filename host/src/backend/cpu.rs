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
//! A layout of `kv_dtype = Fp8E4m3` gets an fp8 cache: the bytes as stored
//! ([`HostKvCache<u8>`]) and their [`KvScales`] (scale 1 until
//! [`AttentionImpl::set_kv_scales`]). The cache write quantizes (`write_slots_fp8`); the
//! softmax reads each element as `dequantize_e4m3(byte) * scale` in f32, through the same
//! code as a cache of values ([`CacheView`]). An MLA layer's fp8 cache is FlashMLA's
//! latent rows ([`crate::fp8::LATENT_ROW_BYTES`] bytes a token, each 128-value tile with its
//! own scale); the softmax reads each request's rows widened as the GPU widens them
//! ([`crate::fp8::widen_latent_row`]).
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

use crate::attention_impl::{latent_rows_have_scales, no_fp8_cache, AttentionImpl};
use crate::backend_name::BackendName;
use crate::caps::{check_latent_layout, BackendCaps};
use crate::dtype::{DType, Element, KvCacheDType};
use crate::error::{AttnError, Result};
use crate::fp8::{dequantize_e4m3, KvScales};
use crate::kv_cache::{HostKvCache, KvCacheLayout};
use crate::metadata::AttentionMetadata;
use crate::params::PAGED_TILE;
use crate::spec::{AttnSpec, MlaSpec};
use crate::plan::{LayerShape, PlanOptions, StepPlan};
use crate::step::Step;
use rayon::prelude::*;
use std::ops::Range;

/// The CPU backend's capability row: any platform, every dtype, any head dim, MLA too.
pub static CAPS: BackendCaps = BackendCaps {
    name: BackendName::Cpu,
    min_compute_capability: None,
    cpu: true,
    dtypes: &[DType::F16, DType::Bf16, DType::F32],
    kv_cache_dtypes: &[KvCacheDType::Auto, KvCacheDType::Fp8E4m3],
    mla_kv_cache_dtypes: &[KvCacheDType::Auto, KvCacheDType::Fp8E4m3],
    head_dims: &[],
    mha: true,
    mla: true,
    sliding_window: true,
    softcap: true,
    alibi: true,
    chunked: true,
    sinks: true,
    bidirectional: true,
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
    /// Running max of the scores (`NEG_INIT` for no key).
    pub m: f32,
    /// Denominator: `sum exp(s - m)`.
    pub l: f32,
    /// Unnormalised accumulator: `sum exp(s - m) v`, `dv` values.
    pub acc: Vec<f32>,
}

impl PartialState {
    /// The state of no keys, for values of `dv` dims.
    pub fn empty(dv: usize) -> Self {
        PartialState { m: NEG_INIT, l: 0.0, acc: vec![0.0; dv] }
    }

    /// Whether the state has seen no key (its denominator is 0).
    pub fn is_empty(&self) -> bool {
        self.l == 0.0
    }

    /// The attention output `acc / l`; zeros for an empty state.
    pub fn finish(&self) -> Vec<f32> {
        let inv = if self.l > 0.0 { 1.0 / self.l } else { 0.0 };
        self.acc.iter().map(|&a| a * inv).collect()
    }

    /// The state with an attention sink joined: a logit `sink` that enters the denominator
    /// and adds no value (the merge of a one-key state of zero value). `-inf`: unchanged.
    pub fn with_sink(self, sink: f32) -> PartialState {
        if sink == f32::NEG_INFINITY {
            return self;
        }
        let dv = self.acc.len();
        merge(&[self, PartialState { m: sink, l: 1.0, acc: vec![0.0; dv] }])
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
    // The CPU reads the step's maps from the host: its plan has no rows of its own.
    Ok(StepPlan::new(BackendName::Cpu, meta.num_tokens(), meta.num_reqs(), num_splits, Vec::new(), 0, ()))
}

/// How one query row's scores are formed.
struct Scoring {
    scale: f32,
    softcap: Option<f32>,
    slope: Option<f32>,
}

/// How a cache element becomes the f32 the softmax computes on.
pub trait ReadElem<E>: Copy + Send + Sync {
    /// The element's value.
    fn read(&self, e: E) -> f32;
}

/// A cache of values: the element itself, in f32.
#[derive(Clone, Copy, Debug)]
pub struct AsValue;

impl<T: Element> ReadElem<T> for AsValue {
    fn read(&self, e: T) -> f32 {
        e.to_f32()
    }
}

/// An fp8 cache's byte of a kv head of scale `.0`: `dequantize_e4m3(b) * scale`, in f32.
#[derive(Clone, Copy, Debug)]
pub struct Fp8Scaled(pub f32);

impl ReadElem<u8> for Fp8Scaled {
    fn read(&self, b: u8) -> f32 {
        dequantize_e4m3(b) * self.0
    }
}

/// A paged cache as the softmax reads it: its geometry, its K and V elements, and how an
/// element of a kv head becomes its f32 value.
pub trait CacheView: Sync {
    /// What the cache stores.
    type Elem: Copy + Send + Sync;
    /// How one element of a kv head is read.
    type Read: ReadElem<Self::Elem>;
    /// The cache's layout.
    fn layout(&self) -> &KvCacheLayout;
    /// K elements, `[num_blocks, block_size, num_kv_heads, head_dim]`.
    fn keys(&self) -> &[Self::Elem];
    /// V elements, as `keys`.
    fn values(&self) -> &[Self::Elem];
    /// The readers of kv head `kv_head`'s K and V elements.
    fn readers(&self, kv_head: usize) -> (Self::Read, Self::Read);
}

impl<T: Element> CacheView for HostKvCache<T> {
    type Elem = T;
    type Read = AsValue;
    fn layout(&self) -> &KvCacheLayout {
        &self.layout
    }
    fn keys(&self) -> &[T] {
        &self.key
    }
    fn values(&self) -> &[T] {
        &self.value
    }
    fn readers(&self, _kv_head: usize) -> (AsValue, AsValue) {
        (AsValue, AsValue)
    }
}

/// An fp8 cache's bytes with their scales, read as `byte * scale` of the element's kv head.
#[derive(Clone, Copy, Debug)]
pub struct Fp8View<'a> {
    /// The bytes as stored.
    pub cache: &'a HostKvCache<u8>,
    /// One K and one V scale per kv head (validated by whoever builds the view).
    pub scales: &'a KvScales,
}

impl CacheView for Fp8View<'_> {
    type Elem = u8;
    type Read = Fp8Scaled;
    fn layout(&self) -> &KvCacheLayout {
        &self.cache.layout
    }
    fn keys(&self) -> &[u8] {
        &self.cache.key
    }
    fn values(&self) -> &[u8] {
        &self.cache.value
    }
    fn readers(&self, kv_head: usize) -> (Fp8Scaled, Fp8Scaled) {
        (Fp8Scaled(self.scales.k[kv_head]), Fp8Scaled(self.scales.v[kv_head]))
    }
}

/// Where the keys and values of a paged cache live, for one kv head.
struct KvSource<'a, E, R> {
    keys: &'a [E],
    /// Value rows: `dv` elements at the same offsets as the keys (the MLA latent cache
    /// passes its key cache here, values being the first `kv_lora_rank` dims).
    values: &'a [E],
    dv: usize,
    layout: &'a KvCacheLayout,
    kv_head: usize,
    block_ids: &'a [i32],
    read_k: R,
    read_v: R,
}

/// Online softmax of one query row over the key positions `keys`, a page (at most `CHUNK`
/// keys) at a time: score the chunk, rescale the state once to the new max, accumulate.
fn attend_core<E: Copy, R: ReadElem<E>>(q: &[f32], q_pos: usize, sc: &Scoring, src: &KvSource<E, R>, keys: Range<usize>) -> PartialState {
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
            let dot: f32 = q.iter().zip(&src.keys[off..off + d]).map(|(a, &b)| a * src.read_k.read(b)).sum();
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
            for (a, &v) in st.acc.iter_mut().zip(&src.values[off..off + src.dv]) {
                *a += p * src.read_v.read(v);
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
    attend_partition_in(q, q_pos, head, spec, cache, block_ids, keys)
}

/// [`attend_partition`] over any [`CacheView`] (an fp8 cache: [`Fp8View`]).
pub fn attend_partition_in<C: CacheView>(q: &[f32], q_pos: usize, head: usize, spec: &AttnSpec, cache: &C, block_ids: &[i32], keys: Range<usize>) -> PartialState {
    let sc = Scoring {
        scale: spec.scale,
        softcap: spec.softcap,
        slope: spec.alibi_slopes.as_ref().map(|s| s[head]),
    };
    let kv_head = head / spec.group_size();
    let (read_k, read_v) = cache.readers(kv_head);
    let layout = cache.layout();
    let src = KvSource { keys: cache.keys(), values: cache.values(), dv: layout.head_dim, layout, kv_head, block_ids, read_k, read_v };
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

/// A CPU layer's cache: values of the model's dtype, or an fp8 cache's bytes and scales.
#[derive(Clone, Debug)]
enum CpuCache<T> {
    Values(HostKvCache<T>),
    Fp8 { bytes: HostKvCache<u8>, scales: KvScales },
}

/// The CPU `AttentionImpl`: one layer's spec and its paged cache in host memory (values, or
/// for a layout of `kv_dtype = Fp8E4m3` fp8 bytes and their scales).
#[derive(Clone, Debug)]
pub struct CpuImpl<T> {
    spec: AttnSpec,
    cache: CpuCache<T>,
}

/// A cache of `layout` for a layer of `spec`: kv heads and head dim the spec's (MLA: the
/// latent layout), the key and value vectors of the layout's size (an MLA fp8 cache: its
/// latent rows, no value half, for a 16-bit `T`).
fn check_cache<T: Element>(spec: &AttnSpec, layout: &KvCacheLayout, key_len: usize, value_len: usize) -> Result<()> {
    spec.validate()?;
    layout.validate()?;
    match &spec.mla {
        Some(m) if layout.kv_dtype == KvCacheDType::Fp8E4m3 => {
            check_latent_layout(m, layout)?;
            if T::DTYPE.size_bytes() != 2 {
                return Err(AttnError::Unsupported {
                    backend: BackendName::Cpu.as_str(),
                    reason: format!("MLA's fp8 latent rows keep the rotary dims in the model's 16-bit type; {} is not one (use f16 or bf16)", T::DTYPE),
                });
            }
            let want = layout.capacity_slots() * crate::fp8::LATENT_ROW_BYTES;
            if key_len != want || value_len != 0 {
                return Err(AttnError::LengthMismatch { what: "fp8 latent cache", detail: format!("{key_len} key and {value_len} value bytes: want {want} and 0") });
            }
            return Ok(());
        }
        Some(m) => check_latent_layout(m, layout)?,
        None if layout.num_kv_heads != spec.num_kv_heads || layout.head_dim != spec.head_dim => {
            return Err(AttnError::InvalidConfig(format!(
                "cache of {} kv heads x head dim {} for a layer of {} kv heads x head dim {}",
                layout.num_kv_heads, layout.head_dim, spec.num_kv_heads, spec.head_dim
            )));
        }
        None => {}
    }
    let elements = layout.elements();
    if key_len != elements || value_len != elements {
        return Err(AttnError::LengthMismatch { what: "kv cache", detail: format!("{key_len} key and {value_len} value elements for a layout of {elements}") });
    }
    Ok(())
}

/// A loaded cache must have the layer's geometry and the layout's element count.
fn check_load<E>(cache: &HostKvCache<E>, layer: &KvCacheLayout) -> Result<()> {
    if !cache.layout.same_geometry(layer) {
        return Err(AttnError::Shape(format!("cache of layout {:?} loaded into a layer of layout {:?}", cache.layout, layer)));
    }
    cache.check_lengths()
}

impl<T: Element> CpuImpl<T> {
    /// A layer with a zeroed cache of `layout`, whose kv heads and head dim must be the
    /// spec's. `layout.kv_dtype = Fp8E4m3`: an fp8 cache with scale 1 for every head.
    pub fn new(spec: AttnSpec, layout: KvCacheLayout) -> Result<Self> {
        layout.validate()?;
        match layout.kv_dtype {
            KvCacheDType::Auto => Self::with_cache(spec, HostKvCache::zeros(layout)),
            KvCacheDType::Fp8E4m3 if spec.mla.is_some() => Self::with_fp8_cache(spec, HostKvCache::zeros_latent_fp8(layout), KvScales::ones(1)),
            KvCacheDType::Fp8E4m3 => Self::with_fp8_cache(spec, HostKvCache::zeros_fp8(layout), KvScales::ones(layout.num_kv_heads)),
        }
    }

    /// A layer over an existing cache (a restored one; tests pre-fill contexts this way).
    /// A cache whose layout says `Fp8E4m3` holds the values of an fp8 cache: they are
    /// quantized with scale 1 (set other scales with [`CpuImpl::with_fp8_cache`]).
    pub fn with_cache(spec: AttnSpec, cache: HostKvCache<T>) -> Result<Self> {
        if spec.mla.is_some() && cache.layout.kv_dtype == KvCacheDType::Fp8E4m3 {
            // MLA's latent rows of values (no value half), quantized row by row.
            return Self::with_fp8_cache(spec, HostKvCache::quantize_latent_from(&cache)?, KvScales::ones(1));
        }
        check_cache::<T>(&spec, &cache.layout, cache.key.len(), cache.value.len())?;
        match cache.layout.kv_dtype {
            KvCacheDType::Auto => Ok(CpuImpl { spec, cache: CpuCache::Values(cache) }),
            KvCacheDType::Fp8E4m3 => {
                let scales = KvScales::ones(cache.layout.num_kv_heads);
                let bytes = HostKvCache::quantize_from(&cache, &scales)?;
                Ok(CpuImpl { spec, cache: CpuCache::Fp8 { bytes, scales } })
            }
        }
    }

    /// A layer over an existing fp8 cache (its layout's `kv_dtype` must be `Fp8E4m3`) read
    /// with `scales` (an MLA layer: fp8 latent rows, which carry their own scales; `scales`
    /// is not read).
    pub fn with_fp8_cache(spec: AttnSpec, cache: HostKvCache<u8>, scales: KvScales) -> Result<Self> {
        if cache.layout.kv_dtype != KvCacheDType::Fp8E4m3 {
            return Err(AttnError::InvalidConfig(format!("fp8 cache bytes under a layout of kv_dtype {}, not fp8_e4m3", cache.layout.kv_dtype)));
        }
        check_cache::<T>(&spec, &cache.layout, cache.key.len(), cache.value.len())?;
        if spec.mla.is_some() {
            return Ok(CpuImpl { spec, cache: CpuCache::Fp8 { bytes: cache, scales: KvScales::ones(1) } });
        }
        scales.validate(cache.layout.num_kv_heads)?;
        Ok(CpuImpl { spec, cache: CpuCache::Fp8 { bytes: cache, scales } })
    }

    /// The layer's spec.
    pub fn spec(&self) -> &AttnSpec {
        &self.spec
    }

    /// The cache's layout (its `kv_dtype` says which cache the layer has).
    pub fn layout(&self) -> &KvCacheLayout {
        match &self.cache {
            CpuCache::Values(c) => &c.layout,
            CpuCache::Fp8 { bytes, .. } => &bytes.layout,
        }
    }

    /// The cache of values; `None` for an fp8 layer (see [`CpuImpl::fp8_cache`], or
    /// [`AttentionImpl::cache_snapshot`] for its values).
    pub fn cache(&self) -> Option<&HostKvCache<T>> {
        match &self.cache {
            CpuCache::Values(c) => Some(c),
            CpuCache::Fp8 { .. } => None,
        }
    }

    /// The fp8 cache's bytes and scales; `None` for a layer of values.
    pub fn fp8_cache(&self) -> Option<(&HostKvCache<u8>, &KvScales)> {
        match &self.cache {
            CpuCache::Values(_) => None,
            CpuCache::Fp8 { bytes, scales } => Some((bytes, scales)),
        }
    }

    /// Replaces the cache contents with `cache`, which must have this layer's geometry. An
    /// fp8 layer quantizes the values with its current scales.
    pub fn load_cache(&mut self, cache: &HostKvCache<T>) -> Result<()> {
        if self.spec.mla.is_some() {
            // MLA: the latent rows are `key`; `value` is not read (it may be empty).
            if !cache.layout.same_geometry(self.layout()) {
                return Err(AttnError::Shape(format!("cache of layout {:?} loaded into a layer of layout {:?}", cache.layout, self.layout())));
            }
            if cache.key.len() != cache.layout.elements() {
                return Err(AttnError::LengthMismatch { what: "latent cache", detail: format!("{} elements, expected {}", cache.key.len(), cache.layout.elements()) });
            }
            match &mut self.cache {
                CpuCache::Values(c) => c.key.copy_from_slice(&cache.key),
                CpuCache::Fp8 { bytes, .. } => *bytes = HostKvCache::quantize_latent_from(cache)?,
            }
            return Ok(());
        }
        check_load(cache, self.layout())?;
        match &mut self.cache {
            CpuCache::Values(c) => {
                c.key.copy_from_slice(&cache.key);
                c.value.copy_from_slice(&cache.value);
            }
            CpuCache::Fp8 { bytes, scales } => {
                let q = HostKvCache::quantize_from(cache, scales)?;
                bytes.key = q.key;
                bytes.value = q.value;
            }
        }
        Ok(())
    }

    /// Replaces an fp8 layer's bytes with `cache`'s (same geometry) and its scales with
    /// `scales`; an [`AttnError::Unsupported`] for a layer of values.
    pub fn load_fp8_cache(&mut self, cache: &HostKvCache<u8>, scales: &KvScales) -> Result<()> {
        if self.spec.mla.is_some() {
            // MLA: fp8 latent rows, their scales inside them (`scales` is not read).
            if !cache.layout.same_geometry(self.layout()) {
                return Err(AttnError::Shape(format!("cache of layout {:?} loaded into a layer of layout {:?}", cache.layout, self.layout())));
            }
            cache.check_latent_fp8()?;
            return match &mut self.cache {
                CpuCache::Values(_) => Err(no_fp8_cache(BackendName::Cpu)),
                CpuCache::Fp8 { bytes, .. } => {
                    bytes.key.copy_from_slice(&cache.key);
                    Ok(())
                }
            };
        }
        check_load(cache, self.layout())?;
        let hkv = self.layout().num_kv_heads;
        match &mut self.cache {
            CpuCache::Values(_) => Err(no_fp8_cache(BackendName::Cpu)),
            CpuCache::Fp8 { bytes, scales: s } => {
                scales.validate(hkv)?;
                bytes.key.copy_from_slice(&cache.key);
                bytes.value.copy_from_slice(&cache.value);
                *s = scales.clone();
                Ok(())
            }
        }
    }

    /// Sets an fp8 layer's scales (validated first); the bytes already cached are kept and
    /// read with the new scales. An [`AttnError::Unsupported`] for a layer of values.
    pub fn set_kv_scales(&mut self, scales: &KvScales) -> Result<()> {
        if self.spec.mla.is_some() && matches!(self.cache, CpuCache::Fp8 { .. }) {
            return Err(latent_rows_have_scales(BackendName::Cpu));
        }
        let hkv = self.layout().num_kv_heads;
        match &mut self.cache {
            CpuCache::Values(_) => Err(no_fp8_cache(BackendName::Cpu)),
            CpuCache::Fp8 { scales: s, .. } => {
                scales.validate(hkv)?;
                *s = scales.clone();
                Ok(())
            }
        }
    }

    /// One step on this layer over `meta` directly (no [`Step`]): the cache write, then
    /// attention without splits.
    pub fn forward(&mut self, q: &[T], k: &[T], v: &[T], meta: &AttentionMetadata, out: &mut [T]) -> Result<()> {
        self.forward_split(q, k, v, meta, out, 1)
    }

    /// [`CpuImpl::forward`] with each row's keys cut into `num_splits` partitions
    /// whose states are merged (flash-decoding); `num_splits = 1` is the plain forward.
    pub fn forward_split(&mut self, q: &[T], k: &[T], v: &[T], meta: &AttentionMetadata, out: &mut [T], num_splits: usize) -> Result<()> {
        self.forward_split_lse(q, k, v, meta, out, None, num_splits)
    }

    /// [`CpuImpl::forward_split`], with each row's log-sum-exp into `lse` when given
    /// (`[num_tokens, num_q_heads]`, natural log; `-inf` for a row that saw no key).
    pub fn forward_split_lse(&mut self, q: &[T], k: &[T], v: &[T], meta: &AttentionMetadata, out: &mut [T], lse: Option<&mut [f32]>, num_splits: usize) -> Result<()> {
        if num_splits == 0 {
            return Err(AttnError::InvalidConfig("num_splits must be at least 1".into()));
        }
        self.check(q, k, v, meta, out)?;
        if let Some(l) = &lse {
            check_len("lse", l.len(), meta.num_tokens(), self.spec.num_q_heads, 1, "query heads")?;
        }
        if !self.spec.causal {
            return bidirectional(&self.spec, q, k, v, meta, out, lse);
        }
        tracing::trace!(tokens = meta.num_tokens(), reqs = meta.num_reqs(), num_splits, kv_dtype = %self.layout().kv_dtype, "cpu attention step");
        match &mut self.cache {
            CpuCache::Values(c) => {
                c.write_slots(k, v, meta.slot_mapping())?;
                attend(&self.spec, c, q, meta, out, lse, num_splits);
            }
            CpuCache::Fp8 { bytes, scales } => {
                bytes.write_slots_fp8(k, v, meta.slot_mapping(), scales)?;
                attend(&self.spec, &Fp8View { cache: bytes, scales }, q, meta, out, lse, num_splits);
            }
        }
        Ok(())
    }

    /// An MLA step: the latent rows `[kv_c | k_pe]` into the cache's key half at the slot
    /// mapping (the value half stays zero, as on `CUDA_MLA`), then [`mla_decode_cpu`].
    fn forward_mla(&mut self, q: &[T], kv_c: &[T], k_pe: &[T], meta: &AttentionMetadata, out: &mut [T], lse: Option<&mut [f32]>, m: &MlaSpec) -> Result<()> {
        let (n, h, r, rope) = (meta.num_tokens(), m.num_q_heads, m.kv_lora_rank, m.qk_rope_head_dim);
        check_layout(meta, self.layout())?;
        check_len("q", q.len(), n, h, m.latent_dim(), "query heads")?;
        check_len("k (kv_c)", kv_c.len(), n, 1, r, "latent heads")?;
        check_len("v (k_pe)", k_pe.len(), n, 1, rope, "latent heads")?;
        check_len("out", out.len(), n, h, r, "query heads")?;
        if let Some(l) = &lse {
            check_len("lse", l.len(), n, h, 1, "query heads")?;
        }
        let (latent, row_lse) = match &mut self.cache {
            CpuCache::Values(cache) => {
                let rows: Vec<T> = (0..n).flat_map(|t| kv_c[t * r..(t + 1) * r].iter().chain(&k_pe[t * rope..(t + 1) * rope])).copied().collect();
                cache.write_slots(&rows, &vec![T::default(); rows.len()], meta.slot_mapping())?;
                mla_decode_cpu_lse(q, cache, meta, m)?
            }
            CpuCache::Fp8 { bytes, .. } => {
                bytes.write_latent_fp8(kv_c, k_pe, meta.slot_mapping())?;
                mla_decode_cpu_fp8_lse(q, bytes, meta, m)?
            }
        };
        if let Some(l) = lse {
            l.copy_from_slice(&row_lse);
        }
        for (o, x) in out.iter_mut().zip(latent) {
            *o = T::from_f32(x);
        }
        Ok(())
    }

    /// Every shape against the layer, before anything is written.
    fn check(&self, q: &[T], k: &[T], v: &[T], meta: &AttentionMetadata, out: &[T]) -> Result<()> {
        let s = &self.spec;
        let n = meta.num_tokens();
        check_layout(meta, self.layout())?;
        check_len("q", q.len(), n, s.num_q_heads, s.head_dim, "query heads")?;
        check_len("k", k.len(), n, s.num_kv_heads, s.head_dim, "kv heads")?;
        check_len("v", v.len(), n, s.num_kv_heads, s.head_dim, "kv heads")?;
        check_len("out", out.len(), n, s.num_q_heads, s.head_dim, "query heads")
    }
}

/// Every (token, query head) row of the step in parallel: its online softmax over `cache`
/// (values or fp8 bytes, whichever [`CacheView`] reads it), split `num_splits` ways and merged.
fn attend<T: Element, C: CacheView>(spec: &AttnSpec, cache: &C, q: &[T], meta: &AttentionMetadata, out: &mut [T], lse: Option<&mut [f32]>, num_splits: usize) {
    let (hq, d) = (spec.num_q_heads, spec.head_dim);
    let tokens = token_positions(meta);
    let mut row_lse = vec![f32::NEG_INFINITY; out.len() / d];
    out.par_chunks_mut(d).zip(row_lse.par_iter_mut()).enumerate().for_each(|(row, (o, row_lse))| {
        let (token, head) = (row / hq, row % hq);
        let (r, pos) = tokens[token];
        let qrow: Vec<f32> = q[row * d..(row + 1) * d].iter().map(|x| x.to_f32()).collect();
        let keys = spec.visible_keys(pos, pos + 1);
        // A request's own first key (context parallelism's rank maps) floors the window.
        let keys = keys.start.max(meta.first_key(r)).min(keys.end)..keys.end;
        let block_ids = meta.block_ids(r);
        let attend = |range| attend_partition_in(&qrow, pos, head, spec, cache, block_ids, range);
        let state = if num_splits == 1 {
            attend(keys)
        } else {
            let states: Vec<PartialState> = (0..num_splits).map(|s| attend(split_range(keys.clone(), num_splits, s))).collect();
            merge(&states)
        };
        let state = state.with_sink(spec.sink_logits().map_or(f32::NEG_INFINITY, |s| s[head]));
        *row_lse = state.lse();
        for (o, x) in o.iter_mut().zip(state.finish()) {
            *o = T::from_f32(x);
        }
    });
    if let Some(l) = lse {
        l.copy_from_slice(&row_lse);
    }
}

/// A bidirectional (encoder) layer's step: every (token, query head) row attends over all
/// of its request's tokens, the step's own `k`, `v` (nothing is cached). Every request must
/// be fresh (no cached context): an error naming the request otherwise.
fn bidirectional<T: Element>(spec: &AttnSpec, q: &[T], k: &[T], v: &[T], meta: &AttentionMetadata, out: &mut [T], lse: Option<&mut [f32]>) -> Result<()> {
    meta.check_no_context("a bidirectional (encoder) layer attends over the step's own tokens only")?;
    let (hq, hkv, d) = (spec.num_q_heads, spec.num_kv_heads, spec.head_dim);
    let tokens = token_positions(meta);
    let qsl = meta.query_start_loc();
    let mut row_lse = vec![f32::NEG_INFINITY; out.len() / d];
    out.par_chunks_mut(d).zip(row_lse.par_iter_mut()).enumerate().for_each(|(row, (o, row_lse))| {
        let (token, head) = (row / hq, row % hq);
        let (r, i) = tokens[token];
        let kvh = head / spec.group_size();
        let (t0, t1) = (qsl[r] as usize, qsl[r + 1] as usize);
        let qrow: Vec<f32> = q[row * d..(row + 1) * d].iter().map(|x| x.to_f32()).collect();
        let slope = spec.alibi_slopes.as_ref().map(|s| s[head]);
        let scores: Vec<f32> = (t0..t1)
            .map(|t| {
                let krow = &k[(t * hkv + kvh) * d..][..d];
                let mut x = qrow.iter().zip(krow).map(|(a, b)| a * b.to_f32()).sum::<f32>() * spec.scale;
                if let Some(cap) = spec.softcap {
                    x = cap * (x / cap).tanh();
                }
                if let Some(slope) = slope {
                    x += slope * ((t - t0) as i64 - i as i64) as f32;
                }
                x
            })
            .collect();
        let m = scores.iter().copied().fold(NEG_INIT, f32::max);
        let mut st = PartialState { m, l: 0.0, acc: vec![0.0; d] };
        for (t, &x) in (t0..t1).zip(&scores) {
            let p = (x - m).exp();
            st.l += p;
            for (a, b) in st.acc.iter_mut().zip(&v[(t * hkv + kvh) * d..][..d]) {
                *a += p * b.to_f32();
            }
        }
        let st = st.with_sink(spec.sink_logits().map_or(f32::NEG_INFINITY, |s| s[head]));
        *row_lse = st.lse();
        for (o, x) in o.iter_mut().zip(st.finish()) {
            *o = T::from_f32(x);
        }
    });
    if let Some(l) = lse {
        l.copy_from_slice(&row_lse);
    }
    Ok(())
}


impl<T: Element> AttentionImpl<T> for CpuImpl<T> {
    fn backend(&self) -> BackendName {
        BackendName::Cpu
    }

    /// MLA layers (as `CUDA_MLA`): `q` absorbed `[T, H, R + rope]`, `k` = kv_c `[T, R]`,
    /// `v` = k_pe `[T, rope]`, `out` latent `[T, H, R]`.
    fn run_host(&mut self, step: &Step, q: &[T], k: &[T], v: &[T], out: &mut [T], lse: Option<&mut [f32]>) -> Result<()> {
        let plan = step.for_layer(BackendName::Cpu, T::DTYPE, &LayerShape::of(&self.spec), self.layout())?;
        let meta = step.host_metadata()?;
        match self.spec.mla.clone() {
            Some(m) => self.forward_mla(q, k, v, meta, out, lse, &m),
            None => self.forward_split_lse(q, k, v, meta, out, lse, plan.num_splits),
        }
    }

    /// The values: an fp8 cache's dequantized (`T::from_f32(byte * scale)`).
    fn cache_snapshot(&self) -> Result<HostKvCache<T>> {
        Ok(match &self.cache {
            // MLA: the latent rows, as every backend returns them (no value half).
            CpuCache::Values(c) if self.spec.mla.is_some() => HostKvCache { layout: c.layout, key: c.key.clone(), value: Vec::new() },
            CpuCache::Values(c) => c.clone(),
            CpuCache::Fp8 { bytes, .. } if self.spec.mla.is_some() => bytes.dequantize_latent()?,
            CpuCache::Fp8 { bytes, scales } => bytes.dequantize(scales),
        })
    }

    fn load_cache(&mut self, cache: &HostKvCache<T>) -> Result<()> {
        CpuImpl::load_cache(self, cache)
    }

    fn set_kv_scales(&mut self, scales: &KvScales) -> Result<()> {
        CpuImpl::set_kv_scales(self, scales)
    }

    fn fp8_cache_snapshot(&self) -> Result<(HostKvCache<u8>, KvScales)> {
        match &self.cache {
            CpuCache::Values(_) => Err(no_fp8_cache(BackendName::Cpu)),
            CpuCache::Fp8 { bytes, scales } => Ok((bytes.clone(), scales.clone())),
        }
    }

    fn load_fp8_cache(&mut self, cache: &HostKvCache<u8>, scales: &KvScales) -> Result<()> {
        CpuImpl::load_fp8_cache(self, cache, scales)
    }
}

/// MLA decode in the absorbed form, on the CPU: `q_latent` `[num_tokens, H, R + rope]`
/// (`R = kv_lora_rank`) against a latent cache of one kv head and head dim `R + rope`, whose
/// first `R` dims are also the values (its value half is not read). Causal from each
/// request's context length. Returns the latent output `[num_tokens, H, R]` in f32
/// (`W_UV` is applied by the model).
pub fn mla_decode_cpu<T: Element>(q_latent: &[T], cache: &HostKvCache<T>, meta: &AttentionMetadata, spec: &MlaSpec) -> Result<Vec<f32>> {
    mla_decode_cpu_lse(q_latent, cache, meta, spec).map(|(out, _)| out)
}

/// [`mla_decode_cpu`], and each (token, head) row's log-sum-exp (natural log).
pub fn mla_decode_cpu_lse<T: Element>(q_latent: &[T], cache: &HostKvCache<T>, meta: &AttentionMetadata, spec: &MlaSpec) -> Result<(Vec<f32>, Vec<f32>)> {
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
    let mut lse = vec![f32::NEG_INFINITY; meta.num_tokens() * h];
    out.par_chunks_mut(r).zip(lse.par_iter_mut()).enumerate().for_each(|(row, (o, lse))| {
        let (req, pos) = tokens[row / h];
        let qrow: Vec<f32> = q_latent[row * w..(row + 1) * w].iter().map(|x| x.to_f32()).collect();
        let src = KvSource { keys: &cache.key, values: &cache.key, dv: r, layout: l, kv_head: 0, block_ids: meta.block_ids(req), read_k: AsValue, read_v: AsValue };
        let state = attend_core(&qrow, pos, &sc, &src, 0..pos + 1);
        *lse = state.lse();
        o.copy_from_slice(&state.finish());
    });
    Ok((out, lse))
}

/// [`mla_decode_cpu`] over an fp8 latent cache ([`HostKvCache::zeros_latent_fp8`]): each
/// request's visible rows widened once ([`crate::fp8::widen_latent_row`]: the values the
/// GPU's MMAs read), then the same online softmax per (token, head) row.
pub fn mla_decode_cpu_fp8<T: Element>(q_latent: &[T], cache: &HostKvCache<u8>, meta: &AttentionMetadata, spec: &MlaSpec) -> Result<Vec<f32>> {
    mla_decode_cpu_fp8_lse(q_latent, cache, meta, spec).map(|(out, _)| out)
}

/// [`mla_decode_cpu_fp8`], and each (token, head) row's log-sum-exp (natural log).
pub fn mla_decode_cpu_fp8_lse<T: Element>(q_latent: &[T], cache: &HostKvCache<u8>, meta: &AttentionMetadata, spec: &MlaSpec) -> Result<(Vec<f32>, Vec<f32>)> {
    let (h, r, w) = (spec.num_q_heads, spec.kv_lora_rank, spec.latent_dim());
    if h == 0 || r == 0 || !(spec.scale.is_finite() && spec.scale > 0.0) {
        return Err(AttnError::InvalidConfig(format!("MLA with {h} heads, kv_lora_rank {r}, scale {}: heads and rank must be positive, the scale positive and finite", spec.scale)));
    }
    check_latent_layout(spec, &cache.layout)?;
    cache.check_latent_fp8()?;
    check_layout(meta, &cache.layout)?;
    check_len("q_latent", q_latent.len(), meta.num_tokens(), h, w, "query heads")?;
    let sc = Scoring { scale: spec.scale, softcap: None, slope: None };
    let mut out = vec![0.0f32; meta.num_tokens() * h * r];
    let mut lse = vec![f32::NEG_INFINITY; meta.num_tokens() * h];
    for req in 0..meta.num_reqs() {
        let (lk, ctx, t0) = (meta.seq_lens()[req] as usize, meta.context_len(req), meta.query_start_loc()[req] as usize);
        // The request's keys in order, one contiguous "block" of them.
        let rows: Vec<f32> = (0..lk).into_par_iter().flat_map_iter(|j| crate::fp8::widen_latent_row::<T>(cache.latent_row(meta.slot_of(req, j)))).collect();
        let layout = KvCacheLayout { num_blocks: 1, block_size: lk.max(1).next_power_of_two(), num_kv_heads: 1, head_dim: w, kv_dtype: KvCacheDType::Auto };
        let rows_out = &mut out[t0 * h * r..(t0 + meta.query_len(req)) * h * r];
        let rows_lse = &mut lse[t0 * h..(t0 + meta.query_len(req)) * h];
        rows_out.par_chunks_mut(r).zip(rows_lse.par_iter_mut()).enumerate().for_each(|(i, (o, lse))| {
            let pos = ctx + i / h;
            let row = (t0 * h + i) * w;
            let qrow: Vec<f32> = q_latent[row..row + w].iter().map(|x| x.to_f32()).collect();
            let src = KvSource { keys: &rows, values: &rows, dv: r, layout: &layout, kv_head: 0, block_ids: &[0], read_k: AsValue, read_v: AsValue };
            let state = attend_core(&qrow, pos, &sc, &src, 0..pos + 1);
            *lse = state.lse();
            o.copy_from_slice(&state.finish());
        });
    }
    Ok((out, lse))
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
        // The keys a query sees (the spec's one rule, `AttnSpec::visible_keys`).
        let window = |w| AttnSpec { sliding_window: w, ..AttnSpec::new(1, 1, 8) };
        assert_eq!(window(Some(2)).visible_keys(5, 6), 4..6);
        assert_eq!(window(Some(8)).visible_keys(1, 2), 0..2);
        assert_eq!(window(None).visible_keys(3, 4), 0..4);
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
        assert!(c.cache().unwrap().key.iter().chain(&c.cache().unwrap().value).all(|&x| x == 0.0));
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
        assert_eq!(c.cache().unwrap().value, vec![4.0, 4.0, 0.0, 0.0, 0.0, 0.0, 2.0, 2.0]);
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
            let want = crate::oracle::paged_reference(&q, c.cache().unwrap(), &meta, &spec).unwrap();
            let err = crate::oracle::rel_error(&out, &want);
            assert!(err < 1e-5, "{splits} splits: rel error {err:e}");
        }
    }
}

/// The CPU backend over fp8 (e4m3) caches, against the f64 oracle over the dequantized
/// cache (the precision of the attention itself) and over the unquantized values (what the
/// quantization costs).
#[cfg(test)]
mod fp8_tests {
    use super::*;
    use crate::fp8::quantize_e4m3;
    use crate::layer::Attention;
    use crate::metadata::{MetadataBuilder, RequestSchedule, SchedulerOutput};
    use crate::oracle::{self, rel_error};
    use crate::step::{PlanOptions, StepLimits};
    use crate::workload::Rng;
    use half::bf16;

    /// MLA over an fp8 latent cache on the CPU, through the layer: against the f64 oracle
    /// over the cache it wrote (dequantized exactly), within the 16-bit bound; a decode row
    /// and a 3-token chunk, tiles of several magnitudes.
    #[test]
    fn mla_fp8_latent_cache_against_the_oracle() {
        let mut rng = Rng::new(31);
        let mla = MlaSpec { num_q_heads: 4, kv_lora_rank: 512, qk_rope_head_dim: 64, qk_nope_head_dim: 128, v_head_dim: 128, scale: 1.0 / 192f32.sqrt() };
        let spec = AttnSpec { mla: Some(mla.clone()), ..AttnSpec::new(4, 4, 192) };
        let layout = KvCacheLayout::new(8, 16, 1, 576).unwrap().with_kv_dtype(KvCacheDType::Fp8E4m3);
        let sched = SchedulerOutput {
            requests: vec![
                RequestSchedule { num_computed_tokens: 37, num_new_tokens: 1, block_ids: vec![5, 2, 7] },
                RequestSchedule { num_computed_tokens: 3, num_new_tokens: 3, block_ids: vec![1] },
            ],
        };
        let meta = MetadataBuilder::new(layout).build(&sched).unwrap();
        let mut vals = |n: usize| -> Vec<bf16> { (0..n).map(|i| bf16::from_f32((rng.range(0, 2001) as f32 / 1000.0 - 1.0) * [0.01f32, 1.0, 40.0][i / 128 % 3])).collect() };
        let cached = HostKvCache { layout, key: vals(layout.elements()), value: Vec::new() };
        let (q, kv_c, k_pe) = (vals(meta.num_tokens() * 4 * 576), vals(meta.num_tokens() * 512), vals(meta.num_tokens() * 64));
        let mut layer = Attention::<bf16>::new(BackendName::Cpu, spec, layout, None).unwrap();
        layer.load_cache(&cached).unwrap();
        let out = layer.forward(&q, &kv_c, &k_pe, &meta).unwrap();
        let (bytes, _) = layer.fp8_cache_snapshot().unwrap();
        // This step's rows are the host quantizer's.
        let mut row = [0u8; 656];
        for t in 0..meta.num_tokens() {
            crate::fp8::quantize_latent_row(&kv_c[t * 512..][..512], &k_pe[t * 64..][..64], &mut row).unwrap();
            assert_eq!(bytes.latent_row(meta.slot_mapping()[t] as usize), &row[..], "token {t}");
        }
        let want = oracle::paged_mla_reference_fp8(&q, &bytes, &meta, &mla).unwrap();
        let err = rel_error(&out, &want);
        assert!(err < 5e-3, "rel error {err:e}");
        // The layer's values are the rows widened as the GPU widens them.
        let snap = layer.cache_snapshot().unwrap();
        assert_eq!(snap.key.len(), layout.elements());
        let written: Vec<usize> = meta.slot_mapping().iter().map(|&s| s as usize).collect();
        for (i, (a, b)) in snap.key.iter().zip(&cached.key).enumerate().filter(|(i, _)| !written.contains(&(i / 576))) {
            // Within half an e4m3 step of the tile's values, or of its smallest subnormal.
            assert!((a.to_f32() - b.to_f32()).abs() <= b.to_f32().abs() / 14.0 + 40.0 / 448.0 / 512.0, "element {i}: {a} for {b}");
        }
    }

    /// Per-head scales, none 1: |x| <= 1 quantizes to at most 1 / 0.0035 = 286 < 448.
    fn scales() -> KvScales {
        KvScales { k: vec![0.004, 0.011, 0.0035, 0.0625], v: vec![0.007, 0.0025, 0.03, 0.005] }
    }

    fn fp8_layout(hkv: usize, d: usize) -> KvCacheLayout {
        KvCacheLayout::new(24, 16, hkv, d).unwrap().with_kv_dtype(KvCacheDType::Fp8E4m3)
    }

    /// `(context, new tokens)` per request, on blocks dealt from a shuffled list.
    fn metadata(rng: &mut Rng, layout: KvCacheLayout, reqs: &[(usize, usize)]) -> AttentionMetadata {
        let mut free: Vec<u32> = (0..layout.num_blocks as u32).collect();
        rng.shuffle(&mut free);
        let requests = reqs
            .iter()
            .map(|&(ctx, new)| {
                let blocks = (ctx + new).div_ceil(layout.block_size);
                RequestSchedule { num_computed_tokens: ctx, num_new_tokens: new, block_ids: free.drain(..blocks).collect() }
            })
            .collect();
        MetadataBuilder::new(layout).build(&SchedulerOutput { requests }).unwrap()
    }

    struct Run<T> {
        out: Vec<T>,
        /// The f64 oracle over the layer's fp8 cache after the step (bytes x scales).
        fp8_reference: Vec<f64>,
        /// The f64 oracle over the unquantized values (context and step's K/V as `T`).
        exact_reference: Vec<f64>,
        /// Bytes of the cache after the step that are +-448 (0x7E / 0xFE).
        saturated: usize,
    }

    /// One step of `reqs` through an fp8 CPU layer whose cache was loaded with random
    /// values (quantized by `load_cache`) under `scales`; `amp` scales the step's K/V.
    fn run<T: Element>(seed: u64, reqs: &[(usize, usize)], scales: &KvScales, amp: f32, splits: Option<usize>) -> Run<T> {
        let (hq, hkv, d) = (8, 4, 32);
        let mut rng = Rng::new(seed);
        let layout = fp8_layout(hkv, d);
        let spec = AttnSpec::new(hq, hkv, d);
        let meta = metadata(&mut rng, layout, reqs);
        let n = meta.num_tokens();
        let mut context = HostKvCache::<T>::zeros(layout);
        for x in context.key.iter_mut().chain(context.value.iter_mut()) {
            *x = T::from_f32(rng.uniform());
        }
        let vals = |rng: &mut Rng, len: usize, amp: f32| (0..len).map(|_| T::from_f32(rng.uniform() * amp)).collect::<Vec<T>>();
        let (q, k, v) = (vals(&mut rng, n * hq * d, 1.0), vals(&mut rng, n * hkv * d, amp), vals(&mut rng, n * hkv * d, amp));

        let mut layer = Attention::<T>::new(BackendName::Cpu, spec.clone(), layout, None).unwrap();
        assert_eq!(layer.kv_cache_dtype(), KvCacheDType::Fp8E4m3);
        layer.set_kv_scales(scales.clone()).unwrap();
        layer.load_cache(&context).unwrap();
        let mut step = layer.new_step(StepLimits::for_metadata(&meta)).unwrap();
        step.prepare_with(&meta, PlanOptions { force_splits: splits, ..PlanOptions::default() }).unwrap();
        let mut out = vec![T::from_f32(f32::NAN); q.len()];
        layer.forward_host(&step, &q, &k, &v, &mut out).unwrap();

        // The cache holds exactly the quantized context and step rows.
        let mut expected = context.clone();
        expected.write_slots(&k, &v, meta.slot_mapping()).unwrap();
        let (bytes, got_scales) = layer.fp8_cache_snapshot().unwrap();
        assert_eq!(&got_scales, scales);
        let want = HostKvCache::quantize_from(&expected, scales).unwrap();
        assert!(bytes.key == want.key && bytes.value == want.value, "the cache write is quantize_e4m3 of each element");
        let fp8_reference = oracle::paged_reference_fp8(&q, &bytes, scales, &meta, &spec).unwrap();
        let exact_reference = oracle::paged_reference(&q, &expected, &meta, &spec).unwrap();
        let saturated = bytes.key.iter().chain(&bytes.value).filter(|&&b| b & 0x7F == 0x7E).count();
        Run { out, fp8_reference, exact_reference, saturated }
    }

    fn to_f64<T: Element>(x: &[T]) -> Vec<f64> {
        x.iter().map(|v| v.to_f64()).collect()
    }

    /// The bf16 path's bound (tests/properties.rs): 2x the error of the exact result rounded
    /// to bf16, + 1e-3.
    fn bf16_bound(reference: &[f64]) -> f64 {
        let lowp: Vec<f64> = reference.iter().map(|&x| bf16::from_f64(x).to_f64()).collect();
        2.0 * rel_error(&lowp, reference) + 1e-3
    }

    /// What e4m3 costs against the unquantized values: 3 mantissa bits round each element
    /// by up to 2^-4 (6.25%) of itself, about 1.8% RMS for uniform values; the output's
    /// relative error measured here is ~2-3% (it is printed): the bound is 5%.
    const QUANT_BOUND: f64 = 0.05;

    const BATCHES: [(&str, &[(usize, usize)]); 3] = [
        ("decode", &[(37, 1), (5, 1), (64, 1), (100, 1)]),
        ("chunked prefill", &[(40, 24)]),
        ("mixed", &[(70, 1), (33, 17), (0, 21), (15, 1)]),
    ];

    #[test]
    fn bf16_fp8_cache_matches_the_fp8_oracle() {
        for (seed, (name, reqs)) in BATCHES.iter().enumerate() {
            for splits in [None, Some(3)] {
                let r = run::<bf16>(seed as u64 + 1, reqs, &scales(), 1.0, splits);
                let out = to_f64(&r.out);
                let (err, bound) = (rel_error(&out, &r.fp8_reference), bf16_bound(&r.fp8_reference));
                assert!(err <= bound, "{name}, {splits:?} splits: rel error {err:e} against the fp8 oracle > bound {bound:e}");
                let q_err = rel_error(&out, &r.exact_reference);
                println!("{name} (bf16, {splits:?} splits): vs fp8 oracle {err:.2e} (bound {bound:.2e}), vs unquantized {q_err:.3e} (bound {QUANT_BOUND})");
                assert!(q_err < QUANT_BOUND, "{name}: rel error {q_err:e} against the unquantized oracle");
                // Quantization did change the result (the test would not see a cache of values).
                assert!(rel_error(&r.fp8_reference, &r.exact_reference) > 1e-3);
            }
        }
    }

    #[test]
    fn f32_fp8_cache_matches_the_fp8_oracle() {
        for (seed, (name, reqs)) in BATCHES.iter().enumerate() {
            let r = run::<f32>(seed as u64 + 11, reqs, &scales(), 1.0, None);
            // f32 accumulation over byte x scale products (rounded to f32): as the f32 path.
            let err = rel_error(&r.out, &r.fp8_reference);
            assert!(err < 1e-4, "{name}: rel error {err:e} against the fp8 oracle");
            let q_err = rel_error(&r.out, &r.exact_reference);
            println!("{name} (f32): vs fp8 oracle {err:.2e}, vs unquantized {q_err:.3e} (bound {QUANT_BOUND})");
            assert!(q_err < QUANT_BOUND, "{name}: rel error {q_err:e} against the unquantized oracle");
        }
    }

    #[test]
    fn per_head_scales_are_read_per_head() {
        // The same bytes under other scales: the output follows the oracle of those scales
        // (a backend reading head 0's scale everywhere, or ignoring V's, would not).
        let layout = fp8_layout(4, 32);
        let spec = AttnSpec::new(8, 4, 32);
        let mut rng = Rng::new(7);
        let meta = metadata(&mut rng, layout, &[(50, 1), (20, 3)]);
        let mut bytes = HostKvCache::zeros_fp8(layout);
        for b in bytes.key.iter_mut().chain(bytes.value.iter_mut()) {
            *b = quantize_e4m3(rng.uniform(), 1.0 / 64.0);
        }
        let n = meta.num_tokens();
        let q: Vec<f32> = (0..n * 8 * 32).map(|_| rng.uniform()).collect();
        let kv: Vec<f32> = (0..n * 4 * 32).map(|_| rng.uniform() * 0.01).collect();
        let mut outs = Vec::new();
        for s in [scales(), KvScales { k: vec![0.02, 0.001, 0.008, 0.03], v: vec![1.0, 0.1, 0.01, 3.0] }] {
            let mut c = CpuImpl::<f32>::with_fp8_cache(spec.clone(), bytes.clone(), s.clone()).unwrap();
            let mut out = vec![f32::NAN; q.len()];
            c.forward(&q, &kv, &kv, &meta, &mut out).unwrap();
            let (after, _) = c.fp8_cache().unwrap();
            let want = oracle::paged_reference_fp8(&q, after, &s, &meta, &spec).unwrap();
            let err = rel_error(&out, &want);
            assert!(err < 1e-4, "scales {s:?}: rel error {err:e}");
            outs.push(out);
        }
        assert!(rel_error(&outs[0], &to_f64(&outs[1])) > 0.1, "other scales, other output");
    }

    #[test]
    fn values_beyond_448_scales_saturate() {
        // Step K/V up to +-4 under scales down to 0.0025: |x| / scale up to 1600, far past
        // 448. The saturated bytes are +-448 (0x7E / 0xFE), and the output is the oracle's
        // over that saturated cache.
        let s = scales();
        let reqs: &[(usize, usize)] = &[(30, 6), (12, 1)];
        let r = run::<bf16>(99, reqs, &s, 4.0, None);
        let err = rel_error(&to_f64(&r.out), &r.fp8_reference);
        let bound = bf16_bound(&r.fp8_reference);
        assert!(err <= bound, "rel error {err:e} against the fp8 oracle of the saturated cache > {bound:e}");
        assert!(r.saturated > 100, "{} saturated bytes: the step must saturate", r.saturated);
        // Element by element on a small write: beyond 448 x scale, +-448 x scale exactly
        // (bytes 0x7E / 0xFE); below, within 2^-4 of the value.
        let layout = fp8_layout(4, 2);
        let mut c = HostKvCache::zeros_fp8(layout);
        let xs = [3.0f32, -3.0, 0.5, -1.25, 1.0, -2.0, 30.0, 0.01];
        let big: Vec<bf16> = xs.iter().map(|&x| bf16::from_f32(x)).collect();
        c.write_slots_fp8(&big, &big, &[5], &s).unwrap();
        let o = layout.offset(5, 0);
        let (k64, v64) = c.dequantize_f64(&s);
        let mut saturated = 0;
        for (i, &x) in xs.iter().enumerate() {
            let h = i / 2;
            for (what, scale, byte, got) in [("k", s.k[h], c.key[o + i], k64[o + i]), ("v", s.v[h], c.value[o + i], v64[o + i])] {
                let (x, scale) = (x as f64, scale as f64);
                if x.abs() / scale > 464.0 {
                    saturated += 1;
                    assert_eq!(byte, if x > 0.0 { 0x7E } else { 0xFE }, "{what} {i}: {x} / {scale}");
                    assert_eq!(got, 448.0 * scale * x.signum(), "{what} {i}");
                } else {
                    assert!((got - x).abs() <= x.abs() / 16.0, "{what} {i}: {x} read as {got}");
                }
            }
        }
        // K: 3 and -3 at 0.004 (750), -2 at 0.0035 (571), 30 at 0.0625 (480); V: -1.25 at
        // 0.0025 (500), 30 at 0.005 (6000). Not: V's +-3 at 0.007 (429 -> 416).
        assert_eq!(saturated, 6);
    }

    #[test]
    fn fp8_layer_api() {
        let layout = fp8_layout(2, 4);
        let spec = AttnSpec::new(4, 2, 4);
        let mut layer = Attention::<f32>::new(BackendName::Cpu, spec.clone(), layout, None).unwrap();
        // A new fp8 layer: zero bytes, scale 1.
        let (bytes, s) = layer.fp8_cache_snapshot().unwrap();
        assert_eq!((s, bytes.layout), (KvScales::ones(2), layout));
        assert!(bytes.key.iter().chain(&bytes.value).all(|&b| b == 0));
        // Scales are checked against the layout before the backend sees them.
        let e = layer.set_kv_scales(KvScales::ones(3)).unwrap_err();
        assert!(matches!(e, AttnError::InvalidConfig(_)), "{e}");
        let e = layer.set_kv_scales(KvScales { k: vec![1.0, -2.0], v: vec![1.0, 1.0] }).unwrap_err();
        assert!(e.to_string().contains("k scale of kv head 1"), "{e}");
        // load_fp8_cache / fp8_cache_snapshot round-trip; cache_snapshot gives byte x scale.
        let mut rng = Rng::new(4);
        let mut mine = HostKvCache::zeros_fp8(layout);
        for b in mine.key.iter_mut().chain(mine.value.iter_mut()) {
            *b = rng.below(0x7E) as u8 | (rng.below(2) as u8) << 7;
        }
        let s = KvScales { k: vec![0.5, 0.25], v: vec![2.0, 4.0] };
        layer.load_fp8_cache(&mine, &s).unwrap();
        let (got, got_s) = layer.fp8_cache_snapshot().unwrap();
        assert!(got.key == mine.key && got.value == mine.value && got_s == s);
        let values = layer.cache_snapshot().unwrap();
        let (k64, v64) = mine.dequantize_f64(&s);
        assert_eq!(to_f64(&values.key), k64, "power-of-two scales: exact in f32");
        assert_eq!(to_f64(&values.value), v64);
        // load_cache quantizes with the current scales: loading the snapshot changes nothing.
        layer.load_cache(&values).unwrap();
        assert_eq!(layer.fp8_cache_snapshot().unwrap().0.key, mine.key);
        // set_kv_scales keeps the bytes and reads them with the new scales.
        layer.set_kv_scales(KvScales::uniform(2, 1.0, 1.0)).unwrap();
        assert_eq!(layer.fp8_cache_snapshot().unwrap().0.value, mine.value);
        // Another geometry is refused.
        let e = layer.load_fp8_cache(&HostKvCache::zeros_fp8(fp8_layout(1, 4)), &KvScales::ones(1)).unwrap_err();
        assert!(matches!(e, AttnError::InvalidConfig(_) | AttnError::Shape(_)), "{e}");
        assert!(layer.load_fp8_cache(&HostKvCache::zeros_fp8(fp8_layout(1, 8)), &KvScales::ones(2)).is_err());

        // A layer of values has no fp8 cache: the fp8 calls say so.
        let plain = layout.with_kv_dtype(KvCacheDType::Auto);
        let mut auto = Attention::<f32>::new(BackendName::Cpu, spec.clone(), plain, None).unwrap();
        assert_eq!(auto.kv_cache_dtype(), KvCacheDType::Auto);
        for e in [auto.set_kv_scales(KvScales::ones(2)).unwrap_err(), auto.fp8_cache_snapshot().unwrap_err(), auto.load_fp8_cache(&mine, &s).unwrap_err()] {
            assert!(matches!(e, AttnError::Unsupported { backend: "CPU", .. }) && e.to_string().contains("no fp8 KV cache"), "{e}");
        }
        // with_fp8_cache wants bytes under an fp8 layout.
        let mut auto_bytes = mine.clone();
        auto_bytes.layout = plain;
        assert!(matches!(CpuImpl::<f32>::with_fp8_cache(spec, auto_bytes, s), Err(AttnError::InvalidConfig(_))));
    }

    #[test]
    fn fp8_layouts_are_refused_where_unsupported() {
        // MLA over an fp8 cache: the latent rows keep the rotary dims in 16 bits, so an f32
        // layer is refused, naming why; bf16 is served, and per-layer scales are refused.
        let cfg = crate::model::preset("deepseek-v3").unwrap();
        let spec = cfg.attn_spec();
        let w = spec.mla.as_ref().unwrap().latent_dim();
        let layout = KvCacheLayout::new(4, 16, 1, w).unwrap().with_kv_dtype(KvCacheDType::Fp8E4m3);
        let e = CpuImpl::<f32>::new(spec.clone(), layout).map(|_| ()).unwrap_err();
        assert!(matches!(e, AttnError::Unsupported { backend: "CPU", .. }) && e.to_string().contains("16-bit type"), "{e}");
        let mut mla = Attention::<bf16>::new(BackendName::Cpu, spec, layout, None).unwrap();
        let e = mla.set_kv_scales(KvScales::ones(1)).unwrap_err();
        assert!(e.to_string().contains("carry their own scales"), "{e}");
        assert_eq!(mla.fp8_cache_snapshot().unwrap().0.key.len(), 4 * 16 * crate::fp8::LATENT_ROW_BYTES);
        // The capability rows decide from the layout's kv_dtype: a backend whose row lacks
        // fp8 refuses an fp8 layout, naming it; the CPU's row has it.
        let spec = AttnSpec::new(8, 2, 128);
        let layout = KvCacheLayout::new(4, 16, 2, 128).unwrap().with_kv_dtype(KvCacheDType::Fp8E4m3);
        let sm90 = crate::platform::Platform::Cuda { major: 9, minor: 0 };
        assert!(CAPS.kv_cache_dtypes.contains(&KvCacheDType::Fp8E4m3));
        assert!(CAPS.check_layer(crate::platform::Platform::Cpu, DType::Bf16, &spec, &layout).is_ok());
        for b in BackendName::ALL {
            let caps = b.caps();
            let r = caps.check_layer(sm90, DType::Bf16, &spec, &layout);
            let plain = caps.check_layer(sm90, DType::Bf16, &spec, &layout.with_kv_dtype(KvCacheDType::Auto));
            if caps.kv_cache_dtypes.contains(&KvCacheDType::Fp8E4m3) {
                assert_eq!(r.is_ok(), plain.is_ok(), "{b}: fp8 changes nothing else");
            } else {
                let e = r.unwrap_err();
                assert!(e.to_string().contains("KV cache dtype fp8_e4m3 not supported"), "{b}: {e}");
            }
        }
    }
}
