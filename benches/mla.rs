//! MLA decode benchmarks M1-M4 of WORKLOADS.md (each on CUDA_MLA, the wgmma kernel on an
//! sm_90a module, and on CUDA_MLA_PORTABLE where that runs another kernel) on a CUDA device,
//! through the shared harness (`attn_backends::bench`, which `attn bench` runs too).
//!
//! DeepSeek-V3 shapes: latent cache bf16 `[blocks, 64, 576]` (kv_c 512 + k_pe 64), block
//! tables from a shuffled pool, random cache and queries (never zeros). Times the attention
//! launches of one layer (MLA decode, plus the merge when the plan splits) with CUDA events,
//! L2 flushed before every repetition of the memory-bound M1 and M3, median of 30. Metrics as
//! WORKLOADS.md defines them: bytes (latent cache read + q + out) per second and its fraction
//! of the copy bandwidth for M1 and M3; TFLOP/s for M2 and M4 with FLOPs = 2 x batch x
//! queries x heads x context x (576 + 512). Peers: FlashMLA reports about 3000 GB/s
//! memory-bound and 580-660 TFLOP/s compute-bound on an H800 (not measured here).
//!
//! With `--kv-dtype fp8` the latent cache is FlashMLA's fp8 rows (656 bytes a token).
//!
//! `cargo bench --bench mla [-- --json] [--kv-dtype fp8] [--sweep] [M2 ...]` (`--sweep`:
//! also forced split counts and the other pipeline depths)

use attn_backends::bench::{catalog, MeasureOptions};
use attn_backends::{BackendName, PlanOptions};

mod common;
use common::{flag, gpu_runner, kv_dtype_arg, only_ids, print_header, print_record};

fn main() {
    let json = flag("--json");
    let kv = kv_dtype_arg();
    // M5 is the context-parallel workload: `cargo bench --bench dcp`.
    let list: Vec<_> = catalog().into_iter().filter(|w| w.bench() == "mla" && w.id != "M5").collect();
    let only = only_ids(&list.iter().map(|w| w.id.as_str()).collect::<Vec<_>>());
    let Some(mut runner) = gpu_runner("mla") else { return };
    println!("{}; latent cache {}", runner.describe(), attn_backends::bench::kv_name(kv));
    print_header();
    for w in list.into_iter().filter(|w| only.is_empty() || only.contains(&w.id)) {
        if !flag("--sweep") {
            // Both backends in one call: the harness skips the portable one where the Hopper
            // backend's plan runs the same kernel (on an A100).
            let opts = MeasureOptions { kv, ..MeasureOptions::default() };
            runner.measure(&w, &opts).expect("measure").iter().for_each(|r| print_record(r, json));
            continue;
        }
        for backend in w.gpu_backends() {
            // The plan's choice, then (--sweep) forced split counts and the other depths: the
            // Hopper kernel's two tile shapes, the portable one's shallower pipeline.
            let mut plans = vec![PlanOptions::default()];
            plans.extend([1, 2, 4, 8].map(|s| PlanOptions { force_splits: Some(s), ..PlanOptions::default() }));
            let depths: &[u32] = if backend == BackendName::CudaMla { &[2, 4] } else { &[2] };
            plans.extend(depths.iter().map(|&d| PlanOptions { pipeline_stages: Some(d), ..PlanOptions::default() }));
            let opts = MeasureOptions { kv, plans, backends: vec![backend], ..MeasureOptions::default() };
            match runner.measure(&w, &opts) {
                Ok(recs) => recs.iter().for_each(|r| print_record(r, json)),
                // A depth or backend this device has no kernel for: said, not fatal.
                Err(e) => println!("| {} | {backend}: not run: {e} | | | | | |", w.id),
            }
        }
    }
}
