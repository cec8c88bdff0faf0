//! What one attention layer computes, independent of the backend: head counts, head dim,
//! scale and the optional score modifiers (sliding window, logits soft-cap, ALiBi).

use crate::error::{AttnError, Result};

#[cfg(test)]
mod tests {
    use super::{alibi_slopes, AttnSpec, MlaSpec};
    use crate::error::AttnError;

    #[test]
    fn alibi_slopes_by_hand() {
        // 8 heads: 2^-1, 2^-2, ..., 2^-8.
        assert_eq!(alibi_slopes(8), (1..=8).map(|i| 0.5f32.powi(i)).collect::<Vec<_>>());
        // 12 heads: the 8 above, then every other slope of 16 heads: 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
        let s = alibi_slopes(12);
        assert_eq!(s.len(), 12);
        for (i, e) in [0.5f64, 1.5, 2.5, 3.5].into_iter().enumerate() {
            assert!((s[8 + i] as f64 - 2f64.powf(-e)).abs() < 1e-6, "slope {}: {}", 8 + i, s[8 + i]);
        }
        assert!(alibi_slopes(0).is_empty());
    }

    #[test]
    fn an_mla_spec_with_another_head_count_is_refused() {
        let mla = MlaSpec { num_q_heads: 16, kv_lora_rank: 512, qk_rope_head_dim: 64, qk_nope_head_dim: 128, v_head_dim: 128, scale: 0.07 };
        let ok = AttnSpec { mla: Some(mla.clone()), ..AttnSpec::new(16, 16, 192) };
        assert!(ok.validate().is_ok());
        let e = AttnSpec { mla: Some(mla), ..AttnSpec::new(128, 128, 192) }.validate().unwrap_err();
        assert!(matches!(e, AttnError::InvalidConfig(_)) && e.to_string().contains("16 query heads and the layer 128"), "{e}");
    }
}

/// Largest head count and head dim a spec may have: the same limits the config reader
/// applies (`model::MAX_Q_HEADS`, `model::MAX_HEAD_DIM`), so every message quoting a limit
/// quotes the same number. Several times what any released model uses.
pub const MAX_HEADS: usize = 1024;
/// See [`MAX_HEADS`].
pub const MAX_HEAD_DIM: usize = 1024;

/// One attention layer of a model (MHA / GQA / MQA).
#[derive(Clone, Debug, PartialEq)]
pub struct AttnSpec {
    /// Query heads.
    pub num_q_heads: usize,
    /// KV heads (a divisor of the query heads).
    pub num_kv_heads: usize,
    /// Query/key/value dims per head.
    pub head_dim: usize,
    /// Softmax scale, usually `1/sqrt(head_dim)`.
    pub scale: f32,
    /// A query at position p sees keys in `(p - window, p]`; `None` = unlimited.
    pub sliding_window: Option<usize>,
    /// Chunked local attention (Llama 4, vLLM's `attention_chunk_size`): a query at position
    /// p sees only the keys of its own chunk, `[p - p % chunk, p]`; `None` = no chunks.
    pub chunk_size: Option<usize>,
    /// `false`: bidirectional (an encoder layer, vLLM's encoder-only attention): each query
    /// sees every token of its request, the step's own K/V, and nothing is cached.
    pub causal: bool,
    /// Attention sinks (gpt-oss): a learned logit per query head.
    pub sinks: Sinks,
    /// Logits soft-cap: `s -> cap * tanh(s / cap)` after scaling; `None` = off.
    pub softcap: Option<f32>,
    /// ALiBi: `s += slope[h] * (key_pos - query_pos)`; one slope per query head.
    pub alibi_slopes: Option<Vec<f32>>,
    /// Set on the layers of an MLA model (the decompressed form above is then not what is
    /// cached or computed): the multi-head layer refuses such a spec rather than run MLA as
    /// MHA; its absorbed form is this [`MlaSpec`].
    pub mla: Option<MlaSpec>,
}

impl AttnSpec {
    /// A plain causal layer: scale `1/sqrt(head_dim)`, no window, soft-cap, ALiBi or MLA.
    pub fn new(num_q_heads: usize, num_kv_heads: usize, head_dim: usize) -> Self {
        AttnSpec {
            num_q_heads,
            num_kv_heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            sliding_window: None,
            chunk_size: None,
            causal: true,
            sinks: Sinks::None,
            softcap: None,
            alibi_slopes: None,
            mla: None,
        }
    }

    /// Query heads per KV head.
    pub fn group_size(&self) -> usize {
        self.num_q_heads / self.num_kv_heads
    }

    /// The spec with the checkpoint's attention-sink logits (one per query head).
    pub fn with_sinks(mut self, sinks: Vec<f32>) -> Self {
        self.sinks = Sinks::Logits(sinks);
        self
    }

    /// The sink logits, when the layer has them and they were given.
    pub fn sink_logits(&self) -> Option<&[f32]> {
        match &self.sinks {
            Sinks::Logits(v) => Some(v),
            _ => None,
        }
    }

    /// The first key a query at `pos` sees and one past its last (`seq_len` keys in its
    /// request): its window or chunk start to itself, or for a bidirectional layer all of
    /// them. The one rule every backend and the oracle follow.
    ///
    /// ```
    /// use attn_host::spec::AttnSpec;
    /// let mut s = AttnSpec::new(8, 8, 64);
    /// assert_eq!(s.visible_keys(10, 20), 0..11);
    /// s.chunk_size = Some(8);
    /// assert_eq!(s.visible_keys(10, 20), 8..11);
    /// s.sliding_window = Some(2);
    /// assert_eq!(s.visible_keys(10, 20), 9..11);
    /// ```
    pub fn visible_keys(&self, pos: usize, seq_len: usize) -> std::ops::Range<usize> {
        if !self.causal {
            return 0..seq_len;
        }
        let end = pos + 1;
        let window = self.sliding_window.map_or(0, |w| end.saturating_sub(w));
        let chunk = self.chunk_size.map_or(0, |c| pos - pos % c);
        window.max(chunk)..end
    }

    /// Checks what every backend relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(AttnError::InvalidConfig(m));
        if self.num_q_heads == 0 || self.num_kv_heads == 0 || self.head_dim == 0 {
            return bad(format!(
                "heads and head dim must be positive (q heads {}, kv heads {}, head dim {})",
                self.num_q_heads, self.num_kv_heads, self.head_dim
            ));
        }
        if self.num_q_heads > MAX_HEADS || self.head_dim > MAX_HEAD_DIM {
            return bad(format!(
                "{} query heads, head dim {}: at most {MAX_HEADS} heads and head dim {MAX_HEAD_DIM}",
                self.num_q_heads, self.head_dim
            ));
        }
        if self.num_q_heads % self.num_kv_heads != 0 {
            return bad(format!(
                "{} query heads are not a multiple of {} kv heads",
                self.num_q_heads, self.num_kv_heads
            ));
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return bad(format!("softmax scale {} is not a positive finite number", self.scale));
        }
        if self.sliding_window == Some(0) {
            return bad("sliding window 0 would hide every key".into());
        }
        if self.chunk_size == Some(0) {
            return bad("chunk size 0 would hide every key (chunked local attention needs chunks of 1 or more tokens)".into());
        }
        if !self.causal && (self.sliding_window.is_some() || self.chunk_size.is_some() || self.mla.is_some()) {
            return bad("a bidirectional (encoder) layer has no sliding window, chunks or MLA: it attends over all of its request's tokens".into());
        }
        match &self.sinks {
            Sinks::None => {}
            Sinks::Unset => {
                return bad(format!(
                    "the layer has attention sinks (the model's config says so) but no sink values: give the checkpoint's {} sink logits with AttnSpec::with_sinks",
                    self.num_q_heads
                ));
            }
            Sinks::Logits(v) => {
                if v.len() != self.num_q_heads {
                    return bad(format!("{} attention-sink logits for {} query heads", v.len(), self.num_q_heads));
                }
                if let Some((h, x)) = v.iter().enumerate().find(|(_, x)| x.is_nan() || **x == f32::INFINITY) {
                    return bad(format!("attention-sink logit of query head {h} is {x}: a sink must be finite, or -inf for none"));
                }
            }
        }
        if let Some(c) = self.softcap {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!("soft-cap {c} is not a positive finite number"));
            }
        }
        if let Some(s) = &self.alibi_slopes {
            if s.len() != self.num_q_heads {
                return bad(format!("{} ALiBi slopes for {} query heads", s.len(), self.num_q_heads));
            }
        }
        // An MLA layer names its heads twice (the decompressed form and the absorbed one):
        // they must agree, or no one can tell which the caller meant.
        if let Some(m) = &self.mla {
            if m.num_q_heads != self.num_q_heads {
                return bad(format!(
                    "the MLA spec has {} query heads and the layer {}: they must be the same",
                    m.num_q_heads, self.num_q_heads
                ));
            }
        }
        Ok(())
    }
}

/// A layer's attention sinks: a learned logit per query head (gpt-oss) that joins every
/// row's softmax denominator and contributes no value, so a row can give attention to
/// "nothing". They are weights, not config: a config marks the model as having them
/// (`Unset`), the checkpoint gives their values (`Logits`, [`AttnSpec::with_sinks`]).
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Sinks {
    /// No sinks.
    #[default]
    None,
    /// The model has sinks, their values are not given yet: a layer refuses to run.
    Unset,
    /// One logit per query head (`-inf`: no sink for that head).
    Logits(Vec<f32>),
}

impl Sinks {
    /// Whether the layer has sinks (given or not).
    pub fn present(&self) -> bool {
        !matches!(self, Sinks::None)
    }
}

/// The standard ALiBi slopes for `n` heads (Press et al.; as in BLOOM and MPT): for a power
/// of two `n`, `2^(-8 i / n)` for `i = 1..=n`; otherwise those of the largest power of two
/// below `n`, then every other slope of twice that.
pub fn alibi_slopes(n: usize) -> Vec<f32> {
    if n == 0 {
        return Vec::new();
    }
    let closest = 1usize << (usize::BITS - 1 - n.leading_zeros());
    let base = 2f64.powf(-8.0 / closest as f64);
    let mut s: Vec<f32> = (1..=closest).map(|i| base.powi(i as i32) as f32).collect();
    if closest < n {
        let extra = 2f64.powf(-4.0 / closest as f64);
        s.extend((0..n - closest).map(|i| extra.powi((2 * i + 1) as i32) as f32));
    }
    s
}

/// DeepSeek's multi-head latent attention, in the absorbed form the kernels compute:
/// one latent KV head of `kv_lora_rank + qk_rope_head_dim` dims whose first
/// `kv_lora_rank` dims are also the values.
#[derive(Clone, Debug, PartialEq)]
pub struct MlaSpec {
    /// Query heads (the layer's own count: `AttnSpec::validate` checks they agree).
    pub num_q_heads: usize,
    /// Rank of the compressed KV latent (512 for DeepSeek-V3): the values' width.
    pub kv_lora_rank: usize,
    /// Rotary dims, the latent row's tail (64).
    pub qk_rope_head_dim: usize,
    /// Non-rotary query/key dims per head of the decompressed form (128).
    pub qk_nope_head_dim: usize,
    /// Value dims per head of the decompressed form (128).
    pub v_head_dim: usize,
    /// Softmax scale: `1/sqrt(qk_nope_head_dim + qk_rope_head_dim)` unless the model says else.
    pub scale: f32,
}

impl MlaSpec {
    /// Width of a latent cache row (and of an absorbed query): 512 + 64 for DeepSeek-V3.
    pub fn latent_dim(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }
}
