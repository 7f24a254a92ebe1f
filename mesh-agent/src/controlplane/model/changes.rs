//! What changed between the objects of two builds, as the builder reads it: found by
//! comparing the persistent maps ([`imbl::OrdMap::diff`] skips the nodes two versions
//! share), so a change costs what it touched, not the size of the cluster.
use std::collections::BTreeSet;

use imbl::ordmap::DiffItem;

use super::super::authorization::ROOT_NAMESPACE;
use super::super::folder::{Map, Objects};

/// The changes from one build's objects to the next one's.
#[derive(Debug, Default)]
pub struct Changes {
    /// Every pod is looked at again: the first build, other trust domains, or a change
    /// in the root namespace's AuthorizationPolicies or Sidecars (which apply in every
    /// namespace).
    pub every_pod: bool,
    /// Namespaces whose pods' Workloads may change though the pods did not: the
    /// Namespace, or its Services, AuthorizationPolicies or Sidecars changed.
    pub namespaces: BTreeSet<String>,
    /// Pods added or changed.
    pub pods: BTreeSet<(String, String)>,
    /// Pods gone.
    pub gone: BTreeSet<(String, String)>,
    pub authorization_policies: bool,
    pub peer_authentications: bool,
    pub services: bool,
    pub endpoint_slices: bool,
    /// ServiceEntries, WorkloadEntries, VirtualServices, DestinationRules.
    pub networking: bool,
}

/// The keys added, changed or removed from `old` to `new`.
fn keys<'a, K: Ord + Clone, V: PartialEq + Clone>(old: &'a Map<K, V>, new: &'a Map<K, V>) -> impl Iterator<Item = &'a K> + 'a {
    old.diff(new).map(|d| match d {
        DiffItem::Add(k, _) | DiffItem::Remove(k, _) | DiffItem::Update { new: (k, _), .. } => k,
    })
}

fn differ<K: Ord + Clone, V: PartialEq + Clone>(old: &Map<K, V>, new: &Map<K, V>) -> bool {
    keys(old, new).next().is_some()
}

impl Changes {
    /// Everything, as for a first build.
    pub fn everything() -> Self {
        Changes {
            every_pod: true,
            authorization_policies: true,
            peer_authentications: true,
            services: true,
            endpoint_slices: true,
            networking: true,
            ..Default::default()
        }
    }

    pub fn between(old: &Objects, new: &Objects) -> Self {
        let mut c = Changes::default();
        let namespace_wide = |ns: &str, c: &mut Changes| {
            c.every_pod |= ns == ROOT_NAMESPACE;
            c.namespaces.insert(ns.to_string());
        };
        for ns in keys(&old.namespaces, &new.namespaces) {
            c.namespaces.insert(ns.clone());
        }
        for (ns, _) in keys(&old.services, &new.services) {
            // A Service matters to its own namespace's pods only (policies target
            // Services of their own namespace).
            c.services = true;
            c.namespaces.insert(ns.clone());
        }
        for (ns, _) in keys(&old.authorization_policies, &new.authorization_policies) {
            c.authorization_policies = true;
            namespace_wide(ns, &mut c);
        }
        for (ns, _) in keys(&old.sidecars, &new.sidecars) {
            namespace_wide(ns, &mut c);
        }
        for d in old.pods.diff(&new.pods) {
            match d {
                DiffItem::Remove(k, _) => {
                    c.gone.insert(k.clone());
                }
                DiffItem::Add(k, _) | DiffItem::Update { new: (k, _), .. } => {
                    c.pods.insert(k.clone());
                }
            }
        }
        c.peer_authentications = differ(&old.peer_authentications, &new.peer_authentications);
        c.endpoint_slices = differ(&old.endpoint_slices, &new.endpoint_slices);
        c.networking = differ(&old.service_entries, &new.service_entries)
            || differ(&old.workload_entries, &new.workload_entries)
            || differ(&old.virtual_services, &new.virtual_services)
            || differ(&old.destination_rules, &new.destination_rules);
        c
    }

    /// Whether any pod was added, changed or removed.
    pub fn any_pod(&self) -> bool {
        !self.pods.is_empty() || !self.gone.is_empty()
    }
}
