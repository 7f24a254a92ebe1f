//! Which workloads back a Service, on which ports, as Kubernetes computes it.
//!
//! - A Service **with a selector**: the pods of its namespace the selector picks. A
//!   named `targetPort` is resolved against each pod's own container ports (TCP, by
//!   name, as the endpoints controller and istiod's `FindPortName` do); a pod without
//!   that port is no endpoint of that service port, and a pod that resolves none of the
//!   Service's ports does not back the Service. The Service resource itself carries
//!   `target_port` 0 for a named port, as istiod sends it (`TargetPort.IntVal`), so the
//!   agent takes each endpoint's own number.
//! - A Service **without a selector**: its EndpointSlices (label
//!   `kubernetes.io/service-name`, same namespace), with the slices' port numbers. An
//!   endpoint whose `targetRef` is a Pod adds the Service to that pod's Workload; any
//!   other endpoint becomes a Workload of its own (istiod's `endpointSlicesBuilder`).
//!   Endpoints that are not ready, or terminating, are left out.
//!
//! The slices of Services with a selector are not read: Kubernetes' endpointslice
//! controller writes them from the same selector (pods only), and they change at every
//! pod readiness flip, which would re-encode pods for nothing.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::super::folder::{Objects, Pod, ServiceSpec, TargetPort};
use super::super::kube::{EndpointSlice, SERVICE_NAME_LABEL};
use super::{ip_bytes, service_hostname};
use crate::proto::workload as wl;

/// A TCP port of a Service: what the Service resource serves, and the container port
/// name each endpoint pod resolves when the target is named.
#[derive(Clone, Debug)]
pub struct ServicePort<'a> {
    pub port: wl::Port,
    pub target_name: Option<&'a str>,
}

fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p.eq_ignore_ascii_case("TCP"))
}

/// The Service's TCP ports (UDP and SCTP are not proxied); `targetPort` unset means the
/// port itself, a named one is 0 here.
pub fn service_ports(spec: &ServiceSpec) -> Vec<ServicePort<'_>> {
    spec.ports
        .iter()
        .filter(|p| is_tcp(p.protocol.as_deref()))
        .map(|p| {
            let (target_port, target_name) = match &p.target_port {
                None => (u32::from(p.port), None),
                Some(TargetPort::Number(n)) => (u32::from(*n), None),
                Some(TargetPort::Name(name)) => (0, Some(name.as_str())),
            };
            ServicePort { port: wl::Port { service_port: u32::from(p.port), target_port }, target_name }
        })
        .collect()
}

/// The ports `pod` serves for a Service with these ports, or `None` when it backs
/// none of them (every target is named and the pod has none of the names).
pub fn pod_ports(pod: &Pod, ports: &[ServicePort<'_>]) -> Option<Vec<wl::Port>> {
    let resolved: Vec<wl::Port> = ports
        .iter()
        .filter_map(|p| match p.target_name {
            None => Some(p.port),
            Some(name) => pod
                .tcp_port_named(name)
                .map(|n| wl::Port { service_port: p.port.service_port, target_port: u32::from(n) }),
        })
        .collect();
    (!resolved.is_empty() || ports.is_empty()).then_some(resolved)
}

/// What the EndpointSlices of Services without a selector give.
#[derive(Debug, Default)]
pub struct SliceEndpoints {
    /// By pod `(namespace, name)`: the Services its slices put it in (resource name
    /// `<ns>/<hostname>`), with ports. A pod's entry goes into its Workload, so the
    /// model compares it to the last build's to know whether to encode the pod again.
    pub pods: BTreeMap<(String, String), BTreeMap<String, Vec<wl::Port>>>,
    /// Workloads of endpoints that are not pods, by uid.
    pub others: BTreeMap<String, wl::Workload>,
}

/// `Kubernetes/discovery.k8s.io/EndpointSlice/<ns>/<slice>/<first address>`: istiod's uid
/// for an endpoint that is not a pod.
pub fn endpoint_uid(namespace: &str, slice: &str, address: &str) -> String {
    format!("Kubernetes/discovery.k8s.io/EndpointSlice/{namespace}/{slice}/{address}")
}

/// The slice's ports as the Service's: each slice port names a Service port (by the
/// Service port's name, empty for a single unnamed port) and gives the number the
/// endpoints listen on. TCP only; a slice port that names no Service port is skipped.
fn slice_ports(es: &EndpointSlice, spec: &ServiceSpec) -> Vec<wl::Port> {
    let mut ports: Vec<wl::Port> = Vec::new();
    for sp in es.ports.iter().filter(|p| is_tcp(p.protocol.as_deref())) {
        let Some(target) = sp.port else { continue };
        let name = sp.name.as_deref().unwrap_or("");
        let svc_port = spec
            .ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == name && is_tcp(p.protocol.as_deref()));
        if let Some(p) = svc_port {
            let service_port = u32::from(p.port);
            if !ports.iter().any(|q| q.service_port == service_port) {
                ports.push(wl::Port { service_port, target_port: u32::from(target) });
            }
        }
    }
    ports.sort_by_key(|p| p.service_port);
    ports
}

/// Reads every EndpointSlice of a Service without a selector.
pub fn from_slices(objects: &Objects) -> SliceEndpoints {
    let mut out = SliceEndpoints::default();
    for ((ns, slice), es) in &objects.endpoint_slices {
        let Some(svc_name) = es.metadata.labels.get(SERVICE_NAME_LABEL) else { continue };
        // A slice for a Service that does not exist (yet) serves nothing.
        let Some(svc) = objects.services.get(&(ns.clone(), svc_name.clone())) else { continue };
        if !svc.spec.selector.is_empty() || es.address_type == "FQDN" {
            continue;
        }
        let ports = slice_ports(es, &svc.spec);
        if ports.is_empty() {
            continue; // nothing of the Service is reachable through this slice
        }
        let key = format!("{ns}/{}", service_hostname(ns, svc_name));
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for ep in es.endpoints.iter().filter(|ep| ep.conditions.takes_traffic()) {
            match &ep.target_ref {
                Some(r) if r.kind == "Pod" && r.namespace.as_deref().is_none_or(|n| n == ns) => {
                    let services = out.pods.entry((ns.clone(), r.name.clone())).or_default();
                    let list = services.entry(key.clone()).or_default();
                    for p in &ports {
                        if !list.iter().any(|q| q.service_port == p.service_port) {
                            list.push(*p);
                        }
                    }
                    list.sort_by_key(|p| p.service_port);
                }
                _ => {
                    let Some(first) = ep.addresses.first() else { continue };
                    if !seen.insert(first) {
                        tracing::warn!(slice = %format!("{ns}/{slice}"), address = %first,
                            "EndpointSlice {ns}/{slice} lists {first} twice; the first endpoint is used");
                        continue;
                    }
                    // Checked when the slice was read; FQDN slices are skipped above.
                    let addresses: Vec<Vec<u8>> =
                        ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()).map(|ip| ip_bytes(&ip)).collect();
                    let uid = endpoint_uid(ns, slice, first);
                    let w = wl::Workload {
                        uid: uid.clone(),
                        name: slice.clone(),
                        namespace: ns.clone(),
                        addresses,
                        // Nothing is known of it: no identity, plain TCP, no node (istiod sets
                        // none either: the agent of that node must not take it as local).
                        tunnel_protocol: wl::TunnelProtocol::None as i32,
                        services: [(key.clone(), wl::PortList { ports: ports.clone() })].into_iter().collect(),
                        cluster_id: super::CLUSTER_ID.into(),
                        ..Default::default()
                    };
                    out.others.insert(uid, w);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
