//! Properties of the group-affine quantizers (int2/int3/int4/int8): golden bytes worked out by
//! hand, the `error <= scale / 2` bound inside the quantization range, tiny and all-zero groups,
//! the `max_abs` bound, the clip search never losing to plain min-max, round-trip RMSE against a
//! derived model, and a proptest of scalar/SIMD parity over random shapes and scales.
//! Run with `cargo test --release -p lowbit-core --test parity_affine_props`.

mod common;

use common::{cases, importance, Rng};
use half::f16;
use lowbit_core::blocks::affine::{dequantize_row_ref, quantize_row_ref};
use lowbit_core::blocks::AffineRow;
use lowbit_core::pack::unpack_codes;
use lowbit_core::qtype::AffineSpec;
use lowbit_core::quant::{dequantize, quantize, QuantOptions, Source};
use lowbit_core::simd::affine::{dequantize_row_simd, quantize_row_simd};
use lowbit_core::simd::emu::Emu;
use lowbit_core::{Error, QType};
use proptest::prelude::*;

const BITS: [u32; 4] = [2, 3, 4, 8];
const GROUPS: [Option<usize>; 5] = [Some(32), Some(64), Some(128), Some(256), None];
const LENS: [usize; 5] = [8, 24, 200, 576, 1000];

fn qtype(bits: u32) -> QType {
    match bits {
        2 => QType::Int2,
        3 => QType::Int3,
        4 => QType::Int4,
        _ => QType::Int8,
    }
}

fn all_specs() -> Vec<AffineSpec> {
    let mut v = Vec::new();
    for bits in BITS {
        for group in GROUPS {
            for sym in [false, true] {
                v.push(AffineSpec::new(bits, group, sym).unwrap());
            }
        }
    }
    v
}

/// A row's decoded parts: codes, f16 scales as f32, zero points.
struct Decoded {
    codes: Vec<u8>,
    scales: Vec<f32>,
    scale_bits: Vec<u16>,
    zeros: Vec<u8>,
}

fn decode(spec: &AffineSpec, cols: usize, bytes: &[u8]) -> Decoded {
    let cb = cols * spec.bits as usize / 8;
    let g = spec.groups(cols);
    let mut codes = vec![0u8; cols];
    unpack_codes(spec.bits, &bytes[..cb], &mut codes);
    let scale_bits: Vec<u16> = (0..g).map(|k| u16::from_le_bytes([bytes[cb + 2 * k], bytes[cb + 2 * k + 1]])).collect();
    let scales = scale_bits.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
    let mut zeros = vec![1u8 << (spec.bits - 1); g];
    if !spec.symmetric {
        unpack_codes(spec.bits, &bytes[cb + 2 * g..], &mut zeros);
    }
    Decoded { codes, scales, scale_bits, zeros }
}

fn quant_ref(spec: AffineSpec, x: &[f32], clip: f32, range: Option<(&[f32], &[f32])>, imp: Option<&[f32]>) -> Vec<u8> {
    let mut out = vec![0u8; spec.row_bytes(x.len())];
    quantize_row_ref(x, &mut out, &AffineRow { spec, clip_ratio: clip, range }, imp);
    out
}

fn dequant_ref(spec: AffineSpec, cols: usize, bytes: &[u8]) -> Vec<f32> {
    let mut y = vec![0f32; cols];
    dequantize_row_ref(&spec, bytes, &mut y);
    y
}

#[test]
fn golden_bytes() {
    // int4 asymmetric, one group of 8: range [-7.5, 7.5], scale 15/15 = 1 (f16 0x3C00), zero
    // round_even(7.5) = 8; codes round_even(x) + 8 clamped: 4.5 -> 12 (tie to even), 7.5 -> 16
    // -> 15, -7.5 -> 0. Nibbles low first.
    let x = [0.0, 1.5, 3.0, 4.5, 6.0, 7.5, -7.5, 0.0];
    let spec = AffineSpec::new(4, None, false).unwrap();
    assert_eq!(quant_ref(spec, &x, 1.0, None, None), [0xA8, 0xCB, 0xFE, 0x80, 0x00, 0x3C, 0x08]);
    // Same values symmetric: amax 7.5, scale 2 * 7.5 / 15 = 1, zero 8 (not stored).
    let spec = AffineSpec::new(4, Some(32), true).unwrap();
    assert_eq!(quant_ref(spec, &x, 1.0, None, None), [0xA8, 0xCB, 0xFE, 0x80, 0x00, 0x3C]);
    // int3 symmetric, x = -4..3: scale 8/7 = 1.142857 rounds *up* to the f16 1171/1024 (0x3C93);
    // codes round_even(x / d) + 4 = 1,1,2,3,4,5,6,7 in one 24-bit little-endian word.
    let x: Vec<f32> = (-4..4).map(|v| v as f32).collect();
    let spec = AffineSpec::new(3, None, true).unwrap();
    assert_eq!(quant_ref(spec, &x, 1.0, None, None), [0x89, 0xC6, 0xFA, 0x93, 0x3C]);
    // Dequantization is scale * (code - zero).
    let y = dequant_ref(spec, 8, &[0x89, 0xC6, 0xFA, 0x93, 0x3C]);
    let d = 1171.0f32 / 1024.0;
    assert_eq!(y, [-3.0 * d, -3.0 * d, -2.0 * d, -d, 0.0, d, 2.0 * d, 3.0 * d]);
    // int2 asymmetric, a row of 64 in 2 groups of 32: the two zero points share one byte.
    let mut x = vec![0f32; 64];
    x[0] = -3.0; // group 0: [-3, 0]: scale 1, zero 3
    x[32] = 3.0; // group 1: [0, 3]: scale 1, zero 0
    let spec = AffineSpec::new(2, Some(32), false).unwrap();
    let b = quant_ref(spec, &x, 1.0, None, None);
    assert_eq!(b.len(), 16 + 4 + 1);
    assert_eq!(b[0], 0b11_11_11_00); // codes 0, 3, 3, 3
    assert_eq!(b[8], 0b00_00_00_11); // codes 3, 0, 0, 0
    assert_eq!(&b[16..], [0x00, 0x3C, 0x00, 0x3C, 0b00_11]);
}

/// The quantization range of each group as the quantizer defines it (module doc of
/// `blocks::affine`), recomputed here independently: `[lo, hi]` symmetric-widened if needed.
fn ranges(spec: &AffineSpec, x: &[f32], clip: f32, explicit: Option<(&[f32], &[f32])>) -> Vec<(f32, f32)> {
    x.chunks(spec.group_cols(x.len()))
        .enumerate()
        .map(|(k, xs)| {
            let (lo, hi) = match explicit {
                Some((a, b)) => (a[k].min(0.0), b[k].max(0.0)),
                None => {
                    let lo = xs.iter().copied().fold(0.0f32, f32::min) * clip;
                    let hi = xs.iter().copied().fold(0.0f32, f32::max) * clip;
                    (lo, hi)
                }
            };
            if spec.symmetric {
                let a = lo.abs().max(hi.abs());
                (-a, a)
            } else {
                (lo, hi)
            }
        })
        .collect()
}

/// Every value inside its group's range comes back within `scale / 2` (plus the f32 rounding
/// of one division and of the range arithmetic, a few ulps of |x| and of the range).
fn assert_half_scale(spec: &AffineSpec, x: &[f32], bytes: &[u8], rg: &[(f32, f32)], what: &str) {
    let y = dequant_ref(*spec, x.len(), bytes);
    let dec = decode(spec, x.len(), bytes);
    let g = spec.group_cols(x.len());
    for (i, (&v, &q)) in x.iter().zip(&y).enumerate() {
        let (lo, hi) = rg[i / g];
        if v < lo || v > hi {
            continue;
        }
        let d = f64::from(dec.scales[i / g]);
        let tol = d / 2.0 + (f64::from(v.abs()) + f64::from(hi - lo)) * 2f64.powi(-22);
        let err = (f64::from(q) - f64::from(v)).abs();
        assert!(
            err <= tol,
            "{what}: value {i} = {v:e} in [{lo:e}, {hi:e}] decodes to {q:e}: error {err:e} > scale/2 = {:e}",
            d / 2.0
        );
    }
}

#[test]
fn error_at_most_half_scale_inside_range() {
    for spec in all_specs() {
        let max_abs = qtype(spec.bits).info().max_abs;
        for &cols in &LENS {
            for (case, x) in cases(cols, max_abs, 3 + cols as u64) {
                let what = format!("{spec:?} cols {cols} {case}");
                for clip in [1.0f32, 0.7] {
                    let b = quant_ref(spec, &x, clip, None, None);
                    assert_half_scale(&spec, &x, &b, &ranges(&spec, &x, clip, None), &format!("{what} clip {clip}"));
                }
                let g = spec.groups(cols);
                let mut r = Rng::new(cols as u64);
                let mins: Vec<f32> = (0..g).map(|_| -r.uniform() * 2.0).collect();
                let maxs: Vec<f32> = (0..g).map(|_| r.uniform() * 2.0 - 0.5).collect();
                let explicit = Some((&mins[..], &maxs[..]));
                let b = quant_ref(spec, &x, 1.0, explicit, None);
                assert_half_scale(&spec, &x, &b, &ranges(&spec, &x, 1.0, explicit), &format!("{what} explicit range"));
            }
        }
    }
}

#[test]
fn tiny_and_zero_groups_decode_to_zero() {
    // A group with a nonzero but tiny range: its scale s underflows f16 but rounds *up* to the
    // smallest f16 subnormal (2^-24, bits 0x0001); every code is the zero point and decodes to
    // +0.0. An all-zero group stores scale 0 and codes = zero point (divisor 1). A group whose
    // s underflows f32 itself (int8 on ±the smallest f32 subnormal: 2 * 2^-149 / 255) is the
    // all-zero case.
    let tiny_sub = f32::from_bits(1);
    for spec in all_specs() {
        let cols = 64;
        for (name, x, scale_bits) in [
            ("tiny", (0..cols).map(|i| if i % 2 == 0 { 1e-30 } else { -3e-31 }).collect::<Vec<f32>>(), Some(1u16)),
            ("zeros", vec![0.0; cols], Some(0)),
            ("neg-zeros", vec![-0.0; cols], Some(0)),
            ("min-subnormal", (0..cols).map(|i| if i % 2 == 0 { tiny_sub } else { -tiny_sub }).collect(), None),
        ] {
            let what = format!("{spec:?} {name}");
            let b = quant_ref(spec, &x, 1.0, None, None);
            let dec = decode(&spec, cols, &b);
            match scale_bits {
                Some(s) => assert!(dec.scale_bits.iter().all(|&v| v == s), "{what}: scales {:?}", dec.scale_bits),
                None => {
                    let want = u16::from(spec.bits == 2);
                    assert!(dec.scale_bits.iter().all(|&v| v == want), "{what}: scales {:?}", dec.scale_bits)
                }
            }
            let g = spec.group_cols(cols);
            for (i, &c) in dec.codes.iter().enumerate() {
                assert_eq!(c, dec.zeros[i / g], "{what}: code {i} is not the zero point");
            }
            let y = dequant_ref(spec, cols, &b);
            assert!(y.iter().all(|v| v.to_bits() == 0), "{what}: not all +0.0: {y:?}");
            // The SIMD kernels agree (also covered by the parity test).
            let mut got = vec![0u8; b.len()];
            quantize_row_simd(Emu::<8>, &x, &mut got, &AffineRow { spec, clip_ratio: 1.0, range: None }, None);
            assert_eq!(got, b, "{what}: emu8");
        }
    }
}

#[test]
fn max_abs_keeps_every_scale_finite() {
    // At |x| = max_abs the scale is exactly f16::MAX (65504, bits 0x7BFF): (2 * max_abs) / maxq
    // with max_abs = 65504 * maxq / 2 is exact in f32. Anything above max_abs is rejected.
    for spec in all_specs() {
        let info = qtype(spec.bits).info();
        let m = info.max_abs;
        let cols = 576;
        let name = format!(
            "int{}-{}-{}",
            spec.bits,
            spec.group_size.map_or("row".into(), |g| format!("g{g}")),
            if spec.symmetric { "sym" } else { "asym" }
        );
        let alternating: Vec<f32> = (0..cols).map(|i| if i % 2 == 0 { m } else { -m }).collect();
        let positive: Vec<f32> = (0..cols).map(|i| if i % 3 == 0 { m } else { m * 0.25 }).collect();
        let g = spec.groups(cols);
        let (mins, maxs) = (vec![-m; g], vec![m; g]);
        for (what, x, range) in [
            ("alternating", &alternating, None),
            ("positive", &positive, None),
            ("explicit", &positive, Some((&mins[..], &maxs[..]))),
        ] {
            let opts =
                QuantOptions { group_min: range.map(|r| r.0), group_max: range.map(|r| r.1), ..Default::default() };
            let (layout, b) = quantize(&name, Source::F32(x), 1, cols, &opts).unwrap();
            let dec = decode(&spec, cols, &b);
            // Symmetric: 2 * amax / maxq = 65504. Asymmetric: (hi - lo) / maxq is 65504 when the
            // range spans ±max_abs, half of it for the positive-only row.
            let full = spec.symmetric || what != "positive";
            let want = if full { 65504.0 } else { 32752.0 };
            assert!(dec.scales.iter().all(|&s| s == want), "{name} {what}: scales {:?}", dec.scales);
            let y = dequantize(&layout, &b, None).unwrap();
            assert!(y.iter().all(|v| v.is_finite()), "{name} {what}");
            let err = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err <= want / 2.0, "{name} {what}: error {err} above scale/2");
        }
        let mut over = alternating.clone();
        over[5] = f32::from_bits(m.to_bits() + 1);
        let e = quantize(&name, Source::F32(&over), 1, cols, &QuantOptions::default()).unwrap_err();
        assert!(matches!(e, Error::BadValue { index: 5, .. }), "{name}: {e:?}");
    }
}

/// Importance-weighted squared error of a decoded row per group, summed as the search does
/// (`Σ w * (r * r)` in column order, f32).
fn weighted_errors(spec: &AffineSpec, x: &[f32], y: &[f32], w: &[f32]) -> Vec<f32> {
    let g = spec.group_cols(x.len());
    x.chunks(g)
        .zip(y.chunks(g))
        .zip(w.chunks(g))
        .map(|((xs, ys), ws)| {
            let mut e = 0.0f32;
            for ((&a, &b), &wt) in xs.iter().zip(ys).zip(ws) {
                let r = b - a;
                e += wt * (r * r);
            }
            e
        })
        .collect()
}

#[test]
fn clip_search_never_worse_than_plain() {
    let (mut improved, mut groups) = (0usize, 0usize);
    for spec in all_specs() {
        let max_abs = qtype(spec.bits).info().max_abs;
        for &cols in &LENS {
            let w = importance(cols, 40 + cols as u64);
            for (case, x) in cases(cols, max_abs, 41 + cols as u64) {
                for clip in [1.0f32, 0.8] {
                    let plain = dequant_ref(spec, cols, &quant_ref(spec, &x, clip, None, None));
                    let searched = dequant_ref(spec, cols, &quant_ref(spec, &x, clip, None, Some(&w)));
                    let (ep, es) = (weighted_errors(&spec, &x, &plain, &w), weighted_errors(&spec, &x, &searched, &w));
                    for (k, (a, b)) in ep.iter().zip(&es).enumerate() {
                        assert!(
                            b <= a,
                            "{spec:?} cols {cols} {case} clip {clip} group {k}: search {b:e} > plain {a:e}"
                        );
                        improved += usize::from(b < a);
                        groups += 1;
                    }
                }
            }
        }
    }
    // The search is not a no-op: it wins on a good share of the groups.
    assert!(improved * 10 > groups, "search improved only {improved} of {groups} groups");
}

#[test]
fn round_trip_rmse_matches_the_uniform_noise_model() {
    // Model: with min-max ranges and round-to-nearest on a grid of step d, the error of a value
    // is ~uniform on [-d/2, d/2], so RMSE ≈ sqrt(mean over groups of d² / 12) (a cell is at most
    // 1.7 σ wide even at int2, so the density is nearly flat across it). Expected d from normal
    // order statistics: E[max of 128 N(0,1)] ≈ 2.576, of 256 ≈ 2.815 (≈ max |x| of 128), so
    // asymmetric d ≈ 2 * 2.576 / maxq, symmetric d ≈ 2 * 2.815 / maxq.
    let (rows, cols) = (64, 4096);
    let mut r = Rng::new(3);
    let x: Vec<f32> = (0..rows * cols).map(|_| r.normal()).collect();
    for bits in BITS {
        for sym in [false, true] {
            let name = format!("int{bits}-g128{}", if sym { "-sym" } else { "" });
            let spec = AffineSpec::new(bits, Some(128), sym).unwrap();
            let (layout, b) = quantize(&name, Source::F32(&x), rows, cols, &QuantOptions::default()).unwrap();
            let y = dequantize(&layout, &b, None).unwrap();
            let rmse = (x.iter().zip(&y).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
            let d2: f64 = b
                .chunks(layout.row_bytes)
                .flat_map(|row| decode(&spec, cols, row).scales)
                .map(|d| f64::from(d).powi(2))
                .sum::<f64>()
                / (rows * spec.groups(cols)) as f64;
            let model = (d2 / 12.0).sqrt();
            let maxq = f64::from(spec.max_code());
            let expected = 2.0 * if sym { 2.815 } else { 2.576 } / maxq / 12f64.sqrt();
            eprintln!("{name}: rmse {rmse:.5}, model {model:.5} ({:.3}), expected {expected:.5}", rmse / model);
            assert!(rmse <= 1.05 * model && rmse >= 0.9 * model, "{name}: rmse {rmse} vs model {model}");
            assert!(rmse <= 1.1 * expected, "{name}: rmse {rmse} vs expected {expected}");
        }
    }
}

fn spec_strategy() -> impl Strategy<Value = AffineSpec> {
    (prop::sample::select(BITS.to_vec()), prop::sample::select(GROUPS.to_vec()), any::<bool>())
        .prop_map(|(b, g, s)| AffineSpec::new(b, g, s).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random lengths (multiples of 8, partial groups), magnitudes from 1e-12 to max_abs, with or
    /// without importance and clip ratio: reference == Emu<4/8/16> == the driver at the active
    /// ISA, for quantize and dequantize; the scale/2 bound holds without importance.
    #[test]
    fn random_rows_parity(
        spec in spec_strategy(),
        units in 1usize..=90,
        exp in -12i32..=7,
        seed in any::<u64>(),
        use_imp in any::<bool>(),
        clip in prop::sample::select(vec![1.0f32, 0.95, 0.6, 0.31]),
    ) {
        let cols = 8 * units;
        let max_abs = qtype(spec.bits).info().max_abs;
        let scale = 10f32.powi(exp).min(max_abs);
        let mut r = Rng::new(seed);
        let x: Vec<f32> = (0..cols).map(|_| ((r.uniform() * 2.0 - 1.0) * scale).clamp(-max_abs, max_abs)).collect();
        let w = importance(cols, seed);
        let imp = use_imp.then_some(&w[..]);
        let row = AffineRow { spec, clip_ratio: clip, range: None };
        let want = quant_ref(spec, &x, clip, None, imp);
        let mut got = vec![0u8; want.len()];
        quantize_row_simd(Emu::<4>, &x, &mut got, &row, imp);
        prop_assert_eq!(&got, &want);
        quantize_row_simd(Emu::<8>, &x, &mut got, &row, imp);
        prop_assert_eq!(&got, &want);
        quantize_row_simd(Emu::<16>, &x, &mut got, &row, imp);
        prop_assert_eq!(&got, &want);
        let name = format!(
            "int{}-{}-{}",
            spec.bits,
            spec.group_size.map_or("row".into(), |g| format!("g{g}")),
            if spec.symmetric { "sym" } else { "asym" }
        );
        let opts = QuantOptions { importance: imp, clip_ratio: Some(clip), ..Default::default() };
        let (layout, drv) = quantize(&name, Source::F32(&x), 1, cols, &opts).unwrap();
        prop_assert_eq!(&drv, &want);

        let yref = dequant_ref(spec, cols, &want);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
        let mut y = vec![0f32; cols];
        dequantize_row_simd(Emu::<4>, &spec, &want, &mut y);
        prop_assert_eq!(bits(&y), bits(&yref));
        dequantize_row_simd(Emu::<16>, &spec, &want, &mut y);
        prop_assert_eq!(bits(&y), bits(&yref));
        prop_assert_eq!(bits(&dequantize(&layout, &want, None).unwrap()), bits(&yref));
        if !use_imp {
            assert_half_scale(&spec, &x, &want, &ranges(&spec, &x, clip, None), &name);
        }
    }
}
