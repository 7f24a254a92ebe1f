//! The data plane for enrolled pods: an outbound listener (15001) that tunnels captured
//! connections over HBONE, an HBONE inbound listener (15008), and an inbound plaintext
//! listener (15006) that the kernel steers plaintext for the pod to, all opened inside
//! each pod's network namespace (ztunnel's in-pod model).
//!
//! # Layout
//! - [`PodProxy`]: one pod's listeners; start it on enrollment (or adopt the
//!   listeners a predecessor agent handed over), drop it on removal.
//! - `outbound`: accept a captured connection, find its original destination, resolve
//!   it ([`resolve`]) and tunnel it (`hbone`) or pass it through.
//! - `inbound`: terminate mTLS, authenticate the caller, serve HTTP/2 CONNECT.
//! - `plaintext`: accept steered plaintext, log it, forward it to the application.
//! - `hbone`: the HBONE client and its per-destination HTTP/2 connection pool.
//! - `copy`: bidirectional copy with byte counts, and the access log.
//! - `lifecycle`: accept phases of a hand-over and the live-connection count of a drain.
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::capture::InboundConfig;
use crate::identity::WorkloadCert;
use crate::netns;
use crate::state::{Identity, State};

mod copy;
pub mod hbone;
mod l7;
mod inbound;
mod lifecycle;
mod outbound;
mod plaintext;
pub mod resolve;

pub use lifecycle::Phase;
pub(crate) use lifecycle::{quiesced, Live, Signals};

pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PLAINTEXT_PORT: u16 = mesh_common::INBOUND_PORT;
pub const HBONE_PORT: u16 = 15008;
/// Connect timeout for every socket the proxy opens (tunnels and local forwards).
/// HTTP/2 settings of HBONE connections, both sides: windows large enough that
/// flow control never limits a stream on a fast link, and frames large enough that
/// bulk data crosses in few of them.
pub(crate) const H2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub(crate) const H2_CONN_WINDOW: u32 = 16 * 1024 * 1024;
pub(crate) const H2_MAX_FRAME: u32 = 256 * 1024;

pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the proxy gets workload certificates (implemented for `identity::CertManager`).
pub trait CertSource: Send + Sync + 'static {
    fn fetch(&self, id: &Identity) -> BoxFuture<'_, Result<Arc<WorkloadCert>, String>>;
}

/// The original destination of a captured connection, recorded by the kernel's
/// connect hook, keyed by the pod's netns cookie and the pod socket's local port.
pub trait OrigDstLookup: Send + Sync + 'static {
    fn lookup(&self, netns_cookie: u64, peer_port: u16, ipv6: bool) -> Option<SocketAddr>;

    /// The agent is about to connect from `src` (the caller's address, transparent)
    /// to an application's `app_port`: let that SYN past inbound steering.
    fn forward_begin(&self, _src: SocketAddr, _app_port: u16) {}

    /// The connect() of [`OrigDstLookup::forward_begin`] is over.
    fn forward_end(&self, _src: SocketAddr, _app_port: u16) {}
}

/// What every pod proxy on this node shares.
pub struct ProxyInputs {
    pub state: State,
    pub certs: Arc<dyn CertSource>,
    pub orig_dst: Arc<dyn OrigDstLookup>,
    /// This node's name.
    pub node: String,
    /// AuthorizationPolicy enforcement: decisions and live inbound connections.
    pub authz: Arc<crate::authz::enforce::Enforcer>,
    /// How request paths are normalized before policies judge them (HTTP mode).
    pub path_normalization: crate::authz::http::Normalization,
}

/// A pod in the mesh on this node, as the CNI hook reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrolledPod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub ips: Vec<IpAddr>,
    /// The pod's network namespace, e.g. `/proc/<pid>/ns/net` or `/run/netns/<name>`.
    pub netns: PathBuf,
    pub identity: Identity,
    /// What the pod accepts inbound (mTLS mode, excluded ports); the kernel enforces
    /// it, and the plaintext listener checks it again.
    pub inbound: InboundConfig,
}

impl EnrolledPod {
    /// `namespace/name`, as the access log names workloads.
    pub fn workload_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding the {what} listener on {addr} inside {netns}: {source}; is another proxy (a sidecar, ztunnel) using the port?")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating a socket in the pod's network namespace: {0}")]
    Netns(#[source] io::Error),
    #[error("reading the network namespace cookie of the outbound listener (kernel 5.14+ needed): {0}")]
    Cookie(#[source] io::Error),
    #[error("no certificate for {identity}: {reason}; is the CA reachable?")]
    Cert { identity: Identity, reason: String },
    #[error(transparent)]
    Tls(#[from] crate::tls::Error),
    #[error(transparent)]
    Resolve(#[from] resolve::ResolveError),
    #[error("timed out connecting to {addr} ({what}); {hint}")]
    ConnectTimeout { addr: SocketAddr, what: &'static str, hint: &'static str },
    #[error("connecting to {addr} ({what}): {source}")]
    Connect {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("mTLS handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("HTTP/2 with {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("HBONE CONNECT to {target} via {addr} refused: {status} {reason}")]
    Refused { addr: SocketAddr, target: SocketAddr, status: http::StatusCode, reason: String },
}

/// Shutdown signal: every task holds a receiver; dropping the sender (in [`PodProxy`])
/// wakes them all.
pub(crate) type Drain = watch::Receiver<()>;

/// Which listener a connection came in on; names its span.
#[derive(Clone, Copy)]
pub(crate) enum Direction {
    Inbound,
    InboundPlaintext,
    Outbound,
}

/// Accepts on `listener` while the pod's proxy is accepting (see [`Phase`]), and runs
/// `handle` for each connection in its own task, inside a span named for the
/// direction, counted in `live`, ended early when the proxy drains.
pub(crate) async fn accept_loop<H, F>(listener: TcpListener, direction: Direction, pod: &EnrolledPod, signals: Signals, handle: H)
where
    H: Fn(tokio::net::TcpStream, SocketAddr) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    use std::sync::atomic::{AtomicU64, Ordering};
    use tracing::Instrument;
    static CONN_ID: AtomicU64 = AtomicU64::new(1);
    let pod = pod.workload_name();
    let mut phase = signals.phase.clone();
    match phase.wait_for(|p| *p != Phase::Held).await.map(|p| *p) {
        Ok(Phase::Accepting) => {}
        _ => return,
    }
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = quiesced(signals.phase.clone()) => return,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%pod, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small writes (requests, TLS records) must not wait for ACKs.
        let _ = stream.set_nodelay(true);
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let id = CONN_ID.fetch_add(1, Ordering::Relaxed);
        let span = match direction {
            Direction::Inbound => tracing::info_span!("inbound", id, %pod, %peer),
            Direction::InboundPlaintext => tracing::info_span!("inbound_plaintext", id, %pod, %peer),
            Direction::Outbound => tracing::info_span!("outbound", id, %pod, %peer),
        };
        let conn = handle(stream, peer);
        let drain = signals.drain.clone();
        let live = signals.live.guard();
        tokio::spawn(
            async move {
                let _live = live;
                tokio::select! {
                    _ = conn => {}
                    _ = drained(drain) => tracing::debug!("pod proxy stopped; connection closed"),
                }
            }
            .instrument(span),
        );
    }
}

pub(crate) async fn drained(mut d: Drain) {
    while d.changed().await.is_ok() {}
}

/// One pod's running listeners. Dropping it (or [`PodProxy::shutdown`]) stops the
/// listeners and every connection they carry.
pub struct PodProxy {
    cookie: u64,
    outbound_addrs: Vec<SocketAddr>,
    inbound_addr: SocketAddr,
    /// Duplicates of every listener: the plaintext ones for the kernel's
    /// `INBOUND_LISTENERS`, all of them for a hand-over; closed with the proxy.
    sockets: Option<PodSockets>,
    tasks: Vec<JoinHandle<()>>,
    drain: Option<watch::Sender<()>>,
    phase: watch::Sender<Phase>,
    live: Live,
    /// The pod's namespace thread (see `netns::Netns`), kept alive with the proxy.
    netns: Arc<netns::Netns>,
}

/// A pod's listening sockets, as bound inside its namespace or handed over.
pub struct PodSockets {
    /// `127.0.0.1:15001`, and `[::1]:15001` when the pod has IPv6.
    pub outbound: Vec<std::net::TcpListener>,
    /// HBONE, 15008.
    pub inbound: std::net::TcpListener,
    /// `127.0.0.1:15006`, `[::1]:15006`.
    pub plaintext: Vec<std::net::TcpListener>,
}

impl PodSockets {
    pub fn all(&self) -> impl Iterator<Item = &std::net::TcpListener> {
        self.outbound.iter().chain(std::iter::once(&self.inbound)).chain(&self.plaintext)
    }

    fn try_clone(&self) -> io::Result<PodSockets> {
        let dup = |ls: &[std::net::TcpListener]| ls.iter().map(|l| l.try_clone()).collect::<io::Result<Vec<_>>>();
        Ok(PodSockets { outbound: dup(&self.outbound)?, inbound: self.inbound.try_clone()?, plaintext: dup(&self.plaintext)? })
    }
}

impl PodProxy {
    /// Binds the pod's listeners inside its network namespace and starts serving.
    /// Returns once the sockets are listening. Must run inside a Tokio runtime.
    pub async fn start(inputs: Arc<ProxyInputs>, pod: EnrolledPod) -> Result<PodProxy, Error> {
        // One thread in the pod's namespace for the pod's whole life: it binds the
        // listeners now and creates every socket the pod's connections need later.
        let netns = netns::Netns::shared(&pod.netns).map_err(Error::Netns)?;
        let path = pod.netns.clone();
        let bound = netns.run(move || Ok(bind_listeners(&path))).await.map_err(Error::Netns)??;
        Self::serve(inputs, pod, netns, bound, Phase::Accepting).await
    }

    /// Serves listeners a predecessor agent handed over (the same sockets, so their
    /// accept queues and the kernel's references to them carry on). They accept
    /// nothing until [`PodProxy::open`].
    pub async fn adopt(inputs: Arc<ProxyInputs>, pod: EnrolledPod, sockets: PodSockets) -> Result<PodProxy, Error> {
        let netns = netns::Netns::shared(&pod.netns).map_err(Error::Netns)?;
        Self::serve(inputs, pod, netns, sockets, Phase::Held).await
    }

    async fn serve(
        inputs: Arc<ProxyInputs>,
        pod: EnrolledPod,
        netns: Arc<netns::Netns>,
        bound: PodSockets,
        phase: Phase,
    ) -> Result<PodProxy, Error> {
        crate::podnet::install(&netns).await.map_err(|e| Error::Netns(io::Error::other(crate::error_chain(&e))))?;
        let cookie = netns::socket_netns_cookie(&bound.outbound[0]).map_err(Error::Cookie)?;
        let sockets = bound.try_clone().map_err(Error::Netns)?;
        let (tx, rx) = watch::channel(());
        let (phase, phase_rx) = watch::channel(phase);
        let live = Live::default();
        let signals = Signals { drain: rx, phase: phase_rx, live: live.clone() };
        let pod = Arc::new(pod);
        let pool = Arc::new(hbone::Pool::default());
        let mut tasks = Vec::new();
        let mut outbound_addrs = Vec::new();
        for l in bound.outbound {
            let l = TcpListener::from_std(l).map_err(Error::Netns)?;
            outbound_addrs.push(l.local_addr().map_err(Error::Netns)?);
            let ob = outbound::Outbound::new(inputs.clone(), pod.clone(), pool.clone(), cookie, l, signals.clone());
            tasks.push(tokio::spawn(ob.run()));
        }
        let mut plaintext_addrs = Vec::new();
        for l in bound.plaintext {
            let l = TcpListener::from_std(l).map_err(Error::Netns)?;
            plaintext_addrs.push(l.local_addr().map_err(Error::Netns)?);
            tasks.push(tokio::spawn(plaintext::InboundPlaintext::new(inputs.clone(), pod.clone(), l, signals.clone()).run()));
        }
        let l = TcpListener::from_std(bound.inbound).map_err(Error::Netns)?;
        let inbound_addr = l.local_addr().map_err(Error::Netns)?;
        tasks.push(tokio::spawn(inbound::Inbound::new(inputs, pod.clone(), l, signals).run()));
        tracing::info!(pod = %pod.workload_name(), identity = %pod.identity, netns = %pod.netns.display(),
            cookie, outbound = ?outbound_addrs, inbound = %inbound_addr, plaintext = ?plaintext_addrs,
            phase = ?*phase.borrow(), "pod proxy started");
        Ok(PodProxy { cookie, outbound_addrs, inbound_addr, sockets: Some(sockets), tasks, drain: Some(tx), phase, live, netns })
    }

    /// The kernel's cookie for the pod's network namespace (key of the orig-dst map).
    pub fn netns_cookie(&self) -> u64 {
        self.cookie
    }

    /// The outbound listeners (`127.0.0.1:15001`, and `[::1]:15001` when available).
    pub fn outbound_addrs(&self) -> &[SocketAddr] {
        &self.outbound_addrs
    }

    /// The HBONE listener (`[::]:15008` dual stack, or `0.0.0.0:15008`).
    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound_addr
    }

    /// The inbound plaintext listeners (`127.0.0.1:15006`, `[::1]:15006`), which the
    /// kernel's sk_lookup program hands plaintext for the pod to.
    pub fn plaintext_listeners(&self) -> (Option<std::os::fd::BorrowedFd<'_>>, Option<std::os::fd::BorrowedFd<'_>>) {
        use std::os::fd::AsFd;
        let family = |v6: bool| {
            let ls = self.sockets.as_ref().map(|s| s.plaintext.as_slice()).unwrap_or_default();
            ls.iter().find(|l| l.local_addr().is_ok_and(|a| a.is_ipv6() == v6)).map(|l| l.as_fd())
        };
        (family(false), family(true))
    }

    /// Every listener, for a hand-over (`None` once quiesced or stopped).
    pub fn sockets(&self) -> Option<&PodSockets> {
        self.sockets.as_ref()
    }

    /// Starts accepting on adopted listeners.
    pub fn open(&self) {
        self.phase.send_replace(Phase::Accepting);
    }

    /// Stops accepting (the successor accepts now) and lets HBONE connections take no
    /// new streams; established connections carry on until they end or the proxy is
    /// dropped. Our copies of the listening sockets are closed.
    pub fn quiesce(&mut self) {
        self.phase.send_replace(Phase::Quiesced);
        self.sockets = None;
    }

    /// Connections this proxy carries now.
    pub fn live_connections(&self) -> usize {
        self.live.count()
    }

    /// Returns once the proxy carries no connection.
    pub async fn idle(&self) {
        self.live.idle().await
    }

    /// Stops the listeners and all their connections. The sockets close a moment
    /// later, on the runtime; use [`PodProxy::shutdown_wait`] to wait for that.
    pub fn shutdown(self) {}

    /// Like [`PodProxy::shutdown`], but returns only once the listening sockets are
    /// closed, so the same ports can be bound again in that namespace.
    pub async fn shutdown_wait(mut self) {
        self.drain.take();
        self.sockets = None;
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// The pod is leaving the mesh: stop as [`PodProxy::shutdown_wait`], and take our
    /// routing out of its namespace (`podnet`). A stopping agent keeps it instead, for
    /// the agent that adopts the pod.
    pub async fn remove(self) {
        let netns = self.netns.clone();
        self.shutdown_wait().await;
        crate::podnet::remove(&netns).await;
    }
}

impl Drop for PodProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs inside the pod's namespace.
fn bind_listeners(ns: &Path) -> Result<PodSockets, Error> {
    let bind = |what, addr: SocketAddr, v6only: Option<bool>| {
        listen(addr, v6only).map_err(|source| Error::Bind { what, addr, netns: ns.to_owned(), source })
    };
    let mut outbound = vec![bind("outbound", (Ipv4Addr::LOCALHOST, OUTBOUND_PORT).into(), None)?];
    match bind("outbound", (Ipv6Addr::LOCALHOST, OUTBOUND_PORT).into(), Some(true)) {
        Ok(l) => outbound.push(l),
        Err(Error::Bind { source, .. }) if no_ipv6(&source) => {}
        Err(e) => return Err(e),
    }
    // On loopback: nothing reaches it by address; the kernel assigns steered
    // connections to it (sk_lookup), keeping their original destination as local address.
    let mut plaintext = vec![bind("inbound plaintext", (Ipv4Addr::LOCALHOST, INBOUND_PLAINTEXT_PORT).into(), None)?];
    match bind("inbound plaintext", (Ipv6Addr::LOCALHOST, INBOUND_PLAINTEXT_PORT).into(), Some(true)) {
        Ok(l) => plaintext.push(l),
        Err(Error::Bind { source, .. }) if no_ipv6(&source) => {}
        Err(e) => return Err(e),
    }
    let inbound = match bind("HBONE inbound", (Ipv6Addr::UNSPECIFIED, HBONE_PORT).into(), Some(false)) {
        Ok(l) => l,
        Err(Error::Bind { source, .. }) if no_ipv6(&source) => {
            bind("HBONE inbound", (Ipv4Addr::UNSPECIFIED, HBONE_PORT).into(), None)?
        }
        Err(e) => return Err(e),
    };
    Ok(PodSockets { outbound, inbound, plaintext })
}

fn no_ipv6(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL) | Some(libc::EAFNOSUPPORT))
}

fn listen(addr: SocketAddr, v6only: Option<bool>) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if let Some(v6only) = v6only {
        s.set_only_v6(v6only)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Creates a TCP socket inside the network namespace `ns` (so that it has the pod's
/// addresses and routes), ready to connect from any thread.
pub(crate) async fn socket_in(ns: &Path, dst: SocketAddr, source: Option<IpAddr>) -> Result<TcpSocket, Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let ns = netns::Netns::shared(ns).map_err(Error::Netns)?;
    let s = ns
        .run(move || {
            let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
            s.set_nonblocking(true)?;
            s.set_nodelay(true)?;
            if let Some(src) = source {
                transparent(&s, src)?;
            }
            Ok(s)
        })
        .await
        .map_err(Error::Netns)?;
    Ok(TcpSocket::from_std_stream(s.into()))
}

/// Makes `s` leave with the caller's address `src` (see [`crate::podnet`]), bound to
/// `lo` (the replies come back through the mark rule's local route).
fn transparent(s: &socket2::Socket, src: IpAddr) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    let set = |level, name| {
        // SAFETY: valid fd, and a c_int option value of the size given.
        let rc = unsafe {
            libc::setsockopt(s.as_raw_fd(), level, name, (&one as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t)
        };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    };
    match src {
        IpAddr::V4(_) => s.set_ip_transparent(true)?,
        IpAddr::V6(_) => set(libc::SOL_IPV6, libc::IPV6_TRANSPARENT)?,
    }
    s.set_mark(crate::podnet::MARK)?;
    s.bind_device(Some(b"lo"))?;
    // The port is picked here, before connect(), so that the connection can be
    // registered with the kernel (`forward_begin`) before its SYN leaves. Picking it
    // at random with SO_REUSEADDR keeps bind() O(1) however many earlier connections
    // from this caller wait in TIME_WAIT (the kernel's own search for a free port to
    // bind() scans them); a 4-tuple still in use fails at connect() and is retried.
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::new(src, fastrand::u16(EPHEMERAL_PORTS)).into())
}

/// Source ports of the agent's transparent connections to applications (the kernel's
/// default ephemeral range).
const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 32_768..=60_999;

/// Connects, from inside the pod's namespace, to the application at one of the pod's
/// own addresses, with the caller's address `source` as the source when the families
/// match (the application sees who called; see [`crate::podnet`]).
pub(crate) async fn connect_to_app(
    kernel: &dyn OrigDstLookup,
    ns: &Path,
    source: IpAddr,
    dst: SocketAddr,
    what: &'static str,
) -> Result<tokio::net::TcpStream, Error> {
    let source = source.to_canonical();
    let keep = (source.is_ipv4() == dst.is_ipv4() && !source.is_loopback()).then_some(source);
    let hint = "is the application listening on that port?";
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sock = match socket_in(ns, dst, keep).await {
            // The random source port is bound by a listener: another.
            Err(Error::Netns(e)) if e.kind() == io::ErrorKind::AddrInUse && attempt < 8 => continue,
            r => r?,
        };
        let Some(src) = keep.and_then(|_| sock.local_addr().ok()) else {
            return finish_connect(sock, dst, what, hint).await;
        };
        kernel.forward_begin(src, dst.port());
        let r = finish_connect(sock, dst, what, hint).await;
        kernel.forward_end(src, dst.port());
        match r {
            // The random source port's 4-tuple is still in use (TIME_WAIT): another.
            Err(Error::Connect { ref source, .. })
                if source.kind() == io::ErrorKind::AddrNotAvailable && attempt < 8 => {}
            r => return r,
        }
    }
}

/// Connects a socket made inside `ns` to `dst`, within [`CONNECT_TIMEOUT`].
pub(crate) async fn connect_in(
    ns: &Path,
    dst: SocketAddr,
    what: &'static str,
    hint: &'static str,
) -> Result<tokio::net::TcpStream, Error> {
    let sock = socket_in(ns, dst, None).await?;
    finish_connect(sock, dst, what, hint).await
}

async fn finish_connect(
    sock: TcpSocket,
    dst: SocketAddr,
    what: &'static str,
    hint: &'static str,
) -> Result<tokio::net::TcpStream, Error> {
    match tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(dst)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(Error::Connect { addr: dst, what, source }),
        Err(_) => Err(Error::ConnectTimeout { addr: dst, what, hint }),
    }
}
