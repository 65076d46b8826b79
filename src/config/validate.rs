//! The one validator: raw serde structs in, the domain [`Config`] out, every
//! error naming the file, the line and the key. The same at start-up, on
//! SIGHUP and in `ringlb check`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::raw::{self, RawConfig, RawHealthCheck, RawPort, RawTargetGroup};
use super::words::*;
use super::*;
use crate::files::quoted;

pub(super) struct Validator<'a> {
    pub(super) src: Source<'a>,
}

impl Validator<'_> {
    pub(super) fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let mut groups = Vec::new();
        let mut group_index: HashMap<String, usize> = HashMap::new();
        for (i, g) in raw.target_group.iter().enumerate() {
            let key = format!("target_group[{i}]");
            let name = self.name(&g.name, &key, "target group", |n| {
                group_index.contains_key(n)
            })?;
            group_index.insert(name, i);
            groups.push(self.group(&key, g)?);
        }
        if raw.listener.is_empty() {
            return Err(self.src.error(
                0..0,
                "listener".into(),
                "no [[listener]] is configured".into(),
            ));
        }
        let mut listeners: Vec<ListenerConfig> = Vec::new();
        for (i, l) in raw.listener.iter().enumerate() {
            let group_of = |name: &str| group_index.get(name).copied();
            let known = || {
                raw.target_group
                    .iter()
                    .map(|g| g.name.get_ref().clone())
                    .collect()
            };
            let listener = self.listener(i, l, &listeners, group_of, known)?;
            listeners.push(listener);
        }
        let admin = self.admin(&raw, &listeners)?;
        let access_log = match &raw.access_log {
            None => None,
            Some(a) => self.access_log(a)?,
        };
        let discovery = self.discovery(&raw.discovery)?;
        Ok(Config {
            admin,
            access_log,
            discovery,
            file: self.src.file.to_path_buf(),
            runtime: self.runtime(&raw.runtime)?,
            listeners,
            groups,
        })
    }

    /// A word from a closed list: the word and its value, or an error that
    /// names the words `known` has.
    fn word<T: Copy>(
        &self,
        value: &Spanned<String>,
        fallback: &Range<usize>,
        key: &str,
        known: &[(&'static str, T)],
    ) -> Result<(&'static str, T), ConfigError> {
        let v = value.get_ref();
        if let Some(found) = known.iter().find(|(w, _)| w == v) {
            return Ok(*found);
        }
        let words: Vec<String> = known.iter().map(|(w, _)| format!("{w:?}")).collect();
        let what = key.rsplit('.').next().unwrap_or(key);
        Err(self.src.at(
            value,
            fallback.clone(),
            key.to_string(),
            format!("unknown {what} {} (known: {})", quoted(v), words.join(", ")),
        ))
    }

    /// A listener's or group's name: not empty, and not one `taken` knows.
    fn name(
        &self,
        name: &Spanned<String>,
        key: &str,
        what: &str,
        taken: impl Fn(&str) -> bool,
    ) -> Result<String, ConfigError> {
        let n = name.get_ref();
        let message = if n.is_empty() {
            "must not be empty".to_string()
        } else if n.len() > MAX_NAME_BYTES {
            format!(
                "is {} bytes long; at most {MAX_NAME_BYTES} (names are log fields and metric labels)",
                n.len()
            )
        } else if taken(n) {
            format!("duplicate {what} name {n:?}")
        } else {
            return Ok(n.clone());
        };
        Err(self.src.at(name, 0..0, format!("{key}.name"), message))
    }

    /// `[[listener]]` number `i`, checked against the ones before it. About
    /// 80 lines: one check per key, each a few lines; splitting them further
    /// would scatter one table over many functions.
    /// `group_of` finds a target group's index by name; `known` lists them
    /// all for the error when it finds none.
    fn listener(
        &self,
        i: usize,
        l: &raw::RawListener,
        before: &[ListenerConfig],
        group_of: impl Fn(&str) -> Option<usize>,
        known: impl Fn() -> Vec<String>,
    ) -> Result<ListenerConfig, ConfigError> {
        let key = format!("listener[{i}]");
        let here = l.name.span();
        let name = self.name(&l.name, &key, "listener", |n| {
            before.iter().any(|o| o.name == n)
        })?;
        let addr = self.socket_addr(
            &l.listen,
            here.clone(),
            &format!("{key}.listen"),
            "0.0.0.0:8080\" or \"[::]:8080",
        )?;
        if let Some(other) = before.iter().find(|o| o.addr == addr && addr.port() != 0) {
            return Err(self.src.at(
                &l.listen,
                here,
                format!("{key}.listen"),
                format!("{addr} is already used by listener {:?}", other.name),
            ));
        }
        let group_name = l.target_group.get_ref();
        let Some(group) = group_of(group_name) else {
            return Err(self.src.at(
                &l.target_group,
                here,
                format!("{key}.target_group"),
                format!(
                    "no [[target_group]] is named {} (known: {:?})",
                    quoted(group_name),
                    known()
                ),
            ));
        };
        let backlog = *l.backlog.get_ref();
        if !(1..=65535).contains(&backlog) {
            return Err(self.src.at(
                &l.backlog,
                here,
                format!("{key}.backlog"),
                format!("{backlog} is out of range 1..=65535"),
            ));
        }
        let allow = match &l.allow {
            None => None,
            Some(list) => Some(self.allow(list, &here, &format!("{key}.allow"))?),
        };
        let max_connections = match &l.max_connections {
            Some(m) if *m.get_ref() == 0 => {
                return Err(self.src.at(
                    m,
                    here,
                    format!("{key}.max_connections"),
                    "must be at least 1 (leave it out for no limit)".into(),
                ));
            }
            Some(m) => Some(*m.get_ref()),
            None => None,
        };
        let client_limits = self.client_limits(&key, l, &here)?;
        let proxy_protocol = match &l.proxy_protocol {
            None => ProxyProtocol::Off,
            Some(p) => {
                self.word(p, &here, &format!("{key}.proxy_protocol"), PROXY_PROTOCOLS)?
                    .1
            }
        };
        Ok(ListenerConfig {
            name,
            addr,
            group,
            backlog,
            allow,
            max_connections,
            client_limits,
            proxy_protocol,
        })
    }

    /// A listener's per-client limits.
    fn client_limits(
        &self,
        key: &str,
        l: &raw::RawListener,
        here: &Range<usize>,
    ) -> Result<crate::client_limits::Limits, ConfigError> {
        let max_open = match &l.max_connections_per_client {
            Some(m) if *m.get_ref() == 0 => {
                return Err(self.src.at(
                    m,
                    here.clone(),
                    format!("{key}.max_connections_per_client"),
                    "must be at least 1 (leave it out for no limit)".into(),
                ));
            }
            Some(m) => Some(*m.get_ref()),
            None => None,
        };
        let rate = match &l.connection_rate_per_client {
            None => None,
            Some(r) => {
                let n = r
                    .get_ref()
                    .trim()
                    .strip_suffix("/s")
                    .and_then(|n| n.trim().parse::<u32>().ok())
                    .filter(|n| (1..=MAX_CLIENT_RATE).contains(n));
                let Some(n) = n else {
                    return Err(self.src.at(
                        r,
                        here.clone(),
                        format!("{key}.connection_rate_per_client"),
                        format!(
                            "{}: write new connections per second as \"N/s\", N from 1 to {MAX_CLIENT_RATE} (e.g. \"20/s\")",
                            quoted(r.get_ref())
                        ),
                    ));
                };
                Some(n)
            }
        };
        let ipv6_prefix = match &l.client_ipv6_prefix {
            None => 64,
            Some(p) if (1..=128).contains(p.get_ref()) => *p.get_ref(),
            Some(p) => {
                return Err(self.src.at(
                    p,
                    here.clone(),
                    format!("{key}.client_ipv6_prefix"),
                    format!(
                        "{} is not a prefix length: 1 to 128 (64 by default)",
                        p.get_ref()
                    ),
                ));
            }
        };
        Ok(crate::client_limits::Limits {
            max_open,
            rate,
            ipv6_prefix,
        })
    }

    /// A health check's interval and timeout: at least 100ms between probes,
    /// and a timeout shorter than that.
    fn timing(
        &self,
        h: &RawHealthCheck,
        here: &Range<usize>,
        key: &str,
    ) -> Result<(Duration, Duration), ConfigError> {
        let interval = h.interval.get_ref().0;
        let timeout = h.timeout.get_ref().0;
        if interval < Duration::from_millis(100) {
            return Err(self.src.at(
                &h.interval,
                here.clone(),
                format!("{key}.interval"),
                "must be at least 100ms".into(),
            ));
        }
        if timeout.is_zero() || timeout >= interval {
            let fallback = h.interval.span();
            return Err(self.src.at(
                &h.timeout,
                if fallback.is_empty() {
                    here.clone()
                } else {
                    fallback
                },
                format!("{key}.timeout"),
                format!(
                    "must be more than 0 and shorter than interval ({timeout:?} >= {interval:?})"
                ),
            ));
        }
        Ok((interval, timeout))
    }

    /// An `allow` list: CIDR ranges, or single addresses.
    fn allow(
        &self,
        list: &Spanned<Vec<String>>,
        fallback: &Range<usize>,
        key: &str,
    ) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        list.get_ref()
            .iter()
            .map(|c| {
                parse_cidr(c).ok_or_else(|| {
                    self.src.at(
                        list,
                        fallback.clone(),
                        key.to_string(),
                        format!(
                            "{} is not a CIDR range like \"10.0.0.0/8\" or \"::1/128\"",
                            quoted(c)
                        ),
                    )
                })
            })
            .collect()
    }

    /// An `IP:PORT` value; `example` goes into the error.
    fn socket_addr(
        &self,
        value: &Spanned<String>,
        fallback: Range<usize>,
        key: &str,
        example: &str,
    ) -> Result<SocketAddr, ConfigError> {
        value.get_ref().parse().map_err(|_| {
            self.src.at(
                value,
                fallback,
                key.to_string(),
                format!(
                    "{} is not IP:PORT (e.g. \"{example}\")",
                    quoted(value.get_ref())
                ),
            )
        })
    }

    /// `[admin] listen`: an address no listener has.
    fn admin(
        &self,
        raw: &RawConfig,
        listeners: &[ListenerConfig],
    ) -> Result<SocketAddr, ConfigError> {
        let listen = &raw.admin.listen;
        let admin = self.socket_addr(listen, 0..0, "admin.listen", "127.0.0.1:9900")?;
        if listeners
            .iter()
            .any(|l| l.addr == admin && admin.port() != 0)
        {
            return Err(self.src.at(
                listen,
                0..0,
                "admin.listen".into(),
                format!("{admin} is also a listener"),
            ));
        }
        Ok(admin)
    }

    fn runtime(&self, r: &raw::RawRuntime) -> Result<RuntimeConfig, ConfigError> {
        Ok(RuntimeConfig {
            workers: r.workers,
            shutdown_timeout: r.shutdown_timeout.0,
            splice: parse_splice(r.splice.get_ref())
                .map_err(|m| self.src.at(&r.splice, 0..0, "runtime.splice".into(), m))?,
            pipe_size: parse_pipe_size(r.pipe_size.get_ref()).map_err(|m| {
                self.src
                    .at(&r.pipe_size, 0..0, "runtime.pipe_size".into(), m)
            })?,
            ring_buffers: parse_ring_buffers(*r.ring_buffers.get_ref()).map_err(|m| {
                self.src
                    .at(&r.ring_buffers, 0..0, "runtime.ring_buffers".into(), m)
            })?,
            takeover_socket: r.takeover_socket.as_ref().map(|p| self.path_setting(p)),
        })
    }

    /// `[access_log]`: where, how, how many; `None` when `to = "off"`.
    fn access_log(&self, a: &raw::RawAccessLog) -> Result<Option<AccessLogConfig>, ConfigError> {
        let to = match a.to.get_ref().as_str() {
            "off" => return Ok(None),
            "stderr" => LogTo::Stderr,
            "" => {
                return Err(self.src.at(
                    &a.to,
                    0..0,
                    "access_log.to".into(),
                    "must be \"off\", \"stderr\" or a file path".into(),
                ));
            }
            _ => LogTo::File(self.path_setting(&a.to)),
        };
        let format = match &a.format {
            None => LogFormat::Text,
            Some(f) => {
                self.word(f, &a.to.span(), "access_log.format", LOG_FORMATS)?
                    .1
            }
        };
        let every = match &a.sample {
            None => 1,
            Some(s) => {
                let v = *s.get_ref();
                if !(v > 0.0 && v <= 1.0) {
                    return Err(self.src.at(
                        s,
                        a.to.span(),
                        "access_log.sample".into(),
                        format!("{v} is not a fraction of connections: more than 0, at most 1 (0.01 logs one in a hundred)"),
                    ));
                }
                (1.0 / v).round() as u32
            }
        };
        Ok(Some(AccessLogConfig { to, format, every }))
    }

    /// `[discovery]`: resolvers as addresses (port 53 when none is
    /// written), `min_ttl` of at least a second, `max_ttl` not below it.
    fn discovery(&self, d: &raw::RawDiscovery) -> Result<DiscoveryConfig, ConfigError> {
        let mut out = DiscoveryConfig::default();
        if let Some(list) = &d.resolvers {
            if list.get_ref().is_empty() {
                return Err(self.src.at(
                    list,
                    0..0,
                    "discovery.resolvers".into(),
                    "is empty: name at least one DNS server, or leave the key out to use those of /etc/resolv.conf".into(),
                ));
            }
            let mut addrs = Vec::new();
            for r in list.get_ref() {
                let text = r.get_ref();
                let addr = text
                    .parse::<SocketAddr>()
                    .ok()
                    .or_else(|| {
                        text.parse::<std::net::IpAddr>()
                            .ok()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .filter(|a| a.port() != 0);
                let Some(addr) = addr else {
                    return Err(self.src.at(
                        r,
                        list.span(),
                        "discovery.resolvers".into(),
                        format!(
                            "{} is not a DNS server's address: write an IP, or IP:PORT (\"127.0.0.1:8600\" for a local Consul agent, \"[::1]:53\")",
                            quoted(text)
                        ),
                    ));
                };
                addrs.push(addr);
            }
            out.resolvers = Some(addrs);
        }
        if let Some(m) = &d.min_ttl {
            let v = m.get_ref().0;
            if v < MIN_MIN_TTL {
                return Err(self.src.at(
                    m,
                    0..0,
                    "discovery.min_ttl".into(),
                    format!("{v:?} is shorter than the shortest allowed, 1s (each name is asked again at most once a second)"),
                ));
            }
            out.min_ttl = v;
        }
        if let Some(m) = &d.max_ttl {
            let v = m.get_ref().0;
            if v < out.min_ttl {
                return Err(self.src.at(
                    m,
                    0..0,
                    "discovery.max_ttl".into(),
                    format!(
                        "{v:?} is shorter than min_ttl ({:?}): an answer is kept between the two",
                        out.min_ttl
                    ),
                ));
            }
            out.max_ttl = v;
        } else if out.min_ttl > out.max_ttl {
            out.max_ttl = out.min_ttl;
        }
        Ok(out)
    }

    /// A path the config names (relative to its folder), and where.
    fn path_setting(&self, value: &Spanned<String>) -> PathSetting {
        let dir = self.src.file.parent().unwrap_or(Path::new("."));
        let at = self.src.error(value.span(), String::new(), String::new());
        let ConfigError::Invalid { line, column, .. } = at else {
            unreachable!("a spanned error has a place")
        };
        PathSetting {
            path: dir.join(value.get_ref()),
            line,
            column,
        }
    }

    fn group(&self, key: &str, g: &RawTargetGroup) -> Result<GroupConfig, ConfigError> {
        let here = g.name.span();
        let hash_key = match &g.hash_key {
            None => HashKey::SourceIpPort,
            Some(k) => {
                self.word(k, &here, &format!("{key}.hash_key"), HASH_KEYS)?
                    .1
            }
        };
        let (algorithm_name, algorithm) =
            self.word(&g.algorithm, &here, &format!("{key}.algorithm"), ALGORITHMS)?;
        let algorithm = match algorithm {
            Algorithm::Maglev(_) => Algorithm::Maglev(hash_key),
            other => other,
        };
        if let Some(k) = &g.hash_key
            && !matches!(algorithm, Algorithm::Maglev(_))
        {
            return Err(self.src.at(
                k,
                here,
                format!("{key}.hash_key"),
                "only applies to algorithm = \"maglev\"".into(),
            ));
        }
        let file = g.targets_file.get_ref();
        if file.is_empty() {
            return Err(self.src.at(
                &g.targets_file,
                here,
                format!("{key}.targets_file"),
                "must not be empty".into(),
            ));
        }
        let targets_file = match self.src.file.parent() {
            Some(dir) => dir.join(file),
            None => PathBuf::from(file),
        };
        let positive = |d: &Spanned<ConfigDuration>, name: &str| {
            if d.get_ref().0.is_zero() {
                Err(self.src.at(
                    d,
                    here.clone(),
                    format!("{key}.{name}"),
                    "must be more than 0".into(),
                ))
            } else {
                Ok(d.get_ref().0)
            }
        };
        let connect_timeout = positive(&g.connect_timeout, "connect_timeout")?;
        let idle_timeout = positive(&g.idle_timeout, "idle_timeout")?;
        if g.connect_retries > MAX_CONNECT_RETRIES {
            return Err(self.src.error(
                here,
                format!("{key}.connect_retries"),
                format!("{} is more than {MAX_CONNECT_RETRIES}", g.connect_retries),
            ));
        }
        let slow_start = self.slow_start(key, g, algorithm)?;
        Ok(GroupConfig {
            slow_start,
            name: g.name.get_ref().clone(),
            algorithm,
            algorithm_name,
            targets_file,
            connect_timeout,
            connect_retries: g.connect_retries,
            idle_timeout,
            deregistration_delay: g.deregistration_delay.0,
            max_connections_per_target: (g.max_connections_per_target > 0)
                .then_some(g.max_connections_per_target),
            health: self.health(&format!("{key}.health_check"), &g.health_check, here)?,
        })
    }

    /// `slow_start`: off ("0s" or absent), or 30 s to 900 s as on AWS; not
    /// with maglev, whose clients keep their places (a ramp would move them
    /// at every step).
    fn slow_start(
        &self,
        key: &str,
        g: &raw::RawTargetGroup,
        algorithm: Algorithm,
    ) -> Result<Option<Duration>, ConfigError> {
        let Some(s) = &g.slow_start else {
            return Ok(None);
        };
        let d = s.get_ref().0;
        if d.is_zero() {
            return Ok(None);
        }
        let wrong = |message: String| {
            self.src
                .at(s, g.name.span(), format!("{key}.slow_start"), message)
        };
        if !(SLOW_START_MIN..=SLOW_START_MAX).contains(&d) {
            return Err(wrong(format!(
                "{d:?} is outside 30s-900s (AWS's range); \"0s\" turns it off"
            )));
        }
        if matches!(algorithm, Algorithm::Maglev(_)) {
            return Err(wrong(
                "slow start works with round_robin, least_connections and weighted_least_connections; maglev keeps each client on its target, which a ramp would move at every step".into(),
            ));
        }
        Ok(Some(d))
    }

    /// A group's `[target_group.health_check]`. About 80 lines: one check
    /// per key, each a few lines.
    fn health(
        &self,
        key: &str,
        h: &RawHealthCheck,
        here: Range<usize>,
    ) -> Result<HealthCheckConfig, ConfigError> {
        let protocol = self
            .word(&h.protocol, &here, &format!("{key}.protocol"), PROTOCOLS)?
            .1;
        let port = match &h.port {
            None => None,
            Some(p) => match p.get_ref() {
                RawPort::Text(t) if t == "traffic-port" => None,
                RawPort::Number(n) if (1..=65535).contains(n) => Some(*n as u16),
                _ => {
                    return Err(self.src.at(
                        p,
                        here,
                        format!("{key}.port"),
                        "must be \"traffic-port\" or a port number 1-65535".into(),
                    ));
                }
            },
        };
        let http_only = |v: &Option<Spanned<String>>, name: &str| -> Result<(), ConfigError> {
            match v {
                Some(s) if protocol == HealthProtocol::Tcp => Err(self.src.at(
                    s,
                    here.clone(),
                    format!("{key}.{name}"),
                    "only applies to protocol = \"http\"".into(),
                )),
                _ => Ok(()),
            }
        };
        http_only(&h.path, "path")?;
        http_only(&h.matcher, "matcher")?;
        let path = match &h.path {
            Some(p)
                if !p.get_ref().starts_with('/') || p.get_ref().contains(char::is_whitespace) =>
            {
                return Err(self.src.at(
                    p,
                    here,
                    format!("{key}.path"),
                    "must start with '/' and contain no spaces".into(),
                ));
            }
            Some(p) => p.get_ref().clone(),
            None => "/".to_string(),
        };
        let matcher = match &h.matcher {
            Some(m) => parse_matcher(m.get_ref())
                .map_err(|msg| self.src.at(m, here.clone(), format!("{key}.matcher"), msg))?,
            None => vec![(200, 399)],
        };
        let (interval, timeout) = self.timing(h, &here, key)?;
        let threshold = |t: &Spanned<u32>, name: &str| {
            if (1..=10).contains(t.get_ref()) {
                Ok(*t.get_ref())
            } else {
                Err(self.src.at(
                    t,
                    here.clone(),
                    format!("{key}.{name}"),
                    format!("{} is out of range 1..=10", t.get_ref()),
                ))
            }
        };
        Ok(HealthCheckConfig {
            protocol,
            port,
            path,
            matcher,
            interval,
            timeout,
            healthy_threshold: threshold(&h.healthy_threshold, "healthy_threshold")?,
            unhealthy_threshold: threshold(&h.unhealthy_threshold, "unhealthy_threshold")?,
            proxy_protocol: h.proxy_protocol,
        })
    }
}
