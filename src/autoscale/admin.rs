//! The autoscaler's own admin endpoint: `/metrics` (what it decided and
//! why) and `/healthz`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the autoscaler's own `/metrics` shows for a group.
#[derive(Debug, Default, Clone)]
pub(super) struct GroupStats {
    pub(super) desired: u32,
    pub(super) starting: u32,
    pub(super) in_service: u32,
    pub(super) removing: u32,
    pub(super) metric: Option<f64>,
    pub(super) scale_out: u64,
    pub(super) scale_in: u64,
    pub(super) replaced: u64,
    pub(super) last_decision_unix: f64,
    pub(super) last_decision: String,
}

pub(super) type Board = Rc<RefCell<BTreeMap<String, GroupStats>>>;

pub(super) async fn serve_admin(l: TcpListener, board: Board) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let board = board.clone();
        tokio::task::spawn_local(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            })
            .await;
            if read != Ok(true) {
                return;
            }
            let path = std::str::from_utf8(&buf)
                .ok()
                .and_then(|t| t.split_whitespace().nth(1))
                .unwrap_or("");
            let (status, body) = match path {
                "/metrics" => ("200 OK", render_metrics(&board.borrow())),
                "/healthz" => ("200 OK", "ok\n".to_string()),
                _ => ("404 Not Found", "try /metrics or /healthz\n".to_string()),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ =
                tokio::time::timeout(Duration::from_secs(5), s.write_all(reply.as_bytes())).await;
        });
    }
}

/// A metric family: name, type, help, and how to read it from a group.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&GroupStats) -> f64,
);

fn render_metrics(board: &BTreeMap<String, GroupStats>) -> String {
    let mut out = String::new();
    let families: [Family; 9] = [
        (
            "ringlb_autoscale_desired",
            "gauge",
            "Targets the policy wants.",
            |s| f64::from(s.desired),
        ),
        (
            "ringlb_autoscale_starting",
            "gauge",
            "Targets started, not yet healthy in ringlb.",
            |s| f64::from(s.starting),
        ),
        (
            "ringlb_autoscale_in_service",
            "gauge",
            "Targets healthy in ringlb.",
            |s| f64::from(s.in_service),
        ),
        (
            "ringlb_autoscale_removing",
            "gauge",
            "Targets deregistered, waiting for their drain.",
            |s| f64::from(s.removing),
        ),
        (
            "ringlb_autoscale_metric",
            "gauge",
            "The policy's metric over the last period (NaN: none yet).",
            |s| s.metric.unwrap_or(f64::NAN),
        ),
        (
            "ringlb_autoscale_scale_out_total",
            "counter",
            "Scale-out decisions.",
            |s| s.scale_out as f64,
        ),
        (
            "ringlb_autoscale_scale_in_total",
            "counter",
            "Scale-in decisions.",
            |s| s.scale_in as f64,
        ),
        (
            "ringlb_autoscale_replaced_total",
            "counter",
            "Targets replaced: exited or unhealthy past the grace period.",
            |s| s.replaced as f64,
        ),
        (
            "ringlb_autoscale_last_decision_timestamp_seconds",
            "gauge",
            "When the last scaling decision was made (Unix time).",
            |s| s.last_decision_unix,
        ),
    ];
    for (name, kind, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (group, s) in board {
            let _ = writeln!(out, "{name}{{group=\"{}\"}} {}", escape(group), get(s));
        }
    }
    let _ = writeln!(
        out,
        "# HELP ringlb_autoscale_last_decision_info The last scaling decision, as logged.\n# TYPE ringlb_autoscale_last_decision_info gauge"
    );
    for (group, s) in board {
        let _ = writeln!(
            out,
            "ringlb_autoscale_last_decision_info{{group=\"{}\",decision=\"{}\"}} 1",
            escape(group),
            escape(&s.last_decision)
        );
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_name_each_group() {
        let mut board = BTreeMap::new();
        board.insert(
            "web".to_string(),
            GroupStats {
                desired: 3,
                in_service: 2,
                starting: 1,
                last_decision: "out 2 -> 3: cpu 41% > target 20".into(),
                ..GroupStats::default()
            },
        );
        let text = render_metrics(&board);
        assert!(
            text.contains("ringlb_autoscale_desired{group=\"web\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("ringlb_autoscale_in_service{group=\"web\"} 2\n"));
        assert!(text.contains("ringlb_autoscale_metric{group=\"web\"} NaN\n"));
        assert!(text.contains("decision=\"out 2 -> 3: cpu 41% > target 20\"} 1"));
    }
}
