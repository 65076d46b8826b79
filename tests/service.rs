//! ringlb under real systemd as PID 1: a `systemd-nspawn` container (Debian
//! package `systemd-container`) booted from a folder whose `/usr` is an
//! overlay of this machine's, with ringlb installed in it the way a user
//! would (the binary in /usr/local/bin, the shipped unit, a `ringlb` user, a
//! config in /etc/ringlb). The container shares this machine's network, so
//! the test reaches ringlb on 127.0.0.1 and ringlb reaches the test's
//! backends there. Root only; `SKIPPED` otherwise.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A booted container; powered off (or killed) on drop.
struct Container {
    nspawn: Child,
    /// The container's PID 1, as this machine sees it.
    init: u32,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to boot a systemd-nspawn container".into());
    }
    for tool in ["systemd-nspawn", "nsenter"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "no {tool} (Debian packages systemd-container and util-linux; .ci/run installs them)"
            ));
        }
    }
    None
}

impl Container {
    /// Boots systemd in a fresh container, with `binary` as
    /// /usr/local/bin/ringlb (placed before the overlay is mounted), and
    /// waits until it runs.
    fn boot(binary: &str) -> Container {
        Self::boot_with(&[(binary, "ringlb")])
    }

    /// As [`Container::boot`], with each `(binary, name)` as
    /// /usr/local/bin/NAME.
    fn boot_with(binaries: &[(&str, &str)]) -> Container {
        let dir = tempfile::tempdir().unwrap();
        let (root, upper) = (dir.path().join("root"), dir.path().join("upper"));
        for d in [dir.path(), &root, &upper] {
            std::fs::create_dir_all(d).unwrap();
            chmod(d, 0o755);
        }
        std::fs::create_dir(root.join("usr")).unwrap();
        for l in ["bin", "lib", "lib64", "sbin"] {
            std::os::unix::fs::symlink(format!("usr/{l}"), root.join(l)).unwrap();
        }
        // A copy of /etc: no machine-id (systemd makes one), os-release a
        // real file, this machine's own daemons masked.
        run(Command::new("cp")
            .arg("-a")
            .arg("/etc/.")
            .arg(root.join("etc")));
        let etc = root.join("etc");
        let _absent = std::fs::remove_file(etc.join("machine-id"));
        let _ = std::fs::remove_file(etc.join("os-release"));
        std::fs::copy("/usr/lib/os-release", etc.join("os-release")).unwrap();
        let units = etc.join("systemd/system");
        let mut masked = vec!["systemd-firstboot.service".to_string()];
        for wants in std::fs::read_dir(&units).unwrap().flatten() {
            if wants.file_name().to_string_lossy().ends_with(".wants") {
                for u in std::fs::read_dir(wants.path()).unwrap().flatten() {
                    let name = u.file_name().to_string_lossy().to_string();
                    if name.ends_with(".service") {
                        masked.push(name);
                    }
                }
            }
        }
        for name in masked {
            let at = units.join(&name);
            let _ = std::fs::remove_file(&at);
            std::os::unix::fs::symlink("/dev/null", at).unwrap();
        }
        for (binary, name) in binaries {
            let bin = upper.join("local/bin").join(name);
            std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
            std::fs::copy(binary, &bin).unwrap();
        }
        let nspawn = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(&root)
            .args([
                "-b",
                "--register=no",
                "--keep-unit",
                "--link-journal=no",
                "--console=pipe",
            ])
            .arg(format!("--overlay=/usr:{}:/usr", upper.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemd-nspawn");
        let mut c = Container {
            init: 0,
            nspawn,
            root,
            _dir: dir,
        };
        // The container's init is the child of systemd-nspawn named systemd
        // (an intermediate process comes and goes first).
        wait_until(Duration::from_secs(60), "systemd to run", || {
            c.init = children(c.nspawn.id())
                .into_iter()
                .find(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|n| n.trim() == "systemd")
                })
                .unwrap_or(0);
            if c.init == 0 {
                return false;
            }
            let out = c.systemctl(&["is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout);
            state.starts_with("running") || state.starts_with("degraded")
        });
        c
    }

    /// A container with ringlb installed as a user would: the binary, the
    /// shipped unit, its user, `config` and its targets file.
    fn install(config: &str, targets_file: &str) -> Container {
        Self::install_with(&[(BIN, "ringlb")], config, targets_file)
    }

    fn install_with(binaries: &[(&str, &str)], config: &str, targets_file: &str) -> Container {
        let c = Container::boot_with(binaries);
        c.write(
            "/etc/systemd/system/ringlb.service",
            &std::fs::read_to_string(repo_path("scripts/ringlb.service")).unwrap(),
        );
        let passwd = std::fs::read_to_string(c.root.join("etc/passwd")).unwrap();
        c.write(
            "/etc/passwd",
            &format!("{passwd}ringlb:x:990:990:ringlb:/nonexistent:/usr/sbin/nologin\n"),
        );
        let group = std::fs::read_to_string(c.root.join("etc/group")).unwrap();
        c.write("/etc/group", &format!("{group}ringlb:x:990:\n"));
        c.write("/etc/ringlb/ringlb.toml", config);
        c.write("/etc/ringlb/targets/web.txt", targets_file);
        c.ok(&["daemon-reload"]);
        c
    }

    /// A command inside the container.
    fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.init.to_string(), "-a"])
            .args(args)
            .output()
            .unwrap()
    }

    fn systemctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["systemctl"];
        all.extend_from_slice(args);
        self.exec(&all)
    }

    /// `systemctl ARGS` succeeds; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.systemctl(args);
        if !out.status.success() {
            let journal = self.exec(&["journalctl", "-u", "ringlb", "--no-pager", "-n", "30"]);
            panic!(
                "systemctl {args:?}: {}{}\nthe journal:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&journal.stdout)
            );
        }
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Waits until ringlb runs again under another main PID than `pid`
    /// (at most 15 s); the new PID.
    async fn restarted(&self, pid: u32, after: &str) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let now_pid = self.main_pid();
            // "activating" (its start not done yet) is not an error here.
            let state = self.systemctl(&["is-active", "ringlb"]);
            if now_pid != 0
                && now_pid != pid
                && String::from_utf8_lossy(&state.stdout).trim() == "active"
            {
                return now_pid;
            }
            assert!(Instant::now() < deadline, "not restarted after {after}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn main_pid(&self) -> u32 {
        self.ok(&["show", "-p", "MainPID", "--value", "ringlb"])
            .trim()
            .parse()
            .unwrap()
    }

    /// A file inside the container, written the way an operator would.
    fn write(&self, path: &str, text: &str) {
        let at = self.root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(&at, text).unwrap();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.init != 0 {
            let _ = self.systemctl(&["poweroff"]);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// The child processes of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(port: u16, admin: u16, second: Option<u16>) -> String {
    let mut c = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[runtime]\nworkers = 2\nshutdown_timeout = \"5s\"\n\n\
         [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:{port}\"\ntarget_group = \"web\"\n\n"
    );
    if let Some(p) = second {
        c += &format!(
            "[[listener]]\nname = \"web2\"\nlisten = \"127.0.0.1:{p}\"\ntarget_group = \"web\"\n\n"
        );
    }
    c + "[[target_group]]\nname = \"web\"\ntargets_file = \"targets/web.txt\"\n\n\
         [target_group.health_check]\nprotocol = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 1\n"
}

/// Healthy targets of group web, from the admin endpoint.
async fn healthy(admin: SocketAddr) -> usize {
    let (_, body) = admin_get(admin, "/targets").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["groups"][0]["targets"]
        .as_array()
        .map_or(0, |t| t.iter().filter(|t| t["health"] == "healthy").count())
}

/// Connections through `lb`, each waiting for the backend's tag, one
/// after another until stopped (at most 5,000 and 30 s).
struct Clients {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn clients(lb: SocketAddr) -> Clients {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let task = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed)
                && ok.load(Ordering::Relaxed) < 5_000
                && started.elapsed() < Duration::from_secs(30)
            {
                let attempt = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut s = tokio::net::TcpStream::connect(lb).await?;
                    let mut tag = [0u8];
                    tokio::io::AsyncReadExt::read_exact(&mut s, &mut tag).await?;
                    Ok::<_, std::io::Error>(())
                })
                .await;
                let counter = if matches!(attempt, Ok(Ok(()))) {
                    &ok
                } else {
                    &failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    Clients {
        stop,
        ok,
        failed,
        task,
    }
}

impl Clients {
    /// Waits until `more` connections beyond those so far have succeeded.
    async fn served(&self, more: u64) {
        let want = self.ok.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ok.load(Ordering::Relaxed) < want {
            assert!(Instant::now() < deadline, "the client loop is not served");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the loop: (ok, failed).
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_start_reload_crash_and_stop_behave() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED: {why}");
        return;
    }
    let (a, b) = (Backend::tagged(1).await, Backend::tagged(2).await);
    let (port, admin_port, second) = (free_port(), free_port(), free_port());
    let lb: SocketAddr = ([127, 0, 0, 1], port).into();
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    // Port 80 too, if free here: User=ringlb binds it through
    // CAP_NET_BIND_SERVICE alone.
    let port_80 = std::net::TcpListener::bind("127.0.0.1:80").is_ok();
    let mut first = config(port, admin_port, None);
    if port_80 {
        first = first.replace(
            "[[target_group]]",
            "[[listener]]\nname = \"http\"\nlisten = \"127.0.0.1:80\"\ntarget_group = \"web\"\n\n[[target_group]]",
        );
    } else {
        println!(
            "port 80 is taken on this machine: the check that ringlb binds it as its user is left out"
        );
    }
    let c = Container::install(&first, &targets(&[a.addr]));

    // start returns once ringlb serves: a request through it at once.
    c.ok(&["start", "ringlb"]);
    let (_, tag) = connect_tagged(lb).await;
    assert_eq!(tag, 1);
    if port_80 {
        let (_, tag) = connect_tagged(([127, 0, 0, 1], 80).into()).await;
        assert_eq!(tag, 1, "port 80, bound by User=ringlb");
        let user = c.exec(&[
            "sh",
            "-c",
            "ps -o user= -p $(systemctl show -p MainPID --value ringlb)",
        ]);
        assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "ringlb");
    }
    let status = String::from_utf8_lossy(&c.systemctl(&["status", "ringlb"]).stdout).to_string();
    assert!(status.contains("Status: \""), "its STATUS= line: {status}");
    let journal = c.exec(&["journalctl", "-u", "ringlb", "--no-pager", "-o", "cat"]);
    let journal = String::from_utf8_lossy(&journal.stdout).to_string();
    let listening = journal
        .lines()
        .find(|l| l.contains("listening"))
        .unwrap_or_else(|| panic!("the journal holds its lines: {journal}"));
    assert!(
        !listening.starts_with("20"),
        "one timestamp, the journal's: {listening}"
    );

    // reload is the SIGHUP path: a changed targets file and a new listener
    // take effect, no connection fails meanwhile, the unit ends active.
    let load = clients(lb);
    load.served(5).await;
    let pid = c.main_pid();
    c.write("/etc/ringlb/targets/web.txt", &targets(&[a.addr, b.addr]));
    c.write(
        "/etc/ringlb/ringlb.toml",
        &config(port, admin_port, Some(second)),
    );
    c.ok(&["reload", "ringlb"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while healthy(admin).await < 2 {
        assert!(
            Instant::now() < deadline,
            "b never became healthy after the reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, tag) = connect_tagged(([127, 0, 0, 1], second).into()).await;
    assert!(tag == 1 || tag == 2, "the new listener serves");
    assert_eq!(c.ok(&["is-active", "ringlb"]).trim(), "active");
    assert_eq!(c.main_pid(), pid, "a reload is not a restart");
    load.served(5).await;
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "failed connections ({ok} ok)");
    assert!(ok > 10, "only {ok} connections during the reload");

    // A crash is restarted (Restart=on-failure) and serves again.
    let out = c.exec(&["kill", "-9", &pid.to_string()]);
    assert!(out.status.success(), "{out:?}");
    c.restarted(pid, "kill -9").await;
    let (_, tag) = connect_tagged(lb).await;
    assert!(tag == 1 || tag == 2);

    // A hung process (SIGSTOP: no watchdog pings) is killed and restarted
    // once WatchdogSec passes (shortened to 2 s by a drop-in for the test).
    c.write(
        "/etc/systemd/system/ringlb.service.d/watchdog.conf",
        "[Service]\nWatchdogSec=2s\n",
    );
    c.ok(&["daemon-reload"]);
    c.ok(&["restart", "ringlb"]);
    let pid = c.main_pid();
    let stopped = Instant::now();
    assert!(
        c.exec(&["kill", "-STOP", &pid.to_string()])
            .status
            .success()
    );
    c.restarted(pid, "SIGSTOP past WatchdogSec").await;
    println!("hung by SIGSTOP: restarted after {:?}", stopped.elapsed());
    let (_, tag) = connect_tagged(lb).await;
    assert!(tag == 1 || tag == 2, "served again after the watchdog");

    // stop ends it: inactive, the port closed.
    c.ok(&["stop", "ringlb"]);
    let state = c.systemctl(&["is-active", "ringlb"]);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "inactive");
    assert!(
        tokio::net::TcpStream::connect(lb).await.is_err(),
        "nothing listens after stop"
    );
}

/// With the upgrade drop-in, `systemctl reload` replaces the process: the
/// main PID moves, no connection fails, and the new process (started by the
/// old one, so not systemd's child until the old one exits and it is
/// reparented to PID 1) is still supervised: killed, it is restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_upgrade_drop_in_moves_the_main_pid_and_stays_supervised() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED: {why}");
        return;
    }
    let a = Backend::tagged(1).await;
    let (port, admin_port) = (free_port(), free_port());
    let lb: SocketAddr = ([127, 0, 0, 1], port).into();
    let with_socket = config(port, admin_port, None).replace(
        "[runtime]\n",
        "[runtime]\ntakeover_socket = \"/run/ringlb/takeover.sock\"\n",
    );
    let c = Container::install(&with_socket, &targets(&[a.addr]));
    c.write(
        "/etc/systemd/system/ringlb.service.d/upgrade.conf",
        &std::fs::read_to_string(repo_path("scripts/ringlb-upgrade.conf")).unwrap(),
    );
    c.ok(&["daemon-reload"]);
    c.ok(&["start", "ringlb"]);
    let load = clients(lb);
    load.served(5).await;
    let mut pid = c.main_pid();
    for round in 1..=2 {
        c.ok(&["reload", "ringlb"]);
        let now_pid = c.main_pid();
        assert_ne!(now_pid, pid, "round {round}: the main PID moved");
        assert_eq!(c.ok(&["is-active", "ringlb"]).trim(), "active");
        // The old process drains and exits.
        let old = pid;
        let deadline = Instant::now() + Duration::from_secs(15);
        while c.exec(&["kill", "-0", &old.to_string()]).status.success() {
            assert!(
                Instant::now() < deadline,
                "round {round}: the old process stays"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pid = now_pid;
    }
    load.served(5).await;
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "failed connections ({ok} ok)");
    assert!(ok > 10, "only {ok} connections across the upgrades");
    // Supervised still: the upgraded process killed is restarted.
    assert!(c.exec(&["kill", "-9", &pid.to_string()]).status.success());
    c.restarted(pid, "kill -9 of the upgraded process").await;
    let (_, tag) = connect_tagged(lb).await;
    assert_eq!(tag, 1);
    c.ok(&["stop", "ringlb"]);
}

/// The Debian package (`scripts/build-deb.sh` builds it; `.ci/run` does
/// before the tests), in a container with this machine's dpkg database:
/// `dpkg -i` installs, enables and starts the service; a newer version
/// installed over the running service replaces the process with 0 failed
/// connections and keeps the edited config; removing stops it and
/// keeps /etc/ringlb; purging removes the config, the user and the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_package_installs_upgrades_removes_and_purges() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED: {why}");
        return;
    }
    let deb = std::fs::read_dir(repo_path("target/debian"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"));
    let Some(deb) = deb else {
        println!("SKIPPED: no package in target/debian: run scripts/build-deb.sh (.ci/run does)");
        return;
    };
    let a = Backend::tagged(1).await;
    let (port, admin_port) = (free_port(), free_port());
    let lb: SocketAddr = ([127, 0, 0, 1], port).into();
    let c = Container::boot(BIN);
    run(Command::new("mkdir").arg("-p").arg(c.root.join("var/lib")));
    run(Command::new("cp")
        .arg("-a")
        .arg("/var/lib/dpkg")
        .arg(c.root.join("var/lib/")));
    std::fs::copy(&deb, c.root.join("root/ringlb.deb")).unwrap();
    // A newer build: the same package with its version raised.
    let unpacked = c._dir.path().join("newer");
    run(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&unpacked));
    let control = unpacked.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .unwrap()
        .to_string();
    std::fs::write(
        &control,
        text.replace(
            &format!("Version: {version}"),
            &format!("Version: {version}+newer1"),
        ),
    )
    .unwrap();
    run(Command::new("dpkg-deb")
        .args(["-b", "--root-owner-group"])
        .arg(&unpacked)
        .arg(c.root.join("root/ringlb-newer.deb")));
    // The operator's own config, there before the package (kept: confold).
    let edited = config(port, admin_port, None).replace(
        "[runtime]\n",
        "[runtime]\ntakeover_socket = \"/run/ringlb/takeover.sock\"\n",
    ) + "# edited by the operator\n";
    c.write("/etc/ringlb/ringlb.toml", &edited);
    c.write("/etc/ringlb/targets/web.txt", &targets(&[a.addr]));
    let dpkg = |args: &[&str]| {
        let mut all = vec!["dpkg", "--force-confold"];
        all.extend_from_slice(args);
        let out = c.exec(&all);
        assert!(
            out.status.success(),
            "dpkg {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };

    dpkg(&["-i", "/root/ringlb.deb"]);
    assert_eq!(c.ok(&["is-enabled", "ringlb"]).trim(), "enabled");
    assert_eq!(c.ok(&["is-active", "ringlb"]).trim(), "active");
    let (_, tag) = connect_tagged(lb).await;
    assert_eq!(tag, 1, "installed, started, serving");
    for (what, cmd) in [
        ("the ringlb user", "getent passwd ringlb"),
        ("the ringlb-targets group", "getent group ringlb-targets"),
        ("the man page", "test -f /usr/share/man/man1/ringlb.1.gz"),
        ("the binary in /usr/bin", "test -x /usr/bin/ringlb"),
        (
            "a group-writable targets folder",
            "stat -c %a:%G /etc/ringlb/targets | grep -qx 2775:ringlb-targets",
        ),
    ] {
        assert!(c.exec(&["sh", "-c", cmd]).status.success(), "{what}");
    }

    // A newer package over the running service: replaced, nothing refused.
    let pid = c.main_pid();
    let load = clients(lb);
    load.served(5).await;
    dpkg(&["-i", "/root/ringlb-newer.deb"]);
    let status = c.exec(&["dpkg-query", "-W", "-f", "${Version}", "ringlb"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).ends_with("+newer1"),
        "the newer one is installed"
    );
    load.served(5).await;
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "failed connections ({ok} ok)");
    assert!(ok > 10, "only {ok} connections across the upgrade");
    assert_ne!(c.main_pid(), pid, "the process was replaced");
    assert_eq!(c.ok(&["is-active", "ringlb"]).trim(), "active");
    let kept = std::fs::read_to_string(c.root.join("etc/ringlb/ringlb.toml")).unwrap();
    assert!(
        kept.contains("# edited by the operator"),
        "the edited config is kept"
    );

    // Removed: stopped, the config kept.
    dpkg(&["-r", "ringlb"]);
    let state = c.systemctl(&["is-active", "ringlb"]);
    assert_ne!(String::from_utf8_lossy(&state.stdout).trim(), "active");
    assert!(tokio::net::TcpStream::connect(lb).await.is_err(), "stopped");
    assert!(
        c.root.join("etc/ringlb/ringlb.toml").exists(),
        "remove keeps /etc/ringlb"
    );

    // Purged: config, user and group gone.
    dpkg(&["-P", "ringlb"]);
    assert!(
        !c.root.join("etc/ringlb").exists(),
        "purge removes /etc/ringlb"
    );
    assert!(
        !c.exec(&["getent", "passwd", "ringlb"]).status.success(),
        "the user is gone"
    );
    assert!(
        !c.exec(&["getent", "group", "ringlb-targets"])
            .status
            .success(),
        "the group is gone"
    );
}

/// `ringlb-autoscale.service` with hooks that start and stop `todo@.service`
/// instances: load grows the group from 1 to 3 units, its end shrinks it
/// back, each removed target drained by ringlb before its unit stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_autoscaler_scales_todo_units_up_and_down() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED: {why}");
        return;
    }
    let (port, admin_port, autoscale_admin) = (free_port(), free_port(), free_port());
    let lb: SocketAddr = ([127, 0, 0, 1], port).into();
    // Three free ports in a row for the todo@ instances.
    let base = (20_000..32_000u16)
        .step_by(7)
        .find(|b| (*b..b + 3).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()))
        .expect("three free ports");
    let demo = env!("CARGO_BIN_EXE_demo-backend");
    let c = Container::install_with(
        &[(BIN, "ringlb"), (demo, "demo-backend")],
        &config(port, admin_port, None).replace(
            "targets_file = \"targets/web.txt\"\n",
            "targets_file = \"targets/web.txt\"\nderegistration_delay = \"5s\"\n",
        ),
        "",
    );
    for unit in ["todo@.service", "ringlb-autoscale.service"] {
        c.write(
            &format!("/etc/systemd/system/{unit}"),
            &std::fs::read_to_string(repo_path(&format!("scripts/{unit}"))).unwrap(),
        );
    }
    c.write(
        "/etc/ringlb/autoscale.toml",
        &format!(
            "admin = \"127.0.0.1:{autoscale_admin}\"\n\n[[group]]\nname = \"web\"\n\
             targets_file = \"targets/web.txt\"\nringlb_admin = \"127.0.0.1:{admin_port}\"\n\
             min = 1\nmax = 3\nports = \"{base}-{}\"\n\
             scale_out = \"systemctl start todo@{{port}}\"\nscale_in = \"systemctl stop todo@{{port}}\"\n\
             period = \"1s\"\nmetric = \"active_connections\"\nhealth_check_grace_period = \"20s\"\n\n\
             [group.target_tracking]\ntarget = 2\nscale_out_periods = 1\nscale_in_periods = 2\n\
             scale_out_cooldown = \"1s\"\nscale_in_cooldown = \"1s\"\n",
            base + 2
        ),
    );
    c.ok(&["daemon-reload"]);
    c.ok(&["start", "ringlb"]);
    c.ok(&["start", "ringlb-autoscale"]);
    let units = || {
        let out = c.systemctl(&[
            "list-units",
            "todo@*",
            "--state=active",
            "--no-legend",
            "--plain",
        ]);
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let wait = |n: usize, what: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if units() == n && healthy(admin).await == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} todo@ units, {} healthy",
                units(),
                healthy(admin).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    wait(1, "min 1").await;
    // Eight connections held open: four a target over the target of 2.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tokio::net::TcpStream::connect(lb).await.unwrap());
    }
    wait(3, "grown to max 3").await;
    drop(held);
    wait(1, "back to min 1").await;
    let log = c.exec(&[
        "journalctl",
        "-u",
        "ringlb-autoscale",
        "--no-pager",
        "-o",
        "cat",
    ]);
    let log = String::from_utf8_lossy(&log.stdout).to_string();
    assert!(log.contains("scale out web 1 -> 3"), "{log}");
    assert_eq!(log.matches("drained and stopped").count(), 2, "{log}");
    c.ok(&["stop", "ringlb-autoscale"]);
}
