//! The decoder forward pass of the llama family (Llama, Mistral, Qwen2) over an LBF file's
//! memory-mapped tensors, a KV cache ([`Session`]) and sampling ([`Sampler`]).
//!
//! The computation is Hugging Face transformers' `LlamaForCausalLM` / `Qwen2ForCausalLM`:
//! embedding lookup; per layer `x += o_proj(attn(rope(q), rope(k), v))` on `rms_norm(x)` and
//! `x += down_proj(silu(gate_proj(h)) · up_proj(h))` on `h = rms_norm(x)`; a final norm and the
//! output projection. Tensors are found by their HF names (see [`Model::load`]); weights of any
//! qtype are multiplied in place by [`crate::matmul::matmul`] (W8A8, int8 × int8, for those with
//! an `act_quant` part), nothing but the norms and biases is copied.

mod config;
mod layer;
mod ops;
mod sampler;
mod session;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use config::{Arch, Config, RopeScaling};
pub use layer::{buffer as layer_buffer, layer_forward, LayerView, Tap};
pub use sampler::Sampler;
pub use session::{Session, MAX_BATCH};

use crate::error::{Error, Result};
use crate::format::{LbfFile, PartKind};
use crate::matmul::{ActQuant, Outliers, QMatrix};
use crate::quant::Layout;
use crate::simd::matmul::packed;
use crate::simd::Isa;

/// A weight matrix of the file: its layout and where its parts lie in the file's bytes. Its
/// parts were checked once by [`QMatrix::new`] at load.
#[derive(Debug, Clone)]
struct Weight {
    layout: Layout,
    data: Range<usize>,
    perm: Option<Range<usize>>,
    outliers: Option<[Range<usize>; 3]>,
    /// The activation quantization of a W8A8 weight (an `act_quant` part).
    act: Option<ActQuant>,
    /// The rows packed for the GEMV at load ([`crate::simd::matmul::packed`]), when the
    /// model's ISA has the packed kernel and the type packs (q4_0, iq4_nl).
    packed: Option<Vec<u8>>,
}

impl Weight {
    /// The matrix the model multiplies by: the packed rows if there are any, else the stored
    /// ones (`bytes`: the file's bytes).
    fn matrix<'a>(&'a self, bytes: &'a [u8]) -> QMatrix<'a> {
        let m = self.stored(bytes);
        match &self.packed {
            Some(p) => QMatrix::prechecked(self.layout, p, None, m.outliers().copied(), self.act, true),
            None => m,
        }
    }

    /// The matrix of the stored rows in the file's `bytes` (the embedding's row lookup).
    fn stored<'a>(&self, bytes: &'a [u8]) -> QMatrix<'a> {
        let outliers = self.outliers.as_ref().map(|[r, c, v]| Outliers {
            row_ptr: &bytes[r.clone()],
            cols: &bytes[c.clone()],
            vals: &bytes[v.clone()],
        });
        let perm = self.perm.clone().map(|p| &bytes[p]);
        QMatrix::prechecked(self.layout, &bytes[self.data.clone()], perm, outliers, self.act, false)
    }
}

/// One decoder layer: norms and biases as f32 (copied), weights in the file.
#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    q: Weight,
    k: Weight,
    v: Weight,
    o: Weight,
    /// q, k, v biases (`attention_bias`).
    qkv_bias: Option<[Vec<f32>; 3]>,
    /// Output projection bias (Llama/Mistral with `attention_bias`).
    o_bias: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Weight,
    up: Weight,
    down: Weight,
}

impl Layer {
    /// Its tensors over `bytes` (the file's bytes).
    fn view<'a>(&'a self, bytes: &'a [u8]) -> LayerView<'a> {
        LayerView {
            attn_norm: &self.attn_norm,
            q: self.q.matrix(bytes),
            k: self.k.matrix(bytes),
            v: self.v.matrix(bytes),
            o: self.o.matrix(bytes),
            qkv_bias: self.qkv_bias.as_ref().map(|[q, k, v]| [&q[..], &k[..], &v[..]]),
            o_bias: self.o_bias.as_deref(),
            ffn_norm: &self.ffn_norm,
            gate: self.gate.matrix(bytes),
            up: self.up.matrix(bytes),
            down: self.down.matrix(bytes),
        }
    }
}

/// A loaded model: the config, the file, and where each tensor is. `Sync`: any number of
/// [`Session`]s may run on one model at once.
#[derive(Debug)]
pub struct Model {
    file: Arc<LbfFile>,
    cfg: Config,
    isa: Isa,
    /// Distinguishes models so a session refuses to run on a model it was not made for.
    id: u64,
    embed: Weight,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// `None` when tied: the embedding matrix is the output projection.
    lm_head: Option<Weight>,
    /// RoPE inverse frequencies, `head_dim / 2` (radians per position).
    inv_freq: Vec<f64>,
}

impl Model {
    /// Find every tensor of `cfg`'s model in `file` by its Hugging Face name, check its shape
    /// against the config (the error names the tensor and both shapes), its checksums and its
    /// parts (once), and copy the 1-D norms and biases (any float type) to f32:
    ///
    /// * `model.embed_tokens.weight` (vocab × hidden), `model.norm.weight` (hidden),
    ///   `lm_head.weight` (vocab × hidden; unless `tie_word_embeddings`);
    /// * per layer `i`, under `model.layers.{i}.`: `input_layernorm.weight`,
    ///   `post_attention_layernorm.weight` (hidden); `self_attn.{q,k,v,o}_proj.weight`
    ///   (heads·head_dim × hidden, kv_heads·head_dim × hidden twice, hidden × heads·head_dim);
    ///   `self_attn.{q,k,v}_proj.bias` with `attention_bias` (plus `o_proj.bias` for
    ///   Llama/Mistral); `mlp.{gate,up}_proj.weight` (ffn × hidden), `mlp.down_proj.weight`
    ///   (hidden × ffn).
    ///
    /// `isa` forces an instruction set for every kernel (default: [`crate::simd::active`]).
    pub fn load(file: Arc<LbfFile>, cfg: Config, isa: Option<Isa>) -> Result<Model> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        cfg.validate()?;
        let isa = match isa {
            Some(i) => i.require()?,
            None => crate::simd::active()?,
        };
        let (h, v, f) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
        let (qd, kvd) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
        let fl = &file;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}.");
                let w = |n: &str, r, c| weight(fl, &format!("{p}{n}"), r, c, Some(isa));
                let vec = |n: &str, len| vector(fl, isa, &format!("{p}{n}"), len);
                Ok(Layer {
                    attn_norm: vec("input_layernorm.weight", h)?,
                    q: w("self_attn.q_proj.weight", qd, h)?,
                    k: w("self_attn.k_proj.weight", kvd, h)?,
                    v: w("self_attn.v_proj.weight", kvd, h)?,
                    o: w("self_attn.o_proj.weight", h, qd)?,
                    qkv_bias: match cfg.attention_bias {
                        true => Some([
                            vec("self_attn.q_proj.bias", qd)?,
                            vec("self_attn.k_proj.bias", kvd)?,
                            vec("self_attn.v_proj.bias", kvd)?,
                        ]),
                        false => None,
                    },
                    o_bias: match cfg.attention_bias && cfg.arch != Arch::Qwen2 {
                        true => Some(vec("self_attn.o_proj.bias", h)?),
                        false => None,
                    },
                    ffn_norm: vec("post_attention_layernorm.weight", h)?,
                    gate: w("mlp.gate_proj.weight", f, h)?,
                    up: w("mlp.up_proj.weight", f, h)?,
                    down: w("mlp.down_proj.weight", h, f)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Model {
            // Packed only when it is also the output projection (tied).
            embed: weight(fl, "model.embed_tokens.weight", v, h, cfg.tie_word_embeddings.then_some(isa))?,
            norm: vector(fl, isa, "model.norm.weight", h)?,
            lm_head: match cfg.tie_word_embeddings {
                true => None,
                false => Some(weight(fl, "lm_head.weight", v, h, Some(isa))?),
            },
            layers,
            inv_freq: cfg.inv_freq(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            isa,
            cfg,
            file,
        })
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The instruction set every kernel runs at.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The file the weights are read from.
    pub fn file(&self) -> &Arc<LbfFile> {
        &self.file
    }

    /// The output projection (the embedding when tied).
    fn output(&self) -> &Weight {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// `y = x · Wᵀ` for `n` rows of `x`.
    fn matmul(&self, w: &Weight, x: &[f32], n: usize, y: &mut [f32]) -> Result<()> {
        crate::matmul::matmul(&w.matrix(self.file.bytes()), x, n, y, Some(self.isa))
    }

    /// The embedding of `token` into `out` (hidden values): the stored row dequantized, its
    /// outliers added, and its columns put back in input order if there is a permutation
    /// (`tmp`: hidden values of scratch).
    fn embed(&self, token: u32, out: &mut [f32], tmp: &mut [f32]) {
        let m = self.embed.stored(self.file.bytes());
        let l = m.layout();
        let r = token as usize;
        let dst = if m.has_perm() { &mut *tmp } else { &mut *out };
        crate::blocks::dequantize_row(self.isa, l.qtype, l.affine, m.row(r), dst);
        if let Some(o) = m.outliers() {
            for k in o.ptr(r)..o.ptr(r + 1) {
                let (c, v) = o.entry(k);
                dst[c] += v;
            }
        }
        if m.has_perm() {
            for (j, &v) in tmp.iter().enumerate() {
                out[m.perm_at(j)] = v;
            }
        }
    }
}

/// The file tensor `name` with its dimensions checked against `dims`.
fn find_checked<'f>(file: &'f LbfFile, name: &str, dims: &[usize]) -> Result<(usize, &'f crate::format::TensorInfo)> {
    let i = file.find(name)?;
    let t = &file.tensors()[i];
    if t.dims.len() != dims.len() || t.dims.iter().zip(dims).any(|(&a, &b)| a != b as u64) {
        return Err(Error::Shape(format!(
            "tensor {name:?}: the config implies shape {dims:?}, the file has {:?}",
            t.dims
        )));
    }
    Ok((i, t))
}

/// A weight matrix (`rows × cols`), checked once (with its act mode, if it is a W8A8 weight),
/// its rows packed for the GEMV when `pack` is an ISA with the packed kernel and the type packs.
fn weight(file: &LbfFile, name: &str, rows: usize, cols: usize, pack: Option<Isa>) -> Result<Weight> {
    let (i, t) = find_checked(file, name, &[rows, cols])?;
    let parts = file.tensor_parts(i)?;
    let qtype = t.qtype.expect("tensor_parts refuses unknown qtypes");
    let layout = Layout::new(qtype, t.affine, rows, cols)?;
    let part = |k: PartKind| t.part(k).map(|_| parts[k as usize]);
    let outliers = part(PartKind::OutlierRows).map(|row_ptr| Outliers {
        row_ptr,
        cols: parts[PartKind::OutlierCols as usize],
        vals: parts[PartKind::OutlierVals as usize],
    });
    let checked = part(PartKind::ActQuant).map(ActQuant::from_le_bytes).transpose().and_then(|act| {
        QMatrix::new(layout, parts[PartKind::Data as usize], part(PartKind::Perm), outliers)?.with_act(act)
    });
    let act =
        checked.map_err(|e| Error::Format { offset: t.parts[0].offset, msg: format!("tensor {name:?}: {e}") })?.act();
    let range = |k: PartKind| t.part(k).map(|p| p.offset as usize..(p.offset + p.len) as usize);
    let packed = match pack.is_some_and(packed::has_packed) && packed::can_pack(qtype) && t.affine.is_none() {
        true => {
            let p = crate::matmul::pack_rows(&layout, parts[PartKind::Data as usize])?;
            // The stored rows are read again only by the embedding's row lookup: their pages
            // (read once by the checksum pass and the packing) need not stay resident.
            let d = t.part(PartKind::Data).expect("data is always present");
            file.release(d.offset as usize, d.len as usize);
            Some(p)
        }
        false => None,
    };
    Ok(Weight {
        layout,
        data: range(PartKind::Data).expect("data is always present"),
        perm: range(PartKind::Perm),
        outliers: match [PartKind::OutlierRows, PartKind::OutlierCols, PartKind::OutlierVals].map(range) {
            [Some(r), Some(c), Some(v)] => Some([r, c, v]),
            _ => None,
        },
        act,
        packed,
    })
}

/// A 1-D tensor of `len` values (norm weight, bias) of any type without perm or outliers,
/// dequantized to f32.
fn vector(file: &LbfFile, isa: Isa, name: &str, len: usize) -> Result<Vec<f32>> {
    let (i, t) = find_checked(file, name, &[len])?;
    let data = file.tensor_data(i)?;
    if t.parts.len() > 1 {
        return Err(Error::Unsupported(format!("tensor {name:?}: a 1-D tensor with perm or outlier parts")));
    }
    let qtype = t.qtype.expect("tensor_data refuses unknown qtypes");
    let mut out = vec![0f32; len];
    crate::blocks::dequantize_row(isa, qtype, t.affine, data, &mut out);
    Ok(out)
}
