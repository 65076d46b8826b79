//! Following a targets file that an autoscaler rewrites, by rename or in place.
//!
//! The file is read on every tick (they are small; see [`super::read`] for
//! what is refused without blocking). The rules, on what was read and when
//! ([`FileWatch::decide`], the pure part):
//! - new content is handled only once two consecutive reads agree, so a
//!   file caught mid-write is not applied;
//! - content already handled (good or bad) is not handled again, so an
//!   unchanged file is a no-op and a bad one is reported once;
//! - a file of 0 bytes while targets serve from it (the signature of a
//!   rewrite in place: truncate, then write) is applied only once it has
//!   stayed so for [`EMPTY_GRACE`]; a file with only a comment, which is
//!   what an autoscaler writes to mean "no targets", applies at once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Listing, TargetsError, parse_checked, read, resolve};

/// How long a targets file must stay at 0 bytes before its targets go.
pub const EMPTY_GRACE: Duration = Duration::from_secs(5);

/// A read of the file: its text, or why it could not be read.
type Reading = Result<String, TargetsError>;

#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    /// What the last tick read (or the read error), to see it settle.
    last_read: Option<Reading>,
    /// Content last handled, good or bad.
    handled: Option<Reading>,
    /// What the file lists in service.
    applied: Listing,
    /// Since when the file has been 0 bytes with targets in service.
    empty_since: Option<Instant>,
}

/// What a read of the file comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// A new listing, to apply (it may differ only in order or comments).
    Apply(Listing),
    /// The file is refused; the set in service stays.
    Reject(TargetsError),
    /// The file has become 0 bytes while targets serve from it: they stay
    /// until it has been so for [`EMPTY_GRACE`].
    Emptied,
}

impl FileWatch {
    /// Watches `path`, whose content `read` was read when `applied`, the
    /// set in service, was loaded: a fresh read is not taken, so a change
    /// written between the load and this call is still seen as a change.
    /// A 0-byte `read` that was not applied (a SIGHUP kept the set in
    /// service) is not taken as handled: it waits its grace like any other.
    pub fn new(path: &Path, read: String, applied: Listing) -> Self {
        let kept_over_empty = read.is_empty() && !applied.is_empty();
        FileWatch {
            path: path.to_path_buf(),
            last_read: Some(Ok(read.clone())),
            handled: (!kept_over_empty).then_some(Ok(read)),
            applied,
            empty_since: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file lists in service.
    pub fn applied(&self) -> &Listing {
        &self.applied
    }

    /// Reads the file at `now`; see [`FileWatch::decide`].
    pub fn poll(
        &mut self,
        now: Instant,
        fits: impl Fn(&Listing) -> Result<(), TargetsError>,
    ) -> Option<Change> {
        let reading = read(&self.path);
        self.decide(reading, now, fits)
    }

    /// What `reading`, made at `now`, comes to by the rules of the module
    /// doc; a set that also passes `fits` (the group's own limits) is
    /// taken as applied.
    pub fn decide(
        &mut self,
        reading: Reading,
        now: Instant,
        fits: impl Fn(&Listing) -> Result<(), TargetsError>,
    ) -> Option<Change> {
        let settled = self.last_read.as_ref() == Some(&reading);
        self.last_read = Some(reading.clone());
        let emptied = matches!(&reading, Ok(t) if t.is_empty()) && !self.applied.is_empty();
        if !emptied {
            self.empty_since = None;
        }
        if !settled || self.handled.as_ref() == Some(&reading) {
            return None;
        }
        if emptied {
            let first = self.empty_since.is_none();
            let since = *self.empty_since.get_or_insert(now);
            if now.saturating_duration_since(since) < EMPTY_GRACE {
                return first.then_some(Change::Emptied);
            }
        }
        self.handled = Some(reading.clone());
        let text = match reading {
            Err(e) => return Some(Change::Reject(e)),
            Ok(text) => text,
        };
        let parsed = parse_checked(&text, Some(&self.applied), resolve)
            .map_err(|(line, message)| TargetsError {
                file: self.path.clone(),
                line,
                message,
            })
            .and_then(|t| fits(&t).map(|()| t));
        Some(match parsed {
            Ok(t) => {
                self.applied = t.clone();
                Change::Apply(t)
            }
            Err(e) => Change::Reject(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::targets::Target;

    fn ok(_: &Listing) -> Result<(), TargetsError> {
        Ok(())
    }

    fn t(port: u16) -> Target {
        Target {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
        }
    }

    fn l(targets: &[Target]) -> Listing {
        Listing::of(targets.to_vec())
    }

    fn watch(text: &str, applied: &[Target]) -> FileWatch {
        FileWatch::new(
            Path::new("/etc/ringlb/targets/web.txt"),
            text.into(),
            l(applied),
        )
    }

    /// Feeds `w` the readings `(ms, text)` at `t0 + ms`; what came of each.
    fn feed(w: &mut FileWatch, t0: Instant, readings: &[(u64, &str)]) -> Vec<Option<Change>> {
        readings
            .iter()
            .map(|(ms, text)| w.decide(Ok(text.to_string()), t0 + Duration::from_millis(*ms), ok))
            .collect()
    }

    #[test]
    fn a_change_is_handled_once_after_it_settles() {
        let t0 = Instant::now();
        let mut w = watch("127.0.0.1:1\n", &[t(1)]);
        let got = feed(
            &mut w,
            t0,
            &[
                (0, "127.0.0.1:1\n"),
                (250, "127.0.0.1:2\n"),
                (500, "127.0.0.1:2\n"),
                (750, "127.0.0.1:2\n"),
            ],
        );
        assert_eq!(
            got,
            vec![None, None, Some(Change::Apply(l(&[t(2)]))), None],
            "unchanged: nothing; new: waits one tick; then applied once"
        );
        assert_eq!(w.applied(), &l(&[t(2)]));
    }

    /// A writer that truncates the file, pauses, then writes it back: the
    /// empty file is never applied; it is said once.
    #[test]
    fn a_slow_rewrite_in_place_never_applies_the_empty_file() {
        let t0 = Instant::now();
        let mut w = watch("127.0.0.1:1\n", &[t(1)]);
        let got = feed(
            &mut w,
            t0,
            &[
                (0, ""),
                (250, ""),
                (500, ""),
                (750, ""),
                (1000, "127.0.0.1:1\n"),
                (1250, "127.0.0.1:1\n"),
            ],
        );
        assert_eq!(
            got,
            vec![None, Some(Change::Emptied), None, None, None, None]
        );
        assert_eq!(w.applied(), &l(&[t(1)]), "the set in service stayed");
    }

    #[test]
    fn a_file_that_stays_empty_applies_after_the_grace_and_a_comment_at_once() {
        let t0 = Instant::now();
        let mut w = watch("127.0.0.1:1\n", &[t(1)]);
        let grace = EMPTY_GRACE.as_millis() as u64;
        let got = feed(
            &mut w,
            t0,
            &[(0, ""), (250, ""), (250 + grace - 1, ""), (250 + grace, "")],
        );
        assert_eq!(
            got,
            vec![
                None,
                Some(Change::Emptied),
                None,
                Some(Change::Apply(l(&[])))
            ]
        );
        let mut w = watch("127.0.0.1:1\n", &[t(1)]);
        let got = feed(
            &mut w,
            t0,
            &[(0, "# scaled to zero\n"), (250, "# scaled to zero\n")],
        );
        assert_eq!(
            got,
            vec![None, Some(Change::Apply(l(&[])))],
            "a comment means no targets"
        );
    }

    /// A SIGHUP that found the file empty kept the set; the watch then
    /// gives the empty file its grace.
    #[test]
    fn an_empty_file_kept_over_by_a_reload_still_gets_its_grace() {
        let t0 = Instant::now();
        let mut w = watch("", &[t(1)]);
        let grace = EMPTY_GRACE.as_millis() as u64;
        let got = feed(&mut w, t0, &[(0, ""), (grace, "")]);
        assert_eq!(
            got,
            vec![Some(Change::Emptied), Some(Change::Apply(l(&[])))]
        );
    }

    /// The same set without its final newline is no change, and is not
    /// refused; a changed set without one is.
    #[test]
    fn a_dropped_final_newline_is_judged_by_the_set() {
        let t0 = Instant::now();
        let mut w = watch("127.0.0.1:1\n", &[t(1)]);
        let got = feed(&mut w, t0, &[(0, "127.0.0.1:1"), (250, "127.0.0.1:1")]);
        assert_eq!(
            got,
            vec![None, Some(Change::Apply(l(&[t(1)])))],
            "the same set"
        );
        let got = feed(
            &mut w,
            t0,
            &[
                (500, "127.0.0.1:1\n127.0.0.1:2"),
                (750, "127.0.0.1:1\n127.0.0.1:2"),
            ],
        );
        let Some(Some(Change::Reject(e))) = got.last() else {
            panic!("{got:?}");
        };
        assert!(e.message.contains("half-written"), "{e}");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn bad_files_are_reported_once_and_name_the_line() {
        let t0 = Instant::now();
        let mut w = watch("127.0.0.1:1\n", &[t(1)]);
        let text = "127.0.0.1:1\ngarbage here\n";
        let got = feed(&mut w, t0, &[(0, text), (250, text), (500, text)]);
        let Some(Change::Reject(e)) = &got[1] else {
            panic!("{got:?}");
        };
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("not HOST:PORT"), "{e}");
        assert_eq!(got[2], None, "reported once");
        assert_eq!(w.applied(), &l(&[t(1)]), "the last good set stays");
    }

    #[test]
    fn a_missing_file_is_an_error_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        let mut w = FileWatch::new(&path, "127.0.0.1:1\n".into(), l(&[t(1)]));
        let t0 = Instant::now();
        w.poll(t0, ok);
        let Some(Change::Reject(e)) = w.poll(t0, ok) else {
            panic!("a missing file is an error");
        };
        assert!(e.message.contains("cannot read"), "{e}");
        assert_eq!(e.line, 0);
        std::fs::write(&path, "127.0.0.1:3\n").unwrap();
        w.poll(t0, ok);
        assert_eq!(w.poll(t0, ok), Some(Change::Apply(l(&[t(3)]))));
    }
}
