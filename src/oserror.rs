//! Which OS errors are this machine's own trouble (out of file descriptors,
//! memory or local ports) rather than a target's. A target is never blamed
//! for them: not by passive health, not by a probe.

use std::io;

/// Whether `e` says this machine ran short, not that the peer failed.
pub fn is_local(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// Whether `e` says this process has no file descriptor left (`EMFILE`,
/// or the system none, `ENFILE`).
pub fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Episodes of running short, so a shortage is logged once when it starts
/// and once when it ends (with how many it cost), not once per client. An
/// episode ends after [`Shortage::QUIET`] without a shortage. A pure core:
/// the caller passes the time.
#[derive(Debug, Default)]
pub struct Shortage {
    episode: Option<Episode>,
}

#[derive(Debug, Clone, Copy)]
struct Episode {
    since: std::time::Instant,
    last: std::time::Instant,
    count: u64,
}

/// An episode that ended: how many times it struck and how long it lasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub count: u64,
    pub lasted: std::time::Duration,
}

impl Shortage {
    /// How long without a shortage ends an episode.
    pub const QUIET: std::time::Duration = std::time::Duration::from_secs(5);

    /// Whether an episode is going on.
    pub fn is_short(&self) -> bool {
        self.episode.is_some()
    }

    /// A shortage at `now` that cost `count` (clients refused, probes not
    /// made; 0 when it cost nothing yet); true when it starts an episode
    /// (log it).
    pub fn struck(&mut self, now: std::time::Instant, count: u64) -> bool {
        match &mut self.episode {
            Some(e) => {
                e.last = now;
                e.count += count;
                false
            }
            None => {
                self.episode = Some(Episode {
                    since: now,
                    last: now,
                    count,
                });
                true
            }
        }
    }

    /// Things went well at `now`: the episode, if one was going and has
    /// been quiet for [`Shortage::QUIET`], ends (log it).
    pub fn went_well(&mut self, now: std::time::Instant) -> Option<Ended> {
        let e = self.episode?;
        if now.saturating_duration_since(e.last) < Self::QUIET {
            return None;
        }
        self.episode = None;
        Some(Ended {
            count: e.count,
            lasted: e.last.saturating_duration_since(e.since),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_shortage_is_logged_once_when_it_starts_and_once_when_it_ends() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = Shortage::default();
        assert_eq!(s.went_well(at(0)), None, "no episode, nothing to end");
        assert!(s.struck(at(0), 1), "the first shortage starts an episode");
        let mut logged = 0;
        for ms in 1..2_000 {
            // A shortage every other millisecond, service between.
            if ms % 2 == 0 {
                logged += usize::from(s.struck(at(ms), 1));
            } else {
                assert_eq!(
                    s.went_well(at(ms)),
                    None,
                    "not quiet long enough at {ms} ms"
                );
            }
        }
        assert_eq!(logged, 0, "one episode, one start");
        assert_eq!(s.went_well(at(1998 + 4_999)), None);
        assert_eq!(
            s.went_well(at(1998 + 5_000)),
            Some(Ended {
                count: 1000,
                lasted: Duration::from_millis(1998)
            })
        );
        assert!(s.struck(at(9_000), 0), "a later shortage is a new episode");
        assert!(
            !s.struck(at(9_100), 0),
            "one that cost nothing lengthens it"
        );
        assert_eq!(s.went_well(at(14_099)), None);
        assert_eq!(
            s.went_well(at(14_100)),
            Some(Ended {
                count: 0,
                lasted: Duration::from_millis(100)
            })
        );
    }
}
