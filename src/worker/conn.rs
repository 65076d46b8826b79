//! One connection as its worker accounts for it, from accept to its end,
//! however it ends (its session returns, or is dropped: a deregistration
//! deadline, the shutdown): counted by how it ended
//! (`ringlb_connections_closed_total`), and, when the connection log is on
//! and samples it, logged as one [`crate::access_log::Record`].

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::run::Worker;
use crate::access_log::{AccessLog, End, Entry};
use crate::client_limits::Admitted;
use crate::metrics::{ListenerSlot, ListenerStats, bump, decrement};
use crate::rt;

/// A connection registered with its worker (so a command can close it). Its
/// drop removes it, counts how it ended and logs it.
pub(super) struct Conn {
    pub(super) worker: Rc<Worker>,
    pub(super) key: usize,
    pub(super) listener: Arc<ListenerStats>,
    /// How it ended, once known; dropped without one, it was closed by its
    /// worker (a deregistered target) or at shutdown.
    end: Cell<Option<End>>,
    /// Its log line in the making, when it has one. Boxed: most connections
    /// have none, and every idle one carries the field.
    log: Option<Box<Entry>>,
    /// Where its client is counted, on a listener with per-client limits
    /// (in the listener's table).
    client: Admitted,
}

impl Conn {
    /// Registers a connection just accepted from `client` on `listener`;
    /// `log` when the connection log samples it.
    pub(super) fn new(
        worker: &Rc<Worker>,
        key: usize,
        listener: &Arc<ListenerStats>,
        name: &Arc<str>,
        client: SocketAddr,
        log: Option<&Arc<AccessLog>>,
        counted: Admitted,
    ) -> Conn {
        Conn {
            worker: worker.clone(),
            key,
            listener: listener.clone(),
            end: Cell::new(None),
            log: log.map(|sink| Entry::new(sink, name, client, rt::time::now())),
            client: counted,
        }
    }

    /// How it ended (the first word stands).
    pub(super) fn ended(&self, end: End) {
        if self.end.get().is_none() {
            self.end.set(Some(end));
        }
    }

    /// A connect to `target` of `group` is about to be tried.
    pub(super) fn attempt(&mut self, group: &Arc<str>, target: SocketAddr) {
        if let Some(e) = self.log.as_mut() {
            e.record.attempts += 1;
            e.record.group = Some(group.clone());
            e.record.target = Some(target);
        }
    }

    /// The last connect tried took `took`.
    pub(super) fn connected_in(&mut self, took: Duration) {
        if let Some(e) = self.log.as_mut() {
            e.record.connect = Some(took);
        }
    }

    /// Where the proxy leaves the bytes it moved, when they are logged.
    pub(super) fn tally(&self) -> Option<&Cell<[u64; 2]>> {
        self.log.as_ref().map(|e| &e.bytes)
    }

    fn slot(&self) -> &ListenerSlot {
        self.listener.slots.get(self.worker.id)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        decrement(&self.slot().active);
        self.listener.close_one();
        if let Some(table) = self.listener.clients.get() {
            table.release(self.client);
        }
        let mut sessions = self.worker.sessions.borrow_mut();
        let closed_by_worker = sessions.try_remove(self.key).is_some_and(|e| e.closing);
        if sessions.is_empty() {
            self.worker.drained.notify_waiters();
        }
        drop(sessions);
        let end = self.end.get().unwrap_or(if closed_by_worker {
            End::Deregistered
        } else {
            End::Shutdown
        });
        bump(&self.slot().closed[end.index()], 1);
        if let Some(e) = self.log.take() {
            e.finish(end, rt::time::now());
        }
    }
}

/// A client closed at accept, before it had a session: counted, and logged
/// if the connection log samples it.
pub(super) fn refused(
    slot: &ListenerSlot,
    listener: &Arc<str>,
    client: SocketAddr,
    end: End,
    log: Option<&Arc<AccessLog>>,
) {
    bump(&slot.closed[end.index()], 1);
    if let Some(sink) = log {
        let now = rt::time::now();
        Entry::new(sink, listener, client, now).finish(end, now);
    }
}
