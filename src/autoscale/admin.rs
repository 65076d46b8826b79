//! The autoscaler's own admin endpoint: `/metrics` (what it decided and
//! why), `/healthz`, and the console: `/` (the page ringlb serves too) and
//! `/console.json` (each group's counts, its metric against the policy's
//! line over the last [`POINTS`] periods, and its latest decisions).

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
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
    /// What the console shows of the group's past.
    pub(super) past: Past,
}

/// Points kept per group: one a period.
pub(super) const POINTS: usize = 180;
/// Decisions kept per group.
pub(super) const DECISIONS: usize = 50;

/// A group's past for the console: bounded, at most 180 points of 32 bytes
/// and 50 decisions a group.
#[derive(Debug, Default, Clone)]
pub(super) struct Past {
    /// The policy's lines, for the chart: the target (target tracking) or
    /// the scale-out and scale-in thresholds (step scaling).
    pub(super) lines: Vec<f64>,
    pub(super) min: u32,
    pub(super) max: u32,
    pub(super) metric: &'static str,
    pub(super) points: VecDeque<Point>,
    /// (Unix time in ms, level, what was decided and the figure that drove it).
    pub(super) decisions: VecDeque<(u64, &'static str, String)>,
}

/// The group at the end of one period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Point {
    pub(super) at_ms: u64,
    pub(super) metric: Option<f64>,
    pub(super) desired: u32,
    pub(super) in_service: u32,
}

impl Past {
    pub(super) fn point(&mut self, p: Point) {
        if self.points.len() == POINTS {
            self.points.pop_front();
        }
        self.points.push_back(p);
    }

    pub(super) fn decided(&mut self, at_ms: u64, level: &'static str, text: String) {
        if self.decisions.len() == DECISIONS {
            self.decisions.pop_front();
        }
        self.decisions.push_back((at_ms, level, text));
    }
}

/// Now, in ms since the Unix epoch.
pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) type Board = Rc<RefCell<BTreeMap<String, GroupStats>>>;

pub(super) async fn serve_admin(l: TcpListener, board: Board) {
    let started_ms = unix_ms();
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
            const TEXT: &str = "text/plain; version=0.0.4";
            let (status, kind, body) = match path {
                "/metrics" => ("200 OK", TEXT, render_metrics(&board.borrow())),
                "/healthz" => ("200 OK", TEXT, "ok\n".to_string()),
                "/" => (
                    "200 OK",
                    "text/html; charset=utf-8",
                    crate::admin::CONSOLE_PAGE.to_string(),
                ),
                "/console.json" => (
                    "200 OK",
                    "application/json",
                    console_report(&board.borrow(), started_ms).to_string() + "\n",
                ),
                _ => (
                    "404 Not Found",
                    TEXT,
                    "try /, /metrics or /healthz\n".to_string(),
                ),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ =
                tokio::time::timeout(Duration::from_secs(5), s.write_all(reply.as_bytes())).await;
        });
    }
}

/// `/console.json`: the shape the console page draws for an autoscaler
/// (`"kind": "autoscale"`).
fn console_report(board: &BTreeMap<String, GroupStats>, started_ms: u64) -> serde_json::Value {
    use serde_json::json;
    let groups: Vec<serde_json::Value> = board
        .iter()
        .map(|(name, s)| {
            let p = &s.past;
            json!({
                "name": name,
                "metric": p.metric,
                "lines": p.lines,
                "min": p.min,
                "max": p.max,
                "desired": s.desired,
                "in_service": s.in_service,
                "starting": s.starting,
                "removing": s.removing,
                "value": s.metric,
                "series": p.points.iter()
                    .map(|x| json!([x.at_ms, x.metric, x.desired, x.in_service]))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut events: Vec<(u64, &str, &String)> = board
        .values()
        .flat_map(|s| s.past.decisions.iter().map(|(at, l, t)| (*at, *l, t)))
        .collect();
    events.sort_by_key(|e| e.0);
    json!({
        "kind": "autoscale",
        "version": env!("CARGO_PKG_VERSION"),
        "now_ms": unix_ms(),
        "started_ms": started_ms,
        "points": POINTS,
        "groups": groups,
        "events": events.iter()
            .map(|(at, level, text)| json!({"at_ms": at, "level": level, "text": text}))
            .collect::<Vec<_>>(),
    })
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

    #[test]
    fn the_console_keeps_a_bounded_past_oldest_first() {
        let mut past = Past::default();
        for i in 0..(POINTS as u64 + 5) {
            past.point(Point {
                at_ms: i,
                metric: Some(i as f64),
                desired: 1,
                in_service: 1,
            });
            past.decided(i, "info", format!("decision {i}"));
        }
        assert_eq!(past.points.len(), POINTS);
        assert_eq!(past.points[0].at_ms, 5);
        assert_eq!(past.decisions.len(), DECISIONS);
        assert_eq!(
            past.decisions.back().unwrap().2,
            format!("decision {}", POINTS + 4)
        );
        let mut board = BTreeMap::new();
        board.insert(
            "web".to_string(),
            GroupStats {
                desired: 2,
                past,
                ..GroupStats::default()
            },
        );
        let c = console_report(&board, 0);
        assert_eq!(c["kind"], "autoscale");
        assert_eq!(c["groups"][0]["desired"], 2);
        assert_eq!(c["groups"][0]["series"].as_array().unwrap().len(), POINTS);
        assert_eq!(
            c["groups"][0]["series"][0],
            serde_json::json!([5, 5.0, 1, 1])
        );
        assert_eq!(c["events"].as_array().unwrap().len(), DECISIONS);
    }
}
