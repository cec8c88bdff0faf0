//! candle-transformers' Llama against its twin on attn-backends' paged attention, on the
//! same seeded random weights: ragged prompts under continuous batching (requests joining
//! and leaving mid-run), the logits compared at every step, greedy tokens equal. A tiny
//! model, on the CPU (CI); `examples/llama_paged.rs` runs a bigger one and times both.

mod common;

use attn_candle::llama::{Engine, LlamaShape};
use attn_candle::KvCacheLayout;
use candle_core::{DType, Device};

fn tiny() -> LlamaShape {
    LlamaShape { hidden_size: 64, intermediate_size: 160, vocab_size: 97, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, rms_norm_eps: 1e-5, rope_theta: 10_000.0, max_position_embeddings: 256 }
}

fn run(dtype: DType, bound: f64) {
    let dev = Device::Cpu;
    let shape = tiny();
    // 7 requests, at most 3 a step: the later ones join as the first ones leave.
    let layout = KvCacheLayout::new(48, 16, shape.num_key_value_heads, shape.head_dim()).unwrap();
    let (reference, twin) = common::models(&shape, layout, 7, dtype, &dev).unwrap();
    let prompts = common::prompts(7, 3, 40, shape.vocab_size, 11);
    let new_tokens = [5, 3, 9, 4, 7, 2, 6];
    let mut engine = Engine::new(twin, layout, 3);
    let c = common::compare(&mut engine, &reference, &shape, &prompts, &new_tokens, dtype, &dev).unwrap();
    println!("{dtype:?}: {} steps, up to {} requests a step, {} logit rows compared, max rel err {:.3e} (bound {bound:.0e})", c.steps, c.max_batch_seen, c.compared, c.max_rel_err);
    assert_eq!(c.compared, new_tokens.iter().sum::<usize>());
    assert_eq!(c.max_batch_seen, 3);
    assert!(c.steps > *new_tokens.iter().max().unwrap(), "requests joined after others left: {c:?}");
    assert_eq!(c.nonfinite, (0, 0), "non-finite logits (ours, the reference's)");
    assert!(c.max_rel_err < bound, "{c:?}");
    assert!(c.token_mismatches.is_empty(), "greedy tokens differ for requests {:?}", c.token_mismatches);
    assert_eq!(engine.finished.len(), 7);
}

#[test]
fn twin_matches_candle_transformers_f32() {
    run(DType::F32, 1e-4);
}

#[test]
fn twin_matches_candle_transformers_bf16() {
    // bf16 rounds each layer's activations: the bound is bf16's, a few ulps of the logits.
    run(DType::BF16, 5e-2);
}

#[test]
fn the_engine_refuses_requests_it_could_never_serve() {
    let dev = Device::Cpu;
    let shape = tiny();
    let layout = KvCacheLayout::new(4, 16, shape.num_key_value_heads, shape.head_dim()).unwrap();
    let (_, twin) = common::models(&shape, layout, 7, DType::F32, &dev).unwrap();
    let mut engine = Engine::new(twin, layout, 2);
    for (prompt, new, why) in [(vec![], 3, "empty prompt"), (vec![1; 250], 10, "max_position_embeddings"), (vec![1; 60], 10, "blocks")] {
        let e = engine.add(prompt, new).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
    assert_eq!(engine.pending(), 0);
    // Two requests of 40 + 20 tokens each need 4 blocks each: the second waits for the first
    // to leave (its blocks are reserved at admission), and both finish.
    engine.add(vec![3; 40], 20).unwrap();
    engine.add(vec![5; 40], 20).unwrap();
    let mut steps = 0;
    while engine.pending() > 0 {
        let outs = engine.step().unwrap();
        assert_eq!(outs.len(), 1, "one request at a time fits the pool");
        steps += 1;
    }
    assert_eq!((steps, engine.finished.len()), (40, 2));
}

#[test]
fn twin_matches_candle_transformers_f16() {
    run(DType::F16, 2e-2);
}
