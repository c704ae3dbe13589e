//! Scalar reference of the float family: `f32`, `f16` and `bf16` element types (ggml types 0, 1
//! and 30; GGUF stores them exactly like this).
//!
//! Layout: one little-endian value per element, no blocks (`block_size` 1):
//! * `f32`: the 4 bytes of the value (a copy; `-0.0` and every other bit pattern are kept);
//! * `f16`: IEEE-754 binary16, rounded to nearest, ties to even (`half::f16::from_f32`, ggml's
//!   `GGML_FP32_TO_FP16`, numpy's `astype(float16)`); values beyond the f16 range become ±inf,
//!   which the driver prevents by rejecting `|x| > 65504`;
//! * `bf16`: the upper 16 bits of the f32, rounded to nearest, ties to even, NaN made quiet
//!   (`half::bf16::from_f32`, ggml's `ggml_compute_fp32_to_bf16`, gguf's `BF16.quantize`).
//!
//! Dequantization is exact (every f16/bf16 value is an f32). NaN bit patterns are returned quiet
//! as `half` does (`to_f32` sets the quiet bit); ggml and gguf keep a signalling bf16 NaN
//! signalling, the only place where our output bits can differ from theirs.

use half::{bf16, f16};

use crate::qtype::QType;

/// Bytes per element of a float type (`f32` 4, `f16`/`bf16` 2).
pub fn elem_bytes(qtype: QType) -> usize {
    match qtype {
        QType::F32 => 4,
        _ => 2,
    }
}

/// Convert one row `x` into `dst` (`x.len() * elem_bytes` bytes) as `qtype` (`F32`, `F16` or
/// `BF16`; other types leave `dst` untouched).
pub fn quantize_row(qtype: QType, x: &[f32], dst: &mut [u8]) {
    match qtype {
        QType::F32 => {
            for (v, d) in x.iter().zip(dst.chunks_exact_mut(4)) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        QType::F16 => {
            for (v, d) in x.iter().zip(dst.chunks_exact_mut(2)) {
                d.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        QType::BF16 => {
            for (v, d) in x.iter().zip(dst.chunks_exact_mut(2)) {
                d.copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        _ => {}
    }
}

/// Convert one row of bytes `src` (`y.len() * elem_bytes` bytes) of `qtype` back to f32 in `y`.
pub fn dequantize_row(qtype: QType, src: &[u8], y: &mut [f32]) {
    match qtype {
        QType::F32 => {
            for (b, v) in src.chunks_exact(4).zip(y.iter_mut()) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        QType::F16 => {
            for (b, v) in src.chunks_exact(2).zip(y.iter_mut()) {
                *v = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        QType::BF16 => {
            for (b, v) in src.chunks_exact(2).zip(y.iter_mut()) {
                *v = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        _ => {}
    }
}
