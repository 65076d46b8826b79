//! Tasks: what a waker points at, how a wake reaches the run queue (from
//! this thread or another), spawning, aborting and joining.

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use super::{Inner, try_with_inner, with_inner};

/// Wakes that come from other threads.
pub(super) struct Remote {
    pub(super) queue: Mutex<Vec<Arc<Header>>>,
    /// Something is in `queue` that the loop has not taken yet.
    pub(super) pending: AtomicBool,
    pub(super) eventfd: OwnedFd,
}

impl Remote {
    pub(super) fn push(&self, task: Arc<Header>) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
        if !self.pending.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. It
            // cannot fail short of the counter overflowing, which one write
            // per drained queue never reaches.
            unsafe { libc::write(self.eventfd.as_raw_fd(), (&raw const one).cast(), 8) };
        }
    }
}

/// What a waker points at: a task's slot, whether it is queued to run, and
/// the way back to its runtime from another thread.
pub(super) struct Header {
    pub(super) key: usize,
    pub(super) queued: AtomicBool,
    pub(super) aborted: AtomicBool,
    pub(super) remote: Arc<Remote>,
}

impl Wake for Header {
    fn wake(self: Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            schedule(self);
        }
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            schedule(self.clone());
        }
    }
}

/// Queues a task to run: straight onto the run queue from its own thread,
/// through the remote queue and the eventfd from any other.
pub(super) fn schedule(task: Arc<Header>) {
    let mut task = Some(task);
    try_with_inner(|inner| {
        if let Some(t) = task.take_if(|t| Arc::ptr_eq(&t.remote, &inner.remote)) {
            inner.ready.borrow_mut().push_back(t);
        }
    });
    if let Some(t) = task {
        t.remote.clone().push(t);
    }
}

pub(super) struct TaskEntry {
    pub(super) header: Arc<Header>,
    pub(super) waker: Waker,
    /// `None` while it is being polled.
    pub(super) future: Option<Pin<Box<dyn Future<Output = ()>>>>,
}

impl Inner {
    pub(super) fn spawn(&self, future: Pin<Box<dyn Future<Output = ()>>>) -> AbortHandle {
        let mut tasks = self.tasks.borrow_mut();
        let slot = tasks.vacant_entry();
        let header = Arc::new(Header {
            key: slot.key(),
            queued: AtomicBool::new(true),
            aborted: AtomicBool::new(false),
            remote: self.remote.clone(),
        });
        slot.insert(TaskEntry {
            header: header.clone(),
            waker: Waker::from(header.clone()),
            future: Some(future),
        });
        drop(tasks);
        self.ready.borrow_mut().push_back(header.clone());
        AbortHandle { header }
    }

    /// Polls one task once, or drops it if it was aborted. A task that
    /// panics is dropped and the panic logged; the worker goes on.
    pub(super) fn run_task(&self, task: &Arc<Header>) {
        let taken = {
            let mut tasks = self.tasks.borrow_mut();
            match tasks.get_mut(task.key) {
                // The waker is lent, not cloned (an atomic increment and
                // decrement per poll); a noop one stands in meanwhile.
                Some(e) if Arc::ptr_eq(&e.header, task) => e
                    .future
                    .take()
                    .map(|f| (f, std::mem::replace(&mut e.waker, Waker::noop().clone()))),
                _ => None, // finished; a late wake
            }
        };
        let Some((mut future, waker)) = taken else {
            return;
        };
        let pending = !task.aborted.load(Ordering::Acquire) && {
            let mut cx = Context::from_waker(&waker);
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                future.as_mut().poll(&mut cx)
            }));
            if polled.is_err() {
                tracing::error!("a task panicked; it is dropped and the worker goes on");
            }
            matches!(polled, Ok(Poll::Pending))
        };
        if pending {
            if let Some(e) = self.tasks.borrow_mut().get_mut(task.key) {
                e.future = Some(future);
                e.waker = waker;
            }
        } else {
            // Aborted, finished or panicked: its slot goes first, then the
            // future (whose drop may reach the tasks).
            self.tasks.borrow_mut().remove(task.key);
            drop(future);
        }
    }

    pub(super) fn take_remote(&self) {
        if self.remote.pending.swap(false, Ordering::AcqRel) {
            let woken = std::mem::take(
                &mut *self
                    .remote
                    .queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            self.ready.borrow_mut().extend(woken);
        }
    }
}

/// Spawns a task on this thread's runtime and returns a handle to abort it.
pub fn spawn_detached(future: impl Future<Output = ()> + 'static) -> AbortHandle {
    with_inner(|inner| inner.spawn(Box::pin(future)))
}

/// Spawns a task on this thread's runtime; its handle awaits its output.
pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> JoinHandle<T> {
    let slot = Rc::new(RefCell::new(Joined {
        out: None,
        ended: false,
        waker: None,
    }));
    let end = JoinEnd(slot.clone());
    spawn_detached(async move {
        let out = future.await;
        end.0.borrow_mut().out = Some(out);
    });
    JoinHandle { slot }
}

/// Stops a task: it is dropped the next time the runtime would run it.
#[derive(Clone)]
pub struct AbortHandle {
    header: Arc<Header>,
}

impl AbortHandle {
    pub fn abort(&self) {
        self.header.aborted.store(true, Ordering::Release);
        self.header.wake_by_ref();
    }
}

pub struct JoinHandle<T> {
    slot: Rc<RefCell<Joined<T>>>,
}

struct Joined<T> {
    out: Option<T>,
    /// The task is gone, finished or not.
    ended: bool,
    waker: Option<Waker>,
}

/// Owned by the task: marks it ended however it ends, and wakes the joiner.
struct JoinEnd<T>(Rc<RefCell<Joined<T>>>);

impl<T> Drop for JoinEnd<T> {
    fn drop(&mut self) {
        let waker = {
            let mut j = self.0.borrow_mut();
            j.ended = true;
            j.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the task was dropped before it finished (it panicked, or its runtime stopped)")]
pub struct JoinError;

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut j = self.slot.borrow_mut();
        if let Some(out) = j.out.take() {
            return Poll::Ready(Ok(out));
        }
        if j.ended {
            return Poll::Ready(Err(JoinError));
        }
        j.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}
