//! `IORING_OP_RECV` with `IORING_RECV_MULTISHOT` into the thread's
//! provided buffers: one receive that stays armed.

use std::os::fd::RawFd;

use io_uring::{opcode, types};

use super::Multishot;
use crate::rt;

/// Arms a multishot receive on `fd` into this thread's provided buffers
/// ([`rt::BufRing`]): it stays armed, and each time bytes arrive it
/// completes with them in a buffer it selected, until end of stream (a
/// result of 0), an error, `ENOBUFS` (no buffer free), or a cancel. The
/// kernel keeps a reference to the socket while it is armed; dropping the
/// [`Multishot`] cancels it.
pub fn recv_multi(fd: RawFd) -> Multishot {
    let sqe = opcode::RecvMulti::new(types::Fd(fd), rt::BUFFER_GROUP).build();
    // SAFETY: the SQE points at nothing; the buffers are the runtime's.
    unsafe { Multishot::submit(sqe) }
}
