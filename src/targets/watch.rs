//! Following a targets file that an autoscaler rewrites, by rename or in place.
//!
//! The file is read on every tick (they are small). New content is handled
//! only once two consecutive reads agree, so a file caught mid-write is not
//! applied; content already handled (good or bad) is not handled again, so an
//! unchanged file is a no-op and a bad one is reported once.

use std::path::{Path, PathBuf};

use super::{Target, TargetsError, parse, resolve};

#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    /// What the last tick read (or the read error), to see it settle.
    last_read: Option<Result<String, String>>,
    /// Content last handed to the caller.
    handled: Option<Result<String, String>>,
}

impl FileWatch {
    /// Watches `path`, whose current content `applied` is already in service.
    pub fn new(path: &Path, applied: Option<String>) -> Self {
        let applied = applied.map(Ok);
        FileWatch {
            path: path.to_path_buf(),
            last_read: applied.clone(),
            handled: applied,
        }
    }

    /// Reads the file; returns a settled, not yet handled change.
    pub fn poll(&mut self) -> Option<Result<Vec<Target>, TargetsError>> {
        let now = std::fs::read_to_string(&self.path).map_err(|e| e.to_string());
        let settled = self.last_read.as_ref() == Some(&now);
        self.last_read = Some(now.clone());
        if !settled || self.handled.as_ref() == Some(&now) {
            return None;
        }
        self.handled = Some(now.clone());
        let err = |line, message| TargetsError {
            file: self.path.clone(),
            line,
            message,
        };
        Some(match now {
            Err(e) => Err(err(0, format!("cannot read targets file: {e}"))),
            Ok(text) => parse_reload(&text).map_err(|(line, m)| err(line, m)),
        })
    }
}

/// The stricter rules for a file that replaces a set already in service: it
/// must list at least one target and end with a newline (a file cut short
/// mid-write usually does not).
pub fn parse_reload(text: &str) -> Result<Vec<Target>, (usize, String)> {
    let lines = text.lines().count();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err((
            lines,
            "last line has no newline: the file looks half-written (write a temp file and rename it)".into(),
        ));
    }
    let targets = parse(text, resolve)?;
    if targets.is_empty() {
        return Err((
            lines.max(1),
            "no targets: an empty file would take every target out of service, so it is refused"
                .into(),
        ));
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_handled_once_after_it_settles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        std::fs::write(&path, "127.0.0.1:1\n").unwrap();
        let mut w = FileWatch::new(&path, Some("127.0.0.1:1\n".into()));
        assert!(w.poll().is_none(), "unchanged file is a no-op");
        std::fs::write(&path, "127.0.0.1:2\n").unwrap();
        assert!(
            w.poll().is_none(),
            "first sight of new content waits one tick"
        );
        let t = w.poll().unwrap().unwrap();
        assert_eq!(t[0].addr.port(), 2);
        assert!(w.poll().is_none(), "handled content is not handled again");
    }

    #[test]
    fn bad_files_are_reported_once_and_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        let mut w = FileWatch::new(&path, None);
        for (text, line, words) in [
            ("127.0.0.1:1\n127.0.0.1:2", 2, "half-written"),
            ("# nothing\n", 1, "no targets"),
            ("", 1, "no targets"),
            ("127.0.0.1:1\ngarbage here\n", 2, "not HOST:PORT"),
        ] {
            std::fs::write(&path, text).unwrap();
            w.poll();
            let e = w.poll().unwrap().unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(words), "{text:?}: {e}");
            assert!(w.poll().is_none(), "reported once");
        }
    }

    #[test]
    fn a_missing_file_is_an_error_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        let mut w = FileWatch::new(&path, Some("127.0.0.1:1\n".into()));
        w.poll();
        assert!(
            w.poll()
                .unwrap()
                .unwrap_err()
                .message
                .contains("cannot read")
        );
        std::fs::write(&path, "127.0.0.1:3\n").unwrap();
        w.poll();
        assert_eq!(w.poll().unwrap().unwrap()[0].addr.port(), 3);
    }
}
