//! L4 AuthorizationPolicy in the kernel: writes compiled tables into the policy maps
//! with an atomic switch per pod, and attaches `policy_ingress` to pods' interfaces.
//!
//! # Generations
//! Each update of a pod's policy gets a fresh version number (a u32 never reused while
//! the agent runs). An update writes all `POLICY_RULES` entries of the new version,
//! then its `POLICY_META` entry, and only then points `POLICY_PODS[pod]` at it: one
//! map update, which a packet sees entirely or not at all. The version it replaced is
//! kept intact until the pod's next update (so a packet judged during a switch still
//! finds it whole), then retired meta first, rules second. The program reads the meta
//! entry after its rule lookups, so a packet that straddles a retirement is dropped as
//! `POLICY_UNKNOWN` (fail closed) rather than judged by a half-deleted table.
//!
//! # Hook
//! tcx ingress on every non-loopback interface inside the pod's network namespace,
//! attached first in the chain (`LinkOrder::first()`): a program before ours that
//! returned "pass" would end the chain and skip us. Allowed packets return
//! `TCX_NEXT`, so programs after ours (a CNI's) still run. bpf_links: nothing of
//! anyone else's is replaced, and closing the link (detach, agent exit) removes ours.
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, TestRun, TestRunOptions};
use mesh_common::{
    addr_from_ip, Addr, PolicyKey, PolicyMeta, PolicyValue, MAP_POLICY_META, MAP_POLICY_PODS, MAP_POLICY_RULES,
    POLICY_HAS_ALLOW, POLICY_KEY_FIXED_BITS,
};
use tracing::{debug, info};

use super::{program, Kernel};
use crate::l4policy::{self, Compiled, L4Policy};

/// Name of the policy program in the eBPF object.
pub const POLICY_PROG: &str = "policy_ingress";
/// What `policy_ingress` returns for a packet it lets through (`TCX_NEXT`, -1).
pub const VERDICT_PASS: u32 = u32::MAX;
/// What `policy_ingress` returns for a packet it drops (`TCX_DROP`).
pub const VERDICT_DROP: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("compiling L4 policy: {0}")]
    Compile(#[from] l4policy::CompileError),
    #[error(
        "kernel map {map} is full: the policy needs {needed} more entries, {used} of {capacity} are in use; \
         the pod keeps its previous policy (fewer or broader ipBlocks, or a larger map, would fit)"
    )]
    Full { map: &'static str, needed: usize, used: usize, capacity: u32 },
    #[error("kernel map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("the policy program is not loaded: {0}")]
    Program(#[source] Box<aya::programs::ProgramError>),
    #[error("attaching {POLICY_PROG} (tcx ingress) to {iface} in {netns}: {source}")]
    Attach {
        iface: String,
        netns: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("listing interfaces of {netns}: {source}; is the pod's namespace still there?")]
    Netns {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning the policy links: {0}")]
    Pin(String),
    #[error("running {POLICY_PROG} with BPF_PROG_TEST_RUN: {0}")]
    TestRun(#[source] Box<aya::programs::ProgramError>),
}

/// One version of one pod's table, as written to the kernel.
struct Version {
    version: u32,
    keys: Vec<Key<PolicyKey>>,
}

#[derive(Default)]
struct PodPolicy {
    active: Option<Version>,
    previous: Option<Version>,
}

/// The three policy maps and what the agent has written into them.
pub(super) struct PolicyMaps {
    pods: BpfHashMap<MapData, Addr, u32>,
    meta: BpfHashMap<MapData, u32, PolicyMeta>,
    rules: LpmTrie<MapData, PolicyKey, PolicyValue>,
    capacity: [u32; 3],
    next_version: u32,
    live: HashMap<Addr, PodPolicy>,
    /// `POLICY_RULES` entries of all live versions.
    rules_used: usize,
}

/// Whether a map error says the map is full (hash: E2BIG, LPM trie: ENOSPC).
/// The key was not there (aya reports a delete of a missing key as the syscall's
/// ENOENT, a lookup as `KeyNotFound`).
fn not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn is_full(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOSPC)))
}

impl PolicyMaps {
    /// Takes the maps from `ebpf` and adopts what a previous agent left in them (its
    /// policy links stay pinned, so its tables keep deciding until this agent writes
    /// new ones): each pod's active version is kept, versions no pod points to are
    /// retired, and new versions are numbered after the highest one found.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<PolicyMaps, super::Error> {
        let mut take = |name: &'static str| {
            let m = ebpf.take_map(name).ok_or(super::Error::MissingMap(name))?;
            let cap = m_capacity(&m);
            Ok::<_, super::Error>((m, cap))
        };
        let (pods, c0) = take(MAP_POLICY_PODS)?;
        let (meta, c1) = take(MAP_POLICY_META)?;
        let (rules, c2) = take(MAP_POLICY_RULES)?;
        let e = |name| move |source| super::Error::Map { name, source };
        let pods: BpfHashMap<MapData, Addr, u32> = BpfHashMap::try_from(pods).map_err(e(MAP_POLICY_PODS))?;
        let meta: BpfHashMap<MapData, u32, PolicyMeta> = BpfHashMap::try_from(meta).map_err(e(MAP_POLICY_META))?;
        let rules: LpmTrie<MapData, PolicyKey, PolicyValue> =
            LpmTrie::try_from(rules).map_err(e(MAP_POLICY_RULES))?;
        let mut maps = PolicyMaps {
            pods,
            meta,
            rules,
            capacity: [c0, c1, c2],
            next_version: 1,
            live: HashMap::new(),
            rules_used: 0,
        };
        maps.adopt();
        Ok(maps)
    }

    fn adopt(&mut self) {
        let active: HashMap<u32, Addr> =
            self.pods.iter().filter_map(Result::ok).map(|(pod, version)| (version, pod)).collect();
        let mut by_version: HashMap<u32, Vec<Key<PolicyKey>>> = HashMap::new();
        for k in self.rules.keys().filter_map(Result::ok) {
            by_version.entry(k.data().version).or_default().push(k);
        }
        let metas: Vec<u32> = self.meta.keys().filter_map(Result::ok).collect();
        let highest = by_version.keys().chain(&metas).chain(active.keys()).copied().max().unwrap_or(0);
        self.next_version = highest.wrapping_add(1).max(1);
        for v in metas.iter().filter(|v| !active.contains_key(v)) {
            let _ = self.meta.remove(v);
        }
        let mut adopted = 0;
        for (version, keys) in by_version {
            match active.get(&version) {
                Some(pod) => {
                    self.rules_used += keys.len();
                    let state = PodPolicy { active: Some(Version { version, keys }), previous: None };
                    self.live.insert(*pod, state);
                    adopted += 1;
                }
                None => {
                    for k in &keys {
                        let _ = self.rules.remove(k);
                    }
                }
            }
        }
        if adopted > 0 {
            info!(pods = adopted, entries = self.rules_used, "adopted the L4 policy tables a previous agent left");
        }
    }

    fn fresh_version(&mut self) -> u32 {
        let v = self.next_version;
        self.next_version = self.next_version.wrapping_add(1).max(1);
        v
    }

    /// Retires a version that no `POLICY_PODS` entry points to any more: meta first
    /// (from then on a packet still holding it fails closed), then its rules.
    fn retire(&mut self, old: Version) {
        let _ = self.meta.remove(&old.version);
        for k in &old.keys {
            let _ = self.rules.remove(k);
        }
        self.rules_used -= old.keys.len();
    }

    /// Writes `compiled` as a new version of `pod`'s table and switches to it; an
    /// empty table removes the pod's entry (no policy: everything passes). On error
    /// the pod keeps the policy it had.
    pub(super) fn set(&mut self, pod: Addr, compiled: &Compiled) -> Result<Option<u32>, PolicyError> {
        let mut state = self.live.remove(&pod).unwrap_or_default();
        if let Some(prev) = state.previous.take() {
            self.retire(prev);
        }
        let result = self.switch(pod, compiled, &mut state);
        if state.active.is_some() || state.previous.is_some() {
            self.live.insert(pod, state);
        }
        result
    }

    fn switch(&mut self, pod: Addr, compiled: &Compiled, state: &mut PodPolicy) -> Result<Option<u32>, PolicyError> {
        if compiled.entries.is_empty() {
            match self.pods.remove(&pod) {
                Err(e) if !not_found(&e) => return Err(PolicyError::Map { map: MAP_POLICY_PODS, source: e }),
                _ => {}
            }
            state.previous = state.active.take();
            return Ok(None);
        }
        let needed = compiled.entries.len();
        let capacity = self.capacity[2];
        if self.rules_used + needed > capacity as usize {
            return Err(PolicyError::Full { map: MAP_POLICY_RULES, needed, used: self.rules_used, capacity });
        }
        let version = self.fresh_version();
        let mut written = Version { version, keys: Vec::with_capacity(needed) };
        for e in &compiled.entries {
            let key = Key::new(
                POLICY_KEY_FIXED_BITS + e.prefix.len as u32,
                PolicyKey { version, port_be: e.port.to_be(), _pad: 0, src: addr_words(e.prefix.octets()) },
            );
            let value = PolicyValue { verdict: e.verdict, policy: e.policy };
            if let Err(source) = self.rules.insert(&key, value, 0) {
                let used = self.rules_used + written.keys.len();
                self.rules_used += written.keys.len();
                self.retire(written);
                return Err(if is_full(&source) {
                    PolicyError::Full { map: MAP_POLICY_RULES, needed, used, capacity }
                } else {
                    PolicyError::Map { map: MAP_POLICY_RULES, source }
                });
            }
            written.keys.push(key);
        }
        self.rules_used += written.keys.len();
        let flags = if compiled.has_allow { POLICY_HAS_ALLOW } else { 0 };
        let meta = PolicyMeta { pod, flags, entries: needed as u32 };
        let mut step = self.meta.insert(version, meta, 0).map_err(|s| (MAP_POLICY_META, s));
        if step.is_ok() {
            step = self.pods.insert(pod, version, 0).map_err(|s| (MAP_POLICY_PODS, s));
        }
        if let Err((map, source)) = step {
            let used = self.rules_used;
            self.retire(written);
            return Err(if is_full(&source) {
                let capacity = if map == MAP_POLICY_PODS { self.capacity[0] } else { self.capacity[1] };
                PolicyError::Full { map, needed: 1, used, capacity }
            } else {
                PolicyError::Map { map, source }
            });
        }
        state.previous = state.active.replace(written);
        Ok(Some(version))
    }

    /// Removes every entry of `pod` at once (the pod is gone).
    pub(super) fn remove(&mut self, pod: Addr) {
        let _ = self.pods.remove(&pod);
        if let Some(state) = self.live.remove(&pod) {
            for v in [state.active, state.previous].into_iter().flatten() {
                self.retire(v);
            }
        }
    }
}

fn m_capacity(m: &aya::maps::Map) -> u32 {
    use aya::maps::Map;
    let data = match m {
        Map::HashMap(d) | Map::LpmTrie(d) => d,
        _ => return 0,
    };
    data.info().map(|i| i.max_entries()).unwrap_or(0)
}

fn not_loaded(e: super::Error) -> PolicyError {
    match e {
        super::Error::Program { source, .. } => PolicyError::Program(Box::new(source)),
        _ => PolicyError::Program(Box::new(aya::programs::ProgramError::NotLoaded)),
    }
}

/// Pin name of the policy link on `iface` (bpffs names may not contain dots).
fn pin_name(iface: &str) -> String {
    format!("policy_{}", iface.replace('.', "_"))
}

/// The cookie of the calling thread's network namespace.
fn netns_cookie_here() -> std::io::Result<u64> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: socket() has no memory arguments; a non-negative result is a new fd we own.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    crate::netns::socket_netns_cookie(&fd)
}

/// The kernel's address words from 16 network-order bytes.
fn addr_words(o: [u8; 16]) -> Addr {
    let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

impl Kernel {
    /// Compiles `policies` (those selecting the pod at `pod`, L4 rules only) and
    /// switches the pod's kernel table to the result atomically. An empty list
    /// removes the pod's table (no policy: everything passes). Returns the new
    /// version (`None` when removed). On error the pod keeps its previous policy.
    pub fn set_policy(&self, pod: IpAddr, policies: &[L4Policy]) -> Result<Option<u32>, PolicyError> {
        let compiled = l4policy::compile(policies)?;
        let addr = addr_from_ip(pod);
        let version = self.policy.lock().unwrap().set(addr, &compiled)?;
        debug!(%pod, policies = policies.len(), entries = compiled.entries.len(), ?version, "L4 policy set");
        Ok(version)
    }

    /// Attaches `policy_ingress` (tcx ingress, first in the chain) to every
    /// non-loopback interface in the pod's network namespace and pins each link as
    /// `links/<netns cookie>/policy_<iface>`, so the kernel keeps enforcing while the
    /// agent is away. A link an earlier agent pinned there is released only after the
    /// new one is attached (no gap). Idempotent per uid. Returns the interface names.
    pub fn attach_policy(&self, uid: &str, netns: &Path) -> Result<Vec<String>, PolicyError> {
        // Attached again by this agent (re-enrollment, a failed hand-over): tcx refuses
        // the same program twice on a hook, and ours is already there, pinned; keep it
        // (the pod is never without it). Pins that went missing (a successor released
        // them) are attached anew. An earlier agent's links (another program) are
        // replaced at commit, after the new ones are in.
        if let Some(paths) = self.policy_links.lock().unwrap().get(uid) {
            if !paths.is_empty() && paths.iter().all(|p| p.exists()) {
                return Ok(paths.iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect());
            }
        }
        let ns = netns.display().to_string();
        let mut ebpf = self.ebpf.lock().unwrap();
        let prog: &mut SchedClassifier = program(&mut ebpf, POLICY_PROG).map_err(not_loaded)?;
        let attached = crate::netns::run_in(netns, || {
            let cookie = netns_cookie_here()?;
            let names: Vec<String> = nix::net::if_::if_nameindex()
                .map_err(std::io::Error::from)?
                .iter()
                .map(|i| i.name().to_string_lossy().into_owned())
                .filter(|n| n != "lo")
                .collect();
            let mut links = Vec::new();
            for iface in names {
                let order = TcAttachOptions::TcxOrder(LinkOrder::first());
                match prog.attach_with_options(&iface, TcAttachType::Ingress, order) {
                    Ok(id) => links.push((iface, id)),
                    Err(source) => return Ok((cookie, Err((iface, source, links)))),
                }
            }
            Ok((cookie, Ok(links)))
        })
        .map_err(|source| PolicyError::Netns { netns: ns.clone(), source })?;
        let links = match attached {
            (_, Err((iface, source, links))) => {
                for (_, id) in links {
                    let _ = prog.detach(id);
                }
                return Err(PolicyError::Attach { iface, netns: ns, source: Box::new(source) });
            }
            (cookie, Ok(links)) => (cookie, links),
        };
        let (cookie, links) = links;
        let dir = super::pins::pod_dir(&self.bpffs, cookie);
        let mut pinned = Vec::new();
        let mut names = Vec::new();
        for (iface, id) in links {
            let name = pin_name(&iface);
            let link = prog.take_link(id).map_err(|e| PolicyError::Program(Box::new(e)))?;
            super::pins::pin_new(&dir, &name, link).map_err(PolicyError::Pin)?;
            pinned.push(name);
            names.push(iface);
        }
        drop(ebpf);
        for name in &pinned {
            super::pins::commit(&dir, name).map_err(PolicyError::Pin)?;
        }
        let paths: Vec<PathBuf> = pinned.iter().map(|n| dir.join(n)).collect();
        let old = self.policy_links.lock().unwrap().insert(uid.to_string(), paths.clone());
        // Links of interfaces (or a namespace) the pod no longer has.
        for p in old.into_iter().flatten().filter(|p| !paths.contains(p)) {
            super::pins::release(&p);
        }
        info!(uid, netns = %ns, ifaces = ?names, "L4 policy program attached (tcx ingress, pinned)");
        Ok(names)
    }

    /// Detaches the pod's policy program links and removes their pins (its table
    /// stays until [`Kernel::set_policy`] with no policies, or unenroll).
    pub fn detach_policy(&self, uid: &str) -> bool {
        let Some(paths) = self.policy_links.lock().unwrap().remove(uid) else { return false };
        for p in paths {
            super::pins::release(&p);
        }
        true
    }

    /// Removes every policy entry of the pod at `pod` at once.
    pub fn remove_policy(&self, pod: IpAddr) {
        self.policy.lock().unwrap().remove(addr_from_ip(pod));
    }

    /// Runs `policy_ingress` on `packet` (an Ethernet frame) with BPF_PROG_TEST_RUN,
    /// `repeat` times. Returns the program's return value ([`VERDICT_PASS`] or
    /// [`VERDICT_DROP`]) and the kernel's mean time per run. For tests and benchmarks.
    pub fn test_run_policy(&self, packet: &[u8], repeat: u32) -> Result<(u32, Duration), PolicyError> {
        let mut ebpf = self.ebpf.lock().unwrap();
        let prog: &mut SchedClassifier =
            program(&mut ebpf, POLICY_PROG).map_err(not_loaded)?;
        let opts = TestRunOptions { data_in: Some(packet), repeat: repeat.max(1), ..TestRunOptions::new() };
        let r = prog.test_run(opts).map_err(|e| PolicyError::TestRun(Box::new(e)))?;
        Ok((r.return_value, r.duration))
    }
}
