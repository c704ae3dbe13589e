//! Fused AVX2 (and AVX-512 VNNI) kernels: weight bytes decoded in registers and multiplied with
//! the quantized activation row at once, with no decoded row in memory, four weight rows per
//! call sharing every activation load. Three families:
//!
//! * **Legacy types and iq4_nl** ([`rows`], through [`super::dot_fused`]), for few activation
//!   rows: per block of 32 each row's lane sums are reduced to one exact i32 (the four rows
//!   together: `vphaddd` at AVX2, [`hsum4x2`] for two blocks at VNNI), then the block's f32
//!   steps run with the four rows in the lanes of one 128-bit vector ([`super::x86::b32_step`]),
//!   mins included: the bits of [`super::dot_b32_ref`] at every ISA and batch size.
//! * **int4** ([`rows`] too): the decode-then-dot path ([`super::decode_row`],
//!   [`super::dot_q8_x4`]) serves larger batches and is its specification. **Same bits**: the
//!   kernel does that path's arithmetic in its order (per 32 values each row gives 8 exact i32
//!   lane sums of 4 products; the scale is `(weight scale) · (activation step)` rounded as the
//!   decoder and the dot round it; the lane sums are added in order by FMA into one
//!   accumulator per row), so a token's outputs do not depend on the batch it is in.
//! * **k-quants and their ragged types** ([`k_rows`], through [`super::dot_k`]), at every batch
//!   size, with activations quantized in blocks of 256 (one step per super-block, ggml's
//!   `q8_K` idea): each sub-block's products are summed in i32 and multiplied by its integer
//!   scale in i32 (`vpmaddubsw`, then `vpmaddwd` by the scales), the mins and the codes'
//!   offsets come from the activation's exact per-16 sums (`b16`), and only the super-block's
//!   total goes to f32, in [`super::dot_k_ref`]'s order: the same bits as the scalar
//!   reference, at every ISA and batch size. A ragged tail is one more (shorter) block.
//! * **Unsigned codes.** Codes that are unsigned in the block (all but q8_0's and iq4_nl's,
//!   whose signs `vpsignb` moves onto the activation, or `+ 128` at VNNI) go into
//!   `vpmaddubsw` as they are, and their offset (8 for q4_0, 16 for q5_0, 4 for q3_k, 32 for
//!   q6_k, the group's zero for int4) is taken off the integer sums with the activation's own
//!   (`zero · Σ x`), which is exact.
//! * **Prefetch.** The rows [`AHEAD_ROWS`] further on are prefetched into L2 while these are
//!   multiplied ([`prefetch`]).
//! * **AVX-512 VNNI** (`k45_vnni`, `k6_vnni`, `legacy_vnni`, `packed_vnni`, when the CPU has
//!   it): q4_k, q5_k, q6_k, q4_0, q4_1, q5_0, q5_1, q8_0 and iq4_nl take 64 values per
//!   instruction (k-quants: `vpmaddubsw` on 512 bits, then `vpdpwssd` by the scales, the high
//!   bits moved into place by one `vprolvd` and merged by one `vpternlogd`; legacy types: two
//!   blocks per `vpdpbusd`, or a block of four packed rows). Their integer sums are the AVX2
//!   kernels' exactly, and so are their bits. (The same for q2_k and q3_k measured −5 % and
//!   +2 % against their AVX2 kernels on an AMD EPYC: not kept.)
//! * **The GEMM's kernels** ([`k_decoded`], [`k_decoded_vnni`]: decoded k-quant rows with four
//!   activation rows; at AVX-512 VNNI the outer-product kernels [`k_outer`], [`b32_outer`]
//!   and [`q8_outer`], sixteen activation rows in the lanes) live here too, for their shared
//!   helpers.
//! * **One function per kernel** (`#[inline(never)]`, called once per four rows): inlined into
//!   one dispatcher they shared its register allocation, and q4_0 ran 15–20 % slower.
//!
//! Only reached through [`super::dot_fused`] and [`super::dot_k`], which check the CPU and
//! every length.

use std::arch::x86_64::*;

use super::x86::{b32_step, bit_bytes, hsum4_epi32};
use super::ActRow;
use crate::blocks::iq4nl::KVALUES;
use crate::blocks::kquants::{layout, ragged, QK_K};
use crate::qtype::{AffineSpec, QType};
use crate::simd::avx2::hsum256x4;

/// Rows per kernel call.
const R: usize = 4;
/// How many rows ahead the kernels prefetch (see [`prefetch`]): two calls' worth.
pub(super) const AHEAD_ROWS: usize = 2 * R;

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

/// Prefetch the cache lines of `bytes` bytes from `ahead` bytes past `p` into L2 (a hint:
/// never faults, so it may point past the row or the matrix). The kernels prefetch the same
/// bytes of the rows [`AHEAD_ROWS`] further on (`ahead` = that many rows) while they multiply
/// these: the rows are short separate streams that the hardware prefetchers pick up too late
/// (each block's first use, its scale, is a dependent load), while the matrix as a whole is
/// read in order. Into L2, not L1: an L1 prefetch holds one of the core's few L1 miss buffers
/// for the whole DRAM latency, which capped a q8_0 GEMV streaming from DRAM at about 13 GB/s
/// (AMD EPYC, one thread) where an L2 prefetch two groups ahead reaches about 22 (the speed
/// of the same kernel with its weights in cache).
#[inline(always)]
fn prefetch(p: *const u8, ahead: usize, bytes: usize) {
    let mut o = 0;
    while o < bytes {
        crate::simd::prefetch_l2(p.wrapping_add(ahead + o));
        o += 64;
    }
}

/// The little-endian f16 at `off` bytes into each of the four blocks `blk`, as four f32 lanes:
/// one F16C conversion for the four rows, from a general register. (Converting one value at a
/// time let the compiler merge it into whatever vector register it liked, often a row's
/// accumulator, which chained every block's scales to the previous block's FMA: q8_0 ran at
/// about one block per 5 cycles and row.)
#[inline(always)]
unsafe fn f16v(blk: [*const u8; R], off: usize) -> __m128 {
    let h = |r: usize| {
        // SAFETY: the caller guarantees 2 readable bytes at `blk[r] + off`.
        let b = unsafe { [*blk[r].add(off), *blk[r].add(off + 1)] };
        u64::from(u16::from_le_bytes(b))
    };
    let v = h(0) | h(1) << 16 | h(2) << 32 | h(3) << 48;
    // SAFETY: F16C is enabled by the caller.
    unsafe { _mm_cvtph_ps(_mm_cvtsi64_si128(v as i64)) }
}

/// [`f16v`] times `dx` (one f32 product each, as the scalar code rounds it), as an array.
#[inline(always)]
unsafe fn f16x4(blk: [*const u8; R], off: usize, dx: f32) -> [f32; R] {
    let mut out = [0f32; R];
    // SAFETY: the caller's guarantees (see `f16v`); `out` holds four f32.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), _mm_mul_ps(f16v(blk, off), _mm_set1_ps(dx))) };
    out
}

/// `Σ` of pairs of `u · s` products (u8 × i8) widened to 8 i32 lanes of 4 products each.
#[inline(always)]
unsafe fn usum(u: __m256i, s: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled by the caller.
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)) }
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

/// The 4- and 5-bit legacy types over `nb` blocks of 32 (the layout as const parameters, from
/// [`Spec`]: block bytes, offset of the codes, offset of the fifth bits (0: none), whether a min
/// follows `d`, the zero code): the four rows' b32 dots, row `r` in lane `r`. Per block the
/// unsigned codes' lane sums of each row are reduced to one exact i32 per row, the codes'
/// offset (`zero · Σ q`) is taken off, and [`b32_step`] does the reference's f32 steps.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
fn legacy<const BB: usize, const OFF_QS: usize, const OFF_QH: usize, const MIN: bool, const ZERO: i8>(
    w: [&[u8]; R],
    a: ActRow<'_>,
    nb: usize,
    ahead: usize,
) -> __m128 {
    check(&w, &a, nb * BB, nb * 32);
    let mut acc = _mm_setzero_ps();
    for b in 0..nb {
        // SAFETY: every access of this loop body is in bounds: block `b` lies inside every row
        // and the activation (checked above).
        unsafe {
            let x = load256(a.q.as_ptr().add(32 * b).cast());
            let blks: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr().add(BB * b));
            let mut p = [_mm256_setzero_si256(); R];
            for r in 0..R {
                let blk = blks[r];
                if b % 4 == 0 {
                    prefetch(blk, ahead, 4 * BB);
                }
                let mut c = nibbles(blk.add(OFF_QS));
                if OFF_QH > 0 {
                    c = _mm256_or_si256(c, bit_bytes(blk.add(OFF_QH).cast::<u32>().read_unaligned().to_le(), 16));
                }
                p[r] = usum(c, x);
            }
            let bsum = super::b32_bsum(a.b16, b);
            // zero · Σ q: the codes' offset, taken off the unsigned products (exact).
            let isum = _mm_sub_epi32(hsum4_epi32(p), _mm_set1_epi32(i32::from(ZERO) * bsum));
            let min = if MIN { Some((f16v(blks, 2), _mm_set1_ps(bsum as f32))) } else { None };
            acc = b32_step(acc, isum, f16v(blks, 0), _mm_set1_ps(*a.d16.get_unchecked(2 * b)), min);
        }
    }
    acc
}

/// The signed 8-bit codes of q8_0 (`LUT` false: `BB` = 34-byte blocks) or iq4_nl (`LUT` true:
/// 18-byte blocks of 4-bit indices into [`KVALUES`], low nibbles first) over `nb` blocks of 32:
/// the four rows' b32 dots, row `r` in lane `r`. `vpsignb` moves each code's sign onto the
/// activation, so the unsigned × signed pair sums are exact (at most 2 · 128 · 127).
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
fn signed<const BB: usize, const LUT: bool>(w: [&[u8]; R], a: ActRow<'_>, nb: usize, ahead: usize) -> __m128 {
    check(&w, &a, nb * BB, nb * 32);
    // SAFETY: KVALUES holds 16 bytes; AVX2 is enabled here.
    let lut = unsafe { _mm256_broadcastsi128_si256(load128(KVALUES.as_ptr().cast())) };
    let mut acc = _mm_setzero_ps();
    for b in 0..nb {
        // SAFETY: every access of this loop body is in bounds: block `b` lies inside every row and the
        // activation (checked above).
        unsafe {
            let x = load256(a.q.as_ptr().add(32 * b).cast());
            let blks: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr().add(BB * b));
            let mut p = [_mm256_setzero_si256(); R];
            for r in 0..R {
                let blk = blks[r];
                if b % 4 == 0 {
                    prefetch(blk, ahead, 4 * BB);
                }
                let c = if LUT { _mm256_shuffle_epi8(lut, nibbles(blk.add(2))) } else { load256(blk.add(2)) };
                p[r] = usum(_mm256_sign_epi8(c, c), _mm256_sign_epi8(x, c));
            }
            acc = b32_step(acc, hsum4_epi32(p), f16v(blks, 0), _mm_set1_ps(*a.d16.get_unchecked(2 * b)), None);
        }
    }
    acc
}

/// The eight 6-bit scales and eight 6-bit mins of a q4_k/q5_k super-block (`get_scale_min_k4`
/// packing) in one 128-bit vector, from the 16 bytes at `p` (the 12-byte field and 4 more):
/// bytes 0–7 the scales, 8–15 the mins. With the field's dwords `a, b, c`: `[a, c, b, c]`
/// shifted by `[0, 0, 0, 4]` and masked to 6 or 4 bits, or'ed with bits 6–7 of `[·, a, ·, b]`
/// moved to bits 4–5 (seven vector operations instead of about twenty scalar ones).
#[inline(always)]
unsafe fn scales_mins_k4_x(p: *const u8) -> __m128i {
    // SAFETY: the caller guarantees 16 readable bytes at `p` and AVX2.
    unsafe {
        let v = load128(p);
        let lo = _mm_srlv_epi32(_mm_shuffle_epi32::<0b10_01_10_00>(v), _mm_setr_epi32(0, 0, 0, 4));
        let lo = _mm_and_si128(lo, _mm_setr_epi32(0x3F3F_3F3F, 0x0F0F_0F0F, 0x3F3F_3F3F, 0x0F0F_0F0F));
        let hi = _mm_srli_epi32::<2>(_mm_shuffle_epi32::<0b01_01_00_00>(v));
        _mm_or_si128(lo, _mm_and_si128(hi, _mm_setr_epi32(0, 0x3030_3030, 0, 0x3030_3030)))
    }
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
                d = f16x4(w.map(|r| r.as_ptr()), scale_off + 2 * gi, 1.0);
                for r in 0..R {
                    let row = w[r].as_ptr();
                    if b == 0 {
                        prefetch(row.add(scale_off), ahead, row_bytes - scale_off);
                    }
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

/// The f16 at `off` bytes into each of the four blocks `blk` in lanes 0–3 and at `off + next`
/// in lanes 4–7, as f32: one F16C conversion for two blocks of four rows.
#[inline(always)]
unsafe fn f16v8(blk: [*const u8; R], off: usize, next: usize) -> __m256 {
    let word = |o: usize| {
        let mut v = 0u64;
        for (r, p) in blk.iter().enumerate() {
            // SAFETY: the caller guarantees 2 readable bytes at `blk[r] + off` and `+ off + next`.
            let b = unsafe { [*p.add(o), *p.add(o + 1)] };
            v |= u64::from(u16::from_le_bytes(b)) << (16 * r);
        }
        v as i64
    };
    let (lo, hi) = (word(off), word(off + next));
    // SAFETY: F16C is enabled by the caller.
    unsafe { _mm256_cvtph_ps(_mm_set_epi64x(hi, lo)) }
}

/// The exact per-block sums of four rows' 512-bit lane sums (lanes 0–7 one block, 8–15 the
/// next): `[block rows 0–3, next block rows 0–3]`. Pairs of rows are interleaved and added
/// (`unpack` 32, then 64 bits: each 128-bit lane then holds its four rows' sums), then each
/// block's two 128-bit lanes are added.
#[inline(always)]
unsafe fn hsum4x2(v: [__m512i; R]) -> __m256i {
    // SAFETY: AVX-512 is enabled by the caller.
    unsafe {
        let s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(v[0], v[1]), _mm512_unpackhi_epi32(v[0], v[1]));
        let s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2], v[3]), _mm512_unpackhi_epi32(v[2], v[3]));
        let u = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
        let even = _mm512_shuffle_i32x4::<0b10_00_10_00>(u, u);
        let odd = _mm512_shuffle_i32x4::<0b11_01_11_01>(u, u);
        _mm512_castsi512_si256(_mm512_add_epi32(even, odd))
    }
}

/// [`legacy`] for q4_0, q4_1, q5_0 and q5_1 (`Q8` and `LUT` false; the fifth bits at `OFF_QH`
/// when it is not 0, put in place by one masked move), [`signed`] for q8_0 (`Q8` true) and
/// iq4_nl (`LUT` true: the nibbles through [`KVALUES`]) at AVX-512 VNNI: two blocks per 512-bit
/// vector, each row's lane sums in one `vpdpbusd` that starts from the codes' offset
/// (`−zb · Σ x` per lane; signed codes go in as `c + 128`, so `zb` is 128), the four rows' sums
/// of both blocks reduced together ([`hsum4x2`]), then the two blocks' f32 steps in block
/// order: the bits of [`super::dot_b32_ref`]. An odd last block runs on 256 bits.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn legacy_vnni<
    const BB: usize,
    const OFF_QS: usize,
    const OFF_QH: usize,
    const MIN: bool,
    const ZB: u8,
    const Q8: bool,
    const LUT: bool,
>(
    w: [&[u8]; R],
    a: ActRow<'_>,
    nb: usize,
    ahead: usize,
) -> __m128 {
    check(&w, &a, nb * BB, nb * 32);
    let zb = _mm512_set1_epi8(ZB as i8);
    let flip = _mm512_set1_epi8(if Q8 || LUT { i8::MIN } else { 0 });
    let m4 = _mm512_set1_epi8(0x0F);
    // SAFETY: KVALUES holds 16 bytes; AVX-512 is enabled here.
    let lut = unsafe { _mm512_broadcast_i32x4(load128(KVALUES.as_ptr().cast())) };
    // Two blocks' 16 code bytes [q0, q1] to [q0, q0 >> 4, q1, q1 >> 4], masked: 128-bit lanes
    // of values 0–15 and 16–31 of each block.
    let spread = _mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3);
    // SAFETY: AVX-512 is enabled here.
    let nib = unsafe {
        let n = _mm256_setr_epi64x(0, 0, 0x0004_0004_0004_0004, 0x0004_0004_0004_0004);
        halves(n, n)
    };
    let mut acc = _mm_setzero_ps();
    let mut b = 0;
    while b + 2 <= nb {
        // SAFETY: every access of this loop body is in bounds: blocks `b`, `b + 1` lie inside
        // every row and the activation (checked above).
        unsafe {
            let x = _mm512_loadu_si512(a.q.as_ptr().add(32 * b).cast());
            let dx =
                _mm256_set_m128(_mm_set1_ps(*a.d16.get_unchecked(2 * b + 2)), _mm_set1_ps(*a.d16.get_unchecked(2 * b)));
            let start = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), zb, x));
            let blks: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr().add(BB * b));
            let mut p = [_mm512_setzero_si512(); R];
            for r in 0..R {
                let blk = blks[r];
                if b % 4 == 0 {
                    prefetch(blk, ahead, 4 * BB);
                }
                let c = if Q8 {
                    let lo = load256(blk.add(OFF_QS));
                    _mm512_xor_si512(halves(lo, load256(blk.add(BB + OFF_QS))), flip)
                } else {
                    let q = _mm256_set_m128i(load128(blk.add(BB + OFF_QS)), load128(blk.add(OFF_QS)));
                    let q = _mm512_permutexvar_epi64(spread, _mm512_castsi256_si512(q));
                    let c = _mm512_and_si512(_mm512_srlv_epi16(q, nib), m4);
                    if LUT {
                        _mm512_xor_si512(_mm512_shuffle_epi8(lut, c), flip)
                    } else if OFF_QH > 0 {
                        // The fifth bits of both blocks (bit j of each block's `qh` is value
                        // j's), as 16 in the bytes they select.
                        let h0 = u64::from(blk.add(OFF_QH).cast::<u32>().read_unaligned().to_le());
                        let h1 = u64::from(blk.add(BB + OFF_QH).cast::<u32>().read_unaligned().to_le());
                        _mm512_or_si512(c, _mm512_maskz_mov_epi8(h0 | h1 << 32, _mm512_set1_epi8(16)))
                    } else {
                        c
                    }
                };
                p[r] = _mm512_dpbusd_epi32(start, c, x);
            }
            let t = _mm256_mul_ps(_mm256_mul_ps(f16v8(blks, 0, BB), dx), _mm256_cvtepi32_ps(hsum4x2(p)));
            if MIN {
                let (b0, b1) = (super::b32_bsum(a.b16, b), super::b32_bsum(a.b16, b + 1));
                let bs = _mm256_set_m128(_mm_set1_ps(b1 as f32), _mm_set1_ps(b0 as f32));
                let tm = _mm256_mul_ps(_mm256_mul_ps(f16v8(blks, 2, BB), dx), bs);
                acc = _mm_add_ps(_mm_add_ps(acc, _mm256_castps256_ps128(t)), _mm256_castps256_ps128(tm));
                acc = _mm_add_ps(_mm_add_ps(acc, _mm256_extractf128_ps::<1>(t)), _mm256_extractf128_ps::<1>(tm));
            } else {
                acc = _mm_add_ps(_mm_add_ps(acc, _mm256_castps256_ps128(t)), _mm256_extractf128_ps::<1>(t));
            }
        }
        b += 2;
    }
    if b < nb {
        // SAFETY: block `b` lies inside every row and the activation (checked above).
        unsafe {
            let x = load256(a.q.as_ptr().add(32 * b).cast());
            let zero = _mm256_setzero_si256();
            let start = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, _mm512_castsi512_si256(zb), x));
            let blks: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr().add(BB * b));
            let mut p = [zero; R];
            for r in 0..R {
                let blk = blks[r];
                let c = if Q8 {
                    _mm256_xor_si256(load256(blk.add(OFF_QS)), _mm512_castsi512_si256(flip))
                } else if LUT {
                    let c = _mm256_shuffle_epi8(_mm512_castsi512_si256(lut), nibbles(blk.add(OFF_QS)));
                    _mm256_xor_si256(c, _mm512_castsi512_si256(flip))
                } else if OFF_QH > 0 {
                    let h = blk.add(OFF_QH).cast::<u32>().read_unaligned().to_le();
                    _mm256_or_si256(nibbles(blk.add(OFF_QS)), bit_bytes(h, 16))
                } else {
                    nibbles(blk.add(OFF_QS))
                };
                p[r] = _mm256_dpbusd_epi32(start, c, x);
            }
            let min = if MIN { Some((f16v(blks, 2), _mm_set1_ps(super::b32_bsum(a.b16, b) as f32))) } else { None };
            acc = b32_step(acc, hsum4_epi32(p), f16v(blks, 0), _mm_set1_ps(*a.d16.get_unchecked(2 * b)), min);
        }
    }
    acc
}

/// The dots of four rows of `base` (q4_0, q4_1, q5_0, q5_1, q8_0, iq4_nl: the b32 dots; int4
/// with `spec` over rows of `cols`: the code dots of [`super::dot_q8_x4`]) over the first
/// `units` blocks of 32, prefetching `ahead` bytes past each (see [`prefetch`]). The caller
/// checks that the CPU has AVX2/FMA/F16C (and AVX-512 VNNI when `vnni` is set).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn rows(
    base: crate::qtype::QType,
    w: [&[u8]; R],
    a: ActRow<'_>,
    units: usize,
    ahead: usize,
    spec: Option<AffineSpec>,
    cols: usize,
    vnni: bool,
) -> [f32; R] {
    use crate::qtype::QType;
    let acc = match base {
        // SAFETY: the caller checked AVX-512 VNNI when `vnni` is set.
        QType::Q4_0 if vnni => unsafe { legacy_vnni::<18, 2, 0, false, 8, false, false>(w, a, units, ahead) },
        // SAFETY: as above.
        QType::Q4_1 if vnni => unsafe { legacy_vnni::<20, 4, 0, true, 0, false, false>(w, a, units, ahead) },
        // SAFETY: as above.
        QType::Q5_0 if vnni => unsafe { legacy_vnni::<22, 6, 2, false, 16, false, false>(w, a, units, ahead) },
        // SAFETY: as above.
        QType::Q5_1 if vnni => unsafe { legacy_vnni::<24, 8, 4, true, 0, false, false>(w, a, units, ahead) },
        // SAFETY: as above.
        QType::Q8_0 if vnni => unsafe { legacy_vnni::<34, 2, 0, false, 0x80, true, false>(w, a, units, ahead) },
        // SAFETY: as above.
        QType::IQ4NL if vnni => unsafe { legacy_vnni::<18, 2, 0, false, 0x80, false, true>(w, a, units, ahead) },
        QType::Int4 => return hsum256x4(int4(spec.expect("group-affine spec"), w, a, cols, ahead)),
        QType::Q4_0 => legacy::<18, 2, 0, false, 8>(w, a, units, ahead),
        QType::Q4_1 => legacy::<20, 4, 0, true, 0>(w, a, units, ahead),
        QType::Q5_0 => legacy::<22, 6, 2, false, 16>(w, a, units, ahead),
        QType::Q5_1 => legacy::<24, 8, 4, true, 0>(w, a, units, ahead),
        QType::Q8_0 => signed::<34, false>(w, a, units, ahead),
        QType::IQ4NL => signed::<18, true>(w, a, units, ahead),
        other => unreachable!("no fused kernel for {}", other.name()),
    };
    let mut out = [0f32; R];
    // SAFETY: `out` holds four f32.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), acc) };
    out
}

// ---- k-quants: integer sums per super-block (activation blocks of 256 values) ----

/// One super-block's (or tail's) share of four rows' dots, in the reference's f32 order
/// ([`super::dot_k_ref`]): `acc + (d · dx) · isum`, then `− (dmin · dx) · imin`, lane `r` row
/// `r` (products and sums rounded separately, as the scalar code does).
#[inline(always)]
unsafe fn k_finish(acc: __m128, isum: __m128i, imin: Option<__m128i>, d: [f32; R], dmin: [f32; R], dx: f32) -> __m128 {
    // SAFETY: AVX2 is enabled by the caller.
    unsafe {
        let dxv = _mm_set1_ps(dx);
        let dd = _mm_mul_ps(_mm_loadu_ps(d.as_ptr()), dxv);
        let acc = _mm_add_ps(acc, _mm_mul_ps(dd, _mm_cvtepi32_ps(isum)));
        match imin {
            Some(m) => {
                let dm = _mm_mul_ps(_mm_loadu_ps(dmin.as_ptr()), dxv);
                _mm_sub_ps(acc, _mm_mul_ps(dm, _mm_cvtepi32_ps(m)))
            }
            None => acc,
        }
    }
}

/// Sixteen i8 sub-block scales (natural order) as 16 i16: the even sub-blocks in the low
/// 128-bit lane, the odd ones in the high lane, so that [`pick`] gives each 32-value chunk's
/// two scales (its first 16 values are the even sub-block).
#[inline(always)]
unsafe fn even_odd(s: __m128i) -> __m256i {
    // SAFETY: AVX2 is enabled by the caller.
    unsafe {
        let idx = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        _mm256_cvtepi8_epi16(_mm_shuffle_epi8(s, idx))
    }
}

/// The i16 element `t` (< 8) of each 128-bit lane of `v` in every element of that lane.
#[inline(always)]
unsafe fn pick(v: __m256i, t: usize) -> __m256i {
    // SAFETY: AVX2 is enabled by the caller.
    unsafe {
        let t = t as i16;
        _mm256_shuffle_epi8(v, _mm256_set1_epi16(((2 * t + 1) << 8) | (2 * t)))
    }
}

/// `isum + Σ` of the products of the codes `c` (u8) with the activation `x` (i8), each pair of
/// products times its 16-value sub-block's scale in `sc` (i16 lanes), widened to i32.
#[inline(always)]
unsafe fn scaled(isum: __m256i, c: __m256i, x: __m256i, sc: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled by the caller. The u8 × i8 pair sums fit in i16 (codes < 64).
    unsafe { _mm256_add_epi32(isum, _mm256_madd_epi16(_mm256_maddubs_epi16(c, x), sc)) }
}

/// The sixteen 4-bit codes of a 16-byte group (low nibbles, then high nibbles) as 32 bytes.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes at `p`; AVX2 is enabled.
    unsafe {
        let raw = load128(p);
        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw), _mm256_set1_epi8(0x0F))
    }
}

/// q2_k (`THREE` false) or q3_k (`THREE` true) over `nsb` super-blocks of four rows.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
fn k23<const THREE: bool>(w: [&[u8]; R], a: ActRow<'_>, nsb: usize, ahead: usize, mut acc: __m128) -> __m128 {
    let (bytes, qs) = if THREE { (layout::q3k::BYTES, layout::q3k::QS) } else { (layout::q2k::BYTES, layout::q2k::QS) };
    check(&w, &a, nsb * bytes, nsb * QK_K);
    let m4 = _mm_set1_epi8(0x0F);
    for sb in 0..nsb {
        // SAFETY: every access of this loop body is in bounds: super-block `sb` lies inside every
        // row and the activation (checked above).
        unsafe {
            let xq = a.q.as_ptr().add(QK_K * sb).cast::<u8>();
            let bs = load256(a.b16.as_ptr().add(16 * sb).cast());
            let (mut isum, mut imin) = ([_mm256_setzero_si256(); R], [_mm256_setzero_si256(); R]);
            let blks: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr().add(bytes * sb));
            let (d, dmin) = if THREE {
                (f16x4(blks, layout::q3k::D, 1.0), [0.0; R])
            } else {
                (f16x4(blks, layout::q2k::D, 1.0), f16x4(blks, layout::q2k::DMIN, 1.0))
            };
            for r in 0..R {
                let blk = blks[r];
                prefetch(blk, ahead, bytes);
                let s = if THREE {
                    let words = scales_q3k(&*blk.add(layout::q3k::SCALES).cast::<[u8; 12]>());
                    _mm_setr_epi32(words[0] as i32, words[1] as i32, words[2] as i32, words[3] as i32)
                } else {
                    let sc = load128(blk.add(layout::q2k::SCALES));
                    imin[r] = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sc), m4)), bs);
                    _mm_and_si128(sc, m4)
                };
                let sv = even_odd(s);
                let hm = if THREE { load256(blk.add(layout::q3k::HMASK)) } else { _mm256_setzero_si256() };
                let mut acc_i = _mm256_setzero_si256();
                for h in 0..2 {
                    let q = load256(blk.add(qs + 32 * h));
                    for s in 0..4 {
                        let t = 4 * h + s;
                        let mut c = two_bits(q, s);
                        if THREE {
                            c = _mm256_or_si256(c, bit_to(hm, t, 2));
                        }
                        acc_i = scaled(acc_i, c, load256(xq.add(32 * t)), pick(sv, t));
                    }
                }
                if THREE {
                    // The codes' offset 4: 4 · Σ_k scale_k · Σ x over sub-block k.
                    let off = _mm256_madd_epi16(_mm256_cvtepi8_epi16(s), bs);
                    acc_i = _mm256_sub_epi32(acc_i, _mm256_slli_epi32::<2>(off));
                }
                isum[r] = acc_i;
            }
            let imin = if THREE { None } else { Some(hsum4_epi32(imin)) };
            acc = k_finish(acc, hsum4_epi32(isum), imin, d, dmin, *a.d16.get_unchecked(16 * sb));
        }
    }
    acc
}

/// q4_k (`FIVE` false) or q5_k (`FIVE` true) over `nsb` super-blocks of four rows.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
fn k45<const FIVE: bool>(w: [&[u8]; R], a: ActRow<'_>, nsb: usize, ahead: usize, mut acc: __m128) -> __m128 {
    use layout::q4k::{D, DMIN, SCALES};
    let (bytes, qs) = if FIVE { (layout::q5k::BYTES, layout::q5k::QS) } else { (layout::q4k::BYTES, layout::q4k::QS) };
    check(&w, &a, nsb * bytes, nsb * QK_K);
    let m4 = _mm256_set1_epi8(0x0F);
    let dup = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    for sb in 0..nsb {
        // SAFETY: every access of this loop body is in bounds: super-block `sb` lies inside every
        // row and the activation (checked above).
        unsafe {
            let xq = a.q.as_ptr().add(QK_K * sb).cast::<u8>();
            let bs = load256(a.b16.as_ptr().add(16 * sb).cast());
            let (mut isum, mut imin) = ([_mm256_setzero_si256(); R], [_mm256_setzero_si256(); R]);
            let blks: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr().add(bytes * sb));
            let (d, dmin) = (f16x4(blks, D, 1.0), f16x4(blks, DMIN, 1.0));
            for r in 0..R {
                let blk = blks[r];
                prefetch(blk, ahead, bytes);
                let scm = scales_mins_k4_x(blk.add(SCALES));
                // Each of the eight scales covers 32 values: both lanes hold all eight.
                let sv = _mm256_cvtepu8_epi16(_mm_unpacklo_epi64(scm, scm));
                let mv = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(scm, dup));
                imin[r] = _mm256_madd_epi16(mv, bs);
                let qh = if FIVE { load256(blk.add(layout::q5k::QH)) } else { _mm256_setzero_si256() };
                let mut acc_i = _mm256_setzero_si256();
                for p in 0..4 {
                    let raw = load256(blk.add(qs + 32 * p));
                    let mut lo = _mm256_and_si256(raw, m4);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4);
                    if FIVE {
                        lo = _mm256_or_si256(lo, bit_to(qh, 2 * p, 4));
                        hi = _mm256_or_si256(hi, bit_to(qh, 2 * p + 1, 4));
                    }
                    acc_i = scaled(acc_i, lo, load256(xq.add(64 * p)), pick(sv, 2 * p));
                    acc_i = scaled(acc_i, hi, load256(xq.add(64 * p + 32)), pick(sv, 2 * p + 1));
                }
                isum[r] = acc_i;
            }
            acc = k_finish(acc, hsum4_epi32(isum), Some(hsum4_epi32(imin)), d, dmin, *a.d16.get_unchecked(16 * sb));
        }
    }
    acc
}

/// q6_k over `nsb` super-blocks of four rows.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
fn k6(w: [&[u8]; R], a: ActRow<'_>, nsb: usize, ahead: usize, mut acc: __m128) -> __m128 {
    use layout::q6k::{BYTES, D, QH, QL, SCALES};
    check(&w, &a, nsb * BYTES, nsb * QK_K);
    let m4 = _mm256_set1_epi8(0x0F);
    for sb in 0..nsb {
        // SAFETY: every access of this loop body is in bounds: super-block `sb` lies inside every
        // row and the activation (checked above).
        unsafe {
            let xq = a.q.as_ptr().add(QK_K * sb).cast::<u8>();
            let bs = load256(a.b16.as_ptr().add(16 * sb).cast());
            let mut isum = [_mm256_setzero_si256(); R];
            let blks: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr().add(BYTES * sb));
            let d = f16x4(blks, D, 1.0);
            for r in 0..R {
                let blk = blks[r];
                prefetch(blk, ahead, BYTES);
                let s = load128(blk.add(SCALES));
                let sv = even_odd(s);
                let mut acc_i = _mm256_setzero_si256();
                for h in 0..2 {
                    let qh = load256(blk.add(QH + 32 * h));
                    let ql = [load256(blk.add(QL + 64 * h)), load256(blk.add(QL + 64 * h + 32))];
                    for c in 0..4 {
                        let t = 4 * h + c;
                        let lo = if c < 2 { ql[c] } else { _mm256_srli_epi16::<4>(ql[c - 2]) };
                        // Bits 2c, 2c + 1 of each qh byte to bits 4, 5.
                        let hi = _mm256_or_si256(bit_to(qh, 2 * c, 4), bit_to(qh, 2 * c + 1, 5));
                        let code = _mm256_or_si256(_mm256_and_si256(lo, m4), hi);
                        acc_i = scaled(acc_i, code, load256(xq.add(32 * t)), pick(sv, t));
                    }
                }
                // The codes' offset 32: 32 · Σ_k scale_k · Σ x over sub-block k.
                let off = _mm256_madd_epi16(_mm256_cvtepi8_epi16(s), bs);
                isum[r] = _mm256_sub_epi32(acc_i, _mm256_slli_epi32::<5>(off));
            }
            acc = k_finish(acc, hsum4_epi32(isum), None, d, [0.0; R], *a.d16.get_unchecked(16 * sb));
        }
    }
    acc
}

// ---- k-quants at AVX-512 VNNI: 64 values per instruction ----

/// A 512-bit vector of two 256-bit halves.
#[inline(always)]
unsafe fn halves(lo: __m256i, hi: __m256i) -> __m512i {
    // SAFETY: AVX-512F is enabled by the caller.
    unsafe { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi) }
}

/// The 32 bytes at `p` in both 256-bit halves.
#[inline(always)]
unsafe fn both(p: *const u8) -> __m512i {
    // SAFETY: the caller guarantees 32 readable bytes at `p`; AVX-512F is enabled.
    unsafe { _mm512_broadcast_i64x4(load256(p)) }
}

/// The 8 i32 lane sums of the two halves of `v` (exact).
#[inline(always)]
unsafe fn fold(v: __m512i) -> __m256i {
    // SAFETY: AVX-512F is enabled by the caller.
    unsafe { _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v)) }
}

/// `isum + Σ` of the products of the codes `c` (u8) with the activation `x` (i8), each pair of
/// products times its scale in `sc` (i16 lanes), in i32: `vpmaddubsw`, then `vpdpwssd`.
#[inline(always)]
unsafe fn scaled512(isum: __m512i, c: __m512i, x: __m512i, sc: __m512i) -> __m512i {
    // SAFETY: AVX-512BW and VNNI are enabled by the caller. The u8 × i8 pair sums fit in i16
    // (codes < 64).
    unsafe { _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(c, x), sc) }
}

/// `c | (t & mask)` (one `vpternlogd`).
#[inline(always)]
unsafe fn or_masked(c: __m512i, t: __m512i, mask: __m512i) -> __m512i {
    // SAFETY: AVX-512F is enabled by the caller.
    unsafe { _mm512_ternarylogic_epi32::<0xF8>(c, t, mask) }
}

/// Rotation counts (32-bit lanes) that move bit `lo` of every byte to bit `to` in the low half
/// of a vector and bit `hi` in the high half: a left rotation by `to − j` (mod 32) keeps each
/// bit in its byte modulo the lane, so after a mask of bit `to` only the wanted bits are left.
#[inline(always)]
unsafe fn rotations(lo: usize, hi: usize, to: usize) -> __m512i {
    let r = |j: usize| ((to + 32 - j) % 32) as i32;
    // SAFETY: AVX-512F is enabled by the caller.
    unsafe { halves(_mm256_set1_epi32(r(lo)), _mm256_set1_epi32(r(hi))) }
}

/// The index vectors of `vpermw` that put the sub-blocks 4j … 4j + 3 of a super-block's 16
/// i16 scales (natural order) into the four 128-bit lanes of a 64-value chunk pair `j`.
#[inline(always)]
unsafe fn quads() -> [__m512i; 4] {
    std::array::from_fn(|j| {
        let e: [i16; 32] = std::array::from_fn(|i| (4 * j + i / 8) as i16);
        // SAFETY: `e` holds 64 bytes; AVX-512F is enabled by the caller.
        unsafe { _mm512_loadu_si512(e.as_ptr().cast()) }
    })
}

/// [`k45`] at AVX-512 VNNI: per 64 values one code load (broadcast to both halves, shifted by
/// 0 or 4 bits), one `vpmaddubsw` and one `vpdpwssd` by the two sub-blocks' scales; the same
/// exact i32 sums, so the same bits.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn k45_vnni<const FIVE: bool>(w: [&[u8]; R], a: ActRow<'_>, nsb: usize, ahead: usize, mut acc: __m128) -> __m128 {
    use layout::q4k::{D, DMIN, SCALES};
    let (bytes, qs) = if FIVE { (layout::q5k::BYTES, layout::q5k::QS) } else { (layout::q4k::BYTES, layout::q4k::QS) };
    check(&w, &a, nsb * bytes, nsb * QK_K);
    let m4 = _mm512_set1_epi8(0x0F);
    let b4 = _mm512_set1_epi8(0x10);
    let dup = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    // SAFETY: AVX-512 is enabled here.
    let (nib, pick2, rot) = unsafe {
        // The high half takes the high nibbles; chunk `p`'s halves take sub-blocks `2p`, `2p + 1`
        // (their scale's i16 in every element of the half) and the fifth bits `2p`, `2p + 1`.
        let nib = halves(_mm256_setzero_si256(), _mm256_set1_epi16(4));
        let idx = |t: i16| _mm256_set1_epi16(((2 * t + 1) << 8) | (2 * t));
        let pick2: [__m512i; 4] = std::array::from_fn(|p| halves(idx(2 * p as i16), idx(2 * p as i16 + 1)));
        let rot: [__m512i; 4] = std::array::from_fn(|p| rotations(2 * p, 2 * p + 1, 4));
        (nib, pick2, rot)
    };
    for sb in 0..nsb {
        // SAFETY: every access of this loop body is in bounds: super-block `sb` lies inside every
        // row and the activation (checked above).
        unsafe {
            let xq = a.q.as_ptr().add(QK_K * sb).cast::<u8>();
            let x: [__m512i; 4] = std::array::from_fn(|p| _mm512_loadu_si512(xq.add(64 * p).cast()));
            let bs = load256(a.b16.as_ptr().add(16 * sb).cast());
            let (mut isum, mut imin) = ([_mm256_setzero_si256(); R], [_mm256_setzero_si256(); R]);
            let blks: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr().add(bytes * sb));
            let (d, dmin) = (f16x4(blks, D, 1.0), f16x4(blks, DMIN, 1.0));
            for r in 0..R {
                let blk = blks[r];
                prefetch(blk, ahead, bytes);
                let scm = scales_mins_k4_x(blk.add(SCALES));
                let sv = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(scm));
                let mv = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(scm, dup));
                imin[r] = _mm256_madd_epi16(mv, bs);
                let qh = if FIVE { both(blk.add(layout::q5k::QH)) } else { _mm512_setzero_si512() };
                let mut acc_i = _mm512_setzero_si512();
                for p in 0..4 {
                    let mut c = _mm512_and_si512(_mm512_srlv_epi16(both(blk.add(qs + 32 * p)), nib), m4);
                    if FIVE {
                        c = or_masked(c, _mm512_rolv_epi32(qh, rot[p]), b4);
                    }
                    acc_i = scaled512(acc_i, c, x[p], _mm512_shuffle_epi8(sv, pick2[p]));
                }
                isum[r] = fold(acc_i);
            }
            acc = k_finish(acc, hsum4_epi32(isum), Some(hsum4_epi32(imin)), d, dmin, *a.d16.get_unchecked(16 * sb));
        }
    }
    acc
}

/// [`k6`] at AVX-512 VNNI: per 64 values (two chunks of 32 whose low bits are the low or the
/// high nibbles of 64 contiguous bytes) one nibble mask, one rotation of the high bits, one
/// `vpmaddubsw` and one `vpdpwssd` by the four sub-blocks' scales.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn k6_vnni(w: [&[u8]; R], a: ActRow<'_>, nsb: usize, ahead: usize, mut acc: __m128) -> __m128 {
    use layout::q6k::{BYTES, D, QH, QL, SCALES};
    check(&w, &a, nsb * BYTES, nsb * QK_K);
    let m4 = _mm512_set1_epi8(0x0F);
    let b45 = _mm512_set1_epi8(0x30);
    // SAFETY: AVX-512 is enabled here.
    let (pick4, rot) = unsafe {
        // Pair `q` of half `h` holds chunks 4h + 2q, 4h + 2q + 1 (pair j = 2h + q of the
        // super-block); the high bits of chunk `c` are bits 2c, 2c + 1 of the qh bytes.
        let rot: [__m512i; 2] = std::array::from_fn(|q| rotations(4 * q, 4 * q + 2, 4));
        (quads(), rot)
    };
    for sb in 0..nsb {
        // SAFETY: every access of this loop body is in bounds: super-block `sb` lies inside every
        // row and the activation (checked above).
        unsafe {
            let xq = a.q.as_ptr().add(QK_K * sb).cast::<u8>();
            let x: [__m512i; 4] = std::array::from_fn(|j| _mm512_loadu_si512(xq.add(64 * j).cast()));
            let bs = load256(a.b16.as_ptr().add(16 * sb).cast());
            let mut isum = [_mm256_setzero_si256(); R];
            let blks: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr().add(BYTES * sb));
            let d = f16x4(blks, D, 1.0);
            for r in 0..R {
                let blk = blks[r];
                prefetch(blk, ahead, BYTES);
                let s = load128(blk.add(SCALES));
                let sv = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(s));
                let mut acc_i = _mm512_setzero_si512();
                for h in 0..2 {
                    let ql = _mm512_loadu_si512(blk.add(QL + 64 * h).cast());
                    let qh = both(blk.add(QH + 32 * h));
                    for (q, &rot) in rot.iter().enumerate() {
                        let lo = if q == 0 { ql } else { _mm512_srli_epi16::<4>(ql) };
                        let c = or_masked(_mm512_and_si512(lo, m4), _mm512_rolv_epi32(qh, rot), b45);
                        let j = 2 * h + q;
                        acc_i = scaled512(acc_i, c, x[j], _mm512_permutexvar_epi16(pick4[j], sv));
                    }
                }
                // The codes' offset 32: 32 · Σ_k scale_k · Σ x over sub-block k.
                let off = _mm256_madd_epi16(_mm256_cvtepi8_epi16(s), bs);
                isum[r] = _mm256_sub_epi32(fold(acc_i), _mm256_slli_epi32::<5>(off));
            }
            acc = k_finish(acc, hsum4_epi32(isum), None, d, [0.0; R], *a.d16.get_unchecked(16 * sb));
        }
    }
    acc
}

/// The ragged tail of four rows of `base`'s ragged type (`u` units of 32 values after `nsb`
/// super-blocks; layout in [`crate::blocks::kquants::ragged`]), one activation block, done as
/// the full super-blocks are: each row's scale (and min) field in one vector load, the mins
/// and the codes' offset from the activation's per-16 sums in one `vpmaddwd`, one scale pick
/// per unit. The fields are read with `vpmaskmovd` (whole dwords, never past the field's last
/// dword, which lies inside the tail), and the bytes past a field meet zero sums. Inlined
/// into [`k_rows`]' arm of each type, where `base` is a constant.
/// The caller enables AVX2/FMA/F16C.
#[inline(always)]
unsafe fn k_tail(base: QType, w: [&[u8]; R], a: ActRow<'_>, nsb: usize, u: usize, ahead: usize, acc: __m128) -> __m128 {
    let (at, v0, s0) = (nsb * base.info().block_bytes, nsb * QK_K, nsb * 16);
    let tb = ragged::tail_bytes(base, u);
    check(&w, &a, at + tb, v0 + 32 * u);
    assert!((1..=8).contains(&u) && a.b16.len() >= s0 + 2 * u);
    // The tail's activation sums, zero past its 2u sub-blocks.
    let mut b = [0i16; 16];
    b[..2 * u].copy_from_slice(&a.b16[s0..s0 + 2 * u]);
    // The scale field's offset in the tail and its bytes (q4_k/q5_k: `u` scales, then `u` mins).
    let (field, len) = match base {
        QType::Q2K => (0, 2 * u),
        QType::Q3K => (12 * u, 2 * u),
        QType::Q4K | QType::Q5K => (4, u),
        _ => (24 * u, 2 * u),
    };
    let zero = super::k_zero(base);
    // SAFETY: AVX2/FMA/F16C are enabled by the caller; every access is in bounds: the tail lies
    // inside every row, its units inside the activation (checked above), and a masked load
    // reads only the dwords that hold a field: at most `len` + 3 bytes from its start, which
    // end inside the tail in every layout of `ragged`.
    unsafe {
        let bs = load256(b.as_ptr().cast());
        let dwords = len.div_ceil(4) as i32;
        let mask = _mm_cmpgt_epi32(_mm_set1_epi32(dwords), _mm_setr_epi32(0, 1, 2, 3));
        let m4 = _mm_set1_epi8(0x0F);
        let (mut isum, mut imin) = ([_mm256_setzero_si256(); R], [_mm256_setzero_si256(); R]);
        let t: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr().add(at));
        let (d, dmin) = match base {
            QType::Q2K => (f16x4(t, 10 * u, 1.0), f16x4(t, 10 * u + 2, 1.0)),
            QType::Q3K => (f16x4(t, 14 * u, 1.0), [0.0; R]),
            QType::Q4K | QType::Q5K => (f16x4(t, 0, 1.0), f16x4(t, 2, 1.0)),
            _ => (f16x4(t, 26 * u, 1.0), [0.0; R]),
        };
        for r in 0..R {
            let t = t[r];
            prefetch(t, ahead, tb);
            let word = |i: usize| t.add(i).cast::<u32>().read_unaligned().to_le();
            let two = |i: usize| two_bit_unit(t.add(i).cast::<u64>().read_unaligned().to_le());
            let raw = _mm_maskload_epi32(t.add(field).cast(), mask);
            // The scales as i16: q2_k, q3_k, q6_k per 16 values (even, odd: [`even_odd`]);
            // q4_k, q5_k per unit, in both lanes. Then the offset's and the mins' sums.
            let (sv, s16) = match base {
                QType::Q2K => {
                    let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(raw), m4));
                    imin[r] = _mm256_madd_epi16(mins, bs);
                    let s = _mm_and_si128(raw, m4);
                    (even_odd(s), _mm256_setzero_si256())
                }
                QType::Q3K => {
                    let s = _mm_sub_epi8(_mm_and_si128(raw, _mm_set1_epi8(63)), _mm_set1_epi8(32));
                    (even_odd(s), _mm256_cvtepi8_epi16(s))
                }
                QType::Q4K | QType::Q5K => {
                    let s = _mm_and_si128(raw, _mm_set1_epi8(63));
                    let m = _mm_and_si128(_mm_maskload_epi32(t.add(field + u).cast(), mask), _mm_set1_epi8(63));
                    let dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
                    imin[r] = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_shuffle_epi8(m, dup)), bs);
                    (_mm256_cvtepu8_epi16(_mm_unpacklo_epi64(s, s)), _mm256_setzero_si256())
                }
                _ => (even_odd(raw), _mm256_cvtepi8_epi16(raw)),
            };
            let mut acc_i = if zero == 0 {
                _mm256_setzero_si256()
            } else {
                // The codes' offset: `zero · Σ_k scale_k · Σ x` over sub-block k.
                let off = _mm256_madd_epi16(s16, bs);
                _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_mullo_epi32(off, _mm256_set1_epi32(zero)))
            };
            for k in 0..u {
                let c = match base {
                    QType::Q2K => two(2 * u + 8 * k),
                    QType::Q3K => _mm256_or_si256(two(4 * u + 8 * k), bit_bytes(word(4 * k), 4)),
                    QType::Q4K => nibbles(t.add(4 + 2 * u + 16 * k)),
                    QType::Q5K => {
                        _mm256_or_si256(nibbles(t.add(4 + 6 * u + 16 * k)), bit_bytes(word(4 + 2 * u + 4 * k), 16))
                    }
                    _ => _mm256_or_si256(nibbles(t.add(16 * k)), _mm256_slli_epi16::<4>(two(16 * u + 8 * k))),
                };
                let x = load256(a.q.as_ptr().add(v0 + 32 * k).cast());
                acc_i = scaled(acc_i, c, x, pick(sv, k));
            }
            isum[r] = acc_i;
        }
        let imin = super::has_mins(base, None).then(|| hsum4_epi32(imin));
        k_finish(acc, hsum4_epi32(isum), imin, d, dmin, *a.d16.get_unchecked(s0))
    }
}

/// The k-quant dots of four rows of `base` (q2_k … q6_k) over `nsb` super-blocks, then, for
/// the ragged types, over a tail of `u` units (0: none); the bits of [`super::dot_k_ref`].
/// The caller checks that the CPU has AVX2/FMA/F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn k_rows(
    base: QType,
    w: [&[u8]; R],
    a: ActRow<'_>,
    nsb: usize,
    u: usize,
    ahead: usize,
    vnni: bool,
) -> [f32; R] {
    let acc = _mm_setzero_ps();
    let acc = match base {
        // SAFETY: the caller checked AVX-512 VNNI when `vnni` is set.
        QType::Q4K if vnni => unsafe { k45_vnni::<false>(w, a, nsb, ahead, acc) },
        // SAFETY: as above.
        QType::Q5K if vnni => unsafe { k45_vnni::<true>(w, a, nsb, ahead, acc) },
        // SAFETY: as above.
        QType::Q6K if vnni => unsafe { k6_vnni(w, a, nsb, ahead, acc) },
        QType::Q2K => k23::<false>(w, a, nsb, ahead, acc),
        QType::Q3K => k23::<true>(w, a, nsb, ahead, acc),
        QType::Q4K => k45::<false>(w, a, nsb, ahead, acc),
        QType::Q5K => k45::<true>(w, a, nsb, ahead, acc),
        QType::Q6K => k6(w, a, nsb, ahead, acc),
        other => unreachable!("{} is not a k-quant", other.name()),
    };
    // One call per type with a constant `base`, so that each inlined tail is specialised.
    // SAFETY: AVX2/FMA/F16C are enabled here; `k_tail` checks every length.
    let acc = unsafe {
        match base {
            _ if u == 0 => acc,
            QType::Q2K => k_tail(QType::Q2K, w, a, nsb, u, ahead, acc),
            QType::Q3K => k_tail(QType::Q3K, w, a, nsb, u, ahead, acc),
            QType::Q4K => k_tail(QType::Q4K, w, a, nsb, u, ahead, acc),
            QType::Q5K => k_tail(QType::Q5K, w, a, nsb, u, ahead, acc),
            _ => k_tail(QType::Q6K, w, a, nsb, u, ahead, acc),
        }
    };
    let mut out = [0f32; R];
    // SAFETY: `out` holds four f32.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), acc) };
    out
}

/// [`super::dot_k_decoded`] (the GEMM's k-quant kernel) at the AVX2 level: four decoded rows
/// with four activation rows, as two calls of two activation rows (sixteen registers hold the
/// accumulators of no more): block by block, per 32 values and row one code load and one scale
/// pick serve both activation rows (`vpmaddubsw`, `vpmaddwd` by the scales, an add each); then
/// [`k_finish`] per activation row, as [`k_rows`] does, so the bits are the same. The caller
/// checks the CPU and every length.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn k_decoded(mins: bool, w: [super::KRow<'_>; R], a: [ActRow<'_>; 4]) -> [[f32; R]; 4] {
    let [a0, a1, a2, a3] = a;
    // SAFETY: the caller checked the CPU (AVX2) and every length.
    let ([y0, y1], [y2, y3]) = unsafe {
        if mins {
            (k_decoded_body::<false, true, 2>(w, [a0, a1]), k_decoded_body::<false, true, 2>(w, [a2, a3]))
        } else {
            (k_decoded_body::<false, false, 2>(w, [a0, a1]), k_decoded_body::<false, false, 2>(w, [a2, a3]))
        }
    };
    [y0, y1, y2, y3]
}

/// [`k_decoded`] at AVX-512 VNNI: the four activation rows at once (32 vector registers hold
/// the sixteen accumulators), so each code load and scale pick serves four; `vpdpwssd` does
/// the scale multiply and the add (the same exact i32 sums).
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn k_decoded_vnni(mins: bool, w: [super::KRow<'_>; R], a: [ActRow<'_>; 4]) -> [[f32; R]; 4] {
    // SAFETY: the caller checked the CPU (AVX-512 VNNI) and every length.
    unsafe {
        if mins {
            k_decoded_body::<true, true, 4>(w, a)
        } else {
            k_decoded_body::<true, false, 4>(w, a)
        }
    }
}

/// [`scaled`] with `vpdpwssd`.
#[inline(always)]
unsafe fn scaled_vnni(isum: __m256i, c: __m256i, x: __m256i, sc: __m256i) -> __m256i {
    // SAFETY: AVX-512 VNNI and VL are enabled by the caller.
    unsafe { _mm256_dpwssd_epi32(isum, _mm256_maddubs_epi16(c, x), sc) }
}

/// Four decoded rows with `N` activation rows (`MINS`: the type has mins).
#[inline(always)]
unsafe fn k_decoded_body<const VNNI: bool, const MINS: bool, const N: usize>(
    w: [super::KRow<'_>; R],
    a: [ActRow<'_>; N],
) -> [[f32; R]; N] {
    let cp = a[0].q.len();
    // SAFETY: SSE is enabled by the caller.
    let mut acc = [unsafe { _mm_setzero_ps() }; N];
    let mut b = 0;
    while b * QK_K < cp {
        let chunks = ((cp - b * QK_K) / 32).min(8);
        // SAFETY: block `b`'s `chunks` chunks of 32 values lie inside every activation and every
        // row's codes; its 16 scales, offset scales, mins and steps and its `[d, dmin]` inside
        // their slices (all checked by the caller).
        unsafe {
            // The activations' per-16 sums, 0 past the row.
            let mut bt = [[0i16; 16]; N];
            let bs: [*const i16; N] = std::array::from_fn(|i| {
                if chunks == 8 {
                    a[i].b16.as_ptr().add(16 * b)
                } else {
                    bt[i][..2 * chunks].copy_from_slice(&a[i].b16[16 * b..16 * b + 2 * chunks]);
                    bt[i].as_ptr()
                }
            });
            // Each sum starts at −zero · Σ_k scale_k · Σ x over sub-block k (the codes' offset;
            // the types with mins have none).
            let mut isum = [[_mm256_setzero_si256(); R]; N];
            if !MINS {
                for r in 0..R {
                    let zs = load256(w[r].zs.as_ptr().add(16 * b).cast());
                    for i in 0..N {
                        isum[i][r] = _mm256_sub_epi32(isum[i][r], _mm256_madd_epi16(zs, load256(bs[i].cast())));
                    }
                }
            }
            let v0 = QK_K * b;
            let x = a.map(|a| a.q.as_ptr().add(v0).cast::<u8>());
            let u = w.map(|r| r.u.as_ptr().add(v0));
            let sv = w.map(|r| r.sv.as_ptr().add(16 * b).cast::<u8>());
            // Chunk `t` of 32 values: each row's code load and scale pick serve every row of x.
            // (A macro, not a closure: a closure would not inherit this function's features.)
            macro_rules! chunk {
                ($t:expr) => {{
                    let t = $t;
                    let mut xs = [_mm256_setzero_si256(); N];
                    for i in 0..N {
                        xs[i] = load256(x[i].add(32 * t));
                    }
                    for r in 0..R {
                        let sc = pick(load256(sv[r]), t);
                        let c = load256(u[r].add(32 * t));
                        for i in 0..N {
                            isum[i][r] = if VNNI {
                                scaled_vnni(isum[i][r], c, xs[i], sc)
                            } else {
                                scaled(isum[i][r], c, xs[i], sc)
                            };
                        }
                    }
                }};
            }
            if chunks == 8 {
                // A full block: unrolled, with constant picks.
                for t in 0..8 {
                    chunk!(t);
                }
            } else {
                for t in 0..chunks {
                    chunk!(t);
                }
            }
            let (mut d, mut dmin) = ([0f32; R], [0f32; R]);
            for r in 0..R {
                (d[r], dmin[r]) = (*w[r].dd.get_unchecked(2 * b), *w[r].dd.get_unchecked(2 * b + 1));
            }
            // (Loops, not closures: a closure would not inherit this function's features.)
            for i in 0..N {
                let imin = if MINS {
                    let (bs, mut m) = (load256(bs[i].cast()), [_mm256_setzero_si256(); R]);
                    for r in 0..R {
                        m[r] = _mm256_madd_epi16(load256(w[r].mn.as_ptr().add(16 * b).cast()), bs);
                    }
                    Some(hsum4_epi32(m))
                } else {
                    None
                };
                acc[i] = k_finish(acc[i], hsum4_epi32(isum[i]), imin, d, dmin, *a[i].d16.get_unchecked(16 * b));
            }
        }
        b += 1;
    }
    let mut out = [[0f32; R]; N];
    for i in 0..N {
        // SAFETY: `out[i]` holds four f32.
        unsafe { _mm_storeu_ps(out[i].as_mut_ptr(), acc[i]) };
    }
    out
}

// ---- The k-quant GEMM as outer products (AVX-512 VNNI) ----

/// [`super::dot_k_outer`]: eight decoded rows with a tile of sixteen activation rows
/// ([`super::pack_act_tile`]), the sixteen activation rows in the lanes of a 512-bit vector:
/// per four values and row, one broadcast of the row's four codes and one `vpdpbusd` give the
/// row's sixteen dots (no horizontal sums). Per sub-block of 16 values the four `vpdpbusd`
/// sums are multiplied by the sub-block's scale (`vpmulld`) and added; the codes' offset or
/// the mins come from the activations' per-16 sums by `vpdpwssd`, and each super-block ends
/// with [`k_finish`]'s f32 operations, lane by lane: the same exact integers and the same f32
/// steps, so the bits of [`super::dot_k_ref`]. The caller checks the CPU and every length.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn k_outer(
    mins: bool,
    w: [super::KRow<'_>; super::OUTER_ROWS],
    t: super::ActTile<'_>,
) -> [[f32; super::LANES]; super::OUTER_ROWS] {
    // SAFETY: the caller checked the CPU (AVX-512 VNNI) and every length.
    unsafe {
        if mins {
            k_outer_body::<true>(w, t)
        } else {
            k_outer_body::<false>(w, t)
        }
    }
}

#[inline(always)]
unsafe fn k_outer_body<const MINS: bool>(
    w: [super::KRow<'_>; super::OUTER_ROWS],
    t: super::ActTile<'_>,
) -> [[f32; super::LANES]; super::OUTER_ROWS] {
    const RO: usize = super::OUTER_ROWS;
    let cp = t.xt.len() / super::LANES;
    // SAFETY: AVX-512 is enabled by the caller.
    let mut acc = [unsafe { _mm512_setzero_ps() }; RO];
    // SAFETY: every access is in bounds: block `b`'s `subs` sub-blocks lie inside the tile's
    // codes and every row's codes, their scales, offsets, mins, `[d, dmin]`, the tile's sums
    // and steps inside their slices (checked by the caller); AVX-512 VNNI is enabled.
    unsafe {
        // Natural sub-block order from the even/odd order of `KRow::sv`.
        let nat = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
        let mut b = 0;
        while b * QK_K < cp {
            let subs = ((cp - b * QK_K) / 16).min(16);
            let mut sc = [[0i32; 16]; RO];
            for r in 0..RO {
                let v = _mm512_cvtepi16_epi32(load256(w[r].sv.as_ptr().add(16 * b).cast()));
                _mm512_storeu_si512(sc[r].as_mut_ptr().cast(), _mm512_permutexvar_epi32(nat, v));
            }
            let mut isum = [_mm512_setzero_si512(); RO];
            for s in 0..subs {
                let v0 = QK_K * b + 16 * s;
                let mut x = [_mm512_setzero_si512(); 4];
                for (q, xq) in x.iter_mut().enumerate() {
                    *xq = _mm512_loadu_si512(t.xt.as_ptr().add(super::LANES * (v0 + 4 * q)).cast());
                }
                for r in 0..RO {
                    let u = w[r].u.as_ptr().add(v0);
                    let mut p = _mm512_setzero_si512();
                    for (q, &xq) in x.iter().enumerate() {
                        let c = _mm512_set1_epi32(u.add(4 * q).cast::<i32>().read_unaligned());
                        p = _mm512_dpbusd_epi32(p, c, xq);
                    }
                    let scale = _mm512_set1_epi32(*sc[r].get_unchecked(s));
                    isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(p, scale));
                }
            }
            // The codes' offset (`zero · scale` per sub-block) or the mins, times the
            // activations' per-16 sums: pairs of sub-blocks per `vpdpwssd`.
            let mut imin = [_mm512_setzero_si512(); RO];
            for r in 0..RO {
                let z = if MINS { w[r].mn } else { w[r].zs }.as_ptr().add(16 * b);
                let mut m = _mm512_setzero_si512();
                for j in 0..subs / 2 {
                    let bs = _mm512_loadu_si512(t.bt.as_ptr().add(2 * super::LANES * (8 * b + j)).cast());
                    m = _mm512_dpwssd_epi32(m, bs, _mm512_set1_epi32(z.add(2 * j).cast::<i32>().read_unaligned()));
                }
                if MINS {
                    imin[r] = m;
                } else {
                    isum[r] = _mm512_sub_epi32(isum[r], m);
                }
            }
            let dx = _mm512_loadu_ps(t.dx.as_ptr().add(super::LANES * b));
            for r in 0..RO {
                let (d, dmin) = (*w[r].dd.get_unchecked(2 * b), *w[r].dd.get_unchecked(2 * b + 1));
                let dd = _mm512_mul_ps(_mm512_set1_ps(d), dx);
                acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(dd, _mm512_cvtepi32_ps(isum[r])));
                if MINS {
                    let dm = _mm512_mul_ps(_mm512_set1_ps(dmin), dx);
                    acc[r] = _mm512_sub_ps(acc[r], _mm512_mul_ps(dm, _mm512_cvtepi32_ps(imin[r])));
                }
            }
            b += 1;
        }
        let mut out = [[0f32; super::LANES]; RO];
        for r in 0..RO {
            _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
        }
        out
    }
}

/// [`super::dot_q8_outer`]: two decoded rows (codes `c ^ 0x80`) with a tile of sixteen
/// activation rows in the lanes: per four values and row one broadcast of the row's four
/// biased codes and one `vpdpbusd` that starts from the tile's `−128 · Σ x` gives each lane's
/// exact sum of 4 products, which [`super::dot_q8_x4`] keeps in lane `g mod 8` of its
/// accumulator for group `g` of each 32 values. Each of those eight lanes is a vector of
/// sixteen activation rows here, with the same FMA (`(sw · d16)` rounded first) in the same
/// order, and the same final reduction as `hsum256`: the same bits.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn q8_outer(wq: [&[i8]; 2], sw: [&[f32]; 2], t: super::Q8Tile<'_>) -> [[f32; super::LANES]; 2] {
    let cp = t.xt.len() / super::LANES;
    let mut acc = [[_mm512_setzero_ps(); 8]; 2];
    for c in 0..cp / 32 {
        // SAFETY: chunk `c`'s 32 values lie inside both rows and the tile, its two sub-blocks'
        // scales and steps inside theirs (checked by the caller); AVX-512 VNNI is enabled.
        unsafe {
            let d = [0, 1].map(|h| t.d16.as_ptr().add(super::LANES * (2 * c + h)));
            let mut s = [[_mm512_setzero_ps(); 2]; 2];
            for (r, sr) in s.iter_mut().enumerate() {
                for (h, sh) in sr.iter_mut().enumerate() {
                    *sh = _mm512_mul_ps(_mm512_set1_ps(*sw[r].get_unchecked(2 * c + h)), _mm512_loadu_ps(d[h]));
                }
            }
            for j in 0..8 {
                let g = 8 * c + j;
                let x = _mm512_loadu_si512(t.xt.as_ptr().add(super::LANES * 4 * g).cast());
                let c4 = _mm512_loadu_si512(t.c4.as_ptr().add(super::LANES * g).cast());
                for r in 0..2 {
                    let u = _mm512_set1_epi32(wq[r].as_ptr().add(4 * g).cast::<i32>().read_unaligned());
                    let p = _mm512_dpbusd_epi32(c4, u, x);
                    acc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), s[r][j / 4], acc[r][j]);
                }
            }
        }
    }
    let mut out = [[0f32; super::LANES]; 2];
    for r in 0..2 {
        // `hsum256`'s order: ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)).
        let a = acc[r];
        // SAFETY: AVX-512 is enabled here; `out[r]` holds sixteen f32.
        unsafe {
            let (t0, t1) = (_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[1], a[5]));
            let (t2, t3) = (_mm512_add_ps(a[2], a[6]), _mm512_add_ps(a[3], a[7]));
            let v = _mm512_add_ps(_mm512_add_ps(t0, t2), _mm512_add_ps(t1, t3));
            _mm512_storeu_ps(out[r].as_mut_ptr(), v);
        }
    }
    out
}

/// [`super::dot_b32_outer`]: per block of 32 and row, the eight groups of 4 values'
/// `vpdpbusd`s into two i32 accumulators (even and odd groups: two dependency chains per row)
/// that start from the tile's `−128 · Σ q` and `0`, so that their sum is the block's exact
/// `Σ c · q`; then the block's f32 steps of [`super::b32_block_ref`] in the sixteen lanes (the
/// mins' `Σ q` is `c32 / −128`, exact).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn b32_outer(
    wq: [&[i8]; 4],
    sw: [&[f32]; 4],
    mw: Option<[&[f32]; 4]>,
    t: super::B32Tile<'_>,
) -> [[f32; super::LANES]; 4] {
    let cp = t.xt.len() / super::LANES;
    let mut acc = [_mm512_setzero_ps(); 4];
    for b in 0..cp / 32 {
        // SAFETY: block `b`'s 32 values lie inside the four rows and the tile, its scales, mins
        // and the tile's sums and steps inside theirs (checked by the caller); AVX-512 VNNI is
        // enabled.
        unsafe {
            let c32 = _mm512_loadu_si512(t.c32.as_ptr().add(super::LANES * b).cast());
            let dx = _mm512_loadu_ps(t.dx.as_ptr().add(super::LANES * b));
            let mut s = [[c32, _mm512_setzero_si512()]; 4];
            for j in 0..8 {
                let g = 8 * b + j;
                let x = _mm512_loadu_si512(t.xt.as_ptr().add(super::LANES * 4 * g).cast());
                for r in 0..4 {
                    let u = _mm512_set1_epi32(wq[r].as_ptr().add(4 * g).cast::<i32>().read_unaligned());
                    s[r][j % 2] = _mm512_dpbusd_epi32(s[r][j % 2], u, x);
                }
            }
            let bsum = _mm512_mul_ps(_mm512_cvtepi32_ps(c32), _mm512_set1_ps(-1.0 / 128.0));
            for r in 0..4 {
                let isum = _mm512_cvtepi32_ps(_mm512_add_epi32(s[r][0], s[r][1]));
                let d = _mm512_mul_ps(_mm512_set1_ps(*sw[r].get_unchecked(2 * b)), dx);
                acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(d, isum));
                if let Some(m) = mw {
                    let dm = _mm512_mul_ps(_mm512_set1_ps(*m[r].get_unchecked(2 * b)), dx);
                    acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(dm, bsum));
                }
            }
        }
    }
    let mut out = [[0f32; super::LANES]; 4];
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: `o` holds sixteen f32; AVX-512 is enabled here.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
    }
    out
}

/// [`super::packed::dot_packed`] for q4_0 (`LUT` false) and iq4_nl (`LUT` true: the nibbles
/// through [`KVALUES`], `+ 128`): per pair of blocks one 16-byte load of the eight scales and,
/// per block, one 64-byte load of four rows' codes, whose low and high nibbles meet the
/// activation's values 0–15 and 16–31 broadcast to every 128-bit lane (two `vpdpbusd`s);
/// the four lanes of each row are then added (`unpack` and one shuffle), the codes' offset
/// (`zb · Σ q`, `zb` 8 or 128) taken off, and the two blocks' f32 steps done in block order:
/// the bits of [`super::dot_b32_ref`]. `ahead` bytes further on are prefetched into L2.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn packed_vnni<const LUT: bool>(g: &[u8], a: ActRow<'_>, nb: usize, ahead: usize) -> [f32; R] {
    assert!(g.len() == R * 18 * nb && a.q.len() == 32 * nb && a.d16.len() == 2 * nb && a.b16.len() == 2 * nb);
    let zb: i32 = if LUT { 128 } else { 8 };
    let m4 = _mm512_set1_epi8(0x0F);
    let flip = _mm512_set1_epi8(i8::MIN);
    // SAFETY: KVALUES holds 16 bytes; AVX-512 is enabled here.
    let lut = unsafe { _mm512_broadcast_i32x4(load128(KVALUES.as_ptr().cast())) };
    // Dword 4r (block 2p) and 4r + 1 (block 2p + 1) of each row's 128-bit lane, rows in order.
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    let mut acc = _mm_setzero_ps();
    let (pairs, odd) = (nb / 2, nb % 2 == 1);
    // The offsets below are `packed::slot`'s, written as constants: calling `slot` in this loop
    // cost 27 % (q4_0 from L3); `packed::tests` checks that the two agree.
    for p in 0..pairs + usize::from(odd) {
        let whole = p < pairs;
        // SAFETY: pair `p`'s bytes (144, or 72 for an odd last block) lie inside the group and
        // its 64 (or 32) values inside the activation (checked above); prefetches never fault.
        unsafe {
            let base = g.as_ptr().add(144 * p);
            prefetch(base, ahead, 144);
            let xq = a.q.as_ptr().add(64 * p).cast::<u8>();
            let codes = if whole { 16 } else { 8 };
            let mut s = [_mm512_setzero_si512(); 2];
            for (h, sh) in s.iter_mut().enumerate().take(if whole { 2 } else { 1 }) {
                let v = _mm512_loadu_si512(base.add(codes + 64 * h).cast());
                let (mut lo, mut hi) = (_mm512_and_si512(v, m4), _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4));
                if LUT {
                    lo = _mm512_xor_si512(_mm512_shuffle_epi8(lut, lo), flip);
                    hi = _mm512_xor_si512(_mm512_shuffle_epi8(lut, hi), flip);
                }
                let xl = _mm512_broadcast_i32x4(load128(xq.add(32 * h)));
                let xh = _mm512_broadcast_i32x4(load128(xq.add(32 * h + 16)));
                *sh = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl), hi, xh);
            }
            let u = _mm512_add_epi32(_mm512_unpacklo_epi32(s[0], s[1]), _mm512_unpackhi_epi32(s[0], s[1]));
            let t = _mm512_add_epi32(u, _mm512_shuffle_epi32::<0b01_00_11_10>(u));
            let sums = _mm512_castsi512_si256(_mm512_permutexvar_epi32(idx, t));
            let (b0, b1) = (2 * p, (2 * p + 1).min(nb - 1));
            let off = _mm256_set_m128i(
                _mm_set1_epi32(zb * super::b32_bsum(a.b16, b1)),
                _mm_set1_epi32(zb * super::b32_bsum(a.b16, b0)),
            );
            let isum = _mm256_sub_epi32(sums, off);
            let dx0 = _mm_set1_ps(*a.d16.get_unchecked(2 * b0));
            if whole {
                let dx = _mm256_set_m128(_mm_set1_ps(*a.d16.get_unchecked(2 * b1)), dx0);
                let d = _mm256_cvtph_ps(load128(base));
                let t = _mm256_mul_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(isum));
                acc = _mm_add_ps(_mm_add_ps(acc, _mm256_castps256_ps128(t)), _mm256_extractf128_ps::<1>(t));
            } else {
                let d = _mm_cvtph_ps(_mm_loadl_epi64(base.cast()));
                acc = b32_step(acc, _mm256_castsi256_si128(isum), d, dx0, None);
            }
        }
    }
    let mut out = [0f32; R];
    // SAFETY: `out` holds four f32.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), acc) };
    out
}

#[cfg(test)]
mod tests {
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
        assert_eq!(Spec::of(QType::Q8_0).unwrap().block_bytes, 34);
        assert_eq!(QType::IQ4NL.info().block_bytes, 18);
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

    #[target_feature(enable = "avx2")]
    unsafe fn vector_unpack(p: *const u8, out: *mut u8) {
        use std::arch::x86_64::_mm_storeu_si128;
        // SAFETY: the caller guarantees 16 bytes at `p` and at `out`, and AVX2.
        unsafe { _mm_storeu_si128(out.cast(), super::scales_mins_k4_x(p)) }
    }

    #[test]
    fn scales_and_mins_unpack_like_the_reference() {
        if !crate::simd::Isa::Avx2.is_available() {
            eprintln!("scales_and_mins_unpack_like_the_reference: skipped (no AVX2 here)");
            return;
        }
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200 {
            // The 12-byte field and 4 more bytes (the kernels load 16).
            let mut b = [0u8; 16];
            for v in &mut b {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *v = s as u8;
            }
            let mut got = [0u8; 16];
            // SAFETY: `b` and `got` hold 16 bytes; the CPU has AVX2 (checked above).
            unsafe { vector_unpack(b.as_ptr(), got.as_mut_ptr()) };
            for j in 0..8 {
                let (rs, rm) = scale_min_k4(j, &b[..12]);
                assert_eq!((got[j], got[8 + j]), (rs, rm), "scale and min {j} of {b:?}");
            }
        }
    }
}
