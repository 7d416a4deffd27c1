//! Offline hints (`Output::Offline`): one per durable message and recipient with no open
//! connection, never before the message is durable, never for an online recipient, the
//! sender or a retry, none at all while `Config::offline_hints` is off, and the body only
//! when asked for.

use std::sync::Arc;

use super::groups::{create, to_group};
use super::*;
use crate::config::OfflineHints;
use crate::shard::OfflineHint;

fn hints_on(offline_hints: OfflineHints) -> Harness {
    Harness::new(Config {
        offline_hints,
        ..Config::DEFAULT
    })
}

/// The hints among `outputs`: who, and what of the message.
fn hints(outputs: &[Output]) -> Vec<(UserId, OfflineHint)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Offline { user, hint } => Some((user.clone(), OfflineHint::clone(hint))),
            _ => None,
        })
        .collect()
}

/// Sends and makes the log durable in two steps, so that what each step says is seen.
fn send_in_two_steps(
    h: &mut Harness,
    c: ConnId,
    from: &UserId,
    message: ClientMessage,
) -> (Vec<Output>, Vec<Output>) {
    let before = h.client(c, from, message);
    let after = h.sync();
    (before, after)
}

fn acknowledged(outputs: &[Output]) -> MessageId {
    sends(outputs)
        .into_iter()
        .find_map(|(_, message)| match message {
            ServerMessage::MessageReceived { message_id, .. } => Some(message_id),
            _ => None,
        })
        .expect("acknowledged")
}

#[test]
fn an_offline_recipient_gets_one_hint_once_the_message_is_durable() {
    let mut h = hints_on(OfflineHints::Ids);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(1), &alice);
    let (before, after) = send_in_two_steps(&mut h, conn(1), &alice, send_to(&bob, 1));
    assert_eq!(
        hints(&before),
        vec![],
        "nothing before the message is durable"
    );
    let id = acknowledged(&after);
    let expected = OfflineHint {
        message_id: id,
        from: alice.clone(),
        group: None,
        timestamp_ms: T0,
        content: None,
        media: None,
    };
    assert_eq!(hints(&after), vec![(bob.clone(), expected)]);
    // The retry is answered again, and wakes nobody a second time.
    let (before, after) = send_in_two_steps(&mut h, conn(1), &alice, send_to(&bob, 1));
    assert_eq!(acknowledged(&before), id);
    assert_eq!(hints(&before), vec![]);
    assert_eq!(hints(&after), vec![]);
    // Nor does anything else that follows: the tick's timers, a second message is a
    // second hint.
    assert_eq!(hints(&h.step_durably(Input::Tick)), vec![]);
    let (_, after) = send_in_two_steps(&mut h, conn(1), &alice, send_to(&bob, 2));
    let second = acknowledged(&after);
    assert_ne!(second, id);
    let users: Vec<(UserId, MessageId)> = hints(&after)
        .into_iter()
        .map(|(user, hint)| (user, hint.message_id))
        .collect();
    assert_eq!(users, vec![(bob, second)]);
}

#[test]
fn an_online_recipient_gets_the_message_and_no_hint() {
    let mut h = hints_on(OfflineHints::WithContent);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(1), &alice);
    h.attach(conn(2), &bob);
    let (_, after) = send_in_two_steps(&mut h, conn(1), &alice, send_to(&bob, 1));
    let id = acknowledged(&after);
    assert_eq!(incoming_ids(&after, conn(2)), vec![id]);
    assert_eq!(hints(&after), vec![]);
    // Once bob's last connection is gone, the next message is hinted.
    h.step_durably(Input::Detach {
        conn: conn(2),
        user: bob.clone(),
    });
    let (_, after) = send_in_two_steps(&mut h, conn(1), &alice, send_to(&bob, 2));
    let users: Vec<UserId> = hints(&after).into_iter().map(|(user, _)| user).collect();
    assert_eq!(users, vec![bob]);
}

#[test]
fn with_content_the_hint_carries_the_body() {
    let mut h = hints_on(OfflineHints::WithContent);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(1), &alice);
    let media = wire::Media {
        hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        mime: "image/jpeg".into(),
        size: 48_213,
        name: Some("beach.jpg".into()),
    };
    let message = ClientMessage::SendMessage(SendMessage {
        client_msg_id: 1,
        to: Target::User(bob.clone()),
        content: "Our photo".into(),
        media: Some(media.clone()),
    });
    let (_, after) = send_in_two_steps(&mut h, conn(1), &alice, message);
    let hints = hints(&after);
    assert_eq!(hints.len(), 1, "{after:?}");
    let (to, hint) = &hints[0];
    assert_eq!(to, &bob);
    assert_eq!(hint.content.as_deref(), Some("Our photo"));
    assert_eq!(hint.media.as_ref(), Some(&media));
}

#[test]
fn with_hints_off_nothing_is_reported() {
    let mut h = Harness::new(Config::DEFAULT);
    assert_eq!(Config::DEFAULT.offline_hints, OfflineHints::Off);
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    h.attach(conn(1), &alice);
    let (_, after) = send_in_two_steps(&mut h, conn(1), &alice, send_to(&bob, 1));
    acknowledged(&after);
    assert_eq!(hints(&after), vec![]);
    let group = create(&mut h, &alice, &[&bob, &carol]);
    let (_, after) = send_in_two_steps(&mut h, conn(1), &alice, to_group(group, 2));
    acknowledged(&after);
    assert_eq!(hints(&after), vec![]);
}

#[test]
fn a_group_message_hints_each_offline_member_once_and_never_the_sender() {
    let mut h = hints_on(OfflineHints::Ids);
    let (alice, bob, carol, dave) = (user("alice"), user("bob"), user("carol"), user("dave"));
    h.attach(conn(1), &alice);
    h.attach(conn(3), &bob);
    // The membership events go to nobody's phone: only messages make hints.
    let group = create(&mut h, &alice, &[&bob, &carol, &dave]);
    let (before, after) = send_in_two_steps(&mut h, conn(1), &alice, to_group(group, 1));
    assert_eq!(
        hints(&before),
        vec![],
        "nothing before the message is durable"
    );
    let id = acknowledged(&after);
    assert_eq!(incoming_ids(&after, conn(3)), vec![id], "bob is online");
    let mut hinted = hints(&after);
    hinted.sort_by(|a, b| a.0.cmp(&b.0));
    let expected = |member: &UserId| {
        let hint = OfflineHint {
            message_id: id,
            from: alice.clone(),
            group: Some(group),
            timestamp_ms: T0,
            content: None,
            media: None,
        };
        (member.clone(), hint)
    };
    assert_eq!(hinted, vec![expected(&carol), expected(&dave)]);
    // One hint, shared by the members it goes to.
    let shared: Vec<*const OfflineHint> = after
        .iter()
        .filter_map(|output| match output {
            Output::Offline { hint, .. } => Some(Arc::as_ptr(hint)),
            _ => None,
        })
        .collect();
    assert!(shared.windows(2).all(|pair| pair[0] == pair[1]));
    // A retry wakes nobody again.
    let (before, after) = send_in_two_steps(&mut h, conn(1), &alice, to_group(group, 1));
    assert_eq!(acknowledged(&before), id);
    assert_eq!(hints(&before), vec![]);
    assert_eq!(hints(&after), vec![]);
    // Neither does a membership change, though it goes to the offline members too.
    let erin = user("erin");
    let answer = groups::ask(
        &mut h,
        &alice,
        crate::shard::GroupRequest::AddMember {
            group,
            user: erin.clone(),
        },
    );
    assert_eq!(answer, crate::shard::GroupAnswer::Done);
    // A sender whose connection closed before the message was durable is not hinted of
    // their own message; a member come online is not either.
    h.attach(conn(4), &carol);
    let before = h.client(conn(1), &alice, to_group(group, 2));
    h.step(Input::Detach {
        conn: conn(1),
        user: alice.clone(),
    });
    let after = h.sync();
    assert!(acknowledged(&before.into_iter().chain(after.clone()).collect::<Vec<_>>()) > id);
    let mut users: Vec<UserId> = hints(&after).into_iter().map(|(user, _)| user).collect();
    users.sort();
    assert_eq!(
        users,
        vec![dave, erin],
        "not alice, bob or carol: {after:?}"
    );
}

#[test]
fn a_message_to_oneself_hints_nobody_even_once_the_sender_is_gone() {
    let mut h = hints_on(OfflineHints::Ids);
    let alice = user("alice");
    h.attach(conn(1), &alice);
    let before = h.client(conn(1), &alice, send_to(&alice, 1));
    h.step(Input::Detach {
        conn: conn(1),
        user: alice.clone(),
    });
    let after = h.sync();
    assert!(appends(&before).len() == 1, "stored: {before:?}");
    assert_eq!(hints(&after), vec![]);
}
