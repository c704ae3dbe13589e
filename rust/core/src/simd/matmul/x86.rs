//! x86-64 kernels of the matmul: the int8 dot (AVX2 `vpmaddubsw`, AVX-512BW, AVX-512 VNNI
//! `vpdpbusd`) and the f32 FMA dot. The public functions check the CPU (a cached feature test)
//! and call the `#[target_feature]` bodies.

use std::arch::x86_64::*;

use super::bytes::{self, Bytes32};
use super::QS;
use crate::qtype::{AffineSpec, QType};
use crate::simd::avx2::hsum256;
use crate::simd::Isa;

/// Exact i32 sums of 4 consecutive products `w · x` of 32 i8 pairs (lanes 0–3 cover the first
/// 16 values). `|w| <= 128`, `x` in −127..=127, so the `vpmaddubsw` pair sums (at most
/// 2 · 128 · 127) never saturate.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn isum32(w: __m256i, x: __m256i) -> __m256i {
    let aw = _mm256_sign_epi8(w, w);
    let sx = _mm256_sign_epi8(x, w);
    _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn load256(s: &[i8]) -> __m256i {
    let s = &s[..32];
    // SAFETY: `s` holds 32 bytes (checked by the slice above); unaligned load.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn load128f(s: &[f32]) -> __m128 {
    let s = &s[..4];
    // SAFETY: `s` holds 4 f32 (checked by the slice above); unaligned load.
    unsafe { _mm_loadu_ps(s.as_ptr()) }
}

/// The 32-value tail step shared by the AVX2 and AVX-512 dots: sub-blocks `k`, `k + 1`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn tail32(wq: &[i8], sw: &[f32], xq: &[i8], d16: &[f32], i: usize, k: usize, acc: __m256) -> __m256 {
    let (s0, s1) = (sw[k] * d16[k], sw[k + 1] * d16[k + 1]);
    let s = _mm256_setr_ps(s0, s0, s0, s0, s1, s1, s1, s1);
    let p = isum32(load256(&wq[i..]), load256(&xq[i..]));
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc)
}

#[target_feature(enable = "avx2,fma")]
fn dot_q8_avx2_tf(wq: &[i8], sw: &[f32], xq: &[i8], d16: &[f32]) -> f32 {
    let n = wq.len();
    let lo = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    let hi = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (mut i, mut k) = (0, 0);
    while i + 64 <= n {
        let s = _mm256_castps128_ps256(_mm_mul_ps(load128f(&sw[k..]), load128f(&d16[k..])));
        let p0 = isum32(load256(&wq[i..]), load256(&xq[i..]));
        let p1 = isum32(load256(&wq[i + 32..]), load256(&xq[i + 32..]));
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_permutevar8x32_ps(s, lo), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_permutevar8x32_ps(s, hi), a1);
        i += 64;
        k += 64 / QS;
    }
    if i < n {
        a0 = tail32(wq, sw, xq, d16, i, k, a0);
    }
    hsum256(_mm256_add_ps(a0, a1))
}

/// [`super::dot_q8`] with AVX2. Panics without AVX2/FMA.
pub fn dot_q8_avx2(wq: &[i8], sw: &[f32], xq: &[i8], d16: &[f32]) -> f32 {
    assert!(Isa::Avx2.is_available(), "AVX2 kernel on a CPU without AVX2");
    // SAFETY: AVX2 and FMA are available (checked above).
    unsafe { dot_q8_avx2_tf(wq, sw, xq, d16) }
}

#[target_feature(enable = "avx2,fma")]
fn dot_q8_x4_avx2_tf(wq: [&[i8]; 4], sw: [&[f32]; 4], xq: &[i8], d16: &[f32]) -> [f32; 4] {
    let n = xq.len();
    let lo = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    let hi = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
    let mut acc = [_mm256_setzero_ps(); 4];
    let (mut i, mut k) = (0, 0);
    while i + 64 <= n {
        let (x0, x1) = (load256(&xq[i..]), load256(&xq[i + 32..]));
        let d = load128f(&d16[k..]);
        for r in 0..4 {
            let s = _mm256_castps128_ps256(_mm_mul_ps(load128f(&sw[r][k..]), d));
            let p0 = isum32(load256(&wq[r][i..]), x0);
            let p1 = isum32(load256(&wq[r][i + 32..]), x1);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_permutevar8x32_ps(s, lo), acc[r]);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_permutevar8x32_ps(s, hi), acc[r]);
        }
        i += 64;
        k += 64 / QS;
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        if i < n {
            acc[r] = tail32(wq[r], sw[r], xq, d16, i, k, acc[r]);
        }
        out[r] = hsum256(acc[r]);
    }
    out
}

/// [`super::dot_q8_x4`] with AVX2: one activation row against four weight rows, each
/// activation vector loaded once. Panics without AVX2/FMA.
pub fn dot_q8_x4_avx2(wq: [&[i8]; 4], sw: [&[f32]; 4], xq: &[i8], d16: &[f32]) -> [f32; 4] {
    assert!(Isa::Avx2.is_available(), "AVX2 kernel on a CPU without AVX2");
    // SAFETY: AVX2 and FMA are available (checked above).
    unsafe { dot_q8_x4_avx2_tf(wq, sw, xq, d16) }
}

/// The four i32 sums of the 8 lanes of each of `v` (exact: every sum fits in i32).
#[inline(always)]
pub(super) unsafe fn hsum4_epi32(v: [__m256i; 4]) -> __m128i {
    // SAFETY: AVX2 is enabled by the caller.
    unsafe {
        let c = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        _mm_add_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256::<1>(c))
    }
}

/// One 32-value block's f32 step of four rows' b32 dots ([`super::b32_block_ref`]), row `r`
/// in lane `r`: `acc + (d · dx) · isum`, then with `min = (m, bsum)` `+ (m · dx) · bsum`, every
/// product and sum rounded on its own (no FMA), as the reference rounds them.
#[inline(always)]
pub(super) unsafe fn b32_step(
    acc: __m128,
    isum: __m128i,
    d: __m128,
    dx: __m128,
    min: Option<(__m128, __m128)>,
) -> __m128 {
    // SAFETY: SSE2 is part of x86-64.
    unsafe {
        let acc = _mm_add_ps(acc, _mm_mul_ps(_mm_mul_ps(d, dx), _mm_cvtepi32_ps(isum)));
        match min {
            Some((m, bsum)) => _mm_add_ps(acc, _mm_mul_ps(_mm_mul_ps(m, dx), bsum)),
            None => acc,
        }
    }
}

#[target_feature(enable = "avx2,fma")]
fn dot_b32_x4_avx2_tf(wq: [&[i8]; 4], sw: [&[f32]; 4], mw: Option<[&[f32]; 4]>, act: super::ActRow<'_>) -> [f32; 4] {
    let mut acc = _mm_setzero_ps();
    for b in 0..act.q.len() / 32 {
        let x = load256(&act.q[32 * b..]);
        let mut p = [_mm256_setzero_si256(); 4];
        for r in 0..4 {
            p[r] = isum32(load256(&wq[r][32 * b..]), x);
        }
        let k = 2 * b;
        let d = _mm_setr_ps(sw[0][k], sw[1][k], sw[2][k], sw[3][k]);
        let bsum = _mm_set1_ps(super::b32_bsum(act.b16, b) as f32);
        let min = mw.map(|m| (_mm_setr_ps(m[0][k], m[1][k], m[2][k], m[3][k]), bsum));
        // SAFETY: AVX2 is enabled here.
        acc = unsafe { b32_step(acc, hsum4_epi32(p), d, _mm_set1_ps(act.d16[k]), min) };
    }
    let mut out = [0f32; 4];
    // SAFETY: `out` holds four f32.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), acc) };
    out
}

/// [`super::dot_b32_x4`] with AVX2 (at the AVX2 and AVX-512 levels). Panics without AVX2/FMA.
pub fn dot_b32_x4_avx2(wq: [&[i8]; 4], sw: [&[f32]; 4], mw: Option<[&[f32]; 4]>, act: super::ActRow<'_>) -> [f32; 4] {
    assert!(Isa::Avx2.is_available(), "AVX2 kernel on a CPU without AVX2");
    // SAFETY: AVX2 and FMA are available (checked above).
    unsafe { dot_b32_x4_avx2_tf(wq, sw, mw, act) }
}

/// The AVX-512 int8 dot; `$isum` turns |w| (u8) and sign-adjusted x (i8) into 16 i32 lanes of
/// 4-product sums.
macro_rules! dot_q8_512 {
    ($name:ident, $features:literal, $isum:expr) => {
        #[target_feature(enable = $features)]
        fn $name(wq: &[i8], sw: &[f32], xq: &[i8], d16: &[f32]) -> f32 {
            let n = wq.len();
            let idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
            let mut acc = _mm512_setzero_ps();
            let (mut i, mut k) = (0, 0);
            while i + 64 <= n {
                let (w, x) = (&wq[i..i + 64], &xq[i..i + 64]);
                // SAFETY: `w` and `x` hold 64 bytes each (sliced above); unaligned loads.
                let (w, x) = unsafe { (_mm512_loadu_si512(w.as_ptr().cast()), _mm512_loadu_si512(x.as_ptr().cast())) };
                let aw = _mm512_abs_epi8(w);
                let sx = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
                let p: __m512i = $isum(aw, sx);
                let s4 = _mm_mul_ps(load128f(&sw[k..]), load128f(&d16[k..]));
                let s = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(s4));
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), s, acc);
                i += 64;
                k += 64 / QS;
            }
            let mut tail = _mm256_setzero_ps();
            if i < n {
                tail = tail32(wq, sw, xq, d16, i, k, tail);
            }
            _mm512_reduce_add_ps(acc) + hsum256(tail)
        }
    };
}

dot_q8_512!(dot_q8_avx512_tf, "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl", |aw, sx| {
    _mm512_madd_epi16(_mm512_maddubs_epi16(aw, sx), _mm512_set1_epi16(1))
});
dot_q8_512!(dot_q8_vnni_tf, "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni", |aw, sx| {
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), aw, sx)
});

/// [`super::dot_q8`] with AVX-512BW (`vpmaddubsw`). Panics without AVX-512.
pub fn dot_q8_avx512_bw(wq: &[i8], sw: &[f32], xq: &[i8], d16: &[f32]) -> f32 {
    assert!(Isa::Avx512.is_available(), "AVX-512 kernel on a CPU without AVX-512");
    // SAFETY: the AVX-512 F/BW/DQ/VL level (which includes AVX2/FMA) is available.
    unsafe { dot_q8_avx512_tf(wq, sw, xq, d16) }
}

/// [`super::dot_q8`] with AVX-512 VNNI (`vpdpbusd`). Panics without it.
pub fn dot_q8_avx512_vnni(wq: &[i8], sw: &[f32], xq: &[i8], d16: &[f32]) -> f32 {
    assert!(super::has_avx512_vnni(), "AVX-512 VNNI kernel on a CPU without it");
    // SAFETY: AVX-512 F/BW/DQ/VL and VNNI are available.
    unsafe { dot_q8_vnni_tf(wq, sw, xq, d16) }
}

/// [`super::dot_q8`] at the AVX-512 level: VNNI where the CPU has it.
pub fn dot_q8_avx512(wq: &[i8], sw: &[f32], xq: &[i8], d16: &[f32]) -> f32 {
    if super::has_avx512_vnni() {
        dot_q8_avx512_vnni(wq, sw, xq, d16)
    } else {
        dot_q8_avx512_bw(wq, sw, xq, d16)
    }
}

/// `Σ` of the 8 i32 lanes (exact: the caller's sums cannot overflow).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn load256u(s: &[u8]) -> __m256i {
    let s = &s[..32];
    // SAFETY: `s` holds 32 bytes (checked by the slice above); unaligned load.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// Exact i32 lanes of `Σ q · (code − 128)` over 32 stored int8 codes (u8) and activation codes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn isum32_codes(w: &[u8], x: __m256i) -> __m256i {
    isum32(_mm256_xor_si256(load256u(w), _mm256_set1_epi8(i8::MIN)), x)
}

/// The W8A8 integer dot of `R` weight rows with one activation row, AVX2: 32 values per
/// step, one activation load for the `R` rows, i32 lane accumulators, a scalar tail.
#[target_feature(enable = "avx2,fma")]
fn dot_i8_avx2_tf<const R: usize>(w: [&[u8]; R], q: &[i8]) -> [i32; R] {
    let n = q.len();
    let mut acc = [_mm256_setzero_si256(); R];
    let mut i = 0;
    while i + 32 <= n {
        let x = load256(&q[i..]);
        for r in 0..R {
            acc[r] = _mm256_add_epi32(acc[r], isum32_codes(&w[r][i..], x));
        }
        i += 32;
    }
    let mut out = [0i32; R];
    for r in 0..R {
        out[r] = hsum_epi32(acc[r]) + super::w8a8::dot_i8_ref(&w[r][i..], &q[i..]);
    }
    out
}

/// [`super::w8a8::dot_i8`] with AVX2. Panics without AVX2/FMA.
pub fn dot_i8_avx2(w: &[u8], q: &[i8]) -> i32 {
    assert!(Isa::Avx2.is_available(), "AVX2 kernel on a CPU without AVX2");
    // SAFETY: AVX2 and FMA are available (checked above).
    unsafe { dot_i8_avx2_tf([w], q)[0] }
}

/// [`super::w8a8::dot_i8_x4`] with AVX2. Panics without AVX2/FMA.
pub fn dot_i8_x4_avx2(w: [&[u8]; 4], q: &[i8]) -> [i32; 4] {
    assert!(Isa::Avx2.is_available(), "AVX2 kernel on a CPU without AVX2");
    // SAFETY: AVX2 and FMA are available (checked above).
    unsafe { dot_i8_avx2_tf(w, q) }
}

#[target_feature(enable = "avx2,fma")]
fn dot_i8_4x2_avx2_tf(w: [&[u8]; 4], q: [&[i8]; 2]) -> [[i32; 2]; 4] {
    let n = q[0].len();
    let (flip, ones) = (_mm256_set1_epi8(i8::MIN), _mm256_set1_epi16(1));
    let mut acc = [[_mm256_setzero_si256(); 2]; 4];
    let mut i = 0;
    while i + 32 <= n {
        let x = [load256(&q[0][i..]), load256(&q[1][i..])];
        for r in 0..4 {
            let c = _mm256_xor_si256(load256u(&w[r][i..]), flip);
            let ac = _mm256_sign_epi8(c, c);
            for k in 0..2 {
                let p = _mm256_maddubs_epi16(ac, _mm256_sign_epi8(x[k], c));
                acc[r][k] = _mm256_add_epi32(acc[r][k], _mm256_madd_epi16(p, ones));
            }
        }
        i += 32;
    }
    let mut out = [[0i32; 2]; 4];
    for r in 0..4 {
        for k in 0..2 {
            out[r][k] = hsum_epi32(acc[r][k]) + super::w8a8::dot_i8_ref(&w[r][i..], &q[k][i..]);
        }
    }
    out
}

/// [`super::w8a8::dot_i8_4x2`] with AVX2: each weight vector's |c| serves two activation rows,
/// each activation vector four weight rows. Panics without AVX2/FMA.
pub fn dot_i8_4x2_avx2(w: [&[u8]; 4], q: [&[i8]; 2]) -> [[i32; 2]; 4] {
    assert!(Isa::Avx2.is_available(), "AVX2 kernel on a CPU without AVX2");
    // SAFETY: AVX2 and FMA are available (checked above).
    unsafe { dot_i8_4x2_avx2_tf(w, q) }
}

/// The W8A8 integer dot of `R` weight rows at the AVX-512 level, 64 values per step; `$acc`
/// adds the 4-product sums of |c| (u8) and sign-adjusted q (i8) to 16 i32 lanes. A 32-value
/// AVX2 step and a scalar tail finish the row.
macro_rules! dot_i8_512 {
    ($name:ident, $features:literal, $acc:expr) => {
        #[target_feature(enable = $features)]
        fn $name<const R: usize>(w: [&[u8]; R], q: &[i8]) -> [i32; R] {
            let n = q.len();
            let flip = _mm512_set1_epi8(i8::MIN);
            let mut acc = [_mm512_setzero_si512(); R];
            let mut i = 0;
            while i + 64 <= n {
                let x = &q[i..i + 64];
                // SAFETY: `x` holds 64 bytes (sliced above); unaligned load.
                let x = unsafe { _mm512_loadu_si512(x.as_ptr().cast()) };
                for r in 0..R {
                    let c = &w[r][i..i + 64];
                    // SAFETY: `c` holds 64 bytes (sliced above); unaligned load.
                    let c = _mm512_xor_si512(unsafe { _mm512_loadu_si512(c.as_ptr().cast()) }, flip);
                    let sx = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(c), _mm512_setzero_si512(), x);
                    acc[r] = $acc(acc[r], _mm512_abs_epi8(c), sx);
                }
                i += 64;
            }
            let mut out = [0i32; R];
            for r in 0..R {
                let mut t = _mm512_reduce_add_epi32(acc[r]);
                let mut j = i;
                if j + 32 <= n {
                    t += hsum_epi32(isum32_codes(&w[r][j..], load256(&q[j..])));
                    j += 32;
                }
                out[r] = t + super::w8a8::dot_i8_ref(&w[r][j..], &q[j..]);
            }
            out
        }
    };
}

dot_i8_512!(dot_i8_avx512_tf, "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl", |acc, aw, sx| {
    _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(aw, sx), _mm512_set1_epi16(1)))
});
dot_i8_512!(dot_i8_vnni_tf, "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni", |acc, aw, sx| {
    _mm512_dpbusd_epi32(acc, aw, sx)
});

/// [`super::w8a8::dot_i8`] with AVX-512BW (`vpmaddubsw`). Panics without AVX-512.
pub fn dot_i8_avx512_bw(w: &[u8], q: &[i8]) -> i32 {
    assert!(Isa::Avx512.is_available(), "AVX-512 kernel on a CPU without AVX-512");
    // SAFETY: the AVX-512 F/BW/DQ/VL level (which includes AVX2/FMA) is available.
    unsafe { dot_i8_avx512_tf([w], q)[0] }
}

/// [`super::w8a8::dot_i8`] with AVX-512 VNNI (`vpdpbusd`). Panics without it.
pub fn dot_i8_avx512_vnni(w: &[u8], q: &[i8]) -> i32 {
    assert!(super::has_avx512_vnni(), "AVX-512 VNNI kernel on a CPU without it");
    // SAFETY: AVX-512 F/BW/DQ/VL and VNNI are available.
    unsafe { dot_i8_vnni_tf([w], q)[0] }
}

/// [`super::w8a8::dot_i8`] at the AVX-512 level: VNNI where the CPU has it.
pub fn dot_i8_avx512(w: &[u8], q: &[i8]) -> i32 {
    dot_i8_avx512_rows([w], q)[0]
}

/// [`super::w8a8::dot_i8_x4`] at the AVX-512 level: VNNI where the CPU has it.
pub fn dot_i8_x4_avx512(w: [&[u8]; 4], q: &[i8]) -> [i32; 4] {
    dot_i8_avx512_rows(w, q)
}

fn dot_i8_avx512_rows<const R: usize>(w: [&[u8]; R], q: &[i8]) -> [i32; R] {
    assert!(Isa::Avx512.is_available(), "AVX-512 kernel on a CPU without AVX-512");
    if super::has_avx512_vnni() {
        // SAFETY: AVX-512 F/BW/DQ/VL and VNNI are available (checked).
        unsafe { dot_i8_vnni_tf(w, q) }
    } else {
        // SAFETY: the AVX-512 F/BW/DQ/VL level is available (checked above).
        unsafe { dot_i8_avx512_tf(w, q) }
    }
}

/// Byte `j` of the result is `val` if bit `j` of `m` is set, else 0 (high bits stored one per
/// bit: q5 and q3 codes). The caller has AVX2.
#[inline(always)]
pub(super) unsafe fn bit_bytes(m: u32, val: i8) -> __m256i {
    // SAFETY: AVX2 is enabled by the caller.
    unsafe {
        // Byte j gets byte j / 8 of m, then its bit j % 8 is tested.
        let v = _mm256_set1_epi32(m as i32);
        let idx = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        );
        let sel = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let x = _mm256_and_si256(_mm256_shuffle_epi8(v, idx), sel);
        _mm256_and_si256(_mm256_cmpeq_epi8(x, sel), _mm256_set1_epi8(val))
    }
}

/// [`Bytes32`] on one AVX2 register (also used at the AVX-512 level, which includes AVX2).
#[derive(Debug, Clone, Copy)]
pub struct Avx2Bytes(());

// SAFETY (for every `unsafe` block in this impl): a value of `Avx2Bytes` is only made by
// `decode_avx2` after checking that the CPU has AVX2; loads and stores go through slices whose
// length is checked first.
#[allow(clippy::undocumented_unsafe_blocks)]
impl Bytes32 for Avx2Bytes {
    type V = __m256i;

    #[inline(always)]
    fn load(self, s: &[u8]) -> __m256i {
        let s = &s[..32];
        unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
    }
    #[inline(always)]
    fn nibbles(self, s: &[u8]) -> __m256i {
        let s = &s[..16];
        unsafe {
            let x = _mm_loadu_si128(s.as_ptr().cast());
            let m = _mm_set1_epi8(0x0F);
            _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16::<4>(x), m), _mm_and_si128(x, m))
        }
    }
    #[inline(always)]
    fn nibbles_interleaved(self, s: &[u8]) -> __m256i {
        let s = &s[..16];
        unsafe {
            let x = _mm_loadu_si128(s.as_ptr().cast());
            let m = _mm_set1_epi8(0x0F);
            let (lo, hi) = (_mm_and_si128(x, m), _mm_and_si128(_mm_srli_epi16::<4>(x), m));
            _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi))
        }
    }
    #[inline(always)]
    fn bits(self, m: u32) -> __m256i {
        unsafe { bit_bytes(m, 1) }
    }
    #[inline(always)]
    fn shl(self, v: __m256i, n: u32) -> __m256i {
        // 16-bit shifts: no bit crosses into the next byte because each result is < 256.
        unsafe { _mm256_sll_epi16(v, _mm_cvtsi32_si128(n as i32)) }
    }
    #[inline(always)]
    fn add(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_add_epi8(a, b) }
    }
    #[inline(always)]
    fn or(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_or_si256(a, b) }
    }
    #[inline(always)]
    fn splat(self, v: u8) -> __m256i {
        unsafe { _mm256_set1_epi8(v as i8) }
    }
    #[inline(always)]
    fn lut16(self, v: __m256i, table: &[i8; 16]) -> __m256i {
        unsafe { _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128(table.as_ptr().cast())), v) }
    }
    #[inline(always)]
    fn store(self, v: __m256i, out: &mut [i8]) {
        let out = &mut out[..32];
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) }
    }
    #[inline(always)]
    fn f16(self, h: u16) -> f32 {
        // F16C is part of the AVX2 level (`Isa::Avx2` requires it).
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h)))) }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
fn decode_avx2_tf(
    qtype: QType,
    spec: Option<AffineSpec>,
    cols: usize,
    src: &[u8],
    codes: &mut [i8],
    sw: &mut [f32],
    mw: &mut [f32],
) {
    bytes::decode(Avx2Bytes(()), qtype, spec, cols, src, codes, sw, mw)
}

/// [`super::decode_row`] with AVX2. Panics without AVX2.
#[allow(clippy::too_many_arguments)]
pub fn decode_avx2(
    qtype: QType,
    spec: Option<AffineSpec>,
    cols: usize,
    src: &[u8],
    codes: &mut [i8],
    sw: &mut [f32],
    mw: &mut [f32],
) {
    assert!(Isa::Avx2.is_available(), "AVX2 kernel on a CPU without AVX2");
    // SAFETY: AVX2, FMA and F16C are available (the AVX2 level, checked above).
    unsafe { decode_avx2_tf(qtype, spec, cols, src, codes, sw, mw) }
}
