//! Decode benchmarks D1-D5, G1, G2 and L1 of WORKLOADS.md (and X1, X2 with `--extra`) on a
//! CUDA device, through the shared harness (`attn_backends::bench`, which `attn bench` runs
//! too).
//!
//! bf16, block size 16, random cache and queries (never zeros), block tables from a shuffled
//! pool. Times the attention kernels alone (paged attention, plus the merge when the plan
//! splits) with CUDA events, L2 flushed before every repetition, after a time-based warm-up;
//! reports the median and spread of 30 repetitions. Bytes are counted from the workload:
//! K and V read (the keys each query sees: G2's window, L1's chunk) + q + out; the ceiling
//! is the device's copy bandwidth measured in the same run. The G and L rows come with a
//! `ref` row, the same kernel without the feature: sinks and chunks should cost nothing, and
//! a window about as much as a context of its size.
//!
//! With `--kv-dtype fp8` the cache is fp8 e4m3 (random bytes, scales 1/448): bytes count one
//! an element (plus the scales), and the JSON lines say `"kv_dtype":"fp8"`.
//!
//! `cargo bench --bench decode [-- --json] [--kv-dtype fp8] [--extra] [--sweep] [--portable] [IDS]`
//! (`--sweep`: also split counts 1, 2, 4, 8, 16; `--portable`: also the portable kernel,
//! `CUDA_PAGED_PORTABLE`)

use attn_backends::bench::{catalog, Features, MeasureOptions, Shape, Workload};
use attn_backends::PlanOptions;

mod common;
use common::{flag, gpu_runner, kv_dtype_arg, only_ids, print_header, print_record};

/// `w` without its feature, named `ref (...)`, at `len` keys a request.
fn reference(w: &Workload, what: &str, features: Features, len: Option<usize>) -> Workload {
    let mut r = w.clone();
    r.id = format!("{} ref ({what})", w.id);
    if let Shape::Paged { features: f, requests, .. } = &mut r.shape {
        *f = features;
        if let Some(l) = len {
            requests.iter_mut().for_each(|q| *q = (l - 1, 1));
        }
    }
    r
}

fn main() {
    let json = flag("--json");
    let kv = kv_dtype_arg();
    let mut list = Vec::new();
    for w in catalog().into_iter().filter(|w| w.bench() == "decode" && w.id != "D6") {
        let extra = w.id.starts_with('X');
        if extra && !flag("--extra") {
            continue;
        }
        let refs = match w.id.as_str() {
            "G1" => vec![reference(&w, "no sinks", Features::default(), None)],
            "G2" => vec![reference(&w, "128-token context, sinks", Features { sinks: true, ..Features::default() }, Some(128))],
            "L1" => vec![reference(&w, "8192-token context", Features::default(), Some(8192))],
            _ => vec![],
        };
        list.push(w);
        list.extend(refs);
    }
    let ids: Vec<&str> = list.iter().map(|w| w.id.as_str()).collect();
    let only = only_ids(&ids);
    let Some(mut runner) = gpu_runner("decode") else { return };
    println!("{}; KV cache {}", runner.describe(), attn_backends::bench::kv_name(kv));
    print_header();
    // The plan's split count, then (--sweep) forced ones.
    let mut plans = vec![PlanOptions::default()];
    if flag("--sweep") {
        plans.extend([1, 2, 4, 8, 16].map(|s| PlanOptions { force_splits: Some(s), ..PlanOptions::default() }));
    }
    // CUDA_PAGED; with --portable also CUDA_PAGED_PORTABLE, whose decode kernel CUDA_PAGED
    // replaces where the sm_90a module has a row of its own (the kernel is in the record).
    let mut backends = vec![attn_backends::BackendName::CudaPaged];
    if flag("--portable") {
        backends.push(attn_backends::BackendName::CudaPagedPortable);
    }
    let opts = MeasureOptions { kv, plans, backends, ..MeasureOptions::default() };
    for w in list.iter().filter(|w| only.is_empty() || only.contains(&w.id)) {
        for r in runner.measure(w, &opts).expect("measure") {
            print_record(&r, json);
        }
    }
}
