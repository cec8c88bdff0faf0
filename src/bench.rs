//! The benchmark harness the cargo benches (`benches/`) and `attn bench` share: the
//! workloads of `benches/WORKLOADS.md` by id (or shapes from a model and flags, and sweeps
//! over context, batch or query tokens), a runner that times one layer's attention on a
//! backend (CUDA events on a GPU, L2 flushed for memory-bound work; the wall clock on the
//! CPU), the ceilings each figure is a fraction of, and one [`Record`] a measurement, printed
//! as a JSON line in the benches' format.
//!
//! Ceilings: memory-bound workloads (decode, MLA at few heads) against the device's copy
//! bandwidth measured in the same run (bytes read + written); compute-bound ones (prefill,
//! MLA at many heads) against the dense bf16 tensor peak, from the device's SM count and the
//! architecture's published per-SM rate, unless a measured matmul figure is given
//! ([`Runner::set_compute_ceiling`], e.g. the peers' `mm_TFLOPs`).
//!
//! ```
//! use attn_backends::bench::{catalog, find};
//! let ids: Vec<String> = catalog().iter().map(|w| w.id.clone()).collect();
//! assert!(ids.iter().any(|i| i == "D1") && ids.iter().any(|i| i == "M4"));
//! let d1 = find("D1").unwrap();
//! // 64 requests x 4096 keys x 8 kv heads x 128 dims x (K + V) x 2 bytes, + q and out.
//! assert_eq!(d1.bytes(attn_backends::KvCacheDType::Auto), (64 * 4096 * 8 * 128 * 2 * 2 + 2 * 64 * 32 * 128 * 2) as f64);
//! assert!(find("D9").unwrap_err().to_string().contains("D1"));
//! ```

use crate::cuda::CudaRuntime;
use crate::workload::{blocks_needed, random_values, ragged_lengths, schedule, Rng};
use crate::{AttnError, AttnSpec, BackendName, DType, HostKvCache, KvCacheDType, KvCacheLayout, MetadataBuilder, MlaSpec, PlanOptions, Result, Step, StepLimits};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Repetitions a GPU figure is the median of.
pub const REPS: usize = 30;
/// MLA's latent row (DeepSeek-V3: 512 latent + 64 rotary dims) and the values' width.
pub const MLA_LATENT: usize = 576;
/// The values' width of an MLA row (`kv_lora_rank`).
pub const MLA_RANK: usize = 512;

/// What a workload's figure is: bytes moved per second, or FLOPs per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// GB/s, a fraction of the copy bandwidth.
    Bandwidth,
    /// TFLOP/s, a fraction of the tensor peak.
    Flops,
}

/// Attention features of a multi-head workload (the G and L rows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// One sink logit per query head.
    pub sinks: bool,
    /// Sliding window, keys.
    pub window: Option<usize>,
    /// Chunked local attention, tokens a chunk.
    pub chunk: Option<usize>,
}

/// A workload's shape: a multi-head layer over a paged cache, or an MLA layer over a latent
/// cache. `requests` are (cached tokens, new tokens) per request: a decode has one new token
/// (several for speculative decoding), a prefill many.
#[derive(Clone, Debug, PartialEq)]
pub enum Shape {
    /// Multi-head (MHA, GQA, MQA) attention over a paged KV cache.
    #[allow(missing_docs)]
    Paged { q_heads: usize, kv_heads: usize, head_dim: usize, requests: Vec<(usize, usize)>, features: Features, bidirectional: bool },
    /// DeepSeek MLA (absorbed form): latent rows of 576 dims, one latent head.
    #[allow(missing_docs)]
    Mla { heads: usize, requests: Vec<(usize, usize)> },
}

/// One benchmark workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// `D1`, `P3`, `M2`, or a name made from flags (`llama-3-8b b64 c4096`).
    pub id: String,
    /// What is computed.
    pub shape: Shape,
    /// Tokens a cache block.
    pub block_size: usize,
    /// The figure it reports.
    pub metric: Metric,
    /// The swept axis and this point's value, for a sweep's points.
    pub sweep: Option<(SweepAxis, usize)>,
    /// The model a workload of [`decode_of`] was made from (its id is then the model and
    /// the shape).
    pub model: Option<String>,
    /// Layers a step runs (S1: 32, each its own cache, one plan for all); 1 elsewhere.
    pub layers: usize,
    /// The layer itself where a model gave it ([`decode_of`]: its soft-cap, ALiBi, scale,
    /// sinks, window, chunks); else [`Workload::spec`] builds it from the shape.
    pub layer: Option<AttnSpec>,
}

/// The axis of a sweep: how the cost grows as the work grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepAxis {
    /// Keys per request (decode context).
    Context,
    /// Requests in the batch.
    Batch,
    /// Query tokens per request (speculative decoding).
    Queries,
}

impl SweepAxis {
    /// `context`, `batch` or `queries`.
    pub fn parse(s: &str) -> Option<SweepAxis> {
        match s {
            "context" => Some(SweepAxis::Context),
            "batch" => Some(SweepAxis::Batch),
            "queries" => Some(SweepAxis::Queries),
            _ => None,
        }
    }
    /// The axis's name.
    pub fn name(self) -> &'static str {
        match self {
            SweepAxis::Context => "context",
            SweepAxis::Batch => "batch",
            SweepAxis::Queries => "queries",
        }
    }
    /// The default points: context 1k-128k, batch 1-256, 1-8 query tokens.
    pub fn default_points(self) -> Vec<usize> {
        match self {
            SweepAxis::Context => (10..=17).map(|p| 1 << p).collect(),
            SweepAxis::Batch => (0..=8).map(|p| 1 << p).collect(),
            SweepAxis::Queries => vec![1, 2, 3, 4, 6, 8],
        }
    }
}

fn paged(id: &str, q_heads: usize, kv_heads: usize, head_dim: usize, requests: Vec<(usize, usize)>, features: Features, metric: Metric) -> Workload {
    Workload { id: id.into(), shape: Shape::Paged { q_heads, kv_heads, head_dim, requests, features, bidirectional: false }, block_size: 16, metric, sweep: None, model: None, layers: 1, layer: None }
}

/// Decodes: one new token after `len - 1` cached ones.
fn decodes(lens: &[usize]) -> Vec<(usize, usize)> {
    lens.iter().map(|&l| (l - 1, 1)).collect()
}

fn mla(id: &str, heads: usize, batch: usize, context: usize, queries: usize, metric: Metric) -> Workload {
    mla_of(id, heads, vec![(context - queries, queries); batch], metric)
}

/// An MLA workload of these `(cached, new)` requests.
fn mla_of(id: &str, heads: usize, requests: Vec<(usize, usize)>, metric: Metric) -> Workload {
    Workload { id: id.into(), shape: Shape::Mla { heads, requests }, block_size: 64, metric, sweep: None, model: None, layers: 1, layer: None }
}

/// Every workload of `benches/WORKLOADS.md` (decode D, X, G, L; prefill P; MLA M; the step
/// S1), in order.
pub fn catalog() -> Vec<Workload> {
    use Metric::{Bandwidth as B, Flops as F};
    let none = Features::default();
    let sinks = Features { sinks: true, ..none };
    let mut p6 = paged("P6", 16, 16, 64, vec![(0, 1024); 32], none, F);
    if let Shape::Paged { bidirectional, .. } = &mut p6.shape {
        *bidirectional = true;
    }
    vec![
        paged("D1", 32, 8, 128, decodes(&[4096; 64]), none, B),
        paged("D2", 32, 8, 128, decodes(&[1024; 256]), none, B),
        paged("D3", 32, 8, 128, decodes(&[32768; 4]), none, B),
        paged("D4", 32, 8, 128, decodes(&ragged_lengths(128, 8192, 128)), none, B),
        paged("D5", 32, 32, 128, decodes(&[2048; 32]), none, B),
        paged("D6", 32, 8, 128, decodes(&[524288]), none, B),
        paged("X1", 16, 8, 256, decodes(&[4096; 64]), none, B),
        paged("X2", 32, 8, 64, decodes(&[4096; 64]), none, B),
        paged("G1", 64, 8, 64, decodes(&[8192; 64]), sinks, B),
        paged("G2", 64, 8, 64, decodes(&[8192; 64]), Features { window: Some(128), ..sinks }, B),
        paged("L1", 40, 8, 128, decodes(&[32768; 16]), Features { chunk: Some(8192), ..none }, B),
        paged("P1", 32, 8, 128, vec![(0, 4096); 4], none, F),
        paged("P2", 32, 32, 128, vec![(0, 1024); 16], none, F),
        paged("P3", 32, 8, 128, vec![(0, 16384)], none, F),
        paged("P4", 32, 8, 64, vec![(0, 4096); 4], none, F),
        paged("P5", 32, 8, 128, vec![(2048, 512); 8], none, F),
        p6,
        mla("M1", 16, 128, 4096, 1, B),
        mla("M2", 128, 128, 4096, 1, F),
        mla("M3", 16, 128, 4096, 2, B),
        mla("M4", 128, 32, 16384, 2, F),
        mla("M5", 128, 1, 262144, 1, F),
        // M6: a ragged MLA batch (D4's generator, 64 requests of 128 to 32768 keys): where the
        // Hopper plan's fill-and-cut balances runs over the SMs.
        mla_of("M6", 128, decodes(&ragged_lengths(128, 32768, 64)), F),
        // S1: D1's batch through 32 Llama-3-8B layers, one plan for the step.
        Workload { layers: 32, ..paged("S1", 32, 8, 128, decodes(&[4096; 64]), none, B) },
    ]
}

/// The workloads a command line names: ids (`D1`), a letter for a whole group (`D`, `P`,
/// `M`), or `all`. An unknown name is an error listing the known ids.
pub fn select(names: &[String]) -> Result<Vec<Workload>> {
    let all = catalog();
    let mut out = Vec::new();
    for n in names {
        let hits: Vec<Workload> = match n.as_str() {
            "all" => all.clone(),
            g if g.len() == 1 => all.iter().filter(|w| w.id.starts_with(g)).cloned().collect(),
            id => vec![find(id)?],
        };
        if hits.is_empty() {
            return Err(unknown(n, &all));
        }
        out.extend(hits.into_iter().filter(|w| !out.iter().any(|o: &Workload| o.id == w.id)).collect::<Vec<_>>());
    }
    Ok(out)
}

fn unknown(name: &str, all: &[Workload]) -> AttnError {
    let ids: Vec<&str> = all.iter().map(|w| w.id.as_str()).collect();
    AttnError::InvalidConfig(format!("unknown workload `{name}` (known: {}; a letter names a group, `all` every one)", ids.join(", ")))
}

/// The workload with this id; an error listing the known ids.
pub fn find(id: &str) -> Result<Workload> {
    let all = catalog();
    all.iter().find(|w| w.id == id).cloned().ok_or_else(|| unknown(id, &all))
}

/// A decode workload of a layer's shape (multi-head, or MLA when `spec.mla` is set):
/// `batch` requests of `context` keys, `queries` new tokens each.
pub fn decode_of(name: &str, spec: &AttnSpec, batch: usize, context: usize, queries: usize) -> Result<Workload> {
    if batch == 0 || queries == 0 || context < queries {
        return Err(AttnError::InvalidConfig(format!("a decode workload needs batch >= 1, queries >= 1 and context >= queries (batch {batch}, context {context}, queries {queries})")));
    }
    let requests = vec![(context - queries, queries); batch];
    let (shape, block_size, metric) = match &spec.mla {
        Some(m) => {
            if m.latent_dim() != MLA_LATENT || m.kv_lora_rank != MLA_RANK {
                return Err(AttnError::InvalidConfig(format!("MLA workloads have DeepSeek-V3's latent rows (512 + 64); this layer's are {} + {}", m.kv_lora_rank, m.qk_rope_head_dim)));
            }
            // Many heads (or query tokens) make MLA compute-bound: FlashMLA's split at 64 rows.
            let metric = if m.num_q_heads * queries >= 64 { Metric::Flops } else { Metric::Bandwidth };
            (Shape::Mla { heads: m.num_q_heads, requests }, 64, metric)
        }
        None => {
            let features = Features { sinks: spec.sinks != crate::spec::Sinks::None, window: spec.sliding_window, chunk: spec.chunk_size };
            (Shape::Paged { q_heads: spec.num_q_heads, kv_heads: spec.num_kv_heads, head_dim: spec.head_dim, requests, features, bidirectional: false }, 16, Metric::Bandwidth)
        }
    };
    // The model's layer as it is, sinks given values where the config left them to the
    // checkpoint.
    let mut layer = spec.clone();
    if layer.sinks == crate::spec::Sinks::Unset {
        layer = layer.with_sinks((0..spec.num_q_heads).map(|h| (h % 7) as f32 * 0.25).collect());
    }
    if !layer.causal {
        return Err(AttnError::InvalidConfig(format!("{name}: a bidirectional (encoder) layer has no decode; time it as P6 does")));
    }
    Ok(Workload { id: format!("{name} b{batch} c{context} q{queries}"), shape, block_size, metric, sweep: None, model: Some(name.to_string()), layers: 1, layer: Some(layer) })
}

/// `base` at each point of `axis` (its batch, context or query tokens replaced).
pub fn sweep(base: &Workload, axis: SweepAxis, points: &[usize]) -> Result<Vec<Workload>> {
    if !base.sweepable() {
        return Err(AttnError::InvalidConfig(format!(
            "{}: only a decode of equal requests (MLA too) sweeps along context, batch or query tokens; not a prefill, a ragged batch or a step of layers",
            base.id
        )));
    }
    let reqs = base.requests();
    let (batch, context, queries) = (reqs.len(), reqs[0].0 + reqs[0].1, reqs[0].1);
    points
        .iter()
        .map(|&x| {
            let (b, c, q) = match axis {
                SweepAxis::Context => (batch, x, queries),
                SweepAxis::Batch => (x, context, queries),
                SweepAxis::Queries => (batch, context, x),
            };
            if b == 0 || q == 0 || c < q {
                return Err(AttnError::InvalidConfig(format!("sweep point {} {x}: needs batch >= 1, queries >= 1, context >= queries", axis.name())));
            }
            let mut w = base.clone();
            let requests = vec![(c - q, q); b];
            match &mut w.shape {
                Shape::Paged { requests: r, .. } | Shape::Mla { requests: r, .. } => *r = requests,
            }
            w.sweep = Some((axis, x));
            if let Shape::Mla { heads, .. } = w.shape {
                // Many heads or query tokens make MLA compute-bound (as `decode_of` decides).
                w.metric = if heads * q >= 64 { Metric::Flops } else { Metric::Bandwidth };
            }
            // A model's workload is named by its shape: along a sweep, by the axes that stay.
            if let Some(m) = &base.model {
                w.id = match axis {
                    SweepAxis::Context => format!("{m} b{b} q{q}"),
                    SweepAxis::Batch => format!("{m} c{c} q{q}"),
                    SweepAxis::Queries => format!("{m} b{b} c{c}"),
                };
            }
            Ok(w)
        })
        .collect()
}

impl Workload {
    /// Whether [`sweep`] takes it: a decode (memory-bound, or MLA) of equal requests, one
    /// layer.
    pub fn sweepable(&self) -> bool {
        let r = self.requests();
        let decode = matches!(self.shape, Shape::Mla { .. }) || self.metric == Metric::Bandwidth;
        self.layers == 1 && decode && !r.is_empty() && r.iter().all(|x| *x == r[0])
    }

    /// (cached, new) tokens per request.
    pub fn requests(&self) -> &[(usize, usize)] {
        match &self.shape {
            Shape::Paged { requests, .. } | Shape::Mla { requests, .. } => requests,
        }
    }

    /// The benches' name for its kind: `decode`, `prefill`, `mla` or `step`.
    pub fn bench(&self) -> &'static str {
        if self.layers > 1 {
            return "step";
        }
        match &self.shape {
            Shape::Mla { .. } => "mla",
            Shape::Paged { .. } if self.metric == Metric::Bandwidth => "decode",
            Shape::Paged { .. } => "prefill",
        }
    }

    /// The layer: bf16, causal unless bidirectional, with the workload's features.
    pub fn spec(&self) -> AttnSpec {
        if let Some(layer) = &self.layer {
            return layer.clone();
        }
        match &self.shape {
            Shape::Paged { q_heads, kv_heads, head_dim, features, bidirectional, .. } => {
                let mut spec = AttnSpec { causal: !bidirectional, ..AttnSpec::new(*q_heads, *kv_heads, *head_dim) };
                spec.sliding_window = features.window;
                spec.chunk_size = features.chunk;
                if features.sinks {
                    spec = spec.with_sinks((0..*q_heads).map(|h| (h % 7) as f32 * 0.25).collect());
                }
                spec
            }
            Shape::Mla { heads, .. } => {
                let mla = MlaSpec { num_q_heads: *heads, kv_lora_rank: MLA_RANK, qk_rope_head_dim: MLA_LATENT - MLA_RANK, qk_nope_head_dim: 128, v_head_dim: 128, scale: 1.0 / 192f32.sqrt() };
                AttnSpec { mla: Some(mla), ..AttnSpec::new(*heads, *heads, 192) }
            }
        }
    }

    /// The cache layout: blocks enough for every request.
    pub fn layout(&self, kv: KvCacheDType) -> Result<KvCacheLayout> {
        let blocks = blocks_needed(self.requests(), self.block_size);
        match &self.shape {
            Shape::Paged { kv_heads, head_dim, .. } => Ok(KvCacheLayout::new(blocks, self.block_size, *kv_heads, *head_dim)?.with_kv_dtype(kv)),
            Shape::Mla { .. } => Ok(KvCacheLayout::new(blocks, self.block_size, 1, MLA_LATENT)?.with_kv_dtype(kv)),
        }
    }

    /// Query tokens of the step.
    pub fn num_tokens(&self) -> usize {
        self.requests().iter().map(|r| r.1).sum()
    }

    /// Bytes a run moves (benches/WORKLOADS.md): the keys each request's queries see, read
    /// once (as stored: fp8 one byte an element plus the scales), and q and out (bf16).
    pub fn bytes(&self, kv: KvCacheDType) -> f64 {
        let fp8 = kv == KvCacheDType::Fp8E4m3;
        let n = self.num_tokens();
        match &self.shape {
            Shape::Paged { q_heads, kv_heads, head_dim, requests, bidirectional, .. } => {
                let spec = self.spec();
                let elem = if fp8 { 1 } else { 2 };
                // The keys any of a request's queries sees: from the first query's first
                // visible key (a window or chunk starts it) to the last query.
                let keys: usize = requests.iter().map(|&(c, q)| if *bidirectional { q } else { c + q - spec.visible_keys(c, c + q).start }).sum();
                let scales = if fp8 { 2 * 4 * kv_heads } else { 0 };
                (keys * kv_heads * head_dim * 2 * elem + scales + 2 * n * q_heads * head_dim * 2) as f64
            }
            Shape::Mla { heads, requests } => {
                let row = if fp8 { crate::fp8::LATENT_ROW_BYTES } else { MLA_LATENT * 2 };
                let keys: usize = requests.iter().map(|&(c, q)| c + q).sum();
                (keys * row + n * heads * (MLA_LATENT + MLA_RANK) * 2) as f64
            }
        }
    }

    /// Useful FLOPs of a run: multi-head `4 x q_heads x head_dim x (keys each query
    /// attends to, summed)`; MLA `2 x queries x heads x keys x (576 + 512)` (FlashMLA's count).
    pub fn flops(&self) -> f64 {
        match &self.shape {
            Shape::Paged { q_heads, head_dim, requests, bidirectional, .. } => {
                let spec = self.spec();
                let pairs: f64 = requests
                    .iter()
                    .map(|&(c, q)| if *bidirectional { (q * q) as f64 } else { (0..q).map(|i| spec.visible_keys(c + i, c + q).len() as f64).sum::<f64>() })
                    .sum();
                4.0 * (*q_heads * *head_dim) as f64 * pairs
            }
            Shape::Mla { heads, requests } => requests.iter().map(|&(c, q)| 2.0 * (q * heads * (c + q)) as f64 * (MLA_LATENT + MLA_RANK) as f64).sum(),
        }
    }

    /// The backends that time it by default on a GPU: the Hopper kernels' backend, then the
    /// portable one (skipped where it runs the same kernel).
    pub fn gpu_backends(&self) -> [BackendName; 2] {
        match self.shape {
            Shape::Paged { .. } => [BackendName::CudaPaged, BackendName::CudaPagedPortable],
            Shape::Mla { .. } => [BackendName::CudaMla, BackendName::CudaMlaPortable],
        }
    }
}

/// A cache filled with random bf16 (a random 16 MiB pattern repeated: random, never zeros,
/// and quick to make for multi-GiB caches).
pub fn random_cache(layout: KvCacheLayout, rng: &mut Rng) -> HostKvCache<bf16> {
    let pattern: Vec<bf16> = (0..(8 << 20) + 13).map(|_| bf16::from_f32(rng.uniform())).collect();
    let fill = |off: usize| (0..layout.elements()).map(|i| pattern[(i + off) % pattern.len()]).collect::<Vec<_>>();
    HostKvCache { layout, key: fill(0), value: fill(12345) }
}

/// A bf16 layer's cache dtype in the records: `bf16` or `fp8`.
pub fn kv_name(kv: KvCacheDType) -> &'static str {
    if kv == KvCacheDType::Fp8E4m3 { "fp8" } else { "bf16" }
}

/// Random e4m3 bytes but the two NaNs (0x7F, 0xFF): finite values bounded by 448 x scale.
fn fp8_pattern(rng: &mut Rng) -> Vec<u8> {
    (0..(16 << 20) + 13).map(|_| (rng.below(254) as u8).wrapping_add(0x80) % 0xFF).map(|b| if b == 0x7F { 0x7E } else { b }).collect()
}

/// An fp8 cache of random e4m3 bytes (a random 16 MiB pattern repeated).
pub fn random_fp8_cache(layout: KvCacheLayout, rng: &mut Rng) -> HostKvCache<u8> {
    let pattern = fp8_pattern(rng);
    let fill = |off: usize| (0..layout.elements()).map(|i| pattern[(i + off) % pattern.len()]).collect::<Vec<_>>();
    HostKvCache { layout, key: fill(0), value: fill(12345) }
}

/// An fp8 latent cache (FlashMLA's 656-byte rows) of random values: e4m3 bytes but the NaNs,
/// tile scales near 1/448, random bf16 rotary dims (never zeros).
pub fn random_latent_fp8_cache(layout: KvCacheLayout, rng: &mut Rng) -> HostKvCache<u8> {
    let mut c = HostKvCache::zeros_latent_fp8(layout);
    let pattern = fp8_pattern(rng);
    let rope: Vec<u16> = (0..4093).map(|_| bf16::from_f32(rng.below(2001) as f32 / 1000.0 - 1.0 + 1e-3).to_bits()).collect();
    for (i, row) in c.key.chunks_exact_mut(crate::fp8::LATENT_ROW_BYTES).enumerate() {
        for (j, b) in row[..512].iter_mut().enumerate() {
            *b = pattern[(i * 512 + j) % pattern.len()];
        }
        for t in 0..4 {
            row[512 + 4 * t..516 + 4 * t].copy_from_slice(&((1.0 + (i % 7 + t) as f32 / 16.0) / 448.0).to_le_bytes());
        }
        for d in 0..64 {
            row[528 + 2 * d..530 + 2 * d].copy_from_slice(&rope[(i * 64 + d) % rope.len()].to_le_bytes());
        }
    }
    c
}

/// Times work on a CUDA stream with events: a time-based warm-up, then [`REPS`] runs, L2
/// flushed (a 256 MiB memset) before each when asked.
pub struct Timer {
    stream: Arc<CudaStream>,
    flush: CudaSlice<u8>,
}

impl Timer {
    /// A timer on the runtime's stream.
    pub fn new(rt: &Arc<CudaRuntime>) -> Result<Timer> {
        Ok(Timer { stream: rt.stream().clone(), flush: rt.stream().alloc_zeros::<u8>(256 << 20)? })
    }

    /// Median and (min, max) in ms of `f` over [`REPS`] runs, L2 flushed before each.
    pub fn time(&mut self, f: impl FnMut() -> Result<()>) -> Result<(f64, f64, f64)> {
        self.time_with(true, f)
    }

    /// [`Timer::time`], flushing L2 only if `flush` (compute-bound work is timed warm).
    pub fn time_with(&mut self, flush: bool, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64, f64)> {
        let ctx = self.stream.context().clone();
        let warm_until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < warm_until {
            f()?;
            self.stream.synchronize()?;
        }
        let mut ms = Vec::with_capacity(REPS);
        for _ in 0..REPS {
            if flush {
                self.stream.memset_zeros(&mut self.flush)?;
            }
            let a = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            let b = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            a.record(&self.stream)?;
            f()?;
            b.record(&self.stream)?;
            b.synchronize()?;
            ms.push(a.elapsed_ms(&b)? as f64);
        }
        Ok(spread(ms))
    }
}

/// (median, min, max) of samples.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|x, y| x.total_cmp(y));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Device-to-device copy bandwidth (read + write) of a 1 GiB buffer, GB/s.
pub fn copy_bandwidth(rt: &Arc<CudaRuntime>, timer: &mut Timer) -> Result<f64> {
    let n = 1usize << 30;
    let src = rt.stream().alloc_zeros::<u8>(n)?;
    let mut dst = rt.stream().alloc_zeros::<u8>(n)?;
    let stream = rt.stream().clone();
    let (ms, _, _) = timer.time(|| Ok(stream.memcpy_dtod(&src, &mut dst)?))?;
    Ok(2.0 * n as f64 / (ms * 1e-3) / 1e9)
}

/// The dense bf16 tensor peak of a device, TFLOP/s: its SMs times the architecture's
/// published per-SM rate at the boost clock (H100 SXM: 989.4 over 132 SMs; A100: 312 over
/// 108). None for architectures this table lacks.
pub fn tensor_peak_tflops(arch: &str, sms: u32) -> Option<f64> {
    let per_sm = if arch.starts_with("sm_90") {
        989.4 / 132.0
    } else if arch.starts_with("sm_80") {
        312.0 / 108.0
    } else {
        return None;
    };
    Some(per_sm * sms as f64)
}

/// How a workload is timed: the cache's element, the backends, the plan's options.
#[derive(Clone, Debug)]
pub struct MeasureOptions {
    /// The KV cache's element (`Auto`: bf16, as the queries).
    pub kv: KvCacheDType,
    /// Backends to time (empty: the workload's defaults for the runner).
    pub backends: Vec<BackendName>,
    /// Plan options, one measurement each (empty: the plan's own choice).
    pub plans: Vec<PlanOptions>,
    /// Random inputs' seed.
    pub seed: u64,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions { kv: KvCacheDType::Auto, backends: Vec::new(), plans: Vec::new(), seed: 2024 }
    }
}

/// One measurement: a workload on a backend's kernel(s), with its figure and the fraction of
/// the ceiling. [`Record::json`] is the benches' JSON line.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// `decode`, `prefill`, `mla` or `step`.
    pub bench: String,
    /// The workload's id.
    pub workload: String,
    /// The device's name (`NVIDIA H200`, or `CPU (N threads)`).
    pub device: String,
    /// `bf16` or `fp8`.
    pub kv_dtype: String,
    /// The backend timed.
    pub backend: String,
    /// The attention kernel(s) the plan launched (`+`-joined; `cpu` on the CPU).
    pub kernel: String,
    /// KV splits of the plan.
    pub splits: usize,
    /// Whether the split count was forced rather than the plan's choice.
    pub forced: bool,
    /// Median time, microseconds.
    pub median_us: f64,
    /// Fastest run, microseconds.
    pub min_us: f64,
    /// Slowest run, microseconds.
    pub max_us: f64,
    /// Bytes moved per second (benches/WORKLOADS.md's count).
    pub gbps: f64,
    /// Useful TFLOP/s.
    pub tflops: f64,
    /// `gbps` or `tflops`: which figure the workload reports; `layer_us` for a step (S1:
    /// microseconds a layer).
    pub metric: String,
    /// What the figure is a fraction of (`copy`: copy bandwidth measured in the same run;
    /// `bf16 peak`: the dense tensor peak; `bf16 matmul`: a measured one; for a step, `kernels'
    /// own time`: the fraction is that time over the layer's).
    pub ceiling: String,
    /// The ceiling's value, in the metric's unit (NaN, `null` in JSON, where none is known:
    /// compute-bound work on the CPU).
    #[serde(deserialize_with = "nan_if_null")]
    pub ceiling_value: f64,
    /// The figure over the ceiling.
    #[serde(deserialize_with = "nan_if_null")]
    pub fraction_of_ceiling: f64,
    /// The swept axis (`context`, `batch`, `queries`), for a sweep's points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<String>,
    /// The point's value on the swept axis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<usize>,
}

/// JSON writes a NaN as `null`: read it back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The header of the table [`Record::table_row`] fills (Markdown).
pub const TABLE_HEADER: &str = "| workload | backend: kernel | splits | time (us) [min, max] | GB/s | TFLOP/s | of ceiling |\n|---|---|---|---|---|---|---|";

impl Record {
    /// One JSON object, one line.
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a record serialises")
    }
    /// A row of [`TABLE_HEADER`]'s table.
    pub fn table_row(&self) -> String {
        let point = match (&self.sweep, self.x) {
            (Some(a), Some(x)) => format!(" ({a} {x})"),
            _ => String::new(),
        };
        let kv = if self.kv_dtype == "fp8" { ", fp8 cache" } else { "" };
        let forced = if self.forced { " (forced)" } else { "" };
        let frac = if self.fraction_of_ceiling.is_finite() { format!("{:.3} of {}", self.fraction_of_ceiling, self.ceiling) } else { "-".into() };
        format!(
            "| {}{point}{kv} | {}: {} | {}{forced} | {:.1} [{:.1}, {:.1}] | {:.1} | {:.1} | {frac} |",
            self.workload, self.backend, self.kernel, self.splits, self.median_us, self.min_us, self.max_us, self.gbps, self.tflops
        )
    }
}

/// Where workloads run: a CUDA device (events, the kernels' own time) or the CPU backend
/// (the wall clock over whole host runs).
pub enum Runner {
    /// A GPU: its runtime, timer and ceilings.
    #[allow(missing_docs)]
    Gpu { rt: Arc<CudaRuntime>, timer: Timer, copy_gbps: f64, compute: (String, f64) },
    /// The CPU backend on rayon's threads; `copy_gbps` from a host memcpy.
    #[allow(missing_docs)]
    Cpu { copy_gbps: f64, reps: usize },
}

impl Runner {
    /// A GPU runner: measures the copy bandwidth now (the bandwidth ceiling of this run).
    pub fn gpu(rt: Arc<CudaRuntime>) -> Result<Runner> {
        let mut timer = Timer::new(&rt)?;
        let copy_gbps = copy_bandwidth(&rt, &mut timer)?;
        let peak = tensor_peak_tflops(rt.arch(), rt.num_sms()).unwrap_or(f64::NAN);
        tracing::info!(device = rt.device_name(), copy_gbps, peak, "bench runner ready");
        Ok(Runner::Gpu { rt, timer, copy_gbps, compute: ("bf16 peak".into(), peak) })
    }

    /// A CPU runner (the CPU backend), timing `reps` runs a measurement; its bandwidth
    /// ceiling is a 256 MiB host copy (read + write).
    pub fn cpu(reps: usize) -> Runner {
        let src = vec![1u8; 256 << 20];
        let mut dst = vec![0u8; 256 << 20];
        let mut t = Vec::new();
        for _ in 0..3 {
            let s = Instant::now();
            dst.copy_from_slice(&src);
            t.push(s.elapsed().as_secs_f64());
            std::hint::black_box(&dst);
        }
        let secs = spread(t).1;
        Runner::Cpu { copy_gbps: 2.0 * src.len() as f64 / secs / 1e9, reps: reps.max(1) }
    }

    /// Replaces the compute ceiling (e.g. a measured bf16 matmul, TFLOP/s).
    pub fn set_compute_ceiling(&mut self, name: &str, tflops: f64) {
        if let Runner::Gpu { compute, .. } = self {
            *compute = (name.into(), tflops);
        }
    }

    /// The bandwidth ceiling, GB/s.
    pub fn copy_gbps(&self) -> f64 {
        match self {
            Runner::Gpu { copy_gbps, .. } | Runner::Cpu { copy_gbps, .. } => *copy_gbps,
        }
    }

    /// The device's name.
    pub fn device_name(&self) -> String {
        match self {
            Runner::Gpu { rt, .. } => rt.device_name().to_string(),
            Runner::Cpu { .. } => format!("CPU ({} threads)", rayon::current_num_threads()),
        }
    }

    /// One line on the device and its ceilings.
    pub fn describe(&self) -> String {
        match self {
            Runner::Gpu { rt, copy_gbps, compute, .. } => {
                format!("device: {} ({}, {} SMs); copy bandwidth {copy_gbps:.0} GB/s (read + write); {} {:.0} TFLOP/s", rt.device_name(), rt.arch(), rt.num_sms(), compute.0, compute.1)
            }
            Runner::Cpu { copy_gbps, .. } => format!("device: {} (the CPU backend); host copy {copy_gbps:.1} GB/s (read + write)", self.device_name()),
        }
    }

    /// The GPU runtime, if this runner has one.
    pub fn runtime(&self) -> Option<Arc<CudaRuntime>> {
        match self {
            Runner::Gpu { rt, .. } => Some(rt.clone()),
            Runner::Cpu { .. } => None,
        }
    }

    /// Times `w`: each backend (the options', else the workload's defaults: on a GPU the
    /// Hopper backend then the portable one where it runs another kernel, on the CPU the
    /// CPU backend) at each plan option. A backend that cannot serve the workload here is
    /// an error naming why.
    pub fn measure(&mut self, w: &Workload, opts: &MeasureOptions) -> Result<Vec<Record>> {
        if w.layers > 1 {
            return self.measure_step(w, opts);
        }
        let spec = w.spec();
        let layout = w.layout(opts.kv)?;
        let mut rng = Rng::new(opts.seed);
        let step_sched = schedule(&mut rng, w.requests(), w.block_size, layout.num_blocks)
            .ok_or_else(|| AttnError::InvalidConfig(format!("{}: the cache cannot hold the workload's blocks", w.id)))?;
        let meta = MetadataBuilder::new(layout).build(&step_sched)?;
        let fp8 = opts.kv == KvCacheDType::Fp8E4m3;
        let mla = matches!(w.shape, Shape::Mla { .. });
        let bidirectional = matches!(w.shape, Shape::Paged { bidirectional: true, .. });
        if fp8 && bidirectional {
            return Err(AttnError::InvalidConfig(format!("{}: an encoder layer caches nothing, so it has no fp8 cache", w.id)));
        }
        let backends = match (&opts.backends[..], &*self) {
            ([], Runner::Gpu { .. }) => w.gpu_backends().to_vec(),
            ([], Runner::Cpu { .. }) => vec![BackendName::Cpu],
            (b, _) => b.to_vec(),
        };
        let plans = if opts.plans.is_empty() { vec![PlanOptions::default()] } else { opts.plans.clone() };
        let n = meta.num_tokens();
        let (hq, d_q, d_out) = match &w.shape {
            Shape::Paged { q_heads, head_dim, .. } => (*q_heads, *head_dim, *head_dim),
            Shape::Mla { heads, .. } => (*heads, MLA_LATENT, MLA_RANK),
        };
        let hkv = layout.num_kv_heads;
        // The step's new K/V rows (a host run writes them into the cache; an encoder reads
        // them): multi-head k and v `[tokens, kv heads, d]`; MLA kv_c `[tokens, 512]` and
        // k_pe `[tokens, 64]`.
        let (k_len, v_len) = if mla { (n * MLA_RANK, n * (MLA_LATENT - MLA_RANK)) } else { (n * hkv * layout.head_dim, n * hkv * layout.head_dim) };
        let q_host = random_values::<bf16>(&mut rng, n * hq * d_q);
        let k_host = random_values::<bf16>(&mut rng, k_len);
        let v_host = random_values::<bf16>(&mut rng, v_len);
        let cache16 = (!fp8 && !bidirectional).then(|| random_cache(layout, &mut rng));
        let cache8 = fp8.then(|| if mla { random_latent_fp8_cache(layout, &mut rng) } else { random_fp8_cache(layout, &mut rng) });
        let (bytes, flops) = (w.bytes(opts.kv), w.flops());
        let device = self.device_name();
        let mut records = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for backend in backends {
            let gpu = self.runtime();
            let mut imp = backend.make_impl::<bf16>(&spec, layout, gpu.clone())?;
            match (&cache16, &cache8) {
                (Some(c), _) => imp.load_cache(c)?,
                (_, Some(c)) if mla => imp.load_fp8_cache(c, &crate::fp8::KvScales::ones(1))?,
                (_, Some(c)) => imp.load_fp8_cache(c, &crate::fp8::KvScales::uniform(hkv, 1.0 / 448.0, 1.0 / 448.0))?,
                _ => {}
            }
            let mut step = Step::new(backend, DType::Bf16, &spec, layout, StepLimits::for_metadata(&meta), gpu.clone())?;
            for (i, plan_opts) in plans.iter().enumerate() {
                let plan = step.prepare_with(&meta, *plan_opts)?;
                let splits = plan.num_splits;
                let kernel = plan
                    .launches
                    .iter()
                    .map(|l| l.kernel.name())
                    .filter(|k| k.starts_with("flash") || k.starts_with("paged") || k.starts_with("mla_decode"))
                    .collect::<Vec<_>>()
                    .join("+");
                let kernel = if kernel.is_empty() { backend.as_str().to_lowercase() } else { kernel };
                // Another backend running the same kernels times nothing new.
                if i == 0 {
                    if seen.contains(&kernel) {
                        break;
                    }
                    seen.push(kernel.clone());
                }
                let (ms, lo, hi) = match self {
                    Runner::Gpu { rt, timer, .. } => {
                        let stream = rt.stream().clone();
                        let q = stream.clone_htod(&q_host)?;
                        let mut out = stream.alloc_zeros::<bf16>(n * hq * d_out)?;
                        if bidirectional {
                            let (k, v) = (stream.clone_htod(&k_host)?, stream.clone_htod(&v_host)?);
                            timer.time_with(false, || imp.run_device(&step, crate::DeviceTensors { q: &q, k: &k, v: &v, out: &mut out, lse: None }))?
                        } else {
                            timer.time_with(w.metric == Metric::Bandwidth, || imp.attend_device(&step, &q, &mut out))?
                        }
                    }
                    Runner::Cpu { reps, .. } => {
                        let mut out = vec![bf16::ZERO; n * hq * d_out];
                        imp.run_host(&step, &q_host, &k_host, &v_host, &mut out, None)?;
                        let mut t = Vec::with_capacity(*reps);
                        for _ in 0..*reps {
                            let s = Instant::now();
                            imp.run_host(&step, &q_host, &k_host, &v_host, &mut out, None)?;
                            t.push(s.elapsed().as_secs_f64() * 1e3);
                        }
                        spread(t)
                    }
                };
                let secs = ms * 1e-3;
                let (gbps, tflops) = (bytes / secs / 1e9, flops / secs / 1e12);
                let (ceiling, ceiling_value, figure, metric) = match (w.metric, &*self) {
                    (Metric::Bandwidth, r) => ("copy".to_string(), r.copy_gbps(), gbps, "gbps"),
                    (Metric::Flops, Runner::Gpu { compute, .. }) => (compute.0.clone(), compute.1, tflops, "tflops"),
                    (Metric::Flops, Runner::Cpu { .. }) => ("none".to_string(), f64::NAN, tflops, "tflops"),
                };
                records.push(Record {
                    bench: w.bench().into(),
                    workload: w.id.clone(),
                    device: device.clone(),
                    kv_dtype: kv_name(opts.kv).into(),
                    backend: backend.as_str().into(),
                    kernel,
                    splits,
                    forced: plan_opts.force_splits.is_some(),
                    median_us: ms * 1e3,
                    min_us: lo * 1e3,
                    max_us: hi * 1e3,
                    gbps,
                    tflops,
                    metric: metric.into(),
                    ceiling,
                    ceiling_value,
                    fraction_of_ceiling: figure / ceiling_value,
                    sweep: w.sweep.map(|(a, _)| a.name().to_string()),
                    x: w.sweep.map(|(_, x)| x),
                });
            }
        }
        Ok(records)
    }
}

impl Runner {
    /// A step of `w.layers` layers (S1): each layer its own cache, one prepared `Step`, the
    /// layers' `forward_device` calls (cache write + attention) as a model makes them. Two
    /// records, time per layer eager and replayed from a CUDA graph, each as a fraction of
    /// the layers' own kernel time (events between the layers of an eager step, median over
    /// layers 1..): 1.0 is a layer that costs nothing beyond its kernels. GPU only.
    fn measure_step(&mut self, w: &Workload, opts: &MeasureOptions) -> Result<Vec<Record>> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        let Runner::Gpu { rt, .. } = &*self else {
            return Err(AttnError::InvalidConfig(format!("{}: a step of {} layers is timed on a GPU (its caches and CUDA graph)", w.id, w.layers)));
        };
        let rt = rt.clone();
        if opts.backends.len() > 1 || !opts.plans.is_empty() {
            return Err(AttnError::InvalidConfig(format!("{}: a step is timed on one backend with its plan's own choices (given {} backends, {} plan options)", w.id, opts.backends.len(), opts.plans.len())));
        }
        let backend = opts.backends.first().copied().unwrap_or(BackendName::CudaPaged);
        let (spec, layout) = (w.spec(), w.layout(opts.kv)?);
        let mut rng = Rng::new(opts.seed);
        let sched = schedule(&mut rng, w.requests(), w.block_size, layout.num_blocks)
            .ok_or_else(|| AttnError::InvalidConfig(format!("{}: the cache cannot hold the workload's blocks", w.id)))?;
        let meta = MetadataBuilder::new(layout).build(&sched)?;
        let cache = random_cache(layout, &mut rng);
        let mut layers = Vec::with_capacity(w.layers);
        for _ in 0..w.layers {
            let mut l = crate::layer::Attention::<bf16>::new(backend, spec.clone(), layout, Some(rt.clone()))?;
            if opts.kv == KvCacheDType::Fp8E4m3 {
                l.set_kv_scales(crate::fp8::KvScales::uniform(layout.num_kv_heads, 1.0 / 448.0, 1.0 / 448.0))?;
            }
            l.load_cache(&cache)?;
            layers.push(l);
        }
        drop(cache);
        let stream = rt.stream().clone();
        let n = meta.num_tokens();
        let (hq, hkv, d) = (spec.num_q_heads, spec.num_kv_heads, spec.head_dim);
        let mut io = Vec::with_capacity(w.layers);
        for _ in 0..w.layers {
            let t = |heads: usize, rng: &mut Rng| stream.clone_htod(&random_values::<bf16>(rng, n * heads * d));
            io.push((t(hq, &mut rng)?, t(hkv, &mut rng)?, t(hkv, &mut rng)?, t(hq, &mut rng)?));
        }
        let mut step = layers[0].new_step(StepLimits::for_metadata(&meta))?;
        let plan = step.prepare(&meta)?.clone();
        let kernel = plan.launches.iter().map(|l| l.kernel.name()).collect::<Vec<_>>().join("+");
        let eager = |layers: &mut Vec<crate::layer::Attention<bf16>>, io: &mut Vec<_>, step: &Step| -> Result<()> {
            for (l, (q, k, v, o)) in layers.iter_mut().zip(io.iter_mut()) {
                l.forward_device(step, q, k, v, o)?;
            }
            Ok(())
        };
        let ctx = stream.context().clone();
        let event = || ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT));
        for _ in 0..3 {
            eager(&mut layers, &mut io, &step)?;
        }
        stream.synchronize()?;
        let per_layer = |ms: f32| ms as f64 * 1e3 / w.layers as f64;
        // Eager: events around the step.
        let mut eager_us = Vec::with_capacity(REPS);
        for _ in 0..REPS {
            let (a, b) = (event()?, event()?);
            a.record(&stream)?;
            eager(&mut layers, &mut io, &step)?;
            b.record(&stream)?;
            b.synchronize()?;
            eager_us.push(per_layer(a.elapsed_ms(&b)?));
        }
        // The kernels alone: events between layers (the queue runs ahead after the first).
        let mut kernel_us = Vec::with_capacity(REPS);
        for _ in 0..REPS {
            let evs = (0..=w.layers).map(|_| event()).collect::<std::result::Result<Vec<_>, _>>()?;
            evs[0].record(&stream)?;
            for (i, (l, (q, k, v, o))) in layers.iter_mut().zip(io.iter_mut()).enumerate() {
                l.forward_device(&step, q, k, v, o)?;
                evs[i + 1].record(&stream)?;
            }
            evs[w.layers].synchronize()?;
            let per = (1..w.layers).map(|i| Ok(evs[i].elapsed_ms(&evs[i + 1])? as f64 * 1e3)).collect::<Result<Vec<f64>>>()?;
            kernel_us.push(spread(per).0);
        }
        // Graph: the step captured once, replayed.
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let captured = eager(&mut layers, &mut io, &step);
        let graph = stream.end_capture(CUgraphInstantiate_flags(0))?;
        captured?;
        let graph = graph.ok_or_else(|| AttnError::InvalidConfig("the step's capture made no graph".into()))?;
        graph.upload()?;
        for _ in 0..3 {
            graph.launch()?;
        }
        let mut graph_us = Vec::with_capacity(REPS);
        for _ in 0..REPS {
            let (a, b) = (event()?, event()?);
            a.record(&stream)?;
            graph.launch()?;
            b.record(&stream)?;
            b.synchronize()?;
            graph_us.push(per_layer(a.elapsed_ms(&b)?));
        }
        let kernels = spread(kernel_us).0;
        let bytes = w.bytes(opts.kv);
        let device = self.device_name();
        let record = |mode: &str, (med, lo, hi): (f64, f64, f64)| Record {
            bench: "step".into(),
            workload: w.id.clone(),
            device: device.clone(),
            kv_dtype: kv_name(opts.kv).into(),
            backend: format!("{backend} ({mode}, {} layers)", w.layers),
            kernel: kernel.clone(),
            splits: plan.num_splits,
            forced: false,
            median_us: med,
            min_us: lo,
            max_us: hi,
            gbps: bytes / (med * 1e-6) / 1e9,
            tflops: w.flops() / (med * 1e-6) / 1e12,
            metric: "layer_us".into(),
            ceiling: "kernels' own time".into(),
            ceiling_value: kernels,
            fraction_of_ceiling: kernels / med,
            sweep: None,
            x: None,
        };
        Ok(vec![record("eager", spread(eager_us)), record("graph", spread(graph_us))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_matches_workloads_md() {
        // D4's ragged lengths: 559,504 tokens in all (WORKLOADS.md's generator).
        let d4 = find("D4").unwrap();
        assert_eq!(d4.requests().iter().map(|r| r.0 + r.1).sum::<usize>(), 559_504);
        // P1: 4 x 4096 causal, 32 heads d128: 4 * 32 * 128 * 4 * (4096 * 4097 / 2).
        assert_eq!(find("P1").unwrap().flops(), 4.0 * 32.0 * 128.0 * 4.0 * (4096.0 * 4097.0 / 2.0));
        // M2: FlashMLA's count.
        assert_eq!(find("M2").unwrap().flops(), 2.0 * 128.0 * 128.0 * 4096.0 * 1088.0);
        // G2 reads its 128-key window only.
        let g2 = find("G2").unwrap();
        assert_eq!(g2.bytes(KvCacheDType::Auto), (64 * 128 * 8 * 64 * 2 * 2 + 2 * 64 * 64 * 64 * 2) as f64);
        for w in catalog() {
            w.spec().validate().unwrap();
            w.layout(KvCacheDType::Auto).unwrap();
        }
    }

    #[test]
    fn groups_and_unknown_ids() {
        let m: Vec<String> = select(&["M".into()]).unwrap().into_iter().map(|w| w.id).collect();
        assert_eq!(m, ["M1", "M2", "M3", "M4", "M5", "M6"]);
        assert_eq!(select(&["D1".into(), "D".into()]).unwrap().len(), 6);
        let e = select(&["Q7".into()]).unwrap_err().to_string();
        assert!(e.contains("Q7") && e.contains("P6"), "{e}");
    }

    #[test]
    fn sweeps_replace_one_axis() {
        let base = find("D1").unwrap();
        let pts = sweep(&base, SweepAxis::Context, &[1024, 2048]).unwrap();
        assert_eq!(pts[1].requests(), &vec![(2047, 1); 64][..]);
        assert_eq!(pts[1].sweep, Some((SweepAxis::Context, 2048)));
        let q = sweep(&base, SweepAxis::Queries, &[4]).unwrap();
        assert_eq!(q[0].requests()[0], (4092, 4));
        assert!(sweep(&base, SweepAxis::Batch, &[0]).is_err());
        // Prefills, ragged batches and steps are not swept: an error naming the workload.
        for id in ["P1", "D4", "S1"] {
            let e = sweep(&find(id).unwrap(), SweepAxis::Context, &[1024]).unwrap_err().to_string();
            assert!(e.contains(id), "{e}");
        }
        // MLA turns compute-bound as heads x query tokens reach 64.
        let m1 = sweep(&find("M1").unwrap(), SweepAxis::Queries, &[1, 4]).unwrap();
        assert_eq!((m1[0].metric, m1[1].metric), (Metric::Bandwidth, Metric::Flops));
    }

    #[test]
    fn a_models_layer_is_timed_as_it_is() {
        // Gemma-2-like: soft-cap and a window, kept by the workload's layer.
        let spec = AttnSpec { softcap: Some(50.0), sliding_window: Some(4096), ..AttnSpec::new(16, 8, 256) };
        let w = decode_of("g", &spec, 2, 8192, 1).unwrap();
        assert_eq!((w.spec().softcap, w.spec().sliding_window), (Some(50.0), Some(4096)));
        // Bytes: the window's keys only, for each of 2 requests (+ q and out).
        assert_eq!(w.bytes(KvCacheDType::Auto), (2 * 4096 * 8 * 256 * 2 * 2 + 2 * 2 * 16 * 256 * 2) as f64);
        let enc = AttnSpec { causal: false, ..AttnSpec::new(4, 4, 64) };
        assert!(decode_of("e", &enc, 1, 64, 1).is_err());
    }

    #[test]
    fn the_step_workload_is_gpu_only_and_says_so() {
        let s1 = find("S1").unwrap();
        assert_eq!((s1.bench(), s1.layers), ("step", 32));
        let e = Runner::cpu(1).measure(&s1, &MeasureOptions::default()).unwrap_err().to_string();
        assert!(e.contains("S1") && e.contains("GPU"), "{e}");
    }

    #[test]
    fn cpu_runner_measures_a_small_decode() {
        let spec = AttnSpec::new(4, 2, 64);
        let w = decode_of("tiny", &spec, 2, 40, 1).unwrap();
        let mut r = Runner::cpu(2);
        let recs = r.measure(&w, &MeasureOptions::default()).unwrap();
        assert_eq!(recs.len(), 1);
        let rec = &recs[0];
        assert_eq!((rec.bench.as_str(), rec.backend.as_str(), rec.metric.as_str()), ("decode", "CPU", "gbps"));
        assert!(rec.median_us > 0.0 && rec.gbps > 0.0 && rec.fraction_of_ceiling > 0.0, "{rec:?}");
        // The JSON line reads back (floats to the last digit or so: JSON's decimal text).
        let back: Record = serde_json::from_str(&rec.json()).unwrap();
        assert_eq!((&back.workload, &back.kernel, back.splits, &back.sweep), (&rec.workload, &rec.kernel, rec.splits, &rec.sweep));
        for (a, b) in [(back.median_us, rec.median_us), (back.gbps, rec.gbps), (back.fraction_of_ceiling, rec.fraction_of_ceiling)] {
            assert!((a - b).abs() <= 1e-12 * b.abs(), "{a} vs {b}");
        }
    }
}
