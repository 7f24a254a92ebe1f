//! Checks the machine before anything is loaded, so that a missing piece is reported
//! in one line that says how to fix it, and nothing is left half-done.
use std::path::Path;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Root, and a bpffs under `bpffs` (or its nearest existing parent).
pub fn preflight(bpffs: &Path) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("mesh-agent must run as root: it loads eBPF programs, attaches them to pod \
                    cgroups and enters pod network namespaces (try: sudo mesh-agent ...)"
            .into());
    }
    let mut probe = bpffs;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    let fs = nix::sys::statfs::statfs(probe)
        .map_err(|e| format!("cannot inspect {}: {e}", probe.display()))?;
    if fs.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        return Err(format!(
            "{} is not on a bpffs, so the kernel maps cannot be pinned there: mount one with \
             `mount -t bpf bpf /sys/fs/bpf`, or pass --bpffs under a bpffs mount",
            bpffs.display()
        ));
    }
    Ok(())
}
