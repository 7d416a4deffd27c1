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
                Output::Send {
                    message: ServerMessage::MessageReceived { message_id, .. },
                    ..
                } => Some(message_id),
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
            Output::Send { conn, message } => Some((*conn, message.clone())),
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

#[test]
fn a_message_is_acknowledged_and_pushed_only_once_durable() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(2), &bob);
    let outputs = h.client(conn(1), &alice, send_to(&bob, 7));
    // Only the append: nothing promises durability before the log does.
    assert_eq!(outputs.len(), 1);
    let [Record::Message(stored)] = &appends(&outputs)[..] else {
        panic!("one message record: {outputs:?}");
    };
    assert_eq!(
        (&stored.from, &stored.to, stored.client_msg_id),
        (&alice, &bob, 7)
    );
    assert_eq!(stored.timestamp_ms, T0);
    let outputs = h.sync();
    let id = stored.id;
    assert_eq!(
        sends(&outputs),
        vec![
            (
                conn(1),
                ServerMessage::MessageReceived {
                    client_msg_id: 7,
                    message_id: id,
                    timestamp_ms: T0
                }
            ),
            (
                conn(2),
                ServerMessage::IncomingMessage(wire::IncomingMessage {
                    message_id: id,
                    from: alice.clone(),
                    to: Target::User(bob.clone()),
                    content: "message 7".into(),
                    media: None,
                    timestamp_ms: T0,
                })
            ),
        ]
    );
    // A durable point that covers nothing new releases nothing.
    assert!(h.sync().is_empty());
}

#[test]
fn a_retry_gets_the_same_id_and_is_not_delivered_again() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(2), &bob);
    // The retry arrives before the first is durable: its answer waits too.
    let first = h.client(conn(1), &alice, send_to(&bob, 7));
    let retry = h.client(conn(3), &alice, send_to(&bob, 7));
    assert_eq!(appends(&first).len(), 1);
    assert!(retry.is_empty(), "{retry:?}");
    let outputs = h.sync();
    let received: Vec<_> = sends(&outputs)
        .into_iter()
        .filter(|(_, m)| matches!(m, ServerMessage::MessageReceived { .. }))
        .collect();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].1, received[1].1);
    assert_eq!((received[0].0, received[1].0), (conn(1), conn(3)));
    assert_eq!(incoming_ids(&outputs, conn(2)).len(), 1);
    // A retry after durability answers at once, with no record and no delivery.
    h.now_ms += 5000;
    let later = h.client(conn(1), &alice, send_to(&bob, 7));
    assert_eq!(sends(&later), vec![(conn(1), received[0].1.clone())]);
    // The same client_msg_id from another user is another message.
    let carol = user("carol");
    let other = h.send(conn(4), &carol, &bob, 7);
    let ServerMessage::MessageReceived { message_id, .. } = received[0].1 else {
        unreachable!()
    };
    assert_ne!(other, message_id);
}

#[test]
fn the_dedup_window_expires_on_tick() {
    let config = Config {
        dedup_window_ms: 1000,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob) = (user("alice"), user("bob"));
    let first = h.send(conn(1), &alice, &bob, 7);
    h.now_ms += 999;
    h.step(Input::Tick);
    assert_eq!(h.send(conn(1), &alice, &bob, 7), first);
    h.now_ms += 2;
    h.step(Input::Tick);
    assert!(h.send(conn(1), &alice, &bob, 7) > first);
}

#[test]
fn the_dedup_table_is_bounded_oldest_first() {
    let config = Config {
        dedup_entries_max: 2,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob) = (user("alice"), user("bob"));
    let one = h.send(conn(1), &alice, &bob, 1);
    let two = h.send(conn(1), &alice, &bob, 2);
    let three = h.send(conn(1), &alice, &bob, 3);
    assert_eq!(h.shard.stats().dedup_entries, 2);
    assert_eq!(h.send(conn(1), &alice, &bob, 3), three);
    assert_eq!(h.send(conn(1), &alice, &bob, 2), two);
    assert!(h.send(conn(1), &alice, &bob, 1) > one);
}

#[test]
fn an_offline_recipient_gets_the_inbox_in_order_on_every_connection() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, carol, bob) = (user("alice"), user("carol"), user("bob"));
    let a = h.send(conn(1), &alice, &bob, 1);
    h.now_ms -= 10_000; // the clock steps back: ids still increase
    let b = h.send(conn(3), &carol, &bob, 1);
    let c = h.send(conn(1), &alice, &bob, 2);
    assert!(a < b && b < c);
    assert_eq!(h.shard.inbox(&bob).collect::<Vec<_>>(), vec![a, b, c]);
    let outputs = h.attach(conn(2), &bob);
    assert_eq!(incoming_ids(&outputs, conn(2)), vec![a, b, c]);
    // At-least-once: until a device acknowledges, every new connection gets them again.
    h.step(Input::Detach {
        conn: conn(2),
        user: bob.clone(),
    });
    let outputs = h.attach(conn(5), &bob);
    assert_eq!(incoming_ids(&outputs, conn(5)), vec![a, b, c]);
    h.client(
        conn(5),
        &bob,
        ClientMessage::MessageDelivered {
            message_ids: vec![b],
        },
    );
    let outputs = h.attach(conn(6), &bob);
    assert_eq!(incoming_ids(&outputs, conn(6)), vec![a, c]);
}

#[test]
fn a_message_not_yet_durable_reaches_a_new_connection_once() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    h.client(conn(1), &alice, send_to(&bob, 1));
    let attached = h.step(Input::Attach {
        conn: conn(2),
        user: bob.clone(),
    });
    assert!(incoming_ids(&attached, conn(2)).is_empty());
    let outputs = h.sync();
    assert_eq!(incoming_ids(&outputs, conn(2)).len(), 1);
}

#[test]
fn delivery_and_read_receipts_reach_the_sender() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(1), &alice);
    h.attach(conn(2), &bob);
    h.attach(conn(3), &alice);
    let m1 = h.send(conn(1), &alice, &bob, 1);
    let m2 = h.send(conn(1), &alice, &bob, 2);
    h.now_ms += 10;
    let t = h.now_ms;
    let outputs = h.client(
        conn(2),
        &bob,
        ClientMessage::MessageDelivered {
            message_ids: vec![m1],
        },
    );
    assert!(sends(&outputs).is_empty(), "receipts wait for the log");
    let [Record::Receipts { by, items, .. }] = &appends(&outputs)[..] else {
        panic!("one receipts record: {outputs:?}");
    };
    assert_eq!((by, items.len()), (&bob, 1));
    let outputs = h.sync();
    let delivered = receipt(ReceiptKind::Delivered, m1, &bob, t);
    assert_eq!(
        sends(&outputs),
        vec![(conn(1), delivered.clone()), (conn(3), delivered)]
    );
    // Alice's connections had it: handed over at once.
    assert_eq!(
        appends(&outputs),
        vec![Record::ReceiptHandedOver {
            message_id: m1,
            kind: ReceiptKind::Delivered
        }]
    );
    assert_eq!(h.shard.inbox(&bob).collect::<Vec<_>>(), vec![m2]);
    // A read of a delivered message: only the read receipt. A read of an undelivered
    // one: delivered, then read.
    h.now_ms += 10;
    let t = h.now_ms;
    h.client(
        conn(2),
        &bob,
        ClientMessage::MessageRead {
            message_ids: vec![m1, m2],
        },
    );
    let outputs = h.sync();
    let to_alice: Vec<ServerMessage> = sends(&outputs)
        .into_iter()
        .filter(|(c, _)| *c == conn(1))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(
        to_alice,
        vec![
            receipt(ReceiptKind::Read, m1, &bob, t),
            receipt(ReceiptKind::Delivered, m2, &bob, t),
            receipt(ReceiptKind::Read, m2, &bob, t),
        ]
    );
    assert_eq!(h.shard.inbox(&bob).count(), 0);
    // Reading again sends nothing: the message is neither in the inbox nor unread.
    let outputs = h.client(
        conn(2),
        &bob,
        ClientMessage::MessageRead {
            message_ids: vec![m1],
        },
    );
    assert!(outputs.is_empty());
}

#[test]
fn ids_of_other_users_messages_are_ignored_silently() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob, mallory) = (user("alice"), user("bob"), user("mallory"));
    let m = h.send(conn(1), &alice, &bob, 1);
    for message in [
        ClientMessage::MessageDelivered {
            message_ids: vec![m, MessageId(12345)],
        },
        ClientMessage::MessageRead {
            message_ids: vec![m],
        },
    ] {
        let outputs = h.client(conn(9), &mallory, message);
        assert!(appends(&outputs).is_empty() && sends(&outputs).is_empty());
    }
    assert_eq!(h.shard.inbox(&bob).collect::<Vec<_>>(), vec![m]);
}

#[test]
fn receipts_wait_for_an_offline_sender() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    let m = h.send(conn(1), &alice, &bob, 1);
    let t = h.now_ms;
    let outputs = h.client(
        conn(2),
        &bob,
        ClientMessage::MessageRead {
            message_ids: vec![m],
        },
    );
    assert_eq!(appends(&outputs).len(), 1);
    let outputs = h.sync();
    // Alice has no connection: both receipts are queued, durably, and only then handed
    // over.
    let records = appends(&outputs);
    assert!(matches!(
        &records[..],
        [Record::ReceiptQueued { .. }, Record::ReceiptQueued { .. }]
    ));
    let outputs = h.sync();
    assert_eq!(appends(&outputs).len(), 2, "two hand-overs: {outputs:?}");
    let outputs = h.step(Input::Attach {
        conn: conn(5),
        user: alice.clone(),
    });
    assert_eq!(
        sends(&outputs),
        vec![
            (conn(5), receipt(ReceiptKind::Delivered, m, &bob, t)),
            (conn(5), receipt(ReceiptKind::Read, m, &bob, t)),
        ]
    );
    assert_eq!(
        appends(&outputs),
        vec![Record::ReceiptsFlushed {
            user: alice.clone()
        }]
    );
    // Sent once: the next connection gets nothing.
    let outputs = h.attach(conn(6), &alice);
    assert!(sends(&outputs).is_empty());
}

#[test]
fn queued_receipts_per_user_are_bounded_oldest_dropped() {
    let config = Config {
        receipts_queued_per_user_max: 2,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob) = (user("alice"), user("bob"));
    let ids: Vec<MessageId> = (1..=3).map(|i| h.send(conn(1), &alice, &bob, i)).collect();
    for id in &ids {
        h.step_durably(Input::Client {
            conn: conn(2),
            user: bob.clone(),
            message: ClientMessage::MessageDelivered {
                message_ids: vec![*id],
            },
        });
        h.sync();
    }
    let outputs = h.attach(conn(5), &alice);
    let got: Vec<MessageId> = sends(&outputs)
        .into_iter()
        .filter_map(|(_, m)| match m {
            ServerMessage::MessageDelivered(r) => Some(r.message_id),
            _ => None,
        })
        .collect();
    assert_eq!(got, ids[1..].to_vec());
}

#[test]
fn the_read_index_is_bounded_oldest_forgotten() {
    let config = Config {
        read_index_entries_max: 1,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(1), &alice);
    let m1 = h.send(conn(1), &alice, &bob, 1);
    let m2 = h.send(conn(1), &alice, &bob, 2);
    h.step_durably(Input::Client {
        conn: conn(2),
        user: bob.clone(),
        message: ClientMessage::MessageDelivered {
            message_ids: vec![m1, m2],
        },
    });
    let outputs = h.step_durably(Input::Client {
        conn: conn(2),
        user: bob.clone(),
        message: ClientMessage::MessageRead {
            message_ids: vec![m1, m2],
        },
    });
    let reads: Vec<MessageId> = sends(&outputs)
        .into_iter()
        .filter_map(|(_, m)| match m {
            ServerMessage::MessageRead(r) => Some(r.message_id),
            _ => None,
        })
        .collect();
    assert_eq!(reads, vec![m2]);
}

fn presence(online: bool, user: &UserId, last_seen_ms: Option<u64>) -> ServerMessage {
    ServerMessage::Presence {
        user: user.clone(),
        online,
        last_seen_ms,
    }
}

#[test]
fn presence_follows_connections_and_heartbeats() {
    let config = Config {
        presence_ttl_ms: 1000,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob, nobody) = (user("alice"), user("bob"), user("nobody"));
    let watcher = conn(9);
    let outputs = h.client(
        watcher,
        &alice,
        ClientMessage::PresenceSubscribe {
            users: vec![bob.clone(), nobody.clone()],
        },
    );
    assert_eq!(
        sends(&outputs),
        vec![
            (watcher, presence(false, &bob, None)),
            (watcher, presence(false, &nobody, None)),
        ]
    );
    // Connecting counts as an own action: online, last seen now.
    let t1 = h.now_ms;
    let outputs = h.attach(conn(2), &bob);
    assert_eq!(
        sends(&outputs),
        vec![(watcher, presence(true, &bob, Some(t1)))]
    );
    // Heartbeats keep bob online; no push while nothing changes.
    h.now_ms += 900;
    let t2 = h.now_ms;
    assert!(h.client(conn(2), &bob, ClientMessage::Heartbeat).is_empty());
    h.now_ms += 900;
    assert!(h.step(Input::Tick).is_empty());
    assert_eq!(
        h.shard.presence(&bob),
        Presence {
            online: true,
            last_seen_ms: Some(t2)
        }
    );
    // Silence: offline at the first tick past the TTL, last seen at the last action.
    h.now_ms += 100;
    let outputs = h.step(Input::Tick);
    assert_eq!(
        sends(&outputs),
        vec![(watcher, presence(false, &bob, Some(t2)))]
    );
    // An own action brings a connected user back.
    h.now_ms += 5000;
    let t3 = h.now_ms;
    let outputs = h.client(
        conn(2),
        &bob,
        ClientMessage::Typing {
            to: Target::User(alice.clone()),
        },
    );
    assert_eq!(
        sends(&outputs),
        vec![(watcher, presence(true, &bob, Some(t3)))]
    );
    // Closing the last connection is offline at once.
    let outputs = h.step(Input::Detach {
        conn: conn(2),
        user: bob.clone(),
    });
    assert_eq!(
        sends(&outputs),
        vec![(watcher, presence(false, &bob, Some(t3)))]
    );
    // A background delivery is not an action of bob's.
    h.now_ms += 10;
    h.send(conn(1), &alice, &bob, 1);
    assert_eq!(h.shard.presence(&bob).last_seen_ms, Some(t3));
    // Unsubscribed: no more pushes.
    h.client(
        watcher,
        &alice,
        ClientMessage::PresenceUnsubscribe {
            users: vec![bob.clone()],
        },
    );
    let outputs = h.attach(conn(3), &bob);
    assert!(sends(&outputs).iter().all(|(c, _)| *c != watcher));
    assert_eq!(h.shard.stats().subscriptions, 1);
}

#[test]
fn a_clock_stepping_back_does_not_keep_a_silent_user_online() {
    let config = Config {
        presence_ttl_ms: 1000,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let bob = user("bob");
    h.attach(conn(2), &bob);
    h.now_ms -= 60_000;
    h.step(Input::Tick);
    assert!(h.shard.presence(&bob).online);
    h.now_ms += 1000;
    h.step(Input::Tick);
    assert!(!h.shard.presence(&bob).online);
}

#[test]
fn closing_a_connection_drops_its_subscriptions() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    h.attach(conn(1), &alice);
    let subscribe = ClientMessage::PresenceSubscribe {
        users: vec![bob.clone(), carol.clone(), bob.clone()],
    };
    let outputs = h.client(conn(1), &alice, subscribe.clone());
    assert_eq!(sends(&outputs).len(), 3, "one answer per listed user");
    assert_eq!(h.shard.stats().subscriptions, 2);
    h.client(conn(1), &alice, subscribe);
    assert_eq!(
        h.shard.stats().subscriptions,
        2,
        "subscribing twice is once"
    );
    h.step(Input::Detach {
        conn: conn(1),
        user: alice.clone(),
    });
    assert_eq!(h.shard.stats().subscriptions, 0);
    h.client(
        conn(7),
        &alice,
        ClientMessage::PresenceSubscribe {
            users: vec![bob.clone()],
        },
    );
    h.step(Input::Closed { conn: conn(7) });
    assert_eq!(h.shard.stats().subscriptions, 0);
    assert!(sends(&h.attach(conn(2), &bob)).is_empty());
}

#[test]
fn subscriptions_are_bounded() {
    let config = Config {
        subscriptions_max: 1,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let alice = user("alice");
    let outputs = h.client(
        conn(1),
        &alice,
        ClientMessage::PresenceSubscribe {
            users: vec![user("bob"), user("carol")],
        },
    );
    assert_eq!(
        sends(&outputs),
        vec![(
            conn(1),
            error(
                ErrorCode::Overloaded,
                "too many presence subscriptions",
                Correlation::None
            )
        )]
    );
}

#[test]
fn typing_is_forwarded_and_never_logged() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(2), &bob);
    h.attach(conn(3), &bob);
    let outputs = h.client(
        conn(1),
        &alice,
        ClientMessage::Typing {
            to: Target::User(bob.clone()),
        },
    );
    let typing = ServerMessage::Typing {
        from: alice.clone(),
        to: Target::User(bob.clone()),
    };
    assert_eq!(
        outputs,
        vec![
            Output::Send {
                conn: conn(2),
                message: typing.clone()
            },
            Output::Send {
                conn: conn(3),
                message: typing
            }
        ]
    );
}

#[test]
fn groups_and_history_are_refused_with_their_correlation() {
    let mut h = Harness::new(Config::DEFAULT);
    let alice = user("alice");
    let check = |h: &mut Harness, message: ClientMessage, expected: ServerMessage| {
        let outputs = h.client(conn(1), &alice, message);
        assert_eq!(sends(&outputs), vec![(conn(1), expected)]);
        assert!(appends(&outputs).is_empty());
    };
    check(
        &mut h,
        ClientMessage::SendMessage(SendMessage {
            client_msg_id: 5,
            to: Target::Group(GroupId(1)),
            content: "hi".into(),
            media: None,
        }),
        error(
            ErrorCode::BadRequest,
            "groups are not supported yet",
            Correlation::ClientMsgId(5),
        ),
    );
    check(
        &mut h,
        ClientMessage::History(HistoryRequest {
            req_id: 8,
            with: Target::User(user("bob")),
            before: None,
            limit: 20,
        }),
        error(
            ErrorCode::BadRequest,
            "history is not supported yet",
            Correlation::ReqId(8),
        ),
    );
    check(
        &mut h,
        ClientMessage::Typing {
            to: Target::Group(GroupId(1)),
        },
        error(
            ErrorCode::BadRequest,
            "groups are not supported yet",
            Correlation::None,
        ),
    );
}

#[test]
fn a_full_inbox_is_backpressure() {
    let config = Config {
        inbox_messages_max: 2,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob) = (user("alice"), user("bob"));
    h.send(conn(1), &alice, &bob, 1);
    h.send(conn(1), &alice, &bob, 2);
    let outputs = h.client(conn(1), &alice, send_to(&bob, 3));
    assert_eq!(
        outputs,
        vec![Output::Send {
            conn: conn(1),
            message: error(
                ErrorCode::Overloaded,
                "the recipient's inbox is full",
                Correlation::ClientMsgId(3)
            )
        }]
    );
    // Another recipient is not affected.
    h.send(conn(1), &alice, &user("carol"), 4);
}

#[test]
fn a_full_pending_queue_is_backpressure() {
    let config = Config {
        pending_outputs_max: 4,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob) = (user("alice"), user("bob"));
    h.client(conn(1), &alice, send_to(&bob, 1));
    h.client(conn(1), &alice, send_to(&bob, 2));
    let outputs = h.client(conn(1), &alice, send_to(&bob, 3));
    assert_eq!(
        sends(&outputs),
        vec![(
            conn(1),
            error(
                ErrorCode::Overloaded,
                "the server is busy, try again",
                Correlation::ClientMsgId(3)
            )
        )]
    );
    assert_eq!(h.shard.stats().pending_outputs, 4);
    h.sync();
    assert_eq!(h.shard.stats().pending_outputs, 0);
    h.send(conn(1), &alice, &bob, 3);
}

#[test]
fn an_unwritable_log_refuses_new_messages_and_acknowledges_what_it_holds_once_durable() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    let bob_conn = conn(2);
    h.attach(bob_conn, &bob);
    // Accepted, then the commit failed: its answer waits for the rewrite.
    let accepted = h.client(conn(1), &alice, send_to(&bob, 1));
    assert_eq!(appends(&accepted).len(), 1);
    assert!(sends(&accepted).is_empty());
    assert!(h.step(Input::Storage { writable: false }).is_empty());
    let refused = h.client(conn(1), &alice, send_to(&bob, 2));
    assert!(appends(&refused).is_empty(), "nothing is stored");
    assert_eq!(
        sends(&refused),
        vec![(
            conn(1),
            error(
                ErrorCode::Overloaded,
                "the server cannot write its log right now; retry later with the same \
                 client_msg_id",
                Correlation::ClientMsgId(2)
            )
        )]
    );
    // A retry of the accepted one is not refused: it waits for the same answer.
    let retried = h.client(conn(1), &alice, send_to(&bob, 1));
    assert!(sends(&retried).is_empty() && appends(&retried).is_empty());
    assert!(h.step(Input::Storage { writable: true }).is_empty());
    let released = h.sync();
    let acks: Vec<_> = sends(&released)
        .into_iter()
        .filter(|(c, m)| *c == conn(1) && matches!(m, ServerMessage::MessageReceived { .. }))
        .collect();
    assert_eq!(acks.len(), 2, "the first send and its retry: {released:?}");
    assert_eq!(incoming_ids(&released, bob_conn).len(), 1);
    // The refused one, sent again, is accepted now.
    h.send(conn(1), &alice, &bob, 2);
}

#[test]
fn the_users_map_forgets_idle_users_first() {
    let config = Config {
        users_max: 2,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob, carol, dave) = (user("alice"), user("bob"), user("carol"), user("dave"));
    h.attach(conn(1), &alice);
    h.step(Input::Detach {
        conn: conn(1),
        user: alice.clone(),
    });
    assert!(h.shard.presence(&alice).last_seen_ms.is_some());
    h.attach(conn(2), &bob);
    // Full: carol takes the place of idle alice.
    h.send(conn(2), &bob, &carol, 1);
    assert_eq!(h.shard.presence(&alice).last_seen_ms, None);
    // Full and nobody idle: a message to dave is refused.
    let outputs = h.client(conn(2), &bob, send_to(&dave, 2));
    assert_eq!(
        sends(&outputs),
        vec![(
            conn(2),
            error(
                ErrorCode::Overloaded,
                "the server is busy, try again",
                Correlation::ClientMsgId(2)
            )
        )]
    );
}

#[test]
fn too_many_connections_for_one_user_are_refused() {
    let config = Config {
        conns_per_user_max: 1,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let bob = user("bob");
    h.attach(conn(1), &bob);
    let outputs = h.attach(conn(2), &bob);
    assert_eq!(
        sends(&outputs),
        vec![(
            conn(2),
            error(
                ErrorCode::Overloaded,
                "too many connections for this user",
                Correlation::None
            )
        )]
    );
}

/// Builds a harness that recovers from `log`.
fn recovered(config: Config, log: &[(Lsn, Record)], now_ms: u64) -> Harness {
    let shard = RouterShard::recover(config, 0, 1, log.iter().cloned());
    let mut h = Harness::with(shard);
    h.now_ms = now_ms;
    h.log = log.to_vec();
    h
}

#[test]
fn recovery_rebuilds_inboxes_dedup_receipts_and_the_id_sequence() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let m1 = h.send(conn(1), &alice, &bob, 1);
    let m2 = h.send(conn(1), &alice, &bob, 2);
    let m3 = h.send(conn(1), &alice, &carol, 3);
    h.step_durably(Input::Client {
        conn: conn(2),
        user: bob.clone(),
        message: ClientMessage::MessageDelivered {
            message_ids: vec![m1],
        },
    });
    h.sync();
    // Not durable: lost in the crash, never acknowledged.
    h.client(conn(1), &alice, send_to(&bob, 4));
    let durable = h.shard.durable_lsn();
    let log: Vec<(Lsn, Record)> = h
        .log
        .iter()
        .filter(|(l, _)| *l <= durable)
        .cloned()
        .collect();
    // The clock went back across the restart.
    let mut r = recovered(Config::DEFAULT, &log, T0 - 3_600_000);
    assert_eq!(r.shard.last_lsn(), durable);
    assert_eq!(r.shard.inbox(&bob).collect::<Vec<_>>(), vec![m2]);
    assert_eq!(r.shard.inbox(&carol).collect::<Vec<_>>(), vec![m3]);
    // Dedup survives: a retry gets the same id.
    assert_eq!(r.send(conn(1), &alice, &bob, 2), m2);
    // The delivered-unread index survives: reading m1 sends its read receipt.
    let before = r.log.len();
    r.step_durably(Input::Client {
        conn: conn(2),
        user: bob.clone(),
        message: ClientMessage::MessageRead {
            message_ids: vec![m1],
        },
    });
    let read = r.log[before..].iter().any(|(_, record)| {
        matches!(record, Record::Receipts { items, .. } if items[0].kind == ReceiptKind::Read)
    });
    assert!(read, "{:?}", &r.log[before..]);
    // New ids are greater than every recovered one.
    let m4 = r.send(conn(1), &alice, &bob, 4);
    assert!(m4 > m3);
    // The lost message's client_msg_id is new again.
    assert_eq!(r.shard.inbox(&bob).collect::<Vec<_>>(), vec![m2, m4]);
}

#[test]
fn receipts_not_handed_over_are_forwarded_again_after_recovery() {
    let n = 2;
    let alice = user_on(1, n, "a");
    let bob = user_on(0, n, "b");
    let mut h = Harness::with(RouterShard::new(Config::DEFAULT, 0, n));
    let m = h.send(conn(1), &alice, &bob, 1);
    h.now_ms += 5;
    let t = h.now_ms;
    h.client(
        conn(2),
        &bob,
        ClientMessage::MessageDelivered {
            message_ids: vec![m],
        },
    );
    let outputs = h.sync();
    let forwarded = PeerMessage::Receipt {
        to: alice.clone(),
        kind: ReceiptKind::Delivered,
        receipt: Receipt {
            message_id: m,
            by: bob.clone(),
            timestamp_ms: t,
        },
    };
    assert!(outputs.contains(&Output::Peer {
        shard: 1,
        message: forwarded.clone()
    }));
    // No answer: forwarded again after the retry interval, not before.
    h.now_ms += Config::DEFAULT.receipt_retry_ms - 1;
    assert!(h.step(Input::Tick).is_empty());
    h.now_ms += 1;
    assert_eq!(
        h.step(Input::Tick),
        vec![Output::Peer {
            shard: 1,
            message: forwarded.clone()
        }]
    );
    // A crash: the recovered shard forwards it on its first tick.
    let log = h.log.clone();
    let mut r = Harness::with(RouterShard::recover(Config::DEFAULT, 0, n, log));
    r.now_ms = h.now_ms;
    assert_eq!(
        r.step(Input::Tick),
        vec![Output::Peer {
            shard: 1,
            message: forwarded.clone()
        }]
    );
    // The sender's owner takes it: no more forwarding, and a record says so.
    let outputs = r.step(Input::Peer(PeerMessage::ReceiptStored {
        message_id: m,
        kind: ReceiptKind::Delivered,
    }));
    assert_eq!(
        appends(&outputs),
        vec![Record::ReceiptHandedOver {
            message_id: m,
            kind: ReceiptKind::Delivered
        }]
    );
    r.now_ms += 60_000;
    assert!(r.step(Input::Tick).is_empty());
    assert_eq!(r.shard.stats().receipts_outstanding, 0);
}

#[test]
fn the_senders_owner_stores_receipts_durably_and_drops_duplicates() {
    let n = 2;
    let alice = user_on(1, n, "a");
    let bob = user_on(0, n, "b");
    let mut h = Harness::with(RouterShard::new(Config::DEFAULT, 1, n));
    let message_id = MessageId(1 << 30); // stored on shard 0
    let forwarded = PeerMessage::Receipt {
        to: alice.clone(),
        kind: ReceiptKind::Read,
        receipt: Receipt {
            message_id,
            by: bob.clone(),
            timestamp_ms: 5,
        },
    };
    let stored = Output::Peer {
        shard: 0,
        message: PeerMessage::ReceiptStored {
            message_id,
            kind: ReceiptKind::Read,
        },
    };
    // Alice is offline: queued, and `ReceiptStored` only once the queue record is durable.
    let outputs = h.step(Input::Peer(forwarded.clone()));
    assert!(matches!(
        &appends(&outputs)[..],
        [Record::ReceiptQueued { .. }]
    ));
    assert_eq!(outputs.len(), 1);
    assert_eq!(h.sync(), vec![stored.clone()]);
    // A duplicate is answered again but not queued again.
    assert_eq!(h.step(Input::Peer(forwarded.clone())), vec![stored.clone()]);
    let outputs = h.attach(conn(3), &alice);
    assert_eq!(
        sends(&outputs),
        vec![(conn(3), receipt(ReceiptKind::Read, message_id, &bob, 5))]
    );
    // Online: to the connection at once and handed over at once.
    let other = MessageId(2 << 30);
    let online = PeerMessage::Receipt {
        to: alice.clone(),
        kind: ReceiptKind::Delivered,
        receipt: Receipt {
            message_id: other,
            by: bob.clone(),
            timestamp_ms: 6,
        },
    };
    assert_eq!(
        h.step(Input::Peer(online)),
        vec![
            Output::Send {
                conn: conn(3),
                message: receipt(ReceiptKind::Delivered, other, &bob, 6)
            },
            Output::Peer {
                shard: 0,
                message: PeerMessage::ReceiptStored {
                    message_id: other,
                    kind: ReceiptKind::Delivered
                }
            }
        ]
    );
}

#[test]
fn activity_on_another_shard_is_forwarded_once_per_interval() {
    let n = 2;
    let alice = user_on(1, n, "a");
    let bob = user_on(0, n, "b");
    let mut h = Harness::with(RouterShard::new(Config::DEFAULT, 0, n));
    let activity = Output::Peer {
        shard: 1,
        message: PeerMessage::Activity {
            user: alice.clone(),
        },
    };
    let typing = ClientMessage::Typing {
        to: Target::User(bob.clone()),
    };
    assert_eq!(
        h.client(conn(1), &alice, typing.clone()),
        vec![activity.clone()]
    );
    h.now_ms += 500;
    assert!(h.client(conn(1), &alice, typing.clone()).is_empty());
    h.now_ms += 600;
    assert_eq!(h.client(conn(1), &alice, typing), vec![activity]);
    // At the owner, activity refreshes last_seen.
    let mut owner = Harness::with(RouterShard::new(Config::DEFAULT, 1, n));
    owner.now_ms = T0 + 42;
    owner.step(Input::Peer(PeerMessage::Activity {
        user: alice.clone(),
    }));
    assert_eq!(owner.shard.presence(&alice).last_seen_ms, Some(T0 + 42));
}

#[test]
fn a_checkpoint_alone_recovers_the_same_state() {
    let config = Config::DEFAULT;
    let mut h = Harness::new(config.clone());
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let m1 = h.send(conn(1), &alice, &bob, 1);
    let m2 = h.send(conn(1), &alice, &bob, 2);
    let m3 = h.send(conn(3), &carol, &bob, 1);
    h.step_durably(Input::Client {
        conn: conn(2),
        user: bob.clone(),
        message: ClientMessage::MessageDelivered {
            message_ids: vec![m1, m3],
        },
    });
    h.step_durably(Input::Client {
        conn: conn(2),
        user: bob.clone(),
        message: ClientMessage::MessageRead {
            message_ids: vec![m3],
        },
    });
    h.sync();
    let outputs = h.step(Input::Checkpoint);
    let records = appends(&outputs);
    assert!(matches!(
        records.first(),
        Some(Record::CheckpointBegin { .. })
    ));
    let Some(Record::CheckpointEnd { begin }) = records.last() else {
        panic!("a checkpoint ends with its end record");
    };
    h.sync();
    // Keep only the checkpoint, as the shell would after deleting older segments.
    let suffix: Vec<(Lsn, Record)> = h.log.iter().filter(|(l, _)| l >= begin).cloned().collect();
    let mut r = recovered(config, &suffix, T0 - 100_000);
    assert_eq!(r.shard.inbox(&bob).collect::<Vec<_>>(), vec![m2]);
    assert_eq!(r.shard.stats().dedup_entries, 3);
    assert_eq!(r.shard.stats().read_index_entries, 1);
    assert_eq!(r.send(conn(1), &alice, &bob, 1), m1);
    assert_eq!(r.send(conn(3), &carol, &bob, 1), m3);
    assert!(r.send(conn(1), &alice, &bob, 9) > m3);
    // Alice was offline: her receipts are queued and reach her on connecting.
    let outputs = r.attach(conn(1), &alice);
    let kinds: Vec<&str> = sends(&outputs).iter().map(|(_, m)| m.type_name()).collect();
    assert_eq!(kinds, vec!["message_delivered"]);
    let outputs = r.attach(conn(3), &carol);
    let kinds: Vec<&str> = sends(&outputs).iter().map(|(_, m)| m.type_name()).collect();
    assert_eq!(kinds, vec!["message_delivered", "message_read"]);
}

#[test]
fn bodies_past_the_budget_are_sent_and_checkpointed_from_the_log() {
    // "message N" is 9 bytes: the budget holds two bodies.
    let mut h = Harness::new(Config {
        inbox_body_bytes_max: 18,
        ..Config::DEFAULT
    });
    let (alice, bob) = (user("alice"), user("bob"));
    let ids: Vec<MessageId> = (1..=4).map(|n| h.send(conn(1), &alice, &bob, n)).collect();
    let stats = h.shard.stats();
    assert_eq!((stats.spilled_messages, stats.body_bytes), (2, 18));
    // Where each message's record is, as the shell's log holds it.
    let lsn_of = |h: &Harness, id: MessageId| {
        h.log
            .iter()
            .rev()
            .find(|(_, record)| matches!(record, Record::Message(m) if m.id == id))
            .map(|(lsn, _)| *lsn)
            .unwrap()
    };
    let outputs = h.attach(conn(2), &bob);
    let expected: Vec<Output> = ids[..2]
        .iter()
        .map(|id| Output::SendStored {
            conn: conn(2),
            message_id: *id,
            lsn: lsn_of(&h, *id),
        })
        .collect();
    assert_eq!(
        outputs[..2],
        expected[..],
        "the oldest two come from the log, in order"
    );
    assert_eq!(incoming_ids(&outputs[2..], conn(2)), ids[2..]);
    // The shell turns the record into the same message that memory would have given.
    let record = &h
        .log
        .iter()
        .find(|(lsn, _)| *lsn == lsn_of(&h, ids[0]))
        .unwrap()
        .1;
    let ServerMessage::IncomingMessage(first) = crate::incoming_of(record, ids[0]).unwrap() else {
        panic!("an incoming message");
    };
    assert_eq!(first.content, "message 1");
    assert!(crate::incoming_of(record, ids[1]).is_none(), "another id");

    // A checkpoint copies the spilled ones from the log and the others from memory; after
    // it, their bodies are read from the copies.
    let old = lsn_of(&h, ids[0]);
    let outputs = h.step(Input::Checkpoint);
    let copies: Vec<(Lsn, Lsn)> = outputs
        .iter()
        .filter_map(|output| match output {
            Output::AppendCopy { lsn, from } => Some((*lsn, *from)),
            _ => None,
        })
        .collect();
    assert_eq!(copies.len(), 2);
    assert_eq!(copies[0].1, old);
    let lsns: Vec<Lsn> = outputs
        .iter()
        .filter_map(|output| match output {
            Output::Append { lsn, .. } | Output::AppendCopy { lsn, .. } => Some(*lsn),
            _ => None,
        })
        .collect();
    assert!(
        lsns.windows(2).all(|w| w[1] == w[0].next()),
        "one lsn sequence"
    );
    h.sync();
    let outputs = h.attach(conn(3), &bob);
    assert_eq!(
        outputs[0],
        Output::SendStored {
            conn: conn(3),
            message_id: ids[0],
            lsn: copies[0].0,
        }
    );
    // Delivered: the spilled message leaves the shard like any other.
    h.client(
        conn(3),
        &bob,
        ClientMessage::MessageDelivered {
            message_ids: ids.clone(),
        },
    );
    h.sync();
    let stats = h.shard.stats();
    assert_eq!(
        (
            stats.stored_messages,
            stats.spilled_messages,
            stats.body_bytes
        ),
        (0, 0, 0)
    );
}

/// Records the outputs add to the log: appends and copies.
fn records_added(outputs: &[Output]) -> usize {
    outputs
        .iter()
        .filter(|o| matches!(o, Output::Append { .. } | Output::AppendCopy { .. }))
        .count()
}

fn acknowledge(h: &mut Harness, conn: ConnId, by: &UserId, ids: &[MessageId], read: bool) {
    let message_ids = ids.to_vec();
    let message = if read {
        ClientMessage::MessageRead { message_ids }
    } else {
        ClientMessage::MessageDelivered { message_ids }
    };
    h.step_durably(Input::Client {
        conn,
        user: by.clone(),
        message,
    });
}

/// One step of a checkpoint, checked: it appends at most the bound and nothing else.
fn checkpoint_step(h: &mut Harness, per_step: usize) -> Vec<Output> {
    let outputs = h.step(Input::Checkpoint);
    assert!(
        records_added(&outputs) <= per_step,
        "a checkpoint step appended {} records, past {per_step}",
        records_added(&outputs)
    );
    assert_eq!(records_added(&outputs), outputs.len(), "only appends");
    outputs
}

#[test]
fn a_checkpoint_spread_over_steps_with_live_traffic_recovers_the_same_state() {
    let n = 2;
    let config = Config {
        checkpoint_items_per_step_max: 3,
        // "message N" is 9 bytes: four bodies in memory, the older ones copied from the log.
        inbox_body_bytes_max: 40,
        ..Config::DEFAULT
    };
    let mut h = Harness::with(RouterShard::new(config.clone(), 0, n));
    // Alice is the other shard's, so her receipts stay outstanding here (nothing answers
    // for shard 1); carol and erin are this shard's and offline, so theirs are queued here.
    let alice = user_on(1, n, "a");
    let (bob, carol, dave) = (user_on(0, n, "b"), user_on(0, n, "c"), user_on(0, n, "d"));
    let (erin, fay) = (user_on(0, n, "e"), user_on(0, n, "f"));
    // One receipt queued for fay, and four for erin, more than one step copies: fay's
    // message is older than erin's although she comes after erin.
    let fays = [h.send(conn(7), &fay, &dave, 1)];
    let erins: Vec<MessageId> = (1..=4).map(|i| h.send(conn(6), &erin, &dave, i)).collect();
    let mut ids = Vec::new();
    for i in 1..=4 {
        ids.push(h.send(conn(1), &alice, &bob, i));
    }
    for i in 1..=3 {
        ids.push(h.send(conn(3), &carol, &bob, i));
    }
    for i in 5..=7 {
        ids.push(h.send(conn(1), &alice, &dave, i));
    }
    ids.push(h.send(conn(3), &carol, &dave, 4));
    acknowledge(&mut h, conn(4), &dave, &erins, false);
    acknowledge(&mut h, conn(4), &dave, &fays, false);
    acknowledge(&mut h, conn(2), &bob, &[ids[0], ids[4]], false);
    acknowledge(&mut h, conn(2), &bob, &[ids[1], ids[5]], true);
    acknowledge(&mut h, conn(4), &dave, &[ids[7]], false);
    let before = h.shard.stats();
    assert_eq!(
        (
            before.stored_messages,
            before.read_index_entries,
            before.receipts_outstanding
        ),
        (6, 8, 4)
    );
    assert!(before.spilled_messages > 0);
    h.sync();

    let mut begin = None;
    let mut steps = 0;
    let mut copies = 0;
    loop {
        let outputs = checkpoint_step(&mut h, 3);
        steps += 1;
        copies += outputs
            .iter()
            .filter(|o| matches!(o, Output::AppendCopy { .. }))
            .count();
        if begin.is_none() {
            let Some(Output::Append {
                lsn,
                record: Record::CheckpointBegin { .. },
            }) = outputs.first()
            else {
                panic!("a checkpoint begins with its begin record: {outputs:?}");
            };
            begin = Some(*lsn);
        }
        h.sync();
        if !h.shard.checkpoint_in_progress() {
            let Some(Output::Append {
                record: Record::CheckpointEnd { begin: end_of },
                ..
            }) = outputs.last()
            else {
                panic!("a checkpoint ends with its end record: {outputs:?}");
            };
            assert_eq!(Some(*end_of), begin);
            break;
        }
        // Live traffic between the steps, touching every kind of state, before and after
        // the cursors pass it.
        match steps {
            1 => drop(h.send(conn(1), &alice, &bob, 20)),
            2 => acknowledge(&mut h, conn(2), &bob, &[ids[6], ids[2]], false),
            3 => {
                h.step_durably(Input::Peer(PeerMessage::ReceiptStored {
                    message_id: ids[0],
                    kind: ReceiptKind::Delivered,
                }));
            }
            4 => {
                // Carol's queued receipts (three from before the begin, one from step 2)
                // go to her and are flushed.
                let outputs = h.attach(conn(3), &carol);
                assert_eq!(sends(&outputs).len(), 4);
                h.step_durably(Input::Detach {
                    conn: conn(3),
                    user: carol.clone(),
                });
            }
            5 => acknowledge(&mut h, conn(2), &bob, &[ids[0]], true),
            6 => acknowledge(&mut h, conn(4), &dave, &[ids[8], ids[10]], false),
            7 => {
                h.send(conn(3), &carol, &dave, 21);
                h.send(conn(1), &alice, &bob, 22);
            }
            // Erin's receipts grow while the cursor is in them.
            _ => {
                let erin_read = erins[(steps - 8) % erins.len()];
                acknowledge(&mut h, conn(4), &dave, &[ids[9], erin_read], true);
            }
        }
        assert!(steps < 100, "the checkpoint does not end");
    }
    assert!(steps >= 8, "spread over many steps: {steps}");
    assert!(copies > 0, "spilled bodies were copied from the log");
    let begin = begin.expect("begun");
    let begins = h
        .log
        .iter()
        .filter(|(_, r)| matches!(r, Record::CheckpointBegin { .. }));
    assert_eq!(begins.count(), 1, "steps during a checkpoint go on with it");
    h.send(conn(1), &alice, &bob, 23);
    h.sync();

    // The log with and without what came before the checkpoint describes the same state,
    // which is the live one.
    let live = h.shard.logged_state();
    let whole = RouterShard::recover(config.clone(), 0, n, h.log.iter().cloned());
    assert_eq!(whole.logged_state(), live);
    let suffix: Vec<(Lsn, Record)> = h.log.iter().filter(|(l, _)| *l >= begin).cloned().collect();
    let compacted = RouterShard::recover(config, 0, n, suffix.iter().cloned());
    assert_eq!(compacted.logged_state(), live);
    assert!(live.queued.contains_key(&erin) && live.queued.contains_key(&fay));
    assert!(!live.outstanding.is_empty());
    assert!(!live.read_index.is_empty() && live.dedup.len() > live.messages.len());

    // Spilled bodies are read from records the compacted log still holds.
    let outputs = h.attach(conn(5), &bob);
    let mut r = Harness::with(compacted);
    r.now_ms = h.now_ms;
    r.log = suffix;
    let recovered_outputs = r.attach(conn(5), &bob);
    for (outputs, log) in [(&outputs, &h.log), (&recovered_outputs, &r.log)] {
        let mut stored = 0;
        for output in outputs {
            if let Output::SendStored {
                message_id, lsn, ..
            } = output
            {
                stored += 1;
                assert!(
                    *lsn >= begin,
                    "{message_id:?} is read from before the checkpoint"
                );
                let (_, record) = log.iter().find(|(l, _)| l == lsn).expect("kept");
                assert!(crate::incoming_of(record, *message_id).is_some());
            }
        }
        assert!(stored > 0);
    }
    assert_eq!(
        incoming_ids(&outputs, conn(5)),
        incoming_ids(&recovered_outputs, conn(5))
    );
}

#[test]
fn a_crash_in_the_middle_of_a_checkpoint_recovers_the_whole_log_and_starts_again() {
    const PER_STEP: usize = 2;
    let config = Config {
        checkpoint_items_per_step_max: PER_STEP,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config.clone());
    let (alice, bob) = (user("alice"), user("bob"));
    let ids: Vec<MessageId> = (1..=6).map(|n| h.send(conn(1), &alice, &bob, n)).collect();
    acknowledge(&mut h, conn(2), &bob, &ids[..2], false);
    checkpoint_step(&mut h, PER_STEP);
    h.send(conn(1), &alice, &bob, 7);
    checkpoint_step(&mut h, PER_STEP);
    assert!(h.shard.checkpoint_in_progress());
    h.sync();
    // The crash: a begin without its end, so the shell deleted nothing.
    assert!(
        h.log
            .iter()
            .any(|(_, r)| matches!(r, Record::CheckpointBegin { .. }))
    );
    assert!(
        !h.log
            .iter()
            .any(|(_, r)| matches!(r, Record::CheckpointEnd { .. }))
    );
    let r = RouterShard::recover(config.clone(), 0, 1, h.log.iter().cloned());
    assert_eq!(r.logged_state(), h.shard.logged_state());
    assert!(
        !r.checkpoint_in_progress(),
        "a recovered shard has no checkpoint going"
    );
    let mut r = recovered(config.clone(), &h.log, h.now_ms);
    let first = checkpoint_step(&mut r, PER_STEP);
    let Some(Output::Append {
        lsn: begin,
        record: Record::CheckpointBegin { .. },
    }) = first.first().cloned()
    else {
        panic!("the next checkpoint starts afresh: {first:?}");
    };
    while r.shard.checkpoint_in_progress() {
        checkpoint_step(&mut r, PER_STEP);
    }
    r.sync();
    let suffix: Vec<(Lsn, Record)> = r.log.iter().filter(|(l, _)| *l >= begin).cloned().collect();
    let compacted = RouterShard::recover(config, 0, 1, suffix);
    assert_eq!(compacted.logged_state(), h.shard.logged_state());
}

#[test]
fn a_checkpoint_ends_while_new_messages_keep_coming() {
    // One item per step and ten new messages between steps: the cursors stop at
    // the last id of the begin, so new traffic cannot keep the checkpoint going.
    const PER_STEP: usize = 1;
    let config = Config {
        checkpoint_items_per_step_max: PER_STEP,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob) = (user("alice"), user("bob"));
    for n in 1..=5 {
        h.send(conn(1), &alice, &bob, n);
    }
    // Five messages (their dedup entries come with them) and the begin and end records.
    let mut steps = 0;
    let mut next = 100;
    loop {
        checkpoint_step(&mut h, PER_STEP);
        steps += 1;
        if !h.shard.checkpoint_in_progress() {
            break;
        }
        for _ in 0..10 {
            h.send(conn(1), &alice, &bob, next);
            next += 1;
        }
        assert!(steps <= 5 + 5 + 2, "the checkpoint chases new messages");
    }
    assert!(steps >= 5 + 2);
}

#[test]
fn a_message_too_large_to_log_is_refused_before_anything_changes() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(1), &alice);
    let before = h.shard.stats();
    let huge = ClientMessage::SendMessage(SendMessage {
        client_msg_id: 7,
        to: Target::User(bob.clone()),
        content: "x".repeat(crate::wal::PAYLOAD_BYTES_MAX),
        media: None,
    });
    let outputs = h.client(conn(1), &alice, huge);
    assert_eq!(
        outputs,
        vec![Output::Send {
            conn: conn(1),
            message: error(
                ErrorCode::TooLarge,
                "the request is too large to store",
                Correlation::ClientMsgId(7)
            )
        }]
    );
    let after = h.shard.stats();
    assert_eq!(after.records_refused, 1);
    assert_eq!(
        crate::shard::Stats {
            records_refused: 0,
            ..after
        },
        before,
        "no state changed"
    );
    // The shard goes on: the same client_msg_id with a loggable body is a new message, and
    // bob's inbox holds only that one.
    let id = h.send(conn(1), &alice, &bob, 7);
    let outputs = h.attach(conn(2), &bob);
    assert_eq!(incoming_ids(&outputs, conn(2)), vec![id]);
}

#[test]
fn an_empty_message_that_reaches_the_router_is_refused_not_logged() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    let empty = ClientMessage::SendMessage(SendMessage {
        client_msg_id: 3,
        to: Target::User(bob),
        content: String::new(),
        media: None,
    });
    let outputs = h.client(conn(1), &alice, empty);
    assert_eq!(
        outputs,
        vec![Output::Send {
            conn: conn(1),
            message: error(
                ErrorCode::BadRequest,
                "the request cannot be stored",
                Correlation::ClientMsgId(3)
            )
        }]
    );
    assert_eq!(h.shard.stats().records_refused, 1);
    assert_eq!(h.shard.last_lsn(), Lsn(0));
}

#[test]
fn a_read_of_more_receipts_than_one_record_holds_is_refused_and_changes_nothing() {
    // Senders with the longest ids: each receipt item is as large as it gets, so the record
    // passes the payload cap a little after RECEIPT_ITEMS_LOGGABLE_MAX items.
    let n = crate::wal::RECEIPT_ITEMS_LOGGABLE_MAX / 2 + 1;
    let config = Config {
        inbox_messages_max: n,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (sender, bob) = (user(&"s".repeat(64)), user("bob"));
    let ids: Vec<MessageId> = (0..n as u64)
        .map(|i| h.send(conn(1), &sender, &bob, i))
        .collect();
    let lsn = h.shard.last_lsn();
    let before = h.shard.stats();
    let read = ClientMessage::MessageRead {
        message_ids: ids.clone(),
    };
    let outputs = h.client(conn(2), &bob, read);
    assert_eq!(
        outputs,
        vec![Output::Send {
            conn: conn(2),
            message: error(
                ErrorCode::TooLarge,
                "the request is too large to store",
                Correlation::None
            )
        }]
    );
    assert_eq!(h.shard.last_lsn(), lsn, "nothing logged");
    assert_eq!(h.shard.stats().records_refused, 1);
    assert_eq!(h.shard.stats().stored_messages, before.stored_messages);
    // Fewer ids at once fit one record and are taken.
    let read = ClientMessage::MessageRead {
        message_ids: ids[..n - 1].to_vec(),
    };
    let outputs = h.client(conn(2), &bob, read);
    assert!(matches!(
        &appends(&outputs)[..],
        [Record::Receipts { items, .. }] if items.len() == 2 * (n - 1)
    ));
}

#[test]
fn a_tick_handles_at_most_tick_items_max_of_each_timer_and_the_rest_next_tick() {
    let config = Config {
        presence_ttl_ms: 1000,
        dedup_window_ms: 1000,
        tick_items_max: 2,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let alice = user("alice");
    let watcher = conn(100);
    let users: Vec<UserId> = (0..5).map(|i| user(&format!("user{i}"))).collect();
    h.client(
        watcher,
        &alice,
        ClientMessage::PresenceSubscribe {
            users: users.clone(),
        },
    );
    for (slot, user) in users.iter().enumerate() {
        h.attach(conn(slot as u32), user);
        h.send(conn(slot as u32), user, &alice, 1);
    }
    assert_eq!(h.shard.stats().dedup_entries, 5);
    // Everyone falls silent and every dedup entry leaves the window at the same tick.
    h.now_ms += 1001;
    let offline = |outputs: &[Output]| {
        sends(outputs)
            .into_iter()
            .filter(|(to, message)| {
                *to == watcher && matches!(message, ServerMessage::Presence { online: false, .. })
            })
            .count()
    };
    let mut seen = Vec::new();
    for _ in 0..3 {
        let outputs = h.step(Input::Tick);
        seen.push((offline(&outputs), h.shard.stats().dedup_entries));
    }
    assert_eq!(seen, vec![(2, 3), (2, 1), (1, 0)], "two per tick, in order");
    assert!(users.iter().all(|user| !h.shard.presence(user).online));
}
