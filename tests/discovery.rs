//! Targets from DNS, against a real DNS server: dnsmasq (Debian's package
//! dnsmasq-base; `.ci/run` installs it) on 127.0.0.1, serving a hosts file the test
//! rewrites (SIGHUP makes dnsmasq read it again) and SRV records, with a
//! TTL of 1 s. Backends listen on 127.0.0.2 and 127.0.0.3.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// dnsmasq, on the PATH or where Debian puts it (/usr/sbin is not on every
/// user's PATH); `SKIPPED:` printed where there is none.
fn dnsmasq() -> Option<PathBuf> {
    let on_path = Command::new("dnsmasq").arg("--version").output().is_ok();
    let debian = Path::new("/usr/sbin/dnsmasq");
    match (on_path, debian.exists()) {
        (true, _) => Some(PathBuf::from("dnsmasq")),
        (false, true) => Some(debian.to_path_buf()),
        (false, false) => {
            println!("SKIPPED: no dnsmasq (Debian package dnsmasq-base; .ci/run installs it)");
            None
        }
    }
}

/// A dnsmasq serving `hosts` (and `srv` records, dnsmasq's `--srv-host`
/// form) for the domain svc.test only; anything else is refused.
struct Dns {
    child: Child,
    dnsmasq: PathBuf,
    pub port: u16,
    hosts: PathBuf,
    srv: Vec<String>,
}

impl Dns {
    /// None (with `SKIPPED:` printed) where dnsmasq is not installed.
    fn start(dir: &Path, hosts: &str, srv: &[&str]) -> Option<Dns> {
        let dnsmasq = dnsmasq()?;
        let port = free_udp_port();
        let hosts_path = dir.join("dns-hosts");
        std::fs::write(&hosts_path, hosts).unwrap();
        let srv = srv.iter().map(|s| s.to_string()).collect();
        Some(Self::spawn(dnsmasq, port, hosts_path, srv))
    }

    fn spawn(dnsmasq: PathBuf, port: u16, hosts: PathBuf, srv: Vec<String>) -> Dns {
        let mut cmd = Command::new(&dnsmasq);
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--local=/svc.test/",
            "--local-ttl=1",
            "--pid-file=",
            "--log-facility=-",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--addn-hosts={}", hosts.display()));
        // As root it would drop to "nobody", who cannot read the test's folder.
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["--user=root", "--group=root"]);
        }
        for s in &srv {
            cmd.arg(format!("--srv-host={s}"));
        }
        let log = std::fs::File::create(hosts.with_extension("log")).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dnsmasq");
        let dns = Dns {
            child,
            dnsmasq,
            port,
            hosts,
            srv,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dns.answers() {
            let log = std::fs::read_to_string(dns.hosts.with_extension("log")).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "dnsmasq does not answer; its log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        dns
    }

    /// Whether it answers a query for a name it has (or says it has none).
    fn answers(&self) -> bool {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        // A query for svc.test, type A: id 1, recursion desired.
        let mut q = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["svc", "test"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let _not_yet = s.send_to(&q, ("127.0.0.1", self.port));
        let mut buf = [0u8; 512];
        matches!(s.recv_from(&mut buf), Ok((n, _)) if n >= 12 && buf[0..2] == [0, 1])
    }

    /// Serves `hosts` from now on (dnsmasq reads the file again on SIGHUP).
    fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }

    fn stop(&mut self) {
        let _gone = self.child.kill();
        let _reaped = self.child.wait();
    }

    /// Starts it again on the same port with the same records.
    fn restart(&mut self) {
        self.stop();
        *self = Self::spawn(
            self.dnsmasq.clone(),
            self.port,
            self.hosts.clone(),
            self.srv.clone(),
        );
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port free for UDP and TCP on 127.0.0.1, below the kernel's ephemeral
/// range, so that no socket bound to port 0 (ringlb's listeners, a probe's
/// connection) takes it while dnsmasq is stopped and the test restarts it.
fn free_udp_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = u64::from(std::process::id()) * 7919;
    for i in 0..2_000 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 20_000 + ((seed + n * 131 + i) % 10_000) as u16;
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-29999 on 127.0.0.1");
}

/// A port free on both 127.0.0.2 and 127.0.0.3, for two backends that one
/// name's two addresses reach.
fn port_on_both() -> u16 {
    loop {
        let a = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.3", port)).is_ok() {
            return port;
        }
    }
}

/// [`health_config`] with TCP probes on the traffic port (the backends
/// are not all on 127.0.0.1), asking dnsmasq on `dns_port`, answers kept
/// 1 s to 2 s.
fn config(dns_port: u16, group_extra: &str) -> String {
    format!(
        "{}\n[discovery]\nresolvers = [\"127.0.0.1:{dns_port}\"]\nmin_ttl = \"1s\"\nmax_ttl = \"2s\"\n",
        health_config(
            2,
            group_extra,
            "protocol = \"tcp\"\ninterval = \"1s\"\ntimeout = \"500ms\""
        )
    )
}

/// Clients connecting through ringlb one after another until stopped (at
/// most 120 s or 200,000 connections), each checking the echo.
struct Clients {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// Connections answered by each backend tag (index = tag).
    by_tag: Arc<[AtomicU64; 8]>,
    task: tokio::task::JoinHandle<()>,
}

impl Clients {
    fn start(addr: SocketAddr) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let by_tag: Arc<[AtomicU64; 8]> = Arc::new(Default::default());
        let (s, o, f, t) = (stop.clone(), ok.clone(), failed.clone(), by_tag.clone());
        let task = tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(120);
            for _ in 0..200_000 {
                if s.load(Ordering::SeqCst) || Instant::now() > until {
                    return;
                }
                match one(addr).await {
                    Ok(tag) => {
                        o.fetch_add(1, Ordering::SeqCst);
                        t[usize::from(tag) % 8].fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        eprintln!("client failed: {e}");
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        Clients {
            stop,
            ok,
            failed,
            by_tag,
            task,
        }
    }

    fn tag(&self, tag: u8) -> u64 {
        self.by_tag[usize::from(tag)].load(Ordering::SeqCst)
    }

    /// Waits until `n` more connections have been served.
    async fn served(&self, n: u64) {
        let want = self.ok.load(Ordering::SeqCst) + n;
        wait_until_async(Duration::from_secs(20), "clients to be served", || {
            self.ok.load(Ordering::SeqCst) >= want
        })
        .await;
    }

    /// Stops; (served, failed).
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

/// One connection: the backend's tag, then an echo.
async fn one(addr: SocketAddr) -> std::io::Result<u8> {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut tag = [0u8];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut tag))
        .await
        .map_err(|_| std::io::Error::other("no tag in 5 s"))??;
    echo(&mut s, b"ping").await?;
    Ok(tag[0])
}

/// `/targets` of group "web": (address, source, weight) of every target
/// in service, and its names as JSON.
async fn web_targets(lb: &Ringlb) -> (Vec<(String, String, u64)>, serde_json::Value) {
    let (_, body) = admin_get(lb.admin, "/targets").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let g = &v["groups"][0];
    let targets = g["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["draining"] == false)
        .map(|t| {
            (
                t["address"].as_str().unwrap().to_string(),
                t["source"].as_str().unwrap().to_string(),
                t["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    (targets, g["names"].clone())
}

async fn wait_targets(lb: &Ringlb, what: &str, ok: impl Fn(&[(String, String, u64)]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (t, _) = web_targets(lb).await;
        if ok(&t) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: targets are {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole life of a `dns` line: ringlb follows the records as they
/// change (a new address is probed, then served; a vanished one drains),
/// a SIGHUP keeps what the name gave, a stopped DNS server keeps the set,
/// and NXDOMAIN drains the name's targets. A client loop runs throughout
/// the changes and sees no failed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_follow_a_name_as_its_records_change_with_no_failed_connection() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(mut dns) = Dns::start(scratch.path(), "127.0.0.2 todo.svc.test\n", &[]) else {
        return;
    };
    let port = port_on_both();
    let b2 = Backend::tagged_at(SocketAddr::from(([127, 0, 0, 2], port)), 2).await;
    let b3 = Backend::tagged_at(SocketAddr::from(([127, 0, 0, 3], port)), 3).await;
    let source = format!("dns todo.svc.test:{port}");
    let (a2, a3) = (b2.addr.to_string(), b3.addr.to_string());
    let lb = Ringlb::start(write_config(
        &config(dns.port, "deregistration_delay = \"3s\""),
        &[(
            "targets/web.txt",
            format!("# the todo service, as DNS knows it\n{source}\n"),
        )],
    ));
    lb.wait_healthy(1);
    let (t, names) = web_targets(&lb).await;
    assert_eq!(
        t,
        vec![(a2.clone(), source.clone(), 1)],
        "the name's one address, and where it came from"
    );
    assert_eq!(names[0]["source"], source.as_str());
    assert_eq!(names[0]["line"], 2, "the line of the targets file");
    assert_eq!(names[0]["state"], "answering");

    let clients = Clients::start(lb.addr());
    clients.served(20).await;

    // A second address: probed, then served.
    let changed = Instant::now();
    dns.set_hosts("127.0.0.2 todo.svc.test\n127.0.0.3 todo.svc.test\n");
    lb.wait_log(
        &format!("target={a3} from=initial to=healthy"),
        Duration::from_secs(10),
    );
    wait_until_async(
        Duration::from_secs(10),
        "the new address to be served",
        || clients.tag(3) > 0,
    )
    .await;
    println!(
        "a new address served {:?} after the record changed (its TTL of 1 s, then its first probe)",
        changed.elapsed()
    );
    let log = lb.log();
    assert!(
        log.contains("name answered") && log.contains(&format!("added=[{a3}]")),
        "the log says the name answered and what was added:\n{log}"
    );

    // A SIGHUP reads the files again, here with a changed [discovery] (the
    // lookup thread starts afresh): what the name gave stays in service.
    let path = lb.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("max_ttl = \"2s\"", "max_ttl = \"3s\"")).unwrap();
    lb.signal(libc::SIGHUP);
    let reloaded = lb.wait_log("config reloaded", Duration::from_secs(10));
    assert!(
        reloaded.contains("[discovery] max_ttl 2s -> 3s"),
        "{reloaded}"
    );
    clients.served(20).await;
    assert_eq!(lb.count_log("draining"), 0, "nothing drained by the SIGHUP");
    assert_eq!(web_targets(&lb).await.0.len(), 2);

    // An address leaves the records: it drains.
    let changed = Instant::now();
    dns.set_hosts("127.0.0.3 todo.svc.test\n");
    lb.wait_log(&format!("target={a2} active="), Duration::from_secs(10));
    println!(
        "a removed address draining {:?} after the record changed",
        changed.elapsed()
    );
    wait_targets(&lb, "127.0.0.2 drained", |t| {
        t == [(a3.clone(), source.clone(), 1)]
    })
    .await;
    let before = clients.tag(2);
    clients.served(20).await;
    assert_eq!(
        clients.tag(2),
        before,
        "a drained address gets no new connection"
    );

    // The DNS server stops: the last good answer stays, said once.
    dns.stop();
    lb.wait_log("name lookup failed", Duration::from_secs(15));
    assert_eq!(
        metric(
            &lb,
            &format!("ringlb_discovery_failing{{source=\"{source}\"}}")
        )
        .await,
        1
    );
    clients.served(20).await;
    let (t, names) = web_targets(&lb).await;
    assert_eq!(t, vec![(a3.clone(), source.clone(), 1)], "the set is kept");
    assert_eq!(names[0]["state"], "failing");
    dns.restart();
    lb.wait_log("name answers again", Duration::from_secs(15));
    assert_eq!(lb.count_log("name lookup failed"), 1, "said once");

    let (served, failed) = clients.finish().await;
    println!("{served} connections through the changes, {failed} failed");
    assert_eq!(failed, 0, "no connection failed while the records changed");

    // NXDOMAIN: the name has no targets now; they drain, as for an empty file.
    dns.set_hosts("");
    lb.wait_log("name has no records", Duration::from_secs(10));
    wait_targets(&lb, "the name's targets gone", |t| t.is_empty()).await;
    assert!(
        lb.log().contains("NXDOMAIN"),
        "the log says why:\n{}",
        lb.log()
    );
    let lookups = |result: &str| {
        format!("ringlb_discovery_lookups_total{{source=\"{source}\",result=\"{result}\"}}")
    };
    let found = metric(&lb, &lookups("found")).await;
    let gone = metric(&lb, &lookups("gone")).await;
    let failed_lookups = metric(&lb, &lookups("failed")).await;
    assert!(
        found >= 3 && gone >= 1 && failed_lookups >= 1,
        "{found} {gone} {failed_lookups}"
    );
    drop((b2, b3));
}

/// An SRV name gives hosts, ports and weights; only its records of the
/// lowest priority serve (RFC 2782: the others stand by).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_srv_name_gives_hosts_ports_and_weights() {
    let (a, b, c) = (
        Backend::tagged(1).await,
        Backend::tagged(2).await,
        Backend::tagged(3).await,
    );
    let srv = |host: &str, port: u16, prio: u16, weight: u16| {
        format!("_todo._tcp.svc.test,{host}.svc.test,{port},{prio},{weight}")
    };
    let records = [
        srv("a", a.addr.port(), 0, 5),
        srv("b", b.addr.port(), 0, 1),
        srv("c", c.addr.port(), 1, 1),
    ];
    let records: Vec<&str> = records.iter().map(String::as_str).collect();
    let scratch = tempfile::tempdir().unwrap();
    let hosts = "127.0.0.1 a.svc.test\n127.0.0.1 b.svc.test\n127.0.0.1 c.svc.test\n";
    let Some(dns) = Dns::start(scratch.path(), hosts, &records) else {
        return;
    };
    let lb = Ringlb::start(write_config(
        &config(dns.port, ""),
        &[("targets/web.txt", "srv _todo._tcp.svc.test\n".into())],
    ));
    lb.wait_healthy(2);
    let (mut t, _) = web_targets(&lb).await;
    t.sort();
    let source = "srv _todo._tcp.svc.test".to_string();
    let mut want = vec![
        (a.addr.to_string(), source.clone(), 5),
        (b.addr.to_string(), source.clone(), 1),
    ];
    want.sort();
    assert_eq!(t, want, "priority 0 only, with the records' weights");
    for _ in 0..12 {
        let (_s, tag) = connect_tagged(lb.addr()).await;
        assert_ne!(tag, 3, "the priority-1 record stands by");
    }
}

/// `ringlb check` looks every name up once: one that does not resolve is an
/// error naming the targets file and the line.
#[test]
fn check_looks_each_name_up_and_names_the_line_of_one_that_fails() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(dns) = Dns::start(scratch.path(), "127.0.0.2 todo.svc.test\n", &[]) else {
        return;
    };
    let dir = write_config(
        &config(dns.port, ""),
        &[(
            "targets/web.txt",
            "127.0.0.1:6400\ndns todo.svc.test:6400\n".into(),
        )],
    );
    let out = run_check(&dir.path().join("ringlb.toml"));
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("2 target(s) (1 name(s) looked up)"), "{said}");

    std::fs::write(
        dir.path().join("targets/web.txt"),
        "127.0.0.1:6400\n\n# typo below\ndns todoo.svc.test:6400\n",
    )
    .unwrap();
    let out = run_check(&dir.path().join("ringlb.toml"));
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "a name that does not resolve fails the check"
    );
    assert!(
        said.contains("targets/web.txt:4: dns todoo.svc.test:6400: NXDOMAIN"),
        "file, line, name and why: {said}"
    );
}

/// A name whose DNS server does not answer at start-up: ringlb starts, says
/// so, and serves the name's targets once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_answer_at_start_up_serves_once_it_does() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(mut dns) = Dns::start(scratch.path(), "127.0.0.1 todo.svc.test\n", &[]) else {
        return;
    };
    dns.stop();
    let b = Backend::tagged(7).await;
    let lb = Ringlb::start(write_config(
        &config(dns.port, ""),
        &[(
            "targets/web.txt",
            format!("dns todo.svc.test:{}\n", b.addr.port()),
        )],
    ));
    lb.wait_log("its targets come when it answers", Duration::from_secs(15));
    assert!(web_targets(&lb).await.0.is_empty());
    dns.restart();
    lb.wait_healthy(1);
    assert_eq!(connect_tagged(lb.addr()).await.1, 7);
}

/// Without `[discovery] resolvers`, names are asked of the servers
/// /etc/resolv.conf names. In a network and mount namespace of its own (so
/// nothing outside is asked, and the machine's file is untouched), a
/// resolv.conf naming 127.0.0.1 is mounted over /etc/resolv.conf and
/// dnsmasq answers on port 53 there.
#[test]
fn without_resolvers_the_servers_of_resolv_conf_are_asked() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: needs root for a network and mount namespace");
        return;
    }
    let Some(dnsmasq) = dnsmasq() else {
        return;
    };
    if Command::new("unshare").arg("--version").output().is_err() {
        println!("SKIPPED: no unshare (util-linux)");
        return;
    }
    let dir = write_config(
        &health_config(1, "", "protocol = \"tcp\""),
        &[("targets/web.txt", "dns todo.svc.test:6400\n".into())],
    );
    let d = dir.path();
    std::fs::write(d.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    std::fs::write(
        d.join("hosts"),
        "127.0.0.5 todo.svc.test\n127.0.0.6 todo.svc.test\n",
    )
    .unwrap();
    let script = format!(
        "set -e; ip link set lo up; mount --bind {d}/resolv.conf /etc/resolv.conf; \
         {dnsmasq} --conf-file=/dev/null --no-resolv --no-hosts --addn-hosts={d}/hosts \
           --listen-address=127.0.0.1 --bind-interfaces --local=/svc.test/ --port=53 \
           --user=root --group=root --pid-file={d}/dnsmasq.pid; \
         status=0; {bin} check --config {d}/ringlb.toml || status=$?; \
         kill $(cat {d}/dnsmasq.pid); exit $status",
        d = d.display(),
        dnsmasq = dnsmasq.display(),
        bin = BIN,
    );
    let out = Command::new("unshare")
        .args(["--net", "--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("{said}");
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("2 target(s) (1 name(s) looked up)"),
        "both addresses, from the server resolv.conf names: {said}"
    );
}
