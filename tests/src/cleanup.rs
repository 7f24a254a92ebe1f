//! Removing what a bed left: its processes (all live in cgroups under the bed's
//! cgroup folder), bpffs folder, network namespaces and cgroups. Used by
//! `TestBed::drop`, by the Ctrl-C handler, and at start for leftovers of killed runs.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified/mesh-test";
pub const BPFFS_ROOT: &str = "/sys/fs/bpf/mesh-test";
pub const WORK_ROOT: &str = "/tmp/mesh-test";

/// Beds alive in this process, cleaned by the signal handler.
static ACTIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Set once a signal arrived: the signal thread owns the cleanup from then on.
pub static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn register(name: &str) {
    ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).push(name.to_string());
}

pub(crate) fn unregister(name: &str) {
    ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|n| n != name);
}

/// Makes SIGINT and SIGTERM clean every live bed, then exit with 130. Call it first
/// thing in `main`, before other threads start: it blocks both signals in this
/// thread (children unblock them before exec) and waits for them on a helper thread.
pub fn install_signal_cleanup() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
            eprintln!("\nmesh-tests: got {sig:?}, cleaning up test beds");
            let names = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for name in names {
                cleanup_bed(&name);
            }
            std::process::exit(130);
        }
    });
}

/// The pid that created bed `name` (`mt<pid>b<n>`).
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("mt")?;
    let (pid, n) = rest.split_once('b')?;
    let n = n.split('-').next()?;
    if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Cleans beds whose creating process is gone (a run killed with SIGKILL, say).
pub fn cleanup_stale() {
    let me = std::process::id();
    let mut names: Vec<String> = Vec::new();
    for root in [CGROUP_ROOT, BPFFS_ROOT, WORK_ROOT] {
        if let Ok(rd) = std::fs::read_dir(root) {
            names.extend(rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()));
        }
    }
    for ns in netns_list() {
        if let Some(bed) = ns.split('-').next() {
            names.push(bed.to_string());
        }
    }
    names.sort();
    names.dedup();
    for name in names {
        match owner_pid(&name) {
            Some(pid) if pid != me && !Path::new(&format!("/proc/{pid}")).exists() => {
                eprintln!("mesh-tests: removing leftovers of a killed run: {name}");
                cleanup_bed(&name);
                let _ = std::fs::remove_dir_all(Path::new(WORK_ROOT).join(&name));
            }
            _ => {}
        }
    }
}

fn netns_list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn procs_of(cg: &Path) -> Vec<i32> {
    std::fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Cgroup folders below `root`, deepest first, `root` last.
fn cgroups_below(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(cgroups_below(&e.path()));
            }
        }
    }
    out.push(root.to_path_buf());
    out
}

fn wait_empty(cg: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if procs_of(cg).is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes everything bed `name` created. Never fails; reports what it could not remove.
pub fn cleanup_bed(name: &str) {
    let cg_root = Path::new(CGROUP_ROOT).join(name);
    // Agents and the control plane first, politely, so they detach their programs.
    let sys = cg_root.join("sys");
    for pid in procs_of(&sys) {
        // SAFETY: kill(2) on a pid read from our own cgroup.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    wait_empty(&sys, Duration::from_secs(5));
    let cgroups = cgroups_below(&cg_root);
    for cg in &cgroups {
        if std::fs::write(cg.join("cgroup.kill"), "1").is_err() {
            for pid in procs_of(cg) {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    for cg in &cgroups {
        wait_empty(cg, Duration::from_secs(3));
    }
    let bpf = Path::new(BPFFS_ROOT).join(name);
    if bpf.exists() {
        if let Err(e) = std::fs::remove_dir_all(&bpf) {
            eprintln!("mesh-tests: could not remove {}: {e}", bpf.display());
        }
    }
    for ns in netns_list() {
        if ns.starts_with(&format!("{name}-")) {
            let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
    for cg in &cgroups {
        if !cg.exists() {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while let Err(e) = std::fs::remove_dir(cg) {
            if Instant::now() > deadline {
                eprintln!("mesh-tests: could not remove cgroup {}: {e}", cg.display());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = std::fs::remove_dir(CGROUP_ROOT);
    let _ = std::fs::remove_dir(BPFFS_ROOT);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bed_names_carry_their_owner() {
        assert_eq!(owner_pid("mt1234b0"), Some(1234));
        assert_eq!(owner_pid("mt1234b12-node1"), Some(1234));
        assert_eq!(owner_pid("mtx"), None);
        assert_eq!(owner_pid("other"), None);
        assert_eq!(owner_pid("mt12b"), None);
    }
}
