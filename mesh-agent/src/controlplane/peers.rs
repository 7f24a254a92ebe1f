//! Which callers a node's AuthorizationPolicies name by identity, so that the node's
//! agent holds every workload they could mean (pure; table-tested here).
//!
//! The agent compiles a policy's principals and namespaces into the kernel's HBONE
//! table as the addresses of the workloads holding them (`authz::to_l4`). That is safe
//! only when the agent knows every such workload: an ALLOW that names `ns/web` would
//! otherwise drop a `web` pod the agent never heard of, and a DENY of everyone but
//! `ns/web` would drop it too. So a node receives every workload whose identity matches
//! any principal or namespace pattern (in either form, `not_` or not) of any policy that
//! applies to one of its pods. Matching more than needed is safe: it only sends more.
use std::collections::BTreeSet;

use crate::authz::{str_match, written, StrMatch};
use crate::proto::mesh_security as mesh;
use crate::proto::security as sec;

/// One identity condition: on the principal (`td/ns/x/sa/y`) or on the namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerPattern {
    Principal(StrMatch),
    Namespace(StrMatch),
}

/// What a workload is known by, for [`PeerPattern`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// `td/ns/x/sa/y`.
    pub principal: String,
    pub namespace: String,
}

impl PeerIdentity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        PeerIdentity { principal: format!("{trust_domain}/ns/{namespace}/sa/{service_account}"), namespace: namespace.into() }
    }
}

impl PeerPattern {
    pub fn matches(&self, id: &PeerIdentity) -> bool {
        match self {
            PeerPattern::Principal(p) => p.matches(Some(&id.principal)),
            PeerPattern::Namespace(p) => p.matches(Some(&id.namespace)),
        }
    }
}

/// The callers a set of policies names by identity.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Peers {
    /// Every workload (some policy matches any identity).
    All,
    /// The workloads matching any of these (none: the policies name no identity).
    #[default]
    None,
    Some(BTreeSet<PeerPattern>),
}

impl Peers {
    pub fn matches(&self, id: &PeerIdentity) -> bool {
        match self {
            Peers::All => true,
            Peers::None => false,
            Peers::Some(set) => set.iter().any(|p| p.matches(id)),
        }
    }

    pub fn extend(&mut self, patterns: &[PeerPattern]) {
        for p in patterns {
            let any = matches!(p, PeerPattern::Principal(m) | PeerPattern::Namespace(m) if anyone(m));
            match self {
                Peers::All => return,
                _ if any => *self = Peers::All,
                Peers::None => *self = Peers::Some(BTreeSet::from([p.clone()])),
                Peers::Some(set) => {
                    set.insert(p.clone());
                }
            }
        }
    }
}

/// Every principal and namespace pattern `policy` names, in its L4 rules and in its
/// HTTP rules (including `source.principal` and `source.namespace` conditions), sorted
/// and without repeats.
pub fn named_by(policy: &sec::Authorization) -> Vec<PeerPattern> {
    let mut out = BTreeSet::new();
    for m in policy.groups.iter().flat_map(|g| &g.rules).flat_map(|r| &r.matches) {
        for s in m.principals.iter().chain(&m.not_principals) {
            out.insert(PeerPattern::Principal(from_proto(s)));
        }
        for s in m.namespaces.iter().chain(&m.not_namespaces) {
            out.insert(PeerPattern::Namespace(from_proto(s)));
        }
    }
    let http = policy.mesh_rules.iter().flat_map(|r| &r.groups).flat_map(|g| &g.clauses).flat_map(|c| &c.matches);
    for m in http {
        add_http(&mut out, m);
    }
    out.into_iter().collect()
}

/// A match type we do not know matches anyone (sending more is safe).
fn from_proto(m: &sec::StringMatch) -> StrMatch {
    str_match("", m).unwrap_or(StrMatch::Presence)
}

/// Whether `m` matches every workload (a principal and a namespace are never empty).
fn anyone(m: &StrMatch) -> bool {
    match m {
        StrMatch::Presence => true,
        StrMatch::Prefix(x) | StrMatch::Suffix(x) => x.is_empty(),
        StrMatch::Exact(_) => false,
    }
}

fn add_http(out: &mut BTreeSet<PeerPattern>, m: &mesh::HttpMatch) {
    for s in m.principals.iter().chain(&m.not_principals) {
        out.insert(PeerPattern::Principal(written(s)));
    }
    for s in m.namespaces.iter().chain(&m.not_namespaces) {
        out.insert(PeerPattern::Namespace(written(s)));
    }
    for c in &m.conditions {
        let values = c.values.iter().chain(&c.not_values);
        match c.key.as_str() {
            "source.principal" => out.extend(values.map(|v| PeerPattern::Principal(written(v)))),
            "source.namespace" => out.extend(values.map(|v| PeerPattern::Namespace(written(v)))),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::folder::Folder;
    use crate::controlplane::model;
    use prost::Message as _;

    fn policy(spec: &str) -> sec::Authorization {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: a}}\nspec: {spec}\n"
        );
        let (o, errors) = Folder::default().apply(vec![("t.yaml".into(), Ok(yaml))]);
        assert!(errors.is_empty(), "{errors:?}");
        let snap = model::build(&o, "cluster.local");
        let r = snap.authorizations.get("a/p").expect("served");
        sec::Authorization::decode(r.any.value.as_slice()).unwrap()
    }

    fn peers(spec: &str) -> Peers {
        let mut p = Peers::None;
        p.extend(&named_by(&policy(spec)));
        p
    }

    /// (spec, identities it must cover, identities it may leave out)
    #[test]
    fn a_policy_covers_every_identity_it_names() {
        let web = PeerIdentity::new("cluster.local", "web", "frontend");
        let db = PeerIdentity::new("cluster.local", "db", "postgres");
        let other = PeerIdentity::new("cluster.local", "batch", "cron");
        let table: &[(&str, &[&PeerIdentity], &[&PeerIdentity])] = &[
            ("{rules: [{}]}", &[], &[&web, &db, &other]),
            ("{rules: [{to: [{operation: {ports: ['80']}}]}]}", &[], &[&web, &db, &other]),
            ("{rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]}", &[], &[&web, &db, &other]),
            ("{rules: [{from: [{source: {principals: [cluster.local/ns/web/sa/frontend]}}]}]}", &[&web], &[&db, &other]),
            ("{rules: [{from: [{source: {namespaces: [db]}}]}]}", &[&db], &[&web, &other]),
            ("{action: DENY, rules: [{from: [{source: {notNamespaces: [web]}}]}]}", &[&web], &[&db, &other]),
            ("{action: DENY, rules: [{from: [{source: {notPrincipals: ['*/sa/postgres']}}]}]}", &[&db], &[&web, &other]),
            ("{rules: [{from: [{source: {principals: ['cluster.local/ns/web/*']}}]}]}", &[&web], &[&db, &other]),
            ("{rules: [{from: [{source: {principals: ['*']}}]}]}", &[&web, &db, &other], &[]),
            ("{rules: [{from: [{source: {namespaces: ['*']}}]}]}", &[&web, &db, &other], &[]),
            // In an HTTP rule and in conditions too.
            ("{rules: [{from: [{source: {namespaces: [web]}}], to: [{operation: {methods: [GET]}}]}]}", &[&web], &[&db, &other]),
            ("{rules: [{when: [{key: source.namespace, values: [db]}]}]}", &[&db], &[&web, &other]),
            ("{rules: [{when: [{key: source.principal, notValues: ['cluster.local/ns/web/sa/frontend']}]}]}", &[&web], &[&db, &other]),
        ];
        for (spec, covered, free) in table {
            let p = peers(spec);
            for id in *covered {
                assert!(p.matches(id), "{spec}: must cover {id:?}, got {p:?}");
            }
            for id in *free {
                assert!(!p.matches(id), "{spec}: need not send {id:?}, got {p:?}");
            }
        }
    }

    #[test]
    fn any_pattern_widens_to_everyone_and_stays() {
        let mut p = Peers::None;
        p.extend(&[PeerPattern::Namespace(StrMatch::Exact("a".into()))]);
        assert!(matches!(&p, Peers::Some(s) if s.len() == 1));
        p.extend(&[PeerPattern::Principal(StrMatch::Prefix(String::new()))]);
        assert_eq!(p, Peers::All);
        p.extend(&[PeerPattern::Namespace(StrMatch::Exact("b".into()))]);
        assert_eq!(p, Peers::All);
    }
}
