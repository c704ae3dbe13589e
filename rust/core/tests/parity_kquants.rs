//! Parity of the k-quants (q2_k, q3_k, q4_k, q5_k, q6_k): the scalar reference, every ISA of this
//! host through the public driver, and the generic kernels on `Emu<4>`, `Emu<8>`, `Emu<16>`
//! (the 16-lane shape of AVX-512) must produce the same bytes on every input case, with and
//! without importance, in both modes; the dequantizers the same f32 bits.

mod common;

use common::{assert_bytes_eq, assert_f32_bits_eq, cases, importance, simd_isas, Rng};
use lowbit_core::blocks::kquants::{self as reference, Mode};
use lowbit_core::quant::{dequantize, quantize, Layout, QuantOptions, Source};
use lowbit_core::simd::emu::Emu;
use lowbit_core::simd::kquants::{dequantize_row_simd, quantize_row_simd_mode};
use lowbit_core::simd::vocab::Simd;
use lowbit_core::simd::Isa;
use lowbit_core::QType;
use proptest::prelude::*;

const TYPES: [QType; 5] = [QType::Q2K, QType::Q3K, QType::Q4K, QType::Q5K, QType::Q6K];
/// One block, odd block counts, and a large row.
const COLS: [usize; 4] = [256, 768, 1280, 4096];

fn bytes_for(qtype: QType, cols: usize) -> usize {
    cols / 256 * qtype.info().block_bytes
}

fn ref_quant(qtype: QType, x: &[f32], imp: Option<&[f32]>, mode: Mode) -> Vec<u8> {
    let mut out = vec![0u8; bytes_for(qtype, x.len())];
    reference::quantize_row_mode(qtype, x, &mut out, imp, mode);
    out
}

fn emu_quant<S: Simd>(s: S, qtype: QType, x: &[f32], imp: Option<&[f32]>, mode: Mode) -> Vec<u8> {
    // Poison the buffer: every byte must be written.
    let mut out = vec![0xA5u8; bytes_for(qtype, x.len())];
    quantize_row_simd_mode(s, qtype, x, &mut out, imp, mode);
    out
}

fn emu_dequant<S: Simd>(s: S, qtype: QType, b: &[u8], cols: usize) -> Vec<f32> {
    let mut y = vec![f32::NAN; cols];
    dequantize_row_simd(s, qtype, b, &mut y);
    y
}

/// Every implementation on one row; returns the reference bytes.
fn check_row(qtype: QType, what: &str, x: &[f32], imp: Option<&[f32]>) -> Vec<u8> {
    let bb = qtype.info().block_bytes;
    let cols = x.len();
    let mut first = Vec::new();
    for mode in [Mode::Refined, Mode::Ggml] {
        let expected = ref_quant(qtype, x, imp, mode);
        let tag = |who: &str| format!("{} {what} cols={cols} imp={} {mode:?} {who}", qtype.name(), imp.is_some());
        assert_bytes_eq(&tag("emu4"), bb, &expected, &emu_quant(Emu::<4>, qtype, x, imp, mode));
        assert_bytes_eq(&tag("emu8"), bb, &expected, &emu_quant(Emu::<8>, qtype, x, imp, mode));
        assert_bytes_eq(&tag("emu16"), bb, &expected, &emu_quant(Emu::<16>, qtype, x, imp, mode));
        for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
            let mut out = vec![0x5Au8; expected.len()];
            lowbit_core::simd::kquants::quantize_row_mode(isa, qtype, x, &mut out, imp, mode);
            assert_bytes_eq(&tag(isa.name()), bb, &expected, &out);
        }
        if mode == Mode::Refined {
            first = expected;
        }
    }
    // The public driver (Mode::Refined).
    for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
        let opts = QuantOptions { isa: Some(isa), importance: imp, ..Default::default() };
        let (_, got) = quantize(qtype.name(), Source::F32(x), 1, cols, &opts).expect("quantize");
        assert_bytes_eq(&format!("{} {what} cols={cols} driver {isa}", qtype.name()), bb, &first, &got);
    }
    check_dequant(qtype, what, &first, cols);
    first
}

fn check_dequant(qtype: QType, what: &str, b: &[u8], cols: usize) {
    let mut expected = vec![0f32; cols];
    reference::dequantize_row(qtype, b, &mut expected);
    let tag = |who: &str| format!("{} {what} dequant {who}", qtype.name());
    assert_f32_bits_eq(&tag("emu4"), &expected, &emu_dequant(Emu::<4>, qtype, b, cols));
    assert_f32_bits_eq(&tag("emu8"), &expected, &emu_dequant(Emu::<8>, qtype, b, cols));
    assert_f32_bits_eq(&tag("emu16"), &expected, &emu_dequant(Emu::<16>, qtype, b, cols));
    let layout = Layout::new(qtype, None, 1, cols).expect("layout");
    for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
        let got = dequantize(&layout, b, Some(isa)).expect("dequantize");
        assert_f32_bits_eq(&tag(isa.name()), &expected, &got);
    }
}

#[test]
fn quantize_parity_all_cases() {
    for qtype in TYPES {
        let max_abs = qtype.info().max_abs;
        for (k, &cols) in COLS.iter().enumerate() {
            let imp = importance(cols, 7 + k as u64);
            for (name, x) in cases(cols, max_abs, 1000 + k as u64) {
                check_row(qtype, &name, &x, None);
                check_row(qtype, &name, &x, Some(&imp));
            }
        }
    }
}

#[test]
fn quantize_parity_special_importance() {
    // All-zero importance, one huge importance value, importance at f32::MAX.
    let cols = 512;
    let mut r = Rng::new(3);
    let x: Vec<f32> = (0..cols).map(|_| r.normal()).collect();
    let zero = vec![0f32; cols];
    let spike: Vec<f32> = (0..cols).map(|i| if i == 17 { 1e30 } else { 1e-3 }).collect();
    let max = vec![f32::MAX; cols];
    let tiny: Vec<f32> = (0..cols).map(|i| if i % 2 == 0 { 1e-45 } else { 0.0 }).collect();
    for qtype in TYPES {
        for (name, imp) in [("zero", &zero), ("spike", &spike), ("max", &max), ("tiny", &tiny)] {
            check_row(qtype, &format!("importance-{name}"), &x, Some(imp));
        }
    }
}

#[test]
fn driver_many_rows_parity() {
    // Several rows through the driver (parallel over rows) equal the per-row reference.
    let (rows, cols) = (70, 1024);
    let mut r = Rng::new(11);
    let x: Vec<f32> = (0..rows * cols).map(|_| r.normal() * 0.05).collect();
    let imp = importance(cols, 5);
    for qtype in TYPES {
        for imp in [None, Some(&imp[..])] {
            let mut expected = Vec::new();
            for row in x.chunks(cols) {
                expected.extend(ref_quant(qtype, row, imp, Mode::Refined));
            }
            for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
                let opts = QuantOptions { isa: Some(isa), importance: imp, ..Default::default() };
                let (_, got) = quantize(qtype.name(), Source::F32(&x), rows, cols, &opts).expect("quantize");
                assert_bytes_eq(&format!("{} rows isa={isa}", qtype.name()), qtype.info().block_bytes, &expected, &got);
            }
        }
    }
}

#[test]
fn dequantize_parity_random_bytes() {
    // Arbitrary blocks (finite f16 scales), every code and scale pattern.
    let mut r = Rng::new(99);
    for qtype in TYPES {
        let bb = qtype.info().block_bytes;
        let cols = 256 * 7;
        let mut b: Vec<u8> = (0..cols / 256 * bb).map(|_| r.next_u64() as u8).collect();
        for blk in b.chunks_mut(bb) {
            for at in f16_fields(qtype) {
                // Clear the top exponent bit: finite f16 (|v| < 2).
                blk[at + 1] &= 0xBF;
            }
        }
        check_dequant(qtype, "random-bytes", &b, cols);
    }
}

/// Byte offsets of the f16 fields of a block.
fn f16_fields(qtype: QType) -> Vec<usize> {
    use reference::layout::*;
    match qtype {
        QType::Q2K => vec![q2k::D, q2k::DMIN],
        QType::Q3K => vec![q3k::D],
        QType::Q4K => vec![q4k::D, q4k::DMIN],
        QType::Q5K => vec![q5k::D, q5k::DMIN],
        _ => vec![q6k::D],
    }
}

#[test]
fn max_abs_keeps_scales_finite() {
    // At the bound of the type table the stored f16 scales stay finite and the round trip
    // stays within the type's resolution of the range.
    for qtype in TYPES {
        let max_abs = qtype.info().max_abs;
        let cols = 1024;
        let mut r = Rng::new(5);
        let rows: Vec<(&str, Vec<f32>)> = vec![
            ("edge", (0..cols).map(|i| if i % 2 == 0 { max_abs } else { -max_abs }).collect()),
            ("uniform", (0..cols).map(|_| (r.uniform() * 2.0 - 1.0) * max_abs).collect()),
            ("positive", (0..cols).map(|i| if i % 3 == 0 { max_abs } else { max_abs * r.uniform() }).collect()),
            ("negative", (0..cols).map(|i| if i % 5 == 0 { -max_abs } else { -max_abs * r.uniform() }).collect()),
            ("one", (0..cols).map(|i| if i % 256 == 7 { max_abs } else { 0.0 }).collect()),
        ];
        let imp = importance(cols, 1);
        for (name, x) in rows {
            for imp in [None, Some(&imp[..])] {
                let b = check_row(qtype, name, &x, imp);
                let bb = qtype.info().block_bytes;
                for blk in b.chunks(bb) {
                    for at in f16_fields(qtype) {
                        let h = half::f16::from_bits(u16::from_le_bytes([blk[at], blk[at + 1]]));
                        // Finite always (the scales saturate); at the bound not even saturated.
                        assert!(h.is_finite(), "{} {name}: f16 field at {at} is {h}", qtype.name());
                        let sat = h.to_f32().abs() >= 65504.0;
                        assert!(!sat, "{} {name}: f16 field at {at} saturated", qtype.name());
                    }
                }
                let mut y = vec![0f32; cols];
                reference::dequantize_row(qtype, &b, &mut y);
                let worst = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                // A 2-bit code over a range of 2·max_abs resolves max_abs/1.5 at worst.
                assert!(worst <= max_abs, "{} {name}: worst error {worst:e} vs max_abs {max_abs:e}", qtype.name());
            }
        }
    }
}

fn prop_check(qtype: QType, x: &[f32], imp: Option<&[f32]>) {
    for mode in [Mode::Refined, Mode::Ggml] {
        let expected = ref_quant(qtype, x, imp, mode);
        let bb = qtype.info().block_bytes;
        assert_bytes_eq("emu16", bb, &expected, &emu_quant(Emu::<16>, qtype, x, imp, mode));
        assert_bytes_eq("emu4", bb, &expected, &emu_quant(Emu::<4>, qtype, x, imp, mode));
        for isa in simd_isas() {
            let mut out = vec![0u8; expected.len()];
            lowbit_core::simd::kquants::quantize_row_mode(isa, qtype, x, &mut out, imp, mode);
            assert_bytes_eq(isa.name(), bb, &expected, &out);
        }
    }
}

fn row_strategy() -> impl Strategy<Value = (usize, Vec<f32>, Option<Vec<f32>>)> {
    (1usize..=5, -40i32..=10, any::<bool>(), any::<u64>()).prop_map(|(blocks, exp, with_imp, seed)| {
        let mut r = Rng::new(seed);
        let scale = 2f32.powi(exp);
        let cols = blocks * 256;
        let x = (0..cols)
            .map(|_| match r.below(10) {
                0 => 0.0,
                1 => r.normal() * scale * 30.0,
                2 => -scale,
                _ => r.normal() * scale,
            })
            .collect();
        let imp = with_imp.then(|| (0..cols).map(|_| if r.below(7) == 0 { 0.0 } else { r.uniform() * 4.0 }).collect());
        (cols, x, imp)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn prop_q2k((_c, x, imp) in row_strategy()) { prop_check(QType::Q2K, &x, imp.as_deref()); }
    #[test]
    fn prop_q3k((_c, x, imp) in row_strategy()) { prop_check(QType::Q3K, &x, imp.as_deref()); }
    #[test]
    fn prop_q4k((_c, x, imp) in row_strategy()) { prop_check(QType::Q4K, &x, imp.as_deref()); }
    #[test]
    fn prop_q5k((_c, x, imp) in row_strategy()) { prop_check(QType::Q5K, &x, imp.as_deref()); }
    #[test]
    fn prop_q6k((_c, x, imp) in row_strategy()) { prop_check(QType::Q6K, &x, imp.as_deref()); }
}
