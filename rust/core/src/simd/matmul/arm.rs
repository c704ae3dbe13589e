//! AArch64 kernels of the matmul: the int8 dot (`smull`/`smlal2` + pairwise widening adds, or
//! `sdot` where the CPU has the dot-product extension, through inline assembly because its
//! intrinsic is not stable) and the f32 FMA dot.

use std::arch::aarch64::*;

use super::bytes::{self, Bytes32};
use super::{dot_k_decoded_with, dot_k_with, ActRow, KInts, KRow, QK_K, QS};
use crate::qtype::{AffineSpec, QType};

#[inline(always)]
fn load_i8(s: &[i8]) -> int8x16_t {
    let s = &s[..16];
    // SAFETY: `s` holds 16 bytes (checked by the slice above).
    unsafe { vld1q_s8(s.as_ptr()) }
}

#[inline(always)]
fn load_i32(s: &[i32]) -> int32x4_t {
    let s = &s[..4];
    // SAFETY: `s` holds 4 i32 (checked by the slice above).
    unsafe { vld1q_s32(s.as_ptr()) }
}

#[inline(always)]
fn load_i16(s: &[i16]) -> int16x8_t {
    let s = &s[..8];
    // SAFETY: `s` holds 8 i16 (checked by the slice above).
    unsafe { vld1q_s16(s.as_ptr()) }
}

#[inline(always)]
fn load_f32(s: &[f32]) -> float32x4_t {
    let s = &s[..4];
    // SAFETY: `s` holds 4 f32 (checked by the slice above).
    unsafe { vld1q_f32(s.as_ptr()) }
}

/// Exact i32 lanes whose sum is `Σ w · x` over 16 i8 pairs: products of 8-bit values widen to
/// i16, two are added per lane (at most 2 · 128 · 127, no overflow), then pairs widen to i32.
#[inline]
#[target_feature(enable = "neon")]
fn isum16_smull(w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let p = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    vpaddlq_s16(vmlal_high_s8(p, w, x))
}

/// Exact i32 lanes whose sum is `Σ w · x` over 16 i8 pairs, with `sdot`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn isum16_sdot(w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let mut acc = vdupq_n_s32(0);
    // SAFETY: this function is compiled with the `dotprod` feature (its callers have it, the
    // public wrapper checked the CPU); `sdot` reads and writes registers only.
    unsafe {
        std::arch::asm!("sdot {0:v}.4s, {1:v}.16b, {2:v}.16b", inout(vreg) acc, in(vreg) w, in(vreg) x,
                        options(pure, nomem, nostack));
    }
    acc
}

macro_rules! dot_q8_arm {
    ($name:ident, $features:literal, $isum:ident) => {
        #[target_feature(enable = $features)]
        fn $name(wq: &[i8], sw: &[f32], xq: &[i8], d16: &[f32]) -> f32 {
            let n = wq.len();
            let mut acc = vdupq_n_f32(0.0);
            let (mut i, mut k) = (0, 0);
            while i + 64 <= n {
                let p = |u: usize| $isum(load_i8(&wq[i + 16 * u..]), load_i8(&xq[i + 16 * u..]));
                let t = vpaddq_s32(vpaddq_s32(p(0), p(1)), vpaddq_s32(p(2), p(3)));
                let s = vmulq_f32(load_f32(&sw[k..]), load_f32(&d16[k..]));
                acc = vfmaq_f32(acc, vcvtq_f32_s32(t), s);
                i += 64;
                k += 64 / QS;
            }
            let mut tail = 0f32;
            while i < n {
                let p = vaddvq_s32($isum(load_i8(&wq[i..]), load_i8(&xq[i..])));
                tail += (sw[k] * d16[k]) * p as f32;
                i += QS;
                k += 1;
            }
            vaddvq_f32(acc) + tail
        }
    };
}

dot_q8_arm!(dot_q8_smull_tf, "neon", isum16_smull);
dot_q8_arm!(dot_q8_sdot_tf, "neon,dotprod", isum16_sdot);

/// [`super::dot_q8`] with NEON `smull` (no dot-product extension needed).
pub fn dot_q8_neon_smull(wq: &[i8], sw: &[f32], xq: &[i8], d16: &[f32]) -> f32 {
    // SAFETY: NEON is part of the AArch64 base ISA.
    unsafe { dot_q8_smull_tf(wq, sw, xq, d16) }
}

/// [`super::dot_q8`] with `sdot`. Panics without the dot-product extension.
pub fn dot_q8_neon_sdot(wq: &[i8], sw: &[f32], xq: &[i8], d16: &[f32]) -> f32 {
    assert!(super::has_dotprod(), "sdot kernel on a CPU without the dot-product extension");
    // SAFETY: NEON and dotprod are available (checked above).
    unsafe { dot_q8_sdot_tf(wq, sw, xq, d16) }
}

/// [`super::dot_q8`] at the NEON level: `sdot` where the CPU has it.
pub fn dot_q8_neon(wq: &[i8], sw: &[f32], xq: &[i8], d16: &[f32]) -> f32 {
    if super::has_dotprod() {
        dot_q8_neon_sdot(wq, sw, xq, d16)
    } else {
        dot_q8_neon_smull(wq, sw, xq, d16)
    }
}

macro_rules! dot_b32_arm {
    ($name:ident, $features:literal, $isum:ident) => {
        /// Four rows' b32 dots: per block and row the exact sum of two 16-value dots, reduced
        /// across lanes, then the reference's f32 steps.
        #[target_feature(enable = $features)]
        fn $name(wq: [&[i8]; 4], sw: [&[f32]; 4], mw: Option<[&[f32]; 4]>, act: ActRow<'_>) -> [f32; 4] {
            let mut acc = [0f32; 4];
            for b in 0..act.q.len() / 32 {
                let (x0, x1) = (load_i8(&act.q[32 * b..]), load_i8(&act.q[32 * b + 16..]));
                let bsum = super::b32_bsum(act.b16, b);
                for r in 0..4 {
                    let w = &wq[r][32 * b..];
                    let isum = vaddvq_s32(vaddq_s32($isum(load_i8(w), x0), $isum(load_i8(&w[16..]), x1)));
                    let m = mw.map(|m| m[r][2 * b]);
                    acc[r] = super::b32_block_ref(acc[r], sw[r][2 * b], m, act.d16[2 * b], isum, bsum);
                }
            }
            acc
        }
    };
}

dot_b32_arm!(dot_b32_smull_tf, "neon", isum16_smull);
dot_b32_arm!(dot_b32_sdot_tf, "neon,dotprod", isum16_sdot);

/// [`super::dot_b32_x4`] with NEON `smull` (no dot-product extension needed).
pub fn dot_b32_x4_neon_smull(wq: [&[i8]; 4], sw: [&[f32]; 4], mw: Option<[&[f32]; 4]>, act: ActRow<'_>) -> [f32; 4] {
    // SAFETY: NEON is part of the AArch64 base ISA.
    unsafe { dot_b32_smull_tf(wq, sw, mw, act) }
}

/// [`super::dot_b32_x4`] with `sdot`. Panics without the dot-product extension.
pub fn dot_b32_x4_neon_sdot(wq: [&[i8]; 4], sw: [&[f32]; 4], mw: Option<[&[f32]; 4]>, act: ActRow<'_>) -> [f32; 4] {
    assert!(super::has_dotprod(), "sdot kernel on a CPU without the dot-product extension");
    // SAFETY: NEON and dotprod are available (checked above).
    unsafe { dot_b32_sdot_tf(wq, sw, mw, act) }
}

/// [`super::dot_b32_x4`] at the NEON level: `sdot` where the CPU has it.
pub fn dot_b32_x4_neon(wq: [&[i8]; 4], sw: [&[f32]; 4], mw: Option<[&[f32]; 4]>, act: ActRow<'_>) -> [f32; 4] {
    if super::has_dotprod() {
        dot_b32_x4_neon_sdot(wq, sw, mw, act)
    } else {
        dot_b32_x4_neon_smull(wq, sw, mw, act)
    }
}

#[inline(always)]
fn load_u8(s: &[u8]) -> uint8x16_t {
    let s = &s[..16];
    // SAFETY: `s` holds 16 bytes (checked by the slice above).
    unsafe { vld1q_u8(s.as_ptr()) }
}

/// `acc` plus exact i32 lanes of `Σ w · x` over 16 i8 pairs: `smull`/`smlal2` (i16 pair sums,
/// at most 2 · 128 · 127), then `sadalp` into the i32 lanes.
#[inline]
#[target_feature(enable = "neon")]
fn acc16_smull(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let p = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    vpadalq_s16(acc, vmlal_high_s8(p, w, x))
}

/// `acc` plus exact i32 lanes of `Σ w · x` over 16 i8 pairs, with `sdot`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn acc16_sdot(mut acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    // SAFETY: this function is compiled with the `dotprod` feature (its callers have it, the
    // public wrapper checked the CPU); `sdot` reads and writes registers only.
    unsafe {
        std::arch::asm!("sdot {0:v}.4s, {1:v}.16b, {2:v}.16b", inout(vreg) acc, in(vreg) w, in(vreg) x,
                        options(pure, nomem, nostack));
    }
    acc
}

/// 16 i16 (or the first `n` of them, the rest 0) widened to four vectors of i32, in order.
#[inline]
#[target_feature(enable = "neon")]
fn widen16(v: &[i16], n: usize) -> [int32x4_t; 4] {
    let mut b = [0i16; 16];
    b[..n].copy_from_slice(&v[..n]);
    let (lo, hi) = (load_i16(&b), load_i16(&b[8..]));
    [vmovl_s16(vget_low_s16(lo)), vmovl_high_s16(lo), vmovl_s16(vget_low_s16(hi)), vmovl_high_s16(hi)]
}

/// `Σ_j Σ_lanes a[j] · b[j]` of four vector pairs of i32 (exact: the callers' sums fit in i32,
/// as in the x86 kernels), widened to i64.
#[inline]
#[target_feature(enable = "neon")]
fn dot4x4(a: [int32x4_t; 4], b: [int32x4_t; 4]) -> i64 {
    let acc = a.iter().zip(&b).skip(1).fold(vmulq_s32(a[0], b[0]), |acc, (&x, &y)| vmlaq_s32(acc, x, y));
    i64::from(vaddvq_s32(acc))
}

/// The k-quant kernels at the NEON level: the super-block (or ragged tail) of each row is
/// decoded as the reference decodes it ([`KInts`], or the GEMM's decoded rows [`KRow`]), then
/// the dots of its sub-blocks of 16 with the activation codes are taken 64 values at a time
/// (`$isum`, four pairwise-added to one vector of four sub-blocks), and multiplied by the
/// sub-block scales as vectors. The integer sums are [`super::dot_k_ref`]'s exactly, so are the
/// bits. `$dots`: the sub-block dots; `$sums`: one block of a stored row; `$dsums`: one block
/// of a decoded row.
macro_rules! k_arm {
    ($dots:ident, $sums:ident, $dsums:ident, $features:literal, $isum:ident) => {
        /// The dots of the first `ns` (≤ 16) sub-blocks of 16 of the codes `c` with `q`, in
        /// order, four per vector; 0 past `ns`.
        #[inline]
        #[target_feature(enable = $features)]
        fn $dots(c: &[i8], q: &[i8], ns: usize) -> [int32x4_t; 4] {
            let mut t = [vdupq_n_s32(0); 4];
            let whole = ns / 4;
            for (j, t) in t[..whole].iter_mut().enumerate() {
                let p = |u: usize| $isum(load_i8(&c[64 * j + 16 * u..]), load_i8(&q[64 * j + 16 * u..]));
                *t = vpaddq_s32(vpaddq_s32(p(0), p(1)), vpaddq_s32(p(2), p(3)));
            }
            if ns > 4 * whole {
                let mut d = [0i32; 4];
                for (i, d) in d[..ns - 4 * whole].iter_mut().enumerate() {
                    let s = 4 * whole + i;
                    *d = vaddvq_s32($isum(load_i8(&c[16 * s..]), load_i8(&q[16 * s..])));
                }
                t[whole] = load_i32(&d);
            }
            t
        }

        /// `super::k_sums_ref` with NEON: `(isum, imin)` of the first `ns` sub-blocks of `k`.
        #[target_feature(enable = $features)]
        fn $sums(k: &KInts, ns: usize, q: &[i8], b16: &[i16]) -> (i64, i64) {
            let t = $dots(&k.codes, q, ns);
            // Past `ns` the dots and sums are 0, whatever `k` holds there.
            let isc = std::array::from_fn(|j| load_i32(&k.isc[4 * j..]));
            let imin = std::array::from_fn(|j| load_i32(&k.imin[4 * j..]));
            let b = widen16(b16, ns);
            (dot4x4(t, isc), dot4x4(b, imin))
        }

        /// The sums of `super::dot_k_decoded_ref` for block `b` (its first `ns` sub-blocks) of
        /// the decoded row `w` and the activation `a`.
        #[target_feature(enable = $features)]
        fn $dsums(w: KRow<'_>, a: ActRow<'_>, b: usize, ns: usize) -> (i64, i64) {
            let (v0, g0) = (b * QK_K, 16 * b);
            // SAFETY: u8 and i8 have the same size and alignment; the codes are at most 63.
            let u = unsafe { std::slice::from_raw_parts(w.u[v0..].as_ptr().cast::<i8>(), w.u.len() - v0) };
            let t = $dots(u, &a.q[v0..], ns);
            let bs = widen16(&a.b16[g0..], ns);
            // The scales are stored even sub-blocks first: zipped back to their order.
            let (e, o) = (load_i16(&w.sv[g0..]), load_i16(&w.sv[g0 + 8..]));
            let (s0, s1) = (vzip1q_s16(e, o), vzip2q_s16(e, o));
            let sc = [vmovl_s16(vget_low_s16(s0)), vmovl_high_s16(s0), vmovl_s16(vget_low_s16(s1)), vmovl_high_s16(s1)];
            let (zs, mn) = (widen16(&w.zs[g0..], 16), widen16(&w.mn[g0..], 16));
            (dot4x4(t, sc) - dot4x4(zs, bs), dot4x4(mn, bs))
        }
    };
}

k_arm!(k_dots_smull, k_sums_smull, k_dsums_smull, "neon", isum16_smull);
k_arm!(k_dots_sdot, k_sums_sdot, k_dsums_sdot, "neon,dotprod", isum16_sdot);

/// [`super::dot_k`] with NEON `smull` (no dot-product extension needed).
pub fn dot_k_neon_smull(qtype: QType, cols: usize, w: [&[u8]; 4], act: ActRow<'_>) -> [f32; 4] {
    // SAFETY: NEON is part of the AArch64 base ISA.
    w.map(|r| dot_k_with(qtype, cols, r, act, |k, ns, q, b| unsafe { k_sums_smull(k, ns, q, b) }))
}

/// [`super::dot_k`] with `sdot`. Panics without the dot-product extension.
pub fn dot_k_neon_sdot(qtype: QType, cols: usize, w: [&[u8]; 4], act: ActRow<'_>) -> [f32; 4] {
    assert!(super::has_dotprod(), "sdot kernel on a CPU without the dot-product extension");
    // SAFETY: NEON and dotprod are available (checked above).
    w.map(|r| dot_k_with(qtype, cols, r, act, |k, ns, q, b| unsafe { k_sums_sdot(k, ns, q, b) }))
}

/// [`super::dot_k`] at the NEON level: `sdot` where the CPU has it.
pub fn dot_k_neon(qtype: QType, cols: usize, w: [&[u8]; 4], act: ActRow<'_>) -> [f32; 4] {
    if super::has_dotprod() {
        dot_k_neon_sdot(qtype, cols, w, act)
    } else {
        dot_k_neon_smull(qtype, cols, w, act)
    }
}

/// [`super::dot_k_decoded`] with NEON `smull`.
pub fn dot_k_decoded_neon_smull(base: QType, w: [KRow<'_>; 4], act: [ActRow<'_>; 4]) -> [[f32; 4]; 4] {
    // SAFETY: NEON is part of the AArch64 base ISA.
    act.map(|a| w.map(|r| dot_k_decoded_with(base, r, a, |b, ns| unsafe { k_dsums_smull(r, a, b, ns) })))
}

/// [`super::dot_k_decoded`] with `sdot`. Panics without the dot-product extension.
pub fn dot_k_decoded_neon_sdot(base: QType, w: [KRow<'_>; 4], act: [ActRow<'_>; 4]) -> [[f32; 4]; 4] {
    assert!(super::has_dotprod(), "sdot kernel on a CPU without the dot-product extension");
    // SAFETY: NEON and dotprod are available (checked above).
    act.map(|a| w.map(|r| dot_k_decoded_with(base, r, a, |b, ns| unsafe { k_dsums_sdot(r, a, b, ns) })))
}

/// [`super::dot_k_decoded`] at the NEON level: `sdot` where the CPU has it.
pub fn dot_k_decoded_neon(base: QType, w: [KRow<'_>; 4], act: [ActRow<'_>; 4]) -> [[f32; 4]; 4] {
    if super::has_dotprod() {
        dot_k_decoded_neon_sdot(base, w, act)
    } else {
        dot_k_decoded_neon_smull(base, w, act)
    }
}

/// The W8A8 integer dot of `R` weight rows (stored u8 codes, zero 128) with one activation
/// row: 16 values per step, one activation load for the `R` rows, a scalar tail.
macro_rules! dot_i8_arm {
    ($name:ident, $features:literal, $acc:ident) => {
        #[target_feature(enable = $features)]
        fn $name<const R: usize>(w: [&[u8]; R], q: &[i8]) -> [i32; R] {
            let n = q.len();
            let flip = vdupq_n_u8(0x80);
            let mut acc = [vdupq_n_s32(0); R];
            let mut i = 0;
            while i + 16 <= n {
                let x = load_i8(&q[i..]);
                for r in 0..R {
                    let c = vreinterpretq_s8_u8(veorq_u8(load_u8(&w[r][i..]), flip));
                    acc[r] = $acc(acc[r], c, x);
                }
                i += 16;
            }
            let mut out = [0i32; R];
            for r in 0..R {
                out[r] = vaddvq_s32(acc[r]) + super::w8a8::dot_i8_ref(&w[r][i..], &q[i..]);
            }
            out
        }
    };
}

dot_i8_arm!(dot_i8_smull_tf, "neon", acc16_smull);
dot_i8_arm!(dot_i8_sdot_tf, "neon,dotprod", acc16_sdot);

/// [`super::w8a8::dot_i8`] with NEON `smull` (no dot-product extension needed).
pub fn dot_i8_neon_smull(w: &[u8], q: &[i8]) -> i32 {
    // SAFETY: NEON is part of the AArch64 base ISA.
    unsafe { dot_i8_smull_tf([w], q)[0] }
}

/// [`super::w8a8::dot_i8`] with `sdot`. Panics without the dot-product extension.
pub fn dot_i8_neon_sdot(w: &[u8], q: &[i8]) -> i32 {
    assert!(super::has_dotprod(), "sdot kernel on a CPU without the dot-product extension");
    // SAFETY: NEON and dotprod are available (checked above).
    unsafe { dot_i8_sdot_tf([w], q)[0] }
}

/// [`super::w8a8::dot_i8_x4`] with NEON: `sdot` where the CPU has it.
pub fn dot_i8_x4_neon(w: [&[u8]; 4], q: &[i8]) -> [i32; 4] {
    dot_i8_neon_rows(w, q)
}

/// [`super::w8a8::dot_i8`] with NEON: `sdot` where the CPU has it.
pub fn dot_i8_neon(w: &[u8], q: &[i8]) -> i32 {
    dot_i8_neon_rows([w], q)[0]
}

fn dot_i8_neon_rows<const R: usize>(w: [&[u8]; R], q: &[i8]) -> [i32; R] {
    if super::has_dotprod() {
        // SAFETY: NEON and dotprod are available (checked).
        unsafe { dot_i8_sdot_tf(w, q) }
    } else {
        // SAFETY: NEON is part of the AArch64 base ISA.
        unsafe { dot_i8_smull_tf(w, q) }
    }
}

/// [`Bytes32`] on a pair of NEON registers.
#[derive(Debug, Clone, Copy)]
pub struct NeonBytes(());

// SAFETY (for every `unsafe` block in this impl): NEON is part of the AArch64 base ISA; loads
// and stores go through slices whose length is checked first.
#[allow(clippy::undocumented_unsafe_blocks)]
impl Bytes32 for NeonBytes {
    type V = (uint8x16_t, uint8x16_t);

    #[inline(always)]
    fn load(self, s: &[u8]) -> Self::V {
        let s = &s[..32];
        unsafe { (vld1q_u8(s.as_ptr()), vld1q_u8(s[16..].as_ptr())) }
    }
    #[inline(always)]
    fn nibbles(self, s: &[u8]) -> Self::V {
        let s = &s[..16];
        unsafe {
            let x = vld1q_u8(s.as_ptr());
            (vandq_u8(x, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(x))
        }
    }
    #[inline(always)]
    fn nibbles_interleaved(self, s: &[u8]) -> Self::V {
        let (lo, hi) = self.nibbles(s);
        unsafe { (vzip1q_u8(lo, hi), vzip2q_u8(lo, hi)) }
    }
    #[inline(always)]
    fn bits(self, m: u32) -> Self::V {
        let b = m.to_le_bytes();
        const SEL: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
        unsafe {
            let sel = vld1q_u8(SEL.as_ptr());
            let one = vdupq_n_u8(1);
            let lo = vcombine_u8(vdup_n_u8(b[0]), vdup_n_u8(b[1]));
            let hi = vcombine_u8(vdup_n_u8(b[2]), vdup_n_u8(b[3]));
            (vandq_u8(vtstq_u8(lo, sel), one), vandq_u8(vtstq_u8(hi, sel), one))
        }
    }
    #[inline(always)]
    fn shl(self, v: Self::V, n: u32) -> Self::V {
        unsafe {
            let s = vdupq_n_s8(n as i8);
            (vshlq_u8(v.0, s), vshlq_u8(v.1, s))
        }
    }
    #[inline(always)]
    fn add(self, a: Self::V, b: Self::V) -> Self::V {
        unsafe { (vaddq_u8(a.0, b.0), vaddq_u8(a.1, b.1)) }
    }
    #[inline(always)]
    fn or(self, a: Self::V, b: Self::V) -> Self::V {
        unsafe { (vorrq_u8(a.0, b.0), vorrq_u8(a.1, b.1)) }
    }
    #[inline(always)]
    fn splat(self, v: u8) -> Self::V {
        unsafe { (vdupq_n_u8(v), vdupq_n_u8(v)) }
    }
    #[inline(always)]
    fn lut16(self, v: Self::V, table: &[i8; 16]) -> Self::V {
        unsafe {
            let t = vld1q_u8(table.as_ptr().cast());
            (vqtbl1q_u8(t, v.0), vqtbl1q_u8(t, v.1))
        }
    }
    #[inline(always)]
    fn store(self, v: Self::V, out: &mut [i8]) {
        let out = &mut out[..32];
        unsafe {
            vst1q_u8(out.as_mut_ptr().cast(), v.0);
            vst1q_u8(out[16..].as_mut_ptr().cast(), v.1);
        }
    }
    #[inline(always)]
    fn f16(self, h: u16) -> f32 {
        half::f16::from_bits(h).to_f32()
    }
}

#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
fn decode_tf(
    qtype: QType,
    spec: Option<AffineSpec>,
    cols: usize,
    src: &[u8],
    codes: &mut [i8],
    sw: &mut [f32],
    mw: &mut [f32],
) {
    bytes::decode(NeonBytes(()), qtype, spec, cols, src, codes, sw, mw)
}

/// [`super::decode_row`] with NEON.
#[allow(clippy::too_many_arguments)]
pub fn decode_neon(
    qtype: QType,
    spec: Option<AffineSpec>,
    cols: usize,
    src: &[u8],
    codes: &mut [i8],
    sw: &mut [f32],
    mw: &mut [f32],
) {
    // SAFETY: NEON is part of the AArch64 base ISA.
    unsafe { decode_tf(qtype, spec, cols, src, codes, sw, mw) }
}
