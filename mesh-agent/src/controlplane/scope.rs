//! What each node's agent receives: a pure function of the snapshot and the node.
//!
//! - `istio.workload.Address`, services: those whose hostnames the node's pods may
//!   call ([`Services`]): all of them unless a Sidecar's egress hosts narrow every
//!   pod of the node.
//! - `istio.workload.Address`, workloads: all of them when the node's pods may call
//!   anything (a direct pod-IP call may go to any of them; Istio's default). Otherwise:
//!   the node's own; the endpoints of the services its pods may call; the workloads
//!   whose identity matches a principal or namespace named by a policy that applies to
//!   one of its pods ([`super::peers`]: the kernel's HBONE table turns those into
//!   addresses, which is only safe when every holder is known); and the addresses the
//!   agent looked up (on-demand, [`NodeNeeds::demanded`]). A caller outside all of
//!   these is looked up when it first calls (`crate::ondemand`).
//! - `istio.security.Authorization`: GLOBAL ones, NAMESPACE ones of a namespace with a
//!   pod scheduled on the node, and every policy a workload of the node lists (the
//!   agent denies a workload whose listed policy it has not received).
//! - `mesh.security.RequestAuthentication`: those that apply to a pod of the node
//!   (mesh-wide or in its namespace, and, when it lists workloads, listing one of the
//!   node's).
//! - `mesh.networking.VirtualService` and `DestinationRule`: those exported
//!   (`exportTo`) to a namespace with a pod of the node, for hosts its pods may call.
//!
//! A node's pods are the snapshot's workloads whose `node` is the node, plus the
//! identities scheduled there (pods bound to the node that have no IP yet), so that a
//! starting pod's namespace policies arrive before it can take traffic.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use prost::Message as _;

use super::egress::EgressHost;
use super::peers::{PeerIdentity, PeerPattern, Peers};
use crate::authz::StrMatch;
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
    /// The callers the policies that apply to the node's pods name by identity.
    pub peers: Peers,
    /// Addresses the agent asked for by name (on-demand lookups of callers): set per
    /// stream by the server, never by the index.
    pub demanded: BTreeSet<IpAddr>,
}

impl NodeNeeds {
    /// Whether agents with these needs and with `other` receive the same resources of
    /// `type_url` from any one view: the fields [`Index::admits`] reads for that type
    /// are equal. A push may then look only at the names that changed, even for an
    /// agent whose needs changed in other fields (a new pod on its node changes its
    /// workloads, and a policy naming a namespace its peers, which the Address type
    /// does not read while its pods may call anything).
    pub fn same_for(&self, other: &NodeNeeds, type_url: &str) -> bool {
        match type_url {
            // Every workload while the node's pods may call anything: then only the
            // services matter.
            ADDRESS_TYPE_URL => {
                self.services == other.services
                    && (self.services == Services::All
                        || (self.peers == other.peers && self.demanded == other.demanded && self.workloads == other.workloads))
            }
            AUTHORIZATION_TYPE_URL => self.policies == other.policies && self.namespaces == other.namespaces,
            REQUEST_AUTHENTICATION_TYPE_URL => self.namespaces == other.namespaces && self.workloads == other.workloads,
            VIRTUAL_SERVICE_TYPE_URL | DESTINATION_RULE_TYPE_URL => {
                self.services == other.services && self.namespaces == other.namespaces
            }
            _ => self == other,
        }
    }
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
    /// Empty for workloads on no node (ServiceEntry and EndpointSlice endpoints).
    node: String,
    namespace: String,
    policies: Vec<String>,
    /// The hosts it may call (`None`: every host).
    egress: Option<Arc<Vec<EgressHost>>>,
    addresses: Vec<IpAddr>,
    /// The services it backs: `(namespace, hostname)`.
    backs: Vec<(String, String)>,
    identity: PeerIdentity,
}

/// What scoping reads of one VirtualService or DestinationRule.
#[derive(Clone, Debug)]
struct RouteMeta {
    namespace: String,
    hosts: Vec<String>,
    /// `exportTo` as written (empty: everyone, the mesh default).
    export_to: Vec<String>,
}

impl RouteMeta {
    /// Whether a pod of one of `namespaces` sees it (Istio's `exportTo`: `*` everyone,
    /// `.` its own namespace, `~` no one, else the namespaces named).
    fn exported_to(&self, namespaces: &BTreeSet<String>) -> bool {
        self.export_to.is_empty()
            || self.export_to.iter().any(|e| match e.as_str() {
                "*" => true,
                "~" => false,
                "." => namespaces.contains(&self.namespace),
                ns => namespaces.contains(ns),
            })
    }
}

/// What scoping reads of one AuthorizationPolicy.
#[derive(Clone, Debug)]
struct AuthzMeta {
    scope: Scope,
    namespace: String,
    /// The identity patterns it names (see [`super::peers`]).
    peers: Arc<Vec<PeerPattern>>,
}

impl AuthzMeta {
    /// Whether it applies to a pod of a node with `needs` (and so is sent there).
    fn applies(&self, name: &str, needs: &NodeNeeds) -> bool {
        needs.policies.contains(name)
            || match self.scope {
                Scope::Global => true,
                Scope::Namespace => needs.namespaces.contains(&self.namespace),
                Scope::WorkloadSelector => false,
            }
    }
}

/// What scoping needs to know of a snapshot. Kept from one snapshot to the next in
/// persistent maps: only the resources that changed are decoded again, and only the
/// nodes they (or the identities that changed) concern get their needs again.
#[derive(Clone, Debug, Default)]
pub struct Index {
    /// Address resources that are services: name -> hostname.
    services: imbl::HashMap<String, String>,
    /// Address resources that are workloads.
    workloads: imbl::HashMap<String, WorkloadMeta>,
    /// Node -> uids of its workloads.
    by_node: imbl::HashMap<String, imbl::OrdSet<String>>,
    /// Address -> uids of the workloads that have it (on-demand lookups).
    by_ip: imbl::HashMap<IpAddr, imbl::OrdSet<String>>,
    /// VirtualService and DestinationRule name -> what scoping reads of it.
    routes: imbl::HashMap<String, RouteMeta>,
    authz: imbl::HashMap<String, AuthzMeta>,
    /// Authorizations that name callers by identity.
    authz_with_peers: imbl::OrdSet<String>,
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
                for ip in &old.addresses {
                    if let Some(set) = ix.by_ip.get_mut(ip) {
                        set.remove(name);
                        if set.is_empty() {
                            ix.by_ip.remove(ip);
                        }
                    }
                }
                if !old.node.is_empty() {
                    dirty.insert(old.node);
                }
            }
            let Some(r) = snap.resources.get(name) else { continue };
            match wl::Address::decode(r.any.value.as_slice()).ok().and_then(|a| a.r#type) {
                Some(wl::address::Type::Service(s)) => {
                    ix.services.insert(name.clone(), s.hostname);
                }
                Some(wl::address::Type::Workload(w)) => {
                    if !w.node.is_empty() {
                        ix.by_node.entry(w.node.clone()).or_default().insert(name.clone());
                        dirty.insert(w.node.clone());
                    }
                    let addresses: Vec<IpAddr> = w.addresses.iter().filter_map(|b| crate::xds::ip(name, b).ok()).collect();
                    for ip in &addresses {
                        ix.by_ip.entry(*ip).or_default().insert(name.clone());
                    }
                    let backs = w
                        .services
                        .keys()
                        .filter_map(|k| k.split_once('/'))
                        .map(|(ns, host)| (ns.to_string(), host.to_string()))
                        .collect();
                    let meta = WorkloadMeta {
                        identity: PeerIdentity::new(&w.trust_domain, &w.namespace, &w.service_account),
                        node: w.node,
                        namespace: w.namespace,
                        policies: w.authorization_policies,
                        egress: snap.egress.get(name).cloned(),
                        addresses,
                        backs,
                    };
                    ix.workloads.insert(name.clone(), meta);
                }
                None => {}
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
                    crate::proto::mesh_networking::VirtualService::decode(bytes)
                        .map(|v| RouteMeta { namespace: v.namespace, hosts: v.hosts, export_to: v.export_to })
                } else {
                    crate::proto::mesh_networking::DestinationRule::decode(bytes)
                        .map(|d| RouteMeta { namespace: d.namespace, hosts: vec![d.host], export_to: d.export_to })
                };
                // Undecodable: admitted everywhere rather than silently dropped.
                if let Ok(meta) = meta {
                    ix.routes.insert(name.clone(), meta);
                }
            }
        }
        // Policies that name callers by identity widen the needs of the nodes they
        // apply to (before and after the change).
        let mut peers_changed: Vec<(String, AuthzMeta)> = Vec::new();
        for name in names(AUTHORIZATION_TYPE_URL) {
            if let Some(old) = ix.authz.remove(name) {
                if !old.peers.is_empty() {
                    ix.authz_with_peers.remove(name);
                    peers_changed.push((name.clone(), old));
                }
            }
            let Some(r) = snap.authorizations.get(name) else { continue };
            // Undecodable: treat as global and naming everyone, so that it is sent
            // (and the callers it could mean with it) rather than silently dropped.
            let meta = match crate::proto::security::Authorization::decode(r.any.value.as_slice()) {
                Ok(a) => AuthzMeta {
                    scope: Scope::try_from(a.scope).unwrap_or(Scope::Global),
                    peers: Arc::new(super::peers::named_by(&a)),
                    namespace: a.namespace,
                },
                Err(_) => AuthzMeta {
                    scope: Scope::Global,
                    namespace: String::new(),
                    peers: Arc::new(vec![PeerPattern::Principal(StrMatch::Presence)]),
                },
            };
            if !meta.peers.is_empty() {
                ix.authz_with_peers.insert(name.clone());
                peers_changed.push((name.clone(), meta.clone()));
            }
            ix.authz.insert(name.clone(), meta);
        }
        if !peers_changed.is_empty() {
            for (node, needs) in ix.nodes.iter() {
                if peers_changed.iter().any(|(n, m)| m.applies(n, needs)) {
                    dirty.insert(node.clone());
                }
            }
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
            for name in ix.authz_with_peers.iter() {
                if let Some(m) = ix.authz.get(name).filter(|m| m.applies(name, &needs)) {
                    needs.peers.extend(&m.peers);
                }
            }
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

    /// The names of `type_url` whose admission may differ between an agent with `old`
    /// needs and one with `new` (both in this index): none when [`NodeNeeds::same_for`];
    /// `None` when finding them means looking at every resource (services or anything
    /// but the Address type's workloads differ). A policy that names a namespace, a pod
    /// landing on the node, a lookup: only the workloads they concern.
    pub fn affected(&self, old: &NodeNeeds, new: &NodeNeeds, type_url: &str) -> Option<Vec<String>> {
        if old.same_for(new, type_url) {
            return Some(Vec::new());
        }
        if type_url != ADDRESS_TYPE_URL || old.services != new.services {
            return None;
        }
        // The same narrowed services: only workloads come or go.
        let mut out: BTreeSet<String> = old.workloads.symmetric_difference(&new.workloads).cloned().collect();
        for ip in old.demanded.symmetric_difference(&new.demanded) {
            out.extend(self.workloads_at(*ip));
        }
        if old.peers != new.peers {
            let differs = |w: &WorkloadMeta| old.peers.matches(&w.identity) != new.peers.matches(&w.identity);
            out.extend(self.workloads.iter().filter(|(_, w)| differs(w)).map(|(uid, _)| uid.clone()));
        }
        Some(out.into_iter().collect())
    }

    /// The uids of the workloads that have address `ip`.
    pub fn workloads_at(&self, ip: IpAddr) -> Vec<String> {
        self.by_ip.get(&ip).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// Whether an agent whose node needs `needs` receives resource `name` of `type_url`.
    pub fn admits(&self, needs: &NodeNeeds, type_url: &str, name: &str) -> bool {
        match type_url {
            ADDRESS_TYPE_URL => {
                if let Some(h) = self.services.get(name) {
                    return needs.services.admits(name.split_once('/').map_or("", |(ns, _)| ns), h);
                }
                let Some(w) = self.workloads.get(name) else { return true };
                // Every workload when the node's pods may call anything (Istio's
                // default); otherwise its own, the endpoints of what its pods may
                // call, the callers its policies name, and what it asked for.
                matches!(needs.services, Services::All)
                    || needs.workloads.contains(name)
                    || w.backs.iter().any(|(ns, host)| needs.services.admits(ns, host))
                    || needs.peers.matches(&w.identity)
                    || w.addresses.iter().any(|a| needs.demanded.contains(a))
            }
            AUTHORIZATION_TYPE_URL => self.authz.get(name).is_none_or(|m| m.applies(name, needs)),
            REQUEST_AUTHENTICATION_TYPE_URL => self.authn.get(name).is_none_or(|m| {
                let in_ns = m.mesh_wide || needs.namespaces.contains(&m.namespace);
                in_ns && m.workloads.as_ref().is_none_or(|w| w.iter().any(|u| needs.workloads.contains(u)))
            }),
            // Routes exported to a namespace of the node's pods, for hosts they may call.
            VIRTUAL_SERVICE_TYPE_URL | DESTINATION_RULE_TYPE_URL => self.routes.get(name).is_none_or(|r| {
                r.exported_to(&needs.namespaces) && r.hosts.iter().any(|h| needs.services.admits(&r.namespace, h))
            }),
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
    /// that no Sidecar narrows gets them all.
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
        let pods: Vec<&str> = s.keys().copied().filter(|n| n.starts_with("Kubernetes//Pod/")).collect();
        assert_eq!(pods, ["Kubernetes//Pod/a/a1"], "its own pod; b's pods back nothing a may call");
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

    /// Where every pod's egress is narrowed, a node receives the workloads it needs:
    /// its own, the endpoints of services its pods may call, the callers its policies
    /// name by identity, and the addresses its agent asked for.
    #[test]
    fn a_narrowed_node_receives_only_the_workloads_it_needs() {
        let yaml = "
kind: Namespace
metadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}
---
kind: Namespace
metadata: {name: b, labels: {istio.io/dataplane-mode: ambient}}
---
kind: Namespace
metadata: {name: c, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec: {egress: [{hosts: ['./*', 'b/db.b.svc.cluster.local']}]}
---
kind: Pod
metadata: {name: web, namespace: a, labels: {app: web}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.1}
---
kind: Pod
metadata: {name: db1, namespace: b, labels: {app: db}}
spec: {nodeName: n2}
status: {podIP: 10.0.0.2}
---
kind: Pod
metadata: {name: cache1, namespace: b, labels: {app: cache}}
spec: {nodeName: n2}
status: {podIP: 10.0.0.3}
---
kind: Pod
metadata: {name: client, namespace: c, labels: {app: client}}
spec: {nodeName: n3, serviceAccountName: robot}
status: {podIP: 10.0.0.4}
---
kind: Pod
metadata: {name: stranger, namespace: c, labels: {app: other}}
spec: {nodeName: n3}
status: {podIP: 10.0.0.5}
---
kind: Service
metadata: {name: db, namespace: b}
spec: {clusterIP: 10.96.0.2, selector: {app: db}, ports: [{port: 5432}]}
---
kind: Service
metadata: {name: cache, namespace: b}
spec: {clusterIP: 10.96.0.3, selector: {app: cache}, ports: [{port: 6379}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-robot, namespace: a}
spec: {rules: [{from: [{source: {principals: [cluster.local/ns/c/sa/robot]}}]}]}
";
        let snap = snapshot(yaml);
        let ix = Index::new(&snap);
        let pods = |needs: &NodeNeeds| -> Vec<String> {
            scope_type(&snap, &ix, needs, ADDRESS_TYPE_URL)
                .into_keys()
                .filter_map(|n| n.strip_prefix("Kubernetes//Pod/").map(str::to_string))
                .collect()
        };
        // n1: its own pod, db's endpoint (its hosts name b/db), and the caller its
        // namespace's policy names (c/client runs as robot); not cache, not stranger.
        assert_eq!(pods(&ix.needs("n1")), ["a/web", "b/db1", "c/client"]);
        // n2: its own two pods and db (./* is b for b's pods).
        assert_eq!(pods(&ix.needs("n2")), ["b/cache1", "b/db1"]);
        // n3: its own two and db; asking for web's address adds web.
        assert_eq!(pods(&ix.needs("n3")), ["b/db1", "c/client", "c/stranger"]);
        let mut asked = (*ix.needs("n3")).clone();
        asked.demanded.insert("10.0.0.1".parse().unwrap());
        assert_eq!(pods(&asked), ["a/web", "b/db1", "c/client", "c/stranger"]);
        assert_eq!(ix.workloads_at("10.0.0.1".parse().unwrap()), ["Kubernetes//Pod/a/web"]);
        assert!(ix.workloads_at("10.9.9.9".parse().unwrap()).is_empty());
    }

    /// `exportTo` keeps a VirtualService or DestinationRule from nodes with no pod in a
    /// namespace it is exported to.
    #[test]
    fn routes_go_only_where_they_are_exported() {
        // (exportTo, nodes that receive it): n1 runs a's pods, n2 b's, n3 c's.
        let table: &[(&str, &[&str])] = &[
            ("", &["n1", "n2", "n3"]),
            ("exportTo: ['*']", &["n1", "n2", "n3"]),
            ("exportTo: ['.']", &["n2"]),
            ("exportTo: [a]", &["n1"]),
            ("exportTo: [a, c]", &["n1", "n3"]),
            ("exportTo: [nowhere]", &[]),
        ];
        for (export, want) in table {
            let yaml = format!(
                "{YAML}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: b}}
spec: {{hosts: [db], {export}, http: [{{route: [{{destination: {{host: db}}}}]}}]}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db, namespace: b}}
spec: {{host: db, {export}}}
"
            )
            .replace(", ,", ",")
            .replace(", }", "}");
            let snap = snapshot(&yaml);
            let ix = Index::new(&snap);
            for t in [VIRTUAL_SERVICE_TYPE_URL, DESTINATION_RULE_TYPE_URL] {
                let got: Vec<&str> =
                    ["n1", "n2", "n3"].into_iter().filter(|n| !scope_type(&snap, &ix, &ix.needs(n), t).is_empty()).collect();
                assert_eq!(got, *want, "{export:?} {}", short_type(t));
            }
        }
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
