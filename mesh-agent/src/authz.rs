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
//! a policy with no groups matches nothing. Plaintext has no principal nor namespace:
//! fields on them never match it, and their not-forms always do.
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
use crate::proto::security as sec;
use crate::state::{Identity, Workload};

pub mod enforce;

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
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

impl Policy {
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

fn str_match(name: &str, m: &sec::StringMatch) -> Result<StrMatch, ConvertError> {
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
    let mut groups = Vec::with_capacity(a.groups.len());
    for g in &a.groups {
        let mut clauses = Vec::with_capacity(g.rules.len());
        for r in &g.rules {
            clauses.push(r.matches.iter().map(|m| convert_match(name, m)).collect::<Result<Vec<_>, _>>()?);
        }
        groups.push(Group { clauses });
    }
    Ok(Policy { name: a.name.clone(), namespace: a.namespace.clone(), scope, action, groups, dry_run: a.dry_run })
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
        }
    }
}

fn any_str(list: &[StrMatch], v: Option<&str>) -> bool {
    list.iter().any(|m| m.matches(v))
}

fn any_ip(list: &[Prefix], ip: IpAddr) -> bool {
    let bits = addr_bits(ip);
    list.iter().any(|p| p.contains(bits))
}

impl Match {
    pub fn matches(&self, a: &Attrs, principal: Option<&str>) -> bool {
        let ns = a.identity.as_ref().map(|i| i.namespace.as_str());
        let field = |pos: bool, neg: bool, pos_empty: bool, neg_empty: bool| (pos_empty || pos) && (neg_empty || !neg);
        field(any_str(&self.namespaces, ns), any_str(&self.not_namespaces, ns), self.namespaces.is_empty(), self.not_namespaces.is_empty())
            && field(
                any_str(&self.principals, principal),
                any_str(&self.not_principals, principal),
                self.principals.is_empty(),
                self.not_principals.is_empty(),
            )
            && field(
                any_ip(&self.source_ips, a.src_ip),
                any_ip(&self.not_source_ips, a.src_ip),
                self.source_ips.is_empty(),
                self.not_source_ips.is_empty(),
            )
            && field(
                any_ip(&self.destination_ips, a.dst_ip),
                any_ip(&self.not_destination_ips, a.dst_ip),
                self.destination_ips.is_empty(),
                self.not_destination_ips.is_empty(),
            )
            && field(
                self.destination_ports.contains(&a.dst_port),
                self.not_destination_ports.contains(&a.dst_port),
                self.destination_ports.is_empty(),
                self.not_destination_ports.is_empty(),
            )
    }
}

impl Policy {
    pub fn matches(&self, a: &Attrs) -> bool {
        let principal = a.principal();
        self.groups.iter().any(|g| g.clauses.iter().all(|c| c.iter().any(|m| m.matches(a, principal.as_deref()))))
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

/// Decides one connection against the policies that apply to its destination pod.
/// Dry-run policies never decide.
pub fn decide(policies: &[Arc<Policy>], a: &Attrs) -> Decision {
    let live = || policies.iter().filter(|p| !p.dry_run);
    if let Some(p) = live().filter(|p| p.action == Action::Deny).find(|p| p.matches(a)) {
        return Decision::Denied(p.key());
    }
    let allows: Vec<&Arc<Policy>> = live().filter(|p| p.action == Action::Allow).collect();
    if allows.is_empty() {
        return Decision::Allow;
    }
    match allows.iter().find(|p| p.matches(a)) {
        Some(p) => Decision::Allowed(p.key()),
        None => Decision::NotAllowed(allows.iter().map(|p| p.key()).collect::<Vec<_>>().join(",")),
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
    if clause.iter().any(|m| !(has_source(m) || has_ports(m) || has_dst_ip(m))) {
        return Clause::Always;
    }
    if clause.iter().any(has_dst_ip) || clause.iter().any(|m| has_source(m) && has_ports(m)) {
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
                l4policy::Source { ip_blocks: m.source_ips.clone(), not_ip_blocks: m.not_source_ips.clone(), peers, not_peers }
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
    if p.dry_run {
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
