//! The library's one error type. Every variant names what was wrong and the value, so that a
//! caller can fix its input; every check runs before any launch and before anything is written.

use crate::dtype::DType;

pub type Result<T, E = AttnError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum AttnError {
    #[error("request {request}: block id {block_id} (logical block {logical}) is outside the cache of {num_blocks} blocks")]
    BlockOutOfRange { request: usize, logical: usize, block_id: i64, num_blocks: usize },

    #[error("request {request}: {tokens} tokens need {needed} blocks of {block_size}, but only {given} block ids were given")]
    TooFewBlocks { request: usize, tokens: usize, needed: usize, given: usize, block_size: usize },

    #[error("token {token}: slot {slot} is past the cache capacity of {capacity} slots")]
    SlotOutOfRange { token: usize, slot: i64, capacity: usize },

    #[error("{what}: {detail}")]
    LengthMismatch { what: &'static str, detail: String },

    #[error("request {request}: {detail}")]
    InvalidRequest { request: usize, detail: String },

    #[error("head dim {head_dim} is not supported by {backend} (supported: {supported:?})")]
    UnsupportedHeadDim { head_dim: usize, backend: &'static str, supported: &'static [usize] },

    #[error("dtype {dtype} is not supported by {backend} (supported: {supported})")]
    UnsupportedDType { dtype: DType, backend: &'static str, supported: &'static str },

    #[error("{backend} cannot serve this model: {reason}")]
    Unsupported { backend: &'static str, reason: String },

    #[error("unknown backend `{name}`; valid choices: {valid}")]
    UnknownBackend { name: String, valid: String },

    #[error("ATTN_BACKEND={name} cannot serve this model on {platform}: {reasons}. Backends that can: {valid}")]
    ForcedBackendUnusable { name: String, platform: String, reasons: String, valid: String },

    #[error("no backend can serve this model on {platform}: {reasons}")]
    NoBackend { platform: String, reasons: String },

    #[error("invalid attention configuration: {0}")]
    InvalidConfig(String),

    #[error("model config {path}: {detail}")]
    ModelConfig { path: String, detail: String },

    #[error("unknown model preset `{name}`; presets: {valid}")]
    UnknownPreset { name: String, valid: String },

    #[error("{0}")]
    Shape(String),

    #[error("step too large: {0}")]
    StepTooLarge(String),

    #[error("no CUDA device is usable: {0}")]
    NoCuda(String),

    #[error("CUDA driver error: {0}")]
    Driver(#[from] cudarc::driver::DriverError),

    #[error("no embedded PTX module serves compute capability {major}.{minor} (built for: {built})")]
    NoPtxForDevice { major: i32, minor: i32, built: String },

    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
}
