//! `idle`: hold every connection open, reading nothing but what the server volunteers, for
//! `--hold`. What it measures is the engine's: the connect rate and latency, and the server's
//! memory before and after.

use futures_util::StreamExt as _;
use tokio_tungstenite::tungstenite::Message;

use super::{Keep, Scenario, Timeline, Unit, UnitContext, UnitFuture};
use crate::cli::IdleArgs;
use crate::conn::{ServerMessage, decode_server_message};
use crate::metrics::Counters;
use crate::sys;

#[derive(Debug)]
pub struct Idle {
    conns: usize,
    timeline: Timeline,
}

impl Idle {
    pub fn new(args: &IdleArgs) -> anyhow::Result<Idle> {
        anyhow::ensure!(args.common.conns > 0, "--conns must be at least 1");
        Ok(Idle {
            conns: args.common.conns,
            timeline: Timeline {
                warmup: std::time::Duration::ZERO,
                run: args.hold,
                drain: std::time::Duration::ZERO,
            },
        })
    }
}

impl Scenario for Idle {
    fn name(&self) -> &'static str {
        "idle"
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
        &[]
    }

    fn series(&self) -> &'static [&'static str] {
        &[]
    }

    fn drive(&self, unit: Unit, context: UnitContext) -> UnitFuture {
        Box::pin(async move {
            let mut keep: Keep = Vec::with_capacity(unit.conns.len());
            for conn in unit.conns {
                let mut ws = conn.ws;
                let hold = sys::sleep_until_nanos(context.clock.measure_until);
                tokio::pin!(hold);
                loop {
                    tokio::select! {
                        () = &mut hold => break,
                        frame = ws.next() => match frame {
                            Some(Ok(Message::Text(text))) => {
                                let counter = match decode_server_message(text.as_str()) {
                                    Ok(ServerMessage::Error { .. }) => &context.counters.server_errors,
                                    _ => &context.counters.unexpected_frames,
                                };
                                Counters::add(counter, 1);
                            }
                            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                            Some(Ok(Message::Binary(_))) => {
                                Counters::add(&context.counters.unexpected_frames, 1);
                            }
                            Some(Ok(Message::Close(frame))) => {
                                Counters::add(&context.counters.conns_dropped, 1);
                                context.metrics.borrow_mut().error_sample(format!(
                                    "{}: closed by the server: {frame:?}",
                                    conn.user
                                ));
                                break;
                            }
                            Some(Err(error)) => {
                                Counters::add(&context.counters.conns_dropped, 1);
                                context
                                    .metrics
                                    .borrow_mut()
                                    .error_sample(format!("{}: {error}", conn.user));
                                break;
                            }
                            None => {
                                Counters::add(&context.counters.conns_dropped, 1);
                                break;
                            }
                        },
                    }
                }
                keep.push(Box::new(ws));
            }
            keep
        })
    }
}
