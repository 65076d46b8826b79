//! Running as a daemon: sd_notify, the admin endpoint and its metrics.

mod common;

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::*;

/// Parses Prometheus text exposition strictly enough to catch a malformed
/// line: `# HELP`/`# TYPE` comments and `name{k="v",...} integer` samples.
/// Returns samples keyed by `name{labels}` as written.
fn parse_prometheus(text: &str) -> HashMap<String, u64> {
    let mut samples = HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name in {line:?}"
        );
        assert!(typed.contains(name), "{name} has no # TYPE before it");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(
                labels.starts_with('{') && labels.ends_with('}'),
                "bad labels in {line:?}"
            );
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                assert!(!k.is_empty() && !v.contains('\n'), "{line:?}");
            }
        }
        let value: u64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "duplicate series {series}"
        );
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_sees_ready_reloading_ready_stopping_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let backend = Backend::tagged(1).await;
    let mut lb = Ringlb::start_with_env(
        write_config(
            &simple_config(2, ""),
            &[("targets/web.txt", targets(&[backend.addr]))],
        ),
        "info",
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 4096];
    let mut next = || {
        let n = sock.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // Status-only messages may come between the ones that matter.
    let mut wanted = |what: &str| loop {
        let m = next();
        if m.contains(what) {
            return m;
        }
        assert!(
            m.starts_with("STATUS="),
            "unexpected {m:?} while waiting for {what}"
        );
    };
    let ready = wanted("READY=1");
    assert!(ready.contains("STATUS=targets healthy"), "{ready:?}");
    lb.signal(libc::SIGHUP);
    let reloading = wanted("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    wanted("READY=1");
    lb.signal(libc::SIGTERM);
    wanted("STOPPING=1");
    assert!(lb.wait_exit(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_the_traffic_sent() {
    let backend = Backend::tagged(1).await;
    let lb = Ringlb::in_front_of(2, "", &[backend.addr]);
    let target = backend.addr.to_string();
    // 10 connections, each sending 100 bytes that come back echoed after the tag.
    for _ in 0..10 {
        let (mut s, _) = connect_tagged(lb.addr()).await;
        echo(&mut s, &[7u8; 100]).await.unwrap();
    }
    let key = |name: &str| format!("{name}{{group=\"web\",target=\"{target}\"}}");
    let mut m = HashMap::new();
    let mut last = String::new();
    let ok = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let (status, body) = admin_get(lb.admin, "/metrics").await;
            assert_eq!(status, 200);
            m = parse_prometheus(&body);
            last = body;
            if m.get(&key("ringlb_target_bytes_received_total")) == Some(&1010)
                && m.get(&key("ringlb_target_connections_active")) == Some(&0)
                // The listener's count drops a moment after the target's.
                && m.get("ringlb_listener_connections_active{listener=\"web\"}") == Some(&0)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "metrics never matched the traffic:\n{last}");
    assert_eq!(
        m["ringlb_listener_connections_accepted_total{listener=\"web\"}"],
        10
    );
    assert_eq!(m["ringlb_listener_connections_active{listener=\"web\"}"], 0);
    assert_eq!(
        m["ringlb_listener_connections_refused_total{listener=\"web\",reason=\"no_target\"}"],
        0
    );
    let per_worker: u64 = (0..2)
        .map(|w| m[&format!("ringlb_worker_connections_accepted_total{{worker=\"{w}\"}}")])
        .sum();
    assert_eq!(per_worker, 10);
    assert_eq!(m[&key("ringlb_target_connections_total")], 10);
    assert_eq!(m[&key("ringlb_target_bytes_sent_total")], 1000);
    assert_eq!(
        m[&key("ringlb_target_bytes_received_total")],
        1010,
        "100 echoed + 1 tag byte, 10 times"
    );
    assert_eq!(m[&key("ringlb_target_connect_failures_total")], 0);
    assert_eq!(m[&key("ringlb_target_healthy")], 1);
    assert_eq!(m[&key("ringlb_target_draining")], 0);
    assert_eq!(
        m[&format!(
            "ringlb_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )],
        1
    );
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_report_shows_a_health_flip_and_a_drain() {
    let (a, b) = (Backend::tagged(1).await, Backend::tagged(2).await);
    let a_addr = a.addr;
    // Probes go to the traffic port every 200 ms; one failure takes a target out.
    let health =
        "protocol = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 1";
    let lb = Ringlb::start(write_config(
        &health_config(2, "deregistration_delay = \"30s\"", health),
        &[("targets/web.txt", targets(&[a.addr, b.addr]))],
    ));
    let report = |body: String| -> serde_json::Value { serde_json::from_str(&body).unwrap() };
    let target_of = |v: &serde_json::Value, addr: String| -> serde_json::Value {
        v["groups"][0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["address"] == addr.as_str())
            .cloned()
            .unwrap()
    };
    lb.wait_log(
        &format!("target={a_addr} from=initial to=healthy"),
        Duration::from_secs(5),
    );
    drop(a); // A's port now refuses: its next probe fails
    lb.wait_log(
        &format!("target={a_addr} from=healthy to=unhealthy"),
        Duration::from_secs(5),
    );
    let (status, body) = admin_get(lb.admin, "/targets").await;
    assert_eq!(status, 200);
    let t = target_of(&report(body), a_addr.to_string());
    assert_eq!(t["health"], "unhealthy");
    assert!(t["reason"].as_str().unwrap().contains("connect"), "{t}");
    assert_eq!(t["ready"], false);

    // Hold a connection on B, then remove B from the file: B drains.
    let (held, tag) = connect_tagged(lb.addr()).await;
    assert_eq!(tag, 2);
    replace_file(&lb.dir.path().join("targets/web.txt"), &targets(&[a_addr]));
    lb.wait_log("draining", Duration::from_secs(2));
    let (_, body) = admin_get(lb.admin, "/targets").await;
    let t = target_of(&report(body), b.addr.to_string());
    assert_eq!(t["draining"], true, "{t}");
    assert_eq!(t["active_connections"], 1);
    // The same fields as a listed target, in the config's own words.
    assert_eq!(t["health"], "draining", "{t}");
    assert_eq!(t["ready"], false, "{t}");
    assert_eq!(t["weight"], 1, "{t}");
    assert_eq!(t["reason"], "deregistration in progress", "{t}");
    let left = t["drain_seconds_left"].as_f64().unwrap();
    assert!(left > 25.0 && left <= 30.0, "{left}");
    // `?pretty` is the same report, indented, keys in the documented order.
    let (_, pretty) = admin_get(lb.admin, "/targets?pretty").await;
    assert!(pretty.starts_with("{\n  \"epoch\": "), "{pretty}");
    let keys = [
        "\"address\"",
        "\"weight\"",
        "\"health\"",
        "\"reason\"",
        "\"ready\"",
        "\"draining\"",
        "\"drain_seconds_left\"",
        "\"slow_start_seconds_left\"",
        "\"active_connections\"",
    ];
    let at: Vec<usize> = keys.iter().map(|k| pretty.find(k).unwrap()).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "key order: {pretty}");
    assert_eq!(report(pretty)["groups"][0]["name"], "web");
    drop(held);
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_answers_404_400_and_healthz() {
    let backend = Backend::tagged(1).await;
    let lb = Ringlb::in_front_of(1, "", &[backend.addr]);
    assert_eq!(
        admin_get(lb.admin, "/healthz").await,
        (200, "ok\n".to_string())
    );
    assert_eq!(admin_get(lb.admin, "/nothing").await.0, 404);
    assert_eq!(admin_raw(lb.admin, b"\x00\x01garbage\r\n\r\n").await.0, 400);
    assert_eq!(
        admin_raw(lb.admin, b"DELETE /metrics HTTP/1.1\r\n\r\n")
            .await
            .0,
        405
    );
    assert!(lb.admin.ip().is_loopback());
    // The data plane is unaffected by an admin client that never finishes.
    let _slow = tokio::net::TcpStream::connect(lb.admin).await.unwrap();
    assert_eq!(connect_tagged(lb.addr()).await.1, 1);
    assert_eq!(admin_get(lb.admin, "/healthz").await.0, 200);
    assert!(lb.stop().success());
}
