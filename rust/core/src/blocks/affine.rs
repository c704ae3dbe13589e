//! Scalar reference of the group-affine family: int2, int3, int4, int8 with one f16 scale per
//! group (and one packed zero code per group when asymmetric). The row layout is specified at
//! [`AffineSpec::row_bytes`]; the packing in [`crate::pack`].
//!
//! # Quantization (GPTQ / AutoGPTQ conventions)
//! Reference: GPTQ's `Quantizer.find_params` / `quantize` (Frantar et al., "GPTQ", 2022,
//! `quant.py`) and AutoGPTQ's packing. Per group of values `x` with `maxq = 2^bits − 1`:
//! * range: `[lo, hi] = [min(min x, 0), max(max x, 0)]`, both ends times the clip ratio; or the
//!   caller's explicit `(min, max)` of the group, widened to include 0 (no clip ratio then);
//! * asymmetric: `s = (hi − lo) / maxq`; symmetric: `s = (amax + amax) / maxq` with
//!   `amax = max(|lo|, |hi|)` and the fixed zero point `2^(bits−1)` (GPTQ's `(maxq + 1) / 2`);
//! * the stored scale `d` is `s` converted to f16 **rounding up** (the smallest f16 `>= s`, see
//!   [`f16_scale`]), and every code is computed with that `d`, so what is decoded is what was
//!   chosen;
//! * asymmetric zero point: `z = clamp(round_even(−lo / d), 0, maxq)`;
//! * code: `q = clamp(round_even(x / d) + z, 0, maxq)`, in f32: one correctly rounded
//!   division (not a multiplication by `1/d`, which rounds differently at ties), ties to even
//!   as `torch.round`, then the clamp;
//! * a group whose range is all zero (or whose `s` underflows f32 to 0, e.g. denormal inputs)
//!   stores scale 0; its codes are computed with divisor 1 (GPTQ's "scale 1 for all-zero rows"),
//!   which makes every code equal to the zero point, so it dequantizes to exactly +0.0.
//!   Because the scale rounds *up*, a nonzero `s` never becomes a zero f16: tiny groups get the
//!   smallest f16 subnormal (2^−24) as scale and their codes are the zero point as well.
//!
//! Dequantization: `y = d * ((q − z) as f32)` (the product is exact: an 11-bit f16 mantissa times
//! an integer of at most 9 bits).
//!
//! Why round the scale up rather than to nearest: with `d >= s` the grid
//! `{d * (k − z) : 0 <= k <= maxq}` covers `[lo, hi]` to within `d / 2` at both ends, so every
//! value inside the range is reproduced with error `<= d / 2` (up to the f32 rounding of one
//! division) — the bound the tests assert. Rounding to nearest can make `d < s` by up to 2^−11
//! relative, which clamps the top of the range by up to `maxq * 2^−12 * d` (0.06 d for int8).
//! The cost is a scale at most 2^−10 larger than nearest.
//!
//! # Clip search with importance
//! With a per-column importance vector (and no explicit range), each group tries the clip ratios
//! `clip_ratio * (40 − i) / 40` for `i = 0..=20` (1.0 down to 0.5 in 20 steps, as AWQ's
//! `auto_clip` and GPTQ's `mse` grid do) and keeps the one with the smallest importance-weighted
//! squared error `Σ w_j (dequant(q_j) − x_j)²`, summed in column order in f32; ties keep the
//! larger ratio. Ratio 1.0 (times `clip_ratio`) is a candidate, so the search is never worse than
//! plain min-max by its own measure.

use half::f16;

use crate::blocks::AffineRow;
use crate::pack;
use crate::qtype::AffineSpec;

/// Steps of the clip-ratio search grid (21 candidates from 1.0 down to 0.5).
pub const CLIP_STEPS: usize = 20;
/// Number of candidates of the clip-ratio search.
pub const CLIP_CANDIDATES: usize = CLIP_STEPS + 1;

/// The `i`-th clip ratio of the importance search: `clip_ratio * (40 − i) / 40`, i in
/// `0..CLIP_CANDIDATES` (so `(40 − i) / 40` runs 1.0, 0.975, ..., 0.5, each correctly rounded).
#[inline]
pub fn clip_candidate(clip_ratio: f32, i: usize) -> f32 {
    clip_ratio * ((2 * CLIP_STEPS - i) as f32 / (2 * CLIP_STEPS) as f32)
}

/// The smallest f16 that is `>= s`, for a finite `s >= 0`; saturates at f16::MAX (65504),
/// which the type table's `max_abs` keeps out of reach. Returns 0 only for `s == 0`.
#[inline(always)]
pub fn f16_scale(s: f32) -> f16 {
    let h = f16::from_f32(s);
    // Positive finite f16 bit patterns are ordered like their values: +1 is the next f16 up.
    let bits = if h.to_f32() < s { h.to_bits() + 1 } else { h.to_bits() };
    f16::from_bits(bits.min(f16::MAX.to_bits()))
}

/// The quantization parameters of one group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupParams {
    /// The stored scale, f16 bits.
    pub scale_bits: u16,
    /// The stored scale as f32 (exact).
    pub scale: f32,
    /// Divisor of the codes: `scale`, or 1.0 where `scale == 0`.
    pub div: f32,
    /// Zero point code (`2^(bits−1)` when symmetric).
    pub zero: u8,
    /// `zero` as f32.
    pub zero_f: f32,
}

/// Parameters of a group whose (already clipped) range is `[lo, hi]`, `lo <= 0 <= hi`, both
/// finite with `|lo|, |hi| <=` the type's `max_abs`. Plain scalar code shared by the reference
/// and the SIMD kernels (it runs once per group; `#[inline]` so it compiles inside each ISA's
/// `#[target_feature]` context, where rounding and the f16 conversion are single instructions).
#[inline(always)]
pub fn group_params(bits: u32, symmetric: bool, lo: f32, hi: f32) -> GroupParams {
    let maxq = ((1u32 << bits) - 1) as f32;
    let s = if symmetric {
        let amax = if -lo > hi { -lo } else { hi };
        (amax + amax) / maxq
    } else {
        (hi - lo) / maxq
    };
    let h = f16_scale(s);
    let scale = h.to_f32();
    let div = if scale == 0.0 { 1.0 } else { scale };
    let zero = if symmetric {
        1u8 << (bits - 1)
    } else {
        let z = (-lo / div).round_ties_even();
        // `-lo / div <= maxq` in exact arithmetic; the clamp guards the f32 rounding.
        (if z > maxq {
            maxq
        } else if z > 0.0 {
            z
        } else {
            0.0
        }) as u8
    };
    GroupParams { scale_bits: h.to_bits(), scale, div, zero, zero_f: f32::from(zero) }
}

/// The code of `x` (see the module doc): `clamp(round_even(x / div) + zero, 0, maxq)`, all in f32.
#[inline]
pub fn quantize_value(x: f32, p: &GroupParams, maxq: f32) -> u8 {
    let q = (x / p.div).round_ties_even() + p.zero_f;
    let q = if q < 0.0 { 0.0 } else { q };
    let q = if q > maxq { maxq } else { q };
    q as u8
}

/// `[min(min x, 0), max(max x, 0)]` of a group, with −0.0 normalised to +0.0.
pub fn data_range(xs: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = (0.0f32, 0.0f32);
    for &v in xs {
        if v < lo {
            lo = v;
        }
        if v > hi {
            hi = v;
        }
    }
    (lo + 0.0, hi + 0.0)
}

/// The explicit range `(min, max)` widened to include 0, −0.0 normalised to +0.0.
pub fn explicit_range(min: f32, max: f32) -> (f32, f32) {
    let lo = if min < 0.0 { min } else { 0.0 };
    let hi = if max > 0.0 { max } else { 0.0 };
    (lo + 0.0, hi + 0.0)
}

/// Importance-weighted squared error of quantizing `xs` with `p`:
/// `Σ_j w_j * (r_j * r_j)` with `r_j = scale * (q_j − zero) − x_j`, summed in order in f32.
pub fn weighted_error(xs: &[f32], ws: &[f32], p: &GroupParams, maxq: f32) -> f32 {
    let mut err = 0.0f32;
    for (&x, &w) in xs.iter().zip(ws) {
        let q = f32::from(quantize_value(x, p, maxq));
        let r = p.scale * (q - p.zero_f) - x;
        err += w * (r * r);
    }
    err
}

/// Index of the smallest of the candidates' weighted errors; the first (larger ratio) wins ties.
pub fn pick_best(errors: &[f32]) -> usize {
    let mut best = 0;
    for (i, &e) in errors.iter().enumerate().skip(1) {
        if e < errors[best] {
            best = i;
        }
    }
    best
}

/// The parameters of group `gi` (values `xs`, importance `ws` of the same columns if any).
fn choose_params(p: &AffineRow<'_>, gi: usize, xs: &[f32], ws: Option<&[f32]>) -> GroupParams {
    let AffineSpec { bits, symmetric, .. } = p.spec;
    if let Some((mins, maxs)) = p.range {
        let (lo, hi) = explicit_range(mins[gi], maxs[gi]);
        return group_params(bits, symmetric, lo, hi);
    }
    let (lo, hi) = data_range(xs);
    let Some(ws) = ws else {
        return group_params(bits, symmetric, lo * p.clip_ratio, hi * p.clip_ratio);
    };
    let maxq = p.spec.max_code() as f32;
    let mut cands = [group_params(bits, symmetric, lo, hi); CLIP_CANDIDATES];
    let mut errors = [0f32; CLIP_CANDIDATES];
    for (i, (c, e)) in cands.iter_mut().zip(errors.iter_mut()).enumerate() {
        let r = clip_candidate(p.clip_ratio, i);
        *c = group_params(bits, symmetric, lo * r, hi * r);
        *e = weighted_error(xs, ws, c, maxq);
    }
    cands[pick_best(&errors)]
}

/// Byte offsets of a row's parts: (codes length, scales offset, zeros offset).
fn parts(spec: &AffineSpec, cols: usize) -> (usize, usize, usize) {
    let code_bytes = cols * spec.bits as usize / 8;
    (code_bytes, code_bytes, code_bytes + 2 * spec.groups(cols))
}

/// Quantize one row `x` (length a multiple of 8) into `dst` (exactly
/// `p.spec.row_bytes(x.len())` bytes, all written). `importance`, if given, has `x.len()`
/// non-negative finite weights and turns on the clip search (ignored with an explicit range).
pub fn quantize_row_ref(x: &[f32], dst: &mut [u8], p: &AffineRow<'_>, importance: Option<&[f32]>) {
    let spec = p.spec;
    let cols = x.len();
    let g = spec.group_cols(cols);
    let maxq = spec.max_code() as f32;
    let (code_bytes, scale_off, zero_off) = parts(&spec, cols);
    let mut codes = vec![0u8; cols];
    let mut zeros = Vec::with_capacity(spec.groups(cols));
    for (gi, xs) in x.chunks(g).enumerate() {
        let first = gi * g;
        let ws = importance.map(|w| &w[first..first + xs.len()]);
        let params = choose_params(p, gi, xs, ws);
        dst[scale_off + 2 * gi..scale_off + 2 * gi + 2].copy_from_slice(&params.scale_bits.to_le_bytes());
        zeros.push(params.zero);
        for (c, &v) in codes[first..first + xs.len()].iter_mut().zip(xs) {
            *c = quantize_value(v, &params, maxq);
        }
    }
    pack::pack_codes(spec.bits, &codes, &mut dst[..code_bytes]);
    if !spec.symmetric {
        pack::pack_codes(spec.bits, &zeros, &mut dst[zero_off..]);
    }
}

/// Dequantize one row: `src` is `spec.row_bytes(y.len())` bytes, `y` receives the values.
/// Any bytes decode (a NaN/Inf f16 scale gives NaN/Inf values) without panicking.
pub fn dequantize_row_ref(spec: &AffineSpec, src: &[u8], y: &mut [f32]) {
    let cols = y.len();
    let g = spec.group_cols(cols);
    let (code_bytes, scale_off, zero_off) = parts(spec, cols);
    let mut codes = vec![0u8; cols];
    pack::unpack_codes(spec.bits, &src[..code_bytes], &mut codes);
    let mut zeros = vec![1u8 << (spec.bits - 1); spec.groups(cols)];
    if !spec.symmetric {
        pack::unpack_codes(spec.bits, &src[zero_off..], &mut zeros);
    }
    for (gi, (ys, cs)) in y.chunks_mut(g).zip(codes.chunks(g)).enumerate() {
        let d = f16::from_bits(u16::from_le_bytes([src[scale_off + 2 * gi], src[scale_off + 2 * gi + 1]])).to_f32();
        let z = i32::from(zeros[gi]);
        for (v, &c) in ys.iter_mut().zip(cs) {
            *v = d * ((i32::from(c) - z) as f32);
        }
    }
}
