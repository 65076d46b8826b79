//! Where ringlb's own log goes and how it looks: stderr, one line per event,
//! `time LEVEL message key=value...`. Under systemd, when `JOURNAL_STREAM`
//! names the very stream stderr is (systemd sets it so a program can tell
//! its stderr goes to the journal, not to a terminal or a file a user
//! redirected it to), each line starts with its syslog priority (`<3>` error,
//! `<4>` warning, `<6>` info, `<7>` debug: journald reads it as the entry's
//! priority, so `journalctl -p warning` works) and carries no timestamp of
//! its own, since the journal stamps every entry.

use std::fmt;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, time::SystemTime};
use tracing_subscriber::registry::LookupSpan;

/// Starts the log with `filter`.
pub fn init(filter: EnvFilter) {
    // fstat of stderr itself (the journal's end is a socket, which cannot
    // be opened by path).
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| std::fs::File::from(fd).metadata())
        .ok();
    let journal = stderr.is_some_and(|m| {
        to_journal(
            std::env::var("JOURNAL_STREAM").ok().as_deref(),
            m.dev(),
            m.ino(),
        )
    });
    let base = tracing_subscriber::fmt()
        .compact()
        .with_target(false)
        .with_ansi(!journal && std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if journal {
        let plain = format::Format::default()
            .compact()
            .with_target(false)
            .with_ansi(false)
            .without_time();
        base.event_format(Journal(plain)).init();
    } else {
        base.with_timer(SystemTime).init();
    }
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`, as systemd writes it) names
/// the stream whose device and inode are `dev` and `ino`.
pub fn to_journal(journal_stream: Option<&str>, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.and_then(|v| v.trim().split_once(':')) else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// The syslog priority journald reads from a line's `<N>` prefix.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// A line format with the event's priority in front.
struct Journal<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journal<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stream_systemd_named_is_the_journal() {
        assert!(to_journal(Some("8:1234"), 8, 1234));
        assert!(
            !to_journal(Some("8:1234"), 8, 1235),
            "stderr was redirected"
        );
        assert!(!to_journal(Some("garbage"), 8, 1234));
        assert!(!to_journal(None, 8, 1234));
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::TRACE), 7);
    }
}
