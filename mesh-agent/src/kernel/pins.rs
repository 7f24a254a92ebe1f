//! Pinned links: each enrolled pod's attachments live under
//! `<bpffs>/links/<netns cookie>/<program>`, so the kernel keeps capturing, steering
//! and dropping (failing closed) while the agent is stopped or restarting. A new
//! agent adopts them: enrolling the same namespace again attaches its own programs
//! first, then releases the old links. `mesh-agent uninstall` releases them all.
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};

/// The folder of one pod's pinned links.
pub fn pod_dir(bpffs: &Path, netns_cookie: u64) -> PathBuf {
    bpffs.join("links").join(netns_cookie.to_string())
}

/// Pins a freshly attached link as `<dir>/<name>_new` (bpffs refuses dots in
/// names); [`commit`] makes it current.
pub fn pin_new<L>(dir: &Path, name: &str, link: L) -> Result<(), String>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let fd = FdLink::try_from(link).map_err(|e| format!("{name}: not a bpf_link: {e}"))?;
    let path = dir.join(format!("{name}_new"));
    let _ = std::fs::remove_file(&path);
    fd.pin(&path).map(drop).map_err(|e| format!("pinning {}: {}", path.display(), crate::error_chain(&e)))
}

/// Releases the current `<dir>/<name>` (if an earlier agent left one) and puts the
/// new link in its place: the old and new programs overlap, never leave a gap.
pub fn commit(dir: &Path, name: &str) -> Result<(), String> {
    let current = dir.join(name);
    release(&current);
    let new = dir.join(format!("{name}_new"));
    std::fs::rename(&new, &current).map_err(|e| format!("renaming {}: {e}", new.display()))
}

/// Detaches the link pinned at `path` (if any) and removes the pin.
pub fn release(path: &Path) {
    if let Ok(link) = PinnedLink::from_pin(path) {
        // Unpinning hands back the last reference; dropping it detaches the link.
        let _ = link.unpin();
    }
    let _ = std::fs::remove_file(path);
}

/// Releases every link pinned for one pod and removes its folder.
pub fn release_pod(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            release(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The netns cookies of the pods with links pinned under `bpffs`.
pub fn pod_cookies(bpffs: &Path) -> std::collections::HashSet<u64> {
    let dirs = std::fs::read_dir(bpffs.join("links")).into_iter().flatten().flatten();
    dirs.filter_map(|d| d.file_name().to_str()?.parse().ok()).collect()
}

/// Releases every pod's links under `bpffs` (the uninstall command).
pub fn release_all(bpffs: &Path) -> usize {
    let mut n = 0;
    if let Ok(pods) = std::fs::read_dir(bpffs.join("links")) {
        for p in pods.flatten() {
            release_pod(&p.path());
            n += 1;
        }
    }
    n
}
