use prost::Message as _;

use super::super::{build, Snapshot};
use super::*;
use crate::controlplane::folder::Folder;

fn snapshot(yaml: &str) -> Snapshot {
    let (o, errors) = Folder::default().apply(vec![("t.yaml".into(), Ok(yaml.to_string()))]);
    assert!(errors.is_empty(), "{errors:?}");
    build(&o, "td")
}

fn address(s: &Snapshot, name: &str) -> Option<wl::address::Type> {
    s.resources.get(name).map(|r| wl::Address::decode(r.any.value.as_slice()).unwrap().r#type.unwrap())
}

fn workload(s: &Snapshot, uid: &str) -> Option<wl::Workload> {
    match address(s, uid)? {
        wl::address::Type::Workload(w) => Some(w),
        other => panic!("{uid}: {other:?}"),
    }
}

/// Service resource name -> ports, of the Workload `uid`.
fn services(s: &Snapshot, uid: &str) -> BTreeMap<String, Vec<(u32, u32)>> {
    let w = workload(s, uid).unwrap_or_else(|| panic!("no workload {uid}"));
    w.services.into_iter().map(|(k, l)| (k, l.ports.iter().map(|p| (p.service_port, p.target_port)).collect())).collect()
}

/// (service port, target port) pairs; `None` where the workload is no endpoint at all.
type Ports = Option<Vec<(u32, u32)>>;

fn ports(pairs: &[(u32, u32)]) -> Vec<(u32, u32)> {
    pairs.to_vec()
}

const NAMED: &str = "
kind: Namespace
metadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
---
kind: Pod
metadata: {name: a, namespace: mesh, labels: {app: x}}
spec:
  containers:
  - name: app
    ports: [{name: web, containerPort: 8080}, {name: metrics, containerPort: 9090, protocol: TCP}]
status: {podIP: 10.0.0.1}
---
kind: Pod
metadata: {name: b, namespace: mesh, labels: {app: x}}
spec:
  containers:
  - name: app
    ports: [{containerPort: 8080}, {name: web, containerPort: 8080, protocol: UDP}]
status: {podIP: 10.0.0.2}
---
kind: Service
metadata: {name: mixed, namespace: mesh}
spec:
  selector: {app: x}
  ports: [{name: http, port: 80, targetPort: web}, {name: admin, port: 9000, targetPort: 9001}]
---
kind: Service
metadata: {name: named, namespace: mesh}
spec:
  selector: {app: x}
  ports: [{name: http, port: 80, targetPort: web}, {name: prom, port: 9090, targetPort: metrics}]
";

#[test]
fn named_target_ports_resolve_per_pod() {
    let s = snapshot(NAMED);
    let mixed = "mesh/mixed.mesh.svc.cluster.local";
    let named = "mesh/named.mesh.svc.cluster.local";
    // (pod, service, ports it serves; None: not an endpoint of the service at all)
    let cases: &[(&str, &str, Ports)] = &[
        ("a", mixed, Some(ports(&[(80, 8080), (9000, 9001)]))),
        ("a", named, Some(ports(&[(80, 8080), (9090, 9090)]))),
        // b has no TCP port called web (its `web` is UDP): the numeric port only.
        ("b", mixed, Some(ports(&[(9000, 9001)]))),
        // ... and none of `named`'s ports resolve: b does not back it.
        ("b", named, None),
    ];
    for (pod, svc, want) in cases {
        let got = services(&s, &format!("Kubernetes//Pod/mesh/{pod}")).get(*svc).cloned();
        assert_eq!(&got, want, "pod {pod}, service {svc}");
    }
    // The Service resource keeps 0 for a named target, as istiod sends it.
    let Some(wl::address::Type::Service(svc)) = address(&s, mixed) else { panic!() };
    let served: Vec<(u32, u32)> = svc.ports.iter().map(|p| (p.service_port, p.target_port)).collect();
    assert_eq!(served, ports(&[(80, 0), (9000, 9001)]));
}

const SLICES: &str = "
kind: Namespace
metadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
---
kind: Pod
metadata: {name: db-0, namespace: mesh}
status: {podIP: 10.0.0.10, podIPs: [{ip: 10.0.0.10}, {ip: 'fd00::10'}]}
---
kind: Pod
metadata: {name: db-1, namespace: mesh}
status: {podIP: 10.0.0.11}
---
kind: Pod
metadata: {name: db-2, namespace: mesh}
status: {podIP: 10.0.0.12}
---
kind: Service
metadata: {name: ext, namespace: mesh}
spec: {clusterIP: 10.96.0.20, ports: [{name: sql, port: 5432}, {name: dns, port: 53, protocol: UDP}]}
---
kind: Service
metadata: {name: echo, namespace: mesh}
spec: {clusterIP: 10.96.0.21, selector: {app: echo}, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-v4, namespace: mesh, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
endpoints:
- {addresses: [10.0.0.10], targetRef: {kind: Pod, name: db-0}, conditions: {ready: true}}
- {addresses: [10.0.0.11], targetRef: {kind: Pod, namespace: mesh, name: db-1}, conditions: {ready: false}}
- {addresses: [10.0.0.12], targetRef: {kind: Pod, name: db-2}, conditions: {ready: true, serving: true, terminating: true}}
- {addresses: [192.168.1.10]}
- {addresses: [192.168.1.11], conditions: {ready: false}}
- {addresses: [192.168.1.12], conditions: {serving: true, terminating: true}}
ports: [{name: sql, port: 15432, protocol: TCP}, {name: dns, port: 1053, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-v6, namespace: mesh, labels: {kubernetes.io/service-name: ext}}
addressType: IPv6
endpoints:
- {addresses: ['fd00::10'], targetRef: {kind: Pod, name: db-0}}
- {addresses: ['fd00::20']}
ports: [{name: sql, port: 15432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: gone-1, namespace: mesh, labels: {kubernetes.io/service-name: gone}}
addressType: IPv4
endpoints: [{addresses: [192.168.9.9]}]
ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-manual, namespace: mesh, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
endpoints: [{addresses: [192.168.8.8]}, {addresses: [10.0.0.11], targetRef: {kind: Pod, name: db-1}}]
ports: [{port: 8080}]
";

#[test]
fn services_without_a_selector_follow_their_endpoint_slices() {
    let s = snapshot(SLICES);
    let ext = "mesh/ext.mesh.svc.cluster.local";
    let slice_uid = |slice: &str, ip: &str| endpoint_uid("mesh", slice, ip);
    // The Service resource: its own ports (UDP dropped, unset targetPort = port).
    let Some(wl::address::Type::Service(svc)) = address(&s, ext) else { panic!() };
    assert_eq!(svc.ports, vec![wl::Port { service_port: 5432, target_port: 5432 }]);

    // Pods named by a targetRef: the Service, with the slice's port (one entry for two
    // slices, IPv4 and IPv6); not ready or terminating: not an endpoint.
    let cases: &[(&str, Ports)] = &[
        ("db-0", Some(ports(&[(5432, 15432)]))),
        ("db-1", None),
        ("db-2", None),
    ];
    for (pod, want) in cases {
        assert_eq!(&services(&s, &format!("Kubernetes//Pod/mesh/{pod}")).get(ext).cloned(), want, "pod {pod}");
    }
    // The selector decides for a Service with one: the manual slice of echo adds nothing.
    assert!(services(&s, "Kubernetes//Pod/mesh/db-1").is_empty());

    // Endpoints that are not pods: Workloads of their own.
    let cases: &[(&str, &str, bool)] = &[
        ("ext-v4", "192.168.1.10", true),
        ("ext-v4", "192.168.1.11", false), // not ready
        ("ext-v4", "192.168.1.12", false), // terminating
        ("ext-v6", "fd00::20", true),
        ("gone-1", "192.168.9.9", false),      // no such Service
        ("echo-manual", "192.168.8.8", false), // Service with a selector
    ];
    for (slice, ip, want) in cases {
        assert_eq!(workload(&s, &slice_uid(slice, ip)).is_some(), *want, "{slice} {ip}");
    }
    let w = workload(&s, &slice_uid("ext-v4", "192.168.1.10")).unwrap();
    assert_eq!((w.name.as_str(), w.namespace.as_str()), ("ext-v4", "mesh"));
    assert_eq!(w.addresses, vec![vec![192, 168, 1, 10]]);
    assert_eq!(w.tunnel_protocol, wl::TunnelProtocol::None as i32);
    assert_eq!((w.service_account.as_str(), w.trust_domain.as_str(), w.node.as_str()), ("", "", ""), "no identity");
    assert_eq!(services(&s, &slice_uid("ext-v4", "192.168.1.10")), BTreeMap::from([(ext.to_string(), ports(&[(5432, 15432)]))]));
    // No endpoint resources other than those two.
    let eps: Vec<&String> = s.resources.keys().filter(|k| k.contains("EndpointSlice")).collect();
    assert_eq!(eps.len(), 2, "{eps:?}");
}

#[test]
fn slice_ports_name_service_ports() {
    // A slice port names the Service port it serves; an unnamed slice port serves the
    // Service's unnamed port. Ports naming nothing are skipped; a slice with no port
    // left serves nothing.
    let yaml = |svc_ports: &str, slice_ports: &str| {
        format!(
            "kind: Service\nmetadata: {{name: s, namespace: n}}\nspec: {{ports: {svc_ports}}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s-1, namespace: n, labels: {{kubernetes.io/service-name: s}}}}\n\
             addressType: IPv4\nendpoints: [{{addresses: [192.168.0.1]}}]\nports: {slice_ports}\n"
        )
    };
    let cases: &[(&str, &str, Ports)] = &[
        ("[{port: 80}]", "[{port: 8080}]", Some(ports(&[(80, 8080)]))),
        ("[{port: 80}]", "[{name: '', port: 8080}]", Some(ports(&[(80, 8080)]))),
        ("[{name: a, port: 80}, {name: b, port: 81}]", "[{name: b, port: 8081}, {name: a, port: 8080}]", Some(ports(&[(80, 8080), (81, 8081)]))),
        ("[{name: a, port: 80}, {name: b, port: 81}]", "[{name: a, port: 8080}, {name: c, port: 8082}]", Some(ports(&[(80, 8080)]))),
        ("[{name: a, port: 80}]", "[{name: c, port: 8082}]", None),
        ("[{port: 80}]", "[{port: 8080, protocol: SCTP}]", None),
        ("[{port: 80}]", "[{name: ''}]", None),
    ];
    for (svc_ports, slice_ports, want) in cases {
        let s = snapshot(&yaml(svc_ports, slice_ports));
        let got = workload(&s, &endpoint_uid("n", "s-1", "192.168.0.1"))
            .map(|w| w.services["n/s.n.svc.cluster.local"].ports.iter().map(|p| (p.service_port, p.target_port)).collect());
        assert_eq!(&got, want, "service {svc_ports}, slice {slice_ports}");
    }
}
