use super::*;
use crate::controlplane::folder::Folder;

fn sidecars(yaml: &str) -> crate::controlplane::folder::Map<(String, String), Arc<Sidecar>> {
    let (o, errors) = Folder::default().apply(vec![("s.yaml".into(), Ok(yaml.to_string()))]);
    assert!(errors.is_empty(), "{errors:?}");
    o.sidecars
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const SIDECARS: &str = "
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  egress: [{hosts: ['./*', 'istio-system/*']}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec:
  egress: [{hosts: ['./*', 'billing/payments.billing.svc.cluster.local']}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: cart, namespace: shop}
spec:
  workloadSelector: {labels: {app: cart}}
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    hosts: ['shop/reviews.shop.svc.cluster.local']
  - hosts: ['*/*.example.com', '~/*']
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: open, namespace: lab}
spec: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}
";

#[test]
fn the_sidecar_that_applies_and_what_it_admits() {
    let s = sidecars(SIDECARS);
    // (pod namespace, labels) -> (namespace, host) -> admitted
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str, bool);
    let cases: &[Case] = &[
        // shop's selector-less Sidecar: its own namespace, one billing host.
        ("shop", &[("app", "web")], "shop", "reviews.shop.svc.cluster.local", true),
        ("shop", &[("app", "web")], "billing", "payments.billing.svc.cluster.local", true),
        ("shop", &[("app", "web")], "billing", "ledger.billing.svc.cluster.local", false),
        ("shop", &[("app", "web")], "istio-system", "istiod.istio-system.svc.cluster.local", false),
        // cart's own Sidecar wins over the namespace default: wildcards, port listeners added.
        ("shop", &[("app", "cart")], "ext", "api.example.com", true),
        ("shop", &[("app", "cart")], "any", "example.com", false),
        ("shop", &[("app", "cart")], "shop", "reviews.shop.svc.cluster.local", true),
        ("shop", &[("app", "cart")], "shop", "web.shop.svc.cluster.local", false),
        // No Sidecar in its namespace: the root namespace's applies, and its `.` is
        // the pod's namespace (Istio's global default: "./*" means "its own").
        ("blog", &[], "blog", "posts.blog.svc.cluster.local", true),
        ("blog", &[], "shop", "web.shop.svc.cluster.local", false),
        ("blog", &[], "istio-system", "istiod.istio-system.svc.cluster.local", true),
    ];
    for (ns, kv, rns, host, want) in cases {
        let hosts = for_pod(&s, "istio-system", ns, &labels(kv)).expect("a Sidecar applies");
        let got = hosts.iter().any(|h| h.admits(rns, host));
        assert_eq!(got, *want, "pod in {ns} {kv:?} -> {rns}/{host}");
    }
    // A Sidecar without egress leaves egress open; no Sidecar at all: every host.
    assert_eq!(for_pod(&s, "istio-system", "lab", &labels(&[])), None);
    assert_eq!(for_pod(&Default::default(), "istio-system", "shop", &labels(&[])), None);
}

#[test]
fn host_entries_parse_and_match() {
    let h = |e: &str| EgressHost::parse(e, "own").unwrap();
    assert_eq!(EgressHost::parse("~/*", "own"), None);
    assert_eq!(EgressHost::parse("no-slash", "own"), None);
    assert_eq!(h("./*").namespace.as_deref(), Some("own"));
    assert_eq!(h("*/*").namespace, None);
    assert!(h("*/*").admits("x", "anything"));
    assert!(h("*/*.a.com").admits("x", "b.a.com"));
    assert!(!h("*/*.a.com").admits("x", "a.com"), "a wildcard needs a label before the suffix");
    assert!(!h("other/*").admits("own", "h"));
    assert!(h("other/h").admits("other", "h") && !h("other/h").admits("other", "h2"));
}
