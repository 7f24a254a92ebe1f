//! The Kubernetes source against the API server stand-in (real HTTP, kube's own client
//! and watcher), and the store's relist/last-good logic on its own.
use std::time::{Duration, Instant};

use mesh_tests::apiserver::ApiServer;
use serde_json::{json, Value};

use super::*;

const QUIET: Duration = Duration::from_millis(50);
const MAX: Duration = Duration::from_millis(500);
/// Debounce plus a margin for a loaded 2-core machine.
const WITHIN: Duration = Duration::from_secs(3);
/// A 410 costs the watcher's backoff (about a second) before it lists again.
const RELIST_WITHIN: Duration = Duration::from_secs(8);

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"istio.io/dataplane-mode": "ambient"}}})
}

fn pod(ns: &str, name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": {"app": "echo"}},
           "spec": {"nodeName": "node1", "serviceAccountName": "echo",
                    "containers": [{"name": "echo", "image": "echo:1"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn service(ns: &str, name: &str, vip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip], "selector": {"app": "echo"},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
                    "sessionAffinity": "None"}})
}

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn seed(api: &ApiServer) {
    api.apply(namespace("shop"));
    api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"},
                     "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}}));
    api.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "echo", "namespace": "shop"}}));
    api.apply(service("shop", "echo", "10.96.0.10"));
    api.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": "echo-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "echo"}},
                     "addressType": "IPv4",
                     "endpoints": [{"addresses": ["10.0.0.5"], "nodeName": "node1", "conditions": {"ready": true}}],
                     "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}));
    api.apply(pod("shop", "echo-1", "10.0.0.5"));
    api.apply(policy("shop", "allow-get", json!({"action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]})));
    api.apply(json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                     "metadata": {"name": "strict", "namespace": "shop"}, "spec": {"mtls": {"mode": "STRICT"}}}));
    api.apply(json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                     "metadata": {"name": "jwt", "namespace": "shop"},
                     "spec": {"jwtRules": [{"issuer": "https://issuer.example", "jwksUri": "https://issuer.example/.well-known/jwks.json"}]}}));
    let networking = |kind: &str, name: &str, spec: Value| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": kind, "metadata": {"name": name, "namespace": "shop"}, "spec": spec})
    };
    api.apply(networking("VirtualService", "echo", json!({"hosts": ["echo"], "http": [{"route": [{"destination": {"host": "echo", "subset": "v1"}}]}]})));
    api.apply(networking("DestinationRule", "echo", json!({"host": "echo", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]})));
    api.apply(networking("Gateway", "ingress", json!({"servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*/echo.example.com"]}]})));
    api.apply(networking("ServiceEntry", "ext", json!({"hosts": ["api.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}], "resolution": "DNS"})));
    api.apply(networking("Sidecar", "default", json!({"egress": [{"hosts": ["./*", "istio-system/*"]}]})));
    api.apply(networking("WorkloadEntry", "vm1", json!({"address": "10.1.0.7", "labels": {"app": "echo"}})));
}

async fn start_source(api: &ApiServer) -> Source {
    let config = ::kube::Config::new(api.url().parse().unwrap());
    let client = ::kube::Client::try_from(config).unwrap();
    tokio::time::timeout(Duration::from_secs(20), start(client, QUIET, MAX))
        .await
        .expect("first complete list within 20 s")
        .expect("source starts")
}

/// Waits until the latest `Objects` satisfies `pred`; panics with `what` after `within`.
async fn wait_objects(source: &mut Source, within: Duration, what: &str, pred: impl Fn(&Objects) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if pred(&source.objects.borrow_and_update()) {
            return start.elapsed();
        }
        let left = within.checked_sub(start.elapsed()).unwrap_or_else(|| panic!("{what}: not seen within {within:?}"));
        let _ = tokio::time::timeout(left, source.objects.changed()).await;
    }
}

fn nn(ns: &str, name: &str) -> (String, String) {
    (ns.to_string(), name.to_string())
}

fn requests_after(api: &ApiServer, n: usize) -> Vec<mesh_tests::apiserver::Request> {
    api.requests().into_iter().skip(n).collect()
}

/// Waits until every kind has a watch open (the source is past its lists).
async fn wait_watching(api: &ApiServer) {
    let start = Instant::now();
    while api.open_watches() < Kind::ALL.len() {
        assert!(start.elapsed() < Duration::from_secs(10), "only {} of {} watches open", api.open_watches(), Kind::ALL.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn initial_list_fills_objects_and_changes_arrive_within_the_debounce() {
    let api = ApiServer::start().await.unwrap();
    seed(&api);
    let mut source = start_source(&api).await;
    {
        let o = source.objects.borrow();
        assert_eq!(o.namespaces["shop"].metadata.labels["istio.io/dataplane-mode"], "ambient");
        assert!(o.nodes.contains_key("node1"));
        assert!(o.service_accounts.contains_key(&nn("shop", "echo")));
        let svc = &o.services[&nn("shop", "echo")];
        assert_eq!(svc.spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        assert_eq!(svc.spec.ports[0].target_port, Some(folder::TargetPort::Number(8080)));
        let p = &o.pods[&nn("shop", "echo-1")];
        assert_eq!(p.service_account(), "echo");
        assert_eq!(p.spec.node_name.as_deref(), Some("node1"));
        assert_eq!(p.ips(), vec!["10.0.0.5".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(p.metadata.uid.as_deref().map(|u| u.starts_with("uid-")), Some(true));
        assert_eq!(o.endpoint_slices[&nn("shop", "echo-abc")].endpoints[0].addresses, vec!["10.0.0.5"]);
        assert!(o.authorization_policies.contains_key(&nn("shop", "allow-get")));
        assert!(o.peer_authentications.contains_key(&nn("shop", "strict")));
        assert!(o.request_authentications.contains_key(&nn("shop", "jwt")));
        assert_eq!(o.virtual_services[&nn("shop", "echo")].spec.hosts, vec!["echo"]);
        assert!(o.destination_rules.contains_key(&nn("shop", "echo")));
        assert!(o.gateways.contains_key(&nn("shop", "ingress")));
        assert!(o.service_entries.contains_key(&nn("shop", "ext")));
        assert!(o.sidecars.contains_key(&nn("shop", "default")));
        assert_eq!(o.workload_entries[&nn("shop", "vm1")].spec.address, "10.1.0.7");
    }
    assert!(source.rejected.borrow().is_empty(), "{:?}", source.rejected.borrow());
    // Lists were consistent reads and watches asked for bookmarks.
    for r in api.requests() {
        if r.is_watch() {
            assert_eq!(r.query.get("allowWatchBookmarks").map(String::as_str), Some("true"), "{r:?}");
        } else {
            assert!(!r.query.contains_key("resourceVersion"), "list with a resourceVersion may be stale: {r:?}");
        }
    }
    wait_watching(&api).await;

    // Add, modify, delete: each seen within the debounce plus a margin.
    api.apply(pod("shop", "echo-2", "10.0.0.6"));
    let took = wait_objects(&mut source, WITHIN, "added pod", |o| o.pods.contains_key(&nn("shop", "echo-2"))).await;
    eprintln!("add seen after {took:?}");
    api.apply(service("shop", "echo", "10.96.0.11"));
    wait_objects(&mut source, WITHIN, "modified service", |o| {
        o.services[&nn("shop", "echo")].spec.cluster_ip.as_deref() == Some("10.96.0.11")
    })
    .await;
    assert!(api.delete("v1", "Pod", "shop", "echo-1"));
    assert!(api.delete("security.istio.io/v1", "AuthorizationPolicy", "shop", "allow-get"));
    wait_objects(&mut source, WITHIN, "deleted pod and policy", |o| {
        !o.pods.contains_key(&nn("shop", "echo-1")) && o.authorization_policies.is_empty()
    })
    .await;
    assert_eq!(source.objects.borrow().pods.len(), 1);
}

#[tokio::test]
async fn gone_410_relists_without_ghosts_or_losses() {
    let api = ApiServer::start().await.unwrap();
    seed(&api);
    api.apply(pod("shop", "doomed", "10.0.0.9"));
    let mut source = start_source(&api).await;
    wait_watching(&api).await;
    let before = api.requests().len();

    // Cut the source off, change things, and compact the history it would resume from.
    api.hold_watches(true);
    api.drop_watches();
    assert!(api.delete("v1", "Pod", "shop", "doomed"));
    api.apply(pod("shop", "newcomer", "10.0.0.7"));
    api.apply(pod("shop", "echo-1", "10.0.0.8"));
    assert!(api.delete("security.istio.io/v1", "PeerAuthentication", "shop", "strict"));
    api.compact();
    api.hold_watches(false);

    wait_objects(&mut source, RELIST_WITHIN, "relisted state", |o| {
        let ips: Vec<String> = o.pods.values().map(|p| p.ips()[0].to_string()).collect();
        !o.pods.contains_key(&nn("shop", "doomed"))
            && o.pods.contains_key(&nn("shop", "newcomer"))
            && ips.contains(&"10.0.0.8".to_string())
            && o.peer_authentications.is_empty()
    })
    .await;
    let o = source.objects.borrow().clone();
    let pods: Vec<_> = o.pods.keys().map(|(_, n)| n.as_str()).collect();
    assert_eq!(pods, vec!["echo-1", "newcomer"], "exactly the store's pods");
    assert_eq!(o.services.len(), 1, "nothing lost");
    assert_eq!(o.authorization_policies.len(), 1, "nothing lost");
    assert_eq!(o.request_authentications.len(), 1, "nothing lost");
    let after = requests_after(&api, before);
    assert!(
        after.iter().any(|r| r.path == "/api/v1/pods" && !r.is_watch()),
        "the 410 led to a list of pods: {after:?}"
    );
}

#[tokio::test]
async fn dropped_stream_resumes_from_the_last_version_without_a_list() {
    let api = ApiServer::start().await.unwrap();
    seed(&api);
    let mut source = start_source(&api).await;
    wait_watching(&api).await;
    let rv = api.resource_version();
    let before = api.requests().len();
    api.drop_watches();
    wait_watching(&api).await;
    api.apply(pod("shop", "echo-3", "10.0.0.30"));
    wait_objects(&mut source, WITHIN, "pod after reconnect", |o| o.pods.contains_key(&nn("shop", "echo-3"))).await;
    let after = requests_after(&api, before);
    assert!(after.iter().all(|r| r.is_watch()), "no relist after a clean end of stream: {after:?}");
    let pods = after.iter().find(|r| r.path == "/api/v1/pods").expect("pods watched again");
    let resumed: u64 = pods.query["resourceVersion"].parse().unwrap();
    assert!(resumed > 1 && resumed <= rv, "resumed from {resumed}, store was at {rv}");
}

#[tokio::test]
async fn bookmarks_move_the_resume_point() {
    let api = ApiServer::start().await.unwrap();
    seed(&api);
    let mut source = start_source(&api).await;
    wait_watching(&api).await;
    // Pods see no event from here on; other kinds move the version on.
    for i in 0..3 {
        api.apply(service("shop", &format!("other-{i}"), &format!("10.96.1.{i}")));
    }
    wait_objects(&mut source, WITHIN, "services", |o| o.services.len() == 4).await;
    let marked = api.bookmark();
    // The bookmark travels on a live stream; give the watcher a moment to read it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // History before the bookmark is gone: only a watcher that took the bookmark's
    // version resumes without a 410.
    api.compact();
    let before = api.requests().len();
    api.drop_watches();
    wait_watching(&api).await;
    let after = requests_after(&api, before);
    let pods = after.iter().find(|r| r.path == "/api/v1/pods").expect("pods watched again");
    assert_eq!(pods.query["resourceVersion"], marked.to_string(), "{after:?}");
    assert!(after.iter().all(|r| r.is_watch()), "no relist: {after:?}");
    api.apply(pod("shop", "echo-4", "10.0.0.40"));
    wait_objects(&mut source, WITHIN, "pod after bookmark resume", |o| o.pods.contains_key(&nn("shop", "echo-4"))).await;
}

#[tokio::test]
async fn bad_authorization_policy_is_rejected_and_the_last_good_version_serves() {
    let api = ApiServer::start().await.unwrap();
    seed(&api);
    let mut source = start_source(&api).await;
    wait_watching(&api).await;
    let good = source.objects.borrow().authorization_policies[&nn("shop", "allow-get")].clone();

    // The policy gains both a selector and targetRefs (Istio's webhook refuses that);
    // a new policy with an unknown action; and a good new one in the same burst.
    api.apply(policy("shop", "allow-get", json!({
        "selector": {"matchLabels": {"app": "echo"}}, "targetRefs": [{"kind": "Service", "group": "", "name": "echo"}],
        "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]})));
    api.apply(policy("shop", "typo", json!({"action": "DENNY"})));
    api.apply(policy("shop", "deny-delete", json!({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]})));

    wait_objects(&mut source, WITHIN, "good policy", |o| o.authorization_policies.contains_key(&nn("shop", "deny-delete"))).await;
    let start = Instant::now();
    while source.rejected.borrow().len() < 2 {
        assert!(start.elapsed() < WITHIN, "rejections: {:?}", source.rejected.borrow());
        let _ = tokio::time::timeout(WITHIN, source.rejected.changed()).await;
    }
    let rejected = source.rejected.borrow().clone();
    assert!(
        rejected[0].starts_with("AuthorizationPolicy shop/allow-get: field `spec.targetRefs`: only one of selector or targetRefs"),
        "{rejected:?}"
    );
    assert!(rejected[1].starts_with("AuthorizationPolicy shop/typo: field `spec.action`"), "{rejected:?}");
    let o = source.objects.borrow().clone();
    assert_eq!(o.authorization_policies[&nn("shop", "allow-get")], good, "last good version keeps serving");
    assert!(!o.authorization_policies.contains_key(&nn("shop", "typo")), "never valid: never applies");

    // Fixed: applies, and is no longer listed as rejected.
    api.apply(policy("shop", "allow-get", json!({"rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]})));
    wait_objects(&mut source, WITHIN, "fixed policy", |o| o.authorization_policies[&nn("shop", "allow-get")] != good).await;
    assert_eq!(source.rejected.borrow().len(), 1, "{:?}", source.rejected.borrow());
}

#[tokio::test]
async fn nothing_is_served_until_every_kind_is_listed() {
    let api = ApiServer::start().await.unwrap();
    seed(&api);
    // As without Istio's CRDs: a partial view must not serve as if it were the cluster.
    api.set_missing("security.istio.io/v1", "PeerAuthentication", true);
    let client = ::kube::Client::try_from(::kube::Config::new(api.url().parse().unwrap())).unwrap();
    let mut starting = std::pin::pin!(start(client, QUIET, MAX));
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), &mut starting).await.is_err(),
        "started without PeerAuthentications"
    );
    api.set_missing("security.istio.io/v1", "PeerAuthentication", false);
    let source = tokio::time::timeout(Duration::from_secs(40), starting).await.expect("starts once listed").unwrap();
    assert!(source.objects.borrow().peer_authentications.contains_key(&nn("shop", "strict")));
}

fn item(kind: Kind, json: Value) -> Box<Result<Item, String>> {
    Box::new(decode(kind, json))
}

#[test]
fn relist_replaces_a_kind_and_keeps_last_good_versions() {
    let mut store = Store::default();
    for k in Kind::ALL {
        store.apply(k, Update::Init);
        store.apply(k, Update::InitDone);
    }
    assert!(store.unsynced().is_empty());
    let apply = |store: &mut Store, name: &str, ip: &str, init: bool| {
        let changed =
            store.apply(Kind::Pod, Update::Apply { key: nn("shop", name), item: item(Kind::Pod, pod("shop", name, ip)), init });
        assert_eq!(store.objects(), store.objects_afresh(), "the kept objects are what the items give");
        changed
    };
    assert!(apply(&mut store, "a", "10.0.0.1", false));
    assert!(apply(&mut store, "b", "10.0.0.2", false));
    assert!(!apply(&mut store, "b", "10.0.0.2", false), "same object again changes nothing");
    // b turns bad: rejected, keeps serving 10.0.0.2.
    let bad = item(Kind::Pod, pod("shop", "b", "not-an-ip"));
    assert!((*bad).as_ref().is_err_and(|e| e.starts_with("field `status.podIP`")), "{bad:?}");
    store.apply(Kind::Pod, Update::Apply { key: nn("shop", "b"), item: bad.clone(), init: false });
    assert_eq!(store.rejected().len(), 1);
    // A relist that no longer has a, has b still bad, and a new c.
    store.apply(Kind::Pod, Update::Init);
    assert_eq!(store.objects().pods.len(), 2, "the old content serves until the list completes");
    store.apply(Kind::Pod, Update::Apply { key: nn("shop", "b"), item: bad, init: true });
    apply(&mut store, "c", "10.0.0.3", true);
    assert!(store.apply(Kind::Pod, Update::InitDone));
    assert_eq!(store.objects(), store.objects_afresh(), "after a relist");
    let o = store.objects();
    let names: Vec<_> = o.pods.keys().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, vec!["b", "c"]);
    assert_eq!(o.pods[&nn("shop", "b")].ips()[0].to_string(), "10.0.0.2");
    assert_eq!(store.rejected(), vec!["Pod shop/b: field `status.podIP`: invalid IP address syntax".to_string()]);
    assert!(store.apply(Kind::Pod, Update::Delete { key: nn("shop", "b") }));
    assert_eq!(store.objects(), store.objects_afresh(), "after a delete");
    assert!(store.rejected().is_empty());
}

#[test]
fn unsynced_kinds_are_named() {
    let mut store = Store::default();
    store.apply(Kind::Pod, Update::Init);
    store.apply(Kind::Pod, Update::InitDone);
    assert_eq!(store.unsynced().len(), Kind::ALL.len() - 1);
    assert!(!store.unsynced().contains(&Kind::Pod));
}

async fn eventually(what: &str, f: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WITHIN, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// `mesh-agent control-plane --source kubernetes --kubeconfig F` against the stand-in,
/// with the real xDS client: the API server's pods and services reach the agent, and
/// changes are pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_serves_xds_from_the_api_server() {
    use crate::controlplane::{serve, ControlPlaneArgs, Source as SourceFlag};
    use crate::node_token::{Credential, Key};

    let api = ApiServer::start().await.unwrap();
    seed(&api);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: standin, cluster: {{server: '{}'}}}}]\n\
             users: [{{name: test, user: {{}}}}]\ncontexts: [{{name: test, context: {{cluster: standin, user: test}}}}]\n\
             current-context: test\n",
            api.url()
        ),
    )
    .unwrap();
    // The flags as an operator types them.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControlPlaneArgs,
    }
    let state_dir = dir.path().join("state");
    let args = <Cli as clap::Parser>::try_parse_from([
        "control-plane".as_ref(),
        "--source".as_ref(),
        "kubernetes".as_ref(),
        "--kubeconfig".as_ref(),
        kubeconfig.as_os_str(),
        "--state-dir".as_ref(),
        state_dir.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--debounce-ms".as_ref(),
        "50".as_ref(),
        // Test beds run side by side: no fixed admin port.
        "--admin".as_ref(),
        "127.0.0.1:0".as_ref(),
    ] as [&std::ffi::OsStr; 13])
    .unwrap()
    .args;
    assert_eq!(args.source, SourceFlag::Kubernetes);
    assert!(args.config_dir.is_none());
    std::fs::create_dir_all(&args.state_dir).unwrap();
    let tokens = Key::load(None, &args.state_dir).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, args, async move { drop(stop_rx.await) }));

    let state = crate::state::State::default();
    let (synced_tx, mut synced) = watch::channel(false);
    let credential = Credential::Token(tokens.issue("node1").unwrap());
    let client = tokio::spawn(crate::xds::run(addr, "node1".into(), credential, state.clone(), synced_tx));
    tokio::time::timeout(Duration::from_secs(20), synced.wait_for(|s| *s)).await.expect("agent synced").unwrap();

    let svc = state.find_service_by_vip("10.96.0.10".parse().unwrap()).expect("the API server's service");
    assert_eq!(svc.hostname, "echo.shop.svc.cluster.local");
    assert_eq!(svc.endpoints["Kubernetes//Pod/shop/echo-1"][&80], 8080);
    let wl = state.find_workload("Kubernetes//Pod/shop/echo-1").expect("the API server's pod");
    assert_eq!(wl.identity().to_string(), "spiffe://cluster.local/ns/shop/sa/echo");

    api.apply(pod("shop", "echo-2", "10.0.0.6"));
    let took = eventually("a new pod pushed", || state.find_workload("Kubernetes//Pod/shop/echo-2").is_some()).await;
    eprintln!("API server change to agent State: {took:?}");
    assert!(api.delete("v1", "Pod", "shop", "echo-1"));
    eventually("a deleted pod removed", || state.find_workload("Kubernetes//Pod/shop/echo-1").is_none()).await;

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    client.abort();
}

#[test]
fn networking_kinds_are_checked_as_the_folder_checks_them() {
    let vs = |weight: i64| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "r", "namespace": "shop"},
               "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}, "weight": weight}]}]}})
    };
    assert!(matches!(decode(Kind::VirtualService, vs(100)), Ok(Item::Object(Object::VirtualService(_)))));
    let err = decode(Kind::VirtualService, vs(-1)).unwrap_err();
    assert_eq!(err, "field `spec.http[0].route[0].weight`: weight -1 < 0");
    let err = decode(Kind::Gateway, json!({"metadata": {"name": "g"}, "spec": {"servers": [], "bogus": 1}})).unwrap_err();
    assert!(err.starts_with("field `spec.bogus`: unknown field `bogus`"), "{err}");
    for k in [Kind::VirtualService, Kind::DestinationRule, Kind::Gateway, Kind::ServiceEntry, Kind::Sidecar, Kind::WorkloadEntry] {
        let r = k.resource();
        assert_eq!((r.group.as_str(), r.version.as_str()), ("networking.istio.io", "v1"), "{k}");
        assert_eq!(mesh_tests::apiserver::collection("networking.istio.io/v1", &k.to_string()), format!("/apis/networking.istio.io/v1/{}", r.plural));
    }
}

#[test]
fn endpoint_slices_are_checked_as_the_folder_checks_them() {
    let slice = |address: &str| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "ext-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "ext"}},
               "addressType": "IPv4", "endpoints": [{"addresses": [address], "targetRef": {"kind": "Pod", "name": "db-0"}}],
               "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]})
    };
    match decode(Kind::EndpointSlice, slice("10.0.0.5")) {
        Ok(Item::Object(Object::EndpointSlice(es))) => {
            assert_eq!(es.endpoints[0].target_ref.as_ref().map(|r| r.name.as_str()), Some("db-0"));
        }
        other => panic!("{other:?}"),
    }
    let err = decode(Kind::EndpointSlice, slice("fd00::5")).unwrap_err();
    assert!(err.starts_with("field `endpoints[0].addresses[0]`: \"fd00::5\" is not an IPv4 address"), "{err}");
}
