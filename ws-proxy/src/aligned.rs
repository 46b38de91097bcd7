//! glibc's allocator with a fast path for over-aligned blocks.
//!
//! tokio aligns each task and each I/O registration to 128 bytes (a cache line pair), and
//! glibc serves alignments above 16 through `posix_memalign`, which carves the block out of a
//! larger one and frees the rest: about 600 instructions each against about 100 for a small
//! `malloc`, and a session makes four such blocks (its connection's task and registration,
//! the session's task, the upstream's registration). This allocator takes those from `malloc`
//! with room to align them, the distance to the block's start kept in the word before the
//! aligned address; everything else goes to glibc unchanged, so `malloc_trim` and
//! `mallinfo2` ([`crate::trim`]) still see all of it.

use std::alloc::{GlobalAlloc, Layout, System};

/// `malloc`'s own alignment on 64-bit glibc.
const MALLOC_ALIGN: usize = 16;
/// Above this, glibc's own path (rare, and the padding would waste more).
const MAX_ALIGN: usize = 4096;

pub(crate) struct Aligned;

/// Whether `layout` is served by the padded path.
fn padded(layout: &Layout) -> bool {
    layout.align() > MALLOC_ALIGN && layout.align() <= MAX_ALIGN
}

// SAFETY: blocks with alignments up to 16 are `System`'s (glibc's `malloc` family, as Rust's
// `System` uses them for such layouts). A padded block is `malloc(size + align)`: `malloc`
// returns 16-aligned addresses, so the first `align`-aligned address after the start lies 16
// to `align` bytes in, leaving at least a word before it, where the distance back to the start
// is kept; `size` bytes fit after it. `dealloc` finds the start from that word; the same
// layout comes back to it (GlobalAlloc's contract), so it takes the same path.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Aligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !padded(&layout) {
            return unsafe { System.alloc(layout) };
        }
        let Some(total) = layout.size().checked_add(layout.align()) else {
            return std::ptr::null_mut();
        };
        let start = unsafe { libc::malloc(total) }.cast::<u8>();
        if start.is_null() {
            return start;
        }
        let offset = layout.align() - (start as usize & (layout.align() - 1));
        unsafe {
            let aligned = start.add(offset);
            aligned.cast::<usize>().sub(1).write(offset);
            aligned
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !padded(&layout) {
            return unsafe { System.dealloc(ptr, layout) };
        }
        unsafe {
            let offset = ptr.cast::<usize>().sub(1).read();
            libc::free(ptr.sub(offset).cast());
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !padded(&layout) {
            return unsafe { System.alloc_zeroed(layout) };
        }
        let ptr = unsafe { self.alloc(layout) };
        if !ptr.is_null() {
            unsafe { ptr.write_bytes(0, layout.size()) };
        }
        ptr
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !padded(&layout) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn padded_blocks_are_aligned_sized_and_kept_across_realloc() {
        for align in [32, 64, 128, 256, 4096] {
            for size in [1, 24, 128, 1000, 5000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size, as GlobalAlloc asks; each block is freed with its
                // own layout.
                unsafe {
                    let ptr = Aligned.alloc(layout);
                    assert!(!ptr.is_null());
                    assert_eq!(ptr as usize % align, 0, "align {align} size {size}");
                    for i in 0..size {
                        ptr.add(i).write(i as u8);
                    }
                    let grown = Aligned.realloc(ptr, layout, size * 3);
                    assert_eq!(grown as usize % align, 0);
                    for i in 0..size {
                        assert_eq!(grown.add(i).read(), i as u8);
                    }
                    Aligned.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                    let zeroed = Aligned.alloc_zeroed(layout);
                    assert_eq!(zeroed as usize % align, 0);
                    assert!((0..size).all(|i| zeroed.add(i).read() == 0));
                    Aligned.dealloc(zeroed, layout);
                }
            }
        }
    }
}
