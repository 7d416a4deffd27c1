//! `history`: the `pairs` load while reader connections page through a chat that holds many
//! stored messages.
//!
//! Before the run (not measured, [`seed`]), the reader user (`--history-user`) keeps
//! history (`history_storage` 90) and it and `--history-peer` send each other
//! `--history-seed` messages; or, with `--history-seeded`, an earlier run did, and the chat's
//! range is read back. Then the run is `pairs` (the same flags, the same open-loop load and
//! latencies, the same units), and the first unit also holds `--history-readers`
//! connections of the reader user, opened before the start. Together they send `history`
//! requests for the chat on an open-loop schedule of `--history-rate` a second (reader j of
//! J sends requests j, j + J, ... of the run, as `pairs` spreads its senders; 0: no reader,
//! the pairs load alone), each for `--history-limit` messages, a share
//! (`--history-newest-share`) of them the newest page and the others the page before a
//! point drawn evenly over the seeded range ([`pick`]).
//!
//! Latency `history_page`: from the intended send of the request to its answer, measured as
//! `ack` is (no coordinated omission). Counters: `history_sent`, `history_answered`,
//! `history_errors` (an `error` answered), `history_invalid` (a page that cannot be right
//! for the seeded chat, [`pick::check_page`]), `history_unanswered` (no answer by the end of
//! the drain) and `history_messages`. The `ack` and `history_page` latencies are also kept
//! per second (`series.p99_ms`): on a small machine a run's p99 is often one stall, which
//! the seconds show. The readers run on the thread of the first pair, in
//! its runtime: their latencies include the time that thread takes to read them, as every
//! latency of the run does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use super::pairs::{self, ACK, DELIVERY, Pairs, RECEIPT, SEND_LAG, Sink, Stream, record_latency};
use super::rate::{RateSchedule, SendTimes};
use super::{
    Conn, Keep, Scenario, SetupContext, SetupFuture, Timeline, Unit, UnitContext, UnitFuture,
};
use crate::cli::{HistoryArgs, SeededRange};
use crate::conn::{ServerMessage, decode_server_message, encode_history};
use crate::http::HttpTarget;
use crate::metrics::Counters;
use crate::sys;

pub mod pick;
pub mod seed;

pub use seed::{SeedReport, prepare};

/// Most messages a page may ask for (the protocol's bound).
pub const LIMIT_MAX: u32 = 100;

/// How early a reader wakes before its next intended request (see `pairs`).
const TIMER_SLACK_NANOS: u64 = 1_000_000;

/// The latency of a page.
pub const PAGE: (&str, &str) = (
    "history_page",
    "intended send of a history request to its page",
);

const LATENCIES: &[(&str, &str)] = &[ACK, DELIVERY, RECEIPT, SEND_LAG, PAGE];

const SERIES: &[&str] = &["sent", "acknowledged", "delivered", "history_answered"];

/// The latencies kept per second as well: a p99 over the run is often one stall, which the
/// seconds show.
const LATENCY_SERIES: &[&str] = &["ack", "history_page"];

/// Whether `user` is a user id as the protocol takes one: 1 to 64 bytes of
/// `[A-Za-z0-9_.@-]`.
fn is_user_id(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && user
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"_.@-".contains(&byte))
}

/// Refuses flags the scenario cannot run with, before anything is seeded.
pub fn check_args(args: &HistoryArgs) -> anyhow::Result<()> {
    pairs::check_args(&args.pairs, "history")?;
    anyhow::ensure!(
        args.history_seeded || args.history_seed >= 1,
        "--history-seed is at least 1 (or --history-seeded)"
    );
    anyhow::ensure!(args.history_window >= 1, "--history-window is at least 1");
    anyhow::ensure!(
        args.history_content_chars <= pairs::CONTENT_CHARS_MAX,
        "--history-content-chars is at most {}",
        pairs::CONTENT_CHARS_MAX
    );
    anyhow::ensure!(
        args.history_rate.is_finite() && args.history_rate >= 0.0,
        "--history-rate is a number of requests per second, 0 or more"
    );
    anyhow::ensure!(
        (1..=LIMIT_MAX).contains(&args.history_limit),
        "--history-limit is 1 to {LIMIT_MAX}"
    );
    anyhow::ensure!(args.history_readers >= 1, "--history-readers is at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.history_newest_share),
        "--history-newest-share is a fraction from 0 to 1"
    );
    for (flag, user) in [
        ("--history-user", &args.history_user),
        ("--history-peer", &args.history_peer),
    ] {
        anyhow::ensure!(
            is_user_id(user),
            "{flag} is a user id: 1 to 64 characters of A-Z a-z 0-9 _ . @ -"
        );
    }
    anyhow::ensure!(
        args.history_user != args.history_peer,
        "--history-user and --history-peer are two users"
    );
    if !args.history_seeded {
        HttpTarget::resolve(&args.http_addr)?;
    }
    Ok(())
}

#[derive(Debug)]
pub struct History {
    pairs: Pairs,
    /// The readers' schedule; `None` at `--history-rate 0`.
    rate: Option<Arc<RateSchedule>>,
    readers: usize,
    limit: u32,
    user: String,
    peer: String,
    range: SeededRange,
    newest_share: f64,
    pick_seed: u64,
}

impl History {
    /// The scenario of `args`, once its chat is seeded (`args.seeded`).
    pub fn new(args: &HistoryArgs) -> anyhow::Result<History> {
        check_args(args)?;
        let Some(range) = args.seeded else {
            anyhow::bail!("the history scenario runs once its chat is seeded");
        };
        let pairs = Pairs::with_rate(
            "history",
            &args.pairs,
            RateSchedule::constant(args.pairs.rate),
            &[],
        )?;
        Ok(History {
            pairs,
            rate: (args.history_rate > 0.0)
                .then(|| Arc::new(RateSchedule::constant(args.history_rate))),
            readers: args.history_readers,
            limit: args.history_limit,
            user: args.history_user.clone(),
            peer: args.history_peer.clone(),
            range,
            newest_share: args.history_newest_share,
            pick_seed: args.history_pick_seed,
        })
    }

    /// Whether unit `index` holds the readers.
    fn holds_readers(&self, index: usize) -> bool {
        index == 0 && self.rate.is_some()
    }
}

impl Scenario for History {
    fn name(&self) -> &'static str {
        "history"
    }

    fn conns(&self) -> usize {
        self.pairs.conns()
    }

    fn unit_conns(&self) -> usize {
        2
    }

    fn timeline(&self) -> Timeline {
        self.pairs.timeline()
    }

    fn latencies(&self) -> &'static [(&'static str, &'static str)] {
        LATENCIES
    }

    fn series(&self) -> &'static [&'static str] {
        SERIES
    }

    fn latency_series(&self) -> &'static [&'static str] {
        LATENCY_SERIES
    }

    /// The first unit opens the reader connections (as the reader user) beside its pair. A
    /// reader that cannot connect counts in `connect_errors`; the pair runs either way.
    fn setup(&self, mut unit: Unit, context: SetupContext) -> SetupFuture {
        if !self.holds_readers(unit.index) {
            return Box::pin(async move { Ok(unit) });
        }
        let readers = self.readers;
        let user = self.user.clone();
        let first_index = self.conns();
        Box::pin(async move {
            for reader in 0..readers {
                let index = first_index + reader;
                match context.connector.open(index, &user).await {
                    Ok(ws) => unit.conns.push(Conn {
                        index,
                        user: user.clone(),
                        ws,
                    }),
                    Err(error) => {
                        Counters::add(&context.counters.connect_errors, 1);
                        context
                            .metrics
                            .borrow_mut()
                            .error_sample(format!("history reader {reader} ({user}): {error:#}"));
                    }
                }
            }
            Ok(unit)
        })
    }

    fn drive(&self, mut unit: Unit, context: UnitContext) -> UnitFuture {
        let reader_conns = unit.conns.split_off(unit.conns.len().min(2));
        let pair = self.pairs.drive(unit, context.clone());
        let Some(rate) = self.rate.clone() else {
            return pair;
        };
        let readers: Vec<_> = reader_conns
            .into_iter()
            .enumerate()
            .map(|(reader, conn)| {
                let schedule = Schedule {
                    times: SendTimes::new(context.clock, Arc::clone(&rate), reader, self.readers),
                    picker: pick::Picker::new(
                        self.range,
                        self.newest_share,
                        self.pick_seed,
                        reader,
                    ),
                    limit: self.limit,
                    peer: self.peer.clone(),
                    range: self.range,
                };
                read_pages(conn, schedule, context.clone())
            })
            .collect();
        Box::pin(async move {
            let (mut keep, reader_keeps) =
                tokio::join!(pair, futures_util::future::join_all(readers));
            keep.extend(reader_keeps.into_iter().flatten());
            keep
        })
    }
}

/// What one reader asks, and when.
struct Schedule {
    times: SendTimes,
    picker: pick::Picker,
    limit: u32,
    peer: String,
    range: SeededRange,
}

/// A request waiting for its page.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// When it was meant to leave (or left, if early).
    sent_at: u64,
    before: Option<u64>,
}

#[derive(Debug, Default)]
struct ReaderState {
    pending: HashMap<u64, Pending>,
    /// The connection failed: nothing more will come.
    broken: bool,
}

/// Counts a reader's failed connection once.
fn reader_failed(state: &RefCell<ReaderState>, context: &UnitContext, what: String) {
    let mut state = state.borrow_mut();
    if !state.broken {
        state.broken = true;
        Counters::add(&context.counters.conns_dropped, 1);
        context.metrics.borrow_mut().error_sample(what);
    }
}

/// One reader: its requests on schedule, its pages as they come, until every request is
/// answered after the last, or the drain is over.
async fn read_pages(conn: Conn, mut schedule: Schedule, context: UnitContext) -> Keep {
    let (mut sink, mut stream) = conn.ws.split();
    let state = RefCell::new(ReaderState::default());
    let clock = context.clock;
    let (limit, range) = (schedule.limit, schedule.range);
    let send = async {
        send_requests(&mut sink, &mut schedule, &state, &context).await;
        while !state.borrow().broken
            && !state.borrow().pending.is_empty()
            && sys::now_nanos() < clock.drain_until
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    let listen = read_answers(&mut stream, limit, range, &state, &context);
    tokio::select! {
        () = send => {}
        () = listen => {}
        () = sys::sleep_until_nanos(clock.drain_until) => {}
    }
    Counters::add(
        &context.counters.history_unanswered,
        state.borrow().pending.len() as u64,
    );
    vec![Box::new(sink), Box::new(stream)]
}

/// Writes the reader's requests at their intended times (every request that is due goes out
/// at once, as `pairs` sends), until the schedule ends or a write fails.
async fn send_requests(
    sink: &mut Sink,
    schedule: &mut Schedule,
    state: &RefCell<ReaderState>,
    context: &UnitContext,
) {
    let mut seq = 0u64;
    while let Some(next) = schedule.times.intended(seq) {
        sys::sleep_until_nanos(
            next.saturating_sub(TIMER_SLACK_NANOS)
                .max(schedule.times.clock.start),
        )
        .await;
        let now = sys::now_nanos();
        while let Some(intended) = schedule
            .times
            .intended(seq)
            .filter(|&intended| intended <= now + TIMER_SLACK_NANOS)
        {
            seq += 1;
            let req_id = seq;
            let before = schedule.picker.pick();
            let sent_at = intended.min(now);
            state
                .borrow_mut()
                .pending
                .insert(req_id, Pending { sent_at, before });
            Counters::add(&context.counters.history_sent, 1);
            let text = encode_history(req_id, &schedule.peer, before, schedule.limit);
            if let Err(error) = sink.feed(Message::text(text)).await {
                return reader_failed(
                    state,
                    context,
                    format!("history reader write failed: {error}"),
                );
            }
        }
        if let Err(error) = sink.flush().await {
            return reader_failed(
                state,
                context,
                format!("history reader write failed: {error}"),
            );
        }
    }
}

/// Reads a reader's connection until it ends: pages and refusals, each matched to its
/// request by `req_id`.
async fn read_answers(
    stream: &mut Stream,
    limit: u32,
    range: SeededRange,
    state: &RefCell<ReaderState>,
    context: &UnitContext,
) {
    loop {
        let frame = stream.next().await;
        let now = sys::now_nanos();
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                Counters::add(&context.counters.unexpected_frames, 1);
                continue;
            }
            Some(Ok(Message::Close(frame))) => {
                return reader_failed(
                    state,
                    context,
                    format!("history reader: closed by the server: {frame:?}"),
                );
            }
            Some(Err(error)) => {
                return reader_failed(state, context, format!("history reader: {error}"));
            }
            None => {
                return reader_failed(state, context, "history reader: connection ended".into());
            }
        };
        let text = text.as_str();
        match decode_server_message(text) {
            Ok(ServerMessage::History {
                req_id,
                message_ids,
                more,
            }) => {
                let Some(pending) = state.borrow_mut().pending.remove(&req_id) else {
                    pairs::unexpected(context, format!("a page for unknown req_id {req_id}"));
                    continue;
                };
                Counters::add(&context.counters.history_answered, 1);
                Counters::add(&context.counters.history_messages, message_ids.len() as u64);
                {
                    let mut metrics = context.metrics.borrow_mut();
                    metrics.count_in_second("history_answered", context.clock.second_of(now));
                    record_latency(&mut metrics, &context.clock, PAGE.0, pending.sent_at, now);
                }
                if let Err(why) = pick::check_page(range, pending.before, limit, &message_ids, more)
                {
                    Counters::add(&context.counters.history_invalid, 1);
                    let before = pending
                        .before
                        .map_or("the newest".to_owned(), |before| format!("before {before}"));
                    context
                        .metrics
                        .borrow_mut()
                        .error_sample(format!("history page {req_id} ({before}): {why}"));
                }
            }
            Ok(ServerMessage::Error {
                code,
                message,
                req_id,
                ..
            }) => {
                Counters::add(&context.counters.server_errors, 1);
                let known = req_id
                    .is_some_and(|req_id| state.borrow_mut().pending.remove(&req_id).is_some());
                if known {
                    Counters::add(&context.counters.history_errors, 1);
                }
                context.metrics.borrow_mut().error_sample(format!(
                    "history request {}: server error {code}: {message}",
                    req_id.map_or("?".to_owned(), |req_id| req_id.to_string())
                ));
            }
            // A receipt for a seeded message the reader sent, kept for its next connection.
            Ok(ServerMessage::MessageDelivered { .. }) => {}
            Ok(_) => pairs::unexpected(context, format!("history reader got {text:.200}")),
            Err(error) => pairs::unexpected(context, error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> HistoryArgs {
        HistoryArgs {
            pairs: pairs::test_args(4, 100.0),
            http_addr: "127.0.0.1:8081".into(),
            history_seed: 10,
            history_seeded: false,
            history_window: 10,
            history_content_chars: 100,
            history_index_timeout: std::time::Duration::from_secs(1),
            history_rate: 50.0,
            history_limit: 20,
            history_readers: 1,
            history_newest_share: 0.5,
            history_pick_seed: 1,
            history_user: "hist-reader".into(),
            history_peer: "hist-peer".into(),
            seeded: Some(SeededRange {
                oldest: 10,
                newest: 20,
            }),
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(check_args(&args()).is_ok());
        let refused = |change: fn(&mut HistoryArgs)| {
            let mut args = args();
            change(&mut args);
            check_args(&args).is_err()
        };
        assert!(refused(|args| args.history_seed = 0));
        assert!(refused(|args| args.history_window = 0));
        assert!(refused(|args| args.history_content_chars = 1001));
        assert!(refused(|args| args.history_rate = -1.0));
        assert!(refused(|args| args.history_rate = f64::NAN));
        assert!(refused(|args| args.history_limit = 0));
        assert!(refused(|args| args.history_limit = 101));
        assert!(refused(|args| args.history_readers = 0));
        assert!(refused(|args| args.history_newest_share = 1.5));
        assert!(refused(|args| args.history_user = "a b".into()));
        assert!(refused(|args| args.history_peer = String::new()));
        assert!(refused(|args| args.history_peer = "hist-reader".into()));
        assert!(refused(|args| args.http_addr = "https://x:1".into()));
        assert!(refused(|args| args.pairs.common.conns = 3));
        // Seeded by an earlier run: no seed count and no HTTP address needed.
        let mut seeded = args();
        seeded.history_seeded = true;
        seeded.history_seed = 0;
        seeded.http_addr = "https://x:1".into();
        assert!(check_args(&seeded).is_ok());
        // A rate of 0 is the pairs load alone.
        let mut alone = args();
        alone.history_rate = 0.0;
        let history = History::new(&alone).unwrap();
        assert!(history.rate.is_none());
        assert!(!history.holds_readers(0));
    }

    #[test]
    fn the_scenario_is_pairs_with_pages() {
        let history = History::new(&args()).unwrap();
        assert_eq!(history.name(), "history");
        assert_eq!(history.conns(), 4);
        assert_eq!(history.unit_conns(), 2);
        assert!(history.holds_readers(0));
        assert!(!history.holds_readers(1));
        let names: Vec<&str> = history.latencies().iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            ["ack", "delivery", "receipt", "send_lag", "history_page"]
        );
        assert!(history.series().contains(&"history_answered"));
        assert_eq!(history.latency_series(), ["ack", "history_page"]);
        // Not seeded: no scenario.
        let mut unseeded = args();
        unseeded.seeded = None;
        assert!(History::new(&unseeded).is_err());
    }
}
