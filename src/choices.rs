//! The closed choices the config names and the data plane acts on: a leaf
//! module both import, so the config never imports the data plane. Each
//! choice's behaviour lives with the code that acts on it (`balancer`,
//! `proxy::pipe`, `proxy_protocol`); its words live in the config's tables.

/// The algorithms a target group can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Fewest `(active + 1) / weight`; `least_connections` and
    /// `weighted_least_connections` both mean this (weights apply to every
    /// algorithm, as with HAProxy's leastconn).
    LeastConnections,
    /// Maglev consistent hashing on the client's address.
    Maglev(HashKey),
}

/// What a Maglev group identifies a client by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKey {
    /// Client IP and port: each new connection may land elsewhere.
    SourceIpPort,
    /// Client IP only: a client stays on one target.
    SourceIp,
}

impl HashKey {
    /// The config's word for it.
    pub fn name(self) -> &'static str {
        match self {
            HashKey::SourceIpPort => "source_ip_port",
            HashKey::SourceIp => "source_ip",
        }
    }
}

/// When a direction moves its bytes through a pipe rather than a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Splice {
    /// Once a read fills a copy buffer: small exchanges copy, bulk splices.
    Auto,
    /// From the first byte.
    Always,
    /// Never: every byte is copied.
    Never,
}

/// What to send a target before the client's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    Off,
    V1,
    V2,
}

/// What a connection log line looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line.
    Text,
    /// One JSON object a line, for log shippers.
    Json,
}
