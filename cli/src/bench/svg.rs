//! `udax bench --svg`: the ratios as a bar chart, written as plain SVG text.
//!
//! Per operation two bars, udax's time over tmpfs's and over the floor's (for bandwidth the
//! inverse of the GB/s ratio, so below 1 is always "udax faster"), on a log scale, drawn from
//! the 1× line up (slower) or down (faster); a black tick across a bar marks the most its
//! target allows.

use std::fmt::Write;

use super::report::Bar;

const LEFT: f64 = 64.0;
const TOP: f64 = 64.0;
const PLOT_H: f64 = 320.0;
const GROUP_W: f64 = 56.0;
const BAR_W: f64 = 20.0;
const BOTTOM: f64 = 120.0;
const COLORS: [&str; 2] = ["#4e79a7", "#a0a0a0"];
const SERIES: [&str; 2] = ["udax / tmpfs", "udax / floor"];

/// The chart of `bars`.
pub fn chart(bars: &[Bar]) -> String {
    let (lo_exp, hi_exp) = range(bars);
    let (lo, hi) = (10f64.powi(lo_exp), 10f64.powi(hi_exp));
    let width = LEFT + GROUP_W * bars.len().max(1) as f64 + 24.0;
    let height = TOP + PLOT_H + BOTTOM;
    let y = |v: f64| TOP + (hi.log10() - v.clamp(lo, hi).log10()) / (hi.log10() - lo.log10()) * PLOT_H;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="20" font-size="14">udax bench: udax's time over tmpfs's and the floor's (log scale; below 1×: udax faster)</text>"#
    );
    for (k, name) in SERIES.iter().enumerate() {
        let x = LEFT + k as f64 * 140.0;
        let _ = writeln!(s, r#"<rect x="{x}" y="32" width="12" height="12" fill="{}"/>"#, COLORS[k]);
        let _ = writeln!(s, r#"<text x="{}" y="43">{name}</text>"#, x + 16.0);
    }
    let x = LEFT + 2.0 * 140.0;
    let _ = writeln!(s, r#"<rect x="{x}" y="37" width="16" height="3" fill="black"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="43">target (at most)</text>"#, x + 20.0);
    for e in lo_exp..=hi_exp {
        let yy = y(10f64.powi(e));
        let stroke = if e == 0 { "#000000" } else { "#dddddd" };
        let label = format!("{:.*}", (-e).max(0) as usize, 10f64.powi(e));
        let _ =
            writeln!(s, r#"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{stroke}"/>"#, width - 16.0);
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{label}×</text>"#, LEFT - 6.0, yy + 4.0);
    }
    for (g, bar) in bars.iter().enumerate() {
        let x0 = LEFT + g as f64 * GROUP_W + 6.0;
        for k in 0..2 {
            let x = x0 + k as f64 * (BAR_W + 2.0);
            if let Some(r) = bar.ratios[k] {
                let (a, b) = (y(1.0), y(r));
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{BAR_W}" height="{:.1}" fill="{}"><title>{} {}: {r:.2}×</title></rect>"#,
                    a.min(b),
                    (a - b).abs().max(1.0),
                    COLORS[k],
                    escape(&bar.name),
                    SERIES[k]
                );
            }
            if let Some(t) = bar.targets[k] {
                let _ = writeln!(
                    s,
                    r#"<rect x="{:.1}" y="{:.1}" width="{}" height="3" fill="black"><title>target ≤ {t:.2}×</title></rect>"#,
                    x - 2.0,
                    y(t) - 1.5,
                    BAR_W + 4.0
                );
            }
        }
        let lx = x0 + BAR_W;
        let ly = TOP + PLOT_H + 14.0;
        let _ = writeln!(
            s,
            r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="end" transform="rotate(-40 {lx:.1} {ly:.1})">{}</text>"#,
            escape(&bar.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The decades the chart spans, as powers of ten: every ratio and target, and 0.1× to 10× at
/// least.
fn range(bars: &[Bar]) -> (i32, i32) {
    let values = bars.iter().flat_map(|b| b.ratios.iter().chain(&b.targets)).flatten().copied();
    let (mut lo, mut hi) = (1.0f64, 1.0f64);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        (lo, hi) = (lo.min(v), hi.max(v));
    }
    let lo = lo.max(1e-3).log10().floor().min(-1.0) as i32;
    let hi = hi.min(1e3).log10().ceil().max(1.0) as i32;
    (lo, hi)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_a_bar_and_a_tick_per_figure() {
        let bars = vec![
            Bar { name: "append-4k".into(), ratios: [Some(1.4), Some(4.3)], targets: [Some(0.4), Some(3.0)] },
            Bar { name: "mmap-setup-1g".into(), ratios: [Some(0.02), None], targets: [None, None] },
        ];
        let svg = chart(&bars);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<title>append-4k").count(), 2);
        assert_eq!(svg.matches("<title>target").count(), 2);
        assert_eq!(svg.matches("<title>mmap-setup-1g").count(), 1);
        assert_eq!(range(&bars), (-2, 1));
        assert!(svg.contains(">0.01×<") && svg.contains(">1×<") && svg.contains(">10×<"));
    }
}
