//! The control plane's admin listener (`--admin`, default 127.0.0.1:15014): `/metrics`
//! (`mesh_cp_*`) and `/debug/syncz` (per connected agent and type: resources held,
//! nonces sent and ACKed, in sync or not, NACKs with the agent's reasons).
use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::xds_server::XdsStatus;

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, status: XdsStatus) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control-plane admin: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = status.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let status = status.clone();
                async move { Ok::<_, Infallible>(route(&status, &req)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!("control-plane admin connection: {e}");
            }
        });
    }
}

fn route(status: &XdsStatus, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (code, body, kind) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, status.metrics.encode(), "text/plain; version=0.0.4"),
        "/debug/syncz" => {
            (StatusCode::OK, serde_json::to_string_pretty(&status.syncz()).unwrap_or_default(), "application/json")
        }
        _ => (StatusCode::NOT_FOUND, "try /metrics or /debug/syncz\n".to_string(), "text/plain"),
    };
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, kind)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}
