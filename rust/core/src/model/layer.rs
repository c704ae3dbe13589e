//! One decoder layer's forward pass, shared by the [`Session`](super::Session) (generation,
//! evaluation) and by calibration ([`layer_forward`]: one layer at a time over a batch of
//! independent sequences, with taps on the inputs of its linear layers).

use super::ops::{self, AttnShape};
use super::Config;
use crate::error::{Error, Result};
use crate::matmul::QMatrix;
use crate::simd::Isa;

/// The tensors of one decoder layer, borrowed: weights of any qtype, norms and biases as f32.
#[derive(Debug, Clone, Copy)]
pub struct LayerView<'a> {
    /// `input_layernorm.weight` (hidden).
    pub attn_norm: &'a [f32],
    /// `self_attn.{q,k,v,o}_proj.weight`.
    pub q: QMatrix<'a>,
    pub k: QMatrix<'a>,
    pub v: QMatrix<'a>,
    pub o: QMatrix<'a>,
    /// q, k, v biases (`attention_bias`).
    pub qkv_bias: Option<[&'a [f32]; 3]>,
    /// Output projection bias (Llama/Mistral with `attention_bias`).
    pub o_bias: Option<&'a [f32]>,
    /// `post_attention_layernorm.weight` (hidden).
    pub ffn_norm: &'a [f32],
    /// `mlp.{gate,up,down}_proj.weight`.
    pub gate: QMatrix<'a>,
    pub up: QMatrix<'a>,
    pub down: QMatrix<'a>,
}

impl LayerView<'_> {
    /// Check every shape against `cfg` (the error names the tensor and both shapes): what
    /// [`super::Model::load`] checks for a file, for tensors that come from elsewhere.
    pub fn check(&self, cfg: &Config) -> Result<()> {
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, kvd) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
        let mats = [
            ("self_attn.q_proj.weight", &self.q, qd, h),
            ("self_attn.k_proj.weight", &self.k, kvd, h),
            ("self_attn.v_proj.weight", &self.v, kvd, h),
            ("self_attn.o_proj.weight", &self.o, h, qd),
            ("mlp.gate_proj.weight", &self.gate, f, h),
            ("mlp.up_proj.weight", &self.up, f, h),
            ("mlp.down_proj.weight", &self.down, h, f),
        ];
        for (name, m, r, c) in mats {
            let l = m.layout();
            if (l.rows, l.cols) != (r, c) {
                return Err(Error::Shape(format!(
                    "{name}: the config implies shape [{r}, {c}], got [{}, {}]",
                    l.rows, l.cols
                )));
            }
        }
        let mut vecs =
            vec![("input_layernorm.weight", self.attn_norm, h), ("post_attention_layernorm.weight", self.ffn_norm, h)];
        match (&self.qkv_bias, cfg.attention_bias) {
            (Some([bq, bk, bv]), true) => {
                vecs.extend([("self_attn.q_proj.bias", *bq, qd), ("self_attn.k_proj.bias", *bk, kvd)]);
                vecs.push(("self_attn.v_proj.bias", *bv, kvd));
            }
            (None, false) => {}
            (b, _) => {
                return Err(Error::Shape(format!(
                    "q/k/v biases given: {}, attention_bias: {}",
                    b.is_some(),
                    cfg.attention_bias
                )))
            }
        }
        let o_bias = cfg.attention_bias && cfg.arch != super::Arch::Qwen2;
        match (self.o_bias, o_bias) {
            (Some(b), true) => vecs.push(("self_attn.o_proj.bias", b, h)),
            (None, false) => {}
            (b, _) => return Err(Error::Shape(format!("o_proj bias given: {}, expected: {o_bias}", b.is_some()))),
        }
        for (name, v, len) in vecs {
            if v.len() != len {
                return Err(Error::Shape(format!("{name}: the config implies shape [{len}], got [{}]", v.len())));
            }
        }
        Ok(())
    }
}

/// A point where [`layer_forward`] shows activations: the input of one group of linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tap {
    /// The normed input of q/k/v (`hidden` values per token).
    AttnIn,
    /// The attention output, input of o_proj (`heads · head_dim` values per token).
    OIn,
    /// The normed input of gate/up (`hidden` values per token).
    MlpIn,
    /// `silu(gate) · up`, input of down_proj (`intermediate_size` values per token).
    DownIn,
}

impl Tap {
    /// Every tap, in the order the forward pass reaches them.
    pub const ALL: [Tap; 4] = [Tap::AttnIn, Tap::OIn, Tap::MlpIn, Tap::DownIn];

    /// Its name: "attn_in", "o_in", "mlp_in", "down_in".
    pub fn name(self) -> &'static str {
        match self {
            Tap::AttnIn => "attn_in",
            Tap::OIn => "o_in",
            Tap::MlpIn => "mlp_in",
            Tap::DownIn => "down_in",
        }
    }

    /// The tap called `name`.
    pub fn parse(name: &str) -> Result<Tap> {
        Tap::ALL.into_iter().find(|t| t.name() == name).ok_or_else(|| {
            Error::InvalidParameter(format!("unknown tap {name:?}; valid: attn_in, o_in, mlp_in, down_in"))
        })
    }

    /// Values per token at this tap.
    pub fn width(self, cfg: &Config) -> usize {
        match self {
            Tap::AttnIn | Tap::MlpIn => cfg.hidden_size,
            Tap::OIn => cfg.num_attention_heads * cfg.head_dim,
            Tap::DownIn => cfg.intermediate_size,
        }
    }
}

/// A zeroed buffer of `a × b × ...` f32, or an error saying what did not fit.
pub fn buffer(dims: &[usize], what: &str) -> Result<Vec<f32>> {
    let too_big = || Error::InvalidParameter(format!("the {what} of {dims:?} values does not fit in memory"));
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(too_big)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| too_big())?;
    v.resize(n, 0.0);
    Ok(v)
}

/// The scratch rows of a layer's forward pass for at most `batch` tokens.
#[derive(Debug)]
pub(crate) struct Scratch {
    pub batch: usize,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl Scratch {
    pub fn new(c: &Config, batch: usize) -> Result<Scratch> {
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (qd, kvd) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let b = batch;
        Ok(Scratch {
            batch,
            xn: buffer(&[b, h], "scratch")?,
            q: buffer(&[b, qd], "scratch")?,
            k: buffer(&[b, kvd], "scratch")?,
            v: buffer(&[b, kvd], "scratch")?,
            att: buffer(&[b, qd], "scratch")?,
            gate: buffer(&[b, c.intermediate_size], "scratch")?,
            up: buffer(&[b, c.intermediate_size], "scratch")?,
        })
    }

    /// The first `n` rows of the normed-input scratch (the final norm's output).
    pub fn xn(&mut self, n: usize, h: usize) -> &mut [f32] {
        &mut self.xn[..n * h]
    }
}

/// Where a layer's keys and values go: its cache (`kv_heads × ctx × head_dim` each) and the
/// position of the first of the `n` tokens; the RoPE tables cover positions `0..p0 + n`.
pub(crate) struct Kv<'a> {
    pub k: &'a mut [f32],
    pub v: &'a mut [f32],
    pub ctx: usize,
    pub p0: usize,
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// `x += attn(x); x += mlp(x)` for the `n` tokens of `x` (`n × hidden`, `n <= s.batch`),
/// appending their keys and values to `kv`; `tap` sees each linear group's input (`n × width`)
/// before it is used.
pub(crate) fn forward(
    c: &Config,
    isa: Isa,
    w: &LayerView<'_>,
    x: &mut [f32],
    s: &mut Scratch,
    kv: Kv<'_>,
    tap: &mut dyn FnMut(Tap, &[f32]),
) -> Result<()> {
    let (h, hd, p0, ctx) = (c.hidden_size, c.head_dim, kv.p0, kv.ctx);
    let n = x.len() / h;
    let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
    let (qd, kvd, f) = (nh * hd, nkv * hd, c.intermediate_size);
    let (xn, q, k, v) = (&mut s.xn[..n * h], &mut s.q[..n * qd], &mut s.k[..n * kvd], &mut s.v[..n * kvd]);
    let (att, gate, up) = (&mut s.att[..n * qd], &mut s.gate[..n * f], &mut s.up[..n * f]);
    let mm = |m: &QMatrix<'_>, x: &[f32], y: &mut [f32]| crate::matmul::matmul(m, x, n, y, Some(isa));
    ops::rms_norm(x, w.attn_norm, c.rms_norm_eps, xn);
    tap(Tap::AttnIn, xn);
    mm(&w.q, xn, q)?;
    mm(&w.k, xn, k)?;
    mm(&w.v, xn, v)?;
    if let Some([bq, bk, bv]) = &w.qkv_bias {
        ops::add_bias(q, bq);
        ops::add_bias(k, bk);
        ops::add_bias(v, bv);
    }
    ops::rope(q, nh, hd, p0, kv.cos, kv.sin);
    ops::rope(k, nkv, hd, p0, kv.cos, kv.sin);
    for i in 0..n {
        for g in 0..nkv {
            let (src, dst) = (i * kvd + g * hd, (g * ctx + p0 + i) * hd);
            kv.k[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
            kv.v[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
        }
    }
    ops::attention(
        isa,
        q,
        kv.k,
        kv.v,
        att,
        AttnShape { heads: nh, kv_heads: nkv, hd, ctx, p0, window: c.sliding_window },
    );
    tap(Tap::OIn, att);
    mm(&w.o, att, xn)?;
    if let Some(b) = w.o_bias {
        ops::add_bias(xn, b);
    }
    ops::add(x, xn);
    ops::rms_norm(x, w.ffn_norm, c.rms_norm_eps, xn);
    tap(Tap::MlpIn, xn);
    mm(&w.gate, xn, gate)?;
    mm(&w.up, xn, up)?;
    crate::simd::engine::swiglu(isa, gate, up);
    tap(Tap::DownIn, gate);
    mm(&w.down, gate, xn)?;
    ops::add(x, xn);
    Ok(())
}

/// Run one decoder layer over `x` in place: `x` holds `x.len() / (seq_len · hidden)` independent
/// sequences of `seq_len` tokens (`seqs × seq_len × hidden`, row-major), each starting at
/// position 0 (calibration samples). `tap(t, row, acts)` sees the input of each linear group
/// for the tokens `row..row + k` of `x` (`acts`: `k × t.width(cfg)` values) before it is
/// multiplied: one call per sequence, or per chunk of [`super::MAX_BATCH`] tokens of a longer
/// sequence (which runs in chunks, as in a session).
///
/// `isa` forces an instruction set (default: [`crate::simd::active`]). Errors: a bad config,
/// shapes that do not match it (see [`LayerView::check`]), `seq_len == 0` or an `x` that is not
/// a whole number of sequences, a non-finite activation; `x` is then partly updated.
pub fn layer_forward(
    cfg: &Config,
    isa: Option<Isa>,
    w: &LayerView<'_>,
    x: &mut [f32],
    seq_len: usize,
    tap: &mut dyn FnMut(Tap, usize, &[f32]),
) -> Result<()> {
    cfg.validate()?;
    w.check(cfg)?;
    let isa = match isa {
        Some(i) => i.require()?,
        None => crate::simd::active()?,
    };
    let h = cfg.hidden_size;
    if seq_len == 0 || !x.len().is_multiple_of(seq_len * h) {
        return Err(Error::Shape(format!(
            "x holds {} values: not a whole number of sequences of {seq_len} tokens × {h}",
            x.len()
        )));
    }
    let batch = seq_len.min(super::MAX_BATCH);
    let mut s = Scratch::new(cfg, batch)?;
    let kvd = cfg.num_key_value_heads * cfg.head_dim;
    let mut kc = buffer(&[seq_len, kvd], "key cache")?;
    let mut vc = buffer(&[seq_len, kvd], "value cache")?;
    let (cos, sin) = ops::rope_tables(&cfg.inv_freq(), seq_len);
    for (si, seq) in x.chunks_exact_mut(seq_len * h).enumerate() {
        for (ci, chunk) in seq.chunks_mut(batch * h).enumerate() {
            let kv = Kv { k: &mut kc, v: &mut vc, ctx: seq_len, p0: ci * batch, cos: &cos, sin: &sin };
            let row = si * seq_len + ci * batch;
            forward(cfg, isa, w, chunk, &mut s, kv, &mut |t, a| tap(t, row, a))?;
        }
    }
    Ok(())
}
