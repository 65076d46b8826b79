use super::*;

const GOOD: &str = r#"
[runtime]
workers = 2

[[listener]]
name = "web"
listen = "127.0.0.1:8080"
target_group = "web"

[[target_group]]
name = "web"
targets_file = "targets/web.txt"
connect_timeout = "250ms"
idle_timeout = "5m"

[target_group.health_check]
protocol = "http"
path = "/api/v1/health"
matcher = "200,204,300-399"
interval = "10s"
timeout = "2s"
"#;

/// GOOD with `extra` lines in its target group.
fn with_group_lines(extra: &str) -> String {
    GOOD.replace(
        "targets_file = \"targets/web.txt\"",
        &format!("targets_file = \"targets/web.txt\"\n{extra}"),
    )
}

fn err(text: &str) -> (usize, String, String) {
    match parse(Path::new("/etc/ringlb/ringlb.toml"), text).unwrap_err() {
        ConfigError::Invalid {
            file,
            line,
            key,
            message,
            ..
        } => {
            assert_eq!(file, Path::new("/etc/ringlb/ringlb.toml"));
            (line, key, message)
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn good_config_gets_its_values_and_defaults() {
    let c = parse(Path::new("/etc/ringlb/ringlb.toml"), GOOD).unwrap();
    assert_eq!(c.runtime.workers, 2);
    assert_eq!(c.runtime.splice, Splice::Auto);
    assert_eq!(c.runtime.ring_buffers, 256);
    assert_eq!(c.runtime.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.listeners[0].addr, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.listeners[0].backlog, 4096);
    let g = &c.groups[0];
    assert_eq!(g.targets_file, Path::new("/etc/ringlb/targets/web.txt"));
    assert_eq!(g.connect_timeout, Duration::from_millis(250));
    assert_eq!(g.connect_retries, 2);
    assert_eq!(g.idle_timeout, Duration::from_secs(300));
    assert_eq!(g.deregistration_delay, Duration::from_secs(300));
    assert_eq!(g.health.protocol, HealthProtocol::Http);
    assert_eq!(g.health.matcher, vec![(200, 200), (204, 204), (300, 399)]);
    assert_eq!(g.health.healthy_threshold, 5);
    assert_eq!(g.health.port, None);
    assert_eq!(
        c.admin,
        "127.0.0.1:9900".parse().unwrap(),
        "admin defaults to loopback"
    );
}

#[test]
fn admin_listen_is_checked() {
    let (line, key, msg) = err(&format!("{GOOD}\n[admin]\nlisten = \"everywhere\"\n"));
    assert_eq!((line, key.as_str()), (24, "admin.listen"));
    assert!(msg.contains("not IP:PORT"));
}

/// Each mistake: (replace this, with that, expected line, key, words in message).
#[test]
fn splice_takes_a_word_or_the_old_boolean() {
    for (value, want) in [
        ("\"auto\"", Splice::Auto),
        ("true", Splice::Auto),
        ("\"always\"", Splice::Always),
        ("\"never\"", Splice::Never),
        ("false", Splice::Never),
    ] {
        let text = GOOD.replace("workers = 2", &format!("workers = 2\nsplice = {value}"));
        let c = parse(Path::new("/etc/ringlb/ringlb.toml"), &text).unwrap();
        assert_eq!(c.runtime.splice, want, "splice = {value}");
    }
}

/// A table of cases (what to replace, with what, the line, the key and the
/// message), so it is long: one row per mistake.
#[test]
fn every_mistake_names_key_and_line() {
    let cases: &[(&str, &str, usize, &str, &str)] = &[
        (
            "workers = 2",
            "workers = 2\nwrokers = 3",
            4,
            "runtime.wrokers",
            "unknown field `wrokers`",
        ),
        (
            "workers = 2",
            "workers = 2\nsplice = \"sometimes\"",
            4,
            "runtime.splice",
            "write \"auto\"",
        ),
        (
            "workers = 2",
            "workers = 2\nring_buffers = 300",
            4,
            "runtime.ring_buffers",
            "a power of two from 1 to 32768",
        ),
        (
            "workers = 2",
            "workers = 2\nring_buffers = 65536",
            4,
            "runtime.ring_buffers",
            "invalid value 65536",
        ),
        (
            "idle_timeout = \"5m\"",
            "idle_timeout = \"5 minutes\"",
            14,
            "target_group[0].idle_timeout",
            "invalid duration",
        ),
        (
            "idle_timeout = \"5m\"",
            "idle_timeout = 300",
            14,
            "target_group[0].idle_timeout",
            "duration string",
        ),
        (
            "connect_timeout = \"250ms\"",
            "connect_timeout = \"0s\"",
            13,
            "target_group[0].connect_timeout",
            "more than 0",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"localhost\"",
            7,
            "listener[0].listen",
            "not IP:PORT",
        ),
        (
            "target_group = \"web\"",
            "target_group = \"api\"",
            8,
            "listener[0].target_group",
            "no [[target_group]] is named \"api\"",
        ),
        (
            "protocol = \"http\"",
            "protocol = \"udp\"",
            17,
            "target_group[0].health_check.protocol",
            "unknown protocol",
        ),
        (
            "matcher = \"200,204,300-399\"",
            "matcher = \"200-abc\"",
            19,
            "target_group[0].health_check.matcher",
            "not a status code",
        ),
        (
            "timeout = \"2s\"",
            "timeout = \"10s\"",
            21,
            "target_group[0].health_check.timeout",
            "shorter than interval",
        ),
        (
            "path = \"/api/v1/health\"",
            "path = \"api\"",
            18,
            "target_group[0].health_check.path",
            "must start with '/'",
        ),
        (
            "name = \"web\"\ntargets_file",
            "name = \"web\"\nalgorithm = \"random\"\ntargets_file",
            12,
            "target_group[0].algorithm",
            "unknown algorithm",
        ),
        ("workers = 2", "workers = = 2", 3, "(syntax)", ""),
    ];
    for (from, to, line, key, words) in cases {
        assert!(GOOD.contains(from), "fixture lacks {from:?}");
        let text = GOOD.replacen(from, to, 1);
        let (got_line, got_key, message) = err(&text);
        assert_eq!(
            (got_line, got_key.as_str()),
            (*line, *key),
            "{to:?}: {message}"
        );
        assert!(
            message.contains(words),
            "{to:?}: {message:?} lacks {words:?}"
        );
    }
}

#[test]
fn duplicate_names_point_at_the_second() {
    let text = format!(
        "{GOOD}\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8081\"\ntarget_group = \"web\"\n"
    );
    let (line, key, message) = err(&text);
    assert_eq!((line, key.as_str()), (24, "listener[1].name"));
    assert!(message.contains("duplicate listener name"));
}

#[test]
fn http_keys_on_a_tcp_check_are_refused() {
    let text = GOOD.replace("protocol = \"http\"", "protocol = \"tcp\"");
    let (line, key, _) = err(&text);
    assert_eq!(
        (line, key.as_str()),
        (18, "target_group[0].health_check.path")
    );
}

#[test]
fn no_listener_is_an_error() {
    let (_, key, message) = err("[[target_group]]\nname = \"a\"\ntargets_file = \"t\"\n");
    assert_eq!(key, "listener");
    assert!(message.contains("no [[listener]]"));
}

#[test]
fn error_display_is_file_line_column_key_message() {
    let text = GOOD.replace("idle_timeout = \"5m\"", "idle_timeout = \"5x\"");
    let shown = parse(Path::new("cfg/ringlb.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(
        shown.starts_with(
            "cfg/ringlb.toml:14:16: target_group[0].idle_timeout: invalid duration \"5x\""
        ),
        "{shown}"
    );
}

#[test]
fn algorithms_and_hash_keys() {
    let with = with_group_lines;
    let algo = |extra: &str| {
        parse(Path::new("/x/ringlb.toml"), &with(extra))
            .unwrap()
            .groups[0]
            .algorithm
    };
    assert_eq!(algo(""), Algorithm::RoundRobin);
    assert_eq!(
        algo("algorithm = \"least_connections\""),
        Algorithm::LeastConnections
    );
    assert_eq!(
        algo("algorithm = \"weighted_least_connections\""),
        Algorithm::LeastConnections
    );
    assert_eq!(
        algo("algorithm = \"maglev\""),
        Algorithm::Maglev(HashKey::SourceIpPort)
    );
    assert_eq!(
        algo("algorithm = \"maglev\"\nhash_key = \"source_ip\""),
        Algorithm::Maglev(HashKey::SourceIp)
    );
    let (line, key, msg) = err(&with("algorithm = \"maglev\"\nhash_key = \"dest_ip\""));
    assert_eq!((line, key.as_str()), (14, "target_group[0].hash_key"));
    assert!(msg.contains("unknown hash_key"));
    let (line, key, msg) = err(&with("hash_key = \"source_ip\""));
    assert_eq!((line, key.as_str()), (13, "target_group[0].hash_key"));
    assert!(msg.contains("only applies to algorithm = \"maglev\""));
}

#[test]
fn per_client_limits_are_read_and_checked() {
    let with = |extra: &str| {
        GOOD.replace(
            "target_group = \"web\"\n\n[[target_group]]",
            &format!("target_group = \"web\"\n{extra}\n\n[[target_group]]"),
        )
    };
    let c = parse(
        Path::new("/x/ringlb.toml"),
        &with("max_connections_per_client = 20\nconnection_rate_per_client = \"5/s\"\nclient_ipv6_prefix = 56"),
    )
    .unwrap();
    let l = c.listeners[0].client_limits;
    assert_eq!((l.max_open, l.rate, l.ipv6_prefix), (Some(20), Some(5), 56));
    let none = parse(Path::new("/x/ringlb.toml"), GOOD).unwrap().listeners[0].client_limits;
    assert!(!none.any());
    assert_eq!(none.ipv6_prefix, 64);
    for (bad, key, says) in [
        (
            "max_connections_per_client = 0",
            "max_connections_per_client",
            "at least 1",
        ),
        (
            "connection_rate_per_client = \"5\"",
            "connection_rate_per_client",
            "\"N/s\"",
        ),
        (
            "connection_rate_per_client = \"0/s\"",
            "connection_rate_per_client",
            "\"N/s\"",
        ),
        ("client_ipv6_prefix = 129", "client_ipv6_prefix", "1 to 128"),
    ] {
        let (_, k, msg) = err(&with(bad));
        assert_eq!(k, format!("listener[0].{key}"), "{bad}");
        assert!(msg.contains(says), "{bad}: {msg}");
    }
}

#[test]
fn slow_start_is_off_30s_to_900s_and_not_with_maglev() {
    let with = with_group_lines;
    let slow = |extra: &str| {
        parse(Path::new("/x/ringlb.toml"), &with(extra))
            .unwrap()
            .groups[0]
            .slow_start
    };
    assert_eq!(slow(""), None);
    assert_eq!(slow("slow_start = \"0s\""), None);
    assert_eq!(
        slow("slow_start = \"90s\"\nalgorithm = \"least_connections\""),
        Some(Duration::from_secs(90))
    );
    for (bad, says) in [
        ("slow_start = \"10s\"", "outside 30s-900s"),
        ("slow_start = \"16m\"", "outside 30s-900s"),
        (
            "slow_start = \"60s\"\nalgorithm = \"maglev\"",
            "maglev keeps each client on its target",
        ),
    ] {
        let (line, key, msg) = err(&with(bad));
        assert_eq!(
            (line, key.as_str()),
            (13, "target_group[0].slow_start"),
            "{bad}"
        );
        assert!(msg.contains(says), "{bad}: {msg}");
    }
}

#[test]
fn matcher_forms() {
    assert_eq!(parse_matcher("200").unwrap(), vec![(200, 200)]);
    assert_eq!(parse_matcher("200-399").unwrap(), vec![(200, 399)]);
    assert!(parse_matcher("399-200").unwrap_err().contains("backwards"));
    assert!(parse_matcher("99").is_err());
    assert!(parse_matcher("").is_err());
}

#[test]
fn guard_rail_keys() {
    let text = GOOD.replace(
        "target_group = \"web\"\n",
        "target_group = \"web\"\nallow = [\"10.0.0.0/8\", \"192.168.1.7\", \"::1/128\"]\nmax_connections = 100\nproxy_protocol = \"v2\"\n",
    );
    let c = parse(Path::new("/x/ringlb.toml"), &text).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.allow.as_ref().unwrap().len(), 3);
    assert_eq!(l.allow.as_ref().unwrap()[1].to_string(), "192.168.1.7/32");
    assert_eq!(
        (l.max_connections, l.proxy_protocol),
        (Some(100), ProxyProtocol::V2)
    );
    let bad = GOOD.replace(
        "target_group = \"web\"\n",
        "target_group = \"web\"\nallow = [\"10.0.0.0/33\"]\n",
    );
    let (line, key, msg) = err(&bad);
    assert_eq!((line, key.as_str()), (9, "listener[0].allow"));
    assert!(msg.contains("not a CIDR range"));
    let bad = GOOD.replace(
        "target_group = \"web\"\n",
        "target_group = \"web\"\nproxy_protocol = \"v3\"\n",
    );
    assert_eq!(err(&bad).1, "listener[0].proxy_protocol");
}

#[test]
fn discovery_takes_resolvers_and_ttl_bounds() {
    let c = parse(Path::new("/x/ringlb.toml"), GOOD).unwrap();
    assert_eq!(c.discovery, DiscoveryConfig::default());
    assert_eq!(
        (c.discovery.min_ttl, c.discovery.max_ttl),
        (Duration::from_secs(5), Duration::from_secs(300))
    );
    let text = format!(
        "{GOOD}\n[discovery]\nresolvers = [\"127.0.0.1:8600\", \"10.0.0.2\", \"[::1]:53\"]\nmin_ttl = \"1s\"\nmax_ttl = \"60s\"\n"
    );
    let d = parse(Path::new("/x/ringlb.toml"), &text).unwrap().discovery;
    assert_eq!(
        d.resolvers.unwrap(),
        vec![
            "127.0.0.1:8600".parse().unwrap(),
            "10.0.0.2:53".parse().unwrap(),
            "[::1]:53".parse().unwrap()
        ]
    );
    assert_eq!(
        (d.min_ttl, d.max_ttl),
        (Duration::from_secs(1), Duration::from_secs(60))
    );
    let raised = format!("{GOOD}\n[discovery]\nmin_ttl = \"10m\"\n");
    let d = parse(Path::new("/x/ringlb.toml"), &raised)
        .unwrap()
        .discovery;
    assert_eq!(
        d.max_ttl, d.min_ttl,
        "a min_ttl over the default max raises it"
    );
    for (bad, key, says) in [
        ("resolvers = []", "discovery.resolvers", "is empty"),
        (
            "resolvers = [\"dns.example\"]",
            "discovery.resolvers",
            "not a DNS server's address",
        ),
        (
            "resolvers = [\"127.0.0.1:0\"]",
            "discovery.resolvers",
            "not a DNS server's address",
        ),
        (
            "min_ttl = \"500ms\"",
            "discovery.min_ttl",
            "shortest allowed, 1s",
        ),
        (
            "min_ttl = \"10s\"\nmax_ttl = \"5s\"",
            "discovery.max_ttl",
            "shorter than min_ttl",
        ),
        ("min_ttls = \"5s\"", "discovery", "unknown field"),
    ] {
        let text = format!("{GOOD}\n[discovery]\n{bad}\n");
        let (at, k, msg) = err(&text);
        assert!(k.starts_with(key), "{bad}: key {k}");
        assert!(msg.contains(says), "{bad}: {msg}");
        let named = key.rsplit('.').next().unwrap();
        let written = text.lines().nth(at - 1).unwrap_or_default();
        assert!(
            written.contains(named) || written.contains("min_ttls"),
            "{bad}: line {at} is {written:?}"
        );
    }
}
