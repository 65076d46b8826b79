//! The config's words and the small parsers of its values: the closed lists
//! of words a key takes (algorithms, hash keys, protocols), CIDR ranges,
//! `splice`, sizes, buffer counts, status matchers.

use super::{Algorithm, HashKey, HealthProtocol, LogFormat, ProxyProtocol, Splice};
use crate::files::quoted;

/// `[access_log] format` words.
pub(super) const LOG_FORMATS: &[(&str, LogFormat)] =
    &[("text", LogFormat::Text), ("json", LogFormat::Json)];

/// `algorithm` words. Maglev's hash key comes from `hash_key`.
pub(super) const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("round_robin", Algorithm::RoundRobin),
    ("least_connections", Algorithm::LeastConnections),
    ("weighted_least_connections", Algorithm::LeastConnections),
    ("maglev", Algorithm::Maglev(HashKey::SourceIpPort)),
];
pub(super) const HASH_KEYS: &[(&str, HashKey)] = &[
    ("source_ip_port", HashKey::SourceIpPort),
    ("source_ip", HashKey::SourceIp),
];
pub(super) const PROTOCOLS: &[(&str, HealthProtocol)] =
    &[("tcp", HealthProtocol::Tcp), ("http", HealthProtocol::Http)];
pub(super) const PROXY_PROTOCOLS: &[(&str, ProxyProtocol)] = &[
    ("off", ProxyProtocol::Off),
    ("v1", ProxyProtocol::V1),
    ("v2", ProxyProtocol::V2),
];

/// A CIDR range, or one address as a range of one.
pub(super) fn parse_cidr(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .ok()
}

/// `[runtime] splice`: "auto" (or true), "always", "never" (or false).
pub fn parse_splice(value: &toml::Value) -> Result<Splice, String> {
    match value {
        toml::Value::Boolean(true) => Ok(Splice::Auto),
        toml::Value::Boolean(false) => Ok(Splice::Never),
        toml::Value::String(s) if s == "auto" => Ok(Splice::Auto),
        toml::Value::String(s) if s == "always" => Ok(Splice::Always),
        toml::Value::String(s) if s == "never" => Ok(Splice::Never),
        other => Err(format!(
            "invalid value {other}: write \"auto\" (small exchanges copy, bulk splices), \"always\" or \"never\""
        )),
    }
}

/// `[runtime] pipe_size`: "64KiB" to "1MiB" (Linux's default pipe size up
/// to the largest an unprivileged process may ask for, `fs.pipe-max-size`).
pub fn parse_pipe_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let hint = "write a size from \"64KiB\" to \"1MiB\", e.g. \"256KiB\"";
    let n: usize = digits
        .parse()
        .map_err(|_| format!("invalid size {}: {hint}", quoted(text)))?;
    let bytes = match unit {
        "KiB" => n.checked_mul(1024),
        "MiB" => n.checked_mul(1024 * 1024),
        _ => return Err(format!("invalid size {}: {hint}", quoted(text))),
    };
    match bytes {
        Some(b) if (64 * 1024..=1024 * 1024).contains(&b) => Ok(b),
        _ => Err(format!(
            "pipe size {} is out of range: {hint}",
            quoted(text)
        )),
    }
}

/// `[runtime] ring_buffers`: 0, or a power of two up to 32768 (what the
/// kernel takes for one provided-buffer ring).
pub fn parse_ring_buffers(n: i64) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(n) if n == 0 || (n.is_power_of_two() && n <= 1 << 15) => Ok(n),
        _ => Err(format!(
            "invalid value {n}: write 0 (receive by system call) or a power of two from 1 to 32768, e.g. 256"
        )),
    }
}

/// Parses an HTTP matcher: "200", "200-399", "200,204,300-399".
pub fn parse_matcher(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let code = |s: &str| -> Result<u16, String> {
            match s.trim().parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                _ => Err(format!(
                    "{} is not a status code 100-599 or a range like \"200-399\"",
                    quoted(part)
                )),
            }
        };
        let (lo, hi) = (code(lo)?, code(hi)?);
        if lo > hi {
            return Err(format!("range {} runs backwards", quoted(part)));
        }
        out.push((lo, hi));
    }
    Ok(out)
}
