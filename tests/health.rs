//! Health checks with target-group semantics, against real HTTP backends.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP backend: `/health` answers with the current `status`; any other
/// path answers 200 with the backend's name. One request per connection.
struct Http {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    /// Health answers served, by outcome.
    health_ok: Arc<AtomicUsize>,
    health_bad: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Http {
    async fn start(name: &'static str) -> Http {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), name)
    }

    fn start_on(listener: TcpListener, name: &'static str) -> Http {
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (st, o, b) = (status.clone(), ok.clone(), bad.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (st, o, b) = (st.clone(), o.clone(), b.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let health = head.starts_with(b"GET /health ");
                    let code = if health {
                        st.load(Ordering::SeqCst)
                    } else {
                        200
                    };
                    if health {
                        if code == 200 { &o } else { &b }.fetch_add(1, Ordering::SeqCst);
                    }
                    let reply = format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                        name.len()
                    );
                    let _client_may_be_gone = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        Http {
            addr,
            status,
            health_ok: ok,
            health_bad: bad,
            task,
        }
    }

    fn set(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A backend that accepts, reads until the peer closes, and never answers;
/// counts its connections.
async fn silent_backend(accepted: Arc<AtomicUsize>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// GET / through the proxy; returns the body (the backend's name).
async fn who(proxy: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("reply in 5 s")
        .expect("reply");
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    text.rsplit("\r\n\r\n").next().unwrap().to_string()
}

const FAST_HTTP: &str = "protocol = \"http\"\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 3";

fn flipped(target: SocketAddr, to: &str) -> String {
    format!("target={target} from=")
        + match to {
            "healthy" => "unhealthy to=healthy",
            _ => "healthy to=unhealthy",
        }
}

/// HTTP backends "a" and "b" behind ringlb with fast HTTP checks, both healthy.
async fn two_healthy_http_targets() -> (Http, Http, Ringlb) {
    let (a, b) = (Http::start("a").await, Http::start("b").await);
    let lb = Ringlb::start(write_config(
        &health_config(2, "", FAST_HTTP),
        &[("targets/web.txt", targets(&[a.addr, b.addr]))],
    ));
    for t in [a.addr, b.addr] {
        lb.wait_log(
            &format!("target={t} from=initial to=healthy"),
            Duration::from_secs(5),
        );
    }
    (a, b, lb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_503_200_backend_flips_after_exactly_the_thresholds() {
    let (a, _b, lb) = two_healthy_http_targets().await; // _b: keeps backend b running

    a.set(503);
    let line = lb.wait_log(&flipped(a.addr, "unhealthy"), Duration::from_secs(5));
    assert_eq!(
        a.health_bad.load(Ordering::SeqCst),
        3,
        "down after exactly 3 failures: {line}"
    );
    assert!(line.contains("reason=\"status 503\""), "{line}");
    for _ in 0..20 {
        assert_eq!(
            who(lb.addr()).await,
            "b",
            "no traffic to an unhealthy target"
        );
    }

    let ok_before = a.health_ok.load(Ordering::SeqCst);
    a.set(200);
    lb.wait_log(&flipped(a.addr, "healthy"), Duration::from_secs(5));
    assert_eq!(
        a.health_ok.load(Ordering::SeqCst) - ok_before,
        2,
        "up after exactly 2 passes"
    );
    let mut seen_a = false;
    for _ in 0..20 {
        seen_a |= who(lb.addr()).await == "a";
    }
    assert!(seen_a, "traffic returns after recovery");
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_only_backend_times_out_http_probes_and_goes_down() {
    let good = Http::start("good").await;
    let (silent_addr, holder) = silent_backend(Arc::new(AtomicUsize::new(0))).await;
    let lb = Ringlb::start(write_config(
        &health_config(2, "", FAST_HTTP),
        &[("targets/web.txt", targets(&[good.addr, silent_addr]))],
    ));
    let line = lb.wait_log(
        &format!("target={silent_addr} from=initial to=unhealthy"),
        Duration::from_secs(5),
    );
    assert!(line.contains("timed out after 100ms"), "{line}");
    for _ in 0..10 {
        assert_eq!(who(lb.addr()).await, "good");
    }
    holder.abort();
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_killed_under_load_is_retried_then_taken_out_by_passive_checks() {
    let a = Backend::tagged(1).await;
    let b = Backend::tagged(2).await;
    let b_addr = b.addr;
    // Active probes every 30 s: what takes B out here is the passive check.
    let health =
        "protocol = \"tcp\"\ninterval = \"30s\"\ntimeout = \"1s\"\nunhealthy_threshold = 2";
    let lb = Ringlb::start_logging(
        write_config(
            &health_config(2, "connect_retries = 1", health),
            &[("targets/web.txt", targets(&[a.addr, b.addr]))],
        ),
        "info,ringlb=debug",
    );
    lb.wait_log(
        &format!("target={b_addr} from=initial to=healthy"),
        Duration::from_secs(5),
    );
    let proxy = lb.addr();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Connections each client has completed: the test waits on these, not on time.
    let progress: Arc<Vec<AtomicUsize>> = Arc::new((0..4).map(|_| AtomicUsize::new(0)).collect());
    let done = |p: &Arc<Vec<AtomicUsize>>| -> Vec<usize> {
        p.iter().map(|c| c.load(Ordering::SeqCst)).collect()
    };
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, progress) = (stop.clone(), progress.clone());
            tokio::spawn(async move {
                let (mut n, mut lost) = (0, Vec::new());
                while !stop.load(Ordering::SeqCst) && n < 5000 {
                    let mut s = tokio::net::TcpStream::connect(proxy)
                        .await
                        .expect("ringlb accepts");
                    let mut tag = [0u8];
                    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut tag)).await
                    {
                        Ok(Ok(_)) => assert!(tag[0] == 1 || tag[0] == 2),
                        // Closed without a byte: judged below, from ringlb's log.
                        _ => lost.push(s.local_addr().unwrap()),
                    }
                    n += 1;
                    progress[i].fetch_add(1, Ordering::SeqCst);
                }
                (n, lost)
            })
        })
        .collect();
    wait_until_async(Duration::from_secs(10), "every client under way", || {
        done(&progress).iter().all(|&n| n >= 5)
    })
    .await;
    drop(b); // B's listener closes: connects to it are refused from now on
    let flip = lb.wait_log(&flipped(b_addr, "unhealthy"), Duration::from_secs(10));
    assert!(flip.contains("connect failed"), "{flip}");
    // The flip names the snapshot that carries it; ringlb logs the snapshot
    // each connect was placed with. That, not timing, bounds what may still
    // go to B: picks from older snapshots only.
    let flip_epoch: u64 = field(&flip, "epoch").unwrap().parse().unwrap();
    let at_flip = done(&progress);
    wait_until_async(
        Duration::from_secs(30),
        "25 more connections per client after the flip",
        || {
            let now = done(&progress);
            now.iter().zip(&at_flip).all(|(n, f)| *n >= f + 25)
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let (mut total, mut lost) = (0, Vec::new());
    for c in clients {
        let (n, l) = c.await.unwrap();
        total += n;
        lost.extend(l);
    }
    // A client may only lose its connection if ringlb had placed it on B and
    // B then died (its kernel had accepted the connection; an L4 proxy cannot
    // retry after a successful connect). A refused client would have no
    // "placed" line: ringlb retries refused connects on A.
    let log = lb.log();
    for addr in &lost {
        let placed_on_b = log.lines().any(|l| {
            l.contains(" placed ")
                && l.contains(&format!("peer={addr} "))
                && l.contains(&format!("target={b_addr}"))
        });
        assert!(
            placed_on_b,
            "client {addr} was closed without being placed on the dying target"
        );
    }
    assert!(
        lost.len() <= 4,
        "{} connections lost, more than were in flight at the kill",
        lost.len()
    );
    assert!(total > 50, "only {total} connections");
    let failures: Vec<u64> = log
        .lines()
        .filter(|l| l.contains(" connect failed ") && l.contains(&format!("target={b_addr} ")))
        .map(|l| {
            let e = field(l, "epoch").unwrap_or_else(|| panic!("no epoch in {l:?}"));
            e.parse().unwrap()
        })
        .collect();
    assert!(
        failures.len() >= 2,
        "the flip took 2 failures: {failures:?}"
    );
    assert!(
        failures.iter().all(|&e| e < flip_epoch),
        "connects to B placed with the flip's snapshot (epoch {flip_epoch}) or later: {failures:?}"
    );
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_target_is_unhealthy_the_group_fails_open() {
    let (a, b, lb) = two_healthy_http_targets().await;
    a.set(500);
    b.set(500);
    lb.wait_log(&flipped(a.addr, "unhealthy"), Duration::from_secs(5));
    lb.wait_log(&flipped(b.addr, "unhealthy"), Duration::from_secs(5));
    lb.wait_log("failing open", Duration::from_secs(5));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        seen.insert(who(lb.addr()).await);
    }
    assert_eq!(seen.len(), 2, "fail open routes to all targets: {seen:?}");
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_go_to_the_configured_port_not_the_traffic_port() {
    // Traffic ports answer /health with 200 on both targets; the probe port
    // answers 503 on 127.0.0.1 and 200 on 127.0.0.2.
    let a = Http::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), "a");
    let b = Http::start_on(TcpListener::bind("127.0.0.2:0").await.unwrap(), "b");
    let (probe_b, probe_a) = {
        let mut tries = 0;
        loop {
            let pb = TcpListener::bind("127.0.0.2:0").await.unwrap();
            let port = pb.local_addr().unwrap().port();
            if let Ok(pa) =
                TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)).await
            {
                break (Http::start_on(pb, "probe-b"), Http::start_on(pa, "probe-a"));
            }
            tries += 1;
            assert!(tries < 20, "no port free on both addresses");
        }
    };
    probe_a.set(503);
    let port = probe_a.addr.port();
    let health = FAST_HTTP.to_string() + &format!("\nport = {port}");
    let lb = Ringlb::start(write_config(
        &health_config(2, "", &health),
        &[("targets/web.txt", targets(&[a.addr, b.addr]))],
    ));
    lb.wait_log(
        &format!("target={} from=initial to=unhealthy", a.addr),
        Duration::from_secs(5),
    );
    lb.wait_log(
        &format!("target={} from=initial to=healthy", b.addr),
        Duration::from_secs(5),
    );
    for _ in 0..10 {
        assert_eq!(who(lb.addr()).await, "b");
    }
    assert!(
        probe_a.health_bad.load(Ordering::SeqCst) >= 3
            && probe_b.health_ok.load(Ordering::SeqCst) >= 1
    );
    assert_eq!(
        a.health_ok.load(Ordering::SeqCst) + a.health_bad.load(Ordering::SeqCst),
        0,
        "traffic port was probed"
    );
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_timed_out_probes_leak_no_fds() {
    raise_fd_limit();
    // 100 targets that accept and never answer; 1,000 probes a second time out.
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut addrs = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (addr, task) = silent_backend(accepted.clone()).await;
        addrs.push(addr);
        tasks.push(task);
    }
    let health =
        "protocol = \"http\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\nunhealthy_threshold = 2";
    let lb = Ringlb::start(write_config(
        &health_config(1, "", health),
        &[("targets/web.txt", targets(&addrs))],
    ));
    let base = lb.fd_count();
    let start = Instant::now();
    let mut peak = base;
    while accepted.load(Ordering::Relaxed) < 10_000 {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "only {} probes in 40 s",
            accepted.load(Ordering::Relaxed)
        );
        peak = peak.max(lb.fd_count());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // At most one probe socket per target is ever open.
    assert!(peak <= base + 100, "fds peaked at {peak} (start {base})");
    for t in tasks {
        t.abort();
    }
    assert!(lb.stop().success());
}
