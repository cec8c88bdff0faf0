//! `attn bench`: the workloads of `benches/WORKLOADS.md` by id, or a model's shapes, through
//! the harness the cargo benches share (`attn_backends::bench`); a table for people, JSON
//! lines for machines, and SVG plots (`plot.rs`).

use crate::plot;
use crate::{load_model, out, CliError, Opts};
use attn_backends::bench::{self, MeasureOptions, Record, Runner, SweepAxis, Workload};
use attn_backends::BackendName;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::BufRead;

/// The shape a `--model`/`--config` bench takes when no flag says (D1's batch and context).
const MODEL_BATCH: usize = 64;
const MODEL_CONTEXT: usize = 4096;
/// On the CPU, with nothing named: a small decode of the default model.
const CPU_BATCH: usize = 4;
const CPU_CONTEXT: usize = 1024;

/// The peers' figures (`peer_bench.py`'s `peers.json`): ceilings and one result a
/// (workload, system).
#[derive(Debug, Default, serde::Deserialize)]
pub struct Peers {
    #[serde(default)]
    pub ceilings: PeerCeilings,
    #[serde(default)]
    pub results: Vec<PeerResult>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct PeerCeilings {
    #[serde(rename = "mm_TFLOPs")]
    pub mm_tflops: Option<f64>,
}

#[derive(Debug, serde::Deserialize)]
pub struct PeerResult {
    pub workload: String,
    pub system: String,
    #[serde(rename = "GBps")]
    pub gbps: Option<f64>,
    #[serde(rename = "TFLOPs")]
    pub tflops: Option<f64>,
}

impl Peers {
    pub fn load(path: &str) -> Result<Peers, CliError> {
        let text = std::fs::read_to_string(path).map_err(|e| CliError::Usage(format!("--peers {path}: {e}")))?;
        serde_json::from_str(&text).map_err(|e| CliError::Usage(format!("--peers {path}: not the peers' JSON (peer_bench.py's peers.json): {e}")))
    }

    /// The best peer on `workload` in `metric` (`gbps` or `tflops`): (system, figure).
    pub fn best(&self, workload: &str, metric: &str) -> Option<(&str, f64)> {
        self.results
            .iter()
            .filter(|r| r.workload == workload)
            .filter_map(|r| {
                let v = if metric == "tflops" { r.tflops } else { r.gbps };
                v.filter(|v| v.is_finite()).map(|v| (r.system.as_str(), v))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// Records read back from JSON lines (`attn bench --json` or the cargo benches' output;
/// lines that are not records are skipped).
fn read_records(path: &str) -> Result<Vec<Record>, CliError> {
    let f = std::fs::File::open(path).map_err(|e| CliError::Usage(format!("--from {path}: {e}")))?;
    let mut recs = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| CliError::Usage(format!("--from {path}: {e}")))?;
        if let Ok(r) = serde_json::from_str::<Record>(line.trim()) {
            recs.push(r);
        }
    }
    if recs.is_empty() {
        return Err(CliError::Usage(format!("--from {path}: no bench record in it (JSON lines of `attn bench --json`)")));
    }
    Ok(recs)
}

/// The workloads the command line names: ids and groups, or a model's layer types at
/// `--batch`/`--context`/`--queries`, each swept along `--sweep` if given.
fn workloads(o: &Opts, on_cpu: bool) -> Result<Vec<Workload>, CliError> {
    let b = &o.bench;
    let mut list = bench::select(&b.ids)?;
    let model_named = o.model.is_some() || o.config.is_some();
    let shape_flags = b.batch.is_some() || b.context.is_some() || b.queries.is_some();
    if model_named || (list.is_empty() && (shape_flags || on_cpu)) {
        let m = load_model(o)?;
        let (db, dc) = if on_cpu && !model_named && !shape_flags { (CPU_BATCH, CPU_CONTEXT) } else { (MODEL_BATCH, MODEL_CONTEXT) };
        let (batch, context, queries) = (b.batch.unwrap_or(db), b.context.unwrap_or(dc), b.queries.unwrap_or(1));
        // One workload a layer type (gpt-oss: its sliding and its full layers).
        for (kind, layers) in m.layer_groups() {
            let name = if m.layer_groups().len() > 1 { format!("{} ({kind})", m.name) } else { m.name.clone() };
            list.push(bench::decode_of(&name, &m.attn_spec_for_layer(layers[0]), batch, context, queries)?);
        }
    } else if shape_flags {
        return Err(CliError::Usage("--batch, --context and --queries shape a --model's (or --config's) workload: name one".into()));
    }
    let whole_catalogue = list.is_empty();
    if whole_catalogue {
        list = bench::catalog();
    }
    if let Some((axis, points)) = &b.sweep {
        let mut swept = Vec::new();
        // The whole catalogue sweeps its decodes of equal requests; a workload named is swept
        // or refused, saying why.
        for w in list.iter().filter(|w| !whole_catalogue || w.sweepable()) {
            swept.extend(bench::sweep(w, *axis, points)?);
        }
        list = swept;
    }
    Ok(list)
}

/// `attn bench`.
pub fn run(o: &Opts) -> Result<(), CliError> {
    let b = &o.bench;
    let peers = b.peers.as_deref().map(Peers::load).transpose()?;
    // Redraw from recorded JSON lines: no device needed.
    if let Some(path) = &b.from {
        let recs = read_records(path)?;
        let Some(svg) = &b.plot else { return Err(CliError::Usage("--from redraws a plot: give --plot FILE.svg".into())) };
        plot::draw(svg, &recs, peers.as_ref())?;
        out(format_args!("attn bench: {} records from {path} drawn to {svg}", recs.len()))?;
        return Ok(());
    }
    let gpu = if o.cpu { None } else { attn_backends::gpu_if_present().ok() };
    let on_cpu = gpu.is_none();
    let list = workloads(o, on_cpu)?;
    let mut runner = match gpu {
        Some(rt) => Runner::gpu(rt)?,
        None => Runner::cpu(b.reps.unwrap_or(3)),
    };
    if let Some(mm) = peers.as_ref().and_then(|p| p.ceilings.mm_tflops) {
        runner.set_compute_ceiling("bf16 matmul (peers' run)", mm);
    }
    let backends = match &b.backend {
        Some(name) => vec![BackendName::parse(name).ok_or_else(|| CliError::Usage(format!("--backend: unknown backend `{name}` (CUDA_PAGED, CUDA_PAGED_PORTABLE, CUDA_MLA, CUDA_MLA_PORTABLE, CPU)")))?],
        None => Vec::new(),
    };
    let opts = MeasureOptions { kv: o.kv, backends, seed: o.seed, ..MeasureOptions::default() };
    if !b.json {
        out(format_args!("{}", runner.describe()))?;
        if on_cpu {
            out(format_args!("(no GPU{}: the CPU backend runs, timed by the wall clock)", if o.cpu { " asked for" } else { " here" }))?;
        }
        out(format_args!("{}", bench::TABLE_HEADER))?;
    }
    // The bar draws on stderr, on a terminal only.
    let bar = ProgressBar::new(list.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]").expect("a valid template"));
    let mut all = Vec::new();
    for w in &list {
        bar.set_message(w.id.clone());
        let recs = runner.measure(w, &opts);
        let recs = match recs {
            Ok(r) => r,
            Err(e) => {
                bar.finish_and_clear();
                return Err(CliError::Attn(e));
            }
        };
        for r in &recs {
            let line = if b.json { r.json() } else { r.table_row() };
            bar.suspend(|| out(format_args!("{line}")))?;
        }
        all.extend(recs);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(svg) = &b.plot {
        plot::draw(svg, &all, peers.as_ref())?;
        if !b.json {
            out(format_args!("plot: {svg}"))?;
        }
    }
    Ok(())
}

/// The options only `attn bench` takes.
#[derive(Debug, Default)]
pub struct BenchOpts {
    pub ids: Vec<String>,
    pub batch: Option<usize>,
    pub context: Option<usize>,
    pub queries: Option<usize>,
    pub backend: Option<String>,
    pub sweep: Option<(SweepAxis, Vec<usize>)>,
    pub json: bool,
    pub plot: Option<String>,
    pub peers: Option<String>,
    pub from: Option<String>,
    pub reps: Option<usize>,
}

/// `--sweep AXIS` or `--sweep AXIS=v1,v2,...`.
pub fn parse_sweep(v: &str) -> Result<(SweepAxis, Vec<usize>), CliError> {
    let (name, points) = match v.split_once('=') {
        Some((n, p)) => (n, Some(p)),
        None => (v, None),
    };
    let axis = SweepAxis::parse(name).ok_or_else(|| CliError::Usage(format!("--sweep: unknown axis `{name}` (context, batch or queries, optionally =v1,v2,...)")))?;
    let points = match points {
        None => axis.default_points(),
        Some(p) => p
            .split(',')
            .map(|x| x.trim().parse::<usize>().map_err(|_| CliError::Usage(format!("--sweep {name}: `{x}` is not a number"))))
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok((axis, points))
}
