//! Ocelot's IP security (`SecurityOptions`, `src/Security/*`): allow and block
//! lists of client addresses, per route or global, plus the gateway's own
//! notion of trusted proxies for `X-Forwarded-For`.
//!
//! Ocelot expands every list entry into the individual addresses of its range
//! (`IPAddressRange`) and compares strings; here entries stay ranges of
//! integers, merged and sorted once at load, so a `/64` costs as little as a
//! single address and a lookup is a binary search.

use crate::diagnostics::Warnings;
use ocelot_compat::model::FileSecurityOptions;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Address family of a range; IPv4 and IPv6 ranges never match each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Family {
    V4,
    V6,
}

/// An inclusive range of addresses of one family, as integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct IpRange {
    family: Family,
    first: u128,
    last: u128,
}

fn to_key(ip: IpAddr) -> (Family, u128) {
    match ip {
        IpAddr::V4(v4) => (Family::V4, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (Family::V6, u128::from(v6)),
    }
}

/// IPv4-mapped IPv6 peers (`::ffff:10.0.0.1`, what a dual-stack listener
/// reports for an IPv4 client) are compared as the IPv4 address they are.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    // A zone index ("fe80::1%eth0") names an interface, not an address.
    let text = text.split_once('%').map_or(text, |(addr, _)| addr);
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    text.parse::<IpAddr>().ok()
}

fn bits(family: Family) -> u32 {
    match family {
        Family::V4 => 32,
        Family::V6 => 128,
    }
}

/// The host part mask of a prefix length (`/24` → `0xff` for IPv4).
fn host_mask(family: Family, prefix: u32) -> Option<u128> {
    let width = bits(family);
    if prefix > width {
        return None;
    }
    let host_bits = width - prefix;
    Some(if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    })
}

impl IpRange {
    /// One address.
    pub(crate) fn single(ip: IpAddr) -> IpRange {
        let (family, value) = to_key(ip);
        IpRange {
            family,
            first: value,
            last: value,
        }
    }

    /// Parses one list entry in the syntaxes Ocelot accepts through
    /// `IPAddressRange.TryParse`: `10.0.0.1`, `10.0.0.1-10.0.0.9` (spaces and an
    /// en dash allowed), `10.0.0.1-9` (last octet), `10.0.0.0/24`,
    /// `10.0.0.0/255.255.255.0`, and the same for IPv6. `None` for anything
    /// else; Ocelot ignores such entries silently and so does the caller.
    pub(crate) fn parse(entry: &str) -> Option<IpRange> {
        let entry = entry.trim();
        if entry.is_empty() {
            return None;
        }
        if let Some((addr, mask)) = entry.split_once('/') {
            let ip = parse_ip(addr)?;
            let (family, value) = to_key(ip);
            let mask = mask.trim();
            let host = if mask.bytes().all(|b| b.is_ascii_digit()) {
                host_mask(family, mask.parse().ok()?)?
            } else {
                // A dotted (or IPv6) bit mask must be contiguous ones then zeros.
                let (mask_family, mask_value) = to_key(parse_ip(mask)?);
                if mask_family != family {
                    return None;
                }
                let host = !mask_value & host_mask(family, 0)?;
                if host & host.wrapping_add(1) != 0 {
                    return None;
                }
                host
            };
            let first = value & !host;
            return Some(IpRange {
                family,
                first,
                last: first | host,
            });
        }
        if let Some((begin, end)) = entry
            .split_once('-')
            .or_else(|| entry.split_once('\u{2013}'))
        {
            let first = parse_ip(begin)?;
            let end = end.trim();
            let last = match parse_ip(end) {
                Some(ip) => ip,
                // "192.168.1.30-50": the end replaces the last octet.
                None => match first {
                    IpAddr::V4(v4) => {
                        let octet: u8 = end.parse().ok()?;
                        let [a, b, c, _] = v4.octets();
                        IpAddr::V4(Ipv4Addr::new(a, b, c, octet))
                    }
                    IpAddr::V6(_) => return None,
                },
            };
            let (family, first) = to_key(first);
            let (last_family, last) = to_key(last);
            if family != last_family || first > last {
                return None;
            }
            return Some(IpRange {
                family,
                first,
                last,
            });
        }
        parse_ip(entry).map(IpRange::single)
    }

    /// Whether `ip` is in this range.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let (family, value) = to_key(ip);
        family == self.family && self.first <= value && value <= self.last
    }
}

/// A set of ranges, merged and sorted for binary search.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct IpSet {
    ranges: Vec<IpRange>,
}

impl IpSet {
    /// Builds the set from list entries, skipping (and returning) the ones
    /// that do not parse.
    pub(crate) fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> (IpSet, Vec<String>) {
        let mut ranges = Vec::new();
        let mut invalid = Vec::new();
        for entry in entries {
            match IpRange::parse(entry) {
                Some(range) => ranges.push(range),
                None => invalid.push(entry.to_string()),
            }
        }
        (IpSet::from_ranges(ranges), invalid)
    }

    fn from_ranges(mut ranges: Vec<IpRange>) -> IpSet {
        ranges.sort();
        let mut merged: Vec<IpRange> = Vec::with_capacity(ranges.len());
        for range in ranges {
            match merged.last_mut() {
                Some(prev)
                    if prev.family == range.family
                        && range.first <= prev.last.saturating_add(1) =>
                {
                    prev.last = prev.last.max(range.last);
                }
                _ => merged.push(range),
            }
        }
        IpSet { ranges: merged }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether any range holds `ip`.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let (family, value) = to_key(ip);
        // The last range starting at or before `ip` is the only candidate.
        let probe = IpRange {
            family,
            first: value,
            last: u128::MAX,
        };
        let idx = self.ranges.partition_point(|r| *r <= probe);
        idx > 0 && self.ranges[idx - 1].contains(ip)
    }
}

/// A compiled `SecurityOptions`: Ocelot's `IPSecurityPolicy`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IpPolicy {
    allowed: IpSet,
    blocked: IpSet,
    exclude_allowed_from_blocked: bool,
}

impl IpPolicy {
    /// The policy of a route's effective `SecurityOptions` (chosen by
    /// `ocelot_compat::effective::security`); `None` when it restricts
    /// nothing. Invalid entries are returned for a warning; Ocelot drops them
    /// silently.
    pub(crate) fn compile(
        options: &FileSecurityOptions,
        warnings: &mut Warnings<'_>,
    ) -> Option<IpPolicy> {
        let (allowed, mut invalid) =
            IpSet::parse(options.ip_allowed_list.iter().map(String::as_str));
        let (blocked, invalid_blocked) =
            IpSet::parse(options.ip_blocked_list.iter().map(String::as_str));
        invalid.extend(invalid_blocked);
        let policy = IpPolicy {
            allowed,
            blocked,
            exclude_allowed_from_blocked: options.exclude_allowed_from_blocked,
        };
        if !invalid.is_empty() {
            warnings.warn(
                "SecurityOptions",
                format!(
                    "not an address, range or CIDR, ignored as Ocelot does: {}",
                    invalid.join(", ")
                ),
            );
        }
        // Lists whose every entry was invalid restrict nothing, as in Ocelot.
        (!policy.allowed.is_empty() || !policy.blocked.is_empty()).then_some(policy)
    }

    /// Blocked list first, then the allow list when it is not empty; with
    /// `ExcludeAllowedFromBlocked` an allowed address is never blocked.
    pub(crate) fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let allowed = !self.allowed.is_empty() && self.allowed.contains(ip);
        if self.blocked.contains(ip) && !(self.exclude_allowed_from_blocked && allowed) {
            return false;
        }
        self.allowed.is_empty() || allowed
    }
}

/// Proxies whose `X-Forwarded-For` is believed (gateway setting
/// `trusted_proxies`, same entry syntax as the IP lists).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TrustedProxies {
    set: IpSet,
}

/// The `trusted_proxies` setting: list entries as in `SecurityOptions`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub(crate) struct TrustedProxiesSettings(pub Vec<String>);

impl TrustedProxies {
    /// Compiles the setting; invalid entries are an error here because a
    /// typo would silently make the gateway trust nobody (or everybody).
    pub(crate) fn from_settings(
        settings: &TrustedProxiesSettings,
    ) -> Result<TrustedProxies, String> {
        let (set, invalid) = IpSet::parse(settings.0.iter().map(String::as_str));
        if !invalid.is_empty() {
            return Err(format!(
                "trusted_proxies: not an address, range or CIDR: {}",
                invalid.join(", ")
            ));
        }
        Ok(TrustedProxies { set })
    }

    /// The client address: the socket peer, unless the peer is a trusted
    /// proxy; then `X-Forwarded-For` is walked from the right (the hop nearest
    /// to us) past trusted proxies, and the first untrusted hop is the client.
    /// A malformed hop stops the walk at the last address that was believable.
    /// `forwarded_for` is every `X-Forwarded-For` header value in order.
    pub(crate) fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'a str>,
    ) -> IpAddr {
        let peer = canonical(peer);
        if self.set.is_empty() || !self.set.contains(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_forwarded_hop(hop) else {
                break;
            };
            client = canonical(ip);
            if !self.set.contains(client) {
                break;
            }
        }
        client
    }
}

/// An `X-Forwarded-For` element: an address, possibly with a port
/// (`1.2.3.4:5678`, `[::1]:80`).
fn parse_forwarded_hop(hop: &str) -> Option<IpAddr> {
    if let Some(ip) = parse_ip(hop) {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (addr, _) = rest.split_once(']')?;
        return addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (addr, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::collecting;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn set(entries: &[&str]) -> IpSet {
        let (set, invalid) = IpSet::parse(entries.iter().copied());
        assert!(invalid.is_empty(), "{invalid:?}");
        set
    }

    #[test]
    fn entry_syntaxes() {
        let r = IpRange::parse("192.168.1.30-50").expect("short range");
        assert!(r.contains(ip("192.168.1.30")) && r.contains(ip("192.168.1.50")));
        assert!(!r.contains(ip("192.168.1.51")) && !r.contains(ip("192.168.1.29")));

        let r = IpRange::parse(" 10.0.0.1 - 10.0.1.0 ").expect("range");
        assert!(r.contains(ip("10.0.0.255")) && !r.contains(ip("10.0.1.1")));
        assert!(
            IpRange::parse("10.0.0.1\u{2013}10.0.0.2").is_some(),
            "en dash"
        );

        let r = IpRange::parse("172.16.5.9/12").expect("cidr");
        assert!(r.contains(ip("172.16.0.0")) && r.contains(ip("172.31.255.255")));
        assert!(!r.contains(ip("172.32.0.0")));

        let r = IpRange::parse("192.168.0.0/255.255.255.0").expect("mask");
        assert!(r.contains(ip("192.168.0.200")) && !r.contains(ip("192.168.1.0")));

        let r = IpRange::parse("2001:db8::/32").expect("v6 cidr");
        assert!(r.contains(ip("2001:db8:ffff::1")) && !r.contains(ip("2001:db9::")));
        let r = IpRange::parse("fe80::1 - fe80::ff").expect("v6 range");
        assert!(r.contains(ip("fe80::80")) && !r.contains(ip("fe80::100")));
        assert!(IpRange::parse("::1").expect("v6").contains(ip("::1")));
        assert!(IpRange::parse("fe80::1%eth0")
            .expect("zone")
            .contains(ip("fe80::1")));
        assert!(IpRange::parse("0.0.0.0/0")
            .expect("all v4")
            .contains(ip("255.1.2.3")));
        assert!(IpRange::parse("::/0")
            .expect("all v6")
            .contains(ip("ffff::1")));
    }

    #[test]
    fn invalid_entries_are_rejected() {
        for bad in [
            "",
            "nope",
            "10.0.0.1/33",
            "::1/129",
            "10.0.0.9-10.0.0.1",
            "10.0.0.1-::1",
            "10.0.0.1-300",
            "10.0.0.0/255.0.255.0",
            "fe80::1-5",
            "10.0.0.256",
        ] {
            assert_eq!(IpRange::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn families_never_mix() {
        let s = set(&["0.0.0.0/0"]);
        assert!(s.contains(ip("8.8.8.8")));
        assert!(!s.contains(ip("2001:db8::1")));
    }

    #[test]
    fn sets_merge_and_search() {
        let s = set(&[
            "10.0.0.5",
            "10.0.0.1-4",
            "10.0.0.6-10.0.0.6",
            "10.0.1.0/24",
            "::1",
            "10.0.0.8",
        ]);
        for yes in ["10.0.0.1", "10.0.0.6", "10.0.0.8", "10.0.1.99", "::1"] {
            assert!(s.contains(ip(yes)), "{yes}");
        }
        for no in [
            "10.0.0.0", "10.0.0.7", "10.0.0.9", "10.0.2.0", "::2", "0.0.0.1",
        ] {
            assert!(!s.contains(ip(no)), "{no}");
        }
        assert_eq!(s.ranges.len(), 4, "{:?}", s.ranges);
    }

    fn options(allowed: &[&str], blocked: &[&str], exclude: bool) -> FileSecurityOptions {
        FileSecurityOptions {
            ip_allowed_list: allowed.iter().map(|s| s.to_string()).collect(),
            ip_blocked_list: blocked.iter().map(|s| s.to_string()).collect(),
            exclude_allowed_from_blocked: exclude,
        }
    }

    #[test]
    fn ocelot_acceptance_cases() {
        // SecurityOptionsTests: allowed 192.168.1.30-50, blocked 192.168.1.1-100.
        let o = options(&["192.168.1.30-50"], &["192.168.1.1-100"], false);
        let (p, _) = collecting(|w| IpPolicy::compile(&o, w));
        let p = p.expect("policy");
        assert!(
            !p.permits(ip("192.168.1.35")),
            "blocked wins without the exclusion"
        );
        assert!(!p.permits(ip("192.168.1.55")));
        let o = options(&["192.168.1.30-50"], &["192.168.1.1-100"], true);
        let p = collecting(|w| IpPolicy::compile(&o, w)).0.expect("policy");
        assert!(
            p.permits(ip("192.168.1.35")),
            "allowed is excluded from blocked"
        );
        assert!(!p.permits(ip("192.168.1.55")));
        assert!(!p.permits(ip("10.0.0.1")), "not in the allow list");
    }

    #[test]
    fn invalid_entries_are_reported_and_ignored() {
        let o = options(&["bogus", "10.0.0.1"], &["also bogus"], false);
        let (p, invalid) = collecting(|w| IpPolicy::compile(&o, w));
        assert_eq!(invalid.len(), 1, "{invalid:?}");
        assert_eq!(invalid[0].field, "SecurityOptions");
        assert!(
            invalid[0].message.ends_with(": bogus, also bogus"),
            "{invalid:?}"
        );
        let p = p.expect("policy");
        assert!(p.permits(ip("10.0.0.1")) && !p.permits(ip("10.0.0.2")));
        let o = options(&["bogus"], &[], false);
        assert_eq!(
            collecting(|w| IpPolicy::compile(&o, w)).0,
            None,
            "nothing valid: no restriction"
        );
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_entries() {
        let o = options(&[], &["127.0.0.1"], false);
        let p = collecting(|w| IpPolicy::compile(&o, w)).0.expect("policy");
        assert!(!p.permits(ip("::ffff:127.0.0.1")));
        assert!(p.permits(ip("::ffff:127.0.0.2")));
    }

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::from_settings(&TrustedProxiesSettings(
            entries.iter().map(|s| s.to_string()).collect(),
        ))
        .expect("valid")
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let t = trusted(&["10.0.0.0/8", "::1"]);
        let xff = ["203.0.113.7, 10.1.1.1"];
        assert_eq!(
            t.client_ip(ip("10.0.0.2"), xff.iter().copied()),
            ip("203.0.113.7")
        );
        assert_eq!(
            t.client_ip(ip("192.0.2.1"), xff.iter().copied()),
            ip("192.0.2.1"),
            "untrusted peer"
        );
        // A client cannot spoof by prepending: the rightmost untrusted hop wins.
        let xff = ["1.1.1.1, 203.0.113.7"];
        assert_eq!(
            t.client_ip(ip("::1"), xff.iter().copied()),
            ip("203.0.113.7")
        );
        // Several headers are one list; ports are allowed.
        let xff = ["198.51.100.2:4711", "10.9.9.9"];
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), xff.iter().copied()),
            ip("198.51.100.2")
        );
        let xff = ["[2001:db8::5]:443"];
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), xff.iter().copied()),
            ip("2001:db8::5")
        );
        // Garbage stops the walk at the last believable address.
        let xff = ["203.0.113.7, junk, 10.2.2.2"];
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), xff.iter().copied()),
            ip("10.2.2.2")
        );
        // No header: the proxy itself.
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), std::iter::empty()),
            ip("10.0.0.1")
        );
        assert_eq!(
            TrustedProxies::default().client_ip(ip("10.0.0.1"), ["1.2.3.4"].into_iter()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn bad_trusted_proxy_settings_fail() {
        let e = TrustedProxies::from_settings(&TrustedProxiesSettings(vec![
            "10.0.0.0/8".into(),
            "x".into(),
        ]))
        .expect_err("invalid");
        assert!(e.contains("x"), "{e}");
    }
}
