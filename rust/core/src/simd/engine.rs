//! The engine's float kernels ([`crate::model`]), each with a scalar reference in plain Rust
//! and a version written once over the [`Simd`] vocabulary, which agrees with it within float
//! rounding (sums taken in another order, [`exp`] within 2 ulp of `f32::exp`):
//!
//! * [`attend`]: one query's attention over one head's keys and values: scores
//!   `q · k_t · scale`, a softmax with the maximum subtracted, and `Σ_t p_t v_t / Σ_t p_t` (the
//!   scores four keys at a time by the f32 matmul's 4 × 1 kernel, the weighted sum with the
//!   output columns held in registers across the keys);
//! * [`swiglu`]: `silu(gate) · up` in place, `silu(g) = g / (1 + e^(−g))`.

use super::matmul::{dot_f32_4xc_simd, dot_f32_simd};
use super::vocab::{exp, Simd};
use super::{Isa, Kernel};

/// Attention of the query `q` (`hd` values) over `n` keys and values (`k`, `v`: `n × hd`,
/// row-major) into `out` (`hd` values); `scores` (`n` values) is scratch. Scores are scaled by
/// `scale`.
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
    let inv = softmax_simd(s, scores);
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

/// The last `x.len() % W` values of `x` as one vector, the lanes past them `pad` (`W` ≤ 16).
#[inline(always)]
fn tail_in<S: Simd>(s: S, x: &[f32], pad: f32) -> S::F {
    let mut t = [pad; 16];
    let rest = x.len() % S::W;
    t[..rest].copy_from_slice(&x[x.len() - rest..]);
    s.load(&t)
}

/// The first `x.len() % W` lanes of `v` into the last values of `x`.
#[inline(always)]
fn tail_out<S: Simd>(s: S, x: &mut [f32], v: S::F) {
    let mut t = [0f32; 16];
    s.store(&mut t, v);
    let (len, rest) = (x.len(), x.len() % S::W);
    x[len - rest..].copy_from_slice(&t[..rest]);
}

/// [`softmax`] over the vocabulary (the tail as one vector padded with −∞, whose [`exp`] is 0).
#[inline(always)]
fn softmax_simd<S: Simd>(s: S, sc: &mut [f32]) -> f32 {
    let full = sc.len() / S::W * S::W;
    let tail = tail_in(s, sc, f32::NEG_INFINITY);
    let mut m = tail;
    for c in sc[..full].chunks_exact(S::W) {
        m = s.max(m, s.load(c));
    }
    let m = s.splat(s.hmax(m));
    let mut l = s.splat(0.0);
    for c in sc[..full].chunks_exact_mut(S::W) {
        let e = exp(s, s.sub(s.load(c), m));
        s.store(c, e);
        l = s.add(l, e);
    }
    let e = exp(s, s.sub(tail, m));
    tail_out(s, sc, e);
    1.0 / s.hsum(s.add(l, e))
}

/// `gate[i] = gate[i] / (1 + e^(−gate[i])) · up[i]` (SwiGLU) at `isa`; `f32::exp` in the scalar
/// reference, [`exp`] in the SIMD version. Panics unless the lengths match.
pub fn swiglu(isa: Isa, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "SwiGLU lengths");
    crate::simd::run(isa, SwiGlu { gate, up })
}

struct SwiGlu<'a> {
    gate: &'a mut [f32],
    up: &'a [f32],
}

impl Kernel for SwiGlu<'_> {
    type Output = ();
    fn scalar(self) {
        swiglu_ref(self.gate, self.up);
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) {
        swiglu_simd(s, self.gate, self.up);
    }
}

/// The scalar reference of [`swiglu`].
pub fn swiglu_ref(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// [`swiglu`] over the vocabulary (the tail as one vector padded with zeros).
#[inline(always)]
pub fn swiglu_simd<S: Simd>(s: S, gate: &mut [f32], up: &[f32]) {
    let full = gate.len() / S::W * S::W;
    for (g, u) in gate[..full].chunks_exact_mut(S::W).zip(up.chunks_exact(S::W)) {
        s.store(g, silu_mul(s, s.load(g), s.load(u)));
    }
    let v = silu_mul(s, tail_in(s, gate, 0.0), tail_in(s, up, 0.0));
    tail_out(s, gate, v);
}

/// `g / (1 + e^(−g)) · u` per lane (a function, not a closure: a closure would not inherit the
/// caller's target features).
#[inline(always)]
fn silu_mul<S: Simd>(s: S, g: S::F, u: S::F) -> S::F {
    s.mul(s.div(g, s.add(s.splat(1.0), exp(s, s.neg(g)))), u)
}
