//! A generation session: the KV cache of one sequence and the scratch buffers of the forward
//! pass, all allocated once when the session is created.

use super::ops::{self, AttnShape};
use super::Model;
use crate::error::{Error, Result};

/// Most tokens run through the layers together: a longer batch is processed in chunks of this
/// many (as llama.cpp's micro-batches), which bounds the scratch memory to `MAX_BATCH` rows.
pub const MAX_BATCH: usize = 512;

/// The state of one sequence on one [`Model`]: an f32 KV cache of `max_context` positions and
/// the scratch buffers of a batch.
#[derive(Debug)]
pub struct Session {
    model_id: u64,
    max_context: usize,
    /// Tokens in the cache.
    pos: usize,
    /// Keys and values: `layers × kv_heads × max_context × head_dim` each (RoPE applied to keys).
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
    /// RoPE tables, `max_context × head_dim / 2` each.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Scratch rows: at most `batch` tokens go through the layers at once.
    batch: usize,
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// One row of `hidden` values (embedding lookup).
    row: Vec<f32>,
}

/// A zeroed buffer of `a × b × ...` f32, or an error saying what did not fit.
fn buffer(dims: &[usize], what: &str) -> Result<Vec<f32>> {
    let too_big = || Error::InvalidParameter(format!("the {what} of {dims:?} values does not fit in memory"));
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(too_big)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| too_big())?;
    v.resize(n, 0.0);
    Ok(v)
}

impl Session {
    /// A session for `model` holding at most `max_context` tokens (positive), running batches
    /// in chunks of [`MAX_BATCH`] tokens.
    pub fn new(model: &Model, max_context: usize) -> Result<Session> {
        Session::with_batch(model, max_context, MAX_BATCH)
    }

    /// [`Session::new`] with chunks of `batch` tokens (positive): the scratch memory is `batch`
    /// rows of the widest activation (`intermediate_size` values).
    pub fn with_batch(model: &Model, max_context: usize, batch: usize) -> Result<Session> {
        if max_context == 0 || batch == 0 {
            return Err(Error::InvalidParameter(format!(
                "max_context ({max_context}) and batch ({batch}) must be positive"
            )));
        }
        let c = &model.cfg;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (qd, kvd) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let cache = [c.num_hidden_layers, c.num_key_value_heads, max_context, hd];
        let b = max_context.min(batch);
        let (cos, sin) = ops::rope_tables(&model.inv_freq, max_context);
        Ok(Session {
            model_id: model.id,
            max_context,
            pos: 0,
            k_cache: buffer(&cache, "key cache")?,
            v_cache: buffer(&cache, "value cache")?,
            cos,
            sin,
            batch: b,
            x: buffer(&[b, h], "scratch")?,
            xn: buffer(&[b, h], "scratch")?,
            q: buffer(&[b, qd], "scratch")?,
            k: buffer(&[b, kvd], "scratch")?,
            v: buffer(&[b, kvd], "scratch")?,
            att: buffer(&[b, qd], "scratch")?,
            gate: buffer(&[b, c.intermediate_size], "scratch")?,
            up: buffer(&[b, c.intermediate_size], "scratch")?,
            row: buffer(&[h], "scratch")?,
        })
    }

    /// Tokens in the cache (the position of the next token).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Capacity of the cache, in tokens.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Forget every token.
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Keep the first `n` tokens (`n <= position()`): the next forward continues from there.
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        if n > self.pos {
            return Err(Error::InvalidParameter(format!(
                "cannot truncate to {n} tokens: the cache holds {}",
                self.pos
            )));
        }
        self.pos = n;
        Ok(())
    }

    /// Run `tokens` (at positions `position()..position() + n`) through the model, append them
    /// to the cache and return the logits: `n × vocab` (row-major) with `all_logits`, else the
    /// `vocab` logits of the last token. Decoding is a forward of one token.
    ///
    /// Errors (the cache is unchanged): an empty batch, a token id `>= vocab_size`, more tokens
    /// than the cache has room for, a session made for another model, a non-finite activation.
    pub fn forward(&mut self, model: &Model, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        if self.model_id != model.id {
            return Err(Error::InvalidParameter("this session was created for another model".into()));
        }
        let vocab = model.cfg.vocab_size;
        if tokens.is_empty() {
            return Err(Error::Shape("forward needs at least one token".into()));
        }
        if let Some(i) = tokens.iter().position(|&t| t as usize >= vocab) {
            return Err(Error::InvalidParameter(format!(
                "token {i} has id {}, outside the vocabulary of {vocab}",
                tokens[i]
            )));
        }
        let room = self.max_context - self.pos;
        if tokens.len() > room {
            return Err(Error::InvalidParameter(format!(
                "context overflow: {} tokens do not fit, {room} more fit (max_context {}, {} in the cache)",
                tokens.len(),
                self.max_context,
                self.pos
            )));
        }
        let start = self.pos;
        let mut logits = vec![0f32; if all_logits { tokens.len() * vocab } else { vocab }];
        let r = self.forward_chunks(model, tokens, all_logits, &mut logits);
        if r.is_err() {
            self.pos = start;
        }
        r.map(|()| logits)
    }

    fn forward_chunks(&mut self, model: &Model, tokens: &[u32], all: bool, logits: &mut [f32]) -> Result<()> {
        let vocab = model.cfg.vocab_size;
        let chunks = tokens.len().div_ceil(self.batch);
        for (c, chunk) in tokens.chunks(self.batch).enumerate() {
            self.layers(model, chunk)?;
            let n = chunk.len();
            if all {
                self.output(model, 0..n, &mut logits[c * self.batch * vocab..][..n * vocab])?;
            } else if c + 1 == chunks {
                self.output(model, n - 1..n, logits)?;
            }
        }
        Ok(())
    }

    /// Run `tokens` through every layer, leaving their hidden states in `x` and the cache
    /// advanced.
    fn layers(&mut self, model: &Model, tokens: &[u32]) -> Result<()> {
        let c = &model.cfg;
        let (n, h, hd, p0) = (tokens.len(), c.hidden_size, c.head_dim, self.pos);
        let (nh, nkv, ctx) = (c.num_attention_heads, c.num_key_value_heads, self.max_context);
        let (qd, kvd, f) = (nh * hd, nkv * hd, c.intermediate_size);
        let x = &mut self.x[..n * h];
        for (t, xr) in tokens.iter().zip(x.chunks_exact_mut(h)) {
            model.embed(*t, xr, &mut self.row);
        }
        let (xn, q, k, v) =
            (&mut self.xn[..n * h], &mut self.q[..n * qd], &mut self.k[..n * kvd], &mut self.v[..n * kvd]);
        let (att, gate, up) = (&mut self.att[..n * qd], &mut self.gate[..n * f], &mut self.up[..n * f]);
        let layer_cache = nkv * ctx * hd;
        for (l, w) in model.layers.iter().enumerate() {
            ops::rms_norm(x, &w.attn_norm, c.rms_norm_eps, xn);
            model.matmul(&w.q, xn, n, q)?;
            model.matmul(&w.k, xn, n, k)?;
            model.matmul(&w.v, xn, n, v)?;
            if let Some([bq, bk, bv]) = &w.qkv_bias {
                ops::add_bias(q, bq);
                ops::add_bias(k, bk);
                ops::add_bias(v, bv);
            }
            ops::rope(q, nh, hd, p0, &self.cos, &self.sin);
            ops::rope(k, nkv, hd, p0, &self.cos, &self.sin);
            let kc = &mut self.k_cache[l * layer_cache..(l + 1) * layer_cache];
            let vc = &mut self.v_cache[l * layer_cache..(l + 1) * layer_cache];
            for i in 0..n {
                for g in 0..nkv {
                    let (src, dst) = (i * kvd + g * hd, (g * ctx + p0 + i) * hd);
                    kc[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                    vc[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
                }
            }
            ops::attention(
                q,
                kc,
                vc,
                att,
                AttnShape { heads: nh, kv_heads: nkv, hd, ctx, p0, window: c.sliding_window },
            );
            model.matmul(&w.o, att, n, xn)?;
            if let Some(b) = &w.o_bias {
                ops::add_bias(xn, b);
            }
            ops::add(x, xn);
            ops::rms_norm(x, &w.ffn_norm, c.rms_norm_eps, xn);
            model.matmul(&w.gate, xn, n, gate)?;
            model.matmul(&w.up, xn, n, up)?;
            ops::swiglu(gate, up);
            model.matmul(&w.down, gate, n, xn)?;
            ops::add(x, xn);
        }
        self.pos += n;
        Ok(())
    }

    /// Logits of the tokens `rows` of the last chunk into `out` (`rows.len() × vocab`).
    fn output(&mut self, model: &Model, rows: std::ops::Range<usize>, out: &mut [f32]) -> Result<()> {
        let h = model.cfg.hidden_size;
        let (x, xn) = (&self.x[rows.start * h..rows.end * h], &mut self.xn[..rows.len() * h]);
        ops::rms_norm(x, &model.norm, model.cfg.rms_norm_eps, xn);
        model.matmul(model.output(), xn, rows.len(), out)
    }
}
