//! Hot reload: the targets file an autoscaler rewrites, draining, SIGHUP.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncReadExt;

fn targets_path(lb: &Ringlb) -> std::path::PathBuf {
    lb.dir.path().join("targets/web.txt")
}

/// Connects until the answering backend has `tag`; returns how long that took.
async fn until_tag(lb: &Ringlb, tag: u8, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (_s, got) = connect_tagged(lb.addr()).await;
        if got == tag {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "still not reaching target {tag} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_and_in_place_rewrite_are_both_picked_up() {
    let (a, b) = (Backend::tagged(1).await, Backend::tagged(2).await);
    let lb = Ringlb::in_front_of(2, "", &[a.addr]);
    assert_eq!(connect_tagged(lb.addr()).await.1, 1);

    replace_file(&targets_path(&lb), &targets(&[b.addr]));
    let took = until_tag(&lb, 2, Duration::from_secs(5)).await;
    println!("rename picked up after {took:?}");

    std::fs::write(targets_path(&lb), targets(&[a.addr])).unwrap(); // in place
    let took = until_tag(&lb, 1, Duration::from_secs(5)).await;
    println!("in-place rewrite picked up after {took:?}");
    // Everything after the switch goes to the new set only.
    for _ in 0..10 {
        assert_eq!(connect_tagged(lb.addr()).await.1, 1);
    }
    assert!(
        lb.wait_log("targets reloaded", Duration::from_secs(5))
            .contains("removed=[")
    );
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_2_4_2_every_500ms_for_20s_under_50_streaming_clients_loses_nothing() {
    raise_fd_limit();
    let mut backends = Vec::new();
    for tag in 0..4 {
        backends.push(Backend::tagged(tag).await);
    }
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let lb = Ringlb::in_front_of(2, "", &addrs[..2]);
    let proxy = lb.addr();
    let path = targets_path(&lb);
    let run_for = Duration::from_secs(20);
    let start = Instant::now();

    let ok = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..50u64)
        .map(|c| {
            let ok = ok.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while start.elapsed() < run_for {
                    // Each connection streams 3 chunks of distinct bytes and
                    // checks every echo; any failure fails the test.
                    let (mut s, _) = connect_tagged(proxy).await;
                    for chunk in 0..3u64 {
                        let msg: Vec<u8> = (0..4096u64)
                            .map(|i| (i * 31 + c * 7 + n * 13 + chunk) as u8)
                            .collect();
                        echo(&mut s, &msg)
                            .await
                            .unwrap_or_else(|e| panic!("client {c} connection {n}: {e}"));
                    }
                    n += 1;
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let mut four = false;
    while start.elapsed() < run_for {
        four = !four;
        let set = if four { &addrs[..] } else { &addrs[..2] };
        replace_file(&path, &targets(set));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for c in clients {
        c.await
            .expect("a client saw a failed connection or corrupted bytes");
    }
    let total = ok.load(Ordering::Relaxed);
    println!(
        "{total} connections, {} reloads logged",
        lb.count_log("targets reloaded")
    );
    assert!(total > 1000, "only {total} connections completed");
    assert!(
        backends[2].accepted() > 0 && backends[3].accepted() > 0,
        "targets 3 and 4 never got traffic"
    );
    assert!(
        lb.count_log("targets reloaded") >= 10,
        "the set did not change often enough"
    );
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_targets_connection_flows_until_the_delay_then_closes() {
    let (a, b) = (Backend::tagged(1).await, Backend::tagged(2).await);
    let lb = Ringlb::in_front_of(2, "deregistration_delay = \"4s\"", &[a.addr]);
    let (mut old, tag) = connect_tagged(lb.addr()).await;
    assert_eq!(tag, 1);
    replace_file(&targets_path(&lb), &targets(&[b.addr]));
    until_tag(&lb, 2, Duration::from_secs(5)).await;
    let removed_at = Instant::now();
    lb.wait_log("draining", Duration::from_secs(5));
    // Still flowing while draining.
    for _ in 0..5 {
        echo(&mut old, b"still here")
            .await
            .expect("draining connection keeps flowing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then closed when the delay runs out.
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(15), old.read(&mut buf))
        .await
        .expect("closed by the delay");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let after = removed_at.elapsed();
    assert!(
        after >= Duration::from_millis(3000),
        "closed after {after:?}, before the delay"
    );
    wait_until_async(Duration::from_secs(5), "target side closed", || {
        a.open() == 0
    })
    .await;
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_delay_closes_a_removed_targets_connections_at_once() {
    let (a, b) = (Backend::tagged(1).await, Backend::tagged(2).await);
    let lb = Ringlb::in_front_of(2, "deregistration_delay = \"0s\"", &[a.addr, b.addr]);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_tagged(lb.addr()).await);
    }
    replace_file(&targets_path(&lb), &targets(&[b.addr]));
    // A's two connections close within a tick or two; B's stay.
    for (s, tag) in held.iter_mut() {
        if *tag == 1 {
            let mut buf = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_millis(1500), s.read(&mut buf))
                .await
                .expect("closed at once");
            assert!(matches!(r, Ok(0) | Err(_)));
        } else {
            echo(s, b"b stays").await.unwrap();
        }
    }
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_re_added_while_draining_keeps_its_connection() {
    let (a, b) = (Backend::tagged(1).await, Backend::tagged(2).await);
    let lb = Ringlb::in_front_of(2, "deregistration_delay = \"5s\"", &[a.addr]);
    let (mut old, _) = connect_tagged(lb.addr()).await;
    replace_file(&targets_path(&lb), &targets(&[b.addr]));
    lb.wait_log("draining", Duration::from_secs(5));
    let removed_at = Instant::now();
    replace_file(&targets_path(&lb), &targets(&[a.addr, b.addr]));
    lb.wait_log("back in service", Duration::from_secs(5));
    // Past the original deadline, the connection still flows.
    while removed_at.elapsed() < Duration::from_secs(6) {
        echo(&mut old, b"kept")
            .await
            .expect("re-added target's connection survives");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_written_and_garbage_targets_files_keep_the_old_set_serving() {
    let (a, b) = (Backend::tagged(1).await, Backend::tagged(2).await);
    let lb = Ringlb::in_front_of(2, "", &[a.addr]);
    let path = targets_path(&lb);
    let half = format!("{}\n{}", b.addr, &b.addr.to_string()[..6]); // cut mid-line
    for (text, why) in [
        (half.as_str(), "half-written"),
        ("hello world\n", "not HOST:PORT"),
    ] {
        std::fs::write(&path, text).unwrap();
        let line = lb.wait_log(why, Duration::from_secs(2));
        assert!(
            line.contains("targets file rejected") && line.contains("web.txt"),
            "{line}"
        );
        for _ in 0..5 {
            assert_eq!(
                connect_tagged(lb.addr()).await.1,
                1,
                "old set keeps serving after {why}"
            );
        }
    }
    assert_eq!(
        lb.count_log("targets file rejected"),
        2,
        "each bad file is reported once"
    );
    replace_file(&path, &targets(&[b.addr]));
    until_tag(&lb, 2, Duration::from_secs(5)).await;
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_targets_file_empties_the_group_with_one_warning_everywhere() {
    let a = Backend::tagged(1).await;
    let lb = Ringlb::in_front_of(2, "deregistration_delay = \"30s\"", &[a.addr]);
    let (mut held, _) = connect_tagged(lb.addr()).await;
    replace_file(&targets_path(&lb), "# scaled to zero\n");
    let line = lb.wait_log("has no targets", Duration::from_secs(5));
    assert!(line.contains("WARN") && line.contains("web.txt"), "{line}");
    // New clients are closed without reaching a target...
    let mut s = tokio::net::TcpStream::connect(lb.addr()).await.unwrap();
    let mut byte = [0u8];
    let got = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
        .await
        .expect("closed in time");
    assert!(
        matches!(got, Ok(0) | Err(_)),
        "a client reached a target: {got:?}"
    );
    // ...while the removed target's connection drains.
    echo(&mut held, b"still draining").await.unwrap();
    // `check` says the same, and passes.
    let out = run_check(&lb.config_path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: target group \"web\" has no targets"),
        "{stderr}"
    );
    // A SIGHUP keeps the empty set and the drain.
    lb.signal(libc::SIGHUP);
    lb.wait_log("config reloaded", Duration::from_secs(5));
    echo(&mut held, b"still draining after SIGHUP")
        .await
        .unwrap();
    replace_file(&targets_path(&lb), &targets(&[a.addr]));
    lb.wait_log("back in service", Duration::from_secs(5));
    wait_until_async(Duration::from_secs(10), "target 1 answers again", || {
        std::net::TcpStream::connect(lb.addr())
            .and_then(|mut s| {
                use std::io::Read;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut tag = [0u8];
                s.read_exact(&mut tag).map(|()| tag[0] == 1)
            })
            .unwrap_or(false)
    })
    .await;
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_listener_and_changes_the_algorithm_without_closing_connections() {
    let (a, b) = (Backend::tagged(1).await, Backend::tagged(2).await);
    let lb = Ringlb::in_front_of(2, "", &[a.addr, b.addr]);
    let (mut long, _) = connect_tagged(lb.addr()).await;

    let new_config = simple_config(2, "algorithm = \"maglev\"\nhash_key = \"source_ip\"")
        + "\n[[listener]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\ntarget_group = \"web\"\n";
    replace_file(&lb.config_path(), &new_config);
    lb.signal(libc::SIGHUP);
    let said = lb.wait_log("config reloaded", Duration::from_secs(5));
    for change in [
        "group web: algorithm round_robin -> maglev (hash_key source_ip)",
        "listener api added on 127.0.0.1:",
    ] {
        assert!(
            said.contains(change),
            "the reload line says {change:?}: {said}"
        );
    }
    // The address file is rewritten after the reload line is logged.
    wait_until(
        Duration::from_secs(5),
        "the address file to name api",
        || lb.addresses().1.contains_key("api"),
    );
    let api = lb.addresses().1["api"];

    // The long-lived connection on "web" is untouched.
    echo(&mut long, b"after reload")
        .await
        .expect("connection survives SIGHUP");
    // The new listener serves, and maglev on source_ip pins one client: under
    // round robin 20 connections would alternate between the two targets.
    let first = connect_tagged(api).await.1;
    for _ in 0..20 {
        assert_eq!(connect_tagged(api).await.1, first);
        assert_eq!(connect_tagged(lb.addr()).await.1, first);
    }
    // A bad config is refused and the running one stays.
    replace_file(&lb.config_path(), "[[listener]\n");
    lb.signal(libc::SIGHUP);
    lb.wait_log("config reload rejected", Duration::from_secs(5));
    echo(&mut long, b"still fine").await.unwrap();
    assert_eq!(connect_tagged(api).await.1, first);
    drop(long);
    assert!(lb.stop().success());
}

/// A writer that truncates the targets file in place, pauses, then writes
/// the same content back: with `deregistration_delay = "0s"`, an empty set
/// taking effect would close every connection; the 0-byte file is instead
/// held for its grace, and nothing is closed or refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_rewrite_in_place_closes_no_connection() {
    let a = Backend::tagged(1).await;
    let lb = Ringlb::in_front_of(2, "deregistration_delay = \"0s\"", &[a.addr]);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect_tagged(lb.addr()).await.0);
    }
    let path = targets_path(&lb);
    std::fs::File::create(&path).unwrap(); // truncated in place
    lb.wait_log("targets file is empty (0 bytes)", Duration::from_secs(5));
    // Clients keep being served while the file is empty.
    for _ in 0..20 {
        assert_eq!(connect_tagged(lb.addr()).await.1, 1);
    }
    std::fs::write(&path, targets(&[a.addr])).unwrap();
    for s in &mut held {
        echo(s, b"still open").await.unwrap();
    }
    assert_eq!(lb.count_log("targets reloaded"), 0, "{}", lb.log());
    assert_eq!(lb.count_log("has no targets"), 0, "{}", lb.log());
    assert!(lb.stop().success());
}

/// The same set rewritten without its final newline (as some editors do)
/// is no change: it is not refused, and a SIGHUP that adds a listener
/// goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_final_newline_never_blocks_a_reload() {
    let a = Backend::tagged(1).await;
    let lb = Ringlb::in_front_of(1, "", &[a.addr]);
    std::fs::write(targets_path(&lb), a.addr.to_string()).unwrap();
    let config = simple_config(1, "")
        + "\n[[listener]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\ntarget_group = \"web\"\n";
    replace_file(&lb.config_path(), &config);
    lb.signal(libc::SIGHUP);
    let said = lb.wait_log("config reloaded", Duration::from_secs(10));
    assert!(said.contains("listener api added"), "{said}");
    assert_eq!(lb.count_log("config reload rejected"), 0, "{}", lb.log());
    assert_eq!(lb.count_log("targets file rejected"), 0, "{}", lb.log());
    assert_eq!(connect_tagged(lb.addr()).await.1, 1);
    assert!(lb.stop().success());
}
