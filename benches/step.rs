//! Step benchmark S1 of WORKLOADS.md on a CUDA device (custom harness): one decode step of
//! Llama-3-8B shapes (32 query heads, 8 KV heads, head dim 128; D1's batch of 64 decodes x
//! 4096 context, bf16, block size 16) through the `Attention` layer for 32 layers, each with
//! its own paged cache.
//!
//! - eager: the 32 layers' `forward_device` calls as a model makes them (one `Step` prepared
//!   for the step, then launches only), CUDA events around the step;
//! - graph: the same 32 layers captured once in a CUDA graph, events around its replay;
//! - kernels: the GPU time of one layer's kernels (cache write + attention) when the queue is
//!   ahead of them: events between the layers of an eager step, median over layers 1..31.
//!
//! Reported per layer, with the overhead `step / kernels - 1`. Median of REPS steps.
//!
//! `cargo bench --bench step [-- --json]`

use attn_backends::layer::Attention;
use attn_backends::workload::{random_values, schedule, Rng};
use attn_backends::{AttnSpec, BackendName, KvCacheLayout, MetadataBuilder, StepLimits};
use common::random_cache;
use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use half::bf16;
use std::time::Instant;

mod common;

const LAYERS: usize = 32;
const REPS: usize = 20;
const BLOCK_SIZE: usize = 16;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let rt = match attn_backends::gpu_if_present() {
        Ok(rt) => rt,
        Err(why) => {
            println!("step bench: SKIPPED: {why}");
            return;
        }
    };
    let stream = rt.stream().clone();
    let ctx = stream.context().clone();
    let event = || ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).expect("event");
    let (hq, hkv, d, reqs, ctx_len) = (32, 8, 128, 64, 4096);
    let spec = AttnSpec::new(hq, hkv, d);
    let shapes = vec![(ctx_len - 1, 1); reqs];
    let num_blocks = reqs * ctx_len / BLOCK_SIZE;
    let layout = KvCacheLayout::new(num_blocks, BLOCK_SIZE, hkv, d).expect("layout");
    let mut rng = Rng::new(7);
    let meta = MetadataBuilder::new(layout).build(&schedule(&mut rng, &shapes, BLOCK_SIZE, num_blocks).expect("blocks")).expect("metadata");

    // 32 layers, each with its own 1 GiB cache of random bf16 (one random pattern, uploaded per layer).
    let cache = random_cache(layout, &mut rng);
    let mut layers: Vec<Attention<bf16>> = (0..LAYERS)
        .map(|_| {
            let mut l = Attention::<bf16>::new(BackendName::CudaPaged, spec.clone(), layout, Some(rt.clone())).expect("layer");
            l.load_cache(&cache).expect("cache");
            l
        })
        .collect();
    drop(cache);

    let n = meta.num_tokens();
    let dev = |heads: usize, rng: &mut Rng| stream.clone_htod(&random_values::<bf16>(rng, n * heads * d)).expect("tensor");
    let io: Vec<_> = (0..LAYERS).map(|_| (dev(hq, &mut rng), dev(hkv, &mut rng), dev(hkv, &mut rng), dev(hq, &mut rng))).collect();
    let mut io = io;
    let mut step = layers[0].new_step(StepLimits::for_metadata(&meta)).expect("step");
    let plan = step.prepare(&meta).expect("plan").clone();
    stream.synchronize().expect("sync");

    let run_eager = |layers: &mut [Attention<bf16>], io: &mut [(_, _, _, _)], step: &attn_backends::Step| {
        for (l, (q, k, v, o)) in layers.iter_mut().zip(io.iter_mut()) {
            l.forward_device(step, q, k, v, o).expect("forward");
        }
    };
    // Warm-up.
    for _ in 0..3 {
        run_eager(&mut layers, &mut io, &step);
    }
    stream.synchronize().expect("sync");

    // Eager: events around the step; host enqueue time beside it.
    let (mut eager, mut host) = (Vec::new(), Vec::new());
    for _ in 0..REPS {
        let (a, b) = (event(), event());
        a.record(&stream).expect("record");
        let t = Instant::now();
        run_eager(&mut layers, &mut io, &step);
        host.push(t.elapsed().as_secs_f64() * 1e6 / LAYERS as f64);
        b.record(&stream).expect("record");
        b.synchronize().expect("sync");
        eager.push(a.elapsed_ms(&b).expect("elapsed") as f64 * 1e3 / LAYERS as f64);
    }

    // Kernels: events between the layers of an eager step (the queue runs ahead after layer 0).
    let mut kernels = Vec::new();
    for _ in 0..REPS {
        let evs: Vec<_> = (0..=LAYERS).map(|_| event()).collect();
        evs[0].record(&stream).expect("record");
        for (i, (l, (q, k, v, o))) in layers.iter_mut().zip(io.iter_mut()).enumerate() {
            l.forward_device(&step, q, k, v, o).expect("forward");
            evs[i + 1].record(&stream).expect("record");
        }
        evs[LAYERS].synchronize().expect("sync");
        let per: Vec<f64> = (1..LAYERS).map(|i| evs[i].elapsed_ms(&evs[i + 1]).expect("elapsed") as f64 * 1e3).collect();
        kernels.push(median(per));
    }

    // Graph: the step captured once, replayed.
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).expect("capture");
    run_eager(&mut layers, &mut io, &step);
    let graph = stream.end_capture(CUgraphInstantiate_flags(0)).expect("end capture").expect("graph");
    graph.upload().expect("upload");
    for _ in 0..3 {
        graph.launch().expect("replay");
    }
    let mut replay = Vec::new();
    for _ in 0..REPS {
        let (a, b) = (event(), event());
        a.record(&stream).expect("record");
        graph.launch().expect("replay");
        b.record(&stream).expect("record");
        b.synchronize().expect("sync");
        replay.push(a.elapsed_ms(&b).expect("elapsed") as f64 * 1e3 / LAYERS as f64);
    }

    let (kernel_us, eager_us, graph_us, host_us) = (median(kernels), median(eager), median(replay), median(host));
    println!(
        "device: {} ({}, {} SMs); S1: {LAYERS} layers x ({} decodes x {ctx_len}), {} splits, launches per layer: {}",
        rt.device_name(),
        rt.arch(),
        rt.num_sms(),
        reqs,
        plan.num_splits,
        plan.launches.iter().map(|l| l.kernel.name()).collect::<Vec<_>>().join(" + ")
    );
    println!("| mode | us per layer | kernels' us per layer | overhead |");
    println!("|---|---|---|---|");
    for (mode, us) in [("eager", eager_us), ("graph", graph_us)] {
        println!("| {mode} | {us:.1} | {kernel_us:.1} | {:+.2}% |", (us / kernel_us - 1.0) * 100.0);
    }
    println!("host enqueue per layer (eager): {host_us:.1} us");
    if json {
        for (mode, us) in [("eager", eager_us), ("graph", graph_us)] {
            println!(
                "{{\"bench\":\"step\",\"workload\":\"S1\",\"device\":\"{}\",\"mode\":\"{mode}\",\"layers\":{LAYERS},\"us_per_layer\":{us:.2},\"kernel_us_per_layer\":{kernel_us:.2},\"overhead\":{:.4},\"host_us_per_layer\":{host_us:.2}}}",
                rt.device_name(),
                us / kernel_us - 1.0
            );
        }
    }
}
