//! The CUDA plumbing both CUDA backends use, beneath them (it imports neither): the step's
//! metadata in persistent device buffers and its one asynchronous upload through page-locked
//! staging ([`DeviceMetadata`]), the checks every launch makes of its tensors, kernel lookup
//! with the shared memory opted into, the merge kernel's id, and the host-tensor run through
//! the device.

use crate::backend_name::BackendName;
use crate::cuda::CudaRuntime;
use crate::dtype::{DType, Element, KvCacheDType};
use crate::error::{AttnError, Result};
use crate::metadata::AttentionMetadata;
use crate::plan::{LayerShape, StepLimits, StepPlan};
use crate::registry::{Family, KernelId, KvType, QType, ScoreMod};
use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags, CUfunction_attribute};
use cudarc::driver::{CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, PinnedHostSlice};
use std::any::Any;
use std::sync::Arc;

/// A layer's tensors on the device: q, out `[num_tokens, num_q_heads, head_dim]`, k, v
/// `[num_tokens, num_kv_heads, head_dim]` (at least that many rows: buffers sized for the
/// largest step serve smaller ones, as CUDA graphs need); optionally `lse`
/// `[num_tokens, num_q_heads]`, each row's log-sum-exp of its scores (natural log; `-inf`
/// for a row that sees no key), as cascade attention and speculative decoding use it.
pub struct DeviceTensors<'a, T> {
    /// `[tokens, q heads, head dim]` (MLA: the absorbed query).
    pub q: &'a CudaSlice<T>,
    /// `[tokens, kv heads, head dim]`: this step's keys (MLA: `kv_c`).
    pub k: &'a CudaSlice<T>,
    /// `[tokens, kv heads, head dim]`: this step's values (MLA: `k_pe`).
    pub v: &'a CudaSlice<T>,
    /// `[tokens, q heads, head dim]` (MLA: the latent output).
    pub out: &'a mut CudaSlice<T>,
    /// `f32 [tokens, q heads]`: each row's log-sum-exp, when asked for.
    pub lse: Option<&'a mut CudaSlice<f32>>,
}

/// The kernels' query type for a dtype; an error for a dtype with no kernel.
pub(crate) fn query_type(dtype: DType, backend: &'static str) -> Result<QType> {
    match dtype {
        DType::Bf16 => Ok(QType::Bf16),
        DType::F16 => Ok(QType::F16),
        DType::F32 => Err(AttnError::UnsupportedDType { dtype, backend, supported: "f16, bf16" }),
    }
}


/// Flash-decoding's merge (f32 partial states in, the query type out), which both CUDA
/// backends launch after a split.
pub fn merge_kernel(q: QType) -> KernelId {
    KernelId { family: Family::Merge, q, kv: KvType::Native, head_dim: 0, score: ScoreMod::Plain, stages: 0 }
}


/// The dynamic shared memory a block may opt into on the runtime's device.
pub(crate) fn max_shared_memory_per_block(rt: &CudaRuntime) -> Result<u32> {
    Ok(rt.context().attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?.max(0) as u32)
}

/// A kernel with `smem` bytes of dynamic shared memory opted into (past 48 KiB that must be
/// asked for per kernel); an error if the device allows less.
/// The size is the table's (`KernelId::smem_bytes`).
pub(crate) fn function_with_smem(rt: &CudaRuntime, backend: BackendName, id: KernelId, head_dim: usize) -> Result<CudaFunction> {
    let smem = id.smem_bytes();
    let smem_max = max_shared_memory_per_block(rt)?;
    if smem > smem_max {
        return Err(AttnError::Unsupported {
            backend: backend.as_str(),
            reason: format!("head dim {head_dim}: {id} needs {smem} bytes of shared memory per block; {} allows {smem_max}", rt.device_name()),
        });
    }
    let f = rt.function(id)?;
    f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)?;
    Ok(f)
}


pub(crate) fn ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    // Event tracking is off in the runtime's own context (one stream), so the guard records
    // nothing; on a borrowed stream (candle's) it may be on, and every launch is on that one
    // stream, which orders it whatever the guard records.
    s.device_ptr(stream).0
}

/// A step's metadata on the device, in buffers sized once for [`StepLimits`], and the
/// split workspace: what every layer of the step reads. The block table is stored with the
/// fixed stride `max_blocks_per_req`, so the kernels' arguments do not depend on the step's
/// own stride.
pub struct DeviceMetadata {
    rt: Arc<CudaRuntime>,
    pub(crate) query_start_loc: CudaSlice<i32>,
    pub(crate) seq_lens: CudaSlice<i32>,
    pub(crate) block_table: CudaSlice<i32>,
    pub(crate) slot_mapping: CudaSlice<i64>,
    /// `[max_reqs]`: each request's first visible key, uploaded when the step's maps carry
    /// them (`AttentionMetadata::first_keys`).
    pub(crate) first_keys: CudaSlice<i32>,
    /// The backend's own maps of a step (`cuda_paged::PagedWorkspace`,
    /// `cuda_mla::MlaWorkspace`), uploaded with the rest.
    rows: Box<dyn DeviceRows>,
    /// `split_rows x Hq` rows of `head_dim` f32 partial outputs, and of (m, l) pairs.
    pub(crate) partial_out: CudaSlice<f32>,
    pub(crate) partial_ml: CudaSlice<f32>,
    /// Page-locked staging of the four maps (the copies from it are asynchronous).
    staging_i32: PinnedHostSlice<i32>,
    staging_slots: PinnedHostSlice<i64>,
    /// Recorded after each upload: the staging memory may be rewritten once it completed.
    uploaded: CudaEvent,
    pub(crate) block_table_stride: usize,
}

/// How many i32 maps a backend adds to a step's metadata (the paged backends: decode map
/// and prefill tiles; MLA: key splits and token splits).
pub(crate) const BACKEND_MAPS: usize = 2;

/// A backend's own device maps of a step, beside the metadata every CUDA backend uploads
/// (query_start_loc, seq_lens, block table, slot mapping) and the split-KV workspace. The
/// backend owns the type; [`DeviceMetadata`] stages and uploads its maps with the others.
pub(crate) trait DeviceRows: Send + Sync + 'static {
    /// The maps, in upload order.
    fn maps(&self) -> [&CudaSlice<i32>; BACKEND_MAPS];
    /// Fills one staging slice per map (each of its map's length) from the plan's rows;
    /// returns how many values of each to copy. An error if the rows do not fit.
    fn fill(&self, plan: &StepPlan, staging: [&mut [i32]; BACKEND_MAPS]) -> Result<[usize; BACKEND_MAPS]>;
    fn as_any(&self) -> &dyn Any;
}

impl DeviceMetadata {
    /// The backend's maps, if they are of type `W`.
    pub(crate) fn rows<W: DeviceRows>(&self) -> Option<&W> {
        self.rows.as_any().downcast_ref::<W>()
    }
    /// The runtime whose device holds these buffers.
    pub(crate) fn runtime(&self) -> &Arc<CudaRuntime> {
        &self.rt
    }
    /// The step's buffers for layers of `shape` within `limits`, with the backend's own maps
    /// (`rows`, made by `BackendName::device_metadata`).
    pub(crate) fn new(rt: Arc<CudaRuntime>, shape: LayerShape, limits: &StepLimits, rows: Box<dyn DeviceRows>) -> Result<Self> {
        limits.validate()?;
        let stream = rt.stream().clone();
        let bt = limits.max_reqs * limits.max_blocks_per_req;
        let ws_rows = limits.split_rows.checked_mul(shape.num_q_heads).ok_or_else(|| AttnError::InvalidConfig("workspace size overflows".into()))?;
        let (query_start_loc, seq_lens, block_table) = (stream.alloc_zeros(limits.max_reqs + 1)?, stream.alloc_zeros(limits.max_reqs)?, stream.alloc_zeros(bt)?);
        let first_keys = stream.alloc_zeros(limits.max_reqs.max(1))?;
        // Staging: one i32 slice per i32 map, in `upload`'s order and of the map's length.
        let i32s = query_start_loc.len() + seq_lens.len() + block_table.len() + first_keys.len() + rows.maps().iter().map(|b| b.len()).sum::<usize>();
        // SAFETY: the staging memory is written before it is read (each upload fills what it copies).
        let (staging_i32, staging_slots) = unsafe { (rt.context().alloc_pinned::<i32>(i32s)?, rt.context().alloc_pinned::<i64>(limits.max_tokens)?) };
        let m = DeviceMetadata {
            query_start_loc,
            seq_lens,
            block_table,
            slot_mapping: stream.alloc_zeros(limits.max_tokens)?,
            first_keys,
            rows,
            partial_out: stream.alloc_zeros(ws_rows * shape.head_dim)?,
            partial_ml: stream.alloc_zeros(ws_rows * 2)?,
            staging_i32,
            staging_slots,
            uploaded: rt.context().new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))?,
            block_table_stride: limits.max_blocks_per_req,
            rt,
        };
        m.uploaded.record(&stream)?;
        tracing::debug!(?limits, bytes = m.bytes(), "step buffers allocated");
        Ok(m)
    }

    /// Device bytes held (metadata and workspace).
    pub fn bytes(&self) -> usize {
        4 * (self.query_start_loc.len()
            + self.seq_lens.len()
            + self.block_table.len()
            + self.first_keys.len()
            + self.rows.maps().iter().map(|b| b.len()).sum::<usize>()
            + self.partial_out.len()
            + self.partial_ml.len())
            + 8 * self.slot_mapping.len()
    }

    /// Copies a step's maps into the persistent buffers (`Step::prepare` checked them against
    /// the limits; every copy is bounded by its staging slice all the same):
    /// waits for the previous upload to leave the staging memory, fills it, and enqueues the
    /// copies on the runtime's stream, ahead of the step's launches.
    pub(crate) fn upload(&mut self, meta: &AttentionMetadata, plan: &StepPlan) -> Result<()> {
        self.uploaded.synchronize()?;
        let (r, stride, bs) = (meta.num_reqs(), self.block_table_stride, meta.layout().block_size);
        let staging = self.staging_i32.as_mut_slice()?;
        let (qsl, rest) = staging.split_at_mut(self.query_start_loc.len());
        let (seq, rest) = rest.split_at_mut(self.seq_lens.len());
        let (bt, rest) = rest.split_at_mut(self.block_table.len());
        let (fk, rest) = rest.split_at_mut(self.first_keys.len());
        // The backend's maps, each in its own staging slice.
        let maps = self.rows.maps();
        let (own0, rest) = rest.split_at_mut(maps[0].len());
        let own1 = &mut rest[..maps[1].len()];
        let used = self.rows.fill(plan, [&mut *own0, &mut *own1])?;
        qsl[..=r].copy_from_slice(meta.query_start_loc());
        seq[..r].copy_from_slice(meta.seq_lens());
        for req in 0..r {
            let used = (meta.seq_lens()[req] as usize).div_ceil(bs);
            let row = &mut bt[req * stride..(req + 1) * stride];
            row[..used].copy_from_slice(&meta.block_ids(req)[..used]);
            row[used..].fill(0);
        }
        let fks = meta.first_keys().len();
        fk[..fks].copy_from_slice(meta.first_keys());
        let n = meta.num_tokens();
        self.staging_slots.as_mut_slice()?[..n].copy_from_slice(meta.slot_mapping());
        let stream = self.rt.stream().clone();
        let (qsl, seq, bt) = (&qsl[..=r], &seq[..r], &bt[..r * stride]);
        let slots = &self.staging_slots.as_slice()?[..n];
        // SAFETY: each destination holds at least its source (sizes from the limits, checked
        // above); the staging memory is page-locked and is not written again before
        // `uploaded`, recorded after these copies, completes.
        unsafe {
            use cudarc::driver::result::memcpy_htod_async as htod;
            htod(ptr(&self.query_start_loc, &stream), qsl, stream.cu_stream())?;
            if r > 0 {
                htod(ptr(&self.seq_lens, &stream), seq, stream.cu_stream())?;
                htod(ptr(&self.block_table, &stream), bt, stream.cu_stream())?;
            }
            if n > 0 {
                htod(ptr(&self.slot_mapping, &stream), slots, stream.cu_stream())?;
            }
            if fks > 0 {
                htod(ptr(&self.first_keys, &stream), &fk[..fks], stream.cu_stream())?;
            }
            for (dst, src, n) in [(maps[0], &*own0, used[0]), (maps[1], &*own1, used[1])] {
                if n > 0 {
                    htod(ptr(dst, &stream), &src[..n.min(src.len())], stream.cu_stream())?;
                }
            }
        }
        self.uploaded.record(&stream)?;
        Ok(())
    }
}


/// Host elements as the 16-bit words the kernels move.
pub(crate) fn as_u16<T: Element>(x: &[T]) -> &[u16] {
    assert_eq!(std::mem::size_of::<T>(), 2, "caller checked KERNEL_TAG");
    // SAFETY: T is f16 or bf16 (KERNEL_TAG is Some only for those), both repr(transparent) u16.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u16, x.len()) }
}
pub(crate) fn as_u16_mut<T: Element>(x: &mut [T]) -> &mut [u16] {
    assert_eq!(std::mem::size_of::<T>(), 2, "caller checked KERNEL_TAG");
    // SAFETY: as in `as_u16`.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut u16, x.len()) }
}

pub(crate) fn check_len(what: &'static str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(AttnError::LengthMismatch { what, detail: format!("{got} elements, expected {want}") });
    }
    Ok(())
}

/// A run on host tensors through the device (tests, examples): q, k, v and out (so that an
/// element the kernels fail to write keeps the caller's value: tests poison it) copied over,
/// `run` on them, out copied back, synchronized. Nothing for an empty step.
pub(crate) fn through_device<T: Element>(rt: &CudaRuntime, q: &[T], k: &[T], v: &[T], out: &mut [T], lse: Option<&mut [f32]>, run: impl FnOnce(DeviceTensors<'_, T>) -> Result<()>) -> Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let stream = rt.stream().clone();
    let (qd, kd, vd) = (stream.clone_htod(q)?, stream.clone_htod(k)?, stream.clone_htod(v)?);
    let mut od = stream.clone_htod(&*out)?;
    let mut ld = match &lse {
        Some(l) => Some(stream.clone_htod(&**l)?),
        None => None,
    };
    run(DeviceTensors { q: &qd, k: &kd, v: &vd, out: &mut od, lse: ld.as_mut() })?;
    stream.memcpy_dtoh(&od, out)?;
    if let (Some(ld), Some(l)) = (&ld, lse) {
        stream.memcpy_dtoh(ld, l)?;
    }
    stream.synchronize()?;
    Ok(())
}

/// A device tensor holds at least `rows` rows of `row` elements, in whole rows.
pub(crate) fn check_rows(what: &'static str, len: usize, rows: usize, row: usize) -> Result<()> {
    if len < rows * row || len % row != 0 {
        return Err(AttnError::LengthMismatch {
            what,
            detail: format!("{len} elements: not whole rows of {row}, or fewer than the step's {rows} tokens need"),
        });
    }
    Ok(())
}


/// The kernel table's KV element for a cache dtype.
pub const fn kv_type(kv: KvCacheDType) -> crate::registry::KvType {
    match kv {
        KvCacheDType::Auto => crate::registry::KvType::Native,
        KvCacheDType::Fp8E4m3 => crate::registry::KvType::Fp8E4m3,
    }
}

/// Bytes of a `CUtensorMap`.
pub const TENSOR_MAP_BYTES: usize = crate::params::TENSOR_MAP_BYTES as usize;
const _: () = assert!(std::mem::size_of::<cudarc::driver::sys::CUtensorMap>() == TENSOR_MAP_BYTES);

/// The copy engine's view of `tokens` rows of `row` 16-bit elements at device address
/// `addr` (a paged cache, or an encoder layer's K or V of the step): boxes of 64 columns x
/// `box_rows` rows, 128-byte swizzle. The driver's encoding, as bytes.
pub(crate) fn tensor_map(addr: u64, tokens: usize, row: usize, box_rows: usize, dtype: DType) -> Result<Vec<u8>> {
    tensor_map_2d(addr, MapElem::of(dtype), [row, tokens], row * 2, [64, box_rows], true)
}

/// A tensor map's element: 16-bit (the query's type) or bytes (fp8 latents).
#[derive(Clone, Copy, Debug)]
pub(crate) enum MapElem {
    Bf16,
    F16,
    U8,
}

impl MapElem {
    pub(crate) fn of(dtype: DType) -> MapElem {
        if dtype == DType::Bf16 { MapElem::Bf16 } else { MapElem::F16 }
    }
}

/// The copy engine's view of a 2-D array at `addr`: `dims` (columns, rows) of `elem`,
/// `row_bytes` apart (a multiple of 16), copied in boxes of `boxes` (columns, rows), with
/// the 128-byte swizzle or none. The driver's encoding, as bytes.
pub(crate) fn tensor_map_2d(addr: u64, elem: MapElem, dims: [usize; 2], row_bytes: usize, boxes: [usize; 2], swizzle_128b: bool) -> Result<Vec<u8>> {
    use cudarc::driver::sys::*;
    let data_type = match elem {
        MapElem::Bf16 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        MapElem::F16 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        MapElem::U8 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
    };
    let swizzle = if swizzle_128b { CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B } else { CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE };
    let dims = [dims[0] as u64, dims[1] as u64];
    let strides = [row_bytes as u64];
    let boxes = [boxes[0] as u32, boxes[1] as u32];
    let element_strides = [1u32, 1];
    let mut map = std::mem::MaybeUninit::<CUtensorMap>::zeroed();
    // SAFETY: the arrays hold the rank's entries; the address is device memory (16-byte
    // aligned: a cudarc allocation) whose extent the dims and strides describe.
    let r = unsafe {
        cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            data_type,
            2,
            addr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            swizzle,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    r.result()?;
    // SAFETY: encoded above (and zeroed before); plain bytes.
    let map = unsafe { map.assume_init() };
    Ok(unsafe { std::slice::from_raw_parts(&map as *const CUtensorMap as *const u8, TENSOR_MAP_BYTES) }.to_vec())
}
