//! The targets: the file ringlb reads (the autoscaler owns the lines in its
//! host and port range, and keeps every other line as written) and the
//! processes behind them (started by the autoscaler, or by hook commands).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::config::Launcher;
use super::observe::listener_pid;

const HEADER: &str = "# Managed by ringlb autoscale:";
/// How long a stopped target gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a hook command may run.
const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

pub struct TargetsFile {
    pub path: PathBuf,
    pub host: IpAddr,
    pub ports: RangeInclusive<u16>,
}

/// The file's content split: the ports of lines the autoscaler owns, and
/// every other line, kept verbatim.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Content {
    pub ours: BTreeSet<u16>,
    pub others: Vec<String>,
}

impl TargetsFile {
    /// Reads the file; a missing file is an empty one.
    pub fn read(&self) -> Result<Content, String> {
        let text = match crate::files::read_regular(&self.path, 16 << 20, "targets") {
            Ok(t) => t,
            Err(_) if !self.path.exists() => String::new(),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        let mut content = Content::default();
        for line in text.lines() {
            if line.starts_with(HEADER) {
                continue;
            }
            let entry = line.split('#').next().unwrap_or("").trim();
            let addr = entry
                .split_whitespace()
                .next()
                .and_then(|a| a.parse::<SocketAddr>().ok());
            match addr {
                Some(a) if a.ip() == self.host && self.ports.contains(&a.port()) => {
                    content.ours.insert(a.port());
                }
                _ => content.others.push(line.to_string()),
            }
        }
        Ok(content)
    }

    /// The text for `content`: a header, the other lines, then ours.
    pub fn render(&self, content: &Content) -> String {
        let mut text = format!(
            "{HEADER} lines for {} ports {}-{} are rewritten; other lines are kept.\n",
            self.host,
            self.ports.start(),
            self.ports.end()
        );
        for l in &content.others {
            text.push_str(l);
            text.push('\n');
        }
        for &port in &content.ours {
            text.push_str(&SocketAddr::new(self.host, port).to_string());
            text.push('\n');
        }
        text
    }

    /// Writes `content` the way ringlb wants it: checked by ringlb's own
    /// targets parser first (never a file ringlb would reject), then a temp
    /// file renamed over the old one.
    pub fn write(&self, content: &Content) -> Result<(), String> {
        let text = self.render(content);
        if let Err((line, message)) =
            crate::targets::parse_checked(&text, Some(&Default::default()), crate::targets::resolve)
        {
            return Err(format!(
                "{}: not written: line {line} would be rejected: {message}",
                self.path.display()
            ));
        }
        crate::files::replace(&self.path, text.as_bytes(), 0o644)
            .map_err(|e| format!("{}: cannot write: {e}", self.path.display()))
    }
}

/// Starts and stops the processes behind targets.
pub struct Fleet {
    launcher: Launcher,
    /// Processes this autoscaler started (adopted ones are found by port).
    children: HashMap<u16, Child>,
}

impl Fleet {
    pub fn new(launcher: Launcher) -> Fleet {
        Fleet {
            launcher,
            children: HashMap::new(),
        }
    }

    /// Starts the target for `port`.
    pub async fn start(&mut self, port: u16) -> Result<(), String> {
        match &self.launcher {
            Launcher::Exec(cmd) => {
                let cmd = cmd.replace("{port}", &port.to_string());
                // Its own process group: a Ctrl-C meant for the autoscaler
                // does not take the targets with it (a restart adopts them).
                let child = Command::new("sh")
                    .arg("-c")
                    .arg(format!("exec {cmd}"))
                    .stdin(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
                self.children.insert(port, child);
                Ok(())
            }
            Launcher::Hooks { scale_out, .. } => hook(scale_out, port).await,
        }
    }

    /// Stops the target for `port`: SIGTERM (then SIGKILL after
    /// [`STOP_GRACE`]) to the process that listens on it, or the scale-in hook.
    pub async fn stop(&mut self, port: u16) -> Result<(), String> {
        if let Launcher::Hooks { scale_in, .. } = &self.launcher {
            return hook(scale_in, port).await;
        }
        let pid = match self.children.get(&port) {
            Some(c) => Some(c.id()),
            None => listener_pid(port),
        };
        let Some(pid) = pid else {
            return Ok(()); // nothing listens there any more
        };
        let Ok(pid_t) = libc::pid_t::try_from(pid) else {
            return Err(format!("pid {pid} out of range"));
        };
        // SAFETY: kill takes plain integers; a stale pid is the only hazard,
        // and the pid is the child this process holds or the socket's owner
        // read just now.
        unsafe { libc::kill(pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            if self.gone(port, pid) {
                self.children.remove(&port);
                return Ok(());
            }
            if Instant::now() >= deadline {
                warn!(
                    port,
                    pid, "target did not stop within {STOP_GRACE:?}; killing it"
                );
                // SAFETY: as above.
                unsafe { libc::kill(pid_t, libc::SIGKILL) };
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.gone(port, pid);
                self.children.remove(&port);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn gone(&mut self, port: u16, pid: u32) -> bool {
        match self.children.get_mut(&port) {
            Some(c) => matches!(c.try_wait(), Ok(Some(_)) | Err(_)),
            None => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        }
    }

    /// A process this autoscaler started that has exited since (reaped).
    pub fn exited(&mut self, port: u16) -> Option<ExitStatus> {
        let status = self.children.get_mut(&port)?.try_wait().ok()??;
        self.children.remove(&port);
        Some(status)
    }
}

async fn hook(template: &str, port: u16) -> Result<(), String> {
    let cmd = template.replace("{port}", &port.to_string());
    info!(command = %cmd, "running hook");
    let run = {
        let cmd = cmd.clone();
        tokio::task::spawn_blocking(move || {
            Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .stdin(Stdio::null())
                .status()
        })
    };
    match tokio::time::timeout(HOOK_TIMEOUT, run).await {
        Ok(Ok(Ok(status))) if status.success() => Ok(()),
        Ok(Ok(Ok(status))) => Err(format!("{cmd:?} failed: {status}")),
        Ok(Ok(Err(e))) => Err(format!("cannot run {cmd:?}: {e}")),
        Ok(Err(e)) => Err(format!("{cmd:?}: {e}")),
        Err(_) => Err(format!("{cmd:?} did not finish within {HOOK_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_lines_are_kept_and_ours_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.txt");
        std::fs::write(
            &path,
            "# static ones\n10.0.0.5:80 weight=2\n127.0.0.1:6401\n127.0.0.1:7000\n",
        )
        .unwrap();
        let f = TargetsFile {
            path: path.clone(),
            host: "127.0.0.1".parse().unwrap(),
            ports: 6400..=6409,
        };
        let mut c = f.read().unwrap();
        assert_eq!(c.ours, BTreeSet::from([6401]));
        assert_eq!(c.others.len(), 3);
        c.ours.insert(6400);
        f.write(&c).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with("127.0.0.1:7000\n127.0.0.1:6400\n127.0.0.1:6401\n"),
            "{text}"
        );
        assert!(text.contains("10.0.0.5:80 weight=2\n"));
        // Reading what was written gives the same content back.
        assert_eq!(f.read().unwrap(), c);
        // A line ringlb would reject is never written.
        c.others.push("not-a-target".into());
        let e = f.write(&c).unwrap_err();
        assert!(e.contains("would be rejected"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
