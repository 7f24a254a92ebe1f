//! Kernel programs of mesh: capture of pods' outbound connections.
//!
//! `connect4` / `connect6` run on every `connect()` in an enrolled pod's cgroup. A TCP
//! connection to a mesh destination (`MESH_DESTS`) is rewritten to the agent's
//! outbound listener in the pod's own network namespace (loopback, port 15001), and
//! its original destination is kept under the socket's cookie. When the connection
//! is established, `track_orig` (sock_ops) moves that record to `ORIG_DST`, keyed by the pod's
//! namespace and the socket's local port: exactly what the agent sees after
//! `accept()`. The record is removed when the socket closes.
//!
//! `steer_inbound` (sk_lookup, per pod namespace) steers plaintext arriving for an
//! enrolled pod to the agent's inbound listener (15006), or drops it when the pod is
//! STRICT; see `inbound.rs`.
//! `policy_ingress` (tcx ingress on each pod's interface) enforces the L4 part of
//! AuthorizationPolicy from maps the agent compiles (`policy.rs`).
//! `fast_sockops` (sock_ops, pods' and the agent's cgroups) and `fast_redirect` (sk_msg
//! on `FAST_SOCKS`) pass bytes between a pod's socket and the agent's on the same
//! node without the loopback TCP stack (`fastpath.rs`).
#![no_std]
#![no_main]

mod capture;
mod fastpath;
mod inbound;
mod maps;
mod policy;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
