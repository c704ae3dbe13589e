//! The vocabulary on AArch64 Advanced SIMD (4 lanes of 128 bits). NEON is part of the aarch64
//! base ISA, so [`Neon::new`] always succeeds there; tests run it under qemu-user
//! (`make test-neon`).

use std::arch::aarch64::*;

use super::vocab::Simd;

/// Capability token: AArch64 Advanced SIMD.
#[derive(Debug, Clone, Copy)]
pub struct Neon(());

impl Neon {
    /// The token (always available on aarch64).
    pub fn new() -> Option<Neon> {
        Some(Neon(()))
    }
}

// SAFETY (for every `unsafe` block in this impl): NEON is mandatory on aarch64; loads and
// stores go through slices whose length is checked against the lane count first.
#[allow(clippy::undocumented_unsafe_blocks)]
impl Simd for Neon {
    const W: usize = 4;
    type F = float32x4_t;
    type I = int32x4_t;
    type M = uint32x4_t;

    #[inline(always)]
    fn splat(self, v: f32) -> float32x4_t {
        unsafe { vdupq_n_f32(v) }
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> float32x4_t {
        let s = &s[..4];
        unsafe { vld1q_f32(s.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: float32x4_t) {
        let s = &mut s[..4];
        unsafe { vst1q_f32(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn add(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vaddq_f32(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vsubq_f32(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vmulq_f32(a, b) }
    }
    #[inline(always)]
    fn div(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vdivq_f32(a, b) }
    }
    #[inline(always)]
    fn min(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // a < b ? a : b, the same tie rule as x86 (FMIN would order -0 below +0).
        unsafe { vbslq_f32(vcltq_f32(a, b), a, b) }
    }
    #[inline(always)]
    fn max(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vbslq_f32(vcgtq_f32(a, b), a, b) }
    }
    #[inline(always)]
    fn abs(self, a: float32x4_t) -> float32x4_t {
        unsafe { vabsq_f32(a) }
    }
    #[inline(always)]
    fn neg(self, a: float32x4_t) -> float32x4_t {
        unsafe { vnegq_f32(a) }
    }
    #[inline(always)]
    fn round_even(self, a: float32x4_t) -> float32x4_t {
        unsafe { vrndnq_f32(a) }
    }
    #[inline(always)]
    fn round_away(self, a: float32x4_t) -> float32x4_t {
        unsafe { vrndaq_f32(a) }
    }
    #[inline(always)]
    fn trunc(self, a: float32x4_t) -> float32x4_t {
        unsafe { vrndq_f32(a) }
    }
    #[inline(always)]
    fn lt(self, a: float32x4_t, b: float32x4_t) -> uint32x4_t {
        unsafe { vcltq_f32(a, b) }
    }
    #[inline(always)]
    fn le(self, a: float32x4_t, b: float32x4_t) -> uint32x4_t {
        unsafe { vcleq_f32(a, b) }
    }
    #[inline(always)]
    fn eq(self, a: float32x4_t, b: float32x4_t) -> uint32x4_t {
        unsafe { vceqq_f32(a, b) }
    }
    #[inline(always)]
    fn select(self, m: uint32x4_t, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vbslq_f32(m, a, b) }
    }
    #[inline(always)]
    fn mand(self, m: uint32x4_t, n: uint32x4_t) -> uint32x4_t {
        unsafe { vandq_u32(m, n) }
    }
    #[inline(always)]
    fn mor(self, m: uint32x4_t, n: uint32x4_t) -> uint32x4_t {
        unsafe { vorrq_u32(m, n) }
    }
    #[inline(always)]
    fn mnot(self, m: uint32x4_t) -> uint32x4_t {
        unsafe { vmvnq_u32(m) }
    }
    #[inline(always)]
    fn bitmask(self, m: uint32x4_t) -> u64 {
        unsafe {
            let bits = vandq_u32(m, vld1q_u32([1u32, 2, 4, 8].as_ptr()));
            u64::from(vaddvq_u32(bits))
        }
    }
    #[inline(always)]
    fn fma(self, a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        unsafe { vfmaq_f32(c, a, b) }
    }
    #[inline(always)]
    fn hsum(self, a: float32x4_t) -> f32 {
        unsafe { vaddvq_f32(a) }
    }
    #[inline(always)]
    fn hmax(self, a: float32x4_t) -> f32 {
        unsafe {
            let m = self.max(a, vextq_f32::<2>(a, a));
            let m = self.max(m, vextq_f32::<1>(m, m));
            vgetq_lane_f32::<0>(m)
        }
    }
    #[inline(always)]
    fn hmin(self, a: float32x4_t) -> f32 {
        unsafe {
            let m = self.min(a, vextq_f32::<2>(a, a));
            let m = self.min(m, vextq_f32::<1>(m, m));
            vgetq_lane_f32::<0>(m)
        }
    }
    #[inline(always)]
    fn to_i32(self, a: float32x4_t) -> int32x4_t {
        unsafe { vcvtq_s32_f32(a) }
    }
    #[inline(always)]
    fn to_f32(self, a: int32x4_t) -> float32x4_t {
        unsafe { vcvtq_f32_s32(a) }
    }
    #[inline(always)]
    fn to_bits(self, a: float32x4_t) -> int32x4_t {
        unsafe { vreinterpretq_s32_f32(a) }
    }
    #[inline(always)]
    fn from_bits(self, a: int32x4_t) -> float32x4_t {
        unsafe { vreinterpretq_f32_s32(a) }
    }
    #[inline(always)]
    fn isplat(self, v: i32) -> int32x4_t {
        unsafe { vdupq_n_s32(v) }
    }
    #[inline(always)]
    fn iadd(self, a: int32x4_t, b: int32x4_t) -> int32x4_t {
        unsafe { vaddq_s32(a, b) }
    }
    #[inline(always)]
    fn iand(self, a: int32x4_t, b: int32x4_t) -> int32x4_t {
        unsafe { vandq_s32(a, b) }
    }
    #[inline(always)]
    fn ior(self, a: int32x4_t, b: int32x4_t) -> int32x4_t {
        unsafe { vorrq_s32(a, b) }
    }
    #[inline(always)]
    fn imin(self, a: int32x4_t, b: int32x4_t) -> int32x4_t {
        unsafe { vminq_s32(a, b) }
    }
    #[inline(always)]
    fn imax(self, a: int32x4_t, b: int32x4_t) -> int32x4_t {
        unsafe { vmaxq_s32(a, b) }
    }
    #[inline(always)]
    fn shl(self, a: int32x4_t, n: u32) -> int32x4_t {
        unsafe { vreinterpretq_s32_u32(vshlq_u32(vreinterpretq_u32_s32(a), vdupq_n_s32(n as i32))) }
    }
    #[inline(always)]
    fn shr(self, a: int32x4_t, n: u32) -> int32x4_t {
        unsafe { vreinterpretq_s32_u32(vshlq_u32(vreinterpretq_u32_s32(a), vdupq_n_s32(-(n as i32)))) }
    }
    #[inline(always)]
    fn ieq(self, a: int32x4_t, b: int32x4_t) -> uint32x4_t {
        unsafe { vceqq_s32(a, b) }
    }
    #[inline(always)]
    fn store_i32(self, s: &mut [i32], v: int32x4_t) {
        let s = &mut s[..4];
        unsafe { vst1q_s32(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn load_i32(self, s: &[i32]) -> int32x4_t {
        let s = &s[..4];
        unsafe { vld1q_s32(s.as_ptr()) }
    }
    #[inline(always)]
    fn store_u8(self, s: &mut [u8], v: int32x4_t) {
        let s = &mut s[..4];
        let mut lanes = [0i32; 4];
        // SAFETY: `lanes` holds exactly 4 i32.
        unsafe { vst1q_s32(lanes.as_mut_ptr(), v) };
        for (d, l) in s.iter_mut().zip(lanes) {
            *d = l as u8;
        }
    }
    #[inline(always)]
    fn load_u8(self, s: &[u8]) -> int32x4_t {
        let s = &s[..4];
        unsafe { vld1q_s32([i32::from(s[0]), i32::from(s[1]), i32::from(s[2]), i32::from(s[3])].as_ptr()) }
    }
    #[inline(always)]
    fn load_i8(self, s: &[u8]) -> int32x4_t {
        let s = &s[..4];
        let l = [i32::from(s[0] as i8), i32::from(s[1] as i8), i32::from(s[2] as i8), i32::from(s[3] as i8)];
        unsafe { vld1q_s32(l.as_ptr()) }
    }
}
