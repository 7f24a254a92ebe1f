//! What the control plane says exists: workloads, services and authorization policies,
//! indexed for the proxy.
//!
//! Plain data filled by [`crate::xds`]; `find_*` methods answer from what is known now.
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::authz::Policy;

/// A SPIFFE identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl std::str::FromStr for Identity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("spiffe://").ok_or_else(|| format!("{s:?} is not a spiffe:// URI"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => Ok(Identity {
                trust_domain: td.to_string(),
                namespace: ns.to_string(),
                service_account: sa.to_string(),
            }),
            _ => Err(format!("{s:?} is not spiffe://<trust-domain>/ns/<namespace>/sa/<account>")),
        }
    }
}

/// How a workload accepts mesh traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelProtocol {
    /// Not in the mesh: reached directly, never captured.
    None,
    /// HBONE on port 15008.
    Hbone,
}

/// A pod (or other workload) as the control plane describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Unique id, e.g. `Kubernetes//Pod/default/client`.
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
    pub node: String,
    pub addresses: Vec<IpAddr>,
    pub protocol: TunnelProtocol,
    pub labels: BTreeMap<String, String>,
    /// False for a pod that is not ready: not picked as a service endpoint (it is
    /// still reached by its own address).
    pub healthy: bool,
}

impl Workload {
    pub fn identity(&self) -> Identity {
        Identity {
            trust_domain: self.trust_domain.clone(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
        }
    }
}

/// A service port: the port clients call and the port the backends listen on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub service_port: u16,
    pub target_port: u16,
}

/// A service as the control plane describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// e.g. `echo.default.svc.cluster.local`.
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Backend workload uids, with per-workload port overrides (service port -> target).
    pub endpoints: BTreeMap<String, BTreeMap<u16, u16>>,
}

impl Service {
    /// The xDS resource name of a service: `<namespace>/<hostname>`.
    pub fn resource_name(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

#[derive(Default, Debug)]
struct Stores {
    workloads: HashMap<String, Arc<Workload>>,
    by_ip: HashMap<IpAddr, String>,
    services: HashMap<String, Arc<Service>>,
    by_vip: HashMap<IpAddr, String>,
    /// By resource name `namespace/name`.
    policies: HashMap<String, Arc<Policy>>,
    /// Workload uid -> the WORKLOAD_SELECTOR policies that select it (`namespace/name`).
    workload_policies: HashMap<String, Vec<String>>,
    /// RequestAuthentications by resource name `namespace/name`.
    request_authns: HashMap<String, Arc<RequestAuthn>>,
    /// The merged, compiled rules of each set of RequestAuthentications that applies
    /// to some pod (emptied when any changes).
    compiled_authns: HashMap<Vec<String>, Arc<crate::jwt::Compiled>>,
    /// Counts changes to `request_authns`: rules compiled from an older generation
    /// are not kept.
    authn_generation: u64,
    /// L7 routing config by resource name `namespace/name`, held for the L7 router.
    routing: BTreeMap<String, Routing>,
}

/// One L7 routing resource as the control plane sent it (`proto/mesh_networking.proto`).
#[derive(Clone, Debug, PartialEq)]
pub enum Routing {
    VirtualService(Arc<crate::proto::mesh_networking::VirtualService>),
    DestinationRule(Arc<crate::proto::mesh_networking::DestinationRule>),
}

impl Routing {
    /// `virtualservice/<namespace>/<name>` or `destinationrule/<namespace>/<name>`.
    pub fn key(&self) -> String {
        match self {
            Routing::VirtualService(v) => format!("virtualservice/{}/{}", v.namespace, v.name),
            Routing::DestinationRule(d) => format!("destinationrule/{}/{}", d.namespace, d.name),
        }
    }
}

/// One RequestAuthentication as the agent holds it.
#[derive(Debug)]
pub struct RequestAuthn {
    pub name: String,
    pub namespace: String,
    /// Applies in every namespace (root namespace).
    pub mesh_wide: bool,
    /// With a selector: the workload uids it selects; `None`: every workload in scope.
    pub workloads: Option<Vec<String>>,
    pub rules: Vec<crate::jwt::Rule>,
}

impl RequestAuthn {
    fn applies(&self, namespace: &str, uid: Option<&str>) -> bool {
        (self.mesh_wide || self.namespace == namespace)
            && self.workloads.as_ref().is_none_or(|w| uid.is_some_and(|u| w.iter().any(|x| x == u)))
    }
}

/// The agent's view of the mesh, shared by the proxy, the kernel sync and the admin API.
#[derive(Clone)]
pub struct State {
    inner: Arc<RwLock<Stores>>,
    version: Arc<watch::Sender<u64>>,
    demand: Arc<crate::ondemand::OnDemand>,
}

impl Default for State {
    fn default() -> Self {
        Self { inner: Default::default(), version: Arc::new(watch::channel(0).0), demand: Default::default() }
    }
}

impl State {
    /// Adds or replaces a workload (by uid).
    pub fn upsert_workload(&self, w: Workload) {
        let mut s = self.inner.write().unwrap();
        if let Some(old) = s.workloads.remove(&w.uid) {
            for ip in &old.addresses {
                s.by_ip.remove(ip);
            }
        }
        for ip in &w.addresses {
            s.by_ip.insert(*ip, w.uid.clone());
        }
        s.workloads.insert(w.uid.clone(), Arc::new(w));
        drop(s);
        self.bump();
    }

    /// Adds or replaces a workload with the policies that select it by label (the
    /// workload API's `authorization_policies`).
    pub fn upsert_workload_with_policies(&self, w: Workload, policies: Vec<String>) {
        let mut s = self.inner.write().unwrap();
        if policies.is_empty() {
            s.workload_policies.remove(&w.uid);
        } else {
            s.workload_policies.insert(w.uid.clone(), policies);
        }
        drop(s);
        self.upsert_workload(w);
    }

    /// Removes a workload by uid; returns whether it was known.
    pub fn remove_workload(&self, uid: &str) -> bool {
        let mut s = self.inner.write().unwrap();
        s.workload_policies.remove(uid);
        let Some(old) = s.workloads.remove(uid) else { return false };
        for ip in &old.addresses {
            if s.by_ip.get(ip).map(String::as_str) == Some(uid) {
                s.by_ip.remove(ip);
            }
        }
        drop(s);
        self.bump();
        true
    }

    /// Adds or replaces a service (by `namespace/hostname`).
    pub fn upsert_service(&self, svc: Service) {
        let key = svc.resource_name();
        let mut s = self.inner.write().unwrap();
        if let Some(old) = s.services.remove(&key) {
            for ip in &old.vips {
                s.by_vip.remove(ip);
            }
        }
        for ip in &svc.vips {
            s.by_vip.insert(*ip, key.clone());
        }
        s.services.insert(key, Arc::new(svc));
        drop(s);
        self.bump();
    }

    /// Removes a service by `namespace/hostname`; returns whether it was known.
    pub fn remove_service(&self, name: &str) -> bool {
        let mut s = self.inner.write().unwrap();
        let Some(old) = s.services.remove(name) else { return false };
        for ip in &old.vips {
            if s.by_vip.get(ip).map(String::as_str) == Some(name) {
                s.by_vip.remove(ip);
            }
        }
        drop(s);
        self.bump();
        true
    }

    /// Adds or replaces an authorization policy (by `namespace/name`).
    pub fn upsert_policy(&self, p: Policy) {
        self.inner.write().unwrap().policies.insert(p.key(), Arc::new(p));
        self.bump();
    }

    /// Removes a policy by `namespace/name`; returns whether it was known.
    pub fn remove_policy(&self, name: &str) -> bool {
        let removed = self.inner.write().unwrap().policies.remove(name).is_some();
        if removed {
            self.bump();
        }
        removed
    }

    /// Adds or replaces a RequestAuthentication (by `namespace/name`).
    pub fn upsert_request_authn(&self, r: RequestAuthn) {
        let mut s = self.inner.write().unwrap();
        s.request_authns.insert(format!("{}/{}", r.namespace, r.name), Arc::new(r));
        s.compiled_authns.clear();
        s.authn_generation += 1;
        drop(s);
        self.bump();
    }

    /// Removes a RequestAuthentication by `namespace/name`.
    pub fn remove_request_authn(&self, name: &str) {
        let mut s = self.inner.write().unwrap();
        if s.request_authns.remove(name).is_some() {
            s.compiled_authns.clear();
            s.authn_generation += 1;
            drop(s);
            self.bump();
        }
    }

    /// Adds or replaces an L7 routing resource (by [`Routing::key`]).
    pub fn upsert_routing(&self, r: Routing) {
        self.inner.write().unwrap().routing.insert(r.key(), r);
        self.bump();
    }

    /// Removes an L7 routing resource by [`Routing::key`].
    pub fn remove_routing(&self, key: &str) {
        if self.inner.write().unwrap().routing.remove(key).is_some() {
            self.bump();
        }
    }

    /// Every L7 routing resource held, by key.
    pub fn routing(&self) -> Vec<Routing> {
        self.inner.read().unwrap().routing.values().cloned().collect()
    }

    /// The names of the RequestAuthentications that apply to the pod at `ip` in
    /// `namespace`, sorted.
    fn request_authns_for(s: &Stores, namespace: &str, ip: IpAddr) -> Vec<String> {
        let uid = s.by_ip.get(&ip).map(String::as_str);
        let mut v: Vec<String> =
            s.request_authns.iter().filter(|(_, r)| r.applies(namespace, uid)).map(|(k, _)| k.clone()).collect();
        v.sort();
        v
    }

    /// Whether a RequestAuthentication applies to the pod at `ip` in `namespace` (its
    /// inbound connections are then served as HTTP).
    pub fn has_request_authentication(&self, namespace: &str, ip: IpAddr) -> bool {
        !Self::request_authns_for(&self.inner.read().unwrap(), namespace, ip).is_empty()
    }

    /// Validates the request's token against the RequestAuthentications that apply
    /// to the pod at `ip` in `namespace` (Istio merges their rules), rewriting its
    /// headers as they say. `Ok(None)`: no token (or none applies); `Err`: the reason
    /// for a 401.
    pub fn authenticate(
        &self,
        namespace: &str,
        ip: IpAddr,
        req: &mut http::request::Parts,
    ) -> Result<Option<crate::authz::RequestAuth>, String> {
        let compiled = {
            let s = self.inner.read().unwrap();
            let names = Self::request_authns_for(&s, namespace, ip);
            if names.is_empty() {
                return Ok(None);
            }
            match s.compiled_authns.get(&names) {
                Some(c) => c.clone(),
                None => {
                    let rules = names.iter().flat_map(|n| s.request_authns[n].rules.iter().cloned()).collect();
                    let generation = s.authn_generation;
                    drop(s);
                    let (c, errors) = crate::jwt::Compiled::new(rules);
                    for e in errors {
                        tracing::warn!(pod_namespace = namespace, %ip, "RequestAuthentication: {e}; that issuer's tokens are rejected");
                    }
                    let c = Arc::new(c);
                    // Compiled outside the lock: kept only if no RequestAuthentication
                    // changed meanwhile (this request still uses what it read).
                    let mut s = self.inner.write().unwrap();
                    if s.authn_generation == generation {
                        s.compiled_authns.insert(names, c.clone());
                    }
                    c
                }
            }
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        match compiled.authenticate(req, now) {
            crate::jwt::Outcome::Anonymous => Ok(None),
            crate::jwt::Outcome::Rejected(why) => Err(why.to_string()),
            crate::jwt::Outcome::Authenticated(c) => Ok(Some(crate::authz::RequestAuth {
                principal: c.principal(),
                audiences: c.audiences.clone(),
                presenter: c.presenter.clone(),
                claims: c.raw.clone(),
            })),
        }
    }

    /// Every policy, sorted by name (admin dump).
    pub fn policies(&self) -> Vec<Arc<Policy>> {
        let mut v: Vec<_> = self.inner.read().unwrap().policies.values().cloned().collect();
        v.sort_by_key(|p| p.key());
        v
    }

    /// The policies that apply to the pod at `ip` in `namespace`: mesh-wide ones, its
    /// namespace's, and those its workload lists. Sorted by name.
    pub fn policies_for(&self, namespace: &str, ip: IpAddr) -> Vec<Arc<Policy>> {
        let s = self.inner.read().unwrap();
        let none = Vec::new();
        let listed = s.by_ip.get(&ip).and_then(|uid| s.workload_policies.get(uid)).unwrap_or(&none);
        let mut v: Vec<_> = s.policies.values().filter(|p| p.selects(namespace, listed)).cloned().collect();
        // A policy the workload names that has not arrived denies until it does.
        for name in listed.iter().filter(|n| !s.policies.contains_key(*n)) {
            v.push(Arc::new(Policy::unusable(name, "the workload names it but it has not been received".into())));
        }
        v.sort_by_key(|p| p.key());
        v
    }

    pub fn find_workload_by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        let s = self.inner.read().unwrap();
        s.by_ip.get(&ip).and_then(|uid| s.workloads.get(uid)).cloned()
    }

    /// The workload at `ip`, asked of the control plane when the agent does not hold
    /// it (see [`crate::ondemand`]); waits at most `timeout` for the answer.
    pub async fn lookup_workload_by_ip(&self, ip: IpAddr, timeout: std::time::Duration) -> Option<Arc<Workload>> {
        if let Some(w) = self.find_workload_by_ip(ip) {
            return Some(w);
        }
        self.demand.lookup(ip, timeout, || self.find_workload_by_ip(ip).is_some()).await;
        self.find_workload_by_ip(ip)
    }

    /// The on-demand lookups, for the xDS client.
    pub fn on_demand(&self) -> &crate::ondemand::OnDemand {
        &self.demand
    }

    pub fn find_workload(&self, uid: &str) -> Option<Arc<Workload>> {
        self.inner.read().unwrap().workloads.get(uid).cloned()
    }

    pub fn find_service_by_vip(&self, ip: IpAddr) -> Option<Arc<Service>> {
        let s = self.inner.read().unwrap();
        s.by_vip.get(&ip).and_then(|k| s.services.get(k)).cloned()
    }

    pub fn workloads(&self) -> Vec<Arc<Workload>> {
        let mut v: Vec<_> = self.inner.read().unwrap().workloads.values().cloned().collect();
        v.sort_by(|a, b| a.uid.cmp(&b.uid));
        v
    }

    pub fn services(&self) -> Vec<Arc<Service>> {
        let mut v: Vec<_> = self.inner.read().unwrap().services.values().cloned().collect();
        v.sort_by_key(|s| s.resource_name());
        v
    }

    /// Changes every time the store changes; the kernel sync waits on it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }
}
