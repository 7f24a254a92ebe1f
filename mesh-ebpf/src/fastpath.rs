//! Same-node fast path: bytes between a pod's socket and the agent's socket at the
//! other end of a loopback leg go straight into the peer's receive queue (sk_msg
//! redirect to ingress) instead of through loopback TCP.
//!
//! `fast_sockops` runs on the pods' cgroups and on the agent's own cgroup. At
//! ESTABLISHED it puts both ends of each loopback leg (`mesh_common::fast_leg`) into
//! `FAST_SOCKS`, synchronously with the handshake, so before either end can send.
//! `fast_redirect` runs on every sendmsg() of a socket in `FAST_SOCKS` and redirects the
//! message to the peer (same key, ends swapped). Ordering rule: a socket whose bytes
//! ever went through TCP after it joined the map (peer missing, pod switched off,
//! connection taken off by the agent) is marked in `FAST_OFF` and never redirects
//! again; otherwise its peer could read newer redirected bytes before older TCP ones
//! (the kernel serves a socket's redirected queue first).
use aya_ebpf::bindings::{
    sk_action::SK_PASS, BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
};
use aya_ebpf::helpers::generated::bpf_get_netns_cookie;
use aya_ebpf::macros::{sk_msg, sock_ops};
use aya_ebpf::programs::{SkMsgContext, SockOpsContext};
use aya_ebpf::EbpfContext;
use mesh_common::{counter, fast_leg, FastKey, ForwardKey, FAST_POD_ON};

use crate::capture::{is_v4_mapped, v4_mapped, AF_INET, AF_INET6};
use crate::maps::{count, FAST_OFF, FAST_PODS, FAST_SOCKS, FORWARDS, PODS};

/// Reads one context field as the verifier wants it: a plain load at a constant
/// offset from the context pointer (the compiler must not turn it into a load
/// through a computed pointer, which the verifier refuses).
macro_rules! field {
    ($ctx:expr, $($f:tt)+) => {
        // SAFETY: the context pointer is the kernel's, valid for this call.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ctx).$($f)+)) }
    };
}

/// The socket's key from the fields `bpf_sock_ops` and `sk_msg_md` share: family,
/// IPv4 or IPv6 words (network order), ports (local in host order, remote in network
/// order in the upper half of the word).
macro_rules! fast_key {
    ($ctx:expr, $netns:expr) => {{
        let ctx = $ctx;
        // Every field is read, unconditionally, before any choice: loads chosen by a
        // branch get merged into one load through a computed pointer.
        let family = field!(ctx, family);
        let ip4 = (field!(ctx, local_ip4), field!(ctx, remote_ip4));
        let l6 = [field!(ctx, local_ip6[0]), field!(ctx, local_ip6[1]), field!(ctx, local_ip6[2]), field!(ctx, local_ip6[3])];
        let r6 = [field!(ctx, remote_ip6[0]), field!(ctx, remote_ip6[1]), field!(ctx, remote_ip6[2]), field!(ctx, remote_ip6[3])];
        let ports = (field!(ctx, local_port), field!(ctx, remote_port));
        let (local, remote) = if family == AF_INET as u32 { (v4_mapped(ip4.0), v4_mapped(ip4.1)) } else { (l6, r6) };
        FastKey {
            netns_cookie: $netns,
            local,
            remote,
            local_port: ports.0 as u16,
            remote_port: u32::from_be(ports.1) as u16,
            family: if is_v4_mapped(&remote) { AF_INET } else { AF_INET6 },
            _pad: 0,
        }
    }};
}

#[inline(always)]
fn pod_on(netns_cookie: u64) -> bool {
    // SAFETY: read-only lookup of a plain-old-data value.
    unsafe { FAST_PODS.get(&netns_cookie) }.copied() == Some(FAST_POD_ON)
}

#[sock_ops]
pub fn fast_sockops(ctx: SockOpsContext) -> u32 {
    let passive = match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => false,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => true,
        _ => return 0,
    };
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: read-only lookup of a plain-old-data value.
    if unsafe { PODS.get(&netns) }.is_none() || !pod_on(netns) {
        return 0;
    }
    let mut k = fast_key!(ctx.ops, netns);
    // The agent's forward: its own end (active) is bound to the caller's address; the
    // application's end (passive) sees that address as remote.
    let fwd = if passive {
        ForwardKey { remote: k.remote, remote_port_be: k.remote_port.to_be(), local_port: k.local_port }
    } else {
        ForwardKey { remote: k.local, remote_port_be: k.local_port.to_be(), local_port: k.remote_port }
    };
    // SAFETY: read-only lookup of a plain-old-data value.
    let forward = unsafe { FORWARDS.get(&fwd) }.is_some();
    if !fast_leg(passive, &k.local, k.local_port, &k.remote, k.remote_port, forward) {
        return 0;
    }
    // A new socket with this tuple starts clean (an older one may have left its mark).
    let _ = FAST_OFF.remove(&k);
    // SAFETY: the context pointer is the kernel's bpf_sock_ops for this call.
    if FAST_SOCKS.update(&mut k, unsafe { &mut *ctx.ops }, 0).is_ok() {
        count(counter::FAST_INSERTED);
    }
    0
}

#[sk_msg]
pub fn fast_redirect(ctx: SkMsgContext) -> u32 {
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let own = fast_key!(ctx.msg, netns);
    // SAFETY: read-only lookup of a plain-old-data value.
    if unsafe { FAST_OFF.get(&own) }.is_some() {
        count(counter::FAST_PASSED);
        return SK_PASS;
    }
    if !pod_on(netns) {
        let _ = FAST_OFF.insert(&own, &1, 0);
        count(counter::FAST_PASSED);
        return SK_PASS;
    }
    let mut peer = own.peer();
    if FAST_SOCKS.redirect_msg(&ctx, &mut peer, BPF_F_INGRESS as u64) == SK_PASS as i64 {
        count(counter::FAST_REDIRECTED);
    } else {
        let _ = FAST_OFF.insert(&own, &1, 0);
        count(counter::FAST_MISSED);
    }
    SK_PASS
}
