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
