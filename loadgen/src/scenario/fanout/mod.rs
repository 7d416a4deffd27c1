//! `fanout`: `--groups` groups of `--group-size` members, every member connected (one
//! connection per member, the members of different groups different users). The first
//! member of each group is its sender: it sends `send_message` with the group's `group_id` on
//! the open-loop schedule of `pairs` (`--rate` messages per second over all groups, the
//! groups spread evenly over the send interval), and every other member gets each message as
//! `incoming_message` and answers `message_delivered`, as it would in `pairs`.
//!
//! Before the start each group is formed ([`setup`]): over the HTTP API, or by joining, for
//! the comparison relays. A group is one unit, kept on one thread, so its bookkeeping
//! ([`ledger`]) takes no lock.
//!
//! Latencies, all from the intended send time (no coordinated omission): `ack`
//! (`message_received` at the sender), `delivery` (`incoming_message` at each member),
//! `delivery_last` (at the last member of the group to get that message: what the whole group
//! waits for), `receipt` (the group receipt, which Switchboard sends once every member has
//! the message; the relays send none, and none is waited for) and `send_lag`. Counters:
//! `delivered` counts deliveries (a message to each member), so its throughput is deliveries
//! per second; `lost` counts the deliveries of acknowledged messages that a member never got
//! by the end of the drain; `duplicates` and `reordered` are per member (a group's messages
//! reach every member in message id order). `group_event`s are acknowledged like messages and
//! counted apart. The sender's own connection must never get its message back: a copy there
//! is an unexpected frame.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::{self, Message};

use super::pairs::{ACK, CONTENT_CHARS_MAX, SEND_LAG, content, intended_of, record_latency};
use super::rate::{RateSchedule, SendTimes};
use super::{
    Clock, Keep, Scenario, SetupContext, SetupFuture, Timeline, Unit, UnitContext, UnitFuture,
};
use crate::cli::{FanoutArgs, GroupMode};
use crate::conn::{
    DELIVERED_IDS_MAX, ServerMessage, WsStream, decode_server_message, encode_message_delivered,
    encode_send_group_message,
};
use crate::http::HttpTarget;
use crate::metrics::Counters;
use crate::sys;

mod ledger;
mod setup;

use ledger::{Acknowledgement, Delivery, Ledger};

/// How early a sender wakes before its next intended send (see `pairs`).
const TIMER_SLACK_NANOS: u64 = 1_000_000;

/// How often the drain looks whether everything outstanding has arrived.
const DRAIN_POLL: Duration = Duration::from_millis(5);

const DELIVERY: (&str, &str) = (
    "delivery",
    "intended send to incoming_message at each member",
);
const DELIVERY_LAST: (&str, &str) = (
    "delivery_last",
    "intended send to incoming_message at the last member of the group to get it",
);

const RECEIPT: (&str, &str) = (
    "receipt",
    "intended send to the group receipt (message_delivered) at the sender, if the server sends one",
);

const LATENCIES: &[(&str, &str)] = &[ACK, DELIVERY, DELIVERY_LAST, RECEIPT, SEND_LAG];

const SERIES: &[&str] = &["sent", "acknowledged", "delivered"];

#[derive(Debug, Clone)]
pub struct Fanout {
    groups: usize,
    group_size: usize,
    timeline: Timeline,
    rate: Arc<RateSchedule>,
    content_chars: usize,
    mode: GroupMode,
    /// The server's HTTP API (`--group-mode server`).
    http: Option<HttpTarget>,
    setup_timeout: Duration,
}

impl Fanout {
    pub fn new(args: &FanoutArgs) -> anyhow::Result<Fanout> {
        anyhow::ensure!(args.groups >= 1, "--groups must be at least 1");
        anyhow::ensure!(
            args.group_size >= 2,
            "--group-size must be at least 2: a sender and a member"
        );
        anyhow::ensure!(
            args.groups.checked_mul(args.group_size).is_some(),
            "--groups x --group-size is too large"
        );
        anyhow::ensure!(
            args.rate.is_finite() && args.rate > 0.0,
            "--rate must be a positive number of messages per second"
        );
        anyhow::ensure!(
            args.content_chars <= CONTENT_CHARS_MAX,
            "--content-chars is at most {CONTENT_CHARS_MAX}"
        );
        anyhow::ensure!(
            !args.group_setup_timeout.is_zero(),
            "--group-setup-timeout must be more than 0"
        );
        let http = match args.group_mode {
            GroupMode::Server => Some(HttpTarget::resolve(&args.http_addr)?),
            GroupMode::Join => None,
        };
        Ok(Fanout {
            groups: args.groups,
            group_size: args.group_size,
            timeline: Timeline {
                warmup: args.warmup,
                run: args.duration,
                drain: args.drain,
            },
            rate: Arc::new(RateSchedule::constant(args.rate)),
            content_chars: args.content_chars,
            mode: args.group_mode,
            http,
            setup_timeout: args.group_setup_timeout,
        })
    }
}

impl Scenario for Fanout {
    fn name(&self) -> &'static str {
        "fanout"
    }

    fn conns(&self) -> usize {
        self.groups * self.group_size
    }

    fn unit_conns(&self) -> usize {
        self.group_size
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

    fn lost_means(&self) -> &'static str {
        "deliveries of acknowledged messages that a member never got"
    }

    fn setup(&self, unit: Unit, context: SetupContext) -> SetupFuture {
        let fanout = self.clone();
        Box::pin(async move { setup::form(&fanout, unit, context).await })
    }

    fn drive(&self, unit: Unit, context: UnitContext) -> UnitFuture {
        // Group k is sender k of the groups, so sends are spread evenly.
        let times = SendTimes::new(
            context.clock,
            Arc::clone(&self.rate),
            unit.index,
            self.groups,
        );
        let content_chars = self.content_chars;
        let members = self.group_size - 1;
        Box::pin(async move {
            // The setup names the group of every unit it lets through, so both lets hold.
            let Some(group_id) = unit.group_id else {
                return Vec::new();
            };
            let mut conns = unit.conns.into_iter();
            let Some(sender) = conns.next() else {
                return Vec::new();
            };
            let (mut sender_sink, mut sender_stream) = sender.ws.split();
            let (mut member_sinks, mut member_streams): (Vec<Sink>, Vec<Stream>) =
                conns.map(|conn| conn.ws.split()).unzip();
            let ledger = RefCell::new(Ledger::new(members));
            let dropped = RefCell::new(vec![false; members + 1]);
            let group = Group {
                id: &group_id,
                ledger: &ledger,
                dropped: &dropped,
                context: &context,
            };
            let sender_confirms = Confirms::default();
            let member_confirms: Vec<Confirms> =
                (0..members).map(|_| Confirms::default()).collect();
            let clock = context.clock;

            let send = async {
                send_on_schedule(
                    &mut sender_sink,
                    &times,
                    content_chars,
                    &sender_confirms,
                    &group,
                )
                .await;
                ledger.borrow_mut().sends_done = true;
                // What comes to the sender after its last send (a group_event) is still
                // acknowledged while the group drains.
                tokio::select! {
                    () = drain(&ledger, clock) => {}
                    () = confirm(&mut sender_sink, &sender_confirms, &group, SENDER) => {}
                }
            };
            let readers = member_streams
                .iter_mut()
                .zip(&member_confirms)
                .enumerate()
                .map(|(member, (stream, confirms))| read_member(stream, member, confirms, &group));
            let confirmers = member_sinks
                .iter_mut()
                .zip(&member_confirms)
                .enumerate()
                .map(|(member, (sink, confirms))| confirm(sink, confirms, &group, member + 1));
            let listen = async {
                tokio::join!(
                    read_sender(&mut sender_stream, &sender_confirms, &group),
                    futures_util::future::join_all(readers),
                    futures_util::future::join_all(confirmers),
                );
            };
            tokio::select! {
                () = send => {}
                () = listen => {}
                () = sys::sleep_until_nanos(clock.drain_until) => {}
            }

            let ledger = ledger.borrow();
            Counters::add(&context.counters.lost, ledger.lost() as u64);
            Counters::add(
                &context.counters.unacknowledged,
                ledger.unacknowledged() as u64,
            );
            let mut keep: Keep = vec![Box::new(sender_sink), Box::new(sender_stream)];
            keep.extend(member_sinks.into_iter().map(|sink| Box::new(sink) as _));
            keep.extend(
                member_streams
                    .into_iter()
                    .map(|stream| Box::new(stream) as _),
            );
            keep
        })
    }
}

type Sink = SplitSink<WsStream, Message>;
type Stream = SplitStream<WsStream>;

/// The connection slot of the sender; member `m` is slot `m + 1`.
const SENDER: usize = 0;

/// What the tasks of one group share, all on its thread.
struct Group<'a> {
    id: &'a str,
    ledger: &'a RefCell<Ledger>,
    /// Which of the group's connections (by slot) failed or were closed.
    dropped: &'a RefCell<Vec<bool>>,
    context: &'a UnitContext,
}

impl Group<'_> {
    /// Connection `slot` failed: counted once, and the group stops waiting for what it would
    /// have got.
    fn fail(&self, slot: usize, what: String) {
        self.ledger.borrow_mut().broken = true;
        let mut dropped = self.dropped.borrow_mut();
        if !dropped[slot] {
            dropped[slot] = true;
            Counters::add(&self.context.counters.conns_dropped, 1);
            self.context.metrics.borrow_mut().error_sample(what);
        }
    }

    fn unexpected(&self, what: String) {
        Counters::add(&self.context.counters.unexpected_frames, 1);
        self.context.metrics.borrow_mut().error_sample(what);
    }

    fn server_error(&self, code: &str, message: &str) {
        Counters::add(&self.context.counters.server_errors, 1);
        self.context
            .metrics
            .borrow_mut()
            .error_sample(format!("server error {code}: {message}"));
    }
}

fn who(slot: usize) -> String {
    if slot == SENDER {
        "sender".to_owned()
    } else {
        format!("member {}", slot - 1)
    }
}

/// The message ids one connection owes a `message_delivered` for, and the wake-up of whoever
/// writes it.
#[derive(Debug, Default)]
struct Confirms {
    ids: RefCell<Vec<u64>>,
    wanted: Notify,
}

impl Confirms {
    fn push(&self, message_id: u64) {
        self.ids.borrow_mut().push(message_id);
        self.wanted.notify_one();
    }

    /// Queues every owed confirmation on `sink`, in batches of at most the protocol's list
    /// bound; the caller flushes.
    async fn feed(&self, sink: &mut Sink) -> Result<(), tungstenite::Error> {
        loop {
            let batch: Vec<u64> = {
                let mut ids = self.ids.borrow_mut();
                let n = ids.len().min(DELIVERED_IDS_MAX);
                ids.drain(..n).collect()
            };
            if batch.is_empty() {
                return Ok(());
            }
            sink.feed(Message::text(encode_message_delivered(&batch)))
                .await?;
        }
    }
}

/// Writes `message_delivered` for what connection `slot` got, in batches of what piled up
/// while the previous batch was written, until a write fails.
async fn confirm(sink: &mut Sink, confirms: &Confirms, group: &Group<'_>, slot: usize) {
    loop {
        confirms.wanted.notified().await;
        let written = async {
            confirms.feed(sink).await?;
            sink.flush().await
        };
        if let Err(error) = written.await {
            return group.fail(slot, format!("{} write failed: {error}", who(slot)));
        }
    }
}

/// The sender's schedule: every send that is due goes out at once (see `pairs`), and between
/// sends the confirmations the sender owes (for `group_event`s) go out on the same
/// connection. Returns after the last send, or when a write fails.
async fn send_on_schedule(
    sink: &mut Sink,
    schedule: &SendTimes,
    content_chars: usize,
    confirms: &Confirms,
    group: &Group<'_>,
) {
    let context = group.context;
    let mut seq = 0u64;
    while let Some(next) = schedule.intended(seq) {
        let wake = next
            .saturating_sub(TIMER_SLACK_NANOS)
            .max(schedule.clock.start);
        // Woken for confirmations, the sender finds no send due yet and only confirms.
        tokio::select! {
            () = sys::sleep_until_nanos(wake) => {}
            () = confirms.wanted.notified() => {}
        }
        let now = sys::now_nanos();
        while let Some(intended) = schedule
            .intended(seq)
            .filter(|&intended| intended <= now + TIMER_SLACK_NANOS)
        {
            seq += 1;
            let client_msg_id = seq;
            // A send a little ahead of its time is measured from when it really left, a late
            // one from when it should have left.
            let sent_at = intended.min(now);
            group.ledger.borrow_mut().sent(client_msg_id, sent_at);
            let text = encode_send_group_message(
                client_msg_id,
                group.id,
                &content(sent_at, seq, content_chars),
            );
            Counters::add(&context.counters.sent, 1);
            {
                let mut metrics = context.metrics.borrow_mut();
                metrics.count_in_second("sent", context.clock.second_of(now));
                if context.clock.is_measured(sent_at) {
                    metrics.record_latency("send_lag", now.saturating_sub(intended));
                }
            }
            if let Err(error) = sink.feed(Message::text(text)).await {
                return group.fail(SENDER, format!("sender write failed: {error}"));
            }
        }
        let written = async {
            confirms.feed(sink).await?;
            sink.flush().await
        };
        if let Err(error) = written.await {
            return group.fail(SENDER, format!("sender write failed: {error}"));
        }
    }
}

/// Waits until the group has everything it waits for, or broke, or the drain is over.
async fn drain(ledger: &RefCell<Ledger>, clock: Clock) {
    while !ledger.borrow().settled() && sys::now_nanos() < clock.drain_until {
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// The next text frame of connection `slot`, or `None` once it is over (counted as dropped).
async fn next_text(
    stream: &mut Stream,
    slot: usize,
    group: &Group<'_>,
) -> Option<tungstenite::Utf8Bytes> {
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => return Some(text),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Binary(_))) => {
                Counters::add(&group.context.counters.unexpected_frames, 1);
            }
            Some(Ok(Message::Close(frame))) => {
                group.fail(
                    slot,
                    format!("{}: closed by the server: {frame:?}", who(slot)),
                );
                return None;
            }
            Some(Err(error)) => {
                group.fail(slot, format!("{}: {error}", who(slot)));
                return None;
            }
            None => {
                group.fail(slot, format!("{}: connection ended", who(slot)));
                return None;
            }
        }
    }
}

/// Reads the sender's connection until it ends: acknowledgements, group receipts, refusals,
/// and `group_event`s to confirm.
async fn read_sender(stream: &mut Stream, confirms: &Confirms, group: &Group<'_>) {
    let context = group.context;
    while let Some(text) = next_text(stream, SENDER, group).await {
        let now = sys::now_nanos();
        let text = text.as_str();
        let message = match decode_server_message(text) {
            Ok(message) => message,
            Err(error) => {
                group.unexpected(error);
                continue;
            }
        };
        match message {
            ServerMessage::MessageReceived {
                client_msg_id,
                message_id,
            } => {
                let acknowledgement = group
                    .ledger
                    .borrow_mut()
                    .acknowledge(client_msg_id, message_id);
                let (intended, receipt) = match acknowledgement {
                    Acknowledgement::Sent { intended, receipt } => (intended, receipt),
                    Acknowledgement::Unknown => {
                        group.unexpected(format!(
                            "message_received for unknown client_msg_id {client_msg_id}"
                        ));
                        continue;
                    }
                    Acknowledgement::Twice => {
                        group.unexpected(format!("message id {message_id} acknowledged twice"));
                        continue;
                    }
                };
                Counters::add(&context.counters.acknowledged, 1);
                let mut metrics = context.metrics.borrow_mut();
                metrics.count_in_second("acknowledged", context.clock.second_of(now));
                record_latency(&mut metrics, &context.clock, "ack", intended, now);
                if receipt {
                    Counters::add(&context.counters.receipts, 1);
                    record_latency(&mut metrics, &context.clock, "receipt", intended, now);
                }
            }
            ServerMessage::MessageDelivered { message_id } => {
                // The group receipt: every member has the message. A repeated one, or one
                // before the acknowledgement (counted with it), records nothing here.
                if let Some(intended) = group.ledger.borrow_mut().receipt(message_id) {
                    Counters::add(&context.counters.receipts, 1);
                    let mut metrics = context.metrics.borrow_mut();
                    record_latency(&mut metrics, &context.clock, "receipt", intended, now);
                }
            }
            ServerMessage::GroupEvent { message_id, .. } => {
                confirms.push(message_id);
                Counters::add(&context.counters.group_events, 1);
            }
            ServerMessage::Error {
                code,
                message,
                client_msg_id,
                ..
            } => {
                group.server_error(&code, &message);
                if let Some(client_msg_id) = client_msg_id
                    && group.ledger.borrow_mut().refused(client_msg_id)
                {
                    Counters::add(&context.counters.rejected, 1);
                }
            }
            ServerMessage::IncomingMessage {
                message_id,
                group_id: Some(group_id),
                ..
            } if group_id == group.id => {
                group.unexpected(format!(
                    "the sender's own connection got its message {message_id} back"
                ));
            }
            ServerMessage::IncomingMessage { .. }
            | ServerMessage::History { .. }
            | ServerMessage::Other { .. } => {
                group.unexpected(format!("sender got {text:.200}"));
            }
        }
    }
}

/// Reads member `member`'s connection until it ends: the group's messages, each queued for
/// confirmation and counted, and `group_event`s, confirmed and counted apart.
async fn read_member(stream: &mut Stream, member: usize, confirms: &Confirms, group: &Group<'_>) {
    let context = group.context;
    let slot = member + 1;
    while let Some(text) = next_text(stream, slot, group).await {
        let now = sys::now_nanos();
        let text = text.as_str();
        let message = match decode_server_message(text) {
            Ok(message) => message,
            Err(error) => {
                group.unexpected(error);
                continue;
            }
        };
        match message {
            ServerMessage::IncomingMessage {
                message_id,
                group_id: Some(group_id),
                content,
                ..
            } if group_id == group.id => {
                // Every copy is confirmed, so that a server that redelivers stops.
                confirms.push(message_id);
                let delivery = group.ledger.borrow_mut().deliver(member, message_id);
                let Delivery::First { reordered, last } = delivery else {
                    Counters::add(&context.counters.duplicates, 1);
                    continue;
                };
                if reordered {
                    Counters::add(&context.counters.reordered, 1);
                }
                Counters::add(&context.counters.delivered, 1);
                let mut metrics = context.metrics.borrow_mut();
                metrics.count_in_second("delivered", context.clock.second_of(now));
                let Some(intended) = intended_of(&content) else {
                    drop(metrics);
                    group.unexpected(format!("content without a send time: {content:.40}"));
                    continue;
                };
                record_latency(&mut metrics, &context.clock, "delivery", intended, now);
                if last {
                    record_latency(&mut metrics, &context.clock, "delivery_last", intended, now);
                }
            }
            ServerMessage::GroupEvent { message_id, .. } => {
                confirms.push(message_id);
                Counters::add(&context.counters.group_events, 1);
            }
            ServerMessage::Error { code, message, .. } => group.server_error(&code, &message),
            ServerMessage::IncomingMessage { .. }
            | ServerMessage::MessageReceived { .. }
            | ServerMessage::MessageDelivered { .. }
            | ServerMessage::History { .. }
            | ServerMessage::Other { .. } => {
                group.unexpected(format!("{} got {text:.200}", who(slot)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::CommonArgs;

    fn args(groups: usize, group_size: usize, mode: GroupMode) -> FanoutArgs {
        FanoutArgs {
            common: CommonArgs {
                url: String::new(),
                tls_ca: None,
                secret: Default::default(),
                token_ttl: Duration::from_secs(60),
                conns: groups * group_size,
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
            groups,
            group_size,
            group_mode: mode,
            http_addr: "127.0.0.1:8081".into(),
            group_setup_timeout: Duration::from_secs(1),
            rate: 100.0,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            drain: Duration::ZERO,
            content_chars: 0,
        }
    }

    #[test]
    fn a_group_is_a_unit_of_its_members() {
        let fanout = Fanout::new(&args(3, 10, GroupMode::Join)).unwrap();
        assert_eq!(fanout.conns(), 30);
        assert_eq!(fanout.unit_conns(), 10);
        assert!(fanout.http.is_none());
        let fanout = Fanout::new(&args(1, 500, GroupMode::Server)).unwrap();
        assert_eq!(
            fanout.http.as_ref().map(|http| http.addr),
            Some("127.0.0.1:8081".parse().unwrap())
        );
        let names: Vec<&str> = fanout.latencies().iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            ["ack", "delivery", "delivery_last", "receipt", "send_lag"]
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = |change: fn(&mut FanoutArgs)| {
            let mut args = args(2, 10, GroupMode::Server);
            change(&mut args);
            Fanout::new(&args).is_err()
        };
        assert!(bad(|args| args.groups = 0));
        assert!(bad(|args| args.group_size = 1));
        assert!(bad(|args| args.rate = 0.0));
        assert!(bad(|args| args.rate = f64::INFINITY));
        assert!(bad(|args| args.content_chars = CONTENT_CHARS_MAX + 1));
        assert!(bad(|args| args.group_setup_timeout = Duration::ZERO));
        assert!(bad(|args| args.http_addr = "https://127.0.0.1:8081".into()));
        assert!(bad(|args| args.group_size = usize::MAX));
        // Join mode needs no HTTP address at all.
        let mut join = args(2, 10, GroupMode::Join);
        join.http_addr = "nonsense".into();
        assert!(Fanout::new(&join).is_ok());
    }
}
