//! Parity of the float types (f32, f16, bf16): the generic integer-op kernels (on `Emu<4>`,
//! `Emu<8>`, `Emu<16>` and the host's vocabularies), the F16C path and the public driver must
//! equal the `half` crate bit for bit, exhaustively for the 16-bit → f32 direction and on every
//! rounding boundary (plus a dense sample) for f32 → 16 bits.

mod common;

use common::{assert_bytes_eq, assert_f32_bits_eq, cases, simd_isas, Rng};
use half::{bf16, f16};
use lowbit_core::blocks::float as reference;
use lowbit_core::quant::{dequantize, quantize, Layout, QuantOptions, Source};
use lowbit_core::simd::emu::Emu;
use lowbit_core::simd::vocab::Simd;
use lowbit_core::simd::{self, Isa};
use lowbit_core::QType;
use proptest::prelude::*;

const TYPES: [QType; 3] = [QType::F32, QType::F16, QType::BF16];

fn half_encode(q: QType, x: &[f32]) -> Vec<u8> {
    match q {
        QType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        QType::F16 => x.iter().flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes()).collect(),
        _ => x.iter().flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes()).collect(),
    }
}

fn half_decode(q: QType, b: &[u8]) -> Vec<f32> {
    match q {
        QType::F32 => b.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        QType::F16 => b.chunks(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect(),
        _ => b.chunks(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect(),
    }
}

fn generic_encode<S: Simd>(s: S, q: QType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; x.len() * reference::elem_bytes(q)];
    simd::float::quantize_row_simd(s, q, x, &mut out);
    out
}

fn generic_decode<S: Simd>(s: S, q: QType, b: &[u8]) -> Vec<f32> {
    let mut y = vec![0f32; b.len() / reference::elem_bytes(q)];
    simd::float::dequantize_row_simd(s, q, b, &mut y);
    y
}

/// Every encoder (reference, generic kernels on every vocabulary, F16C) on `x`, which may hold
/// any bit pattern (the driver is not involved: it rejects NaN/Inf and out-of-range values).
fn check_encode(what: &str, q: QType, x: &[f32]) {
    let expect = half_encode(q, x);
    let eb = reference::elem_bytes(q);
    let mut r = vec![0u8; expect.len()];
    reference::quantize_row(q, x, &mut r);
    assert_bytes_eq(&format!("{what} reference"), eb, &expect, &r);
    assert_bytes_eq(&format!("{what} emu4"), eb, &expect, &generic_encode(Emu::<4>, q, x));
    assert_bytes_eq(&format!("{what} emu8"), eb, &expect, &generic_encode(Emu::<8>, q, x));
    assert_bytes_eq(&format!("{what} emu16"), eb, &expect, &generic_encode(Emu::<16>, q, x));
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = simd::avx2::Avx2::new() {
        assert_bytes_eq(&format!("{what} generic avx2"), eb, &expect, &generic_encode(t, q, x));
        if q == QType::F16 {
            let mut out = vec![0u8; expect.len()];
            simd::float::f16c::encode(t, x, &mut out);
            assert_bytes_eq(&format!("{what} f16c"), eb, &expect, &out);
        }
    }
    for isa in simd_isas() {
        let mut out = vec![0u8; expect.len()];
        simd::float::quantize_row(isa, q, x, &mut out);
        assert_bytes_eq(&format!("{what} {isa} row"), eb, &expect, &out);
    }
}

/// Every decoder on arbitrary bytes.
fn check_decode(what: &str, q: QType, b: &[u8]) {
    let expect = half_decode(q, b);
    let mut r = vec![0f32; expect.len()];
    reference::dequantize_row(q, b, &mut r);
    assert_f32_bits_eq(&format!("{what} reference"), &expect, &r);
    assert_f32_bits_eq(&format!("{what} emu4"), &expect, &generic_decode(Emu::<4>, q, b));
    assert_f32_bits_eq(&format!("{what} emu8"), &expect, &generic_decode(Emu::<8>, q, b));
    assert_f32_bits_eq(&format!("{what} emu16"), &expect, &generic_decode(Emu::<16>, q, b));
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = simd::avx2::Avx2::new() {
        assert_f32_bits_eq(&format!("{what} generic avx2"), &expect, &generic_decode(t, q, b));
        if q == QType::F16 {
            let mut y = vec![0f32; expect.len()];
            simd::float::f16c::decode(t, b, &mut y);
            assert_f32_bits_eq(&format!("{what} f16c"), &expect, &y);
        }
    }
    if expect.is_empty() {
        return;
    }
    let layout = Layout::new(q, None, 1, expect.len()).expect("layout");
    for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
        assert_f32_bits_eq(&format!("{what} {isa} driver"), &expect, &dequantize(&layout, b, Some(isa)).expect("deq"));
    }
}

/// All 65536 f16 and bf16 bit patterns (NaNs, infinities, subnormals, both zeros), with an odd
/// length so every path also runs its tail.
#[test]
fn decode_every_16_bit_pattern() {
    let bytes: Vec<u8> = (0..=u16::MAX).chain(0..7).flat_map(|h| h.to_le_bytes()).collect();
    check_decode("f16 all", QType::F16, &bytes);
    check_decode("bf16 all", QType::BF16, &bytes);
    let mut r = Rng::new(1);
    let f32_bytes: Vec<u8> = (0..4099 * 4).map(|_| r.next_u64() as u8).collect();
    check_decode("f32 random", QType::F32, &f32_bytes);
}

/// f32 → f16/bf16 on every rounding boundary: for each 16-bit value, the f32 values at, just
/// below and just above the midpoint to its successor, the value itself ±1 ulp; plus a stride
/// through all 2^32 patterns (NaN payloads, infinities, subnormals, overflow).
#[test]
fn encode_rounding_boundaries_and_all_bit_classes() {
    let mut f16_in = Vec::new();
    let mut bf16_in = Vec::new();
    for h in 0..=u16::MAX {
        let a = f16::from_bits(h).to_f32();
        let b = f16::from_bits(h.wrapping_add(1)).to_f32();
        if a.is_finite() && b.is_finite() && (h & 0x7FFF) != 0x7BFF {
            let mid = (f64::from(a) + f64::from(b)) / 2.0;
            let m = mid as f32;
            for v in [a, m, f32::from_bits(m.to_bits() - 1), f32::from_bits(m.to_bits() + 1)] {
                f16_in.push(v);
            }
        }
        let a = bf16::from_bits(h).to_f32();
        if a.is_finite() {
            let base = a.to_bits();
            for d in [0u32, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF] {
                bf16_in.push(f32::from_bits(base.wrapping_add(d)));
            }
        }
    }
    // Around the f16 overflow threshold 65520 and the subnormal range.
    for v in [65504.0f32, 65519.996, 65520.0, 65536.0, 6.0e-8, 2.9802322e-8, 5.9604645e-8, 6.1035156e-5] {
        for s in [1.0f32, -1.0] {
            f16_in.push(v * s);
            f16_in.push(f32::from_bits((v * s).to_bits() + 1));
            f16_in.push(f32::from_bits((v * s).to_bits() - 1));
        }
    }
    let stride: Vec<f32> = (0..=u32::MAX).step_by(65537).map(f32::from_bits).collect();
    f16_in.extend(&stride);
    bf16_in.extend(&stride);
    for v in [
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x7F80_0001),
        f32::from_bits(0xFFBF_FFFF),
    ] {
        f16_in.push(v);
        bf16_in.push(v);
    }
    check_encode("f16 boundaries", QType::F16, &f16_in);
    check_encode("bf16 boundaries", QType::BF16, &bf16_in);
    check_encode("f32 patterns", QType::F32, &stride);
}

/// Through the public driver on the standard cases (including the max_abs edge), at every ISA.
#[test]
fn driver_parity_on_all_cases() {
    for q in TYPES {
        let max_abs = q.info().max_abs;
        for cols in [1usize, 7, 33, 4096 + 5] {
            for (name, x) in cases(cols, max_abs, 3) {
                let expect = half_encode(q, &x);
                let eb = reference::elem_bytes(q);
                for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
                    let opts = QuantOptions { isa: Some(isa), ..Default::default() };
                    let (layout, got) = quantize(q.name(), Source::F32(&x), 1, cols, &opts).expect("quantize");
                    assert_bytes_eq(&format!("{} {name} {cols} {isa}", q.name()), eb, &expect, &got);
                    let y = dequantize(&layout, &got, Some(isa)).expect("dequantize");
                    assert_f32_bits_eq(&format!("{} {name} {cols} {isa} deq", q.name()), &half_decode(q, &got), &y);
                }
            }
        }
    }
}

/// bf16's max_abs is the largest f32 that rounds to a finite bf16; f16's is the largest f16.
#[test]
fn float_bounds_store_finite_values() {
    let m = QType::BF16.info().max_abs;
    assert_eq!(m.to_bits(), 0x7F7F_7FFF);
    assert!(bf16::from_f32(m).to_f32().is_finite());
    assert!(bf16::from_f32(f32::from_bits(m.to_bits() + 1)).to_f32().is_infinite());
    assert_eq!(QType::F16.info().max_abs, f16::MAX.to_f32());
}

/// Round trip: the relative error of normal-range values is at most half an ulp of the format
/// (2^-11 for f16, 2^-8 for bf16); f32 is exact.
#[test]
fn round_trip_error_within_half_ulp() {
    let mut r = Rng::new(9);
    let x: Vec<f32> = (0..100_000).map(|i| r.normal() * [1e-3f32, 1.0, 1e3][i % 3]).collect();
    for (q, rel) in [(QType::F32, 0.0f32), (QType::F16, 2f32.powi(-11)), (QType::BF16, 2f32.powi(-8))] {
        let (layout, b) = quantize(q.name(), Source::F32(&x), 1, x.len(), &QuantOptions::default()).expect("quantize");
        let y = dequantize(&layout, &b, None).expect("dequantize");
        for (a, v) in x.iter().zip(&y) {
            // f16 subnormals (|x| < 2^-14) have an absolute error bound of 2^-25 instead.
            let tol = (a.abs() * rel).max(if q == QType::F16 { 2f32.powi(-25) } else { 0.0 });
            assert!((a - v).abs() <= tol, "{}: {a} -> {v}", q.name());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn proptest_encode_decode(bits in proptest::collection::vec(any::<u32>(), 0..300), t in 0usize..3) {
        let q = TYPES[t];
        let x: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        check_encode("proptest", q, &x);
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let n = bytes.len() / reference::elem_bytes(q) * reference::elem_bytes(q);
        check_decode("proptest", q, &bytes[..n]);
    }
}
