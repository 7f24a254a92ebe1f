//! Map layout upgrades, with the agent's real object and real pinned maps: a second
//! load adopts what the first pinned (nothing retired, entries kept); a map pinned
//! with another layout (as an older agent would have left it) is retired, the new
//! layout is created under its name, and the old map lives on for whoever holds it.
//!
//! Needs root (bpffs, maps). Without root it fails when `CI=true`, and otherwise says
//! it did nothing.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHashMap, MapData};
use mesh_agent::kernel::layout::{self, Layout};
use mesh_agent::kernel::Kernel;
use mesh_common::{Addr, MAP_INBOUND_EXEMPT_SRC, MAP_MESH_DESTS, MAP_ORIG_DST};

use mesh_tests::require_root as need_root;

/// A bpffs folder of this test, removed when dropped.
struct Folder(PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(bpffs: &Path) -> Kernel {
    Kernel::load(bpffs).unwrap_or_else(|e| panic!("{}", mesh_agent::error_chain(&e)))
}

/// The layouts this agent's object wants, from a fresh load's pins.
fn pinned_layouts(bpffs: &Path, names: &[&str]) -> Vec<Layout> {
    names.iter().map(|n| layout::pinned(&bpffs.join(n)).unwrap_or_else(|| panic!("{n} is not pinned"))).collect()
}

/// Pins, at `path`, a hash map of another layout than `like` (value size and
/// capacity changed), as an older agent would have left it.
fn pin_older(path: &Path, like: &Layout) -> MapData {
    std::fs::remove_file(path).expect("removing the current pin");
    let obj = aya_obj::Map::new_from_params(like.map_type, like.key_size, like.value_size + 8, like.max_entries / 2, like.flags);
    let map = MapData::create(obj, "older", None).expect("creating the older map");
    map.pin(path).expect("pinning the older map");
    map
}

#[test]
fn pinned_maps_are_adopted_when_the_layout_matches_and_retired_when_it_changed() {
    if !need_root("layout") {
        return;
    }
    let folder = Folder(PathBuf::from(format!("/sys/fs/bpf/mesh-layout-test-{}", std::process::id())));
    let bpffs = folder.0.as_path();
    let probe: IpAddr = "169.254.7.127".parse().unwrap();

    // A first agent pins its maps and writes an entry.
    let first = load(bpffs);
    first.set_exempt_sources(&[probe]).expect("writing INBOUND_EXEMPT_SRC");
    drop(first);
    let names = [MAP_ORIG_DST, MAP_MESH_DESTS, MAP_INBOUND_EXEMPT_SRC];
    let wanted = pinned_layouts(bpffs, &names);

    // The same layout: adopted as it is, the entry still there.
    let wanted_all = layout::wanted(mesh_agent::kernel::ebpf_object()).expect("parsing the object");
    assert_eq!(layout::mismatches(bpffs, &wanted_all), vec![], "a map of our own layout was seen as changed");
    let second = load(bpffs);
    drop(second);
    let exempt: BpfHashMap<MapData, Addr, u32> =
        BpfHashMap::try_from(aya::maps::Map::HashMap(MapData::from_pin(bpffs.join(MAP_INBOUND_EXEMPT_SRC)).unwrap())).unwrap();
    assert_eq!(exempt.keys().count(), 1, "the adopted map lost its entry");

    // An older agent's layouts for two maps: both retired, the rest adopted.
    let old_orig = pin_older(&bpffs.join(MAP_ORIG_DST), &wanted[0]);
    let old_dests = pin_older(&bpffs.join(MAP_MESH_DESTS), &wanted[1]);
    let changed = layout::mismatches(bpffs, &wanted_all);
    let changed_names: Vec<&str> = changed.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(changed_names, vec![MAP_MESH_DESTS, MAP_ORIG_DST]);
    assert_eq!(changed[1].pinned.value_size, wanted[0].value_size + 8);
    assert_eq!(changed[1].wanted, wanted[0]);

    let third = load(bpffs);
    assert_eq!(pinned_layouts(bpffs, &names), wanted, "the new layouts were not pinned");
    assert_eq!(layout::mismatches(bpffs, &wanted_all), vec![]);
    // The retired maps are still alive for their holders (old programs), unchanged.
    for (old, was) in [(&old_orig, &wanted[0]), (&old_dests, &wanted[1])] {
        let info = old.info().expect("the retired map is gone");
        assert_eq!((info.value_size(), info.max_entries()), (was.value_size + 8, was.max_entries / 2));
    }
    // Entries in the adopted map survived the upgrade of the others.
    let exempt: BpfHashMap<MapData, Addr, u32> =
        BpfHashMap::try_from(aya::maps::Map::HashMap(MapData::from_pin(bpffs.join(MAP_INBOUND_EXEMPT_SRC)).unwrap())).unwrap();
    assert_eq!(exempt.keys().count(), 1);
    drop(third);
}
