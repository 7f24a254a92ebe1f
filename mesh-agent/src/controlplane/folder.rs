//! The folder source: Kubernetes objects read from `*.yaml`/`*.yml` files, and a watch on them.
//!
//! Each YAML document is parsed on its own: a bad document is reported (file, line, field
//! path) and rejected, the others apply, and the last good version of the object it held
//! keeps serving.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;

pub use super::authorization::AuthorizationPolicy;
use super::networking::{self, DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry};
pub use super::peerauth::PeerAuthentication;

/// A document that could not be used; the message is meant for the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}:{line}: {kind} field `{path}`: {message}; this document is ignored and the last good version of its object keeps serving")]
    Field { file: String, line: usize, kind: String, path: String, message: String },
    #[error("{file}:{line}: not valid YAML: {message}; this document is ignored and the last good version of its object keeps serving")]
    Syntax { file: String, line: usize, message: String },
    #[error("{file}:{line}: {message}")]
    Object { file: String, line: usize, message: String },
    #[error("cannot read {file}: {source}; its objects keep their last good version")]
    Read { file: String, #[source] source: std::io::Error },
    #[error("cannot watch config folder {dir}: {source}; is it a directory the agent can read (inotify limits: fs.inotify.max_user_watches)?")]
    Watch { dir: String, #[source] source: notify::Error },
}

/// `kind/namespace/name` of an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// RFC 3339; decides which of two PeerAuthentications at one level wins.
    #[serde(default, rename = "creationTimestamp")]
    pub creation_timestamp: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Namespace {
    pub metadata: Metadata,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ServiceAccount {
    pub metadata: Metadata,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Service {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<ServicePortSpec>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub target_port: Option<TargetPort>,
    #[serde(default)]
    pub protocol: Option<String>,
}

/// A Service port's `targetPort`: a container port number, or the name of a container
/// port, which each endpoint pod resolves against its own ports (as Kubernetes'
/// endpoints controller does).
#[derive(Clone, Debug, PartialEq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// Why `name` is not an IANA_SVC_NAME (what Kubernetes accepts as a port name), if it
/// is not one: 1 to 15 lowercase letters, digits and '-', at least one letter, no '-'
/// at either end and no "--".
pub fn iana_svc_name_error(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 15 {
        Some("a port name has 1 to 15 characters")
    } else if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        Some("a port name has only lowercase letters, digits and '-'")
    } else if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        Some("a port name has at least one letter (a number here must be written without quotes)")
    } else if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        Some("a port name neither starts nor ends with '-' and has no \"--\"")
    } else {
        None
    }
}

impl<'de> Deserialize<'de> for TargetPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TargetPort;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port number from 1 to 65535 or a container port name")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<TargetPort, E> {
                match u16::try_from(v) {
                    Ok(p) if p > 0 => Ok(TargetPort::Number(p)),
                    _ => Err(E::custom(format!("port {v} is out of range 1-65535"))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<TargetPort, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("port {v} is out of range 1-65535"))),
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TargetPort, E> {
                match iana_svc_name_error(v) {
                    None => Ok(TargetPort::Name(v.to_string())),
                    Some(why) => Err(E::custom(format!("{v:?} is neither a port number nor a valid port name: {why}"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Pod {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Container {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default)]
    pub name: Option<String>,
    pub container_port: u16,
    /// TCP when absent (the API server's default).
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<IpAddr>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub conditions: Vec<PodCondition>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PodCondition {
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    #[serde(default)]
    pub status: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PodIp {
    pub ip: IpAddr,
}

impl Pod {
    /// Whether it may take traffic as a service endpoint, as the EndpointSlice
    /// controller judges it: its `Ready` condition is `True`, and it has not finished
    /// (`Succeeded`, `Failed`). A pod written without conditions (a folder of YAML, the
    /// demo) is ready.
    pub fn ready(&self) -> bool {
        let finished = matches!(self.status.phase.as_deref(), Some("Succeeded" | "Failed"));
        let condition = self.status.conditions.iter().find(|c| c.kind == "Ready");
        !finished && condition.is_none_or(|c| c.status == "True")
    }

    pub fn service_account(&self) -> &str {
        self.spec.service_account_name.as_deref().filter(|s| !s.is_empty()).unwrap_or("default")
    }

    /// The number of the TCP container port called `name`, as Kubernetes (and istiod)
    /// resolve a Service's named `targetPort`: the first of the containers' ports with
    /// that name and protocol TCP.
    pub fn tcp_port_named(&self, name: &str) -> Option<u16> {
        self.spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|p| p.name.as_deref() == Some(name) && p.protocol.as_deref().is_none_or(|p| p.eq_ignore_ascii_case("TCP")))
            .map(|p| p.container_port)
    }

    /// `podIPs`, or `podIP` when the list is absent; deduplicated, in order.
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.status.pod_ips.iter().map(|p| p.ip).collect();
        if let Some(ip) = self.status.pod_ip {
            if !v.contains(&ip) {
                v.insert(0, ip);
            }
        }
        v
    }
}

/// One object of a kind we understand. Shared: the folder, the Kubernetes store and
/// every `Objects` handed out hold the same copy, so handing out the whole config after
/// a change costs no deep copies (and the model tells changed objects by pointer).
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Arc<Namespace>),
    ServiceAccount(Arc<ServiceAccount>),
    Service(Arc<Service>),
    Pod(Arc<Pod>),
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
    PeerAuthentication(Arc<PeerAuthentication>),
    RequestAuthentication(Arc<super::requestauth::RequestAuthentication>),
    VirtualService(Arc<VirtualService>),
    DestinationRule(Arc<DestinationRule>),
    Gateway(Arc<Gateway>),
    ServiceEntry(Arc<ServiceEntry>),
    Sidecar(Arc<Sidecar>),
    WorkloadEntry(Arc<WorkloadEntry>),
    EndpointSlice(Arc<super::kube::EndpointSlice>),
}

/// One kind's objects: a persistent map, so that handing out the whole config after a
/// change copies no map (a clone shares every node; a change copies only its path), and
/// the model finds what changed since its last build by comparing two of them
/// ([`imbl::OrdMap::diff`] skips the nodes they share).
pub type Map<K, V> = imbl::OrdMap<K, V>;

impl Object {
    /// Whether `other` is this very object (the same `Arc`), not only an equal one.
    pub fn same(&self, other: &Object) -> bool {
        use Object::*;
        match (self, other) {
            (Namespace(a), Namespace(b)) => Arc::ptr_eq(a, b),
            (ServiceAccount(a), ServiceAccount(b)) => Arc::ptr_eq(a, b),
            (Service(a), Service(b)) => Arc::ptr_eq(a, b),
            (Pod(a), Pod(b)) => Arc::ptr_eq(a, b),
            (AuthorizationPolicy(a), AuthorizationPolicy(b)) => Arc::ptr_eq(a, b),
            (PeerAuthentication(a), PeerAuthentication(b)) => Arc::ptr_eq(a, b),
            (RequestAuthentication(a), RequestAuthentication(b)) => Arc::ptr_eq(a, b),
            (VirtualService(a), VirtualService(b)) => Arc::ptr_eq(a, b),
            (DestinationRule(a), DestinationRule(b)) => Arc::ptr_eq(a, b),
            (Gateway(a), Gateway(b)) => Arc::ptr_eq(a, b),
            (ServiceEntry(a), ServiceEntry(b)) => Arc::ptr_eq(a, b),
            (Sidecar(a), Sidecar(b)) => Arc::ptr_eq(a, b),
            (WorkloadEntry(a), WorkloadEntry(b)) => Arc::ptr_eq(a, b),
            (EndpointSlice(a), EndpointSlice(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// Everything the folder holds now, by kind (objects shared, see [`Object`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Objects {
    pub namespaces: Map<String, Arc<Namespace>>,
    pub service_accounts: Map<(String, String), Arc<ServiceAccount>>,
    pub services: Map<(String, String), Arc<Service>>,
    pub pods: Map<(String, String), Arc<Pod>>,
    pub authorization_policies: Map<(String, String), Arc<AuthorizationPolicy>>,
    /// With the order they were read in (file, then document): the tie-break of
    /// PeerAuthentications of one age.
    pub peer_authentications: Map<(String, String), (usize, Arc<PeerAuthentication>)>,
    pub request_authentications: Map<(String, String), Arc<super::requestauth::RequestAuthentication>>,
    /// `networking.istio.io` kinds, validated; see `networking::convert` for their
    /// served forms.
    pub virtual_services: Map<(String, String), Arc<VirtualService>>,
    pub destination_rules: Map<(String, String), Arc<DestinationRule>>,
    pub gateways: Map<(String, String), Arc<Gateway>>,
    pub service_entries: Map<(String, String), Arc<ServiceEntry>>,
    pub sidecars: Map<(String, String), Arc<Sidecar>>,
    pub workload_entries: Map<(String, String), Arc<WorkloadEntry>>,
    /// From the Kubernetes source only; the model does not read them.
    pub nodes: Map<String, Arc<super::kube::Node>>,
    /// `discovery.k8s.io/v1`, from either source: the endpoints of Services without a
    /// selector (see `model::endpoints`).
    pub endpoint_slices: Map<(String, String), Arc<super::kube::EndpointSlice>>,
}

impl Objects {
    /// Puts `o` in its kind's map under `(namespace, name)` (a Namespace under its
    /// name); `order` is the PeerAuthentication tie-break.
    pub(super) fn insert_named(&mut self, nn: (String, String), order: usize, o: Object) {
        match o {
            Object::Namespace(n) => drop(self.namespaces.insert(nn.1, n)),
            Object::ServiceAccount(s) => drop(self.service_accounts.insert(nn, s)),
            Object::Service(s) => drop(self.services.insert(nn, s)),
            Object::Pod(p) => drop(self.pods.insert(nn, p)),
            Object::AuthorizationPolicy(p) => drop(self.authorization_policies.insert(nn, p)),
            Object::PeerAuthentication(p) => drop(self.peer_authentications.insert(nn, (order, p))),
            Object::RequestAuthentication(r) => drop(self.request_authentications.insert(nn, r)),
            Object::VirtualService(v) => drop(self.virtual_services.insert(nn, v)),
            Object::DestinationRule(d) => drop(self.destination_rules.insert(nn, d)),
            Object::Gateway(g) => drop(self.gateways.insert(nn, g)),
            Object::ServiceEntry(e) => drop(self.service_entries.insert(nn, e)),
            Object::Sidecar(s) => drop(self.sidecars.insert(nn, s)),
            Object::WorkloadEntry(w) => drop(self.workload_entries.insert(nn, w)),
            Object::EndpointSlice(e) => drop(self.endpoint_slices.insert(nn, e)),
        }
    }

    /// Takes `(namespace, name)` out of the map of `o`'s kind.
    pub(super) fn remove_named(&mut self, nn: &(String, String), o: &Object) {
        match o {
            Object::Namespace(_) => drop(self.namespaces.remove(&nn.1)),
            Object::ServiceAccount(_) => drop(self.service_accounts.remove(nn)),
            Object::Service(_) => drop(self.services.remove(nn)),
            Object::Pod(_) => drop(self.pods.remove(nn)),
            Object::AuthorizationPolicy(_) => drop(self.authorization_policies.remove(nn)),
            Object::PeerAuthentication(_) => drop(self.peer_authentications.remove(nn)),
            Object::RequestAuthentication(_) => drop(self.request_authentications.remove(nn)),
            Object::VirtualService(_) => drop(self.virtual_services.remove(nn)),
            Object::DestinationRule(_) => drop(self.destination_rules.remove(nn)),
            Object::Gateway(_) => drop(self.gateways.remove(nn)),
            Object::ServiceEntry(_) => drop(self.service_entries.remove(nn)),
            Object::Sidecar(_) => drop(self.sidecars.remove(nn)),
            Object::WorkloadEntry(_) => drop(self.workload_entries.remove(nn)),
            Object::EndpointSlice(_) => drop(self.endpoint_slices.remove(nn)),
        }
    }
}

/// The objects of namespace `ns` in a map keyed `(namespace, name)`: a range, not a scan.
pub fn in_namespace<'a, T>(
    map: &'a Map<(String, String), T>,
    ns: &'a str,
) -> impl Iterator<Item = (&'a (String, String), &'a T)> + 'a {
    map.range((ns.to_string(), String::new())..).take_while(move |((n, _), _)| n == ns)
}

/// Where an object came from: file and document index.
type Origin = (Arc<Path>, usize);

/// The folder's parsed state, remembering the last good version of every object.
///
/// A reload reads every file, but only the files whose text changed (and files with a
/// rejected document, whose errors are reported again) are parsed and applied: their
/// old definitions are retracted, their new ones added, and only the keys they touch
/// are settled again, so a reload costs what changed, not the size of the folder.
#[derive(Default)]
pub struct Folder {
    /// What serves now: each object's last good version and where it came from.
    last_good: HashMap<ObjectKey, (Origin, Object)>,
    /// The keys of `last_good` by the file they came from.
    served_from: HashMap<Arc<Path>, HashSet<ObjectKey>>,
    /// Each file whose documents all parsed: its text (an unchanged file is skipped).
    parsed: HashMap<PathBuf, String>,
    /// Every good definition of each key now, by origin: the last one serves (a key
    /// defined twice is reported, and the later definition wins).
    defs: HashMap<ObjectKey, BTreeMap<Origin, Object>>,
    /// The keys each file defines now.
    file_keys: HashMap<PathBuf, Vec<ObjectKey>>,
    /// Each file's good documents by their text: a document read before, word for word,
    /// is not parsed again and keeps its object (the same `Arc`, so the model sees it
    /// unchanged); a file with one edit costs one parse.
    documents: HashMap<PathBuf, HashMap<String, (ObjectKey, Object)>>,
    /// `last_good` by kind.
    objects: Objects,
}

/// One document as text, with the file line it starts on (1-based).
struct Doc<'a> {
    text: &'a str,
    first_line: usize,
}

fn split_documents(text: &str) -> Vec<Doc<'_>> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            docs.push(Doc { text: &text[start..offset], first_line: start_line });
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push(Doc { text: &text[start..], first_line: start_line });
    docs
}

#[derive(Deserialize)]
struct Head {
    #[serde(default, rename = "apiVersion")]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<HeadMeta>,
}

#[derive(Deserialize)]
struct HeadMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// Result of parsing one document.
enum Parsed {
    Empty,
    Skipped(String),
    Ok(ObjectKey, Object),
    /// Rejected; the key is known when at least `kind` and `metadata.name` could be read.
    Bad(Option<ObjectKey>, Error),
}

fn key_of(kind: &str, ns: Option<&str>, name: &str) -> ObjectKey {
    let namespace = if kind == "Namespace" { String::new() } else { ns.unwrap_or("default").to_string() };
    ObjectKey { kind: kind.to_string(), namespace, name: name.to_string() }
}

fn parse_document(file: &str, doc: &Doc<'_>) -> Parsed {
    let line_of = |e: &serde_yaml::Error| e.location().map_or(doc.first_line, |l| doc.first_line + l.line() - 1);
    let head: Option<Head> = match serde_yaml::from_str::<Option<serde_yaml::Value>>(doc.text) {
        Ok(None) => return Parsed::Empty,
        Ok(Some(serde_yaml::Value::Null)) => return Parsed::Empty,
        Ok(Some(_)) => serde_yaml::from_str(doc.text).ok(),
        Err(e) => {
            let line = line_of(&e);
            return Parsed::Bad(None, Error::Syntax { file: file.into(), line, message: strip_location(&e) });
        }
    };
    let Some(Head { kind: Some(kind), metadata, api_version }) = head else {
        return Parsed::Bad(None, Error::Object {
            file: file.into(),
            line: doc.first_line,
            message: "document has no `kind`; is this a Kubernetes object?".into(),
        });
    };
    let name = metadata.as_ref().and_then(|m| m.name.clone());
    let key = name.as_deref().map(|n| key_of(&kind, metadata.as_ref().and_then(|m| m.namespace.as_deref()), n));
    fn typed<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, serde_path_to_error::Error<serde_yaml::Error>> {
        serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
    }
    let result = match kind.as_str() {
        "Namespace" => typed(doc.text).map(|o| Object::Namespace(Arc::new(o))),
        "ServiceAccount" => typed(doc.text).map(|o| Object::ServiceAccount(Arc::new(o))),
        "Service" => typed(doc.text).map(|o| Object::Service(Arc::new(o))),
        "Pod" => typed(doc.text).map(|o| Object::Pod(Arc::new(o))),
        "EndpointSlice" => {
            let api = api_version.unwrap_or_default();
            if api != "discovery.k8s.io/v1" {
                return Parsed::Bad(key, wrong_api(file, doc, &kind, &api, "discovery.k8s.io/v1"));
            }
            match typed::<super::kube::EndpointSlice>(doc.text) {
                Ok(es) => match es.validate() {
                    Ok(()) => Ok(Object::EndpointSlice(Arc::new(es))),
                    Err(e) => return Parsed::Bad(key, invalid_field(file, doc, &kind, &e)),
                },
                Err(e) => Err(e),
            }
        }
        "AuthorizationPolicy" | "PeerAuthentication" | "RequestAuthentication" => {
            let api = api_version.unwrap_or_default();
            if !matches!(api.as_str(), "security.istio.io/v1" | "security.istio.io/v1beta1") {
                return Parsed::Bad(key, wrong_api(file, doc, &kind, &api, "security.istio.io/v1 or v1beta1"));
            }
            if kind == "AuthorizationPolicy" {
                match typed::<AuthorizationPolicy>(doc.text) {
                    Ok(p) => match p.spec.validate() {
                        Ok(()) => Ok(Object::AuthorizationPolicy(Arc::new(p))),
                        Err(e) => return Parsed::Bad(key, invalid_field(file, doc, &kind, &e)),
                    },
                    Err(e) => Err(e),
                }
            } else if kind == "RequestAuthentication" {
                match typed::<super::requestauth::RequestAuthentication>(doc.text) {
                    Ok(ra) => match ra.spec.validate() {
                        Ok(()) => Ok(Object::RequestAuthentication(Arc::new(ra))),
                        Err(e) => return Parsed::Bad(key, invalid_field(file, doc, &kind, &e)),
                    },
                    Err(e) => Err(e),
                }
            } else {
                match typed::<PeerAuthentication>(doc.text) {
                    Ok(pa) => match pa.spec.validate() {
                        Ok(()) => Ok(Object::PeerAuthentication(Arc::new(pa))),
                        Err(e) => return Parsed::Bad(key, invalid_field(file, doc, &kind, &e)),
                    },
                    Err(e) => Err(e),
                }
            }
        }
        k if networking::KINDS.contains(&k) => {
            let api = api_version.unwrap_or_default();
            if !networking::API_VERSIONS.contains(&api.as_str()) {
                return Parsed::Bad(key, wrong_api(file, doc, &kind, &api, "networking.istio.io/v1, v1beta1 or v1alpha3"));
            }
            let checked = match k {
                "VirtualService" => validated(doc.text, |o| Object::VirtualService(Arc::new(o))),
                "DestinationRule" => validated(doc.text, |o| Object::DestinationRule(Arc::new(o))),
                "Gateway" => validated(doc.text, |o| Object::Gateway(Arc::new(o))),
                "ServiceEntry" => validated(doc.text, |o| Object::ServiceEntry(Arc::new(o))),
                "Sidecar" => validated(doc.text, |o| Object::Sidecar(Arc::new(o))),
                _ => validated(doc.text, |o| Object::WorkloadEntry(Arc::new(o))),
            };
            match checked {
                Ok(Err(e)) => return Parsed::Bad(key, invalid_field(file, doc, &kind, &e)),
                Ok(Ok(o)) => Ok(o),
                Err(e) => Err(e),
            }
        }
        other => return Parsed::Skipped(other.to_string()),
    };
    match result {
        Ok(obj) => match key {
            Some(key) if !key.name.is_empty() => Parsed::Ok(key, obj),
            _ => Parsed::Bad(None, Error::Object {
                file: file.into(),
                line: doc.first_line,
                message: format!("{kind} has no metadata.name; this document is ignored"),
            }),
        },
        Err(e) => {
            let line = line_of(e.inner());
            let path = e.path().to_string();
            // serde_yaml may start its message with (part of) the path we already name.
            let message = strip_location(e.inner());
            let message = match message.split_once(": ") {
                Some((p, rest)) if !p.is_empty() && !p.contains(' ') && path.starts_with(p) => rest.to_string(),
                _ => message,
            };
            Parsed::Bad(key, Error::Field { file: file.into(), line, kind, path, message })
        }
    }
}

type TypedError = serde_path_to_error::Error<serde_yaml::Error>;

/// A networking object read and checked: `Ok(Err(why))` when it reads but is invalid.
fn validated<S>(text: &str, wrap: fn(networking::Object<S>) -> Object) -> Result<Result<Object, String>, TypedError>
where
    S: serde::de::DeserializeOwned + networking::SpecCheck + Default,
{
    let o: networking::Object<S> = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))?;
    Ok(o.validate().map(|()| wrap(o)))
}

fn wrong_api(file: &str, doc: &Doc<'_>, kind: &str, api: &str, expected: &str) -> Error {
    Error::Object {
        file: file.into(),
        line: doc.first_line,
        message: format!(
            "{kind} with apiVersion {api:?}: expected {expected}; \
             this document is ignored and the last good version of its object keeps serving"
        ),
    }
}

/// A semantic check's `"<path>: <message>"` as a field error, on the line the path
/// leads to in the document (its first line if the path cannot be followed).
fn invalid_field(file: &str, doc: &Doc<'_>, kind: &str, e: &str) -> Error {
    let (path, message) = e.split_once(": ").unwrap_or(("spec", e));
    let line = doc.first_line + line_of_path(doc.text, path);
    Error::Field { file: file.into(), line, kind: kind.into(), path: path.into(), message: message.into() }
}

/// The 0-based line of `path` (`spec.http[1].route[0].weight`) in block-style YAML:
/// each key is looked for below the previous one, and `[i]` picks the i-th `- ` item
/// under its key. Stops at the deepest part it can follow.
fn line_of_path(text: &str, path: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let is_key = |l: &str, key: &str| {
        let t = l.trim_start();
        let t = t.strip_prefix("- ").unwrap_or(t);
        t.starts_with(&format!("{key}:")) || l.contains(&format!("{{{key}:")) || l.contains(&format!(", {key}:"))
    };
    let mut at = 0;
    for segment in path.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        if !key.chars().next().is_some_and(char::is_alphabetic) {
            continue;
        }
        let Some(found) = lines.iter().skip(at).position(|l| is_key(l, key)) else { break };
        at += found;
        // A flow list (`key: [a, b]`) is on the key's line: its items are not lines.
        let flow = lines[at].split_once(&format!("{key}:")).is_some_and(|(_, rest)| rest.trim_start().starts_with('['));
        if flow {
            break;
        }
        if let Some(i) = index {
            let indent = |l: &str| l.len() - l.trim_start().len();
            let items: Vec<usize> = (at + 1..lines.len()).filter(|&n| lines[n].trim_start().starts_with("- ")).collect();
            let Some(&first) = items.first() else { break };
            match items.iter().filter(|&&n| indent(lines[n]) == indent(lines[first])).nth(i) {
                Some(&n) => at = n,
                None => break,
            }
        }
    }
    at
}

/// serde_yaml appends " at line L column C"; we report the file line ourselves.
fn strip_location(e: &serde_yaml::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Largest config file read: Kubernetes keeps an object under ~1.5 MiB, so a file this
/// size is thousands of objects or a mistake; larger ones are refused (as unreadable:
/// what they served keeps serving) rather than read into memory.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// A config file's text, refusing files over [`MAX_FILE_BYTES`].
fn read_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB (MAX_FILE_BYTES); split it into smaller files",
            MAX_FILE_BYTES >> 20
        )));
    }
    Ok(text)
}

/// Every `*.yaml`/`*.yml` file under `dir`, sorted, recursively; hidden entries are skipped
/// (editors' swap files, Kubernetes ConfigMap `..data` links).
pub fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Folder {
    /// Parses the given files (path, contents; `Err` when unreadable) into objects.
    /// Returns what serves now and the documents that were rejected.
    pub fn apply(&mut self, files: Vec<(PathBuf, std::io::Result<String>)>) -> (Objects, Vec<Error>) {
        let listed: HashSet<&Path> = files.iter().map(|(p, _)| p.as_path()).collect();
        let gone: Vec<PathBuf> = self.file_keys.keys().filter(|p| !listed.contains(p.as_path())).cloned().collect();
        self.apply_changes(files, gone)
    }

    /// Reads just the files named in `changes` (those that no longer exist are gone).
    pub fn apply_files(&mut self, changes: &BTreeSet<PathBuf>) -> (Objects, Vec<Error>) {
        let (mut present, mut gone) = (Vec::new(), Vec::new());
        for path in changes {
            match read_file(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => gone.push(path.clone()),
                text => present.push((path.clone(), text)),
            }
        }
        self.apply_changes(present, gone)
    }

    /// Applies `files` (new, changed or unchanged) and forgets the files in `gone`.
    fn apply_changes(&mut self, files: Vec<(PathBuf, std::io::Result<String>)>, gone: Vec<PathBuf>) -> (Objects, Vec<Error>) {
        let mut errors = Vec::new();
        let mut keep_origins: Vec<Origin> = Vec::new();
        let mut keep_files: Vec<Arc<Path>> = Vec::new();
        let mut keep_keys: Vec<ObjectKey> = Vec::new();
        // Files that changed (or went away): what they defined, and what they served,
        // is settled again.
        let mut changed: HashSet<Arc<Path>> = HashSet::new();
        let mut touched: HashSet<ObjectKey> = HashSet::new();
        for path in gone {
            self.retract(&path, &mut touched);
            self.parsed.remove(&path);
            self.documents.remove(&path);
            changed.insert(Arc::from(path.as_path()));
        }
        // Every changed file's old definitions go before any new one is added, so that
        // an object moving between files is not taken for a duplicate.
        let mut readable = Vec::new();
        for (path, text) in files {
            let origin_file: Arc<Path> = Arc::from(path.as_path());
            match text {
                Ok(t) if self.parsed.get(&path).is_some_and(|old| *old == t) => {}
                Ok(t) => {
                    self.retract(&path, &mut touched);
                    changed.insert(origin_file.clone());
                    readable.push((path, origin_file, t));
                }
                Err(source) => {
                    errors.push(Error::Read { file: path.display().to_string(), source });
                    self.retract(&path, &mut touched);
                    // Known, so that its kept objects go when it does.
                    self.file_keys.insert(path.clone(), Vec::new());
                    self.parsed.remove(&path);
                    self.documents.remove(&path);
                    keep_files.push(origin_file.clone());
                    changed.insert(origin_file);
                }
            }
        }
        for (path, origin_file, text) in readable {
            let file = path.display().to_string();
            let mut all_good = true;
            let mut keys = Vec::new();
            let known = self.documents.remove(&path).unwrap_or_default();
            let mut good = HashMap::new();
            for (i, doc) in split_documents(&text).iter().enumerate() {
                let parsed = match known.get(doc.text) {
                    Some((key, obj)) => Parsed::Ok(key.clone(), obj.clone()),
                    None => parse_document(&file, doc),
                };
                match parsed {
                    Parsed::Empty => {}
                    Parsed::Skipped(kind) => {
                        tracing::debug!(file, line = doc.first_line, kind, "config: skipping a kind this version does not use");
                    }
                    Parsed::Ok(key, obj) => {
                        let defs = self.defs.entry(key.clone()).or_default();
                        if let Some(((f, _), _)) = defs.iter().next() {
                            errors.push(Error::Object {
                                file: file.clone(),
                                line: doc.first_line,
                                message: format!(
                                    "{} {}/{} is also defined in {}; the later definition wins",
                                    key.kind, key.namespace, key.name, f.display()
                                ),
                            });
                        }
                        good.insert(doc.text.to_string(), (key.clone(), obj.clone()));
                        defs.insert((origin_file.clone(), i), obj);
                        touched.insert(key.clone());
                        keys.push(key);
                    }
                    Parsed::Bad(key, e) => {
                        all_good = false;
                        errors.push(e);
                        keep_origins.push((origin_file.clone(), i));
                        touched.extend(key.clone());
                        keep_keys.extend(key);
                    }
                }
            }
            self.file_keys.insert(path.clone(), keys);
            self.documents.insert(path.clone(), good);
            if all_good {
                self.parsed.insert(path, text);
            } else {
                self.parsed.remove(&path);
            }
        }
        if changed.is_empty() {
            return (self.objects.clone(), errors);
        }
        // What a changed file served is settled again too (it may have to go, or stay
        // as the last good version of a rejected document).
        touched.extend(changed.iter().filter_map(|f| self.served_from.get(f)).flatten().cloned());
        let mut peer_authentications = false;
        for key in touched {
            let serving = self.defs.get(&key).and_then(|d| d.iter().next_back()).map(|(o, obj)| (o.clone(), obj.clone()));
            let nn = (key.namespace.clone(), key.name.clone());
            let next = match serving {
                Some(s) => Some(s),
                // Last good config: a rejected document keeps what it (or its object) last served.
                None => self.last_good.get(&key).filter(|(origin, _)| {
                    keep_keys.contains(&key) || keep_origins.contains(origin) || keep_files.contains(&origin.0)
                }).cloned(),
            };
            // The same object (perhaps from another document index): the maps keep it
            // as they are (an insert copies its path, and a file with one edit settles
            // all of its keys); only where it came from may change.
            if let (Some((origin, obj)), Some((now, same))) = (self.last_good.get_mut(&key), next.as_ref()) {
                if same.same(obj) && origin.0 == now.0 {
                    peer_authentications |= *origin != *now && matches!(obj, Object::PeerAuthentication(_));
                    *origin = now.clone();
                    continue;
                }
            }
            if let Some(((file, _), obj)) = self.last_good.remove(&key) {
                peer_authentications |= matches!(obj, Object::PeerAuthentication(_));
                self.objects.remove_named(&nn, &obj);
                if let Some(keys) = self.served_from.get_mut(&file) {
                    keys.remove(&key);
                    if keys.is_empty() {
                        self.served_from.remove(&file);
                    }
                }
            }
            if let Some((origin, obj)) = next {
                peer_authentications |= matches!(obj, Object::PeerAuthentication(_));
                self.objects.insert_named(nn, 0, obj.clone());
                self.served_from.entry(origin.0.clone()).or_default().insert(key.clone());
                self.last_good.insert(key, (origin, obj));
            }
        }
        if peer_authentications {
            self.order_peer_authentications();
        }
        (self.objects.clone(), errors)
    }

    /// Takes back what `path` defined; the keys it defined are `touched`.
    fn retract(&mut self, path: &Path, touched: &mut HashSet<ObjectKey>) {
        for key in self.file_keys.remove(path).unwrap_or_default() {
            if let Some(defs) = self.defs.get_mut(&key) {
                defs.retain(|(f, _), _| **f != *path);
                if defs.is_empty() {
                    self.defs.remove(&key);
                }
            }
            touched.insert(key);
        }
    }

    /// Reading order (file, then document) is the tie-break of PeerAuthentications of
    /// one age.
    fn order_peer_authentications(&mut self) {
        let mut origins: Vec<(&Origin, &ObjectKey)> = self
            .last_good
            .iter()
            .filter(|(_, (_, o))| matches!(o, Object::PeerAuthentication(_)))
            .map(|(k, (o, _))| (o, k))
            .collect();
        origins.sort();
        for (order, (_, key)) in origins.into_iter().enumerate() {
            if let Some(pa) = self.objects.peer_authentications.get_mut(&(key.namespace.clone(), key.name.clone())) {
                pa.0 = order;
            }
        }
    }

    /// Reads every YAML file under `dir` and applies it.
    pub fn load(&mut self, dir: &Path) -> Result<(Objects, Vec<Error>), std::io::Error> {
        let files = yaml_files(dir)?;
        let contents = files.into_iter().map(|p| {
            let t = read_file(&p);
            (p, t)
        });
        Ok(self.apply(contents.collect()))
    }
}

/// The watcher (keep it alive), a `()` per debounced burst, and what changed.
pub type Watch = (notify::RecommendedWatcher, mpsc::Receiver<()>, Arc<std::sync::Mutex<Changes>>);

/// What changed in the folder since the last reload.
#[derive(Debug, Default)]
pub struct Changes {
    /// Reread everything: an event that does not name one visible YAML file (a
    /// directory, a hidden entry such as a ConfigMap's `..data` link swap, a watch
    /// error).
    pub everything: bool,
    /// Otherwise the YAML files created, written or removed.
    pub files: BTreeSet<PathBuf>,
}

impl Changes {
    fn add(&mut self, dir: &Path, paths: Option<&[PathBuf]>) {
        let Some(paths) = paths else {
            self.everything = true;
            return;
        };
        for p in paths {
            let visible = p.strip_prefix(dir).is_ok_and(|rel| {
                !rel.components().any(|c| c.as_os_str().to_str().is_none_or(|s| s.starts_with('.')))
            });
            let yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
            if visible && yaml && !p.is_dir() {
                self.files.insert(p.clone());
            } else {
                self.everything = true;
            }
        }
    }
}

/// Watches `dir` (inotify, recursive) and sends `()` once per debounced burst of changes:
/// `quiet` after the last event, or at most `max` after the first one, both counted from
/// when the events happened. What changed is gathered in the returned [`Changes`], which
/// the reader takes. The returned watcher must be kept alive.
pub fn watch(
    dir: &Path,
    quiet: Duration,
    max: Duration,
) -> Result<Watch, Error> {
    use notify::Watcher as _;
    use std::sync::mpsc::RecvTimeoutError;
    use std::time::Instant;
    let watch_error = |source| Error::Watch { dir: dir.display().to_string(), source };
    let (raw_tx, raw_rx) = std::sync::mpsc::channel::<(Instant, Option<Vec<PathBuf>>)>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| match ev {
        Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) => {}
        Ok(ev) => {
            let _ = raw_tx.send((Instant::now(), (!ev.paths.is_empty()).then_some(ev.paths)));
        }
        Err(e) => {
            tracing::warn!("config: file watch error: {e}; reloading to be safe");
            let _ = raw_tx.send((Instant::now(), None));
        }
    })
    .map_err(watch_error)?;
    watcher.watch(dir, notify::RecursiveMode::Recursive).map_err(watch_error)?;
    let (tx, rx) = mpsc::channel(1);
    let pending = Arc::new(std::sync::Mutex::new(Changes::default()));
    let (gathered, dir) = (pending.clone(), dir.to_path_buf());
    // A thread, not a task: the runtime's timer wakes on whole milliseconds (1-2 ms
    // after the deadline, measured), a thread's timed wait close to it. It ends when
    // the watcher is dropped.
    let debounce = move || {
        while let Ok((first_at, first)) = raw_rx.recv() {
            let mut burst = Changes::default();
            burst.add(&dir, first.as_deref());
            let (deadline, mut last) = (first_at + max, first_at);
            loop {
                let quiet_end = (last + quiet).min(deadline);
                match raw_rx.recv_timeout(quiet_end.saturating_duration_since(Instant::now())) {
                    Ok((at, paths)) => {
                        burst.add(&dir, paths.as_deref());
                        last = at;
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            {
                let mut p = gathered.lock().unwrap();
                p.everything |= burst.everything;
                p.files.extend(burst.files);
            }
            // A full channel already holds a pending reload, which will see this change too.
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(()) {
                return;
            }
        }
    };
    std::thread::Builder::new().name("config-debounce".into()).spawn(debounce).map_err(|e| watch_error(notify::Error::io(e)))?;
    Ok((watcher, rx, pending))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(folder: &mut Folder, files: &[(&str, &str)]) -> (Objects, Vec<String>) {
        let files = files.iter().map(|(p, t)| (PathBuf::from(p), Ok(t.to_string()))).collect();
        let (o, e) = folder.apply(files);
        (o, e.iter().map(|e| e.to_string()).collect())
    }

    const GOOD: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: demo
  labels: {app: client}
spec:
  nodeName: node1
  serviceAccountName: sleep
status:
  podIP: 10.0.0.5
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: t, namespace: demo}
";

    #[test]
    fn parses_known_kinds_and_skips_others() {
        let (o, errors) = apply(&mut Folder::default(), &[("a.yaml", GOOD)]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(o.namespaces["demo"].metadata.labels["istio.io/dataplane-mode"], "ambient");
        let pod = &o.pods[&("demo".into(), "client".into())];
        assert_eq!(pod.service_account(), "sleep");
        assert_eq!(pod.ips(), vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(pod.spec.node_name.as_deref(), Some("node1"));
        let svc = &o.services[&("demo".into(), "echo".into())];
        assert_eq!(svc.spec.ports[0].target_port, Some(TargetPort::Number(8080)));
    }

    #[test]
    fn bad_field_names_file_line_and_path_and_spares_other_documents() {
        let bad = GOOD.replace("port: 80, targetPort: 8080", "port: eighty, targetPort: 8080");
        let (o, errors) = apply(&mut Folder::default(), &[("dir/a.yaml", &bad)]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert!(e.starts_with("dir/a.yaml:27: Service field `spec.ports[0].port`"), "{e}");
        assert!(o.services.is_empty());
        assert_eq!(o.pods.len(), 1);
        assert_eq!(o.namespaces.len(), 1);
    }

    #[test]
    fn named_target_ports_and_container_ports_are_read() {
        let named = GOOD
            .replace("targetPort: 8080", "targetPort: http-alt")
            .replace("  serviceAccountName: sleep\n", "  serviceAccountName: sleep\n  containers:\n  - name: app\n    ports:\n    - {name: http-alt, containerPort: 8080}\n    - {name: dns, containerPort: 53, protocol: UDP}\n");
        let (o, errors) = apply(&mut Folder::default(), &[("a.yaml", &named)]);
        assert!(errors.is_empty(), "{errors:?}");
        let svc = &o.services[&("demo".into(), "echo".into())];
        assert_eq!(svc.spec.ports[0].target_port, Some(TargetPort::Name("http-alt".into())));
        let pod = &o.pods[&("demo".into(), "client".into())];
        assert_eq!(pod.tcp_port_named("http-alt"), Some(8080));
        assert_eq!(pod.tcp_port_named("dns"), None, "UDP");
    }

    #[test]
    fn bad_target_port_names_are_refused_with_file_line_and_field() {
        let cases = [
            ("HTTP", "only lowercase letters, digits and '-'"),
            ("'8080'", "at least one letter"),
            ("http--alt", "no \"--\""),
            ("-http", "neither starts nor ends with '-'"),
            ("a-very-long-port-name", "1 to 15 characters"),
            ("0", "out of range 1-65535"),
        ];
        for (value, why) in cases {
            let bad = GOOD.replace("targetPort: 8080", &format!("targetPort: {value}"));
            let (o, errors) = apply(&mut Folder::default(), &[("a.yaml", &bad)]);
            assert_eq!(errors.len(), 1, "{value}: {errors:?}");
            let e = &errors[0];
            assert!(e.starts_with("a.yaml:27: Service field `spec.ports[0].targetPort`"), "{value}: {e}");
            assert!(e.contains(why), "{value}: {e}");
            assert!(o.services.is_empty(), "{value}");
        }
    }

    #[test]
    fn endpoint_slices_are_read_and_checked() {
        let slice = |api: &str, body: &str| {
            format!("apiVersion: {api}\nkind: EndpointSlice\nmetadata:\n  name: ext-1\n  namespace: demo\n  labels: {{kubernetes.io/service-name: ext}}\n{body}")
        };
        let good = slice(
            "discovery.k8s.io/v1",
            "addressType: IPv4\nendpoints:\n- addresses: [192.168.1.10]\n  conditions: {ready: false}\n- addresses: [192.168.1.11]\n  targetRef: {kind: Pod, name: db-0}\nports:\n- {name: sql, port: 5432, protocol: TCP}\n",
        );
        let (o, errors) = apply(&mut Folder::default(), &[("s.yaml", &good)]);
        assert!(errors.is_empty(), "{errors:?}");
        let es = &o.endpoint_slices[&("demo".into(), "ext-1".into())];
        assert_eq!(es.endpoints[0].conditions.ready, Some(false));
        assert_eq!(es.endpoints[1].target_ref.as_ref().map(|r| r.name.as_str()), Some("db-0"));
        assert_eq!(es.ports[0].port, Some(5432));

        let cases = [
            (good.replace("192.168.1.11", "fd00::11"), "s.yaml:11: EndpointSlice field `endpoints[1].addresses[0]`: \"fd00::11\" is not an IPv4 address"),
            (good.replace("addressType: IPv4", "addressType: IPv5"), "s.yaml:7: EndpointSlice field `addressType`: \"IPv5\" is not one of IPv4, IPv6, FQDN"),
            (good.replace("port: 5432", "port: 70000"), "s.yaml:14: EndpointSlice field `ports[0].port`"),
            (good.replace("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1"), "s.yaml:1: EndpointSlice with apiVersion \"discovery.k8s.io/v1beta1\": expected discovery.k8s.io/v1"),
        ];
        for (text, want) in cases {
            let (o, errors) = apply(&mut Folder::default(), &[("s.yaml", &text)]);
            assert_eq!(errors.len(), 1, "{want}: {errors:?}");
            assert!(errors[0].starts_with(want), "{}\nwanted: {want}", errors[0]);
            assert!(o.endpoint_slices.is_empty());
        }
    }

    #[test]
    fn syntax_error_names_the_line() {
        let bad = GOOD.replace("  nodeName: node1", "  nodeName: [node1");
        let (o, errors) = apply(&mut Folder::default(), &[("a.yaml", &bad)]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("a.yaml:1") && errors[0].contains("not valid YAML"), "{}", errors[0]);
        assert!(o.pods.is_empty());
        assert_eq!(o.services.len(), 1);
    }

    #[test]
    fn unchanged_files_are_not_parsed_again_and_give_the_same_objects() {
        let mut folder = Folder::default();
        let other = "kind: Namespace\nmetadata: {name: other}\n";
        let (first, _) = apply(&mut folder, &[("a.yaml", GOOD), ("b.yaml", other)]);
        assert_eq!(folder.parsed.len(), 2, "both files parsed cleanly and are remembered");
        // Only b.yaml changes: a.yaml's objects come from memory, and the result is what
        // a fresh read gives.
        let changed = "kind: Namespace\nmetadata: {name: other, labels: {x: y}}\n";
        let (o, errors) = apply(&mut folder, &[("a.yaml", GOOD), ("b.yaml", changed)]);
        assert!(errors.is_empty(), "{errors:?}");
        let (fresh, _) = apply(&mut Folder::default(), &[("a.yaml", GOOD), ("b.yaml", changed)]);
        assert_eq!(o, fresh);
        assert_eq!(o.pods, first.pods);
        // A file with a rejected document is not remembered, so its error is reported
        // at every read.
        let bad = GOOD.replace("podIP: 10.0.0.5", "podIP: not-an-ip");
        for _ in 0..2 {
            let (_, errors) = apply(&mut folder, &[("a.yaml", &bad), ("b.yaml", changed)]);
            assert_eq!(errors.len(), 1, "{errors:?}");
        }
        assert!(!folder.parsed.keys().any(|p| p.ends_with("a.yaml")));
    }

    /// A changed file is parsed again only in its changed documents: the others keep
    /// their objects (the same `Arc`), which the model takes as unchanged.
    #[test]
    fn unchanged_documents_keep_their_objects() {
        let mut folder = Folder::default();
        let (first, _) = apply(&mut folder, &[("a.yaml", GOOD)]);
        let edited = GOOD.replace("podIP: 10.0.0.5", "podIP: 10.0.0.6");
        let (o, errors) = apply(&mut folder, &[("a.yaml", &edited)]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(o, apply(&mut Folder::default(), &[("a.yaml", &edited)]).0);
        let key = ("demo".to_string(), "client".to_string());
        assert!(!Arc::ptr_eq(&first.pods[&key], &o.pods[&key]), "the edited pod is new");
        assert!(Arc::ptr_eq(&first.namespaces["demo"], &o.namespaces["demo"]), "the namespace is the same object");
        let svc = ("demo".to_string(), "echo".to_string());
        assert!(Arc::ptr_eq(&first.services[&svc], &o.services[&svc]));
        // A document that was rejected is parsed again when it comes back.
        let bad = edited.replace("podIP: 10.0.0.6", "podIP: nope");
        let (_, errors) = apply(&mut folder, &[("a.yaml", &bad)]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let (o, errors) = apply(&mut folder, &[("a.yaml", GOOD)]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(o, first);
    }

    /// Applying only what changed gives what reading everything afresh gives, after
    /// edits, moves between files, duplicates, deletions and PeerAuthentication order.
    #[test]
    fn incremental_reloads_equal_fresh_reads() {
        let ns = |n: &str| format!("kind: Namespace\nmetadata: {{name: {n}}}\n");
        let pa = |n: &str, mode: &str| {
            format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {n}, namespace: shop}}\nspec: {{mtls: {{mode: {mode}}}}}\n")
        };
        let steps: Vec<Vec<(&str, String)>> = vec![
            vec![("a.yaml", GOOD.to_string()), ("b.yaml", ns("other"))],
            vec![("a.yaml", GOOD.to_string()), ("b.yaml", format!("{}---\n{}", ns("other"), pa("p1", "STRICT")))],
            // The same namespace in two files: the later file's wins.
            vec![("a.yaml", GOOD.to_string()), ("b.yaml", ns("demo")), ("c.yaml", pa("p0", "PERMISSIVE"))],
            // It moves: only c.yaml has it now.
            vec![("a.yaml", GOOD.replace("name: demo\n", "name: demo2\n")), ("c.yaml", format!("{}---\n{}", pa("p0", "PERMISSIVE"), ns("demo")))],
            // PeerAuthentications across files: reading order follows file order.
            vec![("a.yaml", GOOD.to_string()), ("b.yaml", pa("z", "STRICT")), ("c.yaml", pa("a", "STRICT"))],
            // Within one file: the same objects swap places, then move down a document.
            vec![("b.yaml", format!("{}---\n{}", pa("z", "STRICT"), pa("a", "STRICT")))],
            vec![("b.yaml", format!("{}---\n{}", pa("a", "STRICT"), pa("z", "STRICT")))],
            vec![("b.yaml", format!("{}---\n{}---\n{}", ns("x"), pa("a", "STRICT"), pa("z", "STRICT")))],
            vec![("a.yaml", GOOD.to_string())],
            vec![],
        ];
        let mut folder = Folder::default();
        for (i, files) in steps.iter().enumerate() {
            let (inc, _) = apply(&mut folder, &files.iter().map(|(p, t)| (*p, t.as_str())).collect::<Vec<_>>());
            let (fresh, _) = apply(&mut Folder::default(), &files.iter().map(|(p, t)| (*p, t.as_str())).collect::<Vec<_>>());
            assert_eq!(inc, fresh, "step {i}");
        }
    }

    /// The files an event names are all a reload reads; a hidden entry or a directory
    /// means everything is read again.
    #[test]
    fn reloads_read_only_the_files_events_name() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("sub/b.yaml"));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(&a, GOOD).unwrap();
        std::fs::write(&b, "kind: Namespace\nmetadata: {name: other}\n").unwrap();
        let mut folder = Folder::default();
        folder.load(dir.path()).unwrap();
        std::fs::write(&b, "kind: Namespace\nmetadata: {name: renamed}\n").unwrap();
        let (o, errors) = folder.apply_files(&[b.clone()].into());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(o, Folder::default().load(dir.path()).unwrap().0, "the same as reading everything");
        assert!(o.namespaces.contains_key("renamed") && !o.namespaces.contains_key("other"));
        std::fs::remove_file(&a).unwrap();
        let (o, _) = folder.apply_files(&[a.clone()].into());
        assert!(o.pods.is_empty() && o.services.is_empty(), "a removed file takes its objects");
        assert_eq!(o, Folder::default().load(dir.path()).unwrap().0);

        let mut c = Changes::default();
        c.add(dir.path(), Some(std::slice::from_ref(&b)));
        assert!(!c.everything && c.files.len() == 1);
        for other in [dir.path().join("..data/a.yaml"), dir.path().join("sub"), dir.path().join("notes.txt")] {
            let mut c = Changes::default();
            c.add(dir.path(), Some(std::slice::from_ref(&other)));
            assert!(c.everything, "{other:?} means reading everything");
        }
        let mut c = Changes::default();
        c.add(dir.path(), None);
        assert!(c.everything, "a watch error means reading everything");
    }

    /// A file over the size limit is refused like an unreadable one, naming the
    /// limit, and what it served keeps serving.
    #[test]
    fn oversized_files_are_refused_and_keep_their_objects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        std::fs::write(&path, GOOD).unwrap();
        let mut folder = Folder::default();
        let (first, _) = folder.load(dir.path()).unwrap();
        let mut big = GOOD.to_string();
        big.push_str(&"#".repeat(MAX_FILE_BYTES as usize));
        std::fs::write(&path, big).unwrap();
        let (o, errors) = folder.load(dir.path()).unwrap();
        assert_eq!(errors.len(), 1);
        let e = errors[0].to_string();
        assert!(e.contains("big.yaml") && e.contains("larger than 64 MiB (MAX_FILE_BYTES)"), "{e}");
        assert_eq!(o, first, "the last good objects keep serving");
    }

    #[test]
    fn last_good_version_keeps_serving() {
        let mut folder = Folder::default();
        let (first, _) = apply(&mut folder, &[("a.yaml", GOOD)]);
        // The pod's document breaks (bad IP) and the service's breaks (syntax): both keep
        // their previous version; the namespace change applies.
        let bad = GOOD
            .replace("podIP: 10.0.0.5", "podIP: not-an-ip")
            .replace("selector: {app: echo}", "selector: {app: echo")
            .replace("ambient", "none");
        let (o, errors) = apply(&mut folder, &[("a.yaml", &bad)]);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("status.podIP"), "{}", errors[0]);
        assert_eq!(o.pods, first.pods);
        assert_eq!(o.services, first.services);
        assert_eq!(o.namespaces["demo"].metadata.labels["istio.io/dataplane-mode"], "none");
        // Deleting the file removes its objects.
        let (o, errors) = apply(&mut folder, &[]);
        assert!(errors.is_empty() && o == Objects::default());
    }

    #[test]
    fn unreadable_file_keeps_its_objects() {
        let mut folder = Folder::default();
        let (first, _) = apply(&mut folder, &[("a.yaml", GOOD)]);
        let err = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let (o, errors) = folder.apply(vec![(PathBuf::from("a.yaml"), Err(err))]);
        assert_eq!(errors.len(), 1);
        assert_eq!(o, first);
    }

    #[test]
    fn peer_authentication_is_read_validated_and_kept_when_broken() {
        let doc = |api: &str, name: &str, spec: &str| {
            format!("apiVersion: {api}\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: shop, creationTimestamp: '2024-01-01T00:00:00Z'}}\nspec:\n{spec}")
        };
        let good = [
            doc("security.istio.io/v1", "a", "  mtls: {mode: STRICT}\n"),
            doc("security.istio.io/v1beta1", "b", "  selector: {matchLabels: {app: cart}}\n  portLevelMtls:\n    8080: {mode: PERMISSIVE}\n"),
        ]
        .join("---\n");
        let mut folder = Folder::default();
        let (o, errors) = apply(&mut folder, &[("pa.yaml", &good)]);
        assert!(errors.is_empty(), "{errors:?}");
        let (order_a, a) = &o.peer_authentications[&("shop".into(), "a".into())];
        let (order_b, b) = &o.peer_authentications[&("shop".into(), "b".into())];
        assert!(order_a < order_b, "reading order");
        assert_eq!(a.metadata.creation_timestamp.as_deref(), Some("2024-01-01T00:00:00Z"));
        assert_eq!(b.spec.port_level_mtls[&8080].mode, super::super::peerauth::Mode::Permissive);

        // b loses its selector (portLevelMtls then fails validation): rejected with
        // file, line and field; its last good version serves; a's edit applies.
        let bad = good.replace("  selector: {matchLabels: {app: cart}}\n", "").replace("STRICT", "PERMISSIVE");
        let (o2, errors) = apply(&mut folder, &[("pa.yaml", &bad)]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("pa.yaml:11: PeerAuthentication field `spec.portLevelMtls`"), "{}", errors[0]);
        assert!(errors[0].contains("only allowed with a non-empty spec.selector"), "{}", errors[0]);
        assert_eq!(o2.peer_authentications[&("shop".into(), "b".into())], o.peer_authentications[&("shop".into(), "b".into())]);
        assert_eq!(o2.peer_authentications[&("shop".into(), "a".into())].1.spec.mtls.as_ref().unwrap().mode, super::super::peerauth::Mode::Permissive);

        let (_, errors) = apply(&mut folder, &[("pa.yaml", &doc("security.istio.io/v2", "c", "  mtls: {mode: STRICT}\n"))]);
        assert!(errors[0].contains("PeerAuthentication with apiVersion \"security.istio.io/v2\""), "{}", errors[0]);
        let (_, errors) = apply(&mut folder, &[("pa.yaml", &doc("security.istio.io/v1", "c", "  mtls: {mode: STRIKT}\n"))]);
        assert!(errors[0].starts_with("pa.yaml:5: PeerAuthentication field `spec.mtls.mode`"), "{}", errors[0]);
    }

    #[test]
    fn document_splitting_tracks_lines() {
        let docs = split_documents("a: 1\n---\nb: 2\nc: 3\n--- \nd: 4");
        let lines: Vec<_> = docs.iter().map(|d| d.first_line).collect();
        assert_eq!(lines, vec![1, 3, 6]);
        assert_eq!(docs[1].text, "b: 2\nc: 3\n");
    }
}
