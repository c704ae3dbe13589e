//! The pieces of the quantized matmul ([`crate::matmul`]), each with a scalar reference.
//!
//! A quantized weight row is multiplied by an activation row in three steps:
//!
//! 1. **Activation quantization** ([`quantize_act`]): the row is scaled by a power of two
//!    `2^-e` so that its largest magnitude lies in `[1, 2)` (exact, unless a value falls to the
//!    subnormal range; tiny and huge rows thus quantize like ordinary ones), then cut into
//!    blocks of [`QA`] = 32 values, or of 256 for k-quant weights ([`act_block`]; the row is
//!    zero-padded to a multiple of 32, and the last block takes what is left), each quantized
//!    to i8 with one f32 step `d = amax / 127`: `q = round_ties_even(v · (1 / d))`, in −127..=127 (never −128, so
//!    the AVX2 `maddubs` pair sums cannot saturate). A block whose step would be subnormal
//!    (`amax < 127 · 2^-126`, i.e. below `2^-119` times the row's largest value) is flushed to
//!    zero. Per sub-block of [`QS`] = 16 values it also stores the step (`d16`),
//!    `d · Σ q` (`s16`, for the min terms) and the exact `Σ q` (`b16`, for the k-quants). Written once over the [`Simd`] vocabulary, so every
//!    ISA (and `Emu` at 4, 8 and 16 lanes) gives the same bits as the scalar reference.
//! 2. **Weight decoding** ([`decode_row`]): one stored row of any quantized type becomes i8
//!    codes plus per-16 f32 scales `sw` and (for types with a min or zero term) per-16 f32
//!    mins `mw`, with `w = sw · code + mw` equal to the reference dequantization (bit for bit
//!    except int8 asymmetric, whose zero is split off as a min). The scalar decoders here are
//!    the reference; the SIMD ones ([`bytes`]) are written once per type family over a
//!    32-byte vector vocabulary implemented with AVX2 (used at the AVX2 and AVX-512 levels)
//!    and NEON, and give the same bytes.
//! 3. **The int8 dot** ([`dot_q8`]): `Σ_k sw[k] · d16[k] · Σ_{j∈k} code_j · q_j`, hand-written
//!    per ISA: AVX2 `vpsignb` + `vpmaddubsw` + `vpmaddwd`; AVX-512BW the same on 64 bytes, or
//!    `vpdpbusd` where the CPU has AVX-512 VNNI; NEON `smull`/`smlal2` + `sadalp`-style pairing,
//!    or `sdot` where the CPU has the dot-product extension; [`dot_q8_x4`] is the four-row
//!    variant (AVX2) the driver uses to share activation loads. The min terms are an f32 dot
//!    ([`dot_f32`], FMA) of `mw` with `s16`, as is the whole product for float weights.
//!
//! That is the path of the group-affine and double-quant types. For few activation rows,
//! [`dot_fused`] does steps 2 and 3 at once for int4 (AVX2 kernels in `fused.rs`), with the
//! same bits as [`decode_row`] + [`dot_q8_x4`].
//!
//! **The legacy types and iq4_nl** ([`is_b32`]: one scale, and for q4_1/q5_1 one min, per
//! block of 32, which is also the activation's block) sum each block in i32 and send only its
//! total to f32: per block `acc + (d · dx) · Σ c·q` (and `+ (m · dx) · Σ q`), [`dot_b32_ref`]
//! the specification. Every kernel gives its bits at every ISA: [`dot_fused`] on the stored
//! rows (AVX2 and AVX-512 VNNI, four rows' lane sums reduced together), [`dot_b32_x4`] on
//! decoded rows (AVX2, NEON), [`dot_b32_outer`] for the VNNI GEMM. Against the per-16 form
//! above this removes a conversion and an FMA per 4 values in the GEMM's outer products, and
//! the separate f32 dot of the mins.
//!
//! **The k-quants** (q2_k … q6_k and their ragged types) take their own path, with
//! activations in blocks of 256 (ggml's `q8_K` idea): a super-block's products are summed in
//! i32 with the sub-blocks' integer scales, its mins and code offsets come from the
//! activation's `b16`, and only the block's total goes to f32 ([`dot_k_ref`] is the
//! specification). One i8 step per 256 values instead of 32 costs activation precision where
//! a block mixes large and small values, but the f32 work per 32 values (a conversion, a
//! scale broadcast and an FMA) is gone. [`dot_k`] runs on the stored rows (few activation
//! rows), [`dot_k_decoded`] on rows decoded once per batch ([`decode_k_row`], four activation
//! rows per weight load at AVX-512, two at AVX2); both give [`dot_k_ref`]'s bits at every ISA.
//! At NEON both decode a super-block as the reference does and take its sub-block dots with
//! `sdot` (or `smull`), four sub-blocks per vector, times the scales as vectors.
//!
//! **The GEMM at AVX-512 VNNI** multiplies decoded rows with tiles of [`LANES`] activation rows
//! as outer products, the activation rows in the vector lanes: [`dot_k_outer`] (k-quants, tiles
//! from [`pack_act_tile`]), [`dot_b32_outer`] (the b32 types, tiles from [`pack_b32_tile`])
//! and [`dot_q8_outer`] (the other codes from [`decode_row`], tiles from [`pack_q8_tile`]),
//! with the bits of [`dot_k_decoded`], [`dot_b32_ref`] and [`dot_q8_x4`] respectively.
//!
//! Integer outputs (quantized activations, codes) and the dots of the k-quants and the b32
//! types are bit-identical across ISAs. Float outputs of the other types differ only by the
//! order of f32 additions; [`dot_tolerance`] bounds the difference.

use crate::blocks::dq;
use crate::blocks::iq4nl::KVALUES;
use crate::blocks::kquants::{layout, ragged, scale_min_k4, scale_q3k, QK_K};
use crate::blocks::legacy::Spec;
use crate::pack;
use crate::qtype::{AffineSpec, Family, QType};
use crate::simd::vocab::{abs_max, Simd};
use crate::simd::{Isa, Kernel};
use half::f16;

#[cfg(target_arch = "aarch64")]
mod arm;
pub mod bytes;
#[cfg(target_arch = "x86_64")]
mod fused;
pub mod packed;
pub mod w8a8;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Values per activation block (one f32 step).
pub const QA: usize = 32;
/// Values per weight sub-block (one f32 scale and min).
pub const QS: usize = 16;

/// Row length padded to whole activation blocks.
#[inline]
pub fn padded(cols: usize) -> usize {
    cols.div_ceil(QA) * QA
}

/// `2^e` as f32 for `e` in −149..=127 (subnormal below −126).
#[inline]
fn pow2(e: i32) -> f32 {
    if e >= -126 {
        f32::from_bits(((e + 127) as u32) << 23)
    } else {
        f32::from_bits(1 << (e + 149))
    }
}

/// `floor(log2(a))` of a positive finite f32 (subnormals included).
#[inline]
fn ilog2(a: f32) -> i32 {
    let b = a.to_bits();
    let exp = (b >> 23) as i32;
    if exp > 0 {
        exp - 127
    } else {
        31 - b.leading_zeros() as i32 - 149
    }
}

/// The power-of-two normalisation of a row whose largest magnitude is `amax`: the two factors
/// `(s1, s2)` the values are multiplied by (in that order; `s1 · s2 = 2^-e`, each factor a
/// normal f32) and `2^e`, which multiplies the row's dot products back. `amax = 0` gives
/// `(1, 1, 1)`.
pub fn row_scale(amax: f32) -> (f32, f32, f32) {
    if amax == 0.0 {
        return (1.0, 1.0, 1.0);
    }
    let e = ilog2(amax);
    let k = -e;
    (pow2(k / 2), pow2(k - k / 2), pow2(e))
}

/// One quantized activation row: `q` (padded length), `d16` and `s16` (one per 16 values), and
/// the factor `scale = 2^e` of the row normalisation.
#[derive(Debug, Clone, Copy)]
pub struct ActRow<'a> {
    /// i8 codes, `padded(cols)` long, zero in the padding.
    pub q: &'a [i8],
    /// The block step of each sub-block of 16 values.
    pub d16: &'a [f32],
    /// `d · Σ q` of each sub-block.
    pub s16: &'a [f32],
    /// `Σ q` of each sub-block (exact).
    pub b16: &'a [i16],
    /// `2^e`: the row's dot products are multiplied by it.
    pub scale: f32,
}

/// Values per activation block (one step) for weights of `qtype`: a k-quant super-block (256)
/// for the k-quants and their ragged types, whose dots keep their integer sub-block scales
/// integer to the end of a super-block as ggml's `q8_K` does; [`QA`] (32) for every other
/// type. A row's last block may be shorter (a ragged tail).
pub fn act_block(qtype: QType) -> usize {
    if is_kquant(qtype) {
        QK_K
    } else {
        QA
    }
}

/// Whether `qtype` is a k-quant or a ragged k-quant (the types of [`dot_k`]).
pub fn is_kquant(qtype: QType) -> bool {
    matches!(qtype.info().family, Family::KQuant | Family::RaggedKQuant)
}

/// Finish one block: the step of a block with largest magnitude `amax` and its inverse; a
/// block whose step is subnormal (or zero) gets `(0, 0)` and quantizes to zeros.
#[inline(always)]
fn block_step(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    if d < f32::MIN_POSITIVE {
        (0.0, 0.0)
    } else {
        (d, 1.0 / d)
    }
}

/// The scalar reference of [`quantize_act`].
pub fn quantize_act_ref(
    x: &[f32],
    block: usize,
    q: &mut [i8],
    d16: &mut [f32],
    s16: &mut [f32],
    b16: &mut [i16],
) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (s1, s2, scale) = row_scale(amax);
    let mut v = [0f32; QK_K];
    for (b, qb) in q.chunks_mut(block).enumerate() {
        let (v, at) = (&mut v[..qb.len()], b * block);
        let src = &x[at.min(x.len())..(at + qb.len()).min(x.len())];
        v.fill(0.0);
        for (o, &xv) in v.iter_mut().zip(src) {
            *o = xv * s1 * s2;
        }
        let bmax = v.iter().fold(0f32, |m, a| m.max(a.abs()));
        let (d, id) = block_step(bmax);
        for (o, &a) in qb.iter_mut().zip(v.iter()) {
            *o = (a * id).round_ties_even() as i8;
        }
        sub_sums(qb, d, &mut d16[at / QS..], &mut s16[at / QS..], &mut b16[at / QS..]);
    }
    scale
}

/// The per-16 step, `d · Σ q` and `Σ q` of the codes `qb` of one block with step `d`.
#[inline(always)]
fn sub_sums(qb: &[i8], d: f32, d16: &mut [f32], s16: &mut [f32], b16: &mut [i16]) {
    for (h, c) in qb.chunks_exact(QS).enumerate() {
        let sum: i32 = c.iter().map(|&c| i32::from(c)).sum();
        d16[h] = d;
        s16[h] = d * sum as f32;
        b16[h] = sum as i16;
    }
}

/// Largest lane count of the generic activation kernel (a block is 32 values).
const MAX_W: usize = 16;

/// The generic activation quantizer over the vocabulary.
#[inline(always)]
pub fn quantize_act_simd<S: Simd>(
    s: S,
    x: &[f32],
    block: usize,
    q: &mut [i8],
    d16: &mut [f32],
    s16: &mut [f32],
    b16: &mut [i16],
) -> f32 {
    let w = S::W;
    if w > MAX_W || !QA.is_multiple_of(w) {
        return quantize_act_ref(x, block, q, d16, s16, b16);
    }
    let (s1, s2, scale) = row_scale(abs_max(s, x));
    let (vs1, vs2) = (s.splat(s1), s.splat(s2));
    let mut v = [0f32; QK_K];
    let mut ints = [0i32; QK_K];
    for (b, qb) in q.chunks_mut(block).enumerate() {
        let (v, ints, at) = (&mut v[..qb.len()], &mut ints[..qb.len()], b * block);
        let src = &x[at.min(x.len())..(at + qb.len()).min(x.len())];
        v.fill(0.0);
        v[..src.len()].copy_from_slice(src);
        let mut bm = s.splat(0.0);
        for c in v.chunks_exact_mut(w) {
            let a = s.mul(s.mul(s.load(c), vs1), vs2);
            s.store(c, a);
            bm = s.max(bm, s.abs(a));
        }
        let (d, id) = block_step(s.hmax(bm));
        let vid = s.splat(id);
        for (c, o) in v.chunks_exact(w).zip(ints.chunks_exact_mut(w)) {
            s.store_i32(o, s.to_i32(s.round_even(s.mul(s.load(c), vid))));
        }
        for (o, &i) in qb.iter_mut().zip(ints.iter()) {
            *o = i as i8;
        }
        sub_sums(qb, d, &mut d16[at / QS..], &mut s16[at / QS..], &mut b16[at / QS..]);
    }
    scale
}

struct QuantizeAct<'a> {
    x: &'a [f32],
    block: usize,
    q: &'a mut [i8],
    d16: &'a mut [f32],
    s16: &'a mut [f32],
    b16: &'a mut [i16],
}

impl Kernel for QuantizeAct<'_> {
    type Output = f32;
    fn scalar(self) -> f32 {
        quantize_act_ref(self.x, self.block, self.q, self.d16, self.s16, self.b16)
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) -> f32 {
        quantize_act_simd(s, self.x, self.block, self.q, self.d16, self.s16, self.b16)
    }
}

/// Quantize one activation row `x` (`cols` finite values) into `q` (`padded(cols)` i8) in
/// blocks of `block` values (32, or 256 for k-quant weights: [`act_block`]; the last block
/// takes what is left of the padded row), each with the step `amax / 127` of its values after
/// the row normalisation; `d16`, `s16`, `b16` (`padded(cols) / 16` each) get each 16 values'
/// step, `step · Σ q` and `Σ q`. Returns the row factor `2^e` (see the module doc).
/// Bit-identical at every ISA.
pub fn quantize_act(
    isa: Isa,
    x: &[f32],
    block: usize,
    q: &mut [i8],
    d16: &mut [f32],
    s16: &mut [f32],
    b16: &mut [i16],
) -> f32 {
    assert!(
        q.len() == padded(x.len()) && d16.len() == q.len() / QS && s16.len() == d16.len() && b16.len() == d16.len()
    );
    assert!(block == QA || block == QK_K, "activation blocks are 32 or 256 values, not {block}");
    crate::simd::run(isa, QuantizeAct { x, block, q, d16, s16, b16 })
}

/// Little-endian f16 at `b[at..at + 2]` as f32.
#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Decode one row of a legacy type (32-value blocks, one f16 scale, optional f16 min). The
/// loops run over whole 16-byte groups with constant shifts so that they vectorise.
#[inline(always)]
fn decode_legacy(spec: &Spec, src: &[u8], codes: &mut [i8], sw: &mut [f32], mw: &mut [f32]) {
    let zero = spec.zero as i8;
    for (b, blk) in src.chunks_exact(spec.block_bytes).enumerate() {
        let cb: &mut [i8; 32] = (&mut codes[b * 32..b * 32 + 32]).try_into().expect("32 codes");
        if spec.is_q8() {
            let qs: &[u8; 32] = blk[spec.off_qs..spec.off_qs + 32].try_into().expect("32 bytes");
            for (c, &v) in cb.iter_mut().zip(qs) {
                *c = v as i8;
            }
        } else {
            let qs: &[u8; 16] = blk[spec.off_qs..spec.off_qs + 16].try_into().expect("16 bytes");
            let mut hi = [0u8; 32];
            if let Some(o) = spec.off_qh {
                let qh = u32::from_le_bytes([blk[o], blk[o + 1], blk[o + 2], blk[o + 3]]);
                for (j, h) in hi.iter_mut().enumerate() {
                    *h = (((qh >> j) & 1) << 4) as u8;
                }
            }
            for j in 0..16 {
                cb[j] = ((qs[j] & 0x0F) | hi[j]) as i8 - zero;
                cb[j + 16] = ((qs[j] >> 4) | hi[j + 16]) as i8 - zero;
            }
        }
        let d = f16_at(blk, 0);
        sw[2 * b] = d;
        sw[2 * b + 1] = d;
        if spec.has_min {
            let m = f16_at(blk, 2);
            mw[2 * b] = m;
            mw[2 * b + 1] = m;
        }
    }
}

#[inline(always)]
fn decode_iq4nl(src: &[u8], codes: &mut [i8], sw: &mut [f32]) {
    for (b, blk) in src.chunks_exact(18).enumerate() {
        let cb = &mut codes[b * 32..b * 32 + 32];
        for j in 0..16 {
            cb[j] = KVALUES[(blk[2 + j] & 0x0F) as usize];
            cb[j + 16] = KVALUES[(blk[2 + j] >> 4) as usize];
        }
        let d = f16_at(blk, 0);
        sw[2 * b] = d;
        sw[2 * b + 1] = d;
    }
}

/// `out[l] = (src[l] >> shift) & mask` for 32 bytes (vectorises).
#[inline(always)]
fn bits32(src: &[u8], shift: u32, mask: u8, out: &mut [i8]) {
    let src: &[u8; 32] = src[..32].try_into().expect("32 bytes");
    let out: &mut [i8; 32] = (&mut out[..32]).try_into().expect("32 codes");
    for (o, &v) in out.iter_mut().zip(src) {
        *o = ((v >> shift) & mask) as i8;
    }
}

/// `out[l] += ((src[l] >> shift) & 1) * add` for 32 bytes (vectorises).
#[inline(always)]
fn add_bit32(src: &[u8], shift: u32, add: i8, out: &mut [i8]) {
    let src: &[u8; 32] = src[..32].try_into().expect("32 bytes");
    let out: &mut [i8; 32] = (&mut out[..32]).try_into().expect("32 codes");
    for (o, &v) in out.iter_mut().zip(src) {
        *o += ((v >> shift) & 1) as i8 * add;
    }
}

/// One k-quant super-block (or a ragged tail of `2u` sub-blocks) in integers: value `j` is
/// `d · isc[j / 16] · codes[j] − dmin · imin[j / 16]` (`imin` is 0 for the types without mins,
/// q3_k and q6_k, whose codes carry their offset: q3_k's `−4`, q6_k's `−32`).
#[derive(Clone, Copy)]
pub(crate) struct KInts {
    pub codes: [i8; QK_K],
    pub isc: [i32; 16],
    pub imin: [i32; 16],
    pub d: f32,
    pub dmin: f32,
}

impl Default for KInts {
    fn default() -> Self {
        KInts { codes: [0; QK_K], isc: [0; 16], imin: [0; 16], d: 0.0, dmin: 0.0 }
    }
}

impl KInts {
    /// The f32 scales (`d · isc`) and mins (`−(dmin · imin)`, types with mins) of the first
    /// `sw.len()` sub-blocks, as [`decode_row`] gives them.
    #[inline(always)]
    fn write_scales(&self, mins: bool, sw: &mut [f32], mw: &mut [f32]) {
        for (k, s) in sw.iter_mut().enumerate() {
            *s = self.d * self.isc[k] as f32;
        }
        if mins {
            for (k, m) in mw.iter_mut().enumerate() {
                *m = -(self.dmin * self.imin[k] as f32);
            }
        }
    }

    /// Decode the full super-block `b` of the k-quant `qtype`. The value index `v` of the
    /// reference dequantizer is split into (half, shift, lane) loops of 32 lanes.
    #[inline(always)]
    pub(crate) fn block(&mut self, qtype: QType, b: &[u8]) {
        let cb = &mut self.codes;
        match qtype {
            QType::Q2K => {
                use layout::q2k::*;
                (self.d, self.dmin) = (f16_at(b, D), f16_at(b, DMIN));
                // v = 128 h + 32 s + l: bits 2s of qs[32 h + l].
                for h in 0..2 {
                    for sh in 0..4 {
                        bits32(&b[QS + 32 * h..], 2 * sh as u32, 3, &mut cb[128 * h + 32 * sh..]);
                    }
                }
                for k in 0..16 {
                    let sc = b[SCALES + k];
                    (self.isc[k], self.imin[k]) = (i32::from(sc & 0xF), i32::from(sc >> 4));
                }
            }
            QType::Q3K => {
                use layout::q3k::*;
                (self.d, self.dmin) = (f16_at(b, D), 0.0);
                // v = 128 h + 32 s + l: low bits 2s of qs[32 h + l], minus 4 where bit 4h + s of
                // hmask[l] is clear.
                for h in 0..2 {
                    for sh in 0..4 {
                        let out = &mut cb[128 * h + 32 * sh..128 * h + 32 * sh + 32];
                        bits32(&b[QS + 32 * h..], 2 * sh as u32, 3, out);
                        add_bit32(&b[HMASK..], (4 * h + sh) as u32, 4, out);
                        for o in out.iter_mut() {
                            *o -= 4;
                        }
                    }
                }
                for k in 0..16 {
                    (self.isc[k], self.imin[k]) = (scale_q3k(k, &b[SCALES..SCALES + 12]), 0);
                }
            }
            QType::Q4K | QType::Q5K => {
                use layout::q4k::{D, DMIN, SCALES};
                let five = qtype == QType::Q5K;
                let qs = if five { layout::q5k::QS } else { layout::q4k::QS };
                (self.d, self.dmin) = (f16_at(b, D), f16_at(b, DMIN));
                // v = 64 p + 32 hh + l: nibble hh of qs[32 p + l] (+ 16 × bit 2p + hh of qh[l]).
                for p in 0..4 {
                    for hh in 0..2 {
                        let out = &mut cb[64 * p + 32 * hh..];
                        bits32(&b[qs + 32 * p..], 4 * hh as u32, 0xF, out);
                        if five {
                            add_bit32(&b[layout::q5k::QH..], (2 * p + hh) as u32, 16, out);
                        }
                    }
                }
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, &b[SCALES..SCALES + 12]);
                    self.isc[2 * j..2 * j + 2].fill(i32::from(sc));
                    self.imin[2 * j..2 * j + 2].fill(i32::from(m));
                }
            }
            QType::Q6K => {
                use layout::q6k::*;
                (self.d, self.dmin) = (f16_at(b, D), 0.0);
                // v = 128 h + 32 q + l: nibble q / 2 of ql[64 h + 32 (q % 2) + l], plus bits 2q
                // of qh[32 h + l] as bits 4–5, minus 32.
                for h in 0..2 {
                    for q in 0..4 {
                        let out = &mut cb[128 * h + 32 * q..128 * h + 32 * q + 32];
                        bits32(&b[QL + 64 * h + 32 * (q % 2)..], 4 * (q / 2) as u32, 0xF, out);
                        let qh: &[u8; 32] = b[QH + 32 * h..QH + 32 * h + 32].try_into().expect("32 bytes");
                        for (o, &v) in out.iter_mut().zip(qh) {
                            *o = (*o | ((((v >> (2 * q)) & 3) << 4) as i8)) - 32;
                        }
                    }
                }
                for k in 0..16 {
                    (self.isc[k], self.imin[k]) = (i32::from(b[SCALES + k] as i8), 0);
                }
            }
            other => unreachable!("{} is not a k-quant", other.name()),
        }
    }
}

/// Decode k-quant super-blocks (the operation order of each scale and min is that of
/// [`crate::blocks::kquants::dequantize_row`], so `sw · code + mw` is its value exactly).
#[inline(always)]
fn decode_kquant(qtype: QType, src: &[u8], codes: &mut [i8], sw: &mut [f32], mw: &mut [f32]) {
    let bytes = qtype.info().block_bytes;
    let mut k = KInts::default();
    for (sb, b) in src.chunks_exact(bytes).enumerate() {
        k.block(qtype, b);
        codes[sb * QK_K..(sb + 1) * QK_K].copy_from_slice(&k.codes);
        let (sw, mw) = (&mut sw[sb * 16..sb * 16 + 16], &mut mw[sb * 16..sb * 16 + 16]);
        k.write_scales(has_mins(qtype, None), sw, mw);
    }
}

/// Decode a group-affine row. int2/3/4: `code = c − zero` (in −15..=15), no min. int8:
/// `code = c − 128` and, when asymmetric, `mw = d · (128 − zero)`.
#[inline(always)]
fn decode_affine(spec: &AffineSpec, cols: usize, src: &[u8], codes: &mut [i8], sw: &mut [f32], mw: &mut [f32]) {
    let bits = spec.bits;
    let g = spec.group_cols(cols);
    let ngroups = spec.groups(cols);
    let code_bytes = cols * bits as usize / 8;
    let (scale_off, zero_off) = (code_bytes, code_bytes + 2 * ngroups);
    let zero_of = |gi: usize| {
        if spec.symmetric {
            1u8 << (bits - 1)
        } else {
            pack::get_code(bits, &src[zero_off..], gi)
        }
    };
    // Codes as unsigned (`c` for 2..4 bits, `c ^ 0x80 = c − 128` for 8 bits); the zero of
    // each group is subtracted below for the narrow types.
    let nb = bits as usize;
    for (u, out) in src[..code_bytes].chunks_exact(nb).zip(codes.chunks_exact_mut(8)) {
        let mut le = [0u8; 8];
        le[..nb].copy_from_slice(u);
        let c = pack::unpack_unit(bits, u64::from_le_bytes(le)).to_le_bytes();
        for (o, &v) in out.iter_mut().zip(&c) {
            *o = (v ^ if bits == 8 { 0x80 } else { 0 }) as i8;
        }
    }
    for gi in 0..ngroups {
        let d = f16_at(src, scale_off + 2 * gi);
        let z = zero_of(gi);
        let (lo, hi) = (gi * g, ((gi + 1) * g).min(cols));
        if bits < 8 {
            for c in &mut codes[lo..hi] {
                *c -= z as i8;
            }
        } else if !spec.symmetric {
            mw[lo / QS..hi.div_ceil(QS)].fill(d * (128 - i32::from(z)) as f32);
        }
        sw[lo / QS..hi.div_ceil(QS)].fill(d);
    }
}

/// Decode a `-dq` row (`crate::blocks::dq`): `code = c − z_g` (in −15..=15), `sw[g] = m + d · k_g`
/// for each group `g` of 16 values, no min.
#[inline(always)]
fn decode_dq(bits: u32, cols: usize, src: &[u8], codes: &mut [i8], sw: &mut [f32]) {
    let (mut ks, mut zs, mut cs) = ([0u8; dq::GROUPS], [0u8; dq::GROUPS], [0u8; dq::SUPER]);
    for (vals, bytes) in dq::super_blocks(bits, cols) {
        let b = &src[bytes];
        let ng = vals.len() / dq::GROUP;
        let (so, zo, co) = dq::offsets(bits, ng);
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        pack::unpack_codes(dq::SCALE_BITS, &b[so..zo], &mut ks[..ng]);
        pack::unpack_codes(bits, &b[zo..co], &mut zs[..ng]);
        pack::unpack_codes(bits, &b[co..], &mut cs[..vals.len()]);
        let g0 = vals.start / QS;
        for g in 0..ng {
            sw[g0 + g] = dq::scale_of(d, m, u32::from(ks[g]));
            for j in g * QS..(g + 1) * QS {
                codes[vals.start + j] = cs[j] as i8 - zs[g] as i8;
            }
        }
    }
}

/// Whether decoded rows of a type carry per-16 mins (`mw`).
pub fn has_mins(qtype: QType, spec: Option<AffineSpec>) -> bool {
    match qtype.ragged_base().unwrap_or(qtype) {
        QType::Q4_1 | QType::Q5_1 | QType::Q2K | QType::Q4K | QType::Q5K => true,
        QType::Int8 => spec.is_some_and(|s| !s.symmetric),
        _ => false,
    }
}

/// The scalar reference decoder.
fn decode_impl(
    qtype: QType,
    spec: Option<AffineSpec>,
    cols: usize,
    src: &[u8],
    codes: &mut [i8],
    sw: &mut [f32],
    mw: &mut [f32],
) {
    let cb = padded(cols);
    codes[cols..].fill(0);
    sw[cols / QS..].fill(0.0);
    if has_mins(qtype, spec) {
        mw.fill(0.0);
    }
    match qtype.info().family {
        Family::Legacy => decode_legacy(&Spec::of(qtype).expect("legacy type"), src, codes, sw, mw),
        Family::NonLinear => decode_iq4nl(src, codes, sw),
        Family::KQuant => decode_kquant(qtype, src, codes, sw, mw),
        Family::RaggedKQuant => {
            let base = qtype.ragged_base().expect("ragged base");
            decode_kquant(base, &src[..cols / QK_K * base.info().block_bytes], codes, sw, mw);
            ragged_tail(base, cols, src, codes, sw, mw);
        }
        Family::Affine => decode_affine(&spec.expect("group-affine spec"), cols, src, codes, sw, mw),
        Family::DoubleQuant => decode_dq(qtype.dq_bits().expect("dq bits"), cols, src, codes, sw),
        Family::Float => unreachable!("float weights are not decoded to codes"),
    }
    debug_assert_eq!(codes.len(), cb);
}

/// Decode stored row `src` (`cols` values of a quantized, non-float type) into `codes`
/// (`padded(cols)` i8), `sw` and `mw` (`padded(cols) / 16` f32 each; `mw` is only written for
/// types with mins, see [`has_mins`]): value `j` of the row is `sw[j / 16] · codes[j]` (`+
/// mw[j / 16]`). Padding gets code 0, scale 0 and min 0.
#[allow(clippy::too_many_arguments)]
pub fn decode_row(
    isa: Isa,
    qtype: QType,
    spec: Option<AffineSpec>,
    cols: usize,
    src: &[u8],
    codes: &mut [i8],
    sw: &mut [f32],
    mw: &mut [f32],
) {
    assert!(codes.len() == padded(cols) && sw.len() == codes.len() / QS && mw.len() == sw.len());
    match isa {
        // The k-quants multiply through their own path (`dot_k`, `decode_k_row`); this form of
        // them is decoded by the scalar decoder at every ISA.
        _ if is_kquant(qtype) => decode_impl(qtype, spec, cols, src, codes, sw, mw),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => x86::decode_avx2(qtype, spec, cols, src, codes, sw, mw),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => arm::decode_neon(qtype, spec, cols, src, codes, sw, mw),
        _ => decode_impl(qtype, spec, cols, src, codes, sw, mw),
    }
}

/// The tail of a ragged k-type row (after its full super-blocks were decoded by the base
/// type's decoder): [`decode_tail`], then codes past `cols`, and the scales and mins of
/// sub-blocks wholly past `cols`, are zeroed. `src` is the whole row.
#[inline(always)]
pub(crate) fn ragged_tail(base: QType, cols: usize, src: &[u8], codes: &mut [i8], sw: &mut [f32], mw: &mut [f32]) {
    let u = ragged::tail_units(cols);
    if u == 0 {
        return;
    }
    let full = cols / QK_K * QK_K;
    let (fb, s_full, s_real) = (full / QK_K * base.info().block_bytes, full / QS, cols.div_ceil(QS));
    decode_tail(base, u, &src[fb..], &mut codes[full..], &mut sw[s_full..], &mut mw[s_full..]);
    codes[cols..].fill(0);
    sw[s_real..].fill(0.0);
    if has_mins(base, None) {
        mw[s_real..].fill(0.0);
    }
}

/// Decode a tail of `u` units of the base type `base` (layout in
/// [`crate::blocks::kquants::ragged`]) into `codes[..32 u]`, `sw[..2 u]`, `mw[..2 u]`, with the
/// base decoder's operations for each scale and min (so `sw · code + mw` is the dequantized
/// value exactly).
#[inline(always)]
fn decode_tail(base: QType, u: usize, t: &[u8], codes: &mut [i8], sw: &mut [f32], mw: &mut [f32]) {
    let mut k = KInts::default();
    k.tail(base, u, t);
    codes[..32 * u].copy_from_slice(&k.codes[..32 * u]);
    k.write_scales(has_mins(base, None), &mut sw[..2 * u], &mut mw[..2 * u]);
}

impl KInts {
    /// Decode a ragged tail of `u` units of the base type `base` (layout in
    /// [`crate::blocks::kquants::ragged`]) into `codes[..32 u]`, `isc[..2 u]`, `imin[..2 u]`.
    /// Loops over fixed-size arrays, which the compiler vectorises.
    #[inline(always)]
    pub(crate) fn tail(&mut self, base: QType, u: usize, t: &[u8]) {
        // Unit k's fields: 2-bit (value j at byte j % 8, bits 2 (j / 8)), 4-bit (byte j % 16, bits
        // 4 (j / 16)), 1-bit (bit j of a little-endian u32).
        let two = |at: usize, k: usize, c: &mut [i8; 32]| {
            let q: &[u8; 8] = t[at + 8 * k..at + 8 * k + 8].try_into().expect("8 bytes");
            let w = u64::from_le_bytes(*q);
            for s in 0..4 {
                // The 2-bit fields at bits 2 s of the eight bytes, one u64 shift for all of them.
                let f = ((w >> (2 * s)) & 0x0303_0303_0303_0303).to_le_bytes();
                for j in 0..8 {
                    c[8 * s + j] = f[j] as i8;
                }
            }
        };
        let four = |at: usize, k: usize, c: &mut [i8; 32]| {
            let q: &[u8; 16] = t[at + 16 * k..at + 16 * k + 16].try_into().expect("16 bytes");
            for j in 0..16 {
                c[j] = (q[j] & 15) as i8;
                c[j + 16] = (q[j] >> 4) as i8;
            }
        };
        let add_one = |at: usize, k: usize, add: i8, c: &mut [i8; 32]| {
            let q: &[u8; 4] = t[at + 4 * k..at + 4 * k + 4].try_into().expect("4 bytes");
            // Bit i of byte b is value 8 b + i: a byte mask per lane and a compare (vectorises).
            for b in 0..4 {
                for i in 0..8 {
                    c[8 * b + i] += if q[b] & (1 << i) != 0 { add } else { 0 };
                }
            }
        };
        let units = self.codes[..32 * u].chunks_exact_mut(32).map(|c| <&mut [i8; 32]>::try_from(c).expect("32 codes"));
        let (isc, imin) = (&mut self.isc[..2 * u], &mut self.imin[..2 * u]);
        match base {
            QType::Q2K => {
                (self.d, self.dmin) = (f16_at(t, 10 * u), f16_at(t, 10 * u + 2));
                for (k, c) in units.enumerate() {
                    two(2 * u, k, c);
                }
                for (h, &sc) in t[..2 * u].iter().enumerate() {
                    (isc[h], imin[h]) = (i32::from(sc & 0xF), i32::from(sc >> 4));
                }
            }
            QType::Q3K => {
                (self.d, self.dmin) = (f16_at(t, 14 * u), 0.0);
                for (k, c) in units.enumerate() {
                    two(4 * u, k, c);
                    add_one(0, k, 4, c);
                    for o in c.iter_mut() {
                        *o -= 4;
                    }
                }
                for (h, &sc) in t[12 * u..14 * u].iter().enumerate() {
                    (isc[h], imin[h]) = (i32::from(sc & 63) - 32, 0);
                }
            }
            QType::Q4K | QType::Q5K => {
                (self.d, self.dmin) = (f16_at(t, 0), f16_at(t, 2));
                let five = base == QType::Q5K;
                for (k, c) in units.enumerate() {
                    if five {
                        four(4 + 6 * u, k, c);
                        add_one(4 + 2 * u, k, 16, c);
                    } else {
                        four(4 + 2 * u, k, c);
                    }
                    isc[2 * k..2 * k + 2].fill(i32::from(t[4 + k] & 63));
                    imin[2 * k..2 * k + 2].fill(i32::from(t[4 + u + k] & 63));
                }
            }
            QType::Q6K => {
                (self.d, self.dmin) = (f16_at(t, 26 * u), 0.0);
                for (k, c) in units.enumerate() {
                    let mut hi = [0i8; 32];
                    four(0, k, c);
                    two(16 * u, k, &mut hi);
                    for (o, h) in c.iter_mut().zip(hi) {
                        *o = (*o | (h << 4)) - 32;
                    }
                }
                for (h, &sc) in t[24 * u..26 * u].iter().enumerate() {
                    (isc[h], imin[h]) = (i32::from(sc as i8), 0);
                }
            }
            other => unreachable!("{} is not a k-quant", other.name()),
        }
    }
}

/// One block's share of a k-quant dot, the f32 operations of every k-kernel in this order:
/// `acc + (d · dx) · isum`, then (types with mins) `− (dmin · dx) · imin`, each product and sum
/// rounded to f32 (`dd = [d, dmin]`, `dx` the activation block's step).
#[inline(always)]
fn k_block_ref(mut acc: f32, mins: bool, dd: [f32; 2], dx: f32, isum: i64, imin: i64) -> f32 {
    acc += (dd[0] * dx) * isum as f32;
    if mins {
        acc -= (dd[1] * dx) * imin as f32;
    }
    acc
}

/// The scalar reference of [`dot_k`] for one stored row `src` of a k-quant or ragged k-quant
/// `qtype` with `cols` values, and an activation row quantized in blocks of [`QK_K`]
/// ([`act_block`]): per super-block (and the ragged tail) the exact integer sums
/// `isum = Σ_k isc_k · Σ_{j∈k} code_j · q_j` and `imin = Σ_k imin_k · Σ_{j∈k} q_j`, then, in
/// f32 and in this order, `acc += (d · step) · isum` and `acc −= (dmin · step) · imin`
/// (types with mins). `act.scale` is not applied. Every ISA gives these bits.
pub fn dot_k_ref(qtype: QType, cols: usize, src: &[u8], act: ActRow<'_>) -> f32 {
    dot_k_with(qtype, cols, src, act, k_sums_ref)
}

/// The exact integer sums `(isum, imin)` of [`dot_k_ref`] over the first `ns` sub-blocks of
/// the decoded block `k`, with the block's activation codes `q` and per-16 sums `b16` (at
/// least `ns` of them).
fn k_sums_ref(k: &KInts, ns: usize, q: &[i8], b16: &[i16]) -> (i64, i64) {
    let (mut isum, mut imin) = (0i64, 0i64);
    for (s, &b) in b16[..ns].iter().enumerate() {
        let dot: i64 = (QS * s..QS * (s + 1)).map(|j| i64::from(k.codes[j]) * i64::from(q[j])).sum();
        isum += i64::from(k.isc[s]) * dot;
        imin += i64::from(k.imin[s]) * i64::from(b);
    }
    (isum, imin)
}

/// [`dot_k_ref`]'s walk over the blocks of a stored row, with the integer sums of each block
/// from `sums` (given the decoded block, its sub-block count and its slices of the activation's
/// codes and per-16 sums), which must be [`k_sums_ref`]'s exactly: shared by the reference and
/// the kernels that decode a block at a time (NEON).
#[inline(always)]
pub(crate) fn dot_k_with<F>(qtype: QType, cols: usize, src: &[u8], act: ActRow<'_>, sums: F) -> f32
where
    F: Fn(&KInts, usize, &[i8], &[i16]) -> (i64, i64),
{
    let base = qtype.ragged_base().unwrap_or(qtype);
    let (full, bytes) = (cols / QK_K, base.info().block_bytes);
    let mins = has_mins(base, None);
    let mut k = KInts::default();
    let mut acc = 0f32;
    let mut add = |k: &KInts, sb: usize, ns: usize| {
        let (v0, s0) = (sb * QK_K, sb * 16);
        let (isum, imin) = sums(k, ns, &act.q[v0..v0 + QS * ns], &act.b16[s0..s0 + ns]);
        acc = k_block_ref(acc, mins, [k.d, k.dmin], act.d16[s0], isum, imin);
    };
    for sb in 0..full {
        k.block(base, &src[sb * bytes..(sb + 1) * bytes]);
        add(&k, sb, 16);
    }
    let u = ragged::tail_units(cols);
    if base != qtype && u > 0 {
        k.tail(base, u, &src[full * bytes..]);
        add(&k, full, 2 * u);
    }
    acc
}

/// The k-quant dots of four stored rows of `qtype` (a k-quant or ragged k-quant, [`is_kquant`];
/// `cols` values each) with one activation row quantized in blocks of [`QK_K`]: the bits of
/// [`dot_k_ref`] for each row at every ISA (AVX2 kernels in `fused.rs` at the AVX2 and
/// AVX-512 levels, with AVX-512 VNNI ones for q4_k, q5_k and q6_k where the CPU has VNNI; NEON
/// ones with `sdot` or `smull` in `arm.rs`; the reference elsewhere). `act.scale` is not applied.
pub fn dot_k(isa: Isa, qtype: QType, cols: usize, w: [&[u8]; 4], act: ActRow<'_>) -> [f32; 4] {
    assert!(is_kquant(qtype), "{} is not a k-quant", qtype.name());
    let cp = padded(cols);
    assert!(act.q.len() == cp && act.d16.len() == cp / QS && act.b16.len() == cp / QS);
    let bytes = crate::quant::row_bytes(qtype, None, cols).unwrap_or_else(|e| panic!("{e}"));
    for r in w {
        assert!(r.len() == bytes, "a {} row of {cols} values is {bytes} bytes, not {}", qtype.name(), r.len());
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => {
            assert!(isa.is_available(), "{isa:?} kernel on a CPU without it");
            let base = qtype.ragged_base().unwrap_or(qtype);
            let tail = if base == qtype { 0 } else { ragged::tail_units(cols) };
            let vnni = isa == Isa::Avx512 && has_avx512_vnni();
            // SAFETY: the AVX2 level (AVX2, FMA, F16C) is available (asserted above); the rows
            // and the activation hold `cols` values (asserted above; the kernels check again).
            unsafe { fused::k_rows(base, w, act, cols / QK_K, tail, fused::AHEAD_ROWS * bytes, vnni) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => arm::dot_k_neon(qtype, cols, w, act),
        _ => w.map(|r| dot_k_ref(qtype, cols, r, act)),
    }
}

/// The offset of a k-quant's unsigned codes (`code = u − zero`): 4 for q3_k, 32 for q6_k, 0
/// for the types with mins.
pub fn k_zero(base: QType) -> i32 {
    match base {
        QType::Q3K => 4,
        QType::Q6K => 32,
        _ => 0,
    }
}

/// Blocks of a k-quant row of `cols` values in the activation's blocks of [`QK_K`]: the full
/// super-blocks and a ragged tail, if any.
pub fn k_blocks(cols: usize) -> usize {
    padded(cols).div_ceil(QK_K)
}

/// One k-quant row decoded for the GEMM ([`decode_k_row`], [`dot_k_decoded`]), laid out for
/// the kernel's loads: unsigned codes; per block of 256 (the last may be a ragged tail) 16
/// i16 scales, 16 i16 offset scales, 16 i16 mins and `[d, dmin]`.
#[derive(Debug, Clone, Copy)]
pub struct KRow<'a> {
    /// Unsigned codes `u = code + zero` ([`k_zero`]), `padded(cols)`, 0 in the padding.
    pub u: &'a [u8],
    /// The 16 sub-block scales of each block, even sub-blocks first (0, 2, …, 14, 1, 3, …,
    /// 15: the order of the kernel's 128-bit lanes), 0 past the row; see [`sv_index`].
    pub sv: &'a [i16],
    /// `zero · scale` of each sub-block, 16 per block (0 past the row).
    pub zs: &'a [i16],
    /// The min of each sub-block, 16 per block (0 past the row and for the types without mins).
    pub mn: &'a [i16],
    /// `[d, dmin]` per block.
    pub dd: &'a [f32],
}

/// Where sub-block `s` (< 16) of block `b` has its scale in [`KRow::sv`].
#[inline(always)]
pub fn sv_index(b: usize, s: usize) -> usize {
    16 * b + (s % 2) * 8 + s / 2
}

/// Decode stored row `src` of a k-quant or ragged k-quant `qtype` (`cols` values) into the
/// [`KRow`] slices `u` (`padded(cols)`), `sv`, `zs`, `mn` (16 per [`k_blocks`]) and `dd` (2
/// per block). Every value fits: codes and mins are at most 6-bit,
/// scales i8, `zero · scale` at most 32 · 128. Scalar: the decoded tile is reused by every
/// activation row of a batch.
#[allow(clippy::too_many_arguments)]
pub fn decode_k_row(
    qtype: QType,
    cols: usize,
    src: &[u8],
    u: &mut [u8],
    sv: &mut [i16],
    zs: &mut [i16],
    mn: &mut [i16],
    dd: &mut [f32],
) {
    let base = qtype.ragged_base().unwrap_or(qtype);
    let (cp, nb, bytes) = (padded(cols), k_blocks(cols), base.info().block_bytes);
    assert!(u.len() == cp && sv.len() == 16 * nb && zs.len() == 16 * nb && mn.len() == 16 * nb && dd.len() == 2 * nb);
    let zero = k_zero(base);
    let mut k = KInts::default();
    let mut put = |k: &KInts, b: usize, values: usize| {
        for (o, &c) in u[b * QK_K..b * QK_K + values].iter_mut().zip(&k.codes[..values]) {
            *o = (i32::from(c) + zero) as u8;
        }
        for s in 0..16 {
            let (sc, m) = if s < values / QS { (k.isc[s], k.imin[s]) } else { (0, 0) };
            sv[sv_index(b, s)] = sc as i16;
            zs[16 * b + s] = (zero * sc) as i16;
            mn[16 * b + s] = m as i16;
        }
        dd[2 * b] = k.d;
        dd[2 * b + 1] = k.dmin;
    };
    let full = cols / QK_K;
    for b in 0..full {
        k.block(base, &src[b * bytes..(b + 1) * bytes]);
        put(&k, b, QK_K);
    }
    if nb > full {
        let units = ragged::tail_units(cols);
        k.tail(base, units, &src[full * bytes..]);
        put(&k, full, 32 * units);
        // Codes past the row (a tail that is not a multiple of 32) are 0.
        u[cols..].fill(0);
    }
}

/// The scalar reference of [`dot_k_decoded`].
pub fn dot_k_decoded_ref(base: QType, w: KRow<'_>, act: ActRow<'_>) -> f32 {
    dot_k_decoded_with(base, w, act, |b, ns| {
        let (mut isum, mut imin) = (0i64, 0i64);
        for s in 0..ns {
            let (g, v0) = (16 * b + s, b * QK_K + s * QS);
            let dot: i64 = (v0..v0 + QS).map(|j| i64::from(w.u[j]) * i64::from(act.q[j])).sum();
            let bsum = i64::from(act.b16[g]);
            isum += i64::from(w.sv[sv_index(b, s)]) * dot - i64::from(w.zs[g]) * bsum;
            imin += i64::from(w.mn[g]) * bsum;
        }
        (isum, imin)
    })
}

/// [`dot_k_decoded_ref`]'s walk over the blocks, with the exact integer sums `(isum, imin)` of
/// block `b`'s first `ns` sub-blocks from `sums(b, ns)`: shared by the reference and the NEON
/// kernel.
#[inline(always)]
pub(crate) fn dot_k_decoded_with<F>(base: QType, w: KRow<'_>, act: ActRow<'_>, sums: F) -> f32
where
    F: Fn(usize, usize) -> (i64, i64),
{
    let mins = has_mins(base, None);
    let mut acc = 0f32;
    for b in 0..act.q.len().div_ceil(QK_K) {
        let ns = ((act.q.len() - b * QK_K) / QS).min(16);
        let (isum, imin) = sums(b, ns);
        acc = k_block_ref(acc, mins, [w.dd[2 * b], w.dd[2 * b + 1]], act.d16[b * 16], isum, imin);
    }
    acc
}

/// The dots of four decoded k-quant rows of base type `base` ([`decode_k_row`]) with four
/// activation rows quantized in blocks of [`QK_K`] (`out[i][r]`: activation `i`, row `r`): the
/// same bits as [`dot_k`] of the stored rows (and [`dot_k_ref`]), at every ISA. The GEMM's
/// kernel: decoding is done once per row and batch, and each weight load serves four
/// activation rows at AVX-512 VNNI (sixteen accumulators in its 32 vector registers), two at
/// AVX2, one at NEON (`arm.rs`; the reference elsewhere).
pub fn dot_k_decoded(isa: Isa, base: QType, w: [KRow<'_>; 4], act: [ActRow<'_>; 4]) -> [[f32; 4]; 4] {
    let (cp, nb) = (act[0].q.len(), act[0].q.len().div_ceil(QK_K));
    for a in &act {
        assert!(a.q.len() == cp && cp.is_multiple_of(QA) && a.d16.len() == cp / QS && a.b16.len() == cp / QS);
    }
    for r in &w {
        assert!(r.u.len() == cp && r.sv.len() == 16 * nb && r.zs.len() == 16 * nb && r.mn.len() == 16 * nb);
        assert!(r.dd.len() == 2 * nb);
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => {
            assert!(isa.is_available(), "{isa:?} kernel on a CPU without it");
            // SAFETY: the AVX2 level is available and every length was checked above.
            unsafe {
                if isa == Isa::Avx512 && has_avx512_vnni() {
                    fused::k_decoded_vnni(has_mins(base, None), w, act)
                } else {
                    fused::k_decoded(has_mins(base, None), w, act)
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => arm::dot_k_decoded_neon(base, w, act),
        _ => act.map(|a| w.map(|r| dot_k_decoded_ref(base, r, a))),
    }
}

/// Activation rows per tile of [`dot_k_outer`] (the lanes of a 512-bit vector of i32).
pub const LANES: usize = 16;
/// Decoded weight rows per call of [`dot_k_outer`].
pub const OUTER_ROWS: usize = 8;

/// [`LANES`] activation rows quantized in blocks of [`QK_K`], repacked for [`dot_k_outer`]
/// ([`pack_act_tile`]); `cp` is their padded length and `nb = cp.div_ceil(256)`.
#[derive(Debug, Clone, Copy)]
pub struct ActTile<'a> {
    /// `16 · cp` codes: for each group of 4 values, the 16 rows' 4 codes (64 bytes).
    pub xt: &'a [i8],
    /// `256 · nb` per-16 sums: for each block and pair of sub-blocks (8 per block), the 16
    /// rows' two sums (i16 pairs, 64 bytes); 0 past the row.
    pub bt: &'a [i16],
    /// `16 · nb` steps: each block's step of the 16 rows.
    pub dx: &'a [f32],
}

/// The codes of `acts` (all of one padded length `cp`), for each group of 4 values the 16
/// rows' 4 codes (64 bytes): [`ActTile::xt`].
fn pack_codes(acts: &[ActRow<'_>; LANES], xt: &mut [i8]) {
    let cp = acts[0].q.len();
    assert!(xt.len() == LANES * cp);
    for (l, a) in acts.iter().enumerate() {
        assert!(a.q.len() == cp && a.b16.len() == cp / QS && a.d16.len() == cp / QS);
        for (g, q4) in a.q.chunks_exact(4).enumerate() {
            xt[LANES * 4 * g + 4 * l..][..4].copy_from_slice(q4);
        }
    }
}

/// Repack `acts` (all of one padded length `cp`) into a tile for [`dot_k_outer`]: `xt`, `bt`
/// and `dx` as [`ActTile`] describes them.
pub fn pack_act_tile(acts: [ActRow<'_>; LANES], xt: &mut [i8], bt: &mut [i16], dx: &mut [f32]) {
    pack_codes(&acts, xt);
    let nb = acts[0].q.len().div_ceil(QK_K);
    assert!(bt.len() == 256 * nb && dx.len() == LANES * nb);
    for (l, a) in acts.iter().enumerate() {
        for b in 0..nb {
            for k in 0..16 {
                let v = a.b16.get(16 * b + k).copied().unwrap_or(0);
                bt[2 * LANES * (8 * b + k / 2) + 2 * l + k % 2] = v;
            }
            dx[LANES * b + l] = a.d16[16 * b];
        }
    }
}

/// Whether [`dot_k_outer`] runs at `isa` (AVX-512 with VNNI).
pub fn has_outer(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa == Isa::Avx512 && has_avx512_vnni()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// The dots of [`OUTER_ROWS`] decoded k-quant rows of base type `base` ([`decode_k_row`]) with
/// a tile of [`LANES`] activation rows ([`pack_act_tile`]; `out[r][l]`: row `r`, activation
/// `l`), as outer products (a row's four codes times the tile's sixteen rows' four values per
/// `vpdpbusd`): the bits of [`dot_k_decoded`] (and [`dot_k_ref`]). Only where [`has_outer`].
pub fn dot_k_outer(isa: Isa, base: QType, w: [KRow<'_>; OUTER_ROWS], t: ActTile<'_>) -> [[f32; LANES]; OUTER_ROWS] {
    assert!(has_outer(isa), "the outer-product k-quant kernel needs AVX-512 VNNI");
    let cp = t.xt.len() / LANES;
    let nb = cp.div_ceil(QK_K);
    assert!(t.xt.len() == LANES * cp && cp.is_multiple_of(QA) && t.bt.len() == 256 * nb && t.dx.len() == LANES * nb);
    for r in &w {
        assert!(r.u.len() == cp && r.sv.len() == 16 * nb && r.zs.len() == 16 * nb && r.mn.len() == 16 * nb);
        assert!(r.dd.len() == 2 * nb);
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: AVX-512 VNNI is available (asserted above) and every length was checked.
        unsafe { fused::k_outer(has_mins(base, None), w, t) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = base;
        unreachable!()
    }
}

/// [`LANES`] activation rows quantized in blocks of 32, repacked for [`dot_q8_outer`]
/// ([`pack_q8_tile`]); `cp` is their padded length.
#[derive(Debug, Clone, Copy)]
pub struct Q8Tile<'a> {
    /// `16 · cp` codes, as [`ActTile::xt`].
    pub xt: &'a [i8],
    /// `4 · cp` i32: for each group of 4 values, the 16 rows' `−128 · Σ` of their 4 codes.
    pub c4: &'a [i32],
    /// `cp` steps: for each sub-block of 16 values, the 16 rows' `d16`.
    pub d16: &'a [f32],
}

/// Repack `acts` (all of one padded length `cp`) into a tile for [`dot_q8_outer`]: `xt`, `c4`
/// and `d16` as [`Q8Tile`] describes them.
pub fn pack_q8_tile(acts: [ActRow<'_>; LANES], xt: &mut [i8], c4: &mut [i32], d16: &mut [f32]) {
    pack_codes(&acts, xt);
    let cp = acts[0].q.len();
    assert!(c4.len() == 4 * cp && d16.len() == cp);
    for (l, a) in acts.iter().enumerate() {
        for (g, q4) in a.q.chunks_exact(4).enumerate() {
            c4[LANES * g + l] = -128 * q4.iter().map(|&v| i32::from(v)).sum::<i32>();
        }
        for (k, &d) in a.d16.iter().enumerate() {
            d16[LANES * k + l] = d;
        }
    }
}

/// [`dot_q8_x4`] of two decoded weight rows with a tile of [`LANES`] activation rows
/// ([`pack_q8_tile`]; `out[r][l]`: row `r`, activation `l`) as outer products: the bits of
/// [`dot_q8_x4`] at the AVX2 and AVX-512 levels. `wq` are the rows' codes with their sign bit
/// flipped (`c ^ 0x80`, the byte of `c + 128`). Only where [`has_outer`].
pub fn dot_q8_outer(isa: Isa, wq: [&[i8]; 2], sw: [&[f32]; 2], t: Q8Tile<'_>) -> [[f32; LANES]; 2] {
    assert!(has_outer(isa), "the outer-product int8 kernel needs AVX-512 VNNI");
    let cp = t.xt.len() / LANES;
    assert!(t.xt.len() == LANES * cp && cp.is_multiple_of(QA) && t.c4.len() == 4 * cp && t.d16.len() == cp);
    for r in 0..2 {
        assert!(wq[r].len() == cp && sw[r].len() == cp / QS);
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: AVX-512 VNNI is available (asserted above) and every length was checked.
        unsafe { fused::q8_outer(wq, sw, t) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        unreachable!()
    }
}

/// Whether the dots of `qtype` are summed per block of 32 values ([`dot_b32_ref`]): the legacy
/// types (q4_0, q4_1, q5_0, q5_1, q8_0) and iq4_nl, whose blocks of 32 carry one scale (and
/// min) and meet one activation step.
pub fn is_b32(qtype: QType) -> bool {
    matches!(qtype.info().family, Family::Legacy | Family::NonLinear)
}

/// One 32-value block's share of a [`dot_b32_ref`] dot, the f32 operations of every b32 kernel
/// in this order: `acc + (d · dx) · isum`, then (types with mins) `+ (m · dx) · bsum`, each
/// product and sum rounded to f32 (`isum` and `bsum` exact, below 2^24 in magnitude).
#[inline(always)]
pub(crate) fn b32_block_ref(acc: f32, d: f32, m: Option<f32>, dx: f32, isum: i32, bsum: i32) -> f32 {
    let acc = acc + (d * dx) * isum as f32;
    match m {
        Some(m) => acc + (m * dx) * bsum as f32,
        None => acc,
    }
}

/// `Σ q` of the activation's block `b` of 32 values (exact), from its per-16 sums `b16`.
#[inline(always)]
pub(crate) fn b32_bsum(b16: &[i16], b: usize) -> i32 {
    i32::from(b16[2 * b]) + i32::from(b16[2 * b + 1])
}

/// The scalar reference of the 32-value block dot ([`dot_b32_x4`], and of every kernel of the
/// legacy types and iq4_nl, [`is_b32`]): a row decoded by [`decode_row`] (`wq`, its scales `sw`
/// and, for q4_1 and q5_1, its mins `mw`, both per 16 values and equal in each half block)
/// with an activation row quantized in blocks of 32. Per block `b`, in order, the exact sums
/// `isum = Σ wq · q` and `bsum = Σ q` (`act.b16`'s two halves), then [`b32_block_ref`] with
/// `d = sw[2b]`, `m = mw[2b]` and the block's step `dx = act.d16[2b]`. Every ISA gives these
/// bits (the integer sums are exact, and only the block's total goes to f32), so a token's
/// outputs do not depend on the ISA or on its batch. `act.scale` is not applied.
pub fn dot_b32_ref(wq: &[i8], sw: &[f32], mw: Option<&[f32]>, act: ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, (wb, xb)) in wq.chunks_exact(QA).zip(act.q.chunks_exact(QA)).enumerate() {
        let isum: i32 = wb.iter().zip(xb).map(|(&a, &x)| i32::from(a) * i32::from(x)).sum();
        acc = b32_block_ref(acc, sw[2 * b], mw.map(|m| m[2 * b]), act.d16[2 * b], isum, b32_bsum(act.b16, b));
    }
    acc
}

/// Check that four decoded rows hold `cp` codes (a multiple of 32) and `cp / 16` scales (and
/// mins), for the b32 dots.
fn check_b32_rows(wq: &[&[i8]; 4], sw: &[&[f32]; 4], mw: Option<[&[f32]; 4]>, cp: usize) {
    assert!(cp.is_multiple_of(QA));
    for r in 0..4 {
        assert!(wq[r].len() == cp && sw[r].len() == cp / QS && mw.is_none_or(|m| m[r].len() == cp / QS));
    }
}

/// [`dot_b32_ref`] of four decoded rows with one activation row (the decoded tile's kernel,
/// the activation loaded once for the four): its bits at every ISA (an AVX2 kernel at the AVX2
/// and AVX-512 levels, NEON with `sdot` or `smull`, the reference elsewhere).
pub fn dot_b32_x4(isa: Isa, wq: [&[i8]; 4], sw: [&[f32]; 4], mw: Option<[&[f32]; 4]>, act: ActRow<'_>) -> [f32; 4] {
    let cp = act.q.len();
    assert!(act.d16.len() == cp / QS && act.b16.len() == cp / QS);
    check_b32_rows(&wq, &sw, mw, cp);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => x86::dot_b32_x4_avx2(wq, sw, mw, act),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => arm::dot_b32_x4_neon(wq, sw, mw, act),
        _ => std::array::from_fn(|r| dot_b32_ref(wq[r], sw[r], mw.map(|m| m[r]), act)),
    }
}

/// [`LANES`] activation rows quantized in blocks of 32, repacked for [`dot_b32_outer`]
/// ([`pack_b32_tile`]); `cp` is their padded length.
#[derive(Debug, Clone, Copy)]
pub struct B32Tile<'a> {
    /// `16 · cp` codes, as [`ActTile::xt`].
    pub xt: &'a [i8],
    /// `cp / 2` i32: for each block of 32 values, the 16 rows' `−128 · Σ q` (exact).
    pub c32: &'a [i32],
    /// `cp / 2` steps: for each block of 32 values, the 16 rows' step.
    pub dx: &'a [f32],
}

/// Repack `acts` (all of one padded length `cp`, quantized in blocks of 32) into a tile for
/// [`dot_b32_outer`]: `xt`, `c32` and `dx` as [`B32Tile`] describes them.
pub fn pack_b32_tile(acts: [ActRow<'_>; LANES], xt: &mut [i8], c32: &mut [i32], dx: &mut [f32]) {
    pack_codes(&acts, xt);
    let cp = acts[0].q.len();
    assert!(c32.len() == cp / 2 && dx.len() == cp / 2);
    for (l, a) in acts.iter().enumerate() {
        for b in 0..cp / QA {
            c32[LANES * b + l] = -128 * b32_bsum(a.b16, b);
            dx[LANES * b + l] = a.d16[2 * b];
        }
    }
}

/// [`dot_b32_x4`] of four decoded rows with a tile of [`LANES`] activation rows
/// ([`pack_b32_tile`]; `out[r][l]`: row `r`, activation `l`) as outer products (per 4 values
/// and row one broadcast of the row's codes and one `vpdpbusd` into the block's exact i32
/// sums, sixteen activation rows in the lanes): the bits of [`dot_b32_ref`]. `wq` are the rows'
/// codes with their sign bit flipped (`c ^ 0x80`, the byte of `c + 128`). Only where
/// [`has_outer`].
pub fn dot_b32_outer(
    isa: Isa,
    wq: [&[i8]; 4],
    sw: [&[f32]; 4],
    mw: Option<[&[f32]; 4]>,
    t: B32Tile<'_>,
) -> [[f32; LANES]; 4] {
    assert!(has_outer(isa), "the outer-product b32 kernel needs AVX-512 VNNI");
    let cp = t.xt.len() / LANES;
    assert!(t.xt.len() == LANES * cp && t.c32.len() == cp / 2 && t.dx.len() == cp / 2);
    check_b32_rows(&wq, &sw, mw, cp);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: AVX-512 VNNI is available (asserted above) and every length was checked.
        unsafe { fused::b32_outer(wq, sw, mw, t) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (wq, sw, mw);
        unreachable!()
    }
}

/// The signature of the b32 kernels ([`dot_b32_x4`]).
pub type DotB32 = fn([&[i8]; 4], [&[f32]; 4], Option<[&[f32]; 4]>, ActRow<'_>) -> [f32; 4];

/// Every b32 kernel this CPU can run, named, including those no ISA level selects here (NEON
/// without `sdot` on a CPU with it), for the tests.
pub fn dot_b32_variants() -> Vec<(&'static str, DotB32)> {
    let mut v: Vec<(&'static str, DotB32)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx2.is_available() {
        v.push(("avx2", x86::dot_b32_x4_avx2));
    }
    #[cfg(target_arch = "aarch64")]
    {
        v.push(("neon", arm::dot_b32_x4_neon_smull));
        if has_dotprod() {
            v.push(("neon-dotprod", arm::dot_b32_x4_neon_sdot));
        }
    }
    v
}

/// The scalar reference of [`dot_q8`]: per sub-block the exact integer sum, then
/// `acc += (sw[k] · d16[k]) · isum` in order, in f32.
pub fn dot_q8_ref(wq: &[i8], sw: &[f32], xq: &[i8], d16: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (k, (wb, xb)) in wq.chunks_exact(QS).zip(xq.chunks_exact(QS)).enumerate() {
        let isum: i32 = wb.iter().zip(xb).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
        acc += (sw[k] * d16[k]) * isum as f32;
    }
    acc
}

/// `Σ_k sw[k] · d16[k] · Σ_{j in sub-block k} wq[j] · xq[j]`. `wq` and `xq` have the same
/// length, a multiple of 32; `sw` and `d16` have a sixteenth of it. `xq` must not hold −128.
pub fn dot_q8(isa: Isa, wq: &[i8], sw: &[f32], xq: &[i8], d16: &[f32]) -> f32 {
    assert!(wq.len() == xq.len() && wq.len().is_multiple_of(QA) && sw.len() == wq.len() / QS && d16.len() == sw.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::dot_q8_avx2(wq, sw, xq, d16),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::dot_q8_avx512(wq, sw, xq, d16),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => arm::dot_q8_neon(wq, sw, xq, d16),
        _ => dot_q8_ref(wq, sw, xq, d16),
    }
}

/// [`dot_q8`] of one activation row with four weight rows (the GEMM micro-kernel: the
/// activation is loaded once for the four). Each result is within [`dot_tolerance`] of
/// [`dot_q8_ref`] of its row; at the scalar level it is exactly that.
pub fn dot_q8_x4(isa: Isa, wq: [&[i8]; 4], sw: [&[f32]; 4], xq: &[i8], d16: &[f32]) -> [f32; 4] {
    for r in 0..4 {
        assert!(wq[r].len() == xq.len() && sw[r].len() == d16.len());
    }
    assert!(xq.len().is_multiple_of(QA) && d16.len() == xq.len() / QS);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => x86::dot_q8_x4_avx2(wq, sw, xq, d16),
        _ => std::array::from_fn(|r| dot_q8(isa, wq[r], sw[r], xq, d16)),
    }
}

/// Whether a weight of `qtype` (with `spec` for group-affine types) on rows of `cols` values
/// has a fused GEMV kernel at `isa` ([`dot_fused`]): the legacy types (q4_0, q4_1, q5_0, q5_1,
/// q8_0), iq4_nl and group-affine int4 on rows that are a multiple of 32, at the AVX2 and
/// AVX-512 levels (AVX2 kernels, and AVX-512 VNNI ones for the legacy types and iq4_nl where
/// the CPU has VNNI). (The k-quants have their own path at every size, [`dot_k`].)
pub fn has_fused(isa: Isa, qtype: QType, spec: Option<AffineSpec>, cols: usize) -> bool {
    let kind = match qtype {
        QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q5_1 | QType::Q8_0 | QType::IQ4NL => true,
        QType::Int4 => spec.is_some_and(|s| s.bits == 4) && cols.is_multiple_of(QA),
        _ => false,
    };
    cfg!(target_arch = "x86_64") && matches!(isa, Isa::Avx2 | Isa::Avx512) && kind
}

/// The dots of four stored weight rows of `qtype` (with `spec`; `cols` values each,
/// consecutive rows of a matrix, a weight with [`has_fused`]) with one quantized activation
/// row, decoded in registers, without the decoded rows in memory (see `fused.rs`): for the
/// legacy types and iq4_nl the bits of [`dot_b32_ref`] (mins included); for group-affine int4
/// the bits of [`decode_row`] of each row followed by [`dot_q8_x4`] at the same ISA.
/// `act.scale` is not applied.
pub fn dot_fused(
    isa: Isa,
    qtype: QType,
    spec: Option<AffineSpec>,
    cols: usize,
    w: [&[u8]; 4],
    act: ActRow<'_>,
) -> [f32; 4] {
    let name = crate::qtype::canonical_name(qtype, spec);
    assert!(has_fused(isa, qtype, spec, cols) && isa.is_available(), "no fused kernel for {name} at {isa:?}");
    let (cp, nsub) = (padded(cols), padded(cols) / QS);
    assert!(act.q.len() == cp && act.d16.len() == nsub && act.b16.len() == nsub);
    let units = cols / QA;
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = isa == Isa::Avx512 && has_avx512_vnni();
        // SAFETY: the AVX2 level (AVX2, FMA, F16C) is available (asserted above); the kernels
        // check the lengths of the rows and the activation.
        unsafe { fused::rows(qtype, w, act, units, fused::AHEAD_ROWS * w[0].len(), spec, cols, vnni) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no fused kernels on this architecture ({units} units, {} rows)", w.len())
}

/// The reference of the matmul's dot of one stored row with one activation row (quantized in
/// blocks of [`act_block`]) for any quantized type: [`dot_k_ref`] for the k-quants; else the row
/// decoded by the scalar decoder, then [`dot_b32_ref`] for the legacy types and iq4_nl, or
/// [`dot_q8_ref`] plus [`dot_f32_ref`] of the mins with `act.s16` (the reference of the
/// decode-then-dot path of the other types); `act.scale` not applied.
pub fn dot_row_ref(qtype: QType, spec: Option<AffineSpec>, cols: usize, src: &[u8], act: ActRow<'_>) -> f32 {
    if is_kquant(qtype) {
        return dot_k_ref(qtype, cols, src, act);
    }
    let cp = padded(cols);
    let (mut c, mut sw, mut mw) = (vec![0i8; cp], vec![0f32; cp / QS], vec![0f32; cp / QS]);
    decode_impl(qtype, spec, cols, src, &mut c, &mut sw, &mut mw);
    if is_b32(qtype) {
        return dot_b32_ref(&c, &sw, has_mins(qtype, spec).then_some(&mw[..]), act);
    }
    let v = dot_q8_ref(&c, &sw, act.q, act.d16);
    if has_mins(qtype, spec) {
        v + dot_f32_ref(&mw, act.s16)
    } else {
        v
    }
}

/// The scalar reference of [`dot_f32`]: `Σ a[j] · b[j]` in order, one rounding per operation.
pub fn dot_f32_ref(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |acc, (&x, &y)| acc + x * y)
}

/// `Σ a[j] · b[j]` (same lengths) with fused multiply-adds in SIMD lanes
/// ([`dot_f32_simd`] at `isa`, [`dot_f32_ref`] at the scalar level).
pub fn dot_f32(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    crate::simd::run(isa, DotF32 { a, b })
}

struct DotF32<'a> {
    a: &'a [f32],
    b: &'a [f32],
}

impl Kernel for DotF32<'_> {
    type Output = f32;
    fn scalar(self) -> f32 {
        dot_f32_ref(self.a, self.b)
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) -> f32 {
        dot_f32_simd(s, self.a, self.b)
    }
}

/// [`dot_f32`] over the vocabulary: four accumulators of `W` lanes over blocks of `4 W`
/// values, then one over blocks of `W`, then the scalar reference on the rest.
#[inline(always)]
pub fn dot_f32_simd<S: Simd>(s: S, a: &[f32], b: &[f32]) -> f32 {
    let (n, w) = (a.len(), S::W);
    let mut acc = [s.splat(0.0); 4];
    let mut i = 0;
    while i + 4 * w <= n {
        for (u, ac) in acc.iter_mut().enumerate() {
            *ac = s.fma(s.load(&a[i + w * u..]), s.load(&b[i + w * u..]), *ac);
        }
        i += 4 * w;
    }
    while i + w <= n {
        acc[0] = s.fma(s.load(&a[i..]), s.load(&b[i..]), acc[0]);
        i += w;
    }
    s.hsum(s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3]))) + dot_f32_ref(&a[i..], &b[i..])
}

/// The 4 × `C` dot products `a[r] · b[c]` (all slices of one length) at `isa`: what
/// [`dot_f32`] gives for each pair, within [`dot_tolerance`], computed together so each load of
/// `b` serves four rows and each load of `a` `C` (the float matmul's inner kernel). Every pair
/// is computed by the same operations whatever `C` is, so its bits do not depend on `C`.
/// `ahead` (bytes, 0: none): prefetch distance into L2 along the rows of `a`, a hint that never
/// changes the result.
pub fn dot_f32_4xc<const C: usize>(isa: Isa, a: [&[f32]; 4], b: [&[f32]; C], ahead: usize) -> [[f32; C]; 4] {
    let n = a[0].len();
    assert!(a.iter().chain(&b).all(|v| v.len() == n));
    crate::simd::run(isa, DotF32x4xC { a, b, ahead })
}

/// The most activation rows per [`dot_f32_4xc`] call at `isa`: its `4 C` accumulators, four
/// row vectors and `C` activation vectors must fit the registers (16 at AVX2, 32 elsewhere).
pub fn dot_f32_max_c(isa: Isa) -> usize {
    if isa == Isa::Avx2 {
        2
    } else {
        4
    }
}

struct DotF32x4xC<'a, const C: usize> {
    a: [&'a [f32]; 4],
    b: [&'a [f32]; C],
    ahead: usize,
}

impl<const C: usize> Kernel for DotF32x4xC<'_, C> {
    type Output = [[f32; C]; 4];
    fn scalar(self) -> [[f32; C]; 4] {
        std::array::from_fn(|r| std::array::from_fn(|c| dot_f32_ref(self.a[r], self.b[c])))
    }
    #[inline(always)]
    fn simd<S: Simd>(self, s: S) -> [[f32; C]; 4] {
        dot_f32_4xc_simd(s, self.a, self.b, self.ahead)
    }
}

/// [`dot_f32_4xc`] over the vocabulary: `4 C` accumulators of `W` lanes (one per pair) over
/// blocks of `W` values, then the scalar reference on the rest. With `ahead` > 0, each cache
/// line of a row is prefetched into L2 `ahead` bytes further on, one line per row and 16
/// values (a GEMV streaming f32 rows from DRAM: the hardware prefetchers alone reached half
/// the DRAM rate on rows of 576 values).
#[inline(always)]
pub fn dot_f32_4xc_simd<S: Simd, const C: usize>(s: S, a: [&[f32]; 4], b: [&[f32]; C], ahead: usize) -> [[f32; C]; 4] {
    let (n, w) = (a[0].len(), S::W);
    let mut acc = [[s.splat(0.0); C]; 4];
    let mut i = 0;
    while i + w <= n {
        let mut x = [s.splat(0.0); C];
        for (xc, bc) in x.iter_mut().zip(&b) {
            *xc = s.load(&bc[i..]);
        }
        let fetch = ahead > 0 && i % 16 == 0;
        for (ar, acc) in a.iter().zip(acc.iter_mut()) {
            if fetch {
                crate::simd::prefetch_l2(ar.as_ptr().wrapping_add(i).cast::<u8>().wrapping_add(ahead));
            }
            let v = s.load(&ar[i..]);
            for (acc, &xc) in acc.iter_mut().zip(&x) {
                *acc = s.fma(v, xc, *acc);
            }
        }
        i += w;
    }
    // Plain loops: a closure would not inherit the caller's target features, and the
    // reduction's intrinsics would become calls.
    let mut out = [[0f32; C]; 4];
    for c in 0..C {
        let sums = s.hsum4([acc[0][c], acc[1][c], acc[2][c], acc[3][c]]);
        for r in 0..4 {
            out[r][c] = sums[r] + dot_f32_ref(&a[r][i..], &b[c][i..]);
        }
    }
    out
}

/// How far an ISA's [`dot_q8`] or [`dot_f32`] may lie from the scalar reference, relative to
/// `Σ |terms|` (the sum of the magnitudes of the products that are added): both sum `terms`
/// products in f32 in different orders (and the SIMD versions fuse some roundings), so each
/// differs from the exact sum by at most `terms · 2^-24 · Σ|terms|` (Higham, *Accuracy and
/// Stability of Numerical Algorithms*, §3.1), and from each other by twice that. `terms` is
/// the number of f32 products added: one per 4 values for [`dot_q8`] (its SIMD versions scale
/// each i32 lane, a sum of 4 products, separately), one per value for [`dot_f32`].
pub fn dot_tolerance(terms: usize) -> f64 {
    (terms as f64 + 1.0) * f64::from(f32::EPSILON)
}

/// Whether the CPU has AVX-512 VNNI (`vpdpbusd`), detected once; used by the AVX-512 dot.
#[cfg(target_arch = "x86_64")]
pub fn has_avx512_vnni() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| Isa::Avx512.is_available() && is_x86_feature_detected!("avx512vnni"))
}

/// Whether the CPU has the Armv8.2 dot-product extension (`sdot`), detected once.
#[cfg(target_arch = "aarch64")]
pub fn has_dotprod() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::arch::is_aarch64_feature_detected!("dotprod"))
}

/// The signature of a k-quant dot kernel on stored rows (see [`dot_k`]).
pub type DotK = fn(QType, usize, [&[u8]; 4], ActRow<'_>) -> [f32; 4];
/// The signature of a k-quant dot kernel on decoded rows (see [`dot_k_decoded`]).
pub type DotKDecoded = fn(QType, [KRow<'_>; 4], [ActRow<'_>; 4]) -> [[f32; 4]; 4];

/// The k-quant kernels of this CPU that an ISA level does not name, by name (the tests compare
/// each with [`dot_k_ref`]): `neon` (`smull`) besides `neon-dotprod`, which the NEON level
/// takes where the CPU has it. Empty on x86 (the levels are the variants).
pub fn dot_k_variants() -> Vec<(&'static str, DotK, DotKDecoded)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, DotK, DotKDecoded)> = Vec::new();
    #[cfg(target_arch = "aarch64")]
    {
        v.push(("neon", arm::dot_k_neon_smull, arm::dot_k_decoded_neon_smull));
        if has_dotprod() {
            v.push(("neon-dotprod", arm::dot_k_neon_sdot, arm::dot_k_decoded_neon_sdot));
        }
    }
    v
}

/// The signature of an int8 dot kernel (see [`dot_q8`]).
pub type DotQ8 = fn(&[i8], &[f32], &[i8], &[f32]) -> f32;

/// The int8 dot variants of this CPU besides the scalar reference, by name (the tests
/// compare each with [`dot_q8_ref`]): e.g. `avx2`, `avx512`, `avx512-vnni`, `neon`, `neon-dotprod`.
pub fn dot_q8_variants() -> Vec<(&'static str, DotQ8)> {
    let mut v: Vec<(&'static str, DotQ8)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if Isa::Avx2.is_available() {
            v.push(("avx2", x86::dot_q8_avx2));
        }
        if Isa::Avx512.is_available() {
            v.push(("avx512", x86::dot_q8_avx512_bw));
        }
        if has_avx512_vnni() {
            v.push(("avx512-vnni", x86::dot_q8_avx512_vnni));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        v.push(("neon", arm::dot_q8_neon_smull));
        if has_dotprod() {
            v.push(("neon-dotprod", arm::dot_q8_neon_sdot));
        }
    }
    v
}
