//! ServiceEntry and WorkloadEntry as the workload API's Service and Workload, as
//! istiod's ambient index builds them: a Service per host (addresses, ports, SANs),
//! a Workload per WorkloadEntry and per inline endpoint. Which WorkloadEntries a
//! ServiceEntry's `workloadSelector` picks is the caller's to decide; [`ports_for`]
//! gives the port list of such a pick.
use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::controlplane::networking::service_entry::{Spec, WorkloadEntrySpec};
use crate::proto::workload as wl;

/// The cluster our objects come from, as in pod uids.
use crate::controlplane::model::{canonical, ip_bytes, CLUSTER_ID};

/// Label that puts a WorkloadEntry in the HBONE mesh (`http`), as istiod reads it.
pub const TUNNEL_LABEL: &str = "networking.istio.io/tunnel";

/// `Kubernetes/networking.istio.io/WorkloadEntry/<ns>/<name>` (istiod's form).
pub fn workload_entry_uid(namespace: &str, name: &str) -> String {
    format!("{CLUSTER_ID}/networking.istio.io/WorkloadEntry/{namespace}/{name}")
}

/// `Kubernetes/networking.istio.io/ServiceEntry/<ns>/<name>/<address>`: an inline
/// endpoint (istiod's form).
pub fn service_entry_endpoint_uid(namespace: &str, name: &str, address: &str) -> String {
    format!("{CLUSTER_ID}/networking.istio.io/ServiceEntry/{namespace}/{name}/{address}")
}


/// An address, or a CIDR that names one address (`/32`, `/128`); wider blocks are
/// not service addresses.
fn single_address(a: &str) -> Option<IpAddr> {
    match a.split_once('/') {
        None => a.parse().ok(),
        Some((ip, len)) => {
            let ip: IpAddr = ip.parse().ok()?;
            let full = if ip.is_ipv4() { "32" } else { "128" };
            (len == full).then_some(ip)
        }
    }
}

/// One Service per host, keyed `<namespace>/<host>` like Kubernetes Services.
/// Hosts are as written (a ServiceEntry's hosts are not namespace-relative).
pub fn services(namespace: &str, name: &str, spec: &Spec) -> Vec<(String, wl::Service)> {
    let addresses: Vec<wl::NetworkAddress> = spec
        .addresses
        .iter()
        .filter_map(|a| single_address(a))
        .map(|ip| wl::NetworkAddress { network: String::new(), address: ip_bytes(&ip) })
        .collect();
    let ports: Vec<wl::Port> = spec
        .ports
        .iter()
        .map(|p| wl::Port { service_port: p.number, target_port: p.target_port.filter(|t| *t != 0).unwrap_or(p.number) })
        .collect();
    spec.hosts
        .iter()
        .map(|host| {
            let service = wl::Service {
                name: name.to_string(),
                namespace: namespace.to_string(),
                hostname: host.clone(),
                addresses: addresses.clone(),
                ports: ports.clone(),
                subject_alt_names: spec.subject_alt_names.clone(),
            };
            (format!("{namespace}/{host}"), service)
        })
        .collect()
}

/// The ports of the ServiceEntry `spec` on an endpoint whose `ports` map service port
/// names to its own numbers (else the service's `targetPort`, else its number).
pub fn ports_for(spec: &Spec, endpoint_ports: &BTreeMap<String, u32>) -> wl::PortList {
    let ports = spec
        .ports
        .iter()
        .map(|p| {
            let target = endpoint_ports.get(&p.name).copied().or(p.target_port.filter(|t| *t != 0)).unwrap_or(p.number);
            wl::Port { service_port: p.number, target_port: target }
        })
        .collect();
    wl::PortList { ports }
}

/// A WorkloadEntry as a Workload; its `services` are left for the caller (they come
/// from the ServiceEntries whose selectors pick it).
pub fn workload_entry(namespace: &str, name: &str, spec: &WorkloadEntrySpec, trust_domain: &str) -> wl::Workload {
    workload(workload_entry_uid(namespace, name), namespace, name, spec, trust_domain)
}

/// Each inline endpoint of a ServiceEntry as a Workload, member of the entry's
/// Services (keyed as [`services`] keys them).
pub fn endpoint_workloads(namespace: &str, name: &str, spec: &Spec, trust_domain: &str) -> Vec<wl::Workload> {
    spec.endpoints()
        .iter()
        .map(|e| {
            let mut w = workload(service_entry_endpoint_uid(namespace, name, &e.address), namespace, name, e, trust_domain);
            let ports = ports_for(spec, &e.ports);
            w.services = spec.hosts.iter().map(|h| (format!("{namespace}/{h}"), ports.clone())).collect();
            w
        })
        .collect()
}

fn workload(uid: String, namespace: &str, name: &str, e: &WorkloadEntrySpec, trust_domain: &str) -> wl::Workload {
    let ip = e.address.parse::<IpAddr>().ok();
    let hostname = if ip.is_none() && !e.address.starts_with("unix://") { e.address.clone() } else { String::new() };
    let (canonical_name, canonical_revision) = canonical(&e.labels, name);
    let hbone = e.labels.get(TUNNEL_LABEL).is_some_and(|v| v == "http");
    wl::Workload {
        uid,
        name: name.to_string(),
        namespace: namespace.to_string(),
        addresses: ip.as_ref().map(ip_bytes).into_iter().collect(),
        hostname,
        network: e.network.clone(),
        tunnel_protocol: if hbone { wl::TunnelProtocol::Hbone } else { wl::TunnelProtocol::None } as i32,
        trust_domain: trust_domain.to_string(),
        service_account: if e.service_account.is_empty() { "default".into() } else { e.service_account.clone() },
        canonical_name,
        canonical_revision,
        workload_type: wl::WorkloadType::Pod as i32,
        workload_name: name.to_string(),
        cluster_id: CLUSTER_ID.into(),
        ..Default::default()
    }
}
