//! The systemd unit and install script a user installs.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_unit_verifies_cleanly_and_has_what_a_daemon_needs() {
    let unit = std::fs::read_to_string(repo_path("scripts/ringlb.service")).unwrap();
    for needed in [
        "Type=notify",
        "ExecStartPre=/usr/local/bin/ringlb check --config /etc/ringlb/ringlb.toml",
        "ExecStart=/usr/local/bin/ringlb run --config /etc/ringlb/ringlb.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=ringlb",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "LimitNOFILE=1048576",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ] {
        assert!(unit.lines().any(|l| l == needed), "unit lacks {needed:?}");
    }
    // Verify a copy pointing at the binary under test (verify checks that
    // the executables exist).
    verify(
        "ringlb.service",
        &unit.replace("/usr/local/bin/ringlb", BIN),
    );
}

/// `systemd-analyze verify` on `unit` (its text) saved as `name`. Unknown
/// keys only warn, so stderr must be empty.
fn verify(name: &str, unit: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is needed (Debian package systemd; .ci/run installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify {name}: {stderr}"
    );
}

#[test]
fn the_autoscaler_unit_and_the_app_template_verify() {
    let unit = std::fs::read_to_string(repo_path("scripts/ringlb-autoscale.service")).unwrap();
    assert!(
        unit.lines().any(|l| l
            == "ExecStart=/usr/local/bin/ringlb autoscale --config /etc/ringlb/autoscale.toml")
    );
    assert!(
        unit.lines().any(|l| l == "KillMode=process"),
        "targets must outlive a restart"
    );
    verify(
        "ringlb-autoscale.service",
        &unit.replace("/usr/local/bin/ringlb", BIN),
    );
    let template = std::fs::read_to_string(repo_path("scripts/todo@.service")).unwrap();
    assert!(template.contains("--port %i"));
    verify(
        "todo@6400.service",
        &template.replace(
            "/usr/local/bin/demo-backend",
            env!("CARGO_BIN_EXE_demo-backend"),
        ),
    );
}

#[test]
fn the_upgrade_drop_in_verifies_with_the_unit() {
    let unit = std::fs::read_to_string(repo_path("scripts/ringlb.service")).unwrap();
    let drop_in = std::fs::read_to_string(repo_path("scripts/ringlb-upgrade.conf")).unwrap();
    for needed in [
        "NotifyAccess=all",
        "ExecReload=",
        "ExecReload=/usr/local/bin/ringlb upgrade --config /etc/ringlb/ringlb.toml",
    ] {
        assert!(
            drop_in.lines().any(|l| l == needed),
            "drop-in lacks {needed:?}"
        );
    }
    // A drop-in's [Service] lines apply after the unit's: verify them merged.
    let merged =
        format!("{unit}\n{drop_in}").replace("[Install]\nWantedBy=multi-user.target\n", "");
    let merged = format!("{merged}\n[Install]\nWantedBy=multi-user.target\n");
    verify(
        "ringlb.service",
        &merged.replace("/usr/local/bin/ringlb", BIN),
    );
}

#[test]
fn the_install_scripts_and_the_package_scripts_parse() {
    for (shell, script) in [
        ("bash", "scripts/install.sh"),
        ("bash", "scripts/build-deb.sh"),
        ("sh", "debian/postinst"),
        ("sh", "debian/prerm"),
        ("sh", "debian/postrm"),
    ] {
        let out = Command::new(shell)
            .arg("-n")
            .arg(repo_path(script))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// ringlb's stderr, with `JOURNAL_STREAM` set as systemd sets it: the
/// first log line ringlb writes (the "listening" line).
fn first_line(journal_stream: impl Fn(&std::fs::Metadata) -> String) -> String {
    let dir = write_config(&simple_config(1, ""), &[("targets/web.txt", String::new())]);
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(dir.path().join("ringlb.toml"))
        .env("JOURNAL_STREAM", journal_stream(&meta))
        .env("RUST_LOG", "info")
        .stderr(log)
        .spawn()
        .unwrap();
    let mut text = String::new();
    wait_until(std::time::Duration::from_secs(10), "a log line", || {
        text = std::fs::read_to_string(&log_path).unwrap_or_default();
        text.contains("listening")
    });
    let _ = child.kill();
    let _ = child.wait();
    text.lines()
        .find(|l| l.contains("listening"))
        .unwrap()
        .to_string()
}

/// Under systemd (stderr is the stream `JOURNAL_STREAM` names), each line
/// starts with its syslog priority and has no timestamp of its own (the
/// journal stamps it); anywhere else lines keep their time.
#[test]
fn log_lines_carry_a_priority_and_no_second_timestamp_in_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let journal = first_line(|m| format!("{}:{}", m.dev(), m.ino()));
    assert!(journal.starts_with("<6>"), "{journal}");
    assert!(
        !journal[3..].starts_with("20"),
        "no timestamp in the journal: {journal}"
    );
    let redirected = first_line(|m| format!("{}:{}", m.dev(), m.ino() + 1));
    assert!(
        redirected.starts_with("20") && !redirected.starts_with('<'),
        "stderr is not the journal: {redirected}"
    );
}
