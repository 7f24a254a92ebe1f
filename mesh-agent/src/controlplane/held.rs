//! What one agent holds of one type, kept small: with 1,000 agents each holding every
//! workload, names are shared (one `Arc<str>` per resource name across all agents) and
//! versions are the 64-bit hashes they spell.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::model::Snapshot;
use super::scope::{resources_of, TYPES};

/// The resource names of a snapshot, shared by every agent's [`Held`].
#[derive(Default)]
pub struct Names(HashSet<Arc<str>>);

impl Names {
    /// The names of `snap`, reusing `prev`'s for those that stay.
    pub fn of(snap: &Snapshot, prev: Option<&Names>) -> Self {
        let mut set = HashSet::new();
        for t in TYPES {
            for name in resources_of(snap, t).into_iter().flatten().map(|(n, _)| n.as_str()) {
                set.insert(prev.and_then(|p| p.0.get(name).cloned()).unwrap_or_else(|| Arc::from(name)));
            }
        }
        Names(set)
    }

    pub fn intern(&self, name: &str) -> Arc<str> {
        self.0.get(name).cloned().unwrap_or_else(|| Arc::from(name))
    }
}

/// A served version as a number: the control plane's versions are 16 hex digits (a
/// hash); anything else an agent names (from another control plane) never matches.
fn key(version: &str) -> u64 {
    if version.len() == 16 {
        u64::from_str_radix(version, 16).unwrap_or(FOREIGN)
    } else {
        FOREIGN
    }
}

/// Any version that is not ours (and the one hash value that would alias it).
const FOREIGN: u64 = u64::MAX;

/// Name -> version of what an agent holds.
#[derive(Default)]
pub struct Held(HashMap<Arc<str>, u64>);

impl Held {
    /// What an agent says it holds when it (re)subscribes.
    pub fn from_versions(versions: HashMap<String, String>, names: &Names) -> Self {
        Held(versions.into_iter().map(|(n, v)| (names.intern(&n), key(&v))).collect())
    }

    pub fn has_version(&self, name: &str, version: &str) -> bool {
        let k = key(version);
        k != FOREIGN && self.0.get(name) == Some(&k)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(|k| &**k)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn insert(&mut self, name: Arc<str>, version: &str) {
        self.0.insert(name, key(version));
    }

    pub fn remove(&mut self, name: &str) {
        self.0.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_value_and_foreign_ones_never_match() {
        let names = Names::default();
        let held = Held::from_versions(
            [("a".to_string(), "00000000000000ff".to_string()), ("b".to_string(), "stale".to_string())].into(),
            &names,
        );
        assert!(held.has_version("a", "00000000000000ff"));
        assert!(!held.has_version("a", "00000000000000fe"));
        assert!(!held.has_version("b", "stale"), "not one of ours: resent");
        assert!(!held.has_version("c", "00000000000000ff"));
    }

    #[test]
    fn names_are_shared_across_snapshots() {
        let mut s = Snapshot::default();
        let any = prost_types::Any::default();
        s.resources.insert("w".into(), crate::controlplane::model::Resource { version: "1".into(), any });
        let first = Names::of(&s, None);
        let second = Names::of(&s, Some(&first));
        assert!(Arc::ptr_eq(&first.intern("w"), &second.intern("w")));
    }
}
