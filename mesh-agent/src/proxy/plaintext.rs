//! The inbound plaintext listener (15006 on the pod's loopback). The kernel's
//! sk_lookup program (`steer_inbound`) assigns plaintext TCP for the pod's ports to
//! it, so an accepted socket's local address is the original destination. The agent
//! logs the connection and forwards it to the application from inside the pod's
//! namespace; that forward arrives on loopback, which the kernel does not steer.
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::copy::{copy, AccessLog};
use super::l7;
use super::{connect_to_app, Direction, EnrolledPod, ProxyInputs, Signals, HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
use crate::authz::Attrs;
use crate::capture::{MtlsMode, PortAction};

pub(super) struct InboundPlaintext {
    listener: TcpListener,
    ctx: Arc<Ctx>,
    signals: Signals,
}

struct Ctx {
    inputs: Arc<ProxyInputs>,
    pod: Arc<EnrolledPod>,
}

impl InboundPlaintext {
    pub fn new(inputs: Arc<ProxyInputs>, pod: Arc<EnrolledPod>, listener: TcpListener, signals: Signals) -> Self {
        InboundPlaintext { listener, ctx: Arc::new(Ctx { inputs, pod }), signals }
    }

    pub async fn run(self) {
        let ctx = self.ctx.clone();
        super::accept_loop(self.listener, Direction::InboundPlaintext, &ctx.pod, self.signals, |stream, peer| {
            let ctx = self.ctx.clone();
            async move { ctx.handle(stream, peer).await }
        })
        .await
    }
}

/// Why a steered connection is not forwarded (`None`: forward it).
fn refusal(pod: &EnrolledPod, dst: SocketAddr) -> Option<String> {
    if !pod.ips.contains(&dst.ip()) {
        return Some(format!("{dst} is not an address of pod {}; closing", pod.workload_name()));
    }
    if [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT].contains(&dst.port()) {
        return Some(format!("refusing plaintext to the agent's own port {} (loop)", dst.port()));
    }
    // Defence in depth: the kernel drops this already.
    if pod.inbound.action(dst.port()) == PortAction::Mode(MtlsMode::Strict) {
        return Some(format!(
            "plaintext to {dst} refused: pod {} is STRICT (mTLS only) on this port",
            pod.workload_name()
        ));
    }
    None
}

impl Ctx {
    async fn handle(&self, stream: TcpStream, peer: SocketAddr) {
        let mut log = AccessLog::new("inbound_plaintext");
        log.src_addr = Some(peer);
        log.dst_workload = self.pod.workload_name();
        log.dst_identity = self.pod.identity.to_string();
        if let Some(w) = self.inputs.state.find_workload_by_ip(peer.ip()) {
            log.src_workload = format!("{}/{}", w.namespace, w.name);
        }
        let dst = match stream.local_addr() {
            Ok(a) => SocketAddr::new(a.ip().to_canonical(), a.port()),
            Err(e) => {
                log.finish(Some(&format!("reading the original destination: {e}")));
                return;
            }
        };
        log.dst_addr = Some(dst);
        if let Some(e) = refusal(&self.pod, dst) {
            tracing::warn!("{e}");
            log.finish(Some(&e));
            return;
        }
        // AuthorizationPolicy: plaintext has no principal nor namespace.
        let attrs = Attrs { src_ip: peer.ip().to_canonical(), identity: None, dst_ip: dst.ip(), dst_port: dst.port() };
        let decision = self.inputs.authz.check(&self.inputs.state, &self.pod.namespace, &attrs, None);
        log.authz = Some(decision.describe());
        let Some(as_http) = l7::mode(&decision, &self.inputs, &self.pod.namespace, &attrs) else {
            log.finish(Some(&format!("RBAC: access denied: {}", decision.describe())));
            return;
        };
        let mut registration = self.inputs.authz.register(&self.pod.namespace, &self.pod.name, attrs.clone(), as_http);
        let app = match connect_to_app(&*self.inputs.orig_dst, &self.pod.netns, peer.ip(), dst, "application").await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("{e}");
                log.finish(Some(&e));
                return;
            }
        };
        let work = async {
            if as_http {
                let judge = l7::Judge::new(self.inputs.clone(), &self.pod.namespace, attrs, None);
                l7::serve(judge, &log, TokioIo::new(stream), app).await
            } else {
                copy(&log, stream, app).await.map(|e| e.to_string())
            }
        };
        tokio::select! {
            err = work => log.finish(err.as_ref().map(|e| e as &dyn std::fmt::Display)),
            reason = registration.revoked() => log.finish(Some(&reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::InboundConfig;

    fn pod(inbound: InboundConfig) -> EnrolledPod {
        EnrolledPod {
            uid: "u".into(),
            namespace: "default".into(),
            name: "echo".into(),
            service_account: "echo".into(),
            ips: vec!["10.0.0.5".parse().unwrap()],
            netns: "/nonexistent".into(),
            identity: "spiffe://cluster.local/ns/default/sa/echo".parse().unwrap(),
            inbound,
        }
    }

    #[test]
    fn steered_connections_are_checked_before_forwarding() {
        let permissive = pod(InboundConfig::default());
        assert_eq!(refusal(&permissive, "10.0.0.5:8080".parse().unwrap()), None);
        assert!(refusal(&permissive, "10.0.0.6:8080".parse().unwrap()).unwrap().contains("not an address"));
        assert!(refusal(&permissive, "10.0.0.5:15006".parse().unwrap()).unwrap().contains("loop"));
        let strict = pod(InboundConfig {
            mode: MtlsMode::Strict,
            port_modes: [(9090, MtlsMode::Permissive)].into_iter().collect(),
            excluded_ports: Default::default(),
        });
        assert!(refusal(&strict, "10.0.0.5:8080".parse().unwrap()).unwrap().contains("STRICT"));
        assert_eq!(refusal(&strict, "10.0.0.5:9090".parse().unwrap()), None);
    }
}
