//! PROXY protocol headers (HAProxy's spec, versions 1 and 2), sent to a target
//! before any client byte so it learns who the client really was. Workers
//! send them before proxying; health probes send the v2 LOCAL header.

use std::net::{IpAddr, SocketAddr};

pub use crate::choices::ProxyProtocol;

impl ProxyProtocol {
    /// The header for a connection from `client` accepted on `local`, if any.
    pub fn header(self, client: SocketAddr, local: SocketAddr) -> Option<Vec<u8>> {
        match self {
            ProxyProtocol::Off => None,
            ProxyProtocol::V1 => Some(v1(client, local)),
            ProxyProtocol::V2 => Some(v2(client, local)),
        }
    }
}

/// The 12-byte signature that starts every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Both addresses in one family: IPv4 when both are IPv4 (IPv4-mapped IPv6
/// counts as IPv4), else IPv6 with any IPv4 address mapped.
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (c, l) = (canon(client), canon(local));
    match (c.ip(), l.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (c, l),
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
                IpAddr::V6(_) => a,
            };
            (v6(c), v6(l))
        }
    }
}

/// `PROXY TCP4 <client> <local> <client port> <local port>\r\n`.
pub fn v1(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (c, l) = same_family(client, local);
    let fam = if c.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        c.ip(),
        l.ip(),
        c.port(),
        l.port()
    )
    .into_bytes()
}

/// The binary version 2 header, command PROXY, over TCP.
pub fn v2(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (c, l) = same_family(client, local);
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21); // version 2, command PROXY
    match (c.ip(), l.ip()) {
        (IpAddr::V4(ci), IpAddr::V4(li)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&ci.octets());
            out.extend_from_slice(&li.octets());
        }
        (IpAddr::V6(ci), IpAddr::V6(li)) => {
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&ci.octets());
            out.extend_from_slice(&li.octets());
        }
        _ => unreachable!("same_family returns one family"),
    }
    out.extend_from_slice(&c.port().to_be_bytes());
    out.extend_from_slice(&l.port().to_be_bytes());
    out
}

/// A version 2 header with command LOCAL (no addresses): what health probes
/// send, as the spec asks of connections a proxy makes on its own behalf.
pub fn v2_local() -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_lines() {
        let c: SocketAddr = "192.0.2.7:51000".parse().unwrap();
        let l: SocketAddr = "198.51.100.1:80".parse().unwrap();
        assert_eq!(v1(c, l), b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 80\r\n");
        let c6: SocketAddr = "[2001:db8::7]:51000".parse().unwrap();
        let l6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(
            v1(c6, l6),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n"
        );
        // An IPv4 client on an IPv6 socket is reported as IPv4.
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:51000".parse().unwrap();
        assert_eq!(
            v1(mapped, "[::ffff:198.51.100.1]:80".parse().unwrap()),
            v1(c, l)
        );
    }

    #[test]
    fn v2_bytes() {
        let h = v2(
            "192.0.2.7:51000".parse().unwrap(),
            "198.51.100.1:80".parse().unwrap(),
        );
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[192, 0, 2, 7]);
        assert_eq!(&h[20..24], &[198, 51, 100, 1]);
        assert_eq!(&h[24..], &[0xC7, 0x38, 0, 80], "51000 = 0xC738, then 80");
        assert_eq!(v2_local(), [&V2_SIGNATURE[..], &[0x20, 0, 0, 0]].concat());
    }
}
