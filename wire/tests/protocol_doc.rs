//! Keeps `docs/protocol.md` true: every JSON example on that page must be exactly what the
//! encoder writes for the message it decodes to, in one direction or the other.

use wire::{Limits, json};

/// The text of every ```json block of the page.
fn json_examples(page: &str) -> Vec<&str> {
    let mut examples = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find("```json\n") {
        let block = &rest[start + "```json\n".len()..];
        let end = block.find("```").expect("an unterminated ```json block");
        examples.push(block[..end].trim_end());
        rest = &block[end + 3..];
    }
    examples
}

/// Whether `example` decodes in some direction and encodes back to the same bytes.
fn is_canonical(example: &str) -> Result<(), String> {
    let limits = Limits::DEFAULT;
    let mut out = Vec::new();
    let as_client = json::decode_client(example.as_bytes(), &limits);
    if let Ok(message) = &as_client {
        json::encode_client(message, &mut out);
        if out == example.as_bytes() {
            return Ok(());
        }
    }
    out.clear();
    let as_server = json::decode_server(example.as_bytes(), &limits);
    if let Ok(message) = &as_server {
        json::encode_server(message, &mut out);
        if out == example.as_bytes() {
            return Ok(());
        }
    }
    Err(format!(
        "as a client message: {as_client:?}\nas a server message: {as_server:?}\nre-encoded: {}",
        String::from_utf8_lossy(&out)
    ))
}

#[test]
fn every_json_example_in_the_protocol_page_is_what_the_encoder_writes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let page = std::fs::read_to_string(path).expect("docs/protocol.md is readable");
    let examples = json_examples(&page);
    // One example of each of the seventeen messages at least, so that a page that lost its
    // examples (or a broken block parser) fails here.
    assert!(
        examples.len() >= 17,
        "only {} examples found",
        examples.len()
    );
    for example in examples {
        if let Err(why) = is_canonical(example) {
            panic!("docs/protocol.md example is not canonical:\n{example}\n{why}");
        }
    }
}

#[test]
fn a_changed_example_is_caught() {
    let example = r#"{"type":"send_message","to":"bob","client_msg_id":1,"content":"Hello, Bob!"}"#;
    assert!(
        is_canonical(example).is_err(),
        "field order differs from the encoder's"
    );
    let example = r#"{"type":"send_message","client_msg_id":1,"to":"bob","content":"Hello, Bob!"}"#;
    assert!(is_canonical(example).is_ok());
}
