//! The flatbuffers encoding of the message model (subprotocol `switchboard.v1.fb`): an encoder
//! that reuses one builder, the [`VerifiedEnvelope`] that untrusted bytes must become before
//! anything reads them, and the conversions between envelopes and the model.
//!
//! The schema is `wire/schema/envelope.fbs`; `wire/schema/regen.sh` regenerates [`fb`] from
//! it. A decoded message passes the same [`ClientMessage::validate`] /
//! [`ServerMessage::validate`] as one decoded from JSON, so the router cannot tell the two
//! encodings apart.
//!
//! `encode.rs` holds the [`EnvelopeEncoder`]; `decode.rs` the [`VerifiedEnvelope`] and the
//! reading of its tables into the model. The generated code itself stays at
//! `wire/src/envelope_generated.rs`, where `wire/schema/regen.sh` writes it.

mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub use decode::VerifiedEnvelope;
pub use encode::EnvelopeEncoder;

// flatc's output follows its own conventions (no SAFETY comments, no Debug on builders,
// CamelCase constants), so the workspace lints and rustfmt stay out of it.
#[allow(
    clippy::all,
    clippy::cast_lossless,
    clippy::undocumented_unsafe_blocks,
    missing_debug_implementations,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    rust_2018_idioms,
    unsafe_op_in_unsafe_fn,
    unused_qualifications
)]
#[rustfmt::skip]
#[path = "../envelope_generated.rs"]
mod generated;

/// The code flatc generates from `wire/schema/envelope.fbs`: zero-copy readers of a verified
/// buffer (get one from [`VerifiedEnvelope::envelope`]) and the builders the encoder uses.
pub use generated::switchboard::v_1 as fb;
