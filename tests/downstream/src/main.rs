//! A downstream crate of attn-backends (scripts/check-downstream.sh builds and runs it on
//! stable Rust): one attention layer of a preset model on the CPU backend, checked against
//! the f64 oracle, and the embedded PTX modules listed (and written to `$DOWNSTREAM_PTX_DIR`).

use attn_backends::layer::Attention;
use attn_backends::metadata::{MetadataBuilder, RequestSchedule, SchedulerOutput};
use attn_backends::{model, oracle, BackendName, KvCacheLayout};

/// Deterministic values in [-1, 1).
fn values(seed: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn main() -> attn_backends::Result<()> {
    let cfg = model::preset("llama-3-8b")?;
    let spec = cfg.attn_spec();
    let layout = KvCacheLayout::new(16, 16, spec.num_kv_heads, spec.head_dim)?;
    let mut layer = Attention::<f32>::new(BackendName::Cpu, spec.clone(), layout, None)?;

    // A decode over 40 cached tokens (blocks 7, 3, 9) and a 5-token prefill (block 12).
    let step = SchedulerOutput {
        requests: vec![
            RequestSchedule { num_computed_tokens: 40, num_new_tokens: 1, block_ids: vec![7, 3, 9] },
            RequestSchedule { num_computed_tokens: 0, num_new_tokens: 5, block_ids: vec![12] },
        ],
    };
    let meta = MetadataBuilder::new(layout).build(&step)?;
    let mut seed = 1;
    let mut cache = layer.cache_snapshot()?;
    cache.key = values(&mut seed, layout.elements());
    cache.value = values(&mut seed, layout.elements());
    layer.load_cache(&cache)?;
    let n = meta.num_tokens();
    let q = values(&mut seed, n * spec.num_q_heads * spec.head_dim);
    let k = values(&mut seed, n * spec.num_kv_heads * spec.head_dim);
    let v = values(&mut seed, n * spec.num_kv_heads * spec.head_dim);
    let out = layer.forward(&q, &k, &v, &meta)?;
    let reference = oracle::paged_reference(&q, &layer.cache_snapshot()?, &meta, &spec)?;
    let err = oracle::rel_error(&out, &reference);
    println!("downstream: CPU layer (llama-3-8b, {n} tokens): relative error vs the f64 oracle {err:.2e}");
    assert!(err < 1e-4, "CPU backend disagrees with the oracle: {err}");

    println!("downstream: built by {}", env!("DOWNSTREAM_RUSTC"));
    let modules = attn_backends::ptx::PTX_MODULES;
    assert!(!modules.is_empty(), "no PTX module embedded");
    for (cc, arch, ptx) in modules {
        assert!(ptx.contains(&format!(".target {arch}")) && ptx.contains(".entry paged_attention_"), "{arch}: not the kernels' PTX");
        println!("downstream: PTX module {arch} (cc {cc}): {} bytes", ptx.len());
        if let Some(dir) = std::env::var_os("DOWNSTREAM_PTX_DIR") {
            std::fs::write(std::path::Path::new(&dir).join(format!("{arch}.ptx")), ptx).expect("write PTX");
        }
    }
    Ok(())
}
