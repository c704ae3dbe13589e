//! Quantized matrix multiplication: `y = x · Wᵀ` for a weight `W` (rows = output features,
//! cols = input features) stored in any [`QType`], and f32 activations `x` (`n × cols`).
//!
//! A weight is a [`QMatrix`]: its [`Layout`], the `data` bytes of its rows, and optionally an
//! act-order permutation (`perm`, group-affine only: stored column `j` holds input column
//! `perm[j]`) and a sparse outlier sidecar (CSR, added to the dequantized stored row; outlier
//! columns index stored columns). The part layouts are those of `formats/LBF.md` §5, so an
//! LBF tensor's parts can be used without copying.
//!
//! [`matmul_reference`] is the plain reference: each stored row is dequantized with the scalar
//! kernels and multiplied in f64. [`matmul`] is the fast path.

use crate::error::{Error, Result};
use crate::quant::Layout;
use crate::simd::Isa;

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
            let mut seen = vec![false; cols];
            for (j, c) in p.chunks_exact(4).enumerate() {
                let v = u32::from_le_bytes(c.try_into().expect("4 bytes")) as usize;
                if v >= cols || std::mem::replace(&mut seen[v], true) {
                    return Err(Error::InvalidParameter(format!(
                        "perm is not a permutation of 0..{cols} (entry {j} = {v})"
                    )));
                }
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
            if o.ptr(0) != 0 || o.ptr(rows) != nnz {
                return Err(Error::InvalidParameter(format!("outlier row pointers must run from 0 to {nnz}")));
            }
            for r in 0..rows {
                let (a, b) = (o.ptr(r), o.ptr(r + 1));
                if a > b || b > nnz {
                    return Err(Error::InvalidParameter(format!("outlier row pointers decrease at row {r}")));
                }
                let mut last = None;
                for k in a..b {
                    let (c, v) = o.entry(k);
                    if c >= cols || last.is_some_and(|l| c <= l) || !v.is_finite() {
                        return Err(Error::InvalidParameter(format!(
                            "outlier {k} of row {r}: column {c} out of range or order, or value {v} not finite"
                        )));
                    }
                    last = Some(c);
                }
            }
        }
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

/// `y = x · Wᵀ`: `x` is `n × cols` f32 (row-major), `y` is `n × rows`. Float weights
/// (f32/f16/bf16) multiply in f32; quantized weights quantize `x` on the fly to int8 blocks
/// and multiply in integer SIMD. `isa` forces a level (default: [`crate::simd::active`]).
///
/// Errors: shapes that do not match, NaN/Inf in `x`, an unavailable ISA.
pub fn matmul(w: &QMatrix<'_>, x: &[f32], n: usize, y: &mut [f32], isa: Option<Isa>) -> Result<()> {
    let _isa = match isa {
        Some(i) => i.require()?,
        None => crate::simd::active()?,
    };
    // Placeholder until the fast path lands: the reference.
    matmul_reference(w, x, n, y)
}
