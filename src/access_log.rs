//! The connection log (`[access_log]`): one line per connection when it
//! ends, saying who, where, how long, how many bytes each way, and how it
//! ended ([`End`], in the same words as `ringlb_connections_closed_total`'s
//! `reason` label).
//!
//! Never in the way of traffic: a worker hands each finished [`Record`] to a
//! writer thread through a bounded queue and never waits; when the queue is
//! full (the disk cannot keep up), the line is dropped and counted. The
//! writer formats, buffers and writes, flushing whenever the queue runs dry;
//! a write that fails (a full disk) loses its lines, counted too, and is
//! said once per episode. `SIGUSR1` reopens the file (log rotation).

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::oserror::Shortage;

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client ended its side first (end of stream), then the target.
    ClientClosed,
    /// The target ended its side first.
    TargetClosed,
    /// No byte moved either way for `idle_timeout`.
    IdleTimeout,
    /// An error on the client's side (a reset, mostly), passed on to the target.
    ClientReset,
    /// An error on the target's side, passed on to the client.
    TargetReset,
    /// Every connect tried failed (`attempts` says how many).
    ConnectFailed,
    /// No target could take it: the group has none, or none is usable, or
    /// its target was taken out while it connected.
    NoTarget,
    /// The client is outside the listener's `allow` list.
    NotAllowed,
    /// The listener was at `max_connections`.
    MaxConnections,
    /// Its client had `max_connections_per_client` open.
    ClientLimit,
    /// Its client passed `connection_rate_per_client`.
    ClientRate,
    /// ringlb had no descriptor, memory or local port left.
    LocalResources,
    /// Its target's `deregistration_delay` ran out.
    Deregistered,
    /// ringlb stopped, and its `shutdown_timeout` ran out.
    Shutdown,
}

impl End {
    /// Every way to end, in the order metrics list them.
    pub const ALL: [End; 14] = [
        End::ClientClosed,
        End::TargetClosed,
        End::IdleTimeout,
        End::ClientReset,
        End::TargetReset,
        End::ConnectFailed,
        End::NoTarget,
        End::NotAllowed,
        End::MaxConnections,
        End::ClientLimit,
        End::ClientRate,
        End::LocalResources,
        End::Deregistered,
        End::Shutdown,
    ];

    /// Its word, in the log and as the metric label.
    pub fn word(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::TargetClosed => "target_closed",
            End::IdleTimeout => "idle_timeout",
            End::ClientReset => "client_reset",
            End::TargetReset => "target_reset",
            End::ConnectFailed => "connect_failed",
            End::NoTarget => "no_target",
            End::NotAllowed => "not_allowed",
            End::MaxConnections => "max_connections",
            End::ClientLimit => "client_limit",
            End::ClientRate => "client_rate",
            End::LocalResources => "local_resources",
            End::Deregistered => "deregistered",
            End::Shutdown => "shutdown",
        }
    }

    /// Its place in [`End::ALL`] (the per-worker counters' index).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One connection's line.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// When it ended.
    pub at: SystemTime,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub group: Option<Arc<str>>,
    pub target: Option<SocketAddr>,
    /// How long its (last) connect to the target took.
    pub connect: Option<Duration>,
    /// From accept to the end.
    pub duration: Duration,
    /// Bytes from the client to the target, and back.
    pub up: u64,
    pub down: u64,
    /// Connects tried.
    pub attempts: u32,
    pub end: End,
}

/// What a line looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One readable line.
    Text,
    /// One JSON object a line, for log shippers.
    Json,
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// ringlb's own stderr (the journal under systemd), beside its log.
    Stderr,
    /// A file of its own, appended to.
    File(PathBuf),
}

/// `[access_log]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub to: Destination,
    pub format: Format,
    /// One connection in this many is logged (1: every one).
    pub every: u32,
}

/// Lines that may wait for the writer; past it they are dropped. At most
/// this many entries (about 200 bytes each) are held: 6 MiB.
const QUEUE: usize = 32_768;

/// How often the writer takes what is queued. Workers never wake it: it
/// sleeps this long, then writes a batch (at most this late), so a line
/// costs a worker no system call.
const WRITE_EVERY: Duration = Duration::from_millis(50);

enum Msg {
    Line(Box<Entry>),
    Reopen,
    /// Write what came before, then say so.
    Finish(std::sync::mpsc::Sender<()>),
}

/// One connection's line in the making, from accept to its end: built by
/// its worker, handed over whole (no copy) when the connection ends.
pub struct Entry {
    sink: Arc<AccessLog>,
    started: std::time::Instant,
    /// When it ended, by the worker's clock; the writer turns it into
    /// wall-clock time (the worker reads no clock for it).
    ended: std::time::Instant,
    pub record: Record,
    /// Bytes up and down, which the proxy leaves here when it ends.
    pub bytes: std::cell::Cell<[u64; 2]>,
}

impl Entry {
    /// A connection accepted at `started` from `client` on `listener`.
    pub fn new(
        sink: &Arc<AccessLog>,
        listener: &Arc<str>,
        client: SocketAddr,
        started: std::time::Instant,
    ) -> Box<Entry> {
        Box::new(Entry {
            sink: sink.clone(),
            started,
            ended: started,
            record: Record {
                at: UNIX_EPOCH,
                listener: listener.clone(),
                client,
                group: None,
                target: None,
                connect: None,
                duration: Duration::ZERO,
                up: 0,
                down: 0,
                attempts: 0,
                end: End::Shutdown,
            },
            bytes: std::cell::Cell::new([0, 0]),
        })
    }

    /// It ended, `end`, at `now` (the worker's clock): the line goes to the
    /// writer, or is dropped and counted if the writer is behind.
    pub fn finish(mut self: Box<Self>, end: End, now: std::time::Instant) {
        let [up, down] = self.bytes.get();
        self.ended = now;
        let r = &mut self.record;
        (r.up, r.down, r.end) = (up, down, end);
        r.duration = now.saturating_duration_since(self.started);
        let sink = self.sink.clone();
        sink.send(self);
    }
}

/// The log as workers hold it: the queue to its writer.
pub struct AccessLog {
    settings: Settings,
    tx: SyncSender<Msg>,
    /// Lines dropped: the queue was full, or their write failed.
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("settings", &self.settings)
            .finish()
    }
}

impl AccessLog {
    /// Opens the destination (an error here is an error at start) and
    /// starts the writer thread. Lines dropped are counted in `dropped`,
    /// which outlives any one log (a SIGHUP may start a new one).
    pub fn start(settings: Settings, dropped: Arc<AtomicU64>) -> io::Result<Arc<AccessLog>> {
        let out = open(&settings.to)?;
        let (tx, rx) = sync_channel(QUEUE);
        let writer = Writer {
            to: settings.to.clone(),
            format: settings.format,
            out,
            dropped: dropped.clone(),
            failing: Shortage::default(),
        };
        std::thread::Builder::new()
            .name("ringlb-accesslog".into())
            .spawn(move || writer.run(rx))?;
        Ok(Arc::new(AccessLog {
            settings,
            tx,
            dropped,
        }))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether the connection numbered `n` (by its worker) is logged.
    pub fn sampled(&self, n: u64) -> bool {
        self.settings.every <= 1 || n.is_multiple_of(u64::from(self.settings.every))
    }

    /// Hands a line to the writer, or drops it (counted) if the writer is
    /// behind. Never waits, and never wakes the writer.
    fn send(&self, e: Box<Entry>) {
        match self.tx.try_send(Msg::Line(e)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// At shutdown, once every connection has ended: waits (at most a
    /// second) until the writer has written every line queued.
    pub fn finish(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.tx.send(Msg::Finish(done)).is_ok() {
            // Gone or slow: nothing more to wait for.
            let _written_or_gone = wait.recv_timeout(Duration::from_secs(1));
        }
    }

    /// Reopens the file (after log rotation moved it); best effort.
    pub fn reopen(&self) {
        // A full queue means the writer is busy: it reopens at the next
        // SIGUSR1 then. Nothing else can fail.
        let _busy_or_gone = self.tx.try_send(Msg::Reopen);
    }
}

/// Opens where lines go: stderr, or a file appended to (created `0640`; a
/// link at the path is not followed).
fn open(to: &Destination) -> io::Result<Box<dyn Write + Send>> {
    Ok(match to {
        Destination::Stderr => Box::new(io::stderr()),
        Destination::File(p) => Box::new(open_file(p)?),
    })
}

/// Opens `path` to append lines to, as the writer does: what `check` and a
/// SIGHUP try before they accept a config.
pub fn open_file(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| {
            if f.metadata()?.file_type().is_file() {
                Ok(f)
            } else {
                Err(io::Error::other("not a regular file"))
            }
        })
}

struct Writer {
    to: Destination,
    format: Format,
    out: Box<dyn Write + Send>,
    dropped: Arc<AtomicU64>,
    /// Writes failing (a full disk), said once an episode.
    failing: Shortage,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut buf = String::with_capacity(64 << 10);
        let mut lines = 0u64;
        loop {
            std::thread::sleep(WRITE_EVERY);
            // One reading of each clock per batch dates every line in it.
            let (wall, mono) = (SystemTime::now(), std::time::Instant::now());
            loop {
                match rx.try_recv() {
                    Ok(Msg::Line(mut e)) => {
                        e.record.at = wall - mono.saturating_duration_since(e.ended);
                        format_line(&mut buf, &e.record, self.format);
                        lines += 1;
                        if buf.len() >= 60 << 10 {
                            self.flush(&mut buf, &mut lines);
                        }
                    }
                    Ok(Msg::Reopen) => {
                        self.flush(&mut buf, &mut lines);
                        self.reopen();
                    }
                    Ok(Msg::Finish(done)) => {
                        self.flush(&mut buf, &mut lines);
                        // The one waiting may have given up.
                        let _told_or_gone = done.send(());
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    // Every AccessLog handle is gone (a SIGHUP replaced
                    // it, or ringlb stopped): what was queued is written.
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        self.flush(&mut buf, &mut lines);
                        return;
                    }
                }
            }
            self.flush(&mut buf, &mut lines);
        }
    }

    fn flush(&mut self, buf: &mut String, lines: &mut u64) {
        if buf.is_empty() {
            return;
        }
        let written = self
            .out
            .write_all(buf.as_bytes())
            .and_then(|()| self.out.flush());
        let now = std::time::Instant::now();
        match written {
            Ok(()) => {
                if let Some(ended) = self.failing.went_well(now) {
                    tracing::info!(lost = ended.count, "the access log writes again");
                }
            }
            Err(e) => {
                self.dropped.fetch_add(*lines, Ordering::Relaxed);
                if self.failing.struck(now, *lines) {
                    tracing::warn!(error = %e, "cannot write the access log; its lines are dropped (and counted) until it can");
                }
            }
        }
        buf.clear();
        *lines = 0;
    }

    fn reopen(&mut self) {
        match open(&self.to) {
            Ok(out) => {
                self.out = out;
                tracing::info!("access log reopened");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reopen the access log; it goes on writing to the file it had")
            }
        }
    }
}

/// Appends `r` to `out` as one line. Numbers and IPv4 addresses are
/// written digit by digit, not through `fmt`: the writer formats every
/// connection's line, and this is most of its work.
pub fn format_line(out: &mut String, r: &Record, format: Format) {
    match format {
        Format::Text => {
            write_time(out, r.at);
            out.push(' ');
            out.push_str(&r.listener);
            out.push(' ');
            push_addr(out, r.client);
            out.push_str(" -> ");
            out.push_str(r.group.as_deref().unwrap_or("-"));
            out.push('/');
            match r.target {
                Some(t) => push_addr(out, t),
                None => out.push('-'),
            }
            out.push_str(" connect=");
            match r.connect {
                Some(c) => {
                    tenths_of_ms(out, c);
                    out.push_str("ms");
                }
                None => out.push('-'),
            }
            out.push_str(" duration=");
            tenths_of_ms(out, r.duration);
            out.push_str("ms up=");
            push_u64(out, r.up);
            out.push_str(" down=");
            push_u64(out, r.down);
            out.push_str(" attempts=");
            push_u64(out, u64::from(r.attempts));
            out.push_str(" end=");
            out.push_str(r.end.word());
            out.push('\n');
        }
        Format::Json => {
            out.push_str("{\"time\":\"");
            write_time(out, r.at);
            out.push_str("\",\"listener\":");
            json_str(out, &r.listener);
            out.push_str(",\"client\":\"");
            push_addr(out, r.client);
            out.push_str("\",\"group\":");
            match r.group.as_deref() {
                Some(g) => json_str(out, g),
                None => out.push_str("null"),
            }
            out.push_str(",\"target\":");
            match r.target {
                Some(t) => {
                    out.push('"');
                    push_addr(out, t);
                    out.push('"');
                }
                None => out.push_str("null"),
            }
            out.push_str(",\"connect_ms\":");
            match r.connect {
                Some(c) => thousandths_of_ms(out, c),
                None => out.push_str("null"),
            }
            out.push_str(",\"duration_ms\":");
            thousandths_of_ms(out, r.duration);
            out.push_str(",\"bytes_up\":");
            push_u64(out, r.up);
            out.push_str(",\"bytes_down\":");
            push_u64(out, r.down);
            out.push_str(",\"attempts\":");
            push_u64(out, u64::from(r.attempts));
            out.push_str(",\"end\":\"");
            out.push_str(r.end.word());
            out.push_str("\"}\n");
        }
    }
}

/// `n` in decimal.
fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(d as char);
    }
}

/// `n` in decimal, at least two digits.
fn push_2(out: &mut String, n: u64) {
    if n < 10 {
        out.push('0');
    }
    push_u64(out, n);
}

/// An address as `Display` writes it; IPv4 digit by digit.
fn push_addr(out: &mut String, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(octet));
            }
            out.push(':');
            push_u64(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            // Infallible: writing into a String.
            let _ = write!(out, "{a}");
        }
    }
}

/// `d` in milliseconds with one decimal ("12.3"), by integer arithmetic.
fn tenths_of_ms(out: &mut String, d: Duration) {
    let tenths = (d.as_micros() as u64 + 50) / 100;
    push_u64(out, tenths / 10);
    out.push('.');
    push_u64(out, tenths % 10);
}

/// `d` in milliseconds with three decimals ("12.345").
fn thousandths_of_ms(out: &mut String, d: Duration) {
    let us = d.as_micros() as u64;
    push_u64(out, us / 1000);
    out.push('.');
    let frac = us % 1000;
    if frac < 100 {
        out.push('0');
    }
    push_2(out, frac);
}

/// `s` as a JSON string (names are the config's: escaping is rare).
fn json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::Value::from(s).to_string());
    }
}

/// `2026-12-01T23:50:00.123Z`.
fn write_time(out: &mut String, at: SystemTime) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days as i64);
    push_u64(out, y.max(0) as u64);
    out.push('-');
    push_2(out, u64::from(m));
    out.push('-');
    push_2(out, u64::from(d));
    out.push('T');
    push_2(out, rest / 3600);
    out.push(':');
    push_2(out, rest / 60 % 60);
    out.push(':');
    push_2(out, rest % 60);
    out.push('.');
    let ms = u64::from(since.subsec_millis());
    if ms < 100 {
        out.push('0');
    }
    push_2(out, ms);
    out.push('Z');
}

/// The calendar date of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            at: UNIX_EPOCH + Duration::from_millis(1_764_633_000_123),
            listener: "web".into(),
            client: "127.0.0.1:50412".parse().unwrap(),
            group: Some("web".into()),
            target: Some("127.0.0.1:6400".parse().unwrap()),
            connect: Some(Duration::from_micros(420)),
            duration: Duration::from_micros(12_345),
            up: 120,
            down: 4200,
            attempts: 1,
            end: End::ClientClosed,
        }
    }

    #[test]
    fn a_text_line_says_who_where_how_long_how_much_and_how_it_ended() {
        let mut out = String::new();
        format_line(&mut out, &record(), Format::Text);
        assert_eq!(
            out,
            "2025-12-01T23:50:00.123Z web 127.0.0.1:50412 -> web/127.0.0.1:6400 connect=0.4ms duration=12.3ms up=120 down=4200 attempts=1 end=client_closed\n"
        );
        let refused = Record {
            group: None,
            target: None,
            connect: None,
            attempts: 0,
            end: End::NotAllowed,
            ..record()
        };
        out.clear();
        format_line(&mut out, &refused, Format::Text);
        assert!(out.contains(" -> -/- connect=- "), "{out}");
        assert!(out.ends_with(" end=not_allowed\n"), "{out}");
    }

    #[test]
    fn a_json_line_is_one_object_with_every_field() {
        let mut out = String::new();
        format_line(&mut out, &record(), Format::Json);
        assert!(out.ends_with("}\n") && out.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["time"], "2025-12-01T23:50:00.123Z");
        assert_eq!(v["listener"], "web");
        assert_eq!(v["target"], "127.0.0.1:6400");
        assert_eq!(v["bytes_down"], 4200);
        assert_eq!(v["end"], "client_closed");
        assert_eq!(v["connect_ms"], 0.42);
        let none = Record {
            target: None,
            connect: None,
            ..record()
        };
        out.clear();
        format_line(&mut out, &none, Format::Json);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v["target"].is_null() && v["connect_ms"].is_null());
    }

    #[test]
    fn numbers_and_addresses_are_written_as_display_writes_them() {
        for n in [0u64, 7, 10, 99, 100, 12_345, u64::MAX] {
            let mut out = String::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:6400",
            "255.255.255.255:65535",
            "[::1]:6400",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let mut out = String::new();
            push_addr(&mut out, a);
            assert_eq!(out, a.to_string());
        }
        let mut out = String::new();
        thousandths_of_ms(&mut out, Duration::from_micros(12_005));
        assert_eq!(out, "12.005");
    }

    #[test]
    fn dates_are_the_calendars() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29), "a leap day");
        assert_eq!(civil(20_423), (2025, 12, 1));
    }

    #[test]
    fn every_end_has_a_word_and_its_index() {
        for (i, e) in End::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert!(!e.word().is_empty());
        }
    }

    /// A full queue never blocks a worker: the line is dropped and counted.
    #[test]
    fn a_writer_that_cannot_keep_up_costs_lines_not_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let dropped = Arc::new(AtomicU64::new(0));
        let settings = Settings {
            to: Destination::File(path.clone()),
            format: Format::Text,
            every: 1,
        };
        let log = AccessLog::start(settings, dropped.clone()).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..(QUEUE * 4) {
            let e = Entry::new(&log, &"web".into(), "127.0.0.1:1".parse().unwrap(), started);
            e.finish(End::ClientClosed, started);
        }
        assert!(started.elapsed() < Duration::from_secs(5), "send waited");
        drop(log);
        // The writer ends once its handle is gone, having written what it took.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let written = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
            if written + dropped.load(Ordering::Relaxed) == (QUEUE * 4) as u64 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{written} written");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
