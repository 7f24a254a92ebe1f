//! The node test bed: pods and nodes as network namespaces on one machine, driven
//! against the real `mesh-agent` binaries; used by the integration tests, the demo
//! and the benchmark.
//!
//! # Layout
//! - [`bed`] holds `TestBed` (nodes, pods, control plane, agents, admin and map queries)
//! - [`proc`]: children placed into a pod's cgroup and netns before exec
//! - [`cleanup`]: removal of beds, leftovers of killed runs, and the Ctrl-C handler
//! - [`cni`]: the agent's pod-enrollment socket, as the CNI hook speaks it
//! - [`scenario`]: the standard scene (client, echo-1, echo-2, outsider) on the default config
//! - [`apiserver`]: a Kubernetes API server stand-in (list/watch, bookmarks, 410 Gone)

pub mod apiserver;
pub mod bed;
pub mod cleanup;
pub mod cni;
pub mod crypto;
pub mod proc;
pub mod scenario;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

pub use bed::{log_field, wait_until, GracefulRestart, Pod, TestBed};
pub use cleanup::install_signal_cleanup;

/// The workspace root (the folder holding `Cargo.toml` with `[workspace]`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The YAML folder the demo and the tests start from.
pub fn default_config() -> PathBuf {
    workspace_root().join("deploy/examples/default")
}

/// Finds a binary built by cargo: beside the running executable (tests live in
/// `target/<profile>/deps`), else in `target/release`, else `target/debug`.
/// `MESH_BIN_DIR` overrides the search.
pub fn binary(name: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("MESH_BIN_DIR") {
        dirs.push(d.into());
    } else {
        if let Ok(exe) = std::env::current_exe() {
            if let Some(d) = exe.parent() {
                dirs.push(d.to_path_buf());
                if let Some(p) = d.parent() {
                    dirs.push(p.to_path_buf());
                }
            }
        }
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
        dirs.push(target.join("release"));
        dirs.push(target.join("debug"));
    }
    for d in &dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("binary `{name}` not found in {dirs:?}; build it first: cargo build --release --workspace")
}

pub fn agent_binary() -> Result<PathBuf> {
    binary("mesh-agent")
}

pub fn meshctl_binary() -> Result<PathBuf> {
    binary("meshctl")
}

/// Whether a root-only test may run. Not root: panics under CI (`CI=true`), so CI
/// fails instead of skipping; elsewhere prints a notice and returns false.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false) {
        panic!("{test} needs root (network namespaces, cgroups, eBPF) and CI=true: failing instead of skipping");
    }
    eprintln!("NOTICE: {test} skipped: needs root (network namespaces, cgroups, eBPF); run with sudo");
    false
}
