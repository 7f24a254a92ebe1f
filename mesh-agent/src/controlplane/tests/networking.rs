//! Istio networking objects from the folder to the agent's State: VirtualServices and
//! DestinationRules as our L7 resources, ServiceEntries as Services with inline
//! endpoints, WorkloadEntries as Workloads of the ServiceEntries that select them; a
//! rejected edit keeps the last good version serving.
use std::time::Duration;

use super::{agent, eventually, start, CONFIG};
use crate::state::Routing;

const NETWORKING: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo-routes, namespace: demo}
spec:
  hosts: [echo]
  http:
  - match: [{uri: {prefix: /v2}}]
    route: [{destination: {host: echo, subset: v2}}]
  - route:
    - {destination: {host: echo, subset: v1}, weight: 90}
    - {destination: {host: echo, subset: v2}, weight: 10}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: echo, namespace: demo}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: billing, namespace: demo}
spec:
  hosts: [billing.example.com]
  addresses: [240.0.0.7]
  ports: [{number: 443, name: https, protocol: TLS}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{address: 10.1.0.7}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: demo}
spec:
  hosts: [legacy.demo.internal]
  addresses: [240.0.0.8]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  workloadSelector: {labels: {app: legacy}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: demo}
spec: {address: 10.2.0.9, labels: {app: legacy}, serviceAccount: legacy}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networking_objects_reach_the_agent_and_bad_edits_keep_the_last_good_version() {
    let cp = start(&[("demo.yaml", CONFIG), ("net.yaml", NETWORKING)]).await;
    let (state, client) = agent(&cp).await;

    let routing = state.routing();
    let vs = routing.iter().find_map(|r| match r {
        Routing::VirtualService(v) => Some(v.clone()),
        _ => None,
    });
    let vs = vs.expect("the VirtualService");
    assert_eq!(vs.hosts, vec!["echo.demo.svc.cluster.local"], "short host resolved in the VirtualService's namespace");
    assert_eq!(vs.http.len(), 2);
    let weights: Vec<_> = vs.http[1].route.iter().map(|d| d.weight).collect();
    assert_eq!(weights, vec![90, 10]);
    let dr = routing.iter().find_map(|r| match r {
        Routing::DestinationRule(d) => Some(d.clone()),
        _ => None,
    });
    let dr = dr.expect("the DestinationRule");
    assert_eq!(dr.host, "echo.demo.svc.cluster.local");
    assert_eq!(dr.subsets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["v1", "v2"]);

    // ServiceEntry with an inline endpoint: a Service at its address, the endpoint behind it.
    let billing = state.find_service_by_vip("240.0.0.7".parse().unwrap()).expect("the ServiceEntry's Service");
    assert_eq!(billing.hostname, "billing.example.com");
    assert_eq!(billing.endpoints.len(), 1, "{billing:?}");
    // WorkloadEntry selected by a ServiceEntry: its endpoint, on the entry's targetPort.
    let legacy = state.find_service_by_vip("240.0.0.8".parse().unwrap()).expect("the selecting ServiceEntry's Service");
    let (uid, ports) = legacy.endpoints.iter().next().expect("the WorkloadEntry as its endpoint");
    assert_eq!(uid, "Kubernetes/networking.istio.io/WorkloadEntry/demo/vm-1");
    assert_eq!(ports[&80], 8080);
    let vm = state.find_workload_by_ip("10.2.0.9".parse().unwrap()).expect("the WorkloadEntry");
    assert_eq!(vm.identity().to_string(), "spiffe://cluster.local/ns/demo/sa/legacy");

    // A valid edit arrives; an invalid one is rejected and the last good version stays.
    let path = cp.config.path().join("net.yaml");
    std::fs::write(&path, NETWORKING.replace("weight: 90", "weight: 70").replace("weight: 10", "weight: 30")).unwrap();
    let weights = || {
        state.routing().iter().find_map(|r| match r {
            Routing::VirtualService(v) => Some(v.http[1].route.iter().map(|d| d.weight).collect::<Vec<_>>()),
            _ => None,
        })
    };
    eventually("the new weights", || weights() == Some(vec![70, 30])).await;
    let bad = NETWORKING.replace("weight: 90", "weight: -5").replace("subset: v2}}]", "subset: v3}}]");
    std::fs::write(&path, bad.replace("{name: v2, labels", "{name: v3, labels")).unwrap();
    // The DestinationRule edit (v2 -> v3) is good and applies; the VirtualService's is not.
    eventually("the DestinationRule edit", || {
        state.routing().iter().any(|r| matches!(r, Routing::DestinationRule(d) if d.subsets.iter().any(|s| s.name == "v3")))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(weights(), Some(vec![70, 30]), "the rejected VirtualService keeps its last good version");

    // Deleting the objects removes them from the agent.
    std::fs::remove_file(&path).unwrap();
    eventually("routing removed", || state.routing().is_empty()).await;
    eventually("ServiceEntry removed", || state.find_service_by_vip("240.0.0.7".parse().unwrap()).is_none()).await;
    client.abort();
    cp.stop().await;
}
