//! Scalar reference of ggml's "legacy" 32-value block types: q8_0, q4_0, q4_1, q5_0, q5_1.
//!
//! # Layouts (byte-identical to ggml's `block_q*` in `ggml-common.h`; all little-endian)
//! | type | bytes | layout (byte offset: field) | value `j` dequantizes to |
//! |------|-------|-----------------------------|---------------------------|
//! | q8_0 | 34 | 0: `d` f16, 2: `qs` 32 × i8 | `qs[j] * d` |
//! | q4_0 | 18 | 0: `d` f16, 2: `qs` 16 B | `(q - 8) * d` |
//! | q4_1 | 20 | 0: `d` f16, 2: `m` f16, 4: `qs` 16 B | `q * d + m` |
//! | q5_0 | 22 | 0: `d` f16, 2: `qh` u32, 6: `qs` 16 B | `(q - 16) * d` |
//! | q5_1 | 24 | 0: `d` f16, 2: `m` f16, 4: `qh` u32, 8: `qs` 16 B | `q * d + m` |
//!
//! 4-bit codes: `qs[j]` holds value `j` in its low nibble and value `j + 16` in its high nibble
//! (`j < 16`). 5-bit codes: those nibbles are the low 4 bits; bit `j` of `qh` is bit 4 of value
//! `j` (`j < 32`).
//!
//! # Without importance: ggml's reference rounding, byte for byte
//! These are ggml's `quantize_row_q*_ref` (`ggml-quants.c`) and gguf-py's `quants.py`:
//! * q8_0: `d = amax / 127`, `id = d ? 1/d : 0`, code `roundf(x * id)` (ties away from zero);
//! * q4_0 / q5_0: `max` = the first value of largest magnitude (`+0.0` for an all-zero block),
//!   `d = max / -8` (`/ -16`), code `min(15, trunc(x * id + 8.5))` (`31`, `16.5`);
//! * q4_1 / q5_1: `min`/`max` of the block (the first occurrence, so the sign of a zero `min` is
//!   the first zero's), `d = (max - min) / 15` (`/ 31`), code `min(15, trunc((x - min) * id + 0.5))`.
//!
//! ggml leaves one case undefined (C float→int conversion of ±inf/NaN): blocks so tiny that
//! `1/d` overflows to infinity (`|d| < 2^-128`). Here the code of `x * id + offset` is then
//! clamped to the code range, and NaN (`0 × ∞`, a value at zero offset) takes the code of a zero
//! offset (q8_0: 0, q4_0: 8, q5_0: 16, q4_1/q5_1: 0). The stored `d` of such a block is 0 in
//! f16, so every value dequantizes to 0 (or `m`) either way. gguf's numpy quantizer differs from
//! ggml for an all-zero q4_0/q5_0 block whose first value is `-0.0` (it stores `d = +0.0`, ggml
//! `-0.0`); we follow ggml.
//!
//! # With importance: ggml's weighted search, never worse than the plain rounding
//! Weights `w_j = importance_j * sqrt(sigma2 + x_j^2)` with `sigma2 = sum(x^2) / n` over the whole
//! row (summed in order), as ggml's `quantize_row_q*_impl`. Candidates:
//! * q4_0 / q5_0 / q8_0: ggml's `make_qx_quants(nmax, rmse_type = 1)`: round `x * iscale` to the
//!   nearest (ties even) level in `[-nmax, nmax - 1]` for `iscale = -(nmax + 0.1 * is) / max`,
//!   `is = 0, -9..=9`, keep the least-squares scale `sum(w x l) / sum(w l^2)` of the best. ggml has
//!   no importance path for q8_0; we run the same search with `nmax = 127` and levels
//!   `[-127, 127]` (the range of its reference rounding).
//! * q4_1 / q5_1: ggml's `make_qkx3_quants(nmax, rmin = -0.9, rdelta = 0.05, nstep = 36)`: 37
//!   scale candidates over `[min(min, 0), max]`, a weighted least-squares fit of scale and min for
//!   each (min clamped to <= 0), keep the one of least weighted squared error.
//!
//! The block stored is the search's result unless the plain rounding above (with its f16 scale)
//! has a weighted squared error `sum w_j (x_j - x̂_j)^2` that is lower or equal, both measured on
//! the values that dequantize from the stored f16 scale and min; a search result whose f16 scale
//! or min would overflow is never used. So a block with importance is never worse, in that
//! weighted error, than the same block without.

use half::f16;

use crate::qtype::QType;

/// Values per block of every legacy type.
pub const QK: usize = 32;

/// ggml's `GROUP_MAX_EPS`: a block whose largest magnitude is below this is all zeros for the
/// importance search.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// Geometry and rounding constants of one legacy type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    /// The type.
    pub qtype: QType,
    /// Bytes per block (34, 18, 20, 22, 24).
    pub block_bytes: usize,
    /// Whether the block stores a min `m` (q4_1, q5_1) after `d`.
    pub has_min: bool,
    /// Byte offset of the 32-bit `qh` (5-bit types).
    pub off_qh: Option<usize>,
    /// Byte offset of `qs`.
    pub off_qs: usize,
    /// Largest code (15, 31; q8_0: its largest level 127).
    pub cmax: f32,
    /// Code of a zero level: 8 (q4_0), 16 (q5_0), 0 otherwise. Symmetric types dequantize code
    /// `c` to `(c - zero) * d`.
    pub zero: f32,
}

impl Spec {
    /// The spec of a legacy type, `None` for other types.
    pub fn of(qtype: QType) -> Option<Spec> {
        let s = |block_bytes, has_min, off_qh, off_qs, cmax, zero| Spec {
            qtype,
            block_bytes,
            has_min,
            off_qh,
            off_qs,
            cmax,
            zero,
        };
        Some(match qtype {
            QType::Q8_0 => s(34, false, None, 2, 127.0, 0.0),
            QType::Q4_0 => s(18, false, None, 2, 15.0, 8.0),
            QType::Q4_1 => s(20, true, None, 4, 15.0, 0.0),
            QType::Q5_0 => s(22, false, Some(2), 6, 31.0, 16.0),
            QType::Q5_1 => s(24, true, Some(4), 8, 31.0, 0.0),
            _ => return None,
        })
    }

    /// Whether this is q8_0 (signed byte codes, `roundf`).
    pub fn is_q8(&self) -> bool {
        self.qtype == QType::Q8_0
    }

    /// The symmetric search's level range `[lo, hi]` and its `nmax` (q8_0: 127, [-127, 127];
    /// q4_0: 8, [-8, 7]; q5_0: 16, [-16, 15]).
    pub(crate) fn sym_levels(&self) -> (f32, f32, f32) {
        if self.is_q8() {
            (127.0, -127.0, 127.0)
        } else {
            (self.zero, -self.zero, self.zero - 1.0)
        }
    }
}

/// `v` rounded to f16 and back (the value a stored scale or min dequantizes to).
#[inline]
pub(crate) fn f16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// Code of the plain (no importance) rounding for an offset-and-scaled value `t` (already
/// `x * id + offset`): NaN takes `nan_code`, then `trunc` clamped to `[0, cmax]`.
#[inline]
fn trunc_code(t: f32, nan_code: f32, cmax: f32) -> f32 {
    let t = if t.is_nan() { nan_code } else { t };
    t.trunc().max(0.0).min(cmax)
}

/// Write `d` (and `m`) as f16 and the 32 codes (`codes[j]` = stored code: 0..=cmax, or the
/// two's-complement byte for q8_0) into one block `out` of `spec.block_bytes` bytes.
pub(crate) fn pack_block(spec: &Spec, d: f32, m: f32, codes: &[u8; QK], out: &mut [u8]) {
    out[0..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
    if spec.has_min {
        out[2..4].copy_from_slice(&f16::from_f32(m).to_bits().to_le_bytes());
    }
    let qs = &mut out[spec.off_qs..];
    if spec.is_q8() {
        qs[..QK].copy_from_slice(codes);
        return;
    }
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let (a, b) = (codes[j], codes[j + QK / 2]);
        qs[j] = (a & 0x0F) | ((b & 0x0F) << 4);
        qh |= u32::from((a >> 4) & 1) << j;
        qh |= u32::from((b >> 4) & 1) << (j + QK / 2);
    }
    if let Some(o) = spec.off_qh {
        out[o..o + 4].copy_from_slice(&qh.to_le_bytes());
    }
}

/// ggml's reference rounding of one block (see the module docs): returns `(d, m, codes)` with
/// `d`, `m` before their f16 conversion (`m = 0` for symmetric types).
pub(crate) fn rtn_block(spec: &Spec, xb: &[f32]) -> (f32, f32, [u8; QK]) {
    let mut codes = [0u8; QK];
    if spec.is_q8() {
        let mut amax = 0.0f32;
        for &v in xb {
            amax = if amax > v.abs() { amax } else { v.abs() };
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (c, &v) in codes.iter_mut().zip(xb) {
            let t = v * id;
            let t = if t.is_nan() { 0.0 } else { t };
            *c = t.round().clamp(-127.0, 127.0) as i8 as u8;
        }
        (d, 0.0, codes)
    } else if !spec.has_min {
        let nmax = spec.zero;
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -nmax;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (c, &v) in codes.iter_mut().zip(xb) {
            *c = trunc_code(v * id + (nmax + 0.5), nmax, spec.cmax) as u8;
        }
        (d, 0.0, codes)
    } else {
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in xb {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / spec.cmax;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (c, &v) in codes.iter_mut().zip(xb) {
            *c = trunc_code((v - min) * id + 0.5, 0.0, spec.cmax) as u8;
        }
        (d, min, codes)
    }
}

/// The level (dequantized value / d, before adding `m`) of a stored code.
#[inline]
pub(crate) fn level_of(spec: &Spec, c: u8) -> f32 {
    if spec.is_q8() {
        f32::from(c as i8)
    } else {
        f32::from(c) - spec.zero
    }
}

/// The stored code of a level.
#[inline]
pub(crate) fn code_of(spec: &Spec, l: f32) -> u8 {
    if spec.is_q8() {
        l as i8 as u8
    } else {
        (l + spec.zero) as u8
    }
}

/// ggml's `make_qx_quants(n = 32, nmax, L, rmse_type = 1, qw = w)` with the level range
/// `[lo, hi]`: returns the scale and the levels. See the module docs.
pub(crate) fn search_sym(xb: &[f32], wb: &[f32], nmax: f32, lo: f32, hi: f32) -> (f32, [f32; QK]) {
    let mut levels = [lo; QK];
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in xb {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return (0.0, levels);
    }
    let pass = |iscale: f32, out: &mut [f32; QK]| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for j in 0..QK {
            let l = (iscale * xb[j]).round_ties_even().max(lo).min(hi);
            out[j] = l;
            sumlx += wb[j] * xb[j] * l;
            suml2 += wb[j] * l * l;
        }
        (sumlx, suml2)
    };
    let (sumlx, suml2) = pass(-nmax / max, &mut levels);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    let mut cand = [0.0f32; QK];
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let (sumlx, suml2) = pass(-(nmax + 0.1 * is as f32) / max, &mut cand);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            levels = cand;
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    (scale, levels)
}

/// ggml's `make_qkx3_quants(n = 32, nmax, weights = w, rmin = -0.9, rdelta = 0.05, nstep = 36,
/// use_mad = false)`: returns `(scale, min, levels)` (ggml returns `-min` as `the_min`).
pub(crate) fn search_asym(xb: &[f32], wb: &[f32], nmax: f32) -> (f32, f32, [f32; QK]) {
    let mut levels = [0.0f32; QK];
    let (mut min, mut max) = (xb[0], xb[0]);
    let mut sum_w = wb[0];
    let mut sum_x = sum_w * xb[0];
    for j in 1..QK {
        if xb[j] < min {
            min = xb[j];
        }
        if xb[j] > max {
            max = xb[j];
        }
        sum_w += wb[j];
        sum_x += wb[j] * xb[j];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        return (0.0, min, levels);
    }
    let iscale = nmax / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0.0f32;
    for j in 0..QK {
        let l = (iscale * (xb[j] - min)).round_ties_even().max(0.0).min(nmax);
        levels[j] = l;
        let diff = scale * l + min - xb[j];
        best += wb[j] * (diff * diff);
    }
    let mut cand = [0.0f32; QK];
    for is in 0..=36 {
        // ggml divides by the range to the *current* best min, which the loop updates. A
        // zero range (measure-zero, undefined in ggml) gives iscale 0: all levels 0, no fit.
        let range = max - min;
        let iscale = if range != 0.0 { (-0.9 + 0.05 * is as f32 + nmax) / range } else { 0.0 };
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for j in 0..QK {
            let l = (iscale * (xb[j] - min)).round_ties_even().max(0.0).min(nmax);
            cand[j] = l;
            sum_l += wb[j] * l;
            sum_l2 += wb[j] * l * l;
            sum_xl += wb[j] * l * xb[j];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut err = 0.0f32;
            for j in 0..QK {
                let diff = this_scale * cand[j] + this_min - xb[j];
                err += wb[j] * (diff * diff);
            }
            if err < best {
                levels = cand;
                best = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, min, levels)
}

/// Weighted squared error `sum_j w_j (x_j - (d l_j + m))^2` of a block (symmetric types:
/// `x_j - d l_j`), summed in order.
pub(crate) fn block_error(has_min: bool, xb: &[f32], wb: &[f32], d: f32, m: f32, levels: &[f32; QK]) -> f32 {
    let mut e = 0.0f32;
    for j in 0..QK {
        let v = if has_min { d * levels[j] + m } else { d * levels[j] };
        let diff = xb[j] - v;
        e += wb[j] * (diff * diff);
    }
    e
}

/// ggml's `sigma2` of a row: `sum(x^2) / n`, summed in order.
pub(crate) fn row_sigma2(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s / x.len() as f32
}

/// The weights of one block: `w_j = imp_j * sqrt(sigma2 + x_j^2)` (elementwise, correctly
/// rounded sqrt, so identical however it is compiled).
pub(crate) fn block_weights(xb: &[f32], ib: &[f32], sigma2: f32, wb: &mut [f32; QK]) {
    for j in 0..QK {
        wb[j] = ib[j] * (sigma2 + xb[j] * xb[j]).sqrt();
    }
}

/// Quantize one block with importance weights `wb` into `out` (see the module docs).
fn imp_block(spec: &Spec, xb: &[f32], wb: &[f32; QK], out: &mut [u8]) {
    let (d0, m0, codes0) = rtn_block(spec, xb);
    let mut lv0 = [0.0f32; QK];
    for j in 0..QK {
        lv0[j] = level_of(spec, codes0[j]);
    }
    let (dh0, mh0) = (f16_round(d0), f16_round(m0));
    let e0 = block_error(spec.has_min, xb, wb, dh0, mh0, &lv0);

    let (d1, m1, lv1) = if spec.has_min {
        search_asym(xb, wb, spec.cmax)
    } else {
        let (nmax, lo, hi) = spec.sym_levels();
        let (d, lv) = search_sym(xb, wb, nmax, lo, hi);
        (d, 0.0, lv)
    };
    let (dh1, mh1) = (f16_round(d1), f16_round(m1));
    let valid = dh1.is_finite() && mh1.is_finite();
    let (dh1, mh1) = if valid { (dh1, mh1) } else { (0.0, 0.0) };
    let e1 = block_error(spec.has_min, xb, wb, dh1, mh1, &lv1);

    if valid && e1 < e0 {
        let mut codes = [0u8; QK];
        for j in 0..QK {
            codes[j] = code_of(spec, lv1[j]);
        }
        pack_block(spec, dh1, mh1, &codes, out);
    } else {
        pack_block(spec, d0, m0, &codes0, out);
    }
}

/// Quantize one row `x` (length a multiple of 32) of `qtype` into `dst` (`x.len() / 32 *
/// block_bytes` bytes), with per-column `importance` (same length as `x`) if given. Other
/// types leave `dst` untouched.
pub fn quantize_row(qtype: QType, x: &[f32], dst: &mut [u8], importance: Option<&[f32]>) {
    let Some(spec) = Spec::of(qtype) else { return };
    let blocks = x.chunks_exact(QK).zip(dst.chunks_exact_mut(spec.block_bytes));
    match importance {
        None => {
            for (xb, out) in blocks {
                let (d, m, codes) = rtn_block(&spec, xb);
                pack_block(&spec, d, m, &codes, out);
            }
        }
        Some(imp) => {
            let sigma2 = row_sigma2(x);
            let mut wb = [0.0f32; QK];
            for ((xb, out), ib) in blocks.zip(imp.chunks_exact(QK)) {
                block_weights(xb, ib, sigma2, &mut wb);
                imp_block(&spec, xb, &wb, out);
            }
        }
    }
}

/// Dequantize one row of `qtype` blocks `src` into `y` (`y.len()` values, a multiple of 32),
/// exactly as ggml's `dequantize_row_q*` and gguf's `dequantize`.
pub fn dequantize_row(qtype: QType, src: &[u8], y: &mut [f32]) {
    let Some(spec) = Spec::of(qtype) else { return };
    for (b, yb) in src.chunks_exact(spec.block_bytes).zip(y.chunks_exact_mut(QK)) {
        let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        let m = if spec.has_min { f16::from_bits(u16::from_le_bytes([b[2], b[3]])).to_f32() } else { 0.0 };
        let qs = &b[spec.off_qs..];
        if spec.is_q8() {
            for (v, &q) in yb.iter_mut().zip(qs) {
                *v = f32::from(q as i8) * d;
            }
            continue;
        }
        let qh = spec.off_qh.map_or(0, |o| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]));
        for j in 0..QK {
            let nib = if j < QK / 2 { qs[j] & 0x0F } else { qs[j - QK / 2] >> 4 };
            let c = i32::from(nib) | ((((qh >> j) & 1) as i32) << 4);
            let l = (c - spec.zero as i32) as f32;
            yb[j] = if spec.has_min { l * d + m } else { l * d };
        }
    }
}
