//! The super-block quantizers of the k-quants (scalar reference). Each function quantizes one
//! 256-value super-block into one ggml block; see the module docs of `blocks::kquants` for the
//! steps and `search` for the sub-block searches.
#![allow(clippy::needless_range_loop)]

use half::f16;

use super::layout;
use super::search::{code, eps_for, make_q3, make_qkx, make_qp, make_qx, refine_affine, refine_symmetric, Qkx};
use super::{Mode, QK_K};

/// `(s, 1/s)`, powers of two such that `amax · s` lies in [1, 2) (`s = 2^127` when `amax` is
/// zero or sub-normal). `amax` is finite and ≥ 0.
pub(crate) fn normalizer(amax: f32) -> (f32, f32) {
    let e = ((amax.to_bits() >> 23) & 0xff) as i32;
    let k = 127 - e;
    (pow2(k), pow2(-k))
}

/// 2^k for k in −127..=127 (2^−127 is sub-normal, still exact).
fn pow2(k: i32) -> f32 {
    if k >= -126 {
        f32::from_bits(((k + 127) as u32) << 23)
    } else {
        f32::from_bits(1 << 22)
    }
}

/// f32 → f16 bits, round to nearest even, saturating at ±65504 instead of becoming ±Inf.
pub(crate) fn f16_sat(v: f32) -> u16 {
    f16::from_f32(v.clamp(-65504.0, 65504.0)).to_bits()
}

fn f16_val(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

fn put_f16(out: &mut [u8], at: usize, bits: u16) {
    out[at..at + 2].copy_from_slice(&bits.to_le_bytes());
}

/// Largest |x| (exact).
fn abs_max(x: &[f32]) -> f32 {
    let mut m = 0f32;
    for &v in x {
        if v.abs() > m {
            m = v.abs();
        }
    }
    m
}

/// A normalised super-block: the scaled values, the factors, and the scaled importance.
struct Norm {
    xs: [f32; QK_K],
    s: f32,
    inv_s: f32,
    qw: Option<[f32; QK_K]>,
}

fn normalise(x: &[f32], imp: Option<&[f32]>) -> Norm {
    let (s, inv_s) = normalizer(abs_max(x));
    let mut xs = [0f32; QK_K];
    for (o, &v) in xs.iter_mut().zip(x) {
        *o = v * s;
    }
    let qw = imp.map(|w| {
        let (t, _) = normalizer(abs_max(w));
        let mut q = [0f32; QK_K];
        for (o, &v) in q.iter_mut().zip(w) {
            *o = v * t;
        }
        q
    });
    Norm { xs, s, inv_s, qw }
}

/// ggml's importance weights `qw · sqrt(sigma2 + x²)` with `sigma2 = factor · Σx² / 256`, the
/// sum taken per sub-block of `n` values and then over sub-blocks; also the per-sub-block
/// weight sums `sw`.
fn importance_weights(xs: &[f32; QK_K], qw: &[f32; QK_K], n: usize, factor: f32, w: &mut [f32; QK_K], sw: &mut [f32]) {
    let mut total = 0f32;
    for sub in xs.chunks_exact(n) {
        let mut s = 0f32;
        for &v in sub {
            s += v * v;
        }
        total += s;
    }
    let sigma2 = factor * total / QK_K as f32;
    for i in 0..QK_K {
        w[i] = qw[i] * (sigma2 + xs[i] * xs[i]).sqrt();
    }
    for (j, sub) in w.chunks_exact(n).enumerate() {
        let mut s = 0f32;
        for &v in sub {
            s += v;
        }
        sw[j] = s;
    }
}

/// The integral f32 codes of `l` into `out` as bytes.
fn codes_u8(l: &[f32; QK_K]) -> [u8; QK_K] {
    let mut out = [0u8; QK_K];
    for (o, &v) in out.iter_mut().zip(l.iter()) {
        *o = v as u8;
    }
    out
}

/// Pack 2-bit codes as q2_k/q3_k `qs`: byte `32h + l` holds values `128h + 32s + l` at bits
/// `2s`.
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for h in 0..2 {
        for i in 0..32 {
            let v = |s: usize| (l[128 * h + 32 * s + i] & 3) << (2 * s);
            qs[32 * h + i] = v(0) | v(1) | v(2) | v(3);
        }
    }
}

/// q2_k: 16 sub-blocks of 16, 2-bit codes, 4-bit scales and mins.
pub(crate) fn quantize_q2k(x: &[f32], imp: Option<&[f32]>, mode: Mode, out: &mut [u8]) {
    use layout::q2k::*;
    let nb = normalise(x, imp);
    let xs = &nb.xs;
    let eps = eps_for(nb.s);
    let mut w = [0f32; QK_K];
    let mut sw = [0f32; 16];
    let p = match &nb.qw {
        None => {
            for i in 0..QK_K {
                w[i] = xs[i].abs();
            }
            Qkx { nmax: 3.0, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: true }
        }
        Some(qw) => {
            importance_weights(xs, qw, 16, 1.0, &mut w, &mut sw);
            Qkx { nmax: 3.0, rmin: -0.9, rdelta: 0.05, nstep: 36, use_mad: false }
        }
    };
    let mut l = [0f32; QK_K];
    let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
    for j in 0..16 {
        let r = make_qkx(&xs[16 * j..16 * j + 16], &w[16 * j..16 * j + 16], &p, &mut l[16 * j..16 * j + 16]);
        scales[j] = r.scale;
        mins[j] = r.the_min;
    }
    let (mut ls, mut lm) = ([0f32; 16], [0f32; 16]);
    let (d_blk, m_blk) = match &nb.qw {
        None => {
            let (mut max_scale, mut max_min) = (0f32, 0f32);
            for j in 0..16 {
                if scales[j] > max_scale {
                    max_scale = scales[j];
                }
                if mins[j] > max_min {
                    max_min = mins[j];
                }
            }
            let mut d_blk = 0.0;
            if max_scale > 0.0 {
                let iscale = 15.0 / max_scale;
                for j in 0..16 {
                    ls[j] = code(iscale * scales[j], 0.0, 15.0);
                }
                d_blk = max_scale / 15.0;
            }
            let mut m_blk = 0.0;
            if max_min > 0.0 {
                let iscale = 15.0 / max_min;
                for j in 0..16 {
                    lm[j] = code(iscale * mins[j], 0.0, 15.0);
                }
                m_blk = max_min / 15.0;
            }
            (d_blk, m_blk)
        }
        Some(_) => (make_qp(&scales, 15, &sw, eps, &mut ls), make_qp(&mins, 15, &sw, eps, &mut lm)),
    };
    let d16 = f16_sat(d_blk * nb.inv_s);
    let m16 = f16_sat(m_blk * nb.inv_s);
    let (dn, mn) = (f16_val(d16) * nb.s, f16_val(m16) * nb.s);
    let (mut ls, mut lm) = (ls.map(|v| v as i32), lm.map(|v| v as i32));
    if mode == Mode::Refined {
        for j in 0..16 {
            let ew = nb.qw.as_ref().map(|q| &q[16 * j..16 * j + 16]);
            (ls[j], lm[j]) = refine_affine(&xs[16 * j..16 * j + 16], ew, dn, mn, ls[j], lm[j], 15, 3.0);
        }
    }
    for j in 0..16 {
        let d = dn * ls[j] as f32;
        if d == 0.0 {
            continue;
        }
        let m = mn * lm[j] as f32;
        for i in 16 * j..16 * j + 16 {
            l[i] = code((xs[i] + m) / d, 0.0, 3.0);
        }
    }
    for j in 0..16 {
        out[SCALES + j] = (ls[j] | (lm[j] << 4)) as u8;
    }
    pack_2bit(&codes_u8(&l), &mut out[QS..QS + 64]);
    put_f16(out, D, d16);
    put_f16(out, DMIN, m16);
}

/// q3_k: 16 sub-blocks of 16, 3-bit signed codes, 6-bit signed scales.
pub(crate) fn quantize_q3k(x: &[f32], imp: Option<&[f32]>, mode: Mode, out: &mut [u8]) {
    use layout::q3k::*;
    let nb = normalise(x, imp);
    let xs = &nb.xs;
    let eps = eps_for(nb.s);
    let mut l = [0f32; QK_K];
    let mut scales = [0f32; 16];
    let mut w = [0f32; QK_K];
    let mut sw = [0f32; 16];
    match &nb.qw {
        None => {
            for j in 0..16 {
                scales[j] = make_q3(&xs[16 * j..16 * j + 16], 4, eps, &mut l[16 * j..16 * j + 16]);
            }
        }
        Some(qw) => {
            importance_weights(xs, qw, 16, 2.0, &mut w, &mut sw);
            for j in 0..16 {
                let wj = &w[16 * j..16 * j + 16];
                scales[j] = make_qx(&xs[16 * j..16 * j + 16], 4, Some(wj), eps, &mut l[16 * j..16 * j + 16]);
            }
        }
    }
    // Stored 6-bit scales are sc + 32; sc = -32 (stored 0) when everything is zero, as in ggml.
    let mut sc = [-32i32; 16];
    let d_blk = match &nb.qw {
        None => {
            let (mut max_scale, mut amax) = (0f32, 0f32);
            for &v in &scales {
                if v.abs() > amax {
                    amax = v.abs();
                    max_scale = v;
                }
            }
            if max_scale != 0.0 {
                let iscale = -32.0 / max_scale;
                for j in 0..16 {
                    sc[j] = code(iscale * scales[j], -32.0, 31.0) as i32;
                }
                1.0 / iscale
            } else {
                0.0
            }
        }
        Some(_) => {
            let mut lsf = [0f32; 16];
            let d = make_qx(&scales, 32, Some(&sw), eps, &mut lsf);
            for j in 0..16 {
                sc[j] = lsf[j] as i32 - 32;
            }
            d
        }
    };
    let d16 = f16_sat(d_blk * nb.inv_s);
    let dn = f16_val(d16) * nb.s;
    if mode == Mode::Refined {
        for j in 0..16 {
            let ew = nb.qw.as_ref().map(|q| &q[16 * j..16 * j + 16]);
            sc[j] = refine_symmetric(&xs[16 * j..16 * j + 16], ew, dn, sc[j], -32, 31, -4.0, 3.0);
        }
    }
    for j in 0..16 {
        let d = dn * sc[j] as f32;
        if d == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            l[i] = code(xs[i] / d, -4.0, 3.0) + 4.0;
        }
    }
    let scb = &mut out[SCALES..SCALES + 12];
    scb.fill(0);
    for j in 0..16 {
        let v = (sc[j] + 32) as u8;
        if j < 8 {
            scb[j] = v & 0xF;
        } else {
            scb[j - 8] |= (v & 0xF) << 4;
        }
        scb[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
    }
    let mut codes = codes_u8(&l);
    out[HMASK..HMASK + 32].fill(0);
    for (j, c) in codes.iter_mut().enumerate() {
        if *c > 3 {
            out[HMASK + j % 32] |= 1 << (j / 32);
            *c -= 4;
        }
    }
    pack_2bit(&codes, &mut out[QS..QS + 64]);
    put_f16(out, D, d16);
}

/// q4_k (`five == false`) and q5_k: 8 sub-blocks of 32, 4/5-bit codes, 6-bit scales and mins.
pub(crate) fn quantize_q45k(x: &[f32], imp: Option<&[f32]>, mode: Mode, five: bool, out: &mut [u8]) {
    let nmax = if five { 31.0 } else { 15.0 };
    let nb = normalise(x, imp);
    let xs = &nb.xs;
    let eps = eps_for(nb.s);
    let mut w = [0f32; QK_K];
    let mut sw = [0f32; 8];
    let p = match &nb.qw {
        None => {
            for j in 0..8 {
                let sub = &xs[32 * j..32 * j + 32];
                let mut sum_x2 = 0f32;
                for &v in sub {
                    sum_x2 += v * v;
                }
                let av_x = (sum_x2 / 32.0).sqrt();
                for i in 0..32 {
                    w[32 * j + i] = av_x + sub[i].abs();
                }
            }
            if five {
                Qkx { nmax, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: false }
            } else {
                Qkx { nmax, rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false }
            }
        }
        Some(qw) => {
            importance_weights(xs, qw, 32, 2.0, &mut w, &mut sw);
            Qkx { nmax, rmin: -0.9, rdelta: 0.05, nstep: 36, use_mad: false }
        }
    };
    let mut l = [0f32; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    for j in 0..8 {
        let r = make_qkx(&xs[32 * j..32 * j + 32], &w[32 * j..32 * j + 32], &p, &mut l[32 * j..32 * j + 32]);
        scales[j] = r.scale;
        mins[j] = r.the_min;
    }
    let (mut ls, mut lm) = ([0f32; 8], [0f32; 8]);
    let (d_blk, m_blk) = match &nb.qw {
        None => {
            let (mut max_scale, mut max_min) = (0f32, 0f32);
            for j in 0..8 {
                if scales[j] > max_scale {
                    max_scale = scales[j];
                }
                if mins[j] > max_min {
                    max_min = mins[j];
                }
            }
            let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
            let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
            for j in 0..8 {
                ls[j] = code(inv_scale * scales[j], 0.0, 63.0);
                lm[j] = code(inv_min * mins[j], 0.0, 63.0);
            }
            (max_scale / 63.0, max_min / 63.0)
        }
        Some(_) => (make_qp(&scales, 63, &sw, eps, &mut ls), make_qp(&mins, 63, &sw, eps, &mut lm)),
    };
    let d16 = f16_sat(d_blk * nb.inv_s);
    let m16 = f16_sat(m_blk * nb.inv_s);
    let (dn, mn) = (f16_val(d16) * nb.s, f16_val(m16) * nb.s);
    let (mut ls, mut lm) = (ls.map(|v| v as i32), lm.map(|v| v as i32));
    if mode == Mode::Refined {
        for j in 0..8 {
            let ew = nb.qw.as_ref().map(|q| &q[32 * j..32 * j + 32]);
            (ls[j], lm[j]) = refine_affine(&xs[32 * j..32 * j + 32], ew, dn, mn, ls[j], lm[j], 63, nmax);
        }
    }
    for j in 0..8 {
        let d = dn * ls[j] as f32;
        if d == 0.0 {
            continue;
        }
        let m = mn * lm[j] as f32;
        for i in 32 * j..32 * j + 32 {
            l[i] = code((xs[i] + m) / d, 0.0, nmax);
        }
    }
    let codes = codes_u8(&l);
    use layout::q4k::{D, DMIN, SCALES};
    let scb = &mut out[SCALES..SCALES + 12];
    scb.fill(0);
    for j in 0..8 {
        let (s, m) = (ls[j] as u8, lm[j] as u8);
        if j < 4 {
            scb[j] = s;
            scb[j + 4] = m;
        } else {
            scb[j + 4] = (s & 0xF) | ((m & 0xF) << 4);
            scb[j - 4] |= (s >> 4) << 6;
            scb[j] |= (m >> 4) << 6;
        }
    }
    let qs = if five { layout::q5k::QS } else { layout::q4k::QS };
    for c in 0..4 {
        for i in 0..32 {
            out[qs + 32 * c + i] = (codes[64 * c + i] & 0xF) | ((codes[64 * c + 32 + i] & 0xF) << 4);
        }
    }
    if five {
        let qh = layout::q5k::QH;
        out[qh..qh + 32].fill(0);
        for (v, &c) in codes.iter().enumerate() {
            out[qh + v % 32] |= (c >> 4) << (v / 32);
        }
    }
    put_f16(out, D, d16);
    put_f16(out, DMIN, m16);
}

/// q6_k: 16 sub-blocks of 16, 6-bit signed codes, int8 scales.
pub(crate) fn quantize_q6k(x: &[f32], imp: Option<&[f32]>, mode: Mode, out: &mut [u8]) {
    use layout::q6k::*;
    let nb = normalise(x, imp);
    let xs = &nb.xs;
    let eps = eps_for(nb.s);
    let mut l = [0f32; QK_K];
    let mut scales = [0f32; 16];
    for j in 0..16 {
        let wj = nb.qw.as_ref().map(|q| &q[16 * j..16 * j + 16]);
        scales[j] = make_qx(&xs[16 * j..16 * j + 16], 32, wj, eps, &mut l[16 * j..16 * j + 16]);
    }
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for &v in &scales {
        if v.abs() > max_abs_scale {
            max_abs_scale = v.abs();
            max_scale = v;
        }
    }
    if max_abs_scale < eps {
        out[..BYTES].fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d16 = f16_sat((1.0 / iscale) * nb.inv_s);
    let dn = f16_val(d16) * nb.s;
    let mut sc = [0i32; 16];
    for j in 0..16 {
        sc[j] = code(iscale * scales[j], -128.0, 127.0) as i32;
    }
    if mode == Mode::Refined {
        for j in 0..16 {
            let ew = nb.qw.as_ref().map(|q| &q[16 * j..16 * j + 16]);
            sc[j] = refine_symmetric(&xs[16 * j..16 * j + 16], ew, dn, sc[j], -128, 127, -32.0, 31.0);
        }
    }
    for j in 0..16 {
        let d = dn * sc[j] as f32;
        if d == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            l[i] = code(xs[i] / d, -32.0, 31.0) + 32.0;
        }
    }
    let codes = codes_u8(&l);
    for h in 0..2 {
        let c = |k: usize, i: usize| codes[128 * h + 32 * k + i];
        for i in 0..32 {
            out[QL + 64 * h + i] = (c(0, i) & 0xF) | ((c(2, i) & 0xF) << 4);
            out[QL + 64 * h + 32 + i] = (c(1, i) & 0xF) | ((c(3, i) & 0xF) << 4);
            out[QH + 32 * h + i] =
                (c(0, i) >> 4) | ((c(1, i) >> 4) << 2) | ((c(2, i) >> 4) << 4) | ((c(3, i) >> 4) << 6);
        }
    }
    for j in 0..16 {
        out[SCALES + j] = sc[j] as i8 as u8;
    }
    put_f16(out, D, d16);
}
