//! Property tests of the JSON encoding: every valid message survives model -> JSON -> model,
//! in both directions, and the JSON it writes is what other JSON readers expect.

mod common;

use proptest::prelude::*;
use serde_json::Value;
use wire::json::{decode_client, decode_server, encode_client, encode_server};
use wire::{ClientMessage, Limits, MessageId, ServerMessage};

/// Checks the text against a general JSON reader: one object, the right `type`, and every
/// message id written as a decimal string of the same number.
fn check_value(
    text: &[u8],
    type_name: &str,
    message_ids: &[MessageId],
) -> Result<(), TestCaseError> {
    let value: Value =
        serde_json::from_slice(text).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(value["type"].as_str(), Some(type_name));
    let mut found = Vec::new();
    collect_message_ids(&value, &mut found);
    let expected: Vec<String> = message_ids.iter().map(|id| id.0.to_string()).collect();
    prop_assert_eq!(found, expected);
    Ok(())
}

/// Every value under a `message_id`, `message_ids` or `before` key. Arrays keep their order
/// and no object holds two of these keys, so the order is the model's. A value that is not a
/// string is recorded as its JSON text, which no expected id equals.
fn collect_message_ids(value: &Value, found: &mut Vec<String>) {
    let text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        other => format!("not a string: {other}"),
    };
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("message_id" | "before", value) => found.push(text(value)),
                    ("message_ids", Value::Array(ids)) => found.extend(ids.iter().map(text)),
                    _ => collect_message_ids(value, found),
                }
            }
        }
        Value::Array(values) => values
            .iter()
            .for_each(|value| collect_message_ids(value, found)),
        _ => {}
    }
}

fn client_message_ids(message: &ClientMessage) -> Vec<MessageId> {
    match message {
        ClientMessage::MessageDelivered { message_ids }
        | ClientMessage::MessageRead { message_ids } => message_ids.clone(),
        ClientMessage::History(request) => request.before.into_iter().collect(),
        _ => Vec::new(),
    }
}

fn server_message_ids(message: &ServerMessage) -> Vec<MessageId> {
    match message {
        ServerMessage::MessageReceived { message_id, .. } => vec![*message_id],
        ServerMessage::IncomingMessage(message) => vec![message.message_id],
        ServerMessage::MessageDelivered(receipt) | ServerMessage::MessageRead(receipt) => {
            vec![receipt.message_id]
        }
        ServerMessage::History { messages, .. } => messages.iter().map(|m| m.message_id).collect(),
        ServerMessage::GroupEvent(event) => vec![event.message_id],
        _ => Vec::new(),
    }
}

proptest! {
    #[test]
    fn client_messages_round_trip(message in common::client_message()) {
        let mut out = Vec::new();
        encode_client(&message, &mut out);
        prop_assert_eq!(decode_client(&out, &Limits::DEFAULT), Ok(message.clone()));
        check_value(&out, message.type_name(), &client_message_ids(&message))?;
    }

    #[test]
    fn server_messages_round_trip(message in common::server_message()) {
        let mut out = Vec::new();
        encode_server(&message, &mut out);
        prop_assert_eq!(decode_server(&out, &Limits::DEFAULT), Ok(message.clone()));
        check_value(&out, message.type_name(), &server_message_ids(&message))?;
    }

    /// The encoders append: what is in the buffer stays, and the message follows it.
    #[test]
    fn encoding_appends(first in common::server_message(), second in common::client_message()) {
        let mut alone = Vec::new();
        encode_client(&second, &mut alone);
        let mut out = Vec::new();
        encode_server(&first, &mut out);
        let first_len = out.len();
        encode_client(&second, &mut out);
        prop_assert_eq!(&out[first_len..], &alone[..]);
        prop_assert_eq!(decode_server(&out[..first_len], &Limits::DEFAULT), Ok(first));
    }
}
