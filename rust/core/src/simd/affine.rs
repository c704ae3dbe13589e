//! SIMD kernels of the group-affine family (to be written).
use crate::blocks::AffineRow;
use crate::qtype::AffineSpec;
use crate::simd::Isa;

/// Quantize one row (see `blocks` for the contract).
pub fn quantize_row(_isa: Isa, _x: &[f32], _dst: &mut [u8], _p: &AffineRow<'_>, _importance: Option<&[f32]>) {
    unimplemented!("affine family")
}
/// Dequantize one row.
pub fn dequantize_row(_isa: Isa, _spec: &AffineSpec, _src: &[u8], _y: &mut [f32]) {
    unimplemented!("affine family")
}
