//! The element-wise and attention kernels of the forward pass (f32 in, f32 out).

use std::cell::RefCell;

use rayon::prelude::*;

use crate::simd::engine::attend;
use crate::simd::Isa;

/// RMSNorm of each row of `x` (rows of `w.len()` values) into `out`:
/// `x / sqrt(mean(x²) + eps) · w`, the mean accumulated in f64.
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f64, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss: f64 = xr.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let r = 1.0 / (ss / d as f64 + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = (f64::from(v) * r) as f32 * g;
        }
    }
}

/// `cos` and `sin` tables of RoPE for positions `0..n`: `n × inv_freq.len()` each, the angle
/// `pos · inv_freq[i]` computed in f64.
pub(crate) fn rope_tables(inv_freq: &[f64], n: usize) -> (Vec<f32>, Vec<f32>) {
    let angles = || (0..n).flat_map(|p| inv_freq.iter().map(move |&f| p as f64 * f));
    (angles().map(|a| a.cos() as f32).collect(), angles().map(|a| a.sin() as f32).collect())
}

/// Rotary embedding in transformers' `rotate_half` convention, in place: `x` is rows of
/// `heads × hd` values, row `i` at position `p0 + i`; each head's pairs are `(j, j + hd/2)`:
/// `(a, b) → (a·cos − b·sin, b·cos + a·sin)` with the angle of pair `j`. `cos`/`sin` are
/// [`rope_tables`] (`hd / 2` per position).
pub(crate) fn rope(x: &mut [f32], heads: usize, hd: usize, p0: usize, cos: &[f32], sin: &[f32]) {
    let half = hd / 2;
    for (i, row) in x.chunks_exact_mut(heads * hd).enumerate() {
        let (c, s) = (&cos[(p0 + i) * half..][..half], &sin[(p0 + i) * half..][..half]);
        for head in row.chunks_exact_mut(hd) {
            let (a, b) = head.split_at_mut(half);
            for j in 0..half {
                let (x1, x2) = (a[j], b[j]);
                a[j] = x1 * c[j] - x2 * s[j];
                b[j] = x2 * c[j] + x1 * s[j];
            }
        }
    }
}

/// `x[i] += y[i]`.
pub(crate) fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, &b)| *a += b);
}

/// Add `bias` to each row of `x`.
pub(crate) fn add_bias(x: &mut [f32], bias: &[f32]) {
    x.chunks_exact_mut(bias.len()).for_each(|r| add(r, bias));
}

/// The shape of an attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Values per head.
    pub hd: usize,
    /// Positions the cache holds per head (its stride).
    pub ctx: usize,
    /// Position of the first query.
    pub p0: usize,
    /// Sliding window: a query at position q sees keys `q - window < k <= q`; `None` = all `k <= q`.
    pub window: Option<usize>,
}

thread_local! {
    /// Attention scores of one (query, head), reused across calls; grows to the longest context.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Causal scaled dot-product attention of `n` new queries (`q`: `n × heads × hd`, query `i` at
/// position `p0 + i`) over the cache of one layer (`k`, `v`: `kv_heads × ctx × hd`, positions
/// `0..p0 + n` filled) into `out` (`n × heads × hd`). Query head `h` reads kv head
/// `h / (heads / kv_heads)` (GQA); scores are scaled by `1/sqrt(hd)`; softmax in f32 with the
/// maximum subtracted, as transformers' eager attention ([`crate::simd::engine::attend`] at
/// `isa`). Parallel over (query, head).
pub(crate) fn attention(isa: Isa, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], s: AttnShape) {
    let AttnShape { heads, kv_heads, hd, ctx, p0, window } = s;
    let scale = 1.0 / (hd as f32).sqrt();
    let group = heads / kv_heads;
    out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
        let (i, h) = (idx / heads, idx % heads);
        let qv = &q[idx * hd..(idx + 1) * hd];
        let (kh, vh) = (&k[(h / group) * ctx * hd..][..ctx * hd], &v[(h / group) * ctx * hd..][..ctx * hd]);
        let end = p0 + i + 1;
        let first = window.map_or(0, |w| end.saturating_sub(w));
        let (kh, vh) = (&kh[first * hd..end * hd], &vh[first * hd..end * hd]);
        let n_keys = end - first;
        SCORES.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() < n_keys {
                buf.resize(n_keys, 0.0);
            }
            attend(isa, qv, kh, vh, scale, &mut buf[..n_keys], o);
        });
    });
}
