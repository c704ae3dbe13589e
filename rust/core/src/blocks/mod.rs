//! Scalar reference quantizers and dequantizers, one module per family, and the per-row
//! dispatch to the SIMD kernels of [`crate::simd`].
//!
//! Contract of every row kernel (scalar and SIMD alike):
//! * `x` is one row of finite values, each `|v| <= info.max_abs` (the driver checks this), its
//!   length a multiple of the type's block size (checked too; any length for the ragged
//!   k-types, a multiple of 16 for the `-dq` types);
//! * `dst` is exactly the row's byte length; every byte of it is written;
//! * the output bytes are a pure function of the inputs: bit-identical on every ISA.

pub mod affine;
pub mod dq;
pub mod float;
pub mod iq4nl;
pub mod kquants;
pub mod legacy;

use crate::qtype::{AffineSpec, Family, QType};
use crate::simd::Isa;

/// Per-row parameters of a group-affine quantization.
#[derive(Debug, Clone, Copy)]
pub struct AffineRow<'a> {
    /// Bits, group size, symmetry.
    pub spec: AffineSpec,
    /// Multiplies each group's range before the scale is computed (1.0 = min-max); in (0, 1].
    pub clip_ratio: f32,
    /// Explicit per-group range of this row (`groups` values each), replacing the min/max of
    /// the data (and `clip_ratio`). Both or neither; `min <= max`.
    pub range: Option<(&'a [f32], &'a [f32])>,
}

/// Everything besides the values that a row kernel may need.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowCtx<'a> {
    /// Per-column importance (llama.cpp's imatrix: mean of x² of the activations), length =
    /// row length, finite and >= 0. Weights the squared error in the scale searches.
    pub importance: Option<&'a [f32]>,
    /// Group-affine parameters (only for `int*` types).
    pub affine: Option<AffineRow<'a>>,
}

/// Quantize one row `x` into `dst` (see the module contract).
pub fn quantize_row(isa: Isa, qtype: QType, x: &[f32], dst: &mut [u8], ctx: &RowCtx<'_>) {
    match qtype.info().family {
        Family::Float => crate::simd::float::quantize_row(isa, qtype, x, dst),
        Family::Legacy => crate::simd::legacy::quantize_row(isa, qtype, x, dst, ctx.importance),
        Family::KQuant => crate::simd::kquants::quantize_row(isa, qtype, x, dst, ctx.importance),
        Family::RaggedKQuant => kquants::ragged::quantize_row(isa, qtype, x, dst, ctx.importance),
        Family::NonLinear => crate::simd::iq4nl::quantize_row(isa, x, dst, ctx.importance),
        Family::DoubleQuant => crate::simd::dq::quantize_row(isa, dq_bits(qtype), x, dst, ctx.importance),
        Family::Affine => {
            let a = ctx.affine.as_ref().expect("group-affine row without AffineRow");
            crate::simd::affine::quantize_row(isa, x, dst, a, ctx.importance)
        }
    }
}

/// Dequantize one row of bytes `src` into `y` (`y.len()` values).
pub fn dequantize_row(isa: Isa, qtype: QType, spec: Option<AffineSpec>, src: &[u8], y: &mut [f32]) {
    match qtype.info().family {
        Family::Float => crate::simd::float::dequantize_row(isa, qtype, src, y),
        Family::Legacy => crate::simd::legacy::dequantize_row(isa, qtype, src, y),
        Family::KQuant => crate::simd::kquants::dequantize_row(isa, qtype, src, y),
        Family::RaggedKQuant => kquants::ragged::dequantize_row(isa, qtype, src, y),
        Family::NonLinear => crate::simd::iq4nl::dequantize_row(isa, src, y),
        Family::DoubleQuant => crate::simd::dq::dequantize_row(isa, dq_bits(qtype), src, y),
        Family::Affine => {
            crate::simd::affine::dequantize_row(isa, &spec.expect("group-affine row without spec"), src, y)
        }
    }
}

fn dq_bits(qtype: QType) -> u32 {
    qtype.dq_bits().expect("a -dq type")
}
