//! Every map of the kernel programs. Pinned by name under the agent's bpffs folder so
//! that `meshctl` can read them.
use aya_ebpf::bindings::BPF_F_NO_PREALLOC;
use aya_ebpf::macros::map;
use aya_ebpf::maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, SockHash};
use mesh_common::{
    counter, Addr, DestKey, DestValue, DropKey, FastKey, ForwardKey, InboundRule, NetnsPortKey, OrigDst, PodInfo,
    PolicyKey, PolicyMeta, PolicyValue, SockKey,
};

/// Destinations the mesh captures (service VIP:port, or workload address with port 0).
#[map]
pub static MESH_DESTS: HashMap<DestKey, DestValue> = HashMap::pinned(65_536, 0);

/// Enrolled pods by network-namespace cookie.
#[map]
pub static PODS: HashMap<u64, PodInfo> = HashMap::pinned(16_384, 0);

/// Original destination by socket cookie, from connect() until ESTABLISHED. LRU: a
/// connect() that never completes does not leak an entry.
#[map]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::pinned(65_536, 0);

/// Original destination by (pod namespace, local port), from ESTABLISHED until close.
#[map]
pub static ORIG_DST: LruHashMap<SockKey, OrigDst> = LruHashMap::pinned(262_144, 0);

/// Event counters, per CPU (the bpf target has no atomic add); summed by userspace.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(v) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *v += 1 };
    }
}

/// Drops by pod and reason (`mesh_common::drop_reason`), per CPU; summed by userspace.
#[map]
pub static DROPS: PerCpuHashMap<DropKey, u64> = PerCpuHashMap::pinned(16_384, 0);

/// Counts one drop of traffic for the pod at `addr`.
#[inline(always)]
pub fn count_drop(addr: Addr, reason: u32) {
    let key = DropKey { addr, reason };
    match DROPS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        Some(v) => unsafe { *v += 1 },
        None => {
            if DROPS.insert(&key, &1, 0).is_err() {
                count(counter::DROPS_UNRECORDED);
            }
        }
    }
}

/// Inbound mode of each enrolled pod address (`mesh_common::inbound_mode`).
#[map]
pub static INBOUND: HashMap<Addr, InboundRule> = HashMap::pinned(16_384, 0);

/// Per-port inbound rules (pod address + port), which win over `INBOUND`: port-level
/// mTLS modes and `excludeInboundPorts` (`BYPASS`).
#[map]
pub static INBOUND_PORTS: HashMap<DestKey, InboundRule> = HashMap::pinned(65_536, 0);

/// The agent's inbound plaintext listener (15006) of each pod address, in the pod's
/// own network namespace, of the address's family.
#[map]
pub static INBOUND_LISTENERS: SockHash<Addr> = SockHash::pinned(16_384, 0);

/// Source addresses whose connections are never steered nor dropped (the kubelet's
/// health-probe address), value unused.
#[map]
pub static INBOUND_EXEMPT_SRC: HashMap<Addr, u32> = HashMap::pinned(64, 0);

/// The agent's connections to applications being opened right now (see `ForwardKey`).
#[map]
pub static FORWARDS: HashMap<ForwardKey, u8> = HashMap::pinned(65_536, 0);

/// Destination ports an enrolled pod's connect() never redirects, per namespace.
#[map]
pub static OUTBOUND_EXCLUDED_PORTS: HashMap<NetnsPortKey, u32> = HashMap::pinned(65_536, 0);
/// L4 policy: pod address -> active policy version (see `mesh_common::MAP_POLICY_PODS`).
/// Not preallocated, so an element replaced by an update is freed only after every
/// program that could hold it has finished.
#[map]
pub static POLICY_PODS: HashMap<Addr, u32> = HashMap::pinned(16_384, BPF_F_NO_PREALLOC);

/// L4 policy: version -> pod and flags; the proof that a version is complete.
#[map]
pub static POLICY_META: HashMap<u32, PolicyMeta> = HashMap::pinned(32_768, BPF_F_NO_PREALLOC);

/// L4 policy: (version, port, source prefix) -> verdict. Room for two generations of
/// about 500k entries in total.
#[map]
pub static POLICY_RULES: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(1_048_576, 0);

/// Captured connections opening and closing (`mesh_common::FlowEvent`), for the
/// agent's flow logs. When the agent falls behind, events are dropped, never stalled.
#[map]
pub static FLOW_EVENTS: RingBuf = RingBuf::pinned(256 * 1024, 0);

/// Same-node fast path: both ends of each loopback leg between a pod and the agent,
/// by (namespace, local, remote, family). `fast_redirect` (sk_msg) is attached to it;
/// the kernel removes a socket when it closes.
#[map]
pub static FAST_SOCKS: SockHash<FastKey> = SockHash::pinned(131_072, 0);

/// Pods (by netns cookie) whose loopback legs use the fast path: `FAST_POD_ON`.
/// Switching a pod off stops redirects of its existing connections too.
#[map]
pub static FAST_PODS: HashMap<u64, u32> = HashMap::pinned(16_384, 0);

/// Sockets (their own `FastKey`) that sent over loopback TCP after joining
/// `FAST_SOCKS`, or that the agent took off the fast path: never redirected again,
/// so their peer never reads newer bytes (redirected) before older ones (TCP).
#[map]
pub static FAST_OFF: LruHashMap<FastKey, u32> = LruHashMap::pinned(131_072, 0);
