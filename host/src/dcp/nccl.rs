//! The NCCL exchange of context parallelism (the `nccl` feature): cudarc's NCCL bindings,
//! loaded at run time like the driver, so the library builds and its tests run where no
//! NCCL is installed.
//!
//! The loader asks the system's dynamic linker for `libnccl.so` (cudarc's names). NCCL as
//! PyTorch ships it (the `nvidia-nccl-cu13` package) holds only `libnccl.so.2`: make a
//! directory with a `libnccl.so` link to it and put that directory on `LD_LIBRARY_PATH`
//! (`scripts/nccl-lib.sh DIR` does both steps). NVLink multicast (NVLS) stays off:
//! [`disable_nvls`] sets `NCCL_NVLS_ENABLE=0` before the first communicator.
//!
//! Two ways to make the communicators, as engines do:
//! - one process driving every GPU: [`comms_for_devices`] (NCCL's `ncclCommInitAll`);
//! - one process a rank: rank 0 makes an [`Id`] ([`new_id`]) and sends its bytes
//!   (`Id::internal`) to the others, each calls [`comm_for_rank`].
//!
//! Then [`DcpAttention::nccl`] runs this process's ranks over them: the all-gather of the
//! ranks' (out, lse) is NCCL's, on each rank's stream, and captures in a CUDA graph.

use super::{DcpAttention, DcpGroup, Gathered, Exchange, check_spec, merge_ranks_kernel, rank_spec};
use crate::backend::BackendName;
use crate::cuda::CudaRuntime;
use crate::dtype::Element;
use crate::error::{AttnError, Result};
use crate::kv_cache::KvCacheLayout;
use crate::layer::Attention;
use crate::spec::AttnSpec;
use cudarc::driver::CudaSlice;
pub use cudarc::nccl::safe::{Comm, Id};
use std::sync::Arc;

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> AttnError {
    AttnError::Nccl(format!("{what}: {e:?}"))
}

/// Whether NCCL can be loaded; an error saying how to point the loader at it otherwise.
pub fn available() -> Result<()> {
    if crate::culib::nccl_present() {
        return Ok(());
    }
    Err(AttnError::Nccl(
        "libnccl.so was not found by the dynamic linker: put the directory holding libnccl.so on LD_LIBRARY_PATH (PyTorch's NCCL ships libnccl.so.2 only: `scripts/nccl-lib.sh DIR` links it as DIR/libnccl.so)".into(),
    ))
}

/// Sets `NCCL_NVLS_ENABLE=0` unless the caller set it: NVLink multicast stays off (the
/// GPU machines' driver setup does not serve it). Call before the first communicator, while
/// the process has one thread.
pub fn disable_nvls() {
    if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
        // SAFETY (edition 2024): called before any communicator, with no other thread reading
        // the environment (the function's contract).
        unsafe { std::env::set_var("NCCL_NVLS_ENABLE", "0") };
    }
}

/// A new communicator id (rank 0 of a multi-process group makes it and sends its bytes to
/// the other ranks).
pub fn new_id() -> Result<Id> {
    available()?;
    Id::new().map_err(|e| nccl_error("ncclGetUniqueId", e))
}

/// One communicator a device, all in this process (rank i on `runtimes[i]`'s stream).
pub fn comms_for_devices(runtimes: &[Arc<CudaRuntime>]) -> Result<Vec<Comm>> {
    available()?;
    disable_nvls();
    Comm::from_devices(runtimes.iter().map(|rt| rt.stream().clone()).collect()).map_err(|e| nccl_error("ncclCommInitAll", e))
}

/// This process's communicator as `rank` of `world` (every rank calls it with the same id).
pub fn comm_for_rank(rt: &Arc<CudaRuntime>, rank: usize, world: usize, id: Id) -> Result<Comm> {
    available()?;
    disable_nvls();
    if rank >= world {
        return Err(AttnError::InvalidShard(format!("rank {rank} of a group of {world}")));
    }
    Comm::from_rank(rt.stream().clone(), rank, world, id).map_err(|e| nccl_error("ncclCommInitRank", e))
}

impl<T: Element> DcpAttention<T> {
    /// This process's ranks of `group`, one a communicator: local rank i runs on `runtimes[i]`
    /// (whose stream its communicator was made on) as group rank `comms[i].rank()`. The
    /// local ranks must be consecutive and the communicators' world the group.
    pub fn nccl(backend: BackendName, group: DcpGroup, spec: AttnSpec, layout: KvCacheLayout, runtimes: Vec<Arc<CudaRuntime>>, comms: Vec<Comm>) -> Result<Self> {
        check_spec(&spec)?;
        if runtimes.is_empty() || runtimes.len() != comms.len() {
            return Err(AttnError::InvalidShard(format!("{} runtimes for {} communicators (one each, at least one)", runtimes.len(), comms.len())));
        }
        let first = comms[0].rank();
        for (i, (c, rt)) in comms.iter().zip(&runtimes).enumerate() {
            if c.world_size() != group.ranks() || c.rank() != first + i {
                return Err(AttnError::InvalidShard(format!(
                    "communicator {i} is rank {} of {}; the group has {} ranks and local rank {i} must be rank {}",
                    c.rank(),
                    c.world_size(),
                    group.ranks(),
                    first + i
                )));
            }
            if !Arc::ptr_eq(&c.stream(), rt.stream()) {
                return Err(AttnError::InvalidShard(format!("communicator {i} was made on another stream than runtime {i}'s: make it with comms_for_devices / comm_for_rank")));
            }
        }
        if backend.caps().cpu {
            return Err(AttnError::InvalidShard(format!("backend {backend} runs on the host: NCCL exchanges device buffers")));
        }
        let id = merge_ranks_kernel::<T>(backend)?;
        let ranks = runtimes.iter().map(|rt| Attention::new(backend, rank_spec(&spec), layout, Some(rt.clone()))).collect::<Result<Vec<_>>>()?;
        let merge_fns = runtimes.iter().map(|rt| rt.function(id)).collect::<Result<Vec<_>>>()?;
        tracing::debug!(ranks = group.ranks(), local = comms.len(), first, %backend, "DCP layer over NCCL");
        Ok(DcpAttention { group, spec, layout, ranks, first_rank: first, exchange: Exchange::Nccl(comms), merge_fns, merge_id: Some(id) })
    }
}

/// The all-gather of every local rank's first `out_len` outputs and `lse_len` log-sum-exps
/// into its gathered buffers (`[ranks, ...]` in rank order), as one NCCL group.
pub(super) fn all_gather<T>(comms: &[Comm], rank_out: &[CudaSlice<T>], rank_lse: &[CudaSlice<f32>], gathered: &mut [Gathered<T>], out_len: usize, lse_len: usize) -> Result<()> {
    let world = comms.first().map_or(1, |c| c.world_size());
    let bytes = out_len * std::mem::size_of::<T>();
    cudarc::nccl::result::group_start().map_err(|e| nccl_error("ncclGroupStart", e))?;
    let mut result = Ok(());
    for (i, c) in comms.iter().enumerate() {
        let g = &mut gathered[i];
        let (Some(out), Some(lse)) = (g.out.as_mut(), g.lse.as_mut()) else { unreachable!("an NCCL step allocates its gathered buffers") };
        // SAFETY: the views reinterpret whole buffers of plain 16-bit elements as their bytes
        // (`bytes` within the send buffer, `world x bytes` within the gathered one, which
        // DcpStep sized for every rank's rows).
        let (send, mut recv) = unsafe {
            (rank_out[i].transmute::<u8>(bytes).expect("rank output holds the step's rows"), out.transmute_mut::<u8>(world * bytes).expect("gathered output holds every rank's rows"))
        };
        let r1 = c.all_gather(&send, &mut recv).map(|_| ()).map_err(|e| nccl_error("ncclAllGather (out)", e));
        let r2 = c.all_gather(&rank_lse[i].slice(..lse_len), &mut lse.slice_mut(..world * lse_len)).map(|_| ()).map_err(|e| nccl_error("ncclAllGather (lse)", e));
        result = result.and(r1).and(r2);
    }
    cudarc::nccl::result::group_end().map_err(|e| nccl_error("ncclGroupEnd", e))?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_nccl_or_communicators_the_errors_say_what_to_do() {
        // Where NCCL is not installed (CI), loading it is an error naming the fix, not a panic.
        if let Err(e) = available() {
            assert!(matches!(e, AttnError::Nccl(_)) && e.to_string().contains("LD_LIBRARY_PATH"), "{e}");
            assert!(new_id().is_err());
        }
        // A layer needs a communicator a runtime: refused before NCCL or a GPU is touched.
        let group = DcpGroup::new(2, 1).unwrap();
        let layout = KvCacheLayout::new(4, 16, 8, 128).unwrap();
        let e = DcpAttention::<half::bf16>::nccl(BackendName::CudaPaged, group, AttnSpec::new(32, 8, 128), layout, vec![], vec![]).unwrap_err();
        assert!(matches!(e, AttnError::InvalidShard(_)) && e.to_string().contains("0 runtimes for 0 communicators"), "{e}");
        // And a layer DCP does not shard is refused first.
        let alibi = AttnSpec { alibi_slopes: Some(vec![0.5; 32]), ..AttnSpec::new(32, 8, 128) };
        let e = DcpAttention::<half::bf16>::nccl(BackendName::CudaPaged, group, alibi, layout, vec![], vec![]).unwrap_err();
        assert!(e.to_string().contains("ALiBi"), "{e}");
    }
}
