//! Kernel parameter blocks, one per kernel family.
//!
//! This file is compiled twice: by the device crate (for nvptx64) and by the host crate
//! (through `#[path]`), so the two sides cannot disagree on a field. Every struct is
//! `#[repr(C)]`, passed to its kernel by value, and holds only pointers (as `u64` device
//! addresses), integers and floats. Sizes are asserted at compile time on both sides.
//!
//! Strides are in elements, not bytes. The paged KV cache is described by pointers and
//! explicit strides; the kernels assume nothing else about it.

/// `reshape_and_cache`: this step's K/V rows into their cache slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheWriteParams {
    /// `[num_tokens, num_kv_heads, head_dim]` (16-bit elements).
    pub key: u64,
    /// `[num_tokens, num_kv_heads, head_dim]`: this step's values.
    pub value: u64,
    /// `[num_blocks, block_size, num_kv_heads, head_dim]`.
    pub key_cache: u64,
    /// The V cache, laid out as `key_cache`.
    pub value_cache: u64,
    /// `i64 [num_tokens]`; a negative slot is padding and is skipped.
    pub slot_mapping: u64,
    /// fp8 caches: `f32 [num_kv_heads]`, the K and V scales (stored = e4m3(x / scale));
    /// unused by the 16-bit copy.
    pub k_scale: u64,
    /// As `k_scale`, for V.
    pub v_scale: u64,
    /// Elements between consecutive tokens of `key` and `value`.
    pub src_token_stride: u64,
    /// Elements between consecutive heads of a token of `key` and `value`.
    pub src_head_stride: u64,
    /// Elements between consecutive blocks of the cache.
    pub cache_block_stride: u64,
    /// Elements between consecutive tokens of a cache block.
    pub cache_token_stride: u64,
    /// Elements between consecutive kv heads of a cached token.
    pub cache_head_stride: u64,
    /// Query tokens of the step.
    pub num_tokens: u32,
    /// KV heads.
    pub num_kv_heads: u32,
    /// Elements of one head's row.
    pub head_dim: u32,
    /// Tokens per cache block.
    pub block_size: u32,
}

/// Paged attention: one query token per thread block (decode, and the rows of a chunked
/// prefill), over the paged cache, optionally split along the keys (flash-decoding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PagedAttnParams {
    /// `[num_tokens, num_q_heads, head_dim]`.
    pub q: u64,
    /// `[num_tokens, num_q_heads, head_dim]`; written when `num_splits == 1`.
    pub out: u64,
    /// `[num_blocks, block_size, num_kv_heads, head_dim]`.
    pub key_cache: u64,
    /// The V cache, laid out as `key_cache`.
    pub value_cache: u64,
    /// `i32 [num_seqs, block_table_stride]`: logical block -> physical block.
    pub block_table: u64,
    /// `i32 [num_seqs]`: keys in the cache for each request, this step's included.
    pub seq_lens: u64,
    /// `i32 [num_seqs + 1]`: prefix sum of query tokens per request.
    pub query_start_loc: u64,
    /// `f32 [num_q_heads]` ALiBi slopes, or 0 for none.
    pub alibi_slopes: u64,
    /// Split-KV workspace, used when `num_splits > 1`:
    /// `f32 [num_splits, num_tokens, num_q_heads, head_dim]` normalised partial outputs and
    /// `f32 [num_splits, num_tokens, num_q_heads, 2]` (running max in log2 units, denominator).
    pub partial_out: u64,
    /// The split-KV workspace's (running max in log2 units, denominator) of each partial row.
    pub partial_ml: u64,
    /// `i32 [grid x]`: the query token of each block (the step's decode rows, when other
    /// rows go to the prefill kernel), or 0 for the identity. The split workspace is indexed
    /// by the block, `num_tokens` being the grid's x.
    pub token_map: u64,
    /// `f32 [num_tokens, num_q_heads]`: each row's log-sum-exp (natural log), written when
    /// `num_splits == 1` (the merge writes it otherwise); 0 = none.
    pub lse: u64,
    /// fp8 caches: `f32 [num_kv_heads]`, the K and V scales (value = stored x scale); 0 = 1.
    pub k_scale: u64,
    /// As `k_scale`, for V.
    pub v_scale: u64,
    /// Elements between consecutive tokens of `q`.
    pub q_token_stride: u64,
    /// Elements between consecutive heads of a token of `q`.
    pub q_head_stride: u64,
    /// Elements between consecutive tokens of `out`.
    pub out_token_stride: u64,
    /// Elements between consecutive heads of a token of `out`.
    pub out_head_stride: u64,
    /// Elements between consecutive blocks of the cache.
    pub cache_block_stride: u64,
    /// Elements between consecutive tokens of a cache block.
    pub cache_token_stride: u64,
    /// Elements between consecutive kv heads of a cached token.
    pub cache_head_stride: u64,
    /// Entries per request's row of `block_table`.
    pub block_table_stride: u32,
    /// Requests of the step.
    pub num_seqs: u32,
    /// Query tokens of the step.
    pub num_tokens: u32,
    /// Query heads.
    pub num_q_heads: u32,
    /// KV heads.
    pub num_kv_heads: u32,
    /// log2 of the tokens per cache block (a power of two).
    pub block_size_log2: u32,
    /// Keys a query may see to its left, itself included; 0 = unlimited.
    pub sliding_window: u32,
    /// Key splits per query row (1: no split, the outputs written directly).
    pub num_splits: u32,
    /// Softmax scale, applied to `q . k`.
    pub scale: f32,
    /// Logits soft-cap (`cap * tanh(s / cap)`); 0 = off.
    pub softcap: f32,
    /// `f32 [num_q_heads]`: each query head's attention-sink logit (gpt-oss), which joins the
    /// softmax denominator and adds no value; 0 = none. Applied where a row's state is
    /// final: here when `num_splits == 1`, else by the merge.
    pub sinks: u64,
    /// Chunked local attention (Llama 4): a query at position `p` sees only the keys of its
    /// own chunk, `[p - p % chunk_size, p]`; 0 = none.
    pub chunk_size: u32,
    /// Padding to the struct's 8-byte alignment (unused).
    pub _pad: u32,
    /// `i32 [num_seqs]`: each request's first visible key, a floor under its queries' window
    /// and chunk (context parallelism's windowed layers on a rank's local keys); 0 = none.
    pub first_key: u64,
}

/// Merge of split-KV partial states into the final output.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MergeParams {
    /// The split-KV workspace's normalised partial outputs (`PagedAttnParams::partial_out`).
    pub partial_out: u64,
    /// The split-KV workspace's (running max in log2 units, denominator) of each partial row.
    pub partial_ml: u64,
    /// As `PagedAttnParams::token_map`: the output token of each row of the workspace, or 0.
    pub token_map: u64,
    /// `i32 [num_tokens, 2]`: each token's (first workspace slot, split count), its splits'
    /// partial rows at `(slot + s) * num_q_heads + head` (MLA's per-request split counts; a
    /// token of one split was written by the attention kernel and is skipped); 0: every
    /// token has `num_splits`, at `(s * num_tokens + token) * num_q_heads + head`.
    pub token_splits: u64,
    /// As `PagedAttnParams::lse`, for the merged rows; 0 = none.
    pub lse: u64,
    /// `[num_tokens, num_q_heads, head_dim]`: the merged output.
    pub out: u64,
    /// Elements between consecutive tokens of `out`.
    pub out_token_stride: u64,
    /// Elements between consecutive heads of a token of `out`.
    pub out_head_stride: u64,
    /// Query tokens of the step.
    pub num_tokens: u32,
    /// Query heads.
    pub num_q_heads: u32,
    /// Elements of one head's row.
    pub head_dim: u32,
    /// Key splits per query row (1: no split, the outputs written directly).
    pub num_splits: u32,
    /// As `PagedAttnParams::sinks` (the merged rows' sinks); 0 = none.
    pub sinks: u64,
}

/// Context parallelism's merge: every rank's partial output over its shard of the keys and
/// that output's log-sum-exp, gathered from the ranks, into the output over all keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MergeRanksParams {
    /// `u64 [num_ranks]`: where each rank's output starts, `[num_tokens, num_heads,
    /// head_dim]` of the query type, normalised over the rank's own keys (in process: each
    /// rank's own buffer; under NCCL: its part of the gathered buffer).
    pub rank_out: u64,
    /// `u64 [num_ranks]`: where each rank's log-sum-exp starts, `f32 [num_tokens, num_heads]`
    /// (natural log).
    pub rank_lse: u64,
    /// `i32 [num_ranks, num_tokens]`: keys each rank's row saw; 0 = none, the row is not read
    /// (the rank ran it over a placeholder key).
    pub keys_seen: u64,
    /// `f32 [num_heads]` attention-sink logits (natural log), joined once; 0 = none.
    pub sinks: u64,
    /// `[num_tokens, num_heads, head_dim]`: the merged output.
    pub out: u64,
    /// `f32 [num_tokens, num_heads]`: the merged log-sum-exp; 0 = not written.
    pub lse: u64,
    /// Ranks gathered.
    pub num_ranks: u32,
    /// Query tokens of the step.
    pub num_tokens: u32,
    /// Query heads.
    pub num_heads: u32,
    /// Elements of one head's output row (a multiple of 8).
    pub head_dim: u32,
}

const _: () = assert!(core::mem::size_of::<MergeRanksParams>() == 64);
const _: () = assert!(core::mem::size_of::<CacheWriteParams>() == 112);
const _: () = assert!(core::mem::size_of::<PagedAttnParams>() == 232);
const _: () = assert!(core::mem::size_of::<MergeParams>() == 88);
const _: () = assert!(core::mem::size_of::<MlaParams>() == 168);
const _: () = assert!(core::mem::size_of::<MlaCacheWriteParams>() == 64);
const _: () = assert!(core::mem::size_of::<PrefillParams>() == 224);
const _: () = assert!(core::mem::align_of::<PagedAttnParams>() == 8);

/// Paged attention: warps per block, query heads per block (the rows of the m16n8k16
/// tiles), keys per tile, and tiles in flight per warp.
pub const PAGED_WARPS: u32 = 4;
/// Query heads one paged block computes (the rows of the m16 tiles).
pub const PAGED_ROWS: u32 = 16;
/// Keys per paged tile.
pub const PAGED_TILE: u32 = 16;

/// Tiles in flight per warp for head dim `d`: 3, or 2 for d > 128 so that d256 fits the
/// 163 KiB an sm_80 block may have (the per-warp tile pair is 16 KiB there).
pub const fn paged_stages(d: u32) -> u32 {
    if d > 128 { 2 } else { 3 }
}

/// The sm_90a module's decode depth for head dim `d` over `kv_bytes`-byte cache elements, where
/// it differs from the portable kernel's [`paged_stages`] (0: it does not). A warp keeps
/// `stages - 1` tiles loading while it computes one; the H200 (4.8 TB/s) needs about 128 KiB
/// of them an SM. The portable depths leave 64 KiB where a tile's bytes are few or blocks are
/// few: 16-bit d256 (2 stages for sm_80's 163 KiB, one block an SM: 4 warps x 16 KiB), fp8
/// d128 (3 stages, two blocks an SM by registers: 8 warps x 2 x 4 KiB) and fp8 d256 (2 stages,
/// two blocks: 8 x 8 KiB), measured at 0.77, 0.72 and 0.80-0.84 of copy on an H200 where
/// 16-bit d128 (8 warps x 2 x 8 KiB) is at 0.98. A Hopper block may have 227 KiB:
/// - 16-bit d256: 3 (4 warps x 2 x 16 KiB; 200 KiB, still one block an SM);
/// - fp8 d128: 5 (8 warps x 4 x 4 KiB; 80 KiB a block, two an SM);
/// - fp8 d256: 3 (8 warps x 2 x 8 KiB; 104 KiB a block, two an SM).
///
/// fp8 d64 stays at 3: its 64-byte rows take 128 bytes of room (the swizzle), so a deeper
/// pipeline would cost blocks an SM for the same bytes.
pub const fn paged_sm90_stages(d: u32, kv_bytes: u32) -> u32 {
    match (kv_bytes, d) {
        (2, 256) | (1, 256) => 3,
        (1, 128) => 5,
        _ => 0,
    }
}

/// Tiles in flight per warp of a decode kernel of the table: its row's `stages`, or where that
/// is 0 (one depth a head dim) [`paged_stages`].
pub const fn paged_depth(d: u32, stages: u32) -> u32 {
    if stages > 0 { stages } else { paged_stages(d) }
}

/// Whether the paged kernel keeps Q in shared memory (d > 128: its register fragments would
/// not fit beside the output's) rather than in registers.
pub const fn paged_q_in_smem(d: u32) -> bool {
    d > 128
}

/// 16-byte chunks per shared-memory row of a K, V or Q tile (every kernel's): the head dim's,
/// rounded up to a power of two, so that the XOR swizzle of a chunk by its row (`c ^ r % 8`)
/// stays inside the row; d96 rows take 128 dims' room.
pub const fn smem_row_chunks(d: u32) -> u32 {
    (d / 8).next_power_of_two()
}

/// Bytes between two rows of the paged kernel's stored K/V tiles: the 16-bit tile's swizzled
/// row, or for fp8 half of it but at least 128 (so that the fp8 rows' chunk XOR, by
/// `2 r + r / 4 % 2`, has 8 chunks of room and keeps the fragment loads free of bank
/// conflicts at d64 too).
pub const fn paged_stored_row(d: u32, kv_bytes: u32) -> u32 {
    let row = smem_row_chunks(d) * 16;
    if kv_bytes < 2 { if row / 2 > 128 { row / 2 } else { 128 } } else { row }
}

/// Dynamic shared memory of the paged kernel for head dim `d` over a cache of `kv_bytes`-byte
/// elements: per warp `paged_stages(d)` K and V tiles of `PAGED_TILE x d` as stored (fp8
/// tiles are widened in registers, as the fragments are read), then the Q
/// tile (`PAGED_ROWS x d`) if `paged_q_in_smem(d)`; the cross-warp merge
/// (`PAGED_WARPS * PAGED_ROWS * (d + 2)` f32) reuses the pipelines' space.
/// 16-bit: d64 48 KiB, d96 and d128 96 KiB, d256 136 KiB; fp8: d128 48 KiB.
pub const fn paged_smem_bytes(d: u32, kv_bytes: u32) -> u32 {
    paged_smem_bytes_at(d, kv_bytes, paged_stages(d))
}

/// [`paged_smem_bytes`] at a pipeline depth of `stages` tiles per warp (16-bit d256 at 3:
/// 200 KiB; fp8 d128 at 5: 80 KiB; fp8 d256 at 3: 104 KiB).
pub const fn paged_smem_bytes_at(d: u32, kv_bytes: u32, stages: u32) -> u32 {
    let row = smem_row_chunks(d) * 16;
    let q_tile = if paged_q_in_smem(d) { PAGED_ROWS * row } else { 0 };
    let stored_row = paged_stored_row(d, kv_bytes);
    let pipeline = PAGED_WARPS * stages * 2 * PAGED_TILE * stored_row + q_tile;
    let merge = PAGED_WARPS * PAGED_ROWS * (d + 2) * 4;
    if pipeline > merge { pipeline } else { merge }
}

/// Flash prefill: a thread block owns `PREFILL_ROWS` query rows (`16` per warp), the
/// (token, query head) pairs of one tile: `heads_per_tile` heads of one kv head's group for
/// each of `tokens_per_tile` consecutive query tokens of one request. Rows share every K/V
/// tile of `prefill_keys(d)` keys, loaded once per block through a `prefill_stages(d)`-deep
/// cp.async pipeline.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PrefillParams {
    /// `[num_tokens, num_q_heads, head_dim]`: the queries.
    pub q: u64,
    /// `[num_tokens, num_q_heads, head_dim]`: the output.
    pub out: u64,
    /// `[num_blocks, block_size, num_kv_heads, head_dim]`.
    pub key_cache: u64,
    /// The V cache, laid out as `key_cache`.
    pub value_cache: u64,
    /// As in `PagedAttnParams`.
    pub block_table: u64,
    /// `i32 [num_seqs]`: keys in the cache for each request, this step's included.
    pub seq_lens: u64,
    /// `i32 [num_seqs + 1]`: prefix sum of query tokens per request.
    pub query_start_loc: u64,
    /// `f32 [num_q_heads]` ALiBi slopes, or 0 for none.
    pub alibi_slopes: u64,
    /// `i32 [grid x, 2]`: (request, first query token) of each tile.
    pub tiles: u64,
    /// `f32 [num_tokens, num_q_heads]` log-sum-exp of each row's scores (natural log), or 0.
    pub lse: u64,
    /// Elements between consecutive tokens of `q`.
    pub q_token_stride: u64,
    /// Elements between consecutive heads of a token of `q`.
    pub q_head_stride: u64,
    /// Elements between consecutive tokens of `out`.
    pub out_token_stride: u64,
    /// Elements between consecutive heads of a token of `out`.
    pub out_head_stride: u64,
    /// Elements between consecutive blocks of the cache.
    pub cache_block_stride: u64,
    /// Elements between consecutive tokens of a cache block.
    pub cache_token_stride: u64,
    /// Elements between consecutive kv heads of a cached token.
    pub cache_head_stride: u64,
    /// Entries per request's row of `block_table`.
    pub block_table_stride: u32,
    /// Query heads.
    pub num_q_heads: u32,
    /// KV heads.
    pub num_kv_heads: u32,
    /// log2 of the tokens per cache block (a power of two).
    pub block_size_log2: u32,
    /// Keys a query may see to its left, itself included; 0 = unlimited.
    pub sliding_window: u32,
    /// Query heads of the group in one tile (`min(group, PREFILL_ROWS)`); grid y is
    /// `num_kv_heads * ceil(group / heads_per_tile)`.
    pub heads_per_tile: u32,
    /// Query tokens in one tile: `PREFILL_ROWS / heads_per_tile`.
    pub tokens_per_tile: u32,
    /// Softmax scale, applied to `q . k`.
    pub scale: f32,
    /// Logits soft-cap (`cap * tanh(s / cap)`); 0 = off.
    pub softcap: f32,
    /// As in `PagedAttnParams` (chunked local attention); 0 = none.
    pub chunk_size: u32,
    /// The Hopper kernel's K and V cache tensor maps (`CUtensorMap`, 128 bytes each, in
    /// global memory: the copy engine's view of the cache as 2-D `[blocks x block_size,
    /// kv_heads x head_dim]`, boxes of 64 columns x `min(block_size, keys per tile)` rows,
    /// 128-byte swizzle); unused by the portable kernel.
    pub k_tmap: u64,
    /// As `k_tmap`, for the V cache.
    pub v_tmap: u64,
    /// As in `PagedAttnParams`.
    pub k_scale: u64,
    /// As `k_scale`, for V.
    pub v_scale: u64,
    /// As in `PagedAttnParams` (attention sinks); 0 = none.
    pub sinks: u64,
    /// Bidirectional (an encoder layer, vLLM's encoder-only attention): every query of a
    /// request sees all its `seq_lens` keys, and K, V are the step's own tensors `[tokens,
    /// kv_heads, head_dim]` (`key_cache`, `value_cache`; key `j` of request `r` is row
    /// `query_start_loc[r] + j`; `block_table` 0), not a cache. 0 = causal over the cache.
    pub bidirectional: u32,
    /// Padding to the struct's 8-byte alignment (unused).
    pub _pad: u32,
}

/// Warps of a portable prefill block (16 query rows each).
pub const PREFILL_WARPS: u32 = 8;
/// Query rows per block: 16 per warp (the rows of its m16n8k16 tiles).
pub const PREFILL_ROWS: u32 = 16 * PREFILL_WARPS;

/// Keys per K/V tile of the prefill kernel: 64 for d64, 32 up to d128, 16 for d256 (whose
/// 128 output registers per thread leave room for no more score fragments).
pub const fn prefill_keys(d: u32) -> u32 {
    if d > 128 { 16 } else if d > 64 { 32 } else { 64 }
}
/// K/V tiles in flight (cp.async pipeline depth).
pub const fn prefill_stages(d: u32) -> u32 {
    if d > 128 { 2 } else { 4 }
}
/// Whether the prefill kernel reads Q's fragments from shared memory at every k-step (d > 64)
/// rather than holding them in registers: beside the output and score fragments they would
/// spill.
pub const fn prefill_q_in_smem(d: u32) -> bool {
    d > 64
}
/// Dynamic shared memory of the prefill kernel over a cache of `kv_bytes`-byte elements: the
/// Q tile (`PREFILL_ROWS` rows) and `prefill_stages(d)` pairs of K and V tiles as stored, and
/// for fp8 the converted 16-bit pair. 16-bit: d64 80 KiB, d96, d128 and d256 96 KiB; fp8:
/// d128 80 KiB.
pub const fn prefill_smem_bytes(d: u32, kv_bytes: u32) -> u32 {
    let row = smem_row_chunks(d) * 16;
    let converted = if kv_bytes < 2 { 2 * prefill_keys(d) * row } else { 0 };
    PREFILL_ROWS * row + prefill_stages(d) * 2 * prefill_keys(d) * (row / 2 * kv_bytes) + converted
}

/// The Hopper prefill kernel (`Family::FlashPrefillSm90` in `registry`, sm_90a module
/// only): the portable kernel's tiles (`PREFILL_ROWS` rows: two warpgroups of 64, the same
/// `PrefillParams` and plan), its products on `wgmma`.
/// Threads of the Hopper prefill block: two consumer warpgroups (64 rows each) and a
/// producer warpgroup whose first warp issues the copy engine's loads (build.rs gives the
/// entry point the `.maxntid` of its table row, `registry::KERNELS`: `setmaxnreg` needs a
/// kernel that starts under a register cap).
pub const PREFILL_SM90_THREADS: u32 = 384;
/// The smallest block size the Hopper kernel serves: its copies move whole 8-row groups of
/// the 128-byte swizzle (smaller blocks take the portable kernel).
pub const PREFILL_SM90_MIN_BLOCK: u32 = 8;
/// Keys per K/V tile: 128 up to d128, 64 for d256 (the score accumulators beside the
/// output's 128 registers a thread).
pub const fn prefill_sm90_keys(d: u32) -> u32 {
    if d > 128 { 64 } else { 128 }
}
/// K/V tiles in flight (as many as shared memory holds).
pub const fn prefill_sm90_stages(d: u32) -> u32 {
    if d > 128 { 2 } else if d > 64 { 3 } else { 4 }
}
/// Dynamic shared memory: 1024 bytes of alignment slack (the 128-byte swizzle's period),
/// the Q tile and the K/V stages (every tile `d x 2` bytes a row), two mbarriers a stage.
/// d64: 145 KiB, d128: 225 KiB, d256: 193 KiB (sm_90 allows 227).
pub const fn prefill_sm90_smem_bytes(d: u32) -> u32 {
    1024 + PREFILL_ROWS * d * 2 + prefill_sm90_stages(d) * (2 * prefill_sm90_keys(d) * d * 2 + 16)
}

/// MLA decode (DeepSeek-V2/V3, absorbed form) over the latent cache
/// `[num_blocks, block_size, MLA_LATENT_DIM]`: one latent kv head whose first `MLA_RANK` dims
/// are also the values. A thread block owns `MLA_ROWS` rows of one request, the (query
/// token, head) pairs in q's order (row `i`: token `i / num_q_heads`, head
/// `i % num_q_heads`), and one split of its keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MlaParams {
    /// `[num_tokens, num_q_heads, MLA_LATENT_DIM]` (the absorbed query: `W_UK^T q_nope`, q_pe).
    pub q: u64,
    /// `[num_tokens, num_q_heads, MLA_RANK]`: the latent output (the model applies `W_UV`).
    pub out: u64,
    /// `[num_blocks, block_size, MLA_LATENT_DIM]` (fp8: rows of `MLA_FP8_ROW_BYTES`).
    pub cache: u64,
    /// `i32 [num_seqs, block_table_stride]`: logical block -> physical block.
    pub block_table: u64,
    /// `i32 [num_seqs]`: keys in the cache for each request, this step's included.
    pub seq_lens: u64,
    /// `i32 [num_seqs + 1]`: prefix sum of query tokens per request.
    pub query_start_loc: u64,
    /// `i32 [items, 4]`: the plan's work items, each (request, split, first key, end key):
    /// split `split` of the request reads its keys `[first, end)`.
    pub splits: u64,
    /// `i32 [grid y + 1]`: the Hopper kernel's persistent schedule, block y running items
    /// `parts[y] .. parts[y + 1]` (one contiguous run of the step's work); the portable
    /// kernel's block y runs item y (and reads no parts).
    pub parts: u64,
    /// As `MergeParams::token_splits`: a token of one split is written to `out` directly,
    /// one of several to the workspace slots `first + s`.
    pub token_splits: u64,
    /// As in `PagedAttnParams` (rows of `MLA_RANK` f32), indexed by slot.
    pub partial_out: u64,
    /// The split-KV workspace's (running max in log2 units, denominator) of each partial row.
    pub partial_ml: u64,
    /// `f32 [num_tokens, num_q_heads]` log-sum-exp (natural log), or 0.
    pub lse: u64,
    /// Elements between consecutive tokens of `q`.
    pub q_token_stride: u64,
    /// Elements between consecutive heads of a token of `q`.
    pub q_head_stride: u64,
    /// Elements between consecutive tokens of `out`.
    pub out_token_stride: u64,
    /// Elements between consecutive heads of a token of `out`.
    pub out_head_stride: u64,
    /// Elements (fp8: bytes) between consecutive blocks of the cache.
    pub cache_block_stride: u64,
    /// Elements (fp8: bytes) between consecutive tokens of a cache block.
    pub cache_token_stride: u64,
    /// Entries per request's row of `block_table`.
    pub block_table_stride: u32,
    /// Query heads.
    pub num_q_heads: u32,
    /// log2 of the tokens per cache block (a power of two).
    pub block_size_log2: u32,
    /// Softmax scale, applied to `q . k`.
    pub scale: f32,
    /// The Hopper kernel's tensor map of the latent cache (a `CUtensorMap` in global memory:
    /// `[blocks x block_size, MLA_LATENT_DIM]` in boxes of 64 columns x `min(block_size,
    /// MLA_SM90_KEYS)` rows, 128-byte swizzle); unused by the portable kernel.
    pub tmap: u64,
}

/// The MLA cache write: this step's `kv_c` `[num_tokens, MLA_RANK]` and `k_pe`
/// `[num_tokens, MLA_ROPE]` into one latent row of the cache at each token's slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MlaCacheWriteParams {
    /// `[num_tokens, MLA_RANK]`: this step's compressed KV latents.
    pub kv_c: u64,
    /// `[num_tokens, MLA_ROPE]`: this step's rotary key parts.
    pub k_pe: u64,
    /// The latent cache `[num_blocks, block_size, MLA_LATENT_DIM]` (fp8: `[num_blocks,
    /// block_size]` rows of `MLA_FP8_ROW_BYTES`).
    pub cache: u64,
    /// `i64 [num_tokens]`; negative: padding, skipped.
    pub slot_mapping: u64,
    /// Elements between consecutive tokens of `kv_c`.
    pub kv_c_token_stride: u64,
    /// Elements between consecutive tokens of `k_pe`.
    pub k_pe_token_stride: u64,
    /// Elements (fp8: bytes) between consecutive blocks of the cache.
    pub cache_block_stride: u64,
    /// Query tokens of the step.
    pub num_tokens: u32,
    /// Tokens per cache block.
    pub block_size: u32,
}

/// MLA's dims (DeepSeek-V2/V3, Kimi-K2): latent rank (the values' width), rope dims, and
/// the latent row (the keys' width).
pub const MLA_RANK: u32 = 512;
/// MLA's rotary dims, the latent row's tail.
pub const MLA_ROPE: u32 = 64;
/// A latent row's width: the rank and the rotary dims (576).
pub const MLA_LATENT_DIM: u32 = MLA_RANK + MLA_ROPE;
/// MLA decode: warps per block (two per 16-row group, each holding half of the output
/// columns and computing half of each score's dims), rows per block, keys per tile, tiles
/// in flight.
pub const MLA_WARPS: u32 = 8;
/// (token, head) rows one MLA block computes (16 per pair of warps).
pub const MLA_ROWS: u32 = 16 * (MLA_WARPS / 2);
/// Keys per MLA tile.
pub const MLA_KEYS: u32 = 32;
/// The MLA decode kernel's pipeline depths (K tiles in flight): 2 fits the 163 KiB an sm_80
/// block may have (`mla_decode_<tag>`), 3 the 227 KiB of sm_90 (`mla_decode_<tag>_s3`),
/// which keeps twice the bytes in flight for the memory-bound shapes.
pub const MLA_STAGES: [u32; 2] = [2, 3];
/// The fp8 latent cache's depths (`mla_decode_<tag>_e4m3[_s3]`): its tiles in flight are the
/// 656-byte rows as stored, converted into two 16-bit tiles (sm_90's 227 KiB; an sm_80
/// block's 163 KiB holds none of them).
pub const MLA_FP8_STAGES: [u32; 2] = [2, 3];
/// The fp8 latent row (FlashMLA's format for DeepSeek-V3.2): `MLA_RANK` e4m3 bytes, one f32
/// scale per `MLA_FP8_TILE` of them, then the `MLA_ROPE` rotary dims in the model's 16-bit
/// type: 512 + 16 + 128 = 656 bytes (41 16-byte chunks).
pub const MLA_FP8_ROW_BYTES: u32 = MLA_RANK + 4 * (MLA_RANK / MLA_FP8_TILE) + 2 * MLA_ROPE;
/// Latent values that share one scale in an fp8 latent row.
pub const MLA_FP8_TILE: u32 = 128;
/// Byte offsets in an fp8 latent row of the scales and of the rotary dims.
pub const MLA_FP8_SCALES_AT: u32 = MLA_RANK;
/// Byte offset of the rotary dims in an fp8 latent row.
pub const MLA_FP8_ROPE_AT: u32 = MLA_RANK + 4 * (MLA_RANK / MLA_FP8_TILE);
/// Bytes of one cache row (a key) of the latent cache: 576 16-bit values, or the fp8 row.
pub const fn mla_row_bytes(kv_bytes: u32) -> u32 {
    if kv_bytes == 1 { MLA_FP8_ROW_BYTES } else { MLA_LATENT_DIM * 2 }
}
/// Dynamic shared memory of the MLA decode kernel with `stages` K tiles over a cache of
/// `kv_bytes`-byte elements (2: 16-bit, 1: fp8): the Q tile (`MLA_ROWS` latent rows), the K
/// tiles of `MLA_KEYS` cache rows (the V tiles are their first `MLA_RANK` dims; an fp8
/// cache adds the two 16-bit tiles they are converted into), and the warps' partial-score
/// exchange (`MLA_KEYS / 8` n-tiles of 4 f32 per lane): 16-bit 160 KiB with 2 stages, 196
/// KiB with 3; fp8 201 KiB with 2, 221.5 KiB with 3.
pub const fn mla_smem_bytes(stages: u32, kv_bytes: u32) -> u32 {
    let row = MLA_LATENT_DIM * 2;
    let converted = if kv_bytes == 1 { 2 * MLA_KEYS * row } else { 0 };
    MLA_ROWS * row + converted + stages * MLA_KEYS * mla_row_bytes(kv_bytes) + MLA_WARPS * 32 * (MLA_KEYS / 8) * 16
}
/// The pipeline depths of the MLA decode over a cache of `kv_bytes`-byte elements.
pub const fn mla_stages(kv_bytes: u32) -> &'static [u32] {
    if kv_bytes == 1 { &MLA_FP8_STAGES } else { &MLA_STAGES }
}

/// The Hopper MLA decode (`mla_decode_sm90`): a producer warpgroup and two consumer
/// warpgroups, each consumer all `MLA_ROWS` rows and half the value dims.
pub const MLA_SM90_THREADS: u32 = 384;
/// The Hopper MLA decode's two tile shapes, by pipeline depth: 2 stages of 64 keys
/// (wgmma n64), or 4 of 32 (n32: twice the tiles in flight at the same shared memory).
pub const MLA_SM90_STAGES: [u32; 2] = [2, 4];
/// Keys per K tile of the Hopper MLA decode at pipeline depth `stages`.
pub const fn mla_sm90_keys(stages: u32) -> u32 {
    if stages >= 4 { 32 } else { 64 }
}
/// Smallest block size the Hopper MLA decode serves (its boxes are whole 8-row groups of the
/// 128-byte swizzle).
pub const MLA_SM90_MIN_BLOCK: u32 = 8;
/// Bytes of the Hopper MLA decode's exchange between its two consumer warpgroups (the
/// seesaw): one tile's probabilities P as a 64 x 64 16-bit `sw128` slab (the A operand of the
/// follower's `P V`), each consumer thread's two row maxima, and the two warpgroups' `ready`
/// mbarriers.
pub const MLA_SM90_EXCHANGE_BYTES: u32 = MLA_ROWS * 64 * 2 + 128 * 8 + 16;
/// mbarriers a K stage of the Hopper MLA decode (its `Ring`): a `full` a 64-column slab (9),
/// the `empty` one and fp8's `raw` one.
pub const MLA_SM90_STAGE_BARS: u32 = MLA_LATENT_DIM / 64 + 2;
/// Bytes of a `CUtensorMap`: the host encodes them, the kernels take their addresses (the
/// host checks this against the driver's type).
pub const TENSOR_MAP_BYTES: u32 = 128;
/// Dynamic shared memory of the Hopper MLA decode at depth `stages`: 1024 bytes of alignment
/// slack, the Q tile, the K stages with their mbarriers, the exchange (231,616 or 231,792
/// bytes; the limit is 232,448).
pub const fn mla_sm90_smem_bytes(stages: u32) -> u32 {
    1024 + MLA_ROWS * MLA_LATENT_DIM * 2 + stages * (mla_sm90_keys(stages) * MLA_LATENT_DIM * 2 + MLA_SM90_STAGE_BARS * 8) + MLA_SM90_EXCHANGE_BYTES
}
const _: () = assert!(mla_sm90_smem_bytes(2) <= 232_448 && mla_sm90_smem_bytes(4) <= 232_448);

/// Threads per block of the cache-write kernel.
pub const CACHE_WRITE_THREADS: u32 = 128;
