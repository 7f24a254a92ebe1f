//! The HBONE inbound listener (15008 inside the pod): terminates mTLS with the pod's
//! certificate, authenticates the caller, and serves HTTP/2 CONNECT to the pod's ports.
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::copy::{copy, AccessLog};
use super::l7;
use super::{connect_to_app, drained, quiesced, Direction, EnrolledPod, Error, ProxyInputs, Signals, CONNECT_TIMEOUT};
use crate::authz::Attrs;
use crate::identity::WorkloadCert;
use crate::state::{Identity, State, Workload};
use crate::tls;

type CachedConfig = (Arc<WorkloadCert>, Arc<rustls::ServerConfig>);

pub(super) struct Inbound {
    listener: TcpListener,
    ctx: Arc<Ctx>,
}

/// What each HBONE connection needs (not the listener: a connection that outlives
/// the listener task must not keep the port bound).
struct Ctx {
    inputs: Arc<ProxyInputs>,
    pod: Arc<EnrolledPod>,
    signals: Signals,
    config: Mutex<Option<CachedConfig>>,
}

impl Inbound {
    pub fn new(inputs: Arc<ProxyInputs>, pod: Arc<EnrolledPod>, listener: TcpListener, signals: Signals) -> Self {
        Inbound { listener, ctx: Arc::new(Ctx { inputs, pod, signals, config: Mutex::new(None) }) }
    }

    pub async fn run(self) {
        let ctx = self.ctx.clone();
        let signals = ctx.signals.clone();
        let authz = ctx.inputs.authz.clone();
        authz.pod_started(&ctx.pod.uid, &ctx.pod.namespace, &ctx.pod.ips);
        super::accept_loop(self.listener, Direction::Inbound, &ctx.pod, signals, |stream, peer| {
            let ctx = self.ctx.clone();
            async move { ctx.handle(stream, peer).await }
        })
        .await;
        authz.pod_stopped(&ctx.pod.uid);
    }
}

impl Ctx {
    /// The pod's TLS server configuration, rebuilt when the certificate changes.
    async fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, Error> {
        let id = &self.pod.identity;
        let cert = self
            .inputs
            .certs
            .fetch(id)
            .await
            .map_err(|reason| Error::Cert { identity: id.clone(), reason })?;
        let mut cached = self.config.lock().unwrap();
        if let Some((c, cfg)) = cached.as_ref() {
            if Arc::ptr_eq(c, &cert) {
                return Ok(cfg.clone());
            }
        }
        let cfg = Arc::new(tls::server_config(&cert)?);
        *cached = Some((cert, cfg.clone()));
        Ok(cfg)
    }

    async fn handle(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let mut log = AccessLog::new("inbound");
        log.dst_workload = self.pod.workload_name();
        log.dst_identity = self.pod.identity.to_string();
        let cfg = match self.server_config().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("refusing HBONE connection from {peer}: {e}");
                log.finish(Some(&e));
                return;
            }
        };
        let tls = match tokio::time::timeout(CONNECT_TIMEOUT, TlsAcceptor::from(cfg).accept(stream)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                let e = format!("mTLS handshake from {peer} failed: {}", tls::readable_io_error(e));
                tracing::warn!("{e}");
                log.finish(Some(&e));
                return;
            }
            Err(_) => {
                let e = format!("mTLS handshake from {peer} timed out");
                tracing::warn!("{e}");
                log.finish(Some(&e));
                return;
            }
        };
        // From here on each CONNECT stream writes its own record.
        log.discard();
        let caller = authenticate(&self.inputs.state, peer.ip(), tls.get_ref().1).await;
        if let Caller { rejected: Some((_, reason)), .. } = &caller {
            tracing::warn!("rejecting HBONE caller {peer}: {reason}");
        }
        let sni = tls.get_ref().1.server_name().map(str::to_string);
        let conn = Arc::new(Conn { inbound: self.clone(), caller, source: peer.ip(), sni });
        // hyper runs each stream on its own task: carry the connection's span there.
        let span = tracing::Span::current();
        let svc = hyper::service::service_fn(move |req| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(conn.request(req).await) }.instrument(span.clone())
        });
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(super::H2_STREAM_WINDOW)
            .initial_connection_window_size(super::H2_CONN_WINDOW)
            .max_frame_size(super::H2_MAX_FRAME)
            .serve_connection(TokioIo::new(tls), svc);
        tokio::pin!(conn);
        // After a hand-over the caller's pool must open its next tunnels to our
        // successor: GOAWAY (no new streams), and the open ones finish here.
        let ended = tokio::select! {
            r = conn.as_mut() => r,
            _ = quiesced(self.signals.phase.clone()) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = ended {
            tracing::debug!("HBONE connection from {peer} ended: {e}");
        }
    }
}

/// Who is calling, as far as we could establish it.
struct Caller {
    identity: Option<Identity>,
    workload: Option<String>,
    /// Set when the caller must be refused: the status to answer every CONNECT with.
    rejected: Option<(StatusCode, String)>,
}

/// The caller's certificate identity must be the identity the control plane gives the
/// workload owning the connection's source address (looked up from the control plane
/// when this agent does not hold it: see [`crate::ondemand`]).
async fn authenticate(state: &State, peer: IpAddr, conn: &rustls::CommonState) -> Caller {
    let identity = match tls::peer_identity(conn) {
        Ok(id) => id,
        Err(e) => {
            let reason = format!("caller {peer} has no usable SPIFFE identity: {e}");
            return Caller { identity: None, workload: None, rejected: Some((StatusCode::UNAUTHORIZED, reason)) };
        }
    };
    let workload = state.lookup_workload_by_ip(peer, crate::ondemand::LOOKUP_TIMEOUT).await;
    authorize_source(workload, peer, identity)
}

fn authorize_source(workload: Option<Arc<Workload>>, peer: IpAddr, identity: Identity) -> Caller {
    let Some(w) = workload else {
        let reason = format!(
            "source address {peer} is not a known workload: the control plane knows none there, or did not answer within {:?} (caller presented {identity})",
            crate::ondemand::LOOKUP_TIMEOUT
        );
        return Caller { identity: Some(identity), workload: None, rejected: Some((StatusCode::FORBIDDEN, reason)) };
    };
    let name = format!("{}/{}", w.namespace, w.name);
    let expected = w.identity();
    let rejected = (expected != identity).then(|| {
        let reason =
            format!("source address {peer} belongs to {name} with identity {expected}, but the caller presented {identity}");
        (StatusCode::FORBIDDEN, reason)
    });
    Caller { identity: Some(identity), workload: Some(name), rejected }
}

/// One authenticated (or refused) HTTP/2 connection.
struct Conn {
    inbound: Arc<Ctx>,
    caller: Caller,
    /// The caller's address, kept as the source of the connection to the app.
    source: IpAddr,
    /// The server name of the caller's TLS handshake.
    sni: Option<String>,
}

impl Conn {
    async fn request(&self, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        let pod = &self.inbound.pod;
        let mut log = AccessLog::new("inbound");
        log.src_identity = self.caller.identity.as_ref().map(|i| i.to_string()).unwrap_or_default();
        log.src_workload = self.caller.workload.clone().unwrap_or_default();
        log.dst_workload = pod.workload_name();
        log.dst_identity = pod.identity.to_string();
        let refuse = |log: &AccessLog, status: StatusCode, reason: String| {
            log.finish(Some(&format!("{} {reason}", status.as_u16())));
            respond(status, reason)
        };
        if let Some((status, reason)) = &self.caller.rejected {
            return refuse(&log, *status, reason.clone());
        }
        if req.method() != Method::CONNECT {
            let reason = format!("only CONNECT is served on the HBONE port, not {}", req.method());
            return refuse(&log, StatusCode::METHOD_NOT_ALLOWED, reason);
        }
        let authority = req.uri().authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let target = match authority.parse::<SocketAddr>() {
            Ok(t) => SocketAddr::new(t.ip().to_canonical(), t.port()),
            Err(_) => {
                let reason = format!("CONNECT authority {authority:?} is not <ip>:<port>");
                return refuse(&log, StatusCode::BAD_REQUEST, reason);
            }
        };
        log.dst_addr = Some(target);
        if !pod.ips.contains(&target.ip()) {
            let reason = format!("{target} is not an address of pod {}", pod.workload_name());
            return refuse(&log, StatusCode::BAD_REQUEST, reason);
        }
        // AuthorizationPolicy: the authoritative check, on the real destination port.
        let inputs = &self.inbound.inputs;
        let attrs = Attrs { src_ip: self.source, identity: self.caller.identity.clone(), dst_ip: target.ip(), dst_port: target.port() };
        let decision = inputs.authz.check(&inputs.state, &pod.namespace, &attrs, None);
        log.authz = Some(decision.describe());
        let Some(as_http) = l7::mode(&decision, inputs, &pod.namespace, &attrs) else {
            return refuse(&log, StatusCode::FORBIDDEN, format!("RBAC: access denied: {}", decision.describe()));
        };
        let mut registration = inputs.authz.register(&pod.namespace, &pod.name, attrs.clone(), as_http);
        let judge = as_http.then(|| l7::Judge::new(inputs.clone(), &pod.namespace, attrs, self.sni.clone()));
        let app = match connect_to_app(&*self.inbound.inputs.orig_dst, &pod.netns, self.source, target, "inbound").await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("{e}");
                return refuse(&log, StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            }
        };
        let upgrade = hyper::upgrade::on(&mut req);
        let drain = self.inbound.signals.drain.clone();
        let live = self.inbound.signals.live.guard();
        tokio::spawn(
            async move {
                let _live = live;
                let work = async {
                    let err = match (upgrade.await, judge) {
                        (Ok(up), None) => copy(&log, TokioIo::new(up), app).await.map(|e| e.to_string()),
                        (Ok(up), Some(judge)) => l7::serve(judge, &log, up, app).await,
                        (Err(e), _) => Some(format!("CONNECT upgrade failed: {e}")),
                    };
                    log.finish(err.as_ref().map(|e| e as &dyn std::fmt::Display));
                };
                tokio::select! {
                    _ = work => {}
                    _ = drained(drain) => {}
                    reason = registration.revoked() => log.finish(Some(&reason)),
                }
            }
            .in_current_span(),
        );
        respond(StatusCode::OK, String::new())
    }
}

fn respond(status: StatusCode, reason: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(reason)));
    *res.status_mut() = status;
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{TunnelProtocol, Workload};

    #[test]
    fn source_address_must_match_identity() {
        let state = State::default();
        state.upsert_workload(Workload {
            uid: "a".into(),
            name: "a".into(),
            namespace: "default".into(),
            service_account: "a".into(),
            trust_domain: "cluster.local".into(),
            node: "n".into(),
            addresses: vec!["10.0.0.1".parse().unwrap()],
            protocol: TunnelProtocol::Hbone,
            labels: Default::default(),
            healthy: true,
        });
        let a: Identity = "spiffe://cluster.local/ns/default/sa/a".parse().unwrap();
        let b: Identity = "spiffe://cluster.local/ns/default/sa/b".parse().unwrap();
        let at = |ip: &str| state.find_workload_by_ip(ip.parse().unwrap());
        let ok = authorize_source(at("10.0.0.1"), "10.0.0.1".parse().unwrap(), a.clone());
        assert!(ok.rejected.is_none());
        assert_eq!(ok.workload.as_deref(), Some("default/a"));
        let wrong = authorize_source(at("10.0.0.1"), "10.0.0.1".parse().unwrap(), b.clone());
        assert_eq!(wrong.rejected.as_ref().map(|r| r.0), Some(StatusCode::FORBIDDEN));
        assert!(wrong.rejected.unwrap().1.contains("belongs to default/a with identity"));
        let unknown = authorize_source(at("10.0.0.9"), "10.0.0.9".parse().unwrap(), a);
        assert_eq!(unknown.rejected.map(|r| r.0), Some(StatusCode::FORBIDDEN));
    }
}
