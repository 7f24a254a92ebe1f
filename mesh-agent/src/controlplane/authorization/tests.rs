//! AuthorizationPolicy from YAML to `istio.security.Authorization`: parsing errors,
//! scopes, selection, and the L7 fail-closed conversion.
use std::path::PathBuf;

use prost::Message as _;

use super::*;
use crate::controlplane::folder::{Folder, Objects};
use crate::controlplane::model;
use crate::proto::workload as wl;
use sec::string_match::MatchType;

fn load(folder: &mut Folder, yaml: &str) -> (Objects, Vec<String>) {
    let (o, e) = folder.apply(vec![(PathBuf::from("p.yaml"), Ok(yaml.to_string()))]);
    (o, e.iter().map(ToString::to_string).collect())
}

fn policy_doc(api: &str, ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: {api}\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}")
}

fn served(s: &model::Snapshot, key: &str) -> sec::Authorization {
    sec::Authorization::decode(s.authorizations[key].any.value.as_slice()).unwrap()
}

fn exact(s: &str) -> sec::StringMatch {
    sec::StringMatch { match_type: Some(MatchType::Exact(s.into())) }
}

const ALLOW_SLEEP: &str = "  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/sleep]}
    to:
    - operation: {ports: [\"8080\"]}
";

#[test]
fn v1_and_v1beta1_convert_with_upstream_structure() {
    for api in ["security.istio.io/v1", "security.istio.io/v1beta1"] {
        let (o, errors) = load(&mut Folder::default(), &policy_doc(api, "default", "allow-sleep", ALLOW_SLEEP));
        assert!(errors.is_empty(), "{errors:?}");
        let s = model::build(&o, "cluster.local");
        let a = served(&s, "default/allow-sleep");
        assert_eq!((a.name.as_str(), a.namespace.as_str()), ("allow-sleep", "default"));
        assert_eq!(a.action, sec::Action::Allow as i32);
        assert_eq!(a.scope, sec::Scope::WorkloadSelector as i32);
        assert_eq!(a.groups.len(), 1);
        let rules = &a.groups[0].rules;
        assert_eq!(rules.len(), 2, "one clause for from, one for to");
        assert_eq!(rules[0].matches[0].principals, vec![exact("cluster.local/ns/default/sa/sleep")]);
        assert_eq!(rules[1].matches[0].destination_ports, vec![8080]);
        assert_eq!(s.authorizations["default/allow-sleep"].any.type_url, crate::proto::AUTHORIZATION_TYPE_URL);
    }
}

#[test]
fn scopes_follow_namespace_and_selector() {
    let yaml = [
        policy_doc("security.istio.io/v1", ROOT_NAMESPACE, "mesh-wide", "  action: DENY\n  rules: [{}]\n"),
        policy_doc("security.istio.io/v1", "default", "ns-wide", "  rules: [{}]\n"),
        policy_doc("security.istio.io/v1", "default", "empty-selector", "  selector: {matchLabels: {}}\n"),
        policy_doc("security.istio.io/v1", "default", "picky", "  selector: {matchLabels: {app: echo}}\n"),
    ]
    .join("---\n");
    let (o, errors) = load(&mut Folder::default(), &yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let s = model::build(&o, "td");
    let scope = |k: &str| served(&s, k).scope;
    assert_eq!(scope("istio-system/mesh-wide"), sec::Scope::Global as i32);
    assert_eq!(scope("default/ns-wide"), sec::Scope::Namespace as i32);
    assert_eq!(scope("default/empty-selector"), sec::Scope::Namespace as i32, "an empty selector selects the namespace");
    assert_eq!(scope("default/picky"), sec::Scope::WorkloadSelector as i32);
    assert_eq!(served(&s, "default/ns-wide").groups, vec![sec::Group { rules: vec![] }], "rules: [{{}}] matches all");
    assert!(served(&s, "default/picky").groups.is_empty(), "no rules: matches nothing");
}

#[test]
fn selected_workloads_list_the_policy() {
    let yaml = "
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient}}
---
kind: Pod
metadata: {name: echo-1, namespace: default, labels: {app: echo}}
status: {podIP: 10.0.0.1}
---
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
status: {podIP: 10.0.0.2}
---
kind: Pod
metadata: {name: echo-other, namespace: other, labels: {app: echo}}
status: {podIP: 10.0.0.3}
---
"
    .to_string()
        + &policy_doc("security.istio.io/v1", "default", "allow-sleep", ALLOW_SLEEP)
        + "---\n"
        + &policy_doc("security.istio.io/v1", ROOT_NAMESPACE, "root-echo", "  selector: {matchLabels: {app: echo}}\n  action: DENY\n")
        + "---\n"
        + &policy_doc("security.istio.io/v1", "default", "audit", "  selector: {matchLabels: {app: echo}}\n  action: AUDIT\n")
        + "---\n"
        + &policy_doc("security.istio.io/v1", "default", "by-service", "  targetRefs: [{kind: Service, group: '', name: echo}]\n  action: DENY\n")
        + "---\n"
        + &policy_doc("security.istio.io/v1", "default", "no-such-service", "  targetRefs: [{kind: Service, name: nope}]\n")
        + "---\nkind: Service\nmetadata: {name: echo, namespace: default}\nspec: {selector: {app: echo}, ports: [{port: 80}]}\n";
    let (o, errors) = load(&mut Folder::default(), &yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let s = model::build(&o, "td");
    let listed = |uid: &str| match wl::Address::decode(s.resources[uid].any.value.as_slice()).unwrap().r#type {
        Some(wl::address::Type::Workload(w)) => w.authorization_policies,
        other => panic!("{other:?}"),
    };
    assert_eq!(listed("Kubernetes//Pod/default/echo-1"), vec!["default/allow-sleep", "default/by-service", "istio-system/root-echo"]);
    assert_eq!(served(&s, "default/by-service").scope, sec::Scope::WorkloadSelector as i32, "targetRefs select like a selector");
    assert_eq!(served(&s, "default/no-such-service").scope, sec::Scope::WorkloadSelector as i32, "selects nobody, not everybody");
    assert!(listed("Kubernetes//Pod/default/client").is_empty());
    assert_eq!(listed("Kubernetes//Pod/other/echo-other"), vec!["istio-system/root-echo"], "root namespace selects everywhere");
    assert!(!s.authorizations.contains_key("default/audit"), "AUDIT is accepted, never served");
}

/// Each bad document names file, line, field and why; the good ones apply.
#[test]
fn bad_policies_are_rejected_with_file_line_and_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("  action: CUSTOM\n  provider: {name: ext}\n", "spec.action", "CUSTOM (external authorization) is not supported"),
        ("  rules:\n  - from:\n    - source: {ipBlocks: [10.0.0.0/33]}\n", "spec.rules[0].from[0].source.ipBlocks[0]", "invalid ipBlock"),
        ("  rules:\n  - to:\n    - operation: {ports: [\"80-90\"]}\n", "spec.rules[0].to[0].operation.ports[0]", "not a port"),
        ("  rules:\n  - to:\n    - operation: {ports: [\"0\"]}\n", "spec.rules[0].to[0].operation.ports[0]", "not a port"),
        ("  rules:\n  - when:\n    - {key: source.color, values: [red]}\n", "spec.rules[0].when[0]", "unknown condition key"),
        ("  rules:\n  - when:\n    - {key: destination.port, values: [http]}\n", "spec.rules[0].when[0]", "not a port"),
        ("  rules:\n  - when:\n    - {key: source.ip}\n", "spec.rules[0].when[0]", "needs `values` or `notValues`"),
        ("  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\n", "spec.targetRef", "kind \"Gateway\""),
        ("  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: x}]\n", "spec.targetRefs[0]", "is not supported"),
        ("  targetRefs: [{kind: Service, name: echo, namespace: other}]\n", "spec.targetRefs[0]", "`namespace` is not allowed"),
        ("  targetRefs: [{kind: Service, name: echo}]\n  selector: {matchLabels: {app: echo}}\n", "spec.targetRefs", "only one of selector or targetRefs"),
        ("  rules:\n  - to:\n    - operation: {paths: ['/a/{**}/b/{**}']}\n", "spec.rules[0].to[0].operation.paths", "path"),
        ("  rules:\n  - when:\n    - {key: experimental.envoy.filters.x, values: [a]}\n", "spec.rules[0].when[0]", "experimental keys are not supported"),
        ("  rules:\n  - when:\n    - {key: 'request.headers[]', values: [a]}\n", "spec.rules[0].when[0]", "expected request.headers[<header name>]"),
        ("  rules:\n  - from:\n    - source: {remoteIpBlocks: [10.0.0.0/99]}\n", "spec.rules[0].from[0].source.remoteIpBlocks[0]", "invalid ipBlock"),
        ("  action: MAYBE\n", "spec.action", "unknown action"),
        ("  rules:\n  - from:\n    - source: {colours: [red]}\n", "spec.rules[0].from[0].source.colours", "unknown field `colours`"),
    ];
    for (spec, field, why) in cases {
        let good = policy_doc("security.istio.io/v1", "default", "good", "  rules: [{}]\n");
        let bad = policy_doc("security.istio.io/v1", "default", "bad", spec);
        let (o, errors) = load(&mut Folder::default(), &format!("{good}---\n{bad}"));
        assert_eq!(errors.len(), 1, "{spec}: {errors:?}");
        let e = &errors[0];
        assert!(e.starts_with("p.yaml:"), "{e}");
        let line: usize = e["p.yaml:".len()..].split(':').next().unwrap().parse().unwrap();
        assert!(line >= 6, "the line points into the second document: {e}");
        assert!(e.contains(&format!("AuthorizationPolicy field `{field}`")), "{spec}: {e}");
        assert!(e.contains(why), "{spec}: {e}");
        assert_eq!(o.authorization_policies.len(), 1, "the good policy still applies");
    }
    let wrong_api = policy_doc("networking.istio.io/v1", "default", "x", "  rules: [{}]\n");
    let (o, errors) = load(&mut Folder::default(), &wrong_api);
    assert!(errors[0].contains("expected security.istio.io/v1 or v1beta1"), "{}", errors[0]);
    assert!(o.authorization_policies.is_empty());
}

#[test]
fn a_broken_edit_keeps_the_last_good_policy() {
    let mut folder = Folder::default();
    let good = policy_doc("security.istio.io/v1", "default", "p", "  action: DENY\n  rules: [{}]\n");
    let (first, _) = load(&mut folder, &good);
    let (o, errors) = load(&mut folder, &good.replace("DENY", "CUSTOM"));
    assert_eq!(errors.len(), 1);
    assert_eq!(o.authorization_policies, first.authorization_policies);
}

#[test]
fn l7_rules_fail_closed() {
    let spec = |action: &str| {
        format!(
            "  action: {action}
  rules:
  - to:
    - operation: {{methods: [GET], ports: [\"8080\"]}}
  - from:
    - source: {{namespaces: [legacy]}}
    when:
    - {{key: \"request.headers[x-user]\", values: [admin]}}
    - {{key: source.ip, values: [10.0.0.0/8]}}
  - from:
    - source: {{principals: [\"*\"]}}
"
        )
    };
    let (o, errors) = load(&mut Folder::default(), &policy_doc("security.istio.io/v1", "ns", "a", &spec("ALLOW")));
    assert!(errors.is_empty(), "{errors:?}");
    let a = convert("ns", "a", &o.authorization_policies[&("ns".into(), "a".into())].spec).unwrap();
    assert_eq!(a.groups.len(), 1, "ALLOW: both L7 rules match nothing, the L4 rule stays: {a:?}");
    let presence = sec::StringMatch { match_type: Some(MatchType::Presence(true)) };
    assert_eq!(a.groups[0].rules[0].matches[0].principals, vec![presence]);

    let (o, _) = load(&mut Folder::default(), &policy_doc("security.istio.io/v1", "ns", "d", &spec("DENY")));
    let d = convert("ns", "d", &o.authorization_policies[&("ns".into(), "d".into())].spec).unwrap();
    assert_eq!(d.groups.len(), 3, "DENY keeps every rule");
    assert_eq!(d.groups[0].rules.len(), 1);
    assert_eq!(d.groups[0].rules[0].matches[0].destination_ports, vec![8080], "methods dropped, port kept");
    let second = &d.groups[1].rules;
    assert_eq!(second.len(), 2, "from and the L4 condition; the request.* condition is dropped");
    assert_eq!(second[0].matches[0].namespaces, vec![exact("legacy")]);
    assert_eq!(second[1].matches[0].source_ips, vec![sec::Address { address: vec![10, 0, 0, 0], length: 8 }]);
}

#[test]
fn string_matches_follow_istio_wildcards() {
    let t = |s: &str| string_match(s).match_type.unwrap();
    assert_eq!(t("*"), MatchType::Presence(true));
    assert_eq!(t("*/sa/sleep"), MatchType::Suffix("/sa/sleep".into()));
    assert_eq!(t("cluster.local/ns/default/*"), MatchType::Prefix("cluster.local/ns/default/".into()));
    assert_eq!(t("cluster.local/ns/a/sa/b"), MatchType::Exact("cluster.local/ns/a/sa/b".into()));
}

#[test]
fn ipv6_blocks_and_conditions_convert() {
    let spec = "  action: DENY
  rules:
  - from:
    - source: {ipBlocks: [\"fd00::/64\", 10.1.2.3], notIpBlocks: [10.1.0.0/16]}
    when:
    - {key: destination.port, notValues: [\"22\"]}
    - {key: source.principal, values: [td/ns/a/sa/b]}
";
    let (o, errors) = load(&mut Folder::default(), &policy_doc("security.istio.io/v1beta1", "ns", "p", spec));
    assert!(errors.is_empty(), "{errors:?}");
    let a = convert("ns", "p", &o.authorization_policies[&("ns".into(), "p".into())].spec).unwrap();
    let m = &a.groups[0].rules[0].matches[0];
    assert_eq!(m.source_ips[0].length, 64);
    assert_eq!(m.source_ips[0].address.len(), 16);
    assert_eq!(m.source_ips[1], sec::Address { address: vec![10, 1, 2, 3], length: 32 });
    assert_eq!(m.not_source_ips[0], sec::Address { address: vec![10, 1, 0, 0], length: 16 });
    assert_eq!(a.groups[0].rules[1].matches[0].not_destination_ports, vec![22]);
    assert_eq!(a.groups[0].rules[2].matches[0].principals, vec![exact("td/ns/a/sa/b")]);
}

#[test]
fn the_shipped_examples_load() {
    let dir = crate::controlplane::folder::yaml_files(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/authorization"),
    )
    .unwrap();
    assert!(!dir.is_empty());
    let files = dir.into_iter().map(|p| {
        let t = std::fs::read_to_string(&p);
        (p, t)
    });
    let (o, errors) = Folder::default().apply(files.collect());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(o.authorization_policies.len(), 2);
}
