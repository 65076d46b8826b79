//! The running process's main loop: signals, ticks, probe results, worker
//! events, admin asks and takeovers, until it stops; then the shutdown.

use tracing::{info, warn};

use super::TICK;
use super::admin_endpoint::{AdminTask, move_admin};
use super::handover::{Handover, TAKEOVER_SETTLE, spawn_takeover_server};
use super::signals::Signals;
use crate::control::ControlPlane;
use crate::worker::{self, Stop};
use crate::{admin, notify, takeover};

/// The running process, as the main thread's loop sees it.
pub(super) struct Main {
    pub(super) cp: ControlPlane,
    pub(super) workers: worker::Workers,
    pub(super) signals: Signals,
    pub(super) admin: AdminTask,
    /// The admin endpoint's runtime (a thread of its own).
    pub(super) admin_rt: tokio::runtime::Handle,
    pub(super) ask_tx: tokio::sync::mpsc::Sender<admin::Ask>,
    pub(super) handover_tx: tokio::sync::mpsc::Sender<Handover>,
    /// Taking over: the old process's sockets until it has been told READY.
    pub(super) inherited: Option<takeover::Inherited>,
    pub(super) takeover_path: Option<std::path::PathBuf>,
    /// The READY hand-shake with the old process, while it runs.
    pub(super) letting_go:
        Option<tokio::task::JoinHandle<Result<std::path::PathBuf, takeover::TakeoverError>>>,
    /// The last STATUS= told to systemd.
    pub(super) status: String,
    /// `--address-file`.
    pub(super) address_file: Option<std::path::PathBuf>,
}

impl Main {
    /// Serves until a stop signal or a takeover; true when taken over.
    pub(super) async fn serve(
        &mut self,
        takeover_listener: Option<std::os::fd::OwnedFd>,
        mut inbox: crate::control::Inbox,
        mut events: tokio::sync::mpsc::UnboundedReceiver<worker::Event>,
        mut asks: tokio::sync::mpsc::Receiver<admin::Ask>,
        mut handovers: tokio::sync::mpsc::Receiver<Handover>,
    ) -> bool {
        self.status = self.cp.status_line();
        if let (Some(p), Some(fd)) = (&self.takeover_path, takeover_listener) {
            spawn_takeover_server(
                p.clone(),
                fd,
                self.handover_tx.clone(),
                self.cp.takeover_refused.clone(),
            );
        }
        // Taking over: READY to the old process once every group serves
        // (or TAKEOVER_SETTLE passed); then its takeover socket is ours.
        let settle_until = tokio::time::Instant::now() + TAKEOVER_SETTLE;
        if self.inherited.is_some() {
            notify::ready_as_main(&self.status);
        } else {
            notify::ready(&self.status);
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let watchdog_every = notify::watchdog_interval();
        let mut watchdog =
            tokio::time::interval(watchdog_every.unwrap_or(std::time::Duration::from_secs(3600)));
        loop {
            // Health flips waiting for their snapshot (they are paced).
            let publish_due = self.cp.publish_due();
            let publish_at =
                tokio::time::Instant::from_std(publish_due.unwrap_or_else(std::time::Instant::now));
            tokio::select! {
                name = self.signals.stop.next() => { info!("{name}: shutting down"); return false }
                _ = tokio::time::sleep_until(publish_at), if publish_due.is_some() => self.cp.flush(),
                _ = self.signals.hup.recv() => self.reload(),
                _ = self.signals.usr1.recv() => {
                    info!("SIGUSR1: reopening the connection log");
                    self.cp.reopen_access_log();
                }
                _ = tick.tick() => {
                    self.let_go_of_the_old_process(settle_until).await;
                    self.cp.tick(&self.workers);
                    let now = self.cp.status_line();
                    if now != self.status {
                        self.status = now;
                        notify::status(&self.status);
                    }
                }
                _ = watchdog.tick(), if watchdog_every.is_some() => notify::watchdog(),
                Some(r) = inbox.probes.recv() => self.cp.on_probe(r),
                Some(r) = inbox.names.recv() => self.cp.on_resolution(r, &self.workers),
                Some(e) = events.recv() => self.cp.on_event(e),
                Some(ask) = asks.recv() => {
                    // The asker may have gone; then there is nobody to answer.
                    let _gone = ask.reply.send(self.cp.answer(ask.route));
                }
                Some(h) = handovers.recv() => match h {
                    Handover::Offer(reply) => {
                        let admin_fd = self
                            .admin
                            .handover
                            .as_ref()
                            .and_then(|fd| fd.try_clone().ok())
                            .map(|fd| (self.cp.config().admin, fd));
                        let _gone = reply.send(Some(takeover::OfferOwned {
                            listeners: self.cp.offer(),
                            admin: admin_fd,
                        }));
                    }
                    Handover::Taken => {
                        info!("taken over by a new process: stop accepting, drain, exit");
                        return true;
                    }
                },
            }
        }
    }

    /// `--address-file`: the addresses bound now.
    pub(super) fn write_address_file(&self) {
        let Some(path) = &self.address_file else {
            return;
        };
        let listeners: serde_json::Map<String, serde_json::Value> = self
            .cp
            .listener_addrs()
            .into_iter()
            .map(|(name, addr)| (name, addr.to_string().into()))
            .collect();
        let body = serde_json::json!({
            "pid": std::process::id(),
            "admin": self.admin.addr.to_string(),
            "listeners": listeners,
        });
        crate::files::write_address_file(path, &body);
    }

    /// SIGHUP: reload the config, move the admin endpoint if it changed.
    fn reload(&mut self) {
        info!("SIGHUP: reloading config");
        notify::reloading();
        self.cp.reload_config(&self.workers);
        move_admin(
            &self.admin_rt,
            &mut self.admin,
            self.cp.config().admin,
            &self.ask_tx,
        );
        self.write_address_file();
        self.status = self.cp.status_line();
        notify::ready(&self.status);
    }

    /// Taking over: once every group serves (or `settle_until` passed), tell
    /// the old process READY; once it confirms, serve alone and offer this
    /// process's sockets to the next upgrade.
    async fn let_go_of_the_old_process(&mut self, settle_until: tokio::time::Instant) {
        if self.inherited.is_some()
            && (self.cp.every_group_serves() || tokio::time::Instant::now() >= settle_until)
            && let Some(i) = self.inherited.take()
        {
            self.letting_go = Some(tokio::task::spawn_blocking(move || i.ready()));
        }
        if !self.letting_go.as_ref().is_some_and(|h| h.is_finished()) {
            return;
        }
        let Some(h) = self.letting_go.take() else {
            return;
        };
        match h.await {
            Ok(Ok(p)) => {
                info!("the old process let go; this one serves alone");
                takeover::tell_upgrader();
                match takeover::listen(&p) {
                    Ok(fd) => spawn_takeover_server(
                        p,
                        fd,
                        self.handover_tx.clone(),
                        self.cp.takeover_refused.clone(),
                    ),
                    Err(e) => warn!(error = %e, "takeovers of this process are off"),
                }
            }
            Ok(Err(e)) => {
                warn!(error = %e, "the old process did not confirm; both may accept until it stops")
            }
            Err(e) => warn!(error = %e, "takeover hand-shake failed"),
        }
    }

    /// Stops accepting, lets the workers drain for `shutdown_timeout` (a
    /// second SIGTERM or SIGINT cuts it short, as with HAProxy and nginx),
    /// and joins them.
    pub(super) async fn shut_down(
        mut self,
        taken_over: bool,
        stop: tokio::sync::watch::Sender<Stop>,
    ) {
        self.cp.drop_handover();
        self.admin.handover = None;
        // After a takeover the new process is systemd's main one: this one
        // must not say STOPPING.
        if !taken_over {
            notify::stopping();
        }
        self.admin.task.abort();
        let grace = self.cp.config().runtime.shutdown_timeout;
        stop.send_replace(Stop::Drain(grace));
        let threads = self.workers.threads;
        let mut joined = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .map(|h| h.join().is_ok())
                .filter(|ok| !ok)
                .count()
        });
        let panicked = tokio::select! {
            r = &mut joined => r,
            name = self.signals.stop.next() => {
                warn!("{name} again: closing every connection now");
                stop.send_replace(Stop::Now);
                joined.await
            }
        };
        if panicked.map_or(true, |n| n > 0) {
            warn!("a worker panicked during shutdown");
        }
        self.cp.finish_access_log();
    }
}
