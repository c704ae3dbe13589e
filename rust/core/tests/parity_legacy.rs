//! Parity of the legacy types (q8_0, q4_0, q4_1, q5_0, q5_1) and iq4_nl: every ISA through the
//! public driver, and the generic kernels on `Emu<4>`, `Emu<8>`, `Emu<16>`, must produce the
//! scalar reference's bytes (quantize) and bits (dequantize) exactly, with and without
//! importance, on every named case of `common::cases` and on random input (proptest).

mod common;

use common::{assert_bytes_eq, assert_f32_bits_eq, cases, importance, simd_isas, Rng};
use lowbit_core::blocks::{iq4nl, legacy};
use lowbit_core::quant::{dequantize, quantize, Layout, QuantOptions, Source};
use lowbit_core::simd::emu::Emu;
use lowbit_core::simd::vocab::Simd;
use lowbit_core::simd::{self, Isa};
use lowbit_core::QType;
use proptest::prelude::*;

/// The types of this file.
const TYPES: [QType; 6] = [QType::Q8_0, QType::Q4_0, QType::Q4_1, QType::Q5_0, QType::Q5_1, QType::IQ4NL];

/// Row lengths: one block, an odd number of blocks below one 16-lane group, an odd number above
/// (with a partial last group at every lane count), and a large row.
const COLS: [usize; 4] = [32, 96, 32 * 37, 4096];

fn block_bytes(q: QType) -> usize {
    q.info().block_bytes
}

/// The scalar reference.
fn reference(q: QType, x: &[f32], imp: Option<&[f32]>) -> Vec<u8> {
    let mut out = vec![0u8; x.len() / 32 * block_bytes(q)];
    if q == QType::IQ4NL {
        iq4nl::quantize_row(x, &mut out, imp);
    } else {
        legacy::quantize_row(q, x, &mut out, imp);
    }
    out
}

/// The generic kernel on a given vocabulary.
fn generic<S: Simd>(s: S, q: QType, x: &[f32], imp: Option<&[f32]>) -> Vec<u8> {
    let mut out = vec![0u8; x.len() / 32 * block_bytes(q)];
    if q == QType::IQ4NL {
        simd::iq4nl::quantize_row_simd(s, x, &mut out, imp);
    } else {
        simd::legacy::quantize_row_simd(s, q, x, &mut out, imp);
    }
    out
}

fn generic_deq<S: Simd>(s: S, q: QType, src: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    if q == QType::IQ4NL {
        simd::iq4nl::dequantize_row_simd(s, src, &mut y);
    } else {
        simd::legacy::dequantize_row_simd(s, q, src, &mut y);
    }
    y
}

fn reference_deq(q: QType, src: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    if q == QType::IQ4NL {
        iq4nl::dequantize_row(src, &mut y);
    } else {
        legacy::dequantize_row(q, src, &mut y);
    }
    y
}

/// Quantize `rows × cols` through the public driver at `isa`.
fn driver(q: QType, x: &[f32], rows: usize, cols: usize, imp: Option<&[f32]>, isa: Isa) -> Vec<u8> {
    let opts = QuantOptions { importance: imp, isa: Some(isa), ..Default::default() };
    quantize(q.name(), Source::F32(x), rows, cols, &opts).expect("quantize").1
}

fn driver_deq(q: QType, data: &[u8], rows: usize, cols: usize, isa: Isa) -> Vec<f32> {
    let layout = Layout::new(q, None, rows, cols).expect("layout");
    dequantize(&layout, data, Some(isa)).expect("dequantize")
}

/// Check one input (a single row) on every path, quantize and dequantize.
fn check_all(what: &str, q: QType, x: &[f32], imp: Option<&[f32]>) {
    let bb = block_bytes(q);
    let cols = x.len();
    let expect = reference(q, x, imp);
    assert_bytes_eq(&format!("{what} emu4"), bb, &expect, &generic(Emu::<4>, q, x, imp));
    assert_bytes_eq(&format!("{what} emu8"), bb, &expect, &generic(Emu::<8>, q, x, imp));
    assert_bytes_eq(&format!("{what} emu16"), bb, &expect, &generic(Emu::<16>, q, x, imp));
    for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
        assert_bytes_eq(&format!("{what} {isa}"), bb, &expect, &driver(q, x, 1, cols, imp, isa));
    }
    let y = reference_deq(q, &expect, cols);
    assert_f32_bits_eq(&format!("{what} deq emu4"), &y, &generic_deq(Emu::<4>, q, &expect, cols));
    assert_f32_bits_eq(&format!("{what} deq emu8"), &y, &generic_deq(Emu::<8>, q, &expect, cols));
    assert_f32_bits_eq(&format!("{what} deq emu16"), &y, &generic_deq(Emu::<16>, q, &expect, cols));
    for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
        assert_f32_bits_eq(&format!("{what} deq {isa}"), &y, &driver_deq(q, &expect, 1, cols, isa));
    }
}

#[test]
fn quantize_and_dequantize_parity_on_all_cases() {
    for q in TYPES {
        let max_abs = q.info().max_abs;
        for (ci, cols) in COLS.into_iter().enumerate() {
            let imp = importance(cols, 7 + ci as u64);
            for (name, x) in cases(cols, max_abs, 11 + ci as u64) {
                check_all(&format!("{} {name} cols={cols}", q.name()), q, &x, None);
                check_all(&format!("{} {name} cols={cols} +imp", q.name()), q, &x, Some(&imp));
            }
        }
    }
}

/// Many rows through the driver (parallel path), importance shared by all rows.
#[test]
fn multi_row_driver_parity() {
    let (rows, cols) = (24, 4096);
    let mut r = Rng::new(5);
    let x: Vec<f32> = (0..rows * cols).map(|_| r.normal()).collect();
    let imp = importance(cols, 3);
    for q in TYPES {
        for imp in [None, Some(imp.as_slice())] {
            let expect: Vec<u8> = x.chunks(cols).flat_map(|row| reference(q, row, imp)).collect();
            for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
                let got = driver(q, &x, rows, cols, imp, isa);
                assert_bytes_eq(
                    &format!("{} rows {isa} imp={}", q.name(), imp.is_some()),
                    block_bytes(q),
                    &expect,
                    &got,
                );
                let y: Vec<f32> = expect.chunks(expect.len() / rows).flat_map(|b| reference_deq(q, b, cols)).collect();
                assert_f32_bits_eq(
                    &format!("{} rows deq {isa}", q.name()),
                    &y,
                    &driver_deq(q, &expect, rows, cols, isa),
                );
            }
        }
    }
}

/// Bit equality, except that any NaN equals any NaN: with NaN scales and mins (arbitrary
/// bytes), which NaN payload an `a * d + m` returns is not fixed (LLVM may commute the operands
/// of an add or multiply, and the hardware returns the first NaN operand's payload).
fn assert_f32_bits_eq_any_nan(what: &str, expected: &[f32], got: &[f32]) {
    assert_eq!(expected.len(), got.len(), "{what}: lengths differ");
    if let Some(i) =
        expected.iter().zip(got).position(|(a, b)| a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan()))
    {
        panic!(
            "{what}: first difference at {i}: expected {:#010x}, got {:#010x}",
            expected[i].to_bits(),
            got[i].to_bits()
        );
    }
}

/// Dequantization of arbitrary bytes (any f16 scale, including inf/NaN/subnormal) agrees on
/// every path (NaN results up to their payload).
#[test]
fn dequantize_random_bytes_parity() {
    let mut r = Rng::new(99);
    for q in TYPES {
        let cols = 32 * 41;
        let bytes: Vec<u8> = (0..cols / 32 * block_bytes(q)).map(|_| r.next_u64() as u8).collect();
        let y = reference_deq(q, &bytes, cols);
        let what = format!("{} random bytes", q.name());
        assert_f32_bits_eq_any_nan(&what, &y, &generic_deq(Emu::<4>, q, &bytes, cols));
        assert_f32_bits_eq_any_nan(&what, &y, &generic_deq(Emu::<8>, q, &bytes, cols));
        assert_f32_bits_eq_any_nan(&what, &y, &generic_deq(Emu::<16>, q, &bytes, cols));
        for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
            assert_f32_bits_eq_any_nan(&format!("{what} {isa}"), &y, &driver_deq(q, &bytes, 1, cols, isa));
        }
    }
}

fn f16_at(b: &[u8], o: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]])).to_f32()
}

/// At the type's `max_abs` (and just below, mixed with small values), every stored f16 scale
/// and min is finite, with and without importance; one step above, the driver rejects.
#[test]
fn max_abs_bound_keeps_scales_finite() {
    for q in TYPES {
        let max_abs = q.info().max_abs;
        let cols = 256;
        let mut r = Rng::new(17);
        let edge: Vec<f32> = (0..cols).map(|i| if i % 2 == 0 { max_abs } else { -max_abs }).collect();
        let one: Vec<f32> = (0..cols).map(|i| if i % 32 == 5 { max_abs } else { r.normal() }).collect();
        let neg: Vec<f32> = (0..cols)
            .map(|i| if i % 32 == 9 { -max_abs } else { (r.normal() * max_abs * 0.3).clamp(-max_abs, max_abs) })
            .collect();
        let imp = importance(cols, 1);
        for x in [&edge, &one, &neg] {
            for imp in [None, Some(imp.as_slice())] {
                let bytes = driver(q, x, 1, cols, imp, Isa::Scalar);
                for b in bytes.chunks(block_bytes(q)) {
                    assert!(f16_at(b, 0).is_finite(), "{} d overflow", q.name());
                    if matches!(q, QType::Q4_1 | QType::Q5_1) {
                        assert!(f16_at(b, 2).is_finite(), "{} m overflow", q.name());
                    }
                }
                let y = reference_deq(q, &bytes, cols);
                assert!(y.iter().all(|v| v.is_finite()), "{} non-finite dequantized value", q.name());
            }
        }
        let above = f32::from_bits(max_abs.to_bits() + 1);
        let mut x = vec![0.0f32; 32];
        x[3] = above;
        let err = quantize(q.name(), Source::F32(&x), 1, 32, &QuantOptions::default());
        assert!(err.is_err(), "{}: {above} accepted", q.name());
    }
}

/// The importance search never stores a block with a larger weighted squared error than the
/// plain rounding, with the quantizer's weights w_j = imp_j * sqrt(sigma2 + x_j^2), measured on
/// the dequantized values. On average it must be clearly better.
#[test]
fn importance_never_worse_than_plain_rounding() {
    let cols = 2048;
    for q in [QType::Q8_0, QType::Q4_0, QType::Q4_1, QType::Q5_0, QType::Q5_1] {
        let (mut sum_plain, mut sum_imp) = (0f64, 0f64);
        for seed in 0..8u64 {
            let mut r = Rng::new(100 + seed);
            let scale = [0.02f32, 1.0, 30.0][seed as usize % 3];
            let x: Vec<f32> = (0..cols)
                .map(|i| if seed % 2 == 1 && i % 5 == 0 { r.normal() * scale + scale } else { r.normal() * scale })
                .collect();
            let imp = importance(cols, seed);
            let y0 = reference_deq(q, &reference(q, &x, None), cols);
            let y1 = reference_deq(q, &reference(q, &x, Some(&imp)), cols);
            let sigma2 = x.iter().fold(0f32, |s, v| s + v * v) / cols as f32;
            for b in 0..cols / 32 {
                let (mut e0, mut e1) = (0f32, 0f32);
                for j in b * 32..(b + 1) * 32 {
                    let w = imp[j] * (sigma2 + x[j] * x[j]).sqrt();
                    let (d0, d1) = (x[j] - y0[j], x[j] - y1[j]);
                    e0 += w * (d0 * d0);
                    e1 += w * (d1 * d1);
                }
                assert!(e1 <= e0, "{} seed {seed} block {b}: importance {e1} > plain {e0}", q.name());
                sum_plain += f64::from(e0);
                sum_imp += f64::from(e1);
            }
        }
        eprintln!("{}: weighted error with importance / plain = {:.4}", q.name(), sum_imp / sum_plain);
        assert!(sum_imp < sum_plain * 0.99, "{}: the search gains nothing", q.name());
    }
}

/// Round-trip RMSE on N(0,1) data against a derived bound. For a uniform grid of step
/// Δ_b = (value range) / (levels - 1) per block, rounding error is ~uniform on [-Δ/2, Δ/2]
/// with mean square Δ²/12; the block's extreme value is exact, and q4_0/q5_0 clip one side by at
/// most one step for a tiny fraction of values. Bound: sqrt(mean_b Δ_b²/12) (no slack needed
/// beyond the f16 rounding of d, relative 2^-11, and sampling noise: we allow 3%).
#[test]
fn round_trip_rmse_within_derived_bounds() {
    let (rows, cols) = (64, 1024);
    let mut r = Rng::new(2024);
    let x: Vec<f32> = (0..rows * cols).map(|_| r.normal()).collect();
    let rmse = |q: QType| {
        let bytes: Vec<u8> = x.chunks(cols).flat_map(|row| reference(q, row, None)).collect();
        let y = driver_deq(q, &bytes, rows, cols, simd::detected());
        let mse: f64 = x.iter().zip(&y).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>() / x.len() as f64;
        mse.sqrt()
    };
    let mut ratios = Vec::new();
    for q in [QType::Q8_0, QType::Q4_0, QType::Q4_1, QType::Q5_0, QType::Q5_1] {
        let mut sum_d2 = 0f64;
        for b in x.chunks(32) {
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            let (mn, mx) = b.iter().fold((f32::MAX, f32::MIN), |(a, c), &v| (a.min(v), c.max(v)));
            let step = match q {
                QType::Q8_0 => amax / 127.0,
                QType::Q4_0 => amax / 8.0,
                QType::Q5_0 => amax / 16.0,
                QType::Q4_1 => f64::from(mx - mn) / 15.0,
                _ => f64::from(mx - mn) / 31.0,
            };
            sum_d2 += step * step;
        }
        let bound = (sum_d2 / (x.len() / 32) as f64 / 12.0).sqrt();
        let got = rmse(q);
        ratios.push(format!("{} {got:.5} (bound {bound:.5}, {:.3})", q.name(), got / bound));
        assert!(got <= bound * 1.03, "{}: rmse {got} > derived bound {bound}", q.name());
    }
    // iq4_nl: a non-uniform 16-level grid designed for bell-shaped data must beat q4_0's
    // uniform 16 levels (and stay within q4_0's derived bound).
    let (iq, q40) = (rmse(QType::IQ4NL), rmse(QType::Q4_0));
    ratios.push(format!("iq4_nl {iq:.5} vs q4_0 {q40:.5}"));
    eprintln!("round-trip rmse: {}", ratios.join("; "));
    assert!(iq < q40, "iq4_nl rmse {iq} not below q4_0's {q40}");
}

/// A port of ggml's `best_index_int8` (binary search, then `x - lo < hi - x ? lo : hi`), to
/// check that the midpoint rule used here picks the same index for every f32.
fn ggml_best_index(x: f32) -> usize {
    let val = iq4nl::KVALUES;
    if x <= f32::from(val[0]) {
        return 0;
    }
    if x >= f32::from(val[15]) {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < f32::from(val[mav]) {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - f32::from(val[mu - 1]) < f32::from(val[mu]) - x {
        mu - 1
    } else {
        mu
    }
}

/// Exhaustive over every f32 within ±2 of each midpoint (where rounding of `x - lo` and `hi - x`
/// could matter), plus a coarse sweep of the whole range: further from a midpoint the two
/// differences are at least 4 apart, far beyond their rounding error (< 2^-16 below 256).
#[test]
fn best_index_matches_ggml() {
    for (i, m) in iq4nl::MIDPOINTS.iter().enumerate() {
        let k = iq4nl::KVALUES;
        assert_eq!(*m, (f32::from(k[i]) + f32::from(k[i + 1])) / 2.0);
        let (lo, hi) = (m - 2.0, m + 2.0);
        let mut v = lo;
        while v <= hi {
            assert_eq!(iq4nl::best_index(v), ggml_best_index(v), "x = {v:e}");
            v = v.next_up_compat();
        }
    }
    let mut r = Rng::new(4);
    for _ in 0..1_000_000 {
        let v = (r.uniform() * 2.0 - 1.0) * 300.0;
        assert_eq!(iq4nl::best_index(v), ggml_best_index(v), "x = {v:e}");
    }
}

trait NextUp {
    fn next_up_compat(self) -> f32;
}
impl NextUp for f32 {
    /// The next representable f32 above a finite value.
    fn next_up_compat(self) -> f32 {
        let b = self.to_bits();
        if self == 0.0 {
            f32::from_bits(1)
        } else if self > 0.0 {
            f32::from_bits(b + 1)
        } else {
            f32::from_bits(b - 1)
        }
    }
}

/// A port of ggml's `quantize_row_iq4_nl_impl` for one 32-value block (super block = block,
/// ntry = 7): returns (f16 d, indices). NaN scales (all-zero weights) are returned as such.
fn ggml_iq4nl_block(xb: &[f32], imp: Option<&[f32]>) -> (f32, [usize; 32]) {
    let val = iq4nl::KVALUES.map(f32::from);
    let mut sigma2 = 0f32;
    for v in xb {
        sigma2 += v * v;
    }
    sigma2 *= 2.0 / 32.0;
    let w: Vec<f32> = (0..32)
        .map(|j| match imp {
            Some(q) => q[j] * (sigma2 + xb[j] * xb[j]).sqrt(),
            None => xb[j] * xb[j],
        })
        .collect();
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in xb {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let mut l = [0usize; 32];
    let mut d = 0f32;
    if amax >= 1e-15 {
        d = -max / val[0];
        let mut id = 1.0 / d;
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for j in 0..32 {
            let q = val[ggml_best_index(id * xb[j])];
            sumqx += w[j] * q * xb[j];
            sumq2 += w[j] * q * q;
        }
        d = sumqx / sumq2;
        let mut best = d * sumqx;
        for itry in -7..=7 {
            id = (itry as f32 + val[0]) / max;
            let (mut sumqx, mut sumq2) = (0f32, 0f32);
            for j in 0..32 {
                let q = val[ggml_best_index(id * xb[j])];
                sumqx += w[j] * q * xb[j];
                sumq2 += w[j] * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
    }
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for j in 0..32 {
        l[j] = ggml_best_index(id * xb[j]);
    }
    (half::f16::from_f32(d).to_f32(), l)
}

/// Our iq4_nl blocks are never worse than ggml's (same weights), and often equal.
#[test]
fn iq4nl_at_least_as_good_as_ggml() {
    let cols = 4096;
    for imp_on in [false, true] {
        let (mut ours_sum, mut ggml_sum, mut same) = (0f64, 0f64, 0usize);
        let mut n = 0;
        for seed in 0..6u64 {
            let mut r = Rng::new(300 + seed);
            let x: Vec<f32> = (0..cols)
                .map(|_| {
                    let v = r.normal();
                    if seed % 2 == 0 {
                        v
                    } else {
                        v * v * v
                    }
                })
                .collect();
            let imp = importance(cols, seed);
            let imp = imp_on.then_some(imp.as_slice());
            let bytes = reference(QType::IQ4NL, &x, imp);
            let y = reference_deq(QType::IQ4NL, &bytes, cols);
            for b in 0..cols / 32 {
                let xb = &x[b * 32..(b + 1) * 32];
                let ib = imp.map(|i| &i[b * 32..(b + 1) * 32]);
                let (d, l) = ggml_iq4nl_block(xb, ib);
                if !d.is_finite() {
                    continue;
                }
                let mut sigma2 = 0f32;
                for v in xb {
                    sigma2 += v * v;
                }
                sigma2 *= 2.0 / 32.0;
                let (mut eo, mut eg) = (0f32, 0f32);
                for j in 0..32 {
                    let w = match ib {
                        Some(q) => q[j] * (sigma2 + xb[j] * xb[j]).sqrt(),
                        None => xb[j] * xb[j],
                    };
                    let g = d * f32::from(iq4nl::KVALUES[l[j]]);
                    let (a, c) = (xb[j] - y[b * 32 + j], xb[j] - g);
                    eo += w * (a * a);
                    eg += w * (c * c);
                }
                assert!(eo <= eg, "imp={imp_on} seed {seed} block {b}: ours {eo} > ggml {eg}");
                same += usize::from(eo == eg);
                ours_sum += f64::from(eo);
                ggml_sum += f64::from(eg);
                n += 1;
            }
        }
        eprintln!(
            "iq4_nl imp={imp_on}: weighted error ours/ggml = {:.5}, equal in {same}/{n} blocks",
            ours_sum / ggml_sum
        );
    }
}

/// gguf's reference rounding rules on hand-checked blocks (see also the Python oracle run
/// described in the report).
#[test]
fn plain_rounding_matches_ggml_rules() {
    // q4_0: max = -4 (first of largest magnitude), d = 0.5, codes trunc(x/0.5 + 8.5) capped 15.
    let mut x = vec![0.0f32; 32];
    x[0] = 1.0;
    x[1] = -4.0;
    x[2] = 4.0;
    x[3] = 0.25; // 0.5 + 8.5 = 9.0 -> 9
    let b = reference(QType::Q4_0, &x, None);
    assert_eq!(f16_at(&b, 0), 0.5);
    assert_eq!(b[2] & 0xF, 10); // 1/0.5 + 8.5 = 10.5 -> 10
    assert_eq!(b[3] & 0xF, 0); // -8 + 8.5 -> 0
    assert_eq!(b[4] & 0xF, 15); // 8 + 8.5 = 16.5 -> 16 -> 15
    assert_eq!(b[5] & 0xF, 9);
    // q8_0: roundf ties away from zero: x * 127 / amax = 0.5 -> 1, -0.5 -> -1.
    let mut x = vec![0.0f32; 32];
    x[0] = 127.0;
    x[1] = 0.5;
    x[2] = -0.5;
    x[3] = 2.5;
    let b = reference(QType::Q8_0, &x, None);
    assert_eq!(f16_at(&b, 0), 1.0);
    assert_eq!(&b[2..6], &[127u8, 1, 255, 3]);
    // All-zero q4_0 block: ggml's max starts at +0.0, so d = 0 / -8 = -0.0.
    let b = reference(QType::Q4_0, &[-0.0f32; 32], None);
    assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0x8000);
    assert!(b[2..].iter().all(|&c| c == 0x88));
    // q4_1 all-zero block with a leading -0.0: min is that first zero.
    let mut x = vec![0.0f32; 32];
    x[0] = -0.0;
    let b = reference(QType::Q4_1, &x, None);
    assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0x0000);
    assert_eq!(u16::from_le_bytes([b[2], b[3]]), 0x8000);
    // A block so small that 1/d overflows: codes are clamped, zeros take the zero-offset code.
    let mut x = vec![0.0f32; 32];
    x[0] = 1e-44;
    x[1] = -1e-44;
    for q in [QType::Q8_0, QType::Q4_0, QType::Q5_0, QType::Q4_1, QType::Q5_1] {
        let b = reference(q, &x, None);
        check_all(&format!("{} tiny", q.name()), q, &x, None);
        let y = reference_deq(q, &b, 32);
        assert!(y.iter().all(|v| *v == 0.0 || v.abs() <= 1e-44), "{}", q.name());
    }
}

fn any_row() -> impl Strategy<Value = (Vec<f32>, Vec<f32>, bool)> {
    (1usize..=40, -140i32..=16, any::<u64>(), any::<bool>(), 0u8..4).prop_map(|(blocks, e, seed, with_imp, kind)| {
        let cols = blocks * 32;
        let mut r = Rng::new(seed);
        let scale = 2f32.powi(e);
        let x: Vec<f32> = (0..cols)
            .map(|i| match kind {
                0 => r.normal() * scale,
                1 => (r.uniform() - 0.3) * scale,
                2 => {
                    if r.below(4) == 0 {
                        0.0
                    } else {
                        r.normal() * scale * (1 + i % 7) as f32
                    }
                }
                _ => (r.below(17) as f32 - 8.0) * scale * 0.5,
            })
            .collect();
        (x, importance(cols, seed), with_imp)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn proptest_parity((x, imp, with_imp) in any_row(), t in 0usize..TYPES.len()) {
        let q = TYPES[t];
        let m = q.info().max_abs;
        let x: Vec<f32> = x.iter().map(|v| v.clamp(-m, m)).collect();
        let imp = with_imp.then_some(imp.as_slice());
        check_all(&format!("proptest {}", q.name()), q, &x, imp);
    }
}
