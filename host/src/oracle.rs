//! The f64 oracle: dense attention with explicit masks. Ground truth for every backend.
//!
//! Nothing here is clever. Scores are materialised a row at a time, the softmax is the
//! textbook two-pass one (max, then exp and sum). The paged reference gathers each request's
//! keys through its block table into dense K/V and calls the same dense function, so the only
//! paged logic in the oracle is one `slot_of` per key. Its masks are functions of the
//! positions (no `lq x lk` matrix: a 32k-token prompt would need 1 GiB), its rows run on every
//! core, and [`paged_reference_tokens`] checks a sample of a step's tokens. [`Mask`] is the
//! explicit matrix, for dense tests and examples.
//!
//! Semantics (what the kernels must reproduce): query token `i` of request `r` sits at
//! absolute position `p = context_len(r) + i` and sees the keys at positions `j <= p`, and
//! with a sliding window `W` only those with `j > p - W`, with chunked local attention of
//! chunk `C` only those with `j >= p - p % C` (its own chunk); a bidirectional (encoder)
//! layer's query sees every token of its request. An attention sink `s_h` joins each row's
//! denominator (`+ exp(s_h)`) and adds no value. Score `s = scale * q.k`, then the
//! soft-cap `s = cap * tanh(s / cap)`, then ALiBi `s += slope[h] * (j - p)`. Query head `h`
//! reads kv head `h / (Hq / Hkv)`.
//!
//! ```
//! use attn_host::oracle::{attention, DenseShape, Mask};
//! // One query, two keys, the second masked out: the output is the first value.
//! let shape = DenseShape { lq: 1, lk: 2, hq: 1, hkv: 1, d: 1, dv: 1, scale: 1.0, softcap: None };
//! let mask = Mask::causal(&[0], 2, None);
//! let (out, lse) = attention(&[1.0], &[3.0, 5.0], &[7.0, 11.0], &shape, &mask);
//! assert_eq!(out, vec![7.0]);
//! assert!((lse[0] - 3.0).abs() < 1e-12);
//! ```

use crate::dtype::Element;
use crate::error::{AttnError, Result};
use crate::fp8::{dequantize_e4m3, KvScales};
use crate::kv_cache::{HostKvCache, KvCacheLayout};
use crate::metadata::AttentionMetadata;
use crate::spec::{AttnSpec, MlaSpec};

/// Which (query, key) pairs may attend, and an optional additive score bias per query head.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    /// Query rows.
    pub lq: usize,
    /// Keys.
    pub lk: usize,
    /// `[lq, lk]`: `allowed[i * lk + j]` iff query `i` may see key `j`.
    pub allowed: Vec<bool>,
    /// `[hq, lq, lk]`, added to the (soft-capped) score; empty = no bias.
    pub bias: Vec<f64>,
}

impl Mask {
    /// Every query sees every key.
    pub fn full(lq: usize, lk: usize) -> Mask {
        Mask { lq, lk, allowed: vec![true; lq * lk], bias: Vec::new() }
    }

    /// Key `j` sits at position `j`; query `i` at `q_positions[i]` sees keys `j <= p`, and
    /// with a window `W` only `j > p - W` (the last `W` positions, itself included).
    pub fn causal(q_positions: &[usize], lk: usize, window: Option<usize>) -> Mask {
        let lq = q_positions.len();
        let mut allowed = vec![false; lq * lk];
        for (i, &p) in q_positions.iter().enumerate() {
            for j in 0..lk {
                allowed[i * lk + j] = sees(p, j, window);
            }
        }
        Mask { lq, lk, allowed, bias: Vec::new() }
    }

    /// Adds the ALiBi bias `slopes[h] * (j - q_positions[i])` (key `j` at position `j`).
    pub fn with_alibi(mut self, slopes: &[f64], q_positions: &[usize]) -> Mask {
        assert_eq!(q_positions.len(), self.lq, "one position per query row");
        let (lq, lk) = (self.lq, self.lk);
        let mut bias = vec![0.0; slopes.len() * lq * lk];
        for (h, &slope) in slopes.iter().enumerate() {
            for (i, &p) in q_positions.iter().enumerate() {
                for j in 0..lk {
                    bias[(h * lq + i) * lk + j] = slope * (j as f64 - p as f64);
                }
            }
        }
        self.bias = bias;
        self
    }

    /// Whether query `i` may see key `j`.
    pub fn is_allowed(&self, i: usize, j: usize) -> bool {
        self.allowed[i * self.lk + j]
    }

    fn bias_of(&self, h: usize, i: usize, j: usize) -> f64 {
        if self.bias.is_empty() { 0.0 } else { self.bias[(h * self.lq + i) * self.lk + j] }
    }
}

/// Shapes and score parameters of one dense attention.
/// q `[lq, hq, d]`, k `[lk, hkv, d]`, v `[lk, hkv, dv]`; query head `h` reads kv head
/// `h / (hq / hkv)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DenseShape {
    /// Query rows.
    pub lq: usize,
    /// Keys.
    pub lk: usize,
    /// Query heads.
    pub hq: usize,
    /// KV heads.
    pub hkv: usize,
    /// Query/key dims per head.
    pub d: usize,
    /// Value dims per head.
    pub dv: usize,
    /// Softmax scale, applied to `q . k`.
    pub scale: f64,
    /// Logits soft-cap, `cap * tanh(s / cap)` after the scale.
    pub softcap: Option<f64>,
}

/// Dense attention in f64. Returns (out `[lq, hq, dv]`, log-sum-exp of the scores `[lq, hq]`).
/// A query row that sees no key gets a zero output and `lse = -inf`.
pub fn attention(q: &[f64], k: &[f64], v: &[f64], s: &DenseShape, mask: &Mask) -> (Vec<f64>, Vec<f64>) {
    assert_eq!((mask.lq, mask.lk), (s.lq, s.lk), "mask is [lq, lk]");
    assert!(mask.bias.is_empty() || mask.bias.len() == s.hq * s.lq * s.lk, "bias is [hq, lq, lk]");
    attention_with(q, k, v, s, |i, j| mask.is_allowed(i, j), |h, i, j| mask.bias_of(h, i, j), |_| true)
}

/// [`attention`] with the mask as functions rather than matrices: `visible(i, j)` (query
/// `i` sees key `j`), `bias(h, i, j)` (added to the soft-capped score), and `wanted(i)`:
/// the query rows to compute (the others stay zero, their `lse` `-inf`). Rows run in
/// parallel (rayon); each is the same textbook two-pass softmax, so the result does not
/// depend on the thread count.
pub fn attention_with(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    s: &DenseShape,
    visible: impl Fn(usize, usize) -> bool + Sync,
    bias: impl Fn(usize, usize, usize) -> f64 + Sync,
    wanted: impl Fn(usize) -> bool + Sync,
) -> (Vec<f64>, Vec<f64>) {
    attention_with_sinks(q, k, v, s, visible, bias, wanted, |_| f64::NEG_INFINITY)
}

/// [`attention_with`] with an attention sink per query head: `sink(h)` is a logit that
/// joins row's softmax denominator, `exp(sink - max)`, and adds no value (`-inf`: none).
/// A row that sees no key but has a sink gets a zero output and `lse = sink`.
#[allow(clippy::too_many_arguments)]
pub fn attention_with_sinks(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    s: &DenseShape,
    visible: impl Fn(usize, usize) -> bool + Sync,
    bias: impl Fn(usize, usize, usize) -> f64 + Sync,
    wanted: impl Fn(usize) -> bool + Sync,
    sink: impl Fn(usize) -> f64 + Sync,
) -> (Vec<f64>, Vec<f64>) {
    use rayon::prelude::*;
    assert_eq!(q.len(), s.lq * s.hq * s.d, "q is [lq, hq, d]");
    assert_eq!(k.len(), s.lk * s.hkv * s.d, "k is [lk, hkv, d]");
    assert_eq!(v.len(), s.lk * s.hkv * s.dv, "v is [lk, hkv, dv]");
    assert!(s.hkv > 0 && s.hq % s.hkv == 0, "hq must be a multiple of hkv");
    let group = s.hq / s.hkv;
    let mut out = vec![0.0; s.lq * s.hq * s.dv];
    let mut lse = vec![f64::NEG_INFINITY; s.lq * s.hq];
    if s.dv == 0 {
        return (out, lse);
    }
    out.par_chunks_mut(s.dv).zip(lse.par_iter_mut()).enumerate().for_each(|(row, (orow, lse))| {
        let (i, h) = (row / s.hq, row % s.hq);
        if !wanted(i) {
            return;
        }
        let kvh = h / group;
        let qrow = &q[(i * s.hq + h) * s.d..][..s.d];
        // Scores of the visible keys; -inf for the rest.
        let scores: Vec<f64> = (0..s.lk)
            .map(|j| {
                if !visible(i, j) {
                    return f64::NEG_INFINITY;
                }
                let krow = &k[(j * s.hkv + kvh) * s.d..][..s.d];
                let mut x = s.scale * qrow.iter().zip(krow).map(|(a, b)| a * b).sum::<f64>();
                if let Some(cap) = s.softcap {
                    x = cap * (x / cap).tanh();
                }
                x + bias(h, i, j)
            })
            .collect();
        let sink = sink(h);
        let max = scores.iter().copied().fold(sink, f64::max);
        if max == f64::NEG_INFINITY {
            return;
        }
        let sink_term = if sink == f64::NEG_INFINITY { 0.0 } else { (sink - max).exp() };
        let denom: f64 = scores.iter().map(|&x| (x - max).exp()).sum::<f64>() + sink_term;
        *lse = max + denom.ln();
        for (j, &x) in scores.iter().enumerate() {
            if x == f64::NEG_INFINITY {
                continue;
            }
            let p = (x - max).exp() / denom;
            let vrow = &v[(j * s.hkv + kvh) * s.dv..][..s.dv];
            for (o, &x) in orow.iter_mut().zip(vrow) {
                *o += p * x;
            }
        }
    });
    (out, lse)
}

/// Whether a query at position `p` sees the key at `j`: causal, and inside a window of `w`
/// (`j + w > p`, written without the sum, which a window near `usize::MAX` would overflow).
fn sees(p: usize, j: usize, window: Option<usize>) -> bool {
    j <= p && window.is_none_or(|w| p - j < w)
}

/// Whether a query at position `p` of a layer of `spec` sees key `j`: its window, its chunk
/// (chunked local attention: `j >= p - p % chunk`), or every key of a bidirectional layer.
fn sees_in(spec: &AttnSpec, p: usize, j: usize) -> bool {
    if !spec.causal {
        return true;
    }
    sees(p, j, spec.sliding_window) && spec.chunk_size.is_none_or(|c| j >= p - p % c)
}

/// Query head `h`'s sink logit in f64 (`-inf` without sinks).
fn sink_of(spec: &AttnSpec, h: usize) -> f64 {
    spec.sink_logits().map_or(f64::NEG_INFINITY, |s| s[h] as f64)
}

/// The reference for a bidirectional (encoder) layer: each request's queries attend over
/// all of its own tokens' keys, `k`, `v` `[num_tokens, Hkv, D]` of the step (no cache);
/// ALiBi biases by `j - i`, sinks as everywhere. `query_start_loc` `[num_reqs + 1]`.
pub fn bidirectional_reference<T: Element>(q: &[T], k: &[T], v: &[T], query_start_loc: &[i32], spec: &AttnSpec) -> Result<Vec<f64>> {
    spec.validate()?;
    let (hq, hkv, d) = (spec.num_q_heads, spec.num_kv_heads, spec.head_dim);
    let n = query_start_loc.last().copied().unwrap_or(0).max(0) as usize;
    if q.len() != n * hq * d || k.len() != n * hkv * d || v.len() != n * hkv * d {
        return Err(AttnError::LengthMismatch { what: "oracle q, k, v", detail: format!("{}, {}, {} elements for {n} tokens", q.len(), k.len(), v.len()) });
    }
    let f = |x: &[T]| x.iter().map(|e| e.to_f64()).collect::<Vec<f64>>();
    let mut out = vec![0.0; q.len()];
    for r in query_start_loc.windows(2) {
        let (t0, t1) = (r[0] as usize, r[1] as usize);
        let l = t1 - t0;
        let shape = DenseShape { lq: l, lk: l, hq, hkv, d, dv: d, scale: spec.scale as f64, softcap: spec.softcap.map(|c| c as f64) };
        let slopes: Vec<f64> = spec.alibi_slopes.iter().flatten().map(|&s| s as f64).collect();
        let bias = |h: usize, i: usize, j: usize| if slopes.is_empty() { 0.0 } else { slopes[h] * (j as f64 - i as f64) };
        let (o, _) = attention_with_sinks(
            &f(&q[t0 * hq * d..t1 * hq * d]),
            &f(&k[t0 * hkv * d..t1 * hkv * d]),
            &f(&v[t0 * hkv * d..t1 * hkv * d]),
            &shape,
            |_, _| true,
            bias,
            |_| true,
            |h| sink_of(spec, h),
        );
        out[t0 * hq * d..t1 * hq * d].copy_from_slice(&o);
    }
    Ok(out)
}

/// The absolute positions of request `r`'s query tokens.
fn query_positions(meta: &AttentionMetadata, r: usize) -> Vec<usize> {
    (0..meta.query_len(r)).map(|i| meta.context_len(r) + i).collect()
}

/// The reference for a paged step, computed after the step's K/V are in `cache`.
/// `q` is `[num_tokens, Hq, D]`; returns `[num_tokens, Hq, D]` in f64.
///
/// For each request: gathers its keys `0..seq_len` through the block table into dense f64
/// K/V, builds the explicit causal (+ window, + ALiBi) mask and calls [`attention`].
///
/// A cache or q that does not match `spec` and `meta` is an error, not a panic.
pub fn paged_reference<T: Element>(q: &[T], cache: &HostKvCache<T>, meta: &AttentionMetadata, spec: &AttnSpec) -> Result<Vec<f64>> {
    paged_reference_lse(q, cache, meta, spec).map(|(out, _)| out)
}

/// [`paged_reference`], and each row's log-sum-exp of its scores `[num_tokens, Hq]`
/// (natural log, after scale, soft-cap and ALiBi; `-inf` for a row that sees no key).
pub fn paged_reference_lse<T: Element>(q: &[T], cache: &HostKvCache<T>, meta: &AttentionMetadata, spec: &AttnSpec) -> Result<(Vec<f64>, Vec<f64>)> {
    paged_reference_over(q, cache, meta, spec, |x, _, _| x.to_f64(), |_| true)
}

/// [`paged_reference`] for the query tokens `tokens` only (step-wide indices): the rows of
/// other tokens are zero, and requests without a wanted token are not gathered. For checking
/// a sample of a large step (a 32k-token prompt) at a fraction of the cost.
pub fn paged_reference_tokens<T: Element>(q: &[T], cache: &HostKvCache<T>, meta: &AttentionMetadata, spec: &AttnSpec, tokens: &[usize]) -> Result<Vec<f64>> {
    let mut want = vec![false; meta.num_tokens()];
    for &t in tokens {
        *want.get_mut(t).ok_or_else(|| AttnError::InvalidConfig(format!("oracle: token {t} of a step of {} tokens", meta.num_tokens())))? = true;
    }
    paged_reference_over(q, cache, meta, spec, |x, _, _| x.to_f64(), |t| want[t]).map(|(out, _)| out)
}

/// [`paged_reference`] over an fp8 (e4m3) cache: every element read exactly in f64 as
/// `dequantize_e4m3(byte) * scale` with its kv head's K or V scale (the product of an e4m3
/// value and an f32 is exact in f64), then the same f64 attention. `scales` must hold one
/// finite positive scale per kv head ([`KvScales::validate`]).
pub fn paged_reference_fp8<T: Element>(q: &[T], cache: &HostKvCache<u8>, scales: &KvScales, meta: &AttentionMetadata, spec: &AttnSpec) -> Result<Vec<f64>> {
    paged_reference_fp8_lse(q, cache, scales, meta, spec).map(|(out, _)| out)
}

/// [`paged_reference_fp8`], and each row's log-sum-exp as [`paged_reference_lse`] gives it.
pub fn paged_reference_fp8_lse<T: Element>(q: &[T], cache: &HostKvCache<u8>, scales: &KvScales, meta: &AttentionMetadata, spec: &AttnSpec) -> Result<(Vec<f64>, Vec<f64>)> {
    scales.validate(cache.layout.num_kv_heads)?;
    paged_reference_over(
        q,
        cache,
        meta,
        spec,
        |&b, head, is_value| {
            let s = if is_value { scales.v[head] } else { scales.k[head] };
            dequantize_e4m3(b) as f64 * s as f64
        },
        |_| true,
    )
}

/// The paged reference over a cache of any element, each element `x` of kv head `head`
/// read as `read(&x, head, is_value)` in f64.
fn paged_reference_over<T: Element, E>(
    q: &[T],
    cache: &HostKvCache<E>,
    meta: &AttentionMetadata,
    spec: &AttnSpec,
    read: impl Fn(&E, usize, bool) -> f64,
    wanted: impl Fn(usize) -> bool + Sync,
) -> Result<(Vec<f64>, Vec<f64>)> {
    spec.validate()?;
    let (hq, hkv, d) = (spec.num_q_heads, spec.num_kv_heads, spec.head_dim);
    if cache.layout.num_kv_heads != hkv || cache.layout.head_dim != d || cache.layout != *meta.layout() {
        return Err(AttnError::Shape(format!(
            "oracle: cache {:?} and metadata for {:?} do not both match the spec's {hkv} kv heads x head dim {d}",
            cache.layout,
            meta.layout()
        )));
    }
    if cache.key.len() != cache.layout.elements() || cache.value.len() != cache.layout.elements() {
        return Err(AttnError::LengthMismatch { what: "oracle cache", detail: format!("{} key, {} value elements for {}", cache.key.len(), cache.value.len(), cache.layout.elements()) });
    }
    if Some(q.len()) != meta.num_tokens().checked_mul(hq * d) {
        return Err(AttnError::LengthMismatch { what: "oracle q", detail: format!("{} elements, expected {} tokens x {hq} heads x {d}", q.len(), meta.num_tokens()) });
    }
    let mut out = vec![0.0; q.len()];
    let mut lse_all = vec![f64::NEG_INFINITY; meta.num_tokens() * hq];
    for r in 0..meta.num_reqs() {
        let lk = meta.seq_lens()[r] as usize;
        let lq = meta.query_len(r);
        let t0 = meta.query_start_loc()[r] as usize;
        if !(t0..t0 + lq).any(&wanted) {
            continue;
        }
        let mut k = Vec::with_capacity(lk * hkv * d);
        let mut v = Vec::with_capacity(lk * hkv * d);
        for j in 0..lk {
            let slot = meta.slot_of(r, j);
            for h in 0..hkv {
                k.extend(cache.key_row(slot, h).iter().map(|x| read(x, h, false)));
                v.extend(cache.value_row(slot, h).iter().map(|x| read(x, h, true)));
            }
        }
        let qd: Vec<f64> = q[t0 * hq * d..(t0 + lq) * hq * d].iter().map(|x| x.to_f64()).collect();
        let pos = query_positions(meta, r);
        let slopes: Vec<f64> = spec.alibi_slopes.iter().flatten().map(|&s| s as f64).collect();
        let shape = DenseShape {
            lq,
            lk,
            hq,
            hkv,
            d,
            dv: d,
            scale: spec.scale as f64,
            softcap: spec.softcap.map(|c| c as f64),
        };
        let bias = |h: usize, i: usize, j: usize| if slopes.is_empty() { 0.0 } else { slopes[h] * (j as f64 - pos[i] as f64) };
        let (o, lse) = attention_with_sinks(&qd, &k, &v, &shape, |i, j| sees_in(spec, pos[i], j), bias, |i| wanted(t0 + i), |h| sink_of(spec, h));
        out[t0 * hq * d..(t0 + lq) * hq * d].copy_from_slice(&o);
        lse_all[t0 * hq..(t0 + lq) * hq].copy_from_slice(&lse);
    }
    Ok((out, lse_all))
}

/// `||out - reference|| / ||reference||` (Euclidean norms). A non-finite value in `out`, or
/// a length mismatch, gives `+inf`, so a comparison against a bound fails. Both zero gives 0.
pub fn rel_error<X: Copy + Into<f64>>(out: &[X], reference: &[f64]) -> f64 {
    if out.len() != reference.len() {
        return f64::INFINITY;
    }
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for (&o, &r) in out.iter().zip(reference) {
        let o: f64 = o.into();
        if !o.is_finite() || !r.is_finite() {
            return f64::INFINITY;
        }
        err += (o - r) * (o - r);
        norm += r * r;
    }
    if err == 0.0 {
        0.0
    } else if norm == 0.0 {
        f64::INFINITY
    } else {
        (err / norm).sqrt()
    }
}

/// Inputs of one MLA attention (DeepSeek-V2/V3), all f64, for [`mla_naive`] and
/// [`mla_absorbed`]. `H = spec.num_q_heads`, `R = spec.kv_lora_rank`.
#[derive(Clone, Copy, Debug)]
pub struct MlaInputs<'a> {
    /// Query tokens.
    pub lq: usize,
    /// Key tokens.
    pub lk: usize,
    /// `[lk, R]`: the compressed KV latent of each key token.
    pub c_kv: &'a [f64],
    /// `[lk, rope]`: the shared rotary key part.
    pub k_rope: &'a [f64],
    /// `[lq, H, nope]`.
    pub q_nope: &'a [f64],
    /// `[lq, H, rope]`.
    pub q_rope: &'a [f64],
    /// `[H, nope, R]`: key up-projection.
    pub w_uk: &'a [f64],
    /// `[H, v_head_dim, R]`: value up-projection.
    pub w_uv: &'a [f64],
}

impl MlaInputs<'_> {
    fn check(&self, spec: &MlaSpec) {
        let (h, r) = (spec.num_q_heads, spec.kv_lora_rank);
        let (rope, nope, dv) = (spec.qk_rope_head_dim, spec.qk_nope_head_dim, spec.v_head_dim);
        assert_eq!(self.c_kv.len(), self.lk * r, "c_kv is [lk, kv_lora_rank]");
        assert_eq!(self.k_rope.len(), self.lk * rope, "k_rope is [lk, rope]");
        assert_eq!(self.q_nope.len(), self.lq * h * nope, "q_nope is [lq, H, nope]");
        assert_eq!(self.q_rope.len(), self.lq * h * rope, "q_rope is [lq, H, rope]");
        assert_eq!(self.w_uk.len(), h * nope * r, "W_UK is [H, nope, kv_lora_rank]");
        assert_eq!(self.w_uv.len(), h * dv * r, "W_UV is [H, v_head_dim, kv_lora_rank]");
    }
}

/// `y[o] = sum_i w[o, i] x[i]` for `w` `[rows, cols]`.
fn matvec(w: &[f64], x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..rows).map(|o| w[o * cols..][..cols].iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

/// `y[i] = sum_o w[o, i] x[o]` for `w` `[rows, cols]` (the transpose).
fn matvec_t(w: &[f64], x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut y = vec![0.0; cols];
    for (o, &xo) in x.iter().enumerate().take(rows) {
        for (yi, &wi) in y.iter_mut().zip(&w[o * cols..][..cols]) {
            *yi += wi * xo;
        }
    }
    y
}

/// MLA as written in the paper: per head, `k = [W_UK[h] c ; k_rope]`, `v = W_UV[h] c`, then
/// standard attention with `spec.scale`. Returns `[lq, H, v_head_dim]`.
pub fn mla_naive(x: &MlaInputs, spec: &MlaSpec, mask: &Mask) -> Vec<f64> {
    x.check(spec);
    let (h, r) = (spec.num_q_heads, spec.kv_lora_rank);
    let (rope, nope, dv) = (spec.qk_rope_head_dim, spec.qk_nope_head_dim, spec.v_head_dim);
    let d = nope + rope;
    // Per-head keys and values: k [lk, H, nope + rope], v [lk, H, dv].
    let mut k = Vec::with_capacity(x.lk * h * d);
    let mut v = Vec::with_capacity(x.lk * h * dv);
    for j in 0..x.lk {
        let c = &x.c_kv[j * r..][..r];
        for hh in 0..h {
            k.extend(matvec(&x.w_uk[hh * nope * r..][..nope * r], c, nope, r));
            k.extend_from_slice(&x.k_rope[j * rope..][..rope]);
            v.extend(matvec(&x.w_uv[hh * dv * r..][..dv * r], c, dv, r));
        }
    }
    let mut q = Vec::with_capacity(x.lq * h * d);
    for i in 0..x.lq {
        for hh in 0..h {
            q.extend_from_slice(&x.q_nope[(i * h + hh) * nope..][..nope]);
            q.extend_from_slice(&x.q_rope[(i * h + hh) * rope..][..rope]);
        }
    }
    let shape = DenseShape { lq: x.lq, lk: x.lk, hq: h, hkv: h, d, dv, scale: spec.scale as f64, softcap: None };
    attention(&q, &k, &v, &shape, mask).0
}

/// The absorbed query: per head `[W_UK[h]^T q_nope ; q_rope]`, `[lq, H, R + rope]`.
pub fn mla_absorb_query(x: &MlaInputs, spec: &MlaSpec) -> Vec<f64> {
    x.check(spec);
    let (h, r) = (spec.num_q_heads, spec.kv_lora_rank);
    let (rope, nope) = (spec.qk_rope_head_dim, spec.qk_nope_head_dim);
    let mut q = Vec::with_capacity(x.lq * h * (r + rope));
    for i in 0..x.lq {
        for hh in 0..h {
            let qn = &x.q_nope[(i * h + hh) * nope..][..nope];
            q.extend(matvec_t(&x.w_uk[hh * nope * r..][..nope * r], qn, nope, r));
            q.extend_from_slice(&x.q_rope[(i * h + hh) * rope..][..rope]);
        }
    }
    q
}

/// The latent cache rows `[c ; k_rope]`, `[lk, R + rope]`.
pub fn mla_latent_rows(x: &MlaInputs, spec: &MlaSpec) -> Vec<f64> {
    let (r, rope) = (spec.kv_lora_rank, spec.qk_rope_head_dim);
    let mut rows = Vec::with_capacity(x.lk * (r + rope));
    for j in 0..x.lk {
        rows.extend_from_slice(&x.c_kv[j * r..][..r]);
        rows.extend_from_slice(&x.k_rope[j * rope..][..rope]);
    }
    rows
}

/// Absorbed-form attention over latent rows: one kv head of width `R + rope` shared by all
/// query heads, values = the first `R` dims of each row. `q_latent` `[lq, H, R + rope]`,
/// `latent` `[lk, R + rope]`; returns the latent output `[lq, H, R]`.
pub fn mla_latent_attention(q_latent: &[f64], latent: &[f64], lq: usize, lk: usize, spec: &MlaSpec, mask: &Mask) -> Vec<f64> {
    let (r, w) = (spec.kv_lora_rank, spec.latent_dim());
    assert_eq!(latent.len(), lk * w, "latent rows are [lk, kv_lora_rank + rope]");
    let values: Vec<f64> = (0..lk).flat_map(|j| latent[j * w..][..r].iter().copied()).collect();
    let shape = DenseShape { lq, lk, hq: spec.num_q_heads, hkv: 1, d: w, dv: r, scale: spec.scale as f64, softcap: None };
    attention(q_latent, latent, &values, &shape, mask).0
}

/// MLA in the absorbed form the kernels compute: `q_lat = W_UK^T q_nope` per head, scores of
/// `[q_lat ; q_rope]` against the latent rows `[c ; k_rope]`, `out_latent = softmax . c`,
/// `out = W_UV out_latent`. Returns `[lq, H, v_head_dim]`; equals [`mla_naive`].
pub fn mla_absorbed(x: &MlaInputs, spec: &MlaSpec, mask: &Mask) -> Vec<f64> {
    let (h, r, dv) = (spec.num_q_heads, spec.kv_lora_rank, spec.v_head_dim);
    let q = mla_absorb_query(x, spec);
    let rows = mla_latent_rows(x, spec);
    let latent_out = mla_latent_attention(&q, &rows, x.lq, x.lk, spec, mask);
    let mut out = Vec::with_capacity(x.lq * h * dv);
    for i in 0..x.lq {
        for hh in 0..h {
            out.extend(matvec(&x.w_uv[hh * dv * r..][..dv * r], &latent_out[(i * h + hh) * r..][..r], dv, r));
        }
    }
    out
}

/// The reference for a paged MLA step: `q_latent` `[num_tokens, H, R + rope]` against the
/// latent cache (one kv head of width `R + rope`, keys only), causal from each request's
/// context length. Returns the latent output `[num_tokens, H, R]`.
pub fn paged_mla_reference<T: Element>(q_latent: &[T], cache: &HostKvCache<T>, meta: &AttentionMetadata, spec: &MlaSpec) -> Result<Vec<f64>> {
    check_mla_cache(&cache.layout, meta, spec)?;
    if cache.key.len() != cache.layout.elements() {
        return Err(AttnError::LengthMismatch { what: "oracle MLA cache", detail: format!("{} key elements for {}", cache.key.len(), cache.layout.elements()) });
    }
    paged_mla_reference_over(q_latent, meta, spec, |slot| cache.key_row(slot, 0).iter().map(|x| x.to_f64()).collect())
}

/// [`paged_mla_reference`] over an fp8 latent cache (FlashMLA's 656-byte rows,
/// [`HostKvCache::zeros_latent_fp8`]): every row read exactly in f64
/// ([`crate::fp8::dequantize_latent_row`]: each e4m3 byte times its tile's scale, the rotary
/// dims as `T`), then the same f64 attention.
pub fn paged_mla_reference_fp8<T: Element>(q_latent: &[T], cache: &HostKvCache<u8>, meta: &AttentionMetadata, spec: &MlaSpec) -> Result<Vec<f64>> {
    check_mla_cache(&cache.layout, meta, spec)?;
    cache.check_latent_fp8()?;
    paged_mla_reference_over(q_latent, meta, spec, |slot| crate::fp8::dequantize_latent_row::<T>(cache.latent_row(slot)))
}

fn check_mla_cache(layout: &KvCacheLayout, meta: &AttentionMetadata, spec: &MlaSpec) -> Result<()> {
    let w = spec.latent_dim();
    if layout.num_kv_heads != 1 || layout.head_dim != w || layout != meta.layout() {
        return Err(AttnError::Shape(format!(
            "oracle (MLA): cache {:?} and metadata for {:?} must both be one latent head of kv_lora_rank + rope = {w} dims",
            layout,
            meta.layout()
        )));
    }
    Ok(())
}

/// The MLA reference over latent rows read by `row_of(slot)` (`R + rope` values in f64).
fn paged_mla_reference_over<T: Element>(q_latent: &[T], meta: &AttentionMetadata, spec: &MlaSpec, row_of: impl Fn(usize) -> Vec<f64>) -> Result<Vec<f64>> {
    let (h, r, w) = (spec.num_q_heads, spec.kv_lora_rank, spec.latent_dim());
    if Some(q_latent.len()) != meta.num_tokens().checked_mul(h * w) {
        return Err(AttnError::LengthMismatch { what: "oracle q_latent", detail: format!("{} elements, expected {} tokens x {h} heads x {w}", q_latent.len(), meta.num_tokens()) });
    }
    let mut out = vec![0.0; meta.num_tokens() * h * r];
    for req in 0..meta.num_reqs() {
        let lk = meta.seq_lens()[req] as usize;
        let lq = meta.query_len(req);
        let t0 = meta.query_start_loc()[req] as usize;
        let rows: Vec<f64> = (0..lk).flat_map(|j| row_of(meta.slot_of(req, j))).collect();
        let values: Vec<f64> = (0..lk).flat_map(|j| rows[j * w..][..r].iter().copied()).collect();
        let q: Vec<f64> = q_latent[t0 * h * w..(t0 + lq) * h * w].iter().map(|x| x.to_f64()).collect();
        let pos = query_positions(meta, req);
        let shape = DenseShape { lq, lk, hq: h, hkv: 1, d: w, dv: r, scale: spec.scale as f64, softcap: None };
        let (o, _) = attention_with(&q, &rows, &values, &shape, |i, j| sees(pos[i], j, None), |_, _, _| 0.0, |_| true);
        out[t0 * h * r..(t0 + lq) * h * r].copy_from_slice(&o);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::KvCacheLayout;
    use crate::metadata::{MetadataBuilder, RequestSchedule, SchedulerOutput};

    fn shape(lq: usize, lk: usize, d: usize) -> DenseShape {
        DenseShape { lq, lk, hq: 1, hkv: 1, d, dv: d, scale: 1.0, softcap: None }
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn one_key_gives_its_value() {
        let (out, lse) = attention(&[0.3, -0.7], &[2.0, 5.0], &[1.5, -2.5], &shape(1, 1, 2), &Mask::full(1, 1));
        assert!(close(&out, &[1.5, -2.5]), "{out:?}");
        // lse of a single score: the score itself, 0.3*2 - 0.7*5 = -2.9.
        assert!((lse[0] + 2.9).abs() < 1e-12, "{lse:?}");
    }

    #[test]
    fn equal_keys_average_the_values() {
        let k = [1.0, 2.0, 1.0, 2.0];
        let v = [1.0, 10.0, 3.0, 20.0];
        let (out, lse) = attention(&[0.5, 0.25], &k, &v, &shape(1, 2, 2), &Mask::full(1, 2));
        assert!(close(&out, &[2.0, 15.0]), "{out:?}");
        // Two scores of 1.0: lse = 1 + ln 2.
        assert!((lse[0] - (1.0 + 2f64.ln())).abs() < 1e-12, "{lse:?}");
    }

    #[test]
    fn masked_key_is_ignored() {
        // Query at position 0 sees only key 0, whatever key 1 holds.
        let (out, _) = attention(&[1.0], &[0.0, 100.0], &[4.0, -9.0], &shape(1, 2, 1), &Mask::causal(&[0], 2, None));
        assert!(close(&out, &[4.0]), "{out:?}");
    }

    #[test]
    fn two_keys_softmax_by_hand() {
        // Scores 0 and ln 3 -> weights 1/4 and 3/4.
        let (out, _) = attention(&[1.0], &[0.0, 3f64.ln()], &[8.0, 4.0], &shape(1, 2, 1), &Mask::full(1, 2));
        assert!(close(&out, &[0.25 * 8.0 + 0.75 * 4.0]), "{out:?}");
    }

    #[test]
    fn causal_and_window_masks() {
        // Queries at positions 1 and 3 over 4 keys. Window 2 keeps j in (p - 2, p]:
        // {0, 1} and {2, 3}; window 1 keeps only j = p; no window keeps j <= p.
        let m = Mask::causal(&[1, 3], 4, Some(2));
        assert_eq!(m.allowed, vec![true, true, false, false, false, false, true, true]);
        let m = Mask::causal(&[1, 3], 4, Some(1));
        assert_eq!(m.allowed, vec![false, true, false, false, false, false, false, true]);
        let m = Mask::causal(&[2], 4, None);
        assert_eq!(m.allowed, vec![true, true, true, false]);
        // A window as wide as usize (the fuzzer's input: accepted by AttnSpec::validate) is
        // no window, not an overflow.
        assert_eq!(Mask::causal(&[1, 3], 4, Some(usize::MAX)).allowed, Mask::causal(&[1, 3], 4, None).allowed);
    }

    #[test]
    fn the_paged_reference_of_a_sample_is_the_full_one_there_and_mla_errors_are_errors() {
        let layout = KvCacheLayout::new(8, 4, 1, 8).unwrap();
        let sched = SchedulerOutput {
            requests: vec![
                RequestSchedule { num_computed_tokens: 3, num_new_tokens: 2, block_ids: vec![0, 1] },
                RequestSchedule { num_computed_tokens: 0, num_new_tokens: 6, block_ids: vec![2, 3] },
            ],
        };
        let meta = MetadataBuilder::new(layout).build(&sched).unwrap();
        let mut spec = AttnSpec::new(2, 1, 8);
        spec.alibi_slopes = Some(vec![0.5, 0.25]);
        spec.sliding_window = Some(3);
        let mut rng = crate::workload::Rng::new(9);
        let cache = HostKvCache { layout, key: crate::workload::random_values::<f32>(&mut rng, layout.elements()), value: crate::workload::random_values::<f32>(&mut rng, layout.elements()) };
        let q = crate::workload::random_values::<f32>(&mut rng, meta.num_tokens() * 2 * 8);
        let full = paged_reference(&q, &cache, &meta, &spec).unwrap();
        let part = paged_reference_tokens(&q, &cache, &meta, &spec, &[1, 6]).unwrap();
        for t in 0..meta.num_tokens() {
            let (a, b) = (&full[t * 16..(t + 1) * 16], &part[t * 16..(t + 1) * 16]);
            if t == 1 || t == 6 { assert_eq!(a, b, "token {t}") } else { assert!(b.iter().all(|&x| x == 0.0), "token {t}") }
        }
        assert!(paged_reference_tokens(&q, &cache, &meta, &spec, &[8]).is_err());
        // The MLA reference: a q of the wrong length is an error, not a panic.
        let mla = MlaSpec { num_q_heads: 2, kv_lora_rank: 6, qk_rope_head_dim: 2, qk_nope_head_dim: 4, v_head_dim: 4, scale: 0.3 };
        assert!(matches!(paged_mla_reference(&q[..5], &cache, &meta, &mla), Err(AttnError::LengthMismatch { .. })));
        assert!(paged_mla_reference(&q, &cache, &meta, &mla).is_ok());
    }

    #[test]
    fn alibi_bias_by_hand() {
        // Scores all 0; bias slope * (j - p) with slope ln 2, p = 1: keys 0, 1 get
        // -ln 2 and 0 -> weights 1/3 and 2/3.
        let m = Mask::causal(&[1], 2, None).with_alibi(&[2f64.ln()], &[1]);
        let (out, _) = attention(&[0.0], &[1.0, 1.0], &[3.0, 6.0], &shape(1, 2, 1), &m);
        assert!(close(&out, &[3.0 / 3.0 + 6.0 * 2.0 / 3.0]), "{out:?}");
    }

    #[test]
    fn softcap_by_hand() {
        // Score 10 capped at 1: tanh(10) ~ 1 vs score 0: weights e^tanh(10) : 1.
        let s = DenseShape { softcap: Some(1.0), ..shape(1, 2, 1) };
        let (out, lse) = attention(&[1.0], &[10.0, 0.0], &[1.0, 0.0], &s, &Mask::full(1, 2));
        let e = 10f64.tanh().exp();
        assert!(close(&out, &[e / (e + 1.0)]), "{out:?}");
        assert!((lse[0] - (e + 1.0).ln()).abs() < 1e-12);
    }

    #[test]
    fn gqa_uses_the_shared_kv_head() {
        // 2 query heads, 1 kv head, 1 key: both heads output that key's value.
        let s = DenseShape { hq: 2, ..shape(1, 1, 1) };
        let (out, _) = attention(&[1.0, -1.0], &[2.0], &[5.0], &s, &Mask::full(1, 1));
        assert!(close(&out, &[5.0, 5.0]), "{out:?}");
    }

    #[test]
    fn fully_masked_row_is_zero() {
        let m = Mask { lq: 1, lk: 1, allowed: vec![false], bias: vec![] };
        let (out, lse) = attention(&[1.0], &[1.0], &[1.0], &shape(1, 1, 1), &m);
        assert_eq!(out, vec![0.0]);
        assert_eq!(lse[0], f64::NEG_INFINITY);
    }

    #[test]
    fn rel_error_flags_nan_and_measures() {
        assert_eq!(rel_error(&[3.0f64, 4.0], &[3.0, 4.0]), 0.0);
        // ||(0, 0.5)|| / ||(3, 4)|| = 0.1.
        assert!((rel_error(&[3.0f32, 4.5], &[3.0, 4.0]) - 0.1).abs() < 1e-12);
        assert_eq!(rel_error(&[f32::NAN, 4.0], &[3.0, 4.0]), f64::INFINITY);
        assert_eq!(rel_error(&[1.0f64], &[1.0, 2.0]), f64::INFINITY);
    }

    #[test]
    fn paged_reference_reads_through_the_block_table() {
        // One request, 2 keys in physical block 1 (block size 2); the query at position 1
        // has score 0 against both keys -> average of the values.
        let layout = KvCacheLayout::new(2, 2, 1, 1).unwrap();
        let step = SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 1, num_new_tokens: 1, block_ids: vec![1] }] };
        let meta = MetadataBuilder::new(layout).build(&step).unwrap();
        let mut cache = HostKvCache::<f32>::zeros(layout);
        cache.value = vec![100.0, 100.0, 2.0, 6.0];
        let spec = AttnSpec::new(1, 1, 1);
        let out = paged_reference(&[0.0f32], &cache, &meta, &spec).unwrap();
        assert!(close(&out, &[4.0]), "{out:?}");
        // A caller's wrong q length or cache geometry is an error, not a panic.
        assert!(matches!(paged_reference(&[0.0f32, 1.0], &cache, &meta, &spec), Err(AttnError::LengthMismatch { .. })));
        assert!(matches!(paged_reference(&[0.0f32], &cache, &meta, &AttnSpec::new(2, 2, 1)), Err(AttnError::Shape(_))));
    }

    #[test]
    fn paged_reference_fp8_reads_byte_times_scale() {
        // As paged_reference_reads_through_the_block_table, with fp8 bytes: values 2 and 6
        // stored as 1.0 (0x38) and 3.0 (0x44) at V scale 2; the garbage block holds NaN
        // bytes (0x7F), which must not be read. Score 0 for both keys -> mean 4.
        let layout = KvCacheLayout::new(2, 2, 1, 1).unwrap().with_kv_dtype(crate::dtype::KvCacheDType::Fp8E4m3);
        let step = SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 1, num_new_tokens: 1, block_ids: vec![1] }] };
        let meta = MetadataBuilder::new(layout).build(&step).unwrap();
        let mut cache = HostKvCache::zeros_fp8(layout);
        cache.value = vec![0x7F, 0x7F, 0x38, 0x44];
        let spec = AttnSpec::new(1, 1, 1);
        let scales = KvScales::uniform(1, 0.5, 2.0);
        let out = paged_reference_fp8(&[0.0f32], &cache, &scales, &meta, &spec).unwrap();
        assert!(close(&out, &[4.0]), "{out:?}");
        // Keys 1 (0x38) and 3 (0x44) at K scale 0.5 -> 0.5 and 1.5; q = 2: scores 1 and 3.
        cache.key = vec![0, 0, 0x38, 0x44];
        let (out, lse) = paged_reference_fp8_lse(&[2.0f32], &cache, &scales, &meta, &spec).unwrap();
        let (e1, e3) = (1f64.exp(), 3f64.exp());
        assert!(close(&out, &[(2.0 * e1 + 6.0 * e3) / (e1 + e3)]), "{out:?}");
        assert!((lse[0] - (e1 + e3).ln()).abs() < 1e-12, "{lse:?}");
        // Bad scales are an error naming the head.
        let e = paged_reference_fp8(&[0.0f32], &cache, &KvScales::uniform(1, 0.0, 1.0), &meta, &spec).unwrap_err();
        assert!(e.to_string().contains("k scale of kv head 0"), "{e}");
    }

    #[test]
    fn paged_reference_fp8_equals_the_reference_over_the_dequantized_cache() {
        // Power-of-two scales: byte x scale is exact in f32, so dequantize::<f32> loses
        // nothing and both references compute the same numbers.
        let layout = KvCacheLayout::new(4, 4, 2, 8).unwrap().with_kv_dtype(crate::dtype::KvCacheDType::Fp8E4m3);
        let step = SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 5, num_new_tokens: 3, block_ids: vec![3, 1] }, RequestSchedule { num_computed_tokens: 2, num_new_tokens: 1, block_ids: vec![0] }] };
        let meta = MetadataBuilder::new(layout).build(&step).unwrap();
        let mut rng = crate::workload::Rng::new(3);
        let mut cache = HostKvCache::zeros_fp8(layout);
        for b in cache.key.iter_mut().chain(cache.value.iter_mut()) {
            *b = (rng.below(0x7E) as u8) | if rng.below(2) == 0 { 0x80 } else { 0 };
        }
        let scales = KvScales { k: vec![0.125, 0.5], v: vec![0.25, 0.0625] };
        let q: Vec<f32> = (0..4 * 4 * 8).map(|_| rng.uniform()).collect();
        let spec = AttnSpec::new(4, 2, 8);
        let want = paged_reference_lse(&q, &cache.dequantize::<f32>(&scales), &meta, &spec).unwrap();
        let got = paged_reference_fp8_lse(&q, &cache, &scales, &meta, &spec).unwrap();
        assert_eq!(got, want);
        assert!(got.0.iter().any(|&x| x != 0.0));
    }

    #[test]
    fn mla_one_key_gives_w_uv_c() {
        // One key: attention weight 1, so out = W_UV c. H = 1, R = 2, v_head_dim = 1,
        // W_UV = [1, 2], c = [3, 4] -> 11, in both forms.
        let spec = MlaSpec { num_q_heads: 1, kv_lora_rank: 2, qk_rope_head_dim: 1, qk_nope_head_dim: 1, v_head_dim: 1, scale: 1.0 };
        let x = MlaInputs {
            lq: 1,
            lk: 1,
            c_kv: &[3.0, 4.0],
            k_rope: &[0.5],
            q_nope: &[0.2],
            q_rope: &[0.1],
            w_uk: &[1.0, -1.0],
            w_uv: &[1.0, 2.0],
        };
        let m = Mask::full(1, 1);
        assert!(close(&mla_naive(&x, &spec, &m), &[11.0]));
        assert!(close(&mla_absorbed(&x, &spec, &m), &[11.0]));
        // Absorbed query: W_UK^T q_nope = [0.2, -0.2], then q_rope.
        assert!(close(&mla_absorb_query(&x, &spec), &[0.2, -0.2, 0.1]));
    }
}
