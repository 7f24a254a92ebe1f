//! AuthorizationPolicy (`security.istio.io/v1` and `v1beta1`) from the config folder,
//! checked while parsing (so an error names file, line and field), and its conversion
//! into the workload API's `istio.security.Authorization`, as istiod does for ambient.
//!
//! # Two forms in one resource
//! Istio's node proxies (ztunnel) see L4 only, so istiod converts a rule that needs L7
//! (methods, paths, hosts, requestPrincipals, `when` on `request.*`) to fail closed:
//! in an ALLOW policy the rule matches nothing, in a DENY policy its L7 parts are
//! dropped so it denies more. `groups` carries that form, for any Istio-compatible
//! agent. Our agent parses HTTP where a policy needs it, so the resource also carries
//! every rule as written in `mesh_rules` (our extension field, which ztunnel skips);
//! our agent judges by that.
//!
//! AUDIT policies are accepted and never served (they never decide); CUSTOM (ext-authz)
//! is rejected at load.
use std::collections::BTreeMap;

use serde::Deserialize;

use super::folder::Metadata;
use crate::l4policy::Prefix;
use crate::proto::mesh_security as mesh;
use crate::proto::security as sec;

/// Istio's root namespace: a policy there without a selector applies mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct AuthorizationPolicy {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: PolicySpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default)]
    pub selector: Option<Selector>,
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Deprecated singular form of `targetRefs`.
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    #[serde(default)]
    pub provider: Option<Unsupported>,
}

/// What a policy attaches to instead of a selector. Istio attaches to a waypoint's
/// Service, a Gateway or a ServiceEntry; each node agent here is the waypoint of the
/// pods it serves, so a `Service` target selects the pods that Service selects (on
/// every port: wider than the Service's ports, so it never allows or denies less).
/// Gateways and ServiceEntries are refused while parsing.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetRef {
    pub name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTargetRef {
    #[serde(default)]
    group: String,
    kind: String,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

impl<'de> Deserialize<'de> for TargetRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let raw = RawTargetRef::deserialize(d)?;
        if raw.namespace.is_some() {
            return Err(D::Error::custom("targetRefs: `namespace` is not allowed; a policy targets objects in its own namespace"));
        }
        match (raw.group.as_str(), raw.kind.as_str()) {
            ("" | "core", "Service") if !raw.name.is_empty() => Ok(TargetRef { name: raw.name }),
            ("" | "core", "Service") => Err(D::Error::custom("targetRefs: a Service target needs a `name`")),
            (g, k) => Err(D::Error::custom(format!(
                "targetRefs: kind {k:?} (group {g:?}) is not supported: only Services (group \"\"), whose pods this \
                 mesh's agents serve; there are no gateways. The policy is rejected"
            ))),
        }
    }
}

/// Every Service a policy targets: `targetRefs` and the deprecated `targetRef`.
pub fn targets<'a>(refs: &'a [TargetRef], single: &'a Option<TargetRef>) -> impl Iterator<Item = &'a TargetRef> {
    refs.iter().chain(single.iter())
}

/// Istio's rule for both policy kinds: a selector or targets, not both.
pub fn check_attachment(selector: &Option<Selector>, targets: &[TargetRef], single: &Option<TargetRef>) -> Result<(), String> {
    if self::targets(targets, single).next().is_some() && selector.as_ref().is_some_and(|s| !s.match_labels.is_empty()) {
        return Err("spec.targetRefs: only one of selector or targetRefs may be set".into());
    }
    Ok(())
}

impl PolicySpec {
    pub fn targets(&self) -> impl Iterator<Item = &TargetRef> {
        targets(&self.target_refs, &self.target_ref)
    }

    /// Istio's validation beyond the field types.
    pub fn validate(&self) -> Result<(), String> {
        check_attachment(&self.selector, &self.target_refs, &self.target_ref)
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// ALLOW (the default), DENY or AUDIT; CUSTOM is refused while parsing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match String::deserialize(d)?.as_str() {
            "ALLOW" => Ok(Action::Allow),
            "DENY" => Ok(Action::Deny),
            "AUDIT" => Ok(Action::Audit),
            "CUSTOM" => Err(D::Error::custom(
                "action CUSTOM (external authorization) is not supported yet; the policy is rejected",
            )),
            other => Err(D::Error::custom(format!("unknown action {other:?}; expected ALLOW, DENY or AUDIT"))),
        }
    }
}

/// A field this version refuses, with the reason.
#[derive(Clone, Debug, PartialEq)]
pub struct Unsupported;

impl<'de> Deserialize<'de> for Unsupported {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "this field (an external authorization `provider`, or a RequestAuthentication `targetRef`) is not supported; \
             the policy is rejected",
        ))
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub from: Vec<From>,
    #[serde(default)]
    pub to: Vec<To>,
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct From {
    #[serde(default)]
    pub source: Source,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct To {
    #[serde(default)]
    pub operation: Operation,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<IpBlock>,
    #[serde(default)]
    pub not_ip_blocks: Vec<IpBlock>,
    // L7 for Istio's node proxies:
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<IpBlock>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<IpBlock>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub not_ports: Vec<Port>,
    // L7 for Istio's node proxies:
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default, deserialize_with = "path_patterns")]
    pub paths: Vec<String>,
    #[serde(default, deserialize_with = "path_patterns")]
    pub not_paths: Vec<String>,
}

/// `paths` / `notPaths`: each must be a pattern the agent can judge.
fn path_patterns<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    for p in &v {
        crate::authz::http::PathPattern::parse(p).map_err(|e| serde::de::Error::custom(format!("path {p:?}: {e}")))?;
    }
    Ok(v)
}

/// An `ipBlocks` entry: an address or address/length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IpBlock(pub Prefix);

impl<'de> Deserialize<'de> for IpBlock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Prefix::parse(&s).map(IpBlock).map_err(|e| serde::de::Error::custom(e.to_string()))
    }
}

/// A port, written as a string (Istio's form) or a number; 1-65535.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Port(pub u16);

fn port_from(v: &str) -> Result<u16, String> {
    match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{v:?} is not a port from 1 to 65535 (ranges and names are not supported)")),
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_yaml::Value::deserialize(d)?;
        let s = match &v {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            other => format!("{other:?}"),
        };
        port_from(&s).map(Port).map_err(serde::de::Error::custom)
    }
}

/// The attribute a `when` condition tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationIp,
    DestinationPort,
    /// `remote.ip`: the client's address, which is the source address here (no
    /// trusted proxies in front of a pod).
    RemoteIp,
    /// `request.headers[..]`, `request.auth.*`, `connection.sni`: judged by the agent,
    /// L7 for Istio's node proxies.
    L7,
}

/// Whether `key` is a `when` key of Istio's that the agent judges (see `authz::CondKey`).
fn l7_key(key: &str) -> Result<(), String> {
    crate::authz::CondKey::parse(key).map(|_| ())
}

#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub key: Key,
    pub name: String,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCondition {
    key: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    not_values: Vec<String>,
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let raw = RawCondition::deserialize(d)?;
        let key = match raw.key.as_str() {
            "source.ip" => Key::SourceIp,
            "source.namespace" => Key::SourceNamespace,
            "source.principal" => Key::SourcePrincipal,
            "destination.ip" => Key::DestinationIp,
            "destination.port" => Key::DestinationPort,
            "remote.ip" => Key::RemoteIp,
            k => match l7_key(k) {
                Ok(()) => Key::L7,
                Err(why) => return Err(D::Error::custom(why)),
            },
        };
        if raw.values.is_empty() && raw.not_values.is_empty() {
            return Err(D::Error::custom(format!("condition {:?} needs `values` or `notValues`", raw.key)));
        }
        for v in raw.values.iter().chain(&raw.not_values) {
            let bad = match key {
                Key::SourceIp | Key::DestinationIp | Key::RemoteIp => Prefix::parse(v).err().map(|e| e.to_string()),
                Key::DestinationPort => port_from(v).err(),
                _ => None,
            };
            if let Some(why) = bad {
                return Err(D::Error::custom(format!("condition {:?}: {why}", raw.key)));
            }
        }
        Ok(Condition { key, name: raw.key, values: raw.values, not_values: raw.not_values })
    }
}

impl Source {
    fn has_l7(&self) -> bool {
        !(self.request_principals.is_empty()
            && self.not_request_principals.is_empty()
            && self.remote_ip_blocks.is_empty()
            && self.not_remote_ip_blocks.is_empty())
    }
}

impl Operation {
    fn has_l7(&self) -> bool {
        !(self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty())
    }
}

impl Rule {
    fn has_l7(&self) -> bool {
        self.from.iter().any(|f| f.source.has_l7())
            || self.to.iter().any(|t| t.operation.has_l7())
            || self.when.iter().any(|c| matches!(c.key, Key::L7 | Key::RemoteIp))
    }
}

/// Istio's string match: `*` any value present, `*x` suffix, `x*` prefix, else exact.
pub fn string_match(s: &str) -> sec::StringMatch {
    use crate::authz::StrMatch;
    use sec::string_match::MatchType;
    let t = match crate::authz::written(s) {
        StrMatch::Presence => MatchType::Presence(true),
        StrMatch::Suffix(x) => MatchType::Suffix(x),
        StrMatch::Prefix(x) => MatchType::Prefix(x),
        StrMatch::Exact(x) => MatchType::Exact(x),
    };
    sec::StringMatch { match_type: Some(t) }
}

fn strings(v: &[String]) -> Vec<sec::StringMatch> {
    v.iter().map(|s| string_match(s)).collect()
}

fn address(p: Prefix) -> sec::Address {
    let v6 = std::net::Ipv6Addr::from(p.bits);
    match v6.to_ipv4_mapped() {
        Some(v4) if p.len >= 96 => sec::Address { address: v4.octets().to_vec(), length: u32::from(p.len - 96) },
        _ => sec::Address { address: v6.octets().to_vec(), length: u32::from(p.len) },
    }
}

fn addresses(v: &[IpBlock]) -> Vec<sec::Address> {
    v.iter().map(|b| address(b.0)).collect()
}

fn ports(v: &[Port]) -> Vec<u32> {
    v.iter().map(|p| u32::from(p.0)).collect()
}

fn source_match(s: &Source) -> sec::Match {
    sec::Match {
        namespaces: strings(&s.namespaces),
        not_namespaces: strings(&s.not_namespaces),
        principals: strings(&s.principals),
        not_principals: strings(&s.not_principals),
        source_ips: addresses(&s.ip_blocks),
        not_source_ips: addresses(&s.not_ip_blocks),
        ..Default::default()
    }
}

fn condition_match(c: &Condition) -> sec::Match {
    let ips = |v: &[String]| v.iter().filter_map(|s| Prefix::parse(s).ok()).map(address).collect();
    let ports = |v: &[String]| v.iter().filter_map(|s| port_from(s).ok()).map(u32::from).collect();
    let mut m = sec::Match::default();
    match c.key {
        Key::SourceIp => (m.source_ips, m.not_source_ips) = (ips(&c.values), ips(&c.not_values)),
        Key::SourceNamespace => (m.namespaces, m.not_namespaces) = (strings(&c.values), strings(&c.not_values)),
        Key::SourcePrincipal => (m.principals, m.not_principals) = (strings(&c.values), strings(&c.not_values)),
        Key::DestinationIp => (m.destination_ips, m.not_destination_ips) = (ips(&c.values), ips(&c.not_values)),
        Key::DestinationPort => {
            (m.destination_ports, m.not_destination_ports) = (ports(&c.values), ports(&c.not_values))
        }
        Key::RemoteIp | Key::L7 => {}
    }
    m
}

/// One rule as a group: a `from`, a `to` and each L4 `when` become one Rules each.
fn group(rule: &Rule) -> sec::Group {
    let mut rules = Vec::new();
    if !rule.from.is_empty() {
        rules.push(sec::Rules { matches: rule.from.iter().map(|f| source_match(&f.source)).collect() });
    }
    if !rule.to.is_empty() {
        let matches = rule
            .to
            .iter()
            .map(|t| sec::Match {
                destination_ports: ports(&t.operation.ports),
                not_destination_ports: ports(&t.operation.not_ports),
                ..Default::default()
            })
            .collect();
        rules.push(sec::Rules { matches });
    }
    for c in rule.when.iter().filter(|c| !matches!(c.key, Key::L7 | Key::RemoteIp)) {
        rules.push(sec::Rules { matches: vec![condition_match(c)] });
    }
    sec::Group { rules }
}

fn written_ips(v: &[IpBlock]) -> Vec<String> {
    v.iter().map(|b| b.0.to_string()).collect()
}

/// One rule as written: a `from`, a `to` and each `when` become one clause each.
fn mesh_group(rule: &Rule) -> mesh::HttpGroup {
    let mut clauses = Vec::new();
    if !rule.from.is_empty() {
        let matches = rule
            .from
            .iter()
            .map(|f| {
                let s = &f.source;
                mesh::HttpMatch {
                    namespaces: s.namespaces.clone(),
                    not_namespaces: s.not_namespaces.clone(),
                    principals: s.principals.clone(),
                    not_principals: s.not_principals.clone(),
                    source_ips: written_ips(&s.ip_blocks),
                    not_source_ips: written_ips(&s.not_ip_blocks),
                    request_principals: s.request_principals.clone(),
                    not_request_principals: s.not_request_principals.clone(),
                    remote_ips: written_ips(&s.remote_ip_blocks),
                    not_remote_ips: written_ips(&s.not_remote_ip_blocks),
                    ..Default::default()
                }
            })
            .collect();
        clauses.push(mesh::HttpClause { matches });
    }
    if !rule.to.is_empty() {
        let matches = rule
            .to
            .iter()
            .map(|t| {
                let o = &t.operation;
                mesh::HttpMatch {
                    destination_ports: ports(&o.ports),
                    not_destination_ports: ports(&o.not_ports),
                    hosts: o.hosts.clone(),
                    not_hosts: o.not_hosts.clone(),
                    methods: o.methods.clone(),
                    not_methods: o.not_methods.clone(),
                    paths: o.paths.clone(),
                    not_paths: o.not_paths.clone(),
                    ..Default::default()
                }
            })
            .collect();
        clauses.push(mesh::HttpClause { matches });
    }
    for c in &rule.when {
        let (v, n) = (c.values.clone(), c.not_values.clone());
        let ports = |v: &[String]| v.iter().filter_map(|s| port_from(s).ok()).map(u32::from).collect();
        let mut m = mesh::HttpMatch::default();
        match c.key {
            Key::SourceIp => (m.source_ips, m.not_source_ips) = (v, n),
            Key::SourceNamespace => (m.namespaces, m.not_namespaces) = (v, n),
            Key::SourcePrincipal => (m.principals, m.not_principals) = (v, n),
            Key::DestinationIp => (m.destination_ips, m.not_destination_ips) = (v, n),
            Key::DestinationPort => (m.destination_ports, m.not_destination_ports) = (ports(&v), ports(&n)),
            Key::RemoteIp => (m.remote_ips, m.not_remote_ips) = (v, n),
            Key::L7 => m.conditions.push(mesh::Condition { key: c.name.clone(), values: v, not_values: n }),
        }
        clauses.push(mesh::HttpClause { matches: vec![m] });
    }
    mesh::HttpGroup { clauses }
}

/// The served form of one policy, or `None` for AUDIT. Rules needing L7 are converted
/// to fail closed (see the module docs); each such conversion is logged.
pub fn convert(namespace: &str, name: &str, p: &PolicySpec) -> Option<sec::Authorization> {
    let action = match p.action {
        Action::Allow => sec::Action::Allow,
        Action::Deny => sec::Action::Deny,
        Action::Audit => return None,
    };
    let selector = p.selector.as_ref().filter(|s| !s.match_labels.is_empty());
    let targeted = p.targets().next().is_some();
    let scope = match (namespace == ROOT_NAMESPACE, selector) {
        _ if targeted => sec::Scope::WorkloadSelector,
        (_, Some(_)) => sec::Scope::WorkloadSelector,
        (true, None) => sec::Scope::Global,
        (false, None) => sec::Scope::Namespace,
    };
    // The L4 form for Istio's node proxies (see the module docs).
    let groups = p.rules.iter().filter(|r| action == sec::Action::Deny || !r.has_l7()).map(group).collect();
    Some(sec::Authorization {
        name: name.to_string(),
        namespace: namespace.to_string(),
        scope: scope as i32,
        action: action as i32,
        groups,
        dry_run: false,
        mesh_rules: Some(mesh::HttpRules { groups: p.rules.iter().map(mesh_group).collect() }),
    })
}

/// The policy with every principal (sources and `source.principal` conditions)
/// expanded over the trust domain and its aliases ([`TrustDomains::expand`]).
pub fn aliased(spec: &PolicySpec, tds: &super::model::TrustDomains) -> PolicySpec {
    if tds.aliases.is_empty() && tds.own == "cluster.local" {
        return spec.clone();
    }
    let expand = |v: &[String]| v.iter().flat_map(|p| tds.expand(p)).collect::<Vec<_>>();
    let mut out = spec.clone();
    for r in &mut out.rules {
        for f in &mut r.from {
            f.source.principals = expand(&f.source.principals);
            f.source.not_principals = expand(&f.source.not_principals);
        }
        for c in r.when.iter_mut().filter(|c| c.key == Key::SourcePrincipal) {
            c.values = expand(&c.values);
            c.not_values = expand(&c.not_values);
        }
    }
    out
}

/// Whether a policy (AuthorizationPolicy or RequestAuthentication) in
/// `policy_namespace` picks a pod with these labels in `pod_namespace`: as a pod of a
/// Service it targets (`services`: by namespace and name), or else by its selector (a
/// root-namespace selector picks in every namespace; no selector picks no pod by name).
pub fn picks<'a>(
    policy_namespace: &str,
    selector: Option<&Selector>,
    targets: impl Iterator<Item = &'a TargetRef>,
    pod_namespace: &str,
    labels: &BTreeMap<String, String>,
    services: &super::folder::Map<(String, String), std::sync::Arc<super::folder::Service>>,
) -> bool {
    let mut targets = targets.peekable();
    if targets.peek().is_some() {
        return policy_namespace == pod_namespace && targets.any(|t| service_selects(services, pod_namespace, &t.name, labels));
    }
    let Some(sel) = selector.filter(|s| !s.match_labels.is_empty()) else { return false };
    (policy_namespace == ROOT_NAMESPACE || policy_namespace == pod_namespace)
        && sel.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether the Service `namespace/name` exists and selects a pod with these labels.
pub fn service_selects(
    services: &super::folder::Map<(String, String), std::sync::Arc<super::folder::Service>>,
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    services.get(&(namespace.to_string(), name.to_string())).is_some_and(|s| {
        let sel = &s.spec.selector;
        !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    })
}

#[cfg(test)]
mod tests;
