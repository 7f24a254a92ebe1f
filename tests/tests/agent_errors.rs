//! The agent refuses to start with a `--bpffs` path that is not on a bpf filesystem:
//! it exits non-zero with a short, clear message instead of hanging or panicking.

use std::time::Duration;

use mesh_tests::proc::{command, Proc};
use mesh_tests::{agent_binary, require_root};

#[test]
fn agent_with_a_bogus_bpffs_exits_with_one_clear_line() -> anyhow::Result<()> {
    if !require_root("agent_errors") {
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("mesh-agent-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bogus = dir.join("not-bpffs");
    let sock = dir.join("cni.sock");
    let admin = format!("127.0.0.1:{}", mesh_tests::bed::free_port()?);
    let bin = agent_binary()?;
    let args = [
        bin.to_str().unwrap(),
        "agent",
        "--node",
        "node1",
        "--xds-address",
        "http://127.0.0.1:9",
        "--ca-address",
        "http://127.0.0.1:9",
        "--cni-socket",
        sock.to_str().unwrap(),
        "--bpffs",
        bogus.to_str().unwrap(),
        "--admin-address",
        &admin,
    ];
    let mut cmd = command(&args, None, None)?;
    cmd.env("NO_COLOR", "1").env("RUST_LOG", "info");
    let mut p = Proc::spawn("agent-bogus-bpffs", cmd, &dir)?;
    let status = p.wait_timeout(Duration::from_secs(15));
    let out = p.output();
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
    let status = status.unwrap_or_else(|| panic!("agent kept running with a bogus --bpffs:\n{out}"));
    assert!(!status.success(), "agent exited 0 with a bogus --bpffs:\n{out}");
    assert!(!out.contains("panicked"), "agent panicked instead of reporting:\n{out}");
    let mentions: Vec<&str> = out.lines().filter(|l| l.to_lowercase().contains("bpf")).collect();
    assert!(!mentions.is_empty(), "no line explains the bpffs problem:\n{out}");
    assert!(out.contains(bogus.to_str().unwrap()) || mentions.iter().any(|l| l.contains("mount")), "message names neither the path nor mounting:\n{out}");
    Ok(())
}
