//! k-quant dequantizers over the SIMD vocabulary: per sub-block, the scale (and min) products
//! in scalar f32 as gguf-py computes them, then `dl · q − ml` with lanes along the values.

use half::f16;

use crate::blocks::kquants::layout;
use crate::simd::vocab::Simd;

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// `dl · q − ml` (or `dl · q` when `ml` is `None`) of `W` codes into `y`.
#[inline(always)]
fn emit<S: Simd>(s: S, q: S::I, dl: f32, ml: Option<f32>, y: &mut [f32]) {
    let v = s.mul(s.splat(dl), s.to_f32(q));
    let v = match ml {
        Some(m) => s.sub(v, s.splat(m)),
        None => v,
    };
    s.store(y, v);
}

/// One q2_k block: value `16j + i` is bits `2k` of `qs[32h + 16(j % 2) + i]` (h = j / 8,
/// k = (j / 2) % 4).
#[inline(always)]
pub(crate) fn q2k<S: Simd>(s: S, b: &[u8], y: &mut [f32]) {
    use layout::q2k::*;
    let (d, dmin) = (f16_at(b, D), f16_at(b, DMIN));
    let three = s.isplat(3);
    for j in 0..16 {
        let sc = b[SCALES + j];
        let (dl, ml) = (d * f32::from(sc & 0xF), dmin * f32::from(sc >> 4));
        let base = QS + 32 * (j / 8) + 16 * (j % 2);
        let shift = 2 * ((j / 2) % 4) as u32;
        for i in (0..16).step_by(S::W) {
            let q = s.iand(s.shr(s.load_u8(&b[base + i..]), shift), three);
            emit(s, q, dl, Some(ml), &mut y[16 * j + i..]);
        }
    }
}

/// One q3_k block: low 2 bits as q2_k, high bit `j / 2` of `hmask[16(j % 2) + i]`, code =
/// low + 4·high − 4.
#[inline(always)]
pub(crate) fn q3k<S: Simd>(s: S, b: &[u8], y: &mut [f32]) {
    use layout::q3k::*;
    let d = f16_at(b, D);
    let sc = &b[SCALES..SCALES + 12];
    let (three, one, minus4) = (s.isplat(3), s.isplat(1), s.isplat(-4));
    for j in 0..16 {
        let lo = (sc[j % 8] >> (4 * (j / 8))) & 0xF;
        let hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        let dl = d * (i32::from(lo | (hi << 4)) - 32) as f32;
        let base = QS + 32 * (j / 8) + 16 * (j % 2);
        let shift = 2 * ((j / 2) % 4) as u32;
        for i in (0..16).step_by(S::W) {
            let low = s.iand(s.shr(s.load_u8(&b[base + i..]), shift), three);
            let high = s.iand(s.shr(s.load_u8(&b[HMASK + 16 * (j % 2) + i..]), (j / 2) as u32), one);
            let q = s.iadd(s.ior(low, s.shl(high, 2)), minus4);
            emit(s, q, dl, None, &mut y[16 * j + i..]);
        }
    }
}

/// One q4_k (`five == false`) or q5_k block: value `32j + i` is nibble `j % 2` of
/// `qs[32(j / 2) + i]` (plus bit `j` of `qh[i]` as bit 4 for q5_k).
#[inline(always)]
pub(crate) fn q45k<S: Simd>(s: S, b: &[u8], five: bool, y: &mut [f32]) {
    use layout::q4k::{D, DMIN, SCALES};
    let qs = if five { layout::q5k::QS } else { layout::q4k::QS };
    let (d, dmin) = (f16_at(b, D), f16_at(b, DMIN));
    let k = &b[SCALES..SCALES + 12];
    let (f, one) = (s.isplat(0xF), s.isplat(1));
    for j in 0..8 {
        let (sc, m) = if j < 4 {
            (k[j] & 63, k[j + 4] & 63)
        } else {
            ((k[j + 4] & 0xF) | ((k[j - 4] >> 6) << 4), (k[j + 4] >> 4) | ((k[j] >> 6) << 4))
        };
        let (dl, ml) = (d * f32::from(sc), dmin * f32::from(m));
        let shift = 4 * (j % 2) as u32;
        for i in (0..32).step_by(S::W) {
            let mut q = s.iand(s.shr(s.load_u8(&b[qs + 32 * (j / 2) + i..]), shift), f);
            if five {
                let h = s.iand(s.shr(s.load_u8(&b[layout::q5k::QH + i..]), j as u32), one);
                q = s.ior(q, s.shl(h, 4));
            }
            emit(s, q, dl, Some(ml), &mut y[32 * j + i..]);
        }
    }
}

/// One q6_k block: value `128h + r` (r = 16(j % 8) + i) has low 4 bits from
/// `ql[64h + r % 64] >> 4(r / 64)` and high 2 bits from `qh[32h + r % 32] >> 2(r / 32)`,
/// code − 32.
#[inline(always)]
pub(crate) fn q6k<S: Simd>(s: S, b: &[u8], y: &mut [f32]) {
    use layout::q6k::*;
    let d = f16_at(b, D);
    let (f, three, minus32) = (s.isplat(0xF), s.isplat(3), s.isplat(-32));
    for j in 0..16 {
        let dl = d * f32::from(b[SCALES + j] as i8);
        let (h, jj) = (j / 8, j % 8);
        let lshift = 4 * (jj / 4) as u32;
        let hshift = 2 * (jj / 2) as u32;
        for i in (0..16).step_by(S::W) {
            let low = s.iand(s.shr(s.load_u8(&b[QL + 64 * h + 16 * (jj % 4) + i..]), lshift), f);
            let high = s.iand(s.shr(s.load_u8(&b[QH + 32 * h + 16 * (jj % 2) + i..]), hshift), three);
            let q = s.iadd(s.ior(low, s.shl(high, 4)), minus32);
            emit(s, q, dl, None, &mut y[16 * j + i..]);
        }
    }
}
