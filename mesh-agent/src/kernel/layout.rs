//! Map layout upgrades: a pinned map left by an older agent is reused only when its
//! layout is the one this agent's programs were built for.
//!
//! The loader reuses any map pinned under the name it wants, whatever its layout; a
//! program verified against a map of another key or value size would misread it (or
//! fail to load). So before loading, every pinned map is compared with the object's
//! definition: type, key size, value size, capacity and flags. A map that differs is
//! retired: its pin is removed, so that the loader creates the new layout under the
//! same name. The old map lives on, unchanged, for as long as programs of the old
//! agent still use it (pods whose pinned links the new agent has not replaced yet),
//! and is freed by the kernel after the last of them is released at re-enrollment.
//!
//! Nothing needs copying across: the agent rebuilds every configuration map from
//! enrollment and xDS; per-connection maps only matter for milliseconds after a
//! connect; counters of a retired layout restart from zero (the log says so).
//!
//! A map's name is its contract: a change of meaning at an unchanged size must come
//! with a new name (`ORIG_DST` becomes `ORIG_DST2`), or this check cannot see it.
use std::path::Path;

use aya::maps::MapData;
use aya_obj::maps::PinningType;

/// The shape of a map, as the kernel reports it and as the object defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries, flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// A pinned map whose layout is not the object's.
#[derive(Debug, PartialEq, Eq)]
pub struct Retired {
    pub name: String,
    pub pinned: Layout,
    pub wanted: Layout,
}

/// The pinned-by-name maps the object defines, with their layouts.
pub fn wanted(object: &[u8]) -> Result<Vec<(String, Layout)>, String> {
    let obj = aya_obj::Object::parse(object).map_err(|e| format!("parsing the eBPF object: {e}"))?;
    let mut maps: Vec<(String, Layout)> = obj
        .maps
        .iter()
        .filter(|(_, m)| m.pinning() == PinningType::ByName)
        .map(|(name, m)| {
            let layout = Layout {
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: m.max_entries(),
                flags: m.map_flags(),
            };
            (name.clone(), layout)
        })
        .collect();
    maps.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(maps)
}

/// The layout of the map pinned at `path`, if one is.
pub fn pinned(path: &Path) -> Option<Layout> {
    let info = MapData::from_pin(path).ok()?.info().ok()?;
    Some(Layout {
        map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// Which of `wanted` are pinned under `bpffs` with another layout (pure but for
/// reading the pins).
pub fn mismatches(bpffs: &Path, wanted: &[(String, Layout)]) -> Vec<Retired> {
    wanted
        .iter()
        .filter_map(|(name, want)| {
            let have = pinned(&bpffs.join(name))?;
            (have != *want).then(|| Retired { name: name.clone(), pinned: have, wanted: *want })
        })
        .collect()
}


/// Retires every pinned map of `bpffs` whose layout the object changed: removes the
/// pin so that the loader creates the new layout. Returns what it retired.
pub fn retire_changed(bpffs: &Path, object: &[u8]) -> Result<Vec<Retired>, String> {
    let wanted = wanted(object)?;
    let retired = mismatches(bpffs, &wanted);
    for r in &retired {
        let path = bpffs.join(&r.name);
        std::fs::remove_file(&path).map_err(|e| format!("retiring map {}: removing {}: {e}", r.name, path.display()))?;
    }
    Ok(retired)
}
