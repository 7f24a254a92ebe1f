//! Loads, pins and attaches the eBPF programs, and keeps their maps in step with the
//! agent's state.
//!
//! One [`Kernel`] per agent. Maps are pinned under the agent's bpffs folder (so that
//! `meshctl` can read them); programs are attached to each enrolled pod's cgroup with
//! bpf_links. A cgroup bpf_link is always multi-program in the kernel (the attach
//! flags must be 0, which aya calls `Single`), so other programs on the same cgroup
//! (a CNI's) keep running beside ours.
pub mod dump;
pub mod policy;
mod preflight;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId;
use aya::programs::sock_ops::SockOpsLinkId;
use aya::programs::tc::SchedClassifierLinkId;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, SockOps};
use aya::{Ebpf, EbpfLoader};
use mesh_common::{
    addr_from_ip, ip_from_addr, DestKey, DestValue, OrigDst, PodInfo, SockKey, DEST_SERVICE,
    DEST_WORKLOAD, MAP_MESH_DESTS, MAP_ORIG_DST, MAP_PODS,
};
use tracing::{debug, info, warn};

use crate::state::{State, TunnelProtocol};

pub use preflight::preflight;

/// The kernel programs, built by build.rs from `mesh-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh"));

const CONNECT4: &str = "connect4";
const CONNECT6: &str = "connect6";
const SOCKOPS: &str = "track_orig";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Preflight(String),
    #[error("this mesh-agent was built without its eBPF programs (AYA_BUILD_SKIP=1); rebuild it with `cargo build --release`")]
    NoObject,
    #[error("loading the eBPF programs into the kernel: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the kernel refused program {name}: {source}; mesh needs Linux >= 5.15 with CONFIG_CGROUP_BPF and BTF")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("opening cgroup {path}: {source}; is cgroup v2 mounted there?")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching {name} to cgroup {path}: {source}")]
    Attach {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// The links that tie our programs to one pod's cgroup.
struct PodLinks {
    connect4: CgroupSockAddrLinkId,
    connect6: CgroupSockAddrLinkId,
    sockops: SockOpsLinkId,
}

/// An enrolled pod as the kernel knows it.
struct PodEntry {
    netns_cookie: u64,
    links: PodLinks,
}

pub struct Kernel {
    bpffs: PathBuf,
    ebpf: Mutex<Ebpf>,
    pods: Mutex<HashMap<String, PodEntry>>,
    mesh_dests: Mutex<BpfHashMap<MapData, DestKey, DestValue>>,
    pod_map: Mutex<BpfHashMap<MapData, u64, PodInfo>>,
    orig_dst: Mutex<aya::maps::HashMap<MapData, SockKey, OrigDst>>,
    policy: Mutex<policy::PolicyMaps>,
    policy_links: Mutex<HashMap<String, Vec<SchedClassifierLinkId>>>,
}

impl Kernel {
    /// Checks the machine, loads the programs and pins the maps under `bpffs`. On
    /// failure nothing is left behind: a folder this call created is removed again.
    pub fn load(bpffs: &Path) -> Result<Kernel, Error> {
        preflight(bpffs).map_err(Error::Preflight)?;
        if EBPF_OBJECT.is_empty() {
            return Err(Error::NoObject);
        }
        let existed = bpffs.exists();
        std::fs::create_dir_all(bpffs).map_err(|e| {
            Error::Preflight(format!("cannot create {}: {e}", bpffs.display()))
        })?;
        let loaded = Self::load_into(bpffs);
        if loaded.is_err() && !existed {
            let _ = std::fs::remove_dir_all(bpffs);
        }
        loaded
    }

    fn load_into(bpffs: &Path) -> Result<Kernel, Error> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(bpffs)
            .load(EBPF_OBJECT)
            .map_err(Error::Load)?;
        for name in [CONNECT4, CONNECT6] {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().map_err(|source| Error::Program { name, source })?;
        }
        let sockops: &mut SockOps = program(&mut ebpf, SOCKOPS)?;
        sockops.load().map_err(|source| Error::Program { name: SOCKOPS, source })?;
        let policy_prog: &mut SchedClassifier = program(&mut ebpf, policy::POLICY_PROG)?;
        policy_prog.load().map_err(|source| Error::Program { name: policy::POLICY_PROG, source })?;
        let policy = policy::PolicyMaps::take(&mut ebpf)?;

        let mesh_dests = take_hash(&mut ebpf, MAP_MESH_DESTS)?;
        let pod_map = take_hash(&mut ebpf, MAP_PODS)?;
        let orig_dst = take_hash(&mut ebpf, MAP_ORIG_DST)?;
        info!(bpffs = %bpffs.display(), "eBPF programs loaded, maps pinned");
        Ok(Kernel {
            bpffs: bpffs.to_path_buf(),
            ebpf: Mutex::new(ebpf),
            pods: Mutex::default(),
            mesh_dests: Mutex::new(mesh_dests),
            pod_map: Mutex::new(pod_map),
            orig_dst: Mutex::new(orig_dst),
            policy: Mutex::new(policy),
            policy_links: Mutex::default(),
        })
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// Attaches the capture programs to the pod's cgroup and marks its network
    /// namespace as enrolled. Idempotent for the same uid.
    pub fn enroll(&self, uid: &str, netns_cookie: u64, addr: IpAddr, cgroup: &Path) -> Result<(), Error> {
        self.unenroll(uid);
        let cg = File::open(cgroup).map_err(|source| Error::Cgroup { path: cgroup.into(), source })?;
        let mut ebpf = self.ebpf.lock().unwrap();
        let attach_err = |name| {
            let path = cgroup.to_path_buf();
            move |source| Error::Attach { name, path, source }
        };
        let connect4 = program::<CgroupSockAddr>(&mut ebpf, CONNECT4)?
            .attach(&cg, CgroupAttachMode::Single)
            .map_err(attach_err(CONNECT4))?;
        let connect6 = program::<CgroupSockAddr>(&mut ebpf, CONNECT6)?
            .attach(&cg, CgroupAttachMode::Single)
            .map_err(attach_err(CONNECT6))?;
        let sockops = program::<SockOps>(&mut ebpf, SOCKOPS)?
            .attach(&cg, CgroupAttachMode::Single)
            .map_err(attach_err(SOCKOPS))?;
        drop(ebpf);
        let info = PodInfo { addr: addr_from_ip(addr), flags: 0 };
        self.pod_map
            .lock()
            .unwrap()
            .insert(netns_cookie, info, 0)
            .map_err(|source| Error::Map { name: MAP_PODS, source })?;
        let links = PodLinks { connect4, connect6, sockops };
        self.pods.lock().unwrap().insert(uid.to_string(), PodEntry { netns_cookie, links });
        debug!(uid, netns_cookie, cgroup = %cgroup.display(), "pod attached");
        Ok(())
    }

    /// Detaches the pod's programs and removes every map entry of its namespace.
    pub fn unenroll(&self, uid: &str) -> bool {
        let Some(entry) = self.pods.lock().unwrap().remove(uid) else { return false };
        let mut ebpf = self.ebpf.lock().unwrap();
        let PodLinks { connect4, connect6, sockops } = entry.links;
        if let Ok(p) = program::<CgroupSockAddr>(&mut ebpf, CONNECT4) {
            let _ = p.detach(connect4);
        }
        if let Ok(p) = program::<CgroupSockAddr>(&mut ebpf, CONNECT6) {
            let _ = p.detach(connect6);
        }
        if let Ok(p) = program::<SockOps>(&mut ebpf, SOCKOPS) {
            let _ = p.detach(sockops);
        }
        drop(ebpf);
        self.detach_policy(uid);
        if let Ok(info) = self.pod_map.lock().unwrap().get(&entry.netns_cookie, 0) {
            self.policy.lock().unwrap().remove(info.addr);
        }
        let _ = self.pod_map.lock().unwrap().remove(&entry.netns_cookie);
        let mut orig = self.orig_dst.lock().unwrap();
        let stale: Vec<SockKey> =
            orig.keys().filter_map(Result::ok).filter(|k| k.netns_cookie == entry.netns_cookie).collect();
        for k in stale {
            let _ = orig.remove(&k);
        }
        debug!(uid, "pod detached");
        true
    }

    /// The original destination of a captured connection, as the agent sees it after
    /// accept(): the pod's namespace and the peer's port.
    pub fn orig_dst(&self, netns_cookie: u64, peer_port: u16, ipv6: bool) -> Option<SocketAddr> {
        let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET } as u16;
        let key = SockKey { netns_cookie, port: peer_port, family, _pad: [0; 4] };
        let v = self.orig_dst.lock().unwrap().get(&key, 0).ok()?;
        Some(SocketAddr::new(ip_from_addr(v.addr), u16::from_be(v.port_be)))
    }

    /// Makes `MESH_DESTS` hold exactly the destinations `state` says the mesh captures:
    /// each service VIP:port, and each HBONE workload's addresses (any port).
    pub fn sync_mesh_dests(&self, state: &State) -> Result<(), Error> {
        let want = mesh_dests(state);
        let mut map = self.mesh_dests.lock().unwrap();
        let have: HashSet<DestKey> = map.keys().filter_map(Result::ok).collect();
        let err = |source| Error::Map { name: MAP_MESH_DESTS, source };
        for k in have.iter().filter(|k| !want.contains_key(*k)) {
            map.remove(k).map_err(err)?;
        }
        for (k, v) in &want {
            if map.get(k, 0).ok() != Some(*v) {
                map.insert(k, v, 0).map_err(err)?;
            }
        }
        debug!(entries = want.len(), "mesh destinations synced");
        Ok(())
    }

    /// Keeps `MESH_DESTS` in step with `state` until the state is dropped.
    pub async fn run_sync(self: std::sync::Arc<Self>, state: State) {
        let mut rx = state.subscribe();
        loop {
            if let Err(e) = self.sync_mesh_dests(&state) {
                warn!("syncing mesh destinations into the kernel: {e}");
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Detaches everything and removes the pins (the agent is stopping).
    pub fn shutdown(self) {
        let uids: Vec<String> = self.pods.lock().unwrap().keys().cloned().collect();
        for uid in uids {
            self.unenroll(&uid);
        }
        let bpffs = self.bpffs.clone();
        drop(self);
        if let Err(e) = std::fs::remove_dir_all(&bpffs) {
            warn!("removing {}: {e}", bpffs.display());
        }
        info!(bpffs = %bpffs.display(), "eBPF programs detached, pins removed");
    }
}

/// What `MESH_DESTS` should hold for `state`.
pub fn mesh_dests(state: &State) -> HashMap<DestKey, DestValue> {
    let mut want = HashMap::new();
    for svc in state.services() {
        for vip in &svc.vips {
            for p in &svc.ports {
                let key = DestKey { addr: addr_from_ip(*vip), port_be: p.service_port.to_be(), _pad: [0; 2] };
                want.insert(key, DestValue { flags: DEST_SERVICE });
            }
        }
    }
    for w in state.workloads() {
        if w.protocol != TunnelProtocol::Hbone {
            continue;
        }
        for ip in &w.addresses {
            let key = DestKey { addr: addr_from_ip(*ip), port_be: 0, _pad: [0; 2] };
            want.insert(key, DestValue { flags: DEST_WORKLOAD });
        }
    }
    want
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(Error::Program {
        name,
        source: aya::programs::ProgramError::NotLoaded,
    })?;
    prog.try_into().map_err(|source| Error::Program { name, source })
}

fn take_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<MapData, K, V>, Error> {
    let map = ebpf.take_map(name).ok_or(Error::MissingMap(name))?;
    BpfHashMap::try_from(map).map_err(|source| Error::Map { name, source })
}

impl crate::proxy::OrigDstLookup for Kernel {
    fn lookup(&self, netns_cookie: u64, peer_port: u16, ipv6: bool) -> Option<SocketAddr> {
        self.orig_dst(netns_cookie, peer_port, ipv6)
    }
}
