//! VirtualService checks, as Istio's `ValidateVirtualService` and `validateHTTPRoute`.
use std::collections::BTreeMap;

use super::*;
use crate::controlplane::networking::check::{self, at, on, Check};
use crate::controlplane::networking::{required, Destination, Percent};

/// Header keys that route on a JWT claim (gateways only).
const CLAIM_PREFIX: &str = "@request.auth.claims.";

impl Spec {
    /// Bound to gateways only (not to the `mesh` pseudo-gateway).
    pub fn for_gateways_only(&self) -> bool {
        !self.gateways.is_empty() && !self.gateways.iter().any(|g| g == "mesh")
    }

    /// Istio's validation: what is wrong, by field path.
    pub fn validate(&self, namespace: &str) -> Check {
        let delegate = self.hosts.is_empty();
        if delegate {
            let why = "a delegate VirtualService (one without hosts) must have";
            if !self.gateways.is_empty() {
                return Err(at("spec.gateways", format!("{why} no gateways")));
            }
            if !self.tls.is_empty() {
                return Err(at("spec.tls", format!("{why} no tls routes")));
            }
            if !self.tcp.is_empty() {
                return Err(at("spec.tcp", format!("{why} no tcp routes")));
            }
        }
        gateway_names("spec.gateways", &self.gateways)?;
        let to_mesh = !self.for_gateways_only();
        for (i, h) in self.hosts.iter().enumerate() {
            let path = format!("spec.hosts[{i}]");
            if let Err(e) = check::wildcard_domain(h) {
                if !check::is_ip(h) {
                    return Err(at(&path, e));
                }
            } else if to_mesh && h == "*" {
                return Err(at(&path, "wildcard host * is not allowed for virtual services bound to the mesh gateway"));
            }
        }
        for (i, a) in self.hosts.iter().enumerate() {
            if let Some(b) = self.hosts[i + 1..].iter().find(|b| check::hosts_overlap(a, b)) {
                return Err(at(&format!("spec.hosts[{i}]"), format!("duplicate hosts in virtual service: {a} & {b}")));
            }
        }
        if self.http.is_empty() && self.tcp.is_empty() && self.tls.is_empty() {
            return Err(at("spec.http", "http, tcp or tls must be provided in virtual service"));
        }
        for (i, r) in self.http.iter().enumerate() {
            let path = format!("spec.http[{i}]");
            if to_mesh {
                let claim = r.matches.iter().flat_map(|m| m.headers.keys().chain(m.without_headers.keys())).find(|k| k.starts_with(CLAIM_PREFIX));
                if let Some(k) = claim {
                    return Err(at(&path, format!("JWT claim based routing (key: {k}) is only supported for gateways")));
                }
            }
            r.validate(&path, delegate)?;
        }
        for (i, r) in self.tls.iter().enumerate() {
            r.validate(&format!("spec.tls[{i}]"), self)?;
        }
        for (i, r) in self.tcp.iter().enumerate() {
            r.validate(&format!("spec.tcp[{i}]"))?;
        }
        check::export_to(namespace, &self.export_to, false, false)
    }
}

/// Gateway references: `mesh`, `<namespace>/<name>`, or the old `name` / FQDN form.
pub fn gateway_names(path: &str, names: &[String]) -> Check {
    for (i, g) in names.iter().enumerate() {
        let path = format!("{path}[{i}]");
        match g.split_once('/') {
            None => on(&path, check::fqdn(g))?,
            Some((ns, name)) => {
                if ns.is_empty() || name.is_empty() {
                    return Err(at(&path, "config namespace and gateway name cannot be empty"));
                }
                if !check::dns1123_label(ns) {
                    return Err(at(&path, format!("invalid value for namespace: {ns:?}")));
                }
                if !check::dns1123_label(name) {
                    return Err(at(&path, format!("invalid value for gateway name: {name:?}")));
                }
            }
        }
    }
    Ok(())
}

/// `port`, `sourceLabels`, `gateways`, `sourceNamespace` of any match.
fn common_match(path: &str, port: u32, labels: &BTreeMap<String, String>, gateways: &[String]) -> Check {
    if port != 0 {
        on(&format!("{path}.port"), check::port(port.into()))?;
    }
    check::labels(&format!("{path}.sourceLabels"), labels)?;
    gateway_names(&format!("{path}.gateways"), gateways)
}

fn source_namespace(path: &str, ns: &str) -> Check {
    if !ns.is_empty() && !check::dns1123_label(ns) {
        return Err(at(&format!("{path}.sourceNamespace"), format!("sourceNamespace match {ns:?} is invalid")));
    }
    Ok(())
}

impl HttpRoute {
    fn validate(&self, path: &str, in_delegate: bool) -> Check {
        let p = |f: &str| format!("{path}.{f}");
        // A root route hands its matching requests to a delegate VirtualService.
        let root = self.delegate.is_some() && !in_delegate;
        if let Some(d) = &self.delegate {
            if in_delegate {
                return Err(at(&p("delegate"), "delegate HTTP route cannot contain delegate"));
            }
            if d.name.is_empty() {
                return Err(at(&p("delegate.name"), "required"));
            }
            if !d.namespace.is_empty() && !check::dns1123_label(&d.namespace) {
                return Err(at(&p("delegate.namespace"), format!("{:?} is not a namespace name", d.namespace)));
            }
            if self.redirect.is_some() {
                return Err(at(&p("redirect"), "a route with delegate must not specify redirect"));
            }
            if !self.route.is_empty() {
                return Err(at(&p("route"), "a route with delegate must not specify route"));
            }
            if self.direct_response.is_some() {
                return Err(at(&p("directResponse"), "a route with delegate must not specify directResponse"));
            }
        } else {
            self.validate_action(path)?;
        }
        if self.mirror.is_some() && !self.mirrors.is_empty() {
            return Err(at(&p("mirrors"), "HTTP route cannot contain both mirror and mirrors"));
        }
        for (j, m) in self.matches.iter().enumerate() {
            m.validate(&format!("{path}.match[{j}]"), root || in_delegate)?;
        }
        if let Some(h) = &self.headers {
            h.validate(&p("headers"))?;
        }
        let authority_sets = self.headers.iter().flat_map(|h| &h.request).flat_map(|r| r.set.keys().chain(r.add.keys()));
        let mut authority = self.rewrite.as_ref().is_some_and(|r| !r.authority.is_empty());
        for k in authority_sets.filter(|k| is_authority(k)) {
            if authority {
                return Err(at(&p("headers.request"), format!("authority header cannot be set multiple times ({k} and another)")));
            }
            authority = true;
        }
        if let Some(c) = &self.cors_policy {
            c.validate(&p("corsPolicy"))?;
        }
        if let Some(f) = &self.fault {
            f.validate(&p("fault"))?;
        }
        if let Some(v) = self.mirror_percent.filter(|v| *v > 100) {
            return Err(at(&p("mirrorPercent"), format!("mirror_percent must have a max value of 100 (it has {v})")));
        }
        if let Some(v) = &self.mirror_percentage {
            on(&p("mirrorPercentage.value"), check::percent(v.value))?;
        }
        if let Some(m) = &self.mirror {
            m.validate(&p("mirror"))?;
        }
        for (j, m) in self.mirrors.iter().enumerate() {
            let path = p(&format!("mirrors[{j}]"));
            let Some(d) = &m.destination else { return Err(at(&format!("{path}.destination"), "required")) };
            d.validate(&format!("{path}.destination"))?;
            if let Some(v) = &m.percentage {
                on(&format!("{path}.percentage.value"), check::percent(v.value))?;
            }
        }
        if let Some(r) = &self.redirect {
            r.validate(&p("redirect"))?;
        }
        if let Some(r) = &self.retries {
            r.validate(&p("retries"))?;
        }
        if let Some(r) = &self.rewrite {
            r.validate(&p("rewrite"))?;
        }
        if let Some(d) = &self.direct_response {
            d.validate(&p("directResponse"))?;
        }
        http_destinations(&p("route"), &self.route)?;
        if let Some(t) = &self.timeout {
            on(&p("timeout"), check::duration(t))?;
        }
        Ok(())
    }

    /// Exactly one action: route, redirect or directResponse (fault and rewrite only
    /// with route).
    fn validate_action(&self, path: &str) -> Check {
        let p = |f: &str| format!("{path}.{f}");
        let only = |what: &str, with: &str| at(&p(what), format!("HTTP route cannot contain both {what} and {with}"));
        if self.redirect.is_some() {
            if !self.route.is_empty() {
                return Err(only("route", "redirect"));
            }
            if self.fault.is_some() {
                return Err(only("fault", "redirect"));
            }
            if self.rewrite.is_some() {
                return Err(only("rewrite", "redirect"));
            }
            if self.direct_response.is_some() {
                return Err(only("directResponse", "redirect"));
            }
        } else if self.direct_response.is_some() {
            if !self.route.is_empty() {
                return Err(only("route", "directResponse"));
            }
            if self.fault.is_some() {
                return Err(only("fault", "directResponse"));
            }
            if self.rewrite.is_some() {
                return Err(only("rewrite", "directResponse"));
            }
        } else if self.route.is_empty() {
            return Err(at(&p("route"), "HTTP route, redirect or directResponse is required"));
        }
        Ok(())
    }
}

fn is_authority(k: &str) -> bool {
    k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host")
}

impl HttpMatch {
    /// `delegating`: in a delegate VirtualService, or a route that delegates, where
    /// matches are merged and so cannot be regular expressions.
    fn validate(&self, path: &str, delegating: bool) -> Check {
        let p = |f: &str| format!("{path}.{f}");
        let fields = [("uri", &self.uri), ("scheme", &self.scheme), ("method", &self.method), ("authority", &self.authority)];
        for (name, m) in fields {
            if let Some(m) = m {
                m.validate(&p(name), false)?;
                if delegating && m.regex.is_some() {
                    return Err(at(&p(name), "regex match is not supported in delegating or delegate routes"));
                }
            }
        }
        let maps = [("headers", &self.headers), ("withoutHeaders", &self.without_headers), ("queryParams", &self.query_params)];
        for (field, map) in maps {
            for (k, m) in map {
                let path = p(&format!("{field}.{k}"));
                if field != "queryParams" && !k.starts_with(CLAIM_PREFIX) {
                    on(&path, check::header_name(k))?;
                }
                m.validate(&path, true)?;
                if delegating && m.regex.is_some() {
                    return Err(at(&path, "regex match is not supported in delegating or delegate routes"));
                }
            }
        }
        common_match(path, self.port, &self.source_labels, &self.gateways)?;
        source_namespace(path, &self.source_namespace)
    }
}

impl Headers {
    fn validate(&self, path: &str) -> Check {
        if let Some(r) = &self.request {
            r.validate(&format!("{path}.request"), true)?;
        }
        if let Some(r) = &self.response {
            r.validate(&format!("{path}.response"), false)?;
        }
        Ok(())
    }
}

impl HeaderOperations {
    /// Request `set`/`add` may set the authority (`host`, `:authority`); nothing may
    /// touch other `:` pseudo-headers, and nothing may remove `host`.
    fn validate(&self, path: &str, request: bool) -> Check {
        let name_ok = |k: &str, set: bool| -> Result<(), String> {
            if k.is_empty() {
                return Err("header name cannot be empty".into());
            }
            let internal = k.starts_with(':') || k.eq_ignore_ascii_case("host");
            if internal && !(set && request && is_authority(k)) {
                return Err(format!("invalid header {k:?}: cannot set Host or `:` pseudo-headers here"));
            }
            Ok(())
        };
        for (op, map) in [("set", &self.set), ("add", &self.add)] {
            for (k, v) in map {
                let path = format!("{path}.{op}.{k}");
                on(&path, name_ok(k, true))?;
                on(&path, header_value(v))?;
            }
        }
        for (i, k) in self.remove.iter().enumerate() {
            on(&format!("{path}.remove[{i}]"), name_ok(k, false))?;
        }
        Ok(())
    }
}

/// No control characters (tab allowed); `%` only in Envoy's `%VAR%` form or as `%%`.
fn header_value(v: &str) -> Result<(), String> {
    if v.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("header value {v:?} has control characters"));
    }
    if v.replace("%%", "").matches('%').count() % 2 == 1 {
        return Err(format!("header value {v:?}: a single % must be written %% (Envoy reads %NAME% as a variable)"));
    }
    Ok(())
}

fn http_destinations(path: &str, dests: &[HttpRouteDestination]) -> Check {
    for (i, d) in dests.iter().enumerate() {
        if let Some(h) = &d.headers {
            h.validate(&format!("{path}[{i}].headers"))?;
        }
    }
    weighted(path, dests.iter().map(|d| (&d.destination, d.weight)))
}

fn destinations(path: &str, dests: &[RouteDestination]) -> Check {
    weighted(path, dests.iter().map(|d| (&d.destination, d.weight)))
}

/// Each destination is valid, weights are not negative, and several destinations do
/// not all weigh 0 (Istio no longer requires a total of 100: weights are relative).
fn weighted<'a>(path: &str, dests: impl Iterator<Item = (&'a Option<Destination>, i32)>) -> Check {
    let (mut total, mut count) = (0i64, 0);
    for (i, (dest, weight)) in dests.enumerate() {
        let path = format!("{path}[{i}]");
        let Some(dest) = dest else { return Err(at(&format!("{path}.destination"), "required")) };
        dest.validate(&format!("{path}.destination"))?;
        if weight < 0 {
            return Err(at(&format!("{path}.weight"), format!("weight {weight} < 0")));
        }
        total += i64::from(weight);
        count += 1;
    }
    if count > 1 && total == 0 {
        return Err(at(path, "total destination weight = 0 (give at least one destination a weight)"));
    }
    Ok(())
}

const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"];

impl CorsPolicy {
    fn validate(&self, path: &str) -> Check {
        for (i, o) in self.allow_origins.iter().enumerate() {
            let path = format!("{path}.allowOrigins[{i}]");
            o.validate(&path, false)?;
            if [&o.exact, &o.prefix, &o.regex].iter().any(|v| v.as_deref() == Some("")) {
                return Err(at(&path, "'' is not a valid match for CORS allow origins"));
            }
        }
        for (i, m) in self.allow_methods.iter().enumerate() {
            if !METHODS.contains(&m.as_str()) {
                return Err(at(&format!("{path}.allowMethods[{i}]"), format!("{m:?} is not a supported HTTP method")));
            }
        }
        for (field, names) in [("allowHeaders", &self.allow_headers), ("exposeHeaders", &self.expose_headers)] {
            for (i, h) in names.iter().enumerate() {
                if h != "*" {
                    on(&format!("{path}.{field}[{i}]"), check::header_name(h))?;
                }
            }
        }
        if let Some(m) = &self.max_age {
            let d = on(&format!("{path}.maxAge"), check::duration(m))?;
            if d.subsec_nanos() != 0 {
                return Err(at(&format!("{path}.maxAge"), "max_age duration is accurate only to seconds precision"));
            }
        }
        Ok(())
    }
}

/// gRPC status names a fault may abort with.
const GRPC_STATUS: [&str; 17] = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
];

/// A fault's percentage: 0, or 0.0001 to 100.
fn fault_percentage(path: &str, p: &Option<Percent>) -> Check {
    if let Some(Percent { value }) = p {
        if !(0.0..=100.0).contains(value) || (*value > 0.0 && *value < 0.0001) {
            return Err(at(&format!("{path}.percentage.value"), format!("percentage {value} is neither 0.0, nor in range [0.0001, 100.0]")));
        }
    }
    Ok(())
}

/// Istio's range for fault and direct-response statuses.
fn http_status(path: &str, status: i64) -> Check {
    if !(200..=600).contains(&status) {
        return Err(at(path, format!("HTTP status {status} is not in range 200-599")));
    }
    Ok(())
}

impl Fault {
    fn validate(&self, path: &str) -> Check {
        if self.abort.is_none() && self.delay.is_none() {
            return Err(at(path, "HTTP fault injection must have an abort and/or a delay"));
        }
        if let Some(a) = &self.abort {
            let path = format!("{path}.abort");
            fault_percentage(&path, &a.percentage)?;
            let set = [a.http_status.is_some(), a.grpc_status.is_some(), a.http2_error.is_some()].iter().filter(|s| **s).count();
            if set > 1 {
                return Err(at(&path, "set one of httpStatus, grpcStatus or http2Error, not several"));
            }
            if let Some(s) = a.http_status {
                http_status(&format!("{path}.httpStatus"), s.into())?;
            }
            if let Some(s) = &a.grpc_status {
                if !GRPC_STATUS.contains(&s.as_str()) {
                    return Err(at(&format!("{path}.grpcStatus"), format!("gRPC status {s:?} is not supported; use a name like NOT_FOUND or UNAVAILABLE")));
                }
            }
            if a.http2_error.is_some() {
                return Err(at(&format!("{path}.http2Error"), "HTTP/2 abort fault injection not supported yet"));
            }
        }
        if let Some(d) = &self.delay {
            let path = format!("{path}.delay");
            fault_percentage(&path, &d.percentage)?;
            if let Some(p) = d.percent.filter(|p| !(0..=100).contains(p)) {
                return Err(at(&format!("{path}.percent"), format!("percentage {p} is not in range 0..100")));
            }
            if d.exponential_delay.is_some() {
                return Err(at(&format!("{path}.exponentialDelay"), "exponentialDelay not supported yet"));
            }
            // Stricter than Istio, which accepts a delay of nothing: say which field is missing.
            let Some(fixed) = &d.fixed_delay else { return Err(at(&format!("{path}.fixedDelay"), "required")) };
            on(&format!("{path}.fixedDelay"), check::duration(fixed))?;
        }
        Ok(())
    }
}

impl Redirect {
    fn validate(&self, path: &str) -> Check {
        if self.port.is_some() && self.derive_port.is_some() {
            return Err(at(path, "set port or derivePort, not both"));
        }
        let port_set = self.port.is_some() || self.derive_port.is_some();
        if self.uri.is_empty() && self.authority.is_empty() && !port_set && self.scheme.is_empty() {
            return Err(at(path, "redirect must specify URI, authority, scheme, or port"));
        }
        if self.redirect_code != 0 && !(300..=399).contains(&self.redirect_code) {
            return Err(at(&format!("{path}.redirectCode"), format!("{} is not a valid redirect code, must be 3xx", self.redirect_code)));
        }
        if !self.scheme.is_empty() && self.scheme != "http" && self.scheme != "https" {
            return Err(at(&format!("{path}.scheme"), "invalid redirect scheme, must be \"http\" or \"https\""));
        }
        if let Some(p) = self.port {
            on(&format!("{path}.port"), check::port(p.into()))?;
        }
        Ok(())
    }
}

/// Envoy's retry-on policies.
const RETRY_ON: [&str; 16] = [
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "retriable-4xx", "refused-stream",
    "retriable-status-codes", "retriable-headers", "envoy-ratelimited", "http3-post-connect-failure", "cancelled",
    "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
];

impl Retry {
    fn validate(&self, path: &str) -> Check {
        if self.attempts < 0 {
            return Err(at(&format!("{path}.attempts"), "attempts cannot be negative"));
        }
        if self.attempts == 0 && (self.per_try_timeout.is_some() || !self.retry_on.is_empty() || self.retry_remote_localities.is_some()) {
            return Err(at(&format!("{path}.attempts"), "http retry policy configured when attempts are set to 0 (disabled)"));
        }
        if let Some(t) = &self.per_try_timeout {
            on(&format!("{path}.perTryTimeout"), check::duration(t))?;
        }
        if let Some(t) = &self.backoff {
            on(&format!("{path}.backoff"), check::duration(t))?;
        }
        if !self.retry_on.is_empty() {
            for policy in self.retry_on.split(',') {
                let status = policy.parse::<u16>().is_ok_and(|s| (100..=599).contains(&s));
                if !status && !RETRY_ON.contains(&policy) {
                    return Err(at(&format!("{path}.retryOn"), format!("{policy:?} is not a valid retryOn policy")));
                }
            }
        }
        Ok(())
    }
}

impl Rewrite {
    fn validate(&self, path: &str) -> Check {
        if !self.uri.is_empty() && self.uri_regex_rewrite.is_some() {
            return Err(at(path, "rewrite may only contain one of uri or uriRegexRewrite"));
        }
        if self.uri.is_empty() && self.uri_regex_rewrite.is_none() && self.authority.is_empty() {
            return Err(at(path, "rewrite must specify at least one of uri, uriRegexRewrite, or authority"));
        }
        if let Some(r) = &self.uri_regex_rewrite {
            let path = format!("{path}.uriRegexRewrite");
            if r.pattern.is_empty() || r.rewrite.is_empty() {
                return Err(at(&path, "uriRegexRewrite requires both rewrite and match fields to be specified"));
            }
            on(&format!("{path}.match"), check::regex(&r.pattern))?;
        }
        Ok(())
    }
}

impl DirectResponse {
    fn validate(&self, path: &str) -> Check {
        http_status(&format!("{path}.status"), self.status.into())?;
        if let Some(b) = &self.body {
            let path = format!("{path}.body");
            let size = match (&b.string, &b.bytes) {
                (Some(_), Some(_)) => return Err(at(&path, "set string or bytes, not both")),
                (Some(s), None) => s.len(),
                (None, Some(b64)) => on(&format!("{path}.bytes"), decode_base64(b64))?.len(),
                (None, None) => 0,
            };
            if size > 1024 * 1024 {
                return Err(at(&path, "large direct_responses may impact control plane performance, must be less than 1MB"));
            }
        }
        Ok(())
    }
}

/// `bytes` fields are base64 in YAML (protobuf's JSON form).
pub fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| format!("not base64: {e}"))
}

impl TlsRoute {
    fn validate(&self, path: &str, vs: &Spec) -> Check {
        required(&format!("{path}.match"), &self.matches, "match (with sniHosts)")?;
        for (j, m) in self.matches.iter().enumerate() {
            let path = format!("{path}.match[{j}]");
            required(&format!("{path}.sniHosts"), &m.sni_hosts, "SNI host")?;
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                let at_k = format!("{path}.sniHosts[{k}]");
                if let Err(e) = check::wildcard_domain(sni) {
                    if check::is_ip(sni) {
                        continue; // Istio warns: SNI does not carry addresses
                    }
                    return Err(at(&at_k, e));
                }
                if !vs.hosts.iter().any(|h| check::host_subset_of(sni, h)) {
                    let hosts = vs.hosts.join(", ");
                    return Err(at(&at_k, format!("SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{hosts}]")));
                }
            }
            subnets(&format!("{path}.destinationSubnets"), &m.destination_subnets)?;
            common_match(&path, m.port, &m.source_labels, &m.gateways)?;
            source_namespace(&path, &m.source_namespace)?;
        }
        required(&format!("{path}.route"), &self.route, "route destination")?;
        destinations(&format!("{path}.route"), &self.route)
    }
}

fn subnets(path: &str, subnets: &[String]) -> Check {
    for (k, s) in subnets.iter().enumerate() {
        on(&format!("{path}[{k}]"), check::ip_or_cidr(s))?;
    }
    Ok(())
}

impl TcpRoute {
    fn validate(&self, path: &str) -> Check {
        for (j, m) in self.matches.iter().enumerate() {
            let path = format!("{path}.match[{j}]");
            subnets(&format!("{path}.destinationSubnets"), &m.destination_subnets)?;
            if !m.source_subnet.is_empty() {
                on(&format!("{path}.sourceSubnet"), check::ip_or_cidr(&m.source_subnet))?;
            }
            common_match(&path, m.port, &m.source_labels, &m.gateways)?;
            source_namespace(&path, &m.source_namespace)?;
        }
        required(&format!("{path}.route"), &self.route, "route destination")?;
        destinations(&format!("{path}.route"), &self.route)
    }
}
