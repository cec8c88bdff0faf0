//! Shared-memory tiles of 16-bit rows, in 16-byte chunks XOR-swizzled by row, and the
//! per-lane `ldmatrix` addressing of the m16n8k16 operands read from them; the loads that
//! fill them from global memory; Hopper's 128-byte-swizzle tiles and their descriptors.
//!
//! Chunk `c` of row `r` lives at `r * row_bytes + (c ^ (r % 8)) * 16` (rows take a multiple
//! of 8 chunks: a power of two, `params::smem_row_chunks`, or MLA's 72; the XOR moves a chunk
//! only inside its group of 8): the 8 rows one `ldmatrix` matrix reads hit 8 distinct bank
//! groups.

use crate::intrinsics::{ld_global_nc_v4, st_shared_v4, V4};

/// Copies a tile of `rows` x `chunks` 16-byte chunks from global into shared memory, the
/// block's `threads` threads striding over it (`tid` is this one): chunk `c` of row `m` comes
/// from `row(m)` (the row's first element; `None`: zeros, for rows outside the tile) and
/// goes to the shared-window address `at(m, c)`. The caller makes the stores visible (a
/// barrier, and a proxy fence for wgmma readers).
#[inline(always)]
pub unsafe fn load_tile(tid: usize, threads: usize, rows: usize, chunks: usize, row: impl Fn(usize) -> Option<*const u16>, at: impl Fn(usize, usize) -> u32) {
    unsafe { load_tile_with(tid, threads, rows, chunks, row, at, |v| v) }
}

/// [`load_tile`] with a thread's loads going out `LOAD_BATCH` at a time before their stores,
/// so that it waits for one memory latency a batch instead of one a chunk (24 registers
/// more: the Hopper prefill's Q tile, loaded before its registers are split).
#[inline(always)]
pub unsafe fn load_tile_batched(tid: usize, threads: usize, rows: usize, chunks: usize, row: impl Fn(usize) -> Option<*const u16>, at: impl Fn(usize, usize) -> u32) {
    let total = rows * chunks;
    let mut first = tid;
    while first < total {
        let mut v = [V4::ZERO; LOAD_BATCH];
        for (k, v) in v.iter_mut().enumerate() {
            let u = first + k * threads;
            if u < total {
                if let Some(src) = row(u / chunks) {
                    *v = unsafe { ld_global_nc_v4(src.add(8 * (u % chunks))) };
                }
            }
        }
        for (k, v) in v.iter().enumerate() {
            let u = first + k * threads;
            if u < total {
                unsafe { st_shared_v4(at(u / chunks, u % chunks), *v) };
            }
        }
        first += LOAD_BATCH * threads;
    }
}

/// Chunks a thread of [`load_tile_batched`] has in flight.
const LOAD_BATCH: usize = 6;

/// [`load_tile`] with each loaded chunk passed through `map` (a conversion of its words).
#[inline(always)]
pub unsafe fn load_tile_with(tid: usize, threads: usize, rows: usize, chunks: usize, row: impl Fn(usize) -> Option<*const u16>, at: impl Fn(usize, usize) -> u32, map: impl Fn(V4) -> V4) {
    let mut u = tid;
    while u < rows * chunks {
        let (m, c) = (u / chunks, u % chunks);
        let v = match row(m) {
            Some(src) => map(unsafe { ld_global_nc_v4(src.add(8 * c)) }),
            None => V4::ZERO,
        };
        unsafe { st_shared_v4(at(m, c), v) };
        u += threads;
    }
}

/// Byte offset of chunk `c` of row `r` in a swizzled tile with rows of `row_bytes`.
#[inline(always)]
pub const fn swizzled(r: usize, c: usize, row_bytes: usize) -> usize {
    r * row_bytes + ((c ^ (r % 8)) * 16)
}

/// A lane's `ldmatrix.x4` addressing in swizzled tiles. Every row a lane addresses is
/// `lane % 8` modulo 8, so chunk `2 k + half` of it is at byte
/// `((half ^ lane % 8) * 16) ^ (32 k)` of the row: a lane constant XOR a compile-time one.
/// - A-like operands (Q; V read transposed as the B of `P V`): matrices (rows 0-7, chunk
///   2k), (rows 8-15, 2k), (rows 0-7, 2k+1), (rows 8-15, 2k+1);
/// - K as the B of `Q K^T`: (keys 0-7, chunk 2k), (keys 0-7, 2k+1), (keys 8-15, 2k),
///   (keys 8-15, 2k+1).
#[derive(Clone, Copy)]
pub struct LdmLane {
    /// Byte offset of this lane's row in a 16-row A-like group, and its chunk XOR.
    pub a_row: u32,
    pub a_x: u32,
    /// The same for K's B operand.
    pub b_row: u32,
    pub b_x: u32,
}

impl LdmLane {
    #[inline(always)]
    pub fn new(lane: usize, row_bytes: usize) -> Self {
        let (x8, rb) = ((lane % 8) as u32, row_bytes as u32);
        LdmLane {
            a_row: ((((lane / 8) % 2) * 8 + lane % 8) as u32) * rb,
            a_x: (((lane / 16) as u32) ^ x8) * 16,
            b_row: ((((lane / 16) * 8 + lane % 8) as u32)) * rb,
            b_x: ((((lane / 8) % 2) as u32) ^ x8) * 16,
        }
    }

    /// A-like operand at k-step `k` of a 16-row group starting at `rows` (shared-window
    /// address of the group's first row).
    #[inline(always)]
    pub fn a(&self, rows: u32, k: usize) -> u32 {
        rows + self.a_row + (self.a_x ^ (32 * k as u32))
    }

    /// The chunk offset `x ^ 32 k` of a lane XOR `x` (< 128) at k-step `k`, as a lane value
    /// of four (`k % 4`) plus a compile-time `128 (k / 4)`: for wide rows (MLA's 36
    /// k-steps) the registers hold the four, the rest folds into the instruction.
    #[inline(always)]
    pub fn xor_k(x: [u32; 4], k: usize) -> u32 {
        x[k % 4] + 128 * (k / 4) as u32
    }

    /// `x ^ 32 q` for q in 0..4: the lane values `xor_k` adds to.
    #[inline(always)]
    pub fn xor_table(x: u32) -> [u32; 4] {
        [x, x ^ 32, x ^ 64, x ^ 96]
    }
}

/// Byte offset of 16-byte chunk `c` of row `r` in a tile of `rows` rows laid out for
/// Hopper's 128-byte swizzle (wgmma's `SWIZZLE_128B` operands): 64-column slabs of the row
/// (chunks `8 s .. 8 s + 8`) one after the other, each `rows x 128` bytes, chunk `c % 8` of
/// row `r` at `(c % 8) ^ (r % 8)` within the row's 128 bytes. The tile must start on 1024
/// bytes (the pattern's period) for the hardware's view to agree.
#[inline(always)]
pub const fn sw128(r: usize, c: usize, rows: usize) -> usize {
    (c / 8) * rows * 128 + r * 128 + (((c % 8) ^ (r % 8)) * 16)
}

/// A wgmma shared-memory matrix descriptor for a `sw128` tile: start address, leading and
/// stride byte offsets (16-byte units), 128-byte swizzle (mode 1 in bits 62-63), base
/// offset 0 (operands start on the pattern's 8-row boundary). K-major operands (Q, K):
/// `lbo` unused, `sbo` = 1024 (the next 8 rows); N-major (V, transposed): `lbo` = the slab
/// stride (the next 64 columns), `sbo` = 1024 (the next 8 keys).
#[inline(always)]
pub const fn sw128_desc(addr: u32, lbo: u32, sbo: u32) -> u64 {
    (((addr & 0x3FFFF) >> 4) as u64) | ((((lbo & 0x3FFFF) >> 4) as u64) << 16) | ((((sbo & 0x3FFFF) >> 4) as u64) << 32) | (1u64 << 62)
}

/// The descriptor of the operand `bytes` (a multiple of 16) past `desc`'s: the start address
/// field (bits 0-13, 16-byte units) plus `bytes / 16`, which carries nothing into the next
/// field while the operand ends below 256 KiB of shared memory (every tile here does).
#[inline(always)]
pub const fn desc_advance(desc: u64, bytes: u32) -> u64 {
    desc + (bytes >> 4) as u64
}
