//! The targets file: the autoscaler's interface.
//!
//! One target per line, `HOST:PORT` optionally followed by `weight=N`; `#` starts
//! a comment; blank lines are ignored; IPv6 is written `[::1]:6400`. The parser
//! is pure (text in, targets or an error with the line out); reading the file and
//! resolving host names are the only I/O, in [`load`].

pub mod watch;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// Largest weight a target may have. Weights are relative, so this only bounds
/// the size of the schedules built from them.
pub const MAX_WEIGHT: u32 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {message}")]
pub struct TargetsError {
    pub file: PathBuf,
    /// 1-based line; 0 when the error is about the whole file (it cannot be read).
    pub line: usize,
    pub message: String,
}

/// Reads and parses a targets file. With `replacing` (a reload, where a set is
/// already in service) the stricter [`watch::parse_reload`] rules apply.
pub fn load(path: &Path, replacing: bool) -> Result<Vec<Target>, TargetsError> {
    let text = std::fs::read_to_string(path).map_err(|e| TargetsError {
        file: path.to_path_buf(),
        line: 0,
        message: format!("cannot read targets file: {e}"),
    })?;
    let parsed = if replacing {
        watch::parse_reload(&text)
    } else {
        parse(&text, resolve)
    };
    parsed.map_err(|(line, message)| TargetsError {
        file: path.to_path_buf(),
        line,
        message,
    })
}

/// Resolves `HOST:PORT` where HOST is a name (e.g. `localhost`): first address.
pub(crate) fn resolve(host_port: &str) -> Result<SocketAddr, String> {
    let mut addrs = host_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host_port:?}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{host_port:?} resolves to no address"))
}

/// Parses targets text. `resolve` is called only for names that are not IP
/// literals. Errors are `(line, message)`.
pub fn parse(
    text: &str,
    resolve: impl Fn(&str) -> Result<SocketAddr, String>,
) -> Result<Vec<Target>, (usize, String)> {
    let mut out = Vec::new();
    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let target = parse_line(line, &resolve).map_err(|m| (line_no, m))?;
        if let Some(first) = seen.insert(target.addr, line_no) {
            return Err((
                line_no,
                format!("duplicate target {} (first on line {first})", target.addr),
            ));
        }
        out.push(target);
    }
    Ok(out)
}

fn parse_line(
    line: &str,
    resolve: &impl Fn(&str) -> Result<SocketAddr, String>,
) -> Result<Target, String> {
    let mut words = line.split_whitespace();
    let host_port = words.next().unwrap_or_default();
    let addr = parse_addr(host_port, resolve)?;
    let mut weight = None;
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(format!(
                "unexpected {word:?} after the address: only `weight=N` may follow"
            ));
        };
        if key != "weight" {
            return Err(format!("unknown key {key:?}: only `weight=N` is allowed"));
        }
        if weight.is_some() {
            return Err("weight given twice".to_string());
        }
        let n: u32 = value
            .parse()
            .map_err(|_| format!("weight {value:?} is not a whole number (1..={MAX_WEIGHT})"))?;
        if n == 0 || n > MAX_WEIGHT {
            return Err(format!(
                "weight {n} is out of range 1..={MAX_WEIGHT} (remove the line to take a target out)"
            ));
        }
        weight = Some(n);
    }
    Ok(Target {
        addr,
        weight: weight.unwrap_or(1),
    })
}

fn parse_addr(
    host_port: &str,
    resolve: &impl Fn(&str) -> Result<SocketAddr, String>,
) -> Result<SocketAddr, String> {
    if let Ok(addr) = host_port.parse::<SocketAddr>() {
        return check_port(addr, host_port);
    }
    let Some((host, port)) = host_port.rsplit_once(':') else {
        return Err(format!(
            "{host_port:?} is not HOST:PORT (IPv6 is written [::1]:6400)"
        ));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!(
            "{host_port:?} is not HOST:PORT with a port 1-65535 (IPv6 is written [::1]:6400)"
        ));
    }
    if host.contains(':') || host.starts_with('[') {
        return Err(format!(
            "{host_port:?} is not a valid IPv6 address and port"
        ));
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(format!("{host:?} is neither an IP address nor a host name"));
    }
    let addr = resolve(host_port)?;
    check_port(addr, host_port)
}

fn check_port(addr: SocketAddr, text: &str) -> Result<SocketAddr, String> {
    if addr.port() == 0 {
        return Err(format!("{text:?}: port 0 is not a valid target port"));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_dns(name: &str) -> Result<SocketAddr, String> {
        match name {
            "app1.local:6400" => Ok("127.0.0.9:6400".parse().unwrap()),
            _ => Err(format!("cannot resolve {name:?}")),
        }
    }

    #[test]
    fn parses_comments_weights_ipv6_and_names() {
        let text = "# written by the autoscaler\n\n127.0.0.1:6400\n127.0.0.1:6401 weight=2  # big one\n[::1]:6402\napp1.local:6400 weight=3\n";
        let t = parse(text, no_dns).unwrap();
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
        assert_eq!(parse("# nothing\n\n", no_dns).unwrap(), vec![]);
    }

    #[test]
    fn every_mistake_names_its_line() {
        let cases = [
            ("127.0.0.1", 1, "not HOST:PORT"),
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
    fn load_names_the_file() {
        let err = load(Path::new("/nonexistent/targets.txt"), false).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/targets.txt:0: cannot read")
        );
    }
}
