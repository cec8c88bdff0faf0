//! What the twin test and the example share: seeded random Llama weights (no downloads), the
//! reference model (candle-transformers' own Llama and its contiguous KV cache), and the
//! comparison of a continuous-batching run against it.
#![allow(dead_code)]

use attn_backends::workload::Rng;
use attn_candle::llama::{Engine, LlamaShape, PagedLlama, StepOutput};
use attn_candle::KvCacheLayout;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama as reference;
use std::collections::HashMap;

/// Every weight of a Llama of `shape`, by candle-transformers' names: uniform values from a
/// seeded generator (never zeros), linear weights scaled by 1/sqrt(fan in), norms near 1.
pub fn weights(shape: &LlamaShape, seed: u64, dtype: DType, dev: &Device) -> Result<HashMap<String, Tensor>> {
    let mut rng = Rng::new(seed);
    let (h, i, d) = (shape.hidden_size, shape.intermediate_size, shape.head_dim());
    let (hq, hkv) = (shape.num_attention_heads, shape.num_key_value_heads);
    let mut w = HashMap::new();
    let mut put = |name: String, rows: usize, cols: usize, scale: f32, offset: f32| -> Result<()> {
        // `Rng::uniform` is already symmetric, in [-1, 1): `2u - 1` would be [-3, 1), a mean of
        // -1 that grows the activations layer by layer until f16 overflows to NaN on both sides.
        let v: Vec<f32> = (0..rows * cols).map(|_| offset + scale * (rng.uniform() + 1e-3)).collect();
        let t = if rows == 1 { Tensor::from_vec(v, cols, dev)? } else { Tensor::from_vec(v, (rows, cols), dev)? };
        w.insert(name, t.to_dtype(dtype)?);
        Ok(())
    };
    let lin = |fan_in: usize| 1.7 / (fan_in as f32).sqrt();
    put("model.embed_tokens.weight".into(), shape.vocab_size, h, 1.0, 0.0)?;
    for l in 0..shape.num_hidden_layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.self_attn.q_proj.weight"), hq * d, h, lin(h), 0.0)?;
        put(format!("{p}.self_attn.k_proj.weight"), hkv * d, h, lin(h), 0.0)?;
        put(format!("{p}.self_attn.v_proj.weight"), hkv * d, h, lin(h), 0.0)?;
        put(format!("{p}.self_attn.o_proj.weight"), h, hq * d, lin(hq * d), 0.0)?;
        put(format!("{p}.mlp.gate_proj.weight"), i, h, lin(h), 0.0)?;
        put(format!("{p}.mlp.up_proj.weight"), i, h, lin(h), 0.0)?;
        put(format!("{p}.mlp.down_proj.weight"), h, i, lin(i), 0.0)?;
        put(format!("{p}.input_layernorm.weight"), 1, h, 0.1, 1.0)?;
        put(format!("{p}.post_attention_layernorm.weight"), 1, h, 0.1, 1.0)?;
    }
    put("model.norm.weight".into(), 1, h, 0.1, 1.0)?;
    put("lm_head.weight".into(), shape.vocab_size, h, lin(h), 0.0)?;
    Ok(w)
}

/// candle-transformers' config of the same shape.
pub fn reference_config(s: &LlamaShape) -> reference::Config {
    reference::Config {
        hidden_size: s.hidden_size,
        intermediate_size: s.intermediate_size,
        vocab_size: s.vocab_size,
        num_hidden_layers: s.num_hidden_layers,
        num_attention_heads: s.num_attention_heads,
        num_key_value_heads: s.num_key_value_heads,
        use_flash_attn: false,
        rms_norm_eps: s.rms_norm_eps,
        rope_theta: s.rope_theta,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling: None,
        max_position_embeddings: s.max_position_embeddings,
        tie_word_embeddings: false,
    }
}

/// Both models from the same weights: (candle-transformers' Llama, the paged twin).
pub fn models(shape: &LlamaShape, layout: KvCacheLayout, seed: u64, dtype: DType, dev: &Device) -> Result<(reference::Llama, PagedLlama)> {
    let w = weights(shape, seed, dtype, dev)?;
    let reference = reference::Llama::load(VarBuilder::from_tensors(w.clone(), dtype, dev), &reference_config(shape))?;
    let twin = PagedLlama::load(VarBuilder::from_tensors(w, dtype, dev), shape, layout)?;
    Ok((reference, twin))
}

/// Ragged prompts of random tokens.
pub fn prompts(n: usize, lo: usize, hi: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (0..rng.range(lo, hi + 1)).map(|_| rng.below(vocab) as u32).collect()).collect()
}

/// What a run of the engine against the reference found.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Steps the engine ran.
    pub steps: usize,
    /// Requests in the most crowded step.
    pub max_batch_seen: usize,
    /// (request id, position) logits compared.
    pub compared: usize,
    /// The largest |ours - reference| over all logits, over the largest |reference| logit.
    pub max_rel_err: f64,
    /// Requests with a greedy token of the engine's that is not an argmax of the reference's
    /// logits at that step (an exact tie agrees either way).
    pub token_mismatches: Vec<usize>,
    /// Logits that were NaN or infinite: ours, the reference's (a max over them would skip
    /// them, so they are counted apart and fail the comparison).
    pub nonfinite: (usize, usize),
}

/// Runs `prompts` through the engine (continuous batching: at most `max_batch` a step, so
/// requests join as others leave; request i generates `new_tokens[i]`), and each request
/// alone through the reference (its prompt, then its generated tokens one by one, as
/// candle-transformers' examples decode), comparing the logits at every step.
pub fn compare(engine: &mut Engine, reference: &reference::Llama, shape: &LlamaShape, prompts: &[Vec<u32>], new_tokens: &[usize], dtype: DType, dev: &Device) -> Result<Comparison> {
    for (p, &n) in prompts.iter().zip(new_tokens) {
        engine.add(p.clone(), n)?;
    }
    let mut ours: HashMap<usize, Vec<StepOutput>> = HashMap::new();
    let mut c = Comparison::default();
    while engine.pending() > 0 {
        let outs = engine.step()?;
        c.steps += 1;
        c.max_batch_seen = c.max_batch_seen.max(outs.len());
        for o in outs {
            ours.entry(o.id).or_default().push(o);
        }
    }
    let cfg = reference_config(shape);
    let mut worst = 0f64;
    for (id, p) in prompts.iter().enumerate() {
        let steps = &ours[&id];
        let mut cache = reference::Cache::new(true, dtype, &cfg, dev)?;
        let mut pos = 0;
        let mut input = p.clone();
        let mut agree = true;
        for s in steps {
            let logits = reference.forward(&Tensor::new(input.as_slice(), dev)?.unsqueeze(0)?, pos, &mut cache)?.squeeze(0)?.to_vec1::<f32>()?;
            pos += input.len();
            assert_eq!(s.position + 1, pos, "request {id}: the engine's position and the reference's agree");
            c.nonfinite.0 += s.logits.iter().filter(|x| !x.is_finite()).count();
            c.nonfinite.1 += logits.iter().filter(|x| !x.is_finite()).count();
            let scale = logits.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
            let err = s.logits.iter().zip(&logits).fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
            worst = worst.max(err / scale);
            c.compared += 1;
            // Greedy agreement: the engine's token is one of the reference's argmax (an exact
            // tie, common in bf16 logits, may break either way: candle's argmax and a max_by
            // pick different ends of it).
            let top = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            agree &= logits.get(s.token as usize).is_some_and(|&x| x == top);
            // Both continue from the engine's token, so one near-tie cannot derail the rest.
            input = vec![s.token];
        }
        if !agree {
            c.token_mismatches.push(id);
        }
    }
    c.max_rel_err = worst;
    Ok(c)
}
