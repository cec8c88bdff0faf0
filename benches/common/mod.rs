//! What the benchmarks share: a CUDA-event timer (flushing L2 before every repetition for
//! the memory-bound ones), the device's copy bandwidth (the ceiling), multi-GiB random
//! caches, and the workload-id filter of the command line.
#![allow(dead_code)] // each bench uses its own subset

use attn_backends::cuda::CudaRuntime;
use attn_backends::workload::Rng;
use attn_backends::{HostKvCache, KvCacheLayout};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Repetitions timed (the median is reported).
pub const REPS: usize = 30;

pub struct Timer {
    stream: Arc<CudaStream>,
    flush: CudaSlice<u8>,
}

impl Timer {
    /// A timer on the runtime's stream, with a 256 MiB buffer to flush L2.
    pub fn new(rt: &Arc<CudaRuntime>) -> Timer {
        Timer { stream: rt.stream().clone(), flush: rt.stream().alloc_zeros::<u8>(256 << 20).expect("alloc") }
    }

    /// Median and (min, max) in ms of `f` over REPS runs, L2 flushed before each.
    pub fn time(&mut self, f: impl FnMut() -> attn_backends::Result<()>) -> (f64, f64, f64) {
        self.time_with(true, f)
    }

    /// [`Timer::time`], flushing L2 before each run only if `flush` (compute-bound work
    /// is timed warm).
    pub fn time_with(&mut self, flush: bool, mut f: impl FnMut() -> attn_backends::Result<()>) -> (f64, f64, f64) {
        let ctx = self.stream.context().clone();
        let warm_until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < warm_until {
            f().expect("warm-up launch");
            self.stream.synchronize().expect("sync");
        }
        let mut ms = Vec::with_capacity(REPS);
        for _ in 0..REPS {
            if flush {
                self.stream.memset_zeros(&mut self.flush).expect("L2 flush");
            }
            let a = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).expect("event");
            let b = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).expect("event");
            a.record(&self.stream).expect("record");
            f().expect("launch");
            b.record(&self.stream).expect("record");
            b.synchronize().expect("sync");
            ms.push(a.elapsed_ms(&b).expect("elapsed") as f64);
        }
        ms.sort_by(|x, y| x.partial_cmp(y).unwrap());
        (ms[REPS / 2], ms[0], ms[REPS - 1])
    }
}

/// Device-to-device copy bandwidth (read + write) of a 1 GiB buffer, GB/s.
pub fn copy_bandwidth(rt: &Arc<CudaRuntime>, timer: &mut Timer) -> f64 {
    let n = 1usize << 30;
    let src = rt.stream().alloc_zeros::<u8>(n).expect("alloc");
    let mut dst = rt.stream().alloc_zeros::<u8>(n).expect("alloc");
    let stream = rt.stream().clone();
    let (ms, _, _) = timer.time(|| Ok(stream.memcpy_dtod(&src, &mut dst)?));
    2.0 * n as f64 / (ms * 1e-3) / 1e9
}

/// A cache filled with random bf16 (a random 16 MiB pattern repeated: random, never zeros,
/// and quick to make for multi-GiB caches).
pub fn random_cache(layout: KvCacheLayout, rng: &mut Rng) -> HostKvCache<bf16> {
    let pattern: Vec<bf16> = (0..(8 << 20) + 13).map(|_| bf16::from_f32(rng.uniform())).collect();
    let fill = |off: usize| (0..layout.elements()).map(|i| pattern[(i + off) % pattern.len()]).collect::<Vec<_>>();
    HostKvCache { layout, key: fill(0), value: fill(12345) }
}


/// An fp8 cache of random e4m3 bytes (a random 16 MiB pattern repeated; never NaN, so the
/// values are finite and bounded by 448 x scale).
pub fn random_fp8_cache(layout: KvCacheLayout, rng: &mut Rng) -> HostKvCache<u8> {
    // Any byte but the two NaNs (0x7F, 0xFF).
    let pattern: Vec<u8> = (0..(16 << 20) + 13).map(|_| (rng.below(254) as u8).wrapping_add(0x80) % 0xFF).map(|b| if b == 0x7F { 0x7E } else { b }).collect();
    let fill = |off: usize| (0..layout.elements()).map(|i| pattern[(i + off) % pattern.len()]).collect::<Vec<_>>();
    HostKvCache { layout, key: fill(0), value: fill(12345) }
}

/// An fp8 latent cache (FlashMLA's 656-byte rows) of random values: e4m3 bytes but the NaNs,
/// tile scales near 1/448, random bf16 rotary dims (never zeros).
pub fn random_latent_fp8_cache(layout: KvCacheLayout, rng: &mut Rng) -> HostKvCache<u8> {
    let mut c = HostKvCache::zeros_latent_fp8(layout);
    let pattern: Vec<u8> = (0..(16 << 20) + 13).map(|_| (rng.below(254) as u8).wrapping_add(0x80) % 0xFF).map(|b| if b == 0x7F { 0x7E } else { b }).collect();
    let rope: Vec<u16> = (0..4093).map(|_| half::bf16::from_f32(rng.below(2001) as f32 / 1000.0 - 1.0 + 1e-3).to_bits()).collect();
    for (i, row) in c.key.chunks_exact_mut(attn_backends::fp8::LATENT_ROW_BYTES).enumerate() {
        for (j, b) in row[..512].iter_mut().enumerate() {
            *b = pattern[(i * 512 + j) % pattern.len()];
        }
        for t in 0..4 {
            row[512 + 4 * t..516 + 4 * t].copy_from_slice(&((1.0 + (i % 7 + t) as f32 / 16.0) / 448.0).to_le_bytes());
        }
        for d in 0..64 {
            row[528 + 2 * d..530 + 2 * d].copy_from_slice(&rope[(i * 64 + d) % rope.len()].to_le_bytes());
        }
    }
    c
}

/// The KV-cache dtype of `--kv-dtype auto|bf16|fp8|fp8_e4m3` (or `--kv-dtype=...`): the
/// model's 16-bit type (the default) or fp8 e4m3; an unknown name exits with a usage error.
pub fn kv_dtype_arg() -> attn_backends::KvCacheDType {
    let args: Vec<String> = std::env::args().collect();
    let value = args.iter().position(|a| a == "--kv-dtype").and_then(|i| args.get(i + 1).cloned()).or_else(|| args.iter().find_map(|a| a.strip_prefix("--kv-dtype=").map(str::to_string)));
    match value.as_deref() {
        None | Some("bf16") | Some("f16") => attn_backends::KvCacheDType::Auto,
        Some(v) => attn_backends::KvCacheDType::parse(v).unwrap_or_else(|| {
            eprintln!("--kv-dtype {v}: not one of auto, bf16, fp8, fp8_e4m3");
            std::process::exit(2);
        }),
    }
}

/// The JSON name of a cache dtype for a layer computing in bf16: "fp8" or "bf16".
pub fn kv_dtype_name(kv: attn_backends::KvCacheDType) -> &'static str {
    match kv {
        attn_backends::KvCacheDType::Auto => "bf16",
        attn_backends::KvCacheDType::Fp8E4m3 => "fp8",
    }
}

/// Workload ids given on the command line (`M2`, `P1`; options start with `-`): only those
/// run (profiling). An id no workload has is an error naming the known ones.
pub fn only_ids(known: &[&str]) -> Vec<String> {
    // Option values (`--kv-dtype fp8`, `--block-size 32`) are not workload ids.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only: Vec<String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with('-') && !(*i > 0 && matches!(args[i - 1].as_str(), "--kv-dtype" | "--block-size" | "--interleave")))
        .map(|(_, a)| a.clone())
        .collect();
    if let Some(bad) = only.iter().find(|o| !known.contains(&o.as_str())) {
        eprintln!("unknown workload `{bad}` (known: {}; options are `--name` or `--name=value`)", known.join(", "));
        std::process::exit(2);
    }
    only
}
