//! What an agent says it holds of one type when it (re)subscribes
//! (`initial_resource_versions`), until its first answer: after that, what it holds is
//! its scope of the view it was last brought to, and nothing is kept per agent but a
//! pointer to that shared view (`xds_server::Holds`).
use std::collections::HashMap;

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
pub struct Held(HashMap<String, u64>);

impl Held {
    /// What an agent says it holds when it (re)subscribes.
    pub fn from_versions(versions: HashMap<String, String>) -> Self {
        Held(versions.into_iter().map(|(n, v)| (n, key(&v))).collect())
    }

    pub fn has_version(&self, name: &str, version: &str) -> bool {
        let k = key(version);
        k != FOREIGN && self.0.get(name) == Some(&k)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_value_and_foreign_ones_never_match() {
        let held = Held::from_versions(
            [("a".to_string(), "00000000000000ff".to_string()), ("b".to_string(), "stale".to_string())].into(),
        );
        assert!(held.has_version("a", "00000000000000ff"));
        assert!(!held.has_version("a", "00000000000000fe"));
        assert!(!held.has_version("b", "stale"), "not one of ours: resent");
        assert!(!held.has_version("c", "00000000000000ff"));
        assert!(held.contains("b") && !held.contains("c"));
    }
}
