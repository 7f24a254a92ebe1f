//! The real `policy_ingress` program, loaded from the agent's embedded object, fed
//! crafted frames through BPF_PROG_TEST_RUN: every precedence case, IPv4 and IPv6,
//! TCP, UDP, ICMP and other protocols, VLAN tags, fragments, extension headers and
//! headers cut short; drop counters per pod and reason. Then an atomicity test
//! (policy swaps while packets are judged), a full-map test, and one real TCP
//! connection test across two network namespaces.
//!
//! Needs root (eBPF, bpffs, namespaces). Without root it fails when `CI=true`, and
//! otherwise says it did nothing.
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use mesh_agent::kernel::policy::{PolicyError, VERDICT_DROP, VERDICT_PASS};
use mesh_agent::kernel::{dump, Kernel};
use mesh_agent::l4policy::{Action, L4Policy, Operation, Prefix, Rule, Source};
use mesh_tests::require_root as need_root;

/// A loaded kernel with its own bpffs folder, removed when dropped.
struct Loaded {
    kernel: Option<Kernel>,
    bpffs: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn load() -> Loaded {
    let bpffs = PathBuf::from(format!(
        "/sys/fs/bpf/mesh-policy-test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let kernel = Kernel::load(&bpffs).unwrap_or_else(|e| panic!("{}", mesh_agent::error_chain(&e)));
    Loaded { kernel: Some(kernel), bpffs }
}

impl std::ops::Deref for Loaded {
    type Target = Kernel;
    fn deref(&self) -> &Kernel {
        self.kernel.as_ref().unwrap()
    }
}

/// Removes the folder and every pinned link and map in it: the tables hold up to a
/// million entries, which would otherwise stay in kernel memory after the test.
impl Drop for Loaded {
    fn drop(&mut self) {
        if let Some(k) = self.kernel.take() {
            k.shutdown();
        }
        if !self.bpffs.as_os_str().is_empty() {
            let _ = Kernel::uninstall(&self.bpffs);
        }
    }
}

impl Loaded {
    /// Stops this agent as a restart does: its pins stay for the next one, whose
    /// `Loaded` then owns (and removes) the folder.
    fn stop_keeping_pins(mut self) -> PathBuf {
        if let Some(k) = self.kernel.take() {
            k.shutdown();
        }
        std::mem::take(&mut self.bpffs)
    }

    /// Summed drop count for `pod` and `reason` (a `drop_reason::name`).
    fn drops(&self, pod: &str, reason: &str) -> u64 {
        let pod: IpAddr = pod.parse().unwrap();
        dump::dump(&self.bpffs, "DROPS")
            .unwrap()
            .iter()
            .filter(|r| r["pod"] == pod.to_string() && r["reason"] == reason)
            .map(|r| r["count"].as_u64().unwrap())
            .sum()
    }

    /// `None` when BPF_PROG_TEST_RUN refuses the frame before the program sees it
    /// (EINVAL: the kernel checks some minimum lengths for skb test runs itself).
    fn try_run(&self, frame: &[u8]) -> Option<u32> {
        match self.test_run_policy(frame, 1) {
            Ok((verdict, _)) => Some(verdict),
            Err(PolicyError::TestRun(e))
                if matches!(&*e, aya::programs::ProgramError::SyscallError(s)
                    if s.io_error.raw_os_error() == Some(libc::EINVAL)) =>
            {
                None
            }
            Err(e) => panic!("{}-byte frame: {}", frame.len(), mesh_agent::error_chain(&e)),
        }
    }

    fn run(&self, frame: &[u8]) -> u32 {
        match self.test_run_policy(frame, 1) {
            Ok((verdict, _)) => verdict,
            Err(e) => panic!("{}-byte frame {frame:02x?}: {}", frame.len(), mesh_agent::error_chain(&e)),
        }
    }
}

// ---- packets ----------------------------------------------------------------

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const GRE: u8 = 47;

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;

/// A TCP connection request (SYN) to `dport`.
fn tcp(dport: u16) -> Vec<u8> {
    tcp_segment(40000, dport, SYN)
}

fn tcp_segment(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h
}

fn udp(dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&40000u16.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&8u16.to_be_bytes());
    h
}

/// IPv4 header (`options` words of options) + payload. `frag` is the flags/offset field.
fn ipv4_opts(src: &str, dst: &str, proto: u8, frag: u16, options: usize, payload: &[u8]) -> Vec<u8> {
    let src: std::net::Ipv4Addr = src.parse().unwrap();
    let dst: std::net::Ipv4Addr = dst.parse().unwrap();
    let hl = 20 + options * 4;
    let mut h = vec![0u8; hl];
    h[0] = 0x40 | (hl / 4) as u8;
    h[2..4].copy_from_slice(&((hl + payload.len()) as u16).to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

fn ipv4(src: &str, dst: &str, proto: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_opts(src, dst, proto, 0, 0, payload)
}

fn ipv6(src: &str, dst: &str, next: u8, payload: &[u8]) -> Vec<u8> {
    let src: std::net::Ipv6Addr = src.parse().unwrap();
    let dst: std::net::Ipv6Addr = dst.parse().unwrap();
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// An IPv6 extension header (8 bytes) saying `next` comes after it.
fn ext(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// An IPv6 fragment header: `offset` in 8-byte units, more-fragments flag.
fn frag6(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let field = (offset << 3) | more as u16;
    let mut h = vec![next, 0];
    h.extend_from_slice(&field.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 7]);
    h
}

fn frame(ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = eth(ethertype);
    f.extend_from_slice(l3);
    f
}

fn v4(src: &str, dst: &str, proto: u8, l4: &[u8]) -> Vec<u8> {
    frame(0x0800, &ipv4(src, dst, proto, l4))
}

fn v6(src: &str, dst: &str, next: u8, rest: &[u8]) -> Vec<u8> {
    frame(0x86dd, &ipv6(src, dst, next, rest))
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---- policies ---------------------------------------------------------------

fn pfx(s: &str) -> Prefix {
    Prefix::parse(s).unwrap()
}

fn allow(from: &[&str], ports: &[u16]) -> L4Policy {
    policy(Action::Allow, from, ports)
}

fn deny(from: &[&str], ports: &[u16]) -> L4Policy {
    policy(Action::Deny, from, ports)
}

fn policy(action: Action, from: &[&str], ports: &[u16]) -> L4Policy {
    let from = if from.is_empty() {
        vec![]
    } else {
        vec![Source { ip_blocks: from.iter().map(|s| pfx(s)).collect(), ..Default::default() }]
    };
    let to = if ports.is_empty() { vec![] } else { vec![Operation { ports: ports.to_vec(), ..Default::default() }] };
    L4Policy { name: format!("{action:?}"), action, rules: vec![Rule { from, to }] }
}

const POD4: &str = "10.200.0.10";
const POD6: &str = "fd00:200::10";
const PASS: u32 = VERDICT_PASS;
const DROP: u32 = VERDICT_DROP;

// ---- BPF_PROG_TEST_RUN ------------------------------------------------------

#[test]
fn no_policy_passes_everything() {
    if !need_root("no_policy_passes_everything") {
        return;
    }
    let k = load();
    assert_eq!(k.run(&v4("10.1.0.1", POD4, TCP, &tcp(80))), PASS);
    assert_eq!(k.run(&v6("fd00::1", POD6, TCP, &tcp(80))), PASS);
    assert_eq!(k.run(&v4("10.1.0.1", POD4, GRE, &[0; 8])), PASS);
    // Truncated L4 for a pod without policy: not ours to judge.
    assert_eq!(k.run(&v4("10.1.0.1", POD4, TCP, &tcp(80)[..10])), PASS);
    // An ARP frame.
    assert_eq!(k.run(&frame(0x0806, &[0; 28])), PASS);
}

#[test]
fn precedence_ipv4() {
    if !need_root("precedence_ipv4") {
        return;
    }
    let k = load();
    let pod: IpAddr = POD4.parse().unwrap();
    // ALLOW 10.1/16 on 80 and 443; DENY 10.1.66.0/24 on any port; ALLOW anyone on 8080.
    let policies = [allow(&["10.1.0.0/16"], &[80, 443]), deny(&["10.1.66.0/24"], &[]), allow(&[], &[8080])];
    k.set_policy(pod, &policies).unwrap();
    let cases: &[(&str, u16, u32)] = &[
        ("10.1.0.1", 80, PASS),   // exact port, allowed prefix
        ("10.1.0.1", 443, PASS),  // second port of the same rule
        ("10.1.0.1", 22, DROP),   // wildcard port: no ALLOW matches
        ("10.2.0.1", 80, DROP),   // other source
        ("10.1.66.5", 80, DROP),  // DENY before ALLOW (longer prefix)
        ("10.1.66.5", 8080, DROP), // DENY before the allow-anyone rule
        ("172.16.0.1", 8080, PASS), // allow-anyone port
    ];
    for &(src, port, want) in cases {
        assert_eq!(k.run(&v4(src, POD4, TCP, &tcp(port))), want, "tcp {src} -> {POD4}:{port}");
        assert_eq!(k.run(&v4(src, POD4, UDP, &udp(port))), want, "udp {src} -> {POD4}:{port}");
    }
    assert_eq!(k.drops(POD4, "policy_deny"), 4);
    assert_eq!(k.drops(POD4, "policy_no_allow_match"), 4);
    // meshctl's view: the deny entry for 10.1.66.0/24 on "any other port", by policy 1.
    let rules = dump::dump(&k.bpffs, "POLICY_RULES").unwrap();
    assert!(
        rules.iter().any(|r| r["pod"] == POD4 && r["source"] == "10.1.66.0/24" && r["port"] == "*"
            && r["verdict"] == "deny" && r["policy"] == 1),
        "{rules:#?}"
    );
    let meta = dump::dump(&k.bpffs, "POLICY_META").unwrap();
    assert_eq!(meta.len(), 1, "{meta:#?}");
    assert_eq!(meta[0]["active"], true);
    // Another pod on the same node is not touched.
    assert_eq!(k.run(&v4("10.2.0.1", "10.200.0.11", TCP, &tcp(80))), PASS);
    // ICMP passes; another protocol is judged by source with "any other port".
    assert_eq!(k.run(&v4("10.2.0.1", POD4, ICMP, &[8, 0, 0, 0, 0, 0, 0, 0])), PASS);
    assert_eq!(k.run(&v4("10.1.66.5", POD4, GRE, &[0; 8])), DROP);
    assert_eq!(k.run(&v4("10.1.0.1", POD4, GRE, &[0; 8])), DROP);
    // DENY only: the rest passes (no ALLOW selects the pod).
    k.set_policy(pod, &[deny(&["10.9.0.0/16"], &[22])]).unwrap();
    assert_eq!(k.run(&v4("10.9.1.1", POD4, TCP, &tcp(22))), DROP);
    assert_eq!(k.run(&v4("10.9.1.1", POD4, TCP, &tcp(23))), PASS);
    assert_eq!(k.run(&v4("10.8.1.1", POD4, TCP, &tcp(22))), PASS);
    assert_eq!(k.run(&v4("10.8.1.1", POD4, GRE, &[0; 8])), PASS);
    // An ALLOW policy with no rules denies everything.
    k.set_policy(pod, &[L4Policy { name: "nothing".into(), action: Action::Allow, rules: vec![] }]).unwrap();
    assert_eq!(k.run(&v4("10.1.0.1", POD4, TCP, &tcp(80))), DROP);
    // Removing the policy: everything passes again.
    assert_eq!(k.set_policy(pod, &[]).unwrap(), None);
    assert_eq!(k.run(&v4("10.1.66.5", POD4, TCP, &tcp(80))), PASS);
}

#[test]
fn precedence_ipv6_and_not_forms() {
    if !need_root("precedence_ipv6_and_not_forms") {
        return;
    }
    let k = load();
    let pod: IpAddr = POD6.parse().unwrap();
    let not_from = Source { not_ip_blocks: vec![pfx("fd00:1::/32")], ..Default::default() };
    let deny_outsiders = L4Policy {
        name: "deny-outsiders".into(),
        action: Action::Deny,
        rules: vec![Rule { from: vec![not_from], to: vec![Operation { not_ports: vec![53], ..Default::default() }] }],
    };
    let policies = [deny_outsiders, allow(&["fd00:1:2::/48"], &[8443])];
    k.set_policy(pod, &policies).unwrap();
    let cases: &[(&str, u16, u32)] = &[
        ("fd00:1:2::5", 8443, PASS),
        ("fd00:1:2::5", 8444, DROP), // no allow
        ("fd00:1:3::5", 8443, DROP), // inside fd00:1::/32 but not the allowed /48
        ("fd00:9::5", 8443, DROP),   // outsider: deny
        ("fd00:9::5", 53, DROP),     // outsider on 53: not denied, but no allow
    ];
    for &(src, port, want) in cases {
        assert_eq!(k.run(&v6(src, POD6, TCP, &tcp(port))), want, "tcp [{src}] -> {port}");
    }
    assert_eq!(k.drops(POD6, "policy_deny"), 1);
    assert_eq!(k.drops(POD6, "policy_no_allow_match"), 3);
    // An IPv4 source is never inside an IPv6 block.
    assert_eq!(k.run(&v6("::ffff:10.0.0.1", POD6, TCP, &tcp(8443))), DROP);
    // ICMPv6 (neighbour discovery) passes.
    assert_eq!(k.run(&v6("fd00:9::5", POD6, ICMPV6, &[135, 0, 0, 0, 0, 0, 0, 0])), PASS);
    // Extension headers: hop-by-hop, destination options, then TCP.
    let hop_dst = cat(&[&ext(60), &ext(TCP), &tcp(8443)]);
    assert_eq!(k.run(&v6("fd00:1:2::5", POD6, 0, &hop_dst)), PASS);
    assert_eq!(k.run(&v6("fd00:1:3::5", POD6, 0, &hop_dst)), DROP);
    // Five extension headers: more than we walk, dropped as malformed.
    let five = cat(&[&ext(60), &ext(60), &ext(60), &ext(60), &ext(TCP), &tcp(8443)]);
    assert_eq!(k.run(&v6("fd00:1:2::5", POD6, 0, &five)), DROP);
    assert_eq!(k.drops(POD6, "malformed"), 1);
    // Fragments: the first is judged by its ports, later ones pass.
    let first = cat(&[&frag6(TCP, 0, true), &tcp(8443)]);
    assert_eq!(k.run(&v6("fd00:1:2::5", POD6, 44, &first)), PASS);
    let first_bad = cat(&[&frag6(TCP, 0, true), &tcp(22)]);
    assert_eq!(k.run(&v6("fd00:1:2::5", POD6, 44, &first_bad)), DROP);
    let later = cat(&[&frag6(TCP, 185, false), &[0u8; 16]]);
    assert_eq!(k.run(&v6("fd00:9::5", POD6, 44, &later)), PASS);
}

#[test]
fn exact_port_before_wildcard() {
    if !need_root("exact_port_before_wildcard") {
        return;
    }
    let k = load();
    let pod: IpAddr = POD4.parse().unwrap();
    // Anyone on any port, except 10.5/16 which is denied on 22 only, and 10.5.5.5
    // which is denied everywhere.
    k.set_policy(pod, &[allow(&[], &[]), deny(&["10.5.0.0/16"], &[22]), deny(&["10.5.5.5"], &[])]).unwrap();
    assert_eq!(k.run(&v4("10.5.1.1", POD4, TCP, &tcp(22))), DROP);
    assert_eq!(k.run(&v4("10.5.1.1", POD4, TCP, &tcp(23))), PASS);
    assert_eq!(k.run(&v4("10.5.5.5", POD4, TCP, &tcp(23))), DROP);
    assert_eq!(k.run(&v4("10.5.5.5", POD4, TCP, &tcp(22))), DROP);
    assert_eq!(k.run(&v4("10.6.1.1", POD4, TCP, &tcp(22))), PASS);
    assert_eq!(k.drops(POD4, "policy_deny"), 3);
}

/// Identity conditions in the real program: judged as absent on application ports
/// (plaintext), by the holders' addresses on 15008 (HBONE).
#[test]
fn identity_conditions_by_view() {
    if !need_root("identity_conditions_by_view") {
        return;
    }
    let k = load();
    let pod: IpAddr = POD4.parse().unwrap();
    let (sleep, other, outsider) = ("10.1.0.5", "10.1.0.6", "172.16.0.1");
    let ips = |v: &[&str]| -> Vec<IpAddr> { v.iter().map(|s| s.parse().unwrap()).collect() };
    // ALLOW principals [sleep] to 8080: no plaintext passes, not even from sleep's
    // address; 15008 passes from sleep's address only.
    let allow_sleep = L4Policy {
        name: "allow-sleep".into(),
        action: Action::Allow,
        rules: vec![Rule {
            from: vec![Source { peers: Some(ips(&[sleep])), ..Default::default() }],
            to: vec![Operation { ports: vec![8080], ..Default::default() }],
        }],
    };
    k.set_policy(pod, &[allow_sleep]).unwrap();
    for (src, port, want) in [(sleep, 8080, DROP), (outsider, 8080, DROP), (sleep, 15008, PASS), (other, 15008, DROP)] {
        assert_eq!(k.run(&v4(src, POD4, TCP, &tcp(port))), want, "allow-sleep: {src} -> {port}");
    }
    // DENY notPrincipals ["*"] (STRICT), with sleep and other the mesh's workloads:
    // all plaintext is dropped, 15008 from the mesh passes, from elsewhere not.
    let strict = L4Policy {
        name: "strict".into(),
        action: Action::Deny,
        rules: vec![Rule { from: vec![Source { not_peers: ips(&[sleep, other]), ..Default::default() }], to: vec![] }],
    };
    k.set_policy(pod, &[strict]).unwrap();
    let before = k.drops(POD4, "policy_deny");
    for (src, port, want) in [(sleep, 8080, DROP), (outsider, 22, DROP), (sleep, 15008, PASS), (other, 15008, PASS), (outsider, 15008, DROP)] {
        assert_eq!(k.run(&v4(src, POD4, TCP, &tcp(port))), want, "strict: {src} -> {port}");
    }
    assert_eq!(k.drops(POD4, "policy_deny"), before + 3);
}

/// Only connection requests (SYN without ACK) are judged: the replies to the pod's own
/// connections (here from a server's 15008 or 443 to an ephemeral port) pass a policy
/// that drops every request from their source.
#[test]
fn only_connection_requests_are_judged() {
    if !need_root("only_connection_requests_are_judged") {
        return;
    }
    let k = load();
    let pod: IpAddr = POD4.parse().unwrap();
    k.set_policy(pod, &[deny(&["10.66.0.0/16"], &[]), allow(&["10.1.0.0/16"], &[8080])]).unwrap();
    for src in ["10.66.0.1", "172.16.0.1"] {
        assert_eq!(k.run(&v4(src, POD4, TCP, &tcp(41000))), DROP, "a request from {src}");
        for (sport, flags) in [(15008, SYN | ACK), (443, ACK), (443, FIN | ACK), (15008, 0x18)] {
            let reply = v4(src, POD4, TCP, &tcp_segment(sport, 41000, flags));
            assert_eq!(k.run(&reply), PASS, "{src}:{sport} flags {flags:#04x}");
        }
    }
    k.set_policy(POD6.parse().unwrap(), &[deny(&["fd00:9::/32"], &[])]).unwrap();
    assert_eq!(k.run(&v6("fd00:9::1", POD6, TCP, &tcp(41000))), DROP);
    assert_eq!(k.run(&v6("fd00:9::1", POD6, TCP, &tcp_segment(15008, 41000, SYN | ACK))), PASS);
    assert_eq!((k.drops(POD4, "policy_deny"), k.drops(POD4, "policy_no_allow_match")), (1, 1));
    // UDP has no requests to tell apart: every datagram is judged.
    assert_eq!(k.run(&v4("10.66.0.1", POD4, UDP, &udp(41000))), DROP);
}

#[test]
fn odd_packets_get_the_documented_verdict() {
    if !need_root("odd_packets_get_the_documented_verdict") {
        return;
    }
    let k = load();
    let pod: IpAddr = POD4.parse().unwrap();
    k.set_policy(pod, &[allow(&["10.1.0.0/16"], &[80]), deny(&["10.66.0.0/16"], &[])]).unwrap();
    let good = v4("10.1.0.1", POD4, TCP, &tcp(80));
    let denied = v4("10.66.0.1", POD4, TCP, &tcp(80));
    assert_eq!(k.run(&good), PASS);
    // Cut at every length after the Ethernet header. The kernel's test harness
    // refuses some short frames itself (14 bytes or less; an IPv4 frame without a
    // whole IPv4 header): those never reach the program and are only counted here.
    let (mut unknown, mut in_pod, mut refused) = (0, 0, 0);
    for cut in 14..good.len() {
        match k.try_run(&good[..cut]) {
            None => refused += 1,
            Some(v) => {
                assert_eq!(v, DROP, "allowed packet cut to {cut} bytes");
                if cut < 14 + 20 {
                    unknown += 1;
                } else {
                    in_pod += 1;
                }
            }
        }
    }
    assert_eq!(in_pod, 20, "every cut inside the TCP header reaches the program");
    eprintln!("cuts: {in_pod} judged in the pod, {unknown} with no destination, {refused} refused by the kernel");
    assert_eq!(k.drops("::", "malformed"), unknown);
    assert_eq!(k.drops(POD4, "malformed"), in_pod);
    // UDP cut short; IPv6 cut short.
    assert_eq!(k.run(&v4("10.1.0.1", POD4, UDP, &udp(80)[..6])), DROP);
    let v6frame = v6("fd00::1", POD6, TCP, &tcp(80));
    for cut in 14..14 + 40 {
        assert!(matches!(k.try_run(&v6frame[..cut]), None | Some(DROP)), "IPv6 cut to {cut}");
    }
    // IPv4 header length below 5 words; options present and skipped correctly.
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    assert_eq!(k.run(&bad_ihl), DROP);
    let with_opts = frame(0x0800, &ipv4_opts("10.1.0.1", POD4, TCP, 0, 2, &tcp(80)));
    assert_eq!(k.run(&with_opts), PASS);
    let with_opts_bad = frame(0x0800, &ipv4_opts("10.1.0.1", POD4, TCP, 0, 2, &tcp(81)));
    assert_eq!(k.run(&with_opts_bad), DROP);
    // IPv4 fragments: the first (MF, offset 0) is judged; later ones pass, even from
    // a denied source.
    let first = frame(0x0800, &ipv4_opts("10.66.0.1", POD4, TCP, 0x2000, 0, &tcp(80)));
    assert_eq!(k.run(&first), DROP);
    let later = frame(0x0800, &ipv4_opts("10.66.0.1", POD4, TCP, 0x2000 | 185, 0, &[0; 16]));
    assert_eq!(k.run(&later), PASS);
    // A first fragment too short to hold the TCP header: malformed.
    let tiny = frame(0x0800, &ipv4_opts("10.1.0.1", POD4, TCP, 0x2000, 0, &tcp(80)[..8]));
    assert_eq!(k.run(&tiny), DROP);
    // VLAN: 802.1Q, and 802.1ad + 802.1Q (QinQ): the inner packet is judged.
    for tags in [vec![0x8100u16], vec![0x88a8, 0x8100]] {
        for (inner, want) in [(&good, PASS), (&denied, DROP)] {
            let mut f = inner[..12].to_vec();
            for t in &tags {
                f.extend_from_slice(&t.to_be_bytes());
                f.extend_from_slice(&[0x00, 0x07]); // VLAN id 7
            }
            f.extend_from_slice(&inner[12..]);
            assert_eq!(k.run(&f), want, "tags {tags:x?}");
        }
    }
    // A VLAN tag cut short.
    let mut cut_tag = good[..12].to_vec();
    cut_tag.extend_from_slice(&[0x81, 0x00, 0x00]);
    assert!(matches!(k.try_run(&cut_tag), None | Some(DROP)));
    // A tagged IPv4 header cut short reaches the program (the harness checks only
    // untagged IPv4): dropped as malformed, counted for the unknown pod `::`.
    let before = k.drops("::", "malformed");
    let mut tagged = good[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    tagged.extend_from_slice(&good[12..14 + 10]);
    assert_eq!(k.run(&tagged), DROP);
    assert_eq!(k.drops("::", "malformed"), before + 1);
    // Garbage after a valid header does not matter; an all-zero frame is not IP.
    assert_eq!(k.run(&[good.clone(), vec![0xff; 100]].concat()), PASS);
    assert_eq!(k.run(&[0u8; 64]), PASS);
}

#[test]
fn inconsistent_state_fails_closed() {
    if !need_root("inconsistent_state_fails_closed") {
        return;
    }
    let k = load();
    let pod: IpAddr = POD4.parse().unwrap();
    let version = k.set_policy(pod, &[allow(&[], &[])]).unwrap().unwrap();
    let pkt = v4("10.1.0.1", POD4, TCP, &tcp(80));
    assert_eq!(k.run(&pkt), PASS);
    // Take the version's meta entry away behind the agent's back.
    let data = aya::maps::MapData::from_pin(k.bpffs.join("POLICY_META")).unwrap();
    let mut meta: aya::maps::HashMap<_, u32, mesh_common::PolicyMeta> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap();
    meta.remove(&version).unwrap();
    assert_eq!(k.run(&pkt), DROP);
    assert_eq!(k.drops(POD4, "policy_unknown"), 1);
}

/// Policy A allows hosts 10.1.x.y, policy B hosts 10.2.x.y; both allow 10.9/16 on 80
/// and both deny 10.66/16. While another thread swaps A and B as fast as it can,
/// every packet gets A's or B's verdict; the packets both agree on never change.
#[test]
fn policy_swaps_are_atomic() {
    if !need_root("policy_swaps_are_atomic") {
        return;
    }
    let k = load();
    let pod: IpAddr = POD4.parse().unwrap();
    let hosts = |net: u8| -> Vec<String> { (0..3000u32).map(|i| format!("10.{net}.{}.{}", i / 250, i % 250 + 1)).collect() };
    let a_hosts = hosts(1);
    let b_hosts = hosts(2);
    let mk = |own: &[String]| {
        let own: Vec<&str> = own.iter().map(String::as_str).collect();
        vec![allow(&own, &[80]), allow(&["10.9.0.0/16"], &[80]), deny(&["10.66.0.0/16"], &[])]
    };
    let (a, b) = (mk(&a_hosts), mk(&b_hosts));
    k.set_policy(pod, &a).unwrap();
    let probes = [
        (v4("10.9.3.3", POD4, TCP, &tcp(80)), Some(PASS)),   // both allow
        (v4("10.66.0.1", POD4, TCP, &tcp(80)), Some(DROP)),  // both deny
        (v4("10.9.3.3", POD4, TCP, &tcp(81)), Some(DROP)),   // neither allows
        (v4(&a_hosts[2999], POD4, TCP, &tcp(80)), None),     // A allows, B not
        (v4(&b_hosts[1500], POD4, TCP, &tcp(80)), None),     // B allows, A not
    ];
    let done = AtomicBool::new(false);
    let swaps = AtomicU32::new(0);
    let judged = std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..40 {
                k.set_policy(pod, if i % 2 == 0 { &b } else { &a }).unwrap();
                swaps.fetch_add(1, Ordering::Relaxed);
            }
            done.store(true, Ordering::Relaxed);
        });
        let mut judged = 0u64;
        while !done.load(Ordering::Relaxed) {
            for (pkt, want) in &probes {
                let got = k.run(pkt);
                if let Some(want) = want {
                    assert_eq!(got, *want, "after {} swaps", swaps.load(Ordering::Relaxed));
                }
                judged += 1;
            }
        }
        judged
    });
    assert!(judged > 100, "only {judged} packets judged during the swaps");
    assert_eq!(k.drops(POD4, "policy_unknown"), 0);
    eprintln!("{judged} packets judged during 40 swaps of {} rules", a_hosts.len() + 2);
}

#[test]
fn full_map_is_reported_and_the_old_policy_stays() {
    if !need_root("full_map_is_reported_and_the_old_policy_stays") {
        return;
    }
    let k = load();
    // 350k IPv6 hosts allowed on port 80 per policy, which is 700k entries (port 80's
    // table and the HBONE port's, which passes what any port allows): one fits, a
    // second does not (1M entries).
    let big = |net: u8| {
        let hosts: Vec<String> = (0..350_000u32).map(|i| format!("fd00:{net}::{:x}:{:x}", i >> 16, i & 0xffff)).collect();
        let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
        vec![allow(&refs, &[80])]
    };
    let a: IpAddr = POD6.parse().unwrap();
    let b: IpAddr = "fd00:200::11".parse().unwrap();
    k.set_policy(a, &big(1)).unwrap();
    let err = k.set_policy(b, &big(2)).unwrap_err();
    assert!(matches!(err, PolicyError::Full { map: "POLICY_RULES", .. }), "{err}");
    assert!(err.to_string().contains("is full"), "{err}");
    // Pod a keeps its policy; pod b has none, so everything passes there.
    assert_eq!(k.run(&v6("fd00:1::2", POD6, TCP, &tcp(80))), PASS);
    assert_eq!(k.run(&v6("fd00:3::1", POD6, TCP, &tcp(80))), DROP);
    assert_eq!(k.run(&v6("fd00:3::1", "fd00:200::11", TCP, &tcp(80))), PASS);
}

/// A new agent on the same bpffs folder adopts the tables a previous one left (its
/// pinned links keep enforcing them meanwhile), and its next update replaces them.
#[test]
fn a_new_agent_adopts_the_policy_tables() {
    if !need_root("a_new_agent_adopts_the_policy_tables") {
        return;
    }
    let first = load();
    let pod: IpAddr = POD4.parse().unwrap();
    let old = first.set_policy(pod, &[deny(&["10.1.1.1"], &[])]).unwrap().unwrap();
    assert_eq!(first.run(&v4("10.1.1.1", POD4, TCP, &tcp(80))), DROP);
    let bpffs = first.stop_keeping_pins();
    let second = Loaded { kernel: Some(Kernel::load(&bpffs).unwrap()), bpffs };
    assert_eq!(second.run(&v4("10.1.1.1", POD4, TCP, &tcp(80))), DROP, "the old table must keep deciding");
    assert_eq!(second.run(&v4("10.2.2.2", POD4, TCP, &tcp(80))), PASS);
    let new = second.set_policy(pod, &[deny(&["10.2.2.2"], &[])]).unwrap().unwrap();
    assert!(new > old, "versions continue after the adopted one ({new} after {old})");
    assert_eq!(second.run(&v4("10.1.1.1", POD4, TCP, &tcp(80))), PASS);
    assert_eq!(second.run(&v4("10.2.2.2", POD4, TCP, &tcp(80))), DROP);
    // Removing the pod's policy retires both generations: nothing of it is left.
    second.remove_policy(pod);
    let rules = dump::dump(&second.bpffs, "POLICY_RULES").unwrap();
    assert!(rules.is_empty(), "{rules:?}");
}

// ---- a real connection ------------------------------------------------------

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).stderr(std::process::Stdio::null()).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip(8)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn connect_from(netns: &std::path::Path, src: &str, dst: SocketAddr) -> std::io::Result<()> {
    let src: IpAddr = src.parse().unwrap();
    mesh_agent::netns::run_in(netns, move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.bind(&SocketAddr::new(src, 0).into())?;
        s.connect_timeout(&dst.into(), Duration::from_millis(1500))
    })
}

/// A server namespace (10.77.0.1, listening on 8080, interface `mp-s`) and a client
/// namespace with two addresses (10.77.0.2 and .3), joined by a veth pair.
struct TwoPods {
    _ns: Namespaces,
    srv: PathBuf,
    cli: PathBuf,
    dst: SocketAddr,
}

fn two_pods(tag: &str) -> TwoPods {
    let id = std::process::id();
    let (srv, cli) = (format!("mp{tag}-s-{id}"), format!("mp{tag}-c-{id}"));
    ip(&["netns", "add", &srv]);
    let ns = Namespaces(vec![srv.clone(), cli.clone()]);
    ip(&["netns", "add", &cli]);
    ip(&["link", "add", "mp-s", "netns", &srv, "type", "veth", "peer", "name", "mp-c", "netns", &cli]);
    ip(&["-n", &srv, "addr", "add", "10.77.0.1/24", "dev", "mp-s"]);
    ip(&["-n", &cli, "addr", "add", "10.77.0.2/24", "dev", "mp-c"]);
    ip(&["-n", &cli, "addr", "add", "10.77.0.3/24", "dev", "mp-c"]);
    for (n, dev) in [(&srv, "mp-s"), (&cli, "mp-c")] {
        ip(&["-n", n, "link", "set", dev, "up"]);
        ip(&["-n", n, "link", "set", "lo", "up"]);
    }
    let srv = PathBuf::from(format!("/run/netns/{srv}"));
    let cli = PathBuf::from(format!("/run/netns/{cli}"));
    let listener = mesh_agent::netns::run_in(&srv, || TcpListener::bind("10.77.0.1:8080")).unwrap();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
    TwoPods { _ns: ns, srv, cli, dst: "10.77.0.1:8080".parse().unwrap() }
}

#[test]
fn tcp_connect_across_namespaces_is_allowed_or_dropped() {
    if !need_root("tcp_connect_across_namespaces_is_allowed_or_dropped") {
        return;
    }
    let p = two_pods("a");
    let k = load();
    let ifaces = k.attach_policy("srv", &p.srv).unwrap();
    assert_eq!(ifaces, vec!["mp-s".to_string()]);
    // Before any policy both sources connect.
    connect_from(&p.cli, "10.77.0.3", p.dst).unwrap();
    k.set_policy(p.dst.ip(), &[allow(&["10.77.0.2"], &[8080])]).unwrap();
    connect_from(&p.cli, "10.77.0.2", p.dst).expect("allowed source must connect");
    let err = connect_from(&p.cli, "10.77.0.3", p.dst).expect_err("denied source must not connect");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(k.drops("10.77.0.1", "policy_no_allow_match") >= 1);
    // Detached: the denied source connects again.
    assert!(k.detach_policy("srv"));
    connect_from(&p.cli, "10.77.0.3", p.dst).unwrap();
}

/// Another tcx program on the same interface (here: a second, independent load of
/// the object, standing in for a CNI's) keeps running: ours goes first and hands
/// allowed packets on, and detaching ours leaves the other in place.
#[test]
fn tcx_coexists_with_another_program() {
    if !need_root("tcx_coexists_with_another_program") {
        return;
    }
    let p = two_pods("b");
    let cni = load();
    cni.attach_policy("srv", &p.srv).unwrap();
    cni.set_policy(p.dst.ip(), &[deny(&["10.77.0.2"], &[])]).unwrap();
    let ours = load();
    ours.attach_policy("srv", &p.srv).unwrap();
    ours.set_policy(p.dst.ip(), &[allow(&["10.77.0.2"], &[8080])]).unwrap();
    // .2: ours allows, then the other program (still in the chain) drops it.
    connect_from(&p.cli, "10.77.0.2", p.dst).expect_err("the other program must still run after ours");
    assert!(cni.drops("10.77.0.1", "policy_deny") >= 1);
    assert_eq!(ours.drops("10.77.0.1", "policy_deny"), 0);
    // .3: ours drops it first; the other never sees it.
    connect_from(&p.cli, "10.77.0.3", p.dst).expect_err("ours drops .3");
    assert!(ours.drops("10.77.0.1", "policy_no_allow_match") >= 1);
    assert_eq!(cni.drops("10.77.0.1", "policy_no_allow_match"), 0);
    // Ours detached: the other program is still attached and still drops .2.
    assert!(ours.detach_policy("srv"));
    connect_from(&p.cli, "10.77.0.3", p.dst).unwrap();
    connect_from(&p.cli, "10.77.0.2", p.dst).expect_err("the other program is still attached");
}

/// `meshctl explain` replays the program's decision on the pinned maps: for every
/// source and port of a grid, its pass/drop and drop reason are the program's.
#[test]
fn meshctl_explain_agrees_with_the_program() {
    use mesh_agent::kernel::explain::{explain, Outcome, Pinned};
    if !need_root("meshctl_explain_agrees_with_the_program") {
        return;
    }
    let k = load();
    let policies = [
        allow(&["10.1.0.0/16", "fd00:1::/32"], &[80, 443]),
        deny(&["10.1.66.0/24", "fd00:1:66::/48"], &[]),
        allow(&[], &[8080]),
        deny(&["10.1.67.7/32"], &[443]),
    ];
    for pod in [POD4, POD6] {
        k.set_policy(pod.parse().unwrap(), &policies).unwrap();
    }
    let view = Pinned::open(&k.bpffs).unwrap();
    let sources4 = ["10.1.0.1", "10.1.66.5", "10.1.67.7", "10.2.0.1", "172.16.0.1"];
    let sources6 = ["fd00:1::1", "fd00:1:66::5", "fd00:2::1"];
    let mut seen = std::collections::HashSet::new();
    for (pod, sources) in [(POD4, &sources4[..]), (POD6, &sources6[..])] {
        for src in sources {
            for port in [22u16, 80, 443, 8080] {
                let packet = if pod == POD4 { v4(src, pod, TCP, &tcp(port)) } else { v6(src, pod, TCP, &tcp(port)) };
                let before: Vec<u64> = REASONS.iter().map(|r| k.drops(pod, r)).collect();
                let verdict = k.run(&packet);
                let counted: Vec<&str> =
                    REASONS.iter().zip(&before).filter(|(r, b)| k.drops(pod, r) > **b).map(|(r, _)| *r).collect();
                let e = explain(&view, src.parse().unwrap(), pod.parse().unwrap(), port);
                let what = format!("{src} -> {pod}:{port}: {:#?}", e.steps);
                match e.outcome {
                    Outcome::Dropped(r) => {
                        assert_eq!(verdict, DROP, "explain says dropped, the program passed: {what}");
                        assert_eq!(counted, vec![mesh_common::drop_reason::name(r)], "{what}");
                    }
                    _ => assert_eq!((verdict, counted.len()), (PASS, 0), "explain says passed: {what}"),
                }
                seen.insert(verdict);
            }
        }
    }
    assert_eq!(seen.len(), 2, "the grid should hold both passes and drops");
}

const REASONS: [&str; 3] = ["policy_deny", "policy_no_allow_match", "policy_unknown"];
