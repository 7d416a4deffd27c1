//! The latency-percentile plot (`--svg`), written by hand: percentile on a log scale from 50 to
//! 99.999 across, latency in milliseconds up, one line per metric.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 40.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// Points per line.
const SAMPLES: usize = 240;

/// The x axis spans 1/(1-p) from 2 (p50) to 100,000 (p99.999), on a log scale.
const X_DECADES_FROM: f64 = std::f64::consts::LOG10_2;
const X_DECADES_UNTIL: f64 = 5.0;

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// A round step for about `ticks` ticks up to `max`.
fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The plot of `lines` (name, latencies in microseconds) under `title`.
pub fn render(title: &str, lines: &[(&str, &Histogram<u64>)]) -> String {
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let curves: Vec<(&str, Vec<(f64, f64)>)> = lines
        .iter()
        .map(|(name, histogram)| {
            let points = (0..=SAMPLES)
                .map(|step| {
                    let decades = X_DECADES_FROM
                        + (X_DECADES_UNTIL - X_DECADES_FROM) * step as f64 / SAMPLES as f64;
                    let quantile = 1.0 - 10f64.powf(-decades);
                    let ms = histogram.value_at_quantile(quantile) as f64 / 1000.0;
                    (decades, ms)
                })
                .collect();
            (*name, points)
        })
        .collect();
    let y_max_data = curves
        .iter()
        .flat_map(|(_, points)| points.iter().map(|&(_, ms)| ms))
        .fold(0.0f64, f64::max);
    let y_step = nice_step(y_max_data.max(0.001), 5.0);
    let y_max = (y_max_data / y_step).ceil().max(1.0) * y_step;
    let x_of = |decades: f64| {
        LEFT + (decades - X_DECADES_FROM) / (X_DECADES_UNTIL - X_DECADES_FROM) * plot_width
    };
    let y_of = |ms: f64| TOP + plot_height - ms / y_max * plot_height;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );

    // Grid and ticks.
    let mut ms = 0.0;
    while ms <= y_max + y_step / 2.0 {
        let y = y_of(ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_width,
            LEFT - 6.0,
            y + 4.0,
            format_ms(ms, y_step)
        );
        ms += y_step;
    }
    for (decades, label) in [
        (X_DECADES_FROM, "50%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
    ] {
        let x = x_of(decades);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_height,
            TOP + plot_height + 18.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_width}" height="{plot_height}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_width / 2.0,
        HEIGHT - 16.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">latency (ms)</text>"#,
        TOP + plot_height / 2.0,
        TOP + plot_height / 2.0
    );

    // Lines and legend.
    for (index, (name, points)) in curves.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(decades, ms)| format!("{:.1},{:.1}", x_of(decades), y_of(ms)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let legend_y = TOP + 16.0 + index as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 12.0,
            LEFT + 36.0,
            LEFT + 42.0,
            legend_y + 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn format_ms(ms: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{ms:.0}")
    } else {
        let decimals = (-step.log10()).ceil() as usize;
        format!("{ms:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
        assert_eq!(nice_step(0.9, 5.0), 0.2);
        assert_eq!(nice_step(300.0, 5.0), 100.0);
        assert_eq!(format_ms(0.4, 0.2), "0.4");
        assert_eq!(format_ms(30.0, 10.0), "30");
    }

    #[test]
    fn the_plot_has_one_line_per_metric_and_stays_in_its_frame() {
        let mut ack = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        let mut delivery = ack.clone();
        for micros in 1..=10_000 {
            ack.record(micros).unwrap();
            delivery.record(micros * 2).unwrap();
        }
        let svg = render("pairs <test>", &[("ack", &ack), ("delivery", &delivery)]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("pairs &lt;test&gt;"));
        assert!(svg.contains("99.999%"));
        // Every point lies inside the plot area.
        for polyline in svg.lines().filter(|line| line.starts_with("<polyline")) {
            let points = polyline
                .split("points=\"")
                .nth(1)
                .unwrap()
                .trim_end_matches("\"/>");
            for point in points.split(' ') {
                let (x, y) = point.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((LEFT - 0.1..=WIDTH - RIGHT + 0.1).contains(&x), "{x}");
                assert!((TOP - 0.1..=HEIGHT - BOTTOM + 0.1).contains(&y), "{y}");
            }
        }
    }
}
