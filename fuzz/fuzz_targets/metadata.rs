//! Bytes as a step: a scheduler output through the metadata builder, and raw maps through
//! `AttentionMetadata::from_parts`; what is accepted runs on the CPU backend and the f64
//! oracle, whose outputs must be finite and agree. Errors are fine, panics are not.
#![no_main]
use attn_host::layer::Attention;
use attn_host::metadata::{AttentionMetadata, MetadataBuilder, RequestSchedule, SchedulerOutput};
use attn_host::oracle;
use attn_host::spec::AttnSpec;
use attn_host::{BackendName, HostKvCache, KvCacheLayout};
use libfuzzer_sys::fuzz_target;

/// Reads the input as little-endian integers, zeros past its end.
struct Bytes<'a>(&'a [u8]);
impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn i32(&mut self) -> i32 {
        i32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

/// Runs an accepted step on the CPU backend and the oracle (small steps only).
fn run(meta: &AttentionMetadata, spec: &AttnSpec, layout: KvCacheLayout, seed: u8) {
    let keys: usize = meta.seq_lens().iter().map(|&s| s as usize).sum();
    if meta.num_tokens() > 64 || keys > 1024 {
        return;
    }
    let value = |i: usize| ((i * 7 + seed as usize) % 17) as f32 / 8.0 - 1.0;
    let n = meta.num_tokens();
    let q: Vec<f32> = (0..n * spec.num_q_heads * spec.head_dim).map(value).collect();
    let k: Vec<f32> = (0..n * spec.num_kv_heads * spec.head_dim).map(|i| value(i + 3)).collect();
    let v: Vec<f32> = (0..n * spec.num_kv_heads * spec.head_dim).map(|i| value(i + 5)).collect();
    let Ok(mut layer) = Attention::<f32>::new(BackendName::Cpu, spec.clone(), layout, None) else { return };
    let Ok(out) = layer.forward(&q, &k, &v, meta) else { return };
    assert!(out.iter().all(|x| x.is_finite()), "the CPU backend wrote a non-finite value");
    let mut cache = HostKvCache::<f32>::zeros(layout);
    if cache.write_slots(&k, &v, meta.slot_mapping()).is_err() {
        return;
    }
    if let Ok(want) = oracle::paged_reference(&q, &cache, meta, spec) {
        let err = oracle::rel_error(&out, &want);
        assert!(err < 1e-4, "CPU backend vs oracle: rel err {err}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let (num_blocks, block_size) = (1 + b.u8() as usize % 32, 1usize << (b.u8() % 6));
    let (hkv, group, d) = (1 + b.u8() as usize % 2, 1 + b.u8() as usize % 3, 8 * (1 + b.u8() as usize % 2));
    let Ok(layout) = KvCacheLayout::new(num_blocks, block_size, hkv, d) else { return };
    let mut spec = AttnSpec::new(hkv * group, hkv, d);
    let w = b.i32();
    spec.sliding_window = if w > 0 { Some(w as usize) } else if w == i32::MIN { Some(usize::MAX) } else { None };
    let seed = b.u8();
    if b.u8() % 2 == 0 {
        // The builder.
        let reqs = b.u8() as usize % 5;
        let requests = (0..reqs)
            .map(|_| RequestSchedule {
                num_computed_tokens: b.u8() as usize,
                num_new_tokens: b.u8() as usize % 40,
                block_ids: (0..b.u8() % 12).map(|_| b.u8() as u32 % 40).collect(),
            })
            .collect();
        if let Ok(meta) = MetadataBuilder::new(layout).build(&SchedulerOutput { requests }) {
            run(&meta, &spec, layout, seed);
        }
    } else {
        // Raw maps, as an engine would pass them.
        let n = b.u8() as usize % 5;
        let stride = b.u8() as usize % 6;
        let qsl: Vec<i32> = (0..=n).map(|_| b.i32() % 128).collect();
        let seq: Vec<i32> = (0..n).map(|_| b.i32() % 512).collect();
        let bt: Vec<i32> = (0..n * stride).map(|_| b.i32() % 40).collect();
        let tokens = qsl.last().copied().unwrap_or(0).clamp(0, 128) as usize;
        let slots: Vec<i64> = (0..tokens).map(|_| b.i32() as i64 % 1024).collect();
        if let Ok(meta) = AttentionMetadata::from_parts(layout, qsl, seq, bt, stride, slots) {
            run(&meta, &spec, layout, seed);
        }
    }
});
