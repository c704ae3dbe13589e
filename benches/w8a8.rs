//! W8A8 matmul throughput (`lowbit_core::matmul::matmul` on an `int8-row-sym` weight with an
//! `ActQuant`) against the weight-only int8 path on the same weight (activations quantized to
//! int8 blocks of 32 with f32 scales, see `matmul`'s module doc), per thread count:
//!
//! * GEMV (`n = 1`), 4096 × 4096, cycling over distinct copies of the weight
//!   (`LOWBIT_BENCH_GEMV_MB`, default 512 MB in total) so that they stream from DRAM;
//! * GEMM (`n = LOWBIT_BENCH_GEMM_N`, default 512), 4096 × 4096.
//!
//! Both report FLOP/s (2 · n · rows · cols per call; criterion prints them as elements/s), at
//! the best ISA. `cargo bench -p lowbit-bench --bench w8a8`, filter with e.g. `-- gemm512/2t`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use lowbit_core::matmul::{matmul, ActQuant, QMatrix};
use lowbit_core::quant::{self, QuantOptions, Source};
use lowbit_core::simd;
use std::hint::black_box;
use std::time::Duration;

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

/// The three ways of multiplying the same weight: weight-only int8, W8A8 static, W8A8 dynamic.
const MODES: [(&str, Option<ActQuant>); 3] = [
    ("int8-weight-only", None),
    ("w8a8-static", Some(ActQuant::Static(0.02))),
    ("w8a8-dynamic", Some(ActQuant::PerToken)),
];

fn bench(c: &mut Criterion) {
    let w = values(ROWS * COLS, 0.05, 0x1234_5678_9abc_def1);
    let gemv_bytes = env("LOWBIT_BENCH_GEMV_MB", 512) << 20;
    let gemm_n = env("LOWBIT_BENCH_GEMM_N", 512);
    let x1 = values(COLS, 1.0, 7);
    let xn = values(gemm_n * COLS, 1.0, 8);
    let best = simd::active().expect("ISA");
    let (layout, bytes) =
        quant::quantize("int8-row-sym", Source::F32(&w), ROWS, COLS, &QuantOptions::default()).unwrap();
    let copies = gemv_bytes.div_ceil(bytes.len()).max(1);
    let all: Vec<u8> = bytes.iter().copied().cycle().take(copies * bytes.len()).collect();
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
        let mut g = c.benchmark_group(format!("w8a8-gemv/{threads}t"));
        g.throughput(Throughput::Elements((2 * ROWS * COLS) as u64))
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500));
        for (name, act) in MODES {
            let mats: Vec<QMatrix<'_>> = all
                .chunks_exact(bytes.len())
                .map(|d| QMatrix::new(layout, d, None, None).and_then(|m| m.with_act(act)).unwrap())
                .collect();
            let mut y = vec![0f32; ROWS];
            let mut i = 0;
            g.bench_function(BenchmarkId::new(name, best), |b| {
                b.iter(|| {
                    i = (i + 1) % mats.len();
                    pool.install(|| matmul(&mats[i], black_box(&x1), 1, &mut y, Some(best)).unwrap())
                })
            });
        }
        g.finish();
        let mut g = c.benchmark_group(format!("w8a8-gemm{gemm_n}/{threads}t"));
        g.throughput(Throughput::Elements((2 * gemm_n * ROWS * COLS) as u64))
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_secs(3));
        for (name, act) in MODES {
            let m = QMatrix::new(layout, &bytes, None, None).and_then(|m| m.with_act(act)).unwrap();
            let mut y = vec![0f32; gemm_n * ROWS];
            g.bench_function(BenchmarkId::new(name, best), |b| {
                b.iter(|| pool.install(|| matmul(&m, black_box(&xn), gemm_n, &mut y, Some(best)).unwrap()))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
