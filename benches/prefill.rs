//! Prefill benchmarks P1-P6 of WORKLOADS.md (P6: bidirectional, an encoder layer) on a CUDA
//! device, through the shared harness (`attn_backends::bench`, which `attn bench` runs too).
//!
//! bf16, causal, paged KV cache (block size 16, block tables from a shuffled pool), random
//! inputs. The step's K/V are in the cache (P1-P4: the prompt itself, as a fresh prefill
//! writes it; P5: 2048 cached tokens + the 512 new ones per request); the timed work is the
//! attention launches of one layer (the wgmma kernel on an sm_90a module, then the portable
//! one), CUDA events, median of 30 after a warm-up, L2 not flushed. FLOPs as WORKLOADS.md
//! counts them: `4 x q_heads x head_dim x (sum over queries of the keys each attends to)`;
//! the ceiling is the dense bf16 tensor peak.
//!
//! `cargo bench --bench prefill [-- --json] [--kv-dtype fp8] [--block-size=N] [P1 ...]`
//! (block size 16 unless given: how the kernels' speed depends on the page size).

use attn_backends::bench::{catalog, MeasureOptions};

mod common;
use common::{flag, gpu_runner, kv_dtype_arg, only_ids, print_header, print_record};

fn main() {
    let json = flag("--json");
    let kv = kv_dtype_arg();
    let block_size = std::env::args().find_map(|a| a.strip_prefix("--block-size=").map(|n| n.parse::<usize>().expect("--block-size=N")));
    let list: Vec<_> = catalog().into_iter().filter(|w| w.bench() == "prefill").collect();
    let only = only_ids(&list.iter().map(|w| w.id.as_str()).collect::<Vec<_>>());
    let Some(mut runner) = gpu_runner("prefill") else { return };
    println!("{}; block size {}; KV cache {}", runner.describe(), block_size.unwrap_or(16), attn_backends::bench::kv_name(kv));
    print_header();
    let opts = MeasureOptions { kv, ..MeasureOptions::default() };
    for mut w in list.into_iter().filter(|w| only.is_empty() || only.contains(&w.id)) {
        if kv == attn_backends::KvCacheDType::Fp8E4m3 && w.id == "P6" {
            continue; // an encoder layer caches nothing
        }
        if let Some(b) = block_size {
            w.block_size = b;
        }
        for r in runner.measure(&w, &opts).expect("measure") {
            print_record(&r, json);
        }
    }
}
