//! Next-token sampling: greedy, temperature, top-k, top-p (nucleus), with a seeded PRNG of our
//! own so a seed gives the same tokens on every platform.

use crate::error::{Error, Result};

/// xoshiro256** (Blackman & Vigna, "Scrambled linear pseudorandom number generators", 2021),
/// seeded by splitmix64 as its authors recommend.
#[derive(Debug, Clone)]
struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    fn new(seed: u64) -> Xoshiro256 {
        let mut z = seed;
        let mut splitmix64 = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Xoshiro256 { s: [splitmix64(), splitmix64(), splitmix64(), splitmix64()] }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A sampler. At temperature 0 it returns the argmax (the first on ties) and draws nothing;
/// otherwise the distribution `softmax(logits / temperature)` is restricted to the `top_k`
/// most likely tokens (0 = all), then to the smallest set of most likely tokens whose
/// probability sums to at least `top_p` (1 = all), renormalised, and one token is drawn.
#[derive(Debug, Clone)]
pub struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    rng: Xoshiro256,
    /// (probability weight, token) of the candidates, reused between calls.
    cand: Vec<(f32, u32)>,
}

impl Sampler {
    /// `temperature >= 0`, `top_p` in (0, 1], any `top_k` (0 = no limit); the same seed gives
    /// the same draws.
    pub fn new(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> Result<Sampler> {
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(Error::InvalidParameter(format!("temperature {temperature} must be finite and >= 0")));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(Error::InvalidParameter(format!("top_p {top_p} must be in (0, 1]")));
        }
        Ok(Sampler { temperature, top_k, top_p, rng: Xoshiro256::new(seed), cand: Vec::new() })
    }

    /// The next token for `logits` (one per vocabulary entry, none NaN).
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() || logits.len() > u32::MAX as usize {
            return Err(Error::Shape(format!("logits must have 1 to 2^32 - 1 values, not {}", logits.len())));
        }
        if let Some(i) = logits.iter().position(|v| v.is_nan()) {
            return Err(Error::BadValue {
                what: "NaN",
                index: i,
                row: 0,
                col: i,
                value: f32::NAN,
                limit: crate::error::Limit(None),
            });
        }
        let argmax = logits.iter().enumerate().fold(0, |b, (i, &v)| if v > logits[b] { i } else { b });
        let max = logits[argmax];
        if self.temperature == 0.0 || max == f32::INFINITY {
            return Ok(argmax as u32);
        }
        let inv_t = 1.0 / f64::from(self.temperature);
        let cand = &mut self.cand;
        cand.clear();
        cand.extend(logits.iter().enumerate().map(|(i, &v)| (((f64::from(v - max)) * inv_t).exp() as f32, i as u32)));
        let by_prob = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = if self.top_k == 0 { cand.len() } else { self.top_k.min(cand.len()) };
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, by_prob);
            cand.truncate(k);
        }
        if self.top_p < 1.0 {
            cand.sort_unstable_by(by_prob);
            let total: f64 = cand.iter().map(|c| f64::from(c.0)).sum();
            let (mut acc, mut keep) = (0.0, cand.len());
            for (i, c) in cand.iter().enumerate() {
                acc += f64::from(c.0);
                if acc >= f64::from(self.top_p) * total {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
        }
        let total: f64 = cand.iter().map(|c| f64::from(c.0)).sum();
        let mut u = self.rng.next_f64() * total;
        for c in cand.iter() {
            u -= f64::from(c.0);
            if u < 0.0 {
                return Ok(c.1);
            }
        }
        Ok(cand.last().expect("at least one candidate").1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prng_is_seeded_by_splitmix64_and_uniform() {
        // The first outputs of splitmix64 from state 0, as published with its C reference.
        let s0 = Xoshiro256::new(0).s;
        assert_eq!(s0, [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F, 0xF88B_B8A8_724C_81EC]);
        let mut a = Xoshiro256::new(42);
        let mut b = Xoshiro256::new(42);
        let mut c = Xoshiro256::new(43);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        assert_eq!(xs, (0..4).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(xs, (0..4).map(|_| c.next_u64()).collect::<Vec<_>>());
        let mean = (0..100_000).map(|_| a.next_f64()).sum::<f64>() / 100_000.0;
        assert!((mean - 0.5).abs() < 0.01, "mean of uniforms {mean}");
    }

    fn softmax(l: &[f32], t: f64) -> Vec<f64> {
        let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = l.iter().map(|&v| ((v as f64 - m) / t).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    fn frequencies(s: &mut Sampler, logits: &[f32], draws: usize) -> Vec<f64> {
        let mut f = vec![0f64; logits.len()];
        for _ in 0..draws {
            f[s.sample(logits).unwrap() as usize] += 1.0 / draws as f64;
        }
        f
    }

    const LOGITS: [f32; 6] = [1.0, 2.5, -0.5, 2.0, 0.0, 1.5];

    #[test]
    fn greedy_and_top_k_1_are_argmax() {
        let mut g = Sampler::new(0.0, 0, 1.0, 1).unwrap();
        assert_eq!(g.sample(&LOGITS).unwrap(), 1);
        let mut k1 = Sampler::new(5.0, 1, 1.0, 1).unwrap();
        for _ in 0..50 {
            assert_eq!(k1.sample(&LOGITS).unwrap(), 1);
        }
        // Ties: the first index.
        assert_eq!(g.sample(&[3.0, 7.0, 7.0]).unwrap(), 1);
    }

    #[test]
    fn frequencies_match_the_softmax_with_temperature() {
        let draws = 200_000;
        for t in [0.7f32, 1.0, 2.0] {
            let mut s = Sampler::new(t, 0, 1.0, 7).unwrap();
            let f = frequencies(&mut s, &LOGITS, draws);
            let p = softmax(&LOGITS, t as f64);
            for (fi, pi) in f.iter().zip(&p) {
                // 5 standard deviations of a binomial frequency.
                let bound = 5.0 * (pi * (1.0 - pi) / draws as f64).sqrt() + 1e-9;
                assert!((fi - pi).abs() < bound, "t={t}: frequency {fi} vs probability {pi}");
            }
        }
    }

    #[test]
    fn top_k_renormalises_over_the_k_best() {
        let draws = 200_000;
        let mut s = Sampler::new(1.0, 3, 1.0, 11).unwrap();
        let f = frequencies(&mut s, &LOGITS, draws);
        let best = [1usize, 3, 5];
        let p = softmax(&best.map(|i| LOGITS[i]), 1.0);
        for (i, fi) in f.iter().enumerate() {
            match best.iter().position(|&b| b == i) {
                Some(j) => {
                    let bound = 5.0 * (p[j] * (1.0 - p[j]) / draws as f64).sqrt();
                    assert!((fi - p[j]).abs() < bound, "token {i}: {fi} vs {}", p[j]);
                }
                None => assert_eq!(*fi, 0.0, "token {i} is outside the top 3"),
            }
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        let p = softmax(&LOGITS, 1.0);
        let mut order: Vec<usize> = (0..LOGITS.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        // top_p just below the two best tokens' mass keeps two; just above it needs a third.
        let two = p[order[0]] + p[order[1]];
        for (top_p, keep) in [(two * 0.999, 2), (two + 1e-3, 3)] {
            let mut s = Sampler::new(1.0, 0, top_p as f32, 3).unwrap();
            let f = frequencies(&mut s, &LOGITS, 50_000);
            for (rank, &i) in order.iter().enumerate() {
                assert_eq!(f[i] > 0.0, rank < keep, "top_p {top_p}: token {i} (rank {rank}) frequency {}", f[i]);
            }
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let draw = |seed| {
            let mut s = Sampler::new(1.3, 4, 0.9, seed).unwrap();
            (0..64).map(|_| s.sample(&LOGITS).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(Sampler::new(-1.0, 0, 1.0, 0).is_err());
        assert!(Sampler::new(f32::NAN, 0, 1.0, 0).is_err());
        assert!(Sampler::new(1.0, 0, 0.0, 0).is_err());
        assert!(Sampler::new(1.0, 0, 1.5, 0).is_err());
        let mut s = Sampler::new(1.0, 0, 1.0, 0).unwrap();
        assert!(matches!(s.sample(&[]), Err(Error::Shape(_))));
        assert!(matches!(s.sample(&[0.0, f32::NAN]), Err(Error::BadValue { index: 1, .. })));
    }
}
