//! Scalar reference of ggml's k-quants: q2_k, q3_k, q4_k, q5_k, q6_k.
//!
//! Reference: llama.cpp `ggml/src/ggml-quants.c` (`quantize_row_qN_K_ref` without importance,
//! `quantize_row_qN_K_impl` with an importance vector, `dequantize_row_qN_K`) and the block
//! layouts of `ggml/src/ggml-common.h`. The byte layouts are ggml's exactly (see [`layout`]);
//! the dequantizers follow gguf-py's numpy `gguf.quants` operation order, so their output equals
//! `gguf.quants.dequantize` bit for bit.
//!
//! # Quantization, per 256-value super-block
//! 1. *Normalisation* (ours): the values (and the importance) are multiplied by a power of two
//!    so that the super-block's largest magnitude lies in [1, 2). The searches are homogeneous,
//!    so on ordinary data this changes no bit of the result (power-of-two scaling is exact), but
//!    every intermediate stays far from f32 overflow and underflow, whatever the input scale;
//!    ggml's absolute thresholds (`GROUP_MAX_EPS`) are scaled along so they keep their meaning.
//! 2. *Sub-block search*, ggml's algorithms with ggml's constants and operation order:
//!    * q2_k / q4_k / q5_k: the weighted least-squares scale+min search over a grid of candidate
//!      inverse scales with refit (`make_qkx2_quants` without importance, weights `|x|` for
//!      q2_k and `av_x + |x|` for q4_k/q5_k; `make_qkx3_quants` with importance, weights
//!      `imp * sqrt(sigma2 + x^2)`);
//!    * q3_k: `make_q3_quants` (iterative coordinate descent, weights `x^2`) without importance,
//!      `make_qx_quants` with weights `imp * sqrt(sigma2 + x^2)` with importance;
//!    * q6_k: `make_qx_quants` (19 candidate scales, weights `x^2`, or the raw importance).
//! 3. *Super-block scales*: the sub-scales (and sub-mins) are quantized to 4/6/8-bit integers
//!    relative to the largest one (`nearest_int`), or, with importance, by `make_qp_quants` /
//!    `make_qx_quants` weighted by the sub-block weight sums, as ggml does.
//! 4. *Refinement* ([`Mode::Refined`], ours, the default): for every sub-block the integer
//!    scale (and min) one step up or down is tried, the values re-quantized with it, and the
//!    pair with the smallest squared error (weighted by the importance if given, plain
//!    otherwise) is kept; ties keep ggml's choice. The error of each sub-block is therefore never
//!    larger than with ggml's choice. [`Mode::Ggml`] skips this step and reproduces ggml.
//! 5. *Re-quantization* of the values with the final integer scales (`nearest_int`), as ggml
//!    does; a sub-block whose final scale is 0 keeps the codes of its search, as in ggml.
//!
//! # Deviations from ggml (all outside ordinary data, or rounding-level)
//! * With importance, the super-block's `sum x^2` (for `sigma2`) is accumulated per sub-block
//!   and then over sub-blocks (ggml: one running sum over the 256 values), so that the SIMD
//!   kernels can run one sub-block per lane with the same bits.
//! * A sub-block whose range is below 2^-100 of the super-block's magnitude counts as
//!   constant, and a search candidate whose range is that small is skipped (ggml divides by it
//!   and may produce Inf/NaN there); integer scales are clamped into their field (ggml lets a
//!   negative one wrap); the stored f16 super-scales saturate at ±65504 instead of becoming Inf.
//!
//! # Input bound (`max_abs` of the type table)
//! The largest stored f16 super-scale per unit of `max |x|` is, from the algorithms and
//! measured on adversarial rows (alternating ±max, one-sided, spikes): q2_k ≈ 0.086 (`dmin` ≈
//! min / 15, the least-squares min overshooting the data by up to ~30 %), q3_k ≈ 0.011 (scale ≈
//! max / 3 over 32 integer steps), q4_k / q5_k ≈ 0.018 (`dmin` ≈ min / 63), q6_k ≈ 0.00026. The
//! bounds 7.5, 32, 31.5, 31.5 and 1024 × 65504 leave a margin of 1.5× or more, and a test checks
//! that no scale saturates at the bound. Pathological importance vectors can still push a scale
//! past 65504; it then saturates (stays finite) instead of becoming Inf.
//!
//! Every function here is plain scalar code; the SIMD kernels in `crate::simd::kquants`
//! reimplement the same arithmetic lane by lane and are tested against it bit for bit.

mod quant;
pub mod ragged;
mod search;

use half::f16;

use crate::qtype::QType;

/// Values per super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// What the quantizer does after ggml's search (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// ggml's algorithm followed by the per-sub-block refinement of the integer scales
    /// (never a larger per-sub-block error than ggml's choice). The default.
    #[default]
    Refined,
    /// ggml's algorithm only: on ordinary data (no sub-normal intermediates) the bytes of
    /// ggml's `quantize_qN_K` (the `_ref` function without importance; with importance the
    /// `_impl` one, up to the summation order of `sigma2`).
    Ggml,
}

/// Byte offsets of ggml's k-quant blocks (`ggml-common.h`), 256 values per block. f16 fields
/// are little-endian IEEE half precision.
pub mod layout {
    /// q2_k (`block_q2_K`, 84 B): `scales[16]` (low nibble: 4-bit scale, high nibble: 4-bit
    /// min of each 16-value sub-block), `qs[64]` (2-bit codes), `d`, `dmin` (f16).
    pub mod q2k {
        pub const SCALES: usize = 0;
        pub const QS: usize = 16;
        pub const D: usize = 80;
        pub const DMIN: usize = 82;
        pub const BYTES: usize = 84;
        const _: () = assert!(DMIN + 2 == BYTES && QS + 64 == D && SCALES + 16 == QS);
    }
    /// q3_k (`block_q3_K`, 110 B): `hmask[32]` (high bit of each 3-bit code), `qs[64]` (low 2
    /// bits), `scales[12]` (sixteen 6-bit signed scales, offset 32), `d` (f16).
    pub mod q3k {
        pub const HMASK: usize = 0;
        pub const QS: usize = 32;
        pub const SCALES: usize = 96;
        pub const D: usize = 108;
        pub const BYTES: usize = 110;
        const _: () = assert!(D + 2 == BYTES && SCALES + 12 == D && QS + 64 == SCALES && HMASK + 32 == QS);
    }
    /// q4_k (`block_q4_K`, 144 B): `d`, `dmin` (f16), `scales[12]` (eight 6-bit scales and
    /// eight 6-bit mins, `get_scale_min_k4` packing), `qs[128]` (4-bit codes).
    pub mod q4k {
        pub const D: usize = 0;
        pub const DMIN: usize = 2;
        pub const SCALES: usize = 4;
        pub const QS: usize = 16;
        pub const BYTES: usize = 144;
        const _: () = assert!(QS + 128 == BYTES && SCALES + 12 == QS && DMIN + 2 == SCALES);
    }
    /// q5_k (`block_q5_K`, 176 B): `d`, `dmin` (f16), `scales[12]` (as q4_k), `qh[32]` (fifth
    /// bit of each code), `qs[128]` (low 4 bits).
    pub mod q5k {
        pub const D: usize = 0;
        pub const DMIN: usize = 2;
        pub const SCALES: usize = 4;
        pub const QH: usize = 16;
        pub const QS: usize = 48;
        pub const BYTES: usize = 176;
        const _: () = assert!(QS + 128 == BYTES && QH + 32 == QS && SCALES + 12 == QH);
    }
    /// q6_k (`block_q6_K`, 210 B): `ql[128]` (low 4 bits), `qh[64]` (high 2 bits), `scales[16]`
    /// (int8 scale of each 16-value sub-block), `d` (f16).
    pub mod q6k {
        pub const QL: usize = 0;
        pub const QH: usize = 128;
        pub const SCALES: usize = 192;
        pub const D: usize = 208;
        pub const BYTES: usize = 210;
        const _: () = assert!(D + 2 == BYTES && SCALES + 16 == D && QH + 64 == SCALES);
    }
}

/// Quantize one row `x` (length a multiple of 256) of a k-quant type into `dst`
/// (`x.len() / 256 * block_bytes` bytes), optionally weighting the error by `importance`
/// (one value per column, >= 0). [`Mode::Refined`]. See the module docs.
pub fn quantize_row(qtype: QType, x: &[f32], dst: &mut [u8], importance: Option<&[f32]>) {
    quantize_row_mode(qtype, x, dst, importance, Mode::Refined)
}

/// [`quantize_row`] with an explicit [`Mode`].
pub fn quantize_row_mode(qtype: QType, x: &[f32], dst: &mut [u8], importance: Option<&[f32]>, mode: Mode) {
    let bytes = qtype.info().block_bytes;
    debug_assert_eq!(x.len() % QK_K, 0);
    debug_assert_eq!(dst.len(), x.len() / QK_K * bytes);
    for (b, (xb, yb)) in x.chunks_exact(QK_K).zip(dst.chunks_exact_mut(bytes)).enumerate() {
        let imp = importance.map(|w| &w[b * QK_K..(b + 1) * QK_K]);
        match qtype {
            QType::Q2K => quant::quantize_q2k(xb, imp, mode, yb),
            QType::Q3K => quant::quantize_q3k(xb, imp, mode, yb),
            QType::Q4K => quant::quantize_q45k(xb, imp, mode, false, yb),
            QType::Q5K => quant::quantize_q45k(xb, imp, mode, true, yb),
            QType::Q6K => quant::quantize_q6k(xb, imp, mode, yb),
            other => unreachable!("{} is not a k-quant", other.name()),
        }
    }
}

/// Dequantize one row of k-quant blocks `src` into `y` (`y.len()` = 256 × blocks), with
/// gguf-py's operation order (bit-identical to `gguf.quants.dequantize`).
pub fn dequantize_row(qtype: QType, src: &[u8], y: &mut [f32]) {
    let bytes = qtype.info().block_bytes;
    debug_assert_eq!(y.len() % QK_K, 0);
    debug_assert_eq!(src.len(), y.len() / QK_K * bytes);
    for (xb, yb) in src.chunks_exact(bytes).zip(y.chunks_exact_mut(QK_K)) {
        match qtype {
            QType::Q2K => dequantize_q2k(xb, yb),
            QType::Q3K => dequantize_q3k(xb, yb),
            QType::Q4K => dequantize_q45k(xb, false, yb),
            QType::Q5K => dequantize_q45k(xb, true, yb),
            QType::Q6K => dequantize_q6k(xb, yb),
            other => unreachable!("{} is not a k-quant", other.name()),
        }
    }
}

/// Little-endian f16 at `b[at..at + 2]` as f32.
fn read_f16(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The 6-bit scale and min of sub-block `j` (0..8) of q4_k/q5_k (ggml's `get_scale_min_k4`).
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// The signed 6-bit scale of sub-block `j` (0..16) of q3_k, in −32..=31.
pub(crate) fn scale_q3k(j: usize, s: &[u8]) -> i32 {
    let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
    let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    i32::from(lo | (hi << 4)) - 32
}

fn dequantize_q2k(b: &[u8], y: &mut [f32]) {
    use layout::q2k::*;
    let d = read_f16(b, D);
    let dmin = read_f16(b, DMIN);
    for (v, out) in y.iter_mut().enumerate() {
        let sc = b[SCALES + v / 16];
        let (dl, ml) = (d * f32::from(sc & 0xF), dmin * f32::from(sc >> 4));
        let q = (b[QS + 32 * (v / 128) + v % 32] >> (2 * ((v / 32) % 4))) & 3;
        *out = dl * f32::from(q) - ml;
    }
}

fn dequantize_q3k(b: &[u8], y: &mut [f32]) {
    use layout::q3k::*;
    let d = read_f16(b, D);
    for (v, out) in y.iter_mut().enumerate() {
        let dl = d * scale_q3k(v / 16, &b[SCALES..SCALES + 12]) as f32;
        let low = (b[QS + 32 * (v / 128) + v % 32] >> (2 * ((v / 32) % 4))) & 3;
        let high = (b[HMASK + v % 32] >> (v / 32)) & 1;
        // gguf: q = low - 4 * (1 - high bit).
        let q = i32::from(low) - 4 * i32::from(high ^ 1);
        *out = dl * q as f32;
    }
}

fn dequantize_q45k(b: &[u8], five: bool, y: &mut [f32]) {
    use layout::q4k::{D, DMIN, SCALES};
    let qs = if five { layout::q5k::QS } else { layout::q4k::QS };
    let d = read_f16(b, D);
    let dmin = read_f16(b, DMIN);
    for (v, out) in y.iter_mut().enumerate() {
        let (sc, m) = scale_min_k4(v / 32, &b[SCALES..SCALES + 12]);
        let (dl, ml) = (d * f32::from(sc), dmin * f32::from(m));
        let mut q = (b[qs + 32 * (v / 64) + v % 32] >> (4 * ((v / 32) % 2))) & 0xF;
        if five {
            q |= ((b[layout::q5k::QH + v % 32] >> (v / 32)) & 1) << 4;
        }
        *out = dl * f32::from(q) - ml;
    }
}

fn dequantize_q6k(b: &[u8], y: &mut [f32]) {
    use layout::q6k::*;
    let d = read_f16(b, D);
    for (v, out) in y.iter_mut().enumerate() {
        let dl = d * f32::from(b[SCALES + v / 16] as i8);
        let (h, r) = (v / 128, v % 128);
        let low = (b[QL + 64 * h + r % 64] >> (4 * (r / 64))) & 0xF;
        let high = (b[QH + 32 * h + r % 32] >> (2 * (r / 32))) & 3;
        let q = i32::from(low | (high << 4)) - 32;
        *out = dl * q as f32;
    }
}
