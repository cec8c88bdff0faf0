//! Scheduler output -> the metadata every kernel of a step reads.
//!
//! The builder is the single place where the caller's view of a batch (per request: tokens
//! already in the cache, new tokens this step, the request's block ids) becomes the packed
//! maps the kernels trust: `query_start_loc`, `seq_lens`, `block_table`, `slot_mapping`.
//! Everything is validated here, once per step, before any launch.
//!
//! ```
//! use attn_host::metadata::{MetadataBuilder, RequestSchedule, SchedulerOutput};
//! use attn_host::kv_cache::KvCacheLayout;
//! let layout = KvCacheLayout::new(8, 16, 1, 64).unwrap();
//! let step = SchedulerOutput { requests: vec![
//!     RequestSchedule { num_computed_tokens: 20, num_new_tokens: 1, block_ids: vec![3, 5] }, // decode
//!     RequestSchedule { num_computed_tokens: 0, num_new_tokens: 4, block_ids: vec![0] },     // prefill
//! ]};
//! let meta = MetadataBuilder::new(layout).build(&step).unwrap();
//! assert_eq!(meta.query_start_loc(), &[0, 1, 5]);
//! assert_eq!(meta.seq_lens(), &[21, 4]);
//! assert_eq!(meta.slot_mapping(), &[5 * 16 + 4, 0, 1, 2, 3]);
//! ```

use crate::error::{AttnError, Result};
use crate::kv_cache::KvCacheLayout;
use std::collections::HashMap;

/// One request's share of a step, as a scheduler hands it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestSchedule {
    /// Tokens of this request already in the KV cache.
    pub num_computed_tokens: usize,
    /// Tokens computed this step (1 for a decode).
    pub num_new_tokens: usize,
    /// Physical block ids holding the request's tokens, in logical order.
    pub block_ids: Vec<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
/// A scheduler's step: the requests it runs, in order.
pub struct SchedulerOutput {
    /// One entry per request of the step.
    pub requests: Vec<RequestSchedule>,
}

/// What a request is doing this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// One new token on top of a cached context.
    Decode,
    /// Several new tokens on top of a cached context.
    ChunkedPrefill,
    /// The first tokens of a request.
    Prefill,
}

/// The packed, validated maps of one step. Built by [`MetadataBuilder`] (or checked by
/// [`AttentionMetadata::from_parts`]); the kernels trust every value in it.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionMetadata {
    layout: KvCacheLayout,
    query_start_loc: Vec<i32>,
    seq_lens: Vec<i32>,
    block_table: Vec<i32>,
    block_table_stride: usize,
    slot_mapping: Vec<i64>,
    max_query_len: usize,
    max_seq_len: usize,
    /// `[num_reqs]`, or empty: each request's first visible key, a floor under every one of
    /// its queries' own (window, chunk) start. Only context parallelism's rank maps have it.
    first_keys: Vec<i32>,
}

impl AttentionMetadata {
    /// The cache layout the maps index.
    pub fn layout(&self) -> &KvCacheLayout {
        &self.layout
    }
    /// Requests in the step.
    pub fn num_reqs(&self) -> usize {
        self.seq_lens.len()
    }
    /// Query tokens in the step (rows of q, k, v and out).
    pub fn num_tokens(&self) -> usize {
        self.slot_mapping.len()
    }
    /// `[num_reqs + 1]`, prefix sum of the new tokens per request.
    pub fn query_start_loc(&self) -> &[i32] {
        &self.query_start_loc
    }
    /// `[num_reqs]`, tokens in the cache after this step's write.
    pub fn seq_lens(&self) -> &[i32] {
        &self.seq_lens
    }
    /// `[num_reqs, block_table_stride]`, logical block -> physical block (padded with 0).
    pub fn block_table(&self) -> &[i32] {
        &self.block_table
    }
    /// Entries per request's row of the block table.
    pub fn block_table_stride(&self) -> usize {
        self.block_table_stride
    }
    /// `[num_tokens]`, token -> cache slot; negative = padding, not written.
    pub fn slot_mapping(&self) -> &[i64] {
        &self.slot_mapping
    }
    /// The most query tokens of one request.
    pub fn max_query_len(&self) -> usize {
        self.max_query_len
    }
    /// The longest request's keys, this step's included.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }
    /// `[num_reqs]`, or empty (none): each request's first visible key, below which its
    /// queries see nothing whatever their window (context parallelism's rank maps: a global
    /// window's first key among the rank's local keys).
    pub fn first_keys(&self) -> &[i32] {
        &self.first_keys
    }
    /// Request `r`'s first visible key (0 where the maps set none).
    pub fn first_key(&self, r: usize) -> usize {
        self.first_keys.get(r).map_or(0, |&k| k as usize)
    }
    /// Query tokens of request `r` in this step.
    pub fn query_len(&self, r: usize) -> usize {
        (self.query_start_loc[r + 1] - self.query_start_loc[r]) as usize
    }
    /// Tokens of request `r` in the cache before this step.
    pub fn context_len(&self, r: usize) -> usize {
        self.seq_lens[r] as usize - self.query_len(r)
    }
    /// That no request has cached context (a step of fresh prompts only: what an encoder
    /// layer attends over); an error naming the first request that has, and `why`.
    pub fn check_no_context(&self, why: &str) -> Result<()> {
        match (0..self.num_reqs()).find(|&r| self.context_len(r) > 0) {
            Some(r) => Err(AttnError::InvalidRequest { request: r, detail: format!("has {} cached tokens, but {why}", self.context_len(r)) }),
            None => Ok(()),
        }
    }
    /// Request `r`'s row of the block table (logical block -> physical block).
    pub fn block_ids(&self, r: usize) -> &[i32] {
        let s = r * self.block_table_stride;
        &self.block_table[s..s + self.block_table_stride]
    }
    /// The cache slot of request `r`'s token at absolute position `pos`.
    pub fn slot_of(&self, r: usize, pos: usize) -> usize {
        let bs = self.layout.block_size;
        self.block_ids(r)[pos / bs] as usize * bs + pos % bs
    }
    /// Whether request `r` decodes, prefills fresh, or continues a chunked prefill.
    pub fn kind(&self, r: usize) -> RequestKind {
        match (self.context_len(r), self.query_len(r)) {
            (0, _) => RequestKind::Prefill,
            (_, 1) => RequestKind::Decode,
            _ => RequestKind::ChunkedPrefill,
        }
    }
    /// (decodes, chunked prefills, prefills) in the step.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for r in 0..self.num_reqs() {
            match self.kind(r) {
                RequestKind::Decode => c.0 += 1,
                RequestKind::ChunkedPrefill => c.1 += 1,
                RequestKind::Prefill => c.2 += 1,
            }
        }
        c
    }

    /// Metadata from maps a caller built itself, checked as thoroughly as the builder's:
    /// lengths agree, every block id used lies inside the cache, every slot inside capacity,
    /// no slot written twice, and each token's slot is where its request's block table puts it.
    pub fn from_parts(
        layout: KvCacheLayout,
        query_start_loc: Vec<i32>,
        seq_lens: Vec<i32>,
        block_table: Vec<i32>,
        block_table_stride: usize,
        slot_mapping: Vec<i64>,
    ) -> Result<Self> {
        layout.validate()?;
        let mismatch = |what, detail: String| Err(AttnError::LengthMismatch { what, detail });
        let n = seq_lens.len();
        if query_start_loc.len() != n + 1 {
            return mismatch("query_start_loc", format!("{} entries for {n} requests (want {})", query_start_loc.len(), n + 1));
        }
        if query_start_loc[0] != 0 {
            return mismatch("query_start_loc", format!("starts at {}, not 0", query_start_loc[0]));
        }
        if block_table_stride > i32::MAX as usize || n.checked_mul(block_table_stride) != Some(block_table.len()) {
            return mismatch("block_table", format!("{} entries for {n} requests x stride {block_table_stride}", block_table.len()));
        }
        let num_tokens = *query_start_loc.last().unwrap();
        if num_tokens < 0 || slot_mapping.len() != num_tokens as usize {
            return mismatch("slot_mapping", format!("{} slots for {num_tokens} query tokens", slot_mapping.len()));
        }
        let bs = layout.block_size;
        let (mut max_q, mut max_s) = (0, 0);
        for r in 0..n {
            // In i64: the entries are not validated yet, and their difference may not fit i32.
            let q = query_start_loc[r + 1] as i64 - query_start_loc[r] as i64;
            let s = seq_lens[r] as i64;
            if q < 0 {
                return Err(AttnError::InvalidRequest { request: r, detail: format!("query_start_loc decreases ({} -> {})", query_start_loc[r], query_start_loc[r + 1]) });
            }
            if q == 0 {
                // As the builder: a request in a step computes at least one token.
                return Err(AttnError::InvalidRequest { request: r, detail: "schedules no new tokens (query_start_loc does not advance)".into() });
            }
            if s < q {
                return Err(AttnError::InvalidRequest { request: r, detail: format!("seq_len {s} is shorter than its {q} new tokens") });
            }
            let needed = (s as usize).div_ceil(bs);
            if needed > block_table_stride {
                return Err(AttnError::TooFewBlocks { request: r, tokens: s as usize, needed, given: block_table_stride, block_size: bs });
            }
            for (logical, &b) in block_table[r * block_table_stride..][..needed].iter().enumerate() {
                if b < 0 || b as usize >= layout.num_blocks {
                    return Err(AttnError::BlockOutOfRange { request: r, logical, block_id: b as i64, num_blocks: layout.num_blocks });
                }
            }
            max_q = max_q.max(q as usize);
            max_s = max_s.max(s as usize);
        }
        let meta = AttentionMetadata {
            layout,
            query_start_loc,
            seq_lens,
            block_table,
            block_table_stride,
            slot_mapping,
            max_query_len: max_q,
            max_seq_len: max_s,
            first_keys: Vec::new(),
        };
        meta.check_slots()?;
        Ok(meta)
    }

    /// Every slot inside capacity, none written twice, each where the block table says; no
    /// request lists a physical block twice, and no write lands on a slot that a request
    /// reads as context (prefix blocks may be shared, but only for reading).
    fn check_slots(&self) -> Result<()> {
        let capacity = self.layout.capacity_slots();
        let mut seen: HashMap<i64, usize> = HashMap::with_capacity(self.slot_mapping.len());
        for r in 0..self.num_reqs() {
            let start = self.query_start_loc[r] as usize;
            for i in 0..self.query_len(r) {
                let token = start + i;
                let slot = self.slot_mapping[token];
                if slot < 0 {
                    continue;
                }
                if slot as usize >= capacity {
                    return Err(AttnError::SlotOutOfRange { token, slot, capacity });
                }
                let expect = self.slot_of(r, self.context_len(r) + i);
                if slot as usize != expect {
                    return Err(AttnError::InvalidRequest {
                        request: r,
                        detail: format!("token {token} maps to slot {slot}, but its block table puts it at slot {expect}"),
                    });
                }
                if let Some(prev) = seen.insert(slot, token) {
                    return Err(AttnError::InvalidRequest {
                        request: r,
                        detail: format!("slot {slot} is written by tokens {prev} and {token}"),
                    });
                }
            }
        }
        // Lowest offset written this step in each physical block, and by which token.
        let bs = self.layout.block_size;
        let mut written: HashMap<usize, (usize, usize)> = HashMap::with_capacity(seen.len());
        for (&slot, &token) in &seen {
            let (block, off) = (slot as usize / bs, slot as usize % bs);
            let e = written.entry(block).or_insert((off, token));
            if off < e.0 {
                *e = (off, token);
            }
        }
        let mut blocks_of_request: HashMap<i32, usize> = HashMap::new();
        for r in 0..self.num_reqs() {
            let ctx = self.context_len(r);
            let needed = (self.seq_lens[r] as usize).div_ceil(bs);
            blocks_of_request.clear();
            for (logical, &b) in self.block_ids(r)[..needed].iter().enumerate() {
                if let Some(first) = blocks_of_request.insert(b, logical) {
                    return Err(AttnError::InvalidRequest {
                        request: r,
                        detail: format!("block id {b} appears twice in its block table (logical blocks {first} and {logical})"),
                    });
                }
                // Context offsets of this block: [0, ctx_here).
                let ctx_here = ctx.saturating_sub(logical * bs).min(bs);
                if let Some(&(off, token)) = written.get(&(b as usize)) {
                    if off < ctx_here {
                        return Err(AttnError::InvalidRequest {
                            request: r,
                            detail: format!(
                                "token {token} writes slot {}, which holds this request's context token {}",
                                b as usize * bs + off,
                                logical * bs + off
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

impl AttentionMetadata {
    /// Maps the caller guarantees consistent (context parallelism's per-rank rows, built
    /// from a share [`MetadataBuilder::build_inner`] validated): only the maxima are derived.
    pub(crate) fn from_trusted(layout: KvCacheLayout, query_start_loc: Vec<i32>, seq_lens: Vec<i32>, block_table: Vec<i32>, block_table_stride: usize, slot_mapping: Vec<i64>) -> Self {
        let max_query_len = query_start_loc.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0);
        let max_seq_len = seq_lens.iter().map(|&s| s as usize).max().unwrap_or(0);
        AttentionMetadata { layout, query_start_loc, seq_lens, block_table, block_table_stride, slot_mapping, max_query_len, max_seq_len, first_keys: Vec::new() }
    }

    /// These maps with a first visible key a request (`keys[r] < seq_lens[r]`, trusted):
    /// context parallelism's sliding windows and chunks, which on a rank's local keys start
    /// at a key of their own.
    pub(crate) fn with_first_keys(mut self, keys: Vec<i32>) -> Self {
        debug_assert!(keys.len() == self.seq_lens.len() && keys.iter().zip(&self.seq_lens).all(|(&k, &s)| k >= 0 && k < s.max(1)));
        self.first_keys = keys;
        self
    }
}

/// Builds [`AttentionMetadata`] for a cache of a given geometry.
#[derive(Clone, Debug)]
pub struct MetadataBuilder {
    layout: KvCacheLayout,
}

impl MetadataBuilder {
    /// A builder for steps over caches of `layout`.
    pub fn new(layout: KvCacheLayout) -> Self {
        MetadataBuilder { layout }
    }

    /// The cache layout the builder validates block ids and slots against.
    pub fn layout(&self) -> &KvCacheLayout {
        &self.layout
    }

    /// Validates the step and packs it. Errors name the request and the offending value.
    pub fn build(&self, step: &SchedulerOutput) -> Result<AttentionMetadata> {
        self.build_inner(step, false)
    }

    /// [`MetadataBuilder::build`], where `idle` lets a request schedule no new tokens: a
    /// context-parallel rank's share of a step, where the rank holds some of a request's
    /// context and none of its new tokens ([`crate::dcp`] validates each rank's share so).
    pub(crate) fn build_inner(&self, step: &SchedulerOutput, idle: bool) -> Result<AttentionMetadata> {
        self.layout.validate()?;
        let bs = self.layout.block_size;
        let n = step.requests.len();
        let mut query_start_loc = Vec::with_capacity(n + 1);
        let mut seq_lens = Vec::with_capacity(n);
        query_start_loc.push(0i32);
        let mut total: usize = 0;
        let mut stride = 0usize;
        for (r, req) in step.requests.iter().enumerate() {
            if req.num_new_tokens == 0 && !idle {
                return Err(AttnError::InvalidRequest { request: r, detail: "schedules no new tokens".into() });
            }
            let seq_len = req.num_computed_tokens.checked_add(req.num_new_tokens).filter(|&s| s <= i32::MAX as usize);
            let Some(seq_len) = seq_len else {
                return Err(AttnError::InvalidRequest {
                    request: r,
                    detail: format!("{} computed + {} new tokens overflow i32", req.num_computed_tokens, req.num_new_tokens),
                });
            };
            let needed = seq_len.div_ceil(bs);
            if req.block_ids.len() < needed {
                return Err(AttnError::TooFewBlocks { request: r, tokens: seq_len, needed, given: req.block_ids.len(), block_size: bs });
            }
            for (logical, &b) in req.block_ids.iter().enumerate() {
                if b as usize >= self.layout.num_blocks {
                    return Err(AttnError::BlockOutOfRange { request: r, logical, block_id: b as i64, num_blocks: self.layout.num_blocks });
                }
            }
            total += req.num_new_tokens;
            if total > i32::MAX as usize {
                return Err(AttnError::InvalidRequest { request: r, detail: format!("the step's {total} tokens overflow i32") });
            }
            query_start_loc.push(total as i32);
            seq_lens.push(seq_len as i32);
            stride = stride.max(needed);
        }
        let mut block_table = vec![0i32; n * stride];
        let mut slot_mapping = Vec::with_capacity(total);
        for (r, req) in step.requests.iter().enumerate() {
            let needed = (seq_lens[r] as usize).div_ceil(bs);
            for (dst, &b) in block_table[r * stride..][..needed].iter_mut().zip(&req.block_ids) {
                *dst = b as i32;
            }
            for pos in req.num_computed_tokens..req.num_computed_tokens + req.num_new_tokens {
                slot_mapping.push((req.block_ids[pos / bs] as usize * bs + pos % bs) as i64);
            }
        }
        let max_query_len = step.requests.iter().map(|r| r.num_new_tokens).max().unwrap_or(0);
        let max_seq_len = seq_lens.iter().map(|&s| s as usize).max().unwrap_or(0);
        let meta = AttentionMetadata {
            layout: self.layout,
            query_start_loc,
            seq_lens,
            block_table,
            block_table_stride: stride,
            slot_mapping,
            max_query_len,
            max_seq_len,
            first_keys: Vec::new(),
        };
        // Two requests sharing a physical block may not both write into it this step.
        meta.check_slots()?;
        Ok(meta)
    }
}

/// Metadata for requests of `(cached, new)` tokens over a cache of `layout`'s shape, with
/// blocks handed out in order and just enough of them (plan tests of the backends).
#[cfg(test)]
pub(crate) fn in_order(reqs: &[(usize, usize)], block_size: usize, kv_heads: usize, head_dim: usize) -> AttentionMetadata {
    in_order_of(reqs, block_size, kv_heads, head_dim, crate::dtype::KvCacheDType::Auto)
}

/// [`in_order`] over a cache storing `kv`.
#[cfg(test)]
pub(crate) fn in_order_of(reqs: &[(usize, usize)], block_size: usize, kv_heads: usize, head_dim: usize, kv: crate::dtype::KvCacheDType) -> AttentionMetadata {
    let blocks: usize = reqs.iter().map(|&(c, n)| (c + n).div_ceil(block_size)).sum();
    let layout = KvCacheLayout::new(blocks.max(1), block_size, kv_heads, head_dim).unwrap().with_kv_dtype(kv);
    let mut next = 0u32;
    let requests = reqs
        .iter()
        .map(|&(c, n)| {
            let b = (c + n).div_ceil(block_size) as u32;
            next += b;
            RequestSchedule { num_computed_tokens: c, num_new_tokens: n, block_ids: (next - b..next).collect() }
        })
        .collect();
    MetadataBuilder::new(layout).build(&SchedulerOutput { requests }).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> KvCacheLayout {
        KvCacheLayout::new(4, 4, 1, 8).unwrap()
    }
    fn req(c: usize, n: usize, b: &[u32]) -> RequestSchedule {
        RequestSchedule { num_computed_tokens: c, num_new_tokens: n, block_ids: b.to_vec() }
    }

    #[test]
    fn mixed_batch_maps() {
        let l = KvCacheLayout::new(8, 4, 1, 8).unwrap();
        let step = SchedulerOutput { requests: vec![req(5, 1, &[2, 1]), req(2, 3, &[3, 0]), req(0, 2, &[5])] };
        let m = MetadataBuilder::new(l).build(&step).unwrap();
        assert_eq!(m.query_start_loc(), &[0, 1, 4, 6]);
        assert_eq!(m.seq_lens(), &[6, 5, 2]);
        assert_eq!(m.block_table_stride(), 2);
        assert_eq!(m.block_table(), &[2, 1, 3, 0, 5, 0]);
        // request 0: position 5 -> block 1, offset 1; request 1: positions 2, 3, 4 -> block 3
        // offsets 2, 3, then block 0 offset 0; request 2: block 5 offsets 0, 1.
        assert_eq!(m.slot_mapping(), &[5, 14, 15, 0, 20, 21]);
        assert_eq!(m.counts(), (1, 1, 1));
        assert_eq!((m.max_query_len(), m.max_seq_len()), (3, 6));
    }

    #[test]
    fn from_parts_with_query_start_locs_whose_difference_overflows_i32_is_an_error() {
        // The fuzzer's input: [0, 1, i32::MIN, 0] (a subtraction in i32 panicked in debug builds).
        let e = AttentionMetadata::from_parts(layout(), vec![0, 1, i32::MIN, 0], vec![1, 1, 1], vec![0, 1, 2], 1, vec![]).unwrap_err();
        assert!(matches!(e, AttnError::InvalidRequest { request: 1, .. }) && e.to_string().contains("decreases"), "{e}");
        let e = AttentionMetadata::from_parts(layout(), vec![0, i32::MAX, 0], vec![1, 1], vec![0, 1], 1, vec![]).unwrap_err();
        assert!(matches!(e, AttnError::InvalidRequest { request: 0, .. }), "{e}");
    }

    #[test]
    fn errors_name_request_and_value() {
        let b = MetadataBuilder::new(layout());
        let e = b.build(&SchedulerOutput { requests: vec![req(0, 1, &[0]), req(0, 3, &[9])] }).unwrap_err();
        assert!(matches!(e, AttnError::BlockOutOfRange { request: 1, block_id: 9, num_blocks: 4, .. }), "{e}");
        let e = b.build(&SchedulerOutput { requests: vec![req(4, 1, &[1])] }).unwrap_err();
        assert!(matches!(e, AttnError::TooFewBlocks { request: 0, needed: 2, given: 1, .. }), "{e}");
        let e = b.build(&SchedulerOutput { requests: vec![req(0, 0, &[1])] }).unwrap_err();
        assert!(matches!(e, AttnError::InvalidRequest { request: 0, .. }), "{e}");
        let e = b.build(&SchedulerOutput { requests: vec![req(0, 2, &[1]), req(1, 1, &[1])] }).unwrap_err();
        assert!(e.to_string().contains("slot 5 is written by tokens 1 and 2"), "{e}");
    }

    #[test]
    fn writes_never_land_on_context_and_block_ids_are_not_repeated() {
        let b = MetadataBuilder::new(layout());
        // The same block twice in one request's table.
        let e = b.build(&SchedulerOutput { requests: vec![req(8, 1, &[0, 0, 1])] }).unwrap_err();
        assert!(e.to_string().contains("block id 0 appears twice"), "{e}");
        // ... which would let its new tokens overwrite its own context.
        let e = b.build(&SchedulerOutput { requests: vec![req(4, 4, &[0, 0])] }).unwrap_err();
        assert!(e.to_string().contains("context token 0"), "{e}");
        // Request 1 writes slot 4 (block 1, offset 0), which request 0 reads as context.
        let e = b.build(&SchedulerOutput { requests: vec![req(3, 1, &[1]), req(0, 1, &[1])] }).unwrap_err();
        assert!(matches!(e, AttnError::InvalidRequest { request: 0, .. }) && e.to_string().contains("slot 4"), "{e}");
        // Sharing a prefix block for reading is fine: both read block 2, write elsewhere.
        let ok = b.build(&SchedulerOutput { requests: vec![req(4, 1, &[2, 0]), req(4, 1, &[2, 3])] }).unwrap();
        assert_eq!(ok.slot_mapping(), &[0, 12]);
    }

    #[test]
    fn layouts_that_bypass_new_are_rejected() {
        let mut l = layout();
        l.block_size = 3;
        let e = MetadataBuilder::new(l).build(&SchedulerOutput { requests: vec![req(0, 1, &[0])] }).unwrap_err();
        assert!(e.to_string().contains("power of two"), "{e}");
        assert!(KvCacheLayout::new((i32::MAX as usize) + 1, 1, 1, 8).is_err());
        assert!(KvCacheLayout::new(8192, 16, 1 << 40, 128).is_err());
        let e = AttentionMetadata::from_parts(layout(), vec![0, 0, 0], vec![0, 0], vec![], 1 << 63, vec![]).unwrap_err();
        assert!(matches!(e, AttnError::LengthMismatch { what: "block_table", .. }), "{e}");
    }

    #[test]
    fn from_parts_rejects_bad_slots_and_lengths() {
        let l = layout();
        let e = AttentionMetadata::from_parts(l, vec![0, 1], vec![1], vec![0], 1, vec![16]).unwrap_err();
        assert!(matches!(e, AttnError::SlotOutOfRange { token: 0, slot: 16, capacity: 16 }), "{e}");
        let e = AttentionMetadata::from_parts(l, vec![0, 2], vec![1], vec![0], 1, vec![0, 1]).unwrap_err();
        assert!(matches!(e, AttnError::InvalidRequest { request: 0, .. }), "{e}");
        let e = AttentionMetadata::from_parts(l, vec![0, 1], vec![1], vec![0], 1, vec![]).unwrap_err();
        assert!(matches!(e, AttnError::LengthMismatch { .. }), "{e}");
        // A request with no new tokens, which the builder refuses too.
        let e = AttentionMetadata::from_parts(l, vec![0, 1, 1], vec![1, 3], vec![0, 1], 1, vec![0]).unwrap_err();
        assert!(matches!(e, AttnError::InvalidRequest { request: 1, .. }), "{e}");
        let e = AttentionMetadata::from_parts(l, vec![0, 1], vec![1], vec![0], 1, vec![]).unwrap_err();
        assert!(matches!(e, AttnError::LengthMismatch { what: "slot_mapping", .. }), "{e}");
        let ok = AttentionMetadata::from_parts(l, vec![0, 1], vec![1], vec![2], 1, vec![-1]).unwrap();
        assert_eq!(ok.slot_mapping(), &[-1]);
    }
}
