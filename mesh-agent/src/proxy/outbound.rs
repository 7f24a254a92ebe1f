//! The outbound listener (127.0.0.1:15001 inside the pod): connections the kernel
//! redirected here are resolved and tunnelled over HBONE, or passed through.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::copy::{copy, AccessLog};
use super::resolve::{resolve, Destination};
use super::{connect_in, hbone, Direction, Drain, EnrolledPod, ProxyInputs, Signals, HBONE_PORT};

pub(super) struct Outbound {
    listener: TcpListener,
    ctx: Arc<Ctx>,
    signals: Signals,
}

/// What each outbound connection needs (not the listener: a connection that outlives
/// the listener task must not keep the port bound).
struct Ctx {
    inputs: Arc<ProxyInputs>,
    pod: Arc<EnrolledPod>,
    pool: Arc<hbone::Pool>,
    cookie: u64,
    ipv6: bool,
    round_robin: AtomicUsize,
    drain: Drain,
}

impl Outbound {
    pub fn new(
        inputs: Arc<ProxyInputs>,
        pod: Arc<EnrolledPod>,
        pool: Arc<hbone::Pool>,
        cookie: u64,
        listener: TcpListener,
        signals: Signals,
    ) -> Self {
        let ipv6 = listener.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
        let drain = signals.drain.clone();
        let ctx = Ctx { inputs, pod, pool, cookie, ipv6, round_robin: Default::default(), drain };
        Outbound { listener, ctx: Arc::new(ctx), signals }
    }

    pub async fn run(self) {
        let ctx = self.ctx.clone();
        super::accept_loop(self.listener, Direction::Outbound, &ctx.pod, self.signals, |stream, peer| {
            let ctx = self.ctx.clone();
            async move { ctx.handle(stream, peer).await }
        })
        .await
    }
}

impl Ctx {
    async fn handle(&self, stream: TcpStream, peer: SocketAddr) {
        let mut log = AccessLog::new("outbound");
        log.src_workload = self.pod.workload_name();
        log.src_identity = self.pod.identity.to_string();
        let Some(orig) = self.inputs.orig_dst.lookup(self.cookie, peer.port(), self.ipv6) else {
            let e = format!(
                "no original destination recorded for {peer} (netns cookie {}); \
                 was the connection captured by the mesh? closing it",
                self.cookie
            );
            tracing::warn!("{e}");
            log.finish(Some(&e));
            return;
        };
        log.dst_addr = Some(orig);
        let dst = match resolve(&self.inputs.state, orig, self.round_robin.fetch_add(1, Ordering::Relaxed)) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("cannot route connection to {orig}: {e}");
                log.finish(Some(&e));
                return;
            }
        };
        log.dst_addr = Some(dst.addr());
        log.dst_service = dst.service().map(|s| s.hostname.clone());
        if let Some(w) = dst.workload() {
            log.dst_workload = format!("{}/{}", w.namespace, w.name);
        }
        let upstream = match &dst {
            Destination::Hbone { addr, identity, .. } => {
                log.dst_identity = identity.to_string();
                if self.pod.ips.contains(&addr.ip()) && addr.port() == HBONE_PORT {
                    let e = "refusing to tunnel to our own HBONE port (loop)";
                    tracing::warn!("{e}");
                    log.finish(Some(&e));
                    return;
                }
                let src = hbone::Source { identity: &self.pod.identity, netns: &self.pod.netns };
                let hbone_addr = SocketAddr::new(addr.ip(), HBONE_PORT);
                self.pool
                    .connect(&*self.inputs.certs, src, hbone_addr, identity, *addr, self.drain.clone())
                    .await
                    .map(Upstream::Tunnel)
            }
            Destination::Passthrough { addr, .. } => {
                connect_in(&self.pod.netns, *addr, "passthrough", "is the destination reachable from the pod?")
                    .await
                    .map(Upstream::Direct)
            }
        };
        let upstream = match upstream {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!("{e}");
                log.finish(Some(&e));
                return;
            }
        };
        let err = match upstream {
            Upstream::Tunnel(t) => copy(&log, stream, t).await,
            Upstream::Direct(d) => copy(&log, stream, d).await,
        };
        log.finish(err.as_ref().map(|e| e as &dyn std::fmt::Display));
    }
}

enum Upstream {
    Tunnel(hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>),
    Direct(TcpStream),
}
