//! The record format's tests: round trips of every kind, truncations, flipped bits and
//! arbitrary bytes, which must never panic.

use proptest::prelude::*;

use super::*;

#[test]
fn a_valid_record_after_damage_is_found_and_a_torn_tail_has_none() {
    let header = SegmentHeader {
        shard: 0,
        first_lsn: Lsn(1),
    };
    let mut bytes = Vec::new();
    encode_segment_header(&header, &mut bytes);
    let mut ends = Vec::new();
    for n in 1..=4 {
        let record = Record::ReceiptsFlushed {
            user: UserId::parse(&format!("user{n}")).unwrap(),
        };
        encode_record(&record, Lsn(n), &mut bytes);
        ends.push(bytes.len());
    }
    // Damage inside the second record: the third and fourth are still there.
    let mut damaged = bytes.clone();
    damaged[ends[0] + RECORD_HEADER_BYTES] ^= 0xff;
    let scan = scan_segment(&damaged).unwrap();
    assert_eq!((scan.records.len(), scan.torn), (1, true));
    assert_eq!(
        find_record_after(&damaged, scan.valid_bytes + 1, Lsn(1)),
        Some((ends[1], Lsn(3)))
    );
    // A write cut short: nothing valid after the cut.
    let torn = &bytes[..ends[2] - 5];
    let scan = scan_segment(torn).unwrap();
    assert_eq!(find_record_after(torn, scan.valid_bytes + 1, Lsn(2)), None);
    assert_eq!(find_record_after(&[], 0, Lsn(0)), None);
}

#[test]
fn a_record_is_read_back_alone_at_its_offset() {
    let mut bytes = Vec::new();
    let first = Record::ReceiptsFlushed {
        user: UserId::parse("alice").unwrap(),
    };
    let second = Record::CheckpointEnd { begin: Lsn(3) };
    encode_record(&first, Lsn(7), &mut bytes);
    let offset = bytes.len();
    encode_record(&second, Lsn(8), &mut bytes);
    assert_eq!(framed_len(&bytes[offset..]), Some(bytes.len() - offset));
    assert_eq!(
        decode_record(&bytes[offset..]),
        Some((Lsn(8), second, bytes.len() - offset))
    );
    assert_eq!(decode_record(&bytes[..offset]).map(|r| r.0), Some(Lsn(7)));
    assert_eq!(decode_record(&bytes[..offset - 1]), None, "a cut record");
    assert_eq!(framed_len(&[0, 0, 0, 0]), None);
    assert_eq!(framed_len(&[1]), None);
}

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

/// One table: a record of every kind, with the edge values of its fields.
fn samples() -> Vec<Record> {
    vec![
        Record::Message(StoredMessage {
            id: MessageId(1 << 40),
            from: user("alice"),
            to: Target::User(user("bob")),
            client_msg_id: 7,
            content: "héllo".into(),
            media: Some(Media {
                hash: "ab".repeat(32),
                mime: "image/png".into(),
                size: 1234,
                name: Some("cat.png".into()),
            }),
            timestamp_ms: 1_700_000_000_000,
        }),
        Record::Receipts {
            by: user("bob"),
            timestamp_ms: 5,
            items: vec![
                ReceiptItem {
                    message_id: MessageId(9),
                    sender: user("alice"),
                    kind: ReceiptKind::Delivered,
                },
                ReceiptItem {
                    message_id: MessageId(9),
                    sender: user("alice"),
                    kind: ReceiptKind::Read,
                },
            ],
        },
        Record::ReceiptHandedOver {
            message_id: MessageId(u64::MAX),
            kind: ReceiptKind::Read,
        },
        Record::ReceiptQueued {
            user: user("alice"),
            kind: ReceiptKind::Delivered,
            receipt: Receipt {
                message_id: MessageId(3),
                by: user("bob"),
                timestamp_ms: 4,
            },
        },
        Record::ReceiptsFlushed {
            user: user("alice"),
        },
        Record::CheckpointBegin {
            last_message_id: None,
        },
        Record::CheckpointBegin {
            last_message_id: Some(MessageId(0)),
        },
        Record::Dedup {
            from: user("a"),
            client_msg_id: u64::MAX,
            message_id: MessageId(2),
            timestamp_ms: 3,
        },
        Record::ReadIndex {
            message_id: MessageId(2),
            from: user("a"),
            to: user("b"),
        },
        Record::ReceiptOutstanding {
            message_id: MessageId(2),
            kind: ReceiptKind::Delivered,
            sender: user("a"),
            by: user("b"),
            timestamp_ms: 3,
        },
        Record::CheckpointEnd { begin: Lsn(17) },
        Record::Message(StoredMessage {
            id: MessageId(1 << 41),
            from: user("alice"),
            to: Target::Group(GroupId(1 << 40)),
            client_msg_id: 8,
            content: "hi all".into(),
            media: None,
            timestamp_ms: 1_700_000_000_001,
        }),
        Record::Group(GroupRecord::Created {
            group: GroupId(1 << 40),
            name: "friends".into(),
            by: user("alice"),
            members: vec![user("alice"), user("bob")],
            timestamp_ms: 1_700_000_000_000,
        }),
        Record::Group(GroupRecord::Changed {
            group: GroupId(1 << 40),
            event_id: MessageId(1 << 42),
            change: GroupChange::Left,
            by: user("bob"),
            user: user("bob"),
            timestamp_ms: 1_700_000_000_002,
        }),
        Record::Group(GroupRecord::State {
            group: GroupId(1 << 40),
            name: "friends".into(),
            members: vec![GroupMemberCopy {
                user: user("alice"),
                ordinal: 0,
                admin: true,
            }],
            next_ordinal: 2,
        }),
        // The delivery state of a message and of an event: a sender, or an event's users.
        Record::Group(GroupRecord::Tracking(TrackingCopy {
            message_id: MessageId(1 << 41),
            group: GroupId(1 << 40),
            sender: Some(user("alice")),
            event: None,
            timestamp_ms: 1_700_000_000_001,
            pending: vec![1],
            delivered: vec![],
            read: vec![2, 3],
            last_by: Some(user("carol")),
        })),
        Record::Group(GroupRecord::Tracking(TrackingCopy {
            message_id: MessageId(1 << 40),
            group: GroupId(1 << 40),
            sender: None,
            event: Some(EventCopy {
                kind: wire::GroupEventKind::Created,
                by: user("alice"),
                user: user("alice"),
            }),
            timestamp_ms: 1_700_000_000_000,
            pending: vec![1],
            delivered: vec![],
            read: vec![],
            last_by: None,
        })),
        Record::Expired {
            message_ids: vec![MessageId(0), MessageId(1 << 40), MessageId(u64::MAX)],
        },
        Record::Setting {
            user: user("alice"),
            history_storage: 90,
        },
    ]
}

fn segment(records: &[Record], first_lsn: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_segment_header(
        &SegmentHeader {
            shard: 3,
            first_lsn: Lsn(first_lsn),
        },
        &mut bytes,
    );
    for (i, record) in records.iter().enumerate() {
        encode_record(record, Lsn(first_lsn + i as u64), &mut bytes);
    }
    bytes
}

#[test]
fn round_trip_every_kind() {
    let records = samples();
    let bytes = segment(&records, 40);
    let scan = scan_segment(&bytes).unwrap();
    assert_eq!(scan.header.shard, 3);
    assert_eq!(scan.header.first_lsn, Lsn(40));
    assert!(!scan.torn);
    assert_eq!(scan.valid_bytes, bytes.len());
    let expected: Vec<(Lsn, Record)> = records
        .into_iter()
        .enumerate()
        .map(|(i, record)| (Lsn(40 + i as u64), record))
        .collect();
    assert_eq!(scan.records, expected);
}

#[test]
fn payload_bytes_is_the_encoded_length() {
    for (i, record) in samples().iter().enumerate() {
        let mut bytes = Vec::new();
        encode_record(record, Lsn(1 + i as u64), &mut bytes);
        assert_eq!(
            record.payload_bytes(),
            bytes.len() - RECORD_HEADER_BYTES,
            "{record:?}"
        );
    }
}

#[test]
fn a_record_over_the_caps_fails_the_check() {
    let long = user(&"u".repeat(USER_ID_BYTES_MAX));
    let receipts = |n: usize| Record::Receipts {
        by: long.clone(),
        timestamp_ms: 1,
        items: (0..n)
            .map(|i| ReceiptItem {
                message_id: MessageId(i as u64 + 1),
                sender: long.clone(),
                kind: ReceiptKind::Read,
            })
            .collect(),
    };
    // The loggable bound is exact: one more item of the longest ids is over a cap.
    let fits = receipts(RECEIPT_ITEMS_LOGGABLE_MAX);
    assert_eq!(fits.check(), Ok(()));
    let mut bytes = Vec::new();
    encode_record(&fits, Lsn(1), &mut bytes);
    assert!(decode_record(&bytes).is_some());
    assert!(receipts(RECEIPT_ITEMS_LOGGABLE_MAX + 1).check().is_err());

    let message = |content_bytes: usize| {
        Record::Message(StoredMessage {
            id: MessageId(1 << 40),
            from: long.clone(),
            to: Target::User(long.clone()),
            client_msg_id: 1,
            content: "x".repeat(content_bytes),
            media: None,
            timestamp_ms: 1,
        })
    };
    let largest = PAYLOAD_BYTES_MAX - message(0).payload_bytes();
    assert_eq!(message(largest).check(), Ok(()));
    assert!(message(largest + 1).check().is_err());
    // The bound the start-up check uses covers the largest message it admits.
    assert!(message_payload_bytes_max(largest, 0) >= message(largest).payload_bytes());

    let expired = |n: u64| Record::Expired {
        message_ids: (0..n).map(MessageId).collect(),
    };
    let most = expired(EXPIRED_IDS_MAX as u64);
    assert_eq!(most.check(), Ok(()));
    let mut bytes = Vec::new();
    encode_record(&most, Lsn(1), &mut bytes);
    assert_eq!(decode_record(&bytes).map(|r| r.1), Some(most));
    assert!(expired(EXPIRED_IDS_MAX as u64 + 1).check().is_err());
    assert!(expired(0).check().is_err());
}

#[test]
fn every_truncation_is_a_clean_prefix_or_torn_at_the_last_record() {
    let records = samples();
    let bytes = segment(&records, 1);
    // Where each record ends.
    let mut ends = vec![SEGMENT_HEADER_BYTES];
    for (i, record) in records.iter().enumerate() {
        let mut one = Vec::new();
        encode_record(record, Lsn(1 + i as u64), &mut one);
        ends.push(ends.last().unwrap() + one.len());
    }
    for len in 0..=bytes.len() {
        let cut = &bytes[..len];
        if len < SEGMENT_HEADER_BYTES {
            assert_eq!(scan_segment(cut), Err(SegmentError::ShortHeader));
            continue;
        }
        let scan = scan_segment(cut).unwrap();
        let whole = ends.iter().filter(|end| **end <= len).count() - 1;
        assert_eq!(scan.records.len(), whole, "cut at {len}");
        assert_eq!(scan.valid_bytes, ends[whole], "cut at {len}");
        // Each record starts where the one before it ended.
        let starts: Vec<u64> = ends[..whole].iter().map(|end| *end as u64).collect();
        assert_eq!(scan.offsets, starts, "cut at {len}");
        assert_eq!(scan.torn, len != ends[whole], "cut at {len}");
        assert_eq!(&scan.records[..], &segment_records(&records)[..whole]);
    }
}

fn segment_records(records: &[Record]) -> Vec<(Lsn, Record)> {
    records
        .iter()
        .enumerate()
        .map(|(i, record)| (Lsn(1 + i as u64), record.clone()))
        .collect()
}

#[test]
fn a_stale_record_ends_the_scan() {
    let records = samples();
    let mut bytes = segment(&records[..2], 1);
    // A record with a valid checksum but an lsn from an older use of the file.
    encode_record(&records[2], Lsn(99), &mut bytes);
    let scan = scan_segment(&bytes).unwrap();
    assert_eq!(scan.records.len(), 2);
    assert!(scan.torn);
}

#[test]
fn bad_headers() {
    let mut bytes = segment(&[], 1);
    assert!(scan_segment(&bytes).unwrap().records.is_empty());
    bytes[12] ^= 1;
    assert_eq!(scan_segment(&bytes), Err(SegmentError::HeaderChecksum));
    bytes[0] = b'X';
    assert_eq!(scan_segment(&bytes), Err(SegmentError::BadMagic));
    let mut bytes = segment(&[], 1);
    bytes[8] = 2;
    assert_eq!(
        scan_segment(&bytes),
        Err(SegmentError::UnsupportedVersion(2))
    );
}

#[test]
fn undecodable_payloads_are_errors() {
    let check = |payload: &[u8]| assert!(decode_payload(payload).is_err(), "{payload:?}");
    check(&[]);
    check(&[0]);
    check(&[99]);
    check(&[KIND_RECEIPTS_FLUSHED, 0]);
    check(&[KIND_RECEIPTS_FLUSHED, 3, b'a', b'b']);
    check(&[KIND_RECEIPTS_FLUSHED, 1, b':']);
    check(&[KIND_RECEIPTS_FLUSHED, 1, b'a', 0]);
    check(&[
        KIND_RECEIPTS,
        1,
        b'a',
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0xff,
        0xff,
        0xff,
        0xff,
    ]);
    check(&[KIND_RECEIPT_HANDED_OVER, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    check(&[KIND_CHECKPOINT_END, 0, 0, 0, 0, 0, 0, 0, 0]);
    // No ids, a count past the bytes, a cut id.
    check(&[KIND_EXPIRED, 0, 0, 0, 0]);
    check(&[KIND_EXPIRED, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0]);
    check(&[KIND_EXPIRED, 1, 0, 0, 0, 1, 0, 0]);
    assert_eq!(
        decode_payload(&[KIND_EXPIRED, 1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]),
        Ok(Record::Expired {
            message_ids: vec![MessageId(7)]
        })
    );
    assert_eq!(
        decode_payload(&[KIND_RECEIPTS_FLUSHED, 1, b'a']),
        Ok(Record::ReceiptsFlushed { user: user("a") })
    );
}

fn arb_user() -> impl Strategy<Value = UserId> {
    "[a-z0-9_.@-]{1,64}".prop_map(|text| UserId::parse(&text).unwrap())
}

fn arb_kind() -> impl Strategy<Value = ReceiptKind> {
    prop_oneof![Just(ReceiptKind::Delivered), Just(ReceiptKind::Read)]
}

/// One strategy with an arm per record kind.
fn arb_record() -> impl Strategy<Value = Record> {
    let message = (
        any::<u64>(),
        arb_user(),
        arb_user(),
        any::<u64>(),
        ".{1,40}",
        proptest::option::of((
            "[0-9a-f]{64}",
            "[a-z/]{1,20}",
            any::<u64>(),
            proptest::option::of(".{0,20}"),
        )),
        any::<u64>(),
    )
        .prop_map(
            |(id, from, to, client_msg_id, content, media, timestamp_ms)| {
                Record::Message(StoredMessage {
                    id: MessageId(id),
                    from,
                    to: Target::User(to),
                    client_msg_id,
                    content,
                    media: media.map(|(hash, mime, size, name)| Media {
                        hash,
                        mime,
                        size,
                        name,
                    }),
                    timestamp_ms,
                })
            },
        );
    let receipts = (
        arb_user(),
        any::<u64>(),
        proptest::collection::vec((any::<u64>(), arb_user(), arb_kind()), 1..20),
    )
        .prop_map(|(by, timestamp_ms, items)| Record::Receipts {
            by,
            timestamp_ms,
            items: items
                .into_iter()
                .map(|(id, sender, kind)| ReceiptItem {
                    message_id: MessageId(id),
                    sender,
                    kind,
                })
                .collect(),
        });
    prop_oneof![
        message,
        receipts,
        (any::<u64>(), arb_kind()).prop_map(|(id, kind)| Record::ReceiptHandedOver {
            message_id: MessageId(id),
            kind
        }),
        (
            arb_user(),
            arb_kind(),
            any::<u64>(),
            arb_user(),
            any::<u64>()
        )
            .prop_map(|(user, kind, id, by, timestamp_ms)| Record::ReceiptQueued {
                user,
                kind,
                receipt: Receipt {
                    message_id: MessageId(id),
                    by,
                    timestamp_ms
                }
            }),
        arb_user().prop_map(|user| Record::ReceiptsFlushed { user }),
        proptest::option::of(any::<u64>()).prop_map(|id| Record::CheckpointBegin {
            last_message_id: id.map(MessageId)
        }),
        (arb_user(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(from, client_msg_id, id, timestamp_ms)| Record::Dedup {
                from,
                client_msg_id,
                message_id: MessageId(id),
                timestamp_ms
            }
        ),
        (any::<u64>(), arb_user(), arb_user()).prop_map(|(id, from, to)| {
            Record::ReadIndex {
                message_id: MessageId(id),
                from,
                to,
            }
        }),
        (
            any::<u64>(),
            arb_kind(),
            arb_user(),
            arb_user(),
            any::<u64>()
        )
            .prop_map(|(id, kind, sender, by, timestamp_ms)| {
                Record::ReceiptOutstanding {
                    message_id: MessageId(id),
                    kind,
                    sender,
                    by,
                    timestamp_ms,
                }
            }),
        (1..u64::MAX).prop_map(|begin| Record::CheckpointEnd { begin: Lsn(begin) }),
        proptest::collection::vec(any::<u64>(), 1..20).prop_map(|ids| Record::Expired {
            message_ids: ids.into_iter().map(MessageId).collect(),
        }),
        (arb_user(), any::<u8>()).prop_map(|(user, history_storage)| Record::Setting {
            user,
            history_storage,
        }),
    ]
}

proptest! {
    #[test]
    fn records_round_trip(records in proptest::collection::vec(arb_record(), 0..12),
                          first_lsn in 1..u64::MAX / 2) {
        let bytes = segment(&records, first_lsn);
        let scan = scan_segment(&bytes).unwrap();
        prop_assert!(!scan.torn);
        let expected: Vec<(Lsn, Record)> = records
            .into_iter()
            .enumerate()
            .map(|(i, record)| (Lsn(first_lsn + i as u64), record))
            .collect();
        prop_assert_eq!(scan.records, expected);
    }

    #[test]
    fn a_flipped_bit_is_caught(records in proptest::collection::vec(arb_record(), 1..6),
                               position in any::<prop::sample::Index>(),
                               bit in 0..8u8) {
        let bytes = segment(&records, 1);
        let mut flipped = bytes.clone();
        let at = SEGMENT_HEADER_BYTES + position.index(bytes.len() - SEGMENT_HEADER_BYTES);
        flipped[at] ^= 1 << bit;
        let scan = scan_segment(&flipped).unwrap();
        // The scan keeps exactly the records that end before the flipped byte.
        let mut end = SEGMENT_HEADER_BYTES;
        let mut whole = 0;
        for (i, record) in records.iter().enumerate() {
            let mut one = Vec::new();
            encode_record(record, Lsn(1 + i as u64), &mut one);
            if end + one.len() > at {
                break;
            }
            end += one.len();
            whole += 1;
        }
        prop_assert_eq!(scan.records.len(), whole);
        prop_assert_eq!(scan.valid_bytes, end);
        prop_assert!(scan.torn);
    }

    #[test]
    fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut bytes = segment(&[], 1);
        bytes.extend_from_slice(&tail);
        let scan = scan_segment(&bytes).unwrap();
        prop_assert!(scan.valid_bytes <= bytes.len());
        let _ = decode_payload(&tail);
    }
}
