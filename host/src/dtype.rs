//! Element types: what the kernels are instantiated for, and the host-side conversions.

use half::{bf16, f16};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F16,
    Bf16,
    F32,
}

impl DType {
    pub const fn name(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::F32 => "f32",
        }
    }
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

/// Element type of the KV cache. `Auto` = the model's dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvCacheDType {
    Auto,
    Fp8E4m3,
}

impl fmt::Display for KvCacheDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvCacheDType::Auto => "auto",
            KvCacheDType::Fp8E4m3 => "fp8_e4m3",
        })
    }
}

/// A host element type the backends compute on (in f32; the oracle in f64).
pub trait Element: Copy + Send + Sync + Default + fmt::Debug + cudarc::driver::DeviceRepr + 'static {
    const DTYPE: DType;
    /// The kernels' name for this type (`paged_attention_<tag>_d128`); `None` if no GPU
    /// kernel is instantiated for it.
    const KERNEL_TAG: Option<&'static str>;
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
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
