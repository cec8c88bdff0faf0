//! A Llama whose attention is attn-backends' paged attention, and a continuous-batching
//! engine to drive it.
//!
//! [`PagedLlama`] is candle-transformers' Llama architecture (the same weight names, RMSNorm,
//! rotary embedding, SwiGLU MLP and lm head, built from a [`VarBuilder`] as its
//! `Llama::load` is), with each layer's KV cache paged: a step is any batch of requests,
//! each with its own cached context and new tokens, flattened into one token dimension.
//! [`Engine`] schedules requests over it as a serving engine does: a request joins with its
//! whole prompt (a prefill), then decodes one token a step, and leaves when it has its
//! tokens, returning its blocks to the pool.

use crate::{candle_error, PagedAttention, PagedStep, StepLimits};
use attn_backends::{AttentionMetadata, AttnSpec, KvCacheLayout, MetadataBuilder, RequestSchedule, SchedulerOutput};
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder};
use std::collections::VecDeque;

/// A Llama's sizes (candle-transformers' `llama::Config`, the fields this model reads).
#[derive(Clone, Debug)]
pub struct LlamaShape {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
}

impl LlamaShape {
    /// Dims a head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

struct Block {
    rms_1: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    rms_2: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    attn: PagedAttention,
}

/// The Llama of candle-transformers with paged attention (see the module docs).
pub struct PagedLlama {
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    /// Rotary tables `[max positions, head dim / 2]` in the model's dtype, as
    /// candle-transformers computes them (f32, then cast).
    cos: Tensor,
    sin: Tensor,
    shape: LlamaShape,
    dtype: DType,
    device: Device,
    /// The step every layer runs (planned once a forward; all layers share shape and layout).
    step: Option<PagedStep>,
}

impl PagedLlama {
    /// The model from `vb` (candle-transformers' weight names: `model.embed_tokens`,
    /// `model.layers.{i}.self_attn.{q,k,v,o}_proj`, `...mlp.{gate,up,down}_proj`, the two
    /// norms, `model.norm`, `lm_head`), each layer with a paged cache of `layout`.
    pub fn load(vb: VarBuilder, shape: &LlamaShape, layout: KvCacheLayout) -> Result<Self> {
        let (h, i, d) = (shape.hidden_size, shape.intermediate_size, shape.head_dim());
        let (hq, hkv) = (shape.num_attention_heads, shape.num_key_value_heads);
        let spec = AttnSpec::new(hq, hkv, d);
        let dev = vb.device().clone();
        let mut blocks = Vec::with_capacity(shape.num_hidden_layers);
        for l in 0..shape.num_hidden_layers {
            let vb = vb.pp(format!("model.layers.{l}"));
            let (a, m) = (vb.pp("self_attn"), vb.pp("mlp"));
            blocks.push(Block {
                rms_1: candle_nn::rms_norm(h, shape.rms_norm_eps, vb.pp("input_layernorm"))?,
                q_proj: candle_nn::linear_no_bias(h, hq * d, a.pp("q_proj"))?,
                k_proj: candle_nn::linear_no_bias(h, hkv * d, a.pp("k_proj"))?,
                v_proj: candle_nn::linear_no_bias(h, hkv * d, a.pp("v_proj"))?,
                o_proj: candle_nn::linear_no_bias(hq * d, h, a.pp("o_proj"))?,
                rms_2: candle_nn::rms_norm(h, shape.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
                gate_proj: candle_nn::linear_no_bias(h, i, m.pp("gate_proj"))?,
                up_proj: candle_nn::linear_no_bias(h, i, m.pp("up_proj"))?,
                down_proj: candle_nn::linear_no_bias(i, h, m.pp("down_proj"))?,
                attn: PagedAttention::new(spec.clone(), layout, vb.dtype(), &dev)?,
            });
        }
        let inv_freq: Vec<f32> = (0..d).step_by(2).map(|j| 1f32 / shape.rope_theta.powf(j as f32 / d as f32)).collect();
        let theta = Tensor::new(inv_freq, &dev)?;
        let idx = Tensor::arange(0, shape.max_position_embeddings as u32, &dev)?.to_dtype(DType::F32)?.reshape((shape.max_position_embeddings, 1))?;
        let angles = idx.matmul(&theta.reshape((1, d / 2))?)?;
        Ok(PagedLlama {
            embed: candle_nn::embedding(shape.vocab_size, h, vb.pp("model.embed_tokens"))?,
            blocks,
            norm: candle_nn::rms_norm(h, shape.rms_norm_eps, vb.pp("model.norm"))?,
            lm_head: candle_nn::linear_no_bias(h, shape.vocab_size, vb.pp("lm_head"))?,
            cos: angles.cos()?.to_dtype(vb.dtype())?,
            sin: angles.sin()?.to_dtype(vb.dtype())?,
            shape: shape.clone(),
            dtype: vb.dtype(),
            device: dev,
            step: None,
        })
    }

    /// One step: `tokens` are the step's new tokens, request after request as `meta` orders
    /// them (each request's context is in the caches). Returns the logits (f32) of each
    /// request's last token, `[requests, vocab]`.
    pub fn forward(&mut self, tokens: &[u32], meta: &AttentionMetadata) -> Result<Tensor> {
        let n = meta.num_tokens();
        if tokens.len() != n {
            return Err(candle_core::Error::Msg(format!("attn-candle: {} tokens for a step of {n}", tokens.len())));
        }
        let (hq, hkv, d) = (self.shape.num_attention_heads, self.shape.num_key_value_heads, self.shape.head_dim());
        // Each token's position: its request's cached tokens, then its place among the new.
        let mut pos = Vec::with_capacity(n);
        let mut last = Vec::with_capacity(meta.num_reqs());
        for r in 0..meta.num_reqs() {
            let ctx = meta.context_len(r);
            pos.extend((0..meta.query_len(r)).map(|i| (ctx + i) as u32));
            last.push(meta.query_start_loc()[r + 1] as u32 - 1);
        }
        if let Some(&p) = pos.iter().max().filter(|&&p| p as usize >= self.shape.max_position_embeddings) {
            return Err(candle_core::Error::Msg(format!("attn-candle: position {p} is past max_position_embeddings {}", self.shape.max_position_embeddings)));
        }
        let pos = Tensor::new(pos, &self.device)?;
        let (cos, sin) = (self.cos.index_select(&pos, 0)?, self.sin.index_select(&pos, 0)?);
        let mut x = self.embed.forward(&Tensor::new(tokens, &self.device)?)?;
        let mut step = match self.step.take() {
            Some(s) => s,
            None => self.blocks.first().ok_or_else(|| candle_core::Error::Msg("attn-candle: a model of no layers".into()))?.attn.new_step(StepLimits::for_metadata(meta))?,
        };
        step.prepare(meta)?;
        let step = self.step.insert(step);
        for b in &mut self.blocks {
            let residual = x.clone();
            let h = b.rms_1.forward(&x)?;
            let q = b.q_proj.forward(&h)?.reshape((n, hq, d))?;
            let k = b.k_proj.forward(&h)?.reshape((n, hkv, d))?;
            let v = b.v_proj.forward(&h)?.reshape((n, hkv, d))?.contiguous()?;
            let (q, k) = (rope(&q, &cos, &sin)?, rope(&k, &cos, &sin)?);
            let y = b.attn.forward_step(&q, &k, &v, step)?.reshape((n, hq * d))?;
            x = (b.o_proj.forward(&y)? + residual)?;
            let residual = x.clone();
            let h = b.rms_2.forward(&x)?;
            let m = (candle_nn::ops::silu(&b.gate_proj.forward(&h)?)? * b.up_proj.forward(&h)?)?;
            x = (b.down_proj.forward(&m)? + residual)?;
        }
        let x = self.norm.forward(&x)?.index_select(&Tensor::new(last, &self.device)?, 0)?;
        self.lm_head.forward(&x)?.to_dtype(DType::F32)
    }

    /// The model's dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `x` `[tokens, heads, d]` rotated at each token's position (`cos`, `sin`: `[tokens, d / 2]`).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    // candle's rope takes `[batch, heads, seq, d]`.
    let x = x.transpose(0, 1)?.contiguous()?.unsqueeze(0)?;
    candle_nn::rotary_emb::rope(&x, cos, sin)?.squeeze(0)?.transpose(0, 1)?.contiguous()
}

/// A request of the engine: its prompt, the tokens it has generated, its blocks.
#[derive(Clone, Debug)]
pub struct Request {
    /// The engine's id for it (the order of [`Engine::add`]).
    pub id: usize,
    /// The prompt's tokens.
    pub prompt: Vec<u32>,
    /// Tokens generated so far (greedy).
    pub generated: Vec<u32>,
    /// Tokens to generate before it leaves.
    pub max_new: usize,
    /// Tokens in the cache.
    computed: usize,
    /// Its physical blocks, in logical order.
    blocks: Vec<u32>,
}

/// What one step gave a request: the logits of its last token and the token chosen.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// The request's id.
    pub id: usize,
    /// The position of the token whose logits these are.
    pub position: usize,
    /// Logits over the vocabulary (f32).
    pub logits: Vec<f32>,
    /// The greedy choice.
    pub token: u32,
}

/// Continuous batching over a [`PagedLlama`]: each step runs every running request's next
/// token and admits waiting requests (their whole prompt) while the batch and the block pool
/// allow; a request that has its tokens leaves and frees its blocks.
pub struct Engine {
    /// The model.
    pub model: PagedLlama,
    layout: KvCacheLayout,
    free: Vec<u32>,
    running: Vec<Request>,
    waiting: VecDeque<Request>,
    max_batch: usize,
    next_id: usize,
    /// Requests that have left, in the order they left.
    pub finished: Vec<Request>,
}

impl Engine {
    /// An engine over `model`, whose caches have `layout`, running at most `max_batch`
    /// requests a step.
    pub fn new(model: PagedLlama, layout: KvCacheLayout, max_batch: usize) -> Self {
        Engine { model, layout, free: (0..layout.num_blocks as u32).rev().collect(), running: Vec::new(), waiting: VecDeque::new(), max_batch: max_batch.max(1), next_id: 0, finished: Vec::new() }
    }

    /// Queues a request; returns its id. Refused (nothing queued): an empty prompt, one
    /// whose tokens would pass the model's positions, one the whole block pool cannot hold.
    pub fn add(&mut self, prompt: Vec<u32>, max_new: usize) -> Result<usize> {
        let max_new = max_new.max(1);
        let total = prompt.len() + max_new;
        let refuse = |why: String| Err(candle_core::Error::Msg(format!("attn-candle: request refused: {why}")));
        if prompt.is_empty() {
            return refuse("an empty prompt".into());
        }
        if total > self.model.shape.max_position_embeddings {
            return refuse(format!("{} prompt + {max_new} new tokens pass max_position_embeddings {}", prompt.len(), self.model.shape.max_position_embeddings));
        }
        if total.div_ceil(self.layout.block_size) > self.layout.num_blocks {
            return refuse(format!("{total} tokens need {} blocks; the cache has {}", total.div_ceil(self.layout.block_size), self.layout.num_blocks));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Request { id, prompt, generated: Vec::new(), max_new, computed: 0, blocks: Vec::new() });
        Ok(id)
    }

    /// The tokens each finished request generated, by request id.
    pub fn finished_in_id_order(&self) -> Vec<Vec<u32>> {
        let mut f: Vec<&Request> = self.finished.iter().collect();
        f.sort_by_key(|r| r.id);
        f.into_iter().map(|r| r.generated.clone()).collect()
    }

    /// Requests running or waiting.
    pub fn pending(&self) -> usize {
        self.running.len() + self.waiting.len()
    }

    /// Blocks `r` needs for `extra` more tokens, taken from the pool; false if it is short.
    fn grow(free: &mut Vec<u32>, block_size: usize, r: &mut Request, extra: usize) -> bool {
        let need = (r.computed + extra).div_ceil(block_size).saturating_sub(r.blocks.len());
        if need > free.len() {
            return false;
        }
        for _ in 0..need {
            r.blocks.push(free.pop().expect("counted"));
        }
        true
    }

    /// One step (see the type's docs). Returns what each request in it got.
    pub fn step(&mut self) -> Result<Vec<StepOutput>> {
        let bs = self.layout.block_size;
        // A request joins with the blocks of all its tokens, prompt and new ones, so a
        // running request never waits for a block.
        while self.running.len() < self.max_batch {
            let Some(mut r) = self.waiting.pop_front() else { break };
            let total = r.prompt.len() + r.max_new;
            if !Self::grow(&mut self.free, bs, &mut r, total) {
                self.waiting.push_front(r);
                break;
            }
            self.running.push(r);
        }
        if self.running.is_empty() {
            return Ok(Vec::new());
        }
        // The step's new tokens: a joining request's prompt, a running one's last token.
        let mut tokens = Vec::new();
        let mut sched = SchedulerOutput::default();
        for r in &self.running {
            let new: Vec<u32> = if r.computed == 0 { r.prompt.clone() } else { vec![*r.generated.last().expect("a decoding request has a token")] };
            sched.requests.push(RequestSchedule { num_computed_tokens: r.computed, num_new_tokens: new.len(), block_ids: r.blocks.clone() });
            tokens.extend(new);
        }
        let meta = MetadataBuilder::new(self.layout).build(&sched).map_err(candle_error)?;
        let logits = self.model.forward(&tokens, &meta)?;
        let chosen = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let mut outs = Vec::with_capacity(self.running.len());
        for (i, r) in self.running.iter_mut().enumerate() {
            r.computed += sched.requests[i].num_new_tokens;
            outs.push(StepOutput { id: r.id, position: r.computed - 1, logits: logits.i(i)?.to_vec1::<f32>()?, token: chosen[i] });
            r.generated.push(chosen[i]);
        }
        // Requests with their tokens leave; their blocks go back to the pool.
        let (done, keep): (Vec<Request>, Vec<Request>) = self.running.drain(..).partition(|r| r.generated.len() >= r.max_new);
        self.running = keep;
        for r in done {
            self.free.extend(r.blocks.iter().rev());
            self.finished.push(r);
        }
        Ok(outs)
    }
}
