//! Listening sockets: one `SO_REUSEPORT` socket per worker per listener, so the
//! kernel spreads accepts across cores. Built with socket2, so that
//! `SO_REUSEPORT`, the backlog and `IPV6_V6ONLY` are each set on purpose.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// What to bind for one listener: its name (for errors), address and backlog.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    pub name: &'a str,
    pub addr: SocketAddr,
    pub backlog: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("listener {name:?} on {addr}: {step}: {source}{hint}")]
pub struct ListenerError {
    pub name: String,
    pub addr: SocketAddr,
    /// The call or socket option that failed.
    pub step: &'static str,
    pub source: io::Error,
    pub hint: &'static str,
}

/// Binds `count` sockets for one listener, all on the same port (the port the
/// kernel chose, if the config says 0). Returns the bound address too.
///
/// With `exclusive`, a probe first makes sure no other process holds the
/// port. A reload that moves a listener onto a port ringlb itself holds (a
/// wildcard address beside a specific one, before the old listener closes)
/// binds without it.
pub fn bind_reuseport(
    cfg: Spec<'_>,
    count: usize,
    exclusive: bool,
) -> Result<(SocketAddr, Vec<TcpListener>), ListenerError> {
    let fail = |step: &'static str, source: io::Error| {
        let hint = match source.raw_os_error() {
            Some(libc::EACCES) => " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
            Some(libc::EADDRINUSE) => " (another process listens there)",
            Some(libc::EADDRNOTAVAIL) => " (no interface has that address)",
            _ => "",
        };
        ListenerError {
            name: cfg.name.to_string(),
            addr: cfg.addr,
            step,
            source,
            hint,
        }
    };
    // A socket without SO_REUSEPORT cannot join a port that another process
    // holds with SO_REUSEPORT, so this probe turns a silent port share with a
    // second ringlb into a clear EADDRINUSE, and picks the port for `:0`.
    let mut addr = cfg.addr;
    if exclusive || addr.port() == 0 {
        let probe = new_socket(cfg.addr).map_err(|(s, e)| fail(s, e))?;
        probe.bind(&cfg.addr.into()).map_err(|e| fail("bind", e))?;
        addr = probe
            .local_addr()
            .map_err(|e| fail("getsockname", e))?
            .as_socket()
            .expect("an inet socket has an inet address");
    }

    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let s = new_socket(addr).map_err(|(s, e)| fail(s, e))?;
        s.set_reuse_port(true)
            .map_err(|e| fail("setsockopt(SO_REUSEPORT)", e))?;
        // Accepted sockets inherit both, which saves a setsockopt per
        // connection: no Nagle delay on small exchanges, and a TCP urgent
        // byte stays in the stream, where the proxy passes it on like any other.
        s.set_tcp_nodelay(true)
            .map_err(|e| fail("setsockopt(TCP_NODELAY)", e))?;
        s.set_out_of_band_inline(true)
            .map_err(|e| fail("setsockopt(SO_OOBINLINE)", e))?;
        s.bind(&addr.into()).map_err(|e| fail("bind", e))?;
        s.listen(cfg.backlog as i32)
            .map_err(|e| fail("listen", e))?;
        out.push(s.into());
    }
    Ok((addr, out))
}

/// Whether binding `a` would collide with a socket bound to `b`: the same
/// port and family, and the same address or either one the wildcard.
pub fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn new_socket(addr: SocketAddr) -> Result<Socket, (&'static str, io::Error)> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| ("socket", e))?;
    s.set_reuse_address(true)
        .map_err(|e| ("setsockopt(SO_REUSEADDR)", e))?;
    if addr.is_ipv6() {
        // As nginx does: `[::]:80` is IPv6 only, so `0.0.0.0:80` can sit beside it.
        s.set_only_v6(true)
            .map_err(|e| ("setsockopt(IPV6_V6ONLY)", e))?;
    }
    s.set_nonblocking(true)
        .map_err(|e| ("fcntl(O_NONBLOCK)", e))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(addr: &str) -> Spec<'static> {
        Spec {
            name: "t",
            addr: addr.parse().unwrap(),
            backlog: 128,
        }
    }

    #[test]
    fn port_zero_gives_every_worker_the_same_port() {
        let (addr, socks) = bind_reuseport(cfg("127.0.0.1:0"), 3, true).unwrap();
        assert_ne!(addr.port(), 0);
        for s in &socks {
            assert_eq!(s.local_addr().unwrap(), addr);
        }
    }

    #[test]
    fn a_second_instance_on_the_same_port_is_refused() {
        let (addr, _first) = bind_reuseport(cfg("127.0.0.1:0"), 2, true).unwrap();
        let err = bind_reuseport(cfg(&addr.to_string()), 2, true).unwrap_err();
        assert_eq!(err.source.raw_os_error(), Some(libc::EADDRINUSE));
        assert!(err.to_string().contains("bind"), "{err}");
    }

    #[test]
    fn accepted_sockets_inherit_nodelay_and_oobinline_from_the_listener() {
        let (addr, socks) = bind_reuseport(cfg("127.0.0.1:0"), 1, true).unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        socks[0].set_nonblocking(false).unwrap();
        let (accepted, _) = socks[0].accept().unwrap();
        let s = socket2::SockRef::from(&accepted);
        assert!(s.tcp_nodelay().unwrap(), "TCP_NODELAY inherited");
        assert!(s.out_of_band_inline().unwrap(), "SO_OOBINLINE inherited");
    }

    #[test]
    fn ringlb_can_bind_a_wildcard_beside_its_own_specific_address() {
        let (addr, _first) = bind_reuseport(cfg("127.0.0.1:0"), 2, true).unwrap();
        let wild: SocketAddr = format!("0.0.0.0:{}", addr.port()).parse().unwrap();
        assert!(overlaps(wild, addr));
        assert!(!overlaps(
            "[::]:1".parse().unwrap(),
            "0.0.0.0:1".parse().unwrap()
        ));
        let (got, socks) = bind_reuseport(cfg(&wild.to_string()), 2, false).unwrap();
        assert_eq!((got, socks.len()), (wild, 2));
    }
}
