//! The W8A8 matmul (int8 weights × int8 activations, `ActQuant`): activation codes and the
//! integer dots at every ISA of the host (and the generic quantizer on `Emu` at 4, 8 and 16
//! lanes) against their scalar references bit for bit; `matmul` at every ISA bit-identical to
//! `matmul_reference` (the spec) on odd shapes, zero rows, extreme ranges, denormals and
//! clamping static steps; the distance to the float product bounded by half an activation step;
//! bad act modes, targets and inputs refused.

mod common;

use common::{assert_f32_bits_eq, simd_isas, Rng};
use lowbit_core::matmul::{matmul, matmul_reference, ActQuant, Outliers, QMatrix, MAX_COLS};
use lowbit_core::quant::{dequantize, quantize, Layout, QuantOptions, Source};
use lowbit_core::simd::emu::Emu;
use lowbit_core::simd::matmul::w8a8 as k;
use lowbit_core::simd::{available, Isa};
use lowbit_core::{AffineSpec, Error, QType};

/// A random int8-row-sym weight of `rows × cols`; every third row is all zero.
fn weight(rows: usize, cols: usize, seed: u64) -> (Layout, Vec<u8>) {
    let mut r = Rng::new(seed);
    let w: Vec<f32> = (0..rows * cols).map(|i| if (i / cols) % 3 == 2 { 0.0 } else { r.normal() * 0.05 }).collect();
    quantize("int8-row-sym", Source::F32(&w), rows, cols, &QuantOptions::default()).unwrap()
}

/// Activations of `n × cols` of a named kind.
fn acts(kind: &str, n: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n * cols)
        .map(|i| match kind {
            "normal" => r.normal(),
            "zeros" => 0.0,
            // Every other row all zero.
            "zero-rows" => {
                if (i / cols).is_multiple_of(2) {
                    0.0
                } else {
                    r.normal()
                }
            }
            "huge" => r.normal() * 1e30,
            "denormal" => r.normal() * 1e-39,
            "mixed" => r.normal() * [1e-30f32, 1.0, 1e20][(i / 37) % 3],
            "outlier" => {
                if i % 97 == 5 {
                    300.0
                } else {
                    r.normal()
                }
            }
            other => panic!("unknown kind {other}"),
        })
        .collect()
}

/// Largest magnitude of a slice.
fn amax(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

#[test]
fn activation_codes_are_identical_everywhere() {
    let mut cols_list: Vec<usize> = (1..=40).collect();
    cols_list.extend([64, 72, 255, 4096]);
    for &cols in &cols_list {
        for (case, x) in common::cases(cols, 3.0e38, cols as u64) {
            let dyn_step = k::dynamic_step(Isa::Scalar, &x);
            assert_eq!(dyn_step.to_bits(), (amax(&x) / 127.0).to_bits(), "cols={cols} {case}: dynamic step");
            for isa in available() {
                assert_eq!(k::dynamic_step(isa, &x).to_bits(), dyn_step.to_bits(), "{isa} cols={cols} {case}");
            }
            // The row's own dynamic step, steps that clamp most values, a subnormal and a huge one.
            for step in [dyn_step, dyn_step / 50.0, 1e-3, 1.0, 1e-40, 1e30] {
                let mut want = vec![0i8; cols];
                k::quantize_i8_ref(&x, step, &mut want);
                let mut got: Vec<(String, Vec<i8>)> = Vec::new();
                for isa in available() {
                    let mut q = vec![0i8; cols];
                    k::quantize_i8(isa, &x, step, &mut q);
                    got.push((isa.name().into(), q));
                }
                let mut emu = |name: &str, f: &dyn Fn(&mut [i8])| {
                    let mut q = vec![0i8; cols];
                    f(&mut q);
                    got.push((name.into(), q));
                };
                emu("emu4", &|q| k::quantize_i8_simd(Emu::<4>, &x, step, q));
                emu("emu8", &|q| k::quantize_i8_simd(Emu::<8>, &x, step, q));
                emu("emu16", &|q| k::quantize_i8_simd(Emu::<16>, &x, step, q));
                let wb: Vec<u8> = want.iter().map(|&v| v as u8).collect();
                for (name, q) in &got {
                    let qb: Vec<u8> = q.iter().map(|&v| v as u8).collect();
                    common::assert_bytes_eq(&format!("{name} cols={cols} {case} step={step:e}"), 32, &wb, &qb);
                }
                // The codes are the spec's: clamp(round_ties_even(x / step)), never −128; a zero
                // step gives zeros.
                for (j, (&v, &c)) in x.iter().zip(&want).enumerate() {
                    let spec = if step == 0.0 { 0.0 } else { (v / step).round_ties_even().clamp(-127.0, 127.0) };
                    assert_eq!(f32::from(c), spec, "cols={cols} {case} step={step:e} [{j}]: {v:e}");
                }
            }
        }
    }
}

#[test]
fn integer_dots_are_exact_everywhere() {
    let mut r = Rng::new(5);
    let mut lens: Vec<usize> = (0..=200).step_by(8).collect();
    lens.extend([1000, 4104, 4096 + 56]);
    for &n in &lens {
        let cases: Vec<(&str, Vec<u8>, Vec<i8>)> = vec![
            (
                "random",
                (0..n).map(|_| r.below(256) as u8).collect(),
                (0..n).map(|_| (r.below(255) as i32 - 127) as i8).collect(),
            ),
            ("min code × -127", vec![0; n], vec![-127; n]),
            ("min code × 127", vec![0; n], vec![127; n]),
            ("max code × 127", vec![255; n], vec![127; n]),
            ("zero point", vec![128; n], (0..n).map(|_| (r.below(255) as i32 - 127) as i8).collect()),
        ];
        for (case, w, q) in cases {
            let want: i64 = w.iter().zip(&q).map(|(&c, &x)| (i64::from(c) - 128) * i64::from(x)).sum();
            assert_eq!(i64::from(k::dot_i8_ref(&w, &q)), want, "ref n={n} {case}");
            for (name, f) in k::dot_i8_variants() {
                assert_eq!(i64::from(f(&w, &q)), want, "{name} n={n} {case}");
            }
            for isa in available() {
                assert_eq!(i64::from(k::dot_i8(isa, &w, &q)), want, "{isa} n={n} {case}");
                let rows: Vec<Vec<u8>> = (0..4).map(|s| w.iter().map(|&c| c.wrapping_add(s * 37)).collect()).collect();
                let got = k::dot_i8_x4(isa, [&rows[0], &rows[1], &rows[2], &rows[3]], &q);
                for (s, row) in rows.iter().enumerate() {
                    assert_eq!(got[s], k::dot_i8_ref(row, &q), "{isa} x4 row {s} n={n} {case}");
                }
                let q2: Vec<i8> = q.iter().rev().copied().collect();
                let got = k::dot_i8_4x2(isa, [&rows[0], &rows[1], &rows[2], &rows[3]], [&q, &q2]);
                for (s, row) in rows.iter().enumerate() {
                    assert_eq!(
                        got[s],
                        [k::dot_i8_ref(row, &q), k::dot_i8_ref(row, &q2)],
                        "{isa} 4x2 row {s} n={n} {case}"
                    );
                }
            }
        }
    }
    // The longest row at the largest magnitude: 2^17 · 128 · 127 still fits in i32.
    let (w, q) = (vec![0u8; MAX_COLS], vec![-127i8; MAX_COLS]);
    let want = (MAX_COLS as i64) * 128 * 127;
    for isa in available() {
        assert_eq!(i64::from(k::dot_i8(isa, &w, &q)), want, "{isa} at MAX_COLS");
        assert_eq!(i64::from(k::dot_i8_x4(isa, [&w, &w, &w, &w], &q)[3]), want, "{isa} x4 at MAX_COLS");
        assert_eq!(i64::from(k::dot_i8_4x2(isa, [&w, &w, &w, &w], [&q, &q])[3][1]), want, "{isa} 4x2 at MAX_COLS");
    }
}

/// `matmul` at every ISA (the scalar one included) equals `matmul_reference` bit for bit.
fn check_exact(w: &QMatrix<'_>, x: &[f32], n: usize, tag: &str) -> Vec<f32> {
    let rows = w.layout().rows;
    let mut want = vec![0f32; n * rows];
    matmul_reference(w, x, n, &mut want).unwrap();
    for isa in available() {
        let mut y = vec![f32::NAN; n * rows];
        matmul(w, x, n, &mut y, Some(isa)).unwrap();
        assert_f32_bits_eq(&format!("{tag} {isa}"), &want, &y);
    }
    want
}

#[test]
fn w8a8_matmul_is_bit_identical_to_the_reference() {
    eprintln!("SIMD levels tested: {:?}", simd_isas());
    let shapes = [(1, 8, 1), (5, 40, 3), (7, 104, 2), (13, 200, 5), (64, 576, 1), (33, 1000, 4), (300, 1536, 2)];
    for (s, &(rows, cols, n)) in shapes.iter().enumerate() {
        let (l, data) = weight(rows, cols, s as u64);
        let base = QMatrix::new(l, &data, None, None).unwrap();
        for kind in ["normal", "zeros", "zero-rows", "huge", "denormal", "mixed", "outlier"] {
            let x = acts(kind, n, cols, 100 + s as u64);
            let typical = (amax(&x) / 127.0).max(1e-30);
            for act in [ActQuant::PerToken, ActQuant::Static(typical), ActQuant::Static(typical / 40.0)] {
                let w = base.with_act(Some(act)).unwrap();
                check_exact(&w, &x, n, &format!("{rows}x{cols} n={n} {kind} {act:?}"));
            }
        }
    }
}

#[test]
fn dynamic_w8a8_is_within_half_a_step_of_the_float_product() {
    let (rows, cols, n) = (40, 328, 3);
    let (l, data) = weight(rows, cols, 9);
    let w = QMatrix::new(l, &data, None, None).unwrap().with_act(Some(ActQuant::PerToken)).unwrap();
    let wf = dequantize(&l, &data, None).unwrap();
    for kind in ["normal", "outlier", "huge", "mixed"] {
        let x = acts(kind, n, cols, 77);
        let mut y = vec![0f32; n * rows];
        matmul(&w, &x, n, &mut y, None).unwrap();
        for i in 0..n {
            let xi = &x[i * cols..(i + 1) * cols];
            let step = f64::from(amax(xi)) / 127.0;
            for r in 0..rows {
                let wr = &wf[r * cols..(r + 1) * cols];
                let exact: f64 = wr.iter().zip(xi).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                let mag: f64 = wr.iter().zip(xi).map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs()).sum();
                let wabs: f64 = wr.iter().map(|&a| f64::from(a).abs()).sum();
                // Half a step per value (plus the rounding of x / step), and f32 roundings.
                let tol = wabs * step * (0.5 + 1e-3) + mag * 1e-6;
                let got = f64::from(y[i * rows + r]);
                assert!((got - exact).abs() <= tol, "{kind} y[{i},{r}] = {got:e}, exact {exact:e}, tol {tol:e}");
            }
        }
    }
}

#[test]
fn a_static_step_clamps_values_beyond_127_steps() {
    let (rows, cols) = (9, 64);
    let (l, data) = weight(rows, cols, 3);
    let x = acts("outlier", 2, cols, 4);
    let step = 0.02f32;
    let w = QMatrix::new(l, &data, None, None).unwrap().with_act(Some(ActQuant::Static(step))).unwrap();
    let clamped: Vec<f32> = x.iter().map(|v| v.clamp(-127.0 * step, 127.0 * step)).collect();
    assert_ne!(x, clamped, "the test needs values beyond the range");
    let (y, yc) = (check_exact(&w, &x, 2, "raw"), check_exact(&w, &clamped, 2, "clamped"));
    assert_f32_bits_eq("clamping is the only effect of out-of-range values", &yc, &y);
}

#[test]
fn act_quant_bytes_round_trip_and_bad_parts_are_refused() {
    for a in [ActQuant::PerToken, ActQuant::Static(0.5), ActQuant::Static(1e-40)] {
        assert_eq!(ActQuant::from_le_bytes(&a.to_le_bytes()).unwrap(), a);
    }
    assert_eq!(ActQuant::Static(0.25).to_le_bytes(), [1, 0, 0, 0, 0, 0, 0x80, 0x3e]);
    assert_eq!(ActQuant::PerToken.to_le_bytes(), [2, 0, 0, 0, 0, 0, 0, 0]);
    let part = |mode: u32, step: f32| [mode.to_le_bytes(), step.to_le_bytes()].concat();
    for (what, b) in [
        ("mode 0", part(0, 1.0)),
        ("mode 3", part(3, 1.0)),
        ("static step 0", part(1, 0.0)),
        ("static step < 0", part(1, -1.0)),
        ("static step NaN", part(1, f32::NAN)),
        ("static step inf", part(1, f32::INFINITY)),
        ("dynamic with a step", part(2, 1.0)),
        ("dynamic with -0.0", part(2, -0.0)),
        ("7 bytes", part(2, 0.0)[..7].to_vec()),
    ] {
        assert!(matches!(ActQuant::from_le_bytes(&b), Err(Error::InvalidParameter(_))), "{what}");
    }
}

#[test]
fn act_modes_are_refused_where_they_are_undefined() {
    let make = |name: &str, rows: usize, cols: usize| {
        let x = vec![0.25f32; rows * cols];
        quantize(name, Source::F32(&x), rows, cols, &QuantOptions::default()).unwrap()
    };
    let dynamic = Some(ActQuant::PerToken);
    for (name, cols) in [("q4_0", 64), ("q8_0", 64), ("int8-g32-sym", 64), ("int8-row", 64), ("int4-row-sym", 64)] {
        let (l, d) = make(name, 2, cols);
        let e = QMatrix::new(l, &d, None, None).unwrap().with_act(dynamic).unwrap_err();
        assert!(matches!(&e, Error::InvalidParameter(m) if m.contains("int8-row-sym")), "{name}: {e}");
    }
    // One group of 128 on rows of 128 is one group per row.
    let (l, d) = make("int8-g128-sym", 2, 128);
    QMatrix::new(l, &d, None, None).unwrap().with_act(dynamic).unwrap();
    let (l, d) = make("int8-row-sym", 2, 8);
    let perm: Vec<u8> = (0..8u32).rev().flat_map(|v| v.to_le_bytes()).collect();
    let e = QMatrix::new(l, &d, Some(&perm), None).unwrap().with_act(dynamic).unwrap_err();
    assert!(matches!(&e, Error::InvalidParameter(m) if m.contains("permutation")), "{e}");
    let (rp, oc, ov) = ([0u64, 1, 1].map(u64::to_le_bytes).concat(), 3u32.to_le_bytes(), [0u8, 0x3c]);
    let o = Outliers { row_ptr: &rp, cols: &oc, vals: &ov };
    let e = QMatrix::new(l, &d, None, Some(o)).unwrap().with_act(dynamic).unwrap_err();
    assert!(matches!(&e, Error::InvalidParameter(m) if m.contains("outliers")), "{e}");
    for step in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let e = QMatrix::new(l, &d, None, None).unwrap().with_act(Some(ActQuant::Static(step))).unwrap_err();
        assert!(matches!(&e, Error::InvalidParameter(m) if m.contains("finite and > 0")), "step {step}: {e}");
    }
    // Rows longer than MAX_COLS could overflow the i32 sums: a shape error.
    let spec = AffineSpec::new(8, None, true).unwrap();
    let cols = MAX_COLS + 8;
    let l = Layout::new(QType::Int8, Some(spec), 1, cols).unwrap();
    let d = vec![128u8; l.nbytes()];
    let e = QMatrix::new(l, &d, None, None).unwrap().with_act(dynamic).unwrap_err();
    assert!(matches!(&e, Error::Shape(m) if m.contains("131072")), "{e}");
    let l = Layout::new(QType::Int8, Some(spec), 1, MAX_COLS).unwrap();
    let d = vec![128u8; l.nbytes()];
    QMatrix::new(l, &d, None, None).unwrap().with_act(dynamic).unwrap();
}

#[test]
fn non_finite_activations_are_refused() {
    let (l, data) = weight(4, 64, 1);
    for act in [ActQuant::PerToken, ActQuant::Static(0.1)] {
        let w = QMatrix::new(l, &data, None, None).unwrap().with_act(Some(act)).unwrap();
        let mut y = vec![0f32; 4];
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vec![0.5f32; 64];
            x[37] = bad;
            assert!(matches!(matmul(&w, &x, 1, &mut y, None), Err(Error::BadValue { index: 37, .. })), "{bad}");
            assert!(matches!(matmul_reference(&w, &x, 1, &mut y), Err(Error::BadValue { index: 37, .. })), "{bad}");
        }
    }
}
