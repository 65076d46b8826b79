//! ringlb's own per-core runtime: one thread, one io_uring ring, tasks that
//! never leave the thread.
//!
//! What it does that a general io_uring runtime (tokio-uring, on an epoll
//! reactor) does not:
//!
//! - it waits in `io_uring_enter` itself, not in `epoll_wait` on the ring's
//!   fd, so the ring can be set up `SINGLE_ISSUER | DEFER_TASKRUN`: the
//!   kernel runs completion work in one batch when the loop asks for events,
//!   never as an interruption of some other system call;
//! - one `io_uring_enter` per turn of the loop submits every SQE the tasks
//!   queued and collects every completion, for all connections at once;
//! - tasks are plain boxed futures in a slab with a run queue, no budget, no
//!   shared scheduler;
//! - an operation dropped in flight keeps what its SQE points at alive until
//!   its completion arrives, and an accepted socket that nobody waits for any
//!   more is closed, not leaked.
//!
//! Timers are a `BTreeMap` by deadline ([`time`]); wakes from other threads
//! (the control plane's commands) go through a mutex-guarded queue and an
//! eventfd the ring keeps a read armed on. Wakes from the worker's own thread,
//! all of the data path's, take no lock.

mod bufs;
pub mod op;
mod task;
pub mod time;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, squeue, types};
use slab::Slab;

pub use bufs::{BufRing, GROUP as BUFFER_GROUP};
pub use op::{Multishot, Op};
pub use task::{AbortHandle, JoinError, JoinHandle, spawn, spawn_detached};
use task::{Header, Remote, TaskEntry};

/// SQEs (and twice as many CQEs) per ring.
const RING_ENTRIES: u32 = 1024;
/// `user_data` of the eventfd read that wakes the loop for other threads.
const WAKE_TOKEN: u64 = u64::MAX;
/// `user_data` of the cancel-everything SQE sent when the runtime stops.
const TEARDOWN_TOKEN: u64 = u64::MAX - 1;
/// `IORING_ENTER_GETEVENTS` (io-uring 0.6 keeps its `sys` module private).
const ENTER_GETEVENTS: u32 = 1;

thread_local! {
    /// The runtime running on this thread, set by [`Enter`]. A plain pointer
    /// with no destructor: every op, timer and wake reads it, and this is
    /// the cheapest thread-local there is.
    static CONTEXT: Cell<*const Inner> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` with the runtime of this thread. Panics off a runtime thread: the
/// data path's types are only ever built on one.
fn with_inner<R>(f: impl FnOnce(&Inner) -> R) -> R {
    try_with_inner(f).expect("ringlb::rt used outside a worker runtime (call Runtime::block_on)")
}

/// Like [`with_inner`], but `None` when no runtime runs here (a drop after
/// the runtime is gone).
fn try_with_inner<R>(f: impl FnOnce(&Inner) -> R) -> Option<R> {
    let inner = CONTEXT.with(Cell::get);
    // SAFETY: a non-null pointer was set by an `Enter` that holds an `Rc` to
    // that `Inner` and puts the previous pointer back when dropped, so it
    // points at a live `Inner` for as long as it is set.
    unsafe { inner.as_ref() }.map(f)
}

/// One worker's runtime. Build it on the thread that will run it: the ring is
/// `SINGLE_ISSUER`, bound to its creator.
pub struct Runtime {
    inner: Rc<Inner>,
}

struct Inner {
    ring: RefCell<IoUring>,
    ops: RefCell<Slab<op::Slot>>,
    multis: RefCell<Slab<op::MultiSlot>>,
    /// The provided buffers receives select from, if set up.
    bufs: Option<BufRing>,
    timers: RefCell<time::Timers>,
    tasks: RefCell<Slab<TaskEntry>>,
    ready: RefCell<VecDeque<Arc<Header>>>,
    remote: Arc<Remote>,
    /// Where the eventfd read lands; boxed so its address holds while armed.
    wake_buf: RefCell<Box<u64>>,
    /// The eventfd read is in the ring.
    wake_armed: Cell<bool>,
    /// Completions taken from the ring in one go, kept to reuse its memory.
    reaped: RefCell<Vec<(u64, i32, u32)>>,
    /// How the ring was set up, for logs and tests.
    mode: RingMode,
    /// The time when the loop last came back from the kernel: what the data
    /// path reads instead of the clock ([`time::now`]).
    now: Cell<Instant>,
}

/// Which of the ring set-ups the kernel took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingMode {
    /// `SINGLE_ISSUER | DEFER_TASKRUN` (Linux 6.1 and later).
    DeferTaskrun,
    /// `COOP_TASKRUN` (Linux 5.19 and later).
    CoopTaskrun,
    /// Neither.
    Plain,
}

impl Runtime {
    /// Sets up the ring: `SINGLE_ISSUER | DEFER_TASKRUN` where the kernel has
    /// it, else `COOP_TASKRUN`, else plain. No provided buffers.
    pub fn new() -> io::Result<Runtime> {
        Runtime::with_buffers(0, 0)
    }

    /// Like [`Runtime::new`], with a ring of `count` provided buffers of
    /// `size` bytes each ([`BufRing`]; `count` a power of two, 0 for none).
    /// A kernel that cannot register one (before Linux 5.19) leaves the
    /// runtime without: [`with_bufs`] says so, and receives go by system call.
    pub fn with_buffers(count: u16, size: u32) -> io::Result<Runtime> {
        if count != 0 && !bufs::valid_count(count) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a buffer ring holds a power of two of buffers, at most 32768",
            ));
        }
        let (ring, mode) = new_ring()?;
        // Whatever the kernel says (EINVAL before Linux 5.19 included), the
        // runtime goes on without: receives then go by system call.
        let bufs = match count {
            0 => None,
            _ => BufRing::register(&ring, count, size)
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "cannot register provided buffers; receiving by system call");
                })
                .ok(),
        };
        // SAFETY: eventfd either fails or returns a new descriptor we own.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor from eventfd, owned by nobody else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        let inner = Rc::new(Inner {
            ring: RefCell::new(ring),
            ops: RefCell::new(Slab::with_capacity(256)),
            multis: RefCell::new(Slab::with_capacity(256)),
            bufs,
            timers: RefCell::new(time::Timers::default()),
            tasks: RefCell::new(Slab::with_capacity(256)),
            ready: RefCell::new(VecDeque::with_capacity(256)),
            remote: Arc::new(Remote {
                queue: Mutex::new(Vec::new()),
                pending: AtomicBool::new(false),
                eventfd,
            }),
            wake_buf: RefCell::new(Box::new(0)),
            wake_armed: Cell::new(false),
            reaped: RefCell::new(Vec::with_capacity(256)),
            mode,
            now: Cell::new(Instant::now()),
        });
        inner.arm_wake();
        Ok(Runtime { inner })
    }

    pub fn mode(&self) -> RingMode {
        self.inner.mode
    }

    /// Runs `fut` and every task spawned meanwhile until `fut` completes.
    /// Tasks still running then stay (a later `block_on` runs them) until
    /// the runtime is dropped.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        let _enter = Enter::new(&self.inner);
        let inner = &*self.inner;
        inner.now.set(Instant::now());
        let main = Arc::new(Header {
            key: usize::MAX,
            queued: AtomicBool::new(true),
            aborted: AtomicBool::new(false),
            remote: inner.remote.clone(),
        });
        let waker = Waker::from(main.clone());
        let mut cx = Context::from_waker(&waker);
        let mut fut = pin!(fut);
        inner.ready.borrow_mut().push_back(main.clone());
        loop {
            // Run what is queued now; tasks woken meanwhile wait a turn, so
            // completions are collected between batches.
            let batch = inner.ready.borrow().len();
            for _ in 0..batch {
                let Some(task) = inner.ready.borrow_mut().pop_front() else {
                    break;
                };
                task.queued.store(false, Ordering::Release);
                if Arc::ptr_eq(&task, &main) {
                    if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                        return out;
                    }
                } else {
                    inner.run_task(&task);
                }
            }
            inner.take_remote();
            // Nothing left to run: wait for a completion or the next timer.
            let wait = if inner.ready.borrow().is_empty() {
                Wait::until(inner.timers.borrow().next_deadline())
            } else {
                Wait::No
            };
            inner.enter(wait);
            inner.reap();
            inner.fire_timers();
        }
    }
}

impl Drop for Runtime {
    /// Drops every task (their sockets close), then cancels what is left in
    /// the ring and waits (at most a second) until the kernel has let go of
    /// every buffer an SQE points at.
    fn drop(&mut self) {
        let _enter = Enter::new(&self.inner);
        let inner = &*self.inner;
        // A dropped task can wake or spawn others; a few passes settle it.
        for _ in 0..4 {
            let futures: Vec<_> = inner
                .tasks
                .borrow_mut()
                .drain()
                .filter_map(|t| t.future)
                .collect();
            if futures.is_empty() {
                break;
            }
            drop(futures);
        }
        inner.ready.borrow_mut().clear();
        inner
            .remote
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(TEARDOWN_TOKEN);
        // SAFETY: the SQE points at nothing.
        unsafe { inner.push(&cancel) };
        let give_up = Instant::now() + Duration::from_secs(1);
        while inner.in_flight() && Instant::now() < give_up {
            inner.enter(Wait::For(Duration::from_millis(10)));
            inner.reap();
        }
        if inner.in_flight() {
            // The kernel may still write into what these ops own: leak it
            // rather than free it under the kernel.
            tracing::warn!(
                ops = inner.ops.borrow().len(),
                "io_uring ops still in flight after a second; their buffers are leaked"
            );
            std::mem::forget(std::mem::take(&mut *inner.ops.borrow_mut()));
            std::mem::forget(std::mem::take(&mut *inner.multis.borrow_mut()));
            // The kernel may still fill a provided buffer, too.
            if let Some(bufs) = inner.bufs.as_ref() {
                bufs.leak();
            }
            std::mem::forget(std::mem::replace(
                &mut *inner.wake_buf.borrow_mut(),
                Box::new(0),
            ));
        }
    }
}

/// How long [`Inner::enter`] may wait for a completion.
enum Wait {
    No,
    For(Duration),
    Forever,
}

impl Wait {
    /// Until `deadline` (`None`: no limit); one already passed is no wait.
    fn until(deadline: Option<Instant>) -> Wait {
        let Some(at) = deadline else {
            return Wait::Forever;
        };
        match at.checked_duration_since(Instant::now()) {
            Some(d) if !d.is_zero() => Wait::For(d),
            _ => Wait::No,
        }
    }
}

/// Makes a runtime this thread's current one, keeping it alive, and puts
/// back whatever was current before when dropped.
struct Enter {
    _current: Rc<Inner>,
    previous: *const Inner,
}

impl Enter {
    fn new(inner: &Rc<Inner>) -> Enter {
        let previous = CONTEXT.with(|c| c.replace(Rc::as_ptr(inner)));
        Enter {
            _current: inner.clone(),
            previous,
        }
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        CONTEXT.with(|c| c.set(self.previous));
    }
}

/// `DEFER_TASKRUN`: completion work runs only when the loop asks for events,
/// in one batch (with `SINGLE_ISSUER`, which it requires). `COOP_TASKRUN`,
/// the fallback for kernels before 6.1, at least keeps completions from
/// interrupting the worker's system calls as signal-like task work.
fn new_ring() -> io::Result<(IoUring, RingMode)> {
    let defer = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(RING_ENTRIES);
    if let Ok(ring) = defer {
        return Ok((ring, RingMode::DeferTaskrun));
    }
    let coop = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(RING_ENTRIES);
    if let Ok(ring) = coop {
        return Ok((ring, RingMode::CoopTaskrun));
    }
    Ok((IoUring::new(RING_ENTRIES)?, RingMode::Plain))
}

impl Inner {
    /// Queues one SQE, submitting what is queued first if the ring is full.
    ///
    /// # Safety
    /// Whatever `sqe` points at must stay valid until its completion is reaped.
    unsafe fn push(&self, sqe: &squeue::Entry) {
        for _ in 0..64 {
            let submitted = {
                let mut ring = self.ring.borrow_mut();
                // SAFETY: passed on from the caller.
                if unsafe { ring.submission().push(sqe) }.is_ok() {
                    return;
                }
                ring.submit()
            };
            if let Err(e) = submitted
                && e.raw_os_error() != Some(libc::EINTR)
            {
                // The completion queue is full: take completions off it.
                self.reap();
            }
        }
        panic!("io_uring submission queue stays full");
    }

    /// Submits queued SQEs and has the kernel post completions, waiting as
    /// `wait` says for at least one.
    fn enter(&self, wait: Wait) {
        let mut ring = self.ring.borrow_mut();
        let result = match wait {
            Wait::Forever => ring.submit_and_wait(1),
            Wait::For(timeout) => {
                let ts = types::Timespec::from(timeout);
                let args = types::SubmitArgs::new().timespec(&ts);
                ring.submitter().submit_with_args(1, &args)
            }
            Wait::No => {
                let queued = ring.submission().len() as u32;
                // SAFETY: no argument; GETEVENTS without a minimum only runs
                // the deferred completion work and returns.
                unsafe {
                    ring.submitter()
                        .enter::<libc::sigset_t>(queued, 0, ENTER_GETEVENTS, None)
                }
            }
        };
        match result {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => tracing::warn!(error = %e, "io_uring_enter failed"),
        }
    }

    /// Hands every completion in the ring to its operation.
    fn reap(&self) {
        let mut reaped = std::mem::take(&mut *self.reaped.borrow_mut());
        loop {
            reaped.clear();
            {
                let mut ring = self.ring.borrow_mut();
                reaped.extend(
                    ring.completion()
                        .map(|c| (c.user_data(), c.result(), c.flags())),
                );
            }
            if reaped.is_empty() {
                break;
            }
            for &(user_data, result, flags) in &reaped {
                match user_data {
                    WAKE_TOKEN => self.woken(result),
                    TEARDOWN_TOKEN => {}
                    key if key & op::MULTI != 0 => {
                        op::complete_multi(self, (key & !op::MULTI) as usize, result, flags);
                    }
                    key => op::complete(self, key as usize, result, flags),
                }
            }
        }
        *self.reaped.borrow_mut() = reaped;
    }

    fn fire_timers(&self) {
        let now = Instant::now();
        self.now.set(now);
        loop {
            // One at a time: a waker may not run code that reaches the timers
            // while they are borrowed.
            let Some(waker) = self.timers.borrow_mut().pop_due(now) else {
                break;
            };
            waker.wake();
        }
    }

    /// Arms a read of the eventfd that other threads write to wake the loop.
    fn arm_wake(&self) {
        let mut buf = self.wake_buf.borrow_mut();
        let sqe = opcode::Read::new(
            types::Fd(self.remote.eventfd.as_raw_fd()),
            (&raw mut **buf).cast(),
            8,
        )
        .build()
        .user_data(WAKE_TOKEN);
        drop(buf);
        // SAFETY: the buffer is boxed in `Inner`, which outlives the ring's
        // last completion (dropping the runtime reaps everything first).
        unsafe { self.push(&sqe) };
        self.wake_armed.set(true);
    }

    fn woken(&self, result: i32) {
        self.wake_armed.set(false);
        if result == -libc::ECANCELED {
            return; // the runtime is stopping
        }
        self.take_remote();
        self.arm_wake();
    }

    /// Operations the kernel may still write into, the wake read included.
    fn in_flight(&self) -> bool {
        !self.ops.borrow().is_empty() || !self.multis.borrow().is_empty() || self.wake_armed.get()
    }
}

/// Gives provided buffer `bid` back to this thread's ring (a no-op off a
/// runtime, or on one without buffers).
pub fn give_back(bid: u16) {
    try_with_inner(|inner| {
        if let Some(bufs) = &inner.bufs {
            bufs.give_back(bid);
        }
    });
}

/// Runs `f` with this thread's provided buffers (`None` when it has none).
pub fn with_bufs<R>(f: impl FnOnce(Option<&BufRing>) -> R) -> R {
    with_inner(|inner| f(inner.bufs.as_ref()))
}

#[cfg(test)]
mod tests;
