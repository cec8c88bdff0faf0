//! attn-backends: the attention layer of LLM inference, in Rust. See README.md.
pub use attn_host::*;

/// The PTX modules built from `device-kernels/` by `build.rs`, one per target architecture.
pub mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx_modules.rs"));
}
