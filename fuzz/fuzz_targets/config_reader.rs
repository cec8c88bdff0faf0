//! Any bytes as a config.json: an error or a model, never a panic; a model read is then
//! summarised, turned into layer specs (validated) and given to the selector on every
//! platform.
#![no_main]
use attn_host::backend::Platform;
use attn_host::model::ModelConfig;
use attn_host::selector::{self, Requirements};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = ModelConfig::from_json_str("fuzz", text) else { return };
    let _ = cfg.summary();
    for layer in 0..3 {
        let _ = cfg.attn_spec_for_layer(layer).validate();
    }
    for platform in [Platform::Cpu, Platform::Cuda { major: 8, minor: 0 }, Platform::Cuda { major: 9, minor: 0 }] {
        for block_size in [1, 16, 3] {
            let _ = selector::select(platform, &Requirements::for_model(&cfg, block_size), None);
        }
    }
});
