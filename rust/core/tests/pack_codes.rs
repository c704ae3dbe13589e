//! Bit packing of 2/3/4/8-bit codes (`lowbit_core::pack`): the reference packer against an
//! independent bit-by-bit model, the 8-code SWAR helpers against the reference, round trips.

mod common;

use common::Rng;
use lowbit_core::pack::{get_code, pack_codes, pack_unit, packed_len, set_code, unpack_codes, unpack_unit, BITS};

/// The layout spelled out bit by bit: bit `k` of the stream is bit `k % 8` of byte `k / 8`, and
/// code `i` holds stream bits `bits*i .. bits*i + bits`, least significant first.
fn model_pack(bits: u32, codes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; packed_len(bits, codes.len())];
    for (i, &c) in codes.iter().enumerate() {
        for b in 0..bits as usize {
            if c >> b & 1 == 1 {
                let k = i * bits as usize + b;
                out[k / 8] |= 1 << (k % 8);
            }
        }
    }
    out
}

fn random_codes(r: &mut Rng, bits: u32, n: usize) -> Vec<u8> {
    (0..n).map(|_| (r.next_u64() & ((1u64 << bits) - 1)) as u8).collect()
}

#[test]
fn pack_matches_bit_model_and_round_trips() {
    let mut r = Rng::new(7);
    for bits in BITS {
        for n in 0..=70 {
            for _ in 0..4 {
                let codes = random_codes(&mut r, bits, n);
                let mut packed = vec![0xAAu8; packed_len(bits, n)];
                pack_codes(bits, &codes, &mut packed);
                assert_eq!(packed, model_pack(bits, &codes), "bits {bits} n {n}");
                let mut back = vec![0xFFu8; n];
                unpack_codes(bits, &packed, &mut back);
                assert_eq!(back, codes, "bits {bits} n {n}");
                for (i, &c) in codes.iter().enumerate() {
                    assert_eq!(get_code(bits, &packed, i), c, "get_code bits {bits} n {n} i {i}");
                }
                let mut set = vec![0u8; packed.len()];
                for (i, &c) in codes.iter().enumerate() {
                    set_code(bits, &mut set, i, c);
                }
                assert_eq!(set, packed, "set_code bits {bits} n {n}");
            }
        }
    }
}

#[test]
fn packed_sizes() {
    // 8 codes always fill exactly `bits` bytes; int3 is dense (3 bytes, not 4).
    for bits in BITS {
        assert_eq!(packed_len(bits, 8), bits as usize);
    }
    assert_eq!(packed_len(3, 5), 2);
    assert_eq!(packed_len(2, 5), 2);
    assert_eq!(packed_len(4, 3), 2);
    assert_eq!(packed_len(8, 3), 3);
    assert_eq!(packed_len(3, 0), 0);
}

#[test]
fn high_bits_are_masked() {
    let mut a = [0u8; 3];
    let mut b = [0u8; 3];
    pack_codes(3, &[0xFF, 0xF8, 0x0A, 1, 2, 3, 4, 5], &mut a);
    pack_codes(3, &[7, 0, 2, 1, 2, 3, 4, 5], &mut b);
    assert_eq!(a, b);
}

#[test]
fn int3_is_a_24_bit_little_endian_word() {
    // Codes 5,3,6,1,7,0,2,4 at bits 3i of one 24-bit word.
    let codes = [5u8, 3, 6, 1, 7, 0, 2, 4];
    let word = 5 | 3 << 3 | 6 << 6 | 1 << 9 | 7 << 12 | 2 << 18 | 4 << 21;
    let mut out = [0u8; 3];
    pack_codes(3, &codes, &mut out);
    assert_eq!(out, [word as u8, (word >> 8) as u8, (word >> 16) as u8]);
    assert_eq!(out, [0x9D, 0x73, 0x88]);
}

#[test]
fn units_match_reference() {
    let mut r = Rng::new(11);
    let mut junk_rng = Rng::new(12);
    for bits in BITS {
        let mut check = |codes: [u8; 8]| {
            let mut want = vec![0u8; bits as usize];
            pack_codes(bits, &codes, &mut want);
            let got = pack_unit(bits, u64::from_le_bytes(codes));
            if bits < 8 {
                assert_eq!(got >> (8 * bits), 0, "bits {bits}: stray high bits");
            }
            assert_eq!(&got.to_le_bytes()[..bits as usize], &want[..], "pack_unit bits {bits} {codes:?}");
            // unpack ignores whatever follows the unit's bytes.
            let junk = if bits < 8 { junk_rng.next_u64() << (8 * bits) } else { 0 };
            assert_eq!(unpack_unit(bits, got | junk).to_le_bytes(), codes, "unpack_unit bits {bits}");
        };
        let top = ((1u16 << bits) - 1) as u8;
        check([0; 8]);
        check([top; 8]);
        for i in 0..8 {
            let mut one = [0u8; 8];
            one[i] = top;
            check(one);
        }
        for _ in 0..2000 {
            let v = random_codes(&mut r, bits, 8);
            check(v.try_into().unwrap());
        }
    }
}
