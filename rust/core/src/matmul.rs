//! Quantized matrix multiplication: `y = x · Wᵀ` for a weight `W` (rows = output features,
//! cols = input features) stored in any [`QType`], and f32 activations `x`
//! (`n × cols`).
//!
//! A weight is a [`QMatrix`]: its [`Layout`], the `data` bytes of its rows, and optionally an
//! act-order permutation (`perm`, group-affine only: stored column `j` holds input column
//! `perm[j]`) and a sparse outlier sidecar (CSR, added to the dequantized stored row; outlier
//! columns index stored columns). The part layouts are those of `formats/LBF.md` §5, so an
//! LBF tensor's parts can be used without copying.
//!
//! [`matmul_reference`] is the plain reference: each stored row is dequantized with the scalar
//! kernels and multiplied in f64. [`matmul`] is the fast path:
//!
//! * **Activations** are gathered into stored column order once per call (with a permutation)
//!   and, for quantized weights, quantized once per call to int8 blocks of 32 with an f32 step
//!   ([`crate::simd::matmul::quantize_act`]).
//! * **Weights** are processed in tiles of consecutive rows (about [`TILE_BYTES`] once
//!   decoded), one rayon task per tile: each row of the tile is decoded into a thread-local
//!   buffer as i8 codes + per-16 f32 scales (+ mins) ([`crate::simd::matmul::decode_row`]; one
//!   decoder per type family, written once over a 32-byte SIMD vocabulary), then every
//!   activation row is multiplied with the decoded rows by the ISA's int8 dot kernel, four
//!   weight rows at a time ([`crate::simd::matmul::dot_q8_x4`]: each activation vector is
//!   loaded once for the four). For GEMV (`n = 1`) the tile stays in L1/L2 between decoding
//!   and the dot; for GEMM the decoded tile is reused by all `n` activation rows, so decoding
//!   (the per-type work) costs once per weight row, not once per product: decoding is the
//!   repacking, done on the fly. Float weights (f32/f16/bf16) are converted per tile to f32
//!   and multiplied with FMA dots, without activation quantization.
//! * **Outliers** add `Σ x[perm(c)] · v` per row in the same pass.
//! * No allocation happens per row or tile after warm-up: the tile buffers are thread-local and
//!   only borrowed inside a leaf task (which never waits on rayon), so calls are re-entrant and
//!   may run concurrently from any thread, inside or outside rayon tasks. The per-call
//!   activation buffers are kept in a thread-local slot between calls, taken out while in use
//!   (a nested call on the same thread simply allocates its own).
//!
//! Accuracy: the difference to [`matmul_reference`] is the activation quantization error
//! (at most half a step, `amax / 254`, per value of each 32-value block) times `|w|`, plus f32
//! rounding; `tests/matmul.rs` checks exactly that bound. Different ISAs agree within
//! [`crate::simd::matmul::dot_tolerance`].

use std::cell::RefCell;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::check_perm_outliers;
use crate::qtype::{Family, QType};
use crate::quant::Layout;
use crate::simd::matmul::{self as kern, padded, QS};
use crate::simd::Isa;

/// Bytes of decoded weights per tile (i8 codes plus f32 scales and mins, or f32 values):
/// small enough to stay in L2 while every activation row passes over it.
pub const TILE_BYTES: usize = 48 * 1024;
/// Most weight rows per tile.
const MAX_TILE_ROWS: usize = 64;
/// Multiply-adds below which a call runs on the calling thread only (rayon's overhead is a
/// few microseconds).
const PAR_MIN_WORK: usize = 1 << 18;

/// The sparse outliers of a weight (LBF §5 parts 2–4), little-endian bytes.
#[derive(Debug, Clone, Copy)]
pub struct Outliers<'a> {
    /// `rows + 1` u64 row pointers (non-decreasing, first 0, last nnz).
    pub row_ptr: &'a [u8],
    /// `nnz` u32 stored-column indices, increasing within a row, `< cols`.
    pub cols: &'a [u8],
    /// `nnz` f16 values.
    pub vals: &'a [u8],
}

impl Outliers<'_> {
    /// Row pointer `i`.
    #[inline]
    pub fn ptr(&self, i: usize) -> usize {
        u64::from_le_bytes(self.row_ptr[i * 8..i * 8 + 8].try_into().expect("8 bytes")) as usize
    }

    /// Stored column and value of outlier `k`.
    #[inline]
    pub fn entry(&self, k: usize) -> (usize, f32) {
        let c = u32::from_le_bytes(self.cols[k * 4..k * 4 + 4].try_into().expect("4 bytes")) as usize;
        let v = half::f16::from_bits(u16::from_le_bytes([self.vals[k * 2], self.vals[k * 2 + 1]])).to_f32();
        (c, v)
    }
}

/// A borrowed weight matrix of any storage type. Build it with [`QMatrix::new`], which checks
/// every length and the content of `perm` and the outliers.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    layout: Layout,
    data: &'a [u8],
    perm: Option<&'a [u8]>,
    outliers: Option<Outliers<'a>>,
}

impl<'a> QMatrix<'a> {
    /// A checked weight: `data` is `layout.nbytes()` bytes; `perm` (group-affine only) is
    /// `4 × cols` bytes holding a permutation of `0..cols`; the outliers are well formed.
    pub fn new(
        layout: Layout,
        data: &'a [u8],
        perm: Option<&'a [u8]>,
        outliers: Option<Outliers<'a>>,
    ) -> Result<QMatrix<'a>> {
        let (rows, cols) = (layout.rows, layout.cols);
        if data.len() != layout.nbytes() {
            return Err(Error::Shape(format!(
                "weight data has {} bytes, a {} matrix of {rows} × {cols} has {}",
                data.len(),
                layout.qtype.name(),
                layout.nbytes()
            )));
        }
        if let Some(p) = perm {
            if layout.affine.is_none() {
                return Err(Error::InvalidParameter(format!(
                    "an act-order permutation needs a group-affine type, not {}",
                    layout.qtype.name()
                )));
            }
            if p.len() != cols * 4 {
                return Err(Error::Shape(format!("perm has {} bytes, expected 4 × {cols}", p.len())));
            }
        }
        if let Some(o) = outliers {
            if o.row_ptr.len() != (rows + 1) * 8 || o.cols.len() % 4 != 0 || o.vals.len() * 2 != o.cols.len() {
                return Err(Error::Shape(format!(
                    "outliers need {} bytes of row pointers and 4 × nnz column bytes with 2 × nnz value bytes \
                     (got {}, {}, {})",
                    (rows + 1) * 8,
                    o.row_ptr.len(),
                    o.cols.len(),
                    o.vals.len()
                )));
            }
            let nnz = o.cols.len() / 4;
            if let Some(k) = (0..nnz).find(|&k| !o.entry(k).1.is_finite()) {
                return Err(Error::InvalidParameter(format!("outlier {k}: value {} is not finite", o.entry(k).1)));
            }
        }
        let (row_ptr, ocols) = outliers.map_or((&[][..], &[][..]), |o| (o.row_ptr, o.cols));
        check_perm_outliers(rows, cols, perm.unwrap_or(&[]), row_ptr, ocols)
            .map_err(|(_, msg)| Error::InvalidParameter(msg))?;
        Ok(QMatrix { layout, data, perm, outliers })
    }

    /// A weight whose parts were already checked by [`QMatrix::new`] (the engine checks each
    /// tensor once at load and rebuilds the borrow per call without re-scanning perm and outliers).
    pub(crate) fn prechecked(
        layout: Layout,
        data: &'a [u8],
        perm: Option<&'a [u8]>,
        outliers: Option<Outliers<'a>>,
    ) -> QMatrix<'a> {
        debug_assert_eq!(data.len(), layout.nbytes());
        QMatrix { layout, data, perm, outliers }
    }

    /// The layout (type, shape, bytes per row).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The bytes of stored row `r`.
    #[inline]
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.layout.row_bytes;
        &self.data[r * rb..(r + 1) * rb]
    }

    /// The input column held by stored column `j` (identity without a permutation).
    #[inline]
    pub fn perm_at(&self, j: usize) -> usize {
        match self.perm {
            Some(p) => u32::from_le_bytes(p[j * 4..j * 4 + 4].try_into().expect("4 bytes")) as usize,
            None => j,
        }
    }

    /// Whether there is an act-order permutation.
    pub fn has_perm(&self) -> bool {
        self.perm.is_some()
    }

    /// The outliers, if any.
    pub fn outliers(&self) -> Option<&Outliers<'a>> {
        self.outliers.as_ref()
    }
}

/// Check the shapes of a matmul call: `x` is `n × cols`, `y` is `n × rows`, all finite.
pub(crate) fn check_args(w: &QMatrix<'_>, x: &[f32], n: usize, y: &[f32]) -> Result<()> {
    let (rows, cols) = (w.layout.rows, w.layout.cols);
    if x.len() != n * cols {
        return Err(Error::Shape(format!("x has {} values, expected {n} × {cols}", x.len())));
    }
    if y.len() != n * rows {
        return Err(Error::Shape(format!("y has {} values, expected {n} × {rows}", y.len())));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::BadValue {
            what: if x[i].is_nan() { "NaN" } else { "infinite value" },
            index: i,
            row: i / cols,
            col: i % cols,
            value: x[i],
            limit: crate::error::Limit(None),
        });
    }
    Ok(())
}

/// The reference: every stored row dequantized by the scalar kernels (plus outliers), the
/// input gathered through the permutation, products summed in f64. `y` is `n × rows`.
pub fn matmul_reference(w: &QMatrix<'_>, x: &[f32], n: usize, y: &mut [f32]) -> Result<()> {
    check_args(w, x, n, y)?;
    let Layout { qtype, affine, rows, cols, .. } = w.layout;
    let mut wrow = vec![0f32; cols];
    for r in 0..rows {
        crate::blocks::dequantize_row(Isa::Scalar, qtype, affine, w.row(r), &mut wrow);
        if let Some(o) = w.outliers {
            for k in o.ptr(r)..o.ptr(r + 1) {
                let (c, v) = o.entry(k);
                wrow[c] += v;
            }
        }
        for i in 0..n {
            let xi = &x[i * cols..(i + 1) * cols];
            let acc: f64 = wrow.iter().enumerate().map(|(j, &wv)| f64::from(wv) * f64::from(xi[w.perm_at(j)])).sum();
            y[i * rows + r] = acc as f32;
        }
    }
    Ok(())
}

/// The f32 products one output of [`matmul`] adds per 16 values of a row, by type: one per
/// value for float weights (FMA dot); one per i32 lane of 4 int8 products for quantized
/// weights, plus one per 16 values for the types whose decoded rows carry mins (q4_1, q5_1,
/// q2_k, q4_k, q5_k, asymmetric int8); a ragged k-type counts as its base type. ISAs differ only
/// in the order of these additions, so their outputs agree within [`isa_tolerance`].
pub const ISA_TERMS_PER_16: [(QType, usize); 18] = [
    (QType::F32, 16),
    (QType::F16, 16),
    (QType::BF16, 16),
    (QType::Q8_0, 4),
    (QType::Q4_0, 4),
    (QType::Q4_1, 5),
    (QType::Q5_0, 4),
    (QType::Q5_1, 5),
    (QType::Q2K, 5),
    (QType::Q3K, 4),
    (QType::Q4K, 5),
    (QType::Q5K, 5),
    (QType::Q6K, 4),
    (QType::IQ4NL, 4),
    (QType::Int2, 4),
    (QType::Int3, 4),
    (QType::Int4, 4),
    (QType::Int8, 5),
];

/// The largest difference between two ISAs' [`matmul`] outputs for a weight of `qtype` with
/// rows of `cols` values, relative to `Σ_j |w_j| · |x_j|` (the magnitudes of the products;
/// for types with mins `|w_j|` counts the scaled code and the min separately):
/// [`kern::dot_tolerance`] of the number of f32 products in [`ISA_TERMS_PER_16`].
pub fn isa_tolerance(qtype: QType, cols: usize) -> f64 {
    let qtype = qtype.ragged_base().unwrap_or(qtype);
    let per16 = ISA_TERMS_PER_16.iter().find(|(q, _)| *q == qtype).map_or(16, |&(_, t)| t);
    kern::dot_tolerance(cols.div_ceil(QS) * per16)
}

/// Thread-local buffers of one tile of decoded weight rows.
#[derive(Debug, Default)]
struct Tile {
    codes: Vec<i8>,
    sw: Vec<f32>,
    mw: Vec<f32>,
    wf: Vec<f32>,
}

thread_local! {
    static TILE: RefCell<Tile> = RefCell::new(Tile::default());
    static ACTS: RefCell<Acts> = RefCell::new(Acts::default());
}

/// Per-call activation buffers: gathered rows, and their int8 quantization.
#[derive(Debug, Default)]
struct Acts {
    xg: Vec<f32>,
    q: Vec<i8>,
    d16: Vec<f32>,
    s16: Vec<f32>,
    scale: Vec<f32>,
}

/// The first `len` elements of a scratch buffer, grown (never shrunk) as needed. The callers
/// overwrite every element they read, so old contents are never seen.
fn scratch<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

/// Σ x[c] · v over the outliers of stored row `r` (`x` in stored column order).
#[inline]
fn outlier_sum(w: &QMatrix<'_>, r: usize, x: &[f32]) -> f32 {
    w.outliers.map_or(0.0, |o| {
        (o.ptr(r)..o.ptr(r + 1)).fold(0.0, |acc, k| {
            let (c, v) = o.entry(k);
            acc + x[c] * v
        })
    })
}

/// `y = x · Wᵀ`: `x` is `n × cols` f32 (row-major), `y` is `n × rows`. Float weights
/// (f32/f16/bf16) multiply in f32; quantized weights quantize `x` on the fly to int8 blocks
/// and multiply in integer SIMD (see the module doc). `isa` forces a level (default:
/// [`crate::simd::active`]).
///
/// Errors: shapes that do not match, NaN/Inf in `x`, an unavailable ISA.
pub fn matmul(w: &QMatrix<'_>, x: &[f32], n: usize, y: &mut [f32], isa: Option<Isa>) -> Result<()> {
    let isa = match isa {
        Some(i) => i.require()?,
        None => crate::simd::active()?,
    };
    check_args(w, x, n, y)?;
    let mut acts = ACTS.with(|a| std::mem::take(&mut *a.borrow_mut()));
    run(w, x, n, y, isa, &mut acts);
    ACTS.with(|a| *a.borrow_mut() = acts);
    Ok(())
}

fn run(w: &QMatrix<'_>, x: &[f32], n: usize, y: &mut [f32], isa: Isa, acts: &mut Acts) {
    let Layout { qtype, affine, rows, cols, .. } = w.layout;
    let Acts { xg, q, d16, s16, scale } = acts;
    let xs: &[f32] = if w.has_perm() {
        let xg = scratch(xg, n * cols);
        for (g, xi) in xg.chunks_exact_mut(cols).zip(x.chunks_exact(cols)) {
            for (j, v) in g.iter_mut().enumerate() {
                *v = xi[w.perm_at(j)];
            }
        }
        xg
    } else {
        x
    };
    let par = n * rows * cols >= PAR_MIN_WORK;
    let float = qtype.info().family == Family::Float;
    let cp = padded(cols);
    let nsub = cp / QS;
    // Float weights need no quantized activations.
    let nq = if float { 0 } else { n };
    let (q, d16, s16, scale) =
        (scratch(q, nq * cp), scratch(d16, nq * nsub), scratch(s16, nq * nsub), scratch(scale, nq));
    if !float {
        let parts = q
            .par_chunks_mut(cp)
            .zip(d16.par_chunks_mut(nsub))
            .zip(s16.par_chunks_mut(nsub))
            .zip(scale.par_iter_mut())
            .zip(xs.par_chunks(cols));
        type Parts<'a> = ((((&'a mut [i8], &'a mut [f32]), &'a mut [f32]), &'a mut f32), &'a [f32]);
        let quant = |((((q, d), s), sc), xi): Parts<'_>| {
            *sc = kern::quantize_act(isa, xi, q, d, s);
        };
        if par && n > 1 {
            parts.for_each(quant);
        } else {
            parts.with_min_len(usize::MAX).for_each(quant);
        }
    }
    let (q, d16, s16, scale) = (&*q, &*d16, &*s16, &*scale);
    let mins = kern::has_mins(qtype, affine);
    let row_bytes = if float { 4 * cols } else { cp + cp / 2 };
    let tile = (TILE_BYTES / row_bytes).clamp(1, MAX_TILE_ROWS);
    // Output of tile `t`: `yt` rows × n (the transpose of y's block, = y's block when n = 1).
    let tile_fn = |(t, out): (usize, &mut [f32])| {
        let r0 = t * tile;
        let nr = out.len() / n;
        TILE.with(|cell| {
            let mut guard = cell.borrow_mut();
            let tb = &mut *guard;
            if float {
                let wf = scratch(&mut tb.wf, nr * cols);
                for (r, wr) in wf.chunks_exact_mut(cols).enumerate() {
                    crate::blocks::dequantize_row(isa, qtype, affine, w.row(r0 + r), wr);
                }
                // Blocks of 4 weight rows × 2 activation rows share their loads; the tile stays
                // in cache while the activations stream past it. Edge blocks repeat their last
                // row, so every product comes from the same kernel: a token's logits do not
                // depend on the batch it is in.
                let wr = |r: usize| &wf[r.min(nr - 1) * cols..][..cols];
                let x = |i: usize| &xs[i.min(n - 1) * cols..][..cols];
                for i in (0..n).step_by(2) {
                    for r in (0..nr).step_by(4) {
                        let v = kern::dot_f32_4x2(isa, [wr(r), wr(r + 1), wr(r + 2), wr(r + 3)], [x(i), x(i + 1)]);
                        for (j, vj) in v.iter().enumerate().take(nr - r) {
                            for (k, &vk) in vj.iter().enumerate().take(n - i) {
                                out[(r + j) * n + i + k] = vk + outlier_sum(w, r0 + r + j, x(i + k));
                            }
                        }
                    }
                }
                return;
            }
            let (codes, sw, mw) =
                (scratch(&mut tb.codes, nr * cp), scratch(&mut tb.sw, nr * nsub), scratch(&mut tb.mw, nr * nsub));
            for (r, ((c, s), m)) in
                codes.chunks_exact_mut(cp).zip(sw.chunks_exact_mut(nsub)).zip(mw.chunks_exact_mut(nsub)).enumerate()
            {
                kern::decode_row(isa, qtype, affine, cols, w.row(r0 + r), c, s, m);
            }
            for i in 0..n {
                let (q, d16) = (&q[i * cp..(i + 1) * cp], &d16[i * nsub..(i + 1) * nsub]);
                let s16 = &s16[i * nsub..(i + 1) * nsub];
                let xi = &xs[i * cols..(i + 1) * cols];
                let c = |r: usize| &codes[r * cp..(r + 1) * cp];
                let s = |r: usize| &sw[r * nsub..(r + 1) * nsub];
                let finish = |r: usize, v: f32| {
                    let v = if mins { v + kern::dot_f32(isa, &mw[r * nsub..(r + 1) * nsub], s16) } else { v };
                    v * scale[i] + outlier_sum(w, r0 + r, xi)
                };
                // Four rows at a time share each activation load.
                let quads = nr / 4 * 4;
                for r in (0..quads).step_by(4) {
                    let v = kern::dot_q8_x4(
                        isa,
                        [c(r), c(r + 1), c(r + 2), c(r + 3)],
                        [s(r), s(r + 1), s(r + 2), s(r + 3)],
                        q,
                        d16,
                    );
                    for (j, vj) in v.into_iter().enumerate() {
                        out[(r + j) * n + i] = finish(r + j, vj);
                    }
                }
                for r in quads..nr {
                    out[r * n + i] = finish(r, kern::dot_q8(isa, c(r), s(r), q, d16));
                }
            }
        })
    };
    let drive = |yt: &mut [f32]| {
        if par {
            yt.par_chunks_mut(tile * n).enumerate().for_each(tile_fn);
        } else {
            yt.chunks_mut(tile * n).enumerate().for_each(tile_fn);
        }
    };
    if n == 1 {
        drive(y);
    } else {
        let mut yt = vec![0f32; rows * n];
        drive(&mut yt);
        for (r, yr) in yt.chunks_exact(n).enumerate() {
            for (i, &v) in yr.iter().enumerate() {
                y[i * rows + r] = v;
            }
        }
    }
}
