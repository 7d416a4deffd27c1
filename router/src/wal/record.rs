//! The write-ahead log's bytes: what a record says, how it is framed and checksummed, and how
//! a segment is scanned back up to its first torn or corrupt record. No files here: the
//! shell writes the bytes, fsyncs them, and hands the scanned records to recovery.
//!
//! A segment is a 24-byte header (`SWBWAL01`, version, shard id, first lsn, crc32c of those)
//! followed by records, each
//! `[payload_len u32 LE][crc32c u32 LE over lsn and payload][lsn u64 LE][payload]`.
//! A payload is a kind byte and its fields: integers little-endian, strings with a length
//! prefix (one byte for user ids, four for free text).

use wire::model::USER_ID_BYTES_MAX;
use wire::{GroupId, Media, MessageId, Receipt, Target, UserId};

use crate::ids::ShardId;

/// A log sequence number: records of one shard are numbered 1, 2, 3... with no gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

pub const SEGMENT_MAGIC: [u8; 8] = *b"SWBWAL01";
pub const SEGMENT_VERSION: u16 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 24;
/// Bytes before a record's payload: length, checksum, lsn.
pub const RECORD_HEADER_BYTES: usize = 16;
/// The largest payload a record may have. The largest real record (a `Receipts` record for
/// 1000 read ids, two items each) is under 200 KiB; a length above this is corruption.
pub const PAYLOAD_BYTES_MAX: usize = 1 << 20;
/// Items in one `Receipts` record, at most (two per id of a `message_read`).
pub const RECEIPT_ITEMS_MAX: usize = 1 << 14;

/// Ids in one `Expired` record, at most: a tick that drops more writes more records.
pub const EXPIRED_IDS_MAX: usize = 1 << 14;
const _: () = assert!(1 + 4 + 8 * EXPIRED_IDS_MAX <= PAYLOAD_BYTES_MAX);

/// Bytes of one item of a `Receipts` record, at most: id, sender (length and bytes), kind.
pub const RECEIPT_ITEM_BYTES_MAX: usize = 8 + 1 + USER_ID_BYTES_MAX + 1;
/// Bytes of a `Receipts` record's payload before its items, at most: kind, `by`, time, count.
const RECEIPTS_HEAD_BYTES_MAX: usize = 1 + 1 + USER_ID_BYTES_MAX + 8 + 4;
/// Items a `Receipts` record can hold whatever its user ids: within [`RECEIPT_ITEMS_MAX`]
/// and, with every id at its longest, within [`PAYLOAD_BYTES_MAX`]. The limits that make
/// receipts (`message_ids_max`) are checked against this at start.
pub const RECEIPT_ITEMS_LOGGABLE_MAX: usize = {
    let fit = (PAYLOAD_BYTES_MAX - RECEIPTS_HEAD_BYTES_MAX) / RECEIPT_ITEM_BYTES_MAX;
    if fit < RECEIPT_ITEMS_MAX {
        fit
    } else {
        RECEIPT_ITEMS_MAX
    }
};

/// Bytes of a `Message` record's payload besides its content and media, at most: kind, id,
/// both users, client_msg_id, content length, media flag, timestamp.
const MESSAGE_FIXED_BYTES_MAX: usize = 1 + 8 + 2 * (1 + USER_ID_BYTES_MAX) + 8 + 4 + 1 + 8;
/// Bytes a media attachment adds to a `Message` record besides its three texts: their
/// lengths, the size and the name flag.
const MEDIA_FIXED_BYTES: usize = 4 + 4 + 8 + 1 + 4;

/// The largest `Message` payload a message with at most `content_bytes_max` bytes of
/// content and media texts (`mime`, `name`) of at most `media_text_bytes_max` bytes can
/// make; the limits that bound a message are checked against [`PAYLOAD_BYTES_MAX`] with it.
pub const fn message_payload_bytes_max(
    content_bytes_max: usize,
    media_text_bytes_max: usize,
) -> usize {
    MESSAGE_FIXED_BYTES_MAX
        .saturating_add(content_bytes_max)
        .saturating_add(MEDIA_FIXED_BYTES + Media::HASH_HEX_LEN)
        .saturating_add(media_text_bytes_max.saturating_mul(2))
}

// The fixed-size records, checkpoints included, are far under the cap; so is a receipt
// record for the most ids a `message_read` holds by default.
const _: () = assert!(RECEIPT_ITEMS_LOGGABLE_MAX >= 2 * wire::Limits::DEFAULT.message_ids_max);
const _: () = assert!(
    message_payload_bytes_max(
        4 * wire::Limits::DEFAULT.content_chars_max,
        wire::Limits::DEFAULT.media_text_bytes_max
    ) <= PAYLOAD_BYTES_MAX
);
const _: () = assert!(RECEIPT_ITEMS_LOGGABLE_MAX > 0 && RECEIPTS_HEAD_BYTES_MAX < 256);

/// Which receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReceiptKind {
    Delivered,
    Read,
}

impl ReceiptKind {
    fn to_byte(self) -> u8 {
        match self {
            ReceiptKind::Delivered => 1,
            ReceiptKind::Read => 2,
        }
    }

    fn from_byte(byte: u8) -> Result<ReceiptKind, DecodeError> {
        match byte {
            1 => Ok(ReceiptKind::Delivered),
            2 => Ok(ReceiptKind::Read),
            _ => Err(DecodeError("unknown receipt kind")),
        }
    }
}

/// A message as the shard that stored it keeps it (the owner of a 1:1 message's recipient,
/// or a group message's group): everything needed to deliver it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: MessageId,
    pub from: UserId,
    pub to: Target,
    pub client_msg_id: u64,
    pub content: String,
    pub media: Option<Media>,
    pub timestamp_ms: u64,
}

/// One receipt made true by a `Receipts` record: `kind` for message `message_id`, whose
/// sender is `sender`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptItem {
    pub message_id: MessageId,
    pub sender: UserId,
    pub kind: ReceiptKind,
}

/// What a shard writes to its log. The first five kinds and `Expired` are the live record
/// stream; the `Checkpoint*`, `Dedup`, `ReadIndex` and `ReceiptOutstanding` kinds
/// (with `Message` and `ReceiptQueued`) make up a checkpoint: a copy of all live state,
/// after which older segments can be deleted. Applying a record is idempotent, so replaying
/// records that a checkpoint also covers is harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A message accepted for `to`: it waits in `to`'s inbox until a device acknowledges it.
    Message(StoredMessage),
    /// `by` acknowledged messages at `timestamp_ms`: each item's message leaves `by`'s
    /// inbox, and each receipt is owed to its sender's owner shard until it is handed over.
    Receipts {
        by: UserId,
        timestamp_ms: u64,
        items: Vec<ReceiptItem>,
    },
    /// The sender's owner shard took this receipt (`PeerMessage::ReceiptStored`).
    ReceiptHandedOver {
        message_id: MessageId,
        kind: ReceiptKind,
    },
    /// At the sender's owner: a receipt kept for `user` until their next connection.
    ReceiptQueued {
        user: UserId,
        kind: ReceiptKind,
        receipt: Receipt,
    },
    /// The receipts queued for `user` went out on a new connection: forget them.
    ReceiptsFlushed { user: UserId },
    /// A checkpoint starts; `last_message_id` is the greatest id handed out so far, so that
    /// ids stay increasing after older segments are gone.
    CheckpointBegin { last_message_id: Option<MessageId> },
    /// A dedup entry whose message already left the inbox.
    Dedup {
        from: UserId,
        client_msg_id: u64,
        message_id: MessageId,
        timestamp_ms: u64,
    },
    /// A delivered but not yet read message: `to` may still send `message_read` for it.
    ReadIndex {
        message_id: MessageId,
        from: UserId,
        to: UserId,
    },
    /// A receipt not yet handed over to the sender's owner shard.
    ReceiptOutstanding {
        message_id: MessageId,
        kind: ReceiptKind,
        sender: UserId,
        by: UserId,
        timestamp_ms: u64,
    },
    /// The checkpoint that began at `begin` is complete: once this record is durable,
    /// records before `begin` are no longer needed.
    CheckpointEnd { begin: Lsn },
    /// A group's creation, a membership change, or a checkpoint's copy of group state.
    Group(GroupRecord),
    /// These stored messages were not delivered within `undelivered_retention_ms`: each
    /// leaves its recipient's inbox (a group message, with its delivery state) unreceipted.
    Expired { message_ids: Vec<MessageId> },
    /// `user` chose `history_storage`: for the shell's history index, which the log feeds;
    /// the router keeps no state of it.
    Setting { user: UserId, history_storage: u8 },
}

const KIND_MESSAGE: u8 = 1;
const KIND_RECEIPTS: u8 = 2;
const KIND_RECEIPT_HANDED_OVER: u8 = 3;
const KIND_RECEIPT_QUEUED: u8 = 4;
const KIND_RECEIPTS_FLUSHED: u8 = 5;
const KIND_CHECKPOINT_BEGIN: u8 = 6;
const KIND_DEDUP: u8 = 7;
const KIND_READ_INDEX: u8 = 8;
const KIND_RECEIPT_OUTSTANDING: u8 = 9;
const KIND_CHECKPOINT_END: u8 = 10;
/// A `Message` addressed to a group (kind 1 is one addressed to a user).
const KIND_GROUP_MESSAGE: u8 = 11;
// Kinds 12 to 15 are the group records (`record/group.rs`).
const KIND_EXPIRED: u8 = 16;
const KIND_SETTING: u8 = 17;

impl Record {
    /// Whether only receipts wait for this record to be durable: an acknowledgement, or
    /// the bookkeeping of a receipt's way to its sender. Losing one in a crash means a
    /// message delivered again (which clients deduplicate) and a receipt sent later, never
    /// a lost message, so the log may put off its fdatasync (`Log::commit_due`).
    pub fn only_receipts_wait(&self) -> bool {
        matches!(
            self,
            Record::Receipts { .. }
                | Record::ReceiptHandedOver { .. }
                | Record::ReceiptQueued { .. }
                | Record::ReceiptsFlushed { .. }
        )
    }

    /// The rules every record keeps, its size included. The router checks a record made
    /// from a client's request before it changes any state, and refuses the request if
    /// this fails; encoding asserts it; decoding reports it as an error.
    pub fn check(&self) -> Result<(), DecodeError> {
        if self.payload_bytes() > PAYLOAD_BYTES_MAX {
            return Err(DecodeError("a record's payload is at most 1 MiB"));
        }
        match self {
            Record::Message(message) => {
                if message.content.is_empty() && message.media.is_none() {
                    return Err(DecodeError("a message has content or media"));
                }
            }
            Record::Receipts { items, .. } => {
                if items.is_empty() || items.len() > RECEIPT_ITEMS_MAX {
                    return Err(DecodeError("a receipts record holds 1 to 16384 items"));
                }
            }
            Record::CheckpointEnd { begin } => {
                if begin.0 == 0 {
                    return Err(DecodeError("a checkpoint begins at lsn 1 or later"));
                }
            }
            Record::Group(group) => group.check()?,
            Record::Expired { message_ids } => {
                if message_ids.is_empty() || message_ids.len() > EXPIRED_IDS_MAX {
                    return Err(DecodeError("an expired record holds 1 to 16384 ids"));
                }
            }
            Record::ReceiptHandedOver { .. }
            | Record::ReceiptQueued { .. }
            | Record::ReceiptsFlushed { .. }
            | Record::CheckpointBegin { .. }
            | Record::Dedup { .. }
            | Record::ReadIndex { .. }
            | Record::ReceiptOutstanding { .. }
            | Record::Setting { .. } => {}
        }
        Ok(())
    }
}

impl Record {
    /// Bytes of the record's payload, as `encode_payload` writes it, without encoding it.
    pub fn payload_bytes(&self) -> usize {
        let user = |user: &UserId| 1 + user.as_str().len();
        1 + match self {
            Record::Message(message) => {
                return message_payload_bytes(
                    &message.from,
                    &message.to,
                    &message.content,
                    message.media.as_ref(),
                );
            }
            Record::Receipts { by, items, .. } => {
                user(by)
                    + 8
                    + 4
                    + items
                        .iter()
                        .map(|item| 8 + user(&item.sender) + 1)
                        .sum::<usize>()
            }
            Record::ReceiptHandedOver { .. } => 8 + 1,
            Record::ReceiptQueued {
                user: to, receipt, ..
            } => user(to) + 1 + 8 + user(&receipt.by) + 8,
            Record::ReceiptsFlushed { user: to } => user(to),
            Record::Setting { user: who, .. } => user(who) + 1,
            Record::CheckpointBegin { last_message_id } => 1 + last_message_id.map_or(0, |_| 8),
            Record::Dedup { from, .. } => user(from) + 8 + 8 + 8,
            Record::ReadIndex { from, to, .. } => 8 + user(from) + user(to),
            Record::ReceiptOutstanding { sender, by, .. } => 8 + 1 + user(sender) + user(by) + 8,
            Record::CheckpointEnd { .. } => 8,
            Record::Group(group) => group.payload_bytes(),
            Record::Expired { message_ids } => 4 + 8 * message_ids.len(),
        }
    }
}

/// Bytes of the payload of a `Message` record for these fields: what a `send_message` would
/// log, measured before the router hands out an id or touches any state for it.
pub fn message_payload_bytes(
    from: &UserId,
    to: &Target,
    content: &str,
    media: Option<&Media>,
) -> usize {
    let user = |user: &UserId| 1 + user.as_str().len();
    let text = |text: &str| 4 + text.len();
    let media = media.map_or(0, |media| {
        text(&media.hash) + text(&media.mime) + 8 + 1 + media.name.as_deref().map_or(0, text)
    });
    let to = match to {
        Target::User(to) => user(to),
        Target::Group(_) => 8,
    };
    1 + 8 + user(from) + to + 8 + text(content) + 1 + media + 8
}

/// Why a payload or a segment header could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("undecodable log record: {0}")]
pub struct DecodeError(&'static str);

/// Why a segment cannot be scanned at all. All of them are `internal` errors of the server:
/// the data directory holds something this version did not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// Fewer bytes than a header: a segment whose creation was torn by a crash.
    #[error("the segment is shorter than its header")]
    ShortHeader,
    #[error("the segment does not start with SWBWAL01")]
    BadMagic,
    #[error("the segment's version {0} is not supported")]
    UnsupportedVersion(u16),
    #[error("the segment header's checksum does not match")]
    HeaderChecksum,
}

/// The header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub shard: ShardId,
    /// The lsn of the segment's first record (also of an empty segment's next record).
    pub first_lsn: Lsn,
}

pub fn encode_segment_header(header: &SegmentHeader, out: &mut Vec<u8>) {
    assert!(header.first_lsn.0 > 0);
    let start = out.len();
    out.extend_from_slice(&SEGMENT_MAGIC);
    out.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
    out.extend_from_slice(&header.shard.to_le_bytes());
    out.extend_from_slice(&header.first_lsn.0.to_le_bytes());
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(out.len() - start, SEGMENT_HEADER_BYTES);
}

pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, SegmentError> {
    let header = bytes
        .get(..SEGMENT_HEADER_BYTES)
        .ok_or(SegmentError::ShortHeader)?;
    if header[..8] != SEGMENT_MAGIC {
        return Err(SegmentError::BadMagic);
    }
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version != SEGMENT_VERSION {
        return Err(SegmentError::UnsupportedVersion(version));
    }
    let crc = u32::from_le_bytes(header[20..24].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&header[..20]) {
        return Err(SegmentError::HeaderChecksum);
    }
    let shard = u16::from_le_bytes([header[10], header[11]]);
    let first_lsn = Lsn(u64::from_le_bytes(
        header[12..20].try_into().expect("8 bytes"),
    ));
    if first_lsn.0 == 0 {
        return Err(SegmentError::HeaderChecksum);
    }
    Ok(SegmentHeader { shard, first_lsn })
}

/// Appends one framed record to `out`.
///
/// The record must pass [`Record::check`]: the router checks every record a request makes
/// before it changes any state and refuses the request otherwise, and the records it makes
/// by itself are valid by construction. So a failure here is a bug of this crate, not bad
/// input; it stays an assertion in release builds too, because writing the record anyway
/// would put a record in the log that recovery reads as the torn end of the log, losing
/// every record after it.
pub fn encode_record(record: &Record, lsn: Lsn, out: &mut Vec<u8>) {
    assert!(lsn.0 > 0);
    if let Err(error) = record.check() {
        panic!("the router made an invalid record ({error}): {record:?}");
    }
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&lsn.0.to_le_bytes());
    encode_payload(record, out);
    let payload_len = out.len() - start - RECORD_HEADER_BYTES;
    // `check` bounded `payload_bytes`, which is what was just written.
    debug_assert_eq!(payload_len, record.payload_bytes());
    assert!(payload_len > 0 && payload_len <= PAYLOAD_BYTES_MAX);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One record read back from the front of `bytes`.
#[derive(Debug)]
enum Framed {
    Record {
        lsn: Lsn,
        record: Record,
        bytes: usize,
    },
    /// Not a whole, valid record: the log ends here.
    End,
}

fn decode_framed(bytes: &[u8]) -> Framed {
    let Some(header) = bytes.get(..RECORD_HEADER_BYTES) else {
        return Framed::End;
    };
    let payload_len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    if payload_len == 0 || payload_len > PAYLOAD_BYTES_MAX {
        return Framed::End;
    }
    let total = RECORD_HEADER_BYTES + payload_len;
    let Some(framed) = bytes.get(..total) else {
        return Framed::End;
    };
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&framed[8..]) {
        return Framed::End;
    }
    let lsn = Lsn(u64::from_le_bytes(
        header[8..16].try_into().expect("8 bytes"),
    ));
    match decode_payload(&framed[RECORD_HEADER_BYTES..]) {
        Ok(record) => Framed::Record {
            lsn,
            record,
            bytes: total,
        },
        Err(_) => Framed::End,
    }
}

/// Reads the one record at the front of `bytes` (a shell reading back a record it wrote, at
/// an offset it kept): its lsn, the record and its framed length. `None` if the bytes do
/// not start with a whole, valid record. Never panics on any input.
pub fn decode_record(bytes: &[u8]) -> Option<(Lsn, Record, usize)> {
    match decode_framed(bytes) {
        Framed::Record { lsn, record, bytes } => Some((lsn, record, bytes)),
        Framed::End => None,
    }
}

/// The framed length of the record whose 16-byte header starts `header`, if the header's
/// payload length is possible: how many bytes to read for `decode_record`.
pub fn framed_len(header: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(header.get(..4)?.try_into().ok()?) as usize;
    (len > 0 && len <= PAYLOAD_BYTES_MAX).then_some(RECORD_HEADER_BYTES + len)
}

/// What a segment holds, up to its first torn or corrupt record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub header: SegmentHeader,
    /// The valid records, with consecutive lsns from `header.first_lsn`.
    pub records: Vec<(Lsn, Record)>,
    /// Where each of `records` starts in the segment, in the same order: the shell keeps
    /// them to read a record back, rather than encoding the records again to find them.
    pub offsets: Vec<u64>,
    /// Bytes of the segment (header included) up to the end of the last valid record: the
    /// length to truncate the file to before appending to it again.
    pub valid_bytes: usize,
    /// Bytes follow the last valid record: a torn write, a corrupt record (bad length, bad
    /// checksum, undecodable payload, an lsn out of sequence) or a preallocated tail.
    pub torn: bool,
}

/// Reads a segment's records. Never panics on any input: bad bytes end the scan.
pub fn scan_segment(bytes: &[u8]) -> Result<Scan, SegmentError> {
    let header = decode_segment_header(bytes)?;
    let mut records = Vec::new();
    let mut offsets = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut expected = header.first_lsn;
    while let Framed::Record { lsn, record, bytes } = decode_framed(&bytes[offset..]) {
        // A valid checksum with the wrong lsn is a stale record left in a reused file.
        if lsn != expected {
            break;
        }
        records.push((lsn, record));
        offsets.push(offset as u64);
        offset += bytes;
        expected = expected.next();
    }
    Ok(Scan {
        header,
        records,
        offsets,
        valid_bytes: offset,
        torn: offset < bytes.len(),
    })
}

/// The first whole, valid record at or after `from` in `bytes` whose lsn is past `after`,
/// trying every offset: a segment whose scan ended early but that holds such a record
/// further on is damaged in the middle, not torn at its end, since a write that a crash
/// cut leaves a prefix of itself and nothing valid after the cut. Returns its offset and
/// lsn. Never panics on any input.
pub fn find_record_after(bytes: &[u8], from: usize, after: Lsn) -> Option<(usize, Lsn)> {
    let last_start = bytes.len().checked_sub(RECORD_HEADER_BYTES)?;
    (from..=last_start).find_map(|offset| match decode_framed(&bytes[offset..]) {
        Framed::Record { lsn, .. } if lsn > after => Some((offset, lsn)),
        _ => None,
    })
}

/// Encodes a record's payload. Long but one thing: a single `match` with an arm per record
/// type, each the mirror of its arm in [`decode_payload`].
fn encode_payload(record: &Record, out: &mut Vec<u8>) {
    let mut w = Writer { out };
    match record {
        Record::Message(message) => {
            match &message.to {
                Target::User(to) => {
                    w.u8(KIND_MESSAGE);
                    w.u64(message.id.0);
                    w.user(&message.from);
                    w.user(to);
                }
                Target::Group(group) => {
                    w.u8(KIND_GROUP_MESSAGE);
                    w.u64(message.id.0);
                    w.user(&message.from);
                    w.u64(group.0);
                }
            }
            w.u64(message.client_msg_id);
            w.text(&message.content);
            match &message.media {
                None => w.u8(0),
                Some(media) => {
                    w.u8(1);
                    w.text(&media.hash);
                    w.text(&media.mime);
                    w.u64(media.size);
                    match &media.name {
                        None => w.u8(0),
                        Some(name) => {
                            w.u8(1);
                            w.text(name);
                        }
                    }
                }
            }
            w.u64(message.timestamp_ms);
        }
        Record::Receipts {
            by,
            timestamp_ms,
            items,
        } => {
            w.u8(KIND_RECEIPTS);
            w.user(by);
            w.u64(*timestamp_ms);
            w.u32(items.len() as u32);
            for item in items {
                w.u64(item.message_id.0);
                w.user(&item.sender);
                w.u8(item.kind.to_byte());
            }
        }
        Record::ReceiptHandedOver { message_id, kind } => {
            w.u8(KIND_RECEIPT_HANDED_OVER);
            w.u64(message_id.0);
            w.u8(kind.to_byte());
        }
        Record::ReceiptQueued {
            user,
            kind,
            receipt,
        } => {
            w.u8(KIND_RECEIPT_QUEUED);
            w.user(user);
            w.u8(kind.to_byte());
            w.u64(receipt.message_id.0);
            w.user(&receipt.by);
            w.u64(receipt.timestamp_ms);
        }
        Record::ReceiptsFlushed { user } => {
            w.u8(KIND_RECEIPTS_FLUSHED);
            w.user(user);
        }
        Record::Setting {
            user,
            history_storage,
        } => {
            w.u8(KIND_SETTING);
            w.user(user);
            w.u8(*history_storage);
        }
        Record::CheckpointBegin { last_message_id } => {
            w.u8(KIND_CHECKPOINT_BEGIN);
            match last_message_id {
                None => w.u8(0),
                Some(id) => {
                    w.u8(1);
                    w.u64(id.0);
                }
            }
        }
        Record::Dedup {
            from,
            client_msg_id,
            message_id,
            timestamp_ms,
        } => {
            w.u8(KIND_DEDUP);
            w.user(from);
            w.u64(*client_msg_id);
            w.u64(message_id.0);
            w.u64(*timestamp_ms);
        }
        Record::ReadIndex {
            message_id,
            from,
            to,
        } => {
            w.u8(KIND_READ_INDEX);
            w.u64(message_id.0);
            w.user(from);
            w.user(to);
        }
        Record::ReceiptOutstanding {
            message_id,
            kind,
            sender,
            by,
            timestamp_ms,
        } => {
            w.u8(KIND_RECEIPT_OUTSTANDING);
            w.u64(message_id.0);
            w.u8(kind.to_byte());
            w.user(sender);
            w.user(by);
            w.u64(*timestamp_ms);
        }
        Record::CheckpointEnd { begin } => {
            w.u8(KIND_CHECKPOINT_END);
            w.u64(begin.0);
        }
        Record::Group(group) => group.encode(&mut w),
        Record::Expired { message_ids } => {
            w.u8(KIND_EXPIRED);
            w.u32(message_ids.len() as u32);
            for id in message_ids {
                w.u64(id.0);
            }
        }
    }
}

/// Decodes a payload. Every field is read through a bounds check, so any bytes give a
/// record or an error. Long but one thing: a single `match` with an arm per record type.
pub fn decode_payload(payload: &[u8]) -> Result<Record, DecodeError> {
    let mut r = Reader { bytes: payload };
    let record = match r.u8()? {
        kind @ (KIND_MESSAGE | KIND_GROUP_MESSAGE) => {
            let id = MessageId(r.u64()?);
            let from = r.user()?;
            let to = if kind == KIND_MESSAGE {
                Target::User(r.user()?)
            } else {
                Target::Group(GroupId(r.u64()?))
            };
            let client_msg_id = r.u64()?;
            let content = r.text()?;
            let media = match r.u8()? {
                0 => None,
                1 => {
                    let hash = r.text()?;
                    let mime = r.text()?;
                    let size = r.u64()?;
                    let name = match r.u8()? {
                        0 => None,
                        1 => Some(r.text()?),
                        _ => return Err(DecodeError("bad media name flag")),
                    };
                    Some(Media {
                        hash,
                        mime,
                        size,
                        name,
                    })
                }
                _ => return Err(DecodeError("bad media flag")),
            };
            let timestamp_ms = r.u64()?;
            Record::Message(StoredMessage {
                id,
                from,
                to,
                client_msg_id,
                content,
                media,
                timestamp_ms,
            })
        }
        KIND_RECEIPTS => {
            let by = r.user()?;
            let timestamp_ms = r.u64()?;
            let count = r.u32()? as usize;
            // The smallest item is 8 + 2 + 1 bytes: refuse a count the bytes cannot hold
            // before allocating for it.
            if count > RECEIPT_ITEMS_MAX || count * 11 > r.bytes.len() {
                return Err(DecodeError("receipt item count exceeds the payload"));
            }
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                let message_id = MessageId(r.u64()?);
                let sender = r.user()?;
                let kind = ReceiptKind::from_byte(r.u8()?)?;
                items.push(ReceiptItem {
                    message_id,
                    sender,
                    kind,
                });
            }
            Record::Receipts {
                by,
                timestamp_ms,
                items,
            }
        }
        KIND_RECEIPT_HANDED_OVER => Record::ReceiptHandedOver {
            message_id: MessageId(r.u64()?),
            kind: ReceiptKind::from_byte(r.u8()?)?,
        },
        KIND_RECEIPT_QUEUED => {
            let user = r.user()?;
            let kind = ReceiptKind::from_byte(r.u8()?)?;
            let message_id = MessageId(r.u64()?);
            let by = r.user()?;
            let timestamp_ms = r.u64()?;
            Record::ReceiptQueued {
                user,
                kind,
                receipt: Receipt {
                    message_id,
                    by,
                    timestamp_ms,
                },
            }
        }
        KIND_RECEIPTS_FLUSHED => Record::ReceiptsFlushed { user: r.user()? },
        KIND_SETTING => Record::Setting {
            user: r.user()?,
            history_storage: r.u8()?,
        },
        KIND_CHECKPOINT_BEGIN => {
            let last_message_id = match r.u8()? {
                0 => None,
                1 => Some(MessageId(r.u64()?)),
                _ => return Err(DecodeError("bad last message id flag")),
            };
            Record::CheckpointBegin { last_message_id }
        }
        KIND_DEDUP => Record::Dedup {
            from: r.user()?,
            client_msg_id: r.u64()?,
            message_id: MessageId(r.u64()?),
            timestamp_ms: r.u64()?,
        },
        KIND_READ_INDEX => Record::ReadIndex {
            message_id: MessageId(r.u64()?),
            from: r.user()?,
            to: r.user()?,
        },
        KIND_RECEIPT_OUTSTANDING => Record::ReceiptOutstanding {
            message_id: MessageId(r.u64()?),
            kind: ReceiptKind::from_byte(r.u8()?)?,
            sender: r.user()?,
            by: r.user()?,
            timestamp_ms: r.u64()?,
        },
        KIND_CHECKPOINT_END => Record::CheckpointEnd {
            begin: Lsn(r.u64()?),
        },
        KIND_EXPIRED => {
            let count = r.u32()? as usize;
            // Refuse a count the bytes cannot hold before allocating for it.
            if count > EXPIRED_IDS_MAX || count * 8 > r.bytes.len() {
                return Err(DecodeError("expired id count exceeds the payload"));
            }
            let mut message_ids = Vec::with_capacity(count);
            for _ in 0..count {
                message_ids.push(MessageId(r.u64()?));
            }
            Record::Expired { message_ids }
        }
        kind => Record::Group(GroupRecord::decode(kind, &mut r)?),
    };
    if !r.bytes.is_empty() {
        return Err(DecodeError("bytes after the record"));
    }
    record.check()?;
    Ok(record)
}

mod bytes;
mod group;

use bytes::{Reader, Writer};
pub use group::{
    EventCopy, GROUP_MEMBERS_LOGGABLE_MAX, GroupChange, GroupMemberCopy, GroupRecord, TrackingCopy,
};

#[cfg(test)]
mod tests;
