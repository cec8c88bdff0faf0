//! Where attention runs, and the device properties a plan depends on. Below both the CUDA
//! runtime (which reports them) and the backends (which plan from them).

use std::fmt;

/// Where attention runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    /// The host's cores.
    Cpu,
    /// A CUDA device of this compute capability.
    Cuda {
        /// The compute capability's major version (9 for an H100).
        major: u32,
        /// Its minor version (0 for an H100).
        minor: u32,
    },
}

impl Platform {
    /// Compute capability as a number, e.g. 90 for 9.0; `None` on the CPU.
    pub fn compute_capability(&self) -> Option<u32> {
        match self {
            Platform::Cpu => None,
            Platform::Cuda { major, minor } => Some(major * 10 + minor),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Platform::Cpu => f.write_str("CPU"),
            Platform::Cuda { major, minor } => write!(f, "CUDA sm_{major}{minor}"),
        }
    }
}

use crate::registry::{Features, KernelId, KernelSpec, Module};

/// What a step's plan needs to know of the device: its SM count and how many blocks of
/// the attention kernel fit on one SM at once (from the driver's occupancy calculator).
/// Plans are pure functions of the metadata and these, so they are tested on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceProps {
    /// Streaming multiprocessors.
    pub num_sms: u32,
    /// Blocks of the decode kernel resident on one SM at once.
    pub attention_blocks_per_sm: u32,
    /// Dynamic shared memory one block may opt into (bytes): picks between a kernel's
    /// pipeline depths.
    pub max_shared_memory_per_block: u32,
    /// What the device and its loaded module can run.
    pub arch: ArchFeatures,
}

impl DeviceProps {
    /// An H100 SXM (132 SMs, 227 KiB per block, the sm_90a module) with the paged kernel's
    /// occupancy there (2 blocks per SM).
    pub const H100: DeviceProps = DeviceProps { num_sms: 132, attention_blocks_per_sm: 2, max_shared_memory_per_block: 232_448, arch: ArchFeatures::new(90, true) };
    /// An A100 SXM (108 SMs, 163 KiB per block, the portable kernels only).
    pub const A100: DeviceProps = DeviceProps { num_sms: 108, attention_blocks_per_sm: 2, max_shared_memory_per_block: 166_912, arch: ArchFeatures::new(80, false) };

    /// Blocks of the attention kernel resident on the whole device at once.
    pub fn resident_blocks(&self) -> usize {
        (self.num_sms.max(1) * self.attention_blocks_per_sm.max(1)) as usize
    }
}

/// What a GPU can run, derived once from its compute capability and the PTX module loaded
/// for it: the one value every "is there a wgmma kernel here" question asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchFeatures {
    /// Compute capability, as major x 10 + minor (90 for an H100).
    pub compute_capability: u32,
    /// The loaded module is an sm_90a one (it holds the table's `Module::Sm90a` kernels).
    pub sm90a_module: bool,
    /// The features the device offers through that module.
    pub features: Features,
}

impl ArchFeatures {
    /// From the compute capability and whether the loaded module is sm_90a: `mma.sync` from
    /// 8.0; wgmma, TMA and setmaxnreg on 9.0 with the sm_90a module (an `a` module runs on
    /// its own architecture only).
    pub const fn new(compute_capability: u32, sm90a_module: bool) -> ArchFeatures {
        let hopper = sm90a_module && compute_capability == 90;
        let features = if hopper {
            Features::HOPPER
        } else if compute_capability >= 80 {
            Features::MMA_SYNC
        } else {
            Features::NONE
        };
        ArchFeatures { compute_capability, sm90a_module: hopper, features }
    }

    /// From a device's compute capability and the architecture name of its module
    /// (`sm_80`, `sm_90`, `sm_90a`).
    pub fn of_module(compute_capability: u32, module_arch: &str) -> ArchFeatures {
        ArchFeatures::new(compute_capability, ArchFeatures::holds_sm90a_kernels(module_arch))
    }

    /// Whether a PTX module of architecture `module_arch` holds the table's `Module::Sm90a`
    /// kernels (the one place the name is read).
    pub fn holds_sm90a_kernels(module_arch: &str) -> bool {
        module_arch == "sm_90a"
    }

    /// Whether this device runs `kernel`: its module holds it and the device has the
    /// features it requires.
    pub fn runs(&self, kernel: &KernelSpec) -> bool {
        (kernel.module == Module::Portable || self.sm90a_module) && self.features.contains(kernel.needs)
    }

    /// Whether the table's kernel `id` exists and runs here.
    pub fn runs_id(&self, id: &KernelId) -> bool {
        crate::registry::find(id).is_some_and(|k| self.runs(&k))
    }
}
