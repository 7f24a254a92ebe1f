//! Pod enrollment: the CNI hook tells the agent when a pod appears or goes.
//!
//! The hook connects to a Unix socket and writes one JSON object per line; the agent
//! answers each with one line. On `add`, the agent opens the pod's listeners inside
//! its network namespace, then attaches the capture programs to its cgroup (in that
//! order, so a captured connection always finds a listener). On `delete`, the reverse.
//!
//! Besides identity and addresses, an event carries what the pod asks of the data
//! path (see `capture`): `annotations` (Istio's `traffic.sidecar.istio.io/exclude*Ports`)
//! and an explicit `peer_authentication` mode (`PERMISSIVE`, `STRICT`, `DISABLE`) and
//! `port_level_mtls` (`{"8080": "STRICT"}`); the kernel gets the stricter of these and
//! the PeerAuthentication the control plane sends (`authz::enforce`).
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::capture::{MtlsMode, PodCapture};
use crate::kernel::{Kernel, PodAttach};
use crate::proxy::{EnrolledPod, PodProxy, PodSockets, ProxyInputs};
use crate::state::Identity;

/// What the CNI hook knows about a pod.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct PodEvent {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    #[serde(default = "default_sa")]
    pub service_account: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The pod's mTLS mode (PeerAuthentication); PERMISSIVE when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_authentication: Option<MtlsMode>,
    /// PeerAuthentication `portLevelMtls`: mode by port, overriding the pod's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<String, MtlsMode>,
    pub ips: Vec<IpAddr>,
    /// Network namespace path, e.g. `/run/netns/<name>` or `/proc/<pid>/ns/net`.
    pub netns: PathBuf,
    /// The pod's cgroup v2 directory.
    pub cgroup: PathBuf,
}

fn default_sa() -> String {
    "default".into()
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Add { pod: Box<PodEvent> },
    Delete { uid: String },
}

#[derive(Debug, Serialize)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pod {pod}: {what}")]
    Invalid { pod: String, what: String },
    #[error("pod {pod}: {source}")]
    Capture {
        pod: String,
        #[source]
        source: crate::capture::Error,
    },
    #[error("pod {pod}: starting its listeners: {source}")]
    Proxy {
        pod: String,
        #[source]
        source: Box<crate::proxy::Error>,
    },
    #[error("pod {pod}: {source}")]
    Kernel {
        pod: String,
        #[source]
        source: Box<crate::kernel::Error>,
    },
    #[error("CNI socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct Enrolled {
    event: PodEvent,
    proxy: PodProxy,
}

/// The pods this agent has enrolled.
pub struct PodManager {
    kernel: Arc<Kernel>,
    inputs: Arc<ProxyInputs>,
    trust_domain: String,
    pods: Mutex<HashMap<String, Enrolled>>,
    /// Held for reading by each CNI request and for writing by a hand-over (which
    /// freezes enrollment); true once the pods were handed to a successor.
    handed_over: Arc<tokio::sync::RwLock<bool>>,
}

/// Enrollment frozen for a hand-over (see [`PodManager::freeze`]).
pub type Frozen = tokio::sync::OwnedRwLockWriteGuard<bool>;

impl PodManager {
    pub fn new(kernel: Arc<Kernel>, inputs: Arc<ProxyInputs>, trust_domain: String) -> Self {
        Self { kernel, inputs, trust_domain, pods: Mutex::default(), handed_over: Default::default() }
    }

    /// Opens the pod's listeners, then attaches the capture programs. Replaces an
    /// earlier enrollment of the same uid.
    pub async fn add(&self, pod: PodEvent) -> Result<(), Error> {
        self.enroll(pod, None).await
    }

    /// Enrolls a pod with the listeners a predecessor agent handed over: attaches our
    /// programs in place of the pinned ones (they overlap) and points the kernel at
    /// the same listeners. The pod accepts nothing until [`PodManager::open_all`].
    pub async fn adopt(&self, pod: PodEvent, sockets: PodSockets) -> Result<(), Error> {
        self.enroll(pod, Some(sockets)).await
    }

    /// Starts accepting on every adopted pod's listeners.
    pub fn open_all(&self) {
        for e in self.pods.lock().unwrap().values() {
            e.proxy.open();
        }
    }

    /// Waits for CNI requests in progress, and holds new ones, until the guard drops.
    pub async fn freeze(&self) -> Frozen {
        self.handed_over.clone().write_owned().await
    }

    /// The hand-over messages of every enrolled pod (its record and duplicates of its
    /// namespace and listeners).
    pub fn handover_messages(&self) -> Result<Vec<(crate::handover::Msg, Vec<std::os::fd::OwnedFd>)>, crate::handover::Error> {
        let pods = self.pods.lock().unwrap();
        let mut v: Vec<&Enrolled> = pods.values().collect();
        v.sort_by(|a, b| a.event.uid.cmp(&b.event.uid));
        v.into_iter()
            .filter_map(|e| e.proxy.sockets().map(|s| crate::handover::pod_message(&e.event, s)))
            .collect()
    }

    /// The successor took over: every pod leaves this agent, its listeners stop
    /// accepting, and what remains are its established connections, to drain. From
    /// now on CNI requests are answered with an error that says to retry.
    pub fn hand_over(&self, mut frozen: Frozen) -> Vec<(String, PodProxy)> {
        *frozen = true;
        let pods: Vec<Enrolled> = self.pods.lock().unwrap().drain().map(|(_, e)| e).collect();
        pods.into_iter()
            .map(|mut e| {
                e.proxy.quiesce();
                (format!("{}/{}", e.event.namespace, e.event.name), e.proxy)
            })
            .collect()
    }

    /// A hand-over failed after the successor may have attached its programs to our
    /// pods (and, failing, released them): attach ours again, pointing the kernel at
    /// our listeners.
    pub fn reattach_all(&self) {
        let pods = self.pods.lock().unwrap();
        for e in pods.values() {
            let who = format!("{}/{}", e.event.namespace, e.event.name);
            let result = PodCapture::from_pod(e.event.peer_authentication, &e.event.port_level_mtls, &e.event.annotations)
                .map_err(|e| e.to_string())
                .and_then(|capture| self.attach(&e.event, &e.proxy, &capture).map_err(|e| crate::error_chain(&e)));
            match result {
                Ok(()) => info!(pod = %who, "kernel attachments restored after the failed hand-over"),
                Err(err) => warn!(pod = %who, "restoring kernel attachments after the failed hand-over: {err}"),
            }
        }
    }

    /// Enrolls the pod in the kernel with its inbound mode made stricter by the
    /// PeerAuthentication policies that apply to it, and lets the enforcer keep that
    /// mode in step with later policy changes.
    fn attach(&self, pod: &PodEvent, proxy: &PodProxy, capture: &PodCapture) -> Result<(), crate::kernel::Error> {
        let (inbound_v4, inbound_v6) = proxy.plaintext_listeners();
        let authz = &self.inputs.authz;
        let mut kernel_capture = capture.clone();
        kernel_capture.inbound = authz.kernel_inbound(&self.inputs.state, &pod.namespace, pod.ips[0], &capture.inbound);
        let attach = PodAttach {
            uid: &pod.uid,
            netns_cookie: proxy.netns_cookie(),
            netns: &pod.netns,
            cgroup: &pod.cgroup,
            ips: &pod.ips,
            inbound_v4,
            inbound_v6,
            capture: &kernel_capture,
        };
        self.kernel.enroll(&attach)?;
        authz.pod_enrolled(&pod.uid, &capture.inbound);
        Ok(())
    }

    async fn enroll(&self, pod: PodEvent, sockets: Option<PodSockets>) -> Result<(), Error> {
        let who = format!("{}/{}", pod.namespace, pod.name);
        let invalid = |what: String| Error::Invalid { pod: who.clone(), what };
        if pod.ips.is_empty() {
            return Err(invalid("has no IP address".into()));
        }
        for (what, p) in [("network namespace", &pod.netns), ("cgroup", &pod.cgroup)] {
            if !p.exists() {
                return Err(invalid(format!("{what} {} does not exist", p.display())));
            }
        }
        let capture = PodCapture::from_pod(pod.peer_authentication, &pod.port_level_mtls, &pod.annotations)
            .map_err(|source| Error::Capture { pod: who.clone(), source })?;
        self.delete(&pod.uid).await;
        let enrolled = EnrolledPod {
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            service_account: pod.service_account.clone(),
            ips: pod.ips.clone(),
            netns: pod.netns.clone(),
            identity: Identity {
                trust_domain: self.trust_domain.clone(),
                namespace: pod.namespace.clone(),
                service_account: pod.service_account.clone(),
            },
            inbound: capture.inbound.clone(),
        };
        let adopted = sockets.is_some();
        let proxy = match sockets {
            None => PodProxy::start(self.inputs.clone(), enrolled).await,
            Some(sockets) => PodProxy::adopt(self.inputs.clone(), enrolled, sockets).await,
        };
        let proxy = proxy.map_err(|source| Error::Proxy { pod: who.clone(), source: Box::new(source) })?;
        self.attach(&pod, &proxy, &capture)
            .map_err(|source| Error::Kernel { pod: who.clone(), source: Box::new(source) })?;
        info!(pod = %who, uid = %pod.uid, ips = ?pod.ips, mtls = ?capture.inbound.mode,
            excluded_inbound = ?capture.inbound.excluded_ports, excluded_outbound = ?capture.outbound.excluded_ports,
            adopted, "pod enrolled");
        self.pods.lock().unwrap().insert(pod.uid.clone(), Enrolled { event: pod, proxy });
        Ok(())
    }

    /// Removes a pod; returns whether it was enrolled.
    pub async fn delete(&self, uid: &str) -> bool {
        let removed = self.pods.lock().unwrap().remove(uid);
        self.inputs.authz.pod_forgotten(uid);
        self.kernel.unenroll(uid);
        match removed {
            Some(e) => {
                e.proxy.remove().await;
                info!(pod = %format!("{}/{}", e.event.namespace, e.event.name), uid, "pod removed");
                true
            }
            None => false,
        }
    }

    /// Enrolled pods, for the admin dump.
    pub fn pods(&self) -> Vec<PodEvent> {
        let mut v: Vec<_> = self.pods.lock().unwrap().values().map(|e| e.event.clone()).collect();
        v.sort_by(|a, b| a.uid.cmp(&b.uid));
        v
    }

    /// The agent is stopping: close every pod's listeners, but leave the pods
    /// enrolled in the kernel (pinned links, routing in their namespaces), so traffic
    /// fails closed until the next agent adopts them.
    pub async fn stop_all(&self) {
        let pods: Vec<Enrolled> = self.pods.lock().unwrap().drain().map(|(_, e)| e).collect();
        for e in pods {
            e.proxy.shutdown_wait().await;
        }
    }

    async fn handle(&self, line: &str) -> Response {
        let handed_over = self.handed_over.read().await;
        let result = match serde_json::from_str::<Request>(line) {
            Ok(_) if *handed_over => Err("this agent handed its pods over to a new agent and is draining; \
                send the request again (the new agent serves the CNI socket now)"
                .to_string()),
            Err(e) => Err(format!("bad request {line:?}: {e}")),
            Ok(Request::Add { pod }) => self.add(*pod).await.map_err(|e| crate::error_chain(&e)),
            Ok(Request::Delete { uid }) => {
                self.delete(&uid).await;
                Ok(())
            }
        };
        match result {
            Ok(()) => Response { ok: true, error: None },
            Err(error) => {
                warn!("enrollment: {error}");
                Response { ok: false, error: Some(error) }
            }
        }
    }
}

/// Binds the CNI socket beside `path` and renames it into place: a stale socket from
/// an earlier run, or the socket of the agent we take over from, is replaced without
/// a moment of no socket. The claim removes the path on drop, if it is still ours.
pub fn bind(path: &Path) -> Result<(UnixListener, crate::handover::PathClaim), Error> {
    let err = |source| Error::Socket { path: path.to_path_buf(), source };
    let (l, claim) = crate::handover::bind_by_rename(path, |p| std::os::unix::net::UnixListener::bind(p)).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok((UnixListener::from_std(l).map_err(err)?, claim))
}

/// Serves enrollment requests until the listener fails.
pub async fn serve(listener: UnixListener, pods: Arc<PodManager>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_conn(stream, pods.clone()));
            }
            Err(e) => {
                warn!("CNI socket accept: {e}");
                return;
            }
        }
    }
}

async fn serve_conn(stream: UnixStream, pods: Arc<PodManager>) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        let resp = pods.handle(&line).await;
        let mut out = serde_json::to_vec(&resp).unwrap_or_default();
        out.push(b'\n');
        if w.write_all(&out).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_events_carry_mode_port_modes_and_annotations() {
        let line = r#"{"op":"add","pod":{"uid":"u","namespace":"default","name":"echo","ips":["10.0.0.5"],
            "netns":"/run/netns/x","cgroup":"/sys/fs/cgroup/x","peer_authentication":"STRICT",
            "port_level_mtls":{"9090":"PERMISSIVE"},
            "annotations":{"traffic.sidecar.istio.io/excludeInboundPorts":"8081"}}}"#;
        let Ok(Request::Add { pod }) = serde_json::from_str::<Request>(line) else { panic!("not parsed") };
        let c = PodCapture::from_pod(pod.peer_authentication, &pod.port_level_mtls, &pod.annotations).unwrap();
        assert_eq!(c.inbound.mode, MtlsMode::Strict);
        assert_eq!(c.inbound.port_modes.get(&9090), Some(&MtlsMode::Permissive));
        assert!(c.inbound.excluded_ports.contains(&8081));
        // Without the new fields: PERMISSIVE, nothing excluded.
        let line = r#"{"op":"add","pod":{"uid":"u","namespace":"default","name":"echo","ips":["10.0.0.5"],
            "netns":"/run/netns/x","cgroup":"/sys/fs/cgroup/x"}}"#;
        let Ok(Request::Add { pod }) = serde_json::from_str::<Request>(line) else { panic!("not parsed") };
        assert_eq!(pod.peer_authentication, None);
        assert!(pod.annotations.is_empty());
    }
}
