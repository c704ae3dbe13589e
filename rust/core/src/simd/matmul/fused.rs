//! Fused AVX2 GEMV kernels: weight bytes decoded in registers and multiplied with the quantized
//! activation row at once, with no decoded row in memory. They serve few activation rows
//! ([`super::dot_fused`]) for the legacy types, the k-quants and their ragged types, and
//! group-affine int4; the decode-then-dot path ([`super::decode_row`], [`super::dot_q8_x4`])
//! serves larger batches and the other types, and is their specification:
//!
//! * **Same bits.** The kernels do that path's arithmetic in its order, so the results are the
//!   same bits and a token's outputs do not depend on the batch it is in: four weight rows share
//!   every activation load; per 32 values each row gives 8 exact i32 lane sums of 4 products;
//!   the scales are `(weight scale) · (activation step)` rounded as the decoder and the dot
//!   round them, and the lane sums are added in order by FMA into one accumulator per row. The
//!   min terms (q4_1, q5_1, q2_k, q4_k, q5_k) are written as the decoder writes them, for the
//!   caller's f32 dot. A ragged row's tail continues in the same accumulators, unit by unit
//!   (in the decode path the tail's 32-value chunks follow the full super-blocks the same way;
//!   sub-blocks past the row have scale 0 there and any scale here, times products that are 0
//!   because the activation is zero-padded, which adds +0 or −0 to an accumulator that starts
//!   at +0 and so is never −0: the same bits).
//! * **Unsigned codes.** Codes that are unsigned in the block (all but q8_0's) go into
//!   `vpmaddubsw` as they are, and their offset (8 for q4_0, 16 for q5_0, 4 for q3_k, 32 for
//!   q6_k, the group's zero for int4) is taken off the integer lane sums with the activation's
//!   own (`zero · Σ x`), which is exact.
//! * **Prefetch.** The next four rows are prefetched while these are multiplied ([`prefetch`]).
//! * **One function per kernel** (`#[inline(never)]`, called once per four rows): inlined into
//!   one dispatcher they shared its register allocation, and q4_0 ran 15–20 % slower.
//!
//! Only reached through [`super::dot_fused`], which checks the CPU and every length.

use std::arch::x86_64::*;

use super::x86::bit_bytes;
use super::ActRow;
use crate::blocks::kquants::{layout, QK_K};
use crate::qtype::AffineSpec;
use crate::simd::avx2::hsum256;

/// Bytes of a q8_0 block.
const Q8_0_BYTES: usize = 34;
/// Rows per kernel call.
const R: usize = 4;

#[inline(always)]
unsafe fn load256(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes at `p`.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

#[inline(always)]
unsafe fn load128(p: *const u8) -> __m128i {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    unsafe { _mm_loadu_si128(p.cast()) }
}

/// Prefetch the cache lines of `bytes` bytes from `ahead` bytes past `p` (a hint: never
/// faults, so it may point past the row or the matrix). The kernels prefetch the same bytes of
/// the next [`R`] rows (`ahead` = `R` rows) while they multiply these: the rows are short
/// separate streams that the hardware prefetchers pick up too late (each block's first use, its
/// scale, is a dependent load), while the matrix as a whole is read in order.
#[inline(always)]
fn prefetch(p: *const u8, ahead: usize, bytes: usize) {
    let mut o = 0;
    while o < bytes {
        // SAFETY: a prefetch is a hint that does not access memory architecturally.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead + o).cast()) };
        o += 64;
    }
}

/// The little-endian f16 at `p` as f32 (F16C).
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees 2 readable bytes at `p`; F16C is enabled by the caller.
    unsafe {
        let h = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
    }
}

/// `Σ` of pairs of `u · s` products (u8 × i8) widened to 8 i32 lanes of 4 products each.
#[inline(always)]
unsafe fn usum(u: __m256i, s: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled by the caller.
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)) }
}

/// The activation steps of the 8 blocks of 32 values of a super-block (even lanes of its 16
/// `d16`).
#[inline(always)]
unsafe fn steps8(d16: *const f32) -> __m256 {
    // SAFETY: the caller guarantees 16 readable f32 at `d16`; AVX2 is enabled.
    unsafe {
        let even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        let lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(d16), even);
        let hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(d16.add(8)), even);
        _mm256_permute2f128_ps::<0x20>(lo, hi)
    }
}

/// Lane `j` of `v` in every lane.
#[inline(always)]
unsafe fn lane(v: __m256, j: i32) -> __m256 {
    // SAFETY: AVX2 is enabled by the caller.
    unsafe { _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(j)) }
}

/// Eight bytes (a little-endian u64) as 8 f32 lanes.
#[inline(always)]
unsafe fn u8x8_ps(v: u64) -> __m256 {
    // SAFETY: AVX2 is enabled by the caller.
    unsafe { _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v as i64))) }
}

/// Check that every row holds `bytes` and the activation `values` (with their steps).
fn check(w: &[&[u8]; R], a: &ActRow<'_>, bytes: usize, values: usize) {
    assert!(a.q.len() >= values && a.d16.len() >= values / 16 && a.s16.len() >= values / 16);
    for wr in w {
        assert!(wr.len() >= bytes);
    }
}

/// The 2-bit fields of a ragged tail unit (value `j` at bits `2 (j / 8)` of byte `j % 8` of
/// the little-endian `q`) as 32 bytes in value order: the unit's 8 bytes in each 64-bit lane
/// `g`, shifted right by `2g`, masked.
#[inline(always)]
unsafe fn two_bit_unit(q: u64) -> __m256i {
    // SAFETY: AVX2 is enabled by the caller.
    unsafe {
        let v = _mm256_srlv_epi64(_mm256_set1_epi64x(q as i64), _mm256_setr_epi64x(0, 2, 4, 6));
        _mm256_and_si256(v, _mm256_set1_epi8(3))
    }
}

/// Bit `j` of each byte of `v` moved to bit `to` (`j`, `to` < 8) and masked; 16-bit shifts, so
/// bits brought over from the other byte are dropped by the mask.
#[inline(always)]
unsafe fn bit_to(v: __m256i, j: usize, to: usize) -> __m256i {
    // SAFETY: AVX2 is enabled by the caller.
    unsafe {
        let moved = match to as i32 - j as i32 {
            7 => _mm256_slli_epi16::<7>(v),
            6 => _mm256_slli_epi16::<6>(v),
            5 => _mm256_slli_epi16::<5>(v),
            4 => _mm256_slli_epi16::<4>(v),
            3 => _mm256_slli_epi16::<3>(v),
            2 => _mm256_slli_epi16::<2>(v),
            1 => _mm256_slli_epi16::<1>(v),
            0 => v,
            -1 => _mm256_srli_epi16::<1>(v),
            -2 => _mm256_srli_epi16::<2>(v),
            -3 => _mm256_srli_epi16::<3>(v),
            -4 => _mm256_srli_epi16::<4>(v),
            -5 => _mm256_srli_epi16::<5>(v),
            -6 => _mm256_srli_epi16::<6>(v),
            _ => _mm256_srli_epi16::<7>(v),
        };
        _mm256_and_si256(moved, _mm256_set1_epi8(1 << to))
    }
}

/// The 2-bit field at bits `2s` of each byte of `v`.
#[inline(always)]
unsafe fn two_bits(v: __m256i, s: usize) -> __m256i {
    // SAFETY: AVX2 is enabled by the caller.
    unsafe {
        let moved = match s {
            0 => v,
            1 => _mm256_srli_epi16::<2>(v),
            2 => _mm256_srli_epi16::<4>(v),
            _ => _mm256_srli_epi16::<6>(v),
        };
        _mm256_and_si256(moved, _mm256_set1_epi8(3))
    }
}

/// The sixteen 6-bit scales of a q3_k super-block (offset 32 removed) as i8 bytes.
#[inline(always)]
fn scales_q3k(s: &[u8; 12]) -> [u32; 4] {
    let u = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (a, b, c) = (u(0), u(4), u(8));
    let (lo4, lo2) = (0x0F0F_0F0F, 0x0303_0303);
    let words = [
        (a & lo4) | (c & lo2) << 4,
        (b & lo4) | ((c >> 2) & lo2) << 4,
        ((a >> 4) & lo4) | ((c >> 4) & lo2) << 4,
        ((b >> 4) & lo4) | ((c >> 6) & lo2) << 4,
    ];
    // Bytes 0..64 minus 32, without borrows between bytes: (v | 0x80) − 32, then flip bit 7.
    words.map(|w| ((w | 0x8080_8080) - 0x2020_2020) ^ 0x8080_8080)
}

/// Per-16 scales × steps of a super-block from its 16 scales as f32 (`lo`: sub-blocks 0–7,
/// `hi`: 8–15) times `d`: `(d · scale) · step`, as the decoder's scale times the dot's step.
#[inline(always)]
unsafe fn scales16(lo: __m256, hi: __m256, d: f32, d16: *const f32) -> [__m256; 2] {
    // SAFETY: AVX is enabled by the caller, who guarantees 16 readable f32 at `d16`.
    unsafe {
        let d = _mm256_set1_ps(d);
        [
            _mm256_mul_ps(_mm256_mul_ps(lo, d), _mm256_loadu_ps(d16)),
            _mm256_mul_ps(_mm256_mul_ps(hi, d), _mm256_loadu_ps(d16.add(8))),
        ]
    }
}

/// Lanes 0–3 take sub-block `2u`'s value of `v`, lanes 4–7 sub-block `2u + 1`'s (`u` < 4): the
/// scale of each half of a 32-value chunk.
#[inline(always)]
unsafe fn pair(v: __m256, u: usize) -> __m256 {
    // SAFETY: AVX2 is enabled by the caller.
    unsafe {
        let u = u as i32;
        _mm256_permutevar8x32_ps(
            v,
            _mm256_setr_epi32(2 * u, 2 * u, 2 * u, 2 * u, 2 * u + 1, 2 * u + 1, 2 * u + 1, 2 * u + 1),
        )
    }
}

/// q2_k (`THREE` false) or q3_k (`THREE` true) over `nsb` super-blocks: accumulators per row;
/// q2_k's mins (`−dmin · m` per 16 values, as the decoder writes them) go to `mw[r · nsub..]`.
/// Codes are unsigned in the block (q3_k's offset 4 is taken off the integer sums).
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
fn q23_k<const THREE: bool>(
    w: [&[u8]; R],
    a: ActRow<'_>,
    nsb: usize,
    ahead: usize,
    mw: &mut [f32],
    nsub: usize,
) -> [__m256; R] {
    let (bytes, qs) = if THREE { (layout::q3k::BYTES, layout::q3k::QS) } else { (layout::q2k::BYTES, layout::q2k::QS) };
    check(&w, &a, nsb * bytes, nsb * QK_K);
    assert!(THREE || (nsub >= 16 * nsb && mw.len() >= (R - 1) * nsub + 16 * nsb));
    let mut acc = [_mm256_setzero_ps(); R];
    let four = _mm256_set1_epi8(4);
    for sb in 0..nsb {
        // SAFETY: every access of this loop body is in bounds: super-block `sb` lies inside every
        // row, the activation and each row's part of `mw` (checked above).
        unsafe {
            let d16 = a.d16.as_ptr().add(16 * sb);
            let xq = a.q.as_ptr().add(QK_K * sb).cast::<u8>();
            // q3_k: 4 · (lane sums of x) per 32 values, the codes' offset, shared by the rows.
            let mut off = [_mm256_setzero_si256(); 8];
            if THREE {
                for (t, o) in off.iter_mut().enumerate() {
                    *o = usum(four, load256(xq.add(32 * t)));
                }
            }
            for r in 0..R {
                let blk = w[r].as_ptr().add(bytes * sb);
                prefetch(blk, ahead, bytes);
                let scv = if THREE {
                    let words = scales_q3k(&*blk.add(layout::q3k::SCALES).cast::<[u8; 12]>());
                    let sc = _mm_setr_epi32(words[0] as i32, words[1] as i32, words[2] as i32, words[3] as i32);
                    let (lo, hi) = (_mm256_cvtepi8_epi32(sc), _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(sc)));
                    scales16(_mm256_cvtepi32_ps(lo), _mm256_cvtepi32_ps(hi), f16_at(blk.add(layout::q3k::D)), d16)
                } else {
                    use layout::q2k::{D, DMIN, SCALES};
                    let sc = load128(blk.add(SCALES));
                    let m4 = _mm_set1_epi8(0x0F);
                    let (s, m) = (_mm_and_si128(sc, m4), _mm_and_si128(_mm_srli_epi16::<4>(sc), m4));
                    let f = |v: __m128i| {
                        [
                            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)),
                            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(v))),
                        ]
                    };
                    // −(dmin · m), negated by the sign bit as the decoder's `-`.
                    let (dmin, neg) = (_mm256_set1_ps(f16_at(blk.add(DMIN))), _mm256_set1_ps(-0.0));
                    let out = mw.as_mut_ptr().add(r * nsub + 16 * sb);
                    for (h, mv) in f(m).into_iter().enumerate() {
                        _mm256_storeu_ps(out.add(8 * h), _mm256_xor_ps(_mm256_mul_ps(mv, dmin), neg));
                    }
                    let [lo, hi] = f(s);
                    scales16(lo, hi, f16_at(blk.add(D)), d16)
                };
                let hm = if THREE { load256(blk.add(layout::q3k::HMASK)) } else { _mm256_setzero_si256() };
                for (h, &scv_h) in scv.iter().enumerate() {
                    let q = load256(blk.add(qs + 32 * h));
                    for s in 0..4 {
                        let t = 4 * h + s;
                        let mut c = two_bits(q, s);
                        if THREE {
                            c = _mm256_or_si256(c, bit_to(hm, t, 2));
                        }
                        let mut p = usum(c, load256(xq.add(32 * t)));
                        if THREE {
                            p = _mm256_sub_epi32(p, off[t]);
                        }
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), pair(scv_h, s), acc[r]);
                    }
                }
            }
        }
    }
    acc
}

/// The tail of four ragged q2_kr (`THREE` false) or q3_kr rows (layout in
/// [`crate::blocks::kquants::ragged`]): its `real` values after `nsb` super-blocks, continuing
/// `acc` unit by unit; q2_kr's mins written as the tail decoder writes them (0 past `real`).
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
fn q23_k_tail<const THREE: bool>(
    w: [&[u8]; R],
    a: ActRow<'_>,
    nsb: usize,
    real: usize,
    ahead: usize,
    mw: &mut [f32],
    nsub: usize,
    mut acc: [__m256; R],
) -> [__m256; R] {
    let u = real.div_ceil(32);
    let (at, v0) = (nsb * if THREE { layout::q3k::BYTES } else { layout::q2k::BYTES }, nsb * QK_K);
    // q2: scales[2u], qs[8u], d, dmin. q3: hmask[4u], qs[8u], scales[2u], d.
    let (tb, qs, scales, d_at) =
        if THREE { (14 * u + 2, 4 * u, 12 * u, 14 * u) } else { (10 * u + 4, 2 * u, 0, 10 * u) };
    check(&w, &a, at + tb, v0 + 32 * u);
    let (s0, live) = (v0 / 16, real.div_ceil(16));
    assert!(THREE || (nsub >= s0 + 2 * u && mw.len() >= (R - 1) * nsub + s0 + 2 * u));
    let four = _mm256_set1_epi8(4);
    for r in 0..R {
        // SAFETY: every access of this loop body is in bounds: the tail lies inside every row,
        // its units inside the activation and each row's part of `mw` (checked above).
        unsafe {
            let t = w[r].as_ptr().add(at);
            prefetch(t, ahead, tb);
            let d = f16_at(t.add(d_at));
            let dmin = if THREE { 0.0 } else { f16_at(t.add(d_at + 2)) };
            for k in 0..u {
                let mut c = two_bit_unit(t.add(qs + 8 * k).cast::<u64>().read_unaligned().to_le());
                let x = load256(a.q.as_ptr().add(v0 + 32 * k).cast());
                let p = if THREE {
                    c = _mm256_or_si256(c, bit_bytes(t.add(4 * k).cast::<u32>().read_unaligned().to_le(), 4));
                    _mm256_sub_epi32(usum(c, x), usum(four, x))
                } else {
                    usum(c, x)
                };
                let dx = *a.d16.get_unchecked(s0 + 2 * k);
                let sc = |h: usize| {
                    let b = *t.add(scales + 2 * k + h);
                    let v = if THREE { (i32::from(b & 63) - 32) as f32 } else { f32::from(b & 0xF) };
                    (d * v) * dx
                };
                let s = _mm256_set_m128(_mm_set1_ps(sc(1)), _mm_set1_ps(sc(0)));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[r]);
                if !THREE {
                    for h in 2 * k..2 * k + 2 {
                        let mv = -(dmin * f32::from(*t.add(h) >> 4));
                        *mw.get_unchecked_mut(r * nsub + s0 + h) = if h < live { mv } else { 0.0 };
                    }
                }
            }
        }
    }
    acc
}

/// The 4- and 5-bit legacy types over `nb` blocks of 32 (the layout as const parameters, from
/// [`Spec`]: block bytes, offset of the codes, offset of the fifth bits (0: none), whether a min
/// follows `d`, the zero code): accumulators per row; the mins of q4_1 and q5_1 (`m` per 16
/// values, as the decoder writes them) go to `mw[r · nsub..]`.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
fn legacy<const BB: usize, const OFF_QS: usize, const OFF_QH: usize, const MIN: bool, const ZERO: i8>(
    w: [&[u8]; R],
    a: ActRow<'_>,
    nb: usize,
    ahead: usize,
    mw: &mut [f32],
    nsub: usize,
) -> [__m256; R] {
    check(&w, &a, nb * BB, nb * 32);
    assert!(!MIN || (nsub >= 2 * nb && mw.len() >= (R - 1) * nsub + 2 * nb));
    let m4 = _mm256_set1_epi8(0x0F);
    let zero = _mm256_set1_epi8(ZERO);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        // SAFETY: every access of this loop body is in bounds: block `b` lies inside every row,
        // the activation and each row's part of `mw` (checked above).
        unsafe {
            let x = load256(a.q.as_ptr().add(32 * b).cast());
            let dx = *a.d16.get_unchecked(2 * b);
            // zero · (lane sums of x): the codes' offset, taken off the unsigned products.
            let off = usum(zero, x);
            for r in 0..R {
                let blk = w[r].as_ptr().add(BB * b);
                if b % 4 == 0 {
                    prefetch(blk, ahead, 4 * BB);
                }
                let raw = load128(blk.add(OFF_QS));
                let mut c = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw), m4);
                if OFF_QH > 0 {
                    c = _mm256_or_si256(c, bit_bytes(blk.add(OFF_QH).cast::<u32>().read_unaligned().to_le(), 16));
                }
                let p = _mm256_sub_epi32(usum(c, x), off);
                let s = _mm256_set1_ps(f16_at(blk) * dx);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[r]);
                if MIN {
                    let m = f16_at(blk.add(2));
                    let out = mw.as_mut_ptr().add(r * nsub + 2 * b);
                    *out = m;
                    *out.add(1) = m;
                }
            }
        }
    }
    acc
}

/// q8_0 over `nb` blocks of 32: accumulators per row.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0(w: [&[u8]; R], a: ActRow<'_>, nb: usize, ahead: usize) -> [__m256; R] {
    check(&w, &a, nb * Q8_0_BYTES, nb * 32);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        // SAFETY: every access of this loop body is in bounds: block `b` lies inside every row and the
        // activation (checked above).
        unsafe {
            let x = load256(a.q.as_ptr().add(32 * b).cast());
            let dx = *a.d16.get_unchecked(2 * b);
            for r in 0..R {
                let blk = w[r].as_ptr().add(Q8_0_BYTES * b);
                if b % 4 == 0 {
                    prefetch(blk, ahead, 4 * Q8_0_BYTES);
                }
                let c = load256(blk.add(2));
                let p = usum(_mm256_sign_epi8(c, c), _mm256_sign_epi8(x, c));
                let s = _mm256_set1_ps(f16_at(blk) * dx);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[r]);
            }
        }
    }
    acc
}

/// The eight 6-bit scales and eight 6-bit mins of a q4_k/q5_k super-block (`get_scale_min_k4`
/// packing) as two little-endian u64 of bytes.
#[inline(always)]
fn scales_mins_k4(s: &[u8; 12]) -> (u64, u64) {
    let u = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (a, b, c) = (u(0), u(4), u(8));
    let sc_hi = (c & 0x0F0F_0F0F) | ((a >> 6) & 0x0303_0303) << 4;
    let m_hi = ((c >> 4) & 0x0F0F_0F0F) | ((b >> 6) & 0x0303_0303) << 4;
    let sc = u64::from(a & 0x3F3F_3F3F) | u64::from(sc_hi) << 32;
    let m = u64::from(b & 0x3F3F_3F3F) | u64::from(m_hi) << 32;
    (sc, m)
}

/// The fifth bit of q5 codes at bit `j` of each byte of `qh`, moved to bit 4 (16 or 0).
#[inline(always)]
unsafe fn fifth(qh: __m256i, j: usize) -> __m256i {
    // SAFETY: AVX2 is enabled by the caller. The 16-bit shifts bring bits over from the other
    // byte only outside bit 4, which is all that is kept.
    unsafe {
        let v = match j {
            0 => _mm256_slli_epi16::<4>(qh),
            1 => _mm256_slli_epi16::<3>(qh),
            2 => _mm256_slli_epi16::<2>(qh),
            3 => _mm256_slli_epi16::<1>(qh),
            4 => qh,
            5 => _mm256_srli_epi16::<1>(qh),
            6 => _mm256_srli_epi16::<2>(qh),
            _ => _mm256_srli_epi16::<3>(qh),
        };
        _mm256_and_si256(v, _mm256_set1_epi8(0x10))
    }
}

/// q4_k (`FIVE` false) or q5_k (`FIVE` true) over `nsb` super-blocks: accumulators per row;
/// row `r`'s mins (`−dmin · m` per 16 values, as the decoder writes them) go to
/// `mw[r · nsub..]`.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
fn q45_k<const FIVE: bool>(
    w: [&[u8]; R],
    a: ActRow<'_>,
    nsb: usize,
    ahead: usize,
    mw: &mut [f32],
    nsub: usize,
) -> [__m256; R] {
    use layout::q4k::{D, DMIN, SCALES};
    let (bytes, qs) = if FIVE { (layout::q5k::BYTES, layout::q5k::QS) } else { (layout::q4k::BYTES, layout::q4k::QS) };
    check(&w, &a, nsb * bytes, nsb * QK_K);
    assert!(nsub >= 16 * nsb && mw.len() >= (R - 1) * nsub + 16 * nsb);
    let m4 = _mm256_set1_epi8(0x0F);
    let (dup_lo, dup_hi) = (_mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7));
    let mut acc = [_mm256_setzero_ps(); R];
    for sb in 0..nsb {
        // SAFETY: every access of this loop body is in bounds: super-block `sb` lies inside every
        // row, the activation and each row's part of `mw` (checked above).
        unsafe {
            let dx = steps8(a.d16.as_ptr().add(16 * sb));
            let xq = a.q.as_ptr().add(QK_K * sb).cast::<u8>();
            for r in 0..R {
                let blk = w[r].as_ptr().add(bytes * sb);
                prefetch(blk, ahead, bytes);
                let (sc, m) = scales_mins_k4(&*blk.add(SCALES).cast::<[u8; 12]>());
                // (d · scale) · step, as the decoder's scale times the dot's step.
                let scv = _mm256_mul_ps(_mm256_mul_ps(u8x8_ps(sc), _mm256_set1_ps(f16_at(blk.add(D)))), dx);
                // −(dmin · m), negated by the sign bit as the decoder's `-` (−0 for m = 0).
                let neg = _mm256_xor_ps(
                    _mm256_mul_ps(u8x8_ps(m), _mm256_set1_ps(f16_at(blk.add(DMIN)))),
                    _mm256_set1_ps(-0.0),
                );
                let out = mw.as_mut_ptr().add(r * nsub + 16 * sb);
                _mm256_storeu_ps(out, _mm256_permutevar8x32_ps(neg, dup_lo));
                _mm256_storeu_ps(out.add(8), _mm256_permutevar8x32_ps(neg, dup_hi));
                let qh = if FIVE { load256(blk.add(layout::q5k::QH)) } else { _mm256_setzero_si256() };
                for p in 0..4 {
                    let raw = load256(blk.add(qs + 32 * p));
                    let mut lo = _mm256_and_si256(raw, m4);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4);
                    if FIVE {
                        lo = _mm256_or_si256(lo, fifth(qh, 2 * p));
                        hi = _mm256_or_si256(hi, fifth(qh, 2 * p + 1));
                    }
                    let (p0, p1) = (usum(lo, load256(xq.add(64 * p))), usum(hi, load256(xq.add(64 * p + 32))));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), lane(scv, 2 * p as i32), acc[r]);
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), lane(scv, 2 * p as i32 + 1), acc[r]);
                }
            }
        }
    }
    acc
}

/// q6_k over `nsb` super-blocks: accumulators per row.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k(w: [&[u8]; R], a: ActRow<'_>, nsb: usize, ahead: usize) -> [__m256; R] {
    use layout::q6k::{BYTES, D, QH, QL, SCALES};
    check(&w, &a, nsb * BYTES, nsb * QK_K);
    let m4 = _mm256_set1_epi8(0x0F);
    let thirty_two = _mm256_set1_epi8(32);
    let mut acc = [_mm256_setzero_ps(); R];
    for sb in 0..nsb {
        // SAFETY: every access of this loop body is in bounds: super-block `sb` lies inside every
        // row and the activation (checked above).
        unsafe {
            let d16 = a.d16.as_ptr().add(16 * sb);
            let xq = a.q.as_ptr().add(QK_K * sb).cast::<u8>();
            // 32 · (lane sums of x) per 32 values: the codes' offset, shared by the rows.
            let mut off = [_mm256_setzero_si256(); 8];
            for (t, o) in off.iter_mut().enumerate() {
                *o = usum(thirty_two, load256(xq.add(32 * t)));
            }
            for r in 0..R {
                let blk = w[r].as_ptr().add(BYTES * sb);
                prefetch(blk, ahead, BYTES);
                let sc = load128(blk.add(SCALES));
                let (lo, hi) = (_mm256_cvtepi8_epi32(sc), _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(sc)));
                let scv = scales16(_mm256_cvtepi32_ps(lo), _mm256_cvtepi32_ps(hi), f16_at(blk.add(D)), d16);
                for (h, &scv_h) in scv.iter().enumerate() {
                    let qh = load256(blk.add(QH + 32 * h));
                    let ql = [load256(blk.add(QL + 64 * h)), load256(blk.add(QL + 64 * h + 32))];
                    for c in 0..4 {
                        let t = 4 * h + c;
                        let lo = if c < 2 { ql[c] } else { _mm256_srli_epi16::<4>(ql[c - 2]) };
                        // Bits 2c, 2c + 1 of each qh byte to bits 4, 5.
                        let hi = _mm256_or_si256(bit_to(qh, 2 * c, 4), bit_to(qh, 2 * c + 1, 5));
                        let code = _mm256_or_si256(_mm256_and_si256(lo, m4), hi);
                        let p = _mm256_sub_epi32(usum(code, load256(xq.add(32 * t))), off[t]);
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), pair(scv_h, c), acc[r]);
                    }
                }
            }
        }
    }
    acc
}

/// Group-affine int4 (`spec`, rows of `cols` values, a multiple of 32, as every group but the
/// last): accumulators per row. Codes are stored in stream order (low nibble first), then one
/// f16 scale per group, then the 4-bit zeros (asymmetric; symmetric: 8); `w = d · (c − z)`.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
fn int4(spec: AffineSpec, w: [&[u8]; R], a: ActRow<'_>, cols: usize, ahead: usize) -> [__m256; R] {
    let (g, ngroups) = (spec.group_cols(cols), spec.groups(cols));
    let (scale_off, zero_off) = (cols / 2, cols / 2 + 2 * ngroups);
    let row_bytes = zero_off + if spec.symmetric { 0 } else { ngroups.div_ceil(2) };
    check(&w, &a, row_bytes, cols);
    assert!(cols.is_multiple_of(32) && g.is_multiple_of(32));
    let (lo4, hi4) = (_mm256_set1_epi16(0x000F), _mm256_set1_epi16(0x0F00));
    let mut acc = [_mm256_setzero_ps(); R];
    // The current group's zero (as a byte vector) and scale, per row.
    let (mut zero, mut d) = ([_mm256_set1_epi8(8); R], [0f32; R]);
    // Blocks per group, and the first block of the next group (no division per block).
    let (per_group, mut next) = (g / 32, 0);
    for b in 0..cols / 32 {
        // SAFETY: every access of this loop body is in bounds: block `b`, its group's scale
        // and zero lie inside every row, the block inside the activation (checked above).
        unsafe {
            if b == next {
                let gi = b / per_group;
                next += per_group;
                for r in 0..R {
                    let row = w[r].as_ptr();
                    if b == 0 {
                        prefetch(row.add(scale_off), ahead, row_bytes - scale_off);
                    }
                    d[r] = f16_at(row.add(scale_off + 2 * gi));
                    if !spec.symmetric {
                        let z = (*row.add(zero_off + gi / 2) >> (4 * (gi % 2))) & 0x0F;
                        zero[r] = _mm256_set1_epi8(z as i8);
                    }
                }
            }
            let x = load256(a.q.as_ptr().add(32 * b).cast());
            let dx = *a.d16.get_unchecked(2 * b);
            // The zero's share of the sums, once per block when every row has zero 8.
            let sym_off = usum(_mm256_set1_epi8(8), x);
            for r in 0..R {
                let codes = w[r].as_ptr().add(16 * b);
                if b % 4 == 0 {
                    prefetch(codes, ahead, 64);
                }
                // Byte k to 16-bit lane k, its low nibble in the lane's low byte and its high
                // nibble in the high byte: the 32 codes in stream order.
                let v = _mm256_cvtepu8_epi16(load128(codes));
                let c = _mm256_or_si256(_mm256_and_si256(v, lo4), _mm256_and_si256(_mm256_slli_epi16::<4>(v), hi4));
                let off = if spec.symmetric { sym_off } else { usum(zero[r], x) };
                let p = _mm256_sub_epi32(usum(c, x), off);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d[r] * dx), acc[r]);
            }
        }
    }
    acc
}

/// The tail of four ragged q4_kr (`FIVE` false) or q5_kr rows (layout in
/// [`crate::blocks::kquants::ragged`]): its `real` values after `nsb` super-blocks, continuing
/// `acc` unit by unit (as the decode path's dot continues after the full super-blocks), the mins
/// written as the tail decoder writes them (0 for sub-blocks past `real`).
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
fn q45_k_tail<const FIVE: bool>(
    w: [&[u8]; R],
    a: ActRow<'_>,
    nsb: usize,
    real: usize,
    ahead: usize,
    mw: &mut [f32],
    nsub: usize,
    mut acc: [__m256; R],
) -> [__m256; R] {
    let u = real.div_ceil(32);
    let (at, v0) = (nsb * if FIVE { layout::q5k::BYTES } else { layout::q4k::BYTES }, nsb * QK_K);
    // d, dmin, scales[u], mins[u], (q5: high bits[4u],) codes[16u].
    let (tb, qs) = if FIVE { (22 * u + 4, 4 + 6 * u) } else { (18 * u + 4, 4 + 2 * u) };
    check(&w, &a, at + tb, v0 + 32 * u);
    let (s0, live) = (v0 / 16, real.div_ceil(16));
    assert!(nsub >= s0 + 2 * u && mw.len() >= (R - 1) * nsub + s0 + 2 * u);
    let m4 = _mm256_set1_epi8(0x0F);
    for r in 0..R {
        // SAFETY: every access of this loop body is in bounds: the tail lies inside every row,
        // its units inside the activation and each row's part of `mw` (checked above).
        unsafe {
            let t = w[r].as_ptr().add(at);
            prefetch(t, ahead, tb);
            let (d, dmin) = (f16_at(t), f16_at(t.add(2)));
            for k in 0..u {
                let (sc, m) = (*t.add(4 + k) & 63, *t.add(4 + u + k) & 63);
                let raw = load128(t.add(qs + 16 * k));
                let mut c = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw), m4);
                if FIVE {
                    // Bit j of the unit's little-endian u32 is value j's fifth bit.
                    c = _mm256_or_si256(
                        c,
                        bit_bytes(t.add(4 + 2 * u + 4 * k).cast::<u32>().read_unaligned().to_le(), 16),
                    );
                }
                let p = usum(c, load256(a.q.as_ptr().add(v0 + 32 * k).cast()));
                let s = _mm256_set1_ps((d * f32::from(sc)) * *a.d16.get_unchecked(s0 + 2 * k));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[r]);
                let mv = -(dmin * f32::from(m));
                for h in 2 * k..2 * k + 2 {
                    *mw.get_unchecked_mut(r * nsub + s0 + h) = if h < live { mv } else { 0.0 };
                }
            }
        }
    }
    acc
}

/// The tail of four ragged q6_kr rows (layout in [`crate::blocks::kquants::ragged`]): its
/// `real` values after `nsb` super-blocks, continuing `acc` unit by unit.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_tail(w: [&[u8]; R], a: ActRow<'_>, nsb: usize, real: usize, ahead: usize, mut acc: [__m256; R]) -> [__m256; R] {
    let (u, at, v0) = (real.div_ceil(32), nsb * layout::q6k::BYTES, nsb * QK_K);
    let tb = 26 * u + 2;
    check(&w, &a, at + tb, v0 + 32 * u);
    let m4 = _mm256_set1_epi8(0x0F);
    let thirty_two = _mm256_set1_epi8(32);
    for r in 0..R {
        // SAFETY: every access of this loop body is in bounds: the tail lies inside every row
        // and its units inside the activation (checked above).
        unsafe {
            let t = w[r].as_ptr().add(at);
            prefetch(t, ahead, tb);
            let d = f16_at(t.add(26 * u));
            for k in 0..u {
                let raw = load128(t.add(16 * k));
                let lo = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw), m4);
                let hi = two_bit_unit(t.add(16 * u + 8 * k).cast::<u64>().read_unaligned().to_le());
                let code = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi));
                let x = load256(a.q.as_ptr().add(v0 + 32 * k).cast());
                let p = _mm256_sub_epi32(usum(code, x), usum(thirty_two, x));
                let dx = *a.d16.get_unchecked(v0 / 16 + 2 * k);
                let sc = |h: usize| (d * f32::from(*t.add(24 * u + 2 * k + h) as i8)) * dx;
                let s = _mm256_set_m128(_mm_set1_ps(sc(1)), _mm_set1_ps(sc(0)));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[r]);
            }
        }
    }
    acc
}

/// The code dots of `base` (q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k, or int4 with `spec` over
/// rows of `cols`) over the first `units` blocks (legacy) or super-blocks (k-quants) of four rows, then over the `tail` values of a
/// ragged row (q4_kr, q5_kr, q6_kr; 0 otherwise), prefetching `ahead` bytes past each (see
/// [`prefetch`]); the mins (q4_1, q5_1, q4_k, q5_k) go to `mw` (row `r` at `r · nsub`). The caller
/// checks that the CPU has AVX2/FMA/F16C.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn rows(
    base: crate::qtype::QType,
    w: [&[u8]; R],
    a: ActRow<'_>,
    units: usize,
    ahead: usize,
    mw: &mut [f32],
    nsub: usize,
    tail: usize,
    spec: Option<AffineSpec>,
    cols: usize,
) -> [f32; R] {
    use crate::qtype::QType;
    let acc = match base {
        QType::Int4 => int4(spec.expect("group-affine spec"), w, a, cols, ahead),
        QType::Q4_0 => legacy::<18, 2, 0, false, 8>(w, a, units, ahead, mw, nsub),
        QType::Q4_1 => legacy::<20, 4, 0, true, 0>(w, a, units, ahead, mw, nsub),
        QType::Q5_0 => legacy::<22, 6, 2, false, 16>(w, a, units, ahead, mw, nsub),
        QType::Q5_1 => legacy::<24, 8, 4, true, 0>(w, a, units, ahead, mw, nsub),
        QType::Q8_0 => q8_0(w, a, units, ahead),
        QType::Q2K => q23_k::<false>(w, a, units, ahead, mw, nsub),
        QType::Q3K => q23_k::<true>(w, a, units, ahead, mw, nsub),
        QType::Q4K => q45_k::<false>(w, a, units, ahead, mw, nsub),
        QType::Q5K => q45_k::<true>(w, a, units, ahead, mw, nsub),
        QType::Q6K => q6_k(w, a, units, ahead),
        other => unreachable!("no fused kernel for {}", other.name()),
    };
    let acc = match base {
        _ if tail == 0 => acc,
        QType::Q2K => q23_k_tail::<false>(w, a, units, tail, ahead, mw, nsub, acc),
        QType::Q3K => q23_k_tail::<true>(w, a, units, tail, ahead, mw, nsub, acc),
        QType::Q4K => q45_k_tail::<false>(w, a, units, tail, ahead, mw, nsub, acc),
        QType::Q5K => q45_k_tail::<true>(w, a, units, tail, ahead, mw, nsub, acc),
        QType::Q6K => q6_k_tail(w, a, units, tail, ahead, acc),
        other => unreachable!("{} has no ragged tail", other.name()),
    };
    [hsum256(acc[0]), hsum256(acc[1]), hsum256(acc[2]), hsum256(acc[3])]
}

#[cfg(test)]
mod tests {
    use super::scales_mins_k4;
    use crate::blocks::kquants::scale_min_k4;

    #[test]
    fn legacy_layouts_match_the_specs() {
        use crate::blocks::legacy::Spec;
        use crate::qtype::QType;
        // The const parameters `rows` passes to `legacy`: (block bytes, qs, qh or 0, min, zero).
        for (q, l) in [
            (QType::Q4_0, (18, 2, 0, false, 8.0)),
            (QType::Q4_1, (20, 4, 0, true, 0.0)),
            (QType::Q5_0, (22, 6, 2, false, 16.0)),
            (QType::Q5_1, (24, 8, 4, true, 0.0)),
        ] {
            let s = Spec::of(q).unwrap();
            assert_eq!((s.block_bytes, s.off_qs, s.off_qh.unwrap_or(0), s.has_min, s.zero), l, "{}", q.name());
        }
        assert_eq!(Spec::of(QType::Q8_0).unwrap().block_bytes, super::Q8_0_BYTES);
    }

    #[test]
    fn q3k_scales_unpack_like_the_reference() {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..200 {
            let mut b = [0u8; 12];
            for v in &mut b {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *v = s as u8;
            }
            let words = super::scales_q3k(&b);
            for j in 0..16 {
                let got = (words[j / 4] >> (8 * (j % 4))) as u8 as i8;
                assert_eq!(i32::from(got), crate::blocks::kquants::scale_q3k(j, &b), "scale {j} of {b:?}");
            }
        }
    }

    #[test]
    fn scales_and_mins_unpack_like_the_reference() {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200 {
            let mut b = [0u8; 12];
            for v in &mut b {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *v = s as u8;
            }
            let (sc, m) = scales_mins_k4(&b);
            for j in 0..8 {
                let (rs, rm) = scale_min_k4(j, &b);
                assert_eq!(((sc >> (8 * j)) & 0xFF) as u8, rs, "scale {j} of {b:?}");
                assert_eq!(((m >> (8 * j)) & 0xFF) as u8, rm, "min {j} of {b:?}");
            }
        }
    }
}
