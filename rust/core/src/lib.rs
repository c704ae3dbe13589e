//! lowbit-core: the pure-Rust heart of lowbit (no Python, no pyo3).
//!
//! * [`qtype`]: the type table (ggml-compatible block types, group-affine integers, floats).
//! * [`blocks`]: scalar reference quantizers and dequantizers, one module per family.
//! * [`simd`]: run-time ISA detection, the `LOWBIT_ISA` override and the SIMD kernels.
//! * [`quant`]: the driver: input validation, per-row dispatch, rayon over rows.
//! * [`matmul`]: quantized matrix multiplication (`y = x · Wᵀ`) for every type.
//! * [`format`](mod@format): LBF, the single-file model format (reader and writer).
//! * [`model`]: the llama-family decoder over an LBF file (KV-cache sessions, sampling).
//!
//! Layouts and the architecture are described in `ARCHITECTURE.md` of the shared design
//! and in the repository's `formats/` folder.

pub mod blocks;
pub mod error;
pub mod format;
pub mod matmul;
pub mod model;
pub mod pack;
pub mod qtype;
pub mod quant;
pub mod simd;

pub use error::{Error, Result};
pub use qtype::{AffineSpec, QType, TypeInfo};
pub use quant::{dequantize, quantize, QuantOptions};
pub use simd::Isa;
