//! The targets file: the autoscaler's interface.
//!
//! One target per line, `HOST:PORT` optionally followed by `weight=N`; `#` starts
//! a comment; blank lines are ignored; IPv6 is written `[::1]:6400`. A line
//! may instead name a DNS source whose answers are targets, followed as
//! they change ([`crate::discovery`]): `dns NAME:PORT [weight=N]` (every
//! A and AAAA address of NAME) or `srv NAME` (its SRV records' hosts, ports
//! and weights). The parser is pure (text in, a [`Listing`] or an error
//! with the line out); reading the file and resolving the host names of
//! plain lines once are the only I/O, in [`load`].

pub mod watch;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::files;

/// Largest weight a target may have. Weights are relative, so this only bounds
/// the size of the schedules built from them.
pub const MAX_WEIGHT: u32 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub weight: u32,
}

/// A DNS source a targets file names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Query {
    /// `dns NAME:PORT`: every A and AAAA address of `host`, on `port`.
    Dns { host: String, port: u16 },
    /// `srv NAME`: the SRV records of `name` (host, port, weight).
    Srv { name: String },
}

impl std::fmt::Display for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Query::Dns { host, port } => write!(f, "dns {host}:{port}"),
            Query::Srv { name } => write!(f, "srv {name}"),
        }
    }
}

/// A line of a targets file that names a DNS source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// 1-based line it is on.
    pub line: usize,
    pub query: Query,
    /// `weight=N` of a `dns` line, for each of its addresses; `None` for
    /// `srv`, whose records carry their own.
    pub weight: Option<u32>,
}

/// What a targets file lists: targets by address, and DNS sources.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing {
    pub targets: Vec<Target>,
    pub names: Vec<Named>,
}

impl Listing {
    /// A listing of these targets and no names.
    pub fn of(targets: Vec<Target>) -> Listing {
        Listing {
            targets,
            names: Vec::new(),
        }
    }

    /// Whether it lists nothing at all.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty() && self.names.is_empty()
    }

    /// Whether `other` lists the same targets and sources with the same
    /// weights, in any order and on any lines.
    pub fn same_as(&self, other: &Listing) -> bool {
        fn names(l: &Listing) -> Vec<(&Query, Option<u32>)> {
            let mut n: Vec<(&Query, Option<u32>)> =
                l.names.iter().map(|n| (&n.query, n.weight)).collect();
            n.sort_unstable();
            n
        }
        same_set(&self.targets, &other.targets) && names(self) == names(other)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetsError {
    pub file: PathBuf,
    /// 1-based line; 0 when the error is about the whole file (it cannot be read).
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for TargetsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file.display(), self.message),
            n => write!(f, "{}:{n}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for TargetsError {}

/// Largest targets file ringlb reads (a million targets fit in far less).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// How long a host name in a targets file may take to resolve.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads and checks a targets file by the one rule set ([`parse_checked`]).
/// `in_service` is the set currently applied from this file, if any (a
/// SIGHUP has one; start-up and `check` do not). Returns the text read
/// (what the watcher will compare against) and its targets.
///
/// A file of 0 bytes while targets serve from it is most likely being
/// rewritten in place (truncated, then written): the set in service is
/// kept, and the watcher applies the empty file only if it stays so
/// ([`watch::EMPTY_GRACE`]).
pub fn load(path: &Path, in_service: Option<&Listing>) -> Result<(String, Listing), TargetsError> {
    let text = read(path)?;
    if let Some(serving) = in_service
        && text.is_empty()
        && !serving.is_empty()
    {
        return Ok((text, serving.clone()));
    }
    let targets =
        parse_checked(&text, in_service, resolve).map_err(|(line, message)| TargetsError {
            file: path.to_path_buf(),
            line,
            message,
        })?;
    Ok((text, targets))
}

/// Reads a targets file without ever blocking the caller on what is at the
/// path: only a regular file of at most [`MAX_FILE_BYTES`] is read (a FIFO,
/// a device such as /dev/zero, or a folder is an error).
pub fn read(path: &Path) -> Result<String, TargetsError> {
    files::read_regular(path, MAX_FILE_BYTES, "targets file").map_err(|message| TargetsError {
        file: path.to_path_buf(),
        line: 0,
        message,
    })
}

/// The one rule set for a targets file, the same at start-up, in `ringlb
/// check`, on SIGHUP and when the file changes under a running ringlb: every
/// line must parse, and content that changes the set in service
/// (`in_service`, when there is one) must end with a newline, since a file
/// caught mid-write usually does not. A set that only lost its final
/// newline (some editors drop it) is no change and is not refused. An empty
/// set is allowed (the caller warns: its group's clients are closed until
/// targets come).
pub fn parse_checked(
    text: &str,
    in_service: Option<&Listing>,
    resolve: impl Fn(&str) -> Result<SocketAddr, String>,
) -> Result<Listing, (usize, String)> {
    let parsed = parse(text, resolve);
    let (Some(serving), false) = (in_service, text.is_empty() || text.ends_with('\n')) else {
        return parsed;
    };
    match parsed {
        Ok(t) if t.same_as(serving) => Ok(t),
        _ => Err((
            text.lines().count(),
            "last line has no newline: the file looks half-written (write a temp file and rename it)"
                .into(),
        )),
    }
}

/// Whether two lists name the same targets with the same weights, in any order.
pub fn same_set(a: &[Target], b: &[Target]) -> bool {
    let key = |t: &[Target]| {
        let mut k: Vec<(SocketAddr, u32)> = t.iter().map(|t| (t.addr, t.weight)).collect();
        k.sort_unstable();
        k
    };
    a.len() == b.len() && key(a) == key(b)
}

/// Resolves `HOST:PORT` where HOST is a name (e.g. `localhost`): first address.
/// A resolver that does not answer within [`RESOLVE_TIMEOUT`] is an error; the
/// lookup runs on a thread of its own so the caller never waits longer.
pub(crate) fn resolve(host_port: &str) -> Result<SocketAddr, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host_port.to_string();
    let spawned = std::thread::Builder::new()
        .name("ringlb-resolve".into())
        .spawn(move || {
            let result = name
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {}: {e}", quote(&name)))
                .and_then(|mut addrs| {
                    addrs
                        .next()
                        .ok_or_else(|| format!("{} resolves to no address", quote(&name)))
                });
            // The caller may have given up waiting; then nobody needs the answer.
            let _caller_gone = tx.send(result);
        });
    if let Err(e) = spawned {
        return Err(format!(
            "cannot resolve {}: no thread for the lookup: {e}",
            quote(host_port)
        ));
    }
    rx.recv_timeout(RESOLVE_TIMEOUT).unwrap_or_else(|_| {
        Err(format!(
            "cannot resolve {}: no answer within {RESOLVE_TIMEOUT:?}",
            quote(host_port)
        ))
    })
}

/// Parses targets text. `resolve` is called only for host names of plain
/// `HOST:PORT` lines, never for `dns` and `srv` lines. Errors are
/// `(line, message)`.
pub fn parse(
    text: &str,
    resolve: impl Fn(&str) -> Result<SocketAddr, String>,
) -> Result<Listing, (usize, String)> {
    let mut out = Listing::default();
    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    let mut seen_names: HashMap<Query, usize> = HashMap::new();
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let first_word = line.split_whitespace().next().unwrap_or_default();
        if let Some(kind) = [DNS, SRV].into_iter().find(|k| *k == first_word) {
            let rest = line[kind.len()..].trim_start();
            let named = parse_named(kind, rest, line_no).map_err(|m| (line_no, m))?;
            if let Some(first) = seen_names.insert(named.query.clone(), line_no) {
                return Err((
                    line_no,
                    format!("duplicate source {} (first on line {first})", named.query),
                ));
            }
            out.names.push(named);
            continue;
        }
        let mut words = line.split_whitespace();
        let host_port = words.next().unwrap_or_default();
        let addr = parse_addr(host_port, &resolve).map_err(|m| (line_no, m))?;
        let weight = parse_weight(words, "the address").map_err(|m| (line_no, m))?;
        if let Some(first) = seen.insert(addr, line_no) {
            return Err((
                line_no,
                format!("duplicate target {addr} (first on line {first})"),
            ));
        }
        out.targets.push(Target {
            addr,
            weight: weight.unwrap_or(1),
        });
    }
    Ok(out)
}

/// The words that start a line naming a DNS source.
const DNS: &str = "dns";
const SRV: &str = "srv";

/// The rest of a `dns` or `srv` line, after its first word.
fn parse_named(kind: &str, rest: &str, line: usize) -> Result<Named, String> {
    let mut words = rest.split_whitespace();
    let Some(name) = words.next() else {
        return Err(match kind {
            DNS => "`dns` needs a name and a port: dns todo.service.consul:6400".into(),
            _ => "`srv` needs a name: srv _todo._tcp.service.consul".into(),
        });
    };
    if kind == SRV {
        check_dns_name(name)?;
        if let Some(word) = words.next() {
            return Err(format!(
                "unexpected {} after the SRV name: SRV records carry their own ports and weights",
                quote(word)
            ));
        }
        return Ok(Named {
            line,
            query: Query::Srv {
                name: name.to_ascii_lowercase(),
            },
            weight: None,
        });
    }
    if name.parse::<SocketAddr>().is_ok() {
        return Err(format!(
            "{} is an address, not a name to look up: write it without `dns`",
            quote(name)
        ));
    }
    let Some((host, port)) = name.rsplit_once(':') else {
        return Err(format!(
            "{} has no port: write NAME:PORT, e.g. todo.service.consul:6400",
            quote(name)
        ));
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(format!(
                "{} is not NAME:PORT with a port 1-65535",
                quote(name)
            ));
        }
    };
    check_dns_name(host)?;
    let weight = parse_weight(words, "the name")?;
    Ok(Named {
        line,
        query: Query::Dns {
            host: host.to_ascii_lowercase(),
            port,
        },
        weight: Some(weight.unwrap_or(1)),
    })
}

/// A name DNS could hold: letters, digits, `-`, `_` (SRV labels) and dots.
fn check_dns_name(name: &str) -> Result<(), String> {
    let labels_ok = name
        .trim_end_matches('.')
        .split('.')
        .all(|l| !l.is_empty() && l.len() <= 63);
    if name.len() > MAX_HOST_NAME
        || !labels_ok
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!("{} is not a DNS name", quote(name)));
    }
    Ok(())
}

/// `weight=N` (optional) and nothing else, after `what`.
fn parse_weight<'a>(
    words: impl Iterator<Item = &'a str>,
    what: &str,
) -> Result<Option<u32>, String> {
    let mut weight = None;
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(format!(
                "unexpected {} after {what}: only `weight=N` may follow",
                quote(word)
            ));
        };
        if key != "weight" {
            return Err(format!(
                "unknown key {}: only `weight=N` is allowed",
                quote(key)
            ));
        }
        if weight.is_some() {
            return Err("weight given twice".to_string());
        }
        let n: u32 = value.parse().map_err(|_| {
            format!(
                "weight {} is not a whole number (1..={MAX_WEIGHT})",
                quote(value)
            )
        })?;
        if n == 0 || n > MAX_WEIGHT {
            return Err(format!(
                "weight {n} is out of range 1..={MAX_WEIGHT} (remove the line to take a target out)"
            ));
        }
        weight = Some(n);
    }
    Ok(weight)
}

/// The longest host name DNS allows.
const MAX_HOST_NAME: usize = 253;

use files::quoted as quote;

fn parse_addr(
    host_port: &str,
    resolve: &impl Fn(&str) -> Result<SocketAddr, String>,
) -> Result<SocketAddr, String> {
    if let Ok(addr) = host_port.parse::<SocketAddr>() {
        return check_port(addr, host_port);
    }
    if let Some(hint) = common_mistake(host_port) {
        return Err(format!("{} is not HOST:PORT: {hint}", quote(host_port)));
    }
    let Some((host, port)) = host_port.rsplit_once(':') else {
        return Err(format!(
            "{} is not HOST:PORT (IPv6 is written [::1]:6400)",
            quote(host_port)
        ));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!(
            "{} is not HOST:PORT with a port 1-65535 (IPv6 is written [::1]:6400)",
            quote(host_port)
        ));
    }
    if host.contains(':') || host.starts_with('[') {
        return Err(format!(
            "{} is not a valid IPv6 address and port",
            quote(host_port)
        ));
    }
    if host.len() > MAX_HOST_NAME
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(format!(
            "{} is neither an IP address nor a host name",
            quote(host)
        ));
    }
    let addr = resolve(host_port)?;
    check_port(addr, host_port)
}

/// What to write instead of a URL, a path or an address without a port,
/// the usual ways a line goes wrong.
fn common_mistake(text: &str) -> Option<String> {
    if let Some((scheme, rest)) = text.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        };
        let has_port = authority.rsplit_once(':').is_some_and(|(h, p)| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':')
        });
        let suggestion = match (has_port, default_port) {
            (true, _) => authority.to_string(),
            (false, Some(port)) => format!("{authority}:{port}"),
            (false, None) => format!("{authority}:PORT"),
        };
        return Some(format!(
            "a URL; a targets file names a server, not a URL: write {} (health checks take their path from [target_group.health_check] path)",
            quote(&suggestion)
        ));
    }
    if let Some((addr, _path)) = text.split_once('/') {
        return Some(format!(
            "a targets line takes no path: write {} (health checks take their path from [target_group.health_check] path)",
            quote(addr)
        ));
    }
    if text.parse::<std::net::Ipv4Addr>().is_ok() {
        return Some(format!(
            "the port is missing: write {}",
            quote(&format!("{text}:6400"))
        ));
    }
    let bracketed = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .is_some_and(|t| t.parse::<std::net::Ipv6Addr>().is_ok());
    if bracketed || text.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some(
            "an IPv6 address with a port is written in brackets, [ADDRESS]:PORT, e.g. \"[::1]:6400\""
                .into(),
        );
    }
    None
}

fn check_port(addr: SocketAddr, text: &str) -> Result<SocketAddr, String> {
    if addr.port() == 0 {
        return Err(format!(
            "{}: port 0 is not a valid target port",
            quote(text)
        ));
    }
    Ok(addr)
}

/// Addresses in a group, for logs.
pub fn describe(targets: &[Target]) -> String {
    let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.addr).collect();
    describe_addrs(&addrs)
}

/// Addresses for one log line: all of a few, the first [`LOG_ADDRS`] of many
/// with a count of the rest, so 10,000 targets do not make a 200 KB line.
pub fn describe_addrs(addrs: &[SocketAddr]) -> String {
    let shown: Vec<String> = addrs
        .iter()
        .take(LOG_ADDRS)
        .map(|a| a.to_string())
        .collect();
    match addrs.len().saturating_sub(LOG_ADDRS) {
        0 => format!("[{}]", shown.join(", ")),
        more => format!("[{}, ... and {more} more]", shown.join(", ")),
    }
}

/// Addresses a log line names before it counts the rest.
pub const LOG_ADDRS: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_address_lists_are_logged_as_a_few_and_a_count() {
        let addrs: Vec<SocketAddr> = (1..=10_000)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        let line = describe_addrs(&addrs);
        assert!(line.ends_with(", ... and 9992 more]"), "{line}");
        assert!(line.len() < 200, "{} bytes", line.len());
        assert_eq!(describe_addrs(&addrs[..2]), "[127.0.0.1:1, 127.0.0.1:2]");
        assert_eq!(describe_addrs(&[]), "[]");
    }

    fn no_dns(name: &str) -> Result<SocketAddr, String> {
        match name {
            "app1.local:6400" => Ok("127.0.0.9:6400".parse().unwrap()),
            _ => Err(format!("cannot resolve {name:?}")),
        }
    }

    #[test]
    fn parses_comments_weights_ipv6_and_names() {
        let text = "# written by the autoscaler\n\n127.0.0.1:6400\n127.0.0.1:6401 weight=2  # big one\n[::1]:6402\napp1.local:6400 weight=3\n";
        let t = parse(text, no_dns).unwrap().targets;
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].addr, "127.0.0.1:6400".parse().unwrap());
        assert_eq!(t[0].weight, 1);
        assert_eq!(t[1].weight, 2);
        assert_eq!(t[2].addr, "[::1]:6402".parse().unwrap());
        assert_eq!(t[3].addr, "127.0.0.9:6400".parse().unwrap());
        assert_eq!(t[3].weight, 3);
    }

    #[test]
    fn empty_text_is_an_empty_set() {
        assert_eq!(parse("# nothing\n\n", no_dns).unwrap(), Listing::default());
    }

    #[test]
    fn dns_and_srv_lines_name_sources_beside_addresses() {
        let text = "127.0.0.1:6400\ndns Todo.Service.Consul:6400 weight=2 # all of them\nsrv _todo._tcp.service.consul\ndns app1.local:6401\n";
        let l = parse(text, no_dns).unwrap();
        assert_eq!(l.targets, vec![t(6400)]);
        let dns = |host: &str, port| Query::Dns {
            host: host.into(),
            port,
        };
        assert_eq!(
            l.names,
            vec![
                Named {
                    line: 2,
                    query: dns("todo.service.consul", 6400),
                    weight: Some(2)
                },
                Named {
                    line: 3,
                    query: Query::Srv {
                        name: "_todo._tcp.service.consul".into()
                    },
                    weight: None
                },
                Named {
                    line: 4,
                    query: dns("app1.local", 6401),
                    weight: Some(1)
                },
            ],
            "names are looked up later, not by the parser (no_dns knows app1.local)"
        );
        assert_eq!(l.names[0].query.to_string(), "dns todo.service.consul:6400");
        assert_eq!(
            l.names[1].query.to_string(),
            "srv _todo._tcp.service.consul"
        );
        let moved = parse(
            "srv _todo._tcp.service.consul\n\ndns app1.local:6401\ndns todo.service.consul:6400 weight=2\n127.0.0.1:6400\n",
            no_dns,
        )
        .unwrap();
        assert!(moved.same_as(&l), "order and lines are no change");
        let reweighted = parse("dns todo.service.consul:6400 weight=3\n", no_dns).unwrap();
        assert!(
            !reweighted.same_as(&parse("dns todo.service.consul:6400 weight=2\n", no_dns).unwrap())
        );
    }

    #[test]
    fn every_mistake_in_a_dns_or_srv_line_names_its_line() {
        let cases = [
            ("dns", 1, "needs a name and a port"),
            ("srv", 1, "needs a name"),
            ("dns todo.service.consul", 1, "has no port"),
            ("dns todo.service.consul:0", 1, "port 1-65535"),
            ("dns todo.service.consul:99999", 1, "port 1-65535"),
            ("dns 10.0.0.5:6400", 1, "write it without `dns`"),
            ("dns [::1]:6400", 1, "write it without `dns`"),
            ("dns bad!name:6400", 1, "not a DNS name"),
            ("dns a..b:6400", 1, "not a DNS name"),
            ("dns todo:6400 weight=0", 1, "out of range"),
            ("dns todo:6400 port=2", 1, "unknown key"),
            ("dns todo:6400 extra", 1, "after the name"),
            ("srv _todo._tcp.x weight=2", 1, "carry their own"),
            ("\ndns todo:6400\ndns TODO:6400", 3, "first on line 2"),
            ("srv _a._tcp.x\nsrv _a._tcp.x", 2, "duplicate source"),
        ];
        for (text, line, needle) in cases {
            let (got_line, msg) = parse(text, no_dns).unwrap_err();
            assert_eq!(got_line, line, "{text:?}: {msg}");
            assert!(msg.contains(needle), "{text:?}: {msg:?} lacks {needle:?}");
        }
        assert!(
            parse("dns todo:6400\ndns todo:6401\n", no_dns).is_ok(),
            "one name on two ports is two sources"
        );
    }

    #[test]
    fn every_mistake_names_its_line() {
        let cases = [
            ("127.0.0.1", 1, "not HOST:PORT"),
            ("localhost", 1, "not HOST:PORT"),
            ("\n127.0.0.1:99999", 2, "port 1-65535"),
            ("127.0.0.1:6400 weight=0", 1, "out of range"),
            ("127.0.0.1:6400 weight=x", 1, "not a whole number"),
            ("127.0.0.1:6400 weight=1001", 1, "out of range"),
            ("127.0.0.1:6400 wieght=2", 1, "unknown key \"wieght\""),
            ("127.0.0.1:6400 2", 1, "only `weight=N` may follow"),
            ("127.0.0.1:6400 weight=1 weight=2", 1, "twice"),
            ("a\n127.0.0.1:6400\n#c\n127.0.0.1:6400", 1, "not HOST:PORT"),
            ("127.0.0.1:6400\n#c\n127.0.0.1:6400", 3, "first on line 1"),
            ("::1:6400", 1, "IPv6"),
            ("http://127.0.0.1:6400", 1, "write \"127.0.0.1:6400\""),
            (
                "https://api.example.com/v1",
                1,
                "write \"api.example.com:443\"",
            ),
            ("http://10.0.0.5/api/v1/health", 1, "write \"10.0.0.5:80\""),
            (
                "127.0.0.1:6400/api/v1/todos",
                1,
                "takes no path: write \"127.0.0.1:6400\"",
            ),
            (
                "127.0.0.1",
                1,
                "the port is missing: write \"127.0.0.1:6400\"",
            ),
            ("::1", 1, "IPv6 address with a port is written in brackets"),
            ("127.0.0.1:0", 1, "port 0"),
            ("nowhere.invalid:80", 1, "cannot resolve"),
            ("bad_host!:80", 1, "neither an IP address nor a host name"),
        ];
        for (text, line, needle) in cases {
            let (got_line, msg) = parse(text, no_dns).unwrap_err();
            assert_eq!(got_line, line, "{text:?}: {msg}");
            assert!(msg.contains(needle), "{text:?}: {msg:?} lacks {needle:?}");
        }
    }

    #[test]
    fn a_huge_line_is_quoted_as_a_short_excerpt() {
        let line = format!("{}:80\n", "a".repeat(5 << 20));
        let (_, msg) = parse(&line, no_dns).unwrap_err();
        assert!(msg.len() < 300, "{} bytes", msg.len());
        let line = format!("127.0.0.1:80 {}\n", "w".repeat(5 << 20));
        let (_, msg) = parse(&line, no_dns).unwrap_err();
        assert!(msg.len() < 300, "{} bytes", msg.len());
        assert!(msg.contains("bytes)"), "{msg}");
    }

    fn t(port: u16) -> Target {
        Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
        }
    }

    /// "Changing" is judged by the set: the same set without its final
    /// newline is no change; a changed set without one looks half-written;
    /// with nothing in service (start-up, check) there is nothing to be
    /// half of.
    #[test]
    fn a_missing_final_newline_is_refused_only_when_the_set_changes() {
        let serving = Listing::of(vec![t(1), t(2)]);
        let same = "127.0.0.1:2\n127.0.0.1:1";
        assert_eq!(
            parse_checked(same, Some(&serving), no_dns)
                .unwrap()
                .targets
                .len(),
            2
        );
        let (line, msg) =
            parse_checked("127.0.0.1:1\n127.0.0.1:3", Some(&serving), no_dns).unwrap_err();
        assert_eq!(line, 2);
        assert!(msg.contains("half-written"), "{msg}");
        let (_, msg) = parse_checked("127.0.0.1:1\n127.0.0.", Some(&serving), no_dns).unwrap_err();
        assert!(
            msg.contains("half-written"),
            "a cut line says half-written: {msg}"
        );
        assert_eq!(
            parse_checked("127.0.0.1:3", None, no_dns).unwrap(),
            Listing::of(vec![t(3)])
        );
        assert!(parse_checked("127.0.0.1:3\n", Some(&serving), no_dns).is_ok());
    }

    #[test]
    fn a_zero_byte_file_keeps_the_set_in_service_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        std::fs::write(&path, "").unwrap();
        let one = Listing::of(vec![t(1)]);
        let (text, kept) = load(&path, Some(&one)).unwrap();
        assert_eq!(
            (text.as_str(), &kept),
            ("", &one),
            "kept; the watcher decides"
        );
        assert!(
            load(&path, None).unwrap().1.is_empty(),
            "at start-up it is an empty set"
        );
        assert!(load(&path, Some(&Listing::default())).unwrap().1.is_empty());
        std::fs::write(&path, "# none\n").unwrap();
        assert!(
            load(&path, Some(&one)).unwrap().1.is_empty(),
            "a comment is meant"
        );
    }

    #[test]
    fn load_names_the_file() {
        let err = load(Path::new("/nonexistent/targets.txt"), None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/targets.txt: cannot read targets file"),
            "no line number when there is no line: {err}"
        );
    }
}
