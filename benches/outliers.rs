//! The cost of a sparse outlier sidecar in the quantized matmul (`lowbit_core::matmul::matmul`):
//! each weight multiplied without and with 0.5 % outliers in the same run, so the two medians
//! give the overhead ratio (issue 8's target: ≤ 1.15).
//!
//! * Outliers: seeded, realistic — half of them in 8 "hot" input columns (each present in about
//!   half the rows, as activation-outlier channels make them), the rest at uniform positions;
//!   0.5 % of the weights in all ([`outlier_parts`]).
//! * GEMV (`n = 1`), 4096 × 4096 and 14336 × 4096, 1 and 2 threads, in weight bytes per second
//!   (the dense bytes, for both variants: the ratio of the two is the overhead). The bench cycles
//!   over distinct copies of the weight and of its outliers (`LOWBIT_BENCH_GEMV_MB`, default
//!   256 MB in total) so that both stream from DRAM.
//! * GEMM (`n = LOWBIT_BENCH_GEMM_N`, default 512), 4096 × 4096, 2 threads, in FLOP/s of the
//!   dense product.
//!
//! `cargo bench -p lowbit-bench --bench outliers`, filter with e.g. `-- gemv/2t/4096x4096/q4_k`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use lowbit_core::matmul::{matmul, Outliers, QMatrix};
use lowbit_core::quant::{self, QuantOptions, Source};
use lowbit_core::simd;
use std::hint::black_box;
use std::time::Duration;

const TYPES: &[&str] = &["q4_0", "q4_k", "int4-g128", "int3-g128", "q8_0"];
const SHAPES: &[(usize, usize)] = &[(4096, 4096), (14336, 4096)];
/// Fraction of the weights kept as outliers.
const FRACTION: f64 = 0.005;

/// A seeded xorshift64 generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Deterministic weight-like (or activation-like with `scale = 1`) values.
fn values(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed | 1);
    (0..n).map(|_| ((r.uniform() + r.uniform() + r.uniform() - 1.5) as f32) * scale).collect()
}

/// CSR outliers (LE u64 row pointers, u32 columns, f16 values) of about `fraction · rows · cols`
/// entries: 8 hot columns, each present in half the rows (4 per row), the rest at uniform
/// positions; values of magnitude 0.1–0.5 (the weights are about ±0.05).
fn outlier_parts(rows: usize, cols: usize, fraction: f64, seed: u64) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut r = Rng(seed | 1);
    let hot: Vec<usize> = (0..8).map(|_| r.next() as usize % cols).collect();
    let p_uniform = (fraction * cols as f64 - 4.0).max(0.0) / cols as f64;
    let (mut ptr, mut cs, mut vs) = (vec![0u64], vec![], vec![]);
    for _ in 0..rows {
        for c in 0..cols {
            let p = if hot.contains(&c) { 0.5 } else { p_uniform };
            if r.uniform() < p {
                let v = (0.1 + 0.4 * r.uniform()) * if r.next() & 1 == 0 { 1.0 } else { -1.0 };
                cs.push(c as u32);
                vs.push(half::f16::from_f64(v).to_bits());
            }
        }
        ptr.push(cs.len() as u64);
    }
    (
        ptr.iter().flat_map(|v| v.to_le_bytes()).collect(),
        cs.iter().flat_map(|v| v.to_le_bytes()).collect(),
        vs.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn bench(c: &mut Criterion) {
    let gemv_bytes = env("LOWBIT_BENCH_GEMV_MB", 256) << 20;
    let gemm_n = env("LOWBIT_BENCH_GEMM_N", 512);
    let best = simd::active().expect("ISA");
    for &(rows, cols) in SHAPES {
        let w = values(rows * cols, 0.05, 0x1234_5678_9abc_def1);
        let x1 = values(cols, 1.0, 7);
        let xn = values(gemm_n * cols, 1.0, 8);
        let (rp, oc, ov) = outlier_parts(rows, cols, FRACTION, 9);
        for &t in TYPES {
            let (layout, bytes) = quant::quantize(t, Source::F32(&w), rows, cols, &QuantOptions::default()).unwrap();
            let copies = gemv_bytes.div_ceil(bytes.len()).max(1);
            // Every copy of the weight has its own outliers, so that they stream from DRAM too.
            let data: Vec<Vec<u8>> = (0..copies).map(|_| bytes.clone()).collect();
            let parts: Vec<[Vec<u8>; 3]> = (0..copies).map(|_| [rp.clone(), oc.clone(), ov.clone()]).collect();
            let mats = |with: bool| -> Vec<QMatrix<'_>> {
                data.iter()
                    .zip(&parts)
                    .map(|(d, [p, c, v])| {
                        let o = with.then_some(Outliers { row_ptr: p, cols: c, vals: v });
                        QMatrix::new(layout, d, None, o).unwrap()
                    })
                    .collect()
            };
            let variants = [("0", mats(false)), ("0.5%", mats(true))];
            for threads in [1usize, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
                let mut g = c.benchmark_group(format!("outliers/gemv/{threads}t/{rows}x{cols}/{t}"));
                g.throughput(Throughput::BytesDecimal(bytes.len() as u64))
                    .sample_size(20)
                    .warm_up_time(Duration::from_millis(300))
                    .measurement_time(Duration::from_secs(2));
                for (name, ms) in &variants {
                    let mut y = vec![0f32; rows];
                    let mut i = 0;
                    g.bench_function(BenchmarkId::from_parameter(name), |b| {
                        b.iter(|| {
                            i = (i + 1) % ms.len();
                            pool.install(|| matmul(&ms[i], black_box(&x1), 1, &mut y, Some(best)).unwrap())
                        })
                    });
                }
                g.finish();
            }
            if rows != 4096 {
                continue;
            }
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("thread pool");
            let mut g = c.benchmark_group(format!("outliers/gemm{gemm_n}/2t/{rows}x{cols}/{t}"));
            g.throughput(Throughput::Elements((2 * gemm_n * rows * cols) as u64))
                .sample_size(10)
                .sampling_mode(SamplingMode::Flat)
                .warm_up_time(Duration::from_millis(200))
                .measurement_time(Duration::from_secs(3));
            let mut y = vec![0f32; gemm_n * rows];
            for (name, ms) in &variants {
                g.bench_function(BenchmarkId::from_parameter(name), |b| {
                    b.iter(|| pool.install(|| matmul(&ms[0], black_box(&xn), gemm_n, &mut y, Some(best)).unwrap()))
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
