//! The JSON encoding of the message model, as `docs/protocol.md` writes it: one JSON object
//! per message, tagged by `"type"`.
//!
//! Decoding reads the text once, with serde, into a flat `RawMessage` whose fields borrow
//! from the input where they can and keep every known field whatever its JSON type; only
//! then does it convert by `type`. Reading everything before judging is what lets an error
//! name the field at fault and still carry the `client_msg_id` or `req_id` of the message it
//! answers. Encoding writes bytes straight into the caller's buffer, field by field.
//!
//! What a reader may rely on beyond the protocol table:
//! - Input over `Limits::envelope_bytes_max` bytes is `too_large`, unread. Input must be
//!   UTF-8 and exactly one JSON value, an object.
//! - Unknown fields are ignored, so a client's `from` on `send_message` changes nothing.
//!   A known field that appears twice is refused (`bad_request`), rather than letting the
//!   last one win, because two readers of such text may disagree about which one counts.
//! - A field whose value is `null` counts as absent.
//! - Integers (`client_msg_id`, `req_id`, `limit`, `timestamp`, `last_seen`, `media.size`)
//!   are read from a JSON integer or a decimal string; message ids from a decimal string or
//!   a JSON integer. Negative, fractional and exponent numbers are refused. The encoder
//!   writes integers as numbers and message ids as strings.
//! - `to` (or `with`) holding a group id (`g:<n>`) names that group, since the colon never
//!   occurs in a user id; the encoder always writes a group as `group_id`. A `group_event`
//!   has no target, only its group: there `group_id` alone names it.
//! - `content` may be left out only beside `media`; it then reads as empty.
//! - Empty `message_ids` and `users` arrays are refused, by `ClientMessage::validate`.
//!
//! The code follows those two paths. `encode.rs` writes text. Decoding is `read.rs`, which
//! takes the text into a `RawMessage` (with `fields.rs` saying which keys each kind of object
//! knows), then `decode.rs`, which converts it by `type`, applying to each field the rules in
//! `scalar.rs`.

mod decode;
mod encode;
mod fields;
mod read;
mod scalar;
#[cfg(test)]
mod tests;

pub use decode::{decode_client, decode_server};
pub use encode::{encode_client, encode_server};
