//! PeerAuthentication precedence, from Istio's documented semantics.
use std::collections::BTreeMap;

use super::{effective, shadowed, Effective, Mode, Policy, Spec, Workload};

const ROOT: &str = "istio-system";

/// A policy from YAML `spec`, read in `order`, optionally with a timestamp.
fn pa(ns: &str, name: &str, order: usize, created: Option<&str>, spec: &str) -> Policy {
    let spec: Spec = serde_yaml::from_str(spec).unwrap_or_else(|e| panic!("{ns}/{name}: {e}"));
    spec.validate().unwrap_or_else(|e| panic!("{ns}/{name}: {e}"));
    Policy { namespace: ns.into(), name: name.into(), created: created.map(String::from), order, spec }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn want(mode: Mode, ports: &[(u16, Mode)]) -> (Mode, BTreeMap<u16, Mode>) {
    (mode, ports.iter().copied().collect())
}

use Mode::{Disable, Permissive, Strict};

#[test]
fn precedence_table() {
    let mesh_strict = pa(ROOT, "default", 0, None, "mtls: {mode: STRICT}");
    let mesh_unset = pa(ROOT, "default", 0, None, "mtls: {mode: UNSET}");
    let ns_permissive = pa("shop", "default", 1, None, "mtls: {mode: PERMISSIVE}");
    let ns_strict = pa("shop", "default", 1, None, "mtls: {mode: STRICT}");
    let ns_unset = pa("shop", "default", 1, None, "{}");
    let ns_disable = pa("shop", "default", 1, None, "mtls: {mode: DISABLE}");
    let other_ns_strict = pa("other", "default", 1, None, "mtls: {mode: STRICT}");
    let wl_strict = pa("shop", "cart", 2, None, "selector: {matchLabels: {app: cart}}\nmtls: {mode: STRICT}");
    let wl_permissive = pa("shop", "cart", 2, None, "selector: {matchLabels: {app: cart}}\nmtls: {mode: PERMISSIVE}");
    let wl_unset_ports = pa(
        "shop",
        "cart-ports",
        2,
        None,
        "selector: {matchLabels: {app: cart}}\nportLevelMtls: {8080: {mode: PERMISSIVE}, 9090: {mode: STRICT}, 7070: {mode: UNSET}}",
    );
    let wl_strict_ports = pa(
        "shop",
        "cart-ports",
        2,
        None,
        "selector: {matchLabels: {app: cart}}\nmtls: {mode: STRICT}\nportLevelMtls: {8080: {mode: DISABLE}, 8443: {mode: STRICT}}",
    );
    let wl_two_labels = pa("shop", "cart-v2", 2, None, "selector: {matchLabels: {app: cart, version: v2}}\nmtls: {mode: STRICT}");
    let wl_other_ns = pa("other", "cart", 2, None, "selector: {matchLabels: {app: cart}}\nmtls: {mode: STRICT}");
    let root_selector = pa(ROOT, "gw", 2, None, "selector: {matchLabels: {app: cart}}\nmtls: {mode: STRICT}");
    let ns_empty_selector = pa("shop", "all", 1, None, "selector: {matchLabels: {}}\nmtls: {mode: STRICT}");
    let ns_old = pa("shop", "zz-old", 5, Some("2024-01-01T00:00:00Z"), "mtls: {mode: STRICT}");
    let ns_new = pa("shop", "aa-new", 1, Some("2025-01-01T00:00:00Z"), "mtls: {mode: PERMISSIVE}");
    let ns_no_ts_first = pa("shop", "b", 1, None, "mtls: {mode: STRICT}");
    let ns_no_ts_second = pa("shop", "a", 2, None, "mtls: {mode: PERMISSIVE}");
    let wl_old = pa("shop", "w-old", 9, Some("2023-05-01T00:00:00Z"), "selector: {matchLabels: {app: cart}}\nmtls: {mode: PERMISSIVE}");
    let wl_new = pa("shop", "w-new", 3, Some("2023-06-01T00:00:00Z"), "selector: {matchLabels: {app: cart}}\nmtls: {mode: STRICT}");

    let cart = labels(&[("app", "cart")]);
    let cart_v2 = labels(&[("app", "cart"), ("version", "v2")]);
    let web = labels(&[("app", "web")]);
    type Case<'a> = (&'a str, Vec<&'a Policy>, &'a str, &'a BTreeMap<String, String>, (Mode, BTreeMap<u16, Mode>));
    let cases: Vec<Case> = vec![
        ("nothing: PERMISSIVE", vec![], "shop", &cart, want(Permissive, &[])),
        ("mesh STRICT reaches every namespace", vec![&mesh_strict], "shop", &web, want(Strict, &[])),
        ("mesh STRICT in the root namespace too", vec![&mesh_strict], ROOT, &web, want(Strict, &[])),
        ("mesh UNSET: PERMISSIVE", vec![&mesh_unset], "shop", &web, want(Permissive, &[])),
        ("namespace over mesh", vec![&mesh_strict, &ns_permissive], "shop", &web, want(Permissive, &[])),
        ("namespace UNSET inherits mesh", vec![&mesh_strict, &ns_unset], "shop", &web, want(Strict, &[])),
        ("namespace DISABLE kept", vec![&mesh_strict, &ns_disable], "shop", &web, want(Disable, &[])),
        ("another namespace's policy does not apply", vec![&other_ns_strict], "shop", &web, want(Permissive, &[])),
        ("workload over namespace", vec![&ns_strict, &wl_permissive], "shop", &cart, want(Permissive, &[])),
        ("workload over mesh", vec![&mesh_strict, &wl_permissive], "shop", &cart, want(Permissive, &[])),
        ("selector not matching: namespace", vec![&ns_strict, &wl_permissive], "shop", &web, want(Strict, &[])),
        ("workload STRICT", vec![&wl_strict], "shop", &cart, want(Strict, &[])),
        ("all selector labels must match", vec![&wl_two_labels], "shop", &cart, want(Permissive, &[])),
        ("extra workload labels are fine", vec![&wl_two_labels], "shop", &cart_v2, want(Strict, &[])),
        ("a selector in another namespace", vec![&wl_other_ns], "shop", &cart, want(Permissive, &[])),
        ("a root selector is not mesh-wide", vec![&root_selector], "shop", &cart, want(Permissive, &[])),
        ("a root selector applies in the root", vec![&root_selector], ROOT, &cart, want(Strict, &[])),
        ("an empty selector is namespace-wide", vec![&ns_empty_selector], "shop", &web, want(Strict, &[])),
        ("ports on an inherited mode", vec![&mesh_strict, &wl_unset_ports], "shop", &cart, want(Strict, &[(8080, Permissive)])),
        ("ports on PERMISSIVE", vec![&wl_unset_ports], "shop", &cart, want(Permissive, &[(9090, Strict)])),
        ("ports with a workload mode", vec![&ns_permissive, &wl_strict_ports], "shop", &cart, want(Strict, &[(8080, Disable)])),
        ("ports do not reach other workloads", vec![&wl_strict_ports], "shop", &web, want(Permissive, &[])),
        ("the oldest namespace policy wins", vec![&ns_new, &ns_old], "shop", &web, want(Strict, &[])),
        ("without timestamps: the first read", vec![&ns_no_ts_second, &ns_no_ts_first], "shop", &web, want(Strict, &[])),
        ("a timestamp beats none", vec![&ns_no_ts_first, &ns_new], "shop", &web, want(Permissive, &[])),
        ("the oldest workload policy wins", vec![&wl_new, &wl_old], "shop", &cart, want(Permissive, &[])),
    ];
    for (what, policies, ns, labels, (mode, ports)) in cases {
        let policies: Vec<Policy> = policies.into_iter().cloned().collect();
        let got: Effective = effective(&policies, ROOT, &Workload { namespace: ns, labels });
        assert_eq!((got.mode, got.ports.clone()), (mode, ports), "{what}: {got:?}");
        if !policies.is_empty() && got.mode != Permissive {
            assert!(!got.from.is_empty(), "{what}: no deciding policy named");
        }
    }
}

#[test]
fn the_deciding_policies_are_named() {
    let mesh = pa(ROOT, "default", 0, None, "mtls: {mode: STRICT}");
    let ports = pa("shop", "cart", 1, None, "selector: {matchLabels: {app: cart}}\nportLevelMtls: {8080: {mode: PERMISSIVE}}");
    let got = effective(&[mesh, ports], ROOT, &Workload { namespace: "shop", labels: &labels(&[("app", "cart")]) });
    assert_eq!(got.from, vec!["shop/cart".to_string(), "istio-system/default".to_string()]);
}

#[test]
fn shadowed_policies_are_reported() {
    let a = pa("shop", "a", 2, None, "mtls: {mode: PERMISSIVE}");
    let b = pa("shop", "b", 1, None, "mtls: {mode: STRICT}");
    let c = pa("shop", "c", 3, None, "selector: {matchLabels: {app: x}}\nmtls: {mode: STRICT}");
    let d = pa("shop", "d", 4, None, "selector: {matchLabels: {app: y}}\nmtls: {mode: STRICT}");
    assert_eq!(shadowed(&[a, b, c, d], ROOT), vec![("shop/a".to_string(), "shop/b".to_string())]);
}

#[test]
fn validation() {
    let bad: &[(&str, &str)] = &[
        ("portLevelMtls: {8080: {mode: STRICT}}", "only allowed with a non-empty spec.selector"),
        ("selector: {matchLabels: {}}\nportLevelMtls: {8080: {mode: STRICT}}", "only allowed"),
        ("selector: {matchLabels: {app: a}}\nportLevelMtls: {0: {mode: STRICT}}", "spec.portLevelMtls.0"),
        ("selector: {matchLabels: {app: a}}\nportLevelMtls: {70000: {mode: STRICT}}", "spec.portLevelMtls.70000"),
        ("selector: {matchLabels: {\"\": a}}", "empty label key"),
    ];
    for (yaml, msg) in bad {
        let spec: Spec = serde_yaml::from_str(yaml).unwrap();
        let err = spec.validate().expect_err(yaml);
        assert!(err.contains(msg), "{yaml}: {err}");
    }
    for yaml in ["mtls: {mode: STRIKT}", "mtls: {mode: STRICT, extra: 1}", "mtlsMode: STRICT", "portLevelMtls: {http: {mode: STRICT}}"] {
        assert!(serde_yaml::from_str::<Spec>(yaml).is_err(), "{yaml} parsed");
    }
}
