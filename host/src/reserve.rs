//! The daemon's memory allocator: the system's, except that an
//! allocation of [`HUGE`] or more takes address space without reserving
//! memory for it (`MAP_NORESERVE`), pages becoming memory only as they are
//! written.
//!
//! tiny_http, when a request is dropped before its body was read (a 413
//! for a body over `--max-body`, say), reads and discards the rest of the
//! body into one buffer as long as the rest the client declared, allocated
//! in one piece before the first byte is read. A client declaring a
//! terabyte would make that allocation fail, and a failed allocation ends
//! the process. lockd shuts such a connection's receiving side first, so
//! the discarding stops at what the kernel already holds; with this
//! allocator the buffer costs only that. (A length past what an address
//! can count fails before allocating, as a panic the worker survives.)

use std::alloc::{GlobalAlloc, Layout, System};

/// The size from which an allocation is a mapping of its own that
/// reserves no memory.
pub const HUGE: usize = 1 << 30;

/// The system allocator, with huge allocations mapped without reserving
/// memory.
pub struct Reserving;

impl Reserving {
    fn map(layout: Layout) -> *mut u8 {
        // Mappings are page-aligned; larger alignments go to the system.
        if layout.align() > 4096 {
            return std::ptr::null_mut();
        }
        // SAFETY: an anonymous private mapping at an address the kernel
        // chooses; no existing memory is touched.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            address.cast()
        }
    }
}

// SAFETY: allocations under HUGE are the system allocator's; those of
// HUGE or more are fresh anonymous mappings (zeroed, page-aligned), and
// are unmapped by the same size rule, as dealloc is given the layout
// they were allocated with.
unsafe impl GlobalAlloc for Reserving {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= HUGE {
            return Self::map(layout);
        }
        // SAFETY: forwarded as given.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= HUGE {
            // Anonymous mappings are zeroed.
            return Self::map(layout);
        }
        // SAFETY: forwarded as given.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= HUGE {
            // SAFETY: a mapping of this size made by `map`.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
            return;
        }
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() < HUGE && new_size < HUGE {
            // SAFETY: forwarded as given.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the new layout is valid as the caller guarantees; the
        // old block is copied up to the smaller size, then freed by the
        // rule it was allocated with.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terabyte_zeroed_costs_only_the_pages_written() {
        let layout = Layout::from_size_align(1 << 40, 1).unwrap();
        // SAFETY: a valid layout; the block is freed with it below.
        unsafe {
            let block = Reserving.alloc_zeroed(layout);
            assert!(!block.is_null());
            assert_eq!(*block.add((1 << 40) - 1), 0);
            *block.add(12345) = 7;
            assert_eq!(*block.add(12345), 7);
            Reserving.dealloc(block, layout);
        }
    }

    #[test]
    fn blocks_growing_past_huge_keep_their_bytes() {
        let layout = Layout::from_size_align(4096, 8).unwrap();
        // SAFETY: valid layouts; each block freed with its own.
        unsafe {
            let small = Reserving.alloc(layout);
            small.write_bytes(9, 4096);
            let big = Reserving.realloc(small, layout, HUGE + 1);
            assert_eq!(*big.add(4095), 9);
            let big_layout = Layout::from_size_align(HUGE + 1, 8).unwrap();
            let back = Reserving.realloc(big, big_layout, 16);
            assert_eq!(*back.add(15), 9);
            Reserving.dealloc(back, Layout::from_size_align(16, 8).unwrap());
        }
    }
}
