//! CUDA paged backend: the Rust PTX kernels of `device-kernels/`.
//!
//! - `reshape_and_cache_b16`: this step's K/V into the cache through the slot mapping;
//! - `paged_attention_<dtype>_d<head_dim>`: the decode rows, one query token per block over
//!   the block table, the GQA group's heads as tensor-core tile rows; on an sm_90a module,
//!   over an fp8 cache `paged_attention_sm90_<dtype>_e4m3_d<head_dim>[_s<depth>]` and over a
//!   16-bit one at d256 `paged_attention_sm90_<dtype>_d256_s3` (deeper pipelines where the
//!   portable depth leaves the bandwidth short) ([`decode_kernel`]);
//! - `merge_splits_<dtype>`: flash-decoding's merge when the plan splits the decode rows' keys;
//! - `flash_prefill_<dtype>_d<head_dim>[_softcap][_alibi]`: the rows of requests with two or more new tokens
//!   (chunked or fresh prefill), 128 (token, head) rows per block over shared K/V tiles;
//! - `flash_prefill_sm90_<dtype>_d<head_dim>[...]` (sm_90a module, [`hopper_prefill`]): the
//!   same tiles on wgmma, K/V brought by the copy engine through the cache's tensor maps
//!   (encoded once per layer, `cache_tensor_map`);
//! - `flash_prefill_cvt_<dtype>_e4m3_d<head_dim>[...]` (sm_90a module, [`mma_prefill_kernel`]):
//!   prefill over an fp8 cache there, the portable kernel on the hardware's conversion.
//!
//! Plan, then run: [`plan`] is a pure function of a step's metadata, the layer's shape and
//! the device's properties (split count, grids, workspace); [`DeviceMetadata`] is the
//! step's metadata on the device, in buffers sized once for the step limits and refilled by
//! one asynchronous upload per step; [`CudaPagedImpl::run_device`] only launches, for every
//! layer of the step, and can be captured in a CUDA graph.

use crate::attention_impl::AttentionImpl;
use crate::backend_name::BackendName;
use crate::caps::BackendCaps;
use crate::cuda_plumbing::DeviceTensors;
pub use crate::cuda_plumbing::{merge_kernel, DeviceMetadata};
use crate::cuda_plumbing::{check_len, check_rows, function_with_smem, max_shared_memory_per_block, ptr, query_type, tensor_map, through_device, DeviceRows, BACKEND_MAPS};
use crate::cuda::CudaRuntime;
use crate::dtype::{DType, Element, KvCacheDType};
use crate::error::{AttnError, Result};
use crate::kv_cache::{HostKvCache, KvCacheLayout};
use crate::metadata::AttentionMetadata;
use crate::params::{
    paged_smem_bytes, prefill_smem_bytes, CacheWriteParams, MergeParams, PagedAttnParams, PrefillParams, paged_sm90_stages,
    CACHE_WRITE_THREADS, PAGED_ROWS, PAGED_WARPS, PREFILL_ROWS, PREFILL_SM90_MIN_BLOCK, PREFILL_SM90_THREADS, PREFILL_WARPS,
};
use crate::platform::{ArchFeatures, DeviceProps};
use crate::registry::{Family, KernelId, KvType, QType, ScoreMod};
use crate::cuda_cache::DeviceKvCache;
use crate::cuda_plumbing::kv_type;
use crate::fp8::KvScales;
use crate::spec::AttnSpec;
use crate::plan::{KernelLaunch, LayerShape, PlanOptions, StepLimits, StepPlan};
use crate::step::Step;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::marker::PhantomData;
use std::sync::Arc;

/// CUDA_PAGED's capability row: MHA/GQA/MQA, f16/bf16, the table's head dims, compute capability 8.0+ (the wgmma prefill on sm_90a).
pub static CAPS: BackendCaps = BackendCaps {
    kernels: "prefill rows (requests with 2 or more new tokens) -> flash_prefill: 128-row tiles of (token, GQA head) pairs sharing each K/V tile, mma.sync, causal tiles skipped; \
              decode rows (1 new token) -> paged_attention: the GQA group's heads as the rows of the tensor-core tiles, split-KV + merge when the decode rows alone do not fill the GPU",
    on_sm90: Some(
        "on compute capability 9.0 (the sm_90a module), prefill rows of head dim 64, 128 or 256 over blocks of 8 or more tokens -> flash_prefill_sm90: the same tiles on wgmma \
         (two warpgroups of 64 rows, Q, K and V read by the tensor cores from shared memory); ATTN_BACKEND=CUDA_PAGED_PORTABLE keeps mma.sync",
    ),
    ..PAGED_ROW
};

/// `CUDA_PAGED_PORTABLE`: the same backend with the portable (`mma.sync`) prefill on every
/// device, for comparing the kernels on a Hopper GPU (`ATTN_BACKEND=CUDA_PAGED_PORTABLE`).
pub static PORTABLE_CAPS: BackendCaps = BackendCaps {
    name: BackendName::CudaPagedPortable,
    kernels: "as CUDA_PAGED, with the portable mma.sync prefill (flash_prefill) on every architecture",
    ..PAGED_ROW
};

/// The two rows' common fields.
const PAGED_ROW: BackendCaps = BackendCaps {
    name: BackendName::CudaPaged,
    min_compute_capability: Some(80),
    cpu: false,
    dtypes: &[DType::F16, DType::Bf16],
    kv_cache_dtypes: PAGED_KV_DTYPES,
    mla_kv_cache_dtypes: &[],
    head_dims: crate::registry::HEAD_DIMS,
    mha: true,
    mla: false,
    sliding_window: true,
    softcap: true,
    alibi: true,
    chunked: true,
    sinks: true,
    bidirectional: true,
    block_sizes: (1, 256),
    shared_memory_bytes: Some(shared_memory_bytes),
    kernels: "",
    on_sm90: None,
};

/// The KV-cache dtypes the table's kernels serve: fp8 where its cache write, decode and
/// portable prefill all have an fp8 row.
const PAGED_KV_DTYPES: &[KvCacheDType] = {
    use crate::registry::family_has_kv as has;
    let fp8 = KvType::Fp8E4m3;
    if has(Family::CacheWrite, fp8) && has(Family::PagedDecode, fp8) && has(Family::FlashPrefill, fp8) {
        &[KvCacheDType::Auto, KvCacheDType::Fp8E4m3]
    } else {
        &[KvCacheDType::Auto]
    }
};

/// The larger of the decode and prefill kernels' dynamic shared memory.
fn shared_memory_bytes(head_dim: usize) -> usize {
    paged_smem_bytes(head_dim as u32, 2).max(prefill_smem_bytes(head_dim as u32, 2)) as usize
}

/// Keys one split should at least cover: below this the merge costs more than it saves.
pub const MIN_KEYS_PER_SPLIT: usize = 512;
/// Keys per split for ragged batches, whose longest requests would otherwise finish last.
pub const RAGGED_KEYS_PER_SPLIT: usize = 2048;
/// Most splits per query token (the plan's limit, `crate::plan::MAX_SPLITS`).
pub use crate::plan::MAX_SPLITS;

/// Flash-decoding's split count, from the grid without splits (`blocks`), the longest and
/// the mean sequence, and how many blocks the device holds at once (`resident`).
/// - Fewer blocks than fit at once: split to fill one wave, `resident / blocks`.
/// - Ragged batches (longest > 1.5 x mean): split the longest into
///   `RAGGED_KEYS_PER_SPLIT`-key pieces, so the tail of the grid is short.
/// - Otherwise 1. Never below `MIN_KEYS_PER_SPLIT` keys per split, never above `MAX_SPLITS`.
///
/// Examples (benches/WORKLOADS.md on an H100: 132 SMs x 2 resident blocks = 264; measured best in
/// brackets): D3 (4 x 32768 keys, 8 kv heads: 32 blocks) -> 264 / 32 = 8 [4-8];
/// D4 (128 ragged, 253..8184 keys, mean 4371: 1024 blocks) -> ceil(8184 / 2048) = 4 \[4\];
/// D1 (64 x 4096: 512 blocks, uniform) -> 1 \[1\].
pub fn num_splits_heuristic(blocks: usize, max_seq_len: usize, mean_seq_len: usize, resident: usize) -> usize {
    if blocks == 0 {
        return 1;
    }
    let wanted = if blocks < resident {
        resident / blocks
    } else if 2 * max_seq_len > 3 * mean_seq_len {
        max_seq_len.div_ceil(RAGGED_KEYS_PER_SPLIT)
    } else {
        1
    };
    let by_length = (max_seq_len / MIN_KEYS_PER_SPLIT).max(1);
    wanted.min(by_length).min(MAX_SPLITS).max(1)
}

/// The kernel table's id of a family's kernel (`stages` 0, the score modifier given).
fn kernel(family: Family, q: QType, kv: KvType, head_dim: usize, score: ScoreMod) -> KernelId {
    KernelId { family, q, kv, head_dim: head_dim as u32, score, stages: 0 }
}

/// The decode (paged attention) kernel: modifiers at run time. `CUDA_PAGED` takes the sm_90a
/// module's kernel where the device runs it (`arch`) and the table has one: over an fp8 cache
/// (the hardware's fp8 conversion, f16 MMAs), and over a 16-bit cache at d256, each at the
/// depth of `paged_sm90_stages` (deeper where the portable depth leaves the H200's bandwidth
/// short); otherwise, and on `CUDA_PAGED_PORTABLE`, the portable one.
pub fn decode_kernel(backend: BackendName, arch: &ArchFeatures, q: QType, kv: KvType, head_dim: usize) -> KernelId {
    let sm90 = KernelId { stages: paged_sm90_stages(head_dim as u32, kv.bytes()), ..kernel(Family::PagedDecodeSm90, q, kv, head_dim, ScoreMod::Dynamic) };
    if backend == BackendName::CudaPaged && arch.runs_id(&sm90) {
        sm90
    } else {
        kernel(Family::PagedDecode, q, kv, head_dim, ScoreMod::Dynamic)
    }
}
/// The cache write: bitwise for a 16-bit cache, per query type for fp8 (it converts).
pub fn cache_write_kernel(q: QType, kv: KvType) -> KernelId {
    let q = if kv == KvType::Native { QType::B16 } else { q };
    kernel(Family::CacheWrite, q, kv, 0, ScoreMod::Plain)
}
/// The prefill kernel for a query type, KV dtype, head dim and score modifiers (soft-cap,
/// ALiBi: one instantiation each, so the plain kernel carries neither); `hopper`: the
/// wgmma kernel of the sm_90a module.
pub fn prefill_kernel(q: QType, kv: KvType, head_dim: usize, softcap: bool, alibi: bool, hopper: bool) -> KernelId {
    let family = if hopper { Family::FlashPrefillSm90 } else { Family::FlashPrefill };
    kernel(family, q, kv, head_dim, ScoreMod::of(softcap, alibi))
}

/// The mma.sync prefill kernel `backend` runs where the wgmma one does not serve: over an
/// fp8 cache on `CUDA_PAGED`, the sm_90a module's kernel on the hardware's conversion where
/// the device runs it (`arch`); otherwise the portable one.
pub fn mma_prefill_kernel(backend: BackendName, arch: &ArchFeatures, q: QType, kv: KvType, head_dim: usize, softcap: bool, alibi: bool) -> KernelId {
    let cvt = kernel(Family::FlashPrefillCvt, q, kv, head_dim, ScoreMod::of(softcap, alibi));
    if backend == BackendName::CudaPaged && arch.runs_id(&cvt) { cvt } else { prefill_kernel(q, kv, head_dim, softcap, alibi, false) }
}

/// Whether `backend` runs prefill on the Hopper kernel: `CUDA_PAGED` on a device that runs
/// the table's Hopper prefill for this query type, KV dtype and head dim (`arch`), over
/// blocks of 8 or more tokens (its copies move whole 8-row groups of the 128-byte swizzle).
/// The plan and the impl (which loads the kernel and its tensor maps) both ask this, so a
/// plan never names a kernel not loaded.
pub fn hopper_prefill(backend: BackendName, arch: &ArchFeatures, q: QType, kv: KvType, head_dim: usize, block_size: usize) -> bool {
    backend == BackendName::CudaPaged
        && block_size >= PREFILL_SM90_MIN_BLOCK as usize
        && arch.runs_id(&prefill_kernel(q, kv, head_dim, false, false, true))
}

/// Bytes of a `CUtensorMap`.
pub use crate::cuda_plumbing::TENSOR_MAP_BYTES;

/// The copy engine's view of a paged cache `[blocks, block_size, kv_heads, head_dim]`: a
/// 2-D tensor of `blocks x block_size` rows of `kv_heads x head_dim` elements, read in boxes
/// of 64 columns (128 bytes) x `min(block_size, keys per tile)` rows, written to shared
/// memory with the 128-byte swizzle the wgmma descriptors describe. Encoded by the driver,
/// returned as its bytes (the kernel reads it from global memory).
fn cache_tensor_map(cache: &CudaSlice<u8>, layout: &KvCacheLayout, dtype: DType, stream: &CudaStream) -> Result<Vec<u8>> {
    let rows = layout.block_size.min(crate::params::prefill_sm90_keys(layout.head_dim as u32) as usize);
    tensor_map(ptr(cache, stream), layout.num_blocks * layout.block_size, layout.token_stride(), rows, dtype)
}

/// The device's properties a plan reads: SMs, and blocks of the decode kernel per SM
/// (the driver's occupancy calculator), for a layer of `dtype`, `kv` and `head_dim`.
pub fn device_props(rt: &CudaRuntime, dtype: DType, kv: KvType, head_dim: usize) -> Result<DeviceProps> {
    let id = decode_kernel(BackendName::CudaPaged, &rt.features(), query_type(dtype, "CUDA_PAGED")?, kv, head_dim);
    let f = function_with_smem(rt, BackendName::CudaPaged, id, head_dim)?;
    let per_sm = f.occupancy_max_active_blocks_per_multiprocessor(PAGED_WARPS * 32, id.smem_bytes() as usize, None)?;
    Ok(DeviceProps { num_sms: rt.num_sms(), attention_blocks_per_sm: per_sm.max(1), max_shared_memory_per_block: max_shared_memory_per_block(rt)?, arch: rt.features() })
}

/// Requests with at least this many query tokens go to the prefill kernel; the others (a
/// decode's one token) to the paged decode kernel.
pub const PREFILL_MIN_QUERY_LEN: usize = 2;

/// The prefill kernel's tile for a GQA group of `group` query heads: (heads per tile, tokens
/// per tile) = `(min(group, 128), 128 / that)` (`PREFILL_ROWS` = 128 rows). Example: Llama-3
/// (group 4): 4 heads x 32 tokens; MHA: 1 x 128; Falcon-7B (71:1): 71 heads x 1 token; a
/// group of 136: two head tiles of 128 and 8 heads.
pub fn prefill_tiling(group: usize) -> (usize, usize) {
    let rows = PREFILL_ROWS as usize;
    let hpt = group.clamp(1, rows);
    (hpt, rows / hpt)
}

/// The plan of a step for layers of `shape` in `dtype` (pure: tested on the CPU).
///
/// Rows: a request with `PREFILL_MIN_QUERY_LEN` or more query tokens goes to the flash
/// prefill kernel, cut into tiles of [`prefill_tiling`] tokens, launched longest key range
/// first; one-token requests go to the paged decode kernel (one query token per block, the
/// GQA group's heads as tile rows): grid `(decode tokens, kv heads x head tiles, splits)`.
/// The split count is the heuristic's ([`num_splits_heuristic`], over the decode rows) or
/// the forced one, and never more than the workspace holds (`limits.split_rows / decode
/// tokens`); split steps add the merge, grid `(decode tokens, q heads)`. Before them all, the
/// cache write, grid `(tokens)`.
///
/// `backend`: `CudaPaged` takes the Hopper prefill kernel where the device's module has it
/// ([`hopper_prefill`]); `CudaPagedPortable` keeps the `mma.sync` one everywhere.
pub fn plan(meta: &AttentionMetadata, shape: &LayerShape, dtype: DType, props: &DeviceProps, limits: &StepLimits, opts: &PlanOptions, backend: BackendName) -> Result<StepPlan> {
    let q = query_type(dtype, "CUDA_PAGED")?;
    let kv = kv_type(meta.layout().kv_dtype);
    if !shape.causal {
        meta.check_no_context("a bidirectional (encoder) layer attends over the step's own tokens only")?;
    }
    let (n, hq, hkv, d) = (meta.num_tokens(), shape.num_q_heads, shape.num_kv_heads, shape.head_dim);
    let (hpt, tpt) = prefill_tiling(shape.group_size());

    // Which kernel serves which rows.
    let mut decode_tokens = Vec::new();
    let mut prefill_tiles = Vec::new();
    let mut keys_of_tile = Vec::new();
    let (mut dec_max, mut dec_sum) = (0usize, 0usize);
    for r in 0..meta.num_reqs() {
        let (q0, ql) = (meta.query_start_loc()[r] as usize, meta.query_len(r));
        let seq = meta.seq_lens()[r] as usize;
        if ql >= PREFILL_MIN_QUERY_LEN || !shape.causal {
            for t in (0..ql).step_by(tpt) {
                let tokens = tpt.min(ql - t);
                prefill_tiles.push(PrefillTile { request: r as u32, first_token: (q0 + t) as u32, tokens: tokens as u32 });
                // Keys the tile reads: up to its last token's position (+1).
                keys_of_tile.push(seq - ql + t + tokens);
            }
        } else {
            decode_tokens.extend((q0..q0 + ql).map(|t| t as u32));
            // The keys it reads: from its first key on (context parallelism's windows).
            let keys = seq - meta.first_key(r);
            dec_max = dec_max.max(keys);
            dec_sum += keys * ql;
        }
    }
    let first_keys = !meta.first_keys().is_empty();
    if first_keys && !prefill_tiles.is_empty() {
        return Err(AttnError::InvalidConfig(format!(
            "the step's maps give requests a first visible key, which only the decode kernel reads; {} rows would run the prefill kernel (a DCP rank's maps have one-token requests only)",
            n - decode_tokens.len()
        )));
    }
    let mut order: Vec<usize> = (0..prefill_tiles.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(keys_of_tile[i]));
    let prefill_tiles: Vec<PrefillTile> = order.into_iter().map(|i| prefill_tiles[i]).collect();

    let nd = decode_tokens.len();
    let tiles = shape.group_size().div_ceil(PAGED_ROWS as usize);
    let fit = limits.split_rows.checked_div(nd).unwrap_or(MAX_SPLITS).clamp(1, MAX_SPLITS);
    let num_splits = match opts.force_splits {
        Some(s) if !(1..=MAX_SPLITS).contains(&s) => {
            return Err(AttnError::InvalidConfig(format!("{s} splits: must be in 1..={MAX_SPLITS}")));
        }
        Some(s) if s > fit => {
            return Err(AttnError::StepTooLarge(format!(
                "{s} splits of {nd} decode tokens need {} workspace rows, the step limit split_rows is {}",
                s * nd,
                limits.split_rows
            )));
        }
        Some(s) => s,
        None => num_splits_heuristic(nd * hkv * tiles, dec_max, dec_sum / nd.max(1), props.resident_blocks()).min(fit),
    };
    let mut launches = Vec::new();
    // A bidirectional (encoder) layer attends over the step's own K/V: nothing is cached.
    if n > 0 && shape.causal {
        launches.push(KernelLaunch { kernel: cache_write_kernel(q, kv), grid: (n as u32, 1, 1), block: CACHE_WRITE_THREADS, shared_mem_bytes: 0, tokens: n });
    }
    if nd > 0 {
        let id = decode_kernel(backend, &props.arch, q, kv, d);
        launches.push(KernelLaunch {
            kernel: id,
            grid: (nd as u32, (hkv * tiles) as u32, num_splits as u32),
            block: PAGED_WARPS * 32,
            shared_mem_bytes: id.smem_bytes(),
            tokens: nd,
        });
        if num_splits > 1 {
            launches.push(KernelLaunch { kernel: merge_kernel(q), grid: (nd as u32, hq as u32, 1), block: (d / 8) as u32, shared_mem_bytes: 0, tokens: nd });
        }
    }
    if !prefill_tiles.is_empty() {
        // The same tiles and parameters on either kernel: 8 warps, or on the Hopper one two
        // consumer warpgroups of 64 rows and a producer warpgroup.
        // (An encoder layer's copies go through tensor maps of the step's K/V instead of the
        // cache's: `CudaPagedImpl::encoder_tensor_maps`.)
        let hopper = hopper_prefill(backend, &props.arch, q, kv, d, meta.layout().block_size);
        let id = if hopper { prefill_kernel(q, kv, d, shape.softcap, shape.alibi, true) } else { mma_prefill_kernel(backend, &props.arch, q, kv, d, shape.softcap, shape.alibi) };
        launches.push(KernelLaunch {
            kernel: id,
            grid: (prefill_tiles.len() as u32, (hkv * shape.group_size().div_ceil(hpt)) as u32, 1),
            block: if hopper { PREFILL_SM90_THREADS } else { PREFILL_WARPS * 32 },
            shared_mem_bytes: id.smem_bytes(),
            tokens: n - nd,
        });
    }
    let workspace_bytes = if num_splits > 1 { num_splits * nd * hq * (d + 2) * std::mem::size_of::<f32>() } else { 0 };
    Ok(StepPlan::new(backend, n, meta.num_reqs(), num_splits, launches, workspace_bytes, PagedRows { decode_tokens, prefill_tiles, first_keys }))
}

/// A tile of the prefill kernel: `tokens` consecutive query tokens of `request`, from the
/// step's token `first_token`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillTile {
    /// The request the tile's tokens belong to.
    pub request: u32,
    /// The tile's first query token (a step-wide index).
    pub first_token: u32,
    /// Query tokens in the tile.
    pub tokens: u32,
}

/// The paged backends' rows of a plan ([`StepPlan::rows`]): which query tokens each kernel
/// serves.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PagedRows {
    /// The query tokens the decode kernel serves, in its grid's order (all of them when no
    /// request goes to the prefill kernel).
    pub decode_tokens: Vec<u32>,
    /// The prefill kernel's tiles, in launch order (longest key range first).
    pub prefill_tiles: Vec<PrefillTile>,
    /// Whether the step's maps give each request a first visible key (the decode kernel
    /// reads them; context parallelism's windowed layers).
    pub first_keys: bool,
}

/// The paged backends' rows of a plan (every plan of theirs has them).
pub(crate) fn paged_rows(plan: &StepPlan) -> &PagedRows {
    plan.rows::<PagedRows>().expect("a paged backend's plan carries PagedRows")
}

/// The paged backends' device maps of a step: the decode kernel's token map and the prefill
/// kernel's (request, first token) tiles, sized for the step limits.
pub struct PagedWorkspace {
    decode_map: CudaSlice<i32>,
    prefill_tiles: CudaSlice<i32>,
}

impl PagedWorkspace {
    pub(crate) fn new(stream: &Arc<CudaStream>, limits: &StepLimits) -> Result<PagedWorkspace> {
        Ok(PagedWorkspace { decode_map: stream.alloc_zeros(limits.max_tokens)?, prefill_tiles: stream.alloc_zeros(2 * limits.max_tokens)? })
    }
}

impl DeviceRows for PagedWorkspace {
    fn maps(&self) -> [&CudaSlice<i32>; BACKEND_MAPS] {
        [&self.decode_map, &self.prefill_tiles]
    }
    fn fill(&self, plan: &StepPlan, staging: [&mut [i32]; BACKEND_MAPS]) -> Result<[usize; BACKEND_MAPS]> {
        let rows = paged_rows(plan);
        // The decode map only matters when some rows go elsewhere (else the kernel runs
        // without one); tiles are (request, first token).
        let nd = if rows.prefill_tiles.is_empty() { 0 } else { rows.decode_tokens.len() };
        let nt = rows.prefill_tiles.len();
        if nd > staging[0].len() || 2 * nt > staging[1].len() {
            return Err(AttnError::StepTooLarge(format!("{nd} decode rows, {nt} prefill tiles: past the step's buffers")));
        }
        for (dst, &t) in staging[0].iter_mut().zip(&rows.decode_tokens[..nd]) {
            *dst = t as i32;
        }
        for (dst, t) in staging[1].chunks_exact_mut(2).zip(&rows.prefill_tiles) {
            dst[0] = t.request as i32;
            dst[1] = t.first_token as i32;
        }
        Ok([nd, 2 * nt])
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The step's paged maps on the device (every paged step has them).
fn paged_workspace(dev: &DeviceMetadata) -> &PagedWorkspace {
    dev.rows::<PagedWorkspace>().expect("a paged backend's step holds a PagedWorkspace")
}

/// The decode kernel's token map: the step's decode rows when some rows go to the prefill
/// kernel, else none (0: block x is the token).
fn token_map(plan: &StepPlan, dev: &DeviceMetadata, stream: &CudaStream) -> u64 {
    if paged_rows(plan).prefill_tiles.is_empty() { 0 } else { ptr(&paged_workspace(dev).decode_map, stream) }
}

/// The log-sum-exp output's address, or 0 when the caller asked for none.
fn lse_ptr<T>(t: &DeviceTensors<'_, T>, stream: &CudaStream) -> u64 {
    t.lse.as_ref().map_or(0, |l| ptr(&**l, stream))
}

/// One layer on the CUDA paged backend; owns the layer's paged cache on the device.
pub struct CudaPagedImpl<T> {
    rt: Arc<CudaRuntime>,
    spec: AttnSpec,
    shape: LayerShape,
    layout: KvCacheLayout,
    /// The layer's cache (16-bit values, or fp8 bytes and their scales).
    cache: DeviceKvCache,
    alibi: Option<CudaSlice<f32>>,
    /// The attention-sink logits, one per query head, when the layer has them.
    sinks: Option<CudaSlice<f32>>,
    /// The kernels a step's plan may name, looked up once: the cache write, the decode, the
    /// merge, the portable prefill and (on an sm_90a module, backend CUDA_PAGED) the wgmma one.
    cache_write_fn: (KernelId, CudaFunction),
    attention_fn: (KernelId, CudaFunction),
    prefill_fns: Vec<(KernelId, CudaFunction)>,
    backend: BackendName,
    /// The K and V caches' tensor maps for the Hopper prefill's copy engine (two
    /// `CUtensorMap`s, `TENSOR_MAP_BYTES` apart), when that kernel is loaded.
    tensor_maps: Option<CudaSlice<u8>>,
    /// An encoder layer's tensor maps of the step's K and V for the Hopper prefill, and the
    /// (k, v, tokens) they were encoded for: re-encoded and uploaded (256 bytes) only when
    /// the caller's tensors move, so steps on the same buffers launch only.
    encoder_maps: std::sync::Mutex<Option<((u64, u64, usize), CudaSlice<u8>)>>,
    merge_fn: (KernelId, CudaFunction),
    _elem: PhantomData<T>,
}

impl<T: Element> CudaPagedImpl<T> {
    /// Allocates the layer's cache (zeroed) on the device, after the capability row accepted
    /// the layer (dtype, head dim, features, block size) and the device's shared memory.
    pub fn new(rt: Arc<CudaRuntime>, spec: AttnSpec, layout: KvCacheLayout) -> Result<Self> {
        Self::with_backend(rt, spec, layout, BackendName::CudaPaged)
    }

    /// As `new`, for `CudaPaged` or `CudaPagedPortable` (the portable prefill everywhere).
    pub fn with_backend(rt: Arc<CudaRuntime>, spec: AttnSpec, layout: KvCacheLayout, backend: BackendName) -> Result<Self> {
        backend.caps().check_layer(rt.platform(), T::DTYPE, &spec, &layout)?;
        let (q, kv, d) = (query_type(T::DTYPE, backend.as_str())?, kv_type(layout.kv_dtype), spec.head_dim);
        let decode = decode_kernel(backend, &rt.features(), q, kv, d);
        let attention_fn = (decode, function_with_smem(&rt, backend, decode, d)?);
        let stream = rt.stream().clone();
        let cache = DeviceKvCache::new::<T>(&rt, layout)?;
        let alibi = match &spec.alibi_slopes {
            Some(s) => Some(stream.clone_htod(s)?),
            None => None,
        };
        let sinks = match spec.sink_logits() {
            Some(s) => Some(stream.clone_htod(s)?),
            None => None,
        };
        let shape = LayerShape::of(&spec);
        let portable = mma_prefill_kernel(backend, &rt.features(), q, kv, d, shape.softcap, shape.alibi);
        let mut prefill_fns = vec![(portable, function_with_smem(&rt, backend, portable, d)?)];
        let mut tensor_maps = None;
        if hopper_prefill(backend, &rt.features(), q, kv, d, layout.block_size) {
            let hopper = prefill_kernel(q, kv, d, shape.softcap, shape.alibi, true);
            prefill_fns.push((hopper, function_with_smem(&rt, backend, hopper, d)?));
            let mut bytes = cache_tensor_map(&cache.key, &layout, T::DTYPE, &stream)?;
            bytes.extend(cache_tensor_map(&cache.value, &layout, T::DTYPE, &stream)?);
            tensor_maps = Some(stream.clone_htod(&bytes)?);
        }
        Ok(CudaPagedImpl {
            cache_write_fn: (cache_write_kernel(q, kv), rt.function(cache_write_kernel(q, kv))?),
            merge_fn: (merge_kernel(q), rt.function(merge_kernel(q))?),
            attention_fn,
            prefill_fns,
            backend,
            tensor_maps,
            encoder_maps: std::sync::Mutex::new(None),
            rt,
            shape,
            spec,
            layout,
            cache,
            alibi,
            sinks,
            _elem: PhantomData,
        })
    }

    /// The CUDA runtime whose device holds the layer's cache.
    pub fn runtime(&self) -> &Arc<CudaRuntime> {
        &self.rt
    }
    /// The layer's spec.
    pub fn spec(&self) -> &AttnSpec {
        &self.spec
    }

    /// Replaces the whole cache with host contents (tests and benchmarks fill long contexts
    /// this way instead of through prefill steps).
    pub fn load_cache(&mut self, cache: &HostKvCache<T>) -> Result<()> {
        self.cache.load(&self.rt, cache)
    }

    /// Launches the planned step on device tensors: cache write, paged attention, merge if
    /// split. Checks first (the step fits the layer, the tensors hold the step's rows);
    /// then only kernel launches on the runtime's stream.
    pub fn run(&mut self, step: &Step, t: DeviceTensors<'_, T>) -> Result<()> {
        self.run_launches(step, &t, true)
    }

    /// Attention alone (no cache write) over a prepared step: what the decode benchmarks time.
    /// An encoder layer has no cache to attend over: an error (run it with its K, V).
    pub fn attend(&mut self, step: &Step, q: &CudaSlice<T>, out: &mut CudaSlice<T>) -> Result<()> {
        if !self.shape.causal {
            return Err(AttnError::InvalidConfig("a bidirectional (encoder) layer attends over the step's own K and V, not a cache: use forward_device / run with them".into()));
        }
        let t = DeviceTensors { q, k: q, v: q, out, lse: None };
        self.run_launches(step, &t, false)
    }

    /// The plan's launches (the cache write only if `write_cache`), after the checks.
    fn run_launches(&self, step: &Step, t: &DeviceTensors<'_, T>, write_cache: bool) -> Result<()> {
        let (plan, dev) = step.for_device_layer(self.backend, T::DTYPE, &self.shape, &self.layout, &self.rt)?;
        let n = plan.num_tokens;
        let (hq, hkv, d) = (self.shape.num_q_heads, self.shape.num_kv_heads, self.shape.head_dim);
        check_rows("q", t.q.len(), n, hq * d)?;
        // An encoder layer reads the step's k, v as its keys, in every run.
        if write_cache || !self.shape.causal {
            check_rows("k", t.k.len(), n, hkv * d)?;
            check_rows("v", t.v.len(), n, hkv * d)?;
        }
        check_rows("out", t.out.len(), n, hq * d)?;
        if let Some(lse) = &t.lse {
            check_rows("lse", lse.len(), n, hq)?;
        }
        for launch in plan.launches.iter().filter(|l| write_cache || l.kernel.family != Family::CacheWrite) {
            self.launch(launch, plan, dev, t)?;
        }
        Ok(())
    }

    /// One planned launch, its arguments from the step's buffers and the layer's.
    fn launch(&self, launch: &KernelLaunch, plan: &StepPlan, dev: &DeviceMetadata, t: &DeviceTensors<'_, T>) -> Result<()> {
        let stream = self.rt.stream().clone();
        let l = self.layout;
        let (hq, hkv, d) = (self.shape.num_q_heads, self.shape.num_kv_heads, self.shape.head_dim);
        let cfg = LaunchConfig { grid_dim: launch.grid, block_dim: (launch.block, 1, 1), shared_mem_bytes: launch.shared_mem_bytes };
        let n = plan.num_tokens as u32;
        let (key_cache, value_cache) = self.cache.ptrs(&stream);
        let (k_scale, v_scale) = self.cache.scale_ptrs(&stream);
        let sinks = self.sinks.as_ref().map_or(0, |a| ptr(a, &stream));
        let chunk_size = self.spec.chunk_size.unwrap_or(0).min(u32::MAX as usize) as u32;
        // The plan's kernel must be one this layer loaded (same dtype, KV dtype, head dim).
        let loaded = |f: &(KernelId, CudaFunction)| f.0 == launch.kernel;
        if loaded(&self.cache_write_fn) {
            let p = CacheWriteParams {
                key: ptr(t.k, &stream),
                value: ptr(t.v, &stream),
                key_cache,
                value_cache,
                slot_mapping: ptr(&dev.slot_mapping, &stream),
                k_scale,
                v_scale,
                src_token_stride: (hkv * d) as u64,
                src_head_stride: d as u64,
                cache_block_stride: l.block_stride() as u64,
                cache_token_stride: l.token_stride() as u64,
                cache_head_stride: l.head_stride() as u64,
                num_tokens: n,
                num_kv_heads: hkv as u32,
                head_dim: d as u32,
                block_size: l.block_size as u32,
            };
            // SAFETY: k, v hold the step's rows (checked by the caller); the cache is the
            // layer's; every non-negative slot was validated against the capacity when the
            // metadata was built, and the slot buffer holds the step's tokens.
            unsafe { stream.launch_builder(&self.cache_write_fn.1).arg(&p).launch(cfg) }?;
        } else if loaded(&self.attention_fn) {
            let p = PagedAttnParams {
                q: ptr(t.q, &stream),
                out: ptr(t.out, &stream),
                key_cache,
                value_cache,
                block_table: ptr(&dev.block_table, &stream),
                seq_lens: ptr(&dev.seq_lens, &stream),
                query_start_loc: ptr(&dev.query_start_loc, &stream),
                alibi_slopes: self.alibi.as_ref().map_or(0, |a| ptr(a, &stream)),
                partial_out: ptr(&dev.partial_out, &stream),
                partial_ml: ptr(&dev.partial_ml, &stream),
                token_map: token_map(plan, dev, &stream),
                lse: if plan.num_splits == 1 { lse_ptr(t, &stream) } else { 0 },
                k_scale,
                v_scale,
                q_token_stride: (hq * d) as u64,
                q_head_stride: d as u64,
                out_token_stride: (hq * d) as u64,
                out_head_stride: d as u64,
                cache_block_stride: l.block_stride() as u64,
                cache_token_stride: l.token_stride() as u64,
                cache_head_stride: l.head_stride() as u64,
                block_table_stride: dev.block_table_stride as u32,
                num_seqs: plan.num_reqs as u32,
                num_tokens: launch.tokens as u32,
                num_q_heads: hq as u32,
                num_kv_heads: hkv as u32,
                block_size_log2: l.block_size.trailing_zeros(),
                sliding_window: self.spec.sliding_window.unwrap_or(0).min(u32::MAX as usize) as u32,
                num_splits: plan.num_splits as u32,
                scale: self.spec.scale,
                softcap: self.spec.softcap.unwrap_or(0.0),
                sinks,
                chunk_size,
                _pad: 0,
                first_key: if paged_rows(plan).first_keys { ptr(&dev.first_keys, &stream) } else { 0 },
            };
            // SAFETY: q, out hold the step's rows; the metadata buffers hold the step's maps
            // (validated: block ids inside the cache, seq_lens >= query lengths); the plan
            // never splits past the workspace (num_splits x tokens <= split_rows).
            unsafe { stream.launch_builder(&self.attention_fn.1).arg(&p).launch(cfg) }?;
        } else if let Some((_, prefill_fn)) = self.prefill_fns.iter().find(|f| loaded(f)) {
            let (hpt, tpt) = prefill_tiling(self.shape.group_size());
            // An encoder layer's keys: the step's k, v rows `[tokens, kv heads, d]`, no block table.
            let encoder = !self.shape.causal;
            let (key_cache, value_cache) = if encoder { (ptr(t.k, &stream), ptr(t.v, &stream)) } else { (key_cache, value_cache) };
            let hopper = launch.kernel.family == Family::FlashPrefillSm90;
            let maps = match (hopper, encoder) {
                (true, true) => self.encoder_tensor_maps(key_cache, value_cache, plan.num_tokens, &stream)?,
                _ => self.tensor_maps.as_ref().map_or(0, |m| ptr(m, &stream)),
            };
            let p = PrefillParams {
                q: ptr(t.q, &stream),
                out: ptr(t.out, &stream),
                key_cache,
                value_cache,
                block_table: if encoder { 0 } else { ptr(&dev.block_table, &stream) },
                seq_lens: ptr(&dev.seq_lens, &stream),
                query_start_loc: ptr(&dev.query_start_loc, &stream),
                alibi_slopes: self.alibi.as_ref().map_or(0, |a| ptr(a, &stream)),
                tiles: ptr(&paged_workspace(dev).prefill_tiles, &stream),
                lse: lse_ptr(t, &stream),
                q_token_stride: (hq * d) as u64,
                q_head_stride: d as u64,
                out_token_stride: (hq * d) as u64,
                out_head_stride: d as u64,
                cache_block_stride: if encoder { 0 } else { l.block_stride() as u64 },
                cache_token_stride: if encoder { (hkv * d) as u64 } else { l.token_stride() as u64 },
                cache_head_stride: if encoder { d as u64 } else { l.head_stride() as u64 },
                block_table_stride: dev.block_table_stride as u32,
                num_q_heads: hq as u32,
                num_kv_heads: hkv as u32,
                block_size_log2: l.block_size.trailing_zeros(),
                sliding_window: self.spec.sliding_window.unwrap_or(0).min(u32::MAX as usize) as u32,
                chunk_size,
                heads_per_tile: hpt as u32,
                tokens_per_tile: tpt as u32,
                scale: self.spec.scale,
                softcap: self.spec.softcap.unwrap_or(0.0),
                k_tmap: maps,
                v_tmap: if maps == 0 { 0 } else { maps + TENSOR_MAP_BYTES as u64 },
                k_scale: if encoder { 0 } else { k_scale },
                v_scale: if encoder { 0 } else { v_scale },
                sinks,
                bidirectional: encoder as u32,
                _pad: 0,
            };
            // SAFETY: q, out hold the step's rows (an encoder layer's k, v too, checked by
            // the caller); the tiles buffer holds the plan's tiles,
            // each inside its request's query tokens; block ids and lengths validated; the
            // tensor maps describe this layer's caches (loaded with the Hopper kernel, so a
            // plan that names it finds them).
            unsafe { stream.launch_builder(prefill_fn).arg(&p).launch(cfg) }?;
        } else if loaded(&self.merge_fn) {
            let m = MergeParams {
                partial_out: ptr(&dev.partial_out, &stream),
                partial_ml: ptr(&dev.partial_ml, &stream),
                token_map: token_map(plan, dev, &stream),
                token_splits: 0,
                lse: lse_ptr(t, &stream),
                out: ptr(t.out, &stream),
                out_token_stride: (hq * d) as u64,
                out_head_stride: d as u64,
                num_tokens: launch.tokens as u32,
                num_q_heads: hq as u32,
                head_dim: d as u32,
                num_splits: plan.num_splits as u32,
                sinks,
            };
            // SAFETY: the split launch before it wrote num_splits x tokens x Hq workspace rows.
            unsafe { stream.launch_builder(&self.merge_fn.1).arg(&m).launch(cfg) }?;
        } else {
            return Err(AttnError::InvalidConfig(format!("the plan names kernel {}, which this {} layer does not have", launch.kernel, T::DTYPE)));
        }
        Ok(())
    }
}

impl<T: Element> CudaPagedImpl<T> {
    /// The device address of an encoder layer's two tensor maps over the step's K and V
    /// (`k`, `v`: `tokens` rows of `kv_heads x head_dim`), boxes of the Hopper prefill's
    /// keys a tile: the last ones when the tensors have not moved, else encoded and uploaded
    /// now (a 256-byte host-to-device copy on the stream, which a CUDA graph capture refuses:
    /// capture after a call on the same tensors).
    fn encoder_tensor_maps(&self, k: u64, v: u64, tokens: usize, stream: &Arc<CudaStream>) -> Result<u64> {
        let mut held = self.encoder_maps.lock().unwrap_or_else(|p| p.into_inner());
        let key = (k, v, tokens);
        if held.as_ref().is_none_or(|(at, _)| *at != key) {
            let (row, d) = (self.shape.num_kv_heads * self.shape.head_dim, self.shape.head_dim);
            let box_rows = crate::params::prefill_sm90_keys(d as u32) as usize;
            let mut bytes = tensor_map(k, tokens, row, box_rows, T::DTYPE)?;
            bytes.extend(tensor_map(v, tokens, row, box_rows, T::DTYPE)?);
            let mut buf = match held.take() {
                Some((_, b)) => b,
                None => stream.alloc_zeros::<u8>(2 * TENSOR_MAP_BYTES)?,
            };
            // From pageable memory: the driver stages `bytes` before the call returns, so it
            // may be dropped at once; the launch after it on the stream sees the maps.
            stream.memcpy_htod(&bytes, &mut buf)?;
            *held = Some((key, buf));
        }
        Ok(held.as_ref().map_or(0, |(_, b)| ptr(b, stream)))
    }
}

impl<T: Element> AttentionImpl<T> for CudaPagedImpl<T> {
    fn backend(&self) -> BackendName {
        self.backend
    }

    /// Copies q, k, v (and out, so that an element the kernels fail to write keeps the
    /// caller's value: tests poison it) to the device, runs, copies out back, synchronizes.
    fn run_host(&mut self, step: &Step, q: &[T], k: &[T], v: &[T], out: &mut [T], lse: Option<&mut [f32]>) -> Result<()> {
        let plan = step.for_layer(self.backend, T::DTYPE, &self.shape, &self.layout)?;
        let n = plan.num_tokens;
        let (hq, hkv, d) = (self.shape.num_q_heads, self.shape.num_kv_heads, self.shape.head_dim);
        check_len("q", q.len(), n * hq * d)?;
        check_len("k", k.len(), n * hkv * d)?;
        check_len("v", v.len(), n * hkv * d)?;
        check_len("out", out.len(), n * hq * d)?;
        let rt = self.rt.clone();
        if let Some(l) = &lse {
            check_len("lse", l.len(), n * hq)?;
        }
        through_device(&rt, q, k, v, out, lse, |t| self.run(step, t))
    }

    fn run_device(&mut self, step: &Step, t: DeviceTensors<'_, T>) -> Result<()> {
        self.run(step, t)
    }

    fn attend_device(&mut self, step: &Step, q: &CudaSlice<T>, out: &mut CudaSlice<T>) -> Result<()> {
        self.attend(step, q, out)
    }

    fn cache_snapshot(&self) -> Result<HostKvCache<T>> {
        self.cache.snapshot(&self.rt)
    }

    fn load_cache(&mut self, cache: &HostKvCache<T>) -> Result<()> {
        self.cache.load(&self.rt, cache)
    }

    fn set_kv_scales(&mut self, scales: &KvScales) -> Result<()> {
        self.cache.set_scales(&self.rt, scales)
    }

    fn fp8_cache_snapshot(&self) -> Result<(HostKvCache<u8>, KvScales)> {
        self.cache.snapshot_fp8(&self.rt)
    }

    fn load_fp8_cache(&mut self, cache: &HostKvCache<u8>, scales: &KvScales) -> Result<()> {
        self.cache.load_fp8(&self.rt, cache, scales)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kernel_registry;

    /// The table's kernel of this name (the tests name kernels as the PTX does).
    fn kid(name: &str) -> KernelId {
        KernelId::by_name(name).unwrap_or_else(|| panic!("no kernel {name} in the table"))
    }

    /// Metadata for requests of `(cached, new)` tokens, block size 16, blocks in order.
    fn meta(reqs: &[(usize, usize)]) -> AttentionMetadata {
        crate::metadata::in_order(reqs, 16, 8, 128)
    }
    const LLAMA: LayerShape = LayerShape::heads(32, 8, 128);

    #[test]
    fn the_engine_and_the_one_shot_limits_split_alike() {
        // One 131072-key decode: the same splits whichever constructor sized the workspace.
        let m = meta(&[(131071, 1)]);
        let engine = StepLimits::new(8192, 256, 131072, 16);
        let one_shot = StepLimits::for_metadata(&m);
        assert_eq!((engine.split_rows, one_shot.split_rows), (256 * MAX_SPLITS, MAX_SPLITS));
        let splits = |l: &StepLimits| plan(&m, &LLAMA, DType::Bf16, &DeviceProps::H100, l, &PlanOptions::default(), BackendName::CudaPaged).unwrap().num_splits;
        assert_eq!(splits(&engine), splits(&one_shot));
        assert!(splits(&engine) > 16, "{}", splits(&engine));
    }

    #[test]
    fn plan_worked_examples() {
        let smem = paged_smem_bytes(128, 2);
        // D1 on an H100: 64 decodes of 4096 keys; 64 x 8 x 1 = 512 blocks >= 264 resident: no split.
        let m = meta(&vec![(4095, 1); 64]);
        let limits = StepLimits::new(64, 64, 4096, 16);
        let p = plan(&m, &LLAMA, DType::Bf16, &DeviceProps::H100, &limits, &PlanOptions::default(), BackendName::CudaPaged).unwrap();
        assert_eq!((p.num_tokens, p.num_reqs, p.num_splits, p.workspace_bytes), (64, 64, 1, 0));
        assert_eq!(
            p.launches,
            vec![
                KernelLaunch { kernel: kid("reshape_and_cache_b16"), grid: (64, 1, 1), block: 128, shared_mem_bytes: 0, tokens: 64 },
                KernelLaunch { kernel: kid("paged_attention_bf16_d128"), grid: (64, 8, 1), block: 128, shared_mem_bytes: smem, tokens: 64 },
            ]
        );
        // D3: 4 x 32768 keys: 32 blocks fill 264 / 32 = 8 splits, so the merge follows;
        // workspace 8 splits x 4 tokens x 32 heads x (128 + 2) f32.
        let m = meta(&vec![(32767, 1); 4]);
        let limits = StepLimits::new(4, 4, 32768, 16);
        let p = plan(&m, &LLAMA, DType::F16, &DeviceProps::H100, &limits, &PlanOptions::default(), BackendName::CudaPaged).unwrap();
        assert_eq!((p.num_splits, p.workspace_bytes), (8, 8 * 4 * 32 * 130 * 4));
        assert_eq!(p.launches[1].grid, (4, 8, 8));
        assert_eq!(p.launches[2], KernelLaunch { kernel: kid("merge_splits_f16"), grid: (4, 32, 1), block: 16, shared_mem_bytes: 0, tokens: 4 });
        // The workspace caps the split: 20 split rows hold 5 splits of 4 tokens.
        let mut small = limits;
        small.split_rows = 20;
        let p = plan(&m, &LLAMA, DType::F16, &DeviceProps::H100, &small, &PlanOptions::default(), BackendName::CudaPaged).unwrap();
        assert_eq!(p.num_splits, 5);
        // Forced splits beyond the workspace are an error naming the limit; 0 or 33 invalid.
        let e = plan(&m, &LLAMA, DType::F16, &DeviceProps::H100, &small, &PlanOptions { force_splits: Some(6), ..PlanOptions::default() }, BackendName::CudaPaged).unwrap_err();
        assert!(matches!(e, AttnError::StepTooLarge(_)) && e.to_string().contains("split_rows"), "{e}");
        // A pipeline depth is MLA's option only: refused, not ignored.
        let opts = PlanOptions { pipeline_stages: Some(2), ..PlanOptions::default() };
        let e = BackendName::CudaPaged.plan(&m, &LLAMA, DType::F16, Some(&DeviceProps::H100), &limits, &opts).unwrap_err();
        assert!(e.to_string().contains("pipeline_stages 2"), "{e}");
        for s in [0, 33] {
            assert!(plan(&m, &LLAMA, DType::F16, &DeviceProps::H100, &limits, &PlanOptions { force_splits: Some(s), ..PlanOptions::default() }, BackendName::CudaPaged).is_err());
        }
        // A 40-head GQA 20:1 model needs two tiles of 16 heads per kv head (grid y = 2 x 2).
        let gqa = LayerShape::heads(40, 2, 128);
        let p = plan(&meta(&[(100, 1)]), &gqa, DType::Bf16, &DeviceProps::H100, &StepLimits::new(1, 1, 101, 16), &PlanOptions { force_splits: Some(1), ..PlanOptions::default() }, BackendName::CudaPaged).unwrap();
        assert_eq!(p.launches[1].grid, (1, 4, 1));
        // Mixed: a chunked prefill (24 tokens on 40 cached), a fresh prefill (33 tokens) and a
        // decode. Llama-3's group of 4 heads makes prefill tiles of 4 heads x 32 tokens: 1 + 2
        // tiles, longest key range first; the decode's token (57) goes to the decode kernel.
        let m = meta(&[(40, 24), (0, 33), (1000, 1)]);
        let p = plan(&m, &LLAMA, DType::Bf16, &DeviceProps::H100, &StepLimits::new(64, 4, 1024, 16), &PlanOptions { force_splits: Some(1), ..PlanOptions::default() }, BackendName::CudaPaged).unwrap();
        assert_eq!(paged_rows(&p).decode_tokens, vec![57]);
        let tile = |request, first_token, tokens| PrefillTile { request, first_token, tokens };
        assert_eq!(paged_rows(&p).prefill_tiles, vec![tile(0, 0, 24), tile(1, 56, 1), tile(1, 24, 32)]);
        assert_eq!(
            p.launches,
            vec![
                KernelLaunch { kernel: kid("reshape_and_cache_b16"), grid: (58, 1, 1), block: 128, shared_mem_bytes: 0, tokens: 58 },
                KernelLaunch { kernel: kid("paged_attention_bf16_d128"), grid: (1, 8, 1), block: 128, shared_mem_bytes: smem, tokens: 1 },
                KernelLaunch { kernel: kid("flash_prefill_sm90_bf16_d128"), grid: (3, 8, 1), block: 384, shared_mem_bytes: crate::params::prefill_sm90_smem_bytes(128), tokens: 57 },
            ]
        );
        // The same step on an A100 (no sm_90a module), or forced portable on an H100: the
        // mma.sync prefill, same tiles and grid.
        let portable = KernelLaunch { kernel: kid("flash_prefill_bf16_d128"), grid: (3, 8, 1), block: 256, shared_mem_bytes: prefill_smem_bytes(128, 2), tokens: 57 };
        let opts = PlanOptions { force_splits: Some(1), ..PlanOptions::default() };
        let a100 = plan(&m, &LLAMA, DType::Bf16, &DeviceProps::A100, &StepLimits::new(64, 4, 1024, 16), &opts, BackendName::CudaPaged).unwrap();
        let forced = plan(&m, &LLAMA, DType::Bf16, &DeviceProps::H100, &StepLimits::new(64, 4, 1024, 16), &opts, BackendName::CudaPagedPortable).unwrap();
        assert_eq!((&a100.launches[2], &forced.launches[2], forced.backend), (&portable, &portable, BackendName::CudaPagedPortable));
        // Blocks of fewer than 8 tokens take the portable kernel on an H100 too.
        let h100 = DeviceProps::H100.arch;
        let hopper = |d, bs| hopper_prefill(BackendName::CudaPaged, &h100, QType::Bf16, KvType::Native, d, bs);
        assert!(hopper(128, 8) && !hopper(128, 4) && !hopper(96, 16));
        assert!(!hopper_prefill(BackendName::CudaPaged, &DeviceProps::A100.arch, QType::Bf16, KvType::Native, 128, 16));
        // d96 has no Hopper instantiation: the portable kernel on an H100 too.
        let phi3 = plan(&m, &LayerShape::heads(32, 32, 96), DType::Bf16, &DeviceProps::H100, &StepLimits::new(64, 4, 1024, 16), &opts, BackendName::CudaPaged).unwrap();
        assert_eq!(phi3.launches[2].kernel.name(), "flash_prefill_bf16_d96");
        // Tiling by group: MHA 1 head x 128 tokens; Falcon-7B's 71:1 one token of 71 heads; a
        // group of 136 two head tiles (grid y = 2 per kv head).
        assert_eq!((prefill_tiling(1), prefill_tiling(4), prefill_tiling(7), prefill_tiling(71)), ((1, 128), (4, 32), (7, 18), (71, 1)));
        let wide = LayerShape::heads(136, 1, 64);
        let p = plan(&meta(&[(0, 3)]), &wide, DType::Bf16, &DeviceProps::H100, &StepLimits::new(4, 1, 16, 16), &PlanOptions::default(), BackendName::CudaPaged).unwrap();
        assert_eq!((p.launches[1].grid, paged_rows(&p).prefill_tiles.len()), ((3, 2, 1), 3));
        // Score modifiers pick the prefill kernel's instantiation (Gemma-2: soft-cap; BLOOM:
        // ALiBi); the decode kernel decides them at run time.
        let kernels = |softcap, alibi| {
            let shape = LayerShape { softcap, alibi, ..LLAMA };
            let p = plan(&m, &shape, DType::F16, &DeviceProps::H100, &limits, &PlanOptions::default(), BackendName::CudaPaged).unwrap();
            p.launches.iter().skip(1).map(|l| l.kernel.name()).collect::<Vec<_>>()
        };
        assert_eq!(kernels(true, false), ["paged_attention_f16_d128", "flash_prefill_sm90_f16_d128_softcap"]);
        assert_eq!(kernels(false, true), ["paged_attention_f16_d128", "flash_prefill_sm90_f16_d128_alibi"]);
        assert_eq!(kernels(true, true), ["paged_attention_f16_d128", "flash_prefill_sm90_f16_d128_softcap_alibi"]);
        assert!(kernel_registry("sm_80").contains(&"flash_prefill_bf16_d96_softcap_alibi".to_string()));
        // The Hopper prefill: in the sm_90a module only, for d64, d128, d256 (d96 keeps the
        // portable kernel there).
        let (sm90, sm90a) = (kernel_registry("sm_90"), kernel_registry("sm_90a"));
        assert!(sm90a.contains(&"flash_prefill_sm90_f16_d256_alibi".to_string()) && !sm90.iter().any(|k| k.contains("_sm90_")));
        // The sm_90a module's own: the Hopper prefill (2 dtypes x 3 head dims x 4 modifiers),
        // the hardware-converting fp8 decode (2 dtypes x 4 head dims), the 16-bit d256 decode
        // 3 deep (2 dtypes), the fp8 prefill on the same conversion (2 x 4 x 4), the Hopper MLA
        // decode (2 dtypes x 2 caches x 2 tile shapes) and the mma.sync MLA decode over fp8
        // rows on that conversion (2 x 2 depths).
        assert_eq!(sm90a.len() - sm90.len(), 2 * 3 * 4 + 2 * 4 + 2 + 2 * 4 * 4 + 2 * 2 * 2 + 2 * 2);
        assert!(!sm90a.iter().any(|k| k.starts_with("flash_prefill_sm90") && k.contains("_d96")));
        // A plan says which of its launches are Hopper's own kernels.
        let hopper_plan = plan(&m, &LLAMA, DType::Bf16, &DeviceProps::H100, &limits, &PlanOptions::default(), BackendName::CudaPaged).unwrap();
        assert_eq!(hopper_plan.sm90a_launches().map(|l| l.kernel.name()).collect::<Vec<_>>(), ["flash_prefill_sm90_bf16_d128"]);
        let a100_plan = plan(&m, &LLAMA, DType::Bf16, &DeviceProps::A100, &limits, &PlanOptions::default(), BackendName::CudaPaged).unwrap();
        assert_eq!(a100_plan.sm90a_launches().count(), 0);
        // Decode over fp8: the sm_90a kernel on CUDA_PAGED there, the portable one elsewhere.
        let fp8 = |backend, arch: &ArchFeatures| decode_kernel(backend, arch, QType::Bf16, KvType::Fp8E4m3, 128).name();
        assert_eq!(fp8(BackendName::CudaPaged, &DeviceProps::H100.arch), "paged_attention_sm90_bf16_e4m3_d128_s5");
        assert_eq!(fp8(BackendName::CudaPagedPortable, &DeviceProps::H100.arch), "paged_attention_bf16_e4m3_d128");
        assert_eq!(fp8(BackendName::CudaPaged, &DeviceProps::A100.arch), "paged_attention_bf16_e4m3_d128");
        assert_eq!(decode_kernel(BackendName::CudaPaged, &DeviceProps::H100.arch, QType::Bf16, KvType::Native, 128).name(), "paged_attention_bf16_d128");
        // Decode over a 16-bit cache at d256: the sm_90a kernel's 3-deep pipeline (200 KiB of
        // shared memory, past sm_80's 163) on CUDA_PAGED there, the portable 2-deep elsewhere.
        let d256 = |backend, arch: &ArchFeatures| decode_kernel(backend, arch, QType::F16, KvType::Native, 256);
        assert_eq!(d256(BackendName::CudaPaged, &DeviceProps::H100.arch).name(), "paged_attention_sm90_f16_d256_s3");
        assert_eq!(d256(BackendName::CudaPaged, &DeviceProps::H100.arch).smem_bytes(), 200 * 1024);
        assert_eq!(d256(BackendName::CudaPagedPortable, &DeviceProps::H100.arch).name(), "paged_attention_f16_d256");
        assert_eq!(d256(BackendName::CudaPaged, &DeviceProps::A100.arch).name(), "paged_attention_f16_d256");
        assert_eq!(d256(BackendName::CudaPaged, &DeviceProps::A100.arch).smem_bytes(), 136 * 1024);
        // Every sm_90a decode row of the table is the one decode_kernel picks for its shape
        // (a row at another depth would never run), and fits a Hopper block.
        let mut rows = 0;
        crate::registry::for_each_kernel(|k| {
            if k.id.family == Family::PagedDecodeSm90 {
                rows += 1;
                assert_eq!(decode_kernel(BackendName::CudaPaged, &DeviceProps::H100.arch, k.id.q, k.id.kv, k.id.head_dim as usize), k.id);
                assert!(k.id.smem_bytes() <= 227 * 1024, "{}", k.id.name());
            }
        });
        assert_eq!(rows, 2 * 4 + 2);
        // The depths' shared memory: fp8 d128 at 5 deep 80 KiB, fp8 d256 at 3 deep 104 KiB.
        let fp8_at = |d| decode_kernel(BackendName::CudaPaged, &DeviceProps::H100.arch, QType::Bf16, KvType::Fp8E4m3, d);
        assert_eq!((fp8_at(128).name(), fp8_at(128).smem_bytes()), ("paged_attention_sm90_bf16_e4m3_d128_s5".to_string(), 80 * 1024));
        assert_eq!((fp8_at(256).name(), fp8_at(256).smem_bytes()), ("paged_attention_sm90_bf16_e4m3_d256_s3".to_string(), 104 * 1024));
        assert_eq!(fp8_at(64).name(), "paged_attention_sm90_bf16_e4m3_d64");
        // Prefill over fp8 (no wgmma row): the sm_90a mma.sync kernel on the hardware's
        // conversion on CUDA_PAGED there, the portable one elsewhere.
        let pre = |backend, arch: &ArchFeatures| mma_prefill_kernel(backend, arch, QType::F16, KvType::Fp8E4m3, 64, true, false).name();
        assert_eq!(pre(BackendName::CudaPaged, &DeviceProps::H100.arch), "flash_prefill_cvt_f16_e4m3_d64_softcap");
        assert_eq!(pre(BackendName::CudaPagedPortable, &DeviceProps::H100.arch), "flash_prefill_f16_e4m3_d64_softcap");
        assert_eq!(pre(BackendName::CudaPaged, &DeviceProps::A100.arch), "flash_prefill_f16_e4m3_d64_softcap");
        assert!(!hopper_prefill(BackendName::CudaPaged, &DeviceProps::H100.arch, QType::Bf16, KvType::Fp8E4m3, 128, 16));
        // f32 has no kernel.
        assert!(plan(&m, &LLAMA, DType::F32, &DeviceProps::H100, &limits, &PlanOptions::default(), BackendName::CudaPaged).is_err());
        // The plan of the same metadata is the same (a graph captured for it replays it).
        let a = plan(&m, &LLAMA, DType::Bf16, &DeviceProps::H100, &StepLimits::new(64, 4, 1024, 16), &PlanOptions::default(), BackendName::CudaPaged).unwrap();
        let b = plan(&m, &LLAMA, DType::Bf16, &DeviceProps::H100, &StepLimits::new(64, 4, 1024, 16), &PlanOptions::default(), BackendName::CudaPaged).unwrap();
        assert!(a.same_launches(&b));
    }

    #[test]
    fn step_limits_name_the_limit() {
        let m = meta(&[(100, 1), (3000, 1)]);
        let limits = StepLimits::new(8, 2, 1024, 16);
        let e = limits.check(&m).unwrap_err();
        assert!(e.to_string().contains("max_blocks_per_req = 64") && e.to_string().contains("request 1"), "{e}");
        let e = StepLimits::new(1, 2, 4096, 16).check(&m).unwrap_err();
        assert!(e.to_string().contains("max_tokens = 1"), "{e}");
        let e = StepLimits::new(8, 1, 4096, 16).check(&m).unwrap_err();
        assert!(e.to_string().contains("max_reqs = 1"), "{e}");
        assert!(StepLimits::new(8, 2, 4096, 16).check(&m).is_ok());
        assert!(StepLimits::new(0, 2, 4096, 16).validate().is_err());
    }

    #[test]
    fn split_heuristic_examples() {
        // D3: 4 requests x 8 kv heads, 264 resident blocks.
        assert_eq!(num_splits_heuristic(32, 32768, 32768, 264), 8);
        // D4: ragged.
        assert_eq!(num_splits_heuristic(1024, 8184, 4371, 264), 4);
        // D1, D2, D5: uniform and enough blocks.
        assert_eq!(num_splits_heuristic(512, 4096, 4096, 264), 1);
        assert_eq!(num_splits_heuristic(1024, 2048, 2048, 264), 1);
        // Short contexts are not split below MIN_KEYS_PER_SPLIT keys per split.
        assert_eq!(num_splits_heuristic(8, 1024, 1024, 264), 2);
        assert_eq!(num_splits_heuristic(1, 1 << 20, 1 << 20, 264), MAX_SPLITS);
        assert_eq!(num_splits_heuristic(0, 0, 0, 264), 1);
    }
}
