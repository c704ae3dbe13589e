//! The scale searches of ggml's k-quants (llama.cpp `ggml/src/ggml-quants.c`: `make_qkx2_quants`,
//! `make_qkx3_quants`, `make_qx_quants`, `make_q3_quants`, `make_qp_quants`), plus our
//! refinement of the quantized sub-block scales. Plain scalar code, with ggml's constants and
//! operation order (left to right, no fused multiply-add), working on normalised values (see the
//! module docs of `blocks::kquants`). Codes are carried as integral f32 values. The loops
//! index like ggml's C code, on purpose, so the operation order is easy to compare.
#![allow(clippy::needless_range_loop)]

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below it is all zero. Callers
/// scale it by the super-block's normalisation factor (see [`eps_for`]).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Smallest range (max − min) the affine search divides by: 2^-100. Below it a sub-block is
/// constant (ggml: only when max == min exactly) and a candidate is skipped. Normalised values
/// are below 2 in magnitude, so 40 / RANGE_EPS × 4 is far from f32 overflow.
pub(crate) const RANGE_EPS: f32 = 7.888_609_e-31;

/// ggml's `GROUP_MAX_EPS` in the normalised domain of a super-block scaled by `s`, floored at
/// [`RANGE_EPS`] so that no search divides by less.
pub(crate) fn eps_for(s: f32) -> f32 {
    let e = GROUP_MAX_EPS * s;
    if e > RANGE_EPS {
        e
    } else {
        RANGE_EPS
    }
}

/// Round half to even, exactly `f32::round_ties_even`, without the libm call that the latter
/// compiles to on baseline x86-64: below 2^23 in magnitude, adding and subtracting 2^23 rounds
/// to an integer (ties to even, the addition's rounding) exactly; from 2^23 on every f32 is an
/// integer already (or infinite).
#[inline]
pub(crate) fn round_even(v: f32) -> f32 {
    const TWO23: f32 = 8_388_608.0;
    let a = v.abs();
    if a < TWO23 {
        ((a + TWO23) - TWO23).copysign(v)
    } else {
        v
    }
}

/// ggml's `nearest_int` (round half to even) of a value, as f32, then clamped to `[lo, hi]`,
/// with −0 turned into +0 (ggml carries codes as integers).
#[inline]
pub(crate) fn code(v: f32, lo: f32, hi: f32) -> f32 {
    let r = round_even(v);
    let r = if r < lo {
        lo
    } else if r > hi {
        hi
    } else {
        r
    };
    r + 0.0
}

/// Parameters of the affine (scale + min) search.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Qkx {
    /// Largest code (3, 15, 31).
    pub nmax: f32,
    /// First candidate offset of the inverse-scale numerator.
    pub rmin: f32,
    /// Candidate step.
    pub rdelta: f32,
    /// Candidates are `is = 0..=nstep`.
    pub nstep: i32,
    /// Error is Σ w·|diff| (else Σ w·diff²).
    pub use_mad: bool,
}

/// Result of the affine search of one sub-block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QkxOut {
    /// The scale (≥ 0 on ordinary data).
    pub scale: f32,
    /// The min to subtract (`the_min` = −min, ≥ 0).
    pub the_min: f32,
}

/// Affine search of ggml's `make_qkx2_quants` / `make_qkx3_quants` (the two agree on finite
/// values): min/max, an initial grid fit, then `nstep + 1` candidate inverse scales
/// `(rmin + rdelta·is + nmax) / (max − min)`, each followed by a weighted least-squares refit
/// of scale and min (min clamped to ≤ 0); the candidate with the smallest weighted error wins.
/// As in ggml, a better candidate's min replaces `min` for the following candidates. Writes the
/// codes (0..=nmax) to `l`.
pub(crate) fn make_qkx(x: &[f32], w: &[f32], p: &Qkx, l: &mut [f32]) -> QkxOut {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max - min <= RANGE_EPS {
        l[..n].fill(0.0);
        return QkxOut { scale: 0.0, the_min: -min };
    }
    let err = |diff: f32| if p.use_mad { diff.abs() } else { diff * diff };
    let mut iscale = p.nmax / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        l[i] = code(iscale * (x[i] - min), 0.0, p.nmax);
        best_error += w[i] * err(scale * l[i] + min - x[i]);
    }
    let mut laux = [0f32; 32];
    for is in 0..=p.nstep {
        let range = max - min;
        if range <= RANGE_EPS {
            continue;
        }
        iscale = (p.rmin + p.rdelta * is as f32 + p.nmax) / range;
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let li = code(iscale * (x[i] - min), 0.0, p.nmax);
            laux[i] = li;
            sum_l += w[i] * li;
            sum_l2 += w[i] * li * li;
            sum_xl += w[i] * li * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                cur_error += w[i] * err(this_scale * laux[i] + this_min - x[i]);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    QkxOut { scale, the_min: -min }
}

/// The value of largest magnitude (the first one on ties) and that magnitude.
fn signed_amax(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

/// Symmetric search of ggml's `make_qx_quants` with `rmse_type = 1`: codes in
/// `-nmax..nmax`, weights `w` (or `x²`), the least-squares scale of the initial grid
/// `-nmax / max` and of 18 more candidates `-(nmax + 0.1·is) / max`, keeping the one with the
/// largest `sumlx² / suml2`. Writes codes + nmax (0..2·nmax) to `l`; returns the scale.
pub(crate) fn make_qx(x: &[f32], nmax: i32, w: Option<&[f32]>, eps: f32, l: &mut [f32]) -> f32 {
    let n = x.len();
    let (max, amax) = signed_amax(x);
    if amax < eps {
        l[..n].fill(0.0);
        return 0.0;
    }
    let nm = nmax as f32;
    let weight = |i: usize| match w {
        Some(w) => w[i],
        None => x[i] * x[i],
    };
    let mut iscale = -nm / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..n {
        let li = code(iscale * x[i], -nm, nm - 1.0);
        l[i] = li + nm;
        let wi = weight(i);
        sumlx += wi * x[i] * li;
        suml2 += wi * li * li;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nm + 0.1 * is as f32) / max;
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for i in 0..n {
            let li = code(iscale * x[i], -nm, nm - 1.0);
            let wi = weight(i);
            sumlx += wi * x[i] * li;
            suml2 += wi * li * li;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                l[i] = code(iscale * x[i], -nm, nm - 1.0) + nm;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_q3_quants` with `do_rmse`: codes in `-nmax..nmax` from the grid `-nmax / max`,
/// then up to 5 passes of coordinate descent on the weighted (w = x²) least-squares objective
/// `sumlx² / suml2`, stopping after a pass that changes nothing. Writes codes + nmax to `l`
/// (zeros for an all-zero group); returns the scale.
pub(crate) fn make_q3(x: &[f32], nmax: i32, eps: f32, l: &mut [f32]) -> f32 {
    let n = x.len();
    let (max, amax) = signed_amax(x);
    if amax < eps {
        l[..n].fill(0.0);
        return 0.0;
    }
    let nm = nmax as f32;
    let iscale = -nm / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..n {
        let li = code(iscale * x[i], -nm, nm - 1.0);
        l[i] = li;
        let w = x[i] * x[i];
        sumlx += w * x[i] * li;
        suml2 += w * li * li;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..n {
            let w = x[i] * x[i];
            let mut slx = sumlx - w * x[i] * l[i];
            if slx > 0.0 {
                let mut sl2 = suml2 - w * l[i] * l[i];
                let new_l = code(x[i] * sl2 / slx, -nm, nm - 1.0);
                if new_l != l[i] {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for li in &mut l[..n] {
        *li += nm;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// ggml's `make_qp_quants`: quantize non-negative values `x` (sub-block scales or mins) to
/// codes `0..=nmax` with one scale, weighted by `w`: the best of 9 grid candidates
/// `(nmax + 0.1·is) / max` by weighted squared error, then up to 5 passes of coordinate descent
/// on `sumlx² / suml2`. Writes the codes to `l`; returns the scale (the super-block scale).
/// Codes are clamped to `0..=nmax` (ggml: only from above).
pub(crate) fn make_qp(x: &[f32], nmax: i32, w: &[f32], eps: f32, l: &mut [f32]) -> f32 {
    let n = x.len();
    let nm = nmax as f32;
    let mut max = 0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < eps {
        l[..n].fill(0.0);
        return 0.0;
    }
    let mut iscale = nm / max;
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..n {
        let li = code(iscale * x[i], 0.0, nm);
        let diff = x[i] - scale * li;
        best_mse += w[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nm) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..n {
            let li = code(iscale_is * x[i], 0.0, nm);
            let diff = x[i] - scale_is * li;
            mse += w[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..n {
        let li = code(iscale * x[i], 0.0, nm);
        l[i] = li;
        sumlx += w[i] * x[i] * li;
        suml2 += w[i] * li * li;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..n {
            let mut slx = sumlx - w[i] * x[i] * l[i];
            let mut sl2 = suml2 - w[i] * l[i] * l[i];
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = code(x[i] * sl2 / slx, 0.0, nm);
                if new_l != l[i] {
                    slx += w[i] * x[i] * new_l;
                    sl2 += w[i] * new_l * new_l;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Squared error of one sub-block of an affine type (scale `d`, min `m`, codes `0..=qmax`)
/// when its values are re-quantized the way the final codes are: `nearest((x + m) / d)`
/// (any code when `d == 0`). Σ e² or Σ w·e², in order, with e = (d·q − m) − x.
pub(crate) fn affine_error(x: &[f32], ew: Option<&[f32]>, d: f32, m: f32, qmax: f32) -> f32 {
    let dsafe = if d == 0.0 { 1.0 } else { d };
    let mut err = 0f32;
    for (i, &v) in x.iter().enumerate() {
        let q = code((v + m) / dsafe, 0.0, qmax);
        let e = d * q - m - v;
        err += match ew {
            Some(w) => w[i] * (e * e),
            None => e * e,
        };
    }
    err
}

/// Squared error of one sub-block of a symmetric type (scale `d`, codes `qlo..=qhi`), the
/// values re-quantized as `nearest(x / d)`. Σ e² or Σ w·e², with e = d·q − x.
pub(crate) fn symmetric_error(x: &[f32], ew: Option<&[f32]>, d: f32, qlo: f32, qhi: f32) -> f32 {
    let dsafe = if d == 0.0 { 1.0 } else { d };
    let mut err = 0f32;
    for (i, &v) in x.iter().enumerate() {
        let q = code(v / dsafe, qlo, qhi);
        let e = d * q - v;
        err += match ew {
            Some(w) => w[i] * (e * e),
            None => e * e,
        };
    }
    err
}

/// Refinement of one affine sub-block: among the integer (scale, min) pairs within one step
/// of `(ls, lm)` (clamped to `0..=smax`), the one with the smallest [`affine_error`] with the
/// super-block scales `dn`, `mn`; ties keep the earlier, `(ls, lm)` first. Candidates are
/// visited in the order (−1,−1), (−1,0), (−1,1), (0,−1), (0,1), (1,−1), (1,0), (1,1).
#[allow(clippy::too_many_arguments)]
pub(crate) fn refine_affine(
    x: &[f32],
    ew: Option<&[f32]>,
    dn: f32,
    mn: f32,
    ls: i32,
    lm: i32,
    smax: i32,
    qmax: f32,
) -> (i32, i32) {
    let mut best = (ls, lm);
    let mut best_err = affine_error(x, ew, dn * ls as f32, mn * lm as f32, qmax);
    for a in -1..=1 {
        for b in -1..=1 {
            if a == 0 && b == 0 {
                continue;
            }
            let (cs, cm) = ((ls + a).clamp(0, smax), (lm + b).clamp(0, smax));
            let err = affine_error(x, ew, dn * cs as f32, mn * cm as f32, qmax);
            if err < best_err {
                best_err = err;
                best = (cs, cm);
            }
        }
    }
    best
}

/// Refinement of one symmetric sub-block: the integer scale among `sc − 1, sc, sc + 1`
/// (clamped to `slo..=shi`) with the smallest [`symmetric_error`]; ties keep `sc`, then −1.
#[allow(clippy::too_many_arguments)]
pub(crate) fn refine_symmetric(
    x: &[f32],
    ew: Option<&[f32]>,
    dn: f32,
    sc: i32,
    slo: i32,
    shi: i32,
    qlo: f32,
    qhi: f32,
) -> i32 {
    let mut best = sc;
    let mut best_err = symmetric_error(x, ew, dn * sc as f32, qlo, qhi);
    for a in [-1, 1] {
        let c = (sc + a).clamp(slo, shi);
        let err = symmetric_error(x, ew, dn * c as f32, qlo, qhi);
        if err < best_err {
            best_err = err;
            best = c;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_even_is_round_ties_even() {
        let same = |v: f32| round_even(v).to_bits() == v.round_ties_even().to_bits() || v.is_nan();
        // Every 61st bit pattern (all exponents, both signs) ...
        let mut bits = 0u32;
        while let Some(next) = bits.checked_add(61) {
            let v = f32::from_bits(bits);
            assert!(same(v), "{v:e} ({bits:#x})");
            bits = next;
        }
        // ... and the edges: halves, around 2^22..2^24, zeros, sub-normals, infinities.
        for k in -64i32..64 {
            for v in [k as f32 + 0.5, k as f32 - 0.5, k as f32 * 0.25] {
                assert!(same(v) && same(-v), "{v}");
            }
        }
        for base in [4_194_304.0f32, 8_388_608.0, 16_777_216.0] {
            let mut v = base;
            for _ in 0..8 {
                assert!(same(v) && same(-v) && same(f32::from_bits(v.to_bits() - 1)), "{v}");
                v = f32::from_bits(v.to_bits() + 1);
            }
        }
        for v in [0.0f32, -0.0, f32::MIN_POSITIVE, 1e-45, f32::MAX, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(same(v) && same(-v), "{v}");
        }
    }
}
