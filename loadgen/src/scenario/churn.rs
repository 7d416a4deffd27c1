//! `churn`: the `pairs` load while every receiver disconnects and reconnects all the time.
//!
//! Each sender sends to its receiver on the open-loop schedule of `pairs`, over one
//! connection that stays open. Each receiver closes its connection after a random lifetime
//! (0.5 to 1.5 times `--conn-lifetime`, from a stream seeded by `--seed` and the pair, so a
//! run's lifetimes do not depend on its threads or processes), stays away for `--offline`,
//! and connects again as the same user. What was sent meanwhile waits in the server's inbox
//! and comes on the new connection: the server sends every new connection of a user the whole
//! undelivered inbox, oldest first, before anything newer, until `message_delivered`. So a
//! message may come twice (it reached a connection that closed before confirming it): that is
//! a duplicate, allowed; one acknowledged and never delivered by the end of the drain is lost.
//!
//! Once the load is over a receiver closes no more connections (a closed one is opened again
//! and stays open), so that the drain empties the inboxes.
//!
//! The counters and latencies are those of `pairs`, where `delivery` includes the messages
//! that came from the inbox after a reconnect (their latency includes the time the receiver
//! was away), plus `reconnects` and `reconnect_errors` and the latency of the reconnects.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{Notify, watch};
use tokio_tungstenite::tungstenite::Message;

use super::pairs::{
    self, ACK, PairState, RECEIPT, SEND_LAG, Sink, Stream, confirm_deliveries, count_outstanding,
    drain, fail, read_receiver, read_sender, send_on_schedule,
};
use super::rate::{RateSchedule, SendTimes};
use super::{Keep, Scenario, Timeline, Unit, UnitContext, UnitFuture};
use crate::cli::ChurnArgs;
use crate::conn::{DELIVERED_IDS_MAX, WsStream, encode_message_delivered};
use crate::metrics::Counters;
use crate::sys;

/// The longest a receiver waits to write its last confirmations and its close frame before it
/// lets the connection go anyway (what it did not confirm comes again).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

const LATENCIES: &[(&str, &str)] = &[
    ACK,
    (
        "delivery",
        "intended send to incoming_message at the receiver, from the inbox after a reconnect included",
    ),
    RECEIPT,
    SEND_LAG,
    (
        "reconnect",
        "TCP connect and WebSocket upgrade of a receiver coming back",
    ),
];

const SERIES: &[&str] = &["sent", "acknowledged", "delivered", "reconnects"];

#[derive(Debug)]
pub struct Churn {
    conns: usize,
    timeline: Timeline,
    rate: Arc<RateSchedule>,
    content_chars: usize,
    lifetime: Duration,
    offline: Duration,
    seed: u64,
}

impl Churn {
    pub fn new(args: &ChurnArgs) -> anyhow::Result<Churn> {
        pairs::check_args(&args.pairs, "churn")?;
        anyhow::ensure!(
            !args.conn_lifetime.is_zero(),
            "--conn-lifetime must be longer than 0s"
        );
        Ok(Churn {
            conns: args.pairs.common.conns,
            timeline: pairs::timeline(&args.pairs),
            rate: Arc::new(RateSchedule::constant(args.pairs.rate)),
            content_chars: args.pairs.content_chars,
            lifetime: args.conn_lifetime,
            offline: args.offline,
            seed: args.seed,
        })
    }
}

impl Scenario for Churn {
    fn name(&self) -> &'static str {
        "churn"
    }

    fn conns(&self) -> usize {
        self.conns
    }

    fn unit_conns(&self) -> usize {
        2
    }

    fn timeline(&self) -> Timeline {
        self.timeline
    }

    fn latencies(&self) -> &'static [(&'static str, &'static str)] {
        LATENCIES
    }

    fn series(&self) -> &'static [&'static str] {
        SERIES
    }

    fn drive(&self, unit: Unit, context: UnitContext) -> UnitFuture {
        let times = SendTimes::new(
            context.clock,
            Arc::clone(&self.rate),
            unit.index,
            self.conns / 2,
        );
        let lifetimes = Lifetimes::new(self.seed, unit.index, self.lifetime);
        let offline = self.offline;
        let content_chars = self.content_chars;
        Box::pin(async move {
            let mut conns = unit.conns.into_iter();
            let (Some(sender), Some(receiver)) = (conns.next(), conns.next()) else {
                return Vec::new();
            };
            let (mut sender_sink, mut sender_stream) = sender.ws.split();
            let state = RefCell::new(PairState::default());
            let clock = context.clock;
            let (finished_tx, finished) = watch::channel(false);

            let sender_side = async {
                let send = async {
                    send_on_schedule(
                        &mut sender_sink,
                        &times,
                        &receiver.user,
                        content_chars,
                        &state,
                        &context,
                    )
                    .await;
                    drain(&state, clock).await;
                };
                tokio::select! {
                    () = send => {}
                    () = read_sender(&mut sender_stream, &state, &context) => {}
                    () = sys::sleep_until_nanos(clock.drain_until) => {}
                }
                finished_tx.send_replace(true);
            };
            let receiver_side = Receiver {
                index: receiver.index,
                user: &receiver.user,
                state: &state,
                context: &context,
                lifetimes,
                offline,
            }
            .run(receiver.ws, finished);
            let ((), last_receiver) = tokio::join!(sender_side, receiver_side);

            count_outstanding(&state.borrow(), &context);
            let mut keep: Keep = vec![Box::new(sender_sink), Box::new(sender_stream)];
            if let Some((sink, stream)) = last_receiver {
                keep.push(Box::new(sink));
                keep.push(Box::new(stream));
            }
            keep
        })
    }
}

/// Connection lifetimes of one receiver in nanoseconds: uniform over 0.5 to 1.5 times the
/// mean, from a splitmix64 stream whose start depends on the seed and the unit only.
#[derive(Debug, Clone)]
struct Lifetimes {
    state: u64,
    mean_nanos: f64,
}

/// splitmix64's increment: the fractional part of the golden ratio.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output function.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Lifetimes {
    fn new(seed: u64, unit: usize, mean: Duration) -> Lifetimes {
        // Mixing the unit in before the seed's stream starts puts the units' streams at
        // unrelated places of the sequence instead of a step apart.
        Lifetimes {
            state: mix64(seed ^ mix64(unit as u64).wrapping_add(GOLDEN_GAMMA)),
            mean_nanos: mean.as_nanos() as f64,
        }
    }

    fn next_nanos(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        // The top 53 bits as a fraction in [0, 1).
        let fraction = (mix64(self.state) >> 11) as f64 / (1u64 << 53) as f64;
        (self.mean_nanos * (0.5 + fraction)) as u64
    }
}

/// How a receiver's connection ended.
enum End {
    /// The pair is done: keep the connection.
    Finished,
    /// The connection failed, or the server closed it (counted as dropped).
    Broken,
    /// Its lifetime is over: close it and come back.
    Lifetime,
}

/// The receiving end of a pair, over one connection after another.
struct Receiver<'a> {
    index: usize,
    user: &'a str,
    state: &'a RefCell<PairState>,
    context: &'a UnitContext,
    lifetimes: Lifetimes,
    offline: Duration,
}

impl Receiver<'_> {
    /// Receives on `ws` and each connection after it until the pair is `finished`; returns
    /// the connection open then, if any.
    async fn run(
        mut self,
        mut ws: WsStream,
        mut finished: watch::Receiver<bool>,
    ) -> Option<(Sink, Stream)> {
        let clock = self.context.clock;
        let to_confirm = RefCell::new(Vec::<u64>::new());
        let confirm_wanted = Notify::new();
        loop {
            let close_at = sys::now_nanos().saturating_add(self.lifetimes.next_nanos());
            // A connection due to close after the load stays open, so that the drain empties
            // the inbox.
            let churning = close_at < clock.measure_until;
            let (mut sink, mut stream) = ws.split();
            let end = tokio::select! {
                _ = finished.wait_for(|finished| *finished) => End::Finished,
                () = read_receiver(
                    &mut stream,
                    self.state,
                    self.context,
                    &to_confirm,
                    &confirm_wanted,
                ) => End::Broken,
                () = confirm_deliveries(
                    &mut sink,
                    &to_confirm,
                    &confirm_wanted,
                    self.state,
                    self.context,
                ) => End::Broken,
                () = sys::sleep_until_nanos(close_at), if churning => End::Lifetime,
            };
            match end {
                End::Finished => return Some((sink, stream)),
                End::Broken => return None,
                End::Lifetime => {}
            }
            // Confirm what came, so that the server does not send it again, then say goodbye.
            let closing = async {
                confirm_all(&mut sink, &to_confirm).await?;
                sink.close().await
            };
            match tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(error)) => {
                    fail(
                        self.state,
                        self.context,
                        format!("receiver close failed: {error}"),
                    );
                    return None;
                }
            }
            drop((sink, stream));
            // Whatever was not confirmed comes again on the next connection.
            to_confirm.borrow_mut().clear();
            ws = tokio::select! {
                _ = finished.wait_for(|finished| *finished) => return None,
                ws = self.reconnect() => ws,
            };
        }
    }

    /// Waits `--offline`, then connects again, and again after each failure.
    async fn reconnect(&self) -> WsStream {
        let context = self.context;
        loop {
            tokio::time::sleep(self.offline).await;
            let started = sys::now_nanos();
            match context.connector.open(self.index, self.user).await {
                Ok(ws) => {
                    let now = sys::now_nanos();
                    Counters::add(&context.counters.reconnects, 1);
                    let mut metrics = context.metrics.borrow_mut();
                    metrics.count_in_second("reconnects", context.clock.second_of(now));
                    if context.clock.is_measured(started) {
                        metrics.record_latency("reconnect", now.saturating_sub(started));
                    }
                    return ws;
                }
                Err(error) => {
                    Counters::add(&context.counters.reconnect_errors, 1);
                    context
                        .metrics
                        .borrow_mut()
                        .error_sample(format!("{}: reconnect: {error:#}", self.user));
                }
            }
        }
    }
}

/// Writes `message_delivered` for every id waiting in `to_confirm`.
async fn confirm_all(
    sink: &mut Sink,
    to_confirm: &RefCell<Vec<u64>>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    loop {
        let batch: Vec<u64> = {
            let mut ids = to_confirm.borrow_mut();
            let n = ids.len().min(DELIVERED_IDS_MAX);
            ids.drain(..n).collect()
        };
        if batch.is_empty() {
            return sink.flush().await;
        }
        sink.feed(Message::text(encode_message_delivered(&batch)))
            .await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::pairs::test_args;

    fn args(conns: usize, lifetime: Duration) -> ChurnArgs {
        ChurnArgs {
            pairs: test_args(conns, 100.0),
            conn_lifetime: lifetime,
            offline: Duration::from_millis(200),
            seed: 1,
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Churn::new(&args(3, Duration::from_secs(2))).is_err());
        assert!(Churn::new(&args(4, Duration::ZERO)).is_err());
        let churn = Churn::new(&args(4, Duration::from_secs(2))).unwrap();
        assert_eq!(churn.name(), "churn");
        assert_eq!(churn.unit_conns(), 2);
        assert!(churn.series().contains(&"reconnects"));
        assert!(
            churn
                .latencies()
                .iter()
                .any(|(name, _)| *name == "reconnect")
        );
    }

    #[test]
    fn lifetimes_are_reproducible_and_around_the_mean() {
        let mean = Duration::from_secs(2);
        let take = |seed, unit| {
            let mut lifetimes = Lifetimes::new(seed, unit, mean);
            (0..1000)
                .map(|_| lifetimes.next_nanos())
                .collect::<Vec<_>>()
        };
        let first = take(1, 0);
        assert_eq!(first, take(1, 0));
        assert_ne!(first, take(2, 0));
        let other_unit = take(1, 1);
        assert_ne!(first, other_unit);
        // Not the same stream a step apart either.
        assert_ne!(first[1..], other_unit[..999]);
        assert_ne!(first[..999], other_unit[1..]);
        assert!(
            first
                .iter()
                .all(|&nanos| (1_000_000_000..3_000_000_000).contains(&nanos))
        );
        let mean_nanos = first.iter().sum::<u64>() as f64 / first.len() as f64;
        assert!((mean_nanos - 2e9).abs() < 0.1e9, "{mean_nanos}");
    }
}
