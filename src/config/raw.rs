//! Raw serde shapes of the config file. Every struct denies unknown keys; every
//! default is a named function so `ringlb check` and the docs agree.

use serde::Deserialize;
use toml::Spanned;

use super::duration::ConfigDuration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub target_group: Vec<RawTargetGroup>,
    #[serde(default)]
    pub admin: RawAdmin,
    pub access_log: Option<RawAccessLog>,
    #[serde(default)]
    pub discovery: RawDiscovery,
}

/// `[discovery]`: how `dns` and `srv` lines of targets files are looked up.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    /// DNS servers, "IP" or "IP:PORT"; absent: those of /etc/resolv.conf.
    pub resolvers: Option<Spanned<Vec<Spanned<String>>>>,
    pub min_ttl: Option<Spanned<ConfigDuration>>,
    pub max_ttl: Option<Spanned<ConfigDuration>>,
}

/// `[access_log]`: the connection log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// "off", "stderr", or a file path (relative to the config's folder).
    pub to: Spanned<String>,
    pub format: Option<Spanned<String>>,
    /// The fraction of connections logged, 0 < sample <= 1.
    pub sample: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    pub listen: Spanned<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: default_admin_listen(),
        }
    }
}

/// Loopback only unless the user writes otherwise.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9900";
fn default_admin_listen() -> Spanned<String> {
    unspanned(DEFAULT_ADMIN_LISTEN.to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    #[serde(default)]
    pub workers: usize,
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: ConfigDuration,
    /// `"auto"` (or `true`), `"always"`, `"never"` (or `false`).
    #[serde(default = "default_splice")]
    pub splice: Spanned<toml::Value>,
    #[serde(default = "default_pipe_size")]
    pub pipe_size: Spanned<String>,
    /// Provided buffers per worker for ring receives; 0 turns them off.
    #[serde(default = "default_ring_buffers")]
    pub ring_buffers: Spanned<i64>,
    /// Where a running ringlb offers its sockets to `ringlb run --takeover`.
    #[serde(default)]
    pub takeover_socket: Option<Spanned<String>>,
}

impl Default for RawRuntime {
    fn default() -> Self {
        RawRuntime {
            workers: 0,
            shutdown_timeout: default_shutdown_timeout(),
            splice: default_splice(),
            pipe_size: default_pipe_size(),
            ring_buffers: default_ring_buffers(),
            takeover_socket: None,
        }
    }
}

fn default_splice() -> Spanned<toml::Value> {
    unspanned(toml::Value::String("auto".into()))
}

/// Four times Linux's own: measured 12% less CPU per GB than 64 KiB and the
/// same as 1 MiB (bench/RESULTS.md); see `[runtime] pipe_size` in docs/configuration.md.
pub const DEFAULT_PIPE_SIZE: &str = "256KiB";
fn default_pipe_size() -> Spanned<String> {
    unspanned(DEFAULT_PIPE_SIZE.to_string())
}

/// 256 buffers of 16 KiB: 4 MiB of address space per worker, resident only
/// as far as receives have used it; see `[runtime] ring_buffers` in docs/configuration.md.
pub const DEFAULT_RING_BUFFERS: i64 = 256;
fn default_ring_buffers() -> Spanned<i64> {
    unspanned(DEFAULT_RING_BUFFERS)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Spanned<String>,
    pub listen: Spanned<String>,
    pub target_group: Spanned<String>,
    #[serde(default = "default_backlog")]
    pub backlog: Spanned<u32>,
    /// CIDR ranges allowed to connect; absent = everyone.
    #[serde(default)]
    pub allow: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub max_connections: Option<Spanned<u64>>,
    #[serde(default)]
    pub max_connections_per_client: Option<Spanned<u32>>,
    /// `"N/s"`.
    #[serde(default)]
    pub connection_rate_per_client: Option<Spanned<String>>,
    #[serde(default)]
    pub client_ipv6_prefix: Option<Spanned<u8>>,
    #[serde(default)]
    pub proxy_protocol: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTargetGroup {
    pub name: Spanned<String>,
    #[serde(default = "default_algorithm")]
    pub algorithm: Spanned<String>,
    #[serde(default)]
    pub hash_key: Option<Spanned<String>>,
    pub targets_file: Spanned<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Spanned<ConfigDuration>,
    #[serde(default = "default_connect_retries")]
    pub connect_retries: u32,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Spanned<ConfigDuration>,
    #[serde(default = "default_deregistration_delay")]
    pub deregistration_delay: ConfigDuration,
    /// 0 = unlimited.
    #[serde(default)]
    pub max_connections_per_target: u64,
    /// Absent or "0s": off.
    #[serde(default)]
    pub slow_start: Option<Spanned<ConfigDuration>>,
    #[serde(default)]
    pub health_check: RawHealthCheck,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(default = "default_protocol")]
    pub protocol: Spanned<String>,
    #[serde(default)]
    pub port: Option<Spanned<RawPort>>,
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    #[serde(default)]
    pub matcher: Option<Spanned<String>>,
    #[serde(default = "default_interval")]
    pub interval: Spanned<ConfigDuration>,
    #[serde(default = "default_timeout")]
    pub timeout: Spanned<ConfigDuration>,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: Spanned<u32>,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: Spanned<u32>,
    #[serde(default)]
    pub proxy_protocol: bool,
}

impl Default for RawHealthCheck {
    fn default() -> Self {
        RawHealthCheck {
            protocol: default_protocol(),
            port: None,
            path: None,
            matcher: None,
            interval: default_interval(),
            timeout: default_timeout(),
            healthy_threshold: default_healthy_threshold(),
            unhealthy_threshold: default_unhealthy_threshold(),
            proxy_protocol: false,
        }
    }
}

/// `port = "traffic-port"` or `port = 8081`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawPort {
    Number(i64),
    Text(String),
}

/// Defaults with no position in the file carry an empty span.
fn unspanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}

pub const DEFAULT_SHUTDOWN_TIMEOUT: &str = "30s";
pub const DEFAULT_BACKLOG: u32 = 4096;
pub const DEFAULT_ALGORITHM: &str = "round_robin";
pub const DEFAULT_CONNECT_TIMEOUT: &str = "2s";
pub const DEFAULT_CONNECT_RETRIES: u32 = 2;
/// The idle timeout of an AWS Network Load Balancer.
pub const DEFAULT_IDLE_TIMEOUT: &str = "350s";
/// How long a removed target's connections may continue (the AWS default).
pub const DEFAULT_DEREGISTRATION_DELAY: &str = "300s";
/// AWS target-group defaults: 30 s interval, 5 s timeout, 5 up, 2 down.
pub const DEFAULT_INTERVAL: &str = "30s";
pub const DEFAULT_TIMEOUT: &str = "5s";
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 5;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;

fn dur(text: &str) -> ConfigDuration {
    ConfigDuration(super::duration::parse_duration(text).expect("default duration parses"))
}
fn default_shutdown_timeout() -> ConfigDuration {
    dur(DEFAULT_SHUTDOWN_TIMEOUT)
}
fn default_backlog() -> Spanned<u32> {
    unspanned(DEFAULT_BACKLOG)
}
fn default_algorithm() -> Spanned<String> {
    unspanned(DEFAULT_ALGORITHM.to_string())
}
fn default_connect_timeout() -> Spanned<ConfigDuration> {
    unspanned(dur(DEFAULT_CONNECT_TIMEOUT))
}
fn default_connect_retries() -> u32 {
    DEFAULT_CONNECT_RETRIES
}
fn default_idle_timeout() -> Spanned<ConfigDuration> {
    unspanned(dur(DEFAULT_IDLE_TIMEOUT))
}
fn default_deregistration_delay() -> ConfigDuration {
    dur(DEFAULT_DEREGISTRATION_DELAY)
}
fn default_protocol() -> Spanned<String> {
    unspanned("tcp".to_string())
}
fn default_interval() -> Spanned<ConfigDuration> {
    unspanned(dur(DEFAULT_INTERVAL))
}
fn default_timeout() -> Spanned<ConfigDuration> {
    unspanned(dur(DEFAULT_TIMEOUT))
}
fn default_healthy_threshold() -> Spanned<u32> {
    unspanned(DEFAULT_HEALTHY_THRESHOLD)
}
fn default_unhealthy_threshold() -> Spanned<u32> {
    unspanned(DEFAULT_UNHEALTHY_THRESHOLD)
}
