//! The decoder's hyper-parameters (a Hugging Face `config.json`, already parsed) and the RoPE
//! frequencies they imply.

use crate::error::{Error, Result};

/// The architectures the engine runs: all are Hugging Face's `LlamaForCausalLM` forward pass;
/// Qwen2 adds q/k/v biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    /// The `model_type` name (`"llama"`, `"mistral"`, `"qwen2"`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
        }
    }

    /// Parse a `model_type` name.
    pub fn parse(name: &str) -> Result<Arch> {
        [Arch::Llama, Arch::Mistral, Arch::Qwen2]
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| Error::InvalidParameter(format!("unknown arch {name:?}; valid: llama, mistral, qwen2")))
    }
}

/// RoPE frequency scaling (`rope_scaling` of `config.json`), with the semantics of
/// transformers' `modeling_rope_utils` (`_compute_linear_scaling_rope_parameters`,
/// `_compute_llama3_parameters`). Neither changes the attention scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE: `inv_freq[i] = theta^(-2i / head_dim)`.
    None,
    /// Position interpolation: every `inv_freq` divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1: low frequencies (wavelength above `original_max_position_embeddings /
    /// low_freq_factor`) divided by `factor`, high frequencies (wavelength below
    /// `original_max_position_embeddings / high_freq_factor`) kept, a linear blend between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
}

/// The hyper-parameters of a llama-family decoder. `head_dim` is explicit: `hidden_size =
/// num_attention_heads × head_dim` is not required (some models differ).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// The output projection is the embedding matrix (no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    /// q/k/v projections have biases (always so for Qwen2); for Llama and Mistral the output
    /// projection has one too, as in transformers' `LlamaAttention`.
    pub attention_bias: bool,
    /// The context the model was trained for (informative: positions beyond it are allowed).
    pub max_position_embeddings: usize,
    /// Sliding-window attention (Mistral): a query at position q sees the keys at positions k with
    /// `q - window < k <= q` (transformers' rule); `None` = full causal attention.
    pub sliding_window: Option<usize>,
}

impl Config {
    /// Check every value; the error names the first bad field and why.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidParameter(format!("model config: {m}")));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window must be positive (or absent)".into());
        }
        if self.vocab_size > u32::MAX as usize {
            return bad(format!("vocab_size {} does not fit token ids of 32 bits", self.vocab_size));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even (RoPE rotates pairs)", self.head_dim));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(format!("rms_norm_eps {} must be positive and finite", self.rms_norm_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("rope_theta {} must be positive and finite", self.rope_theta));
        }
        if self.arch == Arch::Qwen2 && !self.attention_bias {
            return bad("qwen2 has q/k/v biases: attention_bias must be true".into());
        }
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::InvalidParameter(format!("model config: {name} {v} must be positive and finite")))
            }
        };
        match self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => positive("rope factor", factor)?,
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                positive("rope factor", factor)?;
                positive("rope low_freq_factor", low_freq_factor)?;
                positive("rope high_freq_factor", high_freq_factor)?;
                if high_freq_factor <= low_freq_factor {
                    return bad(format!(
                        "rope high_freq_factor {high_freq_factor} must be above low_freq_factor {low_freq_factor}"
                    ));
                }
                if original_max_position_embeddings == 0 {
                    return bad("rope original_max_position_embeddings must be positive".into());
                }
            }
        }
        Ok(())
    }

    /// Query heads per key/value head (GQA group size).
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// The RoPE inverse frequencies, `head_dim / 2` values in radians per position, scaled as
    /// [`RopeScaling`] says. Computed in f64 (transformers computes them in f32).
    pub fn inv_freq(&self) -> Vec<f64> {
        let dim = self.head_dim as f64;
        let base = (0..self.head_dim / 2).map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / dim));
        match self.rope_scaling {
            RopeScaling::None => base.collect(),
            RopeScaling::Linear { factor } => base.map(|f| f / factor).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let old = original_max_position_embeddings as f64;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                base.map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
            }
        }
    }
}
