//! Models as their checkpoints describe them: the attention-relevant part of a Hugging Face
//! `config.json`.
//!
//! The selector needs a handful of numbers (heads, head dim, dtype) and flags (sliding window,
//! soft-cap, ALiBi, MLA). Checkpoints spell them in half a dozen ways, because every model
//! family wrote its config before `transformers` standardised the names. The parser therefore
//! reads a `serde_json::Value` and tries each known spelling, rather than deriving a struct
//! that would silently default whatever it did not recognise. Anything missing or
//! inconsistent is an [`AttnError::ModelConfig`] naming the file, the field and the value.
//!
//! The built-in presets are embedded `config.json` texts with the real field names of the
//! real checkpoints and go through the same parser, so every preset also tests a naming scheme.
//!
//! ```
//! use attn_host::model::{preset, ModelConfig};
//!
//! let llama = preset("llama-3-8b").unwrap();
//! assert_eq!((llama.num_q_heads, llama.num_kv_heads, llama.head_dim), (32, 8, 128));
//!
//! // An old-style config: BLOOM spells heads `n_head` and always uses ALiBi.
//! let m = ModelConfig::from_json_str(
//!     "tiny-bloom",
//!     r#"{"model_type": "bloom", "n_head": 8, "hidden_size": 512}"#,
//! )
//! .unwrap();
//! assert!(m.alibi && m.head_dim == 64);
//! ```

use crate::dtype::DType;
use crate::error::{AttnError, Result};
use crate::spec::{AttnSpec, MlaSpec, alibi_slopes};
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::OnceLock;

/// Query-head count, in the spellings of Llama/Mistral/Gemma (`num_attention_heads`),
/// BLOOM/GPT-2/Falcon-RW (`n_head`), MPT (`n_heads`) and T5-style configs (`num_heads`).
const Q_HEAD_KEYS: &[&str] = &["num_attention_heads", "n_head", "n_heads", "num_heads"];
/// KV-head count: Llama-style GQA, Falcon's new decoder (`num_kv_heads`), Falcon-RW (`n_head_kv`).
const KV_HEAD_KEYS: &[&str] = &["num_key_value_heads", "num_kv_heads", "n_head_kv"];
/// Model width: Llama-style, GPT-2 (`n_embd`), MPT/T5 (`d_model`), BLOOM's early configs (`n_embed`).
const HIDDEN_KEYS: &[&str] = &["hidden_size", "n_embd", "d_model", "n_embed"];

/// The largest count of any kind (window, hidden size, ...) a config may give; the fields
/// below have tighter limits of their own.
const MAX_COUNT: usize = 1 << 24;

/// Limits on the fields that size tensors, checked when a config is read, before anything is
/// allocated (a config with 65536 heads of dim 8192 would otherwise pass here and abort the
/// process when its cache is allocated). Each is several times what any released model uses;
/// hand-built specs have the same ones ([`crate::spec::MAX_HEADS`],
/// [`crate::spec::MAX_HEAD_DIM`]).
///
/// Query heads: Llama-3-405B and DeepSeek-V3 have 128, Falcon-180B 232.
pub const MAX_Q_HEADS: usize = crate::spec::MAX_HEADS;
/// Per-head width (`head_dim`, `hidden_size / heads`, and MLA's `qk_rope_head_dim`,
/// `qk_nope_head_dim`, `v_head_dim` and their query/key sum): real models use 64 to 256.
pub const MAX_HEAD_DIM: usize = crate::spec::MAX_HEAD_DIM;
/// Decoder layers (`num_hidden_layers`): Llama-3-405B has 126, DeepSeek-V3 61.
pub const MAX_LAYERS: usize = 1024;
/// MLA latent rank (`kv_lora_rank`): DeepSeek-V2/V3 and Kimi-K2 use 512.
pub const MAX_KV_LORA_RANK: usize = 4096;

/// DeepSeek's multi-head latent attention dimensions (from `kv_lora_rank` and friends).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MlaDims {
    /// Rank of the compressed KV latent (512 for DeepSeek-V3).
    pub kv_lora_rank: usize,
    /// Rotary dims of a query/key head, shared by the heads as the latent row's tail (64).
    pub qk_rope_head_dim: usize,
    /// Non-rotary query/key dims per head (128).
    pub qk_nope_head_dim: usize,
    /// Value dims per head (128).
    pub v_head_dim: usize,
}

impl MlaDims {
    /// Width of a latent cache row: `kv_lora_rank + qk_rope_head_dim` (512 + 64 = 576 for
    /// DeepSeek-V3). This is the head dim the absorbed-form kernels see.
    pub fn latent_dim(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }

    /// Per-head query/key width of the decompressed form: `qk_nope + qk_rope` (192 for V3).
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }
}

/// The attention-relevant description of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The model's name (the preset's, or the checkpoint directory's).
    pub name: String,
    /// Query heads.
    pub num_q_heads: usize,
    /// KV heads (equal to the query heads for MHA, 1 for MQA).
    pub num_kv_heads: usize,
    /// Per-head width. For an MLA model, the decompressed query/key width
    /// (`qk_nope_head_dim + qk_rope_head_dim`); the kernels see [`MlaDims::latent_dim`].
    pub head_dim: usize,
    /// From `dtype` or `torch_dtype`; bf16 when the config names none.
    pub dtype: DType,
    /// `None` when the config has none, it is null, or `use_sliding_window` is false.
    /// Models that interleave local and global layers (Gemma-2, Gemma-3) give the local
    /// layers' window here and the interleaving in `global_layer_every`.
    pub sliding_window: Option<usize>,
    /// With a sliding window: every n-th layer (the n-th, 2n-th, ... counting from 1) is
    /// global. Gemma-2: 2 (`model_type` gemma2); Gemma-3: `sliding_window_pattern` (6).
    /// `None`: the window applies to every layer.
    pub global_layer_every: Option<usize>,
    /// `attn_logit_softcapping` (Gemma-2: 50.0).
    pub softcap: Option<f32>,
    /// ALiBi position biases (BLOOM, MPT) instead of rotary embeddings.
    pub alibi: bool,
    /// Softmax scale. `1/sqrt(head_dim)` unless the model says else: Gemma-2's
    /// `query_pre_attn_scalar`, MPT's `attn_config.softmax_scale`, or for MLA
    /// `1/sqrt(qk_nope + qk_rope)` times DeepSeek's YaRN `mscale^2`.
    pub scale: f32,
    /// MLA's dimensions, for a latent-attention model; `None` otherwise.
    pub mla: Option<MlaDims>,
    /// Decoder layers (`num_hidden_layers`, `n_layer`, `num_layers`), when the config says.
    pub num_layers: Option<usize>,
    /// Chunked local attention's chunk (Llama 4's `attention_chunk_size`) on the layers
    /// [`ModelConfig::layer_kind`] names chunked.
    pub chunk_size: Option<usize>,
    /// Each layer's attention type, when the config lists them (`layer_types`, or Llama 4's
    /// `no_rope_layers`); otherwise [`ModelConfig::layer_kind`] follows the model's rule.
    pub layer_types: Option<Vec<LayerKind>>,
    /// The model has attention sinks (gpt-oss: a learned logit per query head in every
    /// layer); the checkpoint holds their values ([`crate::spec::AttnSpec::with_sinks`]).
    pub sinks: bool,
}

/// One layer's attention type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerKind {
    /// Causal attention over every key.
    Full,
    /// A sliding window of this many keys (the query itself included).
    Sliding(usize),
    /// Chunked local attention in chunks of this many tokens.
    Chunked(usize),
}

impl std::fmt::Display for LayerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerKind::Full => write!(f, "full attention"),
            LayerKind::Sliding(w) => write!(f, "sliding window {w}"),
            LayerKind::Chunked(c) => write!(f, "chunked local attention, chunks of {c}"),
        }
    }
}

impl ModelConfig {
    /// Parses a `config.json` text. `name` names the model and, in errors, the source.
    pub fn from_json_str(name: &str, json: &str) -> Result<ModelConfig> {
        parse(name, name, json)
    }

    /// Reads a `config.json`, or the `config.json` inside a checkpoint directory.
    /// The model is named after the checkpoint directory (`Meta-Llama-3-8B/config.json` ->
    /// `Meta-Llama-3-8B`), or the file stem for a differently named file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<ModelConfig> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path.push("config.json");
        }
        let shown = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|source| AttnError::Io { path: shown.clone(), source })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| AttnError::ModelConfig {
            path: shown.clone(),
            detail: format!("not valid JSON: not UTF-8 text (invalid byte at offset {})", e.valid_up_to()),
        })?;
        parse(&model_name_for(&path), &shown, text)
    }

    /// Whether the model uses MLA.
    pub fn is_mla(&self) -> bool {
        self.mla.is_some()
    }

    /// The dtype to serve the model in, and why: `requested` (the user's `--dtype`) when
    /// given; otherwise the config's dtype, except that a float32 checkpoint is served in
    /// bf16, as vLLM's `--dtype auto` does (Gemma-2's configs say float32: the dtype it was
    /// trained in, not the one anyone serves it in). The same rule holds on every platform,
    /// so that a CPU run checks what a GPU run would compute.
    ///
    /// ```
    /// use attn_host::{dtype::DType, model::ModelConfig};
    /// let m = ModelConfig::from_json_str("g", r#"{"n_head": 8, "n_embd": 512, "torch_dtype": "float32"}"#).unwrap();
    /// assert_eq!(m.serving_dtype(None).0, DType::Bf16);
    /// assert_eq!(m.serving_dtype(Some(DType::F32)).0, DType::F32);
    /// ```
    pub fn serving_dtype(&self, requested: Option<DType>) -> (DType, String) {
        match (requested, self.dtype) {
            (Some(d), c) if d == c => (d, format!("--dtype {d}, the config's dtype too")),
            (Some(d), c) => (d, format!("--dtype {d}; the config says {c}")),
            (None, DType::F32) => (
                DType::Bf16,
                "the config says f32 (a training dtype): served in bf16 as vLLM's --dtype auto does; --dtype f32 keeps f32".into(),
            ),
            (None, c) => (c, "the config's dtype; bf16 where it names none".into()),
        }
    }

    /// What was understood of the model, on one line: heads, head dim, window, soft-cap,
    /// scale, ALiBi, MLA dims, dtype. For example (Gemma-2-9B):
    /// `16 query heads, 8 KV heads (GQA, 2 query heads per KV head), head dim 256, sliding
    /// window 4096 on local layers (every 2nd layer global), logits soft-cap 50, softmax scale
    /// 0.0625, no ALiBi, config dtype bf16`.
    pub fn summary(&self) -> String {
        let mut s = format!("{} query heads, ", self.num_q_heads);
        match self.mla {
            Some(m) => s.push_str(&format!(
                "MLA: kv_lora_rank {}, qk_rope_head_dim {}, qk_nope_head_dim {}, v_head_dim {} \
                 (one latent KV head of {} + {} = {} dims cached per token; query/key head dim {})",
                m.kv_lora_rank,
                m.qk_rope_head_dim,
                m.qk_nope_head_dim,
                m.v_head_dim,
                m.kv_lora_rank,
                m.qk_rope_head_dim,
                m.latent_dim(),
                m.qk_head_dim()
            )),
            None => {
                let kind = match (self.num_kv_heads, self.num_q_heads / self.num_kv_heads) {
                    (1, _) => "MQA".to_string(),
                    (_, 1) => "MHA".to_string(),
                    (_, g) => format!("GQA, {g} query heads per KV head"),
                };
                s.push_str(&format!("{} ({kind}), head dim {}", crate::text::count(self.num_kv_heads, "KV head"), self.head_dim));
            }
        }
        match (self.sliding_window, self.global_layer_every) {
            _ if self.layer_types.is_some() || self.chunk_size.is_some() => {}
            (None, _) => s.push_str(", no sliding window"),
            (Some(w), None) => s.push_str(&format!(", sliding window {w}")),
            (Some(w), Some(n)) => s.push_str(&format!(", sliding window {w} on local layers (every {}{} layer global)", n, ordinal_suffix(n))),
        }
        let groups = self.layer_groups();
        if self.layer_types.is_some() || self.chunk_size.is_some() {
            let parts: Vec<String> = groups.iter().map(|(k, ls)| format!("{k} on {}", crate::text::count(ls.len(), "layer"))).collect();
            s.push_str(&format!(", {}", parts.join(", ")));
        }
        if self.sinks {
            s.push_str(", attention sinks");
        }
        match self.softcap {
            Some(c) => s.push_str(&format!(", logits soft-cap {c}")),
            None => s.push_str(", no soft-cap"),
        }
        s.push_str(&format!(", softmax scale {}", self.scale));
        s.push_str(if self.alibi { ", ALiBi" } else { ", no ALiBi" });
        s.push_str(&format!(", config dtype {}", self.dtype));
        s
    }

    /// The [`AttnSpec`] of layer `layer` (from 0): as [`ModelConfig::attn_spec`], without the
    /// window on the global layers of models that interleave them.
    ///
    /// Example: Gemma-2 (`global_layer_every` 2): layers 0, 2, 4, ... have the 4096 window,
    /// layers 1, 3, 5, ... none.
    pub fn attn_spec_for_layer(&self, layer: usize) -> AttnSpec {
        let mut spec = self.attn_spec();
        (spec.sliding_window, spec.chunk_size) = match self.layer_kind(layer) {
            LayerKind::Full => (None, None),
            LayerKind::Sliding(w) => (Some(w), None),
            LayerKind::Chunked(c) => (None, Some(c)),
        };
        spec
    }

    /// Layer `layer`'s attention type (from 0): the config's list when it has one
    /// (`layer_types`; Llama 4's `no_rope_layers`); else chunked on every layer but each
    /// 4th for a chunked model (Llama 4's NoPE layers are global); else the window, but on
    /// every `global_layer_every`-th layer (Gemma-2, Gemma-3); else full.
    pub fn layer_kind(&self, layer: usize) -> LayerKind {
        if let Some(types) = self.layer_types.as_ref().filter(|t| !t.is_empty()) {
            return types[layer % types.len()];
        }
        if let Some(c) = self.chunk_size {
            return if (layer + 1) % LLAMA4_NOPE_EVERY == 0 { LayerKind::Full } else { LayerKind::Chunked(c) };
        }
        match self.sliding_window {
            Some(_) if self.global_layer_every.is_some_and(|n| (layer + 1) % n == 0) => LayerKind::Full,
            Some(w) => LayerKind::Sliding(w),
            None => LayerKind::Full,
        }
    }

    /// The model's distinct layer types, each with its layers (all `num_layers` of them;
    /// one layer 0 when the config gives no count), in order of first appearance.
    pub fn layer_groups(&self) -> Vec<(LayerKind, Vec<usize>)> {
        let n = self.num_layers.or(self.layer_types.as_ref().map(|t| t.len())).unwrap_or(1).max(1);
        let mut groups: Vec<(LayerKind, Vec<usize>)> = Vec::new();
        for layer in 0..n {
            let kind = self.layer_kind(layer);
            match groups.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, ls)) => ls.push(layer),
                None => groups.push((kind, vec![layer])),
            }
        }
        groups
    }

    /// The [`AttnSpec`] of the model's (local) layers, with the standard ALiBi slopes when the
    /// model uses ALiBi. For an MLA model this is the decompressed form (use
    /// [`ModelConfig::mla_spec`] for what the kernels compute).
    pub fn attn_spec(&self) -> AttnSpec {
        AttnSpec {
            num_q_heads: self.num_q_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            scale: self.scale,
            sliding_window: self.sliding_window,
            chunk_size: None,
            causal: true,
            sinks: if self.sinks { crate::spec::Sinks::Unset } else { crate::spec::Sinks::None },
            softcap: self.softcap,
            alibi_slopes: self.alibi.then(|| alibi_slopes(self.num_q_heads)),
            mla: self.mla_spec(),
        }
    }

    /// The absorbed-form MLA spec; `None` for an MHA/GQA/MQA model.
    pub fn mla_spec(&self) -> Option<MlaSpec> {
        self.mla.map(|m| MlaSpec {
            num_q_heads: self.num_q_heads,
            kv_lora_rank: m.kv_lora_rank,
            qk_rope_head_dim: m.qk_rope_head_dim,
            qk_nope_head_dim: m.qk_nope_head_dim,
            v_head_dim: m.v_head_dim,
            scale: self.scale,
        })
    }
}

/// 1 -> "st", 2 -> "nd", 3 -> "rd", 11 -> "th", 6 -> "th".
fn ordinal_suffix(n: usize) -> &'static str {
    match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    }
}

/// `.../Meta-Llama-3-8B/config.json` -> `Meta-Llama-3-8B`; `.../gemma.json` -> `gemma`.
fn model_name_for(path: &Path) -> String {
    let parent_dir = || path.parent().and_then(|p| p.file_name()).map(|s| s.to_string_lossy().into_owned());
    let stem = || path.file_stem().map(|s| s.to_string_lossy().into_owned());
    let named = if path.file_name().is_some_and(|f| f == "config.json") { parent_dir().or_else(stem) } else { stem() };
    named.unwrap_or_else(|| path.display().to_string())
}

/// Reads attention fields from one JSON object (the top level, or a multimodal wrapper's
/// `text_config`), naming the source and the field path in every error.
#[derive(Clone, Copy)]
struct Reader<'a> {
    origin: &'a str,
    obj: &'a Map<String, Value>,
    /// `"text_config."` when reading the nested text config, else empty.
    prefix: &'static str,
}

impl<'a> Reader<'a> {
    fn err(&self, detail: impl Into<String>) -> AttnError {
        AttnError::ModelConfig { path: self.origin.to_string(), detail: detail.into() }
    }

    fn field(&self, key: &str) -> String {
        format!("`{}{key}`", self.prefix)
    }

    /// The value of `key`; an explicit `null` counts as absent (configs write `"head_dim": null`).
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    /// The first of `keys` that is set, with the spelling that was found.
    fn first(&self, keys: &[&'static str]) -> Option<(&'static str, &'a Value)> {
        keys.iter().find_map(|k| self.get(k).map(|v| (*k, v)))
    }

    /// A count: a non-negative integer (`32`, or `32.0` as some exporters write it), at most
    /// `MAX_COUNT` (no attention dimension or window comes near it; bigger is a broken file).
    fn count(&self, key: &str, v: &Value) -> Result<usize> {
        let n = v.as_u64().or_else(|| v.as_f64().filter(|x| *x >= 0.0 && x.fract() == 0.0 && *x < 1e15).map(|x| x as u64));
        let n = n.ok_or_else(|| self.err(format!("{} is {v}, expected a non-negative integer", self.field(key))))?;
        if n > MAX_COUNT as u64 {
            return Err(self.err(format!("{} is {n}, larger than any real model's ({MAX_COUNT} at most)", self.field(key))));
        }
        Ok(n as usize)
    }

    /// `n` (read from `key`) if it is at most `max`, else an error naming the field and the limit.
    fn at_most(&self, key: &str, n: usize, max: usize, what: &str) -> Result<usize> {
        if n > max {
            return Err(self.err(format!(
                "{} is {n}, larger than any real model's: at most {max} {what} are accepted",
                self.field(key)
            )));
        }
        Ok(n)
    }

    fn opt_count(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|v| self.count(key, v)).transpose()
    }

    fn required_count(&self, key: &str, why: &str) -> Result<usize> {
        self.opt_count(key)?.ok_or_else(|| self.err(format!("{} is missing ({why})", self.field(key))))
    }

    fn opt_number(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.err(format!("{} is {v}, expected a number", self.field(key)))))
            .transpose()
    }

    /// A number that must be a positive normal `f32` (soft-caps, scales, factors): not zero,
    /// not negative, not so large it overflows `f32`, not so small it is subnormal there.
    fn opt_positive_f32(&self, key: &str) -> Result<Option<f64>> {
        let Some(x) = self.opt_number(key)? else { return Ok(None) };
        if !(x > 0.0) {
            return Err(self.err(format!("{} is {x}, expected a positive number", self.field(key))));
        }
        self.f32_representable(key, x)?;
        Ok(Some(x))
    }

    /// A number that must be a finite `f32`, and if not zero, a normal one.
    fn opt_finite_f32(&self, key: &str) -> Result<Option<f64>> {
        let Some(x) = self.opt_number(key)? else { return Ok(None) };
        if x != 0.0 {
            self.f32_representable(key, x)?;
        }
        Ok(Some(x))
    }

    /// `x` (non-zero) survives the conversion to `f32`: neither infinite nor zero/subnormal.
    fn f32_representable(&self, key: &str, x: f64) -> Result<()> {
        let y = x as f32;
        if !y.is_finite() {
            return Err(self.err(format!(
                "{} is {x:e}, which overflows f32 (largest magnitude {:e})",
                self.field(key),
                f32::MAX
            )));
        }
        if !y.is_normal() {
            return Err(self.err(format!(
                "{} is {x:e}, which is zero or subnormal as an f32 (smallest normal magnitude {:e})",
                self.field(key),
                f32::MIN_POSITIVE
            )));
        }
        Ok(())
    }

    /// A boolean flag; absent or null is false.
    fn flag(&self, key: &str) -> Result<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(v) => v.as_bool().ok_or_else(|| self.err(format!("{} is {v}, expected true or false", self.field(key)))),
        }
    }

    fn nested(&self, key: &str, prefix: &'static str) -> Result<Option<Reader<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(obj)) => Ok(Some(Reader { origin: self.origin, obj, prefix })),
            Some(v) => Err(self.err(format!("{} is {v}, expected an object", self.field(key)))),
        }
    }
}

/// A JSON value read as `serde_json::Value` is, except that an object naming a key twice is
/// an error naming the key (serde_json keeps the last one silently).
struct StrictJson(Value);

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(StrictJson(x)) = seq.next_element()? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if m.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("the key `{key}` appears twice in one object")));
            }
            let StrictJson(value) = map.next_value()?;
            m.insert(key, value);
        }
        Ok(Value::Object(m))
    }
}

fn parse(name: &str, origin: &str, json: &str) -> Result<ModelConfig> {
    let err = |detail: String| AttnError::ModelConfig { path: origin.to_string(), detail };
    let value = serde_json::from_str::<StrictJson>(json).map_err(|e| err(format!("not valid JSON: {e}")))?.0;
    let Value::Object(root_obj) = &value else {
        return Err(err(format!("expected a JSON object at the top level, found {}", json_kind(&value))));
    };
    let root = Reader { origin, obj: root_obj, prefix: "" };

    // Multimodal wrappers (Llava, Mllama, Gemma-3, ...) keep the language model's numbers in
    // `text_config`. Read from it only when the top level has no head count of its own: some
    // wrappers (Qwen2-VL) flatten everything to the top level and keep a stub `text_config`.
    let cfg = match root.nested("text_config", "text_config.")? {
        Some(text) if root.first(Q_HEAD_KEYS).is_none() => text,
        _ => root,
    };

    let dtype = parse_dtype(&cfg, &root)?;
    let (q_key, num_q_heads) = match cfg.first(Q_HEAD_KEYS) {
        Some((k, v)) => (k, cfg.count(k, v)?),
        None => {
            return Err(cfg.err(format!(
                "no attention head count: none of {} is set",
                list_fields(cfg.prefix, Q_HEAD_KEYS)
            )));
        }
    };
    if num_q_heads == 0 {
        return Err(cfg.err(format!("{} is 0; a model needs at least one attention head", cfg.field(q_key))));
    }
    cfg.at_most(q_key, num_q_heads, MAX_Q_HEADS, "query heads")?;

    let (kv_key, num_kv_heads) = parse_kv_heads(&cfg, num_q_heads)?;
    if num_kv_heads == 0 {
        return Err(cfg.err(format!("{} is 0; a model needs at least one KV head", cfg.field(kv_key))));
    }
    if num_q_heads % num_kv_heads != 0 {
        return Err(cfg.err(format!(
            "{} {num_q_heads} is not a multiple of {} {num_kv_heads}; every KV head must serve the same number of query heads",
            cfg.field(q_key),
            cfg.field(kv_key)
        )));
    }

    let mla = parse_mla(&cfg)?;
    let head_dim = match mla {
        Some(m) => m.qk_head_dim(),
        None => parse_head_dim(&cfg, q_key, num_q_heads)?,
    };

    let sliding_window = parse_sliding_window(&cfg)?;
    let softcap = cfg.opt_positive_f32("attn_logit_softcapping")?.map(|c| c as f32);
    // Gemma-2's soft-cap of the final logits is not attention's business, but a value no f32
    // can hold marks a broken file: say so here, naming the field, rather than never.
    cfg.opt_positive_f32("final_logit_softcapping")?;
    let alibi = parse_alibi(&cfg)?;
    let scale = parse_scale(&cfg, head_dim, mla)?;
    let global_layer_every = match (sliding_window, cfg.opt_count("sliding_window_pattern")?) {
        (None, _) => None,
        (Some(_), Some(0 | 1)) => None,
        (Some(_), Some(n)) => Some(n),
        // Gemma-2 alternates; Gemma-3's configs may leave out their pattern of 6.
        (Some(_), None) => match cfg.get("model_type").and_then(Value::as_str) {
            Some("gemma2") => Some(2),
            Some("gemma3" | "gemma3_text") => Some(6),
            _ => None,
        },
    };

    let num_layers = match cfg.first(&["num_hidden_layers", "n_layer", "num_layers"]) {
        Some((k, v)) => Some(cfg.at_most(k, cfg.count(k, v)?, MAX_LAYERS, "layers")?),
        None => None,
    };
    let chunk_size = match cfg.opt_count("attention_chunk_size")? {
        Some(0) => return Err(cfg.err(format!("{} is 0, which would hide every key (use null for no chunks)", cfg.field("attention_chunk_size")))),
        c => c,
    };
    let layer_types = parse_layer_types(&cfg, sliding_window, chunk_size, num_layers)?;
    // gpt-oss: a learned sink logit per query head in every layer (its `sinks` weights).
    let sinks = cfg.get("model_type").and_then(Value::as_str).is_some_and(|t| t == "gpt_oss");

    let model = ModelConfig {
        name: name.to_string(),
        num_q_heads,
        num_kv_heads,
        head_dim,
        dtype,
        sliding_window,
        global_layer_every,
        softcap,
        alibi,
        scale,
        mla,
        num_layers,
        chunk_size,
        layer_types,
        sinks,
    };
    // Everything a multi-head backend relies on holds by construction; a failure here is a
    // parser bug, reported against the file rather than later against nothing. (An MLA
    // model's dims and scale were checked above; its decompressed spec is not what runs.)
    if !model.is_mla() {
        // (A sink model's spec waits for the checkpoint's sink values: checked without them.)
        if let Err(e) = (AttnSpec { sinks: crate::spec::Sinks::None, ..model.attn_spec() }).validate() {
            return Err(cfg.err(e.to_string()));
        }
    }
    tracing::debug!(?model, "parsed model config from {origin}");
    Ok(model)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn list_fields(prefix: &str, keys: &[&str]) -> String {
    keys.iter().map(|k| format!("`{prefix}{k}`")).collect::<Vec<_>>().join(", ")
}

/// `dtype` (transformers >= 4.56) or `torch_dtype`; the nested config first, then the top
/// level (wrappers often put it only there); bf16 when neither says.
fn parse_dtype(cfg: &Reader<'_>, root: &Reader<'_>) -> Result<DType> {
    for r in [cfg, root] {
        if let Some((key, v)) = r.first(&["dtype", "torch_dtype"]) {
            let s = v.as_str().ok_or_else(|| r.err(format!("{} is {v}, expected a string such as \"bfloat16\"", r.field(key))))?;
            return DType::parse(s).ok_or_else(|| {
                r.err(format!("{} is \"{s}\", which is not one of float16, bfloat16, float32", r.field(key)))
            });
        }
    }
    Ok(DType::Bf16)
}

/// KV heads, and the field they came from (for errors).
///
/// Falcon's rule: with `new_decoder_architecture` the count is `num_kv_heads`; otherwise
/// `multi_query: true` means one KV head (Falcon-7B, GPT-BigCode) whatever else is set.
/// Everyone else: the first KV-head spelling, or as many KV heads as query heads (MHA).
fn parse_kv_heads(cfg: &Reader<'_>, num_q_heads: usize) -> Result<(&'static str, usize)> {
    if !cfg.flag("new_decoder_architecture")? && cfg.flag("multi_query")? {
        return Ok(("multi_query", 1));
    }
    // ChatGLM: `multi_query_attention: true` with `multi_query_group_num` KV heads.
    if cfg.flag("multi_query_attention")? {
        if let Some(n) = cfg.opt_count("multi_query_group_num")? {
            return Ok(("multi_query_group_num", n));
        }
    }
    // MPT: `attn_config.kv_n_heads` (absent: MHA).
    if let Some(attn) = cfg.nested("attn_config", "attn_config.")? {
        if let Some(n) = attn.opt_count("kv_n_heads")? {
            return Ok(("attn_config.kv_n_heads", n));
        }
    }
    match cfg.first(KV_HEAD_KEYS) {
        Some((k, v)) => Ok((k, cfg.count(k, v)?)),
        None => Ok(("num_key_value_heads", num_q_heads)),
    }
}

/// An explicit `head_dim` (Gemma: 256, although 3584 / 16 = 224), else hidden / heads.
fn parse_head_dim(cfg: &Reader<'_>, q_key: &str, num_q_heads: usize) -> Result<usize> {
    if let Some(d) = cfg.opt_count("head_dim")? {
        if d == 0 {
            return Err(cfg.err(format!("{} is 0", cfg.field("head_dim"))));
        }
        return cfg.at_most("head_dim", d, MAX_HEAD_DIM, "dims per head");
    }
    let Some((h_key, v)) = cfg.first(HIDDEN_KEYS) else {
        return Err(cfg.err(format!(
            "cannot derive the head dim: `{}head_dim` is not set and none of {} is",
            cfg.prefix,
            list_fields(cfg.prefix, HIDDEN_KEYS)
        )));
    };
    let hidden = cfg.count(h_key, v)?;
    if hidden == 0 || hidden % num_q_heads != 0 {
        return Err(cfg.err(format!(
            "{} {hidden} is not a positive multiple of {} {num_q_heads}, so the head dim is undefined (set `head_dim`)",
            cfg.field(h_key),
            cfg.field(q_key)
        )));
    }
    let head_dim = hidden / num_q_heads;
    if head_dim > MAX_HEAD_DIM {
        return Err(cfg.err(format!(
            "{} {hidden} / {} {num_q_heads} gives head dim {head_dim}, larger than any real model's: at most {MAX_HEAD_DIM} dims per head are accepted",
            cfg.field(h_key),
            cfg.field(q_key)
        )));
    }
    Ok(head_dim)
}

/// MLA when `kv_lora_rank` is set; then the other three dims are required.
fn parse_mla(cfg: &Reader<'_>) -> Result<Option<MlaDims>> {
    let Some(kv_lora_rank) = cfg.opt_count("kv_lora_rank")? else { return Ok(None) };
    let why = "MLA models (`kv_lora_rank` is set) need it";
    let dims = MlaDims {
        kv_lora_rank,
        qk_rope_head_dim: cfg.required_count("qk_rope_head_dim", why)?,
        qk_nope_head_dim: cfg.required_count("qk_nope_head_dim", why)?,
        v_head_dim: cfg.required_count("v_head_dim", why)?,
    };
    for (key, n) in [
        ("kv_lora_rank", dims.kv_lora_rank),
        ("qk_rope_head_dim", dims.qk_rope_head_dim),
        ("qk_nope_head_dim", dims.qk_nope_head_dim),
        ("v_head_dim", dims.v_head_dim),
    ] {
        if n == 0 {
            return Err(cfg.err(format!("{} is 0", cfg.field(key))));
        }
        if key == "kv_lora_rank" {
            cfg.at_most(key, n, MAX_KV_LORA_RANK, "latent dims")?;
        } else {
            cfg.at_most(key, n, MAX_HEAD_DIM, "dims per head")?;
        }
    }
    if dims.qk_head_dim() > MAX_HEAD_DIM {
        return Err(cfg.err(format!(
            "{} {} + {} {} is {}, larger than any real model's: at most {MAX_HEAD_DIM} query/key dims per head are accepted",
            cfg.field("qk_nope_head_dim"),
            dims.qk_nope_head_dim,
            cfg.field("qk_rope_head_dim"),
            dims.qk_rope_head_dim,
            dims.qk_head_dim()
        )));
    }
    Ok(Some(dims))
}

/// `sliding_window` (or Gemma's duplicate `sliding_window_size`); null means none, and so
/// does Qwen2's `use_sliding_window: false` (Qwen2 configs carry a window they do not use).
fn parse_sliding_window(cfg: &Reader<'_>) -> Result<Option<usize>> {
    if cfg.get("use_sliding_window").is_some() && !cfg.flag("use_sliding_window")? {
        return Ok(None);
    }
    let Some((key, v)) = cfg.first(&["sliding_window", "sliding_window_size"]) else { return Ok(None) };
    match cfg.count(key, v)? {
        0 => Err(cfg.err(format!("{} is 0, which would hide every key (use null for no window)", cfg.field(key)))),
        w => Ok(Some(w)),
    }
}

/// Llama 4: every 4th layer (`no_rope_layer_interval`) is a NoPE layer with global
/// attention; the others are chunked (vLLM: `use_chunked_local_attn = not nope`).
const LLAMA4_NOPE_EVERY: usize = 4;

/// Each layer's attention type, where the config lists them: `layer_types` (gpt-oss,
/// Gemma-3, Qwen3: `"full_attention"`, `"sliding_attention"`, `"chunked_attention"`), or
/// Llama 4's `no_rope_layers` (1: rotary, hence chunked; 0: NoPE, full). A type that needs a
/// window or chunk the config lacks, or a list longer than the layers, is an error.
fn parse_layer_types(cfg: &Reader<'_>, window: Option<usize>, chunk: Option<usize>, num_layers: Option<usize>) -> Result<Option<Vec<LayerKind>>> {
    let list = |key: &str| -> Result<Option<&Vec<Value>>> {
        match cfg.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(cfg.err(format!("{} must be a list, found {}", cfg.field(key), json_kind(v)))),
        }
    };
    let mut kinds = Vec::new();
    let key = if let Some(types) = list("layer_types")? {
        for (i, t) in types.iter().enumerate() {
            let kind = match t.as_str() {
                Some("full_attention") => LayerKind::Full,
                Some("sliding_attention") => LayerKind::Sliding(window.ok_or_else(|| {
                    cfg.err(format!("{}[{i}] is sliding_attention but the config has no sliding_window", cfg.field("layer_types")))
                })?),
                Some("chunked_attention") => LayerKind::Chunked(chunk.ok_or_else(|| {
                    cfg.err(format!("{}[{i}] is chunked_attention but the config has no attention_chunk_size", cfg.field("layer_types")))
                })?),
                _ => {
                    return Err(cfg.err(format!(
                        "{}[{i}] is {t}: expected \"full_attention\", \"sliding_attention\" or \"chunked_attention\"",
                        cfg.field("layer_types")
                    )));
                }
            };
            kinds.push(kind);
        }
        "layer_types"
    } else if let (Some(c), Some(nope)) = (chunk, list("no_rope_layers")?) {
        for (i, x) in nope.iter().enumerate() {
            kinds.push(match x.as_u64() {
                Some(1) => LayerKind::Chunked(c),
                Some(0) => LayerKind::Full,
                _ => return Err(cfg.err(format!("{}[{i}] is {x}: expected 0 (NoPE, global) or 1 (rotary, chunked)", cfg.field("no_rope_layers")))),
            });
        }
        "no_rope_layers"
    } else {
        return Ok(None);
    };
    if kinds.is_empty() {
        return Ok(None);
    }
    if let Some(n) = num_layers.filter(|&n| n != kinds.len()) {
        return Err(cfg.err(format!("{} lists {} layers, the model has {n}", cfg.field(key), kinds.len())));
    }
    Ok(Some(kinds))
}

/// ALiBi, in each family's words: Falcon `alibi: true`, MPT `attn_config.alibi: true`,
/// BLOOM always (its config has no flag), and `position_embedding_type: "alibi"`.
fn parse_alibi(cfg: &Reader<'_>) -> Result<bool> {
    if cfg.flag("alibi")? {
        return Ok(true);
    }
    if let Some(attn) = cfg.nested("attn_config", "attn_config.")? {
        if attn.flag("alibi")? {
            return Ok(true);
        }
    }
    let is = |key: &str, want: &str| cfg.get(key).and_then(Value::as_str).is_some_and(|s| s.eq_ignore_ascii_case(want));
    Ok(is("model_type", "bloom") || is("position_embedding_type", "alibi"))
}

/// The softmax scale; see [`ModelConfig::scale`].
///
/// Every input must be a number `f32` can hold (see [`Reader::opt_positive_f32`]), and so
/// must the scale they give; errors name the fields it came from.
fn parse_scale(cfg: &Reader<'_>, head_dim: usize, mla: Option<MlaDims>) -> Result<f32> {
    let (scale, from) = if let Some(m) = mla {
        match cfg.nested("rope_scaling", "rope_scaling.")? {
            Some(rs) => {
                let factor = rs.opt_positive_f32("factor")?.unwrap_or(1.0);
                let mscale_all_dim = rs.opt_finite_f32("mscale_all_dim")?.unwrap_or(0.0);
                let mscale = yarn_mscale(factor, mscale_all_dim);
                let from = format!(
                    "from {} {factor} and {} {mscale_all_dim} (YaRN mscale^2 / sqrt({}))",
                    rs.field("factor"),
                    rs.field("mscale_all_dim"),
                    m.qk_head_dim()
                );
                (mscale * mscale / (m.qk_head_dim() as f64).sqrt(), from)
            }
            None => (1.0 / (m.qk_head_dim() as f64).sqrt(), String::new()),
        }
    } else if let Some(q) = cfg.opt_positive_f32("query_pre_attn_scalar")? {
        (1.0 / q.sqrt(), format!("from {} {q}", cfg.field("query_pre_attn_scalar")))
    } else if let Some(s) = cfg.nested("attn_config", "attn_config.")?.map(|a| a.opt_positive_f32("softmax_scale")).transpose()?.flatten() {
        (s, String::new())
    } else {
        (1.0 / (head_dim as f64).sqrt(), String::new())
    };
    let s = scale as f32;
    if !(s.is_normal() && s > 0.0) {
        return Err(cfg.err(format!("the softmax scale {from} is {scale:e}, which is not a positive normal f32")));
    }
    Ok(s)
}

/// DeepSeek's YaRN attention-temperature correction: the softmax scale is multiplied by
/// `mscale^2`. `mscale = 0.1 * mscale_all_dim * ln(factor) + 1` for `factor > 1`, else 1.
///
/// Worked example, DeepSeek-V3 (`factor` 40, `mscale_all_dim` 1.0):
/// `0.1 * ln 40 + 1 = 1.36889`, so the scale is `1.87385 / sqrt(192) = 0.13523`.
fn yarn_mscale(factor: f64, mscale_all_dim: f64) -> f64 {
    if factor <= 1.0 { 1.0 } else { 0.1 * mscale_all_dim * factor.ln() + 1.0 }
}

// ---------------------------------------------------------------------------------------
// Presets: the attention-relevant fields of real `config.json` files, verbatim in their
// naming. Dtypes are the ones the models are served in.

const LLAMA_3_8B: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 8192,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "vocab_size": 128256
}"#;

const MISTRAL_7B: &str = r#"{
  "architectures": ["MistralForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "vocab_size": 32000
}"#;

const GEMMA_2_9B: &str = r#"{
  "architectures": ["Gemma2ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "attn_logit_softcapping": 50.0,
  "bos_token_id": 2,
  "cache_implementation": "hybrid",
  "eos_token_id": 1,
  "final_logit_softcapping": 30.0,
  "head_dim": 256,
  "hidden_act": "gelu_pytorch_tanh",
  "hidden_activation": "gelu_pytorch_tanh",
  "hidden_size": 3584,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 8192,
  "model_type": "gemma2",
  "num_attention_heads": 16,
  "num_hidden_layers": 42,
  "num_key_value_heads": 8,
  "pad_token_id": 0,
  "query_pre_attn_scalar": 256,
  "rms_norm_eps": 1e-06,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "sliding_window_size": 4096,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "vocab_size": 256000
}"#;

const DEEPSEEK_V3: &str = r#"{
  "architectures": ["DeepseekV3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "first_k_dense_replace": 3,
  "hidden_act": "silu",
  "hidden_size": 7168,
  "intermediate_size": 18432,
  "kv_lora_rank": 512,
  "max_position_embeddings": 163840,
  "model_type": "deepseek_v3",
  "moe_intermediate_size": 2048,
  "n_group": 8,
  "n_routed_experts": 256,
  "n_shared_experts": 1,
  "num_attention_heads": 128,
  "num_experts_per_tok": 8,
  "num_hidden_layers": 61,
  "num_key_value_heads": 128,
  "num_nextn_predict_layers": 1,
  "q_lora_rank": 1536,
  "qk_nope_head_dim": 128,
  "qk_rope_head_dim": 64,
  "rms_norm_eps": 1e-06,
  "rope_scaling": {
    "beta_fast": 32,
    "beta_slow": 1,
    "factor": 40,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "original_max_position_embeddings": 4096,
    "type": "yarn"
  },
  "rope_theta": 10000,
  "routed_scaling_factor": 2.5,
  "scoring_func": "sigmoid",
  "tie_word_embeddings": false,
  "topk_group": 4,
  "topk_method": "noaux_tc",
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "v_head_dim": 128,
  "vocab_size": 129280
}"#;

const PHI_3_MINI: &str = r#"{
  "architectures": ["Phi3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "embd_pdrop": 0.0,
  "eos_token_id": 32000,
  "hidden_act": "silu",
  "hidden_size": 3072,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 4096,
  "model_type": "phi3",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 32,
  "original_max_position_embeddings": 4096,
  "pad_token_id": 32000,
  "resid_pdrop": 0.0,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 10000.0,
  "sliding_window": 2047,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "vocab_size": 32064
}"#;

/// BLOOM's config predates `torch_dtype` and ALiBi flags: ALiBi is implied by the model type.
const BLOOM_7B1: &str = r#"{
  "apply_residual_connection_post_layernorm": false,
  "architectures": ["BloomForCausalLM"],
  "attention_dropout": 0.0,
  "attention_softmax_in_fp32": true,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_dropout": 0.0,
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "masked_softmax_fusion": true,
  "model_type": "bloom",
  "n_head": 32,
  "n_layer": 30,
  "offset_alibi": 100,
  "pad_token_id": 3,
  "pretraining_tp": 1,
  "skip_bias_add": true,
  "skip_bias_add_qkv": false,
  "slow_but_exact": false,
  "unk_token_id": 0,
  "use_cache": true,
  "vocab_size": 250880
}"#;

/// Falcon-7B in its original RefinedWeb naming: 71 heads (4544 / 71 = 64), multi-query.
const FALCON_7B: &str = r#"{
  "alibi": false,
  "apply_residual_connection_post_layernorm": false,
  "architectures": ["RWForCausalLM"],
  "attention_dropout": 0.0,
  "bias": false,
  "bos_token_id": 11,
  "eos_token_id": 11,
  "hidden_dropout": 0.0,
  "hidden_size": 4544,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "model_type": "RefinedWebModel",
  "multi_query": true,
  "n_head": 71,
  "n_layer": 32,
  "parallel_attn": true,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "vocab_size": 65024
}"#;

const MPT_7B: &str = r#"{
  "architectures": ["MPTForCausalLM"],
  "attn_config": {
    "alibi": true,
    "alibi_bias_max": 8,
    "attn_impl": "torch",
    "attn_pdrop": 0,
    "attn_type": "multihead_attention",
    "attn_uses_sequence_id": false,
    "clip_qkv": null,
    "prefix_lm": false,
    "qk_ln": false,
    "softmax_scale": null
  },
  "d_model": 4096,
  "emb_pdrop": 0,
  "embedding_fraction": 1.0,
  "expansion_ratio": 4,
  "learned_pos_emb": true,
  "logit_scale": null,
  "max_seq_len": 2048,
  "model_type": "mpt",
  "n_heads": 32,
  "n_layers": 32,
  "no_bias": true,
  "norm_type": "low_precision_layernorm",
  "resid_pdrop": 0,
  "torch_dtype": "bfloat16",
  "use_cache": false,
  "vocab_size": 50432
}"#;

/// Every preset: its name (lower case) and its `config.json` text.
const GPT_OSS_20B: &str = r#"{
  "architectures": ["GptOssForCausalLM"],
  "attention_bias": true,
  "attention_dropout": 0.0,
  "eos_token_id": 200002,
  "experts_per_token": 4,
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2880,
  "initial_context_length": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 2880,
  "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention"],
  "max_position_embeddings": 131072,
  "model_type": "gpt_oss",
  "num_attention_heads": 64,
  "num_experts_per_tok": 4,
  "num_hidden_layers": 24,
  "num_key_value_heads": 8,
  "num_local_experts": 32,
  "output_router_logits": false,
  "pad_token_id": 199999,
  "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"},
  "rms_norm_eps": 1e-05,
  "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": false},
  "rope_theta": 150000,
  "router_aux_loss_coef": 0.9,
  "sliding_window": 128,
  "swiglu_limit": 7.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.55.0.dev0",
  "use_cache": true,
  "vocab_size": 201088
}"#;

const GPT_OSS_120B: &str = r#"{
  "architectures": ["GptOssForCausalLM"],
  "attention_bias": true,
  "attention_dropout": 0.0,
  "eos_token_id": 200002,
  "experts_per_token": 4,
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2880,
  "initial_context_length": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 2880,
  "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention"],
  "max_position_embeddings": 131072,
  "model_type": "gpt_oss",
  "num_attention_heads": 64,
  "num_experts_per_tok": 4,
  "num_hidden_layers": 36,
  "num_key_value_heads": 8,
  "num_local_experts": 128,
  "output_router_logits": false,
  "pad_token_id": 199999,
  "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"},
  "rms_norm_eps": 1e-05,
  "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": false},
  "rope_theta": 150000,
  "router_aux_loss_coef": 0.9,
  "sliding_window": 128,
  "swiglu_limit": 7.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.55.0.dev0",
  "use_cache": true,
  "vocab_size": 201088
}"#;

const LLAMA_4_SCOUT: &str = r#"{
  "architectures": ["Llama4ForConditionalGeneration"],
  "boi_token_index": 200080,
  "eoi_token_index": 200081,
  "image_token_index": 200092,
  "model_type": "llama4",
  "text_config": {
    "attention_bias": false,
    "attention_chunk_size": 8192,
    "attention_dropout": 0.0,
    "attn_scale": 0.1,
    "attn_temperature_tuning": true,
    "bos_token_id": 200000,
    "eos_token_id": [200001, 200007, 200008],
    "floor_scale": 8192,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 5120,
    "initializer_range": 0.02,
    "interleave_moe_layer_step": 1,
    "intermediate_size": 8192,
    "intermediate_size_mlp": 16384,
    "max_position_embeddings": 10485760,
    "model_type": "llama4_text",
    "no_rope_layers": [],
    "num_attention_heads": 40,
    "num_experts_per_tok": 1,
    "num_hidden_layers": 48,
    "num_key_value_heads": 8,
    "num_local_experts": 16,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 16.0, "high_freq_factor": 1.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0,
    "torch_dtype": "bfloat16",
    "use_qk_norm": true,
    "vocab_size": 202048
  },
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0.dev0",
  "vision_config": {
    "hidden_size": 1408,
    "image_size": 336,
    "model_type": "llama4_vision_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 34,
    "patch_size": 14
  }
}"#;

const GEMMA_3_27B: &str = r#"{
  "architectures": ["Gemma3ForConditionalGeneration"],
  "boi_token_index": 255999,
  "eoi_token_index": 256000,
  "eos_token_id": [1, 106],
  "image_token_index": 262144,
  "initializer_range": 0.02,
  "mm_tokens_per_image": 256,
  "model_type": "gemma3",
  "text_config": {
    "head_dim": 128,
    "hidden_size": 5376,
    "intermediate_size": 21504,
    "model_type": "gemma3_text",
    "num_attention_heads": 32,
    "num_hidden_layers": 62,
    "num_key_value_heads": 16,
    "query_pre_attn_scalar": 168,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
    "sliding_window": 1024
  },
  "torch_dtype": "bfloat16",
  "transformers_version": "4.50.0.dev0",
  "vision_config": {
    "hidden_size": 1152,
    "image_size": 896,
    "intermediate_size": 4304,
    "model_type": "siglip_vision_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 27,
    "patch_size": 14,
    "vision_use_head": false
  }
}"#;

const QWEN3_32B: &str = r#"{
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 5120,
  "initializer_range": 0.02,
  "intermediate_size": 25600,
  "max_position_embeddings": 40960,
  "max_window_layers": 64,
  "model_type": "qwen3",
  "num_attention_heads": 64,
  "num_hidden_layers": 64,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}"#;

const PRESETS: &[(&str, &str)] = &[
    ("llama-3-8b", LLAMA_3_8B),
    ("mistral-7b", MISTRAL_7B),
    ("gemma-2-9b", GEMMA_2_9B),
    ("deepseek-v3", DEEPSEEK_V3),
    ("phi-3-mini", PHI_3_MINI),
    ("bloom-7b1", BLOOM_7B1),
    ("falcon-7b", FALCON_7B),
    ("mpt-7b", MPT_7B),
    ("gpt-oss-20b", GPT_OSS_20B),
    ("gpt-oss-120b", GPT_OSS_120B),
    ("llama-4-scout", LLAMA_4_SCOUT),
    ("gemma-3-27b", GEMMA_3_27B),
    ("qwen3-32b", QWEN3_32B),
];

/// Names of the built-in presets, in a stable order.
pub fn preset_names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| PRESETS.iter().map(|(n, _)| *n).collect())
}

/// A built-in model, by name (case-insensitive): `preset("Llama-3-8B")`.
pub fn preset(name: &str) -> Result<ModelConfig> {
    let wanted = name.trim();
    match PRESETS.iter().find(|(n, _)| n.eq_ignore_ascii_case(wanted)) {
        Some((n, json)) => parse(n, &format!("preset {n}"), json),
        None => Err(AttnError::UnknownPreset { name: name.to_string(), valid: preset_names().join(", ") }),
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn the_models_people_serve_now_read_as_their_configs_say() {
        // gpt-oss: sinks on every layer, a 128 window on the even layers, full on the odd.
        for (name, layers) in [("gpt-oss-20b", 24), ("gpt-oss-120b", 36)] {
            let m = preset(name).unwrap();
            assert_eq!((m.num_q_heads, m.num_kv_heads, m.head_dim, m.num_layers, m.sinks), (64, 8, 64, Some(layers), true));
            assert!((m.scale - 0.125).abs() < 1e-7, "{}", m.scale);
            assert_eq!((m.layer_kind(0), m.layer_kind(1), m.layer_kind(layers - 1)), (LayerKind::Sliding(128), LayerKind::Full, LayerKind::Full));
            let g = m.layer_groups();
            assert_eq!(g.len(), 2);
            assert_eq!((g[0].1.len(), g[1].1.len()), (layers / 2, layers / 2));
            let spec = m.attn_spec_for_layer(0);
            assert_eq!((spec.sliding_window, spec.chunk_size), (Some(128), None));
            // The config marks the sinks; the checkpoint gives them: no layer runs without.
            assert_eq!(spec.sinks, crate::spec::Sinks::Unset);
            assert!(spec.validate().unwrap_err().to_string().contains("with_sinks"));
            assert!(spec.with_sinks(vec![0.5; 64]).validate().is_ok());
        }
        // Llama 4 Scout: text_config; chunks of 8192 on three layers of four, every 4th global.
        let m = preset("llama-4-scout").unwrap();
        assert_eq!((m.num_q_heads, m.num_kv_heads, m.head_dim, m.num_layers, m.chunk_size, m.sinks), (40, 8, 128, Some(48), Some(8192), false));
        assert_eq!((0..8).map(|l| m.layer_kind(l)).collect::<Vec<_>>(), [
            LayerKind::Chunked(8192), LayerKind::Chunked(8192), LayerKind::Chunked(8192), LayerKind::Full,
            LayerKind::Chunked(8192), LayerKind::Chunked(8192), LayerKind::Chunked(8192), LayerKind::Full,
        ]);
        assert_eq!(m.layer_groups().iter().map(|(k, l)| (*k, l.len())).collect::<Vec<_>>(), [(LayerKind::Chunked(8192), 36), (LayerKind::Full, 12)]);
        assert_eq!(m.attn_spec_for_layer(0).chunk_size, Some(8192));
        // Gemma 3 27B: text_config, query_pre_attn_scalar 168, window 1024 on 5 of every 6.
        let m = preset("gemma-3-27b").unwrap();
        assert_eq!((m.num_q_heads, m.num_kv_heads, m.head_dim, m.num_layers), (32, 16, 128, Some(62)));
        assert!((m.scale as f64 - 168f64.powf(-0.5)).abs() < 1e-7, "{}", m.scale);
        assert_eq!((m.layer_kind(4), m.layer_kind(5), m.layer_kind(6)), (LayerKind::Sliding(1024), LayerKind::Full, LayerKind::Sliding(1024)));
        assert_eq!(m.layer_groups().iter().map(|(k, l)| (*k, l.len())).collect::<Vec<_>>(), [(LayerKind::Sliding(1024), 52), (LayerKind::Full, 10)]);
        // Qwen3 32B: full attention everywhere (its unused window is off).
        let m = preset("qwen3-32b").unwrap();
        assert_eq!((m.num_q_heads, m.num_kv_heads, m.head_dim, m.sliding_window, m.chunk_size, m.sinks), (64, 8, 128, None, None, false));
        assert_eq!(m.layer_groups(), vec![(LayerKind::Full, (0..64).collect())]);
    }

    #[test]
    fn layer_type_lists_are_checked() {
        let parse_err = |j: &str| ModelConfig::from_json_str("t", j).unwrap_err().to_string();
        let parse_ok = |j: &str| ModelConfig::from_json_str("t", j).unwrap();
        let e = parse_err(r#"{"num_attention_heads": 8, "hidden_size": 512, "layer_types": ["full_attention", "sliding_attention"]}"#);
        assert!(e.contains("layer_types`[1]") && e.contains("no sliding_window"), "{e}");
        let e = parse_err(r#"{"num_attention_heads": 8, "hidden_size": 512, "layer_types": ["local"]}"#);
        assert!(e.contains("layer_types`[0] is \"local\""), "{e}");
        let e = parse_err(r#"{"num_attention_heads": 8, "hidden_size": 512, "num_hidden_layers": 3, "layer_types": ["full_attention"]}"#);
        assert!(e.contains("lists 1 layers, the model has 3"), "{e}");
        let e = parse_err(r#"{"num_attention_heads": 8, "hidden_size": 512, "num_hidden_layers": 16000000}"#);
        assert!(e.contains("num_hidden_layers") && e.contains("at most 1024 layers"), "{e}");
        let e = parse_err(r#"{"num_attention_heads": 8, "hidden_size": 512, "attention_chunk_size": 0}"#);
        assert!(e.contains("attention_chunk_size"), "{e}");
        // Llama 4's explicit NoPE list: 1 = rotary (chunked), 0 = global.
        let m = parse_ok(r#"{"num_attention_heads": 8, "hidden_size": 512, "attention_chunk_size": 64, "no_rope_layers": [1, 0, 1]}"#);
        assert_eq!((m.layer_kind(0), m.layer_kind(1), m.layer_kind(2)), (LayerKind::Chunked(64), LayerKind::Full, LayerKind::Chunked(64)));
    }

    #[test]
    fn gemma2_interleaves_local_and_global_layers() {
        let g = preset("gemma-2-9b").unwrap();
        assert_eq!(g.global_layer_every, Some(2));
        assert_eq!(g.attn_spec_for_layer(0).sliding_window, Some(4096));
        assert_eq!(g.attn_spec_for_layer(1).sliding_window, None);
        let m = preset("mistral-7b").unwrap();
        assert_eq!(m.attn_spec_for_layer(1).sliding_window, Some(4096));
        let g3 = ModelConfig::from_json_str("g3", r#"{"num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "sliding_window": 1024, "sliding_window_pattern": 6}"#).unwrap();
        assert_eq!((g3.attn_spec_for_layer(4).sliding_window, g3.attn_spec_for_layer(5).sliding_window), (Some(1024), None));
    }

    #[test]
    fn chatglm_and_mpt_kv_heads() {
        let glm = ModelConfig::from_json_str("glm", r#"{"num_attention_heads": 32, "hidden_size": 4096, "multi_query_attention": true, "multi_query_group_num": 2}"#).unwrap();
        assert_eq!((glm.num_kv_heads, glm.head_dim), (2, 128));
        let mpt = ModelConfig::from_json_str("mpt", r#"{"n_heads": 32, "d_model": 4096, "attn_config": {"kv_n_heads": 8}}"#).unwrap();
        assert_eq!(mpt.num_kv_heads, 8);
    }

    #[test]
    fn absurd_counts_are_errors_not_panics() {
        let e = ModelConfig::from_json_str("x", r#"{"num_attention_heads": 4, "head_dim": 4611686018427387904}"#).unwrap_err();
        assert!(e.to_string().contains("larger than any real model"), "{e}");
        let e = ModelConfig::from_json_str("x", r#"{"n_head": 100000000000, "hidden_size": 4096, "model_type": "bloom"}"#).unwrap_err();
        assert!(e.to_string().contains("larger than any real model"), "{e}");
        let e = ModelConfig::from_json_str("x", r#"{"num_attention_heads": 4, "hidden_size": 64, "kv_lora_rank": 512, "qk_rope_head_dim": 18446744073709551615, "qk_nope_head_dim": 128, "v_head_dim": 128}"#).unwrap_err();
        assert!(e.to_string().contains("larger than any real model"), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(json: &str) -> ModelConfig {
        match ModelConfig::from_json_str("test", json) {
            Ok(m) => m,
            Err(e) => panic!("expected {json} to parse: {e}"),
        }
    }

    fn parse_err(json: &str) -> String {
        match ModelConfig::from_json_str("test", json) {
            Ok(m) => panic!("expected {json} to fail, got {m:?}"),
            Err(e) => {
                assert!(matches!(e, AttnError::ModelConfig { .. }), "wrong variant: {e:?}");
                e.to_string()
            }
        }
    }

    fn close(a: f32, b: f64) -> bool {
        ((a as f64) - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn every_preset_parses_and_validates() {
        assert!(preset_names().len() >= 6);
        for name in preset_names() {
            let m = preset(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(m.name, *name);
            let spec = m.attn_spec();
            let spec = if m.sinks { spec.with_sinks(vec![0.0; m.num_q_heads]) } else { spec };
            spec.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn llama_3_8b() {
        let m = preset("llama-3-8b").unwrap();
        assert_eq!((m.num_q_heads, m.num_kv_heads, m.head_dim), (32, 8, 128));
        assert_eq!(m.dtype, DType::Bf16);
        assert_eq!((m.sliding_window, m.softcap, m.alibi, m.mla), (None, None, false, None));
        assert!(close(m.scale, 1.0 / 128f64.sqrt()));
        assert!(!m.is_mla() && m.mla_spec().is_none());
    }

    #[test]
    fn mistral_7b_has_a_window() {
        let m = preset("mistral-7b").unwrap();
        assert_eq!((m.num_q_heads, m.num_kv_heads, m.head_dim), (32, 8, 128));
        assert_eq!(m.sliding_window, Some(4096));
        assert_eq!(m.attn_spec().sliding_window, Some(4096));
    }

    #[test]
    fn gemma_2_9b() {
        let m = preset("gemma-2-9b").unwrap();
        // head_dim 256 is explicit: 3584 / 16 would be 224.
        assert_eq!((m.num_q_heads, m.num_kv_heads, m.head_dim), (16, 8, 256));
        assert_eq!(m.softcap, Some(50.0), "attention soft-cap, not the final-logit one");
        assert_eq!(m.sliding_window, Some(4096));
        assert!(close(m.scale, 1.0 / 16.0));
    }

    #[test]
    fn gemma_2_query_pre_attn_scalar_sets_the_scale() {
        // Gemma-2-27B: head dim 128 but query_pre_attn_scalar 144 (= 4608 / 32).
        let m = parse_ok(r#"{"num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 128,
                              "hidden_size": 4608, "query_pre_attn_scalar": 144}"#);
        assert_eq!(m.head_dim, 128);
        assert!(close(m.scale, 1.0 / 12.0));
    }

    #[test]
    fn deepseek_v3_is_mla() {
        let m = preset("deepseek-v3").unwrap();
        assert!(m.is_mla());
        let d = m.mla.unwrap();
        assert_eq!(
            d,
            MlaDims { kv_lora_rank: 512, qk_rope_head_dim: 64, qk_nope_head_dim: 128, v_head_dim: 128 }
        );
        assert_eq!(d.latent_dim(), 576);
        assert_eq!((m.num_q_heads, m.head_dim), (128, 192));
        // 1/sqrt(192) times the YaRN mscale^2 for factor 40, mscale_all_dim 1.
        let mscale = 0.1 * 40f64.ln() + 1.0;
        assert!(close(m.scale, mscale * mscale / 192f64.sqrt()));
        assert!((m.scale - 0.135_24).abs() < 1e-4);
        let s = m.mla_spec().unwrap();
        assert_eq!((s.num_q_heads, s.latent_dim(), s.v_head_dim), (128, 576, 128));
        assert_eq!(s.scale, m.scale);
    }

    #[test]
    fn mla_without_rope_scaling_uses_plain_scale() {
        let m = parse_ok(r#"{"num_attention_heads": 16, "hidden_size": 2048, "kv_lora_rank": 512,
                              "q_lora_rank": null, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
                              "v_head_dim": 128, "rope_scaling": null}"#);
        assert!(close(m.scale, 1.0 / 192f64.sqrt()));
    }

    #[test]
    fn phi_3_mini_head_dim_96() {
        let m = preset("phi-3-mini").unwrap();
        assert_eq!((m.num_q_heads, m.num_kv_heads, m.head_dim), (32, 32, 96));
    }

    #[test]
    fn bloom_7b1_is_alibi_without_a_flag() {
        let m = preset("bloom-7b1").unwrap();
        assert_eq!((m.num_q_heads, m.num_kv_heads, m.head_dim), (32, 32, 128));
        assert!(m.alibi);
        assert_eq!(m.dtype, DType::Bf16, "no torch_dtype: the default");
        // 32 heads: slope i (from 1) is 2^(-8 i / 32).
        let slopes = m.attn_spec().alibi_slopes.unwrap();
        assert_eq!(slopes.len(), 32);
        assert!((slopes[0] - 2f32.powf(-0.25)).abs() < 1e-6 && (slopes[31] - 2f32.powi(-8)).abs() < 1e-9, "{slopes:?}");
    }

    #[test]
    fn falcon_7b_is_multi_query() {
        let m = preset("falcon-7b").unwrap();
        assert_eq!((m.num_q_heads, m.num_kv_heads, m.head_dim), (71, 1, 64));
        assert!(!m.alibi);
    }

    #[test]
    fn falcon_new_decoder_uses_num_kv_heads() {
        // Falcon-40B: multi_query is also true, but the new decoder has 8 KV heads.
        let m = parse_ok(r#"{"hidden_size": 8192, "num_attention_heads": 128, "num_kv_heads": 8,
                              "multi_query": true, "new_decoder_architecture": true}"#);
        assert_eq!((m.num_q_heads, m.num_kv_heads, m.head_dim), (128, 8, 64));
        let m = parse_ok(r#"{"hidden_size": 8192, "n_head": 128, "n_head_kv": 8}"#);
        assert_eq!(m.num_kv_heads, 8);
    }

    #[test]
    fn mpt_7b_nested_alibi() {
        let m = preset("mpt-7b").unwrap();
        assert_eq!((m.num_q_heads, m.num_kv_heads, m.head_dim), (32, 32, 128));
        assert!(m.alibi);
        assert!(close(m.scale, 1.0 / 128f64.sqrt()), "softmax_scale null: the default");
        let m = parse_ok(r#"{"n_heads": 4, "d_model": 256, "attn_config": {"softmax_scale": 0.5}}"#);
        assert_eq!((m.scale, m.alibi), (0.5, false));
    }

    #[test]
    fn preset_lookup_is_case_insensitive_and_lists_names() {
        assert_eq!(preset("  LLAMA-3-8B ").unwrap().name, "llama-3-8b");
        match preset("gpt-5") {
            Err(AttnError::UnknownPreset { name, valid }) => {
                assert_eq!(name, "gpt-5");
                for n in preset_names() {
                    assert!(valid.contains(n), "{valid}");
                }
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn naming_schemes_for_heads_and_width() {
        for (heads, hidden) in Q_HEAD_KEYS.iter().flat_map(|h| HIDDEN_KEYS.iter().map(move |d| (h, d))) {
            let m = parse_ok(&format!(r#"{{"{heads}": 8, "{hidden}": 512}}"#));
            assert_eq!((m.num_q_heads, m.num_kv_heads, m.head_dim), (8, 8, 64), "{heads} / {hidden}");
        }
        for kv in KV_HEAD_KEYS {
            let m = parse_ok(&format!(r#"{{"num_attention_heads": 8, "{kv}": 2, "hidden_size": 512}}"#));
            assert_eq!(m.num_kv_heads, 2, "{kv}");
        }
        // GPT-BigCode style MQA.
        let m = parse_ok(r#"{"n_head": 48, "n_embd": 6144, "multi_query": true}"#);
        assert_eq!((m.num_kv_heads, m.head_dim), (1, 128));
    }

    #[test]
    fn nulls_count_as_absent() {
        let m = parse_ok(r#"{"num_attention_heads": 8, "num_key_value_heads": null, "head_dim": null,
                              "hidden_size": 512, "sliding_window": null, "attn_logit_softcapping": null,
                              "torch_dtype": null}"#);
        assert_eq!((m.num_kv_heads, m.head_dim, m.sliding_window, m.softcap), (8, 64, None, None));
    }

    #[test]
    fn dtype_spellings() {
        let m = parse_ok(r#"{"n_head": 4, "n_embd": 256, "torch_dtype": "float16"}"#);
        assert_eq!(m.dtype, DType::F16);
        let m = parse_ok(r#"{"n_head": 4, "n_embd": 256, "dtype": "float32", "torch_dtype": "float16"}"#);
        assert_eq!(m.dtype, DType::F32, "the newer `dtype` wins");
        let e = parse_err(r#"{"n_head": 4, "n_embd": 256, "torch_dtype": "int8"}"#);
        assert!(e.contains("torch_dtype") && e.contains("int8"), "{e}");
    }

    #[test]
    fn qwen2_unused_window_is_none() {
        let m = parse_ok(r#"{"num_attention_heads": 28, "num_key_value_heads": 4, "hidden_size": 3584,
                              "sliding_window": 131072, "use_sliding_window": false}"#);
        assert_eq!((m.head_dim, m.sliding_window), (128, None));
        let m = parse_ok(r#"{"num_attention_heads": 28, "hidden_size": 3584,
                              "sliding_window": 4096, "use_sliding_window": true}"#);
        assert_eq!(m.sliding_window, Some(4096));
    }

    #[test]
    fn alibi_spellings() {
        let m = parse_ok(r#"{"n_head": 4, "hidden_size": 256, "alibi": true}"#);
        assert!(m.alibi);
        let m = parse_ok(r#"{"num_attention_heads": 4, "hidden_size": 256, "position_embedding_type": "alibi"}"#);
        assert!(m.alibi);
        let m = parse_ok(r#"{"num_attention_heads": 4, "hidden_size": 256, "position_embedding_type": "rope"}"#);
        assert!(!m.alibi && m.attn_spec().alibi_slopes.is_none());
    }

    #[test]
    fn text_config_of_a_multimodal_wrapper() {
        let m = parse_ok(r#"{"model_type": "llava", "torch_dtype": "float16",
                              "vision_config": {"num_attention_heads": 16, "hidden_size": 1024},
                              "text_config": {"num_attention_heads": 32, "num_key_value_heads": 8,
                                              "hidden_size": 4096}}"#);
        assert_eq!((m.num_q_heads, m.num_kv_heads, m.head_dim, m.dtype), (32, 8, 128, DType::F16));
        // Missing fields are named with their path, never defaulted.
        let e = parse_err(r#"{"text_config": {"hidden_size": 4096}}"#);
        assert!(e.contains("text_config.num_attention_heads"), "{e}");
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let e = parse_err(r#"{"hidden_size": 4096}"#);
        assert!(e.contains("num_attention_heads") && e.contains("n_head"), "{e}");
        let e = parse_err(r#"{"n_head": 0, "hidden_size": 4096}"#);
        assert!(e.contains("`n_head` is 0"), "{e}");
        let e = parse_err(r#"{"num_attention_heads": 32, "num_key_value_heads": 0, "hidden_size": 4096}"#);
        assert!(e.contains("`num_key_value_heads` is 0"), "{e}");
        let e = parse_err(r#"{"num_attention_heads": 32, "num_key_value_heads": 6, "hidden_size": 4096}"#);
        assert!(e.contains("32") && e.contains("not a multiple of `num_key_value_heads` 6"), "{e}");
        let e = parse_err(r#"{"num_attention_heads": 32, "hidden_size": 4001}"#);
        assert!(e.contains("`hidden_size` 4001") && e.contains("`num_attention_heads` 32"), "{e}");
        let e = parse_err(r#"{"num_attention_heads": 32}"#);
        assert!(e.contains("head_dim") && e.contains("hidden_size"), "{e}");
        let e = parse_err(r#"{"num_attention_heads": "32", "hidden_size": 4096}"#);
        assert!(e.contains("`num_attention_heads` is \"32\""), "{e}");
        let e = parse_err(r#"{"num_attention_heads": -4, "hidden_size": 4096}"#);
        assert!(e.contains("-4"), "{e}");
        let e = parse_err(r#"{"num_attention_heads": 8, "hidden_size": 512, "kv_lora_rank": 512}"#);
        assert!(e.contains("qk_rope_head_dim") && e.contains("missing"), "{e}");
        let e = parse_err(r#"{"num_attention_heads": 8, "hidden_size": 512, "sliding_window": 0}"#);
        assert!(e.contains("sliding_window"), "{e}");
        let e = parse_err(r#"{"num_attention_heads": 8, "hidden_size": 512, "attn_logit_softcapping": -1}"#);
        assert!(e.contains("attn_logit_softcapping"), "{e}");
        let e = parse_err(r#"{"num_attention_heads": 8, "hidden_size": 512, "alibi": "yes"}"#);
        assert!(e.contains("`alibi`"), "{e}");
        let e = parse_err("[1, 2]");
        assert!(e.contains("top level"), "{e}");
        let e = parse_err("{not json");
        assert!(e.contains("not valid JSON") && e.starts_with("model config test"), "{e}");
    }

    #[test]
    fn a_duplicate_key_or_a_non_utf8_file_is_an_error() {
        let e = parse("m", "dup.json", r#"{"num_attention_heads": 8, "head_dim": 64, "num_attention_heads": 16}"#).unwrap_err().to_string();
        assert!(e.contains("dup.json") && e.contains("not valid JSON") && e.contains("`num_attention_heads` appears twice"), "{e}");
        // Nested objects too; the same key in two objects is fine.
        let e = parse("m", "n.json", r#"{"num_attention_heads": 8, "head_dim": 64, "rope_scaling": {"factor": 2, "factor": 4}}"#).unwrap_err().to_string();
        assert!(e.contains("`factor` appears twice"), "{e}");
        assert!(parse("m", "ok.json", r#"{"num_attention_heads": 8, "head_dim": 64, "text_config": {"head_dim": 64}}"#).is_ok());
        let dir = std::env::temp_dir().join(format!("attn-utf8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("config.json");
        std::fs::write(&f, b"{\"num_attention_heads\": 8, \"head_dim\": 64, \"x\": \"\xff\"}").unwrap();
        let e = ModelConfig::from_file(&f).unwrap_err().to_string();
        assert!(e.contains("not valid JSON") && e.contains("UTF-8"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn from_file_names_the_model_and_the_file() {
        let dir = std::env::temp_dir().join(format!("attn-model-test-{}", std::process::id()));
        let ckpt = dir.join("Meta-Llama-3-8B");
        std::fs::create_dir_all(&ckpt).unwrap();
        std::fs::write(ckpt.join("config.json"), LLAMA_3_8B).unwrap();
        let by_file = ModelConfig::from_file(ckpt.join("config.json")).unwrap();
        let by_dir = ModelConfig::from_file(&ckpt).unwrap();
        assert_eq!(by_file.name, "Meta-Llama-3-8B");
        assert_eq!(by_file, by_dir);
        assert_eq!(by_file.num_kv_heads, 8);

        let bad = dir.join("broken.json");
        std::fs::write(&bad, r#"{"n_head": 3, "n_embd": 100}"#).unwrap();
        let e = ModelConfig::from_file(&bad).unwrap_err().to_string();
        assert!(e.contains("broken.json") && e.contains("`n_embd` 100"), "{e}");

        let missing = dir.join("nope.json");
        match ModelConfig::from_file(&missing) {
            Err(AttnError::Io { path, .. }) => assert!(path.contains("nope.json")),
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn yarn_mscale_worked_example() {
        assert_eq!(yarn_mscale(1.0, 1.0), 1.0);
        assert_eq!(yarn_mscale(40.0, 0.0), 1.0);
        assert!((yarn_mscale(40.0, 1.0) - 1.368_888).abs() < 1e-6);
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    fn err(json: &str) -> String {
        match ModelConfig::from_json_str("cfg.json", json) {
            Ok(m) => panic!("expected {json} to fail, got {m:?}"),
            Err(e @ AttnError::ModelConfig { .. }) => e.to_string(),
            Err(e) => panic!("wrong variant: {e:?}"),
        }
    }

    #[test]
    fn huge_counts_are_rejected_when_read_naming_field_and_limit() {
        let e = err(r#"{"num_attention_heads": 65536, "head_dim": 128}"#);
        assert!(e.contains("cfg.json") && e.contains("`num_attention_heads` is 65536") && e.contains("1024"), "{e}");
        let e = err(r#"{"num_attention_heads": 32, "head_dim": 8192}"#);
        assert!(e.contains("`head_dim` is 8192") && e.contains("at most 1024"), "{e}");
        // Derived from the width: 32 heads of 4096 dims.
        let e = err(r#"{"num_attention_heads": 32, "hidden_size": 131072}"#);
        assert!(e.contains("`hidden_size` 131072") && e.contains("head dim 4096") && e.contains("1024"), "{e}");
        let mla = |rank: u64, rope: u64, nope: u64| {
            format!(
                r#"{{"num_attention_heads": 16, "kv_lora_rank": {rank}, "qk_rope_head_dim": {rope},
                     "qk_nope_head_dim": {nope}, "v_head_dim": 128}}"#
            )
        };
        let e = err(&mla(1 << 24, 64, 128));
        assert!(e.contains("`kv_lora_rank` is 16777216") && e.contains(&MAX_KV_LORA_RANK.to_string()), "{e}");
        let e = err(&mla(512, 2048, 128));
        assert!(e.contains("`qk_rope_head_dim` is 2048"), "{e}");
        let e = err(&mla(512, 640, 640));
        assert!(e.contains("qk_nope_head_dim") && e.contains("1280"), "{e}");
        // At the limits: accepted.
        let m = ModelConfig::from_json_str("x", r#"{"num_attention_heads": 1024, "num_key_value_heads": 8, "head_dim": 1024}"#).unwrap();
        assert_eq!((m.num_q_heads, m.head_dim), (MAX_Q_HEADS, MAX_HEAD_DIM));
        let m = ModelConfig::from_json_str("x", &mla(4096, 64, 128)).unwrap();
        assert_eq!(m.mla.unwrap().kv_lora_rank, MAX_KV_LORA_RANK);
    }

    #[test]
    fn huge_counts_from_a_file_name_the_file() {
        let dir = std::env::temp_dir().join(format!("attn-model-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("huge.json");
        std::fs::write(&f, r#"{"num_attention_heads": 65536, "num_key_value_heads": 65536, "head_dim": 8192}"#).unwrap();
        let e = ModelConfig::from_file(&f).unwrap_err().to_string();
        assert!(e.contains("huge.json") && e.contains("num_attention_heads") && e.contains("1024"), "{e}");
        std::fs::write(&f, r#"{"num_attention_heads": 8, "head_dim": 64, "attn_logit_softcapping": 1e300}"#).unwrap();
        let e = ModelConfig::from_file(&f).unwrap_err().to_string();
        assert!(e.contains("huge.json") && e.contains("`attn_logit_softcapping`") && e.contains("overflows f32"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn floats_out_of_f32_range_are_rejected_naming_the_field() {
        let base = r#""num_attention_heads": 8, "head_dim": 64"#;
        for (field, json) in [
            ("`attn_logit_softcapping`", r#""attn_logit_softcapping": VAL"#),
            ("`final_logit_softcapping`", r#""final_logit_softcapping": VAL"#),
            ("`query_pre_attn_scalar`", r#""query_pre_attn_scalar": VAL"#),
            ("`attn_config.softmax_scale`", r#""attn_config": {"softmax_scale": VAL}"#),
        ] {
            for (val, why) in [("1e300", "overflows f32"), ("-1e300", "positive"), ("1e-300", "subnormal"), ("1e-40", "subnormal"), ("0", "positive")] {
                let e = err(&format!("{{{base}, {}}}", json.replace("VAL", val)));
                assert!(e.contains(field) && e.contains(why), "{field} = {val}: {e}");
            }
        }
        let mla = |rs: &str| {
            format!(
                r#"{{"num_attention_heads": 16, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
                     "qk_nope_head_dim": 128, "v_head_dim": 128, "rope_scaling": {{{rs}}}}}"#
            )
        };
        let e = err(&mla(r#""factor": 40, "mscale_all_dim": 1e300"#));
        assert!(e.contains("`rope_scaling.mscale_all_dim`") && e.contains("overflows f32"), "{e}");
        let e = err(&mla(r#""factor": 40, "mscale_all_dim": 1e-300"#));
        assert!(e.contains("`rope_scaling.mscale_all_dim`") && e.contains("subnormal"), "{e}");
        let e = err(&mla(r#""factor": 1e300, "mscale_all_dim": 1"#));
        assert!(e.contains("`rope_scaling.factor`") && e.contains("overflows f32"), "{e}");
        // Each input fits f32, the scale they give does not: named by its inputs.
        let e = err(&mla(r#""factor": 40, "mscale_all_dim": 1e30"#));
        assert!(e.contains("softmax scale") && e.contains("`rope_scaling.mscale_all_dim`") && e.contains("not a positive normal f32"), "{e}");
        // mscale_all_dim 0 is DeepSeek-V2-Lite's "no correction": fine.
        let m = ModelConfig::from_json_str("x", &mla(r#""factor": 40, "mscale_all_dim": 0"#)).unwrap();
        assert!((m.scale - 1.0 / 192f32.sqrt()).abs() < 1e-7);
        // Large but representable values are accepted.
        let m = ModelConfig::from_json_str("x", r#"{"num_attention_heads": 8, "head_dim": 64, "attn_logit_softcapping": 3e38}"#).unwrap();
        assert_eq!(m.softcap, Some(3e38));
    }

    #[test]
    fn float32_checkpoints_are_served_in_bf16_unless_asked() {
        let m = ModelConfig::from_json_str("g", r#"{"n_head": 8, "n_embd": 512, "torch_dtype": "float32"}"#).unwrap();
        assert_eq!(m.dtype, DType::F32, "the config's own dtype is kept as read");
        let (d, why) = m.serving_dtype(None);
        assert_eq!(d, DType::Bf16);
        assert!(why.contains("f32") && why.contains("auto"), "{why}");
        assert_eq!(m.serving_dtype(Some(DType::F32)).0, DType::F32);
        assert_eq!(m.serving_dtype(Some(DType::F16)).0, DType::F16);
        let h = ModelConfig::from_json_str("h", r#"{"n_head": 8, "n_embd": 512, "torch_dtype": "float16"}"#).unwrap();
        assert_eq!(h.serving_dtype(None).0, DType::F16);
        assert_eq!(preset("llama-3-8b").unwrap().serving_dtype(None).0, DType::Bf16);
    }

    #[test]
    fn summary_says_what_was_understood() {
        let g = preset("gemma-2-9b").unwrap().summary();
        for want in ["16 query heads", "8 KV heads (GQA, 2 query heads per KV head)", "head dim 256", "sliding window 4096", "every 2nd layer global", "soft-cap 50", "softmax scale 0.0625", "no ALiBi"] {
            assert!(g.contains(want), "{want}: {g}");
        }
        let d = preset("deepseek-v3").unwrap().summary();
        for want in ["128 query heads", "MLA", "kv_lora_rank 512", "qk_rope_head_dim 64", "qk_nope_head_dim 128", "v_head_dim 128", "576", "softmax scale 0.135"] {
            assert!(d.contains(want), "{want}: {d}");
        }
        assert!(!d.contains("KV heads ("), "{d}");
        let f = preset("falcon-7b").unwrap().summary();
        assert!(f.contains("71 query heads, 1 KV head (MQA)") && f.contains("head dim 64"), "{f}");
        let b = preset("bloom-7b1").unwrap().summary();
        assert!(b.contains("(MHA)") && b.contains(", ALiBi") && b.contains("no sliding window"), "{b}");
        assert_eq!((ordinal_suffix(1), ordinal_suffix(6), ordinal_suffix(12), ordinal_suffix(22)), ("st", "th", "th", "nd"));
    }
}
