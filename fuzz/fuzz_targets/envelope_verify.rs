//! Fuzzes the flatbuffers envelope decoder with arbitrary bytes and checks what it promises:
//! no panic; a verify error carries no correlation; a buffer decodes in at most one direction;
//! and whatever decodes re-encodes to an envelope that decodes to the same message.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use wire::envelope::{EnvelopeEncoder, VerifiedEnvelope};
use wire::{Correlation, Limits};

fuzz_target!(|data: &[u8]| {
    // The defaults, and small bounds that inputs reach easily.
    let small = Limits {
        content_chars_max: 16,
        message_ids_max: 4,
        presence_users_max: 4,
        history_limit_max: 4,
        media_text_bytes_max: 8,
        error_text_bytes_max: 16,
        envelope_bytes_max: 512,
        flatbuffer_depth_max: 3,
        flatbuffer_tables_max: 8,
    };
    for limits in [Limits::DEFAULT, small] {
        check(data, &limits);
    }
});

fn check(data: &[u8], limits: &Limits) {
    let verified = match VerifiedEnvelope::verify(Bytes::copy_from_slice(data), limits) {
        Ok(verified) => verified,
        Err(error) => {
            assert_eq!(error.correlation, Correlation::None);
            return;
        }
    };
    assert!(data.len() <= limits.envelope_bytes_max);
    // A decoded message may re-encode larger than it came (the input may share one string
    // between fields), so the second pass lifts the buffer bounds but keeps the message ones.
    let roomy = Limits {
        envelope_bytes_max: 1 << 24,
        flatbuffer_depth_max: 64,
        flatbuffer_tables_max: 1 << 20,
        ..limits.clone()
    };
    let mut encoder = EnvelopeEncoder::new();
    let client = verified.to_client_message(limits);
    let server = verified.to_server_message(limits);
    assert!(
        client.is_err() || server.is_err(),
        "one buffer decoded both ways: {client:?} {server:?}"
    );
    if let Ok(message) = client {
        let bytes = Bytes::copy_from_slice(encoder.encode_client(&message));
        let again = VerifiedEnvelope::verify(bytes, &roomy).expect("a re-encoding verifies");
        assert_eq!(again.to_client_message(limits), Ok(message));
    }
    if let Ok(message) = server {
        let bytes = Bytes::copy_from_slice(encoder.encode_server(&message));
        let again = VerifiedEnvelope::verify(bytes, &roomy).expect("a re-encoding verifies");
        assert_eq!(again.to_server_message(limits), Ok(message));
    }
}
