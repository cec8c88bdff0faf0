//! Decode benchmarks D1-D5, G1, G2 and L1 of WORKLOADS.md on a CUDA device (custom harness).
//!
//! bf16, block size 16, random cache and queries (never zeros), block tables from a shuffled
//! pool. Times the attention kernels alone (paged attention, plus the merge when the plan
//! splits) with CUDA events, L2 flushed before every repetition, after a time-based warm-up;
//! reports the median and spread of >= 20 repetitions. Bytes are counted from the workload:
//! K and V read (the keys each query sees: G2's window, L1's chunk) + q + out. The ceiling is the device's copy bandwidth measured in the same
//! run (device-to-device copy, bytes read + written). Peers: WORKLOADS.md's H100 figures.
//!
//! With `--kv-dtype fp8` the cache is fp8 e4m3 (random bytes, scales 1/448): bytes count one
//! an element (plus the scales), and the JSON lines say `"kv_dtype":"fp8"`.
//!
//! `cargo bench --bench decode [-- --json] [--kv-dtype fp8] [--extra] [--sweep]`

use attn_backends::backend::cuda_paged::CudaPagedImpl;
use attn_backends::workload::{blocks_needed, ragged_lengths, random_values, schedule, Rng};
use attn_backends::{AttnSpec, BackendName, DType, KvCacheLayout, MetadataBuilder, PlanOptions, Step, StepLimits};
use half::bf16;

mod common;
use common::{copy_bandwidth, kv_dtype_arg, kv_dtype_name, random_cache, random_fp8_cache, Timer};

const BLOCK_SIZE: usize = 16;

struct Workload {
    id: &'static str,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    lens: Vec<usize>,
    /// WORKLOADS.md's H100 peers, as fractions of copy bandwidth: (cuDNN SDPA contiguous, Triton paged).
    peers: (f64, f64),
    /// The layer's features (sinks, window, chunks: the G and L workloads), on `AttnSpec::new`.
    features: Features,
}

/// A decode workload's attention features.
#[derive(Clone, Copy, Default)]
struct Features {
    sinks: bool,
    window: Option<usize>,
    chunk: Option<usize>,
}

impl Features {
    fn apply(self, mut spec: AttnSpec) -> AttnSpec {
        spec.sliding_window = self.window;
        spec.chunk_size = self.chunk;
        if self.sinks {
            let hq = spec.num_q_heads;
            spec = spec.with_sinks((0..hq).map(|h| (h % 7) as f32 * 0.25).collect());
        }
        spec
    }
}

/// Keys a decode at position `len - 1` reads: its window or chunk, else all `len`.
fn keys_read(spec: &AttnSpec, len: usize) -> usize {
    spec.visible_keys(len - 1, len).len()
}

const NONE: Features = Features { sinks: false, window: None, chunk: None };

const NO_PEERS: (f64, f64) = (f64::NAN, f64::NAN);

fn workloads() -> Vec<Workload> {
    vec![
        Workload { id: "D1", q_heads: 32, kv_heads: 8, head_dim: 128, lens: vec![4096; 64], peers: (0.985, 0.969), features: NONE },
        Workload { id: "D2", q_heads: 32, kv_heads: 8, head_dim: 128, lens: vec![1024; 256], peers: (0.977, 0.963), features: NONE },
        Workload { id: "D3", q_heads: 32, kv_heads: 8, head_dim: 128, lens: vec![32768; 4], peers: (0.927, 0.878), features: NONE },
        Workload { id: "D4", q_heads: 32, kv_heads: 8, head_dim: 128, lens: ragged_lengths(128, 8192, 128), peers: (0.518, 0.932), features: NONE },
        Workload { id: "D5", q_heads: 32, kv_heads: 32, head_dim: 128, lens: vec![2048; 32], peers: (0.988, 0.969), features: NONE },
        // The models people serve now (benches/WORKLOADS.md's G and L rows), each beside the same
        // kernel without the feature: sinks and chunks should cost nothing (the `ref` rows),
        // and a window should cost about as much as a context of its size.
        Workload { id: "G1", q_heads: 64, kv_heads: 8, head_dim: 64, lens: vec![8192; 64], peers: NO_PEERS, features: Features { sinks: true, ..NONE } },
        Workload { id: "G1 ref (no sinks)", q_heads: 64, kv_heads: 8, head_dim: 64, lens: vec![8192; 64], peers: NO_PEERS, features: NONE },
        Workload { id: "G2", q_heads: 64, kv_heads: 8, head_dim: 64, lens: vec![8192; 64], peers: NO_PEERS, features: Features { sinks: true, window: Some(128), chunk: None } },
        Workload { id: "G2 ref (128-token context, sinks)", q_heads: 64, kv_heads: 8, head_dim: 64, lens: vec![128; 64], peers: NO_PEERS, features: Features { sinks: true, ..NONE } },
        Workload { id: "L1", q_heads: 40, kv_heads: 8, head_dim: 128, lens: vec![32768; 16], peers: NO_PEERS, features: Features { chunk: Some(8192), ..NONE } },
        Workload { id: "L1 ref (8192-token context)", q_heads: 40, kv_heads: 8, head_dim: 128, lens: vec![8192; 16], peers: NO_PEERS, features: NONE },
    ]
}

/// Not WORKLOADS.md workloads (`--extra`): D1's batch at the other compiled head dims, to
/// see the kernels' other instantiations; no peer figures.
fn extra_workloads() -> Vec<Workload> {
    vec![
        Workload { id: "X1 (D1, Gemma-2 heads 16:8, d256)", q_heads: 16, kv_heads: 8, head_dim: 256, lens: vec![4096; 64], peers: NO_PEERS, features: NONE },
        Workload { id: "X2 (D1 at d64)", q_heads: 32, kv_heads: 8, head_dim: 64, lens: vec![4096; 64], peers: NO_PEERS, features: NONE },
    ]
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    // --sweep: also time split counts 1, 2, 4, 8, 16 (to tune the heuristic).
    let sweep = std::env::args().any(|a| a == "--sweep");
    let extra = std::env::args().any(|a| a == "--extra");
    let kv = kv_dtype_arg();
    let fp8 = kv == attn_backends::KvCacheDType::Fp8E4m3;
    let rt = match attn_backends::gpu_if_present() {
        Ok(rt) => rt,
        Err(why) => {
            println!("decode bench: SKIPPED: {why}");
            return;
        }
    };
    let mut timer = Timer::new(&rt);
    let copy = copy_bandwidth(&rt, &mut timer);
    println!("device: {} ({}, {} SMs); copy bandwidth {:.0} GB/s (read + write); KV cache {}", rt.device_name(), rt.arch(), rt.num_sms(), copy, kv_dtype_name(kv));
    println!("| workload | splits | time (us) [min, max] | GB/s | of copy | peers on H100: cuDNN / Triton |");
    println!("|---|---|---|---|---|---|");
    let mut rng = Rng::new(2024);
    let mut all = workloads();
    if extra {
        all.extend(extra_workloads());
    }
    for w in all {
        let d = w.head_dim;
        let spec = w.features.apply(AttnSpec::new(w.q_heads, w.kv_heads, d));
        let shapes: Vec<(usize, usize)> = w.lens.iter().map(|&l| (l - 1, 1)).collect();
        let num_blocks = blocks_needed(&shapes, BLOCK_SIZE);
        let layout = KvCacheLayout::new(num_blocks, BLOCK_SIZE, w.kv_heads, d).expect("layout").with_kv_dtype(kv);
        let step = schedule(&mut rng, &shapes, BLOCK_SIZE, num_blocks).expect("blocks");
        let meta = MetadataBuilder::new(layout).build(&step).expect("metadata");
        let mut imp = CudaPagedImpl::<bf16>::new(rt.clone(), spec.clone(), layout).expect("backend");
        if fp8 {
            use attn_backends::AttentionImpl;
            let scales = attn_backends::KvScales::uniform(w.kv_heads, 1.0 / 448.0, 1.0 / 448.0);
            imp.load_fp8_cache(&random_fp8_cache(layout, &mut rng), &scales).expect("cache upload");
        } else {
            imp.load_cache(&random_cache(layout, &mut rng)).expect("cache upload");
        }
        let n = meta.num_tokens();
        let q = rt.stream().clone_htod(&random_values::<bf16>(&mut rng, n * w.q_heads * d)).expect("q");
        let mut out = rt.stream().alloc_zeros::<bf16>(n * w.q_heads * d).expect("out");
        let mut step = Step::new(BackendName::CudaPaged, DType::Bf16, &spec, layout, StepLimits::for_metadata(&meta), Some(rt.clone())).expect("step");
        // K and V as stored (fp8: one byte an element, and the two f32 scales a kv head).
        let elem = if fp8 { 1 } else { 2 };
        // (Only the keys each query sees: a window or chunk reads its own.)
        let kv_bytes: usize = w.lens.iter().map(|&l| keys_read(&spec, l) * w.kv_heads * d * 2 * elem).sum::<usize>() + if fp8 { 2 * 4 * w.kv_heads } else { 0 };
        let bytes = (kv_bytes + 2 * n * w.q_heads * d * 2) as f64;
        let heuristic = step.prepare(&meta).expect("plan").num_splits;
        let mut split_options = vec![heuristic];
        if heuristic != 1 {
            split_options.push(1);
        }
        if sweep {
            for s in [1, 2, 4, 8, 16] {
                if !split_options.contains(&s) {
                    split_options.push(s);
                }
            }
        }
        for splits in split_options {
            step.prepare_with(&meta, PlanOptions { force_splits: Some(splits), ..PlanOptions::default() }).expect("plan");
            let (ms, lo, hi) = timer.time(|| imp.attend(&step, &q, &mut out));
            let gbs = bytes / (ms * 1e-3) / 1e9;
            let tag = if splits == heuristic { "" } else { " (forced)" };
            let peers = if w.peers.0.is_nan() || fp8 { "-".to_string() } else { format!("{:.3} / {:.3}", w.peers.0, w.peers.1) };
            println!(
                "| {} | {}{} | {:.1} [{:.1}, {:.1}] | {:.0} | {:.3} | {} |",
                w.id, splits, tag, ms * 1e3, lo * 1e3, hi * 1e3, gbs, gbs / copy, peers
            );
            if json {
                println!(
                    "{{\"bench\":\"decode\",\"workload\":\"{}\",\"device\":\"{}\",\"kv_dtype\":\"{}\",\"splits\":{},\"median_us\":{:.2},\"gbps\":{:.1},\"copy_gbps\":{:.1},\"fraction_of_copy\":{:.4}}}",
                    w.id, rt.device_name(), kv_dtype_name(kv), splits, ms * 1e3, gbs, copy, gbs / copy
                );
            }
        }
    }
}
