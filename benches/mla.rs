//! MLA decode benchmarks M1-M4 of WORKLOADS.md (each on CUDA_MLA, the wgmma kernel on an sm_90a module, and on
//! CUDA_MLA_PORTABLE where that runs another kernel) on a CUDA device (custom harness).
//!
//! DeepSeek-V3 shapes: latent cache bf16 `[blocks, 64, 576]` (kv_c 512 + k_pe 64), block
//! tables from a shuffled pool, random cache and queries (never zeros). Times the attention
//! launches of one layer (`CudaMlaImpl::attend`: MLA decode, plus the merge when the plan
//! splits) with CUDA events, L2 flushed before every repetition, median of 30. Metrics as
//! WORKLOADS.md defines them: bytes (latent cache read + q + out) per second and its
//! fraction of the copy bandwidth measured in the same run for M1 and M3; TFLOP/s for M2 and M4 with
//! FLOPs = 2 x batch x queries x heads x context x (576 + 512). Peers: FlashMLA reports about
//! 3000 GB/s memory-bound and 580-660 TFLOP/s compute-bound on an H800 (not measured here).
//!
//! With `--kv-dtype fp8` the latent cache is FlashMLA's fp8 rows (656 bytes a token:
//! random e4m3 bytes, tile scales near 1/448, bf16 rope): bytes count 656 a key, and the
//! JSON lines say `"kv_dtype":"fp8"`.
//!
//! `cargo bench --bench mla [-- --json] [--kv-dtype fp8] [--sweep]` (`--sweep`: also forced
//! split counts and the shallower pipeline)

mod common;

use attn_backends::backend::cuda_mla::CudaMlaImpl;
use attn_backends::workload::{random_values, schedule, Rng};
use attn_backends::{AttentionImpl, AttnSpec, BackendName, DType, KvCacheLayout, MetadataBuilder, MlaSpec, PlanOptions, Step, StepLimits};
use common::{copy_bandwidth, kv_dtype_arg, kv_dtype_name, only_ids, random_cache, random_latent_fp8_cache, Timer};
use half::bf16;

const BLOCK_SIZE: usize = 64;
const LATENT: usize = 576;
const RANK: usize = 512;

struct Workload {
    id: &'static str,
    heads: usize,
    batch: usize,
    context: usize,
    queries: usize,
    /// Reported as TFLOP/s (compute-bound) rather than bandwidth.
    compute_bound: bool,
}

fn workloads() -> Vec<Workload> {
    vec![
        Workload { id: "M1", heads: 16, batch: 128, context: 4096, queries: 1, compute_bound: false },
        Workload { id: "M2", heads: 128, batch: 128, context: 4096, queries: 1, compute_bound: true },
        Workload { id: "M3", heads: 16, batch: 128, context: 4096, queries: 2, compute_bound: false },
        Workload { id: "M4", heads: 128, batch: 32, context: 16384, queries: 2, compute_bound: true },
    ]
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let sweep = std::env::args().any(|a| a == "--sweep");
    let rt = match attn_backends::gpu_if_present() {
        Ok(rt) => rt,
        Err(why) => {
            println!("mla bench: SKIPPED: {why}");
            return;
        }
    };
    let kv = kv_dtype_arg();
    let fp8 = kv == attn_backends::KvCacheDType::Fp8E4m3;
    let mut timer = Timer::new(&rt);
    let copy = copy_bandwidth(&rt, &mut timer);
    println!("device: {} ({}, {} SMs); copy bandwidth {:.0} GB/s (read + write); latent cache {}", rt.device_name(), rt.arch(), rt.num_sms(), copy, kv_dtype_name(kv));
    println!("| workload | kernel | splits x keys | time (us) [min, max] | GB/s | of copy | TFLOP/s |");
    println!("|---|---|---|---|---|---|---|");
    let mut rng = Rng::new(576);
    let only = only_ids(&workloads().iter().map(|w| w.id).collect::<Vec<_>>());
    for w in workloads().into_iter().filter(|w| only.is_empty() || only.iter().any(|o| o == w.id)) {
        let mla = MlaSpec { num_q_heads: w.heads, kv_lora_rank: RANK, qk_rope_head_dim: LATENT - RANK, qk_nope_head_dim: 128, v_head_dim: 128, scale: 1.0 / 192f32.sqrt() };
        let spec = AttnSpec { mla: Some(mla), ..AttnSpec::new(w.heads, w.heads, 192) };
        // The context includes this step's query tokens (already in the cache).
        let shapes = vec![(w.context - w.queries, w.queries); w.batch];
        let num_blocks = w.batch * w.context.div_ceil(BLOCK_SIZE);
        let layout = KvCacheLayout::new(num_blocks, BLOCK_SIZE, 1, LATENT).expect("layout").with_kv_dtype(kv);
        let meta = MetadataBuilder::new(layout).build(&schedule(&mut rng, &shapes, BLOCK_SIZE, num_blocks).expect("blocks")).expect("metadata");
        let cache16 = (!fp8).then(|| random_cache(layout, &mut rng));
        let cache8 = fp8.then(|| random_latent_fp8_cache(layout, &mut rng));
        let n = meta.num_tokens();
        let q = rt.stream().clone_htod(&random_values::<bf16>(&mut rng, n * w.heads * LATENT)).expect("q");
        let mut out = rt.stream().alloc_zeros::<bf16>(n * w.heads * RANK).expect("out");
        let row_bytes = if fp8 { attn_backends::fp8::LATENT_ROW_BYTES } else { LATENT * 2 };
        let bytes = (w.batch * w.context * row_bytes + n * w.heads * (LATENT + RANK) * 2) as f64;
        let flops = 2.0 * (w.batch * w.queries * w.heads * w.context) as f64 * (LATENT + RANK) as f64;
        // CUDA_MLA (the wgmma kernel on an sm_90a module), then the portable kernel where
        // that is another one.
        let mut seen = Vec::new();
        for backend in [BackendName::CudaMla, BackendName::CudaMlaPortable] {
            let mut imp = CudaMlaImpl::<bf16>::with_backend(rt.clone(), spec.clone(), layout, backend).expect("backend");
            match (&cache16, &cache8) {
                (Some(c), _) => imp.load_cache(c).expect("cache upload"),
                (_, Some(c)) => imp.load_fp8_cache(c, &attn_backends::fp8::KvScales::ones(1)).expect("cache upload"),
                _ => unreachable!("one of the two caches is made"),
            }
            let mut step = Step::new(backend, DType::Bf16, &spec, layout, StepLimits::for_metadata(&meta), Some(rt.clone())).expect("step");
            let heuristic = step.prepare(&meta).expect("plan").num_splits;
            let first = step.plan().expect("plan").launches.iter().map(|l| l.kernel.name()).find(|k| k.starts_with("mla_decode")).unwrap_or_default();
            if seen.contains(&first) {
                continue;
            }
            seen.push(first.clone());
            // The plan's choice, then (--sweep) forced split counts, and the 2-stage kernel.
            let mut options = vec![PlanOptions::default()];
            if sweep {
                options.extend([1, 2, 4, 8].into_iter().filter(|&s| s != heuristic).map(|s| PlanOptions { force_splits: Some(s), ..PlanOptions::default() }));
                // The other depths: the Hopper kernel's two tile shapes, the portable one's
                // shallower pipeline.
                let hopper = first.starts_with("mla_decode_sm90");
                let depths: &[u32] = if hopper { &[2, 4] } else { &[2] };
                options.extend(depths.iter().map(|&d| PlanOptions { pipeline_stages: Some(d), ..PlanOptions::default() }));
            }
            for opts in options {
                let plan = step.prepare_with(&meta, opts).expect("plan");
                let chunk = plan.rows::<attn_backends::backend::cuda_mla::MlaRows>().map_or(0, |r| r.chunk_keys);
                let splits = plan.num_splits;
                let kernel = plan.launches.iter().map(|l| l.kernel.name()).find(|k| k.starts_with("mla_decode")).unwrap_or_else(|| "-".into());
                let (ms, lo, hi) = timer.time(|| imp.attend(&step, &q, &mut out));
                let gbs = bytes / (ms * 1e-3) / 1e9;
                let tflops = flops / (ms * 1e-3) / 1e12;
                let tag = if opts.force_splits.is_some() { " (forced)" } else { "" };
                println!("| {} | {kernel} | {splits} x {chunk}{tag} | {:.1} [{:.1}, {:.1}] | {gbs:.0} | {:.3} | {tflops:.1} |", w.id, ms * 1e3, lo * 1e3, hi * 1e3, gbs / copy);
                if json {
                    let metric = if w.compute_bound { format!("\"tflops\":{tflops:.2}") } else { format!("\"gbps\":{gbs:.1},\"copy_gbps\":{copy:.1},\"fraction_of_copy\":{:.4}", gbs / copy) };
                    println!(
                        "{{\"bench\":\"mla\",\"workload\":\"{}\",\"device\":\"{}\",\"kv_dtype\":\"{}\",\"kernel\":\"{kernel}\",\"splits\":{splits},\"median_us\":{:.2},{metric}}}",
                        w.id,
                        rt.device_name(),
                        kv_dtype_name(kv),
                        ms * 1e3
                    );
                }
            }
        }
    }
}
