//! Step benchmark S1 of WORKLOADS.md on a CUDA device, through the shared harness
//! (`attn_backends::bench`, which `attn bench S1` runs too): one decode step of Llama-3-8B
//! shapes (32 query heads, 8 KV heads, head dim 128; D1's batch of 64 decodes x 4096
//! context, bf16, block size 16) through the `Attention` layer for 32 layers, each with its
//! own paged cache, one prepared `Step` for all.
//!
//! - eager: the 32 layers' `forward_device` calls as a model makes them, CUDA events around
//!   the step;
//! - graph: the same 32 layers captured once in a CUDA graph, events around its replay;
//! - kernels: the GPU time of one layer's kernels (cache write + attention) when the queue is
//!   ahead of them: events between the layers of an eager step, median over layers 1..31.
//!
//! Reported per layer, with the overhead `step / kernels - 1`. Median of 30 steps.
//!
//! `cargo bench --bench step [-- --json]`

use attn_backends::bench::{find, MeasureOptions};

mod common;
use common::{flag, gpu_runner, print_header, print_record};

fn main() {
    let json = flag("--json");
    let Some(mut runner) = gpu_runner("step") else { return };
    println!("{}", runner.describe());
    print_header();
    let s1 = find("S1").expect("S1 is in the catalog");
    for r in runner.measure(&s1, &MeasureOptions::default()).expect("measure") {
        print_record(&r, json);
        println!("{}: {:.1} us a layer against its kernels' {:.1} us: overhead {:+.2}%", r.backend, r.median_us, r.ceiling_value, (r.median_us / r.ceiling_value - 1.0) * 100.0);
    }
}
