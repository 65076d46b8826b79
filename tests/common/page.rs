//! The console page in headless Chromium: `tests/console/check.mjs` (run by
//! node with playwright-core) opens it and reports what it shows, one step
//! at a time, while the test changes the world between steps.

use std::io::{BufRead, BufReader, Lines, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::repo_path;

/// Debian's chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Page {
    node: Child,
    said: Lines<BufReader<ChildStdout>>,
    tell: Option<ChildStdin>,
    pub screenshot: String,
}

impl Page {
    /// Opens `url` with the script's `mode` ("ringlb" or "autoscale") and
    /// its arguments; the screenshot goes to `$RINGLB_CONSOLE_SCREENSHOT`
    /// if set (how docs/console.png is made), else into `dir`. `None`, with
    /// `SKIPPED: <why>` printed, where no browser can run.
    pub fn open(mode: &str, url: &str, dir: &Path, args: &[String]) -> Option<Page> {
        if !Path::new(CHROMIUM).exists() {
            println!("SKIPPED: no {CHROMIUM} (Debian package chromium; .ci/run installs it)");
            return None;
        }
        let node_ok = Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !node_ok || !repo_path("tests/console/node_modules/playwright-core").exists() {
            println!(
                "SKIPPED: needs node and playwright-core in tests/console (npm install --prefix tests/console; .ci/run does it)"
            );
            return None;
        }
        let var = format!("RINGLB_{}_SCREENSHOT", mode.to_uppercase());
        // A screenshot for the docs waits for charts with some history.
        let (screenshot, points) = match std::env::var(var) {
            Ok(path) => (path, "24"),
            Err(_) => (dir.join(format!("{mode}.png")).display().to_string(), "1"),
        };
        let mut node = Command::new("node")
            .arg(repo_path("tests/console/check.mjs"))
            .args([mode, url, CHROMIUM, &screenshot])
            .args(args)
            .env("CONSOLE_MIN_POINTS", points)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node");
        let said = BufReader::new(node.stdout.take().unwrap()).lines();
        let tell = node.stdin.take().unwrap();
        Some(Page {
            node,
            said,
            tell: Some(tell),
            screenshot,
        })
    }

    /// The page script's next report is `ok <step>`.
    pub fn expect(&mut self, step: &str) {
        let line = self
            .said
            .next()
            .expect("the page script ended early")
            .unwrap();
        println!("console: {line}");
        assert!(line.starts_with(&format!("ok {step}")), "{line}");
    }

    /// Lets the page script take its next step.
    pub fn next(&mut self) {
        writeln!(self.tell.as_mut().unwrap(), "next").unwrap();
    }

    /// Waits for the script to end well; the screenshot is there.
    pub fn finish(mut self) {
        // The script reads its stdin to its end.
        drop(self.tell.take());
        assert!(self.node.wait().unwrap().success());
        let len = std::fs::metadata(&self.screenshot).map_or(0, |m| m.len());
        assert!(len > 10_000, "a screenshot at {}", self.screenshot);
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = self.node.kill();
        let _ = self.node.wait();
    }
}
