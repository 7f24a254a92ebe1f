//! Which hosts a pod may call, as Istio's Sidecar `egress[].hosts` say. Pure.
//!
//! The Sidecar that applies to a pod is, as in Istio: one of its namespace whose
//! `workloadSelector` picks it, else its namespace's Sidecar without a selector, else
//! the root namespace's Sidecar without a selector (the mesh default); of two that
//! tie, the first by name. No Sidecar: every host. Hosts of all egress listeners are
//! taken together (a port-specific listener only ever adds hosts, never removes), so
//! the result is never narrower than Istio's.
use std::collections::BTreeMap;
use std::sync::Arc;

use super::folder::in_namespace;
use super::networking::Sidecar;

/// One `namespace/dnsName` entry of a Sidecar's egress hosts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EgressHost {
    /// `None`: any namespace (`*`); `Some(ns)`: that one (`.` resolved to the
    /// pod's own). `~` (no namespace) entries are dropped: they match nothing.
    pub namespace: Option<String>,
    /// `*`, `*.suffix` or an exact host.
    pub host: String,
}

impl EgressHost {
    /// Parses `ns/host` as it applies to a pod of `pod_namespace` (`.`).
    pub fn parse(entry: &str, pod_namespace: &str) -> Option<EgressHost> {
        let (ns, host) = entry.split_once('/')?;
        let namespace = match ns {
            "~" => return None,
            "*" => None,
            "." => Some(pod_namespace.to_string()),
            other => Some(other.to_string()),
        };
        Some(EgressHost { namespace, host: host.to_string() })
    }

    /// Whether a resource of `namespace` for `host` is in this entry.
    pub fn admits(&self, namespace: &str, host: &str) -> bool {
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return false;
        }
        match self.host.as_str() {
            "*" => true,
            h => match h.strip_prefix('*') {
                Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
                None => host == h,
            },
        }
    }
}

/// The egress hosts of the Sidecar that applies to a pod of `namespace` with
/// `labels`; `None` when no Sidecar applies (every host).
pub fn for_pod(
    sidecars: &super::folder::Map<(String, String), Arc<Sidecar>>,
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Option<Vec<EgressHost>> {
    let in_ns = |ns| in_namespace(sidecars, ns);
    let selected = in_ns(namespace).find(|(_, s)| {
        s.spec.workload_selector.as_ref().is_some_and(|sel| {
            !sel.labels.is_empty() && sel.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
    });
    let unselected = |ns| in_ns(ns).find(|(_, s)| s.spec.workload_selector.as_ref().is_none_or(|sel| sel.labels.is_empty()));
    let (_, sidecar) = selected.or_else(|| unselected(namespace)).or_else(|| unselected(root_namespace))?;
    // `.` is the pod's namespace, also in the root namespace's default (Istio applies
    // that one as if it were written in each namespace).
    let mut hosts: Vec<EgressHost> =
        sidecar.spec.egress.iter().flat_map(|e| &e.hosts).filter_map(|h| EgressHost::parse(h, namespace)).collect();
    if sidecar.spec.egress.is_empty() {
        return None; // a Sidecar with no egress section leaves egress as it is
    }
    hosts.sort();
    hosts.dedup();
    Some(hosts)
}

#[cfg(test)]
mod tests;
