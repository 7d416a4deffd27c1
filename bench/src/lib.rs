//! Shared helpers for the micro-benchmarks in `benches/`; the benchmarks themselves measure the `wire` codecs.
