//! Inbound connections served as HTTP: where a pod's AuthorizationPolicy depends on
//! HTTP attributes, or a RequestAuthentication applies to it, the agent parses the
//! caller's requests (HTTP/1.1, or HTTP/2 with prior knowledge), judges each one and
//! forwards the admitted ones to the application over one connection in the caller's
//! protocol.
//!
//! Per request, in order:
//! 1. the path is normalized ([`authz::http::normalize`]); a path that cannot be is
//!    answered 400. The application receives the normalized path, so it serves what
//!    the policy judged;
//! 2. tokens are validated (RequestAuthentication): an invalid token is answered 401;
//! 3. AuthorizationPolicy with the request's attributes: a denial is answered 403
//!    `RBAC: access denied`, as Envoy answers.
//!
//! Traffic that is not HTTP on such a connection is closed: the policy cannot be
//! judged, so it fails closed.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::copy::{metered, AccessLog, Counted};
use super::ProxyInputs;
use crate::authz::http::normalize;
use crate::authz::{self, Attrs, Decision, RequestAuth};

type Body = Either<Incoming, Full<Bytes>>;

/// Headers that belong to one hop (RFC 9110 §7.6.1) and are not forwarded.
const HOP_BY_HOP: [header::HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// What every request on one connection is judged with.
pub(super) struct Judge {
    pub inputs: Arc<ProxyInputs>,
    pub pod_namespace: String,
    pub attrs: Attrs,
    /// The server name of the caller's TLS handshake (HBONE), for `connection.sni`.
    pub sni: Option<String>,
    /// Requests admitted and refused, for the connection's access-log record.
    pub admitted: AtomicU64,
    pub refused: AtomicU64,
}

/// How an admitted connection is served: `Some(true)` as HTTP (the policies leave the
/// outcome to the requests, or a RequestAuthentication applies to the pod),
/// `Some(false)` as bytes, `None` when it is refused.
pub(super) fn mode(decision: &Decision, inputs: &ProxyInputs, namespace: &str, attrs: &Attrs) -> Option<bool> {
    match decision {
        Decision::Pending(_) => Some(true),
        d if d.is_allowed() => Some(inputs.state.has_request_authentication(namespace, attrs.dst_ip)),
        _ => None,
    }
}

impl Judge {
    pub fn new(inputs: Arc<ProxyInputs>, namespace: &str, attrs: Attrs, sni: Option<String>) -> Arc<Judge> {
        Arc::new(Judge {
            inputs,
            pod_namespace: namespace.to_string(),
            attrs,
            sni,
            admitted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }
}

/// The upstream connection to the application, opened in the caller's protocol.
enum Upstream {
    Idle(Option<Counted<TcpStream>>),
    H1(hyper::client::conn::http1::SendRequest<Incoming>),
    H2(hyper::client::conn::http2::SendRequest<Incoming>),
}

/// Serves `io` as HTTP until the caller closes it; `app` is the connection to the
/// application. Returns the error that ended it, if any.
pub(super) async fn serve<I>(judge: Arc<Judge>, log: &AccessLog, io: I, app: TcpStream) -> Option<String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let upstream = Arc::new(Mutex::new(Upstream::Idle(Some(metered(log, app)))));
    let svc = {
        let judge = judge.clone();
        hyper::service::service_fn(move |req| {
            let (judge, upstream) = (judge.clone(), upstream.clone());
            async move { Ok::<_, std::convert::Infallible>(judge.request(req, &upstream).await) }
        })
    };
    let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(io, svc).await;
    let (ok, refused) = (judge.admitted.load(Ordering::Relaxed), judge.refused.load(Ordering::Relaxed));
    log.set_requests(ok, refused);
    served.err().map(|e| format!("HTTP: {e}"))
}

fn reply(status: StatusCode, body: String) -> Response<Body> {
    let mut res = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    res
}

impl Judge {
    async fn request(&self, req: Request<Incoming>, upstream: &Mutex<Upstream>) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let method = parts.method.clone();
        let raw = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        let refuse = |status: StatusCode, why: String, body: String| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(target: "access", direction = "inbound_http", src = %self.attrs.src_ip,
                port = self.attrs.dst_port, %method, path = raw, status = status.as_u16(), "{why}");
            reply(status, body)
        };
        let path = match normalize(&raw, self.inputs.path_normalization) {
            Ok(p) => p,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("bad path: {e}"), format!("bad request path: {e}\n")),
        };
        let auth: Option<RequestAuth> = match self.inputs.state.authenticate(&self.pod_namespace, self.attrs.dst_ip, &mut parts) {
            Ok(a) => a,
            Err(reason) => return refuse(StatusCode::UNAUTHORIZED, format!("jwt: {reason}"), format!("{reason}\n")),
        };
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
            .unwrap_or_default();
        let matched = path.match_path();
        let request = authz::Request {
            method: parts.method.as_str(),
            host: &host,
            path: &matched,
            headers: &parts.headers,
            auth: auth.as_ref(),
            sni: self.sni.as_deref(),
        };
        let decision = self.inputs.authz.check(&self.inputs.state, &self.pod_namespace, &self.attrs, Some(&request));
        if !decision.is_allowed() {
            return refuse(StatusCode::FORBIDDEN, decision.describe(), "RBAC: access denied\n".into());
        }
        // Forward what was judged: the normalized path, the original query.
        let mut uri = Uri::builder().path_and_query(path.target());
        if parts.version == Version::HTTP_2 {
            if let Some(a) = parts.uri.authority() {
                uri = uri.scheme("http").authority(a.clone());
            }
        }
        match uri.build() {
            Ok(u) => parts.uri = u,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("bad path: {e}"), format!("bad request path: {e}\n")),
        }
        for h in &HOP_BY_HOP {
            parts.headers.remove(h);
        }
        let version = parts.version;
        match forward(upstream, Request::from_parts(parts, body), version).await {
            Ok(res) => {
                self.admitted.fetch_add(1, Ordering::Relaxed);
                res.map(Either::Left)
            }
            Err(e) => refuse(StatusCode::BAD_GATEWAY, format!("upstream: {e}"), format!("upstream: {e}\n")),
        }
    }
}

/// Sends one request to the application, opening the connection on first use in the
/// caller's protocol (HTTP/2 callers are assumed to reach an HTTP/2 application, as
/// they would without the mesh).
async fn forward(upstream: &Mutex<Upstream>, req: Request<Incoming>, version: Version) -> Result<Response<Incoming>, String> {
    let mut up = upstream.lock().await;
    if let Upstream::Idle(app) = &mut *up {
        let io = TokioIo::new(app.take().ok_or("the application connection was lost")?);
        *up = if version == Version::HTTP_2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake with the application: {e}"))?;
            tokio::spawn(conn);
            Upstream::H2(send)
        } else {
            let (send, conn) =
                hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP/1.1 to the application: {e}"))?;
            tokio::spawn(conn);
            Upstream::H1(send)
        };
    }
    match &mut *up {
        Upstream::H2(send) => {
            let mut send = send.clone();
            drop(up);
            send.send_request(req).await.map_err(|e| e.to_string())
        }
        // HTTP/1.1 serves one request at a time: the lock is held until the response
        // head arrives (the caller's own connection is serialized the same way).
        Upstream::H1(send) => {
            send.ready().await.map_err(|e| e.to_string())?;
            send.send_request(req).await.map_err(|e| e.to_string())
        }
        Upstream::Idle(_) => unreachable!("opened above"),
    }
}
