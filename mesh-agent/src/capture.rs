//! What one pod asks of the data path: its mTLS mode (PeerAuthentication) and the
//! Istio traffic annotations that exempt ports from capture. Pure: parsed from the
//! enrollment event, turned into kernel rules by `kernel`, read by the proxy.
//!
//! Where the mode comes from: the enrollment event's `peer_authentication` and
//! `port_level_mtls` fields, set by whoever enrolls the pod (the CNI hook, the test
//! bed), made stricter by the PeerAuthentication the control plane sends in its DENY
//! form ([`StrictPorts`], derived in `authz::enforce`): per port, STRICT wins.
use std::collections::{BTreeMap, BTreeSet};

use mesh_common::inbound_mode;
use serde::{Deserialize, Serialize};

/// Istio's annotation: inbound ports the mesh leaves alone (comma-separated).
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// Istio's annotation: outbound destination ports the mesh leaves alone.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";

/// PeerAuthentication's mTLS mode, as the workload's server side applies it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// HBONE and plaintext both accepted; plaintext goes through the agent.
    #[default]
    Permissive,
    /// Only HBONE: plaintext is dropped in the kernel.
    Strict,
    /// mTLS not required; for the data path the same as PERMISSIVE.
    Disable,
}

/// What happens to plaintext for one port of the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortAction {
    /// Not captured: the application gets it directly (`excludeInboundPorts`).
    Bypass,
    /// Captured under this mode.
    Mode(MtlsMode),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InboundConfig {
    pub mode: MtlsMode,
    /// PeerAuthentication `portLevelMtls`: overrides of `mode` by port.
    pub port_modes: BTreeMap<u16, MtlsMode>,
    /// `excludeInboundPorts`: wins over any mode.
    pub excluded_ports: BTreeSet<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutboundConfig {
    /// `excludeOutboundPorts`: connect() to these destination ports is never redirected.
    pub excluded_ports: BTreeSet<u16>,
}

/// Everything the data path needs to know about one pod beyond its addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodCapture {
    pub inbound: InboundConfig,
    pub outbound: OutboundConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("annotation {annotation}: {value:?} is not a comma-separated list of ports 1-65535")]
    Ports { annotation: &'static str, value: String },
    #[error("port_level_mtls: {0:?} is not a port 1-65535")]
    PortLevel(String),
}

impl PodCapture {
    /// Reads the pod's mode, port-level modes and annotations. Unknown annotations
    /// are ignored; a malformed one of ours is an error (as Istio's webhook rejects it).
    pub fn from_pod(
        mode: Option<MtlsMode>,
        port_modes: &BTreeMap<String, MtlsMode>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<PodCapture, Error> {
        // JSON object keys are strings; the ports are checked here.
        let port_modes = port_modes
            .iter()
            .map(|(p, m)| match p.trim().parse::<u16>() {
                Ok(port) if port != 0 => Ok((port, *m)),
                _ => Err(Error::PortLevel(p.clone())),
            })
            .collect::<Result<BTreeMap<u16, MtlsMode>, Error>>()?;
        let ports = |annotation: &'static str| match annotations.get(annotation) {
            None => Ok(BTreeSet::new()),
            Some(v) => parse_ports(v).ok_or_else(|| Error::Ports { annotation, value: v.clone() }),
        };
        Ok(PodCapture {
            inbound: InboundConfig {
                mode: mode.unwrap_or_default(),
                port_modes,
                excluded_ports: ports(EXCLUDE_INBOUND_PORTS)?,
            },
            outbound: OutboundConfig { excluded_ports: ports(EXCLUDE_OUTBOUND_PORTS)? },
        })
    }
}

impl InboundConfig {
    /// The action for plaintext to `port`: an exclusion first, then the port's
    /// mode, then the pod's mode. The kernel applies the same precedence.
    pub fn action(&self, port: u16) -> PortAction {
        if self.excluded_ports.contains(&port) {
            return PortAction::Bypass;
        }
        PortAction::Mode(self.port_modes.get(&port).copied().unwrap_or(self.mode))
    }

    /// The pod's entry of the kernel's `INBOUND` map.
    pub fn kernel_mode(&self) -> u32 {
        kernel_mode(self.mode)
    }

    /// The entries of the kernel's `INBOUND_PORTS` map for one address of the pod:
    /// (port, `inbound_mode`) for every port whose action differs from the pod's.
    pub fn kernel_port_rules(&self) -> BTreeMap<u16, u32> {
        let mut rules: BTreeMap<u16, u32> =
            self.port_modes.iter().map(|(p, m)| (*p, kernel_mode(*m))).collect();
        for p in &self.excluded_ports {
            rules.insert(*p, inbound_mode::BYPASS);
        }
        rules
    }
}

/// The ports on which policy requires mTLS (PeerAuthentication STRICT as the
/// workload API carries it: a DENY of connections without a peer identity).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StrictPorts {
    #[default]
    None,
    /// These ports.
    Only(BTreeSet<u16>),
    /// Every port but these.
    AllBut(BTreeSet<u16>),
}

impl StrictPorts {
    pub fn contains(&self, port: u16) -> bool {
        match self {
            StrictPorts::None => false,
            StrictPorts::Only(p) => p.contains(&port),
            StrictPorts::AllBut(p) => !p.contains(&port),
        }
    }

    /// STRICT where either is.
    pub fn union(self, other: StrictPorts) -> StrictPorts {
        use StrictPorts::*;
        match (self, other) {
            (None, x) | (x, None) => x,
            (Only(a), Only(b)) => Only(a.union(&b).copied().collect()),
            (AllBut(e), Only(d)) | (Only(d), AllBut(e)) => AllBut(e.difference(&d).copied().collect()),
            (AllBut(a), AllBut(b)) => AllBut(a.intersection(&b).copied().collect()),
        }
    }

    /// The ports named (to tell apart from the rest).
    fn named(&self) -> impl Iterator<Item = u16> + '_ {
        match self {
            StrictPorts::None => None,
            StrictPorts::Only(p) | StrictPorts::AllBut(p) => Some(p.iter().copied()),
        }
        .into_iter()
        .flatten()
    }
}

impl InboundConfig {
    /// This (the enrollment's) configuration with STRICT wherever `strict` says:
    /// per port the stricter of the two. Exclusions stay: an excluded port never
    /// reaches the mesh, so no mode applies to it (as with Istio's sidecars).
    pub fn stricter(&self, strict: &StrictPorts) -> InboundConfig {
        let mode = if matches!(strict, StrictPorts::AllBut(_)) { MtlsMode::Strict } else { self.mode };
        let of = |p: u16| if strict.contains(p) { MtlsMode::Strict } else { self.port_modes.get(&p).copied().unwrap_or(self.mode) };
        let port_modes = self
            .port_modes
            .keys()
            .copied()
            .chain(strict.named())
            .map(|p| (p, of(p)))
            .filter(|(_, m)| *m != mode)
            .collect();
        InboundConfig { mode, port_modes, excluded_ports: self.excluded_ports.clone() }
    }
}

fn kernel_mode(m: MtlsMode) -> u32 {
    match m {
        MtlsMode::Permissive => inbound_mode::PERMISSIVE,
        MtlsMode::Strict => inbound_mode::STRICT,
        MtlsMode::Disable => inbound_mode::DISABLE,
    }
}

/// `"8080, 9090"` → {8080, 9090}; empty → {}; anything else → None.
fn parse_ports(v: &str) -> Option<BTreeSet<u16>> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u16>().ok().filter(|p| *p != 0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn annotations_and_modes_are_read() {
        let c = PodCapture::from_pod(
            Some(MtlsMode::Strict),
            &[("9090".to_string(), MtlsMode::Permissive)].into_iter().collect(),
            &ann(&[(EXCLUDE_INBOUND_PORTS, "8081, 8082"), (EXCLUDE_OUTBOUND_PORTS, "5432"), ("other", "x")]),
        )
        .unwrap();
        assert_eq!(c.inbound.action(8080), PortAction::Mode(MtlsMode::Strict));
        assert_eq!(c.inbound.action(9090), PortAction::Mode(MtlsMode::Permissive));
        assert_eq!(c.inbound.action(8082), PortAction::Bypass);
        assert_eq!(c.outbound.excluded_ports, [5432].into_iter().collect());
        assert_eq!(c.inbound.kernel_mode(), inbound_mode::STRICT);
        let rules = c.inbound.kernel_port_rules();
        assert_eq!(rules.get(&9090), Some(&inbound_mode::PERMISSIVE));
        assert_eq!(rules.get(&8081), Some(&inbound_mode::BYPASS));
        assert_eq!(rules.len(), 3);
    }

    #[test]
    fn defaults_are_permissive_and_capture_everything() {
        let c = PodCapture::from_pod(None, &BTreeMap::new(), &BTreeMap::new()).unwrap();
        assert_eq!(c.inbound.action(80), PortAction::Mode(MtlsMode::Permissive));
        assert!(c.inbound.kernel_port_rules().is_empty());
        assert!(c.outbound.excluded_ports.is_empty());
    }

    #[test]
    fn an_exclusion_wins_over_a_port_mode() {
        let c = PodCapture::from_pod(
            Some(MtlsMode::Strict),
            &[("8080".to_string(), MtlsMode::Strict)].into_iter().collect(),
            &ann(&[(EXCLUDE_INBOUND_PORTS, "8080")]),
        )
        .unwrap();
        assert_eq!(c.inbound.action(8080), PortAction::Bypass);
        assert_eq!(c.inbound.kernel_port_rules().get(&8080), Some(&inbound_mode::BYPASS));
    }

    #[test]
    fn bad_annotations_are_refused_with_their_name() {
        for bad in ["80x", "0", "70000", "80;81"] {
            let e = PodCapture::from_pod(None, &BTreeMap::new(), &ann(&[(EXCLUDE_OUTBOUND_PORTS, bad)])).unwrap_err();
            assert!(e.to_string().contains(EXCLUDE_OUTBOUND_PORTS), "{e}");
        }
        for bad in ["0", "http", "65536"] {
            let modes = [(bad.to_string(), MtlsMode::Strict)].into_iter().collect();
            assert!(PodCapture::from_pod(None, &modes, &BTreeMap::new()).is_err(), "{bad}");
        }
        let ok = PodCapture::from_pod(None, &BTreeMap::new(), &ann(&[(EXCLUDE_INBOUND_PORTS, " ")])).unwrap();
        assert!(ok.inbound.excluded_ports.is_empty());
    }

    #[test]
    fn policy_strict_ports_combine_with_the_enrollment_by_port() {
        let set = |p: &[u16]| p.iter().copied().collect::<BTreeSet<u16>>();
        let cni = |mode, ports: &[(u16, MtlsMode)], excluded: &[u16]| InboundConfig {
            mode,
            port_modes: ports.iter().copied().collect(),
            excluded_ports: set(excluded),
        };
        use MtlsMode::{Disable, Permissive, Strict};
        use StrictPorts::{AllBut, Only};
        type Case = (&'static str, InboundConfig, StrictPorts, InboundConfig);
        let cases: Vec<Case> = vec![
            ("nothing from policy", cni(Permissive, &[(80, Strict)], &[]), StrictPorts::None, cni(Permissive, &[(80, Strict)], &[])),
            ("policy STRICT everywhere", cni(Permissive, &[(80, Disable)], &[]), AllBut(set(&[])), cni(Strict, &[], &[])),
            ("policy exception, enrollment PERMISSIVE", cni(Permissive, &[], &[]), AllBut(set(&[8080])), cni(Strict, &[(8080, Permissive)], &[])),
            ("policy exception, enrollment STRICT", cni(Strict, &[], &[]), AllBut(set(&[8080])), cni(Strict, &[], &[])),
            ("policy exception, enrollment port STRICT", cni(Disable, &[(8080, Strict)], &[]), AllBut(set(&[8080, 9090])), cni(Strict, &[(9090, Disable)], &[])),
            ("policy ports only", cni(Permissive, &[], &[]), Only(set(&[9090])), cni(Permissive, &[(9090, Strict)], &[])),
            ("policy ports, enrollment STRICT with an open port", cni(Strict, &[(9090, Permissive)], &[]), Only(set(&[9090])), cni(Strict, &[], &[])),
            ("exclusions stay", cni(Permissive, &[], &[15020]), AllBut(set(&[])), cni(Strict, &[], &[15020])),
        ];
        for (what, cni, strict, want) in cases {
            let got = cni.stricter(&strict);
            assert_eq!(got, want, "{what}");
            for port in [80, 8080, 9090, 15020, 1] {
                let strict_here = strict.contains(port) || cni.action(port) == PortAction::Mode(Strict);
                let excluded = cni.excluded_ports.contains(&port);
                let got = got.action(port);
                assert_eq!(got == PortAction::Mode(Strict), strict_here && !excluded, "{what}: port {port}: {got:?}");
            }
        }
    }

    #[test]
    fn strict_port_sets_union() {
        let set = |p: &[u16]| p.iter().copied().collect::<BTreeSet<u16>>();
        use StrictPorts::{AllBut, None, Only};
        let all = [None, Only(set(&[1, 2])), Only(set(&[3])), AllBut(set(&[])), AllBut(set(&[1, 3])), AllBut(set(&[2, 3]))];
        for a in &all {
            for b in &all {
                let u = a.clone().union(b.clone());
                for port in 0..5 {
                    assert_eq!(u.contains(port), a.contains(port) || b.contains(port), "{a:?} + {b:?} at {port}: {u:?}");
                }
            }
        }
    }

    #[test]
    fn modes_read_as_istio_spells_them() {
        let m: BTreeMap<String, MtlsMode> = serde_json::from_str(r#"{"8080":"STRICT","9090":"DISABLE"}"#).unwrap();
        let c = PodCapture::from_pod(None, &m, &BTreeMap::new()).unwrap();
        assert_eq!(c.inbound.action(8080), PortAction::Mode(MtlsMode::Strict));
        assert_eq!(c.inbound.action(9090), PortAction::Mode(MtlsMode::Disable));
        assert_eq!(serde_json::from_str::<MtlsMode>(r#""PERMISSIVE""#).unwrap(), MtlsMode::Permissive);
    }
}
