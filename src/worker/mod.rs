//! Worker threads: one per core, pinned, each with its own io_uring runtime
//! ([`crate::rt`]) and its own listening sockets.

mod accept;
mod conn;
mod run;
mod session;

use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use std::sync::Arc;

use crate::metrics::ListenerStats;
use crate::metrics::{Slots, WorkerSlot};
use crate::proxy::pipe::{COPY_BUF, PipePool, Splice};
use crate::snapshot::SharedSnapshot;

/// What the control plane asks of a worker.
#[derive(Debug)]
pub enum Command {
    /// Start accepting on this socket.
    AddListener(BoundListener),
    /// Stop accepting on the listener of this name and close its socket.
    RemoveListener(Arc<str>),
    /// Listeners that keep their sockets under new names: `(from, to)`.
    RenameListeners(Vec<(Arc<str>, Arc<str>)>),
    /// Close every connection this worker proxies to `addr` for `group`.
    CloseTarget {
        group: Arc<str>,
        addr: std::net::SocketAddr,
    },
}

/// What a worker tells the control plane.
#[derive(Debug)]
pub enum Event {
    /// A connect to a target failed (a passive health failure).
    ConnectFailed {
        group: Arc<str>,
        addr: std::net::SocketAddr,
        error: String,
    },
}

/// One listener as a worker holds it.
#[derive(Debug)]
pub struct BoundListener {
    /// Its key in the snapshot's listeners; a rename keeps it.
    pub id: u64,
    /// For logs; a rename changes it.
    pub name: Arc<str>,
    pub socket: std::net::TcpListener,
    /// Counters, one slot per worker; the same for every worker's socket.
    pub stats: Arc<ListenerStats>,
}

/// What the control plane tells every worker about stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Serve.
    Run,
    /// Stop accepting; let open connections finish for up to this long.
    Drain(Duration),
    /// Close everything now (a second SIGTERM or SIGINT).
    Now,
}

/// Pipe capacity one worker may lend at once: 32 MiB, so two workers fit a
/// non-root user's 64 MiB of pipes (`fs.pipe-user-pages-soft`, 16,384 pages;
/// past it the kernel shrinks new pipes to 8 KiB). Past the cap a connection
/// copies through a buffer.
const PIPE_BYTES_PER_WORKER: usize = 32 << 20;
/// Pipes one worker may lend at once, however small.
const MAX_PIPES_PER_WORKER: usize = 512;

/// How many pipes of `pipe_size` bytes one worker may lend at once: 128 of
/// the default 256 KiB, 512 of 64 KiB, 32 of 1 MiB.
fn pipes_to_lend(pipe_size: usize) -> usize {
    (PIPE_BYTES_PER_WORKER / pipe_size.max(1)).clamp(1, MAX_PIPES_PER_WORKER)
}
/// Clean pipes a worker keeps for reuse.
pub const IDLE_PIPES_PER_WORKER: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "worker {worker}: cannot start an io_uring runtime: {source} (is io_uring disabled by seccomp or kernel.io_uring_disabled?)"
    )]
    Uring { worker: usize, source: io::Error },
    #[error("worker {worker}: cannot spawn thread: {source}")]
    Spawn { worker: usize, source: io::Error },
}

pub struct WorkerPlan {
    pub id: usize,
    /// CPU to pin to, if any.
    pub cpu: Option<usize>,
    pub listeners: Vec<BoundListener>,
}

/// What every worker shares with the control plane.
#[derive(Clone)]
pub struct Shared {
    pub snapshot: SharedSnapshot,
    pub events: mpsc::UnboundedSender<Event>,
    pub stop: watch::Receiver<Stop>,
    pub stats: Arc<Slots<WorkerSlot>>,
    /// When bytes move with splice(2) rather than by copy.
    pub splice: Splice,
    /// Bytes each pipe is asked to hold.
    pub pipe_size: usize,
    /// Provided buffers (of [`COPY_BUF`] bytes) in each worker's ring.
    pub ring_buffers: u16,
}

/// The control plane's handles on running workers.
pub struct Workers {
    pub threads: Vec<JoinHandle<()>>,
    pub commands: Vec<mpsc::UnboundedSender<Command>>,
}

impl Workers {
    /// Sends `make()` to every worker. A worker that is gone has stopped, and
    /// shutdown reports that; there is nothing more to do here.
    pub fn tell_all(&self, make: impl Fn() -> Command) {
        for tx in &self.commands {
            if tx.send(make()).is_err() {
                tracing::warn!("a worker is gone; command not delivered");
            }
        }
    }
}

/// Starts the workers and returns once each has its runtime up, or the first error.
pub fn start(plans: Vec<WorkerPlan>, shared: Shared) -> Result<Workers, RuntimeError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    let mut commands = Vec::new();
    let count = plans.len();
    for plan in plans {
        let id = plan.id;
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        commands.push(command_tx);
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("ringlb-w{id}"))
            .spawn(move || {
                if let Some(cpu) = plan.cpu
                    && let Err(e) = pin_to_cpu(cpu)
                {
                    tracing::warn!(worker = id, cpu, error = %e, "cannot pin worker to its CPU");
                }
                let rt =
                    match crate::rt::Runtime::with_buffers(shared.ring_buffers, COPY_BUF as u32) {
                        Ok(rt) => rt,
                        Err(source) => {
                            // The receiver outlives every worker's first message.
                            ready
                                .send(Err(RuntimeError::Uring { worker: id, source }))
                                .ok();
                            return;
                        }
                    };
                rt.block_on(async move {
                    let pipes = PipePool::new(
                        shared.splice,
                        pipes_to_lend(shared.pipe_size),
                        IDLE_PIPES_PER_WORKER,
                        shared.pipe_size,
                    );
                    let stop = shared.stop.clone();
                    let w = run::Worker::new(id, shared, pipes);
                    ready.send(Ok(())).ok();
                    drop(ready);
                    w.run(plan.listeners, command_rx, stop).await;
                });
            })
            .map_err(|source| RuntimeError::Spawn { worker: id, source })?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..count {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        }
    }
    Ok(Workers {
        threads: handles,
        commands,
    })
}

/// CPUs this process may run on (respects taskset and cpusets).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        set
    };
    // SAFETY: CPU_ISSET reads the set we own, within CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: builds a cpu_set_t on the stack and applies it to this thread only.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_to_lend_keeps_a_worker_within_32_mib() {
        assert_eq!(pipes_to_lend(64 << 10), 512);
        assert_eq!(pipes_to_lend(256 << 10), 128);
        assert_eq!(pipes_to_lend(1 << 20), 32);
    }
}
