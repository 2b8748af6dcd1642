//! The HTML report: one self-contained file (inline CSS and SVG, no script, no network)
//! with the summary, every phase's figures and four charts drawn with `plotters`' SVG
//! backend: connections over time, latency distribution, gateway and tool memory and CPU
//! over time, errors by kind.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{RunResult, fmt_us};

const W: u32 = 900;
const H: u32 = 340;

/// Chart ids in the order they appear (each is an `<figure id=...>` holding one `<svg>`).
pub const CHARTS: &[&str] =
    &["chart-connections", "chart-latency", "chart-memory", "chart-cpu", "chart-errors"];

/// Render the report of `r`.
pub fn render(r: &RunResult) -> String {
    let mut body = String::new();
    body.push_str(&format!(
        "<h1>Holdfast load test: {}</h1>\n<p class=sub>{} · {} clients · {} worker process(es) · {} gateway(s)</p>\n",
        esc(&r.label),
        esc(&r.command),
        r.clients,
        r.workers.len(),
        r.gateways.len()
    ));
    body.push_str("<h2>Summary</h2>\n<pre>");
    body.push_str(&esc(&r.summary_table()));
    body.push_str("</pre>\n");
    body.push_str("<h2>Phases</h2>\n<table><tr><th>phase</th><th>seconds</th><th>figures</th><th>latency (p50 / p99 / p99.9 / max, samples)</th></tr>\n");
    for p in &r.phases {
        let figures: Vec<String> =
            p.figures.iter().map(|(k, v)| format!("{}: {}", esc(k), esc(&v.to_string()))).collect();
        let lat: Vec<String> = p
            .latency
            .iter()
            .map(|(k, s)| {
                format!(
                    "{}: {} / {} / {} / {} ({})",
                    esc(k),
                    fmt_us(s.p50_us),
                    fmt_us(s.p99_us),
                    fmt_us(s.p999_us),
                    fmt_us(s.max_us),
                    s.count
                )
            })
            .collect();
        body.push_str(&format!(
            "<tr><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>\n",
            esc(&p.name),
            p.end_s - p.start_s,
            figures.join("<br>"),
            lat.join("<br>")
        ));
    }
    body.push_str("</table>\n<h2>Charts</h2>\n");
    let charts: [(&str, &str, String); 5] = [
        (CHARTS[0], "Connections over time", chart(|a| connections(a, r))),
        (CHARTS[1], "Latency distribution (whole run)", chart(|a| latency(a, r))),
        (CHARTS[2], "Memory over time: gateways and load generator (RSS)", chart(|a| memory(a, r))),
        (CHARTS[3], "CPU over time: gateways and load generator", chart(|a| cpu(a, r))),
        (CHARTS[4], "Errors by kind (whole run)", chart(|a| errors(a, r))),
    ];
    for (id, title, svg) in charts {
        body.push_str(&format!(
            "<figure id=\"{id}\"><figcaption>{}</figcaption>\n{svg}\n</figure>\n",
            esc(title)
        ));
    }
    body.push_str("<h2>Machine</h2>\n<table>");
    for (k, v) in &r.machine {
        body.push_str(&format!("<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v)));
    }
    for k in &r.kernel {
        body.push_str(&format!("<tr><td>kernel setting</td><td>{}</td></tr>", esc(k)));
    }
    body.push_str("</table>\n");
    format!(
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>Holdfast load test: {}</title>\n<style>{CSS}</style></head>\n<body>\n{body}</body></html>\n",
        esc(&r.label)
    )
}

const CSS: &str = "body{font-family:sans-serif;margin:2em;max-width:1000px;color:#222}\
h1{font-size:1.5em}.sub{color:#666}table{border-collapse:collapse;margin:1em 0}\
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left;font-size:.9em}\
pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}figure{margin:1em 0}figcaption{font-weight:bold}";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Drawn = Result<(), String>;

/// Draw into a fresh SVG string; a chart that fails to draw says so instead.
fn chart(draw: impl FnOnce(&Area<'_>) -> Drawn) -> String {
    let mut svg = String::new();
    let result = {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let r = root.fill(&WHITE).map_err(|e| e.to_string()).and_then(|()| draw(&root));
        let presented = root.present().map_err(|e| e.to_string());
        r.and(presented)
    };
    match result {
        Ok(()) => svg,
        Err(e) => format!("<p>chart not drawn: {}</p>", esc(&e)),
    }
}

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Lines over the run's time axis.
fn time_lines(
    area: &Area<'_>,
    r: &RunResult,
    y_desc: &str,
    lines: &[(&str, Vec<(f64, f64)>)],
) -> Drawn {
    let t_max = r.timeline.last().map_or(1.0, |s| s.t_s).max(1.0);
    let y_max =
        lines.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.1)).fold(0.0f64, f64::max).max(1.0)
            * 1.1;
    let mut c = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)
        .map_err(err)?;
    c.configure_mesh().x_desc("seconds").y_desc(y_desc).draw().map_err(err)?;
    for (i, (name, pts)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        c.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn connections(area: &Area<'_>, r: &RunResult) -> Drawn {
    let pick = |f: fn(&super::Sample) -> u64| -> Vec<(f64, f64)> {
        r.timeline.iter().map(|s| (s.t_s, f(s) as f64)).collect()
    };
    time_lines(
        area,
        r,
        "connections",
        &[
            ("established", pick(|s| s.established)),
            ("connecting", pick(|s| s.pending)),
            ("waiting to reconnect", pick(|s| s.waiting)),
        ],
    )
}

fn memory(area: &Area<'_>, r: &RunResult) -> Drawn {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let gw: Vec<(f64, f64)> =
        r.timeline.iter().map(|s| (s.t_s, mib(s.gateway_rss_bytes))).collect();
    let tool: Vec<(f64, f64)> = r.timeline.iter().map(|s| (s.t_s, mib(s.tool_rss_bytes))).collect();
    time_lines(area, r, "MiB", &[("gateways RSS", gw), ("load generator RSS", tool)])
}

fn cpu(area: &Area<'_>, r: &RunResult) -> Drawn {
    let gw: Vec<(f64, f64)> = r.timeline.iter().map(|s| (s.t_s, s.gateway_cpu_pct)).collect();
    let tool: Vec<(f64, f64)> = r.timeline.iter().map(|s| (s.t_s, s.tool_cpu_pct)).collect();
    time_lines(area, r, "% of one core", &[("gateways CPU", gw), ("load generator CPU", tool)])
}

/// Percentile on a "nines" axis: 0 → 0, 90 → 1, 99 → 2, 99.9 → 3, 99.99 → 4.
fn nines(p: f64) -> f64 {
    if p >= 99.999 { 5.0 } else { -(1.0 - p / 100.0).log10() }
}

fn latency(area: &Area<'_>, r: &RunResult) -> Drawn {
    let curves: Vec<(&String, &Vec<(f64, u64)>)> =
        r.latency_curves.iter().filter(|(_, c)| !c.is_empty()).collect();
    let y_max = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1 as f64 / 1000.0))
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 1.1;
    let mut c = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..5.0, (0.001f64..y_max.max(0.002)).log_scale())
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("percentile")
        .y_desc("ms (log)")
        .x_labels(6)
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "0".into(),
            1 => "90".into(),
            2 => "99".into(),
            3 => "99.9".into(),
            4 => "99.99".into(),
            _ => "100".into(),
        })
        .draw()
        .map_err(err)?;
    for (i, (name, curve)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> =
            curve.iter().map(|(p, us)| (nines(*p), (*us as f64 / 1000.0).max(0.001))).collect();
        c.draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn errors(area: &Area<'_>, r: &RunResult) -> Drawn {
    // Horizontal bars: one row per kind, the name on the left, the count at the bar's end.
    let kinds: Vec<(&String, &u64)> = r.errors.iter().collect();
    let n = kinds.len().max(1);
    let x_max = kinds.iter().map(|(_, v)| **v).max().unwrap_or(0).max(1) as f64 * 1.2;
    let mut c = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(150)
        .build_cartesian_2d(0f64..x_max, 0f64..n as f64)
        .map_err(err)?;
    let names: Vec<String> = kinds.iter().map(|(k, _)| (*k).clone()).collect();
    c.configure_mesh()
        .disable_y_mesh()
        .y_labels(n * 2 + 1)
        .y_label_formatter(&|y| {
            let i = y.floor() as usize;
            if (y - i as f64 - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("count")
        .draw()
        .map_err(err)?;
    c.draw_series(kinds.iter().enumerate().map(|(i, (_, v))| {
        let y = i as f64;
        Rectangle::new([(0.0, y + 0.2), (**v as f64, y + 0.8)], COLORS[3].filled())
    }))
    .map_err(err)?;
    c.draw_series(kinds.iter().enumerate().map(|(i, (_, v))| {
        Text::new(v.to_string(), (**v as f64 + x_max * 0.01, i as f64 + 0.65), ("sans-serif", 12))
    }))
    .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Sample;

    #[test]
    fn every_chart_is_an_inline_svg_with_shapes() {
        let mut r = RunResult { label: "t<1>".into(), clients: 10, ..RunResult::default() };
        for i in 0..10u64 {
            r.timeline.push(Sample {
                t_s: i as f64,
                established: i,
                gateway_rss_bytes: 1 << 20,
                gateway_cpu_pct: 10.0,
                ..Sample::default()
            });
        }
        r.latency_curves
            .insert("push".into(), vec![(0.0, 100), (50.0, 200), (99.0, 900), (100.0, 1000)]);
        r.errors.insert("connect_failed".into(), 3);
        r.errors.insert("kicked".into(), 0);
        let html = render(&r);
        assert!(html.contains("t&lt;1&gt;"));
        // Self-contained: nothing to fetch (the only URLs are SVG namespace names).
        for fetch in ["<script", "<link", " src=", "href=\"http", "url("] {
            assert!(!html.contains(fetch), "{fetch}");
        }
        for id in CHARTS {
            let at = html.find(&format!("id=\"{id}\"")).unwrap();
            let fig = &html[at..at + html[at..].find("</figure>").unwrap()];
            assert!(fig.contains("<svg"), "{id}");
            assert!(fig.matches("<polyline").count() + fig.matches("<rect").count() > 2, "{id}");
        }
    }
}
