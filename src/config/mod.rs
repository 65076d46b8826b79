//! Configuration: raw serde structs ([`raw`]) checked by one validator into the
//! domain [`Config`]. The same `load` runs at start-up, on reload and in
//! `ringlb check`. Every error names the file, the key and the line.

pub mod duration;
pub mod raw;
mod validate;
mod words;

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::choices::{Algorithm, HashKey, LogFormat, ProxyProtocol, Splice};
pub use duration::{ConfigDuration, parse_duration};
use raw::RawConfig;
use toml::Spanned;
use validate::Validator;
pub use words::{parse_matcher, parse_pipe_size, parse_ring_buffers, parse_splice};

/// Largest config file ringlb reads.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Longest listener or target group name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Largest `connect_retries`: each retry costs a client up to `connect_timeout`.
pub const MAX_CONNECT_RETRIES: u32 = 10;
/// The most `connection_rate_per_client` may say, per second.
pub const MAX_CLIENT_RATE: u32 = 1_000_000;
/// `slow_start`'s range when on, as on AWS.
pub const SLOW_START_MIN: Duration = Duration::from_secs(30);
pub const SLOW_START_MAX: Duration = Duration::from_secs(900);

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub file: PathBuf,
    pub runtime: RuntimeConfig,
    pub listeners: Vec<ListenerConfig>,
    pub groups: Vec<GroupConfig>,
    /// Where the admin HTTP endpoint (metrics, targets, healthz) listens.
    pub admin: SocketAddr,
    /// `[access_log]`; `None`: off.
    pub access_log: Option<AccessLogConfig>,
    /// `[discovery]`: how names in targets files are looked up.
    pub discovery: DiscoveryConfig,
}

/// `[discovery]`: the DNS servers asked for `dns` and `srv` lines, and the
/// bounds on how long an answer is kept before it is asked again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// `None`: the servers /etc/resolv.conf names.
    pub resolvers: Option<Vec<SocketAddr>>,
    /// An answer is asked again no sooner than this after it came.
    pub min_ttl: Duration,
    /// ... and no later than this, whatever its TTL says.
    pub max_ttl: Duration,
}

/// `[discovery] min_ttl` by default: Consul answers with a TTL of 0.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(5);
/// `[discovery] max_ttl` by default.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(300);
/// The shortest `min_ttl` allowed: a lookup a second per name at most.
pub const MIN_MIN_TTL: Duration = Duration::from_secs(1);

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            resolvers: None,
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
        }
    }
}

/// The connection log's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    pub to: LogTo,
    pub format: LogFormat,
    /// One connection in this many is logged.
    pub every: u32,
}

/// Where connection log lines go.
#[derive(Debug, Clone, PartialEq)]
pub enum LogTo {
    /// ringlb's stderr (the journal under systemd).
    Stderr,
    /// A file of its own.
    File(PathSetting),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// 0 = one worker per CPU the process may run on.
    pub workers: usize,
    pub shutdown_timeout: Duration,
    /// When bytes move with splice(2) through pipes rather than by copy.
    pub splice: Splice,
    /// Bytes each pipe is asked to hold (`F_SETPIPE_SZ`).
    pub pipe_size: usize,
    /// Provided buffers per worker that ring receives fill (0: receive by
    /// poll and recv(2)).
    pub ring_buffers: u16,
    /// The Unix socket a new process takes the listening sockets over from
    /// (relative to the config file's folder).
    pub takeover_socket: Option<PathSetting>,
}

/// A path the config names (resolved against the config's folder), and the
/// line and column it was written at: what the file system says of it
/// (checked by [`crate::load`] at start, in `check` and on SIGHUP) is an
/// error that points there.
#[derive(Debug, Clone, PartialEq)]
pub struct PathSetting {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl PathSetting {
    /// An error about this setting, `key`, at its place in `file`.
    pub fn error(&self, file: &Path, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: file.to_path_buf(),
            line: self.line,
            column: self.column,
            key: key.into(),
            message,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub addr: SocketAddr,
    /// Index into [`Config::groups`].
    pub group: usize,
    pub backlog: u32,
    /// Clients allowed in; `None` = everyone. IPv4-mapped IPv6 clients match
    /// IPv4 ranges.
    pub allow: Option<Vec<ipnet::IpNet>>,
    /// Open connections beyond which new clients are closed at once, across
    /// all workers; `None` = unlimited.
    pub max_connections: Option<u64>,
    /// Per-client limits (`max_connections_per_client`,
    /// `connection_rate_per_client`, `client_ipv6_prefix`).
    pub client_limits: crate::client_limits::Limits,
    pub proxy_protocol: ProxyProtocol,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    pub name: String,
    pub algorithm: Algorithm,
    /// The algorithm as the config names it (`weighted_least_connections`
    /// and `least_connections` are one algorithm under two names).
    pub algorithm_name: &'static str,
    /// Absolute, or relative to the working directory when the config path was.
    pub targets_file: PathBuf,
    pub connect_timeout: Duration,
    pub connect_retries: u32,
    pub idle_timeout: Duration,
    /// How long connections to a removed target may continue; 0 closes them at once.
    pub deregistration_delay: Duration,
    /// A target with this many open connections is skipped like a not-ready
    /// one; `None` = unlimited (written 0 in the file).
    pub max_connections_per_target: Option<u64>,
    /// A target entering service ramps up to its weight over this long;
    /// `None`: off.
    pub slow_start: Option<Duration>,
    pub health: HealthCheckConfig,
}

impl GroupConfig {
    /// The algorithm in the config's words: `round_robin`, or `maglev
    /// (hash_key source_ip)`.
    pub fn algorithm_label(&self) -> String {
        match self.algorithm {
            Algorithm::Maglev(key) => format!("{} (hash_key {})", self.algorithm_name, key.name()),
            _ => self.algorithm_name.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthProtocol {
    Tcp,
    Http,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub protocol: HealthProtocol,
    /// `None` = the traffic port of each target.
    pub port: Option<u16>,
    pub path: String,
    /// Inclusive status ranges that count as healthy.
    pub matcher: Vec<(u16, u16)>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Send a PROXY v2 header (command LOCAL) before each probe.
    pub proxy_protocol: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Read { file: PathBuf, message: String },
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = crate::files::read_regular(path, MAX_FILE_BYTES, "config").map_err(|message| {
        ConfigError::Read {
            file: path.to_path_buf(),
            message,
        }
    })?;
    parse(path, &text)
}

/// Validates config text as if read from `path` (used for messages and to
/// resolve relative `targets_file` paths).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = from_toml(path, text)?;
    Validator {
        src: Source { file: path, text },
    }
    .validate(raw)
}

/// Deserializes TOML read from `path` into a raw serde shape; errors name the
/// file, line, column and key (`ringlb autoscale` uses it for its own file).
pub fn from_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    let toml_error = |key: &str, e: toml::de::Error| {
        let key = if key.is_empty() || key == "." {
            "(syntax)"
        } else {
            key
        };
        let message = e.message().trim_end().to_string();
        error_at(path, text, e.span().unwrap_or(0..0), key, message)
    };
    let de = toml::de::Deserializer::parse(text).map_err(|e| toml_error("", e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // toml::Spanned shows up in the path as a private field: hide it.
        let key = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        toml_error(&key, e.into_inner())
    })
}

/// An error about `key` at byte `span` of `text`, the content of `file`.
pub fn error_at(
    file: &Path,
    text: &str,
    span: Range<usize>,
    key: impl Into<String>,
    message: impl Into<String>,
) -> ConfigError {
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    ConfigError::Invalid {
        file: file.to_path_buf(),
        line,
        column,
        key: key.into(),
        message: message.into(),
    }
}

/// A config file being validated: where its errors point.
pub struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// An error about `key` at byte `span`.
    pub fn error(&self, span: Range<usize>, key: String, message: String) -> ConfigError {
        error_at(self.file, self.text, span, key, message)
    }

    /// An error at `spanned`, or at `fallback` when `spanned` is a default with no
    /// place in the file.
    pub fn at<T>(
        &self,
        spanned: &Spanned<T>,
        fallback: Range<usize>,
        key: String,
        message: String,
    ) -> ConfigError {
        let span = spanned.span();
        let span = if span.is_empty() { fallback } else { span };
        self.error(span, key, message)
    }
}

#[cfg(test)]
mod tests;
