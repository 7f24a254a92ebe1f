//! AuthorizationPolicy on the node: the policies as the control plane sends them
//! (`istio.security.Authorization`), the agent's evaluator (the authoritative check,
//! pure and table-tested), and their L4 form for the kernel's early drop.
//!
//! # Semantics (Istio's)
//! A policy applies to a pod when its scope is GLOBAL, or NAMESPACE in the pod's
//! namespace, or WORKLOAD_SELECTOR and the pod's workload lists it. DENY policies are
//! checked first: any match denies. Then, if no ALLOW policy applies, allow; else allow
//! only when one matches. A policy matches when any group matches; a group when every
//! clause (`Rules`) matches; a clause when any `Match` does; a `Match` when every
//! non-empty field matches. A group with no clauses matches everything (`rules: [{}]`),
//! a policy with no groups matches nothing.
//!
//! # Absent attributes and not-forms
//! Plaintext has no principal nor namespace, and a request without a token has no
//! request principal: fields on them never match. Their not-forms (`notPrincipals`,
//! `notNamespaces`, `notRequestPrincipals`, `notValues` on `request.auth.*`) match an
//! absent value in a DENY policy (it denies more, as Istio does), but not in an ALLOW
//! policy: there Istio would let plaintext in through `notPrincipals: [bad]`, and we
//! do not let a negative matcher admit a caller without identity. A policy that means
//! to admit plaintext says so with a rule that names no identity at all.
//!
//! # L7
//! A `Match` may carry HTTP attributes (hosts, methods, paths, request principals,
//! `request.*` conditions, `connection.sni`). A connection is first judged without a
//! request ([`decide`] with `None`): a rule that depends on HTTP then matches neither
//! way, and when that leaves the outcome open the decision is [`Decision::Pending`]:
//! the agent serves the connection as HTTP and judges each request. Paths are matched
//! after normalization ([`http::normalize`]).
//!
//! # The kernel's part
//! The kernel sees only the source address and destination port, so [`to_l4`] turns a
//! policy into something the kernel may drop by without ever dropping what this
//! evaluator allows. It carries two views of identity conditions (`l4policy::View`):
//! on application ports the traffic is plaintext, so principals and namespaces never
//! match and their not-forms always do, which is exact; on HBONE (15008) they become
//! the addresses of the known workloads holding (or excluded by) them, a guess kept
//! on the safe side. A clause the kernel cannot express is left out of an ALLOW rule
//! (it then matches more) and makes a DENY rule vanish (it matches less). HBONE carries
//! the real port inside CONNECT: the compiler lets 15008 through from any source some
//! rule allows on any port (see `l4policy`).
use std::net::IpAddr;
use std::sync::Arc;

use crate::l4policy::{self, addr_bits, L4Policy, Prefix};
use crate::proto::mesh_security as mesh;
use crate::proto::security as sec;
use crate::state::{Identity, Workload};

pub mod enforce;
pub mod http;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// Istio's string match on a principal (`td/ns/x/sa/y`) or a namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl StrMatch {
    /// An absent value matches nothing, not even presence.
    pub fn matches(&self, v: Option<&str>) -> bool {
        let Some(v) = v else { return false };
        match self {
            StrMatch::Exact(x) => v == x,
            StrMatch::Prefix(x) => v.starts_with(x.as_str()),
            StrMatch::Suffix(x) => v.ends_with(x.as_str()),
            StrMatch::Presence => !v.is_empty(),
        }
    }
}

/// Every non-empty field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Match {
    pub namespaces: Vec<StrMatch>,
    pub not_namespaces: Vec<StrMatch>,
    pub principals: Vec<StrMatch>,
    pub not_principals: Vec<StrMatch>,
    pub source_ips: Vec<Prefix>,
    pub not_source_ips: Vec<Prefix>,
    pub destination_ips: Vec<Prefix>,
    pub not_destination_ips: Vec<Prefix>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
    /// `remoteIpBlocks` and `remote.ip`: the client's address, which is the source
    /// address here (nothing in front of a pod is trusted to forward it).
    pub remote_ips: Vec<Prefix>,
    pub not_remote_ips: Vec<Prefix>,
    /// The HTTP attributes, when the rule has any.
    pub http: Option<Box<HttpMatch>>,
}

/// The HTTP part of a [`Match`]: every non-empty field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpMatch {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub methods: Vec<StrMatch>,
    pub not_methods: Vec<StrMatch>,
    pub paths: Vec<http::PathPattern>,
    pub not_paths: Vec<http::PathPattern>,
    pub request_principals: Vec<StrMatch>,
    pub not_request_principals: Vec<StrMatch>,
    pub conditions: Vec<Condition>,
}

/// A `when` key the agent judges per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CondKey {
    /// `request.headers[<name>]`: the header's values joined by `,` (as Envoy does).
    Header(String),
    /// `request.auth.principal`: the token's `iss/sub`.
    AuthPrincipal,
    /// `request.auth.audiences`: any of the token's `aud`.
    AuthAudiences,
    /// `request.auth.presenter`: the token's `azp`.
    AuthPresenter,
    /// `request.auth.claims[a][b]..`: a (nested) claim; for a list, any element.
    AuthClaim(Vec<String>),
    /// `connection.sni`: the server name of the caller's TLS handshake.
    Sni,
}

impl CondKey {
    /// Parses Istio's key syntax; other keys (`experimental.*` and unknown ones) are
    /// refused with the reason.
    pub fn parse(key: &str) -> Result<CondKey, String> {
        let bracketed = |rest: &str| -> Option<Vec<String>> {
            let mut out = Vec::new();
            let mut rest = rest;
            while !rest.is_empty() {
                let inner = rest.strip_prefix('[')?;
                let (name, after) = inner.split_once(']')?;
                if name.is_empty() {
                    return None;
                }
                out.push(name.to_string());
                rest = after;
            }
            (!out.is_empty()).then_some(out)
        };
        match key {
            "request.auth.principal" => return Ok(CondKey::AuthPrincipal),
            "request.auth.audiences" => return Ok(CondKey::AuthAudiences),
            "request.auth.presenter" => return Ok(CondKey::AuthPresenter),
            "connection.sni" => return Ok(CondKey::Sni),
            _ => {}
        }
        if let Some(rest) = key.strip_prefix("request.headers") {
            return match bracketed(rest).as_deref() {
                Some([name]) if ::http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                    Ok(CondKey::Header(name.to_ascii_lowercase()))
                }
                _ => Err(format!("condition key {key:?}: expected request.headers[<header name>]")),
            };
        }
        if let Some(rest) = key.strip_prefix("request.auth.claims") {
            return bracketed(rest)
                .map(CondKey::AuthClaim)
                .ok_or_else(|| format!("condition key {key:?}: expected request.auth.claims[<name>] (nested: [a][b])"));
        }
        if key.starts_with("experimental.") {
            return Err(format!("condition key {key:?}: experimental keys are not supported; the policy is rejected"));
        }
        Err(format!("unknown condition key {key:?}"))
    }
}

/// One `when` condition on an HTTP attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub key: CondKey,
    pub values: Vec<StrMatch>,
    pub not_values: Vec<StrMatch>,
}

/// One rule: every clause must match; a clause matches when any of its `Match`es does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    pub clauses: Vec<Vec<Match>>,
}

/// One policy as the agent holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    pub groups: Vec<Group>,
    pub dry_run: bool,
    /// Set when the agent holds no usable version of this policy (it failed to
    /// convert, or a workload names it before it arrived): then it denies everything
    /// it applies to, until a good version arrives (fail closed).
    pub unusable: Option<String>,
}

impl Policy {
    /// The stand-in for a policy the agent cannot use: denies every connection to
    /// the pods it may apply to (its whole namespace, or the mesh for the root
    /// namespace: wider than a selector, never narrower).
    pub fn unusable(key: &str, why: String) -> Policy {
        let (namespace, name) = key.split_once('/').unwrap_or(("", key));
        let scope = if namespace == crate::controlplane::authorization::ROOT_NAMESPACE { Scope::Global } else { Scope::Namespace };
        Policy {
            name: name.to_string(),
            namespace: namespace.to_string(),
            scope,
            action: Action::Deny,
            groups: vec![Group::default()],
            dry_run: false,
            unusable: Some(why),
        }
    }

    /// `namespace/name`: the resource name, and how logs and workloads name it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Why a served policy could not be used (reported back in a NACK).
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ConvertError {
    #[error("{0}: address of {1} bytes is neither IPv4 (4) nor IPv6 (16)")]
    BadAddress(String, usize),
    #[error("{0}: prefix length {1} is too long for its address")]
    BadLength(String, u32),
    #[error("{0}: port {1} is out of range 1-65535")]
    BadPort(String, u32),
    #[error("{0}: unknown {1} value {2}; is the control plane newer than this agent?")]
    BadEnum(String, &'static str, i32),
    #[error("{0}: a string match without a value")]
    EmptyMatch(String),
    #[error("{0}: {1}")]
    Invalid(String, String),
}

fn prefix(name: &str, a: &sec::Address) -> Result<Prefix, ConvertError> {
    let ip = match a.address.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(a.address.as_slice()).expect("4 bytes")),
        16 => IpAddr::from(<[u8; 16]>::try_from(a.address.as_slice()).expect("16 bytes")),
        n => return Err(ConvertError::BadAddress(name.into(), n)),
    };
    let len = u8::try_from(a.length).map_err(|_| ConvertError::BadLength(name.into(), a.length))?;
    Prefix::new(ip, len).map_err(|_| ConvertError::BadLength(name.into(), a.length))
}

pub(crate) fn str_match(name: &str, m: &sec::StringMatch) -> Result<StrMatch, ConvertError> {
    use sec::string_match::MatchType;
    match &m.match_type {
        Some(MatchType::Exact(x)) => Ok(StrMatch::Exact(x.clone())),
        Some(MatchType::Prefix(x)) => Ok(StrMatch::Prefix(x.clone())),
        Some(MatchType::Suffix(x)) => Ok(StrMatch::Suffix(x.clone())),
        Some(MatchType::Presence(_)) => Ok(StrMatch::Presence),
        None => Err(ConvertError::EmptyMatch(name.into())),
    }
}

fn convert_match(name: &str, m: &sec::Match) -> Result<Match, ConvertError> {
    let strs = |v: &[sec::StringMatch]| v.iter().map(|s| str_match(name, s)).collect::<Result<Vec<_>, _>>();
    let ips = |v: &[sec::Address]| v.iter().map(|a| prefix(name, a)).collect::<Result<Vec<_>, _>>();
    let ports = |v: &[u32]| {
        v.iter()
            .map(|p| u16::try_from(*p).ok().filter(|p| *p > 0).ok_or(ConvertError::BadPort(name.into(), *p)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Match {
        namespaces: strs(&m.namespaces)?,
        not_namespaces: strs(&m.not_namespaces)?,
        principals: strs(&m.principals)?,
        not_principals: strs(&m.not_principals)?,
        source_ips: ips(&m.source_ips)?,
        not_source_ips: ips(&m.not_source_ips)?,
        destination_ips: ips(&m.destination_ips)?,
        not_destination_ips: ips(&m.not_destination_ips)?,
        destination_ports: ports(&m.destination_ports)?,
        not_destination_ports: ports(&m.not_destination_ports)?,
        ..Default::default()
    })
}

/// Istio's string syntax: `*` presence, `*x` suffix, `x*` prefix, else exact.
pub fn written(s: &str) -> StrMatch {
    if s == "*" {
        StrMatch::Presence
    } else if let Some(x) = s.strip_prefix('*') {
        StrMatch::Suffix(x.to_string())
    } else if let Some(x) = s.strip_suffix('*') {
        StrMatch::Prefix(x.to_string())
    } else {
        StrMatch::Exact(s.to_string())
    }
}

/// One match of our extension (`mesh_rules`): everything as written in the policy.
fn convert_written(name: &str, m: &mesh::HttpMatch) -> Result<Match, ConvertError> {
    let bad = |what: String| ConvertError::Invalid(name.into(), what);
    let strs = |v: &[String]| v.iter().map(|s| written(s)).collect::<Vec<_>>();
    let ips = |v: &[String]| v.iter().map(|s| Prefix::parse(s).map_err(|e| bad(e.to_string()))).collect::<Result<Vec<_>, _>>();
    let ports = |v: &[u32]| {
        v.iter()
            .map(|p| u16::try_from(*p).ok().filter(|p| *p > 0).ok_or(ConvertError::BadPort(name.into(), *p)))
            .collect::<Result<Vec<_>, _>>()
    };
    let paths = |v: &[String]| {
        v.iter().map(|s| http::PathPattern::parse(s).map_err(|e| bad(format!("path {s:?}: {e}")))).collect::<Result<Vec<_>, _>>()
    };
    let conditions = m
        .conditions
        .iter()
        .map(|c| {
            let key = CondKey::parse(&c.key).map_err(bad)?;
            if c.values.is_empty() && c.not_values.is_empty() {
                return Err(bad(format!("condition {:?} has neither values nor not_values", c.key)));
            }
            Ok(Condition { key, values: strs(&c.values), not_values: strs(&c.not_values) })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let http = HttpMatch {
        hosts: m.hosts.clone(),
        not_hosts: m.not_hosts.clone(),
        methods: strs(&m.methods),
        not_methods: strs(&m.not_methods),
        paths: paths(&m.paths)?,
        not_paths: paths(&m.not_paths)?,
        request_principals: strs(&m.request_principals),
        not_request_principals: strs(&m.not_request_principals),
        conditions,
    };
    Ok(Match {
        namespaces: strs(&m.namespaces),
        not_namespaces: strs(&m.not_namespaces),
        principals: strs(&m.principals),
        not_principals: strs(&m.not_principals),
        source_ips: ips(&m.source_ips)?,
        not_source_ips: ips(&m.not_source_ips)?,
        destination_ips: ips(&m.destination_ips)?,
        not_destination_ips: ips(&m.not_destination_ips)?,
        destination_ports: ports(&m.destination_ports)?,
        not_destination_ports: ports(&m.not_destination_ports)?,
        remote_ips: ips(&m.remote_ips)?,
        not_remote_ips: ips(&m.not_remote_ips)?,
        http: (http != HttpMatch::default()).then(|| Box::new(http)),
    })
}

/// Converts one served policy (resource `name`). Pure.
pub fn convert(name: &str, a: &sec::Authorization) -> Result<Policy, ConvertError> {
    let scope = match sec::Scope::try_from(a.scope) {
        Ok(sec::Scope::Global) => Scope::Global,
        Ok(sec::Scope::Namespace) => Scope::Namespace,
        Ok(sec::Scope::WorkloadSelector) => Scope::WorkloadSelector,
        Err(_) => return Err(ConvertError::BadEnum(name.into(), "scope", a.scope)),
    };
    let action = match sec::Action::try_from(a.action) {
        Ok(sec::Action::Allow) => Action::Allow,
        Ok(sec::Action::Deny) => Action::Deny,
        Err(_) => return Err(ConvertError::BadEnum(name.into(), "action", a.action)),
    };
    let mut groups = Vec::new();
    if let Some(rules) = &a.mesh_rules {
        // Our control plane's full form: judged as written, L7 included.
        for g in &rules.groups {
            let mut clauses = Vec::with_capacity(g.clauses.len());
            for c in &g.clauses {
                clauses.push(c.matches.iter().map(|m| convert_written(name, m)).collect::<Result<Vec<_>, _>>()?);
            }
            groups.push(Group { clauses });
        }
    } else {
        for g in &a.groups {
            let mut clauses = Vec::with_capacity(g.rules.len());
            for r in &g.rules {
                clauses.push(r.matches.iter().map(|m| convert_match(name, m)).collect::<Result<Vec<_>, _>>()?);
            }
            groups.push(Group { clauses });
        }
    }
    Ok(Policy { name: a.name.clone(), namespace: a.namespace.clone(), scope, action, groups, dry_run: a.dry_run, unusable: None })
}

/// What the agent knows about one inbound connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attrs {
    pub src_ip: IpAddr,
    /// The authenticated caller (HBONE); `None` for plaintext.
    pub identity: Option<Identity>,
    pub dst_ip: IpAddr,
    /// The real destination port (inside CONNECT for HBONE).
    pub dst_port: u16,
}

impl Attrs {
    /// `td/ns/<ns>/sa/<sa>`, as policies write principals.
    fn principal(&self) -> Option<String> {
        self.identity.as_ref().map(|id| format!("{}/ns/{}/sa/{}", id.trust_domain, id.namespace, id.service_account))
    }
}

/// What a validated token says (RequestAuthentication), as conditions read it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestAuth {
    /// `iss/sub`.
    pub principal: String,
    pub audiences: Vec<String>,
    pub presenter: Option<String>,
    /// Every claim, for `request.auth.claims[..]`.
    pub claims: serde_json::Value,
}

impl RequestAuth {
    /// The claim at `path` as strings: a string gives itself, a list of strings each
    /// element, a number or boolean its JSON text; absent gives none.
    pub fn claim(&self, path: &[String]) -> Vec<String> {
        let mut v = &self.claims;
        for k in path {
            match v.get(k) {
                Some(next) => v = next,
                None => return Vec::new(),
            }
        }
        let one = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        match v {
            serde_json::Value::Array(items) => items.iter().filter_map(one).collect(),
            other => one(other).into_iter().collect(),
        }
    }
}

/// One HTTP request, as policies see it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// `:authority` or `Host`, as sent.
    pub host: &'a str,
    /// The normalized path without query and path parameters ([`http::NormalizedPath::match_path`]).
    pub path: &'a str,
    pub headers: &'a ::http::HeaderMap,
    /// The validated token, if the request carried one.
    pub auth: Option<&'a RequestAuth>,
    /// The server name the caller's TLS handshake asked for.
    pub sni: Option<&'a str>,
}

/// The outcome, naming the deciding policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No policy applies.
    Allow,
    /// An ALLOW policy matched.
    Allowed(String),
    /// A DENY policy matched.
    Denied(String),
    /// ALLOW policies apply and none matched (their names, comma-separated).
    NotAllowed(String),
    /// The agent has not received the policies yet: refused (fail closed).
    NotSynced,
    /// Judged without a request, the outcome depends on HTTP attributes (the policies
    /// that leave it open): the connection must be served as HTTP, each request judged.
    Pending(String),
    /// A policy that may apply is not usable (`ns/name: why`): refused (fail closed).
    Unusable(String),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow | Decision::Allowed(_))
    }

    /// For the access log: `allow`, `allow policy=ns/a`, `deny policy=ns/d`, ...
    pub fn describe(&self) -> String {
        match self {
            Decision::Allow => "allow (no policy applies)".into(),
            Decision::Allowed(p) => format!("allow policy={p}"),
            Decision::Denied(p) => format!("deny policy={p} (DENY rule matched)"),
            Decision::NotAllowed(p) => format!("deny policy={p} (no ALLOW rule matched)"),
            Decision::NotSynced => "deny (no policies received from the control plane yet)".into(),
            Decision::Pending(p) => format!("per request policy={p} (HTTP attributes)"),
            Decision::Unusable(p) => format!("deny policy={p} (the policy is not usable; denying until it is)"),
        }
    }
}

/// Kleene's three-valued logic: `None` is "depends on the request".
type Tri = Option<bool>;

fn tri_and(a: Tri, b: impl FnOnce() -> Tri) -> Tri {
    match a {
        Some(false) => Some(false),
        Some(true) => b(),
        None => match b() {
            Some(false) => Some(false),
            _ => None,
        },
    }
}

fn tri_any<T>(items: &[T], f: impl Fn(&T) -> Tri) -> Tri {
    let mut open = false;
    for i in items {
        match f(i) {
            Some(true) => return Some(true),
            None => open = true,
            Some(false) => {}
        }
    }
    if open {
        None
    } else {
        Some(false)
    }
}

fn any_str(list: &[StrMatch], v: Option<&str>) -> bool {
    list.iter().any(|m| m.matches(v))
}

fn any_ip(list: &[Prefix], ip: IpAddr) -> bool {
    let bits = addr_bits(ip);
    list.iter().any(|p| p.contains(bits))
}

/// A field and its not-form: `pos` and `neg` say whether the value is among them.
fn field(pos: &[impl Sized], neg: &[impl Sized], in_pos: bool, in_neg: bool) -> bool {
    (pos.is_empty() || in_pos) && (neg.is_empty() || !in_neg)
}

/// An identity field (`principals`, `namespaces`, `requestPrincipals`, `request.auth.*`)
/// and its not-form, for `v`, with the not-form's rule for an absent value (see the
/// module docs).
fn identity_field(pos: &[StrMatch], neg: &[StrMatch], v: Option<&str>, action: Action) -> bool {
    if v.is_none() && !neg.is_empty() && action == Action::Allow {
        return false;
    }
    field(pos, neg, any_str(pos, v), any_str(neg, v))
}

impl Match {
    /// Judges the connection's attributes, and the request's when there is one;
    /// `None` when the outcome depends on a request that is not there.
    pub fn eval(&self, a: &Attrs, principal: Option<&str>, req: Option<&Request>, action: Action) -> Tri {
        let ns = a.identity.as_ref().map(|i| i.namespace.as_str());
        let l4 = identity_field(&self.namespaces, &self.not_namespaces, ns, action)
            && identity_field(&self.principals, &self.not_principals, principal, action)
            && field(&self.source_ips, &self.not_source_ips, any_ip(&self.source_ips, a.src_ip), any_ip(&self.not_source_ips, a.src_ip))
            && field(&self.remote_ips, &self.not_remote_ips, any_ip(&self.remote_ips, a.src_ip), any_ip(&self.not_remote_ips, a.src_ip))
            && field(
                &self.destination_ips,
                &self.not_destination_ips,
                any_ip(&self.destination_ips, a.dst_ip),
                any_ip(&self.not_destination_ips, a.dst_ip),
            )
            && field(
                &self.destination_ports,
                &self.not_destination_ports,
                self.destination_ports.contains(&a.dst_port),
                self.not_destination_ports.contains(&a.dst_port),
            );
        match (&self.http, req) {
            _ if !l4 => Some(false),
            (None, _) => Some(true),
            (Some(_), None) => None,
            (Some(h), Some(r)) => Some(h.matches(r, action)),
        }
    }

    /// Whether the match needs more than the source address and destination port
    /// that the kernel sees; the HTTP part is the agent's alone.
    fn has_http(&self) -> bool {
        self.http.is_some()
    }
}

impl HttpMatch {
    fn matches(&self, r: &Request, action: Action) -> bool {
        let host = |list: &[String]| list.iter().any(|p| http::host_matches(p, r.host));
        let path = |list: &[http::PathPattern]| list.iter().any(|p| p.matches(r.path));
        let who = r.auth.map(|a| a.principal.as_str());
        field(&self.hosts, &self.not_hosts, host(&self.hosts), host(&self.not_hosts))
            && field(&self.methods, &self.not_methods, any_str(&self.methods, Some(r.method)), any_str(&self.not_methods, Some(r.method)))
            && field(&self.paths, &self.not_paths, path(&self.paths), path(&self.not_paths))
            && identity_field(&self.request_principals, &self.not_request_principals, who, action)
            && self.conditions.iter().all(|c| c.matches(r, action))
    }
}

impl Condition {
    fn matches(&self, r: &Request, action: Action) -> bool {
        let one = |v: Option<&str>| field(&self.values, &self.not_values, any_str(&self.values, v), any_str(&self.not_values, v));
        let token = |vals: Vec<String>| {
            if r.auth.is_none() {
                return identity_field(&self.values, &self.not_values, None, action);
            }
            let hit = |list: &[StrMatch]| vals.iter().any(|v| list.iter().any(|m| m.matches(Some(v))));
            field(&self.values, &self.not_values, hit(&self.values), hit(&self.not_values))
        };
        match &self.key {
            CondKey::Header(name) => {
                let joined: Vec<&str> = r.headers.get_all(name.as_str()).iter().filter_map(|v| v.to_str().ok()).collect();
                one((!joined.is_empty()).then(|| joined.join(",")).as_deref())
            }
            CondKey::Sni => one(r.sni),
            CondKey::AuthPrincipal => token(r.auth.map(|a| vec![a.principal.clone()]).unwrap_or_default()),
            CondKey::AuthAudiences => token(r.auth.map(|a| a.audiences.clone()).unwrap_or_default()),
            CondKey::AuthPresenter => token(r.auth.and_then(|a| a.presenter.clone()).into_iter().collect()),
            CondKey::AuthClaim(path) => token(r.auth.map(|a| a.claim(path)).unwrap_or_default()),
        }
    }
}

impl Policy {
    /// Whether the policy matches; `None` when that depends on a request not given.
    pub fn eval(&self, a: &Attrs, req: Option<&Request>) -> Tri {
        let principal = a.principal();
        let principal = principal.as_deref();
        tri_any(&self.groups, |g| {
            let mut all = Some(true);
            for c in &g.clauses {
                all = tri_and(all, || tri_any(c, |m| m.eval(a, principal, req, self.action)));
            }
            all
        })
    }

    /// Whether the policy matches a connection (no request: HTTP rules do not match).
    pub fn matches(&self, a: &Attrs) -> bool {
        self.eval(a, None) == Some(true)
    }

    /// Whether some rule needs HTTP attributes.
    pub fn has_http(&self) -> bool {
        self.groups.iter().flat_map(|g| g.clauses.iter().flatten()).any(Match::has_http)
    }

    /// Whether the policy applies to a pod in `namespace` whose workload lists `listed`.
    pub fn selects(&self, namespace: &str, listed: &[String]) -> bool {
        match self.scope {
            Scope::Global => true,
            Scope::Namespace => self.namespace == namespace,
            Scope::WorkloadSelector => listed.contains(&self.key()),
        }
    }
}

/// Decides a connection (`req` is `None`) or one of its requests against the policies
/// that apply to its destination pod. Dry-run policies never decide. Without a
/// request the answer may be [`Decision::Pending`].
pub fn decide(policies: &[Arc<Policy>], a: &Attrs, req: Option<&Request>) -> Decision {
    let live = || policies.iter().filter(|p| !p.dry_run);
    if let Some(p) = live().find(|p| p.unusable.is_some()) {
        return Decision::Unusable(format!("{}: {}", p.key(), p.unusable.as_deref().unwrap_or_default()));
    }
    let mut open: Vec<String> = Vec::new();
    for p in live().filter(|p| p.action == Action::Deny) {
        match p.eval(a, req) {
            Some(true) => return Decision::Denied(p.key()),
            None => open.push(p.key()),
            Some(false) => {}
        }
    }
    let allows: Vec<&Arc<Policy>> = live().filter(|p| p.action == Action::Allow).collect();
    let mut allow_open = Vec::new();
    let mut allowed = None;
    for p in &allows {
        match p.eval(a, req) {
            Some(true) => {
                allowed = Some(p.key());
                break;
            }
            None => allow_open.push(p.key()),
            Some(false) => {}
        }
    }
    let none_can_allow = !allows.is_empty() && allowed.is_none() && allow_open.is_empty();
    if none_can_allow {
        // Denied whatever the request: no need to wait for it.
        return Decision::NotAllowed(allows.iter().map(|p| p.key()).collect::<Vec<_>>().join(","));
    }
    if !open.is_empty() || allowed.is_none() && !allow_open.is_empty() {
        open.extend(allow_open);
        return Decision::Pending(open.join(","));
    }
    match allowed {
        Some(p) => Decision::Allowed(p),
        None => Decision::Allow,
    }
}

/// What one clause is, as far as the kernel is concerned.
enum Clause {
    /// Only source fields: a `from` list.
    Sources(Vec<l4policy::Source>),
    /// Only destination ports: a `to` list.
    Ports(Vec<l4policy::Operation>),
    /// Matches nothing (no `Match` at all).
    Never,
    /// Matches anything (a `Match` without fields): no condition.
    Always,
    /// Needs what the kernel cannot see (destination addresses, mixed fields).
    Opaque,
}

fn identity_matches(w: &Workload, principals: &[StrMatch], namespaces: &[StrMatch]) -> bool {
    let id = w.identity();
    let principal = format!("{}/ns/{}/sa/{}", id.trust_domain, id.namespace, id.service_account);
    (principals.is_empty() || any_str(principals, Some(&principal)))
        && (namespaces.is_empty() || any_str(namespaces, Some(&w.namespace)))
}

/// Host prefixes of the workloads for which `pick` holds.
fn hosts(workloads: &[Arc<Workload>], pick: impl Fn(&Workload) -> bool) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = workloads.iter().filter(|w| pick(w)).flat_map(|w| w.addresses.iter().copied()).collect();
    v.sort();
    v.dedup();
    v
}

fn classify(clause: &[Match], action: Action, workloads: &[Arc<Workload>]) -> Clause {
    if clause.is_empty() {
        return Clause::Never;
    }
    let has_source = |m: &Match| {
        !(m.namespaces.is_empty()
            && m.not_namespaces.is_empty()
            && m.principals.is_empty()
            && m.not_principals.is_empty()
            && m.source_ips.is_empty()
            && m.not_source_ips.is_empty())
    };
    let has_ports = |m: &Match| !(m.destination_ports.is_empty() && m.not_destination_ports.is_empty());
    let has_dst_ip = |m: &Match| !(m.destination_ips.is_empty() && m.not_destination_ips.is_empty());
    let has_other = |m: &Match| has_dst_ip(m) || m.has_http() || !(m.remote_ips.is_empty() && m.not_remote_ips.is_empty());
    if clause.iter().any(|m| !(has_source(m) || has_ports(m) || has_other(m))) {
        return Clause::Always;
    }
    if clause.iter().any(has_other) || clause.iter().any(|m| has_source(m) && has_ports(m)) {
        return Clause::Opaque;
    }
    if clause.iter().all(|m| !has_ports(m)) {
        let sources = clause
            .iter()
            .map(|m| {
                // The identity view (HBONE) of the not-forms: a DENY spares every
                // address an excluded identity holds; an ALLOW ignores them (matches
                // more). The plaintext view needs nothing: plaintext satisfies them.
                let not_peers = if action == Action::Deny && !(m.not_principals.is_empty() && m.not_namespaces.is_empty()) {
                    hosts(workloads, |w| {
                        (!m.not_principals.is_empty() && identity_matches(w, &m.not_principals, &[]))
                            || (!m.not_namespaces.is_empty() && identity_matches(w, &[], &m.not_namespaces))
                    })
                } else {
                    Vec::new()
                };
                let peers = (!(m.principals.is_empty() && m.namespaces.is_empty()))
                    .then(|| hosts(workloads, |w| identity_matches(w, &m.principals, &m.namespaces)));
                // In an ALLOW, a not-form admits no caller without identity (module docs).
                let needs_identity =
                    action == Action::Allow && !(m.not_principals.is_empty() && m.not_namespaces.is_empty());
                l4policy::Source {
                    ip_blocks: m.source_ips.clone(),
                    not_ip_blocks: m.not_source_ips.clone(),
                    peers,
                    not_peers,
                    needs_identity,
                }
            })
            .collect();
        return Clause::Sources(sources);
    }
    if clause.iter().all(|m| !has_source(m)) {
        let ops = clause
            .iter()
            .map(|m| l4policy::Operation { ports: m.destination_ports.clone(), not_ports: m.not_destination_ports.clone() })
            .collect();
        return Clause::Ports(ops);
    }
    Clause::Opaque
}

/// The kernel's form of one policy, given the workloads the agent knows (for the
/// identity view, principals and namespaces resolve to their addresses). `None` for a
/// dry-run policy.
pub fn to_l4(p: &Policy, workloads: &[Arc<Workload>]) -> Option<L4Policy> {
    // An unusable policy is the agent's alone: the kernel keeps the pod reachable
    // for the agent to refuse (and to say why).
    if p.dry_run || p.unusable.is_some() {
        return None;
    }
    let mut rules = Vec::new();
    'group: for g in &p.groups {
        let mut rule = l4policy::Rule::default();
        let (mut have_from, mut have_to) = (false, false);
        for c in &g.clauses {
            match classify(c, p.action, workloads) {
                Clause::Never => continue 'group,
                Clause::Always => {}
                Clause::Sources(s) if !have_from => (rule.from, have_from) = (s, true),
                Clause::Ports(o) if !have_to => (rule.to, have_to) = (o, true),
                // A second clause of a kind, or one the kernel cannot judge: an ALLOW
                // rule goes without it (matches more), a DENY rule is left out.
                _ if p.action == Action::Allow => {}
                _ => continue 'group,
            }
        }
        rules.push(rule);
    }
    let action = match p.action {
        Action::Allow => l4policy::Action::Allow,
        Action::Deny => l4policy::Action::Deny,
    };
    Some(L4Policy { name: p.key(), action, rules })
}

#[cfg(test)]
mod tests;
