//! Presence: online and offline with connections and own actions, a clock stepping back,
//! subscriptions and their bound, and activity forwarded from other shards.

use super::*;

fn presence(online: bool, user: &UserId, last_seen_ms: Option<u64>) -> ServerMessage {
    ServerMessage::Presence {
        user: user.clone(),
        online,
        last_seen_ms,
    }
}

/// One scenario, step by step: presence through attach, heartbeats, silence and detach.
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

/// While the shell sheds ephemeral work, presence changes reach no subscriber (counted),
/// answers to a subscription still go, and once it stops the next change goes out again.
#[test]
fn shedding_stops_presence_updates_but_not_answers() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let watcher = conn(9);
    let subscribe = |users: Vec<UserId>| ClientMessage::PresenceSubscribe { users };
    h.client(watcher, &alice, subscribe(vec![bob.clone()]));
    assert!(h.step(Input::Shedding { ephemeral: true }).is_empty());
    let t1 = h.now_ms;
    assert_eq!(sends(&h.attach(conn(2), &bob)), vec![]);
    assert_eq!(h.shard.presence_shed(), 1);
    // A subscription is a request: its answer is not shed.
    let outputs = h.client(watcher, &alice, subscribe(vec![bob.clone(), carol.clone()]));
    assert_eq!(
        sends(&outputs),
        vec![
            (watcher, presence(true, &bob, Some(t1))),
            (watcher, presence(false, &carol, None)),
        ]
    );
    h.step(Input::Shedding { ephemeral: false });
    let t2 = h.now_ms;
    assert_eq!(
        sends(&h.attach(conn(3), &carol)),
        vec![(watcher, presence(true, &carol, Some(t2)))]
    );
    assert_eq!(h.shard.presence_shed(), 1);
}

/// A profile change reaches the user's subscribers and their own devices, once each, even
/// while presence is shed; a closed connection hears nothing.
#[test]
fn a_profile_change_goes_to_subscribers_and_own_devices() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(2), &bob);
    h.attach(conn(3), &bob);
    h.client(
        conn(1),
        &alice,
        ClientMessage::PresenceSubscribe {
            users: vec![bob.clone()],
        },
    );
    // Bob's own device watching bob: one message, not two.
    h.client(
        conn(3),
        &bob,
        ClientMessage::PresenceSubscribe {
            users: vec![bob.clone()],
        },
    );
    h.step(Input::Shedding { ephemeral: true });
    let profile = wire::Profile {
        user: bob.clone(),
        display_name: "Bob".to_owned(),
        about: "on a train".to_owned(),
        avatar: None,
    };
    let outputs = h.step(Input::ProfileChanged {
        profile: profile.clone(),
    });
    let changed = ServerMessage::ProfileChanged(profile.clone());
    assert_eq!(
        sends(&outputs),
        vec![
            (conn(1), changed.clone()),
            (conn(2), changed.clone()),
            (conn(3), changed.clone()),
        ]
    );
    h.step(Input::Closed { conn: conn(1) });
    h.step(Input::Detach {
        conn: conn(2),
        user: bob.clone(),
    });
    let outputs = h.step(Input::ProfileChanged { profile });
    assert_eq!(sends(&outputs), vec![(conn(3), changed)]);
}
