//! The layer on candle's CUDA device: this library's kernels on candle's context and stream,
//! reading candle's tensors in place through a candle custom op.

use crate::candle_error;
use attn_backends::cuda::CudaRuntime;
use attn_backends::cudarc::driver::result::memset_d8_async;
use attn_backends::cudarc::driver::{CudaSlice, DevicePtrMut, DeviceRepr, DriverError};
use attn_backends::layer::Attention;
use attn_backends::{Element, Step};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDType, CudaStorage, DeviceId};
use candle_core::{CpuStorage, CudaDevice, CustomOp3, Error, Layout, Result, Shape, Tensor};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The runtime of a candle CUDA device: made once (loading the kernel module is the slow
/// part), on the device's stream, and shared by every layer on that device.
pub(crate) fn runtime(cd: &CudaDevice) -> Result<Arc<CudaRuntime>> {
    static RUNTIMES: OnceLock<Mutex<HashMap<DeviceId, Arc<CudaRuntime>>>> = OnceLock::new();
    let mut map = RUNTIMES.get_or_init(Default::default).lock().map_err(|_| Error::Msg("attn-candle: a thread panicked while making a CUDA runtime".into()))?;
    if let Some(rt) = map.get(&cd.id()) {
        return Ok(rt.clone());
    }
    let rt = attn_backends::cuda_runtime_on_stream(cd.cuda_stream()).map_err(candle_error)?;
    map.insert(cd.id(), rt.clone());
    Ok(rt)
}

/// A tensor whose storage starts at its first element, contiguous (the kernels take a buffer,
/// not a view): itself, or a copy into a new buffer (`contiguous` alone keeps a view's offset).
fn whole(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() && t.layout().start_offset() == 0 { Ok(t.clone()) } else { t.force_contiguous() }
}

/// One layer of a prepared step on candle CUDA tensors (checked by the caller: dtype, device,
/// tokens x row elements). Returns `out` of `shape`, a new candle tensor.
pub(crate) fn forward<T: Element + CudaDType + DeviceRepr>(layer: &mut Attention<T>, step: &Step, q: &Tensor, k: &Tensor, v: &Tensor, shape: (usize, usize, usize)) -> Result<Tensor> {
    let (q, k, v) = (whole(q)?, whole(k)?, whole(v)?);
    let op = Op { layer: RefCell::new(layer), step, shape };
    q.apply_op3_no_bwd(&k, &v, &op)
}

/// The custom op: candle hands it the three storages; it launches on candle's stream.
struct Op<'a, T: Element> {
    layer: RefCell<&'a mut Attention<T>>,
    step: &'a Step,
    shape: (usize, usize, usize),
}

fn slice<'s, T: CudaDType>(s: &'s CudaStorage, l: &Layout, name: &str) -> Result<&'s CudaSlice<T>> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        return Err(Error::Msg(format!("attn-candle: {name} reached the kernels as a view (offset {}, strides {:?})", l.start_offset(), l.stride())));
    }
    s.as_cuda_slice::<T>()
}

impl<T: Element + CudaDType + DeviceRepr> CustomOp3 for Op<'_, T> {
    fn name(&self) -> &'static str {
        "attn-candle paged attention"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(Error::Msg("attn-candle: the CUDA op was handed CPU tensors".into()))
    }

    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout, s3: &CudaStorage, l3: &Layout) -> Result<(CudaStorage, Shape)> {
        let (q, k, v) = (slice::<T>(s1, l1, "q")?, slice::<T>(s2, l2, "k")?, slice::<T>(s3, l3, "v")?);
        let dev = s1.device().clone();
        let (n, h, d) = self.shape;
        let stream = dev.cuda_stream();
        let cuda_err = |e: DriverError| Error::Cuda(Box::new(e));
        // SAFETY: filled at once below, on the stream it is allocated on.
        let mut out = unsafe { stream.alloc::<T>(n * h * d) }.map_err(cuda_err)?;
        {
            // Poisoned (all bits set: NaN in f32, f16 and bf16) before the kernels write every
            // row, so that a row left unwritten shows as NaN rather than as stale memory.
            let (ptr, _sync) = out.device_ptr_mut(&stream);
            // SAFETY: `ptr` is the live allocation of n*h*d elements, on its own stream.
            unsafe { memset_d8_async(ptr, 0xFF, n * h * d * std::mem::size_of::<T>(), stream.cu_stream()) }.map_err(cuda_err)?;
        }
        self.layer.borrow_mut().forward_device(self.step, q, k, v, &mut out).map_err(candle_error)?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((n, h, d))))
    }
}
