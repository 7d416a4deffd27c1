//! Everything about Switchboard's bytes on the wire, with no I/O and no clock: the typed
//! message model, its JSON and flatbuffers encodings, the RFC 6455 frame codec and the
//! HTTP/1.1 upgrade handshake. Callers hand in bytes and get values (or bytes) back.
//!
//! `model.rs` is the message model; `json/` and `envelope/` its two encodings, each with an
//! `encode.rs` and a `decode.rs`; `frame/` the WebSocket codec (`decode.rs`, `assemble.rs`,
//! `encode.rs`); `handshake/` the upgrade. Each folder keeps its unit tests in `tests.rs`.
//! `envelope_generated.rs` is flatc's output, committed (`wire/schema/regen.sh`).

pub mod envelope;
pub mod frame;
pub mod handshake;
pub mod json;
pub mod model;

pub use model::{
    ClientMessage, Correlation, DecodeError, ErrorCode, ErrorMessage, GroupEvent, GroupEventKind,
    GroupId, HistoryRequest, IncomingMessage, InvalidMessage, Limits, Media, MessageId,
    PROFILE_ABOUT_CHARS_MAX, PROFILE_NAME_CHARS_MAX, Profile, Receipt, SendMessage, ServerMessage,
    Target, UserId, is_media_hash,
};
