//! Which policies are PeerAuthentication's STRICT form, and on which ports: the
//! kernel's STRICT ports must be exactly where the evaluator denies plaintext.
use std::collections::BTreeSet;
use std::sync::Arc;

use super::*;
use crate::authz::{Group, Scope};
use crate::l4policy::Prefix;

fn set(p: &[u16]) -> BTreeSet<u16> {
    p.iter().copied().collect()
}

fn no_peer(ports: &[u16], not_ports: &[u16]) -> Match {
    Match {
        not_principals: vec![StrMatch::Presence],
        destination_ports: ports.to_vec(),
        not_destination_ports: not_ports.to_vec(),
        ..Default::default()
    }
}

fn deny(groups: Vec<Vec<Vec<Match>>>) -> Policy {
    Policy {
        name: "p".into(),
        namespace: "ns".into(),
        scope: Scope::Namespace,
        action: Action::Deny,
        groups: groups.into_iter().map(|clauses| Group { clauses }).collect(),
        dry_run: false,
        unusable: None,
    }
}

#[test]
fn strict_form_and_its_ports() {
    let mut allow = deny(vec![vec![vec![no_peer(&[], &[])]]]);
    allow.action = Action::Allow;
    let mut dry = deny(vec![vec![vec![no_peer(&[], &[])]]]);
    dry.dry_run = true;
    let with_ip = Match { source_ips: vec![Prefix::parse("10.0.0.0/8").unwrap()], ..no_peer(&[], &[]) };
    let exact_principal = Match { not_principals: vec![StrMatch::Exact("td/ns/a/sa/b".into())], ..Default::default() };
    use StrictPorts::{AllBut, Only};
    type Case = (&'static str, Policy, Option<StrictPorts>);
    let cases: Vec<Case> = vec![
        ("mesh or namespace STRICT", deny(vec![vec![vec![no_peer(&[], &[])]]]), Some(AllBut(set(&[])))),
        ("STRICT with open ports", deny(vec![vec![vec![no_peer(&[], &[8080, 9090])]]]), Some(AllBut(set(&[8080, 9090])))),
        ("STRICT ports only", deny(vec![vec![vec![no_peer(&[9090], &[])]]]), Some(Only(set(&[9090])))),
        ("ports minus not-ports", deny(vec![vec![vec![no_peer(&[1, 2], &[2])]]]), Some(Only(set(&[1])))),
        (
            "two rules join",
            deny(vec![vec![vec![no_peer(&[], &[8080, 9090])]], vec![vec![no_peer(&[9090], &[])]]]),
            Some(AllBut(set(&[8080]))),
        ),
        ("an ALLOW is not STRICT", allow, None),
        ("dry run never decides", dry, None),
        ("no rules: denies nothing", deny(vec![]), None),
        ("rules: [{}] denies everything, not only plaintext", deny(vec![vec![]]), None),
        ("another field narrows it", deny(vec![vec![vec![with_ip]]]), None),
        ("a named principal is not presence", deny(vec![vec![vec![exact_principal]]]), None),
        ("two clauses (AND)", deny(vec![vec![vec![no_peer(&[], &[])], vec![no_peer(&[80], &[])]]]), None),
        ("two matches (OR)", deny(vec![vec![vec![no_peer(&[], &[]), no_peer(&[80], &[])]]]), None),
        (
            "one foreign rule spoils the policy",
            deny(vec![vec![vec![no_peer(&[], &[])]], vec![vec![Match { destination_ports: vec![22], ..Default::default() }]]]),
            None,
        ),
    ];
    for (what, policy, want) in cases {
        let got = strict_ports(&policy);
        assert_eq!(got, want, "{what}");
        // Where the kernel drops plaintext, the evaluator denies it too.
        if let Some(strict) = got {
            let policies = vec![Arc::new(policy)];
            for port in [1, 2, 22, 80, 8080, 9090, 15006] {
                let a = Attrs { src_ip: "10.1.1.1".parse().unwrap(), identity: None, dst_ip: "10.0.0.1".parse().unwrap(), dst_port: port };
                assert_eq!(strict.contains(port), !decide(&policies, &a, None).is_allowed(), "{what}: port {port}");
            }
        }
    }
}

#[test]
fn the_stricter_of_enrollment_and_policy() {
    let state = State::default();
    let mut p = deny(vec![vec![vec![no_peer(&[], &[8080])]]]);
    p.scope = Scope::Global;
    state.upsert_policy(p);
    let e = Enforcer::default();
    let ip = "10.0.0.1".parse().unwrap();
    let cni = InboundConfig::default();
    let got = e.kernel_inbound(&state, "ns", ip, &cni);
    assert_eq!(got.mode, crate::capture::MtlsMode::Strict);
    assert_eq!(got.port_modes.get(&8080), Some(&crate::capture::MtlsMode::Permissive));
    // Not synced yet: the enrollment's configuration as it is.
    let waiting = Enforcer::waiting_for_sync();
    assert_eq!(waiting.kernel_inbound(&state, "ns", ip, &cni), cni);
}
