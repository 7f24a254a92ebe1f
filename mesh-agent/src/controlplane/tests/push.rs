//! The push side seen from raw delta ADS clients: nothing when idle, a change only to
//! the nodes whose scope it changes, NACKs surfaced in /debug/syncz and /metrics.
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{start, Running, CONFIG};
use crate::controlplane::scope::TYPES;
use crate::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use crate::proto::{AUTHORIZATION_TYPE_URL, REQUEST_AUTHENTICATION_TYPE_URL};

/// CONFIG plus a namespace whose only pod runs on node2.
const OTHER: &str = "
kind: Namespace
metadata: {name: other, labels: {istio.io/dataplane-mode: ambient}}
---
kind: Pod
metadata: {name: worker, namespace: other, labels: {app: worker}}
spec: {nodeName: node2}
status: {podIP: 10.0.0.9}
";

const OTHER_POLICY: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: other}
spec: {action: DENY, rules: [{}]}
";

/// A raw delta ADS client subscribed to every served type.
pub(super) struct Raw {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Raw {
    pub(super) async fn connect(cp: &Running, node: &str) -> Raw {
        let (tx, rx) = mpsc::channel(16);
        for t in TYPES {
            tx.send(DeltaDiscoveryRequest {
                node: Some(Node { id: node.into(), ..Default::default() }),
                type_url: t.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", cp.addr)).await.unwrap();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let rx = client.delta_aggregated_resources(cp.authorized(node, stream)).await.unwrap().into_inner();
        let mut raw = Raw { tx, rx };
        // One first answer per type, ACKed.
        let mut seen = Vec::new();
        for _ in TYPES {
            let r = raw.next().await.expect("a first answer per type");
            raw.answer(&r, None).await;
            seen.push(r.type_url);
        }
        seen.sort();
        let mut want: Vec<String> = TYPES.iter().map(|t| t.to_string()).collect();
        want.sort();
        assert_eq!(seen, want);
        raw
    }

    /// The next response within 3 s, or `None`.
    pub(super) async fn next(&mut self) -> Option<DeltaDiscoveryResponse> {
        tokio::time::timeout(Duration::from_secs(3), self.rx.message()).await.ok().and_then(|r| r.unwrap())
    }

    /// The next response of `type_url` within 3 s (others are ACKed on the way).
    pub(super) async fn next_of(&mut self, type_url: &str) -> DeltaDiscoveryResponse {
        loop {
            let r = self.next().await.unwrap_or_else(|| panic!("no {type_url} push within 3 s"));
            if r.type_url == type_url {
                return r;
            }
            self.answer(&r, None).await;
        }
    }

    /// Nothing at all for `d`.
    pub(super) async fn quiet(&mut self, d: Duration) -> Result<(), DeltaDiscoveryResponse> {
        match tokio::time::timeout(d, self.rx.message()).await {
            Err(_) => Ok(()),
            Ok(r) => Err(r.unwrap().expect("stream open")),
        }
    }

    /// Nothing of `type_url` for `d` (others are ACKed).
    pub(super) async fn quiet_of(&mut self, type_url: &str, d: Duration) -> Result<(), DeltaDiscoveryResponse> {
        let until = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(until, self.rx.message()).await {
                Err(_) => return Ok(()),
                Ok(r) => {
                    let r = r.unwrap().expect("stream open");
                    if r.type_url == type_url {
                        return Err(r);
                    }
                    self.answer(&r, None).await;
                }
            }
        }
    }

    pub(super) async fn answer(&self, r: &DeltaDiscoveryResponse, error: Option<&str>) {
        let error_detail = error.map(|m| crate::proto::discovery::Status { code: 3, message: m.into(), details: vec![] });
        let ack = DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail,
            ..Default::default()
        };
        self.tx.send(ack).await.unwrap();
    }
}

/// GET `path` from the admin listener: (status line, body).
pub(super) async fn get(admin: &str, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: cp\r\n\r\n").as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the metric line that starts with `prefix`.
pub(super) fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sends_nothing_and_a_change_reaches_only_the_nodes_it_concerns() {
    let cp = start(&[("demo.yaml", CONFIG), ("other.yaml", OTHER)]).await;
    let mut n1 = Raw::connect(&cp, "node1").await;
    let mut n2 = Raw::connect(&cp, "node2").await;
    // Idle: nothing at all after the first answers.
    let (q1, q2) = tokio::join!(n1.quiet(Duration::from_secs(1)), n2.quiet(Duration::from_secs(1)));
    assert!(q1.is_ok() && q2.is_ok(), "an idle control plane pushed: {q1:?} {q2:?}");

    // A policy for namespace `other`, whose only pod runs on node2.
    std::fs::write(cp.config.path().join("policy.yaml"), OTHER_POLICY).unwrap();
    let push = n2.next_of(AUTHORIZATION_TYPE_URL).await;
    assert_eq!(push.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["other/deny-all"]);
    n2.answer(&push, None).await;
    let q = n1.quiet_of(AUTHORIZATION_TYPE_URL, Duration::from_millis(500)).await;
    assert!(q.is_ok(), "node1 has no pod in `other` but got: {q:?}");

    // The push's ACK is measured; syncz shows both agents in sync.
    let (_, metrics) = get(&cp.admin, "/metrics").await;
    let latency = metric(&metrics, "mesh_cp_push_latency_seconds_count").unwrap();
    assert!(latency >= 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "mesh_cp_connected_agents "), Some(2.0), "{metrics}");
    let mut in_sync = false;
    for _ in 0..50 {
        let (_, body) = get(&cp.admin, "/debug/syncz").await;
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        in_sync = doc["agents"].as_array().unwrap().iter().all(|a| {
            a["types"].as_object().unwrap().values().all(|t| t["in_sync"] == true) && a["types"].as_object().unwrap().len() == TYPES.len()
        });
        if in_sync {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(in_sync, "agents that ACKed everything are in sync");

    // The pod leaves node2: the policy leaves node2's scope (a removal), node1 still sees nothing.
    std::fs::write(cp.config.path().join("other.yaml"), OTHER.replace("nodeName: node2", "nodeName: node3")).unwrap();
    let gone = n2.next_of(AUTHORIZATION_TYPE_URL).await;
    assert_eq!(gone.removed_resources, vec!["other/deny-all"]);
    assert!(n1.quiet_of(AUTHORIZATION_TYPE_URL, Duration::from_millis(300)).await.is_ok());
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_shows_in_syncz_and_metrics() {
    let cp = start(&[("demo.yaml", CONFIG), ("other.yaml", OTHER)]).await;
    let mut n2 = Raw::connect(&cp, "node2").await;
    std::fs::write(cp.config.path().join("policy.yaml"), OTHER_POLICY).unwrap();
    let push = n2.next_of(AUTHORIZATION_TYPE_URL).await;
    let reason = "other/deny-all: scope 7 is not a scope this agent knows";
    n2.answer(&push, Some(reason)).await;

    let mut doc = serde_json::Value::Null;
    for _ in 0..50 {
        let (status, body) = get(&cp.admin, "/debug/syncz").await;
        assert!(status.contains("200"), "{status}");
        doc = serde_json::from_str(&body).unwrap();
        if !doc["agents"][0]["types"][AUTHORIZATION_TYPE_URL]["nacks"].as_object().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let agent = &doc["agents"][0];
    assert_eq!(agent["node"], "node2");
    let authz = &agent["types"][AUTHORIZATION_TYPE_URL];
    assert_eq!(authz["nacks"]["other/deny-all"]["reason"], reason, "{doc}");
    assert_eq!(authz["in_sync"], false);
    assert_eq!(authz["last_sent_nonce"].as_u64().unwrap().to_string(), push.nonce);
    assert_ne!(authz["last_acked_nonce"], authz["last_sent_nonce"]);
    assert_eq!(agent["types"][REQUEST_AUTHENTICATION_TYPE_URL]["in_sync"], true, "{doc}");

    let (_, metrics) = get(&cp.admin, "/metrics").await;
    assert_eq!(metric(&metrics, "mesh_cp_nacks_total{type=\"Authorization\"}"), Some(1.0), "{metrics}");
    for family in [
        "# TYPE mesh_cp_pushes counter",
        "mesh_cp_pushes_total{type=\"Address\",reason=\"initial\"} 1",
        "mesh_cp_pushes_total{type=\"Authorization\",reason=\"change\"} 1",
        "# TYPE mesh_cp_push_latency_seconds histogram",
        "mesh_cp_connected_agents 1",
        "mesh_cp_config_bytes{node=\"node2\"}",
        "mesh_cp_snapshot_builds_total 2",
    ] {
        assert!(metrics.contains(family), "no {family:?} in:\n{metrics}");
    }
    let (status, _) = get(&cp.admin, "/nope").await;
    assert!(status.contains("404"), "{status}");

    // Hung up: no longer listed or counted.
    drop(n2);
    let mut left = false;
    for _ in 0..100 {
        let (_, body) = get(&cp.admin, "/debug/syncz").await;
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        left = doc["agents"].as_array().unwrap().is_empty();
        if left {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(left, "a disconnected agent still listed");
    let (_, metrics) = get(&cp.admin, "/metrics").await;
    assert_eq!(metric(&metrics, "mesh_cp_connected_agents "), Some(0.0));
    assert!(!metrics.contains("mesh_cp_config_bytes{node=\"node2\"}"), "{metrics}");
    cp.stop().await;
}

/// A Sidecar narrows what a node receives: a new service (and its VirtualService) in
/// a namespace the node's pods may not call reaches only the node whose pods may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_keeps_services_and_routes_from_nodes_whose_pods_cannot_call_them() {
    // demo's pods may call demo's services only. node1 runs only `client` (demo);
    // node2 runs `echo` (demo) and `worker` (other, no Sidecar): node2 needs everything.
    let sidecar = "
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: demo}
spec: {egress: [{hosts: ['./*']}]}
";
    let cp = start(&[("demo.yaml", CONFIG), ("other.yaml", OTHER), ("sidecar.yaml", sidecar)]).await;
    let mut n1 = Raw::connect(&cp, "node1").await;
    let mut n2 = Raw::connect(&cp, "node2").await;
    let service = "
kind: Service
metadata: {name: jobs, namespace: other}
spec: {clusterIP: 10.96.0.30, selector: {app: worker}, ports: [{port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: jobs, namespace: other}
spec: {hosts: [jobs], http: [{timeout: 2s, route: [{destination: {host: jobs}}]}]}
";
    std::fs::write(cp.config.path().join("jobs.yaml"), service).unwrap();
    const JOBS: &str = "other/jobs.other.svc.cluster.local";
    let mut got = Vec::new();
    while !got.iter().any(|n: &String| n == JOBS) {
        let push = n2.next_of(crate::proto::ADDRESS_TYPE_URL).await;
        n2.answer(&push, None).await;
        got.extend(push.resources.iter().map(|r| r.name.clone()));
    }
    let vs = n2.next_of(crate::proto::VIRTUAL_SERVICE_TYPE_URL).await;
    assert_eq!(vs.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["other/jobs"]);
    n2.answer(&vs, None).await;
    // node1 never hears of the service, its route, or the worker behind it.
    let until = tokio::time::Instant::now() + Duration::from_millis(800);
    while let Ok(Some(r)) = tokio::time::timeout_at(until, n1.rx.message()).await.map(Result::unwrap) {
        assert!(!r.resources.iter().any(|x| x.name == JOBS || x.name == "other/jobs"), "node1 got {:?}", r.resources);
        n1.answer(&r, None).await;
    }
    cp.stop().await;
}

/// Namespaces a, b, c; every pod may call its own namespace's services only, and c's
/// pods b's too. b's `api` runs three replicas on node-b.
const NARROWED: &str = "
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
spec: {egress: [{hosts: ['./*']}]}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: c}
spec: {egress: [{hosts: ['./*', 'b/*']}]}
---
kind: Pod
metadata: {name: web, namespace: a, labels: {app: web}}
spec: {nodeName: node-a}
status: {podIP: 10.0.1.1}
---
kind: Pod
metadata: {name: api-0, namespace: b, labels: {app: api}}
spec: {nodeName: node-b}
status: {podIP: 10.0.2.1}
---
kind: Pod
metadata: {name: api-1, namespace: b, labels: {app: api}}
spec: {nodeName: node-b}
status: {podIP: 10.0.2.2}
---
kind: Pod
metadata: {name: api-2, namespace: b, labels: {app: api}}
spec: {nodeName: node-b}
status: {podIP: 10.0.2.3}
---
kind: Service
metadata: {name: api, namespace: b}
spec: {clusterIP: 10.96.2.1, selector: {app: api}, ports: [{port: 80, targetPort: 8080}]}
---
kind: Pod
metadata: {name: client, namespace: c, labels: {app: client}}
spec: {nodeName: node-c}
status: {podIP: 10.0.3.1}
";

/// Two more replicas of b's `api`, on a node with no agent.
const SCALED: &str = "
kind: Pod
metadata: {name: api-3, namespace: b, labels: {app: api}}
spec: {nodeName: node-d}
status: {podIP: 10.0.2.4}
---
kind: Pod
metadata: {name: api-4, namespace: b, labels: {app: api}}
spec: {nodeName: node-d}
status: {podIP: 10.0.2.5}
";

/// The workload names of an Address response.
fn pods(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|x| x.name.as_str()).filter(|n| n.starts_with("Kubernetes//Pod/")).collect()
}

/// Scaling a service from 3 to 5 replicas reaches the agents whose pods route to it
/// (b's own node, and c's, whose Sidecar names b) within the debounce and a margin,
/// as one delta of the two new endpoints, and no other agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_a_service_reaches_only_the_agents_that_route_to_it() {
    let cp = start(&[("mesh.yaml", NARROWED)]).await;
    let mut a = Raw::connect(&cp, "node-a").await;
    let mut b = Raw::connect(&cp, "node-b").await;
    let mut c = Raw::connect(&cp, "node-c").await;
    let written = std::time::Instant::now();
    std::fs::write(cp.config.path().join("scaled.yaml"), SCALED).unwrap();
    let want = ["Kubernetes//Pod/b/api-3", "Kubernetes//Pod/b/api-4"];
    for (node, raw) in [("node-b", &mut b), ("node-c", &mut c)] {
        let push = raw.next_of(crate::proto::ADDRESS_TYPE_URL).await;
        raw.answer(&push, None).await;
        // Debounce 50 ms; a generous margin for a shared CI machine.
        assert!(written.elapsed() < Duration::from_millis(1000), "{node}: {:?} after the write", written.elapsed());
        assert_eq!(pods(&push), want, "{node} gets the two new endpoints in one delta");
        assert!(push.removed_resources.is_empty(), "{node}: {:?}", push.removed_resources);
    }
    assert_eq!(a.quiet(Duration::from_millis(800)).await.map_err(|r| r.resources), Ok(()), "node-a's pods never call b");
    cp.stop().await;
}

/// An agent looks up an address it does not hold (ztunnel's on-demand names,
/// `<network>/<ip>`): the workload comes with the name as alias and is kept up to date
/// afterwards; an address no workload has comes back removed; unsubscribing removes
/// what only the lookup kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_looks_up_callers_it_does_not_hold() {
    use crate::proto::ADDRESS_TYPE_URL;
    let cp = start(&[("mesh.yaml", NARROWED)]).await;
    let mut a = Raw::connect(&cp, "node-a").await;
    let ask = |sub: &[&str], unsub: &[&str]| DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    a.tx.send(ask(&["/10.0.3.1", "/10.9.9.9"], &[])).await.unwrap();
    let r = a.next_of(ADDRESS_TYPE_URL).await;
    a.answer(&r, None).await;
    assert_eq!(pods(&r), ["Kubernetes//Pod/c/client"]);
    assert_eq!(r.resources[0].aliases, ["/10.0.3.1"]);
    assert_eq!(r.removed_resources, ["/10.9.9.9"], "no workload there: answered at once");
    // A pod that gets that address later is sent, since the address stays asked for.
    let late = "
kind: Pod
metadata: {name: late, namespace: c, labels: {app: late}}
spec: {nodeName: node-c}
status: {podIP: 10.9.9.9}
";
    std::fs::write(cp.config.path().join("late.yaml"), late).unwrap();
    let r = a.next_of(ADDRESS_TYPE_URL).await;
    a.answer(&r, None).await;
    assert_eq!(pods(&r), ["Kubernetes//Pod/c/late"]);
    // Kept up to date: the looked-up pod changes.
    let relabeled = NARROWED.replace("{name: client, namespace: c, labels: {app: client}}", "{name: client, namespace: c, labels: {app: client, version: v2}}");
    std::fs::write(cp.config.path().join("mesh.yaml"), relabeled).unwrap();
    let r = a.next_of(ADDRESS_TYPE_URL).await;
    a.answer(&r, None).await;
    assert_eq!(pods(&r), ["Kubernetes//Pod/c/client"]);
    // Unsubscribed: it goes, since nothing else keeps it in node-a's scope.
    a.tx.send(ask(&[], &["/10.0.3.1"])).await.unwrap();
    let r = a.next_of(ADDRESS_TYPE_URL).await;
    a.answer(&r, None).await;
    assert_eq!(r.removed_resources, ["Kubernetes//Pod/c/client"]);
    assert!(r.resources.is_empty());
    cp.stop().await;
}

/// The agent's own client: a lookup of a caller it does not hold waits for the control
/// plane's answer, and an address no workload has is answered as missing at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_waits_for_a_looked_up_caller() {
    let cp = start(&[("mesh.yaml", NARROWED)]).await;
    let (state, client) = super::agent_on(&cp, "node-a").await;
    let client_ip = "10.0.3.1".parse().unwrap();
    assert!(state.find_workload_by_ip(client_ip).is_none(), "node-a does not hold c's pods");
    let w = state.lookup_workload_by_ip(client_ip, Duration::from_secs(5)).await.expect("found");
    assert_eq!((w.namespace.as_str(), w.name.as_str()), ("c", "client"));
    let t = std::time::Instant::now();
    assert!(state.lookup_workload_by_ip("10.9.9.9".parse().unwrap(), Duration::from_secs(5)).await.is_none());
    assert!(t.elapsed() < Duration::from_secs(2), "a miss is answered, not waited out: {:?}", t.elapsed());
    assert_eq!(state.on_demand().subscribed(), [client_ip, "10.9.9.9".parse().unwrap()], "both stay asked for");
    client.abort();
    cp.stop().await;
}

/// A resume that names what it looked up keeps it: the first answer neither removes
/// nor re-sends the looked-up workload, and the lookup is answered again (aliased).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_keeps_what_was_looked_up() {
    use crate::proto::ADDRESS_TYPE_URL;
    let cp = start(&[("mesh.yaml", NARROWED)]).await;
    let mut a = Raw::connect(&cp, "node-a").await;
    // What node-a holds of Address: its first answer (again, by a fresh stream) plus the lookup.
    let mut held = std::collections::HashMap::new();
    let ask = DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        resource_names_subscribe: vec!["/10.0.3.1".into()],
        ..Default::default()
    };
    a.tx.send(ask).await.unwrap();
    let r = a.next_of(ADDRESS_TYPE_URL).await;
    a.answer(&r, None).await;
    held.extend(r.resources.iter().map(|x| (x.name.clone(), x.version.clone())));
    let (tx, rx) = mpsc::channel(16);
    for t in TYPES {
        let first = DeltaDiscoveryRequest { node: Some(Node { id: "node-a".into(), ..Default::default() }), type_url: t.into(), ..Default::default() };
        tx.send(first).await.unwrap();
    }
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", cp.addr)).await.unwrap();
    let mut fresh = client.delta_aggregated_resources(cp.authorized("node-a", tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap().into_inner();
    loop {
        let r = tokio::time::timeout(Duration::from_secs(3), fresh.message()).await.unwrap().unwrap().unwrap();
        if r.type_url == ADDRESS_TYPE_URL {
            held.extend(r.resources.iter().map(|x| (x.name.clone(), x.version.clone())));
            break;
        }
    }
    drop((a, fresh, tx));
    assert!(held.contains_key("Kubernetes//Pod/c/client"), "{held:?}");

    let (tx, rx) = mpsc::channel(16);
    let resume = DeltaDiscoveryRequest {
        node: Some(Node { id: "node-a".into(), ..Default::default() }),
        type_url: ADDRESS_TYPE_URL.into(),
        resource_names_subscribe: vec!["*".into(), "/10.0.3.1".into()],
        initial_resource_versions: held,
        ..Default::default()
    };
    tx.send(resume).await.unwrap();
    let mut rx = client.delta_aggregated_resources(cp.authorized("node-a", tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(3), rx.message()).await.unwrap().unwrap().unwrap();
    assert!(first.resources.is_empty() && first.removed_resources.is_empty(), "resumed with nothing to change: {first:?}");
    let lookup = tokio::time::timeout(Duration::from_secs(3), rx.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(pods(&lookup), ["Kubernetes//Pod/c/client"]);
    assert_eq!(lookup.resources[0].aliases, ["/10.0.3.1"]);
    cp.stop().await;
}
