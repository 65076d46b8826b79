//! One io_uring operation as a future that owns what its SQE points at
//! ([`Op`], [`Multishot`]), and the operations ringlb submits, one file per
//! opcode: accept, connect, poll, multishot receive and cancel.
//!
//! Each op owns what its SQE points at (boxed, so it does not move), and the
//! runtime keeps that alive until the completion arrives even if the op is
//! dropped first. Dropping an op does not cancel the kernel's work, though:
//! a connect would hold its socket until it gives up. So callers that give
//! up call [`cancel_fd`] and then await the operation to completion.

mod accept;
mod cancel;
mod connect;
mod poll;
mod recv;

pub use accept::{Accept, accept};
pub use cancel::cancel_fd;
pub use connect::{Connect, connect};
pub use poll::{PollOp, poll};
pub use recv::recv_multi;

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::{FromRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use io_uring::{cqueue, opcode, squeue};

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

/// `user_data` bit that marks a multishot operation's key.
pub(super) const MULTI: u64 = 1 << 62;

/// A multishot operation's place in the runtime: its completions queue here
/// until the future takes them.
pub(super) struct MultiSlot {
    waker: Option<Waker>,
    queue: VecDeque<(i32, u32)>,
    /// The last completion (one without `IORING_CQE_F_MORE`) is queued.
    finished: bool,
    /// The future was dropped first: completions are discarded (their
    /// buffers given back) until the last one.
    orphan: bool,
}

/// A multishot operation in flight (a receive that stays armed): a stream of
/// completions, each `(result, flags)`, ending with one that lacks
/// `IORING_CQE_F_MORE`. A completion that selected a provided buffer holds
/// it until it is given back ([`super::give_back`]); dropping the operation
/// gives back what it holds, cancels it, and gives back whatever the kernel
/// still completes.
pub struct Multishot {
    /// The slab key; 32 bits, so an idle connection's two receives cost 16
    /// bytes, not 32.
    key: u32,
    cancelled: bool,
}

impl Multishot {
    /// Queues `sqe` (which must be a multishot SQE) on this thread's ring.
    ///
    /// # Safety
    /// `sqe` may point only at memory that outlives the runtime.
    pub unsafe fn submit(sqe: squeue::Entry) -> Multishot {
        with_inner(|inner| {
            let key = inner.multis.borrow_mut().insert(MultiSlot {
                waker: None,
                queue: VecDeque::new(),
                finished: false,
                orphan: false,
            });
            // SAFETY: passed on from the caller.
            unsafe { inner.push(&sqe.user_data(MULTI | key as u64)) };
            Multishot {
                key: u32::try_from(key).expect("fewer than 2^32 receives in flight"),
                cancelled: false,
            }
        })
    }

    /// The next completion; `None` once the last has been taken.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(i32, u32)>> {
        with_inner(|inner| {
            let mut multis = inner.multis.borrow_mut();
            let slot = &mut multis[self.key as usize];
            if let Some(c) = slot.queue.pop_front() {
                return Poll::Ready(Some(c));
            }
            if slot.finished {
                return Poll::Ready(None);
            }
            match &slot.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => slot.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }

    /// The completion [`Multishot::poll_next`] would return next, if it has
    /// arrived.
    pub fn peek(&self) -> Option<(i32, u32)> {
        with_inner(|inner| {
            inner.multis.borrow()[self.key as usize]
                .queue
                .front()
                .copied()
        })
    }

    /// Whether the last completion has arrived (it may still be queued).
    pub fn finished(&self) -> bool {
        with_inner(|inner| inner.multis.borrow()[self.key as usize].finished)
    }

    /// Asks the kernel to stop the operation: completions already made stay
    /// queued, and a last one follows (usually `ECANCELED`).
    pub fn cancel(&mut self) {
        if std::mem::replace(&mut self.cancelled, true) || self.finished() {
            return;
        }
        submit_cancel(self.key as usize);
    }
}

fn submit_cancel(key: usize) {
    let sqe = opcode::AsyncCancel::new(MULTI | key as u64).build();
    // SAFETY: the SQE points at nothing. Dropped at once, the op's slot
    // waits for its completion and goes with it.
    drop(unsafe { Op::submit(Box::new(()), sqe, false) });
}

impl Drop for Multishot {
    fn drop(&mut self) {
        let Some((queued, finished)) = try_with_inner(|inner| {
            let mut multis = inner.multis.borrow_mut();
            let slot = &mut multis[self.key as usize];
            let queued = std::mem::take(&mut slot.queue);
            if slot.finished {
                multis.remove(self.key as usize);
                (queued, true)
            } else {
                slot.orphan = true;
                slot.waker = None;
                (queued, false)
            }
        }) else {
            return;
        };
        for (_, flags) in queued {
            if let Some(bid) = cqueue::buffer_select(flags) {
                super::give_back(bid);
            }
        }
        if !finished && !self.cancelled {
            submit_cancel(self.key as usize);
        }
    }
}

/// Delivers a completion to its multishot operation.
pub(super) fn complete_multi(inner: &Inner, key: usize, result: i32, flags: u32) {
    let bid = cqueue::buffer_select(flags);
    if let Some(bufs) = &inner.bufs {
        if bid.is_some() {
            bufs.taken();
        }
        if result == -libc::ENOBUFS {
            bufs.note_starved();
        }
    }
    let last = !cqueue::more(flags);
    let (waker, discard) = {
        let mut multis = inner.multis.borrow_mut();
        let Some(slot) = multis.get_mut(key) else {
            return;
        };
        if slot.orphan {
            if last {
                multis.remove(key);
            }
            (None, true)
        } else {
            slot.queue.push_back((result, flags));
            slot.finished |= last;
            (slot.waker.take(), false)
        }
    };
    if discard && let Some(bid) = bid {
        // Nobody will take these bytes.
        super::give_back(bid);
    }
    if let Some(w) = waker {
        w.wake();
    }
}

fn check(result: i32) -> std::io::Result<u32> {
    if result < 0 {
        Err(std::io::Error::from_raw_os_error(-result))
    } else {
        Ok(result as u32)
    }
}

/// An op that owns nothing and answers a count or flags.
pub struct Plain(Op<()>);

impl Future for Plain {
    type Output = std::io::Result<u32>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (_, result, _) = ready!(Pin::new(&mut self.0).poll(cx));
        Poll::Ready(check(result))
    }
}
