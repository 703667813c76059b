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

/// Why `ip` must not be fetched from, or `None` for an ordinary public address. Ignores any allow-list and
/// knows only the well-known NAT64 prefix; see [`Policy::check`].
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    blocked_reason_with(ip, &[])
}

/// The IPv4 address an RFC 6052 NAT64 address under `net` embeds (prefix lengths 32, 40, 48, 56, 64 or 96;
/// bits 64 to 71 are the reserved "u" octet and carry nothing).
fn nat64_v4(net: &Cidr, ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if !net.contains(IpAddr::V6(ip)) {
        return None;
    }
    let bytes = ip.octets();
    let mut at = usize::from(net.prefix() / 8);
    let mut out = [0u8; 4];
    for byte in &mut out {
        if at == 8 {
            at += 1;
        }
        *byte = *bytes.get(at)?;
        at += 1;
    }
    Some(Ipv4Addr::from(out))
}

/// [`blocked_reason`] with the operator's NAT64 prefixes besides the well-known one: an address inside one
/// of them is judged by the IPv4 address it embeds.
pub fn blocked_reason_with(ip: IpAddr, nat64: &[Cidr]) -> Option<&'static str> {
    if let IpAddr::V6(v6) = ip {
        if let Some(v4) = nat64.iter().find_map(|net| nat64_v4(net, v6)) {
            return blocked_reason(IpAddr::V4(v4));
        }
    }
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

/// The well-known NAT64 prefix (RFC 6052), the default of `muc_media_metadata_nat64_prefixes`; always known.
pub const WELL_KNOWN_NAT64: &str = "64:ff9b::/96";

/// Ports every host may be contacted on.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// A host name or IP literal in canonical form (lower case, IDNA, IPv6 without brackets), or why not.
fn canonical_host(text: &str) -> Result<String, Error> {
    let host = url::Host::parse(text.trim())
        .map_err(|_| Error::bad_request(format!("'{}' is not a host name", truncate(text))))?;
    Ok(match host {
        url::Host::Ipv6(a) => a.to_string(),
        other => other.to_string(),
    })
}

/// `host` as [`canonical_host`] gives it, for a host already parsed by a URL or URI (never fails).
fn bare_host(host: &str) -> String {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_ascii_lowercase()
}

/// A destination allowed on a port besides 80 and 443 (`muc_media_metadata_allowed_targets`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every URL on this host and port: `upload.example.org:5281`.
    HostPort(String, u16),
    /// URLs that start with this one (normalised), on its host and port:
    /// `https://upload.example.org:5281/files/`.
    Prefix { prefix: String, host: String, port: u16 },
}

impl Target {
    /// Parses `host:port` (`[v6]:port` for an IPv6 literal) or an http(s) URL prefix.
    pub fn parse(text: &str) -> Result<Target, Error> {
        let text = text.trim();
        let bad = |why: &str| {
            Error::bad_request(format!(
                "'{}' is not a target like \"host:5281\" or \"https://host:5281/files/\" ({why})",
                truncate(text)
            ))
        };
        if text.contains("://") {
            let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(bad("only http and https"));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(bad("credentials"));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(bad("a query or fragment"));
            }
            let host = url
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| bad("no host"))?;
            let port = url.port_or_known_default().ok_or_else(|| bad("no port"))?;
            return Ok(Target::Prefix {
                prefix: url.as_str().to_owned(),
                host: bare_host(host),
                port,
            });
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("bad port"));
        }
        let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        if host.contains(':') && !host.starts_with('[') {
            return Err(bad("an IPv6 address goes in brackets"));
        }
        let host = canonical_host(host).map_err(|_| bad("bad host"))?;
        Ok(Target::HostPort(host, port))
    }

    fn host_port(&self) -> (&str, u16) {
        match self {
            Target::HostPort(host, port) => (host, *port),
            Target::Prefix { host, port, .. } => (host, *port),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::HostPort(host, port) if host.contains(':') => write!(f, "[{host}]:{port}"),
            Target::HostPort(host, port) => write!(f, "{host}:{port}"),
            Target::Prefix { prefix, .. } => f.write_str(prefix),
        }
    }
}

/// What a fetch may connect to: every public address on ports 80 and 443, plus the networks the operator
/// allows (any port), plus the targets the operator allows (their port); optionally only some hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Policy {
    allowed: Vec<Cidr>,
    targets: Vec<Target>,
    nat64: Vec<Cidr>,
    only_hosts: Vec<String>,
}

impl Policy {
    /// A policy that exempts `allowed` from the blocklist and the port check.
    pub fn new(allowed: Vec<Cidr>) -> Policy {
        Policy {
            allowed,
            ..Policy::default()
        }
    }

    /// Parses a list of CIDR networks (`muc_media_metadata_allowed_networks`); the first bad entry is the error.
    pub fn parse<S: AsRef<str>>(allowed: &[S]) -> Result<Policy, Error> {
        let allowed = allowed
            .iter()
            .map(|s| Cidr::parse(s.as_ref().trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy::new(allowed))
    }

    /// This policy with `targets` (`muc_media_metadata_allowed_targets`) allowed on their ports; the first bad
    /// entry is the error.
    pub fn with_targets<S: AsRef<str>>(mut self, targets: &[S]) -> Result<Policy, Error> {
        self.targets = targets
            .iter()
            .map(|t| Target::parse(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self)
    }

    /// This policy with the NAT64 prefixes `prefixes` (`muc_media_metadata_nat64_prefixes`: IPv6 networks of
    /// length 32, 40, 48, 56, 64 or 96). The well-known `64:ff9b::/96` is always known as well.
    pub fn with_nat64<S: AsRef<str>>(mut self, prefixes: &[S]) -> Result<Policy, Error> {
        let mut nets = Vec::new();
        for text in prefixes {
            let text = text.as_ref().trim();
            let net = Cidr::parse(text)?;
            if net.addr().is_ipv4()
                || !matches!(net.prefix(), 32 | 40 | 48 | 56 | 64 | 96)
                || !text.contains('/')
            {
                return Err(Error::bad_request(format!(
                    "'{}' is not a NAT64 prefix: an IPv6 network of length 32, 40, 48, 56, 64 or 96 (like 64:ff9b::/96)",
                    truncate(text)
                )));
            }
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
        self.nat64 = nets;
        Ok(self)
    }

    /// This policy probing only URLs whose host is one of `hosts` (`muc_media_metadata_only_hosts`: exact host
    /// names or IP literals, case-insensitive, subdomains not included); an empty list allows every host.
    pub fn with_only_hosts<S: AsRef<str>>(mut self, hosts: &[S]) -> Result<Policy, Error> {
        self.only_hosts = hosts
            .iter()
            .map(|h| canonical_host(h.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self)
    }

    /// The allowed networks.
    pub fn allowed(&self) -> &[Cidr] {
        &self.allowed
    }

    /// The allowed targets.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The operator's NAT64 prefixes (the well-known one not included unless listed).
    pub fn nat64(&self) -> &[Cidr] {
        &self.nat64
    }

    /// The only hosts probed, in canonical form; empty for any.
    pub fn only_hosts(&self) -> &[String] {
        &self.only_hosts
    }

    /// Everything in the policy as one line, for cache keys and logs.
    pub fn describe(&self) -> String {
        let list = |v: Vec<String>| v.join(" ");
        format!(
            "{} | {} | {} | {}",
            list(self.allowed.iter().map(ToString::to_string).collect()),
            list(self.targets.iter().map(ToString::to_string).collect()),
            list(self.nat64.iter().map(ToString::to_string).collect()),
            self.only_hosts.join(" ")
        )
    }

    /// Ok when a fetch may connect to `ip`: it is in an allowed network, or not blocked at all. Otherwise
    /// [`Error::Blocked`] naming the address and why. Ports are not looked at; see [`Policy::check_connect`].
    pub fn check(&self, ip: IpAddr) -> Result<(), Error> {
        let ip = canonical(ip);
        if self.allowed.iter().any(|net| net.contains(ip)) {
            return Ok(());
        }
        match blocked_reason_with(ip, &self.nat64) {
            None => Ok(()),
            Some(reason) => Err(Error::Blocked(format!("Address {ip} is not allowed ({reason})"))),
        }
    }

    /// Ok when a connection for `host` may be made to `ip` on `port`: an address in an allowed network on
    /// any port; otherwise an address [`Policy::check`] passes, on port 80, 443 or the port of a target for
    /// `host`. (A URL-prefix target's path is checked earlier, by [`Policy::check_url`].)
    pub fn check_connect(&self, host: &str, ip: IpAddr, port: u16) -> Result<(), Error> {
        if self.allowed.iter().any(|net| net.contains(canonical(ip))) {
            return Ok(());
        }
        self.check(ip)?;
        let host = bare_host(host);
        if DEFAULT_PORTS.contains(&port)
            || self
                .targets
                .iter()
                .any(|t| t.host_port() == (host.as_str(), port))
        {
            return Ok(());
        }
        Err(Error::Blocked(format!("Port {port} of {host} is not allowed")))
    }

    /// Ok when `url` (the first one or a redirect target) may be requested at all, before any DNS lookup or
    /// connection: its host is among the only hosts (when listed), and its port is 80 or 443, or allowed by
    /// a target, or left for the connection to decide because allowed networks are configured (which exempt
    /// their addresses on every port). A URL on the host and port of a URL-prefix target but outside every
    /// prefix for it (and outside every `host:port` target) is refused, allowed networks or not.
    pub fn check_url(&self, url: &url::Url) -> Result<(), Error> {
        let host = bare_host(url.host_str().unwrap_or_default());
        if !self.only_hosts.is_empty() && !self.only_hosts.contains(&host) {
            return Err(Error::Blocked(format!(
                "Host {} is not among the hosts probed",
                truncate(&host)
            )));
        }
        let Some(port) = url.port_or_known_default() else {
            return Err(Error::Blocked("URL has no port".into()));
        };
        if DEFAULT_PORTS.contains(&port) {
            return Ok(());
        }
        let mut prefixed = false;
        for target in &self.targets {
            match target {
                Target::HostPort(h, p) if *h == host && *p == port => return Ok(()),
                Target::Prefix {
                    prefix,
                    host: h,
                    port: p,
                } if *h == host && *p == port => {
                    if url.as_str().starts_with(prefix.as_str()) {
                        return Ok(());
                    }
                    prefixed = true;
                }
                _ => {}
            }
        }
        if !prefixed && !self.allowed.is_empty() {
            return Ok(());
        }
        Err(Error::Blocked(format!(
            "Port {port} of {} is not allowed",
            truncate(&host)
        )))
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

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn only_ports_80_and_443_by_default() {
        let policy = Policy::default();
        assert_eq!(Ok(()), policy.check_url(&url("http://example.org/a.png")));
        assert_eq!(Ok(()), policy.check_url(&url("https://example.org:443/a.png")));
        assert_eq!(Ok(()), policy.check_url(&url("http://example.org:443/a.png")));
        for bad in [
            "http://example.org:25/",
            "https://example.org:6379/",
            "http://8.8.8.8:8080/",
        ] {
            let err = policy.check_url(&url(bad)).unwrap_err();
            assert_eq!("blocked", err.code(), "{bad}");
        }
        assert_eq!(Ok(()), policy.check_connect("example.org", ip("8.8.8.8"), 443));
        let err = policy
            .check_connect("example.org", ip("8.8.8.8"), 25)
            .unwrap_err();
        assert_eq!("Port 25 of example.org is not allowed", err.to_string());
    }

    #[test]
    fn targets_allow_their_port() {
        let policy = Policy::default()
            .with_targets(&[
                "Upload.Example.org:5281",
                "https://files.example.org:8443/share/",
                "[2606:4700::1]:8080",
            ])
            .unwrap();
        assert_eq!(
            Ok(()),
            policy.check_url(&url("https://upload.example.org:5281/x/y.png"))
        );
        assert_eq!(
            Ok(()),
            policy.check_connect("UPLOAD.example.org", ip("8.8.8.8"), 5281)
        );
        assert!(policy
            .check_url(&url("https://upload.example.org:5282/"))
            .is_err());
        assert!(policy.check_url(&url("https://other.example.org:5281/")).is_err());
        assert_eq!(
            Ok(()),
            policy.check_url(&url("https://files.example.org:8443/share/a.png"))
        );
        assert!(policy
            .check_url(&url("https://files.example.org:8443/private/a.png"))
            .is_err());
        assert!(
            policy
                .check_url(&url("http://files.example.org:8443/share/a.png"))
                .is_err(),
            "scheme is part of the prefix"
        );
        assert_eq!(Ok(()), policy.check_url(&url("http://[2606:4700::1]:8080/a")));
        assert_eq!(
            Ok(()),
            policy.check_connect("[2606:4700::1]", ip("2606:4700::1"), 8080)
        );
        // A target allows the port, not the address.
        assert!(policy
            .check_connect("upload.example.org", ip("10.0.0.1"), 5281)
            .is_err());
    }

    #[test]
    fn allowed_networks_exempt_the_port_too() {
        let policy = Policy::parse(&["127.0.0.0/8"]).unwrap();
        assert_eq!(
            Ok(()),
            policy.check_url(&url("http://localhost:8080/")),
            "decided at connection"
        );
        assert_eq!(Ok(()), policy.check_connect("localhost", ip("127.0.0.1"), 8080));
        assert!(policy.check_connect("example.org", ip("8.8.8.8"), 8080).is_err());
        // A URL-prefix target is the narrower rule for its host and port.
        let policy = policy.with_targets(&["http://localhost:8080/files/"]).unwrap();
        assert!(policy.check_url(&url("http://localhost:8080/admin")).is_err());
        assert_eq!(Ok(()), policy.check_url(&url("http://localhost:8080/files/a")));
    }

    #[test]
    fn rejects_malformed_targets() {
        for bad in [
            "",
            "example.org",
            "example.org:",
            "example.org:0",
            "example.org:65536",
            "example.org:+80",
            ":80",
            "::1:80",
            "exa mple.org:80",
            "ftp://example.org/",
            "https://user:pw@example.org/",
            "https://example.org/?q",
        ] {
            let err = Target::parse(bad).unwrap_err();
            assert_eq!("bad-request", err.code(), "{bad}");
        }
        assert_eq!("[::1]:80", Target::parse("[::1]:80").unwrap().to_string());
        assert_eq!(
            "https://a.example/f/",
            Target::parse("HTTPS://A.example:443/f/").unwrap().to_string()
        );
        let err = Policy::default()
            .with_targets(&["ok.example:1", "nonsense"])
            .unwrap_err();
        assert!(err.to_string().contains("'nonsense'"), "{err}");
    }

    #[test]
    fn nat64_prefixes_are_judged_by_their_ipv4() {
        let default = Policy::default();
        assert!(default.check(ip("64:ff9b::7f00:1")).is_err());
        // An operator prefix is unknown until configured.
        assert_eq!(Ok(()), default.check(ip("2a00:64::7f00:1")));
        let policy = Policy::default()
            .with_nat64(&["2a00:64::/96", "2001:db8:64::/96", "2a01:5::/64", "2a02::/32"])
            .unwrap();
        assert_eq!(
            "Address 2a00:64::7f00:1 is not allowed (loopback)",
            policy.check(ip("2a00:64::7f00:1")).unwrap_err().to_string()
        );
        assert_eq!(Ok(()), policy.check(ip("2a00:64::808:808")));
        assert!(policy.check(ip("2001:db8:64::a00:1")).is_err());
        // /64: the IPv4 address follows the u octet (bits 64 to 71).
        assert!(
            policy.check(ip("2a01:5::a:0:100:0")).is_err(),
            "10.0.0.1 after the u octet"
        );
        assert_eq!(Ok(()), policy.check(ip("2a01:5::8:808:800:0")));
        // /32: right after the prefix.
        assert!(policy.check(ip("2a02:0:a9fe:a9fe::")).is_err(), "169.254.169.254");
        for bad in [
            "10.0.0.0/8",
            "64:ff9b::/95",
            "64:ff9b::",
            "nonsense",
            "2001:db8::/128",
        ] {
            assert_eq!(
                "bad-request",
                Policy::default().with_nat64(&[bad]).unwrap_err().code(),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_hosts_refuse_other_hosts_before_anything() {
        let policy = Policy::default()
            .with_only_hosts(&["Upload.Example.org", "127.0.0.1"])
            .unwrap();
        assert_eq!(Ok(()), policy.check_url(&url("https://upload.example.ORG/a.png")));
        assert_eq!(Ok(()), policy.check_url(&url("http://127.0.0.1/a.png")));
        for bad in [
            "https://example.org/",
            "https://sub.upload.example.org/",
            "https://upload.example.org.evil/",
        ] {
            assert_eq!(
                "blocked",
                policy.check_url(&url(bad)).unwrap_err().code(),
                "{bad}"
            );
        }
        assert!(Policy::default().with_only_hosts(&["a/b"]).is_err());
        assert!(Policy::default().with_only_hosts(&[""]).is_err());
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
