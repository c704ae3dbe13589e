//! Parity of the group-affine kernels (int2/int3/int4/int8): the scalar reference against the
//! public driver at every ISA of this host (and `Isa::Scalar`) and against the generic SIMD
//! kernels run directly on `Emu<4>`, `Emu<8>`, `Emu<16>`. Bytes and dequantized f32 bits must be
//! identical, for every bits × group × symmetry, row lengths with partial groups, the shared
//! `common::cases`, with and without importance, clip ratios and explicit ranges.
//! Run with `cargo test --release -p lowbit-core --test parity_affine`.

mod common;

use common::{assert_bytes_eq, assert_f32_bits_eq, cases, importance, simd_isas, Rng};
use lowbit_core::blocks::affine::{dequantize_row_ref, quantize_row_ref};
use lowbit_core::blocks::AffineRow;
use lowbit_core::qtype::AffineSpec;
use lowbit_core::quant::{dequantize, quantize, QuantOptions, Source};
use lowbit_core::simd::affine::{dequantize_row_simd, quantize_row_simd};
use lowbit_core::simd::emu::Emu;
use lowbit_core::{Isa, QType};

const BITS: [u32; 4] = [2, 3, 4, 8];
const GROUPS: [Option<usize>; 5] = [Some(32), Some(64), Some(128), Some(256), None];
/// One packing unit, partial groups (24, 200, 576 = 4.5 × 128, 1000), and a long row.
const LENS: [usize; 6] = [8, 24, 200, 576, 1000, 4096];

fn qtype(bits: u32) -> QType {
    match bits {
        2 => QType::Int2,
        3 => QType::Int3,
        4 => QType::Int4,
        _ => QType::Int8,
    }
}

/// The type name the driver parses, e.g. `int3-g64-sym`, `int4-row-asym`.
fn type_name(spec: &AffineSpec) -> String {
    let g = spec.group_size.map_or("row".to_string(), |g| format!("g{g}"));
    format!("int{}-{g}-{}", spec.bits, if spec.symmetric { "sym" } else { "asym" })
}

/// One way of quantizing a row.
#[derive(Debug, Clone)]
struct Variant {
    name: &'static str,
    clip: Option<f32>,
    importance: bool,
    range: Option<(Vec<f32>, Vec<f32>)>,
}

fn variants(spec: &AffineSpec, x: &[f32], seed: u64) -> Vec<Variant> {
    let max_abs = qtype(spec.bits).info().max_abs;
    let mut r = Rng::new(seed);
    // Explicit ranges: the data's own range stretched or shrunk per group, some not containing 0,
    // one degenerate; clamped to what the driver accepts.
    let (mut mins, mut maxs) = (Vec::new(), Vec::new());
    for (i, xs) in x.chunks(spec.group_cols(x.len())).enumerate() {
        let lo = xs.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let (a, b) = match i % 4 {
            0 => (lo * (0.5 + r.uniform()), hi * (0.5 + r.uniform())),
            1 => (hi * 0.25 + lo * 0.75, hi),
            2 => (lo, lo),
            _ => (lo * 2.0, hi * 0.3),
        };
        let (a, b) = (a.clamp(-max_abs, max_abs), b.clamp(-max_abs, max_abs));
        mins.push(a.min(b));
        maxs.push(a.max(b));
    }
    vec![
        Variant { name: "minmax", clip: None, importance: false, range: None },
        Variant { name: "importance", clip: None, importance: true, range: None },
        Variant { name: "clip0.83", clip: Some(0.83), importance: false, range: None },
        Variant { name: "clip0.9+importance", clip: Some(0.9), importance: true, range: None },
        Variant { name: "range", clip: None, importance: false, range: Some((mins.clone(), maxs.clone())) },
        Variant { name: "range+importance", clip: None, importance: true, range: Some((mins, maxs)) },
    ]
}

/// Quantize `x` every way and compare; then dequantize every way and compare. Returns the
/// reference bytes.
fn check_row(spec: AffineSpec, x: &[f32], v: &Variant, imp: &[f32], what: &str) -> Vec<u8> {
    let cols = x.len();
    let imp = v.importance.then_some(imp);
    let row = AffineRow {
        spec,
        clip_ratio: v.clip.unwrap_or(1.0),
        range: v.range.as_ref().map(|(a, b)| (a.as_slice(), b.as_slice())),
    };
    let nbytes = spec.row_bytes(cols);
    let block = spec.bits as usize; // bytes of one 8-code unit
    let mut want = vec![0u8; nbytes];
    quantize_row_ref(x, &mut want, &row, imp);

    let mut got = vec![0xA5u8; nbytes];
    quantize_row_simd(Emu::<4>, x, &mut got, &row, imp);
    assert_bytes_eq(&format!("{what} emu4"), block, &want, &got);
    let mut got = vec![0x5Au8; nbytes];
    quantize_row_simd(Emu::<8>, x, &mut got, &row, imp);
    assert_bytes_eq(&format!("{what} emu8"), block, &want, &got);
    let mut got = vec![0xFFu8; nbytes];
    quantize_row_simd(Emu::<16>, x, &mut got, &row, imp);
    assert_bytes_eq(&format!("{what} emu16"), block, &want, &got);

    let name = type_name(&spec);
    let mut isas = vec![Isa::Scalar];
    isas.extend(simd_isas());
    let mut layout = None;
    for &isa in &isas {
        let opts = QuantOptions {
            importance: imp,
            clip_ratio: v.clip,
            group_min: v.range.as_ref().map(|(a, _)| a.as_slice()),
            group_max: v.range.as_ref().map(|(_, b)| b.as_slice()),
            isa: Some(isa),
            ..Default::default()
        };
        let (l, got) = quantize(&name, Source::F32(x), 1, cols, &opts).unwrap();
        assert_bytes_eq(&format!("{what} driver {isa}"), block, &want, &got);
        layout = Some(l);
    }
    let layout = layout.unwrap();
    assert_eq!(layout.row_bytes, nbytes);

    let mut yref = vec![0f32; cols];
    dequantize_row_ref(&spec, &want, &mut yref);
    check_dequant(spec, &want, &yref, &isas, &layout, what);
    want
}

fn check_dequant(
    spec: AffineSpec,
    bytes: &[u8],
    yref: &[f32],
    isas: &[Isa],
    layout: &lowbit_core::quant::Layout,
    what: &str,
) {
    let cols = yref.len();
    let mut y = vec![f32::NAN; cols];
    dequantize_row_simd(Emu::<4>, &spec, bytes, &mut y);
    assert_f32_bits_eq(&format!("{what} dequant emu4"), yref, &y);
    dequantize_row_simd(Emu::<8>, &spec, bytes, &mut y);
    assert_f32_bits_eq(&format!("{what} dequant emu8"), yref, &y);
    dequantize_row_simd(Emu::<16>, &spec, bytes, &mut y);
    assert_f32_bits_eq(&format!("{what} dequant emu16"), yref, &y);
    for &isa in isas {
        let y = dequantize(layout, bytes, Some(isa)).unwrap();
        assert_f32_bits_eq(&format!("{what} dequant driver {isa}"), yref, &y);
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

#[test]
fn quantize_and_dequantize_parity() {
    for spec in all_specs() {
        let max_abs = qtype(spec.bits).info().max_abs;
        for (li, &cols) in LENS.iter().enumerate() {
            let imp = importance(cols, 1000 + li as u64);
            for (case, x) in cases(cols, max_abs, 17 + cols as u64) {
                for v in variants(&spec, &x, cols as u64) {
                    // Keep the run short (it also runs under qemu for NEON): the clip search (21
                    // candidates per group) runs on rows up to 576 values, the long rows take the
                    // variants without it (4096: min-max only).
                    if (cols > 576 && v.importance) || (cols > 1000 && v.name != "minmax") {
                        continue;
                    }
                    let what = format!("{} cols {cols} {case} {}", type_name(&spec), v.name);
                    check_row(spec, &x, &v, &imp, &what);
                }
            }
        }
    }
}

#[test]
fn several_rows_through_the_driver() {
    // Rows are independent: a multi-row driver call equals the reference row by row, with the
    // per-row slices of group_min / group_max. 300 rows × 576 crosses the parallel threshold.
    let (rows, cols) = (300, 576);
    let mut r = Rng::new(5);
    let x: Vec<f32> = (0..rows * cols).map(|_| r.normal()).collect();
    let imp = importance(cols, 9);
    for spec in all_specs() {
        let g = spec.groups(cols);
        let mins: Vec<f32> = (0..rows * g).map(|_| -r.uniform() * 3.0).collect();
        let maxs: Vec<f32> = (0..rows * g).map(|_| r.uniform() * 3.0).collect();
        for (vi, (use_imp, use_range)) in [(false, false), (true, false), (false, true)].into_iter().enumerate() {
            let mut want = Vec::new();
            for i in 0..rows {
                let row = AffineRow {
                    spec,
                    clip_ratio: 1.0,
                    range: use_range.then(|| (&mins[i * g..(i + 1) * g], &maxs[i * g..(i + 1) * g])),
                };
                let mut b = vec![0u8; spec.row_bytes(cols)];
                quantize_row_ref(&x[i * cols..(i + 1) * cols], &mut b, &row, use_imp.then_some(&imp[..]));
                want.extend(b);
            }
            for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
                let opts = QuantOptions {
                    importance: use_imp.then_some(&imp[..]),
                    group_min: use_range.then_some(&mins[..]),
                    group_max: use_range.then_some(&maxs[..]),
                    isa: Some(isa),
                    ..Default::default()
                };
                let (layout, got) = quantize(&type_name(&spec), Source::F32(&x), rows, cols, &opts).unwrap();
                assert_bytes_eq(&format!("{} variant {vi} {isa}", type_name(&spec)), layout.row_bytes, &want, &got);
                let y = dequantize(&layout, &got, Some(isa)).unwrap();
                let mut yref = vec![0f32; cols];
                for (i, b) in want.chunks(layout.row_bytes).enumerate() {
                    dequantize_row_ref(&spec, b, &mut yref);
                    assert_f32_bits_eq(
                        &format!("{} row {i} {isa}", type_name(&spec)),
                        &yref,
                        &y[i * cols..(i + 1) * cols],
                    );
                }
            }
        }
    }
}

#[test]
fn dequantize_arbitrary_bytes_parity() {
    // Any bytes decode identically everywhere, including NaN/Inf/subnormal f16 scales and zero
    // codes beyond what the quantizer writes.
    let mut r = Rng::new(99);
    let mut isas = vec![Isa::Scalar];
    isas.extend(simd_isas());
    for spec in all_specs() {
        for &cols in &LENS {
            for trial in 0..4 {
                let mut bytes: Vec<u8> = (0..spec.row_bytes(cols)).map(|_| r.next_u64() as u8).collect();
                if trial == 1 {
                    // Plant special f16 scales: +Inf, NaN, −0, the smallest subnormal.
                    let off = cols * spec.bits as usize / 8;
                    for (k, s) in [0x7C00u16, 0x7E01, 0x8000, 0x0001].iter().cycle().take(spec.groups(cols)).enumerate()
                    {
                        bytes[off + 2 * k..off + 2 * k + 2].copy_from_slice(&s.to_le_bytes());
                    }
                }
                let layout = lowbit_core::quant::Layout::new(qtype(spec.bits), Some(spec), 1, cols).unwrap();
                let mut yref = vec![0f32; cols];
                dequantize_row_ref(&spec, &bytes, &mut yref);
                let what = format!("{} cols {cols} random bytes {trial}", type_name(&spec));
                check_dequant(spec, &bytes, &yref, &isas, &layout, &what);
            }
        }
    }
}

/// Rows whose every value sits exactly halfway between two codes: per group a random f16 scale
/// `d` and zero point `z0` with range `[-z0 d, (maxq - z0) d]` (asymmetric; the scale comes out
/// as exactly `d`) or `±maxq d / 2` (symmetric), values `(k + 1/2 - z0) d`, all exact in f32. So
/// `x / d` is an exact tie: this pins round-half-even and the division (a multiplication by
/// `1 / d` rounds some of these the other way).
#[test]
fn exact_ties_parity() {
    let mut r = Rng::new(2024);
    for spec in all_specs() {
        let maxq = spec.max_code() as usize;
        for &cols in &[8usize, 64, 576] {
            let mut x = vec![0f32; cols];
            for xs in x.chunks_mut(spec.group_cols(cols)) {
                // A normal f16 in [2^-6, 2^4): exponent field 9..=18, random 10-bit mantissa.
                let d = half::f16::from_bits(((9 + r.below(10) as u16) << 10) | r.below(1024) as u16).to_f32();
                let z0 = if spec.symmetric { 1usize << (spec.bits - 1) } else { r.below(maxq + 1) };
                let (lo, hi) = if spec.symmetric {
                    (-(maxq as f32) * d / 2.0, maxq as f32 * d / 2.0)
                } else {
                    (-(z0 as f32) * d, (maxq - z0) as f32 * d)
                };
                for (j, v) in xs.iter_mut().enumerate() {
                    *v = match j {
                        0 => lo,
                        1 => hi,
                        _ => (r.below(maxq) as f32 + 0.5 - z0 as f32) * d,
                    };
                }
            }
            let imp = importance(cols, 5);
            for v in [
                Variant { name: "ties", clip: None, importance: false, range: None },
                Variant { name: "ties+importance", clip: None, importance: true, range: None },
            ] {
                let what = format!("{} cols {cols} {}", type_name(&spec), v.name);
                let bytes = check_row(spec, &x, &v, &imp, &what);
                if !v.importance {
                    // The scale is exactly the planted d: the ties really are ties.
                    let g = spec.group_cols(cols);
                    let off = cols * spec.bits as usize / 8;
                    for (k, xs) in x.chunks(g).enumerate() {
                        let d = half::f16::from_bits(u16::from_le_bytes([bytes[off + 2 * k], bytes[off + 2 * k + 1]]));
                        assert_eq!(
                            d.to_f32() * maxq as f32,
                            if spec.symmetric { 2.0 * xs[1] } else { xs[1] - xs[0] },
                            "{what}"
                        );
                    }
                }
            }
        }
    }
}
