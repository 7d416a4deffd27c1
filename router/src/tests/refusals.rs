//! Refusals: groups that are not the sender's, and requests whose log record would
//! break the log's caps or rules, refused before anything changes.

use super::*;

#[test]
fn unknown_groups_are_refused_and_history_goes_to_the_shell_with_their_correlation() {
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
            ErrorCode::Forbidden,
            "you are not a member of this group",
            Correlation::ClientMsgId(5),
        ),
    );
    // The router keeps no history: it hands the request to the shell's index as it is.
    let request = HistoryRequest {
        req_id: 8,
        with: Target::User(user("bob")),
        before: None,
        limit: 20,
    };
    let outputs = h.client(conn(1), &alice, ClientMessage::History(request.clone()));
    assert!(matches!(
        outputs.as_slice(),
        [Output::HistoryPage { conn: c, user: u, request: r }]
            if *c == conn(1) && *u == alice && *r == request
    ));
    check(
        &mut h,
        ClientMessage::Typing {
            to: Target::Group(GroupId(1)),
        },
        error(
            ErrorCode::Forbidden,
            "you are not a member of this group",
            Correlation::None,
        ),
    );
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
            .into()
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
            .into()
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
            .into()
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
fn a_history_setting_is_logged_for_the_shell_and_changes_nothing_else() {
    let mut h = Harness::new(Config::DEFAULT);
    let before = h.shard.stats();
    let outputs = h.step(Input::Setting {
        user: user("alice"),
        history_storage: 90,
    });
    assert_eq!(
        appends(&outputs),
        vec![Record::Setting {
            user: user("alice"),
            history_storage: 90
        }]
    );
    assert!(sends(&outputs).is_empty());
    assert_eq!(h.shard.stats(), before);
}
