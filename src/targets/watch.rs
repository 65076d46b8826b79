//! Following a targets file that an autoscaler rewrites, by rename or in place.
//!
//! The file is read on every tick (they are small; see [`super::read`] for
//! what is refused without blocking). New content is handled only once two
//! consecutive reads agree, so a file caught mid-write is not applied; content
//! already handled (good or bad) is not handled again, so an unchanged file is
//! a no-op and a bad one is reported once.

use std::path::{Path, PathBuf};

use super::{Target, TargetsError, parse_checked, read, resolve};

#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    /// What the last tick read (or the read error), to see it settle.
    last_read: Option<Result<String, TargetsError>>,
    /// Content last handed to the caller, good or bad.
    handled: Option<Result<String, TargetsError>>,
    /// Content of the set in service.
    applied: String,
}

impl FileWatch {
    /// Watches `path`, whose content `applied` is in service: the text that
    /// was read and applied, not a fresh read, so a change written between
    /// the load and this call is still seen as a change.
    pub fn new(path: &Path, applied: String) -> Self {
        FileWatch {
            path: path.to_path_buf(),
            last_read: Some(Ok(applied.clone())),
            handled: Some(Ok(applied.clone())),
            applied,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The text of the set in service.
    pub fn applied(&self) -> &str {
        &self.applied
    }

    /// Reads the file; returns a settled, not yet handled change that also
    /// passes `fits` (the group's own limits). An `Ok` is taken as applied.
    pub fn poll(
        &mut self,
        fits: impl Fn(&[Target]) -> Result<(), TargetsError>,
    ) -> Option<Result<Vec<Target>, TargetsError>> {
        let now = read(&self.path);
        let settled = self.last_read.as_ref() == Some(&now);
        self.last_read = Some(now.clone());
        if !settled || self.handled.as_ref() == Some(&now) {
            return None;
        }
        self.handled = Some(now.clone());
        let text = match now {
            Err(e) => return Some(Err(e)),
            Ok(text) => text,
        };
        let changing = text != self.applied;
        let parsed = parse_checked(&text, changing, resolve)
            .map_err(|(line, message)| TargetsError {
                file: self.path.clone(),
                line,
                message,
            })
            .and_then(|t| fits(&t).map(|()| t));
        if parsed.is_ok() {
            self.applied = text;
        }
        Some(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_handled_once_after_it_settles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        std::fs::write(&path, "127.0.0.1:1\n").unwrap();
        let mut w = FileWatch::new(&path, "127.0.0.1:1\n".into());
        assert!(w.poll(|_| Ok(())).is_none(), "unchanged file is a no-op");
        std::fs::write(&path, "127.0.0.1:2\n").unwrap();
        assert!(
            w.poll(|_| Ok(())).is_none(),
            "first sight of new content waits one tick"
        );
        let t = w.poll(|_| Ok(())).unwrap().unwrap();
        assert_eq!(t[0].addr.port(), 2);
        assert_eq!(w.applied(), "127.0.0.1:2\n");
        assert!(
            w.poll(|_| Ok(())).is_none(),
            "handled content is not handled again"
        );
    }

    #[test]
    fn a_change_made_before_the_watch_started_is_still_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        // Loaded "port 1", then the file changed before the watch was made.
        std::fs::write(&path, "127.0.0.1:2\n").unwrap();
        let mut w = FileWatch::new(&path, "127.0.0.1:1\n".into());
        w.poll(|_| Ok(()));
        let t = w.poll(|_| Ok(())).expect("the change is seen").unwrap();
        assert_eq!(t[0].addr.port(), 2);
    }

    #[test]
    fn bad_files_are_reported_once_and_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        let mut w = FileWatch::new(&path, "127.0.0.1:1\n".into());
        for (text, line, words) in [
            ("127.0.0.1:1\n127.0.0.1:2", 2, "half-written"),
            ("127.0.0.1:1\ngarbage here\n", 2, "not HOST:PORT"),
        ] {
            std::fs::write(&path, text).unwrap();
            w.poll(|_| Ok(()));
            let e = w.poll(|_| Ok(())).unwrap().unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(words), "{text:?}: {e}");
            assert!(w.poll(|_| Ok(())).is_none(), "reported once");
        }
        assert_eq!(w.applied(), "127.0.0.1:1\n", "the last good set stays");
    }

    #[test]
    fn an_empty_file_is_an_empty_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        let mut w = FileWatch::new(&path, "127.0.0.1:1\n".into());
        std::fs::write(&path, "# scaled to zero\n").unwrap();
        w.poll(|_| Ok(()));
        assert_eq!(w.poll(|_| Ok(())).unwrap().unwrap(), vec![]);
    }

    #[test]
    fn a_missing_file_is_an_error_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        let mut w = FileWatch::new(&path, "127.0.0.1:1\n".into());
        w.poll(|_| Ok(()));
        let e = w.poll(|_| Ok(())).unwrap().unwrap_err();
        assert!(e.message.contains("cannot read"), "{e}");
        assert_eq!(e.line, 0);
        std::fs::write(&path, "127.0.0.1:3\n").unwrap();
        w.poll(|_| Ok(()));
        assert_eq!(w.poll(|_| Ok(())).unwrap().unwrap()[0].addr.port(), 3);
    }
}
