//! A generation session: the KV cache of one sequence and the scratch buffers of the forward
//! pass, all allocated once when the session is created.

use super::layer::{self, buffer, Kv, Scratch};
use super::ops;
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
    /// Hidden states of at most `scratch.batch` tokens (the tokens going through the layers).
    x: Vec<f32>,
    scratch: Scratch,
    /// One row of `hidden` values (embedding lookup).
    row: Vec<f32>,
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
        let cache = [c.num_hidden_layers, c.num_key_value_heads, max_context, c.head_dim];
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
            x: buffer(&[b, c.hidden_size], "scratch")?,
            scratch: Scratch::new(c, b)?,
            row: buffer(&[c.hidden_size], "scratch")?,
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
        // On a rayon worker for the whole forward: the many small matmuls and ops inside then
        // queue their tasks locally instead of each handing its work over from this thread
        // and sleeping until it is done.
        let r = rayon::scope(|_| self.forward_chunks(model, tokens, all_logits, &mut logits));
        if r.is_err() {
            self.pos = start;
        }
        r.map(|()| logits)
    }

    fn forward_chunks(&mut self, model: &Model, tokens: &[u32], all: bool, logits: &mut [f32]) -> Result<()> {
        let vocab = model.cfg.vocab_size;
        let batch = self.scratch.batch;
        let chunks = tokens.len().div_ceil(batch);
        for (c, chunk) in tokens.chunks(batch).enumerate() {
            self.layers(model, chunk)?;
            let n = chunk.len();
            if all {
                self.output(model, 0..n, &mut logits[c * batch * vocab..][..n * vocab])?;
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
        let (n, h) = (tokens.len(), c.hidden_size);
        let x = &mut self.x[..n * h];
        for (t, xr) in tokens.iter().zip(x.chunks_exact_mut(h)) {
            model.embed(*t, xr, &mut self.row);
        }
        let layer_cache = c.num_key_value_heads * self.max_context * c.head_dim;
        let bytes = model.file.bytes();
        for (l, w) in model.layers.iter().enumerate() {
            let kv = Kv {
                k: &mut self.k_cache[l * layer_cache..(l + 1) * layer_cache],
                v: &mut self.v_cache[l * layer_cache..(l + 1) * layer_cache],
                ctx: self.max_context,
                p0: self.pos,
                cos: &self.cos,
                sin: &self.sin,
            };
            layer::forward(c, model.isa, &w.view(bytes), x, &mut self.scratch, kv, &mut |_, _| {})?;
        }
        self.pos += n;
        Ok(())
    }

    /// Logits of the tokens `rows` of the last chunk into `out` (`rows.len() × vocab`).
    fn output(&mut self, model: &Model, rows: std::ops::Range<usize>, out: &mut [f32]) -> Result<()> {
        let h = model.cfg.hidden_size;
        let (x, xn) = (&self.x[rows.start * h..rows.end * h], self.scratch.xn(rows.len(), h));
        ops::rms_norm(x, &model.norm, model.cfg.rms_norm_eps, xn);
        model.matmul(model.output(), xn, rows.len(), out)
    }
}
