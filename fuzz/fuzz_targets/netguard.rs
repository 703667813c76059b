//! Fuzzes the address checks of fetching (rust/media/netguard.rs) and URL acceptance (rust/media/fetch.rs): no input panics,
//! a parsed network prints back to itself and contains its own address, an IPv4-mapped IPv6 address is judged
//! exactly as its IPv4 address, the policy agrees with the blocklist, an allow-list entry always admits its
//! address, and every accepted URL is http or https with a host and no credentials.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use prosody_native::media::fetch::parse_url;
use prosody_native::media::netguard::{blocked_reason, canonical, Cidr, Policy};

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
    if let Ok(url) = parse_url(text) {
        assert!(matches!(url.scheme(), "http" | "https"));
        assert!(url.host_str().is_some_and(|h| !h.is_empty()));
        assert!(url.username().is_empty() && url.password().is_none());
    }
});
