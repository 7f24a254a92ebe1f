//! The delta ADS server: one task per agent stream, each watching the latest snapshot so
//! that pushes coalesce and a slow agent delays nobody else. Serves
//! `istio.workload.Address`, `istio.security.Authorization` and
//! `mesh.security.RequestAuthentication` on the same stream, each type subscribed on
//! its own; each agent gets its node's scope ([`scope`]), and a push carries only what
//! changed in it. Every push is tracked until the agent ACKs or NACKs it ([`sync`]).
//! An agent shows its node token when it opens the stream, and must name that same
//! node in its requests.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::held::Held;
use super::limits::{self, UnknownTypes};
use super::metrics::CpMetrics;
use super::model::{Resource as Served, Snapshot};
pub use super::scope::resources_of;
use super::scope::{scope_type, short_type, Index, NodeNeeds, Scoped, TYPES};
use super::sync::{Answer, Connected, Reason, Registry};
use crate::node_token;
// Marks each part of a split delta but the last: our agent counts a type as synced
// only at a response without it. Other clients ignore the field (upstream it is
// informational), and each part is a valid delta on its own.
use crate::proto::{ADDRESS_TYPE_URL, MORE_TO_COME};
use crate::proto::discovery::{
    aggregated_discovery_service_server::AggregatedDiscoveryService, DeltaDiscoveryRequest, DeltaDiscoveryResponse,
    Resource,
};

/// A published snapshot with what scoping and incremental pushes need.
pub struct View {
    pub snap: Arc<Snapshot>,
    pub index: Index,
    /// 1 for the first snapshot, +1 for each published after it.
    pub generation: u64,
    pub published: Instant,
    /// Per type: the names added, changed or removed since `generation - 1`, with the
    /// encoded size each had then (0 if new).
    pub changed: BTreeMap<&'static str, BTreeMap<String, usize>>,
}

impl View {
    pub fn first(snap: Arc<Snapshot>) -> Self {
        View { index: Index::new(&snap), snap, generation: 1, published: Instant::now(), changed: BTreeMap::new() }
    }

    pub fn next(prev: &View, snap: Arc<Snapshot>) -> Self {
        let mut changed = BTreeMap::new();
        for t in TYPES {
            let (old, new) = (resources_of(&prev.snap, t).expect("served"), resources_of(&snap, t).expect("served"));
            changed.insert(t, changes(old, new));
        }
        let index = prev.index.next(&prev.snap, &snap, &changed);
        View { index, snap, generation: prev.generation + 1, published: Instant::now(), changed }
    }
}

/// Names added, changed or removed from `old` to `new`, with the encoded size each had
/// in `old` (0 if new). The builder keeps unchanged resources and the subtrees of the
/// persistent map that hold them, so imbl's diff skips what the two share and looks
/// only at the paths to what changed.
fn changes(old: &super::model::Resources, new: &super::model::Resources) -> BTreeMap<String, usize> {
    use imbl::ordmap::DiffItem;
    let mut out = BTreeMap::new();
    for d in old.diff(new) {
        match d {
            DiffItem::Add(name, _) => {
                out.insert(name.clone(), 0);
            }
            DiffItem::Remove(name, o) => {
                out.insert(name.clone(), o.any.value.len());
            }
            DiffItem::Update { old: (name, o), new: (_, r) } if o.version != r.version => {
                out.insert(name.clone(), o.any.value.len());
            }
            DiffItem::Update { .. } => {}
        }
    }
    out
}

/// What to send so that a client holding `held` (name -> version) matches its scope.
#[derive(Debug, Default, PartialEq)]
pub struct Delta {
    pub resources: Vec<Resource>,
    pub removed: Vec<String>,
}

/// Encoded resource bytes per response part: a larger delta goes out in several responses.
/// The gRPC transport keeps each stream's encode buffer at the size of the largest
/// message it sent, so one 3 MB first answer per agent would stay resident per agent
/// (3.4 MiB each at 10,000 workloads, measured with `cargo xtask bench-xds`).
pub const PART_BYTES: usize = 64 * 1024;


impl Delta {
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.removed.is_empty()
    }

    /// Into parts of at most `max` encoded resource bytes each (a larger resource goes
    /// alone), removals with the last part; always at least one part.
    pub fn split(self, max: usize) -> Vec<Delta> {
        let mut parts = vec![Delta::default()];
        let mut size = 0;
        for r in self.resources {
            let n = r.resource.as_ref().map_or(0, |a| a.value.len());
            let cur = parts.last_mut().expect("never empty");
            if size + n > max && !cur.resources.is_empty() {
                parts.push(Delta::default());
                size = 0;
            }
            size += n;
            parts.last_mut().expect("never empty").resources.push(r);
        }
        parts.last_mut().expect("never empty").removed = self.removed;
        parts
    }

    fn bytes(&self) -> usize {
        self.resources.iter().map(|r| r.resource.as_ref().map_or(0, |a| a.value.len())).sum()
    }

    fn names(&self) -> Vec<String> {
        self.resources.iter().map(|r| r.name.clone()).chain(self.removed.iter().cloned()).collect()
    }
}

fn wire(name: &str, r: &Served) -> Resource {
    Resource { version: r.version.clone(), resource: Some(r.any.clone()), name: name.to_string(), aliases: vec![] }
}

/// What an agent holds of one type.
pub enum Holds {
    /// What it named when it subscribed, until its first answer.
    Named(Held),
    /// Its scope of `view` for `needs`: every answer brings it there, so nothing is kept
    /// per agent but pointers to a view shared by every agent that is up to date.
    Scope { view: Arc<View>, needs: Arc<NodeNeeds> },
}

impl Holds {
    fn served<'a>(view: &'a View, needs: &NodeNeeds, type_url: &str, name: &str) -> Option<&'a Served> {
        resources_of(&view.snap, type_url)?.get(name).filter(|_| view.index.admits(needs, type_url, name)).map(|r| &**r)
    }

    pub fn has_version(&self, type_url: &str, name: &str, version: &str) -> bool {
        match self {
            Holds::Named(held) => held.has_version(name, version),
            Holds::Scope { view, needs } => Self::served(view, needs, type_url, name).is_some_and(|r| r.version == version),
        }
    }

    pub fn contains(&self, type_url: &str, name: &str) -> bool {
        match self {
            Holds::Named(held) => held.contains(name),
            Holds::Scope { view, needs } => Self::served(view, needs, type_url, name).is_some(),
        }
    }

    fn names(&self, type_url: &str) -> Vec<&str> {
        match self {
            Holds::Named(held) => held.names().collect(),
            Holds::Scope { view, needs } => scope_type(&view.snap, &view.index, needs, type_url).into_keys().collect(),
        }
    }
}

/// Changed and new resources of `scoped`, and names the client holds that are not in it.
pub fn diff(holds: &Holds, type_url: &str, scoped: &Scoped<'_>) -> Delta {
    let resources = scoped
        .iter()
        .filter(|(name, r)| !holds.has_version(type_url, name, &r.version))
        .map(|(name, r)| wire(name, r))
        .collect();
    let mut removed: Vec<String> =
        holds.names(type_url).into_iter().filter(|n| !scoped.contains_key(n)).map(str::to_string).collect();
    removed.sort();
    Delta { resources, removed }
}

/// The same as [`diff`] for a client that holds its scope of the view before `view`,
/// with the same needs: only the names that changed are looked at.
/// `also` names more to look at: those whose admission differs between the needs the
/// client held its scope for and `needs` ([`Index::affected`]).
pub fn diff_changed(holds: &Holds, view: &View, needs: &NodeNeeds, type_url: &str, also: &[String]) -> Delta {
    let mut d = Delta::default();
    let changed = view.changed.get(type_url);
    let names: BTreeSet<&String> = changed.into_iter().flat_map(|c| c.keys()).chain(also).collect();
    for name in names {
        match Holds::served(view, needs, type_url, name) {
            Some(r) if !holds.has_version(type_url, name, &r.version) => d.resources.push(wire(name, r)),
            Some(_) => {}
            None if holds.contains(type_url, name) => d.removed.push(name.clone()),
            None => {}
        }
    }
    d
}

/// What the control plane's admin listener shows of the xDS server.
#[derive(Clone)]
pub struct XdsStatus {
    pub metrics: Arc<CpMetrics>,
    pub agents: Arc<Registry>,
    pub views: watch::Receiver<Arc<View>>,
}

impl XdsStatus {
    pub fn syncz(&self) -> serde_json::Value {
        let generation = self.views.borrow().generation;
        self.agents.syncz(generation)
    }
}

/// Serves agents that show a valid node token (see [`node_token`]).
#[derive(Clone)]
pub struct XdsServer {
    views: watch::Receiver<Arc<View>>,
    tokens: Arc<node_token::Key>,
    metrics: Arc<CpMetrics>,
    agents: Arc<Registry>,
    /// Turns for first answers (whole scopes, megabytes each at scale), so that 1,000
    /// agents connecting at once do not all hold theirs in memory at the same time.
    first_answers: Arc<Semaphore>,
}

/// Agents whose first answers may be in flight at once.
const FIRST_ANSWERS_AT_ONCE: usize = 16;
/// How long an agent may take to answer its first answers before its turn passes.
const FIRST_ANSWER_TURN: Duration = Duration::from_secs(5);

impl XdsServer {
    /// Starts indexing each snapshot `snapshots` publishes (a task that ends when its
    /// sender is dropped, which then ends every agent stream).
    pub fn new(mut snapshots: watch::Receiver<Arc<Snapshot>>, tokens: Arc<node_token::Key>) -> Self {
        let metrics = Arc::new(CpMetrics::default());
        let first = View::first(snapshots.borrow_and_update().clone());
        metrics.snapshot_builds.inc();
        let (tx, views) = watch::channel(Arc::new(first));
        let m = metrics.clone();
        tokio::spawn(async move {
            while snapshots.changed().await.is_ok() {
                let snap = snapshots.borrow_and_update().clone();
                let t = Instant::now();
                let next = View::next(&tx.borrow(), snap);
                tracing::info!(generation = next.generation, took_ms = t.elapsed().as_secs_f64() * 1e3, "xds: view indexed");
                m.snapshot_builds.inc();
                tx.send_replace(Arc::new(next));
            }
        });
        Self { views, tokens, metrics, agents: Arc::default(), first_answers: Arc::new(Semaphore::new(FIRST_ANSWERS_AT_ONCE)) }
    }

    pub fn status(&self) -> XdsStatus {
        XdsStatus { metrics: self.metrics.clone(), agents: self.agents.clone(), views: self.views.clone() }
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
        let conn = Connection {
            peer,
            node,
            views: self.views.clone(),
            out: tx,
            nonce: 0,
            metrics: self.metrics.clone(),
            agents: self.agents.clone(),
            subs: BTreeMap::new(),
            first_answers: self.first_answers.clone(),
            turn: None,
            unknown: UnknownTypes::default(),
            demanded: BTreeSet::new(),
            merged: None,
        };
        tokio::spawn(conn.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One subscribed type of one stream.
struct Sub {
    holds: Holds,
    /// How many resources, and their encoded bytes, `holds` has.
    count: usize,
    bytes: usize,
}

struct Connection {
    peer: String,
    /// The node its token names.
    node: String,
    views: watch::Receiver<Arc<View>>,
    out: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    nonce: u64,
    metrics: Arc<CpMetrics>,
    agents: Arc<Registry>,
    subs: BTreeMap<&'static str, Sub>,
    first_answers: Arc<Semaphore>,
    /// This agent's turn for first answers: until they are all answered, or the deadline.
    turn: Option<Turn>,
    /// Types it asked for that we do not serve (answered once each, bounded).
    unknown: UnknownTypes,
    /// Addresses it asked for by name (on-demand lookups), kept for the stream.
    demanded: BTreeSet<IpAddr>,
    /// The node's needs in the view, and those needs with `demanded` (None: to merge).
    merged: Option<(Arc<NodeNeeds>, Arc<NodeNeeds>)>,
}

struct Turn {
    _permit: OwnedSemaphorePermit,
    /// Nonces of first answers not yet ACKed or NACKed.
    unanswered: BTreeSet<u64>,
    deadline: tokio::time::Instant,
}

impl Connection {
    async fn run(mut self, mut requests: Streaming<DeltaDiscoveryRequest>) {
        let first = match requests.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let span = tracing::info_span!("xds", node = %self.node, peer = %self.peer);
                self.unreadable(e, &span).await;
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
        let registered = self.agents.connect(&self.node, &self.peer);
        self.metrics.connected_agents.inc();
        let _gone = Gone { metrics: self.metrics.clone(), node: self.node.clone() };
        let mut pending = Some(first);
        loop {
            if let Some(req) = pending.take() {
                if !self.request(req, &registered, &span).await {
                    return;
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
                        self.unreadable(e, &span).await;
                        return;
                    }
                },
                _ = tokio::time::sleep_until(self.turn.as_ref().map_or_else(tokio::time::Instant::now, |t| t.deadline)), if self.turn.is_some() => {
                    tracing::debug!(parent: &span, "xds: agent slow to answer its first answers; its turn passes");
                    self.turn = None;
                }
                changed = self.views.changed() => {
                    if changed.is_err() {
                        return; // shutting down: ends the response stream
                    }
                    let view = self.views.borrow_and_update().clone();
                    let types: Vec<&'static str> = self.subs.keys().copied().collect();
                    for t in types {
                        if !self.update(t, &view, Reason::Change, false, &registered, &span).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Handles one request: a subscription, an ACK or a NACK. False: the stream is gone.
    async fn request(&mut self, mut req: DeltaDiscoveryRequest, registered: &Connected, span: &tracing::Span) -> bool {
        if let Err(e) = limits::check_request(&mut req) {
            return self.refuse(e.into(), span).await;
        }
        let Some(type_url) = TYPES.iter().copied().find(|t| *t == req.type_url) else {
            return self.unknown_type(&req, span).await;
        };
        let asks = !(req.resource_names_subscribe.is_empty() && req.resource_names_unsubscribe.is_empty());
        if !req.response_nonce.is_empty() {
            let Ok(nonce) = req.response_nonce.parse::<u64>() else {
                tracing::warn!(parent: span, nonce = req.response_nonce, type_url, "xds: agent answered a nonce we never send");
                return true;
            };
            if let Some(turn) = &mut self.turn {
                turn.unanswered.remove(&nonce);
                if turn.unanswered.is_empty() {
                    self.turn = None;
                }
            }
            let error = req.error_detail.as_ref().map(|e| e.message.as_str());
            let answer = {
                let mut a = registered.agent.lock().unwrap();
                a.types.get_mut(type_url).map_or(Answer::Unknown, |t| t.answered(nonce, error, Instant::now()))
            };
            match answer {
                Answer::Acked { latency: Some(l) } => self.metrics.push_latency.observe(l.as_secs_f64()),
                Answer::Acked { latency: None } => {}
                Answer::Nacked { names, reason } => {
                    self.metrics.nack(short_type(type_url));
                    tracing::warn!(parent: span, node = self.node, nonce, type_url, resources = ?names,
                        "xds: agent rejected an update and keeps its previous version: {reason}");
                }
                Answer::Unknown => {
                    tracing::debug!(parent: span, nonce, type_url, "xds: answer to a push no longer tracked");
                }
            }
            if !asks {
                return true;
            }
        }
        if self.subs.contains_key(type_url) {
            // Subscribed already: explicit names are on-demand lookups of addresses
            // (other types are wildcard only).
            if type_url == ADDRESS_TYPE_URL && asks {
                return self.demand(req.resource_names_subscribe, req.resource_names_unsubscribe, registered, span).await;
            }
            return true;
        }
        let reason = if req.initial_resource_versions.is_empty() { Reason::Initial } else { Reason::Resume };
        if self.turn.is_none() {
            let Ok(permit) = self.first_answers.clone().acquire_owned().await else { return false };
            let deadline = tokio::time::Instant::now() + FIRST_ANSWER_TURN;
            self.turn = Some(Turn { _permit: permit, unanswered: BTreeSet::new(), deadline });
        }
        let view = self.views.borrow_and_update().clone();
        if type_url == ADDRESS_TYPE_URL {
            // A resume names what it looked up before: in scope from the first answer,
            // so that what it holds of them is not removed and sent again.
            self.demanded.extend(req.resource_names_subscribe.iter().filter_map(|n| demanded_address(n)));
            self.merged = None;
        }
        let holds = Holds::Named(Held::from_versions(req.initial_resource_versions));
        self.subs.insert(type_url, Sub { holds, count: 0, bytes: 0 });
        // The first response always goes out: it tells the agent it is synced.
        if !self.update(type_url, &view, reason, true, registered, span).await {
            return false;
        }
        // Another type may have been behind `view`: bring it up too.
        let others: Vec<&'static str> = self.subs.keys().copied().filter(|t| *t != type_url).collect();
        for t in others {
            if !self.update(t, &view, Reason::Change, false, registered, span).await {
                return false;
            }
        }
        // Names besides the wildcard (a resume re-asks what it looked up before).
        if type_url == ADDRESS_TYPE_URL && req.resource_names_subscribe.iter().any(|n| n != "*") {
            return self.demand(req.resource_names_subscribe, vec![], registered, span).await;
        }
        true
    }

    /// The node's needs in `view`, with the addresses this agent asked for.
    fn needs(&mut self, view: &View) -> Arc<NodeNeeds> {
        let base = view.index.needs(&self.node);
        if self.demanded.is_empty() {
            return base;
        }
        if let Some((b, merged)) = &self.merged {
            if Arc::ptr_eq(b, &base) {
                return merged.clone();
            }
        }
        let merged = Arc::new(NodeNeeds { demanded: self.demanded.clone(), ..(*base).clone() });
        self.merged = Some((base, merged.clone()));
        merged
    }

    /// Answers on-demand lookups, as ztunnel asks for them: Address names
    /// `<network>/<ip>` subscribed besides the wildcard. The workloads that have an
    /// asked address are sent with the asked name as an alias, and from then on kept
    /// up to date like the rest of the agent's scope; a name no workload answers to is
    /// answered in `removed_resources`, so the agent stops waiting for it at once. An
    /// unsubscribed address's workloads go if nothing else keeps them in scope.
    async fn demand(&mut self, subscribe: Vec<String>, unsubscribe: Vec<String>, registered: &Connected, span: &tracing::Span) -> bool {
        const T: &str = ADDRESS_TYPE_URL;
        let view = self.views.borrow().clone();
        // Up to date first, so that what it holds is exactly its scope of `view`.
        if !self.update(T, &view, Reason::Change, false, registered, span).await {
            return false;
        }
        let old = self.needs(&view);
        let mut asked: Vec<(String, Option<IpAddr>)> = Vec::new();
        for name in subscribe.into_iter().filter(|n| n != "*") {
            let ip = demanded_address(&name);
            if let Some(ip) = ip {
                self.demanded.insert(ip);
            }
            asked.push((name, ip));
        }
        if self.demanded.len() > limits::MAX_DEMANDED {
            let e = limits::Error::Demanded(self.demanded.len());
            return self.refuse(e.into(), span).await;
        }
        let dropped: Vec<IpAddr> =
            unsubscribe.iter().filter_map(|n| demanded_address(n)).filter(|ip| self.demanded.remove(ip)).collect();
        self.merged = None;
        let new = self.needs(&view);
        let Some(sub) = self.subs.get_mut(T) else { return true };
        let mut found: BTreeMap<String, Resource> = BTreeMap::new();
        let mut d = Delta::default();
        for (name, ip) in asked {
            let uids = ip.map(|ip| view.index.workloads_at(ip)).unwrap_or_default();
            if uids.is_empty() {
                d.removed.push(name);
                continue;
            }
            for uid in uids {
                let Some(r) = view.snap.resources.get(&uid) else { continue };
                let res = found.entry(uid).or_insert_with_key(|uid| {
                    if !view.index.admits(&old, T, uid) {
                        sub.count += 1;
                        sub.bytes += r.any.value.len();
                    }
                    wire(uid, r)
                });
                res.aliases.push(name.clone());
            }
        }
        for uid in dropped.into_iter().flat_map(|ip| view.index.workloads_at(ip)) {
            let Some(r) = view.snap.resources.get(&uid) else { continue };
            if view.index.admits(&old, T, &uid) && !view.index.admits(&new, T, &uid) && !d.removed.contains(&uid) {
                sub.count = sub.count.saturating_sub(1);
                sub.bytes = sub.bytes.saturating_sub(r.any.value.len());
                d.removed.push(uid);
            }
        }
        d.resources = found.into_values().collect();
        sub.holds = Holds::Scope { view: view.clone(), needs: new };
        if d.is_empty() {
            return true;
        }
        tracing::debug!(parent: span, found = d.resources.len(), missing = ?d.removed, "xds: on-demand lookup answered");
        self.push(T, &view, d, Reason::OnDemand, registered, span).await
    }

    /// Brings one type up to `view`; sends when something changed (or `always`).
    async fn update(
        &mut self,
        type_url: &'static str,
        view: &Arc<View>,
        reason: Reason,
        always: bool,
        registered: &Connected,
        span: &tracing::Span,
    ) -> bool {
        if !self.subs.contains_key(type_url) {
            return true;
        }
        let needs = self.needs(view);
        let Some(sub) = self.subs.get_mut(type_url) else { return true };
        // Holding its scope of the previous view: the names that changed, and those its
        // changed needs concern (`None`: look at everything).
        let also = match &sub.holds {
            Holds::Scope { view: at, needs: had } if at.generation + 1 == view.generation => {
                if Arc::ptr_eq(had, &needs) { Some(Vec::new()) } else { view.index.affected(had, &needs, type_url) }
            }
            _ => None,
        };
        let (delta, count, bytes) = match (&sub.holds, also) {
            (Holds::Scope { view: at, .. }, _) if at.generation == view.generation => return true,
            (Holds::Scope { .. }, Some(also)) => {
                let delta = diff_changed(&sub.holds, view, &needs, type_url, &also);
                let old = view.changed.get(type_url);
                let now = resources_of(&view.snap, type_url);
                let (mut was, mut had_count) = (0, 0);
                for n in delta.names() {
                    if sub.holds.contains(type_url, &n) {
                        // Its size when held: as the view's changes recorded it, else as it is.
                        let size = old.and_then(|o| o.get(&n)).copied();
                        was += size.or_else(|| now.and_then(|m| m.get(&n)).map(|r| r.any.value.len())).unwrap_or(0);
                        had_count += 1;
                    }
                }
                // New ones add, removed ones (all held) subtract, changed ones stay.
                let count = (sub.count + delta.resources.len()).saturating_sub(had_count);
                let bytes = (sub.bytes + delta.bytes()).saturating_sub(was);
                (delta, count, bytes)
            }
            _ => {
                let scoped = scope_type(&view.snap, &view.index, &needs, type_url);
                let bytes = scoped.values().map(|r| r.any.value.len()).sum();
                (diff(&sub.holds, type_url, &scoped), scoped.len(), bytes)
            }
        };
        let bytes_changed = sub.bytes != bytes;
        (sub.holds, sub.count, sub.bytes) = (Holds::Scope { view: view.clone(), needs }, count, bytes);
        if bytes_changed {
            let total: usize = self.subs.values().map(|s| s.bytes).sum();
            self.metrics.set_config_bytes(&self.node, total as u64);
        }
        if delta.is_empty() && !always {
            let mut a = registered.agent.lock().unwrap();
            match a.types.get_mut(type_url) {
                Some(t) => t.generation = view.generation,
                None => a.types.entry(type_url.to_string()).or_default().generation = view.generation,
            }
            return true;
        }
        tracing::debug!(parent: span, type_url, changed = delta.resources.len(), removed = delta.removed.len(), reason = reason.as_str(), "xds: push");
        self.push(type_url, view, delta, reason, registered, span).await
    }

    /// Sends `delta` of `type_url` (in parts of at most [`PART_BYTES`]), each part
    /// recorded for the agent's answer with what its subscription holds once the delta
    /// is in. First answers (initial, resume) also wait for their answers in its turn.
    async fn push(
        &mut self,
        type_url: &'static str,
        view: &View,
        delta: Delta,
        reason: Reason,
        registered: &Connected,
        span: &tracing::Span,
    ) -> bool {
        let held = self.subs.get(type_url).map_or(0, |s| s.count);
        let parts = delta.split(PART_BYTES);
        let last = parts.len() - 1;
        for (i, part) in parts.into_iter().enumerate() {
            let nonce = self.next_nonce();
            if matches!(reason, Reason::Initial | Reason::Resume) {
                if let Some(turn) = &mut self.turn {
                    turn.unanswered.insert(nonce);
                }
            }
            self.metrics.push(short_type(type_url), reason.as_str(), part.bytes() as u64);
            {
                let mut a = registered.agent.lock().unwrap();
                let t = a.types.entry(type_url.to_string()).or_default();
                t.sent(nonce, part.names(), view.published, reason);
                (t.held, t.generation) = (held, view.generation);
            }
            let mut resp = response(type_url, nonce, part);
            if i < last {
                resp.system_version_info = MORE_TO_COME.to_string();
            }
            if !self.send(resp, span).await {
                return false;
            }
        }
        true
    }

    /// A subscription to a type we do not serve: answered once with nothing, and
    /// logged once; the stream is refused past `limits::MAX_UNKNOWN_TYPES` of them.
    async fn unknown_type(&mut self, req: &DeltaDiscoveryRequest, span: &tracing::Span) -> bool {
        if !req.response_nonce.is_empty() {
            return true; // the ACK of our empty answer
        }
        match self.unknown.first_time(&req.type_url) {
            Ok(true) => {
                tracing::info!(parent: span, type_url = req.type_url, "xds: agent asked for a type this control plane does not serve; answered with nothing");
                let nonce = self.next_nonce();
                self.send(response(&req.type_url, nonce, Delta::default()), span).await
            }
            Ok(false) => true,
            Err(e) => self.refuse(e.into(), span).await,
        }
    }

    /// Ends the stream with `status`, which says why. Always false.
    async fn refuse(&mut self, status: Status, span: &tracing::Span) -> bool {
        tracing::warn!(parent: span, "xds: ending this agent's stream: {}", status.message());
        let _ = self.out.send(Err(status)).await;
        false
    }

    /// The request stream failed: a request we cannot decode ends the stream with a
    /// status that says so; a broken connection is only logged.
    async fn unreadable(&mut self, e: Status, span: &tracing::Span) {
        let transport = e.message().starts_with("h2 protocol error") || !matches!(e.code(), tonic::Code::Internal | tonic::Code::OutOfRange);
        if transport {
            tracing::info!(parent: span, "xds: agent stream ended: {e}");
            return;
        }
        let limit = if e.code() == tonic::Code::OutOfRange {
            format!(" (requests are limited to {} bytes, MAX_REQUEST_BYTES)", limits::MAX_REQUEST_BYTES)
        } else {
            String::new()
        };
        let why = format!("the control plane cannot read this agent's delta ADS request{limit}: {}", e.message());
        self.refuse(Status::new(e.code(), why), span).await;
    }

    /// Queues one response. An agent that does not read blocks here (its stream's
    /// flow control is full) and skips to the latest snapshot once it reads again;
    /// meanwhile its turn for first answers passes at its deadline, so that agents
    /// that stopped reading cannot keep others from their first answers.
    async fn send(&mut self, resp: DeltaDiscoveryResponse, span: &tracing::Span) -> bool {
        loop {
            let deadline = self.turn.as_ref().map(|t| t.deadline);
            tokio::select! {
                slot = self.out.reserve() => {
                    let Ok(slot) = slot else { return false };
                    slot.send(Ok(resp));
                    return true;
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    tracing::info!(parent: span, "xds: agent is not reading its stream; its turn for first answers passes");
                    self.turn = None;
                }
            }
        }
    }

    fn next_nonce(&mut self) -> u64 {
        self.nonce += 1;
        self.nonce
    }
}

/// Undoes a connection's metrics when it ends.
struct Gone {
    metrics: Arc<CpMetrics>,
    node: String,
}

impl Drop for Gone {
    fn drop(&mut self) {
        self.metrics.connected_agents.dec();
        self.metrics.forget_node(&self.node);
    }
}

/// The address an on-demand name asks for: `<network>/<ip>` (ztunnel's form) or a
/// bare IP; `None` for anything else.
fn demanded_address(name: &str) -> Option<IpAddr> {
    let ip: IpAddr = name.rsplit_once('/').map_or(name, |(_, ip)| ip).parse().ok()?;
    Some(ip.to_canonical())
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
    use std::collections::HashMap;

    use super::*;
    use crate::controlplane::model::Resource as Res;
    use crate::proto::ADDRESS_TYPE_URL;

    fn snap(items: &[(&str, &str)]) -> Snapshot {
        let mut s = Snapshot::default();
        for (n, v) in items {
            let any = prost_types::Any { type_url: ADDRESS_TYPE_URL.into(), value: v.as_bytes().to_vec() };
            s.resources.insert(n.to_string(), Arc::new(Res { version: v.to_string(), any }));
        }
        s
    }

    fn all(s: &Snapshot) -> Scoped<'_> {
        s.resources.iter().map(|(n, r)| (n.as_str(), &**r)).collect()
    }

    fn names(d: &Delta) -> Vec<&str> {
        d.resources.iter().map(|r| r.name.as_str()).collect()
    }

    fn named(items: &[(&str, String)]) -> Holds {
        Holds::Named(Held::from_versions(items.iter().map(|(a, b)| (a.to_string(), b.clone())).collect()))
    }

    #[test]
    fn diff_sends_changed_and_new_and_removes_gone() {
        let v = |n: u64| format!("{n:016x}");
        let held = named(&[("same", v(1)), ("changed", v(1)), ("gone", v(1))]);
        let s = snap(&[("same", &v(1)), ("changed", &v(2)), ("new", &v(1))]);
        let d = diff(&held, ADDRESS_TYPE_URL, &all(&s));
        assert_eq!(names(&d), vec!["changed", "new"]);
        assert_eq!(d.removed, vec!["gone"]);
        let view = Arc::new(View::first(Arc::new(s)));
        let scope = Holds::Scope { needs: view.index.needs("n"), view: view.clone() };
        assert!(diff(&scope, ADDRESS_TYPE_URL, &all(&view.snap)).is_empty(), "holding the scope: nothing to send");
    }

    #[test]
    fn split_bounds_parts_and_keeps_everything() {
        let r = |n: &str, len: usize| Resource {
            name: n.into(),
            version: "1".into(),
            resource: Some(prost_types::Any { type_url: String::new(), value: vec![0; len] }),
            aliases: vec![],
        };
        let d = Delta { resources: vec![r("a", 60), r("b", 60), r("c", 200), r("d", 10)], removed: vec!["x".into()] };
        let parts = d.split(100);
        let names: Vec<Vec<&str>> = parts.iter().map(|p| p.resources.iter().map(|r| r.name.as_str()).collect()).collect();
        assert_eq!(names, vec![vec!["a"], vec!["b"], vec!["c"], vec!["d"]], "c is over the limit and goes alone");
        assert!(parts[..3].iter().all(|p| p.removed.is_empty()));
        assert_eq!(parts[3].removed, vec!["x"]);
        assert_eq!(Delta::default().split(100), vec![Delta::default()], "an empty delta is one empty response");
    }

    #[test]
    fn diff_from_nothing_is_everything() {
        let s = snap(&[("a", "1"), ("b", "1")]);
        let d = diff(&named(&[]), ADDRESS_TYPE_URL, &all(&s));
        assert_eq!(names(&d), vec!["a", "b"]);
        assert!(d.removed.is_empty());
    }

    /// The incremental diff of a synced client equals the full one, for every type and node.
    #[test]
    fn incremental_diff_matches_the_full_diff() {
        use crate::controlplane::folder::Folder;
        let yaml = "
kind: Namespace
metadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}
---
kind: Pod
metadata: {name: p1, namespace: a, labels: {app: x}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.1}
---
kind: Pod
metadata: {name: p2, namespace: a, labels: {app: y}}
spec: {nodeName: n2}
status: {podIP: 10.0.0.2}
---
kind: Service
metadata: {name: x, namespace: a}
spec: {clusterIP: 10.96.0.1, selector: {app: x}, ports: [{port: 80}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns, namespace: a}
spec: {rules: [{}]}
---
kind: Namespace
metadata: {name: b, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: b}
spec: {egress: [{hosts: ['./*']}]}
---
kind: Pod
metadata: {name: q1, namespace: b, labels: {app: q}}
spec: {nodeName: n3, serviceAccountName: qa}
status: {podIP: 10.0.1.1}
---
kind: Pod
metadata: {name: q2, namespace: b, labels: {app: q}}
spec: {nodeName: n4}
status: {podIP: 10.0.1.2}
---
kind: Service
metadata: {name: q, namespace: b}
spec: {clusterIP: 10.96.1.1, selector: {app: q}, ports: [{port: 80}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: callers, namespace: b}
spec: {rules: [{from: [{source: {principals: [cluster.local/ns/a/sa/default]}}]}]}
";
        let build = |y: &str| {
            let (o, errors) = Folder::default().apply(vec![("t.yaml".into(), Ok(y.to_string()))]);
            assert!(errors.is_empty(), "{errors:?}");
            Arc::new(crate::controlplane::model::build(&o, "cluster.local"))
        };
        let v1 = Arc::new(View::first(build(yaml)));
        let edits = [
            yaml.replace("10.0.0.2", "10.0.0.3"),
            yaml.replace("spec: {rules: [{}]}", "spec: {action: DENY, rules: [{}]}"),
            yaml.replace("kind: AuthorizationPolicy", "kind: ConfigMap"),
            yaml.replace("kind: Service", "kind: ConfigMap"),
            yaml.replace("spec: {nodeName: n2}", "spec: {nodeName: n1}"),
            yaml.replace("status: {podIP: 10.0.0.2}", "status: {}"),
            // Narrowed nodes: an endpoint moves, a caller's identity and a policy's peers change.
            yaml.replace("10.0.1.2", "10.0.1.3"),
            yaml.replace("{app: q}}\nspec: {nodeName: n4}", "{app: z}}\nspec: {nodeName: n4}"),
            yaml.replace("cluster.local/ns/a/sa/default", "cluster.local/ns/a/sa/other"),
            yaml.replace("principals: [cluster.local/ns/a/sa/default]", "namespaces: [a]"),
            yaml.replace("metadata: {name: callers, namespace: b}", "metadata: {name: callers, namespace: istio-system}"),
            yaml.replace("kind: Sidecar", "kind: ConfigMap"),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let v2 = Arc::new(View::next(&v1, build(edit)));
            // The index carried over from v1 is the index of v2 built afresh.
            let fresh = Index::new(&v2.snap);
            for node in ["n1", "n2", "n3", "n4", "n9"] {
                assert_eq!(*fresh.needs(node), *v2.index.needs(node), "edit {i}: needs of {node}");
                for t in TYPES {
                    for name in resources_of(&v2.snap, t).unwrap().keys() {
                        let needs = v2.index.needs(node);
                        assert_eq!(fresh.admits(&needs, t, name), v2.index.admits(&needs, t, name), "edit {i}: {node} {t} {name}");
                    }
                }
            }
            for node in ["n1", "n2", "n3", "n4", "n9"] {
                for t in TYPES {
                    let (needs, next) = (v1.index.needs(node), v2.index.needs(node));
                    let versions: HashMap<String, String> = scope_type(&v1.snap, &v1.index, &needs, t)
                        .iter()
                        .map(|(n, r)| (n.to_string(), r.version.clone()))
                        .collect();
                    let named = Holds::Named(Held::from_versions(versions));
                    let scope = Holds::Scope { view: v1.clone(), needs: needs.clone() };
                    let Some(also) = v2.index.affected(&needs, &next, t) else {
                        continue; // needs that take a look at everything: the full diff
                    };
                    let full = diff(&named, t, &scope_type(&v2.snap, &v2.index, &next, t));
                    assert_eq!(diff(&scope, t, &scope_type(&v2.snap, &v2.index, &next, t)), full, "edit {i}, {node}, {t}: a held scope is what was named");
                    let mut inc = diff_changed(&scope, &v2, &next, t, &also);
                    inc.removed.sort();
                    assert_eq!(inc, full, "edit {i}, {node}, {t}");
                    let now = Holds::Scope { view: v2.clone(), needs: next.clone() };
                    assert!(diff(&now, t, &scope_type(&v2.snap, &v2.index, &next, t)).is_empty());
                }
            }
        }
    }
}
