//! The send rate of a run as a function of time, and the intended send instants it gives
//! each sender: `pairs` and `churn` send at one rate throughout, `storm` multiplies it for a
//! while.
//!
//! The rate is the total over all senders, piecewise constant from the start of the load. The
//! n-th message of the run (from 0) is due where the integral of the rate reaches n, and
//! sender k of S sends the messages k, k + S, k + 2S, ...: whatever the rate does, the
//! senders stay interleaved evenly, and a constant rate R gives sender k its sends at
//! (k + seq * S) / R seconds, one every S / R seconds, offset by k / R.

use std::sync::Arc;

use super::Clock;

/// One piece of a [`RateSchedule`].
#[derive(Debug, Clone, Copy, PartialEq)]
struct Step {
    /// Nanoseconds since the start of the load at which this rate begins.
    from: f64,
    /// Messages per second over all senders.
    rate: f64,
    /// Messages over all senders due before `from`.
    before: f64,
}

/// Total messages per second over all senders, as a function of the time since the start.
#[derive(Debug, Clone, PartialEq)]
pub struct RateSchedule {
    /// Sorted by `from`, the first from 0; every rate is positive and finite.
    steps: Vec<Step>,
}

impl RateSchedule {
    /// `rate` messages per second throughout.
    pub fn constant(rate: f64) -> RateSchedule {
        RateSchedule::from_steps(&[(0, rate)])
    }

    /// `rate`, but `factor` times it for `length_nanos` from `from_nanos` on.
    pub fn with_spike(rate: f64, from_nanos: u64, length_nanos: u64, factor: f64) -> RateSchedule {
        RateSchedule::from_steps(&[
            (0, rate),
            (from_nanos, rate * factor),
            (from_nanos.saturating_add(length_nanos), rate),
        ])
    }

    /// From `(from_nanos, rate)` pairs in order of time, the first from 0. A step that starts
    /// where the next does (a spike of no length) is left out.
    fn from_steps(steps: &[(u64, f64)]) -> RateSchedule {
        debug_assert!(steps.first().is_some_and(|&(from, _)| from == 0));
        debug_assert!(
            steps
                .iter()
                .all(|&(_, rate)| rate.is_finite() && rate > 0.0)
        );
        let mut built: Vec<Step> = Vec::with_capacity(steps.len());
        for &(from, rate) in steps {
            let from = from as f64;
            let before = built.last().map_or(0.0, |last| {
                last.before + last.rate * (from - last.from).max(0.0) / 1e9
            });
            if built.last().is_some_and(|last| last.from >= from) {
                built.pop();
            }
            built.push(Step { from, rate, before });
        }
        RateSchedule { steps: built }
    }

    /// Nanoseconds after the start at which message `n` of the run (from 0, over all
    /// senders) is due.
    pub fn due(&self, n: f64) -> f64 {
        let step = self
            .steps
            .iter()
            .rev()
            .find(|step| step.before <= n)
            .unwrap_or(&self.steps[0]);
        step.from + (n - step.before) * 1e9 / step.rate
    }
}

/// The intended send instants of one sender.
#[derive(Debug, Clone)]
pub struct SendTimes {
    pub clock: Clock,
    rate: Arc<RateSchedule>,
    /// This sender's place among the senders.
    sender: u64,
    senders: u64,
}

impl SendTimes {
    pub fn new(clock: Clock, rate: Arc<RateSchedule>, sender: usize, senders: usize) -> SendTimes {
        SendTimes {
            clock,
            rate,
            sender: sender as u64,
            senders: senders.max(1) as u64,
        }
    }

    /// The intended instant of send number `seq` (from 0), or `None` once past the run.
    pub fn intended(&self, seq: u64) -> Option<u64> {
        let n = seq as f64 * self.senders as f64 + self.sender as f64;
        let nanos = self.clock.start.saturating_add(self.rate.due(n) as u64);
        (nanos < self.clock.measure_until).then_some(nanos)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::scenario::Timeline;

    const SECOND: u64 = 1_000_000_000;

    fn clock(warmup: u64, run: u64) -> Clock {
        Clock::new(
            1_000,
            Timeline {
                warmup: Duration::from_secs(warmup),
                run: Duration::from_secs(run),
                drain: Duration::ZERO,
            },
        )
    }

    /// Every intended instant of `senders` senders, in order.
    fn all_sends(clock: Clock, rate: &Arc<RateSchedule>, senders: usize) -> Vec<u64> {
        let mut sends: Vec<u64> = (0..senders)
            .flat_map(|sender| {
                let times = SendTimes::new(clock, Arc::clone(rate), sender, senders);
                (0..).map_while(move |seq| times.intended(seq))
            })
            .collect();
        sends.sort_unstable();
        sends
    }

    #[test]
    fn a_constant_rate_is_open_loop_and_ends_with_the_run() {
        let clock = clock(1, 1);
        // Four senders sharing 8 messages per second: one every 500 ms each, sender 1 a
        // quarter of that (125 ms) after sender 0.
        let times = SendTimes::new(clock, Arc::new(RateSchedule::constant(8.0)), 1, 4);
        assert_eq!(times.intended(0), Some(1_000 + 125_000_000));
        assert_eq!(times.intended(1), Some(1_000 + 625_000_000));
        assert_eq!(times.intended(3), Some(1_000 + 1_625_000_000));
        assert_eq!(times.intended(4), None);
    }

    #[test]
    fn senders_stay_evenly_interleaved() {
        let rate = Arc::new(RateSchedule::constant(2000.0));
        let sends = all_sends(clock(1, 2), &rate, 50);
        // 2,000 per second for 3 s, one every 500 µs over all senders.
        assert_eq!(sends.len(), 6000);
        for pair in sends.windows(2) {
            assert_eq!(pair[1] - pair[0], 500_000);
        }
    }

    #[test]
    fn a_spike_multiplies_the_rate_for_its_length() {
        let rate = RateSchedule::with_spike(100.0, 2 * SECOND, SECOND, 10.0);
        // 200 before the spike, 1,000 in it.
        assert_eq!(rate.due(200.0), 2e9);
        assert_eq!(rate.due(700.0), 2.5e9);
        assert_eq!(rate.due(1200.0), 3e9);
        assert_eq!(rate.due(1300.0), 4e9);

        let rate = Arc::new(rate);
        let sends = all_sends(clock(1, 4), &rate, 20);
        let per_second = |second: u64| {
            sends
                .iter()
                .filter(|&&nanos| (nanos - 1_000) / SECOND == second)
                .count()
        };
        assert_eq!(
            (0..5).map(per_second).collect::<Vec<_>>(),
            vec![100, 100, 1000, 100, 100]
        );
        assert_eq!(sends.len(), 1400);
    }

    #[test]
    fn a_spike_of_no_length_is_no_spike() {
        let rate = RateSchedule::with_spike(100.0, SECOND, 0, 10.0);
        assert_eq!(rate.due(100.0), 1e9);
        assert_eq!(rate.due(150.0), 1.5e9);
    }
}
