//! The message encodings a connection speaks, chosen by subprotocol at the upgrade: JSON in
//! text frames or flatbuffers envelopes in binary frames. Both decode to the same validated
//! [`ClientMessage`] and encode the same [`ServerMessage`].

use std::sync::Arc;

use bytes::Bytes;
use wire::envelope::{EnvelopeEncoder, VerifiedEnvelope};
use wire::frame::OpCode;
use wire::handshake::Encoding;
use wire::{ClientMessage, Correlation, DecodeError, ErrorCode, ErrorMessage, InvalidMessage};

/// The opcode of the data frames of an encoding.
pub fn data_opcode(encoding: Encoding) -> OpCode {
    match encoding {
        Encoding::Json => OpCode::Text,
        Encoding::Flatbuffers => OpCode::Binary,
    }
}

/// Decodes and validates one client message that arrived in a frame of type `opcode`.
pub fn decode_client(
    encoding: Encoding,
    opcode: OpCode,
    payload: Bytes,
    limits: &wire::Limits,
) -> Result<ClientMessage, DecodeError> {
    if opcode != data_opcode(encoding) {
        let text = match encoding {
            Encoding::Json => "binary frames need the subprotocol switchboard.v1.fb",
            Encoding::Flatbuffers => "text frames need the subprotocol switchboard.v1.json",
        };
        return Err(DecodeError {
            error: InvalidMessage::BadRequest(text.to_owned()),
            correlation: Correlation::None,
        });
    }
    match encoding {
        Encoding::Json => wire::json::decode_client(&payload, limits),
        Encoding::Flatbuffers => {
            VerifiedEnvelope::verify(payload, limits)?.to_client_message(limits)
        }
    }
}

/// Reusable encoder state of a shard.
#[derive(Debug, Default)]
pub struct Encoders {
    envelope: EnvelopeEncoder,
}

impl Encoders {
    /// The payload of the data frame that carries `message` in `encoding`.
    pub fn encode(&mut self, encoding: Encoding, message: &wire::ServerMessage) -> Bytes {
        match encoding {
            Encoding::Json => {
                let mut out = Vec::with_capacity(128);
                wire::json::encode_server(message, &mut out);
                Bytes::from(out)
            }
            Encoding::Flatbuffers => Bytes::copy_from_slice(self.envelope.encode_server(message)),
        }
    }
}

/// A server message with its payload in each encoding asked for so far: a message for
/// several connections of a shard is encoded once per encoding, and each connection's queue
/// gets the same `Bytes`.
#[derive(Debug)]
pub struct Encoded {
    message: Arc<wire::ServerMessage>,
    json: Option<Bytes>,
    flatbuffers: Option<Bytes>,
}

impl Encoded {
    pub fn new(message: Arc<wire::ServerMessage>) -> Encoded {
        Encoded {
            message,
            json: None,
            flatbuffers: None,
        }
    }

    pub fn message(&self) -> &wire::ServerMessage {
        &self.message
    }

    /// Whether this is the encoding of `message` itself (the same allocation), so that the
    /// check costs a comparison of pointers, not of bodies.
    pub fn is(&self, message: &Arc<wire::ServerMessage>) -> bool {
        Arc::ptr_eq(&self.message, message)
    }

    /// The payload in `encoding`, encoded the first time it is asked for.
    pub fn payload(&mut self, encoding: Encoding, encoders: &mut Encoders) -> Bytes {
        let cached = match encoding {
            Encoding::Json => &mut self.json,
            Encoding::Flatbuffers => &mut self.flatbuffers,
        };
        cached
            .get_or_insert_with(|| encoders.encode(encoding, &self.message))
            .clone()
    }
}

/// The `error` message that answers a refused message, its text cut to `text_bytes_max`.
pub fn error_message(
    code: ErrorCode,
    text: &str,
    correlation: Correlation,
    retry_after_ms: Option<u64>,
    text_bytes_max: usize,
) -> wire::ServerMessage {
    let text = &text[..text.floor_char_boundary(text_bytes_max)];
    wire::ServerMessage::Error(ErrorMessage {
        code,
        message: text.to_owned(),
        correlation,
        retry_after_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        encoding: Encoding,
        opcode: OpCode,
        payload: &[u8],
        expected: Result<&str, (ErrorCode, Correlation)>,
    ) {
        let limits = wire::Limits::DEFAULT;
        let decoded = decode_client(encoding, opcode, Bytes::copy_from_slice(payload), &limits);
        match (decoded, expected) {
            (Ok(message), Ok(type_name)) => assert_eq!(message.type_name(), type_name),
            (Err(error), Err((code, correlation))) => {
                assert_eq!(error.error.code(), code, "{error}");
                assert_eq!(error.correlation, correlation);
            }
            (decoded, expected) => panic!("{decoded:?} is not {expected:?}"),
        }
    }

    #[test]
    fn decoding_follows_the_encoding() {
        check(
            Encoding::Json,
            OpCode::Text,
            br#"{"type":"heartbeat"}"#,
            Ok("heartbeat"),
        );
        check(
            Encoding::Json,
            OpCode::Binary,
            br#"{"type":"heartbeat"}"#,
            Err((ErrorCode::BadRequest, Correlation::None)),
        );
        check(
            Encoding::Json,
            OpCode::Text,
            b"{",
            Err((ErrorCode::BadRequest, Correlation::None)),
        );
        check(
            Encoding::Json,
            OpCode::Text,
            br#"{"type":"send_message","client_msg_id":7,"to":"bob","content":""}"#,
            Err((ErrorCode::BadRequest, Correlation::ClientMsgId(7))),
        );
        let mut encoder = EnvelopeEncoder::new();
        let heartbeat = encoder.encode_client(&ClientMessage::Heartbeat).to_vec();
        check(
            Encoding::Flatbuffers,
            OpCode::Binary,
            &heartbeat,
            Ok("heartbeat"),
        );
        check(
            Encoding::Flatbuffers,
            OpCode::Text,
            &heartbeat,
            Err((ErrorCode::BadRequest, Correlation::None)),
        );
        check(
            Encoding::Flatbuffers,
            OpCode::Binary,
            b"\x01\x02",
            Err((ErrorCode::BadRequest, Correlation::None)),
        );
    }

    #[test]
    fn errors_are_encoded_in_the_connection_encoding() {
        let mut encoders = Encoders::default();
        let error = error_message(
            ErrorCode::TooLarge,
            "too long",
            Correlation::ReqId(3),
            None,
            1024,
        );
        let json = encoders.encode(Encoding::Json, &error);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["type"], "error");
        assert_eq!(value["code"], "too_large");
        assert_eq!(value["req_id"], 3);
        let fb = encoders.encode(Encoding::Flatbuffers, &error);
        let verified = VerifiedEnvelope::verify(fb, &wire::Limits::DEFAULT).unwrap();
        assert_eq!(
            verified.to_server_message(&wire::Limits::DEFAULT).unwrap(),
            error
        );
        let cut = error_message(ErrorCode::Internal, "ééé", Correlation::None, None, 3);
        let wire::ServerMessage::Error(cut) = cut else {
            unreachable!()
        };
        assert_eq!(cut.message, "é");
    }

    #[test]
    fn a_message_is_encoded_once_per_encoding() {
        let mut encoders = Encoders::default();
        let message = error_message(ErrorCode::Internal, "x", Correlation::None, None, 64);
        let message = Arc::new(message);
        let mut encoded = Encoded::new(Arc::clone(&message));
        assert!(encoded.is(&message));
        assert!(
            !encoded.is(&Arc::new((*message).clone())),
            "an equal copy is another message"
        );
        let first = encoded.payload(Encoding::Json, &mut encoders);
        let again = encoded.payload(Encoding::Json, &mut encoders);
        assert_eq!(first.as_ptr(), again.as_ptr(), "the same bytes, shared");
        assert_eq!(first, encoders.encode(Encoding::Json, &message));
        let fb = encoded.payload(Encoding::Flatbuffers, &mut encoders);
        assert_eq!(fb, encoders.encode(Encoding::Flatbuffers, &message));
    }
}
