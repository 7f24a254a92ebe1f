//! `policy_ingress` (tcx ingress on a pod's interface): L4 AuthorizationPolicy.
//!
//! The agent compiles a pod's policies into `POLICY_RULES` (see `mesh_common`); this
//! program only parses and looks up. Precedence is already folded into each entry
//! (DENY before ALLOW); the program adds the per-pod default and the odd packets:
//!
//! | packet | judged as |
//! |---|---|
//! | no `POLICY_PODS` entry for the destination | pass (no policy selects the pod) |
//! | non-IP (ARP, ...) or frame shorter than Ethernet | pass |
//! | up to two VLAN tags (802.1Q / 802.1ad) | the inner packet is judged |
//! | IPv4/IPv6 header truncated (or cut inside a VLAN tag) | drop, `MALFORMED` (pod `::`) |
//! | bad IPv4 IHL, IPv4 options cut short | drop, `MALFORMED` |
//! | TCP shorter than 20 bytes, UDP shorter than 8 | drop, `MALFORMED` |
//! | IPv4 or IPv6 non-first fragment | pass: no ports; the first fragment carries them and is judged, and without it nothing reassembles |
//! | IPv6 hop-by-hop, routing, destination options, fragment, AH headers | walked (at most 4); more than 4: drop, `MALFORMED` |
//! | ICMP, ICMPv6 | pass (path MTU and neighbour discovery; Istio's L4 policy is about connections) |
//! | other IP protocols (no ports) | judged by source with port "any other" (port 0) |
//! | TCP segment other than a connection request (SYN without ACK) | pass: replies to the pod's own connections (a SYN-ACK from a server's port to an ephemeral one) and the rest of connections whose SYN was judged |
//! | TCP connection request, UDP | judged by source and destination port |
//!
//! Allowed packets return `TCX_NEXT`, so programs after ours (a CNI's) still run.
use aya_ebpf::macros::classifier;
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::programs::TcContext;
use mesh_common::{drop_reason, verdict, Addr, PolicyKey, POLICY_HAS_ALLOW, POLICY_KEY_FIXED_BITS};

use crate::maps::{count_drop, POLICY_META, POLICY_PODS, POLICY_RULES};

/// tcx: continue with the next program (or pass when we are last).
const TCX_NEXT: i32 = -1;
/// tcx: drop.
const TCX_DROP: i32 = 2;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;
const MAX_IPV6_EXT: usize = 4;
const TCP_FLAGS: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// Where a drop is counted when the destination is unknown (L3 header cut short).
const UNKNOWN_POD: Addr = [0; 4];

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off_be: u16,
    ttl: u8,
    proto: u8,
    csum: u16,
    src: u32,
    dst: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Hdr {
    ver_tc_flow: u32,
    payload_len: u16,
    next_hdr: u8,
    hop_limit: u8,
    src: Addr,
    dst: Addr,
}

enum Judged {
    Pass,
    Drop(Addr, u32),
}

#[classifier]
pub fn policy_ingress(ctx: TcContext) -> i32 {
    match judge_packet(&ctx) {
        Judged::Pass => TCX_NEXT,
        Judged::Drop(pod, reason) => {
            count_drop(pod, reason);
            TCX_DROP
        }
    }
}

#[inline(always)]
fn v4_mapped(ip4: u32) -> Addr {
    [0, 0, 0x0000_ffffu32.to_be(), ip4]
}

/// A packet cut short or malformed for a pod that has a policy.
#[inline(always)]
fn malformed(pod: Addr) -> Judged {
    Judged::Drop(pod, drop_reason::MALFORMED)
}

#[inline(always)]
fn judge_packet(ctx: &TcContext) -> Judged {
    let Ok(mut ethertype) = ctx.load::<u16>(12) else { return Judged::Pass };
    let mut l3 = ETH_HLEN;
    for _ in 0..2 {
        let t = u16::from_be(ethertype);
        if t != ETH_P_8021Q && t != ETH_P_8021AD {
            break;
        }
        match ctx.load::<u16>(l3 + 2) {
            Ok(inner) => ethertype = inner,
            Err(_) => return malformed(UNKNOWN_POD),
        }
        l3 += 4;
    }
    match u16::from_be(ethertype) {
        ETH_P_IP => judge_v4(ctx, l3),
        ETH_P_IPV6 => judge_v6(ctx, l3),
        _ => Judged::Pass,
    }
}

#[inline(always)]
fn judge_v4(ctx: &TcContext, l3: usize) -> Judged {
    let Ok(ip) = ctx.load::<Ipv4Hdr>(l3) else { return malformed(UNKNOWN_POD) };
    let pod = v4_mapped(ip.dst);
    // SAFETY: read-only lookup of a plain-old-data value, copied at once.
    let Some(version) = (unsafe { POLICY_PODS.get(&pod) }).copied() else { return Judged::Pass };
    let ihl = ((ip.ver_ihl & 0x0f) as usize) * 4;
    if ip.ver_ihl >> 4 != 4 || ihl < 20 {
        return malformed(pod);
    }
    if u16::from_be(ip.frag_off_be) & 0x1fff != 0 {
        return Judged::Pass;
    }
    let Some(port_be) = dst_port(ctx, ip.proto, l3 + ihl, pod) else { return malformed(pod) };
    match port_be {
        PortOf::Port(p) => judge(pod, version, v4_mapped(ip.src), p),
        PortOf::Unjudged => Judged::Pass,
    }
}

#[inline(always)]
fn judge_v6(ctx: &TcContext, l3: usize) -> Judged {
    let Ok(ip) = ctx.load::<Ipv6Hdr>(l3) else { return malformed(UNKNOWN_POD) };
    let pod = ip.dst;
    // SAFETY: read-only lookup of a plain-old-data value, copied at once.
    let Some(version) = (unsafe { POLICY_PODS.get(&pod) }).copied() else { return Judged::Pass };
    let mut next = ip.next_hdr;
    let mut off = l3 + 40;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let Ok(h) = ctx.load::<[u8; 2]>(off) else { return malformed(pod) };
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            IPV6_AH => {
                let Ok(h) = ctx.load::<[u8; 2]>(off) else { return malformed(pod) };
                next = h[0];
                off += (h[1] as usize + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let Ok(h) = ctx.load::<[u8; 4]>(off) else { return malformed(pod) };
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    return Judged::Pass;
                }
                next = h[0];
                off += 8;
            }
            _ => break,
        }
    }
    if matches!(next, IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_AH | IPV6_FRAGMENT) {
        return malformed(pod);
    }
    let Some(port_be) = dst_port(ctx, next, off, pod) else { return malformed(pod) };
    match port_be {
        PortOf::Port(p) => judge(pod, version, ip.src, p),
        PortOf::Unjudged => Judged::Pass,
    }
}

enum PortOf {
    /// Destination port in network order; 0 for protocols without ports.
    Port(u16),
    /// ICMP / ICMPv6, TCP other than a connection request: not judged.
    Unjudged,
}

/// The destination port at `l4`, `None` when the L4 header is cut short.
#[inline(always)]
fn dst_port(ctx: &TcContext, proto: u8, l4: usize, _pod: Addr) -> Option<PortOf> {
    let min = match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => return Some(PortOf::Unjudged),
        _ => return Some(PortOf::Port(0)),
    };
    ctx.load::<u8>(l4 + min - 1).ok()?;
    if proto == IPPROTO_TCP {
        let flags = ctx.load::<u8>(l4 + TCP_FLAGS).ok()?;
        if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
            return Some(PortOf::Unjudged);
        }
    }
    let ports = ctx.load::<[u8; 4]>(l4).ok()?;
    Some(PortOf::Port(u16::from_ne_bytes([ports[2], ports[3]])))
}

/// Looks the packet up in the pod's active policy version: exact port first, then
/// the "any other port" entries; the longest source prefix wins. The version's
/// `POLICY_META` entry is read last: if it is gone (the version is being retired) or
/// belongs to another pod, the state is inconsistent and the packet is dropped.
#[inline(always)]
fn judge(pod: Addr, version: u32, src: Addr, port_be: u16) -> Judged {
    let bits = POLICY_KEY_FIXED_BITS + 128;
    let mut found = None;
    if port_be != 0 {
        let key = Key::new(bits, PolicyKey { version, port_be, _pad: 0, src });
        found = POLICY_RULES.get(&key).copied();
    }
    if found.is_none() {
        let key = Key::new(bits, PolicyKey { version, port_be: 0, _pad: 0, src });
        found = POLICY_RULES.get(&key).copied();
    }
    // SAFETY: read-only lookup of a plain-old-data value, copied at once.
    let meta = unsafe { POLICY_META.get(&version) }.copied();
    let (Some(v), Some(meta)) = (found, meta) else {
        return Judged::Drop(pod, drop_reason::POLICY_UNKNOWN);
    };
    if meta.pod != pod {
        return Judged::Drop(pod, drop_reason::POLICY_UNKNOWN);
    }
    match v.verdict {
        verdict::ALLOW => Judged::Pass,
        verdict::DENY => Judged::Drop(pod, drop_reason::POLICY_DENY),
        verdict::NO_MATCH if meta.flags & POLICY_HAS_ALLOW != 0 => {
            Judged::Drop(pod, drop_reason::POLICY_NO_ALLOW_MATCH)
        }
        verdict::NO_MATCH => Judged::Pass,
        _ => Judged::Drop(pod, drop_reason::POLICY_UNKNOWN),
    }
}
