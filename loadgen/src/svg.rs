//! The SVG plots, written by hand: one line-chart writer ([`render`]) for every plot the
//! project draws, so that they share their look and their tests. Two plots use it: a run's
//! latency percentiles (`--svg`: percentile on a log scale from 50 to 99.999 across, latency in
//! milliseconds up, one line per metric), and the side-by-side comparison's ladder
//! (`switchboard-loadgen plot`, see `plot.rs`: throughput and ack p99 per offered rate, one
//! line per peer).

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const WIDTH: f64 = 860.0;
/// Height of one panel; a plot of several panels stacks them.
const PANEL_HEIGHT: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 40.0;
/// Above the first panel: the title.
const TITLE_SPACE: f64 = 40.0;
/// Within a panel, above and below its frame.
const PANEL_TOP: f64 = 10.0;
const PANEL_BOTTOM: f64 = 50.0;

/// Points per percentile line.
const SAMPLES: usize = 240;

/// The percentile plot's x axis spans 1/(1-p) from 2 (p50) to 100,000 (p99.999), on a log
/// scale.
const X_DECADES_FROM: f64 = std::f64::consts::LOG10_2;
const X_DECADES_UNTIL: f64 = 5.0;

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// One line: its name in the legend and its points, `None` for a gap (a value not measured:
/// the line breaks there rather than pretending to know it).
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, Option<f64>)>,
}

/// The y axis: linear from 0, or log (for latencies that span decades, as at overload).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    Log,
}

/// One chart: a frame with its axes, lines and legend. The i-th series of every panel of a
/// plot has the same colour, so that a line keeps its colour from panel to panel.
pub struct Panel {
    pub x_label: String,
    pub y_label: String,
    pub y_scale: Scale,
    /// The x range, and the ticks on it (position, label): the caller knows what its x means.
    pub x_range: (f64, f64),
    pub x_ticks: Vec<(f64, String)>,
    /// A dot at every point: for a few points far apart (ladder rungs), where a line alone
    /// would hide where the measurements are.
    pub markers: bool,
    pub series: Vec<Series>,
}

/// The plot of `panels`, stacked under `title`.
pub fn render(title: &str, panels: &[Panel]) -> String {
    let height = TITLE_SPACE + PANEL_HEIGHT * panels.len() as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    for (index, panel) in panels.iter().enumerate() {
        render_panel(&mut svg, panel, TITLE_SPACE + PANEL_HEIGHT * index as f64);
    }
    svg.push_str("</svg>\n");
    svg
}

/// The frame of a panel whose top is at `top`: (left, top, width, height).
fn frame(top: f64) -> (f64, f64, f64, f64) {
    (
        LEFT,
        top + PANEL_TOP,
        WIDTH - LEFT - RIGHT,
        PANEL_HEIGHT - PANEL_TOP - PANEL_BOTTOM,
    )
}

fn render_panel(svg: &mut String, panel: &Panel, top: f64) {
    let (left, frame_top, plot_width, plot_height) = frame(top);
    let bottom = frame_top + plot_height;
    let values = || {
        panel
            .series
            .iter()
            .flat_map(|series| series.points.iter().filter_map(|&(_, y)| y))
            .filter(|y| y.is_finite() && (panel.y_scale == Scale::Linear || *y > 0.0))
    };
    let (x_from, x_until) = panel.x_range;
    let x_span = if x_until > x_from {
        x_until - x_from
    } else {
        1.0
    };
    let x_of = |x: f64| left + (x - x_from) / x_span * plot_width;

    // The y axis: the range in axis units (the value, or its log10) and the ticks.
    let to_axis: fn(f64) -> f64 = match panel.y_scale {
        Scale::Linear => |y| y,
        Scale::Log => f64::log10,
    };
    let mut y_ticks = Vec::new();
    let (axis_from, axis_until) = match panel.y_scale {
        Scale::Linear => {
            let y_max_data = values().fold(0.0f64, f64::max);
            let y_step = nice_step(y_max_data.max(0.001), 5.0);
            let y_max = (y_max_data / y_step).ceil().max(1.0) * y_step;
            let mut y = 0.0;
            while y <= y_max + y_step / 2.0 {
                y_ticks.push((y, format_value(y, y_step)));
                y += y_step;
            }
            (0.0, y_max)
        }
        Scale::Log => {
            let low = values().fold(f64::INFINITY, f64::min);
            let high = values().fold(0.0f64, f64::max);
            let (low, high) = if low.is_finite() {
                (low, high)
            } else {
                (1.0, 10.0)
            };
            // Whole decades, at least one.
            let from = low.log10().floor();
            let until = high.log10().ceil().max(from + 1.0);
            let mut decade = from;
            while decade <= until {
                for mantissa in [1.0, 2.0, 5.0] {
                    let y = mantissa * 10f64.powf(decade);
                    if y.log10() <= until + 1e-9 {
                        y_ticks.push((y, format_value(y, 10f64.powf(decade))));
                    }
                }
                decade += 1.0;
            }
            (from, until)
        }
    };
    let y_of = |y: f64| bottom - (to_axis(y) - axis_from) / (axis_until - axis_from) * plot_height;

    // Grid and ticks.
    for (y, label) in &y_ticks {
        let y = y_of(*y);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            left + plot_width,
            left - 6.0,
            y + 4.0,
        );
    }
    for (x, label) in &panel.x_ticks {
        let x = x_of(*x);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{frame_top}" x2="{x:.1}" y2="{bottom:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            bottom + 18.0,
            escape(label)
        );
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{left}" y="{frame_top}" width="{plot_width}" height="{plot_height}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + plot_width / 2.0,
        bottom + 38.0,
        escape(&panel.x_label)
    );
    let middle = frame_top + plot_height / 2.0;
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{middle:.1}" text-anchor="middle" transform="rotate(-90 18 {middle:.1})">{}</text>"#,
        escape(&panel.y_label)
    );

    // Lines (one polyline per unbroken run of points), markers and legend.
    for (index, series) in panel.series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let drawable = |y: Option<f64>| {
            y.filter(|y| y.is_finite() && (panel.y_scale == Scale::Linear || *y > 0.0))
        };
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for &(x, y) in &series.points {
            match drawable(y) {
                Some(y) => runs
                    .last_mut()
                    .expect("never empty")
                    .push((x_of(x), y_of(y))),
                None if runs.last().is_some_and(|run| !run.is_empty()) => runs.push(Vec::new()),
                None => {}
            }
        }
        for run in runs.iter().filter(|run| run.len() > 1) {
            let path: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
        }
        // A lone point has no line: it gets its dot even without markers.
        for run in &runs {
            if panel.markers || run.len() == 1 {
                for (x, y) in run {
                    let _ = writeln!(
                        svg,
                        r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{color}"/>"#
                    );
                }
            }
        }
        let legend_y = frame_top + 16.0 + index as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            left + 12.0,
            left + 36.0,
            left + 42.0,
            legend_y + 4.0,
            escape(&series.name)
        );
    }
}

/// The latency-percentile plot of `lines` (name, latencies in microseconds) under `title`.
pub fn percentiles(title: &str, lines: &[(&str, &Histogram<u64>)]) -> String {
    let series = lines
        .iter()
        .map(|(name, histogram)| Series {
            name: (*name).to_owned(),
            points: (0..=SAMPLES)
                .map(|step| {
                    let decades = X_DECADES_FROM
                        + (X_DECADES_UNTIL - X_DECADES_FROM) * step as f64 / SAMPLES as f64;
                    let quantile = 1.0 - 10f64.powf(-decades);
                    let ms = histogram.value_at_quantile(quantile) as f64 / 1000.0;
                    (decades, Some(ms))
                })
                .collect(),
        })
        .collect();
    let x_ticks = [
        (X_DECADES_FROM, "50%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
    ]
    .into_iter()
    .map(|(decades, label)| (decades, label.to_owned()))
    .collect();
    render(
        title,
        &[Panel {
            x_label: "percentile".to_owned(),
            y_label: "latency (ms)".to_owned(),
            y_scale: Scale::Linear,
            x_range: (X_DECADES_FROM, X_DECADES_UNTIL),
            x_ticks,
            markers: false,
            series,
        }],
    )
}

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

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `value` with as many decimals as a tick `step` needs.
fn format_value(value: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{value:.0}")
    } else {
        let decimals = (-step.log10()).ceil() as usize;
        format!("{value:.decimals$}")
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
        assert_eq!(format_value(0.4, 0.2), "0.4");
        assert_eq!(format_value(30.0, 10.0), "30");
    }

    /// Every point of every polyline and circle of `svg`, as (x, y).
    fn points(svg: &str) -> Vec<(f64, f64)> {
        let mut points = Vec::new();
        for line in svg.lines() {
            if let Some(rest) = line.strip_prefix("<polyline") {
                let list = rest.split("points=\"").nth(1).unwrap();
                for point in list.trim_end_matches("\"/>").split(' ') {
                    let (x, y) = point.split_once(',').unwrap();
                    points.push((x.parse().unwrap(), y.parse().unwrap()));
                }
            } else if line.starts_with("<circle") {
                let attribute = |name: &str| -> f64 {
                    let start = line.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
                    line[start..].split('"').next().unwrap().parse().unwrap()
                };
                points.push((attribute("cx"), attribute("cy")));
            }
        }
        points
    }

    #[test]
    fn the_plot_has_one_line_per_metric_and_stays_in_its_frame() {
        let mut ack = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        let mut delivery = ack.clone();
        for micros in 1..=10_000 {
            ack.record(micros).unwrap();
            delivery.record(micros * 2).unwrap();
        }
        let svg = percentiles("pairs <test>", &[("ack", &ack), ("delivery", &delivery)]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("pairs &lt;test&gt;"));
        assert!(svg.contains("99.999%"));
        let (left, top, width, height) = frame(TITLE_SPACE);
        for (x, y) in points(&svg) {
            assert!((left - 0.1..=left + width + 0.1).contains(&x), "{x}");
            assert!((top - 0.1..=top + height + 0.1).contains(&y), "{y}");
        }
    }

    #[test]
    fn gaps_break_lines_and_log_panels_stack_in_their_frames() {
        let series = |name: &str, points: Vec<(f64, Option<f64>)>| Series {
            name: name.to_owned(),
            points,
        };
        let panel = |y_scale, series| Panel {
            x_label: "offered".to_owned(),
            y_label: "value".to_owned(),
            y_scale,
            x_range: (0.0, 4.0),
            x_ticks: vec![(0.0, "0".to_owned()), (4.0, "4".to_owned())],
            markers: true,
            series,
        };
        let svg = render(
            "two",
            &[
                panel(
                    Scale::Linear,
                    vec![series(
                        "a",
                        vec![
                            (0.0, Some(1.0)),
                            (1.0, Some(2.0)),
                            (2.0, None),
                            (3.0, Some(3.0)),
                        ],
                    )],
                ),
                panel(
                    Scale::Log,
                    vec![series(
                        "b",
                        vec![(0.0, Some(0.5)), (1.0, Some(900.0)), (2.0, Some(0.0))],
                    )],
                ),
            ],
        );
        // "a": a line over its first two points, a lone dot after the gap; "b": one line, and
        // its 0 (no place on a log scale) left out.
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 5);
        let circles: Vec<&str> = svg.lines().filter(|l| l.starts_with("<circle")).collect();
        let (first, second) = (frame(TITLE_SPACE), frame(TITLE_SPACE + PANEL_HEIGHT));
        for (index, (x, y)) in points(&circles.join("\n")).into_iter().enumerate() {
            let (left, top, width, height) = if index < 3 { first } else { second };
            assert!((left - 0.1..=left + width + 0.1).contains(&x), "{x}");
            assert!(
                (top - 0.1..=top + height + 0.1).contains(&y),
                "{index}: {y}"
            );
        }
        assert!(svg.contains(&format!(r#"height="{}""#, TITLE_SPACE + 2.0 * PANEL_HEIGHT)));
    }
}
