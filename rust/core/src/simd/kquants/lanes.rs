//! Lane-per-sub-block searches of the k-quant kernels.
//!
//! A chunk of [`NC`] sub-blocks is transposed into a scratch buffer so that value `i` of
//! sub-block `b` sits at `i * NC + b`; a lane group `g` (sub-blocks `g·W .. g·W + W`) then loads
//! value `i` of all its sub-blocks with one `load` at `i * NC + g·W`. Each lane runs the scalar
//! algorithm of its sub-block (ggml's searches, see `blocks::kquants`) with the same operations
//! in the same order: sums run sequentially over the sub-block's values, branches become
//! masks and selects, and divisors of lanes that the scalar code would not divide are replaced
//! by 1 first, so no lane ever holds a NaN.

use crate::simd::vocab::Simd;

/// Sub-blocks per chunk (16 sub-blocks of 16 values, or 2 × 8 sub-blocks of 32 values). The
/// lane count W must divide it (W = 4, 8, 16 here).
pub(crate) const NC: usize = 16;

/// Most lane groups a chunk has (W = 4).
const MAXG: usize = NC / 4;

/// Smallest range the affine search divides by: 2^-100 (the scalar reference's `RANGE_EPS`).
pub(crate) const RANGE_EPS: f32 = 7.888_609e-31;

/// Round half to even and clamp to `[lo, hi]`: an integral f32 code. A code of zero may come
/// out as −0 where the scalar reference has +0; that never changes a result: codes only enter
/// products that are summed into accumulators starting at +0 (an IEEE sum is −0 only when both
/// terms are), comparisons (−0 == +0), `d·q − x` (x ≠ 0, or squared), or are offset or
/// converted to integers.
#[inline(always)]
pub(crate) fn code<S: Simd>(s: S, v: S::F, lo: S::F, hi: S::F) -> S::F {
    s.min(s.max(s.round_even(v), lo), hi)
}

/// [`code`] with lower bound +0: `max(r, +0)` already returns +0 for r = −0 on every ISA
/// (`max` is `a > b ? a : b`), so no normalisation is needed.
#[inline(always)]
pub(crate) fn code_nonneg<S: Simd>(s: S, v: S::F, hi: S::F) -> S::F {
    s.min(s.max(s.round_even(v), s.splat(0.0)), hi)
}

/// `m ? 1 : v` (a safe divisor).
#[inline(always)]
pub(crate) fn safe<S: Simd>(s: S, ok: S::M, v: S::F) -> S::F {
    s.select(ok, v, s.splat(1.0))
}

/// Value `i` of lane group `g` from a transposed buffer.
#[inline(always)]
pub(crate) fn at<S: Simd>(s: S, buf: &[f32], i: usize, g: usize) -> S::F {
    s.load(&buf[i * NC + g * S::W..])
}

/// |d| or d² (the error measure of the affine search).
#[inline(always)]
fn err<S: Simd>(s: S, d: S::F, use_mad: bool) -> S::F {
    if use_mad {
        s.abs(d)
    } else {
        s.mul(d, d)
    }
}

/// Parameters of the affine search (ggml's `make_qkx2_quants` / `make_qkx3_quants`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Qkx {
    pub nmax: f32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    pub use_mad: bool,
}

/// Per-lane results of the affine search, one entry per lane (index `g·W + l`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct QkxOut {
    /// Scale (0 for constant sub-blocks).
    pub scale: [f32; NC],
    /// `the_min` (= −min).
    pub the_min: [f32; NC],
    /// Inverse scale and min with which the kept codes were computed:
    /// code = `nearest(iscale · (x − min))` clamped to 0..=nmax.
    pub code_iscale: [f32; NC],
    pub code_min: [f32; NC],
    /// Bit `g·W + l`: the sub-block counts as constant (codes all 0).
    pub constant: u32,
}

/// The affine search (ggml's `make_qkx2_quants` / `make_qkx3_quants`) for the first
/// `ngroups` lane groups of the transposed values `xt` and weights `wt` (`n` values per
/// sub-block) at once: each candidate is a serial chain (divide, sums, divide, error), so the
/// groups' chains are interleaved value by value.
#[inline(always)]
pub(crate) fn qkx<S: Simd>(s: S, xt: &[f32], wt: &[f32], ngroups: usize, n: usize, p: &Qkx, out: &mut QkxOut) {
    debug_assert!(ngroups <= MAXG && n <= 32);
    let zero = s.splat(0.0);
    let one = s.splat(1.0);
    let nmax = s.splat(p.nmax);
    let range_eps = s.splat(RANGE_EPS);
    let mfalse = s.lt(zero, zero);
    let (mut min, mut max) = ([zero; MAXG], [zero; MAXG]);
    let (mut sum_w, mut sum_x) = ([zero; MAXG], [zero; MAXG]);
    let (mut ok, mut scale, mut best_error) = ([mfalse; MAXG], [zero; MAXG], [zero; MAXG]);
    let (mut code_iscale, mut code_min) = ([zero; MAXG], [zero; MAXG]);
    for g in 0..ngroups {
        let x0 = at(s, xt, 0, g);
        let w0 = at(s, wt, 0, g);
        let (mut mn, mut mx) = (x0, x0);
        let mut sw = w0;
        let mut sx = s.mul(sw, x0);
        for i in 1..n {
            let x = at(s, xt, i, g);
            let w = at(s, wt, i, g);
            mn = s.select(s.lt(x, mn), x, mn);
            mx = s.select(s.lt(mx, x), x, mx);
            sw = s.add(sw, w);
            sx = s.add(sx, s.mul(w, x));
        }
        mn = s.select(s.lt(zero, mn), zero, mn);
        ok[g] = s.lt(range_eps, s.sub(mx, mn));
        let iscale0 = s.div(nmax, safe(s, ok[g], s.sub(mx, mn)));
        let sc = s.div(one, iscale0);
        let mut be = zero;
        for i in 0..n {
            let x = at(s, xt, i, g);
            let w = at(s, wt, i, g);
            let l = code_nonneg(s, s.mul(iscale0, s.sub(x, mn)), nmax);
            let diff = s.sub(s.add(s.mul(sc, l), mn), x);
            be = s.add(be, s.mul(w, err(s, diff, p.use_mad)));
        }
        (min[g], max[g], sum_w[g], sum_x[g]) = (mn, mx, sw, sx);
        (scale[g], best_error[g], code_iscale[g], code_min[g]) = (sc, be, iscale0, mn);
    }
    let mut laux = [[zero; MAXG]; 32];
    for is in 0..=p.nstep {
        let num = s.splat(p.rmin + p.rdelta * is as f32 + p.nmax);
        let (mut cand, mut iscale) = ([mfalse; MAXG], [zero; MAXG]);
        for g in 0..ngroups {
            let range = s.sub(max[g], min[g]);
            cand[g] = s.mand(ok[g], s.lt(range_eps, range));
            iscale[g] = s.div(num, safe(s, cand[g], range));
        }
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([zero; MAXG], [zero; MAXG], [zero; MAXG]);
        for (i, la) in laux.iter_mut().enumerate().take(n) {
            for g in 0..ngroups {
                let x = at(s, xt, i, g);
                let w = at(s, wt, i, g);
                let l = code_nonneg(s, s.mul(iscale[g], s.sub(x, min[g])), nmax);
                la[g] = l;
                let wl = s.mul(w, l);
                sum_l[g] = s.add(sum_l[g], wl);
                sum_l2[g] = s.add(sum_l2[g], s.mul(wl, l));
                sum_xl[g] = s.add(sum_xl[g], s.mul(wl, x));
            }
        }
        let (mut dok, mut this_scale, mut this_min) = ([mfalse; MAXG], [zero; MAXG], [zero; MAXG]);
        let mut any = 0u64;
        for g in 0..ngroups {
            let det = s.sub(s.mul(sum_w[g], sum_l2[g]), s.mul(sum_l[g], sum_l[g]));
            dok[g] = s.mand(cand[g], s.lt(zero, det));
            any |= s.bitmask(dok[g]);
            let dsafe = safe(s, dok[g], det);
            let ts = s.div(s.sub(s.mul(sum_w[g], sum_xl[g]), s.mul(sum_x[g], sum_l[g])), dsafe);
            let tm = s.div(s.sub(s.mul(sum_l2[g], sum_x[g]), s.mul(sum_l[g], sum_xl[g])), dsafe);
            let pos = s.lt(zero, tm);
            this_min[g] = s.select(pos, zero, tm);
            this_scale[g] = s.select(pos, s.div(sum_xl[g], safe(s, dok[g], sum_l2[g])), ts);
        }
        if any == 0 {
            continue;
        }
        let mut cur_error = [zero; MAXG];
        for (i, la) in laux.iter().enumerate().take(n) {
            for g in 0..ngroups {
                let x = at(s, xt, i, g);
                let w = at(s, wt, i, g);
                let diff = s.sub(s.add(s.mul(this_scale[g], la[g]), this_min[g]), x);
                cur_error[g] = s.add(cur_error[g], s.mul(w, err(s, diff, p.use_mad)));
            }
        }
        for g in 0..ngroups {
            let better = s.mand(dok[g], s.lt(cur_error[g], best_error[g]));
            best_error[g] = s.select(better, cur_error[g], best_error[g]);
            scale[g] = s.select(better, this_scale[g], scale[g]);
            code_iscale[g] = s.select(better, iscale[g], code_iscale[g]);
            code_min[g] = s.select(better, min[g], code_min[g]);
            min[g] = s.select(better, this_min[g], min[g]);
        }
    }
    for g in 0..ngroups {
        let o = g * S::W;
        s.store(&mut out.scale[o..], s.select(ok[g], scale[g], zero));
        s.store(&mut out.the_min[o..], s.neg(min[g]));
        s.store(&mut out.code_iscale[o..], code_iscale[g]);
        s.store(&mut out.code_min[o..], code_min[g]);
        out.constant |= (s.bitmask(s.mnot(ok[g])) as u32) << o;
    }
}

/// Per-lane result of the symmetric searches.
#[derive(Clone, Copy)]
pub(crate) struct QxLanes<S: Simd> {
    /// Scale (0 for all-zero sub-blocks).
    pub scale: S::F,
    /// Inverse scale with which the kept codes were computed (code = `nearest(iscale · x)`
    /// clamped to −nmax..nmax−1, plus nmax) ...
    pub code_iscale: S::F,
    /// ... except for these all-zero lanes (codes 0).
    pub zero: S::M,
}

/// Largest-magnitude value of each lane (first one on ties) and its magnitude.
#[inline(always)]
fn signed_amax<S: Simd>(s: S, xt: &[f32], g: usize, n: usize) -> (S::F, S::F) {
    let (mut max, mut amax) = (s.splat(0.0), s.splat(0.0));
    for i in 0..n {
        let x = at(s, xt, i, g);
        let ax = s.abs(x);
        let gt = s.lt(amax, ax);
        amax = s.select(gt, ax, amax);
        max = s.select(gt, x, max);
    }
    (max, amax)
}

/// `Σ (w·x)·l` and `Σ (w·l)·l` with `l = code(iscale · x)` in lo..=hi, sequential over the values.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn qx_sums<S: Simd>(
    s: S,
    xt: &[f32],
    wt: &[f32],
    wxt: &[f32],
    g: usize,
    n: usize,
    iscale: S::F,
    (lo, hi): (S::F, S::F),
) -> (S::F, S::F) {
    let zero = s.splat(0.0);
    let (mut sumlx, mut suml2) = (zero, zero);
    for i in 0..n {
        let x = at(s, xt, i, g);
        let l = code(s, s.mul(iscale, x), lo, hi);
        sumlx = s.add(sumlx, s.mul(at(s, wxt, i, g), l));
        suml2 = s.add(suml2, s.mul(s.mul(at(s, wt, i, g), l), l));
    }
    (sumlx, suml2)
}

/// The candidate offsets `is` of `make_qx_quants`, in ggml's order.
const QX_CANDIDATES: [i32; 18] = [-9, -8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6, 7, 8, 9];

/// [`qx_sums`] for three inverse scales at once.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn qx_sums3<S: Simd>(
    s: S,
    xt: &[f32],
    wt: &[f32],
    wxt: &[f32],
    g: usize,
    n: usize,
    iscale: [S::F; 3],
    (lo, hi): (S::F, S::F),
) -> [(S::F, S::F); 3] {
    let zero = s.splat(0.0);
    let (mut sumlx, mut suml2) = ([zero; 3], [zero; 3]);
    for i in 0..n {
        let x = at(s, xt, i, g);
        let wx = at(s, wxt, i, g);
        let w = at(s, wt, i, g);
        for k in 0..3 {
            let l = code(s, s.mul(iscale[k], x), lo, hi);
            sumlx[k] = s.add(sumlx[k], s.mul(wx, l));
            suml2[k] = s.add(suml2[k], s.mul(s.mul(w, l), l));
        }
    }
    [(sumlx[0], suml2[0]), (sumlx[1], suml2[1]), (sumlx[2], suml2[2])]
}

/// ggml's `make_qx_quants` (`rmse_type = 1`) for lane group `g`: weights `wt` (transposed),
/// `wxt` = w·x precomputed (the scalar code's `w * x * l` is `(w * x) * l`), `eps` per lane.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn qx<S: Simd>(
    s: S,
    xt: &[f32],
    wt: &[f32],
    wxt: &[f32],
    eps: S::F,
    g: usize,
    n: usize,
    nmax: i32,
) -> QxLanes<S> {
    let zero = s.splat(0.0);
    let nm = nmax as f32;
    let (lo, hi) = (s.splat(-nm), s.splat(nm - 1.0));
    let (max, amax) = signed_amax(s, xt, g, n);
    let zl = s.lt(amax, eps);
    let max = safe(s, s.mnot(zl), max);
    let iscale0 = s.div(s.splat(-nm), max);
    let (sumlx, suml2) = qx_sums(s, xt, wt, wxt, g, n, iscale0, (lo, hi));
    let nz = s.mnot(s.eq(suml2, zero));
    let mut scale = s.select(nz, s.div(sumlx, safe(s, nz, suml2)), zero);
    let mut best = s.mul(scale, sumlx);
    let mut code_iscale = iscale0;
    // The 18 further candidates are independent except for the in-order choice of the best:
    // their sums run three at a time (more independent chains, shared loads).
    for c in QX_CANDIDATES.chunks_exact(3) {
        let num = |k: usize| -(nm + 0.1 * c[k] as f32);
        let iscale = [s.div(s.splat(num(0)), max), s.div(s.splat(num(1)), max), s.div(s.splat(num(2)), max)];
        let sums = qx_sums3(s, xt, wt, wxt, g, n, iscale, (lo, hi));
        for k in 0..3 {
            let (sumlx, suml2) = sums[k];
            let pos = s.lt(zero, suml2);
            let acc = s.mand(pos, s.lt(s.mul(best, suml2), s.mul(sumlx, sumlx)));
            let new_scale = s.div(sumlx, safe(s, pos, suml2));
            scale = s.select(acc, new_scale, scale);
            best = s.select(acc, s.mul(new_scale, sumlx), best);
            code_iscale = s.select(acc, iscale[k], code_iscale);
        }
    }
    QxLanes { scale: s.select(zl, zero, scale), code_iscale, zero: zl }
}

/// ggml's `make_q3_quants` (`do_rmse`, weights x²) for the first `ngroups` lane groups at once
/// (the groups' dependency chains interleave): the codes (−nmax..nmax−1 plus nmax; all 0 for
/// all-zero lanes) are written transposed to `lt`, the scales to `scales[g·W..]`. A lane whose
/// pass changed nothing would change nothing in the following passes either, so all lanes run
/// until none changes (at most 5 passes), as the scalar code does per lane.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn q3<S: Simd>(
    s: S,
    xt: &[f32],
    wxt: &[f32],
    eps: S::F,
    ngroups: usize,
    n: usize,
    nmax: i32,
    lt: &mut [f32],
    scales: &mut [f32],
) {
    debug_assert!(ngroups <= MAXG && n <= 16);
    let zero = s.splat(0.0);
    let one = s.splat(1.0);
    let nm = nmax as f32;
    let (lo, hi) = (s.splat(-nm), s.splat(nm - 1.0));
    let mut live = [s.lt(zero, zero); MAXG];
    let (mut sumlx, mut suml2) = ([zero; MAXG], [zero; MAXG]);
    let mut l = [[zero; MAXG]; 16];
    for g in 0..ngroups {
        let (max, amax) = signed_amax(s, xt, g, n);
        let zl = s.lt(amax, eps);
        live[g] = s.mnot(zl);
        let iscale = s.div(s.splat(-nm), safe(s, live[g], max));
        for (i, li) in l.iter_mut().enumerate().take(n) {
            let x = at(s, xt, i, g);
            let c = code(s, s.mul(iscale, x), lo, hi);
            li[g] = c;
            let w = s.mul(x, x);
            sumlx[g] = s.add(sumlx[g], s.mul(at(s, wxt, i, g), c));
            suml2[g] = s.add(suml2[g], s.mul(s.mul(w, c), c));
        }
    }
    for _ in 0..5 {
        let mut changed = 0u64;
        for (i, li) in l.iter_mut().enumerate().take(n) {
            for g in 0..ngroups {
                let x = at(s, xt, i, g);
                let w = s.mul(x, x);
                let wx = at(s, wxt, i, g);
                let slx = s.sub(sumlx[g], s.mul(wx, li[g]));
                let pos = s.lt(zero, slx);
                let sl2 = s.sub(suml2[g], s.mul(s.mul(w, li[g]), li[g]));
                let new_l = code(s, s.div(s.mul(x, sl2), safe(s, pos, slx)), lo, hi);
                let differs = s.mand(pos, s.mnot(s.eq(new_l, li[g])));
                let slx = s.add(slx, s.mul(wx, new_l));
                let sl2 = s.add(sl2, s.mul(s.mul(w, new_l), new_l));
                let gain = s.lt(s.mul(s.mul(sumlx[g], sumlx[g]), sl2), s.mul(s.mul(slx, slx), suml2[g]));
                let acc = s.mand(s.mand(differs, live[g]), s.mand(s.lt(zero, sl2), gain));
                // li ← acc ? new_l : li, as arithmetic on small integers (exact): a select here
                // compiles to a masked store, which is slow on some x86 cores.
                li[g] = s.add(li[g], s.mul(s.sub(new_l, li[g]), s.select(acc, one, zero)));
                sumlx[g] = s.select(acc, slx, sumlx[g]);
                suml2[g] = s.select(acc, sl2, suml2[g]);
                changed |= s.bitmask(acc);
            }
        }
        if changed == 0 {
            break;
        }
    }
    let nmv = s.splat(nm);
    for g in 0..ngroups {
        for (i, li) in l.iter().enumerate().take(n) {
            s.store(&mut lt[i * NC + g * S::W..], s.select(live[g], s.add(li[g], nmv), zero));
        }
        let pos = s.mand(live[g], s.lt(zero, suml2[g]));
        s.store(&mut scales[g * S::W..], s.select(pos, s.div(sumlx[g], safe(s, pos, suml2[g])), zero));
    }
}

/// Squared errors (Σ e² or Σ w·e², each sequential) of affine sub-blocks for three
/// candidate (scale `d`, min `m`) pairs at once, the values re-quantized as
/// `nearest((x + m) / d)` in 0..=qmax (any code where d = 0).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn affine_error3<S: Simd>(
    s: S,
    xt: &[f32],
    et: Option<&[f32]>,
    g: usize,
    n: usize,
    d: [S::F; 3],
    m: [S::F; 3],
    qmax: S::F,
) -> [S::F; 3] {
    let zero = s.splat(0.0);
    let one = s.splat(1.0);
    let dsafe = [
        s.select(s.eq(d[0], zero), one, d[0]),
        s.select(s.eq(d[1], zero), one, d[1]),
        s.select(s.eq(d[2], zero), one, d[2]),
    ];
    let mut err = [zero; 3];
    for i in 0..n {
        let x = at(s, xt, i, g);
        for k in 0..3 {
            let q = code_nonneg(s, s.div(s.add(x, m[k]), dsafe[k]), qmax);
            let e = s.sub(s.sub(s.mul(d[k], q), m[k]), x);
            let e2 = s.mul(e, e);
            let we2 = match et {
                Some(et) => s.mul(at(s, et, i, g), e2),
                None => e2,
            };
            err[k] = s.add(err[k], we2);
        }
    }
    err
}

/// Squared errors of symmetric sub-blocks for three candidate scales `d` at once, the values
/// re-quantized as `nearest(x / d)` in qlo..=qhi.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn symmetric_error3<S: Simd>(
    s: S,
    xt: &[f32],
    et: Option<&[f32]>,
    g: usize,
    n: usize,
    d: [S::F; 3],
    (qlo, qhi): (S::F, S::F),
) -> [S::F; 3] {
    let zero = s.splat(0.0);
    let one = s.splat(1.0);
    let dsafe = [
        s.select(s.eq(d[0], zero), one, d[0]),
        s.select(s.eq(d[1], zero), one, d[1]),
        s.select(s.eq(d[2], zero), one, d[2]),
    ];
    let mut err = [zero; 3];
    for i in 0..n {
        let x = at(s, xt, i, g);
        for k in 0..3 {
            let q = code(s, s.div(x, dsafe[k]), qlo, qhi);
            let e = s.sub(s.mul(d[k], q), x);
            let e2 = s.mul(e, e);
            let we2 = match et {
                Some(et) => s.mul(at(s, et, i, g), e2),
                None => e2,
            };
            err[k] = s.add(err[k], we2);
        }
    }
    err
}

/// Candidate offsets (scale, min) of the affine refinement, the unchanged pair first, then the
/// scalar reference's order.
const AFFINE_STEPS: [(f32, f32); 9] =
    [(0.0, 0.0), (-1.0, -1.0), (-1.0, 0.0), (-1.0, 1.0), (0.0, -1.0), (0.0, 1.0), (1.0, -1.0), (1.0, 0.0), (1.0, 1.0)];

/// Refinement of affine sub-blocks (lane group `g`): among the integer (scale, min) pairs
/// within one step of `(ls, lm)` (clamped to 0..=smax), the one with the smallest squared
/// error of the values re-quantized with it (weights `et` if given); ties keep the earlier,
/// in the scalar reference's candidate order. `dn`, `mn`: the lanes' super-block scales.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn refine_affine<S: Simd>(
    s: S,
    xt: &[f32],
    et: Option<&[f32]>,
    g: usize,
    n: usize,
    dn: S::F,
    mn: S::F,
    ls: S::F,
    lm: S::F,
    smax: f32,
    qmax: f32,
) -> (S::F, S::F) {
    let zero = s.splat(0.0);
    let (smaxv, qmaxv) = (s.splat(smax), s.splat(qmax));
    let (mut bs, mut bm, mut best) = (ls, lm, zero);
    // Three candidates per pass over the values (independent error chains); the choice is made
    // in the reference's order, the unchanged pair first.
    for (bi, batch) in AFFINE_STEPS.chunks_exact(3).enumerate() {
        let mut cs = [zero; 3];
        let mut cm = [zero; 3];
        for k in 0..3 {
            cs[k] = s.min(s.max(s.add(ls, s.splat(batch[k].0)), zero), smaxv);
            cm[k] = s.min(s.max(s.add(lm, s.splat(batch[k].1)), zero), smaxv);
        }
        let d = [s.mul(dn, cs[0]), s.mul(dn, cs[1]), s.mul(dn, cs[2])];
        let m = [s.mul(mn, cm[0]), s.mul(mn, cm[1]), s.mul(mn, cm[2])];
        let err = affine_error3(s, xt, et, g, n, d, m, qmaxv);
        for k in 0..3 {
            if bi == 0 && k == 0 {
                best = err[0];
                continue;
            }
            let better = s.lt(err[k], best);
            best = s.select(better, err[k], best);
            bs = s.select(better, cs[k], bs);
            bm = s.select(better, cm[k], bm);
        }
    }
    (bs, bm)
}

/// Refinement of symmetric sub-blocks (lane group `g`): the integer scale among `sc − 1, sc,
/// sc + 1` (clamped to slo..=shi) with the smallest squared error of the values re-quantized
/// as `nearest(x / d)` in qlo..=qhi; ties keep `sc`, then −1.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn refine_symmetric<S: Simd>(
    s: S,
    xt: &[f32],
    et: Option<&[f32]>,
    g: usize,
    n: usize,
    dn: S::F,
    sc: S::F,
    (slo, shi): (f32, f32),
    (qlo, qhi): (f32, f32),
) -> S::F {
    let q = (s.splat(qlo), s.splat(qhi));
    let (lo, hi) = (s.splat(slo), s.splat(shi));
    let down = s.min(s.max(s.sub(sc, s.splat(1.0)), lo), hi);
    let up = s.min(s.max(s.add(sc, s.splat(1.0)), lo), hi);
    let err = symmetric_error3(s, xt, et, g, n, [s.mul(dn, sc), s.mul(dn, down), s.mul(dn, up)], q);
    let mut best_sc = sc;
    let mut best = err[0];
    for (c, e) in [(down, err[1]), (up, err[2])] {
        let better = s.lt(e, best);
        best = s.select(better, e, best);
        best_sc = s.select(better, c, best_sc);
    }
    best_sc
}
