//! What the cargo benches add to the shared harness (`attn_backends::bench`, which `attn
//! bench` runs too): their command line (`--json`, `--kv-dtype`, workload ids) and the
//! table they print.
#![allow(dead_code, unused_imports)] // each bench uses its own subset

pub use attn_backends::bench::{random_cache, Record, Runner};
use attn_backends::bench::Timer as HarnessTimer;
use attn_backends::cuda::CudaRuntime;
use std::sync::Arc;

/// The harness's timer, failing loudly (a bench is not a library: a CUDA error ends it).
pub struct Timer(HarnessTimer);

impl Timer {
    pub fn new(rt: &Arc<CudaRuntime>) -> Timer {
        Timer(HarnessTimer::new(rt).expect("timer"))
    }
    /// Median and (min, max) in ms of `f`, L2 flushed before each run.
    pub fn time(&mut self, f: impl FnMut() -> attn_backends::Result<()>) -> (f64, f64, f64) {
        self.0.time(f).expect("timed run")
    }
    /// [`Timer::time`], flushing L2 only if `flush`.
    pub fn time_with(&mut self, flush: bool, f: impl FnMut() -> attn_backends::Result<()>) -> (f64, f64, f64) {
        self.0.time_with(flush, f).expect("timed run")
    }
}

/// The GPU runner, or `None` after printing why the bench skips (no driver, no device).
pub fn gpu_runner(bench: &str) -> Option<Runner> {
    match attn_backends::gpu_if_present() {
        Ok(rt) => Some(Runner::gpu(rt).expect("bench runner")),
        Err(why) => {
            println!("{bench} bench: SKIPPED: {why}");
            None
        }
    }
}

pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// The KV-cache dtype of `--kv-dtype auto|bf16|fp8|fp8_e4m3` (or `--kv-dtype=...`): the
/// model's 16-bit type (the default) or fp8 e4m3; an unknown name exits with a usage error.
pub fn kv_dtype_arg() -> attn_backends::KvCacheDType {
    let args: Vec<String> = std::env::args().collect();
    let value = args.iter().position(|a| a == "--kv-dtype").and_then(|i| args.get(i + 1).cloned()).or_else(|| args.iter().find_map(|a| a.strip_prefix("--kv-dtype=").map(str::to_string)));
    match value.as_deref() {
        None | Some("bf16") | Some("f16") => attn_backends::KvCacheDType::Auto,
        Some(v) => attn_backends::KvCacheDType::parse(v).unwrap_or_else(|| {
            eprintln!("--kv-dtype {v}: not one of auto, bf16, fp8, fp8_e4m3");
            std::process::exit(2);
        }),
    }
}

/// Workload ids given on the command line (`M2`, `P1`; options start with `-`): only those
/// run (profiling). An id no workload has is an error naming the known ones.
pub fn only_ids(known: &[&str]) -> Vec<String> {
    // Option values (`--kv-dtype fp8`, `--block-size 32`) are not workload ids.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only: Vec<String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with('-') && !(*i > 0 && matches!(args[i - 1].as_str(), "--kv-dtype" | "--block-size" | "--interleave")))
        .map(|(_, a)| a.clone())
        .collect();
    if let Some(bad) = only.iter().find(|o| !known.contains(&o.as_str())) {
        eprintln!("unknown workload `{bad}` (known: {}; options are `--name` or `--name=value`)", known.join(", "));
        std::process::exit(2);
    }
    only
}

/// The harness's table header and a record's row, and the record's JSON line with `json`.
pub fn print_header() {
    println!("{}", attn_backends::bench::TABLE_HEADER);
}

pub fn print_record(r: &Record, json: bool) {
    println!("{}", r.table_row());
    if json {
        println!("{}", r.json());
    }
}
