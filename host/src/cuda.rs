//! CUDA runtime: the driver (loaded dynamically through cudarc, so nothing CUDA is needed to
//! build or to run the CPU paths), the device's properties, and the kernel module built for
//! it, loaded once per context.
//!
//! All work goes to one stream of the runtime, created for it (not the legacy default
//! stream, which cannot be captured into a CUDA graph). cudarc's per-buffer event tracking
//! is turned off for the context: with one stream it orders nothing, and its event waits
//! would break a capture.

use crate::platform::{ArchFeatures, Platform};
use crate::registry::KernelId;
use crate::error::{AttnError, Result};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One embedded PTX module: (compute capability, architecture name, PTX text).
pub type PtxModule = (u32, &'static str, &'static str);

// SAFETY: plain #[repr(C)] structs of integers and floats, passed by value to the kernels
// whose parameter has the same definition (params.rs is compiled by both crates).
unsafe impl DeviceRepr for crate::params::CacheWriteParams {}
unsafe impl DeviceRepr for crate::params::PagedAttnParams {}
unsafe impl DeviceRepr for crate::params::MergeParams {}
unsafe impl DeviceRepr for crate::params::MergeRanksParams {}
unsafe impl DeviceRepr for crate::params::PrefillParams {}
unsafe impl DeviceRepr for crate::params::MlaParams {}
unsafe impl DeviceRepr for crate::params::MlaCacheWriteParams {}

/// Whether a CUDA driver library can be loaded here (false on CI machines). Checked before
/// anything touches cudarc, which panics when the library is missing.
pub fn driver_present() -> bool {
    crate::culib::driver_present()
}

/// Device `ordinal` as a selector platform, and its name, without loading a kernel module
/// (the selector's question needs no kernel); an error where no driver or device is usable.
pub fn probe_device(ordinal: usize) -> Result<(Platform, String)> {
    if !driver_present() {
        return Err(AttnError::NoCuda("no CUDA driver library (libcuda.so) on this machine".into()));
    }
    let count = CudaContext::device_count()?;
    if ordinal as i32 >= count {
        return Err(AttnError::NoCuda(format!("device {ordinal} requested, {count} present")));
    }
    let ctx = CudaContext::new(ordinal)?;
    let (major, minor) = ctx.compute_capability()?;
    Ok((Platform::Cuda { major: major as u32, minor: minor as u32 }, ctx.name()?))
}

/// Picks the module built for the newest architecture not above the device's.
///
/// Example: modules for sm_80 and sm_90; an sm_89 device gets sm_80, an sm_90 device sm_90,
/// an sm_75 device none (an error naming what was built).
pub fn pick_module(modules: &[PtxModule], major: i32, minor: i32) -> Result<PtxModule> {
    let cc = (major * 10 + minor) as u32;
    modules
        .iter()
        .filter(|m| m.0 <= cc && !m.1.ends_with('a') || m.0 == cc)
        .max_by_key(|m| (m.0, m.1.ends_with('a')))
        .copied()
        .ok_or_else(|| AttnError::NoPtxForDevice {
            major,
            minor,
            built: modules.iter().map(|m| m.1).collect::<Vec<_>>().join(", "),
        })
}

/// Names a folder whose `attn_kernels_<arch>.ptx` replaces the embedded module (kernel
/// development only: the PTX must come from the same sources' kernel names and parameters).
pub const PTX_DIR_VAR: &str = "ATTN_PTX_DIR";

/// A CUDA device with its stream and kernel module.
pub struct CudaRuntime {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    arch: &'static str,
    name: String,
    cc: (i32, i32),
    features: ArchFeatures,
    num_sms: u32,
    functions: Mutex<HashMap<KernelId, CudaFunction>>,
}

impl CudaRuntime {
    /// Opens device `ordinal` and loads the module for its architecture from `modules`.
    pub fn new(ordinal: usize, modules: &[PtxModule]) -> Result<Arc<Self>> {
        if !driver_present() {
            return Err(AttnError::NoCuda("the CUDA driver library (libcuda.so) was not found".into()));
        }
        let count = CudaContext::device_count()?;
        if ordinal as i32 >= count {
            return Err(AttnError::NoCuda(format!("device {ordinal} requested, {count} present")));
        }
        let ctx = CudaContext::new(ordinal)?;
        // SAFETY: before any buffer exists; every buffer of this context is then used on the
        // runtime's one stream, which orders all work on it.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        Self::with_stream(ctx, stream, modules)
    }

    /// A runtime on a stream someone else made (a framework's: candle's device stream), so
    /// that its launches are ordered with the framework's own work on that stream. The
    /// context's event tracking is left as its owner set it.
    pub fn on_stream(stream: Arc<CudaStream>, modules: &[PtxModule]) -> Result<Arc<Self>> {
        Self::with_stream(stream.context().clone(), stream, modules)
    }

    fn with_stream(ctx: Arc<CudaContext>, stream: Arc<CudaStream>, modules: &[PtxModule]) -> Result<Arc<Self>> {
        let cc = ctx.compute_capability()?;
        let (_, arch, ptx) = pick_module(modules, cc.0, cc.1)?;
        let module = match std::env::var_os(PTX_DIR_VAR) {
            None => ctx.load_module(Ptx::from_src(ptx))?,
            Some(dir) => {
                // Kernel development: a PTX module from disk in place of the embedded one, so
                // that variants of a kernel (same names and parameters) can be timed with the
                // same binaries.
                let path = std::path::Path::new(&dir).join(format!("attn_kernels_{arch}.ptx"));
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| AttnError::NoCuda(format!("{PTX_DIR_VAR}: cannot read {}: {e}", path.display())))?;
                tracing::warn!(path = %path.display(), "{PTX_DIR_VAR} set: loading this PTX instead of the embedded module");
                ctx.load_module(Ptx::from_src(text))?
            }
        };
        let num_sms = ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let name = ctx.name()?;
        tracing::info!(device = %name, arch, sms = num_sms, "CUDA runtime ready");
        Ok(Arc::new(CudaRuntime {
            stream,
            ctx,
            module,
            arch,
            name,
            cc,
            features: ArchFeatures::of_module(cc.0 as u32 * 10 + cc.1 as u32, arch),
            num_sms,
            functions: Mutex::new(HashMap::new()),
        }))
    }

    /// The device's CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The one stream every launch and copy of this runtime goes on (capture graphs on it).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// The device's name (`NVIDIA H200`).
    pub fn device_name(&self) -> &str {
        &self.name
    }
    /// Architecture of the loaded module, e.g. "sm_90".
    pub fn arch(&self) -> &'static str {
        self.arch
    }
    /// Streaming multiprocessors on the device.
    pub fn num_sms(&self) -> u32 {
        self.num_sms
    }
    /// What this device runs with its loaded module (derived once, at start-up).
    pub fn features(&self) -> ArchFeatures {
        self.features
    }
    /// The device as a selector platform (its compute capability).
    pub fn platform(&self) -> Platform {
        Platform::Cuda { major: self.cc.0 as u32, minor: self.cc.1 as u32 }
    }

    /// A kernel of the loaded module, looked up once; an error naming it if the kernel
    /// table has no such kernel or this device's module does not hold it.
    pub fn function(&self, id: KernelId) -> Result<CudaFunction> {
        let mut f = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(func) = f.get(&id) {
            return Ok(func.clone());
        }
        match crate::registry::find(&id) {
            None => return Err(AttnError::InvalidConfig(format!("no kernel {id} in the kernel table"))),
            Some(k) if !self.features.runs(&k) => {
                return Err(AttnError::NoCuda(format!("kernel {id} needs {:?} ({:?} module); {} with the {} module offers {:?}", k.needs, k.module, self.name, self.arch, self.features.features)));
            }
            Some(_) => {}
        }
        let func = self.module.load_function(&id.name())?;
        f.insert(id, func.clone());
        Ok(func)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const MODS: &[PtxModule] = &[(80, "sm_80", ""), (90, "sm_90", ""), (90, "sm_90a", "")];

    #[test]
    fn newest_module_not_above_the_device() {
        assert_eq!(pick_module(MODS, 8, 9).unwrap().1, "sm_80");
        assert_eq!(pick_module(MODS, 9, 0).unwrap().1, "sm_90a");
        assert_eq!(pick_module(&MODS[..2], 9, 0).unwrap().1, "sm_90");
        assert_eq!(pick_module(&MODS[..2], 10, 0).unwrap().1, "sm_90");
        let e = pick_module(MODS, 7, 5).unwrap_err();
        assert!(e.to_string().contains("7.5") && e.to_string().contains("sm_80, sm_90"), "{e}");
    }
}
