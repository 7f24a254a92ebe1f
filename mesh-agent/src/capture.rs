//! What one pod asks of the data path: its mTLS mode (PeerAuthentication) and the
//! Istio traffic annotations that exempt ports from capture. Pure: parsed from the
//! enrollment event, turned into kernel rules by `kernel`, read by the proxy.
//!
//! Where the mode comes from: for now, the enrollment event's `peer_authentication`
//! and `port_level_mtls` fields, set by whoever enrolls the pod (the CNI hook, the
//! test bed). Computing them from PeerAuthentication resources is the control plane's
//! job and arrives with the identity issue; nothing here pretends to read them.
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
    fn modes_read_as_istio_spells_them() {
        let m: BTreeMap<String, MtlsMode> = serde_json::from_str(r#"{"8080":"STRICT","9090":"DISABLE"}"#).unwrap();
        let c = PodCapture::from_pod(None, &m, &BTreeMap::new()).unwrap();
        assert_eq!(c.inbound.action(8080), PortAction::Mode(MtlsMode::Strict));
        assert_eq!(c.inbound.action(9090), PortAction::Mode(MtlsMode::Disable));
        assert_eq!(serde_json::from_str::<MtlsMode>(r#""PERMISSIVE""#).unwrap(), MtlsMode::Permissive);
    }
}
