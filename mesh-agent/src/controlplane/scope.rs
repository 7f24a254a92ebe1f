//! What each node's agent receives: a pure function of the snapshot and the node.
//!
//! - `istio.workload.Address`, workloads: all of them. The agent looks up every
//!   caller by address (inbound HBONE source verification, plaintext callers), turns
//!   policy principals into addresses for the kernel's L4 tables, and resolves direct
//!   pod-IP calls; a missing remote workload would deny legitimate traffic or let a
//!   principal-based DENY miss in the kernel. So none is left out.
//! - `istio.workload.Address`, services: those whose hostnames the node's pods may
//!   call ([`Services`]): all of them today; a Sidecar's egress hosts will narrow it.
//! - `istio.security.Authorization`: GLOBAL ones, NAMESPACE ones of a namespace with a
//!   pod scheduled on the node, and every policy a workload of the node lists (the
//!   agent denies a workload whose listed policy it has not received).
//! - `mesh.security.RequestAuthentication`: those that apply to a pod of the node
//!   (mesh-wide or in its namespace, and, when it lists workloads, listing one of the
//!   node's).
//!
//! - `mesh.networking.VirtualService` and `DestinationRule`: all of them (a Sidecar's
//!   egress hosts and `exportTo` will narrow them as they narrow services).
//!
//! A node's pods are the snapshot's workloads whose `node` is the node, plus the
//! identities scheduled there (pods bound to the node that have no IP yet), so that a
//! starting pod's namespace policies arrive before it can take traffic.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use prost::Message as _;

use super::egress::EgressHost;
use super::model::{Resource as Served, Snapshot};
use crate::proto::security::Scope;
use crate::proto::workload as wl;
use crate::proto::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, DESTINATION_RULE_TYPE_URL, REQUEST_AUTHENTICATION_TYPE_URL,
    VIRTUAL_SERVICE_TYPE_URL,
};

/// The types served, in the order they are answered.
pub const TYPES: [&str; 5] = [
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    REQUEST_AUTHENTICATION_TYPE_URL,
    VIRTUAL_SERVICE_TYPE_URL,
    DESTINATION_RULE_TYPE_URL,
];

/// The short name of a served type for metrics and tables (`Address`, ...).
pub fn short_type(type_url: &str) -> &str {
    type_url.rsplit(['/', '.']).next().unwrap_or(type_url)
}

/// The hosts a node's pods may call.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Services {
    /// Every host (a pod of the node has no Sidecar narrowing its egress).
    #[default]
    All,
    /// Only these (the union of the node's pods' Sidecar egress hosts).
    Only(BTreeSet<EgressHost>),
}

impl Services {
    /// Whether a resource of `namespace` for `host` is needed.
    pub fn admits(&self, namespace: &str, host: &str) -> bool {
        match self {
            Services::All => true,
            Services::Only(h) => h.iter().any(|e| e.admits(namespace, host)),
        }
    }
}

/// What one node's pods need, as the snapshot says.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeNeeds {
    /// Namespaces with a pod scheduled on the node.
    pub namespaces: BTreeSet<String>,
    /// Uids of the node's workloads.
    pub workloads: BTreeSet<String>,
    /// Authorization names the node's workloads list.
    pub policies: BTreeSet<String>,
    pub services: Services,
}

#[derive(Clone, Debug)]
struct AuthnMeta {
    mesh_wide: bool,
    namespace: String,
    /// `Some` when the resource names its workloads.
    workloads: Option<BTreeSet<String>>,
}

/// What scoping reads of one workload.
#[derive(Clone, Debug)]
struct WorkloadMeta {
    node: String,
    namespace: String,
    policies: Vec<String>,
    /// The hosts it may call (`None`: every host).
    egress: Option<Arc<Vec<EgressHost>>>,
}

/// What scoping needs to know of a snapshot. Kept from one snapshot to the next in
/// persistent maps: only the resources that changed are decoded again, and only the
/// nodes they (or the identities that changed) concern get their needs again.
#[derive(Clone, Debug, Default)]
pub struct Index {
    /// Address resources that are services: name -> hostname.
    services: imbl::HashMap<String, String>,
    /// Address resources that are workloads on a node.
    workloads: imbl::HashMap<String, WorkloadMeta>,
    /// Node -> uids of its workloads.
    by_node: imbl::HashMap<String, imbl::OrdSet<String>>,
    /// VirtualService and DestinationRule name -> (namespace, hosts).
    routes: imbl::HashMap<String, (String, Vec<String>)>,
    /// Authorization name -> (scope, namespace).
    authz: imbl::HashMap<String, (Scope, String)>,
    authn: imbl::HashMap<String, AuthnMeta>,
    nodes: imbl::HashMap<String, Arc<NodeNeeds>>,
    none: Arc<NodeNeeds>,
}

impl Index {
    pub fn new(snap: &Snapshot) -> Self {
        let mut changed: BTreeMap<&'static str, BTreeMap<String, usize>> = BTreeMap::new();
        for t in TYPES {
            let names = resources_of(snap, t).into_iter().flatten().map(|(n, _)| (n.clone(), 0)).collect();
            changed.insert(t, names);
        }
        Index::default().next(&Snapshot::default(), snap, &changed)
    }

    /// The index of `snap`, from this one (of `prev`) and the names that changed
    /// between them.
    pub fn next(&self, prev: &Snapshot, snap: &Snapshot, changed: &BTreeMap<&'static str, BTreeMap<String, usize>>) -> Self {
        let mut ix = self.clone();
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let names = |t: &str| changed.get(t).into_iter().flat_map(|m| m.keys());
        for name in names(ADDRESS_TYPE_URL) {
            ix.services.remove(name);
            if let Some(old) = ix.workloads.remove(name) {
                if let Some(set) = ix.by_node.get_mut(&old.node) {
                    set.remove(name);
                }
                dirty.insert(old.node);
            }
            let Some(r) = snap.resources.get(name) else { continue };
            match wl::Address::decode(r.any.value.as_slice()).ok().and_then(|a| a.r#type) {
                Some(wl::address::Type::Service(s)) => {
                    ix.services.insert(name.clone(), s.hostname);
                }
                Some(wl::address::Type::Workload(w)) if !w.node.is_empty() => {
                    ix.by_node.entry(w.node.clone()).or_default().insert(name.clone());
                    dirty.insert(w.node.clone());
                    let egress = snap.egress.get(name).cloned();
                    let meta = WorkloadMeta { node: w.node, namespace: w.namespace, policies: w.authorization_policies, egress };
                    ix.workloads.insert(name.clone(), meta);
                }
                _ => {}
            }
        }
        // A Sidecar change narrows or widens workloads that did not change themselves.
        if !prev.egress.ptr_eq(&snap.egress) {
            let uids: BTreeSet<&String> = prev.egress.keys().chain(snap.egress.keys()).collect();
            for uid in uids {
                let (was, now) = (prev.egress.get(uid), snap.egress.get(uid));
                if was.zip(now).is_some_and(|(a, b)| Arc::ptr_eq(a, b)) {
                    continue;
                }
                if let Some(w) = ix.workloads.get_mut(uid) {
                    w.egress = now.cloned();
                    dirty.insert(w.node.clone());
                }
            }
        }
        for t in [VIRTUAL_SERVICE_TYPE_URL, DESTINATION_RULE_TYPE_URL] {
            for name in names(t) {
                ix.routes.remove(name);
                let Some(r) = resources_of(snap, t).and_then(|m| m.get(name)) else { continue };
                let bytes = r.any.value.as_slice();
                let meta = if t == VIRTUAL_SERVICE_TYPE_URL {
                    crate::proto::mesh_networking::VirtualService::decode(bytes).map(|v| (v.namespace, v.hosts))
                } else {
                    crate::proto::mesh_networking::DestinationRule::decode(bytes).map(|d| (d.namespace, vec![d.host]))
                };
                // Undecodable: admitted everywhere rather than silently dropped.
                if let Ok(meta) = meta {
                    ix.routes.insert(name.clone(), meta);
                }
            }
        }
        for name in names(AUTHORIZATION_TYPE_URL) {
            ix.authz.remove(name);
            let Some(r) = snap.authorizations.get(name) else { continue };
            // Undecodable: treat as global, so that it is sent rather than silently dropped.
            let (scope, ns) = crate::proto::security::Authorization::decode(r.any.value.as_slice())
                .map(|a| (Scope::try_from(a.scope).unwrap_or(Scope::Global), a.namespace))
                .unwrap_or((Scope::Global, String::new()));
            ix.authz.insert(name.clone(), (scope, ns));
        }
        for name in names(REQUEST_AUTHENTICATION_TYPE_URL) {
            ix.authn.remove(name);
            let Some(r) = snap.request_authentications.get(name) else { continue };
            let meta = match crate::proto::mesh_security::RequestAuthentication::decode(r.any.value.as_slice()) {
                Ok(ra) => AuthnMeta {
                    mesh_wide: ra.mesh_wide,
                    namespace: ra.namespace,
                    workloads: (ra.by_workload || !ra.selector.is_empty()).then(|| ra.workloads.into_iter().collect()),
                },
                Err(_) => AuthnMeta { mesh_wide: true, namespace: String::new(), workloads: None },
            };
            ix.authn.insert(name.clone(), meta);
        }
        // Identities scheduled on a node (pods without an address yet) count for its
        // namespaces too.
        if !prev.identities.ptr_eq(&snap.identities) {
            let (old, new) = (prev.identities.iter().map(|k| (k, ())), snap.identities.iter().map(|k| (k, ())));
            sorted_diff(old, new, |_, _| true, |(node, _), _| {
                dirty.insert(node.clone());
            });
        }
        for node in dirty {
            let mut needs = NodeNeeds::default();
            let none = crate::state::Identity { trust_domain: String::new(), namespace: String::new(), service_account: String::new() };
            let from = (node.clone(), none);
            for (_, id) in snap.identities.range(from..).take_while(|(n, _)| *n == node) {
                needs.namespaces.insert(id.namespace.clone());
            }
            let mut hosts: Option<BTreeSet<EgressHost>> = Some(BTreeSet::new());
            for uid in ix.by_node.get(&node).into_iter().flatten() {
                if let Some(w) = ix.workloads.get(uid) {
                    needs.namespaces.insert(w.namespace.clone());
                    needs.workloads.insert(uid.clone());
                    needs.policies.extend(w.policies.iter().cloned());
                    match (&mut hosts, &w.egress) {
                        (Some(h), Some(e)) => h.extend(e.iter().cloned()),
                        _ => hosts = None,
                    }
                }
            }
            // A node with no workload yet needs nothing narrowed (it calls nothing).
            needs.services = match hosts {
                Some(h) if !needs.workloads.is_empty() => Services::Only(h),
                _ => Services::All,
            };
            if needs == NodeNeeds::default() {
                ix.nodes.remove(&node);
                ix.by_node.remove(&node);
            } else {
                ix.nodes.insert(node, Arc::new(needs));
            }
        }
        ix
    }

    /// The needs of `node` (nothing scheduled there: empty).
    pub fn needs(&self, node: &str) -> Arc<NodeNeeds> {
        self.nodes.get(node).cloned().unwrap_or_else(|| self.none.clone())
    }

    /// Whether an agent whose node needs `needs` receives resource `name` of `type_url`.
    pub fn admits(&self, needs: &NodeNeeds, type_url: &str, name: &str) -> bool {
        match type_url {
            ADDRESS_TYPE_URL => self.services.get(name).is_none_or(|h| {
                needs.services.admits(name.split_once('/').map_or("", |(ns, _)| ns), h)
            }),
            AUTHORIZATION_TYPE_URL => {
                needs.policies.contains(name)
                    || match self.authz.get(name) {
                        None => true,
                        Some((Scope::Global, _)) => true,
                        Some((Scope::Namespace, ns)) => needs.namespaces.contains(ns),
                        Some((Scope::WorkloadSelector, _)) => false,
                    }
            }
            REQUEST_AUTHENTICATION_TYPE_URL => self.authn.get(name).is_none_or(|m| {
                let in_ns = m.mesh_wide || needs.namespaces.contains(&m.namespace);
                in_ns && m.workloads.as_ref().is_none_or(|w| w.iter().any(|u| needs.workloads.contains(u)))
            }),
            // Routes for hosts the node's pods may call (exportTo is not read yet).
            VIRTUAL_SERVICE_TYPE_URL | DESTINATION_RULE_TYPE_URL => self
                .routes
                .get(name)
                .is_none_or(|(ns, hosts)| hosts.iter().any(|h| needs.services.admits(ns, h))),
            _ => false,
        }
    }
}

/// Walks two sequences of `(key, value)` sorted by key in one pass, and calls `differ`
/// with each key that is on one side only or whose values are not `same`, and its old
/// value (`None`: the key is new).
pub fn sorted_diff<K: Ord, V>(
    old: impl Iterator<Item = (K, V)>,
    new: impl Iterator<Item = (K, V)>,
    same: impl Fn(&V, &V) -> bool,
    mut differ: impl FnMut(K, Option<V>),
) {
    use std::cmp::Ordering;
    let (mut a, mut b) = (old.peekable(), new.peekable());
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => return,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match order {
            Ordering::Less => {
                let (k, v) = a.next().expect("peeked");
                differ(k, Some(v));
            }
            Ordering::Greater => differ(b.next().expect("peeked").0, None),
            Ordering::Equal => {
                let ((k, v), (_, w)) = (a.next().expect("peeked"), b.next().expect("peeked"));
                if !same(&v, &w) {
                    differ(k, Some(v));
                }
            }
        }
    }
}

/// One type's resources as one agent receives them.
pub type Scoped<'a> = BTreeMap<&'a str, &'a Served>;

/// Resources of `type_url` in `snap` (`None`: a type we do not serve).
pub fn resources_of<'a>(snap: &'a Snapshot, type_url: &str) -> Option<&'a super::model::Resources> {
    match type_url {
        ADDRESS_TYPE_URL => Some(&snap.resources),
        AUTHORIZATION_TYPE_URL => Some(&snap.authorizations),
        REQUEST_AUTHENTICATION_TYPE_URL => Some(&snap.request_authentications),
        VIRTUAL_SERVICE_TYPE_URL => Some(&snap.virtual_services),
        DESTINATION_RULE_TYPE_URL => Some(&snap.destination_rules),
        _ => None,
    }
}

/// One type as the agent with `needs` receives it.
pub fn scope_type<'a>(snap: &'a Snapshot, index: &Index, needs: &NodeNeeds, type_url: &str) -> Scoped<'a> {
    resources_of(snap, type_url)
        .into_iter()
        .flatten()
        .filter(|(name, _)| index.admits(needs, type_url, name))
        .map(|(name, r)| (name.as_str(), &**r))
        .collect()
}

/// Every type as `node`'s agent receives it.
pub fn scope<'a>(snap: &'a Snapshot, node: &str) -> BTreeMap<&'static str, Scoped<'a>> {
    let index = Index::new(snap);
    let needs = index.needs(node);
    TYPES.iter().map(|t| (*t, scope_type(snap, &index, &needs, t))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::folder::Folder;
    use crate::controlplane::model;

    const YAML: &str = "
kind: Namespace
metadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}
---
kind: Namespace
metadata: {name: b, labels: {istio.io/dataplane-mode: ambient}}
---
kind: Namespace
metadata: {name: c, labels: {istio.io/dataplane-mode: ambient}}
---
kind: Pod
metadata: {name: a1, namespace: a, labels: {app: web}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.1}
---
kind: Pod
metadata: {name: b1, namespace: b, labels: {app: db}}
spec: {nodeName: n2}
status: {podIP: 10.0.0.2}
---
kind: Pod
metadata: {name: lonely, namespace: b, labels: {app: batch}}
spec: {nodeName: n2}
status: {podIP: 10.0.0.3}
---
kind: Pod
metadata: {name: starting, namespace: c}
spec: {nodeName: n3}
---
kind: Service
metadata: {name: db, namespace: b}
spec: {clusterIP: 10.96.0.2, selector: {app: db}, ports: [{port: 5432}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec: {action: DENY, rules: [{from: [{source: {namespaces: [evil]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-a, namespace: a}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-b, namespace: b}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-c, namespace: c}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-only, namespace: b}
spec: {selector: {matchLabels: {app: db}}, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-everywhere, namespace: istio-system}
spec: {selector: {matchLabels: {app: web}}, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt-a, namespace: a}
spec: {jwtRules: [{issuer: i, jwksUri: 'http://idp/keys'}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt-db, namespace: b}
spec: {selector: {matchLabels: {app: db}}, jwtRules: [{issuer: i, jwksUri: 'http://idp/keys'}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt-all, namespace: istio-system}
spec: {jwtRules: [{issuer: i, jwksUri: 'http://idp/keys'}]}
";

    fn snapshot(yaml: &str) -> Snapshot {
        let (o, errors) = Folder::default().apply(vec![("t.yaml".into(), Ok(yaml.to_string()))]);
        assert!(errors.is_empty(), "{errors:?}");
        model::build(&o, "cluster.local")
    }

    fn names(scoped: &BTreeMap<&'static str, Scoped<'_>>, type_url: &str) -> Vec<String> {
        scoped[type_url].keys().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_node_gets_what_its_pods_need() {
        let snap = snapshot(YAML);
        let all_addresses: Vec<String> = snap.resources.keys().cloned().collect();
        // (node, Authorization, RequestAuthentication)
        let table: &[(&str, &[&str], &[&str])] = &[
            ("n1", &["a/ns-a", "istio-system/mesh-wide", "istio-system/web-everywhere"], &["a/jwt-a", "istio-system/jwt-all"]),
            // `lonely` is in b too: ns-b; db-only and jwt-db because b1 (db) is here.
            ("n2", &["b/db-only", "b/ns-b", "istio-system/mesh-wide"], &["b/jwt-db", "istio-system/jwt-all"]),
            // A pod bound to n3 without an IP yet: its namespace's policies are there first.
            ("n3", &["c/ns-c", "istio-system/mesh-wide"], &["istio-system/jwt-all"]),
            // Nothing scheduled: only what applies mesh-wide.
            ("empty", &["istio-system/mesh-wide"], &["istio-system/jwt-all"]),
        ];
        for (node, authz, authn) in table {
            let s = scope(&snap, node);
            assert_eq!(names(&s, ADDRESS_TYPE_URL), all_addresses, "{node}: every workload and service");
            assert_eq!(names(&s, AUTHORIZATION_TYPE_URL), *authz, "{node}");
            assert_eq!(names(&s, REQUEST_AUTHENTICATION_TYPE_URL), *authn, "{node}");
        }
    }

    #[test]
    fn a_listed_policy_is_always_sent() {
        // Pod `lonely` on n2 is selected by a root-namespace selector policy: n2 gets it.
        let yaml = format!(
            "{YAML}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: batch, namespace: istio-system}}
spec: {{selector: {{matchLabels: {{app: batch}}}}, rules: [{{}}]}}
"
        );
        let snap = snapshot(&yaml);
        let ix = Index::new(&snap);
        for name in &ix.needs("n2").policies {
            assert!(scope(&snap, "n2")[AUTHORIZATION_TYPE_URL].contains_key(name.as_str()), "{name} listed on n2 but not sent");
        }
        assert!(ix.needs("n2").policies.contains("istio-system/batch"));
        assert!(!scope(&snap, "n1")[AUTHORIZATION_TYPE_URL].contains_key("istio-system/batch"));
    }

    /// A Sidecar's egress hosts narrow the services, VirtualServices and
    /// DestinationRules a node receives to those its pods may call; a node with a pod
    /// that no Sidecar narrows gets them all; workloads all stay.
    #[test]
    fn sidecars_narrow_services_and_routes() {
        let yaml = format!(
            "{YAML}---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: a}}
spec: {{egress: [{{hosts: ['./*']}}]}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: b}}
spec: {{hosts: [db], http: [{{route: [{{destination: {{host: db}}}}]}}]}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db, namespace: b}}
spec: {{host: db}}
"
        );
        let snap = snapshot(&yaml);
        let ix = Index::new(&snap);
        // n1 runs only pods of namespace a: they may call a's services only.
        let n1 = ix.needs("n1");
        assert!(matches!(&n1.services, Services::Only(h) if h.len() == 1), "{:?}", n1.services);
        let s = scope_type(&snap, &ix, &n1, ADDRESS_TYPE_URL);
        assert!(!s.contains_key("b/db.b.svc.cluster.local"), "b's service is not in a's Sidecar's hosts");
        let workloads = snap.resources.keys().filter(|n| n.starts_with("Kubernetes//Pod/")).count();
        assert_eq!(s.keys().filter(|n| n.starts_with("Kubernetes//Pod/")).count(), workloads, "workloads all stay");
        assert!(scope_type(&snap, &ix, &n1, VIRTUAL_SERVICE_TYPE_URL).is_empty());
        assert!(scope_type(&snap, &ix, &n1, DESTINATION_RULE_TYPE_URL).is_empty());
        // n2 runs pods of b, which no Sidecar narrows: everything.
        let n2 = ix.needs("n2");
        assert_eq!(n2.services, Services::All);
        assert!(scope_type(&snap, &ix, &n2, ADDRESS_TYPE_URL).contains_key("b/db.b.svc.cluster.local"));
        assert_eq!(scope_type(&snap, &ix, &n2, VIRTUAL_SERVICE_TYPE_URL).len(), 1);
        // The Sidecar goes: n1's needs widen without any workload changing.
        let v1 = Index::new(&snap);
        let snap2 = snapshot(&yaml.replace("kind: Sidecar", "kind: ConfigMap"));
        let changed = TYPES.iter().map(|t| (*t, BTreeMap::new())).collect();
        let v2 = v1.next(&snap, &snap2, &changed);
        assert_eq!(v2.needs("n1").services, Services::All);
    }

    #[test]
    fn sorted_diff_names_added_removed_and_changed_keys() {
        let old = [("a", 1), ("b", 2), ("d", 4), ("e", 5)];
        let new = [("b", 2), ("c", 3), ("d", 9), ("f", 6)];
        let mut got = Vec::new();
        sorted_diff(old.into_iter(), new.into_iter(), |x, y| x == y, |k, v| got.push((k, v)));
        assert_eq!(got, vec![("a", Some(1)), ("c", None), ("d", Some(4)), ("e", Some(5)), ("f", None)]);
    }

    #[test]
    fn unknown_types_are_empty() {
        let snap = snapshot(YAML);
        let ix = Index::new(&snap);
        assert!(scope_type(&snap, &ix, &ix.needs("n1"), "type.googleapis.com/x.Y").is_empty());
        assert_eq!(short_type(AUTHORIZATION_TYPE_URL), "Authorization");
    }
}
