//! The quantized matmul: each piece (activation quantization, weight decoding, the int8 and
//! f32 dots) at every ISA of the host (and the generic activation kernel on `Emu` at 4, 8 and
//! 16 lanes) against its scalar reference; `matmul` at every ISA against `matmul` at Scalar
//! within `isa_tolerance`; `matmul` against the f64 `matmul_reference` within a bound derived
//! from the int8 activation step; odd shapes, permutations, outliers, extreme activations,
//! bad inputs, and concurrent calls from rayon tasks and plain threads.

mod common;

use common::{assert_f32_bits_eq, simd_isas, Rng};
use lowbit_core::matmul::{isa_tolerance, matmul, matmul_reference, Outliers, QMatrix};
use lowbit_core::quant::{dequantize, quantize, Layout, QuantOptions, Source};
use lowbit_core::simd::emu::Emu;
use lowbit_core::simd::matmul::{self as k, padded, QA, QS};
use lowbit_core::simd::{available, Isa};
use lowbit_core::Error;
use rayon::prelude::*;

/// Every quantized type name the matmul handles (group-affine in each flavour).
const QUANT_TYPES: &[&str] = &[
    "q8_0",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q2_k",
    "q3_k",
    "q4_k",
    "q5_k",
    "q6_k",
    "iq4_nl",
    "int2-g32",
    "int3-g64-sym",
    "int4-g128",
    "int4-g32-sym",
    "int8-g128",
    "int8-row-sym",
    "int8-g32",
    "int3-row",
    "int2-g256-sym",
    "q2_kr",
    "q3_kr",
    "q4_kr",
    "q5_kr",
    "q6_kr",
    "int2-g16-dq",
    "int3-g16-dq",
    "int4-g16-dq",
];
const FLOAT_TYPES: &[&str] = &["f32", "f16", "bf16"];

/// The row-length unit of a type (1: any length, as for the ragged k-types).
fn block_of(name: &str) -> usize {
    match name {
        n if n.ends_with("_kr") => 1,
        n if n.ends_with("-dq") => 16,
        n if n.starts_with("int") => 8,
        n if n.ends_with("_k") => 256,
        "f32" | "f16" | "bf16" => 1,
        _ => 32,
    }
}

/// A random weight of `rows × cols` quantized to `name`; every third row is all zero.
fn weight(name: &str, rows: usize, cols: usize, seed: u64) -> (Layout, Vec<u8>) {
    let mut r = Rng::new(seed);
    let w: Vec<f32> = (0..rows * cols).map(|i| if (i / cols) % 3 == 2 { 0.0 } else { r.normal() * 0.05 }).collect();
    quantize(name, Source::F32(&w), rows, cols, &QuantOptions::default()).unwrap()
}

/// Activations of `n × cols` of a named kind.
fn acts(kind: &str, n: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n * cols)
        .map(|i| match kind {
            "normal" => r.normal(),
            "zeros" => 0.0,
            "huge" => r.normal() * 1e30,
            "tiny" => r.normal() * 1e-39,
            // Rows of wildly different scales, and blocks that are flushed within a row.
            "mixed" => r.normal() * [1e-30f32, 1.0, 1e20][(i / 37) % 3],
            other => panic!("unknown kind {other}"),
        })
        .collect()
}

type ActFn<'a> = dyn Fn(&mut [i8], &mut [f32], &mut [f32], &mut [i16]) -> f32 + 'a;

#[test]
fn activation_quantization_is_identical_everywhere_and_within_half_a_step() {
    let mut cols_list: Vec<usize> = (1..=70).collect();
    cols_list.extend([96, 255, 300, 4096]);
    for block in [QA, 256] {
        for &cols in &cols_list {
            for (case, x) in common::cases(cols, 3.0e38, cols as u64) {
                let cp = padded(cols);
                let run = |f: &ActFn<'_>| {
                    let (mut q, mut d, mut s) = (vec![0i8; cp], vec![0f32; cp / QS], vec![0f32; cp / QS]);
                    let mut b = vec![0i16; cp / QS];
                    let sc = f(&mut q, &mut d, &mut s, &mut b);
                    (q, d, s, b, sc)
                };
                let want = run(&|q, d, s, b| k::quantize_act_ref(&x, block, q, d, s, b));
                let mut got = vec![];
                for isa in available() {
                    got.push((isa.name(), run(&|q, d, s, b| k::quantize_act(isa, &x, block, q, d, s, b))));
                }
                got.push(("emu4", run(&|q, d, s, b| k::quantize_act_simd(Emu::<4>, &x, block, q, d, s, b))));
                got.push(("emu8", run(&|q, d, s, b| k::quantize_act_simd(Emu::<8>, &x, block, q, d, s, b))));
                got.push(("emu16", run(&|q, d, s, b| k::quantize_act_simd(Emu::<16>, &x, block, q, d, s, b))));
                for (name, g) in &got {
                    let tag = format!("{name} block={block} cols={cols} {case}");
                    let qb: Vec<u8> = g.0.iter().map(|&v| v as u8).collect();
                    let wb: Vec<u8> = want.0.iter().map(|&v| v as u8).collect();
                    common::assert_bytes_eq(&tag, QA, &wb, &qb);
                    assert_f32_bits_eq(&format!("{tag} d16"), &want.1, &g.1);
                    assert_f32_bits_eq(&format!("{tag} s16"), &want.2, &g.2);
                    assert_eq!(want.3, g.3, "{tag} b16");
                    assert_eq!(want.4.to_bits(), g.4.to_bits(), "{tag} scale");
                }
                // The error bound, from the step of each block (amax / 127): half a step (plus a
                // margin for the f32 rounding of the step and of x / step), or for a block flushed
                // as negligible (amax < 2^-119 of the row's largest value) its whole amax.
                let (q, d16, s16, b16, scale) = &want;
                let amax_row = x.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
                let floor = if amax_row > 0.0 { 2f64.powi(amax_row.log2().floor() as i32 - 118) } else { 0.0 };
                assert!(q.iter().all(|&v| v != -128), "cols={cols} {case}: code -128");
                for (b, xb) in x.chunks(block).enumerate() {
                    let amax = xb.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
                    let tol = amax / 127.0 * (0.5 + 2f64.powi(-10)) + floor;
                    for (j, &v) in xb.iter().enumerate() {
                        let idx = b * block + j;
                        // One step per block.
                        assert_eq!(d16[idx / QS].to_bits(), d16[b * block / QS].to_bits(), "block={block} [{idx}]");
                        let deq = f64::from(*scale) * f64::from(d16[idx / QS]) * f64::from(q[idx]);
                        assert!(
                            (deq - f64::from(v)).abs() <= tol,
                            "block={block} cols={cols} {case} [{idx}]: {v:e} -> {deq:e}, tol {tol:e}"
                        );
                    }
                }
                for (kk, ((qs, &s), &bs)) in q.chunks_exact(QS).zip(s16).zip(b16).enumerate() {
                    let sum: i32 = qs.iter().map(|&v| i32::from(v)).sum();
                    assert_eq!(i32::from(bs), sum, "cols={cols} {case}: b16[{kk}]");
                    assert_eq!(s, d16[kk] * sum as f32, "cols={cols} {case}: s16[{kk}]");
                }
            }
        }
    }
}

#[test]
fn decoding_is_identical_everywhere_and_matches_dequantize() {
    for &name in QUANT_TYPES {
        let bs = block_of(name);
        for cols in [bs, 3 * bs, 40.max(bs), 264.max(bs), 4096] {
            if cols % bs != 0 {
                continue;
            }
            let rows = 5;
            let (l, data) = weight(name, rows, cols, cols as u64 + 1);
            let deq = dequantize(&l, &data, Some(Isa::Scalar)).unwrap();
            let cp = padded(cols);
            for r in 0..rows {
                let src = &data[r * l.row_bytes..(r + 1) * l.row_bytes];
                let dec = |isa: Isa| {
                    let (mut c, mut s, mut m) = (vec![0i8; cp], vec![0f32; cp / QS], vec![0f32; cp / QS]);
                    k::decode_row(isa, l.qtype, l.affine, cols, src, &mut c, &mut s, &mut m);
                    (c, s, m)
                };
                let (c, s, m) = dec(Isa::Scalar);
                for isa in simd_isas() {
                    let (c2, s2, m2) = dec(isa);
                    let tag = format!("{name} {isa} cols={cols} row {r}");
                    assert_eq!(c, c2, "{tag}: codes");
                    assert_f32_bits_eq(&format!("{tag} sw"), &s, &s2);
                    if k::has_mins(l.qtype, l.affine) {
                        assert_f32_bits_eq(&format!("{tag} mw"), &m, &m2);
                    }
                }
                assert!(c[cols..].iter().all(|&v| v == 0), "{name}: padding codes");
                let mins = k::has_mins(l.qtype, l.affine);
                for j in 0..cols {
                    let want = deq[r * cols + j];
                    let scaled = s[j / QS] * f32::from(c[j]);
                    let got = if mins { scaled + m[j / QS] } else { scaled };
                    // int8 asymmetric splits d·(c − z) into d·(c − 128) + d·(128 − z): one
                    // extra rounding of each part. Every other type reproduces the reference's
                    // operations exactly.
                    let split = name.starts_with("int8") && mins;
                    let tol = if split {
                        2.0 * f32::EPSILON * (s[j / QS] * f32::from(c[j])).abs().max(m[j / QS].abs())
                    } else {
                        0.0
                    };
                    assert!((got - want).abs() <= tol, "{name} cols={cols} [{r}, {j}]: {got:e} vs {want:e}");
                }
            }
        }
    }
}

#[test]
fn int8_dots_agree_with_the_reference() {
    let mut r = Rng::new(3);
    for len in [32, 64, 96, 160, 4096] {
        for trial in 0..20 {
            // Trial 0: the extremes (w = -128, x = ±127) that saturate a careless maddubs.
            let wq: Vec<i8> = (0..len).map(|_| if trial == 0 { -128 } else { r.next_u64() as i8 }).collect();
            let xq: Vec<i8> = (0..len)
                .map(|i| if trial == 0 { [127, -127][i % 2] } else { (r.below(255) as i32 - 127) as i8 })
                .collect();
            let sw: Vec<f32> = (0..len / QS).map(|_| r.normal()).collect();
            let d16: Vec<f32> = (0..len / QS).map(|_| r.uniform() * 0.01).collect();
            let want = k::dot_q8_ref(&wq, &sw, &xq, &d16);
            let mag: f64 = (0..len / QS)
                .map(|kk| {
                    let s: i64 = (kk * QS..(kk + 1) * QS).map(|j| (i64::from(wq[j]) * i64::from(xq[j])).abs()).sum();
                    f64::from((sw[kk] * d16[kk]).abs()) * s as f64
                })
                .sum();
            let tol = k::dot_tolerance(len / 4) * mag;
            let mut variants = k::dot_q8_variants();
            for isa in simd_isas() {
                // The dispatching entry point too.
                variants.push((
                    isa.name(),
                    match isa {
                        Isa::Avx2 => |a: &[i8], b: &[f32], c: &[i8], d: &[f32]| k::dot_q8(Isa::Avx2, a, b, c, d),
                        Isa::Avx512 => |a: &[i8], b: &[f32], c: &[i8], d: &[f32]| k::dot_q8(Isa::Avx512, a, b, c, d),
                        _ => |a: &[i8], b: &[f32], c: &[i8], d: &[f32]| k::dot_q8(Isa::Neon, a, b, c, d),
                    },
                ));
            }
            for (name, f) in variants {
                let got = f(&wq, &sw, &xq, &d16);
                assert!(
                    f64::from((got - want).abs()) <= tol,
                    "{name} len={len} trial={trial}: {got:e} vs {want:e} (tol {tol:e})"
                );
            }
        }
    }
    for isa in [Isa::Avx512, Isa::Neon] {
        if !isa.is_available() {
            eprintln!("skipped: {isa} int8 dot (not available on this CPU)");
        }
    }
}

#[test]
fn four_row_int8_dot_agrees_with_the_reference() {
    let mut r = Rng::new(5);
    for len in [32, 64, 96, 4096] {
        let rows: Vec<Vec<i8>> = (0..4).map(|_| (0..len).map(|_| r.next_u64() as i8).collect()).collect();
        let sws: Vec<Vec<f32>> = (0..4).map(|_| (0..len / QS).map(|_| r.normal()).collect()).collect();
        let xq: Vec<i8> = (0..len).map(|_| (r.below(255) as i32 - 127) as i8).collect();
        let d16: Vec<f32> = (0..len / QS).map(|_| r.uniform() * 0.01).collect();
        for isa in available() {
            let got = k::dot_q8_x4(
                isa,
                std::array::from_fn(|j| &rows[j][..]),
                std::array::from_fn(|j| &sws[j][..]),
                &xq,
                &d16,
            );
            for j in 0..4 {
                let want = k::dot_q8_ref(&rows[j], &sws[j], &xq, &d16);
                let mag: f64 = (0..len)
                    .map(|v| {
                        f64::from((sws[j][v / QS] * d16[v / QS]).abs())
                            * f64::from(i32::from(rows[j][v]) * i32::from(xq[v])).abs()
                    })
                    .sum();
                let tol = if isa == Isa::Scalar { 0.0 } else { k::dot_tolerance(len / 4) * mag };
                assert!(f64::from((got[j] - want).abs()) <= tol, "{isa} len={len} row {j}: {} vs {want}", got[j]);
            }
        }
    }
}

#[test]
fn outer_int8_kernel_gives_the_bits_of_the_four_row_dot() {
    // dot_q8_outer (AVX-512 VNNI: sixteen activation rows in the lanes) must give each lane
    // the bits of dot_q8_x4 at the same ISA, so a token's outputs do not depend on its batch.
    let mut r = Rng::new(6);
    let mut ran = 0;
    for isa in available().into_iter().filter(|&i| k::has_outer(i)) {
        for len in [32, 64, 96, 4096, 4128] {
            let rows: Vec<Vec<i8>> = (0..2).map(|_| (0..len).map(|_| r.next_u64() as i8).collect()).collect();
            let sws: Vec<Vec<f32>> = (0..2).map(|_| (0..len / QS).map(|_| r.normal()).collect()).collect();
            let xs: Vec<Vec<i8>> =
                (0..k::LANES).map(|_| (0..len).map(|_| (r.below(255) as i32 - 127) as i8).collect()).collect();
            let ds: Vec<Vec<f32>> =
                (0..k::LANES).map(|_| (0..len / QS).map(|_| r.uniform() * 0.01).collect()).collect();
            let (s16, b16) = (vec![0f32; len / QS], vec![0i16; len / QS]);
            let tile_acts: [k::ActRow<'_>; k::LANES] =
                std::array::from_fn(|l| k::ActRow { q: &xs[l], d16: &ds[l], s16: &s16, b16: &b16, scale: 1.0 });
            let (mut xt, mut c4, mut d16) = (vec![0i8; k::LANES * len], vec![0i32; 4 * len], vec![0f32; len]);
            k::pack_q8_tile(tile_acts, &mut xt, &mut c4, &mut d16);
            let flipped: Vec<Vec<i8>> = rows.iter().map(|w| w.iter().map(|&c| c ^ i8::MIN).collect()).collect();
            let tile = k::Q8Tile { xt: &xt, c4: &c4, d16: &d16 };
            let got = k::dot_q8_outer(isa, [&flipped[0], &flipped[1]], [&sws[0], &sws[1]], tile);
            for l in 0..k::LANES {
                let w4: [&[i8]; 4] = std::array::from_fn(|j| &rows[j % 2][..]);
                let s4: [&[f32]; 4] = std::array::from_fn(|j| &sws[j % 2][..]);
                let want = k::dot_q8_x4(isa, w4, s4, &xs[l], &ds[l]);
                assert_f32_bits_eq(&format!("{isa} len={len} lane {l}"), &want[..2], &[got[0][l], got[1][l]]);
            }
            ran += 1;
        }
    }
    if ran == 0 {
        eprintln!("outer_int8_kernel_gives_the_bits_of_the_four_row_dot: skipped (no AVX-512 VNNI here)");
    }
}

#[test]
fn outputs_do_not_depend_on_the_batch() {
    // Single tokens run the fused kernels (legacy, int4), the k-kernels on the stored rows or
    // the four-row dot; batches of 7 the decoded tiles (k-quants: four activation rows per
    // call); of 21 at AVX-512 VNNI the outer products (one tile of 16 and a padded one). Every
    // token's outputs must be the same bits either way.
    for (ti, &name) in QUANT_TYPES.iter().enumerate() {
        let cols = match name {
            n if n.ends_with("_kr") => 600,
            n if K_TYPES.contains(&n) => 512,
            _ => 512 + 32 * (ti % 2),
        };
        let rows = 9;
        let (l, data) = weight(name, rows, cols, 91 + ti as u64);
        let w = QMatrix::new(l, &data, None, None).unwrap();
        let x = acts("mixed", 21, cols, 7 + ti as u64);
        for (isa, n) in available().into_iter().flat_map(|isa| [(isa, 7), (isa, 21)]) {
            let mut batch = vec![0f32; n * rows];
            matmul(&w, &x[..n * cols], n, &mut batch, Some(isa)).unwrap();
            for i in 0..n {
                let mut one = vec![0f32; rows];
                matmul(&w, &x[i * cols..(i + 1) * cols], 1, &mut one, Some(isa)).unwrap();
                assert_f32_bits_eq(&format!("{name} {isa} n={n} token {i}"), &one, &batch[i * rows..(i + 1) * rows]);
            }
        }
    }
}

/// An activation row quantized (scalar) in blocks of 256: codes, steps, scaled and exact per-16
/// sums, and the row's scale.
fn quantized_k(x: &[f32]) -> (Vec<i8>, Vec<f32>, Vec<f32>, Vec<i16>, f32) {
    let (cp, nsub) = (padded(x.len()), padded(x.len()) / QS);
    let (mut q, mut d, mut s, mut b) = (vec![0i8; cp], vec![0f32; nsub], vec![0f32; nsub], vec![0i16; nsub]);
    let scale = k::quantize_act(Isa::Scalar, x, 256, &mut q, &mut d, &mut s, &mut b);
    (q, d, s, b, scale)
}

/// The types with fused GEMV kernels (`has_fused` at AVX2 / AVX-512).
const FUSED_TYPES: &[&str] =
    &["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl", "int4-g128", "int4-g32-sym", "int4-g64", "int4-row"];

/// The k-quants and their ragged types (`dot_k`).
const K_TYPES: &[&str] = &["q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q2_kr", "q3_kr", "q4_kr", "q5_kr", "q6_kr"];

#[test]
fn k_quant_dots_are_the_reference_bits_at_every_isa() {
    // dot_k's contract: the bits of dot_k_ref at every ISA (integer sums per super-block, then
    // the same f32 operations), and dot_k_ref within f32 rounding of the f64 dot of the
    // dequantized weights with the dequantized activations.
    let mut ran = 0;
    for (ti, &name) in K_TYPES.iter().enumerate() {
        let cols_list: &[usize] = if name.ends_with("_kr") {
            // Tails of 1 to 8 units (8: a row not a multiple of 32), none, and no full super-block.
            &[40, 288, 576, 600, 1000, 4096 + 224, 512, 224, 384, 4096 + 160, 4096 + 192]
        } else {
            &[256, 768, 4096]
        };
        for &cols in cols_list {
            let (l, data) = weight(name, 4, cols, (ti * 1000 + cols) as u64);
            assert!(k::is_kquant(l.qtype) && k::act_block(l.qtype) == 256);
            let deq = dequantize(&l, &data, Some(Isa::Scalar)).unwrap();
            let rows: [&[u8]; 4] = std::array::from_fn(|r| &data[r * l.row_bytes..(r + 1) * l.row_bytes]);
            let (cp, nsub) = (padded(cols), padded(cols) / QS);
            for kind in ["normal", "zeros", "huge", "tiny", "mixed"] {
                let x = acts(kind, 1, cols, cols as u64 + 5);
                let (mut q, mut d16, mut s16) = (vec![0i8; cp], vec![0f32; nsub], vec![0f32; nsub]);
                let mut b16 = vec![0i16; nsub];
                let scale = k::quantize_act(Isa::Scalar, &x, 256, &mut q, &mut d16, &mut s16, &mut b16);
                let act = k::ActRow { q: &q, d16: &d16, s16: &s16, b16: &b16, scale };
                let want: Vec<f32> = rows.iter().map(|src| k::dot_k_ref(l.qtype, cols, src, act)).collect();
                // The GEMM's form: rows decoded once, then the decoded kernel.
                let nb = k::k_blocks(cols);
                let dec: Vec<_> = rows
                    .iter()
                    .map(|src| {
                        let (mut u, mut sv) = (vec![0u8; cp], vec![0i16; 16 * nb]);
                        let (mut zs, mut mn, mut dd) = (vec![0i16; 16 * nb], vec![0i16; 16 * nb], vec![0f32; 2 * nb]);
                        k::decode_k_row(l.qtype, cols, src, &mut u, &mut sv, &mut zs, &mut mn, &mut dd);
                        (u, sv, zs, mn, dd)
                    })
                    .collect();
                let krows: [k::KRow<'_>; 4] = std::array::from_fn(|r| k::KRow {
                    u: &dec[r].0,
                    sv: &dec[r].1,
                    zs: &dec[r].2,
                    mn: &dec[r].3,
                    dd: &dec[r].4,
                });
                let base = l.qtype.ragged_base().unwrap_or(l.qtype);
                // Every ISA level, and the kernels a level does not name (NEON without sdot).
                let variants = k::dot_k_variants();
                let runs = available().into_iter().map(|isa| (isa.to_string(), isa, None));
                let runs = runs.chain(variants.iter().map(|v| (v.0.to_string(), Isa::Neon, Some(v))));
                for (label, isa, variant) in runs {
                    let tag = format!("{name} cols={cols} {kind} {label}");
                    let stored = match variant {
                        Some(v) => (v.1)(l.qtype, cols, rows, act),
                        None => k::dot_k(isa, l.qtype, cols, rows, act),
                    };
                    assert_f32_bits_eq(&tag, &want, &stored);
                    // Four activation rows: this one and three others (a scaled copy, the
                    // reverse, a sign pattern), each with its own dots.
                    let xs: [Vec<f32>; 3] = [
                        x.iter().map(|v| -0.5 * v).collect(),
                        x.iter().rev().copied().collect(),
                        x.iter().enumerate().map(|(j, v)| if j % 3 == 0 { -v } else { 4.0 * v }).collect(),
                    ];
                    let more: Vec<_> = xs.iter().map(|xo| quantized_k(xo)).collect();
                    let more: Vec<k::ActRow<'_>> = more
                        .iter()
                        .map(|m| k::ActRow { q: &m.0, d16: &m.1, s16: &m.2, b16: &m.3, scale: m.4 })
                        .collect();
                    let four = [act, more[0], more[1], more[2]];
                    let got = match variant {
                        Some(v) => (v.2)(base, krows, four),
                        None => k::dot_k_decoded(isa, base, krows, four),
                    };
                    assert_f32_bits_eq(&format!("{tag} decoded"), &want, &got[0]);
                    for (i, a2) in more.iter().enumerate() {
                        let want2: Vec<f32> = rows.iter().map(|src| k::dot_k_ref(l.qtype, cols, src, *a2)).collect();
                        assert_f32_bits_eq(&format!("{tag} decoded, activation {}", i + 1), &want2, &got[i + 1]);
                    }
                    ran += 1;
                }
                // The outer-product kernel (AVX-512 VNNI): eight rows (the four, twice) with a
                // tile of sixteen distinct activation rows, each lane its own dots.
                for isa in available().into_iter().filter(|&i| k::has_outer(i)) {
                    let xs: Vec<Vec<f32>> = (0..k::LANES)
                        .map(|l| {
                            let f = 1.0 + l as f32 / 4.0;
                            (0..cols).map(|j| if (j + l) % 5 == 0 { -f } else { f } * x[(j + 7 * l) % cols]).collect()
                        })
                        .collect();
                    let qa: Vec<_> = xs.iter().map(|xo| quantized_k(xo)).collect();
                    let tile_acts: [k::ActRow<'_>; k::LANES] = std::array::from_fn(|l| {
                        let m = &qa[l];
                        k::ActRow { q: &m.0, d16: &m.1, s16: &m.2, b16: &m.3, scale: m.4 }
                    });
                    let nb = k::k_blocks(cols);
                    let (mut xt, mut bt, mut dx) =
                        (vec![0i8; k::LANES * cp], vec![0i16; 256 * nb], vec![0f32; k::LANES * nb]);
                    k::pack_act_tile(tile_acts, &mut xt, &mut bt, &mut dx);
                    let tile = k::ActTile { xt: &xt, bt: &bt, dx: &dx };
                    let got = k::dot_k_outer(isa, base, std::array::from_fn(|j| krows[j % 4]), tile);
                    for (lane, a) in tile_acts.iter().enumerate() {
                        let want_l: Vec<f32> = rows.iter().map(|src| k::dot_k_ref(l.qtype, cols, src, *a)).collect();
                        let got_l: Vec<f32> = (0..k::OUTER_ROWS).map(|j| got[j][lane]).collect();
                        let want_l: Vec<f32> = (0..k::OUTER_ROWS).map(|j| want_l[j % 4]).collect();
                        let tag = format!("{name} cols={cols} {kind} {isa} outer, activation {lane}");
                        assert_f32_bits_eq(&tag, &want_l, &got_l);
                    }
                    ran += 1;
                }
                for (r, &v) in want.iter().enumerate() {
                    let wr = &deq[r * cols..(r + 1) * cols];
                    let m = 2.0 * wr.iter().fold(0f64, |a, v| a.max(f64::from(v.abs())));
                    let a = |j: usize| f64::from(d16[j / QS]) * f64::from(q[j]);
                    let exact: f64 = (0..cols).map(|j| f64::from(wr[j]) * a(j)).sum();
                    let mag: f64 = (0..cols).map(|j| (f64::from(wr[j].abs()) + m) * a(j).abs()).sum();
                    let tol = (cols as f64 / 128.0 + 8.0) * f64::from(f32::EPSILON) * mag + 2f64.powi(-140);
                    assert!(
                        (f64::from(v) - exact).abs() <= tol,
                        "{name} cols={cols} {kind} row {r}: {v:e} vs {exact:e} (tol {tol:e})"
                    );
                }
            }
        }
    }
    assert!(ran > 0);
}

#[test]
fn fused_kernels_give_the_bits_of_decode_then_dot() {
    // The fused kernels' contract: for the legacy types and iq4_nl the bits of dot_b32_ref
    // (mins included) at every ISA, and so of decode_row + dot_b32_x4; for int4 the bits of
    // decode_row + dot_q8_x4 at the same ISA. Either way batches of any size agree; and the
    // result is within the ISA tolerance of the reference.
    let mut ran = 0;
    for (ti, &name) in FUSED_TYPES.iter().enumerate() {
        let cols_list: &[usize] = match name {
            "q4_0" | "q4_1" | "q5_0" | "q5_1" | "q8_0" | "iq4_nl" => &[32, 64, 96, 160, 4096],
            // Whole groups, a shorter last group; 40 has no fused kernel (not a multiple of 32).
            n if n.starts_with("int4") => &[32, 128, 160, 4096, 4160, 40],
            _ => unreachable!(),
        };
        for &cols in cols_list {
            let (l, data) = weight(name, 4, cols, (ti * 1000 + cols) as u64);
            let b32 = k::is_b32(l.qtype);
            let rows: [&[u8]; 4] = std::array::from_fn(|r| &data[r * l.row_bytes..(r + 1) * l.row_bytes]);
            let (cp, nsub) = (padded(cols), padded(cols) / QS);
            for kind in ["normal", "zeros", "huge", "tiny", "mixed"] {
                let x = acts(kind, 1, cols, cols as u64 + 5);
                for isa in available().into_iter().filter(|&i| k::has_fused(i, l.qtype, l.affine, cols)) {
                    let (mut q, mut d16, mut s16) = (vec![0i8; cp], vec![0f32; nsub], vec![0f32; nsub]);
                    let mut b16 = vec![0i16; nsub];
                    let scale = k::quantize_act(isa, &x, QA, &mut q, &mut d16, &mut s16, &mut b16);
                    let act = k::ActRow { q: &q, d16: &d16, s16: &s16, b16: &b16, scale };
                    let got = k::dot_fused(isa, l.qtype, l.affine, cols, rows, act);
                    let dec: Vec<_> = rows
                        .iter()
                        .map(|src| {
                            let (mut c, mut s, mut m) = (vec![0i8; cp], vec![0f32; nsub], vec![0f32; nsub]);
                            k::decode_row(isa, l.qtype, l.affine, cols, src, &mut c, &mut s, &mut m);
                            (c, s, m)
                        })
                        .collect();
                    let (c4, s4) = (std::array::from_fn(|r| &dec[r].0[..]), std::array::from_fn(|r| &dec[r].1[..]));
                    let tag = format!("{name} cols={cols} {kind} {isa}");
                    if b32 {
                        let m4 = k::has_mins(l.qtype, None).then(|| std::array::from_fn(|r| &dec[r].2[..]));
                        assert_f32_bits_eq(&tag, &k::dot_b32_x4(isa, c4, s4, m4, act), &got);
                        let reference: Vec<f32> =
                            rows.iter().map(|src| k::dot_row_ref(l.qtype, l.affine, cols, src, act)).collect();
                        assert_f32_bits_eq(&format!("{tag} vs the reference"), &reference, &got);
                    } else {
                        assert_f32_bits_eq(&tag, &k::dot_q8_x4(isa, c4, s4, &q, &d16), &got);
                        for (r, src) in rows.iter().enumerate() {
                            let reference = k::dot_row_ref(l.qtype, l.affine, cols, src, act);
                            // Relative to the products' magnitudes (codes and steps as decoded).
                            let (c, sw, _) = &dec[r];
                            let mag: f64 = (0..cp)
                                .map(|j| {
                                    let a = f64::from(d16[j / QS]) * f64::from(q[j]).abs();
                                    (f64::from(sw[j / QS]) * f64::from(c[j])).abs() * a
                                })
                                .sum();
                            let tol = isa_tolerance(l.qtype, cols) * mag + 2f64.powi(-149);
                            assert!(
                                (f64::from(got[r]) - f64::from(reference)).abs() <= tol,
                                "{tag} row {r}: {} vs reference {reference:e} (tol {tol:e})",
                                got[r]
                            );
                        }
                    }
                    ran += 1;
                }
            }
        }
    }
    if Isa::Avx2.is_available() {
        assert!(ran > 0, "no fused kernel ran on an AVX2 host");
    } else {
        eprintln!("skipped: fused kernels (no AVX2 on this CPU)");
    }
}

/// Four decoded rows: codes, scales, mins.
type B32Rows = (Vec<Vec<i8>>, Vec<Vec<f32>>, Vec<Vec<f32>>);

/// Random decoded b32 rows: four rows of `len` codes (trial 0: all −128, the extreme that
/// saturates a careless `maddubs`), their per-16 scales and mins (equal in each half block, as
/// `decode_row` writes them; some zero, some negative, some huge or tiny).
fn b32_rows(r: &mut Rng, len: usize, trial: usize) -> B32Rows {
    let per_block = |r: &mut Rng, f: &dyn Fn(&mut Rng) -> f32| -> Vec<f32> {
        (0..len / QA).flat_map(|_| [f(r); 2]).collect::<Vec<f32>>()
    };
    let scale = |r: &mut Rng| match r.below(8) {
        0 => 0.0,
        1 => r.normal() * 1e30,
        2 => r.normal() * 1e-30,
        _ => r.normal() * 0.01,
    };
    let codes =
        (0..4).map(|_| (0..len).map(|_| if trial == 0 { -128 } else { r.next_u64() as i8 }).collect()).collect();
    let sw = (0..4).map(|_| per_block(r, &scale)).collect();
    let mw = (0..4).map(|_| per_block(r, &scale)).collect();
    (codes, sw, mw)
}

/// A random activation row of `len` values quantized in blocks of 32 (trial 0: ±127).
fn b32_act(r: &mut Rng, len: usize, trial: usize) -> (Vec<i8>, Vec<f32>, Vec<f32>, Vec<i16>) {
    let q: Vec<i8> =
        (0..len).map(|i| if trial == 0 { [127, -127][i % 2] } else { (r.below(255) as i32 - 127) as i8 }).collect();
    let d16: Vec<f32> = (0..len / QA).flat_map(|_| [r.uniform() * 0.01; 2]).collect();
    let b16: Vec<i16> = q.chunks_exact(QS).map(|c| c.iter().map(|&v| i16::from(v)).sum()).collect();
    let s16: Vec<f32> = b16.iter().zip(&d16).map(|(&b, &d)| d * f32::from(b)).collect();
    (q, d16, s16, b16)
}

#[test]
fn b32_dots_are_the_reference_bits_at_every_isa() {
    // The b32 contract (legacy types and iq4_nl): exact integer sums per block of 32, then the
    // reference's f32 steps, so every kernel (the decoded four-row dot at every ISA and every
    // variant, the outer products at AVX-512 VNNI) gives dot_b32_ref's bits, with and without
    // mins; and dot_b32_ref is within f32 rounding of the f64 dot.
    let mut r = Rng::new(17);
    let mut outer_ran = 0;
    for len in [32, 64, 96, 160, 4096] {
        for trial in 0..6 {
            let (codes, sw, mw) = b32_rows(&mut r, len, trial);
            let acts: Vec<_> = (0..k::LANES).map(|l| b32_act(&mut r, len, if l == 0 { trial } else { 1 })).collect();
            let act =
                |l: usize| k::ActRow { q: &acts[l].0, d16: &acts[l].1, s16: &acts[l].2, b16: &acts[l].3, scale: 1.0 };
            let c4: [&[i8]; 4] = std::array::from_fn(|j| &codes[j][..]);
            let s4: [&[f32]; 4] = std::array::from_fn(|j| &sw[j][..]);
            let m4: [&[f32]; 4] = std::array::from_fn(|j| &mw[j][..]);
            for mins in [None, Some(m4)] {
                let tag = format!("len={len} trial={trial} mins={}", mins.is_some());
                let want = |l: usize| -> Vec<f32> {
                    (0..4).map(|j| k::dot_b32_ref(c4[j], s4[j], mins.map(|m| m[j]), act(l))).collect()
                };
                for isa in available() {
                    assert_f32_bits_eq(&format!("{tag} {isa}"), &want(0), &k::dot_b32_x4(isa, c4, s4, mins, act(0)));
                }
                for (name, f) in k::dot_b32_variants() {
                    assert_f32_bits_eq(&format!("{tag} {name}"), &want(0), &f(c4, s4, mins, act(0)));
                }
                for isa in available().into_iter().filter(|&i| k::has_outer(i)) {
                    let tile_acts: [k::ActRow<'_>; k::LANES] = std::array::from_fn(act);
                    let (mut xt, mut c32, mut dx) =
                        (vec![0i8; k::LANES * len], vec![0i32; len / 2], vec![0f32; len / 2]);
                    k::pack_b32_tile(tile_acts, &mut xt, &mut c32, &mut dx);
                    let flipped: Vec<Vec<i8>> =
                        codes.iter().map(|w| w.iter().map(|&c| c ^ i8::MIN).collect()).collect();
                    let f4: [&[i8]; 4] = std::array::from_fn(|j| &flipped[j][..]);
                    let got = k::dot_b32_outer(isa, f4, s4, mins, k::B32Tile { xt: &xt, c32: &c32, dx: &dx });
                    for l in 0..k::LANES {
                        let got_l: Vec<f32> = got.iter().map(|g| g[l]).collect();
                        assert_f32_bits_eq(&format!("{tag} {isa} outer lane {l}"), &want(l), &got_l);
                    }
                    outer_ran += 1;
                }
                // The reference against the f64 dot: each block's f32 steps round a few times.
                for (j, &v) in want(0).iter().enumerate() {
                    let a = act(0);
                    let (mut exact, mut mag) = (0f64, 0f64);
                    for b in 0..len / QA {
                        let dx = f64::from(a.d16[2 * b]);
                        for (&c, &q) in codes[j][32 * b..32 * (b + 1)].iter().zip(&a.q[32 * b..32 * (b + 1)]) {
                            let w =
                                f64::from(sw[j][2 * b]) * f64::from(c) + mins.map_or(0.0, |m| f64::from(m[j][2 * b]));
                            exact += w * dx * f64::from(q);
                            mag += w.abs() * dx * f64::from(q).abs();
                        }
                    }
                    let tol = (len / QA * 6) as f64 * f64::from(f32::EPSILON) * mag + 2f64.powi(-140);
                    let ok = if v.is_finite() { (f64::from(v) - exact).abs() <= tol } else { mag > 1e37 };
                    assert!(ok, "{tag} row {j}: {v:e} vs f64 {exact:e} (tol {tol:e})");
                }
            }
        }
    }
    if outer_ran == 0 {
        eprintln!("b32_dots_are_the_reference_bits_at_every_isa: outer products skipped (no AVX-512 VNNI here)");
    }
}

#[test]
fn b32_types_give_the_same_bits_at_every_isa() {
    // A consequence of the b32 contract, through the whole matmul: a legacy or iq4_nl weight
    // gives the scalar level's bits at every ISA, for a token and for batches that take the
    // fused kernels (7), the decoded four-row dot and, at AVX-512 VNNI, the outer products (21).
    for (ti, &name) in ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl"].iter().enumerate() {
        let (rows, cols) = (9, 256 + 32 * ti);
        let (l, data) = weight(name, rows, cols, 300 + ti as u64);
        let w = QMatrix::new(l, &data, None, None).unwrap();
        for n in [1, 7, 21] {
            let x = acts("mixed", n, cols, 40 + ti as u64);
            let mut want = vec![0f32; n * rows];
            matmul(&w, &x, n, &mut want, Some(Isa::Scalar)).unwrap();
            for isa in available() {
                let mut got = vec![0f32; n * rows];
                matmul(&w, &x, n, &mut got, Some(isa)).unwrap();
                assert_f32_bits_eq(&format!("{name} n={n} {isa}"), &want, &got);
            }
        }
    }
}

#[test]
fn packing_round_trips_every_row() {
    // Rows 1 to 9 (partial last groups), blocks 1 to 5 per row (an odd last block): each
    // stored row comes back from the packed bytes, and a last group repeats its last row.
    use k::packed::{pack, packed_len, unpack_row, PACK_ROWS};
    for name in ["q4_0", "iq4_nl"] {
        for rows in 1..=9 {
            for nb in 1..=5 {
                let cols = 32 * nb;
                let (l, data) = weight(name, rows, cols, (rows * 10 + nb) as u64);
                let mut p = vec![0u8; packed_len(rows, l.row_bytes)];
                pack(l.qtype, rows, cols, &data, &mut p);
                let mut out = vec![0u8; l.row_bytes];
                for r in 0..rows.next_multiple_of(PACK_ROWS) {
                    unpack_row(cols, &p, r, &mut out);
                    let want = &data[r.min(rows - 1) * l.row_bytes..][..l.row_bytes];
                    assert_eq!(&out[..], want, "{name} rows={rows} cols={cols} row {r}");
                }
            }
        }
    }
}

#[test]
fn packed_weights_give_the_stored_bits_at_every_isa_and_batch() {
    // A packed q4_0 / iq4_nl weight (the packed GEMV at AVX-512 VNNI, rows unpacked into the
    // decoded tile elsewhere and for larger batches) gives the stored weight's bits, with and
    // without outliers, for single tokens, small batches, and batches that take the outer
    // products; matmul_reference reads it the same way.
    use k::packed::{pack, packed_len};
    for (ti, name) in ["q4_0", "iq4_nl"].into_iter().enumerate() {
        for (rows, cols) in [(9, 160), (16, 64), (5, 32), (13, 4096 + 32)] {
            let (l, data) = weight(name, rows, cols, (ti * 100 + rows) as u64);
            let mut p = vec![0u8; packed_len(rows, l.row_bytes)];
            pack(l.qtype, rows, cols, &data, &mut p);
            let (rp, oc, ov) = outlier_parts(rows, cols, 5 + ti as u64);
            for with_outliers in [false, true] {
                let o = with_outliers.then_some(Outliers { row_ptr: &rp, cols: &oc, vals: &ov });
                let plain = QMatrix::new(l, &data, None, o).unwrap();
                let packed = QMatrix::new_packed(l, &p, o).unwrap();
                assert!(packed.is_packed() && !plain.is_packed());
                for n in [1, 3, 12, 21] {
                    let x = acts("mixed", n, cols, 60 + n as u64);
                    for isa in available() {
                        let (mut want, mut got) = (vec![0f32; n * rows], vec![0f32; n * rows]);
                        matmul(&plain, &x, n, &mut want, Some(isa)).unwrap();
                        matmul(&packed, &x, n, &mut got, Some(isa)).unwrap();
                        let tag = format!("{name} {rows}×{cols} outliers={with_outliers} n={n} {isa}");
                        assert_f32_bits_eq(&tag, &want, &got);
                    }
                    let (mut want, mut got) = (vec![0f32; n * rows], vec![0f32; n * rows]);
                    matmul_reference(&plain, &x, n, &mut want).unwrap();
                    matmul_reference(&packed, &x, n, &mut got).unwrap();
                    assert_f32_bits_eq(&format!("{name} reference n={n}"), &want, &got);
                }
            }
        }
    }
    if !available().into_iter().any(k::packed::has_packed) {
        eprintln!(
            "packed_weights_give_the_stored_bits_at_every_isa_and_batch: packed kernel skipped (no AVX-512 VNNI)"
        );
    }
}

#[test]
fn packed_weights_refuse_bad_input() {
    let (l, data) = weight("q4_0", 5, 64, 1);
    let len = k::packed::packed_len(5, l.row_bytes);
    assert_eq!(len, 8 * l.row_bytes);
    // The stored bytes are not the packed length (5 rows, not 8).
    assert!(matches!(QMatrix::new_packed(l, &data, None), Err(Error::Shape(_))));
    let (l8, d8) = weight("q8_0", 4, 64, 2);
    assert!(matches!(QMatrix::new_packed(l8, &d8, None), Err(Error::InvalidParameter(_))));
    assert!(matches!(lowbit_core::matmul::pack_rows(&l8, &d8), Err(Error::InvalidParameter(_))));
    assert!(matches!(lowbit_core::matmul::pack_rows(&l, &data[1..]), Err(Error::Shape(_))));
    // (Empty weights have no layout: Layout::new refuses them.)
}

#[test]
fn f32_dots_agree_with_the_reference() {
    let mut r = Rng::new(4);
    for len in (0..70).chain([255, 4096]) {
        let a: Vec<f32> = (0..len).map(|_| r.normal()).collect();
        let b: Vec<f32> = (0..len).map(|_| r.normal()).collect();
        let want = k::dot_f32_ref(&a, &b);
        let mag: f64 = a.iter().zip(&b).map(|(x, y)| f64::from((x * y).abs())).sum();
        let mut got: Vec<(String, f32)> =
            simd_isas().into_iter().map(|isa| (isa.to_string(), k::dot_f32(isa, &a, &b))).collect();
        // The generic kernel at 4, 8 and 16 lanes (NEON's, AVX2's and AVX-512's shapes).
        got.push(("emu4".into(), k::dot_f32_simd(Emu::<4>, &a, &b)));
        got.push(("emu8".into(), k::dot_f32_simd(Emu::<8>, &a, &b)));
        got.push(("emu16".into(), k::dot_f32_simd(Emu::<16>, &a, &b)));
        for (isa, got) in got {
            let tol = k::dot_tolerance(len) * mag;
            assert!(f64::from((got - want).abs()) <= tol, "{isa} len={len}: {got:e} vs {want:e}");
        }
    }
}

#[test]
fn f32_4x2_dots_agree_with_the_reference() {
    let mut r = Rng::new(5);
    for len in (0..40).chain([255, 576, 4096]) {
        let mut vec = |scale: f32| -> Vec<f32> { (0..len).map(|_| r.normal() * scale).collect() };
        let a = [vec(1.0), vec(1e-3), vec(1e3), vec(0.0)];
        let b = [vec(1.0), vec(1e-20)];
        let (ar, br) = (a.each_ref().map(|v| &v[..]), b.each_ref().map(|v| &v[..]));
        let mut got: Vec<(String, [[f32; 2]; 4])> = std::iter::once(Isa::Scalar)
            .chain(simd_isas())
            .map(|isa| (isa.to_string(), k::dot_f32_4xc(isa, ar, br, 0)))
            .collect();
        got.push(("emu4".into(), k::dot_f32_4xc_simd(Emu::<4>, ar, br, 0)));
        got.push(("emu8".into(), k::dot_f32_4xc_simd(Emu::<8>, ar, br, 0)));
        got.push(("emu16".into(), k::dot_f32_4xc_simd(Emu::<16>, ar, br, 0)));
        // A prefetch far past the rows (a hint: it never faults) leaves the same bits, and so
        // does the number of activation rows per call (one, two or four).
        let b4 = [vec(1.0), vec(1e-20), vec(1e6), vec(0.0)];
        let b4r = b4.each_ref().map(|v| &v[..]);
        for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
            assert_eq!(k::dot_f32_4xc(isa, ar, br, 1 << 40), k::dot_f32_4xc(isa, ar, br, 0), "{isa} len={len}");
            let four = k::dot_f32_4xc(isa, ar, b4r, 0);
            let two = [k::dot_f32_4xc(isa, ar, [b4r[0], b4r[1]], 0), k::dot_f32_4xc(isa, ar, [b4r[2], b4r[3]], 0)];
            for (r, c) in (0..4).flat_map(|r| (0..4).map(move |c| (r, c))) {
                let one = k::dot_f32_4xc(isa, ar, [b4r[c]], 0)[r][0];
                assert_eq!(four[r][c].to_bits(), two[c / 2][r][c % 2].to_bits(), "{isa} len={len} ({r},{c})");
                assert_eq!(four[r][c].to_bits(), one.to_bits(), "{isa} len={len} ({r},{c})");
            }
        }
        for (isa, got) in got {
            for (i, j) in (0..4).flat_map(|i| (0..2).map(move |j| (i, j))) {
                let want = k::dot_f32_ref(ar[i], br[j]);
                let mag: f64 = ar[i].iter().zip(br[j]).map(|(x, y)| f64::from((x * y).abs())).sum();
                let tol = if isa == "scalar" { 0.0 } else { k::dot_tolerance(len) * mag };
                let g = got[i][j];
                assert!(f64::from((g - want).abs()) <= tol, "{isa} len={len} ({i},{j}): {g:e} vs {want:e}");
            }
        }
    }
}

/// A random act-order permutation of `0..cols` (LE bytes).
fn perm_bytes(cols: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut p: Vec<u32> = (0..cols as u32).collect();
    for i in (1..cols).rev() {
        p.swap(i, r.below(i + 1));
    }
    p.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Random CSR outliers (about one per 16 columns, none in row 0), as LE byte parts.
fn outlier_parts(rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut r = Rng::new(seed);
    let (mut ptr, mut cs, mut vs) = (vec![0u64], vec![], vec![]);
    for row in 0..rows {
        for c in 0..cols {
            if row > 0 && r.below(16) == 0 {
                cs.push(c as u32);
                vs.push(half::f16::from_f32(r.normal()).to_bits());
            }
        }
        ptr.push(cs.len() as u64);
    }
    let le = |v: &[u8]| v.to_vec();
    (
        le(&ptr.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()),
        cs.iter().flat_map(|v| v.to_le_bytes()).collect(),
        vs.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

/// The dense f64 weight the reference multiplies (dequantized stored rows plus outliers) and,
/// per output, the bound of `matmul` vs `matmul_reference`:
/// * activation quantization: `Σ_j |w_j| · δ_j` with `δ_j` the bound of the activation test
///   (half a step of x_j's 32-value block, or the flush floor);
/// * f32 rounding: `(terms + 64) · ε · Σ_j (|w_j| + 2·M·[mins]) · (|x_j| + δ_j)` where `terms` is
///   the number of f32 operations per output (one per 4 values plus one per 16, bounded by
///   `cols`), and, for types with mins (where `sw·code` and `mw` are summed separately and may
///   cancel), `M` is the row's largest |w| (`|sw·code| + |mw| <= 3M` when a sub-block holds
///   code 0, as every quantizer here makes it);
/// * the result rounded to f32 (and subnormal results): `2^-24·|y| + 2^-149`.
///
/// Also returns, per output, the magnitude sum `Σ (|w_j| + 2M) · (|x_j| + δ_j)` that
/// `isa_tolerance` is relative to.
fn bounds(w: &QMatrix<'_>, x: &[f32], n: usize, y_ref: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let l = *w.layout();
    let (rows, cols) = (l.rows, l.cols);
    let data: Vec<u8> = (0..rows).flat_map(|r| w.row(r).to_vec()).collect();
    let mut dense: Vec<f64> = dequantize(&l, &data, Some(Isa::Scalar)).unwrap().into_iter().map(f64::from).collect();
    if let Some(o) = w.outliers() {
        for r in 0..rows {
            for kk in o.ptr(r)..o.ptr(r + 1) {
                let (c, v) = o.entry(kk);
                dense[r * cols + c] += f64::from(v);
            }
        }
    }
    let quantized = l.qtype.info().family != lowbit_core::qtype::Family::Float;
    let mins = k::has_mins(l.qtype, l.affine);
    let mut out = vec![0f64; n * rows];
    let mut mags = vec![0f64; n * rows];
    for i in 0..n {
        let xg: Vec<f32> = (0..cols).map(|j| x[i * cols + w.perm_at(j)]).collect();
        let amax_row = xg.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
        let floor = if amax_row > 0.0 { 2f64.powi(amax_row.log2().floor() as i32 - 118) } else { 0.0 };
        let delta: Vec<f64> = (0..cols)
            .map(|j| {
                if !quantized {
                    return 0.0;
                }
                let bs = k::act_block(l.qtype);
                let b = j / bs;
                let blk = &xg[b * bs..((b + 1) * bs).min(cols)];
                let amax = blk.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
                amax / 127.0 * (0.5 + 2f64.powi(-10)) + floor
            })
            .collect();
        for r in 0..rows {
            let wr = &dense[r * cols..(r + 1) * cols];
            let m = if mins { 2.0 * wr.iter().fold(0f64, |a, v| a.max(v.abs())) } else { 0.0 };
            let act: f64 = wr.iter().zip(&delta).map(|(w, d)| w.abs() * d).sum();
            let mag: f64 =
                wr.iter().zip(&xg).zip(&delta).map(|((w, x), d)| (w.abs() + m) * (f64::from(x.abs()) + d)).sum();
            let y = f64::from(y_ref[i * rows + r]).abs();
            out[i * rows + r] =
                act + (cols as f64 + 64.0) * f64::from(f32::EPSILON) * mag + y * 2f64.powi(-24) + 2f64.powi(-149);
            mags[i * rows + r] = mag;
        }
    }
    (out, mags)
}

/// Check `matmul` at every ISA against the reference (bound above) and against Scalar
/// (`isa_tolerance`).
fn check(name: &str, w: &QMatrix<'_>, x: &[f32], n: usize, tag: &str) {
    let rows = w.layout().rows;
    let mut y_ref = vec![0f32; n * rows];
    matmul_reference(w, x, n, &mut y_ref).unwrap();
    let (bound, mag) = bounds(w, x, n, &y_ref);
    let mut y_scalar = vec![0f32; n * rows];
    matmul(w, x, n, &mut y_scalar, Some(Isa::Scalar)).unwrap();
    for isa in available() {
        let mut y = vec![f32::NAN; n * rows];
        matmul(w, x, n, &mut y, Some(isa)).unwrap();
        for idx in 0..n * rows {
            let err = (f64::from(y[idx]) - f64::from(y_ref[idx])).abs();
            assert!(
                err <= bound[idx],
                "{name} {tag} {isa} [{}, {}]: {:e} vs reference {:e} (bound {:e})",
                idx / rows,
                idx % rows,
                y[idx],
                y_ref[idx],
                bound[idx]
            );
            // Between ISAs only the order of f32 additions differs.
            // (The final f32 rounding of each side adds 2^-24 |y| each, and subnormal results
            // 2^-149.)
            let y_abs = f64::from(y_scalar[idx].abs());
            let tol =
                isa_tolerance(w.layout().qtype, w.layout().cols) * mag[idx] + y_abs * 2f64.powi(-23) + 2f64.powi(-148);
            let diff = (f64::from(y[idx]) - f64::from(y_scalar[idx])).abs();
            if isa_tolerance(w.layout().qtype, w.layout().cols) == 0.0 {
                // The k-quants: the same bits at every ISA.
                assert_eq!(y[idx].to_bits(), y_scalar[idx].to_bits(), "{name} {tag} {isa} vs scalar [{idx}]");
            }
            assert!(
                diff <= tol,
                "{name} {tag} {isa} vs scalar [{idx}]: {:e} vs {:e} (tol {tol:e})",
                y[idx],
                y_scalar[idx]
            );
        }
    }
}

#[test]
fn matmul_matches_the_reference_on_odd_shapes() {
    for (ti, &name) in QUANT_TYPES.iter().chain(FLOAT_TYPES).enumerate() {
        let bs = block_of(name);
        let mut col_list = vec![bs, 2 * bs, 3 * bs];
        if bs == 8 {
            col_list.extend([40, 72, 136, 264]);
        } else if bs == 16 {
            col_list.extend([272, 528]);
        } else if bs == 32 {
            col_list.extend([160, 224]);
        } else if name.ends_with("_kr") {
            col_list = vec![1, 40, 288, 576, 600, 1000];
        } else if bs == 1 {
            col_list.extend([7, 33, 100]);
        }
        for (ci, &cols) in col_list.iter().enumerate() {
            for (ri, rows) in [1usize, 2, 3, 17, 67].into_iter().enumerate() {
                let seed = (ti * 100 + ci * 10 + ri) as u64;
                let (l, data) = weight(name, rows, cols, seed);
                let w = QMatrix::new(l, &data, None, None).unwrap();
                let n = [1, 2, 3, 17, 64][(ci + ri) % 5];
                let x = acts("normal", n, cols, seed + 7);
                check(name, &w, &x, n, &format!("{rows}x{cols} n={n}"));
            }
        }
    }
}

#[test]
fn matmul_handles_extreme_activations() {
    for &name in QUANT_TYPES.iter().chain(FLOAT_TYPES) {
        let cols = 256;
        let (l, data) = weight(name, 9, cols, 11);
        let w = QMatrix::new(l, &data, None, None).unwrap();
        for kind in ["zeros", "huge", "tiny", "mixed"] {
            let x = acts(kind, 3, cols, 12);
            check(name, &w, &x, 3, kind);
            if kind == "zeros" {
                let mut y = vec![1f32; 27];
                matmul(&w, &x, 3, &mut y, None).unwrap();
                assert!(y.iter().all(|&v| v == 0.0), "{name}: zero input gives {y:?}");
            }
        }
    }
}

#[test]
fn matmul_with_permutation_and_outliers() {
    for &name in &["int4-g128", "int3-g32-sym", "int8-g64", "int2-row", "q4_k", "q8_0", "f16"] {
        for (rows, cols, n) in [(5, 256, 1), (17, 136, 3), (3, 512, 17)] {
            if cols % block_of(name) != 0 {
                continue;
            }
            let (l, data) = weight(name, rows, cols, 21);
            let perm = name.starts_with("int").then(|| perm_bytes(cols, 22));
            let (rp, oc, ov) = outlier_parts(rows, cols, 23);
            let o = Outliers { row_ptr: &rp, cols: &oc, vals: &ov };
            let x = acts("normal", n, cols, 24);
            for (p, out) in [(perm.as_deref(), None), (None, Some(o)), (perm.as_deref(), Some(o))] {
                let w = QMatrix::new(l, &data, p, out).unwrap();
                check(name, &w, &x, n, &format!("{rows}x{cols} perm={} outliers={}", p.is_some(), out.is_some()));
            }
        }
    }
}

/// Structured CSR outliers: none in row 0, every third column of row 1, the last two (tail)
/// columns of row 2, 4 hot columns in about half of the other rows, and 2 % uniform.
fn structured_outliers(rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut r = Rng::new(seed);
    let hot: Vec<usize> = (0..4).map(|_| r.below(cols)).collect();
    let (mut ptr, mut cs, mut vs) = (vec![0u64], vec![], vec![]);
    for row in 0..rows {
        let in_hot = r.below(2) == 0;
        for c in 0..cols {
            let keep = match row {
                0 => false,
                1 => c % 3 == 0,
                2 => c + 2 >= cols,
                _ => (in_hot && hot.contains(&c)) || r.below(50) == 0,
            };
            if keep {
                cs.push(c as u32);
                vs.push(half::f16::from_f32(r.normal() * 0.5).to_bits());
            }
        }
        ptr.push(cs.len() as u64);
    }
    (
        ptr.iter().flat_map(|v| v.to_le_bytes()).collect(),
        cs.iter().flat_map(|v| v.to_le_bytes()).collect(),
        vs.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

#[test]
fn outliers_at_every_isa_and_every_batch_size() {
    // Rows: two tiles. Columns: with a tail past the last full 32-value block where the type allows.
    let rows = 70;
    for (name, cols, act_order) in [
        ("q4_0", 288, false),
        ("q4_k", 512, false),
        ("q8_0", 288, false),
        ("int4-g128", 264, true),
        ("int3-g128", 264, true),
        ("f32", 263, false),
        ("f16", 263, false),
    ] {
        let (l, data) = weight(name, rows, cols, 41);
        let perm = act_order.then(|| perm_bytes(cols, 42));
        let (rp, oc, ov) = structured_outliers(rows, cols, 43);
        let o = Outliers { row_ptr: &rp, cols: &oc, vals: &ov };
        let w = QMatrix::new(l, &data, perm.as_deref(), Some(o)).unwrap();
        // The dense equivalent, independently: dequantize(W) + outliers, input column order.
        let mut dense: Vec<f64> =
            dequantize(&l, &data, Some(Isa::Scalar)).unwrap().into_iter().map(f64::from).collect();
        for r in 0..rows {
            for kk in o.ptr(r)..o.ptr(r + 1) {
                let (c, v) = o.entry(kk);
                dense[r * cols + c] += f64::from(v);
            }
        }
        let x = acts("normal", 64, cols, 44);
        for n in [1, 2, 3, 5, 64] {
            let tag = format!("{rows}x{cols} n={n}");
            let x = &x[..n * cols];
            let mut y_ref = vec![0f32; n * rows];
            matmul_reference(&w, x, n, &mut y_ref).unwrap();
            for (idx, &yr) in y_ref.iter().enumerate() {
                let (i, r) = (idx / rows, idx % rows);
                let (mut exact, mut mag) = (0f64, 0f64);
                for j in 0..cols {
                    let p = dense[r * cols + j] * f64::from(x[i * cols + w.perm_at(j)]);
                    exact += p;
                    mag += p.abs();
                }
                // The reference rounds the result to f32 and each weight plus outlier to f32.
                let tol = f64::from(yr).abs() * 2f64.powi(-24)
                    + mag * (2f64.powi(-24) + cols as f64 * 2f64.powi(-52))
                    + 2f64.powi(-149);
                assert!((f64::from(yr) - exact).abs() <= tol, "{name} {tag} [{i}, {r}]: {yr:e} vs {exact:e}");
            }
            check(name, &w, x, n, &tag);
        }
        // A token's outputs do not depend on the batch it is in: small batches gather the
        // outliers' activations, large ones run axpys over the transposed batch, same bits.
        for isa in available() {
            let mut batch = vec![0f32; 64 * rows];
            matmul(&w, &x, 64, &mut batch, Some(isa)).unwrap();
            for i in [0, 5, 31, 63] {
                let mut one = vec![0f32; rows];
                matmul(&w, &x[i * cols..(i + 1) * cols], 1, &mut one, Some(isa)).unwrap();
                assert_f32_bits_eq(&format!("{name} {isa} token {i}"), &one, &batch[i * rows..(i + 1) * rows]);
            }
        }
    }
}

#[test]
fn matmul_rejects_bad_input() {
    let (l, data) = weight("q4_0", 4, 64, 1);
    let w = QMatrix::new(l, &data, None, None).unwrap();
    let mut y = vec![0f32; 4];
    let mut x = vec![0.5f32; 64];
    x[37] = f32::NAN;
    match matmul(&w, &x, 1, &mut y, None) {
        Err(Error::BadValue { index: 37, row: 0, col: 37, .. }) => {}
        other => panic!("NaN: {other:?}"),
    }
    x[37] = f32::INFINITY;
    assert!(matches!(matmul(&w, &x, 1, &mut y, None), Err(Error::BadValue { index: 37, .. })));
    // Anywhere in a long batch (the check runs in chunks of 1024 values), the first one counts;
    // the largest finite value and subnormals pass.
    let mut y40 = vec![0f32; 40 * 4];
    for (at, bad) in [(0, f32::NAN), (1023, f32::NEG_INFINITY), (1024, f32::INFINITY), (2559, -f32::NAN)] {
        let mut x = vec![f32::MAX; 40 * 64];
        x[5] = 1e-45;
        x[at] = bad;
        x[2559] = if at == 2559 { bad } else { f32::NAN };
        let first = at.min(2559);
        match matmul(&w, &x, 40, &mut y40, None) {
            Err(Error::BadValue { index, .. }) if index == first => {}
            other => panic!("{bad} at {at}: {other:?}"),
        }
    }
    let mut x = vec![f32::MAX; 40 * 64];
    x[5] = -1e-45;
    assert!(matmul(&w, &x, 40, &mut y40, None).is_ok());
    assert!(matches!(matmul(&w, &x[..63], 1, &mut y, None), Err(Error::Shape(_))));
    assert!(matches!(matmul(&w, &vec![0.0; 128], 2, &mut y, None), Err(Error::Shape(_))));
    for isa in Isa::ALL {
        if !isa.is_available() {
            assert!(matches!(matmul(&w, &vec![0.0; 64], 1, &mut y, Some(isa)), Err(Error::Isa(_))));
        }
    }
}

#[test]
fn an_empty_batch_is_a_no_op() {
    for name in QUANT_TYPES.iter().chain(FLOAT_TYPES) {
        let (l, data) = weight(name, 5, 256, 2);
        let w = QMatrix::new(l, &data, None, None).unwrap();
        for isa in available() {
            matmul(&w, &[], 0, &mut [], Some(isa)).unwrap_or_else(|e| panic!("{name} {isa}: {e}"));
        }
        matmul_reference(&w, &[], 0, &mut []).unwrap();
    }
}

#[test]
fn concurrent_calls_inside_rayon_tasks_and_threads_agree() {
    let (rows, cols, n) = (256, 1024, 3);
    let (l, data) = weight("q4_k", rows, cols, 31);
    let w = QMatrix::new(l, &data, None, None).unwrap();
    let x = acts("normal", n, cols, 32);
    let mut want = vec![0f32; n * rows];
    matmul(&w, &x, n, &mut want, None).unwrap();
    let results: Vec<Vec<f32>> = (0..16)
        .into_par_iter()
        .map(|_| {
            let mut y = vec![0f32; n * rows];
            matmul(&w, &x, n, &mut y, None).unwrap();
            y
        })
        .collect();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut y = vec![0f32; n * rows];
                    for _ in 0..4 {
                        matmul(&w, &x, n, &mut y, None).unwrap();
                    }
                    y
                })
            })
            .collect();
        for h in hs {
            assert_f32_bits_eq("thread", &want, &h.join().unwrap());
        }
    });
    for y in results {
        assert_f32_bits_eq("rayon task", &want, &y);
    }
}

#[test]
fn f32_weights_give_the_same_bits_stored_aligned_or_not() {
    // Aligned f32 rows are multiplied where they are stored; misaligned ones are copied first.
    // Both paths must give the same bits, at every ISA, for a token and for a batch.
    let (rows, cols) = (13, 200);
    let (l, data) = weight("f32", rows, cols, 77);
    let mut shifted = vec![0u8; data.len() + 1];
    shifted[1..].copy_from_slice(&data);
    let aligned = QMatrix::new(l, &data, None, None).unwrap();
    let misaligned = QMatrix::new(l, &shifted[1..], None, None).unwrap();
    assert_ne!(data.as_ptr() as usize % 4, shifted[1..].as_ptr() as usize % 4);
    for n in [1, 5] {
        let x = acts("normal", n, cols, 3);
        for isa in available() {
            let (mut a, mut b) = (vec![0f32; n * rows], vec![1f32; n * rows]);
            matmul(&aligned, &x, n, &mut a, Some(isa)).unwrap();
            matmul(&misaligned, &x, n, &mut b, Some(isa)).unwrap();
            assert_f32_bits_eq(&format!("f32 n={n} {isa}"), &a, &b);
        }
    }
}
