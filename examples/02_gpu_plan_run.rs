//! 02: a decode step on the GPU as an engine runs it: one `Step` prepared per step (plan +
//! one upload into persistent buffers), every layer launched on device tensors, then the
//! same step captured once in a CUDA graph and replayed for the next step with new metadata
//! and inputs written into the same buffers. Without a CUDA device it says so and exits.
//!
//! `cargo run --release --example 02_gpu_plan_run`

use attn_backends::layer::Attention;
use attn_backends::metadata::MetadataBuilder;
use attn_backends::workload::{blocks_needed, random_values, schedule, Rng};
use attn_backends::{AttnSpec, BackendName, KvCacheLayout, PlanOptions, StepLimits};
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
    // 4 long decodes (few blocks, so the planner splits the keys); one more token next step.
    let shapes = [(16383, 1), (12000, 1), (9000, 1), (20000, 1)];
    // Blocks for two more tokens per request (the two steps after this one).
    let later: Vec<(usize, usize)> = shapes.iter().map(|&(c, n)| (c + 2, n)).collect();
    let num_blocks = blocks_needed(&later, 16);
    let layout = KvCacheLayout::new(num_blocks, 16, spec.num_kv_heads, spec.head_dim)?;
    let mut sched = schedule(&mut Rng::new(3), &later, 16, num_blocks).expect("enough blocks");
    for (r, &(c, _)) in sched.requests.iter_mut().zip(&shapes) {
        r.num_computed_tokens = c;
    }
    let builder = MetadataBuilder::new(layout);

    let mut layers = (0..4).map(|_| Attention::<bf16>::new(BackendName::CudaPaged, spec.clone(), layout, Some(rt.clone()))).collect::<Result<Vec<_>, _>>()?;
    let mut step = layers[0].new_step(StepLimits::new(4, 4, 32768, 16))?;
    let plan = step.prepare(&builder.build(&sched)?)?.clone();
    println!("{} on {}: {} query tokens, {} splits, launches per layer:", rt.arch(), rt.device_name(), plan.num_tokens, plan.num_splits);
    for l in &plan.launches {
        println!("  {l}");
    }

    // This step's q, k, v on the device (random here; a model's activations there).
    let stream = rt.stream().clone();
    let n = plan.num_tokens;
    let mut rng = Rng::new(4);
    let mut device_rows = |heads: usize| stream.clone_htod(&random_values::<bf16>(&mut rng, n * heads * spec.head_dim));
    let (q, k, v) = (device_rows(spec.num_q_heads)?, device_rows(spec.num_kv_heads)?, device_rows(spec.num_kv_heads)?);
    let mut out = stream.alloc_zeros::<bf16>(n * spec.num_q_heads * spec.head_dim)?;
    for layer in &mut layers {
        layer.forward_device(&step, &q, &k, &v, &mut out)?;
    }
    stream.synchronize()?;
    println!("eager: ran {} layers on one plan", layers.len());

    // Next step, captured: one more token per request, the same split count.
    let mut next = sched.clone();
    for r in &mut next.requests {
        r.num_computed_tokens += 1;
    }
    let opts = PlanOptions { force_splits: Some(plan.num_splits), ..PlanOptions::default() };
    step.prepare_with(&builder.build(&next)?, opts)?;
    let graph = step.capture(|step| {
        for layer in &mut layers {
            layer.forward_device(step, &q, &k, &v, &mut out)?;
        }
        Ok(())
    })?;
    graph.replay(&step)?;
    // And the step after: new metadata into the same buffers, replayed (an error if its plan
    // no longer matches the captured launches).
    for r in &mut next.requests {
        r.num_computed_tokens += 1;
    }
    step.prepare_with(&builder.build(&next)?, opts)?;
    graph.replay(&step)?;
    stream.synchronize()?;
    println!("graph: captured {} layers once, replayed for 2 steps", layers.len());
    Ok(())
}
