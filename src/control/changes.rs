//! What a SIGHUP changed, in the config's own words, for the one log line
//! that says so ("group web: algorithm round_robin -> maglev", "\[runtime\]
//! takeover_socket none -> "/run/ringlb/takeover.sock" (on restart only)"):
//! durations, words and addresses as written, paths in quotes, an absent
//! key as `none`.

use std::time::Duration;

use crate::config::{Config, ConfigDuration, GroupConfig, ListenerConfig, ProxyProtocol, Splice};

/// A value as the config writes it.
trait Words {
    fn words(&self) -> String;
}

impl Words for Duration {
    fn words(&self) -> String {
        ConfigDuration(*self).to_string()
    }
}

impl Words for usize {
    fn words(&self) -> String {
        self.to_string()
    }
}

impl Words for u32 {
    fn words(&self) -> String {
        self.to_string()
    }
}

impl Words for u16 {
    fn words(&self) -> String {
        self.to_string()
    }
}

impl Words for std::net::SocketAddr {
    fn words(&self) -> String {
        self.to_string()
    }
}

impl Words for std::path::PathBuf {
    fn words(&self) -> String {
        format!("{:?}", self.display().to_string())
    }
}

impl Words for Splice {
    fn words(&self) -> String {
        let w = match self {
            Splice::Auto => "auto",
            Splice::Always => "always",
            Splice::Never => "never",
        };
        w.to_string()
    }
}

impl Words for ProxyProtocol {
    fn words(&self) -> String {
        let w = match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        };
        w.to_string()
    }
}

impl Words for Vec<ipnet::IpNet> {
    fn words(&self) -> String {
        let nets: Vec<String> = self.iter().map(|n| n.to_string()).collect();
        format!("[{}]", nets.join(", "))
    }
}

/// Absent: the key is not written (its default, or no limit).
impl Words for Vec<std::net::SocketAddr> {
    fn words(&self) -> String {
        let addrs: Vec<String> = self.iter().map(|a| a.to_string()).collect();
        format!("[{}]", addrs.join(", "))
    }
}

impl<T: Words> Words for Option<T> {
    fn words(&self) -> String {
        self.as_ref()
            .map_or_else(|| "none".to_string(), Words::words)
    }
}

/// The phrase for one setting that differs, if it does.
fn phrase<T: Words + PartialEq>(what: &str, a: &T, b: &T, note: &str) -> Option<String> {
    (a != b).then(|| format!("{what} {} -> {}{note}", a.words(), b.words()))
}

/// Settings that differ between two configs, one phrase each. Listeners
/// added, removed or moved, and targets, are said by the reload itself.
pub fn describe(old: &Config, new: &Config) -> Vec<String> {
    const RESTART: &str = " (on restart only)";
    let (o, n) = (&old.runtime, &new.runtime);
    let pipe = |b: usize| match b.is_multiple_of(1 << 20) {
        true => format!("{}MiB", b >> 20),
        false => format!("{}KiB", b >> 10),
    };
    let mut out: Vec<String> = [
        phrase("[runtime] workers", &o.workers, &n.workers, RESTART),
        phrase(
            "[runtime] shutdown_timeout",
            &o.shutdown_timeout,
            &n.shutdown_timeout,
            "",
        ),
        phrase("[runtime] splice", &o.splice, &n.splice, RESTART),
        (o.pipe_size != n.pipe_size).then(|| {
            format!(
                "[runtime] pipe_size {} -> {}{RESTART}",
                pipe(o.pipe_size),
                pipe(n.pipe_size)
            )
        }),
        phrase(
            "[runtime] ring_buffers",
            &o.ring_buffers,
            &n.ring_buffers,
            RESTART,
        ),
        phrase(
            "[runtime] takeover_socket",
            &o.takeover_socket.as_ref().map(|s| s.path.clone()),
            &n.takeover_socket.as_ref().map(|s| s.path.clone()),
            RESTART,
        ),
        phrase("[admin] listen", &old.admin, &new.admin, ""),
        phrase(
            "[discovery] resolvers",
            &old.discovery.resolvers,
            &new.discovery.resolvers,
            "",
        ),
        phrase(
            "[discovery] min_ttl",
            &old.discovery.min_ttl,
            &new.discovery.min_ttl,
            "",
        ),
        phrase(
            "[discovery] max_ttl",
            &old.discovery.max_ttl,
            &new.discovery.max_ttl,
            "",
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    for l in &new.listeners {
        if let Some(o) = old.listeners.iter().find(|o| o.name == l.name) {
            out.extend(listener(o, l, old, new));
        }
    }
    for g in &old.groups {
        if !new.groups.iter().any(|n| n.name == g.name) {
            out.push(format!("group {} removed (its targets drain)", g.name));
        }
    }
    for g in &new.groups {
        match old.groups.iter().find(|o| o.name == g.name) {
            None => out.push(format!("group {} added", g.name)),
            Some(o) => out.extend(group(o, g)),
        }
    }
    out
}

fn listener(o: &ListenerConfig, l: &ListenerConfig, old: &Config, new: &Config) -> Vec<String> {
    let key = |k: &str| format!("listener {}: {k}", l.name);
    let (was, is) = (&old.groups[o.group].name, &new.groups[l.group].name);
    [
        (was != is).then(|| format!("{} {was} -> {is}", key("target_group"))),
        phrase(
            &key("backlog"),
            &o.backlog,
            &l.backlog,
            " (on restart only)",
        ),
        phrase(&key("allow"), &o.allow, &l.allow, ""),
        (o.max_connections != l.max_connections).then(|| {
            let n = |m: Option<u64>| m.map_or("none".to_string(), |m| m.to_string());
            format!(
                "{} {} -> {}",
                key("max_connections"),
                n(o.max_connections),
                n(l.max_connections)
            )
        }),
        phrase(
            &key("proxy_protocol"),
            &o.proxy_protocol,
            &l.proxy_protocol,
            "",
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn group(o: &GroupConfig, g: &GroupConfig) -> Vec<String> {
    let key = |k: &str| format!("group {}: {k}", g.name);
    let (was, is) = (o.algorithm_label(), g.algorithm_label());
    let limit = |m: Option<u64>| m.map_or("0".to_string(), |m| m.to_string());
    [
        (was != is).then(|| format!("{} {was} -> {is}", key("algorithm"))),
        phrase(&key("targets_file"), &o.targets_file, &g.targets_file, ""),
        phrase(
            &key("connect_timeout"),
            &o.connect_timeout,
            &g.connect_timeout,
            "",
        ),
        phrase(
            &key("connect_retries"),
            &o.connect_retries,
            &g.connect_retries,
            "",
        ),
        phrase(&key("idle_timeout"), &o.idle_timeout, &g.idle_timeout, ""),
        phrase(
            &key("deregistration_delay"),
            &o.deregistration_delay,
            &g.deregistration_delay,
            "",
        ),
        (o.max_connections_per_target != g.max_connections_per_target).then(|| {
            format!(
                "{} {} -> {}",
                key("max_connections_per_target"),
                limit(o.max_connections_per_target),
                limit(g.max_connections_per_target)
            )
        }),
        (o.health != g.health).then(|| key("health_check changed (its probes restart)")),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(runtime: &str, group_extra: &str, listeners: &str) -> Config {
        let text = format!(
            "[runtime]\n{runtime}\n{listeners}\n[[target_group]]\nname = \"web\"\ntargets_file = \"t.txt\"\n{group_extra}\n"
        );
        crate::config::parse(Path::new("/etc/ringlb/ringlb.toml"), &text).unwrap()
    }

    const ONE: &str =
        "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:80\"\ntarget_group = \"web\"";

    #[test]
    fn says_each_changed_setting_in_the_configs_words() {
        let old = config("", "", ONE);
        assert!(describe(&old, &old).is_empty(), "no change, nothing said");
        let new = config(
            "takeover_socket = \"/run/ringlb/takeover.sock\"\npipe_size = \"1MiB\"",
            "algorithm = \"maglev\"\nhash_key = \"source_ip\"\nidle_timeout = \"60s\"",
            &format!("{ONE}\nmax_connections = 5\nallow = [\"10.0.0.0/8\"]"),
        );
        let said = describe(&old, &new);
        assert_eq!(
            said,
            vec![
                "[runtime] pipe_size 256KiB -> 1MiB (on restart only)",
                "[runtime] takeover_socket none -> \"/run/ringlb/takeover.sock\" (on restart only)",
                "listener web: allow none -> [10.0.0.0/8]",
                "listener web: max_connections none -> 5",
                "group web: algorithm round_robin -> maglev (hash_key source_ip)",
                "group web: idle_timeout 350s -> 60s",
            ],
        );
    }

    #[test]
    fn says_a_changed_discovery_section() {
        let old = config("", "", ONE);
        let new = config(
            "",
            "",
            &format!("{ONE}\n[discovery]\nresolvers = [\"127.0.0.1:8600\"]\nmin_ttl = \"10s\""),
        );
        assert_eq!(
            describe(&old, &new),
            vec![
                "[discovery] resolvers none -> [127.0.0.1:8600]",
                "[discovery] min_ttl 5s -> 10s",
            ]
        );
    }
}
