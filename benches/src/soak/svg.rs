//! `soak.svg`: three panels over the soak's time, one above the other:
//! each proxy's RSS (its axis starting near the lowest value, so that
//! growth shows), each proxy's CPU share, and the load's p99 (samples
//! with errors marked in red). Endpoint changes are grey dashed lines and
//! certificate renewals green dotted ones, across all three panels.
//! Written by hand: a few lines and polylines need no plotting library.

use super::{Sample, SoakReport};
use crate::report::{nice_step, trim};
use std::fmt::Write as _;

const WIDTH: f64 = 960.0;
const PANEL: f64 = 230.0;
const TOP: f64 = 56.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = WIDTH - 20.0;
const COLORS: [&str; 6] = [
    "#4c78a8", "#f58518", "#54a24b", "#b279a2", "#72b7b2", "#9d755d",
];

/// One line of a panel.
struct Line {
    name: String,
    points: Vec<(f64, f64)>,
}

/// The chart of `r`.
pub(crate) fn chart(r: &SoakReport) -> String {
    let height = TOP + 3.0 * PANEL + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Soak: {} at {} requests/s for {:.0} s ({} errors of {} requests)</text>"#,
        WIDTH / 2.0,
        r.scenario,
        r.rate,
        r.duration_s,
        r.errors,
        r.requests
    );
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" x2="{}" y1="38" y2="38" stroke="#999" stroke-dasharray="5,4"/><text x="{}" y="42">endpoints changed</text><line x1="{}" x2="{}" y1="38" y2="38" stroke="#2ca02c" stroke-dasharray="2,3"/><text x="{}" y="42">certificates renewed</text><circle cx="{}" cy="38" r="4" fill="#d62728"/><text x="{}" y="42">sample with errors</text>"##,
        LEFT + 24.0,
        LEFT + 30.0,
        LEFT + 160.0,
        LEFT + 184.0,
        LEFT + 190.0,
        LEFT + 340.0,
        LEFT + 348.0,
    );
    let names: Vec<String> = r
        .samples
        .first()
        .map(|x| x.proxies.iter().map(|p| p.name.clone()).collect())
        .unwrap_or_default();
    let per_proxy = |f: &dyn Fn(&Sample, usize) -> Option<f64>| -> Vec<Line> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| Line {
                name: name.clone(),
                points: r
                    .samples
                    .iter()
                    .filter_map(|x| Some((x.t_s, f(x, i)?)))
                    .collect(),
            })
            .collect()
    };
    let tmax = r
        .samples
        .last()
        .map_or(r.duration_s, |x| x.t_s)
        .max(r.duration_s)
        .max(1.0);
    let rss = per_proxy(&|x, i| Some(x.proxies.get(i)?.rss_kib as f64 / 1024.0));
    let cpu = per_proxy(&|x, i| Some(x.proxies.get(i)?.cpu_percent));
    let p99 = vec![Line {
        name: "p99".into(),
        points: r.samples.iter().map(|x| (x.t_s, x.p99_ms)).collect(),
    }];
    panel(&mut s, r, 0, "RSS (MiB)", &rss, Axis::of(&rss, false), tmax);
    let cpu_axis = Axis::of(&cpu, true);
    panel(
        &mut s,
        r,
        1,
        "CPU (% of a core, per sample)",
        &cpu,
        cpu_axis,
        tmax,
    );
    let p99_axis = Axis::of(&p99, true);
    let y0 = panel(&mut s, r, 2, "p99 latency (ms)", &p99, p99_axis, tmax);
    // Samples with errors, on the p99 line.
    for x in r.samples.iter().filter(|x| x.error_count() > 0) {
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#d62728"><title>{:.0} s: {} errors</title></circle>"##,
            xpos(x.t_s, tmax),
            p99_axis.ypos(x.p99_ms, y0),
            x.t_s,
            x.error_count()
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since the soak began</text>"#,
        (LEFT + RIGHT) / 2.0,
        height - 6.0
    );
    s.push_str("</svg>\n");
    s
}

/// The top of panel `index`'s plot area, its height being the rest of
/// [`PANEL`] less room for the title and the time axis.
fn plot_top(index: usize) -> f64 {
    TOP + index as f64 * PANEL + 24.0
}

const PLOT_H: f64 = PANEL - 60.0;

fn xpos(t: f64, tmax: f64) -> f64 {
    LEFT + t / tmax * (RIGHT - LEFT)
}

/// A value axis: from `lo` to `hi` in steps of `step`.
#[derive(Clone, Copy, Debug)]
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Axis {
    /// Round figures around `lines`' values, from zero when `from_zero`,
    /// else from a little below the lowest.
    fn of(lines: &[Line], from_zero: bool) -> Self {
        let values = || lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
        let max = values().fold(0.0_f64, f64::max);
        let min = if from_zero {
            0.0
        } else {
            values().fold(f64::MAX, f64::min).min(max)
        };
        let step = nice_step(((max - min) / 4.0).max(max * 0.01));
        let lo = ((min / step).floor() - 1.0).max(0.0) * step;
        let hi = ((max / step).ceil() * step).max(lo + step);
        Self { lo, hi, step }
    }

    /// Where `v` is drawn, in a plot area whose top is `y0`.
    fn ypos(&self, v: f64, y0: f64) -> f64 {
        y0 + PLOT_H - (v - self.lo) / (self.hi - self.lo) * PLOT_H
    }
}

/// Draws panel `index`: title, grid, time axis, the soak's events and
/// `lines`. Returns the top of its plot area.
fn panel(
    s: &mut String,
    r: &SoakReport,
    index: usize,
    title: &str,
    lines: &[Line],
    axis: Axis,
    tmax: f64,
) -> f64 {
    let y0 = plot_top(index);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{}" font-size="13">{title}</text>"#,
        y0 - 8.0
    );
    for (i, l) in lines.iter().enumerate() {
        let x = RIGHT - 120.0 * (lines.len() - i) as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="3" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            y0 - 14.0,
            COLORS[i % COLORS.len()],
            x + 16.0,
            y0 - 9.0,
            l.name
        );
    }
    let mut v = axis.lo;
    while v <= axis.hi + axis.step / 2.0 {
        let y = axis.ypos(v, y0);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{RIGHT}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 6.0,
            y + 4.0,
            trim(v)
        );
        v += axis.step;
    }
    let tstep = nice_step(tmax / 8.0);
    let mut t = 0.0;
    while t <= tmax + tstep / 100.0 {
        let x = xpos(t, tmax);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            y0 + PLOT_H,
            y0 + PLOT_H + 4.0,
            y0 + PLOT_H + 16.0,
            trim(t)
        );
        t += tstep;
    }
    for e in &r.events {
        let (stroke, dash) = match e.kind {
            "churn" => ("#999", "5,4"),
            _ => ("#2ca02c", "2,3"),
        };
        let x = xpos(e.t_s, tmax);
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" x2="{x:.1}" y1="{y0:.1}" y2="{:.1}" stroke="{stroke}" stroke-dasharray="{dash}"><title>{:.1} s: {}</title></line>"#,
            y0 + PLOT_H,
            e.t_s,
            escape(&e.detail)
        );
    }
    for (i, l) in lines.iter().enumerate() {
        let points: Vec<String> = l
            .points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", xpos(*t, tmax), axis.ypos(*v, y0)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"><title>{}</title></polyline>"#,
            COLORS[i % COLORS.len()],
            points.join(" "),
            escape(&l.name)
        );
    }
    y0
}

/// `text` safe inside an SVG element.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(values: &[f64]) -> Vec<Line> {
        vec![Line {
            name: "x".into(),
            points: values
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64, *v))
                .collect(),
        }]
    }

    #[test]
    fn the_rss_axis_starts_near_the_lowest_value_so_that_growth_shows() {
        let rss = line(&[16.86, 17.1, 17.45]);
        let a = Axis::of(&rss, false);
        assert!(a.lo > 10.0 && a.lo <= 16.86, "{a:?}");
        assert!(a.hi >= 17.45 && a.hi < 20.0, "{a:?}");
        // The growth spans a good part of the plot's height.
        let (y0, top) = (0.0, 100.0);
        assert!(
            a.ypos(16.86, y0) - a.ypos(17.45, y0) > PLOT_H / 10.0,
            "{a:?}"
        );
        let from_zero = Axis::of(&line(&[0.7, 1.35]), true);
        assert_eq!(from_zero.lo, 0.0);
        assert!(from_zero.hi >= 1.35, "{from_zero:?}");
        assert!(a.ypos(a.hi, top) <= a.ypos(a.lo, top));
        // Flat or empty series still make an axis.
        let flat = Axis::of(&line(&[5.0, 5.0]), false);
        assert!(flat.hi > flat.lo && flat.step > 0.0, "{flat:?}");
        let empty = Axis::of(&[], true);
        assert!(empty.hi > empty.lo, "{empty:?}");
    }
}
