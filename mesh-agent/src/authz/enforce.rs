//! Enforcement on the node: the pods whose inbound listeners run here, their live
//! inbound connections, and the loop that keeps the kernel's tables and those
//! connections in step with policy and workloads.
//!
//! PeerAuthentication arrives as DENY policies of one shape (see [`strict_ports`]).
//! The kernel does not get them as L4 policy (`policy_ingress` would drop by address,
//! and the kubelet's probes with it); they make the pod's inbound mode STRICT on their
//! ports instead (`steer_inbound` drops plaintext as `strict_plaintext`), combined with
//! the enrollment's mode by taking the stricter.
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use super::{decide, to_l4, Action, Attrs, Decision, Match, Policy, Request, StrMatch};
use crate::capture::{InboundConfig, StrictPorts};
use crate::kernel::Kernel;
use crate::l4policy::L4Policy;
use crate::state::State;

/// A pod served here: its namespace and addresses, and a generation that changes on
/// every (re)start, so its kernel table is written again after a re-enrollment.
#[derive(Clone, Debug)]
struct PodRef {
    namespace: String,
    ips: Vec<IpAddr>,
    generation: u64,
}

struct Live {
    pod_namespace: String,
    pod_name: String,
    attrs: Attrs,
    /// Served as HTTP: each request is judged, so only a verdict that denies the
    /// connection whatever it asks closes it.
    http: bool,
    close: oneshot::Sender<String>,
}

/// Shared by the pods' listeners and the reconcile loop.
pub struct Enforcer {
    /// Whether the control plane's policies have arrived; until then every inbound
    /// connection is refused (fail closed).
    synced: AtomicBool,
    pods: Mutex<HashMap<String, PodRef>>,
    live: Mutex<HashMap<u64, Live>>,
    /// Each enrolled pod's inbound configuration from its enrollment, by uid, with a
    /// generation that changes at each enrollment (the kernel's entry was rewritten).
    /// Held while writing the kernel's inbound entries, so that a pod forgotten (and
    /// then unenrolled) never gets entries written back.
    enrolled: Mutex<HashMap<String, (u64, InboundConfig)>>,
    next: AtomicU64,
    changed: watch::Sender<u64>,
}

impl Default for Enforcer {
    /// Ready to decide from the start (tests that fill the state themselves).
    fn default() -> Self {
        Enforcer {
            synced: AtomicBool::new(true),
            pods: Mutex::default(),
            live: Mutex::default(),
            enrolled: Mutex::default(),
            next: AtomicU64::new(1),
            changed: watch::channel(0).0,
        }
    }
}

/// A live connection's place in the registry; dropping it leaves the registry.
pub struct Registration {
    enforcer: Arc<Enforcer>,
    id: u64,
    close: Option<oneshot::Receiver<String>>,
}

impl Registration {
    /// Resolves with the reason when a policy change denies the connection; never
    /// otherwise.
    pub async fn revoked(&mut self) -> String {
        if let Some(rx) = self.close.as_mut() {
            if let Ok(reason) = rx.await {
                return reason;
            }
            self.close = None;
        }
        std::future::pending().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.enforcer.live.lock().unwrap().remove(&self.id);
    }
}

impl Enforcer {
    /// Refuses every connection until [`Enforcer::run`] sees the first full xDS update.
    pub fn waiting_for_sync() -> Self {
        let e = Enforcer::default();
        e.synced.store(false, Ordering::Relaxed);
        e
    }

    /// The pod's listeners started (again).
    pub fn pod_started(&self, uid: &str, namespace: &str, ips: &[IpAddr]) {
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        let pod = PodRef { namespace: namespace.to_string(), ips: ips.to_vec(), generation };
        self.pods.lock().unwrap().insert(uid.to_string(), pod);
        self.changed.send_modify(|v| *v += 1);
    }

    /// The pod's listeners stopped.
    pub fn pod_stopped(&self, uid: &str) {
        if self.pods.lock().unwrap().remove(uid).is_some() {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// The kernel now holds the pod's enrollment (`inbound` as the CNI gave it): its
    /// inbound mode is written again from policy.
    pub fn pod_enrolled(&self, uid: &str, inbound: &InboundConfig) {
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        self.enrolled.lock().unwrap().insert(uid.to_string(), (generation, inbound.clone()));
        self.changed.send_modify(|v| *v += 1);
    }

    /// The pod is about to leave the kernel: its inbound entries are not written again.
    pub fn pod_forgotten(&self, uid: &str) {
        self.enrolled.lock().unwrap().remove(uid);
    }

    /// The inbound configuration the kernel should hold for a pod at `ip` in
    /// `namespace` enrolled with `cni`: the stricter of it and the policies' STRICT
    /// ports. Before the control plane's policies arrive: `cni` as it is.
    pub fn kernel_inbound(&self, state: &State, namespace: &str, ip: IpAddr, cni: &InboundConfig) -> InboundConfig {
        if !self.synced.load(Ordering::Acquire) {
            return cni.clone();
        }
        cni.stricter(&policy_strict(&state.policies_for(namespace, ip)))
    }

    /// Decides a new inbound connection to a pod in `namespace`, or (with `req`) one
    /// of its HTTP requests.
    pub fn check(&self, state: &State, namespace: &str, attrs: &Attrs, req: Option<&Request>) -> Decision {
        if !self.synced.load(Ordering::Acquire) {
            return Decision::NotSynced;
        }
        decide(&state.policies_for(namespace, attrs.dst_ip), attrs, req)
    }

    /// Records an admitted connection so that a later policy change can close it;
    /// `http`: it is served as HTTP, each request judged.
    pub fn register(self: &Arc<Self>, namespace: &str, name: &str, attrs: Attrs, http: bool) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let live = Live { pod_namespace: namespace.to_string(), pod_name: name.to_string(), attrs, http, close: tx };
        self.live.lock().unwrap().insert(id, live);
        Registration { enforcer: self.clone(), id, close: Some(rx) }
    }

    /// Live connections, for tests and the admin dump.
    pub fn live_count(&self) -> usize {
        self.live.lock().unwrap().len()
    }

    /// Re-judges every live connection; closes the ones now denied.
    pub fn recheck(&self, state: &State) -> usize {
        let mut live = self.live.lock().unwrap();
        let denied: Vec<(u64, Decision)> = live
            .iter()
            .filter_map(|(id, l)| {
                let d = decide(&state.policies_for(&l.pod_namespace, l.attrs.dst_ip), &l.attrs, None);
                let keep = d.is_allowed() || l.http && matches!(d, Decision::Pending(_));
                (!keep).then_some((*id, d))
            })
            .collect();
        for (id, d) in &denied {
            if let Some(l) = live.remove(id) {
                let reason = format!("closed by a policy change: {}", d.describe());
                info!(pod = %format!("{}/{}", l.pod_namespace, l.pod_name), src = %l.attrs.src_ip,
                    port = l.attrs.dst_port, "{reason}");
                let _ = l.close.send(reason);
            }
        }
        denied.len()
    }

    /// Keeps the kernel's policy tables of the pods served here, and their live
    /// connections, in step with the state. Waits for the control plane's first full
    /// update: until then the kernel keeps what it holds (a previous agent's tables).
    pub async fn run(self: Arc<Self>, kernel: Arc<Kernel>, state: State, mut synced: watch::Receiver<bool>) {
        if synced.wait_for(|s| *s).await.is_err() {
            return;
        }
        self.synced.store(true, Ordering::Release);
        info!("authorization policies received; inbound connections are judged from now on");
        let mut state_rx = state.subscribe();
        let mut pods_rx = self.changed.subscribe();
        let mut written: HashMap<IpAddr, (u64, Vec<L4Policy>)> = HashMap::new();
        let mut modes: HashMap<IpAddr, (u64, InboundConfig)> = HashMap::new();
        loop {
            self.reconcile(&kernel, &state, &mut written);
            self.reconcile_modes(&kernel, &state, &mut modes);
            self.recheck(&state);
            tokio::select! {
                r = state_rx.changed() => if r.is_err() { return },
                r = pods_rx.changed() => if r.is_err() { return },
            }
        }
    }

    fn reconcile(&self, kernel: &Kernel, state: &State, written: &mut HashMap<IpAddr, (u64, Vec<L4Policy>)>) {
        let pods: Vec<PodRef> = self.pods.lock().unwrap().values().cloned().collect();
        let workloads = state.workloads();
        written.retain(|ip, _| pods.iter().any(|p| p.ips.contains(ip)));
        for pod in &pods {
            for ip in &pod.ips {
                let l4: Vec<L4Policy> = state
                    .policies_for(&pod.namespace, *ip)
                    .iter()
                    .filter(|p| strict_ports(p).is_none())
                    .filter_map(|p| to_l4(p, &workloads))
                    .collect();
                if written.get(ip).is_some_and(|(g, w)| *g == pod.generation && *w == l4) {
                    continue;
                }
                match kernel.set_policy(*ip, &l4) {
                    Ok(version) => {
                        info!(pod = %ip, policies = ?l4.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ?version,
                            "kernel L4 policy updated");
                        written.insert(*ip, (pod.generation, l4));
                    }
                    Err(e) => warn!(pod = %ip, "kernel L4 policy not updated, the pod keeps its previous table: {}",
                        crate::error_chain(&e)),
                }
            }
        }
    }
}

impl Enforcer {
    /// Keeps each served pod's kernel inbound mode (`INBOUND`, `INBOUND_PORTS`) the
    /// stricter of its enrollment's and its policies' STRICT ports.
    fn reconcile_modes(&self, kernel: &Kernel, state: &State, written: &mut HashMap<IpAddr, (u64, InboundConfig)>) {
        let pods: Vec<(String, PodRef)> = self.pods.lock().unwrap().iter().map(|(u, p)| (u.clone(), p.clone())).collect();
        let enrolled = self.enrolled.lock().unwrap();
        written.retain(|ip, _| pods.iter().any(|(_, p)| p.ips.contains(ip)));
        for (uid, pod) in &pods {
            let Some((generation, cni)) = enrolled.get(uid) else { continue };
            for ip in &pod.ips {
                let want = self.kernel_inbound(state, &pod.namespace, *ip, cni);
                if written.get(ip).is_some_and(|(g, w)| g == generation && *w == want) {
                    continue;
                }
                match kernel.set_inbound(&[*ip], &want) {
                    Ok(()) => {
                        info!(pod = %ip, mode = ?want.mode, ports = ?want.port_modes, "kernel inbound mode updated");
                        written.insert(*ip, (*generation, want));
                    }
                    Err(e) => warn!(pod = %ip, "kernel inbound mode not updated, the pod keeps its previous one: {}",
                        crate::error_chain(&e)),
                }
            }
        }
    }
}

/// The STRICT ports of the policies applying to a pod.
fn policy_strict(policies: &[Arc<Policy>]) -> StrictPorts {
    policies.iter().filter_map(|p| strict_ports(p)).fold(StrictPorts::None, StrictPorts::union)
}

/// PeerAuthentication STRICT as the workload API carries it: a DENY policy (not dry
/// run) each of whose rules is exactly "no peer identity" (`not_principals:
/// [presence]`), optionally on `destination_ports` / `not_destination_ports`. Gives
/// the ports where it denies plaintext; `None` for any other policy. Such a policy
/// denies exactly the plaintext the kernel's STRICT mode drops on those ports.
pub fn strict_ports(p: &Policy) -> Option<StrictPorts> {
    if p.dry_run || p.unusable.is_some() || p.action != Action::Deny || p.groups.is_empty() {
        return None;
    }
    let mut out = StrictPorts::None;
    for g in &p.groups {
        let [clause] = g.clauses.as_slice() else { return None };
        let [m] = clause.as_slice() else { return None };
        let shape = Match {
            not_principals: vec![StrMatch::Presence],
            destination_ports: m.destination_ports.clone(),
            not_destination_ports: m.not_destination_ports.clone(),
            ..Default::default()
        };
        if *m != shape {
            return None;
        }
        let not: BTreeSet<u16> = m.not_destination_ports.iter().copied().collect();
        let piece = if m.destination_ports.is_empty() {
            StrictPorts::AllBut(not)
        } else {
            let only: BTreeSet<u16> = m.destination_ports.iter().copied().filter(|p| !not.contains(p)).collect();
            if only.is_empty() { StrictPorts::None } else { StrictPorts::Only(only) }
        };
        out = out.union(piece);
    }
    Some(out)
}

#[cfg(test)]
mod tests;
