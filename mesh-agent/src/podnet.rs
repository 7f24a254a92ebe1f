//! Per-pod network setup that lets the agent hand a connection to the application
//! with the client's own address as its source, as ztunnel does.
//!
//! The agent connects to the application from inside the pod's namespace with
//! `IP_TRANSPARENT`, bound to the client's address, and marks the socket with
//! [`MARK`]. The application's replies go to an address that is not the pod's, so
//! the pod's namespace gets three things, all inside the pod and nothing on the node:
//! - `net.ipv4.tcp_fwmark_accept = 1`: the application's accepted socket takes the
//!   SYN's mark, so every reply it sends carries [`MARK`];
//! - `ip rule fwmark MARK lookup TABLE` (IPv4 and IPv6);
//! - `local default dev lo table TABLE`: marked packets are delivered locally, to the
//!   agent's transparent socket, instead of leaving through the pod's interface.
//!
//! Besides telling the application who called, this keeps TIME_WAIT spread over the
//! clients' addresses: with the pod's own address as the source of every forwarded
//! connection, one port of one pod could take only ~470 new connections a second.
use std::net::{Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{RouteMessage, RouteScope, RouteType};
use rtnetlink::packet_route::rule::RuleAction;
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use crate::netns::Netns;

/// Mark of the agent's connections to applications (ztunnel uses the same value).
pub const MARK: u32 = 0x539;
/// Routing table holding the local-delivery route for marked packets.
pub const TABLE: u32 = 133;
/// Priority of our rule: before the main table (32766).
const RULE_PRIORITY: u32 = 32_000;
const LOOPBACK_IFINDEX: u32 = 1;
const FWMARK_ACCEPT: &str = "/proc/sys/net/ipv4/tcp_fwmark_accept";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pod network {netns}: {what}: {source}")]
    Io {
        netns: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("pod network {netns}: {what}: {source}")]
    Netlink {
        netns: String,
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// Opens a route-netlink connection inside `ns`, driven by the current runtime.
async fn netlink(ns: &Netns) -> Result<Handle, Error> {
    let rt = tokio::runtime::Handle::current();
    let (conn, handle) = ns
        .run(move || {
            let _guard = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection()?;
            Ok((conn, handle))
        })
        .await
        .map_err(|source| Error::Io { netns: ns.path().display().to_string(), what: "opening netlink", source })?;
    tokio::spawn(conn);
    Ok(handle)
}

fn exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

/// `local default dev lo table TABLE`, for IPv4 or IPv6.
fn local_default_route(v6: bool) -> RouteMessage {
    fn msg<T>(b: RouteMessageBuilder<T>) -> RouteMessageBuilder<T> {
        b.table_id(TABLE).kind(RouteType::Local).scope(RouteScope::Host).output_interface(LOOPBACK_IFINDEX)
    }
    if v6 {
        msg(RouteMessageBuilder::<Ipv6Addr>::new()).destination_prefix(Ipv6Addr::UNSPECIFIED, 0).build()
    } else {
        msg(RouteMessageBuilder::<Ipv4Addr>::new()).destination_prefix(Ipv4Addr::UNSPECIFIED, 0).build()
    }
}

/// Installs the mark rule, the local route and the sysctl (idempotent).
pub async fn install(ns: &Netns) -> Result<(), Error> {
    let name = || ns.path().display().to_string();
    ns.run(|| std::fs::write(FWMARK_ACCEPT, "1"))
        .await
        .map_err(|source| Error::Io { netns: name(), what: "setting net.ipv4.tcp_fwmark_accept", source })?;
    let h = netlink(ns).await?;
    let nl = |what| move |source| Error::Netlink { netns: name(), what, source };
    h.route().add(local_default_route(false)).replace().execute().await.map_err(nl("adding the IPv4 local route"))?;
    if let Err(e) = h.rule().add().v4().fw_mark(MARK).table_id(TABLE).priority(RULE_PRIORITY).action(RuleAction::ToTable).execute().await {
        if !exists(&e) {
            return Err(nl("adding the IPv4 mark rule")(e));
        }
    }
    // IPv6 may be disabled in the pod; IPv4 alone is then enough.
    match h.route().add(local_default_route(true)).replace().execute().await {
        Ok(()) => {
            let r = h.rule().add().v6().fw_mark(MARK).table_id(TABLE).priority(RULE_PRIORITY).action(RuleAction::ToTable).execute().await;
            if let Some(e) = r.as_ref().err().filter(|e| !exists(e)) {
                tracing::warn!(netns = %name(), "no IPv6 mark rule: {e}; IPv6 callers will reach the app from the pod's own address");
            }
        }
        Err(e) => tracing::warn!(netns = %name(), "no IPv6 local route: {e}; IPv6 callers will reach the app from the pod's own address"),
    }
    Ok(())
}

/// Removes what [`install`] added (best effort: the pod may already be gone).
pub async fn remove(ns: &Netns) {
    let Ok(h) = netlink(ns).await else { return };
    for version in [IpVersion::V4, IpVersion::V6] {
        let rules: Vec<_> = h.rule().get(version).execute().try_collect().await.unwrap_or_default();
        for rule in rules {
            let ours = rule.attributes.iter().any(|a| matches!(a, rtnetlink::packet_route::rule::RuleAttribute::FwMark(m) if *m == MARK));
            if ours {
                let _ = h.rule().del(rule).execute().await;
            }
        }
    }
    for v6 in [false, true] {
        let _ = h.route().del(local_default_route(v6)).execute().await;
    }
}
