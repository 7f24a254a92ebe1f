//! Map keys and values shared by the mesh kernel programs and the agent.
//!
//! Layout rules: `#[repr(C)]`, explicit padding, no `bool`, `_be` for fields in
//! network byte order, and a compile-time size check beside each type. Addresses are
//! 16 bytes; IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), as the kernel's
//! `s6_addr32` words, so one key type serves both families.
#![no_std]

/// Agent's outbound listener port inside every enrolled pod's network namespace.
pub const OUTBOUND_PORT: u16 = 15001;
/// Agent's inbound plaintext listener inside every enrolled pod's network namespace
/// (bound on loopback; plaintext for the pod's ports is steered to it by `steer_inbound`).
pub const INBOUND_PORT: u16 = 15006;
/// HBONE (HTTP/2 CONNECT over mTLS) port, on each pod's address.
pub const HBONE_PORT: u16 = 15008;
/// `kubelet` health probes reach ambient pods from this link-local SNAT address
/// (Istio's choice); the agent's `--probe-source` default.
pub const DEFAULT_PROBE_SOURCE: [u8; 4] = [169, 254, 7, 127];

/// Names of the pinned maps, under the agent's bpffs folder.
pub const MAP_MESH_DESTS: &str = "MESH_DESTS";
pub const MAP_ORIG_BY_COOKIE: &str = "ORIG_BY_COOKIE";
pub const MAP_ORIG_DST: &str = "ORIG_DST";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_PODS: &str = "PODS";
pub const MAP_DROPS: &str = "DROPS";
pub const MAP_INBOUND: &str = "INBOUND";
pub const MAP_INBOUND_PORTS: &str = "INBOUND_PORTS";
pub const MAP_INBOUND_LISTENERS: &str = "INBOUND_LISTENERS";
pub const MAP_INBOUND_EXEMPT_SRC: &str = "INBOUND_EXEMPT_SRC";
pub const MAP_FORWARDS: &str = "FORWARDS";
pub const MAP_FLOW_EVENTS: &str = "FLOW_EVENTS";

/// A captured connection opening or closing, sent to the agent through the
/// `FLOW_EVENTS` ring buffer for flow logs and metrics.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    pub netns_cookie: u64,
    pub socket_cookie: u64,
    /// Bytes the pod's socket sent and had acknowledged, and received (at close).
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// The original destination.
    pub dst: Addr,
    pub dst_port_be: u16,
    /// The pod socket's local port, host byte order.
    pub local_port: u16,
    /// One of [`flow_event`].
    pub kind: u32,
}
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 56);

/// [`FlowEvent::kind`].
pub mod flow_event {
    pub const OPEN: u32 = 1;
    pub const CLOSE: u32 = 2;
}
pub const MAP_POLICY_PODS: &str = "POLICY_PODS";
pub const MAP_POLICY_META: &str = "POLICY_META";
pub const MAP_POLICY_RULES: &str = "POLICY_RULES";

/// L4 AuthorizationPolicy in the kernel (program `policy_ingress`, tcx ingress on
/// the pod's interface). Three maps, one generation of one pod's policy per version:
///
/// - `POLICY_PODS`: pod address -> active version (u32, never reused). No entry: no
///   policy selects the pod, everything passes.
/// - `POLICY_META`: version -> [`PolicyMeta`] (pod, flags). Written last when a version
///   is built, deleted first when it is retired; the program reads it *after* its rule
///   lookups and drops with `POLICY_UNKNOWN` unless it is there, so a packet is judged
///   by one whole version or fails closed, never by half of two.
/// - `POLICY_RULES`: LPM trie, [`PolicyKey`] (version, destination port or 0 for "any
///   other port", source prefix) -> [`PolicyValue`], the verdict already folded by the
///   agent's compiler for that port and prefix (DENY before ALLOW).
///
/// Lookup: exact port first, then port 0; the longest source prefix wins.
pub const POLICY_KEY_FIXED_BITS: u32 = 64;

/// Data part of a `POLICY_RULES` key (the LPM prefix length precedes it in the map).
/// The first [`POLICY_KEY_FIXED_BITS`] bits (version, port, padding) are always
/// matched; then `prefix` bits of the source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    pub version: u32,
    /// Destination port, network order; 0 = any port the pod's policy does not name.
    pub port_be: u16,
    pub _pad: u16,
    /// Source address (IPv4-mapped for IPv4).
    pub src: Addr,
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 24);

/// Value of `POLICY_RULES`: what the pod's policies say for that port and prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// One of [`verdict`].
    pub verdict: u32,
    /// Index (in the list given to the agent) of the policy that decided, or `u32::MAX`.
    pub policy: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 8);

/// [`PolicyValue::verdict`].
pub mod verdict {
    /// No policy matched: allowed unless an ALLOW policy selects the pod.
    pub const NO_MATCH: u32 = 0;
    /// An ALLOW policy matched (and no DENY).
    pub const ALLOW: u32 = 1;
    /// A DENY policy matched.
    pub const DENY: u32 = 2;

    pub fn name(v: u32) -> &'static str {
        match v {
            NO_MATCH => "no_match",
            ALLOW => "allow",
            DENY => "deny",
            _ => "invalid",
        }
    }
}

/// Value of `POLICY_META`, keyed by version (u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyMeta {
    /// The pod this version belongs to.
    pub pod: Addr,
    /// `POLICY_HAS_ALLOW`.
    pub flags: u32,
    /// Number of `POLICY_RULES` entries of this version.
    pub entries: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyMeta>() == 24);
/// At least one ALLOW policy selects the pod: a packet no ALLOW matches is dropped.
pub const POLICY_HAS_ALLOW: u32 = 1;


/// Key of `FORWARDS`: a connection the agent is opening to an application with the
/// caller's address, between bind() and the end of connect(); inbound steering lets
/// its SYN through. Value: u8, unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ForwardKey {
    /// The caller's address the agent's socket is bound to.
    pub remote: Addr,
    /// Its port, network byte order.
    pub remote_port_be: u16,
    /// The application's port, host byte order.
    pub local_port: u16,
}
const _: () = assert!(core::mem::size_of::<ForwardKey>() == 20);
pub const MAP_OUTBOUND_EXCLUDED_PORTS: &str = "OUTBOUND_EXCLUDED_PORTS";

/// What the kernel does with plaintext TCP arriving for an enrolled pod's port, the
/// value of `INBOUND` (per pod address) and `INBOUND_PORTS` (per pod address and port,
/// which wins over the pod's entry).
pub mod inbound_mode {
    /// Plaintext accepted, steered to the agent's inbound listener (15006).
    pub const PERMISSIVE: u32 = 1;
    /// Plaintext dropped in the kernel and counted (`drop_reason::STRICT_PLAINTEXT`).
    pub const STRICT: u32 = 2;
    /// mTLS not required: treated as PERMISSIVE by the kernel (steered, accepted).
    pub const DISABLE: u32 = 3;
    /// Not captured at all (`excludeInboundPorts`): the application gets it directly.
    pub const BYPASS: u32 = 4;

    pub fn name(mode: u32) -> &'static str {
        match mode {
            PERMISSIVE => "PERMISSIVE",
            STRICT => "STRICT",
            DISABLE => "DISABLE",
            BYPASS => "BYPASS",
            _ => "unknown",
        }
    }
}

/// Value of `INBOUND` and `INBOUND_PORTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboundRule {
    /// One of [`inbound_mode`].
    pub mode: u32,
}
const _: () = assert!(core::mem::size_of::<InboundRule>() == 4);

/// Key of `OUTBOUND_EXCLUDED_PORTS`: a destination port that an enrolled pod's
/// connect() never redirects (`excludeOutboundPorts`). Keyed by namespace, as `PODS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetnsPortKey {
    pub netns_cookie: u64,
    pub port_be: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<NetnsPortKey>() == 16);

/// Key of `DROPS` (per-CPU hash of u64 packet/connection counts): which pod, and why.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DropKey {
    /// The pod the dropped traffic was for (its address).
    pub addr: Addr,
    /// One of [`drop_reason`].
    pub reason: u32,
}
const _: () = assert!(core::mem::size_of::<DropKey>() == 20);

/// Why the kernel dropped something. The numbers are shared with userspace metrics
/// and `meshctl`; never renumber, only add.
pub mod drop_reason {
    /// Plaintext to a pod whose PeerAuthentication is STRICT.
    pub const STRICT_PLAINTEXT: u32 = 1;
    /// A DENY rule of an L4 AuthorizationPolicy matched.
    pub const POLICY_DENY: u32 = 2;
    /// ALLOW policies select the pod and none matched.
    pub const POLICY_NO_ALLOW_MATCH: u32 = 3;
    /// A packet too short or malformed to judge (judged by the documented default).
    pub const MALFORMED: u32 = 4;
    /// Policy state for the pod was incomplete (fail closed).
    pub const POLICY_UNKNOWN: u32 = 5;
    /// Plaintext for a pod whose agent listener is gone (agent down or restarting):
    /// dropped rather than let past the agent's policy and telemetry.
    pub const NO_AGENT_LISTENER: u32 = 6;

    /// Name of a reason, for metrics and `meshctl`.
    pub fn name(reason: u32) -> &'static str {
        match reason {
            STRICT_PLAINTEXT => "strict_plaintext",
            POLICY_DENY => "policy_deny",
            POLICY_NO_ALLOW_MATCH => "policy_no_allow_match",
            MALFORMED => "malformed",
            POLICY_UNKNOWN => "policy_unknown",
            NO_AGENT_LISTENER => "no_agent_listener",
            _ => "unknown",
        }
    }
}

/// Value of `PODS`, keyed by the pod's network namespace cookie (u64): an enrolled pod.
/// The capture programs redirect only sockets whose namespace is in this map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// The pod's first address.
    pub addr: Addr,
    /// Reserved for per-pod flags.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<PodInfo>() == 20);

/// An IPv6 or IPv4-mapped address as four network-order 32-bit words.
pub type Addr = [u32; 4];

/// Key of `MESH_DESTS`: a destination the mesh captures. `port_be == 0` matches any port
/// of that address (a workload); a non-zero port matches only that port (a service VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DestKey {
    pub addr: Addr,
    pub port_be: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<DestKey>() == 20);

/// Value of `MESH_DESTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestValue {
    /// `DEST_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<DestValue>() == 4);
/// The destination is a service VIP.
pub const DEST_SERVICE: u32 = 1;
/// The destination is a workload that speaks HBONE.
pub const DEST_WORKLOAD: u32 = 2;

/// Where a captured socket was going before `connect()` was rewritten.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    pub addr: Addr,
    pub port_be: u16,
    /// `AF_INET` or `AF_INET6` as the application asked.
    pub family: u16,
    /// Network namespace of the socket (`bpf_get_netns_cookie`).
    pub netns_cookie: u64,
}
const _: () = assert!(core::mem::size_of::<OrigDst>() == 32);

/// Key of `ORIG_DST`: the captured socket as the agent sees it after `accept()`:
/// its network namespace and its local (the agent's peer) port. Every pod has its own
/// 127.0.0.1, so the port alone would collide across pods.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub netns_cookie: u64,
    /// Local port of the pod's socket, host byte order.
    pub port: u16,
    pub family: u16,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<SockKey>() == 16);

/// Indexes of the per-CPU `COUNTERS` array.
pub mod counter {
    /// connect() calls seen by the capture program in enrolled pods.
    pub const CONNECT_SEEN: u32 = 0;
    /// connect() calls redirected to the agent.
    pub const CONNECT_REDIRECTED: u32 = 1;
    /// Captured sockets whose original destination was handed to `ORIG_DST`.
    pub const ORIG_RECORDED: u32 = 2;
    /// Captured sockets that reached ESTABLISHED without a cookie entry (map full or lost).
    pub const ORIG_MISSING: u32 = 3;
    /// `ORIG_DST` entries removed by the kernel when the socket closed.
    pub const ORIG_EXPIRED: u32 = 4;
    /// connect() calls from a cgroup we attached to whose namespace is not enrolled.
    pub const NOT_ENROLLED: u32 = 5;
    /// connect() calls to a mesh destination left alone: the port is excluded.
    pub const CONNECT_EXCLUDED: u32 = 6;
    /// New inbound TCP connections steered to the agent's plaintext listener.
    pub const INBOUND_STEERED: u32 = 7;
    /// New inbound TCP connections to an enrolled pod passed untouched (HBONE and
    /// agent ports, loopback, exempt source, excluded port).
    pub const INBOUND_EXEMPT: u32 = 8;
    /// Inbound plaintext refused in STRICT mode (also in `DROPS` per pod).
    pub const INBOUND_STRICT_DROPPED: u32 = 9;
    /// PERMISSIVE pod without a listener in `INBOUND_LISTENERS` (or the assign
    /// failed): passed to the normal socket lookup.
    pub const INBOUND_NO_LISTENER: u32 = 10;
    /// A connect() to a mesh destination refused because its original destination
    /// could not be recorded (`ORIG_BY_COOKIE` refused the entry): fail closed, the
    /// connection neither bypasses the mesh nor reaches the agent without a destination.
    pub const CAPTURE_FAILED: u32 = 11;
    /// Drops not recorded in `DROPS` because it is full (the drop itself happened).
    pub const DROPS_UNRECORDED: u32 = 12;
    /// Loopback-leg sockets put on the same-node fast path (`FAST_SOCKS`) at ESTABLISHED.
    pub const FAST_INSERTED: u32 = 13;
    /// Messages the fast path handed straight to the peer socket's receive queue.
    pub const FAST_REDIRECTED: u32 = 14;
    /// Messages of a fast-path socket whose peer was not in `FAST_SOCKS`: sent over
    /// loopback TCP, and the socket stays off the fast path from then on.
    pub const FAST_MISSED: u32 = 15;
    /// Messages sent over loopback TCP because the pod's fast path is switched off or
    /// the connection was taken off it (`FAST_OFF`).
    pub const FAST_PASSED: u32 = 16;
    pub const COUNT: u32 = 17;
    pub const NAMES: [&str; COUNT as usize] = [
        "connect_seen",
        "connect_redirected",
        "orig_recorded",
        "orig_missing",
        "orig_expired",
        "not_enrolled",
        "connect_excluded",
        "inbound_steered",
        "inbound_exempt",
        "inbound_strict_dropped",
        "inbound_no_listener",
        "capture_failed",
        "drops_unrecorded",
        "fast_inserted",
        "fast_redirected",
        "fast_missed",
        "fast_passed",
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is repr(C), has no padding the kernel could read uninitialised
    // (padding is explicit), and is valid for any bit pattern.
    unsafe impl aya::Pod for super::DestKey {}
    unsafe impl aya::Pod for super::DestValue {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::PodInfo {}
    unsafe impl aya::Pod for super::DropKey {}
    unsafe impl aya::Pod for super::ForwardKey {}
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::PolicyMeta {}
    unsafe impl aya::Pod for super::InboundRule {}
    unsafe impl aya::Pod for super::NetnsPortKey {}
    unsafe impl aya::Pod for super::FastKey {}
}

pub const MAP_FAST_SOCKS: &str = "FAST_SOCKS";
pub const MAP_FAST_PODS: &str = "FAST_PODS";
pub const MAP_FAST_OFF: &str = "FAST_OFF";

/// Key of `FAST_SOCKS` (the same-node fast path's sockhash) and `FAST_OFF`: one end
/// of a loopback leg between a pod's socket and the agent's, as that end sees it.
/// The peer's key is the same with local and remote swapped ([`FastKey::peer`]).
/// Every pod has its own 127.0.0.1, hence the namespace cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FastKey {
    pub netns_cookie: u64,
    pub local: Addr,
    pub remote: Addr,
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    /// `AF_INET` (also for IPv4-mapped addresses on an IPv6 socket) or `AF_INET6`.
    pub family: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<FastKey>() == 48);

impl FastKey {
    /// The key of the socket at the other end of the same connection.
    pub fn peer(&self) -> FastKey {
        FastKey {
            local: self.remote,
            remote: self.local,
            local_port: self.remote_port,
            remote_port: self.local_port,
            ..*self
        }
    }
}

/// Value of `FAST_PODS` (keyed by netns cookie): the pod's loopback legs use the fast path.
pub const FAST_POD_ON: u32 = 1;

/// Which loopback legs go on the same-node fast path. A socket reaching ESTABLISHED
/// in an enrolled pod's namespace whose fast path is on is put into `FAST_SOCKS` when
/// it is one end of:
/// - leg 1, the pod's captured connection to the agent's outbound listener: the
///   pod's end connects (active) to loopback:15001, the agent's end is accepted
///   (passive) on loopback:15001;
/// - leg 2, the agent's forward to the application (`FORWARDS` holds it while it
///   opens): `forward` says whether that entry exists for this socket.
///
/// Anything else (HBONE, pass-through, inbound plaintext from outside the node) is
/// not a loopback leg and is left alone. Pure, so it is table-tested here.
pub fn fast_leg(passive: bool, local: &Addr, local_port: u16, remote: &Addr, remote_port: u16, forward: bool) -> bool {
    let outbound_leg = if passive {
        local_port == OUTBOUND_PORT && is_loopback(local)
    } else {
        remote_port == OUTBOUND_PORT && is_loopback(remote)
    };
    outbound_leg || forward
}

/// `127.0.0.1` (IPv4-mapped) or `::1`: the addresses of the agent's outbound listeners.
pub fn is_loopback(a: &Addr) -> bool {
    let v4 = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), u32::from_ne_bytes([127, 0, 0, 1])];
    let v6 = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
    *a == v4 || *a == v6
}

/// The map form of an address (IPv4 as IPv4-mapped).
pub fn addr_from_ip(ip: core::net::IpAddr) -> Addr {
    let o = match ip {
        core::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        core::net::IpAddr::V6(v6) => v6.octets(),
    };
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The address a map entry holds (IPv4-mapped shown as IPv4).
pub fn ip_from_addr(a: Addr) -> core::net::IpAddr {
    let mut o = [0u8; 16];
    for (i, w) in a.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = core::net::Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => core::net::IpAddr::V4(v4),
        None => core::net::IpAddr::V6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::IpAddr;

    fn a(s: &str) -> Addr {
        addr_from_ip(s.parse().unwrap())
    }

    #[test]
    fn fast_path_takes_only_loopback_legs() {
        // (passive, local, local port, remote, remote port, FORWARDS entry) -> inserted
        let table = [
            // leg 1: pod's captured socket, and the agent's accepted one
            (false, "127.0.0.1", 40000, "127.0.0.1", 15001, false, true),
            (true, "127.0.0.1", 15001, "127.0.0.1", 40000, false, true),
            (false, "::1", 40000, "::1", 15001, false, true),
            (true, "::1", 15001, "::1", 40000, false, true),
            // leg 2: the agent's forward and the app's accepted socket
            (false, "10.0.0.1", 41000, "10.0.0.2", 8080, true, true),
            (true, "10.0.0.2", 8080, "10.0.0.1", 41000, true, true),
            // not legs: HBONE to another pod, inbound plaintext, an app's own loopback
            (false, "10.0.0.1", 42000, "10.0.0.2", 15008, false, false),
            (true, "10.0.0.2", 15006, "10.0.0.9", 43000, false, false),
            (false, "127.0.0.1", 40000, "127.0.0.1", 6379, false, false),
            (true, "127.0.0.1", 6379, "127.0.0.1", 40000, false, false),
            // 15001 on a pod address is not the agent's listener
            (false, "10.0.0.1", 40000, "10.0.0.2", 15001, false, false),
            (true, "10.0.0.2", 15001, "10.0.0.1", 40000, false, false),
        ];
        for (passive, l, lp, r, rp, fwd, want) in table {
            assert_eq!(fast_leg(passive, &a(l), lp, &a(r), rp, fwd), want, "{passive} {l}:{lp} {r}:{rp} {fwd}");
        }
    }

    #[test]
    fn fast_key_peer_swaps_the_ends() {
        let k = FastKey { netns_cookie: 7, local: a("127.0.0.1"), remote: a("::1"), local_port: 1, remote_port: 2, family: 2, _pad: 0 };
        let p = k.peer();
        assert_eq!((p.local, p.remote, p.local_port, p.remote_port, p.netns_cookie), (k.remote, k.local, 2, 1, 7));
        assert_eq!(p.peer(), k);
    }

    #[test]
    fn addresses_round_trip_in_kernel_layout() {
        for s in ["10.201.1.2", "127.0.0.1", "fd00::1", "::1"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(ip_from_addr(addr_from_ip(ip)), ip, "{s}");
        }
        // The kernel's user_ip4 for 10.201.1.2 is the bytes 0a c9 01 02 in memory.
        let a = addr_from_ip("10.201.1.2".parse().unwrap());
        assert_eq!(a[3].to_ne_bytes(), [10, 201, 1, 2]);
        assert_eq!(a[2].to_ne_bytes(), [0, 0, 0xff, 0xff]);
    }
}
