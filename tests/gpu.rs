//! GPU kernels against the f64 oracle (custom harness: it prints every case's relative error,
//! and on a machine without a CUDA driver or device it says so and skips).
//!
//! Every case: fresh random inputs (never zeros), a random cache (so a read of the wrong slot
//! shows), outputs poisoned with NaN before the launch, the cache after the step compared
//! bit for bit with the expected one, the output compared with the oracle as
//! ||out - ref|| / ||ref||, bounded by a small multiple of the error of the CPU backend at the
//! same precision plus a floor (FlashAttention's way), and absolutely by 1e-2.
//!
//! `cargo test --release --test gpu [-- FILTER]`

use attn_backends::backend::cpu::CpuImpl;
use attn_backends::backend::cuda_paged::CudaPagedImpl;
use attn_backends::cuda::CudaRuntime;
use attn_backends::metadata::AttentionMetadata;
use attn_backends::workload::{blocks_needed, random_values, schedule, Rng};
use attn_backends::{oracle, AttentionImpl, AttnError, AttnSpec, Element, HostKvCache, KvCacheLayout, MetadataBuilder};
use half::{bf16, f16};
use std::sync::Arc;

struct Case {
    name: String,
    run: Box<dyn Fn(&Arc<CudaRuntime>) -> Result<String, String>>,
}

fn rel_error<T: Element>(out: &[T], reference: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (o, r) in out.iter().zip(reference) {
        let o = o.to_f64();
        if !o.is_finite() {
            return f64::INFINITY;
        }
        num += (o - r) * (o - r);
        den += r * r;
    }
    (num / den).sqrt()
}

/// The expected cache after a step: `before` with this step's k/v at their slots.
fn expected_cache<T: Element>(before: &HostKvCache<T>, k: &[T], v: &[T], meta: &AttentionMetadata) -> HostKvCache<T> {
    let mut c = before.clone();
    c.write_slots(k, v, meta.slot_mapping());
    c
}

#[derive(Clone)]
struct Shape {
    spec: AttnSpec,
    block_size: usize,
    /// (cached tokens, new tokens) per request.
    requests: Vec<(usize, usize)>,
    splits: Option<usize>,
}

fn check<T: Element>(rt: &Arc<CudaRuntime>, s: &Shape, seed: u64) -> Result<String, String> {
    let e = |x: AttnError| x.to_string();
    let mut rng = Rng::new(seed);
    let spec = &s.spec;
    let (hq, hkv, d) = (spec.num_q_heads, spec.num_kv_heads, spec.head_dim);
    let num_blocks = blocks_needed(&s.requests, s.block_size) + 7;
    let layout = KvCacheLayout::new(num_blocks, s.block_size, hkv, d).map_err(e)?;
    let step = schedule(&mut rng, &s.requests, s.block_size, num_blocks).ok_or("pool too small")?;
    let meta = MetadataBuilder::new(layout).build(&step).map_err(e)?;
    let n = meta.num_tokens();
    let before = HostKvCache { layout, key: random_values::<T>(&mut rng, layout.elements()), value: random_values::<T>(&mut rng, layout.elements()) };
    let q = random_values::<T>(&mut rng, n * hq * d);
    let k = random_values::<T>(&mut rng, n * hkv * d);
    let v = random_values::<T>(&mut rng, n * hkv * d);

    let mut gpu = CudaPagedImpl::<T>::new(rt.clone(), spec.clone(), layout).map_err(e)?;
    gpu.load_cache(&before).map_err(e)?;
    let mut out = vec![T::from_f32(f32::NAN); n * hq * d];
    gpu.forward_with_splits(&q, &k, &v, &meta, &mut out, s.splits).map_err(e)?;

    let want = expected_cache(&before, &k, &v, &meta);
    let got = gpu.cache_snapshot().map_err(e)?;
    let bits = |x: &[T]| x.iter().map(|v| v.to_f32().to_bits()).collect::<Vec<_>>();
    if bits(&got.key) != bits(&want.key) || bits(&got.value) != bits(&want.value) {
        return Err("cache after the step differs from the expected cache".into());
    }
    let reference = oracle::paged_reference(&q, &want, &meta, spec);
    let mut cpu = CpuImpl::<T>::new(spec.clone(), layout).map_err(e)?;
    let mut cpu_out = vec![T::default(); out.len()];
    // The same-precision reference: the CPU backend, from the same cache.
    cpu.load_cache(&before).map_err(e)?;
    cpu.forward(&q, &k, &v, &meta, &mut cpu_out).map_err(e)?;
    let err = rel_error(&out, &reference);
    let cpu_err = rel_error(&cpu_out, &reference);
    let bound = (2.0 * cpu_err + 2e-3).min(1e-2);
    let msg = format!("rel err {err:.2e} (CPU backend {cpu_err:.2e}, bound {bound:.1e}), tokens {n}");
    if err <= bound { Ok(msg) } else { Err(msg) }
}

fn shape(hq: usize, hkv: usize, d: usize) -> Shape {
    Shape {
        spec: AttnSpec::new(hq, hkv, d),
        block_size: 16,
        // long decodes, short decodes, a chunked prefill, a fresh prefill
        requests: vec![(1000, 1), (1, 1), (300, 1), (40, 24), (0, 33), (4097, 1)],
        splits: None,
    }
}

fn cases() -> Vec<Case> {
    let mut v: Vec<Case> = Vec::new();
    let mut add = |name: String, s: Shape, bf: bool| {
        let seed = v.len() as u64 * 7919 + 1;
        v.push(Case {
            name,
            run: Box::new(move |rt| if bf { check::<bf16>(rt, &s, seed) } else { check::<f16>(rt, &s, seed) }),
        });
    };
    for bf in [true, false] {
        let dt = if bf { "bf16" } else { "f16" };
        for d in [64, 128, 256] {
            for (hq, hkv) in [(8, 2), (4, 4)] {
                add(format!("{dt} d{d} gqa {hq}:{hkv}"), shape(hq, hkv, d), bf);
                let mut s = shape(hq, hkv, d);
                s.splits = Some(5);
                add(format!("{dt} d{d} gqa {hq}:{hkv} 5 splits"), s, bf);
            }
        }
    }
    let mut s = shape(16, 2, 128);
    add("bf16 d128 gqa 8:1".into(), s.clone(), true);
    s.spec = AttnSpec::new(12, 2, 128);
    add("bf16 d128 gqa 6:1".into(), s.clone(), true);
    s.spec = AttnSpec::new(40, 2, 128);
    add("bf16 d128 gqa 20:1 (two tiles of 16 heads)".into(), s.clone(), true);
    let mut s = shape(8, 2, 128);
    s.spec.sliding_window = Some(100);
    add("bf16 d128 sliding window 100".into(), s.clone(), true);
    s.splits = Some(4);
    add("bf16 d128 sliding window 100, 4 splits".into(), s, true);
    let mut s = shape(8, 2, 128);
    s.spec.sliding_window = Some(1);
    add("bf16 d128 sliding window 1".into(), s.clone(), true);
    s.spec.sliding_window = Some(1 << 20);
    s.splits = Some(3);
    add("bf16 d128 window past every sequence, 3 splits".into(), s, true);
    let mut s = shape(8, 2, 256);
    s.spec.softcap = Some(5.0);
    s.spec.scale = 1.0;
    add("bf16 d256 soft-cap 5, scale 1".into(), s, true);
    let mut s = shape(8, 8, 128);
    s.spec.alibi_slopes = Some(attn_backends::spec::alibi_slopes(8));
    add("f16 d128 ALiBi".into(), s, false);
    for bs in [1, 4, 64] {
        let mut s = shape(8, 2, 64);
        s.block_size = bs;
        add(format!("bf16 d64 block size {bs}"), s, true);
    }
    let mut s = shape(32, 8, 128);
    s.requests = (0..40).map(|i| (17 + 97 * i, 1)).collect();
    add("bf16 d128 40 decodes (Llama-3 heads)".into(), s, true);
    v
}

/// Requests with no query tokens this step (possible in metadata a caller builds itself) are
/// skipped by the kernels; the others are computed as usual.
fn zero_token_requests(rt: &Arc<CudaRuntime>) -> Result<String, String> {
    let e = |x: AttnError| x.to_string();
    let spec = AttnSpec::new(8, 2, 128);
    let layout = KvCacheLayout::new(64, 16, 2, 128).map_err(e)?;
    // Requests 0 and 2 have no new tokens; 1 decodes at position 40; 3 prefills 5 tokens.
    let (qsl, seq_lens) = (vec![0, 0, 1, 1, 6], vec![30, 41, 17, 5]);
    let block_table = vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    let slots = vec![5 * 16 + 8, 9 * 16, 9 * 16 + 1, 9 * 16 + 2, 9 * 16 + 3, 9 * 16 + 4];
    let meta = AttentionMetadata::from_parts(layout, qsl, seq_lens, block_table, 3, slots).map_err(e)?;
    let mut rng = Rng::new(77);
    let before = HostKvCache { layout, key: random_values::<bf16>(&mut rng, layout.elements()), value: random_values::<bf16>(&mut rng, layout.elements()) };
    let n = meta.num_tokens();
    let q = random_values::<bf16>(&mut rng, n * 8 * 128);
    let k = random_values::<bf16>(&mut rng, n * 2 * 128);
    let v = random_values::<bf16>(&mut rng, n * 2 * 128);
    let mut gpu = CudaPagedImpl::<bf16>::new(rt.clone(), spec.clone(), layout).map_err(e)?;
    gpu.load_cache(&before).map_err(e)?;
    let mut out = vec![bf16::NAN; n * 8 * 128];
    gpu.forward_with_splits(&q, &k, &v, &meta, &mut out, Some(2)).map_err(e)?;
    let reference = oracle::paged_reference(&q, &expected_cache(&before, &k, &v, &meta), &meta, &spec);
    let err = rel_error(&out, &reference);
    if err < 1e-2 { Ok(format!("rel err {err:.2e}, tokens {n}")) } else { Err(format!("rel err {err:.2e}")) }
}

/// One plan serves every layer of a step (its workspace too); a plan from a layer of
/// another shape, or tensors of the wrong size, are errors before any launch.
fn plan_shared_by_layers(rt: &Arc<CudaRuntime>) -> Result<String, String> {
    let e = |x: AttnError| x.to_string();
    let spec = AttnSpec::new(8, 2, 128);
    let shapes = vec![(3000, 1), (700, 1), (64, 3)];
    let num_blocks = blocks_needed(&shapes, 16) + 4;
    let layout = KvCacheLayout::new(num_blocks, 16, 2, 128).map_err(e)?;
    let mut rng = Rng::new(99);
    let step = schedule(&mut rng, &shapes, 16, num_blocks).ok_or("pool")?;
    let meta = MetadataBuilder::new(layout).build(&step).map_err(e)?;
    let n = meta.num_tokens();
    let mut layers = Vec::new();
    let mut caches = Vec::new();
    for _ in 0..2 {
        let mut l = CudaPagedImpl::<bf16>::new(rt.clone(), spec.clone(), layout).map_err(e)?;
        let c = HostKvCache { layout, key: random_values::<bf16>(&mut rng, layout.elements()), value: random_values::<bf16>(&mut rng, layout.elements()) };
        l.load_cache(&c).map_err(e)?;
        layers.push(l);
        caches.push(c);
    }
    let plan = layers[0].plan(&meta, Some(4)).map_err(e)?;
    let stream = rt.stream().clone();
    let mut worst = 0.0f64;
    for (l, c) in layers.iter_mut().zip(&caches) {
        let q = random_values::<bf16>(&mut rng, n * 8 * 128);
        let k = random_values::<bf16>(&mut rng, n * 2 * 128);
        let v = random_values::<bf16>(&mut rng, n * 2 * 128);
        let bits = |x: &[bf16]| x.iter().map(|v| v.to_bits()).collect::<Vec<u16>>();
        let (qd, kd, vd) = (stream.clone_htod(&bits(&q)).map_err(|x| x.to_string())?, stream.clone_htod(&bits(&k)).map_err(|x| x.to_string())?, stream.clone_htod(&bits(&v)).map_err(|x| x.to_string())?);
        let mut od = stream.clone_htod(&vec![bf16::NAN.to_bits(); n * 8 * 128]).map_err(|x| x.to_string())?;
        l.run(&plan, &qd, &kd, &vd, &mut od).map_err(e)?;
        let out: Vec<bf16> = stream.clone_dtoh(&od).map_err(|x| x.to_string())?.into_iter().map(bf16::from_bits).collect();
        let reference = oracle::paged_reference(&q, &expected_cache(c, &k, &v, &meta), &meta, &spec);
        worst = worst.max(rel_error(&out, &reference));
        // Wrong sizes are refused.
        let short = stream.alloc_zeros::<u16>(8).map_err(|x| x.to_string())?;
        l.attend(&plan, &short, &mut od).err().ok_or("attend accepted a short q")?;
    }
    let other = CudaPagedImpl::<bf16>::new(rt.clone(), AttnSpec::new(16, 2, 128), layout).map_err(e)?;
    let mut other = other;
    let q = stream.alloc_zeros::<u16>(n * 16 * 128).map_err(|x| x.to_string())?;
    let mut o = stream.alloc_zeros::<u16>(n * 16 * 128).map_err(|x| x.to_string())?;
    let refused = other.attend(&plan, &q, &mut o).err().ok_or("a plan for 8 heads ran on a 16-head layer")?;
    if worst < 1e-2 { Ok(format!("2 layers, 4 splits, worst rel err {worst:.2e}; refused: `{refused}`")) } else { Err(format!("rel err {worst:.2e}")) }
}

/// User mistakes are errors before any launch and change nothing.
fn bad_input(rt: &Arc<CudaRuntime>) -> Result<String, String> {
    let spec = AttnSpec::new(8, 2, 128);
    let layout = KvCacheLayout::new(8, 16, 2, 128).unwrap();
    let mut rng = Rng::new(5);
    let mut gpu = CudaPagedImpl::<bf16>::new(rt.clone(), spec.clone(), layout).map_err(|e| e.to_string())?;
    let before = HostKvCache { layout, key: random_values(&mut rng, layout.elements()), value: random_values(&mut rng, layout.elements()) };
    gpu.load_cache(&before).map_err(|e| e.to_string())?;
    let meta = AttentionMetadata::from_parts(layout, vec![0, 1], vec![5], vec![3], 1, vec![3 * 16 + 4]).map_err(|e| e.to_string())?;
    let q = random_values::<bf16>(&mut rng, 8 * 128);
    let k = random_values::<bf16>(&mut rng, 2 * 128 + 1); // one element too many
    let mut out = vec![bf16::ZERO; 8 * 128];
    let err = gpu.forward(&q, &k, &k, &meta, &mut out).err().ok_or("wrong k length accepted")?;
    let unchanged = gpu.cache_snapshot().map_err(|e| e.to_string())?;
    if unchanged.key.iter().zip(&before.key).any(|(a, b)| a.to_bits() != b.to_bits()) {
        return Err("cache changed by a rejected step".into());
    }
    let e2 = CudaPagedImpl::<bf16>::new(rt.clone(), AttnSpec::new(8, 2, 96), KvCacheLayout::new(8, 16, 2, 96).unwrap()).err().ok_or("head dim 96 accepted")?;
    let e3 = CudaPagedImpl::<f32>::new(rt.clone(), spec, layout).err().ok_or("f32 accepted")?;
    Ok(format!("rejected: `{err}`; `{e2}`; `{e3}`"))
}

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let mut all = cases();
    all.push(Case { name: "bad input is rejected before launch".into(), run: Box::new(bad_input) });
    all.push(Case { name: "requests with no query tokens".into(), run: Box::new(zero_token_requests) });
    all.push(Case { name: "one plan shared by two layers".into(), run: Box::new(plan_shared_by_layers) });
    let all: Vec<Case> = all.into_iter().filter(|c| filter.is_empty() || filter.iter().any(|f| c.name.contains(f.as_str()))).collect();
    let rt = match attn_backends::gpu_if_present() {
        Ok(rt) => rt,
        Err(why) => {
            println!("gpu tests: SKIPPED all {} cases: {why}", all.len());
            return;
        }
    };
    println!("gpu tests on {} ({}), {} cases", rt.device_name(), rt.arch(), all.len());
    let mut failed = 0;
    for c in &all {
        match (c.run)(&rt) {
            Ok(m) => println!("ok    {:<45} {m}", c.name),
            Err(m) => {
                failed += 1;
                println!("FAIL  {:<45} {m}", c.name);
            }
        }
    }
    println!("gpu tests: {} passed, {failed} failed", all.len() - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}
