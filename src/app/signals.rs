//! The signals ringlb acts on: SIGTERM and SIGINT stop it, SIGHUP reloads,
//! SIGUSR1 reopens the connection log's file.

use tokio::signal::unix::{SignalKind, signal};

use super::AppError;

/// The signals ringlb acts on, installed before anything is bound so a
/// signal sent the moment it is ready is never lost.
pub(super) struct Signals {
    pub(super) stop: StopSignals,
    pub(super) hup: tokio::signal::unix::Signal,
    pub(super) usr1: tokio::signal::unix::Signal,
}

/// SIGTERM and SIGINT: both mean stop.
pub(super) struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn install() -> Result<Signals, AppError> {
        let sig = |kind| {
            signal(kind).map_err(|source| AppError::Io {
                what: "signal handler",
                source,
            })
        };
        Ok(Signals {
            stop: StopSignals {
                term: sig(SignalKind::terminate())?,
                int: sig(SignalKind::interrupt())?,
            },
            hup: sig(SignalKind::hangup())?,
            usr1: sig(SignalKind::user_defined1())?,
        })
    }
}

impl StopSignals {
    /// The next SIGTERM or SIGINT, by name.
    pub(super) async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
