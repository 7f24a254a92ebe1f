//! Admin endpoint (localhost): `/ready`, `/config_dump` with what the agent holds, and
//! `/metrics`. The metrics listener (15020) serves the same routes.
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::warn;

use crate::identity::CertManager;
use crate::inpod::PodManager;
use crate::state::{State, TunnelProtocol};

pub struct Admin {
    pub state: State,
    pub pods: Arc<PodManager>,
    pub certs: Arc<CertManager>,
    pub synced: watch::Receiver<bool>,
    pub metrics: prometheus_client::registry::Registry,
}

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let admin = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    warn!("admin connection: {e}");
                }
            });
        }
    }

    fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/ready" if *self.synced.borrow() => reply(StatusCode::OK, "ready\n".into()),
            "/ready" => reply(StatusCode::SERVICE_UNAVAILABLE, "waiting for the control plane\n".into()),
            "/config_dump" => {
                let body = serde_json::to_string_pretty(&self.config_dump()).unwrap_or_default();
                reply(StatusCode::OK, body)
            }
            "/metrics" => reply(StatusCode::OK, crate::metrics::encode(&self.metrics)),
            _ => reply(StatusCode::NOT_FOUND, "try /ready, /config_dump or /metrics\n".into()),
        }
    }

    pub fn config_dump(&self) -> serde_json::Value {
        let workloads: Vec<_> = self
            .state
            .workloads()
            .iter()
            .map(|w| {
                json!({
                    "uid": w.uid, "name": w.name, "namespace": w.namespace,
                    "addresses": w.addresses, "identity": w.identity().to_string(), "node": w.node,
                    "protocol": if w.protocol == TunnelProtocol::Hbone { "HBONE" } else { "NONE" },
                    "healthy": w.healthy,
                })
            })
            .collect();
        let services: Vec<_> = self
            .state
            .services()
            .iter()
            .map(|s| {
                json!({
                    "hostname": s.hostname, "vips": s.vips,
                    "ports": s.ports.iter().map(|p| json!({"port": p.service_port, "target_port": p.target_port})).collect::<Vec<_>>(),
                    "endpoints": s.endpoints.keys().collect::<Vec<_>>(),
                })
            })
            .collect();
        let certs: Vec<_> = self
            .certs
            .certificates()
            .iter()
            .map(|c| {
                let secs = c.not_after.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let serial = c.cert_chain.first().and_then(crate::identity::serial_of);
                json!({"identity": c.identity.to_string(), "serial": serial, "not_after_unix": secs})
            })
            .collect();
        let mut policies: Vec<_> = self
            .state
            .policies()
            .iter()
            .map(|p| {
                json!({
                    "name": p.key(), "scope": format!("{:?}", p.scope), "action": format!("{:?}", p.action),
                    "dry_run": p.dry_run, "rules": format!("{:?}", p.groups),
                })
            })
            .collect();
        policies.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let routing: Vec<_> = self
            .state
            .routing()
            .iter()
            .map(|r| match r {
                crate::state::Routing::VirtualService(v) => json!({
                    "name": r.key(), "hosts": v.hosts, "gateways": v.gateways,
                    "http_routes": v.http.len(), "tls_routes": v.tls.len(), "tcp_routes": v.tcp.len(),
                }),
                crate::state::Routing::DestinationRule(d) => json!({
                    "name": r.key(), "host": d.host,
                    "subsets": d.subsets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
                }),
            })
            .collect();
        json!({
            "workloads": workloads, "services": services, "authorization_policies": policies,
            "routing": routing, "pods": self.pods.pods(), "certificates": certs,
            "looked_up": self.state.on_demand().subscribed(),
        })
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
