//! What a clustered node's router does differently: ids that name the node, connections
//! other nodes hold (`RELAY_SHARD`) treated like local ones, and `Input::Relayed`, which
//! reaches only this node's own connections.

use std::sync::Arc;

use super::*;
use crate::ids::{RELAY_SHARD, node_of};

fn relay_conn(slot: u32) -> ConnId {
    ConnId {
        shard: RELAY_SHARD,
        slot,
        generation: 1,
    }
}

fn clustered(node: u8) -> Harness {
    Harness::new(Config {
        cluster_node: Some(node),
        ..Config::default()
    })
}

#[test]
fn a_clustered_shard_names_its_node_in_the_ids_it_hands_out() {
    let mut h = clustered(5);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(1), &alice);
    for client_msg_id in 1..300 {
        let id = h.send(conn(1), &alice, &bob, client_msg_id);
        assert_eq!(node_of(id), 5);
    }
}

#[test]
fn a_connection_on_another_node_gets_the_inbox_and_acknowledges_like_a_local_one() {
    let mut h = clustered(1);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(1), &alice);
    let id = h.send(conn(1), &alice, &bob, 7);
    // Bob is connected to another node: the bridge attaches that connection here.
    let outputs = h.attach(relay_conn(3), &bob);
    assert_eq!(incoming_ids(&outputs, relay_conn(3)), vec![id]);
    // His acknowledgement comes back through the bridge, from the same connection.
    let outputs = h.step_durably(Input::Client {
        conn: relay_conn(3),
        user: bob.clone(),
        message: ClientMessage::MessageDelivered {
            message_ids: vec![id],
        },
    });
    let delivered = sends(&outputs).into_iter().any(|(to, message)| {
        to == conn(1) && matches!(message, ServerMessage::MessageDelivered(_))
    });
    assert!(delivered, "alice hears of the delivery: {outputs:?}");
    // Acknowledged: a new connection of bob's gets nothing more.
    let outputs = h.attach(conn(2), &bob);
    assert!(incoming_ids(&outputs, conn(2)).is_empty());
}

#[test]
fn a_relayed_message_reaches_only_this_nodes_connections() {
    let mut h = clustered(0);
    let bob = user("bob");
    h.attach(conn(1), &bob);
    h.attach(relay_conn(2), &bob);
    let message = Arc::new(ServerMessage::Typing {
        from: user("carol"),
        to: Target::User(user("bob")),
    });
    let outputs = h.step(Input::Relayed {
        user: bob.clone(),
        message: Arc::clone(&message),
    });
    let sent = sends(&outputs);
    assert_eq!(sent, vec![(conn(1), ServerMessage::clone(&message))]);
    // A user this shard knows nothing of: nothing, and no state made for them.
    let outputs = h.step(Input::Relayed {
        user: user("nobody"),
        message,
    });
    assert!(outputs.is_empty());
}

#[test]
fn a_member_on_another_node_sends_to_the_group_through_their_relayed_connection() {
    let mut h = clustered(0);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(1), &alice);
    h.attach(relay_conn(2), &bob);
    let group = groups::create(&mut h, &alice, &[&bob]);
    let outputs = h.step_durably(Input::Client {
        conn: relay_conn(2),
        user: bob.clone(),
        message: groups::to_group(group, 1),
    });
    let sent = sends(&outputs);
    let acked = sent.iter().any(|(to, message)| {
        *to == relay_conn(2) && matches!(message, ServerMessage::MessageReceived { .. })
    });
    assert!(acked, "bob hears his message is stored: {sent:?}");
    let to_alice = sent.iter().any(|(to, message)| {
        *to == conn(1) && matches!(message, ServerMessage::IncomingMessage(_))
    });
    assert!(to_alice, "alice gets it: {sent:?}");
}
