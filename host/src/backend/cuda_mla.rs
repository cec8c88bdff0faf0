//! The CUDA MLA backend: DeepSeek-V2/V3's multi-head latent attention in the absorbed form,
//! on the Rust PTX kernels: `mma.sync` everywhere, and on Hopper (the sm_90a module) the
//! same blocks on wgmma with the copy engine (`mla_decode_sm90_<dtype>`, [`hopper_decode`]).
//!
//! - `mla_cache_write_b16`: this step's `kv_c` `[tokens, 512]` and `k_pe` `[tokens, 64]` into
//!   the latent cache `[num_blocks, block_size, 576]` at the slot mapping;
//! - `mla_decode_<dtype>`: 64 (query token, head) rows of one request and one range of its
//!   keys (a work item) per block, each K tile read once for both `Q K^T` and `P V`;
//!   `mla_decode_sm90_<dtype>`: a run of work items per block;
//! - `merge_splits_<dtype>`: the splits' partial states, with per-token split counts.
//!
//! A layout of `kv_dtype = Fp8E4m3` gets FlashMLA's fp8 latent rows (656 bytes a token: 512
//! e4m3 values in 4 tiles of 128 with an f32 scale each, then the 64 rotary dims in the
//! model's 16-bit type; [`crate::fp8::LATENT_ROW_BYTES`]): `mla_cache_write_<dtype>_e4m3`
//! quantizes, `mla_decode_<dtype>_e4m3_s<stages>` streams the rows as stored and widens each
//! tile in shared memory before its MMAs.
//!
//! The layer's tensors ([`DeviceTensors`]): `q` the absorbed query `[tokens, H, 576]`
//! (`W_UK^T q_nope` and `q_pe`), `k` the compressed kv `kv_c` `[tokens, 512]`, `v` the rope
//! key `k_pe` `[tokens, 64]`, `out` the latent output `[tokens, H, 512]` (the model applies
//! `W_UV`). Query tokens of a request (1 to 4 for speculative decoding, or more) are causal
//! among themselves.
//!
//! Plan, then run: [`plan`] cuts each request's keys into work items (key ranges) so a
//! ragged batch becomes nearly equal work spread over the SMs: for the portable kernel,
//! chunks of one length chosen for the whole step ([`mla_chunk_keys`]), a block each; for
//! the Hopper kernel ([`persistent_schedule`]), whole requests a block each, or, where a
//! ragged batch or a long request pays for the merge, runs of cut items balanced over the
//! SMs, a block each. [`CudaMlaImpl`] only launches.

use crate::attention_impl::{latent_rows_have_scales, no_fp8_cache};
use crate::cuda_plumbing::{as_u16, as_u16_mut, check_len, check_rows, function_with_smem, kv_type, max_shared_memory_per_block, merge_kernel, ptr, query_type, tensor_map, tensor_map_2d, through_device, MapElem, DeviceMetadata, DeviceRows, BACKEND_MAPS, TENSOR_MAP_BYTES};
use crate::fp8::{KvScales, LATENT_ROW_BYTES};
use crate::plan::MAX_SPLITS;
use crate::registry::{Family, KernelId, KvType, QType, ScoreMod};
use crate::attention_impl::AttentionImpl;
use crate::backend_name::BackendName;
use crate::caps::{check_latent_layout, BackendCaps};
use crate::cuda_plumbing::DeviceTensors;
use crate::cuda::CudaRuntime;
use crate::dtype::{DType, Element, KvCacheDType};
use crate::error::{AttnError, Result};
use crate::kv_cache::{HostKvCache, KvCacheLayout};
use crate::metadata::AttentionMetadata;
use crate::params::{mla_row_bytes, mla_smem_bytes, mla_stages, MergeParams, MlaCacheWriteParams, MlaParams, CACHE_WRITE_THREADS, MLA_KEYS, MLA_LATENT_DIM, MLA_RANK, MLA_ROPE, MLA_ROWS, MLA_SM90_MIN_BLOCK, MLA_SM90_STAGES, MLA_SM90_THREADS, MLA_STAGES, MLA_WARPS};
use crate::params::{mla_sm90_keys, MLA_FP8_ROW_BYTES};
use crate::platform::{ArchFeatures, DeviceProps};
use crate::spec::{AttnSpec, MlaSpec};
use crate::plan::{KernelLaunch, LayerShape, PlanOptions, StepLimits, StepPlan};
use crate::step::Step;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::marker::PhantomData;
use std::sync::Arc;

/// The latent widths with a kernel: 512 + 64 (DeepSeek-V2/V3, Kimi-K2).
pub const LATENT_DIMS: &[u32] = &[MLA_LATENT_DIM];

/// CUDA_MLA's capability row: MLA models only (latent width 576), f16/bf16, compute capability 8.0+.
pub static CAPS: BackendCaps = BackendCaps {
    on_sm90: Some(
        "on compute capability 9.0 (the sm_90a module), over a 16-bit latent cache, steps with more than 16 rows a request -> mla_decode_sm90: the same blocks on wgmma \
         (a producer warp bringing K tiles by TMA through the block table, two consumer warpgroups each holding half the value dims), a block a run of (request, key \
         range) items, runs balanced over the SMs where a ragged batch or a long request is cut; ATTN_BACKEND=CUDA_MLA_PORTABLE keeps mma.sync",
    ),
    ..MLA_ROW
};

/// `CUDA_MLA_PORTABLE`: the same backend with the portable (`mma.sync`) decode on every
/// device (`ATTN_BACKEND=CUDA_MLA_PORTABLE`, to compare the kernels on a Hopper GPU).
pub static PORTABLE_CAPS: BackendCaps = BackendCaps {
    name: BackendName::CudaMlaPortable,
    kernels: "as CUDA_MLA, with the portable mma.sync decode (mla_decode) on every architecture",
    ..MLA_ROW
};

/// The two rows' common fields.
const MLA_ROW: BackendCaps = BackendCaps {
    name: BackendName::CudaMla,
    min_compute_capability: Some(80),
    cpu: false,
    dtypes: &[DType::F16, DType::Bf16],
    kv_cache_dtypes: MLA_KV_DTYPES,
    mla_kv_cache_dtypes: MLA_KV_DTYPES,
    head_dims: LATENT_DIMS,
    mha: false,
    mla: true,
    sliding_window: false,
    softcap: false,
    alibi: false,
    chunked: false,
    sinks: false,
    bidirectional: false,
    block_sizes: (16, 256),
    shared_memory_bytes: Some(shared_memory_bytes),
    kernels: "every row -> mla_decode: 64 (query token, head) rows of a request per block over one latent KV head (576 dims, values its first 512), \
              mma.sync, each K tile read once for Q K^T and P V; split-KV on a per-step schedule that balances ragged batches over the SMs, + merge",
    on_sm90: None,
};

/// The latent cache's dtypes the table's kernels serve: fp8 once it has fp8 MLA cache-write
/// and decode rows (FlashMLA's 656-byte rows: 512 e4m3 values, 4 f32 scales, 64 bf16 rope dims).
const MLA_KV_DTYPES: &[KvCacheDType] = {
    use crate::registry::family_has_kv as has;
    if has(Family::MlaDecode, KvType::Fp8E4m3) && has(Family::MlaCacheWrite, KvType::Fp8E4m3) {
        &[KvCacheDType::Auto, KvCacheDType::Fp8E4m3]
    } else {
        &[KvCacheDType::Auto]
    }
};

/// The selector's figure: the shallowest 16-bit pipeline's (every sm_80+ block can have it).
fn shared_memory_bytes(_latent_dim: usize) -> usize {
    mla_smem_bytes(MLA_STAGES[0], 2) as usize
}

/// The MLA decode kernel for a query type, latent cache element and pipeline depth
/// (`params::mla_stages`).
pub fn decode_kernel(q: QType, kv: KvType, stages: u32) -> KernelId {
    KernelId { family: Family::MlaDecode, q, kv, head_dim: 0, score: ScoreMod::Plain, stages }
}
/// The mma.sync MLA decode `backend` runs on `arch` for a query type, cache element and
/// depth: over fp8 rows on `CUDA_MLA`, the sm_90a module's kernel on the hardware's
/// conversion where the device runs it (`mla_decode_cvt_*`); otherwise `decode_kernel`'s
/// (`CUDA_MLA_PORTABLE` keeps the portable module's, for comparison).
pub fn mma_decode_kernel(backend: BackendName, arch: &ArchFeatures, q: QType, kv: KvType, stages: u32) -> KernelId {
    let cvt = KernelId { family: Family::MlaDecodeCvt, ..decode_kernel(q, kv, stages) };
    if backend == BackendName::CudaMla && kv == KvType::Fp8E4m3 && arch.runs_id(&cvt) { cvt } else { decode_kernel(q, kv, stages) }
}
/// The Hopper MLA decode (wgmma, TMA) for a query type, latent cache element (fp8 rows
/// widened in shared memory) and depth (`MLA_SM90_STAGES`: 2 tiles of 64 keys or 4 of 32).
pub fn sm90_decode_kernel(q: QType, kv: KvType, stages: u32) -> KernelId {
    KernelId { family: Family::MlaDecodeSm90, q, kv, head_dim: 0, score: ScoreMod::Plain, stages }
}
/// The Hopper MLA decode's depth unless a plan asks for another (2 x 64 keys: the 4 x 32
/// shape measured 0.80-0.82x as fast on M1-M4).
pub const SM90_DEFAULT_STAGES: u32 = MLA_SM90_STAGES[0];
/// Whether `backend` decodes on the Hopper kernel: `CUDA_MLA` on a device that runs it
/// (`arch`), over a latent cache (16-bit or fp8) of blocks of 8 or more tokens (its copies
/// move whole 8-row groups of the 128-byte swizzle). The plan and the impl both ask this.
pub fn hopper_decode(backend: BackendName, arch: &ArchFeatures, q: QType, kv: KvType, block_size: usize) -> bool {
    backend == BackendName::CudaMla && block_size >= MLA_SM90_MIN_BLOCK as usize && arch.runs_id(&sm90_decode_kernel(q, kv, SM90_DEFAULT_STAGES))
}
/// The latent cache write: bitwise for a 16-bit cache (`mla_cache_write_b16`), quantizing
/// for fp8 (`mla_cache_write_<q>_e4m3`).
pub fn cache_write_kernel(q: QType, kv: KvType) -> KernelId {
    let q = if kv == KvType::Native { QType::B16 } else { q };
    KernelId { family: Family::MlaCacheWrite, q, kv, head_dim: 0, score: ScoreMod::Plain, stages: 0 }
}

/// The deepest pipeline over a `kv` cache whose shared memory a block of this device may
/// have (the shallowest when none fits: the layer's constructor refuses such a device).
pub fn pipeline_stages(kv: KvType, max_shared_memory_per_block: u32) -> u32 {
    let stages = mla_stages(kv.bytes());
    stages.iter().copied().filter(|&s| mla_smem_bytes(s, kv.bytes()) <= max_shared_memory_per_block).max().unwrap_or(stages[0])
}


/// The MLA spec of a layer this backend serves: one the kernels were built for (rank 512,
/// rope 64), over a latent cache of one head of 576 dims.
pub fn check_mla(spec: &AttnSpec, layout: &KvCacheLayout) -> Result<MlaSpec> {
    let m = spec.mla.clone().ok_or_else(|| AttnError::Unsupported {
        backend: "CUDA_MLA",
        reason: "the layer is not MLA (no kv_lora_rank): CUDA_MLA serves MLA models only".into(),
    })?;
    if (m.kv_lora_rank, m.qk_rope_head_dim) != (MLA_RANK as usize, MLA_ROPE as usize) {
        return Err(AttnError::Unsupported {
            backend: "CUDA_MLA",
            reason: format!("kv_lora_rank {} + rope {}: the kernel is built for {MLA_RANK} + {MLA_ROPE}", m.kv_lora_rank, m.qk_rope_head_dim),
        });
    }
    if !(m.scale.is_finite() && m.scale > 0.0) || m.num_q_heads == 0 {
        return Err(AttnError::InvalidConfig(format!("MLA with {} heads, scale {}: both must be positive", m.num_q_heads, m.scale)));
    }
    check_latent_layout(&m, layout)?;
    Ok(m)
}

/// The device's properties for the MLA plan: SMs, and MLA blocks per SM.
pub fn device_props(rt: &CudaRuntime, dtype: DType, layout: &KvCacheLayout, backend: BackendName) -> Result<DeviceProps> {
    let q = query_type(dtype, backend.as_str())?;
    let smem_max = max_shared_memory_per_block(rt)?;
    let kv = kv_type(layout.kv_dtype);
    // The occupancy of the kernel a plan names by default (over fp8 rows, the mma.sync one).
    let (id, threads) = if hopper_decode(backend, &rt.features(), q, kv, layout.block_size) && kv == KvType::Native {
        (sm90_decode_kernel(q, kv, SM90_DEFAULT_STAGES), MLA_SM90_THREADS)
    } else {
        (mma_decode_kernel(backend, &rt.features(), q, kv, pipeline_stages(kv, smem_max)), MLA_WARPS * 32)
    };
    let f = function_with_smem(rt, backend, id, MLA_LATENT_DIM as usize)?;
    let per_sm = f.occupancy_max_active_blocks_per_multiprocessor(threads, id.smem_bytes() as usize, None)?;
    Ok(DeviceProps { num_sms: rt.num_sms(), attention_blocks_per_sm: per_sm.max(1), max_shared_memory_per_block: smem_max, arch: rt.features() })
}

/// A block's fixed cost in key rows: loading its Q tile (64 latent rows) costs about what
/// 64 keys do.
const BLOCK_COST_KEYS: usize = MLA_ROWS as usize;
/// The merge's cost, once, when any request splits, in key rows.
const MERGE_COST_KEYS: usize = 64;

/// Keys per split for a step (a multiple of the kernel's 32-key tile): among the longest
/// request's cuts into 1 to `MAX_SPLITS` pieces, the chunk length that minimises the estimated time `waves x (chunk + BLOCK_COST_KEYS)` (+ the merge's
/// cost when anything splits), where a request of `len` keys and `tiles` row tiles makes
/// `ceil(len / chunk) x tiles` blocks and `slots` blocks run at once. Longer chunks win
/// ties. `workspace_fits(chunk)` rules out schedules whose partial rows do not fit.
///
/// Examples on an H100 (132 slots): M1 (128 x 4096 keys, 1 tile) -> 4096 (128 blocks, one
/// wave); 4 requests of 32768 keys -> 1024 (128 blocks); a ragged batch of one 16384-key
/// request among 64 short ones is cut so the long one does not run alone at the end.
pub fn mla_chunk_keys(lens: &[usize], tiles: &[usize], slots: usize, workspace_fits: impl Fn(usize) -> bool) -> usize {
    let tile = MLA_KEYS as usize;
    let max_len = lens.iter().copied().max().unwrap_or(0).max(1);
    let whole = max_len.div_ceil(tile) * tile;
    let mut best = (usize::MAX, whole);
    // The candidates: the longest request cut into 1 ..= MAX_SPLITS equal pieces (rounded
    // up to whole tiles), so a step costs MAX_SPLITS passes over its requests.
    for pieces in 1..=MAX_SPLITS {
        let chunk = max_len.div_ceil(pieces).div_ceil(tile) * tile;
        let blocks: usize = lens.iter().zip(tiles).map(|(&l, &t)| l.max(1).div_ceil(chunk) * t).sum();
        let splits = chunk < max_len;
        if splits && !workspace_fits(chunk) {
            continue;
        }
        let cost = blocks.div_ceil(slots.max(1)) * (chunk + BLOCK_COST_KEYS) + if splits { MERGE_COST_KEYS } else { 0 };
        if cost < best.0 {
            best = (cost, chunk);
        }
    }
    best.1
}

/// The plan of an MLA step (pure: tested on the CPU). Every request's rows (its query
/// tokens x heads, in 64-row tiles: grid x, so that a request's tiles run together and share
/// its keys through L2) over work items, each a range of one request's keys; tokens of
/// requests of one item are written directly, others go through the workspace
/// (`split_rows` token rows) and the merge.
/// - The portable kernel: items of `chunk_keys` keys ([`mla_chunk_keys`]), one a block
///   (grid y).
/// - The Hopper kernel: [`persistent_schedule`], grid y its runs of items.
///
/// `opts.force_splits = Some(s)`: the longest request gets `s` splits (the others as many as
/// their length needs at the same chunk length); `opts.persistent_parts = Some(c)` packs the
/// Hopper kernel's whole items into at most `c` runs a row tile.
pub fn plan(meta: &AttentionMetadata, shape: &LayerShape, dtype: DType, props: &DeviceProps, limits: &StepLimits, opts: &PlanOptions, backend: BackendName) -> Result<StepPlan> {
    let q = query_type(dtype, backend.as_str())?;
    let kv = kv_type(meta.layout().kv_dtype);
    if !meta.first_keys().is_empty() {
        return Err(AttnError::InvalidConfig("the step's maps give requests a first visible key (a windowed layer's DCP shard): MLA layers have no windows".into()));
    }
    let (n, h, rows) = (meta.num_tokens(), shape.num_q_heads, MLA_ROWS as usize);
    let lens: Vec<usize> = meta.seq_lens().iter().map(|&l| l as usize).collect();
    let lq: Vec<usize> = (0..meta.num_reqs()).map(|r| meta.query_len(r)).collect();
    let tiles: Vec<usize> = lq.iter().map(|&q| (q * h).div_ceil(rows)).collect();
    let grid_x = tiles.iter().copied().max().unwrap_or(1).max(1);
    let max_len = lens.iter().copied().max().unwrap_or(0).max(1);
    let tile = MLA_KEYS as usize;

    // The kernel: the Hopper one where the device runs it (a depth of its own asked for, or
    // its default); else the portable one at the depth asked for or the deepest that fits.
    // A 16-bit cache takes the Hopper kernel at every row count: a decode of 16 heads (M1)
    // fills a quarter of its 64-row tiles, but it keeps more bytes in flight than the
    // portable kernel, and that is what M1 is short of on an H200 (same lease, 2026-12-07:
    // 0.874 of copy against the portable kernel's 0.743; the v1 Hopper kernel had measured
    // 0.74 against 0.79, the rule until then).
    // Over an fp8 cache the mma.sync kernel stays the default (on the hardware's conversion
    // where there is one: M1 0.47 of copy on an H100): the Hopper kernel's three converter
    // warps measured slower (0.20, benches/NOTES-mla.md); a depth of the Hopper kernel asks
    // for it.
    let sm90_depth = opts.pipeline_stages.is_some_and(|s| MLA_SM90_STAGES.contains(&s));
    let hopper = hopper_decode(backend, &props.arch, q, kv, meta.layout().block_size) && (kv == KvType::Native || sm90_depth);
    let depths = if hopper { &MLA_SM90_STAGES[..] } else { mla_stages(kv.bytes()) };
    let fits = |s: u32| if hopper { true } else { mla_smem_bytes(s, kv.bytes()) <= props.max_shared_memory_per_block };
    let stages = match opts.pipeline_stages {
        Some(s) if !depths.contains(&s) || !fits(s) => {
            return Err(AttnError::InvalidConfig(format!(
                "pipeline depth {s}: the {} MLA kernel over a {} cache has {depths:?}, within the device's shared memory",
                if hopper { "Hopper (wgmma)" } else { "portable" },
                meta.layout().kv_dtype
            )));
        }
        Some(s) => s,
        None if hopper => SM90_DEFAULT_STAGES,
        None => pipeline_stages(kv, props.max_shared_memory_per_block),
    };
    let (kernel, block) = if hopper { (sm90_decode_kernel(q, kv, stages), MLA_SM90_THREADS) } else { (mma_decode_kernel(backend, &props.arch, q, kv, stages), MLA_WARPS * 32) };

    // Token rows of the workspace a chunk length needs: every split of every split request.
    let workspace_rows = |chunk: usize| -> usize { lens.iter().zip(&lq).filter(|(l, _)| **l > chunk).map(|(&l, &q)| l.div_ceil(chunk) * q).sum() };
    let forced = match opts.force_splits {
        Some(s) if !(1..=MAX_SPLITS).contains(&s) => return Err(AttnError::InvalidConfig(format!("{s} splits: must be in 1..={MAX_SPLITS}"))),
        Some(s) => {
            let chunk = max_len.div_ceil(s).div_ceil(tile) * tile;
            if workspace_rows(chunk) > limits.split_rows {
                return Err(AttnError::StepTooLarge(format!(
                    "{s} splits need {} workspace token rows, the step limit split_rows is {}",
                    workspace_rows(chunk),
                    limits.split_rows
                )));
            }
            Some(chunk)
        }
        None => None,
    };
    let (key_splits, parts, chunk) = if hopper {
        let runs = match opts.persistent_parts {
            Some(0) => return Err(AttnError::InvalidConfig("persistent_parts 0: a step needs at least one run".into())),
            Some(c) => c.min(props.resident_blocks() / grid_x).max(1),
            None => (props.resident_blocks() / grid_x).max(1),
        };
        let (items, parts) = persistent_schedule(&lens, &lq, h, runs, props.resident_blocks(), forced, limits.split_rows, opts.persistent_parts.is_some());
        let longest = items.iter().map(|k| (k.end - k.begin) as usize).max().unwrap_or(0);
        (items, parts, forced.unwrap_or(longest))
    } else {
        let chunk = forced.unwrap_or_else(|| mla_chunk_keys(&lens, &tiles, props.resident_blocks(), |c| workspace_rows(c) <= limits.split_rows));
        (uniform_items(&lens, chunk), Vec::new(), chunk)
    };
    // Each token's (first workspace slot, split count): its request's items.
    let mut counts = vec![0u32; lens.len()];
    for k in &key_splits {
        counts[k.request as usize] += 1;
    }
    let num_splits = counts.iter().copied().max().unwrap_or(1).max(1) as usize;
    let mut token_splits = Vec::with_capacity(n);
    let mut slot = 0u32;
    for (r, &count) in counts.iter().enumerate() {
        for _ in 0..lq[r] {
            if count > 1 {
                token_splits.push([slot, count]);
                slot += count;
            } else {
                token_splits.push([0, 1]);
            }
        }
    }
    if slot as usize > limits.split_rows {
        // The schedules keep to the limit; this is the plan's own check of that.
        return Err(AttnError::StepTooLarge(format!("the MLA schedule needs {slot} workspace token rows, the step limit split_rows is {}", limits.split_rows)));
    }
    // The runs (the portable kernel's: its items) are the grid's y: CUDA's limit there.
    let grid_y = if hopper { parts.len().saturating_sub(1) } else { key_splits.len() };
    if grid_y > MAX_GRID_Y {
        return Err(AttnError::InvalidConfig(format!(
            "the MLA step needs {grid_y} (request, split) blocks, more than a launch's {MAX_GRID_Y}: fewer requests a step, or fewer splits (force_splits)"
        )));
    }
    let mut launches = Vec::new();
    if n > 0 {
        launches.push(KernelLaunch { kernel: cache_write_kernel(q, kv), grid: (n as u32, 1, 1), block: CACHE_WRITE_THREADS, shared_mem_bytes: 0, tokens: n });
        launches.push(KernelLaunch { kernel, grid: (grid_x as u32, grid_y as u32, 1), block, shared_mem_bytes: kernel.smem_bytes(), tokens: n });
        if num_splits > 1 {
            launches.push(KernelLaunch { kernel: merge_kernel(q), grid: (n as u32, h as u32, 1), block: MLA_RANK / 8, shared_mem_bytes: 0, tokens: n });
        }
    }
    let workspace_bytes = slot as usize * h * (MLA_RANK as usize + 2) * std::mem::size_of::<f32>();
    Ok(StepPlan::new(backend, n, meta.num_reqs(), num_splits, launches, workspace_bytes, MlaRows { key_splits, parts, chunk_keys: chunk, token_splits }))
}

/// Each request's keys in pieces of `chunk` (the last one shorter).
fn uniform_items(lens: &[usize], chunk: usize) -> Vec<KeySplit> {
    let mut items = Vec::new();
    for (r, &len) in lens.iter().enumerate() {
        let count = len.max(1).div_ceil(chunk);
        items.extend((0..count).map(|s| KeySplit { request: r as u32, split: s as u32, begin: (s * chunk) as u32, end: ((s + 1) * chunk).min(len) as u32 }));
    }
    items
}

/// Keys of a cut: whole 64-key tiles (the tile of either Hopper shape, or two).
const RUN_TILE: usize = 64;
/// Bytes a split row costs a step: its f32 partial row written by the decode, read by the
/// merge, and the merge's share of the output.
const SPLIT_ROW_BYTES: usize = 3 * MLA_RANK as usize * 4;
/// A key row of the 16-bit latent cache (the Hopper kernel's default rows).
const KEY_ROW_BYTES: usize = MLA_LATENT_DIM as usize * 2;
/// Cuts must beat whole requests by more than the cost model's error.
const CUT_GAIN: f64 = 0.95;

/// The Hopper kernel's schedule: work items (a request's key range) in request order, in
/// contiguous runs (a block each, for every row tile; at most `runs` where they are packed
/// or cut), each run's keys (plus `BLOCK_COST_KEYS` an item) balanced over the runs. Two candidates, the
/// cheaper by the model (cost = the longest run, in key rows, + the merge where a request
/// has several items):
/// - whole requests (or `forced` chunks: tests and fixed launch shapes), costed as runs of
///   least maximum; emitted as those runs where `pack` (`PlanOptions::persistent_parts`),
///   else one a block (measured faster on uniform batches: see the body);
/// - FlashMLA's: each run filled to the least length that needs no more than `runs` runs,
///   cutting the request at its end in whole 64-key tiles; at most `MAX_SPLITS` pieces a
///   request, within `split_rows` workspace token rows (runs made twice as long until the
///   pieces fit), and taken only where it is at least 5% cheaper (the merge costs the split
///   rows' bytes, `SPLIT_ROW_BYTES`, spread over the `slots` blocks at a key row's bytes).
///
/// Returns the items and the runs' offsets (`runs + 1` at most: run y is items
/// `parts[y] .. parts[y + 1]`).
///
/// Examples on an H100 (132 slots): M2 (128 x 4096 keys, 2 row tiles: 66 runs) -> whole
/// requests, one a block (packed: two a run); one request of 262144 keys, 2 row tiles -> 32
/// pieces of 8192 keys (the workspace's 32 split rows a token); a 16384-key request among
/// 64 of 512 keys -> cut into pieces of about the average run.
pub fn persistent_schedule(lens: &[usize], lq: &[usize], heads: usize, runs: usize, slots: usize, forced: Option<usize>, split_rows: usize, pack: bool) -> (Vec<KeySplit>, Vec<u32>) {
    let runs = runs.max(1);
    let cost = |keys: usize| keys.div_ceil(RUN_TILE) * RUN_TILE + BLOCK_COST_KEYS;
    let merge_cost = |split_rows: usize| {
        if split_rows == 0 {
            0
        } else {
            MERGE_COST_KEYS + (split_rows * heads * SPLIT_ROW_BYTES).div_ceil(slots.max(1) * KEY_ROW_BYTES)
        }
    };
    // A schedule's split token rows (None past the limits) and the longest run's cost.
    let rate = |items: &[KeySplit], parts: &[u32]| -> Option<usize> {
        let mut pieces = vec![0usize; lens.len()];
        for k in items {
            pieces[k.request as usize] += 1;
        }
        if pieces.iter().any(|&p| p > MAX_SPLITS) {
            return None;
        }
        let rows: usize = pieces.iter().zip(lq).filter(|(p, _)| **p > 1).map(|(p, q)| p * q).sum();
        if rows > split_rows {
            return None;
        }
        let longest = parts.windows(2).map(|w| items[w[0] as usize..w[1] as usize].iter().map(|k| cost((k.end - k.begin) as usize)).sum::<usize>()).max().unwrap_or(0);
        Some(longest + merge_cost(rows))
    };

    let whole = match forced {
        Some(chunk) => uniform_items(lens, chunk),
        None => lens.iter().enumerate().map(|(r, &len)| KeySplit { request: r as u32, split: 0, begin: 0, end: len as u32 }).collect(),
    };
    let whole_parts = partition(&whole.iter().map(|k| cost((k.end - k.begin) as usize)).collect::<Vec<_>>(), runs);
    let whole_cost = rate(&whole, &whole_parts).unwrap_or(usize::MAX);
    // Whole items go in runs where asked (`pack`), else one a block: the hardware's block
    // scheduler spreads them as well on the batches the cut leaves whole, and it measured
    // faster (H100, M2: 467-477 TFLOP/s one a block, 446-466 two a run; M3, M4: 1.4% and
    // 0.6-7% ahead), the item boundary inside a block costing more than a block's launch.
    let whole_out = if pack { whole_parts } else { (0..=whole.len() as u32).collect() };
    if forced.is_some() || runs == 1 {
        return (whole, whole_out);
    }

    // FlashMLA's cut: runs filled to about the average (no run below a request's 1/MAX_SPLITS);
    // where its pieces do not fit the workspace, runs twice as long, until they fit or
    // would be no shorter than whole requests'.
    let total: usize = lens.iter().map(|&l| cost(l)).sum();
    let max_len = lens.iter().copied().max().unwrap_or(0);
    // The least run length whose fill needs no more than `runs` runs (each piece pays its
    // item's cost and whole tiles, so the plain average would leave the last run the rest).
    let (mut lo, mut hi) = (total.div_ceil(runs).max(cost(max_len.div_ceil(MAX_SPLITS))), whole_cost.min(total));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fill_and_cut(lens, mid, cost).1.len() - 1 <= runs {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let mut target = lo;
    while target < whole_cost {
        let (items, parts) = fill_and_cut(lens, target, cost);
        match rate(&items, &parts) {
            Some(c) if parts.len() - 1 <= runs && (c as f64) < CUT_GAIN * whole_cost as f64 => return (items, parts),
            Some(_) if parts.len() - 1 <= runs => break,
            _ => target *= 2,
        }
    }
    (whole, whole_out)
}

/// FlashMLA's fill-and-cut: items in request order into runs of `target` (in `cost`'s key
/// rows), the request at a run's end cut in whole `RUN_TILE`s. Returns the items and the
/// runs' offsets (as many runs as the target needs).
fn fill_and_cut(lens: &[usize], target: usize, cost: impl Fn(usize) -> usize) -> (Vec<KeySplit>, Vec<u32>) {
    let (mut items, mut parts) = (Vec::new(), vec![0u32]);
    let mut left = target;
    for (r, &len) in lens.iter().enumerate() {
        let (mut begin, mut split) = (0usize, 0u32);
        loop {
            let rest = len - begin;
            if cost(rest) <= left {
                items.push(KeySplit { request: r as u32, split, begin: begin as u32, end: len as u32 });
                left = left.saturating_sub(cost(rest));
                break;
            }
            // What fits of this run's budget, in whole tiles, and a new run for the rest.
            let take = left.saturating_sub(BLOCK_COST_KEYS) / RUN_TILE * RUN_TILE;
            if take > 0 {
                items.push(KeySplit { request: r as u32, split, begin: begin as u32, end: (begin + take) as u32 });
                begin += take;
                split += 1;
            }
            if *parts.last().unwrap() as usize != items.len() {
                parts.push(items.len() as u32);
            }
            left = target;
        }
    }
    if *parts.last().unwrap() as usize != items.len() {
        parts.push(items.len() as u32);
    }
    (items, parts)
}

/// Contiguous runs of `costs` (at most `runs` of them) whose longest is least: the least
/// capacity whose greedy fill needs no more runs. Returns the runs' offsets.
fn partition(costs: &[usize], runs: usize) -> Vec<u32> {
    let fill = |cap: usize| -> Vec<u32> {
        let (mut parts, mut load) = (vec![0u32], 0usize);
        for (i, &c) in costs.iter().enumerate() {
            if load > 0 && load + c > cap {
                parts.push(i as u32);
                load = 0;
            }
            load += c;
        }
        if !costs.is_empty() {
            parts.push(costs.len() as u32);
        }
        parts
    };
    let (mut lo, mut hi) = (costs.iter().copied().max().unwrap_or(0), costs.iter().sum::<usize>());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fill(mid).len() - 1 <= runs {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    fill(lo)
}

/// CUDA's largest grid y (the portable MLA decode's work items).
pub const MAX_GRID_Y: usize = 65_535;

/// One work item of MLA's schedule: keys `[begin, end)` of `request`, its `split`-th piece
/// (its workspace slot when the request has several).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySplit {
    /// The request whose keys the item reads.
    pub request: u32,
    /// Which of the request's pieces.
    pub split: u32,
    /// The first key (a multiple of the kernels' 32-key tile).
    pub begin: u32,
    /// One past the last key.
    pub end: u32,
}

/// MLA's rows of a plan ([`StepPlan::rows`]): its split-KV schedule.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MlaRows {
    /// The work items: the portable kernel's blocks in grid order, or the Hopper kernel's
    /// runs' items in order.
    pub key_splits: Vec<KeySplit>,
    /// The Hopper kernel's runs: block y runs items `parts[y] .. parts[y + 1]` (empty for
    /// the portable kernel, whose block y runs item y).
    pub parts: Vec<u32>,
    /// Keys per split (uniform pieces), or the persistent schedule's longest item.
    pub chunk_keys: usize,
    /// Each query token's (first workspace slot, split count).
    pub token_splits: Vec<[u32; 2]>,
}

/// MLA's rows of a plan (every plan of its has them).
pub(crate) fn mla_rows(plan: &StepPlan) -> &MlaRows {
    plan.rows::<MlaRows>().expect("an MLA plan carries MlaRows")
}

/// MLA's device maps of a step: the work items as (request, split, first key, end key),
/// then the Hopper kernel's runs' offsets; each token's (first slot, count); sized for the
/// step limits.
pub struct MlaWorkspace {
    key_splits: CudaSlice<i32>,
    token_splits: CudaSlice<i32>,
}

/// `i32`s of a work item in the device map.
const ITEM_WORDS: usize = 4;

impl MlaWorkspace {
    pub(crate) fn new(stream: &Arc<CudaStream>, limits: &StepLimits) -> Result<MlaWorkspace> {
        // At most one item per request plus the workspace's rows; a run holds one or more.
        let max_items = limits.max_reqs + limits.split_rows;
        Ok(MlaWorkspace { key_splits: stream.alloc_zeros(ITEM_WORDS * max_items + max_items + 1)?, token_splits: stream.alloc_zeros(2 * limits.max_tokens)? })
    }
}

impl DeviceRows for MlaWorkspace {
    fn maps(&self) -> [&CudaSlice<i32>; BACKEND_MAPS] {
        [&self.key_splits, &self.token_splits]
    }
    fn fill(&self, plan: &StepPlan, staging: [&mut [i32]; BACKEND_MAPS]) -> Result<[usize; BACKEND_MAPS]> {
        let rows = mla_rows(plan);
        let (nk, np, nts) = (rows.key_splits.len(), rows.parts.len(), rows.token_splits.len());
        if ITEM_WORDS * nk + np > staging[0].len() || 2 * nts > staging[1].len() {
            return Err(AttnError::StepTooLarge(format!(
                "{nk} work items in {} runs, {nts} tokens: past the step's buffers ({} words of items and runs, {} tokens)",
                np.saturating_sub(1),
                staging[0].len(),
                staging[1].len() / 2
            )));
        }
        let (items, parts) = staging[0].split_at_mut(ITEM_WORDS * nk);
        for (dst, k) in items.chunks_exact_mut(ITEM_WORDS).zip(&rows.key_splits) {
            dst.copy_from_slice(&[k.request as i32, k.split as i32, k.begin as i32, k.end as i32]);
        }
        for (dst, &o) in parts.iter_mut().zip(&rows.parts) {
            *dst = o as i32;
        }
        for (dst, t) in staging[1].chunks_exact_mut(2).zip(&rows.token_splits) {
            dst[0] = t[0] as i32;
            dst[1] = t[1] as i32;
        }
        Ok([ITEM_WORDS * nk + np, 2 * nts])
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The step's MLA maps on the device (every MLA step has them).
fn mla_workspace(dev: &DeviceMetadata) -> &MlaWorkspace {
    dev.rows::<MlaWorkspace>().expect("an MLA step holds an MlaWorkspace")
}

/// One MLA layer on the GPU: its latent cache and kernels.
pub struct CudaMlaImpl<T: Element> {
    rt: Arc<CudaRuntime>,
    mla: MlaSpec,
    shape: LayerShape,
    layout: KvCacheLayout,
    /// The latent cache's bytes: slots of 576 16-bit values, or of fp8 latent rows.
    cache: CudaSlice<u8>,
    cache_write_fn: (KernelId, CudaFunction),
    /// The decode kernel of each pipeline depth the device can run (the plan names one).
    decode_fns: Vec<(KernelId, CudaFunction)>,
    merge_fn: (KernelId, CudaFunction),
    /// CUDA_MLA, or CUDA_MLA_PORTABLE (the mma.sync decode on a Hopper GPU too).
    backend: BackendName,
    /// The latent cache's tensor map for the Hopper decode's copy engine, when that kernel is loaded.
    tmap: Option<CudaSlice<u8>>,
    _elem: PhantomData<T>,
}

impl<T: Element> CudaMlaImpl<T> {
    fn is_fp8(&self) -> bool {
        self.layout.kv_dtype == KvCacheDType::Fp8E4m3
    }

    /// An MLA layer on `rt`'s device with a zeroed latent cache of `layout`, once the capability row accepted the layer.
    pub fn new(rt: Arc<CudaRuntime>, spec: AttnSpec, layout: KvCacheLayout) -> Result<Self> {
        Self::with_backend(rt, spec, layout, BackendName::CudaMla)
    }

    /// As `new`, for `CudaMla` or `CudaMlaPortable` (the portable decode everywhere).
    pub fn with_backend(rt: Arc<CudaRuntime>, spec: AttnSpec, layout: KvCacheLayout, backend: BackendName) -> Result<Self> {
        backend.caps().check_layer(rt.platform(), T::DTYPE, &spec, &layout)?;
        let mla = check_mla(&spec, &layout)?;
        let q = query_type(T::DTYPE, backend.as_str())?;
        let kv = kv_type(layout.kv_dtype);
        let smem_max = max_shared_memory_per_block(&rt)?;
        let depths = mla_stages(kv.bytes());
        let mut decode_fns = Vec::new();
        for &stages in depths.iter().filter(|&&s| mla_smem_bytes(s, kv.bytes()) <= smem_max) {
            let id = mma_decode_kernel(backend, &rt.features(), q, kv, stages);
            decode_fns.push((id, function_with_smem(&rt, BackendName::CudaMla, id, MLA_LATENT_DIM as usize)?));
        }
        if decode_fns.is_empty() {
            return Err(AttnError::Unsupported {
                backend: "CUDA_MLA",
                reason: format!(
                    "the MLA kernel over a {} latent cache needs {} bytes of shared memory per block; {} allows {smem_max}",
                    layout.kv_dtype,
                    mla_smem_bytes(depths[0], kv.bytes()),
                    rt.device_name()
                ),
            });
        }
        let cache_write = cache_write_kernel(q, kv);
        let cache = rt.stream().alloc_zeros::<u8>(layout.capacity_slots() * mla_row_bytes(kv.bytes()) as usize)?;
        // The Hopper decode and the copy engine's view of the cache: its slots as rows of
        // 576 16-bit values, boxes of a page (or a tile's share of one); fp8 rows
        // (`MLA_FP8_ROW_BYTES`) as bytes in unswizzled boxes of 64 (the latents, widened by
        // the kernel), then as 16-bit values for the rope's swizzled box.
        let mut tmap = None;
        if hopper_decode(backend, &rt.features(), q, kv, layout.block_size) {
            // Both depths, each with its map(s) (boxes of a page, or of the tile's keys).
            let stream = rt.stream().clone();
            let mut bytes = Vec::new();
            let (addr, slots) = (ptr(&cache, &stream), layout.capacity_slots());
            for &stages in &MLA_SM90_STAGES {
                let id = sm90_decode_kernel(q, kv, stages);
                decode_fns.push((id, function_with_smem(&rt, backend, id, MLA_LATENT_DIM as usize)?));
                let rows = layout.block_size.min(mla_sm90_keys(stages) as usize);
                if kv == KvType::Fp8E4m3 {
                    let row = MLA_FP8_ROW_BYTES as usize;
                    bytes.extend(tensor_map_2d(addr, MapElem::U8, [row, slots], row, [64, rows], false)?);
                    bytes.extend(tensor_map_2d(addr, MapElem::of(T::DTYPE), [row / 2, slots], row, [64, rows], true)?);
                } else {
                    bytes.extend(tensor_map(addr, slots, MLA_LATENT_DIM as usize, rows, T::DTYPE)?);
                }
            }
            tmap = Some(stream.clone_htod(&bytes)?);
        }
        Ok(CudaMlaImpl {
            cache_write_fn: (cache_write, rt.function(cache_write)?),
            decode_fns,
            merge_fn: (merge_kernel(q), rt.function(merge_kernel(q))?),
            cache,
            backend,
            tmap,
            shape: LayerShape::of(&spec),
            mla,
            layout,
            rt,
            _elem: PhantomData,
        })
    }

    /// Launches the planned step: cache write, MLA decode, merge if split. Checks first
    /// (the step fits the layer, the tensors hold the step's rows); then only launches.
    pub fn run(&mut self, step: &Step, t: DeviceTensors<'_, T>) -> Result<()> {
        self.run_launches(step, &t, true)
    }

    /// Attention alone (no cache write) over a prepared step: what the MLA benchmark times.
    pub fn attend(&mut self, step: &Step, q: &CudaSlice<T>, out: &mut CudaSlice<T>) -> Result<()> {
        let t = DeviceTensors { q, k: q, v: q, out, lse: None };
        self.run_launches(step, &t, false)
    }

    fn run_launches(&self, step: &Step, t: &DeviceTensors<'_, T>, write_cache: bool) -> Result<()> {
        let (plan, dev) = step.for_device_layer(self.backend, T::DTYPE, &self.shape, &self.layout, &self.rt)?;
        let (n, h) = (plan.num_tokens, self.mla.num_q_heads);
        check_rows("q", t.q.len(), n, h * MLA_LATENT_DIM as usize)?;
        if write_cache {
            check_rows("k (kv_c)", t.k.len(), n, MLA_RANK as usize)?;
            check_rows("v (k_pe)", t.v.len(), n, MLA_ROPE as usize)?;
        }
        check_rows("out", t.out.len(), n, h * MLA_RANK as usize)?;
        if let Some(lse) = &t.lse {
            check_rows("lse", lse.len(), n, h)?;
        }
        for launch in plan.launches.iter().filter(|l| write_cache || l.kernel != self.cache_write_fn.0) {
            self.launch(launch, plan, dev, t)?;
        }
        Ok(())
    }

    fn launch(&self, launch: &KernelLaunch, plan: &StepPlan, dev: &DeviceMetadata, t: &DeviceTensors<'_, T>) -> Result<()> {
        let stream = self.rt.stream().clone();
        let l = self.layout;
        let (h, d, dv) = (self.mla.num_q_heads, MLA_LATENT_DIM as u64, MLA_RANK as u64);
        // Cache strides in the kernels' units: 16-bit elements, or bytes of fp8 rows.
        let (token_stride, block_stride) = if self.is_fp8() {
            (LATENT_ROW_BYTES as u64, (l.block_size * LATENT_ROW_BYTES) as u64)
        } else {
            (l.token_stride() as u64, l.block_stride() as u64)
        };
        let cfg = LaunchConfig { grid_dim: launch.grid, block_dim: (launch.block, 1, 1), shared_mem_bytes: launch.shared_mem_bytes };
        let lse = t.lse.as_ref().map_or(0, |x| ptr(&**x, &stream));
        if launch.kernel == self.cache_write_fn.0 {
            let p = MlaCacheWriteParams {
                kv_c: ptr(t.k, &stream),
                k_pe: ptr(t.v, &stream),
                cache: ptr(&self.cache, &stream),
                slot_mapping: ptr(&dev.slot_mapping, &stream),
                kv_c_token_stride: dv,
                k_pe_token_stride: MLA_ROPE as u64,
                cache_block_stride: block_stride,
                num_tokens: plan.num_tokens as u32,
                block_size: l.block_size as u32,
            };
            // SAFETY: kv_c, k_pe hold the step's rows (checked); every non-negative slot was
            // validated against the cache's capacity when the metadata was built.
            unsafe { stream.launch_builder(&self.cache_write_fn.1).arg(&p).launch(cfg) }?;
        } else if let Some((_, decode_fn)) = self.decode_fns.iter().find(|(id, _)| *id == launch.kernel) {
            let p = MlaParams {
                q: ptr(t.q, &stream),
                out: ptr(t.out, &stream),
                cache: ptr(&self.cache, &stream),
                block_table: ptr(&dev.block_table, &stream),
                seq_lens: ptr(&dev.seq_lens, &stream),
                query_start_loc: ptr(&dev.query_start_loc, &stream),
                splits: ptr(&mla_workspace(dev).key_splits, &stream),
                // The runs' offsets follow the items in the same map (the Hopper kernel's).
                parts: if mla_rows(plan).parts.is_empty() {
                    0
                } else {
                    ptr(&mla_workspace(dev).key_splits, &stream) + (ITEM_WORDS * mla_rows(plan).key_splits.len() * std::mem::size_of::<i32>()) as u64
                },
                token_splits: ptr(&mla_workspace(dev).token_splits, &stream),
                partial_out: ptr(&dev.partial_out, &stream),
                partial_ml: ptr(&dev.partial_ml, &stream),
                lse,
                q_token_stride: h as u64 * d,
                q_head_stride: d,
                out_token_stride: h as u64 * dv,
                out_head_stride: dv,
                cache_block_stride: block_stride,
                cache_token_stride: token_stride,
                block_table_stride: dev.block_table_stride as u32,
                num_q_heads: h as u32,
                block_size_log2: l.block_size.trailing_zeros(),
                scale: self.mla.scale,
                // The map(s) of the kernel's depth (`MLA_SM90_STAGES` order; fp8: two a depth).
                tmap: self.tmap.as_ref().map_or(0, |m| {
                    let i = MLA_SM90_STAGES.iter().position(|&s| s == launch.kernel.stages).unwrap_or(0);
                    let maps = if launch.kernel.kv == KvType::Fp8E4m3 { 2 } else { 1 };
                    ptr(m, &stream) + (i * maps * TENSOR_MAP_BYTES) as u64
                }),
            };
            // SAFETY: q, out hold the step's rows; the metadata buffers hold the step's maps
            // and schedule (validated block ids; the plan's workspace rows fit split_rows,
            // whose buffers were sized for this layer shape).
            unsafe { stream.launch_builder(decode_fn).arg(&p).launch(cfg) }?;
        } else if launch.kernel == self.merge_fn.0 {
            let m = MergeParams {
                partial_out: ptr(&dev.partial_out, &stream),
                partial_ml: ptr(&dev.partial_ml, &stream),
                token_map: 0,
                token_splits: ptr(&mla_workspace(dev).token_splits, &stream),
                lse,
                out: ptr(t.out, &stream),
                out_token_stride: h as u64 * dv,
                out_head_stride: dv,
                num_tokens: plan.num_tokens as u32,
                num_q_heads: h as u32,
                head_dim: dv as u32,
                num_splits: plan.num_splits as u32,
                sinks: 0,
            };
            // SAFETY: the decode launch before it wrote every split token's workspace rows.
            unsafe { stream.launch_builder(&self.merge_fn.1).arg(&m).launch(cfg) }?;
        } else {
            return Err(AttnError::InvalidConfig(format!("CUDA_MLA has no kernel {}", launch.kernel)));
        }
        Ok(())
    }
}

impl<T: Element> AttentionImpl<T> for CudaMlaImpl<T> {
    fn backend(&self) -> BackendName {
        self.backend
    }

    /// Host tensors: q `[tokens, H, 576]`, k = kv_c `[tokens, 512]`, v = k_pe `[tokens, 64]`,
    /// out `[tokens, H, 512]`; copied through the device (out too, so that a row the kernels
    /// fail to write keeps the caller's poison).
    fn run_host(&mut self, step: &Step, q: &[T], k: &[T], v: &[T], out: &mut [T], lse: Option<&mut [f32]>) -> Result<()> {
        let plan = step.for_layer(self.backend, T::DTYPE, &self.shape, &self.layout)?;
        let (n, h) = (plan.num_tokens, self.mla.num_q_heads);
        check_len("q", q.len(), n * h * MLA_LATENT_DIM as usize)?;
        check_len("k (kv_c)", k.len(), n * MLA_RANK as usize)?;
        check_len("v (k_pe)", v.len(), n * MLA_ROPE as usize)?;
        check_len("out", out.len(), n * h * MLA_RANK as usize)?;
        let rt = self.rt.clone();
        if let Some(l) = &lse {
            check_len("lse", l.len(), n * h)?;
        }
        through_device(&rt, q, k, v, out, lse, |t| self.run(step, t))
    }

    fn run_device(&mut self, step: &Step, t: DeviceTensors<'_, T>) -> Result<()> {
        self.run(step, t)
    }

    fn attend_device(&mut self, step: &Step, q: &CudaSlice<T>, out: &mut CudaSlice<T>) -> Result<()> {
        self.attend(step, q, out)
    }

    /// The latent rows as `key` (an fp8 cache's widened to `T`, as the kernels' MMAs read
    /// them); `value` is empty (an MLA cache has no value half), as the CPU backend returns it.
    fn cache_snapshot(&self) -> Result<HostKvCache<T>> {
        if self.is_fp8() {
            return self.fp8_cache_snapshot()?.0.dequantize_latent();
        }
        let stream = self.rt.stream();
        let mut key = vec![T::default(); self.layout.elements()];
        stream.memcpy_dtoh(&self.cache, as_bytes_mut(as_u16_mut(&mut key)))?;
        stream.synchronize()?;
        Ok(HostKvCache { layout: self.layout, key, value: Vec::new() })
    }

    /// Loads `cache.key` as the latent cache (`value` is not read); an fp8 cache quantizes
    /// every row ([`crate::fp8::quantize_latent_row`]).
    fn load_cache(&mut self, cache: &HostKvCache<T>) -> Result<()> {
        if !cache.layout.same_geometry(&self.layout) {
            return Err(AttnError::InvalidConfig(format!("cache layout {:?} differs from the layer's {:?}", cache.layout, self.layout)));
        }
        check_len("latent cache", cache.key.len(), self.layout.elements())?;
        if self.is_fp8() {
            return self.load_fp8_cache(&HostKvCache::quantize_latent_from(cache)?, &KvScales::ones(1));
        }
        self.rt.stream().memcpy_htod(as_bytes(as_u16(&cache.key)), &mut self.cache)?;
        Ok(())
    }

    /// The rows carry their scales: per-layer scales do not apply.
    fn set_kv_scales(&mut self, _scales: &KvScales) -> Result<()> {
        Err(if self.is_fp8() { latent_rows_have_scales(BackendName::CudaMla) } else { no_fp8_cache(BackendName::CudaMla) })
    }

    /// The fp8 latent rows as stored ([`HostKvCache::zeros_latent_fp8`]'s layout) and scales
    /// of one (the rows carry their own).
    fn fp8_cache_snapshot(&self) -> Result<(HostKvCache<u8>, KvScales)> {
        if !self.is_fp8() {
            return Err(no_fp8_cache(BackendName::CudaMla));
        }
        let mut rows = HostKvCache::zeros_latent_fp8(self.layout);
        let stream = self.rt.stream();
        stream.memcpy_dtoh(&self.cache, &mut rows.key)?;
        stream.synchronize()?;
        Ok((rows, KvScales::ones(1)))
    }

    /// Replaces the fp8 latent rows with `cache`'s (same geometry; `scales` is not read: the
    /// rows carry theirs).
    fn load_fp8_cache(&mut self, cache: &HostKvCache<u8>, _scales: &KvScales) -> Result<()> {
        if !self.is_fp8() {
            return Err(no_fp8_cache(BackendName::CudaMla));
        }
        if !cache.layout.same_geometry(&self.layout) {
            return Err(AttnError::InvalidConfig(format!("cache layout {:?} differs from the layer's {:?}", cache.layout, self.layout)));
        }
        cache.check_latent_fp8()?;
        self.rt.stream().memcpy_htod(&cache.key, &mut self.cache)?;
        Ok(())
    }
}

/// A slice of 16-bit words as its bytes.
fn as_bytes(x: &[u16]) -> &[u8] {
    // SAFETY: u16 has no padding and any byte is a valid u8; the length is in bytes.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, 2 * x.len()) }
}
fn as_bytes_mut(x: &mut [u16]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; every byte pattern is a valid u16.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut u8, 2 * x.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kernel_registry;

    /// The table's kernel of this name (the tests name kernels as the PTX does).
    fn kid(name: &str) -> KernelId {
        KernelId::by_name(name).unwrap_or_else(|| panic!("no kernel {name} in the table"))
    }

    /// Metadata for requests of `(cached, new)` tokens over a latent cache, block size 64.
    fn meta(reqs: &[(usize, usize)]) -> AttentionMetadata {
        crate::metadata::in_order(reqs, 64, 1, 576)
    }

    #[test]
    fn chunk_schedule_examples() {
        let fits = |_| true;
        // M1: 128 x 4096 keys, one row tile each: 128 blocks fill 132 SMs once; no split.
        assert_eq!(mla_chunk_keys(&[4096; 128], &[1; 128], 132, fits), 4096);
        // M2: 128 heads = two row tiles: 256 blocks, two waves; splitting adds blocks, not speed.
        assert_eq!(mla_chunk_keys(&[4096; 128], &[2; 128], 132, fits), 4096);
        // Long context, few requests: 4 x 32768 -> 1024-key chunks, 128 blocks in one wave.
        assert_eq!(mla_chunk_keys(&[32768; 4], &[1; 4], 132, fits), 1024);
        // Ragged: one 16384-key request among 64 of 512: cut so it does not run alone.
        let mut lens = vec![512; 64];
        lens.push(16384);
        let c = mla_chunk_keys(&lens, &[1; 65], 132, fits);
        assert!(c <= 16384 / 4 && c >= 512, "{c}");
        // No workspace: no split.
        assert_eq!(mla_chunk_keys(&[32768; 4], &[1; 4], 132, |_| false), 32768);
        // Chunks are whole 32-key tiles.
        assert_eq!(mla_chunk_keys(&[100], &[1], 132, fits) % 32, 0);
    }

    #[test]
    fn plan_worked_example() {
        // Two requests: a decode at 100 keys, a 2-token speculative step at 3000 keys;
        // 16 heads; forced 4 splits of the longest: chunk 768 -> 1 and 4 splits.
        let m = meta(&[(99, 1), (2998, 2)]);
        let shape = LayerShape::heads(16, 1, 576);
        let limits = StepLimits::new(8, 2, 4096, 64);
        let p = plan(&m, &shape, DType::Bf16, &DeviceProps::H100, &limits, &PlanOptions { force_splits: Some(4), ..PlanOptions::default() }, BackendName::CudaMlaPortable).unwrap();
        assert_eq!((mla_rows(&p).chunk_keys, p.num_splits), (768, 4));
        let item = |request, split, begin, end| KeySplit { request, split, begin, end };
        assert_eq!(mla_rows(&p).key_splits, vec![item(0, 0, 0, 100), item(1, 0, 0, 768), item(1, 1, 768, 1536), item(1, 2, 1536, 2304), item(1, 3, 2304, 3000)]);
        assert!(mla_rows(&p).parts.is_empty(), "the portable kernel's block y runs item y");
        // Token 0 (one split) is written directly; tokens 1, 2 take workspace slots 0-3, 4-7.
        assert_eq!(mla_rows(&p).token_splits, vec![[0, 1], [0, 4], [4, 4]]);
        assert_eq!(p.workspace_bytes, 8 * 16 * 514 * 4);
        assert_eq!(
            p.launches,
            vec![
                KernelLaunch { kernel: kid("mla_cache_write_b16"), grid: (3, 1, 1), block: 128, shared_mem_bytes: 0, tokens: 3 },
                KernelLaunch { kernel: kid("mla_decode_bf16_s3"), grid: (1, 5, 1), block: 256, shared_mem_bytes: mla_smem_bytes(3, 2), tokens: 3 },
                KernelLaunch { kernel: kid("merge_splits_bf16"), grid: (3, 16, 1), block: 64, shared_mem_bytes: 0, tokens: 3 },
            ]
        );
        // 128 heads x 2 tokens = 256 rows: 4 row tiles (grid x).
        let p = plan(&m, &LayerShape::heads(128, 1, 576), DType::F16, &DeviceProps::H100, &limits, &PlanOptions { force_splits: Some(1), ..PlanOptions::default() }, BackendName::CudaMlaPortable).unwrap();
        assert_eq!((p.launches[1].grid, p.num_splits, p.launches.len()), ((4, 2, 1), 1, 2));
        // The workspace limit: 4 splits of 2 tokens need 8 token rows.
        let e = plan(&m, &shape, DType::Bf16, &DeviceProps::H100, &StepLimits { split_rows: 7, ..limits }, &PlanOptions { force_splits: Some(4), ..PlanOptions::default() }, BackendName::CudaMlaPortable).unwrap_err();
        assert!(e.to_string().contains("split_rows is 7"), "{e}");
        assert!(plan(&m, &shape, DType::F32, &DeviceProps::H100, &limits, &PlanOptions::default(), BackendName::CudaMlaPortable).is_err());

        // The same step over an fp8 latent cache: the quantizing cache write, the fp8 decode
        // at its deepest depth that fits (3 on an H100: 221.5 KiB), the same schedule.
        let m8 = crate::metadata::in_order_of(&[(99, 1), (2998, 2)], 64, 1, 576, KvCacheDType::Fp8E4m3);
        let p8 = plan(&m8, &shape, DType::Bf16, &DeviceProps::H100, &limits, &PlanOptions { force_splits: Some(4), ..PlanOptions::default() }, BackendName::CudaMlaPortable).unwrap();
        let names: Vec<String> = p8.launches.iter().map(|l| l.kernel.name()).collect();
        assert_eq!(names, ["mla_cache_write_bf16_e4m3", "mla_decode_bf16_e4m3_s3", "merge_splits_bf16"]);
        let p = plan(&m, &shape, DType::Bf16, &DeviceProps::H100, &limits, &PlanOptions { force_splits: Some(4), ..PlanOptions::default() }, BackendName::CudaMlaPortable).unwrap();
        assert_eq!((p8.launches[1].shared_mem_bytes, mla_rows(&p8)), (mla_smem_bytes(3, 1), mla_rows(&p)));
        // A depth the fp8 kernel does not have is refused, naming the ones it has.
        let e = plan(&m8, &shape, DType::Bf16, &DeviceProps::H100, &limits, &PlanOptions { pipeline_stages: Some(4), ..PlanOptions::default() }, BackendName::CudaMlaPortable).unwrap_err();
        assert!(e.to_string().contains("fp8_e4m3 cache has [2, 3]"), "{e}");

        // CUDA_MLA on an H100 takes the Hopper kernel for the 16-bit cache (same schedule,
        // 384 threads, one block an SM), the portable one for fp8 unless a Hopper depth is
        // asked for, an A100 the portable one;
        // a pipeline depth asks for the portable kernel.
        let opts = PlanOptions { force_splits: Some(4), ..PlanOptions::default() };
        let h = plan(&m, &shape, DType::Bf16, &DeviceProps::H100, &limits, &opts, BackendName::CudaMla).unwrap();
        // (Persistent: 132 runs of one row tile hold the 5 items one a run.)
        assert_eq!(h.launches[1], KernelLaunch { kernel: kid("mla_decode_sm90_bf16"), grid: (1, 5, 1), block: 384, shared_mem_bytes: crate::params::mla_sm90_smem_bytes(2), tokens: 3 });
        assert_eq!((&mla_rows(&h).key_splits, &mla_rows(&h).token_splits), (&mla_rows(&p).key_splits, &mla_rows(&p).token_splits));
        assert_eq!(mla_rows(&h).parts, [0, 1, 2, 3, 4, 5]);
        // Two runs at most: the five items (in whole 64-key tiles, + 64 each: 192, 832, 832,
        // 832, 768) in the two runs of least maximum (1856 and 1600).
        let h2 = plan(&m, &shape, DType::Bf16, &DeviceProps::H100, &limits, &PlanOptions { persistent_parts: Some(2), ..opts }, BackendName::CudaMla).unwrap();
        assert_eq!((mla_rows(&h2).parts.as_slice(), h2.launches[1].grid), ([0, 3, 5].as_slice(), (1, 2, 1)));
        assert!(plan(&m, &shape, DType::Bf16, &DeviceProps::H100, &limits, &PlanOptions { persistent_parts: Some(0), ..opts }, BackendName::CudaMla).is_err());
        let h8 = plan(&m8, &shape, DType::Bf16, &DeviceProps::H100, &limits, &opts, BackendName::CudaMla).unwrap();
        assert_eq!(h8.launches[1].kernel.name(), "mla_decode_cvt_bf16_e4m3_s3");
        // The Hopper kernel over fp8 rows where one of its depths is asked for.
        let h84 = plan(&m8, &shape, DType::Bf16, &DeviceProps::H100, &limits, &PlanOptions { pipeline_stages: Some(4), ..opts }, BackendName::CudaMla).unwrap();
        assert_eq!(h84.launches[1].kernel.name(), "mla_decode_sm90_bf16_e4m3_s4");
        // A step of 16-head single-token decodes (16 rows each) takes the Hopper kernel too.
        let m1 = meta(&[(99, 1), (2998, 1)]);
        let p1 = plan(&m1, &shape, DType::Bf16, &DeviceProps::H100, &limits, &opts, BackendName::CudaMla).unwrap();
        assert_eq!(p1.launches[1].kernel.name(), "mla_decode_sm90_bf16");
        // A Hopper depth asks for the Hopper kernel at any row count (fp8 rows too).
        let m18 = crate::metadata::in_order_of(&[(99, 1), (2998, 1)], 64, 1, 576, KvCacheDType::Fp8E4m3);
        let p18 = plan(&m18, &shape, DType::Bf16, &DeviceProps::H100, &limits, &PlanOptions { pipeline_stages: Some(2), ..opts }, BackendName::CudaMla).unwrap();
        assert_eq!(p18.launches[1].kernel.name(), "mla_decode_sm90_bf16_e4m3");
        let a = plan(&m, &shape, DType::Bf16, &DeviceProps::A100, &limits, &opts, BackendName::CudaMla).unwrap();
        assert_eq!(a.launches[1].kernel.name(), "mla_decode_bf16");
        // A depth picks among the Hopper kernel's two shapes (2 x 64 keys, 4 x 32); another
        // is refused naming them; CUDA_MLA_PORTABLE keeps the portable kernel's depths.
        let d = plan(&m, &shape, DType::Bf16, &DeviceProps::H100, &limits, &PlanOptions { pipeline_stages: Some(4), ..opts }, BackendName::CudaMla).unwrap();
        assert_eq!((d.launches[1].kernel.name(), d.launches[1].shared_mem_bytes), ("mla_decode_sm90_bf16_s4".to_string(), crate::params::mla_sm90_smem_bytes(4)));
        let e = plan(&m, &shape, DType::Bf16, &DeviceProps::H100, &limits, &PlanOptions { pipeline_stages: Some(3), ..opts }, BackendName::CudaMla).unwrap_err();
        assert!(e.to_string().contains("Hopper (wgmma) MLA kernel over a auto cache has [2, 4]"), "{e}");
        let d = plan(&m, &shape, DType::Bf16, &DeviceProps::H100, &limits, &PlanOptions { pipeline_stages: Some(2), ..opts }, BackendName::CudaMlaPortable).unwrap();
        assert_eq!(d.launches[1].kernel.name(), "mla_decode_bf16");
    }

    /// Items cover each request's keys once, in order, in whole 64-key tiles; runs are
    /// contiguous, non-empty and no more than asked; pieces and workspace rows in the limits.
    fn check_schedule(lens: &[usize], lq: &[usize], runs: usize, split_rows: usize, items: &[KeySplit], parts: &[u32]) {
        // Whole items unpacked run one a block.
        let runs = if parts.len() == items.len() + 1 { runs.max(items.len()) } else { runs };
        let mut next = vec![(0u32, 0u32); lens.len()]; // (next key, next split) a request
        let mut last_req = 0;
        for k in items {
            let r = k.request as usize;
            assert!(r >= last_req, "items in request order: {items:?}");
            last_req = r;
            assert_eq!((k.begin, k.split), next[r], "request {r}'s pieces in order");
            assert!(k.end > k.begin || lens[r] == 0, "an empty piece {k:?}");
            assert_eq!(k.begin % RUN_TILE as u32, 0);
            next[r] = (k.end, k.split + 1);
        }
        let mut rows = 0;
        for (r, &(end, pieces)) in next.iter().enumerate() {
            assert_eq!(end as usize, lens[r], "request {r}'s keys covered");
            assert!((1..=MAX_SPLITS as u32).contains(&pieces));
            rows += if pieces > 1 { pieces as usize * lq[r] } else { 0 };
        }
        assert!(rows <= split_rows, "{rows} split rows past {split_rows}");
        assert_eq!((parts.first(), parts.last()), (Some(&0), Some(&(items.len() as u32))));
        assert!(parts.windows(2).all(|w| w[0] < w[1]), "non-empty runs {parts:?}");
        assert!(parts.len() - 1 <= runs, "{} runs past {runs}", parts.len() - 1);
    }

    #[test]
    fn persistent_schedule_examples() {
        let run_cost = |items: &[KeySplit], parts: &[u32]| -> Vec<usize> {
            parts.windows(2).map(|w| items[w[0] as usize..w[1] as usize].iter().map(|k| (k.end - k.begin) as usize + BLOCK_COST_KEYS).sum()).collect()
        };
        // M2 on an H100: 128 x 4096 keys, 128 heads (2 row tiles: 66 runs). Cutting would
        // balance 1.94 requests a run but merge 62 requests' rows: whole requests, two a run.
        // Unpacked, one a block (the grid of before); packed, two a run.
        let (lens, lq) = (vec![4096; 128], vec![1; 128]);
        let (items, parts) = persistent_schedule(&lens, &lq, 128, 66, 132, None, 32 * 128, false);
        check_schedule(&lens, &lq, 66, 32 * 128, &items, &parts);
        assert_eq!((items.len(), parts.len() - 1), (128, 128));
        let (items, parts) = persistent_schedule(&lens, &lq, 128, 66, 132, None, 32 * 128, true);
        check_schedule(&lens, &lq, 66, 32 * 128, &items, &parts);
        assert_eq!((items.len(), parts.len() - 1), (128, 64));
        assert!(run_cost(&items, &parts).iter().all(|&c| c == 2 * (4096 + 64)));
        // M4: 32 x 16384, 2 tokens x 128 heads (4 row tiles: 33 runs): one request a block.
        let (lens, lq) = (vec![16384; 32], vec![2; 32]);
        let (items, parts) = persistent_schedule(&lens, &lq, 128, 33, 132, None, 32 * 32, false);
        check_schedule(&lens, &lq, 33, 32 * 32, &items, &parts);
        assert_eq!((items.len(), parts.len() - 1), (32, 32));
        // One request of 262144 keys (M5), 2 row tiles: 32 pieces of 8192 keys, the most
        // its token's 32 workspace rows allow (66 runs would balance 3973 keys each).
        let (items, parts) = persistent_schedule(&[262144], &[1], 128, 66, 132, None, 32, false);
        check_schedule(&[262144], &[1], 66, 32, &items, &parts);
        assert_eq!((items.len(), parts.len() - 1), (32, 32));
        assert!(items.iter().all(|k| k.end - k.begin == 8192), "{items:?}");
        // Ragged: a 16384-key request among 64 of 512 keys, 32 heads (one row tile, 132
        // runs): the long one is cut, and no run is longer than 1.5 x the average.
        let mut lens = vec![512; 64];
        lens.insert(20, 16384);
        let lq = vec![1; 65];
        let (items, parts) = persistent_schedule(&lens, &lq, 32, 132, 132, None, 32 * 65, false);
        check_schedule(&lens, &lq, 132, 32 * 65, &items, &parts);
        let costs = run_cost(&items, &parts);
        let avg = (16384 + 64 * 512 + 65 * 64) / 132;
        assert!(*costs.iter().max().unwrap() <= avg * 3 / 2, "{costs:?} against {avg}");
        assert!(items.iter().filter(|k| k.request == 20).count() > 16);
        // A tight workspace (a step's own limit: 32 x min(3 tokens, 2 requests) = 64 rows):
        // the average run (about 400 keys) would cut the two long requests into 30 and 18
        // pieces, 66 split rows; runs twice as long fit, and are still far shorter than the
        // 32767-key request whole (the GPU case "mla bf16 16 heads long context").
        let (lens, lq) = (vec![32767, 20000], vec![1, 2]);
        let (items, parts) = persistent_schedule(&lens, &lq, 16, 132, 132, None, 64, false);
        check_schedule(&lens, &lq, 132, 64, &items, &parts);
        let longest = *run_cost(&items, &parts).iter().max().unwrap();
        assert!(items.len() > 2 && longest <= 4 * 1088, "{} items, longest run {longest}", items.len());
        // M6 (bench catalog): 64 requests of 128 to 32768 keys, 128 heads (2 row tiles: 66
        // runs): whole, the longest request alone sets the time; cut, every run about the
        // average, about half of it.
        let lens = crate::workload::ragged_lengths(128, 32768, 64);
        let lq = vec![1; 64];
        let (items, parts) = persistent_schedule(&lens, &lq, 128, 66, 132, None, 32 * 64, false);
        check_schedule(&lens, &lq, 66, 32 * 64, &items, &parts);
        let longest_request = lens.iter().copied().max().unwrap() + 64;
        let longest_run = *run_cost(&items, &parts).iter().max().unwrap();
        assert!(items.len() > 64 && longest_run * 10 < longest_request * 6, "{} items, longest run {longest_run} against {longest_request}", items.len());
        // Forced chunks keep their pieces; one run holds everything.
        let (items, parts) = persistent_schedule(&[1000, 3000], &[1, 2], 16, 1, 132, Some(768), 64, true);
        check_schedule(&[1000, 3000], &[1, 2], 1, 64, &items, &parts);
        assert_eq!((items.len(), parts), (6, vec![0, 6]));
    }

    proptest::proptest! {
        #[test]
        fn persistent_schedule_covers_every_key(
            reqs in proptest::collection::vec((0usize..40_000, 1usize..5), 1..80),
            runs in 1usize..140,
            heads in proptest::sample::select(vec![16usize, 32, 64, 128]),
            pack in proptest::bool::ANY,
        ) {
            let lens: Vec<usize> = reqs.iter().map(|r| r.0.max(r.1)).collect();
            let lq: Vec<usize> = reqs.iter().map(|r| r.1).collect();
            let split_rows = MAX_SPLITS * lq.iter().sum::<usize>().min(lens.len());
            let (items, parts) = persistent_schedule(&lens, &lq, heads, runs, 132, None, split_rows, pack);
            check_schedule(&lens, &lq, runs, split_rows, &items, &parts);
        }
    }

    #[test]
    fn more_blocks_than_a_grid_holds_is_an_error() {
        // Requests of 2048 keys, forced to split as finely as the plan allows (22 splits of
        // 96 keys): 2900 requests fit a grid's 65,535 (request, split) pairs, 3000 do not.
        let forced = PlanOptions { force_splits: Some(32), ..PlanOptions::default() };
        let try_plan = |n: usize| {
            let m = meta(&vec![(2048, 1); n]);
            plan(&m, &LayerShape::heads(16, 1, 576), DType::Bf16, &DeviceProps::H100, &StepLimits::new(n, n, 2048, 64), &forced, BackendName::CudaMlaPortable)
        };
        let p = try_plan(2900).map_err(|e| e.to_string()).expect("2900 requests fit");
        let pairs = mla_rows(&p).key_splits.len();
        assert!(pairs <= MAX_GRID_Y && pairs > 2900 * 20, "{pairs} pairs");
        assert_eq!(p.launches[1].grid.1 as usize, pairs);
        match try_plan(3000) {
            Err(e) => assert!(e.to_string().contains("(request, split) blocks, more than a launch's 65535"), "{e}"),
            Ok(p) => panic!("3000 requests planned {} pairs", mla_rows(&p).key_splits.len()),
        }
    }

    #[test]
    fn registry_names() {
        let mla: Vec<String> = kernel_registry("sm_80").into_iter().filter(|k| k.starts_with("mla_")).collect();
        assert_eq!(
            mla,
            [
                "mla_cache_write_b16",
                "mla_cache_write_bf16_e4m3",
                "mla_cache_write_f16_e4m3",
                "mla_decode_bf16",
                "mla_decode_bf16_s3",
                "mla_decode_f16",
                "mla_decode_f16_s3",
                "mla_decode_bf16_e4m3",
                "mla_decode_bf16_e4m3_s3",
                "mla_decode_f16_e4m3",
                "mla_decode_f16_e4m3_s3"
            ]
        );
        assert_eq!(decode_kernel(QType::F16, KvType::Native, 3).name(), "mla_decode_f16_s3");
        assert_eq!(cache_write_kernel(QType::F16, KvType::Native).name(), "mla_cache_write_b16");
        // An sm_80-class device (163 KiB a block) gets the 2-stage kernel, an H100 the 3-stage one.
        let (a100, h100) = (DeviceProps::A100.max_shared_memory_per_block, DeviceProps::H100.max_shared_memory_per_block);
        assert_eq!((pipeline_stages(KvType::Native, a100), pipeline_stages(KvType::Native, h100)), (2, 3));
        assert_eq!((mla_smem_bytes(2, 2), mla_smem_bytes(3, 2)), (163_840, 200_704));
        // fp8: 656-byte rows in flight plus the two 16-bit tiles they widen into; 3 stages on an H100.
        assert_eq!((mla_smem_bytes(2, 1), mla_smem_bytes(3, 1)), (73_728 + 73_728 + 2 * 32 * 656 + 16_384, 73_728 + 73_728 + 3 * 32 * 656 + 16_384));
        assert_eq!(pipeline_stages(KvType::Fp8E4m3, h100), 3);
        assert!(mla_smem_bytes(2, 1) > a100, "no fp8 MLA kernel fits an sm_80 block");
    }
}
