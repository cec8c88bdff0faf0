//! A context-parallel step checked against the f64 oracle over the whole unsharded context:
//! what the tests (CPU and GPU) and `attn demo --dcp N` run.
//!
//! The requests' contexts are random values, loaded into an unsharded cache and, through
//! [`DcpAttention::load_context`], into the ranks' shards; then one mixed step (decodes and
//! chunked prefills, with random q, k, v) runs through the DCP layer, whose cache writes
//! store each rank's own new tokens and whose merge gives the output. The reference is an
//! unsharded CPU layer run over the same step (its cache write, its own scales for fp8),
//! and the f64 oracle over that layer's cache afterwards. Outputs (and log-sum-exps) are
//! poisoned with NaN before the run, so a row the merge fails to write fails the check.

use super::{DcpAttention, DcpGroup};
use crate::backend::BackendName;
use crate::cuda::CudaRuntime;
use crate::dtype::{Element, KvCacheDType};
use crate::error::{AttnError, Result};
use crate::fp8::KvScales;
use crate::kv_cache::{HostKvCache, KvCacheLayout};
use crate::layer::Attention;
use crate::metadata::{MetadataBuilder, RequestSchedule, SchedulerOutput};
use crate::oracle;
use crate::spec::AttnSpec;
use crate::workload::{random_values, Rng};
use std::sync::Arc;

/// One checked scenario.
#[derive(Clone, Debug)]
pub struct DcpCase {
    /// The group.
    pub group: DcpGroup,
    /// The layer (MLA, or multi-head with any window or chunks; sinks allowed).
    pub spec: AttnSpec,
    /// Tokens per cache block.
    pub block_size: usize,
    /// Each request's (cached context, new tokens this step).
    pub requests: Vec<(usize, usize)>,
    /// What the caches store.
    pub kv_dtype: KvCacheDType,
    /// The inputs' seed.
    pub seed: u64,
}

/// How a checked step ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DcpPath {
    /// `forward_host` (the CPU backend; a GPU backend copies through the device).
    Host,
    /// `forward_device`: the device kernels, the in-process exchange and the merge kernel.
    Device,
    /// `Device`, then the same step captured in a CUDA graph and replayed.
    Graph,
}

/// What a check measured.
#[derive(Clone, Debug)]
pub struct DcpReport {
    /// Query tokens of the step.
    pub tokens: usize,
    /// ||out - oracle|| / ||oracle||.
    pub rel_err: f64,
    /// The largest |lse - oracle lse| over rows (multi-head layers; 0 for MLA, whose oracle
    /// gives no lse).
    pub lse_err: f64,
    /// ||out - the unsharded CPU layer's|| / ||that||.
    pub vs_unsharded: f64,
    /// For [`DcpPath::Graph`]: whether the replay's output equals the eager run's, bit for bit.
    pub graph_bitwise: Option<bool>,
    /// Keys each rank holds after the step.
    pub kv_tokens: Vec<usize>,
}

fn fail(msg: String) -> AttnError {
    AttnError::InvalidConfig(msg)
}

/// Runs `case` on `backend` (`gpu` for a CUDA one) along `path`; the error bound is the
/// caller's to apply.
pub fn run<T: Element>(case: &DcpCase, backend: BackendName, gpu: Option<Arc<CudaRuntime>>, path: DcpPath) -> Result<DcpReport> {
    let (group, spec) = (case.group, case.spec.clone());
    let g = gpu.clone();
    run_with::<T>(case, gpu, path, move |layout| DcpAttention::in_process(backend, group, spec, layout, g))
}

/// [`run`] on the layer `make` builds over the shards' layout (every rank in this process:
/// in process, or NCCL with every rank local).
pub fn run_with<T: Element>(case: &DcpCase, gpu: Option<Arc<CudaRuntime>>, path: DcpPath, make: impl FnOnce(KvCacheLayout) -> Result<DcpAttention<T>>) -> Result<DcpReport> {
    let (group, spec, bs) = (case.group, &case.spec, case.block_size);
    let mut rng = Rng::new(case.seed);
    let mla = spec.mla.clone();
    let (hkv, d) = match &mla {
        Some(m) => (1, m.latent_dim()),
        None => (spec.num_kv_heads, spec.head_dim),
    };
    // Blocks: the unsharded cache's in order; the DCP table's (rank 0's keys) in order.
    let mut unsharded_blocks = Vec::new();
    let mut blocks = Vec::new();
    let (mut nu, mut ns) = (0u32, 0u32);
    for &(c, n) in &case.requests {
        let (bu, b) = ((c + n).div_ceil(bs) as u32, group.blocks_needed(c + n, bs) as u32);
        unsharded_blocks.push((nu..nu + bu).collect::<Vec<u32>>());
        blocks.push((ns..ns + b).collect::<Vec<u32>>());
        nu += bu;
        ns += b;
    }
    let layout_u = KvCacheLayout::new(nu.max(1) as usize, bs, hkv, d)?.with_kv_dtype(case.kv_dtype);
    let layout = KvCacheLayout::new(ns.max(1) as usize, bs, hkv, d)?.with_kv_dtype(case.kv_dtype);
    let mut reference = Attention::<T>::new(BackendName::Cpu, spec.clone(), layout_u, None)?;
    let mut dcp = make(layout)?;
    if dcp.group() != group || dcp.local_ranks() != (0..group.ranks()) {
        return Err(fail(format!("the check runs every rank of {group:?} in this process; the layer runs {:?}", dcp.local_ranks())));
    }
    let per_head_scales = case.kv_dtype == KvCacheDType::Fp8E4m3 && mla.is_none();
    if per_head_scales {
        let scales = KvScales { k: (0..hkv).map(|h| 0.5 + 0.125 * h as f32).collect(), v: (0..hkv).map(|h| 0.75 + 0.0625 * h as f32).collect() };
        reference.set_kv_scales(scales.clone())?;
        dcp.set_kv_scales(scales)?;
    }
    // The contexts: random rows (never zeros), the same in both caches.
    let mut context = HostKvCache::<T>::zeros(layout_u.with_kv_dtype(KvCacheDType::Auto));
    context.key = random_values(&mut rng, context.key.len());
    if mla.is_some() {
        context.value.clear();
    } else {
        context.value = random_values(&mut rng, context.value.len());
    }
    reference.load_cache(&context)?;
    let lens: Vec<usize> = case.requests.iter().map(|&(c, _)| c).collect();
    dcp.load_context(&context, &unsharded_blocks, &blocks, &lens)?;
    // The step.
    let sched = |ids: &[Vec<u32>]| SchedulerOutput {
        requests: case.requests.iter().zip(ids).map(|(&(c, n), b)| RequestSchedule { num_computed_tokens: c, num_new_tokens: n, block_ids: b.clone() }).collect(),
    };
    let meta_u = MetadataBuilder::new(layout_u).build(&sched(&unsharded_blocks))?;
    let meta = group.shard_for(spec, layout, &sched(&blocks))?;
    let n = meta.num_tokens();
    let (heads, out_dim, q_dim, k_dim, v_dim) = match &mla {
        Some(m) => (m.num_q_heads, m.kv_lora_rank, m.latent_dim(), m.kv_lora_rank, m.qk_rope_head_dim),
        None => (spec.num_q_heads, spec.head_dim, spec.head_dim, spec.num_kv_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim),
    };
    let q: Vec<T> = random_values(&mut rng, n * heads * q_dim);
    let k: Vec<T> = random_values(&mut rng, n * k_dim);
    let v: Vec<T> = random_values(&mut rng, n * v_dim);
    let want_layer = reference.forward(&q, &k, &v, &meta_u)?;
    let poison = T::from_f32(f32::NAN);
    let mut out = vec![poison; n * heads * out_dim];
    let mut lse = vec![f32::NAN; n * heads];
    let mut graph_bitwise = None;
    match path {
        DcpPath::Host => dcp.forward_host(&q, &k, &v, &meta, &mut out, Some(&mut lse))?,
        DcpPath::Device if dcp.merge_sites() > 1 => {
            // NCCL with several local ranks: each device gets the inputs and the whole merged
            // output; every device's must be the same, bit for bit.
            let runtimes = dcp.local_runtimes()?;
            let mut dev = Vec::new();
            for rt in &runtimes {
                let s = rt.stream();
                dev.push((s.clone_htod(&q)?, s.clone_htod(&k)?, s.clone_htod(&v)?, s.clone_htod(&out)?, s.clone_htod(&lse)?));
            }
            let mut step = dcp.new_step(meta.limits())?;
            step.prepare(&meta)?;
            let mut tensors: Vec<crate::cuda_plumbing::DeviceTensors<'_, T>> = dev.iter_mut().map(|(q, k, v, o, l)| crate::cuda_plumbing::DeviceTensors { q, k, v, out: o, lse: Some(l) }).collect();
            dcp.forward_devices(&mut step, &mut tensors)?;
            drop(tensors);
            let mut first: Option<Vec<T>> = None;
            for (rt, (_, _, _, od, ld)) in runtimes.iter().zip(&dev) {
                let s = rt.stream();
                let mut o = vec![poison; out.len()];
                s.memcpy_dtoh(od, &mut o)?;
                s.memcpy_dtoh(ld, &mut lse)?;
                s.synchronize()?;
                match &first {
                    None => first = Some(o),
                    Some(f) if f.iter().zip(&o).all(|(a, b)| a.to_f32().to_bits() == b.to_f32().to_bits()) => {}
                    Some(_) => return Err(fail(format!("device {} merged another output than device 0", rt.device_name()))),
                }
            }
            out = first.unwrap_or(out);
        }
        DcpPath::Device | DcpPath::Graph => {
            let rt = gpu.clone().ok_or_else(|| AttnError::NoCuda("a device DCP check needs a CUDA runtime".into()))?;
            let s = rt.stream().clone();
            let (qd, kd, vd) = (s.clone_htod(&q)?, s.clone_htod(&k)?, s.clone_htod(&v)?);
            let mut od = s.clone_htod(&out)?;
            let mut ld = s.clone_htod(&lse)?;
            let mut step = dcp.new_step(meta.limits())?;
            step.prepare(&meta)?;
            dcp.forward_device(&mut step, &qd, &kd, &vd, &mut od, Some(&mut ld))?;
            s.memcpy_dtoh(&od, &mut out)?;
            s.memcpy_dtoh(&ld, &mut lse)?;
            s.synchronize()?;
            if path == DcpPath::Graph {
                let graph = dcp.capture(&mut step, &qd, &kd, &vd, &mut od, None)?;
                let mut replayed = vec![poison; out.len()];
                s.memcpy_htod(&replayed, &mut od)?;
                graph.replay(&step)?;
                s.memcpy_dtoh(&od, &mut replayed)?;
                s.synchronize()?;
                graph_bitwise = Some(replayed.iter().zip(&out).all(|(a, b)| a.to_f32().to_bits() == b.to_f32().to_bits()));
            }
        }
    }
    // The oracle over the unsharded cache after the reference layer's write.
    let cache = reference.cache_snapshot()?;
    let (want, want_lse) = match &mla {
        Some(m) => (oracle::paged_mla_reference(&q, &cache, &meta_u, m)?, None),
        None => {
            let (o, l) = oracle::paged_reference_lse(&q, &cache, &meta_u, spec)?;
            (o, Some(l))
        }
    };
    if let Some(bad) = out.iter().position(|x| x.to_f32().is_nan()) {
        return Err(fail(format!("output element {bad} is NaN: a row the merge did not write")));
    }
    let out32: Vec<f32> = out.iter().map(|x| x.to_f32()).collect();
    let rel_err = oracle::rel_error(&out32, &want);
    let lse_err = match want_lse {
        Some(wl) => lse.iter().zip(&wl).map(|(&a, &b)| if b == f64::NEG_INFINITY && a == f32::NEG_INFINITY { 0.0 } else { (a as f64 - b).abs() }).fold(0.0, f64::max),
        None => 0.0,
    };
    let want_layer_f64: Vec<f64> = want_layer.iter().map(|x| x.to_f32() as f64).collect();
    let vs_unsharded = oracle::rel_error(&out32, &want_layer_f64);
    let kv_tokens = (0..group.ranks()).map(|r| meta.kv_tokens(r)).collect();
    tracing::debug!(tokens = n, rel_err, lse_err, vs_unsharded, "DCP check");
    Ok(DcpReport { tokens: n, rel_err, lse_err, vs_unsharded, graph_bitwise, kv_tokens })
}
