//! SIMD kernels of iq4_nl (to be written).
use crate::simd::Isa;

/// Quantize one row (see `blocks` for the contract).
pub fn quantize_row(_isa: Isa, _x: &[f32], _dst: &mut [u8], _importance: Option<&[f32]>) {
    unimplemented!("iq4_nl")
}
/// Dequantize one row.
pub fn dequantize_row(_isa: Isa, _src: &[u8], _y: &mut [f32]) {
    unimplemented!("iq4_nl")
}
