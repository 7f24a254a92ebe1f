//! The agent's delta ADS client: subscribes to `istio.workload.Address` and
//! `istio.security.Authorization` on one stream, fills [`State`], and resumes with what
//! it holds after a reconnect (last known good while disconnected).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::proto::discovery::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, Node, Resource, Status as RpcStatus,
};
use crate::node_token::Credential;
use crate::proto::workload as wl;
use crate::proto::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, DESTINATION_RULE_TYPE_URL, REQUEST_AUTHENTICATION_TYPE_URL,
    VIRTUAL_SERVICE_TYPE_URL,
};
use crate::state::{self, State, TunnelProtocol};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Address(String),
    #[error("connect failed: {0}")]
    Connect(#[source] tonic::transport::Error),
    #[error("stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the control plane sent a response over this agent's limit of {MAX_RESPONSE_BYTES} bytes (MAX_RESPONSE_BYTES); is the mesh that large? {0}")]
    TooLarge(String),
    #[error("the control plane closed the stream")]
    Closed,
    #[error(transparent)]
    Credential(#[from] crate::node_token::CredentialError),
}

/// A resource we could not use; reported back to the control plane in a NACK.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ConvertError {
    #[error("{0}: not an istio.workload.Address: {1}")]
    Decode(String, String),
    #[error("{0}: unexpected type URL {1:?}")]
    TypeUrl(String, String),
    #[error("{0}: empty Address (neither workload nor service)")]
    Empty(String),
    #[error("{0}: address of {1} bytes is neither IPv4 (4) nor IPv6 (16)")]
    BadAddress(String, usize),
    #[error("{0}: port {1} is out of range")]
    BadPort(String, u32),
    #[error("{0}: not an istio.security.Authorization: {1}")]
    DecodeAuthorization(String, String),
    #[error("{0}: not a mesh.security.RequestAuthentication: {1}")]
    DecodeRequestAuthn(String, String),
    #[error("{0}: not a {1}: {2}")]
    DecodeRouting(String, &'static str, String),
    #[error(transparent)]
    Authorization(#[from] crate::authz::ConvertError),
}

/// What one Address resource says.
#[derive(Clone, Debug, PartialEq)]
pub enum Converted {
    /// A workload, the services it backs (service name -> service port -> target port)
    /// and the policies that select it by label.
    Workload(state::Workload, BTreeMap<String, BTreeMap<u16, u16>>, Vec<String>),
    /// A service, without endpoints (they come from workloads).
    Service(state::Service),
}

/// The address `b` holds (4 or 16 bytes); `name` is the resource, for the error.
pub(crate) fn ip(name: &str, b: &[u8]) -> Result<IpAddr, ConvertError> {
    match b.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(b).unwrap())),
        16 => Ok(IpAddr::from(<[u8; 16]>::try_from(b).unwrap())),
        n => Err(ConvertError::BadAddress(name.into(), n)),
    }
}

fn port(name: &str, p: u32) -> Result<u16, ConvertError> {
    u16::try_from(p).map_err(|_| ConvertError::BadPort(name.into(), p))
}

/// Converts one Address (already decoded) to state types. Pure.
pub fn convert(name: &str, addr: wl::Address) -> Result<Converted, ConvertError> {
    match addr.r#type {
        None => Err(ConvertError::Empty(name.into())),
        Some(wl::address::Type::Workload(w)) => {
            let addresses = w.addresses.iter().map(|b| ip(name, b)).collect::<Result<Vec<_>, _>>()?;
            let mut services = BTreeMap::new();
            for (svc, list) in &w.services {
                let mut ports = BTreeMap::new();
                for p in &list.ports {
                    ports.insert(port(name, p.service_port)?, port(name, p.target_port)?);
                }
                services.insert(svc.clone(), ports);
            }
            let protocol = match wl::TunnelProtocol::try_from(w.tunnel_protocol) {
                Ok(wl::TunnelProtocol::Hbone) => TunnelProtocol::Hbone,
                _ => TunnelProtocol::None,
            };
            let workload = state::Workload {
                uid: if w.uid.is_empty() { name.to_string() } else { w.uid },
                name: w.name,
                namespace: w.namespace,
                service_account: if w.service_account.is_empty() { "default".into() } else { w.service_account },
                trust_domain: if w.trust_domain.is_empty() { "cluster.local".into() } else { w.trust_domain },
                node: w.node,
                addresses,
                protocol,
                labels: BTreeMap::new(),
                healthy: w.status != wl::WorkloadStatus::Unhealthy as i32,
            };
            Ok(Converted::Workload(workload, services, w.authorization_policies))
        }
        Some(wl::address::Type::Service(s)) => {
            let vips = s.addresses.iter().map(|a| ip(name, &a.address)).collect::<Result<Vec<_>, _>>()?;
            let ports = s
                .ports
                .iter()
                .map(|p| Ok(state::ServicePort { service_port: port(name, p.service_port)?, target_port: port(name, p.target_port)? }))
                .collect::<Result<Vec<_>, ConvertError>>()?;
            Ok(Converted::Service(state::Service {
                name: s.name,
                namespace: s.namespace,
                hostname: s.hostname,
                vips,
                ports,
                endpoints: BTreeMap::new(),
            }))
        }
    }
}

/// Decodes a delta resource and converts it. Pure.
pub fn decode(r: &Resource) -> Result<Converted, ConvertError> {
    let any = r.resource.as_ref().ok_or_else(|| ConvertError::Empty(r.name.clone()))?;
    if any.type_url != ADDRESS_TYPE_URL {
        return Err(ConvertError::TypeUrl(r.name.clone(), any.type_url.clone()));
    }
    let addr = wl::Address::decode(any.value.as_slice()).map_err(|e| ConvertError::Decode(r.name.clone(), e.to_string()))?;
    convert(&r.name, addr)
}

/// Decodes and converts one Authorization resource. Pure.
pub fn decode_authorization(r: &Resource) -> Result<crate::authz::Policy, ConvertError> {
    let any = r.resource.as_ref().ok_or_else(|| ConvertError::Empty(r.name.clone()))?;
    if any.type_url != AUTHORIZATION_TYPE_URL {
        return Err(ConvertError::TypeUrl(r.name.clone(), any.type_url.clone()));
    }
    let a = crate::proto::security::Authorization::decode(any.value.as_slice())
        .map_err(|e| ConvertError::DecodeAuthorization(r.name.clone(), e.to_string()))?;
    Ok(crate::authz::convert(&r.name, &a)?)
}

/// Decodes one VirtualService (`vs`) or DestinationRule resource. Pure.
pub fn decode_routing(r: &Resource, vs: bool) -> Result<state::Routing, ConvertError> {
    use crate::proto::mesh_networking::{DestinationRule, VirtualService};
    let (what, url) = if vs {
        ("mesh.networking.VirtualService", VIRTUAL_SERVICE_TYPE_URL)
    } else {
        ("mesh.networking.DestinationRule", DESTINATION_RULE_TYPE_URL)
    };
    let bad = |e: String| ConvertError::DecodeRouting(r.name.clone(), what, e);
    let bytes = body(r, url, bad)?;
    let routing = if vs {
        state::Routing::VirtualService(std::sync::Arc::new(VirtualService::decode(bytes).map_err(|e| bad(e.to_string()))?))
    } else {
        state::Routing::DestinationRule(std::sync::Arc::new(DestinationRule::decode(bytes).map_err(|e| bad(e.to_string()))?))
    };
    // The key must be the resource name: removals come by name.
    if routing.key().split_once('/').map(|(_, n)| n) != Some(r.name.as_str()) {
        return Err(bad(format!("names {} but its resource name is {}", routing.key(), r.name)));
    }
    Ok(routing)
}

/// The encoded body of `r`, which must be of type `url`; else `bad` says why.
fn body<'a>(r: &'a Resource, url: &str, bad: impl Fn(String) -> ConvertError) -> Result<&'a [u8], ConvertError> {
    let any = r.resource.as_ref().ok_or_else(|| bad("resource without a body".into()))?;
    if any.type_url != url {
        return Err(bad(format!("type {}", any.type_url)));
    }
    Ok(any.value.as_slice())
}

/// Decodes one RequestAuthentication resource. Pure.
pub fn decode_request_authn(r: &Resource) -> Result<state::RequestAuthn, ConvertError> {
    use crate::proto::mesh_security::RequestAuthentication;
    let bad = |e: String| ConvertError::DecodeRequestAuthn(r.name.clone(), e);
    let ra = RequestAuthentication::decode(body(r, REQUEST_AUTHENTICATION_TYPE_URL, bad)?).map_err(|e| bad(e.to_string()))?;
    let rules = ra
        .rules
        .into_iter()
        .map(|j| crate::jwt::Rule {
            issuer: j.issuer,
            audiences: j.audiences,
            jwks: (!j.jwks.is_empty()).then_some(j.jwks),
            from_headers: j.from_headers.into_iter().map(|h| crate::jwt::FromHeader { name: h.name, prefix: h.prefix }).collect(),
            from_params: j.from_params,
            from_cookies: j.from_cookies,
            forward_original_token: j.forward_original_token,
            output_payload_to_header: (!j.output_payload_to_header.is_empty()).then_some(j.output_payload_to_header),
            output_claim_to_headers: j
                .output_claim_to_headers
                .into_iter()
                .map(|c| crate::jwt::ClaimToHeader { header: c.header, claim: c.claim })
                .collect(),
        })
        .collect();
    Ok(state::RequestAuthn {
        name: ra.name,
        namespace: ra.namespace,
        mesh_wide: ra.mesh_wide,
        workloads: (ra.by_workload || !ra.selector.is_empty()).then_some(ra.workloads),
        rules,
    })
}

/// What the client holds, to compute service endpoints and to resume after a reconnect.
#[derive(Default)]
pub struct Cache {
    /// name -> version of every Address resource applied.
    versions: HashMap<String, String>,
    /// name -> version of every Authorization resource applied.
    authz_versions: HashMap<String, String>,
    /// name -> version of every RequestAuthentication resource applied.
    authn_versions: HashMap<String, String>,
    /// name -> version of every VirtualService and DestinationRule applied.
    vs_versions: HashMap<String, String>,
    dr_versions: HashMap<String, String>,
    /// workload uid -> services it backs.
    backs: HashMap<String, BTreeMap<String, BTreeMap<u16, u16>>>,
    /// service name -> service (endpoints filled on upsert).
    services: HashMap<String, state::Service>,
}

impl Cache {
    /// Applies one response of either type; returns the resources that could not be
    /// used (kept at their previous version).
    pub fn apply(&mut self, resp: &DeltaDiscoveryResponse, state: &State) -> Vec<ConvertError> {
        if resp.type_url == AUTHORIZATION_TYPE_URL {
            return self.apply_authorizations(resp, state);
        }
        if resp.type_url == REQUEST_AUTHENTICATION_TYPE_URL {
            return self.apply_request_authns(resp, state);
        }
        if resp.type_url == VIRTUAL_SERVICE_TYPE_URL || resp.type_url == DESTINATION_RULE_TYPE_URL {
            return self.apply_routing(resp, state);
        }
        let mut errors = Vec::new();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for r in &resp.resources {
            match decode(r) {
                Err(e) => errors.push(e),
                Ok(Converted::Workload(w, backs, policies)) => {
                    touched.extend(backs.keys().cloned());
                    if let Some(old) = self.backs.insert(w.uid.clone(), backs) {
                        touched.extend(old.into_keys());
                    }
                    state.upsert_workload_with_policies(w, policies);
                    self.versions.insert(r.name.clone(), r.version.clone());
                }
                Ok(Converted::Service(s)) => {
                    touched.insert(r.name.clone());
                    self.services.insert(r.name.clone(), s);
                    self.versions.insert(r.name.clone(), r.version.clone());
                }
            }
        }
        for name in &resp.removed_resources {
            self.versions.remove(name);
            if let Some(old) = self.backs.remove(name) {
                touched.extend(old.into_keys());
                state.remove_workload(name);
            } else if self.services.remove(name).is_some() {
                state.remove_service(name);
            }
        }
        for name in touched {
            let Some(svc) = self.services.get(&name) else { continue };
            let mut svc = svc.clone();
            svc.endpoints = self
                .backs
                .iter()
                .filter_map(|(uid, backs)| backs.get(&name).map(|ports| (uid.clone(), ports.clone())))
                .collect();
            state.upsert_service(svc);
        }
        errors
    }

    fn apply_authorizations(&mut self, resp: &DeltaDiscoveryResponse, state: &State) -> Vec<ConvertError> {
        let mut errors = Vec::new();
        for r in &resp.resources {
            match decode_authorization(r) {
                Ok(p) => {
                    state.upsert_policy(p);
                    self.authz_versions.insert(r.name.clone(), r.version.clone());
                }
                Err(e) => {
                    // No good version to keep: the policy denies until one arrives.
                    if !self.authz_versions.contains_key(&r.name) {
                        state.upsert_policy(crate::authz::Policy::unusable(&r.name, format!("it failed to load: {e}")));
                    }
                    errors.push(e);
                }
            }
        }
        for name in &resp.removed_resources {
            self.authz_versions.remove(name);
            state.remove_policy(name);
        }
        errors
    }

    fn apply_request_authns(&mut self, resp: &DeltaDiscoveryResponse, state: &State) -> Vec<ConvertError> {
        let mut errors = Vec::new();
        for r in &resp.resources {
            match decode_request_authn(r) {
                Ok(ra) => {
                    state.upsert_request_authn(ra);
                    self.authn_versions.insert(r.name.clone(), r.version.clone());
                }
                Err(e) => errors.push(e),
            }
        }
        for name in &resp.removed_resources {
            self.authn_versions.remove(name);
            state.remove_request_authn(name);
        }
        errors
    }

    /// What the client holds of `type_url` (name -> version).
    /// VirtualServices and DestinationRules: held for the L7 router as sent; one that
    /// does not decode is NACKed and its previous version stays.
    fn apply_routing(&mut self, resp: &DeltaDiscoveryResponse, state: &State) -> Vec<ConvertError> {
        let vs = resp.type_url == VIRTUAL_SERVICE_TYPE_URL;
        let mut errors = Vec::new();
        for r in &resp.resources {
            match decode_routing(r, vs) {
                Ok(routing) => {
                    state.upsert_routing(routing);
                    let versions = if vs { &mut self.vs_versions } else { &mut self.dr_versions };
                    versions.insert(r.name.clone(), r.version.clone());
                }
                Err(e) => errors.push(e),
            }
        }
        for name in &resp.removed_resources {
            let versions = if vs { &mut self.vs_versions } else { &mut self.dr_versions };
            versions.remove(name);
            state.remove_routing(&format!("{}/{name}", if vs { "virtualservice" } else { "destinationrule" }));
        }
        errors
    }

    pub fn versions_of(&self, type_url: &str) -> &HashMap<String, String> {
        match type_url {
            AUTHORIZATION_TYPE_URL => &self.authz_versions,
            REQUEST_AUTHENTICATION_TYPE_URL => &self.authn_versions,
            VIRTUAL_SERVICE_TYPE_URL => &self.vs_versions,
            DESTINATION_RULE_TYPE_URL => &self.dr_versions,
            _ => &self.versions,
        }
    }

    pub fn versions(&self) -> &HashMap<String, String> {
        &self.versions
    }
}

/// A tonic endpoint for `host:port` or a full `http://` URI.
pub(crate) fn endpoint(addr: &str) -> Result<tonic::transport::Endpoint, String> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    tonic::transport::Endpoint::from_shared(uri)
        .map(|e| e.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true))
        .map_err(|e| format!("invalid address {addr:?}: {e}"))
}

/// Largest response the agent decodes. The largest is the first Address answer, the
/// whole mesh: ~3 MB at 10,000 workloads, so 64 MiB leaves room for ~200,000.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// A failed response stream; one over [`MAX_RESPONSE_BYTES`] says so (tonic's own
/// words for it: "decoded message length too large").
fn stream_error(s: tonic::Status) -> Error {
    if s.code() == tonic::Code::OutOfRange && s.message().contains("decoded message length too large") {
        return Error::TooLarge(s.message().to_string());
    }
    Error::Stream(s)
}

/// Istio's own types: the agent is not synced before their first answers (istiod
/// serves these to ztunnel).
const ISTIO_TYPES: [&str; 2] = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL];

/// How long after the Istio types the agent waits for the first answers of our own
/// (`mesh.*`) before it counts itself synced without them. Our control plane answers
/// every type in one go; istiod, which does not serve ours, never answers them, and an
/// agent taking config from istiod must not wait for them forever.
pub const MESH_TYPES_GRACE: Duration = Duration::from_secs(3);

/// The types the agent subscribes to.
const TYPES: [&str; 5] = [
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    REQUEST_AUTHENTICATION_TYPE_URL,
    VIRTUAL_SERVICE_TYPE_URL,
    DESTINATION_RULE_TYPE_URL,
];

/// Runs the client until dropped or aborted. `synced` turns true once the first
/// response of every type is applied.
pub async fn run(addr: String, node: String, credential: Credential, state: State, synced: watch::Sender<bool>) {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(15);
    let mut cache = Cache::default();
    let mut backoff = MIN;
    loop {
        let mut got_response = false;
        let cause = match session(&addr, &node, &credential, &state, &synced, &mut cache, &mut got_response).await {
            Ok(()) => Error::Closed,
            Err(e) => e,
        };
        if got_response {
            backoff = MIN;
        }
        let delay = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
        match &cause {
            Error::Stream(s) if matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => {
                tracing::warn!("xds: the control plane at {addr} refused this agent as node {node}: {}; retrying in {delay:?}", s.message())
            }
            Error::Credential(_) | Error::TooLarge(_) => tracing::warn!("xds: {cause}; retrying in {delay:?}"),
            _ => tracing::warn!("xds: cannot reach control plane at {addr}: {cause}; retrying in {delay:?}"),
        }
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(MAX);
    }
}

async fn session(
    addr: &str,
    node: &str,
    credential: &Credential,
    state: &State,
    synced: &watch::Sender<bool>,
    cache: &mut Cache,
    got_response: &mut bool,
) -> Result<(), Error> {
    let channel = endpoint(addr).map_err(Error::Address)?.connect().await.map_err(Error::Connect)?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
    // Room for every subscription before the stream starts reading, and for ACKs.
    let (tx, rx) = mpsc::channel(TYPES.len() + 4);
    let (mut asks, again) = state.on_demand().attach();
    for type_url in TYPES {
        // Addresses: everything (`*`) and the callers looked up before, asked again.
        let names = if type_url == ADDRESS_TYPE_URL {
            std::iter::once("*".to_string()).chain(again.iter().map(|ip| crate::ondemand::name(*ip))).collect()
        } else {
            vec![]
        };
        let subscribe = DeltaDiscoveryRequest {
            node: Some(Node { id: node.to_string(), ..Default::default() }),
            type_url: type_url.to_string(),
            initial_resource_versions: cache.versions_of(type_url).clone(),
            resource_names_subscribe: names,
            ..Default::default()
        };
        tx.send(subscribe).await.map_err(|_| Error::Closed)?;
    }
    let mut seen: BTreeSet<String> = BTreeSet::new();
    // When the Istio types were all answered: the grace for ours runs from then.
    let mut istio_synced: Option<tokio::time::Instant> = None;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    credential.authorize(&mut request)?;
    let mut responses = client.delta_aggregated_resources(request).await?.into_inner();
    tracing::info!(addr, held = cache.versions().len(), "xds: connected to the control plane");
    loop {
        let resp = tokio::select! {
            r = responses.message() => match r.map_err(stream_error)? {
                Some(resp) => resp,
                None => return Ok(()),
            },
            Some(first) = asks.recv() => {
                tx.send(lookups(first, &mut asks)).await.map_err(|_| Error::Closed)?;
                continue;
            }
            _ = tokio::time::sleep_until(istio_synced.map_or_else(tokio::time::Instant::now, |t| t + MESH_TYPES_GRACE)),
                if istio_synced.is_some() && seen.len() < TYPES.len() && !*synced.borrow() =>
            {
                let missing: Vec<&str> = TYPES.iter().copied().filter(|t| !seen.contains(*t)).collect();
                tracing::warn!(?missing, "xds: the control plane has not answered these types {MESH_TYPES_GRACE:?} after Istio's: it does not serve them (istiod?); synced without them, so what they carry (RequestAuthentication, L7 routing) is not applied");
                synced.send_if_modified(|s| !std::mem::replace(s, true));
                continue;
            }
        };
        *got_response = true;
        if !TYPES.contains(&resp.type_url.as_str()) {
            tracing::debug!(type_url = resp.type_url, "xds: ignoring a type we did not ask for");
            continue;
        }
        let errors = cache.apply(&resp, state);
        if resp.type_url == ADDRESS_TYPE_URL {
            answer_lookups(&resp, state);
        }
        let error_detail = if errors.is_empty() {
            None
        } else {
            let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            tracing::warn!("xds: rejected {} resource(s), keeping their previous version: {message}", errors.len());
            Some(RpcStatus { code: tonic::Code::InvalidArgument as i32, message, details: vec![] })
        };
        tracing::debug!(
            nonce = resp.nonce,
            applied = resp.resources.len() - errors.len(),
            removed = resp.removed_resources.len(),
            "xds: update"
        );
        let ack = DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail,
            ..Default::default()
        };
        tx.send(ack).await.map_err(|_| Error::Closed)?;
        // A first answer split over several responses is complete at its last part.
        if resp.system_version_info != crate::proto::MORE_TO_COME {
            seen.insert(resp.type_url.clone());
        }
        if istio_synced.is_none() && ISTIO_TYPES.iter().all(|t| seen.contains(*t)) {
            istio_synced = Some(tokio::time::Instant::now());
        }
        if seen.len() == TYPES.len() {
            synced.send_if_modified(|s| !std::mem::replace(s, true));
        }
    }
}

/// One request for `first` and every other lookup already queued.
fn lookups(first: crate::ondemand::Ask, queued: &mut mpsc::UnboundedReceiver<crate::ondemand::Ask>) -> DeltaDiscoveryRequest {
    use crate::ondemand::{name, Ask};
    let mut req = DeltaDiscoveryRequest { type_url: ADDRESS_TYPE_URL.to_string(), ..Default::default() };
    let mut next = Some(first);
    while let Some(ask) = next {
        match ask {
            Ask::Subscribe(ip) => req.resource_names_subscribe.push(name(ip)),
            Ask::Unsubscribe(ip) => req.resource_names_unsubscribe.push(name(ip)),
        }
        next = queued.try_recv().ok();
    }
    req
}

/// Wakes the lookups an Address response answers: addresses sent (as aliases, or
/// otherwise now held) and addresses the control plane says no workload has.
fn answer_lookups(resp: &DeltaDiscoveryResponse, state: &State) {
    let od = state.on_demand();
    let waiting = od.waiting();
    let aliases = resp.resources.iter().flat_map(|r| &r.aliases).filter_map(|a| crate::ondemand::address(a));
    let found: Vec<IpAddr> =
        aliases.chain(waiting.into_iter().filter(|ip| state.find_workload_by_ip(*ip).is_some())).collect();
    let missing = resp
        .removed_resources
        .iter()
        .filter_map(|n| crate::ondemand::address(n))
        .filter(|ip| state.find_workload_by_ip(*ip).is_none());
    od.answered(found, missing);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control plane that, like istiod, answers only Istio's types (with nothing)
    /// and never the types it does not serve.
    struct IstioTypesOnly;

    #[tonic::async_trait]
    impl crate::proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryService for IstioTypesOnly {
        type DeltaAggregatedResourcesStream =
            std::pin::Pin<Box<dyn futures::Stream<Item = Result<DeltaDiscoveryResponse, tonic::Status>> + Send>>;

        async fn delta_aggregated_resources(
            &self,
            request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
        ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
            let mut requests = request.into_inner();
            let (tx, rx) = mpsc::channel(8);
            tokio::spawn(async move {
                while let Ok(Some(r)) = requests.message().await {
                    if r.response_nonce.is_empty() && ISTIO_TYPES.contains(&r.type_url.as_str()) {
                        let resp = DeltaDiscoveryResponse { type_url: r.type_url, nonce: "1".into(), ..Default::default() };
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
            });
            Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
        }
    }

    /// From a control plane that does not serve our `mesh.*` types, the agent is synced
    /// once the Istio types are answered and the grace for ours has passed, not before.
    #[tokio::test]
    async fn a_control_plane_without_our_types_syncs_after_the_grace() {
        use crate::proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tokio::spawn(
            tonic::transport::Server::builder().serve_with_incoming_shutdown(
                AggregatedDiscoveryServiceServer::new(IstioTypesOnly),
                incoming,
                std::future::pending(),
            ),
        );
        let (tx, mut synced) = watch::channel(false);
        let started = tokio::time::Instant::now();
        let client = tokio::spawn(run(addr, "n1".into(), Credential::None, State::default(), tx));
        tokio::time::timeout(Duration::from_secs(10), synced.wait_for(|s| *s)).await.expect("synced").unwrap();
        assert!(started.elapsed() >= MESH_TYPES_GRACE, "synced before the grace: {:?}", started.elapsed());
        client.abort();
        server.abort();
    }

    fn workload_addr(uid: &str, backs: &[(&str, u32, u32)]) -> wl::Address {
        let mut services = BTreeMap::new();
        for (svc, sp, tp) in backs {
            services.insert(svc.to_string(), wl::PortList { ports: vec![wl::Port { service_port: *sp, target_port: *tp }] });
        }
        wl::Address {
            r#type: Some(wl::address::Type::Workload(wl::Workload {
                uid: uid.into(),
                name: "a".into(),
                namespace: "ns".into(),
                addresses: vec![vec![10, 0, 0, 1], vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]],
                tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
                trust_domain: "td".into(),
                service_account: "sa".into(),
                node: "n1".into(),
                services,
                ..Default::default()
            })),
        }
    }

    fn service_addr(ns: &str, host: &str) -> wl::Address {
        wl::Address {
            r#type: Some(wl::address::Type::Service(wl::Service {
                name: "echo".into(),
                namespace: ns.into(),
                hostname: host.into(),
                addresses: vec![wl::NetworkAddress { network: String::new(), address: vec![10, 96, 0, 1] }],
                ports: vec![wl::Port { service_port: 80, target_port: 8080 }],
                subject_alt_names: vec![],
            })),
        }
    }

    /// `m` as the resource `name` of `type_url`, versioned as the control plane does.
    fn resource_of(name: &str, type_url: &str, m: &impl prost::Message) -> Resource {
        Resource {
            version: crate::controlplane::model::version_of(&m.encode_to_vec()),
            resource: Some(prost_types::Any { type_url: type_url.into(), value: m.encode_to_vec() }),
            name: name.into(),
            aliases: vec![],
        }
    }

    fn res(name: &str, a: &wl::Address) -> Resource {
        resource_of(name, ADDRESS_TYPE_URL, a)
    }

    #[test]
    fn converts_workload() {
        let Converted::Workload(w, backs, _) = convert("u1", workload_addr("u1", &[("ns/echo", 80, 8080)])).unwrap() else {
            panic!()
        };
        assert_eq!(w.addresses, vec!["10.0.0.1".parse::<IpAddr>().unwrap(), "fd00::1".parse().unwrap()]);
        assert_eq!(w.protocol, TunnelProtocol::Hbone);
        assert_eq!(w.identity().to_string(), "spiffe://td/ns/ns/sa/sa");
        assert_eq!(backs["ns/echo"], BTreeMap::from([(80, 8080)]));
    }

    #[test]
    fn converts_service_and_defaults() {
        let Converted::Service(s) = convert("ns/h", service_addr("ns", "h")).unwrap() else { panic!() };
        assert_eq!(s.resource_name(), "ns/h");
        assert_eq!(s.vips, vec!["10.96.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.ports, vec![state::ServicePort { service_port: 80, target_port: 8080 }]);
        let bare = wl::Address { r#type: Some(wl::address::Type::Workload(wl::Workload::default())) };
        let Converted::Workload(w, _, _) = convert("u", bare).unwrap() else { panic!() };
        assert_eq!((w.uid.as_str(), w.service_account.as_str(), w.trust_domain.as_str()), ("u", "default", "cluster.local"));
        assert_eq!(w.protocol, TunnelProtocol::None);
    }

    #[test]
    fn rejects_bad_resources() {
        let mut a = workload_addr("u", &[]);
        if let Some(wl::address::Type::Workload(w)) = &mut a.r#type {
            w.addresses = vec![vec![1, 2, 3]];
        }
        assert_eq!(convert("u", a), Err(ConvertError::BadAddress("u".into(), 3)));
        assert_eq!(convert("u", wl::Address { r#type: None }), Err(ConvertError::Empty("u".into())));
        let garbage = Resource {
            name: "x".into(),
            resource: Some(prost_types::Any { type_url: ADDRESS_TYPE_URL.into(), value: vec![0xff, 0xff] }),
            ..Default::default()
        };
        assert!(matches!(decode(&garbage), Err(ConvertError::Decode(..))));
    }

    #[test]
    fn cache_builds_endpoints_keeps_last_good_and_removes() {
        let state = State::default();
        let mut cache = Cache::default();
        let svc = "ns/echo.ns.svc.cluster.local";
        let resp = DeltaDiscoveryResponse {
            resources: vec![res("u1", &workload_addr("u1", &[(svc, 80, 8080)])), res(svc, &service_addr("ns", "echo.ns.svc.cluster.local"))],
            ..Default::default()
        };
        assert!(cache.apply(&resp, &state).is_empty());
        let s = &state.services()[0];
        assert_eq!(s.endpoints, BTreeMap::from([("u1".to_string(), BTreeMap::from([(80, 8080)]))]));
        assert!(state.find_workload_by_ip("10.0.0.1".parse().unwrap()).is_some());

        // A bad update for u1 is rejected and the previous version stays.
        let mut bad = res("u1", &workload_addr("u1", &[]));
        bad.resource.as_mut().unwrap().value = vec![0xff];
        let errors = cache.apply(&DeltaDiscoveryResponse { resources: vec![bad], ..Default::default() }, &state);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().starts_with("u1:"), "{}", errors[0]);
        assert_eq!(state.services()[0].endpoints.len(), 1);

        // Removing the workload drops it from the service's endpoints.
        let resp = DeltaDiscoveryResponse { removed_resources: vec!["u1".into()], ..Default::default() };
        assert!(cache.apply(&resp, &state).is_empty());
        assert!(state.workloads().is_empty());
        assert!(state.services()[0].endpoints.is_empty());
        assert_eq!(cache.versions().keys().collect::<Vec<_>>(), vec![svc]);
        let resp = DeltaDiscoveryResponse { removed_resources: vec![svc.into()], ..Default::default() };
        cache.apply(&resp, &state);
        assert!(state.services().is_empty() && cache.versions().is_empty());
    }

    /// A control plane that answers 5 MiB (over tonic's default 4 MiB: read), then
    /// declares a length over MAX_RESPONSE_BYTES: the session fails naming the limit.
    #[tokio::test]
    async fn a_response_over_the_limit_fails_naming_it() {
        use http_body_util::Full;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(|_req| async {
                let big = DeltaDiscoveryResponse { type_url: "other".into(), system_version_info: "x".repeat(5 << 20), ..Default::default() };
                let mut frame = vec![0u8];
                frame.extend_from_slice(&(big.encoded_len() as u32).to_be_bytes());
                frame.extend_from_slice(&big.encode_to_vec());
                frame.push(0);
                frame.extend_from_slice(&(MAX_RESPONSE_BYTES as u32 + 1).to_be_bytes());
                let resp = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(Full::new(bytes::Bytes::from(frame)))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(resp)
            });
            let io = hyper_util::rt::TokioIo::new(tcp);
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new()).serve_connection(io, svc).await;
        });
        let (synced, _) = watch::channel(false);
        let (state, mut cache, mut got) = (State::default(), Cache::default(), false);
        let session = session(&addr, "n1", &Credential::None, &state, &synced, &mut cache, &mut got);
        let e = tokio::time::timeout(Duration::from_secs(5), session).await.expect("the session ends").unwrap_err();
        assert!(matches!(e, Error::TooLarge(_)), "{e}");
        let text = e.to_string();
        assert!(got, "the 5 MiB answer was read");
        assert!(text.contains("limit of 67108864 bytes (MAX_RESPONSE_BYTES)"), "{text}");
        assert!(text.contains("found 67108865 bytes, the limit is: 67108864 bytes"), "{text}");
        server.abort();
    }

    fn authz_res(name: &str, a: &crate::proto::security::Authorization) -> Resource {
        resource_of(name, AUTHORIZATION_TYPE_URL, a)
    }

    #[test]
    fn unusable_policies_deny_until_a_good_version_arrives() {
        use crate::authz::{decide, Attrs, Decision};
        let state = State::default();
        let mut cache = Cache::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let attrs = Attrs { src_ip: "10.9.9.9".parse().unwrap(), identity: None, dst_ip: ip, dst_port: 80 };
        let mut bad = authz_res("ns/p", &Default::default());
        bad.resource.as_mut().unwrap().value = vec![0xff];
        // A new policy that cannot be decoded: the namespace is denied, and the NACK says why.
        let errors = cache.apply(&DeltaDiscoveryResponse { type_url: AUTHORIZATION_TYPE_URL.into(), resources: vec![bad.clone()], ..Default::default() }, &state);
        assert_eq!(errors.len(), 1);
        let d = decide(&state.policies_for("ns", ip), &attrs, None);
        assert!(matches!(&d, Decision::Unusable(why) if why.starts_with("ns/p: it failed to load")), "{d:?}");
        assert_eq!(decide(&state.policies_for("other", ip), &attrs, None), Decision::Allow, "another namespace");
        // A good version replaces the stand-in; a later bad one keeps the good one.
        let good = crate::proto::security::Authorization {
            name: "p".into(),
            namespace: "ns".into(),
            scope: crate::proto::security::Scope::Namespace as i32,
            action: crate::proto::security::Action::Deny as i32,
            ..Default::default()
        };
        let ok = cache.apply(&DeltaDiscoveryResponse { type_url: AUTHORIZATION_TYPE_URL.into(), resources: vec![authz_res("ns/p", &good)], ..Default::default() }, &state);
        assert!(ok.is_empty());
        assert_eq!(decide(&state.policies_for("ns", ip), &attrs, None), Decision::Allow, "a DENY without rules denies nothing");
        cache.apply(&DeltaDiscoveryResponse { type_url: AUTHORIZATION_TYPE_URL.into(), resources: vec![bad], ..Default::default() }, &state);
        assert_eq!(decide(&state.policies_for("ns", ip), &attrs, None), Decision::Allow, "the last good version keeps serving");
        // A workload naming a policy that has not arrived: denied until it does.
        let resp = DeltaDiscoveryResponse { resources: vec![res("u1", &workload_addr("u1", &[]))], ..Default::default() };
        cache.apply(&resp, &state);
        let w = state.find_workload("u1").unwrap();
        state.upsert_workload_with_policies((*w).clone(), vec!["ns/later".into()]);
        let d = decide(&state.policies_for("ns", ip), &attrs, None);
        assert!(matches!(&d, Decision::Unusable(why) if why.contains("has not been received")), "{d:?}");
    }
}
