//! The SIMD weight decoders: every type's codes written once over [`Bytes32`], a small
//! vocabulary of 32-byte vectors (implemented with AVX2 in `x86.rs`, used at the AVX2 and
//! AVX-512 levels, and with pairs of NEON registers in `arm.rs`). The scalar decoders of
//! `mod.rs` are the reference; the tests check these bit for bit against them.

use super::{padded, QS};
use crate::blocks::dq;
use crate::blocks::iq4nl::KVALUES;
use crate::blocks::legacy::Spec;
use crate::pack;
use crate::qtype::{AffineSpec, Family, QType};

/// 32 bytes in a register (or two). A value exists only where the instruction set is available
/// (capability token), so the methods are safe.
pub trait Bytes32: Copy {
    /// The vector.
    type V: Copy;
    /// Bytes `s[..32]`.
    fn load(self, s: &[u8]) -> Self::V;
    /// The 16 bytes `s[..16]` split into nibbles: low nibbles in bytes 0..16, high in 16..32.
    fn nibbles(self, s: &[u8]) -> Self::V;
    /// The 16 bytes `s[..16]` as 32 nibbles in stream order (low nibble of byte 0 first).
    fn nibbles_interleaved(self, s: &[u8]) -> Self::V;
    /// Byte `j` = bit `j` of `m` (0 or 1).
    fn bits(self, m: u32) -> Self::V;
    /// `v << n` per byte, for bytes whose result stays below 256.
    fn shl(self, v: Self::V, n: u32) -> Self::V;
    /// Wrapping byte add.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// Bitwise or.
    fn or(self, a: Self::V, b: Self::V) -> Self::V;
    /// All bytes `v`.
    fn splat(self, v: u8) -> Self::V;
    /// `table[v]` per byte (`v < 16`).
    fn lut16(self, v: Self::V, table: &[i8; 16]) -> Self::V;
    /// The bytes into `out[..32]`.
    fn store(self, v: Self::V, out: &mut [i8]);
    /// The IEEE half-precision value with bits `h` as f32 (exact).
    fn f16(self, h: u16) -> f32;
}

/// The little-endian f16 at `s[at..at + 2]` as f32.
#[inline(always)]
fn half<B: Bytes32>(b: B, s: &[u8], at: usize) -> f32 {
    b.f16(u16::from_le_bytes([s[at], s[at + 1]]))
}

/// Decode one row (same contract and output as the scalar `decode_impl`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn decode<B: Bytes32>(
    b: B,
    qtype: QType,
    spec: Option<AffineSpec>,
    cols: usize,
    src: &[u8],
    codes: &mut [i8],
    sw: &mut [f32],
    mw: &mut [f32],
) {
    codes[cols..].fill(0);
    sw[cols / QS..].fill(0.0);
    if super::has_mins(qtype, spec) {
        mw.fill(0.0);
    }
    debug_assert_eq!(codes.len(), padded(cols));
    match qtype.info().family {
        Family::Legacy => legacy(b, &Spec::of(qtype).expect("legacy type"), src, codes, sw, mw),
        Family::NonLinear => {
            for (k, blk) in src.chunks_exact(18).enumerate() {
                b.store(b.lut16(b.nibbles(&blk[2..]), &KVALUES), &mut codes[32 * k..]);
                sw[2 * k..2 * k + 2].fill(half(b, blk, 0));
            }
        }
        Family::KQuant | Family::RaggedKQuant => unreachable!("k-quants are decoded by the scalar decoder"),
        Family::Affine => affine(b, &spec.expect("group-affine spec"), cols, src, codes, sw, mw),
        Family::DoubleQuant => dq_row(b, qtype.dq_bits().expect("dq bits"), cols, src, codes, sw),
        Family::Float => unreachable!("float weights are not decoded to codes"),
    }
}

#[inline(always)]
fn legacy<B: Bytes32>(b: B, spec: &Spec, src: &[u8], codes: &mut [i8], sw: &mut [f32], mw: &mut [f32]) {
    let minus_zero = b.splat((spec.zero as u8).wrapping_neg());
    for (k, blk) in src.chunks_exact(spec.block_bytes).enumerate() {
        let qs = &blk[spec.off_qs..];
        let v = if spec.is_q8() {
            b.load(qs)
        } else {
            let mut v = b.nibbles(qs);
            if let Some(o) = spec.off_qh {
                let qh = u32::from_le_bytes([blk[o], blk[o + 1], blk[o + 2], blk[o + 3]]);
                v = b.or(v, b.shl(b.bits(qh), 4));
            }
            b.add(v, minus_zero)
        };
        b.store(v, &mut codes[32 * k..]);
        sw[2 * k..2 * k + 2].fill(half(b, blk, 0));
        if spec.has_min {
            mw[2 * k..2 * k + 2].fill(half(b, blk, 2));
        }
    }
}

#[inline(always)]
fn affine<B: Bytes32>(
    b: B,
    spec: &AffineSpec,
    cols: usize,
    src: &[u8],
    codes: &mut [i8],
    sw: &mut [f32],
    mw: &mut [f32],
) {
    let bits = spec.bits;
    let g = spec.group_cols(cols);
    let ngroups = spec.groups(cols);
    let code_bytes = cols * bits as usize / 8;
    let (scale_off, zero_off) = (code_bytes, code_bytes + 2 * ngroups);
    let nb = bits as usize;
    let zero_of =
        |gi: usize| if spec.symmetric { 1u8 << (bits - 1) } else { pack::get_code(bits, &src[zero_off..], gi) };
    // Whole 32-code chunks with the vector ops (int4, int8; a chunk lies in one group since
    // groups are multiples of 32 or the whole row), the rest 8 codes at a time.
    let vec_chunks = match bits {
        4 | 8 => cols / 32,
        _ => 0,
    };
    for c in 0..vec_chunks {
        let v = if bits == 4 {
            b.add(b.nibbles_interleaved(&src[16 * c..]), b.splat(zero_of(32 * c / g).wrapping_neg()))
        } else {
            b.add(b.load(&src[32 * c..]), b.splat(0x80))
        };
        b.store(v, &mut codes[32 * c..]);
    }
    // The rest group by group (groups hold whole 8-code units), the zero read once per group.
    let mut start = vec_chunks * 32;
    while start < cols {
        let end = ((start / g + 1) * g).min(cols);
        // int8: c − 128; narrower: c − zero of the group.
        let sub = if bits == 8 { 0x80 } else { zero_of(start / g) };
        let (packed, out) = (&src[start * nb / 8..end * nb / 8], &mut codes[start..end]);
        match bits {
            2 => units::<2>(packed, out, sub),
            3 => units::<3>(packed, out, sub),
            4 => units::<4>(packed, out, sub),
            _ => {
                for (o, &v) in out.iter_mut().zip(packed) {
                    *o = v.wrapping_sub(sub) as i8;
                }
            }
        }
        start = end;
    }
    for gi in 0..ngroups {
        let d = half(b, src, scale_off + 2 * gi);
        let (lo, hi) = (gi * g, ((gi + 1) * g).min(cols));
        if bits == 8 && !spec.symmetric {
            mw[lo / QS..hi.div_ceil(QS)].fill(d * (128 - i32::from(zero_of(gi))) as f32);
        }
        sw[lo / QS..hi.div_ceil(QS)].fill(d);
    }
}

/// `c − sub` of the `BITS`-bit codes of `packed` (8 per `BITS` bytes) into `out` (i8), one
/// 8-code unit at a time with the SWAR unpacking and subtraction.
#[inline(always)]
fn units<const BITS: u32>(packed: &[u8], out: &mut [i8], sub: u8) {
    for (u, o) in packed.chunks_exact(BITS as usize).zip(out.chunks_exact_mut(8)) {
        let word = u.iter().rev().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
        let v = minus_zero(pack::unpack_unit(BITS, word), sub).to_le_bytes();
        for (d, s) in o.iter_mut().zip(v) {
            *d = s as i8;
        }
    }
}

/// `c − z` of 8 codes `c` (one per byte of `u`, each < 16) as i8 bytes, with no borrow between
/// bytes (SWAR): `(c | 0x80) − z` stays in 0x71..=0x8F, and flipping bit 7 gives `c − z` in
/// two's complement.
#[inline(always)]
fn minus_zero(u: u64, z: u8) -> u64 {
    const HI: u64 = 0x8080_8080_8080_8080;
    ((u | HI) - u64::from(z) * 0x0101_0101_0101_0101) ^ HI
}

/// Decode a `-dq` row (`crate::blocks::dq`), same output as the scalar `decode_dq`: int4 two
/// groups (32 codes) per vector, the zero points added as one 32-byte vector; int2/int3 (and
/// an odd last int4 group) one group at a time from one u64 load (its 16 codes take 2 B ≤ 8
/// bytes), [`pack::unpack_unit`] and [`minus_zero`].
#[inline(always)]
fn dq_row<B: Bytes32>(b: B, bits: u32, cols: usize, src: &[u8], codes: &mut [i8], sw: &mut [f32]) {
    match bits {
        2 => dq_bits::<B, 2>(b, cols, src, codes, sw),
        3 => dq_bits::<B, 3>(b, cols, src, codes, sw),
        _ => dq_bits::<B, 4>(b, cols, src, codes, sw),
    }
}

/// The little-endian u64 at `s[at..at + 8]`, zero-extended past the end of `s`.
#[inline(always)]
fn u64_at(s: &[u8], at: usize) -> u64 {
    match s.get(at..at + 8) {
        Some(w) => u64::from_le_bytes(w.try_into().expect("8 bytes")),
        None => {
            let mut le = [0u8; 8];
            le[..s.len() - at].copy_from_slice(&s[at..]);
            u64::from_le_bytes(le)
        }
    }
}

#[inline(always)]
fn dq_bits<B: Bytes32, const BITS: u32>(b: B, cols: usize, src: &[u8], codes: &mut [i8], sw: &mut [f32]) {
    let nb = BITS as usize;
    for (vals, bytes) in dq::super_blocks(BITS, cols) {
        let at = bytes.start;
        let x = &src[bytes];
        let ng = vals.len() / dq::GROUP;
        let (so, zo, co) = dq::offsets(BITS, ng);
        let (d, m) = (half(b, x, 0), half(b, x, 2));
        let (g0, cb) = (vals.start / QS, &mut codes[vals]);
        let z = |g: usize| pack::get_code(BITS, &x[zo..co], g);
        for (g, s) in sw[g0..g0 + ng].iter_mut().enumerate() {
            *s = dq::scale_of(d, m, u32::from(pack::get_code(dq::SCALE_BITS, &x[so..zo], g)));
        }
        let pairs = if BITS == 4 { ng / 2 } else { 0 };
        for p in 0..pairs {
            let mut nz = [0u8; 32];
            nz[..16].fill(z(2 * p).wrapping_neg());
            nz[16..].fill(z(2 * p + 1).wrapping_neg());
            b.store(b.add(b.nibbles_interleaved(&x[co + 16 * p..]), b.load(&nz)), &mut cb[32 * p..]);
        }
        for g in 2 * pairs..ng {
            // Both 8-code units of the group in one load (from the row, so that a read past
            // the super-block's end stays inside the row where it can).
            let w = u64_at(src, at + co + 2 * nb * g);
            let zg = z(g);
            let lo = minus_zero(pack::unpack_unit(BITS, w), zg);
            let hi = minus_zero(pack::unpack_unit(BITS, w >> (8 * nb)), zg);
            let v = (u128::from(hi) << 64 | u128::from(lo)).to_le_bytes().map(|c| c as i8);
            cb[16 * g..16 * g + 16].copy_from_slice(&v);
        }
    }
}
