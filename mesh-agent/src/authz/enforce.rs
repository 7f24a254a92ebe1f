//! Enforcement on the node: the pods whose inbound listeners run here, their live
//! inbound connections, and the loop that keeps the kernel's tables and those
//! connections in step with policy and workloads.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use super::{decide, to_l4, Attrs, Decision};
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
    close: oneshot::Sender<String>,
}

/// Shared by the pods' listeners and the reconcile loop.
pub struct Enforcer {
    /// Whether the control plane's policies have arrived; until then every inbound
    /// connection is refused (fail closed).
    synced: AtomicBool,
    pods: Mutex<HashMap<String, PodRef>>,
    live: Mutex<HashMap<u64, Live>>,
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

    /// Decides a new inbound connection to a pod in `namespace`.
    pub fn check(&self, state: &State, namespace: &str, attrs: &Attrs) -> Decision {
        if !self.synced.load(Ordering::Acquire) {
            return Decision::NotSynced;
        }
        decide(&state.policies_for(namespace, attrs.dst_ip), attrs)
    }

    /// Records an allowed connection so that a later policy change can close it.
    pub fn register(self: &Arc<Self>, namespace: &str, name: &str, attrs: Attrs) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let live = Live { pod_namespace: namespace.to_string(), pod_name: name.to_string(), attrs, close: tx };
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
                let d = decide(&state.policies_for(&l.pod_namespace, l.attrs.dst_ip), &l.attrs);
                (!d.is_allowed()).then_some((*id, d))
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
        loop {
            self.reconcile(&kernel, &state, &mut written);
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
                let l4: Vec<L4Policy> =
                    state.policies_for(&pod.namespace, *ip).iter().filter_map(|p| to_l4(p, &workloads)).collect();
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
