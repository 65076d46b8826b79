//! Test harness: runs the real `ringlb` binary as a child process against
//! backends in this process, all on 127.0.0.1 with kernel-chosen ports.
#![allow(dead_code)] // each test file uses part of it

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod page;

pub const BIN: &str = env!("CARGO_BIN_EXE_ringlb");

/// Polls `cond` until it holds or `limit` passes; panics naming `what`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Async flavour of [`wait_until`].
pub async fn wait_until_async(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Lets this test process open as many sockets as the hard limit allows.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain get/setrlimit on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// A child process whose stderr is kept line by line, to wait on and
/// assert against. Killed on drop if still running.
pub struct Logged {
    pub child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Logged {
    /// Spawns `cmd` with stdin and stdout to /dev/null and stderr kept.
    pub fn spawn(cmd: &mut Command) -> Logged {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Logged { child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The log's lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Lines of the log containing `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `found` gives a value, and returns it; on timeout the
    /// panic names `what` and shows this process's whole log.
    pub fn wait_for<T>(
        &self,
        what: &str,
        limit: Duration,
        mut found: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = found() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the log has a line containing `needle`; returns it.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> String {
        self.wait_for(&format!("log line with {needle:?}"), limit, || {
            let lines = self.log.lock().unwrap();
            lines.iter().find(|l| l.contains(needle)).cloned()
        })
    }

    /// Whether the process exits within `limit` (reaping it if so).
    pub fn exited_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _already_dead_is_fine = self.child.kill();
            let _reaped = self.child.wait();
        }
    }
}

/// A running ringlb. Killed on drop if the test did not stop it.
pub struct Ringlb {
    proc: Logged,
    pub dir: tempfile::TempDir,
    /// Bound address of each listener, by name.
    pub listeners: HashMap<String, SocketAddr>,
    /// Where the admin endpoint listens.
    pub admin: SocketAddr,
}

/// Writes `config` (TOML) and each `(file name, contents)` into a fresh folder.
pub fn write_config(config: &str, files: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ringlb.toml"), config).unwrap();
    for (name, body) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    dir
}

/// A targets file listing `addrs`.
pub fn targets(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(|a| format!("{a}\n")).collect()
}

/// A port on 127.0.0.1 that accepts every connection and closes it: health
/// probes sent there always pass, so tests about other things can route to
/// refusing or silent targets without the health checker taking them out.
pub fn health_sink() -> u16 {
    static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *PORT.get_or_init(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for c in l.incoming() {
                drop(c);
            }
        });
        port
    })
}

/// A config with one listener "web" on 127.0.0.1:0 in front of group "web"
/// (targets in targets/web.txt) and `extra` lines appended to the group. TCP
/// health probes go to [`health_sink`].
pub fn simple_config(workers: usize, group_extra: &str) -> String {
    health_config(
        workers,
        group_extra,
        &format!("protocol = \"tcp\"\nport = {}", health_sink()),
    )
}

/// `config` with the "web" listener on `listen` instead of 127.0.0.1:0.
pub fn listen_on(config: &str, listen: &str) -> String {
    let from = "listen = \"127.0.0.1:0\"\ntarget_group = \"web\"";
    assert!(config.contains(from));
    config.replace(
        from,
        &format!("listen = \"{listen}\"\ntarget_group = \"web\""),
    )
}

/// `config` (from [`health_config`]) with `[runtime] splice = "{mode}"`.
pub fn with_splice(config: &str, mode: &str) -> String {
    let from = "shutdown_timeout = \"5s\"";
    assert!(config.contains(from));
    config.replace(from, &format!("{from}\nsplice = \"{mode}\""))
}

/// `config` (from [`health_config`]) with `[runtime] ring_buffers = {n}`.
pub fn with_ring_buffers(config: &str, n: u32) -> String {
    let from = "shutdown_timeout = \"5s\"";
    assert!(config.contains(from));
    config.replace(from, &format!("{from}\nring_buffers = {n}"))
}

/// As [`simple_config`], with `health` as the body of the health_check table.
pub fn health_config(workers: usize, group_extra: &str, health: &str) -> String {
    format!(
        r#"
[runtime]
workers = {workers}
shutdown_timeout = "5s"

[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
target_group = "web"

[[target_group]]
name = "web"
targets_file = "targets/web.txt"
{group_extra}

[target_group.health_check]
{health}
"#
    )
}

impl Ringlb {
    /// ringlb with `workers` workers in front of `targets` ([`simple_config`]
    /// with `group_extra` lines in the target group).
    /// Returns once every target has passed its first health check, so no
    /// test depends on how fast the start-up probes come back.
    pub fn in_front_of(workers: usize, group_extra: &str, targets_: &[SocketAddr]) -> Ringlb {
        let lb = Self::start(write_config(
            &simple_config(workers, group_extra),
            &[("targets/web.txt", targets(targets_))],
        ));
        lb.wait_healthy(targets_.len());
        lb
    }

    /// ringlb on `config` (with targets in targets/web.txt) in front of
    /// `targets_`, once each has passed its first health check.
    pub fn with_config(config: &str, targets_: &[SocketAddr]) -> Ringlb {
        let lb = Self::start(write_config(
            config,
            &[("targets/web.txt", targets(targets_))],
        ));
        lb.wait_healthy(targets_.len());
        lb
    }

    /// Waits until `n` targets have gone from `initial` to `healthy`.
    pub fn wait_healthy(&self, n: usize) {
        wait_until(Duration::from_secs(20), "start-up probes to pass", || {
            self.count_log("from=initial to=healthy") >= n
        });
    }

    /// Starts ringlb on `dir/ringlb.toml` and waits until it says it is ready.
    pub fn start(dir: tempfile::TempDir) -> Ringlb {
        Self::start_logging(dir, "info")
    }

    /// As [`Ringlb::start`], with a log filter (e.g. "debug").
    pub fn start_logging(dir: tempfile::TempDir, filter: &str) -> Ringlb {
        Self::start_with_env(dir, filter, &[])
    }

    /// As [`Ringlb::start_logging`], with extra environment variables.
    pub fn start_with_env(dir: tempfile::TempDir, filter: &str, env: &[(&str, &str)]) -> Ringlb {
        Self::spawn(dir, filter, env, None)
    }

    /// As [`Ringlb::start`], with RLIMIT_NOFILE (soft and hard) set to `nofile`.
    pub fn start_with_fd_limit(dir: tempfile::TempDir, nofile: u64) -> Ringlb {
        Self::spawn(dir, "info", &[], Some(nofile))
    }

    /// As [`Ringlb::start_with_fd_limit`], with a log filter.
    pub fn start_with_fd_limit_logging(
        dir: tempfile::TempDir,
        nofile: u64,
        filter: &str,
    ) -> Ringlb {
        Self::spawn(dir, filter, &[], Some(nofile))
    }

    fn spawn(
        dir: tempfile::TempDir,
        filter: &str,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Ringlb {
        let mut cmd = Command::new(BIN);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only async-signal-safe setrlimit
            // runs, on a struct on the stack.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let address_file = dir.path().join("addresses.json");
        // A file left by an earlier run in this folder would name old ports.
        let _absent = std::fs::remove_file(&address_file);
        let proc = Logged::spawn(
            cmd.args(["run", "--config"])
                .arg(dir.path().join("ringlb.toml"))
                .arg("--address-file")
                .arg(&address_file)
                .envs(env.iter().copied())
                .env("RUST_LOG", filter),
        );
        let (admin, listeners) = wait_addresses(&proc, &address_file);
        Ringlb {
            proc,
            dir,
            listeners,
            admin,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listeners["web"]
    }

    /// The addresses in `--address-file` now (it is rewritten on SIGHUP).
    pub fn addresses(&self) -> (SocketAddr, HashMap<String, SocketAddr>) {
        read_addresses(&self.dir.path().join("addresses.json")).expect("address file")
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("ringlb.toml")
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Waits until the log has a line containing `needle`; returns it.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> String {
        self.proc.wait_log(needle, limit)
    }

    /// Lines of the log containing `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.proc.count_log(needle)
    }

    /// Workers that placed at least one connection (needs debug logging).
    pub fn workers_that_placed(&self) -> std::collections::BTreeSet<String> {
        self.proc
            .lines()
            .iter()
            .filter(|l| l.contains(" placed "))
            .filter_map(|l| field(l, "worker"))
            .collect()
    }

    /// Open fds once the start-up health probes of `targets` targets have
    /// reported (so none of their sockets is open): a baseline for leak checks.
    pub fn baseline_fds(&self, targets: usize) -> usize {
        wait_until(Duration::from_secs(10), "start-up probes to report", || {
            self.count_log("from=initial to=") >= targets
        });
        self.fd_count()
    }

    /// Open file descriptors of the ringlb process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// CPU seconds the ringlb process has used (user + system).
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // SAFETY: sysconf is always safe to call.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / tick
    }

    /// Resident memory of the ringlb process, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .trim()
            .parse()
            .unwrap()
    }

    /// Threads of the ringlb process.
    pub fn thread_count(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub fn signal(&self, sig: libc::c_int) {
        self.proc.signal(sig);
    }

    /// Waits for the process to exit by itself within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut status = None;
        wait_until(limit, "ringlb to exit", || {
            status = self.proc.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(20))
    }
}

/// `key=value` from a compact tracing line.
pub fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    Some(
        rest.split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

/// A backend that writes its one-byte `tag` on accept, then echoes until the
/// client half-closes, then closes. Counts connections.
pub struct Backend {
    pub addr: SocketAddr,
    pub tag: u8,
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn tagged(tag: u8) -> Backend {
        Self::tagged_at("127.0.0.1:0".parse().unwrap(), tag).await
    }

    /// As [`Backend::tagged`], on `at` (an IPv4 loopback address and port).
    pub async fn tagged_at(at: SocketAddr, tag: u8) -> Backend {
        // A real server's backlog (tokio's default of 1,024 overflows under the
        // burst tests, and the kernel then drops the handshake's last ACK).
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(at).unwrap();
        let listener = socket.listen(4096).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (a, o) = (accepted.clone(), open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    if s.write_all(&[tag]).await.is_ok() {
                        let (mut r, mut w) = s.split();
                        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                            let _peer_may_be_gone = w.shutdown().await;
                        }
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Backend {
            addr,
            tag,
            accepted,
            open,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects through the proxy and returns the stream and the tag of the
/// backend that answered.
pub async fn connect_tagged(addr: SocketAddr) -> (tokio::net::TcpStream, u8) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tag = [0u8];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut tag))
        .await
        .expect("backend tag within 10 s")
        .expect("a backend answered");
    (s, tag[0])
}

/// Replaces a file the way careful autoscalers do: write a temp file, rename it over.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Sends `msg` and expects it echoed back within 5 s.
pub async fn echo(s: &mut tokio::net::TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no echo in 5 s",
            ));
        }
    };
    assert_eq!(back, msg, "echo corrupted");
    Ok(())
}

/// An address on 127.0.0.1 where nothing listens (connections are refused).
pub fn refusing_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Path of a file in the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A loopback address whose SYNs are dropped, so connects hang until they time
/// out: a listener with a backlog of 0 whose one queue slot is already taken.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _filler: std::net::TcpStream,
}

impl Blackhole {
    pub fn new() -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let filler = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        // Prove the hole is there before a test relies on it.
        let probe = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200));
        assert!(
            probe.is_err(),
            "backlog-0 listener still accepted a second connection"
        );
        Blackhole {
            addr,
            _listener: listener,
            _filler: filler,
        }
    }
}

/// `GET path` on the admin endpoint: (status, body).
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    admin_raw(
        admin,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await
}

/// Runs `ringlb check --config <path>` and returns its output.
pub fn run_check(config: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run ringlb check")
}

/// The value of one series (name with labels) in ringlb's `/metrics`.
pub async fn metric(lb: &Ringlb, series: &str) -> u64 {
    let (_, body) = admin_get(lb.admin, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in\n{body}"))
}

/// Waits until one series of ringlb's `/metrics` satisfies `ok`; its value.
pub async fn wait_metric(lb: &Ringlb, series: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric(lb, series).await;
        if ok(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{series} stayed at {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends raw bytes to the admin endpoint: (status, body).
pub async fn admin_raw(admin: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("admin answers")
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

/// Reads until the stream ends (EOF or reset) and returns when; panics if it
/// is still open after `within`.
pub async fn until_closed(s: &mut tokio::net::TcpStream, within: Duration) -> Instant {
    let mut buf = [0u8; 65536];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("stream closed in time")
}

/// The admin address and the listeners (none in the autoscaler's) from an
/// `--address-file` of `ringlb run` or `ringlb autoscale`, if it is there.
pub fn read_addresses(path: &Path) -> Option<(SocketAddr, HashMap<String, SocketAddr>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let admin = v["admin"].as_str()?.parse().ok()?;
    let listeners = match v["listeners"].as_object() {
        None => HashMap::new(),
        Some(m) => m
            .iter()
            .map(|(name, addr)| Some((name.clone(), addr.as_str()?.parse().ok()?)))
            .collect::<Option<HashMap<_, _>>>()?,
    };
    Some((admin, listeners))
}

/// Waits for `--address-file` (written once the process is ready).
pub fn wait_addresses(proc: &Logged, path: &Path) -> (SocketAddr, HashMap<String, SocketAddr>) {
    proc.wait_for("address file", Duration::from_secs(20), || {
        read_addresses(path)
    })
}
