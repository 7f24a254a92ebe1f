//! mesh: a sidecarless service mesh node agent, and its control-plane role.
//!
//! # Layout
//! - [`kernel`]: loads, pins and attaches the eBPF programs; reads and writes their maps.
//! - [`capture`]: what a pod asks of the data path (mTLS mode, Istio exclusion annotations).
//! - [`authz`]: AuthorizationPolicy on the node: evaluator, kernel form, enforcement.
//! - [`l4policy`]: the L4 part of AuthorizationPolicy and its compiler into kernel maps.
//! - [`handover`]: graceful restart: a new agent takes the running one's sockets, which drains.
//! - [`inpod`]: pod enrollment (the CNI hook's events) and sockets inside pod namespaces.
//! - [`proxy`]: the outbound (15001), inbound plaintext (15006) and HBONE (15008) listeners.
//! - [`tls`]: rustls configurations that present and verify SPIFFE identities.
//! - [`identity`]: workload certificates, obtained from the CA and kept fresh.
//! - [`node_token`]: the node credential an agent shows the control plane (xDS and CA).
//! - [`state`]: what the control plane says exists: workloads and services.
//! - [`xds`]: the agent's delta ADS client that fills [`state`].
//! - [`controlplane`]: the control-plane role: config folder, xDS server, CA.
//! - [`proto`]: generated gRPC/protobuf types (see `proto/README.md`).
//! - [`agent`], [`admin`]: the node agent role and its localhost admin endpoint.
//! - [`metrics`]: Prometheus metrics of the proxy and the kernel programs.
//! - [`netns`]: running code inside another network namespace.
//! - [`podnet`]: pod namespace routing for connections that keep the client's address.
pub mod admin;
pub mod agent;
pub mod authz;
pub mod capture;
pub mod controlplane;
pub mod identity;
pub mod handover;
pub mod inpod;
pub mod jwt;
pub mod kernel;
pub mod metrics;
pub mod l4policy;
pub mod netns;
pub mod node_token;
pub mod ondemand;
pub mod podnet;
pub mod proto;
pub mod proxy;
pub mod state;
pub mod tls;
pub mod xds;

/// An error and its causes on one line: `what failed: why: root cause`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = c.source();
    }
    out
}
