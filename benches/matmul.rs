//! Quantized matmul throughput (`lowbit_core::matmul::matmul`) per type and thread count:
//!
//! * GEMV (`n = 1`), 4096 × 4096 weights, in weight bytes per second. The bench cycles over
//!   distinct copies of the weight (`LOWBIT_BENCH_GEMV_MB`, default 512 MB in total) so that
//!   they stream from DRAM, not from the last-level cache.
//! * GEMM (`n = LOWBIT_BENCH_GEMM_N`, default 512), 4096 × 4096, in FLOP/s (2 · n · rows · cols
//!   per call; criterion prints them as elements/s), at the best ISA only.
//!
//! `cargo bench -p lowbit-bench --bench matmul`, filter with e.g. `-- gemv/2t/q4_k`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use lowbit_core::matmul::{matmul, QMatrix};
use lowbit_core::quant::{self, QuantOptions, Source};
use lowbit_core::simd::{self, available};
use std::hint::black_box;
use std::time::Duration;

const TYPES: &[&str] =
    &["q4_0", "q4_k", "q8_0", "q6_k", "q3_k", "q2_k", "int4-g128", "int3-g128", "int3-g16-dq", "int4-g16-dq", "f16"];
const ROWS: usize = 4096;
const COLS: usize = 4096;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Deterministic weight-like (or activation-like with `scale = 1`) values.
fn values(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n).map(|_| (next() + next() + next() - 1.5) * scale).collect()
}

fn bench(c: &mut Criterion) {
    let w = values(ROWS * COLS, 0.05, 0x1234_5678_9abc_def1);
    let gemv_bytes = env("LOWBIT_BENCH_GEMV_MB", 512) << 20;
    let gemm_n = env("LOWBIT_BENCH_GEMM_N", 512);
    let x1 = values(COLS, 1.0, 7);
    let xn = values(gemm_n * COLS, 1.0, 8);
    let best = simd::active().expect("ISA");
    for &t in TYPES {
        let (layout, bytes) = quant::quantize(t, Source::F32(&w), ROWS, COLS, &QuantOptions::default()).unwrap();
        let copies = gemv_bytes.div_ceil(bytes.len()).max(1);
        let all: Vec<u8> = bytes.iter().copied().cycle().take(copies * bytes.len()).collect();
        let mats: Vec<QMatrix<'_>> =
            all.chunks_exact(bytes.len()).map(|d| QMatrix::new(layout, d, None, None).unwrap()).collect();
        for threads in [1usize, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
            let mut g = c.benchmark_group(format!("gemv/{threads}t"));
            g.throughput(Throughput::BytesDecimal(bytes.len() as u64))
                .sample_size(20)
                .warm_up_time(Duration::from_millis(500));
            for isa in available() {
                let mut y = vec![0f32; ROWS];
                let mut i = 0;
                g.bench_function(BenchmarkId::new(t, isa), |b| {
                    b.iter(|| {
                        i = (i + 1) % mats.len();
                        pool.install(|| matmul(&mats[i], black_box(&x1), 1, &mut y, Some(isa)).unwrap())
                    })
                });
            }
            g.finish();
            let mut g = c.benchmark_group(format!("gemm{gemm_n}/{threads}t"));
            g.throughput(Throughput::Elements((2 * gemm_n * ROWS * COLS) as u64))
                .sample_size(10)
                .sampling_mode(SamplingMode::Flat)
                .warm_up_time(Duration::from_millis(200))
                .measurement_time(Duration::from_secs(3));
            let mut y = vec![0f32; gemm_n * ROWS];
            g.bench_function(BenchmarkId::new(t, best), |b| {
                b.iter(|| pool.install(|| matmul(&mats[0], black_box(&xn), gemm_n, &mut y, Some(best)).unwrap()))
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
