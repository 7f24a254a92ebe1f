//! The networking kinds through the folder source: `file:line: Kind field ...` errors,
//! and a bad object does not disturb its neighbours.
use std::path::PathBuf;

use crate::controlplane::folder::{Folder, Objects};

fn apply(folder: &mut Folder, text: &str) -> (Objects, Vec<String>) {
    let (o, e) = folder.apply(vec![(PathBuf::from("net.yaml"), Ok(text.to_string()))]);
    (o, e.iter().map(|e| e.to_string()).collect())
}

fn nn(name: &str) -> (String, String) {
    ("shop".to_string(), name.to_string())
}

const FILE: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: first, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 100
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: second, namespace: shop}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings}
      weight: 100
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['*/*.example.com']
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: shop}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec:
  egress: [{hosts: ['./*']}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm1, namespace: shop}
spec:
  address: 10.1.0.7
";

#[test]
fn every_kind_is_read() {
    let (o, errors) = apply(&mut Folder::default(), FILE);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(o.virtual_services.len(), 2);
    assert_eq!(o.destination_rules[&nn("reviews")].spec.subsets[0].name, "v1");
    assert!(o.gateways.contains_key(&nn("ingress")));
    assert!(o.service_entries.contains_key(&nn("ext")));
    assert!(o.sidecars.contains_key(&nn("default")));
    assert_eq!(o.workload_entries[&nn("vm1")].spec.address, "10.1.0.7");
}

#[test]
fn a_bad_virtual_service_names_file_line_field_and_spares_the_others() {
    let mut folder = Folder::default();
    let (first, _) = apply(&mut folder, FILE);
    // The second VirtualService breaks (negative weight, line 19); the first one's
    // edit in the same file applies.
    let bad = FILE.replacen("weight: 100", "weight: 90", 1).replacen("      weight: 100", "      weight: -1", 1);
    let (o, errors) = apply(&mut folder, &bad);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("net.yaml:19: VirtualService field `spec.http[0].route[0].weight`: weight -1 < 0;"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("the last good version of its object keeps serving"), "{}", errors[0]);
    assert_eq!(o.virtual_services[&nn("first")].spec.http[0].route[0].weight, 90);
    assert_eq!(o.virtual_services[&nn("second")], first.virtual_services[&nn("second")], "last good version");
    assert_eq!(o.destination_rules, first.destination_rules);

    // In a fresh folder (no last good version) the bad one is simply absent.
    let (o, _) = apply(&mut Folder::default(), &bad);
    assert!(!o.virtual_services.contains_key(&nn("second")));
    assert!(o.virtual_services.contains_key(&nn("first")));
}

#[test]
fn unknown_fields_and_api_versions_are_refused_with_their_place() {
    let doc = |api: &str, spec: &str| format!("apiVersion: {api}\nkind: DestinationRule\nmetadata: {{name: r, namespace: shop}}\nspec:\n{spec}");
    let (_, errors) = apply(&mut Folder::default(), &doc("networking.istio.io/v2", "  host: reviews\n"));
    assert!(errors[0].starts_with("net.yaml:1: DestinationRule with apiVersion \"networking.istio.io/v2\": expected networking.istio.io/v1, v1beta1 or v1alpha3"), "{}", errors[0]);
    let (_, errors) = apply(&mut Folder::default(), &doc("networking.istio.io/v1", "  host: reviews\n  trafficPolicy:\n    loadBalancer: {simple: FASTEST}\n"));
    assert!(errors[0].starts_with("net.yaml:7: DestinationRule field `spec.trafficPolicy.loadBalancer.simple`: unknown variant `FASTEST`"), "{}", errors[0]);
    let (_, errors) = apply(&mut Folder::default(), &doc("networking.istio.io/v1", "  host: reviews\n  subsets:\n  - name: v1\n  - name: v1\n"));
    assert!(errors[0].starts_with("net.yaml:8: DestinationRule field `spec.subsets[1].name`: duplicate subset names: v1"), "{}", errors[0]);
    let (_, errors) = apply(&mut Folder::default(), &doc("networking.istio.io/v1", "  hots: reviews\n"));
    assert!(errors[0].starts_with("net.yaml:5: DestinationRule field `spec.hots`: unknown field `hots`"), "{}", errors[0]);
}
