//! The library's one error type. Every variant names what was wrong and the value, so that a
//! caller can fix its input; every check runs before any launch and before anything is written.

use crate::dtype::DType;

/// The library's result: `AttnError` unless said otherwise.
pub type Result<T, E = AttnError> = std::result::Result<T, E>;

/// What went wrong, with the values that were wrong (see the module docs).
#[derive(Debug, thiserror::Error)]
pub enum AttnError {
    /// A block table names a block the cache does not have.
    #[error("request {request}: block id {block_id} (logical block {logical}) is outside the cache of {num_blocks} blocks")]
    BlockOutOfRange {
        /// The request (its index in the step).
        request: usize,
        /// The block's place in the request's block table.
        logical: usize,
        /// The physical block id given.
        block_id: i64,
        /// Blocks the cache has.
        num_blocks: usize,
    },

    /// A request's block table is too short for its tokens.
    #[error("request {request}: {tokens} tokens need {needed} blocks of {block_size}, but only {given} block ids were given")]
    TooFewBlocks {
        /// The request (its index in the step).
        request: usize,
        /// Its tokens, this step's included.
        tokens: usize,
        /// Blocks those tokens need.
        needed: usize,
        /// Block ids given.
        given: usize,
        /// Tokens per block.
        block_size: usize,
    },

    /// A slot mapping names a slot past the cache's capacity.
    #[error("token {token}: slot {slot} is past the cache capacity of {capacity} slots")]
    SlotOutOfRange {
        /// The query token (a step-wide index).
        token: usize,
        /// The slot given.
        slot: i64,
        /// Slots the cache has (`num_blocks x block_size`).
        capacity: usize,
    },

    /// A tensor or map of the wrong length.
    #[error("{what}: {detail}")]
    LengthMismatch {
        /// Which tensor or map.
        what: &'static str,
        /// Its length, and the one expected.
        detail: String,
    },

    /// A request of a step is inconsistent (no new tokens, fewer keys than new tokens, ...).
    #[error("request {request}: {detail}")]
    InvalidRequest {
        /// The request (its index in the step).
        request: usize,
        /// What is wrong with it.
        detail: String,
    },

    /// No kernel of the backend serves the head dim.
    #[error("head dim {head_dim} is not supported by {backend} (supported: {supported:?})")]
    UnsupportedHeadDim {
        /// The head dim asked for.
        head_dim: usize,
        /// The backend's name.
        backend: &'static str,
        /// The head dims it serves.
        supported: &'static [usize],
    },

    /// No kernel of the backend serves the dtype.
    #[error("dtype {dtype} is not supported by {backend} (supported: {supported})")]
    UnsupportedDType {
        /// The dtype asked for.
        dtype: DType,
        /// The backend's name.
        backend: &'static str,
        /// The dtypes it serves.
        supported: &'static str,
    },

    /// The backend cannot serve the layer (MLA on a multi-head backend, a feature it lacks).
    #[error("{backend} cannot serve this model: {reason}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// Why not.
        reason: String,
    },

    /// `ATTN_BACKEND` (or a caller) named no backend there is.
    #[error("unknown backend `{name}`; valid choices: {valid}")]
    UnknownBackend {
        /// The name given.
        name: String,
        /// The names there are.
        valid: String,
    },

    /// The backend `ATTN_BACKEND` forces cannot serve the model on this platform.
    #[error("ATTN_BACKEND={name} cannot serve this model on {platform}: {reasons}. Backends that can: {valid}")]
    ForcedBackendUnusable {
        /// The backend forced.
        name: String,
        /// The platform.
        platform: String,
        /// Why it cannot.
        reasons: String,
        /// The backends that could.
        valid: String,
    },

    /// No backend serves the model on this platform.
    #[error("no backend can serve this model on {platform}: {reasons}")]
    NoBackend {
        /// The platform.
        platform: String,
        /// What was asked, and each backend's reasons.
        reasons: String,
    },

    /// A spec, layout, limit or option that no backend could run.
    #[error("invalid attention configuration: {0}")]
    InvalidConfig(String),

    /// A model's `config.json` that cannot be read as a model.
    #[error("model config {path}: {detail}")]
    ModelConfig {
        /// The file.
        path: String,
        /// What in it is wrong (the field and its value).
        detail: String,
    },

    /// No built-in preset has the name.
    #[error("unknown model preset `{name}`; presets: {valid}")]
    UnknownPreset {
        /// The name given.
        name: String,
        /// The presets there are.
        valid: String,
    },

    /// Tensors or caches whose shapes do not fit together.
    #[error("{0}")]
    Shape(String),

    /// A context-parallel group, shard or exchange that cannot work (ranks, interleave, a
    /// layer DCP does not shard, ranks that disagree).
    #[error("context parallelism: {0}")]
    InvalidShard(String),

    /// NCCL is not loadable, or one of its calls failed.
    #[error("NCCL: {0}")]
    Nccl(String),

    /// A step beyond the step limits the buffers were sized for.
    #[error("step too large: {0}")]
    StepTooLarge(String),

    /// No CUDA driver or device is usable (or the backend needs one and got none).
    #[error("no CUDA device is usable: {0}")]
    NoCuda(String),

    /// The CUDA driver refused a call.
    #[error("CUDA driver error: {0}")]
    Driver(#[from] cudarc::driver::DriverError),

    /// No PTX module of this build runs on the device.
    #[error("no embedded PTX module serves compute capability {major}.{minor} (built for: {built})")]
    NoPtxForDevice {
        /// The device's compute capability, major.
        major: i32,
        /// Minor.
        minor: i32,
        /// The architectures the build holds.
        built: String,
    },

    /// A file could not be read.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}
