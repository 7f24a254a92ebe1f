//! connect4 / connect6 / sockops: capture and original-destination tracking.
use aya_ebpf::bindings::{
    BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
    BPF_TCP_CLOSE,
};
use aya_ebpf::helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie};
use aya_ebpf::macros::{cgroup_sock_addr, sock_ops};
use aya_ebpf::programs::{SockAddrContext, SockOpsContext};
use aya_ebpf::EbpfContext;
use mesh_common::{counter, flow_event, Addr, DestKey, FlowEvent, NetnsPortKey, OrigDst, SockKey, OUTBOUND_PORT};

use crate::maps::{count, FLOW_EVENTS, MESH_DESTS, ORIG_BY_COOKIE, ORIG_DST, OUTBOUND_EXCLUDED_PORTS, PODS};

pub(crate) const AF_INET: u16 = 2;
pub(crate) const AF_INET6: u16 = 10;
const IPPROTO_TCP: u32 = 6;
/// A cgroup/connect program returns 1 to let the connect() proceed.
const ALLOW: i32 = 1;
/// cgroup/connect: refuse the connect() (the caller sees EPERM).
const REFUSE: i32 = 0;

/// `::ffff:0:0/96` as the third network-order word of an address.
#[inline(always)]
fn v4_mapped_word() -> u32 {
    0x0000_ffffu32.to_be()
}

#[inline(always)]
pub(crate) fn v4_mapped(ip4_be: u32) -> Addr {
    [0, 0, v4_mapped_word(), ip4_be]
}

#[inline(always)]
pub(crate) fn is_v4_mapped(a: &Addr) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == v4_mapped_word()
}

/// Whether the mesh captures `addr:port`: the exact service port first, then the
/// address with any port (a workload).
#[inline(always)]
fn is_mesh_dest(addr: Addr, port_be: u16) -> bool {
    let exact = DestKey { addr, port_be, _pad: [0; 2] };
    // SAFETY: read-only lookups of plain-old-data values.
    if unsafe { MESH_DESTS.get(&exact) }.is_some() {
        return true;
    }
    let any = DestKey { addr, port_be: 0, _pad: [0; 2] };
    unsafe { MESH_DESTS.get(&any) }.is_some()
}

/// What connect4/connect6 do with a connect().
#[derive(Clone, Copy, PartialEq, Eq)]
enum Capture {
    /// Not ours (not TCP, not enrolled, not a mesh destination, excluded port).
    Leave,
    /// Redirect to the agent's outbound listener; the original destination is recorded.
    Redirect,
    /// A mesh destination whose original destination could not be recorded: refuse
    /// the connect() (EPERM) rather than let it bypass the mesh.
    Refuse,
}

/// Shared part of connect4/connect6.
#[inline(always)]
fn capture(ctx: &SockAddrContext, dst: Addr, port_be: u16, family: u16) -> Capture {
    decide(ctx, dst, port_be, family).unwrap_or(Capture::Leave)
}

/// [`capture`], with `None` for [`Capture::Leave`].
#[inline(always)]
fn decide(ctx: &SockAddrContext, dst: Addr, port_be: u16, family: u16) -> Option<Capture> {
    // SAFETY: the context pointer is the kernel's bpf_sock_addr for this call.
    let sa = unsafe { &*ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP {
        return None;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    count(counter::CONNECT_SEEN);
    // SAFETY: read-only lookup of a plain-old-data value.
    if unsafe { PODS.get(&netns) }.is_none() {
        count(counter::NOT_ENROLLED);
        return None;
    }
    if !is_mesh_dest(dst, port_be) {
        return None;
    }
    let excluded = NetnsPortKey { netns_cookie: netns, port_be, _pad: [0; 6] };
    // SAFETY: read-only lookup of a plain-old-data value.
    if unsafe { OUTBOUND_EXCLUDED_PORTS.get(&excluded) }.is_some() {
        count(counter::CONNECT_EXCLUDED);
        return None;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let orig = OrigDst { addr: dst, port_be, family, netns_cookie: netns };
    if ORIG_BY_COOKIE.insert(&cookie, &orig, 0).is_err() {
        count(counter::CAPTURE_FAILED);
        return Some(Capture::Refuse);
    }
    count(counter::CONNECT_REDIRECTED);
    Some(Capture::Redirect)
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is the kernel's bpf_sock_addr for this call.
    let sa = unsafe { &mut *ctx.sock_addr };
    let ip4 = sa.user_ip4;
    let port_be = sa.user_port as u16;
    match capture(&ctx, v4_mapped(ip4), port_be, AF_INET) {
        Capture::Leave => {}
        Capture::Refuse => return REFUSE,
        Capture::Redirect => {
            sa.user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
            sa.user_port = OUTBOUND_PORT.to_be() as u32;
        }
    }
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is the kernel's bpf_sock_addr for this call.
    let sa = unsafe { &mut *ctx.sock_addr };
    let ip6: Addr = sa.user_ip6;
    let port_be = sa.user_port as u16;
    let decided = capture(&ctx, ip6, port_be, AF_INET6);
    if decided == Capture::Refuse {
        return REFUSE;
    }
    if decided == Capture::Redirect {
        // An IPv4-mapped destination goes to the IPv4 listener, the rest to [::1].
        sa.user_ip6 = if is_v4_mapped(&ip6) {
            v4_mapped(u32::from_ne_bytes([127, 0, 0, 1]))
        } else {
            [0, 0, 0, 1u32.to_be()]
        };
        sa.user_port = OUTBOUND_PORT.to_be() as u32;
    }
    ALLOW
}

/// The key under which the agent will look the connection up after accept(): the
/// address family of the listener it lands on (IPv4-mapped sockets reach the IPv4 one).
#[inline(always)]
fn sock_key(ctx: &SockOpsContext) -> SockKey {
    let family = if ctx.family() == AF_INET as u32 || is_v4_mapped(&ctx.remote_ip6()) {
        AF_INET
    } else {
        AF_INET6
    };
    SockKey {
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        port: ctx.local_port() as u16,
        family,
        _pad: [0; 4],
    }
}

/// Sends a flow event; a full ring drops it (the agent is behind), never blocks.
#[inline(always)]
fn flow(ctx: &SockOpsContext, socket_cookie: u64, key: &SockKey, orig: &OrigDst, kind: u32) {
    // SAFETY: sock_ops context fields of a full TCP socket, read-only.
    let (bytes_acked, bytes_received) = unsafe { ((*ctx.ops).bytes_acked, (*ctx.ops).bytes_received) };
    let event = FlowEvent {
        netns_cookie: key.netns_cookie,
        socket_cookie,
        bytes_acked,
        bytes_received,
        dst: orig.addr,
        dst_port_be: orig.port_be,
        local_port: key.port,
        kind,
    };
    let _ = FLOW_EVENTS.output::<FlowEvent>(&event, 0);
}

#[sock_ops]
pub fn track_orig(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            // SAFETY: read of a plain-old-data value, copied before the remove below.
            let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }).copied() else {
                return 0;
            };
            let _ = ORIG_BY_COOKIE.remove(&cookie);
            let key = sock_key(&ctx);
            if ORIG_DST.insert(&key, &orig, 0).is_ok() {
                count(counter::ORIG_RECORDED);
                flow(&ctx, cookie, &key, &orig, flow_event::OPEN);
                // Ask for state changes so that the entry goes when the socket closes.
                let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
            } else {
                count(counter::ORIG_MISSING);
            }
        }
        BPF_SOCK_OPS_STATE_CB => {
            if ctx.arg(1) != BPF_TCP_CLOSE {
                return 0;
            }
            let key = sock_key(&ctx);
            // SAFETY: read of a plain-old-data value, copied before the remove below.
            let Some(orig) = (unsafe { ORIG_DST.get(&key) }).copied() else {
                return 0;
            };
            if ORIG_DST.remove(&key).is_ok() {
                count(counter::ORIG_EXPIRED);
                let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
                flow(&ctx, cookie, &key, &orig, flow_event::CLOSE);
            }
        }
        _ => {}
    }
    0
}
