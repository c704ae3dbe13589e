//! SIMD kernels of the k-quants (q2_k, q3_k, q4_k, q5_k, q6_k), written once over the
//! vocabulary [`Simd`] and bit-identical to the scalar reference [`crate::blocks::kquants`].
//!
//! Quantization runs *lane per sub-block*: a chunk of 16 sub-blocks (one super-block of 16 ×
//! 16 values, or two of 8 × 32) is normalised and transposed into a scratch buffer so that
//! each lane holds one sub-block, and every lane then runs the reference's search with the same
//! operations in the same order (sums sequential over the sub-block's values, branches as
//! masks). The super-block step (a few dozen scalar operations) is plain code; re-quantization
//! with the final scales and the bit packing run with lanes along the values.
//! Dequantization runs with lanes along the values of each sub-block.
//!
//! Speed comes from instruction-level parallelism that keeps the reference's order: the lane
//! groups of a chunk run interleaved value by value (each search candidate is a serial chain of
//! divide, sums, divide), independent candidates (`make_qx_quants`'s 18, the refinement's) are
//! evaluated three per pass with the best still chosen in order, and every vocabulary call sits
//! in `#[inline(always)]` functions, never in closures, so that it is compiled inside the
//! `#[target_feature]` wrapper of each ISA.
//!
//! The lane count must divide 16 (4, 8 and 16 here).

mod dequant;
mod lanes;
mod quant;

use crate::blocks::kquants::{self as reference, Mode, QK_K};
use crate::qtype::QType;
use crate::simd::vocab::Simd;
use crate::simd::{run, Isa, Kernel};

/// Quantize one row (see `blocks` for the contract) at `isa`, [`Mode::Refined`].
pub fn quantize_row(isa: Isa, qtype: QType, x: &[f32], dst: &mut [u8], importance: Option<&[f32]>) {
    quantize_row_mode(isa, qtype, x, dst, importance, Mode::Refined)
}

/// [`quantize_row`] with an explicit [`Mode`].
pub fn quantize_row_mode(isa: Isa, qtype: QType, x: &[f32], dst: &mut [u8], importance: Option<&[f32]>, mode: Mode) {
    run(isa, QuantK { qtype, x, dst, importance, mode })
}

/// Dequantize one row at `isa`.
pub fn dequantize_row(isa: Isa, qtype: QType, src: &[u8], y: &mut [f32]) {
    run(isa, DequantK { qtype, src, y })
}

struct QuantK<'a> {
    qtype: QType,
    x: &'a [f32],
    dst: &'a mut [u8],
    importance: Option<&'a [f32]>,
    mode: Mode,
}

impl Kernel for QuantK<'_> {
    type Output = ();
    fn scalar(self) {
        reference::quantize_row_mode(self.qtype, self.x, self.dst, self.importance, self.mode)
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) {
        quantize_row_simd_mode(s, self.qtype, self.x, self.dst, self.importance, self.mode)
    }
}

struct DequantK<'a> {
    qtype: QType,
    src: &'a [u8],
    y: &'a mut [f32],
}

impl Kernel for DequantK<'_> {
    type Output = ();
    fn scalar(self) {
        reference::dequantize_row(self.qtype, self.src, self.y)
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) {
        dequantize_row_simd(s, self.qtype, self.src, self.y)
    }
}

/// Quantize one row `x` (length a multiple of 256, finite, |x| ≤ the type's `max_abs`) of a
/// k-quant type into `dst` (`x.len() / 256` ggml blocks), optionally weighted by `importance`
/// (length `x.len()`, ≥ 0), [`Mode::Refined`]. Bit-identical to
/// [`crate::blocks::kquants::quantize_row`].
#[inline(always)]
pub fn quantize_row_simd<S: Simd>(s: S, qtype: QType, x: &[f32], dst: &mut [u8], importance: Option<&[f32]>) {
    quantize_row_simd_mode(s, qtype, x, dst, importance, Mode::Refined)
}

/// [`quantize_row_simd`] with an explicit [`Mode`].
#[inline(always)]
pub fn quantize_row_simd_mode<S: Simd>(
    s: S,
    qtype: QType,
    x: &[f32],
    dst: &mut [u8],
    importance: Option<&[f32]>,
    mode: Mode,
) {
    debug_assert!(16 % S::W == 0, "k-quant kernels need a lane count dividing 16");
    debug_assert_eq!(x.len() % QK_K, 0);
    match qtype {
        QType::Q2K => quant::q2k_row(s, x, importance, mode, dst),
        QType::Q3K => quant::q3k_row(s, x, importance, mode, dst),
        QType::Q4K => quant::q45k_row(s, x, importance, mode, false, dst),
        QType::Q5K => quant::q45k_row(s, x, importance, mode, true, dst),
        QType::Q6K => quant::q6k_row(s, x, importance, mode, dst),
        other => unreachable!("{} is not a k-quant", other.name()),
    }
}

/// Dequantize one row of k-quant blocks `src` into `y` (256 values per block). Bit-identical
/// to [`crate::blocks::kquants::dequantize_row`] and to gguf-py's `gguf.quants.dequantize`.
#[inline(always)]
pub fn dequantize_row_simd<S: Simd>(s: S, qtype: QType, src: &[u8], y: &mut [f32]) {
    let bytes = qtype.info().block_bytes;
    for (b, yb) in src.chunks_exact(bytes).zip(y.chunks_exact_mut(QK_K)) {
        match qtype {
            QType::Q2K => dequant::q2k(s, b, yb),
            QType::Q3K => dequant::q3k(s, b, yb),
            QType::Q4K => dequant::q45k(s, b, false, yb),
            QType::Q5K => dequant::q45k(s, b, true, yb),
            QType::Q6K => dequant::q6k(s, b, yb),
            other => unreachable!("{} is not a k-quant", other.name()),
        }
    }
}
