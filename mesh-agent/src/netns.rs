//! Running a closure inside another network namespace.
//!
//! A socket belongs to the network namespace it was created in, for its whole life.
//! The agent stays in the node's namespace and creates each pod's sockets by switching
//! one short-lived thread into the pod's namespace (`setns`), never its own threads.
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

/// Runs `f` on a fresh thread that has joined the network namespace at `path`
/// (for example `/run/netns/pod-a` or `/proc/<pid>/ns/net`).
pub fn run_in<T, F>(path: &Path, f: F) -> std::io::Result<T>
where
    T: Send,
    F: FnOnce() -> std::io::Result<T> + Send,
{
    let ns = File::open(path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("opening network namespace {}: {e}", path.display()))
    })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                std::io::Error::other(format!("entering network namespace {}: {e}", path.display()))
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("network namespace thread panicked")))
    })
}

/// The kernel's cookie for the network namespace a socket lives in (`SO_NETNS_COOKIE`).
pub fn socket_netns_cookie(fd: impl AsFd) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the fd is valid for the borrow; cookie and len point to live locals of
    // the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}
