//! 03: one MLA layer (DeepSeek-V3's latent attention), plan then run, on the GPU when one is
//! present (CUDA_MLA) and on the CPU otherwise.
//!
//! MLA caches one latent row a token (`kv_lora_rank` = 512 dims of the compressed KV, then 64
//! rotary dims) instead of per-head keys and values, and attends in the absorbed form: the
//! query is already multiplied by `W_UK` (`[tokens, heads, 512 + 64]`), the values are the
//! latent's first 512 dims, and the output is the latent output (`[tokens, heads, 512]`),
//! before `W_UV`. The layer writes this step's latent rows (`kv_c`, `k_pe`) into its cache
//! and attends; the result is checked against the f64 oracle.
//!
//! `cargo run --release --example 03_mla_layer`

use attn_backends::layer::Attention;
use attn_backends::metadata::{MetadataBuilder, RequestSchedule, SchedulerOutput};
use attn_backends::workload::{random_values, Rng};
use attn_backends::{half::bf16, model, oracle, KvCacheLayout};

fn main() -> attn_backends::Result<()> {
    // 1. The model: DeepSeek-V3's attention (128 heads; its MLA spec is the absorbed form).
    let cfg = model::preset("deepseek-v3")?;
    let spec = cfg.attn_spec();
    let mla = spec.mla.clone().expect("an MLA model");
    let (h, r, rope, w) = (mla.num_q_heads, mla.kv_lora_rank, mla.qk_rope_head_dim, mla.latent_dim());

    // 2. The latent cache: one "kv head" of 512 + 64 = 576 dims a token, in 64-token blocks.
    let layout = KvCacheLayout::new(32, 64, 1, w)?;
    // 3. The layer, on the backend the selector picks here (ATTN_BACKEND overrides it).
    let gpu = attn_backends::gpu_if_present().ok();
    let mut layer = Attention::<bf16>::for_platform(spec, layout, gpu)?;
    println!("MLA layer of {}: {h} heads, latent {r} + {rope} dims, on {}", cfg.name, layer.backend());

    // 4. One step: a decode over 300 cached tokens (blocks 5, 9, 2, 30, 11) and a 20-token
    //    prefill into block 7.
    let step = SchedulerOutput {
        requests: vec![
            RequestSchedule { num_computed_tokens: 300, num_new_tokens: 1, block_ids: vec![5, 9, 2, 30, 11] },
            RequestSchedule { num_computed_tokens: 0, num_new_tokens: 20, block_ids: vec![7] },
        ],
    };
    let meta = MetadataBuilder::new(layout).build(&step)?;

    // 5. The cache holds random earlier rows (the latent in `key`; MLA has no value half).
    let mut rng = Rng::new(3);
    let cache = attn_backends::HostKvCache { layout, key: random_values(&mut rng, layout.elements()), value: Vec::new() };
    layer.load_cache(&cache)?;

    // 6. This step's tensors: the absorbed query, the new latent rows split as kv_c and k_pe.
    let n = meta.num_tokens();
    let q = random_values::<bf16>(&mut rng, n * h * w);
    let latent = random_values::<bf16>(&mut rng, n * w);
    let kv_c: Vec<bf16> = latent.chunks(w).flat_map(|row| row[..r].to_vec()).collect();
    let k_pe: Vec<bf16> = latent.chunks(w).flat_map(|row| row[r..].to_vec()).collect();
    let out = layer.forward(&q, &kv_c, &k_pe, &meta)?;

    // 7. Check: the cache as the step left it, and the output against the f64 oracle.
    let mut want = attn_backends::HostKvCache { layout, key: cache.key.clone(), value: vec![bf16::ZERO; layout.elements()] };
    want.write_slots(&latent, &latent, meta.slot_mapping())?;
    let after = layer.cache_snapshot()?;
    assert!(after.key == want.key, "the step's latent rows are where the slot mapping says");
    let reference = oracle::paged_mla_reference(&q, &after, &meta, &mla)?;
    let err = oracle::rel_error(&out.iter().map(|x| x.to_f64()).collect::<Vec<_>>(), &reference);
    println!("{} output rows of {r} dims; relative error vs the f64 oracle: {err:.2e} (bf16: under 1e-2)", n * h);
    assert!(err < 1e-2);
    Ok(())
}
