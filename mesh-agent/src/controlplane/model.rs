//! From folder objects to xDS resources, as istiod's ambient index computes them: one
//! `istio.workload.Address` per pod (Workload) and per Kubernetes Service, one
//! `istio.security.Authorization` per ALLOW or DENY AuthorizationPolicy, and the DENY
//! policies PeerAuthentication STRICT becomes (`peerauth::convert`).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

mod changes;
mod endpoints;

use super::authorization::{self, ROOT_NAMESPACE};
use super::peerauth;
use super::folder::{in_namespace, Objects, Pod};
use crate::proto::workload as wl;
use crate::state::Identity;

/// Namespace/pod label that puts pods in (or keeps them out of) the mesh.
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// DNS suffix of Kubernetes service hostnames.
pub const DOMAIN_SUFFIX: &str = "cluster.local";

/// One resource as served: its encoded form and its version (a hash of the encoding).
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub version: String,
    pub any: prost_types::Any,
}

/// One type's resources by name: a persistent map, so that a snapshot is a cheap copy
/// of the previous one with what changed replaced, and an unchanged resource is the
/// same `Arc` in both (the push tells changes by pointer first).
pub type Resources = imbl::OrdMap<String, Arc<Resource>>;

/// Everything the control plane serves at one point in time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// By xDS resource name: workload uid or `<namespace>/<hostname>`.
    pub resources: Resources,
    /// `istio.security.Authorization` by resource name `<namespace>/<name>`, both
    /// AuthorizationPolicies and converted PeerAuthentications.
    pub authorizations: Resources,
    /// `mesh.security.RequestAuthentication` by resource name `<namespace>/<name>`.
    pub request_authentications: Resources,
    /// `mesh.networking.VirtualService` by `<namespace>/<name>`.
    pub virtual_services: Resources,
    /// `mesh.networking.DestinationRule` by `<namespace>/<name>`.
    pub destination_rules: Resources,
    /// Which identities run on which node: the CA issues only these.
    pub identities: imbl::OrdSet<(String, Identity)>,
    /// Not served: the hosts each workload may call, by uid, when a Sidecar's egress
    /// narrows them (absent: every host); scoping sends a node only those.
    pub egress: imbl::OrdMap<String, Arc<Vec<super::egress::EgressHost>>>,
}

impl Snapshot {
    /// Whether `other` is this snapshot, unchanged: what a build that changed nothing
    /// returns (its maps are the previous ones).
    pub fn same_as(&self, other: &Snapshot) -> bool {
        self.resources.ptr_eq(&other.resources)
            && self.authorizations.ptr_eq(&other.authorizations)
            && self.request_authentications.ptr_eq(&other.request_authentications)
            && self.virtual_services.ptr_eq(&other.virtual_services)
            && self.destination_rules.ptr_eq(&other.destination_rules)
            && self.identities.ptr_eq(&other.identities)
            && self.egress.ptr_eq(&other.egress)
    }

    pub fn node_runs(&self, node: &str, id: &Identity) -> bool {
        self.identities.contains(&(node.to_string(), id.clone()))
    }
}

/// `Kubernetes//Pod/<ns>/<name>`.
pub fn workload_uid(namespace: &str, name: &str) -> String {
    format!("Kubernetes//Pod/{namespace}/{name}")
}

pub fn service_hostname(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.svc.{DOMAIN_SUFFIX}")
}

/// A pod is in the mesh when its namespace says ambient and the pod does not opt out.
pub fn in_mesh(objects: &Objects, pod: &Pod) -> bool {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let ns_ambient = objects
        .namespaces
        .get(ns)
        .and_then(|n| n.metadata.labels.get(DATAPLANE_MODE))
        .is_some_and(|v| v == "ambient");
    let pod_opts_out = pod.metadata.labels.get(DATAPLANE_MODE).is_some_and(|v| v == "none");
    ns_ambient && !pod_opts_out
}

/// The `cluster_id` of every Workload we serve.
pub const CLUSTER_ID: &str = "Kubernetes";

/// A workload's canonical name and revision from its labels, as istiod reads them:
/// the first of the service.istio.io, app.kubernetes.io and plain labels, else the
/// workload's name and `latest`.
pub fn canonical(labels: &BTreeMap<String, String>, name: &str) -> (String, String) {
    let first = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k).cloned());
    let canonical_name = first(&["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"]);
    let revision = first(&["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"]);
    (canonical_name.unwrap_or_else(|| name.to_string()), revision.unwrap_or_else(|| "latest".into()))
}

pub fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// FNV-1a 64: stable across processes and Rust versions, enough to tell versions apart.
pub fn version_of(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn resource(type_url: &str, msg: &impl prost::Message) -> Resource {
    let value = msg.encode_to_vec();
    Resource { version: version_of(&value), any: prost_types::Any { type_url: type_url.to_string(), value } }
}

fn address_resource(addr: wl::Address) -> Resource {
    resource(crate::proto::ADDRESS_TYPE_URL, &addr)
}

/// A Service with a selector, as pods are matched against it: resource name, selector,
/// ports (named targets resolved per pod, see [`endpoints`]).
type SelectingService<'a> = (String, &'a BTreeMap<String, String>, Vec<endpoints::ServicePort<'a>>);

/// The mesh's trust domain and its aliases (Istio's meshConfig.trustDomainAliases).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrustDomains {
    pub own: String,
    pub aliases: Vec<String>,
}

impl TrustDomains {
    pub fn new(own: &str, aliases: &[String]) -> Self {
        TrustDomains { own: own.to_string(), aliases: aliases.iter().filter(|a| *a != own).cloned().collect() }
    }

    /// A policy principal as the workloads it means may present it: one naming this
    /// trust domain, an alias, or `cluster.local` (which Istio reads as "this mesh")
    /// stands for the same account in every one of them. Others are kept as written.
    pub fn expand(&self, principal: &str) -> Vec<String> {
        let Some((td, rest)) = principal.split_once("/ns/") else { return vec![principal.to_string()] };
        let ours = td == self.own || td == "cluster.local" || self.aliases.iter().any(|a| a == td);
        if !ours || td.contains('*') {
            return vec![principal.to_string()];
        }
        let mut v: Vec<String> =
            std::iter::once(&self.own).chain(&self.aliases).map(|t| format!("{t}/ns/{rest}")).collect();
        if !v.iter().any(|p| p == principal) {
            v.push(principal.to_string());
        }
        v
    }
}

/// Builds the Address resources and the node/identity index, with no JWKS fetched.
pub fn build(objects: &Objects, trust_domain: &str) -> Snapshot {
    build_with(objects, &TrustDomains::new(trust_domain, &[]), &|_| None)
}

/// Builds every resource; `jwks` gives the keys fetched for a RequestAuthentication's
/// `jwksUri`, or `None` while they are unknown.
pub fn build_with(objects: &Objects, tds: &TrustDomains, jwks: &dyn Fn(&str) -> Option<String>) -> Snapshot {
    Builder::default().build(objects, tds, jwks)
}

/// Builds snapshots one after another, reusing what did not change. The objects of
/// the previous build are kept (persistent maps: a cheap copy), and comparing them with
/// the new ones ([`changes::Changes`]) says which pods to look at: those added or
/// changed, those of a namespace whose Namespace, Services, AuthorizationPolicies or
/// Sidecars changed (every pod for the root namespace's policies and Sidecars), and
/// those whose converted PeerAuthentications or EndpointSlice entries changed. Each
/// of these is encoded again only when the pod, or anything of its namespace that goes
/// into it, is a different object than at its last build (objects are shared, `Arc`,
/// so "different" is a pointer comparison), or when what is computed for the pod alone
/// changed. EndpointSlices are compared by their result for the pod rather than by
/// pointer: in Kubernetes a slice changes at every readiness flip of any of its pods,
/// and only the pods whose entry changed need encoding again. Services, policies and
/// the networking kinds are converted again only when objects of their inputs changed.
///
/// Each build starts from a copy of the previous snapshot (persistent maps: the copy
/// is cheap) and replaces only what changed, so an unchanged resource stays the same
/// `Arc` and a build costs what changed, not the size of the cluster.
#[derive(Default)]
pub struct Builder {
    last: Snapshot,
    /// The objects and trust domains of the last build.
    inputs: Option<(Objects, TrustDomains)>,
    /// Builds so far: after a build that walks every pod, a memo not seen in it is a
    /// pod that is gone.
    builds: u64,
    pods: HashMap<(String, String), Memo>,
    /// Identities by (node, identity): how many pods run them.
    identities: HashMap<(String, Identity), usize>,
    /// Address names that are not pods (Services, ServiceEntry hosts and endpoints,
    /// WorkloadEntries), as last built.
    others: BTreeSet<String>,
    /// The converted PeerAuthentications, as last built.
    converted: peerauth::convert::Converted,
    /// The Services EndpointSlices put each pod in, as last built.
    sliced: BTreeMap<(String, String), BTreeMap<String, Vec<wl::Port>>>,
}

/// A pod's Workload as last built, and what it was built from.
struct Memo {
    pod: Arc<Pod>,
    context: u64,
    selected: Vec<String>,
    /// The Services EndpointSlices put it in, with ports.
    sliced: BTreeMap<String, Vec<wl::Port>>,
    /// Its uid, when it has a Workload (it has addresses).
    uid: Option<String>,
    identity: Option<(String, Identity)>,
    seen: u64,
}

/// Brings `map` to `fresh`: removes names in `known` that `fresh` lacks, replaces
/// those whose version changed, and leaves the others (the same `Arc`) alone. `known`
/// becomes `fresh`'s names.
fn sync(map: &mut Resources, known: &mut BTreeSet<String>, fresh: BTreeMap<String, Resource>) {
    for gone in known.iter().filter(|n| !fresh.contains_key(*n)) {
        map.remove(gone);
    }
    *known = fresh.keys().cloned().collect();
    for (name, r) in fresh {
        if map.get(&name).is_none_or(|old| old.version != r.version) {
            map.insert(name, Arc::new(r));
        }
    }
}

/// [`sync`] for a map that holds nothing else.
fn replace(map: &mut Resources, fresh: BTreeMap<String, Resource>) {
    let mut known: BTreeSet<String> = map.keys().cloned().collect();
    sync(map, &mut known, fresh);
}

/// The objects of namespace `ns` and, for another namespace, of the root namespace
/// (whose policies and Sidecars apply in every namespace).
fn own_and_root<'a, T>(
    map: &'a super::folder::Map<(String, String), T>,
    ns: &'a str,
) -> impl Iterator<Item = (&'a (String, String), &'a T)> + 'a {
    in_namespace(map, ns).chain(in_namespace(map, ROOT_NAMESPACE).filter(move |_| ns != ROOT_NAMESPACE))
}

/// What of namespace `ns` goes into its pods' Workloads, as object identities.
fn namespace_context(objects: &Objects, ns: &str, trust_domain: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    trust_domain.hash(&mut h);
    objects.namespaces.get(ns).map(Arc::as_ptr).hash(&mut h);
    for (k, svc) in in_namespace(&objects.services, ns) {
        (k, Arc::as_ptr(svc)).hash(&mut h);
    }
    for (k, p) in own_and_root(&objects.authorization_policies, ns) {
        (k, Arc::as_ptr(p)).hash(&mut h);
    }
    for (k, p) in own_and_root(&objects.sidecars, ns) {
        (k, Arc::as_ptr(p)).hash(&mut h);
    }
    h.finish()
}

/// What a build computes once per namespace, for the pods it looks at.
#[derive(Default)]
struct PerNamespace<'a> {
    contexts: HashMap<&'a str, u64>,
    services: HashMap<&'a str, Vec<SelectingService<'a>>>,
}

/// The keys whose entries differ between two sorted maps (on one side only, or unequal).
fn differing<K: Ord + Clone, V: PartialEq>(old: &BTreeMap<K, V>, new: &BTreeMap<K, V>, out: &mut BTreeSet<K>) {
    super::scope::sorted_diff(old.iter(), new.iter(), |a, b| a == b, |k, _| {
        out.insert(k.clone());
    });
}

impl Builder {
    pub fn build(&mut self, objects: &Objects, tds: &TrustDomains, jwks: &dyn Fn(&str) -> Option<String>) -> Snapshot {
        let trust_domain = tds.own.as_str();
        let mut snap = self.last.clone();
        self.builds += 1;
        let changes = match &self.inputs {
            Some((old, old_tds)) if old_tds == tds => changes::Changes::between(old, objects),
            _ => changes::Changes::everything(),
        };
        self.inputs = Some((objects.clone(), tds.clone()));
        // Pods whose converted PeerAuthentications or EndpointSlice entries changed.
        let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
        let mut converted_changed = false;
        if changes.peer_authentications || (changes.any_pod() && !objects.peer_authentications.is_empty()) {
            let converted = peer_authentications(objects);
            differing(&self.converted.selected, &converted.selected, &mut touched);
            converted_changed = converted.policies != self.converted.policies;
            self.converted = converted;
        }
        // Before the pods: a pod lists the policies that are served.
        if changes.authorization_policies || converted_changed {
            let fresh = self.authorizations(objects, tds);
            replace(&mut snap.authorizations, fresh);
        }
        let mut slice_others = None;
        if changes.services || changes.endpoint_slices {
            let sliced = endpoints::from_slices(objects);
            differing(&self.sliced, &sliced.pods, &mut touched);
            self.sliced = sliced.pods;
            slice_others = Some(sliced.others);
        }
        let mut per_ns = PerNamespace::default();
        if changes.every_pod {
            for (key, pod) in &objects.pods {
                self.pod(&mut snap, objects, &mut per_ns, trust_domain, key, pod);
            }
            // Pods that are gone.
            let gone: Vec<(String, String)> =
                self.pods.iter().filter(|(_, m)| m.seen != self.builds).map(|(k, _)| k.clone()).collect();
            for key in &gone {
                self.forget_pod(&mut snap, key);
            }
        } else {
            touched.extend(changes.pods.iter().cloned());
            for ns in &changes.namespaces {
                touched.extend(in_namespace(&objects.pods, ns).map(|(k, _)| k.clone()));
            }
            for key in &touched {
                if let Some((key, pod)) = objects.pods.get_key_value(key) {
                    self.pod(&mut snap, objects, &mut per_ns, trust_domain, key, pod);
                }
            }
            for key in &changes.gone {
                self.forget_pod(&mut snap, key);
            }
        }
        let mut request_authentications = BTreeMap::new();
        for ((ns, name), r) in &objects.request_authentications {
            let mut served = super::requestauth::convert(ns, name, &r.spec, jwks);
            if !served.selector.is_empty() || r.spec.targets().next().is_some() {
                served.by_workload = true;
                let picked = |pns: &str, labels: &BTreeMap<String, String>| {
                    authorization::picks(ns, r.spec.selector.as_ref(), r.spec.targets(), pns, labels, &objects.services)
                };
                // Outside the root namespace it picks pods of its own namespace only.
                let pods: Vec<_> =
                    if ns == ROOT_NAMESPACE { objects.pods.iter().collect() } else { in_namespace(&objects.pods, ns).collect() };
                served.workloads = pods
                    .into_iter()
                    .filter(|((pns, _), pod)| in_mesh(objects, pod) && picked(pns, &pod.metadata.labels))
                    .map(|((pns, pname), _)| workload_uid(pns, pname))
                    .filter(|uid| snap.resources.contains_key(uid))
                    .collect();
            }
            request_authentications
                .insert(format!("{ns}/{name}"), resource(crate::proto::REQUEST_AUTHENTICATION_TYPE_URL, &served));
        }
        replace(&mut snap.request_authentications, request_authentications);
        if changes.services || changes.endpoint_slices || changes.networking {
            let mut others = services(objects);
            let slice_others = slice_others.unwrap_or_else(|| endpoints::from_slices(objects).others);
            for (uid, w) in slice_others {
                others.insert(uid, address_resource(wl::Address { r#type: Some(wl::address::Type::Workload(w)) }));
            }
            let (mut virtual_services, mut destination_rules) = (BTreeMap::new(), BTreeMap::new());
            networking_resources(objects, trust_domain, &mut others, &mut virtual_services, &mut destination_rules);
            sync(&mut snap.resources, &mut self.others, others);
            replace(&mut snap.virtual_services, virtual_services);
            replace(&mut snap.destination_rules, destination_rules);
        }
        self.last = snap.clone();
        snap
    }

    /// Every ALLOW and DENY AuthorizationPolicy and converted PeerAuthentication, served.
    fn authorizations(&self, objects: &Objects, tds: &TrustDomains) -> BTreeMap<String, Resource> {
        let mut authorizations: BTreeMap<String, Resource> = BTreeMap::new();
        for ((ns, name), p) in &objects.authorization_policies {
            if let Some(authz) = authorization::convert(ns, name, &authorization::aliased(&p.spec, tds)) {
                let mut r = resource(crate::proto::AUTHORIZATION_TYPE_URL, &authz);
                if let Err(e) = super::limits::check_resource(&format!("{ns}/{name}"), &r.any) {
                    // Too large to serve. Leaving it out would fail open (a DENY lost,
                    // or an ALLOW's narrowing); instead it denies everything it selects
                    // until it is made smaller, as the agent's unusable stand-in does.
                    tracing::error!(policy = %format!("{ns}/{name}"), "config: {e}; it denies every request it selects until it is made smaller");
                    let standin = authorization::PolicySpec {
                        action: authorization::Action::Deny,
                        rules: vec![Default::default()],
                        ..p.spec.clone()
                    };
                    if let Some(deny) = authorization::convert(ns, name, &standin) {
                        r = resource(crate::proto::AUTHORIZATION_TYPE_URL, &deny);
                    }
                }
                authorizations.insert(format!("{ns}/{name}"), r);
            }
        }
        for (key, authz) in &self.converted.policies {
            if authorizations.contains_key(key) {
                tracing::warn!(policy = %key, "an AuthorizationPolicy uses the name of a converted PeerAuthentication \
                    (names starting with istio_converted_ or converted_peer_authentication_ are reserved); \
                    the PeerAuthentication's is served");
            }
            authorizations.insert(key.clone(), resource(crate::proto::AUTHORIZATION_TYPE_URL, authz));
        }
        authorizations
    }

    /// Brings pod `key`'s identity and Workload up to date, unless nothing that goes
    /// into them changed since its last build.
    fn pod<'a>(
        &mut self,
        snap: &mut Snapshot,
        objects: &'a Objects,
        per_ns: &mut PerNamespace<'a>,
        trust_domain: &str,
        key: &'a (String, String),
        pod: &'a Arc<Pod>,
    ) {
        let (ns, name) = key;
        let builds = self.builds;
        let context = *per_ns.contexts.entry(ns.as_str()).or_insert_with(|| namespace_context(objects, ns, trust_domain));
        let selected = self.converted.selected.get(key).map_or(&[][..], Vec::as_slice);
        let from_slices = self.sliced.get(key).cloned().unwrap_or_default();
        if let Some(m) = self.pods.get_mut(key) {
            if Arc::ptr_eq(&m.pod, pod) && m.context == context && m.selected == selected && m.sliced == from_slices {
                m.seen = builds;
                return;
            }
        }
        let selected = selected.to_vec();
        let key = key.clone();
        // New or changed: its identity and Workload again.
        let old = self.pods.remove(&key);
        let sa = pod.service_account().to_string();
        let node = pod.spec.node_name.clone().unwrap_or_default();
        let identity = (!node.is_empty()).then(|| {
            (node.clone(), Identity { trust_domain: trust_domain.into(), namespace: ns.clone(), service_account: sa.clone() })
        });
        if let Some(id) = &identity {
            *self.identities.entry(id.clone()).or_default() += 1;
            snap.identities.insert(id.clone());
        }
        if let Some(id) = old.as_ref().and_then(|m| m.identity.as_ref()) {
            forget_identity(&mut self.identities, &mut snap.identities, id);
        }
        let ips = pod.ips();
        let uid = workload_uid(ns, name);
        // Not scheduled or not started yet: nothing can reach it, no Workload.
        let has = !ips.is_empty();
        if has {
            let services = per_ns.services.entry(ns.as_str()).or_insert_with(|| selecting_services(objects, ns));
            let mut svc_map: BTreeMap<String, wl::PortList> = services
                .iter()
                .filter(|(_, selector, _)| selector.iter().all(|(k, v)| pod.metadata.labels.get(k) == Some(v)))
                .filter_map(|(key, _, ports)| Some((key.clone(), wl::PortList { ports: endpoints::pod_ports(pod, ports)? })))
                .collect();
            // Services without a selector, from their EndpointSlices (never also above).
            for (key, ports) in &from_slices {
                svc_map.insert(key.clone(), wl::PortList { ports: ports.clone() });
            }
            let labels = &pod.metadata.labels;
            let (canonical_name, canonical_revision) = canonical(labels, name);
            let tunnel = if in_mesh(objects, pod) { wl::TunnelProtocol::Hbone } else { wl::TunnelProtocol::None };
            let mut authorization_policies: Vec<String> = own_and_root(&objects.authorization_policies, ns)
                .filter(|((pns, _), p)| {
                    authorization::picks(pns, p.spec.selector.as_ref(), p.spec.targets(), ns, labels, &objects.services)
                })
                .map(|((pns, pname), _)| format!("{pns}/{pname}"))
                .filter(|key| snap.authorizations.contains_key(key))
                .collect();
            authorization_policies.sort();
            for key in &selected {
                if !authorization_policies.contains(key) {
                    authorization_policies.push(key.clone());
                }
            }
            let proto = wl::Workload {
                uid: uid.clone(),
                name: name.clone(),
                namespace: ns.clone(),
                addresses: ips.iter().map(ip_bytes).collect(),
                tunnel_protocol: tunnel as i32,
                trust_domain: trust_domain.into(),
                service_account: sa,
                node,
                canonical_name,
                canonical_revision,
                workload_type: wl::WorkloadType::Pod as i32,
                workload_name: name.clone(),
                services: svc_map,
                cluster_id: CLUSTER_ID.into(),
                authorization_policies,
                // Not ready: agents keep it out of its services' endpoints (istiod's form).
                status: if pod.ready() { wl::WorkloadStatus::Healthy } else { wl::WorkloadStatus::Unhealthy } as i32,
                ..Default::default()
            };
            let r = address_resource(wl::Address { r#type: Some(wl::address::Type::Workload(proto)) });
            if snap.resources.get(&uid).is_none_or(|old| old.version != r.version) {
                snap.resources.insert(uid.clone(), Arc::new(r));
            }
        } else if old.as_ref().is_some_and(|m| m.uid.is_some()) {
            snap.resources.remove(&uid);
        }
        let egress = has.then(|| super::egress::for_pod(&objects.sidecars, ROOT_NAMESPACE, ns, &pod.metadata.labels)).flatten();
        match egress {
            Some(hosts) if snap.egress.get(&uid).is_none_or(|old| **old != hosts) => {
                snap.egress.insert(uid.clone(), Arc::new(hosts));
            }
            Some(_) => {}
            None if snap.egress.contains_key(&uid) => drop(snap.egress.remove(&uid)),
            None => {}
        }
        let memo = Memo { pod: pod.clone(), context, selected, sliced: from_slices, uid: has.then_some(uid), identity, seen: builds };
        self.pods.insert(key, memo);
    }

    /// Pod `key` is gone: its Workload and its share of its identity go.
    fn forget_pod(&mut self, snap: &mut Snapshot, key: &(String, String)) {
        let Some(m) = self.pods.remove(key) else { return };
        if let Some(uid) = &m.uid {
            snap.resources.remove(uid);
            snap.egress.remove(uid);
        }
        if let Some(id) = &m.identity {
            forget_identity(&mut self.identities, &mut snap.identities, id);
        }
    }
}

/// Every Kubernetes Service as an Address, by resource name `<namespace>/<hostname>`.
fn services(objects: &Objects) -> BTreeMap<String, Resource> {
    let mut out = BTreeMap::new();
    for ((ns, name), svc) in &objects.services {
        let hostname = service_hostname(ns, name);
        let mut ips: Vec<&str> = svc.spec.cluster_ips.iter().map(String::as_str).collect();
        if let Some(ip) = svc.spec.cluster_ip.as_deref() {
            if !ips.contains(&ip) {
                ips.insert(0, ip);
            }
        }
        let addresses = ips
            .iter()
            .filter_map(|ip| ip.parse::<IpAddr>().ok()) // "None" (headless) and "" have no VIP
            .map(|ip| wl::NetworkAddress { network: String::new(), address: ip_bytes(&ip) })
            .collect();
        let proto = wl::Service {
            name: name.clone(),
            namespace: ns.clone(),
            hostname: hostname.clone(),
            addresses,
            ports: endpoints::service_ports(&svc.spec).iter().map(|p| p.port).collect(),
            subject_alt_names: vec![],
        };
        out.insert(format!("{ns}/{hostname}"), address_resource(wl::Address { r#type: Some(wl::address::Type::Service(proto)) }));
    }
    out
}

/// The Services of namespace `ns` with a selector, as its pods are matched against them.
fn selecting_services<'a>(objects: &'a Objects, ns: &'a str) -> Vec<SelectingService<'a>> {
    in_namespace(&objects.services, ns)
        .filter(|(_, svc)| !svc.spec.selector.is_empty())
        .map(|((ns, name), svc)| {
            (format!("{ns}/{}", service_hostname(ns, name)), &svc.spec.selector, endpoints::service_ports(&svc.spec))
        })
        .collect()
}

/// One pod fewer runs `id`: the last one takes it out of `ids`.
fn forget_identity(counts: &mut HashMap<(String, Identity), usize>, ids: &mut imbl::OrdSet<(String, Identity)>, id: &(String, Identity)) {
    if let Some(n) = counts.get_mut(id) {
        *n -= 1;
        if *n == 0 {
            counts.remove(id);
            ids.remove(id);
        }
    }
}

/// VirtualServices and DestinationRules as our L7 resources; ServiceEntries as
/// Services (a Kubernetes Service of the same name wins) with their inline endpoints
/// as Workloads; WorkloadEntries as Workloads, members of the ServiceEntries of their
/// namespace whose `workloadSelector` picks them (as istiod's ambient index does).
fn networking_resources(
    objects: &Objects,
    trust_domain: &str,
    addresses: &mut BTreeMap<String, Resource>,
    virtual_services: &mut BTreeMap<String, Resource>,
    destination_rules: &mut BTreeMap<String, Resource>,
) {
    use super::networking::convert::{self, entry};
    for ((ns, name), vs) in &objects.virtual_services {
        let msg = convert::virtual_service(ns, name, &vs.spec);
        virtual_services.insert(format!("{ns}/{name}"), resource(crate::proto::VIRTUAL_SERVICE_TYPE_URL, &msg));
    }
    for ((ns, name), dr) in &objects.destination_rules {
        let msg = convert::destination_rule(ns, name, &dr.spec);
        destination_rules.insert(format!("{ns}/{name}"), resource(crate::proto::DESTINATION_RULE_TYPE_URL, &msg));
    }
    for ((ns, name), se) in &objects.service_entries {
        for (key, svc) in entry::services(ns, name, &se.spec) {
            addresses
                .entry(key)
                .or_insert_with(|| address_resource(wl::Address { r#type: Some(wl::address::Type::Service(svc)) }));
        }
        for w in entry::endpoint_workloads(ns, name, &se.spec, trust_domain) {
            let uid = w.uid.clone();
            addresses.insert(uid, address_resource(wl::Address { r#type: Some(wl::address::Type::Workload(w)) }));
        }
    }
    for ((ns, name), we) in &objects.workload_entries {
        let mut w = entry::workload_entry(ns, name, &we.spec, trust_domain);
        let picks = |sel: &BTreeMap<String, String>| !sel.is_empty() && sel.iter().all(|(k, v)| we.spec.labels.get(k) == Some(v));
        for (_, se) in in_namespace(&objects.service_entries, ns) {
            if se.spec.workload_selector.as_ref().is_some_and(|s| picks(&s.labels)) {
                let ports = entry::ports_for(&se.spec, &we.spec.ports);
                for h in &se.spec.hosts {
                    w.services.insert(format!("{ns}/{h}"), ports.clone());
                }
            }
        }
        let uid = w.uid.clone();
        addresses.insert(uid, address_resource(wl::Address { r#type: Some(wl::address::Type::Workload(w)) }));
    }
}

/// The folder's PeerAuthentications as the precedence rules take them.
pub fn peer_authentication_policies(objects: &Objects) -> Vec<peerauth::Policy> {
    objects
        .peer_authentications
        .iter()
        .map(|((ns, name), (order, pa))| peerauth::Policy {
            namespace: ns.clone(),
            name: name.clone(),
            created: pa.metadata.creation_timestamp.clone(),
            order: *order,
            spec: pa.spec.clone(),
        })
        .collect()
}

fn peer_authentications(objects: &Objects) -> peerauth::convert::Converted {
    let policies = peer_authentication_policies(objects);
    let pods: Vec<peerauth::convert::Pod> = objects
        .pods
        .iter()
        .map(|((ns, name), p)| peerauth::convert::Pod { namespace: ns, name, labels: &p.metadata.labels })
        .collect();
    peerauth::convert::convert(&policies, ROOT_NAMESPACE, &pods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use crate::controlplane::folder::Folder;

    fn objects(yaml: &str) -> Objects {
        let (o, errors) = Folder::default().apply(vec![("t.yaml".into(), Ok(yaml.to_string()))]);
        assert!(errors.is_empty(), "{errors:?}");
        o
    }

    /// A builder that reuses its previous snapshot gives, after every kind of edit, what
    /// a fresh build of the same objects gives; and a build with nothing changed is
    /// the same snapshot (shared maps). Edits that add a document append it, so the
    /// other documents keep their files.
    #[test]
    fn incremental_builds_equal_fresh_builds() {
        let base = "
kind: Namespace
metadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}
---
kind: Namespace
metadata: {name: b, labels: {istio.io/dataplane-mode: ambient}}
---
kind: Pod
metadata: {name: p1, namespace: a, labels: {app: x}}
spec: {nodeName: n1, serviceAccountName: sa1}
status: {podIP: 10.0.0.1}
---
kind: Pod
metadata: {name: p2, namespace: a, labels: {app: y}}
spec: {nodeName: n2, serviceAccountName: sa1}
status: {podIP: 10.0.0.2}
---
kind: Pod
metadata: {name: q1, namespace: b, labels: {app: x}}
spec: {nodeName: n1}
status: {podIP: 10.0.1.1}
---
kind: Service
metadata: {name: x, namespace: a}
spec: {clusterIP: 10.96.0.1, selector: {app: x}, ports: [{port: 80, targetPort: 8080}, {port: 81, targetPort: web}]}
---
kind: Pod
metadata: {name: p3, namespace: a, labels: {app: x}}
spec: {nodeName: n2, containers: [{name: c, ports: [{name: web, containerPort: 8081}]}]}
status: {podIP: 10.0.0.4}
---
kind: Service
metadata: {name: z, namespace: a}
spec: {clusterIP: 10.96.0.2, ports: [{name: sql, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: z-1, namespace: a, labels: {kubernetes.io/service-name: z}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.2], targetRef: {kind: Pod, name: p2}, conditions: {ready: true}}, {addresses: [192.168.0.1]}]
ports: [{name: sql, port: 15432}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sel, namespace: a}
spec: {selector: {matchLabels: {app: y}}, rules: [{}]}
";
        const P4: &str = "kind: Pod\nmetadata: {name: p4, namespace: a, labels: {app: x}}\nspec: {nodeName: n3}\nstatus: {podIP: 10.0.0.9}\n";
        const ROUTES: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x, namespace: a}\n\
            spec: {hosts: [x], http: [{route: [{destination: {host: x}}]}]}\n---\napiVersion: networking.istio.io/v1\n\
            kind: DestinationRule\nmetadata: {name: x, namespace: a}\nspec: {host: x, subsets: [{name: v1, labels: {version: v1}}]}\n";
        let ra = |ns: &str, spec: &str| {
            format!("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: {ns}}}\n\
                spec: {{{spec}, jwtRules: [{{issuer: i, jwksUri: 'http://idp/keys'}}]}}\n")
        };
        let pa = |name: &str, spec: &str| {
            format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: a}}\nspec: {{{spec}}}\n")
        };
        let pas = format!("{}---\n{}", pa("all", "mtls: {mode: STRICT}"), pa("y", "selector: {matchLabels: {app: y}}, mtls: {mode: PERMISSIVE}"));
        let relabelled = base.replace("{app: y}}\nspec: {nodeName: n2", "{app: x}}\nspec: {nodeName: n2");
        let entries = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: vm, namespace: a}\n\
            spec: {hosts: [vm.a.internal], addresses: [240.0.0.8], ports: [{number: 80, name: http, protocol: HTTP}], \
            resolution: STATIC, workloadSelector: {labels: {app: vm}}}\n---\napiVersion: networking.istio.io/v1\n\
            kind: WorkloadEntry\nmetadata: {name: vm-1, namespace: a}\nspec: {address: 10.2.0.9, labels: {app: vm}}\n";
        let edits: Vec<(&str, String)> = vec![
            ("the start", base.to_string()),
            ("nothing", base.to_string()),
            ("a pod's address", base.replace("10.0.0.2", "10.0.0.3")),
            ("a pod's labels", base.replace("{app: y}}\nspec: {nodeName: n2", "{app: x}}\nspec: {nodeName: n2")),
            ("a pod loses its address", base.replace("status: {podIP: 10.0.0.2}", "status: {}")),
            ("a pod is not ready", base.replace("status: {podIP: 10.0.0.2}", "status: {podIP: 10.0.0.2, conditions: [{type: Ready, status: 'False'}]}")),
            ("a pod moves node", base.replace("nodeName: n2", "nodeName: n1")),
            ("a pod is gone", base.replace("name: q1", "name: q1, labels: {}}\n---\nkind: ConfigMap\nmetadata: {name: q1x")),
            ("a service's selector", base.replace("selector: {app: x}", "selector: {app: y}")),
            ("a service is gone", base.replace("kind: Service", "kind: ConfigMap")),
            ("a policy's selector", base.replace("matchLabels: {app: y}", "matchLabels: {app: x}")),
            ("a root-namespace policy", format!("{base}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: r, namespace: istio-system}}\nspec: {{selector: {{matchLabels: {{app: x}}}}, rules: [{{}}]}}\n")),
            ("a namespace leaves the mesh", base.replace("name: b, labels: {istio.io/dataplane-mode: ambient}", "name: b")),
            ("a container port renamed", base.replace("{name: c, ports: [{name: web,", "{name: c, ports: [{name: www,")),
            ("a named port's number", base.replace("containerPort: 8081", "containerPort: 8082")),
            ("a service port renamed", base.replace("{name: sql, port: 5432}", "{name: db, port: 5432}")),
            ("an EndpointSlice added", format!("{base}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: z-2, namespace: a, labels: {{kubernetes.io/service-name: z}}}}\naddressType: IPv4\nendpoints: [{{addresses: [10.0.0.1], targetRef: {{kind: Pod, name: p1}}}}]\nports: [{{name: sql, port: 15432}}]\n")),
            ("an EndpointSlice's port", base.replace("port: 15432", "port: 15433")),
            ("a ready flag flips", base.replace("conditions: {ready: true}", "conditions: {ready: false}")),
            ("an endpoint moves to another pod", base.replace("name: p2}, conditions", "name: p1}, conditions")),
            ("a bare endpoint's address", base.replace("192.168.0.1", "192.168.0.2")),
            ("an EndpointSlice is gone", base.replace("kind: EndpointSlice", "kind: ConfigMap")),
            ("a PeerAuthentication", format!("{base}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: s, namespace: a}}\nspec: {{selector: {{matchLabels: {{app: x}}}}, mtls: {{mode: STRICT}}}}\n")),
            ("a Sidecar", format!("{base}---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: a}}\nspec: {{egress: [{{hosts: ['./*']}}]}}\n")),
            ("a root Sidecar", format!("{base}---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: istio-system}}\nspec: {{egress: [{{hosts: ['*/*.svc.cluster.local']}}]}}\n")),
            ("a pod is added", format!("{base}---\n{P4}")),
            ("a RequestAuthentication by selector", format!("{base}---\n{}", ra("a", "selector: {matchLabels: {app: x}}"))),
            ("a pod's labels under it", format!("{}---\n{}", relabelled, ra("a", "selector: {matchLabels: {app: x}}"))),
            ("a RequestAuthentication by Service", format!("{base}---\n{}", ra("a", "targetRefs: [{kind: Service, name: x}]"))),
            ("a root RequestAuthentication", format!("{base}---\n{}", ra("istio-system", "selector: {matchLabels: {app: x}}"))),
            ("a namespace-wide PeerAuthentication with an exception", format!("{base}---\n{pas}")),
            ("and a pod more", format!("{base}---\n{pas}---\n{P4}")),
            ("and the exception's pod relabelled", format!("{relabelled}---\n{pas}---\n{P4}")),
            ("an AuthorizationPolicy by Service", format!("{base}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: svc, namespace: a}}\nspec: {{targetRefs: [{{kind: Service, name: x}}], action: DENY, rules: [{{}}]}}\n")),
            ("a ServiceEntry and a WorkloadEntry", format!("{base}---\n{entries}")),
            ("a WorkloadEntry's labels", format!("{base}---\n{}", entries.replace("labels: {app: vm}", "labels: {app: other}"))),
            ("a VirtualService and a DestinationRule", format!("{base}---\n{ROUTES}")),
            ("back to the start", base.to_string()),
        ];
        let tds = TrustDomains::new("cluster.local", &[]);
        let mut folder = Folder::default();
        let mut builder = Builder::default();
        let mut prev: Option<Snapshot> = None;
        for (what, yaml) in &edits {
            // One file per document: the folder parses only files that changed, so an
            // object an edit leaves alone keeps its pointer, as it would in the cluster,
            // and a dependency the builder misses shows as a stale Workload.
            let files = yaml.split("\n---\n").enumerate().map(|(i, d)| (format!("d{i}.yaml").into(), Ok(d.to_string())));
            let (o, errors) = folder.apply(files.collect());
            assert!(errors.is_empty(), "{what}: {errors:?}");
            let inc = builder.build(&o, &tds, &|_| None);
            let fresh = build(&o, "cluster.local");
            assert_eq!(inc, fresh, "after {what}");
            if let Some(p) = &prev {
                assert_eq!(inc.same_as(p), *what == "nothing", "{what}: unchanged exactly when nothing changed");
            }
            prev = Some(inc);
        }
        // Other trust domains: every pod again.
        let (o, _) = folder.apply(vec![("d0.yaml".into(), Ok(base.to_string()))]);
        let other = TrustDomains::new("other.td", &["cluster.local".into()]);
        assert_eq!(builder.build(&o, &other, &|_| None), build_with(&o, &other, &|_| None), "after a trust domain change");
    }

    /// A policy too large to serve fails closed: a DENY of everything it selects, with
    /// its name, scope and selector.
    #[test]
    fn an_oversized_policy_is_served_as_a_deny_of_what_it_selects() {
        let principals: Vec<String> = (0..200_000).map(|i| format!("cluster.local/ns/x/sa/account-{i}")).collect();
        let yaml = format!(
            "kind: Namespace\nmetadata: {{name: shop}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: huge, namespace: shop}}\nspec: {{selector: {{matchLabels: {{app: cart}}}}, action: ALLOW, \
             rules: [{{from: [{{source: {{principals: {principals:?}}}}}]}}]}}\n"
        );
        let s = build(&objects(&yaml), "cluster.local");
        let r = &s.authorizations["shop/huge"];
        assert!(r.any.value.len() < 1024, "the stand-in is small: {} bytes", r.any.value.len());
        let a = crate::proto::security::Authorization::decode(r.any.value.as_slice()).unwrap();
        assert_eq!(a.action, crate::proto::security::Action::Deny as i32);
        assert_eq!(a.scope, crate::proto::security::Scope::WorkloadSelector as i32);
        assert_eq!(a.groups.len(), 1, "one rule that matches every request");
    }

    fn decode(r: &Resource) -> wl::address::Type {
        wl::Address::decode(r.any.value.as_slice()).unwrap().r#type.unwrap()
    }

    fn workload(s: &Snapshot, uid: &str) -> wl::Workload {
        match decode(&s.resources[uid]) {
            wl::address::Type::Workload(w) => w,
            other => panic!("{other:?}"),
        }
    }

    const YAML: &str = "
kind: Namespace
metadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
---
kind: Namespace
metadata: {name: plain}
---
kind: Pod
metadata: {name: a, namespace: mesh, labels: {app: echo}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]}
---
kind: Pod
metadata: {name: b, namespace: mesh, labels: {app: echo, istio.io/dataplane-mode: none}}
spec: {nodeName: n2, serviceAccountName: bee}
status: {podIP: 10.0.0.2}
---
kind: Pod
metadata: {name: c, namespace: plain, labels: {app: echo}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.3}
---
kind: Pod
metadata: {name: pending, namespace: mesh, labels: {app: echo}}
spec: {nodeName: n3, serviceAccountName: late}
---
kind: Service
metadata: {name: echo, namespace: mesh}
spec:
  clusterIP: 10.96.0.1
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}, {port: 53, protocol: UDP}, {port: 9000}]
";

    #[test]
    fn ambient_label_logic() {
        let s = build(&objects(YAML), "td");
        let proto = |uid: &str| workload(&s, uid).tunnel_protocol;
        assert_eq!(proto("Kubernetes//Pod/mesh/a"), wl::TunnelProtocol::Hbone as i32);
        assert_eq!(proto("Kubernetes//Pod/mesh/b"), wl::TunnelProtocol::None as i32, "pod opted out");
        assert_eq!(proto("Kubernetes//Pod/plain/c"), wl::TunnelProtocol::None as i32, "namespace not ambient");
        assert!(!s.resources.contains_key("Kubernetes//Pod/mesh/pending"), "no IP yet");
        let a = workload(&s, "Kubernetes//Pod/mesh/a");
        assert_eq!(a.addresses, vec![vec![10, 0, 0, 1], "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec()]);
        assert_eq!((a.trust_domain.as_str(), a.service_account.as_str(), a.node.as_str()), ("td", "default", "n1"));
        let id = |ns: &str, sa: &str| Identity { trust_domain: "td".into(), namespace: ns.into(), service_account: sa.into() };
        assert!(s.node_runs("n1", &id("mesh", "default")));
        assert!(s.node_runs("n3", &id("mesh", "late")), "a pod without IP still needs its certificate");
        assert!(!s.node_runs("n1", &id("mesh", "bee")));
    }

    #[test]
    fn service_and_endpoints() {
        let s = build(&objects(YAML), "td");
        let key = "mesh/echo.mesh.svc.cluster.local";
        let wl::address::Type::Service(svc) = decode(&s.resources[key]) else { panic!() };
        assert_eq!(svc.addresses, vec![wl::NetworkAddress { network: String::new(), address: vec![10, 96, 0, 1] }]);
        let ports = vec![wl::Port { service_port: 80, target_port: 8080 }, wl::Port { service_port: 9000, target_port: 9000 }];
        assert_eq!(svc.ports, ports, "UDP dropped, missing targetPort = port");
        for uid in ["Kubernetes//Pod/mesh/a", "Kubernetes//Pod/mesh/b"] {
            assert_eq!(workload(&s, uid).services[key].ports, ports, "{uid}");
        }
        assert!(workload(&s, "Kubernetes//Pod/plain/c").services.is_empty(), "other namespace");
    }

    /// A pod is HEALTHY only when ready (its Ready condition True, not finished); a pod
    /// written without conditions is ready.
    #[test]
    fn pod_readiness_is_the_workload_status() {
        let pod = |status: &str| {
            format!("kind: Namespace\nmetadata: {{name: a, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\nkind: Pod\nmetadata: {{name: p, namespace: a}}\nspec: {{nodeName: n1}}\nstatus: {status}\n")
        };
        let table: &[(&str, wl::WorkloadStatus)] = &[
            ("{podIP: 10.0.0.1}", wl::WorkloadStatus::Healthy),
            ("{podIP: 10.0.0.1, phase: Running, conditions: [{type: Ready, status: 'True'}]}", wl::WorkloadStatus::Healthy),
            ("{podIP: 10.0.0.1, phase: Running, conditions: [{type: Ready, status: 'False'}]}", wl::WorkloadStatus::Unhealthy),
            ("{podIP: 10.0.0.1, phase: Pending, conditions: [{type: PodScheduled, status: 'True'}, {type: Ready, status: Unknown}]}", wl::WorkloadStatus::Unhealthy),
            ("{podIP: 10.0.0.1, phase: Running, conditions: [{type: PodScheduled, status: 'True'}]}", wl::WorkloadStatus::Healthy),
            ("{podIP: 10.0.0.1, phase: Succeeded, conditions: [{type: Ready, status: 'True'}]}", wl::WorkloadStatus::Unhealthy),
            ("{podIP: 10.0.0.1, phase: Failed}", wl::WorkloadStatus::Unhealthy),
        ];
        for (status, want) in table {
            let s = build(&objects(&pod(status)), "td");
            assert_eq!(workload(&s, "Kubernetes//Pod/a/p").status, *want as i32, "{status}");
        }
    }

    #[test]
    fn peer_authentication_strict_is_served_and_listed() {
        let pa = "
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: open, namespace: plain}
spec: {mtls: {mode: PERMISSIVE}}
";
        let s = build(&objects(&format!("{YAML}{pa}")), "td");
        let key = "istio-system/istio_converted_static_strict";
        assert!(s.authorizations.contains_key(key), "{:?}", s.authorizations.keys().collect::<Vec<_>>());
        assert!(workload(&s, "Kubernetes//Pod/mesh/a").authorization_policies.contains(&key.to_string()));
        assert!(workload(&s, "Kubernetes//Pod/plain/c").authorization_policies.is_empty(), "PERMISSIVE namespace");
    }

    #[test]
    fn versions_follow_content() {
        let a = build(&objects(YAML), "td");
        let b = build(&objects(&YAML.replace("10.0.0.3", "10.0.0.4")), "td");
        let changed: Vec<_> = a.resources.iter().filter(|(k, r)| b.resources[*k].version != r.version).map(|(k, _)| k.as_str()).collect();
        assert_eq!(changed, vec!["Kubernetes//Pod/plain/c"]);
    }

    #[test]
    fn trust_domain_aliases_expand_principals() {
        let tds = TrustDomains::new("new.td", &["old.td".into(), "new.td".into()]);
        assert_eq!(tds.aliases, vec!["old.td".to_string()], "the trust domain itself is no alias");
        let cases: &[(&str, &[&str])] = &[
            ("new.td/ns/a/sa/b", &["new.td/ns/a/sa/b", "old.td/ns/a/sa/b"]),
            ("old.td/ns/a/sa/b", &["new.td/ns/a/sa/b", "old.td/ns/a/sa/b"]),
            ("cluster.local/ns/a/sa/b", &["new.td/ns/a/sa/b", "old.td/ns/a/sa/b", "cluster.local/ns/a/sa/b"]),
            ("other.td/ns/a/sa/b", &["other.td/ns/a/sa/b"]),
            ("*/ns/a/sa/b", &["*/ns/a/sa/b"]),
            ("*", &["*"]),
            ("new.td/ns/a/*", &["new.td/ns/a/*", "old.td/ns/a/*"]),
        ];
        for (p, want) in cases {
            assert_eq!(tds.expand(p), want.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{p}");
        }
        // In a served policy, for sources and `source.principal` conditions alike.
        let o = objects(&format!("{YAML}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: p, namespace: mesh}}
spec:
  rules:
  - from: [{{source: {{principals: [old.td/ns/mesh/sa/default]}}}}]
    when: [{{key: source.principal, notValues: [new.td/ns/mesh/sa/bad]}}]
"));
        let snap = build_with(&o, &tds, &|_| None);
        let a = crate::proto::security::Authorization::decode(snap.authorizations["mesh/p"].any.value.as_slice()).unwrap();
        let m = &a.mesh_rules.unwrap().groups[0].clauses;
        assert_eq!(m[0].matches[0].principals, vec!["new.td/ns/mesh/sa/default", "old.td/ns/mesh/sa/default"]);
        assert_eq!(m[1].matches[0].not_principals, vec!["new.td/ns/mesh/sa/bad", "old.td/ns/mesh/sa/bad"]);
    }

    #[test]
    fn request_authentication_lists_the_workloads_its_selector_picks() {
        let o = objects(&format!("{YAML}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: mesh}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  jwtRules: [{{issuer: i, jwksUri: 'http://idp/keys'}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: all, namespace: mesh}}
spec:
  jwtRules: [{{issuer: j, jwksUri: 'http://idp/keys'}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: by-service, namespace: mesh}}
spec:
  targetRefs: [{{kind: Service, name: echo}}]
  jwtRules: [{{issuer: k, jwksUri: 'http://idp/keys'}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: root, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  jwtRules: [{{issuer: r, jwksUri: 'http://idp/keys'}}]
"));
        let snap = build_with(&o, &TrustDomains::new("td", &[]), &|u| (u == "http://idp/keys").then(|| "{}".to_string()));
        let ra = |k: &str| {
            crate::proto::mesh_security::RequestAuthentication::decode(snap.request_authentications[k].any.value.as_slice()).unwrap()
        };
        // Pod b opts out of the mesh: not listed.
        assert_eq!(ra("mesh/jwt").workloads, vec![workload_uid("mesh", "a")]);
        assert!(ra("mesh/all").workloads.is_empty() && !ra("mesh/all").by_workload);
        assert!(ra("mesh/by-service").by_workload, "targetRefs: only the Service's pods");
        assert_eq!(ra("mesh/by-service").workloads, vec![workload_uid("mesh", "a")]);
        assert_eq!(ra("mesh/all").rules[0].jwks, "{}", "fetched keys are inlined");
        assert_eq!(ra("istio-system/root").workloads, vec![workload_uid("mesh", "a")], "the root namespace's picks in every namespace");
    }
}
