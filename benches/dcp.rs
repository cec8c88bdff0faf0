//! Context-parallel decode, D6 and M5 of WORKLOADS.md, on one GPU (custom harness).
//!
//! D6: one Llama-3-8B request (32 q heads, 8 kv heads, head dim 128, block 16) of 524288
//! tokens; M5: one DeepSeek-V3 request (128 heads, latent 576, block 64) of 262144 tokens.
//! Per rank count N = 1 (unsharded), 2, 4, 8 and interleave 1 and 64 (`--interleave I` for
//! one), the parts of a DCP step, each timed with CUDA events (L2 flushed, median of 30):
//! - `unsharded`: the plain layer's step (cache write of the new token + attention);
//! - `rank_share`: rank 0's step over its shard (it holds the most keys): what each GPU of
//!   an N-GPU group runs;
//! - `merge`: the exchange (in process nothing moves: the merge reads each rank's buffers;
//!   NCCL's all-gather on several GPUs)
//!   and the merge kernel;
//! - `in_process_step`: all N ranks in turn on this one GPU, exchange and merge included
//!   (the memory split without more GPUs: about the unsharded time).
//!
//! `projected_speedup` = unsharded / (rank_share + merge): what N GPUs would give with a
//! free collective (the collective's own time is measured on several GPUs, issue 20). JSON
//! lines (`--json`) carry `bench` "dcp", `workload`, `device`, `gpus` (GPUs used: 1),
//! `ranks`, `interleave`, `part`, `median_us`, `kv_bytes_per_rank`.
//!
//! `cargo bench --bench dcp [-- --json] [D6|M5] [--interleave I] [--sweep]` (`--sweep`: rank
//! 0's share also as attention alone and at forced split counts)

mod common;

use attn_backends::dcp::{DcpAttention, DcpGroup};
use attn_backends::layer::Attention;
use attn_backends::metadata::{MetadataBuilder, RequestSchedule, SchedulerOutput};
use attn_backends::workload::{random_values, Rng};
use attn_backends::{AttnSpec, BackendName, KvCacheLayout, MlaSpec};
use common::{only_ids, random_cache, Timer};
use half::bf16;

struct Workload {
    id: &'static str,
    spec: AttnSpec,
    backend: BackendName,
    context: usize,
    block_size: usize,
}

fn workloads() -> Vec<Workload> {
    let mla = MlaSpec { num_q_heads: 128, kv_lora_rank: 512, qk_rope_head_dim: 64, qk_nope_head_dim: 128, v_head_dim: 128, scale: 1.0 / 192f32.sqrt() };
    vec![
        Workload { id: "D6", spec: AttnSpec::new(32, 8, 128), backend: BackendName::CudaPaged, context: 524288, block_size: 16 },
        Workload { id: "M5", spec: AttnSpec { mla: Some(mla), ..AttnSpec::new(128, 128, 192) }, backend: BackendName::CudaMla, context: 262144, block_size: 64 },
    ]
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let sweep = std::env::args().any(|a| a == "--sweep");
    let args: Vec<String> = std::env::args().collect();
    let interleaves: Vec<usize> = match args.iter().position(|a| a == "--interleave").and_then(|i| args.get(i + 1)) {
        Some(v) => vec![v.parse().expect("--interleave N")],
        None => vec![1, 64],
    };
    let rt = match attn_backends::gpu_if_present() {
        Ok(rt) => rt,
        Err(why) => {
            println!("dcp bench: SKIPPED: {why}");
            return;
        }
    };
    let mut timer = Timer::new(&rt);
    let s = rt.stream().clone();
    println!("device: {} ({}, {} SMs); one GPU: each rank count's parts timed on it", rt.device_name(), rt.arch(), rt.num_sms());
    println!("| workload | ranks | interleave | part | time (us) [min, max] | KV per rank (MiB) | projected speedup |");
    println!("|---|---|---|---|---|---|---|");
    let only = only_ids(&["D6", "M5"]);
    let mut rng = Rng::new(6);
    for w in workloads().into_iter().filter(|w| only.is_empty() || only.iter().any(|o| o == w.id)) {
        let (hkv, d) = match &w.spec.mla {
            Some(m) => (1, m.latent_dim()),
            None => (w.spec.num_kv_heads, w.spec.head_dim),
        };
        let (heads, q_dim, out_dim, k_dim, v_dim) = match &w.spec.mla {
            Some(m) => (m.num_q_heads, m.latent_dim(), m.kv_lora_rank, m.kv_lora_rank, m.qk_rope_head_dim),
            None => (w.spec.num_q_heads, w.spec.head_dim, w.spec.head_dim, hkv * d, hkv * d),
        };
        // Bytes a cached token takes (K and V; MLA's latent row once).
        let token_bytes = if w.spec.mla.is_some() { d * 2 } else { 2 * hkv * d * 2 };
        let sched = |blocks: usize| SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: w.context - 1, num_new_tokens: 1, block_ids: (0..blocks as u32).collect() }] };
        let q = s.clone_htod(&random_values::<bf16>(&mut rng, heads * q_dim)).expect("q");
        let k = s.clone_htod(&random_values::<bf16>(&mut rng, k_dim)).expect("k");
        let v = s.clone_htod(&random_values::<bf16>(&mut rng, v_dim)).expect("v");
        let mut out = s.alloc_zeros::<bf16>(heads * out_dim).expect("out");
        let mut lse = s.alloc_zeros::<f32>(heads).expect("lse");
        let row = |ranks: usize, interleave: usize, part: &str, ms: (f64, f64, f64), kv_bytes: usize, speedup: Option<f64>| {
            let (m, lo, hi) = ms;
            println!(
                "| {} | {ranks} | {interleave} | {part} | {:.1} [{:.1}, {:.1}] | {:.0} | {} |",
                w.id,
                m * 1e3,
                lo * 1e3,
                hi * 1e3,
                kv_bytes as f64 / (1 << 20) as f64,
                speedup.map_or("-".into(), |x| format!("{x:.2}"))
            );
            if json {
                println!(
                    "{{\"bench\":\"dcp\",\"workload\":\"{}\",\"device\":\"{}\",\"gpus\":1,\"ranks\":{ranks},\"interleave\":{interleave},\"part\":\"{part}\",\"median_us\":{:.2},\"kv_bytes_per_rank\":{kv_bytes}{}}}",
                    w.id,
                    rt.device_name(),
                    m * 1e3,
                    speedup.map_or(String::new(), |x| format!(",\"projected_speedup\":{x:.3}"))
                );
            }
        };
        // Unsharded.
        let blocks = w.context.div_ceil(w.block_size);
        let layout = KvCacheLayout::new(blocks, w.block_size, hkv, d).expect("layout");
        let meta = MetadataBuilder::new(layout).build(&sched(blocks)).expect("metadata");
        let unsharded_ms = {
            let mut layer = Attention::<bf16>::new(w.backend, w.spec.clone(), layout, Some(rt.clone())).expect("layer");
            layer.load_cache(&random_cache(layout, &mut rng)).expect("cache");
            let mut step = layer.new_step(attn_backends::StepLimits::for_metadata(&meta)).expect("step");
            step.prepare(&meta).expect("plan");
            let t = timer.time(|| layer.forward_device(&step, &q, &k, &v, &mut out));
            row(1, 1, "unsharded", t, w.context * token_bytes, None);
            t.0
        };
        for &interleave in &interleaves {
            for ranks in [2, 4, 8] {
                let group = DcpGroup::new(ranks, interleave).expect("group");
                let blocks = group.blocks_needed(w.context, w.block_size);
                let layout = KvCacheLayout::new(blocks, w.block_size, hkv, d).expect("layout");
                let meta = group.shard(layout, &sched(blocks)).expect("shard");
                let mut dcp = DcpAttention::<bf16>::in_process(w.backend, group, w.spec.clone(), layout, Some(rt.clone())).expect("dcp layer");
                let shard = random_cache(layout, &mut rng);
                for r in 0..ranks {
                    dcp.rank_layer(r).expect("rank").load_cache(&shard).expect("cache");
                }
                let mut step = dcp.new_step(meta.limits()).expect("step");
                step.prepare(&meta).expect("plan");
                let kv_bytes = meta.kv_tokens(0) * token_bytes;
                let share = {
                    let (mut o, mut l) = (s.alloc_zeros::<bf16>(heads * out_dim).expect("out"), s.alloc_zeros::<f32>(heads).expect("lse"));
                    let layer = dcp.rank_layer(0).expect("rank 0");
                    let t = timer.time(|| layer.forward_device_lse(step.rank_step(0), &q, &k, &v, &mut o, &mut l));
                    if sweep {
                        // Rank 0's share on a step of its own: the attention alone, and forced
                        // split counts (what the plan's split rule leaves on the table).
                        let m0 = meta.rank(0);
                        let mut own = layer.new_step(attn_backends::StepLimits::for_metadata(m0)).expect("step");
                        let chosen = own.prepare(m0).expect("plan").num_splits;
                        let a = timer.time(|| layer.attend_device(&own, &q, &mut o));
                        row(ranks, interleave, &format!("rank_share_attention_only_{chosen}_splits"), a, kv_bytes, None);
                        for splits in [4, 8, 16, 32] {
                            own.prepare_with(m0, attn_backends::PlanOptions { force_splits: Some(splits), ..Default::default() }).expect("plan");
                            let t = timer.time(|| layer.forward_device_lse(&own, &q, &k, &v, &mut o, &mut l));
                            row(ranks, interleave, &format!("rank_share_{splits}_splits"), t, kv_bytes, None);
                        }
                    }
                    t
                };
                // The exchange and merge read what a full step left in the step's buffers.
                dcp.forward_device(&mut step, &q, &k, &v, &mut out, Some(&mut lse)).expect("step");
                let merge = timer.time(|| {
                    dcp.exchange(&mut step)?;
                    dcp.merge(&mut step, &mut [attn_backends::DeviceTensors { q: &q, k: &k, v: &v, out: &mut out, lse: Some(&mut lse) }])
                });
                let whole = timer.time(|| dcp.forward_device(&mut step, &q, &k, &v, &mut out, Some(&mut lse)));
                let speedup = unsharded_ms / (share.0 + merge.0);
                row(ranks, interleave, "rank_share", share, kv_bytes, Some(speedup));
                row(ranks, interleave, "merge", merge, kv_bytes, None);
                row(ranks, interleave, "in_process_step", whole, kv_bytes, None);
            }
        }
    }
}
