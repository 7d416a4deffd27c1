//! Shared helpers for the micro-benchmarks in `benches/`; the benchmarks themselves measure the `wire` codecs.

use std::time::Duration;

use criterion::Criterion;

/// One measurement setting for every codec benchmark: short enough to run them all in a few
/// minutes on a shared 2-core machine, with enough samples for criterion's change detection.
pub fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
}
