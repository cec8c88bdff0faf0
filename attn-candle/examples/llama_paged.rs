//! A real candle model through attn-candle: candle-transformers' Llama built at a small size
//! from seeded random weights (no downloads), and its twin whose attention is
//! attn-backends' paged attention. Ragged prompts run through the twin with continuous
//! batching (a request joins with its prompt, decodes, leaves; waiting ones take its place)
//! and each request alone through candle-transformers' own forward with its contiguous KV
//! cache; the logits are compared at every step and the greedy tokens must agree. Prints
//! the tokens per second of both.
//!
//! `cargo run --release -p attn-candle --example llama_paged [-- --layers N --hidden N --requests N --max-batch N --new N]`

#[path = "../tests/common/mod.rs"]
mod common;

use attn_candle::llama::{Engine, LlamaShape};
use attn_candle::KvCacheLayout;
use candle_core::{DType, Device, Tensor};
use std::time::Instant;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}: `{v}` is not a number")))
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let (hidden, layers) = (arg("--hidden", 256), arg("--layers", 4));
    let shape = LlamaShape { hidden_size: hidden, intermediate_size: hidden * 8 / 3, vocab_size: 1024, num_hidden_layers: layers, num_attention_heads: hidden / 64, num_key_value_heads: (hidden / 64 / 2).max(1), rms_norm_eps: 1e-5, rope_theta: 500_000.0, max_position_embeddings: 4096 };
    let (requests, max_batch, new) = (arg("--requests", 12), arg("--max-batch", 6), arg("--new", 16));
    let prompts = common::prompts(requests, 8, 300, shape.vocab_size, 5);
    let new_tokens: Vec<usize> = (0..requests).map(|i| new / 2 + (i * 7) % new.max(1)).collect();
    let blocks = prompts.iter().zip(&new_tokens).map(|(p, n)| (p.len() + n).div_ceil(16)).sum::<usize>();
    let layout = KvCacheLayout::new(blocks, 16, shape.num_key_value_heads, shape.head_dim()).map_err(attn_candle::candle_error)?;
    println!("Llama: {layers} layers, hidden {hidden}, {} q heads / {} kv heads of {} dims, vocab {}; {requests} ragged prompts ({}-{} tokens), at most {max_batch} a step", shape.num_attention_heads, shape.num_key_value_heads, shape.head_dim(), shape.vocab_size, prompts.iter().map(Vec::len).min().unwrap(), prompts.iter().map(Vec::len).max().unwrap());
    let (reference, twin) = common::models(&shape, layout, 3, DType::F32, &dev)?;
    let generated: usize = new_tokens.iter().sum();
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();

    // The twin alone, timed: continuous batching over the paged caches.
    let (_, timing_twin) = common::models(&shape, layout, 3, DType::F32, &dev)?;
    let mut timed = Engine::new(timing_twin, layout, max_batch);
    for (p, &n) in prompts.iter().zip(&new_tokens) {
        timed.add(p.clone(), n)?;
    }
    let t = Instant::now();
    let mut steps = 0;
    while timed.pending() > 0 {
        timed.step()?;
        steps += 1;
    }
    let ours = t.elapsed().as_secs_f64();

    // candle-transformers alone, timed: each request's prompt, then its tokens one by one.
    let cfg = common::reference_config(&shape);
    let t = Instant::now();
    for (p, r) in prompts.iter().zip(&timed.finished_in_id_order()) {
        let mut cache = candle_transformers::models::llama::Cache::new(true, DType::F32, &cfg, &dev)?;
        let mut pos = 0;
        let mut input = p.clone();
        for &tok in r {
            reference.forward(&Tensor::new(input.as_slice(), &dev)?.unsqueeze(0)?, pos, &mut cache)?;
            pos += input.len();
            input = vec![tok];
        }
    }
    let theirs = t.elapsed().as_secs_f64();
    println!("twin (attn-backends paged, continuous batching): {steps} steps, {:.1} generated tokens/s ({:.1} tokens/s with the prompts)", generated as f64 / ours, (generated + prompt_tokens) as f64 / ours);
    println!("candle-transformers (contiguous cache, one request at a time): {:.1} generated tokens/s ({:.1} with the prompts)", generated as f64 / theirs, (generated + prompt_tokens) as f64 / theirs);

    // The check: the logits of every step against the reference's.
    let mut engine = Engine::new(twin, layout, max_batch);
    let c = common::compare(&mut engine, &reference, &shape, &prompts, &new_tokens, DType::F32, &dev)?;
    println!("compared {} logit rows over {} steps (up to {} requests a step): max rel err {:.2e}; greedy tokens {}", c.compared, c.steps, c.max_batch_seen, c.max_rel_err, if c.token_mismatches.is_empty() { "equal".to_string() } else { format!("DIFFER for requests {:?}", c.token_mismatches) });
    if c.max_rel_err > 1e-4 || !c.token_mismatches.is_empty() {
        return Err(candle_core::Error::Msg("the twin disagrees with candle-transformers".into()));
    }
    Ok(())
}
