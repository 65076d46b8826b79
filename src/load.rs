//! Loading a config and the targets files it names, by one rule set at
//! start-up, in `ringlb check`, on SIGHUP and when a targets file changes.
//! Both `app` (start-up, check) and `control` (SIGHUP, the watcher) use it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::{self, Config, ConfigError};
use crate::discovery::{self, Answers, Outcome, Resolution};
use crate::targets::{self, Listing, Query, Target, TargetsError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{source} (targets_file of target_group {group:?})")]
    Targets { group: String, source: TargetsError },
    /// `ringlb check`: names that did not resolve, one line each.
    #[error("{}", .0.join("\n"))]
    Names(Vec<String>),
}

/// A validated config with every group's targets read.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// Every group's targets: its file's own, and the answers its names
    /// have so far ([`Loaded::compose`]).
    pub targets: Vec<Vec<Target>>,
    /// What each group's file lists.
    pub lists: Vec<Listing>,
    /// The text each group's targets were read from, as read.
    pub texts: Vec<String>,
}

/// Which name gave each target of a group that is not a line of its own.
pub type Origins = HashMap<SocketAddr, Query>;

impl Loaded {
    /// Every group's targets from its listing and `answers`, checked to fit
    /// its algorithm; which name gave which target, by group.
    pub fn compose(&mut self, answers: &Answers) -> Result<Vec<Origins>, LoadError> {
        let mut origins = Vec::with_capacity(self.lists.len());
        for (i, (g, list)) in self.config.groups.iter().zip(&self.lists).enumerate() {
            let c = discovery::compose(list, answers);
            fits(g, &c.targets).map_err(|source| LoadError::Targets {
                group: g.name.clone(),
                source,
            })?;
            self.targets[i] = c.targets;
            origins.push(c.origin);
        }
        Ok(origins)
    }

    /// Every name the files list, looked up once (at start-up, and by
    /// `check`): the answers, and a line for each name that gave no
    /// targets, with its file and line.
    pub fn look_up_names(&self) -> (Answers, Vec<String>) {
        let wanted = discovery::queries_of(&self.lists);
        let mut answers = Answers::default();
        answers.want(&wanted);
        let mut queries: Vec<Query> = wanted.into_iter().collect();
        queries.sort_unstable();
        let outcomes = discovery::resolver::resolve_once(&self.config.discovery, &queries);
        let mut failures = Vec::new();
        for (query, outcome) in queries.into_iter().zip(outcomes) {
            let why = match &outcome {
                Outcome::Found { .. } => None,
                Outcome::Gone { why } => Some(why.clone()),
                Outcome::Failed { error } => Some(error.clone()),
            };
            if let Some(why) = why {
                for (g, list) in self.config.groups.iter().zip(&self.lists) {
                    for n in list.names.iter().filter(|n| n.query == query) {
                        failures.push(format!(
                            "{}:{}: {query}: {why} (targets_file of target_group {:?})",
                            g.targets_file.display(),
                            n.line,
                            g.name
                        ));
                    }
                }
            }
            answers.record(Resolution { query, outcome });
        }
        (answers, failures)
    }

    /// One warning per group that has no targets (its clients are closed);
    /// a group whose names have not answered is said by their lookups.
    pub fn warnings(&self) -> Vec<String> {
        self.config
            .groups
            .iter()
            .zip(self.targets.iter().zip(&self.lists))
            .filter(|(_, (t, list))| t.is_empty() && list.names.is_empty())
            .map(|(g, _)| empty_group_warning(&g.name, &g.targets_file))
            .collect()
    }
}

/// Whether a group's algorithm can take this many targets (a Maglev table
/// has one slot per target at the least). Checked on every set a group
/// gets: [`Loaded::compose`] (start, check, SIGHUP) and the watcher.
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
        "target group {group:?} has no targets (none from {}): its clients will be closed until targets are added",
        file.display()
    )
}

/// Reads and validates the config and every targets file it names, by the
/// same rules at start-up, in `check` and on SIGHUP. `in_service` gives the
/// set currently applied from a targets file, if any (see [`targets::load`]).
/// The targets are the files' own lines only; names are looked up by the
/// caller ([`Loaded::look_up_names`], or the answers it keeps) and joined
/// in by [`Loaded::compose`], which every caller runs next and which checks
/// that each group's set fits its algorithm.
pub fn load(
    path: &Path,
    in_service: &dyn Fn(&Path) -> Option<Listing>,
) -> Result<Loaded, LoadError> {
    let config = config::load(path)?;
    check_paths(&config)?;
    let mut targets = Vec::with_capacity(config.groups.len());
    let mut lists = Vec::with_capacity(config.groups.len());
    let mut texts = Vec::with_capacity(config.groups.len());
    for g in &config.groups {
        let serving = in_service(&g.targets_file);
        let (text, l) = targets::load(&g.targets_file, serving.as_ref()).map_err(|source| {
            LoadError::Targets {
                group: g.name.clone(),
                source,
            }
        })?;
        texts.push(text);
        targets.push(l.targets.clone());
        lists.push(l);
    }
    Ok(Loaded {
        config,
        targets,
        lists,
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
/// Every name a targets file lists is looked up once; one that gives no
/// targets is an error naming its file and line.
pub fn check(path: &Path) -> Result<(String, Vec<String>), LoadError> {
    let mut l = load(path, &|_| None)?;
    let (answers, failures) = l.look_up_names();
    if !failures.is_empty() {
        return Err(LoadError::Names(failures));
    }
    l.compose(&answers)?;
    let targets: usize = l.targets.iter().map(Vec::len).sum();
    let names = discovery::queries_of(&l.lists).len();
    let from_names = if names == 0 {
        String::new()
    } else {
        format!(" ({names} name(s) looked up)")
    };
    let summary = format!(
        "{}: ok: {} listener(s), {} target group(s), {} target(s){from_names}",
        path.display(),
        l.config.listeners.len(),
        l.config.groups.len(),
        targets
    );
    Ok((summary, l.warnings()))
}
