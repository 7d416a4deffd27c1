//! Property tests of the flatbuffers envelope: model -> envelope -> verify -> model is the
//! identity for every valid message of either direction, a message never decodes as one of
//! the other direction, and no prefix of a valid envelope makes the verifier or the decoder
//! panic.

mod common;

use bytes::Bytes;
use proptest::prelude::*;
use wire::Limits;
use wire::envelope::{EnvelopeEncoder, VerifiedEnvelope};

fn verify(bytes: &[u8], limits: &Limits) -> VerifiedEnvelope {
    VerifiedEnvelope::verify(Bytes::copy_from_slice(bytes), limits).expect("verifies")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn client_messages_round_trip(message in common::client_message()) {
        let mut encoder = EnvelopeEncoder::new();
        let verified = verify(encoder.encode_client(&message), &Limits::DEFAULT);
        prop_assert_eq!(verified.to_client_message(&Limits::DEFAULT), Ok(message));
        // The directions never decode as each other.
        prop_assert!(verified.to_server_message(&Limits::DEFAULT).is_err());
    }

    #[test]
    fn server_messages_round_trip(message in common::server_message()) {
        let mut encoder = EnvelopeEncoder::new();
        let verified = verify(encoder.encode_server(&message), &Limits::DEFAULT);
        prop_assert_eq!(verified.to_server_message(&Limits::DEFAULT), Ok(message));
        prop_assert!(verified.to_client_message(&Limits::DEFAULT).is_err());
    }

    /// One encoder, many messages of both directions: what an earlier message left in the
    /// builder never leaks into a later one.
    #[test]
    fn a_reused_encoder_gives_the_same_bytes(
        clients in proptest::collection::vec(common::client_message(), 1..8),
        servers in proptest::collection::vec(common::server_message(), 1..8),
    ) {
        let mut reused = EnvelopeEncoder::new();
        for (client, server) in clients.iter().zip(&servers) {
            let fresh = EnvelopeEncoder::new().encode_client(client).to_vec();
            prop_assert_eq!(reused.encode_client(client), &fresh[..]);
            let fresh = EnvelopeEncoder::new().encode_server(server).to_vec();
            prop_assert_eq!(reused.encode_server(server), &fresh[..]);
        }
    }

    /// The verifier's apparent-size bound is twice `envelope_bytes_max`; an honest envelope
    /// passes it even when `envelope_bytes_max` is its exact size.
    #[test]
    fn honest_envelopes_fit_the_apparent_size_bound(
        client in common::client_message(),
        server in common::server_message(),
    ) {
        let mut encoder = EnvelopeEncoder::new();
        let bytes = encoder.encode_client(&client).to_vec();
        let exact = Limits { envelope_bytes_max: bytes.len(), ..Limits::DEFAULT };
        prop_assert_eq!(verify(&bytes, &exact).to_client_message(&exact), Ok(client));
        let bytes = encoder.encode_server(&server).to_vec();
        let exact = Limits { envelope_bytes_max: bytes.len(), ..Limits::DEFAULT };
        prop_assert_eq!(verify(&bytes, &exact).to_server_message(&exact), Ok(server));
    }

    /// Every prefix of a valid envelope is refused by the verifier or decodes (for a prefix
    /// that only drops trailing padding); nothing panics.
    #[test]
    fn truncated_envelopes_never_panic(
        client in common::client_message(),
        server in common::server_message(),
    ) {
        let limits = Limits::DEFAULT;
        let mut encoder = EnvelopeEncoder::new();
        let bytes = Bytes::copy_from_slice(encoder.encode_client(&client));
        for end in 0..bytes.len() {
            if let Ok(verified) = VerifiedEnvelope::verify(bytes.slice(..end), &limits) {
                prop_assert_eq!(verified.to_client_message(&limits), Ok(client.clone()));
            }
        }
        let bytes = Bytes::copy_from_slice(encoder.encode_server(&server));
        for end in 0..bytes.len() {
            if let Ok(verified) = VerifiedEnvelope::verify(bytes.slice(..end), &limits) {
                prop_assert_eq!(verified.to_server_message(&limits), Ok(server.clone()));
            }
        }
    }
}
