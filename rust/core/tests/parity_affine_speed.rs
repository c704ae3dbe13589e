//! Ad-hoc throughput of the group-affine kernels (the official criterion bench comes later):
//! one thread, a 4096 × 4096 standard-normal f32 matrix, median of 5 runs, MB/s of f32 input
//! (quantize) and of f32 output (dequantize), scalar reference vs each SIMD ISA of the host.
//! Run: `cargo test --release -p lowbit-core --test parity_affine_speed -- --ignored --nocapture`.

mod common;

use std::time::Instant;

use common::{importance, simd_isas, Rng};
use lowbit_core::blocks::AffineRow;
use lowbit_core::qtype::AffineSpec;
use lowbit_core::simd::affine::{dequantize_row, quantize_row};
use lowbit_core::Isa;

const N: usize = 4096;
const RUNS: usize = 5;

/// Nanoseconds this thread has spent on a CPU (Linux `schedstat`), if available: on a shared
/// machine it excludes the time other processes held the core.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok()?.split_whitespace().next()?.parse().ok()
}

/// Median MB/s over RUNS runs, by wall clock and by thread CPU time.
fn median_mbs(bytes: usize, mut f: impl FnMut()) -> (f64, f64) {
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let (start, c0) = (Instant::now(), thread_cpu_ns());
        f();
        wall.push(start.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (c0, thread_cpu_ns()) {
            cpu.push((b - a) as f64 * 1e-9);
        }
    }
    let med = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t.get(t.len() / 2).map_or(f64::NAN, |s| bytes as f64 / s / 1e6)
    };
    (med(&mut wall), med(&mut cpu))
}

#[test]
#[ignore = "throughput measurement; run explicitly in release mode"]
fn affine_throughput() {
    let mut r = Rng::new(1);
    let x: Vec<f32> = (0..N * N).map(|_| r.normal()).collect();
    let imp = importance(N, 3);
    let mut isas = vec![Isa::Scalar];
    isas.extend(simd_isas());
    // AFFINE_SPEED_ISA=avx2 (say) times one level only; AFFINE_SPEED_IMPORTANCE=1 only the search.
    if let Ok(only) = std::env::var("AFFINE_SPEED_ISA") {
        isas.retain(|i| i.name() == only);
    }
    let only_search = std::env::var("AFFINE_SPEED_IMPORTANCE").is_ok();
    let specs = [
        (4, Some(128), false),
        (4, Some(128), true),
        (4, Some(32), false),
        (8, Some(128), false),
        (8, None, true),
        (3, Some(128), false),
        (2, Some(64), false),
    ];
    for (bits, group, sym) in specs {
        let spec = AffineSpec::new(bits, group, sym).unwrap();
        let rb = spec.row_bytes(N);
        let mut q = vec![0u8; N * rb];
        let mut y = vec![0f32; N * N];
        for &isa in &isas {
            for use_imp in [false, true] {
                if (use_imp && bits != 4) || (only_search && !use_imp) {
                    continue;
                }
                let p = AffineRow { spec, clip_ratio: 1.0, range: None };
                let imp = use_imp.then_some(&imp[..]);
                // The importance search is ~20x the work: time a quarter of the rows.
                let rows = if use_imp { N / 4 } else { N };
                let (wall, cpu) = median_mbs(rows * N * 4, || {
                    for (xr, dst) in x.chunks(N).zip(q.chunks_mut(rb)).take(rows) {
                        quantize_row(isa, xr, dst, &p, imp);
                    }
                });
                println!("int{bits} g{group:?} sym={sym} importance={use_imp} {isa:>6}: quantize {wall:6.0} MB/s wall, {cpu:6.0} MB/s cpu");
            }
            if only_search {
                continue;
            }
            let (wall, cpu) = median_mbs(N * N * 4, || {
                for (src, yr) in q.chunks(rb).zip(y.chunks_mut(N)) {
                    dequantize_row(isa, &spec, src, yr);
                }
            });
            println!("int{bits} g{group:?} sym={sym} {isa:>6}: dequantize {wall:6.0} MB/s wall, {cpu:6.0} MB/s cpu (f32 out)");
        }
    }
}
