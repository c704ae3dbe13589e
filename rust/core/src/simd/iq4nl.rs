//! SIMD kernels of iq4_nl (layout and algorithm in [`crate::blocks::iq4nl`]).
//!
//! * Quantize: lane-per-block. `W` blocks are transposed into a scratch buffer and each lane
//!   runs the reference's search for its block, value by value in the reference's order, so the
//!   sums (and the bytes) are bit-identical to it. The nearest grid value is found with 15
//!   compare-and-select steps against the midpoints (masks instead of ggml's binary search).
//! * Dequantize: the 16-entry table lookup is a 4-level select tree on the index bits.
//!
//! NaN only meets ordered compares and selects (a lane whose scale is NaN or overflows is
//! discarded), never `min`/`max`.

use crate::blocks::iq4nl::{self as reference, pack_block, BLOCK_BYTES, KVALUES, MIDPOINTS, NTRY, QK};
use crate::blocks::legacy::GROUP_MAX_EPS;
use crate::simd::legacy::{f16_round_lanes, MAX_W};
use crate::simd::vocab::Simd;
use crate::simd::{Isa, Kernel};

/// The grid value nearest to each lane of `a` (ties to the upper value).
#[inline(always)]
fn nearest<S: Simd>(s: S, a: S::F) -> S::F {
    let mut q = s.splat(f32::from(KVALUES[0]));
    for k in 0..15 {
        q = s.select(s.le(s.splat(MIDPOINTS[k]), a), s.splat(f32::from(KVALUES[k + 1])), q);
    }
    q
}

/// The nearest grid value and its index (as f32).
#[inline(always)]
fn nearest_index<S: Simd>(s: S, a: S::F) -> (S::F, S::F) {
    let mut q = s.splat(f32::from(KVALUES[0]));
    let mut i = s.splat(0.0);
    for k in 0..15 {
        let m = s.le(s.splat(MIDPOINTS[k]), a);
        q = s.select(m, s.splat(f32::from(KVALUES[k + 1])), q);
        i = s.select(m, s.splat((k + 1) as f32), i);
    }
    (q, i)
}

/// `1/d` per lane, 0 where `d == 0`.
#[inline(always)]
fn inv<S: Simd>(s: S, d: S::F) -> S::F {
    let z = s.splat(0.0);
    let dz = s.eq(d, z);
    s.select(dz, z, s.div(s.splat(1.0), s.select(dz, s.splat(1.0), d)))
}

/// Transposed scratch of one group of `W` blocks: value `j` of lane `b` at `[j * W + b]`.
struct Lanes {
    x: [f32; QK * MAX_W],
    w: [f32; QK * MAX_W],
    /// Indices (as f32) of candidates A, B, C, F.
    idx: [[f32; QK * MAX_W]; 4],
}

/// `(sum(w q x), sum(w q^2))` per lane for the grid values nearest to `x * id`.
#[inline(always)]
fn pass<S: Simd>(s: S, l: &Lanes, id: S::F) -> (S::F, S::F) {
    let w = S::W;
    let (mut sumqx, mut sumq2) = (s.splat(0.0), s.splat(0.0));
    for j in 0..QK {
        let v = s.load(&l.x[j * w..]);
        let wv = s.load(&l.w[j * w..]);
        let q = nearest(s, s.mul(id, v));
        let wq = s.mul(wv, q);
        sumqx = s.add(sumqx, s.mul(wq, v));
        sumq2 = s.add(sumq2, s.mul(wq, q));
    }
    (sumqx, sumq2)
}

/// Indices nearest to `x * id` into `l.idx[slot]`; returns the weighted error with scale `dh`
/// and `(sum(w q x), sum(w q^2))` of those values.
#[inline(always)]
fn assign<S: Simd>(s: S, l: &mut Lanes, slot: usize, id: S::F, dh: S::F) -> (S::F, S::F, S::F) {
    let w = S::W;
    let z = s.splat(0.0);
    let (mut e, mut sumqx, mut sumq2) = (z, z, z);
    for j in 0..QK {
        let v = s.load(&l.x[j * w..]);
        let wv = s.load(&l.w[j * w..]);
        let (q, i) = nearest_index(s, s.mul(id, v));
        s.store(&mut l.idx[slot][j * w..], i);
        let diff = s.sub(v, s.mul(dh, q));
        e = s.add(e, s.mul(wv, s.mul(diff, diff)));
        let wq = s.mul(wv, q);
        sumqx = s.add(sumqx, s.mul(wq, v));
        sumq2 = s.add(sumq2, s.mul(wq, q));
    }
    (e, sumqx, sumq2)
}

/// Generic SIMD quantization of one iq4_nl row; bit-identical to
/// [`crate::blocks::iq4nl::quantize_row`] at every lane count. `x.len()` is a multiple of 32,
/// `dst` holds `x.len() / 32` blocks, `importance` (if any) has `x.len()` values.
#[inline(always)]
pub fn quantize_row_simd<S: Simd>(s: S, x: &[f32], dst: &mut [u8], importance: Option<&[f32]>) {
    if S::W > MAX_W {
        return reference::quantize_row(x, dst, importance);
    }
    let w = S::W;
    let nb = x.len() / QK;
    let mut l = Lanes { x: [0.0; QK * MAX_W], w: [0.0; QK * MAX_W], idx: [[0.0; QK * MAX_W]; 4] };
    let mut wb = [0.0f32; QK];
    let z = s.splat(0.0);
    let one = s.splat(1.0);
    for g in (0..nb).step_by(w) {
        let nl = (nb - g).min(w);
        for b in 0..w {
            if b < nl {
                let r = (g + b) * QK..(g + b + 1) * QK;
                reference::block_weights(&x[r.clone()], importance.map(|imp| &imp[r.clone()]), &mut wb);
                for j in 0..QK {
                    l.x[j * w + b] = x[r.start + j];
                    l.w[j * w + b] = wb[j];
                }
            } else {
                for j in 0..QK {
                    l.x[j * w + b] = 0.0;
                    l.w[j * w + b] = 0.0;
                }
            }
        }
        // First value of largest magnitude; blocks below GROUP_MAX_EPS are stored as zeros.
        let (mut amax, mut max) = (z, z);
        for j in 0..QK {
            let v = s.load(&l.x[j * w..]);
            let a = s.abs(v);
            let m = s.lt(amax, a);
            amax = s.select(m, a, amax);
            max = s.select(m, v, max);
        }
        let zero = s.lt(amax, s.splat(GROUP_MAX_EPS));
        let maxs = s.select(zero, one, max);

        // A: ggml's search (`reference::search`).
        let d0 = s.div(s.neg(maxs), s.splat(f32::from(KVALUES[0])));
        let (sumqx, sumq2) = pass(s, &l, s.div(one, d0));
        let pos = s.lt(z, sumq2);
        let ratio = s.div(sumqx, sumq2);
        let mut d = s.select(pos, ratio, d0);
        let mut best = s.select(pos, s.mul(ratio, sumqx), z);
        for itry in -NTRY..=NTRY {
            let c = (itry + i32::from(KVALUES[0])) as f32;
            let (sumqx, sumq2) = pass(s, &l, s.div(s.splat(c), maxs));
            let take = s.mand(s.lt(z, sumq2), s.lt(s.mul(best, sumq2), s.mul(sumqx, sumqx)));
            let nd = s.div(sumqx, sumq2);
            d = s.select(take, nd, d);
            best = s.select(take, s.mul(nd, sumqx), best);
        }
        let mut ok_a = [1.0f32; MAX_W];
        let dha = f16_round_lanes(s, d, &mut ok_a);
        let va = s.eq(s.load(&ok_a), one);
        let (ea, _, _) = assign(s, &mut l, 0, inv(s, d), dha);
        // F: d = max / -127.
        let mut ok_f = [1.0f32; MAX_W];
        let dhf = f16_round_lanes(s, s.div(max, s.splat(f32::from(KVALUES[0]))), &mut ok_f);
        let (ef, _, _) = assign(s, &mut l, 3, inv(s, dhf), dhf);
        let mut dh = s.select(va, dha, dhf);
        let mut best = s.select(va, ea, ef);
        let mut tag = s.select(va, z, s.splat(3.0));
        // B: A's f16 scale with the indices nearest to x / f16(d).
        let (eb, sumqx, sumq2) = assign(s, &mut l, 1, inv(s, dha), dha);
        let tb = s.mand(va, s.lt(eb, best));
        dh = s.select(tb, dha, dh);
        best = s.select(tb, eb, best);
        tag = s.select(tb, one, tag);
        // C: least-squares refit to B's indices.
        let mut ok_c = [1.0f32; MAX_W];
        let dc = s.select(s.lt(z, sumq2), s.div(sumqx, sumq2), dha);
        let dhc = f16_round_lanes(s, dc, &mut ok_c);
        let vc = s.eq(s.load(&ok_c), one);
        let (ec, _, _) = assign(s, &mut l, 2, inv(s, dhc), dhc);
        let tc = s.mand(s.mand(va, vc), s.lt(ec, best));
        dh = s.select(tc, dhc, dh);
        best = s.select(tc, ec, best);
        tag = s.select(tc, s.splat(2.0), tag);
        // F last: only if strictly better.
        let tf = s.lt(ef, best);
        dh = s.select(tf, dhf, dh);
        tag = s.select(tf, s.splat(3.0), tag);
        // All-zero blocks.
        dh = s.select(zero, z, dh);
        tag = s.select(zero, s.splat(4.0), tag);

        let (mut dv, mut tv) = ([0.0f32; MAX_W], [0.0f32; MAX_W]);
        s.store(&mut dv, dh);
        s.store(&mut tv, tag);
        for b in 0..nl {
            let mut idx = [8u8; QK];
            if tv[b] < 4.0 {
                let src = &l.idx[tv[b] as usize];
                for (j, i) in idx.iter_mut().enumerate() {
                    *i = src[j * w + b] as u8;
                }
            }
            pack_block(dv[b], &idx, &mut dst[(g + b) * BLOCK_BYTES..(g + b + 1) * BLOCK_BYTES]);
        }
    }
}

/// `KVALUES[idx]` per lane (`idx` in 0..16) as f32: a 4-level select tree on the index bits.
#[inline(always)]
fn lookup<S: Simd>(s: S, idx: S::I) -> S::F {
    let m0 = s.ieq(s.iand(idx, s.isplat(1)), s.isplat(1));
    let m1 = s.ieq(s.iand(idx, s.isplat(2)), s.isplat(2));
    let m2 = s.ieq(s.iand(idx, s.isplat(4)), s.isplat(4));
    let m3 = s.ieq(s.iand(idx, s.isplat(8)), s.isplat(8));
    let k = KVALUES.map(f32::from);
    let p0 = s.select(m0, s.splat(k[1]), s.splat(k[0]));
    let p1 = s.select(m0, s.splat(k[3]), s.splat(k[2]));
    let p2 = s.select(m0, s.splat(k[5]), s.splat(k[4]));
    let p3 = s.select(m0, s.splat(k[7]), s.splat(k[6]));
    let p4 = s.select(m0, s.splat(k[9]), s.splat(k[8]));
    let p5 = s.select(m0, s.splat(k[11]), s.splat(k[10]));
    let p6 = s.select(m0, s.splat(k[13]), s.splat(k[12]));
    let p7 = s.select(m0, s.splat(k[15]), s.splat(k[14]));
    let q0 = s.select(m1, p1, p0);
    let q1 = s.select(m1, p3, p2);
    let q2 = s.select(m1, p5, p4);
    let q3 = s.select(m1, p7, p6);
    let r0 = s.select(m2, q1, q0);
    let r1 = s.select(m2, q3, q2);
    s.select(m3, r1, r0)
}

/// Generic SIMD dequantization of one iq4_nl row: `src` holds `y.len() / 32` blocks.
/// Bit-identical to [`crate::blocks::iq4nl::dequantize_row`] (and ggml / gguf).
#[inline(always)]
pub fn dequantize_row_simd<S: Simd>(s: S, src: &[u8], y: &mut [f32]) {
    if S::W > MAX_W || !(QK / 2).is_multiple_of(S::W) {
        return reference::dequantize_row(src, y);
    }
    let w = S::W;
    let i15 = s.isplat(15);
    for (b, yb) in src.chunks_exact(BLOCK_BYTES).zip(y.chunks_exact_mut(QK)) {
        let d = s.splat(half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32());
        for k in (0..QK / 2).step_by(w) {
            let q = s.load_u8(&b[2 + k..]);
            s.store(&mut yb[k..], s.mul(d, lookup(s, s.iand(q, i15))));
            s.store(&mut yb[QK / 2 + k..], s.mul(d, lookup(s, s.shr(q, 4))));
        }
    }
}

struct Quantize<'a> {
    x: &'a [f32],
    dst: &'a mut [u8],
    importance: Option<&'a [f32]>,
}

impl Kernel for Quantize<'_> {
    type Output = ();
    fn scalar(self) {
        reference::quantize_row(self.x, self.dst, self.importance)
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) {
        quantize_row_simd(s, self.x, self.dst, self.importance)
    }
}

struct Dequantize<'a> {
    src: &'a [u8],
    y: &'a mut [f32],
}

impl Kernel for Dequantize<'_> {
    type Output = ();
    fn scalar(self) {
        reference::dequantize_row(self.src, self.y)
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) {
        dequantize_row_simd(s, self.src, self.y)
    }
}

/// Quantize one row (see `blocks` for the contract).
pub fn quantize_row(isa: Isa, x: &[f32], dst: &mut [u8], importance: Option<&[f32]>) {
    crate::simd::run(isa, Quantize { x, dst, importance })
}

/// Dequantize one row.
pub fn dequantize_row(isa: Isa, src: &[u8], y: &mut [f32]) {
    crate::simd::run(isa, Dequantize { src, y })
}
