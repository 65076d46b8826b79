//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19): equal
//! buffers the kernel picks from only when a receive has bytes to put in one.
//! A receive armed on an idle connection therefore holds no buffer: a worker
//! keeps one ring however many connections wait, and a buffer is lent only
//! from the completion that filled it until its bytes have been sent on.
//!
//! Both regions are anonymous mappings, so a buffer costs memory only once
//! the kernel has written into it.

use std::cell::Cell;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// The buffer group ringlb's receives select from.
pub const GROUP: u16 = 0;

pub struct BufRing {
    /// `entries` ring slots the kernel reads buffers from.
    slots: Mapping,
    /// The buffers themselves, `size` bytes each, by buffer id.
    memory: Mapping,
    entries: u16,
    size: u32,
    /// Where the next buffer given back goes (the kernel keeps the head).
    tail: Cell<u16>,
    /// Buffers the kernel has handed out and nobody has given back yet.
    lent: Cell<usize>,
    /// Buffers the kernel has handed out so far.
    handed_out: Cell<u64>,
    /// Receives that found no buffer free (`ENOBUFS`).
    starved: Cell<u64>,
    /// The kernel may still write into the buffers: never unmap them.
    leaked: Cell<bool>,
}

impl BufRing {
    /// Maps `entries` buffers of `size` bytes and registers them with `ring`
    /// as group [`GROUP`]. `entries` must be a power of two up to 32768.
    pub(super) fn register(ring: &IoUring, entries: u16, size: u32) -> io::Result<BufRing> {
        assert!(valid_count(entries), "{entries} buffers: see valid_count");
        let slots = Mapping::new(usize::from(entries) * size_of::<BufRingEntry>())?;
        let memory = Mapping::new(usize::from(entries) * size as usize)?;
        let bufs = BufRing {
            slots,
            memory,
            entries,
            size,
            tail: Cell::new(0),
            lent: Cell::new(0),
            handed_out: Cell::new(0),
            starved: Cell::new(0),
            leaked: Cell::new(false),
        };
        // SAFETY: the slots stay mapped until this BufRing is dropped, and
        // the runtime unregisters the group (or leaks this) before that.
        unsafe {
            ring.submitter()
                .register_buf_ring(bufs.slots.ptr.as_ptr() as u64, entries, GROUP)?;
        }
        for bid in 0..entries {
            bufs.push(bid);
        }
        Ok(bufs)
    }

    pub fn size(&self) -> usize {
        self.size as usize
    }

    /// Buffers the kernel handed out that are not back yet.
    pub fn lent(&self) -> usize {
        self.lent.get()
    }

    /// Buffers the kernel has handed out so far, one per ring receive that
    /// brought bytes.
    pub fn handed_out(&self) -> u64 {
        self.handed_out.get()
    }

    /// Receives so far that found no buffer free: each went on by system
    /// call instead. Often means the ring is too small for the load.
    pub fn starved(&self) -> u64 {
        self.starved.get()
    }

    /// The bytes of buffer `bid`.
    ///
    /// # Safety
    /// The kernel handed `bid` out (a completion named it) and it has not
    /// been given back since, so the kernel does not write into it.
    pub unsafe fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.entries && len <= self.size as usize);
        let at = usize::from(bid) * self.size as usize;
        // SAFETY: in bounds (checked above) of a mapping that lives as long
        // as `self`; the caller says the kernel is not writing into it.
        unsafe { std::slice::from_raw_parts(self.memory.ptr.as_ptr().add(at), len) }
    }

    /// Puts buffer `bid` back in the ring for the kernel to fill again. Each
    /// buffer a completion named must come back exactly once.
    pub fn give_back(&self, bid: u16) {
        self.push(bid);
        self.lent.set(self.lent.get() - 1);
    }

    /// Puts buffer `bid` in the ring.
    fn push(&self, bid: u16) {
        debug_assert!(bid < self.entries);
        let tail = self.tail.get();
        let mask = self.entries - 1;
        let base = self.slots.ptr.as_ptr().cast::<BufRingEntry>();
        // SAFETY: the slot at `tail & mask` is one the kernel has consumed
        // (at most `entries` buffers are ever in the ring, and this one was
        // out), so it does not read it now; it lies within the mapping.
        unsafe {
            let slot = &mut *base.add(usize::from(tail & mask));
            slot.set_addr(self.memory.ptr.as_ptr() as u64 + u64::from(bid) * u64::from(self.size));
            slot.set_len(self.size);
            slot.set_bid(bid);
        }
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: the tail lives in the first slot's reserved field, which
        // the kernel reads; the release store publishes the slot above.
        unsafe {
            let at = BufRingEntry::tail(base).cast_mut();
            (*at.cast::<AtomicU16>()).store(tail, Ordering::Release);
        }
    }

    /// Keeps both mappings for the life of the process: the runtime stopped
    /// with receives the kernel may still complete.
    pub(super) fn leak(&self) {
        self.leaked.set(true);
    }

    /// The kernel handed out `bid` (a completion named it).
    pub(super) fn taken(&self) {
        self.lent.set(self.lent.get() + 1);
        self.handed_out.set(self.handed_out.get() + 1);
    }

    pub(super) fn note_starved(&self) {
        self.starved.set(self.starved.get() + 1);
    }
}

/// What the kernel takes for one ring: a power of two up to 32768.
pub(super) fn valid_count(entries: u16) -> bool {
    entries.is_power_of_two() && entries <= 1 << 15
}

/// An anonymous, private, read-write mapping.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).expect("mmap returned a mapping"),
            len,
        })
    }
}

impl Mapping {
    /// # Safety
    /// Nothing refers into the mapping any more, the kernel included.
    unsafe fn unmap(&self) {
        // SAFETY: unmaps exactly what `new` mapped; the caller vouches for
        // the rest.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leaked.get() {
            return;
        }
        // SAFETY: the runtime drops its BufRing after every operation has
        // completed (or marks it leaked), and `bytes` borrows end with
        // `&self`.
        unsafe {
            self.slots.unmap();
            self.memory.unmap();
        }
    }
}
