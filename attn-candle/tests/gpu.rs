//! The candle layer on candle's CUDA device (the `cuda` feature): attn-backends' kernels on
//! candle's stream, reading candle's tensors. Against attention computed in f64 on the CPU
//! from the same random inputs (ragged requests, a prefill, a decode and a chunk over the
//! paged cache); the Llama twin against candle-transformers' own forward on the same GPU.
//! Without a CUDA device each test says so and passes (`ATTN_REQUIRE_GPU=1` makes that a
//! failure, as in the GPU run).
#![cfg(feature = "cuda")]

mod common;

use attn_candle::llama::{Engine, LlamaShape};
use attn_candle::{AttnSpec, BackendName, KvCacheLayout, MetadataBuilder, PagedAttention, RequestSchedule, SchedulerOutput, StepLimits};
use candle_core::{DType, Device, Tensor, D};

fn cuda(test: &str) -> Option<Device> {
    let dev = if attn_backends::cuda::driver_present() { Device::new_cuda(0).map_err(|e| e.to_string()) } else { Err("no CUDA driver library".into()) };
    match dev {
        Ok(d) => Some(d),
        Err(why) if std::env::var_os("ATTN_REQUIRE_GPU").is_some_and(|v| v == "1") => panic!("{test}: ATTN_REQUIRE_GPU=1 and no CUDA device: {why}"),
        Err(why) => {
            eprintln!("{test}: skipped: no CUDA device ({why})");
            None
        }
    }
}

/// softmax(q k^T / sqrt(d), causal) v for one request's whole sequence, in f64 on the CPU,
/// GQA by repeating kv heads.
fn oracle(q: &Tensor, k: &Tensor, v: &Tensor, group: usize) -> Tensor {
    let (q, k, v) = (q.to_dtype(DType::F64).unwrap(), k.to_dtype(DType::F64).unwrap(), v.to_dtype(DType::F64).unwrap());
    let (t, _, d) = q.dims3().unwrap();
    let rep = |x: &Tensor| {
        let (t, hkv, d) = x.dims3().unwrap();
        x.unsqueeze(2).unwrap().expand((t, hkv, group, d)).unwrap().reshape((t, hkv * group, d)).unwrap().transpose(0, 1).unwrap().contiguous().unwrap()
    };
    let q = q.transpose(0, 1).unwrap().contiguous().unwrap();
    let (k, v) = (rep(&k), rep(&v));
    let s = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
    let mask: Vec<f64> = (0..t).flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f64::NEG_INFINITY })).collect();
    let s = s.broadcast_add(&Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap()).unwrap();
    let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
    p.matmul(&v).unwrap().transpose(0, 1).unwrap().contiguous().unwrap()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    let a = got.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = want.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert!(a.iter().all(|x| x.is_finite()), "a row was left unwritten (the output is poisoned with NaN)");
    let num = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    num / b.iter().map(|y| y * y).sum::<f64>().sqrt()
}

#[test]
fn layer_on_candle_cuda_matches_the_f64_oracle() {
    let Some(dev) = cuda("layer_on_candle_cuda_matches_the_f64_oracle") else { return };
    for (dtype, hq, hkv, d) in [(DType::BF16, 32, 8, 128), (DType::F16, 8, 8, 64), (DType::BF16, 16, 2, 256)] {
        let layout = KvCacheLayout::new(64, 16, hkv, d).unwrap();
        // Three requests: their whole sequences, on the CPU, in f32.
        let lens = [37usize, 5, 64];
        let seqs: Vec<(Tensor, Tensor, Tensor)> = lens
            .iter()
            .map(|&l| (Tensor::randn(0f32, 1.0, (l, hq, d), &Device::Cpu).unwrap(), Tensor::randn(0f32, 1.0, (l, hkv, d), &Device::Cpu).unwrap(), Tensor::randn(0f32, 1.0, (l, hkv, d), &Device::Cpu).unwrap()))
            .collect();
        // Blocks from a shuffled pool: request r holds blocks[r].
        let blocks: [Vec<u32>; 3] = [vec![40, 3, 17], vec![9], vec![55, 21, 0, 33, 12]];
        let mut attn = PagedAttention::new(AttnSpec::new(hq, hkv, d), layout, dtype, &dev).unwrap();
        assert_ne!(attn.backend(), BackendName::Cpu, "{dtype:?} d{d}: a GPU backend serves the layer");
        let mut step = attn.new_step(StepLimits::new(256, 4, 128, 16)).unwrap();
        // Steps as (request, computed, new): prefills of 30, 4 and 50 tokens; then a decode
        // of requests 0 and 1 with a chunk of 14 for request 2; then the rest of request 0.
        let steps: [&[(usize, usize, usize)]; 3] = [&[(0, 0, 30), (1, 0, 4), (2, 0, 50)], &[(0, 30, 1), (1, 4, 1), (2, 50, 14)], &[(0, 31, 6)]];
        let mut outs: Vec<Vec<Tensor>> = vec![Vec::new(); 3];
        for s in steps {
            let sched = SchedulerOutput { requests: s.iter().map(|&(r, c, n)| RequestSchedule { num_computed_tokens: c, num_new_tokens: n, block_ids: blocks[r].clone() }).collect() };
            let meta = MetadataBuilder::new(layout).build(&sched).unwrap();
            step.prepare(&meta).unwrap();
            let part = |i: usize| Tensor::cat(&s.iter().map(|&(r, c, n)| [&seqs[r].0, &seqs[r].1, &seqs[r].2][i].narrow(0, c, n).unwrap()).collect::<Vec<_>>(), 0).unwrap().to_dtype(dtype).unwrap().to_device(&dev).unwrap();
            let out = attn.forward_step(&part(0), &part(1), &part(2), &step).unwrap();
            assert_eq!(out.dims(), &[meta.num_tokens(), hq, d]);
            assert!(out.device().same_device(&dev));
            let mut at = 0;
            for &(r, _, n) in s {
                outs[r].push(out.narrow(0, at, n).unwrap());
                at += n;
            }
        }
        for (r, (q, k, v)) in seqs.iter().enumerate() {
            let got = Tensor::cat(&outs[r], 0).unwrap();
            let e = rel_err(&got, &oracle(q, k, v, hq / hkv));
            println!("{dtype:?} {hq}:{hkv} d{d} on {:?} request {r} ({} tokens): rel err {e:.2e}", attn.backend(), lens[r]);
            assert!(e < 1e-2, "{dtype:?} d{d} request {r}: {e}");
        }
    }
}

#[test]
fn tensors_on_another_device_are_refused_before_any_launch() {
    let Some(dev) = cuda("tensors_on_another_device_are_refused_before_any_launch") else { return };
    let layout = KvCacheLayout::new(4, 16, 2, 64).unwrap();
    let mut attn = PagedAttention::new(AttnSpec::new(4, 2, 64), layout, DType::BF16, &dev).unwrap();
    let sched = SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 0, num_new_tokens: 3, block_ids: vec![1] }] };
    let meta = MetadataBuilder::new(layout).build(&sched).unwrap();
    let t = |h: usize, on: &Device| Tensor::randn(0f32, 1.0, (3, h, 64), on).unwrap().to_dtype(DType::BF16).unwrap();
    let e = attn.forward(&t(4, &Device::Cpu), &t(2, &dev), &t(2, &dev), &meta).unwrap_err().to_string();
    assert!(e.contains("q is on"), "{e}");
    let e = attn.forward(&t(4, &dev).to_dtype(DType::F16).unwrap(), &t(2, &dev), &t(2, &dev), &meta).unwrap_err().to_string();
    assert!(e.contains("q is F16"), "{e}");
}

fn twin(dtype: DType, bound: f64) {
    let Some(dev) = cuda("twin") else { return };
    let shape = LlamaShape { hidden_size: 512, intermediate_size: 1376, vocab_size: 1000, num_hidden_layers: 2, num_attention_heads: 8, num_key_value_heads: 2, rms_norm_eps: 1e-5, rope_theta: 500_000.0, max_position_embeddings: 1024 };
    let layout = KvCacheLayout::new(256, 16, shape.num_key_value_heads, shape.head_dim()).unwrap();
    let (reference, twin) = common::models(&shape, layout, 7, dtype, &dev).unwrap();
    let prompts = common::prompts(9, 3, 200, shape.vocab_size, 11);
    let new_tokens = [5, 3, 9, 4, 7, 2, 6, 8, 3];
    let mut engine = Engine::new(twin, layout, 4);
    let c = common::compare(&mut engine, &reference, &shape, &prompts, &new_tokens, dtype, &dev).unwrap();
    println!("GPU {dtype:?}: {} steps, up to {} requests a step, {} logit rows compared, max rel err {:.3e} (bound {bound:.0e}), greedy mismatches {:?}", c.steps, c.max_batch_seen, c.compared, c.max_rel_err, c.token_mismatches);
    assert_eq!(c.compared, new_tokens.iter().sum::<usize>());
    assert_eq!(c.nonfinite, (0, 0), "non-finite logits (ours, the reference's)");
    assert!(c.max_rel_err < bound, "{c:?}");
    assert!(c.token_mismatches.is_empty(), "greedy tokens differ for requests {:?}", c.token_mismatches);
}

#[test]
fn twin_on_gpu_matches_candle_transformers_bf16() {
    twin(DType::BF16, 5e-2);
}

#[test]
fn twin_on_gpu_matches_candle_transformers_f16() {
    twin(DType::F16, 2e-2);
}
