//! Micro-benchmarks of the frame decoder: split, unmask and hand on one client frame of 20 B,
//! 1 KiB and 64 KiB, as binary (masking only) and as text (plus UTF-8 validation), one
//! frame alone or many back to back, and the unmasking loop on its own.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use wire::frame::{FrameConfig, MessageDecoder, OpCode, apply_mask, encode_client_frame};

const PAYLOAD_SIZES: [usize; 3] = [20, 1024, 64 * 1024];

const CONFIG: FrameConfig = FrameConfig {
    frame_bytes_max: 1 << 20,
    message_bytes_max: 1 << 20,
};

/// ASCII, so that the same bytes serve as a text and as a binary payload.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

fn decode(c: &mut Criterion) {
    for (opcode, name) in [(OpCode::Binary, "binary"), (OpCode::Text, "text")] {
        let mut group = c.benchmark_group(format!("frame_decode/{name}"));
        for len in PAYLOAD_SIZES {
            let mut frame = BytesMut::new();
            encode_client_frame(
                opcode,
                true,
                [0x37, 0xfa, 0x21, 0x3d],
                &payload(len),
                &mut frame,
            );
            // A large input would make criterion's batches of copies take too much memory.
            let batch = if len > 4096 {
                BatchSize::LargeInput
            } else {
                BatchSize::SmallInput
            };
            group.throughput(Throughput::Bytes(len as u64));
            group.bench_function(format!("{len}"), |b| {
                let mut decoder = MessageDecoder::new(CONFIG);
                // The copy of the frame into a fresh read buffer is setup, not measured. The
                // empty split turns the buffer into a shared one, as a connection's read
                // buffer is after its first frame, so that the one allocation this costs is
                // not counted against every frame.
                b.iter_batched(
                    || {
                        let mut buf = frame.clone();
                        drop(buf.split_to(0));
                        buf
                    },
                    |mut buf| {
                        let message = decoder.decode(black_box(&mut buf));
                        (message, buf)
                    },
                    batch,
                );
            });
        }
        group.finish();
    }
}

/// Frames back to back in one read buffer, as a busy connection delivers small messages:
/// the time per iteration divided by `FRAMES_PER_BUFFER` is the time per frame.
const FRAMES_PER_BUFFER: usize = 100;

fn decode_back_to_back(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("frame_decode_x{FRAMES_PER_BUFFER}/binary"));
    for len in [20, 1024] {
        let mut frames = BytesMut::new();
        for _ in 0..FRAMES_PER_BUFFER {
            encode_client_frame(
                OpCode::Binary,
                true,
                [0x37, 0xfa, 0x21, 0x3d],
                &payload(len),
                &mut frames,
            );
        }
        group.throughput(Throughput::Bytes((len * FRAMES_PER_BUFFER) as u64));
        group.bench_function(format!("{len}"), |b| {
            let mut decoder = MessageDecoder::new(CONFIG);
            b.iter_batched(
                || {
                    let mut buf = frames.clone();
                    drop(buf.split_to(0));
                    buf
                },
                |mut buf| {
                    let mut count = 0;
                    while let Ok(Some(message)) = decoder.decode(&mut buf) {
                        black_box(message);
                        count += 1;
                    }
                    assert_eq!(count, FRAMES_PER_BUFFER);
                    buf
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_mask");
    for len in PAYLOAD_SIZES {
        let mut data = payload(len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("{len}"), |b| {
            b.iter(|| apply_mask(black_box(&mut data), [0x37, 0xfa, 0x21, 0x3d], 0));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = switchboard_bench::config();
    targets = decode, decode_back_to_back, mask
}
criterion_main!(benches);
