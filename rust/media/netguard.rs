//! Which addresses a fetch may connect to: a blocklist of internal and special-purpose networks, and an
//! allow-list of CIDR networks that the operator exempts (such as the server's own upload service).
//!
//! Modelled on Synapse's `url_preview_ip_range_blacklist` and Mastodon's private-address check. Every address
//! a host name resolves to, every IP literal in a URL and every redirect target goes through
//! [`Policy::check`]; the connection is then made to the checked address only (see [`crate::media::fetch`]), so DNS
//! rebinding cannot slip an internal address in between check and connect.
//!
//! Blocked: unspecified, loopback, RFC 1918 private, CGNAT (100.64.0.0/10), link-local (169.254.0.0/16,
//! fe80::/10, with the cloud metadata services on 169.254.169.254 and fd00:ec2::254), IETF protocol
//! assignments (192.0.0.0/24), documentation (TEST-NET-1..3, 2001:db8::/32, 3fff::/20), benchmarking
//! (198.18.0.0/15, 2001:2::/48), multicast, the reserved 240.0.0.0/4 and broadcast, the 6to4 relay anycast,
//! IPv6 ULA (fc00::/7), site-local, discard-only and the IETF protocol block 2001::/23 (Teredo included),
//! and the Azure and Alibaba metadata addresses. IPv6 forms that carry an IPv4 address (IPv4-mapped,
//! IPv4-translated, NAT64 and 6to4) are judged by that IPv4 address; the deprecated IPv4-compatible form
//! (::/96) is blocked whole.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::error::Error;

/// Blocked IPv4 networks, with the reason shown in errors.
const BLOCKED_V4: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "unspecified"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "shared address space (CGNAT)"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments"),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation"),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "6to4 relay anycast"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, "documentation"),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
    // Cloud metadata services on otherwise public addresses.
    (Ipv4Addr::new(168, 63, 129, 16), 32, "cloud metadata"),
    (Ipv4Addr::new(100, 100, 100, 200), 32, "cloud metadata"),
];

/// Blocked IPv6 networks, after the IPv4-carrying forms have been judged by their IPv4 address.
const BLOCKED_V6: &[(Ipv6Addr, u8, &str)] = &[
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        "IPv4-compatible, unspecified or loopback",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use NAT64",
    ),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, "discard-only"),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignments",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation",
    ),
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20, "documentation"),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, "unique local"),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

/// An IP network in CIDR notation, such as `10.0.0.0/8` or `fd00::/8`. The address is stored with its host
/// bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network `addr/prefix`; host bits of `addr` are cleared. Fails when the prefix is longer than the
    /// address (32 for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, Error> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(Error::bad_request(format!(
                "Prefix length /{prefix} is longer than {max} bits"
            )));
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(prefix))),
        };
        Ok(Cidr { addr, prefix })
    }

    /// Parses `address/prefix`, or a bare address meaning a single host (/32 or /128).
    pub fn parse(s: &str) -> Result<Cidr, Error> {
        let (addr_text, prefix_text) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = IpAddr::from_str(addr_text).map_err(|_| {
            Error::bad_request(format!(
                "'{}' is not an IP network (like 10.0.0.0/8)",
                truncate(s)
            ))
        })?;
        let prefix = match prefix_text {
            None => {
                if addr.is_ipv4() {
                    32
                } else {
                    128
                }
            }
            // Digits only: u8::from_str would also take "+8".
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .map_err(|_| Error::bad_request(format!("'{}' has a bad prefix length", truncate(s))))?,
            Some(_) => {
                return Err(Error::bad_request(format!(
                    "'{}' has a bad prefix length",
                    truncate(s)
                )))
            }
        };
        Cidr::new(addr, prefix)
    }

    /// Whether `ip` lies in this network. IPv4 networks never contain IPv6 addresses and vice versa; pass
    /// [`canonical`] addresses to treat IPv4-mapped IPv6 as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => u32::from(a) & mask_v4(self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(a)) => u128::from(a) & mask_v6(self.prefix) == u128::from(net),
            _ => false,
        }
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cidr::parse(s)
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// `ip` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) turned into the IPv4 address it is; every other
/// address unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The IPv4 address an IPv6 address carries for routing purposes: IPv4-mapped (`::ffff:0:0/96`),
/// IPv4-translated (`::ffff:0:0:0/96`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if bits >> 32 == 0xffff || bits >> 32 == 0xffff_0000 || bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some(low32);
    }
    if bits >> 112 == 0x2002 {
        return Some(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    None
}

/// Why `ip` must not be fetched from, or `None` for an ordinary public address. Ignores any allow-list; see
/// [`Policy::check`].
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => BLOCKED_V4
            .iter()
            .find(|(net, prefix, _)| u32::from(v4) & mask_v4(*prefix) == u32::from(*net))
            .map(|b| b.2),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return blocked_reason(IpAddr::V4(v4));
            }
            BLOCKED_V6
                .iter()
                .find(|(net, prefix, _)| u128::from(v6) & mask_v6(*prefix) == u128::from(*net))
                .map(|b| b.2)
        }
    }
}

/// What a fetch may connect to: every public address, plus the networks the operator allows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Policy {
    allowed: Vec<Cidr>,
}

impl Policy {
    /// A policy that exempts `allowed` from the blocklist.
    pub fn new(allowed: Vec<Cidr>) -> Policy {
        Policy { allowed }
    }

    /// Parses a list of CIDR networks (`muc_media_metadata_allowed_networks`); the first bad entry is the error.
    pub fn parse<S: AsRef<str>>(allowed: &[S]) -> Result<Policy, Error> {
        let allowed = allowed
            .iter()
            .map(|s| Cidr::parse(s.as_ref().trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy { allowed })
    }

    /// The allowed networks.
    pub fn allowed(&self) -> &[Cidr] {
        &self.allowed
    }

    /// Ok when a fetch may connect to `ip`: it is in an allowed network, or not blocked at all. Otherwise
    /// [`Error::Blocked`] naming the address and why.
    pub fn check(&self, ip: IpAddr) -> Result<(), Error> {
        let ip = canonical(ip);
        if self.allowed.iter().any(|net| net.contains(ip)) {
            return Ok(());
        }
        match blocked_reason(ip) {
            None => Ok(()),
            Some(reason) => Err(Error::Blocked(format!("Address {ip} is not allowed ({reason})"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_internal_and_special_addresses() {
        let blocked = [
            "0.0.0.0",
            "127.0.0.1",
            "127.255.255.254",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "168.63.129.16",
            "100.100.100.200",
            "192.0.0.192",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "198.19.255.255",
            "192.88.99.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:0:169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "100::1",
            "2001::1",
            "2001:2::1",
            "2001:db8::1",
            "3fff::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ];
        for a in blocked {
            assert!(blocked_reason(ip(a)).is_some(), "{a} should be blocked");
            assert_eq!(
                "blocked",
                Policy::default().check(ip(a)).unwrap_err().code(),
                "{a}"
            );
        }
    }

    #[test]
    fn passes_public_addresses() {
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "192.0.3.1",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(None, blocked_reason(ip(a)), "{a}");
            assert_eq!(Ok(()), Policy::default().check(ip(a)));
        }
    }

    #[test]
    fn names_the_reason() {
        let err = Policy::default().check(ip("169.254.169.254")).unwrap_err();
        assert_eq!(
            "Address 169.254.169.254 is not allowed (link-local)",
            err.to_string()
        );
    }

    #[test]
    fn allowed_networks_exempt_blocked_addresses() {
        let policy = Policy::parse(&["127.0.0.1/32", "fd00::/8"]).unwrap();
        assert_eq!(Ok(()), policy.check(ip("127.0.0.1")));
        assert_eq!(
            Ok(()),
            policy.check(ip("::ffff:127.0.0.1")),
            "IPv4-mapped form of an allowed address"
        );
        assert_eq!(Ok(()), policy.check(ip("fd00::5")));
        assert!(policy.check(ip("127.0.0.2")).is_err());
        assert!(policy.check(ip("::1")).is_err());
        assert!(
            policy.check(ip("2002:7f00:1::")).is_err(),
            "6to4 is another address, not the allowed one"
        );
    }

    #[test]
    fn parses_cidrs_and_bare_addresses() {
        assert_eq!("10.0.0.0/8", Cidr::parse("10.0.0.0/8").unwrap().to_string());
        assert_eq!(
            "10.0.0.0/8",
            Cidr::parse("10.9.8.7/8").unwrap().to_string(),
            "host bits are cleared"
        );
        assert_eq!("127.0.0.1/32", Cidr::parse("127.0.0.1").unwrap().to_string());
        assert_eq!("::1/128", Cidr::parse("::1").unwrap().to_string());
        assert_eq!("0.0.0.0/0", Cidr::parse("1.2.3.4/0").unwrap().to_string());
        assert_eq!("fd00::/8", Cidr::parse("fd12::1/8").unwrap().to_string());
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("::1")));
    }

    #[test]
    fn rejects_malformed_cidrs() {
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
            "example.com",
            "10.0.0.0/8/8",
            "1.2.3.4/-1",
            "1.2.3.4/0008",
        ] {
            let err = Cidr::parse(bad).unwrap_err();
            assert_eq!("bad-request", err.code(), "{bad}");
        }
        let err = Policy::parse(&["127.0.0.1/32", "nonsense"]).unwrap_err();
        assert!(err.to_string().contains("'nonsense'"), "{err}");
    }

    proptest! {
        #[test]
        fn mapped_v6_is_judged_as_its_v4(a: u32) {
            let v4 = Ipv4Addr::from(a);
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            prop_assert_eq!(blocked_reason(IpAddr::V4(v4)), blocked_reason(mapped));
            let policy = Policy::parse(&["127.0.0.1"]).unwrap();
            prop_assert_eq!(policy.check(IpAddr::V4(v4)).is_ok(), policy.check(mapped).is_ok());
        }

        #[test]
        fn parsed_cidr_round_trips_and_contains_its_address(a: u128, prefix in 0u8..=128) {
            let addr = IpAddr::V6(Ipv6Addr::from(a));
            let net = Cidr::new(addr, prefix).unwrap();
            prop_assert!(net.contains(addr));
            prop_assert_eq!(Ok(net), Cidr::parse(&net.to_string()));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,60}") {
            let _ = Cidr::parse(&s);
        }
    }
}
