//! Zero-downtime binary upgrade: `ringlb run --takeover` takes the listening
//! sockets over from the running process three times in a row while clients
//! keep connecting and long streams keep flowing.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::net::TcpStream;

/// `ringlb run` of `binary` on `config` (with `--takeover` if asked),
/// once it says it is ready.
/// `binary` running `config`, once it is ready, and the address its "web"
/// listener is bound to.
fn start(binary: &Path, config: &Path, takeover: bool) -> (Logged, SocketAddr) {
    let address_file = config.with_file_name(format!("addresses-{takeover}.json"));
    let _absent = std::fs::remove_file(&address_file);
    let mut cmd = Command::new(binary);
    cmd.args(["run", "--config"])
        .arg(config)
        .arg("--address-file")
        .arg(&address_file);
    if takeover {
        cmd.arg("--takeover");
    }
    let p = Logged::spawn(cmd.env("RUST_LOG", "info"));
    let (_, listeners) = wait_addresses(&p, &address_file);
    (p, listeners["web"])
}

const WAIT: Duration = Duration::from_secs(30);

/// `simple_config` with `workers` workers, a takeover socket, and
/// `shutdown_timeout` as given.
fn takeover_config(workers: usize, shutdown_timeout: &str) -> String {
    simple_config(workers, "").replace(
        "shutdown_timeout = \"5s\"",
        &format!("shutdown_timeout = \"{shutdown_timeout}\"\ntakeover_socket = \"takeover.sock\""),
    )
}

/// A backend tagged `tag` and, in front of it, this build of ringlb with
/// `workers`, `shutdown_timeout` and a takeover socket, once its target is
/// healthy: the backend, the folder, the config's path, the process and the
/// address of its "web" listener.
async fn first_ringlb(
    tag: u8,
    workers: usize,
    shutdown_timeout: &str,
) -> (Backend, tempfile::TempDir, PathBuf, Logged, SocketAddr) {
    let backend = Backend::tagged(tag).await;
    let config = takeover_config(workers, shutdown_timeout);
    let dir = write_config(&config, &[("targets/web.txt", targets(&[backend.addr]))]);
    let path = dir.path().join("ringlb.toml");
    let (proc, addr) = start(Path::new(BIN), &path, false);
    proc.wait_log("to=healthy", WAIT);
    (backend, dir, path, proc, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_binary_replacements_refuse_nothing_and_keep_long_streams_intact() {
    let (_backend, dir, path, first, addr) = first_ringlb(7, 2, "60s").await;

    // Long streams, opened on the first process.
    let mut streams = Vec::new();
    for _ in 0..10 {
        let (s, tag) = connect_tagged(addr).await;
        assert_eq!(tag, 7);
        streams.push(s);
    }
    // New connections as fast as they come, until told to stop (or 120 s).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        loops.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let r = async {
                    let mut s = TcpStream::connect(addr).await?;
                    let mut tag = [0u8];
                    tokio::io::AsyncReadExt::read_exact(&mut s, &mut tag).await?;
                    echo(&mut s, b"ping").await
                };
                match tokio::time::timeout(Duration::from_secs(10), r).await {
                    Ok(Ok(())) => drop(ok.fetch_add(1, Ordering::SeqCst)),
                    other => failed.lock().unwrap().push(format!("{other:?}")),
                }
            }
        }));
    }

    let mut procs = vec![first];
    for round in 1..=3 {
        let before = ok.load(Ordering::SeqCst);
        // A new binary each time, as an upgrade brings.
        let binary = dir.path().join(format!("ringlb-v{}", round + 1));
        std::fs::copy(BIN, &binary).unwrap();
        let (next, _) = start(&binary, &path, true);
        next.wait_log("the old process let go", WAIT);
        let old = procs.last().unwrap();
        old.wait_log("taken over by a new process", WAIT);
        // The new one serves: connections keep succeeding after the switch.
        wait_until_async(
            Duration::from_secs(10),
            "connections through the new process",
            || ok.load(Ordering::SeqCst) > before + 20,
        )
        .await;
        for s in &mut streams {
            echo(s, format!("round {round}: still here").as_bytes())
                .await
                .expect("a long stream survives the takeover");
        }
        procs.push(next);
    }
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    let ok = ok.load(Ordering::SeqCst);
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    eprintln!(
        "{ok} connections through three takeovers, {} failed",
        failed.len()
    );
    assert!(ok > 100, "only {ok} connections");

    // Bulk through the long streams, both ways, intact.
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    for s in &mut streams {
        echo(s, &chunk)
            .await
            .expect("bulk echo after three takeovers");
    }
    // The middle processes had no long streams: they drained and left.
    let (_, rest) = procs.split_at_mut(1);
    for p in &mut rest[..2] {
        assert!(
            p.exited_within(Duration::from_secs(20)),
            "a taken-over process stayed:\n{}",
            p.log()
        );
    }
    // The first still drains its long streams (shutdown_timeout 60 s) and
    // leaves once they close.
    assert!(
        !procs[0].exited_within(Duration::from_millis(500)),
        "the first process cut its streams"
    );
    drop(streams);
    assert!(
        procs[0].exited_within(Duration::from_secs(20)),
        "{}",
        procs[0].log()
    );
    assert!(procs[0].log().contains("stopped"));
    // The last one serves alone, and can itself be taken over (its socket is bound).
    assert!(procs[3].log().contains("the old process let go"));
    assert_eq!(connect_tagged(addr).await.1, 7);
    assert!(dir.path().join("takeover.sock").exists());
}

/// `ringlb run --takeover` on `config` that must fail at once: its stderr.
fn failed_takeover(config: &str) -> String {
    let dir = write_config(config, &[("targets/web.txt", String::new())]);
    let out = Command::new(BIN)
        .args(["run", "--takeover", "--config"])
        .arg(dir.path().join("ringlb.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn takeover_without_a_takeover_socket_is_a_clear_error() {
    let err = failed_takeover(&simple_config(1, ""));
    assert!(
        err.contains("--takeover needs [runtime] takeover_socket"),
        "{err}"
    );
}

#[test]
fn takeover_with_nobody_running_says_so() {
    let err = failed_takeover(&takeover_config(1, "5s"));
    assert!(
        err.contains("takeover via") && err.contains("connect"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ringlb_upgrade_returns_once_the_new_process_serves() {
    let (_backend, dir, path, mut old, addr) = first_ringlb(3, 1, "5s").await;
    // `upgrade`'s own word to one file, the new process's log to another.
    let log = dir.path().join("upgrade.log");
    let new_log = dir.path().join("new.log");
    let status = Command::new(BIN)
        .args(["upgrade", "--config"])
        .arg(&path)
        .arg("--log-file")
        .arg(&new_log)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    let pid: u32 = err
        .lines()
        .find_map(|l| l.strip_prefix("ringlb: upgraded: pid "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("upgrade said: {err}"));
    assert!(status.success(), "{err}");
    // The new process is detached from `upgrade`; stop it at the end.
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: signalling the pid `ringlb upgrade` reported.
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
    let _new = Kill(pid);
    assert!(old.exited_within(Duration::from_secs(20)), "{}", old.log());
    assert_eq!(connect_tagged(addr).await.1, 3, "the new process serves");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(
        err.contains(&format!("its log goes to {}", new_log.display())),
        "{err}"
    );
    let new_said = std::fs::read_to_string(&new_log).unwrap();
    assert!(new_said.contains("the old process let go"), "{new_said}");
}

/// The takeover socket hands over every listening socket, so it is `0600`
/// whatever the umask ringlb was started with, and a peer of another user
/// that still gets in (the file's mode opened by hand here) is refused,
/// logged and counted, while ringlb keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_takeover_socket_is_private_and_refuses_other_users() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: needs root, to connect as another user");
        return;
    }
    // The system's Python: one another user may run.
    const PYTHON: &str = "/usr/bin/python3";
    if !Path::new(PYTHON).exists() {
        println!("SKIPPED: needs {PYTHON}, the other user's client");
        return;
    }
    let backend = Backend::tagged(3).await;
    // A folder another user may traverse, so only the socket's mode guards it.
    let dir = write_config(
        &takeover_config(1, "5s"),
        &[("targets/web.txt", targets(&[backend.addr]))],
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("ringlb.toml");
    let address_file = dir.path().join("addresses.json");
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(&path)
        .arg("--address-file")
        .arg(&address_file)
        .env("RUST_LOG", "info");
    use std::os::unix::process::CommandExt;
    // SAFETY: umask is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let lb = Logged::spawn(&mut cmd);
    let (admin, listeners) = wait_addresses(&lb, &address_file);
    let sock = dir.path().join("takeover.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "takeover socket mode under umask 000");
    let other_user = |sock: &Path| {
        let script = "import socket,sys\n\
            s=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET)\n\
            try:\n s.connect(sys.argv[1])\n\
            except OSError as e:\n print('connect:',e.strerror); sys.exit(0)\n\
            s.settimeout(10)\n\
            try:\n s.send(b'TAKEOVER 2'); print('got', len(s.recv(65536)))\n\
            except OSError as e:\n print('closed')\n";
        let out = Command::new(PYTHON)
            .args(["-c", script])
            .arg(sock)
            .uid(1001)
            .gid(1001)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(other_user(&sock), "connect: Permission denied");
    // Opened by hand: the peer check still refuses the other user.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let answer = other_user(&sock);
    assert!(
        answer == "got 0" || answer == "closed",
        "the other user got an answer: {answer}"
    );
    lb.wait_log("takeover refused: the peer runs as another user", WAIT);
    let line = lb.wait_log("uid=1001", WAIT);
    assert!(line.contains("takeover refused"), "{line}");
    let (_, body) = admin_get(admin, "/metrics").await;
    assert!(
        body.lines().any(|l| l == "ringlb_takeover_refused_total 1"),
        "{body}"
    );
    let (_, tag) = connect_tagged(listeners["web"]).await;
    assert_eq!(tag, 3, "still serving");
    // And a takeover by ringlb's own user still works.
    let (next, addr) = start(Path::new(BIN), &path, true);
    next.wait_log("serves alone", WAIT);
    let (_, tag) = connect_tagged(addr).await;
    assert_eq!(tag, 3);
    drop(lb);
}

/// A handover of 900 listeners (more than one packet's worth of header)
/// goes through: the header comes in pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_hundred_listeners_are_handed_over() {
    raise_fd_limit();
    let backend = Backend::tagged(5).await;
    let mut config = takeover_config(1, "5s");
    for i in 0..899 {
        let name = format!("listener-with-a-rather-long-name-to-fill-the-header-{i:04}");
        config.push_str(&format!(
            "\n[[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\ntarget_group = \"web\"\n"
        ));
    }
    let dir = write_config(&config, &[("targets/web.txt", targets(&[backend.addr]))]);
    let path = dir.path().join("ringlb.toml");
    let (old, addr) = start(Path::new(BIN), &path, false);
    old.wait_log("to=healthy", WAIT);
    let (new, after) = start(Path::new(BIN), &path, true);
    new.wait_log("serves alone", WAIT);
    assert_eq!(addr, after, "the same socket, handed over");
    let (_, tag) = connect_tagged(after).await;
    assert_eq!(tag, 5);
    let line = new.wait_log("took over the running ringlb's sockets", WAIT);
    assert!(line.contains("listeners=900"), "{line}");
}
