//! The same-node fast path (see `mesh-ebpf/src/fastpath.rs`): loading `fast_sockops`
//! and `fast_redirect`, the per-pod switch, and taking sockets off the path.
//!
//! The agent's own ends of the loopback legs are put into `FAST_SOCKS` by
//! `fast_sockops` attached to the agent's own cgroup, not from userspace after
//! accept(): the kernel inserts the accepted socket while it completes the
//! handshake, before the pod can send. An insertion from userspace would come after
//! the pod's first bytes (a client writes its request at once), and the ordering rule
//! would then keep that connection off the fast path for good. The program ignores
//! every agent socket that is not a loopback leg of an enrolled pod.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{HashMap as BpfHashMap, MapData, SockHash};
use aya::programs::{CgroupAttachMode, SkMsg, SockOps};
use aya::Ebpf;
use mesh_common::{FastKey, FAST_POD_ON, MAP_FAST_OFF, MAP_FAST_PODS, MAP_FAST_SOCKS};
use tracing::info;

use super::{program, take_hash, Error};

pub const FAST_SOCKOPS: &str = "fast_sockops";
pub const FAST_REDIRECT: &str = "fast_redirect";

/// `--fast-path`: `auto` is what `cargo xtask bench-fastpath` measured best on these
/// machines (see docs/benchmarks.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    On,
    Off,
    Auto,
}

/// What `auto` means, from the measurement.
pub const AUTO: Mode = Mode::Off;

impl Mode {
    pub fn enabled(self) -> bool {
        match self {
            Mode::On => true,
            Mode::Off => false,
            Mode::Auto => AUTO == Mode::On,
        }
    }
}

pub(super) struct FastPath {
    socks: Mutex<SockHash<MapData, FastKey>>,
    pods: Mutex<BpfHashMap<MapData, u64, u32>>,
    off: Mutex<BpfHashMap<MapData, FastKey, u32>>,
    /// New pods get the fast path (`--fast-path` resolved).
    pub(super) enabled: std::sync::atomic::AtomicBool,
}

impl FastPath {
    /// Loads both programs, takes the maps and attaches `fast_redirect` to `FAST_SOCKS`
    /// (a sockhash attachment, held by `ebpf` for the agent's life).
    pub(super) fn load(ebpf: &mut Ebpf) -> Result<FastPath, Error> {
        let sockops: &mut SockOps = program(ebpf, FAST_SOCKOPS)?;
        sockops.load().map_err(|source| Error::Program { name: FAST_SOCKOPS, source })?;
        let name = MAP_FAST_SOCKS;
        let map = ebpf.take_map(name).ok_or(Error::MissingMap(name))?;
        let socks: SockHash<MapData, FastKey> = SockHash::try_from(map).map_err(|source| Error::Map { name, source })?;
        let msg: &mut SkMsg = program(ebpf, FAST_REDIRECT)?;
        msg.load().map_err(|source| Error::Program { name: FAST_REDIRECT, source })?;
        msg.attach(socks.fd()).map_err(|source| Error::Program { name: FAST_REDIRECT, source })?;
        let pods = take_hash(ebpf, MAP_FAST_PODS)?;
        let off = take_hash(ebpf, MAP_FAST_OFF)?;
        Ok(FastPath {
            socks: Mutex::new(socks),
            pods: Mutex::new(pods),
            off: Mutex::new(off),
            enabled: Default::default(),
        })
    }

    /// Switches one pod's fast path (by netns cookie). Off takes effect for the pod's
    /// existing connections at their next message: bytes already handed over stay in
    /// the peer's queue and are read before anything sent after.
    pub(super) fn set_pod(&self, netns_cookie: u64, on: bool) -> Result<(), Error> {
        switch(&mut self.pods.lock().unwrap(), netns_cookie, on).map_err(|source| Error::Map { name: MAP_FAST_PODS, source })
    }

    /// Takes one connection (both ends) off the fast path without removing its
    /// sockets from the map (which would drop bytes waiting in their queues).
    pub(super) fn evict(&self, key: &FastKey) -> Result<(), Error> {
        let mut off = self.off.lock().unwrap();
        for k in [*key, key.peer()] {
            off.insert(k, 1, 0).map_err(|source| Error::Map { name: MAP_FAST_OFF, source })?;
        }
        Ok(())
    }

    /// The pod is leaving: its switch, its sockets and its marks go.
    pub(super) fn forget_pod(&self, netns_cookie: u64) {
        let _ = self.set_pod(netns_cookie, false);
        let mut socks = self.socks.lock().unwrap();
        let keys: Vec<FastKey> = socks.keys().filter_map(Result::ok).filter(|k| k.netns_cookie == netns_cookie).collect();
        for k in keys {
            let _ = socks.remove(&k);
        }
        super::remove_where(&mut self.off.lock().unwrap(), |k: &FastKey| k.netns_cookie == netns_cookie);
    }

    /// Sockets of one pod's namespace now in `FAST_SOCKS`.
    pub(super) fn sockets(&self, netns_cookie: u64) -> Vec<FastKey> {
        self.socks.lock().unwrap().keys().filter_map(Result::ok).filter(|k| k.netns_cookie == netns_cookie).collect()
    }
}

/// Writes one pod's `FAST_PODS` entry: present and on, or absent (already absent is fine).
fn switch(map: &mut BpfHashMap<MapData, u64, u32>, netns_cookie: u64, on: bool) -> Result<(), aya::maps::MapError> {
    if on {
        map.insert(netns_cookie, FAST_POD_ON, 0)
    } else if map.get(&netns_cookie, 0).is_ok() {
        map.remove(&netns_cookie)
    } else {
        Ok(())
    }
}

/// One `FAST_SOCKS` / `FAST_OFF` key for `meshctl maps dump`.
pub fn key_json(k: &FastKey) -> serde_json::Value {
    use mesh_common::ip_from_addr;
    let local = std::net::SocketAddr::new(ip_from_addr(k.local), k.local_port);
    let remote = std::net::SocketAddr::new(ip_from_addr(k.remote), k.remote_port);
    serde_json::json!({"netns_cookie": k.netns_cookie, "local": local.to_string(), "remote": remote.to_string(), "family": k.family})
}

/// `meshctl fast-path on|off`: switches one pod (by netns cookie) in the pinned
/// `FAST_PODS` map under `bpffs`, live, as [`FastPath::set_pod`] does in the agent.
pub fn set_pinned(bpffs: &Path, netns_cookie: u64, on: bool) -> Result<(), String> {
    let path = bpffs.join(MAP_FAST_PODS);
    let data = MapData::from_pin(&path).map_err(|e| format!("opening {}: {e}; is the agent running with --bpffs {}?", path.display(), bpffs.display()))?;
    let mut map: BpfHashMap<MapData, u64, u32> =
        BpfHashMap::try_from(aya::maps::Map::HashMap(data)).map_err(|e| format!("{}: {e}", path.display()))?;
    switch(&mut map, netns_cookie, on).map_err(|e| format!("{}: {e}", path.display()))
}

/// Attaches `fast_sockops` to the agent's own cgroup (v2), so that the agent's ends
/// of the loopback legs join `FAST_SOCKS` in the kernel. The link lives as long as
/// `ebpf` (the agent): its sockets die with it.
pub(super) fn attach_agent(ebpf: &mut Ebpf) -> Result<PathBuf, Error> {
    let path = own_cgroup().map_err(|e| Error::Preflight(format!("finding the agent's own cgroup for the fast path: {e}")))?;
    let cg = File::open(&path).map_err(|source| Error::Cgroup { path: path.clone(), source })?;
    let prog: &mut SockOps = program(ebpf, FAST_SOCKOPS)?;
    prog.attach(&cg, CgroupAttachMode::Single)
        .map_err(|source| Error::Attach { name: FAST_SOCKOPS, path: path.clone(), source })?;
    info!(cgroup = %path.display(), "fast path: agent's loopback sockets join FAST_SOCKS");
    Ok(path)
}

/// The agent's cgroup v2 folder: its `0::` line in /proc/self/cgroup under the
/// cgroup2 mount point.
fn own_cgroup() -> Result<PathBuf, String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    cgroup_path(&cgroup, &mountinfo)
}

/// Pure part of [`own_cgroup`].
fn cgroup_path(cgroup: &str, mountinfo: &str) -> Result<PathBuf, String> {
    let rel = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 line (0::) in /proc/self/cgroup")?;
    let mount = mountinfo
        .lines()
        .find(|l| l.split(" - ").nth(1).is_some_and(|fs| fs.starts_with("cgroup2 ")))
        .and_then(|l| l.split(' ').nth(4))
        .ok_or("no cgroup2 file system in /proc/self/mountinfo")?;
    Ok(Path::new(mount).join(rel.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup_v2_folder() {
        let mi = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                  30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro";
        let p = cgroup_path("4:memory:/x\n0::/mesh-bed/sys\n", mi).unwrap();
        assert_eq!(p, Path::new("/sys/fs/cgroup/unified/mesh-bed/sys"));
        assert_eq!(cgroup_path("0::/\n", mi).unwrap(), Path::new("/sys/fs/cgroup/unified"));
        assert!(cgroup_path("4:memory:/x\n", mi).unwrap_err().contains("0::"));
        assert!(cgroup_path("0::/\n", "30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro").unwrap_err().contains("cgroup2"));
    }

    #[test]
    fn auto_follows_the_measurement() {
        assert!(Mode::On.enabled());
        assert!(!Mode::Off.enabled());
        assert_eq!(Mode::Auto.enabled(), AUTO == Mode::On);
    }
}
