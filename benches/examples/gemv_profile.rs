//! A GEMV loop for profiling (`perf record`): `cargo run --release -p lowbit-bench --example
//! gemv_profile -- TYPE [SECONDS] [THREADS] [COLS] [N]`; prints weight GB/s and GMAC/s
//! (weight bytes per second, whatever the number `N` of activation rows). `GEMV_PACK=1` packs
//! q4_0 / iq4_nl weights as the engine does at load.

use lowbit_core::matmul::{matmul, QMatrix};
use lowbit_core::quant::{self, QuantOptions, Source};
use lowbit_core::simd::matmul::packed;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let t = args.get(1).map_or("q4_0", String::as_str);
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let threads: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let cols: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(4096);
    // The global pool, called from outside it, as the Python binding calls it.
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    let n: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(1);
    let rows: usize = std::env::var("GEMV_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(4096);
    let mut s = 0x1234_5678_9abc_def1u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let w: Vec<f32> = (0..rows * cols).map(|_| next() * 0.1).collect();
    let x: Vec<f32> = (0..n * cols).map(|_| next()).collect();
    let (layout, bytes) = quant::quantize(t, Source::F32(&w), rows, cols, &QuantOptions::default()).unwrap();
    let mb: usize = std::env::var("GEMV_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    let copies = (mb << 20).div_ceil(bytes.len()).max(1);
    // GEMV_PACK=1: the weights packed as the engine packs them at load (q4_0, iq4_nl).
    let pack = std::env::var("GEMV_PACK").is_ok_and(|v| v == "1") && packed::can_pack(layout.qtype);
    let stored = if pack {
        let mut p = vec![0u8; packed::packed_len(rows, layout.row_bytes)];
        packed::pack(layout.qtype, rows, cols, &bytes, &mut p);
        p
    } else {
        bytes.clone()
    };
    let all: Vec<u8> = stored.iter().copied().cycle().take(copies * stored.len()).collect();
    let mats: Vec<QMatrix<'_>> = all
        .chunks_exact(stored.len())
        .map(|d| if pack { QMatrix::new_packed(layout, d, None) } else { QMatrix::new(layout, d, None, None) }.unwrap())
        .collect();
    let mut y = vec![0f32; n * rows];
    let start = Instant::now();
    let mut calls = 0usize;
    while start.elapsed().as_secs_f64() < secs {
        matmul(&mats[calls % copies], &x, n, &mut y, None).unwrap();
        calls += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let gbs = (calls * bytes.len()) as f64 / secs / 1e9;
    let gmacs = (calls * rows * cols * n) as f64 / secs / 1e9;
    println!("{t} {threads}t cols {cols} n {n}: {gbs:.2} GB/s, {gmacs:.2} GMAC/s ({calls} calls), y[0] = {}", y[0]);
}
