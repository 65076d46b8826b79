//! The running process's part in a zero-downtime upgrade: serving takeover
//! requests (a thread of its own), and, when this process takes over, the
//! sockets it inherits.

use std::path::Path;
use std::sync::Arc;

use tracing::{info, warn};

use super::AppError;
use crate::takeover;

/// What a takeover server thread asks the main loop.
pub(super) enum Handover {
    /// The sockets to hand over (None: stopping, no takeover now).
    Offer(tokio::sync::oneshot::Sender<Option<takeover::OfferOwned>>),
    /// The new process is ready: stop accepting, drain, exit.
    Taken,
}

/// Serves takeover requests on `fd` from a thread of its own.
pub(super) fn spawn_takeover_server(
    path: std::path::PathBuf,
    fd: std::os::fd::OwnedFd,
    to_main: tokio::sync::mpsc::Sender<Handover>,
    refused: Arc<std::sync::atomic::AtomicU64>,
) {
    let spawned = std::thread::Builder::new()
        .name("ringlb-takeover".into())
        .spawn(move || {
            let ask = to_main.clone();
            takeover::serve(
                &path,
                fd,
                move || {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    ask.blocking_send(Handover::Offer(tx)).ok()?;
                    rx.blocking_recv().ok().flatten()
                },
                move || {
                    let _stopping = to_main.blocking_send(Handover::Taken);
                },
                move || {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                },
            );
        });
    if let Err(e) = spawned {
        warn!(error = %e, "no thread for the takeover socket; takeovers are off");
    }
}

/// How long a process taking over waits for its targets' first passing
/// probes before it tells the old process to stop accepting.
pub(super) const TAKEOVER_SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// With `--takeover`, the sockets of the ringlb running with the same
/// `[runtime] takeover_socket`.
pub(super) fn inherit(
    path: &Path,
    takeover_path: Option<&Path>,
    takeover: bool,
) -> Result<Option<takeover::Inherited>, AppError> {
    match (takeover_path, takeover) {
        (None, true) => Err(AppError::Takeover(format!(
            "{}: --takeover needs [runtime] takeover_socket (the running ringlb's)",
            path.display()
        ))),
        (Some(p), true) => {
            let i = takeover::take(p).map_err(|e| AppError::Takeover(e.to_string()))?;
            info!(
                listeners = i.listeners.len(),
                "took over the running ringlb's sockets"
            );
            Ok(Some(i))
        }
        _ => Ok(None),
    }
}
