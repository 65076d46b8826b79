//! The admin HTTP endpoint: `GET /metrics`, `/targets`, `/healthz`.
//!
//! It runs on a thread of its own ("ringlb-admin"), never on a worker, so it
//! cannot slow the data plane, and the control loop being busy (a reload of
//! 100,000 targets) cannot hold up `/healthz`, which it answers itself. Each
//! connection reads one request (at most 8 KiB; its first byte within 2 s,
//! all of it within 5 s), asks the control loop for any other answer over a
//! channel, replies and closes.
//!
//! A crowd of idle connections must not starve a health check (keepalived's
//! answers within a second or fails over): up to [`MAX_CONNECTIONS`] are
//! served at once, and when that many are open, a new connection closes the
//! oldest one still waiting for its request rather than wait behind it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

/// The console page: one file, built into the binary, that asks
/// `/console.json` every 2 seconds and draws it. Nothing is fetched from
/// anywhere else.
pub const CONSOLE_PAGE: &str = include_str!("console.html");

/// Largest request head accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send the first byte of it.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client may take to read the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections open at once; past it, the oldest one still waiting
/// for its request is closed for a new one.
pub const MAX_CONNECTIONS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: the console page (the admin thread answers it itself).
    Console,
    /// `GET /console.json`: what the console page shows.
    ConsoleData,
    Metrics,
    /// `pretty`: indented (`/targets?pretty`), for a person to read.
    Targets {
        pretty: bool,
    },
    Healthz,
}

/// A request the control loop answers: where, and whether the body is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub route: Route,
    /// HEAD: the head only.
    pub head_only: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// The console page.
    pub fn console() -> Response {
        Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: CONSOLE_PAGE.to_string(),
        }
    }
}

/// Starts the admin endpoint's thread and runtime; its handle spawns
/// [`serve`]. The thread lives as long as the process.
pub fn runtime() -> std::io::Result<tokio::runtime::Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("ringlb-admin".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

/// A request for the control loop to answer.
#[derive(Debug)]
pub struct Ask {
    pub route: Route,
    pub reply: oneshot::Sender<Response>,
}

/// What a request head says: a request, `None` while incomplete, or the
/// error response to send.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, Response> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST => {
            Err(Response::text(431, "request too large\n"))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(Response::text(400, format!("bad request: {e}\n"))),
        Ok(httparse::Status::Complete(_)) => {
            let target = req.path.unwrap_or("/");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let pretty = query
                .split('&')
                .any(|q| q == "pretty" || q.starts_with("pretty="));
            let route = match path {
                "/" => Route::Console,
                "/console.json" => Route::ConsoleData,
                "/metrics" => Route::Metrics,
                "/targets" => Route::Targets { pretty },
                "/healthz" => Route::Healthz,
                _ => {
                    return Err(Response::text(
                        404,
                        "not found: try /, /metrics, /targets or /healthz\n",
                    ));
                }
            };
            let head_only = match req.method {
                Some("GET") => false,
                Some("HEAD") => true,
                _ => return Err(Response::text(405, "only GET and HEAD\n")),
            };
            Ok(Some(Request { route, head_only }))
        }
    }
}

/// The admin connections open now, oldest first, each with whether it is
/// still waiting for its request (and may be closed for a newer one).
#[derive(Default)]
struct Open {
    next: u64,
    by_age: std::collections::BTreeMap<u64, (tokio::task::AbortHandle, Arc<AtomicBool>)>,
}

impl Open {
    /// Makes room for one more: closes the oldest connection still waiting
    /// for its request, if all [`MAX_CONNECTIONS`] are taken. False if every
    /// one is being answered (the new one is then turned away).
    fn make_room(&mut self) -> bool {
        self.by_age.retain(|_, (task, _)| !task.is_finished());
        if self.by_age.len() < MAX_CONNECTIONS {
            return true;
        }
        let oldest_idle = self
            .by_age
            .iter()
            .find(|(_, (_, waiting))| waiting.load(Ordering::Relaxed))
            .map(|(&id, _)| id);
        match oldest_idle.and_then(|id| self.by_age.remove(&id)) {
            Some((task, _)) => {
                task.abort();
                true
            }
            None => false,
        }
    }
}

/// Accepts admin connections until the task is dropped (see the module
/// doc for how many, and which one goes when there are too many).
pub async fn serve(listener: TcpListener, asks: mpsc::Sender<Ask>) {
    let open = Arc::new(Mutex::new(Open::default()));
    loop {
        let s = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut o = open.lock().unwrap_or_else(|p| p.into_inner());
        if !o.make_room() {
            debug!("admin: every connection is being answered; one turned away");
            continue;
        }
        let waiting = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn(handle(s, asks.clone(), waiting.clone()));
        let id = o.next;
        o.next += 1;
        o.by_age.insert(id, (task.abort_handle(), waiting));
    }
}

async fn handle(mut s: TcpStream, asks: mpsc::Sender<Ask>, waiting: Arc<AtomicBool>) {
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut s)).await {
        Err(_) => Err(Response::text(408, "request timeout\n")),
        Ok(None) => return, // closed, or silent, before a full request
        Ok(Some(r)) => r,
    };
    waiting.store(false, Ordering::Relaxed);
    let head_only = request.as_ref().is_ok_and(|r| r.head_only);
    let response = match request {
        Err(resp) => resp,
        // Serving means answering this, whatever the control loop is doing.
        Ok(Request {
            route: Route::Healthz,
            ..
        }) => Response::text(200, "ok\n"),
        Ok(Request {
            route: Route::Console,
            ..
        }) => Response::console(),
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            let ask = Ask {
                route: request.route,
                reply: tx,
            };
            if asks.send(ask).await.is_err() {
                return; // shutting down
            }
            match rx.await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    let body = if head_only { "" } else { &response.body };
    let write = async {
        s.write_all(head.as_bytes()).await?;
        s.write_all(body.as_bytes()).await?;
        s.shutdown().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "admin client went away"),
        Err(_) => debug!("admin client did not read its answer in time; closed"),
    }
}

/// Reads one request head. `None` if the client went away first, or sent
/// nothing within [`FIRST_BYTE_TIMEOUT`]. The head is parsed once its blank
/// line has arrived (CRLF or bare LF) or it is too large, so a client
/// sending a byte at a time costs one scan of the new bytes per read.
async fn read_request(s: &mut TcpStream) -> Option<Result<Request, Response>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let read = s.read(&mut chunk);
        let n = if buf.is_empty() {
            tokio::time::timeout(FIRST_BYTE_TIMEOUT, read).await.ok()?
        } else {
            read.await
        }
        .ok()?;
        if n == 0 {
            return None;
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if !head_ended(&buf[from..]) && buf.len() < MAX_REQUEST {
            continue;
        }
        match parse_request(&buf) {
            Ok(None) => continue,
            Ok(Some(request)) => return Some(Ok(request)),
            Err(resp) => return Some(Err(resp)),
        }
    }
}

/// Whether `tail` holds the blank line that ends a request head.
fn head_ended(tail: &[u8]) -> bool {
    tail.windows(4).any(|w| w == b"\r\n\r\n")
        || tail.windows(2).any(|w| w == b"\n\n")
        || tail.windows(3).any(|w| w == b"\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_errors() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Some(Request {
                route: Route::Metrics,
                head_only: false
            }))
        );
        assert_eq!(
            parse_request(b"HEAD /targets?pretty HTTP/1.0\r\n\r\n"),
            Ok(Some(Request {
                route: Route::Targets { pretty: true },
                head_only: true
            }))
        );
        assert_eq!(
            parse_request(b"GET /healthz HTTP/1.1\r\n"),
            Ok(None),
            "partial"
        );
        assert_eq!(
            parse_request(b"GET /nope HTTP/1.1\r\n\r\n")
                .unwrap_err()
                .status,
            404
        );
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n")
                .unwrap_err()
                .status,
            405
        );
        assert_eq!(
            parse_request(b"\x16\x03\x01garbage\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse_request(b"GET /healthz HTTP/1.1\n\n"),
            Ok(Some(Request {
                route: Route::Healthz,
                head_only: false
            })),
            "a bare LF ends lines too"
        );
        assert!(head_ended(b"1\n\n") && head_ended(b"\r\n\r\n") && head_ended(b"x\n\r\n"));
        assert!(!head_ended(b"GET / HTTP/1.1\r\n"));
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST, b'a');
        assert_eq!(parse_request(&big).unwrap_err().status, 431);
    }
}
