//! Ad-hoc throughput measurement (not a parity test; `#[ignore]`d). Run with
//! `cargo test --release -p lowbit-core --test parity_legacy_speed -- --ignored --nocapture`
//! (`LOWBIT_SPEED_TYPES=q4_0,q8_0` to time only some types).
//! Quantize MB/s of f32 input and dequantize GB/s of f32 output, one thread, 4096 × 4096 N(0,1)
//! matrix, median of 5 runs (3 with importance, on 512 rows), at each available ISA: through the
//! public driver (which also validates the input and allocates the output) and the row kernels
//! alone.

mod common;

use std::time::Instant;

use common::{importance, simd_isas, Rng};
use lowbit_core::blocks::{self, RowCtx};
use lowbit_core::quant::{dequantize, quantize, QuantOptions, Source};
use lowbit_core::simd::Isa;
use lowbit_core::QType;

fn bytes_per_row(q: QType, cols: usize) -> usize {
    cols / q.info().block_size * q.info().block_bytes
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
#[ignore]
fn quantize_speed() {
    let (rows, cols) = (4096usize, 4096usize);
    let mut r = Rng::new(1);
    let x: Vec<f32> = (0..rows * cols).map(|_| r.normal()).collect();
    let imp = importance(cols, 1);
    let mb = (x.len() * 4) as f64 / 1e6;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    let types =
        [QType::Q4_0, QType::Q8_0, QType::Q4_1, QType::Q5_0, QType::Q5_1, QType::IQ4NL, QType::F16, QType::BF16];
    pool.install(|| {
        let only = std::env::var("LOWBIT_SPEED_TYPES").unwrap_or_default();
        for q in types {
            if !only.is_empty() && !only.split(',').any(|n| n == q.name()) {
                continue;
            }
            let imps: &[bool] =
                if q.info().family == lowbit_core::qtype::Family::Float { &[false] } else { &[false, true] };
            for &with_imp in imps {
                for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
                    let opts = QuantOptions {
                        importance: with_imp.then_some(imp.as_slice()),
                        isa: Some(isa),
                        ..Default::default()
                    };
                    // The importance paths are slow in scalar: time a 512-row slice there.
                    let n = if with_imp { 512 } else { rows };
                    let xs = &x[..n * cols];
                    let runs = if with_imp { 3 } else { 5 };
                    let mut tq = Vec::new();
                    let mut td = Vec::new();
                    for _ in 0..runs {
                        let t = Instant::now();
                        let (layout, bytes) = quantize(q.name(), Source::F32(xs), n, cols, &opts).expect("quantize");
                        tq.push(t.elapsed().as_secs_f64());
                        let t = Instant::now();
                        let y = dequantize(&layout, &bytes, Some(isa)).expect("dequantize");
                        td.push(t.elapsed().as_secs_f64());
                        assert_eq!(y.len(), xs.len());
                    }
                    // The row kernels alone, into preallocated (already touched) buffers.
                    let rb = bytes_per_row(q, cols);
                    let mut dst = vec![1u8; n * rb];
                    let mut y = vec![1f32; n * cols];
                    let ctx = RowCtx { importance: with_imp.then_some(imp.as_slice()), affine: None };
                    let (mut kq, mut kd) = (Vec::new(), Vec::new());
                    for _ in 0..runs {
                        let t = Instant::now();
                        for (row, d) in xs.chunks(cols).zip(dst.chunks_mut(rb)) {
                            blocks::quantize_row(isa, q, row, d, &ctx);
                        }
                        kq.push(t.elapsed().as_secs_f64());
                        let t = Instant::now();
                        for (d, yr) in dst.chunks(rb).zip(y.chunks_mut(cols)) {
                            blocks::dequantize_row(isa, q, None, d, yr);
                        }
                        kd.push(t.elapsed().as_secs_f64());
                    }
                    let mbs = mb * n as f64 / rows as f64;
                    eprintln!(
                        "{:7} {:5} {:6}: quantize {:8.1} MB/s (kernel {:8.1})   dequantize {:6.2} GB/s (kernel {:6.2})",
                        q.name(),
                        if with_imp { "imp" } else { "plain" },
                        isa.name(),
                        mbs / median(tq),
                        mbs / median(kq),
                        mbs / 1e3 / median(td),
                        mbs / 1e3 / median(kd)
                    );
                }
            }
        }
    });
}
