//! Prefill benchmarks P1-P6 of WORKLOADS.md (P6: bidirectional, an encoder layer) on a CUDA device (custom harness).
//!
//! bf16, causal, paged KV cache (block size 16, block tables from a shuffled pool), random
//! inputs. The step's K/V are in the cache (P1-P4: the prompt itself, as a fresh prefill
//! writes it; P5: 2048 cached tokens + the 512 new ones per request); the timed work is the
//! attention launches of one layer (`CudaPagedImpl::attend`: the flash prefill kernel, the
//! wgmma one on an sm_90a module and then the portable one for comparison), CUDA
//! events, median of `common::REPS` after a warm-up, L2 not flushed. FLOPs as WORKLOADS.md counts them:
//! `4 x q_heads x head_dim x (sum over queries of the keys each attends to)`. Peers:
//! WORKLOADS.md's H100 figures (PyTorch SDPA: cuDNN and its FlashAttention-2 backend).
//!
//! `cargo bench --bench prefill [-- --json] [--block-size=N] [P1 ...]` (block size 16 unless
//! given: how the kernels' speed depends on the page size).

use attn_backends::backend::cuda_paged::CudaPagedImpl;
use attn_backends::workload::{blocks_needed, random_values, schedule, Rng};
use attn_backends::{AttnSpec, BackendName, DType, HostKvCache, KvCacheLayout, MetadataBuilder, Step, StepLimits};
use common::{kv_dtype_arg, kv_dtype_name, only_ids, random_fp8_cache, Timer};
use half::bf16;

mod common;
/// The paged cache's block size unless `--block-size=N` is given.
const BLOCK_SIZE: usize = 16;

struct Workload {
    id: &'static str,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// (cached tokens, new tokens) per request.
    requests: Vec<(usize, usize)>,
    /// WORKLOADS.md's H100 figures, TFLOP/s: (cuDNN, FlashAttention-2 backend).
    peers: (f64, f64),
    /// Bidirectional (P6, an encoder layer): every query sees its request's tokens, K/V are
    /// the step's own tensors and nothing is cached.
    bidirectional: bool,
}

fn workloads() -> Vec<Workload> {
    vec![
        Workload { id: "P1", q_heads: 32, kv_heads: 8, head_dim: 128, requests: vec![(0, 4096); 4], peers: (592.0, 329.0), bidirectional: false },
        Workload { id: "P2", q_heads: 32, kv_heads: 32, head_dim: 128, requests: vec![(0, 1024); 16], peers: (450.0, 266.0), bidirectional: false },
        Workload { id: "P3", q_heads: 32, kv_heads: 8, head_dim: 128, requests: vec![(0, 16384)], peers: (566.0, 336.0), bidirectional: false },
        Workload { id: "P4", q_heads: 32, kv_heads: 8, head_dim: 64, requests: vec![(0, 4096); 4], peers: (438.0, 288.0), bidirectional: false },
        Workload { id: "P5", q_heads: 32, kv_heads: 8, head_dim: 128, requests: vec![(2048, 512); 8], peers: (f64::NAN, f64::NAN), bidirectional: false },
        // No H100 peer figure: cuDNN's non-causal SDPA is timed in the same lease (gpu-run.sh).
        Workload { id: "P6", q_heads: 16, kv_heads: 16, head_dim: 64, requests: vec![(0, 1024); 32], peers: (f64::NAN, f64::NAN), bidirectional: true },
    ]
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let block_size = std::env::args()
        .find_map(|a| a.strip_prefix("--block-size=").map(|n| n.parse::<usize>().expect("--block-size=N")))
        .unwrap_or(BLOCK_SIZE);
    let kv = kv_dtype_arg();
    let fp8 = kv == attn_backends::KvCacheDType::Fp8E4m3;
    let rt = match attn_backends::gpu_if_present() {
        Ok(rt) => rt,
        Err(why) => {
            println!("prefill bench: SKIPPED: {why}");
            return;
        }
    };
    let stream = rt.stream().clone();
    let mut timer = Timer::new(&rt);
    println!("device: {} ({}, {} SMs), block size {block_size}, KV cache {}", rt.device_name(), rt.arch(), rt.num_sms(), kv_dtype_name(kv));
    println!("| workload | kernel | time (us) [min, max] | TFLOP/s | peers on H100: cuDNN / FA2 (of cuDNN, of FA2) |");
    println!("|---|---|---|---|---|");
    let mut rng = Rng::new(11);
    let mut p1 = f64::NAN;
    let only = only_ids(&workloads().iter().map(|w| w.id).collect::<Vec<_>>());
    for w in workloads().into_iter().filter(|w| only.is_empty() || only.iter().any(|o| o == w.id)) {
        if fp8 && w.bidirectional {
            continue; // an encoder layer caches nothing
        }
        let d = w.head_dim;
        let spec = AttnSpec { causal: !w.bidirectional, ..AttnSpec::new(w.q_heads, w.kv_heads, d) };
        let num_blocks = blocks_needed(&w.requests, block_size);
        let layout = KvCacheLayout::new(num_blocks, block_size, w.kv_heads, d).expect("layout").with_kv_dtype(kv);
        let meta = MetadataBuilder::new(layout).build(&schedule(&mut rng, &w.requests, block_size, num_blocks).expect("blocks")).expect("metadata");
        let cache = if fp8 {
            None
        } else {
            Some(HostKvCache { layout, key: random_values(&mut rng, layout.elements()), value: random_values(&mut rng, layout.elements()) })
        };
        let cache8 = fp8.then(|| random_fp8_cache(layout, &mut rng));
        let n = meta.num_tokens();
        let q = stream.clone_htod(&random_values::<bf16>(&mut rng, n * w.q_heads * d)).expect("q");
        let mut out = stream.alloc_zeros::<bf16>(n * w.q_heads * d).expect("out");
        // An encoder layer's keys and values: the step's own (the other workloads read the cache).
        let kv_rows = |rng: &mut Rng| stream.clone_htod(&random_values::<bf16>(rng, n * w.kv_heads * d)).expect("k, v");
        let encoder_kv = w.bidirectional.then(|| (kv_rows(&mut rng), kv_rows(&mut rng)));
        // CUDA_PAGED (the wgmma kernel on an sm_90a module), then the portable kernel where
        // that is another one.
        let mut seen = Vec::new();
        for backend in [BackendName::CudaPaged, BackendName::CudaPagedPortable] {
            let mut imp = CudaPagedImpl::<bf16>::with_backend(rt.clone(), spec.clone(), layout, backend).expect("backend");
            match (&cache, &cache8) {
                (Some(c), _) => imp.load_cache(c).expect("cache"),
                (None, Some(c)) => {
                    use attn_backends::AttentionImpl;
                    imp.load_fp8_cache(c, &attn_backends::KvScales::uniform(w.kv_heads, 1.0 / 448.0, 1.0 / 448.0)).expect("cache")
                }
                (None, None) => unreachable!("one of the two caches is made"),
            }
            let mut step = Step::new(backend, DType::Bf16, &spec, layout, StepLimits::for_metadata(&meta), Some(rt.clone())).expect("step");
            let plan = step.prepare(&meta).expect("plan").clone();
            let kernel = plan.launches.iter().map(|l| l.kernel.name()).filter(|k| k.starts_with("flash") || k.starts_with("paged")).collect::<Vec<_>>().join("+");
            if seen.contains(&kernel) {
                continue;
            }
            seen.push(kernel.clone());
            // Keys attended, summed over queries: query i of a request with c cached sees c + i + 1.
            // Bidirectional: every query sees all of its request's q tokens.
            let pairs: f64 = w.requests.iter().map(|&(c, q)| if w.bidirectional { (q * q) as f64 } else { (0..q).map(|i| (c + i + 1) as f64).sum::<f64>() }).sum();
            let flops = 4.0 * w.q_heads as f64 * d as f64 * pairs;
            // Compute-bound: timed warm (no L2 flush).
            let (ms, lo, hi) = if let Some((k, v)) = &encoder_kv {
                timer.time_with(false, || imp.run(&step, attn_backends::DeviceTensors { q: &q, k, v, out: &mut out, lse: None }))
            } else {
                timer.time_with(false, || imp.attend(&step, &q, &mut out))
            };
            let (med, lo, hi) = (ms * 1e3, lo * 1e3, hi * 1e3);
            let tflops = flops / (med * 1e-6) / 1e12;
            if w.id == "P1" && backend == BackendName::CudaPaged {
                p1 = tflops;
            }
            let peers = if w.peers.0.is_nan() {
                format!("- (of P1: {:.2})", tflops / p1)
            } else {
                format!("{:.0} / {:.0} ({:.2}, {:.2})", w.peers.0, w.peers.1, tflops / w.peers.0, tflops / w.peers.1)
            };
            println!("| {} | {kernel} | {:.1} [{:.1}, {:.1}] | {:.1} | {} |", w.id, med, lo, hi, tflops, peers);
            if json {
                println!(
                    "{{\"bench\":\"prefill\",\"workload\":\"{}\",\"device\":\"{}\",\"kv_dtype\":\"{}\",\"kernel\":\"{kernel}\",\"block_size\":{block_size},\"median_us\":{med:.2},\"tflops\":{tflops:.2}}}",
                    w.id,
                    rt.device_name(),
                    kv_dtype_name(kv)
                );
            }
        }
    }
}
