//! Which IP addresses count as public. A sandbox may reach only public addresses, unless the
//! caller allowed one exact address (see [`crate::Policy`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The cloud metadata service on AWS, GCP, Azure, OpenStack, ... (inside 169.254.0.0/16).
pub const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// AWS's IPv6 metadata service (inside fc00::/7).
pub const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// Why `ip` is not a public address (a short class name such as `"loopback"`), or `None` if it
/// is public.
///
/// Not public: unspecified, `0.0.0.0/8`, loopback, private (`10/8`, `172.16/12`,
/// `192.168/16`, `fc00::/7`), link-local (`169.254/16`, `fe80::/10`) including the metadata
/// addresses [`METADATA_V4`] and [`METADATA_V6`], CGNAT `100.64/10`, multicast, broadcast,
/// the other IANA special-purpose blocks (documentation, benchmarking, `240/4`, `192.0.0/24`,
/// deprecated site-local `fec0::/10`, Teredo, everything outside `2000::/3` such as
/// IPv4-compatible `::/96`), and IPv6 forms that embed an IPv4 address (IPv4-mapped
/// `::ffff:0:0/96`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) when the embedded address is not
/// public.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => non_public_v4(a),
        IpAddr::V6(a) => non_public_v6(a),
    }
}

/// `ip` with IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) turned into IPv4: the same host.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn non_public_v4(a: Ipv4Addr) -> Option<&'static str> {
    if a == METADATA_V4 {
        return Some("cloud metadata");
    }
    Some(match a.octets() {
        [0, 0, 0, 0] => "unspecified",
        [0, ..] => "this-network 0.0.0.0/8",
        [127, ..] => "loopback",
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => "private",
        [169, 254, ..] => "link-local",
        [100, 64..=127, ..] => "shared CGNAT 100.64.0.0/10",
        [192, 0, 0, _] => "IETF protocol assignments 192.0.0.0/24",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation",
        [198, 18..=19, ..] => "benchmarking",
        [224..=239, ..] => "multicast",
        [255, 255, 255, 255] => "broadcast",
        [240..=255, ..] => "reserved 240.0.0.0/4",
        _ => return None,
    })
}

fn non_public_v6(a: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = a.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    if a == METADATA_V6 {
        return Some("cloud metadata");
    }
    let s = a.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if a.is_unspecified() {
        return Some("unspecified");
    }
    if a.is_loopback() {
        return Some("loopback");
    }
    // NAT64 well-known prefix: the gateway would connect to the embedded IPv4 address.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return non_public_v4(embedded(s[6], s[7]));
    }
    if s[..3] == [0x64, 0xff9b, 1] {
        return Some("local-use NAT64 64:ff9b:1::/48");
    }
    // 6to4: the relay would deliver to the embedded IPv4 address.
    if s[0] == 0x2002 {
        return non_public_v4(embedded(s[1], s[2]));
    }
    Some(match s[0] {
        0xfc00..=0xfdff => "private (unique local)",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local (deprecated)",
        0xff00..=0xffff => "multicast",
        0x2001 if s[1] == 0 => "Teredo 2001::/32",
        0x2001 if s[1] == 2 && s[2] == 0 => "benchmarking",
        0x2001 if s[1] == 0x0db8 => "documentation",
        x if x & 0xe000 != 0x2000 => "reserved (outside 2000::/3)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class() {
        let table: &[(&str, Option<&str>)] = &[
            // public
            ("93.184.216.34", None),
            ("1.1.1.1", None),
            ("8.8.8.8", None),
            ("172.15.255.255", None),
            ("172.32.0.1", None),
            ("100.63.255.255", None),
            ("100.128.0.1", None),
            ("169.253.1.1", None),
            ("223.255.255.255", None),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001:81c::200e", None),
            ("::ffff:93.184.216.34", None),
            ("64:ff9b::808:808", None),
            ("2002:0808:0808::1", None),
            // IPv4
            ("0.0.0.0", Some("unspecified")),
            ("0.1.2.3", Some("this-network 0.0.0.0/8")),
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.254", Some("loopback")),
            ("10.0.0.1", Some("private")),
            ("10.255.255.255", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.0.1", Some("link-local")),
            ("169.254.169.254", Some("cloud metadata")),
            ("100.64.0.1", Some("shared CGNAT 100.64.0.0/10")),
            ("100.127.255.255", Some("shared CGNAT 100.64.0.0/10")),
            ("192.0.0.8", Some("IETF protocol assignments 192.0.0.0/24")),
            ("192.0.2.1", Some("documentation")),
            ("198.51.100.1", Some("documentation")),
            ("203.0.113.1", Some("documentation")),
            ("198.18.0.1", Some("benchmarking")),
            ("224.0.0.1", Some("multicast")),
            ("239.255.255.250", Some("multicast")),
            ("255.255.255.255", Some("broadcast")),
            ("240.0.0.1", Some("reserved 240.0.0.0/4")),
            // IPv6
            ("::", Some("unspecified")),
            ("::1", Some("loopback")),
            ("fc00::1", Some("private (unique local)")),
            ("fd12:3456::1", Some("private (unique local)")),
            ("fd00:ec2::254", Some("cloud metadata")),
            ("fe80::1", Some("link-local")),
            ("febf::1", Some("link-local")),
            ("fec0::1", Some("site-local (deprecated)")),
            ("ff02::1", Some("multicast")),
            ("2001::1", Some("Teredo 2001::/32")),
            ("2001:2::1", Some("benchmarking")),
            ("2001:db8::1", Some("documentation")),
            ("::7f00:1", Some("reserved (outside 2000::/3)")),
            ("100::1", Some("reserved (outside 2000::/3)")),
            ("64:ff9b:1::1", Some("local-use NAT64 64:ff9b:1::/48")),
            // IPv4 forms inside IPv6
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:10.1.2.3", Some("private")),
            ("::ffff:169.254.169.254", Some("cloud metadata")),
            ("::ffff:100.64.0.1", Some("shared CGNAT 100.64.0.0/10")),
            ("::ffff:0.0.0.0", Some("unspecified")),
            ("::ffff:255.255.255.255", Some("broadcast")),
            ("64:ff9b::7f00:1", Some("loopback")),
            ("64:ff9b::a9fe:a9fe", Some("cloud metadata")),
            ("2002:c0a8:0101::1", Some("private")),
            ("2002:7f00:0001::1", Some("loopback")),
        ];
        for (addr, want) in table {
            let ip: IpAddr = addr.parse().unwrap();
            assert_eq!(non_public(ip), *want, "{addr}");
        }
    }

    #[test]
    fn canonical_unmaps() {
        assert_eq!(canonical("::ffff:127.0.0.1".parse().unwrap()), "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(canonical("::1".parse().unwrap()), "::1".parse::<IpAddr>().unwrap());
        assert_eq!(canonical("10.0.0.1".parse().unwrap()), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
