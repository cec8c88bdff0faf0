//! `attn bench --plot FILE.svg`: each workload's fraction of its ceiling as bars (one a
//! backend, the best peer beside it when `--peers` gives their JSON), and each sweep as
//! curves (time, and fraction of the ceiling, against the swept axis; points where the plan
//! split the keys drawn as squares, so the eye sees where split-KV takes over).

use crate::bench::Peers;
use crate::CliError;
use attn_backends::bench::Record;
use plotters::prelude::*;

const PALETTE: [RGBColor; 6] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];
const PEER: RGBColor = RGBColor(150, 150, 150);

fn err(path: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("--plot {path}: {e}"))
}

/// Draws `recs` (and the peers' best figures) into an SVG at `path`.
pub fn draw(path: &str, recs: &[Record], peers: Option<&Peers>) -> Result<(), CliError> {
    let bars: Vec<&Record> = recs.iter().filter(|r| r.x.is_none() && !r.forced && r.fraction_of_ceiling.is_finite()).collect();
    let mut axes: Vec<String> = recs.iter().filter_map(|r| r.sweep.clone()).collect();
    axes.dedup();
    axes.sort();
    axes.dedup();
    if bars.is_empty() && axes.is_empty() {
        return Err(err(path, "nothing to draw (no record with a ceiling)"));
    }
    let panels = usize::from(!bars.is_empty()) + 2 * axes.len();
    let root = SVGBackend::new(path, (1200, 420 * panels as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let areas = root.split_evenly((panels, 1));
    let mut next = areas.iter();
    if !bars.is_empty() {
        draw_bars(next.next().expect("a panel a chart"), &bars, peers).map_err(|e| err(path, e))?;
    }
    for axis in &axes {
        let pts: Vec<&Record> = recs.iter().filter(|r| r.sweep.as_deref() == Some(axis.as_str()) && !r.forced).collect();
        draw_sweep(next.next().expect("a panel a chart"), axis, &pts, false).map_err(|e| err(path, e))?;
        draw_sweep(next.next().expect("a panel a chart"), axis, &pts, true).map_err(|e| err(path, e))?;
    }
    root.present().map_err(|e| err(path, e))?;
    Ok(())
}

/// 1536 -> "1.5k", 131072 -> "128k", 3.5 -> "3.5".
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1048576.0))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1024.0))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map_or(s.clone(), str::to_string)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Bars: a group a workload, a bar a backend (its plan's own choice), the best peer last.
fn draw_bars(area: &Area<'_>, recs: &[&Record], peers: Option<&Peers>) -> Result<(), Box<dyn std::error::Error>> {
    let mut ids: Vec<&str> = Vec::new();
    let mut series: Vec<&str> = Vec::new();
    for r in recs {
        if !ids.contains(&r.workload.as_str()) {
            ids.push(&r.workload);
        }
        if !series.contains(&r.backend.as_str()) {
            series.push(&r.backend);
        }
    }
    let peer_of = |r: &Record| peers.and_then(|p| p.best(&r.workload, &r.metric)).map(|(s, v)| (s.to_string(), v / r.ceiling_value));
    let with_peers = recs.iter().any(|r| peer_of(r).is_some());
    let top = recs.iter().map(|r| r.fraction_of_ceiling).chain(recs.iter().filter_map(|r| peer_of(r).map(|p| p.1))).fold(1.0f64, f64::max) * 1.75;
    let device = recs.first().map_or("", |r| r.device.as_str());
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "fraction of the ceiling ({device}; decode: copy bandwidth; prefill, MLA at many heads: {}{})",
                recs.iter().find(|r| r.metric == "tflops").map_or("tensor peak", |r| r.ceiling.as_str()),
                if recs.iter().any(|r| r.bench == "step") { "; S1: the layers' own kernel time" } else { "" }
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..ids.len() as f64 - 0.5, 0f64..top)?;
    let names = ids.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(ids.len().max(2))
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 { names.get(i as usize).map_or(String::new(), |s| s.to_string()) } else { String::new() }
        })
        .y_desc("of ceiling")
        .draw()?;
    // Each workload's bars side by side, centred on it: its backends in legend order, then
    // the best peer.
    let mut place: Vec<(usize, f64, f64)> = Vec::new(); // (record index, x0, width)
    let mut peer_bars = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut mine: Vec<usize> = (0..recs.len()).filter(|&j| recs[j].workload == *id).collect();
        mine.sort_by_key(|&j| series.iter().position(|s| *s == recs[j].backend));
        let peer = peer_of(recs[mine[0]]);
        let slots = mine.len() + usize::from(peer.is_some());
        let width = 0.8 / slots as f64;
        for (k, &j) in mine.iter().enumerate() {
            place.push((j, i as f64 - 0.4 + k as f64 * width, width));
        }
        if let Some((_, f)) = peer {
            let x0 = i as f64 - 0.4 + mine.len() as f64 * width;
            peer_bars.push(Rectangle::new([(x0, 0.0), (x0 + width * 0.9, f)], PEER.filled()));
        }
    }
    for (k, s) in series.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let rects = place.iter().filter(|p| recs[p.0].backend == *s).map(|&(j, x0, w)| Rectangle::new([(x0, 0.0), (x0 + w * 0.9, recs[j].fraction_of_ceiling)], color.filled()));
        chart.draw_series(rects)?.label(s.to_string()).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    if with_peers {
        chart.draw_series(peer_bars)?.label("best peer (--peers)").legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], PEER.filled()));
    }
    chart.draw_series(std::iter::once(PathElement::new(vec![(-0.5, 1.0), (ids.len() as f64 - 0.5, 1.0)], BLACK.stroke_width(1))))?;
    // Above the prefill bars, the lowest group of a full catalogue.
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(SeriesLabelPosition::UpperMiddle).draw()?;
    Ok(())
}

/// A sweep's curves, a series a (workload, backend): time (log-log) or the fraction of the
/// ceiling; squares where the plan split the keys.
fn draw_sweep(area: &Area<'_>, axis: &str, recs: &[&Record], fraction: bool) -> Result<(), Box<dyn std::error::Error>> {
    let value = |r: &Record| if fraction { r.fraction_of_ceiling } else { r.median_us };
    let xs: Vec<f64> = recs.iter().filter_map(|r| r.x.map(|x| x as f64)).collect();
    let (x0, x1) = (xs.iter().copied().fold(f64::INFINITY, f64::min), xs.iter().copied().fold(0.0f64, f64::max));
    let ys: Vec<f64> = recs.iter().map(|r| value(r)).filter(|v| v.is_finite() && *v > 0.0).collect();
    if ys.is_empty() {
        return Ok(());
    }
    let (y0, y1) = (ys.iter().copied().fold(f64::INFINITY, f64::min), ys.iter().copied().fold(0.0f64, f64::max));
    let device = recs.first().map_or("", |r| r.device.as_str());
    let title = if fraction { format!("fraction of the ceiling against {axis} ({device})") } else { format!("time against {axis} ({device}); squares: split-KV") };
    let mut series: Vec<(String, String)> = Vec::new();
    for r in recs {
        let key = (r.workload.clone(), r.backend.clone());
        if !series.contains(&key) {
            series.push(key);
        }
    }
    let mut builder = ChartBuilder::on(area);
    builder.caption(title, ("sans-serif", 18)).margin(12).x_label_area_size(40).y_label_area_size(60);
    let xr = (x0 / 1.2..x1 * 1.2).log_scale();
    macro_rules! curves {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .light_line_style(WHITE.mix(0.0))
                .x_desc(axis)
                .x_label_formatter(&|x| short(*x))
                .y_label_formatter(&|y| if fraction { format!("{y:.2}") } else { short(*y) })
                .y_desc(if fraction { "of ceiling" } else { "time (us)" })
                .draw()?;
            for (k, (w, b)) in series.iter().enumerate() {
                let color = PALETTE[k % PALETTE.len()];
                let mut pts: Vec<(f64, f64, usize)> = recs.iter().filter(|r| &r.workload == w && &r.backend == b).filter_map(|r| r.x.map(|x| (x as f64, value(r), r.splits))).collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                chart.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), color.stroke_width(2)))?.label(format!("{w}: {b}")).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2)));
                chart.draw_series(pts.iter().map(|p| {
                    if p.2 > 1 { EmptyElement::at((p.0, p.1)) + Rectangle::new([(-4, -4), (4, 4)], color.filled()) } else { EmptyElement::at((p.0, p.1)) + Rectangle::new([(-2, -2), (2, 2)], color.filled()) }
                }))?;
            }
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(SeriesLabelPosition::UpperLeft).draw()?;
        }};
    }
    if fraction {
        curves!(builder.build_cartesian_2d(xr, 0f64..(y1 * 1.15).max(1.0))?);
    } else {
        curves!(builder.build_cartesian_2d(xr, (y0 / 1.5..y1 * 1.5).log_scale())?);
    }
    Ok(())
}
