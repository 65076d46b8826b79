//! What a SIGHUP changed, in the config's own words, for the one log line
//! that says so ("group web: algorithm round_robin -> maglev").

use std::fmt::Debug;

use crate::config::{Config, GroupConfig, ListenerConfig};

/// Settings that differ between two configs, one phrase each. Listeners
/// added, removed or moved, and targets, are said by the reload itself.
pub fn describe(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut diff = |what: String, a: &dyn Debug, b: &dyn Debug, note: &str| {
        let (a, b) = (format!("{a:?}"), format!("{b:?}"));
        if a != b {
            out.push(format!("{what} {a} -> {b}{note}"));
        }
    };
    diff(
        "[runtime] workers".into(),
        &old.runtime.workers,
        &new.runtime.workers,
        " (on restart only)",
    );
    diff(
        "[runtime] shutdown_timeout".into(),
        &old.runtime.shutdown_timeout,
        &new.runtime.shutdown_timeout,
        "",
    );
    diff(
        "[runtime] splice".into(),
        &old.runtime.splice,
        &new.runtime.splice,
        " (on restart only)",
    );
    diff(
        "[runtime] pipe_size".into(),
        &old.runtime.pipe_size,
        &new.runtime.pipe_size,
        " (on restart only)",
    );
    diff(
        "[runtime] ring_buffers".into(),
        &old.runtime.ring_buffers,
        &new.runtime.ring_buffers,
        " (on restart only)",
    );
    diff(
        "[runtime] takeover_socket".into(),
        &old.runtime.takeover_socket,
        &new.runtime.takeover_socket,
        " (on restart only)",
    );
    diff("[admin] listen".into(), &old.admin, &new.admin, "");
    for l in &new.listeners {
        if let Some(o) = old.listeners.iter().find(|o| o.name == l.name) {
            listener(&mut diff, o, l, old, new);
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
            Some(o) => group(&mut out, o, g),
        }
    }
    out
}

type Diff<'a> = dyn FnMut(String, &dyn Debug, &dyn Debug, &str) + 'a;

fn listener(diff: &mut Diff, o: &ListenerConfig, l: &ListenerConfig, old: &Config, new: &Config) {
    let key = |k: &str| format!("listener {}: {k}", l.name);
    diff(
        key("target_group"),
        &old.groups[o.group].name,
        &new.groups[l.group].name,
        "",
    );
    diff(key("backlog"), &o.backlog, &l.backlog, " (on restart only)");
    diff(key("allow"), &o.allow, &l.allow, "");
    diff(
        key("max_connections"),
        &o.max_connections,
        &l.max_connections,
        "",
    );
    diff(
        key("proxy_protocol"),
        &o.proxy_protocol,
        &l.proxy_protocol,
        "",
    );
}

fn group(out: &mut Vec<String>, o: &GroupConfig, g: &GroupConfig) {
    let (was, is) = (o.algorithm_label(), g.algorithm_label());
    if was != is {
        out.push(format!("group {}: algorithm {was} -> {is}", g.name));
    }
    let mut diff = |k: &str, a: &dyn Debug, b: &dyn Debug| {
        let (a, b) = (format!("{a:?}"), format!("{b:?}"));
        if a != b {
            out.push(format!("group {}: {k} {a} -> {b}", g.name));
        }
    };
    diff("targets_file", &o.targets_file, &g.targets_file);
    diff("connect_timeout", &o.connect_timeout, &g.connect_timeout);
    diff("connect_retries", &o.connect_retries, &g.connect_retries);
    diff("idle_timeout", &o.idle_timeout, &g.idle_timeout);
    diff(
        "deregistration_delay",
        &o.deregistration_delay,
        &g.deregistration_delay,
    );
    diff(
        "max_connections_per_target",
        &o.max_connections_per_target,
        &g.max_connections_per_target,
    );
    if o.health != g.health {
        out.push(format!(
            "group {}: health_check changed (its probes restart)",
            g.name
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(group_extra: &str, listeners: &str) -> Config {
        let text = format!(
            "{listeners}\n[[target_group]]\nname = \"web\"\ntargets_file = \"t.txt\"\n{group_extra}\n"
        );
        crate::config::parse(Path::new("/etc/ringlb/ringlb.toml"), &text).unwrap()
    }

    const ONE: &str =
        "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:80\"\ntarget_group = \"web\"";

    #[test]
    fn says_each_changed_setting_in_the_configs_words() {
        let old = config("", ONE);
        assert!(describe(&old, &old).is_empty(), "no change, nothing said");
        let new = config(
            "algorithm = \"maglev\"\nhash_key = \"source_ip\"\nidle_timeout = \"60s\"",
            &format!("{ONE}\nmax_connections = 5"),
        );
        let said = describe(&old, &new);
        assert_eq!(
            said,
            vec![
                "listener web: max_connections None -> Some(5)",
                "group web: algorithm round_robin -> maglev (hash_key source_ip)",
                "group web: idle_timeout 350s -> 60s",
            ],
        );
    }
}
