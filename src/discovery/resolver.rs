//! The lookups: hickory-resolver on a thread of its own with its own
//! runtime, so a slow DNS server never holds up a worker or the control
//! loop. The control plane says which names it wants ([`Discovery::want`]);
//! each is looked up at once, then again when its answer's TTL (kept within
//! `[discovery] min_ttl`/`max_ttl`) runs out, and every result goes back on
//! a channel as a [`Resolution`].
//!
//! hickory's own cache is off: ringlb asks only when an answer runs out,
//! and then wants the server's word, not a cached copy.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinSet;

use super::{Outcome, Resolution, next_lookup};
use crate::config::DiscoveryConfig;
use crate::targets::{MAX_WEIGHT, Query, Target};

/// The longest one lookup may take, every server and retry included.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long hickory waits for one server's answer before it tries again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// The lookup thread, as the control plane holds it. Dropping it ends the
/// thread (in-flight lookups are abandoned).
pub struct Discovery {
    wants: UnboundedSender<HashSet<Query>>,
    settings: DiscoveryConfig,
}

impl Discovery {
    /// Starts the lookup thread; results go to `results`.
    pub fn start(
        settings: DiscoveryConfig,
        results: UnboundedSender<Resolution>,
    ) -> std::io::Result<Discovery> {
        let (wants, asked) = unbounded_channel();
        let thread_settings = settings.clone();
        std::thread::Builder::new()
            .name("ringlb-dns".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => rt.block_on(follow(thread_settings, asked, results)),
                    Err(e) => tracing::error!("DNS lookups cannot run: no runtime: {e}"),
                }
            })?;
        Ok(Discovery { wants, settings })
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &DiscoveryConfig {
        &self.settings
    }

    /// Follow exactly these names: new ones are looked up at once.
    pub fn want(&self, queries: HashSet<Query>) {
        // The thread ends only when this handle is dropped.
        let _gone = self.wants.send(queries);
    }
}

/// The thread's loop: each wanted name looked up when due, one lookup per
/// name at a time.
async fn follow(
    settings: DiscoveryConfig,
    mut asked: UnboundedReceiver<HashSet<Query>>,
    results: UnboundedSender<Resolution>,
) {
    let resolver = build(&settings);
    let mut wanted: HashSet<Query> = HashSet::new();
    let mut due: HashMap<Query, Instant> = HashMap::new();
    let mut running: JoinSet<Resolution> = JoinSet::new();
    let mut in_flight: HashSet<Query> = HashSet::new();
    loop {
        let next = due.values().min().copied();
        let wake = tokio::time::Instant::from_std(next.unwrap_or_else(Instant::now));
        tokio::select! {
            w = asked.recv() => {
                let Some(w) = w else { return };
                due.retain(|q, _| w.contains(q));
                for q in &w {
                    if !wanted.contains(q) && !in_flight.contains(q) {
                        due.insert(q.clone(), Instant::now());
                    }
                }
                wanted = w;
            }
            Some(done) = running.join_next() => {
                let Ok(r) = done else { continue };
                in_flight.remove(&r.query);
                if wanted.contains(&r.query) {
                    let after = next_lookup(&r.outcome, settings.min_ttl, settings.max_ttl);
                    due.insert(r.query.clone(), Instant::now() + after);
                    if results.send(r).is_err() {
                        return; // the control plane is gone
                    }
                }
            }
            _ = tokio::time::sleep_until(wake), if next.is_some() => {
                let now = Instant::now();
                let ready: Vec<Query> = due
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(q, _)| q.clone())
                    .collect();
                for q in ready {
                    due.remove(&q);
                    in_flight.insert(q.clone());
                    let resolver = resolver.clone();
                    running.spawn(async move {
                        let outcome = lookup(&resolver, &q).await;
                        Resolution { query: q, outcome }
                    });
                }
            }
        }
    }
}

/// Looks each of `queries` up once, all at the same time, and waits for
/// them (at most [`LOOKUP_TIMEOUT`]): for `ringlb check` and for the
/// first snapshot at start-up. Runs on a thread of its own, so it may be
/// called from anywhere.
pub fn resolve_once(settings: &DiscoveryConfig, queries: &[Query]) -> Vec<Outcome> {
    if queries.is_empty() {
        return Vec::new();
    }
    let settings = settings.clone();
    let owned = queries.to_vec();
    let joined = std::thread::Builder::new()
        .name("ringlb-dns".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("no runtime for the lookups: {e}"))?;
            Ok(rt.block_on(async {
                let resolver = build(&settings);
                let mut set = JoinSet::new();
                for (i, q) in owned.into_iter().enumerate() {
                    let resolver = resolver.clone();
                    set.spawn(async move { (i, lookup(&resolver, &q).await) });
                }
                let mut out = vec![None; set.len()];
                while let Some(Ok((i, o))) = set.join_next().await {
                    out[i] = Some(o);
                }
                out
            }))
        })
        .map_err(|e| format!("no thread for the lookups: {e}"))
        .and_then(|h| {
            h.join()
                .unwrap_or_else(|_| Err("the lookup thread panicked".into()))
        });
    match joined {
        Ok(outcomes) => outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Outcome::Failed {
                    error: "the lookup did not finish".into(),
                })
            })
            .collect(),
        Err(error) => queries
            .iter()
            .map(|_| Outcome::Failed {
                error: error.clone(),
            })
            .collect(),
    }
}

/// The resolver `settings` ask for, or why there is none (every lookup
/// then fails with it).
fn build(settings: &DiscoveryConfig) -> Built {
    let mut builder = match &settings.resolvers {
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the DNS servers from /etc/resolv.conf: {e}"))?,
        Some(servers) => {
            let servers = servers
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        }
    };
    let o = builder.options_mut();
    o.cache_size = 0;
    o.timeout = ATTEMPT_TIMEOUT;
    o.attempts = 2;
    o.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder
        .build()
        .map(std::sync::Arc::new)
        .map_err(|e| format!("cannot set up DNS lookups: {e}"))
}

/// A resolver as [`build`] made it, or why there is none.
type Built = Result<std::sync::Arc<TokioResolver>, String>;

/// One lookup of `query`, bounded by [`LOOKUP_TIMEOUT`].
async fn lookup(resolver: &Built, query: &Query) -> Outcome {
    let resolver = match resolver {
        Ok(r) => r,
        Err(e) => return Outcome::Failed { error: e.clone() },
    };
    let work = async {
        match query {
            Query::Dns { host, port } => addresses(resolver, host).await.map(|(ips, ttl)| {
                let targets = ips
                    .into_iter()
                    .map(|ip| Target {
                        addr: SocketAddr::new(ip, *port),
                        weight: 1,
                    })
                    .collect();
                (targets, ttl)
            }),
            Query::Srv { name } => srv(resolver, name).await,
        }
    };
    match tokio::time::timeout(LOOKUP_TIMEOUT, work).await {
        Err(_) => Outcome::Failed {
            error: format!("no answer within {LOOKUP_TIMEOUT:?}"),
        },
        Ok(Err(outcome)) => outcome,
        Ok(Ok((targets, _))) if targets.is_empty() => Outcome::Gone {
            why: "no usable records".into(),
        },
        Ok(Ok((targets, ttl))) => Outcome::Found { targets, ttl },
    }
}

/// What a failed lookup means: gone (NXDOMAIN, no records) or failed.
fn failure(e: NetError) -> Outcome {
    if e.is_nx_domain() {
        Outcome::Gone {
            why: "NXDOMAIN (no such name)".into(),
        }
    } else if e.is_no_records_found() {
        Outcome::Gone {
            why: "no records".into(),
        }
    } else {
        Outcome::Failed {
            error: e.to_string(),
        }
    }
}

/// Every A and AAAA address of `host`, without repeats, and the TTL.
async fn addresses(
    resolver: &TokioResolver,
    host: &str,
) -> Result<(Vec<IpAddr>, Duration), Outcome> {
    let found = resolver.lookup_ip(host).await.map_err(failure)?;
    let ttl = found
        .valid_until()
        .saturating_duration_since(Instant::now());
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in found.iter() {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok((ips, ttl))
}

/// The SRV records of `name` with the lowest priority (the others are for
/// when those are gone, RFC 2782), each host's addresses on the record's
/// port, its weight clamped to 1..=[`MAX_WEIGHT`]. A host that is gone is
/// skipped; a host whose lookup failed fails the whole answer, so a
/// partial answer never drains the rest.
async fn srv(resolver: &TokioResolver, name: &str) -> Result<(Vec<Target>, Duration), Outcome> {
    let found = resolver.srv_lookup(name).await.map_err(failure)?;
    let mut ttl = found
        .valid_until()
        .saturating_duration_since(Instant::now());
    let records: Vec<_> = found
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) if !s.target.is_root() => Some(s.clone()),
            _ => None,
        })
        .collect();
    let Some(best) = records.iter().map(|s| s.priority).min() else {
        return Ok((Vec::new(), ttl));
    };
    let mut targets: Vec<Target> = Vec::new();
    for s in records.iter().filter(|s| s.priority == best) {
        let host = s.target.to_string();
        let ips = match addresses(resolver, &host).await {
            Ok((ips, host_ttl)) => {
                ttl = ttl.min(host_ttl);
                ips
            }
            Err(Outcome::Gone { .. }) => continue,
            Err(failed) => return Err(failed),
        };
        let weight = u32::from(s.weight).clamp(1, MAX_WEIGHT);
        for ip in ips {
            let addr = SocketAddr::new(ip, s.port);
            if !targets.iter().any(|t| t.addr == addr) {
                targets.push(Target { addr, weight });
            }
        }
    }
    Ok((targets, ttl))
}
