//! A hostile world: idle and slow clients, fd exhaustion, a slow target, a burst.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_never_reading_clients_all_end_by_idle_timeout() {
    // The target floods every client with 8 MiB, so a client that never reads
    // leaves a direction blocked with bytes in flight (and a pipe in use).
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let chunk = vec![7u8; 64 * 1024];
                for _ in 0..128 {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let lb = Ringlb::in_front_of(1, "idle_timeout = \"1s\"", &[target]);
    let base = lb.baseline_fds(1);
    let start = Instant::now();
    // 1. connects and sends nothing (and reads what comes, so only idleness ends it)
    let silent = TcpStream::connect(lb.addr()).await.unwrap();
    // 2. sends one byte every 1.5 s: slower than the timeout
    let mut slow = TcpStream::connect(lb.addr()).await.unwrap();
    // 3. half-closes at once and never reads
    let mut deaf = TcpStream::connect(lb.addr()).await.unwrap();
    deaf.shutdown().await.unwrap();
    let slow_task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            if slow.write_all(b"x").await.is_err() {
                return slow;
            }
        }
    });
    let mut silent = silent;
    until_closed(&mut silent, Duration::from_secs(10)).await;
    // The deaf client: what arrived before ringlb closed it is drained here,
    // then the stream must end.
    until_closed(&mut deaf, Duration::from_secs(10)).await;
    let mut slow = tokio::time::timeout(Duration::from_secs(10), slow_task)
        .await
        .expect("slow client closed")
        .unwrap();
    until_closed(&mut slow, Duration::from_secs(2)).await;
    assert!(start.elapsed() < Duration::from_secs(12));
    // Nothing is left holding sockets or pipes.
    wait_until(Duration::from_secs(30), "fds back to the start", || {
        lb.fd_count() <= base
    });
    assert!(lb.stop().success());
}

/// At the fd limit, clients ringlb cannot take are closed at once (with a
/// descriptor kept in reserve for it) and counted as `local_resources`,
/// not left waiting in the accept queue or blamed on the targets; the
/// shortage is logged once, not once per client; what is placed keeps
/// flowing, and new clients are served once descriptors are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_fd_limit_ringlb_stays_up_calm_and_recovers() {
    raise_fd_limit();
    let backend = Backend::tagged(1).await;
    let lb = Ringlb::start_with_fd_limit(
        write_config(
            &simple_config(1, ""),
            &[("targets/web.txt", targets(&[backend.addr]))],
        ),
        256,
    );
    // 1,000 clients: ringlb can hold about 110 of them (2 fds each).
    let mut clients = Vec::new();
    for _ in 0..1000 {
        clients.push(TcpStream::connect(lb.addr()).await.unwrap());
    }
    wait_until_async(Duration::from_secs(10), "ringlb to fill up", || {
        backend.open() >= 100
    })
    .await;
    // Every client gets its answer or its close within a second: none waits.
    let started = Instant::now();
    let mut served = Vec::new();
    let mut closed = 0;
    for mut c in clients {
        let mut tag = [0u8];
        match tokio::time::timeout(Duration::from_secs(1), c.read(&mut tag)).await {
            Ok(Ok(1)) => served.push(c),
            Ok(_) => closed += 1,
            Err(_) => panic!("a client waited over a second at the fd limit"),
        }
    }
    println!(
        "at the limit: {} served, {closed} closed at once, in {:?}",
        served.len(),
        started.elapsed()
    );
    assert!(served.len() >= 100, "{} served", served.len());
    assert!(closed >= 800, "{closed} closed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the clients past the limit waited"
    );
    let cpu_before = lb.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(2)).await; // measuring an interval, not syncing
    let cpu = lb.cpu_seconds() - cpu_before;
    assert!(cpu < 0.5, "{cpu:.2} CPU-s in 2 s at the fd limit: spinning");
    assert_eq!(
        lb.count_log("out of local resources"),
        1,
        "one line for the episode, not one per client:\n{}",
        lb.log()
    );
    // Running out of fds is ringlb's own trouble, not the target's.
    assert!(
        !lb.log().contains("to=unhealthy"),
        "a local EMFILE marked the target unhealthy:\n{}",
        lb.log()
    );
    // Connections already placed keep flowing.
    echo(&mut served[0], b"still flowing at the limit")
        .await
        .unwrap();
    // Free everything: new clients are served, the refusals were counted
    // under their own reason, and the episode's end says how many.
    drop(served);
    wait_until_async(Duration::from_secs(10), "connections to close", || {
        backend.open() == 0
    })
    .await;
    let mut s = TcpStream::connect(lb.addr()).await.unwrap();
    let mut tag = [0u8];
    let got = tokio::time::timeout(Duration::from_secs(10), s.read(&mut tag)).await;
    assert!(
        matches!(got, Ok(Ok(1))) && tag[0] == 1,
        "{got:?}; fds {}; log:\n{}",
        lb.fd_count(),
        lb.log()
    );
    let refused = metric(
        &lb,
        "ringlb_listener_connections_refused_total{listener=\"web\",reason=\"local_resources\"}",
    )
    .await;
    assert_eq!(
        refused, closed as u64,
        "every client closed at once was counted"
    );
    let no_target = metric(
        &lb,
        "ringlb_listener_connections_refused_total{listener=\"web\",reason=\"no_target\"}",
    )
    .await;
    assert_eq!(no_target, 0, "a local shortage is not a missing target");
    // The episode ends after five quiet seconds, at the next placement.
    tokio::time::sleep(Duration::from_secs(5)).await; // letting the episode's quiet time pass
    let _ = connect_tagged(lb.addr()).await;
    let line = lb.wait_log("local resources are back", Duration::from_secs(5));
    assert!(line.contains(&format!("refused={closed}")), "{line}");
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_while_a_fast_client_pushes_1_gib_into_a_slow_target() {
    memory_stays_flat(&simple_config(1, "")).await;
}

/// The same with every byte copied: the ring receive stops while the
/// target is full, so the client's bytes wait in its own socket, not in
/// provided buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_while_1_gib_is_copied_into_a_slow_target() {
    memory_stays_flat(&with_splice(&simple_config(1, ""), "never")).await;
}

async fn memory_stays_flat(config: &str) {
    // The target reads 64 KiB every 250 µs at most: about 250 MB/s.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    let reader = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
            tokio::time::sleep(Duration::from_micros(250)).await;
        }
    });
    let lb = Ringlb::with_config(config, &[target]);
    let base = lb.rss_kib();
    let mut c = TcpStream::connect(lb.addr()).await.unwrap();
    let chunk = vec![1u8; 1 << 20];
    let mut peak = base;
    for i in 0..1024 {
        c.write_all(&chunk).await.unwrap();
        if i % 16 == 0 {
            peak = peak.max(lb.rss_kib());
        }
    }
    c.shutdown().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("target got it all")
        .unwrap();
    assert_eq!(got, 1 << 30);
    assert!(
        peak - base < 8 * 1024,
        "RSS grew {} KiB while 1 GiB went through",
        peak - base
    );
    println!("RSS base {base} KiB, peak {peak} KiB");
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_10000_connections_leaves_ringlb_up_and_leak_free() {
    raise_fd_limit();
    let backend = Backend::tagged(1).await;
    let lb = Ringlb::in_front_of(2, "", &[backend.addr]);
    let base = lb.baseline_fds(1);
    let addr = lb.addr();
    // 10,000 attempts in waves of 1,000, as fast as they can be made; most
    // hang up at once. Every 50th waits for its backend's byte, to show the
    // burst is being served, not just absorbed. A listener whose accept queue
    // overflows makes the kernel drop the handshake's last ACK (SYN cookies),
    // stranding a client that waits for the server to speak: the test backend
    // has a real backlog for that reason, and 10% of the sample is margin.
    let (mut attempts, mut sampled, mut served) = (0, 0, 0);
    for wave in 0..10 {
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                tokio::spawn(async move {
                    let connect =
                        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
                            .await;
                    let Ok(Ok(mut s)) = connect else {
                        return (false, false);
                    };
                    if (wave * 1000 + i) % 50 != 0 {
                        return (true, false);
                    }
                    let mut tag = [0u8];
                    let got =
                        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut tag)).await;
                    (true, matches!(got, Ok(Ok(_))))
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let (connected, ok) = t.await.unwrap();
            attempts += usize::from(connected);
            if (wave * 1000 + i) % 50 == 0 {
                sampled += 1;
                served += usize::from(ok);
            }
        }
    }
    assert!(
        attempts >= 9_900,
        "only {attempts} of 10,000 connects went through"
    );
    assert!(
        served * 10 >= sampled * 9,
        "only {served} of {sampled} sampled connections served"
    );
    assert_eq!(
        connect_tagged(addr).await.1,
        1,
        "still serving after the burst"
    );
    wait_until(Duration::from_secs(15), "fds back to the start", || {
        lb.fd_count() <= base
    });
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resetting_target_and_a_silent_target_cost_only_their_own_clients() {
    // One target accepts and resets at once; one accepts and never answers.
    let resetter = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reset_addr = resetter.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = resetter.accept().await else {
                return;
            };
            let s = s.into_std().unwrap();
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap(); // close = RST
            drop(s);
        }
    });
    let mute = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = mute.accept().await else {
                return;
            };
            h.lock().unwrap().push(s);
        }
    });
    let good = Backend::tagged(9).await;
    let lb = Ringlb::start_logging(
        write_config(
            &simple_config(2, "idle_timeout = \"1s\""),
            &[(
                "targets/web.txt",
                targets(&[reset_addr, mute_addr, good.addr]),
            )],
        ),
        "debug",
    );
    // All three in service first: a target still `initial` would shift the rotation.
    lb.wait_healthy(3);
    // Round robin visits each once per three clients.
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        let start = Instant::now();
        // The resetting target's reset is passed on to its client, which
        // may see it before its own connect has returned.
        let Ok(mut s) = TcpStream::connect(lb.addr()).await else {
            outcomes.push((false, start.elapsed()));
            continue;
        };
        let mut tag = [0u8];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut tag))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "every client gets an answer or a close; {outcomes:?}; log:\n{}",
                    lb.log()
                )
            });
        outcomes.push((matches!(r, Ok(1)) && tag[0] == 9, start.elapsed()));
    }
    let served = outcomes.iter().filter(|(ok, _)| *ok).count();
    assert_eq!(
        served, 2,
        "the good target served its clients: {outcomes:?}"
    );
    // The mute target's clients end by idle_timeout, not later.
    assert!(
        outcomes.iter().all(|(_, t)| *t < Duration::from_secs(4)),
        "{outcomes:?}"
    );
    // Still serving: within one round of three, the good target answers.
    let mut again = false;
    for _ in 0..3 {
        let Ok(mut s) = TcpStream::connect(lb.addr()).await else {
            continue; // the resetting target's turn
        };
        let mut tag = [0u8];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut tag))
            .await
            .unwrap();
        again |= matches!(r, Ok(1)) && tag[0] == 9;
    }
    assert!(again, "ringlb still serves");
    drop(held);
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_times_out_a_client_that_never_finishes_its_request() {
    let backend = Backend::tagged(1).await;
    let lb = Ringlb::in_front_of(1, "", &[backend.addr]);
    let mut slow = TcpStream::connect(lb.admin).await.unwrap();
    slow.write_all(b"GET /metr").await.unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut out))
        .await
        .expect("closed in time")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408"),
        "{out:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(4),
        "timed out too early: {:?}",
        start.elapsed()
    );
    assert!(lb.stop().success());
}

/// A local user holding 1,000 idle connections to the admin endpoint (and
/// opening more as the oldest are closed) cannot make `/healthz` fail: it
/// answers every time, at once (keepalived's check gives it a second); a
/// connection that sends nothing is closed after its first-byte deadline;
/// a request ended by bare LFs is answered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_idle_admin_connections_cannot_starve_healthz() {
    raise_fd_limit();
    let backend = Backend::tagged(1).await;
    let lb = Ringlb::in_front_of(1, "", &[backend.addr]);
    let healthz = |admin| async move {
        let started = Instant::now();
        let mut s = TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "no /healthz answer within a second");
        assert!(
            out.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        started.elapsed()
    };
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(lb.admin).await.unwrap());
    }
    let mut times = Vec::new();
    for round in 0..40 {
        // Past a thousand, the crowd grows past the cap as it probes.
        if round >= 20 {
            for _ in 0..10 {
                idle.push(TcpStream::connect(lb.admin).await.unwrap());
            }
        }
        times.push(healthz(lb.admin).await);
    }
    times.sort();
    println!(
        "/healthz with {} idle admin connections: median {:?}, slowest {:?}",
        idle.len(),
        times[20],
        times[39]
    );
    assert!(
        times[20] < Duration::from_millis(100),
        "median {:?}",
        times[20]
    );
    // The oldest idle connection was closed: by the first-byte deadline,
    // or for a newer one.
    let mut first = idle.remove(0);
    until_closed(&mut first, Duration::from_secs(5)).await;
    drop(idle);
    // Bare LFs end a request head too.
    let (status, body) = admin_raw(lb.admin, b"GET /healthz HTTP/1.1\n\n").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(lb.stop().success());
}
