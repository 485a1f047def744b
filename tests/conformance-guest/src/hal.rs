//! Memory for the drivers: a bump allocator over a static arena (never freed: the guest
//! lives for one test), serving both the global allocator and virtio-drivers' DMA pages.
//! Memory is identity-mapped (entry.rs), so a physical address is its virtual address.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// Arena size: rings, buffers and the blk test's pattern buffers.
const ARENA: usize = 8 << 20;

#[repr(C, align(4096))]
struct Arena([u8; ARENA]);

/// In .bss: zero when the guest starts (fresh guest RAM), and never handed out twice.
static mut HEAP: Arena = Arena([0; ARENA]);
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn bump(size: usize, align: usize) -> *mut u8 {
    // Only the address of the static is taken.
    let base = core::ptr::addr_of_mut!(HEAP) as usize;
    let mut cur = NEXT.load(Ordering::Relaxed);
    loop {
        let start = (base + cur).next_multiple_of(align) - base;
        let Some(end) = start.checked_add(size).filter(|&e| e <= ARENA) else {
            return core::ptr::null_mut();
        };
        match NEXT.compare_exchange(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return (base + start) as *mut u8,
            Err(c) => cur = c,
        }
    }
}

struct Bump;

// SAFETY: every allocation is a fresh, aligned, non-overlapping piece of the arena.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump(layout.size(), layout.align())
    }
    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOC: Bump = Bump;

/// The identity-mapped HAL.
pub struct IdHal;

// SAFETY: DMA pages are fresh zeroed arena pages, aligned to PAGE_SIZE, never reused;
// addresses are identity-mapped.
unsafe impl Hal for IdHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let p = bump(pages * PAGE_SIZE, PAGE_SIZE);
        match NonNull::new(p) {
            Some(nn) => (p as PhysAddr, nn),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
