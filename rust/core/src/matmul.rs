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
//!   and, for quantized weights, quantized once per call to int8 blocks of 32 (of 256 for the
//!   k-quants) with an f32 step ([`crate::simd::matmul::quantize_act`]).
//! * **The k-quants** (and their ragged types) keep their integer sub-block scales integer to
//!   the end of each super-block ([`crate::simd::matmul::dot_k`]): up to 4 activation rows run
//!   on the stored rows; larger batches decode each tile row once to unsigned codes and i16
//!   scales, mins and offsets ([`crate::simd::matmul::decode_k_row`]) and multiply four rows
//!   by four activation rows per call ([`crate::simd::matmul::dot_k_decoded`]). Both give the
//!   scalar reference's bits at every ISA, so a token's outputs do not depend on its batch.
//! * **The legacy types and iq4_nl** likewise sum each block of 32 in i32 and take only its
//!   total to f32 ([`crate::simd::matmul::dot_b32_ref`], mins included): the fused kernels
//!   below, the decoded rows' four-row dot ([`crate::simd::matmul::dot_b32_x4`]) and the
//!   outer products give its bits at every ISA. The bullets below describe the paths of all
//!   these types; the last one the GEMM at AVX-512 VNNI.
//! * **Weights** are processed in tiles of consecutive rows (about [`TILE_BYTES`] once
//!   decoded), one rayon task per tile: each row of the tile is decoded into a thread-local
//!   buffer as i8 codes + per-16 f32 scales (+ mins) ([`crate::simd::matmul::decode_row`]; one
//!   decoder per type family, written once over a 32-byte SIMD vocabulary), then every
//!   activation row is multiplied with the decoded rows by the ISA's int8 dot kernel, four
//!   weight rows at a time ([`crate::simd::matmul::dot_q8_x4`]: each activation vector is
//!   loaded once for the four). For GEMV (`n = 1`) the tile stays in L1/L2 between decoding
//!   and the dot; for GEMM the decoded tile is reused by all `n` activation rows, so decoding
//!   (the per-type work) costs once per weight row, not once per product: decoding is the
//!   repacking, done on the fly. Float weights (f16/bf16) are converted per tile to f32 (f32
//!   rows are used where they are stored, when aligned) and multiplied with FMA dots, without
//!   activation quantization. A batch's tile outputs (`nr × n`) are transposed into `y` by the
//!   tile's own task.
//! * **Few activation rows** (at most 11, `FUSED_MAX_N`) of the k-quants, the legacy types,
//!   iq4_nl and group-affine int4 skip the decoded tile: four weight rows at a
//!   time are decoded in registers and multiplied at once
//!   ([`crate::simd::matmul::dot_fused`], AVX2, the next four rows prefetched), with the same
//!   bits as decoding then multiplying, so the GEMV is no longer two passes over L1 per weight.
//!   Each activation row takes its own pass over the tile, from cache. Measured (4096 × 4096,
//!   one thread, AMD EPYC): at n = 8 this is ×1.35–2.1 the decoded tile's rate and ×1.2–1.6 the
//!   outer products' (q4_0, q8_0, q4_k, q6_k); the outer products overtake it at 10–16 rows.
//!   Edge groups of fewer than four rows repeat their last row in both paths, so every output
//!   comes from the four-row kernel.
//! * **Packed weights** ([`QMatrix::new_packed`], [`pack_rows`]; q4_0 and iq4_nl, four rows
//!   interleaved by pairs of blocks, see [`crate::simd::matmul::packed`]): few activation rows
//!   at AVX-512 VNNI run the packed kernel on whole groups (one 64-byte load for a block of
//!   four rows, one 16-byte load for their scales); other ISAs and larger batches unpack each
//!   row into the decoded tile. The bits are the stored weight's.
//! * **Outliers** are added in the same pass, tile by tile, once the tile's dense outputs are
//!   done: the tile's CSR entries are decoded once (u32 columns, f16 values to f32 by the ISA's
//!   converter) into thread-local buffers, then each output gets `Σ_k x[c_k] · v_k` over its
//!   row's entries, in CSR order, from 0, every product and sum rounded to f32 (not fused). Up
//!   to 7 activation rows (`AXPY_MIN_N` − 1) gather `x[c_k]` from the row-major activations; from
//!   8 on, the activations are transposed once per call (`cols × n`) and each
//!   outlier is an axpy of length `n` in SIMD lanes (`out[r, :] += v · xᵀ[c, :]`), which reads
//!   one contiguous `n`-vector per outlier instead of touching `n` activation rows. Both give
//!   the same bits, so a token's outputs still do not depend on the batch it is in. Measured
//!   (4096 × 4096 q4_0, 0.5 % outliers, one thread, same run, loaded machine): the gather costs
//!   ×1.07 at n = 1, ×1.12 at 16, ×1.36 at 64 (before this change, decoding every entry per
//!   activation row, ×5.7 at n = 512); the axpy ×1.03 at 16, ×1.06 at 64, ×1.00–1.16 at
//!   512 (five types, two threads); below 8 the two are within noise (`benches/outliers.rs`
//!   gives the full table).
//! * **The GEMM at AVX-512 VNNI** (from `OUTER_MIN_N` activation rows, every quantized type
//!   but W8A8): the activation rows are packed once per call into tiles of sixteen (for each 4
//!   values, the 16 rows' 4 codes), and the decoded rows multiply them as outer products, the
//!   sixteen activation rows in the lanes of a 512-bit vector: per 4 values and weight row one
//!   broadcast of the row's codes and one `vpdpbusd` (k-quants:
//!   [`crate::simd::matmul::dot_k_outer`], eight rows per call; the legacy types and iq4_nl:
//!   [`crate::simd::matmul::dot_b32_outer`], four rows per call, one f32 step per block of
//!   32; the other types decoded to int8 codes: [`crate::simd::matmul::dot_q8_outer`], two
//!   rows per call). No horizontal sums are left per block, and each lane does the f32 steps
//!   of the kernel it replaces, so the bits are the same as for any other batch size. Tiles
//!   of `OUTER_TILE_ROWS` weight rows, so that each activation tile serves several calls
//!   while it is in cache.
//! * No allocation happens per row or tile after warm-up: the tile buffers are thread-local and
//!   only borrowed inside a leaf task (which never waits on rayon), so calls are re-entrant and
//!   may run concurrently from any thread, inside or outside rayon tasks. The per-call
//!   activation buffers are kept in a thread-local slot between calls, taken out while in use
//!   (a nested call on the same thread simply allocates its own).
//!
//! **W8A8.** A weight with an [`ActQuant`] ([`QMatrix::with_act`]: int8, symmetric, one group
//! per row, no permutation or outliers, at most [`MAX_COLS`] columns) multiplies int8 codes by
//! int8 activations instead (SmoothQuant's W8A8; `formats/LBF.md` §5, `act_quant`): each row
//! of `x` is quantized once per call with one step (the static step, or `amax / 127` of the
//! row), each output is an exact i32 sum of code products scaled by the weight row's f16 scale
//! and the step ([`crate::simd::matmul::w8a8`]). The stored codes are used in place (no
//! decoding); the tiles, the rayon split and the buffers are those of the other types. The
//! result is bit-identical to [`matmul_reference`] at every ISA.
//!
//! Accuracy: the difference to [`matmul_reference`] is the activation quantization error
//! (at most half a step, `amax / 254`, per value of each 32-value block, 256 for the k-quants)
//! times `|w|`, plus f32 rounding; `tests/matmul.rs` checks exactly that bound. Different ISAs agree within
//! [`crate::simd::matmul::dot_tolerance`].

use std::cell::RefCell;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::check_perm_outliers;
use crate::qtype::{AffineSpec, Family, QType};
use crate::quant::Layout;
use crate::simd::matmul::w8a8;
use crate::simd::matmul::{self as kern, padded, QS};

pub use crate::simd::matmul::w8a8::MAX_COLS;
use crate::simd::vocab::Simd;
use crate::simd::{Isa, Kernel};

/// Bytes of decoded weights per tile (i8 codes plus f32 scales and mins, or f32 values):
/// small enough to stay in L2 while every activation row passes over it.
pub const TILE_BYTES: usize = 48 * 1024;
/// Most weight rows per tile.
const MAX_TILE_ROWS: usize = 64;
/// Batch sizes from which the outliers are added as axpys over the transposed activations
/// instead of gathered per (row, activation row) (measured crossover: see the module doc).
const AXPY_MIN_N: usize = 8;
/// Most activation rows for which a type with a fused kernel uses it
/// ([`crate::simd::matmul::dot_fused`], [`crate::simd::matmul::dot_k`]); from here on the
/// decoded tile (or the outer products) is reused by enough rows to pay for decoding it.
const FUSED_MAX_N: usize = 11;
/// Fewest activation rows for the outer-product GEMM at AVX-512 VNNI (below, the kernels
/// that take four weight rows per activation row; a tile takes sixteen).
const OUTER_MIN_N: usize = 12;
/// Weight rows per tile of the outer-product GEMM: each tile of activation rows serves four
/// calls of eight k-quant rows (sixteen of two int8-code rows) while it is in cache.
const OUTER_TILE_ROWS: usize = 32;
/// Multiply-adds below which a call runs on the calling thread only (rayon's overhead is a
/// few microseconds).
const PAR_MIN_WORK: usize = 1 << 18;
/// How many rows ahead a GEMV over stored f32 rows prefetches (see [`kern::dot_f32_4xc`]).
const F32_AHEAD_ROWS: usize = 8;

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

/// How a W8A8 weight quantizes the activations it multiplies (`formats/LBF.md` §5, part
/// `act_quant`): every activation row `x` becomes int8 codes `round_ties_even(clamp(x_j / step,
/// −127, 127))` with one step per call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActQuant {
    /// One step for every row (mode 1: a static per-tensor scale chosen by a calibration
    /// observer); finite and > 0. Values beyond ±127 · step clamp.
    Static(f32),
    /// One step per row (mode 2: dynamic per-token): `max_j |x_j| / 127` (0 for a zero row).
    PerToken,
}

impl ActQuant {
    /// Bytes of the `act_quant` part: u32 mode, f32 step.
    pub const LEN: usize = 8;

    /// The stored mode: 1 static, 2 dynamic per token.
    pub fn mode(self) -> u32 {
        match self {
            ActQuant::Static(_) => 1,
            ActQuant::PerToken => 2,
        }
    }

    /// The stored step (0 for [`ActQuant::PerToken`]).
    pub fn step(self) -> f32 {
        match self {
            ActQuant::Static(s) => s,
            ActQuant::PerToken => 0.0,
        }
    }

    /// Check the step: finite and > 0 for [`ActQuant::Static`].
    pub fn validate(self) -> Result<ActQuant> {
        match self {
            ActQuant::Static(s) if !(s.is_finite() && s > 0.0) => {
                Err(Error::InvalidParameter(format!("a static activation step must be finite and > 0, got {s}")))
            }
            a => Ok(a),
        }
    }

    /// The part's bytes: u32 mode, f32 step, little-endian.
    pub fn to_le_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.mode().to_le_bytes());
        b[4..].copy_from_slice(&self.step().to_le_bytes());
        b
    }

    /// Decode and check a part: 8 bytes, mode 1 with a finite step > 0, or mode 2 with step 0
    /// (any other bits, −0.0 included, are refused).
    pub fn from_le_bytes(b: &[u8]) -> Result<ActQuant> {
        let bad = |m: String| Error::InvalidParameter(format!("act_quant: {m}"));
        let b: [u8; 8] = b.try_into().map_err(|_| bad(format!("{} bytes, expected 8", b.len())))?;
        let mode = u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
        let step = f32::from_le_bytes(b[4..].try_into().expect("4 bytes"));
        match mode {
            1 => ActQuant::Static(step).validate().map_err(|e| bad(e.to_string())),
            2 if step.to_bits() == 0 => Ok(ActQuant::PerToken),
            2 => Err(bad(format!("dynamic mode (2) needs step 0, got {step}"))),
            m => Err(bad(format!("unknown mode {m} (1 = static per-tensor, 2 = dynamic per-token)"))),
        }
    }
}

/// Whether a weight may carry an [`ActQuant`]: int8, symmetric, one group per row, no
/// permutation or outliers, at most [`MAX_COLS`] columns (a [`Error::Shape`]; the rest are
/// [`Error::InvalidParameter`]). Shared by [`QMatrix::with_act`] and the LBF reader and writer.
pub(crate) fn check_act_target(
    qtype: QType,
    affine: Option<AffineSpec>,
    cols: u64,
    perm: bool,
    outliers: bool,
) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidParameter(format!("int8 activations (act_quant) {m}")));
    let name = crate::qtype::canonical_name(qtype, affine);
    match affine {
        Some(s) if qtype == QType::Int8 && s.symmetric => {
            if cols > 0 && s.groups(cols as usize) != 1 {
                return bad(format!("need one group per row (int8-row-sym), not {name} on rows of {cols}"));
            }
        }
        _ => return bad(format!("need a symmetric int8 weight with one group per row (int8-row-sym), not {name}")),
    }
    if perm || outliers {
        return bad("cannot combine with an act-order permutation or outliers".into());
    }
    if cols > MAX_COLS as u64 {
        return Err(Error::Shape(format!(
            "int8 activations (act_quant) need rows of at most {MAX_COLS} values (int32 sums), got {cols}"
        )));
    }
    Ok(())
}

/// A borrowed weight matrix of any storage type. Build it with [`QMatrix::new`], which checks
/// every length and the content of `perm` and the outliers.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    layout: Layout,
    data: &'a [u8],
    perm: Option<&'a [u8]>,
    outliers: Option<Outliers<'a>>,
    act: Option<ActQuant>,
    /// Whether `data` holds the rows packed by [`crate::simd::matmul::packed::pack`].
    packed: bool,
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
        Ok(QMatrix { layout, data, perm, outliers, act: None, packed: false })
    }

    /// A weight whose rows were packed by [`crate::simd::matmul::packed::pack`] (q4_0 or
    /// iq4_nl; `packed` is [`crate::simd::matmul::packed::packed_len`] bytes), with the checks
    /// of [`QMatrix::new`] (no permutation: these are not group-affine types). Its GEMV runs on
    /// the packed groups where the ISA has the kernel; its outputs are the stored weight's bits.
    pub fn new_packed(layout: Layout, packed: &'a [u8], outliers: Option<Outliers<'a>>) -> Result<QMatrix<'a>> {
        check_packable(&layout)?;
        let len = kern::packed::packed_len(layout.rows, layout.row_bytes);
        if packed.len() != len {
            return Err(Error::Shape(format!(
                "packed weight data has {} bytes, a packed {} matrix of {} × {} has {len}",
                packed.len(),
                layout.qtype.name(),
                layout.rows,
                layout.cols
            )));
        }
        let m = QMatrix::new(layout, &packed[..layout.nbytes()], None, outliers)?;
        Ok(QMatrix { data: packed, packed: true, ..m })
    }

    /// The same weight multiplying int8 activations (`Some`: W8A8) or f32 ones (`None`). Refuses
    /// an act mode on anything but an int8 symmetric weight with one group per row, without
    /// permutation or outliers, of at most [`MAX_COLS`] columns, and a static step that is not
    /// finite and > 0.
    pub fn with_act(self, act: Option<ActQuant>) -> Result<QMatrix<'a>> {
        if let Some(a) = act {
            a.validate()?;
            let l = &self.layout;
            check_act_target(l.qtype, l.affine, l.cols as u64, self.perm.is_some(), self.outliers.is_some())?;
        }
        Ok(QMatrix { act, ..self })
    }

    /// A weight whose parts were already checked by [`QMatrix::new`] (the engine checks each
    /// tensor once at load and rebuilds the borrow per call without re-scanning perm and outliers).
    /// `packed`: `data` is the packed form ([`QMatrix::new_packed`]).
    pub(crate) fn prechecked(
        layout: Layout,
        data: &'a [u8],
        perm: Option<&'a [u8]>,
        outliers: Option<Outliers<'a>>,
        act: Option<ActQuant>,
        packed: bool,
    ) -> QMatrix<'a> {
        let len = if packed { kern::packed::packed_len(layout.rows, layout.row_bytes) } else { layout.nbytes() };
        debug_assert_eq!(data.len(), len);
        QMatrix { layout, data, perm, outliers, act, packed }
    }

    /// Whether the rows are packed ([`QMatrix::new_packed`]).
    pub fn is_packed(&self) -> bool {
        self.packed
    }

    /// Stored row `r` in the stored layout: borrowed, or for a packed weight unpacked into `buf`.
    pub fn row_in<'b>(&'b self, r: usize, buf: &'b mut Vec<u8>) -> &'b [u8] {
        if self.packed {
            let rb = self.layout.row_bytes;
            buf.resize(rb, 0);
            kern::packed::unpack_row(self.layout.cols, self.data, r, buf);
            buf
        } else {
            self.row(r)
        }
    }

    /// Packed group `g` (rows `4g` to `4g + 3`) of a packed weight.
    fn group(&self, g: usize) -> &'a [u8] {
        let gb = kern::packed::PACK_ROWS * self.layout.row_bytes;
        &self.data[g * gb..(g + 1) * gb]
    }

    /// The layout (type, shape, bytes per row).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The bytes of stored row `r`.
    #[inline]
    pub fn row(&self, r: usize) -> &'a [u8] {
        self.rows(r, 1)
    }

    /// The bytes of the `n` stored rows from row `r` on (contiguous).
    #[inline]
    pub fn rows(&self, r: usize, n: usize) -> &'a [u8] {
        assert!(!self.packed, "a packed weight's rows are read with row_in");
        let rb = self.layout.row_bytes;
        &self.data[r * rb..(r + n) * rb]
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

    /// The activation quantization of a W8A8 weight.
    pub fn act(&self) -> Option<ActQuant> {
        self.act
    }

    /// The f16 scale of stored row `r` of a W8A8 weight (its one group), as f32.
    #[inline]
    fn row_scale(&self, r: usize) -> f32 {
        let (row, cols) = (self.row(r), self.layout.cols);
        half::f16::from_bits(u16::from_le_bytes([row[cols], row[cols + 1]])).to_f32()
    }
}

/// Refuse a layout whose rows are not packed (anything but q4_0 and iq4_nl).
fn check_packable(layout: &Layout) -> Result<()> {
    if kern::packed::can_pack(layout.qtype) && layout.affine.is_none() {
        return Ok(());
    }
    Err(Error::InvalidParameter(format!("only q4_0 and iq4_nl weights are packed, not {}", layout.qtype.name())))
}

/// The rows of a q4_0 or iq4_nl weight (`layout`, its stored bytes `data`) packed for the
/// GEMV ([`crate::simd::matmul::packed`]; multiply them through [`QMatrix::new_packed`]).
///
/// Errors: another type (or a group-affine spec), `data` not `layout.nbytes()` long.
pub fn pack_rows(layout: &Layout, data: &[u8]) -> Result<Vec<u8>> {
    check_packable(layout)?;
    // The length check of a stored weight.
    QMatrix::new(*layout, data, None, None)?;
    // (A layout is never empty: `Layout::new` refuses 0 rows or columns.)
    let mut out = vec![0u8; kern::packed::packed_len(layout.rows, layout.row_bytes)];
    kern::packed::pack(layout.qtype, layout.rows, layout.cols, data, &mut out);
    Ok(out)
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
    // A branch-free pass that vectorises (a NaN or infinity has every exponent bit set), then
    // the position only when there is one.
    let bad = |c: &[f32]| c.iter().fold(0u32, |m, v| m | u32::from(v.to_bits() & 0x7F80_0000 == 0x7F80_0000));
    let first_bad = if x.chunks(1024).any(|c| bad(c) != 0) { x.iter().position(|v| !v.is_finite()) } else { None };
    if let Some(i) = first_bad {
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
///
/// With an [`ActQuant`] (W8A8) it is the plain statement of the semantics instead: each
/// activation row quantized to int8 codes, `Σ q_j · (code_j − 128)` summed exactly (i64), and
/// `y = (sum as f32 · scale) · step` with the row's f16 scale.
pub fn matmul_reference(w: &QMatrix<'_>, x: &[f32], n: usize, y: &mut [f32]) -> Result<()> {
    check_args(w, x, n, y)?;
    let Layout { qtype, affine, rows, cols, .. } = w.layout;
    if let Some(act) = w.act {
        let mut q = vec![0i64; cols];
        for i in 0..n {
            let xi = &x[i * cols..(i + 1) * cols];
            let step = match act {
                ActQuant::Static(s) => s,
                ActQuant::PerToken => xi.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0,
            };
            for (o, &v) in q.iter_mut().zip(xi) {
                *o = if step == 0.0 { 0 } else { (v / step).round_ties_even().clamp(-127.0, 127.0) as i64 };
            }
            for r in 0..rows {
                let codes = &w.row(r)[..cols];
                let sum: i64 = codes.iter().zip(&q).map(|(&c, &qj)| (i64::from(c) - 128) * qj).sum();
                y[i * rows + r] = (sum as f32 * w.row_scale(r)) * step;
            }
        }
        return Ok(());
    }
    let (mut wrow, mut buf) = (vec![0f32; cols], Vec::new());
    for r in 0..rows {
        crate::blocks::dequantize_row(Isa::Scalar, qtype, affine, w.row_in(r, &mut buf), &mut wrow);
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
/// weights, plus one per 16 values for the types whose decoded rows carry mins (asymmetric
/// int8). ISAs differ only in the order of these additions, so their outputs agree within
/// [`isa_tolerance`]. The k-quants (and their ragged types, which count as their base type),
/// the legacy types and iq4_nl have 0: their sums are exact integers per block and the few f32
/// operations after them are done in one order everywhere, so every ISA gives the same bits.
pub const ISA_TERMS_PER_16: [(QType, usize); 21] = [
    (QType::F32, 16),
    (QType::F16, 16),
    (QType::BF16, 16),
    (QType::Q8_0, 0),
    (QType::Q4_0, 0),
    (QType::Q4_1, 0),
    (QType::Q5_0, 0),
    (QType::Q5_1, 0),
    (QType::Q2K, 0),
    (QType::Q3K, 0),
    (QType::Q4K, 0),
    (QType::Q5K, 0),
    (QType::Q6K, 0),
    (QType::IQ4NL, 0),
    (QType::Int2, 4),
    (QType::Int3, 4),
    (QType::Int4, 4),
    (QType::Int8, 5),
    (QType::Int2G16DQ, 4),
    (QType::Int3G16DQ, 4),
    (QType::Int4G16DQ, 4),
];

/// The largest difference between two ISAs' [`matmul`] outputs for a weight of `qtype` with
/// rows of `cols` values, relative to `Σ_j |w_j| · |x_j|` (the magnitudes of the products;
/// for types with mins `|w_j|` counts the scaled code and the min separately):
/// [`kern::dot_tolerance`] of the number of f32 products in [`ISA_TERMS_PER_16`].
pub fn isa_tolerance(qtype: QType, cols: usize) -> f64 {
    let qtype = qtype.ragged_base().unwrap_or(qtype);
    match ISA_TERMS_PER_16.iter().find(|(q, _)| *q == qtype).map_or(16, |&(_, t)| t) {
        0 => 0.0,
        per16 => kern::dot_tolerance(cols.div_ceil(QS) * per16),
    }
}

/// Thread-local buffers of one tile of decoded weight rows (and of its decoded outliers).
#[derive(Debug, Default)]
struct Tile {
    /// One stored row unpacked from a packed weight.
    plain: Vec<u8>,
    codes: Vec<i8>,
    sw: Vec<f32>,
    mw: Vec<f32>,
    wf: Vec<f32>,
    kw: Vec<u8>,
    ksv: Vec<i16>,
    kzs: Vec<i16>,
    kmn: Vec<i16>,
    kdd: Vec<f32>,
    ocols: Vec<u32>,
    ovals: Vec<f32>,
}

thread_local! {
    static TILE: RefCell<Tile> = RefCell::new(Tile::default());
    static ACTS: RefCell<Acts> = RefCell::new(Acts::default());
    /// One tile's `nr × n` outputs before they are transposed into y ([`drive_tiles`]).
    static OUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Per-call activation buffers: gathered rows, their transpose (for the outliers), their int8
/// quantization, and its tiles for the outer-product GEMM.
#[derive(Debug, Default)]
struct Acts {
    xg: Vec<f32>,
    xt: Vec<f32>,
    q: Vec<i8>,
    d16: Vec<f32>,
    s16: Vec<f32>,
    b16: Vec<i16>,
    scale: Vec<f32>,
    tq: Vec<i8>,
    tb: Vec<i16>,
    td: Vec<f32>,
    tc: Vec<i32>,
}

/// Stored f32 rows as `f32`s, when their bytes are 4-byte aligned (little-endian hosts).
fn f32_rows(b: &[u8]) -> Option<&[f32]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: every 4-byte pattern is a valid f32, and `align_to` only reinterprets the aligned
    // middle part; rows with a misaligned start have a non-empty prefix and are not used.
    let (pre, mid, post) = unsafe { b.align_to::<f32>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

/// The first `len` elements of a scratch buffer, grown (never shrunk) as needed. The callers
/// overwrite every element they read, so old contents are never seen.
fn scratch<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

/// The outliers of one tile of `nr` rows, decoded once per tile: row `r`'s entries are
/// `ptr[r]..ptr[r + 1]` of `cols` (stored columns) and `vals` (f32).
struct TileOutliers<'a> {
    ptr: [usize; MAX_TILE_ROWS + 1],
    cols: &'a [u32],
    vals: &'a [f32],
}

impl<'a> TileOutliers<'a> {
    /// Decode the outliers of stored rows `r0..r0 + nr` into `cols` and `vals` (grown as needed).
    fn decode(
        isa: Isa,
        o: &Outliers<'_>,
        r0: usize,
        nr: usize,
        cols: &'a mut Vec<u32>,
        vals: &'a mut Vec<f32>,
    ) -> TileOutliers<'a> {
        let k0 = o.ptr(r0);
        let mut ptr = [0; MAX_TILE_ROWS + 1];
        for (r, p) in ptr[..=nr].iter_mut().enumerate() {
            *p = o.ptr(r0 + r) - k0;
        }
        let (k0, k1) = (k0, k0 + ptr[nr]);
        let cols = scratch(cols, k1 - k0);
        for (c, b) in cols.iter_mut().zip(o.cols[k0 * 4..k1 * 4].chunks_exact(4)) {
            *c = u32::from_le_bytes(b.try_into().expect("4 bytes"));
        }
        let vals = scratch(vals, k1 - k0);
        crate::blocks::dequantize_row(isa, QType::F16, None, &o.vals[k0 * 2..k1 * 2], vals);
        TileOutliers { ptr, cols, vals }
    }

    /// `out[r·n + i] += Σ_k x_i[cols[k]] · vals[k]` over the entries `k` of each row `r` (in
    /// order, from 0, each product and sum rounded to f32; rows without outliers are left as
    /// they are), reading `x_i[c]` at `xs[i·cols + c]` (row-major activations: the gather).
    fn add_gather(&self, xs: &[f32], cols: usize, n: usize, out: &mut [f32]) {
        for (r, o) in out.chunks_exact_mut(n).enumerate() {
            let (cs, vs) = (&self.cols[self.ptr[r]..self.ptr[r + 1]], &self.vals[self.ptr[r]..self.ptr[r + 1]]);
            if cs.is_empty() {
                continue;
            }
            for (o, xi) in o.iter_mut().zip(xs.chunks_exact(cols)) {
                *o += cs.iter().zip(vs).fold(0.0, |acc, (&c, &v)| acc + xi[c as usize] * v);
            }
        }
    }

    /// The same sums as [`TileOutliers::add_gather`] (the same bits: same order, same
    /// roundings), reading `x_i[c]` at `xt[c·n + i]` (the transposed activations): per
    /// outlier, an axpy of length `n` in SIMD lanes.
    fn add_axpy(&self, isa: Isa, xt: &[f32], n: usize, out: &mut [f32]) {
        crate::simd::run(isa, OutlierAxpy { o: self, xt, n, out });
    }
}

/// The kernel of [`TileOutliers::add_axpy`].
struct OutlierAxpy<'a, 'b> {
    o: &'a TileOutliers<'b>,
    xt: &'a [f32],
    n: usize,
    out: &'a mut [f32],
}

impl OutlierAxpy<'_, '_> {
    /// Row `r`'s sums for activation rows `i0..n`, one at a time.
    fn rest(&self, r: usize, i0: usize, out: &mut [f32]) {
        let (o, n) = (self.o, self.n);
        let (cs, vs) = (&o.cols[o.ptr[r]..o.ptr[r + 1]], &o.vals[o.ptr[r]..o.ptr[r + 1]]);
        for (i, y) in out.iter_mut().enumerate().skip(i0) {
            *y += cs.iter().zip(vs).fold(0.0, |acc, (&c, &v)| acc + self.xt[c as usize * n + i] * v);
        }
    }
}

impl Kernel for OutlierAxpy<'_, '_> {
    type Output = ();
    fn scalar(mut self) {
        let out = std::mem::take(&mut self.out);
        for (r, o) in out.chunks_exact_mut(self.n).enumerate() {
            if self.o.ptr[r] < self.o.ptr[r + 1] {
                self.rest(r, 0, o);
            }
        }
    }
    #[inline(always)]
    fn simd<S: Simd>(mut self, s: S) {
        let (n, w) = (self.n, S::W);
        let out = std::mem::take(&mut self.out);
        for (r, y) in out.chunks_exact_mut(n).enumerate() {
            let (a, b) = (self.o.ptr[r], self.o.ptr[r + 1]);
            if a == b {
                continue;
            }
            let (cs, vs) = (&self.o.cols[a..b], &self.o.vals[a..b]);
            // Two vectors of activation rows per pass over the row's outliers; mul then add
            // (not fused), as the gather rounds.
            let mut i = 0;
            while i + 2 * w <= n {
                let mut acc = [s.splat(0.0); 2];
                for (&c, &v) in cs.iter().zip(vs) {
                    let (xc, vv) = (&self.xt[c as usize * n + i..], s.splat(v));
                    acc[0] = s.add(acc[0], s.mul(s.load(xc), vv));
                    acc[1] = s.add(acc[1], s.mul(s.load(&xc[w..]), vv));
                }
                let (y0, y1) = (s.add(s.load(&y[i..]), acc[0]), s.add(s.load(&y[i + w..]), acc[1]));
                s.store(&mut y[i..], y0);
                s.store(&mut y[i + w..], y1);
                i += 2 * w;
            }
            while i + w <= n {
                let mut acc = s.splat(0.0);
                for (&c, &v) in cs.iter().zip(vs) {
                    acc = s.add(acc, s.mul(s.load(&self.xt[c as usize * n + i..]), s.splat(v)));
                }
                let yi = s.add(s.load(&y[i..]), acc);
                s.store(&mut y[i..], yi);
                i += w;
            }
            self.rest(r, i, y);
        }
    }
}

/// `xt = xsᵀ`: `xs` is `n × cols`, `xt` is `cols × n` (in column blocks, one task each when `par`).
fn transpose(xs: &[f32], n: usize, cols: usize, xt: &mut [f32], par: bool) {
    const BLOCK: usize = 64;
    let block = |(b, t): (usize, &mut [f32])| {
        let c0 = b * BLOCK;
        let nc = t.len() / n;
        for (i, xi) in xs.chunks_exact(cols).enumerate() {
            for (j, &v) in xi[c0..c0 + nc].iter().enumerate() {
                t[j * n + i] = v;
            }
        }
    };
    if par {
        xt.par_chunks_mut(BLOCK * n).enumerate().for_each(block);
    } else {
        xt.chunks_mut(BLOCK * n).enumerate().for_each(block);
    }
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
    if n == 0 {
        return Ok(());
    }
    let mut acts = ACTS.with(|a| std::mem::take(&mut *a.borrow_mut()));
    match w.act {
        Some(act) => run_w8a8(w, act, x, n, y, isa, &mut acts),
        None => run(w, x, n, y, isa, &mut acts),
    }
    ACTS.with(|a| *a.borrow_mut() = acts);
    Ok(())
}

fn run(w: &QMatrix<'_>, x: &[f32], n: usize, y: &mut [f32], isa: Isa, acts: &mut Acts) {
    let Layout { qtype, affine, rows, cols, .. } = w.layout;
    let Acts { xg, xt, q, d16, s16, b16, scale, tq, tb, td, tc } = acts;
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
    // With one thread, the calling thread does the work: no hand-over to the pool and back.
    let par = n * rows * cols >= PAR_MIN_WORK && rayon::current_num_threads() > 1;
    let float = qtype.info().family == Family::Float;
    let cp = padded(cols);
    let nsub = cp / QS;
    // Float weights need no quantized activations.
    let nq = if float { 0 } else { n };
    let (q, d16, s16, b16, scale) = (
        scratch(q, nq * cp),
        scratch(d16, nq * nsub),
        scratch(s16, nq * nsub),
        scratch(b16, nq * nsub),
        scratch(scale, nq),
    );
    let block = kern::act_block(qtype);
    if !float {
        let parts = q
            .par_chunks_mut(cp)
            .zip(d16.par_chunks_mut(nsub))
            .zip(s16.par_chunks_mut(nsub))
            .zip(b16.par_chunks_mut(nsub))
            .zip(scale.par_iter_mut())
            .zip(xs.par_chunks(cols));
        type Parts<'a> = (((((&'a mut [i8], &'a mut [f32]), &'a mut [f32]), &'a mut [i16]), &'a mut f32), &'a [f32]);
        let quant = |(((((q, d), s), b), sc), xi): Parts<'_>| {
            *sc = kern::quantize_act(isa, xi, block, q, d, s, b);
        };
        if par && n > 1 {
            parts.for_each(quant);
        } else {
            parts.with_min_len(usize::MAX).for_each(quant);
        }
    }
    let (q, d16, s16, b16, scale) = (&*q, &*d16, &*s16, &*b16, &*scale);
    let act = |i: usize| kern::ActRow {
        q: &q[i * cp..(i + 1) * cp],
        d16: &d16[i * nsub..(i + 1) * nsub],
        s16: &s16[i * nsub..(i + 1) * nsub],
        b16: &b16[i * nsub..(i + 1) * nsub],
        scale: scale[i],
    };
    // The outliers (when there are any) are added to each tile's outputs once the dense part is
    // done: from the activations gathered per (row, activation row), or for larger batches as
    // axpys over the transposed activations (the same sums, bit for bit).
    let outliers = w.outliers.filter(|o| o.ptr(rows) > 0);
    let xt: Option<&[f32]> = match outliers {
        Some(_) if n >= AXPY_MIN_N => {
            let xt = scratch(xt, n * cols);
            transpose(xs, n, cols, xt, par);
            Some(xt)
        }
        _ => None,
    };
    // The k-quants: their own kernels at every batch size (no decoded tile of the other types);
    // few activation rows of the k-quants and of the types with fused kernels: kernels on the
    // stored rows.
    let kq = kern::is_kquant(qtype);
    // The legacy types and iq4_nl: integer sums per block of 32, mins included.
    let b32 = kern::is_b32(qtype);
    // Packed rows (q4_0, iq4_nl) run the packed kernel where the ISA has it; elsewhere, and for
    // larger batches, they are unpacked row by row into the decoded tile (the same bits).
    let packed = w.packed;
    let fused = n <= FUSED_MAX_N
        && (kq || if packed { kern::packed::has_packed(isa) } else { kern::has_fused(isa, qtype, affine, cols) });
    // Whether the kernels leave a per-16 min term for an f32 dot with the activation's sums
    // (the k-quants and the b32 types fold theirs into their integer sums).
    let mins = kern::has_mins(qtype, affine) && !kq && !b32;
    let row_bytes = if float {
        4 * cols
    } else if kq {
        cp + cp / 4
    } else {
        cp + cp / 2
    };
    // The GEMM at AVX-512 VNNI, for the k-quants and the types decoded to int8 codes: outer
    // products of decoded rows with tiles of sixteen activation rows, packed once here (the
    // last tile repeats the last row).
    let outer = !float && !fused && n >= OUTER_MIN_N && kern::has_outer(isa);
    let (ntiles, nb) = (n.div_ceil(kern::LANES), kern::k_blocks(cols));
    let lanes = |t: usize| -> [kern::ActRow<'_>; kern::LANES] {
        std::array::from_fn(|l| act((kern::LANES * t + l).min(n - 1)))
    };
    let (lq, lb, ld) = match () {
        _ if kq => (kern::LANES * cp, 256 * nb, kern::LANES * nb),
        _ if b32 => (kern::LANES * cp, cp / 2, cp / 2),
        _ => (kern::LANES * cp, 4 * cp, cp),
    };
    let (tq, tb, tc, td) = if outer {
        let (tq, td) = (scratch(tq, ntiles * lq), scratch(td, ntiles * ld));
        let (tb, tc) =
            if kq { (scratch(tb, ntiles * lb), &mut [][..]) } else { (&mut [][..], scratch(tc, ntiles * lb)) };
        for t in 0..ntiles {
            let (q, d) = (&mut tq[t * lq..][..lq], &mut td[t * ld..][..ld]);
            if kq {
                kern::pack_act_tile(lanes(t), q, &mut tb[t * lb..][..lb], d);
            } else if b32 {
                kern::pack_b32_tile(lanes(t), q, &mut tc[t * lb..][..lb], d);
            } else {
                kern::pack_q8_tile(lanes(t), q, &mut tc[t * lb..][..lb], d);
            }
        }
        (&*tq, &*tb, &*tc, &*td)
    } else {
        (&[][..], &[][..], &[][..], &[][..])
    };
    let act_tile =
        |t: usize| kern::ActTile { xt: &tq[t * lq..][..lq], bt: &tb[t * lb..][..lb], dx: &td[t * ld..][..ld] };
    let q8_tile =
        |t: usize| kern::Q8Tile { xt: &tq[t * lq..][..lq], c4: &tc[t * lb..][..lb], d16: &td[t * ld..][..ld] };
    let b32_tile =
        |t: usize| kern::B32Tile { xt: &tq[t * lq..][..lq], c32: &tc[t * lb..][..lb], dx: &td[t * ld..][..ld] };
    // Whole quads of rows where a tile holds more than one (the kernels take four rows); for
    // the outer products, OUTER_TILE_ROWS rows (whole groups of eight), so that each activation
    // tile serves several groups while it is in cache.
    let tile = match (TILE_BYTES / row_bytes).clamp(1, MAX_TILE_ROWS) {
        _ if outer => OUTER_TILE_ROWS.min(rows.next_multiple_of(kern::OUTER_ROWS)),
        t if t >= 4 || packed => (t / 4 * 4).max(kern::packed::PACK_ROWS),
        t => t,
    };
    // Output of tile `t`: `nr` rows × n (the transpose of y's block, = y's block when n = 1;
    // see `drive_tiles`).
    let tile_fn = |(t, out): (usize, &mut [f32])| {
        let r0 = t * tile;
        let nr = out.len() / n;
        TILE.with(|cell| {
            let mut guard = cell.borrow_mut();
            let Tile { codes, sw, mw, wf, kw, ksv, kzs, kmn, kdd, ocols, ovals, plain } = &mut *guard;
            if float {
                // f32 rows are used where they are stored (when aligned): no copy, which halved
                // the rate of a GEMV streaming from DRAM; the others are converted to f32 per tile.
                let stored = if qtype == QType::F32 { f32_rows(w.rows(r0, nr)) } else { None };
                // Rows streamed from storage in one pass (a batch of at most one kernel call) are
                // prefetched into L2 F32_AHEAD_ROWS rows further on; larger batches reuse the
                // tile from cache.
                let cmax = kern::dot_f32_max_c(isa);
                let ahead = if stored.is_some() && n <= cmax { F32_AHEAD_ROWS * 4 * cols } else { 0 };
                let wf: &[f32] = match stored {
                    Some(rows) => rows,
                    None => {
                        let wf = scratch(wf, nr * cols);
                        for (r, wr) in wf.chunks_exact_mut(cols).enumerate() {
                            crate::blocks::dequantize_row(isa, qtype, affine, w.row(r0 + r), wr);
                        }
                        wf
                    }
                };
                // Blocks of 4 weight rows × up to 4 activation rows share their loads; the tile
                // stays in cache while the activations stream past it. Edge blocks repeat their
                // last row, and every pair is computed by the same operations whatever the block
                // shape: a token's logits do not depend on the batch it is in.
                let wr = |r: usize| &wf[r.min(nr - 1) * cols..][..cols];
                let x = |i: usize| &xs[i * cols..][..cols];
                let mut i = 0;
                while i < n {
                    let c = if n - i >= 4 && cmax >= 4 {
                        4
                    } else if n - i >= 2 {
                        2
                    } else {
                        1
                    };
                    for r in (0..nr).step_by(4) {
                        let w4 = [wr(r), wr(r + 1), wr(r + 2), wr(r + 3)];
                        let at = F32Block { rows: nr - r, at: r * n + i, n };
                        match c {
                            4 => at.put(kern::dot_f32_4xc(isa, w4, [x(i), x(i + 1), x(i + 2), x(i + 3)], ahead), out),
                            2 => at.put(kern::dot_f32_4xc(isa, w4, [x(i), x(i + 1)], ahead), out),
                            _ => at.put(kern::dot_f32_4xc(isa, w4, [x(i)], ahead), out),
                        }
                    }
                    i += c;
                }
            } else if fused && packed {
                // Whole packed groups of four rows (a last group repeats its last row); the
                // groups two further on are prefetched.
                let ahead = 2 * kern::packed::PACK_ROWS * w.layout.row_bytes;
                for r in (0..nr).step_by(4) {
                    let group = w.group((r0 + r) / kern::packed::PACK_ROWS);
                    for i in 0..n {
                        let v = kern::packed::dot_packed(isa, qtype, cols, group, act(i), ahead);
                        for (j, &vj) in v.iter().enumerate().take(nr - r) {
                            out[(r + j) * n + i] = vj * scale[i];
                        }
                    }
                }
            } else if fused {
                for r in (0..nr).step_by(4) {
                    // Edge quads repeat their last row (every output from the same kernel,
                    // whatever the batch).
                    let rows = [0, 1, 2, 3].map(|j| w.row(r0 + (r + j).min(nr - 1)));
                    for i in 0..n {
                        let act = act(i);
                        let v = if kq {
                            kern::dot_k(isa, qtype, cols, rows, act)
                        } else {
                            kern::dot_fused(isa, qtype, affine, cols, rows, act)
                        };
                        for (j, &vj) in v.iter().enumerate().take(nr - r) {
                            out[(r + j) * n + i] = vj * scale[i];
                        }
                    }
                }
            } else if kq {
                // Larger batches: each row decoded once to unsigned codes and integer scales
                // and mins, then every activation row multiplied with it (the same bits).
                let nb = kern::k_blocks(cols);
                let (ku, ksv) = (scratch(kw, nr * cp), scratch(ksv, nr * 16 * nb));
                let (kzs, kmn, kdd) =
                    (scratch(kzs, nr * 16 * nb), scratch(kmn, nr * 16 * nb), scratch(kdd, nr * 2 * nb));
                let (ub, sb, gb, db) = (cp, 16 * nb, 16 * nb, 2 * nb);
                for r in 0..nr {
                    kern::decode_k_row(
                        qtype,
                        cols,
                        w.row(r0 + r),
                        &mut ku[r * ub..(r + 1) * ub],
                        &mut ksv[r * sb..(r + 1) * sb],
                        &mut kzs[r * gb..(r + 1) * gb],
                        &mut kmn[r * gb..(r + 1) * gb],
                        &mut kdd[r * db..(r + 1) * db],
                    );
                }
                let krow = |r: usize| kern::KRow {
                    u: &ku[r * ub..(r + 1) * ub],
                    sv: &ksv[r * sb..(r + 1) * sb],
                    zs: &kzs[r * gb..(r + 1) * gb],
                    mn: &kmn[r * gb..(r + 1) * gb],
                    dd: &kdd[r * db..(r + 1) * db],
                };
                let base = qtype.ragged_base().unwrap_or(qtype);
                if outer {
                    // Eight rows (the last repeated) with each tile of sixteen activation rows.
                    for t in 0..ntiles {
                        let i0 = kern::LANES * t;
                        for r in (0..nr).step_by(kern::OUTER_ROWS) {
                            let rows = std::array::from_fn(|j| krow((r + j).min(nr - 1)));
                            let v = kern::dot_k_outer(isa, base, rows, act_tile(t));
                            for (j, vj) in v.iter().enumerate().take(nr - r) {
                                let m = kern::LANES.min(n - i0);
                                let o = &mut out[(r + j) * n + i0..][..m];
                                for ((o, &vl), &sc) in o.iter_mut().zip(vj).zip(&scale[i0..i0 + m]) {
                                    *o = vl * sc;
                                }
                            }
                        }
                    }
                } else {
                    // Four activation rows per call (past the last, the last is repeated: the same
                    // bits).
                    for i in (0..n).step_by(4) {
                        let acts = [0, 1, 2, 3].map(|k| act((i + k).min(n - 1)));
                        for r in (0..nr).step_by(4) {
                            let rows = [0, 1, 2, 3].map(|j| krow((r + j).min(nr - 1)));
                            let v = kern::dot_k_decoded(isa, base, rows, acts);
                            for (k, vk) in v.iter().enumerate().take(n - i) {
                                for (j, &vj) in vk.iter().enumerate().take(nr - r) {
                                    out[(r + j) * n + i + k] = vj * scale[i + k];
                                }
                            }
                        }
                    }
                }
            } else {
                let (codes, sw, mw) = (scratch(codes, nr * cp), scratch(sw, nr * nsub), scratch(mw, nr * nsub));
                for (r, ((c, s), m)) in
                    codes.chunks_exact_mut(cp).zip(sw.chunks_exact_mut(nsub)).zip(mw.chunks_exact_mut(nsub)).enumerate()
                {
                    kern::decode_row(isa, qtype, affine, cols, w.row_in(r0 + r, plain), c, s, m);
                }
                let finish = |r: usize, i: usize, v: f32| {
                    let v = if mins {
                        v + kern::dot_f32(isa, &mw[r * nsub..(r + 1) * nsub], &s16[i * nsub..][..nsub])
                    } else {
                        v
                    };
                    v * scale[i]
                };
                if b32 {
                    // The legacy types and iq4_nl: four rows per call (edge quads repeat their last
                    // row), mins included; at AVX-512 VNNI as outer products with tiles of sixteen
                    // activation rows, whose kernel takes the codes with their sign bit flipped.
                    if outer {
                        for c in codes.iter_mut() {
                            *c ^= i8::MIN;
                        }
                    }
                    let quad = |r: usize| [0, 1, 2, 3].map(|j| (r + j).min(nr - 1));
                    let c = |r: usize| &codes[r * cp..][..cp];
                    let s = |r: usize| &sw[r * nsub..][..nsub];
                    let m = |rr: [usize; 4]| kern::has_mins(qtype, affine).then(|| rr.map(|r| &mw[r * nsub..][..nsub]));
                    if outer {
                        for t in 0..ntiles {
                            let (i0, k) = (kern::LANES * t, kern::LANES.min(n - kern::LANES * t));
                            for r in (0..nr).step_by(4) {
                                let rr = quad(r);
                                let v = kern::dot_b32_outer(isa, rr.map(c), rr.map(s), m(rr), b32_tile(t));
                                for (j, vj) in v.iter().enumerate().take(nr - r) {
                                    let o = &mut out[(r + j) * n + i0..][..k];
                                    for ((o, &vl), &sc) in o.iter_mut().zip(vj).zip(&scale[i0..i0 + k]) {
                                        *o = vl * sc;
                                    }
                                }
                            }
                        }
                    } else {
                        for i in 0..n {
                            for r in (0..nr).step_by(4) {
                                let rr = quad(r);
                                let v = kern::dot_b32_x4(isa, rr.map(c), rr.map(s), m(rr), act(i));
                                for (j, &vj) in v.iter().enumerate().take(nr - r) {
                                    out[(r + j) * n + i] = vj * scale[i];
                                }
                            }
                        }
                    }
                } else if outer {
                    // Two rows (the last repeated) with each tile of sixteen activation rows; the
                    // kernel takes the codes with their sign bit flipped (`c + 128` as a byte).
                    for c in codes.iter_mut() {
                        *c ^= i8::MIN;
                    }
                    let c = |r: usize| &codes[r.min(nr - 1) * cp..][..cp];
                    let s = |r: usize| &sw[r.min(nr - 1) * nsub..][..nsub];
                    for t in 0..ntiles {
                        let i0 = kern::LANES * t;
                        for r in (0..nr).step_by(2) {
                            let v = kern::dot_q8_outer(isa, [c(r), c(r + 1)], [s(r), s(r + 1)], q8_tile(t));
                            for (j, vj) in v.iter().enumerate().take(nr - r) {
                                let m = kern::LANES.min(n - i0);
                                let o = &mut out[(r + j) * n + i0..][..m];
                                if mins {
                                    for (l, (o, &vl)) in o.iter_mut().zip(vj).enumerate() {
                                        *o = finish(r + j, i0 + l, vl);
                                    }
                                } else {
                                    // `finish` without a min term, in a loop that vectorises.
                                    for ((o, &vl), &sc) in o.iter_mut().zip(vj).zip(&scale[i0..i0 + m]) {
                                        *o = vl * sc;
                                    }
                                }
                            }
                        }
                    }
                } else {
                    for i in 0..n {
                        let (q, d16) = (&q[i * cp..(i + 1) * cp], &d16[i * nsub..(i + 1) * nsub]);
                        let c = |r: usize| &codes[r * cp..(r + 1) * cp];
                        let s = |r: usize| &sw[r * nsub..(r + 1) * nsub];
                        // Four rows at a time share each activation load; edge quads repeat
                        // their last row, so every output comes from the same kernel (and the
                        // fused kernels give the same bits).
                        for r in (0..nr).step_by(4) {
                            let rr = [0, 1, 2, 3].map(|j| (r + j).min(nr - 1));
                            let v = kern::dot_q8_x4(isa, rr.map(c), rr.map(s), q, d16);
                            for (j, &vj) in v.iter().enumerate().take(nr - r) {
                                out[(r + j) * n + i] = finish(r + j, i, vj);
                            }
                        }
                    }
                }
            }
            if let Some(o) = &outliers {
                let to = TileOutliers::decode(isa, o, r0, nr, ocols, ovals);
                match xt {
                    Some(xt) => to.add_axpy(isa, xt, n, out),
                    None => to.add_gather(xs, cols, n, out),
                }
            }
        })
    };
    drive_tiles(par, rows, n, tile, y, tile_fn);
}

/// Where a 4 × C block of the float path goes in a tile's `nr × n` outputs: its first row's
/// first value at `at`, `rows` of its four rows inside the tile (the rest repeat the last).
struct F32Block {
    rows: usize,
    at: usize,
    n: usize,
}

impl F32Block {
    fn put<const C: usize>(&self, v: [[f32; C]; 4], out: &mut [f32]) {
        for (j, vj) in v.iter().enumerate().take(self.rows) {
            out[self.at + j * self.n..][..C].copy_from_slice(vj);
        }
    }
}

/// Run `tile_fn(t, out)` over the tiles of `tile` consecutive weight rows (one rayon task each
/// when `par`), where `out` is tile `t`'s `nr × n` outputs: y's block itself when `n = 1`, else
/// a per-thread buffer (weight rows by activation rows) that the same task then writes,
/// transposed, into its columns of `y` (`n × rows`): the transpose runs in parallel and needs
/// no `rows × n` buffer. It goes eight activation rows at a time: eight contiguous values of
/// each buffer row, written to eight rows of `y`, `nr` contiguous floats each.
fn drive_tiles<F>(par: bool, rows: usize, n: usize, tile: usize, y: &mut [f32], tile_fn: F)
where
    F: Fn((usize, &mut [f32])) + Send + Sync,
{
    assert!(y.len() == rows * n && tile > 0);
    if n == 1 {
        if par {
            y.par_chunks_mut(tile).enumerate().for_each(&tile_fn);
        } else {
            y.chunks_mut(tile).enumerate().for_each(&tile_fn);
        }
        return;
    }
    let yp = SharedOut(y.as_mut_ptr());
    let run = |t: usize| {
        let (r0, nr) = (t * tile, tile.min(rows - t * tile));
        OUT.with(|cell| {
            let mut buf = cell.borrow_mut();
            let out = scratch(&mut buf, nr * n);
            tile_fn((t, &mut *out));
            // Eight activation rows at a time: each buffer row's eight values are read together
            // (reading one value per row and activation row, with the rows 2 KiB apart at
            // n = 512, thrashed two L1 sets), and written to eight rows of y, `nr` each.
            for i0 in (0..n).step_by(8) {
                let m = 8.min(n - i0);
                for (k, src) in out.chunks_exact(n).enumerate() {
                    for (c, &v) in src[i0..i0 + m].iter().enumerate() {
                        // SAFETY: `y` holds `n × rows` values (asserted above), `i0 + c < n` and
                        // `r0 + k < r0 + nr ≤ rows`, so this value is inside it; tile `t` is the
                        // only one to write columns `r0..r0 + nr`, and `y` is borrowed mutably
                        // for the whole call, so no other reference to it exists meanwhile.
                        unsafe { yp.at((i0 + c) * rows + r0 + k).write(v) };
                    }
                }
            }
        });
    };
    let ntiles = rows.div_ceil(tile);
    if par {
        (0..ntiles).into_par_iter().for_each(run);
    } else {
        (0..ntiles).for_each(run);
    }
}

/// The output pointer shared by the tile tasks of [`drive_tiles`], each writing its own columns.
struct SharedOut(*mut f32);

// SAFETY: the tasks write disjoint ranges through it (see `drive_tiles`).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer `i` values on (a method, so closures capture the whole `SharedOut`).
    fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// The W8A8 path of [`matmul`]: every row of `x` quantized once to int8 codes with its step,
/// then tiles of weight rows (one rayon task each) multiplied with every activation row by the
/// exact integer dot, four weight rows per activation load, straight from the stored codes.
fn run_w8a8(w: &QMatrix<'_>, act: ActQuant, x: &[f32], n: usize, y: &mut [f32], isa: Isa, acts: &mut Acts) {
    let Layout { rows, cols, .. } = w.layout;
    // With one thread, the calling thread does the work: no hand-over to the pool and back.
    let par = n * rows * cols >= PAR_MIN_WORK && rayon::current_num_threads() > 1;
    let (q, steps) = (scratch(&mut acts.q, n * cols), scratch(&mut acts.scale, n));
    let quant = |(qi, (st, xi)): (&mut [i8], (&mut f32, &[f32]))| {
        *st = match act {
            ActQuant::Static(s) => s,
            ActQuant::PerToken => w8a8::dynamic_step(isa, xi),
        };
        w8a8::quantize_i8(isa, xi, *st, qi);
    };
    let parts = q.par_chunks_mut(cols).zip(steps.par_iter_mut().zip(x.par_chunks(cols)));
    if par && n > 1 {
        parts.for_each(quant);
    } else {
        parts.with_min_len(usize::MAX).for_each(quant);
    }
    let (q, steps) = (&*q, &*steps);
    let tile = (TILE_BYTES / cols).clamp(4, MAX_TILE_ROWS);
    // Output of tile `t`: `nr` rows × n (the transpose of y's block, = y's block when n = 1).
    let tile_fn = |(t, out): (usize, &mut [f32])| {
        let r0 = t * tile;
        let nr = out.len() / n;
        let mut d = [0f32; MAX_TILE_ROWS];
        for (r, d) in d[..nr].iter_mut().enumerate() {
            *d = w.row_scale(r0 + r);
        }
        let c = |r: usize| &w.row(r0 + r)[..cols];
        let qa = |i: usize| &q[i * cols..(i + 1) * cols];
        let quads = nr / 4 * 4;
        // Two activation rows (in L1) pass over the tile (in L2) at a time, four weight rows
        // per kernel call; an odd last row and the rows after the last quad go alone.
        for i in (0..n).step_by(2) {
            let two = i + 1 < n;
            for r in (0..quads).step_by(4) {
                let wr = [c(r), c(r + 1), c(r + 2), c(r + 3)];
                if two {
                    let s = w8a8::dot_i8_4x2(isa, wr, [qa(i), qa(i + 1)]);
                    for (j, [s0, s1]) in s.into_iter().enumerate() {
                        out[(r + j) * n + i] = w8a8::finish(s0, d[r + j], steps[i]);
                        out[(r + j) * n + i + 1] = w8a8::finish(s1, d[r + j], steps[i + 1]);
                    }
                } else {
                    for (j, sj) in w8a8::dot_i8_x4(isa, wr, qa(i)).into_iter().enumerate() {
                        out[(r + j) * n + i] = w8a8::finish(sj, d[r + j], steps[i]);
                    }
                }
            }
            for r in quads..nr {
                for k in i..(i + 2).min(n) {
                    out[r * n + k] = w8a8::finish(w8a8::dot_i8(isa, c(r), qa(k)), d[r], steps[k]);
                }
            }
        }
    };
    drive_tiles(par, rows, n, tile, y, tile_fn);
}
