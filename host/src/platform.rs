//! Where attention runs, and the device properties a plan depends on. Below both the CUDA
//! runtime (which reports them) and the backends (which plan from them).

use std::fmt;

/// Where attention runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    Cpu,
    /// A CUDA device of this compute capability.
    Cuda { major: u32, minor: u32 },
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

/// What a step's plan needs to know of the device: its SM count and how many blocks of
/// the attention kernel fit on one SM at once (from the driver's occupancy calculator).
/// Plans are pure functions of the metadata and these, so they are tested on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceProps {
    pub num_sms: u32,
    pub attention_blocks_per_sm: u32,
    /// Dynamic shared memory one block may opt into (bytes): picks between a kernel's
    /// pipeline depths.
    pub max_shared_memory_per_block: u32,
    /// The loaded module holds the Hopper (sm_90a) kernels: wgmma prefill.
    pub wgmma: bool,
}

impl DeviceProps {
    /// An H100 SXM (132 SMs, 227 KiB per block, the sm_90a module) with the paged kernel's
    /// occupancy there (2 blocks per SM).
    pub const H100: DeviceProps = DeviceProps { num_sms: 132, attention_blocks_per_sm: 2, max_shared_memory_per_block: 232_448, wgmma: true };
    /// An A100 SXM (108 SMs, 163 KiB per block, the portable kernels only).
    pub const A100: DeviceProps = DeviceProps { num_sms: 108, attention_blocks_per_sm: 2, max_shared_memory_per_block: 166_912, wgmma: false };

    /// Blocks of the attention kernel resident on the whole device at once.
    pub fn resident_blocks(&self) -> usize {
        (self.num_sms.max(1) * self.attention_blocks_per_sm.max(1)) as usize
    }
}
