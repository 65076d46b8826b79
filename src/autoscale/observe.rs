//! What the autoscaler sees: ringlb's public admin endpoint (`/targets`,
//! `/metrics`) and /proc (which process listens on a port, its CPU time).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_BODY: usize = 16 << 20;

/// One target as ringlb's `/targets` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetView {
    pub ready: bool,
    pub health: String,
    pub draining: bool,
    pub active: u64,
}

/// ringlb's view of one group.
#[derive(Debug, Default, Clone)]
pub struct GroupView {
    pub targets: HashMap<SocketAddr, TargetView>,
    /// `ringlb_target_connections_total` per target.
    pub connections_total: HashMap<SocketAddr, u64>,
}

/// GET `path` from ringlb's admin endpoint; the body of a 200.
pub async fn fetch(admin: SocketAddr, path: &str) -> Result<String, String> {
    let work = async {
        let mut s = TcpStream::connect(admin)
            .await
            .map_err(|e| format!("cannot reach ringlb's admin at {admin}: {e}"))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: ringlb\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("{admin}{path}: {e}"))?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_BODY as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| format!("{admin}{path}: {e}"))?;
        let text = String::from_utf8(buf).map_err(|_| format!("{admin}{path}: not UTF-8"))?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{admin}{path}: no HTTP head"))?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            let status = head.lines().next().unwrap_or("");
            return Err(format!("{admin}{path}: {status}"));
        }
        Ok(body.to_string())
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("{admin}{path}: no answer within {FETCH_TIMEOUT:?}")))
}

/// Reads ringlb's view of `group`. An error when ringlb cannot be asked or
/// does not know the group (the config names it wrong).
pub async fn ringlb_view(admin: SocketAddr, group: &str) -> Result<GroupView, String> {
    let targets = fetch(admin, "/targets").await?;
    let metrics = fetch(admin, "/metrics").await?;
    let mut view = parse_targets(&targets, group)?;
    view.connections_total = parse_counter(&metrics, "ringlb_target_connections_total", group);
    Ok(view)
}

pub fn parse_targets(json: &str, group: &str) -> Result<GroupView, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("/targets is not JSON: {e}"))?;
    let g = v["groups"]
        .as_array()
        .and_then(|gs| {
            gs.iter()
                .find(|g| g["name"] == group && g["removed"] == false)
        })
        .ok_or_else(|| format!("ringlb has no target group {group:?}"))?;
    let mut view = GroupView::default();
    for t in g["targets"].as_array().into_iter().flatten() {
        let Some(addr) = t["address"].as_str().and_then(|a| a.parse().ok()) else {
            continue;
        };
        view.targets.insert(
            addr,
            TargetView {
                ready: t["ready"] == true,
                health: t["health"].as_str().unwrap_or("").to_string(),
                draining: t["draining"] == true,
                active: t["active_connections"].as_u64().unwrap_or(0),
            },
        );
    }
    Ok(view)
}

/// Samples of `name{group="G",target="ADDR"} N` in Prometheus text.
pub fn parse_counter(text: &str, name: &str, group: &str) -> HashMap<SocketAddr, u64> {
    let want_group = format!("group=\"{group}\"");
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        if !labels.split(',').any(|l| l == want_group) {
            continue;
        }
        let target = labels
            .split(',')
            .find_map(|l| l.strip_prefix("target=\""))
            .and_then(|t| t.strip_suffix('"'))
            .and_then(|t| t.parse::<SocketAddr>().ok());
        if let (Some(t), Ok(v)) = (target, value.trim().parse::<u64>()) {
            out.insert(t, v);
        }
    }
    out
}

/// The process that listens on TCP `port` (any address), found through
/// /proc/net/tcp{,6} and the fds of /proc/*: works for targets the
/// autoscaler started, adopted after a restart, or left to systemd.
pub fn listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| link.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// CPU time (user + system, all threads) of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parens: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ", field 3 (state) is f[0]; utime is field 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((utime + stime) as f64 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_json_is_read_for_one_group() {
        let json = r#"{"epoch":3,"groups":[
          {"name":"api","removed":false,"targets":[]},
          {"name":"web","removed":false,"targets":[
            {"address":"127.0.0.1:6400","health":"healthy","ready":true,"draining":false,"active_connections":4},
            {"address":"127.0.0.1:6401","health":"draining","ready":false,"draining":true,"active_connections":1}]}]}"#;
        let v = parse_targets(json, "web").unwrap();
        let a = &v.targets[&"127.0.0.1:6400".parse().unwrap()];
        assert!(a.ready && !a.draining && a.active == 4);
        assert!(v.targets[&"127.0.0.1:6401".parse().unwrap()].draining);
        assert!(
            parse_targets(json, "nope")
                .unwrap_err()
                .contains("no target group")
        );
    }

    #[test]
    fn counters_are_read_by_group_and_target() {
        let text = "# TYPE ringlb_target_connections_total counter\n\
            ringlb_target_connections_total{group=\"web\",target=\"127.0.0.1:6400\"} 17\n\
            ringlb_target_connections_total{group=\"web2\",target=\"127.0.0.1:6401\"} 5\n\
            ringlb_target_connections_total_other{group=\"web\",target=\"127.0.0.1:6402\"} 9\n";
        let c = parse_counter(text, "ringlb_target_connections_total", "web");
        assert_eq!(c.len(), 1);
        assert_eq!(c[&"127.0.0.1:6400".parse().unwrap()], 17);
    }

    #[test]
    fn this_process_is_found_by_its_listening_port_and_burns_cpu() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(listener_pid(port), Some(std::process::id()));
        let before = cpu_seconds(std::process::id()).unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = cpu_seconds(std::process::id()).unwrap();
        assert!(after - before >= 0.05, "{before} -> {after}");
        drop(l);
        assert_eq!(listener_pid(port), None);
    }
}
