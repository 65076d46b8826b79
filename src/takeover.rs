//! Zero-downtime binary upgrade: a new ringlb takes over the listening
//! sockets of the running one over a Unix socket (`SCM_RIGHTS`), as HAProxy's
//! `-x` and Envoy's hot restart do. The listening sockets never close, so no
//! SYN is refused; the old process stops accepting once the new one is
//! ready, drains its connections for up to `shutdown_timeout`, and exits.
//!
//! Whoever can connect to the socket gets every listening socket, so the
//! socket file is made `0600` before it listens (whatever the umask), and a
//! peer whose user is neither this process's nor root is refused, logged and
//! counted; the new process checks the old one's user the same way.
//!
//! The exchange, on a `SOCK_SEQPACKET` socket at `[runtime] takeover_socket`
//! (every line is one packet):
//!
//! ```text
//! new -> old   TAKEOVER 2
//! old -> new   HEADER <bytes>, then the header in packets of at most 32 KiB:
//!              {"listeners":[{"name","config","addr","count"}],"admin":"ADDR"|null}
//! old -> new   per listener, "L <index in the header>" with its sockets
//!              attached (several packets when it has more than 253)
//! old -> new   "admin" with the admin socket attached (if any), then "END"
//! new -> old   READY          (the new process serves; the old one stops accepting)
//! old -> new   BYE
//! ```
//!
//! Version 1 (a one-packet header, listener packets by name) is still
//! spoken both ways, so a ringlb of either version takes over from the other.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr, sockopt,
};
use nix::sys::time::TimeVal;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// How long either side waits for the other's next packet. The new process
/// starts its workers and probes its targets between `END` and `READY`.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const VERSION_1: &[u8] = b"TAKEOVER 1";
const VERSION_2: &[u8] = b"TAKEOVER 2";
/// Bytes of header per packet (version 2).
const HEADER_CHUNK: usize = 32 * 1024;
/// The largest header either side accepts.
const MAX_HEADER: usize = 64 << 20;
/// `SCM_MAX_FD`: the most descriptors one packet carries.
const MAX_FDS: usize = 253;

#[derive(Debug, thiserror::Error)]
#[error("takeover via {path}: {step}: {message}")]
pub struct TakeoverError {
    pub path: PathBuf,
    pub step: &'static str,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    listeners: Vec<ListenerHeader>,
    admin: Option<SocketAddr>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ListenerHeader {
    name: String,
    /// The address as configured (`127.0.0.1:0` stays so).
    config: SocketAddr,
    /// The address bound.
    addr: SocketAddr,
    count: usize,
}

/// One listener's sockets as the old process hands them over (and, on its
/// side, offers them).
#[derive(Debug)]
pub struct HandedListener {
    pub name: String,
    pub config: SocketAddr,
    pub addr: SocketAddr,
    pub sockets: Vec<TcpListener>,
}

/// The new process's side, between receiving the sockets and `READY`.
pub struct Inherited {
    pub listeners: Vec<HandedListener>,
    /// The admin socket and the address it was configured with.
    pub admin: Option<(SocketAddr, TcpListener)>,
    conn: OwnedFd,
    path: PathBuf,
}

fn err(path: &Path, step: &'static str, e: impl std::fmt::Display) -> TakeoverError {
    TakeoverError {
        path: path.to_path_buf(),
        step,
        message: e.to_string(),
    }
}

fn seqpacket() -> nix::Result<OwnedFd> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

fn set_timeouts(fd: &OwnedFd, t: Duration) -> nix::Result<()> {
    let tv = TimeVal::new(t.as_secs() as _, t.subsec_micros() as _);
    socket::setsockopt(fd, sockopt::ReceiveTimeout, &tv)?;
    socket::setsockopt(fd, sockopt::SendTimeout, &tv)
}

fn send(fd: &OwnedFd, bytes: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    socket::sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// One packet: its bytes and the descriptors attached (owned now). The
/// buffer is sized to the packet (peeked first), so none is cut short.
fn recv(fd: &OwnedFd) -> nix::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let size = {
        let mut probe = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut probe)];
        let msg = socket::recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            None,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
        )?;
        msg.bytes.max(1)
    };
    let mut buf = vec![0u8; size];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: SCM_RIGHTS gave this process new descriptors that
                // nothing else owns.
                fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
            }
        }
        (msg.bytes, fds)
    };
    buf.truncate(n);
    Ok((buf, fds))
}

/// Whether the process at the other end of `conn` may take part in a
/// takeover: it runs as this process's user, or as root. Its uid either way.
fn peer_allowed(conn: &OwnedFd) -> Result<(bool, u32), String> {
    let cred = socket::getsockopt(conn, sockopt::PeerCredentials)
        .map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let uid = cred.uid();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    Ok((uid == 0 || uid == own, uid))
}

/// Binds the takeover socket of a running ringlb at `path` (a stale file
/// nobody answers on is replaced). The file is `0600` before the socket
/// listens: until `listen`, a connect is refused, so no other user can get
/// in between, whatever the umask.
pub fn listen(path: &Path) -> Result<OwnedFd, TakeoverError> {
    if path.exists() {
        let probe = seqpacket().map_err(|e| err(path, "socket", e))?;
        let addr = UnixAddr::new(path).map_err(|e| err(path, "address", e))?;
        if socket::connect(probe.as_raw_fd(), &addr).is_ok() {
            return Err(err(
                path,
                "bind",
                "another ringlb answers there (start this one with --takeover to replace it)",
            ));
        }
        std::fs::remove_file(path).map_err(|e| err(path, "remove stale socket", e))?;
    }
    let fd = seqpacket().map_err(|e| err(path, "socket", e))?;
    let addr = UnixAddr::new(path).map_err(|e| err(path, "address", e))?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(|e| err(path, "bind", e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err(path, "chmod 0600", e))?;
    socket::listen(&fd, Backlog::new(4).expect("4 is a valid backlog"))
        .map_err(|e| err(path, "listen", e))?;
    Ok(fd)
}

/// The running process's side: serves takeover requests on `listener` (a
/// thread of its own). For each, `offer` gives the sockets; when the new
/// process says READY, `taken` is called (the caller then drains and
/// exits) and this returns. A peer of another user is refused, and
/// `refused` is called.
pub fn serve(
    path: &Path,
    listener: OwnedFd,
    offer: impl Fn() -> Option<OfferOwned>,
    taken: impl FnOnce(),
    refused: impl Fn(),
) {
    loop {
        let conn = match socket::accept(listener.as_raw_fd()) {
            // SAFETY: accept returned a new descriptor owned by nobody else.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "takeover socket: accept failed; no more takeovers");
                return;
            }
        };
        match peer_allowed(&conn) {
            Ok((true, _)) => {}
            Ok((false, uid)) => {
                warn!(path = %path.display(), uid, "takeover refused: the peer runs as another user");
                refused();
                continue;
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "takeover refused: cannot tell who the peer is");
                refused();
                continue;
            }
        }
        match hand_over(&conn, &offer) {
            Ok(()) => {
                // The path is the new process's once it reads BYE, which
                // goes before this process is told to stop: a process with
                // nothing to drain exits at once, and would take the BYE
                // with it.
                drop(listener);
                if let Err(e) = std::fs::remove_file(path) {
                    warn!(path = %path.display(), error = %e, "cannot remove the takeover socket");
                }
                let _bye = send(&conn, b"BYE", &[]);
                taken();
                return;
            }
            Err(e) => warn!(error = %e, "takeover abandoned; this process keeps serving"),
        }
    }
}

/// Descriptors the running process offers, duplicated for the exchange.
pub struct OfferOwned {
    pub listeners: Vec<HandedListener>,
    pub admin: Option<(SocketAddr, OwnedFd)>,
}

fn hand_over(conn: &OwnedFd, offer: &impl Fn() -> Option<OfferOwned>) -> Result<(), String> {
    set_timeouts(conn, STEP_TIMEOUT).map_err(|e| e.to_string())?;
    let (hello, _) = recv(conn).map_err(|e| format!("reading the request: {e}"))?;
    let v2 = match hello.as_slice() {
        VERSION_2 => true,
        VERSION_1 => false,
        _ => {
            return Err(format!(
                "unknown request {:?}",
                String::from_utf8_lossy(&hello[..hello.len().min(64)])
            ));
        }
    };
    let Some(o) = offer() else {
        return Err("this process is stopping".into());
    };
    let header = Header {
        listeners: o
            .listeners
            .iter()
            .map(|l| ListenerHeader {
                name: l.name.clone(),
                config: l.config,
                addr: l.addr,
                count: l.sockets.len(),
            })
            .collect(),
        admin: o.admin.as_ref().map(|(a, _)| *a),
    };
    let json = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    if v2 {
        send(conn, format!("HEADER {}", json.len()).as_bytes(), &[])
            .map_err(|e| format!("sending the header: {e}"))?;
        for chunk in json.chunks(HEADER_CHUNK) {
            send(conn, chunk, &[]).map_err(|e| format!("sending the header: {e}"))?;
        }
    } else {
        send(conn, &json, &[]).map_err(|e| {
            format!(
                "sending the header ({} bytes, {} listeners) in one packet, as a version 1 ringlb wants it: {e}",
                json.len(),
                header.listeners.len()
            )
        })?;
    }
    for (i, HandedListener { name, sockets, .. }) in o.listeners.iter().enumerate() {
        let label = if v2 {
            format!("L {i}").into_bytes()
        } else {
            name.as_bytes().to_vec()
        };
        for chunk in sockets.chunks(MAX_FDS) {
            let raw: Vec<RawFd> = chunk.iter().map(AsRawFd::as_raw_fd).collect();
            send(conn, &label, &raw).map_err(|e| format!("sending {name}: {e}"))?;
        }
    }
    if let Some((_, fd)) = &o.admin {
        send(conn, b"admin", &[fd.as_raw_fd()]).map_err(|e| format!("sending admin: {e}"))?;
    }
    send(conn, b"END", &[]).map_err(|e| e.to_string())?;
    info!("listening sockets handed to a new process; waiting for it to be ready");
    let (ready, _) = recv(conn).map_err(|e| format!("waiting for READY: {e}"))?;
    if ready != b"READY" {
        return Err(if ready.is_empty() {
            "the new process went away before it was ready".into()
        } else {
            format!(
                "expected READY, got {:?}",
                String::from_utf8_lossy(&ready[..ready.len().min(64)])
            )
        });
    }
    Ok(())
}

/// The environment variable through which `ringlb upgrade` learns that the
/// process it started serves: the fd of a pipe's write end.
pub const UPGRADE_FD_ENV: &str = "RINGLB_UPGRADE_FD";
/// How long `ringlb upgrade` waits for the new process to serve.
const UPGRADE_LIMIT: Duration = Duration::from_secs(120);

/// `ringlb upgrade`: starts `ringlb run --takeover` (this binary) detached,
/// in a process group of its own, and returns once it says it serves
/// alone, or with its failure. Its log goes to `log_file` (appended; a link
/// there is not followed), or where this command's stderr goes.
pub fn upgrade(config: &Path, log_file: Option<&Path>) -> Result<(), String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let stderr = match log_file {
        None => std::process::Stdio::inherit(),
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(p)
            .map(std::process::Stdio::from)
            .map_err(|e| format!("cannot open the log file {}: {e}", p.display()))?,
    };
    // Not close-on-exec: the child inherits the write end.
    let (read, write) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let mut child = std::process::Command::new(&exe)
        .args(["run", "--takeover", "--config"])
        .arg(config)
        .env(UPGRADE_FD_ENV, write.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    drop(write);
    // "ok" once it serves alone; end of file if it fails (or exits) first.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut said = String::new();
        let _eof = std::fs::File::from(read).read_to_string(&mut said);
        let _gone = tx.send(said);
    });
    let said = rx.recv_timeout(UPGRADE_LIMIT).unwrap_or_default();
    let logs = match log_file {
        Some(p) => format!("{}", p.display()),
        None if std::env::var_os("JOURNAL_STREAM").is_some() => "the journal".into(),
        None => "this terminal (--log-file sends it to a file)".into(),
    };
    if said.trim() == "ok" {
        eprintln!(
            "ringlb: upgraded: pid {} serves now; its log goes to {logs}",
            child.id()
        );
        return Ok(());
    }
    match child.try_wait() {
        Ok(Some(status)) => Err(format!(
            "the new process failed ({status}); the old one keeps serving; its log went to {logs}"
        )),
        _ => Err(format!(
            "the new process did not confirm; see its log ({logs})"
        )),
    }
}

/// Tells `ringlb upgrade` (if it started this process) that it serves.
pub fn tell_upgrader() {
    let Some(fd) = std::env::var(UPGRADE_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
    else {
        return;
    };
    // SAFETY: `ringlb upgrade` passed this descriptor, the write end of its
    // pipe, for this process alone; it is used once and closed here.
    let pipe = unsafe { OwnedFd::from_raw_fd(fd) };
    let _upgrader_gone = nix::unistd::write(&pipe, b"ok\n");
}

/// The new process's side: asks the ringlb at `path` for its sockets, in
/// version 2, or in version 1 if it hangs up on that (an older ringlb).
pub fn take(path: &Path) -> Result<Inherited, TakeoverError> {
    match take_as(path, true) {
        Err(e) if e.step == "header" && e.message == OLD_PEER => take_as(path, false),
        other => other,
    }
}

/// What `take_as` says of a peer that closed on `TAKEOVER 2`.
const OLD_PEER: &str = "the running ringlb closed on TAKEOVER 2";

fn take_as(path: &Path, v2: bool) -> Result<Inherited, TakeoverError> {
    let conn = seqpacket().map_err(|e| err(path, "socket", e))?;
    let addr = UnixAddr::new(path).map_err(|e| err(path, "address", e))?;
    socket::connect(conn.as_raw_fd(), &addr).map_err(|e| {
        err(
            path,
            "connect (is a ringlb with this takeover_socket running?)",
            e,
        )
    })?;
    match peer_allowed(&conn) {
        Ok((true, _)) => {}
        Ok((false, uid)) => {
            return Err(err(
                path,
                "peer",
                format!("the process there runs as uid {uid}, neither this user nor root"),
            ));
        }
        Err(e) => return Err(err(path, "peer", e)),
    }
    set_timeouts(&conn, STEP_TIMEOUT).map_err(|e| err(path, "timeouts", e))?;
    let hello = if v2 { VERSION_2 } else { VERSION_1 };
    send(&conn, hello, &[]).map_err(|e| err(path, "request", e))?;
    let json = if v2 {
        read_header(&conn).map_err(|m| err(path, "header", m))?
    } else {
        recv(&conn).map_err(|e| err(path, "header", e))?.0
    };
    let header: Header = serde_json::from_slice(&json).map_err(|e| err(path, "header", e))?;
    let mut listeners: Vec<HandedListener> = header
        .listeners
        .iter()
        .map(|l| HandedListener {
            name: l.name.clone(),
            config: l.config,
            addr: l.addr,
            sockets: Vec::with_capacity(l.count),
        })
        .collect();
    let mut admin = None;
    loop {
        let (what, fds) = recv(&conn).map_err(|e| err(path, "sockets", e))?;
        if what == b"END" {
            break;
        }
        if what == b"admin" {
            if let (Some(a), Some(fd)) = (header.admin, fds.into_iter().next()) {
                admin = Some((a, TcpListener::from(fd)));
            }
            continue;
        }
        let found = if v2 {
            std::str::from_utf8(&what)
                .ok()
                .and_then(|w| w.strip_prefix("L "))
                .and_then(|i| i.parse::<usize>().ok())
                .filter(|&i| i < listeners.len())
        } else {
            let name = String::from_utf8_lossy(&what);
            listeners.iter().position(|l| l.name == name)
        };
        let Some(i) = found else {
            let what = String::from_utf8_lossy(&what[..what.len().min(64)]).into_owned();
            return Err(err(
                path,
                "sockets",
                format!("unannounced listener {what:?}"),
            ));
        };
        listeners[i]
            .sockets
            .extend(fds.into_iter().map(TcpListener::from));
    }
    for (l, h) in listeners.iter().zip(&header.listeners) {
        if l.sockets.len() != h.count {
            return Err(err(
                path,
                "sockets",
                format!(
                    "listener {}: {} of {} sockets came",
                    l.name,
                    l.sockets.len(),
                    h.count
                ),
            ));
        }
    }
    Ok(Inherited {
        listeners,
        admin,
        conn,
        path: path.to_path_buf(),
    })
}

/// A version 2 header: `HEADER <bytes>`, then that many bytes in packets.
fn read_header(conn: &OwnedFd) -> Result<Vec<u8>, String> {
    let (first, _) = recv(conn).map_err(|e| e.to_string())?;
    if first.is_empty() {
        return Err(OLD_PEER.into());
    }
    let len = std::str::from_utf8(&first)
        .ok()
        .and_then(|f| f.strip_prefix("HEADER "))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n <= MAX_HEADER)
        .ok_or_else(|| {
            format!(
                "expected HEADER <bytes>, got {:?}",
                String::from_utf8_lossy(&first[..first.len().min(64)])
            )
        })?;
    let mut json = Vec::with_capacity(len);
    while json.len() < len {
        let (chunk, _) = recv(conn).map_err(|e| e.to_string())?;
        if chunk.is_empty() {
            return Err(format!(
                "the header ended after {} of {len} bytes",
                json.len()
            ));
        }
        json.extend_from_slice(&chunk);
    }
    if json.len() != len {
        return Err(format!("the header is {} bytes, not {len}", json.len()));
    }
    Ok(json)
}

impl Inherited {
    /// The sockets of the old listener `name` if it was configured with the
    /// same address (taken out: each is used once).
    pub fn listener(&mut self, name: &str, config: SocketAddr) -> Option<HandedListener> {
        let i = self
            .listeners
            .iter()
            .position(|l| l.name == name && l.config == config)
            .or_else(|| {
                // Renamed in the new config: the address decides.
                self.listeners
                    .iter()
                    .position(|l| l.config == config && config.port() != 0)
            })?;
        Some(self.listeners.remove(i))
    }

    /// Tells the old process this one serves, and waits for its BYE. Then
    /// the takeover socket is this process's to bind.
    pub fn ready(self) -> Result<PathBuf, TakeoverError> {
        let path = self.path;
        send(&self.conn, b"READY", &[]).map_err(|e| err(&path, "READY", e))?;
        let (bye, _) = recv(&self.conn).map_err(|e| err(&path, "BYE", e))?;
        match bye.as_slice() {
            b"BYE" => Ok(path),
            // The old process is gone already (its socket closed): the
            // listening sockets are this process's all the same.
            b"" => {
                warn!("the old process closed without BYE; taking its place");
                Ok(path)
            }
            other => Err(err(&path, "BYE", String::from_utf8_lossy(other))),
        }
    }
}
