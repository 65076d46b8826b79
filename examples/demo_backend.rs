//! Demo backend: a small HTTP/1.1 server shaped like the todo API our users
//! put behind a load balancer.
//!
//!   GET  /api/v1/todos    -> 200, a JSON list (names this backend)
//!   GET  /api/v1/health   -> 200 {"status":"ok"}, or 503 after /admin/fail
//!   POST /admin/fail      -> health answers 503 from now on
//!   POST /admin/recover   -> health answers 200 again
//!   POST /admin/exit      -> the process exits (an instance going away)
//!
//! Keep-alive by default; `Connection: close` is honoured.
//! Usage: cargo run --release --example demo_backend -- 127.0.0.1:6400 [name]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEAD: usize = 16 * 1024;

struct State {
    name: String,
    failing: AtomicBool,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:6400".into())
        .parse()
        .expect("usage: demo_backend IP:PORT [name]");
    let name = args
        .next()
        .unwrap_or_else(|| format!("backend-{}", addr.port()));
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    eprintln!(
        "demo_backend {name} listening on {}",
        listener.local_addr().unwrap()
    );
    let state = Arc::new(State {
        name,
        failing: AtomicBool::new(false),
    });
    loop {
        let (s, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(s, &state).await {
                eprintln!("connection: {e}");
            }
        });
    }
}

async fn serve(mut s: TcpStream, state: &State) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        // Read one request head.
        let (method, path, close, head_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let close = req.headers.iter().any(|h| {
                        h.name.eq_ignore_ascii_case("connection")
                            && h.value.eq_ignore_ascii_case(b"close")
                    }) || req.version == Some(0);
                    break (
                        req.method.unwrap_or("").to_string(),
                        req.path.unwrap_or("").to_string(),
                        close,
                        n,
                    );
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                _ => {
                    s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await?;
                    return Ok(());
                }
            }
        };
        buf.drain(..head_len); // requests here carry no body
        let (status, body) = route(&method, &path, state);
        let reply = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-backend: {}\r\n{}\r\n{body}",
            body.len(),
            state.name,
            if close { "connection: close\r\n" } else { "" }
        );
        s.write_all(reply.as_bytes()).await?;
        if close {
            return s.shutdown().await;
        }
    }
}

fn route(method: &str, path: &str, state: &State) -> (&'static str, String) {
    match (method, path) {
        ("GET", "/api/v1/todos") => (
            "200 OK",
            format!(
                r#"[{{"id":1,"title":"scale out","completed":false,"served_by":"{0}"}},{{"id":2,"title":"add a health check","completed":true,"served_by":"{0}"}}]"#,
                state.name
            ),
        ),
        ("GET", "/api/v1/health") if state.failing.load(Ordering::Relaxed) => {
            ("503 Service Unavailable", r#"{"status":"failing"}"#.into())
        }
        ("GET", "/api/v1/health") => ("200 OK", r#"{"status":"ok"}"#.into()),
        ("POST", "/admin/fail") => {
            state.failing.store(true, Ordering::Relaxed);
            ("200 OK", r#"{"health":"failing"}"#.into())
        }
        ("POST", "/admin/recover") => {
            state.failing.store(false, Ordering::Relaxed);
            ("200 OK", r#"{"health":"ok"}"#.into())
        }
        ("POST", "/admin/exit") => {
            // Answer first, then go away as an instance being terminated would.
            tokio::spawn(async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                std::process::exit(0);
            });
            ("200 OK", r#"{"exiting":true}"#.into())
        }
        _ => ("404 Not Found", r#"{"error":"not found"}"#.into()),
    }
}
