//! SIMD kernels of the float family (`f32`, `f16`, `bf16`; layout in [`crate::blocks::float`]).
//!
//! * `f32` is a byte copy at every level.
//! * `f16` on x86-64 (AVX2 and AVX-512 levels, which guarantee F16C) uses the hardware
//!   conversions `vcvtps2ph` (round to nearest even) and `vcvtph2ps`; elsewhere (NEON, `Emu`) the
//!   generic integer-op kernels [`f32_to_f16_bits`] / [`f16_bits_to_f32`] (after F. Giesen,
//!   "Half to float done quick" / `float_to_half_fast3_rtne`, 2016).
//! * `bf16` uses the generic integer-op kernels [`f32_to_bf16_bits`] / [`bf16_bits_to_f32`]
//!   everywhere (round to nearest even by adding `0x7fff + lsb`, as ggml and gguf do).
//!
//! Every path is bit-identical to the `half` crate on every input bit pattern, NaN included
//! (NaN results are quiet; see the exhaustive tests in `tests/parity_float.rs`).

use crate::blocks::float as reference;
use crate::qtype::QType;
use crate::simd::vocab::Simd;
use crate::simd::{Isa, Kernel};

/// Largest lane count the kernels of this file support (scratch buffers are this long); wider
/// vocabularies fall back to the scalar reference.
const MAX_W: usize = 16;

/// `m ? a : b` on integer lanes (a bitwise blend through the float lanes).
#[inline(always)]
fn iselect<S: Simd>(s: S, m: S::M, a: S::I, b: S::I) -> S::I {
    s.to_bits(s.select(m, s.from_bits(a), s.from_bits(b)))
}

/// Lanes where `a <= b` for non-negative i32 lanes (`max(a, b) == b`), integer ops only.
#[inline(always)]
fn ile_nonneg<S: Simd>(s: S, a: S::I, b: S::I) -> S::M {
    s.ieq(s.imax(a, b), b)
}

/// f32 lanes → IEEE binary16 bit patterns (in the low 16 bits of each i32 lane), round to
/// nearest even; overflow gives ±inf, NaN a quiet NaN keeping the top mantissa bits (exactly
/// `half::f16::from_f32`). Integer ops and one exact float add only, so no NaN ever reaches a
/// float operation whose result is kept.
#[inline(always)]
pub fn f32_to_f16_bits<S: Simd>(s: S, x: S::F) -> S::I {
    let bits = s.to_bits(x);
    let sign = s.shr(s.iand(bits, s.isplat(i32::MIN)), 16);
    let abits = s.iand(bits, s.isplat(0x7FFF_FFFF));
    // |x| >= 2^16: infinity, or NaN (keeps the top 10 mantissa bits, sets the quiet bit).
    let big = ile_nonneg(s, s.isplat(0x4780_0000), abits);
    let is_nan = s.mnot(ile_nonneg(s, abits, s.isplat(0x7F80_0000)));
    let nan = s.ior(s.isplat(0x7E00), s.iand(s.shr(abits, 13), s.isplat(0x3FF)));
    let o_big = iselect(s, is_nan, nan, s.isplat(0x7C00));
    // |x| < 2^-14: an f16 subnormal or zero. Adding 0.5 rounds |x| to a multiple of 2^-24 with
    // the FPU's round-to-nearest-even; the mantissa bits are then the f16 bits.
    let sub = s.mnot(ile_nonneg(s, s.isplat(0x3880_0000), abits));
    let o_sub = s.iadd(s.to_bits(s.add(s.from_bits(abits), s.splat(0.5))), s.isplat(-0x3F00_0000));
    // Normal: rebias the exponent, add 0xfff + (lsb of the kept mantissa), shift.
    let odd = s.iand(s.shr(abits, 13), s.isplat(1));
    let rebias = (-(112i32 << 23)).wrapping_add(0xFFF);
    let o_norm = s.shr(s.iadd(s.iadd(abits, s.isplat(rebias)), odd), 13);
    let o = iselect(s, big, o_big, iselect(s, sub, o_sub, o_norm));
    s.ior(o, sign)
}

/// IEEE binary16 bit patterns (low 16 bits of each lane, upper bits zero) → f32 lanes, exact;
/// NaN comes back quiet (quiet bit set, payload kept), as `half::f16::to_f32` and `vcvtph2ps`.
#[inline(always)]
pub fn f16_bits_to_f32<S: Simd>(s: S, h: S::I) -> S::F {
    let o = s.shl(s.iand(h, s.isplat(0x7FFF)), 13);
    let exp = s.iand(o, s.isplat(0x0F80_0000));
    let o = s.iadd(o, s.isplat(0x3800_0000)); // rebias (127 - 15) << 23
    let is_special = s.ieq(exp, s.isplat(0x0F80_0000));
    let is_sub = s.ieq(exp, s.isplat(0));
    // Inf/NaN: exponent all ones; NaN additionally gets the quiet bit.
    let o_inf = s.iadd(o, s.isplat(0x3800_0000));
    let is_nan = s.mnot(s.ieq(s.iand(h, s.isplat(0x3FF)), s.isplat(0)));
    let o_inf = iselect(s, is_nan, s.ior(o_inf, s.isplat(0x0040_0000)), o_inf);
    // Subnormal/zero: 2^-14 * (1 + m) - 2^-14, an exact subtraction of finite values.
    let magic = s.splat(f32::from_bits(113 << 23));
    let o_sub = s.to_bits(s.sub(s.from_bits(s.iadd(o, s.isplat(1 << 23))), magic));
    let o = iselect(s, is_special, o_inf, iselect(s, is_sub, o_sub, o));
    let sign = s.shl(s.iand(h, s.isplat(0x8000)), 16);
    s.from_bits(s.ior(o, sign))
}

/// f32 lanes → bfloat16 bit patterns (low 16 bits of each lane), round to nearest even, NaN
/// made quiet (`half::bf16::from_f32`, gguf's `BF16.quantize`).
#[inline(always)]
pub fn f32_to_bf16_bits<S: Simd>(s: S, x: S::F) -> S::I {
    let bits = s.to_bits(x);
    let abits = s.iand(bits, s.isplat(0x7FFF_FFFF));
    let is_nan = s.mnot(ile_nonneg(s, abits, s.isplat(0x7F80_0000)));
    let lsb = s.iand(s.shr(bits, 16), s.isplat(1));
    let rounded = s.shr(s.iadd(s.iadd(bits, s.isplat(0x7FFF)), lsb), 16);
    let nan = s.ior(s.shr(bits, 16), s.isplat(0x40));
    iselect(s, is_nan, nan, rounded)
}

/// bfloat16 bit patterns (low 16 bits of each lane, upper bits zero) → f32 lanes, exact; NaN
/// comes back quiet (`half::bf16::to_f32`).
#[inline(always)]
pub fn bf16_bits_to_f32<S: Simd>(s: S, h: S::I) -> S::F {
    let o = s.shl(h, 16);
    let is_nan = s.mnot(ile_nonneg(s, s.iand(h, s.isplat(0x7FFF)), s.isplat(0x7F80)));
    s.from_bits(iselect(s, is_nan, s.ior(o, s.isplat(0x0040_0000)), o))
}

/// Generic SIMD conversion of one row `x` to `qtype` (`F32`, `F16`, `BF16`) into `dst`
/// (`x.len() * elem_bytes` bytes). Bit-identical to [`crate::blocks::float::quantize_row`].
#[inline(always)]
pub fn quantize_row_simd<S: Simd>(s: S, qtype: QType, x: &[f32], dst: &mut [u8]) {
    if qtype == QType::F32 || S::W > MAX_W {
        return reference::quantize_row(qtype, x, dst);
    }
    let w = S::W;
    let full = x.len() / w * w;
    let mut lanes = [0i32; MAX_W];
    for (xc, dc) in x[..full].chunks_exact(w).zip(dst.chunks_exact_mut(2 * w)) {
        let v = s.load(xc);
        let h = if qtype == QType::F16 { f32_to_f16_bits(s, v) } else { f32_to_bf16_bits(s, v) };
        s.store_i32(&mut lanes, h);
        for (d, &l) in dc.chunks_exact_mut(2).zip(&lanes[..w]) {
            d.copy_from_slice(&(l as u16).to_le_bytes());
        }
    }
    reference::quantize_row(qtype, &x[full..], &mut dst[2 * full..]);
}

/// Generic SIMD conversion of one row of `qtype` bytes `src` back to f32 in `y`. Bit-identical
/// to [`crate::blocks::float::dequantize_row`].
#[inline(always)]
pub fn dequantize_row_simd<S: Simd>(s: S, qtype: QType, src: &[u8], y: &mut [f32]) {
    if qtype == QType::F32 || S::W > MAX_W {
        return reference::dequantize_row(qtype, src, y);
    }
    let w = S::W;
    let full = y.len() / w * w;
    let mut lanes = [0i32; MAX_W];
    for (sc, yc) in src.chunks_exact(2 * w).zip(y[..full].chunks_exact_mut(w)) {
        for (l, b) in lanes.iter_mut().zip(sc.chunks_exact(2)) {
            *l = i32::from(u16::from_le_bytes([b[0], b[1]]));
        }
        let h = s.load_i32(&lanes);
        let v = if qtype == QType::F16 { f16_bits_to_f32(s, h) } else { bf16_bits_to_f32(s, h) };
        s.store(yc, v);
    }
    reference::dequantize_row(qtype, &src[2 * full..], &mut y[full..]);
}

struct Quantize<'a> {
    qtype: QType,
    x: &'a [f32],
    dst: &'a mut [u8],
}

impl Kernel for Quantize<'_> {
    type Output = ();
    fn scalar(self) {
        reference::quantize_row(self.qtype, self.x, self.dst)
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) {
        quantize_row_simd(s, self.qtype, self.x, self.dst)
    }
}

struct Dequantize<'a> {
    qtype: QType,
    src: &'a [u8],
    y: &'a mut [f32],
}

impl Kernel for Dequantize<'_> {
    type Output = ();
    fn scalar(self) {
        reference::dequantize_row(self.qtype, self.src, self.y)
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) {
        dequantize_row_simd(s, self.qtype, self.src, self.y)
    }
}

/// Quantize one row (see `blocks` for the contract).
pub fn quantize_row(isa: Isa, qtype: QType, x: &[f32], dst: &mut [u8]) {
    if qtype == QType::F32 {
        return reference::quantize_row(qtype, x, dst);
    }
    #[cfg(target_arch = "x86_64")]
    if qtype == QType::F16 && matches!(isa, Isa::Avx2 | Isa::Avx512) {
        if let Some(t) = crate::simd::avx2::Avx2::new() {
            return f16c::encode(t, x, dst);
        }
    }
    crate::simd::run(isa, Quantize { qtype, x, dst })
}

/// Dequantize one row.
pub fn dequantize_row(isa: Isa, qtype: QType, src: &[u8], y: &mut [f32]) {
    if qtype == QType::F32 {
        return reference::dequantize_row(qtype, src, y);
    }
    #[cfg(target_arch = "x86_64")]
    if qtype == QType::F16 && matches!(isa, Isa::Avx2 | Isa::Avx512) {
        if let Some(t) = crate::simd::avx2::Avx2::new() {
            return f16c::decode(t, src, y);
        }
    }
    crate::simd::run(isa, Dequantize { qtype, src, y })
}

/// Hardware f16 conversions (F16C), 8 values at a time. `vcvtps2ph` with an explicit
/// round-to-nearest-even immediate does not depend on MXCSR; both instructions quiet NaNs and
/// keep their payload as `half` does.
#[cfg(target_arch = "x86_64")]
pub mod f16c {
    use std::arch::x86_64::*;

    use crate::blocks::float as reference;
    use crate::qtype::QType;
    use crate::simd::avx2::Avx2;

    /// f32 row → f16 bytes (`dst.len() == 2 * x.len()`), the token proving F16C.
    pub fn encode(t: Avx2, x: &[f32], dst: &mut [u8]) {
        // SAFETY: a value of `Avx2` exists only when AVX2, FMA and F16C are available.
        unsafe { encode_impl(t, x, dst) }
    }

    /// f16 bytes → f32 row (`src.len() == 2 * y.len()`), the token proving F16C.
    pub fn decode(t: Avx2, src: &[u8], y: &mut [f32]) {
        // SAFETY: a value of `Avx2` exists only when AVX2, FMA and F16C are available.
        unsafe { decode_impl(t, src, y) }
    }

    #[target_feature(enable = "avx2,f16c")]
    unsafe fn encode_impl(_t: Avx2, x: &[f32], dst: &mut [u8]) {
        let full = x.len() / 8 * 8;
        for (xc, dc) in x[..full].chunks_exact(8).zip(dst.chunks_exact_mut(16)) {
            // SAFETY: `xc` has 8 f32 and `dc` 16 bytes (chunks_exact); unaligned load/store.
            unsafe {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(xc.as_ptr()));
                _mm_storeu_si128(dc.as_mut_ptr().cast(), h);
            }
        }
        reference::quantize_row(QType::F16, &x[full..], &mut dst[2 * full..]);
    }

    #[target_feature(enable = "avx2,f16c")]
    unsafe fn decode_impl(_t: Avx2, src: &[u8], y: &mut [f32]) {
        let full = y.len() / 8 * 8;
        for (sc, yc) in src.chunks_exact(16).zip(y[..full].chunks_exact_mut(8)) {
            // SAFETY: `sc` has 16 bytes and `yc` 8 f32 (chunks_exact); unaligned load/store.
            unsafe {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(sc.as_ptr().cast()));
                _mm256_storeu_ps(yc.as_mut_ptr(), v);
            }
        }
        reference::dequantize_row(QType::F16, &src[2 * full..], &mut y[full..]);
    }
}
