//! ServiceEntry (a service the registry does not know, with its endpoints or a
//! selector of workloads) and WorkloadEntry (a workload that is not a pod), checked as
//! Istio's `ValidateServiceEntry` and `validateWorkloadEntry` do. A ServiceEntry's
//! inline endpoints are WorkloadEntry specs.
use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::check::{self, at, on, Check, Protocol};
use super::{Labels, Port};
use crate::controlplane::folder::Metadata;

pub type ServiceEntry = super::Object<Spec>;
pub type WorkloadEntry = super::Object<WorkloadEntrySpec>;

impl super::SpecCheck for Spec {
    fn check(&self, meta: &Metadata) -> Check {
        self.validate(super::namespace_of(meta))
    }
}

impl super::SpecCheck for WorkloadEntrySpec {
    fn check(&self, _: &Metadata) -> Check {
        self.validate("spec", None, true)
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    #[default]
    MeshExternal,
    MeshInternal,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    #[default]
    None,
    Static,
    Dns,
    DnsRoundRobin,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub location: Location,
    #[serde(default)]
    pub resolution: Resolution,
    /// `None` when absent, to tell it from an empty list as Istio does.
    #[serde(default)]
    pub endpoints: Option<Vec<WorkloadEntrySpec>>,
    #[serde(default)]
    pub workload_selector: Option<Labels>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub locality: String,
    #[serde(default)]
    pub weight: u32,
    #[serde(default, rename = "serviceAccount")]
    pub service_account: String,
}

impl Spec {
    pub fn endpoints(&self) -> &[WorkloadEntrySpec] {
        self.endpoints.as_deref().unwrap_or_default()
    }

    /// Istio's validation: what is wrong, by field path.
    pub fn validate(&self, namespace: &str) -> Check {
        if let Some(s) = &self.workload_selector {
            check::selector("spec.workloadSelector.labels", &s.labels)?;
            if self.endpoints.is_some() {
                return Err(at("spec.endpoints", "only one of workloadSelector or endpoints is allowed in a ServiceEntry"));
            }
        }
        super::required("spec.hosts", &self.hosts, "host")?;
        for (i, h) in self.hosts.iter().enumerate() {
            let path = format!("spec.hosts[{i}]");
            if h == "*" {
                return Err(at(&path, "invalid host *"));
            }
            on(&path, check::wildcard_domain(h))?;
        }
        let mut cidr = false;
        for (i, a) in self.addresses.iter().enumerate() {
            cidr |= a.contains('/');
            on(&format!("spec.addresses[{i}]"), check::ip_or_cidr(a))?;
        }
        if cidr && !matches!(self.resolution, Resolution::None | Resolution::Static) {
            return Err(at("spec.addresses", "CIDR addresses are allowed only for NONE/STATIC resolution types"));
        }
        let (mut names, mut numbers) = (BTreeSet::new(), BTreeSet::new());
        for (i, p) in self.ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            if !names.insert(p.name.as_str()) {
                return Err(at(&format!("{path}.name"), format!("service entry port name {:?} already defined", p.name)));
            }
            if !numbers.insert(p.number) {
                return Err(at(&format!("{path}.number"), format!("service entry port {} already defined", p.number)));
            }
            if let Some(t) = p.target_port.filter(|t| *t != 0) {
                on(&format!("{path}.targetPort"), check::port(t.into()))?;
            }
            on(&format!("{path}.name"), check::port_name(&p.name))?;
            on(&format!("{path}.protocol"), check::protocol(&p.protocol))?;
            on(&format!("{path}.number"), check::port(p.number.into()))?;
        }
        let service_ports: BTreeSet<&str> = self.ports.iter().map(|p| p.name.as_str()).collect();
        match self.resolution {
            Resolution::None => {
                if !self.endpoints().is_empty() {
                    return Err(at("spec.endpoints", "no endpoints should be provided for resolution type NONE"));
                }
            }
            Resolution::Static => {
                for (i, e) in self.endpoints().iter().enumerate() {
                    e.validate(&format!("spec.endpoints[{i}]"), Some(&service_ports), false)?;
                }
            }
            Resolution::Dns | Resolution::DnsRoundRobin => {
                let mode = if self.resolution == Resolution::Dns { "DNS" } else { "DNS_ROUND_ROBIN" };
                if self.endpoints().is_empty() {
                    if let Some(i) = self.hosts.iter().position(|h| check::fqdn(h).is_err()) {
                        return Err(at(&format!("spec.hosts[{i}]"), format!("hosts must be FQDN if no endpoints are provided for resolution mode {mode}")));
                    }
                }
                if self.resolution == Resolution::DnsRoundRobin && self.endpoints().len() > 1 {
                    return Err(at("spec.endpoints", format!("there must only be 0 or 1 endpoint for resolution mode {mode}")));
                }
                for (i, e) in self.endpoints().iter().enumerate() {
                    let path = format!("spec.endpoints[{i}]");
                    if !check::is_ip(&e.address) && check::fqdn(&e.address).is_err() {
                        return Err(at(&format!("{path}.address"), format!("endpoint address {:?} is not a valid FQDN or an IP address", e.address)));
                    }
                    check::labels(&format!("{path}.labels"), &e.labels)?;
                    endpoint_ports(&path, &e.ports, Some(&service_ports))?;
                }
            }
        }
        // Plain TCP cannot tell hosts apart (no Host header, no SNI).
        if self.resolution != Resolution::None && self.hosts.len() > 1 {
            let opaque = self.ports.iter().position(|p| Protocol::parse(&p.protocol).is_none_or(|p| !p.is_http() && !p.is_tls()));
            if let Some(i) = opaque {
                return Err(at(&format!("spec.ports[{i}].protocol"), "multiple hosts provided with non-HTTP, non-TLS ports"));
            }
        }
        check::export_to(namespace, &self.export_to, true, false)
    }
}

fn endpoint_ports(path: &str, ports: &BTreeMap<String, u32>, service_ports: Option<&BTreeSet<&str>>) -> Check {
    for (name, port) in ports {
        let path = format!("{path}.ports.{name}");
        if service_ports.is_some_and(|s| !s.contains(name.as_str())) {
            return Err(at(&path, format!("endpoint port {name:?} is not defined by the service entry (its ports name the service ports)")));
        }
        on(&path, check::port_name(name))?;
        on(&path, check::port((*port).into()))?;
    }
    Ok(())
}

impl WorkloadEntrySpec {
    /// `service_ports`: the names of the ServiceEntry's ports, when this is one of its
    /// endpoints. `hostnames`: whether the address may be a DNS name.
    pub fn validate(&self, path: &str, service_ports: Option<&BTreeSet<&str>>, hostnames: bool) -> Check {
        let p = |f: &str| format!("{path}.{f}");
        let addr = self.address.as_str();
        if addr.is_empty() && self.network.is_empty() {
            return Err(at(&p("address"), "address is required"));
        }
        if let Some(sock) = addr.strip_prefix("unix://") {
            on(&p("address"), super::unix_address(sock))?;
            if !self.ports.is_empty() {
                return Err(at(&p("ports"), format!("unix endpoint {addr} must not include ports")));
            }
            if service_ports.is_some_and(|s| s.len() != 1) {
                return Err(at(&p("address"), "exactly 1 service port required for unix endpoints"));
            }
        } else if !addr.is_empty() && !check::is_ip(addr) {
            if !hostnames {
                return Err(at(&p("address"), format!("endpoint address {addr:?} is not a valid IP address")));
            }
            if check::fqdn(addr).is_err() {
                return Err(at(&p("address"), format!("endpoint address {addr:?} is not a valid FQDN or an IP address")));
            }
        }
        endpoint_ports(path, &self.ports, service_ports)?;
        check::labels(&p("labels"), &self.labels)?;
        // Ours: Kubernetes names service accounts as DNS subdomains.
        if !self.service_account.is_empty() && !self.service_account.split('.').all(check::dns1123_label) {
            return Err(at(&p("serviceAccount"), format!("{:?} is not a service account name", self.service_account)));
        }
        Ok(())
    }
}
