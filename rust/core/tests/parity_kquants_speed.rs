//! Ad-hoc single-thread throughput of the k-quant kernels on a 4096 × 4096 N(0, 1) matrix
//! (the official criterion benchmark lives in `benches/`). Run with
//! `cargo test --release -p lowbit-core --test parity_kquants_speed -- --ignored --nocapture`
//! (`KQ_ISA=avx2`, `KQ_TYPE=q4_k`, `KQ_REPS=5`, `KQ_MODE=ggml` narrow it down).

mod common;

use std::time::Instant;

use common::{importance, simd_isas, Rng};
use lowbit_core::blocks::kquants::Mode;
use lowbit_core::simd::kquants::{dequantize_row, quantize_row_mode};
use lowbit_core::simd::Isa;
use lowbit_core::QType;

const N: usize = 4096;

/// This thread's CPU time in seconds (`/proc/thread-self/schedstat`, first field: ns on CPU),
/// so that the figures survive a shared machine; 0 where unavailable.
fn cpu_time() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
        .map_or(0.0, |ns| ns / 1e9)
}

/// Runs `f` `reps` times; median wall seconds and median CPU seconds.
fn timed(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (t, c) = (Instant::now(), cpu_time());
        f();
        wall.push(t.elapsed().as_secs_f64());
        cpu.push(cpu_time() - c);
    }
    (median(wall), median(cpu))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
#[ignore]
fn kquants_throughput() {
    let mut r = Rng::new(1);
    let x: Vec<f32> = (0..N * N).map(|_| r.normal()).collect();
    let imp = importance(N, 2);
    let mb = (N * N * 4) as f64 / 1e6;
    // KQ_MODE=ggml measures ggml's algorithm alone (no refinement).
    let mode = if std::env::var("KQ_MODE").is_ok_and(|m| m == "ggml") { Mode::Ggml } else { Mode::Refined };
    let reps: usize = std::env::var("KQ_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    for qtype in [QType::Q2K, QType::Q3K, QType::Q4K, QType::Q5K, QType::Q6K] {
        let rb = N / 256 * qtype.info().block_bytes;
        let mut q = vec![0u8; N * rb];
        let only = std::env::var("KQ_ISA").ok();
        let only_type = std::env::var("KQ_TYPE").ok();
        if only_type.as_deref().is_some_and(|t| t != qtype.name()) {
            continue;
        }
        for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
            if only.as_deref().is_some_and(|o| o != isa.name()) {
                continue;
            }
            for with_imp in [false, true] {
                let (wall, cpu) = timed(reps, || {
                    for (row, out) in x.chunks(N).zip(q.chunks_mut(rb)) {
                        quantize_row_mode(isa, qtype, row, out, with_imp.then_some(&imp[..]), mode);
                    }
                });
                eprintln!(
                    "{} {:6} quantize{}: {:8.1} MB/s wall, {:8.1} MB/s of CPU time",
                    qtype.name(),
                    isa.name(),
                    if with_imp { "+imp" } else { "    " },
                    mb / wall,
                    mb / cpu
                );
            }
            let mut y = vec![0f32; N * N];
            let (wall, cpu) = timed(reps.max(2), || {
                for (b, out) in q.chunks(rb).zip(y.chunks_mut(N)) {
                    dequantize_row(isa, qtype, b, out);
                }
            });
            eprintln!(
                "{} {:6} dequantize:    {:8.2} GB/s wall, {:8.2} GB/s of CPU time (f32 out)",
                qtype.name(),
                isa.name(),
                mb / 1e3 / wall,
                mb / 1e3 / cpu
            );
        }
    }
}
