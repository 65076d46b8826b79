//! `IORING_OP_POLL_ADD`, one-shot: a socket's readiness.

use std::os::fd::RawFd;

use io_uring::{opcode, types};

use super::{Op, Plain};

pub type PollOp = Plain;

/// Submits a one-shot poll of `fd` for `events` (`POLLIN`, `POLLOUT`);
/// completes with the events that are ready. Readiness is checked when the
/// kernel takes the SQE, so bytes already waiting complete it at once: no
/// edge is ever missed. The kernel holds a reference to the socket while
/// the poll is armed: whoever drops one in flight must make it complete
/// (`shutdown(2)` does) or the socket outlives its close.
pub fn poll(fd: RawFd, events: u32) -> PollOp {
    let sqe = opcode::PollAdd::new(types::Fd(fd), events).build();
    // SAFETY: the SQE points at nothing.
    Plain(unsafe { Op::submit(Box::new(()), sqe, false) })
}
