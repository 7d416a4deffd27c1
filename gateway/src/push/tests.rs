//! The push thread's parts without a network: the queue's drops, the backoff's waits and
//! the body's JSON.

use std::sync::Arc;
use std::time::Duration;

use wire::{GroupId, Media, MessageId, UserId};

use super::queue::{Backoff, HintQueue};
use super::{Hint, body};

fn hint(user: &str, id: u64) -> Hint {
    Hint {
        user: UserId::parse(user).unwrap(),
        hint: Arc::new(router::OfflineHint {
            message_id: MessageId(id),
            from: UserId::parse("alice").unwrap(),
            group: None,
            timestamp_ms: 1_767_225_600_000,
            content: None,
            media: None,
        }),
    }
}

fn ids(hints: &[Hint]) -> Vec<u64> {
    hints.iter().map(|h| h.hint.message_id.0).collect()
}

#[test]
fn a_full_queue_drops_its_oldest_and_a_failed_batch_goes_back_at_its_head() {
    let mut queue = HintQueue::new(3);
    assert!(!queue.push(hint("bob", 1)));
    assert!(!queue.push(hint("bob", 2)));
    assert!(!queue.push(hint("bob", 3)));
    assert!(queue.push(hint("bob", 4)), "the oldest goes");
    assert_eq!(queue.len(), 3);
    let batch = queue.take(2);
    assert_eq!(ids(&batch), vec![2, 3]);
    assert!(!queue.push(hint("bob", 5)));
    // 2 and 3 failed; with 4 and 5 waiting, one of the batch no longer fits: the oldest.
    assert_eq!(queue.put_back(batch), 1);
    assert_eq!(ids(&queue.take(10)), vec![3, 4, 5]);
    assert!(queue.is_empty());
    assert_eq!(queue.put_back(Vec::new()), 0);
}

#[test]
fn the_backoff_doubles_to_its_cap_with_jitter_and_starts_again_after_a_success() {
    let mut backoff = Backoff::new(100, 1_000, 42);
    assert!(!backoff.failing());
    let mut bases = Vec::new();
    for _ in 0..6 {
        let wait = backoff.next_wait();
        bases.push(wait);
    }
    assert!(backoff.failing());
    for (wait, base) in bases.iter().zip([100u64, 200, 400, 800, 1_000, 1_000]) {
        let range = Duration::from_millis(base / 2)..=Duration::from_millis(base);
        assert!(range.contains(wait), "{wait:?} outside {range:?}");
    }
    backoff.reset();
    assert!(!backoff.failing());
    let first = backoff.next_wait();
    assert!(first <= Duration::from_millis(100) && first >= Duration::from_millis(50));
    // Jitter: waits drawn from the same base differ.
    let waits: std::collections::BTreeSet<Duration> = (0..20)
        .map(|_| {
            let mut b = Backoff::new(1_000, 1_000, 0);
            for _ in 0..3 {
                b.next_wait();
            }
            b.next_wait()
        })
        .collect();
    assert_eq!(waits.len(), 1, "the same seed gives the same waits");
    let seeded: std::collections::BTreeSet<Duration> = (1..20u64)
        .map(|seed| Backoff::new(1_000, 1_000, seed * 7919).next_wait())
        .collect();
    assert!(seeded.len() > 1, "seeds spread the waits");
}

#[test]
fn the_body_holds_the_hints_as_the_protocol_writes_them() {
    let mut with_content = hint("carol", 7_213_509_893_634_048_001);
    with_content.hint = Arc::new(router::OfflineHint {
        group: Some(GroupId(7)),
        content: Some("Our \"photo\"".into()),
        media: Some(Media {
            hash: "ab".repeat(32),
            mime: "image/jpeg".into(),
            size: 48_213,
            name: None,
        }),
        ..(*with_content.hint).clone()
    });
    let body = body::encode(&[hint("bob", 7_213_509_893_634_048_001), with_content]);
    let expected = format!(
        concat!(
            r#"{{"hints":[{{"user":"bob","message_id":"7213509893634048001","from":"alice","timestamp":1767225600000}},"#,
            r#"{{"user":"carol","message_id":"7213509893634048001","from":"alice","group_id":"g:7","timestamp":1767225600000,"#,
            r#""content":"Our \"photo\"","media":{{"hash":"{}","mime":"image/jpeg","size":48213}}}}]}}"#
        ),
        "ab".repeat(32)
    );
    assert_eq!(std::str::from_utf8(&body).unwrap(), expected);
}
