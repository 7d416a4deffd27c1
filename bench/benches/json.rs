//! Micro-benchmarks of the JSON encoding on its hot paths: the gateway decoding a
//! `send_message` with 100 characters of content, and encoding the `incoming_message` that
//! carries it to the recipient.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wire::json::{decode_client, encode_server};
use wire::{IncomingMessage, Limits, MessageId, ServerMessage, Target, UserId};

/// 100 characters of ordinary chat text: mostly ASCII, one accented letter, no escapes.
fn content() -> String {
    let text: String = "Running ten minutes late, save me a seat near the window please. Café on the corner at 6? Yes!!!!!!!"
        .chars()
        .take(100)
        .collect();
    assert_eq!(text.chars().count(), 100);
    text
}

fn decode(c: &mut Criterion) {
    let input = format!(
        r#"{{"type":"send_message","client_msg_id":1767225600123,"to":"bob","content":"{}"}}"#,
        content()
    );
    let limits = Limits::DEFAULT;
    assert!(decode_client(input.as_bytes(), &limits).is_ok());
    let mut group = c.benchmark_group("json");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("decode_send_message_100_chars", |b| {
        b.iter(|| decode_client(black_box(input.as_bytes()), &limits))
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let message = ServerMessage::IncomingMessage(IncomingMessage {
        message_id: MessageId(7213509893634048001),
        from: UserId::parse("alice").unwrap(),
        to: Target::User(UserId::parse("bob").unwrap()),
        content: content(),
        media: None,
        timestamp_ms: 1767225600000,
    });
    // The gateway reuses one buffer per connection, so the benchmark does too.
    let mut out = Vec::with_capacity(1024);
    encode_server(&message, &mut out);
    let mut group = c.benchmark_group("json");
    group.throughput(Throughput::Bytes(out.len() as u64));
    group.bench_function("encode_incoming_message_100_chars", |b| {
        b.iter(|| {
            out.clear();
            encode_server(black_box(&message), &mut out);
            out.len()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = switchboard_bench::config();
    targets = decode, encode
}
criterion_main!(benches);
