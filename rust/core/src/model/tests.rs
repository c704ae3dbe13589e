//! Engine tests: the kernels against direct formulas, and the forward pass against a naive f64
//! forward written here (the oracle) on tiny random models written as LBF files.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::ops::{self, AttnShape};
use super::*;
use crate::format::{LbfWriter, Metadata, TensorSpec};
use crate::qtype::QType;
use crate::quant::{QuantOptions, Source};

/// Deterministic normals: splitmix64 and Box–Muller.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (1.0 - self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn vec(&mut self, n: usize, mean: f64, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (mean + scale * self.normal()) as f32).collect()
    }
}

fn cfg(arch: Arch, hidden: usize, heads: usize, kv_heads: usize, head_dim: usize) -> Config {
    Config {
        arch,
        vocab_size: 40,
        hidden_size: hidden,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        tie_word_embeddings: false,
        attention_bias: arch == Arch::Qwen2,
        max_position_embeddings: 128,
        sliding_window: None,
    }
}

/// Every tensor the engine reads for `c`: name and dimensions.
fn tensor_shapes(c: &Config) -> Vec<(String, Vec<usize>)> {
    let (h, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (qd, kvd) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}.");
        let mut add = |n: &str, d: Vec<usize>| out.push((format!("{p}{n}"), d));
        add("input_layernorm.weight", vec![h]);
        add("self_attn.q_proj.weight", vec![qd, h]);
        add("self_attn.k_proj.weight", vec![kvd, h]);
        add("self_attn.v_proj.weight", vec![kvd, h]);
        add("self_attn.o_proj.weight", vec![h, qd]);
        if c.attention_bias {
            add("self_attn.q_proj.bias", vec![qd]);
            add("self_attn.k_proj.bias", vec![kvd]);
            add("self_attn.v_proj.bias", vec![kvd]);
            if c.arch != Arch::Qwen2 {
                add("self_attn.o_proj.bias", vec![h]);
            }
        }
        add("post_attention_layernorm.weight", vec![h]);
        add("mlp.gate_proj.weight", vec![f, h]);
        add("mlp.up_proj.weight", vec![f, h]);
        add("mlp.down_proj.weight", vec![h, f]);
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    out
}

/// A model file and the values the engine should see in it (dequantized), by name.
struct Tiny {
    cfg: Config,
    file: Arc<LbfFile>,
    w: HashMap<String, Vec<f64>>,
}

/// A unique path in the temporary folder.
fn temp_path() -> std::path::PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "lowbit-engine-{}-{}.lbf",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Write `tensors` (name, dims, f32 values; 2-D ones stored as `qtype`) to an LBF file and map
/// it; returns the file and the stored values as f64.
fn write_model(tensors: &[(String, Vec<usize>, Vec<f32>)], qtype: &str) -> (Arc<LbfFile>, HashMap<String, Vec<f64>>) {
    let path = temp_path();
    let mut wr = LbfWriter::create(&path, &[]).unwrap();
    let mut seen = HashMap::new();
    for (name, dims, vals) in tensors {
        let d64: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        let (q, bytes) = if dims.len() == 2 {
            let (layout, bytes) =
                crate::quantize(qtype, Source::F32(vals), dims[0], dims[1], &QuantOptions::default()).unwrap();
            let back = crate::dequantize(&layout, &bytes, None).unwrap();
            seen.insert(name.clone(), back.iter().map(|&v| f64::from(v)).collect());
            (layout.qtype, bytes)
        } else {
            seen.insert(name.clone(), vals.iter().map(|&v| f64::from(v)).collect());
            (QType::F32, vals.iter().flat_map(|v| v.to_le_bytes()).collect())
        };
        let spec = TensorSpec { name, qtype: q, affine: None, dims: &d64 };
        wr.add_tensor(&spec, &[(PartKind::Data, &bytes)]).unwrap();
    }
    wr.finish(&Metadata::new()).unwrap();
    let file = LbfFile::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    (Arc::new(file), seen)
}

/// Random weights for `c`: embeddings N(0, 1), matrices N(0, 1/cols), norms 1 + N(0, 0.1²),
/// biases N(0, 0.1²).
fn random_tensors(c: &Config, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut r = Rng(seed);
    tensor_shapes(c)
        .into_iter()
        .map(|(name, dims)| {
            let n = dims.iter().product();
            let vals = if name.contains("norm") {
                r.vec(n, 1.0, 0.1)
            } else if name.ends_with("bias") {
                r.vec(n, 0.0, 0.1)
            } else if name.contains("embed") {
                r.vec(n, 0.0, 1.0)
            } else {
                r.vec(n, 0.0, 1.0 / (dims[1] as f64).sqrt())
            };
            (name, dims, vals)
        })
        .collect()
}

fn tiny(c: Config, qtype: &str, seed: u64) -> Tiny {
    let (file, w) = write_model(&random_tensors(&c, seed), qtype);
    Tiny { cfg: c, file, w }
}

/// The oracle: Hugging Face's LlamaForCausalLM forward for one sequence, recomputed from
/// scratch in f64 without a cache; logits of every position.
fn oracle(t: &Tiny, tokens: &[u32]) -> Vec<Vec<f64>> {
    let c = &t.cfg;
    let (h, hd, nh, nkv) = (c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads);
    let w = |n: &str| &t.w[n];
    let linear = |x: &[f64], name: &str| -> Vec<f64> {
        let m = w(name);
        let cols = x.len();
        (0..m.len() / cols).map(|r| (0..cols).map(|j| m[r * cols + j] * x[j]).sum()).collect()
    };
    let norm = |x: &[f64], name: &str| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        x.iter().zip(w(name)).map(|(v, g)| v / (ms + c.rms_norm_eps).sqrt() * g).collect()
    };
    let add_bias = |x: &mut Vec<f64>, name: &str| {
        if let Some(b) = t.w.get(name) {
            x.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        }
    };
    // Rotate each head as complex numbers x_j + i·x_{j+hd/2} times e^{i·pos·freq_j}.
    let inv_freq = c.inv_freq();
    let rotate = |x: &mut [f64], pos: usize| {
        for head in x.chunks_mut(hd) {
            for (j, f) in inv_freq.iter().enumerate() {
                let (re, im) = (head[j], head[j + hd / 2]);
                let (s, co) = (pos as f64 * f).sin_cos();
                head[j] = re * co - im * s;
                head[j + hd / 2] = re * s + im * co;
            }
        }
    };
    let emb = w("model.embed_tokens.weight");
    let mut x: Vec<Vec<f64>> = tokens.iter().map(|&tk| emb[tk as usize * h..(tk as usize + 1) * h].to_vec()).collect();
    for l in 0..c.num_hidden_layers {
        let p = |n: &str| format!("model.layers.{l}.{n}");
        let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
        for (pos, xi) in x.iter().enumerate() {
            let xn = norm(xi, &p("input_layernorm.weight"));
            let mut q = linear(&xn, &p("self_attn.q_proj.weight"));
            let mut k = linear(&xn, &p("self_attn.k_proj.weight"));
            let mut v = linear(&xn, &p("self_attn.v_proj.weight"));
            add_bias(&mut q, &p("self_attn.q_proj.bias"));
            add_bias(&mut k, &p("self_attn.k_proj.bias"));
            add_bias(&mut v, &p("self_attn.v_proj.bias"));
            rotate(&mut q, pos);
            rotate(&mut k, pos);
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        for (i, xi) in x.iter_mut().enumerate() {
            let mut att = vec![0f64; nh * hd];
            for head in 0..nh {
                let g = head * nkv / nh;
                let qh = &qs[i][head * hd..(head + 1) * hd];
                let scores: Vec<f64> = (0..=i)
                    .map(|tp| {
                        let kh = &ks[tp][g * hd..(g + 1) * hd];
                        qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                for (tp, s) in scores.iter().enumerate() {
                    for d in 0..hd {
                        att[head * hd + d] += (s - m).exp() / z * vs[tp][g * hd + d];
                    }
                }
            }
            let mut o = linear(&att, &p("self_attn.o_proj.weight"));
            add_bias(&mut o, &p("self_attn.o_proj.bias"));
            xi.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let xn = norm(xi, &p("post_attention_layernorm.weight"));
            let gate = linear(&xn, &p("mlp.gate_proj.weight"));
            let up = linear(&xn, &p("mlp.up_proj.weight"));
            let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let down = linear(&act, &p("mlp.down_proj.weight"));
            xi.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
    }
    let head = if c.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
    x.iter().map(|xi| linear(&norm(xi, "model.norm.weight"), head)).collect()
}

/// `max |got − want| <= rel · max |want|`.
fn assert_close(got: &[f32], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let (i, err) = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .enumerate()
        .fold((0, 0f64), |b, (i, e)| if e > b.1 { (i, e) } else { b });
    assert!(err <= rel * scale, "{what}: max error {err:e} at {i} (got {}, want {}), scale {scale}", got[i], want[i]);
}

const TOKENS: [u32; 9] = [3, 17, 0, 39, 5, 5, 22, 1, 30];

fn check_against_oracle(t: &Tiny, rel: f64, what: &str) {
    let model = Model::load(Arc::clone(&t.file), t.cfg.clone(), None).unwrap();
    let mut s = Session::new(&model, 16).unwrap();
    let got = s.forward(&model, &TOKENS, true).unwrap();
    let want: Vec<f64> = oracle(t, &TOKENS).concat();
    assert_close(&got, &want, rel, what);
    assert_eq!(s.position(), TOKENS.len());
}

#[test]
fn rope_is_a_complex_rotation_in_rotate_half_pairs() {
    let (heads, hd, p0) = (3, 8, 5);
    let c = Config { head_dim: hd, ..cfg(Arch::Llama, 24, heads, heads, hd) };
    let inv = c.inv_freq();
    for (j, f) in inv.iter().enumerate() {
        let direct = 1.0 / 10000f64.powf((2 * j) as f64 / hd as f64);
        assert!((f - direct).abs() <= 1e-15 * direct, "inv_freq[{j}] {f} vs {direct}");
    }
    let (cos, sin) = ops::rope_tables(&inv, p0 + 2);
    let mut r = Rng(1);
    let x0 = r.vec(2 * heads * hd, 0.0, 1.0);
    let mut x = x0.clone();
    ops::rope(&mut x, heads, hd, p0, &cos, &sin);
    for i in 0..2 {
        for h in 0..heads {
            for j in 0..hd / 2 {
                let at = |k: usize| i * heads * hd + h * hd + k;
                let z = (f64::from(x0[at(j)]), f64::from(x0[at(j + hd / 2)]));
                let a = (p0 + i) as f64 * inv[j];
                let want = (z.0 * a.cos() - z.1 * a.sin(), z.0 * a.sin() + z.1 * a.cos());
                assert!((f64::from(x[at(j)]) - want.0).abs() < 1e-5);
                assert!((f64::from(x[at(j + hd / 2)]) - want.1).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn rope_scaling_frequencies() {
    let hd = 64;
    let base = Config { head_dim: hd, rope_theta: 500000.0, ..cfg(Arch::Llama, 64, 1, 1, hd) };
    let plain = base.inv_freq();
    let linear = Config { rope_scaling: RopeScaling::Linear { factor: 4.0 }, ..base.clone() }.inv_freq();
    for (a, b) in plain.iter().zip(&linear) {
        assert!((a / 4.0 - b).abs() <= 1e-15 * a);
    }
    // Llama 3.1's parameters: factor 8, low 1, high 4, original context 8192.
    let l3 = Config {
        rope_scaling: RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        },
        ..base.clone()
    }
    .inv_freq();
    let (mut kept, mut divided, mut blended) = (0, 0, 0);
    for (f, g) in plain.iter().zip(&l3) {
        let wavelen = 2.0 * std::f64::consts::PI / f;
        if wavelen < 8192.0 / 4.0 {
            assert_eq!(f, g);
            kept += 1;
        } else if wavelen > 8192.0 {
            assert!((f / 8.0 - g).abs() <= 1e-15 * f);
            divided += 1;
        } else {
            // Between the bands: interpolate in 1/wavelength between f/8 (at 8192) and f (at 2048).
            let s = (8192.0 / wavelen - 1.0) / 3.0;
            assert!((g - f * (s + (1.0 - s) / 8.0)).abs() <= 1e-12 * f);
            assert!(*g > f / 8.0 && g < f);
            blended += 1;
        }
    }
    assert!(kept > 0 && divided > 0 && blended > 0, "bands {kept} {divided} {blended}");
}

#[test]
fn rms_norm_matches_the_formula() {
    let mut r = Rng(2);
    let (x, w) = (r.vec(3 * 40, 0.5, 3.0), r.vec(40, 1.0, 0.2));
    let mut out = vec![0f32; x.len()];
    ops::rms_norm(&x, &w, 1e-6, &mut out);
    for (xr, or) in x.chunks(40).zip(out.chunks(40)) {
        let rms = (xr.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / 40.0 + 1e-6).sqrt();
        for j in 0..40 {
            let want = f64::from(xr[j]) / rms * f64::from(w[j]);
            assert!((f64::from(or[j]) - want).abs() <= 1e-6 * want.abs().max(1.0));
        }
    }
}

#[test]
fn sliding_window_of_one_sees_only_the_current_key() {
    // The last query (position 2) with a window of 1 attends to key 2 alone: the output is v[2];
    // with a window of 3 it is a blend of all three values.
    let (heads, kv_heads, hd, ctx) = (2, 1, 8, 3);
    let mut r = Rng(4);
    let (q, k, v) = (r.vec(heads * hd, 0.0, 5.0), r.vec(ctx * hd, 0.0, 5.0), r.vec(ctx * hd, 0.0, 1.0));
    let mut out = vec![0f32; heads * hd];
    for isa in crate::simd::available() {
        ops::attention(isa, &q, &k, &v, &mut out, AttnShape { heads, kv_heads, hd, ctx, p0: 2, window: Some(1) });
        for h in 0..heads {
            assert_eq!(&out[h * hd..(h + 1) * hd], &v[2 * hd..3 * hd], "{isa}");
        }
        ops::attention(isa, &q, &k, &v, &mut out, AttnShape { heads, kv_heads, hd, ctx, p0: 2, window: Some(3) });
        assert_ne!(&out[..hd], &v[2 * hd..3 * hd], "{isa}");
    }
}

#[test]
fn attention_of_one_key_returns_its_value() {
    // With a single position the softmax is 1 whatever the scores: the output is v.
    let (heads, kv_heads, hd, ctx) = (4, 2, 8, 3);
    let mut r = Rng(3);
    let (q, k, v) =
        (r.vec(heads * hd, 0.0, 5.0), r.vec(kv_heads * ctx * hd, 0.0, 5.0), r.vec(kv_heads * ctx * hd, 0.0, 1.0));
    let mut out = vec![0f32; heads * hd];
    for isa in crate::simd::available() {
        ops::attention(isa, &q, &k, &v, &mut out, AttnShape { heads, kv_heads, hd, ctx, p0: 0, window: None });
        for h in 0..heads {
            let g = h / 2;
            assert_eq!(&out[h * hd..(h + 1) * hd], &v[g * ctx * hd..g * ctx * hd + hd], "{isa}");
        }
    }
}

#[test]
fn forward_matches_the_f64_oracle() {
    let cases = [
        ("llama, GQA 4/2, untied", cfg(Arch::Llama, 32, 4, 2, 8)),
        ("llama, MHA, tied", Config { tie_word_embeddings: true, ..cfg(Arch::Llama, 32, 2, 2, 16) }),
        ("llama, MQA 4/1", cfg(Arch::Llama, 32, 4, 1, 8)),
        ("qwen2, q/k/v biases, GQA 6/2", cfg(Arch::Qwen2, 48, 6, 2, 8)),
        ("mistral, head_dim 16 with hidden 40 and 4 heads", cfg(Arch::Mistral, 40, 4, 2, 16)),
        ("llama, attention_bias (o_proj bias too)", Config { attention_bias: true, ..cfg(Arch::Llama, 32, 4, 2, 8) }),
        (
            "llama3 rope scaling",
            Config {
                rope_theta: 500000.0,
                rope_scaling: RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8,
                },
                ..cfg(Arch::Llama, 32, 4, 2, 16)
            },
        ),
    ];
    for (i, (what, c)) in cases.into_iter().enumerate() {
        check_against_oracle(&tiny(c, "f32", 10 + i as u64), 1e-5, what);
    }
}

#[test]
fn quantized_weights_match_the_oracle_on_their_dequantized_values() {
    // The oracle uses the dequantized weights; the only difference left is the activation
    // side of the quantized matmul.
    for qtype in ["q8_0", "q4_k", "f16", "q4_0", "iq4_nl"] {
        let c = Config { intermediate_size: 256, ..cfg(Arch::Llama, 256, 4, 2, 64) };
        check_against_oracle(&tiny(c, qtype, 30), 3e-2, qtype);
    }
}

#[test]
fn q4_0_and_iq4_nl_weights_are_packed_where_the_isa_has_the_kernel() {
    // The layers' matrices (and the output projection) are packed at load where the packed
    // GEMV runs; the embedding, untied, keeps its stored rows only. Packing changes no bit of
    // the logits: the same model with its packed rows dropped gives the same bits (batched
    // prompt and one token at a time).
    for qtype in ["q4_0", "iq4_nl"] {
        let c = Config { intermediate_size: 256, tie_word_embeddings: false, ..cfg(Arch::Llama, 256, 4, 2, 64) };
        let t = tiny(c, qtype, 31);
        let model = Model::load(Arc::clone(&t.file), t.cfg.clone(), None).unwrap();
        let packs = crate::simd::matmul::packed::has_packed(model.isa());
        let l = &model.layers[0];
        for w in [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down, model.output()] {
            assert_eq!(w.packed.is_some(), packs, "{qtype}: packed at {:?}", model.isa());
        }
        assert!(model.embed.packed.is_none(), "{qtype}: an untied embedding is not packed");
        if !packs {
            eprintln!("{qtype}: packed weights skipped (no AVX-512 VNNI here)");
            continue;
        }
        let mut plain = Model::load(Arc::clone(&t.file), t.cfg.clone(), None).unwrap();
        for l in &mut plain.layers {
            for w in [&mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.gate, &mut l.up, &mut l.down] {
                w.packed = None;
            }
        }
        plain.lm_head.as_mut().expect("untied").packed = None;
        for chunk in [TOKENS.len(), 1] {
            let run = |m: &Model| {
                let mut s = Session::with_batch(m, 16, chunk).unwrap();
                s.forward(m, &TOKENS, true).unwrap()
            };
            let (got, want) = (run(&model), run(&plain));
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{qtype}: batch {chunk}");
        }
    }
}

#[test]
fn cached_decode_equals_one_batched_forward() {
    let t = tiny(cfg(Arch::Qwen2, 48, 6, 2, 8), "f32", 40);
    let model = Model::load(Arc::clone(&t.file), t.cfg.clone(), None).unwrap();
    let mut whole = Session::new(&model, 16).unwrap();
    let all = whole.forward(&model, &TOKENS, true).unwrap();
    let v = t.cfg.vocab_size;
    // A prompt of 4 then one token at a time, with last-token logits.
    let mut s = Session::new(&model, 16).unwrap();
    let mut got = s.forward(&model, &TOKENS[..4], true).unwrap();
    let last = s.truncate(3).and_then(|()| s.forward(&model, &TOKENS[3..4], false)).unwrap();
    assert_eq!(last, &got[3 * v..4 * v], "re-running the last prompt token after truncate");
    for &tk in &TOKENS[4..] {
        got.extend(s.forward(&model, &[tk], false).unwrap());
    }
    assert_close(&got, &all.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), 1e-5, "decode vs batch");
    // Chunks of 2 tokens give the same as one batch.
    let mut chunked = Session::with_batch(&model, 16, 2).unwrap();
    let c = chunked.forward(&model, &TOKENS, true).unwrap();
    assert_close(&c, &all.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), 1e-5, "chunked");
    let last = Session::with_batch(&model, 16, 4).unwrap().forward(&model, &TOKENS, false).unwrap();
    assert_close(&last, &all[8 * v..].iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), 1e-5, "chunked, last only");
    // Reset starts over.
    whole.reset();
    assert_eq!(whole.forward(&model, &TOKENS, true).unwrap(), all);
}

#[test]
fn session_errors_leave_the_cache_unchanged() {
    let t = tiny(cfg(Arch::Llama, 32, 4, 2, 8), "f32", 50);
    let model = Model::load(Arc::clone(&t.file), t.cfg.clone(), None).unwrap();
    let mut s = Session::new(&model, 6).unwrap();
    s.forward(&model, &[1, 2], false).unwrap();
    let msg = |e: Error| e.to_string();
    assert!(matches!(s.forward(&model, &[], false), Err(Error::Shape(_))));
    let e = msg(s.forward(&model, &[1, 40], false).unwrap_err());
    assert!(e.contains("token 1 has id 40") && e.contains("40"), "{e}");
    let e = msg(s.forward(&model, &[1; 5], false).unwrap_err());
    assert!(e.contains("context overflow") && e.contains("4 more fit"), "{e}");
    assert_eq!(s.position(), 2);
    assert!(s.truncate(3).is_err());
    let other = Model::load(Arc::clone(&t.file), t.cfg.clone(), None).unwrap();
    assert!(msg(s.forward(&other, &[1], false).unwrap_err()).contains("another model"));
    assert!(Session::new(&model, 0).is_err());
    s.forward(&model, &[1; 4], false).unwrap();
    assert_eq!(s.position(), 6);
}

#[test]
fn load_errors_name_the_tensor() {
    let c = cfg(Arch::Llama, 32, 4, 2, 8);
    let t = tiny(c.clone(), "f32", 60);
    // Wrong shape: the file's k_proj has 2 kv heads, the config says 4.
    let e = Model::load(Arc::clone(&t.file), Config { num_key_value_heads: 4, ..c.clone() }, None).unwrap_err();
    assert!(
        matches!(&e, Error::Shape(m) if m.contains("model.layers.0.self_attn.k_proj.weight")
        && m.contains("[32, 32]") && m.contains("[16, 32]")),
        "{e}"
    );
    // Missing: a qwen2 config wants biases the file does not have.
    let e = Model::load(Arc::clone(&t.file), Config { arch: Arch::Qwen2, attention_bias: true, ..c.clone() }, None)
        .unwrap_err();
    assert!(matches!(&e, Error::NotFound { name, .. } if name == "model.layers.0.self_attn.q_proj.bias"), "{e}");
    // Untied config on a file without lm_head.
    let tied = tiny(Config { tie_word_embeddings: true, ..c.clone() }, "f32", 61);
    let e = Model::load(Arc::clone(&tied.file), c.clone(), None).unwrap_err();
    assert!(matches!(&e, Error::NotFound { name, .. } if name == "lm_head.weight"), "{e}");
    // Invalid configs.
    for (bad, what) in [
        (Config { num_key_value_heads: 3, ..c.clone() }, "not a multiple"),
        (Config { head_dim: 7, ..c.clone() }, "even"),
        (Config { vocab_size: 0, ..c.clone() }, "vocab_size"),
        (Config { rms_norm_eps: f64::NAN, ..c.clone() }, "rms_norm_eps"),
        (Config { arch: Arch::Qwen2, ..c.clone() }, "attention_bias"),
        (Config { rope_scaling: RopeScaling::Linear { factor: 0.0 }, ..c.clone() }, "factor"),
        (
            Config {
                rope_scaling: RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 4.0,
                    high_freq_factor: 1.0,
                    original_max_position_embeddings: 8192,
                },
                ..c.clone()
            },
            "high_freq_factor",
        ),
    ] {
        let e = Model::load(Arc::clone(&t.file), bad, None).unwrap_err();
        assert!(matches!(&e, Error::InvalidParameter(m) if m.contains(what)), "{what}: {e}");
    }
}

#[test]
fn act_order_embedding_and_outliers_are_read_in_input_order() {
    // An int4 act-order embedding with outliers: the looked-up row must be the input-order row
    // of dequantize(stored) + outliers, the same the tied output projection multiplies with.
    let c = Config { tie_word_embeddings: true, ..cfg(Arch::Llama, 32, 4, 2, 8) };
    let mut tensors = random_tensors(&c, 70);
    let emb = tensors.remove(0);
    let (v, h) = (c.vocab_size, c.hidden_size);
    let perm: Vec<u32> = (0..h as u32).map(|j| (j * 7 + 3) % h as u32).collect();
    let stored: Vec<f32> = (0..v * h).map(|i| emb.2[i / h * h + perm[i % h] as usize]).collect();
    let opts = QuantOptions { group_size: Some(32), symmetric: Some(false), ..Default::default() };
    let (layout, bytes) = crate::quantize("int4", Source::F32(&stored), v, h, &opts).unwrap();
    let mut deq = crate::dequantize(&layout, &bytes, None).unwrap();
    // One outlier in every row, at stored column (row mod h).
    let row_ptr: Vec<u8> = (0..=v as u64).flat_map(|r| r.to_le_bytes()).collect();
    let cols: Vec<u8> = (0..v as u32).flat_map(|r| (r % h as u32).to_le_bytes()).collect();
    let vals: Vec<u8> =
        (0..v).flat_map(|r| half::f16::from_f32(0.5 + r as f32 / 8.0).to_bits().to_le_bytes()).collect();
    for r in 0..v {
        deq[r * h + r % h] += 0.5 + r as f32 / 8.0;
    }
    let mut want_emb = vec![0f64; v * h];
    for r in 0..v {
        for j in 0..h {
            want_emb[r * h + perm[j] as usize] = f64::from(deq[r * h + j]);
        }
    }
    // Write the rest as f32, then the embedding with its parts.
    let path = temp_path();
    let mut wr = LbfWriter::create(&path, &[]).unwrap();
    let mut w = HashMap::new();
    for (name, dims, vals) in &tensors {
        let d64: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        let bytes: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
        wr.add_tensor(&TensorSpec { name, qtype: QType::F32, affine: None, dims: &d64 }, &[(PartKind::Data, &bytes)])
            .unwrap();
        w.insert(name.clone(), vals.iter().map(|&x| f64::from(x)).collect());
    }
    let perm_bytes: Vec<u8> = perm.iter().flat_map(|p| p.to_le_bytes()).collect();
    let spec = TensorSpec { name: &emb.0, qtype: QType::Int4, affine: layout.affine, dims: &[v as u64, h as u64] };
    let parts = [
        (PartKind::Data, &bytes[..]),
        (PartKind::Perm, &perm_bytes[..]),
        (PartKind::OutlierRows, &row_ptr[..]),
        (PartKind::OutlierCols, &cols[..]),
        (PartKind::OutlierVals, &vals[..]),
    ];
    wr.add_tensor(&spec, &parts).unwrap();
    wr.finish(&Metadata::new()).unwrap();
    let file = Arc::new(LbfFile::open(&path).unwrap());
    std::fs::remove_file(&path).unwrap();
    w.insert(emb.0.clone(), want_emb);
    check_against_oracle(&Tiny { cfg: c, file, w }, 3e-2, "int4 act-order embedding with outliers");
}

#[test]
fn w8a8_weights_multiply_int8_activations_as_their_act_part_says() {
    // Every linear of the layers is int8-row-sym with an act_quant part (static steps for the
    // attention, dynamic per token for the MLP); the session's logits must be those of the same
    // layers run through `layer_forward` on matrices given the same modes by hand, and differ
    // from the weight-only int8 product.
    let c = cfg(Arch::Llama, 32, 4, 2, 8);
    let mode = |name: &str| match name {
        n if n.contains("self_attn") => ActQuant::Static(0.03),
        _ => ActQuant::PerToken,
    };
    let path = temp_path();
    let mut wr = LbfWriter::create(&path, &[]).unwrap();
    for (name, dims, vals) in &random_tensors(&c, 90) {
        let d64: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if name.starts_with("model.layers.") && dims.len() == 2 {
            let (l, bytes) =
                crate::quantize("int8-row-sym", Source::F32(vals), dims[0], dims[1], &QuantOptions::default()).unwrap();
            let spec = TensorSpec { name, qtype: l.qtype, affine: l.affine, dims: &d64 };
            let act = mode(name).to_le_bytes();
            wr.add_tensor(&spec, &[(PartKind::Data, &bytes), (PartKind::ActQuant, &act)]).unwrap();
        } else {
            let bytes: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
            let spec = TensorSpec { name, qtype: QType::F32, affine: None, dims: &d64 };
            wr.add_tensor(&spec, &[(PartKind::Data, &bytes)]).unwrap();
        }
    }
    wr.finish(&Metadata::new()).unwrap();
    let file = Arc::new(LbfFile::open(&path).unwrap());
    std::fs::remove_file(&path).unwrap();
    let model = Model::load(Arc::clone(&file), c.clone(), None).unwrap();
    let tokens = [3u32, 1, 4, 1, 5, 9, 2];
    let got = Session::new(&model, 16).unwrap().forward(&model, &tokens, true).unwrap();

    let by_hand = |with_act: bool| -> Vec<f32> {
        let (h, n) = (c.hidden_size, tokens.len());
        let f = &*file;
        let mat = |name: &str| {
            let t = &f.tensors()[f.find(name).unwrap()];
            let layout = Layout::new(t.qtype.unwrap(), t.affine, t.rows() as usize, t.cols() as usize).unwrap();
            let m = QMatrix::new(layout, f.tensor_data(f.find(name).unwrap()).unwrap(), None, None).unwrap();
            m.with_act((with_act && name.starts_with("model.layers.")).then(|| mode(name))).unwrap()
        };
        let vector = |name: &str| -> Vec<f32> {
            f.tensor_data(f.find(name).unwrap())
                .unwrap()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        };
        let emb = vector("model.embed_tokens.weight");
        let mut x: Vec<f32> = tokens.iter().flat_map(|&t| emb[t as usize * h..][..h].to_vec()).collect();
        for l in 0..c.num_hidden_layers {
            let p = |n: &str| format!("model.layers.{l}.{n}");
            let (an, fnorm) = (vector(&p("input_layernorm.weight")), vector(&p("post_attention_layernorm.weight")));
            let view = LayerView {
                attn_norm: &an,
                q: mat(&p("self_attn.q_proj.weight")),
                k: mat(&p("self_attn.k_proj.weight")),
                v: mat(&p("self_attn.v_proj.weight")),
                o: mat(&p("self_attn.o_proj.weight")),
                qkv_bias: None,
                o_bias: None,
                ffn_norm: &fnorm,
                gate: mat(&p("mlp.gate_proj.weight")),
                up: mat(&p("mlp.up_proj.weight")),
                down: mat(&p("mlp.down_proj.weight")),
            };
            layer_forward(&c, Some(model.isa()), &view, &mut x, n, &mut |_, _, _| {}).unwrap();
        }
        let mut xn = vec![0f32; n * h];
        ops::rms_norm(&x, &vector("model.norm.weight"), c.rms_norm_eps, &mut xn);
        let mut logits = vec![0f32; n * c.vocab_size];
        crate::matmul::matmul(&mat("lm_head.weight"), &xn, n, &mut logits, Some(model.isa())).unwrap();
        logits
    };
    let want = by_hand(true);
    assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "engine vs layer_forward with act");
    let weight_only = by_hand(false);
    let diff = got.iter().zip(&weight_only).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff > 1e-4, "int8 activations must change the logits (max diff {diff:e})");
}
