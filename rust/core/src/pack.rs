//! Dense bit packing of 2-, 3-, 4- and 8-bit codes (the code and zero-point parts of the
//! group-affine rows, see [`crate::qtype::AffineSpec::row_bytes`]).
//!
//! Layout: the codes form one little-endian bit stream. Code `i` occupies bits
//! `[bits * i, bits * i + bits)`, where bit `k` of the stream is bit `k % 8` of byte `k / 8`.
//! Concretely:
//! * int2: 4 codes per byte, code `i` at bits `2i..2i+2` of its byte;
//! * int3: 8 codes in 3 bytes, read as a 24-bit little-endian word, code `i` at bits `3i..3i+3`
//!   (a code may straddle a byte boundary); no padding to 4 bits;
//! * int4: 2 codes per byte, the first in the low nibble;
//! * int8: one byte per code.
//!
//! `n` codes take `ceil(n * bits / 8)` bytes ([`packed_len`]); unused high bits of the last byte
//! are zero. Eight codes always fill exactly `bits` whole bytes, which is why rows of the
//! group-affine types are a multiple of 8 long.
//!
//! [`pack_codes`] / [`unpack_codes`] are the plain reference (a bit accumulator).
//! [`pack_unit`] / [`unpack_unit`] convert one 8-code unit with a few shifts and masks on a
//! `u64` (SWAR); the SIMD kernels use them and the tests check them against the reference.

/// The code widths this module packs.
pub const BITS: [u32; 4] = [2, 3, 4, 8];

/// Bytes taken by `n` codes of `bits` bits: `ceil(n * bits / 8)`.
pub fn packed_len(bits: u32, n: usize) -> usize {
    (n * bits as usize).div_ceil(8)
}

fn check_bits(bits: u32) {
    assert!(BITS.contains(&bits), "code width must be 2, 3, 4 or 8 bits, got {bits}");
}

/// Pack `codes` (one code per byte; only the low `bits` bits are kept) into `out`, which must be
/// exactly [`packed_len`]`(bits, codes.len())` bytes. Every byte of `out` is written.
///
/// Panics if `bits` is not 2, 3, 4 or 8 or `out` has the wrong length (caller bugs).
pub fn pack_codes(bits: u32, codes: &[u8], out: &mut [u8]) {
    check_bits(bits);
    assert_eq!(out.len(), packed_len(bits, codes.len()), "pack_codes: output length");
    let mask = (1u32 << bits) - 1;
    // Bits not yet written live in the low `filled` bits of `acc`.
    let mut acc = 0u32;
    let mut filled = 0u32;
    let mut o = 0;
    for &c in codes {
        acc |= (u32::from(c) & mask) << filled;
        filled += bits;
        while filled >= 8 {
            out[o] = acc as u8;
            o += 1;
            acc >>= 8;
            filled -= 8;
        }
    }
    if filled > 0 {
        out[o] = acc as u8;
    }
}

/// Unpack `codes.len()` codes of `bits` bits from `packed`, which must hold at least
/// [`packed_len`]`(bits, codes.len())` bytes (extra bytes are ignored).
///
/// Panics if `bits` is not 2, 3, 4 or 8 or `packed` is too short (caller bugs).
pub fn unpack_codes(bits: u32, packed: &[u8], codes: &mut [u8]) {
    check_bits(bits);
    assert!(packed.len() >= packed_len(bits, codes.len()), "unpack_codes: input too short");
    let mask = (1u32 << bits) - 1;
    let mut acc = 0u32;
    let mut filled = 0u32;
    let mut i = 0;
    for c in codes.iter_mut() {
        while filled < bits {
            acc |= u32::from(packed[i]) << filled;
            i += 1;
            filled += 8;
        }
        *c = (acc & mask) as u8;
        acc >>= bits;
        filled -= bits;
    }
}

/// Code `index` of a packed stream (see the module layout). `packed` must hold it.
#[inline]
pub fn get_code(bits: u32, packed: &[u8], index: usize) -> u8 {
    let bit = index * bits as usize;
    let byte = bit / 8;
    // A code of <= 8 bits starting at bit offset <= 7 spans at most two bytes.
    let lo = u16::from(packed[byte]);
    let hi = if bit % 8 + bits as usize > 8 { u16::from(packed[byte + 1]) } else { 0 };
    (((lo | hi << 8) >> (bit % 8)) & ((1u16 << bits) - 1)) as u8
}

/// OR code `code` (low `bits` bits) into position `index` of a packed stream whose bits at that
/// position are zero (the caller zeroes the stream first).
#[inline]
pub fn set_code(bits: u32, packed: &mut [u8], index: usize, code: u8) {
    let bit = index * bits as usize;
    let byte = bit / 8;
    let v = (u16::from(code) & ((1u16 << bits) - 1)) << (bit % 8);
    packed[byte] |= v as u8;
    if bit % 8 + bits as usize > 8 {
        packed[byte + 1] |= (v >> 8) as u8;
    }
}

/// Pack one unit of 8 codes, given one per byte of the little-endian `u64` `codes` (each
/// `< 2^bits`), into the low `8 * bits` bits of the result: the unit's `bits` packed bytes,
/// little-endian. Equals [`pack_codes`] on the 8 codes.
///
/// Each step merges neighbouring fields and halves their count (SWAR compaction): fields at
/// 8-bit spacing become pairs at 16-bit spacing, then quads at 32-bit spacing, then one field.
#[inline(always)]
pub fn pack_unit(bits: u32, codes: u64) -> u64 {
    let x = codes;
    match bits {
        2 => {
            let x = (x | x >> 6) & 0x000F_000F_000F_000F;
            let x = (x | x >> 12) & 0x0000_00FF_0000_00FF;
            (x | x >> 24) & 0xFFFF
        }
        3 => {
            let x = (x | x >> 5) & 0x003F_003F_003F_003F;
            let x = (x | x >> 10) & 0x0000_0FFF_0000_0FFF;
            (x | x >> 20) & 0xFF_FFFF
        }
        4 => {
            let x = (x | x >> 4) & 0x00FF_00FF_00FF_00FF;
            let x = (x | x >> 8) & 0x0000_FFFF_0000_FFFF;
            (x | x >> 16) & 0xFFFF_FFFF
        }
        _ => x,
    }
}

/// Inverse of [`pack_unit`]: the `bits` packed bytes of one unit (low `8 * bits` bits of
/// `packed`; higher bits are ignored) to 8 codes, one per byte of the result.
#[inline(always)]
pub fn unpack_unit(bits: u32, packed: u64) -> u64 {
    match bits {
        2 => {
            let x = packed & 0xFFFF;
            let x = (x | x << 24) & 0x0000_00FF_0000_00FF;
            let x = (x | x << 12) & 0x000F_000F_000F_000F;
            (x | x << 6) & 0x0303_0303_0303_0303
        }
        3 => {
            let x = packed & 0xFF_FFFF;
            let x = (x | x << 20) & 0x0000_0FFF_0000_0FFF;
            let x = (x | x << 10) & 0x003F_003F_003F_003F;
            (x | x << 5) & 0x0707_0707_0707_0707
        }
        4 => {
            let x = packed & 0xFFFF_FFFF;
            let x = (x | x << 16) & 0x0000_FFFF_0000_FFFF;
            let x = (x | x << 8) & 0x00FF_00FF_00FF_00FF;
            (x | x << 4) & 0x0F0F_0F0F_0F0F_0F0F
        }
        _ => packed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_examples() {
        // int4: low nibble first.
        let mut out = [0u8; 1];
        pack_codes(4, &[0x3, 0xA], &mut out);
        assert_eq!(out, [0xA3]);
        // int2: code i at bits 2i.
        pack_codes(2, &[1, 2, 3, 0], &mut out);
        assert_eq!(out, [0b00_11_10_01]);
        // int3: codes 0..8 as one 24-bit little-endian word, code i at bits 3i.
        let codes = [0u8, 1, 2, 3, 4, 5, 6, 7];
        let word: u32 = codes.iter().enumerate().map(|(i, &c)| u32::from(c) << (3 * i)).sum();
        let mut out3 = [0u8; 3];
        pack_codes(3, &codes, &mut out3);
        assert_eq!(out3, word.to_le_bytes()[..3]);
        // A partial int3 stream: 5 codes in 2 bytes, unused high bit zero.
        let mut out2 = [0u8; 2];
        pack_codes(3, &[7, 7, 7, 7, 7], &mut out2);
        assert_eq!(out2, [0xFF, 0x7F]);
    }
}
