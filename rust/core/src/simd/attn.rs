//! One query's attention over one head's keys and values, the engine's inner loop
//! ([`crate::model`]): scores `q · k_t · scale`, a softmax with the maximum subtracted, and
//! `Σ_t p_t v_t / Σ_t p_t`. The scalar reference is plain Rust; the SIMD version is written once
//! over the [`Simd`] vocabulary (the scores four keys at a time by the f32 matmul's 4 × 1
//! kernel, the weighted sum with the output columns held in registers across the keys), and
//! agrees with the reference within float rounding (the sums are taken in another order).

use super::matmul::{dot_f32_4xc_simd, dot_f32_simd};
use super::vocab::Simd;
use super::{Isa, Kernel};

/// Attention of the query `q` (`hd` values) over `n` keys and values (`k`, `v`: `n × hd`,
/// row-major) into `out` (`hd` values); `scores` (`n` values) is scratch. Scores are scaled by
/// `scale`; the exponentials are `f32::exp` at every level.
///
/// Panics unless `hd > 0`, `n > 0` and the lengths match.
pub fn attend(isa: Isa, q: &[f32], k: &[f32], v: &[f32], scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let (hd, n) = (q.len(), scores.len());
    assert!(hd > 0 && n > 0 && out.len() == hd && k.len() == n * hd && v.len() == n * hd, "attention shapes");
    crate::simd::run(isa, Attend { q, k, v, scale, scores, out })
}

struct Attend<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    scale: f32,
    scores: &'a mut [f32],
    out: &'a mut [f32],
}

impl Kernel for Attend<'_> {
    type Output = ();
    fn scalar(self) {
        attend_ref(self.q, self.k, self.v, self.scale, self.scores, self.out);
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) {
        attend_simd(s, self.q, self.k, self.v, self.scale, self.scores, self.out);
    }
}

/// Softmax of `sc` in place (maximum subtracted, `f32::exp`); returns `1 / Σ`.
fn softmax(sc: &mut [f32]) -> f32 {
    let m = sc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut l = 0f32;
    for x in sc.iter_mut() {
        *x = (*x - m).exp();
        l += *x;
    }
    1.0 / l
}

/// Dot product with eight independent accumulators (so that the compiler vectorises it).
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for (a, (x, y)) in acc.iter_mut().zip(x.iter().zip(y)) {
            *a += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The scalar reference of [`attend`].
pub fn attend_ref(q: &[f32], k: &[f32], v: &[f32], scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let hd = q.len();
    for (x, kt) in scores.iter_mut().zip(k.chunks_exact(hd)) {
        *x = dot8(q, kt) * scale;
    }
    let inv = softmax(scores);
    out.fill(0.0);
    for (&p, vt) in scores.iter().zip(v.chunks_exact(hd)) {
        out.iter_mut().zip(vt).for_each(|(a, &b)| *a += p * b);
    }
    out.iter_mut().for_each(|x| *x *= inv);
}

/// [`attend`] over the vocabulary.
#[inline(always)]
pub fn attend_simd<S: Simd>(s: S, q: &[f32], k: &[f32], v: &[f32], scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let (hd, n) = (q.len(), scores.len());
    let mut t = 0;
    while t + 4 <= n {
        let d = dot_f32_4xc_simd(s, std::array::from_fn(|j| &k[(t + j) * hd..][..hd]), [q], 0);
        for (x, dj) in scores[t..t + 4].iter_mut().zip(d) {
            *x = dj[0] * scale;
        }
        t += 4;
    }
    for (x, kt) in scores[t..].iter_mut().zip(k[t * hd..].chunks_exact(hd)) {
        *x = dot_f32_simd(s, kt, q) * scale;
    }
    let inv = softmax(scores);
    // Columns in blocks of four vectors, then one, each block's sums in registers over all the
    // keys; the last columns (fewer than `W`) in scalar code.
    let w = S::W;
    let mut c = 0;
    while c + 4 * w <= hd {
        weighted::<S, 4>(s, scores, v, hd, c, inv, out);
        c += 4 * w;
    }
    while c + w <= hd {
        weighted::<S, 1>(s, scores, v, hd, c, inv, out);
        c += w;
    }
    for col in c..hd {
        let a = scores.iter().enumerate().fold(0f32, |a, (t, &p)| a + p * v[t * hd + col]);
        out[col] = a * inv;
    }
}

/// `out[c .. c + B W] = inv · Σ_t p_t · v[t, c .. c + B W]`.
#[inline(always)]
fn weighted<S: Simd, const B: usize>(s: S, p: &[f32], v: &[f32], hd: usize, c: usize, inv: f32, out: &mut [f32]) {
    let w = S::W;
    let mut acc = [s.splat(0.0); B];
    for (t, &pt) in p.iter().enumerate() {
        let (pv, row) = (s.splat(pt), &v[t * hd + c..]);
        for (j, a) in acc.iter_mut().enumerate() {
            *a = s.fma(pv, s.load(&row[j * w..]), *a);
        }
    }
    let inv = s.splat(inv);
    for (j, a) in acc.iter().enumerate() {
        s.store(&mut out[c + j * w..], s.mul(*a, inv));
    }
}
