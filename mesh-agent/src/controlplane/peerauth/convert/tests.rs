//! The converted policies, judged by the agent's own evaluator (`authz::decide`) on
//! plaintext and HBONE: the served form must give each workload its effective mode.
use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::authz::{self, Attrs, Decision};
use crate::controlplane::peerauth::Spec;
use crate::state::Identity;

const ROOT: &str = "istio-system";

fn pa(ns: &str, name: &str, order: usize, spec: &str) -> Policy {
    let spec: Spec = serde_yaml::from_str(spec).unwrap_or_else(|e| panic!("{ns}/{name}: {e}"));
    spec.validate().unwrap_or_else(|e| panic!("{ns}/{name}: {e}"));
    Policy { namespace: ns.into(), name: name.into(), created: None, order, spec }
}

fn labels(app: &str) -> BTreeMap<String, String> {
    [("app".to_string(), app.to_string())].into_iter().collect()
}

/// The scene: `shop/cart` (app=cart), `shop/web` (app=web), `other/db` (app=db).
const PODS: [(&str, &str); 3] = [("shop", "cart"), ("shop", "web"), ("other", "db")];

fn run(policies: &[Policy]) -> Converted {
    let l: Vec<BTreeMap<String, String>> = PODS.iter().map(|(_, n)| labels(n)).collect();
    let pods: Vec<Pod> = PODS.iter().zip(&l).map(|((ns, n), l)| Pod { namespace: ns, name: n, labels: l }).collect();
    convert(policies, ROOT, &pods)
}

/// What the agent decides for one connection to `pod` on `port`.
fn decide(c: &Converted, pod: (&str, &str), port: u16, identity: Option<Identity>) -> Decision {
    let listed = c.selected.get(&(pod.0.to_string(), pod.1.to_string())).cloned().unwrap_or_default();
    let policies: Vec<Arc<authz::Policy>> = c
        .policies
        .iter()
        .map(|(k, a)| Arc::new(authz::convert(k, a).unwrap_or_else(|e| panic!("{k}: {e}"))))
        .filter(|p| p.selects(pod.0, &listed))
        .collect();
    let ip = "10.0.0.9".parse().unwrap();
    authz::decide(&policies, &Attrs { src_ip: "10.0.0.1".parse().unwrap(), identity, dst_ip: ip, dst_port: port }, None)
}

fn peer() -> Option<Identity> {
    Some(Identity { trust_domain: "cluster.local".into(), namespace: "x".into(), service_account: "y".into() })
}

#[test]
fn converted_policies_give_each_workload_its_mode() {
    let mesh_strict = pa(ROOT, "default", 0, "mtls: {mode: STRICT}");
    let mesh_permissive = pa(ROOT, "default", 0, "mtls: {mode: PERMISSIVE}");
    let ns_permissive = pa("shop", "default", 1, "mtls: {mode: PERMISSIVE}");
    let ns_strict = pa("shop", "default", 1, "mtls: {mode: STRICT}");
    let ns_unset = pa("shop", "default", 1, "{}");
    let ns_disable = pa("shop", "default", 1, "mtls: {mode: DISABLE}");
    let cart_8080_open = pa("shop", "cart", 2, "selector: {matchLabels: {app: cart}}\nportLevelMtls: {8080: {mode: PERMISSIVE}}");
    let cart_strict = pa("shop", "cart", 2, "selector: {matchLabels: {app: cart}}\nmtls: {mode: STRICT}");
    let cart_disable = pa("shop", "cart", 2, "selector: {matchLabels: {app: cart}}\nmtls: {mode: DISABLE}");
    let cart_9090_strict = pa("shop", "cart", 2, "selector: {matchLabels: {app: cart}}\nportLevelMtls: {9090: {mode: STRICT}}");
    let cart_strict_8080_disable =
        pa("shop", "cart", 2, "selector: {matchLabels: {app: cart}}\nmtls: {mode: STRICT}\nportLevelMtls: {8080: {mode: DISABLE}}");

    // Plaintext verdicts on ports 8080 and 9090 for cart, web, db (true = denied).
    type Case<'a> = (&'a str, Vec<&'a Policy>, [[bool; 2]; 3]);
    let cases: Vec<Case> = vec![
        ("nothing", vec![], [[false, false], [false, false], [false, false]]),
        ("mesh PERMISSIVE serves nothing", vec![&mesh_permissive], [[false, false], [false, false], [false, false]]),
        ("mesh STRICT", vec![&mesh_strict], [[true, true], [true, true], [true, true]]),
        ("mesh STRICT, namespace PERMISSIVE", vec![&mesh_strict, &ns_permissive], [[false, false], [false, false], [true, true]]),
        ("mesh STRICT, namespace UNSET", vec![&mesh_strict, &ns_unset], [[true, true], [true, true], [true, true]]),
        ("mesh STRICT, namespace DISABLE", vec![&mesh_strict, &ns_disable], [[false, false], [false, false], [true, true]]),
        ("mesh STRICT, cart opens 8080", vec![&mesh_strict, &cart_8080_open], [[false, true], [true, true], [true, true]]),
        ("mesh STRICT, cart DISABLE", vec![&mesh_strict, &cart_disable], [[false, false], [true, true], [true, true]]),
        ("namespace STRICT", vec![&ns_strict], [[true, true], [true, true], [false, false]]),
        ("namespace STRICT, cart opens 8080", vec![&ns_strict, &cart_8080_open], [[false, true], [true, true], [false, false]]),
        ("cart STRICT alone", vec![&cart_strict], [[true, true], [false, false], [false, false]]),
        ("cart STRICT in a PERMISSIVE mesh", vec![&mesh_permissive, &cart_strict], [[true, true], [false, false], [false, false]]),
        ("cart STRICT on 9090 only", vec![&cart_9090_strict], [[false, true], [false, false], [false, false]]),
        ("cart STRICT but 8080 DISABLE", vec![&ns_permissive, &cart_strict_8080_disable], [[false, true], [false, false], [false, false]]),
        (
            "namespace PERMISSIVE, cart STRICT on 9090, mesh STRICT",
            vec![&mesh_strict, &ns_permissive, &cart_9090_strict],
            [[false, true], [false, false], [true, true]],
        ),
    ];
    for (what, policies, want) in cases {
        let policies: Vec<Policy> = policies.into_iter().cloned().collect();
        let c = run(&policies);
        for (pod, want) in PODS.iter().zip(want) {
            for (port, denied) in [8080, 9090].into_iter().zip(want) {
                let d = decide(&c, *pod, port, None);
                assert_eq!(!d.is_allowed(), denied, "{what}: plaintext to {pod:?}:{port}: {d:?}\n{c:#?}");
                let d = decide(&c, *pod, port, peer());
                assert!(d.is_allowed(), "{what}: HBONE to {pod:?}:{port}: {d:?}");
            }
        }
    }
}

#[test]
fn names_and_scopes_follow_istiod() {
    let scope = |c: &Converted, k: &str| sec::Scope::try_from(c.policies[k].scope).unwrap();
    let mesh_strict = pa(ROOT, "default", 0, "mtls: {mode: STRICT}");
    let c = run(std::slice::from_ref(&mesh_strict));
    let key = format!("{ROOT}/{STATIC_STRICT}");
    assert_eq!(c.policies.keys().collect::<Vec<_>>(), vec![&key]);
    assert_eq!(scope(&c, &key), sec::Scope::Global, "nobody relaxes it");
    assert!(c.selected.is_empty());
    let m = &c.policies[&key].groups[0].rules[0].matches[0];
    assert_eq!(m.not_principals, vec![string_match("*")]);
    assert_eq!(c.policies[&key].action, sec::Action::Deny as i32);

    // A PERMISSIVE namespace: the mesh policy is listed by the other workloads only.
    let c = run(&[mesh_strict.clone(), pa("shop", "open", 1, "mtls: {mode: PERMISSIVE}")]);
    assert_eq!(scope(&c, &key), sec::Scope::WorkloadSelector);
    assert_eq!(c.selected.keys().cloned().collect::<Vec<_>>(), vec![("other".to_string(), "db".to_string())]);

    // A namespace STRICT that nobody relaxes is NAMESPACE-scoped; a workload's port
    // exception becomes its own policy and the namespace's falls back to listing.
    let ns = pa("shop", "tight", 1, "mtls: {mode: STRICT}");
    let c = run(std::slice::from_ref(&ns));
    assert_eq!(scope(&c, "shop/converted_peer_authentication_tight"), sec::Scope::Namespace);
    let cart = pa("shop", "cart", 2, "selector: {matchLabels: {app: cart}}\nportLevelMtls: {8080: {mode: PERMISSIVE}}");
    let c = run(&[ns, cart]);
    assert_eq!(scope(&c, "shop/converted_peer_authentication_cart"), sec::Scope::WorkloadSelector);
    assert_eq!(scope(&c, "shop/converted_peer_authentication_tight"), sec::Scope::WorkloadSelector);
    assert_eq!(c.selected[&("shop".to_string(), "cart".to_string())], vec!["shop/converted_peer_authentication_cart".to_string()]);
    assert_eq!(c.selected[&("shop".to_string(), "web".to_string())], vec!["shop/converted_peer_authentication_tight".to_string()]);
    let m = &c.policies["shop/converted_peer_authentication_cart"].groups[0].rules[0].matches[0];
    assert_eq!(m.not_destination_ports, vec![8080]);
}
