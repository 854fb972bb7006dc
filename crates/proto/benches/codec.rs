//! Codec throughput: typical frames parsed and built per second, and the formatted-message parser.
//! Run with `cargo bench -p msnp24-proto --bench codec`; figures go in BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use msnp24_proto::frame::{decode, Limits};
use msnp24_proto::{FormattedMessage, FormattedMessageRef, Frame, Headers, Payload};
use std::hint::black_box;

/// An SDG as Skype 7 sends it: transport headers, the three blocks, a short text body.
fn typical_sdg() -> Vec<u8> {
    let mut m = FormattedMessage::new(
        "8:bob",
        "8:alice;epid={b958d334-651e-82fe-a2a1-3dfbb7f5cc08}",
        ("Messaging", "2.0"),
        b"hello, how are you doing today?".to_vec(),
    );
    m.content.push("Message-Type", "RichText");
    m.content.push("Client-Message-ID", "6643607751647822671");
    m.content.push("IM-Display-Name", "Alice");
    m.content.push("Content-Type", "Text/plain; charset=UTF-8");
    let transport = Headers::new().with("Registration", "A".repeat(120));
    Frame::new("SDG", 43, "MSGR", m.to_payload(&transport)).to_bytes()
}

fn codec(c: &mut Criterion) {
    let wire = typical_sdg();
    let limits = Limits::default();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode typical SDG", |b| {
        b.iter(|| decode(black_box(&wire), &limits).unwrap().unwrap())
    });
    let (frame, _) = decode(&wire, &limits).unwrap().unwrap();
    g.bench_function("encode typical SDG", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(512),
            |out| black_box(&frame).encode_into(out),
            BatchSize::SmallInput,
        )
    });
    // The full parse as the server does it: the frame, then its transport headers and formatted
    // message borrowed from the payload.
    g.bench_function("decode + transport headers + formatted message", |b| {
        b.iter(|| {
            let (f, _) = decode(black_box(&wire), &limits).unwrap().unwrap();
            let (transport, m) = FormattedMessageRef::parse_payload(&f.payload).unwrap();
            black_box((transport.get("Registration"), m.to(), m.body.len()));
        })
    });
    // The same into owned headers and message, as before the borrowed parse.
    g.bench_function(
        "decode + transport headers + formatted message, owned",
        |b| {
            b.iter(|| {
                let (f, _) = decode(black_box(&wire), &limits).unwrap().unwrap();
                let p = Payload::parse(&f.payload).unwrap();
                let m = FormattedMessage::parse_payload(&f.payload).unwrap();
                black_box((p, m))
            })
        },
    );
    g.finish();

    let (_, message) = FormattedMessage::parse_payload(&frame.payload).unwrap();
    let body = message.encode();
    let mut g = c.benchmark_group("formatted");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse", |b| {
        b.iter(|| FormattedMessage::parse(black_box(&body)).unwrap())
    });
    g.bench_function("encode", |b| b.iter(|| black_box(&message).encode()));
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
