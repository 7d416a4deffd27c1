//! `switchboard-loadgen plot`: the side-by-side comparison's ladder as SVG, from the results
//! JSON that `bench/compare.py` writes. It lives here, not in the script, so that the project
//! has one SVG writer (`svg.rs`), tested once, rather than one per language.
//!
//! The input is compare.py's results: an object from peer name to its figures, of which this
//! reads `ladder`, the rungs in the order they ran, each with `rate` (offered msg/s),
//! `acknowledged_per_s` and `ack_p99` (ms); anything else is ignored, so older results plot
//! too. The peers keep their order in the file, which is the order of the tables beside it.

use std::fmt;
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};

use crate::svg::{self, Panel, Scale, Series};

#[derive(Debug, Deserialize)]
pub struct Rung {
    pub rate: f64,
    pub acknowledged_per_s: Option<f64>,
    pub ack_p99: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub struct Figures {
    #[serde(default)]
    pub ladder: Vec<Rung>,
}

/// The peers in the order of the file: a map deserialized into a map would lose it.
#[derive(Debug)]
pub struct Results(pub Vec<(String, Figures)>);

impl<'de> Deserialize<'de> for Results {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Results;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an object from peer name to its figures")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Results, A::Error> {
                let mut peers = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    peers.push(entry);
                }
                Ok(Results(peers))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

/// Most labelled rungs on the x axis; their labels are about 40 pixels wide.
const TICKS_MAX: usize = 12;

/// Reads compare.py's results from `input` and writes the ladder plot to `output`.
pub fn plot_file(input: &Path, output: &Path, title: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(input)
        .with_context(|| format!("cannot read {}", input.display()))?;
    let results: Results = serde_json::from_str(&text)
        .with_context(|| format!("{} is not compare.py's results", input.display()))?;
    anyhow::ensure!(
        results
            .0
            .iter()
            .any(|(_, figures)| !figures.ladder.is_empty()),
        "{} has no ladder to plot",
        input.display()
    );
    std::fs::write(output, ladder(title, &results))
        .with_context(|| format!("cannot write {}", output.display()))
}

/// Two panels over the offered rate: the throughput each peer achieved, and its ack p99 (on a
/// log scale: past a peer's limit it grows by decades).
pub fn ladder(title: &str, results: &Results) -> String {
    let rates = || {
        results
            .0
            .iter()
            .flat_map(|(_, figures)| figures.ladder.iter().map(|rung| rung.rate))
    };
    let high = rates().fold(0.0f64, f64::max);
    let x_range = (0.0, if high > 0.0 { high * 1.05 } else { 1.0 });
    let mut ticks: Vec<f64> = rates().collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    // Every rung a tick while they fit, else every other (or third, ...) one.
    let every = ticks.len().div_ceil(TICKS_MAX).max(1);
    let x_ticks: Vec<(f64, String)> = ticks
        .into_iter()
        .step_by(every)
        .map(|rate| (rate, format_rate(rate)))
        .collect();
    let series = |value: fn(&Rung) -> Option<f64>| -> Vec<Series> {
        results
            .0
            .iter()
            .map(|(name, figures)| Series {
                name: name.clone(),
                points: figures
                    .ladder
                    .iter()
                    .map(|rung| (rung.rate, value(rung)))
                    .collect(),
            })
            .collect()
    };
    let panel = |y_label: &str, y_scale, value| Panel {
        x_label: "offered msg/s".to_owned(),
        y_label: y_label.to_owned(),
        y_scale,
        x_range,
        x_ticks: x_ticks.clone(),
        markers: true,
        series: series(value),
    };
    svg::render(
        title,
        &[
            panel("acknowledged msg/s", Scale::Linear, |rung| {
                rung.acknowledged_per_s
            }),
            panel("ack p99 (ms, log)", Scale::Log, |rung| rung.ack_p99),
        ],
    )
}

/// `20000` as `20k`, `2500` as `2.5k`.
fn format_rate(rate: f64) -> String {
    if rate >= 1000.0 {
        let thousands = rate / 1000.0;
        if thousands.fract() == 0.0 {
            format!("{thousands:.0}k")
        } else {
            format!("{thousands:.1}k")
        }
    } else {
        format!("{rate:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_keep_the_order_of_the_file() {
        let results: Results = serde_json::from_str(
            r#"{"zeta": {"ladder": [{"rate": 1000, "acknowledged_per_s": 990.0, "ack_p99": 2.5}]},
                "alpha": {"name": "alpha", "ladder": [], "max": null}}"#,
        )
        .unwrap();
        let names: Vec<&str> = results.0.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha"]);
        assert_eq!(results.0[0].1.ladder[0].ack_p99, Some(2.5));
    }

    #[test]
    fn rates_read_short() {
        assert_eq!(format_rate(20000.0), "20k");
        assert_eq!(format_rate(2500.0), "2.5k");
        assert_eq!(format_rate(500.0), "500");
    }
}
