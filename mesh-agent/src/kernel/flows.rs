//! Reads `FLOW_EVENTS`: captured connections opening and closing, as the kernel saw
//! them (the pod's own socket), for flow logs (`flow` target, debug level) and the
//! `mesh_kernel_flows_total` / `mesh_kernel_flow_bytes_total` metrics.
use aya::maps::{MapData, RingBuf};
use mesh_common::{flow_event, ip_from_addr, FlowEvent};
use tokio::io::unix::AsyncFd;

use crate::metrics::PROXY;

/// Runs until the ring buffer fails (never, in practice).
pub async fn run(ring: RingBuf<MapData>) {
    // SAFETY: the ring buffer owns its fd, which stays open (and is not reused for
    // anything else) for as long as the AsyncFd that owns the ring buffer.
    let registered = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("flow events: cannot poll the ring buffer: {e}; no flow logs");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!("flow events: {e}; no more flow logs");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<FlowEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole FlowEvent (length checked above); it is
            // plain old data, read without assuming alignment.
            let event: FlowEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            record(&event);
        }
        guard.clear_ready();
    }
}

fn record(e: &FlowEvent) {
    let dst = std::net::SocketAddr::new(ip_from_addr(e.dst), u16::from_be(e.dst_port_be));
    match e.kind {
        flow_event::OPEN => {
            PROXY.flow("open", 0, 0);
            tracing::debug!(target: "flow", event = "open", netns_cookie = e.netns_cookie, local_port = e.local_port, %dst);
        }
        flow_event::CLOSE => {
            PROXY.flow("close", e.bytes_acked, e.bytes_received);
            tracing::debug!(target: "flow", event = "close", netns_cookie = e.netns_cookie, local_port = e.local_port, %dst,
                bytes.sent = e.bytes_acked, bytes.recv = e.bytes_received);
        }
        _ => {}
    }
}
