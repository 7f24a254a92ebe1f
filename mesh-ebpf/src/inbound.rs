//! sk_lookup: inbound plaintext steering and STRICT mTLS for enrolled pods.
//!
//! Attached (bpf_link, multi-program) to each enrolled pod's network namespace, it
//! runs when a new TCP connection looks for a listening socket there. For an address
//! of the pod (`INBOUND`), in this order:
//! 1. pass untouched: connections from the pod's own address to itself (the agent's
//!    forwards to the app, which it opens inside the pod, and the pod calling itself),
//!    the agent's ports (15008 HBONE, 15001, 15006), and sources in
//!    `INBOUND_EXEMPT_SRC` (kubelet probes);
//! 2. the mode is the port's entry in `INBOUND_PORTS` if any, else the pod's;
//! 3. `BYPASS` (an excluded port) passes; `STRICT` drops and counts
//!    `drop_reason::STRICT_PLAINTEXT`; `PERMISSIVE` and `DISABLE` assign the
//!    connection to the agent's listener in `INBOUND_LISTENERS`, so that the
//!    accepted socket's local address is the original destination; with no
//!    listener (agent down) they drop, `drop_reason::NO_AGENT_LISTENER`: fail closed.
use core::ptr::read_volatile;

use aya_ebpf::bindings::sk_action::{SK_DROP, SK_PASS};
use aya_ebpf::macros::sk_lookup;
use aya_ebpf::programs::SkLookupContext;
use mesh_common::{
    counter, drop_reason, inbound_mode, Addr, DestKey, ForwardKey, HBONE_PORT, INBOUND_PORT,
    OUTBOUND_PORT,
};

use crate::capture::v4_mapped;
use crate::maps::{count, count_drop, FORWARDS, INBOUND, INBOUND_EXEMPT_SRC, INBOUND_LISTENERS, INBOUND_PORTS};

const AF_INET: u32 = 2;
const IPPROTO_TCP: u32 = 6;

/// Reads an address field of the context word by word, at fixed offsets.
#[inline(always)]
fn read_addr(a: &[u32; 4]) -> Addr {
    // SAFETY: `a` points into the kernel's context, valid for the program's run.
    unsafe { [read_volatile(&a[0]), read_volatile(&a[1]), read_volatile(&a[2]), read_volatile(&a[3])] }
}

#[sk_lookup]
pub fn steer_inbound(ctx: SkLookupContext) -> u32 {
    decide(&ctx)
}

#[inline(always)]
fn decide(ctx: &SkLookupContext) -> u32 {
    // SAFETY: the context pointer is the kernel's bpf_sk_lookup for this call.
    let sl = unsafe { &*ctx.lookup };
    if unsafe { read_volatile(&sl.protocol) } != IPPROTO_TCP {
        return SK_PASS;
    }
    // Every context field is read at its fixed offset, unconditionally: the verifier
    // refuses a context pointer whose offset the compiler picked by branch.
    let v4 = unsafe { read_volatile(&sl.family) } == AF_INET;
    let local4 = unsafe { read_volatile(&sl.local_ip4) };
    let remote4 = unsafe { read_volatile(&sl.remote_ip4) };
    let local6 = read_addr(&sl.local_ip6);
    let remote6 = read_addr(&sl.remote_ip6);
    let (local, remote): (Addr, Addr) =
        if v4 { (v4_mapped(local4), v4_mapped(remote4)) } else { (local6, remote6) };
    // SAFETY: read-only lookups of plain-old-data values.
    let Some(pod_mode) = (unsafe { INBOUND.get(&local) }).map(|r| r.mode) else {
        return SK_PASS;
    };
    let port = unsafe { read_volatile(&sl.local_port) } as u16;
    // Local traffic: from the pod's own address to itself (a packet from outside with
    // our own address as source is a martian, dropped before this point); and the
    // agent's forwards that keep the caller's address (`podnet`), which the agent
    // registers in FORWARDS from bind() to the end of connect(). (Neither shows in
    // `ingress_ifindex`: for local traffic the kernel reports the address's device.)
    let forward = ForwardKey {
        remote,
        remote_port_be: unsafe { read_volatile(&sl.remote_port) },
        local_port: port,
    };
    if remote == local
        || unsafe { FORWARDS.get(&forward) }.is_some()
        || port == HBONE_PORT
        || port == OUTBOUND_PORT
        || port == INBOUND_PORT
        || unsafe { INBOUND_EXEMPT_SRC.get(&remote) }.is_some()
    {
        count(counter::INBOUND_EXEMPT);
        return SK_PASS;
    }
    let key = DestKey { addr: local, port_be: port.to_be(), _pad: [0; 2] };
    let mode = match unsafe { INBOUND_PORTS.get(&key) } {
        Some(r) => r.mode,
        None => pod_mode,
    };
    match mode {
        inbound_mode::BYPASS => {
            count(counter::INBOUND_EXEMPT);
            SK_PASS
        }
        inbound_mode::STRICT => {
            count_drop(local, drop_reason::STRICT_PLAINTEXT);
            count(counter::INBOUND_STRICT_DROPPED);
            SK_DROP
        }
        _ => {
            if INBOUND_LISTENERS.redirect_sk_lookup(ctx, local, 0).is_ok() {
                count(counter::INBOUND_STEERED);
                SK_PASS
            } else {
                // Fail closed: without the agent, plaintext would skip its policy.
                count(counter::INBOUND_NO_LISTENER);
                count_drop(local, drop_reason::NO_AGENT_LISTENER);
                SK_DROP
            }
        }
    }
}
