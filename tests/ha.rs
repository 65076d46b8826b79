//! Beyond one machine, in network namespaces this test builds and removes:
//! an active/standby pair under keepalived (VRRP), and two active instances
//! announced by BGP (BIRD 2) to a router that merges them into one ECMP
//! route, withdrawn by the shipped health check when ringlb dies. Addresses come only from the benchmarking range
//! 198.18.0.0/15 and exist only inside the namespaces.
//!
//!   client 198.18.0.10 --+
//!   lb A   198.18.0.11 --+-- bridge (namespace of its own)
//!   lb B   198.18.0.12 --+
//!   targets 198.18.0.20 -+   (demo backends on :6400 and :6401)
//!   virtual address 198.18.0.100
//!
//! Needs root (network namespaces), keepalived and bird2 (`.ci/run` installs them);
//! without them each test says SKIPPED on stderr and returns.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const DEMO: &str = env!("CARGO_BIN_EXE_demo-backend");
const VIP: &str = "198.18.0.100";

/// Runs `cmd`; panics with its stderr if it fails.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip` (or anything) and panics with its output on failure.
fn sh(args: &[&str]) {
    run(Command::new(args[0]).args(&args[1..]));
}

fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

fn ns_sh(ns: &str, args: &[&str]) {
    run(&mut in_ns(ns, args));
}

/// Why this machine cannot run these tests, if it cannot.
fn cannot_run(need_keepalived: bool) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root for network namespaces".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("needs iproute2's `ip`".into());
    }
    if need_keepalived
        && Command::new("keepalived")
            .arg("--version")
            .output()
            .is_err()
    {
        return Some("needs keepalived (apt-get install keepalived; .ci/run does)".into());
    }
    None
}

/// The namespaces, links and processes of one test; all removed on drop,
/// also when the test fails.
struct Lab {
    tag: String,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("rl{}{role}", self.tag)
    }

    /// `test` tells apart the labs of tests running at once.
    fn new(test: char) -> Lab {
        let tag = format!("{}{test}", std::process::id() % 100_000);
        let lab = Lab {
            tag,
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        let br = lab.ns("br");
        sh(&["ip", "netns", "add", &br]);
        ns_sh(&br, &["ip", "link", "add", "br0", "type", "bridge"]);
        ns_sh(&br, &["ip", "link", "set", "br0", "up"]);
        for (role, addr) in [
            ("c", "198.18.0.10/24"),
            ("a", "198.18.0.11/24"),
            ("b", "198.18.0.12/24"),
            ("t", "198.18.0.20/24"),
        ] {
            let ns = lab.ns(role);
            sh(&["ip", "netns", "add", &ns]);
            ns_sh(&ns, &["ip", "link", "set", "lo", "up"]);
            // veth pair made inside the bridge's namespace, one end moved out.
            let (inner, outer) = (format!("v{role}"), format!("p{role}"));
            ns_sh(
                &br,
                &[
                    "ip", "link", "add", &inner, "type", "veth", "peer", "name", &outer,
                ],
            );
            ns_sh(&br, &["ip", "link", "set", &outer, "netns", &ns]);
            ns_sh(&br, &["ip", "link", "set", &inner, "master", "br0", "up"]);
            ns_sh(&ns, &["ip", "link", "set", &outer, "name", "eth0"]);
            ns_sh(&ns, &["ip", "addr", "add", addr, "dev", "eth0"]);
            ns_sh(&ns, &["ip", "link", "set", "eth0", "up"]);
        }
        lab
    }

    fn spawn(&mut self, ns: &str, args: &[&str], log: &str) -> usize {
        let file = std::fs::File::create(self.dir.path().join(log)).unwrap();
        let child = in_ns(ns, args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default()
    }

    fn kill(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Demo backends on 198.18.0.20:6400 and :6401.
    fn targets(&mut self) {
        let t = self.ns("t");
        for port in ["6400", "6401"] {
            let listen = format!("198.18.0.20:{port}");
            self.spawn(
                &t,
                &[DEMO, "--listen", &listen],
                &format!("backend-{port}.log"),
            );
        }
    }

    /// ringlb in namespace `role` on 0.0.0.0:8080 (so a virtual address that
    /// moves in is served), admin on its own 127.0.0.1:9900.
    fn ringlb(&mut self, role: &str, algorithm: &str) -> usize {
        let dir = self.path(&format!("lb-{role}"));
        std::fs::create_dir_all(dir.join("targets")).unwrap();
        std::fs::write(
            dir.join("targets/web.txt"),
            "198.18.0.20:6400\n198.18.0.20:6401\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("ringlb.toml"),
            format!(
                "[runtime]\nworkers = 1\nshutdown_timeout = \"1s\"\n\n[admin]\nlisten = \"127.0.0.1:9900\"\n\n[[listener]]\nname = \"web\"\nlisten = \"0.0.0.0:8080\"\ntarget_group = \"web\"\n\n[[target_group]]\nname = \"web\"\ntargets_file = \"targets/web.txt\"\n{algorithm}\n\n[target_group.health_check]\nprotocol = \"http\"\npath = \"/api/v1/health\"\ninterval = \"500ms\"\ntimeout = \"300ms\"\n"
            ),
        )
        .unwrap();
        let ns = self.ns(role);
        let config = dir.join("ringlb.toml");
        let i = self.spawn(
            &ns,
            &[BIN, "run", "--config", config.to_str().unwrap()],
            &format!("ringlb-{role}.log"),
        );
        let log = format!("ringlb-{role}.log");
        wait_until(Duration::from_secs(20), "ringlb's targets healthy", || {
            self.log(&log).matches("to=healthy").count() >= 2
        });
        i
    }

    /// A Python program run in the client namespace; its stdout.
    fn client(&self, script: &str, args: &[&str]) -> String {
        let path = self.path("client.py");
        std::fs::write(&path, format!("{GET}{script}")).unwrap();
        let mut all = vec!["python3", path.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = in_ns(&self.ns("c"), &all).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn has_vip(&self, role: &str) -> bool {
        let out = in_ns(&self.ns(role), &["ip", "-o", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP}/"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // SIGTERM first: keepalived stops its VRRP child itself (a SIGKILL
        // would orphan it); then SIGKILL whatever is left.
        for c in &self.children {
            // SAFETY: signalling a child of this process by its pid.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.children {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for role in ["c", "a", "b", "t", "br"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .output();
        }
    }
}

/// What both client programs share: one HTTP GET of the todo list on a
/// new connection (from `bind` if given); the whole answer.
const GET: &str = r#"
import json, socket, sys, time
def get(host, port, bind=None, timeout=2):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if bind:
        s.bind(bind)
    s.settimeout(timeout)
    s.connect((host, port))
    s.sendall(b"GET /api/v1/todos HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    return data
"#;

/// The client: connections to HOST:PORT every 20 ms for SECONDS, each one
/// HTTP GET on a new connection; prints one line per attempt: "time ok".
const LOOP: &str = r#"
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
start = time.time()
while time.time() - start < secs:
    t = time.time() - start
    try:
        ok = get(host, port).startswith(b"HTTP/1.1 200")
    except OSError:
        ok = False
    print(f"{t:.3f} {int(ok)}", flush=True)
    time.sleep(0.02)
"#;

/// The client: one connection per source port from FIRST for COUNT ports to
/// HOST:8080; prints "port served_by" per line.
const FLOWS: &str = r#"
host, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for port in range(first, first + count):
    body = get(host, 8080, bind=("198.18.0.10", port), timeout=3).split(b"\r\n\r\n", 1)[1]
    print(port, json.loads(body)[0]["served_by"])
"#;

fn keepalived_conf(lab: &Lab, role: &str, priority: u32) -> PathBuf {
    // The shipped track script, as users install it.
    let check = repo_path("scripts/ha/ringlb-check.sh");
    let conf = lab.path(&format!("keepalived-{role}.conf"));
    std::fs::write(
        &conf,
        format!(
            "global_defs {{\n  script_user root\n}}\nvrrp_script ringlb {{\n  script \"{}\"\n  interval 1\n  timeout 1\n  fall 1\n  rise 1\n}}\nvrrp_instance web {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int 1\n  virtual_ipaddress {{\n    {VIP}/24 dev eth0\n  }}\n  track_script {{\n    ringlb\n  }}\n}}\n",
            check.display()
        ),
    )
    .unwrap();
    conf
}

fn keepalived(lab: &mut Lab, role: &str, priority: u32) -> usize {
    let conf = keepalived_conf(lab, role, priority);
    let pid = |what: &str| lab.path(&format!("keepalived-{role}-{what}.pid"));
    let (p, v, c) = (pid("main"), pid("vrrp"), pid("checkers"));
    let ns = lab.ns(role);
    lab.spawn(
        &ns,
        &[
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--vrrp",
            "--use-file",
            conf.to_str().unwrap(),
            "--pid",
            p.to_str().unwrap(),
            "--vrrp_pid",
            v.to_str().unwrap(),
            "--checkers_pid",
            c.to_str().unwrap(),
        ],
        &format!("keepalived-{role}.log"),
    )
}

/// Seconds until `cond` holds (panics after `limit`).
fn seconds_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> f64 {
    let start = Instant::now();
    wait_until(limit, what, &mut cond);
    start.elapsed().as_secs_f64()
}

#[test]
fn a_keepalived_pair_moves_the_address_when_the_active_ringlb_dies() {
    if let Some(why) = cannot_run(true) {
        eprintln!("SKIPPED a_keepalived_pair_moves_the_address_when_the_active_ringlb_dies: {why}");
        return;
    }
    let mut lab = Lab::new('k');
    lab.targets();
    let lb_a = lab.ringlb("a", "algorithm = \"round_robin\"");
    lab.ringlb("b", "algorithm = \"round_robin\"");
    keepalived(&mut lab, "a", 150);
    keepalived(&mut lab, "b", 100);
    seconds_until(
        Duration::from_secs(15),
        "the address on A (higher priority)",
        || lab.has_vip("a") && !lab.has_vip("b"),
    );

    // A client loop across the failure, in the background.
    let script = lab.path("loop.py");
    std::fs::write(&script, format!("{GET}{LOOP}")).unwrap();
    let client_log = "client-loop.log";
    let c = lab.ns("c");
    let client = lab.spawn(
        &c,
        &["python3", script.to_str().unwrap(), VIP, "8080", "12"],
        client_log,
    );
    wait_until(
        Duration::from_secs(10),
        "40 attempts before the kill",
        || lab.log(client_log).lines().count() >= 40,
    );
    // The client's clock: the time of its last attempt, just now.
    let kill_t = {
        let text = lab.log(client_log);
        text.lines()
            .last()
            .and_then(|l| l.split(' ').next())
            .and_then(|t| t.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    lab.kill(lb_a);
    let moved = seconds_until(
        Duration::from_secs(3),
        "the address to move to B within 3 s",
        || lab.has_vip("b"),
    );
    eprintln!("address moved to B {moved:.2} s after A's ringlb was killed");
    assert!(!lab.has_vip("a"));
    wait_until(Duration::from_secs(20), "the client loop to end", || {
        matches!(lab.children[client].try_wait(), Ok(Some(_)))
    });
    let lines: Vec<(f64, bool)> = lab
        .log(client_log)
        .lines()
        .filter_map(|l| {
            let (t, ok) = l.split_once(' ')?;
            Some((t.parse().ok()?, ok == "1"))
        })
        .collect();
    // Before the kill everything worked; failures only in the switch-over
    // window; after it, every new connection works (through B).
    let switch_end = kill_t + moved + 1.5;
    let before: Vec<_> = lines.iter().filter(|(t, _)| *t < kill_t - 0.1).collect();
    let after: Vec<_> = lines.iter().filter(|(t, _)| *t > switch_end).collect();
    let failed = lines.iter().filter(|(_, ok)| !*ok).count();
    eprintln!(
        "client: {} attempts, {failed} failed, all within {:.1} s of the kill",
        lines.len(),
        switch_end - kill_t
    );
    assert!(
        before.len() > 20 && before.iter().all(|(_, ok)| *ok),
        "before the kill: {before:?}"
    );
    assert!(
        after.len() > 50,
        "too few attempts after the switch: {}",
        after.len()
    );
    assert!(
        after.iter().all(|(_, ok)| *ok),
        "a connection failed after the switch-over: {after:?}"
    );

    // A's ringlb back: A has the higher priority and preempts (keepalived's default).
    let lb_a2 = lab.ringlb("a", "algorithm = \"round_robin\"");
    let back = seconds_until(Duration::from_secs(10), "the address back on A", || {
        lab.has_vip("a") && !lab.has_vip("b")
    });
    eprintln!("address back on A {back:.2} s after its ringlb was healthy");
    lab.kill(lb_a2);
}

/// BIRD 2's config for balancer `role` (its address `addr`): the shipped
/// example with the test's addresses.
fn bird_balancer_conf(lab: &Lab, role: &str, addr: &str) -> PathBuf {
    let example = std::fs::read_to_string(repo_path("scripts/ha/bird.conf.example")).unwrap();
    let conf = lab.path(&format!("bird-{role}.conf"));
    let text = example
        .replace("ROUTER_ID", addr)
        .replace("LOCAL_AS", "65011")
        .replace("ROUTER_AS", "65000")
        .replace("ROUTER", "198.18.0.10")
        .replace("SERVICE_ADDRESS", VIP);
    std::fs::write(&conf, text).unwrap();
    conf
}

/// The router's BIRD (in the client's namespace): a BGP session with each
/// balancer, equal routes merged into one ECMP route in the kernel.
fn bird_router_conf(lab: &Lab) -> PathBuf {
    let conf = lab.path("bird-router.conf");
    let mut text = "router id 198.18.0.10;\nprotocol device { }\n\
        protocol kernel { ipv4 { import none; export all; }; merge paths on; }\n"
        .to_string();
    for (name, addr) in [("lb_a", "198.18.0.11"), ("lb_b", "198.18.0.12")] {
        text += &format!(
            "protocol bgp {name} {{\n  local 198.18.0.10 as 65000;\n  neighbor {addr} as 65011;\n  \
             hold time 9;\n  connect delay time 1;\n  connect retry time 1;\n  error wait time 1, 2;\n  \
             ipv4 {{ import all; export none; }};\n}}\n"
        );
    }
    std::fs::write(&conf, text).unwrap();
    conf
}

/// The next hops of the router's route to the service address.
fn next_hops(lab: &Lab) -> Vec<String> {
    let out = in_ns(&lab.ns("c"), &["ip", "route", "show", &format!("{VIP}/32")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_string())
        .collect()
}

#[test]
fn two_active_instances_announced_by_bgp_pick_the_same_target_and_a_dead_one_is_withdrawn() {
    if let Some(why) = cannot_run(false) {
        eprintln!("SKIPPED two_active_instances_announced_by_bgp: {why}");
        return;
    }
    if Command::new("bird").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED two_active_instances_announced_by_bgp: needs BIRD 2 (apt-get install bird2; .ci/run does)"
        );
        return;
    }
    let mut lab = Lab::new('e');
    lab.targets();
    for role in ["a", "b"] {
        // The address on each balancer's loopback; BGP tells the router.
        ns_sh(
            &lab.ns(role),
            &["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"],
        );
    }
    let algo = "algorithm = \"maglev\"\nhash_key = \"source_ip_port\"";
    lab.ringlb("a", algo);
    let ringlb_b = lab.ringlb("b", algo);
    let c = lab.ns("c");
    ns_sh(
        &c,
        // The sysctl, written without procps (not on every Debian image).
        &[
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/fib_multipath_hash_policy",
        ],
    );
    // BIRD on each balancer, the shipped health check beside it, and the
    // router's BIRD.
    let check = repo_path("scripts/ha/ringlb-bgp-check.sh");
    for (role, addr) in [("a", "198.18.0.11"), ("b", "198.18.0.12")] {
        let conf = bird_balancer_conf(&lab, role, addr);
        let sock = lab.path(&format!("bird-{role}.ctl"));
        let ns = lab.ns(role);
        lab.spawn(
            &ns,
            &[
                "bird",
                "-f",
                "-c",
                conf.to_str().unwrap(),
                "-s",
                sock.to_str().unwrap(),
            ],
            &format!("bird-{role}.log"),
        );
        lab.spawn(
            &ns,
            &[
                check.to_str().unwrap(),
                "127.0.0.1:9900",
                sock.to_str().unwrap(),
                "vip",
                "0.5",
            ],
            &format!("check-{role}.log"),
        );
    }
    let router = bird_router_conf(&lab);
    let router_sock = lab.path("bird-router.ctl");
    lab.spawn(
        &c,
        &[
            "bird",
            "-f",
            "-c",
            router.to_str().unwrap(),
            "-s",
            router_sock.to_str().unwrap(),
        ],
        "bird-router.log",
    );
    let up = seconds_until(Duration::from_secs(30), "the ECMP route from BGP", || {
        next_hops(&lab).len() == 2
    });
    println!("BGP: both next hops after {up:.1} s");

    let accepted = |lab: &Lab, role: &str| -> u64 {
        let out = in_ns(&lab.ns(role), &["python3", "-c", "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9900/metrics').read().decode())"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix("ringlb_listener_connections_accepted_total{listener=\"web\"} ")
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let parse = |text: String| -> BTreeMap<u16, String> {
        text.lines()
            .filter_map(|l| {
                let (p, who) = l.split_once(' ')?;
                Some((p.parse().ok()?, who.to_string()))
            })
            .collect()
    };
    let (a0, b0) = (accepted(&lab, "a"), accepted(&lab, "b"));
    let via_vip = parse(lab.client(FLOWS, &[VIP, "40000", "60"]));
    let (a1, b1) = (accepted(&lab, "a"), accepted(&lab, "b"));
    assert!(
        a1 > a0 && b1 > b0,
        "flows landed on both: A {} B {}",
        a1 - a0,
        b1 - b0
    );
    assert_eq!(a1 - a0 + b1 - b0, 60);
    let alone_a = parse(lab.client(FLOWS, &["198.18.0.11", "40000", "60"]));
    let alone_b = parse(lab.client(FLOWS, &["198.18.0.12", "40000", "60"]));
    assert_eq!(via_vip.len(), 60);
    assert_eq!(
        via_vip, alone_a,
        "each flow's target, through ECMP vs A alone"
    );
    assert_eq!(
        via_vip, alone_b,
        "each flow's target, through ECMP vs B alone"
    );
    let spread: std::collections::BTreeSet<&String> = via_vip.values().collect();
    assert_eq!(spread.len(), 2, "Maglev spreads flows over both targets");

    // What B would pick for later flows, asked while it runs.
    let b_would = parse(lab.client(FLOWS, &["198.18.0.12", "41000", "40"]));
    // ringlb on B dies: its check withdraws the route; a client loop
    // counts the connections that fail meanwhile.
    let path = lab.path("client.py");
    std::fs::write(&path, format!("{GET}{LOOP}")).unwrap();
    let client_loop = lab.spawn(
        &c,
        &["python3", path.to_str().unwrap(), VIP, "8080", "6"],
        "loop.log",
    );
    wait_until(
        Duration::from_secs(10),
        "the client loop to be under way",
        || lab.log("loop.log").lines().count() >= 10,
    );
    lab.kill(ringlb_b);
    let gone = seconds_until(Duration::from_secs(10), "B's next hop withdrawn", || {
        next_hops(&lab).is_empty() || next_hops(&lab) == ["198.18.0.11"]
    });
    let route = in_ns(&c, &["ip", "route", "show", &format!("{VIP}/32")])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&route.stdout).contains("via 198.18.0.11"),
        "the survivor's route stays: {}",
        String::from_utf8_lossy(&route.stdout)
    );
    println!("ringlb on B killed: its next hop withdrawn after {gone:.2} s");
    assert!(
        gone < 3.0,
        "withdrawn within 3 s (the check runs every 0.5 s)"
    );
    wait_until(Duration::from_secs(15), "the client loop to end", || {
        matches!(lab.children[client_loop].try_wait(), Ok(Some(_)))
    });
    let lines: Vec<String> = lab.log("loop.log").lines().map(str::to_string).collect();
    let failed = lines.iter().filter(|l| l.ends_with(" 0")).count();
    println!(
        "{failed} of {} connections failed in the 6 s around B's death (flows hashed to B until the withdrawal)",
        lines.len()
    );
    assert!(
        lines.iter().rev().take(20).all(|l| l.ends_with(" 1")),
        "after the withdrawal every connection is served: {lines:?}"
    );
    let b2 = accepted(&lab, "a");
    let survivor = parse(lab.client(FLOWS, &[VIP, "41000", "40"]));
    assert!(accepted(&lab, "a") >= b2 + 40, "everything through A");
    assert_eq!(
        survivor, b_would,
        "flows keep the targets B would have given them"
    );

    // ringlb on B back: the route returns, flows spread over both again.
    lab.ringlb("b", algo);
    let back = seconds_until(Duration::from_secs(15), "B's next hop back", || {
        next_hops(&lab).len() == 2
    });
    println!("ringlb on B back: both next hops after {back:.2} s");
    let (a3, b3) = (accepted(&lab, "a"), accepted(&lab, "b"));
    lab.client(FLOWS, &[VIP, "42000", "60"]);
    let (a4, b4) = (accepted(&lab, "a"), accepted(&lab, "b"));
    assert!(
        a4 > a3 && b4 > b3,
        "flows on both again: A {} B {}",
        a4 - a3,
        b4 - b3
    );
}

#[test]
fn the_keepalived_example_passes_keepalived_own_config_test() {
    if let Some(why) = cannot_run(true) {
        eprintln!("SKIPPED the_keepalived_example_passes_keepalived_own_config_test: {why}");
        return;
    }
    let example = std::fs::read_to_string(repo_path("scripts/ha/keepalived.conf.example")).unwrap();
    let check = repo_path("scripts/ha/ringlb-check.sh");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("keepalived.conf");
    std::fs::write(
        &conf,
        example.replace("/etc/keepalived/ringlb-check.sh", check.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("keepalived")
        .args(["--config-test", "--use-file"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keepalived -t: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
