//! `attn`: the attn-backends command-line tool.
//!
//! - `attn demo [--model NAME | --config FILE] [--dtype bf16|f16|f32] [--kv-cache-dtype auto|fp8] [--cpu] [--seed N] [--block-size N]`:
//!   a realistic mixed batch (long-context decodes, a chunked prefill, a fresh prefill)
//!   through metadata builder -> selector -> backend, on the GPU when one is present,
//!   checked against the f64 oracle; prints the backend and why, the error and the time.
//! - `attn select [--model NAME | --config FILE] [--dtype D] [--kv-cache-dtype K] [--block-size N] [--all] [--json]`:
//!   which backend serves each model (every preset unless one is named) on this machine, with
//!   a line for each backend passed over; `--all` the (platform x dtype x model) table, this
//!   machine's rows marked; `--json` one object a line. Exits 1 if none serves a model here.
//! - `attn bench [IDS...] [--model NAME | --config FILE] [--batch N] [--context N] [--queries N] [--sweep AXIS[=v,...]] [--json] [--plot FILE.svg] [--peers FILE.json] [--from FILE.jsonl]`:
//!   the workloads of `benches/WORKLOADS.md` by id (or a model's shapes), through the
//!   harness the cargo benches share; a table, JSON lines, SVG plots.
//! - `attn presets`: the built-in model presets.
//! - `attn <command> --help`: the command's options. An option a command does not take is a
//!   usage error (exit 2); a closed stdout (`attn select | head -1`) ends a command quietly.
//!
//! `ATTN_BACKEND=<NAME>` forces a backend; `RUST_LOG=debug` shows diagnostics.

mod bench;
mod plot;

use attn_backends::backend::Platform;
use attn_backends::dtype::{DType, KvCacheDType};
use attn_backends::fp8::{quantize_e4m3, KvScales};
use attn_backends::layer::Attention;
use attn_backends::model::{self, ModelConfig};
use attn_backends::selector::{self, Requirements};
use attn_backends::text::count;
use attn_backends::workload::{blocks_needed, random_values, schedule, Rng};
use attn_backends::{cuda::CudaRuntime, oracle, AttnError, AttnSpec, BackendName, Element, HostKvCache, KvCacheLayout, MetadataBuilder, MlaSpec};
use half::{bf16, f16};
use std::fmt;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

const USAGE: &str = "usage:
  attn demo   [--model NAME | --config FILE] [--dtype auto|bf16|f16|f32] [--kv-cache-dtype auto|fp8] [--cpu] [--seed N] [--block-size N] [--dcp N [--interleave I]]
  attn select [--model NAME | --config FILE] [--dtype auto|bf16|f16|f32] [--kv-cache-dtype auto|fp8] [--block-size N] [--all] [--json]
  attn bench  [IDS...] [--model NAME | --config FILE] [--batch N] [--context N] [--queries N] [--kv-cache-dtype auto|fp8] [--backend NAME] [--sweep AXIS[=v,...]] [--json] [--plot FILE.svg] [--peers FILE.json] [--from FILE.jsonl] [--cpu] [--reps N] [--seed N]
  attn presets
  attn <command> --help
environment: ATTN_BACKEND=<NAME> forces a backend (CUDA_PAGED, CUDA_MLA, CUDA_PAGED_PORTABLE, CPU); RUST_LOG=info|debug";

/// The subcommands, each with the options it takes and its help text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Demo,
    Select,
    Bench,
    Presets,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        match s {
            "demo" => Some(Command::Demo),
            "select" => Some(Command::Select),
            "bench" => Some(Command::Bench),
            "presets" => Some(Command::Presets),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Command::Demo => "demo",
            Command::Select => "select",
            Command::Bench => "bench",
            Command::Presets => "presets",
        }
    }

    /// The options this command takes (all but `--cpu` take a value).
    fn options(self) -> &'static [&'static str] {
        match self {
            Command::Demo => &["--model", "--config", "--dtype", "--kv-cache-dtype", "--cpu", "--seed", "--block-size", "--dcp", "--interleave"],
            Command::Select => &["--model", "--config", "--dtype", "--kv-cache-dtype", "--block-size", "--all", "--json"],
            Command::Bench => &[
                "--model", "--config", "--batch", "--context", "--queries", "--kv-cache-dtype", "--backend", "--sweep", "--json", "--plot", "--peers", "--from", "--cpu", "--reps", "--seed",
            ],
            Command::Presets => &[],
        }
    }

    fn help(self) -> &'static str {
        match self {
            Command::Demo => "usage: attn demo [--model NAME | --config FILE] [--dtype auto|bf16|f16|f32] [--kv-cache-dtype auto|fp8] [--cpu] [--seed N] [--block-size N] [--dcp N [--interleave I]]

Runs one realistic mixed batch (long-context decodes, a chunked prefill, a fresh prefill)
through metadata builder -> selector -> backend, on the GPU when one is present, and checks
it against the f64 oracle. Prints what it understood of the model, the dtype and why, the
backend and why, the error and the time.

  --model NAME     a built-in preset (attn presets); default llama-3-8b
  --config FILE    a Hugging Face config.json, or a checkpoint directory holding one
  --dtype D        auto (the default: the config's dtype, float32 served as bf16), bf16,
                   f16 or f32
  --kv-cache-dtype K  auto (the model's dtype, the default) or fp8 (fp8_e4m3: e4m3 with
                   per-layer scales, as vLLM's --kv-cache-dtype fp8)
  --cpu            run on the CPU backend even when a GPU is present
  --seed N         random inputs' seed (default 1)
  --block-size N   tokens per KV-cache block (default 16)
  --dcp N          context parallelism: the batch's KV cache sharded by token over N ranks
                   (each its own cache), merged by log-sum-exp, checked against the oracle
                   over the unsharded context. The ranks run in turn in this process on one
                   device (the GPU or the CPU): the demo says so
  --interleave I   with --dcp: consecutive positions a rank stores (default 1)
  -h, --help       this text",
            Command::Select => "usage: attn select [--model NAME | --config FILE] [--dtype auto|bf16|f16|f32] [--kv-cache-dtype auto|fp8] [--block-size N] [--all] [--json]

Which attention backend serves a model on this machine (its GPU if one is present, else the
CPU), and a line for each backend passed over, saying why. Every preset unless one model is
named. Exits 1 if no backend serves a model here.

  --model NAME     a built-in preset (attn presets); with --config, what was understood of it
  --config FILE    a Hugging Face config.json, or a checkpoint directory holding one
  --dtype D        auto (the model's dtype, float32 served as bf16; the default), bf16, f16, f32
  --kv-cache-dtype K  the KV cache's element: auto (default) or fp8 (fp8_e4m3)
  --block-size N   tokens per KV-cache block (default 16)
  --all            the whole table: CUDA sm_90, sm_80 and CPU (and this machine), every dtype,
                   this machine's rows marked *
  --json           one JSON object a line (the rows --all would print, or with a model named
                   and no --all, this machine's)
  -h, --help       this text",
            Command::Bench => "usage: attn bench [IDS...] [--model NAME | --config FILE] [--batch N] [--context N] [--queries N] [--kv-cache-dtype auto|fp8] [--backend NAME] [--sweep AXIS[=v,...]] [--json] [--plot FILE.svg] [--peers FILE.json] [--from FILE.jsonl] [--cpu] [--reps N] [--seed N]

Times attention on this machine's GPU (CUDA events, the kernels alone; else the CPU backend,
by the wall clock) on the workloads of benches/WORKLOADS.md, through the harness the cargo
benches share. Each row: the backend and kernels its plan launched, the split count, the
median time of 30 runs [min, max], GB/s, TFLOP/s and the fraction of the ceiling (decode:
the copy bandwidth measured in the same run; compute-bound work: the dense bf16 tensor peak,
or the peers' measured matmul with --peers).

  IDS              workload ids (D1 ... D6, X1, X2, G1, G2, L1, P1 ... P6, M1 ... M5, S1), a
                   letter for a group (D, P, M), or all. Default: every workload on a GPU;
                   on the CPU, a small decode of the model (batch 4, context 1024)
  --model NAME     a preset's shapes (one workload a layer type): a decode of --batch
                   requests (default 64) of --context keys (4096), --queries new tokens
                   each (1; more for speculative decoding)
  --config FILE    the same from a Hugging Face config.json
  --kv-cache-dtype K  auto (bf16, the default) or fp8
  --backend NAME   time this backend only (CUDA_PAGED, CUDA_PAGED_PORTABLE, CUDA_MLA,
                   CUDA_MLA_PORTABLE, CPU); default: the Hopper backend, then the portable
                   one where it runs other kernels
  --sweep AXIS     context (1k-128k), batch (1-256) or queries (1-8), or AXIS=v1,v2,...:
                   every workload at each point; the plot draws curves
  --json           one JSON object a measurement (the benches' format), no table
  --plot FILE.svg  draw the fraction of the ceiling per workload (bars), sweeps as curves
  --peers FILE     the peers' figures (peer_bench.py's peers.json): drawn beside ours, and
                   their measured matmul becomes the compute ceiling
  --from FILE      redraw --plot from recorded JSON lines (no device needed)
  --cpu            the CPU backend even when a GPU is present
  --reps N         CPU runs timed a measurement (default 3; a GPU times 30)
  --seed N         random inputs' seed
  -h, --help       this text",
            Command::Presets => "usage: attn presets

Lists the built-in model presets, one name a line.

  -h, --help       this text",
        }
    }
}

#[derive(Debug)]
enum CliError {
    Usage(String),
    Attn(AttnError),
    Check(String),
    /// The reader of stdout went away (`attn select | head -1`): stop quietly, successfully.
    Closed,
    /// Writing stdout failed otherwise.
    Output(std::io::Error),
}

impl From<AttnError> for CliError {
    fn from(e: AttnError) -> Self {
        CliError::Attn(e)
    }
}

/// Writes one line to stdout. A closed pipe ends the command quietly (`CliError::Closed`)
/// instead of panicking as `println!` does.
fn out(args: fmt::Arguments<'_>) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args).and_then(|()| stdout.write_all(b"\n")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError::Closed),
        Err(e) => Err(CliError::Output(e)),
    }
}

/// `println!` through [`out`], returning from the function on a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {
        out(format_args!($($arg)*))?
    };
}

struct Opts {
    model: Option<String>,
    config: Option<String>,
    dtype: Option<DType>,
    kv: KvCacheDType,
    cpu: bool,
    seed: u64,
    block_size: usize,
    all: bool,
    json: bool,
    dcp: Option<usize>,
    interleave: usize,
    bench: bench::BenchOpts,
}

/// What the command line asks for: a command with its options, or a help text.
enum Parsed {
    Run(Command, Opts),
    Help(&'static str),
}

fn parse_args(args: &[String]) -> Result<Parsed, CliError> {
    let Some(first) = args.first() else { return Err(CliError::Usage("no command given".into())) };
    let cmd = match first.as_str() {
        "-h" | "--help" => return Ok(Parsed::Help(USAGE)),
        "help" => {
            return match args.get(1) {
                None => Ok(Parsed::Help(USAGE)),
                Some(c) => Command::parse(c)
                    .map(|c| Parsed::Help(c.help()))
                    .ok_or_else(|| CliError::Usage(format!("unknown command `{c}`"))),
            };
        }
        c => Command::parse(c).ok_or_else(|| CliError::Usage(format!("unknown command `{c}`")))?,
    };
    let rest = &args[1..];
    // Help wins over anything else on the line, so that `attn demo --bogus --help` helps.
    if rest.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Parsed::Help(cmd.help()));
    }
    Ok(Parsed::Run(cmd, parse_opts(cmd, rest)?))
}

/// The options of `cmd`, as `--name value` or `--name=value`; an option `cmd` does not take
/// is a usage error naming it.
fn parse_opts(cmd: Command, args: &[String]) -> Result<Opts, CliError> {
    let mut o = Opts { model: None, config: None, dtype: None, kv: KvCacheDType::Auto, cpu: false, seed: 1, block_size: 16, all: false, json: false, dcp: None, interleave: 1, bench: bench::BenchOpts::default() };
    let takes = || {
        if cmd.options().is_empty() {
            "it takes no options".to_string()
        } else {
            format!("it takes {}", cmd.options().join(", "))
        }
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        if !name.starts_with('-') && cmd == Command::Bench {
            o.bench.ids.push(a.clone());
            continue;
        }
        if !name.starts_with('-') {
            return Err(CliError::Usage(format!("`attn {}`: unexpected argument `{a}` ({})", cmd.name(), takes())));
        }
        if !cmd.options().contains(&name) {
            let known = [Command::Demo, Command::Select, Command::Bench].iter().any(|c| c.options().contains(&name));
            return Err(CliError::Usage(format!(
                "`attn {}` does not take `{name}`{} ({})",
                cmd.name(),
                if known { "" } else { ", an unknown option" },
                takes()
            )));
        }
        if let "--cpu" | "--all" | "--json" = name {
            if inline.is_some() {
                return Err(CliError::Usage(format!("{name} takes no value")));
            }
            match name {
                "--cpu" => o.cpu = true,
                "--all" => o.all = true,
                _ => {
                    o.json = true;
                    o.bench.json = true;
                }
            }
            continue;
        }
        let v = match inline {
            Some(v) => v,
            None => it.next().cloned().ok_or_else(|| CliError::Usage(format!("{name} needs a value")))?,
        };
        match name {
            "--model" => o.model = Some(v),
            "--config" => o.config = Some(v),
            "--dtype" => {
                o.dtype = if v.trim().eq_ignore_ascii_case("auto") {
                    None
                } else {
                    Some(DType::parse(&v).ok_or_else(|| CliError::Usage(format!("--dtype: unknown dtype `{v}` (auto, bf16, f16, f32)")))?)
                };
            }
            "--kv-cache-dtype" => {
                o.kv = KvCacheDType::parse(&v).ok_or_else(|| CliError::Usage(format!("--kv-cache-dtype: unknown KV-cache dtype `{v}` (auto, fp8, fp8_e4m3)")))?;
            }
            "--seed" => o.seed = v.parse().map_err(|_| CliError::Usage(format!("--seed: `{v}` is not a number")))?,
            "--block-size" => {
                o.block_size = v.parse().map_err(|_| CliError::Usage(format!("--block-size: `{v}` is not a number")))?;
            }
            "--dcp" => o.dcp = Some(v.parse().map_err(|_| CliError::Usage(format!("--dcp: `{v}` is not a number of ranks")))?),
            "--interleave" => o.interleave = v.parse().map_err(|_| CliError::Usage(format!("--interleave: `{v}` is not a number")))?,
            "--batch" | "--context" | "--queries" | "--reps" => {
                let n = v.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| CliError::Usage(format!("{name}: `{v}` is not a positive number")))?;
                match name {
                    "--batch" => o.bench.batch = Some(n),
                    "--context" => o.bench.context = Some(n),
                    "--queries" => o.bench.queries = Some(n),
                    _ => o.bench.reps = Some(n),
                }
            }
            "--backend" => o.bench.backend = Some(v),
            "--sweep" => o.bench.sweep = Some(bench::parse_sweep(&v)?),
            "--plot" => o.bench.plot = Some(v),
            "--peers" => o.bench.peers = Some(v),
            "--from" => o.bench.from = Some(v),
            _ => unreachable!("{name} is in {:?}", cmd.options()),
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
    // Colour only on a terminal: logs piped to a file or a CI log stay plain text.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse_args(&args).and_then(|parsed| match parsed {
        Parsed::Help(text) => out(format_args!("{text}")),
        Parsed::Run(Command::Demo, o) => demo(&o),
        Parsed::Run(Command::Select, o) => select(&o),
        Parsed::Run(Command::Bench, o) => bench::run(&o),
        Parsed::Run(Command::Presets, _) => presets(),
    });
    // stderr may be closed too: never panic over a message.
    let mut stderr = std::io::stderr().lock();
    match result {
        Ok(()) | Err(CliError::Closed) => ExitCode::SUCCESS,
        Err(CliError::Usage(m)) => {
            let _ = writeln!(stderr, "attn: {m}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(CliError::Attn(e)) => {
            let _ = writeln!(stderr, "attn: error: {e}");
            ExitCode::from(1)
        }
        Err(CliError::Check(m)) => {
            let _ = writeln!(stderr, "attn: check failed: {m}");
            ExitCode::from(1)
        }
        Err(CliError::Output(e)) => {
            let _ = writeln!(stderr, "attn: error writing the output: {e}");
            ExitCode::from(1)
        }
    }
}

fn presets() -> Result<(), CliError> {
    for name in model::preset_names() {
        outln!("{name}");
    }
    Ok(())
}

/// One answer of the selector: a model in a dtype on a platform.
struct Answer {
    platform: Platform,
    here: bool,
    dtype: DType,
    model: String,
    /// The model's layers this answer is for (`"all"`, or a type and its layer count).
    layers: String,
    req: Requirements,
    /// The backend, or why none serves.
    result: Result<selector::Selection, AttnError>,
}

impl Answer {
    /// The backends passed over and why: those ahead of the chosen one in the platform's
    /// priority list, or, when none serves, all of them.
    fn rejected(&self) -> Vec<(BackendName, Vec<String>)> {
        match &self.result {
            Ok(s) => s.rejected.clone(),
            Err(_) => selector::priority(self.platform)
                .iter()
                .map(|&b| (b, selector::check(b.caps(), self.platform, &self.req)))
                .filter(|(_, why)| !why.is_empty())
                .collect(),
        }
    }
    /// One line a backend passed over: `CUDA_PAGED: head dim 80 not in [64, 96, 128, 256]`.
    fn passed_over(&self) -> Vec<String> {
        self.rejected().into_iter().map(|(b, why)| format!("{b}: {}", why.join(", "))).collect()
    }
}

fn select(o: &Opts) -> Result<(), CliError> {
    let named = o.model.is_some() || o.config.is_some();
    let models = if named { vec![load_model(o)?] } else { model::preset_names().iter().map(|n| model::preset(n)).collect::<Result<Vec<_>, _>>()? };
    // This machine: its GPU if one is present (no kernel module is loaded for the question),
    // else the CPU.
    let (here, here_desc) = match attn_backends::cuda::probe_device(0) {
        Ok((platform, name)) => (platform, format!("{name} ({platform})")),
        Err(why) => (Platform::Cpu, format!("CPU ({why})")),
    };
    let forced = std::env::var(selector::ENV_VAR).ok().filter(|s| !s.trim().is_empty());
    let mut platforms = vec![Platform::Cuda { major: 9, minor: 0 }, Platform::Cuda { major: 8, minor: 0 }, Platform::Cpu];
    if !platforms.contains(&here) {
        platforms.insert(0, here);
    }
    let platforms = if o.all { platforms } else { vec![here] };
    let mut answers = Vec::new();
    for m in &models {
        let dtypes: Vec<DType> = match (o.dtype, o.all) {
            (Some(d), _) => vec![d],
            (None, true) => vec![DType::Bf16, DType::F16, DType::F32],
            (None, false) => vec![m.serving_dtype(None).0],
        };
        // One answer per layer type for a model whose layers differ (gpt-oss, Llama 4, Gemma).
        let groups = m.layer_groups();
        let kinds: Vec<(Option<model::LayerKind>, String)> = if groups.len() > 1 {
            groups.iter().map(|(k, ls)| (Some(*k), format!("{k}, {}", count(ls.len(), "layer")))).collect()
        } else {
            vec![(None, "all".to_string())]
        };
        for &p in &platforms {
            for &d in &dtypes {
                for (kind, layers) in &kinds {
                    let base = match kind {
                        Some(k) => Requirements::for_model_layer(m, *k, o.block_size),
                        None => Requirements::for_model(m, o.block_size),
                    };
                    let req = Requirements { dtype: d, kv_cache_dtype: o.kv, ..base };
                    let result = selector::select(p, &req, forced.as_deref());
                    answers.push(Answer { platform: p, here: p == here, dtype: d, model: m.name.clone(), layers: layers.clone(), req, result });
                }
            }
        }
    }
    if o.json {
        for a in &answers {
            outln!("{}", json_line(a, o.kv, o.block_size));
        }
    } else {
        outln!("this machine: {here_desc}");
        if let Some(f) = &forced {
            outln!("{}={f} (forced)", selector::ENV_VAR);
        }
        outln!("KV cache: {}; block size {}", o.kv, o.block_size);
        if named {
            let m = &models[0];
            let (dtype, why) = m.serving_dtype(o.dtype);
            outln!("model {}: {}; served in {dtype} ({why})", m.name, m.summary());
        }
        for a in &answers {
            let mark = if o.all && a.here { "* " } else if o.all { "  " } else { "" };
            let backend = match &a.result {
                Ok(s) => s.backend.to_string(),
                Err(_) => "no backend".to_string(),
            };
            let place = if o.all { format!("{} | ", a.platform) } else { String::new() };
            let layers = if a.layers == "all" { String::new() } else { format!(" [{}]", a.layers) };
            outln!("{mark}{place}{} {}{layers}: {backend}", a.model, a.dtype);
            if named && !o.all {
                if let Ok(sel) = &a.result {
                    outln!("    why: {}", sel.reason);
                }
            }
            for line in a.passed_over() {
                outln!("{mark}    passed over {line}");
            }
        }
    }
    // No backend for a model here: the caller asked for something this machine cannot run.
    if let Some(a) = answers.iter().find(|a| a.here && a.result.is_err()) {
        if let Err(e) = &a.result {
            return Err(CliError::Attn(AttnError::InvalidConfig(format!("{} in {} on this machine: {e}", a.model, a.dtype))));
        }
    }
    Ok(())
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// One answer as a JSON object: platform, this machine or not, dtype, model, KV cache, block
/// size, the backend (or null and the error), the backends passed over with their reasons.
fn json_line(a: &Answer, kv: KvCacheDType, block_size: usize) -> String {
    let list = |v: &[String]| format!("[{}]", v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(","));
    let passed: Vec<String> =
        a.rejected().into_iter().map(|(b, why)| format!("{{\"backend\":{},\"reasons\":{}}}", json_str(b.as_str()), list(&why))).collect();
    let (backend, error) = match &a.result {
        Ok(s) => (json_str(s.backend.as_str()), "null".to_string()),
        Err(e) => ("null".to_string(), json_str(&e.to_string())),
    };
    format!(
        "{{\"platform\":{},\"this_machine\":{},\"dtype\":{},\"model\":{},\"layers\":{},\"kv_cache_dtype\":{},\"block_size\":{block_size},\"backend\":{backend},\"error\":{error},\"passed_over\":[{}]}}",
        json_str(&a.platform.to_string()),
        a.here,
        json_str(&a.dtype.to_string()),
        json_str(&a.model),
        json_str(&a.layers),
        json_str(kv.name()),
        passed.join(",")
    )
}

fn demo(o: &Opts) -> Result<(), CliError> {
    let cfg = load_model(o)?;
    outln!("model: {}: {}", cfg.name, cfg.summary());
    let (dtype, why) = cfg.serving_dtype(o.dtype);
    outln!("dtype: {dtype} ({why})");
    let gpu: Option<Arc<CudaRuntime>> = if o.cpu {
        outln!("platform: CPU (--cpu)");
        None
    } else {
        match attn_backends::gpu_if_present() {
            Ok(rt) => {
                outln!("platform: {} ({}, {} SMs, kernels {})", rt.device_name(), rt.platform(), rt.num_sms(), rt.arch());
                Some(rt)
            }
            Err(why) => {
                outln!("platform: CPU ({why})");
                None
            }
        }
    };
    let platform = gpu.as_ref().map_or(Platform::Cpu, |rt| rt.platform());
    outln!("KV cache: {}", o.kv);
    if cfg.mla_spec().is_none() {
        // Every distinct layer type of the model, each on the backend its layers get.
        let groups = cfg.layer_groups();
        let mut rng = Rng::new(o.seed ^ 0x5151);
        for (kind, layers) in &groups {
            let shown: Vec<String> = layers.iter().take(6).map(|l| l.to_string()).collect();
            let more = if layers.len() > 6 { ", ..." } else { "" };
            outln!("layer type: {kind} ({}: {}{more})", count(layers.len(), "layer"), shown.join(", "));
            let mut spec = cfg.attn_spec_for_layer(layers[0]);
            if spec.sinks.present() {
                // gpt-oss's sinks are weights of the checkpoint: the demo draws them.
                let sinks: Vec<f32> = (0..spec.num_q_heads).map(|_| 1.0 + 2.0 * rng.uniform()).collect();
                outln!("sinks: {} random logits in [-1, 3) (the checkpoint's own in a real run)", sinks.len());
                spec = spec.with_sinks(sinks);
            }
            let req = Requirements { dtype, kv_cache_dtype: o.kv, ..Requirements::for_layer(&spec, dtype, &KvCacheLayout::new(1, o.block_size, spec.num_kv_heads, spec.head_dim)?.with_kv_dtype(o.kv)) };
            let sel = select_and_say(platform, &req)?;
            let gpu = if sel.backend.caps().cpu { None } else { gpu.clone() };
            if o.dcp.is_some() {
                match dtype {
                    DType::Bf16 => run_dcp_demo::<bf16>(spec, o, sel.backend, gpu)?,
                    DType::F16 => run_dcp_demo::<f16>(spec, o, sel.backend, gpu)?,
                    DType::F32 => run_dcp_demo::<f32>(spec, o, sel.backend, gpu)?,
                }
                continue;
            }
            match dtype {
                DType::Bf16 => run_demo::<bf16>(spec, o, sel.backend, gpu)?,
                DType::F16 => run_demo::<f16>(spec, o, sel.backend, gpu)?,
                DType::F32 => run_demo::<f32>(spec, o, sel.backend, gpu)?,
            }
        }
        return Ok(());
    }
    let req = Requirements { dtype, kv_cache_dtype: o.kv, ..Requirements::for_model(&cfg, o.block_size) };
    let sel = select_and_say(platform, &req)?;
    let mla = cfg.mla_spec().expect("an MLA model (checked above)");
    let gpu = if sel.backend.caps().cpu { None } else { gpu };
    let spec = cfg.attn_spec();
    if o.dcp.is_some() {
        return match dtype {
            DType::Bf16 => run_dcp_demo::<bf16>(spec, o, sel.backend, gpu),
            DType::F16 => run_dcp_demo::<f16>(spec, o, sel.backend, gpu),
            DType::F32 => run_dcp_demo::<f32>(spec, o, sel.backend, gpu),
        };
    }
    match dtype {
        DType::Bf16 => run_mla_demo::<bf16>(&mla, spec, o, sel.backend, gpu),
        DType::F16 => run_mla_demo::<f16>(&mla, spec, o, sel.backend, gpu),
        DType::F32 => run_mla_demo::<f32>(&mla, spec, o, sel.backend, gpu),
    }
}

/// The selector's choice for `req` on `platform`, printed with why (and, where a GPU is
/// present but serves none of the layer, a warning saying why and what it does serve).
fn select_and_say(platform: Platform, req: &Requirements) -> Result<selector::Selection, CliError> {
    let sel = selector::select_from_env(platform, req)?;
    outln!("backend: {} — {}", sel.backend, sel.reason);
    if platform != Platform::Cpu && sel.backend == BackendName::Cpu {
        // A GPU is here but serves none of this layer: say why, and what it does serve.
        let why: Vec<String> = sel.rejected.iter().map(|(b, why)| format!("{b}: {}", why.join(", "))).collect();
        outln!("warning: running on the CPU although a GPU ({platform}) is present: {}", why.join("; "));
        outln!("warning: the GPU serves {}", selector::gpu_serves(platform));
    }
    Ok(sel)
}

/// Host memory the demo may use for its caches and tensors. A model within the config limits
/// (up to 1024 KV heads of 1024 dims) can still need hundreds of GiB for the demo's 18k
/// cached tokens: refuse that before allocating, rather than abort in the allocator.
const DEMO_MEMORY_LIMIT: u64 = 4 << 30;

/// What the demo's cache is: `1153 blocks x 16 tokens, each 8 KV heads x head dim 128`.
struct CacheShape {
    /// "KV heads x head dim 128" or "one latent head of 576 dims".
    row: String,
    /// Query heads of the step's queries (for the memory estimate).
    q_heads: usize,
    /// Copies of the whole K and V cache the run holds at once (host copy, the backend's
    /// own, the snapshot checked afterwards).
    cache_copies: u64,
}

/// The demo's step: requests of `shapes` (cached, new tokens) over a cache of `kv_heads` x
/// `head_dim` with 16 spare blocks, and that cache filled with random earlier tokens.
fn demo_step<T: Element>(
    rng: &mut Rng,
    shapes: &[(usize, usize)],
    block_size: usize,
    kv_heads: usize,
    head_dim: usize,
    kv: KvCacheDType,
    what: &CacheShape,
) -> Result<(attn_backends::AttentionMetadata, HostKvCache<T>), CliError> {
    let num_blocks = blocks_needed(shapes, block_size) + 16;
    let layout = KvCacheLayout::new(num_blocks, block_size, kv_heads, head_dim)?.with_kv_dtype(kv);
    let step = schedule(rng, shapes, block_size, num_blocks).ok_or_else(|| CliError::Check("block pool too small".into()))?;
    let meta = MetadataBuilder::new(layout).build(&step)?;
    let n = meta.num_tokens() as u64;
    let size = T::DTYPE.size_bytes() as u64;
    // K and V caches per copy; q, k, v and the output; the f64 reference output.
    let bytes = (layout.elements() as u64).saturating_mul(2 * size * what.cache_copies).saturating_add(
        n.saturating_mul(head_dim as u64).saturating_mul((2 * what.q_heads + 2 * kv_heads) as u64 * size + 8 * what.q_heads as u64),
    );
    let shape = format!("{} x {}, each token {}", count(num_blocks, "block"), count(block_size, "token"), what.row);
    if bytes > DEMO_MEMORY_LIMIT {
        return Err(CliError::Attn(AttnError::InvalidConfig(format!(
            "the demo's cache of {shape} in {} needs {:.1} GiB of host memory with its copies and tensors; the demo allows {} GiB",
            T::DTYPE,
            bytes as f64 / (1u64 << 30) as f64,
            DEMO_MEMORY_LIMIT >> 30
        ))));
    }
    let (decodes, chunked, prefills) = meta.counts();
    outln!(
        "batch: {} requests ({decodes} decodes, {chunked} chunked prefill, {prefills} prefill), {} query tokens, {} keys; paged cache of {shape}",
        meta.num_reqs(),
        meta.num_tokens(),
        meta.seq_lens().iter().map(|&s| s as usize).sum::<usize>()
    );
    let cache = HostKvCache { layout, key: random_values::<T>(rng, layout.elements()), value: random_values::<T>(rng, layout.elements()) };
    Ok((meta, cache))
}

/// Relative error within the dtype's tolerance, else a failed check.
/// Prints the check's verdict, plainly, with the tolerance; an error if it failed.
fn within_tolerance<T: Element>(err: f64) -> Result<(), CliError> {
    let tol = if T::DTYPE == DType::F32 { 1e-4 } else { 1e-2 };
    let pass = err < tol;
    outln!("check: {} (relative error {err:.2e} against the f64 oracle, tolerance {tol:.0e} for {})", if pass { "PASS" } else { "FAIL" }, T::DTYPE);
    if pass { Ok(()) } else { Err(CliError::Check(format!("relative error {err:.3e} (tolerance {tol:.0e})"))) }
}

/// MLA (absorbed form) on `backend`: long-context decodes, a chunked prefill and a fresh
/// prefill over a latent cache (one head of kv_lora_rank + rope dims; values are its first
/// kv_lora_rank dims). On CUDA_MLA the layer writes this step's latent rows (kv_c, k_pe)
/// into the cache and attends; on the CPU, `mla_decode_cpu`. Checked against the oracle (and
/// on the GPU, the cache write against the host's).
fn run_mla_demo<T: Element>(mla: &MlaSpec, spec: AttnSpec, o: &Opts, backend: BackendName, gpu: Option<Arc<CudaRuntime>>) -> Result<(), CliError> {
    if !matches!(backend, BackendName::Cpu | BackendName::CudaMla | BackendName::CudaMlaPortable) {
        return Err(CliError::Attn(AttnError::Unsupported { backend: backend.as_str(), reason: "MLA runs on CUDA_MLA, CUDA_MLA_PORTABLE or the CPU".into() }));
    }
    let shapes = [(4095, 1), (2047, 1), (1023, 1), (511, 1), (300, 2), (256, 16), (0, 16)];
    let (w, r) = (mla.latent_dim(), mla.kv_lora_rank);
    let mut rng = Rng::new(o.seed);
    let what = CacheShape {
        row: format!("one latent head of {r} + {} = {w} dims", mla.qk_rope_head_dim),
        q_heads: mla.num_q_heads,
        cache_copies: 2,
    };
    let (meta, mut cache) = demo_step::<T>(&mut rng, &shapes, o.block_size, 1, w, o.kv, &what)?;
    let n = meta.num_tokens();
    let latent = random_values::<T>(&mut rng, n * w);
    let q = random_values::<T>(&mut rng, n * mla.num_q_heads * w);
    // Through the `Attention` layer on either backend, in the model's dtype (as the multi-head
    // demo): the layer writes this step's latent rows (kv_c, k_pe) and attends.
    let on_gpu = gpu.is_some();
    let (kv_c, k_pe): (Vec<T>, Vec<T>) = (
        latent.chunks(w).flat_map(|row| row[..r].iter().copied()).collect(),
        latent.chunks(w).flat_map(|row| row[r..].iter().copied()).collect(),
    );
    let mut layer = Attention::<T>::new(backend, spec, cache.layout, gpu)?;
    layer.load_cache(&cache)?;
    // First call pays one-time costs (module load, allocation); the second is timed.
    layer.forward(&q, &kv_c, &k_pe, &meta)?;
    layer.load_cache(&cache)?;
    let t = Instant::now();
    let out = layer.forward(&q, &kv_c, &k_pe, &meta)?;
    let elapsed = t.elapsed();
    let out: Vec<f64> = out.iter().map(|x| x.to_f64()).collect();
    let label = format!("{:.2} ms on {backend}{}; cache write verified", elapsed.as_secs_f64() * 1e3, if on_gpu { " (host<->device copies included)" } else { "" });
    let t = Instant::now();
    let reference = if o.kv == KvCacheDType::Fp8E4m3 {
        // The fp8 latent rows as stored: this step's must be the host quantizer's, and the
        // oracle reads them dequantized exactly.
        let (after, _) = layer.fp8_cache_snapshot()?;
        let mut row = vec![0u8; attn_backends::fp8::LATENT_ROW_BYTES];
        for (t, &slot) in meta.slot_mapping().iter().enumerate() {
            attn_backends::fp8::quantize_latent_row(&kv_c[t * r..][..r], &k_pe[t * (w - r)..][..w - r], &mut row)?;
            if after.latent_row(slot as usize) != &row[..] {
                return Err(CliError::Check(format!("token {t}'s fp8 latent row on {backend} differs from the host quantizer's")));
            }
        }
        oracle::paged_mla_reference_fp8(&q, &after, &meta, mla)?
    } else {
        cache.write_slots(&latent, &latent, meta.slot_mapping())?;
        let same = |a: &T, b: &T| a.to_f32().to_bits() == b.to_f32().to_bits();
        if !layer.cache_snapshot()?.key.iter().zip(&cache.key).all(|(a, b)| same(a, b)) {
            return Err(CliError::Check(format!("the latent cache on {backend} differs from the host's after the cache write")));
        }
        oracle::paged_mla_reference(&q, &cache, &meta, mla)?
    };
    let oracle_time = t.elapsed();
    let err = oracle::rel_error(&out, &reference);
    outln!("result: rel error vs f64 oracle {err:.2e}; MLA absorbed decode {label}; oracle {:.0} ms", oracle_time.as_secs_f64() * 1e3);
    within_tolerance::<T>(err)
}

/// An MHA/GQA/MQA model's layer (`spec` from a model without MLA) on `backend`.
/// `--dcp N`: a mixed batch (long decodes, a chunked prefill, a fresh prefill) over N
/// context-parallel ranks, each its own shard of the cache, checked against the f64 oracle
/// over the whole unsharded context (`attn_backends::dcp::check`).
fn run_dcp_demo<T: Element>(spec: AttnSpec, o: &Opts, backend: BackendName, gpu: Option<Arc<CudaRuntime>>) -> Result<(), CliError> {
    use attn_backends::dcp::check::{self, DcpCase, DcpPath};
    use attn_backends::dcp::DcpGroup;
    let ranks = o.dcp.unwrap_or(1);
    let group = DcpGroup::new(ranks, o.interleave)?;
    let gpus = if gpu.is_some() { attn_backends::cudarc::driver::CudaContext::device_count().map_or(1, |n| n.max(1) as usize) } else { 0 };
    let device = gpu.as_ref().map_or("the CPU".to_string(), |rt| format!("one {}", rt.device_name()));
    outln!(
        "context parallelism: {ranks} ranks, interleave {}: simulated in process on {device} (this machine has {} GPU{}); one GPU a rank over NCCL is `DcpAttention::nccl` (the nccl feature)",
        o.interleave,
        gpus,
        if gpus == 1 { "" } else { "s" }
    );
    if let Err(e) = attn_backends::dcp::check_spec(&spec) {
        outln!("not sharded: {e}");
        return Ok(());
    }
    let requests = vec![(8191, 1), (4095, 1), (2999, 1), (1499, 1), (1024, 16), (0, 24)];
    let case = DcpCase { group, spec, block_size: o.block_size, requests, kv_dtype: o.kv, seed: o.seed };
    let path = if gpu.is_some() { DcpPath::Device } else { DcpPath::Host };
    let t0 = std::time::Instant::now();
    let r = check::run::<T>(&case, backend, gpu, path)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    outln!("step: {} query tokens over {} cached keys; keys per rank {:?}", r.tokens, r.kv_tokens.iter().sum::<usize>(), r.kv_tokens);
    outln!("error vs the f64 oracle over the unsharded context: {:.2e} (vs the unsharded CPU layer {:.1e}; log-sum-exp within {:.1e}); {ms:.0} ms with the checks", r.rel_err, r.vs_unsharded, r.lse_err);
    let bound = if T::DTYPE == DType::F32 && o.kv == KvCacheDType::Auto { 1e-4 } else { 1e-2 };
    if !(r.rel_err < bound) {
        return Err(CliError::Check(format!("DCP output off the oracle by {:.2e} (bound {bound:e})", r.rel_err)));
    }
    outln!("check: ok (bound {bound:e})");
    Ok(())
}

fn run_demo<T: Element>(spec: AttnSpec, o: &Opts, backend: BackendName, gpu: Option<Arc<CudaRuntime>>) -> Result<(), CliError> {
    // Long-context decodes, a chunked prefill (1024 cached + 128 new), a fresh prefill.
    // (The 8150 + 96 prefill crosses position 8192: a chunk boundary of Llama 4's layers.)
    let shapes = [(8191, 1), (4095, 1), (2999, 1), (1499, 1), (1024, 128), (8150, 96), (0, 96)];
    let mut rng = Rng::new(o.seed);
    let what = CacheShape {
        row: format!("{} x head dim {}", count(spec.num_kv_heads, "KV head"), spec.head_dim),
        q_heads: spec.num_q_heads,
        cache_copies: 3,
    };
    // The cache holds each request's earlier tokens (random), the step writes the new ones.
    let (meta, cache) = demo_step::<T>(&mut rng, &shapes, o.block_size, spec.num_kv_heads, spec.head_dim, o.kv, &what)?;
    let layout = *meta.layout();
    let n = meta.num_tokens();
    let q = random_values::<T>(&mut rng, n * spec.num_q_heads * spec.head_dim);
    let k = random_values::<T>(&mut rng, n * spec.num_kv_heads * spec.head_dim);
    let v = random_values::<T>(&mut rng, n * spec.num_kv_heads * spec.head_dim);

    let on_gpu = gpu.is_some();
    let fp8 = o.kv == KvCacheDType::Fp8E4m3;
    let mut layer = Attention::<T>::new(backend, spec.clone(), layout, gpu)?;
    // fp8: per-layer scales as a calibrated checkpoint's, about amax / 448 (values in [-1, 1]);
    // the random cache is quantized with them on the way in.
    let scales = KvScales::uniform(spec.num_kv_heads, 1.0 / 400.0, 1.0 / 380.0);
    if fp8 {
        layer.set_kv_scales(scales.clone())?;
    }
    layer.load_cache(&cache)?;
    // First call pays one-time costs (module load, allocation); the second is timed.
    layer.forward(&q, &k, &v, &meta)?;
    layer.load_cache(&cache)?;
    let t = Instant::now();
    let out = layer.forward(&q, &k, &v, &meta)?;
    let elapsed = t.elapsed();
    let row = layout.token_stride();
    let t = Instant::now();
    // The oracle over the cache as stored (fp8: dequantized exactly, in f64); the step's own
    // tokens must be in the cache where the slot mapping says (fp8: quantized as the host does).
    let (reference, written) = if fp8 {
        let (after, scales) = layer.fp8_cache_snapshot()?;
        let reference = oracle::paged_reference_fp8(&q, &after, &scales, &meta, &spec)?;
        let written = meta.slot_mapping().iter().enumerate().all(|(t, &s)| {
            let s = s as usize * row;
            after.key[s..s + row].iter().zip(&k[t * row..(t + 1) * row]).enumerate().all(|(i, (&a, b))| a == quantize_e4m3(b.to_f32(), scales.k[i / spec.head_dim]))
        });
        (reference, written)
    } else {
        let after = layer.cache_snapshot()?;
        let reference = oracle::paged_reference(&q, &after, &meta, &spec)?;
        let written = meta.slot_mapping().iter().enumerate().all(|(t, &s)| {
            let s = s as usize * row;
            after.key[s..s + row].iter().zip(&k[t * row..(t + 1) * row]).all(|(a, b)| a.to_f32().to_bits() == b.to_f32().to_bits())
        });
        (reference, written)
    };
    let oracle_time = t.elapsed();
    let err = oracle::rel_error(&out.iter().map(|x| x.to_f64()).collect::<Vec<_>>(), &reference);
    outln!(
        "result: rel error vs f64 oracle {err:.2e}; cache write {}; forward {:.2} ms on {backend}{}; oracle {:.0} ms",
        if written { "verified" } else { "WRONG" },
        elapsed.as_secs_f64() * 1e3,
        if on_gpu { " (host<->device copies included)" } else { "" },
        oracle_time.as_secs_f64() * 1e3
    );
    if !written {
        return Err(CliError::Check("this step's K rows are not in the cache at their slots".into()));
    }
    within_tolerance::<T>(err)
}
