//! Element types: what the kernels are instantiated for, and the host-side conversions.

use half::{bf16, f16};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
/// The activation dtypes.
pub enum DType {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// IEEE single precision (the CPU backend only).
    F32,
}

impl DType {
    /// The name the CLI and configs use (`bf16`, `f16`, `f32`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::F32 => "f32",
        }
    }
    /// Bytes of one element.
    pub const fn size_bytes(self) -> usize {
        match self {
            DType::F16 | DType::Bf16 => 2,
            DType::F32 => 4,
        }
    }
    /// Parses the names used on the command line and in Hugging Face configs
    /// (`torch_dtype`: "bfloat16", "float16", "float32").
    pub fn parse(s: &str) -> Option<DType> {
        match s.to_ascii_lowercase().as_str() {
            "f16" | "fp16" | "float16" | "half" => Some(DType::F16),
            "bf16" | "bfloat16" => Some(DType::Bf16),
            "f32" | "fp32" | "float32" | "float" => Some(DType::F32),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Element type of the KV cache (vLLM's `--kv-cache-dtype`). `Auto` = the model's dtype;
/// `Fp8E4m3` = one e4m3 byte per element with per-kv-head scales ([`crate::fp8`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvCacheDType {
    /// The model's dtype (the cache holds the values as the layer computes them).
    Auto,
    /// fp8 e4m3 (`e4m3fn`): `byte = e4m3(x / scale)`, read as `byte * scale`.
    Fp8E4m3,
}

impl KvCacheDType {
    /// Parses vLLM's names, case-insensitive: "auto"; "fp8" or "fp8_e4m3" (vLLM's `fp8`
    /// is e4m3 on CUDA). `None` for anything else (e5m2 is not served).
    pub fn parse(s: &str) -> Option<KvCacheDType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(KvCacheDType::Auto),
            "fp8" | "fp8_e4m3" => Some(KvCacheDType::Fp8E4m3),
            _ => None,
        }
    }

    /// The canonical name: "auto" or "fp8_e4m3" ([`KvCacheDType::parse`] accepts it).
    pub const fn name(self) -> &'static str {
        match self {
            KvCacheDType::Auto => "auto",
            KvCacheDType::Fp8E4m3 => "fp8_e4m3",
        }
    }

    /// Bytes of one cache element for a model of `dtype`: the dtype's size for `Auto`, 1 for fp8.
    pub const fn element_bytes(self, dtype: DType) -> usize {
        match self {
            KvCacheDType::Auto => dtype.size_bytes(),
            KvCacheDType::Fp8E4m3 => 1,
        }
    }
}

impl fmt::Display for KvCacheDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A host element type the backends compute on (in f32; the oracle in f64).
pub trait Element: Copy + Send + Sync + Default + fmt::Debug + cudarc::driver::DeviceRepr + 'static {
    /// The dtype this element type is.
    const DTYPE: DType;
    /// The kernels' name for this type (`paged_attention_<tag>_d128`); `None` if no GPU
    /// kernel is instantiated for it.
    const KERNEL_TAG: Option<&'static str>;
    /// The value as f32 (exact).
    fn to_f32(self) -> f32;
    /// The nearest value of this type (round to nearest even).
    fn from_f32(x: f32) -> Self;
    /// The value as f64 (exact).
    fn to_f64(self) -> f64 {
        self.to_f32() as f64
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    const KERNEL_TAG: Option<&'static str> = None;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    const KERNEL_TAG: Option<&'static str> = Some("f16");
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::Bf16;
    const KERNEL_TAG: Option<&'static str> = Some("bf16");
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_cache_dtype_names() {
        for (s, want) in [("auto", KvCacheDType::Auto), ("AUTO", KvCacheDType::Auto), ("fp8", KvCacheDType::Fp8E4m3), ("FP8_E4M3", KvCacheDType::Fp8E4m3), ("Fp8", KvCacheDType::Fp8E4m3)] {
            assert_eq!(KvCacheDType::parse(s), Some(want), "{s}");
        }
        for s in ["fp8_e5m2", "bf16", "", "fp16"] {
            assert_eq!(KvCacheDType::parse(s), None, "{s}");
        }
        for k in [KvCacheDType::Auto, KvCacheDType::Fp8E4m3] {
            assert_eq!(KvCacheDType::parse(k.name()), Some(k));
            assert_eq!(k.to_string(), k.name());
        }
        assert_eq!((KvCacheDType::Auto.name(), KvCacheDType::Fp8E4m3.name()), ("auto", "fp8_e4m3"));
        assert_eq!(KvCacheDType::Auto.element_bytes(DType::Bf16), 2);
        assert_eq!(KvCacheDType::Auto.element_bytes(DType::F32), 4);
        assert_eq!(KvCacheDType::Fp8E4m3.element_bytes(DType::F32), 1);
        assert_eq!(KvCacheDType::Fp8E4m3.element_bytes(DType::F16), 1);
    }
}
