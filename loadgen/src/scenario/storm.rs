//! `storm`: the `pairs` load with a spike. After the warmup the rate runs at `--rate`, then
//! at `--spike-factor` times that for `--spike`, from `--spike-at` into the measured time,
//! then at `--rate` again to the end. It is `pairs` with another [`RateSchedule`] (so the
//! load is as open loop, and the latencies as free of coordinated omission), keeping the ack
//! and delivery latencies per second as well, so that the report can show how they recover
//! once the spike is over.

use anyhow::ensure;

use super::pairs::{self, Pairs};
use super::rate::RateSchedule;
use crate::cli::StormArgs;

/// The latencies a storm keeps per second.
const LATENCY_SERIES: &[&str] = &["ack", "delivery"];

/// The ack latency has recovered once its per-second p99 is back under this multiple of its
/// median before the spike.
pub const RECOVERED_WITHIN: f64 = 2.0;

/// The scenario of `args`.
pub fn build(args: &StormArgs) -> anyhow::Result<Pairs> {
    pairs::check_args(&args.pairs, "storm")?;
    let spike = Spike::of(args)?;
    let rate = RateSchedule::with_spike(
        args.pairs.rate,
        nanos(spike.from_second),
        nanos(spike.until_second - spike.from_second),
        args.spike_factor,
    );
    Pairs::with_rate("storm", &args.pairs, rate, LATENCY_SERIES)
}

fn nanos(seconds: f64) -> u64 {
    (seconds * 1e9).round() as u64
}

/// When the spike of a storm falls, in seconds from the start of the load (warmup included),
/// the clock of the per-second series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spike {
    pub from_second: f64,
    pub until_second: f64,
    /// The measured time, on the same clock.
    pub measure_from_second: f64,
    pub measure_until_second: f64,
    /// Messages per second over all senders outside the spike and in it.
    pub base_rate: f64,
    pub rate: f64,
}

/// How the ack latency came back after the spike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recovery {
    /// The median of the per-second ack p99 before the spike, in milliseconds; `None` when
    /// no second before the spike has any.
    pub baseline_ms: Option<f64>,
    /// Seconds from the end of the spike to the start of the first second after it whose ack
    /// p99 is within [`RECOVERED_WITHIN`] of the baseline; `None` when none is before the end
    /// of the load.
    pub seconds: Option<f64>,
}

impl Spike {
    /// The spike of `args`, refusing one that does not fit in the measured time.
    pub fn of(args: &StormArgs) -> anyhow::Result<Spike> {
        let pairs = &args.pairs;
        ensure!(
            args.spike_factor.is_finite() && args.spike_factor >= 1.0,
            "--spike-factor is a number of at least 1"
        );
        ensure!(!args.spike.is_zero(), "--spike must last longer than 0s");
        ensure!(
            args.spike_at + args.spike <= pairs.duration,
            "the spike (--spike-at {:?} + --spike {:?}) must end within --duration {:?}",
            args.spike_at,
            args.spike,
            pairs.duration
        );
        let measure_from_second = pairs.warmup.as_secs_f64();
        let from_second = (pairs.warmup + args.spike_at).as_secs_f64();
        Ok(Spike {
            from_second,
            until_second: (pairs.warmup + args.spike_at + args.spike).as_secs_f64(),
            measure_from_second,
            measure_until_second: (pairs.warmup + pairs.duration).as_secs_f64(),
            base_rate: pairs.rate,
            rate: pairs.rate * args.spike_factor,
        })
    }

    /// How the ack latency recovered, from its p99 per second of the load (`None` for a second
    /// without a sample), indexed as the per-second series.
    ///
    /// The baseline is the median over the whole seconds of the measured time before the
    /// spike (over the whole seconds before it, warmup included, when the measured time has
    /// none). Seconds are those of the intended sends, so recovery is counted to the second:
    /// 0 when the first whole second after the spike is already back.
    pub fn recovery(&self, ack_p99_ms: &[Option<f64>]) -> Recovery {
        let before = |measured_only: bool| {
            let mut values: Vec<f64> = ack_p99_ms
                .iter()
                .enumerate()
                .filter(|&(second, _)| {
                    let second = second as f64;
                    second + 1.0 <= self.from_second
                        && (!measured_only || second >= self.measure_from_second)
                })
                .filter_map(|(_, p99)| *p99)
                .collect();
            values.sort_by(f64::total_cmp);
            median(&values)
        };
        let Some(baseline) = before(true).or_else(|| before(false)) else {
            return Recovery {
                baseline_ms: None,
                seconds: None,
            };
        };
        let seconds = ack_p99_ms
            .iter()
            .enumerate()
            .filter(|&(second, _)| {
                let second = second as f64;
                second >= self.until_second && second < self.measure_until_second
            })
            .find(|&(_, p99)| p99.is_some_and(|p99| p99 <= RECOVERED_WITHIN * baseline))
            .map(|(second, _)| second as f64 - self.until_second);
        Recovery {
            baseline_ms: Some(baseline),
            seconds,
        }
    }
}

/// The median of sorted `values`.
fn median(values: &[f64]) -> Option<f64> {
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::scenario::Scenario as _;
    use crate::scenario::pairs::test_args;

    fn args(warmup_ms: u64, duration_s: u64, spike_at_ms: u64, spike_ms: u64) -> StormArgs {
        let mut pairs = test_args(10, 100.0);
        pairs.warmup = Duration::from_millis(warmup_ms);
        pairs.duration = Duration::from_secs(duration_s);
        StormArgs {
            pairs,
            spike_at: Duration::from_millis(spike_at_ms),
            spike: Duration::from_millis(spike_ms),
            spike_factor: 10.0,
        }
    }

    #[test]
    fn the_spike_falls_in_the_measured_time() {
        let spike = Spike::of(&args(1000, 10, 2000, 3000)).unwrap();
        assert_eq!(spike.from_second, 3.0);
        assert_eq!(spike.until_second, 6.0);
        assert_eq!(spike.measure_from_second, 1.0);
        assert_eq!(spike.measure_until_second, 11.0);
        assert_eq!(spike.rate, 1000.0);
        assert!(Spike::of(&args(1000, 4, 2000, 3000)).is_err());
        assert!(Spike::of(&args(1000, 5, 2000, 3000)).is_ok());
        assert!(Spike::of(&args(1000, 5, 2000, 0)).is_err());
        let mut slow = args(1000, 10, 2000, 3000);
        slow.spike_factor = 0.5;
        assert!(Spike::of(&slow).is_err());
        slow.spike_factor = f64::INFINITY;
        assert!(Spike::of(&slow).is_err());
    }

    #[test]
    fn a_storm_is_pairs_with_a_spike_and_per_second_latencies() {
        let storm = build(&args(1000, 10, 2000, 3000)).unwrap();
        assert_eq!(storm.name(), "storm");
        assert_eq!(storm.latency_series(), &["ack", "delivery"]);
        let timeline = storm.timeline();
        assert_eq!(timeline.warmup, Duration::from_secs(1));
        assert_eq!(timeline.run, Duration::from_secs(10));
    }

    #[test]
    fn recovery_counts_from_the_end_of_the_spike() {
        // Warmup second 0, spike over seconds 3 to 6.
        let spike = Spike::of(&args(1000, 10, 2000, 3000)).unwrap();
        let p99 = |values: &[f64]| values.iter().map(|&v| Some(v)).collect::<Vec<_>>();
        // Baseline: the median of seconds 1 and 2 (the warmup's 9.0 is left out) is 1.5.
        let series = p99(&[9.0, 1.0, 2.0, 50.0, 80.0, 90.0, 40.0, 8.0, 2.9, 1.0, 1.0]);
        let recovery = spike.recovery(&series);
        assert_eq!(recovery.baseline_ms, Some(1.5));
        // Second 8 is the first within 3.0 ms: two seconds after the spike ended at 6.
        assert_eq!(recovery.seconds, Some(2.0));

        let at_once = p99(&[1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 1.2, 1.0]);
        assert_eq!(spike.recovery(&at_once).seconds, Some(0.0));

        let never = p99(&[1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 4.0, 3.0, 3.0, 3.0, 3.0, 1.0]);
        // Second 11 is past the load (it ends at 11 s): it does not count.
        assert_eq!(spike.recovery(&never).seconds, None);

        let mut gaps = p99(&[1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0, 1.0]);
        gaps[6] = None;
        assert_eq!(spike.recovery(&gaps).seconds, Some(1.0));

        assert_eq!(
            spike.recovery(&[]),
            Recovery {
                baseline_ms: None,
                seconds: None
            }
        );
    }

    #[test]
    fn without_a_measured_second_before_the_spike_the_warmup_is_the_baseline() {
        // The spike starts 500 ms into the measured time, which starts at 1.5 s.
        let spike = Spike::of(&args(1500, 5, 500, 1000)).unwrap();
        let series = [
            Some(2.0),
            Some(4.0),
            Some(30.0),
            Some(30.0),
            Some(5.0),
            Some(1.0),
        ];
        let recovery = spike.recovery(&series);
        // Seconds 0 and 1 end before the spike at 2 s: their median is 3.0.
        assert_eq!(recovery.baseline_ms, Some(3.0));
        // The spike ends at 3 s; second 4 is the first under 6.0 ms.
        assert_eq!(recovery.seconds, Some(1.0));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[1.0, 2.0, 10.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0, 4.0, 10.0]), Some(3.0));
    }
}
