//! The paged gather: a query token's request (from `query_start_loc`), and a key's place in
//! the paged cache through the request's block table. Shared by the decode and prefill
//! kernels; the host validated every value they read (block ids inside the cache, lengths).

use crate::intrinsics::div_nz;

#[inline(always)]
pub(crate) unsafe fn ld_i32(p: u64, i: usize) -> i32 {
    unsafe { *(p as *const i32).add(i) }
}

/// The request owning query token `token`: the last `r` with `query_start_loc[r] <= token`.
#[inline(always)]
pub(crate) unsafe fn find_request(query_start_loc: u64, num_seqs: u32, token: u32) -> usize {
    // invariant: qsl[lo] <= token < qsl[hi]
    let (mut lo, mut hi) = (0u32, num_seqs);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if unsafe { ld_i32(query_start_loc, mid as usize) } as u32 <= token {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo as usize
}

/// One request's keys for one kv head in a paged cache `[blocks, block_size, kv heads, d]`.
#[derive(Clone, Copy)]
pub(crate) struct PagedKeys {
    pub block_table: u64,
    /// The request's row of the block table.
    pub bt_row: usize,
    pub block_size_log2: u32,
    pub block_stride: u64,
    pub token_stride: u64,
    /// `kv_head * head_stride`.
    pub head_off: u64,
}

impl PagedKeys {
    /// Elements from the start of the cache to key `key`'s row (this kv head, dim 0): the
    /// physical block from the block table, then the offset inside it.
    #[inline(always)]
    pub fn offset(&self, key: usize) -> usize {
        let phys = unsafe { ld_i32(self.block_table, self.bt_row + (key >> self.block_size_log2)) };
        let in_block = key & ((1usize << self.block_size_log2) - 1);
        (phys as u64 * self.block_stride + in_block as u64 * self.token_stride + self.head_off) as usize
    }

    /// As [`offset`](Self::offset), and also for keys without a block table (`block_table`
    /// 0: a bidirectional layer's own K/V `[tokens, kv heads, d]`, where the key is row
    /// `bt_row + key`, `bt_row` the request's first token). Only the prefill reads such
    /// keys; the decode loops keep the paged-only form, so no branch sits in their copy loop.
    #[inline(always)]
    pub fn offset_or_contiguous(&self, key: usize) -> usize {
        if self.block_table == 0 {
            return ((self.bt_row + key) as u64 * self.token_stride + self.head_off) as usize;
        }
        self.offset(key)
    }
}

/// `key` clamped into `[begin, end)` (`end > begin`): rows outside a query's range copy a
/// valid key and are masked, so no load leaves the request's blocks.
#[inline(always)]
pub(crate) fn clamp_key(key: usize, begin: usize, end: usize) -> usize {
    if key < begin { begin } else if key >= end { end - 1 } else { key }
}

/// Tiles of `tile` keys touching `[begin, end)`: (first tile, count).
#[inline(always)]
pub(crate) fn tile_range(begin: usize, end: usize, tile: usize) -> (usize, usize) {
    let first = div_nz(begin, tile);
    (first, div_nz(end + tile - 1, tile) - first)
}

/// The first key a query at position `pos` sees: the start of its sliding window of `window`
/// keys (itself included; 0 = none) and of its chunk of `chunk` keys (chunked local
/// attention, `pos - pos % chunk`; 0 = none), whichever is later.
#[inline(always)]
pub(crate) fn visible_begin(pos: usize, window: usize, chunk: usize) -> usize {
    let w = if window > 0 && pos + 1 > window { pos + 1 - window } else { 0 };
    let c = if chunk > 0 { pos - pos % chunk } else { 0 };
    if w > c { w } else { c }
}
