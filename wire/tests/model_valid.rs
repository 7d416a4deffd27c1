//! The strategies that the round-trip tests draw from produce only valid messages, so a
//! round-trip failure is the codec's fault, not the generator's.

mod common;

use proptest::prelude::*;
use wire::Limits;

proptest! {
    #[test]
    fn generated_client_messages_are_valid(message in common::client_message()) {
        prop_assert!(message.validate(&Limits::DEFAULT).is_ok(), "{message:?}");
    }

    #[test]
    fn generated_server_messages_are_valid(message in common::server_message()) {
        prop_assert!(message.validate(&Limits::DEFAULT).is_ok(), "{message:?}");
    }
}
