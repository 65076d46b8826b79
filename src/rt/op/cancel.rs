//! `IORING_OP_ASYNC_CANCEL` by descriptor: how a caller that gives up on an
//! op makes the kernel let go of it (then awaits the op to completion).

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types};

use super::{Op, Plain};

/// Cancels every op in this thread's ring that targets `fd`, and waits until
/// the kernel has taken the request. The cancelled ops then complete (usually
/// with `ECANCELED`); the caller still awaits them. Returns how many matched;
/// `ENOENT` (nothing left to cancel: it had already completed) counts as 0.
pub async fn cancel_fd(fd: RawFd) -> io::Result<u32> {
    let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all()).build();
    // SAFETY: the SQE points at nothing.
    match Plain(unsafe { Op::submit(Box::new(()), sqe, false) }).await {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(0),
        other => other,
    }
}
