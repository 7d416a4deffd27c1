//! Fuzzes the JSON decoders with arbitrary bytes and checks what they promise: no panic; an
//! error with a code the decoders use, a text short enough to send back in an `error`, and
//! no id when the input was refused unread; and a decoded message that the encoder writes in a
//! form that decodes to the same message and is written again byte for byte.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::json::{decode_client, decode_server, encode_client, encode_server};
use wire::{Correlation, DecodeError, ErrorCode, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::DEFAULT;
    // The canonical form may be longer than the input (a message id read from a number is
    // written as a string), so the round trip is not bounded by the input's size limit.
    let unbounded = Limits {
        envelope_bytes_max: usize::MAX,
        ..Limits::DEFAULT
    };

    match decode_client(data, &limits) {
        Ok(message) => {
            let mut out = Vec::new();
            encode_client(&message, &mut out);
            assert_eq!(decode_client(&out, &unbounded), Ok(message.clone()));
            let mut again = Vec::new();
            encode_client(&message, &mut again);
            assert_eq!(out, again);
        }
        Err(error) => check_error(data, &error, &limits),
    }

    match decode_server(data, &limits) {
        Ok(message) => {
            let mut out = Vec::new();
            encode_server(&message, &mut out);
            assert_eq!(decode_server(&out, &unbounded), Ok(message.clone()));
            let mut again = Vec::new();
            encode_server(&message, &mut again);
            assert_eq!(out, again);
        }
        Err(error) => check_error(data, &error, &limits),
    }
});

fn check_error(data: &[u8], error: &DecodeError, limits: &Limits) {
    assert!(matches!(
        error.error.code(),
        ErrorCode::BadRequest | ErrorCode::TooLarge
    ));
    let text = error.to_string();
    assert!(!text.is_empty());
    assert!(text.len() <= limits.error_text_bytes_max, "{text}");
    // Nothing was read from input refused unread, so nothing can answer it.
    if data.len() > limits.envelope_bytes_max || std::str::from_utf8(data).is_err() {
        assert_eq!(error.correlation, Correlation::None);
    }
}
