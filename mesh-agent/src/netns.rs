//! Running a closure inside another network namespace.
//!
//! A socket belongs to the network namespace it was created in, for its whole life.
//! The agent stays in the node's namespace and creates each pod's sockets on a thread
//! that has switched into the pod's namespace (`setns`), never on its own runtime
//! threads: [`Netns`] keeps one such thread per pod; [`run_in`] is the one-off form.
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

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

/// Finds the network namespaces whose cookies are in `wanted`, among the named ones
/// (`/run/netns/*`) and those of running processes (`/proc/<pid>/ns/net`), looking
/// into each namespace once.
pub fn find_by_cookie(wanted: &std::collections::HashSet<u64>) -> HashMap<u64, PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let named = std::fs::read_dir("/run/netns").into_iter().flatten().flatten().map(|e| e.path());
    let procs = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .map(|e| e.path().join("ns/net"));
    let mut seen = std::collections::HashSet::new();
    let mut found = HashMap::new();
    for path in named.chain(procs) {
        if found.len() == wanted.len() {
            break;
        }
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let cookie = run_in(&path, || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
            socket_netns_cookie(&s)
        });
        if let Some(c) = cookie.ok().filter(|c| wanted.contains(c)) {
            found.insert(c, path);
        }
    }
    found
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread that lives in one network namespace and runs short jobs there (creating
/// sockets), so that a connection does not pay for a thread and a `setns()` each.
/// The thread ends when the last handle is dropped.
pub struct Netns {
    path: PathBuf,
    jobs: std::sync::mpsc::Sender<Job>,
}

/// Namespace threads by path, shared by everyone who needs sockets there; an entry
/// lives as long as someone (the pod's proxy) holds its `Arc`.
static SHARED: LazyLock<Mutex<HashMap<PathBuf, Weak<Netns>>>> = LazyLock::new(Mutex::default);

impl Netns {
    /// Starts a thread inside the namespace at `path`.
    pub fn enter(path: &Path) -> std::io::Result<Netns> {
        let ns = File::open(path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("opening network namespace {}: {e}", path.display()))
        })?;
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let shown = path.display().to_string();
        std::thread::Builder::new().name("netns".into()).spawn(move || {
            let entered = setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| std::io::Error::other(format!("entering network namespace {shown}: {e}")));
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            if ok {
                while let Ok(job) = rx.recv() {
                    job();
                }
            }
        })?;
        ready_rx.recv().map_err(|_| std::io::Error::other("network namespace thread died"))??;
        Ok(Netns { path: path.to_path_buf(), jobs })
    }

    /// The running thread for `path`, started if nobody holds one.
    pub fn shared(path: &Path) -> std::io::Result<Arc<Netns>> {
        // Called for every connection's socket: a hash lookup; dead entries are
        // swept only when a new thread is started.
        let mut all = SHARED.lock().unwrap();
        if let Some(ns) = all.get(path).and_then(Weak::upgrade) {
            return Ok(ns);
        }
        all.retain(|_, w| w.strong_count() > 0);
        let ns = Arc::new(Netns::enter(path)?);
        all.insert(path.to_path_buf(), Arc::downgrade(&ns));
        Ok(ns)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the namespace's thread.
    pub async fn run<T, F>(&self, f: F) -> std::io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> std::io::Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || std::io::Error::other(format!("network namespace thread for {} is gone", self.path.display()));
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}
