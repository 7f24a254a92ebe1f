//! End to end on loopback: the real server, the real xDS client and CertManager.
use std::time::Duration;

use super::*;
use crate::identity::CertManager;
use crate::node_token::{self, Credential};
use crate::state::{Identity, State};

const CONFIG: &str = "
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec: {nodeName: node1, serviceAccountName: sleep}
status: {podIP: 10.0.0.5}
---
kind: Pod
metadata: {name: echo, namespace: demo, labels: {app: echo}}
spec: {nodeName: node2}
status: {podIP: 10.0.0.6}
---
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
";

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(3), "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A control plane serving `files` on loopback.
struct Running {
    config: tempfile::TempDir,
    _state_dir: tempfile::TempDir,
    /// The node-token key the server uses (generated in its state dir).
    tokens: node_token::Key,
    addr: String,
    /// The admin listener (/metrics, /debug/syncz).
    admin: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), Error>>,
}

async fn start(files: &[(&str, &str)]) -> Running {
    let config = tempfile::tempdir().unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(config.path().join(name), text).unwrap();
    }
    let args = ControlPlaneArgs {
        source: super::Source::Folder,
        config_dir: Some(config.path().to_path_buf()),
        kubeconfig: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        state_dir: state_dir.path().to_path_buf(),
        trust_domain: "cluster.local".into(),
        debounce_ms: 50,
        debounce_max_ms: 500,
        cert_ttl: Duration::from_secs(3600),
        node_token_key: None,
        ca_cert_dir: None,
        trust_domain_aliases: Vec::new(),
        jwks_refresh_secs: 1200,
        jwks_ca_cert: None,
    };
    // Made here first; the server reads the same file.
    let tokens = node_token::Key::load(None, state_dir.path()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_listener.local_addr().unwrap().to_string();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_with_admin(listener, admin_listener, args, async move { drop(stop_rx.await) }));
    Running { config, _state_dir: state_dir, tokens, addr, admin, stop, server }
}

impl Running {
    fn credential(&self, node: &str) -> Credential {
        Credential::Token(self.tokens.issue(node).unwrap())
    }

    /// `msg` with `node`'s token.
    fn authorized<T>(&self, node: &str, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        self.credential(node).authorize(&mut req).unwrap();
        req
    }

    /// Shutdown completes even with an agent still connected.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.server).await.unwrap().unwrap().unwrap();
    }
}

/// node1's xDS client, synced.
async fn agent(cp: &Running) -> (State, tokio::task::JoinHandle<()>) {
    agent_on(cp, "node1").await
}

/// `node`'s xDS client, synced.
async fn agent_on(cp: &Running, node: &str) -> (State, tokio::task::JoinHandle<()>) {
    let state = State::default();
    let (synced_tx, mut synced) = watch::channel(false);
    let client = tokio::spawn(crate::xds::run(cp.addr.clone(), node.into(), cp.credential(node), state.clone(), synced_tx));
    tokio::time::timeout(Duration::from_secs(5), synced.wait_for(|s| *s)).await.unwrap().unwrap();
    (state, client)
}

mod badinput;
mod networking;
mod push;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_xds_pushes_changes_and_issues_certificates() {
    let cp = start(&[("demo.yaml", CONFIG)]).await;
    let (config, addr) = (&cp.config, cp.addr.clone());

    // (a) the agent's State receives workloads and services.
    let (state, client) = agent(&cp).await;
    assert_eq!(state.workloads().len(), 2);
    let svc = state.find_service_by_vip("10.96.0.10".parse().unwrap()).unwrap();
    assert_eq!(svc.hostname, "echo.demo.svc.cluster.local");
    assert_eq!(svc.endpoints["Kubernetes//Pod/demo/echo"][&80], 8080);
    let client_wl = state.find_workload_by_ip("10.0.0.5".parse().unwrap()).unwrap();
    assert_eq!(client_wl.identity().to_string(), "spiffe://cluster.local/ns/demo/sa/sleep");

    // (b) an edit is pushed as a delta: the removed pod leaves State and the endpoints.
    let edited = CONFIG.replace("kind: Pod\nmetadata: {name: echo", "kind: ConfigMap\nmetadata: {name: echo");
    std::fs::write(config.path().join("demo.yaml"), edited).unwrap();
    let edit_time = std::time::Instant::now();
    eventually("the echo pod to disappear", || state.find_workload("Kubernetes//Pod/demo/echo").is_none()).await;
    assert!(edit_time.elapsed() < Duration::from_secs(1), "push took {:?}", edit_time.elapsed());
    eventually("the service to lose its endpoint", || {
        state.find_service_by_vip("10.96.0.10".parse().unwrap()).is_some_and(|s| s.endpoints.is_empty())
    })
    .await;
    assert!(state.find_workload("Kubernetes//Pod/demo/client").is_some());

    // (c) certificates: issued for an identity on this node, refused for another node's.
    let certs = CertManager::new(addr.clone(), cp.credential("node1"));
    let id: Identity = "spiffe://cluster.local/ns/demo/sa/sleep".parse().unwrap();
    let (a, b) = tokio::join!(certs.fetch(&id), certs.fetch(&id));
    let cert = a.unwrap();
    assert!(std::sync::Arc::ptr_eq(&cert, &b.unwrap()), "concurrent callers share one request");
    assert_eq!(cert.identity, id);
    assert_eq!(cert.roots.len(), 1);
    assert_eq!(certs.identities(), vec![(id.clone(), cert.not_after)]);
    let anchor = webpki::anchor_from_trusted_cert(&cert.roots[0]).unwrap();
    let ee = webpki::EndEntityCert::try_from(&cert.cert_chain[0]).unwrap();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        rustls_pki_types::UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&cert.cert_chain[0]).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(format!("{:?}", san.value.general_names), "[URI(\"spiffe://cluster.local/ns/demo/sa/sleep\")]");
    assert!(!leaf.is_ca());

    let other = CertManager::new(addr.clone(), cp.credential("node2"));
    let e = other.fetch(&id).await.unwrap_err();
    assert!(matches!(e, crate::identity::Error::Refused { code: tonic::Code::PermissionDenied, .. }), "{e}");
    assert!(e.to_string().contains("node \"node2\" runs no pod with identity spiffe://cluster.local/ns/demo/sa/sleep"), "{e}");

    // (d) a reconnecting agent gets only what it lacks: nothing for what it holds at the
    // current version, a removal for what no longer exists.
    resume_sends_only_the_difference(&cp).await;

    cp.stop().await;
    client.abort();
}

async fn resume_sends_only_the_difference(cp: &Running) {
    let addr = &cp.addr;
    use crate::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use crate::proto::discovery::{DeltaDiscoveryRequest, Node};
    use crate::proto::ADDRESS_TYPE_URL;

    let request = |held: std::collections::HashMap<String, String>| DeltaDiscoveryRequest {
        node: Some(Node { id: "node9".into(), ..Default::default() }),
        type_url: ADDRESS_TYPE_URL.into(),
        initial_resource_versions: held,
        ..Default::default()
    };
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await.unwrap();
    // First a fresh subscriber, to learn the current versions.
    let stream = tokio_stream::iter(vec![request(Default::default())]);
    let mut responses = client.delta_aggregated_resources(cp.authorized("node9", stream)).await.unwrap().into_inner();
    let all = responses.message().await.unwrap().unwrap();
    assert_eq!(all.resources.len(), 2, "client pod and echo service");
    let mut held: std::collections::HashMap<String, String> =
        all.resources.iter().map(|r| (r.name.clone(), r.version.clone())).collect();
    let svc = "demo/echo.demo.svc.cluster.local";
    held.insert(svc.into(), "stale".into());
    held.insert("Kubernetes//Pod/demo/gone".into(), "1".into());
    let stream = tokio_stream::iter(vec![request(held)]);
    let mut responses = client.delta_aggregated_resources(cp.authorized("node9", stream)).await.unwrap().into_inner();
    let resumed = responses.message().await.unwrap().unwrap();
    let names: Vec<_> = resumed.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec![svc]);
    assert_eq!(resumed.removed_resources, vec!["Kubernetes//Pod/demo/gone"]);
    assert!(!resumed.nonce.is_empty());
}

const POLICY: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/demo/sa/sleep]}}]
";

/// Authorization resources over the same stream: the agent of the selected workload's
/// node gets them and the workload lists them; a change to other kinds sends no
/// Authorization delta, a policy edit sends just that policy, a deletion removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_authorizations_as_deltas() {
    use crate::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use crate::proto::discovery::{DeltaDiscoveryRequest, Node};
    use crate::proto::AUTHORIZATION_TYPE_URL;

    let cp = start(&[("demo.yaml", CONFIG), ("policy.yaml", POLICY)]).await;
    let (config, addr) = (&cp.config, cp.addr.clone());
    let (state, client) = agent_on(&cp, "node2").await;
    let names = |v: Vec<std::sync::Arc<crate::authz::Policy>>| v.iter().map(|p| p.key()).collect::<Vec<_>>();
    assert_eq!(names(state.policies()), vec!["demo/allow-sleep"]);
    assert_eq!(names(state.policies_for("demo", "10.0.0.6".parse().unwrap())), vec!["demo/allow-sleep"], "echo is selected");
    assert!(state.policies_for("demo", "10.0.0.5".parse().unwrap()).is_empty(), "client is not");

    // A raw subscriber to the Authorization type alone.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        node: Some(Node { id: "node2".into(), ..Default::default() }),
        type_url: AUTHORIZATION_TYPE_URL.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut raw = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let mut responses =
        raw.delta_aggregated_resources(cp.authorized("node2", tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap().into_inner();
    let first = responses.message().await.unwrap().unwrap();
    assert_eq!(first.type_url, AUTHORIZATION_TYPE_URL);
    assert_eq!(first.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["demo/allow-sleep"]);
    let ack = |nonce: String| DeltaDiscoveryRequest { type_url: AUTHORIZATION_TYPE_URL.into(), response_nonce: nonce, ..Default::default() };
    tx.send(ack(first.nonce.clone())).await.unwrap();

    // A pod change: Address deltas only, nothing for this subscriber.
    std::fs::write(config.path().join("demo.yaml"), CONFIG.replace("10.0.0.6", "10.0.0.7")).unwrap();
    eventually("the moved pod", || state.find_workload_by_ip("10.0.0.7".parse().unwrap()).is_some()).await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), responses.message()).await;
    assert!(quiet.is_err(), "an Address change pushed an Authorization delta: {quiet:?}");

    // A policy edit: just that policy; the agent's State follows.
    std::fs::write(config.path().join("policy.yaml"), POLICY.replace("rules:", "action: DENY\n  rules:")).unwrap();
    let edit = tokio::time::timeout(Duration::from_secs(3), responses.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(edit.resources.len(), 1);
    assert!(edit.removed_resources.is_empty());
    tx.send(ack(edit.nonce.clone())).await.unwrap();
    eventually("the DENY in State", || state.policies().first().is_some_and(|p| p.action == crate::authz::Action::Deny)).await;

    // Deleted: removed on both.
    std::fs::write(config.path().join("policy.yaml"), "# none\n").unwrap();
    let gone = tokio::time::timeout(Duration::from_secs(3), responses.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(gone.removed_resources, vec!["demo/allow-sleep"]);
    eventually("the policy to leave State", || state.policies().is_empty()).await;

    cp.stop().await;
    client.abort();
}

/// The node token decides which node an agent speaks for, on the CA and on xDS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_tokens_guard_the_ca_and_xds() {
    use crate::proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
    use crate::proto::ca::IstioCertificateRequest;
    use crate::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use crate::proto::discovery::{DeltaDiscoveryRequest, Node};
    use crate::proto::ADDRESS_TYPE_URL;

    let cp = start(&[("demo.yaml", CONFIG)]).await;
    let id: Identity = "spiffe://cluster.local/ns/demo/sa/sleep".parse().unwrap();
    let refused = |c: Credential| async {
        let e = CertManager::new(cp.addr.clone(), c).fetch(&id).await.unwrap_err();
        match e {
            crate::identity::Error::Refused { code, message, .. } => (code, message),
            e => panic!("not refused: {e}"),
        }
    };
    let (code, msg) = refused(Credential::None).await;
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert!(msg.starts_with("no node token"), "{msg}");
    let (code, msg) = refused(Credential::Token("v1.node1.garbage".into())).await;
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert!(msg.starts_with("malformed node token"), "{msg}");
    let forged = node_token::Key::from_bytes(&[7; 32]).unwrap().issue("node1").unwrap();
    let (code, msg) = refused(Credential::Token(forged)).await;
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert!(msg.contains("the node token for node \"node1\" does not verify"), "{msg}");
    // node2's token cannot get node1's identity.
    let (code, msg) = refused(cp.credential("node2")).await;
    assert_eq!(code, tonic::Code::PermissionDenied);
    assert!(msg.contains("node \"node2\" runs no pod with identity"), "{msg}");
    CertManager::new(cp.addr.clone(), cp.credential("node1")).fetch(&id).await.unwrap();

    // Bad CSRs with a good token: INVALID_ARGUMENT naming the problem, no certificate.
    let mut ca = IstioCertificateServiceClient::connect(format!("http://{}", cp.addr)).await.unwrap();
    let ask = |csr: String, validity_duration: i64| IstioCertificateRequest { csr, validity_duration, metadata: None };
    for (csr, want) in [
        ("garbage".to_string(), "not a PEM"),
        ("x".repeat(super::ca::MAX_CSR_BYTES + 1), "more than the 65536 accepted"),
    ] {
        let s = ca.create_certificate(cp.authorized("node1", ask(csr, 0))).await.unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains(want), "{}", s.message());
    }
    // A validity longer than the CA's (1 h here) is clamped.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(rcgen::Ia5String::try_from(id.to_string()).unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let chain = ca.create_certificate(cp.authorized("node1", ask(csr, 10 * 365 * 86400))).await.unwrap().into_inner().cert_chain;
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(chain[0].as_bytes()).map(|d: rustls_pki_types::CertificateDer| d.to_vec()).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
    let left = leaf.validity().not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((3500..=3600).contains(&left), "asked for 10 years, got {left} s");

    // xDS: no token is UNAUTHENTICATED; a token for another node than the request names
    // is PERMISSION_DENIED; the right one is served.
    let mut xds = AggregatedDiscoveryServiceClient::connect(format!("http://{}", cp.addr)).await.unwrap();
    let subscribe = |node: &str| {
        tokio_stream::iter(vec![DeltaDiscoveryRequest {
            node: Some(Node { id: node.into(), ..Default::default() }),
            type_url: ADDRESS_TYPE_URL.into(),
            ..Default::default()
        }])
    };
    let s = xds.delta_aggregated_resources(subscribe("node1")).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unauthenticated);
    assert!(s.message().starts_with("no node token"), "{}", s.message());
    let mut stream = xds.delta_aggregated_resources(cp.authorized("node2", subscribe("node1"))).await.unwrap().into_inner();
    let s = stream.message().await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied);
    assert!(s.message().contains("node token is for node \"node2\", but its requests name node \"node1\""), "{}", s.message());
    let mut stream = xds.delta_aggregated_resources(cp.authorized("node1", subscribe("node1"))).await.unwrap().into_inner();
    assert!(!stream.message().await.unwrap().unwrap().resources.is_empty());

    cp.stop().await;
}
