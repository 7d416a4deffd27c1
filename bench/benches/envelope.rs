//! Micro-benchmarks of the flatbuffers envelope on its hot paths, on the same messages as the
//! JSON benchmarks: the gateway verifying a `send_message` with 100 characters of content
//! (converted to the model, or only its content read in place), and encoding the
//! `incoming_message` that carries it to the recipient.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wire::envelope::{EnvelopeEncoder, VerifiedEnvelope};
use wire::{
    ClientMessage, IncomingMessage, Limits, MessageId, SendMessage, ServerMessage, Target, UserId,
};

/// 100 characters of ordinary chat text: mostly ASCII, one accented letter.
fn content() -> String {
    let text: String = "Running ten minutes late, save me a seat near the window please. Café on the corner at 6? Yes!!!!!"
        .chars()
        .cycle()
        .take(100)
        .collect();
    assert_eq!(text.chars().count(), 100);
    text
}

fn send_message() -> Bytes {
    let message = ClientMessage::SendMessage(SendMessage {
        client_msg_id: 1767225600123,
        to: Target::User(UserId::parse("bob").unwrap()),
        content: content(),
        media: None,
    });
    Bytes::copy_from_slice(EnvelopeEncoder::new().encode_client(&message))
}

fn verify(c: &mut Criterion) {
    let input = send_message();
    let limits = Limits::DEFAULT;
    let verified = VerifiedEnvelope::verify(input.clone(), &limits).unwrap();
    assert!(verified.to_client_message(&limits).is_ok());
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("verify_decode_send_message_100_chars", |b| {
        b.iter(|| {
            let verified = VerifiedEnvelope::verify(black_box(input.clone()), &limits)?;
            verified.to_client_message(&limits)
        })
    });
    // What the hot path can do instead of building the model: verify, then read the
    // content where it lies.
    group.bench_function("verify_read_content_100_chars", |b| {
        b.iter(|| {
            let verified = VerifiedEnvelope::verify(black_box(input.clone()), &limits).ok()?;
            let content = verified.envelope().body_as_send_message()?.content()?;
            Some(content.len())
        })
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
    // The gateway keeps one encoder per shard, so the benchmark reuses one too.
    let mut encoder = EnvelopeEncoder::with_capacity(1024);
    let n_bytes = encoder.encode_server(&message).len();
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Bytes(n_bytes as u64));
    group.bench_function("encode_incoming_message_100_chars", |b| {
        b.iter(|| encoder.encode_server(black_box(&message)).len())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = switchboard_bench::config();
    targets = verify, encode
}
criterion_main!(benches);
