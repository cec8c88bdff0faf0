//! CUDA paged backend: the Rust PTX kernels of `device-kernels/`.
//!
//! - `reshape_and_cache_b16`: this step's K/V into the cache through the slot mapping;
//! - `paged_attention_<dtype>_d<head_dim>`: one query token per block over the block table,
//!   the GQA group's heads as tensor-core tile rows (decode; also the rows of a chunked or
//!   fresh prefill, exact but not yet fast);
//! - `merge_splits_<dtype>`: flash-decoding's merge when the plan splits the keys.
//!
//! Plan, then run: [`CudaPagedImpl::plan`] uploads a step's metadata once and decides the
//! split count; [`CudaPagedImpl::run`] only launches, and serves every layer of the step.

use super::{AttentionImpl, BackendCaps, BackendName};
use crate::cuda::CudaRuntime;
use crate::dtype::{DType, Element, KvCacheDType};
use crate::error::{AttnError, Result};
use crate::kv_cache::{HostKvCache, KvCacheLayout};
use crate::metadata::AttentionMetadata;
use crate::params::{
    paged_smem_bytes, CacheWriteParams, MergeParams, PagedAttnParams, CACHE_WRITE_THREADS, PAGED_ROWS, PAGED_WARPS,
};
use crate::spec::AttnSpec;
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use std::marker::PhantomData;
use std::sync::Arc;

/// Head dims with a compiled kernel (the device crate's instantiation table).
pub const HEAD_DIMS: &[usize] = &[64, 128, 256];

pub static CAPS: BackendCaps = BackendCaps {
    name: BackendName::CudaPaged,
    min_compute_capability: Some(80),
    cpu: false,
    dtypes: &[DType::F16, DType::Bf16],
    kv_cache_dtypes: &[KvCacheDType::Auto],
    head_dims: HEAD_DIMS,
    mha: true,
    mla: false,
    sliding_window: true,
    softcap: true,
    alibi: true,
    block_sizes: (1, 256),
    shared_memory_bytes: Some(shared_memory_bytes),
};

fn shared_memory_bytes(head_dim: usize) -> usize {
    paged_smem_bytes(head_dim as u32) as usize
}

/// Keys one split should at least cover: below this the merge costs more than it saves.
pub const MIN_KEYS_PER_SPLIT: usize = 512;
/// Keys per split for ragged batches, whose longest requests would otherwise finish last.
pub const RAGGED_KEYS_PER_SPLIT: usize = 2048;
/// Most splits per query token.
pub const MAX_SPLITS: usize = 32;

/// Flash-decoding's split count, from the grid without splits (`blocks`), the longest and
/// the mean sequence, and how many blocks the device holds at once (`resident`).
/// - Fewer blocks than fit at once: split to fill one wave, `resident / blocks`.
/// - Ragged batches (longest > 1.5 x mean): split the longest into
///   `RAGGED_KEYS_PER_SPLIT`-key pieces, so the tail of the grid is short.
/// - Otherwise 1. Never below `MIN_KEYS_PER_SPLIT` keys per split, never above `MAX_SPLITS`.
///
/// Examples (BENCHMARKS.md on an H100: 132 SMs x 2 resident blocks = 264; measured best in
/// brackets): D3 (4 x 32768 keys, 8 kv heads: 32 blocks) -> 264 / 32 = 8 [4-8];
/// D4 (128 ragged, 253..8184 keys, mean 4371: 1024 blocks) -> ceil(8184 / 2048) = 4 [4];
/// D1 (64 x 4096: 512 blocks, uniform) -> 1 [1].
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

/// The paged-attention kernel for a dtype tag and head dim (device crate's table).
fn kernel_name(tag: &str, head_dim: usize) -> String {
    format!("paged_attention_{tag}_d{head_dim}")
}

/// A step's metadata on the device, the launch plan derived from it, and the split-KV
/// workspace it needs. Reusable by every layer of the step that has the planning layer's
/// cache layout, query heads and head dim (checked at each launch).
pub struct DevicePlan {
    query_start_loc: CudaSlice<i32>,
    seq_lens: CudaSlice<i32>,
    block_table: CudaSlice<i32>,
    slot_mapping: CudaSlice<i64>,
    block_table_stride: usize,
    num_seqs: usize,
    num_tokens: usize,
    layout: KvCacheLayout,
    num_q_heads: usize,
    head_dim: usize,
    num_splits: usize,
    /// `num_splits x num_tokens x num_q_heads` rows of `head_dim` f32 partial outputs, and of
    /// (m, l) pairs; allocated only when split.
    workspace: Option<(CudaSlice<f32>, CudaSlice<f32>)>,
}

impl DevicePlan {
    pub fn num_splits(&self) -> usize {
        self.num_splits
    }
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }
}

/// One layer on the CUDA paged backend; owns the layer's paged cache on the device.
pub struct CudaPagedImpl<T> {
    rt: Arc<CudaRuntime>,
    /// Blocks of the paged kernel that fit on the device at once (SMs x blocks per SM).
    resident_blocks: usize,
    spec: AttnSpec,
    layout: KvCacheLayout,
    key_cache: CudaSlice<u16>,
    value_cache: CudaSlice<u16>,
    alibi: Option<CudaSlice<f32>>,
    /// The three kernels of a step, looked up once.
    cache_write_fn: CudaFunction,
    attention_fn: CudaFunction,
    merge_fn: CudaFunction,
    _elem: PhantomData<T>,
}

/// Host elements as the 16-bit words the kernels move.
fn as_u16<T: Element>(x: &[T]) -> &[u16] {
    assert_eq!(std::mem::size_of::<T>(), 2, "caller checked KERNEL_TAG");
    // SAFETY: T is f16 or bf16 (KERNEL_TAG is Some only for those), both repr(transparent) u16.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u16, x.len()) }
}
fn as_u16_mut<T: Element>(x: &mut [T]) -> &mut [u16] {
    assert_eq!(std::mem::size_of::<T>(), 2, "caller checked KERNEL_TAG");
    // SAFETY: as in `as_u16`.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut u16, x.len()) }
}

fn check_len(what: &'static str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(AttnError::LengthMismatch { what, detail: format!("{got} elements, expected {want}") });
    }
    Ok(())
}

impl<T: Element> CudaPagedImpl<T> {
    /// Allocates the layer's cache (zeroed) on the device. Errors before any allocation if
    /// the backend cannot serve `spec` (dtype, head dim) or the layout disagrees with it.
    pub fn new(rt: Arc<CudaRuntime>, spec: AttnSpec, layout: KvCacheLayout) -> Result<Self> {
        spec.validate()?;
        layout.validate()?;
        let Some(_) = T::KERNEL_TAG else {
            return Err(AttnError::UnsupportedDType { dtype: T::DTYPE, backend: "CUDA_PAGED", supported: "f16, bf16" });
        };
        if !HEAD_DIMS.contains(&spec.head_dim) {
            return Err(AttnError::UnsupportedHeadDim { head_dim: spec.head_dim, backend: "CUDA_PAGED", supported: HEAD_DIMS });
        }
        if layout.num_kv_heads != spec.num_kv_heads || layout.head_dim != spec.head_dim {
            return Err(AttnError::InvalidConfig(format!(
                "cache layout ({} kv heads, head dim {}) disagrees with the layer ({} kv heads, head dim {})",
                layout.num_kv_heads, layout.head_dim, spec.num_kv_heads, spec.head_dim
            )));
        }
        if layout.block_size > CAPS.block_sizes.1 {
            return Err(AttnError::InvalidConfig(format!("block size {} above {}", layout.block_size, CAPS.block_sizes.1)));
        }
        // More than 48 KiB of dynamic shared memory must be asked for per kernel; the
        // occupancy that results feeds the split heuristic.
        let smem = paged_smem_bytes(spec.head_dim as u32);
        let smem_max = rt.context().attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        if smem as i64 > smem_max as i64 {
            return Err(AttnError::Unsupported {
                backend: "CUDA_PAGED",
                reason: format!("head dim {} needs {smem} bytes of shared memory per block; {} allows {smem_max}", spec.head_dim, rt.device_name()),
            });
        }
        let tag = T::KERNEL_TAG.unwrap_or_default();
        let kernel = rt.function(&kernel_name(tag, spec.head_dim))?;
        kernel.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)?;
        let per_sm = kernel.occupancy_max_active_blocks_per_multiprocessor(PAGED_WARPS * 32, smem as usize, None)?;
        let resident_blocks = (per_sm.max(1) * rt.num_sms()) as usize;
        let stream = rt.stream().clone();
        let key_cache = stream.alloc_zeros::<u16>(layout.elements())?;
        let value_cache = stream.alloc_zeros::<u16>(layout.elements())?;
        let alibi = match &spec.alibi_slopes {
            Some(s) => Some(stream.clone_htod(s)?),
            None => None,
        };
        let cache_write_fn = rt.function("reshape_and_cache_b16")?;
        let merge_fn = rt.function(&format!("merge_splits_{tag}"))?;
        Ok(CudaPagedImpl {
            rt,
            resident_blocks,
            spec,
            layout,
            key_cache,
            value_cache,
            alibi,
            cache_write_fn,
            attention_fn: kernel,
            merge_fn,
            _elem: PhantomData,
        })
    }

    pub fn runtime(&self) -> &Arc<CudaRuntime> {
        &self.rt
    }
    pub fn spec(&self) -> &AttnSpec {
        &self.spec
    }

    /// Replaces the whole cache with host contents (tests and benchmarks fill long contexts
    /// this way instead of through prefill steps).
    pub fn load_cache(&mut self, cache: &HostKvCache<T>) -> Result<()> {
        if cache.layout != self.layout {
            return Err(AttnError::InvalidConfig(format!("cache layout {:?} differs from the layer's {:?}", cache.layout, self.layout)));
        }
        check_len("key cache", cache.key.len(), self.layout.elements())?;
        check_len("value cache", cache.value.len(), self.layout.elements())?;
        let stream = self.rt.stream();
        stream.memcpy_htod(as_u16(&cache.key), &mut self.key_cache)?;
        stream.memcpy_htod(as_u16(&cache.value), &mut self.value_cache)?;
        Ok(())
    }

    /// q and out hold `num_tokens x Hq x D` elements, k and v `num_tokens x Hkv x D`.
    fn check_shapes(&self, num_tokens: usize, q: usize, k: usize, v: usize, out: usize) -> Result<()> {
        let (hq, hkv, d) = (self.spec.num_q_heads, self.spec.num_kv_heads, self.spec.head_dim);
        // Spec and layout are bounded (validated), so only num_tokens can make these overflow.
        let rows = |heads: usize| num_tokens.checked_mul(heads * d).unwrap_or(usize::MAX);
        check_len("q", q, rows(hq))?;
        check_len("k", k, rows(hkv))?;
        check_len("v", v, rows(hkv))?;
        check_len("out", out, rows(hq))
    }

    /// Uploads a step's metadata and plans its launches (split count from the batch and
    /// the SM count). `force_splits` overrides the heuristic (tests, benchmarks).
    pub fn plan(&mut self, meta: &AttentionMetadata, force_splits: Option<usize>) -> Result<DevicePlan> {
        if *meta.layout() != self.layout {
            return Err(AttnError::InvalidConfig(format!(
                "metadata was built for cache {:?}, the layer's cache is {:?}", meta.layout(), self.layout
            )));
        }
        let tiles = self.spec.group_size().div_ceil(PAGED_ROWS as usize);
        let blocks = meta.num_tokens() * self.spec.num_kv_heads * tiles;
        let mean_seq_len = meta.seq_lens().iter().map(|&s| s as usize).sum::<usize>() / meta.num_reqs().max(1);
        let num_splits = match force_splits {
            Some(s) if (1..=MAX_SPLITS).contains(&s) => s,
            Some(s) => return Err(AttnError::InvalidConfig(format!("{s} splits: must be in 1..={MAX_SPLITS}"))),
            None => num_splits_heuristic(blocks, meta.max_seq_len(), mean_seq_len, self.resident_blocks),
        };
        let stream = self.rt.stream();
        let (hq, d) = (self.spec.num_q_heads, self.spec.head_dim);
        let workspace = if num_splits > 1 {
            let rows = num_splits * meta.num_tokens() * hq;
            Some((stream.alloc_zeros::<f32>(rows * d)?, stream.alloc_zeros::<f32>(rows * 2)?))
        } else {
            None
        };
        let plan = DevicePlan {
            query_start_loc: stream.clone_htod(meta.query_start_loc())?,
            seq_lens: stream.clone_htod(meta.seq_lens())?,
            block_table: stream.clone_htod(if meta.block_table().is_empty() { &[0i32][..] } else { meta.block_table() })?,
            slot_mapping: stream.clone_htod(if meta.slot_mapping().is_empty() { &[-1i64][..] } else { meta.slot_mapping() })?,
            block_table_stride: meta.block_table_stride(),
            num_seqs: meta.num_reqs(),
            num_tokens: meta.num_tokens(),
            layout: *meta.layout(),
            num_q_heads: hq,
            head_dim: d,
            num_splits,
            workspace,
        };
        tracing::debug!(tokens = plan.num_tokens, seqs = plan.num_seqs, splits = num_splits, "planned step");
        Ok(plan)
    }

    /// Launches the step on device tensors: cache write, paged attention, merge if split.
    /// q, out `[num_tokens, Hq, D]`; k, v `[num_tokens, Hkv, D]`.
    pub fn run(&mut self, plan: &DevicePlan, q: &CudaSlice<u16>, k: &CudaSlice<u16>, v: &CudaSlice<u16>, out: &mut CudaSlice<u16>) -> Result<()> {
        self.check_plan(plan)?;
        self.check_shapes(plan.num_tokens, q.len(), k.len(), v.len(), out.len())?;
        if plan.num_tokens == 0 {
            return Ok(());
        }
        self.write_cache(plan, k, v)?;
        self.launch_attention(plan, q, out)
    }

    fn write_cache(&mut self, plan: &DevicePlan, k: &CudaSlice<u16>, v: &CudaSlice<u16>) -> Result<()> {
        let stream = self.rt.stream().clone();
        let l = self.layout;
        let (kp, _g1) = k.device_ptr(&stream);
        let (vp, _g2) = v.device_ptr(&stream);
        let (sp, _g3) = plan.slot_mapping.device_ptr(&stream);
        let (kc, _g4) = self.key_cache.device_ptr_mut(&stream);
        let (vc, _g5) = self.value_cache.device_ptr_mut(&stream);
        let p = CacheWriteParams {
            key: kp,
            value: vp,
            key_cache: kc,
            value_cache: vc,
            slot_mapping: sp,
            src_token_stride: (l.num_kv_heads * l.head_dim) as u64,
            src_head_stride: l.head_dim as u64,
            cache_block_stride: l.block_stride() as u64,
            cache_token_stride: l.token_stride() as u64,
            cache_head_stride: l.head_stride() as u64,
            num_tokens: plan.num_tokens as u32,
            num_kv_heads: l.num_kv_heads as u32,
            head_dim: l.head_dim as u32,
            block_size: l.block_size as u32,
        };
        let cfg = LaunchConfig { grid_dim: (plan.num_tokens as u32, 1, 1), block_dim: (CACHE_WRITE_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: p's pointers are live device buffers of the sizes checked in `run` and at
        // construction; every non-negative slot was validated against the cache capacity.
        unsafe { stream.launch_builder(&self.cache_write_fn).arg(&p).launch(cfg) }?;
        Ok(())
    }

    /// A plan fits this layer: same cache layout, query heads and head dim (so its metadata
    /// and workspace do too).
    fn check_plan(&self, plan: &DevicePlan) -> Result<()> {
        if plan.layout != self.layout || plan.num_q_heads != self.spec.num_q_heads || plan.head_dim != self.spec.head_dim {
            return Err(AttnError::InvalidConfig(format!(
                "plan made for cache {:?}, {} query heads, head dim {}; this layer has cache {:?}, {} query heads, head dim {}",
                plan.layout, plan.num_q_heads, plan.head_dim, self.layout, self.spec.num_q_heads, self.spec.head_dim
            )));
        }
        Ok(())
    }

    /// Attention alone (no cache write) over a planned step: what the decode benchmarks time.
    /// q, out `[num_tokens, Hq, D]`, checked like `run`'s.
    pub fn attend(&mut self, plan: &DevicePlan, q: &CudaSlice<u16>, out: &mut CudaSlice<u16>) -> Result<()> {
        self.check_plan(plan)?;
        let n = plan.num_tokens * self.spec.num_q_heads * self.spec.head_dim;
        check_len("q", q.len(), n)?;
        check_len("out", out.len(), n)?;
        if plan.num_tokens == 0 {
            return Ok(());
        }
        self.launch_attention(plan, q, out)
    }

    fn launch_attention(&mut self, plan: &DevicePlan, q: &CudaSlice<u16>, out: &mut CudaSlice<u16>) -> Result<()> {
        let stream = self.rt.stream().clone();
        let (hq, hkv, d) = (self.spec.num_q_heads, self.spec.num_kv_heads, self.spec.head_dim);
        let l = self.layout;
        let tiles = self.spec.group_size().div_ceil(PAGED_ROWS as usize);
        let (qp, _g1) = q.device_ptr(&stream);
        let (op, _g2) = out.device_ptr_mut(&stream);
        let (kc, _g3) = self.key_cache.device_ptr(&stream);
        let (vc, _g4) = self.value_cache.device_ptr(&stream);
        let (bt, _g5) = plan.block_table.device_ptr(&stream);
        let (sl, _g6) = plan.seq_lens.device_ptr(&stream);
        let (qsl, _g7) = plan.query_start_loc.device_ptr(&stream);
        let alibi = self.alibi.as_ref().map(|a| a.device_ptr(&stream));
        let split = plan.num_splits > 1;
        let po = plan.workspace.as_ref().map(|w| w.0.device_ptr(&stream));
        let pml = plan.workspace.as_ref().map(|w| w.1.device_ptr(&stream));
        let p = PagedAttnParams {
            q: qp,
            out: op,
            key_cache: kc,
            value_cache: vc,
            block_table: bt,
            seq_lens: sl,
            query_start_loc: qsl,
            alibi_slopes: alibi.as_ref().map_or(0, |a| a.0),
            partial_out: po.as_ref().map_or(0, |a| a.0),
            partial_ml: pml.as_ref().map_or(0, |a| a.0),
            q_token_stride: (hq * d) as u64,
            q_head_stride: d as u64,
            out_token_stride: (hq * d) as u64,
            out_head_stride: d as u64,
            cache_block_stride: l.block_stride() as u64,
            cache_token_stride: l.token_stride() as u64,
            cache_head_stride: l.head_stride() as u64,
            block_table_stride: plan.block_table_stride as u32,
            num_seqs: plan.num_seqs as u32,
            num_tokens: plan.num_tokens as u32,
            num_q_heads: hq as u32,
            num_kv_heads: hkv as u32,
            block_size_log2: l.block_size.trailing_zeros(),
            sliding_window: self.spec.sliding_window.unwrap_or(0).min(u32::MAX as usize) as u32,
            num_splits: plan.num_splits as u32,
            scale: self.spec.scale,
            softcap: self.spec.softcap.unwrap_or(0.0),
        };
        let cfg = LaunchConfig {
            grid_dim: (plan.num_tokens as u32, (hkv * tiles) as u32, plan.num_splits as u32),
            block_dim: (PAGED_WARPS * 32, 1, 1),
            shared_mem_bytes: paged_smem_bytes(d as u32),
        };
        // SAFETY: buffers sized as checked in `run`; the metadata was validated by the
        // builder (block ids inside the cache, seq_lens >= query lengths); the workspace
        // holds num_splits x num_tokens x Hq rows when split.
        unsafe { stream.launch_builder(&self.attention_fn).arg(&p).launch(cfg) }?;
        if split {
            let m = MergeParams {
                partial_out: p.partial_out,
                partial_ml: p.partial_ml,
                out: op,
                out_token_stride: (hq * d) as u64,
                out_head_stride: d as u64,
                num_tokens: plan.num_tokens as u32,
                num_q_heads: hq as u32,
                head_dim: d as u32,
                num_splits: plan.num_splits as u32,
            };
            let cfg = LaunchConfig { grid_dim: (plan.num_tokens as u32, hq as u32, 1), block_dim: ((d / 8) as u32, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: the workspace was fully written by the split launch above.
            unsafe { stream.launch_builder(&self.merge_fn).arg(&m).launch(cfg) }?;
        }
        Ok(())
    }

    /// `forward` with an explicit split count (tests exercise 1 and many).
    pub fn forward_with_splits(&mut self, q: &[T], k: &[T], v: &[T], meta: &AttentionMetadata, out: &mut [T], splits: Option<usize>) -> Result<()> {
        let n = meta.num_tokens();
        self.check_shapes(n, q.len(), k.len(), v.len(), out.len())?;
        let plan = self.plan(meta, splits)?;
        let stream = self.rt.stream().clone();
        let qd = stream.clone_htod(as_u16(q))?;
        let kd = stream.clone_htod(as_u16(k))?;
        let vd = stream.clone_htod(as_u16(v))?;
        // The device output starts as the caller's `out` (tests poison it with NaN, so an
        // element the kernels fail to write shows).
        let mut od = if out.is_empty() { stream.alloc_zeros::<u16>(1)? } else { stream.clone_htod(as_u16(out))? };
        if n > 0 {
            self.run(&plan, &qd, &kd, &vd, &mut od)?;
        }
        stream.memcpy_dtoh(&od.slice(0..out.len()), as_u16_mut(out))?;
        stream.synchronize()?;
        Ok(())
    }
}

impl<T: Element> AttentionImpl<T> for CudaPagedImpl<T> {
    fn backend(&self) -> BackendName {
        BackendName::CudaPaged
    }

    fn forward(&mut self, q: &[T], k: &[T], v: &[T], meta: &AttentionMetadata, out: &mut [T]) -> Result<()> {
        self.forward_with_splits(q, k, v, meta, out, None)
    }

    fn cache_snapshot(&self) -> Result<HostKvCache<T>> {
        let stream = self.rt.stream();
        let mut c = HostKvCache::<T>::zeros(self.layout);
        stream.memcpy_dtoh(&self.key_cache, as_u16_mut(&mut c.key))?;
        stream.memcpy_dtoh(&self.value_cache, as_u16_mut(&mut c.value))?;
        stream.synchronize()?;
        Ok(c)
    }

    fn load_cache(&mut self, cache: &HostKvCache<T>) -> Result<()> {
        CudaPagedImpl::load_cache(self, cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
