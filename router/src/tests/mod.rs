//! Unit tests of the router shard: each behaviour driven through `step` with explicit
//! times, checking the outputs in order.

use wire::{
    ClientMessage, Correlation, ErrorCode, ErrorMessage, GroupId, HistoryRequest, MessageId,
    Receipt, SendMessage, ServerMessage, Target, UserId,
};

use crate::config::Config;
use crate::ids::{ConnId, ShardId, owner_shard};
use crate::shard::{Input, Output, PeerMessage, Presence, RouterShard};
use crate::wal::{Lsn, ReceiptKind, Record};

mod bounds;
mod checkpoint;
mod cluster;
mod delivery;
mod determinism;
mod groups;
mod offline;
mod presence;
mod receipts;
mod recovery;
mod refusals;
mod retention;

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

/// The first of `prefix0`, `prefix1`, ... that `shard` owns.
fn user_on(shard: ShardId, n_shards: u16, prefix: &str) -> UserId {
    (0..)
        .map(|i| user(&format!("{prefix}{i}")))
        .find(|u| owner_shard(u, n_shards) == shard)
        .unwrap()
}

fn conn(slot: u32) -> ConnId {
    ConnId {
        shard: 0,
        slot,
        generation: 1,
    }
}

const T0: u64 = 1_700_000_000_000;

/// One shard, stepped by hand.
struct Harness {
    shard: RouterShard,
    now_ms: u64,
    log: Vec<(Lsn, Record)>,
}

impl Harness {
    fn new(config: Config) -> Harness {
        Harness::with(RouterShard::new(config, 0, 1))
    }

    fn with(shard: RouterShard) -> Harness {
        Harness {
            shard,
            now_ms: T0,
            log: Vec::new(),
        }
    }

    fn step(&mut self, input: Input) -> Vec<Output> {
        let mut outputs = Vec::new();
        self.shard.step(self.now_ms, input, &mut outputs);
        for output in &outputs {
            match output {
                Output::Append { lsn, record } => self.log.push((*lsn, record.clone())),
                // As the shell does: the record at `from`, appended again.
                Output::AppendCopy { lsn, from } => {
                    let record = self.record_at(*from).clone();
                    assert!(
                        matches!(record, Record::Message(_)),
                        "only messages are copied"
                    );
                    self.log.push((*lsn, record));
                }
                _ => {}
            }
        }
        outputs
    }

    fn record_at(&self, lsn: Lsn) -> &Record {
        let (_, record) = self
            .log
            .iter()
            .find(|(l, _)| *l == lsn)
            .unwrap_or_else(|| panic!("the log has no record at {lsn:?}"));
        record
    }

    /// Steps, makes the log durable, and returns everything but the appends.
    fn step_durably(&mut self, input: Input) -> Vec<Output> {
        let mut outputs = self.step(input);
        outputs.extend(self.sync());
        outputs.retain(|output| !matches!(output, Output::Append { .. }));
        outputs
    }

    fn sync(&mut self) -> Vec<Output> {
        let lsn = self.shard.last_lsn();
        self.step(Input::Durable { lsn })
    }

    fn client(&mut self, conn: ConnId, from: &UserId, message: ClientMessage) -> Vec<Output> {
        self.step(Input::Client {
            conn,
            user: from.clone(),
            message,
        })
    }

    fn attach(&mut self, conn: ConnId, user: &UserId) -> Vec<Output> {
        self.step_durably(Input::Attach {
            conn,
            user: user.clone(),
        })
    }

    fn send(&mut self, conn: ConnId, from: &UserId, to: &UserId, client_msg_id: u64) -> MessageId {
        let outputs = self.client(conn, from, send_to(to, client_msg_id));
        let mut outputs = outputs.into_iter().chain(self.sync());
        outputs
            .find_map(|output| match output {
                Output::Send { message, .. } => match *message {
                    ServerMessage::MessageReceived { message_id, .. } => Some(message_id),
                    _ => None,
                },
                _ => None,
            })
            .expect("acknowledged")
    }
}

fn send_to(to: &UserId, client_msg_id: u64) -> ClientMessage {
    ClientMessage::SendMessage(SendMessage {
        client_msg_id,
        to: Target::User(to.clone()),
        content: format!("message {client_msg_id}"),
        media: None,
    })
}

fn sends(outputs: &[Output]) -> Vec<(ConnId, ServerMessage)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Send { conn, message } => Some((*conn, ServerMessage::clone(message))),
            _ => None,
        })
        .collect()
}

fn appends(outputs: &[Output]) -> Vec<Record> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Append { record, .. } => Some(record.clone()),
            _ => None,
        })
        .collect()
}

fn incoming_ids(outputs: &[Output], to: ConnId) -> Vec<MessageId> {
    sends(outputs)
        .into_iter()
        .filter_map(|(conn, message)| match message {
            ServerMessage::IncomingMessage(incoming) if conn == to => Some(incoming.message_id),
            _ => None,
        })
        .collect()
}

fn error(code: ErrorCode, message: &str, correlation: Correlation) -> ServerMessage {
    ServerMessage::Error(ErrorMessage {
        code,
        message: message.into(),
        correlation,
        retry_after_ms: None,
    })
}

fn receipt(
    kind: ReceiptKind,
    message_id: MessageId,
    by: &UserId,
    timestamp_ms: u64,
) -> ServerMessage {
    let receipt = Receipt {
        message_id,
        by: by.clone(),
        timestamp_ms,
    };
    match kind {
        ReceiptKind::Delivered => ServerMessage::MessageDelivered(receipt),
        ReceiptKind::Read => ServerMessage::MessageRead(receipt),
    }
}

/// Builds a harness that recovers from `log`.
fn recovered(config: Config, log: &[(Lsn, Record)], now_ms: u64) -> Harness {
    let shard = RouterShard::recover(config, 0, 1, log.iter().cloned());
    let mut h = Harness::with(shard);
    h.now_ms = now_ms;
    h.log = log.to_vec();
    h
}
