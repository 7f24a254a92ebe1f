//! The replay of the kernel's inbound decisions, over a view held in memory: every
//! pass, every drop reason, the order between the two programs.
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use mesh_common::{addr_from_ip, drop_reason, inbound_mode, verdict, Addr, PolicyMeta, PolicyValue, POLICY_HAS_ALLOW};

use super::{explain, Outcome, View};
use crate::l4policy::Prefix;

const POD: &str = "10.201.1.3";
const POD6: &str = "fd00:201:1::3";
const VERSION: u32 = 7;

#[derive(Default, Clone)]
struct Fake {
    modes: HashMap<Addr, u32>,
    ports: HashMap<(Addr, u16), u32>,
    exempt: HashSet<Addr>,
    listeners: HashSet<Addr>,
    versions: HashMap<Addr, u32>,
    metas: HashMap<u32, PolicyMeta>,
    rules: Vec<(u32, u16, Prefix, PolicyValue)>,
}

fn a(ip: &str) -> Addr {
    addr_from_ip(ip.parse::<IpAddr>().unwrap().to_canonical())
}

impl View for Fake {
    fn pod_mode(&self, pod: Addr) -> Option<u32> {
        self.modes.get(&pod).copied()
    }
    fn port_mode(&self, pod: Addr, port: u16) -> Option<u32> {
        self.ports.get(&(pod, port)).copied()
    }
    fn exempt(&self, src: Addr) -> bool {
        self.exempt.contains(&src)
    }
    fn has_listener(&self, pod: Addr) -> bool {
        self.listeners.contains(&pod)
    }
    fn policy_version(&self, pod: Addr) -> Option<u32> {
        self.versions.get(&pod).copied()
    }
    fn policy_meta(&self, version: u32) -> Option<PolicyMeta> {
        self.metas.get(&version).copied()
    }
    fn policy_entries(&self, version: u32, port: u16) -> Vec<(Prefix, PolicyValue)> {
        self.rules.iter().filter(|r| r.0 == version && r.1 == port).map(|r| (r.2, r.3)).collect()
    }
}

/// An enrolled pod (IPv4 and IPv6) in `mode`, with the agent's listener.
fn pod(mode: u32) -> Fake {
    let mut f = Fake::default();
    for ip in [POD, POD6] {
        f.modes.insert(a(ip), mode);
        f.listeners.insert(a(ip));
    }
    f
}

/// `f` with a policy version for POD: `has_allow`, and entries (port, prefix, verdict).
fn with_policy(mut f: Fake, has_allow: bool, entries: &[(u16, &str, u32)]) -> Fake {
    f.versions.insert(a(POD), VERSION);
    let flags = if has_allow { POLICY_HAS_ALLOW } else { 0 };
    f.metas.insert(VERSION, PolicyMeta { pod: a(POD), flags, entries: entries.len() as u32 });
    for (port, prefix, v) in entries {
        f.rules.push((VERSION, *port, Prefix::parse(prefix).unwrap(), PolicyValue { verdict: *v, policy: 0 }));
    }
    f
}

const STEERED: Outcome = Outcome::SteeredToAgent;
const fn dropped(r: u32) -> Outcome {
    Outcome::Dropped(r)
}

#[test]
fn every_outcome_in_the_kernels_order() {
    use inbound_mode::{BYPASS, DISABLE, PERMISSIVE, STRICT};
    use verdict::{ALLOW, DENY, NO_MATCH};
    let permissive = pod(PERMISSIVE);
    let strict = pod(STRICT);
    let mut no_listener = pod(PERMISSIVE);
    no_listener.listeners.clear();
    let mut strict_bypass_8443 = pod(STRICT);
    strict_bypass_8443.ports.insert((a(POD), 8443), BYPASS);
    let mut permissive_strict_9090 = pod(PERMISSIVE);
    permissive_strict_9090.ports.insert((a(POD), 9090), STRICT);
    let mut exempt = pod(STRICT);
    exempt.exempt.insert(a("169.254.7.127"));
    let deny_16 = with_policy(pod(PERMISSIVE), false, &[(0, "::/0", NO_MATCH), (0, "10.1.0.0/16", DENY)]);
    let nested = with_policy(
        pod(PERMISSIVE),
        true,
        &[(0, "::/0", NO_MATCH), (0, "10.1.0.0/16", DENY), (0, "10.1.2.0/24", ALLOW), (80, "::/0", ALLOW)],
    );
    let mut no_meta = deny_16.clone();
    no_meta.metas.clear();
    let mut other_pods_meta = deny_16.clone();
    other_pods_meta.metas.get_mut(&VERSION).unwrap().pod = a("10.201.1.99");
    let mut empty_version = deny_16.clone();
    empty_version.rules.clear();
    let mut policy_only = deny_16.clone();
    policy_only.modes.clear();
    let mut bad_verdict = deny_16.clone();
    bad_verdict.rules[0].3.verdict = 9;

    let cases: &[(&str, &Fake, &str, &str, u16, Outcome)] = &[
        ("unknown address", &Fake::default(), "10.0.0.1", "10.9.9.9", 80, Outcome::NotEnrolled),
        ("PERMISSIVE plaintext is steered", &permissive, "10.0.0.1", POD, 8080, STEERED),
        ("PERMISSIVE over IPv6", &permissive, "fd00::1", POD6, 8080, STEERED),
        ("IPv4-mapped source and pod", &permissive, "::ffff:10.0.0.1", "::ffff:10.201.1.3", 8080, STEERED),
        ("DISABLE is steered too", &pod(DISABLE), "10.0.0.1", POD, 8080, STEERED),
        ("no agent listener fails closed", &no_listener, "10.0.0.1", POD, 8080, dropped(drop_reason::NO_AGENT_LISTENER)),
        ("STRICT drops plaintext", &strict, "10.0.0.1", POD, 8080, dropped(drop_reason::STRICT_PLAINTEXT)),
        ("STRICT over IPv6", &strict, "fd00::1", POD6, 8080, dropped(drop_reason::STRICT_PLAINTEXT)),
        ("STRICT passes HBONE", &strict, "10.0.0.1", POD, 15008, Outcome::Delivered),
        ("STRICT passes the agent's 15001", &strict, "10.0.0.1", POD, 15001, Outcome::Delivered),
        ("STRICT passes the agent's 15006", &strict, "10.0.0.1", POD, 15006, Outcome::Delivered),
        ("the pod to itself", &strict, POD, POD, 8080, Outcome::Delivered),
        ("an excluded port under STRICT", &strict_bypass_8443, "10.0.0.1", POD, 8443, Outcome::Delivered),
        ("another port of the same pod", &strict_bypass_8443, "10.0.0.1", POD, 8080, dropped(drop_reason::STRICT_PLAINTEXT)),
        ("a STRICT port in a PERMISSIVE pod", &permissive_strict_9090, "10.0.0.1", POD, 9090, dropped(drop_reason::STRICT_PLAINTEXT)),
        ("its other ports", &permissive_strict_9090, "10.0.0.1", POD, 8080, STEERED),
        ("the probe source", &exempt, "169.254.7.127", POD, 8080, Outcome::Delivered),
        ("other sources", &exempt, "169.254.7.128", POD, 8080, dropped(drop_reason::STRICT_PLAINTEXT)),
        ("DENY by prefix", &deny_16, "10.1.7.7", POD, 8080, dropped(drop_reason::POLICY_DENY)),
        ("DENY even on HBONE's port", &deny_16, "10.1.7.7", POD, 15008, dropped(drop_reason::POLICY_DENY)),
        ("outside the DENY prefix", &deny_16, "10.2.7.7", POD, 8080, STEERED),
        ("the pod's own address skips policy", &deny_16, POD, POD, 8080, Outcome::Delivered),
        ("longest prefix: ALLOW inside DENY", &nested, "10.1.2.9", POD, 8081, STEERED),
        ("longest prefix: the DENY around it", &nested, "10.1.3.9", POD, 8081, dropped(drop_reason::POLICY_DENY)),
        ("exact port before any port", &nested, "10.1.3.9", POD, 80, STEERED),
        ("no match under an ALLOW policy", &nested, "192.168.0.1", POD, 8081, dropped(drop_reason::POLICY_NO_ALLOW_MATCH)),
        ("no POLICY_META: fail closed", &no_meta, "10.2.7.7", POD, 8080, dropped(drop_reason::POLICY_UNKNOWN)),
        ("POLICY_META of another pod", &other_pods_meta, "10.2.7.7", POD, 8080, dropped(drop_reason::POLICY_UNKNOWN)),
        ("a version without entries", &empty_version, "10.2.7.7", POD, 8080, dropped(drop_reason::POLICY_UNKNOWN)),
        ("an unknown verdict", &bad_verdict, "10.2.7.7", POD, 8080, dropped(drop_reason::POLICY_UNKNOWN)),
        ("policy on a pod not steered: DENY", &policy_only, "10.1.7.7", POD, 8080, dropped(drop_reason::POLICY_DENY)),
        ("policy on a pod not steered: pass", &policy_only, "10.2.7.7", POD, 8080, Outcome::NotEnrolled),
    ];
    for (what, view, src, dst, port, want) in cases {
        let got = explain(*view, src.parse().unwrap(), dst.parse().unwrap(), *port);
        assert_eq!(got.outcome, *want, "{what}: {src} -> {dst}:{port}; steps: {:#?}", got.steps);
        assert!(!got.steps.is_empty(), "{what}: no step explains the outcome");
    }
}

#[test]
fn the_steps_name_what_decided() {
    let view = with_policy(pod(inbound_mode::STRICT), false, &[(0, "::/0", verdict::NO_MATCH), (0, "10.1.0.0/16", verdict::DENY)]);
    let denied = explain(&view, "10.1.0.5".parse().unwrap(), POD.parse().unwrap(), 8080);
    let text: Vec<&str> = denied.steps.iter().map(|s| s.finding.as_str()).collect();
    assert!(text[0].contains("10.1.0.0/16") && text[0].contains("deny") && text[0].contains("policy #0"), "{text:?}");
    assert!(denied.verdict().contains("policy_deny"), "{}", denied.verdict());
    let strict = explain(&view, "10.2.0.5".parse().unwrap(), POD.parse().unwrap(), 8080);
    assert_eq!(strict.steps.len(), 2, "{:#?}", strict.steps);
    assert!(strict.steps[1].finding.starts_with("STRICT"), "{:#?}", strict.steps);
    assert!(strict.verdict().contains("strict_plaintext"));
}
