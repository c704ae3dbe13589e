//! Shared helpers of the integration tests: input generators that cover the cases every
//! kernel must survive, ISA enumeration, and byte comparison that names the differing block.
#![allow(dead_code)]

use lowbit_core::simd::{available, Isa};

/// A small deterministic PRNG (xorshift64*), so tests need no extra crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.uniform() as f64).max(1e-12);
        let u2 = self.uniform() as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Named rows of `cols` values that every quantizer is tested on: normal data at several
/// scales, heavy tails, all zeros, constant, one spike, denormals, tiny and huge ranges (up to
/// `max_abs`), alternating signs, ties that hit rounding boundaries, negative zeros.
pub fn cases(cols: usize, max_abs: f32, seed: u64) -> Vec<(String, Vec<f32>)> {
    let mut r = Rng::new(seed);
    let mut out: Vec<(String, Vec<f32>)> = Vec::new();
    let mut push = |name: &str, v: Vec<f32>| out.push((name.to_string(), v));
    for scale in [1e-3f32, 0.02, 1.0, 300.0] {
        push(&format!("normal*{scale}"), (0..cols).map(|_| r.normal() * scale).collect());
    }
    push(
        "heavy-tail",
        (0..cols)
            .map(|_| {
                let n = r.normal();
                n * n * n * 0.05
            })
            .collect(),
    );
    push("positive", (0..cols).map(|_| r.uniform() + 0.5).collect());
    push("negative", (0..cols).map(|_| -r.uniform() - 0.5).collect());
    push("zeros", vec![0.0; cols]);
    push("neg-zeros", (0..cols).map(|i| if i % 3 == 0 { -0.0 } else { 0.0 }).collect());
    push("constant", vec![0.37; cols]);
    push("constant-neg", vec![-1.25; cols]);
    push("spike", (0..cols).map(|i| if i == cols / 3 { 50.0 } else { r.normal() * 0.01 }).collect());
    push("denormal", (0..cols).map(|_| r.normal() * 1e-39).collect());
    push("denormal-mix", (0..cols).map(|i| if i % 2 == 0 { r.normal() * 1e-40 } else { r.normal() * 1e-6 }).collect());
    push("tiny", (0..cols).map(|_| r.normal() * 1e-30).collect());
    let big = max_abs.min(3.0e38);
    push("huge", (0..cols).map(|_| (r.uniform() * 2.0 - 1.0) * big).collect());
    push("huge-edge", (0..cols).map(|i| if i % 2 == 0 { big } else { -big }).collect());
    push("alternating", (0..cols).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect());
    push("halves", (0..cols).map(|i| (i % 17) as f32 * 0.5 - 4.0).collect());
    push("ramp", (0..cols).map(|i| i as f32 / cols as f32 - 0.5).collect());
    push("sparse", (0..cols).map(|_| if r.below(8) == 0 { r.normal() } else { 0.0 }).collect());
    out
}

/// Random importance vectors: uniform-ish positive, with some zeros and a few large values.
pub fn importance(cols: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed ^ 0xABCD);
    (0..cols)
        .map(|i| match i % 11 {
            0 => 0.0,
            5 => 50.0 * r.uniform(),
            _ => r.uniform() * r.uniform() + 1e-3,
        })
        .collect()
}

/// The SIMD ISAs this host can run (never `Scalar`); prints the skipped ones once per call so
/// `cargo test -- --nocapture` shows what was not covered here.
pub fn simd_isas() -> Vec<Isa> {
    let avail = available();
    for isa in [Isa::Avx2, Isa::Avx512, Isa::Neon] {
        if !avail.contains(&isa) {
            eprintln!("skipped: {isa} (not available on this CPU)");
        }
    }
    avail.into_iter().filter(|&i| i != Isa::Scalar).collect()
}

/// Assert two byte strings are equal; on mismatch, name the first differing block and show both
/// blocks' bytes and the XOR of the differing bytes.
pub fn assert_bytes_eq(what: &str, block_bytes: usize, expected: &[u8], got: &[u8]) {
    assert_eq!(expected.len(), got.len(), "{what}: lengths differ");
    if let Some(i) = expected.iter().zip(got).position(|(a, b)| a != b) {
        let b = i / block_bytes;
        let r = b * block_bytes..((b + 1) * block_bytes).min(expected.len());
        let xor: Vec<String> = expected[r.clone()]
            .iter()
            .zip(&got[r.clone()])
            .enumerate()
            .filter(|(_, (x, y))| x != y)
            .map(|(k, (x, y))| format!("{k}:{:08b}", x ^ y))
            .collect();
        panic!(
            "{what}: first difference at byte {i} (block {b}, byte {} in block)\n expected {:02x?}\n      got {:02x?}\n differing bits {}",
            i % block_bytes,
            &expected[r.clone()],
            &got[r],
            xor.join(" ")
        );
    }
}

/// Assert two f32 slices are bit-identical (so -0.0 != 0.0 and NaN payloads count).
pub fn assert_f32_bits_eq(what: &str, expected: &[f32], got: &[f32]) {
    assert_eq!(expected.len(), got.len(), "{what}: lengths differ");
    if let Some(i) = expected.iter().zip(got).position(|(a, b)| a.to_bits() != b.to_bits()) {
        panic!(
            "{what}: first difference at {i}: expected {:e} ({:#010x}), got {:e} ({:#010x})",
            expected[i],
            expected[i].to_bits(),
            got[i],
            got[i].to_bits()
        );
    }
}
