//! Quantize and dequantize throughput per type, ISA and thread count on a 4096×4096 f32
//! matrix (64 MB), the figures of BENCHMARKS.md. Throughput is in decimal MB/s of f32 input
//! (quantize) and of f32 output (dequantize).
//!
//! `cargo bench -p lowbit-bench` runs all; filter with e.g. `cargo bench -p lowbit-bench -- q4_k`.
//! `LOWBIT_BENCH_ROWS` shrinks the matrix for a quick look.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lowbit_core::quant::{self, QuantOptions, Source};
use lowbit_core::simd::{available, Isa};
use std::hint::black_box;
use std::time::Duration;

const TYPES: &[&str] = &[
    "q8_0",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q2_k",
    "q3_k",
    "q4_k",
    "q5_k",
    "q6_k",
    "iq4_nl",
    "f16",
    "bf16",
    "int8-g128",
    "int4-g128",
    "int3-g128",
    "int2-g64",
    "int2-g16-dq",
    "int3-g16-dq",
    "int4-g16-dq",
];

fn matrix(rows: usize, cols: usize) -> Vec<f32> {
    // Deterministic normal-ish data (sum of uniforms), weight-like scale.
    let mut s = 0x1234_5678_9abc_def1u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..rows * cols).map(|_| (next() + next() + next() - 1.5) * 0.05).collect()
}

fn bench(c: &mut Criterion) {
    let rows = std::env::var("LOWBIT_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(4096);
    let cols = 4096;
    let x = matrix(rows, cols);
    let isas: Vec<Isa> = available();
    // The bytes are identical on every ISA: quantize once per type for the dequantize runs.
    let encoded: Vec<_> = TYPES
        .iter()
        .map(|&t| (t, quant::quantize(t, Source::F32(&x), rows, cols, &QuantOptions::default()).unwrap()))
        .collect();
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
        let mut q = c.benchmark_group(format!("quantize/{threads}t"));
        q.throughput(Throughput::BytesDecimal((x.len() * 4) as u64))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500));
        for &t in TYPES {
            for &isa in &isas {
                let opts = QuantOptions { isa: Some(isa), ..Default::default() };
                q.bench_with_input(BenchmarkId::new(t, isa), &isa, |b, _| {
                    b.iter(|| {
                        pool.install(|| quant::quantize(t, Source::F32(black_box(&x)), rows, cols, &opts).unwrap())
                    })
                });
            }
        }
        q.finish();
        let mut dq = c.benchmark_group(format!("dequantize/{threads}t"));
        dq.throughput(Throughput::BytesDecimal((x.len() * 4) as u64))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300));
        for (t, (layout, bytes)) in &encoded {
            for &isa in &isas {
                dq.bench_with_input(BenchmarkId::new(*t, isa), &isa, |b, &isa| {
                    b.iter(|| pool.install(|| quant::dequantize(layout, black_box(bytes), Some(isa)).unwrap()))
                });
            }
        }
        dq.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
