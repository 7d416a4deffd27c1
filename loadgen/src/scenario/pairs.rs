//! `pairs`: N users in N/2 pairs. In each pair the first user sends to the second on a fixed
//! schedule, and the second answers `message_delivered` for what it receives.
//!
//! The load is open loop: the k-th send of a sender is intended at a fixed instant, whatever
//! the server answered so far, and every latency is measured from that intended instant, so a
//! server (or a client) that stalls is charged for every send the stall delayed instead of one
//! (no coordinated omission). Senders are spread evenly over the send interval. The send
//! times come from a [`RateSchedule`]: one rate throughout here, a spike in `storm`.
//!
//! Latencies: `ack` (intended send to `message_received`), `delivery` (intended send to
//! `incoming_message` at the receiver, from the send time carried in the content as
//! `t=<nanos> s=<seq>`) and `receipt` (intended send to the `message_delivered` receipt at the
//! sender); and `send_lag`, how late the load generator itself wrote each send, which shows
//! when it is the bottleneck. Both ends of a pair live on one thread, so matching what was
//! acknowledged with what was delivered needs no locks.
//!
//! The pieces of a pair (the sender's schedule and reader, the receiver's reader and its
//! confirmations, the drain, the final count) are shared with `storm`, which is this load
//! with another rate, `churn`, which runs the receiver over connection after connection,
//! and `echo`, which sends the same frames to a server that sends them back.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use super::rate::{RateSchedule, SendTimes};
use super::{Clock, Keep, Scenario, Timeline, Unit, UnitContext, UnitFuture};
use crate::cli::PairsArgs;
use crate::conn::{
    DELIVERED_IDS_MAX, ServerMessage, WsStream, decode_server_message, encode_message_delivered,
    encode_send_message,
};
use crate::metrics::{Counters, Metrics};
use crate::sys;

/// Largest content the padding may reach: the server's default limit.
pub(super) const CONTENT_CHARS_MAX: usize = 1000;

/// How early a sender wakes before its next intended send. The runtime's timer has a
/// resolution of one millisecond and rounds up, so a sender that slept until the intended
/// instant would start every send up to a millisecond late and add that to every latency.
/// Waking this much early and sending what is due within it keeps sends within about half a
/// millisecond of their time either way; a send that leaves early is measured from when it
/// left, a late one from its intended time.
const TIMER_SLACK_NANOS: u64 = 1_000_000;

/// How often the drain looks whether everything outstanding has arrived.
const DRAIN_POLL: Duration = Duration::from_millis(5);

// The latencies of a pair's messages, with their descriptions, one by one for the scenarios
// that report them beside others.
pub(super) const ACK: (&str, &str) = ("ack", "intended send to message_received");
pub(super) const DELIVERY: (&str, &str) = (
    "delivery",
    "intended send to incoming_message at the receiver",
);
pub(super) const RECEIPT: (&str, &str) = (
    "receipt",
    "intended send to the message_delivered receipt at the sender",
);
pub(super) const SEND_LAG: (&str, &str) = (
    "send_lag",
    "intended send to its write (the load generator's own lag)",
);

/// The latencies of `pairs` and `storm`, in the order of the report.
const LATENCIES: &[(&str, &str)] = &[ACK, DELIVERY, RECEIPT, SEND_LAG];

/// The per-second series of `pairs` and `storm`.
pub(super) const SERIES: &[&str] = &["sent", "acknowledged", "delivered"];

#[derive(Debug)]
pub struct Pairs {
    name: &'static str,
    conns: usize,
    timeline: Timeline,
    rate: Arc<RateSchedule>,
    content_chars: usize,
    latency_series: &'static [&'static str],
}

/// Refuses flags the pairs load cannot run with.
pub(super) fn check_args(args: &PairsArgs, scenario: &str) -> anyhow::Result<()> {
    let conns = args.common.conns;
    anyhow::ensure!(
        conns >= 2 && conns.is_multiple_of(2),
        "--conns must be even and at least 2 for {scenario}, got {conns}"
    );
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be a positive number of messages per second"
    );
    anyhow::ensure!(
        args.content_chars <= CONTENT_CHARS_MAX,
        "--content-chars is at most {CONTENT_CHARS_MAX}"
    );
    Ok(())
}

/// The phases of the pairs load of `args`.
pub(super) fn timeline(args: &PairsArgs) -> Timeline {
    Timeline {
        warmup: args.warmup,
        run: args.duration,
        drain: args.drain,
    }
}

impl Pairs {
    /// `pairs`: one rate throughout.
    pub fn new(args: &PairsArgs) -> anyhow::Result<Pairs> {
        check_args(args, "pairs")?;
        Pairs::with_rate("pairs", args, RateSchedule::constant(args.rate), &[])
    }

    /// The pairs load of `args` sent at `rate` (instead of `--rate` throughout), as scenario
    /// `name`, keeping the latencies `latency_series` per second as well. Callers check the
    /// flags with [`check_args`] before they make `rate` from them.
    pub(super) fn with_rate(
        name: &'static str,
        args: &PairsArgs,
        rate: RateSchedule,
        latency_series: &'static [&'static str],
    ) -> anyhow::Result<Pairs> {
        check_args(args, name)?;
        Ok(Pairs {
            name,
            conns: args.common.conns,
            timeline: timeline(args),
            rate: Arc::new(rate),
            content_chars: args.content_chars,
            latency_series,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Acknowledged {
    intended: u64,
    receipt: bool,
}

/// What one pair has sent, had acknowledged, delivered and receipted.
#[derive(Debug, Default)]
pub(super) struct PairState {
    /// `client_msg_id` to intended send time, until acknowledged (`echo`: until echoed).
    pub(super) pending: HashMap<u64, u64>,
    /// Acknowledged messages by message id.
    acknowledged: HashMap<u64, Acknowledged>,
    /// Receipts that came before the acknowledgement of their message.
    early_receipts: HashSet<u64>,
    /// Every message id the receiver got.
    delivered: HashSet<u64>,
    /// The largest message id delivered so far, for the order check.
    delivered_id_max: u64,
    /// Messages both acknowledged and delivered.
    matched: usize,
    receipts: usize,
    /// A connection of the pair failed: nothing more will arrive.
    broken: bool,
}

impl PairState {
    fn settled(&self) -> bool {
        self.broken
            || (self.pending.is_empty()
                && self.matched == self.acknowledged.len()
                && self.receipts == self.acknowledged.len())
    }
}

pub(super) type Sink = SplitSink<WsStream, Message>;
pub(super) type Stream = SplitStream<WsStream>;

impl Scenario for Pairs {
    fn name(&self) -> &'static str {
        self.name
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

    fn latency_series(&self) -> &'static [&'static str] {
        self.latency_series
    }

    fn drive(&self, unit: Unit, context: UnitContext) -> UnitFuture {
        // Pair k is sender k of the pairs, so sends are spread evenly.
        let times = SendTimes::new(
            context.clock,
            Arc::clone(&self.rate),
            unit.index,
            self.conns / 2,
        );
        let content_chars = self.content_chars;
        Box::pin(async move {
            let mut conns = unit.conns.into_iter();
            let (Some(sender), Some(receiver)) = (conns.next(), conns.next()) else {
                return Vec::new();
            };
            let receiver_user = receiver.user.clone();
            let (mut sender_sink, mut sender_stream) = sender.ws.split();
            let (mut receiver_sink, mut receiver_stream) = receiver.ws.split();
            let state = Rc::new(RefCell::new(PairState::default()));
            let to_confirm = Rc::new(RefCell::new(Vec::<u64>::new()));
            let confirm_wanted = Rc::new(Notify::new());
            let clock = context.clock;

            let send = async {
                send_on_schedule(
                    &mut sender_sink,
                    &times,
                    &receiver_user,
                    content_chars,
                    &state,
                    &context,
                )
                .await;
                drain(&state, clock).await;
            };
            let listen = async {
                tokio::join!(
                    read_sender(&mut sender_stream, &state, &context),
                    read_receiver(
                        &mut receiver_stream,
                        &state,
                        &context,
                        &to_confirm,
                        &confirm_wanted
                    ),
                    confirm_deliveries(
                        &mut receiver_sink,
                        &to_confirm,
                        &confirm_wanted,
                        &state,
                        &context
                    ),
                );
            };
            tokio::select! {
                () = send => {}
                () = listen => {}
                () = sys::sleep_until_nanos(clock.drain_until) => {}
            }

            count_outstanding(&state.borrow(), &context);
            let keep: Keep = vec![
                Box::new(sender_sink),
                Box::new(sender_stream),
                Box::new(receiver_sink),
                Box::new(receiver_stream),
            ];
            keep
        })
    }
}

/// Counts what a pair never got by the end of its run: acknowledged messages never delivered
/// (`lost`) and sends never acknowledged.
pub(super) fn count_outstanding(state: &PairState, context: &UnitContext) {
    let lost = state
        .acknowledged
        .keys()
        .filter(|id| !state.delivered.contains(id))
        .count();
    Counters::add(&context.counters.lost, lost as u64);
    Counters::add(&context.counters.unacknowledged, state.pending.len() as u64);
}

/// Records latency `name` of a message meant to be sent at `intended` that got somewhere at
/// `now`: in the run's histogram when its send was measured, and in the histogram of its send
/// second (warmup included, like the per-second counts) when the scenario keeps `name` per
/// second.
pub(super) fn record_latency(
    metrics: &mut Metrics,
    clock: &Clock,
    name: &str,
    intended: u64,
    now: u64,
) {
    let nanos = now.saturating_sub(intended);
    if clock.is_measured(intended) {
        metrics.record_latency(name, nanos);
    }
    metrics.record_latency_in_second(name, clock.second_of(intended), nanos);
}

/// The content of send `seq` intended at `intended`, padded to `content_chars`.
pub(super) fn content(intended: u64, seq: u64, content_chars: usize) -> String {
    let mut text = format!("t={intended} s={seq}");
    if text.len() < content_chars {
        text.push(' ');
        while text.len() < content_chars {
            text.push('x');
        }
    }
    text
}

/// The intended send time carried in a content written by [`content`].
pub(super) fn intended_of(content: &str) -> Option<u64> {
    content.strip_prefix("t=")?.split(' ').next()?.parse().ok()
}

pub(super) fn fail(state: &RefCell<PairState>, context: &UnitContext, what: String) {
    let mut state = state.borrow_mut();
    if !state.broken {
        state.broken = true;
        Counters::add(&context.counters.conns_dropped, 1);
        context.metrics.borrow_mut().error_sample(what);
    }
}

pub(super) async fn send_on_schedule(
    sink: &mut Sink,
    schedule: &SendTimes,
    to: &str,
    content_chars: usize,
    state: &RefCell<PairState>,
    context: &UnitContext,
) {
    let mut seq = 0u64;
    while let Some(next) = schedule.intended(seq) {
        // Never before the start, so that no send falls before the measured window of a run
        // without warmup.
        sys::sleep_until_nanos(
            next.saturating_sub(TIMER_SLACK_NANOS)
                .max(schedule.clock.start),
        )
        .await;
        let now = sys::now_nanos();
        // Every send that is due goes out now, in one flush: a late timer or a slow write
        // delays sends but never skips them, and their latency counts from their intended time.
        while let Some(intended) = schedule
            .intended(seq)
            .filter(|&intended| intended <= now + TIMER_SLACK_NANOS)
        {
            seq += 1;
            let client_msg_id = seq;
            // A send a little ahead of its time is measured from when it really left, a late
            // one from when it should have left.
            let sent_at = intended.min(now);
            state.borrow_mut().pending.insert(client_msg_id, sent_at);
            let text =
                encode_send_message(client_msg_id, to, &content(sent_at, seq, content_chars));
            Counters::add(&context.counters.sent, 1);
            {
                let mut metrics = context.metrics.borrow_mut();
                metrics.count_in_second("sent", context.clock.second_of(now));
                if context.clock.is_measured(sent_at) {
                    metrics.record_latency("send_lag", now.saturating_sub(intended));
                }
            }
            if let Err(error) = sink.feed(Message::text(text)).await {
                return fail(state, context, format!("sender write failed: {error}"));
            }
        }
        if let Err(error) = sink.flush().await {
            return fail(state, context, format!("sender write failed: {error}"));
        }
    }
}

/// Waits until everything sent is acknowledged, delivered and receipted, or the pair broke.
pub(super) async fn drain(state: &RefCell<PairState>, clock: Clock) {
    while !state.borrow().settled() && sys::now_nanos() < clock.drain_until {
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Counts a frame that is not a text frame, or a close, on either connection. Returns false
/// when the connection is over.
pub(super) fn other_frame(
    frame: &Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    who: &str,
    state: &RefCell<PairState>,
    context: &UnitContext,
) -> bool {
    match frame {
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => true,
        Some(Ok(Message::Binary(_))) => {
            Counters::add(&context.counters.unexpected_frames, 1);
            true
        }
        Some(Ok(Message::Text(_))) => true,
        Some(Ok(Message::Close(frame))) => {
            fail(
                state,
                context,
                format!("{who}: closed by the server: {frame:?}"),
            );
            false
        }
        Some(Err(error)) => {
            fail(state, context, format!("{who}: {error}"));
            false
        }
        None => {
            fail(state, context, format!("{who}: connection ended"));
            false
        }
    }
}

fn on_server_error(message: &ServerMessage<'_>, state: &RefCell<PairState>, context: &UnitContext) {
    if let ServerMessage::Error {
        code,
        message,
        client_msg_id,
        ..
    } = message
    {
        Counters::add(&context.counters.server_errors, 1);
        if let Some(client_msg_id) = client_msg_id
            && state.borrow_mut().pending.remove(client_msg_id).is_some()
        {
            Counters::add(&context.counters.rejected, 1);
        }
        context
            .metrics
            .borrow_mut()
            .error_sample(format!("server error {code}: {message}"));
    }
}

pub(super) fn unexpected(context: &UnitContext, what: String) {
    Counters::add(&context.counters.unexpected_frames, 1);
    context.metrics.borrow_mut().error_sample(what);
}

/// Reads the sender's connection until it ends: acknowledgements and receipts.
pub(super) async fn read_sender(
    stream: &mut Stream,
    state: &RefCell<PairState>,
    context: &UnitContext,
) {
    loop {
        let frame = stream.next().await;
        let now = sys::now_nanos();
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            other if other_frame(&other, "sender", state, context) => continue,
            _ => return,
        };
        let text = text.as_str();
        let message = match decode_server_message(text) {
            Ok(message) => message,
            Err(error) => {
                unexpected(context, error);
                continue;
            }
        };
        match message {
            ServerMessage::MessageReceived {
                client_msg_id,
                message_id,
            } => {
                let mut state = state.borrow_mut();
                let Some(intended) = state.pending.remove(&client_msg_id) else {
                    drop(state);
                    unexpected(
                        context,
                        format!("message_received for unknown client_msg_id {client_msg_id}"),
                    );
                    continue;
                };
                let receipt = state.early_receipts.remove(&message_id);
                if state
                    .acknowledged
                    .insert(message_id, Acknowledged { intended, receipt })
                    .is_some()
                {
                    drop(state);
                    unexpected(
                        context,
                        format!("message id {message_id} acknowledged twice"),
                    );
                    continue;
                }
                if state.delivered.contains(&message_id) {
                    state.matched += 1;
                }
                if receipt {
                    state.receipts += 1;
                }
                drop(state);
                Counters::add(&context.counters.acknowledged, 1);
                let mut metrics = context.metrics.borrow_mut();
                metrics.count_in_second("acknowledged", context.clock.second_of(now));
                record_latency(&mut metrics, &context.clock, "ack", intended, now);
                if receipt {
                    record_latency(&mut metrics, &context.clock, "receipt", intended, now);
                    Counters::add(&context.counters.receipts, 1);
                }
            }
            ServerMessage::MessageDelivered { message_id } => {
                let mut state = state.borrow_mut();
                match state.acknowledged.get_mut(&message_id) {
                    Some(acknowledged) if !acknowledged.receipt => {
                        acknowledged.receipt = true;
                        let intended = acknowledged.intended;
                        state.receipts += 1;
                        drop(state);
                        Counters::add(&context.counters.receipts, 1);
                        record_latency(
                            &mut context.metrics.borrow_mut(),
                            &context.clock,
                            "receipt",
                            intended,
                            now,
                        );
                    }
                    // A repeated receipt (the protocol sends one to every connection of the
                    // sender, and may repeat it) changes nothing.
                    Some(_) => {}
                    None => {
                        state.early_receipts.insert(message_id);
                    }
                }
            }
            ServerMessage::Error { .. } => on_server_error(&message, state, context),
            ServerMessage::IncomingMessage { .. }
            | ServerMessage::GroupEvent { .. }
            | ServerMessage::History { .. }
            | ServerMessage::Other { .. } => {
                unexpected(context, format!("sender got {text}"));
            }
        }
    }
}

/// Reads the receiver's connection until it ends: deliveries, each queued for confirmation.
pub(super) async fn read_receiver(
    stream: &mut Stream,
    state: &RefCell<PairState>,
    context: &UnitContext,
    to_confirm: &RefCell<Vec<u64>>,
    confirm_wanted: &Notify,
) {
    loop {
        let frame = stream.next().await;
        let now = sys::now_nanos();
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            other if other_frame(&other, "receiver", state, context) => continue,
            _ => return,
        };
        let text = text.as_str();
        let message = match decode_server_message(text) {
            Ok(message) => message,
            Err(error) => {
                unexpected(context, error);
                continue;
            }
        };
        match message {
            ServerMessage::IncomingMessage {
                message_id,
                content,
                ..
            } => {
                // Every copy is confirmed, so that a server that redelivers stops.
                to_confirm.borrow_mut().push(message_id);
                confirm_wanted.notify_one();
                let mut state = state.borrow_mut();
                if !state.delivered.insert(message_id) {
                    drop(state);
                    Counters::add(&context.counters.duplicates, 1);
                    continue;
                }
                if message_id < state.delivered_id_max {
                    Counters::add(&context.counters.reordered, 1);
                }
                state.delivered_id_max = state.delivered_id_max.max(message_id);
                if state.acknowledged.contains_key(&message_id) {
                    state.matched += 1;
                }
                drop(state);
                Counters::add(&context.counters.delivered, 1);
                let mut metrics = context.metrics.borrow_mut();
                metrics.count_in_second("delivered", context.clock.second_of(now));
                match intended_of(&content) {
                    Some(intended) => {
                        record_latency(&mut metrics, &context.clock, "delivery", intended, now);
                    }
                    None => {
                        drop(metrics);
                        unexpected(
                            context,
                            format!("content without a send time: {content:.40}"),
                        );
                    }
                }
            }
            ServerMessage::Error { .. } => on_server_error(&message, state, context),
            ServerMessage::MessageReceived { .. }
            | ServerMessage::MessageDelivered { .. }
            | ServerMessage::GroupEvent { .. }
            | ServerMessage::History { .. }
            | ServerMessage::Other { .. } => {
                unexpected(context, format!("receiver got {text}"));
            }
        }
    }
}

/// Answers `message_delivered` for what the receiver got, in batches of what has piled up
/// while the previous batch was written.
pub(super) async fn confirm_deliveries(
    sink: &mut Sink,
    to_confirm: &RefCell<Vec<u64>>,
    confirm_wanted: &Notify,
    state: &RefCell<PairState>,
    context: &UnitContext,
) {
    loop {
        confirm_wanted.notified().await;
        loop {
            let batch: Vec<u64> = {
                let mut ids = to_confirm.borrow_mut();
                let n = ids.len().min(DELIVERED_IDS_MAX);
                ids.drain(..n).collect()
            };
            if batch.is_empty() {
                break;
            }
            if let Err(error) = sink
                .feed(Message::text(encode_message_delivered(&batch)))
                .await
            {
                return fail(state, context, format!("receiver write failed: {error}"));
            }
        }
        if let Err(error) = sink.flush().await {
            return fail(state, context, format!("receiver write failed: {error}"));
        }
    }
}

/// The flags of a pairs load of `conns` connections at `rate`, for the scenarios' tests.
#[cfg(test)]
pub(super) fn test_args(conns: usize, rate: f64) -> PairsArgs {
    PairsArgs {
        common: crate::cli::CommonArgs {
            url: String::new(),
            tls_ca: None,
            secret: Default::default(),
            token_ttl: Duration::from_secs(60),
            conns,
            run: None,
            encoding: crate::cli::Encoding::Json,
            threads: None,
            procs: 1,
            source_ips: 1,
            connect_concurrency: 1,
            connect_timeout: Duration::from_secs(1),
            server_pid: None,
            server_metrics: None,
            json: None,
            svg: None,
            quiet: false,
        },
        rate,
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        drain: Duration::ZERO,
        content_chars: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_carry_their_send_time() {
        assert_eq!(content(123, 4, 0), "t=123 s=4");
        let padded = content(123, 4, 40);
        assert_eq!(padded.len(), 40);
        assert_eq!(intended_of(&padded), Some(123));
        assert_eq!(intended_of("t=9 s=1"), Some(9));
        assert_eq!(intended_of("hello"), None);
        assert_eq!(intended_of("t=x s=1"), None);
    }

    #[test]
    fn a_pair_settles_when_everything_is_matched() {
        let mut state = PairState::default();
        assert!(state.settled());
        state.pending.insert(1, 0);
        assert!(!state.settled());
        state.pending.clear();
        state.acknowledged.insert(
            7,
            Acknowledged {
                intended: 0,
                receipt: false,
            },
        );
        assert!(!state.settled());
        state.matched = 1;
        assert!(!state.settled());
        state.receipts = 1;
        assert!(state.settled());
    }

    #[test]
    fn bad_settings_are_refused() {
        let args = test_args;
        assert!(Pairs::new(&args(3, 10.0)).is_err());
        assert!(Pairs::new(&args(0, 10.0)).is_err());
        assert!(Pairs::new(&args(4, 0.0)).is_err());
        assert!(Pairs::new(&args(4, f64::NAN)).is_err());
        let pairs = Pairs::new(&args(100, 2000.0)).unwrap();
        assert_eq!(pairs.name(), "pairs");
        assert_eq!(*pairs.rate, RateSchedule::constant(2000.0));
        assert!(pairs.latency_series().is_empty());
    }
}
