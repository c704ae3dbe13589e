//! Scalar reference of the small-group types with quantized statistics: `int2-g16-dq`,
//! `int3-g16-dq`, `int4-g16-dq` (lowbit's own; the second-level statistics of SpQR, Dettmers et
//! al., "SpQR: A Sparse-Quantized Representation for Near-Lossless LLM Weight Compression",
//! 2023, §3.2, in a k-quant-style super-block layout). `formats/QUANT_TYPES.md` is the byte spec.
//!
//! # Layout
//! Values come in asymmetric groups of [`GROUP`] = 16, and groups in super-blocks of
//! [`SUPER`] = 256 values (16 groups) starting at multiples of 256 from the row start; the last
//! super-block of a row holds the remaining `n_g = (cols mod 256) / 16` groups (rows are a
//! multiple of 16 long). A super-block of `n_g` groups, `b` bits per value:
//!
//! | offset | bytes | field |
//! |--------|-------|-------|
//! | 0 | 2 | f16 `d`, the step of the scale grid |
//! | 2 | 2 | f16 `m`, the smallest scale of the grid |
//! | 4 | `ceil(3 n_g / 8)` | scale codes `k_g`, 3 bits each, packed like the int3 codes ([`crate::pack`]) |
//! | … | `ceil(b n_g / 8)` | zero points `z_g`, `b` bits each, packed like the codes |
//! | … | `2 b n_g` | value codes `c`, `b` bits each, packed ([`crate::pack`]; int3: 8 in 3 bytes) |
//!
//! Dequantization, in f32 without fused operations: `s_g = m + d · k_g` (one multiply, one
//! add), then `value = s_g · (c − z_g)` (the integer difference is exact). A full super-block
//! is 78 / 112 / 146 bytes for b = 2 / 3 / 4 (2.4375 / 3.5 / 4.5625 bits per weight).
//!
//! # Quantization
//! Per super-block (so any 256-aligned segment of a row quantizes to the same bytes on its
//! own), with `maxq = 2^b − 1`:
//! 1. each group's range `[lo, hi] = [min(x_min, 0), max(x_max, 0)]` gives its ideal scale
//!    `s*_g = (hi − lo) / maxq`;
//! 2. the grid spans the ideal scales of the groups with `s* > 0` (an all-zero group is exact
//!    at any scale, so it does not stretch the grid): `m` = the smallest, rounded to the
//!    nearest f16; `d = (max s* − m) / 7` (with the stored `m`), rounded *up* to an f16 so the
//!    grid reaches the largest scale. No such group: `d = m = 0`;
//! 3. each group tries the 8 scales `s = m + d · k` (the stored f16 values, as decoding
//!    computes them) and for each the zero points `z0, z0 − 1, z0 + 1` (clamped to
//!    `[0, maxq]`), `z0 = clamp(round_even(−lo / s), 0, maxq)`, and keeps the candidate with the
//!    smallest weighted squared error `Σ_j w_j · (s · (q_j − z) − x_j)²` (summed in column
//!    order in f32; `w_j = 1` without importance) over the codes
//!    `q_j = clamp(round_even(x_j / s) + z, 0, maxq)` (a correctly rounded division; by 1
//!    where `s = 0`). Candidates are tried k-major in the order above; only a strictly smaller
//!    error replaces the best, so ties keep the smaller `k`.
//!
//! All-zero groups get codes equal to their zero point and dequantize to exactly +0.0; groups
//! whose scale underflows f16 do as well (their best candidate is `s = 0` or codes `= z`).

use half::f16;

use crate::blocks::affine::data_range;
use crate::pack;

/// Values per group (one scale code, one zero point).
pub const GROUP: usize = 16;
/// Values per full super-block (one f16 `d` and `m`).
pub const SUPER: usize = 256;
/// Groups per full super-block.
pub const GROUPS: usize = SUPER / GROUP;
/// Bits of a scale code.
pub const SCALE_BITS: u32 = 3;
/// Scale codes of the grid: `k` in `0..SCALE_CODES`.
pub const SCALE_CODES: usize = 1 << SCALE_BITS;
/// Zero points tried per scale: `z0`, `z0 − 1`, `z0 + 1`.
pub const ZERO_TRIES: usize = 3;
/// Candidates `(k, z)` searched per group.
pub const CANDIDATES: usize = SCALE_CODES * ZERO_TRIES;

/// Bytes of a super-block of `ng` groups (1..=16) of `bits`-bit values.
pub const fn block_bytes(bits: u32, ng: usize) -> usize {
    4 + (SCALE_BITS as usize * ng).div_ceil(8) + (bits as usize * ng).div_ceil(8) + 2 * bits as usize * ng
}

/// Byte offsets of a super-block's parts: (scale codes, zero points, value codes).
pub const fn offsets(bits: u32, ng: usize) -> (usize, usize, usize) {
    let zeros = 4 + (SCALE_BITS as usize * ng).div_ceil(8);
    (4, zeros, zeros + (bits as usize * ng).div_ceil(8))
}

/// Bytes of a row of `cols` values (a multiple of 16), `None` on overflow.
pub fn row_bytes(bits: u32, cols: usize) -> Option<usize> {
    let tail = match (cols % SUPER) / GROUP {
        0 => 0,
        ng => block_bytes(bits, ng),
    };
    (cols / SUPER).checked_mul(block_bytes(bits, GROUPS))?.checked_add(tail)
}

/// The super-blocks of a row: `(values, bytes)` ranges of each, in order.
pub fn super_blocks(bits: u32, cols: usize) -> impl Iterator<Item = (std::ops::Range<usize>, std::ops::Range<usize>)> {
    let full = block_bytes(bits, GROUPS);
    (0..cols.div_ceil(SUPER)).map(move |i| {
        let n = (cols - i * SUPER).min(SUPER);
        (i * SUPER..i * SUPER + n, i * full..i * full + block_bytes(bits, n / GROUP))
    })
}

/// The scale grid of one super-block, shared by the reference and SIMD quantizers: each
/// group's range low end, and `d`, `m` as stored (f16 bits) and as f32.
#[derive(Debug, Clone, Copy)]
pub struct BlockGrid {
    /// `min(x_min, 0)` of each group (the first `n_g` are set).
    pub lows: [f32; GROUPS],
    /// f16 bits of `d`.
    pub dh: u16,
    /// f16 bits of `m`.
    pub mh: u16,
    /// `d` as f32.
    pub d: f32,
    /// `m` as f32.
    pub m: f32,
}

/// The grid of the super-block `xs` (16 n_g values) for `maxq = 2^bits − 1`.
pub fn block_grid(xs: &[f32], maxq: f32) -> BlockGrid {
    let ng = xs.len() / GROUP;
    let mut ideal = [0f32; GROUPS];
    let mut lows = [0f32; GROUPS];
    for (g, gx) in xs.chunks_exact(GROUP).enumerate() {
        let (lo, hi) = data_range(gx);
        (lows[g], ideal[g]) = (lo, ideal_scale(lo, hi, maxq));
    }
    let (dh, mh) = grid(&ideal[..ng]);
    BlockGrid { lows, dh, mh, d: f16::from_bits(dh).to_f32(), m: f16::from_bits(mh).to_f32() }
}

/// Write a super-block's header: `d`, `m`, the `n_g` scale codes `ks` and zeros `zs` of
/// `bits` bits; returns the offset of its value codes.
pub fn write_header(bits: u32, g: &BlockGrid, ks: &[u8], zs: &[u8], dst: &mut [u8]) -> usize {
    let (sc, zo, co) = offsets(bits, ks.len());
    dst[0..2].copy_from_slice(&g.dh.to_le_bytes());
    dst[2..4].copy_from_slice(&g.mh.to_le_bytes());
    pack::pack_codes(SCALE_BITS, ks, &mut dst[sc..zo]);
    pack::pack_codes(bits, zs, &mut dst[zo..co]);
    co
}

/// The grid `(d, m)` of a super-block whose groups have ideal scales `ideal` (f16 bits each).
fn grid(ideal: &[f32]) -> (u16, u16) {
    let (mut lo, mut hi) = (f32::INFINITY, 0f32);
    for &s in ideal.iter().filter(|&&s| s > 0.0) {
        lo = lo.min(s);
        hi = hi.max(s);
    }
    if hi == 0.0 {
        return (0, 0);
    }
    let m = f16::from_f32(lo);
    let d = crate::blocks::affine::f16_scale((hi - m.to_f32()) / (SCALE_CODES - 1) as f32);
    (d.to_bits(), m.to_bits())
}

/// `s = m + d · k` in f32 (the decoder's operations).
#[inline(always)]
pub fn scale_of(d: f32, m: f32, k: u32) -> f32 {
    m + d * k as f32
}

/// The ideal scale `(hi − lo) / maxq` of a group with range `[lo, hi]`.
#[inline(always)]
pub fn ideal_scale(lo: f32, hi: f32, maxq: f32) -> f32 {
    (hi - lo) / maxq
}

/// The candidates of one group, in search order: scale `s`, divisor (`s`, or 1 where `s = 0`)
/// and zero point as f32 for candidate `i = 3 k + t`, `t` indexing `z0, z0 − 1, z0 + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Candidates {
    /// Scales.
    pub scale: [f32; CANDIDATES],
    /// Divisors of the codes.
    pub div: [f32; CANDIDATES],
    /// Zero points.
    pub zero: [f32; CANDIDATES],
}

/// The candidates of a group with range low end `lo` (<= 0) on the grid `(d, m)`.
#[inline(always)]
pub fn candidates(d: f32, m: f32, lo: f32, maxq: f32) -> Candidates {
    let mut c = Candidates { scale: [0.0; CANDIDATES], div: [1.0; CANDIDATES], zero: [0.0; CANDIDATES] };
    let clamp = |z: f32| {
        if z < 0.0 {
            0.0
        } else if z > maxq {
            maxq
        } else {
            z
        }
    };
    for k in 0..SCALE_CODES {
        let s = scale_of(d, m, k as u32);
        let div = if s == 0.0 { 1.0 } else { s };
        let z0 = clamp((-lo / div).round_ties_even());
        for (t, z) in [z0, clamp(z0 - 1.0), clamp(z0 + 1.0)].into_iter().enumerate() {
            let i = ZERO_TRIES * k + t;
            (c.scale[i], c.div[i], c.zero[i]) = (s, div, z);
        }
    }
    c
}

/// The code of `x`: `clamp(round_even(x / div) + zero, 0, maxq)` in f32.
#[inline(always)]
pub fn code_of(x: f32, div: f32, zero: f32, maxq: f32) -> f32 {
    let q = (x / div).round_ties_even() + zero;
    let q = if q < 0.0 { 0.0 } else { q };
    if q > maxq {
        maxq
    } else {
        q
    }
}

/// Index of the smallest error, the first on ties.
#[inline(always)]
pub fn pick(errors: &[f32]) -> usize {
    let mut best = 0;
    for (i, &e) in errors.iter().enumerate().skip(1) {
        if e < errors[best] {
            best = i;
        }
    }
    best
}

/// Quantize one super-block: `xs` (16 n_g values), `ws` their weights (or `None`), into `dst`
/// (`block_bytes(bits, n_g)` bytes, all written).
fn quantize_block_ref(bits: u32, xs: &[f32], ws: Option<&[f32]>, dst: &mut [u8]) {
    let ng = xs.len() / GROUP;
    let maxq = ((1u32 << bits) - 1) as f32;
    let grid = block_grid(xs, maxq);
    let mut ks = [0u8; GROUPS];
    let mut zs = [0u8; GROUPS];
    let mut codes = [0u8; SUPER];
    for (g, gx) in xs.chunks_exact(GROUP).enumerate() {
        let c = candidates(grid.d, grid.m, grid.lows[g], maxq);
        let mut errors = [0f32; CANDIDATES];
        for (i, e) in errors.iter_mut().enumerate() {
            for (j, &x) in gx.iter().enumerate() {
                let w = ws.map_or(1.0, |w| w[g * GROUP + j]);
                let r = c.scale[i] * (code_of(x, c.div[i], c.zero[i], maxq) - c.zero[i]) - x;
                *e += w * (r * r);
            }
        }
        let best = pick(&errors);
        ks[g] = (best / ZERO_TRIES) as u8;
        zs[g] = c.zero[best] as u8;
        for (q, &x) in codes[g * GROUP..(g + 1) * GROUP].iter_mut().zip(gx) {
            *q = code_of(x, c.div[best], c.zero[best], maxq) as u8;
        }
    }
    let co = write_header(bits, &grid, &ks[..ng], &zs[..ng], dst);
    pack::pack_codes(bits, &codes[..GROUP * ng], &mut dst[co..]);
}

/// Quantize one row `x` (length a multiple of 16) of `bits`-bit values into `dst`
/// (`row_bytes(bits, x.len())` bytes, all written), the squared errors weighted by
/// `importance` (`x.len()` finite weights >= 0) if given.
pub fn quantize_row_ref(bits: u32, x: &[f32], dst: &mut [u8], importance: Option<&[f32]>) {
    for (vals, bytes) in super_blocks(bits, x.len()) {
        let ws = importance.map(|w| &w[vals.clone()]);
        quantize_block_ref(bits, &x[vals], ws, &mut dst[bytes]);
    }
}

/// Dequantize one row: `src` is `row_bytes(bits, y.len())` bytes, `y` receives the values.
/// Any bytes decode without panicking (a NaN/Inf f16 gives NaN/Inf values).
pub fn dequantize_row_ref(bits: u32, src: &[u8], y: &mut [f32]) {
    for (vals, bytes) in super_blocks(bits, y.len()) {
        let (b, ys) = (&src[bytes], &mut y[vals]);
        let ng = ys.len() / GROUP;
        let (sc, zo, co) = offsets(bits, ng);
        let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        let m = f16::from_bits(u16::from_le_bytes([b[2], b[3]])).to_f32();
        let mut ks = [0u8; GROUPS];
        let mut zs = [0u8; GROUPS];
        let mut codes = [0u8; SUPER];
        pack::unpack_codes(SCALE_BITS, &b[sc..zo], &mut ks[..ng]);
        pack::unpack_codes(bits, &b[zo..co], &mut zs[..ng]);
        pack::unpack_codes(bits, &b[co..], &mut codes[..GROUP * ng]);
        for (g, yg) in ys.chunks_exact_mut(GROUP).enumerate() {
            let s = scale_of(d, m, u32::from(ks[g]));
            let z = i32::from(zs[g]);
            for (v, &c) in yg.iter_mut().zip(&codes[g * GROUP..]) {
                *v = s * (i32::from(c) - z) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Sum of uniforms: roughly Gaussian, with a few large values.
            let u = (0..4).map(|i| ((s >> (16 * i)) & 0xFFFF) as f32 / 65536.0 - 0.5).sum::<f32>();
            u * u * u * 8.0 + u
        }
    }

    #[test]
    fn block_sizes() {
        assert_eq!([2, 3, 4].map(|b| block_bytes(b, 16)), [78, 112, 146]);
        // 16 groups: 6 bytes of 3-bit scale codes, 6 of int3 zeros, 96 of codes.
        assert_eq!(offsets(3, 16), (4, 10, 16));
        assert_eq!(row_bytes(3, 576), Some(2 * 112 + block_bytes(3, 4)));
        assert_eq!(block_bytes(3, 4), 4 + 2 + 2 + 24);
        assert_eq!(row_bytes(4, 16), Some(4 + 1 + 1 + 8));
    }

    /// The grid's top scale is at least every group's ideal scale, and at that scale every
    /// value of the group is within half a step of a code; the search keeps a candidate at
    /// least as good, so each group's squared error is at most 16 · (top / 2)².
    #[test]
    fn group_error_is_bounded_by_the_top_of_the_grid() {
        for bits in [2, 3, 4] {
            let mut r = rng(u64::from(bits));
            let x: Vec<f32> = (0..576).map(|_| r()).collect();
            let mut q = vec![0u8; row_bytes(bits, x.len()).unwrap()];
            quantize_row_ref(bits, &x, &mut q, None);
            let mut y = vec![0f32; x.len()];
            dequantize_row_ref(bits, &q, &mut y);
            for (vals, bytes) in super_blocks(bits, x.len()) {
                let b = &q[bytes];
                let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                let m = f16::from_bits(u16::from_le_bytes([b[2], b[3]])).to_f32();
                let top = f64::from(scale_of(d, m, 7));
                for g in vals.step_by(GROUP) {
                    let err: f64 = (g..g + GROUP).map(|i| f64::from(y[i] - x[i]).powi(2)).sum();
                    assert!(err <= 16.0 * (top / 2.0).powi(2) * (1.0 + 1e-4), "bits {bits} group at {g}: {err}");
                }
            }
        }
    }

    #[test]
    fn zeros_and_max_abs_stay_finite() {
        for (bits, q) in [
            (2, crate::qtype::QType::Int2G16DQ),
            (3, crate::qtype::QType::Int3G16DQ),
            (4, crate::qtype::QType::Int4G16DQ),
        ] {
            let max = q.info().max_abs;
            let mut x = vec![0f32; 272];
            x[3] = max;
            x[5] = -max;
            x[40] = 1e-30;
            x[257] = -max;
            let mut b = vec![0u8; row_bytes(bits, x.len()).unwrap()];
            quantize_row_ref(bits, &x, &mut b, None);
            let mut y = vec![1f32; x.len()];
            dequantize_row_ref(bits, &b, &mut y);
            assert!(y.iter().all(|v| v.is_finite()), "bits {bits}");
            for i in (16..32).chain(48..256) {
                assert_eq!(y[i].to_bits(), 0, "bits {bits}: zero group value {i} is {}", y[i]);
            }
            assert!((y[3] - max).abs() <= max / 2.0 && (y[5] + max).abs() <= max / 2.0);
        }
    }
}
