//! Invariants of the attention layer, checked on the CPU with proptest (they run in CI):
//!
//! a. paged online softmax (the CPU backend) == the dense f64 oracle, over random batches,
//!    block sizes, GQA ratios, head dims, permuted block tables, window, soft-cap, ALiBi;
//! b. chunked prefill == one-shot prefill, outputs and caches;
//! c. split-KV partial states merged in any order or tree == dense attention;
//! d. MLA absorbed == MLA naive, and the CPU MLA decode == the absorbed oracle;
//! e. the cache write stores exactly the step's tokens; padding slots write nothing;
//! f. a sink of minus infinity is no sink; chunked local attention is attention within each
//!    chunk (a request of chunks == one fresh request per chunk); a bidirectional layer ==
//!    the oracle's dense encoder attention.
//!
//! Inputs are uniform in [-1, 1] (never zero) from a small PRNG seeded by proptest; the
//! sizes are small so the file runs in seconds. Nothing is printed unless a case fails.

use attn_backends::backend::cpu::{self, CpuImpl, PartialState};
use attn_backends::metadata::{AttentionMetadata, MetadataBuilder, RequestSchedule, SchedulerOutput};
use attn_backends::oracle::{self, DenseShape, Mask, MlaInputs};
use attn_backends::spec::alibi_slopes;
use attn_backends::workload::{random_values, Rng};
use attn_backends::{AttentionImpl, AttnSpec, Element, HostKvCache, KvCacheLayout, MlaSpec};
use half::bf16;
use proptest::prelude::*;
use proptest::sample::select;
use std::collections::HashSet;

/// Input values from the project's SplitMix64 (`workload::Rng`), seeded by proptest.
trait Values {
    fn vec<T: Element>(&mut self, n: usize) -> Vec<T>;
    fn vec_f64(&mut self, n: usize) -> Vec<f64>;
}

impl Values for Rng {
    fn vec<T: Element>(&mut self, n: usize) -> Vec<T> {
        random_values(self, n)
    }
    fn vec_f64(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.uniform() as f64).collect()
    }
}

/// The layer's shape and score modifiers.
#[derive(Clone, Debug)]
struct Layer {
    block_size: usize,
    group: usize,
    hkv: usize,
    d: usize,
    window: Option<usize>,
    softcap: Option<f32>,
    alibi: bool,
    /// Scale 1 instead of 1/sqrt(d): larger scores, so the soft-cap bites.
    unit_scale: bool,
    /// Chunked local attention's chunk.
    chunk: Option<usize>,
    /// Attention sinks: head h's logit is `base + h / 4`.
    sinks: Option<f32>,
}

impl Layer {
    fn spec(&self) -> AttnSpec {
        let hq = self.hkv * self.group;
        let mut s = AttnSpec::new(hq, self.hkv, self.d);
        if self.unit_scale {
            s.scale = 1.0;
        }
        s.sliding_window = self.window;
        s.softcap = self.softcap;
        s.alibi_slopes = self.alibi.then(|| alibi_slopes(hq));
        s.chunk_size = self.chunk;
        if let Some(base) = self.sinks {
            s = s.with_sinks((0..hq).map(|h| base + h as f32 / 4.0).collect());
        }
        s
    }
}

fn layer(head_dims: Vec<usize>) -> impl Strategy<Value = Layer> {
    (
        select(vec![1usize, 2, 4, 8, 16]),
        select(vec![1usize, 2, 4]),
        1usize..=2,
        select(head_dims),
        prop::option::of(1usize..=12),
        prop::option::of(select(vec![0.5f32, 2.0, 30.0])),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(1usize..=20),
        prop::option::of(select(vec![-3.0f32, 0.0, 1.5])),
    )
        .prop_map(|(block_size, group, hkv, d, window, softcap, alibi, unit_scale, chunk, sinks)| Layer {
            block_size,
            group,
            hkv,
            d,
            window,
            softcap,
            alibi,
            unit_scale,
            chunk,
            sinks,
        })
}

/// Assigns each request `(computed, new)` the blocks it needs, from a random permutation of
/// all block ids (with `spare` unused blocks), and returns the layout and the step.
fn schedule(rng: &mut Rng, reqs: &[(usize, usize)], l: &Layer, spare: usize) -> (KvCacheLayout, SchedulerOutput) {
    let bs = l.block_size;
    let needed: Vec<usize> = reqs.iter().map(|&(c, n)| (c + n).div_ceil(bs)).collect();
    let num_blocks = needed.iter().sum::<usize>() + spare;
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    rng.shuffle(&mut ids);
    let mut next = 0;
    let requests = reqs
        .iter()
        .zip(&needed)
        .map(|(&(c, n), &nb)| {
            let block_ids = ids[next..next + nb].to_vec();
            next += nb;
            RequestSchedule { num_computed_tokens: c, num_new_tokens: n, block_ids }
        })
        .collect();
    let layout = KvCacheLayout::new(num_blocks, bs, l.hkv, l.d).unwrap();
    (layout, SchedulerOutput { requests })
}

/// A cache of random contents (stale data in unused slots, contexts in used ones).
fn random_cache<T: Element>(rng: &mut Rng, layout: KvCacheLayout) -> HostKvCache<T> {
    HostKvCache { layout, key: rng.vec(layout.elements()), value: rng.vec(layout.elements()) }
}

/// The test's own cache write: token `t`'s rows to `slot_mapping[t]` unless negative.
fn write_expected<T: Element>(cache: &mut HostKvCache<T>, k: &[T], v: &[T], meta: &AttentionMetadata) {
    let row = cache.layout.token_stride();
    for (t, &slot) in meta.slot_mapping().iter().enumerate() {
        if slot >= 0 {
            let o = slot as usize * row;
            cache.key[o..o + row].copy_from_slice(&k[t * row..][..row]);
            cache.value[o..o + row].copy_from_slice(&v[t * row..][..row]);
        }
    }
}

fn to_f64<T: Element>(x: &[T]) -> Vec<f64> {
    x.iter().map(|v| v.to_f64()).collect()
}

/// One random batch through `CpuImpl` (with `num_splits`) and through the oracle.
/// Returns (backend output, oracle output).
fn paged_vs_oracle<T: Element>(seed: u64, num_reqs: usize, l: &Layer, num_splits: usize) -> (Vec<T>, Vec<f64>) {
    paged_vs_oracle_of(seed, num_reqs, l, num_splits, l.spec())
}

/// [`paged_vs_oracle`] for a layer of `spec` (of `l`'s shape).
fn paged_vs_oracle_of<T: Element>(seed: u64, num_reqs: usize, l: &Layer, num_splits: usize, spec: AttnSpec) -> (Vec<T>, Vec<f64>) {
    let mut rng = Rng::new(seed);
    let reqs: Vec<(usize, usize)> = (0..num_reqs)
        .map(|_| {
            let ctx = rng.range(0, 48);
            let new = if rng.below(3) == 0 { 1 } else { rng.range(1, 8) };
            (ctx, new)
        })
        .collect();
    let spare = rng.range(0, 3);
    let (layout, step) = schedule(&mut rng, &reqs, l, spare);
    let meta = MetadataBuilder::new(layout).build(&step).unwrap();
    let n = meta.num_tokens();
    let cache = random_cache::<T>(&mut rng, layout);
    let q: Vec<T> = rng.vec(n * spec.num_q_heads * l.d);
    let k: Vec<T> = rng.vec(n * l.hkv * l.d);
    let v: Vec<T> = rng.vec(n * l.hkv * l.d);
    let mut expected_cache = cache.clone();
    write_expected(&mut expected_cache, &k, &v, &meta);
    let reference = oracle::paged_reference(&q, &expected_cache, &meta, &spec).unwrap();

    let mut attn = CpuImpl::with_cache(spec, cache).unwrap();
    let mut out = vec![T::from_f32(f32::NAN); q.len()];
    attn.forward_split(&q, &k, &v, &meta, &mut out, num_splits).unwrap();
    (out, reference)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(64))]

    /// a. Paged online softmax in f32 == the dense f64 oracle.
    #[test]
    fn paged_f32_matches_oracle(seed in any::<u64>(), num_reqs in 1usize..=4, l in layer(vec![8, 16, 64])) {
        let (out, reference) = paged_vs_oracle::<f32>(seed, num_reqs, &l, 1);
        let err = oracle::rel_error(&out, &reference);
        prop_assert!(err < 1e-4, "rel error {err:e} for {l:?}");
    }

    /// a. bf16: the error is at most 2x that of the exact result rounded to bf16, + 1e-3
    /// (the inputs are bf16 already; f32 accumulation inside).
    #[test]
    fn paged_bf16_matches_oracle(seed in any::<u64>(), num_reqs in 1usize..=4, l in layer(vec![8, 16, 64])) {
        let (out, reference) = paged_vs_oracle::<bf16>(seed, num_reqs, &l, 1);
        let lowp: Vec<f64> = reference.iter().map(|&x| bf16::from_f64(x).to_f64()).collect();
        let bound = 2.0 * oracle::rel_error(&lowp, &reference) + 1e-3;
        let err = oracle::rel_error(&to_f64(&out), &reference);
        prop_assert!(err <= bound, "rel error {err:e} > bound {bound:e} for {l:?}");
    }

    /// c. The split-KV forward (partition + merge per row) == the oracle, 1..=8 splits.
    #[test]
    fn split_forward_matches_oracle(seed in any::<u64>(), num_reqs in 1usize..=3, l in layer(vec![8, 16]), splits in 1usize..=8) {
        let (out, reference) = paged_vs_oracle::<f32>(seed, num_reqs, &l, splits);
        let err = oracle::rel_error(&out, &reference);
        prop_assert!(err < 1e-4, "rel error {err:e} with {splits} splits for {l:?}");
    }

    /// b. Chunked prefill == one-shot prefill: the same request's tokens in one step or in
    /// random chunks (with another request's decodes interleaved) give the same outputs and
    /// the same cache.
    #[test]
    fn chunked_prefill_equals_one_shot(seed in any::<u64>(), l in layer(vec![8, 16]), distractor in any::<bool>()) {
        let mut rng = Rng::new(seed);
        let total = rng.range(1, 24);
        let mut chunks = Vec::new();
        let mut done = 0;
        while done < total {
            let c = rng.range(1, (total - done).min(8));
            chunks.push((done, c));
            done += c;
        }
        let dctx = rng.range(0, 10);
        let mut reqs = vec![(0, total)];
        if distractor {
            reqs.push((dctx, chunks.len()));
        }
        let spare = rng.range(0, 2);
        let (layout, full) = schedule(&mut rng, &reqs, &l, spare);
        let main_blocks = full.requests[0].block_ids.clone();
        let spec = l.spec();
        let (hq, hkv, d) = (spec.num_q_heads, spec.num_kv_heads, spec.head_dim);
        let init = random_cache::<f32>(&mut rng, layout);
        let q: Vec<f32> = rng.vec(total * hq * d);
        let k: Vec<f32> = rng.vec(total * hkv * d);
        let v: Vec<f32> = rng.vec(total * hkv * d);

        // One shot.
        let mut one = CpuImpl::with_cache(spec.clone(), init.clone()).unwrap();
        let step = SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 0, num_new_tokens: total, block_ids: main_blocks.clone() }] };
        let meta = MetadataBuilder::new(layout).build(&step).unwrap();
        let mut out_one = vec![f32::NAN; q.len()];
        one.forward(&q, &k, &v, &meta, &mut out_one).unwrap();

        // Chunks, the distractor's decode before or after the main request's rows.
        let mut chunked = CpuImpl::with_cache(spec.clone(), init.clone()).unwrap();
        let mut out_chunked = vec![f32::NAN; q.len()];
        let mut distractor_slots = HashSet::new();
        for (i, &(start, len)) in chunks.iter().enumerate() {
            let main = RequestSchedule { num_computed_tokens: start, num_new_tokens: len, block_ids: main_blocks.clone() };
            let rows = |x: &[f32], h: usize| x[start * h * d..(start + len) * h * d].to_vec();
            let (mut sq, mut sk, mut sv) = (rows(&q, hq), rows(&k, hkv), rows(&v, hkv));
            let mut requests = vec![main];
            let mut main_row = 0;
            if distractor {
                let dr = RequestSchedule { num_computed_tokens: dctx + i, num_new_tokens: 1, block_ids: full.requests[1].block_ids.clone() };
                let (dq, dk, dv): (Vec<f32>, Vec<f32>, Vec<f32>) = (rng.vec(hq * d), rng.vec(hkv * d), rng.vec(hkv * d));
                if rng.below(2) == 0 {
                    requests.insert(0, dr);
                    main_row = 1;
                    sq.splice(0..0, dq);
                    sk.splice(0..0, dk);
                    sv.splice(0..0, dv);
                } else {
                    requests.push(dr);
                    sq.extend(dq);
                    sk.extend(dk);
                    sv.extend(dv);
                }
            }
            let meta = MetadataBuilder::new(layout).build(&SchedulerOutput { requests }).unwrap();
            if distractor {
                let t = if main_row == 1 { 0 } else { len };
                distractor_slots.insert(meta.slot_mapping()[t] as usize);
            }
            let mut out = vec![f32::NAN; sq.len()];
            chunked.forward(&sq, &sk, &sv, &meta, &mut out).unwrap();
            out_chunked[start * hq * d..(start + len) * hq * d].copy_from_slice(&out[main_row * hq * d..][..len * hq * d]);
        }

        for (i, (a, b)) in out_one.iter().zip(&out_chunked).enumerate() {
            prop_assert!((a - b).abs() <= 1e-5, "element {i}: one-shot {a} vs chunked {b}, chunks {chunks:?}");
        }
        let (c1, c2) = (one.cache_snapshot().unwrap(), chunked.cache_snapshot().unwrap());
        let row = layout.token_stride();
        for slot in 0..layout.capacity_slots() {
            if distractor_slots.contains(&slot) {
                continue;
            }
            let r = slot * row..(slot + 1) * row;
            prop_assert_eq!(&c1.key[r.clone()], &c2.key[r.clone()], "key slot {}", slot);
            prop_assert_eq!(&c1.value[r.clone()], &c2.value[r], "value slot {}", slot);
        }
    }

    /// c. Split-KV states: any partition of a row's visible keys into 1..=8 parts (empty
    /// parts allowed), merged in a shuffled order or as a random tree, == dense attention.
    #[test]
    fn split_states_merge_in_any_order(seed in any::<u64>(), l in layer(vec![8, 16]), parts in 1usize..=8) {
        let mut rng = Rng::new(seed);
        let seq_len = rng.range(1, 80);
        let (layout, step) = schedule(&mut rng, &[(seq_len - 1, 1)], &l, 1);
        let meta = MetadataBuilder::new(layout).build(&step).unwrap();
        let spec = l.spec();
        let (hq, hkv, d) = (spec.num_q_heads, spec.num_kv_heads, spec.head_dim);
        let cache = random_cache::<f32>(&mut rng, layout);
        let q: Vec<f32> = rng.vec(hq * d);
        let pos = seq_len - 1;

        // The oracle for this one query row, with its log-sum-exp.
        let mut kd = Vec::new();
        let mut vd = Vec::new();
        for j in 0..seq_len {
            for h in 0..hkv {
                kd.extend(to_f64(cache.key_row(meta.slot_of(0, j), h)));
                vd.extend(to_f64(cache.value_row(meta.slot_of(0, j), h)));
            }
        }
        let spec = AttnSpec { chunk_size: None, sinks: Default::default(), ..spec };
        let mut mask = Mask::causal(&[pos], seq_len, spec.sliding_window);
        if let Some(s) = &spec.alibi_slopes {
            mask = mask.with_alibi(&s.iter().map(|&x| x as f64).collect::<Vec<_>>(), &[pos]);
        }
        let shape = DenseShape { lq: 1, lk: seq_len, hq, hkv, d, dv: d, scale: spec.scale as f64, softcap: spec.softcap.map(f64::from) };
        let (want, want_lse) = oracle::attention(&to_f64(&q), &kd, &vd, &shape, &mask);

        let keys = spec.visible_keys(pos, seq_len);
        for h in 0..hq {
            // Random cut points (repeats make empty partitions).
            let mut cuts: Vec<usize> = (1..parts).map(|_| rng.range(keys.start, keys.end)).collect();
            cuts.sort();
            let bounds: Vec<usize> = std::iter::once(keys.start).chain(cuts).chain(std::iter::once(keys.end)).collect();
            let qrow = &q[h * d..(h + 1) * d];
            let mut states: Vec<PartialState> = bounds
                .windows(2)
                .map(|w| cpu::attend_partition(qrow, pos, h, &spec, &cache, meta.block_ids(0), w[0]..w[1]))
                .collect();
            rng.shuffle(&mut states);
            let flat = cpu::merge(&states);
            let mut tree = states;
            while tree.len() > 1 {
                let i = rng.below(tree.len());
                let a = tree.swap_remove(i);
                let j = rng.below(tree.len());
                let b = tree.swap_remove(j);
                tree.push(cpu::merge(&[a, b]));
            }
            let want_h = &want[h * d..(h + 1) * d];
            for (name, st) in [("flat", &flat), ("tree", &tree[0])] {
                let err = oracle::rel_error(&st.finish(), want_h);
                prop_assert!(err < 1e-5, "{name} merge of {parts} parts, head {h}: rel error {err:e}, bounds {bounds:?}");
                let lse_err = (st.lse() as f64 - want_lse[h]).abs();
                prop_assert!(lse_err < 1e-4 * want_lse[h].abs().max(1.0), "{name} lse {} vs {}", st.lse(), want_lse[h]);
            }
        }
    }

    /// d. MLA: the absorbed form == the naive form (f64), and the CPU MLA decode (f32) ==
    /// the absorbed oracle over the same paged latent cache.
    #[test]
    fn mla_absorbed_equals_naive(
        seed in any::<u64>(),
        heads in 1usize..=4,
        rank in select(vec![4usize, 16, 32]),
        rope in select(vec![2usize, 8]),
        nope in select(vec![4usize, 8]),
        dv in select(vec![4usize, 8]),
        block_size in select(vec![1usize, 4, 16]),
        num_reqs in 1usize..=3,
    ) {
        let mut rng = Rng::new(seed);
        let spec = MlaSpec { num_q_heads: heads, kv_lora_rank: rank, qk_rope_head_dim: rope, qk_nope_head_dim: nope, v_head_dim: dv, scale: 1.0 / ((nope + rope) as f32).sqrt() };
        let w = spec.latent_dim();
        let w_uk = rng.vec_f64(heads * nope * rank);
        let w_uv = rng.vec_f64(heads * dv * rank);
        let reqs: Vec<(usize, usize)> = (0..num_reqs).map(|_| (rng.range(0, 12), rng.range(1, 4))).collect();
        let l = Layer { block_size, group: 1, hkv: 1, d: w, window: None, softcap: None, alibi: false, unit_scale: false, chunk: None, sinks: None };
        let (layout, step) = schedule(&mut rng, &reqs, &l, 0);
        let meta = MetadataBuilder::new(layout).build(&step).unwrap();
        let mut cache = HostKvCache::<f32>::zeros(layout);
        let mut q_latent = Vec::new();
        let mut want_latent = Vec::new();
        for (r, &(ctx, new)) in reqs.iter().enumerate() {
            let (lq, lk) = (new, ctx + new);
            let (c_kv, k_rope) = (rng.vec_f64(lk * rank), rng.vec_f64(lk * rope));
            let (q_nope, q_rope) = (rng.vec_f64(lq * heads * nope), rng.vec_f64(lq * heads * rope));
            let x = MlaInputs { lq, lk, c_kv: &c_kv, k_rope: &k_rope, q_nope: &q_nope, q_rope: &q_rope, w_uk: &w_uk, w_uv: &w_uv };
            let positions: Vec<usize> = (ctx..ctx + new).collect();
            let mask = Mask::causal(&positions, lk, None);
            let naive = oracle::mla_naive(&x, &spec, &mask);
            let absorbed = oracle::mla_absorbed(&x, &spec, &mask);
            let err = oracle::rel_error(&absorbed, &naive);
            prop_assert!(err < 1e-10, "absorbed vs naive: rel error {err:e}");

            // The request's latent rows into its cache slots, its absorbed query rows out.
            let rows = oracle::mla_latent_rows(&x, &spec);
            for j in 0..lk {
                let o = meta.slot_of(r, j) * w;
                for (dst, &src) in cache.key[o..o + w].iter_mut().zip(&rows[j * w..(j + 1) * w]) {
                    *dst = src as f32;
                }
            }
            let ql = oracle::mla_absorb_query(&x, &spec);
            want_latent.extend(oracle::mla_latent_attention(&ql, &rows, lq, lk, &spec, &mask));
            q_latent.extend(ql.iter().map(|&x| x as f32));
        }
        let got = cpu::mla_decode_cpu(&q_latent, &cache, &meta, &spec).unwrap();
        let err = oracle::rel_error(&got, &want_latent);
        prop_assert!(err < 1e-4, "mla_decode_cpu vs absorbed oracle: rel error {err:e}");
        let paged = oracle::paged_mla_reference(&q_latent, &cache, &meta, &spec).unwrap();
        let err = oracle::rel_error(&got, &paged);
        prop_assert!(err < 1e-4, "mla_decode_cpu vs paged MLA reference: rel error {err:e}");
    }

    /// e. The cache write, f32 and bf16: every slot of the slot mapping holds its token's
    /// K/V; every other element keeps its sentinel; padding tokens (slot -1) write nothing.
    #[test]
    fn cache_write_stores_exactly_the_new_tokens(seed in any::<u64>(), l in layer(vec![8, 16]), num_reqs in 1usize..=4, pad_one_in in 1usize..=4) {
        check_cache_write::<f32>(seed, &l, num_reqs, pad_one_in)?;
        check_cache_write::<bf16>(seed, &l, num_reqs, pad_one_in)?;
    }
}

fn check_cache_write<T: Element + PartialEq>(seed: u64, l: &Layer, num_reqs: usize, pad_one_in: usize) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let reqs: Vec<(usize, usize)> = (0..num_reqs).map(|_| (rng.range(0, 12), rng.range(1, 6))).collect();
    let spare = rng.range(0, 2);
    let (layout, step) = schedule(&mut rng, &reqs, l, spare);
    let built = MetadataBuilder::new(layout).build(&step).unwrap();
    // Some tokens become padding: slot -1 (pad_one_in = 1 pads none).
    let slots: Vec<i64> = built.slot_mapping().iter().map(|&s| if pad_one_in > 1 && rng.below(pad_one_in) == 0 { -1 } else { s }).collect();
    let meta = AttentionMetadata::from_parts(
        layout,
        built.query_start_loc().to_vec(),
        built.seq_lens().to_vec(),
        built.block_table().to_vec(),
        built.block_table_stride(),
        slots.clone(),
    )
    .unwrap();
    // Sentinels outside the inputs' range [-1, 1]: keys in [2, 26], values in [-26, -2].
    let sentinel = |i: usize, sign: f32| T::from_f32(sign * (2.0 + (i % 97) as f32 * 0.25));
    let n = layout.elements();
    let cache = HostKvCache { layout, key: (0..n).map(|i| sentinel(i, 1.0)).collect(), value: (0..n).map(|i| sentinel(i, -1.0)).collect() };
    let spec = l.spec();
    let t = meta.num_tokens();
    let q: Vec<T> = rng.vec(t * spec.num_q_heads * l.d);
    let k: Vec<T> = rng.vec(t * l.hkv * l.d);
    let v: Vec<T> = rng.vec(t * l.hkv * l.d);
    let mut attn = CpuImpl::with_cache(spec, cache).unwrap();
    let mut out = vec![T::default(); q.len()];
    attn.forward(&q, &k, &v, &meta, &mut out).unwrap();
    let got = attn.cache_snapshot().unwrap();

    let row = layout.token_stride();
    let mut written = vec![None; layout.capacity_slots()];
    for (tok, &s) in slots.iter().enumerate() {
        if s >= 0 {
            written[s as usize] = Some(tok);
        }
    }
    for (slot, w) in written.iter().enumerate() {
        for e in 0..row {
            let i = slot * row + e;
            let (want_k, want_v) = match w {
                Some(tok) => (k[tok * row + e], v[tok * row + e]),
                None => (sentinel(i, 1.0), sentinel(i, -1.0)),
            };
            prop_assert!(got.key[i] == want_k, "{:?} key slot {slot} element {e}: {:?}, want {:?} (token {w:?})", T::DTYPE, got.key[i], want_k);
            prop_assert!(got.value[i] == want_v, "{:?} value slot {slot} element {e}: {:?}, want {:?} (token {w:?})", T::DTYPE, got.value[i], want_v);
        }
    }
    Ok(())
}

/// d. At DeepSeek-V3's latent width (512 + 64), several heads, a chunked-prefill row mix.
#[test]
fn mla_decode_cpu_deepseek_dims() {
    let mut rng = Rng::new(7);
    let spec = MlaSpec { num_q_heads: 4, kv_lora_rank: 512, qk_rope_head_dim: 64, qk_nope_head_dim: 128, v_head_dim: 128, scale: 1.0 / 192f32.sqrt() };
    let w = spec.latent_dim();
    let layout = KvCacheLayout::new(8, 16, 1, w).unwrap();
    let step = SchedulerOutput {
        requests: vec![
            RequestSchedule { num_computed_tokens: 37, num_new_tokens: 1, block_ids: vec![5, 2, 7] },
            RequestSchedule { num_computed_tokens: 3, num_new_tokens: 3, block_ids: vec![1] },
        ],
    };
    let meta = MetadataBuilder::new(layout).build(&step).unwrap();
    let cache = HostKvCache { layout, key: rng.vec::<bf16>(layout.elements()), value: vec![bf16::from_f32(f32::NAN); layout.elements()] };
    let q: Vec<bf16> = rng.vec(meta.num_tokens() * 4 * w);
    let got = cpu::mla_decode_cpu(&q, &cache, &meta, &spec).unwrap();
    let want = oracle::paged_mla_reference(&q, &cache, &meta, &spec).unwrap();
    let err = oracle::rel_error(&got, &want);
    assert!(err < 1e-4, "rel error {err:e}");
}

proptest! {
    #![proptest_config(config(64))]

    /// The builder's maps follow the schedule, computed here independently: query_start_loc
    /// is the prefix sum of new tokens, seq_len = cached + new, the block table row is the
    /// request's first ceil(seq_len / block_size) block ids, and position p of request r is
    /// written at block_ids[p / bs] * bs + p % bs. (The oracle reads keys through these maps,
    /// so they are pinned here rather than trusted.)
    #[test]
    fn metadata_maps_follow_the_schedule(seed in any::<u64>(), num_reqs in 1usize..=6, bs_log2 in 0u32..=5) {
        let bs = 1usize << bs_log2;
        let mut rng = Rng::new(seed | 1);
        let reqs: Vec<(usize, usize)> = (0..num_reqs).map(|_| (rng.range(0, 40), rng.range(1, 20))).collect();
        let num_blocks: usize = reqs.iter().map(|&(c, n)| (c + n).div_ceil(bs)).sum::<usize>() + 3;
        let mut pool: Vec<u32> = (0..num_blocks as u32).collect();
        rng.shuffle(&mut pool);
        let mut next = 0;
        let requests: Vec<RequestSchedule> = reqs.iter().map(|&(c, n)| {
            let k = (c + n).div_ceil(bs) + rng.range(0, 2); // sometimes a spare block id
            let ids = pool[next.min(pool.len())..(next + k).min(pool.len())].to_vec();
            next += k;
            RequestSchedule { num_computed_tokens: c, num_new_tokens: n, block_ids: ids }
        }).collect();
        prop_assume!(requests.iter().zip(&reqs).all(|(r, &(c, n))| r.block_ids.len() >= (c + n).div_ceil(bs)));
        let layout = KvCacheLayout::new(num_blocks, bs, 1, 8).unwrap();
        let meta = MetadataBuilder::new(layout).build(&SchedulerOutput { requests: requests.clone() }).unwrap();
        let mut start = 0i32;
        let mut slots = Vec::new();
        for (r, req) in requests.iter().enumerate() {
            let seq = req.num_computed_tokens + req.num_new_tokens;
            prop_assert_eq!(meta.query_start_loc()[r], start);
            start += req.num_new_tokens as i32;
            prop_assert_eq!(meta.seq_lens()[r] as usize, seq);
            let row = &meta.block_ids(r)[..seq.div_ceil(bs)];
            let want: Vec<i32> = req.block_ids[..seq.div_ceil(bs)].iter().map(|&b| b as i32).collect();
            prop_assert_eq!(row, &want[..]);
            for p in req.num_computed_tokens..seq {
                slots.push((req.block_ids[p / bs] as usize * bs + p % bs) as i64);
            }
        }
        prop_assert_eq!(*meta.query_start_loc().last().unwrap(), start);
        prop_assert_eq!(meta.slot_mapping(), &slots[..]);
    }
}

/// A fresh prefill of `lens` requests through `CpuImpl` of `spec`, cache in order: the output.
fn fresh_prefill(spec: &AttnSpec, lens: &[usize], q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    let l = Layer { block_size: 4, group: 1, hkv: spec.num_kv_heads, d: spec.head_dim, window: None, softcap: None, alibi: false, unit_scale: false, chunk: None, sinks: None };
    let reqs: Vec<(usize, usize)> = lens.iter().map(|&n| (0, n)).collect();
    let (layout, step) = schedule(&mut Rng::new(7), &reqs, &l, 0);
    let meta = MetadataBuilder::new(layout).build(&step).unwrap();
    let mut attn = CpuImpl::new(spec.clone(), layout).unwrap();
    let mut out = vec![f32::NAN; q.len()];
    attn.forward(q, k, v, &meta, &mut out).unwrap();
    out
}

proptest! {
    #![proptest_config(config(32))]

    /// f. Sinks of -inf change nothing, bitwise, on every row.
    #[test]
    fn a_sink_of_minus_infinity_is_no_sink(seed in any::<u64>(), num_reqs in 1usize..=3, l in layer(vec![8, 16]), splits in 1usize..=3) {
        let l = Layer { sinks: None, ..l };
        let (plain, _) = paged_vs_oracle::<f32>(seed, num_reqs, &l, splits);
        let hq = l.spec().num_q_heads;
        let (with, _) = paged_vs_oracle_of::<f32>(seed, num_reqs, &l, splits, l.spec().with_sinks(vec![f32::NEG_INFINITY; hq]));
        prop_assert_eq!(plain.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), with.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    }

    /// f. Chunked local attention is attention within each chunk: one fresh request of `len`
    /// tokens in chunks of `c` gives the outputs of one fresh request per chunk without
    /// chunking (ALiBi sees only key - query distances, so it may be on).
    #[test]
    fn chunked_attention_is_attention_within_each_chunk(seed in any::<u64>(), len in 1usize..=40, c in 1usize..=12, alibi in any::<bool>(), sinks in any::<bool>()) {
        let mut rng = Rng::new(seed);
        let (hq, hkv, d) = (4, 2, 8);
        let mut base = AttnSpec::new(hq, hkv, d);
        base.alibi_slopes = alibi.then(|| alibi_slopes(hq));
        if sinks {
            base = base.with_sinks(vec![0.5, -1.0, 2.0, 0.0]);
        }
        let chunked = AttnSpec { chunk_size: Some(c), ..base.clone() };
        let q: Vec<f32> = rng.vec(len * hq * d);
        let k: Vec<f32> = rng.vec(len * hkv * d);
        let v: Vec<f32> = rng.vec(len * hkv * d);
        let one = fresh_prefill(&chunked, &[len], &q, &k, &v);
        let pieces: Vec<usize> = (0..len).step_by(c).map(|s| c.min(len - s)).collect();
        let each = fresh_prefill(&base, &pieces, &q, &k, &v);
        for (i, (a, b)) in one.iter().zip(&each).enumerate() {
            prop_assert!((a - b).abs() <= 1e-6, "element {i}: chunked {a} vs per-chunk {b} (len {len}, chunk {c})");
        }
    }

    /// f. A bidirectional (encoder) layer on the CPU == the oracle's dense encoder attention,
    /// ragged requests, GQA, sinks and ALiBi; nothing is written to the cache.
    #[test]
    fn bidirectional_matches_oracle(seed in any::<u64>(), lens in prop::collection::vec(1usize..=20, 1..=3), group in select(vec![1usize, 2, 4]), alibi in any::<bool>(), sinks in any::<bool>()) {
        let mut rng = Rng::new(seed);
        let (hkv, d) = (2, 16);
        let hq = hkv * group;
        let mut spec = AttnSpec::new(hq, hkv, d);
        spec.causal = false;
        spec.alibi_slopes = alibi.then(|| alibi_slopes(hq));
        if sinks {
            spec = spec.with_sinks((0..hq).map(|h| h as f32 - 1.0).collect());
        }
        let n: usize = lens.iter().sum();
        let q: Vec<f32> = rng.vec(n * hq * d);
        let k: Vec<f32> = rng.vec(n * hkv * d);
        let v: Vec<f32> = rng.vec(n * hkv * d);
        let out = fresh_prefill(&spec, &lens, &q, &k, &v);
        let mut qsl = vec![0i32];
        for &l in &lens { qsl.push(qsl.last().unwrap() + l as i32); }
        let reference = oracle::bidirectional_reference(&q, &k, &v, &qsl, &spec).unwrap();
        let err = oracle::rel_error(&out, &reference);
        prop_assert!(err < 1e-5, "rel error {err:e}");
    }
}
