//! One io_uring operation as a future that owns what its SQE points at.

use std::any::Any;
use std::future::Future;
use std::os::fd::{FromRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use io_uring::squeue;

use super::{Inner, try_with_inner, with_inner};

/// An operation's place in the runtime, by the `user_data` of its SQE.
pub(super) struct Slot {
    waker: Option<Waker>,
    /// `(result, flags)` of the completion, until the future takes it.
    done: Option<(i32, u32)>,
    /// The future was dropped first: what its SQE points at waits here for
    /// the completion, and goes with it (`Some` exactly when orphaned: an
    /// unfinished op always has its data).
    orphan: Option<Box<dyn Any>>,
    /// A non-negative result is a new descriptor (accept): closed if nobody
    /// waits for it any more.
    result_is_fd: bool,
}

/// An operation in flight. Resolves to its data back, the completion's
/// result (a negative errno on failure) and flags.
///
/// Dropped before it completes, it does not cancel the kernel's work (cancel
/// by fd first, then await, where that matters); its data lives on until
/// the completion arrives, and an accepted descriptor is closed.
pub struct Op<D: 'static> {
    key: usize,
    data: Option<Box<D>>,
}

impl<D: 'static> Op<D> {
    /// Queues `sqe` on this thread's ring; it is submitted with the next turn
    /// of the loop.
    ///
    /// # Safety
    /// `sqe` may point only into `*data` (boxed, so it does not move) or at
    /// memory that outlives the runtime.
    pub unsafe fn submit(data: Box<D>, sqe: squeue::Entry, result_is_fd: bool) -> Op<D> {
        with_inner(|inner| {
            let key = inner.ops.borrow_mut().insert(Slot {
                waker: None,
                done: None,
                orphan: None,
                result_is_fd,
            });
            // SAFETY: passed on from the caller; the data stays alive in this
            // Op or, once it is dropped, in its slot until the completion.
            unsafe { inner.push(&sqe.user_data(key as u64)) };
            Op {
                key,
                data: Some(data),
            }
        })
    }
}

impl<D: 'static> Future for Op<D> {
    type Output = (Box<D>, i32, u32);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let done = with_inner(|inner| {
            let mut ops = inner.ops.borrow_mut();
            let slot = &mut ops[self.key];
            match slot.done {
                Some(done) => {
                    ops.remove(self.key);
                    Some(done)
                }
                None => {
                    match &slot.waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => slot.waker = Some(cx.waker().clone()),
                    }
                    None
                }
            }
        });
        match done {
            Some((result, flags)) => {
                let data = self
                    .data
                    .take()
                    .expect("an Op is polled after it completed");
                Poll::Ready((data, result, flags))
            }
            None => Poll::Pending,
        }
    }
}

impl<D: 'static> Drop for Op<D> {
    fn drop(&mut self) {
        let Some(data) = self.data.take() else {
            return; // completed and taken
        };
        let fd = try_with_inner(|inner| {
            let mut ops = inner.ops.borrow_mut();
            match ops[self.key].done {
                // Completed, never taken: it ends here.
                Some((result, _)) => ops.remove(self.key).result_is_fd.then_some(result),
                None => {
                    let slot = &mut ops[self.key];
                    slot.waker = None;
                    slot.orphan = Some(data as Box<dyn Any>);
                    None
                }
            }
        });
        close_if_fd(fd.flatten());
    }
}

/// Delivers a completion to its operation.
pub(super) fn complete(inner: &Inner, key: usize, result: i32, flags: u32) {
    let (waker, fd) = {
        let mut ops = inner.ops.borrow_mut();
        let Some(slot) = ops.get_mut(key) else {
            return;
        };
        if slot.orphan.is_some() {
            let slot = ops.remove(key);
            (None, slot.result_is_fd.then_some(result))
        } else {
            slot.done = Some((result, flags));
            (slot.waker.take(), None)
        }
    };
    close_if_fd(fd);
    if let Some(w) = waker {
        w.wake();
    }
}

fn close_if_fd(result: Option<i32>) {
    if let Some(fd) = result.filter(|&fd| fd >= 0) {
        // SAFETY: a non-negative accept result is a descriptor the kernel
        // gave to us alone, and nobody took it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}
