//! The ragged k-types (q2_kr … q6_kr) on rows of any length: every ISA of this host equals the
//! scalar reference bit for bit (quantize and dequantize, every input case, with and without
//! importance); the full super-blocks are the base type's bytes; the tail dequantizes to what the
//! base type makes of the zero-padded block; aligned rows are stored as the base type; bad input
//! is refused as for the other types.

mod common;

use common::{assert_bytes_eq, assert_f32_bits_eq, cases, importance, simd_isas, Rng};
use lowbit_core::blocks::kquants::ragged::{tail_bytes, tail_units};
use lowbit_core::quant::{dequantize, quantize, Layout, QuantOptions, Source};
use lowbit_core::simd::Isa;
use lowbit_core::{Error, QType};

const TYPES: [QType; 5] = [QType::Q2KR, QType::Q3KR, QType::Q4KR, QType::Q5KR, QType::Q6KR];
/// Tails of every unit count (1–8), rows shorter than a unit, partial units, and full
/// super-blocks followed by tails (576, 600, 960: real hidden sizes and neighbours).
const COLS: [usize; 12] = [1, 7, 32, 33, 100, 224, 255, 288, 576, 600, 960, 1000];

fn quant(qtype: QType, x: &[f32], imp: Option<&[f32]>, isa: Isa) -> (Layout, Vec<u8>) {
    let opts = QuantOptions { isa: Some(isa), importance: imp, ..Default::default() };
    quantize(qtype.name(), Source::F32(x), 1, x.len(), &opts).expect("quantize")
}

#[test]
fn row_geometry() {
    for qtype in TYPES {
        let base = qtype.ragged_base().unwrap();
        for cols in COLS {
            let l = Layout::new(qtype, None, 3, cols).unwrap();
            assert_eq!(l.qtype, qtype);
            let u = tail_units(cols);
            assert_eq!(u, (cols % 256).div_ceil(32));
            assert_eq!(l.row_bytes, cols / 256 * base.info().block_bytes + tail_bytes(base, u), "{qtype:?} {cols}");
        }
        // Aligned rows are the ggml type itself.
        let l = Layout::new(qtype, None, 2, 512).unwrap();
        assert_eq!((l.qtype, l.row_bytes), (base, 2 * base.info().block_bytes));
    }
}

/// Every ISA equals the scalar reference; the full super-blocks equal the base type's bytes;
/// the tail dequantizes to the base type's quantization of the zero-padded tail.
#[test]
fn quantize_and_dequantize_parity() {
    for qtype in TYPES {
        let base = qtype.ragged_base().unwrap();
        let bb = base.info().block_bytes;
        for (k, &cols) in COLS.iter().enumerate() {
            let imp = importance(cols, 31 + k as u64);
            for (case, x) in cases(cols, qtype.info().max_abs, 500 + k as u64) {
                for imp in [None, Some(&imp[..])] {
                    let tag = format!("{} {case} cols={cols} imp={}", qtype.name(), imp.is_some());
                    let (l, want) = quant(qtype, &x, imp, Isa::Scalar);
                    let deq = dequantize(&l, &want, Some(Isa::Scalar)).unwrap();
                    for isa in simd_isas() {
                        let (_, got) = quant(qtype, &x, imp, isa);
                        assert_bytes_eq(&format!("{tag} {isa}"), bb, &want, &got);
                        let d2 = dequantize(&l, &want, Some(isa)).unwrap();
                        assert_f32_bits_eq(&format!("{tag} dequant {isa}"), &deq, &d2);
                    }
                    let full = cols / 256 * 256;
                    let fb = full / 256 * bb;
                    if full > 0 {
                        let (_, b) = quant(base, &x[..full], imp.map(|w| &w[..full]), Isa::Scalar);
                        assert_eq!(&want[..fb], &b[..], "{tag}: full super-blocks differ from {}", base.name());
                    }
                    let mut xp = vec![0f32; 256];
                    xp[..cols - full].copy_from_slice(&x[full..]);
                    let wp = imp.map(|w| {
                        let mut p = vec![0f32; 256];
                        p[..cols - full].copy_from_slice(&w[full..]);
                        p
                    });
                    let (lb, b) = quant(base, &xp, wp.as_deref(), Isa::Scalar);
                    let tail_deq = dequantize(&lb, &b, Some(Isa::Scalar)).unwrap();
                    assert_f32_bits_eq(&format!("{tag} tail"), &tail_deq[..cols - full], &deq[full..]);
                }
            }
        }
    }
}

/// Arbitrary stored bytes (finite f16 super-scales) dequantize identically on every ISA.
#[test]
fn dequantize_random_bytes() {
    let mut r = Rng::new(7);
    for qtype in TYPES {
        for cols in [40, 600, 1000] {
            let l = Layout::new(qtype, None, 4, cols).unwrap();
            let mut b: Vec<u8> = (0..l.nbytes()).map(|_| r.next_u64() as u8).collect();
            // Clamp every byte that can hold an f16's high byte to a finite, small value: set
            // bit 6 of every odd byte to 0 (|f16| < 2 when the exponent's top bit is clear).
            for v in b.iter_mut().skip(1).step_by(2) {
                *v &= 0xBF;
            }
            let want = dequantize(&l, &b, Some(Isa::Scalar)).unwrap();
            assert!(want.iter().all(|v| v.is_finite()), "{qtype:?}");
            for isa in simd_isas() {
                let got = dequantize(&l, &b, Some(isa)).unwrap();
                assert_f32_bits_eq(&format!("{} random bytes {isa}", qtype.name()), &want, &got);
            }
        }
    }
}

/// A tail keeps k-quant accuracy: on Gaussian rows its relative RMSE is within 10 % of the
/// full super-blocks' (same type, same rows).
#[test]
fn tail_error_matches_full_blocks() {
    let (rows, cols) = (64, 576);
    let mut r = Rng::new(3);
    let x: Vec<f32> = (0..rows * cols).map(|_| r.normal() * 0.02).collect();
    for qtype in TYPES {
        let (l, b) = quantize(qtype.name(), Source::F32(&x), rows, cols, &QuantOptions::default()).unwrap();
        let y = dequantize(&l, &b, None).unwrap();
        let (mut err, mut sig) = ([0f64; 2], [0f64; 2]);
        for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
            let part = usize::from(i % cols >= 512);
            err[part] += f64::from(a - b).powi(2);
            sig[part] += f64::from(a).powi(2);
        }
        let (full, tail) = ((err[0] / sig[0]).sqrt(), (err[1] / sig[1]).sqrt());
        assert!(tail < 1.1 * full && tail > 0.9 * full, "{}: tail rel. RMSE {tail:.4} vs full {full:.4}", qtype.name());
    }
}

#[test]
fn bad_input_is_refused() {
    for qtype in TYPES {
        let mut x = vec![0.5f32; 100];
        x[97] = f32::NAN;
        let e = quantize(qtype.name(), Source::F32(&x), 1, 100, &QuantOptions::default()).unwrap_err();
        assert!(matches!(e, Error::BadValue { index: 97, .. }), "{qtype:?}: {e}");
        x[97] = qtype.info().max_abs * 2.0;
        let e = quantize(qtype.name(), Source::F32(&x), 1, 100, &QuantOptions::default()).unwrap_err();
        assert!(matches!(e, Error::BadValue { index: 97, .. }), "{qtype:?}: {e}");
        assert!(matches!(Layout::new(qtype, None, 1, 0), Err(Error::Shape(_))));
        let opts = QuantOptions { group_size: Some(128), ..Default::default() };
        assert!(matches!(quantize(qtype.name(), Source::F32(&x), 1, 100, &opts), Err(Error::InvalidParameter(_))));
    }
}
