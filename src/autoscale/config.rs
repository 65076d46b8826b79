//! `autoscale.toml`: raw serde shapes (unknown keys denied, named defaults),
//! then one validator that gives [`AutoscaleConfig`]. Errors name the file,
//! the line and the key, like ringlb's own config.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::duration::ConfigDuration;
use crate::config::{ConfigError, Source, from_toml};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAutoscale {
    /// The autoscaler's own `/metrics`; absent = none.
    #[serde(default)]
    admin: Option<Spanned<String>>,
    #[serde(default)]
    group: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Spanned<String>,
    targets_file: Spanned<String>,
    #[serde(default = "default_ringlb_admin")]
    ringlb_admin: Spanned<String>,
    min: Spanned<u32>,
    max: Spanned<u32>,
    #[serde(default = "default_host")]
    host: Spanned<String>,
    ports: Spanned<String>,
    #[serde(default)]
    exec: Option<Spanned<String>>,
    #[serde(default)]
    scale_out: Option<Spanned<String>>,
    #[serde(default)]
    scale_in: Option<Spanned<String>>,
    #[serde(default = "default_cpu_per_target")]
    cpu_per_target: Spanned<f64>,
    #[serde(default = "default_metric")]
    metric: Spanned<String>,
    #[serde(default = "default_period")]
    period: Spanned<ConfigDuration>,
    #[serde(default = "default_grace")]
    health_check_grace_period: ConfigDuration,
    #[serde(default)]
    target_tracking: Option<Spanned<RawTargetTracking>>,
    #[serde(default)]
    step_scaling: Option<Spanned<RawStepScaling>>,
}

/// AWS target tracking: its defaults are AWS's (3 one-period datapoints to
/// scale out, 15 to scale in, 300 s cooldowns).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTargetTracking {
    target: Spanned<f64>,
    #[serde(default = "default_out_periods")]
    scale_out_periods: u32,
    #[serde(default = "default_in_periods")]
    scale_in_periods: u32,
    #[serde(default = "default_cooldown")]
    scale_out_cooldown: ConfigDuration,
    #[serde(default = "default_cooldown")]
    scale_in_cooldown: ConfigDuration,
}

/// The EC2 path of the course: >= 20 for 2 periods adds 1, <= 10 for 2
/// periods removes 1, 120 s cooldown.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStepScaling {
    scale_out_threshold: Spanned<f64>,
    scale_in_threshold: Spanned<f64>,
    #[serde(default = "default_evaluation_periods")]
    evaluation_periods: u32,
    #[serde(default = "one")]
    scale_out_adjustment: u32,
    #[serde(default = "one")]
    scale_in_adjustment: u32,
    #[serde(default = "default_step_cooldown")]
    cooldown: ConfigDuration,
}

fn default_ringlb_admin() -> Spanned<String> {
    Spanned::new(0..0, crate::config::raw::DEFAULT_ADMIN_LISTEN.to_string())
}
fn default_host() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1".to_string())
}
fn default_cpu_per_target() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}
fn default_metric() -> Spanned<String> {
    Spanned::new(0..0, "cpu".to_string())
}
fn default_period() -> Spanned<ConfigDuration> {
    Spanned::new(0..0, ConfigDuration(Duration::from_secs(60)))
}
fn default_grace() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}
fn default_out_periods() -> u32 {
    3
}
fn default_in_periods() -> u32 {
    15
}
fn default_cooldown() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}
fn default_evaluation_periods() -> u32 {
    2
}
fn one() -> u32 {
    1
}
fn default_step_cooldown() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(120))
}

#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleConfig {
    pub admin: Option<SocketAddr>,
    pub groups: Vec<GroupConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    pub name: String,
    pub targets_file: PathBuf,
    pub ringlb_admin: SocketAddr,
    pub min: u32,
    pub max: u32,
    pub host: IpAddr,
    pub ports: RangeInclusive<u16>,
    pub launcher: Launcher,
    pub cpu_per_target: f64,
    pub metric: Metric,
    pub period: Duration,
    pub health_check_grace_period: Duration,
    pub policy: Policy,
}

/// How targets come and go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launcher {
    /// The autoscaler runs this command (`{port}` filled in) and stops the
    /// process with SIGTERM.
    Exec(String),
    /// Commands for servers another supervisor runs (systemd, say).
    Hooks { scale_out: String, scale_in: String },
}

/// What the policy tracks, per target in service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Average CPU of the targets' processes, percent of `cpu_per_target` cores.
    Cpu,
    /// Connections open now, per target (ringlb's `/metrics`).
    ActiveConnections,
    /// New connections per second, per target (ringlb's `/metrics`).
    NewConnectionsPerSecond,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Cpu => "cpu",
            Metric::ActiveConnections => "active_connections",
            Metric::NewConnectionsPerSecond => "new_connections_per_second",
        }
    }

    /// How a figure of this metric reads in a log line.
    pub fn show(self, value: f64) -> String {
        match self {
            Metric::Cpu => format!("cpu {value:.0}%"),
            _ => format!("{} {value:.1}", self.name()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    TargetTracking {
        target: f64,
        scale_out_periods: u32,
        scale_in_periods: u32,
        scale_out_cooldown: Duration,
        scale_in_cooldown: Duration,
    },
    Step {
        scale_out_threshold: f64,
        scale_in_threshold: f64,
        evaluation_periods: u32,
        scale_out_adjustment: u32,
        scale_in_adjustment: u32,
        cooldown: Duration,
    },
}

pub fn load(path: &Path) -> Result<AutoscaleConfig, ConfigError> {
    let text =
        crate::files::read_regular(path, 1 << 20, "autoscale config").map_err(|message| {
            ConfigError::Read {
                file: path.to_path_buf(),
                message,
            }
        })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<AutoscaleConfig, ConfigError> {
    let raw: RawAutoscale = from_toml(path, text)?;
    let at = Parser {
        src: Source { file: path, text },
    };
    let admin = match &raw.admin {
        Some(a) => Some(a.get_ref().parse().map_err(|e| {
            at.src
                .error(a.span(), "admin".into(), format!("{:?}: {e}", a.get_ref()))
        })?),
        None => None,
    };
    if raw.group.is_empty() {
        return Err(at
            .src
            .error(0..0, "group".into(), "no [[group]] is configured".into()));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut groups: Vec<GroupConfig> = Vec::new();
    for (i, g) in raw.group.iter().enumerate() {
        let group = at.group(i, g, base)?;
        if let Some(other) = groups.iter().find(|o| {
            o.targets_file == group.targets_file
                || (o.host == group.host
                    && o.ports.start() <= group.ports.end()
                    && group.ports.start() <= o.ports.end())
        }) {
            return Err(at.src.error(
                g.name.span(),
                format!("group[{i}].name"),
                format!(
                    "shares its targets file or ports with group {:?}: each group owns its own",
                    other.name
                ),
            ));
        }
        groups.push(group);
    }
    Ok(AutoscaleConfig { admin, groups })
}

/// The autoscaler's config file being validated.
struct Parser<'a> {
    src: Source<'a>,
}

impl Parser<'_> {
    /// `[[group]]` number `i`; paths are relative to `base`.
    fn group(&self, i: usize, g: &RawGroup, base: &Path) -> Result<GroupConfig, ConfigError> {
        let key = |k: &str| format!("group[{i}].{k}");
        let name = g.name.get_ref().clone();
        if name.is_empty() {
            return Err(self
                .src
                .error(g.name.span(), key("name"), "must not be empty".into()));
        }
        let ringlb_admin: SocketAddr = g.ringlb_admin.get_ref().parse().map_err(|e| {
            self.src.error(
                g.ringlb_admin.span(),
                key("ringlb_admin"),
                format!("{:?} is not an IP:PORT: {e}", g.ringlb_admin.get_ref()),
            )
        })?;
        let host: IpAddr = g.host.get_ref().parse().map_err(|e| {
            self.src.error(
                g.host.span(),
                key("host"),
                format!("{:?} is not an IP address: {e}", g.host.get_ref()),
            )
        })?;
        let ports = parse_ports(g.ports.get_ref())
            .map_err(|m| self.src.error(g.ports.span(), key("ports"), m))?;
        let (min, max) = (*g.min.get_ref(), *g.max.get_ref());
        let room = u32::from(*ports.end() - *ports.start()) + 1;
        let bad_size = if max == 0 {
            Some((g.max.span(), "max", "must be at least 1".to_string()))
        } else if min > max {
            Some((g.min.span(), "min", format!("min {min} is above max {max}")))
        } else if max > room {
            let ports = g.ports.get_ref();
            let m = format!("max {max} needs more ports than ports {ports:?} has ({room})");
            Some((g.max.span(), "max", m))
        } else {
            None
        };
        if let Some((span, k, message)) = bad_size {
            return Err(self.src.error(span, key(k), message));
        }
        let cpu_per_target = *g.cpu_per_target.get_ref();
        if cpu_per_target.is_nan() || cpu_per_target <= 0.0 || cpu_per_target > 1024.0 {
            return Err(self.src.error(
                g.cpu_per_target.span(),
                key("cpu_per_target"),
                "must be a number of cores above 0".into(),
            ));
        }
        let period = g.period.get_ref().0;
        if period < Duration::from_millis(100) {
            return Err(self.src.error(
                g.period.span(),
                key("period"),
                "must be at least 100ms".into(),
            ));
        }
        Ok(GroupConfig {
            name,
            targets_file: base.join(g.targets_file.get_ref()),
            ringlb_admin,
            min,
            max,
            host,
            ports,
            launcher: self.launcher(g, &key)?,
            cpu_per_target,
            metric: self.metric(g, &key)?,
            period,
            health_check_grace_period: g.health_check_grace_period.0,
            policy: self.policy(g, &key)?,
        })
    }

    /// `exec`, or `scale_out` with `scale_in`.
    fn launcher(
        &self,
        g: &RawGroup,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Launcher, ConfigError> {
        match (&g.exec, &g.scale_out, &g.scale_in) {
            (Some(exec), None, None) => {
                needs_port(exec).map_err(|m| self.src.error(exec.span(), key("exec"), m))?;
                Ok(Launcher::Exec(exec.get_ref().clone()))
            }
            (None, Some(out), Some(inn)) => {
                needs_port(out).map_err(|m| self.src.error(out.span(), key("scale_out"), m))?;
                needs_port(inn).map_err(|m| self.src.error(inn.span(), key("scale_in"), m))?;
                Ok(Launcher::Hooks {
                    scale_out: out.get_ref().clone(),
                    scale_in: inn.get_ref().clone(),
                })
            }
            _ => Err(self.src.error(
                g.name.span(),
                key("exec"),
                "write either exec = \"...{port}...\" or both scale_out and scale_in".into(),
            )),
        }
    }

    fn metric(&self, g: &RawGroup, key: &dyn Fn(&str) -> String) -> Result<Metric, ConfigError> {
        match g.metric.get_ref().as_str() {
            "cpu" => Ok(Metric::Cpu),
            "active_connections" => Ok(Metric::ActiveConnections),
            "new_connections_per_second" => Ok(Metric::NewConnectionsPerSecond),
            other => Err(self.src.error(
                g.metric.span(),
                key("metric"),
                format!(
                    "unknown metric {other:?}: use \"cpu\", \"active_connections\" or \"new_connections_per_second\""
                ),
            )),
        }
    }

    /// Exactly one of `[group.target_tracking]` and `[group.step_scaling]`.
    fn policy(&self, g: &RawGroup, key: &dyn Fn(&str) -> String) -> Result<Policy, ConfigError> {
        match (&g.target_tracking, &g.step_scaling) {
            (Some(t), None) => {
                let tt = t.get_ref();
                if tt.target.get_ref().is_nan() || *tt.target.get_ref() <= 0.0 {
                    return Err(self.src.error(
                        tt.target.span(),
                        key("target_tracking.target"),
                        "must be above 0".into(),
                    ));
                }
                if tt.scale_out_periods == 0 || tt.scale_in_periods == 0 {
                    return Err(self.src.error(
                        t.span(),
                        key("target_tracking"),
                        "scale_out_periods and scale_in_periods must be at least 1".into(),
                    ));
                }
                Ok(Policy::TargetTracking {
                    target: *tt.target.get_ref(),
                    scale_out_periods: tt.scale_out_periods,
                    scale_in_periods: tt.scale_in_periods,
                    scale_out_cooldown: tt.scale_out_cooldown.0,
                    scale_in_cooldown: tt.scale_in_cooldown.0,
                })
            }
            (None, Some(s)) => {
                let st = s.get_ref();
                let (out, inn) = (
                    *st.scale_out_threshold.get_ref(),
                    *st.scale_in_threshold.get_ref(),
                );
                if inn.is_nan() || out.is_nan() || inn >= out {
                    return Err(self.src.error(
                        st.scale_in_threshold.span(),
                        key("step_scaling.scale_in_threshold"),
                        format!("must be below scale_out_threshold ({out})"),
                    ));
                }
                if st.evaluation_periods == 0
                    || st.scale_out_adjustment == 0
                    || st.scale_in_adjustment == 0
                {
                    return Err(self.src.error(
                        s.span(),
                        key("step_scaling"),
                        "evaluation_periods and the adjustments must be at least 1".into(),
                    ));
                }
                Ok(Policy::Step {
                    scale_out_threshold: out,
                    scale_in_threshold: inn,
                    evaluation_periods: st.evaluation_periods,
                    scale_out_adjustment: st.scale_out_adjustment,
                    scale_in_adjustment: st.scale_in_adjustment,
                    cooldown: st.cooldown.0,
                })
            }
            _ => Err(self.src.error(
                g.name.span(),
                key("target_tracking"),
                "write exactly one of [group.target_tracking] and [group.step_scaling]".into(),
            )),
        }
    }
}

/// "6400-6409" or "6400".
fn parse_ports(text: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || format!("{text:?}: write a port range such as \"6400-6409\"");
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

fn needs_port(cmd: &Spanned<String>) -> Result<(), String> {
    if cmd.get_ref().contains("{port}") {
        Ok(())
    } else {
        Err(format!(
            "{:?} has no {{port}}: each target needs its own port",
            cmd.get_ref()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
admin = "127.0.0.1:9901"

[[group]]
name = "web"
targets_file = "targets/web.txt"
min = 1
max = 4
ports = "6400-6409"
exec = "demo-backend --port {port}"

[group.target_tracking]
target = 20
"#;

    #[test]
    fn a_good_file_gets_aws_defaults() {
        let c = parse(Path::new("/etc/ringlb/autoscale.toml"), GOOD).unwrap();
        let g = &c.groups[0];
        assert_eq!(g.targets_file, Path::new("/etc/ringlb/targets/web.txt"));
        assert_eq!(g.ports, 6400..=6409);
        assert_eq!(g.metric, Metric::Cpu);
        assert_eq!(
            g.policy,
            Policy::TargetTracking {
                target: 20.0,
                scale_out_periods: 3,
                scale_in_periods: 15,
                scale_out_cooldown: Duration::from_secs(300),
                scale_in_cooldown: Duration::from_secs(300),
            }
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases = [
            (
                GOOD.replace("max = 4", "max = 40"),
                8,
                "group[0].max",
                "more ports",
            ),
            (
                GOOD.replace("min = 1", "min = 5"),
                7,
                "group[0].min",
                "above max",
            ),
            (
                GOOD.replace("--port {port}", "--port 1"),
                10,
                "group[0].exec",
                "{port}",
            ),
            (
                GOOD.replace("target = 20", "target = 0"),
                13,
                "group[0].target_tracking.target",
                "above 0",
            ),
            (
                GOOD.replace("ports = \"6400-6409\"", "ports = \"6409-6400\""),
                9,
                "group[0].ports",
                "port range",
            ),
            (
                GOOD.replace("min = 1", "min = 1\nspeed = 3"),
                8,
                "group[0].speed",
                "unknown field",
            ),
            (
                GOOD.replace("[group.target_tracking]\ntarget = 20", ""),
                5,
                "group[0].target_tracking",
                "exactly one",
            ),
            (
                GOOD.replace("admin = \"127.0.0.1:9901\"", "admin = \"nine\""),
                2,
                "admin",
                "nine",
            ),
        ];
        for (text, line, key, says) in cases {
            let e = parse(Path::new("a.toml"), &text).unwrap_err();
            let ConfigError::Invalid {
                line: l,
                key: k,
                message,
                ..
            } = &e
            else {
                panic!("{e}");
            };
            assert_eq!((*l, k.as_str()), (line, key), "{e}");
            assert!(e.to_string().starts_with(&format!("a.toml:{line}:")), "{e}");
            assert!(message.contains(says), "{e}");
        }
    }

    #[test]
    fn step_scaling_thresholds_must_leave_a_gap() {
        let text = GOOD.replace(
            "[group.target_tracking]\ntarget = 20",
            "[group.step_scaling]\nscale_out_threshold = 20\nscale_in_threshold = 20",
        );
        let e = parse(Path::new("a.toml"), &text).unwrap_err().to_string();
        assert!(
            e.contains("scale_in_threshold") && e.contains("below"),
            "{e}"
        );
    }
}
