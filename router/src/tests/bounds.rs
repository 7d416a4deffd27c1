//! Bounds and backpressure: a full inbox, a full durability gate, a log that cannot be
//! written, the users map, connections per user, and the work one tick does.

use super::*;

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
            .into()
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
fn a_group_read_that_would_pass_the_full_pending_queue_is_refused_busy_not_a_crash() {
    let config = Config {
        pending_outputs_max: 4,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob) = (user("alice"), user("bob"));
    h.client(conn(1), &alice, send_to(&bob, 1));
    h.client(conn(1), &alice, send_to(&bob, 2));
    assert_eq!(h.shard.stats().pending_outputs, 4, "the gate is full");
    let read = |h: &mut Harness| {
        let outputs = h.step(Input::Group {
            token: 5,
            user: alice.clone(),
            request: crate::shard::GroupRequest::List,
        });
        outputs
            .into_iter()
            .filter_map(|output| match output {
                Output::GroupAnswer { token: 5, answer } => Some(answer),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        read(&mut h),
        vec![crate::shard::GroupAnswer::Refused(
            crate::shard::GroupRefusal::Busy
        )]
    );
    // Once the log is durable the same read is answered.
    h.sync();
    assert_eq!(
        read(&mut h),
        vec![crate::shard::GroupAnswer::Groups(Vec::new())]
    );
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
