//! Demo backend: a small HTTP/1.1 server shaped like the todo API our users
//! put behind a load balancer.
//!
//!   GET  /api/v1/todos    -> 200, a JSON list (names this backend)
//!   GET  /api/v1/health   -> 200 {"status":"ok"}, or 503 after /admin/fail
//!   POST /admin/fail      -> health answers 503 from now on
//!   POST /admin/recover   -> health answers 200 again
//!   POST /admin/exit      -> the process exits (an instance going away)
//!
//! Keep-alive by default; `Connection: close` is honoured. One thread, like
//! one small app server: `--work-us` burns that much CPU per `/api/v1/todos`
//! request, so CPU-based scaling can be watched on one machine.
//!
//! ```text
//! demo-backend --port 6400 [--name todo-6400] [--work-us 0]
//! demo-backend --listen [::1]:6400
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Parser)]
#[command(name = "demo-backend", version, about = "The todo API demo backend")]
struct Args {
    /// Port to listen on, on 127.0.0.1.
    #[arg(long, conflicts_with = "listen")]
    port: Option<u16>,
    /// Address to listen on instead of 127.0.0.1:PORT.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Name in answers and the `x-backend` header (default todo-PORT).
    #[arg(long)]
    name: Option<String>,
    /// CPU time, in microseconds, burned per /api/v1/todos request.
    #[arg(long, default_value_t = 0)]
    work_us: u64,
}

const MAX_HEAD: usize = 16 * 1024;

struct State {
    name: String,
    failing: AtomicBool,
    work: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let addr = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], args.port.unwrap_or(6400))));
    let name = args.name.unwrap_or_else(|| format!("todo-{}", addr.port()));
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo-backend: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "demo-backend {name} listening on {}",
        listener.local_addr().unwrap()
    );
    let state = Arc::new(State {
        name,
        failing: AtomicBool::new(false),
        work: Duration::from_micros(args.work_us),
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
        ("GET", "/api/v1/todos") => {
            burn(state.work);
            (
                "200 OK",
                format!(
                    r#"[{{"id":1,"title":"scale out","completed":false,"served_by":"{0}"}},{{"id":2,"title":"add a health check","completed":true,"served_by":"{0}"}}]"#,
                    state.name
                ),
            )
        }
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

/// Keeps the CPU busy for `d` (the work a real request would do).
fn burn(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}
