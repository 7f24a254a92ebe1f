//! The control-plane role: reads a folder of Kubernetes YAML, serves delta xDS
//! (`istio.workload.Address`, `istio.security.Authorization`) and a CA (`IstioCertificateService`) on one gRPC port.
//!
//! - [`folder`]: parse and watch the config folder (last good config per object).
//! - [`kube`]: or list and watch the Kubernetes API server for the same objects.
//! - [`authorization`]: AuthorizationPolicy, checked and converted for the workload API.
//! - [`peerauth`]: PeerAuthentication: precedence, and its DENY form for the workload API.
//! - [`model`]: objects -> xDS resources, and which identities run on which node.
//! - [`xds_server`]: per-agent delta streams.
//! - [`limits`]: what one agent's stream may make it read and keep.
//! - [`ca`]: the root and the certificate service.
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod admin;
pub mod authorization;
pub mod ca;
pub mod egress;
pub mod folder;
pub mod held;
pub mod kube;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod networking;
pub mod peerauth;
pub mod peers;
pub mod requestauth;
pub mod scope;
pub mod sync;
pub mod xds_server;

use crate::node_token;
use crate::proto::ca::istio_certificate_service_server::IstioCertificateServiceServer;
use crate::proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;

/// Flags of `mesh-agent control-plane`.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct ControlPlaneArgs {
    /// Where the objects come from: a folder of YAML (--config-dir) or the Kubernetes
    /// API server (--kubeconfig, else in-cluster config or KUBECONFIG).
    #[arg(long, env = "MESH_SOURCE", value_enum, default_value_t = Source::Folder)]
    pub source: Source,
    /// Folder of Kubernetes YAML (Namespace, ServiceAccount, Service, Pod,
    /// AuthorizationPolicy, PeerAuthentication), watched for changes.
    #[arg(long, env = "MESH_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// kubeconfig for --source kubernetes (default: in-cluster, then KUBECONFIG or ~/.kube/config).
    #[arg(long, env = "MESH_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// gRPC address for xDS and the CA.
    #[arg(long, env = "MESH_LISTEN", default_value = "127.0.0.1:15010")]
    pub listen: SocketAddr,
    /// Where the CA root key and certificate are kept (created on first start).
    #[arg(long, env = "MESH_STATE_DIR", default_value = "/var/lib/mesh/control-plane")]
    pub state_dir: PathBuf,
    /// HTTP admin address: /metrics and /debug/syncz (`meshctl sync` reads it).
    #[arg(long, env = "MESH_CP_ADMIN", default_value = "127.0.0.1:15014")]
    pub admin: SocketAddr,
    /// SPIFFE trust domain of issued identities.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Quiet time after a config change before recomputing.
    #[arg(long, env = "MESH_DEBOUNCE_MS", default_value_t = 100)]
    pub debounce_ms: u64,
    /// Longest a burst of changes may delay a recompute.
    #[arg(long, env = "MESH_DEBOUNCE_MAX_MS", default_value_t = 10_000)]
    pub debounce_max_ms: u64,
    /// Longest lifetime of issued workload certificates, e.g. `24h`, `90m`, `90s`
    /// (agents renew at half-life).
    #[arg(long, env = "MESH_CERT_TTL", default_value = "24h", value_parser = crate::agent::parse_duration)]
    #[serde(with = "humane")]
    pub cert_ttl: Duration,
    /// The key that node tokens are made and checked with (32 or more random bytes).
    /// Default: `node-token-key` in --state-dir, generated on first start (mode 0600).
    #[arg(long, env = "MESH_NODE_TOKEN_KEY")]
    pub node_token_key: Option<PathBuf>,
    /// Sign with your own CA instead of a generated root: a folder in Istio's
    /// `cacerts` layout (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem), where
    /// ca-cert.pem may be an intermediate under your root.
    #[arg(long, env = "MESH_CA_CERT_DIR")]
    pub ca_cert_dir: Option<PathBuf>,
    /// Other trust domains this mesh's identities are also known by (Istio's
    /// meshConfig.trustDomainAliases): a policy principal in any of them, or in this
    /// trust domain, matches the same workloads. Repeatable.
    #[arg(long = "trust-domain-alias", env = "MESH_TRUST_DOMAIN_ALIASES", value_delimiter = ',')]
    pub trust_domain_aliases: Vec<String>,
    /// How often RequestAuthentication keys named by `jwksUri` are fetched again
    /// (Istio's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL), in seconds.
    #[arg(long, env = "MESH_JWKS_REFRESH_SECS", default_value_t = 1200)]
    pub jwks_refresh_secs: u64,
    /// PEM roots that `https://` jwksUri servers are verified with (default: the
    /// system's bundle, /etc/ssl/certs/ca-certificates.crt).
    #[arg(long, env = "MESH_JWKS_CA_CERT")]
    pub jwks_ca_cert: Option<PathBuf>,
}

/// `--source`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Folder,
    Kubernetes,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid control-plane flags: {0}")]
    Config(String),
    #[error("config folder {dir}: {source}; does MESH_CONFIG_DIR point at a readable directory?")]
    ConfigDir { dir: PathBuf, #[source] source: std::io::Error },
    #[error(transparent)]
    Watch(#[from] folder::Error),
    #[error("Kubernetes source: {0}")]
    Kube(#[from] kube::Error),
    #[error("CA: {0}")]
    Ca(#[from] ca::Error),
    #[error(transparent)]
    NodeTokenKey(#[from] node_token::KeyError),
    #[error("cannot make a node token: {0}")]
    NodeToken(#[from] node_token::TokenError),
    #[error("cannot listen on {addr}: {source}; is another control plane already running there?")]
    Bind { addr: SocketAddr, #[source] source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
}

impl ControlPlaneArgs {
    pub fn validate(&self) -> Result<(), Error> {
        if self.source == Source::Folder && self.config_dir.is_none() {
            return Err(Error::Config("--source folder needs --config-dir (MESH_CONFIG_DIR)".into()));
        }
        if self.trust_domain.is_empty() || self.trust_domain.contains(['/', ' ']) {
            return Err(Error::Config(format!("--trust-domain {:?} must be a non-empty DNS-like name", self.trust_domain)));
        }
        if self.debounce_ms > self.debounce_max_ms {
            return Err(Error::Config(format!(
                "--debounce-ms ({}) must not exceed --debounce-max-ms ({})",
                self.debounce_ms, self.debounce_max_ms
            )));
        }
        if self.cert_ttl < Duration::from_secs(2) {
            return Err(Error::Config(format!("--cert-ttl ({:?}) must be at least 2s", self.cert_ttl)));
        }
        Ok(())
    }
}

/// Flags of `mesh-agent node-token`.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeTokenArgs {
    /// The node the token is for (the agent's --node).
    #[arg(long)]
    pub node: String,
    /// The control plane's --state-dir (its node-token key is kept there, and made
    /// there if it does not exist yet).
    #[arg(long, env = "MESH_STATE_DIR", default_value = "/var/lib/mesh/control-plane")]
    pub state_dir: PathBuf,
    /// The control plane's --node-token-key, if it has one.
    #[arg(long, env = "MESH_NODE_TOKEN_KEY")]
    pub node_token_key: Option<PathBuf>,
}

/// `mesh-agent node-token`: the token of `args.node`, for its agent's --node-token-file.
pub fn node_token(args: &NodeTokenArgs) -> Result<String, Error> {
    let key = node_token::Key::load(args.node_token_key.as_deref(), &args.state_dir)?;
    Ok(key.issue(&args.node)?)
}

/// Durations in the config dump as `90s`.
mod humane {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", d.as_secs_f64()))
    }
}

/// Binds `args.listen` and serves until `shutdown` completes.
pub async fn run(args: ControlPlaneArgs, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    args.validate()?;
    let listener = TcpListener::bind(args.listen).await.map_err(|source| Error::Bind { addr: args.listen, source })?;
    serve(listener, args, shutdown).await
}

/// Serves on an already bound listener (tests bind 127.0.0.1:0), binding `--admin`.
pub async fn serve(listener: TcpListener, args: ControlPlaneArgs, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let admin = TcpListener::bind(args.admin).await.map_err(|source| Error::Bind { addr: args.admin, source })?;
    serve_with_admin(listener, admin, args, shutdown).await
}

/// Serves xDS and the CA on `listener` and the admin routes on `admin`.
pub async fn serve_with_admin(
    listener: TcpListener,
    admin_listener: TcpListener,
    args: ControlPlaneArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    args.validate()?;
    tracing::info!(config = ?args, "control plane: starting");
    let ttl = args.cert_ttl;
    let tokens = Arc::new(node_token::Key::load(args.node_token_key.as_deref(), &args.state_dir)?);
    let ca = match &args.ca_cert_dir {
        Some(dir) => ca::Ca::from_files(dir, ttl)?,
        None => ca::Ca::load_or_create(&args.state_dir, ttl)?,
    };
    let ca = Arc::new(ca);

    // The Kubernetes source waits for its first complete list; a shutdown may come first.
    let mut shutdown = std::pin::pin!(shutdown);
    let (mut source, source_guard) = tokio::select! {
        s = open_source(&args) => s?,
        () = &mut shutdown => {
            tracing::info!("control plane: shut down before its first complete config");
            return Ok(());
        }
    };
    let mut objects = source.borrow_and_update().clone();
    let jwks = Arc::new(crate::jwt::fetch::JwksCache::new(
        Duration::from_secs(args.jwks_refresh_secs.max(1)),
        jwks_tls(args.jwks_ca_cert.as_deref())?,
    ));
    let mut builder = model::Builder::default();
    let (snap_tx, snap_rx) = watch::channel(Arc::new(build(&mut builder, &objects, &args, &jwks)));

    let reload_args = args.clone();
    let mut keys_changed = jwks.changed();
    let reloader = tokio::spawn(async move {
        let _source = source_guard;
        loop {
            tokio::select! {
                c = source.changed() => {
                    if c.is_err() {
                        return;
                    }
                    objects = source.borrow_and_update().clone();
                    report(&objects);
                }
                // New keys for a jwksUri: the RequestAuthentications naming it change.
                r = keys_changed.changed() => if r.is_err() { return },
            }
            let next = build(&mut builder, &objects, &reload_args, &jwks);
            snap_tx.send_if_modified(|cur| {
                let changed = !cur.same_as(&next);
                if changed {
                    *cur = Arc::new(next);
                }
                changed
            });
        }
    });

    let xds = xds_server::XdsServer::new(snap_rx.clone(), tokens.clone());
    tracing::info!(addr = ?admin_listener.local_addr().ok(), "control plane: admin (/metrics, /debug/syncz)");
    let admin = tokio::spawn(admin::serve(admin_listener, xds.status()));
    let ca_svc = ca::CaService::new(ca, args.trust_domain.clone(), snap_rx, tokens);
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "control plane: serving xDS and CA");
    let routes = Routes {
        // A request over the limit ends its stream with OUT_OF_RANGE naming it.
        xds: AggregatedDiscoveryServiceServer::new(xds).max_decoding_message_size(limits::MAX_REQUEST_BYTES),
        ca: IstioCertificateServiceServer::new(ca_svc),
    };
    // On shutdown, stopping the reloader drops the snapshot sender, which ends every
    // agent stream; otherwise graceful shutdown would wait for agents to hang up.
    let stop_reloader = reloader.abort_handle();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("control plane: shutting down");
        stop_reloader.abort();
    };
    // Pushes are small and latency is what counts: no Nagle delay on agent connections
    // (tonic sets TCP_NODELAY only on listeners it binds itself).
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |conn| {
        if let Ok(c) = &conn {
            let _ = c.set_nodelay(true);
        }
        conn
    });
    let result = tonic::transport::Server::builder().serve_with_incoming_shutdown(routes, incoming, shutdown).await;
    reloader.abort();
    admin.abort();
    result.map_err(Error::Serve)
}

/// Both gRPC services on one port, dispatched by path (tonic's router would pull in axum).
#[derive(Clone)]
struct Routes {
    xds: AggregatedDiscoveryServiceServer<xds_server::XdsServer>,
    ca: IstioCertificateServiceServer<ca::CaService>,
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Routes {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        use tonic::server::NamedService;
        let service = req.uri().path().trim_start_matches('/').split('/').next().unwrap_or_default();
        if service == AggregatedDiscoveryServiceServer::<xds_server::XdsServer>::NAME {
            self.xds.call(req)
        } else if service == IstioCertificateServiceServer::<ca::CaService>::NAME {
            self.ca.call(req)
        } else {
            let status = tonic::Status::unimplemented(format!(
                "this control plane serves delta ADS and IstioCertificateService, not {service:?}"
            ));
            Box::pin(async move { Ok(status.into_http()) })
        }
    }
}

/// The objects of `--source`, replaced on every (debounced) change, and what keeps
/// the source running.
async fn open_source(args: &ControlPlaneArgs) -> Result<(watch::Receiver<Arc<folder::Objects>>, Box<dyn Send>), Error> {
    let (quiet, max) = (Duration::from_millis(args.debounce_ms), Duration::from_millis(args.debounce_max_ms));
    let dir = match (args.source, &args.config_dir) {
        (Source::Kubernetes, _) => {
            let client = kube::client(args.kubeconfig.as_deref()).await?;
            tracing::info!("control plane: listing and watching the Kubernetes API server");
            let source = kube::start(client, quiet, max).await?;
            report(&source.objects.borrow());
            return Ok((source.objects.clone(), Box::new(source)));
        }
        (Source::Folder, Some(dir)) => dir.clone(),
        (Source::Folder, None) => return Err(Error::Config("--source folder needs --config-dir".into())),
    };
    // Watch before the first read so that no change slips between the two.
    let (watcher, mut changes, pending) = folder::watch(&dir, quiet, max)?;
    let mut folder = folder::Folder::default();
    let first = read(&mut folder, &dir).map_err(|source| Error::ConfigDir { dir: dir.clone(), source })?;
    report(&first);
    let (tx, rx) = watch::channel(Arc::new(first));
    let task = tokio::spawn(async move {
        let _watcher = watcher;
        while changes.recv().await.is_some() {
            let what = std::mem::take(&mut *pending.lock().unwrap());
            if !what.everything {
                // Only the files the events named.
                let t = std::time::Instant::now();
                let (next, errors) = folder.apply_files(&what.files);
                log_loaded(&next, &errors, t);
                tx.send_replace(Arc::new(next));
                continue;
            }
            match read(&mut folder, &dir) {
                Ok(next) => drop(tx.send_replace(Arc::new(next))),
                Err(e) => tracing::warn!(
                    dir = %dir.display(),
                    "config: cannot list the config folder: {e}; keeping the last good config"
                ),
            }
        }
    });
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    Ok((rx, Box::new(AbortOnDrop(task))))
}

/// Reads the folder, logging what it rejects.
fn read(source: &mut folder::Folder, dir: &std::path::Path) -> std::io::Result<folder::Objects> {
    let t = std::time::Instant::now();
    let (objects, errors) = source.load(dir)?;
    log_loaded(&objects, &errors, t);
    Ok(objects)
}

fn log_loaded(objects: &folder::Objects, errors: &[folder::Error], since: std::time::Instant) {
    for e in errors {
        tracing::warn!("config: {e}");
    }
    let took_ms = since.elapsed().as_secs_f64() * 1e3;
    tracing::info!(pods = objects.pods.len(), services = objects.services.len(), rejected = errors.len(), took_ms, "config: loaded");
}

/// Logs what of `objects` is ignored.
fn report(objects: &folder::Objects) {
    for (loser, winner) in peerauth::shadowed(&model::peer_authentication_policies(objects), authorization::ROOT_NAMESPACE) {
        tracing::warn!(policy = %loser, "config: PeerAuthentication {loser} is ignored: {winner} is older and applies to the same workloads");
    }
}

/// The snapshot of `objects`, with the JWKS fetched so far (and the fetcher told
/// which URIs are still named).
fn build(
    builder: &mut model::Builder,
    objects: &folder::Objects,
    args: &ControlPlaneArgs,
    jwks: &crate::jwt::fetch::JwksCache,
) -> model::Snapshot {
    let t = std::time::Instant::now();
    let uris = requestauth::jwks_uris(objects.request_authentications.values().map(|r| &r.spec));
    jwks.forget_except(&uris);
    let lookup = |uri: &str| jwks.get(uri).map(|k| k.as_str().to_owned());
    let snap = builder.build(objects, &model::TrustDomains::new(&args.trust_domain, &args.trust_domain_aliases), &lookup);
    tracing::info!(
        resources = snap.resources.len(),
        authorizations = snap.authorizations.len(),
        request_authentications = snap.request_authentications.len(),
        took_ms = t.elapsed().as_secs_f64() * 1e3,
        "config: built"
    );
    snap
}

/// TLS for `https://` jwksUri servers: `ca` or the system's roots.
fn jwks_tls(ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, Error> {
    use rustls_pki_types::pem::PemObject as _;
    let path = ca.unwrap_or(std::path::Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let mut roots = rustls::RootCertStore::empty();
    match rustls_pki_types::CertificateDer::pem_file_iter(path) {
        Ok(certs) => {
            let (added, _) = roots.add_parsable_certificates(certs.flatten());
            if added == 0 && ca.is_some() {
                return Err(Error::Config(format!("--jwks-ca-cert {}: no PEM certificate in it", path.display())));
            }
        }
        Err(e) if ca.is_some() => return Err(Error::Config(format!("--jwks-ca-cert {}: {e}", path.display()))),
        Err(_) => tracing::warn!("no system CA bundle at {}: https:// jwksUri servers cannot be verified", path.display()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests;
