//! The k-quant quantizers over the SIMD vocabulary, one chunk of [`NC`] sub-blocks at a time:
//! normalise and transpose (lane = sub-block), weights, lane-parallel search, the super-block
//! step in scalar code (a few dozen operations per super-block), lane-parallel refinement, then
//! re-quantization and bit packing with lanes along the values.
//!
//! The arithmetic mirrors the scalar reference `blocks::kquants` operation by operation (see
//! its module docs for the algorithms); nothing is shared with it but the vocabulary.

use half::f16;

use super::lanes::{self, at, code, Qkx, NC};
use crate::blocks::kquants::layout;
use crate::blocks::kquants::Mode;
use crate::simd::vocab::{abs_max, Simd};

const QK: usize = 256;
/// ggml's `GROUP_MAX_EPS`.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Scalar `nearest_int` + clamp + (−0 → +0), for the super-block step.
#[inline(always)]
fn code1(v: f32, lo: f32, hi: f32) -> f32 {
    v.round_ties_even().max(lo).min(hi) + 0.0
}

/// Powers of two `(s, 1/s)` with `amax · s` in [1, 2) (`2^127` for zero or sub-normal amax).
#[inline(always)]
fn normalizer(amax: f32) -> (f32, f32) {
    let k = 127 - ((amax.to_bits() >> 23) & 0xff) as i32;
    let p = |k: i32| {
        if k >= -126 {
            f32::from_bits(((k + 127) as u32) << 23)
        } else {
            f32::from_bits(1 << 22)
        }
    };
    (p(k), p(-k))
}

/// ggml's threshold in the normalised domain, floored at the range guard.
#[inline(always)]
fn eps_for(s: f32) -> f32 {
    (GROUP_MAX_EPS * s).max(lanes::RANGE_EPS)
}

#[inline(always)]
fn f16_sat(v: f32) -> u16 {
    f16::from_f32(v.clamp(-65504.0, 65504.0)).to_bits()
}

#[inline(always)]
fn f16_val(b: u16) -> f32 {
    f16::from_bits(b).to_f32()
}

/// Per-super-block normalisation of a chunk.
#[derive(Clone, Copy, Default)]
struct SbNorm {
    s: f32,
    inv_s: f32,
    eps: f32,
}

/// Scratch of one chunk: transposed values, weights, error weights, spare, and codes
/// (cache-line aligned, so that every W-lane load of a lane group stays within one line).
#[repr(C, align(64))]
struct Scratch {
    xt: [f32; NC * 32],
    wt: [f32; NC * 32],
    et: [f32; NC * 32],
    aux: [f32; NC * 32],
    lt: [f32; NC * 32],
}

impl Scratch {
    fn new() -> Box<Scratch> {
        Box::new(Scratch {
            xt: [0.0; NC * 32],
            wt: [0.0; NC * 32],
            et: [0.0; NC * 32],
            aux: [0.0; NC * 32],
            lt: [0.0; NC * 32],
        })
    }
}

/// Normalise the `nsb` super-blocks of a chunk (first block `blk`) and transpose their values
/// (and importance) into `sc.xt` (`sc.et`), `n` values per sub-block; absent sub-blocks are 0.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn load_chunk<S: Simd>(
    s: S,
    x: &[f32],
    imp: Option<&[f32]>,
    blk: usize,
    nsb: usize,
    n: usize,
    sc: &mut Scratch,
    norm: &mut [SbNorm; 2],
) {
    let per_sb = QK / n;
    for (b, nb) in norm.iter_mut().enumerate().take(nsb) {
        let xb = &x[(blk + b) * QK..(blk + b + 1) * QK];
        let (sv, inv_s) = normalizer(abs_max(s, xb));
        *nb = SbNorm { s: sv, inv_s, eps: eps_for(sv) };
    }
    let t: [f32; 2] = match imp {
        Some(w) => {
            let mut t = [0f32; 2];
            for (b, tb) in t.iter_mut().enumerate().take(nsb) {
                *tb = normalizer(abs_max(s, &w[(blk + b) * QK..(blk + b + 1) * QK])).0;
            }
            t
        }
        None => [0.0; 2],
    };
    for sb in 0..NC {
        let b = sb / per_sb;
        let base = (blk + b) * QK + (sb % per_sb) * n;
        if b < nsb {
            let f = norm[b].s;
            for i in 0..n {
                sc.xt[i * NC + sb] = x[base + i] * f;
            }
            if let Some(w) = imp {
                for i in 0..n {
                    sc.et[i * NC + sb] = w[base + i] * t[b];
                }
            }
        } else {
            for i in 0..n {
                sc.xt[i * NC + sb] = 0.0;
                sc.et[i * NC + sb] = 0.0;
            }
        }
    }
}

/// ggml's importance weights `qw · sqrt(sigma2 + x²)` into `sc.wt` (transposed) and the
/// weight sums per sub-block into `sw`, `sigma2 = factor · Σx² / 256` with Σx² summed per
/// sub-block, then over the super-block's sub-blocks in order.
#[inline(always)]
fn importance_weights<S: Simd>(s: S, sc: &mut Scratch, n: usize, ngroups: usize, factor: f32, sw: &mut [f32; NC]) {
    let per_sb = QK / n;
    let mut sq = [0f32; NC];
    for g in 0..ngroups {
        let mut acc = s.splat(0.0);
        for i in 0..n {
            let x = at(s, &sc.xt, i, g);
            acc = s.add(acc, s.mul(x, x));
        }
        s.store(&mut sq[g * S::W..], acc);
    }
    let mut sigma2 = [0f32; NC];
    for b in 0..NC / per_sb {
        let mut total = 0f32;
        for &v in &sq[b * per_sb..(b + 1) * per_sb] {
            total += v;
        }
        let sg = factor * total / QK as f32;
        sigma2[b * per_sb..(b + 1) * per_sb].fill(sg);
    }
    for g in 0..ngroups {
        let sg = s.load(&sigma2[g * S::W..]);
        for i in 0..n {
            let x = at(s, &sc.xt, i, g);
            s.store(&mut sc.wt[i * NC + g * S::W..], s.add(sg, s.mul(x, x)));
        }
    }
    // Correctly rounded square roots: plain code, vectorised by the compiler where it can.
    for v in sc.wt[..n * NC].iter_mut() {
        *v = v.sqrt();
    }
    for g in 0..ngroups {
        let mut acc = s.splat(0.0);
        for i in 0..n {
            let k = i * NC + g * S::W;
            let w = s.mul(s.load(&sc.et[k..]), s.load(&sc.wt[k..]));
            s.store(&mut sc.wt[k..], w);
            acc = s.add(acc, w);
        }
        s.store(&mut sw[g * S::W..], acc);
    }
}

/// `sc.aux = w · x` (transposed), the `(w · x) · l` factor of the symmetric searches.
#[inline(always)]
fn weighted_x<S: Simd>(s: S, sc: &mut Scratch, n: usize, ngroups: usize) {
    for g in 0..ngroups {
        for i in 0..n {
            let k = i * NC + g * S::W;
            let wx = s.mul(s.load(&sc.wt[k..]), s.load(&sc.xt[k..]));
            s.store(&mut sc.aux[k..], wx);
        }
    }
}

/// ggml's `make_qp_quants` (scalar, super-block step): see the reference.
#[inline(always)]
fn make_qp(x: &[f32], nmax: i32, w: &[f32], eps: f32, l: &mut [f32]) -> f32 {
    let nm = nmax as f32;
    let max = x.iter().fold(0f32, |m, &v| if m > v { m } else { v });
    if max < eps {
        l.iter_mut().for_each(|v| *v = 0.0);
        return 0.0;
    }
    let mse = |iscale: f32, scale: f32| {
        let mut e = 0f32;
        for (&v, &wi) in x.iter().zip(w) {
            let diff = v - scale * code1(iscale * v, 0.0, nm);
            e += wi * diff * diff;
        }
        e
    };
    let mut iscale = nm / max;
    let mut best_mse = mse(iscale, 1.0 / iscale);
    for is in [-4i32, -3, -2, -1, 1, 2, 3, 4] {
        let iscale_is = (0.1 * is as f32 + nm) / max;
        let m = mse(iscale_is, 1.0 / iscale_is);
        if m < best_mse {
            best_mse = m;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for ((li, &v), &wi) in l.iter_mut().zip(x).zip(w) {
        *li = code1(iscale * v, 0.0, nm);
        sumlx += wi * v * *li;
        suml2 += wi * *li * *li;
    }
    for _ in 0..5 {
        let mut changed = false;
        for ((li, &v), &wi) in l.iter_mut().zip(x).zip(w) {
            let slx = sumlx - wi * v * *li;
            let sl2 = suml2 - wi * *li * *li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = code1(v * sl2 / slx, 0.0, nm);
                if new_l != *li {
                    let slx = slx + wi * v * new_l;
                    let sl2 = sl2 + wi * new_l * new_l;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l;
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

/// ggml's `make_qx_quants` (`rmse_type = 1`, scalar, super-block step of q3_k with importance).
/// Writes codes + nmax to `l`; returns the scale.
#[inline(always)]
fn make_qx(x: &[f32], nmax: i32, w: &[f32], eps: f32, l: &mut [f32]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < eps {
        l.iter_mut().for_each(|v| *v = 0.0);
        return 0.0;
    }
    let nm = nmax as f32;
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (&v, &wi) in x.iter().zip(w) {
            let li = code1(iscale * v, -nm, nm - 1.0);
            sumlx += wi * v * li;
            suml2 += wi * li * li;
        }
        (sumlx, suml2)
    };
    let mut best_iscale = -nm / max;
    let (sumlx, suml2) = sums(best_iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9i32..=9).filter(|&is| is != 0) {
        let iscale = -(nm + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            best_iscale = iscale;
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    for (li, &v) in l.iter_mut().zip(x) {
        *li = code1(best_iscale * v, -nm, nm - 1.0) + nm;
    }
    scale
}

/// Re-quantize `n` values of sub-block `xb` (un-normalised, multiplied by `f` first) as
/// `nearest((x·f + m) / d) + off` in lo..=hi (m = 0 for symmetric types) into `codes`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn requant<S: Simd>(
    s: S,
    xb: &[f32],
    f: f32,
    d: f32,
    m: Option<f32>,
    (lo, hi): (f32, f32),
    off: f32,
    codes: &mut [u8],
) {
    let (fv, dv) = (s.splat(f), s.splat(d));
    let (lov, hiv, offv) = (s.splat(lo), s.splat(hi), s.splat(off));
    for (c, out) in xb.chunks_exact(S::W).zip(codes.chunks_exact_mut(S::W)) {
        let x = s.mul(s.load(c), fv);
        let v = match m {
            Some(m) => s.div(s.add(x, s.splat(m)), dv),
            None => s.div(x, dv),
        };
        let q = s.add(code(s, v, lov, hiv), offv);
        s.store_u8(out, s.to_i32(q));
    }
}

/// 2-bit packing of q2_k/q3_k: `qs[32h + i]` holds codes `128h + 32k + i` (low 2 bits) at bits
/// `2k`.
#[inline(always)]
fn pack_2bit<S: Simd>(s: S, codes: &[u8; QK], qs: &mut [u8]) {
    let three = s.isplat(3);
    for h in 0..2 {
        for i in (0..32).step_by(S::W) {
            let mut acc = s.isplat(0);
            for k in 0..4 {
                let c = s.iand(s.load_u8(&codes[128 * h + 32 * k + i..]), three);
                acc = s.ior(acc, s.shl(c, 2 * k as u32));
            }
            s.store_u8(&mut qs[32 * h + i..], acc);
        }
    }
}

/// Bit `bit` of each code, gathered as ggml's high-bit masks: `out[i]` holds bit `bit` of codes
/// `32k + i` at bit `k` (q3_k `hmask`: bit 2, q5_k `qh`: bit 4).
#[inline(always)]
fn pack_high<S: Simd>(s: S, codes: &[u8; QK], bit: u32, out: &mut [u8]) {
    let one = s.isplat(1);
    for i in (0..32).step_by(S::W) {
        let mut acc = s.isplat(0);
        for k in 0..8 {
            let c = s.iand(s.shr(s.load_u8(&codes[32 * k + i..]), bit), one);
            acc = s.ior(acc, s.shl(c, k as u32));
        }
        s.store_u8(&mut out[i..], acc);
    }
}

/// Nibble packing of q4_k/q5_k: `qs[32c + i]` = code `64c + i` | code `64c + 32 + i` << 4
/// (low 4 bits each).
#[inline(always)]
fn pack_nibbles<S: Simd>(s: S, codes: &[u8; QK], qs: &mut [u8]) {
    let f = s.isplat(0xF);
    for c in 0..4 {
        for i in (0..32).step_by(S::W) {
            let lo = s.iand(s.load_u8(&codes[64 * c + i..]), f);
            let hi = s.iand(s.load_u8(&codes[64 * c + 32 + i..]), f);
            s.store_u8(&mut qs[32 * c + i..], s.ior(lo, s.shl(hi, 4)));
        }
    }
}

/// The stored-lane view of a mask: bit `g·W + l`.
#[inline(always)]
fn lane_bits<S: Simd>(s: S, m: S::M, g: usize) -> u32 {
    (s.bitmask(m) as u32) << (g * S::W)
}

/// q2_k, q4_k, q5_k: the affine types. `n` values per sub-block, `nmax` largest code, `smax`
/// largest integer scale/min.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn affine_row<S: Simd>(
    s: S,
    x: &[f32],
    imp: Option<&[f32]>,
    mode: Mode,
    n: usize,
    nmax: f32,
    smax: i32,
    p_plain: Qkx,
    p_imp: Qkx,
    dst: &mut [u8],
    kind: Affine,
) {
    let block_bytes = kind.block_bytes();
    let per_sb = QK / n;
    let sb_per_chunk = NC / per_sb;
    let nblocks = x.len() / QK;
    let mut sc = Scratch::new();
    let mut norm = [SbNorm::default(); 2];
    let mut blk = 0;
    while blk < nblocks {
        let nsb = sb_per_chunk.min(nblocks - blk);
        let ngroups = (nsb * per_sb).div_ceil(S::W);
        load_chunk(s, x, imp, blk, nsb, n, &mut sc, &mut norm);
        let mut sw = [0f32; NC];
        let p = if imp.is_some() {
            // q2_k: sigma2 = Σx²/256, q4_k/q5_k: 2·Σx²/256.
            importance_weights(s, &mut sc, n, ngroups, if n == 16 { 1.0 } else { 2.0 }, &mut sw);
            p_imp
        } else if n == 16 {
            for g in 0..ngroups {
                for i in 0..n {
                    let k = i * NC + g * S::W;
                    s.store(&mut sc.wt[k..], s.abs(s.load(&sc.xt[k..])));
                }
            }
            p_plain
        } else {
            let mut av = [0f32; NC];
            for g in 0..ngroups {
                let mut acc = s.splat(0.0);
                for i in 0..n {
                    let x = at(s, &sc.xt, i, g);
                    acc = s.add(acc, s.mul(x, x));
                }
                s.store(&mut av[g * S::W..], s.div(acc, s.splat(n as f32)));
            }
            for v in av.iter_mut() {
                *v = v.sqrt();
            }
            for g in 0..ngroups {
                let a = s.load(&av[g * S::W..]);
                for i in 0..n {
                    let k = i * NC + g * S::W;
                    s.store(&mut sc.wt[k..], s.add(a, s.abs(s.load(&sc.xt[k..]))));
                }
            }
            p_plain
        };
        // Lane-parallel search.
        let mut q = lanes::QkxOut::default();
        if ngroups == NC / S::W {
            // A full chunk: a compile-time group count keeps the per-group state in registers.
            lanes::qkx(s, &sc.xt, &sc.wt, NC / S::W, n, &p, &mut q);
        } else {
            lanes::qkx(s, &sc.xt, &sc.wt, ngroups, n, &p, &mut q);
        }
        let lanes::QkxOut { scale: scales, the_min: mins, code_iscale: cis, code_min: cmin, constant } = q;
        // Super-block step (scalar).
        let (mut ls, mut lm) = ([0f32; NC], [0f32; NC]);
        let (mut dn, mut mn) = ([0f32; NC], [0f32; NC]);
        let mut f16s = [(0u16, 0u16); 2];
        for b in 0..nsb {
            let r = b * per_sb..(b + 1) * per_sb;
            let (d_blk, m_blk) = if imp.is_some() {
                let e = norm[b].eps;
                let d = make_qp(&scales[r.clone()], smax, &sw[r.clone()], e, &mut ls[r.clone()]);
                let m = make_qp(&mins[r.clone()], smax, &sw[r.clone()], e, &mut lm[r.clone()]);
                (d, m)
            } else {
                let sm = smax as f32;
                let max_scale = scales[r.clone()].iter().fold(0f32, |m, &v| if v > m { v } else { m });
                let max_min = mins[r.clone()].iter().fold(0f32, |m, &v| if v > m { v } else { m });
                let inv_scale = if max_scale > 0.0 { sm / max_scale } else { 0.0 };
                let inv_min = if max_min > 0.0 { sm / max_min } else { 0.0 };
                for j in r.clone() {
                    ls[j] = code1(inv_scale * scales[j], 0.0, sm);
                    lm[j] = code1(inv_min * mins[j], 0.0, sm);
                }
                (max_scale / sm, max_min / sm)
            };
            let (d16, m16) = (f16_sat(d_blk * norm[b].inv_s), f16_sat(m_blk * norm[b].inv_s));
            f16s[b] = (d16, m16);
            dn[r.clone()].fill(f16_val(d16) * norm[b].s);
            mn[r].fill(f16_val(m16) * norm[b].s);
        }
        if mode == Mode::Refined {
            for g in 0..ngroups {
                let o = g * S::W;
                let et = imp.map(|_| &sc.et[..]);
                let (bs, bm) = lanes::refine_affine(
                    s,
                    &sc.xt,
                    et,
                    g,
                    n,
                    s.load(&dn[o..]),
                    s.load(&mn[o..]),
                    s.load(&ls[o..]),
                    s.load(&lm[o..]),
                    smax as f32,
                    nmax,
                );
                s.store(&mut ls[o..], bs);
                s.store(&mut lm[o..], bm);
            }
        }
        // Re-quantization and packing, lanes along the values.
        for b in 0..nsb {
            let xb = &x[(blk + b) * QK..(blk + b + 1) * QK];
            let f = norm[b].s;
            let mut codes = [0u8; QK];
            let mut isc = [0i32; 16];
            let mut imn = [0i32; 16];
            for j in 0..per_sb {
                let sb = b * per_sb + j;
                isc[j] = ls[sb] as i32;
                imn[j] = lm[sb] as i32;
                let d = dn[sb] * ls[sb];
                let out = &mut codes[j * n..(j + 1) * n];
                if d != 0.0 {
                    let m = mn[sb] * lm[sb];
                    requant(s, &xb[j * n..(j + 1) * n], f, d, Some(m), (0.0, nmax), 0.0, out);
                } else if constant & (1 << sb) != 0 {
                    out.fill(0);
                } else {
                    for (o, &v) in out.iter_mut().zip(&xb[j * n..(j + 1) * n]) {
                        *o = code1(cis[sb] * (v * f - cmin[sb]), 0.0, nmax) as u8;
                    }
                }
            }
            let out = &mut dst[(blk + b) * block_bytes..(blk + b + 1) * block_bytes];
            pack_affine(s, kind, &codes, &isc[..per_sb], &imn[..per_sb], f16s[b], out);
        }
        blk += nsb;
    }
}

#[inline(always)]
fn put_f16(out: &mut [u8], at: usize, bits: u16) {
    out[at..at + 2].copy_from_slice(&bits.to_le_bytes());
}

/// Which affine type a row is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Affine {
    Q2,
    Q4,
    Q5,
}

impl Affine {
    fn block_bytes(self) -> usize {
        match self {
            Affine::Q2 => layout::q2k::BYTES,
            Affine::Q4 => layout::q4k::BYTES,
            Affine::Q5 => layout::q5k::BYTES,
        }
    }
}

/// Pack one affine block: codes, integer scales and mins, f16 `(d, dmin)`.
#[inline(always)]
fn pack_affine<S: Simd>(
    s: S,
    kind: Affine,
    codes: &[u8; QK],
    ls: &[i32],
    lm: &[i32],
    (d, dmin): (u16, u16),
    out: &mut [u8],
) {
    if kind == Affine::Q2 {
        use layout::q2k::*;
        for j in 0..16 {
            out[SCALES + j] = (ls[j] | (lm[j] << 4)) as u8;
        }
        pack_2bit(s, codes, &mut out[QS..QS + 64]);
        put_f16(out, D, d);
        put_f16(out, DMIN, dmin);
        return;
    }
    use layout::q4k::{D, DMIN, SCALES};
    let mut k = [0u8; 12];
    for j in 0..4 {
        let (s0, m0, s1, m1) = (ls[j] as u8, lm[j] as u8, ls[j + 4] as u8, lm[j + 4] as u8);
        k[j] = s0 | ((s1 >> 4) << 6);
        k[j + 4] = m0 | ((m1 >> 4) << 6);
        k[j + 8] = (s1 & 0xF) | ((m1 & 0xF) << 4);
    }
    out[SCALES..SCALES + 12].copy_from_slice(&k);
    if kind == Affine::Q5 {
        use layout::q5k::{QH, QS};
        pack_nibbles(s, codes, &mut out[QS..QS + 128]);
        pack_high(s, codes, 4, &mut out[QH..QH + 32]);
    } else {
        use layout::q4k::QS;
        pack_nibbles(s, codes, &mut out[QS..QS + 128]);
    }
    put_f16(out, D, d);
    put_f16(out, DMIN, dmin);
}

/// q2_k row.
#[inline(always)]
pub(crate) fn q2k_row<S: Simd>(s: S, x: &[f32], imp: Option<&[f32]>, mode: Mode, dst: &mut [u8]) {
    let plain = Qkx { nmax: 3.0, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: true };
    let with = Qkx { nmax: 3.0, rmin: -0.9, rdelta: 0.05, nstep: 36, use_mad: false };
    affine_row(s, x, imp, mode, 16, 3.0, 15, plain, with, dst, Affine::Q2);
}

/// q4_k (`five == false`) or q5_k row.
#[inline(always)]
pub(crate) fn q45k_row<S: Simd>(s: S, x: &[f32], imp: Option<&[f32]>, mode: Mode, five: bool, dst: &mut [u8]) {
    let nmax = if five { 31.0 } else { 15.0 };
    let plain = if five {
        Qkx { nmax, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: false }
    } else {
        Qkx { nmax, rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false }
    };
    let with = Qkx { nmax, rmin: -0.9, rdelta: 0.05, nstep: 36, use_mad: false };
    let kind = if five { Affine::Q5 } else { Affine::Q4 };
    affine_row(s, x, imp, mode, 32, nmax, 63, plain, with, dst, kind);
}

/// q3_k row: 16 sub-blocks of 16 per super-block (one chunk), signed 3-bit codes.
#[inline(always)]
pub(crate) fn q3k_row<S: Simd>(s: S, x: &[f32], imp: Option<&[f32]>, mode: Mode, dst: &mut [u8]) {
    use layout::q3k::*;
    let n = 16;
    let ngroups = NC / S::W;
    let mut sc = Scratch::new();
    let mut norm = [SbNorm::default(); 2];
    for blk in 0..x.len() / QK {
        load_chunk(s, x, imp, blk, 1, n, &mut sc, &mut norm);
        let nb = norm[0];
        let eps = s.splat(nb.eps);
        let mut sw = [0f32; NC];
        let mut scales = [0f32; NC];
        let mut cis = [0f32; NC];
        let mut zero = 0u32;
        if imp.is_some() {
            importance_weights(s, &mut sc, n, ngroups, 2.0, &mut sw);
            weighted_x(s, &mut sc, n, ngroups);
            for g in 0..ngroups {
                let r = lanes::qx(s, &sc.xt, &sc.wt, &sc.aux, eps, g, n, 4);
                s.store(&mut scales[g * S::W..], r.scale);
                s.store(&mut cis[g * S::W..], r.code_iscale);
                zero |= lane_bits(s, r.zero, g);
            }
        } else {
            for g in 0..ngroups {
                for i in 0..n {
                    let k = i * NC + g * S::W;
                    let x = s.load(&sc.xt[k..]);
                    s.store(&mut sc.aux[k..], s.mul(s.mul(x, x), x));
                }
            }
            lanes::q3(s, &sc.xt, &sc.aux, eps, ngroups, n, 4, &mut sc.lt, &mut scales);
        }
        // Super-block step (scalar): signed 6-bit scales (stored + 32; all -32 when zero).
        let mut scf = [-32f32; NC];
        let d_blk = if imp.is_some() {
            let mut l = [0f32; NC];
            let d = make_qx(&scales, 32, &sw, nb.eps, &mut l);
            for (o, &v) in scf.iter_mut().zip(&l) {
                *o = v - 32.0;
            }
            d
        } else {
            let (mut max_scale, mut amax) = (0f32, 0f32);
            for &v in &scales {
                if v.abs() > amax {
                    amax = v.abs();
                    max_scale = v;
                }
            }
            if max_scale != 0.0 {
                let iscale = -32.0 / max_scale;
                for (o, &v) in scf.iter_mut().zip(&scales) {
                    *o = code1(iscale * v, -32.0, 31.0);
                }
                1.0 / iscale
            } else {
                0.0
            }
        };
        let d16 = f16_sat(d_blk * nb.inv_s);
        let dn = f16_val(d16) * nb.s;
        if mode == Mode::Refined {
            for g in 0..ngroups {
                let o = g * S::W;
                let et = imp.map(|_| &sc.et[..]);
                let c = lanes::refine_symmetric(
                    s,
                    &sc.xt,
                    et,
                    g,
                    n,
                    s.splat(dn),
                    s.load(&scf[o..]),
                    (-32.0, 31.0),
                    (-4.0, 3.0),
                );
                s.store(&mut scf[o..], c);
            }
        }
        let xb = &x[blk * QK..(blk + 1) * QK];
        let mut codes = [0u8; QK];
        for j in 0..16 {
            let d = dn * scf[j];
            let out = &mut codes[j * n..(j + 1) * n];
            if d != 0.0 {
                requant(s, &xb[j * n..(j + 1) * n], nb.s, d, None, (-4.0, 3.0), 4.0, out);
            } else if imp.is_none() {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = sc.lt[i * NC + j] as u8;
                }
            } else if zero & (1 << j) != 0 {
                out.fill(0);
            } else {
                for (o, &v) in out.iter_mut().zip(&xb[j * n..(j + 1) * n]) {
                    *o = (code1(cis[j] * (v * nb.s), -4.0, 3.0) + 4.0) as u8;
                }
            }
        }
        let out = &mut dst[blk * BYTES..(blk + 1) * BYTES];
        let mut k = [0u8; 12];
        for j in 0..16 {
            let v = (scf[j] + 32.0) as u8;
            k[j % 8] |= (v & 0xF) << (4 * (j / 8));
            k[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
        }
        out[SCALES..SCALES + 12].copy_from_slice(&k);
        pack_high(s, &codes, 2, &mut out[HMASK..HMASK + 32]);
        pack_2bit(s, &codes, &mut out[QS..QS + 64]);
        put_f16(out, D, d16);
    }
}

/// q6_k code packing: `ql[64h + i]` = codes `128h + i` | `128h + 64 + i` << 4 (low 4 bits),
/// `ql[64h + 32 + i]` = codes `128h + 32 + i` | `128h + 96 + i` << 4, `qh[32h + i]` holds the
/// high 2 bits of codes `128h + 32k + i` at bits `2k`.
#[inline(always)]
fn pack_q6<S: Simd>(s: S, codes: &[u8; QK], out: &mut [u8]) {
    use layout::q6k::{QH, QL};
    let (f, three) = (s.isplat(0xF), s.isplat(3));
    for h in 0..2 {
        for i in (0..32).step_by(S::W) {
            let c0 = s.load_u8(&codes[128 * h + i..]);
            let c1 = s.load_u8(&codes[128 * h + 32 + i..]);
            let c2 = s.load_u8(&codes[128 * h + 64 + i..]);
            let c3 = s.load_u8(&codes[128 * h + 96 + i..]);
            s.store_u8(&mut out[QL + 64 * h + i..], s.ior(s.iand(c0, f), s.shl(s.iand(c2, f), 4)));
            s.store_u8(&mut out[QL + 64 * h + 32 + i..], s.ior(s.iand(c1, f), s.shl(s.iand(c3, f), 4)));
            let mut qh = s.isplat(0);
            for (k, c) in [c0, c1, c2, c3].into_iter().enumerate() {
                qh = s.ior(qh, s.shl(s.iand(s.shr(c, 4), three), 2 * k as u32));
            }
            s.store_u8(&mut out[QH + 32 * h + i..], qh);
        }
    }
}

/// q6_k row: 16 sub-blocks of 16 per super-block (one chunk), signed 6-bit codes.
#[inline(always)]
pub(crate) fn q6k_row<S: Simd>(s: S, x: &[f32], imp: Option<&[f32]>, mode: Mode, dst: &mut [u8]) {
    use layout::q6k::*;
    let n = 16;
    let ngroups = NC / S::W;
    let mut sc = Scratch::new();
    let mut norm = [SbNorm::default(); 2];
    for blk in 0..x.len() / QK {
        load_chunk(s, x, imp, blk, 1, n, &mut sc, &mut norm);
        let nb = norm[0];
        for g in 0..ngroups {
            for i in 0..n {
                let k = i * NC + g * S::W;
                let x = s.load(&sc.xt[k..]);
                let w = if imp.is_some() { s.load(&sc.et[k..]) } else { s.mul(x, x) };
                s.store(&mut sc.wt[k..], w);
                s.store(&mut sc.aux[k..], s.mul(w, x));
            }
        }
        let mut scales = [0f32; NC];
        let mut cis = [0f32; NC];
        let mut zero = 0u32;
        for g in 0..ngroups {
            let r = lanes::qx(s, &sc.xt, &sc.wt, &sc.aux, s.splat(nb.eps), g, n, 32);
            s.store(&mut scales[g * S::W..], r.scale);
            s.store(&mut cis[g * S::W..], r.code_iscale);
            zero |= lane_bits(s, r.zero, g);
        }
        let out = &mut dst[blk * BYTES..(blk + 1) * BYTES];
        let (mut max_scale, mut max_abs) = (0f32, 0f32);
        for &v in &scales {
            if v.abs() > max_abs {
                max_abs = v.abs();
                max_scale = v;
            }
        }
        if max_abs < nb.eps {
            out.fill(0);
            continue;
        }
        let iscale = -128.0 / max_scale;
        let d16 = f16_sat((1.0 / iscale) * nb.inv_s);
        let dn = f16_val(d16) * nb.s;
        let mut scf = [0f32; NC];
        for (o, &v) in scf.iter_mut().zip(&scales) {
            *o = code1(iscale * v, -128.0, 127.0);
        }
        if mode == Mode::Refined {
            for g in 0..ngroups {
                let o = g * S::W;
                let et = imp.map(|_| &sc.et[..]);
                let c = lanes::refine_symmetric(
                    s,
                    &sc.xt,
                    et,
                    g,
                    n,
                    s.splat(dn),
                    s.load(&scf[o..]),
                    (-128.0, 127.0),
                    (-32.0, 31.0),
                );
                s.store(&mut scf[o..], c);
            }
        }
        let xb = &x[blk * QK..(blk + 1) * QK];
        let mut codes = [0u8; QK];
        for j in 0..16 {
            let d = dn * scf[j];
            let c = &mut codes[j * n..(j + 1) * n];
            if d != 0.0 {
                requant(s, &xb[j * n..(j + 1) * n], nb.s, d, None, (-32.0, 31.0), 32.0, c);
            } else if zero & (1 << j) != 0 {
                c.fill(0);
            } else {
                for (o, &v) in c.iter_mut().zip(&xb[j * n..(j + 1) * n]) {
                    *o = (code1(cis[j] * (v * nb.s), -32.0, 31.0) + 32.0) as u8;
                }
            }
        }
        pack_q6(s, &codes, out);
        for j in 0..16 {
            out[SCALES + j] = scf[j] as i32 as i8 as u8;
        }
        put_f16(out, D, d16);
    }
}
