//! PeerAuthentication as the workload API carries it to node agents: istiod's ambient
//! form, a DENY `istio.security.Authorization` that matches any connection without a
//! peer identity (`not_principals: [presence]`, i.e. plaintext).
//!
//! # What is served
//! Each workload's result comes from [`effective`] (precedence lives there). A workload
//! with STRICT on some port needs one DENY rule: STRICT everywhere but the exception
//! ports (`not_destination_ports`), or only on its STRICT ports (`destination_ports`).
//! The policy carrying it is named after the policy that decided:
//! - mesh-wide: `istio-system/istio_converted_static_strict`;
//! - namespace-wide or by selector: `<ns>/converted_peer_authentication_<name>`.
//!
//! Scope: GLOBAL (mesh) or NAMESPACE (namespace) when every workload in that scope
//! gets exactly this rule from it; otherwise (a lower level relaxes some workloads)
//! WORKLOAD_SELECTOR, listed in the `authorization_policies` of the workloads it
//! decides. A DENY cannot be undone by a more specific policy, so a wider scope is
//! used only where nothing below overrides it. PERMISSIVE and DISABLE serve nothing.
use std::collections::{BTreeMap, BTreeSet};

use super::{effective, Mode, Policy, Workload};
use crate::controlplane::authorization::string_match;
use crate::proto::security as sec;

/// Name of the mesh-wide STRICT policy, in the root namespace (istiod's).
pub const STATIC_STRICT: &str = "istio_converted_static_strict";
/// Prefix of the names of converted namespace and workload policies (istiod's).
pub const CONVERTED_PREFIX: &str = "converted_peer_authentication_";

/// Where plaintext is denied for one workload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strict {
    /// Every port but these.
    AllBut(BTreeSet<u16>),
    /// Only these ports (never empty).
    Only(BTreeSet<u16>),
}

impl Strict {
    /// The workload's STRICT ports, if any.
    pub fn of(mode: Mode, ports: &BTreeMap<u16, Mode>) -> Option<Strict> {
        if mode == Mode::Strict {
            return Some(Strict::AllBut(ports.iter().filter(|(_, m)| **m != Mode::Strict).map(|(p, _)| *p).collect()));
        }
        let only: BTreeSet<u16> = ports.iter().filter(|(_, m)| **m == Mode::Strict).map(|(p, _)| *p).collect();
        (!only.is_empty()).then_some(Strict::Only(only))
    }

    /// One DENY group: no peer identity, on these ports.
    fn group(&self) -> sec::Group {
        let mut m = sec::Match { not_principals: vec![string_match("*")], ..Default::default() };
        match self {
            Strict::AllBut(p) => m.not_destination_ports = p.iter().map(|p| u32::from(*p)).collect(),
            Strict::Only(p) => m.destination_ports = p.iter().map(|p| u32::from(*p)).collect(),
        }
        sec::Group { rules: vec![sec::Rules { matches: vec![m] }] }
    }
}

/// A workload the conversion judges: where it lives, its labels, its key.
pub struct Pod<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// The served policies and who lists them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Converted {
    /// By resource name `<namespace>/<name>`.
    pub policies: BTreeMap<String, sec::Authorization>,
    /// Per pod `(namespace, name)`: the WORKLOAD_SELECTOR policies it lists.
    pub selected: BTreeMap<(String, String), Vec<String>>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Mesh,
    Namespace,
    Workload,
}

/// Converts `policies` (validated) for `pods`, with `root` the mesh's root namespace.
pub fn convert(policies: &[Policy], root: &str, pods: &[Pod<'_>]) -> Converted {
    // (level, namespace, name of the resource, rule) -> the pods it decides.
    let mut decided: BTreeMap<(Level, String, String, Strict), Vec<usize>> = BTreeMap::new();
    for (i, pod) in pods.iter().enumerate() {
        let e = effective(policies, root, &Workload { namespace: pod.namespace, labels: pod.labels });
        let Some(strict) = Strict::of(e.mode, &e.ports) else { continue };
        let Some(owner) = e.from.first().and_then(|key| policies.iter().find(|p| format!("{}/{}", p.namespace, p.name) == *key))
        else {
            continue; // STRICT is never the default: some policy decided it
        };
        let (level, name) = if owner.spec.selects() {
            (Level::Workload, format!("{CONVERTED_PREFIX}{}", owner.name))
        } else if owner.namespace == root {
            (Level::Mesh, STATIC_STRICT.to_string())
        } else {
            (Level::Namespace, format!("{CONVERTED_PREFIX}{}", owner.name))
        };
        decided.entry((level, owner.namespace.clone(), name, strict)).or_default().push(i);
    }
    let mut out = Converted::default();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for ((level, namespace, mut name, strict), members) in decided {
        // Pods of one policy get one rule (same namespace, same levels above); a second
        // rule, should it happen, gets its own resource rather than a wrong one.
        while taken.contains(&format!("{namespace}/{name}")) {
            name.push_str("_x");
        }
        let key = format!("{namespace}/{name}");
        taken.insert(key.clone());
        let in_scope = |p: &Pod<'_>| level == Level::Mesh || p.namespace == namespace;
        let everyone = pods.iter().enumerate().filter(|(_, p)| in_scope(p)).all(|(i, _)| members.contains(&i));
        let scope = match level {
            Level::Mesh if everyone => sec::Scope::Global,
            Level::Namespace if everyone => sec::Scope::Namespace,
            _ => {
                for i in &members {
                    let pod = (pods[*i].namespace.to_string(), pods[*i].name.to_string());
                    out.selected.entry(pod).or_default().push(key.clone());
                }
                sec::Scope::WorkloadSelector
            }
        };
        let authz = sec::Authorization {
            name,
            namespace,
            scope: scope as i32,
            action: sec::Action::Deny as i32,
            groups: vec![strict.group()],
            dry_run: false,
            mesh_rules: None,
        };
        out.policies.insert(key, authz);
    }
    out
}

#[cfg(test)]
mod tests;
