//! A layer's paged KV cache in device memory, whatever it stores: the model's 16-bit values
//! or fp8 e4m3 bytes with their per-kv-head scales (a copy on the host, one on the device for
//! the kernels). The CUDA backends' impls own one; tests, benches and the demo fill and read
//! it through the host caches (`HostKvCache<T>` values, quantized or dequantized on the way
//! for fp8; `HostKvCache<u8>` for the bytes as stored).

use crate::cuda::CudaRuntime;
use crate::dtype::{Element, KvCacheDType};
use crate::error::{AttnError, Result};
use crate::fp8::KvScales;
use crate::kv_cache::{HostKvCache, KvCacheLayout};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

/// Host elements as their bytes.
pub(crate) fn as_bytes<T: Copy>(x: &[T]) -> &[u8] {
    // SAFETY: the element types here (f16, bf16, u8) are plain data without padding.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, std::mem::size_of_val(x)) }
}
pub(crate) fn as_bytes_mut<T: Copy>(x: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; every byte pattern is a valid f16, bf16 or u8.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut u8, std::mem::size_of_val(x)) }
}

/// The K and V caches of one layer on the device, as bytes, and (fp8) their scales.
pub struct DeviceKvCache {
    pub(crate) layout: KvCacheLayout,
    pub(crate) key: CudaSlice<u8>,
    pub(crate) value: CudaSlice<u8>,
    /// The host copy of the scales (ones for a 16-bit cache, where the kernels ignore them).
    pub(crate) scales: KvScales,
    pub(crate) k_scale: CudaSlice<f32>,
    pub(crate) v_scale: CudaSlice<f32>,
    /// Bytes of one stored element.
    elem_bytes: usize,
}

impl DeviceKvCache {
    /// A zeroed cache of `layout` for a layer computing in `T`.
    pub fn new<T: Element>(rt: &CudaRuntime, layout: KvCacheLayout) -> Result<Self> {
        let elem_bytes = layout.kv_dtype.element_bytes(T::DTYPE);
        let bytes = layout.elements().checked_mul(elem_bytes).ok_or_else(|| AttnError::InvalidConfig(format!("cache {layout:?} is too large")))?;
        let stream = rt.stream();
        let scales = KvScales::ones(layout.num_kv_heads);
        Ok(DeviceKvCache {
            key: stream.alloc_zeros(bytes)?,
            value: stream.alloc_zeros(bytes)?,
            k_scale: stream.clone_htod(&scales.k)?,
            v_scale: stream.clone_htod(&scales.v)?,
            scales,
            layout,
            elem_bytes,
        })
    }

    /// Whether the cache holds fp8 bytes (and scales) rather than 16-bit values.
    pub fn is_fp8(&self) -> bool {
        self.layout.kv_dtype == KvCacheDType::Fp8E4m3
    }

    /// The device addresses of the K and V caches.
    pub(crate) fn ptrs(&self, stream: &CudaStream) -> (u64, u64) {
        (self.key.device_ptr(stream).0, self.value.device_ptr(stream).0)
    }

    /// The K and V scales' device addresses for the kernels' params: 0 for a 16-bit cache.
    pub(crate) fn scale_ptrs(&self, stream: &CudaStream) -> (u64, u64) {
        if self.is_fp8() { (self.k_scale.device_ptr(stream).0, self.v_scale.device_ptr(stream).0) } else { (0, 0) }
    }

    fn check_geometry(&self, layout: &KvCacheLayout) -> Result<()> {
        if !self.layout.same_geometry(layout) {
            return Err(AttnError::InvalidConfig(format!("cache layout {layout:?} differs from the layer's {:?}", self.layout)));
        }
        Ok(())
    }

    /// Replaces the scales (fp8 caches only), after `KvScales::validate`.
    pub fn set_scales(&mut self, rt: &CudaRuntime, scales: &KvScales) -> Result<()> {
        if !self.is_fp8() {
            return Err(AttnError::InvalidConfig("KV scales are for an fp8 KV cache; this layer's cache is 16-bit".into()));
        }
        scales.validate(self.layout.num_kv_heads)?;
        let stream = rt.stream();
        stream.memcpy_htod(&scales.k, &mut self.k_scale)?;
        stream.memcpy_htod(&scales.v, &mut self.v_scale)?;
        self.scales = scales.clone();
        Ok(())
    }

    /// Replaces the whole cache with host values of the same geometry (fp8: quantized with
    /// the current scales).
    pub fn load<T: Element>(&mut self, rt: &CudaRuntime, cache: &HostKvCache<T>) -> Result<()> {
        self.check_geometry(&cache.layout)?;
        cache.check_lengths()?;
        let stream = rt.stream();
        if self.is_fp8() {
            let q = HostKvCache::<u8>::quantize_from(cache, &self.scales)?;
            stream.memcpy_htod(&q.key, &mut self.key)?;
            stream.memcpy_htod(&q.value, &mut self.value)?;
            stream.synchronize()?;
        } else {
            if std::mem::size_of::<T>() != self.elem_bytes {
                return Err(AttnError::InvalidConfig(format!("a cache of {} loaded into a cache of {}-byte elements", T::DTYPE, self.elem_bytes)));
            }
            stream.memcpy_htod(as_bytes(&cache.key), &mut self.key)?;
            stream.memcpy_htod(as_bytes(&cache.value), &mut self.value)?;
        }
        Ok(())
    }

    /// A host copy of the values (fp8: dequantized, byte x scale, rounded to `T`).
    pub fn snapshot<T: Element>(&self, rt: &CudaRuntime) -> Result<HostKvCache<T>> {
        if self.is_fp8() {
            let (bytes, scales) = self.snapshot_fp8(rt)?;
            return Ok(bytes.dequantize::<T>(&scales));
        }
        let stream = rt.stream();
        let mut c = HostKvCache::<T>::zeros(self.layout);
        stream.memcpy_dtoh(&self.key, as_bytes_mut(&mut c.key))?;
        stream.memcpy_dtoh(&self.value, as_bytes_mut(&mut c.value))?;
        stream.synchronize()?;
        Ok(c)
    }

    /// The fp8 bytes as stored, and the scales.
    pub fn snapshot_fp8(&self, rt: &CudaRuntime) -> Result<(HostKvCache<u8>, KvScales)> {
        if !self.is_fp8() {
            return Err(AttnError::InvalidConfig("this layer's cache is 16-bit, not fp8".into()));
        }
        let stream = rt.stream();
        let mut c = HostKvCache::<u8>::zeros_fp8(self.layout);
        stream.memcpy_dtoh(&self.key, &mut c.key)?;
        stream.memcpy_dtoh(&self.value, &mut c.value)?;
        stream.synchronize()?;
        Ok((c, self.scales.clone()))
    }

    /// Replaces the fp8 bytes and the scales.
    pub fn load_fp8(&mut self, rt: &CudaRuntime, cache: &HostKvCache<u8>, scales: &KvScales) -> Result<()> {
        if !self.is_fp8() {
            return Err(AttnError::InvalidConfig("this layer's cache is 16-bit, not fp8".into()));
        }
        self.check_geometry(&cache.layout)?;
        cache.check_lengths()?;
        self.set_scales(rt, scales)?;
        let stream = rt.stream();
        stream.memcpy_htod(&cache.key, &mut self.key)?;
        stream.memcpy_htod(&cache.value, &mut self.value)?;
        Ok(())
    }
}
