//! Ragged k-quants: `q2_kr`, `q3_kr`, `q4_kr`, `q5_kr`, `q6_kr` (lowbit's own types).
//!
//! ggml's k-quants need rows that are a multiple of 256 values; llama.cpp falls back to legacy
//! 32-value types for any other row (hidden sizes 576, 896, 960, …). A ragged row is stored as
//! `cols / 256` ggml super-blocks of the base type (`q4_kr` → `q4_k`), byte for byte, followed by
//! one *tail* holding the remaining `r = cols % 256` values in `u = ceil(r / 32)` units of 32
//! values (1 ≤ u ≤ 8; u = 8 only when r > 224 is not a multiple of 32).
//!
//! # Tail encoding
//! The tail is the ggml block of the remaining values padded with zeros to 256 (importance padded
//! with zeros), quantized by the base type's own quantizer; the tail stores the fields of that
//! block that belong to its first `32 u` values, re-packed densely (the padded sub-blocks have
//! scale and min 0 and do not change the super-block scales, so the result is the tail
//! quantized on its own, except that an importance-weighted search's `sigma2` averages over
//! 256 values). Values `r..32 u` of the last unit are quantized as zeros and dropped by
//! dequantization (the documented rule for rows that are not a multiple of 32).
//!
//! Field packings of the tail, per unit `t` of 32 values, value `j` (0..32) of the unit:
//! * 2-bit codes: byte `8 t + j % 8`, bits `2 (j / 8)`;
//! * 4-bit codes: byte `16 t + j % 16`, bits `4 (j / 16)` (q4_0's packing);
//! * 1-bit high bits: byte `4 t + j / 8`, bit `j % 8`;
//! * 6-bit scales/mins: one byte each, in the low 6 bits (q3_k's stored value, offset 32).
//!
//! | base | tail fields, in order | bytes |
//! |------|-----------------------|-------|
//! | q2_k | `scales[2u]` (ggml's byte: scale nibble, min nibble), `qs[8u]` (2-bit), d, dmin | 10u + 4 |
//! | q3_k | `hmask[4u]` (high bits), `qs[8u]` (low 2 bits), `scales[2u]`, d | 14u + 2 |
//! | q4_k | d, dmin, `scales[u]`, `mins[u]`, `qs[16u]` (4-bit) | 18u + 4 |
//! | q5_k | d, dmin, `scales[u]`, `mins[u]`, `qh[4u]` (high bits), `qs[16u]` (low 4 bits) | 22u + 4 |
//! | q6_k | `ql[16u]` (low 4 bits), `qh[8u]` (high 2 bits), `scales[2u]` (i8), d | 26u + 2 |
//!
//! `d` and `dmin` are the block's f16 super-scales, unchanged. Per 32 values a tail costs what a
//! full super-block costs (up to half a byte more: the 6-bit fields take a byte each), plus its
//! own `d`/`dmin`.

use super::layout;
use super::QK_K;
use crate::qtype::QType;
use crate::simd::{kquants as simd_kq, Isa};

/// Values per tail unit.
pub const UNIT: usize = 32;

/// Tail units of a row of `cols` values (0 when `cols` is a multiple of 256).
pub fn tail_units(cols: usize) -> usize {
    (cols % QK_K).div_ceil(UNIT)
}

/// Bytes of a tail of `u` units of the base type `base` (0 for `u = 0`).
pub fn tail_bytes(base: QType, u: usize) -> usize {
    if u == 0 {
        return 0;
    }
    match base {
        QType::Q2K => 10 * u + 4,
        QType::Q3K => 14 * u + 2,
        QType::Q4K => 18 * u + 4,
        QType::Q5K => 22 * u + 4,
        QType::Q6K => 26 * u + 2,
        other => unreachable!("{} is not a k-quant", other.name()),
    }
}

/// Bytes of one row of `cols` values of the ragged type whose base is `base`, `None` on
/// overflow.
pub fn row_bytes(base: QType, cols: usize) -> Option<usize> {
    (cols / QK_K).checked_mul(base.info().block_bytes)?.checked_add(tail_bytes(base, tail_units(cols)))
}

/// Copies every field of the first `32 u` values between a ggml block `g` of type `base` and a
/// tail `t` of `u` units: into `t` when `to_tail`, into `g` otherwise. The destination must be
/// zeroed (fields are or-ed in).
fn transfer(base: QType, u: usize, g: &mut [u8], t: &mut [u8], to_tail: bool) {
    // Moves `width` bits at bit `gs` of `g[gb]` to/from bit `ts` of `t[tb]`.
    let mut mv = |gb: usize, gs: u32, tb: usize, ts: u32, width: u32| {
        let mask = ((1u32 << width) - 1) as u8;
        if to_tail {
            t[tb] |= ((g[gb] >> gs) & mask) << ts;
        } else {
            g[gb] |= ((t[tb] >> ts) & mask) << gs;
        }
    };
    let n = UNIT * u;
    // Tail positions of the dense packings (unit t = v / 32, j = v % 32).
    let two = |at: usize, v: usize| (at + 8 * (v / 32) + v % 8, 2 * (v % 32 / 8) as u32);
    let four = |at: usize, v: usize| (at + 16 * (v / 32) + v % 16, 4 * (v % 32 / 16) as u32);
    let one = |at: usize, v: usize| (at + 4 * (v / 32) + v % 32 / 8, (v % 8) as u32);
    match base {
        QType::Q2K => {
            use layout::q2k::*;
            let (qs, d) = (2 * u, 10 * u);
            for k in 0..2 * u {
                mv(SCALES + k, 0, k, 0, 8);
            }
            for v in 0..n {
                let (tb, ts) = two(qs, v);
                mv(QS + 32 * (v / 128) + v % 32, 2 * (v / 32 % 4) as u32, tb, ts, 2);
            }
            for i in 0..4 {
                mv(D + i, 0, d + i, 0, 8);
            }
        }
        QType::Q3K => {
            use layout::q3k::*;
            let (qs, sc, d) = (4 * u, 12 * u, 14 * u);
            for v in 0..n {
                let (tb, ts) = one(0, v);
                mv(HMASK + v % 32, (v / 32) as u32, tb, ts, 1);
                let (tb, ts) = two(qs, v);
                mv(QS + 32 * (v / 128) + v % 32, 2 * (v / 32 % 4) as u32, tb, ts, 2);
            }
            for k in 0..2 * u {
                // ggml: low 4 bits in nibble k / 8 of scales[k % 8], high 2 bits at 2 (k / 4)
                // of scales[8 + k % 4].
                mv(SCALES + k % 8, 4 * (k / 8) as u32, sc + k, 0, 4);
                mv(SCALES + 8 + k % 4, 2 * (k / 4) as u32, sc + k, 4, 2);
            }
            mv(D, 0, d, 0, 8);
            mv(D + 1, 0, d + 1, 0, 8);
        }
        QType::Q4K | QType::Q5K => {
            use layout::q4k::{D, SCALES};
            let five = base == QType::Q5K;
            let (sc, mn, qh) = (4, 4 + u, 4 + 2 * u);
            let qs = if five { 4 + 6 * u } else { 4 + 2 * u };
            for i in 0..4 {
                mv(D + i, 0, i, 0, 8);
            }
            for j in 0..u {
                // ggml's `get_scale_min_k4` packing of 8 six-bit scales and mins in 12 bytes.
                if j < 4 {
                    mv(SCALES + j, 0, sc + j, 0, 6);
                    mv(SCALES + j + 4, 0, mn + j, 0, 6);
                } else {
                    mv(SCALES + j + 4, 0, sc + j, 0, 4);
                    mv(SCALES + j - 4, 6, sc + j, 4, 2);
                    mv(SCALES + j + 4, 4, mn + j, 0, 4);
                    mv(SCALES + j, 6, mn + j, 4, 2);
                }
            }
            let gqs = if five { layout::q5k::QS } else { layout::q4k::QS };
            for v in 0..n {
                let (tb, ts) = four(qs, v);
                mv(gqs + 32 * (v / 64) + v % 32, 4 * (v / 32 % 2) as u32, tb, ts, 4);
                if five {
                    let (tb, ts) = one(qh, v);
                    mv(layout::q5k::QH + v % 32, (v / 32) as u32, tb, ts, 1);
                }
            }
        }
        QType::Q6K => {
            use layout::q6k::*;
            let (qh, sc, d) = (16 * u, 24 * u, 26 * u);
            for v in 0..n {
                let (h, r) = (v / 128, v % 128);
                let (tb, ts) = four(0, v);
                mv(QL + 64 * h + r % 64, 4 * (r / 64) as u32, tb, ts, 4);
                let (tb, ts) = two(qh, v);
                mv(QH + 32 * h + r % 32, 2 * (r / 32) as u32, tb, ts, 2);
            }
            for k in 0..2 * u {
                mv(SCALES + k, 0, sc + k, 0, 8);
            }
            mv(D, 0, d, 0, 8);
            mv(D + 1, 0, d + 1, 0, 8);
        }
        other => unreachable!("{} is not a k-quant", other.name()),
    }
}

/// The ggml block (of type `base`, zero-padded) that a tail `t` of `u` units stands for:
/// `block[..base.block_bytes]` is overwritten; fields beyond the tail's values are zero.
fn tail_to_block(base: QType, u: usize, t: &[u8], block: &mut [u8]) {
    let block = &mut block[..base.info().block_bytes];
    block.fill(0);
    let n = tail_bytes(base, u);
    let mut tail = [0u8; layout::q6k::BYTES]; // the largest tail: q6_k, 8 units, 210 bytes
    tail[..n].copy_from_slice(&t[..n]);
    transfer(base, u, block, &mut tail[..n], false);
}

/// Quantize one row `x` of the ragged type `qtype` into `dst` (`row_bytes` bytes) at `isa`,
/// optionally weighted by `importance` (length `x.len()`). Same contract as the other row
/// kernels (`crate::blocks`); bit-identical on every ISA because the base type's kernels are.
pub fn quantize_row(isa: Isa, qtype: QType, x: &[f32], dst: &mut [u8], importance: Option<&[f32]>) {
    let base = qtype.ragged_base().expect("a ragged k-type");
    let full = x.len() / QK_K * QK_K;
    let fb = full / QK_K * base.info().block_bytes;
    simd_kq::quantize_row(isa, base, &x[..full], &mut dst[..fb], importance.map(|w| &w[..full]));
    let u = tail_units(x.len());
    if u == 0 {
        return;
    }
    let r = x.len() - full;
    let mut xp = [0f32; QK_K];
    xp[..r].copy_from_slice(&x[full..]);
    let mut wp = [0f32; QK_K];
    if let Some(w) = importance {
        wp[..r].copy_from_slice(&w[full..]);
    }
    let mut block = [0u8; layout::q6k::BYTES];
    let block = &mut block[..base.info().block_bytes];
    simd_kq::quantize_row(isa, base, &xp, block, importance.map(|_| &wp[..]));
    let tail = &mut dst[fb..];
    tail.fill(0);
    transfer(base, u, block, tail, true);
}

/// Dequantize one row of the ragged type `qtype` (`src`: `row_bytes` bytes) into `y` (`cols`
/// values) at `isa`; bit-identical to the base type's dequantizer on the full super-blocks and
/// on the tail's block.
pub fn dequantize_row(isa: Isa, qtype: QType, src: &[u8], y: &mut [f32]) {
    let base = qtype.ragged_base().expect("a ragged k-type");
    let full = y.len() / QK_K * QK_K;
    let fb = full / QK_K * base.info().block_bytes;
    simd_kq::dequantize_row(isa, base, &src[..fb], &mut y[..full]);
    let u = tail_units(y.len());
    if u == 0 {
        return;
    }
    let mut block = [0u8; layout::q6k::BYTES];
    tail_to_block(base, u, &src[fb..], &mut block);
    let mut yp = [0f32; QK_K];
    simd_kq::dequantize_row(isa, base, &block[..base.info().block_bytes], &mut yp);
    let r = y.len() - full;
    y[full..].copy_from_slice(&yp[..r]);
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASES: [QType; 5] = [QType::Q2K, QType::Q3K, QType::Q4K, QType::Q5K, QType::Q6K];

    /// The tail fields cover exactly the bytes of the tail: every bit of a random tail survives
    /// tail → block → tail, so no two fields overlap and none is missed.
    #[test]
    fn transfer_is_a_bijection_on_the_tail() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for base in BASES {
            for u in 1..=8 {
                let n = tail_bytes(base, u);
                let tail: Vec<u8> = (0..n)
                    .map(|i| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let b = state as u8;
                        // 6-bit fields hold 6 bits (q3_k scales, q4_k/q5_k scales and mins).
                        let six = match base {
                            QType::Q3K => (12 * u..14 * u).contains(&i),
                            QType::Q4K | QType::Q5K => (4..4 + 2 * u).contains(&i),
                            _ => false,
                        };
                        if six {
                            b & 63
                        } else {
                            b
                        }
                    })
                    .collect();
                let mut block = vec![0u8; base.info().block_bytes];
                tail_to_block(base, u, &tail, &mut block);
                let mut back = vec![0u8; n];
                transfer(base, u, &mut block, &mut back, true);
                assert_eq!(back, tail, "{} u={u}", base.name());
            }
        }
    }

    /// Besides its f16 super-scales, a tail costs per 32 values what a super-block costs, plus
    /// at most half a byte (its 6-bit fields take a byte each).
    #[test]
    fn tail_costs_what_full_blocks_cost() {
        for base in BASES {
            let header = if matches!(base, QType::Q3K | QType::Q6K) { 2 } else { 4 };
            let per_unit = (base.info().block_bytes - header) as f64 / 8.0;
            for u in 1..=8 {
                let b = (tail_bytes(base, u) - header) as f64;
                let u = u as f64;
                assert!(b >= per_unit * u && b <= (per_unit + 0.5) * u, "{}: {b} bytes for {u} units", base.name());
            }
        }
    }
}
