//! Bounded property tests (fuzzing) of everything that reads outside input:
//! no panic, and every error a clear message. Runs in CI with a fixed budget.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use proptest::prelude::*;
use ringlb::{admin, config, health::probe, proxy_protocol as header, targets};

const GOOD_CONFIG: &str = "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\ntarget_group = \"web\"\nallow = [\"10.0.0.0/8\"]\n\n[[target_group]]\nname = \"web\"\ntargets_file = \"t.txt\"\nconnect_timeout = \"1s\"\n\n[target_group.health_check]\nprotocol = \"http\"\npath = \"/h\"\nmatcher = \"200-399\"\n";

/// A valid config with a few bytes changed, deleted or inserted.
fn mutated_config() -> impl Strategy<Value = String> {
    proptest::collection::vec((0..GOOD_CONFIG.len(), 0u8..3, any::<u8>()), 1..6).prop_map(|edits| {
        let mut b = GOOD_CONFIG.as_bytes().to_vec();
        for (pos, op, byte) in edits {
            let pos = pos.min(b.len().saturating_sub(1));
            match op {
                0 => b[pos] = byte,
                1 => {
                    b.remove(pos);
                }
                _ => b.insert(pos, byte),
            }
        }
        String::from_utf8_lossy(&b).into_owned()
    })
}

fn no_dns(_: &str) -> Result<SocketAddr, String> {
    Err("no DNS in tests".into())
}

fn any_socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), p)),
        (any::<u128>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p)),
    ]
}

/// Decodes a PROXY v1 line or v2 header (written here, not from ringlb).
fn decode(h: &[u8]) -> (SocketAddr, SocketAddr) {
    if h.starts_with(b"PROXY ") {
        let text = std::str::from_utf8(h).unwrap();
        assert!(text.ends_with("\r\n") && text.len() <= 107, "{text:?}");
        let f: Vec<&str> = text.trim_end().split(' ').collect();
        let ip = |i: usize| f[i].parse::<IpAddr>().unwrap();
        let port = |i: usize| f[i].parse::<u16>().unwrap();
        return (
            SocketAddr::new(ip(2), port(4)),
            SocketAddr::new(ip(3), port(5)),
        );
    }
    assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(h[12], 0x21);
    let len = u16::from_be_bytes([h[14], h[15]]) as usize;
    let b = &h[16..];
    assert_eq!(b.len(), len);
    let port = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
    match h[13] {
        0x11 => {
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]));
            (
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            )
        }
        0x21 => {
            let ip =
                |o: usize| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&b[o..o + 16]).unwrap()));
            (
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            )
        }
        f => panic!("family {f:#x}"),
    }
}

/// What a header should carry: both in one family, IPv4 when both are.
fn expected(c: SocketAddr, l: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (c, l) = (canon(c), canon(l));
    if c.is_ipv4() == l.is_ipv4() {
        return (c, l);
    }
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    (v6(c), v6(l))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn targets_parser_never_panics_and_names_a_real_line(text in "(([0-9a-z.:\\[\\]#= ]{0,30}|127\\.0\\.0\\.1:[0-9]{1,6}( weight=[0-9x]{0,5})?|(dns|srv) [a-z_.:0-9]{0,20}( weight=[0-9]{0,4})?)\n){0,8}") {
        if let Err((line, msg)) = targets::parse(&text, no_dns) {
            prop_assert!(line >= 1 && line <= text.lines().count().max(1), "line {line} of {text:?}");
            prop_assert!(!msg.is_empty());
        }
    }

    #[test]
    fn one_rule_set_only_text_that_changes_the_set_must_end_in_a_newline(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let text = String::from_utf8_lossy(&bytes);
        let calm = targets::parse_checked(&text, None, no_dns);
        prop_assert_eq!(&calm, &targets::parse(&text, no_dns), "nothing in service: the parser alone");
        let serving = targets::parse(&text, no_dns).unwrap_or_default();
        let unchanged = targets::parse_checked(&text, Some(&serving), no_dns);
        let from_none = targets::parse_checked(&text, Some(&targets::Listing::default()), no_dns);
        if text.is_empty() || text.ends_with('\n') {
            prop_assert_eq!(&calm, &from_none);
        } else if let Ok(t) = &calm {
            prop_assert_eq!(unchanged.as_ref(), Ok(t), "the same set is no change");
            if t.is_empty() {
                prop_assert_eq!(from_none, Ok(targets::Listing::default()));
            } else {
                let (line, msg) = from_none.unwrap_err();
                prop_assert!(msg.contains("half-written"), "{}", msg);
                prop_assert_eq!(line, text.lines().count());
            }
        }
    }

    #[test]
    fn config_loader_never_panics_and_errors_name_the_file(text in mutated_config()) {
        match config::parse(Path::new("/etc/ringlb/ringlb.toml"), &text) {
            Ok(c) => prop_assert_eq!(c.listeners.len(), 1),
            Err(e) => {
                let shown = e.to_string();
                prop_assert!(shown.starts_with("/etc/ringlb/ringlb.toml:"), "{}", shown);
            }
        }
    }

    #[test]
    fn status_line_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), prefix in "(HTTP/1\\.[01] [0-9]{0,4}[ A-Za-z]{0,6}\r?\n?)?") {
        let mut input = prefix.into_bytes();
        input.extend_from_slice(&bytes);
        if let Ok(probe::Status::Code(code)) = probe::parse_status(&input) {
            prop_assert!(code < 1000);
        }
    }

    #[test]
    fn admin_request_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), prefix in "((GET|POST|HEAD) /[a-z]{0,8} HTTP/1\\.1\r\n)?") {
        let mut input = prefix.into_bytes();
        input.extend_from_slice(&bytes);
        if let Err(r) = admin::parse_request(&input) {
            prop_assert!([400u16, 404, 405, 431].contains(&r.status));
            prop_assert!(!r.body.is_empty());
        }
    }

    #[test]
    fn proxy_headers_round_trip(client in any_socket_addr(), local in any_socket_addr()) {
        let want = expected(client, local);
        prop_assert_eq!(decode(&header::v1(client, local)), want);
        prop_assert_eq!(decode(&header::v2(client, local)), want);
    }
}
