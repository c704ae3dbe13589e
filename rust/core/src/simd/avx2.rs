//! The vocabulary on AVX2 (8 lanes of 256 bits). [`Avx2`] exists only when the CPU has
//! AVX2 + FMA + F16C (checked by [`Avx2::new`]).

use std::arch::x86_64::*;

use super::vocab::Simd;

/// Capability token: AVX2, FMA and F16C are available.
#[derive(Debug, Clone, Copy)]
pub struct Avx2(());

impl Avx2 {
    /// The token, if this CPU supports the level.
    pub fn new() -> Option<Avx2> {
        super::Isa::Avx2.is_available().then_some(Avx2(()))
    }
}

/// Sum of the 8 lanes: the two halves added, then pairs within the half.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// [`hsum256`] of four vectors, the same additions in the same order, with the vectors packed
/// two by two: halves of `a` and `b` (then `c`, `d`) added in one vector, the pairs of all four
/// in one, and the last pair in one.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn hsum256x4(v: [__m256; 4]) -> [f32; 4] {
    let ab = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(v[0], v[1]), _mm256_permute2f128_ps::<0x31>(v[0], v[1]));
    let cd = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(v[2], v[3]), _mm256_permute2f128_ps::<0x31>(v[2], v[3]));
    // Per 128-bit lane (a | b): [a0 a1 c0 c1] + [a2 a3 c2 c3] (b, d in the high lane).
    let s = _mm256_add_ps(_mm256_shuffle_ps::<0b01_00_01_00>(ab, cd), _mm256_shuffle_ps::<0b11_10_11_10>(ab, cd));
    let s = _mm256_add_ps(s, _mm256_movehdup_ps(s));
    let mut out = [0f32; 8];
    // SAFETY: `out` holds 8 f32.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    [out[0], out[4], out[2], out[6]]
}

// SAFETY (for every `unsafe` block in this impl): a value of `Avx2` exists only after
// `Avx2::new` confirmed AVX2/FMA/F16C, so the intrinsics are available; loads and stores go
// through slices whose length is checked against the lane count first.
#[allow(clippy::undocumented_unsafe_blocks)]
impl Simd for Avx2 {
    const W: usize = 8;
    type F = __m256;
    type I = __m256i;
    type M = __m256i;

    #[inline(always)]
    fn splat(self, v: f32) -> __m256 {
        unsafe { _mm256_set1_ps(v) }
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> __m256 {
        let s = &s[..8];
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: __m256) {
        let s = &mut s[..8];
        unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn abs(self, a: __m256) -> __m256 {
        unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) }
    }
    #[inline(always)]
    fn neg(self, a: __m256) -> __m256 {
        unsafe { _mm256_xor_ps(_mm256_set1_ps(-0.0), a) }
    }
    #[inline(always)]
    fn round_even(self, a: __m256) -> __m256 {
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn round_away(self, a: __m256) -> __m256 {
        // trunc(a), then step one away from zero where the dropped fraction is >= 0.5 (the
        // subtraction a - trunc(a) is exact).
        unsafe {
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(a);
            let frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0), _mm256_sub_ps(a, t));
            let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
            let one = _mm256_or_ps(_mm256_set1_ps(1.0), _mm256_and_ps(a, _mm256_set1_ps(-0.0)));
            // Blend rather than add a masked zero: t + 0.0 would turn -0.0 into +0.0.
            _mm256_blendv_ps(t, _mm256_add_ps(t, one), up)
        }
    }
    #[inline(always)]
    fn trunc(self, a: __m256) -> __m256 {
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn lt(self, a: __m256, b: __m256) -> __m256i {
        unsafe { _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(a, b)) }
    }
    #[inline(always)]
    fn le(self, a: __m256, b: __m256) -> __m256i {
        unsafe { _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(a, b)) }
    }
    #[inline(always)]
    fn eq(self, a: __m256, b: __m256) -> __m256i {
        unsafe { _mm256_castps_si256(_mm256_cmp_ps::<_CMP_EQ_OQ>(a, b)) }
    }
    #[inline(always)]
    fn select(self, m: __m256i, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_blendv_ps(b, a, _mm256_castsi256_ps(m)) }
    }
    #[inline(always)]
    fn mand(self, m: __m256i, n: __m256i) -> __m256i {
        unsafe { _mm256_and_si256(m, n) }
    }
    #[inline(always)]
    fn mor(self, m: __m256i, n: __m256i) -> __m256i {
        unsafe { _mm256_or_si256(m, n) }
    }
    #[inline(always)]
    fn mnot(self, m: __m256i) -> __m256i {
        unsafe { _mm256_xor_si256(m, _mm256_set1_epi32(-1)) }
    }
    #[inline(always)]
    fn bitmask(self, m: __m256i) -> u64 {
        unsafe { _mm256_movemask_ps(_mm256_castsi256_ps(m)) as u32 as u64 }
    }
    #[inline(always)]
    fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn hsum(self, a: __m256) -> f32 {
        unsafe { hsum256(a) }
    }
    #[inline(always)]
    fn hsum4(self, v: [__m256; 4]) -> [f32; 4] {
        unsafe { hsum256x4(v) }
    }
    #[inline(always)]
    fn hmax(self, a: __m256) -> f32 {
        unsafe {
            let m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m));
            _mm_cvtss_f32(m)
        }
    }
    #[inline(always)]
    fn hmin(self, a: __m256) -> f32 {
        unsafe {
            let m = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_min_ss(m, _mm_shuffle_ps::<0b01>(m, m));
            _mm_cvtss_f32(m)
        }
    }
    #[inline(always)]
    fn to_i32(self, a: __m256) -> __m256i {
        unsafe { _mm256_cvttps_epi32(a) }
    }
    #[inline(always)]
    fn to_f32(self, a: __m256i) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(a) }
    }
    #[inline(always)]
    fn to_bits(self, a: __m256) -> __m256i {
        unsafe { _mm256_castps_si256(a) }
    }
    #[inline(always)]
    fn from_bits(self, a: __m256i) -> __m256 {
        unsafe { _mm256_castsi256_ps(a) }
    }
    #[inline(always)]
    fn isplat(self, v: i32) -> __m256i {
        unsafe { _mm256_set1_epi32(v) }
    }
    #[inline(always)]
    fn iadd(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_add_epi32(a, b) }
    }
    #[inline(always)]
    fn iand(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_and_si256(a, b) }
    }
    #[inline(always)]
    fn ior(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_or_si256(a, b) }
    }
    #[inline(always)]
    fn imin(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_min_epi32(a, b) }
    }
    #[inline(always)]
    fn imax(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_max_epi32(a, b) }
    }
    #[inline(always)]
    fn shl(self, a: __m256i, n: u32) -> __m256i {
        unsafe { _mm256_sll_epi32(a, _mm_cvtsi32_si128(n as i32)) }
    }
    #[inline(always)]
    fn shr(self, a: __m256i, n: u32) -> __m256i {
        unsafe { _mm256_srl_epi32(a, _mm_cvtsi32_si128(n as i32)) }
    }
    #[inline(always)]
    fn ieq(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_cmpeq_epi32(a, b) }
    }
    #[inline(always)]
    fn store_i32(self, s: &mut [i32], v: __m256i) {
        let s = &mut s[..8];
        unsafe { _mm256_storeu_si256(s.as_mut_ptr().cast(), v) }
    }
    #[inline(always)]
    fn load_i32(self, s: &[i32]) -> __m256i {
        let s = &s[..8];
        unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
    }
    #[inline(always)]
    fn store_u8(self, s: &mut [u8], v: __m256i) {
        let s = &mut s[..8];
        unsafe {
            // Keep the low byte of each i32 lane, gather the 8 bytes into the low 64 bits.
            let idx = _mm256_setr_epi8(
                0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, //
                0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
            );
            let b = _mm256_shuffle_epi8(v, idx);
            let lo = _mm256_castsi256_si128(b);
            let hi = _mm256_extracti128_si256::<1>(b);
            let packed = _mm_unpacklo_epi32(lo, hi);
            _mm_storel_epi64(s.as_mut_ptr().cast(), packed)
        }
    }
    #[inline(always)]
    fn load_u8(self, s: &[u8]) -> __m256i {
        let s = &s[..8];
        unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(s.as_ptr().cast())) }
    }
    #[inline(always)]
    fn load_i8(self, s: &[u8]) -> __m256i {
        let s = &s[..8];
        unsafe { _mm256_cvtepi8_epi32(_mm_loadl_epi64(s.as_ptr().cast())) }
    }
}
