//! Scalar reference of ggml's iq4_nl: 32-value blocks on a fixed non-linear 4-bit grid.
//!
//! # Layout (byte-identical to ggml's `block_iq4_nl`, 18 bytes, little-endian)
//! 0: `d` f16; 2: `qs` 16 bytes of 4-bit indices into [`KVALUES`]: `qs[j]` holds value `j` in
//! its low nibble and value `j + 16` in its high nibble. Value `j` dequantizes to
//! `d * KVALUES[index_j]` (ggml's `dequantize_row_iq4_nl`, gguf's `IQ4_NL.dequantize`).
//!
//! # Quantization (after ggml's `quantize_row_iq4_nl_impl`, I. Kawrakow, llama.cpp PR #5590)
//! Weights: `w_j = importance_j * sqrt(sigma2 + x_j^2)` with importance, `w_j = x_j^2` without,
//! `sigma2 = 2 * sum(x^2) / 32` of the block. `max` is the first value of largest magnitude.
//! 1. ggml's search, replicated exactly: start from `d = max / 127`, map each `x * (1/d)` to the
//!    nearest grid value (ties to the upper one, as ggml's `best_index_int8`), take the weighted
//!    least-squares scale `sum(w q x) / sum(w q^2)`; then try `id = (itry - 127) / max` for
//!    `itry = -7..=7` and keep the scale of the largest `sum(w q x)^2 / sum(w q^2)`. ggml stores
//!    `f16(d)` with the indices nearest to `x * (1/d)` (candidate **A**).
//! 2. Better than ggml where it can be: candidates **B** (the same f16 scale, indices nearest to
//!    `x / f16(d)`, i.e. optimal for the scale actually stored), **C** (the least-squares scale
//!    refitted to B's indices, rounded to f16, indices re-chosen) and **F** (`d = max / -127`,
//!    the most negative grid value on `max`). Each is measured by its weighted squared error
//!    `sum w_j (x_j - f16(d) q_j)^2`; the block stored is A unless a later candidate is strictly
//!    better (or A's scale is not finite in f16). The stored block's weighted error is therefore
//!    never larger than ggml's.
//!
//! Deviation from ggml on degenerate input: when every weight of a block is 0 (all-zero
//! importance), ggml divides 0 by 0 and stores a NaN scale; here the search keeps its starting
//! scale. A block with `max|x| < 1e-15` stores `d = 0` and index 8 (the grid value 1) for every
//! value, as ggml does.

use half::f16;

use crate::blocks::legacy::{f16_round, GROUP_MAX_EPS};

/// Values per block.
pub const QK: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 18;

/// ggml's non-linear grid `kvalues_iq4nl`.
pub const KVALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// Midpoints between consecutive grid values (exact half-integers). The nearest grid index to
/// `a` is the number of midpoints `<= a` (ties go to the upper value, as ggml's
/// `best_index_int8`, which compares `a - lo < hi - a`: the two agree on every f32, see the
/// exhaustive test `best_index_matches_ggml`).
pub const MIDPOINTS: [f32; 15] =
    [-115.5, -93.5, -74.0, -57.0, -42.0, -28.5, -16.0, -4.5, 7.0, 19.0, 31.5, 45.5, 61.0, 79.0, 101.0];

/// Scale candidates on each side of ggml's start (`ntry` of `quantize_iq4_nl`).
pub(crate) const NTRY: i32 = 7;

/// The nearest grid index of `a` (see [`MIDPOINTS`]); NaN gives 0.
#[inline]
pub fn best_index(a: f32) -> usize {
    MIDPOINTS.iter().filter(|&&m| m <= a).count()
}

/// The weights of one block (see the module docs).
pub(crate) fn block_weights(xb: &[f32], importance: Option<&[f32]>, wb: &mut [f32; QK]) {
    match importance {
        Some(ib) => {
            let mut sigma2 = 0.0f32;
            for &v in xb {
                sigma2 += v * v;
            }
            sigma2 *= 2.0 / QK as f32;
            for j in 0..QK {
                wb[j] = ib[j] * (sigma2 + xb[j] * xb[j]).sqrt();
            }
        }
        None => {
            for j in 0..QK {
                wb[j] = xb[j] * xb[j];
            }
        }
    }
}

/// `(sum(w q x), sum(w q^2))` of the grid values nearest to `x * id`, summed in order.
fn pass(xb: &[f32], wb: &[f32; QK], id: f32) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for j in 0..QK {
        let q = f32::from(KVALUES[best_index(id * xb[j])]);
        sumqx += wb[j] * q * xb[j];
        sumq2 += wb[j] * q * q;
    }
    (sumqx, sumq2)
}

/// ggml's scale search (candidate A's scale, before f16) for a block whose first value of
/// largest magnitude is `max` (`|max| >= 1e-15`).
pub(crate) fn search(xb: &[f32], wb: &[f32; QK], max: f32) -> f32 {
    let d0 = -max / f32::from(KVALUES[0]);
    let (sumqx, sumq2) = pass(xb, wb, 1.0 / d0);
    let (mut d, mut best) = if sumq2 > 0.0 { (sumqx / sumq2, sumqx / sumq2 * sumqx) } else { (d0, 0.0) };
    for itry in -NTRY..=NTRY {
        let id = (itry + i32::from(KVALUES[0])) as f32 / max;
        let (sumqx, sumq2) = pass(xb, wb, id);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Indices nearest to `x * id`.
fn indices(xb: &[f32], id: f32) -> [u8; QK] {
    let mut idx = [0u8; QK];
    for (i, &v) in idx.iter_mut().zip(xb) {
        *i = best_index(id * v) as u8;
    }
    idx
}

/// `sum w_j (x_j - dh q_j)^2`, summed in order.
fn error(xb: &[f32], wb: &[f32; QK], dh: f32, idx: &[u8; QK]) -> f32 {
    let mut e = 0.0f32;
    for j in 0..QK {
        let diff = xb[j] - dh * f32::from(KVALUES[idx[j] as usize]);
        e += wb[j] * (diff * diff);
    }
    e
}

/// `1/d`, 0 for `d == 0`.
#[inline]
fn inv(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Write one block: `d` as f16 and the 32 indices.
pub(crate) fn pack_block(d: f32, idx: &[u8; QK], out: &mut [u8]) {
    out[0..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
    for j in 0..QK / 2 {
        out[2 + j] = idx[j] | (idx[j + QK / 2] << 4);
    }
}

/// Quantize one block `xb` with weights `wb` into `out` (see the module docs).
fn quantize_block(xb: &[f32], wb: &[f32; QK], out: &mut [u8]) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in xb {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return pack_block(0.0, &[8; QK], out);
    }
    // A: ggml's result.
    let da = search(xb, wb, max);
    let dha = f16_round(da);
    let idx_a = indices(xb, inv(da));
    // F: always finite (|max| / 127 <= the type's max_abs / 127).
    let dhf = f16_round(max / f32::from(KVALUES[0]));
    let idx_f = indices(xb, inv(dhf));
    let (mut dh, mut idx) = if dha.is_finite() { (dha, idx_a) } else { (dhf, idx_f) };
    let mut best = error(xb, wb, dh, &idx);
    if dha.is_finite() {
        // B: A's stored scale, indices optimal for it.
        let idx_b = indices(xb, inv(dha));
        let eb = error(xb, wb, dha, &idx_b);
        if eb < best {
            (dh, idx, best) = (dha, idx_b, eb);
        }
        // C: least-squares refit to B's indices.
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for j in 0..QK {
            let q = f32::from(KVALUES[idx_b[j] as usize]);
            sumqx += wb[j] * q * xb[j];
            sumq2 += wb[j] * q * q;
        }
        let dhc = if sumq2 > 0.0 { f16_round(sumqx / sumq2) } else { dha };
        if dhc.is_finite() {
            let idx_c = indices(xb, inv(dhc));
            let ec = error(xb, wb, dhc, &idx_c);
            if ec < best {
                (dh, idx, best) = (dhc, idx_c, ec);
            }
        }
    }
    let ef = error(xb, wb, dhf, &idx_f);
    if ef < best {
        (dh, idx) = (dhf, idx_f);
    }
    pack_block(dh, &idx, out);
}

/// Quantize one row `x` (length a multiple of 32) into `dst` (`x.len() / 32 * 18` bytes), with
/// per-column `importance` (same length as `x`) if given.
pub fn quantize_row(x: &[f32], dst: &mut [u8], importance: Option<&[f32]>) {
    let mut wb = [0.0f32; QK];
    for (b, (xb, out)) in x.chunks_exact(QK).zip(dst.chunks_exact_mut(BLOCK_BYTES)).enumerate() {
        block_weights(xb, importance.map(|imp| &imp[b * QK..(b + 1) * QK]), &mut wb);
        quantize_block(xb, &wb, out);
    }
}

/// Dequantize one row of iq4_nl blocks `src` into `y` (`y.len()` values, a multiple of 32).
pub fn dequantize_row(src: &[u8], y: &mut [f32]) {
    for (b, yb) in src.chunks_exact(BLOCK_BYTES).zip(y.chunks_exact_mut(QK)) {
        let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        for j in 0..QK / 2 {
            yb[j] = d * f32::from(KVALUES[(b[2 + j] & 0x0F) as usize]);
            yb[j + QK / 2] = d * f32::from(KVALUES[(b[2 + j] >> 4) as usize]);
        }
    }
}
