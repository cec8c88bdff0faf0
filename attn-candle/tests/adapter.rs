//! The candle layer on the CPU: against attention computed with candle's own ops, its cache
//! round trip, an fp8 cache, and users' mistakes as candle errors carrying this library's
//! message, with nothing written.

use attn_candle::{AttnSpec, KvCacheLayout, MetadataBuilder, PagedAttention, RequestSchedule, SchedulerOutput};
use candle_core::{DType, Device, Tensor, D};

fn step(reqs: &[(usize, usize, Vec<u32>)], layout: KvCacheLayout) -> attn_candle::AttentionMetadata {
    let s = SchedulerOutput { requests: reqs.iter().map(|(c, n, b)| RequestSchedule { num_computed_tokens: *c, num_new_tokens: *n, block_ids: b.clone() }).collect() };
    MetadataBuilder::new(layout).build(&s).unwrap()
}

/// softmax(q k^T / sqrt(d), causal) v for one fresh request, GQA by repeating kv heads.
fn naive(q: &Tensor, k: &Tensor, v: &Tensor, group: usize) -> Tensor {
    let (t, hq, d) = q.dims3().unwrap();
    let rep = |x: &Tensor| {
        let (t, hkv, d) = x.dims3().unwrap();
        x.unsqueeze(2).unwrap().expand((t, hkv, group, d)).unwrap().reshape((t, hkv * group, d)).unwrap().transpose(0, 1).unwrap().contiguous().unwrap()
    };
    let q = q.transpose(0, 1).unwrap().contiguous().unwrap();
    let (k, v) = (rep(k), rep(v));
    let s = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
    let mask: Vec<f32> = (0..t).flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
    let s = s.broadcast_add(&Tensor::from_vec(mask, (t, t), q.device()).unwrap()).unwrap();
    let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
    let _ = hq;
    p.matmul(&v).unwrap().transpose(0, 1).unwrap().contiguous().unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let num = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    num / b.iter().map(|y| y * y).sum::<f64>().sqrt()
}

#[test]
fn prefill_then_decode_match_candle_ops() {
    let dev = Device::Cpu;
    let (t, hq, hkv, d) = (37, 8, 2, 64);
    let layout = KvCacheLayout::new(16, 16, hkv, d).unwrap();
    let q = Tensor::randn(0f32, 1.0, (t + 1, hq, d), &dev).unwrap();
    let k = Tensor::randn(0f32, 1.0, (t + 1, hkv, d), &dev).unwrap();
    let v = Tensor::randn(0f32, 1.0, (t + 1, hkv, d), &dev).unwrap();
    let want = naive(&q, &k, &v, hq / hkv);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let mut attn = PagedAttention::new(AttnSpec::new(hq, hkv, d), layout, dtype, &dev).unwrap();
        let cast = |x: &Tensor| x.to_dtype(dtype).unwrap();
        // The prompt's 37 tokens (blocks 9, 2, 14), then a decode of the 38th.
        let blocks = vec![9, 2, 14];
        let pre = attn.forward(&cast(&q.narrow(0, 0, t).unwrap()), &cast(&k.narrow(0, 0, t).unwrap()), &cast(&v.narrow(0, 0, t).unwrap()), &step(&[(0, t, blocks.clone())], layout)).unwrap();
        let dec = attn.forward(&cast(&q.narrow(0, t, 1).unwrap()), &cast(&k.narrow(0, t, 1).unwrap()), &cast(&v.narrow(0, t, 1).unwrap()), &step(&[(t, 1, blocks)], layout)).unwrap();
        let got = Tensor::cat(&[pre, dec], 0).unwrap();
        let e = rel_err(&got, &want);
        let bound = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        println!("{dtype:?}: rel err {e:.2e} (bound {bound:.0e})");
        assert!(e < bound, "{dtype:?}: {e}");
    }
}

#[test]
fn the_cache_round_trips_and_an_fp8_cache_runs() {
    let dev = Device::Cpu;
    let layout = KvCacheLayout::new(4, 16, 2, 32).unwrap();
    let mut attn = PagedAttention::new(AttnSpec::new(4, 2, 32), layout, DType::F32, &dev).unwrap();
    let kc = Tensor::randn(0f32, 1.0, (4, 16, 2, 32), &dev).unwrap();
    let vc = Tensor::randn(0f32, 1.0, (4, 16, 2, 32), &dev).unwrap();
    attn.load_cache(&kc, &vc).unwrap();
    let (k2, v2) = attn.cache().unwrap();
    assert_eq!(rel_err(&k2, &kc), 0.0);
    assert_eq!(rel_err(&v2, &vc), 0.0);
    // A decode over the loaded context, in bf16 over an fp8 (e4m3) cache, against f32.
    let fp8 = layout.with_kv_dtype(attn_backends::KvCacheDType::Fp8E4m3);
    let mut a8 = PagedAttention::new(AttnSpec::new(4, 2, 32), fp8, DType::BF16, &dev).unwrap();
    a8.load_cache(&kc.to_dtype(DType::BF16).unwrap(), &vc.to_dtype(DType::BF16).unwrap()).unwrap();
    let q = Tensor::randn(0f32, 1.0, (1, 4, 32), &dev).unwrap();
    let kn = Tensor::randn(0f32, 1.0, (1, 2, 32), &dev).unwrap();
    let meta = step(&[(40, 1, vec![3, 0, 1])], layout);
    let want = attn.forward(&q, &kn, &kn, &meta).unwrap();
    // (The metadata names the cache it indexes: an fp8 layout's own.)
    let meta8 = step(&[(40, 1, vec![3, 0, 1])], fp8);
    let got = a8.forward(&q.to_dtype(DType::BF16).unwrap(), &kn.to_dtype(DType::BF16).unwrap(), &kn.to_dtype(DType::BF16).unwrap(), &meta8).unwrap();
    let e = rel_err(&got, &want);
    println!("fp8 cache vs f32: rel err {e:.2e} (bound 0.1)");
    assert!(e < 0.1, "{e}");
}

#[test]
fn mistakes_are_candle_errors_with_our_message_and_write_nothing() {
    let dev = Device::Cpu;
    let layout = KvCacheLayout::new(4, 16, 2, 32).unwrap();
    let mut attn = PagedAttention::new(AttnSpec::new(4, 2, 32), layout, DType::F32, &dev).unwrap();
    let kc = Tensor::randn(0f32, 1.0, (4, 16, 2, 32), &dev).unwrap();
    attn.load_cache(&kc, &kc).unwrap();
    let q = Tensor::randn(0f32, 1.0, (1, 4, 32), &dev).unwrap();
    let k = Tensor::randn(0f32, 1.0, (1, 2, 32), &dev).unwrap();
    // A block id outside the cache.
    let bad = SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 3, num_new_tokens: 1, block_ids: vec![7] }] };
    let e = MetadataBuilder::new(layout).build(&bad).map_err(attn_candle::candle_error).unwrap_err().to_string();
    assert!(e.contains('7'), "{e}");
    let meta = step(&[(3, 1, vec![2])], layout);
    // The wrong dtype, the wrong shape (a count that fits, tokens not first), an MLA spec.
    let e = attn.forward(&q.to_dtype(DType::BF16).unwrap(), &k, &k, &meta).unwrap_err().to_string();
    assert!(e.contains("q is BF16") && e.contains("F32"), "{e}");
    let e = attn.forward(&q, &Tensor::zeros((2, 2, 32), DType::F32, &dev).unwrap(), &k, &meta).unwrap_err().to_string();
    assert!(e.contains("k has shape [2, 2, 32]"), "{e}");
    let e = attn.forward(&q.reshape((4, 1, 32)).unwrap(), &k, &k, &meta).unwrap_err().to_string();
    assert!(e.contains("q has shape [4, 1, 32]") && e.contains("tokens first"), "{e}");
    let mla = attn_backends::MlaSpec { num_q_heads: 4, kv_lora_rank: 16, qk_rope_head_dim: 16, qk_nope_head_dim: 16, v_head_dim: 16, scale: 0.2 };
    let e = PagedAttention::new(AttnSpec { mla: Some(mla), ..AttnSpec::new(4, 4, 32) }, layout, DType::F32, &dev).unwrap_err().to_string();
    assert!(e.contains("MLA"), "{e}");
    let e = PagedAttention::new(AttnSpec::new(4, 2, 32), layout, DType::U8, &dev).unwrap_err().to_string();
    assert!(e.contains("U8"), "{e}");
    // A head dim that disagrees with the cache: the library's own error, as a candle error.
    let e = PagedAttention::new(AttnSpec::new(4, 2, 64), layout, DType::F32, &dev).unwrap_err().to_string();
    assert!(e.contains("head dim"), "{e}");
    // Nothing was written by the refused calls.
    let (k2, _) = attn.cache().unwrap();
    assert_eq!(rel_err(&k2, &kc), 0.0);
}

#[test]
fn one_step_serves_every_layer_and_grows_past_its_limits() {
    let dev = Device::Cpu;
    let (hq, hkv, d) = (4, 2, 32);
    let layout = KvCacheLayout::new(16, 16, hkv, d).unwrap();
    let spec = AttnSpec::new(hq, hkv, d);
    // Two layers on one step, against two layers each planning its own (`forward`).
    let mut shared: Vec<PagedAttention> = (0..2).map(|_| PagedAttention::new(spec.clone(), layout, DType::F32, &dev).unwrap()).collect();
    let mut own: Vec<PagedAttention> = (0..2).map(|_| PagedAttention::new(spec.clone(), layout, DType::F32, &dev).unwrap()).collect();
    // Limits for one token of one request: the second step (2 requests, 40 tokens) passes them.
    let mut one = shared[0].new_step(attn_candle::StepLimits::new(1, 1, 16, 16)).unwrap();
    assert!(shared[0].forward_step(&Tensor::zeros((1, hq, d), DType::F32, &dev).unwrap(), &Tensor::zeros((1, hkv, d), DType::F32, &dev).unwrap(), &Tensor::zeros((1, hkv, d), DType::F32, &dev).unwrap(), &one).unwrap_err().to_string().contains("not prepared"));
    for reqs in [vec![(0, 1, vec![3])], vec![(1, 30, vec![3, 7]), (0, 10, vec![11])]] {
        let meta = step(&reqs, layout);
        let n = meta.num_tokens();
        one.prepare(&meta).unwrap();
        assert_eq!(one.num_tokens(), Some(n));
        for l in 0..2 {
            let q = Tensor::randn(0f32, 1.0, (n, hq, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (n, hkv, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (n, hkv, d), &dev).unwrap();
            let a = shared[l].forward_step(&q, &k, &v, &one).unwrap();
            let b = own[l].forward(&q, &k, &v, &meta).unwrap();
            let e = rel_err(&a, &b);
            println!("layer {l}, {n} tokens: shared step against its own plan: rel err {e:.1e}");
            assert!(e < 1e-6, "{e}");
        }
    }
}
