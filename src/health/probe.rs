//! Probe I/O: TCP (connect succeeds) and HTTP (GET path, status matches).
//! Runs on the control plane's tokio runtime; a timed-out probe's future is
//! dropped, which closes its socket and so cancels the kernel operation.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HealthCheckConfig, HealthProtocol};

/// Largest response head a probe reads before giving up.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// What a response so far says about its status.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    /// The head is complete: this is the status code.
    Code(u16),
    /// Read more.
    Partial,
}

/// Parses the head of an HTTP/1.x response (pure; tested on byte fixtures).
pub fn parse_status(buf: &[u8]) -> Result<Status, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(_)) => Ok(Status::Code(resp.code.unwrap_or(0))),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => Err(format!(
            "response head larger than {MAX_RESPONSE_HEAD} bytes"
        )),
        Ok(httparse::Status::Partial) => Ok(Status::Partial),
        Err(e) => Err(format!("not an HTTP response: {e}")),
    }
}

/// The request an HTTP probe sends.
pub fn request(path: &str, target: SocketAddr) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: ringlb-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
}

/// What one probe says.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass(String),
    Fail(String),
    /// The probe could not be made for a reason of this machine's own (out
    /// of fds or local ports): it says nothing about the target.
    Inconclusive(String),
}

/// Probes `target` once.
pub async fn check(cfg: &HealthCheckConfig, target: SocketAddr) -> Outcome {
    let addr = SocketAddr::new(target.ip(), cfg.port.unwrap_or(target.port()));
    match tokio::time::timeout(cfg.timeout, run(cfg, addr)).await {
        Ok(Ok(reason)) => Outcome::Pass(reason),
        Ok(Err(Failed::Target(reason))) => Outcome::Fail(reason),
        Ok(Err(Failed::Local(reason))) => Outcome::Inconclusive(reason),
        Err(_) => Outcome::Fail(format!("timed out after {:?}", cfg.timeout)),
    }
}

enum Failed {
    Target(String),
    Local(String),
}

impl From<String> for Failed {
    fn from(reason: String) -> Failed {
        Failed::Target(reason)
    }
}

async fn run(cfg: &HealthCheckConfig, addr: SocketAddr) -> Result<String, Failed> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| {
        let reason = format!("connect {addr}: {e}");
        if crate::oserror::is_local(&e) {
            Failed::Local(reason)
        } else {
            Failed::Target(reason)
        }
    })?;
    if cfg.proxy_protocol {
        s.write_all(&crate::proxy_protocol::v2_local())
            .await
            .map_err(|e| format!("send PROXY header: {e}"))?;
    }
    if cfg.protocol == HealthProtocol::Tcp {
        return Ok("connected".into());
    }
    s.write_all(request(&cfg.path, addr).as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return Err(Failed::Target(
                "connection closed before a complete response".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Status::Code(code) = parse_status(&buf)? {
            return if cfg
                .matcher
                .iter()
                .any(|&(lo, hi)| (lo..=hi).contains(&code))
            {
                Ok(format!("status {code}"))
            } else {
                Err(Failed::Target(format!("status {code}")))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_complete_heads() {
        assert_eq!(
            parse_status(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            Ok(Status::Code(200))
        );
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\n\r\n"),
            Ok(Status::Code(503))
        );
        assert_eq!(
            parse_status(b"HTTP/1.1 204 \r\n\r\n"),
            Ok(Status::Code(204))
        );
    }

    #[test]
    fn no_reason_phrase_is_fine() {
        assert_eq!(parse_status(b"HTTP/1.1 200\r\n\r\n"), Ok(Status::Code(200)));
    }

    #[test]
    fn split_reads_ask_for_more_until_complete() {
        let full = b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n";
        for cut in 1..full.len() {
            assert_eq!(
                parse_status(&full[..cut]),
                Ok(Status::Partial),
                "cut at {cut}"
            );
        }
        assert_eq!(parse_status(full), Ok(Status::Code(302)));
    }

    #[test]
    fn garbage_is_an_error() {
        for junk in [
            &b"SSH-2.0-OpenSSH_9.2\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
        ] {
            let e = parse_status(junk).unwrap_err();
            assert!(e.starts_with("not an HTTP response"), "{junk:?}: {e}");
        }
    }

    #[test]
    fn oversized_heads_are_refused() {
        // One endless header line: never complete, refused at the cap.
        let mut big = b"HTTP/1.1 200 OK\r\nX-Filler: ".to_vec();
        big.resize(MAX_RESPONSE_HEAD, b'a');
        assert!(parse_status(&big).unwrap_err().contains("larger than"));
        // Too many headers is refused too.
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("X-{i}: a\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(
            parse_status(&many)
                .unwrap_err()
                .contains("not an HTTP response")
        );
    }

    #[test]
    fn the_request_names_host_and_agent_and_closes() {
        let r = request("/api/v1/health", "127.0.0.1:6400".parse().unwrap());
        assert!(r.starts_with("GET /api/v1/health HTTP/1.1\r\n"));
        assert!(r.contains("\r\nHost: 127.0.0.1:6400\r\n"));
        assert!(r.contains("\r\nUser-Agent: ringlb-health\r\n"));
        assert!(r.ends_with("Connection: close\r\n\r\n"));
    }
}
