//! The vocabulary on AVX-512 (16 lanes of 512 bits, `__mmask16` masks). [`Avx512`] exists only
//! when the CPU has AVX-512 F/BW/DQ/VL (and the AVX2 level). The 16-lane kernel shape is also
//! run through [`super::emu::Emu<16>`] on hosts without AVX-512.

use std::arch::x86_64::*;

use super::avx2::hsum256;
use super::vocab::Simd;

/// Capability token: AVX-512 F/BW/DQ/VL (plus AVX2/FMA/F16C) are available.
#[derive(Debug, Clone, Copy)]
pub struct Avx512(());

impl Avx512 {
    /// The token, if this CPU supports the level.
    pub fn new() -> Option<Avx512> {
        super::Isa::Avx512.is_available().then_some(Avx512(()))
    }
}

// SAFETY (for every `unsafe` block in this impl): a value of `Avx512` exists only after
// `Avx512::new` confirmed the features, so the intrinsics are available; loads and stores go
// through slices whose length is checked against the lane count first.
#[allow(clippy::undocumented_unsafe_blocks)]
impl Simd for Avx512 {
    const W: usize = 16;
    type F = __m512;
    type I = __m512i;
    type M = __mmask16;

    #[inline(always)]
    fn splat(self, v: f32) -> __m512 {
        unsafe { _mm512_set1_ps(v) }
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> __m512 {
        let s = &s[..16];
        unsafe { _mm512_loadu_ps(s.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: __m512) {
        let s = &mut s[..16];
        unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn abs(self, a: __m512) -> __m512 {
        unsafe { _mm512_abs_ps(a) }
    }
    #[inline(always)]
    fn neg(self, a: __m512) -> __m512 {
        unsafe { _mm512_xor_ps(_mm512_set1_ps(-0.0), a) }
    }
    #[inline(always)]
    fn round_even(self, a: __m512) -> __m512 {
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn round_away(self, a: __m512) -> __m512 {
        // trunc(a), then one step away from zero where the (exact) dropped fraction is >= 0.5.
        unsafe {
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(a);
            let frac = _mm512_abs_ps(_mm512_sub_ps(a, t));
            let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, _mm512_set1_ps(0.5));
            let one = _mm512_or_ps(_mm512_set1_ps(1.0), _mm512_and_ps(a, _mm512_set1_ps(-0.0)));
            _mm512_mask_add_ps(t, up, t, one)
        }
    }
    #[inline(always)]
    fn trunc(self, a: __m512) -> __m512 {
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn lt(self, a: __m512, b: __m512) -> __mmask16 {
        unsafe { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b) }
    }
    #[inline(always)]
    fn le(self, a: __m512, b: __m512) -> __mmask16 {
        unsafe { _mm512_cmp_ps_mask::<_CMP_LE_OQ>(a, b) }
    }
    #[inline(always)]
    fn eq(self, a: __m512, b: __m512) -> __mmask16 {
        unsafe { _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, b) }
    }
    #[inline(always)]
    fn select(self, m: __mmask16, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mask_blend_ps(m, b, a) }
    }
    #[inline(always)]
    fn mand(self, m: __mmask16, n: __mmask16) -> __mmask16 {
        m & n
    }
    #[inline(always)]
    fn mor(self, m: __mmask16, n: __mmask16) -> __mmask16 {
        m | n
    }
    #[inline(always)]
    fn mnot(self, m: __mmask16) -> __mmask16 {
        !m
    }
    #[inline(always)]
    fn bitmask(self, m: __mmask16) -> u64 {
        u64::from(m)
    }
    #[inline(always)]
    fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn hsum(self, a: __m512) -> f32 {
        // The halves added, then [`hsum256`]'s tree (spelled out: LLVM's own reduction order
        // is not a promise, and [`Simd::hsum4`] must give the same bits).
        unsafe { hsum256(_mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps::<1>(a))) }
    }
    #[inline(always)]
    fn hsum4(self, v: [__m512; 4]) -> [f32; 4] {
        // (No closures here: a closure does not inherit the caller's target features, and its
        // intrinsics would become calls.)
        unsafe {
            // [a.q0 + a.q2, a.q1 + a.q3, b.q0 + b.q2, b.q1 + b.q3]: the halves of a and b added.
            let ab = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(v[0], v[1]),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(v[0], v[1]),
            );
            let cd = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(v[2], v[3]),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(v[2], v[3]),
            );
            // Quarter k: vector k's two 128-bit halves added; then the pairs, then the last pair.
            let s = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(ab, cd),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(ab, cd),
            );
            let s = _mm512_add_ps(s, _mm512_permute_ps::<0b01_00_11_10>(s));
            let s = _mm512_add_ps(s, _mm512_movehdup_ps(s));
            let mut out = [0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), s);
            [out[0], out[4], out[8], out[12]]
        }
    }
    #[inline(always)]
    fn hmax(self, a: __m512) -> f32 {
        unsafe { _mm512_reduce_max_ps(a) }
    }
    #[inline(always)]
    fn hmin(self, a: __m512) -> f32 {
        unsafe { _mm512_reduce_min_ps(a) }
    }
    #[inline(always)]
    fn to_i32(self, a: __m512) -> __m512i {
        unsafe { _mm512_cvttps_epi32(a) }
    }
    #[inline(always)]
    fn to_f32(self, a: __m512i) -> __m512 {
        unsafe { _mm512_cvtepi32_ps(a) }
    }
    #[inline(always)]
    fn to_bits(self, a: __m512) -> __m512i {
        unsafe { _mm512_castps_si512(a) }
    }
    #[inline(always)]
    fn from_bits(self, a: __m512i) -> __m512 {
        unsafe { _mm512_castsi512_ps(a) }
    }
    #[inline(always)]
    fn isplat(self, v: i32) -> __m512i {
        unsafe { _mm512_set1_epi32(v) }
    }
    #[inline(always)]
    fn iadd(self, a: __m512i, b: __m512i) -> __m512i {
        unsafe { _mm512_add_epi32(a, b) }
    }
    #[inline(always)]
    fn iand(self, a: __m512i, b: __m512i) -> __m512i {
        unsafe { _mm512_and_si512(a, b) }
    }
    #[inline(always)]
    fn ior(self, a: __m512i, b: __m512i) -> __m512i {
        unsafe { _mm512_or_si512(a, b) }
    }
    #[inline(always)]
    fn imin(self, a: __m512i, b: __m512i) -> __m512i {
        unsafe { _mm512_min_epi32(a, b) }
    }
    #[inline(always)]
    fn imax(self, a: __m512i, b: __m512i) -> __m512i {
        unsafe { _mm512_max_epi32(a, b) }
    }
    #[inline(always)]
    fn shl(self, a: __m512i, n: u32) -> __m512i {
        unsafe { _mm512_sll_epi32(a, _mm_cvtsi32_si128(n as i32)) }
    }
    #[inline(always)]
    fn shr(self, a: __m512i, n: u32) -> __m512i {
        unsafe { _mm512_srl_epi32(a, _mm_cvtsi32_si128(n as i32)) }
    }
    #[inline(always)]
    fn ieq(self, a: __m512i, b: __m512i) -> __mmask16 {
        unsafe { _mm512_cmpeq_epi32_mask(a, b) }
    }
    #[inline(always)]
    fn store_i32(self, s: &mut [i32], v: __m512i) {
        let s = &mut s[..16];
        unsafe { _mm512_storeu_si512(s.as_mut_ptr().cast(), v) }
    }
    #[inline(always)]
    fn load_i32(self, s: &[i32]) -> __m512i {
        let s = &s[..16];
        unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
    }
    #[inline(always)]
    fn store_u8(self, s: &mut [u8], v: __m512i) {
        let s = &mut s[..16];
        unsafe { _mm_storeu_si128(s.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(v)) }
    }
    #[inline(always)]
    fn load_u8(self, s: &[u8]) -> __m512i {
        let s = &s[..16];
        unsafe { _mm512_cvtepu8_epi32(_mm_loadu_si128(s.as_ptr().cast())) }
    }
    #[inline(always)]
    fn load_i8(self, s: &[u8]) -> __m512i {
        let s = &s[..16];
        unsafe { _mm512_cvtepi8_epi32(_mm_loadu_si128(s.as_ptr().cast())) }
    }
}
