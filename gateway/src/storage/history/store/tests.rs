//! The history index's rules with the clock handed in: who keeps what, paging, 90-day
//! expiry, settings applying from then on, and what the index says it holds.

use super::*;

const T0: u64 = 1_767_225_600_000;

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn open(dir: &Path) -> Store {
    Store::open(dir, 1 << 20, 16, true, 365 * DAY_MS).unwrap()
}

fn message(id: u64, from: &str, to: &str, at_ms: u64) -> StoredMessage {
    StoredMessage {
        id: MessageId(id),
        from: user(from),
        to: Target::User(user(to)),
        client_msg_id: id,
        content: format!("message {id}"),
        media: None,
        timestamp_ms: at_ms,
    }
}

fn feed(through: Lsn, messages: Vec<(Lsn, StoredMessage)>) -> Feed {
    Feed {
        shard: 0,
        through,
        messages: messages
            .into_iter()
            .map(|(lsn, message)| Fed {
                lsn,
                message,
                members: Vec::new(),
            })
            .collect(),
        settings: Vec::new(),
    }
}

fn with(peer: &str) -> Target {
    Target::User(user(peer))
}

fn ids(page: &Page) -> Vec<u64> {
    page.messages.iter().map(|m| m.message_id.0).collect()
}

/// Feeds `n` messages alternating between alice and bob, ids 1..=n, a second apart.
fn chat(store: &Store, n: u64) {
    let messages: Vec<_> = (1..=n)
        .map(|id| {
            let (from, to) = if id % 2 == 1 {
                ("alice", "bob")
            } else {
                ("bob", "alice")
            };
            (Lsn(id), message(id, from, to, T0 + id * 1000))
        })
        .collect();
    store.feed(&[feed(Lsn(n), messages)]).unwrap();
}

#[test]
fn nothing_is_kept_while_both_sides_keep_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    chat(&store, 4);
    assert!(
        store
            .pages()
            .page(&user("alice"), &with("bob"), None, 20)
            .unwrap()
            .messages
            .is_empty()
    );
    assert!(
        store
            .pages()
            .page(&user("bob"), &with("alice"), None, 20)
            .unwrap()
            .messages
            .is_empty()
    );
    assert_eq!(
        store.held(0).unwrap(),
        Lsn(4),
        "held moves even when nothing is kept"
    );
    assert_eq!(store.held(1).unwrap(), Lsn(0));
}

#[test]
fn a_user_keeping_90_days_pages_newest_first_and_the_other_side_sees_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(store.set_setting(&user("alice"), STORAGE_90_DAYS).unwrap());
    chat(&store, 5);
    let (alice, bob) = (user("alice"), user("bob"));
    let first = store
        .pages()
        .page(&alice, &Target::User(bob.clone()), None, 2)
        .unwrap();
    assert_eq!((ids(&first), first.more), (vec![5, 4], true));
    assert_eq!(first.messages[0].from, alice);
    assert_eq!(first.messages[1].from, bob);
    assert_eq!(first.messages[0].content, "message 5");
    let second = store
        .pages()
        .page(&alice, &Target::User(bob.clone()), Some(MessageId(4)), 2)
        .unwrap();
    assert_eq!((ids(&second), second.more), (vec![3, 2], true));
    let last = store
        .pages()
        .page(&alice, &Target::User(bob.clone()), Some(MessageId(2)), 2)
        .unwrap();
    assert_eq!((ids(&last), last.more), (vec![1], false));
    let exact = store
        .pages()
        .page(&alice, &Target::User(bob.clone()), None, 5)
        .unwrap();
    assert_eq!((exact.messages.len(), exact.more), (5, false));
    assert!(
        store
            .pages()
            .page(&bob, &Target::User(alice.clone()), None, 20)
            .unwrap()
            .messages
            .is_empty()
    );
}

#[test]
fn a_third_user_and_an_empty_chat_get_empty_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for name in ["alice", "bob", "carol"] {
        assert!(store.set_setting(&user(name), STORAGE_90_DAYS).unwrap());
    }
    chat(&store, 3);
    let empty = Page {
        messages: Vec::new(),
        more: false,
    };
    assert_eq!(
        store
            .pages()
            .page(&user("carol"), &with("alice"), None, 20)
            .unwrap(),
        empty
    );
    assert_eq!(
        store
            .pages()
            .page(&user("carol"), &with("bob"), None, 20)
            .unwrap(),
        empty
    );
    assert_eq!(
        store
            .pages()
            .page(&user("alice"), &with("carol"), None, 20)
            .unwrap(),
        empty
    );
    // A user id that is a prefix of another's does not read its rows.
    assert_eq!(
        store
            .pages()
            .page(&user("alic"), &with("bob"), None, 20)
            .unwrap(),
        empty
    );
    assert_eq!(
        store
            .pages()
            .page(&user("bob"), &with("alice"), None, 20)
            .unwrap()
            .messages
            .len(),
        3
    );
}

#[test]
fn a_changed_setting_applies_to_the_messages_fed_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (alice, bob) = (user("alice"), user("bob"));
    store
        .feed(&[feed(Lsn(1), vec![(Lsn(1), message(1, "alice", "bob", T0))])])
        .unwrap();
    assert!(store.set_setting(&alice, STORAGE_90_DAYS).unwrap());
    assert_eq!(store.setting(&alice), STORAGE_90_DAYS);
    store
        .feed(&[feed(
            Lsn(2),
            vec![(Lsn(2), message(2, "bob", "alice", T0 + 1))],
        )])
        .unwrap();
    assert!(store.set_setting(&alice, STORAGE_NONE).unwrap());
    assert_eq!(store.setting(&alice), STORAGE_NONE);
    store
        .feed(&[feed(
            Lsn(3),
            vec![(Lsn(3), message(3, "alice", "bob", T0 + 2))],
        )])
        .unwrap();
    // The message kept while the setting was 90 stays for its 90 days.
    assert_eq!(
        ids(&store
            .pages()
            .page(&alice, &Target::User(bob.clone()), None, 20)
            .unwrap()),
        vec![2]
    );
}

#[test]
fn rows_expire_90_days_after_their_message_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (alice, bob) = (user("alice"), user("bob"));
    assert!(store.set_setting(&alice, STORAGE_90_DAYS).unwrap());
    assert!(store.set_setting(&bob, STORAGE_90_DAYS).unwrap());
    store
        .feed(&[feed(
            Lsn(2),
            vec![
                (Lsn(1), message(1, "alice", "bob", T0)),
                (Lsn(2), message(2, "bob", "alice", T0 + DAY_MS)),
            ],
        )])
        .unwrap();
    let day_90 = T0 + 90 * DAY_MS;
    assert_eq!(store.expire(day_90 - 1, 100).unwrap(), 0);
    assert_eq!(
        ids(&store
            .pages()
            .page(&alice, &Target::User(bob.clone()), None, 20)
            .unwrap()),
        vec![2, 1]
    );
    // Both users' rows of message 1, then nothing more until a day later.
    assert_eq!(store.expire(day_90, 100).unwrap(), 2);
    assert_eq!(store.expire(day_90 + 1, 100).unwrap(), 0);
    assert_eq!(
        ids(&store
            .pages()
            .page(&alice, &Target::User(bob.clone()), None, 20)
            .unwrap()),
        vec![2]
    );
    assert_eq!(
        ids(&store
            .pages()
            .page(&bob, &Target::User(alice.clone()), None, 20)
            .unwrap()),
        vec![2]
    );
    // A bounded sweep leaves the rest for the next one.
    assert_eq!(store.expire(day_90 + DAY_MS, 1).unwrap(), 1);
    assert_eq!(store.expire(day_90 + DAY_MS, 1).unwrap(), 1);
    assert_eq!(store.expire(day_90 + DAY_MS, 1).unwrap(), 0);
    assert!(
        store
            .pages()
            .page(&alice, &Target::User(bob.clone()), None, 20)
            .unwrap()
            .messages
            .is_empty()
    );
}

#[test]
fn what_was_fed_and_set_survives_reopening_and_feeding_again_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        assert!(store.set_setting(&user("bob"), STORAGE_90_DAYS).unwrap());
        chat(&store, 3);
    }
    let store = open(dir.path());
    assert_eq!(store.held(0).unwrap(), Lsn(3));
    assert_eq!(store.setting(&user("bob")), STORAGE_90_DAYS);
    chat(&store, 3);
    let page = store
        .pages()
        .page(&user("bob"), &with("alice"), None, 20)
        .unwrap();
    assert_eq!((ids(&page), page.more), (vec![3, 2, 1], false));
}

#[test]
fn a_message_to_oneself_is_kept_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let alice = user("alice");
    assert!(store.set_setting(&alice, STORAGE_90_DAYS).unwrap());
    let rows = store
        .feed(&[feed(
            Lsn(1),
            vec![(Lsn(1), message(1, "alice", "alice", T0))],
        )])
        .unwrap()
        .0;
    assert_eq!(rows, 1);
    assert_eq!(
        ids(&store
            .pages()
            .page(&alice, &Target::User(alice.clone()), None, 20)
            .unwrap()),
        vec![1]
    );
}

#[test]
fn group_messages_are_kept_for_the_members_of_the_time_who_keep_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    assert!(store.set_setting(&alice, STORAGE_90_DAYS).unwrap());
    assert!(store.set_setting(&carol, STORAGE_90_DAYS).unwrap());
    let group = GroupId(7);
    let to_group = |id: u64, members: &[&UserId]| Fed {
        lsn: Lsn(id),
        message: StoredMessage {
            to: Target::Group(group),
            ..message(id, "bob", "bob", T0 + id)
        },
        members: members.iter().map(|&m| m.clone()).collect(),
    };
    // Carol joins after message 1.
    let feed = Feed {
        shard: 0,
        through: Lsn(2),
        messages: vec![
            to_group(1, &[&alice, &bob]),
            to_group(2, &[&alice, &bob, &carol]),
        ],
        settings: Vec::new(),
    };
    assert_eq!(store.feed(&[feed]).unwrap().0, 3);
    let chat = Target::Group(group);
    assert_eq!(
        ids(&store.pages().page(&alice, &chat, None, 20).unwrap()),
        vec![2, 1]
    );
    assert_eq!(
        ids(&store.pages().page(&carol, &chat, None, 20).unwrap()),
        vec![2]
    );
    // Bob keeps none; and a group's rows are not a 1:1 chat's.
    assert!(
        store
            .pages()
            .page(&bob, &chat, None, 20)
            .unwrap()
            .messages
            .is_empty()
    );
    assert!(
        store
            .pages()
            .page(&alice, &with("bob"), None, 20)
            .unwrap()
            .messages
            .is_empty()
    );
    assert!(
        store
            .pages()
            .page(&alice, &Target::Group(GroupId(8)), None, 20)
            .unwrap()
            .messages
            .is_empty()
    );
    let page = store.pages().page(&alice, &chat, None, 20).unwrap();
    assert_eq!(page.messages[0].to, chat);
}

#[test]
fn turning_history_on_past_the_bound_is_refused_and_off_is_always_taken() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20, 1, true, 365 * DAY_MS).unwrap();
    assert!(store.set_setting(&user("alice"), STORAGE_90_DAYS).unwrap());
    assert!(!store.set_setting(&user("bob"), STORAGE_90_DAYS).unwrap());
    assert_eq!(store.setting(&user("bob")), STORAGE_NONE);
    // Alice may set hers again, and turning it off makes room.
    assert!(store.set_setting(&user("alice"), STORAGE_90_DAYS).unwrap());
    assert!(store.set_setting(&user("alice"), STORAGE_NONE).unwrap());
    assert!(store.set_setting(&user("bob"), STORAGE_90_DAYS).unwrap());
    assert_eq!(store.keepers(), 1);
}

#[test]
fn settings_fed_from_the_log_apply_in_its_order_among_the_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20, 1, true, 365 * DAY_MS).unwrap();
    let (alice, bob) = (user("alice"), user("bob"));
    let setting = |lsn: u64, who: &UserId, history_storage: u8| FedSetting {
        lsn: Lsn(lsn),
        user: who.clone(),
        history_storage,
        reply: None,
    };
    let mut fed = feed(
        Lsn(5),
        vec![
            (Lsn(1), message(1, "alice", "bob", T0)),
            (Lsn(3), message(3, "bob", "alice", T0 + 1)),
            (Lsn(5), message(5, "alice", "bob", T0 + 2)),
        ],
    );
    // Alice turns history on between messages 1 and 3, bob is refused (one keeper at most),
    // and alice turns it off again before message 5.
    fed.settings = vec![
        setting(2, &alice, STORAGE_90_DAYS),
        setting(3, &bob, STORAGE_90_DAYS),
        setting(4, &alice, STORAGE_NONE),
    ];
    let (rows, applied) = store.feed(&[fed]).unwrap();
    assert_eq!((rows, applied), (1, vec![true, false, true]));
    assert_eq!(store.setting(&alice), STORAGE_NONE);
    assert_eq!(store.keepers(), 0);
    assert_eq!(
        ids(&store.pages().page(&alice, &with("bob"), None, 20).unwrap()),
        vec![3]
    );
    assert!(
        store
            .pages()
            .page(&bob, &with("alice"), None, 20)
            .unwrap()
            .messages
            .is_empty()
    );
    // What the settings keyspace holds is what comes back after a restart.
    drop(store);
    let store = Store::open(dir.path(), 1 << 20, 1, true, 365 * DAY_MS).unwrap();
    assert_eq!((store.setting(&alice), store.keepers()), (STORAGE_NONE, 0));
}

/// A media attachment naming `hash`.
fn attachment(hash: &MediaHash) -> wire::Media {
    wire::Media {
        hash: hash.to_string(),
        mime: "image/png".to_owned(),
        size: 3,
        name: None,
    }
}

#[test]
fn a_media_message_lets_its_receivers_read_it_until_its_time_is_up() {
    use crate::storage::media::{BlobStore as _, LocalBlobs, Upload};
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("index"));
    let blobs = LocalBlobs::open(&dir.path().join("media")).unwrap();
    let hash = MediaHash([7; 32]);
    let mut writer = blobs.begin().unwrap();
    writer.write(b"png").unwrap();
    assert!(writer.commit(&hash).unwrap());
    let object = store
        .upload(&Upload {
            hash,
            size: 3,
            mime: "image/png".to_owned(),
            user: user("alice"),
            now_ms: T0,
        })
        .unwrap();
    assert_eq!((object.size, object.mime.as_str()), (3, "image/png"));
    let reader = store.media_reader();
    assert!(reader.may_reference(&user("alice"), &hash).unwrap());
    assert_eq!(reader.readable(&user("bob"), &hash).unwrap(), None);

    // Sent to bob, then to a group of carol and dave: each may read it and send it on.
    let mut to_bob = message(1, "alice", "bob", T0 + 10);
    to_bob.media = Some(attachment(&hash));
    let mut to_group = message(2, "alice", "bob", T0 + 20);
    to_group.to = Target::Group(GroupId(9));
    to_group.media = Some(attachment(&hash));
    let mut fed = feed(Lsn(2), vec![(Lsn(1), to_bob), (Lsn(2), to_group)]);
    fed.messages[1].members = vec![user("alice"), user("carol"), user("dave")];
    store.feed(&[fed]).unwrap();
    for reader_name in ["alice", "bob", "carol", "dave"] {
        assert!(
            reader
                .readable(&user(reader_name), &hash)
                .unwrap()
                .is_some()
        );
        assert!(reader.may_reference(&user(reader_name), &hash).unwrap());
    }
    assert_eq!(reader.readable(&user("erin"), &hash).unwrap(), None);

    // The last reference (T0 + 20) starts its year: the upload's key is stale by then.
    let year = 365 * DAY_MS;
    assert_eq!(store.expire_media(&blobs, T0 + year, 10).unwrap().0, 0);
    assert!(reader.readable(&user("bob"), &hash).unwrap().is_some());
    assert_eq!(store.expire_media(&blobs, T0 + 20 + year, 10).unwrap().0, 1);
    assert_eq!(reader.readable(&user("alice"), &hash).unwrap(), None);
    assert!(!reader.may_reference(&user("bob"), &hash).unwrap());
    assert!(blobs.open(&hash).is_err(), "the bytes are gone too");
}
