//! The admin endpoint as the running process holds it: bound, served on its
//! own thread, moved by a SIGHUP, its socket handed to a process that takes
//! over.

use std::net::SocketAddr;

use tracing::{error, info};

use super::AppError;
use crate::admin;

/// Binds the admin endpoint's listener.
pub(super) fn bind_admin(addr: SocketAddr) -> Result<std::net::TcpListener, AppError> {
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| AppError::Admin { addr, source })
}

/// The admin endpoint, serving on its own thread's runtime.
pub(super) struct AdminTask {
    pub(super) addr: SocketAddr,
    pub(super) task: tokio::task::JoinHandle<()>,
    /// A copy of the listening socket, handed to a process that takes over.
    pub(super) handover: Option<std::os::fd::OwnedFd>,
}

impl AdminTask {
    /// Serves `listener` on the admin thread's runtime (`rt`).
    pub(super) fn start(
        rt: &tokio::runtime::Handle,
        listener: std::net::TcpListener,
        asks: tokio::sync::mpsc::Sender<admin::Ask>,
    ) -> Result<AdminTask, AppError> {
        let addr = listener.local_addr().map_err(|source| AppError::Admin {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let handover = listener.try_clone().ok().map(std::os::fd::OwnedFd::from);
        let listener = {
            let _on_its_runtime = rt.enter();
            tokio::net::TcpListener::from_std(listener)
                .map_err(|source| AppError::Admin { addr, source })?
        };
        let task = rt.spawn(admin::serve(listener, asks));
        info!(%addr, "admin listening");
        Ok(AdminTask {
            addr,
            task,
            handover,
        })
    }
}

/// Moves the admin endpoint after a SIGHUP changed `[admin] listen`. If the
/// new address cannot be bound, the old endpoint keeps serving.
pub(super) fn move_admin(
    rt: &tokio::runtime::Handle,
    admin: &mut AdminTask,
    wanted: SocketAddr,
    asks: &tokio::sync::mpsc::Sender<admin::Ask>,
) {
    let same = wanted == admin.addr || (wanted.port() == 0 && wanted.ip() == admin.addr.ip());
    if same {
        return;
    }
    match bind_admin(wanted).and_then(|l| AdminTask::start(rt, l, asks.clone())) {
        Ok(new) => {
            admin.task.abort();
            *admin = new;
        }
        Err(e) => {
            error!(error = %e, "admin endpoint not moved; it stays on {}", admin.addr)
        }
    }
}
