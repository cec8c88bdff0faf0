//! `attn`: the attn-backends command-line tool.
//!
//! - `attn demo [--model NAME | --config FILE] [--dtype bf16|f16|f32] [--cpu] [--seed N]`:
//!   a realistic mixed batch (long-context decodes, a chunked prefill, a fresh prefill)
//!   through metadata builder -> selector -> backend, on the GPU when one is present,
//!   checked against the f64 oracle; prints the backend and why, the error and the time.
//! - `attn select [--model NAME | --config FILE] [--block-size N]`: the
//!   (platform x dtype x model) -> backend matrix (all presets unless one model is named).
//! - `attn presets`: the built-in model presets.
//!
//! `ATTN_BACKEND=<NAME>` forces a backend; `RUST_LOG=debug` shows diagnostics.

use attn_backends::backend::Platform;
use attn_backends::dtype::DType;
use attn_backends::layer::Attention;
use attn_backends::model::{self, ModelConfig};
use attn_backends::selector::{self, Requirements};
use attn_backends::workload::{blocks_needed, random_values, schedule, Rng};
use attn_backends::{cuda::CudaRuntime, oracle, AttnError, Element, HostKvCache, KvCacheLayout, MetadataBuilder};
use half::{bf16, f16};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

const USAGE: &str = "usage:
  attn demo   [--model NAME | --config FILE] [--dtype bf16|f16|f32] [--cpu] [--seed N] [--block-size N]
  attn select [--model NAME | --config FILE] [--block-size N]
  attn presets
environment: ATTN_BACKEND=<NAME> forces a backend (CUDA_PAGED, CPU); RUST_LOG=info|debug";

#[derive(Debug)]
enum CliError {
    Usage(String),
    Attn(AttnError),
    Check(String),
}

impl From<AttnError> for CliError {
    fn from(e: AttnError) -> Self {
        CliError::Attn(e)
    }
}

struct Opts {
    model: Option<String>,
    config: Option<String>,
    dtype: Option<DType>,
    cpu: bool,
    seed: u64,
    block_size: usize,
}

fn parse(args: &[String]) -> Result<Opts, CliError> {
    let mut o = Opts { model: None, config: None, dtype: None, cpu: false, seed: 1, block_size: 16 };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().cloned().ok_or_else(|| CliError::Usage(format!("{name} needs a value")));
        match a.as_str() {
            "--model" => o.model = Some(val("--model")?),
            "--config" => o.config = Some(val("--config")?),
            "--dtype" => {
                let v = val("--dtype")?;
                o.dtype = Some(DType::parse(&v).ok_or_else(|| CliError::Usage(format!("unknown dtype `{v}` (bf16, f16, f32)")))?);
            }
            "--cpu" => o.cpu = true,
            "--seed" => {
                let v = val("--seed")?;
                o.seed = v.parse().map_err(|_| CliError::Usage(format!("--seed: `{v}` is not a number")))?;
            }
            "--block-size" => {
                let v = val("--block-size")?;
                o.block_size = v.parse().map_err(|_| CliError::Usage(format!("--block-size: `{v}` is not a number")))?;
            }
            other => return Err(CliError::Usage(format!("unknown argument `{other}`"))),
        }
    }
    if o.model.is_some() && o.config.is_some() {
        return Err(CliError::Usage("give --model or --config, not both".into()));
    }
    Ok(o)
}

fn load_model(o: &Opts) -> Result<ModelConfig, CliError> {
    Ok(match (&o.model, &o.config) {
        (_, Some(path)) => ModelConfig::from_file(path)?,
        (Some(name), None) => model::preset(name)?,
        (None, None) => model::preset("llama-3-8b")?,
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => parse(&args[1..]).and_then(|o| demo(&o)),
        Some("select") => parse(&args[1..]).and_then(|o| select(&o)),
        Some("presets") => {
            for name in model::preset_names() {
                println!("{name}");
            }
            Ok(())
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(CliError::Usage(format!("unknown command `{other}`"))),
        None => Err(CliError::Usage("no command given".into())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(m)) => {
            eprintln!("attn: {m}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(CliError::Attn(e)) => {
            eprintln!("attn: error: {e}");
            ExitCode::from(1)
        }
        Err(CliError::Check(m)) => {
            eprintln!("attn: check failed: {m}");
            ExitCode::from(1)
        }
    }
}

fn select(o: &Opts) -> Result<(), CliError> {
    let models = if o.model.is_some() || o.config.is_some() {
        vec![load_model(o)?]
    } else {
        model::preset_names().iter().map(|n| model::preset(n)).collect::<Result<Vec<_>, _>>()?
    };
    let platforms = [Platform::Cuda { major: 9, minor: 0 }, Platform::Cuda { major: 8, minor: 0 }, Platform::Cpu];
    let dtypes = [DType::Bf16, DType::F16, DType::F32];
    let forced = std::env::var(selector::ENV_VAR).ok().filter(|s| !s.is_empty());
    if let Some(f) = &forced {
        println!("{}={f} (forced)", selector::ENV_VAR);
    }
    println!("| platform | dtype | model | backend | reason |");
    println!("|---|---|---|---|---|");
    for m in &models {
        for &p in &platforms {
            for &d in &dtypes {
                let mut req = Requirements::for_model(m, o.block_size);
                req.dtype = d;
                let (backend, why) = match selector::select(p, &req, forced.as_deref()) {
                    Ok(s) => (s.backend.to_string(), s.reason),
                    Err(e) => ("-".to_string(), e.to_string()),
                };
                println!("| {p} | {d} | {} | {backend} | {why} |", m.name);
            }
        }
    }
    Ok(())
}

fn demo(o: &Opts) -> Result<(), CliError> {
    let cfg = load_model(o)?;
    let dtype = o.dtype.unwrap_or(cfg.dtype);
    let gpu: Option<Arc<CudaRuntime>> = if o.cpu {
        println!("platform: CPU (--cpu)");
        None
    } else {
        match attn_backends::gpu_if_present() {
            Ok(rt) => {
                println!("platform: {} ({}, {} SMs, kernels {})", rt.device_name(), rt.platform(), rt.num_sms(), rt.arch());
                Some(rt)
            }
            Err(why) => {
                println!("platform: CPU ({why})");
                None
            }
        }
    };
    let platform = gpu.as_ref().map_or(Platform::Cpu, |rt| rt.platform());
    let mut req = Requirements::for_model(&cfg, o.block_size);
    req.dtype = dtype;
    let sel = selector::select_from_env(platform, &req)?;
    println!(
        "model: {} ({} q heads, {} kv heads, head dim {}{}), dtype {dtype}",
        cfg.name,
        cfg.num_q_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        if cfg.is_mla() { ", MLA" } else { "" }
    );
    println!("backend: {} — {}", sel.backend, sel.reason);
    if let Some(mla) = cfg.mla_spec() {
        return match dtype {
            DType::Bf16 => run_mla_demo::<bf16>(&mla, o, sel.backend),
            DType::F16 => run_mla_demo::<f16>(&mla, o, sel.backend),
            DType::F32 => run_mla_demo::<f32>(&mla, o, sel.backend),
        };
    }
    let gpu = if sel.backend.caps().cpu { None } else { gpu };
    match dtype {
        DType::Bf16 => run_demo::<bf16>(&cfg, o, sel.backend, gpu),
        DType::F16 => run_demo::<f16>(&cfg, o, sel.backend, gpu),
        DType::F32 => run_demo::<f32>(&cfg, o, sel.backend, gpu),
    }
}

/// The demo's step: requests of `shapes` (cached, new tokens) over a cache of `kv_heads` x
/// `head_dim` with 16 spare blocks, and that cache filled with random earlier tokens.
fn demo_step<T: Element>(
    rng: &mut Rng,
    shapes: &[(usize, usize)],
    block_size: usize,
    kv_heads: usize,
    head_dim: usize,
) -> Result<(attn_backends::AttentionMetadata, HostKvCache<T>), CliError> {
    let num_blocks = blocks_needed(shapes, block_size) + 16;
    let layout = KvCacheLayout::new(num_blocks, block_size, kv_heads, head_dim)?;
    let step = schedule(rng, shapes, block_size, num_blocks).ok_or_else(|| CliError::Check("block pool too small".into()))?;
    let meta = MetadataBuilder::new(layout).build(&step)?;
    let (decodes, chunked, prefills) = meta.counts();
    println!(
        "batch: {} requests ({decodes} decodes, {chunked} chunked prefill, {prefills} prefill), {} query tokens, {} keys in a cache of {kv_heads} x {head_dim}, block size {block_size}",
        meta.num_reqs(),
        meta.num_tokens(),
        meta.seq_lens().iter().map(|&s| s as usize).sum::<usize>()
    );
    let cache = HostKvCache { layout, key: random_values::<T>(rng, layout.elements()), value: random_values::<T>(rng, layout.elements()) };
    Ok((meta, cache))
}

/// Relative error within the dtype's tolerance, else a failed check.
fn within_tolerance<T: Element>(err: f64) -> Result<(), CliError> {
    let tol = if T::DTYPE == DType::F32 { 1e-4 } else { 1e-2 };
    if err < tol { Ok(()) } else { Err(CliError::Check(format!("relative error {err:.3e} (tolerance {tol:.0e})"))) }
}

/// MLA (absorbed form) on the CPU backend, the only one with MLA so far: long-context
/// decodes, a chunked prefill and a fresh prefill over a latent cache (one head of
/// kv_lora_rank + rope dims; values are its first kv_lora_rank dims).
fn run_mla_demo<T: Element>(spec: &attn_backends::MlaSpec, o: &Opts, backend: attn_backends::BackendName) -> Result<(), CliError> {
    if backend != attn_backends::BackendName::Cpu {
        return Err(CliError::Check(format!("{backend} has no MLA path yet")));
    }
    let shapes = [(4095, 1), (2047, 1), (1023, 1), (511, 1), (256, 16), (0, 16)];
    let w = spec.latent_dim();
    let mut rng = Rng::new(o.seed);
    let (meta, mut cache) = demo_step::<T>(&mut rng, &shapes, o.block_size, 1, w)?;
    let n = meta.num_tokens();
    let latent = random_values::<T>(&mut rng, n * w);
    let q = random_values::<T>(&mut rng, n * spec.num_q_heads * w);
    let t = Instant::now();
    cache.write_slots(&latent, &latent, meta.slot_mapping());
    let out = attn_backends::backend::cpu::mla_decode_cpu(&q, &cache, &meta, spec)?;
    let elapsed = t.elapsed();
    let t = Instant::now();
    let reference = oracle::paged_mla_reference(&q, &cache, &meta, spec);
    let oracle_time = t.elapsed();
    let err = oracle::rel_error(&out, &reference);
    println!(
        "result: rel error vs f64 oracle {err:.2e}; MLA absorbed decode {:.2} ms on {backend}; oracle {:.0} ms",
        elapsed.as_secs_f64() * 1e3,
        oracle_time.as_secs_f64() * 1e3
    );
    within_tolerance::<T>(err)
}

fn run_demo<T: Element>(cfg: &ModelConfig, o: &Opts, backend: attn_backends::BackendName, gpu: Option<Arc<CudaRuntime>>) -> Result<(), CliError> {
    let spec = cfg.attn_spec();
    // Long-context decodes, a chunked prefill (1024 cached + 128 new), a fresh prefill.
    let shapes = [(8191, 1), (4095, 1), (2999, 1), (1499, 1), (1024, 128), (0, 96)];
    let mut rng = Rng::new(o.seed);
    // The cache holds each request's earlier tokens (random), the step writes the new ones.
    let (meta, cache) = demo_step::<T>(&mut rng, &shapes, o.block_size, spec.num_kv_heads, spec.head_dim)?;
    let layout = *meta.layout();
    let n = meta.num_tokens();
    let q = random_values::<T>(&mut rng, n * spec.num_q_heads * spec.head_dim);
    let k = random_values::<T>(&mut rng, n * spec.num_kv_heads * spec.head_dim);
    let v = random_values::<T>(&mut rng, n * spec.num_kv_heads * spec.head_dim);

    let mut layer = Attention::<T>::new(backend, spec.clone(), layout, gpu)?;
    layer.load_cache(&cache)?;
    // First call pays one-time costs (module load, allocation); the second is timed.
    layer.forward(&q, &k, &v, &meta)?;
    layer.load_cache(&cache)?;
    let t = Instant::now();
    let out = layer.forward(&q, &k, &v, &meta)?;
    let elapsed = t.elapsed();
    let after = layer.cache_snapshot()?;
    let t = Instant::now();
    let reference = oracle::paged_reference(&q, &after, &meta, &spec);
    let oracle_time = t.elapsed();
    let err = oracle::rel_error(&out.iter().map(|x| x.to_f64()).collect::<Vec<_>>(), &reference);
    // The step's own tokens must be in the cache where the slot mapping says.
    let row = layout.token_stride();
    let written = meta.slot_mapping().iter().enumerate().all(|(t, &s)| {
        let s = s as usize * row;
        after.key[s..s + row].iter().zip(&k[t * row..(t + 1) * row]).all(|(a, b)| a.to_f32().to_bits() == b.to_f32().to_bits())
    });
    println!(
        "result: rel error vs f64 oracle {err:.2e}; cache write {}; forward {:.2} ms on {backend} (host<->device copies included for CUDA); oracle {:.0} ms",
        if written { "verified" } else { "WRONG" },
        elapsed.as_secs_f64() * 1e3,
        oracle_time.as_secs_f64() * 1e3
    );
    if !written {
        return Err(CliError::Check("this step's K rows are not in the cache at their slots".into()));
    }
    within_tolerance::<T>(err)
}
