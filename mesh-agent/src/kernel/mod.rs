//! Loads, pins and attaches the eBPF programs, and keeps their maps in step with the
//! agent's state.
//!
//! One [`Kernel`] per agent. Maps are pinned under the agent's bpffs folder (so that
//! `meshctl` can read them); programs are attached to each enrolled pod's cgroup with
//! bpf_links. A cgroup bpf_link is always multi-program in the kernel (the attach
//! flags must be 0, which aya calls `Single`), so other programs on the same cgroup
//! (a CNI's) keep running beside ours. The inbound program (`steer_inbound`,
//! sk_lookup) is attached to each pod's network namespace, also with a bpf_link:
//! sk_lookup links are multi-program too, and we never replace one we do not own.
pub mod dump;
pub mod explain;
pub mod fastpath;
pub mod flows;
pub mod layout;
pub mod pins;
pub mod policy;
mod preflight;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{HashMap as BpfHashMap, MapData, SockHash};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, SkLookup, SockOps};
use aya::{Ebpf, EbpfLoader};
use mesh_common::{
    addr_from_ip, ip_from_addr, Addr, DestKey, DestValue, ForwardKey, InboundRule, NetnsPortKey, OrigDst, PodInfo,
    SockKey, DEST_SERVICE, DEST_WORKLOAD, MAP_INBOUND, MAP_INBOUND_EXEMPT_SRC, MAP_INBOUND_LISTENERS,
    MAP_FORWARDS, MAP_INBOUND_PORTS, MAP_MESH_DESTS, MAP_ORIG_DST, MAP_OUTBOUND_EXCLUDED_PORTS, MAP_PODS,
};
use tracing::{debug, info, warn};

use crate::capture::{InboundConfig, PodCapture};
use crate::state::{State, TunnelProtocol};

pub use preflight::preflight;

/// The kernel programs, built by build.rs from `mesh-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh"));

/// The embedded eBPF object (for layout checks and tests).
pub fn ebpf_object() -> &'static [u8] {
    EBPF_OBJECT
}

const CONNECT4: &str = "connect4";
const CONNECT6: &str = "connect6";
const SOCKOPS: &str = "track_orig";
const SK_LOOKUP: &str = "steer_inbound";

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
    #[error("pinning a link: {0}")]
    Pin(String),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
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
    #[error("opening network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching {name} to network namespace {path}: {source}; mesh needs Linux >= 5.9 (sk_lookup)")]
    AttachNetns {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: aya::programs::ProgramError,
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
/// An enrolled pod as the kernel knows it.
struct PodEntry {
    netns_cookie: u64,
    /// The pod's addresses (keys of `INBOUND`, `INBOUND_PORTS`, `INBOUND_LISTENERS`).
    addrs: Vec<Addr>,
}

/// What the kernel needs to enroll one pod.
pub struct PodAttach<'a> {
    pub uid: &'a str,
    pub netns_cookie: u64,
    /// The pod's network namespace (`/run/netns/<name>`, `/proc/<pid>/ns/net`).
    pub netns: &'a Path,
    pub cgroup: &'a Path,
    pub ips: &'a [IpAddr],
    /// The agent's inbound plaintext listeners (15006) inside the pod: IPv4, IPv6.
    pub inbound_v4: Option<BorrowedFd<'a>>,
    pub inbound_v6: Option<BorrowedFd<'a>>,
    pub capture: &'a PodCapture,
}

pub struct Kernel {
    bpffs: PathBuf,
    ebpf: Mutex<Ebpf>,
    pods: Mutex<HashMap<String, PodEntry>>,
    mesh_dests: Mutex<BpfHashMap<MapData, DestKey, DestValue>>,
    pod_map: Mutex<BpfHashMap<MapData, u64, PodInfo>>,
    orig_dst: Mutex<aya::maps::HashMap<MapData, SockKey, OrigDst>>,
    forwards: Mutex<BpfHashMap<MapData, ForwardKey, u8>>,
    flow_events: Mutex<Option<aya::maps::RingBuf<MapData>>>,
    inbound: Mutex<BpfHashMap<MapData, Addr, InboundRule>>,
    inbound_ports: Mutex<BpfHashMap<MapData, DestKey, InboundRule>>,
    inbound_listeners: Mutex<SockHash<MapData, Addr>>,
    exempt_src: Mutex<BpfHashMap<MapData, Addr, u32>>,
    outbound_excluded: Mutex<BpfHashMap<MapData, NetnsPortKey, u32>>,
    policy: Mutex<policy::PolicyMaps>,
    /// Pod uid -> pin paths of its policy links.
    policy_links: Mutex<HashMap<String, Vec<PathBuf>>>,
    fast: fastpath::FastPath,
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
        for r in layout::retire_changed(bpffs, EBPF_OBJECT).map_err(Error::Preflight)? {
            warn!(
                map = %r.name, pinned = %r.pinned, wanted = %r.wanted,
                "pinned map has an older layout: retired, a new one is created (it starts empty; \
                 the old one serves the old programs until their pods are enrolled again)"
            );
        }
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
        let sk_lookup: &mut SkLookup = program(&mut ebpf, SK_LOOKUP)?;
        sk_lookup.load().map_err(|source| Error::Program { name: SK_LOOKUP, source })?;
        let policy_prog: &mut SchedClassifier = program(&mut ebpf, policy::POLICY_PROG)?;
        policy_prog.load().map_err(|source| Error::Program { name: policy::POLICY_PROG, source })?;
        let policy = policy::PolicyMaps::take(&mut ebpf)?;
        let fast = fastpath::FastPath::load(&mut ebpf)?;

        let mesh_dests = take_hash(&mut ebpf, MAP_MESH_DESTS)?;
        let pod_map = take_hash(&mut ebpf, MAP_PODS)?;
        let orig_dst = take_hash(&mut ebpf, MAP_ORIG_DST)?;
        let forwards = take_hash(&mut ebpf, MAP_FORWARDS)?;
        let flow_events = ebpf.take_map(mesh_common::MAP_FLOW_EVENTS).ok_or(Error::MissingMap(mesh_common::MAP_FLOW_EVENTS))?;
        let flow_events = aya::maps::RingBuf::try_from(flow_events)
            .map_err(|source| Error::Map { name: mesh_common::MAP_FLOW_EVENTS, source })?;
        let inbound = take_hash(&mut ebpf, MAP_INBOUND)?;
        let inbound_ports = take_hash(&mut ebpf, MAP_INBOUND_PORTS)?;
        let exempt_src = take_hash(&mut ebpf, MAP_INBOUND_EXEMPT_SRC)?;
        let outbound_excluded = take_hash(&mut ebpf, MAP_OUTBOUND_EXCLUDED_PORTS)?;
        let name = MAP_INBOUND_LISTENERS;
        let listeners = ebpf.take_map(name).ok_or(Error::MissingMap(name))?;
        let inbound_listeners = SockHash::try_from(listeners).map_err(|source| Error::Map { name, source })?;
        info!(bpffs = %bpffs.display(), "eBPF programs loaded, maps pinned");
        Ok(Kernel {
            bpffs: bpffs.to_path_buf(),
            ebpf: Mutex::new(ebpf),
            pods: Mutex::default(),
            mesh_dests: Mutex::new(mesh_dests),
            pod_map: Mutex::new(pod_map),
            orig_dst: Mutex::new(orig_dst),
            forwards: Mutex::new(forwards),
            flow_events: Mutex::new(Some(flow_events)),
            inbound: Mutex::new(inbound),
            inbound_ports: Mutex::new(inbound_ports),
            inbound_listeners: Mutex::new(inbound_listeners),
            exempt_src: Mutex::new(exempt_src),
            outbound_excluded: Mutex::new(outbound_excluded),
            policy: Mutex::new(policy),
            policy_links: Mutex::default(),
            fast,
        })
    }

    /// The flow-event ring buffer, once, for the reader task ([`flows::run`]).
    pub fn take_flow_events(&self) -> Option<aya::maps::RingBuf<MapData>> {
        self.flow_events.lock().unwrap().take()
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// Source addresses never steered nor dropped inbound (the kubelet's probe
    /// address): makes `INBOUND_EXEMPT_SRC` hold exactly `sources`.
    pub fn set_exempt_sources(&self, sources: &[IpAddr]) -> Result<(), Error> {
        let err = |source| Error::Map { name: MAP_INBOUND_EXEMPT_SRC, source };
        let mut map = self.exempt_src.lock().unwrap();
        let want: HashSet<Addr> = sources.iter().map(|ip| addr_from_ip(*ip)).collect();
        let have: Vec<Addr> = map.keys().filter_map(Result::ok).collect();
        for k in have.iter().filter(|k| !want.contains(*k)) {
            map.remove(k).map_err(err)?;
        }
        for k in &want {
            map.insert(k, 1u32, 0).map_err(err)?;
        }
        Ok(())
    }

    /// Enrolls a pod: attaches the capture programs to its cgroup, writes its
    /// outbound exclusions, its inbound rules and listeners, and attaches the inbound
    /// program to its network namespace, then marks the namespace as enrolled.
    /// Idempotent for the same uid; on failure nothing of the pod is left behind.
    pub fn enroll(&self, pod: &PodAttach<'_>) -> Result<(), Error> {
        // Enrolled again in the same namespace (a replayed CNI event, a failed
        // hand-over): everything is replaced in place, the new links before the old ones
        // go, and the live connections' entries stay. Another namespace: start afresh.
        let previous = self.pods.lock().unwrap().get(pod.uid).map(|e| (e.netns_cookie, e.addrs.clone()));
        let stale_addrs = match previous {
            Some((cookie, _)) if cookie != pod.netns_cookie => {
                self.unenroll(pod.uid);
                Vec::new()
            }
            Some((_, addrs)) => addrs.into_iter().filter(|a| !pod.ips.iter().any(|ip| addr_from_ip(*ip) == *a)).collect(),
            None => Vec::new(),
        };
        let cg = File::open(pod.cgroup).map_err(|source| Error::Cgroup { path: pod.cgroup.into(), source })?;
        let ns = File::open(pod.netns).map_err(|source| Error::Netns { path: pod.netns.into(), source })?;
        let dir = pins::pod_dir(&self.bpffs, pod.netns_cookie);
        let pin_err = |e: String| Error::Pin(e);
        let mut ebpf = self.ebpf.lock().unwrap();
        let attach_err = |name| {
            let path = pod.cgroup.to_path_buf();
            move |source| Error::Attach { name, path, source }
        };
        for name in [CONNECT4, CONNECT6] {
            let prog = program::<CgroupSockAddr>(&mut ebpf, name)?;
            let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(attach_err(name))?;
            let link = prog.take_link(id).map_err(|source| Error::Program { name, source })?;
            pins::pin_new(&dir, name, link).map_err(pin_err)?;
        }
        let prog = program::<SockOps>(&mut ebpf, SOCKOPS)?;
        let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(attach_err(SOCKOPS))?;
        let link = prog.take_link(id).map_err(|source| Error::Program { name: SOCKOPS, source })?;
        pins::pin_new(&dir, SOCKOPS, link).map_err(pin_err)?;
        let fast = self.fast_path_enabled();
        if fast {
            let name = fastpath::FAST_SOCKOPS;
            let prog = program::<SockOps>(&mut ebpf, name)?;
            let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(attach_err(name))?;
            let link = prog.take_link(id).map_err(|source| Error::Program { name, source })?;
            pins::pin_new(&dir, name, link).map_err(pin_err)?;
        } else {
            // An earlier agent's fast path must not outlive `--fast-path off`.
            pins::release(&dir.join(fastpath::FAST_SOCKOPS));
        }
        drop(ebpf);
        for name in [CONNECT4, CONNECT6, SOCKOPS].into_iter().chain(fast.then_some(fastpath::FAST_SOCKOPS)) {
            pins::commit(&dir, name).map_err(pin_err)?;
        }
        let addrs: Vec<Addr> = pod.ips.iter().map(|ip| addr_from_ip(*ip)).collect();
        let entry = PodEntry { netns_cookie: pod.netns_cookie, addrs };
        self.pods.lock().unwrap().insert(pod.uid.to_string(), entry);
        let result = self.enroll_rest(pod, &ns);
        if result.is_err() {
            self.unenroll(pod.uid);
        }
        self.forget_addrs(&stale_addrs);
        result
    }

    /// Removes the inbound and policy entries of addresses a pod no longer has.
    fn forget_addrs(&self, addrs: &[Addr]) {
        if addrs.is_empty() {
            return;
        }
        for a in addrs {
            self.policy.lock().unwrap().remove(*a);
        }
        remove_where(&mut self.inbound_ports.lock().unwrap(), |k: &DestKey| addrs.contains(&k.addr));
        let mut inbound = self.inbound.lock().unwrap();
        let mut listeners = self.inbound_listeners.lock().unwrap();
        for a in addrs {
            let _ = inbound.remove(a);
            let _ = listeners.remove(a);
        }
    }

    fn enroll_rest(&self, pod: &PodAttach<'_>, ns: &File) -> Result<(), Error> {
        {
            let err = |source| Error::Map { name: MAP_OUTBOUND_EXCLUDED_PORTS, source };
            let mut map = self.outbound_excluded.lock().unwrap();
            let cookie = pod.netns_cookie;
            let keep = &pod.capture.outbound.excluded_ports;
            remove_where(&mut map, |k: &NetnsPortKey| k.netns_cookie == cookie && !keep.contains(&u16::from_be(k.port_be)));
            for p in &pod.capture.outbound.excluded_ports {
                let key = NetnsPortKey { netns_cookie: pod.netns_cookie, port_be: p.to_be(), _pad: [0; 6] };
                map.insert(key, 1u32, 0).map_err(err)?;
            }
        }
        {
            let err = |source| Error::Map { name: MAP_INBOUND_LISTENERS, source };
            let mut map = self.inbound_listeners.lock().unwrap();
            for ip in pod.ips {
                let fd = if ip.is_ipv4() { pod.inbound_v4 } else { pod.inbound_v6 };
                if let Some(fd) = fd {
                    map.insert(addr_from_ip(*ip), fd, 0).map_err(err)?;
                }
            }
        }
        self.set_inbound(pod.ips, &pod.capture.inbound)?;
        let mut ebpf = self.ebpf.lock().unwrap();
        let prog = program::<SkLookup>(&mut ebpf, SK_LOOKUP)?;
        let id = prog.attach(ns).map_err(|source| Error::AttachNetns {
            name: SK_LOOKUP,
            path: pod.netns.to_path_buf(),
            source,
        })?;
        let link = prog.take_link(id).map_err(|source| Error::Program { name: SK_LOOKUP, source })?;
        drop(ebpf);
        let dir = pins::pod_dir(&self.bpffs, pod.netns_cookie);
        pins::pin_new(&dir, SK_LOOKUP, link).map_err(Error::Pin)?;
        pins::commit(&dir, SK_LOOKUP).map_err(Error::Pin)?;
        self.attach_policy(pod.uid, pod.netns)?;
        let info = PodInfo { addr: addr_from_ip(pod.ips[0]), flags: 0 };
        self.pod_map
            .lock()
            .unwrap()
            .insert(pod.netns_cookie, info, 0)
            .map_err(|source| Error::Map { name: MAP_PODS, source })?;
        self.fast.set_pod(pod.netns_cookie, self.fast_path_enabled())?;
        debug!(uid = pod.uid, netns_cookie = pod.netns_cookie, cgroup = %pod.cgroup.display(),
            netns = %pod.netns.display(), inbound = ?pod.capture.inbound, "pod attached");
        Ok(())
    }

    /// Writes the inbound rules of a pod's addresses: its mode in `INBOUND`, and
    /// exactly `config`'s port rules in `INBOUND_PORTS` (stale ones removed). Takes
    /// effect for the next connection; a later PeerAuthentication change calls this.
    pub fn set_inbound(&self, ips: &[IpAddr], config: &InboundConfig) -> Result<(), Error> {
        let addrs: Vec<Addr> = ips.iter().map(|ip| addr_from_ip(*ip)).collect();
        let rules = config.kernel_port_rules();
        {
            let err = |source| Error::Map { name: MAP_INBOUND_PORTS, source };
            let mut map = self.inbound_ports.lock().unwrap();
            let have: Vec<DestKey> = map.keys().filter_map(Result::ok).filter(|k| addrs.contains(&k.addr)).collect();
            for k in have.iter().filter(|k| !rules.contains_key(&u16::from_be(k.port_be))) {
                map.remove(k).map_err(err)?;
            }
            for a in &addrs {
                for (port, mode) in &rules {
                    let key = DestKey { addr: *a, port_be: port.to_be(), _pad: [0; 2] };
                    map.insert(key, InboundRule { mode: *mode }, 0).map_err(err)?;
                }
            }
        }
        let err = |source| Error::Map { name: MAP_INBOUND, source };
        let mut map = self.inbound.lock().unwrap();
        for a in &addrs {
            map.insert(a, InboundRule { mode: config.kernel_mode() }, 0).map_err(err)?;
        }
        Ok(())
    }

    /// Detaches the pod's programs and removes every map entry of its namespace and
    /// of its addresses.
    pub fn unenroll(&self, uid: &str) -> bool {
        let Some(entry) = self.pods.lock().unwrap().remove(uid) else { return false };
        pins::release_pod(&pins::pod_dir(&self.bpffs, entry.netns_cookie));
        self.detach_policy(uid);
        let _ = self.pod_map.lock().unwrap().remove(&entry.netns_cookie);
        let cookie = entry.netns_cookie;
        self.fast.forget_pod(cookie);
        remove_where(&mut self.orig_dst.lock().unwrap(), |k: &SockKey| k.netns_cookie == cookie);
        remove_where(&mut self.outbound_excluded.lock().unwrap(), |k: &NetnsPortKey| k.netns_cookie == cookie);
        self.forget_addrs(&entry.addrs);
        debug!(uid, "pod detached");
        true
    }

    /// Turns the same-node fast path on for pods enrolled from now on, and attaches
    /// `fast_sockops` to the agent's own cgroup (see [`fastpath`]).
    pub fn enable_fast_path(&self) -> Result<(), Error> {
        fastpath::attach_agent(&mut self.ebpf.lock().unwrap())?;
        self.fast.enabled.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    pub fn fast_path_enabled(&self) -> bool {
        self.fast.enabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Switches an enrolled pod's fast path on or off, live: off also stops the
    /// redirects of its existing connections (they carry on over loopback TCP, no byte
    /// lost or reordered). Returns false for a pod not enrolled.
    pub fn fast_path_set(&self, uid: &str, on: bool) -> Result<bool, Error> {
        let Some(cookie) = self.pods.lock().unwrap().get(uid).map(|p| p.netns_cookie) else { return Ok(false) };
        self.fast.set_pod(cookie, on && self.fast_path_enabled())?;
        Ok(true)
    }

    /// Takes a pod's existing connections off the fast path (so that a policy change
    /// reaches them in the agent): [`Kernel::fast_path_set`] off.
    pub fn fast_path_evict(&self, uid: &str) -> Result<bool, Error> {
        self.fast_path_set(uid, false)
    }

    /// Takes one connection (either end's key) off the fast path, for good.
    pub fn fast_path_evict_conn(&self, key: &mesh_common::FastKey) -> Result<(), Error> {
        self.fast.evict(key)
    }

    /// The pod's sockets now on the fast path.
    pub fn fast_path_sockets(&self, uid: &str) -> Vec<mesh_common::FastKey> {
        let Some(cookie) = self.pods.lock().unwrap().get(uid).map(|p| p.netns_cookie) else { return Vec::new() };
        self.fast.sockets(cookie)
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

    /// The agent is stopping: every pod's links stay pinned, so the kernel keeps
    /// capturing and failing closed until a new agent adopts them (or
    /// `mesh-agent uninstall` releases them).
    pub fn shutdown(self) {
        let pods = self.pods.lock().unwrap().len();
        info!(bpffs = %self.bpffs.display(), pods, "kernel programs stay attached (pinned); `mesh-agent uninstall --bpffs {}` removes them", self.bpffs.display());
    }

    /// Releases every pinned link and removes the bpffs folder: what `mesh-agent
    /// uninstall` does, on a node whose agent is stopped.
    pub fn uninstall(bpffs: &Path) -> Result<usize, Error> {
        preflight(bpffs).map_err(Error::Preflight)?;
        let pods = pins::release_all(bpffs);
        if bpffs.exists() {
            std::fs::remove_dir_all(bpffs)
                .map_err(|e| Error::Preflight(format!("removing {}: {e}", bpffs.display())))?;
        }
        Ok(pods)
    }
}

fn forward_key(src: SocketAddr, app_port: u16) -> ForwardKey {
    ForwardKey { remote: addr_from_ip(src.ip().to_canonical()), remote_port_be: src.port().to_be(), local_port: app_port }
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

/// Removes the keys of `map` that `pred` selects.
fn remove_where<K: aya::Pod, V: aya::Pod>(map: &mut BpfHashMap<MapData, K, V>, pred: impl Fn(&K) -> bool) {
    let stale: Vec<K> = map.keys().filter_map(Result::ok).filter(|k| pred(k)).collect();
    for k in stale {
        let _ = map.remove(&k);
    }
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

    fn forward_begin(&self, src: SocketAddr, app_port: u16) {
        let key = forward_key(src, app_port);
        if let Err(e) = self.forwards.lock().unwrap().insert(key, 1, 0) {
            warn!("registering the forward from {src} to port {app_port}: {e}; inbound steering may catch it");
        }
    }

    fn forward_end(&self, src: SocketAddr, app_port: u16) {
        let _ = self.forwards.lock().unwrap().remove(&forward_key(src, app_port));
    }
}
