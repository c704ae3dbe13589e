//! SIMD kernels of the kquants family (to be written).
use crate::qtype::QType;
use crate::simd::Isa;

/// Quantize one row (see `blocks` for the contract).
pub fn quantize_row(_isa: Isa, _qtype: QType, _x: &[f32], _dst: &mut [u8], _importance: Option<&[f32]>) {
    unimplemented!("kquants family")
}
/// Dequantize one row.
pub fn dequantize_row(_isa: Isa, _qtype: QType, _src: &[u8], _y: &mut [f32]) {
    unimplemented!("kquants family")
}
