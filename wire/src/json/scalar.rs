//! One field's value as it was read ([`Scalar`]), the rules that turn it into a model value
//! (an integer, a string, a boolean, a message id, a user id), and the error texts those
//! rules give, which name the field and quote at most a short excerpt of the input.

use std::borrow::Cow;
use std::fmt;
use std::mem;

use crate::model::{InvalidMessage, MessageId, UserId};

/// One field's value as it appeared, before the field's own rules apply. An array or object
/// where a scalar belongs is skipped and remembered by its kind only.
#[derive(Debug, Default)]
pub(super) enum Scalar<'a> {
    #[default]
    Absent,
    Null,
    Bool(bool),
    Unsigned(u64),
    /// Negative, fractional, with an exponent, or past 2^64 - 1: never valid in this protocol.
    OtherNumber,
    Text(Cow<'a, str>),
    Array,
    Object,
}

pub(super) const INTEGER: &str =
    "an integer from 0 to 18446744073709551615 (a number or a decimal string)";

pub(super) fn bad(text: impl Into<String>) -> InvalidMessage {
    InvalidMessage::BadRequest(text.into())
}

pub(super) fn missing(field: impl fmt::Display) -> InvalidMessage {
    bad(format!("missing field {field}"))
}

pub(super) fn wrong(
    field: impl fmt::Display,
    expected: &str,
    found: &Scalar<'_>,
) -> InvalidMessage {
    bad(format!("{field} must be {expected}, got {}", found.kind()))
}

/// The same error, its text led by the field it is about.
pub(super) fn in_field(field: impl fmt::Display, error: InvalidMessage) -> InvalidMessage {
    match error {
        InvalidMessage::BadRequest(text) => InvalidMessage::BadRequest(format!("{field}: {text}")),
        InvalidMessage::TooLarge(text) => InvalidMessage::TooLarge(format!("{field}: {text}")),
    }
}

/// A short, quoted and escaped excerpt of text from outside, so that an error text stays
/// within `Limits::error_text_bytes_max` whatever the input.
pub(super) fn excerpt(text: &str) -> String {
    const CHARS_MAX: usize = 40;
    match text.char_indices().nth(CHARS_MAX) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// Digits only, 1 to 20 of them, within 64 bits.
pub(super) fn parse_decimal(text: &str) -> Option<u64> {
    let digits = !text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit());
    if digits { text.parse().ok() } else { None }
}

impl<'a> Scalar<'a> {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Scalar::Absent => "nothing",
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Unsigned(_) => "a number",
            Scalar::OtherNumber => "a negative, fractional or too large number",
            Scalar::Text(_) => "a string",
            Scalar::Array => "an array",
            Scalar::Object => "an object",
        }
    }

    pub(super) fn is_absent(&self) -> bool {
        matches!(self, Scalar::Absent | Scalar::Null)
    }

    pub(super) fn to_u64(&self) -> Option<u64> {
        match self {
            Scalar::Unsigned(value) => Some(*value),
            Scalar::Text(text) => parse_decimal(text),
            _ => None,
        }
    }

    pub(super) fn text(&self, field: impl fmt::Display) -> Result<&str, InvalidMessage> {
        match self {
            Scalar::Text(text) => Ok(text),
            Scalar::Absent => Err(missing(field)),
            other => Err(wrong(field, "a string", other)),
        }
    }

    /// Moves the text out, without a copy when it was already owned.
    pub(super) fn take_string(
        &mut self,
        field: impl fmt::Display,
    ) -> Result<String, InvalidMessage> {
        match mem::take(self) {
            Scalar::Text(text) => Ok(text.into_owned()),
            Scalar::Absent => Err(missing(field)),
            other => Err(wrong(field, "a string", &other)),
        }
    }

    pub(super) fn take_string_opt(
        &mut self,
        field: impl fmt::Display,
    ) -> Result<Option<String>, InvalidMessage> {
        if self.is_absent() {
            return Ok(None);
        }
        self.take_string(field).map(Some)
    }

    pub(super) fn uint(&self, field: impl fmt::Display) -> Result<u64, InvalidMessage> {
        if let Some(value) = self.to_u64() {
            return Ok(value);
        }
        match self {
            Scalar::Absent => Err(missing(field)),
            Scalar::Text(text) => Err(bad(format!(
                "{field} must be {INTEGER}, got {}",
                excerpt(text)
            ))),
            other => Err(wrong(field, INTEGER, other)),
        }
    }

    pub(super) fn uint_opt(&self, field: impl fmt::Display) -> Result<Option<u64>, InvalidMessage> {
        if self.is_absent() {
            return Ok(None);
        }
        self.uint(field).map(Some)
    }

    pub(super) fn boolean(&self, field: impl fmt::Display) -> Result<bool, InvalidMessage> {
        match self {
            Scalar::Bool(value) => Ok(*value),
            Scalar::Absent => Err(missing(field)),
            other => Err(wrong(field, "true or false", other)),
        }
    }

    /// A message id, with an error text that does not name the field.
    pub(super) fn message_id_in(&self) -> Result<MessageId, InvalidMessage> {
        match self {
            Scalar::Unsigned(value) => Ok(MessageId(*value)),
            Scalar::Text(text) => MessageId::parse(text),
            other => Err(bad(format!(
                "a message id is a decimal string, got {}",
                other.kind()
            ))),
        }
    }

    pub(super) fn message_id(&self, field: impl fmt::Display) -> Result<MessageId, InvalidMessage> {
        match self {
            Scalar::Absent => Err(missing(field)),
            other => other
                .message_id_in()
                .map_err(|error| in_field(field, error)),
        }
    }

    pub(super) fn message_id_opt(
        &self,
        field: impl fmt::Display,
    ) -> Result<Option<MessageId>, InvalidMessage> {
        if self.is_absent() {
            return Ok(None);
        }
        self.message_id(field).map(Some)
    }

    /// A user id, with an error text that does not name the field.
    pub(super) fn user_id_in(&self) -> Result<UserId, InvalidMessage> {
        match self {
            Scalar::Text(text) => UserId::parse(text),
            other => Err(bad(format!("a user id is a string, got {}", other.kind()))),
        }
    }

    pub(super) fn user_id(&self, field: impl fmt::Display) -> Result<UserId, InvalidMessage> {
        match self {
            Scalar::Absent => Err(missing(field)),
            other => other.user_id_in().map_err(|error| in_field(field, error)),
        }
    }
}
