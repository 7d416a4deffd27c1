//! `echo`: N connections, each sending `send_message` frames on the open-loop schedule of
//! `pairs` to a server that sends every frame straight back (the limit peer,
//! `bench/peers/uring-echo`), counting the echoed frame as the round trip.
//!
//! It is the ceiling to hold `pairs` against: the frames are written by the sender of
//! `pairs` itself (the same JSON, the same content with its send time, padded the same, the
//! same schedule), addressed to the connection's own user instead of a peer's (a user id of
//! the same form, so the same size to within a digit), and the server answers each with the
//! same bytes as one unmasked frame. What `pairs` adds on top (routing, the acknowledgement,
//! the delivery to another connection, its confirmation and receipt) is the server's work
//! that this scenario leaves out.
//!
//! Counters: `sent` as in `pairs`; an echo is counted in `acknowledged` (so the report and
//! its readers need no new field), per second as the series `echoed`; a frame sent and not
//! echoed by the end of the drain is `lost`, which fails the run. An echo that does not
//! carry the send time it was sent with, or that answers no outstanding send, is
//! `unexpected` and leaves its send outstanding. Latencies: `echo` from the intended send
//! time to the echo's arrival (no coordinated omission, as in `pairs`) and `send_lag`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

use futures_util::StreamExt as _;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use super::pairs::{
    self, CONTENT_CHARS_MAX, PairState, SEND_LAG, Stream, drain, intended_of, other_frame,
    record_latency, send_on_schedule, unexpected,
};
use super::rate::{RateSchedule, SendTimes};
use super::{Keep, Scenario, Timeline, Unit, UnitContext, UnitFuture};
use crate::cli::EchoArgs;
use crate::metrics::Counters;
use crate::sys;

const ECHO: (&str, &str) = ("echo", "intended send to its echo at the sender");

const LATENCIES: &[(&str, &str)] = &[ECHO, SEND_LAG];

const SERIES: &[&str] = &["sent", "echoed"];

#[derive(Debug)]
pub struct Echo {
    conns: usize,
    timeline: Timeline,
    rate: Arc<RateSchedule>,
    content_chars: usize,
}

impl Echo {
    pub fn new(args: &EchoArgs) -> anyhow::Result<Echo> {
        let pairs = &args.pairs;
        anyhow::ensure!(pairs.common.conns >= 1, "--conns must be at least 1");
        anyhow::ensure!(
            pairs.rate.is_finite() && pairs.rate > 0.0,
            "--rate must be a positive number of messages per second"
        );
        anyhow::ensure!(
            pairs.content_chars <= CONTENT_CHARS_MAX,
            "--content-chars is at most {CONTENT_CHARS_MAX}"
        );
        Ok(Echo {
            conns: pairs.common.conns,
            timeline: pairs::timeline(pairs),
            rate: Arc::new(RateSchedule::constant(pairs.rate)),
            content_chars: pairs.content_chars,
        })
    }
}

impl Scenario for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn conns(&self) -> usize {
        self.conns
    }

    fn unit_conns(&self) -> usize {
        1
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
        "sent but never echoed"
    }

    fn drive(&self, unit: Unit, context: UnitContext) -> UnitFuture {
        // Every connection is a sender, spread evenly over the send interval.
        let times = SendTimes::new(
            context.clock,
            Arc::clone(&self.rate),
            unit.index,
            self.conns,
        );
        let content_chars = self.content_chars;
        Box::pin(async move {
            let Some(conn) = unit.conns.into_iter().next() else {
                return Vec::new();
            };
            let (mut sink, mut stream) = conn.ws.split();
            let state = RefCell::new(PairState::default());
            let clock = context.clock;
            let send = async {
                send_on_schedule(
                    &mut sink,
                    &times,
                    &conn.user,
                    content_chars,
                    &state,
                    &context,
                )
                .await;
                // Nothing is ever acknowledged in the pairs sense, so the pair state is
                // settled once nothing is pending: every send echoed.
                drain(&state, clock).await;
            };
            tokio::select! {
                () = send => {}
                () = read_echoes(&mut stream, &state, &context) => {}
                () = sys::sleep_until_nanos(clock.drain_until) => {}
            }
            let lost = state.borrow().pending.len();
            Counters::add(&context.counters.lost, lost as u64);
            let keep: Keep = vec![Box::new(sink), Box::new(stream)];
            keep
        })
    }
}

/// A `send_message` as the server sent it back.
#[derive(Deserialize)]
struct Echoed<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    client_msg_id: u64,
    #[serde(borrow, default)]
    content: Cow<'a, str>,
}

/// The `client_msg_id` of an echoed `send_message` and the send time its content carries.
fn decode_echo(text: &str) -> Result<(u64, Option<u64>), String> {
    let echoed: Echoed<'_> =
        serde_json::from_str(text).map_err(|error| format!("unreadable echo: {error}"))?;
    if echoed.kind != "send_message" {
        return Err(format!("not an echo of send_message: {text:.80}"));
    }
    Ok((echoed.client_msg_id, intended_of(&echoed.content)))
}

/// Reads the echoes until the connection ends, matching each to its send.
async fn read_echoes(stream: &mut Stream, state: &RefCell<PairState>, context: &UnitContext) {
    loop {
        let frame = stream.next().await;
        let now = sys::now_nanos();
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            other if other_frame(&other, "echo", state, context) => continue,
            _ => return,
        };
        let (client_msg_id, carried) = match decode_echo(text.as_str()) {
            Ok(decoded) => decoded,
            Err(error) => {
                unexpected(context, error);
                continue;
            }
        };
        let mut borrowed = state.borrow_mut();
        let Some(&sent_at) = borrowed.pending.get(&client_msg_id) else {
            drop(borrowed);
            unexpected(
                context,
                format!("echo of unknown client_msg_id {client_msg_id}"),
            );
            continue;
        };
        if carried != Some(sent_at) {
            drop(borrowed);
            unexpected(
                context,
                format!("echo of client_msg_id {client_msg_id} does not carry its send time"),
            );
            continue;
        }
        borrowed.pending.remove(&client_msg_id);
        drop(borrowed);
        Counters::add(&context.counters.acknowledged, 1);
        let mut metrics = context.metrics.borrow_mut();
        metrics.count_in_second("echoed", context.clock.second_of(now));
        record_latency(&mut metrics, &context.clock, ECHO.0, sent_at, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::encode_send_message;

    fn args(conns: usize, rate: f64) -> EchoArgs {
        EchoArgs {
            pairs: pairs::test_args(conns, rate),
        }
    }

    #[test]
    fn the_echo_of_a_send_gives_back_its_id_and_send_time() {
        let text = encode_send_message(7, "lg-r-3", &pairs::content(123, 7, 40));
        assert_eq!(decode_echo(&text), Ok((7, Some(123))));
        assert_eq!(
            decode_echo(r#"{"type":"send_message","client_msg_id":8,"to":"u","content":"hi"}"#),
            Ok((8, None))
        );
        assert!(decode_echo(r#"{"type":"message_received","client_msg_id":7}"#).is_err());
        assert!(decode_echo(r#"{"type":"send_message"}"#).is_err());
        assert!(decode_echo("{").is_err());
    }

    #[test]
    fn any_number_of_connections_but_a_positive_rate() {
        assert!(Echo::new(&args(0, 10.0)).is_err());
        assert!(Echo::new(&args(1, 0.0)).is_err());
        assert!(Echo::new(&args(3, f64::INFINITY)).is_err());
        let mut too_long = args(3, 10.0);
        too_long.pairs.content_chars = CONTENT_CHARS_MAX + 1;
        assert!(Echo::new(&too_long).is_err());
        let echo = Echo::new(&args(3, 10.0)).unwrap();
        assert_eq!(echo.name(), "echo");
        assert_eq!(echo.unit_conns(), 1);
        assert_eq!(*echo.rate, RateSchedule::constant(10.0));
    }
}
