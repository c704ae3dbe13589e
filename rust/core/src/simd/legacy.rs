//! SIMD kernels of the legacy family (q8_0, q4_0, q4_1, q5_0, q5_1; layouts and algorithms in
//! [`crate::blocks::legacy`]).
//!
//! * Plain rounding (no importance): one block at a time, `W` values per vector. Abs-max, min and
//!   max are exact reductions; the first-occurrence rules of ggml (sign of `max` for q4_0/q5_0,
//!   sign of a zero `min` for q4_1/q5_1) are resolved with a mask scan, so the bytes equal the
//!   scalar reference's (and ggml's) exactly.
//! * With importance: lane-per-block. `W` blocks are transposed into a scratch buffer and each
//!   lane runs the scalar search of its block value by value, in the scalar order, with the
//!   branches turned into selects; sums are therefore bit-identical to the reference.
//! * NaN never reaches `min`/`max` (their NaN behaviour differs between ISAs): the only NaN a
//!   kernel can produce (`0 × ∞` in a block whose `1/d` overflows) is replaced first, and ratios
//!   that may be `0/0` in lanes whose result is discarded only meet ordered compares (false on
//!   every ISA) and selects.

use crate::blocks::legacy::{self as reference, f16_round, pack_block, Spec, GROUP_MAX_EPS, QK};
use crate::qtype::QType;
use crate::simd::vocab::Simd;
use crate::simd::{Isa, Kernel};

/// Largest lane count supported (scratch sizes); wider vocabularies use the scalar reference.
pub(crate) const MAX_W: usize = 16;

/// `1 << lane` for each lane (selects bit `k + lane` of `qh >> k`).
const LANE_BITS: [i32; MAX_W] = {
    let mut a = [0i32; MAX_W];
    let mut i = 0;
    while i < MAX_W {
        a[i] = 1 << i;
        i += 1;
    }
    a
};

/// `m ? a : b` on integer lanes (a bitwise blend through the float lanes).
#[inline(always)]
pub(crate) fn iselect<S: Simd>(s: S, m: S::M, a: S::I, b: S::I) -> S::I {
    s.to_bits(s.select(m, s.from_bits(a), s.from_bits(b)))
}

/// `t`, or `v` where `t` is NaN.
#[inline(always)]
fn nan_to<S: Simd>(s: S, t: S::F, v: f32) -> S::F {
    s.select(s.eq(t, t), t, s.splat(v))
}

/// `min(max(t, lo), hi)` (no NaN in `t`).
#[inline(always)]
fn clamp<S: Simd>(s: S, t: S::F, lo: f32, hi: f32) -> S::F {
    s.min(s.max(t, s.splat(lo)), s.splat(hi))
}

/// Whether the generic kernels can run at this lane count.
#[inline(always)]
fn supported<S: Simd>() -> bool {
    S::W <= MAX_W && (QK / 2).is_multiple_of(S::W)
}

/// Index of the first of the 32 values of `xb` whose `|x|` (if `abs`) or `x` equals `v`,
/// scanning `W` values at a time. (Plain loops, not closures: a closure body is compiled
/// outside the `#[target_feature]` context and would call every vocabulary op out of line.)
#[inline(always)]
fn first_equal<S: Simd>(s: S, xb: &[f32], v: f32, abs: bool) -> Option<usize> {
    // Branch-free over the block (the position of a block's maximum is random, so an early
    // exit would mispredict about every other block).
    let vv = s.splat(v);
    let mut bits = 0u64;
    for k in 0..QK / S::W {
        let x = s.load(&xb[k * S::W..]);
        let x = if abs { s.abs(x) } else { x };
        bits |= s.bitmask(s.eq(x, vv)) << (k * S::W);
    }
    (bits != 0).then_some(bits.trailing_zeros() as usize)
}

/// Code of the plain rounding for one vector `v`: `clamp(trunc(t), 0, cmax)` of
/// `t = (v - m) * id + offset` (`has_min`) or `t = v * id + offset`, NaN → `nan_code` (`None`
/// when `id` is finite: `t` is then finite, `|x| <= amax` keeping `|x * id|` near the code range).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rtn_code<S: Simd>(
    s: S,
    v: S::F,
    has_min: bool,
    vm: S::F,
    vid: S::F,
    voff: S::F,
    nan_code: Option<f32>,
    cmax: f32,
) -> S::I {
    let t = if has_min { s.mul(s.sub(v, vm), vid) } else { s.mul(v, vid) };
    let t = s.add(t, voff);
    let t = match nan_code {
        Some(c) => nan_to(s, t, c),
        None => t,
    };
    s.to_i32(clamp(s, s.trunc(t), 0.0, cmax))
}

/// Plain rounding of one block `xb` into `out` (see the reference `rtn_block`).
#[inline(always)]
fn rtn_block<S: Simd>(s: S, spec: &Spec, xb: &[f32], out: &mut [u8]) {
    let w = S::W;
    let nv = QK / w;
    let (d, m) = if !spec.has_min {
        let mut a = s.abs(s.load(xb));
        for k in 1..nv {
            a = s.max(a, s.abs(s.load(&xb[k * w..])));
        }
        // |x| lanes are never -0.0, so the maximum is exact including its sign.
        let amax = s.hmax(a);
        if spec.is_q8() {
            (amax / 127.0, 0.0)
        } else {
            // ggml keeps the first value of largest magnitude, +0.0 when all are zero.
            let max = if amax == 0.0 { 0.0 } else { first_equal(s, xb, amax, true).map_or(0.0, |i| xb[i]) };
            (max / -spec.zero, 0.0)
        }
    } else {
        let first = s.load(xb);
        let (mut lo, mut hi) = (first, first);
        for k in 1..nv {
            let v = s.load(&xb[k * w..]);
            lo = s.min(lo, v);
            hi = s.max(hi, v);
        }
        let minv = s.hmin(lo);
        // A zero min keeps the sign of the first zero (ggml's strict `<` scan).
        let min = if minv == 0.0 { first_equal(s, xb, 0.0, false).map_or(0.0, |i| xb[i]) } else { minv };
        let range = s.hmax(hi) - min;
        // ggml's range of an all-equal block is x0 - x0 = +0.0 whatever the zeros' signs.
        let range = if range == 0.0 { 0.0 } else { range };
        (range / spec.cmax, min)
    };
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[0..2].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
    if spec.has_min {
        out[2..4].copy_from_slice(&half::f16::from_f32(m).to_bits().to_le_bytes());
    }
    let vid = s.splat(id);
    if spec.is_q8() {
        let qs = &mut out[spec.off_qs..];
        for k in 0..nv {
            let t = s.mul(s.load(&xb[k * w..]), vid);
            let t = if id.is_finite() { t } else { nan_to(s, t, 0.0) };
            let c = clamp(s, s.round_away(t), -127.0, 127.0);
            s.store_u8(&mut qs[k * w..], s.to_i32(c));
        }
        return;
    }
    let (vm, offset, nan_code) = if spec.has_min { (m, 0.5, 0.0) } else { (0.0, spec.zero + 0.5, spec.zero) };
    let (vm, voff) = (s.splat(vm), s.splat(offset));
    let mut qh = 0u32;
    let five = spec.off_qh.is_some();
    let (b4, b15) = (s.isplat(16), s.isplat(15));
    let qs = &mut out[spec.off_qs..];
    for k in (0..QK / 2).step_by(w) {
        let (hm, cmax) = (spec.has_min, spec.cmax);
        let nan_code = if id.is_finite() { None } else { Some(nan_code) };
        let mut lo = rtn_code(s, s.load(&xb[k..]), hm, vm, vid, voff, nan_code, cmax);
        let mut hi = rtn_code(s, s.load(&xb[QK / 2 + k..]), hm, vm, vid, voff, nan_code, cmax);
        if five {
            qh |= (s.bitmask(s.ieq(s.iand(lo, b4), b4)) as u32) << k;
            qh |= (s.bitmask(s.ieq(s.iand(hi, b4), b4)) as u32) << (QK / 2 + k);
            lo = s.iand(lo, b15);
            hi = s.iand(hi, b15);
        }
        s.store_u8(&mut qs[k..], s.ior(lo, s.shl(hi, 4)));
    }
    if let Some(o) = spec.off_qh {
        out[o..o + 4].copy_from_slice(&qh.to_le_bytes());
    }
}

/// Scratch of one group of `W` blocks, transposed: value `j` of lane `b` at `[j * W + b]`.
struct Lanes {
    x: [f32; QK * MAX_W],
    w: [f32; QK * MAX_W],
    /// Levels of the plain rounding.
    lv0: [f32; QK * MAX_W],
    /// Levels of the search's best candidate.
    lv1: [f32; QK * MAX_W],
    /// Levels of the candidate under test.
    cand: [f32; QK * MAX_W],
}

/// One candidate of the symmetric search: levels `clamp(round_even(iscale * x), lo, hi)` into
/// `out`, returns `(sum(w x l), sum(w l^2))` per lane, summed in value order.
#[inline(always)]
fn sym_pass<S: Simd>(s: S, iscale: S::F, lo: f32, hi: f32, x: &[f32], wt: &[f32], out: &mut [f32]) -> (S::F, S::F) {
    let w = S::W;
    let (mut sumlx, mut suml2) = (s.splat(0.0), s.splat(0.0));
    for j in 0..QK {
        let v = s.load(&x[j * w..]);
        let wv = s.load(&wt[j * w..]);
        let q = clamp(s, s.round_even(s.mul(iscale, v)), lo, hi);
        s.store(&mut out[j * w..], q);
        sumlx = s.add(sumlx, s.mul(s.mul(wv, v), q));
        suml2 = s.add(suml2, s.mul(s.mul(wv, q), q));
    }
    (sumlx, suml2)
}

/// `c / (max - min)` per lane, 0 where that range is 0 (see the reference `search_asym`).
#[inline(always)]
fn iscale_of<S: Simd>(s: S, c: f32, max: S::F, min: S::F) -> S::F {
    let z = s.splat(0.0);
    let range = s.sub(max, min);
    let zr = s.eq(range, z);
    s.select(zr, z, s.div(s.splat(c), s.select(zr, s.splat(1.0), range)))
}

/// Bit 4 (value 16) in each lane whose bit `lane` of `bits` is set.
#[inline(always)]
fn high_bits<S: Simd>(s: S, bits: u32, lane_bits: S::I) -> S::I {
    let hb = s.iand(s.isplat(bits as i32), lane_bits);
    iselect(s, s.ieq(hb, lane_bits), s.isplat(16), s.isplat(0))
}

/// The symmetric search (`reference::search_sym`) in lanes: returns (scale, |max| < eps mask,
/// signed max) and leaves the levels in `l.lv1`.
#[inline(always)]
fn search_sym_lanes<S: Simd>(s: S, l: &mut Lanes, nmax: f32, lo: f32, hi: f32) -> (S::F, S::F) {
    let w = S::W;
    let (mut amax, mut max) = (s.splat(0.0), s.splat(0.0));
    for j in 0..QK {
        let v = s.load(&l.x[j * w..]);
        let a = s.abs(v);
        let m = s.lt(amax, a);
        amax = s.select(m, a, amax);
        max = s.select(m, v, max);
    }
    let zero = s.lt(amax, s.splat(GROUP_MAX_EPS));
    let maxs = s.select(zero, s.splat(1.0), max);
    let z = s.splat(0.0);
    let (sumlx, suml2) = sym_pass(s, s.div(s.splat(-nmax), maxs), lo, hi, &l.x, &l.w, &mut l.lv1);
    let mut scale = s.select(s.eq(suml2, z), z, s.div(sumlx, suml2));
    let mut best = s.mul(scale, sumlx);
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let c = -(nmax + 0.1 * is as f32);
        let (sumlx, suml2) = sym_pass(s, s.div(s.splat(c), maxs), lo, hi, &l.x, &l.w, &mut l.cand);
        let take = s.mand(s.lt(z, suml2), s.lt(s.mul(best, suml2), s.mul(sumlx, sumlx)));
        if s.bitmask(take) != 0 {
            for j in 0..QK {
                let r = j * w..;
                let v = s.select(take, s.load(&l.cand[r.clone()]), s.load(&l.lv1[r.clone()]));
                s.store(&mut l.lv1[r], v);
            }
            let new_scale = s.div(sumlx, suml2);
            scale = s.select(take, new_scale, scale);
            best = s.select(take, s.mul(new_scale, sumlx), best);
        }
    }
    if s.bitmask(zero) != 0 {
        let vlo = s.splat(lo);
        for j in 0..QK {
            let r = j * w..;
            let v = s.select(zero, vlo, s.load(&l.lv1[r.clone()]));
            s.store(&mut l.lv1[r], v);
        }
    }
    (s.select(zero, z, scale), max)
}

/// The asymmetric search (`reference::search_asym`) in lanes: returns (scale, min) and leaves
/// the levels in `l.lv1`.
#[inline(always)]
fn search_asym_lanes<S: Simd>(s: S, l: &mut Lanes, nmax: f32) -> (S::F, S::F) {
    let w = S::W;
    let z = s.splat(0.0);
    let x0 = s.load(&l.x);
    let (mut min, mut max) = (x0, x0);
    let mut sum_w = s.load(&l.w);
    let mut sum_x = s.mul(sum_w, x0);
    for j in 1..QK {
        let v = s.load(&l.x[j * w..]);
        let wv = s.load(&l.w[j * w..]);
        min = s.select(s.lt(v, min), v, min);
        max = s.select(s.lt(max, v), v, max);
        sum_w = s.add(sum_w, wv);
        sum_x = s.add(sum_x, s.mul(wv, v));
    }
    min = s.select(s.lt(z, min), z, min);
    let degen = s.le(max, min);
    let min_start = min;
    let iscale = iscale_of(s, nmax, max, min);
    let mut scale = s.div(s.splat(1.0), iscale);
    let mut best = z;
    for j in 0..QK {
        let v = s.load(&l.x[j * w..]);
        let wv = s.load(&l.w[j * w..]);
        let q = clamp(s, s.round_even(s.mul(iscale, s.sub(v, min))), 0.0, nmax);
        s.store(&mut l.lv1[j * w..], q);
        let diff = s.sub(s.add(s.mul(scale, q), min), v);
        best = s.add(best, s.mul(wv, s.mul(diff, diff)));
    }
    for is in 0..=36 {
        let iscale = iscale_of(s, -0.9 + 0.05 * is as f32 + nmax, max, min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (z, z, z);
        for j in 0..QK {
            let v = s.load(&l.x[j * w..]);
            let wv = s.load(&l.w[j * w..]);
            let q = clamp(s, s.round_even(s.mul(iscale, s.sub(v, min))), 0.0, nmax);
            s.store(&mut l.cand[j * w..], q);
            sum_l = s.add(sum_l, s.mul(wv, q));
            sum_l2 = s.add(sum_l2, s.mul(s.mul(wv, q), q));
            sum_xl = s.add(sum_xl, s.mul(s.mul(wv, q), v));
        }
        let det = s.sub(s.mul(sum_w, sum_l2), s.mul(sum_l, sum_l));
        let dpos = s.lt(z, det);
        if s.bitmask(dpos) == 0 {
            continue;
        }
        let this_scale = s.div(s.sub(s.mul(sum_w, sum_xl), s.mul(sum_x, sum_l)), det);
        let this_min = s.div(s.sub(s.mul(sum_l2, sum_x), s.mul(sum_l, sum_xl)), det);
        let mpos = s.lt(z, this_min);
        let this_min = s.select(mpos, z, this_min);
        let this_scale = s.select(mpos, s.div(sum_xl, sum_l2), this_scale);
        let mut err = z;
        for j in 0..QK {
            let v = s.load(&l.x[j * w..]);
            let wv = s.load(&l.w[j * w..]);
            let q = s.load(&l.cand[j * w..]);
            let diff = s.sub(s.add(s.mul(this_scale, q), this_min), v);
            err = s.add(err, s.mul(wv, s.mul(diff, diff)));
        }
        let take = s.mand(dpos, s.lt(err, best));
        if s.bitmask(take) != 0 {
            for j in 0..QK {
                let r = j * w..;
                let v = s.select(take, s.load(&l.cand[r.clone()]), s.load(&l.lv1[r.clone()]));
                s.store(&mut l.lv1[r], v);
            }
            best = s.select(take, err, best);
            scale = s.select(take, this_scale, scale);
            min = s.select(take, this_min, min);
        }
    }
    if s.bitmask(degen) != 0 {
        for j in 0..QK {
            let r = j * w..;
            let v = s.select(degen, z, s.load(&l.lv1[r.clone()]));
            s.store(&mut l.lv1[r], v);
        }
    }
    (s.select(degen, z, scale), s.select(degen, min_start, min))
}

/// Plain rounding in lanes (`reference::rtn_block`): returns (d, m) before f16 and leaves the
/// levels in `l.lv0`. `max` is the signed max of largest magnitude from the symmetric scan.
#[inline(always)]
fn rtn_lanes<S: Simd>(s: S, spec: &Spec, l: &mut Lanes, max: S::F) -> (S::F, S::F) {
    let w = S::W;
    let z = s.splat(0.0);
    let (d, m) = if spec.is_q8() {
        (s.div(s.abs(max), s.splat(127.0)), z)
    } else if !spec.has_min {
        (s.div(max, s.splat(-spec.zero)), z)
    } else {
        let (mut lo, mut hi) = (s.splat(f32::MAX), s.splat(-f32::MAX));
        for j in 0..QK {
            let v = s.load(&l.x[j * w..]);
            lo = s.select(s.lt(v, lo), v, lo);
            hi = s.select(s.lt(hi, v), v, hi);
        }
        (s.div(s.sub(hi, lo), s.splat(spec.cmax)), lo)
    };
    let dz = s.eq(d, z);
    let id = s.select(dz, z, s.div(s.splat(1.0), s.select(dz, s.splat(1.0), d)));
    for j in 0..QK {
        let v = s.load(&l.x[j * w..]);
        let q = if spec.is_q8() {
            clamp(s, s.round_away(nan_to(s, s.mul(v, id), 0.0)), -127.0, 127.0)
        } else if spec.has_min {
            let t = nan_to(s, s.add(s.mul(s.sub(v, m), id), s.splat(0.5)), 0.0);
            clamp(s, s.trunc(t), 0.0, spec.cmax)
        } else {
            let t = nan_to(s, s.add(s.mul(v, id), s.splat(spec.zero + 0.5)), spec.zero);
            s.sub(clamp(s, s.trunc(t), 0.0, spec.cmax), s.splat(spec.zero))
        };
        s.store(&mut l.lv0[j * w..], q);
    }
    (d, m)
}

/// `sum_j w_j (x_j - x̂_j)^2` per lane (`reference::block_error`).
#[inline(always)]
fn error_lanes<S: Simd>(s: S, has_min: bool, l: &Lanes, lv: &[f32], d: S::F, m: S::F) -> S::F {
    let w = S::W;
    let mut e = s.splat(0.0);
    for j in 0..QK {
        let v = s.load(&l.x[j * w..]);
        let wv = s.load(&l.w[j * w..]);
        let q = s.load(&lv[j * w..]);
        let r = if has_min { s.add(s.mul(d, q), m) } else { s.mul(d, q) };
        let diff = s.sub(v, r);
        e = s.add(e, s.mul(wv, s.mul(diff, diff)));
    }
    e
}

/// Lanes rounded to f16 and back; non-finite results become 0 and clear `valid`.
#[inline(always)]
pub(crate) fn f16_round_lanes<S: Simd>(s: S, v: S::F, valid: &mut [f32; MAX_W]) -> S::F {
    let mut a = [0.0f32; MAX_W];
    s.store(&mut a, v);
    for (x, ok) in a.iter_mut().zip(valid.iter_mut()).take(S::W) {
        let r = f16_round(*x);
        if r.is_finite() {
            *x = r;
        } else {
            *x = 0.0;
            *ok = 0.0;
        }
    }
    s.load(&a)
}

/// Quantize a row with importance, lane-per-block (see the module docs).
#[inline(always)]
fn quantize_imp<S: Simd>(s: S, spec: &Spec, x: &[f32], dst: &mut [u8], imp: &[f32]) {
    let w = S::W;
    let nb = x.len() / QK;
    let sigma2 = reference::row_sigma2(x);
    let mut l = Lanes {
        x: [0.0; QK * MAX_W],
        w: [0.0; QK * MAX_W],
        lv0: [0.0; QK * MAX_W],
        lv1: [0.0; QK * MAX_W],
        cand: [0.0; QK * MAX_W],
    };
    let mut wb = [0.0f32; QK];
    for g in (0..nb).step_by(w) {
        let nl = (nb - g).min(w);
        for b in 0..w {
            if b < nl {
                let xb = &x[(g + b) * QK..(g + b + 1) * QK];
                reference::block_weights(xb, &imp[(g + b) * QK..(g + b + 1) * QK], sigma2, &mut wb);
                for j in 0..QK {
                    l.x[j * w + b] = xb[j];
                    l.w[j * w + b] = wb[j];
                }
            } else {
                for j in 0..QK {
                    l.x[j * w + b] = 0.0;
                    l.w[j * w + b] = 0.0;
                }
            }
        }
        let (d1, m1, max) = if spec.has_min {
            let (d, m) = search_asym_lanes(s, &mut l, spec.cmax);
            (d, m, s.splat(0.0))
        } else {
            let (nmax, lo, hi) = spec.sym_levels();
            let (d, max) = search_sym_lanes(s, &mut l, nmax, lo, hi);
            (d, s.splat(0.0), max)
        };
        let (d0, m0) = rtn_lanes(s, spec, &mut l, max);
        let mut ok0 = [1.0f32; MAX_W];
        let (dh0, mh0) = (f16_round_lanes(s, d0, &mut ok0), f16_round_lanes(s, m0, &mut ok0));
        let e0 = error_lanes(s, spec.has_min, &l, &l.lv0, dh0, mh0);
        let mut ok1 = [1.0f32; MAX_W];
        let (dh1, mh1) = (f16_round_lanes(s, d1, &mut ok1), f16_round_lanes(s, m1, &mut ok1));
        let e1 = error_lanes(s, spec.has_min, &l, &l.lv1, dh1, mh1);
        let take = s.mand(s.eq(s.load(&ok1), s.splat(1.0)), s.lt(e1, e0));
        let (mut dv, mut mv) = ([0.0f32; MAX_W], [0.0f32; MAX_W]);
        s.store(&mut dv, s.select(take, dh1, dh0));
        s.store(&mut mv, s.select(take, mh1, mh0));
        let mut levels = [0i32; QK * MAX_W];
        for j in 0..QK {
            let r = j * w..;
            let q = s.select(take, s.load(&l.lv1[r.clone()]), s.load(&l.lv0[r.clone()]));
            s.store_i32(&mut levels[r], s.to_i32(q));
        }
        let bb = spec.block_bytes;
        for b in 0..nl {
            let mut codes = [0u8; QK];
            for (j, c) in codes.iter_mut().enumerate() {
                *c = reference::code_of(spec, levels[j * w + b] as f32);
            }
            pack_block(spec, dv[b], mv[b], &codes, &mut dst[(g + b) * bb..(g + b + 1) * bb]);
        }
    }
}

/// Generic SIMD quantization of one row of a legacy type (see [`crate::blocks::legacy`]);
/// bit-identical to the scalar reference at every lane count. `x.len()` is a multiple of 32,
/// `dst` holds `x.len() / 32` blocks, `importance` (if any) has `x.len()` values.
#[inline(always)]
pub fn quantize_row_simd<S: Simd>(s: S, qtype: QType, x: &[f32], dst: &mut [u8], importance: Option<&[f32]>) {
    let Some(spec) = Spec::of(qtype) else { return };
    if !supported::<S>() {
        return reference::quantize_row(qtype, x, dst, importance);
    }
    match importance {
        None => {
            for (xb, out) in x.chunks_exact(QK).zip(dst.chunks_exact_mut(spec.block_bytes)) {
                rtn_block(s, &spec, xb, out);
            }
        }
        Some(imp) => quantize_imp(s, &spec, x, dst, imp),
    }
}

/// Generic SIMD dequantization of one row of a legacy type: `src` holds `y.len() / 32` blocks.
/// Bit-identical to the scalar reference (and to ggml / gguf).
#[inline(always)]
pub fn dequantize_row_simd<S: Simd>(s: S, qtype: QType, src: &[u8], y: &mut [f32]) {
    let Some(spec) = Spec::of(qtype) else { return };
    if !supported::<S>() {
        return reference::dequantize_row(qtype, src, y);
    }
    let w = S::W;
    let lane_bits = s.load_i32(&LANE_BITS);
    let i15 = s.isplat(15);
    let neg_zero = s.isplat(-(spec.zero as i32));
    for (b, yb) in src.chunks_exact(spec.block_bytes).zip(y.chunks_exact_mut(QK)) {
        let d = s.splat(half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32());
        let qs = &b[spec.off_qs..];
        if spec.is_q8() {
            for k in (0..QK).step_by(w) {
                s.store(&mut yb[k..], s.mul(s.to_f32(s.load_i8(&qs[k..])), d));
            }
            continue;
        }
        let m = if spec.has_min { half::f16::from_bits(u16::from_le_bytes([b[2], b[3]])).to_f32() } else { 0.0 };
        let m = s.splat(m);
        let qh = spec.off_qh.map_or(0, |o| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]));
        for k in (0..QK / 2).step_by(w) {
            let q = s.load_u8(&qs[k..]);
            let mut lo = s.iand(q, i15);
            let mut hi = s.shr(q, 4);
            if spec.off_qh.is_some() {
                lo = s.ior(lo, high_bits(s, qh >> k, lane_bits));
                hi = s.ior(hi, high_bits(s, qh >> (QK / 2 + k), lane_bits));
            }
            let (lo, hi) = (s.to_f32(s.iadd(lo, neg_zero)), s.to_f32(s.iadd(hi, neg_zero)));
            let (lo, hi) = if spec.has_min {
                (s.add(s.mul(lo, d), m), s.add(s.mul(hi, d), m))
            } else {
                (s.mul(lo, d), s.mul(hi, d))
            };
            s.store(&mut yb[k..], lo);
            s.store(&mut yb[QK / 2 + k..], hi);
        }
    }
}

struct Quantize<'a> {
    qtype: QType,
    x: &'a [f32],
    dst: &'a mut [u8],
    importance: Option<&'a [f32]>,
}

impl Kernel for Quantize<'_> {
    type Output = ();
    fn scalar(self) {
        reference::quantize_row(self.qtype, self.x, self.dst, self.importance)
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) {
        quantize_row_simd(s, self.qtype, self.x, self.dst, self.importance)
    }
}

struct Dequantize<'a> {
    qtype: QType,
    src: &'a [u8],
    y: &'a mut [f32],
}

impl Kernel for Dequantize<'_> {
    type Output = ();
    fn scalar(self) {
        reference::dequantize_row(self.qtype, self.src, self.y)
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) {
        dequantize_row_simd(s, self.qtype, self.src, self.y)
    }
}

/// Quantize one row (see `blocks` for the contract).
pub fn quantize_row(isa: Isa, qtype: QType, x: &[f32], dst: &mut [u8], importance: Option<&[f32]>) {
    crate::simd::run(isa, Quantize { qtype, x, dst, importance })
}

/// Dequantize one row.
pub fn dequantize_row(isa: Isa, qtype: QType, src: &[u8], y: &mut [f32]) {
    crate::simd::run(isa, Dequantize { qtype, src, y })
}
