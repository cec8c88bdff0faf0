//! 01: one attention layer on the CPU backend, plan then run.
//!
//! A scheduler's step (a decode over a cached context and a fresh prefill) becomes validated
//! metadata once; the layer writes the step's K/V into its paged cache and attends; the
//! result is checked against the f64 oracle.
//!
//! `cargo run --release --example 01_cpu_layer`

use attn_backends::layer::Attention;
use attn_backends::metadata::{MetadataBuilder, RequestSchedule, SchedulerOutput};
use attn_backends::workload::{random_values, Rng};
use attn_backends::{oracle, AttnSpec, BackendName, KvCacheLayout};

fn main() -> attn_backends::Result<()> {
    // Llama-3-8B's attention shape: 32 query heads sharing 8 KV heads, head dim 128.
    let spec = AttnSpec::new(32, 8, 128);
    let layout = KvCacheLayout::new(64, 16, spec.num_kv_heads, spec.head_dim)?;
    let mut layer = Attention::<f32>::new(BackendName::Cpu, spec.clone(), layout, None)?;

    // Plan: request 0 has 40 tokens cached in blocks 7, 3, 9 and decodes one more; request 1
    // prefills 5 tokens into block 12.
    let step = SchedulerOutput {
        requests: vec![
            RequestSchedule { num_computed_tokens: 40, num_new_tokens: 1, block_ids: vec![7, 3, 9] },
            RequestSchedule { num_computed_tokens: 0, num_new_tokens: 5, block_ids: vec![12] },
        ],
    };
    let meta = MetadataBuilder::new(layout).build(&step)?;
    println!("query_start_loc {:?}, seq_lens {:?}, slots {:?}", meta.query_start_loc(), meta.seq_lens(), meta.slot_mapping());

    // Run: the cache starts with random earlier tokens; q, k, v are this step's rows.
    let mut rng = Rng::new(1);
    let mut cache = layer.cache_snapshot()?;
    cache.key = random_values(&mut rng, layout.elements());
    cache.value = random_values(&mut rng, layout.elements());
    layer.load_cache(&cache)?;
    let n = meta.num_tokens();
    let q = random_values::<f32>(&mut rng, n * spec.num_q_heads * spec.head_dim);
    let k = random_values::<f32>(&mut rng, n * spec.num_kv_heads * spec.head_dim);
    let v = random_values::<f32>(&mut rng, n * spec.num_kv_heads * spec.head_dim);
    let out = layer.forward(&q, &k, &v, &meta)?;

    let reference = oracle::paged_reference(&q, &layer.cache_snapshot()?, &meta, &spec)?;
    println!("{} output rows; relative error vs the f64 oracle: {:.2e}", n * spec.num_q_heads, oracle::rel_error(&out, &reference));
    Ok(())
}
