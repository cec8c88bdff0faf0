//! Decode throughput of a Llama through attn-candle against candle-transformers' own Llama,
//! on the same weights and device: `batch` requests of `context` tokens each, prefilled,
//! then timed over `--steps` decode steps (one token a request a step). Tokens per second
//! for each (batch, context) pair of `--shapes`.
//!
//! The twin prefills through the paged cache in steps of at most `--prefill-chunk` tokens;
//! candle-transformers prefills the batch in chunks through its own cache. Its attention
//! upcasts the whole cache to f32 at every layer and step, so it is skipped where its memory
//! would pass `--ref-gib` (64 x 32k: about 72 GiB, past the default 60).
//!
//! `cargo run --release -p attn-candle --features cuda --example llama_throughput -- --cuda --shapes 1:4096,64:4096,1:32768,64:32768`

#[path = "../tests/common/mod.rs"]
mod common;

use attn_candle::llama::{LlamaShape, PagedLlama};
use attn_candle::{KvCacheLayout, MetadataBuilder, RequestSchedule, SchedulerOutput};
use candle_core::{DType, Device, Tensor};
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}
fn num(name: &str, default: usize) -> usize {
    arg(name).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}: `{v}` is not a number")))
}

fn main() -> candle_core::Result<()> {
    let cuda = std::env::args().any(|a| a == "--cuda");
    let dev = if cuda { Device::new_cuda(0)? } else { Device::Cpu };
    let dtype = if cuda { DType::BF16 } else { DType::F32 };
    let shapes: Vec<(usize, usize)> = arg("--shapes")
        .unwrap_or_else(|| if cuda { "1:4096,64:4096,1:32768,64:32768".into() } else { "1:256,8:256".into() })
        .split(',')
        .map(|p| {
            let (b, c) = p.split_once(':').unwrap_or_else(|| panic!("--shapes: `{p}` is not BATCH:CONTEXT"));
            (b.parse().expect("batch"), c.parse().expect("context"))
        })
        .collect();
    let (steps, chunk, ref_gib) = (num("--steps", 32), num("--prefill-chunk", 16384), num("--ref-gib", 60));
    let (hidden, layers) = (num("--hidden", if cuda { 2048 } else { 256 }), num("--layers", 4));
    let max_ctx = shapes.iter().map(|s| s.1).max().unwrap_or(1) + steps + 1;
    // Llama-3's head shape (128 dims, 4 query heads a kv head), at a small hidden size.
    let shape = LlamaShape { hidden_size: hidden, intermediate_size: hidden * 7 / 2, vocab_size: 32_000, num_hidden_layers: layers, num_attention_heads: hidden / 128, num_key_value_heads: (hidden / 512).max(1), rms_norm_eps: 1e-5, rope_theta: 500_000.0, max_position_embeddings: max_ctx };
    println!("device {dev:?} ({dtype:?}); Llama: {layers} layers, hidden {hidden}, {} q heads / {} kv heads of {} dims; {steps} timed decode steps", shape.num_attention_heads, shape.num_key_value_heads, shape.head_dim());
    println!("| batch | context | attn-candle (paged) tokens/s | candle-transformers tokens/s | ratio |");
    println!("|---|---|---|---|---|");
    for (batch, context) in shapes {
        let bs = 16;
        let per_req = (context + steps + 1).div_ceil(bs);
        let layout = KvCacheLayout::new(batch * per_req, bs, shape.num_key_value_heads, shape.head_dim()).map_err(attn_candle::candle_error)?;
        let (reference, mut twin) = common::models(&shape, layout, 3, dtype, &dev)?;
        let blocks: Vec<Vec<u32>> = (0..batch).map(|r| ((r * per_req) as u32..((r + 1) * per_req) as u32).collect()).collect();
        let token = |i: usize| (i * 7919 % 31_000) as u32 + 1;

        // The twin: prefill in steps of at most `chunk` tokens, then the timed decode.
        let mut done = vec![0usize; batch];
        while done.iter().any(|&d| d < context) {
            let mut reqs = Vec::new();
            let mut budget = chunk;
            for r in 0..batch {
                let n = (context - done[r]).min(budget);
                if n > 0 {
                    reqs.push((r, done[r], n));
                    budget -= n;
                }
                if budget == 0 {
                    break;
                }
            }
            run_twin(&mut twin, layout, &blocks, &reqs, &token)?;
            for &(r, _, n) in &reqs {
                done[r] += n;
            }
        }
        // One untimed decode step at the last position the timed ones reach: the step's
        // buffers are sized for the whole batch before the clock starts (the timed steps write
        // its cache positions again).
        let last: Vec<(usize, usize, usize)> = (0..batch).map(|r| (r, context + steps - 1, 1)).collect();
        run_twin(&mut twin, layout, &blocks, &last, &token)?;
        dev.synchronize()?;
        let t = Instant::now();
        for s in 0..steps {
            let reqs: Vec<(usize, usize, usize)> = (0..batch).map(|r| (r, context + s, 1)).collect();
            run_twin(&mut twin, layout, &blocks, &reqs, &token)?;
        }
        dev.synchronize()?;
        let ours = (batch * steps) as f64 / t.elapsed().as_secs_f64();
        drop(twin);

        // candle-transformers: the batch's prompts in chunks (its cache grows by
        // concatenation; its attention upcasts the whole cache to f32 and materializes the
        // scores), then the timed decode, one token a request a step. Skipped where its memory
        // would pass --ref-gib; an error (out of memory) is reported, not fatal.
        let (h, hd, hkv) = (shape.num_attention_heads, shape.head_dim(), shape.num_key_value_heads);
        let full = context + steps;
        let ref_chunk = ((8usize << 30) / (batch * h * full * 4)).clamp(1, context);
        let need = 2 * layers * batch * full * hkv * hd * dtype.size_in_bytes() + 2 * batch * full * h * hd * 4 + 3 * batch * h * ref_chunk * full * 4;
        let need_gib = need as f64 / (1u64 << 30) as f64;
        let theirs: std::result::Result<f64, String> = if need_gib > ref_gib as f64 {
            Err(format!("not run: it would take about {need_gib:.0} GiB (over --ref-gib {ref_gib})"))
        } else {
            let run = || -> candle_core::Result<f64> {
                let cfg = common::reference_config(&shape);
                let mut cache = candle_transformers::models::llama::Cache::new(true, dtype, &cfg, &dev)?;
                let mut at = 0;
                while at < context {
                    let c = ref_chunk.min(context - at);
                    let part: Vec<u32> = (0..batch).flat_map(|r| (at..at + c).map(move |i| token(r * 131 + i))).collect();
                    reference.forward(&Tensor::from_vec(part, (batch, c), &dev)?, at, &mut cache)?;
                    at += c;
                }
                dev.synchronize()?;
                let t = Instant::now();
                for s in 0..steps {
                    let next: Vec<u32> = (0..batch).map(|r| token(r * 131 + context + s)).collect();
                    reference.forward(&Tensor::from_vec(next, (batch, 1), &dev)?, context + s, &mut cache)?;
                }
                dev.synchronize()?;
                Ok((batch * steps) as f64 / t.elapsed().as_secs_f64())
            };
            run().map_err(|e| format!("failed: {e}"))
        };
        match theirs {
            Ok(v) => println!("| {batch} | {context} | {ours:.1} | {v:.1} | {:.2} |", ours / v),
            Err(why) => println!("| {batch} | {context} | {ours:.1} | {why} | |"),
        }
    }
    Ok(())
}

/// One step of the twin: requests (index, tokens already cached, new tokens).
fn run_twin(twin: &mut PagedLlama, layout: KvCacheLayout, blocks: &[Vec<u32>], reqs: &[(usize, usize, usize)], token: &impl Fn(usize) -> u32) -> candle_core::Result<()> {
    let sched = SchedulerOutput { requests: reqs.iter().map(|&(r, c, n)| RequestSchedule { num_computed_tokens: c, num_new_tokens: n, block_ids: blocks[r].clone() }).collect() };
    let meta = MetadataBuilder::new(layout).build(&sched).map_err(attn_candle::candle_error)?;
    let tokens: Vec<u32> = reqs.iter().flat_map(|&(r, c, n)| (c..c + n).map(move |i| token(r * 131 + i))).collect();
    twin.forward(&tokens, &meta)?;
    Ok(())
}
