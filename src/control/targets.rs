//! What a change of targets is: the diff of two sets (for the one log line
//! per reload, and the drains it starts), and for a SIGHUP, each old
//! group's removals against its namesake in the new config. Pure.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Config;
use crate::load::Loaded;
use crate::targets::{Target, describe_addrs};

/// Which targets changed between two sets.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
    pub reweighted: Vec<SocketAddr>,
}

impl Diff {
    pub fn between(old: &[Target], new: &[Target]) -> Diff {
        let old_w: HashMap<SocketAddr, u32> = old.iter().map(|t| (t.addr, t.weight)).collect();
        let new_w: HashMap<SocketAddr, u32> = new.iter().map(|t| (t.addr, t.weight)).collect();
        Diff {
            added: new
                .iter()
                .filter(|t| !old_w.contains_key(&t.addr))
                .map(|t| t.addr)
                .collect(),
            removed: old
                .iter()
                .filter(|t| !new_w.contains_key(&t.addr))
                .map(|t| t.addr)
                .collect(),
            reweighted: new
                .iter()
                .filter(|t| old_w.get(&t.addr).is_some_and(|&w| w != t.weight))
                .map(|t| t.addr)
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.reweighted.is_empty()
    }
}

/// One old group's part in a SIGHUP: how its targets changed against its
/// namesake in the new config (all removed if it is gone), the removed ones
/// with their old weights, and the delay they drain with.
#[derive(Debug, PartialEq, Eq)]
pub struct Removal {
    pub group: String,
    pub diff: Diff,
    pub removed: Vec<(SocketAddr, u32)>,
    pub delay: Duration,
}

impl Removal {
    /// The phrase for the reload's log line.
    pub fn describe(&self) -> String {
        format!(
            "group {}: targets added {}, removed {}, reweighted {}",
            self.group,
            describe_addrs(&self.diff.added),
            describe_addrs(&self.diff.removed),
            describe_addrs(&self.diff.reweighted)
        )
    }
}

/// Each group of `old` against its namesake in `new`: removed targets drain
/// with the new config's delay, or the old one's for a group that is gone.
pub fn removals(old: &Config, old_targets: &[Vec<Target>], new: &Loaded) -> Vec<Removal> {
    old.groups
        .iter()
        .zip(old_targets)
        .map(|(g, was)| {
            let at = new.config.groups.iter().position(|n| n.name == g.name);
            let is: &[Target] = at.map_or(&[], |i| &new.targets[i]);
            let delay = at.map_or(g.deregistration_delay, |i| {
                new.config.groups[i].deregistration_delay
            });
            let diff = Diff::between(was, is);
            let weights: HashMap<SocketAddr, u32> =
                was.iter().map(|t| (t.addr, t.weight)).collect();
            let removed = diff.removed.iter().map(|a| (*a, weights[a])).collect();
            Removal {
                group: g.name.clone(),
                diff,
                removed,
                delay,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(port: u16, weight: u32) -> Target {
        Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
        }
    }

    #[test]
    fn diff_names_added_removed_and_reweighted() {
        let d = Diff::between(&[t(1, 1), t(2, 1), t(3, 1)], &[t(2, 1), t(3, 5), t(4, 1)]);
        assert_eq!(d.added, vec![t(4, 1).addr]);
        assert_eq!(d.removed, vec![t(1, 1).addr]);
        assert_eq!(d.reweighted, vec![t(3, 1).addr]);
        assert!(
            Diff::between(&[t(1, 1), t(2, 1)], &[t(2, 1), t(1, 1)]).is_empty(),
            "order alone is no change"
        );
    }

    fn config(groups: &[(&str, &str)]) -> Config {
        let mut text =
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:80\"\ntarget_group = \"web\"\n"
                .to_string();
        for (name, delay) in groups {
            text.push_str(&format!(
                "[[target_group]]\nname = \"{name}\"\ntargets_file = \"{name}.txt\"\nderegistration_delay = \"{delay}\"\n"
            ));
        }
        crate::config::parse(std::path::Path::new("/etc/ringlb/ringlb.toml"), &text).unwrap()
    }

    #[test]
    fn a_reload_drains_removed_targets_with_the_new_delay_and_a_gone_groups_with_its_own() {
        let old = config(&[("web", "300s"), ("api", "20s")]);
        let new = Loaded {
            config: config(&[("web", "60s")]),
            targets: vec![vec![t(2, 1)]],
            lists: vec![crate::targets::Listing::of(vec![t(2, 1)])],
            texts: vec![String::new()],
        };
        let r = removals(&old, &[vec![t(1, 3), t(2, 1)], vec![t(9, 2)]], &new);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].removed, vec![(t(1, 3).addr, 3)], "with its old weight");
        assert_eq!(
            r[0].delay,
            Duration::from_secs(60),
            "the new config's delay"
        );
        assert_eq!(
            r[0].describe(),
            "group web: targets added [], removed [127.0.0.1:1], reweighted []"
        );
        assert_eq!(r[1].removed, vec![(t(9, 2).addr, 2)], "all of a gone group");
        assert_eq!(
            r[1].delay,
            Duration::from_secs(20),
            "a gone group's own delay"
        );
    }
}
