//! The connection log: one line per connection when it ends, saying how it
//! ended in the same words as `ringlb_connections_closed_total`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `config` with an `[access_log]` table.
fn with_access_log(config: &str, table: &str) -> String {
    format!("{config}\n[access_log]\n{table}\n")
}

/// The log's lines once it has `n` of them.
fn lines(path: &Path, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    wait_until(Duration::from_secs(10), &format!("{n} log lines"), || {
        got = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        got.len() >= n
    });
    got
}

/// A target that sends `bytes` and closes at once (it ends first).
async fn speaker(bytes: &'static [u8]) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(bytes).await;
                let _ = s.shutdown().await;
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_connection_ends_is_one_line_and_one_count() {
    let echo_backend = Backend::tagged(1).await;
    let talker = speaker(b"hello and goodbye").await;
    let config = with_access_log(
        &simple_config(1, "idle_timeout = \"1s\"\nderegistration_delay = \"0s\""),
        "to = \"access.log\"",
    );
    let lb = Ringlb::with_config(&config, &[echo_backend.addr]);
    let log = lb.dir.path().join("access.log");

    // The client ends first: 5 bytes up, the tag and the echo down.
    let (mut s, _) = connect_tagged(lb.addr()).await;
    echo(&mut s, b"hello").await.unwrap();
    s.shutdown().await.unwrap();
    until_closed(&mut s, Duration::from_secs(5)).await;
    let first = lines(&log, 1).remove(0);
    let client = s.local_addr().unwrap();
    for words in [
        " web ",
        &format!(" {client} -> web/{} ", echo_backend.addr),
        " up=5 down=6 attempts=1 end=client_closed",
        " connect=",
        " duration=",
    ] {
        assert!(first.contains(words), "{words:?} in {first}");
    }
    assert!(
        first.starts_with("20") && first.contains('T'),
        "a timestamp first: {first}"
    );

    // Idle for idle_timeout.
    let (mut idle, _) = connect_tagged(lb.addr()).await;
    until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(
        lines(&log, 2)[1].ends_with("end=idle_timeout"),
        "{:?}",
        lines(&log, 2)
    );

    // The target ends first.
    replace_file(&lb.dir.path().join("targets/web.txt"), &targets(&[talker]));
    lb.wait_log("targets reloaded", Duration::from_secs(5));
    lb.wait_log(
        &format!("target={talker} from=initial to=healthy"),
        Duration::from_secs(10),
    );
    let mut t = TcpStream::connect(lb.addr()).await.unwrap();
    let mut got = Vec::new();
    t.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello and goodbye");
    drop(t);
    let all = lines(&log, 3);
    assert!(
        all.iter()
            .any(|l| l.contains(" down=17 ") && l.ends_with("end=target_closed")),
        "{all:?}"
    );

    let count = |reason: &str| {
        format!("ringlb_connections_closed_total{{listener=\"web\",reason=\"{reason}\"}}")
    };
    for (reason, n) in [
        ("client_closed", 1),
        ("idle_timeout", 1),
        ("target_closed", 1),
    ] {
        assert_eq!(
            wait_metric(&lb, &count(reason), |v| v >= n).await,
            n,
            "{reason}"
        );
    }
    assert_eq!(metric(&lb, "ringlb_access_log_dropped_total").await, 0);
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_failed_connects_drains_and_shutdown_are_logged_as_json() {
    let backend = Backend::tagged(1).await;
    let refusing = refusing_addr();
    // Only 127.0.0.2 may connect; 127.0.0.1 is refused at accept.
    let config = simple_config(1, "connect_retries = 0\nderegistration_delay = \"0s\"")
        .replace(
            "target_group = \"web\"\n",
            "target_group = \"web\"\nallow = [\"127.0.0.2\"]\n",
        )
        .replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"1s\"");
    let config = with_access_log(&config, "to = \"access.log\"\nformat = \"json\"");
    let mut lb = Ringlb::with_config(&config, &[backend.addr]);
    let log = lb.dir.path().join("access.log");
    let parse = |n: usize| -> Vec<serde_json::Value> {
        lines(&log, n)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let addr = lb.addr();
    let from = |ip: [u8; 4]| async move {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::from((ip, 0))).unwrap();
        s.connect(addr).await.unwrap()
    };

    let mut refused = from([127, 0, 0, 1]).await;
    until_closed(&mut refused, Duration::from_secs(5)).await;
    let v = parse(1);
    assert_eq!(v[0]["end"], "not_allowed");
    assert!(
        v[0]["target"].is_null() && v[0]["attempts"] == 0,
        "{}",
        v[0]
    );

    // A target that refuses: one attempt (connect_retries = 0), failed.
    replace_file(
        &lb.dir.path().join("targets/web.txt"),
        &targets(&[refusing]),
    );
    lb.wait_log("targets reloaded", Duration::from_secs(5));
    let mut failed = from([127, 0, 0, 2]).await;
    until_closed(&mut failed, Duration::from_secs(5)).await;
    let v = parse(2);
    assert_eq!(v[1]["end"], "connect_failed", "{}", v[1]);
    assert_eq!(v[1]["attempts"], 1);
    assert_eq!(v[1]["target"], refusing.to_string());

    // Held on the backend, then the backend is removed (delay 0s).
    replace_file(
        &lb.dir.path().join("targets/web.txt"),
        &targets(&[backend.addr]),
    );
    let back = |n: usize| {
        wait_until(
            Duration::from_secs(10),
            "the backend back in the group",
            || lb.count_log(&format!("target={} from=initial to=healthy", backend.addr)) >= n,
        )
    };
    back(2);
    let mut held = from([127, 0, 0, 2]).await;
    let mut tag = [0u8];
    held.read_exact(&mut tag).await.unwrap();
    replace_file(&lb.dir.path().join("targets/web.txt"), "# none\n");
    until_closed(&mut held, Duration::from_secs(5)).await;
    let v = parse(3);
    assert_eq!(v[2]["end"], "deregistered", "{}", v[2]);
    assert_eq!(v[2]["bytes_down"], 1, "the tag came down first");

    // Held through a shutdown whose timeout runs out.
    replace_file(
        &lb.dir.path().join("targets/web.txt"),
        &targets(&[backend.addr]),
    );
    back(3);
    let mut last = from([127, 0, 0, 2]).await;
    last.read_exact(&mut tag).await.unwrap();
    lb.signal(libc::SIGTERM);
    assert!(lb.wait_exit(Duration::from_secs(20)).success());
    let v = parse(4);
    assert_eq!(v[3]["end"], "shutdown", "{}", v[3]);
}

/// `SIGUSR1` reopens the file (log rotation moved it away); a path that
/// cannot be written is refused by `check` with its file, line and key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_and_check_refuses_a_path_it_cannot_write() {
    let backend = Backend::tagged(1).await;
    let config = with_access_log(&simple_config(1, ""), "to = \"access.log\"");
    let lb = Ringlb::with_config(&config, &[backend.addr]);
    let log = lb.dir.path().join("access.log");
    let (s, _) = connect_tagged(lb.addr()).await;
    drop(s);
    lines(&log, 1);
    std::fs::rename(&log, lb.dir.path().join("access.log.1")).unwrap();
    lb.signal(libc::SIGUSR1);
    lb.wait_log("access log reopened", Duration::from_secs(5));
    let (s, _) = connect_tagged(lb.addr()).await;
    drop(s);
    assert_eq!(lines(&log, 1).len(), 1, "the next line is in the new file");

    let bad = with_access_log(
        &simple_config(1, ""),
        "to = \"/nonexistent-ringlb-folder/access.log\"",
    );
    let dir = write_config(&bad, &[("targets/web.txt", targets(&[backend.addr]))]);
    let out = run_check(&dir.path().join("ringlb.toml"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("access_log.to"), "{stderr}");
    assert!(stderr.contains("/nonexistent-ringlb-folder"), "{stderr}");
    let line = bad.lines().position(|l| l.contains("nonexistent")).unwrap() + 1;
    assert!(
        stderr.contains(&format!("ringlb.toml:{line}:")),
        "line {line}: {stderr}"
    );
    assert!(lb.stop().success());
}
