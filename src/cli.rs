//! Command line: `ringlb run`, `ringlb check`, `ringlb --version`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub const DEFAULT_CONFIG: &str = "/etc/ringlb/ringlb.toml";
pub const DEFAULT_AUTOSCALE_CONFIG: &str = "/etc/ringlb/autoscale.toml";

#[derive(Debug, Parser)]
#[command(
    name = "ringlb",
    version,
    about = "Layer-4 TCP load balancer on io_uring, one worker per core"
)]
pub struct Cli {
    /// Log level or filter (e.g. "debug", "info,ringlb=debug"); overrides RUST_LOG.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run in the foreground (this is what systemd runs).
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Take the listening sockets over from the ringlb running with the
        /// same `[runtime] takeover_socket` (zero-downtime upgrade); it then
        /// drains and exits.
        #[arg(long)]
        takeover: bool,
        /// Once ready (and after each SIGHUP), write the addresses actually
        /// bound to this file as JSON: `{"pid": .., "admin": "IP:PORT",
        /// "listeners": {"NAME": "IP:PORT"}}`. For scripts and tests that
        /// let the kernel choose ports (`:0`); replaced atomically.
        #[arg(long)]
        address_file: Option<PathBuf>,
    },
    /// Run the reference autoscaler: it starts and stops targets and
    /// rewrites their targets file, from CPU or ringlb's connection counts.
    Autoscale {
        #[arg(long, short, default_value = DEFAULT_AUTOSCALE_CONFIG)]
        config: PathBuf,
        /// On SIGTERM/SIGINT, deregister the targets, wait for their drain,
        /// and stop them (default: leave them running for a restart to adopt).
        #[arg(long)]
        stop_targets_on_exit: bool,
        /// Once running, write `{"pid": .., "admin": "IP:PORT"}` (the address
        /// its own admin endpoint is bound to, or null) to this file.
        #[arg(long)]
        address_file: Option<PathBuf>,
    },
    /// Replace the running ringlb with this binary and config, without
    /// refusing a connection: starts `ringlb run --takeover` in the
    /// background and returns once it serves (for systemd's ExecReload).
    Upgrade {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Where the new process logs (appended). Without it, its log goes
        /// where this command's stderr goes: the journal under systemd, or
        /// the terminal this command was run from.
        #[arg(long)]
        log_file: Option<PathBuf>,
    },
    /// Validate the config and its targets files, looking up once each name
    /// their `dns` and `srv` lines give; exit 0 if good, 1 if not.
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the man page (roff), from these definitions: what the Debian
    /// package installs as ringlb(1).
    #[command(hide = true)]
    Man,
}

/// The man page of the whole command line, in roff.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut out)?;
    Ok(out)
}
