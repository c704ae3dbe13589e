//! The `-dq` types (int2/3/4-g16-dq): every ISA of this host and the generic kernels on `Emu`
//! at 4, 8 and 16 lanes equal the scalar reference bit for bit (quantize with and without
//! importance, dequantize, every input case, full and partial super-blocks); super-blocks
//! quantize independently; the search beats int3-g128 and honours importance; bad input is
//! refused.

mod common;

use common::{assert_bytes_eq, assert_f32_bits_eq, cases, importance, simd_isas, Rng};
use lowbit_core::blocks::dq::{block_bytes, dequantize_row_ref, quantize_row_ref, row_bytes};
use lowbit_core::quant::{dequantize, quantize, Layout, QuantOptions, Source};
use lowbit_core::simd::dq::{dequantize_row_simd, quantize_row_simd};
use lowbit_core::simd::emu::Emu;
use lowbit_core::simd::Isa;
use lowbit_core::{Error, QType};

const TYPES: [(QType, u32); 3] = [(QType::Int2G16DQ, 2), (QType::Int3G16DQ, 3), (QType::Int4G16DQ, 4)];
/// One group, partial super-blocks of every parity, full ones, and full + partial (576: a real
/// hidden size).
const COLS: [usize; 7] = [16, 48, 240, 256, 272, 576, 1024];

fn quant(qtype: QType, x: &[f32], imp: Option<&[f32]>, isa: Isa) -> (Layout, Vec<u8>) {
    let opts = QuantOptions { isa: Some(isa), importance: imp, ..Default::default() };
    quantize(qtype.name(), Source::F32(x), 1, x.len(), &opts).expect("quantize")
}

#[test]
fn row_geometry() {
    for (qtype, bits) in TYPES {
        assert_eq!(qtype.info().block_bytes, block_bytes(bits, 16));
        for cols in COLS {
            let l = Layout::new(qtype, None, 3, cols).unwrap();
            let tail = cols % 256 / 16;
            // 4 bytes of f16 d, m; 3-bit scale codes; b-bit zeros; b-bit codes.
            let part = |ng: usize| 4 + (3 * ng).div_ceil(8) + (bits as usize * ng).div_ceil(8) + 2 * bits as usize * ng;
            let want = cols / 256 * part(16) + if tail > 0 { part(tail) } else { 0 };
            assert_eq!(l.row_bytes, want, "{} cols={cols}", qtype.name());
        }
        let full = Layout::new(qtype, None, 1, 4096).unwrap();
        let bpw = [2.4375, 3.5, 4.5625][bits as usize - 2];
        assert_eq!(full.bits_per_weight(), bpw, "{}", qtype.name());
    }
}

#[test]
fn quantize_and_dequantize_parity() {
    for (qtype, bits) in TYPES {
        for (k, &cols) in COLS.iter().enumerate() {
            let imp = importance(cols, 77 + k as u64);
            for (case, x) in cases(cols, qtype.info().max_abs, 900 + k as u64) {
                for imp in [None, Some(&imp[..])] {
                    let tag = format!("{} {case} cols={cols} imp={}", qtype.name(), imp.is_some());
                    let (l, want) = quant(qtype, &x, imp, Isa::Scalar);
                    let mut reference = vec![0u8; want.len()];
                    quantize_row_ref(bits, &x, &mut reference, imp);
                    assert_eq!(want, reference, "{tag}: driver vs reference");
                    let deq = dequantize(&l, &want, Some(Isa::Scalar)).unwrap();
                    assert!(deq.iter().all(|v| v.is_finite()), "{tag}: non-finite value");
                    for isa in simd_isas() {
                        let (_, got) = quant(qtype, &x, imp, isa);
                        assert_bytes_eq(&format!("{tag} {isa}"), qtype.info().block_bytes, &want, &got);
                        let d2 = dequantize(&l, &want, Some(isa)).unwrap();
                        assert_f32_bits_eq(&format!("{tag} dequant {isa}"), &deq, &d2);
                    }
                    let mut got = vec![0u8; want.len()];
                    let mut y = vec![0f32; cols];
                    macro_rules! emu {
                        ($w:literal) => {
                            quantize_row_simd(Emu::<$w>, bits, &x, &mut got, imp);
                            assert_bytes_eq(&format!("{tag} emu{}", $w), qtype.info().block_bytes, &want, &got);
                            dequantize_row_simd(Emu::<$w>, bits, &want, &mut y);
                            assert_f32_bits_eq(&format!("{tag} dequant emu{}", $w), &deq, &y);
                        };
                    }
                    emu!(4);
                    emu!(8);
                    emu!(16);
                    if case.contains("zeros") {
                        assert!(deq.iter().all(|v| v.to_bits() == 0), "{tag}: zeros must decode to +0.0");
                    }
                }
            }
        }
    }
}

/// Any bytes decode without panicking, identically everywhere (NaN payloads included).
#[test]
fn arbitrary_bytes_decode_identically() {
    let mut r = Rng::new(5);
    for (qtype, bits) in TYPES {
        for cols in COLS {
            let n = row_bytes(bits, cols).unwrap();
            let bytes: Vec<u8> = (0..n).map(|_| r.next_u64() as u8).collect();
            let mut want = vec![0f32; cols];
            dequantize_row_ref(bits, &bytes, &mut want);
            let l = Layout::new(qtype, None, 1, cols).unwrap();
            for isa in simd_isas() {
                let got = dequantize(&l, &bytes, Some(isa)).unwrap();
                assert_f32_bits_eq(&format!("{} cols={cols} {isa}", qtype.name()), &want, &got);
            }
        }
    }
}

/// Columns `[256 i, 256 i + 256)` quantized alone give exactly super-block `i` of the row
/// (GPTQ quantizes a row segment by segment).
#[test]
fn super_blocks_are_independent() {
    let mut r = Rng::new(11);
    for (qtype, bits) in TYPES {
        let cols = 832; // 3 full super-blocks and 4 groups
        let x: Vec<f32> = (0..cols).map(|_| r.normal()).collect();
        let imp = importance(cols, 3);
        for imp in [None, Some(&imp[..])] {
            let (_, whole) = quant(qtype, &x, imp, Isa::Scalar);
            let full = block_bytes(bits, 16);
            for i in 0..cols.div_ceil(256) {
                let v = i * 256..(i * 256 + 256).min(cols);
                let (_, seg) = quant(qtype, &x[v.clone()], imp.map(|w| &w[v]), Isa::Scalar);
                assert_eq!(&whole[i * full..i * full + seg.len()], &seg[..], "{} segment {i}", qtype.name());
            }
        }
    }
}

fn sq_err(x: &[f32], y: &[f32], w: Option<&[f32]>) -> f64 {
    x.iter().zip(y).enumerate().map(|(i, (a, b))| f64::from(w.map_or(1.0, |w| w[i])) * f64::from(a - b).powi(2)).sum()
}

/// int3-g16-dq has less error than int3-g128 on Gaussian and heavy-tailed rows; importance
/// lowers the weighted error.
#[test]
fn quality() {
    let mut r = Rng::new(21);
    let (rows, cols) = (16, 1024);
    let gauss: Vec<f32> = (0..rows * cols).map(|_| r.normal()).collect();
    let heavy: Vec<f32> = (0..rows * cols).map(|_| r.normal().powi(3)).collect();
    for x in [&gauss, &heavy] {
        let run = |name: &str, imp: Option<&[f32]>| {
            let opts = QuantOptions { importance: imp, ..Default::default() };
            let (l, q) = quantize(name, Source::F32(x), rows, cols, &opts).unwrap();
            dequantize(&l, &q, None).unwrap()
        };
        let dq = sq_err(x, &run("int3-g16-dq", None), None);
        let g128 = sq_err(x, &run("int3-g128", None), None);
        assert!(dq < 0.8 * g128, "int3-g16-dq error {dq} vs int3-g128 {g128}");
        let imp: Vec<f32> = (0..cols).map(|j| if j % 7 == 0 { 20.0 } else { 0.1 + (j % 5) as f32 }).collect();
        let w: Vec<f32> = (0..rows * cols).map(|i| imp[i % cols]).collect();
        for name in ["int2-g16-dq", "int3-g16-dq", "int4-g16-dq"] {
            let plain = sq_err(x, &run(name, None), Some(&w));
            let weighted = sq_err(x, &run(name, Some(&imp)), Some(&w));
            assert!(weighted < plain, "{name}: weighted error {weighted} with importance, {plain} without");
        }
    }
}

#[test]
fn bad_input() {
    for (qtype, _) in TYPES {
        let name = qtype.name();
        let x = vec![0.5f32; 40];
        let e = quantize(name, Source::F32(&x), 1, 40, &QuantOptions::default()).unwrap_err();
        assert!(matches!(e, Error::Shape(ref m) if m.contains("multiple of 16")), "{e}");
        let mut x = vec![0.5f32; 64];
        for (i, bad) in [(9, f32::NAN), (17, f32::INFINITY), (33, qtype.info().max_abs * 1.001)] {
            x[i] = bad;
            let e = quantize(name, Source::F32(&x), 2, 32, &QuantOptions::default()).unwrap_err();
            assert!(matches!(e, Error::BadValue { index, .. } if index == i), "{name} {bad}: {e}");
            x[i] = 0.5;
        }
        for opts in [
            QuantOptions { group_size: Some(16), ..Default::default() },
            QuantOptions { symmetric: Some(true), ..Default::default() },
            QuantOptions { clip_ratio: Some(0.9), ..Default::default() },
        ] {
            let e = quantize(name, Source::F32(&x), 2, 32, &opts).unwrap_err();
            assert!(matches!(e, Error::InvalidParameter(_)), "{name}: {e}");
        }
    }
}
