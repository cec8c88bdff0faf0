//! The thin layer between the kernels and the machine: indices, barriers, warp shuffles,
//! shared memory, 16-byte global accesses, fast math and f16/bf16 conversions, `mma.sync`
//! and `ldmatrix`/`stmatrix`, `cp.async`; and for the sm_90a module only, `wgmma`,
//! `mbarrier`, the copy engine's bulk tensor copies, `setmaxnreg` and `elect.sync`.
//! Each inline-PTX wrapper is named after the instruction it emits.
//!
//! Warp-synchronous instructions (`shfl.sync`, `mma.sync`, `ldmatrix.sync`, `bar.*`) are
//! never marked `pure`: LLVM does not know they are convergent, and would sink a pure one
//! into a branch that only some lanes take (seen: a `shfl.sync` sunk under `lane % 4 == 0`,
//! a deadlock). Without `pure` the asm counts as a side effect and stays where it is written.

use core::arch::asm;
use core::arch::nvptx;

#[inline(always)]
pub fn thread_idx_x() -> u32 {
    unsafe { nvptx::_thread_idx_x() as u32 }
}
#[inline(always)]
pub fn block_idx_x() -> u32 {
    unsafe { nvptx::_block_idx_x() as u32 }
}
#[inline(always)]
pub fn block_idx_y() -> u32 {
    unsafe { nvptx::_block_idx_y() as u32 }
}
#[inline(always)]
pub fn block_idx_z() -> u32 {
    unsafe { nvptx::_block_idx_z() as u32 }
}
#[inline(always)]
pub fn block_dim_x() -> u32 {
    unsafe { nvptx::_block_dim_x() as u32 }
}

/// `bar.sync 0`: every thread of the block arrives before any proceeds.
#[inline(always)]
pub fn bar_sync() {
    unsafe { nvptx::_syncthreads() }
}

/// `bar.sync id, count`: waits at named barrier `id` (1-15) until `count` threads (whole
/// warps) have arrived there; orders their shared-memory accesses as `bar_sync` does.
#[inline(always)]
pub fn bar_sync_named(id: u32, count: u32) {
    unsafe { asm!("bar.sync {i}, {c};", i = in(reg32) id, c = in(reg32) count, options(nostack)) }
}

/// `mov.u32` that the compiler cannot see through or move (an asm with effects): a value
/// made opaque where it stands, so that what is computed from it stays there (loop-invariant
/// wgmma descriptors, which LLVM would otherwise hoist and keep live across a loop).
#[inline(always)]
pub fn opaque_u32(x: u32) -> u32 {
    let r: u32;
    unsafe { asm!("mov.u32 {r}, {x};", r = out(reg32) r, x = in(reg32) x, options(nostack)) }
    r
}

/// [`opaque_u32`] for a 64-bit value (a wgmma descriptor).
#[inline(always)]
pub fn opaque_u64(x: u64) -> u64 {
    let r: u64;
    unsafe { asm!("mov.u64 {r}, {x};", r = out(reg64) r, x = in(reg64) x, options(nostack)) }
    r
}

/// `shfl.sync.idx.b32` over the full warp: lane `src`'s value, in every lane. Broadcasting a
/// value makes it warp-uniform to ptxas (as CUTLASS's `canonical_warp_group_idx`), so a
/// branch on it around `wgmma` is not a divergent path.
#[inline(always)]
pub fn shfl_sync_idx_u32(v: u32, src: u32) -> u32 {
    let r: u32;
    unsafe { asm!("shfl.sync.idx.b32 {r}, {v}, {s}, 31, -1;", r = out(reg32) r, v = in(reg32) v, s = in(reg32) src, options(nostack)) }
    r
}

/// `shfl.sync.bfly.b32` over the full warp: the value of lane `lane ^ mask`.
#[inline(always)]
pub fn shfl_sync_bfly_f32(v: f32, mask: u32) -> f32 {
    let out: f32;
    unsafe {
        asm!("shfl.sync.bfly.b32 {o}, {v}, {m}, 0x1f, 0xffffffff;",
             o = out(reg32) out, v = in(reg32) v, m = in(reg32) mask,
             options(nomem, nostack));
    }
    out
}

/// `ex2.approx.ftz.f32`: 2^x (-inf -> +0).
#[inline(always)]
pub fn ex2_approx(x: f32) -> f32 {
    let y: f32;
    unsafe {
        asm!("ex2.approx.ftz.f32 {y}, {x};", y = out(reg32) y, x = in(reg32) x,
             options(pure, nomem, nostack));
    }
    y
}

/// `fma.rn.f32`: `a * b + c`, one rounding.
#[inline(always)]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    let y: f32;
    unsafe {
        asm!("fma.rn.f32 {y}, {a}, {b}, {c};", y = out(reg32) y, a = in(reg32) a, b = in(reg32) b, c = in(reg32) c,
             options(pure, nomem, nostack));
    }
    y
}

/// `lg2.approx.ftz.f32`: log2 x (+0 -> -inf).
#[inline(always)]
pub fn lg2_approx(x: f32) -> f32 {
    let y: f32;
    unsafe {
        asm!("lg2.approx.ftz.f32 {y}, {x};", y = out(reg32) y, x = in(reg32) x,
             options(pure, nomem, nostack));
    }
    y
}

/// `tanh.approx.f32` (sm_75+).
#[inline(always)]
pub fn tanh_approx(x: f32) -> f32 {
    let y: f32;
    unsafe {
        asm!("tanh.approx.f32 {y}, {x};", y = out(reg32) y, x = in(reg32) x,
             options(pure, nomem, nostack));
    }
    y
}

/// `rcp.approx.ftz.f32`: 1/x.
#[inline(always)]
pub fn rcp_approx(x: f32) -> f32 {
    let y: f32;
    unsafe {
        asm!("rcp.approx.ftz.f32 {y}, {x};", y = out(reg32) y, x = in(reg32) x,
             options(pure, nomem, nostack));
    }
    y
}

/// Sixteen bytes: eight 16-bit elements, or four f32.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub struct V4(pub [u32; 4]);

impl V4 {
    pub const ZERO: V4 = V4([0; 4]);
}

/// `ld.global.nc.v4.u32`: a 16-byte load through the read-only path. `p` is 16-byte aligned
/// and points to memory no kernel writes while this one runs.
#[inline(always)]
pub unsafe fn ld_global_nc_v4(p: *const u16) -> V4 {
    let (a, b, c, d): (u32, u32, u32, u32);
    unsafe {
        asm!("ld.global.nc.v4.u32 {{{a}, {b}, {c}, {d}}}, [{p}];",
             a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
             p = in(reg64) p, options(readonly, nostack));
    }
    V4([a, b, c, d])
}

/// `ld.global.nc.f32`: a 4-byte load through the read-only path (memory no kernel writes
/// while this one runs).
#[inline(always)]
pub unsafe fn ld_global_nc_f32(p: *const f32) -> f32 {
    let v: f32;
    unsafe { asm!("ld.global.nc.f32 {v}, [{p}];", v = out(reg32) v, p = in(reg64) p, options(readonly, nostack)) };
    v
}

/// `ld.global.v4.u32`: a 16-byte coherent load (for data this grid may have written).
#[inline(always)]
pub unsafe fn ld_global_v4(p: *const u32) -> V4 {
    let (a, b, c, d): (u32, u32, u32, u32);
    unsafe {
        asm!("ld.global.v4.u32 {{{a}, {b}, {c}, {d}}}, [{p}];",
             a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
             p = in(reg64) p, options(readonly, nostack));
    }
    V4([a, b, c, d])
}

/// `st.global.v4.u32`: a 16-byte store; `p` is 16-byte aligned.
#[inline(always)]
pub unsafe fn st_global_v4(p: *mut u32, v: V4) {
    unsafe {
        asm!("st.global.v4.u32 [{p}], {{{a}, {b}, {c}, {d}}};",
             p = in(reg64) p, a = in(reg32) v.0[0], b = in(reg32) v.0[1],
             c = in(reg32) v.0[2], d = in(reg32) v.0[3], options(nostack));
    }
}

/// `st.global.v2.u32`: an 8-byte store; `p` is 8-byte aligned.
#[inline(always)]
pub unsafe fn st_global_v2(p: *mut u32, a: u32, b: u32) {
    unsafe {
        asm!("st.global.v2.u32 [{p}], {{{a}, {b}}};", p = in(reg64) p, a = in(reg32) a, b = in(reg32) b, options(nostack));
    }
}

/// `prmt.b32 d, a, b, SEL`: byte `i` of `d` is byte `SEL >> 4i & 7` of the 8 bytes `b:a`.
#[inline(always)]
pub fn prmt_b32<const SEL: u32>(a: u32, b: u32) -> u32 {
    let d: u32;
    unsafe {
        asm!("prmt.b32 {d}, {a}, {b}, {sel};", d = out(reg32) d, a = in(reg32) a, b = in(reg32) b, sel = const SEL,
             options(pure, nomem, nostack));
    }
    d
}

/// `fma.rn.f16x2`: `a * b + c` on both f16 halves, round to nearest even (subnormals kept).
#[inline(always)]
pub fn fma_rn_f16x2(a: u32, b: u32, c: u32) -> u32 {
    let d: u32;
    unsafe {
        asm!("fma.rn.f16x2 {d}, {a}, {b}, {c};", d = out(reg32) d, a = in(reg32) a, b = in(reg32) b, c = in(reg32) c,
             options(pure, nomem, nostack));
    }
    d
}

/// `fma.rn.bf16x2` (sm_80): `a * b + c` on both bf16 halves, round to nearest even.
#[inline(always)]
pub fn fma_rn_bf16x2(a: u32, b: u32, c: u32) -> u32 {
    let d: u32;
    unsafe {
        asm!("fma.rn.bf16x2 {d}, {a}, {b}, {c};", d = out(reg32) d, a = in(reg32) a, b = in(reg32) b, c = in(reg32) c,
             options(pure, nomem, nostack));
    }
    d
}

/// Two bf16 packed in a b32 (element 0 in the low half) -> two f32. bf16 is the high
/// half of an f32, so this is two shifts and needs no `cvt` (which bf16 gains only on sm_90).
#[inline(always)]
pub fn bf16x2_to_f32x2(x: u32) -> (f32, f32) {
    (f32::from_bits(x << 16), f32::from_bits(x & 0xffff_0000))
}

/// `cvt.rn.bf16x2.f32`: two f32 -> two bf16, round to nearest even; `lo` in the low half.
#[inline(always)]
pub fn cvt_rn_bf16x2_f32(lo: f32, hi: f32) -> u32 {
    let d: u32;
    unsafe {
        asm!("cvt.rn.bf16x2.f32 {d}, {hi}, {lo};", d = out(reg32) d,
             hi = in(reg32) hi, lo = in(reg32) lo, options(pure, nomem, nostack));
    }
    d
}

/// `cvt.f32.f16` on both halves of a b32 (element 0 in the low half).
#[inline(always)]
pub fn f16x2_to_f32x2(x: u32) -> (f32, f32) {
    let (a, b): (f32, f32);
    unsafe {
        asm!("{{ .reg .b16 lo, hi;\n mov.b32 {{lo, hi}}, {x};\n cvt.f32.f16 {a}, lo;\n cvt.f32.f16 {b}, hi; }}",
             a = out(reg32) a, b = out(reg32) b, x = in(reg32) x,
             options(pure, nomem, nostack));
    }
    (a, b)
}

/// `cvt.rn.f16x2.f32`: two f32 -> two f16, round to nearest even; `lo` in the low half.
#[inline(always)]
pub fn cvt_rn_f16x2_f32(lo: f32, hi: f32) -> u32 {
    let d: u32;
    unsafe {
        asm!("cvt.rn.f16x2.f32 {d}, {hi}, {lo};", d = out(reg32) d,
             hi = in(reg32) hi, lo = in(reg32) lo, options(pure, nomem, nostack));
    }
    d
}

/// `cvt.rn.f16x2.e4m3x2` (sm_89 and newer: here, kernels of the sm_90a module only), on both
/// 16-bit halves of `w`: its 4 e4m3 bytes -> `[f16x2 of bytes 0, 1; f16x2 of bytes 2, 3]`, the
/// lower byte in the lower half. Exact (every e4m3 value is an f16); a NaN byte gives a NaN.
#[inline(always)]
pub fn cvt_rn_f16x2_e4m3x2(w: u32) -> [u32; 2] {
    let (d0, d1): (u32, u32);
    unsafe {
        asm!("{{ .reg .b16 e0, e1; mov.b32 {{e0, e1}}, {w}; cvt.rn.f16x2.e4m3x2 {d0}, e0; cvt.rn.f16x2.e4m3x2 {d1}, e1; }}",
             d0 = out(reg32) d0, d1 = out(reg32) d1, w = in(reg32) w, options(pure, nomem, nostack));
    }
    [d0, d1]
}

/// The block's dynamic shared memory (`.extern .shared`), sized by the launch.
#[inline(always)]
pub fn dynamic_shared_f32() -> *mut f32 {
    core::intrinsics::gpu::gpu_launch_sized_workgroup_mem::<f32>()
}

/// `trap`: the kernel's only way to stop on a bug.
#[inline(always)]
pub fn trap() -> ! {
    unsafe { nvptx::trap() }
}

/// `a / b` for a divisor the host guarantees non-zero: no panic path in the PTX.
#[inline(always)]
pub fn div_nz(a: usize, b: usize) -> usize {
    // SAFETY: every caller divides by a launch parameter the host validated as non-zero.
    a / unsafe { core::num::NonZeroUsize::new_unchecked(b) }
}

/// `cvta.to.shared.u64`: the shared-window address of a generic pointer into shared memory.
#[inline(always)]
pub fn cvta_to_shared<T>(p: *const T) -> u32 {
    let a: u64;
    unsafe {
        asm!("cvta.to.shared.u64 {a}, {p};", a = out(reg64) a, p = in(reg64) p,
             options(pure, nomem, nostack));
    }
    a as u32
}

/// `cp.async.cg.shared.global`: an asynchronous 16-byte copy global -> shared (sm_80+),
/// bypassing L1 and registers. Completes with `cp_async_wait_group`.
#[inline(always)]
pub unsafe fn cp_async_cg_16(dst_shared: u32, src: *const u16) {
    unsafe {
        asm!("cp.async.cg.shared.global [{d}], [{s}], 16;", d = in(reg32) dst_shared,
             s = in(reg64) src, options(nostack));
    }
}

/// `cp.async.commit_group`: closes the group of this thread's copies issued since the last.
#[inline(always)]
pub fn cp_async_commit_group() {
    unsafe { asm!("cp.async.commit_group;", options(nostack)) }
}

/// `cp.async.wait_group N`: waits until at most `N` of this thread's groups are pending.
#[inline(always)]
pub fn cp_async_wait_group<const N: u32>() {
    unsafe { asm!("cp.async.wait_group {n};", n = const N, options(nostack)) }
}

/// `st.shared.v4.u32`: 16 bytes to a shared-window address.
#[inline(always)]
pub unsafe fn st_shared_v4(addr: u32, v: V4) {
    unsafe {
        asm!("st.shared.v4.u32 [{p}], {{{a}, {b}, {c}, {d}}};", p = in(reg32) addr,
             a = in(reg32) v.0[0], b = in(reg32) v.0[1], c = in(reg32) v.0[2], d = in(reg32) v.0[3],
             options(nostack));
    }
}

/// `cp.async.wait_group n` for an `n` known at compile time after inlining (0 to 3): the
/// immediate operand cannot come from a const-generic expression.
#[inline(always)]
pub fn cp_async_wait_pending(n: usize) {
    match n {
        0 => cp_async_wait_group::<0>(),
        1 => cp_async_wait_group::<1>(),
        2 => cp_async_wait_group::<2>(),
        3 => cp_async_wait_group::<3>(),
        // Past 4 it waits for more than asked: still correct, fewer copies in flight.
        _ => cp_async_wait_group::<4>(),
    }
}

/// `ld.shared.v4.u32`: 16 bytes from a shared-window address.
#[inline(always)]
pub unsafe fn ld_shared_v4(addr: u32) -> V4 {
    let (a, b, c, d): (u32, u32, u32, u32);
    unsafe {
        asm!("ld.shared.v4.u32 {{{a}, {b}, {c}, {d}}}, [{p}];",
             a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
             p = in(reg32) addr, options(nostack));
    }
    V4([a, b, c, d])
}

/// `ld.shared.v2.u32`: 8 bytes from a shared-window address (8-byte aligned).
#[inline(always)]
pub unsafe fn ld_shared_v2(addr: u32) -> [u32; 2] {
    let (a, b): (u32, u32);
    unsafe {
        asm!("ld.shared.v2.u32 {{{a}, {b}}}, [{p}];", a = out(reg32) a, b = out(reg32) b, p = in(reg32) addr, options(nostack));
    }
    [a, b]
}

/// `st.shared.u32`: 4 bytes to a shared-window address (4-byte aligned).
#[inline(always)]
pub unsafe fn st_shared_u32(addr: u32, v: u32) {
    unsafe { asm!("st.shared.u32 [{p}], {v};", p = in(reg32) addr, v = in(reg32) v, options(nostack)) }
}

/// `st.shared.v2.u32`: 8 bytes to a shared-window address (8-byte aligned).
#[inline(always)]
pub unsafe fn st_shared_v2(addr: u32, v: [u32; 2]) {
    unsafe { asm!("st.shared.v2.u32 [{p}], {{{a}, {b}}};", p = in(reg32) addr, a = in(reg32) v[0], b = in(reg32) v[1], options(nostack)) }
}

/// `bar.warp.sync 0xffffffff`: the warp's lanes reconverge; orders their shared-memory
/// accesses (what one lane copied with cp.async, another may then read).
#[inline(always)]
pub fn bar_warp_sync() {
    unsafe { asm!("bar.warp.sync 0xffffffff;", options(nostack)) }
}

/// `stmatrix.sync.aligned.m8n8.x4.shared.b16` (sm_90; only the sm_90a module's kernels use
/// it): `ldmatrix_x4` reversed. Lane `l` gives the address of row `l % 8` of matrix `l / 8`
/// and holds in register `i` the pair (row `l / 4`, columns `2 (l % 4)`, `+1`) of matrix `i`
/// (the `mma` C fragment's layout, packed to 16 bits); each matrix row is 16 contiguous bytes.
#[inline(always)]
pub unsafe fn stmatrix_x4(addr: u32, r: [u32; 4]) {
    unsafe {
        asm!("stmatrix.sync.aligned.m8n8.x4.shared.b16 [{p}], {{{a}, {b}, {c}, {d}}};",
             p = in(reg32) addr, a = in(reg32) r[0], b = in(reg32) r[1], c = in(reg32) r[2], d = in(reg32) r[3],
             options(nostack));
    }
}

/// `ldmatrix.sync.aligned.m8n8.x4.shared.b16`: four 8x8 b16 matrices; lane `l` gives the
/// address of row `l % 8` of matrix `l / 8`, and receives in register `i` the pair
/// (row `l / 4`, columns `2 (l % 4)`, `+1`) of matrix `i`.
#[inline(always)]
pub unsafe fn ldmatrix_x4(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    unsafe {
        asm!("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{a}, {b}, {c}, {d}}}, [{p}];",
             a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
             p = in(reg32) addr, options(nostack));
    }
    [a, b, c, d]
}

/// `ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16`: as `ldmatrix_x4`, each matrix
/// transposed: register `i` holds (rows `2 (l % 4)`, `+1`; column `l / 4`) of matrix `i`.
#[inline(always)]
pub unsafe fn ldmatrix_x4_trans(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    unsafe {
        asm!("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {{{a}, {b}, {c}, {d}}}, [{p}];",
             a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
             p = in(reg32) addr, options(nostack));
    }
    [a, b, c, d]
}

macro_rules! mma_m16n8k16 {
    ($(#[$doc:meta])* $name:ident, $ptx:literal) => {
        $(#[$doc])*
        #[inline(always)]
        pub fn $name(a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
            let (d0, d1, d2, d3): (f32, f32, f32, f32);
            unsafe {
                asm!(concat!($ptx, " {{{d0}, {d1}, {d2}, {d3}}}, {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{c0}, {c1}, {c2}, {c3}}};"),
                     d0 = out(reg32) d0, d1 = out(reg32) d1, d2 = out(reg32) d2, d3 = out(reg32) d3,
                     a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
                     b0 = in(reg32) b[0], b1 = in(reg32) b[1],
                     c0 = in(reg32) c[0], c1 = in(reg32) c[1], c2 = in(reg32) c[2], c3 = in(reg32) c[3],
                     options(nomem, nostack));
            }
            [d0, d1, d2, d3]
        }
    };
}

mma_m16n8k16!(
    /// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`: `d = a b + c` on tensor cores.
    /// a: 16x16 (4 regs of bf16 pairs), b: 16x8 (2 regs), c, d: 16x8 f32 (4 regs), in the
    /// PTX ISA's fragment layouts.
    mma_m16n8k16_bf16, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"
);
mma_m16n8k16!(
    /// `mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32`: as `mma_m16n8k16_bf16`, f16 inputs.
    mma_m16n8k16_f16, "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"
);

// ---- sm_90a (Hopper) only: these appear only in kernels of the sm_90a module (the build
// drops every `_sm90` kernel from the other modules before lowering). ----

/// `fence.proxy.async.shared::cta`: this thread's earlier generic-proxy writes to shared
/// memory (`st.shared`, `cp.async`) become visible to the async proxy (wgmma's operand reads,
/// bulk copies). Each writing thread fences, then the block synchronizes.
#[inline(always)]
pub fn fence_proxy_async_shared_cta() {
    unsafe { asm!("fence.proxy.async.shared::cta;", options(nostack)) }
}

/// `mbarrier.init.shared::cta.b64`: an mbarrier at `addr` (8-byte aligned shared memory)
/// expecting `count` arrivals per phase. One thread initialises; a block barrier publishes it.
#[inline(always)]
pub unsafe fn mbarrier_init(addr: u32, count: u32) {
    unsafe { asm!("mbarrier.init.shared::cta.b64 [{a}], {c};", a = in(reg32) addr, c = in(reg32) count, options(nostack)) }
}

/// `mbarrier.arrive.release.cta.shared::cta.b64`: this thread's arrival on the current
/// phase (its earlier shared-memory writes are released to the waiters).
#[inline(always)]
pub unsafe fn mbarrier_arrive(addr: u32) {
    unsafe { asm!("mbarrier.arrive.release.cta.shared::cta.b64 _, [{a}];", a = in(reg32) addr, options(nostack)) }
}

/// `mbarrier.try_wait.parity.acquire.cta.shared::cta.b64`: whether the phase of parity
/// `parity` has completed (acquiring what its arrivals released); the hardware may wait a
/// while before answering no.
#[inline(always)]
pub unsafe fn mbarrier_try_wait_parity(addr: u32, parity: u32) -> bool {
    let done: u32;
    unsafe {
        asm!(
            "{{ .reg .pred p; mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [{a}], {ph}; selp.u32 {d}, 1, 0, p; }}",
            d = out(reg32) done,
            a = in(reg32) addr,
            ph = in(reg32) parity,
            options(nostack)
        )
    }
    done != 0
}

/// Waits until `mbarrier_try_wait_parity` says the phase completed.
#[inline(always)]
pub unsafe fn mbarrier_wait_parity(addr: u32, parity: u32) {
    while !unsafe { mbarrier_try_wait_parity(addr, parity) } {}
}

/// Waits until the phase of parity `parity` of the mbarrier at `addr` completed: the
/// `mbarrier.try_wait.parity` loop inside one asm block (labels scoped by its braces), so
/// that the compiler sees no loop: `wgmma` batches in flight across it stay asynchronous
/// (a loop in the compiled code around it, `mbarrier_wait_parity`, makes ptxas serialize
/// them).
#[inline(always)]
#[allow(named_asm_labels)] // PTX scopes the label to the asm's braces (no numeric labels)
pub unsafe fn mbarrier_wait_parity_spin(addr: u32, parity: u32) {
    unsafe {
        asm!(
            "{{ .reg .pred p; WAIT: mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [{a}], {ph}; @!p bra WAIT; }}",
            a = in(reg32) addr,
            ph = in(reg32) parity,
            options(nostack)
        )
    }
}

/// `mbarrier.arrive.expect_tx.release.cta.shared::cta.b64`: this thread's arrival, and
/// `bytes` more expected by the phase's transaction count (the bulk copies that complete on
/// this mbarrier count them down).
#[inline(always)]
pub unsafe fn mbarrier_arrive_expect_tx(addr: u32, bytes: u32) {
    unsafe {
        asm!("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [{a}], {b};", a = in(reg32) addr, b = in(reg32) bytes, options(nostack))
    }
}

/// `cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes`: the
/// copy engine (TMA) moves the box at coordinates `(c0, c1)` of the tensor map at `tmap` (a
/// `CUtensorMap` in global memory, encoded on the host) into shared memory at `dst`, laid
/// out (and swizzled) as the map says; its bytes count down `mbar`'s transaction count.
#[inline(always)]
pub unsafe fn cp_async_bulk_tensor_2d(dst: u32, tmap: u64, c0: i32, c1: i32, mbar: u32) {
    unsafe {
        asm!(
            "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [{d}], [{t}, {{{x}, {y}}}], [{m}];",
            d = in(reg32) dst,
            t = in(reg64) tmap,
            x = in(reg32) c0,
            y = in(reg32) c1,
            m = in(reg32) mbar,
            options(nostack)
        )
    }
}

/// `elect.sync _|p, 0xffffffff` (sm_90): true in exactly one lane of the converged warp;
/// for work one lane does on the warp's behalf.
#[inline(always)]
pub fn elect_sync() -> bool {
    let elected: u32;
    unsafe {
        asm!(
            "{{ .reg .pred p; elect.sync _|p, 0xffffffff; selp.u32 {e}, 1, 0, p; }}",
            e = out(reg32) elected,
            options(nomem, nostack)
        )
    }
    elected != 0
}

/// `setmaxnreg.inc.sync.aligned.u32 N` (sm_90a): this warpgroup's registers per thread
/// rise to `N` (the kernel must start under a register cap: `.maxntid`).
#[inline(always)]
pub fn setmaxnreg_inc<const N: u32>() {
    unsafe { asm!("setmaxnreg.inc.sync.aligned.u32 {n};", n = const N, options(nostack)) }
}

/// `setmaxnreg.dec.sync.aligned.u32 N` (sm_90a): this warpgroup gives registers back, down
/// to `N` per thread.
#[inline(always)]
pub fn setmaxnreg_dec<const N: u32>() {
    unsafe { asm!("setmaxnreg.dec.sync.aligned.u32 {n};", n = const N, options(nostack)) }
}

/// `wgmma.fence.sync.aligned`: orders this warpgroup's register writes (accumulators, A
/// fragments) before the `wgmma.mma_async` that reads them. Before every batch.
#[inline(always)]
pub fn wgmma_fence() {
    unsafe { asm!("wgmma.fence.sync.aligned;", options(nostack)) }
}

/// Pins `x` where it is (an empty asm that reads and writes each register): values the
/// next wgmma batch reads (A fragments, accumulators) are computed before its
/// `wgmma_fence`, not sunk between its instructions (where ptxas would have to insert a
/// warpgroup arrive before each).
#[inline(always)]
pub fn pin_u32<const N: usize>(x: &mut [[u32; 4]; N]) {
    for j in 0..N {
        for e in 0..4 {
            unsafe { asm!("// {0}", inout(reg32) x[j][e], options(nomem, nostack)) }
        }
    }
}

/// `pin_u32` for f32 fragments.
#[inline(always)]
pub fn pin_f32<const N: usize>(x: &mut [[f32; 4]; N]) {
    for j in 0..N {
        for e in 0..4 {
            unsafe { asm!("// {0}", inout(reg32) x[j][e], options(nomem, nostack)) }
        }
    }
}

/// `wgmma.commit_group.sync.aligned`: closes the batch of this warpgroup's `wgmma.mma_async`
/// issued since the last commit.
#[inline(always)]
pub fn wgmma_commit_group() {
    unsafe { asm!("wgmma.commit_group.sync.aligned;", options(nostack)) }
}

/// `wgmma.wait_group.sync.aligned 0`: waits for every committed batch; then pins the
/// accumulators `acc` after the wait (an empty asm that reads and writes each), so that the
/// compiler moves no read of them above it.
#[inline(always)]
pub fn wgmma_wait_group_0<const N: usize>(acc: &mut [[f32; 4]; N]) {
    unsafe { asm!("wgmma.wait_group.sync.aligned 0;", options(nostack)) }
    pin_f32(acc);
}

/// `wgmma.wait_group.sync.aligned 1`: waits for every committed batch but the newest (batches
/// complete in commit order); then pins `acc`, the accumulators of the batches waited for.
#[inline(always)]
pub fn wgmma_wait_group_1<const N: usize>(acc: &mut [[f32; 4]; N]) {
    unsafe { asm!("wgmma.wait_group.sync.aligned 1;", options(nostack)) }
    pin_f32(acc);
}

macro_rules! wgmma_m64n32k16_ss {
    ($name:ident, $ty:literal) => {
        /// `wgmma.mma_async.sync.aligned.m64n32k16.f32` (sm_90a): as `wgmma_m64n64k16_ss`,
        /// 32 columns (four `[f32; 4]` a warp's 16 rows).
        #[inline(always)]
        pub unsafe fn $name(d: &mut [[f32; 4]; 4], a_desc: u64, b_desc: u64, scale_d: u32) {
            unsafe {
                asm!(
                    concat!("{{ .reg .pred p; setp.ne.b32 p, {18}, 0;\n",
                            "wgmma.mma_async.sync.aligned.m64n32k16.f32.", $ty, ".", $ty, " {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}}}, {16}, {17}, p, 1, 1, 0, 0;\n}}"),
                    inout(reg32) d[0][0],
                    inout(reg32) d[0][1],
                    inout(reg32) d[0][2],
                    inout(reg32) d[0][3],
                    inout(reg32) d[1][0],
                    inout(reg32) d[1][1],
                    inout(reg32) d[1][2],
                    inout(reg32) d[1][3],
                    inout(reg32) d[2][0],
                    inout(reg32) d[2][1],
                    inout(reg32) d[2][2],
                    inout(reg32) d[2][3],
                    inout(reg32) d[3][0],
                    inout(reg32) d[3][1],
                    inout(reg32) d[3][2],
                    inout(reg32) d[3][3],
                    in(reg64) a_desc,
                    in(reg64) b_desc,
                    in(reg32) scale_d,
                    options(nostack),
                );
            }
        }
    };
}
wgmma_m64n32k16_ss!(wgmma_m64n32k16_ss_bf16, "bf16");
wgmma_m64n32k16_ss!(wgmma_m64n32k16_ss_f16, "f16");

macro_rules! wgmma_m64n64k16_ss {
    ($name:ident, $ty:literal) => {
        /// `wgmma.mma_async.sync.aligned.m64n64k16.f32` (sm_90a), A and B from shared memory by
        /// descriptor, both K-major: `d = a b^T + (scale_d ? d : 0)` for this warp's 16 rows of
        /// the warpgroup's 64 (the accumulators in the `mma.m16n8` C layout, one `[f32; 4]` per
        /// 8 columns). Asynchronous: read `d` only after `wgmma_wait_group_0`.
        #[inline(always)]
        pub unsafe fn $name(d: &mut [[f32; 4]; 8], a_desc: u64, b_desc: u64, scale_d: u32) {
            unsafe {
                asm!(
                    concat!("{{ .reg .pred p; setp.ne.b32 p, {34}, 0;\n",
                            "wgmma.mma_async.sync.aligned.m64n64k16.f32.", $ty, ".", $ty, " {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}}}, {32}, {33}, p, 1, 1, 0, 0;\n}}"),
                    inout(reg32) d[0][0],
                    inout(reg32) d[0][1],
                    inout(reg32) d[0][2],
                    inout(reg32) d[0][3],
                    inout(reg32) d[1][0],
                    inout(reg32) d[1][1],
                    inout(reg32) d[1][2],
                    inout(reg32) d[1][3],
                    inout(reg32) d[2][0],
                    inout(reg32) d[2][1],
                    inout(reg32) d[2][2],
                    inout(reg32) d[2][3],
                    inout(reg32) d[3][0],
                    inout(reg32) d[3][1],
                    inout(reg32) d[3][2],
                    inout(reg32) d[3][3],
                    inout(reg32) d[4][0],
                    inout(reg32) d[4][1],
                    inout(reg32) d[4][2],
                    inout(reg32) d[4][3],
                    inout(reg32) d[5][0],
                    inout(reg32) d[5][1],
                    inout(reg32) d[5][2],
                    inout(reg32) d[5][3],
                    inout(reg32) d[6][0],
                    inout(reg32) d[6][1],
                    inout(reg32) d[6][2],
                    inout(reg32) d[6][3],
                    inout(reg32) d[7][0],
                    inout(reg32) d[7][1],
                    inout(reg32) d[7][2],
                    inout(reg32) d[7][3],
                    in(reg64) a_desc,
                    in(reg64) b_desc,
                    in(reg32) scale_d,
                    options(nostack),
                );
            }
        }
    };
}
wgmma_m64n64k16_ss!(wgmma_m64n64k16_ss_bf16, "bf16");
wgmma_m64n64k16_ss!(wgmma_m64n64k16_ss_f16, "f16");

macro_rules! wgmma_m64n128k16_ss {
    ($name:ident, $ty:literal) => {
        /// `wgmma.mma_async.sync.aligned.m64n128k16.f32` (sm_90a), A and B from shared memory by
        /// descriptor, both K-major: `d = a b^T + (scale_d ? d : 0)` for this warp's 16 rows of
        /// the warpgroup's 64 (the accumulators in the `mma.m16n8` C layout, one `[f32; 4]` per
        /// 8 columns). Asynchronous: read `d` only after `wgmma_wait_group_0`.
        #[inline(always)]
        pub unsafe fn $name(d: &mut [[f32; 4]; 16], a_desc: u64, b_desc: u64, scale_d: u32) {
            unsafe {
                asm!(
                    concat!("{{ .reg .pred p; setp.ne.b32 p, {66}, 0;\n",
                            "wgmma.mma_async.sync.aligned.m64n128k16.f32.", $ty, ".", $ty, " {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}, {32}, {33}, {34}, {35}, {36}, {37}, {38}, {39}, {40}, {41}, {42}, {43}, {44}, {45}, {46}, {47}, {48}, {49}, {50}, {51}, {52}, {53}, {54}, {55}, {56}, {57}, {58}, {59}, {60}, {61}, {62}, {63}}}, {64}, {65}, p, 1, 1, 0, 0;\n}}"),
                    inout(reg32) d[0][0],
                    inout(reg32) d[0][1],
                    inout(reg32) d[0][2],
                    inout(reg32) d[0][3],
                    inout(reg32) d[1][0],
                    inout(reg32) d[1][1],
                    inout(reg32) d[1][2],
                    inout(reg32) d[1][3],
                    inout(reg32) d[2][0],
                    inout(reg32) d[2][1],
                    inout(reg32) d[2][2],
                    inout(reg32) d[2][3],
                    inout(reg32) d[3][0],
                    inout(reg32) d[3][1],
                    inout(reg32) d[3][2],
                    inout(reg32) d[3][3],
                    inout(reg32) d[4][0],
                    inout(reg32) d[4][1],
                    inout(reg32) d[4][2],
                    inout(reg32) d[4][3],
                    inout(reg32) d[5][0],
                    inout(reg32) d[5][1],
                    inout(reg32) d[5][2],
                    inout(reg32) d[5][3],
                    inout(reg32) d[6][0],
                    inout(reg32) d[6][1],
                    inout(reg32) d[6][2],
                    inout(reg32) d[6][3],
                    inout(reg32) d[7][0],
                    inout(reg32) d[7][1],
                    inout(reg32) d[7][2],
                    inout(reg32) d[7][3],
                    inout(reg32) d[8][0],
                    inout(reg32) d[8][1],
                    inout(reg32) d[8][2],
                    inout(reg32) d[8][3],
                    inout(reg32) d[9][0],
                    inout(reg32) d[9][1],
                    inout(reg32) d[9][2],
                    inout(reg32) d[9][3],
                    inout(reg32) d[10][0],
                    inout(reg32) d[10][1],
                    inout(reg32) d[10][2],
                    inout(reg32) d[10][3],
                    inout(reg32) d[11][0],
                    inout(reg32) d[11][1],
                    inout(reg32) d[11][2],
                    inout(reg32) d[11][3],
                    inout(reg32) d[12][0],
                    inout(reg32) d[12][1],
                    inout(reg32) d[12][2],
                    inout(reg32) d[12][3],
                    inout(reg32) d[13][0],
                    inout(reg32) d[13][1],
                    inout(reg32) d[13][2],
                    inout(reg32) d[13][3],
                    inout(reg32) d[14][0],
                    inout(reg32) d[14][1],
                    inout(reg32) d[14][2],
                    inout(reg32) d[14][3],
                    inout(reg32) d[15][0],
                    inout(reg32) d[15][1],
                    inout(reg32) d[15][2],
                    inout(reg32) d[15][3],
                    in(reg64) a_desc,
                    in(reg64) b_desc,
                    in(reg32) scale_d,
                    options(nostack),
                );
            }
        }
    };
}
wgmma_m64n128k16_ss!(wgmma_m64n128k16_ss_bf16, "bf16");
wgmma_m64n128k16_ss!(wgmma_m64n128k16_ss_f16, "f16");

macro_rules! wgmma_m64n64k16_rs {
    ($name:ident, $ty:literal) => {
        /// `wgmma.mma_async.sync.aligned.m64n64k16.f32` (sm_90a), A from registers (this warp's
        /// 16 x 16 fragment, the `mma.m16n8k16` A layout), B from shared memory by descriptor,
        /// N-major (`imm-trans-b` = 1): `d += a b`. Asynchronous: read `d` only after
        /// `wgmma_wait_group_0`.
        #[inline(always)]
        pub unsafe fn $name(d: &mut [[f32; 4]; 8], a: [u32; 4], b_desc: u64) {
            unsafe {
                asm!(
                    concat!("{{ .reg .pred p; setp.ne.b32 p, {37}, 0;\n",
                            "wgmma.mma_async.sync.aligned.m64n64k16.f32.", $ty, ".", $ty, " {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}}}, ",
                            "{{{32}, {33}, {34}, {35}}}, {36}, p, 1, 1, 1;\n}}"),
                    inout(reg32) d[0][0],
                    inout(reg32) d[0][1],
                    inout(reg32) d[0][2],
                    inout(reg32) d[0][3],
                    inout(reg32) d[1][0],
                    inout(reg32) d[1][1],
                    inout(reg32) d[1][2],
                    inout(reg32) d[1][3],
                    inout(reg32) d[2][0],
                    inout(reg32) d[2][1],
                    inout(reg32) d[2][2],
                    inout(reg32) d[2][3],
                    inout(reg32) d[3][0],
                    inout(reg32) d[3][1],
                    inout(reg32) d[3][2],
                    inout(reg32) d[3][3],
                    inout(reg32) d[4][0],
                    inout(reg32) d[4][1],
                    inout(reg32) d[4][2],
                    inout(reg32) d[4][3],
                    inout(reg32) d[5][0],
                    inout(reg32) d[5][1],
                    inout(reg32) d[5][2],
                    inout(reg32) d[5][3],
                    inout(reg32) d[6][0],
                    inout(reg32) d[6][1],
                    inout(reg32) d[6][2],
                    inout(reg32) d[6][3],
                    inout(reg32) d[7][0],
                    inout(reg32) d[7][1],
                    inout(reg32) d[7][2],
                    inout(reg32) d[7][3],
                    in(reg32) a[0],
                    in(reg32) a[1],
                    in(reg32) a[2],
                    in(reg32) a[3],
                    in(reg64) b_desc,
                    in(reg32) 1u32,
                    options(nostack),
                );
            }
        }
    };
}
wgmma_m64n64k16_rs!(wgmma_m64n64k16_rs_bf16, "bf16");
wgmma_m64n64k16_rs!(wgmma_m64n64k16_rs_f16, "f16");

macro_rules! wgmma_m64n128k16_rs {
    ($name:ident, $ty:literal) => {
        /// `wgmma.mma_async.sync.aligned.m64n128k16.f32` (sm_90a), A from registers (this warp's
        /// 16 x 16 fragment, the `mma.m16n8k16` A layout), B from shared memory by descriptor,
        /// N-major (`imm-trans-b` = 1): `d += a b`. Asynchronous: read `d` only after
        /// `wgmma_wait_group_0`.
        #[inline(always)]
        pub unsafe fn $name(d: &mut [[f32; 4]; 16], a: [u32; 4], b_desc: u64) {
            unsafe {
                asm!(
                    concat!("{{ .reg .pred p; setp.ne.b32 p, {69}, 0;\n",
                            "wgmma.mma_async.sync.aligned.m64n128k16.f32.", $ty, ".", $ty, " {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}, {32}, {33}, {34}, {35}, {36}, {37}, {38}, {39}, {40}, {41}, {42}, {43}, {44}, {45}, {46}, {47}, {48}, {49}, {50}, {51}, {52}, {53}, {54}, {55}, {56}, {57}, {58}, {59}, {60}, {61}, {62}, {63}}}, ",
                            "{{{64}, {65}, {66}, {67}}}, {68}, p, 1, 1, 1;\n}}"),
                    inout(reg32) d[0][0],
                    inout(reg32) d[0][1],
                    inout(reg32) d[0][2],
                    inout(reg32) d[0][3],
                    inout(reg32) d[1][0],
                    inout(reg32) d[1][1],
                    inout(reg32) d[1][2],
                    inout(reg32) d[1][3],
                    inout(reg32) d[2][0],
                    inout(reg32) d[2][1],
                    inout(reg32) d[2][2],
                    inout(reg32) d[2][3],
                    inout(reg32) d[3][0],
                    inout(reg32) d[3][1],
                    inout(reg32) d[3][2],
                    inout(reg32) d[3][3],
                    inout(reg32) d[4][0],
                    inout(reg32) d[4][1],
                    inout(reg32) d[4][2],
                    inout(reg32) d[4][3],
                    inout(reg32) d[5][0],
                    inout(reg32) d[5][1],
                    inout(reg32) d[5][2],
                    inout(reg32) d[5][3],
                    inout(reg32) d[6][0],
                    inout(reg32) d[6][1],
                    inout(reg32) d[6][2],
                    inout(reg32) d[6][3],
                    inout(reg32) d[7][0],
                    inout(reg32) d[7][1],
                    inout(reg32) d[7][2],
                    inout(reg32) d[7][3],
                    inout(reg32) d[8][0],
                    inout(reg32) d[8][1],
                    inout(reg32) d[8][2],
                    inout(reg32) d[8][3],
                    inout(reg32) d[9][0],
                    inout(reg32) d[9][1],
                    inout(reg32) d[9][2],
                    inout(reg32) d[9][3],
                    inout(reg32) d[10][0],
                    inout(reg32) d[10][1],
                    inout(reg32) d[10][2],
                    inout(reg32) d[10][3],
                    inout(reg32) d[11][0],
                    inout(reg32) d[11][1],
                    inout(reg32) d[11][2],
                    inout(reg32) d[11][3],
                    inout(reg32) d[12][0],
                    inout(reg32) d[12][1],
                    inout(reg32) d[12][2],
                    inout(reg32) d[12][3],
                    inout(reg32) d[13][0],
                    inout(reg32) d[13][1],
                    inout(reg32) d[13][2],
                    inout(reg32) d[13][3],
                    inout(reg32) d[14][0],
                    inout(reg32) d[14][1],
                    inout(reg32) d[14][2],
                    inout(reg32) d[14][3],
                    inout(reg32) d[15][0],
                    inout(reg32) d[15][1],
                    inout(reg32) d[15][2],
                    inout(reg32) d[15][3],
                    in(reg32) a[0],
                    in(reg32) a[1],
                    in(reg32) a[2],
                    in(reg32) a[3],
                    in(reg64) b_desc,
                    in(reg32) 1u32,
                    options(nostack),
                );
            }
        }
    };
}
wgmma_m64n128k16_rs!(wgmma_m64n128k16_rs_bf16, "bf16");
wgmma_m64n128k16_rs!(wgmma_m64n128k16_rs_f16, "f16");

/// `wgmma.mma_async.sync.aligned.m64n256k16.f32` (sm_90a), B from shared memory by descriptor,
/// N-major (`imm-trans-b` = 1): `d += a b`, for this warp's 16 rows of the warpgroup's 64 (the
/// 128 accumulators in the `mma.m16n8` C layout, one `[f32; 4]` per 8 columns). One body, two
/// forms of A: `$a` names the function's A arguments, `$a_tmpl` their place in the instruction
/// (operands from 128), `$a_ops` their asm operands. Asynchronous: read `d` only after a wait.
macro_rules! wgmma_m64n256k16 {
    ($name:ident, $ty:literal, ($($a:ident: $at:ty),*), $a_tmpl:literal, $setp:literal, [$($a_ops:tt)*]) => {
        #[inline(always)]
        pub unsafe fn $name(d: &mut [[f32; 4]; 32], $($a: $at),*) {
            unsafe {
                asm!(
                    concat!("{{ .reg .pred p; setp.ne.b32 p, ", $setp, ", 0;\n",
                            "wgmma.mma_async.sync.aligned.m64n256k16.f32.", $ty, ".", $ty, " {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}, {32}, {33}, {34}, {35}, {36}, {37}, {38}, {39}, {40}, {41}, {42}, {43}, {44}, {45}, {46}, {47}, {48}, {49}, {50}, {51}, {52}, {53}, {54}, {55}, {56}, {57}, {58}, {59}, {60}, {61}, {62}, {63}, {64}, {65}, {66}, {67}, {68}, {69}, {70}, {71}, {72}, {73}, {74}, {75}, {76}, {77}, {78}, {79}, {80}, {81}, {82}, {83}, {84}, {85}, {86}, {87}, {88}, {89}, {90}, {91}, {92}, {93}, {94}, {95}, {96}, {97}, {98}, {99}, {100}, {101}, {102}, {103}, {104}, {105}, {106}, {107}, {108}, {109}, {110}, {111}, {112}, {113}, {114}, {115}, {116}, {117}, {118}, {119}, {120}, {121}, {122}, {123}, {124}, {125}, {126}, {127}}}, ", $a_tmpl, ";\n}}"),
                    inout(reg32) d[0][0],
                    inout(reg32) d[0][1],
                    inout(reg32) d[0][2],
                    inout(reg32) d[0][3],
                    inout(reg32) d[1][0],
                    inout(reg32) d[1][1],
                    inout(reg32) d[1][2],
                    inout(reg32) d[1][3],
                    inout(reg32) d[2][0],
                    inout(reg32) d[2][1],
                    inout(reg32) d[2][2],
                    inout(reg32) d[2][3],
                    inout(reg32) d[3][0],
                    inout(reg32) d[3][1],
                    inout(reg32) d[3][2],
                    inout(reg32) d[3][3],
                    inout(reg32) d[4][0],
                    inout(reg32) d[4][1],
                    inout(reg32) d[4][2],
                    inout(reg32) d[4][3],
                    inout(reg32) d[5][0],
                    inout(reg32) d[5][1],
                    inout(reg32) d[5][2],
                    inout(reg32) d[5][3],
                    inout(reg32) d[6][0],
                    inout(reg32) d[6][1],
                    inout(reg32) d[6][2],
                    inout(reg32) d[6][3],
                    inout(reg32) d[7][0],
                    inout(reg32) d[7][1],
                    inout(reg32) d[7][2],
                    inout(reg32) d[7][3],
                    inout(reg32) d[8][0],
                    inout(reg32) d[8][1],
                    inout(reg32) d[8][2],
                    inout(reg32) d[8][3],
                    inout(reg32) d[9][0],
                    inout(reg32) d[9][1],
                    inout(reg32) d[9][2],
                    inout(reg32) d[9][3],
                    inout(reg32) d[10][0],
                    inout(reg32) d[10][1],
                    inout(reg32) d[10][2],
                    inout(reg32) d[10][3],
                    inout(reg32) d[11][0],
                    inout(reg32) d[11][1],
                    inout(reg32) d[11][2],
                    inout(reg32) d[11][3],
                    inout(reg32) d[12][0],
                    inout(reg32) d[12][1],
                    inout(reg32) d[12][2],
                    inout(reg32) d[12][3],
                    inout(reg32) d[13][0],
                    inout(reg32) d[13][1],
                    inout(reg32) d[13][2],
                    inout(reg32) d[13][3],
                    inout(reg32) d[14][0],
                    inout(reg32) d[14][1],
                    inout(reg32) d[14][2],
                    inout(reg32) d[14][3],
                    inout(reg32) d[15][0],
                    inout(reg32) d[15][1],
                    inout(reg32) d[15][2],
                    inout(reg32) d[15][3],
                    inout(reg32) d[16][0],
                    inout(reg32) d[16][1],
                    inout(reg32) d[16][2],
                    inout(reg32) d[16][3],
                    inout(reg32) d[17][0],
                    inout(reg32) d[17][1],
                    inout(reg32) d[17][2],
                    inout(reg32) d[17][3],
                    inout(reg32) d[18][0],
                    inout(reg32) d[18][1],
                    inout(reg32) d[18][2],
                    inout(reg32) d[18][3],
                    inout(reg32) d[19][0],
                    inout(reg32) d[19][1],
                    inout(reg32) d[19][2],
                    inout(reg32) d[19][3],
                    inout(reg32) d[20][0],
                    inout(reg32) d[20][1],
                    inout(reg32) d[20][2],
                    inout(reg32) d[20][3],
                    inout(reg32) d[21][0],
                    inout(reg32) d[21][1],
                    inout(reg32) d[21][2],
                    inout(reg32) d[21][3],
                    inout(reg32) d[22][0],
                    inout(reg32) d[22][1],
                    inout(reg32) d[22][2],
                    inout(reg32) d[22][3],
                    inout(reg32) d[23][0],
                    inout(reg32) d[23][1],
                    inout(reg32) d[23][2],
                    inout(reg32) d[23][3],
                    inout(reg32) d[24][0],
                    inout(reg32) d[24][1],
                    inout(reg32) d[24][2],
                    inout(reg32) d[24][3],
                    inout(reg32) d[25][0],
                    inout(reg32) d[25][1],
                    inout(reg32) d[25][2],
                    inout(reg32) d[25][3],
                    inout(reg32) d[26][0],
                    inout(reg32) d[26][1],
                    inout(reg32) d[26][2],
                    inout(reg32) d[26][3],
                    inout(reg32) d[27][0],
                    inout(reg32) d[27][1],
                    inout(reg32) d[27][2],
                    inout(reg32) d[27][3],
                    inout(reg32) d[28][0],
                    inout(reg32) d[28][1],
                    inout(reg32) d[28][2],
                    inout(reg32) d[28][3],
                    inout(reg32) d[29][0],
                    inout(reg32) d[29][1],
                    inout(reg32) d[29][2],
                    inout(reg32) d[29][3],
                    inout(reg32) d[30][0],
                    inout(reg32) d[30][1],
                    inout(reg32) d[30][2],
                    inout(reg32) d[30][3],
                    inout(reg32) d[31][0],
                    inout(reg32) d[31][1],
                    inout(reg32) d[31][2],
                    inout(reg32) d[31][3],
                    $($a_ops)*
                    in(reg32) 1u32,
                    options(nostack),
                );
            }
        }
    };
}
// A from registers (this warp's 16 x 16 fragment, the `mma.m16n8k16` A layout).
wgmma_m64n256k16!(wgmma_m64n256k16_rs_bf16, "bf16", (a: [u32; 4], b_desc: u64), "{{{128}, {129}, {130}, {131}}}, {132}, p, 1, 1, 1", "{133}", [in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3], in(reg64) b_desc,]);
wgmma_m64n256k16!(wgmma_m64n256k16_rs_f16, "f16", (a: [u32; 4], b_desc: u64), "{{{128}, {129}, {130}, {131}}}, {132}, p, 1, 1, 1", "{133}", [in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3], in(reg64) b_desc,]);
// A from shared memory by descriptor, K-major (the SS form, `imm-trans-a` = 0): for an A
// operand another warpgroup wrote (no register operand stays in flight but the accumulators).
wgmma_m64n256k16!(wgmma_m64n256k16_ss_tb_bf16, "bf16", (a_desc: u64, b_desc: u64), "{128}, {129}, p, 1, 1, 0, 1", "{130}", [in(reg64) a_desc, in(reg64) b_desc,]);
wgmma_m64n256k16!(wgmma_m64n256k16_ss_tb_f16, "f16", (a_desc: u64, b_desc: u64), "{128}, {129}, p, 1, 1, 0, 1", "{130}", [in(reg64) a_desc, in(reg64) b_desc,]);
