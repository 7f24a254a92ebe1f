//! The Kubernetes source: list + watch of the kinds the model reads, from the API server,
//! into the same [`Objects`] the folder source makes, emitted after each debounced burst.
//!
//! One kube-runtime `watcher` per kind (Namespaces, Nodes, ServiceAccounts, Services,
//! EndpointSlices, Pods, `security.istio.io/v1` AuthorizationPolicy,
//! PeerAuthentication, RequestAuthentication, and `networking.istio.io/v1`
//! VirtualService, DestinationRule, Gateway, ServiceEntry, Sidecar, WorkloadEntry). The watcher lists, then watches from the
//! list's resourceVersion with bookmarks requested, resumes a dropped stream from the last
//! version it saw (a bookmark's too), and on `410 Gone` lists again: a relist replaces
//! the kind's objects as a whole when it completes (`InitDone`), so objects deleted
//! during the gap disappear and nothing is lost. Lists are consistent reads
//! (`resourceVersion` unset), not the API server's possibly stale cache.
//!
//! Every kind is watched as a `DynamicObject` under a static `ApiResource` (k8s-openapi's
//! for the built-in kinds, no discovery), and each object's JSON is read straight into
//! the folder's own types (one decode, errors that name the field path) and checked as
//! the folder checks it (`spec.validate()` for the Istio kinds). A rejected object is logged with
//! kind, namespace, name and field, and its last good version keeps serving.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use ::kube::runtime::watcher;
use ::kube::runtime::WatchStreamExt as _;
use futures::StreamExt as _;
use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};

use super::folder::{self, Metadata, Object, Objects};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read --kubeconfig {path}: {source}")]
    Kubeconfig { path: String, #[source] source: ::kube::config::KubeconfigError },
    #[error("no Kubernetes configuration: {0}; run in a pod with a service account, set KUBECONFIG, or pass --kubeconfig")]
    Infer(#[source] ::kube::config::InferConfigError),
    #[error("cannot make a Kubernetes client: {0}")]
    Client(#[source] ::kube::Error),
    #[error("the Kubernetes source stopped before its first complete list")]
    Stopped,
}

/// A client from `--kubeconfig`, else in-cluster config or `KUBECONFIG` / `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<::kube::Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = ::kube::config::Kubeconfig::read_from(path)
                .map_err(|source| Error::Kubeconfig { path: path.display().to_string(), source })?;
            ::kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|source| Error::Kubeconfig { path: path.display().to_string(), source })?
        }
        None => ::kube::Config::infer().await.map_err(Error::Infer)?,
    };
    ::kube::Client::try_from(config).map_err(Error::Client)
}

/// A kind we watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Node,
    ServiceAccount,
    Service,
    EndpointSlice,
    Pod,
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    Sidecar,
    WorkloadEntry,
}

impl Kind {
    pub const ALL: [Kind; 15] = [
        Kind::Namespace,
        Kind::Node,
        Kind::ServiceAccount,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
        Kind::RequestAuthentication,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::Sidecar,
        Kind::WorkloadEntry,
    ];

    /// Group, version and plural, as the API server serves them (no discovery needed).
    pub fn resource(self) -> ApiResource {
        let istio = |kind| ApiResource::from_gvk(&GroupVersionKind::gvk("security.istio.io", "v1", kind));
        let networking =
            |kind, plural| ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("networking.istio.io", "v1", kind), plural);
        match self {
            Kind::Namespace => ApiResource::erase::<core::Namespace>(&()),
            Kind::Node => ApiResource::erase::<core::Node>(&()),
            Kind::ServiceAccount => ApiResource::erase::<core::ServiceAccount>(&()),
            Kind::Service => ApiResource::erase::<core::Service>(&()),
            Kind::EndpointSlice => ApiResource::erase::<discovery::EndpointSlice>(&()),
            Kind::Pod => ApiResource::erase::<core::Pod>(&()),
            Kind::AuthorizationPolicy => istio("AuthorizationPolicy"),
            Kind::PeerAuthentication => istio("PeerAuthentication"),
            Kind::RequestAuthentication => istio("RequestAuthentication"),
            Kind::VirtualService => networking("VirtualService", "virtualservices"),
            Kind::DestinationRule => networking("DestinationRule", "destinationrules"),
            Kind::Gateway => networking("Gateway", "gateways"),
            Kind::ServiceEntry => networking("ServiceEntry", "serviceentries"),
            Kind::Sidecar => networking("Sidecar", "sidecars"),
            Kind::WorkloadEntry => networking("WorkloadEntry", "workloadentries"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Sidecar => "Sidecar",
            Kind::WorkloadEntry => "WorkloadEntry",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A Node, as far as the model may need it (not read by the model yet).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Node {
    pub metadata: Metadata,
}

/// The label that ties an EndpointSlice to its Service (same namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An EndpointSlice (`discovery.k8s.io/v1`), as far as the model needs it: the
/// endpoints of a Service without a selector (see `model::endpoints`). Read from the
/// API server and from the folder alike.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    pub metadata: Metadata,
    /// `IPv4`, `IPv6` or `FQDN`.
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub conditions: EndpointConditions,
    /// What the endpoint is: a Pod for the endpoints Kubernetes manages.
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct EndpointConditions {
    /// Unset means ready (the API's convention).
    #[serde(default)]
    pub ready: Option<bool>,
    #[serde(default)]
    pub serving: Option<bool>,
    #[serde(default)]
    pub terminating: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TargetRef {
    #[serde(default)]
    pub kind: String,
    /// The slice's namespace when unset.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct EndpointPort {
    /// The Service port's name (empty for a Service's single unnamed port).
    #[serde(default)]
    pub name: Option<String>,
    /// The port the endpoints listen on.
    #[serde(default)]
    pub port: Option<u16>,
    /// TCP when absent (the API server's default).
    #[serde(default)]
    pub protocol: Option<String>,
}

impl EndpointConditions {
    /// Whether the endpoint takes new connections: ready (or not said otherwise) and
    /// not terminating. Kubernetes never marks a terminating endpoint ready; a slice
    /// written by hand might, and `terminating` wins.
    pub fn takes_traffic(&self) -> bool {
        self.ready != Some(false) && self.terminating != Some(true)
    }
}

impl EndpointSlice {
    /// The checks the API server makes that the model relies on, as `"<path>: why"`.
    pub fn validate(&self) -> Result<(), String> {
        let v6 = match self.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            "FQDN" => return Ok(()),
            other => return Err(format!("addressType: {other:?} is not one of IPv4, IPv6, FQDN")),
        };
        for (i, ep) in self.endpoints.iter().enumerate() {
            if ep.addresses.is_empty() {
                return Err(format!("endpoints[{i}].addresses: an endpoint has at least one address"));
            }
            for (j, a) in ep.addresses.iter().enumerate() {
                match a.parse::<std::net::IpAddr>() {
                    Ok(ip) if ip.is_ipv6() == v6 => {}
                    _ => {
                        return Err(format!(
                            "endpoints[{i}].addresses[{j}]: {a:?} is not an {} address (addressType {})",
                            self.address_type, self.address_type
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

/// One object of any kind we watch, read and checked.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Object(Object),
    Node(Arc<Node>),
}

/// `(namespace, name)`; the namespace is empty for cluster-scoped kinds.
type Key = (String, String);

/// What a kind's watcher reports, already decoded.
#[derive(Debug)]
pub enum Update {
    /// A (re)list starts: what follows until `InitDone` is the kind's whole content.
    Init,
    /// An object as listed (`init`) or as changed since; `Err` is why it was rejected.
    Apply { key: Key, item: Box<Result<Item, String>>, init: bool },
    Delete { key: Key },
    InitDone,
}

/// Reads one object's JSON as `kind`, with the folder's types and checks.
pub fn decode(kind: Kind, json: serde_json::Value) -> Result<Item, String> {
    fn typed<T: serde::de::DeserializeOwned>(json: serde_json::Value) -> Result<T, String> {
        serde_path_to_error::deserialize(json).map_err(|e| format!("field `{}`: {}", e.path(), e.inner()))
    }
    fn checked(r: Result<(), String>) -> Result<(), String> {
        r.map_err(|e| match e.split_once(": ") {
            Some((path, why)) => format!("field `{path}`: {why}"),
            None => e,
        })
    }
    fn networking<S>(json: serde_json::Value) -> Result<super::networking::Object<S>, String>
    where
        S: serde::de::DeserializeOwned + super::networking::SpecCheck + Default,
    {
        let o: super::networking::Object<S> = typed(json)?;
        checked(o.validate())?;
        Ok(o)
    }
    Ok(match kind {
        Kind::Namespace => Item::Object(Object::Namespace(Arc::new(typed(json)?))),
        Kind::ServiceAccount => Item::Object(Object::ServiceAccount(Arc::new(typed(json)?))),
        Kind::Service => Item::Object(Object::Service(Arc::new(typed(json)?))),
        Kind::Pod => Item::Object(Object::Pod(Arc::new(typed(json)?))),
        Kind::Node => Item::Node(Arc::new(typed(json)?)),
        Kind::EndpointSlice => {
            let es: EndpointSlice = typed(json)?;
            checked(es.validate())?;
            Item::Object(Object::EndpointSlice(Arc::new(es)))
        }
        Kind::AuthorizationPolicy => {
            let p: folder::AuthorizationPolicy = typed(json)?;
            checked(p.spec.validate())?;
            Item::Object(Object::AuthorizationPolicy(Arc::new(p)))
        }
        Kind::PeerAuthentication => {
            let p: folder::PeerAuthentication = typed(json)?;
            checked(p.spec.validate())?;
            Item::Object(Object::PeerAuthentication(Arc::new(p)))
        }
        Kind::RequestAuthentication => {
            let r: super::requestauth::RequestAuthentication = typed(json)?;
            checked(r.spec.validate())?;
            Item::Object(Object::RequestAuthentication(Arc::new(r)))
        }
        Kind::VirtualService => Item::Object(Object::VirtualService(Arc::new(networking(json)?))),
        Kind::DestinationRule => Item::Object(Object::DestinationRule(Arc::new(networking(json)?))),
        Kind::Gateway => Item::Object(Object::Gateway(Arc::new(networking(json)?))),
        Kind::ServiceEntry => Item::Object(Object::ServiceEntry(Arc::new(networking(json)?))),
        Kind::Sidecar => Item::Object(Object::Sidecar(Arc::new(networking(json)?))),
        Kind::WorkloadEntry => Item::Object(Object::WorkloadEntry(Arc::new(networking(json)?))),
    })
}

#[derive(Default)]
struct KindState {
    items: BTreeMap<Key, Item>,
    /// During a (re)list: what it has listed so far.
    relist: Option<BTreeMap<Key, Item>>,
    synced: bool,
}

/// Every kind's objects, last good versions, and what is rejected now. Pure: the
/// watchers feed it [`Update`]s.
#[derive(Default)]
pub struct Store {
    kinds: BTreeMap<Kind, KindState>,
    /// Why each object is rejected now.
    rejected: BTreeMap<(Kind, Key), String>,
    /// Every kind's items as one [`Objects`], kept up to date item by item, so that a
    /// change costs what changed, not the size of the cluster.
    objects: Objects,
}

impl Store {
    /// Applies one update; true when what [`Store::objects`] returns may have changed.
    pub fn apply(&mut self, kind: Kind, update: Update) -> bool {
        let state = self.kinds.entry(kind).or_default();
        match update {
            Update::Init => {
                state.relist = Some(BTreeMap::new());
                // The list names again every object that is still rejected.
                self.rejected.retain(|(k, _), _| *k != kind);
                false
            }
            Update::Apply { key, item, init } => {
                let item = match *item {
                    Ok(item) => {
                        self.rejected.remove(&(kind, key.clone()));
                        Some(item)
                    }
                    Err(why) => {
                        // Last good version: from the store (a relist keeps it too).
                        let last = state.items.get(&key).cloned();
                        let serving = if last.is_some() {
                            "the last good version keeps serving"
                        } else {
                            "it has no good version, so nothing of it applies"
                        };
                        let label = label(kind, &key);
                        tracing::warn!(object = %label, "Kubernetes: {label} rejected: {why}; {serving}");
                        self.rejected.insert((kind, key.clone()), why);
                        last
                    }
                };
                match (init, &mut state.relist) {
                    (true, Some(relist)) => {
                        if let Some(item) = item {
                            relist.insert(key, item);
                        }
                        false
                    }
                    _ => match item {
                        Some(item) => {
                            let old = state.items.insert(key.clone(), item.clone());
                            let changed = old.as_ref() != Some(&item);
                            if changed {
                                set(&mut self.objects, &key, old.as_ref(), Some(&item));
                            }
                            changed
                        }
                        None => false,
                    },
                }
            }
            Update::Delete { key } => {
                self.rejected.remove(&(kind, key.clone()));
                let old = state.items.remove(&key);
                set(&mut self.objects, &key, old.as_ref(), None);
                old.is_some()
            }
            Update::InitDone => {
                let listed = state.relist.take().unwrap_or_default();
                let changed = state.items != listed || !state.synced;
                for (key, old) in state.items.iter().filter(|(k, _)| !listed.contains_key(*k)) {
                    set(&mut self.objects, key, Some(old), None);
                }
                for (key, item) in &listed {
                    let old = state.items.get(key);
                    if old != Some(item) {
                        set(&mut self.objects, key, old, Some(item));
                    }
                }
                state.items = listed;
                state.synced = true;
                changed
            }
        }
    }

    /// The kinds that have not completed their first list yet.
    pub fn unsynced(&self) -> Vec<Kind> {
        Kind::ALL.into_iter().filter(|k| !self.kinds.get(k).is_some_and(|s| s.synced)).collect()
    }

    /// Objects rejected now, as `Kind ns/name: why`.
    pub fn rejected(&self) -> Vec<String> {
        self.rejected.iter().map(|((kind, key), why)| format!("{}: {why}", label(*kind, key))).collect()
    }

    pub fn objects(&self) -> Objects {
        self.objects.clone()
    }
}

#[cfg(test)]
impl Store {
    /// [`Store::objects`] built from every item afresh: what the kept one must equal.
    pub fn objects_afresh(&self) -> Objects {
        let mut o = Objects::default();
        for state in self.kinds.values() {
            for ((ns, name), item) in &state.items {
                match item.clone() {
                    Item::Object(obj) => {
                        let order = o.peer_authentications.len();
                        o.insert_named((ns.clone(), name.clone()), order, obj)
                    }
                    Item::Node(n) => drop(o.nodes.insert(name.clone(), n)),
                }
            }
        }
        o
    }
}

/// Replaces `old` with `new` at `key` in `objects`. PeerAuthentications of one age tie
/// by namespace/name (the first wins), so their order is their rank by key.
fn set(objects: &mut Objects, (ns, name): &Key, old: Option<&Item>, new: Option<&Item>) {
    let nn = (ns.clone(), name.clone());
    match old {
        Some(Item::Object(o)) => objects.remove_named(&nn, o),
        Some(Item::Node(_)) => drop(objects.nodes.remove(name)),
        None => {}
    }
    let mut reorder = matches!(old, Some(Item::Object(Object::PeerAuthentication(_))));
    match new {
        Some(Item::Object(o)) => {
            reorder |= matches!(o, Object::PeerAuthentication(_));
            objects.insert_named(nn, 0, o.clone());
        }
        Some(Item::Node(n)) => drop(objects.nodes.insert(name.clone(), n.clone())),
        None => {}
    }
    if reorder {
        let pas = &mut objects.peer_authentications;
        let moved: Vec<(Key, usize)> =
            pas.iter().enumerate().filter(|(rank, (_, (order, _)))| order != rank).map(|(rank, (k, _))| (k.clone(), rank)).collect();
        for (k, rank) in moved {
            if let Some(pa) = pas.get_mut(&k) {
                pa.0 = rank;
            }
        }
    }
}

fn label(kind: Kind, (ns, name): &Key) -> String {
    format!("{kind} {ns}/{name}")
}

/// A running Kubernetes source; dropping it stops the watches.
pub struct Source {
    /// Every object now, replaced after each debounced burst of changes.
    pub objects: watch::Receiver<Arc<Objects>>,
    /// The objects rejected now (`Kind ns/name: why`).
    pub rejected: watch::Receiver<Vec<String>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Source {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts a watcher per kind and returns once every kind has been listed once.
/// Changes are debounced: emitted after `quiet` without one, or `max` after the first.
pub async fn start(client: ::kube::Client, quiet: Duration, max: Duration) -> Result<Source, Error> {
    let (tx, rx) = mpsc::channel(1024);
    let mut tasks: Vec<_> = Kind::ALL.into_iter().map(|k| tokio::spawn(watch_kind(client.clone(), k, tx.clone()))).collect();
    drop(tx);
    let (first_tx, first_rx) = oneshot::channel();
    tasks.push(tokio::spawn(run_store(rx, quiet, max, first_tx)));
    let mut source = Source { objects: watch::channel(Arc::new(Objects::default())).1, rejected: watch::channel(Vec::new()).1, tasks };
    let (objects, rejected) = first_rx.await.map_err(|_| Error::Stopped)?;
    source.objects = objects;
    source.rejected = rejected;
    Ok(source)
}

type Channels = (watch::Receiver<Arc<Objects>>, watch::Receiver<Vec<String>>);
/// The senders of [`Channels`].
type Senders = (watch::Sender<Arc<Objects>>, watch::Sender<Vec<String>>);

async fn run_store(mut rx: mpsc::Receiver<(Kind, Update)>, quiet: Duration, max: Duration, first: oneshot::Sender<Channels>) {
    use tokio::time::{timeout_at, Instant};
    let mut store = Store::default();
    let mut first = Some(first);
    let mut out: Option<Senders> = None;
    const NAG: Duration = Duration::from_secs(10);
    let mut nag_at = Instant::now() + NAG;
    loop {
        let next = if out.is_none() {
            if Instant::now() >= nag_at {
                nag_at = Instant::now() + NAG;
                let waiting: Vec<String> = store.unsynced().iter().map(|k| k.to_string()).collect();
                tracing::warn!(
                    "Kubernetes: still waiting for the first complete list of {}; not serving until then \
                     (is the API server reachable, are Istio's CRDs installed, may the service account list and watch them?)",
                    waiting.join(", ")
                );
            }
            match timeout_at(nag_at, rx.recv()).await {
                Ok(n) => n,
                Err(_) => continue,
            }
        } else {
            rx.recv().await
        };
        let Some((kind, update)) = next else { return };
        let mut changed = store.apply(kind, update);
        let deadline = Instant::now() + max;
        loop {
            let quiet_end = (Instant::now() + quiet).min(deadline);
            match timeout_at(quiet_end, rx.recv()).await {
                Ok(Some((kind, update))) => {
                    changed |= store.apply(kind, update);
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                Ok(None) => return,
                Err(_) => break,
            }
        }
        if !store.unsynced().is_empty() {
            continue;
        }
        match &out {
            None => {
                let objects = store.objects();
                tracing::info!(pods = objects.pods.len(), services = objects.services.len(), "Kubernetes: first complete list");
                let o = watch::channel(Arc::new(objects));
                let r = watch::channel(store.rejected());
                if let Some(first) = first.take() {
                    if first.send((o.1, r.1)).is_err() {
                        return;
                    }
                }
                out = Some((o.0, r.0));
            }
            Some((objects, rejected)) => {
                rejected.send_if_modified(|cur| {
                    let next = store.rejected();
                    let modified = *cur != next;
                    *cur = next;
                    modified
                });
                if changed {
                    let next = store.objects();
                    objects.send_if_modified(|cur| {
                        let modified = **cur != next;
                        *cur = Arc::new(next);
                        modified
                    });
                }
            }
        }
    }
}

/// Lists and watches one kind for as long as the store listens.
async fn watch_kind(client: ::kube::Client, kind: Kind, tx: mpsc::Sender<(Kind, Update)>) {
    let api: Api<DynamicObject> = Api::all_with(client, &kind.resource());
    // Bookmarks are requested (the default); lists are consistent reads.
    let config = watcher::Config::default().list_semantic(watcher::ListSemantic::MostRecent);
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    // A failing API server is named once per 30 s per kind, not at every retry.
    let mut warned: Option<std::time::Instant> = None;
    while let Some(event) = events.next().await {
        if event.is_ok() {
            warned = None;
        }
        let key = |o: &DynamicObject| (o.metadata.namespace.clone().unwrap_or_default(), o.metadata.name.clone().unwrap_or_default());
        let item = |o: DynamicObject| Box::new(serde_json::to_value(o).map_err(|e| e.to_string()).and_then(|json| decode(kind, json)));
        let update = match event {
            Ok(watcher::Event::Init) => Update::Init,
            Ok(watcher::Event::InitApply(o)) => Update::Apply { key: key(&o), item: item(o), init: true },
            Ok(watcher::Event::Apply(o)) => Update::Apply { key: key(&o), item: item(o), init: false },
            Ok(watcher::Event::Delete(o)) => Update::Delete { key: key(&o) },
            Ok(watcher::Event::InitDone) => Update::InitDone,
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                tracing::info!(%kind, "Kubernetes: {kind} watch: resource version too old (410 Gone); listing again");
                continue;
            }
            Err(e) if warned.is_some_and(|t| t.elapsed() < Duration::from_secs(30)) => {
                tracing::debug!(%kind, "Kubernetes: {kind} list/watch failed again: {e}");
                continue;
            }
            Err(e) => {
                warned = Some(std::time::Instant::now());
                tracing::warn!(%kind, "Kubernetes: {kind} list/watch failed: {e}; retrying with backoff (is the API server reachable? may this service account list and watch {}?)", kind.resource().plural);
                continue;
            }
        };
        if tx.send((kind, update)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
