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
