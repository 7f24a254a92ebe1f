//! Graceful restart: a new agent takes the running agent's listening sockets over a
//! Unix socket (`--handover-socket`), so that no moment passes without a listener
//! and no accept queue is dropped; the old agent then drains and exits.
//!
//! # Protocol
//! One `SOCK_SEQPACKET` connection, one JSON message per packet, file descriptors
//! attached with `SCM_RIGHTS`, in the order the message's `fds` list names them:
//! 1. successor: `hello` (its node and bpffs folder; both must match);
//! 2. predecessor (enrollments frozen from here on): one `pod` per enrolled pod (the
//!    CNI's enrollment record, fds: netns, outbound, HBONE, plaintext listeners),
//!    then `listeners` (admin, metrics), then `done`;
//! 3. successor: adopts the pinned kernel state and the sockets, takes over the
//!    CNI and hand-over socket paths, starts accepting, then `ready`;
//! 4. predecessor: stops accepting, answers `released`, drains its connections
//!    (until they end or `--drain-timeout`), exits.
//!
//! If the connection ends before `ready`, the predecessor keeps serving (and takes
//! its socket paths back); a successor that fails before `ready` exits with an error
//! and has accepted nothing. `refused` ends the exchange with a reason.
use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::inpod::PodEvent;
use crate::proxy::{PodSockets, HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};

/// Version of the exchange; a successor speaking another one is refused.
pub const VERSION: u32 = 1;
/// Largest message (a pod's enrollment record is a few hundred bytes).
const MAX_MESSAGE: usize = 256 * 1024;
/// Most descriptors one message carries (a pod: netns + 6 listeners at most).
const MAX_FDS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("hand-over socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hand-over: {0}")]
    Io(#[source] std::io::Error),
    #[error("hand-over: the other agent closed the connection{0}")]
    Closed(&'static str),
    #[error("hand-over: timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    #[error("hand-over: bad message: {0}")]
    Protocol(String),
    #[error("hand-over refused by the running agent: {0}")]
    Refused(String),
    #[error("hand-over: pod {pod}: {what}")]
    Pod { pod: String, what: String },
}

/// What a descriptor attached to a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdRole {
    /// The pod's network namespace (`/proc/self/ns/net`-style fd).
    Netns,
    /// 15001, IPv4 or IPv6.
    Outbound,
    /// 15008.
    Hbone,
    /// 15006, IPv4 or IPv6.
    Plaintext,
    Admin,
    Metrics,
}

impl FdRole {
    /// The port a pod listener of this role is bound to.
    fn port(self) -> Option<u16> {
        match self {
            FdRole::Outbound => Some(OUTBOUND_PORT),
            FdRole::Hbone => Some(HBONE_PORT),
            FdRole::Plaintext => Some(INBOUND_PLAINTEXT_PORT),
            FdRole::Netns | FdRole::Admin | FdRole::Metrics => None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Msg {
    Hello { version: u32, node: String, bpffs: PathBuf, pid: u32 },
    Refused { reason: String },
    Pod { event: Box<PodEvent>, fds: Vec<FdRole> },
    Listeners { fds: Vec<FdRole> },
    Done { pods: usize },
    Ready,
    Released { pid: u32 },
}

impl Msg {
    fn name(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "hello",
            Msg::Refused { .. } => "refused",
            Msg::Pod { .. } => "pod",
            Msg::Listeners { .. } => "listeners",
            Msg::Done { .. } => "done",
            Msg::Ready => "ready",
            Msg::Released { .. } => "released",
        }
    }
}

/// One end of a hand-over connection.
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl Channel {
    fn new(fd: OwnedFd) -> Result<Channel, Error> {
        register(fd, Interest::READABLE | Interest::WRITABLE).map(|fd| Channel { fd }).map_err(Error::Io)
    }

    /// A connected pair, for tests.
    pub fn pair() -> Result<(Channel, Channel), Error> {
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let (a, b) = socket::socketpair(socket::AddressFamily::Unix, SockType::SeqPacket, None, flags)
            .map_err(|e| Error::Io(e.into()))?;
        Ok((Channel::new(a)?, Channel::new(b)?))
    }

    /// Sends `msg` with `fds` attached.
    pub async fn send(&self, msg: &Msg, fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        let bytes = serde_json::to_vec(msg).map_err(|e| Error::Protocol(e.to_string()))?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        loop {
            let mut guard = self.fd.writable().await.map_err(Error::Io)?;
            let sent = guard.try_io(|fd| {
                let cmsg = [ControlMessage::ScmRights(&raw)];
                let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
                socket::sendmsg::<()>(fd.as_raw_fd(), &[IoSlice::new(&bytes)], cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(std::io::Error::from)
            });
            match sent {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EPIPE) => return Err(Error::Closed(" while we sent")),
                Ok(Err(e)) => return Err(Error::Io(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one message and the descriptors attached to it.
    pub async fn recv(&self) -> Result<(Msg, Vec<OwnedFd>), Error> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let mut guard = self.fd.readable().await.map_err(Error::Io)?;
            let got = guard.try_io(|fd| recv_once(fd.as_raw_fd(), &mut buf));
            match got {
                Ok(r) => {
                    let (len, fds) = r.map_err(Error::Io)?;
                    if len == 0 {
                        return Err(Error::Closed(""));
                    }
                    let msg = serde_json::from_slice(&buf[..len]).map_err(|e| Error::Protocol(e.to_string()))?;
                    return Ok((msg, fds));
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// [`Channel::recv`] within `limit`.
    pub async fn recv_within(&self, limit: Duration, waiting_for: &'static str) -> Result<(Msg, Vec<OwnedFd>), Error> {
        match tokio::time::timeout(limit, self.recv()).await {
            Ok(Ok((Msg::Refused { reason }, _))) => Err(Error::Refused(reason)),
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(limit, waiting_for)),
        }
    }

    /// The user id of the process at the other end.
    pub fn peer_uid(&self) -> Result<u32, Error> {
        socket::getsockopt(self.fd.get_ref(), socket::sockopt::PeerCredentials)
            .map(|c| c.uid())
            .map_err(|e| Error::Io(e.into()))
    }
}

fn register(fd: OwnedFd, interest: Interest) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is moved into the AsyncFd and stays open, referring to the
    // same socket, until the AsyncFd drops it.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| std::io::Error::other(e.to_string()))
}

/// One `recvmsg`: the message length and the descriptors (closed on drop if unused).
fn recv_once(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = socket::recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors for us; nobody else owns them.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    if msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(std::io::Error::other(format!(
            "message larger than {MAX_MESSAGE} bytes or with more than {MAX_FDS} descriptors"
        )));
    }
    Ok((msg.bytes, fds))
}

/// Connects to a running agent's hand-over socket. `None` when nobody listens there
/// (no socket file, or a stale one): start as a first agent.
pub fn connect(path: &Path) -> Result<Option<Channel>, Error> {
    let err = |source: std::io::Error| Error::Socket { path: path.to_path_buf(), source };
    let fd = socket::socket(socket::AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| err(e.into()))?;
    let addr = UnixAddr::new(path).map_err(|e| err(e.into()))?;
    match socket::connect(fd.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ECONNREFUSED) => return Ok(None),
        Err(e) => return Err(err(e.into())),
    }
    set_nonblocking(&fd).map_err(err)?;
    Channel::new(fd).map(Some)
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// The listening hand-over socket of a running agent.
pub struct Listener {
    fd: AsyncFd<OwnedFd>,
    pub claim: PathClaim,
}

impl Listener {
    /// Binds at `path` by binding a fresh name beside it and renaming it into
    /// place: whoever connects finds either the previous agent's socket or ours.
    pub fn bind(path: &Path) -> Result<Listener, Error> {
        let err = |source: std::io::Error| Error::Socket { path: path.to_path_buf(), source };
        let (fd, claim) = bind_by_rename(path, |tmp| {
            let fd = socket::socket(
                socket::AddressFamily::Unix,
                SockType::SeqPacket,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            socket::bind(fd.as_raw_fd(), &UnixAddr::new(tmp)?)?;
            socket::listen(&fd, socket::Backlog::new(4)?)?;
            Ok(fd)
        })
        .map_err(err)?;
        Ok(Listener { fd: register(fd, Interest::READABLE).map_err(err)?, claim })
    }

    pub async fn accept(&self) -> Result<Channel, Error> {
        loop {
            let mut guard = self.fd.readable().await.map_err(Error::Io)?;
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            match guard.try_io(|fd| socket::accept4(fd.as_raw_fd(), flags).map_err(std::io::Error::from)) {
                // SAFETY: accept4 returned a new descriptor that we now own.
                Ok(Ok(raw)) => return Channel::new(unsafe { OwnedFd::from_raw_fd(raw) }),
                Ok(Err(e)) => return Err(Error::Io(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// A socket path this agent bound, remembered by inode, so that dropping it removes
/// the path only if no successor has put its own socket there since.
#[derive(Debug)]
pub struct PathClaim {
    path: PathBuf,
    ino: u64,
}

impl PathClaim {
    pub fn new(path: &Path) -> std::io::Result<PathClaim> {
        Ok(PathClaim { path: path.to_path_buf(), ino: std::fs::symlink_metadata(path)?.ino() })
    }

    /// Whether the path still holds the socket this agent bound.
    pub fn is_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path).map(|m| m.ino() == self.ino).unwrap_or(false)
    }

}

impl Drop for PathClaim {
    /// Removes the path if it is still ours.
    fn drop(&mut self) {
        if self.is_ours() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds a Unix socket at a temporary name beside `path` with `bind`, then renames
/// it over `path` (atomic: no moment without a socket at `path`).
pub fn bind_by_rename<T>(path: &Path, bind: impl FnOnce(&Path) -> std::io::Result<T>) -> std::io::Result<(T, PathClaim)> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let bound = bind(&tmp)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((bound, PathClaim::new(path)?))
}

/// Checks that a pod message names one netns, one HBONE listener, and one or two
/// (IPv4, IPv6) outbound and plaintext listeners, and nothing else.
pub fn check_pod_roles(roles: &[FdRole], fds: usize) -> Result<(), String> {
    if roles.len() != fds {
        return Err(format!("the message names {} descriptors but carries {fds}", roles.len()));
    }
    let count = |r| roles.iter().filter(|x| **x == r).count();
    let bad = [
        (FdRole::Netns, 1..=1),
        (FdRole::Hbone, 1..=1),
        (FdRole::Outbound, 1..=2),
        (FdRole::Plaintext, 1..=2),
        (FdRole::Admin, 0..=0),
        (FdRole::Metrics, 0..=0),
    ]
    .into_iter()
    .find(|(r, ok)| !ok.contains(&count(*r)));
    match bad {
        Some((r, ok)) => Err(format!("{} {r:?} descriptors (expected {ok:?})", count(r))),
        None => Ok(()),
    }
}

/// A received descriptor as a listening TCP socket: it must be listening, and on
/// the role's port for a pod listener.
pub fn listener_from(fd: OwnedFd, role: FdRole) -> Result<std::net::TcpListener, String> {
    let listening = socket::getsockopt(&fd, socket::sockopt::AcceptConn).map_err(|e| format!("{role:?}: {e}"))?;
    if !listening {
        return Err(format!("{role:?}: the descriptor is not a listening socket"));
    }
    let l = std::net::TcpListener::from(fd);
    let addr = l.local_addr().map_err(|e| format!("{role:?}: {e}"))?;
    if let Some(port) = role.port() {
        if addr.port() != port {
            return Err(format!("{role:?}: listener is on {addr}, expected port {port}"));
        }
    }
    l.set_nonblocking(true).map_err(|e| format!("{role:?}: {e}"))?;
    Ok(l)
}

/// Whether a handed-over listener on `have` serves a successor configured for
/// `want` (port 0: any port on that address).
pub fn address_fits(want: SocketAddr, have: SocketAddr) -> bool {
    want.ip() == have.ip() && (want.port() == 0 || want.port() == have.port())
}

/// One pod as the predecessor offered it.
pub struct OfferedPod {
    pub event: PodEvent,
    pub sockets: PodSockets,
}

/// Everything the predecessor handed over.
#[derive(Default)]
pub struct Offer {
    pub pods: Vec<OfferedPod>,
    pub admin: Option<std::net::TcpListener>,
    pub metrics: Option<std::net::TcpListener>,
}

/// Successor side: says hello and receives every pod's sockets and the admin and
/// metrics listeners.
pub async fn receive(ch: &Channel, node: &str, bpffs: &Path) -> Result<Offer, Error> {
    let hello = Msg::Hello { version: VERSION, node: node.to_string(), bpffs: bpffs.to_path_buf(), pid: std::process::id() };
    ch.send(&hello, &[]).await?;
    let mut offer = Offer::default();
    // The predecessor may wait for a CNI request in progress before it answers.
    let limit = Duration::from_secs(60);
    loop {
        let (msg, fds) = ch.recv_within(limit, "the running agent's pods").await?;
        match msg {
            Msg::Pod { event, fds: roles } => offer.pods.push(offered_pod(*event, &roles, fds)?),
            Msg::Listeners { fds: roles } => {
                if roles.len() != fds.len() {
                    return Err(Error::Protocol(format!("listeners: {} named, {} attached", roles.len(), fds.len())));
                }
                for (role, fd) in roles.into_iter().zip(fds) {
                    let l = listener_from(fd, role).map_err(Error::Protocol)?;
                    match role {
                        FdRole::Admin => offer.admin = Some(l),
                        FdRole::Metrics => offer.metrics = Some(l),
                        other => return Err(Error::Protocol(format!("listeners: unexpected {other:?}"))),
                    }
                }
            }
            Msg::Done { pods } if pods == offer.pods.len() => return Ok(offer),
            Msg::Done { pods } => {
                return Err(Error::Protocol(format!("done says {pods} pods, {} were sent", offer.pods.len())))
            }
            other => return Err(Error::Protocol(format!("unexpected {} while receiving pods", other.name()))),
        }
    }
}

fn offered_pod(event: PodEvent, roles: &[FdRole], fds: Vec<OwnedFd>) -> Result<OfferedPod, Error> {
    let pod = format!("{}/{}", event.namespace, event.name);
    let bad = |what: String| Error::Pod { pod: pod.clone(), what };
    check_pod_roles(roles, fds.len()).map_err(bad)?;
    let (mut outbound, mut hbone, mut plaintext) = (Vec::new(), None, Vec::new());
    for (role, fd) in roles.iter().copied().zip(fds) {
        match role {
            FdRole::Netns => same_netns(&fd, &event.netns).map_err(bad)?,
            FdRole::Outbound => outbound.push(listener_from(fd, role).map_err(bad)?),
            FdRole::Hbone => hbone = Some(listener_from(fd, role).map_err(bad)?),
            FdRole::Plaintext => plaintext.push(listener_from(fd, role).map_err(bad)?),
            FdRole::Admin | FdRole::Metrics => unreachable!("refused by check_pod_roles"),
        }
    }
    let hbone = hbone.ok_or_else(|| bad("no HBONE listener".into()))?;
    let sockets = PodSockets { outbound, inbound: hbone, plaintext };
    let cookies: Vec<u64> = sockets.all().map(|l| crate::netns::socket_netns_cookie(l).unwrap_or(0)).collect();
    if cookies.windows(2).any(|w| w[0] != w[1]) {
        return Err(bad(format!("listeners live in different network namespaces (cookies {cookies:?})")));
    }
    Ok(OfferedPod { event, sockets })
}

/// The namespace descriptor the predecessor sent is the one at the pod's path (the
/// pod was not replaced in between).
fn same_netns(fd: &OwnedFd, path: &Path) -> Result<(), String> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| format!("netns descriptor: {e}"))?;
    let at = std::fs::metadata(path).map_err(|e| format!("network namespace {}: {e}", path.display()))?;
    if at.dev() != st.st_dev as u64 || at.ino() != st.st_ino as u64 {
        return Err(format!("{} is no longer the namespace the running agent serves", path.display()));
    }
    Ok(())
}

/// Predecessor side: the descriptors of one pod, in message order.
pub fn pod_message(event: &PodEvent, sockets: &PodSockets) -> Result<(Msg, Vec<OwnedFd>), Error> {
    let pod = format!("{}/{}", event.namespace, event.name);
    let io = |what: &str, e: std::io::Error| Error::Pod { pod: pod.clone(), what: format!("{what}: {e}") };
    let netns = std::fs::File::open(&event.netns).map_err(|e| io("opening its network namespace", e))?;
    let mut roles = vec![FdRole::Netns];
    let mut fds: Vec<OwnedFd> = vec![netns.into()];
    let mut add = |role, l: &std::net::TcpListener| -> Result<(), Error> {
        roles.push(role);
        fds.push(l.as_fd().try_clone_to_owned().map_err(|e| io("duplicating a listener", e))?);
        Ok(())
    };
    for l in &sockets.outbound {
        add(FdRole::Outbound, l)?;
    }
    add(FdRole::Hbone, &sockets.inbound)?;
    for l in &sockets.plaintext {
        add(FdRole::Plaintext, l)?;
    }
    Ok((Msg::Pod { event: Box::new(event.clone()), fds: roles }, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(port: u16) -> std::net::TcpListener {
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap()
    }

    #[test]
    fn pod_messages_name_each_listener_once() {
        use FdRole::*;
        assert_eq!(check_pod_roles(&[Netns, Outbound, Hbone, Plaintext], 4), Ok(()));
        assert_eq!(check_pod_roles(&[Netns, Outbound, Outbound, Hbone, Plaintext, Plaintext], 6), Ok(()));
        assert!(check_pod_roles(&[Netns, Outbound, Hbone, Plaintext], 3).unwrap_err().contains("carries 3"));
        assert!(check_pod_roles(&[Outbound, Hbone, Plaintext], 3).unwrap_err().contains("Netns"));
        assert!(check_pod_roles(&[Netns, Outbound, Hbone, Hbone, Plaintext], 5).unwrap_err().contains("Hbone"));
        assert!(check_pod_roles(&[Netns, Outbound, Outbound, Outbound, Hbone, Plaintext], 6).unwrap_err().contains("Outbound"));
        assert!(check_pod_roles(&[Netns, Outbound, Hbone, Plaintext, Admin], 5).unwrap_err().contains("Admin"));
    }

    #[test]
    fn handed_over_admin_address_fits_when_the_port_matches_or_is_any() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(address_fits(a("127.0.0.1:15000"), a("127.0.0.1:15000")));
        assert!(address_fits(a("127.0.0.1:0"), a("127.0.0.1:41234")));
        assert!(!address_fits(a("127.0.0.1:15000"), a("127.0.0.1:15001")));
        assert!(!address_fits(a("0.0.0.0:15020"), a("127.0.0.1:15020")));
    }

    #[test]
    fn received_listeners_are_checked() {
        let not_listening = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = listener_from(OwnedFd::from(not_listening), FdRole::Admin).unwrap_err();
        assert!(e.contains("not a listening socket"), "{e}");
        let l = listen(0);
        let addr = l.local_addr().unwrap();
        let e = listener_from(l.as_fd().try_clone_to_owned().unwrap(), FdRole::Hbone).unwrap_err();
        assert!(e.contains("expected port 15008"), "{e}");
        let same = listener_from(OwnedFd::from(l), FdRole::Admin).unwrap();
        assert_eq!(same.local_addr().unwrap(), addr);
    }

    /// Real descriptors through a real socket pair: the listener that arrives is the
    /// one that was sent (a connection to it is accepted from the received copy).
    #[tokio::test]
    async fn listeners_cross_the_socket_and_keep_their_queue() {
        let (a, b) = Channel::pair().unwrap();
        let l = listen(0);
        let addr = l.local_addr().unwrap();
        // Queued before the hand-over, accepted after it.
        let mut queued = std::net::TcpStream::connect(addr).unwrap();
        let msg = Msg::Listeners { fds: vec![FdRole::Admin] };
        a.send(&msg, &[l.as_fd()]).await.unwrap();
        drop(l);
        let (got, fds) = b.recv().await.unwrap();
        assert!(matches!(got, Msg::Listeners { ref fds } if fds == &[FdRole::Admin]));
        let l = listener_from(fds.into_iter().next().unwrap(), FdRole::Admin).unwrap();
        l.set_nonblocking(false).unwrap();
        let (mut s, _) = l.accept().unwrap();
        use std::io::{Read, Write};
        queued.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        drop(a);
        assert!(matches!(b.recv().await, Err(Error::Closed(_))));
    }

    #[test]
    fn a_missing_or_stale_socket_means_no_predecessor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handover.sock");
        assert!(connect(&path).unwrap().is_none());
        // A socket file nobody listens on (an agent that was killed).
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(connect(&path).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_bound_path_is_claimed_until_a_successor_renames_its_own_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handover.sock");
        let first = Listener::bind(&path).unwrap();
        assert!(first.claim.is_ours());
        let ch = connect(&path).unwrap().expect("listening");
        let _accepted = first.accept().await.unwrap();
        drop(ch);
        let second = Listener::bind(&path).unwrap();
        assert!(!first.claim.is_ours() && second.claim.is_ours());
        drop(first);
        assert!(path.exists(), "the first agent removed its successor's socket");
        drop(second);
        assert!(!path.exists());
    }
}
