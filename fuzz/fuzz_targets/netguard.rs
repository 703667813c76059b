//! Fuzzes the address checks of fetching (rust/media/netguard.rs) and URL acceptance (rust/media/fetch.rs): no input panics,
//! a parsed network prints back to itself and contains its own address, an IPv4-mapped IPv6 address is judged
//! exactly as its IPv4 address, the policy agrees with the blocklist, an allow-list entry always admits its
//! address, and every accepted URL is http or https with a host and no credentials. The port and host rules:
//! parsing targets, NAT64 prefixes and only-hosts never panics and a parsed target prints back to itself;
//! without allowed networks, an accepted URL has port 80 or 443 or matches a target; an only-hosts policy
//! accepts only URLs on its hosts; an address inside a NAT64 prefix is judged as the IPv4 address it embeds.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use prosody_native::media::fetch::parse_url;
use prosody_native::media::netguard::{blocked_reason, canonical, Cidr, Policy, Target};

fn check_address(ip: IpAddr) {
    let strict = Policy::default();
    assert_eq!(strict.check(ip).is_ok(), blocked_reason(canonical(ip)).is_none());
    if let IpAddr::V6(v6) = ip {
        if let Some(v4) = v6.to_ipv4_mapped() {
            assert_eq!(blocked_reason(IpAddr::V4(v4)), blocked_reason(ip));
        }
    }
    let own = Cidr::new(canonical(ip), if canonical(ip).is_ipv4() { 32 } else { 128 }).unwrap();
    assert!(Policy::new(vec![own]).check(ip).is_ok());
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 16 {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&data[..16]);
        check_address(IpAddr::V6(Ipv6Addr::from(octets)));
        if data.len() >= 20 {
            check_nat64(octets, [data[16], data[17], data[18], data[19]]);
        }
    }
    if data.len() >= 4 {
        check_address(IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(net) = Cidr::parse(text) {
        assert_eq!(Ok(net), Cidr::parse(&net.to_string()));
        assert!(net.contains(net.addr()));
    }
    let _ = Policy::parse(&text.split(',').collect::<Vec<_>>());
    if let Ok(target) = Target::parse(text) {
        assert_eq!(Ok(target.clone()), Target::parse(&target.to_string()));
    }
    let _ = Policy::default().with_nat64(&text.split(',').collect::<Vec<_>>());
    let _ = Policy::default().with_only_hosts(&text.split(',').collect::<Vec<_>>());
    // "<targets>|<url>": the URL judged against those targets and against only-hosts made of them.
    if let Some((targets, url_text)) = text.split_once('|') {
        let list: Vec<&str> = targets.split(',').collect();
        if let (Ok(policy), Ok(url)) = (Policy::default().with_targets(&list), parse_url(url_text)) {
            if policy.check_url(&url).is_ok() {
                let port = url.port_or_known_default().unwrap();
                let host = url.host_str().unwrap().trim_matches(['[', ']']).to_ascii_lowercase();
                assert!(
                    port == 80
                        || port == 443
                        || policy.targets().iter().any(|t| match t {
                            Target::HostPort(h, p) => *h == host && *p == port,
                            Target::Prefix { prefix, .. } => url.as_str().starts_with(prefix.as_str()),
                        }),
                    "{url} passed without an allowed port"
                );
            }
        }
        if let (Ok(policy), Ok(url)) = (Policy::default().with_only_hosts(&list), parse_url(url_text)) {
            if !policy.only_hosts().is_empty() && policy.check_url(&url).is_ok() {
                let host = url.host_str().unwrap().trim_matches(['[', ']']).to_ascii_lowercase();
                assert!(policy.only_hosts().contains(&host), "{url} is not on {list:?}");
            }
        }
    }
    if let Ok(url) = parse_url(text) {
        assert!(matches!(url.scheme(), "http" | "https"));
        assert!(url.host_str().is_some_and(|h| !h.is_empty()));
        assert!(url.username().is_empty() && url.password().is_none());
    }
});

/// An operator NAT64 prefix built from the input: every address in it is judged as its embedded IPv4 address.
fn check_nat64(octets: [u8; 16], v4: [u8; 4]) {
    let lengths = [32u8, 40, 48, 56, 64, 96];
    let length = lengths[usize::from(octets[15]) % lengths.len()];
    let Ok(net) = Cidr::new(IpAddr::V6(Ipv6Addr::from(octets)), length) else {
        return;
    };
    let Ok(policy) = Policy::default().with_nat64(&[net.to_string()]) else {
        panic!("{net} is a valid NAT64 prefix");
    };
    // The RFC 6052 layout: the IPv4 bytes right after the prefix, skipping byte 8 (the u octet).
    let mut bytes = match net.addr() {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => unreachable!(),
    };
    let mut at = usize::from(length / 8);
    for byte in v4 {
        if at == 8 {
            at += 1;
        }
        bytes[at] = byte;
        at += 1;
    }
    let addr = IpAddr::V6(Ipv6Addr::from(bytes));
    if canonical(addr) != addr {
        return; // a prefix over ::ffff:0:0/96: IPv4-mapped addresses are IPv4 addresses first
    }
    let v4 = IpAddr::V4(Ipv4Addr::from(v4));
    assert_eq!(blocked_reason(v4).is_none(), policy.check(addr).is_ok(), "{addr} in {net}");
}
