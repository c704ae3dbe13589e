//! The quantization driver: resolves a type name and options into a [`Layout`], validates the
//! input (shape, finiteness, range) with precise errors, and runs the row kernels in parallel
//! over rows (rayon) at the requested ISA.

use rayon::prelude::*;

use crate::blocks::dq;
use crate::blocks::kquants::{ragged, QK_K};
use crate::blocks::{self, AffineRow, RowCtx};
use crate::error::{Error, Limit, Result};
use crate::qtype::{parse_qtype, AffineSpec, Family, QType, DEFAULT_GROUP_SIZE};
use crate::simd::{self, Isa};

/// Values per parallel task: below this a tensor is processed on the calling thread.
const PAR_MIN_VALUES: usize = 1 << 16;

/// The input values of a quantization, row-major, `rows * cols` long.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// IEEE half-precision bit patterns.
    F16(&'a [u16]),
    /// bfloat16 bit patterns (numpy cannot hold bf16, so they arrive as raw u16).
    BF16(&'a [u16]),
}

impl Source<'_> {
    fn len(&self) -> usize {
        match self {
            Source::F32(s) => s.len(),
            Source::F16(s) | Source::BF16(s) => s.len(),
        }
    }

    /// Row `r` as f32: borrowed for f32 input, converted into `buf` otherwise.
    fn row<'b>(&'b self, r: usize, cols: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
        let range = r * cols..(r + 1) * cols;
        match self {
            Source::F32(s) => &s[range],
            Source::F16(s) => {
                buf.clear();
                buf.extend(s[range].iter().map(|&b| half::f16::from_bits(b).to_f32()));
                buf
            }
            Source::BF16(s) => {
                buf.clear();
                buf.extend(s[range].iter().map(|&b| half::bf16::from_bits(b).to_f32()));
                buf
            }
        }
    }
}

/// Options of [`quantize`]. Everything is optional; what a type does not use must stay unset.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuantOptions<'a> {
    /// Group-affine only: columns per group (32, 64, 128, 256; 0 = whole row). Default 128.
    pub group_size: Option<usize>,
    /// Group-affine only: symmetric (no zeros). Default false.
    pub symmetric: Option<bool>,
    /// Per-column importance (length `cols`, finite, >= 0): weights the error of the scale
    /// searches (k-quants, iq4_nl, legacy types, group-affine clipping search).
    pub importance: Option<&'a [f32]>,
    /// Group-affine only: shrink each group's range by this factor, in (0, 1].
    pub clip_ratio: Option<f32>,
    /// Group-affine only: explicit per-group minimum, `rows × groups`, row-major.
    pub group_min: Option<&'a [f32]>,
    /// Group-affine only: explicit per-group maximum, `rows × groups`, row-major.
    pub group_max: Option<&'a [f32]>,
    /// Force an instruction set (default: [`simd::active`]).
    pub isa: Option<Isa>,
}

/// The shape and byte geometry of a quantized tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Storage type.
    pub qtype: QType,
    /// Group-affine parameters (only for `int*` types).
    pub affine: Option<AffineSpec>,
    /// Rows (output features).
    pub rows: usize,
    /// Values per row (input features).
    pub cols: usize,
    /// Bytes per row.
    pub row_bytes: usize,
}

impl Layout {
    /// A checked layout: `rows, cols > 0`, the row length fits the type's blocks, sizes do not
    /// overflow.
    ///
    /// A ragged k-type on rows that are a multiple of 256 becomes its ggml type (`q4_kr` →
    /// `q4_k`): the bytes are the same, and the ggml type exports to GGUF.
    pub fn new(qtype: QType, affine: Option<AffineSpec>, rows: usize, cols: usize) -> Result<Layout> {
        if rows == 0 || cols == 0 {
            return Err(Error::Shape(format!("empty tensor ({rows} × {cols}): nothing to quantize")));
        }
        let qtype = match qtype.ragged_base() {
            Some(base) if cols.is_multiple_of(QK_K) => base,
            _ => qtype,
        };
        let row_bytes = row_bytes(qtype, affine, cols)?;
        rows.checked_mul(row_bytes)
            .and_then(|n| rows.checked_mul(cols).map(|_| n))
            .ok_or_else(|| Error::Shape(format!("tensor of {rows} × {cols} is too large")))?;
        Ok(Layout { qtype, affine, rows, cols, row_bytes })
    }

    /// Total bytes.
    pub fn nbytes(&self) -> usize {
        self.rows * self.row_bytes
    }

    /// Bits per weight, counting everything stored (codes, scales, zeros).
    pub fn bits_per_weight(&self) -> f64 {
        (self.nbytes() * 8) as f64 / (self.rows * self.cols) as f64
    }
}

/// Bytes of one row of `cols` values of a type (group-affine: codes, scales, zeros; see
/// [`AffineSpec::row_bytes`]), after checking that the parameters fit the type and the row
/// length fits its blocks. Overflow is a [`Error::Shape`]. Shared by [`Layout::new`] and the LBF
/// reader and writer.
pub fn row_bytes(qtype: QType, affine: Option<AffineSpec>, cols: usize) -> Result<usize> {
    let info = qtype.info();
    let too_large = || Error::Shape(format!("row of {cols} values is too large"));
    match (info.family, affine) {
        (Family::Affine, Some(spec)) => {
            if Some(spec.bits) != qtype.affine_bits() {
                return Err(Error::InvalidParameter(format!("{} needs bits {:?}", info.name, qtype.affine_bits())));
            }
            if !cols.is_multiple_of(8) {
                return Err(Error::Shape(format!(
                    "row length {cols} is not a multiple of 8, which {} needs (codes are packed 8 at a time)",
                    info.name
                )));
            }
            spec.checked_row_bytes(cols).ok_or_else(too_large)
        }
        (Family::Affine, None) => {
            Err(Error::InvalidParameter(format!("{} needs a group size and symmetry", info.name)))
        }
        (_, Some(_)) => Err(Error::InvalidParameter(format!("{} takes no group-affine parameters", info.name))),
        (Family::DoubleQuant, None) => {
            if !cols.is_multiple_of(dq::GROUP) {
                return Err(Error::Shape(format!(
                    "row length {cols} is not a multiple of 16, which {} needs (groups of 16 values)",
                    info.name
                )));
            }
            dq::row_bytes(qtype.dq_bits().expect("dq bits"), cols).ok_or_else(too_large)
        }
        (Family::RaggedKQuant, None) => {
            ragged::row_bytes(qtype.ragged_base().expect("ragged base"), cols).ok_or_else(too_large)
        }
        (_, None) => {
            if !cols.is_multiple_of(info.block_size) {
                return Err(Error::Shape(format!(
                    "row length {cols} is not a multiple of {}'s block size {} ({} values left over)",
                    info.name,
                    info.block_size,
                    cols % info.block_size
                )));
            }
            (cols / info.block_size).checked_mul(info.block_bytes).ok_or_else(too_large)
        }
    }
}

/// Resolve a type name (`"q4_k"`, `"int4-g128-sym"`, ...) and the group-affine options into a
/// type and its [`AffineSpec`]. Options a type does not use are errors.
pub fn resolve(name: &str, opts: &QuantOptions<'_>) -> Result<(QType, Option<AffineSpec>)> {
    let (qtype, name_group, name_sym) = parse_qtype(name)?;
    let Some(bits) = qtype.affine_bits() else {
        let unused = [
            ("group_size", opts.group_size.is_some()),
            ("symmetric", opts.symmetric.is_some()),
            ("clip_ratio", opts.clip_ratio.is_some()),
            ("group_min/group_max", opts.group_min.is_some() || opts.group_max.is_some()),
        ];
        if let Some((what, _)) = unused.iter().find(|(_, set)| *set) {
            return Err(Error::InvalidParameter(format!(
                "{what} applies to the group-affine types (int2/int3/int4/int8), not {}",
                qtype.name()
            )));
        }
        if opts.importance.is_some() && qtype.info().family == Family::Float {
            return Err(Error::InvalidParameter(format!("importance does not apply to {}", qtype.name())));
        }
        return Ok((qtype, None));
    };
    let opt_group = opts.group_size.map(|g| if g == 0 { None } else { Some(g) });
    let group = match (name_group, opt_group) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::InvalidParameter(format!(
                "{name:?} names group size {a:?} but group_size={b:?} was passed"
            )))
        }
        (Some(g), _) | (None, Some(g)) => g,
        (None, None) => Some(DEFAULT_GROUP_SIZE),
    };
    let symmetric = match (name_sym, opts.symmetric) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::InvalidParameter(format!("{name:?} names symmetric={a} but symmetric={b} was passed")))
        }
        (Some(s), _) | (None, Some(s)) => s,
        (None, None) => false,
    };
    Ok((qtype, Some(AffineSpec::new(bits, group, symmetric)?)))
}

/// The ISA to use: the forced one (checked) or the active one.
fn pick_isa(isa: Option<Isa>) -> Result<Isa> {
    match isa {
        Some(i) => i.require(),
        None => simd::active(),
    }
}

/// First value of `x` that is not finite or exceeds `limit`, as (index, value).
fn first_bad(x: &[f32], limit: f32) -> Option<(usize, f32)> {
    // |v| as bits: for non-negative floats the bit order is the numeric order, and NaN's bits
    // lie above +Inf's, so one unsigned max per chunk (which vectorises) checks everything.
    let limit_bits = limit.to_bits();
    let abs_bits = |v: &f32| v.to_bits() & 0x7FFF_FFFF;
    for (c, chunk) in x.chunks(1024).enumerate() {
        if chunk.iter().map(abs_bits).max().unwrap_or(0) > limit_bits {
            let i = chunk.iter().position(|v| abs_bits(v) > limit_bits).expect("a bad value");
            return Some((c * 1024 + i, chunk[i]));
        }
    }
    None
}

fn bad_value(flat: usize, cols: usize, value: f32, limit: f32) -> Error {
    let what = if value.is_nan() {
        "NaN"
    } else if value.is_infinite() {
        "infinite value"
    } else {
        "value out of range"
    };
    let limit = Limit((value.is_finite() && limit < f32::MAX).then_some(limit));
    Error::BadValue { what, index: flat, row: flat / cols, col: flat % cols, value, limit }
}

fn check_aux(name: &str, v: &[f32], len: usize, nonneg: bool, limit: f32) -> Result<()> {
    if v.len() != len {
        return Err(Error::Shape(format!("{name} has {} values, expected {len}", v.len())));
    }
    if let Some((i, x)) = first_bad(v, limit) {
        return Err(Error::InvalidParameter(format!("{name}[{i}] = {x} is not finite or out of range")));
    }
    if nonneg {
        if let Some(i) = v.iter().position(|&x| x < 0.0) {
            return Err(Error::InvalidParameter(format!("{name}[{i}] = {} is negative", v[i])));
        }
    }
    Ok(())
}

/// Quantize `rows × cols` values to the type `name` (see [`resolve`]). Returns the layout and
/// the bytes (row-major; ggml's exact bytes for ggml types).
///
/// Errors: unknown type, shape that does not fit the type, NaN/Inf or out-of-range values
/// (with the flat index of the first), invalid options, unavailable ISA.
pub fn quantize(
    name: &str,
    src: Source<'_>,
    rows: usize,
    cols: usize,
    opts: &QuantOptions<'_>,
) -> Result<(Layout, Vec<u8>)> {
    let (qtype, affine) = resolve(name, opts)?;
    let layout = Layout::new(qtype, affine, rows, cols)?;
    let mut out = vec![0u8; layout.nbytes()];
    quantize_into(&layout, src, opts, &mut out)?;
    Ok((layout, out))
}

/// [`quantize`] into a caller-provided buffer of exactly `layout.nbytes()` bytes.
pub fn quantize_into(layout: &Layout, src: Source<'_>, opts: &QuantOptions<'_>, out: &mut [u8]) -> Result<()> {
    let isa = pick_isa(opts.isa)?;
    let Layout { qtype, rows, cols, row_bytes, .. } = *layout;
    let info = qtype.info();
    if src.len() != rows * cols {
        return Err(Error::Shape(format!("input has {} values, expected {rows} × {cols}", src.len())));
    }
    if out.len() != layout.nbytes() {
        return Err(Error::Shape(format!("output buffer has {} bytes, expected {}", out.len(), layout.nbytes())));
    }
    if let Some(imp) = opts.importance {
        check_aux("importance", imp, cols, true, f32::MAX)?;
    }
    let clip_ratio = opts.clip_ratio.unwrap_or(1.0);
    if clip_ratio.is_nan() || clip_ratio <= 0.0 || clip_ratio > 1.0 {
        return Err(Error::InvalidParameter(format!("clip_ratio must be in (0, 1], got {clip_ratio}")));
    }
    let range = match (opts.group_min, opts.group_max, layout.affine) {
        (None, None, _) => None,
        (Some(lo), Some(hi), Some(spec)) => {
            let n = rows * spec.groups(cols);
            check_aux("group_min", lo, n, false, info.max_abs)?;
            check_aux("group_max", hi, n, false, info.max_abs)?;
            if let Some(i) = lo.iter().zip(hi).position(|(a, b)| a > b) {
                return Err(Error::InvalidParameter(format!(
                    "group_min[{i}] = {} > group_max[{i}] = {}",
                    lo[i], hi[i]
                )));
            }
            if opts.clip_ratio.is_some() {
                return Err(Error::InvalidParameter("clip_ratio and group_min/group_max exclude each other".into()));
            }
            Some((lo, hi, spec.groups(cols)))
        }
        (Some(_), Some(_), None) => {
            return Err(Error::InvalidParameter("group_min/group_max need a group-affine type".into()))
        }
        _ => return Err(Error::InvalidParameter("group_min and group_max go together".into())),
    };

    let do_rows = |first_row: usize, chunk: &mut [u8]| -> Result<()> {
        let mut buf = Vec::new();
        for (i, dst) in chunk.chunks_mut(row_bytes).enumerate() {
            let r = first_row + i;
            let x = src.row(r, cols, &mut buf);
            if let Some((c, v)) = first_bad(x, info.max_abs) {
                return Err(bad_value(r * cols + c, cols, v, info.max_abs));
            }
            let affine = layout.affine.map(|spec| AffineRow {
                spec,
                clip_ratio,
                range: range.map(|(lo, hi, g)| (&lo[r * g..(r + 1) * g], &hi[r * g..(r + 1) * g])),
            });
            let ctx = RowCtx { importance: opts.importance, affine };
            blocks::quantize_row(isa, qtype, x, dst, &ctx);
        }
        Ok(())
    };

    if rows * cols < PAR_MIN_VALUES || rows == 1 {
        return do_rows(0, out);
    }
    let rows_per_task = (PAR_MIN_VALUES / cols).clamp(1, rows.div_ceil(rayon::current_num_threads() * 4).max(1));
    let results: Vec<Result<()>> = out
        .par_chunks_mut(rows_per_task * row_bytes)
        .enumerate()
        .map(|(t, chunk)| do_rows(t * rows_per_task, chunk))
        .collect();
    // The first failing chunk holds the smallest flat index: report that one.
    results.into_iter().collect()
}

/// Dequantize `data` (exactly `layout.nbytes()` bytes) to f32, row-major.
pub fn dequantize(layout: &Layout, data: &[u8], isa: Option<Isa>) -> Result<Vec<f32>> {
    let isa = pick_isa(isa)?;
    if data.len() != layout.nbytes() {
        return Err(Error::Shape(format!(
            "{} bytes given, a {} tensor of {} × {} has {}",
            data.len(),
            layout.qtype.name(),
            layout.rows,
            layout.cols,
            layout.nbytes()
        )));
    }
    let Layout { qtype, affine, cols, row_bytes, .. } = *layout;
    let mut out = vec![0f32; layout.rows * cols];
    let rows_per_task = (PAR_MIN_VALUES / cols).max(1);
    let work = |(src, dst): (&[u8], &mut [f32])| {
        for (s, d) in src.chunks(row_bytes).zip(dst.chunks_mut(cols)) {
            blocks::dequantize_row(isa, qtype, affine, s, d);
        }
    };
    if out.len() < PAR_MIN_VALUES {
        work((data, &mut out));
    } else {
        data.par_chunks(rows_per_task * row_bytes).zip(out.par_chunks_mut(rows_per_task * cols)).for_each(work);
    }
    Ok(out)
}
