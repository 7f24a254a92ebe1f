//! `meshctl explain`: why the kernel passes, steers or drops a new TCP connection from
//! a source address to an enrolled pod's address and port.
//!
//! It replays, on what the maps hold, the two decisions the kernel takes for such a
//! connection, in the kernel's order:
//! 1. `policy_ingress` (tcx ingress on the pod's interface: packets that arrive over
//!    the wire, not a pod's connections to itself): the pod's active policy version,
//!    the longest source prefix for the exact port, else for "any other port", the
//!    version's metadata, and the verdict;
//! 2. `steer_inbound` (sk_lookup in the pod's namespace): the passes (the pod to
//!    itself, the agent's ports, exempt sources), the port's or the pod's mTLS mode,
//!    and the agent's listener.
//!
//! The replay is pure over [`View`] (table-tested below); [`Pinned`] reads the view from
//! an agent's bpffs folder.
use std::net::IpAddr;
use std::path::Path;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{HashMap, Map, MapData, SockHash};
use mesh_common::{
    addr_from_ip, drop_reason, inbound_mode, verdict, Addr, DestKey, InboundRule, PolicyKey, PolicyMeta,
    PolicyValue, HBONE_PORT, INBOUND_PORT, MAP_INBOUND, MAP_INBOUND_EXEMPT_SRC, MAP_INBOUND_LISTENERS,
    MAP_INBOUND_PORTS, MAP_POLICY_META, MAP_POLICY_PODS, MAP_POLICY_RULES, OUTBOUND_PORT, POLICY_HAS_ALLOW,
};
use serde::Serialize;

use super::dump::DumpError;
use crate::l4policy::{addr_bits, Prefix};

/// What the kernel's maps say, as the two programs read them.
pub trait View {
    /// `INBOUND`: the pod's mode, if the address is an enrolled pod's.
    fn pod_mode(&self, pod: Addr) -> Option<u32>;
    /// `INBOUND_PORTS`: a port's own mode.
    fn port_mode(&self, pod: Addr, port: u16) -> Option<u32>;
    /// `INBOUND_EXEMPT_SRC`.
    fn exempt(&self, src: Addr) -> bool;
    /// `INBOUND_LISTENERS` holds the agent's plaintext listener for the pod.
    fn has_listener(&self, pod: Addr) -> bool;
    /// `POLICY_PODS`: the pod's active policy version.
    fn policy_version(&self, pod: Addr) -> Option<u32>;
    /// `POLICY_META`.
    fn policy_meta(&self, version: u32) -> Option<PolicyMeta>;
    /// `POLICY_RULES` entries of one version and port class (0: any other port).
    fn policy_entries(&self, version: u32, port: u16) -> Vec<(Prefix, PolicyValue)>;
}

/// The end of the replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Policy passed it, and the address is not an enrolled pod's: nothing steers it.
    NotEnrolled,
    /// The application (or the agent's port) gets the connection untouched.
    Delivered,
    /// Assigned to the agent's plaintext listener (15006), which applies the rest.
    SteeredToAgent,
    /// Dropped in the kernel, counted in `DROPS` under this reason.
    Dropped(u32),
}

#[derive(Debug, Serialize)]
pub struct Step {
    /// `policy_ingress` or `steer_inbound`.
    pub program: &'static str,
    pub finding: String,
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub steps: Vec<Step>,
    pub outcome: Outcome,
}

impl Explanation {
    /// The drop reason's name, when the kernel drops it.
    pub fn reason(&self) -> Option<&'static str> {
        match self.outcome {
            Outcome::Dropped(r) => Some(drop_reason::name(r)),
            _ => None,
        }
    }

    /// One line for the outcome, as `meshctl explain` ends.
    pub fn verdict(&self) -> String {
        match self.outcome {
            Outcome::NotEnrolled => "no steering (no enrolled pod has this address): the normal socket lookup decides".into(),
            Outcome::Delivered => "delivered untouched".into(),
            Outcome::SteeredToAgent => format!("steered to the agent's inbound listener ({INBOUND_PORT})"),
            Outcome::Dropped(r) => format!("DROPPED in the kernel: {} (counted in DROPS)", drop_reason::name(r)),
        }
    }
}

/// Replays the kernel's decisions for a TCP connection `src` -> `dst:port`.
pub fn explain(view: &impl View, src: IpAddr, dst: IpAddr, port: u16) -> Explanation {
    let pod = addr_from_ip(dst.to_canonical());
    let mut steps = Vec::new();
    let mut step = |program, finding: String| steps.push(Step { program, finding });
    let dropped = if src.to_canonical() == dst.to_canonical() {
        step("policy_ingress", "the pod's own address: local traffic never crosses its interface".into());
        None
    } else {
        policy(view, &mut step, pod, src, port)
    };
    if let Some(reason) = dropped {
        return Explanation { steps, outcome: Outcome::Dropped(reason) };
    }
    let Some(pod_mode) = view.pod_mode(pod) else {
        step("steer_inbound", format!("{dst} is not in INBOUND: no enrolled pod has it, nothing is steered"));
        return Explanation { steps, outcome: Outcome::NotEnrolled };
    };
    let outcome = steer(view, &mut step, pod_mode, src, dst, port);
    Explanation { steps, outcome }
}

/// `policy_ingress`: the drop reason, if it drops.
fn policy(view: &impl View, step: &mut impl FnMut(&'static str, String), pod: Addr, src: IpAddr, port: u16) -> Option<u32> {
    let p = "policy_ingress";
    let Some(version) = view.policy_version(pod) else {
        step(p, "no entry in POLICY_PODS: no AuthorizationPolicy selects the pod, every packet passes".into());
        return None;
    };
    let bits = addr_bits(src.to_canonical());
    let longest = |port: u16| {
        view.policy_entries(version, port).into_iter().filter(|(prefix, _)| prefix.contains(bits)).max_by_key(|(prefix, _)| prefix.len)
    };
    let (class, found) = match longest(port) {
        Some(f) => (format!("port {port}"), Some(f)),
        None => ("any other port".to_string(), longest(0)),
    };
    let meta = view.policy_meta(version);
    let (Some((prefix, value)), Some(meta)) = (found, meta) else {
        step(p, format!("policy version {version} has no entry for {src} ({class}) or no POLICY_META: inconsistent, fail closed"));
        return Some(drop_reason::POLICY_UNKNOWN);
    };
    if meta.pod != pod {
        step(p, format!("policy version {version} belongs to another pod in POLICY_META: inconsistent, fail closed"));
        return Some(drop_reason::POLICY_UNKNOWN);
    }
    let decided_by = if value.policy == u32::MAX { String::new() } else { format!(", decided by policy #{}", value.policy) };
    step(p, format!("version {version}, {class}, longest source prefix {prefix}: {}{decided_by}", verdict::name(value.verdict)));
    match value.verdict {
        verdict::ALLOW => None,
        verdict::DENY => Some(drop_reason::POLICY_DENY),
        verdict::NO_MATCH if meta.flags & POLICY_HAS_ALLOW != 0 => {
            step(p, "no rule matched and an ALLOW policy selects the pod: default deny".into());
            Some(drop_reason::POLICY_NO_ALLOW_MATCH)
        }
        verdict::NO_MATCH => None,
        _ => Some(drop_reason::POLICY_UNKNOWN),
    }
}

/// `steer_inbound`, for a pod (at `dst`) whose mode is `pod_mode`.
fn steer(
    view: &impl View,
    step: &mut impl FnMut(&'static str, String),
    pod_mode: u32,
    src: IpAddr,
    dst: IpAddr,
    port: u16,
) -> Outcome {
    let s = "steer_inbound";
    let (pod, from) = (addr_from_ip(dst.to_canonical()), addr_from_ip(src.to_canonical()));
    let passes = if src.to_canonical() == dst.to_canonical() {
        Some("the pod calling itself (or the agent's forward inside it)".to_string())
    } else if [HBONE_PORT, OUTBOUND_PORT, INBOUND_PORT].contains(&port) {
        Some(format!("port {port} is the agent's own"))
    } else if view.exempt(from) {
        Some(format!("{src} is in INBOUND_EXEMPT_SRC (the kubelet's probes)"))
    } else {
        None
    };
    if let Some(why) = passes {
        step(s, format!("passed untouched: {why}"));
        return Outcome::Delivered;
    }
    let (mode, whose) = match view.port_mode(pod, port) {
        Some(m) => (m, format!("port {port}'s own mode (INBOUND_PORTS)")),
        None => (pod_mode, "the pod's mode (INBOUND)".to_string()),
    };
    step(s, format!("{}: {whose}", inbound_mode::name(mode)));
    match mode {
        inbound_mode::BYPASS => Outcome::Delivered,
        inbound_mode::STRICT => Outcome::Dropped(drop_reason::STRICT_PLAINTEXT),
        _ if view.has_listener(pod) => Outcome::SteeredToAgent,
        _ => {
            step(s, "no agent listener in INBOUND_LISTENERS (agent down?): fail closed".into());
            Outcome::Dropped(drop_reason::NO_AGENT_LISTENER)
        }
    }
}

/// The view of an agent's pinned maps.
pub struct Pinned {
    inbound: HashMap<MapData, Addr, InboundRule>,
    ports: HashMap<MapData, DestKey, InboundRule>,
    exempt: HashMap<MapData, Addr, u32>,
    listeners: SockHash<MapData, Addr>,
    policy_pods: HashMap<MapData, Addr, u32>,
    policy_meta: HashMap<MapData, u32, PolicyMeta>,
    policy_rules: LpmTrie<MapData, PolicyKey, PolicyValue>,
}

impl Pinned {
    pub fn open(bpffs: &Path) -> Result<Pinned, DumpError> {
        let open = |name: &str| {
            let path = bpffs.join(name);
            MapData::from_pin(&path).map_err(|source| DumpError::Read { path, source })
        };
        let err = |name: &str| {
            let path = bpffs.join(name);
            move |source| DumpError::Read { path, source }
        };
        Ok(Pinned {
            inbound: HashMap::try_from(Map::HashMap(open(MAP_INBOUND)?)).map_err(err(MAP_INBOUND))?,
            ports: HashMap::try_from(Map::HashMap(open(MAP_INBOUND_PORTS)?)).map_err(err(MAP_INBOUND_PORTS))?,
            exempt: HashMap::try_from(Map::HashMap(open(MAP_INBOUND_EXEMPT_SRC)?)).map_err(err(MAP_INBOUND_EXEMPT_SRC))?,
            listeners: SockHash::try_from(Map::SockHash(open(MAP_INBOUND_LISTENERS)?))
                .map_err(err(MAP_INBOUND_LISTENERS))?,
            policy_pods: HashMap::try_from(Map::HashMap(open(MAP_POLICY_PODS)?)).map_err(err(MAP_POLICY_PODS))?,
            policy_meta: HashMap::try_from(Map::HashMap(open(MAP_POLICY_META)?)).map_err(err(MAP_POLICY_META))?,
            policy_rules: LpmTrie::try_from(Map::LpmTrie(open(MAP_POLICY_RULES)?)).map_err(err(MAP_POLICY_RULES))?,
        })
    }
}

impl View for Pinned {
    fn pod_mode(&self, pod: Addr) -> Option<u32> {
        self.inbound.get(&pod, 0).ok().map(|r| r.mode)
    }
    fn port_mode(&self, pod: Addr, port: u16) -> Option<u32> {
        self.ports.get(&DestKey { addr: pod, port_be: port.to_be(), _pad: [0; 2] }, 0).ok().map(|r| r.mode)
    }
    fn exempt(&self, src: Addr) -> bool {
        self.exempt.get(&src, 0).is_ok()
    }
    fn has_listener(&self, pod: Addr) -> bool {
        self.listeners.keys().filter_map(Result::ok).any(|k| k == pod)
    }
    fn policy_version(&self, pod: Addr) -> Option<u32> {
        self.policy_pods.get(&pod, 0).ok()
    }
    fn policy_meta(&self, version: u32) -> Option<PolicyMeta> {
        self.policy_meta.get(&version, 0).ok()
    }
    fn policy_entries(&self, version: u32, port: u16) -> Vec<(Prefix, PolicyValue)> {
        self.policy_rules
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.data().version == version && u16::from_be(k.data().port_be) == port)
            .map(|(k, v)| {
                (super::dump::policy_prefix(&k), v)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
