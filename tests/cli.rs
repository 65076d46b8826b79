//! `ringlb check`, `ringlb --version` and start-up errors, as a user runs them.

mod common;

use std::process::Command;

use common::*;

fn check(dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.join("ringlb.toml"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_shipped_example() {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(repo_path("config/ringlb.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok: 1 listener(s), 1 target group(s), 3 target(s)"),
        "{stdout}"
    );
}

#[test]
fn check_names_file_key_and_line_for_each_mistake() {
    let good = simple_config(1, "connect_timeout = \"1s\"");
    let good_targets = "127.0.0.1:6400\n";
    // (config, targets file, words the message must hold)
    let cases: Vec<(String, &str, Vec<&str>)> = vec![
        (
            good.replace("workers = 1", "workers = 1\nthreads = 2"),
            good_targets,
            vec!["ringlb.toml:4:", "runtime.threads", "unknown field"],
        ),
        (
            good.replace("\"1s\"", "\"1 second\""),
            good_targets,
            vec![
                "ringlb.toml:17:",
                "target_group[0].connect_timeout",
                "invalid duration",
            ],
        ),
        (
            good.replace("target_group = \"web\"", "target_group = \"wbe\""),
            good_targets,
            vec!["ringlb.toml:12:", "listener[0].target_group", "\"wbe\""],
        ),
        (
            listen_on(&good, "127.0.0.1"),
            good_targets,
            vec!["ringlb.toml:11:", "listener[0].listen"],
        ),
        (
            good.replace("[[listener]]", "[[listener]"),
            good_targets,
            vec!["ringlb.toml:9:", "(syntax)"],
        ),
        (
            good.clone(),
            "127.0.0.1:6400\n127.0.0.1:6401 weight=zero\n",
            vec!["web.txt:2:", "weight", "targets_file", "\"web\""],
        ),
        (
            good.clone(),
            "# ok\n\n127.0.0.1\n",
            vec!["web.txt:3:", "not HOST:PORT"],
        ),
    ];
    for (config, targets_text, words) in cases {
        let dir = write_config(&config, &[("targets/web.txt", targets_text.to_string())]);
        let (code, _, stderr) = check(dir.path());
        assert_eq!(code, 1, "{stderr}");
        for w in &words {
            assert!(stderr.contains(w), "message {stderr:?} lacks {w:?}");
        }
        assert!(
            stderr.contains(dir.path().to_str().unwrap()),
            "message names the file: {stderr}"
        );
    }
}

#[test]
fn check_reports_a_missing_targets_file() {
    let dir = write_config(&simple_config(1, ""), &[]);
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 1);
    assert!(
        stderr.contains("targets/web.txt") && stderr.contains("cannot read targets file"),
        "{stderr}"
    );
}

/// `ringlb run` on `dir/ringlb.toml`, expected to exit 1 at start-up; its stderr.
fn run_fails(dir: &std::path::Path) -> String {
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(dir.join("ringlb.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn run_with_a_bad_config_exits_1_without_listening() {
    let dir = write_config(
        &simple_config(1, "idle_timeout = \"0s\""),
        &[("targets/web.txt", "127.0.0.1:6400\n".into())],
    );
    let stderr = run_fails(dir.path());
    assert!(
        stderr.contains("target_group[0].idle_timeout: must be more than 0"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_a_port_another_ringlb_holds() {
    let first = Ringlb::start(write_config(
        &simple_config(2, ""),
        &[("targets/web.txt", "127.0.0.1:6400\n".into())],
    ));
    let taken = first.addr().to_string();
    let dir = write_config(
        &listen_on(&simple_config(1, ""), &taken),
        &[("targets/web.txt", "127.0.0.1:6400\n".into())],
    );
    let stderr = run_fails(dir.path());
    assert!(
        stderr.contains("listener \"web\"") && stderr.contains("Address already in use"),
        "{stderr}"
    );
    assert!(first.stop().success());
}

#[test]
fn version_prints_the_crate_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ringlb {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `check` refuses what `run` would: a takeover socket whose folder does not
/// exist (outside systemd, /run/ringlb usually does not), with the file,
/// line and key, and says how to make it.
#[test]
fn check_refuses_a_takeover_socket_without_its_folder() {
    let config = simple_config(1, "").replace(
        "shutdown_timeout = \"5s\"",
        "shutdown_timeout = \"5s\"\ntakeover_socket = \"/nonexistent-ringlb-folder/takeover.sock\"",
    );
    let dir = write_config(&config, &[("targets/web.txt", "127.0.0.1:6400\n".into())]);
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 1, "{stderr}");
    for words in [
        "ringlb.toml:5:",
        "runtime.takeover_socket",
        "/nonexistent-ringlb-folder does not exist",
        "mkdir -p",
    ] {
        assert!(stderr.contains(words), "{words:?} in {stderr}");
    }
    // A folder that exists is fine.
    let ok = config.replace("/nonexistent-ringlb-folder/takeover.sock", "takeover.sock");
    std::fs::write(dir.path().join("ringlb.toml"), ok).unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 0, "{stderr}");
}

/// A 5 MiB targets line is quoted as a short excerpt, not echoed whole.
#[test]
fn check_quotes_a_huge_bad_line_as_a_short_excerpt() {
    let huge = format!("{}:80\n", "h".repeat(5 << 20));
    let dir = write_config(&simple_config(1, ""), &[("targets/web.txt", huge)]);
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 1);
    assert!(stderr.len() < 1000, "{} bytes of error", stderr.len());
    assert!(stderr.contains("web.txt:1:"), "{stderr}");
    assert!(stderr.contains("bytes)"), "{stderr}");
}
