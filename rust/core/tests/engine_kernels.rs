//! The attention kernel (`simd::attn`): every ISA and the emulated widths against the scalar
//! reference, over head sizes with and without column tails, one to many keys, and scores that
//! range from flat to one-hot.

mod common;

use common::{simd_isas, Rng};
use lowbit_core::simd::emu::Emu;
use lowbit_core::simd::engine::{attend, attend_ref, attend_simd};
use lowbit_core::simd::Isa;

/// `(q, k, v)` for `n` keys of `hd` values; `spread` scales the queries (large: near one-hot).
fn case(r: &mut Rng, hd: usize, n: usize, spread: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut vec = |len: usize, s: f32| -> Vec<f32> { (0..len).map(|_| r.normal() * s).collect() };
    (vec(hd, spread), vec(n * hd, 1.0), vec(n * hd, 1.0))
}

#[test]
fn every_level_agrees_with_the_reference() {
    let mut r = Rng::new(11);
    for hd in [1, 3, 8, 15, 16, 17, 40, 64, 80, 128] {
        for n in [1, 2, 3, 4, 5, 7, 8, 9, 33, 200] {
            for spread in [0.0, 0.1, 1.0, 30.0] {
                let (q, k, v) = case(&mut r, hd, n, spread);
                let scale = 1.0 / (hd as f32).sqrt();
                let mut sc = vec![0f32; n];
                let mut want = vec![0f32; hd];
                attend_ref(&q, &k, &v, scale, &mut sc, &mut want);
                // The output is a convex combination of the values: within their range.
                let vmax = v.iter().fold(0f32, |a, &b| a.max(b.abs()));
                assert!(want.iter().all(|x| x.abs() <= vmax * (1.0 + 1e-6)), "hd={hd} n={n}: {want:?}");
                let mut got: Vec<(String, Vec<f32>)> = Vec::new();
                for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
                    let mut out = vec![f32::NAN; hd];
                    attend(isa, &q, &k, &v, scale, &mut sc, &mut out);
                    got.push((isa.to_string(), out));
                }
                let mut emu = |name: &str, f: &dyn Fn(&mut [f32], &mut [f32])| {
                    let mut out = vec![f32::NAN; hd];
                    f(&mut sc, &mut out);
                    got.push((name.into(), out));
                };
                emu("emu4", &|s, o| attend_simd(Emu::<4>, &q, &k, &v, scale, s, o));
                emu("emu8", &|s, o| attend_simd(Emu::<8>, &q, &k, &v, scale, s, o));
                emu("emu16", &|s, o| attend_simd(Emu::<16>, &q, &k, &v, scale, s, o));
                for (name, out) in got {
                    let tol = if name == "scalar" { 0.0 } else { 2e-5 * vmax };
                    for (j, (&g, &w)) in out.iter().zip(&want).enumerate() {
                        assert!((g - w).abs() <= tol, "{name} hd={hd} n={n} spread={spread} [{j}]: {g} vs {w}");
                    }
                }
            }
        }
    }
}

#[test]
fn one_key_gives_its_value_exactly() {
    let mut r = Rng::new(12);
    for hd in [1, 16, 17, 64] {
        let (q, k, v) = case(&mut r, hd, 1, 1.0);
        for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
            let mut out = vec![0f32; hd];
            attend(isa, &q, &k, &v, 0.125, &mut [0.0], &mut out);
            assert_eq!(out, v, "{isa} hd={hd}");
        }
    }
}

#[test]
#[should_panic(expected = "attention shapes")]
fn mismatched_shapes_panic() {
    attend(Isa::Scalar, &[0.0; 4], &[0.0; 8], &[0.0; 4], 1.0, &mut [0.0; 2], &mut [0.0; 4]);
}

#[test]
fn swiglu_agrees_with_the_reference_at_every_level() {
    use lowbit_core::simd::engine::{swiglu, swiglu_ref, swiglu_simd};
    let mut r = Rng::new(13);
    for len in (0..40).chain([255, 1536]) {
        let scale = [1.0, 10.0, 100.0][len % 3];
        let g: Vec<f32> = (0..len).map(|i| if i % 7 == 0 { 0.0 } else { r.normal() * scale }).collect();
        let u: Vec<f32> = (0..len).map(|_| r.normal()).collect();
        let mut want = g.clone();
        swiglu_ref(&mut want, &u);
        let mut got: Vec<(String, Vec<f32>)> = Vec::new();
        for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
            let mut out = g.clone();
            swiglu(isa, &mut out, &u);
            got.push((isa.to_string(), out));
        }
        fn emulated<S: lowbit_core::simd::vocab::Simd>(s: S, g: &[f32], u: &[f32]) -> Vec<f32> {
            let mut out = g.to_vec();
            swiglu_simd(s, &mut out, u);
            out
        }
        got.push(("emu4".into(), emulated(Emu::<4>, &g, &u)));
        got.push(("emu8".into(), emulated(Emu::<8>, &g, &u)));
        got.push(("emu16".into(), emulated(Emu::<16>, &g, &u)));
        for (name, out) in got {
            for (j, (&o, &w)) in out.iter().zip(&want).enumerate() {
                let tol = if name == "scalar" { 0.0 } else { 1e-6 * w.abs() + 1e-30 };
                assert!((o - w).abs() <= tol, "{name} len={len} [{j}]: {o} vs {w} (g={})", g[j]);
            }
        }
    }
}
