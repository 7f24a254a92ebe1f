//! Where an outbound connection goes: a pure decision from the original destination
//! and the [`State`], free of I/O so it is table-tested.
//!
//! Precedence: a service VIP first (pick an endpoint), then a workload address, then
//! passthrough (an address the mesh does not know, or a workload outside the mesh).
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::state::{Identity, Service, State, TunnelProtocol, Workload};

/// The outcome of resolving an original destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Tunnel to `workload`'s HBONE port; CONNECT to `addr`.
    Hbone { addr: SocketAddr, workload: Arc<Workload>, identity: Identity, service: Option<Arc<Service>> },
    /// Connect straight to `addr` from the pod (plaintext, as the app asked).
    Passthrough { addr: SocketAddr, workload: Option<Arc<Workload>>, service: Option<Arc<Service>> },
}

impl Destination {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Destination::Hbone { addr, .. } | Destination::Passthrough { addr, .. } => *addr,
        }
    }

    pub fn service(&self) -> Option<&Arc<Service>> {
        match self {
            Destination::Hbone { service, .. } | Destination::Passthrough { service, .. } => service.as_ref(),
        }
    }

    pub fn workload(&self) -> Option<&Arc<Workload>> {
        match self {
            Destination::Hbone { workload, .. } => Some(workload),
            Destination::Passthrough { workload, .. } => workload.as_ref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("service {service} has no port {port}; check the Service's ports")]
    NoServicePort { service: String, port: u16 },
    #[error("service {service} has no ready endpoint for port {port}")]
    NoEndpoints { service: String, port: u16 },
}

/// Resolves the original destination `orig`. `pick` chooses among a service's usable
/// endpoints (taken modulo their count), so callers decide round robin or random.
pub fn resolve(state: &State, orig: SocketAddr, pick: usize) -> Result<Destination, ResolveError> {
    let ip = orig.ip().to_canonical();
    if let Some(svc) = state.find_service_by_vip(ip) {
        return resolve_service(state, svc, orig, pick);
    }
    let orig = SocketAddr::new(ip, orig.port());
    match state.find_workload_by_ip(ip) {
        Some(w) if w.protocol == TunnelProtocol::Hbone => {
            Ok(Destination::Hbone { addr: orig, identity: w.identity(), workload: w, service: None })
        }
        workload => Ok(Destination::Passthrough { addr: orig, workload, service: None }),
    }
}

fn resolve_service(
    state: &State,
    svc: Arc<Service>,
    orig: SocketAddr,
    pick: usize,
) -> Result<Destination, ResolveError> {
    let port = orig.port();
    let sp = svc
        .ports
        .iter()
        .find(|p| p.service_port == port)
        .ok_or_else(|| ResolveError::NoServicePort { service: svc.resource_name(), port })?;
    // (workload, its address, target port) for every endpoint that can take this port;
    // BTreeMap order keeps the list stable, so `pick` is deterministic.
    let candidates: Vec<(Arc<Workload>, IpAddr, u16)> = svc
        .endpoints
        .iter()
        .filter_map(|(uid, overrides)| {
            // A pod that is not ready takes no traffic through its services.
            let w = state.find_workload(uid).filter(|w| w.healthy)?;
            let target = overrides.get(&port).copied().unwrap_or(sp.target_port);
            if target == 0 {
                return None;
            }
            let ip = w
                .addresses
                .iter()
                .find(|a| a.is_ipv4() == orig.is_ipv4())
                .or_else(|| w.addresses.first())
                .copied()?;
            Some((w, ip, target))
        })
        .collect();
    // Prefer mesh endpoints; fall back to plaintext ones only when there are none.
    let hbone: Vec<_> = candidates.iter().filter(|(w, _, _)| w.protocol == TunnelProtocol::Hbone).collect();
    let pool: Vec<_> = if hbone.is_empty() { candidates.iter().collect() } else { hbone };
    if pool.is_empty() {
        return Err(ResolveError::NoEndpoints { service: svc.resource_name(), port });
    }
    let (w, ip, target) = pool[pick % pool.len()];
    let addr = SocketAddr::new(*ip, *target);
    Ok(match w.protocol {
        TunnelProtocol::Hbone => {
            Destination::Hbone { addr, identity: w.identity(), workload: w.clone(), service: Some(svc) }
        }
        TunnelProtocol::None => Destination::Passthrough { addr, workload: Some(w.clone()), service: Some(svc) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ServicePort;
    use std::collections::BTreeMap;

    fn wl(name: &str, ip: &str, protocol: TunnelProtocol) -> Workload {
        Workload {
            uid: format!("Kubernetes//Pod/default/{name}"),
            name: name.into(),
            namespace: "default".into(),
            service_account: name.into(),
            trust_domain: "cluster.local".into(),
            node: "node1".into(),
            addresses: vec![ip.parse().unwrap()],
            protocol,
            labels: BTreeMap::new(),
            healthy: true,
        }
    }

    fn svc(name: &str, vip: &str, ports: &[(u16, u16)], endpoints: &[(&str, &[(u16, u16)])]) -> Service {
        Service {
            name: name.into(),
            namespace: "default".into(),
            hostname: format!("{name}.default.svc.cluster.local"),
            vips: vec![vip.parse().unwrap()],
            ports: ports.iter().map(|&(service_port, target_port)| ServicePort { service_port, target_port }).collect(),
            endpoints: endpoints
                .iter()
                .map(|(n, o)| (format!("Kubernetes//Pod/default/{n}"), o.iter().copied().collect()))
                .collect(),
        }
    }

    fn state() -> State {
        let s = State::default();
        s.upsert_workload(wl("b1", "10.0.0.11", TunnelProtocol::Hbone));
        s.upsert_workload(wl("b2", "10.0.0.12", TunnelProtocol::Hbone));
        s.upsert_workload(wl("legacy", "10.0.0.20", TunnelProtocol::None));
        // echo: 80 -> 8080; b2 overrides 80 -> 9090.
        s.upsert_service(svc("echo", "10.96.0.1", &[(80, 8080)], &[("b1", &[]), ("b2", &[(80, 9090)])]));
        // mixed: one mesh and one plain endpoint.
        s.upsert_service(svc("mixed", "10.96.0.2", &[(80, 8080)], &[("b1", &[]), ("legacy", &[])]));
        s.upsert_service(svc("plain", "10.96.0.3", &[(80, 8080)], &[("legacy", &[])]));
        s.upsert_service(svc("empty", "10.96.0.4", &[(80, 8080)], &[("gone", &[])]));
        // named target port (0) resolved only by a per-endpoint override.
        s.upsert_service(svc("named", "10.96.0.5", &[(80, 0)], &[("b1", &[]), ("b2", &[(80, 7070)])]));
        // starting: b1 and a pod that is not ready yet; only-starting: just that pod.
        s.upsert_workload(Workload { healthy: false, ..wl("b3", "10.0.0.13", TunnelProtocol::Hbone) });
        s.upsert_service(svc("starting", "10.96.0.6", &[(80, 8080)], &[("b1", &[]), ("b3", &[])]));
        s.upsert_service(svc("only-starting", "10.96.0.7", &[(80, 8080)], &[("b3", &[])]));
        s
    }

    /// Short description of an outcome: `hbone <workload> <addr>` / `pass <addr>` / error.
    fn show(r: Result<Destination, ResolveError>) -> String {
        match r {
            Ok(Destination::Hbone { addr, workload, identity, service }) => {
                assert_eq!(identity, workload.identity());
                let svc = service.map(|s| format!(" via {}", s.name)).unwrap_or_default();
                format!("hbone {} {addr}{svc}", workload.name)
            }
            Ok(Destination::Passthrough { addr, workload, service }) => {
                let w = workload.map(|w| format!(" {}", w.name)).unwrap_or_default();
                let svc = service.map(|s| format!(" via {}", s.name)).unwrap_or_default();
                format!("pass{w} {addr}{svc}")
            }
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn table() {
        let s = state();
        let cases: &[(&str, usize, &str)] = &[
            // service VIP: endpoint chosen by pick, port from override else target_port
            ("10.96.0.1:80", 0, "hbone b1 10.0.0.11:8080 via echo"),
            ("10.96.0.1:80", 1, "hbone b2 10.0.0.12:9090 via echo"),
            ("10.96.0.1:80", 2, "hbone b1 10.0.0.11:8080 via echo"),
            ("10.96.0.1:81", 0, "error: service default/echo.default.svc.cluster.local has no port 81; check the Service's ports"),
            // mesh endpoints preferred over plaintext ones
            ("10.96.0.2:80", 1, "hbone b1 10.0.0.11:8080 via mixed"),
            ("10.96.0.3:80", 0, "pass legacy 10.0.0.20:8080 via plain"),
            ("10.96.0.4:80", 0, "error: service default/empty.default.svc.cluster.local has no ready endpoint for port 80"),
            ("10.96.0.5:80", 0, "hbone b2 10.0.0.12:7070 via named"),
            ("10.96.0.5:80", 1, "hbone b2 10.0.0.12:7070 via named"),
            // a pod that is not ready is never picked through its service, but still
            // reached by its own address
            ("10.96.0.6:80", 0, "hbone b1 10.0.0.11:8080 via starting"),
            ("10.96.0.6:80", 1, "hbone b1 10.0.0.11:8080 via starting"),
            ("10.96.0.7:80", 0, "error: service default/only-starting.default.svc.cluster.local has no ready endpoint for port 80"),
            ("10.0.0.13:8080", 0, "hbone b3 10.0.0.13:8080"),
            // workload addresses: mesh -> same ip:port over HBONE, otherwise passthrough
            ("10.0.0.11:8080", 0, "hbone b1 10.0.0.11:8080"),
            ("10.0.0.20:5432", 0, "pass legacy 10.0.0.20:5432"),
            ("192.0.2.1:443", 0, "pass 192.0.2.1:443"),
            ("[::ffff:10.0.0.12]:80", 0, "hbone b2 10.0.0.12:80"),
        ];
        for (orig, pick, want) in cases {
            let got = show(resolve(&s, orig.parse().unwrap(), *pick));
            assert_eq!(&got, want, "resolve({orig}, pick {pick})");
        }
    }
}
