//! The node agent role: wires the kernel, the proxy, xDS, certificates, enrollment and
//! the admin endpoint together and runs until asked to stop.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use tracing::info;

use crate::identity::{CertManager, WorkloadCert};
use crate::inpod::PodManager;
use crate::kernel::Kernel;
use crate::proxy::{CertSource, ProxyInputs};
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
    Kernel(#[from] crate::kernel::Error),
    #[error(transparent)]
    Enrollment(#[from] crate::inpod::Error),
    #[error("cannot listen on {addr}: {source}; is another agent using it? (--admin-address, --metrics-address)")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
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
    let kernel = Arc::new(Kernel::load(&args.bpffs)?);
    let probes: Vec<std::net::IpAddr> = args.probe_source.iter().filter_map(|p| p.0).collect();
    if let Err(e) = kernel.set_exempt_sources(&probes) {
        drop(kernel);
        if nothing_pinned(&args.bpffs) {
            let _ = std::fs::remove_dir_all(&args.bpffs);
        }
        return Err(e.into());
    }
    // On the way out the pods' kernel attachments stay pinned (see kernel::pins). A
    // start that failed before any pod was enrolled leaves nothing behind.
    let result = serve(&args, kernel.clone(), shutdown).await;
    if result.is_err() && nothing_pinned(&args.bpffs) {
        let _ = std::fs::remove_dir_all(&args.bpffs);
    } else if let Ok(k) = Arc::try_unwrap(kernel) {
        k.shutdown();
    }
    let _ = std::fs::remove_file(&args.cni_socket);
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
/// namespaces) and removes the bpffs folder. Run it with the agent stopped.
pub fn uninstall(args: &UninstallArgs) -> Result<(), crate::kernel::Error> {
    let pods = Kernel::uninstall(&args.bpffs)?;
    info!(bpffs = %args.bpffs.display(), pods, "released every pinned link and removed the folder");
    Ok(())
}

async fn serve(
    args: &AgentArgs,
    kernel: Arc<Kernel>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let state = State::default();
    let (synced_tx, synced) = tokio::sync::watch::channel(false);
    let xds = tokio::spawn(crate::xds::run(args.xds_address.clone(), args.node.clone(), state.clone(), synced_tx));
    let certs = Arc::new(CertManager::new(args.ca_address.clone(), args.node.clone()));
    let authz = Arc::new(crate::authz::enforce::Enforcer::waiting_for_sync());
    let policy = tokio::spawn(authz.clone().run(kernel.clone(), state.clone(), synced.clone()));
    let inputs = Arc::new(ProxyInputs {
        state: state.clone(),
        certs: Arc::new(Certs(certs.clone())),
        orig_dst: kernel.clone(),
        node: args.node.clone(),
        authz: authz.clone(),
    });
    let pods = Arc::new(PodManager::new(kernel.clone(), inputs, args.trust_domain.clone()));
    let sync = tokio::spawn(kernel.clone().run_sync(state.clone()));
    let flows = tokio::spawn(async move {
        if let Some(ring) = kernel.take_flow_events() {
            crate::kernel::flows::run(ring).await;
        }
    });
    let listen = |addr| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Admin { addr, source })
    };
    let admin_listener = listen(args.admin_address).await?;
    let metrics_listener = listen(args.metrics_address).await?;
    let metrics = crate::metrics::registry(args.bpffs.clone());
    let admin = Arc::new(crate::admin::Admin { state, pods: pods.clone(), certs, synced, metrics });
    let admin_task = tokio::spawn(admin.clone().serve(admin_listener));
    let metrics_task = tokio::spawn(admin.serve(metrics_listener));
    let cni = crate::inpod::bind(&args.cni_socket)?;
    let cni_task = tokio::spawn(crate::inpod::serve(cni, pods.clone()));
    info!(cni_socket = %args.cni_socket.display(), admin = %args.admin_address, "agent ready for pods");

    shutdown.await;
    info!("shutting down: closing pods' listeners; kernel attachments stay pinned");
    for t in [cni_task, admin_task, metrics_task, sync, policy, xds, flows] {
        t.abort();
        let _ = t.await;
    }
    pods.stop_all().await;
    drop(pods);
    Ok(())
}
