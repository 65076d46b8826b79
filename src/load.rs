//! Loading a config and the targets files it names, by one rule set at
//! start-up, in `ringlb check`, on SIGHUP and when a targets file changes.
//! Both `app` (start-up, check) and `control` (SIGHUP, the watcher) use it.

use std::path::Path;

use crate::config::{self, Config, ConfigError};
use crate::targets::{self, Target, TargetsError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{source} (targets_file of target_group {group:?})")]
    Targets { group: String, source: TargetsError },
}

/// A validated config with every group's targets read.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub targets: Vec<Vec<Target>>,
    /// The text each group's targets were read from, as read.
    pub texts: Vec<String>,
}

impl Loaded {
    /// One warning per group that has no targets (its clients are closed).
    pub fn warnings(&self) -> Vec<String> {
        self.config
            .groups
            .iter()
            .zip(&self.targets)
            .filter(|(_, t)| t.is_empty())
            .map(|(g, _)| empty_group_warning(&g.name, &g.targets_file))
            .collect()
    }
}

/// Whether a group's algorithm can take this many targets (a Maglev table
/// has one slot per target at the least). Checked at start, in check, on
/// SIGHUP and on reload.
pub fn fits(group: &config::GroupConfig, targets: &[Target]) -> Result<(), TargetsError> {
    group
        .algorithm
        .fits(targets.len())
        .map_err(|message| TargetsError {
            file: group.targets_file.clone(),
            line: 0,
            message,
        })
}

/// The one wording for a group without targets, at start, in check and on reload.
pub fn empty_group_warning(group: &str, file: &Path) -> String {
    format!(
        "target group {group:?} has no targets ({} lists none): its clients will be closed until targets are added",
        file.display()
    )
}

/// Reads and validates the config and every targets file it names, by the
/// same rules at start-up, in `check` and on SIGHUP. `in_service` gives the
/// set currently applied from a targets file, if any (see [`targets::load`]).
pub fn load(
    path: &Path,
    in_service: &dyn Fn(&Path) -> Option<Vec<Target>>,
) -> Result<Loaded, LoadError> {
    let config = config::load(path)?;
    check_paths(&config)?;
    let mut targets = Vec::with_capacity(config.groups.len());
    let mut texts = Vec::with_capacity(config.groups.len());
    for g in &config.groups {
        let serving = in_service(&g.targets_file);
        let (text, t) = targets::load(&g.targets_file, serving.as_deref()).map_err(|source| {
            LoadError::Targets {
                group: g.name.clone(),
                source,
            }
        })?;
        fits(g, &t).map_err(|source| LoadError::Targets {
            group: g.name.clone(),
            source,
        })?;
        texts.push(text);
        targets.push(t);
    }
    Ok(Loaded {
        config,
        targets,
        texts,
    })
}

/// What `run` would refuse about the paths the config names, caught by
/// `check` (and a SIGHUP) too: a takeover socket needs its folder.
fn check_paths(config: &Config) -> Result<(), ConfigError> {
    if let Some(s) = &config.runtime.takeover_socket {
        let dir = s.path.parent().unwrap_or(Path::new("/"));
        if !dir.is_dir() {
            let message = format!(
                "the folder {} does not exist: under systemd the unit's RuntimeDirectory=ringlb makes /run/ringlb; run by hand, create it first (mkdir -p {}) or name a folder that exists",
                dir.display(),
                dir.display()
            );
            return Err(s.error(&config.file, "runtime.takeover_socket", message));
        }
    }
    if let Some(config::AccessLogConfig {
        to: config::LogTo::File(s),
        ..
    }) = &config.access_log
        && let Err(why) = appendable(&s.path)
    {
        let message = format!("cannot append to {}: {why}", s.path.display());
        return Err(s.error(&config.file, "access_log.to", message));
    }
    Ok(())
}

/// Whether lines could be appended to `path`: an existing regular file is
/// opened for it; a missing one needs a folder this process may write.
fn appendable(path: &Path) -> Result<(), String> {
    if path.exists() {
        return crate::access_log::open_file(path)
            .map(drop)
            .map_err(|e| e.to_string());
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| "the path holds a NUL byte".to_string())?;
    // SAFETY: access(2) reads the NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "its folder {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ))
    }
}

/// `ringlb check`: a one-line summary of a good config, and its warnings.
pub fn check(path: &Path) -> Result<(String, Vec<String>), LoadError> {
    let l = load(path, &|_| None)?;
    let targets: usize = l.targets.iter().map(Vec::len).sum();
    let summary = format!(
        "{}: ok: {} listener(s), {} target group(s), {} target(s)",
        path.display(),
        l.config.listeners.len(),
        l.config.groups.len(),
        targets
    );
    Ok((summary, l.warnings()))
}
