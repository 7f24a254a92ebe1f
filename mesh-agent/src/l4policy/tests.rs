//! Table tests of the L4 policy compiler: every case is checked three ways: the
//! expected decision, the reference evaluator, and the compiled table as the kernel
//! looks it up.
use super::*;

fn pfx(s: &str) -> Prefix {
    Prefix::parse(s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn policy(name: &str, action: Action, rules: Vec<Rule>) -> L4Policy {
    L4Policy { name: name.into(), action, rules }
}

fn from_blocks(blocks: &[&str]) -> Source {
    Source { ip_blocks: blocks.iter().map(|b| pfx(b)).collect(), ..Default::default() }
}

fn not_blocks(blocks: &[&str]) -> Source {
    Source { not_ip_blocks: blocks.iter().map(|b| pfx(b)).collect(), ..Default::default() }
}

fn ports(p: &[u16]) -> Operation {
    Operation { ports: p.to_vec(), ..Default::default() }
}

fn not_ports(p: &[u16]) -> Operation {
    Operation { not_ports: p.to_vec(), ..Default::default() }
}

fn rule(from: Vec<Source>, to: Vec<Operation>) -> Rule {
    Rule { from, to }
}

use Decision::{Allow, Deny, NoAllowMatch};

/// Checks each (source, port, expected) probe against the reference and the table.
fn check(policies: &[L4Policy], probes: &[(&str, u16, Decision)]) {
    let compiled = compile(policies).unwrap();
    for &(src, port, want) in probes {
        let r = evaluate(policies, ip(src), port);
        assert_eq!(r, want, "reference: {src}:{port} with {policies:#?}");
        if policies.is_empty() {
            assert!(compiled.entries.is_empty());
            continue;
        }
        let k = lookup(&compiled, ip(src), port);
        assert_eq!(k, Some(want), "table: {src}:{port}; entries {:#?}", compiled.entries);
    }
}

#[test]
fn no_policy_allows_everything_and_needs_no_entries() {
    check(&[], &[("10.0.0.1", 80, Allow), ("fd00::1", 443, Allow)]);
    assert_eq!(compile(&[]).unwrap(), Compiled::default());
}

#[test]
fn allow_policy_with_no_rules_denies_all() {
    let p = [policy("ns/allow-nothing", Action::Allow, vec![])];
    check(&p, &[("10.0.0.1", 80, NoAllowMatch), ("fd00::1", 1, NoAllowMatch)]);
}

#[test]
fn deny_policy_with_no_rules_matches_nothing() {
    let p = [policy("ns/deny-nothing", Action::Deny, vec![])];
    check(&p, &[("10.0.0.1", 80, Allow), ("fd00::1", 22, Allow)]);
}

#[test]
fn one_empty_rule_matches_everything() {
    check(&[policy("a", Action::Allow, vec![Rule::default()])], &[("1.2.3.4", 9, Allow), ("::2", 9, Allow)]);
    check(&[policy("d", Action::Deny, vec![Rule::default()])], &[("1.2.3.4", 9, Deny(0)), ("::2", 9, Deny(0))]);
}

#[test]
fn empty_source_and_empty_operation_match_anything() {
    let p = [policy("a", Action::Allow, vec![rule(vec![Source::default()], vec![Operation::default()])])];
    check(&p, &[("1.2.3.4", 9, Allow), ("fd00::9", 65535, Allow)]);
}

#[test]
fn allow_by_ip_block_and_port() {
    let p = [policy("a", Action::Allow, vec![rule(vec![from_blocks(&["10.1.0.0/16"])], vec![ports(&[80, 443])])])];
    check(
        &p,
        &[
            ("10.1.2.3", 80, Allow),
            ("10.1.2.3", 443, Allow),
            ("10.1.2.3", 8080, NoAllowMatch),
            ("10.2.0.1", 80, NoAllowMatch),
            ("fd00::1", 80, NoAllowMatch),
        ],
    );
}

#[test]
fn deny_wins_over_allow_for_the_same_packet() {
    let p = [
        policy("allow-all", Action::Allow, vec![Rule::default()]),
        policy("deny-10", Action::Deny, vec![rule(vec![from_blocks(&["10.0.0.0/8"])], vec![])]),
    ];
    check(&p, &[("10.9.9.9", 80, Deny(1)), ("11.0.0.1", 80, Allow)]);
}

#[test]
fn deny_only_policies_leave_the_rest_allowed() {
    let p = [policy("d", Action::Deny, vec![rule(vec![], vec![ports(&[22])])])];
    check(&p, &[("10.0.0.1", 22, Deny(0)), ("10.0.0.1", 80, Allow), ("fd00::1", 22, Deny(0))]);
    let c = compile(&p).unwrap();
    assert!(!c.has_allow);
}

#[test]
fn within_a_rule_fields_and_within_a_list_or() {
    // from 10.1/16 AND port 80; OR (second rule) from 10.2/16 any port.
    let p = [policy(
        "a",
        Action::Allow,
        vec![
            rule(vec![from_blocks(&["10.1.0.0/16"])], vec![ports(&[80])]),
            rule(vec![from_blocks(&["10.2.0.0/16"])], vec![]),
        ],
    )];
    check(
        &p,
        &[
            ("10.1.0.1", 80, Allow),
            ("10.1.0.1", 81, NoAllowMatch),
            ("10.2.0.1", 81, Allow),
            ("10.3.0.1", 80, NoAllowMatch),
        ],
    );
    // One source with ip_blocks AND not_ip_blocks: 10/8 except 10.5/16.
    let src = Source {
        ip_blocks: vec![pfx("10.0.0.0/8")],
        not_ip_blocks: vec![pfx("10.5.0.0/16")],
        ..Default::default()
    };
    let p = [policy("a", Action::Allow, vec![rule(vec![src], vec![])])];
    check(&p, &[("10.4.0.1", 1, Allow), ("10.5.0.1", 1, NoAllowMatch), ("11.0.0.1", 1, NoAllowMatch)]);
}

#[test]
fn not_ip_blocks_and_not_ports() {
    let p = [policy(
        "d",
        Action::Deny,
        vec![rule(vec![not_blocks(&["10.0.0.0/8", "fd00::/16"])], vec![not_ports(&[80])])],
    )];
    check(
        &p,
        &[
            ("10.0.0.1", 22, Allow),
            ("192.168.0.1", 80, Allow),
            ("192.168.0.1", 22, Deny(0)),
            ("fd00::5", 22, Allow),
            ("fe80::5", 22, Deny(0)),
        ],
    );
}

#[test]
fn ports_and_not_ports_in_one_operation() {
    let op = Operation { ports: vec![80, 81], not_ports: vec![81] };
    let p = [policy("a", Action::Allow, vec![rule(vec![], vec![op])])];
    check(&p, &[("1.1.1.1", 80, Allow), ("1.1.1.1", 81, NoAllowMatch), ("1.1.1.1", 82, NoAllowMatch)]);
}

#[test]
fn overlapping_prefixes_longest_one_decides_and_ancestors_still_count() {
    let p = [
        policy("allow-10", Action::Allow, vec![rule(vec![from_blocks(&["10.0.0.0/8"])], vec![])]),
        policy("deny-10.1", Action::Deny, vec![rule(vec![from_blocks(&["10.1.0.0/16"])], vec![ports(&[22])])]),
        policy("allow-host", Action::Allow, vec![rule(vec![from_blocks(&["10.1.2.3/32"])], vec![ports(&[9000])])]),
    ];
    check(
        &p,
        &[
            ("10.1.2.3", 22, Deny(1)),
            ("10.1.2.3", 9000, Allow),
            ("10.1.2.3", 80, Allow),
            ("10.1.9.9", 22, Deny(1)),
            ("10.1.9.9", 23, Allow),
            ("10.9.9.9", 22, Allow),
            ("11.0.0.0", 22, NoAllowMatch),
        ],
    );
}

#[test]
fn ipv4_and_ipv6_are_separate_even_with_zero_prefixes() {
    let p = [policy("a", Action::Allow, vec![rule(vec![from_blocks(&["0.0.0.0/0"])], vec![])])];
    check(&p, &[("8.8.8.8", 53, Allow), ("2001:db8::1", 53, NoAllowMatch)]);
    let p = [policy("a", Action::Allow, vec![rule(vec![from_blocks(&["::/0"])], vec![])])];
    check(&p, &[("8.8.8.8", 53, Allow), ("2001:db8::1", 53, Allow)]);
    let p = [policy("d", Action::Deny, vec![rule(vec![from_blocks(&["2001:db8::/32"])], vec![ports(&[443])])])];
    check(&p, &[("2001:db8:1::1", 443, Deny(0)), ("2001:db9::1", 443, Allow), ("32.1.13.184", 443, Allow)]);
}

fn peers(ips: &[&str]) -> Option<Vec<IpAddr>> {
    Some(ips.iter().map(|s| ip(s)).collect())
}

fn not_peers(ips: &[&str]) -> Source {
    Source { not_peers: ips.iter().map(|s| ip(s)).collect(), ..Default::default() }
}

const H: u16 = HBONE_PORT;

/// Identity conditions: on application ports plaintext has no identity (`peers` never
/// match, `not_peers` always do); on 15008 they are judged by the holders' addresses.
#[test]
fn peers_match_by_address_on_hbone_only() {
    let known = Source { peers: peers(&["10.0.0.7", "fd00::7"]), ..Default::default() };
    let unknown = Source { peers: peers(&[]), ..Default::default() };
    let p = [policy("a", Action::Allow, vec![rule(vec![known], vec![ports(&[8080])]), rule(vec![unknown], vec![])])];
    check(
        &p,
        &[
            ("10.0.0.7", 8080, NoAllowMatch),
            ("fd00::7", 8080, NoAllowMatch),
            ("10.0.0.7", H, Allow),
            ("fd00::7", H, Allow),
            ("10.0.0.8", H, NoAllowMatch),
        ],
    );
    // ip_blocks AND peers within one source: on 15008 both must hold.
    let both = Source { ip_blocks: vec![pfx("10.0.0.0/24")], peers: peers(&["10.0.0.7", "10.9.0.7"]), ..Default::default() };
    let p = [policy("a", Action::Allow, vec![rule(vec![both], vec![])])];
    check(&p, &[("10.0.0.7", H, Allow), ("10.9.0.7", H, NoAllowMatch), ("10.0.0.8", H, NoAllowMatch), ("10.0.0.7", 1, NoAllowMatch)]);
    // A DENY by peer drops nothing on application ports, and its address on 15008.
    let p = [policy("d", Action::Deny, vec![rule(vec![Source { peers: peers(&["10.0.0.7"]), ..Default::default() }], vec![])])];
    check(&p, &[("10.0.0.7", 80, Allow), ("10.0.0.7", H, Deny(0)), ("10.0.0.8", H, Allow)]);
    assert!(compile(&p).unwrap().entries.iter().all(|e| e.port == H || e.verdict != verdict::DENY));
}

#[test]
fn not_peers_always_match_plaintext_and_spare_their_addresses_on_hbone() {
    // A DENY for every identity but the listed ones (how STRICT reads): all plaintext
    // is dropped, on 15008 only the addresses of no listed workload.
    let p = [policy("d", Action::Deny, vec![rule(vec![not_peers(&["10.0.0.7", "fd00::7"])], vec![])])];
    check(
        &p,
        &[
            ("10.0.0.7", 80, Deny(0)),
            ("10.0.0.8", 80, Deny(0)),
            ("fd00::7", 443, Deny(0)),
            ("10.0.0.7", H, Allow),
            ("fd00::7", H, Allow),
            ("10.0.0.8", H, Deny(0)),
        ],
    );
    // With not_ip_blocks in the same source: plaintext from the block is spared.
    let src = Source { not_ip_blocks: vec![pfx("192.168.0.0/16")], ..not_peers(&["10.0.0.7"]) };
    let p = [policy("d", Action::Deny, vec![rule(vec![src], vec![ports(&[8080])])])];
    check(
        &p,
        &[
            ("192.168.1.1", 8080, Allow),
            ("10.0.0.7", 8080, Deny(0)),
            ("10.0.0.7", 9090, Allow),
            ("10.0.0.7", H, Allow),
            ("10.0.0.8", H, Allow),
        ],
    );
}

#[test]
fn exact_port_falls_back_to_wildcard_only_for_unnamed_ports() {
    let p = [
        policy("allow-80", Action::Allow, vec![rule(vec![], vec![ports(&[80])])]),
        policy("deny-bad", Action::Deny, vec![rule(vec![from_blocks(&["10.6.6.6"])], vec![])]),
    ];
    let c = compile(&p).unwrap();
    // Port 80 has its own full table (root + the denied host); the rest uses port 0.
    assert!(c.entries.iter().any(|e| e.port == 80 && e.prefix == Prefix::ALL && e.verdict == verdict::ALLOW));
    assert!(c.entries.iter().any(|e| e.port == 0 && e.prefix == Prefix::ALL && e.verdict == verdict::NO_MATCH));
    check(&p, &[("10.6.6.6", 80, Deny(1)), ("10.6.6.6", 81, Deny(1)), ("10.6.6.7", 80, Allow), ("10.6.6.7", 81, NoAllowMatch)]);
}

#[test]
fn tables_are_pruned() {
    // Port 22 says the same as every other port: no port-22 entries; the /32 under
    // the /8 with the same verdict is left out.
    let p = [policy(
        "d",
        Action::Deny,
        vec![rule(vec![from_blocks(&["10.0.0.0/8", "10.1.1.1/32"])], vec![]), rule(vec![], vec![not_ports(&[22, 23])])],
    )];
    let c = compile(&p).unwrap();
    assert!(c.entries.iter().all(|e| e.prefix.len != 128), "{:#?}", c.entries);
    assert!(c.entries.iter().filter(|e| e.port == 22).count() <= 2);
    check(&p, &[("10.1.1.1", 22, Deny(0)), ("11.0.0.1", 22, Allow), ("11.0.0.1", 80, Deny(0))]);
}

#[test]
fn port_zero_and_bad_prefixes_are_refused() {
    let p = [policy("ns/p", Action::Allow, vec![rule(vec![], vec![ports(&[0])])])];
    assert_eq!(compile(&p), Err(CompileError::PortZero { policy: "ns/p".into() }));
    assert!(Prefix::parse("10.0.0.0/33").is_err());
    assert!(Prefix::parse("fd00::/129").is_err());
    assert!(Prefix::parse("nonsense").is_err());
    assert_eq!(pfx("10.1.2.3/8"), pfx("10.0.0.0/8"));
    assert_eq!(pfx("10.0.0.0/8").to_string(), "10.0.0.0/8");
    assert_eq!(pfx("fd00::/8").to_string(), "fd00::/8");
}

/// Random policy sets: the compiled table agrees with the reference everywhere we probe.
#[test]
fn compiled_table_agrees_with_reference_on_random_policies() {
    fastrand::seed(7);
    let blocks = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3", "192.168.0.0/16", "fd00::/16", "fd00:1::/32", "fd00:1::3", "0.0.0.0/0", "::/0"];
    let addrs = ["10.1.2.3", "10.1.2.4", "10.1.9.9", "10.9.9.9", "192.168.1.1", "172.16.0.1", "fd00:1::3", "fd00:1::4", "fd00:2::1", "2001:db8::1"];
    let port_pool = [22u16, 80, 443, 8080];
    let pick = |n: usize| -> Vec<Prefix> { (0..n).map(|_| pfx(blocks[fastrand::usize(..blocks.len())])).collect() };
    for _ in 0..300 {
        let mut policies = Vec::new();
        for i in 0..fastrand::usize(1..4) {
            let mut rules = Vec::new();
            for _ in 0..fastrand::usize(0..3) {
                let from = (0..fastrand::usize(0..3))
                    .map(|_| Source {
                        ip_blocks: pick(fastrand::usize(0..3)),
                        not_ip_blocks: pick(fastrand::usize(0..2)),
                        peers: fastrand::bool().then(|| (0..fastrand::usize(0..2)).map(|_| ip(addrs[fastrand::usize(..addrs.len())])).collect()),
                        not_peers: (0..fastrand::usize(0..2)).map(|_| ip(addrs[fastrand::usize(..addrs.len())])).collect(),
                        needs_identity: fastrand::u8(0..4) == 0,
                    })
                    .collect();
                let to = (0..fastrand::usize(0..2))
                    .map(|_| Operation {
                        ports: (0..fastrand::usize(0..3)).map(|_| port_pool[fastrand::usize(..4)]).collect(),
                        not_ports: (0..fastrand::usize(0..2)).map(|_| port_pool[fastrand::usize(..4)]).collect(),
                    })
                    .collect();
                rules.push(Rule { from, to });
            }
            let action = if fastrand::bool() { Action::Allow } else { Action::Deny };
            policies.push(policy(&format!("p{i}"), action, rules));
        }
        let c = compile(&policies).unwrap();
        for a in addrs {
            for port in [22u16, 80, 443, 8080, 9999, HBONE_PORT] {
                assert_eq!(lookup(&c, ip(a), port), Some(evaluate(&policies, ip(a), port)), "{a}:{port} {policies:#?}");
            }
        }
    }
}

/// HBONE carries the real port inside CONNECT: the kernel lets 15008 through from
/// any source some rule allows on some port, and drops it only where every port drops.
#[test]
fn hbone_port_passes_whatever_any_port_would_allow() {
    // ALLOW from 10.1/16 to 8080 only: 10.1/16 may reach 15008 (the agent checks
    // 8080), everyone else is dropped on 15008 too.
    let p = [policy("allow-8080", Action::Allow, vec![rule(vec![from_blocks(&["10.1.0.0/16"])], vec![ports(&[8080])])])];
    check(&p, &[("10.1.0.1", H, Allow), ("10.1.0.1", 8080, Allow), ("10.1.0.1", 80, NoAllowMatch), ("10.2.0.1", H, NoAllowMatch)]);
    // DENY 10.6.6.6 on port 22 only: it may still use 15008 (for other ports).
    let p = [policy("deny-22", Action::Deny, vec![rule(vec![from_blocks(&["10.6.6.6"])], vec![ports(&[22])])])];
    check(&p, &[("10.6.6.6", H, Allow), ("10.6.6.6", 22, Deny(0)), ("10.6.6.6", 80, Allow)]);
    // DENY 10.6.6.6 on every port: dropped on 15008 as well.
    let p = [policy("deny-all-ports", Action::Deny, vec![rule(vec![from_blocks(&["10.6.6.6"])], vec![])])];
    check(&p, &[("10.6.6.6", H, Deny(0)), ("10.6.6.7", H, Allow)]);
    // DENY all ports but 443 (notPorts), with an ALLOW for everyone: 15008 passes.
    let p = [
        policy("allow-all", Action::Allow, vec![Rule::default()]),
        policy("deny-not-443", Action::Deny, vec![rule(vec![from_blocks(&["10.6.0.0/16"])], vec![not_ports(&[443])])]),
    ];
    check(&p, &[("10.6.1.1", H, Allow), ("10.6.1.1", 443, Allow), ("10.6.1.1", 80, Deny(1)), ("10.7.1.1", H, Allow)]);
    // ALLOW a peer (by address) on 8080.
    let principal = Source { peers: peers(&["10.0.0.5"]), ..Default::default() };
    let p = [policy("allow-sa", Action::Allow, vec![rule(vec![principal], vec![ports(&[8080])])])];
    check(&p, &[("10.0.0.5", H, Allow), ("10.0.0.6", H, NoAllowMatch), ("10.0.0.5", 9090, NoAllowMatch)]);
    // An ALLOW with no rules drops 15008 from everyone; a rule naming 15008 itself
    // changes nothing (it is no application port).
    check(&[policy("allow-nothing", Action::Allow, vec![])], &[("10.0.0.1", H, NoAllowMatch)]);
    let p = [policy("deny-15008", Action::Deny, vec![rule(vec![], vec![ports(&[H])])])];
    assert_eq!(lookup(&compile(&p).unwrap(), ip("10.0.0.1"), H), Some(Allow));
}
