//! 02: the CUDA backend's plan / run split, on device tensors, for every layer of a step.
//!
//! `plan` uploads a step's metadata once and decides the split count (flash-decoding) from
//! the batch and the device; `run` only launches (cache write, paged attention, merge) and
//! serves each layer. Without a CUDA device it says so and exits.
//!
//! `cargo run --release --example 02_gpu_plan_run`

use attn_backends::backend::cuda_paged::CudaPagedImpl;
use attn_backends::metadata::MetadataBuilder;
use attn_backends::workload::{blocks_needed, random_values, schedule, Rng};
use attn_backends::{AttnSpec, KvCacheLayout};
use half::bf16;

fn main() -> attn_backends::Result<()> {
    let rt = match attn_backends::gpu_if_present() {
        Ok(rt) => rt,
        Err(why) => {
            println!("skipped: {why}");
            return Ok(());
        }
    };
    let spec = AttnSpec::new(32, 8, 128);
    // 4 long decodes: few blocks, so the planner splits the keys.
    let shapes = [(16383, 1), (12000, 1), (9000, 1), (20000, 1)];
    let num_blocks = blocks_needed(&shapes, 16);
    let layout = KvCacheLayout::new(num_blocks, 16, spec.num_kv_heads, spec.head_dim)?;
    let meta = MetadataBuilder::new(layout).build(&schedule(&mut Rng::new(3), &shapes, 16, num_blocks).expect("enough blocks"))?;

    let mut layers = (0..4).map(|_| CudaPagedImpl::<bf16>::new(rt.clone(), spec.clone(), layout)).collect::<Result<Vec<_>, _>>()?;
    let plan = layers[0].plan(&meta, None)?;
    println!("{} on {}: {} query tokens, {} splits", rt.arch(), rt.device_name(), plan.num_tokens(), plan.num_splits());

    // This step's q, k, v on the device (random bf16 bits here; a model's activations there).
    let stream = rt.stream().clone();
    let n = meta.num_tokens();
    let mut rng = Rng::new(4);
    let mut device_rows = |heads: usize| {
        let host: Vec<u16> = random_values::<bf16>(&mut rng, n * heads * spec.head_dim).iter().map(|x| x.to_bits()).collect();
        stream.clone_htod(&host)
    };
    let (q, k, v) = (device_rows(spec.num_q_heads)?, device_rows(spec.num_kv_heads)?, device_rows(spec.num_kv_heads)?);
    let mut out = stream.alloc_zeros::<u16>(n * spec.num_q_heads * spec.head_dim)?;
    for layer in &mut layers {
        layer.run(&plan, &q, &k, &v, &mut out)?;
    }
    stream.synchronize()?;
    println!("ran {} layers on one plan", layers.len());
    Ok(())
}
