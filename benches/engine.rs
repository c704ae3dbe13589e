//! Engine throughput on a decoder of SmolLM2-135M's shape (hidden 576, 9 heads / 3 KV heads of
//! 64, FFN 1536, vocab 49152, tied embeddings) with random weights, per weight type: prompt
//! processing (512 tokens in one forward) and generation (one token after a 512-token prompt),
//! in tokens/s. (Rows of 576 do not fit the k-quants' 256-value blocks: q4_0 stands for 4 bits.)
//!
//! `cargo bench -p lowbit-bench --bench engine`; `LOWBIT_BENCH_LAYERS` (default 30) shrinks the
//! model for a quick look.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lowbit_core::format::{LbfFile, LbfWriter, Metadata, PartKind, TensorSpec};
use lowbit_core::model::{Arch, Config, Model, RopeScaling, Session};
use lowbit_core::quant::{self, QuantOptions, Source};
use lowbit_core::QType;

const PROMPT: usize = 512;

fn config(layers: usize) -> Config {
    Config {
        arch: Arch::Llama,
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: layers,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 100000.0,
        rope_scaling: RopeScaling::None,
        tie_word_embeddings: true,
        attention_bias: false,
        max_position_embeddings: 8192,
        sliding_window: None,
    }
}

/// Write the model with every matrix quantized to `qtype` (norms f32) and map it.
fn model_file(c: &Config, qtype: &str) -> Arc<LbfFile> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut values = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    };
    let (h, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (qd, kvd) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![c.vocab_size, h])];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}.");
        for (n, d) in [
            ("input_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![qd, h]),
            ("self_attn.k_proj.weight", vec![kvd, h]),
            ("self_attn.v_proj.weight", vec![kvd, h]),
            ("self_attn.o_proj.weight", vec![h, qd]),
            ("post_attention_layernorm.weight", vec![h]),
            ("mlp.gate_proj.weight", vec![f, h]),
            ("mlp.up_proj.weight", vec![f, h]),
            ("mlp.down_proj.weight", vec![h, f]),
        ] {
            shapes.push((format!("{p}{n}"), d));
        }
    }
    shapes.push(("model.norm.weight".to_string(), vec![h]));
    let path = std::env::temp_dir().join(format!("lowbit-bench-engine-{}-{qtype}.lbf", std::process::id()));
    let mut w = LbfWriter::create(&path, &[]).expect("create");
    for (name, dims) in &shapes {
        let d64: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if let [rows, cols] = dims[..] {
            let x = values(rows * cols, 2.0 / (cols as f32).sqrt());
            let (l, bytes) = quant::quantize(qtype, Source::F32(&x), rows, cols, &QuantOptions::default()).expect("q");
            let spec = TensorSpec { name, qtype: l.qtype, affine: l.affine, dims: &d64 };
            w.add_tensor(&spec, &[(PartKind::Data, &bytes)]).expect("add");
        } else {
            let bytes: Vec<u8> = vec![1f32; dims[0]].iter().flat_map(|v| v.to_le_bytes()).collect();
            let spec = TensorSpec { name, qtype: QType::F32, affine: None, dims: &d64 };
            w.add_tensor(&spec, &[(PartKind::Data, &bytes)]).expect("add");
        }
    }
    w.finish(&Metadata::new()).expect("finish");
    let file = LbfFile::open(&path).expect("open");
    std::fs::remove_file(&path).expect("remove");
    Arc::new(file)
}

fn bench(c: &mut Criterion) {
    let layers = std::env::var("LOWBIT_BENCH_LAYERS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let cfg = config(layers);
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| (i * 7919) % 49152).collect();
    for qtype in ["f32", "q8_0", "q4_0"] {
        let model = Model::load(model_file(&cfg, qtype), cfg.clone(), None).expect("load");
        let mut s = Session::new(&model, PROMPT + 1).expect("session");
        let mut g = c.benchmark_group(format!("engine/{qtype}"));
        g.sample_size(10).measurement_time(Duration::from_secs(10));
        g.throughput(Throughput::Elements(PROMPT as u64)).bench_function("prompt512", |b| {
            b.iter(|| {
                s.reset();
                black_box(s.forward(&model, &prompt, false).expect("forward"))
            })
        });
        s.reset();
        s.forward(&model, &prompt, false).expect("forward");
        g.throughput(Throughput::Elements(1)).bench_function("generate@512", |b| {
            b.iter(|| {
                let logits = s.forward(&model, &[17], false).expect("forward");
                s.truncate(PROMPT).expect("truncate");
                black_box(logits)
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
