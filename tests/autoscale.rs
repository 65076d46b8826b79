//! `ringlb autoscale` end to end: a real ringlb, the real autoscaler, real
//! demo-backend processes it starts and stops, short periods.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::page::Page;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEMO: &str = env!("CARGO_BIN_EXE_demo-backend");

/// ringlb in front of an empty group "web" with fast HTTP health checks on
/// the demo backend's /api/v1/health.
fn ringlb(delay: &str) -> Ringlb {
    let config = health_config(
        2,
        &format!("algorithm = \"least_connections\"\nderegistration_delay = \"{delay}\""),
        "protocol = \"http\"\npath = \"/api/v1/health\"\ninterval = \"300ms\"\ntimeout = \"200ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2",
    );
    Ringlb::start(write_config(&config, &[("targets/web.txt", String::new())]))
}

/// A port range of `n` ports below the kernel's ephemeral range, different
/// for each test and test process, with nothing listening on it now.
fn port_range(test: u16, n: u16) -> u16 {
    // 20,000-31,999: below the ephemeral ports (32,768 up), which clients'
    // own connections take.
    let start = 20_000 + (std::process::id() % 300) as u16 * 40 + test * 10;
    let mut base = start;
    loop {
        if (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
        base += 40;
        if base + n > 32_000 {
            base = 20_000 + test * 10;
        }
        assert_ne!(base, start, "no {n} free ports in 20,000-32,000");
    }
}

/// The autoscaler as a child process, its log kept; on drop it and every
/// process it started (their names carry `marker`) are killed.
struct Autoscaler {
    proc: Logged,
    admin: SocketAddr,
    marker: String,
}

impl Autoscaler {
    fn start(config: &Path, marker: &str, extra: &[&str]) -> Autoscaler {
        let address_file = config.with_file_name("autoscale-addresses.json");
        // A file from an earlier autoscaler in this folder would name its port.
        let _absent = std::fs::remove_file(&address_file);
        let proc = Logged::spawn(
            Command::new(BIN)
                .args(["autoscale", "--config"])
                .arg(config)
                .arg("--address-file")
                .arg(&address_file)
                .args(extra)
                .env("RUST_LOG", "info"),
        );
        let (admin, _) = wait_addresses(&proc, &address_file);
        Autoscaler {
            admin,
            proc,
            marker: marker.to_string(),
        }
    }

    fn log(&self) -> String {
        self.proc.log()
    }

    fn count_log(&self, needle: &str) -> usize {
        self.proc.count_log(needle)
    }

    fn wait_log(&self, needle: &str, limit: Duration) -> String {
        self.proc.wait_log(needle, limit)
    }

    async fn gauge(&self, name: &str) -> f64 {
        let (status, body) = admin_get(self.admin, "/metrics").await;
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{group=\"web\"}} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
            .parse()
            .unwrap()
    }

    /// Waits until the autoscaler's gauge `name` reads `want` (its board is
    /// updated at the end of each one-second round).
    async fn wait_gauge(&self, name: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.gauge(name).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} is {got}, not {want}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(&mut self, sig: libc::c_int) {
        self.proc.signal(sig);
        assert!(
            self.proc.exited_within(Duration::from_secs(70)),
            "the autoscaler did not exit; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Autoscaler {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        for pid in pids_with(&self.marker) {
            // SAFETY: a pid just read from /proc whose command line names this test.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Processes whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(marker)
            && pid != std::process::id()
        {
            out.push(pid);
        }
    }
    out
}

fn write_autoscale(lb: &Ringlb, body: &str) -> PathBuf {
    let path = lb.dir.path().join("autoscale.toml");
    std::fs::write(
        &path,
        format!(
            "admin = \"127.0.0.1:0\"\n\n[[group]]\nname = \"web\"\ntargets_file = \"targets/web.txt\"\nringlb_admin = \"{}\"\n{body}",
            lb.admin
        ),
    )
    .unwrap();
    path
}

fn targets_file(lb: &Ringlb) -> String {
    std::fs::read_to_string(lb.dir.path().join("targets/web.txt")).unwrap()
}

/// Our lines in the targets file: the ports listed.
fn listed(lb: &Ringlb) -> Vec<u16> {
    targets_file(lb)
        .lines()
        .filter_map(|l| l.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .collect()
}

/// One HTTP request through ringlb on a new connection; true if 200.
async fn get(addr: SocketAddr) -> bool {
    let work = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /api/v1/todos HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .ok()
        .flatten()
        == Some(true)
}

/// `clients` loops of requests, `pause` apart, until `stop` (or 120 s):
/// (ok, failed).
fn load(
    addr: SocketAddr,
    clients: usize,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    if get(addr).await {
                        ok.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(pause).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst))
    })
}

/// Time of a log line ("2026-11-22T20:12:42.949643Z ..."), as text that sorts.
fn stamp(line: &str) -> String {
    line.split_whitespace().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_grows_the_group_and_its_end_shrinks_it_back_without_a_failed_request() {
    let lb = ringlb("5s");
    let base = port_range(1, 10);
    let marker = format!("as1-{}", std::process::id());
    let config = write_autoscale(
        &lb,
        &format!(
            "min = 1\nmax = 4\nports = \"{base}-{}\"\nexec = \"{DEMO} --port {{port}} --name {marker}-{{port}} --work-us 4000\"\nperiod = \"1s\"\nhealth_check_grace_period = \"10s\"\n\n[group.target_tracking]\ntarget = 25\nscale_out_periods = 1\nscale_in_periods = 3\nscale_out_cooldown = \"2s\"\nscale_in_cooldown = \"2s\"\n",
            base + 9
        ),
    );
    let mut a = Autoscaler::start(&config, &marker, &[]);
    a.wait_log("scale out web 0 -> 1: below min 1", Duration::from_secs(10));
    lb.wait_healthy(1);

    let stop = Arc::new(AtomicBool::new(false));
    let run = load(lb.addr(), 6, Duration::ZERO, stop.clone());
    wait_until(Duration::from_secs(60), "the group to grow to 3", || {
        lb.count_log("from=initial to=healthy") >= 3
    });
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = run.await.unwrap();
    assert!(ok > 100, "only {ok} requests");

    // Idle: back to min, one target at a time, each drained before its stop.
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = load(lb.addr(), 1, Duration::from_millis(50), stop.clone());
    wait_until(Duration::from_secs(60), "the group to shrink to 1", || {
        listed(&lb).len() == 1 && pids_with(&marker).len() == 1
    });
    stop.store(true, Ordering::SeqCst);
    let (ok2, failed2) = trickle.await.unwrap();
    assert_eq!(
        (failed, failed2),
        (0, 0),
        "failed requests ({ok} + {ok2} ok)\n{}",
        a.log()
    );
    assert!(a.count_log("scale in web") >= 2, "{}", a.log());
    assert!(
        a.log().contains("cpu "),
        "decisions name the figure: {}",
        a.log()
    );

    // Every stop of a target ringlb had been draining came after that
    // drain ended (a port can be used, removed and reused: each stop is
    // matched with the drain that began last before it). A target ringlb
    // never listed had nothing to drain.
    let ringlb_log = lb.log();
    for line in a
        .proc
        .lines()
        .iter()
        .filter(|l| l.contains("drained and stopped"))
    {
        let target = field(line, "target").unwrap();
        let about = format!("target={target}");
        let of_it: Vec<&str> = ringlb_log
            .lines()
            .filter(|l| l.contains(&about) && stamp(l) <= stamp(line))
            .collect();
        let Some(began) = of_it.iter().rposition(|l| l.contains("draining")) else {
            continue;
        };
        assert!(
            of_it[began..]
                .iter()
                .any(|l| l.contains("drain finished") || l.contains("deregistration_delay over")),
            "{target} stopped before its drain ended: {line}\nringlb about it:\n{}",
            of_it.join("\n")
        );
    }
    a.wait_gauge("ringlb_autoscale_in_service", 1.0).await;
    assert!(a.gauge("ringlb_autoscale_scale_out_total").await >= 2.0);

    // --stop-targets-on-exit is not set: the targets outlive the autoscaler.
    a.stop(libc::SIGTERM);
    assert_eq!(pids_with(&marker).len(), 1, "the target keeps running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_autoscaler_adopts_its_targets_and_starts_no_duplicates() {
    let lb = ringlb("2s");
    let base = port_range(2, 6);
    let marker = format!("as2-{}", std::process::id());
    let config = write_autoscale(
        &lb,
        &format!(
            "min = 2\nmax = 4\nports = \"{base}-{}\"\nexec = \"{DEMO} --port {{port}} --name {marker}-{{port}}\"\nperiod = \"1s\"\nmetric = \"active_connections\"\n\n[group.step_scaling]\nscale_out_threshold = 50\nscale_in_threshold = 40\nevaluation_periods = 2\ncooldown = \"2s\"\n",
            base + 5
        ),
    );
    let mut a = Autoscaler::start(&config, &marker, &[]);
    lb.wait_healthy(2);
    let before = pids_with(&marker);
    assert_eq!(before.len(), 2);
    a.stop(libc::SIGKILL);

    let mut b = Autoscaler::start(&config, &marker, &["--stop-targets-on-exit"]);
    b.wait_log(
        "adopted the targets already in the file",
        Duration::from_secs(5),
    );
    // Several periods pass; nothing new starts.
    wait_until(
        Duration::from_secs(20),
        "both adopted targets in service",
        || b.count_log("in service") >= 2,
    );
    // A CPU figure needs two rounds with both in service: wait for one,
    // then nothing may have started.
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.gauge("ringlb_autoscale_metric").await.is_nan() {
        assert!(Instant::now() < deadline, "no decision round:\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.count_log("started"), 0, "{}", b.log());
    let mut after = pids_with(&marker);
    let mut was = before.clone();
    after.sort_unstable();
    was.sort_unstable();
    assert_eq!(after, was, "the same processes");
    assert_eq!(listed(&lb), vec![base, base + 1]);

    // With --stop-targets-on-exit, SIGTERM deregisters, drains and stops them.
    b.stop(libc::SIGTERM);
    assert!(listed(&lb).is_empty(), "{}", targets_file(&lb));
    assert!(pids_with(&marker).is_empty(), "{}", b.log());
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_never_becomes_healthy_is_replaced_not_counted() {
    let lb = ringlb("1s");
    let base = port_range(3, 6);
    let marker = format!("as3-{}", std::process::id());
    // The first port's process listens on another address: ringlb's
    // health checks of 127.0.0.1:port never pass.
    let exec = format!(
        "sh -c 'if [ {{port}} = {base} ]; then exec {DEMO} --listen 127.0.0.2:{{port}} --name {marker}-dud; else exec {DEMO} --port {{port}} --name {marker}-{{port}}; fi'"
    );
    let config = write_autoscale(
        &lb,
        &format!(
            "min = 2\nmax = 3\nports = \"{base}-{}\"\nexec = \"{}\"\nperiod = \"1s\"\nhealth_check_grace_period = \"2s\"\n\n[group.target_tracking]\ntarget = 50\n",
            base + 5,
            exec.replace('"', "\\\"")
        ),
    );
    let a = Autoscaler::start(&config, &marker, &[]);
    let line = a.wait_log("replacing", Duration::from_secs(20));
    assert!(
        line.contains(&format!("127.0.0.1:{base}")) && line.contains("not healthy within"),
        "{line}"
    );
    wait_until(Duration::from_secs(20), "two healthy targets", || {
        lb.count_log("from=initial to=healthy") >= 2
    });
    wait_until(
        Duration::from_secs(20),
        "the dud stopped and unlisted",
        || !listed(&lb).contains(&base) && pids_with(&format!("{marker}-dud")).is_empty(),
    );
    assert_eq!(listed(&lb).len(), 2, "{}", targets_file(&lb));
    wait_until_async(Duration::from_secs(10), "2 in service", || {
        a.count_log("in service") >= 2
    })
    .await;
    a.wait_gauge("ringlb_autoscale_in_service", 2.0).await;
    assert_eq!(a.gauge("ringlb_autoscale_replaced_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_commands_start_and_stop_targets_another_supervisor_runs() {
    let lb = ringlb("1s");
    let base = port_range(4, 4);
    let marker = format!("as4-{}", std::process::id());
    let ran = lb.dir.path().join("hooks.log");
    let config = write_autoscale(
        &lb,
        &format!(
            "min = 1\nmax = 2\nports = \"{base}-{}\"\nscale_out = \"echo out {{port}} >> {ran}; setsid {DEMO} --port {{port}} --name {marker}-{{port}} > /dev/null 2>&1 & echo $! > {ran}.{{port}}\"\nscale_in = \"echo in {{port}} >> {ran}; kill $(cat {ran}.{{port}})\"\nperiod = \"1s\"\n\n[group.target_tracking]\ntarget = 50\n",
            base + 3,
            ran = ran.display()
        ),
    );
    let mut a = Autoscaler::start(&config, &marker, &["--stop-targets-on-exit"]);
    lb.wait_healthy(1);
    assert_eq!(pids_with(&format!("{marker}-{base}")).len(), 1);
    a.stop(libc::SIGTERM);
    let hooks = std::fs::read_to_string(&ran).unwrap();
    assert_eq!(hooks, format!("out {base}\nin {base}\n"));
    assert!(pids_with(&format!("{marker}-{base}")).is_empty());
}

/// The autoscaler's console, in headless Chromium: the group's size, its
/// metric against the target over time, and its decisions with the figure
/// that drove each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscale_console_shows_the_group_grow_and_why() {
    let lb = ringlb("1s");
    let base = port_range(5, 4);
    let marker = format!("as5-{}", std::process::id());
    let config = write_autoscale(
        &lb,
        &format!(
            "min = 1\nmax = 2\nports = \"{base}-{}\"\nexec = \"{DEMO} --port {{port}} --name {marker}-{{port}}\"\nperiod = \"1s\"\nmetric = \"active_connections\"\n\n[group.target_tracking]\ntarget = 2\nscale_out_periods = 1\nscale_out_cooldown = \"1s\"\n",
            base + 3
        ),
    );
    let a = Autoscaler::start(&config, &marker, &[]);
    lb.wait_healthy(1);
    a.wait_gauge("ringlb_autoscale_in_service", 1.0).await;
    let Some(mut page) = Page::open(
        "autoscale",
        &format!("http://{}/", a.admin),
        lb.dir.path(),
        &[],
    ) else {
        return;
    };
    page.expect("loaded");
    // Six connections held open: three a target at two, over the target of 2.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(TcpStream::connect(lb.addr()).await.unwrap());
    }
    page.next();
    page.expect("grown");
    page.expect("chart");
    page.expect("activity");
    page.expect("screenshot");
    page.finish();
    let (status, body) = admin_get(a.admin, "/console.json").await;
    assert_eq!(status, 200);
    let c: serde_json::Value = serde_json::from_str(&body).unwrap();
    let text = c["events"].to_string();
    assert!(
        text.contains("scale out web 1 -> 2: active_connections ") && text.contains("> target 2"),
        "the decision with its figure: {text}"
    );
    drop(held);
}

/// Metric names and, for each, the label names its samples carry, from
/// Prometheus text.
fn exported(text: &str, into: &mut std::collections::BTreeMap<String, Vec<String>>) {
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = into.entry(line[..name_end].to_string()).or_default();
        if let Some(inner) = line[name_end..]
            .strip_prefix('{')
            .and_then(|r| r.split_once('}'))
        {
            for pair in inner.0.split("\",") {
                let key = pair.split('=').next().unwrap().trim_start_matches(',');
                if !key.is_empty() && !labels.iter().any(|l| l == key) {
                    labels.push(key.to_string());
                }
            }
        }
    }
}

/// contrib/grafana/ringlb.json asks only for what ringlb and the
/// autoscaler export: each metric its queries name, each label they select,
/// group by or show in a legend (Prometheus's own `instance` and `job`
/// aside), scraped from a real ringlb that has served, refused and reloaded
/// and a real autoscaler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_names_only_what_ringlb_and_the_autoscaler_export() {
    let lb = ringlb("1s");
    let base = port_range(6, 4);
    let marker = format!("as6-{}", std::process::id());
    let config = write_autoscale(
        &lb,
        &format!(
            "min = 1\nmax = 2\nports = \"{base}-{}\"\nexec = \"{DEMO} --port {{port}} --name {marker}-{{port}}\"\nperiod = \"1s\"\n\n[group.target_tracking]\ntarget = 50\n",
            base + 3
        ),
    );
    let a = Autoscaler::start(&config, &marker, &[]);
    lb.wait_healthy(1);
    assert!(get(lb.addr()).await, "a request through ringlb");
    a.wait_gauge("ringlb_autoscale_in_service", 1.0).await;
    let mut have = std::collections::BTreeMap::new();
    for admin in [lb.admin, a.admin] {
        let (status, body) = admin_get(admin, "/metrics").await;
        assert_eq!(status, 200);
        exported(&body, &mut have);
    }

    let text = std::fs::read_to_string(repo_path("contrib/grafana/ringlb.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            queries.push((
                panel["title"].as_str().unwrap().to_string(),
                t["expr"].as_str().unwrap().to_string(),
                t["legendFormat"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut problems = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for (title, expr, legend) in &queries {
        let metrics: Vec<String> = words(expr)
            .into_iter()
            .filter(|w| w.starts_with("ringlb_"))
            .collect();
        assert!(!metrics.is_empty(), "{title}: no ringlb metric in {expr}");
        for m in &metrics {
            if !have.contains_key(m) {
                problems.push(format!("{title}: {m} is not exported"));
            }
            used.insert(m.clone());
        }
        // Labels: in selectors ({a="x", b=~"y"}), in by (...) and in the
        // legend's {{label}}.
        let mut labels = Vec::new();
        for part in expr.split('{').skip(1) {
            let inner = part.split('}').next().unwrap();
            labels.extend(inner.split(',').filter_map(|m| {
                let key = m.split(['=', '!']).next()?.trim();
                (!key.is_empty()).then(|| key.to_string())
            }));
        }
        for part in expr.split("by (").skip(1) {
            labels.extend(words(part.split(')').next().unwrap()));
        }
        for part in legend.split("{{").skip(1) {
            labels.push(part.split("}}").next().unwrap().trim().to_string());
        }
        for l in labels {
            if l == "instance" || l == "job" {
                continue;
            }
            if !metrics
                .iter()
                .any(|m| have.get(m).is_some_and(|ls| ls.contains(&l)))
            {
                problems.push(format!(
                    "{title}: no metric of {metrics:?} has the label {l}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The dashboard covers what the issue asks for: traffic, health and
    // draining, refusals and closes by reason, reloads, ring starvation,
    // the autoscaler's desired and in-service counts.
    for m in [
        "ringlb_listener_connections_accepted_total",
        "ringlb_target_bytes_sent_total",
        "ringlb_target_healthy",
        "ringlb_target_draining",
        "ringlb_listener_connections_refused_total",
        "ringlb_connections_closed_total",
        "ringlb_targets_reloads_total",
        "ringlb_worker_ring_receives_starved_total",
        "ringlb_autoscale_desired",
        "ringlb_autoscale_in_service",
    ] {
        assert!(used.contains(m), "the dashboard shows no {m}");
    }
}

#[test]
fn a_bad_autoscale_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("autoscale.toml");
    std::fs::write(
        &path,
        "[[group]]\nname = \"web\"\ntargets_file = \"t.txt\"\nmin = 1\nmax = 2\nports = \"7000-7001\"\nexec = \"x --port 1\"\n\n[group.target_tracking]\ntarget = 20\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["autoscale", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:7:", path.display()))
            && err.contains("group[0].exec")
            && err.contains("{port}"),
        "{err}"
    );
}
