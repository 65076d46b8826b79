//! The control plane's rules, on the pure core, with the time passed in.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::health::State;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn targets(ports: &[u16]) -> Vec<Target> {
    ports
        .iter()
        .map(|&p| Target {
            addr: addr(p),
            weight: 1,
        })
        .collect()
}

/// A config with group "web" (`extra` lines in it) and, when `api`, a group
/// "api" too, and one listener.
fn config(extra: &str, api: bool) -> Config {
    let mut text = format!(
        "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:80\"\ntarget_group = \"web\"\n\
         [[target_group]]\nname = \"web\"\ntargets_file = \"web.txt\"\n{extra}\n"
    );
    if api {
        text.push_str("[[target_group]]\nname = \"api\"\ntargets_file = \"api.txt\"\nderegistration_delay = \"20s\"\n");
    }
    crate::config::parse(std::path::Path::new("/etc/ringlb/ringlb.toml"), &text).unwrap()
}

fn loaded(config: Config, sets: Vec<Vec<Target>>) -> Loaded {
    let texts = vec![String::new(); sets.len()];
    let lists = sets
        .iter()
        .cloned()
        .map(crate::targets::Listing::of)
        .collect();
    Loaded {
        config,
        targets: sets,
        lists,
        texts,
    }
}

fn core(extra: &str, ports: &[u16], t0: Instant) -> Core {
    let ids = HashMap::from([("web".to_string(), 1)]);
    let (core, effects) = Core::new(
        loaded(config(extra, false), vec![targets(ports)]),
        ids,
        1,
        None,
        t0,
    );
    assert!(
        matches!(effects[..], [Effect::Probes(ref w), Effect::Publish(ref s)] if w[0].addrs.len() == ports.len() && s.epoch == 1),
        "a new core starts its probes and publishes epoch 1: {effects:?}"
    );
    core
}

/// The effects, in order, as short words, for asserting on order.
fn words(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .map(|e| match e {
            Effect::Publish(s) => format!("publish {}", s.epoch),
            Effect::CloseTarget { addr, .. } => format!("close {}", addr.port()),
            Effect::Probes(w) => {
                format!("probes {}", w.iter().map(|g| g.addrs.len()).sum::<usize>())
            }
            Effect::Log(Event::DrainStarted { target, .. }) => {
                format!("draining {}", target.port())
            }
            Effect::Log(Event::DrainFinished { target, .. }) => {
                format!("drained {}", target.port())
            }
            Effect::Log(Event::DrainExpired { target, .. }) => format!("expired {}", target.port()),
            Effect::Log(Event::Readded { target, .. }) => format!("readded {}", target.port()),
            Effect::Log(Event::TargetsReloaded { count, .. }) => format!("reloaded {count}"),
            Effect::Log(e) => format!("{e:?}"),
        })
        .collect()
}

fn published(effects: &[Effect]) -> Vec<&Snapshot> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish(s) => Some(&**s),
            _ => None,
        })
        .collect()
}

/// With `deregistration_delay = "0s"`, a removed target's connections are
/// closed at once, but only after the snapshot without it is out: a connect
/// that finishes in between sees it gone.
#[test]
fn a_removed_target_is_published_out_before_its_connections_are_closed() {
    let t0 = Instant::now();
    let mut c = core("deregistration_delay = \"0s\"", &[1, 2], t0);
    c.stats.get(addr(2)).active.store(3, Ordering::Relaxed);
    let effects = c.targets_changed(0, targets(&[1]), t0);
    assert_eq!(
        words(&effects),
        [
            "reloaded 1",
            "draining 2",
            "probes 1",
            "publish 2",
            "expired 2",
            "publish 3",
            "close 2"
        ]
    );
    let snaps = published(&effects);
    assert!(
        snaps[0].groups[0].targets.iter().all(|t| t.addr != addr(2)),
        "out of the group first"
    );
    assert!(
        snaps[0].serves("web", addr(2)),
        "still draining in the first snapshot"
    );
    assert!(!snaps[1].serves("web", addr(2)), "gone before the close");
}

#[test]
fn a_drain_runs_to_its_deadline_or_its_last_connection() {
    let t0 = Instant::now();
    let mut c = core("deregistration_delay = \"10s\"", &[1, 2, 3], t0);
    c.stats.get(addr(2)).active.store(1, Ordering::Relaxed);
    c.stats.get(addr(3)).active.store(1, Ordering::Relaxed);
    c.targets_changed(0, targets(&[1]), t0);
    assert!(
        c.tick(t0 + Duration::from_secs(9)).is_empty(),
        "both still drain"
    );
    c.stats.get(addr(3)).active.store(0, Ordering::Relaxed);
    let e = c.tick(t0 + Duration::from_secs(9));
    assert_eq!(
        words(&e),
        ["drained 3", "publish 3"],
        "the last connection went"
    );
    let e = c.tick(t0 + Duration::from_secs(10));
    assert_eq!(
        words(&e),
        ["expired 2", "publish 4", "close 2"],
        "the deadline"
    );
    assert!(c.tick(t0 + Duration::from_secs(11)).is_empty());
}

/// A target put back while it drains returns to service, with its
/// connections, and its health.
#[test]
fn a_target_added_back_while_draining_is_back_in_service() {
    let t0 = Instant::now();
    let mut c = core("", &[1, 2], t0);
    c.checked("web", addr(2), true, "ok");
    c.stats.get(addr(2)).active.store(1, Ordering::Relaxed);
    c.targets_changed(0, targets(&[1]), t0);
    let e = c.targets_changed(0, targets(&[1, 2]), t0 + Duration::from_secs(1));
    assert!(
        words(&e).contains(&"readded 2".to_string()),
        "{:?}",
        words(&e)
    );
    let snap = published(&e)[0];
    assert!(snap.draining.is_empty());
    assert_eq!(
        c.health().get("web", addr(2)).map(|h| h.state),
        Some(State::Initial),
        "listed again, it is probed again before it gets traffic"
    );
    assert!(
        c.tick(t0 + Duration::from_secs(400)).is_empty(),
        "no drain left to expire"
    );
}

/// A thousand flips at once (a switch failed) share one snapshot, and are
/// logged with it, each naming the epoch that carries it.
#[test]
fn a_storm_of_health_flips_shares_one_snapshot() {
    let t0 = Instant::now();
    let ports: Vec<u16> = (1..=1000).collect();
    let mut c = core("", &ports, t0);
    for &p in &ports {
        c.checked("web", addr(p), true, "ok");
    }
    let gap = publish::HEALTH_PUBLISH_GAP;
    assert_eq!(c.flush_due(), Some(t0 + gap), "a gap after epoch 1");
    assert!(
        c.flush(t0 + gap - Duration::from_millis(1)).is_empty(),
        "not yet"
    );
    let e = c.flush(t0 + gap);
    assert_eq!(
        e.len(),
        1001,
        "one snapshot, then the thousand flips it carries"
    );
    assert!(
        matches!(&e[0], Effect::Publish(s) if s.epoch == 2 && s.groups[0].targets.iter().all(|t| t.ready))
    );
    let epochs: Vec<u64> = e[1..]
        .iter()
        .map(|e| match e {
            Effect::Log(Event::HealthChanged {
                epoch,
                to: State::Healthy,
                ..
            }) => *epoch,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(epochs.iter().all(|&e| e == 2), "every flip rides epoch 2");
    assert!(c.flush(t0 + gap).is_empty(), "nothing waits");
    // After a quiet spell, a flip goes at once.
    c.checked("web", addr(1), false, "refused");
    c.checked("web", addr(1), false, "refused");
    let later = t0 + Duration::from_secs(60);
    assert!(c.flush_due().unwrap() <= later);
    assert_eq!(words(&c.flush(later))[0], "publish 3");
}

/// A change of targets publishes at once and takes waiting flips along.
#[test]
fn a_targets_change_takes_the_waiting_flips_along() {
    let t0 = Instant::now();
    let mut c = core("", &[1, 2], t0);
    c.checked("web", addr(1), true, "ok");
    let e = c.targets_changed(0, targets(&[1, 2, 3]), t0);
    let flip = e
        .iter()
        .position(|e| matches!(e, Effect::Log(Event::HealthChanged { epoch: 2, .. })));
    let publish = e
        .iter()
        .position(|e| matches!(e, Effect::Publish(s) if s.epoch == 2));
    assert!(
        publish.unwrap() < flip.unwrap(),
        "published, then logged: {:?}",
        words(&e)
    );
    assert_eq!(c.flush_due(), None);
}

/// A SIGHUP that removes a group drains its targets with that group's own
/// delay; the kept group's removed targets drain with the new config's.
#[test]
fn a_reload_drains_what_it_removes_with_the_right_delay() {
    let t0 = Instant::now();
    let ids = HashMap::from([("web".to_string(), 1)]);
    let (mut c, _) = Core::new(
        loaded(
            config("deregistration_delay = \"300s\"", true),
            vec![targets(&[1, 2]), targets(&[9])],
        ),
        ids.clone(),
        1,
        None,
        t0,
    );
    c.stats.get(addr(2)).active.store(1, Ordering::Relaxed);
    c.stats.get(addr(9)).active.store(1, Ordering::Relaxed);
    let mut said = Vec::new();
    let new = loaded(
        config("deregistration_delay = \"60s\"", false),
        vec![targets(&[1])],
    );
    let e = c.reload(new, ids, &mut said, t0);
    assert_eq!(
        said,
        [
            "group web: targets added [], removed [127.0.0.1:2], reweighted []",
            "group api: targets added [], removed [127.0.0.1:9], reweighted []"
        ]
    );
    let delays: Vec<(u16, Duration)> = e
        .iter()
        .filter_map(|e| match e {
            Effect::Log(Event::DrainStarted { target, delay, .. }) => Some((target.port(), *delay)),
            _ => None,
        })
        .collect();
    assert_eq!(
        delays,
        [(2, Duration::from_secs(60)), (9, Duration::from_secs(20))]
    );
    assert_eq!(
        words(&c.tick(t0 + Duration::from_secs(20))),
        ["expired 9", &format!("publish {}", c.epoch()), "close 9"]
    );
    let last = c.tick(t0 + Duration::from_secs(60));
    assert_eq!(words(&last)[2], "close 2");
}
