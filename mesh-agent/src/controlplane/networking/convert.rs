//! From validated networking objects to what agents receive. Pure functions: the
//! caller decides which objects an agent sees.
//!
//! - [`virtual_service`] and [`destination_rule`]: `mesh.networking` resources with
//!   every host resolved to an FQDN, as istiod resolves them (a short name is relative
//!   to the object's namespace).
//! - [`entry`]: ServiceEntry and WorkloadEntry as the workload API's Service and
//!   Workload, as istiod's ambient index builds them.
//!
//! The input is assumed validated: a duration or base64 body that does not parse is
//! left out rather than reported again.
use std::collections::BTreeMap;

use super::check;
use super::virtual_service::{self as vs, HeaderOperations, Headers};
use super::{Destination, StringMatch};
use crate::controlplane::model::DOMAIN_SUFFIX;
use crate::proto::mesh_networking as mn;

pub mod destination_rule;
pub mod entry;

pub use destination_rule::destination_rule;

/// A host as an agent compares it: `reviews` in namespace `shop` is
/// `reviews.shop.svc.cluster.local`; names with a dot, `*`, and addresses stay as
/// written (Istio's `ResolveShortnameToFQDN`).
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.is_empty() || host == "*" || host.contains('.') || check::is_ip(host) {
        return host.to_string();
    }
    format!("{host}.{namespace}.svc.{DOMAIN_SUFFIX}")
}

/// A gateway reference as `mesh` or `<namespace>/<name>` (Istio's
/// `resolveGatewayName`): a bare name is in `namespace`; the old
/// `name.namespace.svc...` form is turned around.
pub fn resolve_gateway(gateway: &str, namespace: &str) -> String {
    if gateway == "mesh" || gateway.contains('/') {
        return gateway.to_string();
    }
    match gateway.split_once('.') {
        Some((name, rest)) => format!("{}/{name}", rest.split('.').next().unwrap_or(rest)),
        None => format!("{namespace}/{gateway}"),
    }
}

/// A validated duration as protobuf's.
pub(crate) fn duration(d: &Option<String>) -> Option<prost_types::Duration> {
    let d = check::parse_duration(d.as_deref()?).ok()?;
    Some(prost_types::Duration { seconds: i64::try_from(d.as_secs()).ok()?, nanos: d.subsec_nanos() as i32 })
}

/// The served form of a VirtualService in `namespace`.
pub fn virtual_service(namespace: &str, name: &str, spec: &vs::Spec) -> mn::VirtualService {
    let ns = namespace;
    mn::VirtualService {
        name: name.to_string(),
        namespace: ns.to_string(),
        hosts: spec.hosts.iter().map(|h| resolve_host(h, ns)).collect(),
        gateways: gateways(&spec.gateways, ns),
        http: spec.http.iter().map(|r| http_route(r, ns)).collect(),
        tls: spec
            .tls
            .iter()
            .map(|r| mn::TlsRoute {
                r#match: r
                    .matches
                    .iter()
                    .map(|m| mn::TlsMatchAttributes {
                        sni_hosts: m.sni_hosts.clone(),
                        destination_subnets: m.destination_subnets.clone(),
                        port: m.port,
                        source_labels: hash(&m.source_labels),
                        gateways: gateways(&m.gateways, ns),
                        source_namespace: m.source_namespace.clone(),
                    })
                    .collect(),
                route: route_destinations(&r.route, ns),
            })
            .collect(),
        tcp: spec
            .tcp
            .iter()
            .map(|r| mn::TcpRoute {
                r#match: r
                    .matches
                    .iter()
                    .map(|m| mn::L4MatchAttributes {
                        destination_subnets: m.destination_subnets.clone(),
                        port: m.port,
                        source_subnet: m.source_subnet.clone(),
                        source_labels: hash(&m.source_labels),
                        gateways: gateways(&m.gateways, ns),
                        source_namespace: m.source_namespace.clone(),
                    })
                    .collect(),
                route: route_destinations(&r.route, ns),
            })
            .collect(),
        export_to: spec.export_to.clone(),
    }
}

fn gateways(names: &[String], namespace: &str) -> Vec<String> {
    names.iter().map(|g| resolve_gateway(g, namespace)).collect()
}

/// A map as prost holds it (a `BTreeMap`: see build.rs).
pub(crate) fn hash<V: Clone>(m: &BTreeMap<String, V>) -> BTreeMap<String, V> {
    m.clone()
}

fn route_destinations(route: &[vs::RouteDestination], ns: &str) -> Vec<mn::RouteDestination> {
    route.iter().map(|d| mn::RouteDestination { destination: d.destination.as_ref().map(|d| destination(d, ns)), weight: d.weight }).collect()
}

fn destination(d: &Destination, ns: &str) -> mn::Destination {
    mn::Destination {
        host: resolve_host(&d.host, ns),
        subset: d.subset.clone().unwrap_or_default(),
        port: d.port.map_or(0, |p| p.number),
    }
}

fn string_match(m: &StringMatch) -> mn::StringMatch {
    use mn::string_match::MatchType;
    let match_type = match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), _, _) => Some(MatchType::Exact(e.clone())),
        (_, Some(p), _) => Some(MatchType::Prefix(p.clone())),
        (_, _, Some(r)) => Some(MatchType::Regex(r.clone())),
        _ => None,
    };
    mn::StringMatch { match_type }
}

fn string_matches(m: &BTreeMap<String, StringMatch>) -> BTreeMap<String, mn::StringMatch> {
    m.iter().map(|(k, v)| (k.clone(), string_match(v))).collect()
}

fn headers(h: &Option<Headers>) -> Option<mn::Headers> {
    let ops = |o: &Option<HeaderOperations>| {
        o.as_ref().map(|o| mn::HeaderOperations { set: hash(&o.set), add: hash(&o.add), remove: o.remove.clone() })
    };
    h.as_ref().map(|h| mn::Headers { request: ops(&h.request), response: ops(&h.response) })
}

fn http_route(r: &vs::HttpRoute, ns: &str) -> mn::HttpRoute {
    let mut mirrors: Vec<mn::HttpMirrorPolicy> = r
        .mirror
        .iter()
        .map(|d| mn::HttpMirrorPolicy {
            destination: Some(destination(d, ns)),
            percentage: r.mirror_percentage.map(|p| p.value).or(r.mirror_percent.map(f64::from)).unwrap_or(100.0),
        })
        .collect();
    mirrors.extend(r.mirrors.iter().map(|m| mn::HttpMirrorPolicy {
        destination: m.destination.as_ref().map(|d| destination(d, ns)),
        percentage: m.percentage.map_or(100.0, |p| p.value),
    }));
    mn::HttpRoute {
        name: r.name.clone(),
        r#match: r.matches.iter().map(|m| http_match(m, ns)).collect(),
        route: r
            .route
            .iter()
            .map(|d| mn::HttpRouteDestination {
                destination: d.destination.as_ref().map(|d| destination(d, ns)),
                weight: d.weight,
                headers: headers(&d.headers),
            })
            .collect(),
        redirect: r.redirect.as_ref().map(|x| mn::HttpRedirect {
            uri: x.uri.clone(),
            authority: x.authority.clone(),
            port: x.port.unwrap_or_default(),
            derive_port: match x.derive_port {
                Some(vs::DerivePort::FromRequestPort) => mn::http_redirect::RedirectPortSelection::FromRequestPort as i32,
                _ => mn::http_redirect::RedirectPortSelection::FromProtocolDefault as i32,
            },
            scheme: x.scheme.clone(),
            redirect_code: if x.redirect_code == 0 { 301 } else { x.redirect_code },
        }),
        direct_response: r.direct_response.as_ref().map(|d| mn::HttpDirectResponse {
            status: d.status,
            body: d.body.as_ref().and_then(|b| {
                use mn::http_body::Specifier;
                let specifier = match (&b.string, &b.bytes) {
                    (Some(s), _) => Some(Specifier::String(s.clone())),
                    (None, Some(b64)) => vs::decode_base64(b64).ok().map(Specifier::Bytes),
                    (None, None) => None,
                };
                specifier.map(|s| mn::HttpBody { specifier: Some(s) })
            }),
        }),
        delegate: r.delegate.as_ref().map(|d| mn::Delegate {
            name: d.name.clone(),
            namespace: if d.namespace.is_empty() { ns.to_string() } else { d.namespace.clone() },
        }),
        rewrite: r.rewrite.as_ref().map(|w| mn::HttpRewrite {
            uri: w.uri.clone(),
            authority: w.authority.clone(),
            uri_regex_rewrite: w.uri_regex_rewrite.as_ref().map(|x| mn::RegexRewrite { r#match: x.pattern.clone(), rewrite: x.rewrite.clone() }),
        }),
        timeout: duration(&r.timeout),
        retries: r.retries.as_ref().map(|x| mn::HttpRetry {
            attempts: x.attempts,
            per_try_timeout: duration(&x.per_try_timeout),
            retry_on: x.retry_on.clone(),
            retry_remote_localities: x.retry_remote_localities,
            retry_ignore_previous_hosts: x.retry_ignore_previous_hosts,
            backoff: duration(&x.backoff),
        }),
        fault: r.fault.as_ref().map(fault),
        mirrors,
        headers: headers(&r.headers),
        cors_policy: r.cors_policy.as_ref().map(cors),
    }
}

fn http_match(m: &vs::HttpMatch, ns: &str) -> mn::HttpMatchRequest {
    mn::HttpMatchRequest {
        name: m.name.clone(),
        uri: m.uri.as_ref().map(string_match),
        scheme: m.scheme.as_ref().map(string_match),
        method: m.method.as_ref().map(string_match),
        authority: m.authority.as_ref().map(string_match),
        headers: string_matches(&m.headers),
        port: m.port,
        source_labels: hash(&m.source_labels),
        gateways: gateways(&m.gateways, ns),
        query_params: string_matches(&m.query_params),
        ignore_uri_case: m.ignore_uri_case,
        without_headers: string_matches(&m.without_headers),
        source_namespace: m.source_namespace.clone(),
        stat_prefix: m.stat_prefix.clone(),
    }
}

fn fault(f: &vs::Fault) -> mn::HttpFaultInjection {
    use mn::http_fault_injection::{abort::ErrorType, Abort, Delay};
    mn::HttpFaultInjection {
        delay: f.delay.as_ref().map(|d| Delay {
            fixed_delay: duration(&d.fixed_delay),
            percentage: d.percentage.map(|p| p.value).or(d.percent.map(f64::from)).unwrap_or(100.0),
        }),
        abort: f.abort.as_ref().map(|a| Abort {
            error_type: match (&a.http_status, &a.grpc_status) {
                (Some(s), _) => u32::try_from(*s).ok().map(ErrorType::HttpStatus),
                (None, Some(g)) => Some(ErrorType::GrpcStatus(g.clone())),
                (None, None) => None,
            },
            percentage: a.percentage.map_or(100.0, |p| p.value),
        }),
    }
}

fn cors(c: &vs::CorsPolicy) -> mn::CorsPolicy {
    use mn::cors_policy::UnmatchedPreflights as U;
    let exact = c.allow_origin.iter().map(|o| StringMatch { exact: Some(o.clone()), ..Default::default() });
    mn::CorsPolicy {
        allow_origins: exact.chain(c.allow_origins.iter().cloned()).map(|m| string_match(&m)).collect(),
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age: duration(&c.max_age),
        allow_credentials: c.allow_credentials,
        unmatched_preflights: match c.unmatched_preflights {
            vs::UnmatchedPreflights::Unspecified => U::Unspecified,
            vs::UnmatchedPreflights::Forward => U::Forward,
            vs::UnmatchedPreflights::Ignore => U::Ignore,
        } as i32,
    }
}
