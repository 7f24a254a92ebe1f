//! The node agent role: wires the kernel, the proxy, xDS, certificates, enrollment and
//! the admin endpoint together and runs until asked to stop, or until a new agent
//! takes over (see `handover`): then it drains its connections and exits.
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::handover::{self, Channel, FdRole, Msg};
use crate::identity::{CertManager, WorkloadCert};
use crate::inpod::{Frozen, PodManager};
use crate::kernel::Kernel;
use crate::node_token::Credential;
use crate::proxy::{CertSource, PodProxy, ProxyInputs};
use crate::state::{Identity, State};

#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Name of this node; the control plane sends what this node's pods need.
    #[arg(long, env = "MESH_NODE")]
    pub node: String,
    /// Control plane xDS address.
    #[arg(long, env = "MESH_XDS_ADDRESS", default_value = "http://127.0.0.1:15010")]
    pub xds_address: String,
    /// Certificate authority address (Istio CA API).
    #[arg(long, env = "MESH_CA_ADDRESS", default_value = "http://127.0.0.1:15010")]
    pub ca_address: String,
    /// File holding this node's token, which the control plane (xDS and CA) requires;
    /// `mesh-agent node-token --node NAME` prints it. Read again at each use.
    #[arg(long, env = "MESH_NODE_TOKEN_FILE")]
    pub node_token_file: Option<PathBuf>,
    /// Unix socket on which the CNI hook reports pods.
    #[arg(long, env = "MESH_CNI_SOCKET", default_value = "/run/mesh/cni.sock")]
    pub cni_socket: PathBuf,
    /// Folder on a bpffs where the kernel maps are pinned.
    #[arg(long, env = "MESH_BPFFS", default_value = "/sys/fs/bpf/mesh")]
    pub bpffs: PathBuf,
    /// Admin endpoint (keep it on localhost).
    #[arg(long, env = "MESH_ADMIN_ADDRESS", default_value = "127.0.0.1:15000")]
    pub admin_address: SocketAddr,
    /// Prometheus metrics endpoint (`/metrics`), as Istio's 15020.
    #[arg(long, env = "MESH_METRICS_ADDRESS", default_value = "0.0.0.0:15020")]
    pub metrics_address: SocketAddr,
    /// SPIFFE trust domain of this mesh.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Source address of the kubelet's health probes (Istio ambient SNATs them to
    /// 169.254.7.127): never steered to the agent nor dropped by STRICT mTLS.
    /// Repeat for several; `--probe-source none` for none.
    #[arg(long, env = "MESH_PROBE_SOURCE", default_value = "169.254.7.127", value_delimiter = ',')]
    pub probe_source: Vec<ProbeSource>,
    /// Unix socket on which a running agent hands its pods' listeners to a new agent
    /// started on the same node (graceful restart); the new agent listens there next.
    #[arg(long, env = "MESH_HANDOVER_SOCKET", default_value = "/run/mesh/handover.sock")]
    pub handover_socket: PathBuf,
    /// After handing over, how long the old agent lets established connections go on
    /// before it closes them and exits (Istio's TERMINATION_DRAIN_DURATION), e.g. `30s`.
    #[arg(long, env = "MESH_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Same-node fast path (sockops + sk_msg): bytes between a pod and the agent skip
    /// the loopback TCP stack. `auto` is the measured default (docs/benchmarks.md).
    #[arg(long, env = "MESH_FAST_PATH", value_enum, default_value = "auto")]
    pub fast_path: crate::kernel::fastpath::Mode,

    /// How request paths are normalized before AuthorizationPolicy judges them, as
    /// Istio's meshConfig.pathNormalization: none, base, merge-slashes or
    /// decode-and-merge-slashes (closes the `%2F`, `//`, `..` bypasses). The
    /// application receives the normalized path.
    #[arg(long, env = "MESH_PATH_NORMALIZATION", default_value = "decode-and-merge-slashes")]
    pub path_normalization: crate::authz::http::Normalization,
}

/// `500ms`, `30s`, `2m`, `24h`, or plain seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{s:?} is not a duration (e.g. 30s, 500ms, 2m, 24h)");
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// An address, or `none`.
#[derive(Clone, Debug)]
pub struct ProbeSource(pub Option<std::net::IpAddr>);

impl std::str::FromStr for ProbeSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(ProbeSource(None));
        }
        s.parse().map(|ip| ProbeSource(Some(ip))).map_err(|_| format!("{s:?} is not an IP address (or `none`)"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kernel(Box<crate::kernel::Error>),
    #[error(transparent)]
    Enrollment(#[from] crate::inpod::Error),
    #[error("cannot listen on {addr}: {source}; is another agent using it? (--admin-address, --metrics-address)")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Handover(#[from] handover::Error),
    #[error("not taking over from the running agent, which keeps serving: {0}")]
    TakeOver(String),
}

impl From<crate::kernel::Error> for Error {
    fn from(e: crate::kernel::Error) -> Self {
        Error::Kernel(Box::new(e))
    }
}

struct Certs(Arc<CertManager>);

impl CertSource for Certs {
    fn fetch(&self, id: &Identity) -> BoxFuture<'_, Result<Arc<WorkloadCert>, String>> {
        let id = id.clone();
        Box::pin(async move { self.0.fetch(&id).await.map_err(|e| e.to_string()) })
    }
}

pub async fn run(args: AgentArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    info!(?args, "starting node agent");
    let predecessor = handover::connect(&args.handover_socket)?;
    match &predecessor {
        Some(_) => info!(socket = %args.handover_socket.display(), "hand-over: an agent is running; taking over from it"),
        None => info!(socket = %args.handover_socket.display(), "no running agent on the hand-over socket; starting alone"),
    }
    // What a start that fails may clean up: never anything a running agent uses.
    let alone = predecessor.is_none();
    let kernel = Arc::new(Kernel::load(&args.bpffs)?);
    let probes: Vec<std::net::IpAddr> = args.probe_source.iter().filter_map(|p| p.0).collect();
    let fast = args.fast_path.enabled();
    let ready = kernel.set_exempt_sources(&probes).and_then(|()| if fast { kernel.enable_fast_path() } else { Ok(()) });
    if let Err(e) = ready {
        drop(kernel);
        if alone && nothing_pinned(&args.bpffs) {
            let _ = std::fs::remove_dir_all(&args.bpffs);
        }
        return Err(e.into());
    }
    info!(mode = ?args.fast_path, enabled = fast, "same-node fast path");
    if fast {
        tracing::warn!("same-node fast path on: the kernel's redirect has no flow control, so a bulk sender faster \
            than the agent can fill the node's TCP memory and see ENOMEM (docs/architecture.md)");
    }
    // On the way out the pods' kernel attachments stay pinned (see kernel::pins). A
    // start that failed before any pod was enrolled leaves nothing behind.
    let result = serve(&args, kernel.clone(), predecessor, shutdown).await;
    if result.is_err() && alone && nothing_pinned(&args.bpffs) {
        let _ = std::fs::remove_dir_all(&args.bpffs);
    } else if let Ok(k) = Arc::try_unwrap(kernel) {
        k.shutdown();
    }
    result
}

/// No pod's links are pinned under `bpffs` (so removing it detaches nothing).
fn nothing_pinned(bpffs: &std::path::Path) -> bool {
    std::fs::read_dir(bpffs.join("links")).map(|mut d| d.next().is_none()).unwrap_or(true)
}

/// `mesh-agent uninstall`: what the agent leaves attached when it stops.
#[derive(clap::Args, Debug, Clone)]
pub struct UninstallArgs {
    /// The agent's bpffs folder (its --bpffs).
    #[arg(long, env = "MESH_BPFFS", default_value = "/sys/fs/bpf/mesh")]
    pub bpffs: PathBuf,
}

/// Releases every pinned link (detaching the programs from pods' cgroups and
/// namespaces), removes the bpffs folder, and takes the agent's routing (`podnet`)
/// out of the pods' namespaces that still exist. Run it with the agent stopped.
pub async fn uninstall(args: &UninstallArgs) -> Result<(), crate::kernel::Error> {
    let cookies = crate::kernel::pins::pod_cookies(&args.bpffs);
    let pods = Kernel::uninstall(&args.bpffs)?;
    info!(bpffs = %args.bpffs.display(), pods, "released every pinned link and removed the folder");
    let found = tokio::task::spawn_blocking(move || crate::netns::find_by_cookie(&cookies)).await.unwrap_or_default();
    for path in found.values() {
        match crate::netns::Netns::enter(path) {
            Ok(ns) => {
                crate::podnet::remove(&ns).await;
                info!(netns = %path.display(), "removed the agent's routing from the pod's namespace");
            }
            Err(e) => tracing::warn!(netns = %path.display(), "cannot enter the pod's namespace to remove the agent's routing: {e}"),
        }
    }
    Ok(())
}

async fn serve(
    args: &AgentArgs,
    kernel: Arc<Kernel>,
    predecessor: Option<Channel>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let mut shutdown = std::pin::pin!(shutdown);
    let state = State::default();
    let (synced_tx, synced) = watch::channel(false);
    let credential = match &args.node_token_file {
        Some(path) => {
            if let Err(e) = Credential::File(path.clone()).token() {
                warn!("{e}; the control plane refuses this agent until the file holds its token");
            }
            Credential::File(path.clone())
        }
        None => {
            warn!("no --node-token-file: the control plane refuses this agent's xDS and certificate requests");
            Credential::None
        }
    };
    let xds = tokio::spawn(crate::xds::run(args.xds_address.clone(), args.node.clone(), credential.clone(), state.clone(), synced_tx));
    let certs = Arc::new(CertManager::new(args.ca_address.clone(), credential));
    let authz = Arc::new(crate::authz::enforce::Enforcer::waiting_for_sync());
    let policy = tokio::spawn(authz.clone().run(kernel.clone(), state.clone(), synced.clone()));
    let inputs = Arc::new(ProxyInputs {
        state: state.clone(),
        certs: Arc::new(Certs(certs.clone())),
        orig_dst: kernel.clone(),
        node: args.node.clone(),
        authz: authz.clone(),
        path_normalization: args.path_normalization,
    });
    let pods = Arc::new(PodManager::new(kernel.clone(), inputs, args.trust_domain.clone()));
    // MESH_DESTS is written from a synced state only: an agent that has not heard
    // from the control plane yet must not empty what the kernel (and the agent we
    // take over from) relies on.
    let sync = tokio::spawn({
        let (kernel, state, mut synced) = (kernel.clone(), state.clone(), synced.clone());
        async move {
            if synced.wait_for(|s| *s).await.is_ok() {
                kernel.run_sync(state).await
            }
        }
    });
    let flows = tokio::spawn({
        let kernel = kernel.clone();
        async move {
            if let Some(ring) = kernel.take_flow_events() {
                crate::kernel::flows::run(ring).await;
            }
        }
    });
    let (admin_l, metrics_l) = match &predecessor {
        None => (None, None),
        Some(ch) => tokio::select! {
            r = take_over(args, ch, &pods, &certs, synced.clone()) => r?,
            _ = &mut shutdown => return Err(Error::TakeOver("asked to stop".into())),
        },
    };
    let admin_l = listener(args.admin_address, admin_l, "admin")?;
    let metrics_l = listener(args.metrics_address, metrics_l, "metrics")?;
    let dup = |l: &std::net::TcpListener, addr| l.try_clone().map_err(|source| Error::Admin { addr, source });
    let handing = Handing { admin: dup(&admin_l, args.admin_address)?, metrics: dup(&metrics_l, args.metrics_address)? };
    let handover_l = handover::Listener::bind(&args.handover_socket)?;
    let (cni, cni_claim) = crate::inpod::bind(&args.cni_socket)?;
    let tokio_l = |l, addr| tokio::net::TcpListener::from_std(l).map_err(|source| Error::Admin { addr, source });
    let (admin_l, metrics_l) = (tokio_l(admin_l, args.admin_address)?, tokio_l(metrics_l, args.metrics_address)?);

    // Told to stop accepting (admin, metrics, CNI) once a successor took over.
    let (stop_accepting, accepting) = watch::channel(false);
    let metrics = crate::metrics::registry(args.bpffs.clone());
    let admin = Arc::new(crate::admin::Admin { state, pods: pods.clone(), certs, synced, metrics });
    let admin_task = tokio::spawn(until_stopped(accepting.clone(), admin.clone().serve(admin_l)));
    let metrics_task = tokio::spawn(until_stopped(accepting.clone(), admin.serve(metrics_l)));
    let cni_task = tokio::spawn(until_stopped(accepting.clone(), crate::inpod::serve(cni, pods.clone())));
    if let Some(ch) = &predecessor {
        pods.open_all();
        confirm(ch).await;
    }
    info!(cni_socket = %args.cni_socket.display(), admin = %args.admin_address,
        handover_socket = %args.handover_socket.display(), "agent ready for pods");
    let serving = Serving { pods: pods.clone(), handing, stop_accepting, accepting, cni_claim };
    let mut successor = tokio::spawn(serve_handover(args.clone(), handover_l, serving));

    let draining = tokio::select! {
        _ = &mut shutdown => None,
        r = &mut successor => r.ok(),
    };
    successor.abort();
    for t in [cni_task, admin_task, metrics_task, sync, policy, xds, flows] {
        t.abort();
        let _ = t.await;
    }
    match draining {
        None => {
            info!("shutting down: closing pods' listeners; kernel attachments stay pinned");
            pods.stop_all().await;
        }
        Some(draining) => drain(draining, args.drain_timeout, shutdown).await,
    }
    drop(pods);
    Ok(())
}

/// How long a successor waits for the control plane, and for each certificate,
/// before it gives up taking over (the running agent keeps serving).
const TAKE_OVER_WAIT: Duration = Duration::from_secs(30);

/// Successor side: receives the running agent's pods and listeners and adopts them
/// (held: nothing is accepted until the caller opens them). Returns the handed-over
/// admin and metrics listeners.
async fn take_over(
    args: &AgentArgs,
    ch: &Channel,
    pods: &PodManager,
    certs: &CertManager,
    mut synced: watch::Receiver<bool>,
) -> Result<(Option<std::net::TcpListener>, Option<std::net::TcpListener>), Error> {
    info!(xds = %args.xds_address, "hand-over: waiting for the control plane before taking over");
    if tokio::time::timeout(TAKE_OVER_WAIT, synced.wait_for(|s| *s)).await.is_err() {
        let why = format!("no configuration from the control plane at {} within {TAKE_OVER_WAIT:?}", args.xds_address);
        return Err(Error::TakeOver(why));
    }
    let offer = handover::receive(ch, &args.node, &args.bpffs).await?;
    info!(pods = offer.pods.len(), "hand-over: received the running agent's pods and listeners");
    // Each identity once, however many pods share it.
    let ids: std::collections::BTreeSet<Identity> = offer
        .pods
        .iter()
        .map(|p| Identity {
            trust_domain: args.trust_domain.clone(),
            namespace: p.event.namespace.clone(),
            service_account: p.event.service_account.clone(),
        })
        .collect();
    for id in &ids {
        match tokio::time::timeout(TAKE_OVER_WAIT, certs.fetch(id)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(Error::TakeOver(format!("no certificate for {id}: {}", crate::error_chain(&e)))),
            Err(_) => return Err(Error::TakeOver(format!("no certificate for {id} within {TAKE_OVER_WAIT:?}; is the CA reachable?"))),
        }
    }
    info!(identities = ids.len(), "hand-over: certificates ready");
    for p in offer.pods {
        pods.adopt(p.event, p.sockets).await?;
    }
    info!("hand-over: pods adopted (our programs attached, the same listeners held)");
    Ok((offer.admin, offer.metrics))
}

/// Successor side, last step: we accept now; the running agent may stop.
async fn confirm(ch: &Channel) {
    if let Err(e) = ch.send(&Msg::Ready, &[]).await {
        warn!("hand-over: cannot confirm to the old agent ({e}); it is gone, and we serve alone");
        return;
    }
    match ch.recv_within(Duration::from_secs(10), "the old agent's release").await {
        Ok((Msg::Released { pid }, _)) => info!(old_pid = pid, "hand-over complete: the old agent stopped accepting and drains"),
        Ok((other, _)) => warn!("hand-over: the old agent answered {other:?} instead of released; we serve"),
        Err(e) => warn!("hand-over: no release from the old agent ({e}); we serve"),
    }
}

/// A handed-over admin or metrics listener if it is on the address we are asked for,
/// else a new one.
fn listener(want: SocketAddr, handed: Option<std::net::TcpListener>, what: &str) -> Result<std::net::TcpListener, Error> {
    if let Some(l) = handed {
        match l.local_addr() {
            Ok(have) if handover::address_fits(want, have) => {
                info!(addr = %have, "hand-over: {what} listener taken over");
                return Ok(l);
            }
            Ok(have) => info!("hand-over: the old {what} listener is on {have}, we are asked for {want}: binding anew"),
            Err(_) => {}
        }
    }
    let err = |source| Error::Admin { addr: want, source };
    let l = std::net::TcpListener::bind(want).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

/// What a running agent hands to a successor besides its pods.
struct Handing {
    admin: std::net::TcpListener,
    metrics: std::net::TcpListener,
}

/// What the hand-over server needs from the running agent.
struct Serving {
    pods: Arc<PodManager>,
    handing: Handing,
    stop_accepting: watch::Sender<bool>,
    accepting: watch::Receiver<bool>,
    cni_claim: handover::PathClaim,
}

/// Runs `work` until told to stop accepting.
async fn until_stopped(mut stop: watch::Receiver<bool>, work: impl std::future::Future<Output = ()>) {
    let stopped = async move {
        if stop.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await
        }
    };
    tokio::select! {
        _ = work => {}
        _ = stopped => {}
    }
}

/// Predecessor side: serves the hand-over socket until a successor took over, then
/// returns our pods, quiesced, to drain. A failed attempt leaves us serving.
async fn serve_handover(args: AgentArgs, mut listener: handover::Listener, mut s: Serving) -> Vec<(String, PodProxy)> {
    loop {
        let ch = match listener.accept().await {
            Ok(ch) => ch,
            Err(e) => {
                warn!("hand-over socket: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match offer(&args, &ch, &s.pods, &s.handing).await {
            Ok(frozen) => {
                let draining = s.pods.hand_over(frozen);
                let _ = s.stop_accepting.send(true);
                let _ = ch.send(&Msg::Released { pid: std::process::id() }, &[]).await;
                info!(pods = draining.len(), "hand-over: the new agent took over; we stopped accepting");
                return draining;
            }
            Err((e, sent)) => {
                warn!("hand-over failed: {}; this agent keeps serving", crate::error_chain(&e));
                if sent {
                    s.pods.reattach_all();
                }
                // The successor may have put its own sockets at our paths.
                if !listener.claim.is_ours() {
                    match handover::Listener::bind(&args.handover_socket) {
                        Ok(l) => listener = l,
                        Err(e) => warn!("taking the hand-over socket back: {e}"),
                    }
                }
                if !s.cni_claim.is_ours() {
                    match crate::inpod::bind(&args.cni_socket) {
                        Ok((l, claim)) => {
                            s.cni_claim = claim;
                            tokio::spawn(until_stopped(s.accepting.clone(), crate::inpod::serve(l, s.pods.clone())));
                            info!(cni_socket = %args.cni_socket.display(), "took the CNI socket back");
                        }
                        Err(e) => warn!("taking the CNI socket back: {e}"),
                    }
                }
            }
        }
    }
}

/// Predecessor side of one hand-over: checks the successor, freezes enrollment, sends
/// every pod and the admin and metrics listeners, and waits for `ready`. On error,
/// says whether pods were sent (the successor may have touched their attachments).
async fn offer(args: &AgentArgs, ch: &Channel, pods: &PodManager, handing: &Handing) -> Result<Frozen, (handover::Error, bool)> {
    let early = |e| (e, false);
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let uid = ch.peer_uid().map_err(early)?;
    let refuse = |reason: String| async move {
        let _ = ch.send(&Msg::Refused { reason: reason.clone() }, &[]).await;
        Err((handover::Error::Refused(reason), false))
    };
    if uid != euid {
        return refuse(format!("the new agent runs as uid {uid}, we run as {euid}")).await;
    }
    let (hello, _) = ch.recv_within(Duration::from_secs(60), "hello").await.map_err(early)?;
    let Msg::Hello { version, node, bpffs, pid } = hello else {
        return Err(early(handover::Error::Protocol(format!("expected hello, got {hello:?}"))));
    };
    if version != handover::VERSION {
        return refuse(format!("hand-over version {version}, we speak {}", handover::VERSION)).await;
    }
    if node != args.node || bpffs != args.bpffs {
        let why = format!(
            "the new agent is for node {node:?} with --bpffs {}, we are node {:?} with --bpffs {}; give each node its own --handover-socket",
            bpffs.display(), args.node, args.bpffs.display()
        );
        return refuse(why).await;
    }
    info!(new_pid = pid, "hand-over: a new agent asks for our pods; enrollment frozen");
    let frozen = pods.freeze().await;
    let sent = |e| (e, true);
    let messages = pods.handover_messages().map_err(early)?;
    for (msg, fds) in &messages {
        let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        ch.send(msg, &fds).await.map_err(sent)?;
    }
    let listeners = Msg::Listeners { fds: vec![FdRole::Admin, FdRole::Metrics] };
    ch.send(&listeners, &[handing.admin.as_fd(), handing.metrics.as_fd()]).await.map_err(sent)?;
    ch.send(&Msg::Done { pods: messages.len() }, &[]).await.map_err(sent)?;
    info!(pods = messages.len(), "hand-over: sent our pods and the admin and metrics listeners; waiting for the new agent");
    match ch.recv_within(Duration::from_secs(120), "the new agent's confirmation").await {
        Ok((Msg::Ready, _)) => Ok(frozen),
        Ok((other, _)) => Err(sent(handover::Error::Protocol(format!("expected ready, got {other:?}")))),
        Err(e) => Err(sent(e)),
    }
}

/// After a hand-over: lets established connections finish, up to `limit`, then
/// closes what is left. A stop signal meanwhile (Kubernetes sends SIGTERM to the old
/// pod once the new one is ready) does not cut the drain short; SIGKILL does.
async fn drain(pods: Vec<(String, PodProxy)>, limit: Duration, shutdown: impl std::future::Future<Output = ()>) {
    let live = |pods: &[(String, PodProxy)]| pods.iter().map(|(_, p)| p.live_connections()).sum::<usize>();
    info!(pods = pods.len(), connections = live(&pods), timeout = ?limit, "draining: established connections go on");
    let mut idle = Box::pin(futures::future::join_all(pods.iter().map(|(_, p)| p.idle())));
    let mut shutdown = std::pin::pin!(shutdown);
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut signalled = false;
    loop {
        tokio::select! {
            _ = &mut idle => {
                info!("drained: every connection ended");
                break;
            }
            _ = &mut deadline => {
                info!(connections = live(&pods), "drain timeout: closing the remaining connections");
                break;
            }
            _ = &mut shutdown, if !signalled => {
                signalled = true;
                info!(connections = live(&pods), "asked to stop while draining: the drain goes on until it ends or times out");
            }
        }
    }
    drop(idle);
    for (_, p) in pods {
        p.shutdown_wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        let ok = [("30s", 30_000), ("500ms", 500), ("2m", 120_000), ("7", 7_000), ("1.5s", 1_500), (" 0s ", 0), ("24h", 86_400_000)];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for bad in ["", "s", "ten", "5d", "-1s", "1e999"] {
            assert!(parse_duration(bad).unwrap_err().contains("is not a duration"), "{bad}");
        }
    }
}
