//! Targets from DNS: the `dns NAME:PORT` and `srv NAME` lines of targets
//! files, looked up again as their answers' TTLs run out.
//!
//! Two parts:
//! - this file, pure: what a lookup came to ([`Outcome`]), when to ask
//!   again ([`next_lookup`]), the last good answer of every name with the
//!   rules for failures ([`Answers`]), and a file's listing joined with the
//!   answers of its names into one set of targets ([`compose`]);
//! - [`resolver`]: the lookups themselves, with hickory-resolver on a
//!   thread of their own, never on a worker or in the control loop.
//!
//! The rules for failures: a timeout, SERVFAIL or an unreachable server
//! keeps the last good answer of the name (a group is never emptied by a
//! resolver that is down); NXDOMAIN or an answer with no records means the
//! name has no targets now, and its targets drain as if their lines had
//! been removed from the file.

pub mod resolver;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use crate::targets::{Listing, Query, Target};

/// What one lookup of a name came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The name's targets (for `dns`, weight 1: the line's weight applies
    /// when composed), and the answer's TTL.
    Found { targets: Vec<Target>, ttl: Duration },
    /// NXDOMAIN, or no records of the kind asked: no targets now.
    Gone { why: String },
    /// No answer to go by: a timeout, SERVFAIL, a refused or unreachable
    /// server.
    Failed { error: String },
}

/// A lookup finished.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub query: Query,
    pub outcome: Outcome,
}

/// How long after `outcome` the name is asked again: an answer's TTL
/// within `[min_ttl, max_ttl]`; a name that is gone or a lookup that failed
/// after `min_ttl`, so a name that comes back, or a server that recovers,
/// is seen soon.
pub fn next_lookup(outcome: &Outcome, min_ttl: Duration, max_ttl: Duration) -> Duration {
    match outcome {
        Outcome::Found { ttl, .. } => (*ttl).clamp(min_ttl, max_ttl.max(min_ttl)),
        Outcome::Gone { .. } | Outcome::Failed { .. } => min_ttl,
    }
}

/// Where a name stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum State {
    /// Not answered yet.
    #[default]
    Waiting,
    /// Its last lookup answered with targets.
    Answering,
    /// Its last lookup said it has none (NXDOMAIN or no records).
    Gone(String),
    /// Its last lookup failed: the last good answer is kept.
    Failing(String),
}

impl State {
    /// One word, for `/targets` and metrics.
    pub fn word(&self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Answering => "answering",
            State::Gone(_) => "gone",
            State::Failing(_) => "failing",
        }
    }
}

/// Lookups of one name, by what they came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lookups {
    pub found: u64,
    pub gone: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Default)]
struct Known {
    /// The targets in service from this name: its last good answer.
    targets: Vec<Target>,
    state: State,
    lookups: Lookups,
}

/// What recording a lookup changed, to say once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The name's targets are now these (it answered differently, or for
    /// the first time, or again after failing or being gone).
    Answered { targets: Vec<Target> },
    /// The name is gone: its `dropped` targets drain.
    Gone { why: String, dropped: usize },
    /// The lookup failed; the last good answer, of `kept` targets, stays.
    Failing { error: String, kept: usize },
    /// It answered again after failing, with the same targets as before.
    Recovered,
}

/// The last good answer of every name in use, and its state: the rules of
/// the module doc, with no I/O.
#[derive(Debug, Default)]
pub struct Answers {
    by_query: HashMap<Query, Known>,
}

impl Answers {
    /// Keeps exactly the names in `wanted`: new ones wait for their first
    /// answer, ones no file names any more are forgotten.
    pub fn want(&mut self, wanted: &HashSet<Query>) {
        self.by_query.retain(|q, _| wanted.contains(q));
        for q in wanted {
            self.by_query.entry(q.clone()).or_default();
        }
    }

    /// A lookup finished. Returns what changed, if anything is to be said:
    /// a failure only when it starts, a gone name only when it goes.
    /// Results for a name no longer wanted are ignored.
    pub fn record(&mut self, r: Resolution) -> Option<Change> {
        let known = self.by_query.get_mut(&r.query)?;
        match r.outcome {
            Outcome::Found { targets, .. } => {
                known.lookups.found += 1;
                let was = std::mem::replace(&mut known.state, State::Answering);
                if crate::targets::same_set(&known.targets, &targets) && was != State::Waiting {
                    return matches!(was, State::Failing(_)).then_some(Change::Recovered);
                }
                known.targets = targets.clone();
                Some(Change::Answered { targets })
            }
            Outcome::Gone { why } => {
                known.lookups.gone += 1;
                let was = std::mem::replace(&mut known.state, State::Gone(why.clone()));
                let dropped = std::mem::take(&mut known.targets).len();
                (!matches!(was, State::Gone(_))).then_some(Change::Gone { why, dropped })
            }
            Outcome::Failed { error } => {
                known.lookups.failed += 1;
                let was = std::mem::replace(&mut known.state, State::Failing(error.clone()));
                let kept = known.targets.len();
                (!matches!(was, State::Failing(_))).then_some(Change::Failing { error, kept })
            }
        }
    }

    /// The targets in service from `query` (none if unknown).
    pub fn targets(&self, query: &Query) -> &[Target] {
        self.by_query
            .get(query)
            .map_or(&[], |k| k.targets.as_slice())
    }

    /// Where `query` stands, and its lookups so far.
    pub fn state(&self, query: &Query) -> Option<(&State, Lookups)> {
        self.by_query.get(query).map(|k| (&k.state, k.lookups))
    }

    /// Every name in use, in a stable order.
    pub fn queries(&self) -> Vec<&Query> {
        let mut q: Vec<&Query> = self.by_query.keys().collect();
        q.sort_unstable();
        q
    }
}

/// A group's targets: a file's own targets, then each name's answer in the
/// order of its line, with the `dns` line's weight. An address that two
/// lines give is one target, as the first gives it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Composed {
    pub targets: Vec<Target>,
    /// Which name gave each target that is not a line of its own.
    pub origin: HashMap<SocketAddr, Query>,
}

/// The targets of `listing` with the answers `answers` has for its names.
pub fn compose(listing: &Listing, answers: &Answers) -> Composed {
    let mut out = Composed {
        targets: listing.targets.clone(),
        origin: HashMap::new(),
    };
    let mut seen: HashSet<SocketAddr> = listing.targets.iter().map(|t| t.addr).collect();
    for named in &listing.names {
        for t in answers.targets(&named.query) {
            if seen.insert(t.addr) {
                out.targets.push(Target {
                    addr: t.addr,
                    weight: named.weight.unwrap_or(t.weight),
                });
                out.origin.insert(t.addr, named.query.clone());
            }
        }
    }
    out
}

/// The names every listing uses.
pub fn queries_of<'a>(listings: impl IntoIterator<Item = &'a Listing>) -> HashSet<Query> {
    listings
        .into_iter()
        .flat_map(|l| l.names.iter().map(|n| n.query.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::Named;

    fn t(last: u8, port: u16, weight: u32) -> Target {
        Target {
            addr: SocketAddr::from(([127, 0, 0, last], port)),
            weight,
        }
    }

    fn dns(host: &str) -> Query {
        Query::Dns {
            host: host.into(),
            port: 6400,
        }
    }

    fn found(q: &Query, targets: Vec<Target>) -> Resolution {
        Resolution {
            query: q.clone(),
            outcome: Outcome::Found {
                targets,
                ttl: Duration::from_secs(1),
            },
        }
    }

    fn failed(q: &Query) -> Resolution {
        Resolution {
            query: q.clone(),
            outcome: Outcome::Failed {
                error: "no answer within 5s".into(),
            },
        }
    }

    fn gone(q: &Query) -> Resolution {
        Resolution {
            query: q.clone(),
            outcome: Outcome::Gone {
                why: "NXDOMAIN".into(),
            },
        }
    }

    fn answers_for(q: &Query) -> Answers {
        let mut a = Answers::default();
        a.want(&HashSet::from([q.clone()]));
        a
    }

    #[test]
    fn a_ttl_is_kept_within_min_and_max() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(300));
        let f = |s| Outcome::Found {
            targets: vec![],
            ttl: Duration::from_secs(s),
        };
        assert_eq!(next_lookup(&f(0), min, max), min, "Consul's TTL 0");
        assert_eq!(next_lookup(&f(30), min, max), Duration::from_secs(30));
        assert_eq!(next_lookup(&f(86_400), min, max), max);
        let failed = Outcome::Failed { error: "x".into() };
        assert_eq!(next_lookup(&failed, min, max), min);
        let gone = Outcome::Gone { why: "x".into() };
        assert_eq!(next_lookup(&gone, min, max), min);
    }

    /// A resolver that stops answering never takes targets away; it is
    /// said once, and once more when it answers again.
    #[test]
    fn a_failure_keeps_the_last_good_answer_and_is_said_once() {
        let q = dns("todo.service.consul");
        let mut a = answers_for(&q);
        let two = vec![t(2, 6400, 1), t(3, 6400, 1)];
        assert_eq!(
            a.record(found(&q, two.clone())),
            Some(Change::Answered {
                targets: two.clone()
            })
        );
        assert_eq!(a.record(found(&q, two.clone())), None, "the same answer");
        assert_eq!(
            a.record(failed(&q)),
            Some(Change::Failing {
                error: "no answer within 5s".into(),
                kept: 2
            })
        );
        assert_eq!(a.record(failed(&q)), None, "said once");
        assert_eq!(a.targets(&q), two, "kept");
        assert_eq!(a.state(&q).unwrap().0.word(), "failing");
        assert_eq!(a.record(found(&q, two.clone())), Some(Change::Recovered));
        let (state, lookups) = a.state(&q).unwrap();
        assert_eq!(*state, State::Answering);
        assert_eq!(
            lookups,
            Lookups {
                found: 3,
                gone: 0,
                failed: 2
            }
        );
    }

    /// NXDOMAIN is an answer: the name has no targets, as an empty file.
    #[test]
    fn a_gone_name_drops_its_targets_and_comes_back() {
        let q = dns("todo.service.consul");
        let mut a = answers_for(&q);
        a.record(found(&q, vec![t(2, 6400, 1)]));
        assert_eq!(
            a.record(gone(&q)),
            Some(Change::Gone {
                why: "NXDOMAIN".into(),
                dropped: 1
            })
        );
        assert!(a.targets(&q).is_empty());
        assert_eq!(a.record(gone(&q)), None, "said once");
        assert_eq!(
            a.record(failed(&q)),
            Some(Change::Failing {
                error: "no answer within 5s".into(),
                kept: 0
            })
        );
        assert_eq!(
            a.record(found(&q, vec![t(4, 6400, 1)])),
            Some(Change::Answered {
                targets: vec![t(4, 6400, 1)]
            })
        );
    }

    #[test]
    fn a_first_answer_is_said_even_when_empty_of_change() {
        let q = dns("a");
        let mut a = answers_for(&q);
        assert_eq!(
            a.record(found(&q, vec![])),
            Some(Change::Answered { targets: vec![] })
        );
    }

    #[test]
    fn names_no_file_wants_are_forgotten_and_their_results_ignored() {
        let (q1, q2) = (dns("a"), dns("b"));
        let mut a = answers_for(&q1);
        a.record(found(&q1, vec![t(2, 6400, 1)]));
        a.want(&HashSet::from([q2.clone()]));
        assert!(a.targets(&q1).is_empty());
        assert_eq!(
            a.record(found(&q1, vec![t(2, 6400, 1)])),
            None,
            "a late result"
        );
        assert_eq!(a.queries(), vec![&q2]);
    }

    #[test]
    fn composed_targets_keep_file_order_weights_and_say_where_they_came_from() {
        let (qa, qs) = (
            dns("todo"),
            Query::Srv {
                name: "_todo._tcp.x".into(),
            },
        );
        let mut a = Answers::default();
        a.want(&HashSet::from([qa.clone(), qs.clone()]));
        a.record(found(&qa, vec![t(2, 6400, 1), t(1, 6400, 1)]));
        a.record(found(&qs, vec![t(2, 6400, 9), t(5, 7000, 30)]));
        let listing = Listing {
            targets: vec![t(1, 6400, 4)],
            names: vec![
                Named {
                    line: 2,
                    query: qa.clone(),
                    weight: Some(2),
                },
                Named {
                    line: 3,
                    query: qs.clone(),
                    weight: None,
                },
            ],
        };
        let c = compose(&listing, &a);
        assert_eq!(
            c.targets,
            vec![t(1, 6400, 4), t(2, 6400, 2), t(5, 7000, 30)],
            "the file's own line first; an address given twice counts once, as first given; SRV weights kept"
        );
        assert_eq!(c.origin.get(&t(1, 6400, 4).addr), None, "its own line");
        assert_eq!(c.origin[&t(2, 6400, 1).addr], qa);
        assert_eq!(c.origin[&t(5, 7000, 1).addr], qs);
        assert_eq!(queries_of([&listing]), HashSet::from([qa, qs]));
    }
}
