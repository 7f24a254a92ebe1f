//! The served forms: hosts resolved, defaults filled in as documented in
//! `proto/README.md`, entries as the workload API's Services and Workloads.
use std::collections::BTreeMap;

use crate::controlplane::networking::convert::{self, entry};
use crate::controlplane::networking::{destination_rule as dr, service_entry as se, virtual_service as vs};
use crate::proto::mesh_networking as mn;
use crate::proto::workload as wl;

fn spec<S: serde::de::DeserializeOwned>(yaml: &str) -> S {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

fn ms(ms: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 })
}

#[test]
fn hosts_and_gateways_resolve_as_istio_does() {
    let hosts = [
        ("reviews", "reviews.shop.svc.cluster.local"),
        ("reviews.other", "reviews.other"),
        ("reviews.other.svc.cluster.local", "reviews.other.svc.cluster.local"),
        ("*.example.com", "*.example.com"),
        ("*", "*"),
        ("10.0.0.1", "10.0.0.1"),
        ("fd00::1", "fd00::1"),
    ];
    for (host, want) in hosts {
        assert_eq!(convert::resolve_host(host, "shop"), want, "{host}");
    }
    let gateways = [
        ("mesh", "mesh"),
        ("ingress", "shop/ingress"),
        ("istio-system/ingress", "istio-system/ingress"),
        ("ingress.istio-system.svc.cluster.local", "istio-system/ingress"),
    ];
    for (gw, want) in gateways {
        assert_eq!(convert::resolve_gateway(gw, "shop"), want, "{gw}");
    }
}

#[test]
fn virtual_service_carries_routes_with_resolved_hosts_and_defaults() {
    let s: vs::Spec = spec(
        "
hosts: [reviews]
gateways: [mesh, ingress]
exportTo: ['.']
http:
- name: canary
  match:
  - uri: {prefix: /api}
    headers: {x-user: {exact: jason}, x-debug: {}}
    gateways: [ingress]
  route:
  - destination: {host: reviews, subset: v2, port: {number: 9080}}
    weight: 10
    headers: {response: {set: {x-v: v2}}}
  - destination: {host: reviews.other.svc.cluster.local, subset: v1}
    weight: 90
  timeout: 1.5s
  retries: {attempts: 3, perTryTimeout: 100ms, retryOn: 5xx}
  fault: {delay: {fixedDelay: 2s, percent: 5}, abort: {httpStatus: 503}}
  mirror: {host: shadow}
  corsPolicy: {allowOrigin: ['https://a.example'], allowOrigins: [{prefix: 'https://b.'}], maxAge: 1m, allowCredentials: true}
- redirect: {uri: /moved}
- directResponse: {status: 418, body: {bytes: aGVsbG8=}}
- delegate: {name: sub}
tcp:
- match: [{port: 3306}]
  route: [{destination: {host: db}}]
",
    );
    let served = convert::virtual_service("shop", "reviews", &s);
    assert_eq!((served.name.as_str(), served.namespace.as_str()), ("reviews", "shop"));
    assert_eq!(served.hosts, vec!["reviews.shop.svc.cluster.local"]);
    assert_eq!(served.gateways, vec!["mesh", "shop/ingress"]);
    assert_eq!(served.export_to, vec!["."]);
    let canary = &served.http[0];
    assert_eq!(canary.name, "canary");
    let m = &canary.r#match[0];
    assert_eq!(m.uri.as_ref().unwrap().match_type, Some(mn::string_match::MatchType::Prefix("/api".into())));
    assert_eq!(m.headers["x-user"].match_type, Some(mn::string_match::MatchType::Exact("jason".into())));
    assert_eq!(m.headers["x-debug"].match_type, None, "presence");
    assert_eq!(m.gateways, vec!["shop/ingress"]);
    let d0 = canary.route[0].destination.as_ref().unwrap();
    assert_eq!((d0.host.as_str(), d0.subset.as_str(), d0.port), ("reviews.shop.svc.cluster.local", "v2", 9080));
    assert_eq!(canary.route[0].weight, 10);
    assert_eq!(canary.route[0].headers.as_ref().unwrap().response.as_ref().unwrap().set["x-v"], "v2");
    assert_eq!(canary.route[1].destination.as_ref().unwrap().host, "reviews.other.svc.cluster.local");
    assert_eq!(canary.timeout, ms(1500));
    let retries = canary.retries.as_ref().unwrap();
    assert_eq!((retries.attempts, retries.per_try_timeout, retries.retry_on.as_str()), (3, ms(100), "5xx"));
    let fault = canary.fault.as_ref().unwrap();
    let delay = fault.delay.as_ref().unwrap();
    assert_eq!((delay.fixed_delay, delay.percentage), (ms(2000), 5.0));
    let abort = fault.abort.as_ref().unwrap();
    assert_eq!(abort.error_type, Some(mn::http_fault_injection::abort::ErrorType::HttpStatus(503)));
    assert_eq!(abort.percentage, 100.0, "no percentage: every request");
    assert_eq!(canary.mirrors.len(), 1);
    assert_eq!(canary.mirrors[0].destination.as_ref().unwrap().host, "shadow.shop.svc.cluster.local");
    assert_eq!(canary.mirrors[0].percentage, 100.0);
    let cors = canary.cors_policy.as_ref().unwrap();
    assert_eq!(cors.allow_origins.len(), 2, "allowOrigin folded into allowOrigins");
    assert_eq!(cors.allow_origins[0].match_type, Some(mn::string_match::MatchType::Exact("https://a.example".into())));
    assert_eq!((cors.max_age, cors.allow_credentials), (ms(60_000), Some(true)));
    let redirect = served.http[1].redirect.as_ref().unwrap();
    assert_eq!((redirect.uri.as_str(), redirect.redirect_code), ("/moved", 301));
    let dr = served.http[2].direct_response.as_ref().unwrap();
    assert_eq!(dr.status, 418);
    assert_eq!(dr.body.as_ref().unwrap().specifier, Some(mn::http_body::Specifier::Bytes(b"hello".to_vec())));
    assert_eq!(served.http[3].delegate, Some(mn::Delegate { name: "sub".into(), namespace: "shop".into() }));
    assert_eq!(served.tcp[0].r#match[0].port, 3306);
    assert_eq!(served.tcp[0].route[0].destination.as_ref().unwrap().host, "db.shop.svc.cluster.local");
}

#[test]
fn mirror_percentages_and_tls_routes() {
    let s: vs::Spec = spec(
        "
hosts: ['*.example.com']
http:
- route: [{destination: {host: a}}]
  mirror: {host: b}
  mirrorPercent: 20
- route: [{destination: {host: a}}]
  mirrors: [{destination: {host: c, subset: v1}, percentage: {value: 2.5}}, {destination: {host: d}}]
tls:
- match: [{sniHosts: [a.example.com], port: 443}]
  route: [{destination: {host: a.example.com, port: {number: 8443}}}]
",
    );
    let served = convert::virtual_service("shop", "m", &s);
    assert_eq!(served.http[0].mirrors[0].percentage, 20.0);
    let m = &served.http[1].mirrors;
    assert_eq!((m[0].percentage, m[1].percentage), (2.5, 100.0));
    assert_eq!(m[0].destination.as_ref().unwrap().subset, "v1");
    assert_eq!(served.tls[0].r#match[0].sni_hosts, vec!["a.example.com"]);
    assert_eq!(served.tls[0].route[0].destination.as_ref().unwrap().port, 8443);
}

#[test]
fn destination_rule_carries_policies_with_resolved_host() {
    let s: dr::Spec = spec(
        "
host: reviews
exportTo: ['*']
workloadSelector: {matchLabels: {app: client}}
trafficPolicy:
  loadBalancer:
    consistentHash: {httpCookie: {name: user, path: /, ttl: 10s}, minimumRingSize: 1024}
  connectionPool:
    tcp: {maxConnections: 100, connectTimeout: 30ms}
    http: {http2MaxRequests: 1000, h2UpgradePolicy: UPGRADE}
  outlierDetection: {consecutiveErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}
  tls: {mode: ISTIO_MUTUAL, sni: reviews.shop}
  portLevelSettings:
  - port: {number: 9080}
    loadBalancer: {simple: LEAST_CONN}
subsets:
- name: v1
  labels: {version: v1}
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
",
    );
    let served = convert::destination_rule("shop", "reviews", &s);
    assert_eq!(served.host, "reviews.shop.svc.cluster.local");
    assert_eq!(served.export_to, vec!["*"]);
    assert_eq!(served.workload_selector["app"], "client");
    let p = served.traffic_policy.as_ref().unwrap();
    use mn::load_balancer_settings::consistent_hash_lb::{HashAlgorithm, HashKey, HttpCookie, RingHash};
    use mn::load_balancer_settings::{ConsistentHashLb, LbPolicy, SimpleLb};
    assert_eq!(
        p.load_balancer.as_ref().unwrap().lb_policy,
        Some(LbPolicy::ConsistentHash(ConsistentHashLb {
            hash_key: Some(HashKey::HttpCookie(HttpCookie { name: "user".into(), path: "/".into(), ttl: ms(10_000) })),
            hash_algorithm: Some(HashAlgorithm::RingHash(RingHash { minimum_ring_size: 1024 })),
        }))
    );
    let pool = p.connection_pool.as_ref().unwrap();
    assert_eq!(pool.tcp.as_ref().unwrap().connect_timeout, ms(30));
    assert_eq!(pool.http.as_ref().unwrap().h2_upgrade_policy, mn::connection_pool_settings::http_settings::H2UpgradePolicy::Upgrade as i32);
    let od = p.outlier_detection.as_ref().unwrap();
    assert_eq!((od.consecutive_gateway_errors, od.consecutive_5xx_errors), (Some(5), None), "consecutiveErrors is gateway errors");
    assert_eq!((od.interval, od.base_ejection_time, od.max_ejection_percent), (ms(10_000), ms(30_000), 50));
    let tls = p.tls.as_ref().unwrap();
    assert_eq!((tls.mode, tls.sni.as_str()), (mn::client_tls_settings::TlSmode::IstioMutual as i32, "reviews.shop"));
    let pl = &p.port_level_settings[0];
    assert_eq!(pl.port, 9080);
    assert_eq!(pl.load_balancer.as_ref().unwrap().lb_policy, Some(LbPolicy::Simple(SimpleLb::LeastRequest as i32)), "LEAST_CONN is LEAST_REQUEST");
    let v1 = &served.subsets[0];
    assert_eq!((v1.name.as_str(), v1.labels["version"].as_str()), ("v1", "v1"));
    let lb = v1.traffic_policy.as_ref().unwrap().load_balancer.as_ref().unwrap();
    assert_eq!(lb.lb_policy, Some(LbPolicy::Simple(SimpleLb::RoundRobin as i32)));
}

#[test]
fn service_entry_is_a_service_per_host() {
    let s: se::Spec = spec(
        "
hosts: [api.example.com, api2.example.com]
addresses: [240.0.0.1, 240.0.0.2/32, 10.0.0.0/24]
ports: [{number: 443, name: https, protocol: TLS}, {number: 80, name: http, protocol: HTTP, targetPort: 8080}]
subjectAltNames: ['spiffe://example.com/ns/ext/sa/api']
resolution: STATIC
endpoints:
- {address: 10.1.0.5, ports: {https: 8443}, labels: {app: api, version: v2}, serviceAccount: api}
- {address: 10.1.0.6, network: net2}
",
    );
    let services = entry::services("ext", "api", &s);
    assert_eq!(services.len(), 2);
    let (key, svc) = &services[0];
    assert_eq!(key, "ext/api.example.com");
    assert_eq!((svc.name.as_str(), svc.namespace.as_str(), svc.hostname.as_str()), ("api", "ext", "api.example.com"));
    let addrs: Vec<Vec<u8>> = svc.addresses.iter().map(|a| a.address.clone()).collect();
    assert_eq!(addrs, vec![vec![240, 0, 0, 1], vec![240, 0, 0, 2]], "a /24 is not a service address");
    assert_eq!(svc.ports, vec![wl::Port { service_port: 443, target_port: 443 }, wl::Port { service_port: 80, target_port: 8080 }]);
    assert_eq!(svc.subject_alt_names, vec!["spiffe://example.com/ns/ext/sa/api"]);
    assert_eq!(services[1].0, "ext/api2.example.com");

    let workloads = entry::endpoint_workloads("ext", "api", &s, "cluster.local");
    assert_eq!(workloads.len(), 2);
    let w = &workloads[0];
    assert_eq!(w.uid, "Kubernetes/networking.istio.io/ServiceEntry/ext/api/10.1.0.5");
    assert_eq!(w.addresses, vec![vec![10, 1, 0, 5]]);
    assert_eq!((w.service_account.as_str(), w.canonical_name.as_str(), w.canonical_revision.as_str()), ("api", "api", "v2"));
    let ports = &w.services["ext/api.example.com"].ports;
    assert_eq!(ports, &vec![wl::Port { service_port: 443, target_port: 8443 }, wl::Port { service_port: 80, target_port: 8080 }]);
    assert!(w.services.contains_key("ext/api2.example.com"));
    assert_eq!((workloads[1].network.as_str(), workloads[1].service_account.as_str()), ("net2", "default"));
}

#[test]
fn workload_entry_is_a_workload() {
    // spec, service account, addresses, hostname, tunnel protocol
    type Case<'a> = (&'a str, &'a str, Vec<Vec<u8>>, &'a str, i32);
    let cases: [Case; 3] = [
        ("{address: 10.0.0.9, labels: {app: vm, networking.istio.io/tunnel: http}, serviceAccount: vm}", "vm", vec![vec![10, 0, 0, 9]], "", wl::TunnelProtocol::Hbone as i32),
        ("{address: vm1.example.com}", "default", vec![], "vm1.example.com", wl::TunnelProtocol::None as i32),
        ("{address: 'unix:///run/a.sock'}", "default", vec![], "", wl::TunnelProtocol::None as i32),
    ];
    for (yaml, sa, addresses, hostname, tunnel) in cases {
        let s: se::WorkloadEntrySpec = spec(yaml);
        let w = entry::workload_entry("vms", "vm1", &s, "cluster.local");
        assert_eq!(w.uid, "Kubernetes/networking.istio.io/WorkloadEntry/vms/vm1", "{yaml}");
        assert_eq!((w.name.as_str(), w.namespace.as_str(), w.trust_domain.as_str()), ("vm1", "vms", "cluster.local"));
        assert_eq!((w.service_account.as_str(), &w.addresses, w.hostname.as_str(), w.tunnel_protocol), (sa, &addresses, hostname, tunnel), "{yaml}");
        assert!(w.services.is_empty(), "membership is the caller's");
    }
    // The port list a selecting ServiceEntry gives a WorkloadEntry.
    let se_spec: se::Spec = spec("{hosts: [vm.example.com], ports: [{number: 80, name: http, targetPort: 8080}, {number: 9090, name: metrics}]}");
    let ports = entry::ports_for(&se_spec, &BTreeMap::from([("metrics".to_string(), 19090)]));
    assert_eq!(ports.ports, vec![wl::Port { service_port: 80, target_port: 8080 }, wl::Port { service_port: 9090, target_port: 19090 }]);
}
