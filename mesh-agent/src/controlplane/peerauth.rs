//! PeerAuthentication (`security.istio.io` v1 / v1beta1): validation and the mTLS mode
//! each workload ends up with, by Istio's precedence (pure, table-tested below);
//! [`convert`] turns the result into the workload API's DENY policies.
//!
//! # Precedence
//! - A policy in the root namespace without a selector is mesh-wide; one in any
//!   other namespace without a selector is namespace-wide; one with a selector applies
//!   to the workloads of its own namespace whose labels match (also in the root
//!   namespace: there it is not mesh-wide).
//! - The most specific level that says something wins: workload over namespace over
//!   mesh, PERMISSIVE when nobody says anything. `UNSET` (or no `mtls`) says nothing:
//!   the mode is inherited from the next level up.
//! - Several policies at one level: the oldest wins (`creationTimestamp`, then the
//!   order they were read in, then the name); the others at that level are ignored
//!   and reported.
//! - `portLevelMtls` only counts on a policy with a selector (Istio's validation
//!   rejects it elsewhere, and so do we); a port's `UNSET` takes the workload's mode.
//!   Ports are the workload's (container) ports.
//! - `DISABLE` is kept as written: the kernel treats it as PERMISSIVE, as ambient does.
use std::collections::BTreeMap;

use serde::Deserialize;

use super::folder::Metadata;

pub mod convert;

/// A PeerAuthentication object as read from the folder.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PeerAuthentication {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Spec,
}

/// `spec.mtls.mode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mtls {
    #[serde(default)]
    pub mode: Mode,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `spec` of a PeerAuthentication.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub selector: Option<Selector>,
    #[serde(default)]
    pub mtls: Option<Mtls>,
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u32, Mtls>,
}

impl Spec {
    /// Istio's validation: what is wrong, by field path.
    pub fn validate(&self) -> Result<(), String> {
        if !self.port_level_mtls.is_empty() {
            if self.selector.as_ref().is_none_or(|s| s.match_labels.is_empty()) {
                return Err("spec.portLevelMtls: only allowed with a non-empty spec.selector.matchLabels".into());
            }
            if let Some(p) = self.port_level_mtls.keys().find(|p| **p == 0 || **p > 65535) {
                return Err(format!("spec.portLevelMtls.{p}: a port is 1-65535"));
            }
        }
        if let Some((k, _)) = self.selector.iter().flat_map(|s| &s.match_labels).find(|(k, _)| k.is_empty()) {
            return Err(format!("spec.selector.matchLabels.{k:?}: empty label key"));
        }
        Ok(())
    }

    /// Has a selector that names labels (an empty one selects the whole namespace).
    fn selects(&self) -> bool {
        self.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty())
    }
}

/// One PeerAuthentication as read.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` (RFC 3339, so it sorts as text), if set.
    pub created: Option<String>,
    /// Order of reading (file, then document): the tie-break after the timestamp.
    pub order: usize,
    pub spec: Spec,
}

/// What a workload ends up with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effective {
    /// Never `Unset`.
    pub mode: Mode,
    /// Ports whose mode differs from `mode` (never `Unset`).
    pub ports: BTreeMap<u16, Mode>,
    /// `namespace/name` of the policies that decided, most specific first.
    pub from: Vec<String>,
}

/// The workload being judged.
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// The mode `workload` gets from `policies` (already validated), with `root` the
/// mesh's root namespace (`istio-system` by default).
pub fn effective(policies: &[Policy], root: &str, workload: &Workload<'_>) -> Effective {
    let oldest = |level: &dyn Fn(&Policy) -> bool| -> Option<&Policy> {
        policies.iter().filter(|p| level(p)).min_by(|a, b| age(a, b))
    };
    let matches = |p: &Policy| {
        p.spec.selector.as_ref().is_some_and(|s| s.match_labels.iter().all(|(k, v)| workload.labels.get(k) == Some(v)))
    };
    let selected = oldest(&|p| p.namespace == workload.namespace && p.spec.selects() && matches(p));
    let namespace = oldest(&|p| p.namespace == workload.namespace && !p.spec.selects() && p.namespace != root);
    let mesh = oldest(&|p| p.namespace == root && !p.spec.selects());

    let mut out = Effective::default();
    let mode_of = |p: &Policy| p.spec.mtls.as_ref().map(|m| m.mode).unwrap_or_default();
    out.mode = [selected, namespace, mesh]
        .into_iter()
        .flatten()
        .find(|p| mode_of(p) != Mode::Unset)
        .map(|p| {
            out.from.push(format!("{}/{}", p.namespace, p.name));
            mode_of(p)
        })
        .unwrap_or(Mode::Permissive);
    if let Some(p) = selected {
        for (port, m) in &p.spec.port_level_mtls {
            let Ok(port) = u16::try_from(*port) else { continue };
            if m.mode != Mode::Unset && m.mode != out.mode {
                out.ports.insert(port, m.mode);
            }
        }
        let name = format!("{}/{}", p.namespace, p.name);
        if !out.ports.is_empty() && !out.from.contains(&name) {
            out.from.insert(0, name);
        }
    }
    out
}

/// Older first: by timestamp (a missing one sorts after any: it came from a file,
/// later), then reading order, then name.
fn age(a: &Policy, b: &Policy) -> std::cmp::Ordering {
    let ts = |p: &Policy| (p.created.is_none(), p.created.clone());
    ts(a).cmp(&ts(b)).then(a.order.cmp(&b.order)).then(a.name.cmp(&b.name))
}

/// Policies that lose to an older one at the same level and scope, with the winner:
/// `(loser, winner)` as `namespace/name`, for the control plane's log.
pub fn shadowed(policies: &[Policy], root: &str) -> Vec<(String, String)> {
    let key = |p: &Policy| {
        let level = if p.spec.selects() { 2 } else if p.namespace == root { 0 } else { 1 };
        let selector = p.spec.selector.as_ref().map(|s| s.match_labels.clone()).unwrap_or_default();
        (p.namespace.clone(), level, selector)
    };
    let mut groups: BTreeMap<_, Vec<&Policy>> = BTreeMap::new();
    for p in policies {
        groups.entry(key(p)).or_default().push(p);
    }
    let mut out = Vec::new();
    for (_, mut group) in groups {
        group.sort_by(|a, b| age(a, b));
        let winner = format!("{}/{}", group[0].namespace, group[0].name);
        out.extend(group[1..].iter().map(|p| (format!("{}/{}", p.namespace, p.name), winner.clone())));
    }
    out
}

#[cfg(test)]
mod tests;
