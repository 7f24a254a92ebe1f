//! The checks Istio's webhook applies across the networking kinds (istio/istio
//! `pkg/config/validation` and its `agent` helpers): host names, ports, labels,
//! durations, exportTo. Each answers why a value is wrong, without the field path;
//! the caller adds the path.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

/// `Err("<field path>: <why>")`, as the other kinds' `validate()` return.
pub type Check = Result<(), String>;

/// Prefixes `why` with the field path.
pub fn at(path: &str, why: impl std::fmt::Display) -> String {
    format!("{path}: {why}")
}

/// Runs `check` and puts `path` in front of its error.
pub fn on<T>(path: &str, check: Result<T, String>) -> Result<T, String> {
    check.map_err(|why| at(path, why))
}

/// RFC 1123 label, lower case (Kubernetes' and Istio's `IsDNS1123Label`).
pub fn dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && b.len() <= 63 && edge(&b[0]) && edge(&b[b.len() - 1]) && b.iter().all(inner)
}

/// `*`, or a label with an optional `*` or `*-` in front (`*foo`, `*-foo`, `foo`).
fn wildcard_label(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    let rest = s.strip_prefix("*-").or_else(|| s.strip_prefix('*')).unwrap_or(s);
    dns1123_label(rest)
}

fn domain_preconditions(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    Ok(())
}

/// Dot-separated labels; a trailing dot is allowed, an all-numeric last label is not.
fn dns1123_labels(domain: &str, whole: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let top = parts[parts.len() - 1];
    if !top.is_empty() && top.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!("domain name {whole:?} invalid (top level domain {top:?} cannot be all-numeric)"));
    }
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() {
            break;
        }
        if !dns1123_label(label) {
            return Err(format!("domain name {whole:?} invalid (label {label:?} invalid)"));
        }
    }
    Ok(())
}

/// A fully qualified (or short) DNS name, no wildcard (Istio's `ValidateFQDN`).
pub fn fqdn(name: &str) -> Result<(), String> {
    domain_preconditions(name)?;
    dns1123_labels(name, name)
}

/// A DNS name whose first label may carry a wildcard (Istio's `ValidateWildcardDomain`).
pub fn wildcard_domain(name: &str) -> Result<(), String> {
    domain_preconditions(name)?;
    let (first, rest) = match name.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    if !wildcard_label(first) {
        return Err(format!("domain name {name:?} invalid (label {first:?} invalid)"));
    }
    match rest {
        Some(rest) => dns1123_labels(rest, name),
        None => Ok(()),
    }
}

/// `*` only as a whole first label: `*.example.com`, never `a*.example.com`.
pub fn no_partial_wildcard(name: &str) -> Result<(), String> {
    if name.contains('*') && name != "*" && !name.starts_with("*.") {
        return Err(format!("partial wildcard {name:?} not allowed"));
    }
    Ok(())
}

pub fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

pub fn ip(s: &str) -> Result<(), String> {
    if is_ip(s) { Ok(()) } else { Err(format!("{s} is not a valid IP")) }
}

/// An address or a CIDR block (Istio's `ValidateIPSubnet`).
pub fn ip_or_cidr(s: &str) -> Result<(), String> {
    match s.split_once('/') {
        Some((addr, len)) => {
            let max = match addr.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => 32,
                Ok(IpAddr::V6(_)) => 128,
                Err(_) => return Err(format!("{s} is not a valid CIDR block")),
            };
            match len.parse::<u8>() {
                Ok(l) if l <= max && !len.starts_with('+') => Ok(()),
                _ => Err(format!("{s} is not a valid CIDR block")),
            }
        }
        None => ip(s),
    }
}

pub fn port(n: i64) -> Result<(), String> {
    if (1..=65535).contains(&n) { Ok(()) } else { Err(format!("port number {n} must be in the range 1..65535")) }
}

/// A port name is an RFC 1123 label (Istio's `ValidatePortName`).
pub fn port_name(name: &str) -> Result<(), String> {
    if dns1123_label(name) { Ok(()) } else { Err(format!("invalid port name: {name:?}")) }
}

/// Protocols Istio knows (`pkg/config/protocol`), case-insensitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Http2,
    HttpProxy,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Udp,
    Mongo,
    Redis,
    Mysql,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "http_proxy" => Protocol::HttpProxy,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            _ => return None,
        })
    }

    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::HttpProxy | Protocol::Grpc | Protocol::GrpcWeb)
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }
}

/// An optional protocol (empty: sniffed) that Istio knows.
pub fn protocol(s: &str) -> Result<(), String> {
    if s.is_empty() || Protocol::parse(s).is_some() {
        Ok(())
    } else {
        Err(format!("unsupported protocol {s:?}; use HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TLS, TCP, UDP, MONGO, REDIS or MYSQL"))
    }
}

/// A Kubernetes label key: an optional DNS subdomain prefix and `/`, then a name of
/// at most 63 characters, alphanumeric at both ends, `-_.` inside.
fn label_key(k: &str) -> bool {
    let name = match k.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(dns1123_label) {
                return false;
            }
            name
        }
        None => k,
    };
    label_value(name) && !name.is_empty()
}

fn label_value(v: &str) -> bool {
    let b = v.as_bytes();
    let edge = |c: &u8| c.is_ascii_alphanumeric();
    b.is_empty()
        || (b.len() <= 63
            && edge(&b[0])
            && edge(&b[b.len() - 1])
            && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

/// Labels as Kubernetes allows them (Istio's `labels.Instance.Validate`).
pub fn labels(path: &str, labels: &BTreeMap<String, String>) -> Check {
    for (k, v) in labels {
        if !label_key(k) {
            return Err(at(&format!("{path}.{k:?}"), format!("invalid label key {k:?}")));
        }
        if !label_value(v) {
            return Err(at(&format!("{path}.{k:?}"), format!("invalid label value {v:?}")));
        }
    }
    Ok(())
}

/// A workload selector's labels: no empty key, no `*` (Istio's
/// `validateWorkloadSelector`).
pub fn selector(path: &str, labels: &BTreeMap<String, String>) -> Check {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(at(path, format!("empty key is not supported in selector: \"={v}\"")));
        }
        if k.contains('*') || v.contains('*') {
            return Err(at(&format!("{path}.{k:?}"), format!("wildcard is not supported in selector: \"{k}={v}\"")));
        }
    }
    Ok(())
}

/// An HTTP header name as Istio accepts it in matches: `[-_A-Za-z0-9]+`.
pub fn header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
        return Err(format!("{name:?} is not a valid header name"));
    }
    Ok(())
}

/// A regular expression Envoy will accept (RE2 syntax, at most 1024 bytes).
pub fn regex(re: &str) -> Result<(), String> {
    if re.is_empty() {
        return Err("regex string match should not be empty".into());
    }
    if re.len() > 1024 {
        return Err("regex is too large, max length allowed is 1024".into());
    }
    regex::Regex::new(re).map(|_| ()).map_err(|e| {
        let first = e.to_string().lines().last().unwrap_or_default().trim().to_string();
        format!("{re:?} is not a valid regex ({first}); Istio uses RE2 syntax")
    })
}

/// A duration as the CRDs take it: Go's form (`1.5s`, `100ms`, `2m`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (write it like 1.5s, 100ms, 2m or 1h30m)");
    if s.starts_with('-') {
        return Err(format!("{s:?} is negative"));
    }
    let t = s.strip_prefix('+').unwrap_or(s);
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(bad());
    }
    let mut nanos: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(bad());
        }
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
        let mut part = whole.checked_mul(scale).ok_or_else(bad)?;
        let mut div = scale;
        for d in frac.bytes().take(30) {
            div /= 10;
            part += u128::from(d - b'0') * div;
        }
        nanos = nanos.checked_add(part).ok_or_else(bad)?;
        rest = next;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| bad())?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// A duration Istio accepts: at least 1ms, in whole milliseconds
/// (`agent.ValidateDuration`).
pub fn duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(1) {
        return Err(format!("{s:?}: duration must be at least 1ms"));
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("{s:?}: only durations to ms precision are supported"));
    }
    Ok(d)
}

/// `exportTo`: `.` (this namespace), `*` (everyone), namespace names; `~` (no one)
/// only in a ServiceEntry. `*` and `~` stand alone; no duplicates (`.` counts as the
/// own namespace). A DestinationRule with a workload selector exports to its own
/// namespace only.
pub fn export_to(namespace: &str, entries: &[String], service_entry: bool, dr_with_selector: bool) -> Check {
    let path = "spec.exportTo";
    let mut seen = BTreeSet::new();
    for (i, e) in entries.iter().enumerate() {
        let key = if e == "." { namespace } else { e.as_str() };
        let at_i = format!("{path}[{i}]");
        if !seen.insert(key) {
            return Err(if key != e {
                at(&at_i, format!("duplicate entries in exportTo: . and current namespace {namespace}"))
            } else {
                at(&at_i, format!("duplicate entries in exportTo for entry {e}"))
            });
        }
        let known = e == "." || e == "*" || (e == "~" && service_entry) || dns1123_label(e);
        if !known {
            let hint = if e == "~" { " (`~` is for ServiceEntry only)" } else { "" };
            return Err(at(&at_i, format!("{e:?} is not \".\", \"*\" or a namespace name{hint}")));
        }
    }
    if dr_with_selector && !entries.is_empty() {
        if !seen.contains(namespace) {
            return Err(at(path, "destination rule with workload selector cannot have exportTo beyond current namespace"));
        }
        if seen.len() > 1 {
            return Err(at(path, "destination rule with workload selector cannot have multiple entries in exportTo"));
        }
    }
    if seen.contains("*") && entries.len() > 1 {
        return Err(at(path, "cannot have both public (*) and non-public exportTo values for a resource"));
    }
    if seen.contains("~") && entries.len() > 1 {
        return Err(at(path, "cannot export service entry to no one (~) and someone"));
    }
    Ok(())
}

/// `ns/host` of a Gateway server or a Sidecar egress listener. The namespace part is
/// `*`, `.`, a namespace name, or (Sidecar only) `~`; the host part is `*` or a DNS
/// name with at most a leading `*.` wildcard, never a short name. A Gateway also
/// takes the old form without `ns/`, and an IP address as the host.
pub fn namespace_slash_host(host: &str, gateway: bool) -> Result<(), String> {
    let Some((ns, name)) = host.split_once('/') else {
        if gateway {
            return host_part(host, true);
        }
        return Err(format!("host {host:?} must be of form namespace/dnsName"));
    };
    if ns.is_empty() || name.is_empty() {
        return Err(format!("config namespace and dnsName in host entry {host:?} cannot be empty"));
    }
    let special = ns == "*" || ns == "." || (ns == "~" && !gateway);
    if !special && !dns1123_label(ns) {
        let kind = if gateway { "gateway" } else { "sidecar" };
        return Err(format!("invalid namespace value {ns:?} in {kind}"));
    }
    host_part(name, gateway)
}

fn host_part(name: &str, gateway: bool) -> Result<(), String> {
    if name != "*" && !name.contains('.') {
        return Err(format!("short names (non FQDN) are not allowed: {name:?}"));
    }
    if let Err(e) = wildcard_domain(name) {
        if !(gateway && is_ip(name)) {
            return Err(e);
        }
    }
    no_partial_wildcard(name)
}

/// Istio's host name matching (`host.Name.Matches`): the two overlap.
pub fn hosts_overlap(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb) || sb.ends_with(sa),
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// Every name `a` covers is covered by `b` (`host.Name.SubsetOf`).
pub fn host_subset_of(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb),
        (None, Some(sb)) => a.ends_with(sb),
        (Some(_), None) => false,
        (None, None) => a == b,
    }
}

/// A percentage in 0..=100.
pub fn percent(value: f64) -> Result<(), String> {
    if (0.0..=100.0).contains(&value) { Ok(()) } else { Err(format!("percentage {value} is not in range 0..100")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_form() {
        let ms = Duration::from_millis;
        let cases: &[(&str, Result<Duration, &str>)] = &[
            ("1.5s", Ok(ms(1500))),
            ("100ms", Ok(ms(100))),
            ("2m", Ok(ms(120_000))),
            ("1h30m", Ok(ms(5_400_000))),
            ("0.001s", Ok(ms(1))),
            ("10s", Ok(ms(10_000))),
            ("0", Err("at least 1ms")),
            ("500us", Err("at least 1ms")),
            ("1.0005s", Err("ms precision")),
            ("-1s", Err("negative")),
            ("10", Err("not a duration")),
            ("s", Err("not a duration")),
            ("1d", Err("not a duration")),
            ("1..5s", Err("not a duration")),
        ];
        for (s, want) in cases {
            match (duration(s), want) {
                (Ok(d), Ok(w)) => assert_eq!(d, *w, "{s}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{s}: {e} should contain {w}"),
                (got, _) => panic!("{s}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn host_names() {
        assert!(wildcard_domain("reviews").is_ok());
        assert!(wildcard_domain("*.example.com").is_ok());
        assert!(wildcard_domain("*").is_ok());
        assert!(wildcard_domain("example.com.").is_ok());
        assert!(wildcard_domain("a.*.com").unwrap_err().contains("label \"*\" invalid"));
        assert!(wildcard_domain("Reviews").is_err());
        assert!(wildcard_domain("foo.123").unwrap_err().contains("all-numeric"));
        assert!(fqdn("*.example.com").is_err());
        assert!(hosts_overlap("*.foo.com", "*.com"));
        assert!(hosts_overlap("a.foo.com", "*.foo.com"));
        assert!(!hosts_overlap("a.foo.com", "b.foo.com"));
        assert!(host_subset_of("a.foo.com", "*.foo.com"));
        assert!(!host_subset_of("*.foo.com", "a.foo.com"));
        assert!(host_subset_of("a.b.com", "*"));
        assert!(ip_or_cidr("10.0.0.0/8").is_ok());
        assert!(ip_or_cidr("2001:db8::/129").is_err());
        assert!(ip_or_cidr("10.0.0.1").is_ok());
        assert!(ip_or_cidr("10.0.0").is_err());
    }
}
