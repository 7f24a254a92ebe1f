//! Istio's `networking.istio.io` kinds (`v1`, `v1beta1`, `v1alpha3`) from the config
//! folder or the API server: VirtualService, DestinationRule, Gateway, ServiceEntry,
//! Sidecar and WorkloadEntry. Each is read with the CRD's own field names (unknown
//! fields refused) and checked as Istio's admission webhook checks it
//! (`pkg/config/validation`); an error names the field path and why, like
//! ``spec.http[0].route[0].weight: weight -5 < 0``.
//!
//! # Layout
//! - [`check`]: the rules shared by the kinds (hosts, ports, labels, durations, exportTo).
//! - one module per kind with its serde types and `validate()`.
//! - [`convert`]: pure conversions into what agents receive: `mesh.networking`
//!   VirtualService and DestinationRule resources (hosts resolved to FQDNs), and
//!   ServiceEntry / WorkloadEntry into the workload API's Service and Workload.
//!
//! Where we are stricter than Istio it is said at the rule; Istio's warnings are not
//! errors here either.
use std::collections::BTreeMap;

use serde::Deserialize;

use super::folder::Metadata;
use check::{at, on, Check};

pub mod check;
pub mod convert;
pub mod destination_rule;
pub mod gateway;
pub mod service_entry;
pub mod sidecar;
pub mod virtual_service;

pub use destination_rule::DestinationRule;
pub use gateway::Gateway;
pub use service_entry::{ServiceEntry, WorkloadEntry};
pub use sidecar::Sidecar;
pub use virtual_service::VirtualService;

/// The apiVersions the networking kinds are accepted under.
pub const API_VERSIONS: [&str; 3] = ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"];

/// The kinds of this module, as `kind:` spells them.
pub const KINDS: [&str; 6] = ["VirtualService", "DestinationRule", "Gateway", "ServiceEntry", "Sidecar", "WorkloadEntry"];

/// One object of a networking kind: its metadata and its spec.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Object<S> {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: S,
}

/// A kind's checks, which may need the object's namespace or name.
pub trait SpecCheck {
    fn check(&self, meta: &Metadata) -> Check;
}

impl<S: SpecCheck + Default> Object<S> {
    /// Istio's validation: `Err("<field path>: <why>")`.
    pub fn validate(&self) -> Check {
        self.spec.check(&self.metadata)
    }
}

/// The namespace an object lives in (`default` when the document leaves it out).
pub fn namespace_of(m: &Metadata) -> &str {
    m.namespace.as_deref().unwrap_or("default")
}

/// Exactly one of `exact`, `prefix`, `regex` (the CRD's oneOf). Where the API allows
/// an empty match (header and query parameter presence) none may be set.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

impl StringMatch {
    /// `presence_ok`: an empty match means "present" (headers, query parameters).
    pub fn validate(&self, path: &str, presence_ok: bool) -> Check {
        let set = [&self.exact, &self.prefix, &self.regex].iter().filter(|v| v.is_some()).count();
        if set > 1 {
            return Err(at(path, "set one of exact, prefix or regex, not several"));
        }
        if set == 0 && !presence_ok {
            return Err(at(path, "one of exact, prefix or regex is required"));
        }
        if let Some(re) = &self.regex {
            on(&format!("{path}.regex"), check::regex(re))?;
        }
        Ok(())
    }
}

/// `{number: N}`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    #[serde(default)]
    pub number: u32,
}

/// `{value: 12.5}`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// Where traffic goes: a host (short names are relative to the object's namespace),
/// a subset of a DestinationRule, a port.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

impl Destination {
    /// Istio's `validateDestination`: a host (never `*`), a subset name that is a DNS
    /// label, a port in range.
    pub fn validate(&self, path: &str) -> Check {
        let host = format!("{path}.host");
        if self.host.is_empty() {
            return Err(at(&host, "required"));
        }
        if self.host == "*" {
            return Err(at(&host, "invalid destination host *"));
        }
        on(&host, check::wildcard_domain(&self.host))?;
        if let Some(s) = &self.subset {
            on(&format!("{path}.subset"), subset_name(s))?;
        }
        if let Some(p) = &self.port {
            on(&format!("{path}.port.number"), check::port(p.number.into()))?;
        }
        Ok(())
    }
}

pub fn subset_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("subset name cannot be empty".into());
    }
    if !check::dns1123_label(name) {
        return Err(format!("subset name is invalid: {name:?}"));
    }
    Ok(())
}

/// `workloadSelector: {matchLabels: ...}` (DestinationRule).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchLabels {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `workloadSelector: {labels: ...}` (Sidecar, ServiceEntry).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Labels {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A listener or service port (Gateway server, ServiceEntry, Sidecar).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    #[serde(default)]
    pub number: u32,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub target_port: Option<u32>,
}

/// `<path>: at least one ... required` when `items` is empty.
fn required<T>(path: &str, items: &[T], what: &str) -> Check {
    if items.is_empty() { Err(at(path, format!("at least one {what} is required"))) } else { Ok(()) }
}

/// Istio's `ValidateUnixAddress` on what follows `unix://`: an absolute file path or
/// an abstract socket (`@name`).
fn unix_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("unix address must not be empty".into());
    }
    if addr.starts_with('@') || (addr.starts_with('/') && !addr.ends_with('/')) {
        return Ok(());
    }
    Err(format!("{addr} is not an absolute path to a file"))
}

#[cfg(test)]
mod tests;
