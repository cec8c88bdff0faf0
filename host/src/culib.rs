//! Whether a CUDA library (the driver, NCCL) can be loaded, asked before cudarc touches it.
//!
//! cudarc's own probes (`is_culib_present`) exist only when it loads its libraries at run
//! time (`dynamic-loading`). This library builds it that way, through
//! `fallback-dynamic-loading`, so that a crate which links CUDA at build time (candle's `cuda`
//! feature turns on cudarc's `dynamic-linking`) can share one cudarc with it; in that build
//! the libraries are linked and cudarc's probes are gone. This probe serves both: it opens
//! the library by the names cudarc loads it by (with CUDA 12 as the version), and where
//! cudarc linked it, the process already has it and the open succeeds.

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};

/// The file names cudarc's dynamic loader tries for library `name` (`cuda`, `nccl`), for a
/// 64-bit build against CUDA 12: `libNAME.so`, `libNAME.so.12`, `libNAME.so.1`, ... on Linux,
/// `NAME64_12.dll` and the like on Windows.
pub fn candidates(name: &str) -> Vec<String> {
    let (p, s) = (DLL_PREFIX, DLL_SUFFIX);
    let mut v = vec![format!("{p}{name}{s}"), format!("{p}{name}64{s}")];
    for tail in ["_12", "_120", "_12080", "_120_0", "_120_8", "_10", "_11", "_9"] {
        v.push(format!("{p}{name}64{tail}{s}"));
    }
    for major in ["12", "11", "10", "9", "1"] {
        v.push(format!("{p}{name}{s}.{major}"));
    }
    v.dedup();
    v
}

/// Whether any of `names` opens as a shared library here.
pub fn any_loads(names: &[String]) -> bool {
    // SAFETY: opening a shared library runs its initializers. The names are the CUDA
    // libraries cudarc itself would load (or the test's system library); the handle is
    // dropped at once.
    names.iter().any(|n| unsafe { libloading::Library::new(n) }.is_ok())
}

/// Whether the CUDA driver library loads (false on CI machines): `cuda` on Linux, `nvcuda`
/// on Windows.
pub fn driver_present() -> bool {
    ["cuda", "nvcuda"].iter().any(|l| any_loads(&candidates(l)))
}

/// Whether NCCL loads by a name cudarc tries (PyTorch's `libnccl.so.2` is not one of them:
/// `scripts/nccl-lib.sh` links it as `libnccl.so`).
pub fn nccl_present() -> bool {
    any_loads(&candidates("nccl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_cudarcs_pattern() {
        let c = candidates("cuda");
        if cfg!(target_os = "linux") {
            for want in ["libcuda.so", "libcuda.so.1", "libcuda.so.12"] {
                assert!(c.iter().any(|n| n == want), "{want} missing from {c:?}");
            }
            // cudarc does not try PyTorch's libnccl.so.2, so neither does the probe.
            let nccl = candidates("nccl");
            assert!(nccl.iter().any(|n| n == "libnccl.so") && !nccl.iter().any(|n| n == "libnccl.so.2"), "{nccl:?}");
        }
    }

    #[test]
    fn probe_tells_a_present_library_from_a_missing_one() {
        assert!(!any_loads(&candidates("attn-no-such-library")));
        if cfg!(target_os = "linux") {
            // The C library every Linux process has: the probe must find what is there.
            assert!(any_loads(&["libc.so.6".to_string()]));
        }
    }
}
