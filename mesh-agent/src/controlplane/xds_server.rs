//! The delta ADS server: one task per agent stream, each watching the latest snapshot so
//! that pushes coalesce and a slow agent delays nobody else. Serves
//! `istio.workload.Address` and `istio.security.Authorization` on the same stream, each
//! type subscribed on its own; a push carries only what changed. An agent shows its
//! node token when it opens the stream, and must name that same node in its requests.
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::model::{Resource as Served, Snapshot};
use crate::node_token;
use crate::proto::discovery::{
    aggregated_discovery_service_server::AggregatedDiscoveryService, DeltaDiscoveryRequest, DeltaDiscoveryResponse,
    Resource,
};
use crate::proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, REQUEST_AUTHENTICATION_TYPE_URL};

/// The resources of one type in a snapshot, or `None` for a type we do not serve.
pub fn resources_of<'a>(snap: &'a Snapshot, type_url: &str) -> Option<&'a BTreeMap<String, Served>> {
    match type_url {
        ADDRESS_TYPE_URL => Some(&snap.resources),
        AUTHORIZATION_TYPE_URL => Some(&snap.authorizations),
        REQUEST_AUTHENTICATION_TYPE_URL => Some(&snap.request_authentications),
        _ => None,
    }
}

/// What to send so that a client holding `held` (name -> version) matches `snap`.
#[derive(Debug, Default, PartialEq)]
pub struct Delta {
    pub resources: Vec<Resource>,
    pub removed: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.removed.is_empty()
    }
}

/// Changed and new resources, and names the client holds that no longer exist.
pub fn diff(held: &HashMap<String, String>, served: &BTreeMap<String, Served>) -> Delta {
    let resources = served
        .iter()
        .filter(|(name, r)| held.get(*name) != Some(&r.version))
        .map(|(name, r)| Resource {
            version: r.version.clone(),
            resource: Some(r.any.clone()),
            name: name.clone(),
            aliases: vec![],
        })
        .collect();
    let mut removed: Vec<String> = held.keys().filter(|n| !served.contains_key(*n)).cloned().collect();
    removed.sort();
    Delta { resources, removed }
}

/// Records a sent delta in the client's `held` map.
pub fn record(held: &mut HashMap<String, String>, delta: &Delta) {
    for r in &delta.resources {
        held.insert(r.name.clone(), r.version.clone());
    }
    for n in &delta.removed {
        held.remove(n);
    }
}

/// Serves agents that show a valid node token (see [`node_token`]).
#[derive(Clone)]
pub struct XdsServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    tokens: Arc<node_token::Key>,
}

impl XdsServer {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, tokens: Arc<node_token::Key>) -> Self {
        Self { snapshots, tokens }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let node = self.tokens.verify_metadata(request.metadata()).map_err(|e| {
            tracing::warn!(peer, "xds: refused an agent: {e}");
            Status::unauthenticated(e.to_string())
        })?;
        let (tx, rx) = mpsc::channel(4);
        let conn = Connection { peer, node, snapshots: self.snapshots.clone(), out: tx, nonce: 0 };
        tokio::spawn(conn.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Connection {
    peer: String,
    /// The node its token names.
    node: String,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    out: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    nonce: u64,
}

impl Connection {
    async fn run(mut self, mut requests: Streaming<DeltaDiscoveryRequest>) {
        let first = match requests.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(peer = self.peer, "xds: stream failed before its first request: {e}");
                return;
            }
        };
        let node = first.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
        if node != self.node {
            let why = format!(
                "this agent's node token is for node {:?}, but its requests name node {node:?}; give each agent its own node's token",
                self.node
            );
            tracing::warn!(peer = self.peer, "xds: refused an agent: {why}");
            let _ = self.out.send(Err(Status::permission_denied(why))).await;
            return;
        }
        let span = tracing::info_span!("xds", node = %node, peer = %self.peer);
        tracing::info!(parent: &span, resumed = first.initial_resource_versions.len(), "xds: agent connected");
        // type URL -> what the agent holds of that type (name -> version).
        let mut subscribed: BTreeMap<String, HashMap<String, String>> = BTreeMap::new();
        let mut pending = Some(first);
        loop {
            if let Some(req) = pending.take() {
                let served = resources_of(&self.snapshots.borrow(), &req.type_url).is_some();
                if !served {
                    // A type we do not serve: answer the subscription once with nothing.
                    if req.response_nonce.is_empty() && !self.send(&req.type_url, Delta::default()).await {
                        return;
                    }
                } else if let Some(err) = req.error_detail.as_ref() {
                    tracing::warn!(parent: &span, nonce = req.response_nonce, type_url = req.type_url,
                        "xds: agent rejected an update: {}", err.message);
                } else if !subscribed.contains_key(&req.type_url) {
                    let mut held = req.initial_resource_versions.clone();
                    let snap = self.snapshots.borrow_and_update().clone();
                    let delta = diff(&held, resources_of(&snap, &req.type_url).expect("served type"));
                    record(&mut held, &delta);
                    subscribed.insert(req.type_url.clone(), held);
                    // The first response always goes out: it tells the agent it is synced.
                    if !self.send(&req.type_url, delta).await {
                        return;
                    }
                }
            }
            tokio::select! {
                req = requests.message() => match req {
                    Ok(Some(r)) => pending = Some(r),
                    Ok(None) => {
                        tracing::info!(parent: &span, "xds: agent disconnected");
                        return;
                    }
                    Err(e) => {
                        tracing::info!(parent: &span, "xds: agent stream ended: {e}");
                        return;
                    }
                },
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        return; // shutting down: ends the response stream
                    }
                    let snap = self.snapshots.borrow_and_update().clone();
                    for (type_url, held) in subscribed.iter_mut() {
                        let delta = diff(held, resources_of(&snap, type_url).expect("served type"));
                        if delta.is_empty() {
                            continue;
                        }
                        record(held, &delta);
                        tracing::debug!(parent: &span, type_url, changed = delta.resources.len(), removed = delta.removed.len(), "xds: push");
                        let (out, nonce) = (self.out.clone(), self.next_nonce());
                        if out.send(Ok(response(type_url, nonce, delta))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    fn next_nonce(&mut self) -> u64 {
        self.nonce += 1;
        self.nonce
    }

    async fn send(&mut self, type_url: &str, delta: Delta) -> bool {
        let nonce = self.next_nonce();
        self.out.send(Ok(response(type_url, nonce, delta))).await.is_ok()
    }
}

fn response(type_url: &str, nonce: u64, delta: Delta) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: String::new(),
        resources: delta.resources,
        type_url: type_url.to_string(),
        nonce: nonce.to_string(),
        removed_resources: delta.removed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::model::Resource as Res;

    fn snap(items: &[(&str, &str)]) -> Snapshot {
        let mut s = Snapshot::default();
        for (n, v) in items {
            let any = prost_types::Any { type_url: ADDRESS_TYPE_URL.into(), value: v.as_bytes().to_vec() };
            s.resources.insert(n.to_string(), Res { version: v.to_string(), any });
        }
        s
    }

    fn names(d: &Delta) -> Vec<&str> {
        d.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn diff_sends_changed_and_new_and_removes_gone() {
        let held: HashMap<String, String> =
            [("same", "1"), ("changed", "1"), ("gone", "1")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let s = snap(&[("same", "1"), ("changed", "2"), ("new", "1")]);
        let d = diff(&held, &s.resources);
        assert_eq!(names(&d), vec!["changed", "new"]);
        assert_eq!(d.removed, vec!["gone"]);
        let mut held = held;
        record(&mut held, &d);
        assert!(diff(&held, &s.resources).is_empty(), "nothing changed: nothing to send");
    }

    #[test]
    fn diff_from_nothing_is_everything() {
        let s = snap(&[("a", "1"), ("b", "1")]);
        let d = diff(&HashMap::new(), &s.resources);
        assert_eq!(names(&d), vec!["a", "b"]);
        assert!(d.removed.is_empty());
    }
}
