//! The evaluator (Istio semantics, table-driven), the proto conversion, selection, and
//! the kernel form: the kernel never drops a connection the evaluator allows.
use super::*;
use crate::l4policy::{compile, lookup, Decision as L4, HBONE_PORT};
use crate::state::TunnelProtocol;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn id(ns: &str, sa: &str) -> Identity {
    Identity { trust_domain: "td".into(), namespace: ns.into(), service_account: sa.into() }
}

fn exact(s: &str) -> StrMatch {
    StrMatch::Exact(s.into())
}

fn policy(name: &str, action: Action, groups: Vec<Group>) -> Arc<Policy> {
    Arc::new(Policy { name: name.into(), namespace: "ns".into(), scope: Scope::Namespace, action, groups, dry_run: false, unusable: None })
}

/// A group of clauses, each a list of matches.
fn group(clauses: Vec<Vec<Match>>) -> Group {
    Group { clauses }
}

fn from_principals(p: &[&str]) -> Vec<Match> {
    vec![Match { principals: p.iter().map(|s| exact(s)).collect(), ..Default::default() }]
}

fn from_ns(n: &[&str]) -> Vec<Match> {
    vec![Match { namespaces: n.iter().map(|s| exact(s)).collect(), ..Default::default() }]
}

fn from_ips(p: &[&str]) -> Vec<Match> {
    vec![Match { source_ips: p.iter().map(|s| Prefix::parse(s).unwrap()).collect(), ..Default::default() }]
}

fn to_ports(p: &[u16]) -> Vec<Match> {
    vec![Match { destination_ports: p.to_vec(), ..Default::default() }]
}

fn hbone(src: &str, who: Identity, port: u16) -> Attrs {
    Attrs { src_ip: ip(src), identity: Some(who), dst_ip: ip("10.0.0.100"), dst_port: port }
}

fn plain(src: &str, port: u16) -> Attrs {
    Attrs { src_ip: ip(src), identity: None, dst_ip: ip("10.0.0.100"), dst_port: port }
}

const SLEEP: &str = "td/ns/default/sa/sleep";

#[test]
fn evaluator_follows_istio_semantics() {
    let sleep = || id("default", "sleep");
    let other = || id("default", "other");
    use Decision::*;
    type Case = (&'static str, Vec<Arc<Policy>>, Attrs, Decision);
    let cases: Vec<Case> = vec![
        ("no policy allows", vec![], plain("1.1.1.1", 80), Allow),
        ("ALLOW with no rules denies all", vec![policy("a", Action::Allow, vec![])], hbone("1.1.1.1", sleep(), 80), NotAllowed("ns/a".into())),
        ("DENY with no rules denies nothing", vec![policy("d", Action::Deny, vec![])], plain("1.1.1.1", 80), Allow),
        ("rules: [{}] allows all", vec![policy("a", Action::Allow, vec![group(vec![])])], plain("1.1.1.1", 80), Allowed("ns/a".into())),
        ("rules: [{}] in DENY denies all", vec![policy("d", Action::Deny, vec![group(vec![])])], hbone("1.1.1.1", sleep(), 1), Denied("ns/d".into())),
        (
            "principal and port allow",
            vec![policy("a", Action::Allow, vec![group(vec![from_principals(&[SLEEP]), to_ports(&[8080])])])],
            hbone("1.1.1.1", sleep(), 8080),
            Allowed("ns/a".into()),
        ),
        (
            "principal right, port wrong",
            vec![policy("a", Action::Allow, vec![group(vec![from_principals(&[SLEEP]), to_ports(&[8080])])])],
            hbone("1.1.1.1", sleep(), 9090),
            NotAllowed("ns/a".into()),
        ),
        (
            "other identity",
            vec![policy("a", Action::Allow, vec![group(vec![from_principals(&[SLEEP])])])],
            hbone("1.1.1.1", other(), 8080),
            NotAllowed("ns/a".into()),
        ),
        (
            "plaintext has no principal",
            vec![policy("a", Action::Allow, vec![group(vec![from_principals(&["*"])])])],
            plain("1.1.1.1", 8080),
            NotAllowed("ns/a".into()),
        ),
        (
            "plaintext has no namespace",
            vec![policy("a", Action::Allow, vec![group(vec![from_ns(&["default"])])])],
            plain("1.1.1.1", 8080),
            NotAllowed("ns/a".into()),
        ),
        (
            "namespace from the SPIFFE id",
            vec![policy("a", Action::Allow, vec![group(vec![from_ns(&["default"])])])],
            hbone("1.1.1.1", sleep(), 8080),
            Allowed("ns/a".into()),
        ),
        (
            "notPrincipals matches plaintext",
            vec![policy(
                "d",
                Action::Deny,
                vec![group(vec![vec![Match { not_principals: vec![exact(SLEEP)], ..Default::default() }]])],
            )],
            plain("1.1.1.1", 80),
            Denied("ns/d".into()),
        ),
        (
            "notPrincipals spares the named identity",
            vec![policy(
                "d",
                Action::Deny,
                vec![group(vec![vec![Match { not_principals: vec![exact(SLEEP)], ..Default::default() }]])],
            )],
            hbone("1.1.1.1", sleep(), 80),
            Allow,
        ),
        (
            "DENY beats ALLOW",
            vec![
                policy("a", Action::Allow, vec![group(vec![])]),
                policy("d", Action::Deny, vec![group(vec![from_ips(&["10.0.0.0/8"])])]),
            ],
            plain("10.1.1.1", 80),
            Denied("ns/d".into()),
        ),
        (
            "DENY that does not match leaves ALLOW to decide",
            vec![
                policy("a", Action::Allow, vec![group(vec![to_ports(&[80])])]),
                policy("d", Action::Deny, vec![group(vec![from_ips(&["10.0.0.0/8"])])]),
            ],
            plain("11.1.1.1", 80),
            Allowed("ns/a".into()),
        ),
        (
            "any of several ALLOW policies",
            vec![
                policy("a1", Action::Allow, vec![group(vec![to_ports(&[80])])]),
                policy("a2", Action::Allow, vec![group(vec![to_ports(&[443])])]),
            ],
            plain("1.1.1.1", 443),
            Allowed("ns/a2".into()),
        ),
        (
            "none of several ALLOW policies",
            vec![
                policy("a1", Action::Allow, vec![group(vec![to_ports(&[80])])]),
                policy("a2", Action::Allow, vec![group(vec![to_ports(&[443])])]),
            ],
            plain("1.1.1.1", 22),
            NotAllowed("ns/a1,ns/a2".into()),
        ),
        (
            "a clause is an OR of matches",
            vec![policy("a", Action::Allow, vec![group(vec![[from_ips(&["10.0.0.0/8"]), from_principals(&[SLEEP])].concat()])])],
            hbone("192.168.1.1", sleep(), 80),
            Allowed("ns/a".into()),
        ),
        (
            "groups are OR, clauses AND",
            vec![policy(
                "a",
                Action::Allow,
                vec![group(vec![from_ips(&["10.0.0.0/8"]), to_ports(&[22])]), group(vec![to_ports(&[80])])],
            )],
            plain("192.168.1.1", 80),
            Allowed("ns/a".into()),
        ),
        (
            "notIpBlocks and notPorts",
            vec![policy(
                "d",
                Action::Deny,
                vec![group(vec![vec![Match {
                    not_source_ips: vec![Prefix::parse("10.0.0.0/8").unwrap()],
                    not_destination_ports: vec![443],
                    ..Default::default()
                }]])],
            )],
            plain("11.0.0.1", 80),
            Denied("ns/d".into()),
        ),
        (
            "destination IP",
            vec![policy(
                "d",
                Action::Deny,
                vec![group(vec![vec![Match { destination_ips: vec![Prefix::parse("10.0.0.100").unwrap()], ..Default::default() }]])],
            )],
            plain("1.1.1.1", 80),
            Denied("ns/d".into()),
        ),
        (
            "prefix and suffix principals",
            vec![policy(
                "a",
                Action::Allow,
                vec![group(vec![vec![Match {
                    principals: vec![StrMatch::Prefix("td/ns/default/".into())],
                    not_principals: vec![StrMatch::Suffix("/sa/other".into())],
                    ..Default::default()
                }]])],
            )],
            hbone("1.1.1.1", other(), 80),
            NotAllowed("ns/a".into()),
        ),
        (
            "a clause with no match matches nothing",
            vec![policy("a", Action::Allow, vec![group(vec![vec![]])])],
            plain("1.1.1.1", 80),
            NotAllowed("ns/a".into()),
        ),
    ];
    for (what, policies, attrs, want) in cases {
        assert_eq!(decide(&policies, &attrs, None), want, "{what}");
    }
}

#[test]
fn dry_run_policies_never_decide() {
    let mut p = (*policy("d", Action::Deny, vec![group(vec![])])).clone();
    p.dry_run = true;
    assert_eq!(decide(&[Arc::new(p)], &plain("1.1.1.1", 80), None), Decision::Allow);
}

#[test]
fn selection_by_scope() {
    let mut p = (*policy("p", Action::Allow, vec![])).clone();
    p.scope = Scope::Global;
    assert!(p.selects("anything", &[]));
    p.scope = Scope::Namespace;
    assert!(p.selects("ns", &[]) && !p.selects("other", &[]));
    p.scope = Scope::WorkloadSelector;
    assert!(!p.selects("ns", &[]));
    assert!(p.selects("ns", &["ns/p".to_string()]));
}

#[test]
fn proto_conversion_checks_values() {
    let m = sec::Match {
        principals: vec![sec::StringMatch { match_type: Some(sec::string_match::MatchType::Suffix("/sa/x".into())) }],
        source_ips: vec![sec::Address { address: vec![10, 0, 0, 0], length: 8 }],
        destination_ports: vec![8080],
        ..Default::default()
    };
    let a = sec::Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Deny as i32,
        groups: vec![sec::Group { rules: vec![sec::Rules { matches: vec![m.clone()] }] }],
        dry_run: false,
        mesh_rules: None,
    };
    let p = convert("ns/p", &a).unwrap();
    assert_eq!((p.scope, p.action, p.key()), (Scope::WorkloadSelector, Action::Deny, "ns/p".to_string()));
    let got = &p.groups[0].clauses[0][0];
    assert_eq!(got.principals, vec![StrMatch::Suffix("/sa/x".into())]);
    assert_eq!(got.source_ips, vec![Prefix::parse("10.0.0.0/8").unwrap()]);
    let bad = |f: &dyn Fn(&mut sec::Authorization)| {
        let mut b = a.clone();
        f(&mut b);
        convert("ns/p", &b).unwrap_err().to_string()
    };
    assert!(bad(&|b| b.groups[0].rules[0].matches[0].source_ips[0].address = vec![1, 2, 3]).contains("3 bytes"));
    assert!(bad(&|b| b.groups[0].rules[0].matches[0].source_ips[0].length = 33).contains("prefix length 33"));
    assert!(bad(&|b| b.groups[0].rules[0].matches[0].destination_ports[0] = 70000).contains("port 70000"));
    assert!(bad(&|b| b.action = 7).contains("unknown action value 7"));
    assert!(bad(&|b| b.groups[0].rules[0].matches[0].principals[0].match_type = None).contains("without a value"));
}

fn workload(name: &str, ns: &str, sa: &str, addr: &str) -> Arc<Workload> {
    Arc::new(Workload {
        uid: name.into(),
        name: name.into(),
        namespace: ns.into(),
        service_account: sa.into(),
        trust_domain: "td".into(),
        node: "n".into(),
        addresses: vec![ip(addr)],
        protocol: TunnelProtocol::Hbone,
        labels: Default::default(),
        healthy: true,
    })
}

#[test]
fn kernel_form_resolves_identities_to_addresses() {
    let workloads = vec![
        workload("sleep", "default", "sleep", "10.0.0.5"),
        workload("other", "default", "other", "10.0.0.6"),
        workload("legacy", "legacy", "default", "10.0.0.7"),
    ];
    let p = policy("a", Action::Allow, vec![group(vec![from_principals(&[SLEEP]), to_ports(&[8080])])]);
    let l4 = to_l4(&p, &workloads).unwrap();
    assert_eq!(l4.rules[0].from[0].peers, Some(vec![ip("10.0.0.5")]));
    assert_eq!(l4.rules[0].to[0].ports, vec![8080]);
    let p = policy("d", Action::Deny, vec![group(vec![from_ns(&["legacy"])])]);
    assert_eq!(to_l4(&p, &workloads).unwrap().rules[0].from[0].peers, Some(vec![ip("10.0.0.7")]));
    // A principal nobody holds: the source matches nothing.
    let p = policy("a", Action::Allow, vec![group(vec![from_principals(&["td/ns/x/sa/nobody"])])]);
    assert_eq!(to_l4(&p, &workloads).unwrap().rules[0].from[0].peers, Some(vec![]));
    // Not-forms: a DENY spares the excluded identities' addresses (on HBONE), an ALLOW
    // ignores them there but admits no plaintext; neither touches the address blocks.
    let not_ns = vec![Match { not_namespaces: vec![exact("default")], ..Default::default() }];
    let d = to_l4(&policy("d", Action::Deny, vec![group(vec![not_ns.clone()])]), &workloads).unwrap();
    assert_eq!(d.rules[0].from[0], l4policy::Source { not_peers: vec![ip("10.0.0.5"), ip("10.0.0.6")], ..Default::default() });
    let a = to_l4(&policy("a", Action::Allow, vec![group(vec![not_ns])]), &workloads).unwrap();
    assert_eq!(a.rules[0].from[0], l4policy::Source { needs_identity: true, ..Default::default() });
    // A destination-IP clause: an ALLOW rule goes without it, a DENY rule is left out.
    let dst = vec![Match { destination_ips: vec![Prefix::parse("10.0.0.100").unwrap()], ..Default::default() }];
    let a = policy("a", Action::Allow, vec![group(vec![dst.clone(), to_ports(&[80])])]);
    assert_eq!(to_l4(&a, &workloads).unwrap().rules, vec![l4policy::Rule { from: vec![], to: to_l4_ports(&[80]) }]);
    let d = policy("d", Action::Deny, vec![group(vec![dst, to_ports(&[80])])]);
    assert!(to_l4(&d, &workloads).unwrap().rules.is_empty());
    // Two source clauses (from + when source.ip): ALLOW keeps the first, DENY drops the rule.
    let a = policy("a", Action::Allow, vec![group(vec![from_ips(&["10.0.0.0/8"]), from_ips(&["10.0.0.0/16"])])]);
    assert_eq!(to_l4(&a, &workloads).unwrap().rules[0].from[0].ip_blocks, vec![Prefix::parse("10.0.0.0/8").unwrap()]);
    let d = policy("d", Action::Deny, vec![group(vec![from_ips(&["10.0.0.0/8"]), from_ips(&["10.0.0.0/16"])])]);
    assert!(to_l4(&d, &workloads).unwrap().rules.is_empty());
    // A clause with no match: the rule matches nothing, in both.
    let a = policy("a", Action::Allow, vec![group(vec![vec![]])]);
    assert!(to_l4(&a, &workloads).unwrap().rules.is_empty());
}

fn to_l4_ports(p: &[u16]) -> Vec<l4policy::Operation> {
    vec![l4policy::Operation { ports: p.to_vec(), not_ports: vec![] }]
}

fn mesh() -> Vec<Arc<Workload>> {
    vec![
        workload("sleep", "default", "sleep", "10.0.0.5"),
        workload("other", "default", "other", "10.0.0.6"),
        workload("legacy", "legacy", "default", "10.1.0.7"),
    ]
}

/// The kernel's verdicts for `policies` (compiled as the agent writes them): whether a
/// packet from `src` to `port` passes.
fn kernel(policies: &[Arc<Policy>], workloads: &[Arc<Workload>]) -> impl Fn(&str, u16) -> bool {
    let l4: Vec<L4Policy> = policies.iter().filter_map(|p| to_l4(p, workloads)).collect();
    let table = compile(&l4).unwrap();
    move |src, port| l4.is_empty() || matches!(lookup(&table, ip(src), port), Some(L4::Allow))
}

/// Istio's `*` is presence; anything else here is exact.
fn istio_str(s: &str) -> StrMatch {
    if s == "*" {
        StrMatch::Presence
    } else {
        exact(s)
    }
}

fn not_principals(p: &[&str]) -> Vec<Match> {
    vec![Match { not_principals: p.iter().map(|s| istio_str(s)).collect(), ..Default::default() }]
}

fn not_namespaces(n: &[&str]) -> Vec<Match> {
    vec![Match { not_namespaces: n.iter().map(|s| exact(s)).collect(), ..Default::default() }]
}

/// The identity conditions under both views: app ports judge plaintext exactly as
/// Istio does (no principal, no namespace), 15008 by the holders' addresses.
#[test]
fn kernel_judges_identity_exactly_on_app_ports_and_by_address_on_hbone() {
    const H: u16 = HBONE_PORT;
    let w = mesh();
    let (sleep, other, legacy, outsider) = ("10.0.0.5", "10.0.0.6", "10.1.0.7", "192.168.3.3");
    type Case = (&'static str, Vec<Arc<Policy>>, Vec<(&'static str, u16, bool)>);
    let cases: Vec<Case> = vec![
        (
            "DENY principals [sleep] does not drop plaintext from sleep's address",
            vec![policy("d", Action::Deny, vec![group(vec![from_principals(&[SLEEP])])])],
            vec![(sleep, 8080, true), (sleep, 80, true), (outsider, 8080, true), (sleep, H, false), (other, H, true)],
        ),
        (
            "DENY notPrincipals [*] (STRICT) drops all plaintext, never HBONE from the mesh",
            vec![policy("d", Action::Deny, vec![group(vec![not_principals(&["*"])])])],
            vec![(sleep, 8080, false), (outsider, 8080, false), (outsider, 22, false), (sleep, H, true), (legacy, H, true)],
        ),
        (
            "DENY notPrincipals [*] on 8080 drops plaintext there only",
            vec![policy("d", Action::Deny, vec![group(vec![not_principals(&["*"]), to_ports(&[8080])])])],
            vec![(outsider, 8080, false), (sleep, 8080, false), (outsider, 9090, true), (sleep, H, true), (outsider, H, true)],
        ),
        (
            "ALLOW principals [sleep] on 8080 drops plaintext to 8080, passes 15008 from sleep",
            vec![policy("a", Action::Allow, vec![group(vec![from_principals(&[SLEEP]), to_ports(&[8080])])])],
            vec![(sleep, 8080, false), (outsider, 8080, false), (sleep, 80, false), (sleep, H, true), (other, H, false)],
        ),
        (
            "ALLOW namespaces [default] on 8080 likewise",
            vec![policy("a", Action::Allow, vec![group(vec![from_ns(&["default"]), to_ports(&[8080])])])],
            vec![(sleep, 8080, false), (other, 8080, false), (sleep, H, true), (other, H, true), (legacy, H, false)],
        ),
        (
            "DENY notNamespaces [default] drops all plaintext, HBONE from default passes",
            vec![policy("d", Action::Deny, vec![group(vec![not_namespaces(&["default"])])])],
            vec![(sleep, 8080, false), (outsider, 80, false), (sleep, H, true), (other, H, true), (legacy, H, false), (outsider, H, false)],
        ),
        (
            "ALLOW notNamespaces [legacy] admits no plaintext (a negative matcher is no consent)",
            vec![policy("a", Action::Allow, vec![group(vec![not_namespaces(&["legacy"])])])],
            vec![(outsider, 8080, false), (legacy, 8080, false), (sleep, H, true), (legacy, H, true)],
        ),
        (
            "ALLOW from an ipBlock or a principal: plaintext passes by the block only",
            vec![policy("a", Action::Allow, vec![group(vec![[from_ips(&["192.168.0.0/16"]), from_principals(&[SLEEP])].concat()])])],
            vec![(outsider, 80, true), (sleep, 80, false), (sleep, H, true), (other, H, false)],
        ),
    ];
    for (what, policies, probes) in cases {
        let passes = kernel(&policies, &w);
        for (src, port, want) in probes {
            assert_eq!(passes(src, port), want, "{what}: {src} port {port}");
            // The agent agrees on plaintext; on 15008 it allows no more than the kernel.
            if port != H {
                assert_eq!(decide(&policies, &plain(src, port), None).is_allowed(), want, "{what}: the agent on {src}:{port}");
            } else if let Some(w) = w.iter().find(|x| x.addresses.contains(&ip(src))) {
                let agent = [80u16, 8080, 9090].iter().any(|p| decide(&policies, &hbone(src, w.identity(), *p), None).is_allowed());
                assert!(want || !agent, "{what}: the agent allows HBONE from {src}");
            }
        }
    }
}

/// A random `Match` of one kind: identities (0), source addresses (1), destination
/// ports (2), destination addresses (3).
fn random_match(kind: usize) -> Match {
    let principals = [SLEEP, "td/ns/default/sa/other", "td/ns/legacy/sa/default", "*"];
    let namespaces = ["default", "legacy"];
    let blocks = ["10.0.0.0/8", "10.0.0.0/24", "10.0.0.5", "10.1.0.0/16", "192.168.0.0/16"];
    let ports = [80u16, 8080, 443];
    let pick = |n: usize, of: &[&str]| -> Vec<String> { (0..n).map(|_| of[fastrand::usize(..of.len())].to_string()).collect() };
    let strs = |v: Vec<String>| v.iter().map(|s| istio_str(s)).collect();
    let ips = |v: Vec<String>| v.iter().map(|s| Prefix::parse(s).unwrap()).collect();
    let mut m = Match::default();
    match kind {
        0 => {
            m.principals = strs(pick(fastrand::usize(0..2), &principals));
            m.not_principals = strs(pick(fastrand::usize(0..2), &principals));
            m.namespaces = strs(pick(fastrand::usize(0..2), &namespaces));
            m.not_namespaces = strs(pick(fastrand::usize(0..2), &namespaces));
            if fastrand::usize(..4) == 0 {
                m.source_ips = ips(pick(1, &blocks));
            }
        }
        1 => {
            m.source_ips = ips(pick(fastrand::usize(0..2), &blocks));
            m.not_source_ips = ips(pick(fastrand::usize(0..2), &blocks));
        }
        2 => {
            m.destination_ports = (0..fastrand::usize(0..3)).map(|_| ports[fastrand::usize(..3)]).collect();
            m.not_destination_ports = (0..fastrand::usize(0..2)).map(|_| ports[fastrand::usize(..3)]).collect();
        }
        _ => m.destination_ips = ips(pick(1, &["10.0.0.100", "10.9.9.9"])),
    }
    m
}

/// Random policies of 1-3 groups. `expressible`: each group holds at most one clause
/// on sources and one on ports (as `from` and `to` give), no destination address, so
/// the kernel's form is exact on plaintext; otherwise clauses are of any shape.
fn random_policies(expressible: bool) -> Vec<Arc<Policy>> {
    let clause = |kinds: &[usize]| -> Vec<Match> { (0..fastrand::usize(0..3)).map(|_| random_match(kinds[fastrand::usize(..kinds.len())])).collect() };
    (0..fastrand::usize(1..4))
        .map(|i| {
            let groups = (0..fastrand::usize(0..3))
                .map(|_| {
                    let mut clauses: Vec<Vec<Match>> = if expressible {
                        [fastrand::bool().then(|| clause(&[0, 1])), fastrand::bool().then(|| clause(&[2]))].into_iter().flatten().collect()
                    } else {
                        (0..fastrand::usize(0..3)).map(|_| clause(&[0, 1, 2, 3])).collect()
                    };
                    fastrand::shuffle(&mut clauses);
                    group(clauses)
                })
                .collect();
            let action = if fastrand::bool() { Action::Allow } else { Action::Deny };
            policy(&format!("p{i}"), action, groups)
        })
        .collect()
}

const SOURCES: [(&str, Option<(&str, &str)>); 5] = [
    ("10.0.0.5", Some(("default", "sleep"))),
    ("10.0.0.6", Some(("default", "other"))),
    ("10.1.0.7", Some(("legacy", "default"))),
    ("10.0.0.9", None),
    ("192.168.3.3", None),
];
const APP_PORTS: [u16; 4] = [80, 8080, 443, 9999];

/// Random policies and connections: whatever the evaluator allows over HBONE, the
/// kernel lets through on 15008 from the workload's address; whatever it allows in
/// plaintext, from any address (a workload's too), the kernel lets through on the port.
#[test]
fn kernel_never_drops_what_the_agent_allows() {
    fastrand::seed(11);
    let workloads = mesh();
    for round in 0..600 {
        let policies = random_policies(false);
        let passes = kernel(&policies, &workloads);
        for (src, who) in SOURCES {
            for port in APP_PORTS {
                if decide(&policies, &plain(src, port), None).is_allowed() {
                    assert!(passes(src, port), "round {round}: plaintext {src}:{port} allowed by the agent, dropped\n{policies:#?}");
                }
                let Some((ns, sa)) = who else { continue };
                if decide(&policies, &hbone(src, id(ns, sa), port), None).is_allowed() {
                    assert!(passes(src, HBONE_PORT), "round {round}: HBONE {src} to {port} allowed by the agent, dropped\n{policies:#?}");
                }
            }
        }
    }
}

/// The converse where it holds: for policies the kernel can express, the kernel drops
/// plaintext on an application port exactly when the evaluator denies it.
#[test]
fn kernel_drops_plaintext_exactly_when_the_agent_denies_it() {
    fastrand::seed(12);
    let workloads = mesh();
    let (mut dropped, mut passed) = (0, 0);
    for round in 0..600 {
        let policies = random_policies(true);
        let passes = kernel(&policies, &workloads);
        for (src, _) in SOURCES {
            for port in APP_PORTS {
                let agent = decide(&policies, &plain(src, port), None);
                assert_eq!(passes(src, port), agent.is_allowed(), "round {round}: plaintext {src}:{port}, agent: {agent:?}\n{policies:#?}");
                if agent.is_allowed() {
                    passed += 1;
                } else {
                    dropped += 1;
                }
            }
        }
    }
    assert!(dropped > 1000 && passed > 1000, "the random policies should both drop and pass: {dropped} dropped, {passed} passed");
}

#[tokio::test]
async fn a_policy_change_revokes_live_connections_it_now_denies() {
    use super::enforce::Enforcer;
    let state = crate::state::State::default();
    let enforcer = Arc::new(Enforcer::default());
    let doomed = plain("10.1.1.1", 8080);
    assert_eq!(enforcer.check(&state, "ns", &doomed, None), Decision::Allow);
    let mut revoked = enforcer.register("ns", "echo", doomed, false);
    let kept = enforcer.register("ns", "echo", plain("10.2.2.2", 8080), false);
    assert_eq!(enforcer.recheck(&state), 0);
    state.upsert_policy((*policy("d", Action::Deny, vec![group(vec![from_ips(&["10.1.0.0/16"])])])).clone());
    assert_eq!(enforcer.recheck(&state), 1);
    let reason = tokio::time::timeout(std::time::Duration::from_secs(1), revoked.revoked()).await.unwrap();
    assert_eq!(reason, "closed by a policy change: deny policy=ns/d (DENY rule matched)");
    assert_eq!(enforcer.live_count(), 1, "the revoked one left the registry, the other stays");
    drop(kept);
    assert_eq!(enforcer.live_count(), 0, "a finished connection leaves the registry");
    // Another namespace's pods are not selected by a NAMESPACE policy of "ns".
    assert_eq!(enforcer.check(&state, "other", &plain("10.1.1.1", 8080), None), Decision::Allow);
    // Before the first xDS update everything is refused.
    let waiting = Enforcer::waiting_for_sync();
    assert_eq!(waiting.check(&state, "other", &plain("10.9.9.9", 80), None), Decision::NotSynced);
}

mod l7;
