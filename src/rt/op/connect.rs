//! `IORING_OP_CONNECT`: a socket's connect, the socket handed back with the
//! result.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use io_uring::{opcode, types};
use socket2::SockAddr;

use super::{Op, check};

/// The socket and the address a connect SQE points at.
pub struct ConnectData {
    socket: OwnedFd,
    addr: SockAddr,
}

/// A connect in flight; it hands the socket back with the result.
pub struct Connect(Op<ConnectData>);

/// Submits a connect of `socket` to `addr`. The op owns the socket until it
/// completes.
pub fn connect(socket: OwnedFd, addr: SocketAddr) -> Connect {
    let data = Box::new(ConnectData {
        socket,
        addr: SockAddr::from(addr),
    });
    let sqe = opcode::Connect::new(
        types::Fd(data.socket.as_raw_fd()),
        data.addr.as_ptr().cast(),
        data.addr.len(),
    )
    .build();
    // SAFETY: the SQE points only into the boxed `data` (its socket and
    // address), which the op owns.
    Connect(unsafe { Op::submit(data, sqe, false) })
}

impl Future for Connect {
    type Output = (OwnedFd, io::Result<()>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (data, result, _) = ready!(Pin::new(&mut self.0).poll(cx));
        Poll::Ready((data.socket, check(result).map(drop)))
    }
}
