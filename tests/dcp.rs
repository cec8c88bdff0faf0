//! Context parallelism on the CPU (runs in CI): the shard arithmetic, sharded == unsharded
//! == the f64 oracle for any group and interleave over ragged batches (decodes and chunked
//! prefills, GQA, sinks, fp8 caches, MLA), and the typed errors of bad groups, shards and
//! layers. The GPU's DCP cases are in `tests/gpu.rs` (`dcp_*`).

use attn_backends::dcp::check::{self, DcpCase, DcpPath};
use attn_backends::dcp::{merge_ranks_host, DcpAttention, DcpGroup};
use attn_backends::metadata::{RequestSchedule, SchedulerOutput};
use attn_backends::{AttnError, AttnSpec, BackendName, KvCacheDType, KvCacheLayout, MlaSpec};
use proptest::prelude::*;
use proptest::sample::select;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every position has one owner, each owner's positions get consecutive local indices in
    /// order, and `local_len` counts them.
    #[test]
    fn shard_arithmetic(ranks in 1usize..9, interleave in 1usize..70, len in 0usize..1500) {
        let g = DcpGroup::new(ranks, interleave).unwrap();
        let total: usize = (0..ranks).map(|r| g.local_len(r, len)).sum();
        prop_assert_eq!(total, len);
        let mut next = vec![0usize; ranks];
        for p in 0..len {
            let r = g.owner(p);
            prop_assert_eq!(g.local_index(p), next[r], "position {} on rank {}", p, r);
            next[r] += 1;
            for q in 0..ranks {
                prop_assert_eq!(g.local_len(q, p + 1) - g.local_len(q, p), usize::from(q == r));
            }
        }
        // Rank 0 holds the most keys: the shared block table is sized by it.
        prop_assert!((0..ranks).all(|r| g.local_len(r, len) <= g.local_len(0, len)));
    }
}

fn requests() -> impl Strategy<Value = Vec<(usize, usize)>> {
    prop::collection::vec((0usize..90, select(vec![1usize, 1, 2, 5, 9])), 1..5)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    /// A step over N ranks (any interleave) == the unsharded CPU layer == the oracle over
    /// the whole unsharded context; outputs and log-sum-exps.
    #[test]
    fn sharded_equals_unsharded_and_the_oracle(
        ranks in 1usize..6,
        interleave in select(vec![1usize, 2, 3, 16]),
        block_size in select(vec![4usize, 8, 16]),
        reqs in requests(),
        sinks in any::<bool>(),
        fp8 in any::<bool>(),
        window in prop::option::of(1usize..40),
        chunk in prop::option::of(select(vec![3usize, 8, 16, 50])),
        seed in any::<u64>(),
    ) {
        let mut spec = AttnSpec::new(4, 2, 16);
        if sinks {
            spec = spec.with_sinks(vec![0.5, -1.0, 2.0, f32::NEG_INFINITY]);
        }
        // Windows and chunks stay global (any of them, with any group).
        spec.sliding_window = window;
        spec.chunk_size = chunk;
        let kv_dtype = if fp8 { KvCacheDType::Fp8E4m3 } else { KvCacheDType::Auto };
        let case = DcpCase { group: DcpGroup::new(ranks, interleave).unwrap(), spec, block_size, requests: reqs, kv_dtype, seed };
        let r = check::run::<f32>(&case, BackendName::Cpu, None, DcpPath::Host).unwrap();
        prop_assert!(r.rel_err < 1e-5, "vs oracle: {:e} ({:?})", r.rel_err, case);
        prop_assert!(r.vs_unsharded < 1e-5, "vs unsharded: {:e}", r.vs_unsharded);
        prop_assert!(r.lse_err < 1e-4, "lse: {:e}", r.lse_err);
        prop_assert_eq!(r.kv_tokens.iter().sum::<usize>(), case.requests.iter().map(|&(c, n)| c + n).sum::<usize>());
    }

    /// The same for an MLA layer (latent cache, absorbed queries), bf16 or fp8 rows.
    #[test]
    fn sharded_mla_equals_the_oracle(ranks in 1usize..5, interleave in select(vec![1usize, 4, 16]), reqs in requests(), fp8 in any::<bool>(), seed in any::<u64>()) {
        // DeepSeek's latent row (512 + 64: the fp8 rows' 128-value tiles), 4 heads.
        let m = MlaSpec { num_q_heads: 4, kv_lora_rank: 512, qk_rope_head_dim: 64, qk_nope_head_dim: 128, v_head_dim: 128, scale: 0.07 };
        let spec = AttnSpec { mla: Some(m), ..AttnSpec::new(4, 4, 192) };
        let kv_dtype = if fp8 { KvCacheDType::Fp8E4m3 } else { KvCacheDType::Auto };
        let case = DcpCase { group: DcpGroup::new(ranks, interleave).unwrap(), spec, block_size: 16, requests: reqs, kv_dtype, seed };
        let r = check::run::<half::bf16>(&case, BackendName::Cpu, None, DcpPath::Host).unwrap();
        // bf16 outputs: the rounding of the output itself.
        prop_assert!(r.rel_err < 1e-2, "vs oracle: {:e} ({:?})", r.rel_err, case);
        prop_assert!(r.vs_unsharded < 1e-2, "vs unsharded: {:e}", r.vs_unsharded);
    }
}

#[test]
fn one_rank_is_the_plain_layer() {
    let case = DcpCase { group: DcpGroup::new(1, 1).unwrap(), spec: AttnSpec::new(8, 2, 32), block_size: 16, requests: vec![(100, 1), (0, 7), (33, 4)], kv_dtype: KvCacheDType::Auto, seed: 7 };
    let r = check::run::<f32>(&case, BackendName::Cpu, None, DcpPath::Host).unwrap();
    assert!(r.vs_unsharded < 1e-6 && r.rel_err < 1e-5, "{r:?}");
}

#[test]
fn merge_of_ranks_skips_ranks_that_saw_nothing_and_joins_the_sink_once() {
    // Two ranks, one row of 2 dims: rank 0 saw keys (lse 0, out [1, 2]); rank 1 saw none
    // (its row is garbage and must be skipped).
    let (o0, o1) = ([1.0f32, 2.0], [f32::NAN, f32::NAN]);
    let (l0, l1) = ([0.0f32], [f32::NAN]);
    let mut out = [0.0f32; 2];
    let mut lse = [0.0f32; 1];
    merge_ranks_host(&[&o0, &o1], &[&l0, &l1], &[3, 0], 1, 2, None, &mut out, &mut lse);
    assert_eq!((out, lse), ([1.0, 2.0], [0.0]));
    // A sink of logit 0 beside a state of lse 0: weights 1/2 each; lse ln 2.
    merge_ranks_host(&[&o0, &o1], &[&l0, &l1], &[3, 0], 1, 2, Some(&[0.0]), &mut out, &mut lse);
    assert!((out[0] - 0.5).abs() < 1e-6 && (out[1] - 1.0).abs() < 1e-6 && (lse[0] - 2f32.ln()).abs() < 1e-6, "{out:?} {lse:?}");
    // Equal lse on both ranks: the mean of the outputs.
    merge_ranks_host(&[&[1.0, 3.0], &[3.0, 5.0]], &[&[0.7], &[0.7]], &[1, 1], 1, 2, None, &mut out, &mut lse);
    assert!((out[0] - 2.0).abs() < 1e-6 && (out[1] - 4.0).abs() < 1e-6 && (lse[0] - (0.7 + 2f32.ln())).abs() < 1e-6);
    // No rank saw a key: zeros and -inf.
    merge_ranks_host(&[&o1], &[&l1], &[0], 1, 2, None, &mut out, &mut lse);
    assert_eq!((out, lse[0]), ([0.0, 0.0], f32::NEG_INFINITY));
}

fn req(c: usize, n: usize, b: &[u32]) -> RequestSchedule {
    RequestSchedule { num_computed_tokens: c, num_new_tokens: n, block_ids: b.to_vec() }
}

#[test]
fn bad_groups_shards_and_layers_are_typed_errors() {
    for (r, i) in [(0, 1), (65, 1), (2, 0)] {
        let e = DcpGroup::new(r, i).unwrap_err();
        assert!(matches!(e, AttnError::InvalidShard(_)), "{e}");
    }
    let g = DcpGroup::new(2, 4).unwrap();
    let layout = KvCacheLayout::new(4, 4, 1, 8).unwrap();
    let shard = |reqs: Vec<RequestSchedule>| g.shard(layout, &SchedulerOutput { requests: reqs });
    // 20 tokens: rank 0 holds 12 (positions 0-3, 8-11, 16-19), 3 blocks of 4.
    assert_eq!(g.blocks_needed(20, 4), 3);
    let e = shard(vec![req(19, 1, &[0, 1])]).unwrap_err();
    assert!(matches!(e, AttnError::TooFewBlocks { request: 0, needed: 3, given: 2, .. }), "{e}");
    let e = shard(vec![req(0, 1, &[0]), req(3, 1, &[9])]).unwrap_err();
    assert!(matches!(e, AttnError::BlockOutOfRange { request: 1, block_id: 9, .. }), "{e}");
    let e = shard(vec![req(0, 0, &[0])]).unwrap_err();
    assert!(matches!(e, AttnError::InvalidRequest { request: 0, .. }), "{e}");
    // Request 1 writes position 4 of its own, which lands on rank 1's block 1 offset 0: the
    // slot that request 0 holds as context on rank 1 (its position 4).
    let e = shard(vec![req(6, 1, &[1]), req(4, 1, &[1])]).unwrap_err();
    assert!(e.to_string().contains("slot 4"), "{e}");
    // Layers DCP does not shard.
    let layer = |s: AttnSpec| DcpAttention::<f32>::in_process(BackendName::Cpu, g, s, layout, None).map(|_| ());
    let mla = attn_backends::MlaSpec { num_q_heads: 2, kv_lora_rank: 8, qk_rope_head_dim: 8, qk_nope_head_dim: 8, v_head_dim: 8, scale: 0.25 };
    for (spec, what) in [
        (AttnSpec { sliding_window: Some(64), mla: Some(mla), ..AttnSpec::new(2, 2, 16) }, "MLA layer with a window"),
        (AttnSpec { alibi_slopes: Some(vec![0.5, 0.25]), ..AttnSpec::new(2, 1, 8) }, "ALiBi"),
        (AttnSpec { causal: false, ..AttnSpec::new(2, 1, 8) }, "bidirectional"),
    ] {
        let e = layer(spec).unwrap_err();
        assert!(matches!(e, AttnError::InvalidShard(_)) && e.to_string().contains(what), "{e}");
    }
    // Metadata of another group is refused before anything runs.
    let mut l = DcpAttention::<f32>::in_process(BackendName::Cpu, g, AttnSpec::new(2, 1, 8), layout, None).unwrap();
    let other = DcpGroup::new(4, 4).unwrap().shard(layout, &SchedulerOutput { requests: vec![req(0, 1, &[0])] }).unwrap();
    let x = vec![0.5f32; 16];
    let e = l.forward_host(&x, &x[..8], &x[..8], &other, &mut vec![0.0; 16], None).unwrap_err();
    assert!(matches!(e, AttnError::InvalidShard(_)) && e.to_string().contains("sharded for"), "{e}");
    // A CPU layer has no device step.
    assert!(l.new_step(other.limits()).is_err());
    // A windowed layer's metadata comes from its own spec's shard: full attention's maps, or
    // another window's, are refused, naming both.
    let windowed = AttnSpec { sliding_window: Some(5), ..AttnSpec::new(2, 1, 8) };
    let mut w = DcpAttention::<f32>::in_process(BackendName::Cpu, g, windowed.clone(), layout, None).unwrap();
    let step = SchedulerOutput { requests: vec![req(0, 1, &[0])] };
    let full = g.shard(layout, &step).unwrap();
    let e = w.forward_host(&x, &x[..8], &x[..8], &full, &mut vec![0.0; 16], None).unwrap_err();
    assert!(matches!(e, AttnError::InvalidShard(_)) && e.to_string().contains("window Some(5)") && e.to_string().contains("shard_for"), "{e}");
    let own = g.shard_for(&windowed, layout, &step).unwrap();
    w.forward_host(&x, &x[..8], &x[..8], &own, &mut vec![0.0; 16], None).unwrap();
}
