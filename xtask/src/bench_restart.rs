//! `cargo xtask bench-restart`: how many requests fail while node1's agent restarts
//! under load (the goal is zero). Two connect-each clients (client -> server-1 on the
//! same node, client -> server-2 across nodes) run while the agent is left alone
//! (baseline), replaced gracefully (hand-over, then drain), and stopped and started
//! (the CNI hook replays the pods). Writes its section of docs/benchmarks.md.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mesh_tests::proc::Proc;
use mesh_tests::{binary, default_config, Pod, TestBed};
use serde_json::Value;

/// This command's section of docs/benchmarks.md.
const SECTION: &str = "## Agent restart under load";
const RR_PORT: u16 = 7000;

#[derive(Clone, Copy, PartialEq)]
enum Restart {
    None,
    Graceful,
    Hard,
}

impl Restart {
    fn name(self) -> &'static str {
        match self {
            Restart::None => "none (baseline)",
            Restart::Graceful => "graceful (hand-over + drain)",
            Restart::Hard => "hard (stop, start, CNI replay)",
        }
    }
}

/// One client's `mesh-rr` summary.
struct Load {
    count: u64,
    failed: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

struct Row {
    restart: Restart,
    path: &'static str,
    load: Load,
    /// Graceful: new agent serving; hard: agent started and pods replayed.
    serving_after: Option<Duration>,
    /// Graceful: old agent drained and gone.
    old_gone_after: Option<Duration>,
}

fn start_load(client: &Pod, ip: &str, requests: u32, seconds: u32) -> Result<Proc> {
    let bin = binary("mesh-rr")?;
    let addr = format!("{ip}:{RR_PORT}");
    let (n, s) = (requests.to_string(), seconds.to_string());
    let args = [bin.to_str().context("path")?, "client", "--addr", &addr, "--connect-each", "--keep-going", "--count", &n, "--seconds", &s];
    client.spawn(&args)
}

fn finish(mut p: Proc, seconds: u32) -> Result<Load> {
    p.wait_timeout(Duration::from_secs(seconds as u64 + 30)).context("mesh-rr did not finish")?;
    let out = p.output();
    let line = out.lines().find(|l| l.starts_with('{')).with_context(|| format!("mesh-rr printed no summary: {out}"))?;
    let v: Value = serde_json::from_str(line)?;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    Ok(Load { count: n("count"), failed: n("failed"), p50_us: n("p50_us"), p99_us: n("p99_us"), max_us: n("max_us") })
}

pub fn run(requests: u32, seconds: u32) -> Result<()> {
    println!("bench-restart: building 2 nodes (client + server-1 on node1, server-2 on node2)");
    let mut bed = TestBed::new("bench-restart")?;
    bed.add_node("node1")?;
    bed.add_node("node2")?;
    let client = bed.add_pod("node1", "default", "client", "sleep", &[("app", "client")])?;
    let local = bed.add_pod("node1", "default", "server-1", "echo", &[("app", "bench")])?;
    let remote = bed.add_pod("node2", "default", "server-2", "echo", &[("app", "bench")])?;
    bed.drain_timeout = Duration::from_secs(10);
    bed.start_control_plane(&default_config())?;
    bed.start_agent("node1")?;
    bed.start_agent("node2")?;
    for p in [&client, &local, &remote] {
        bed.enroll(p)?;
    }
    for ip in [&client.ip, &local.ip, &remote.ip] {
        bed.wait_for_workload("node1", ip)?;
        bed.wait_for_workload("node2", ip)?;
    }
    let rr_bin = binary("mesh-rr")?;
    let mut servers = Vec::new();
    for s in [&local, &remote] {
        servers.push(s.spawn(&[rr_bin.to_str().context("path")?, "server", "--port", &RR_PORT.to_string()])?);
        s.wait_listening(RR_PORT, Duration::from_secs(10))?;
    }

    let mut rows = Vec::new();
    for restart in [Restart::None, Restart::Graceful, Restart::Hard] {
        println!("bench-restart: {} under load", restart.name());
        let same = start_load(&client, &local.ip, requests, seconds)?;
        let cross = start_load(&client, &remote.ip, requests, seconds)?;
        std::thread::sleep(Duration::from_secs(1));
        let started = Instant::now();
        let (serving_after, old_gone_after) = match restart {
            Restart::None => (None, None),
            Restart::Graceful => {
                let r = bed.restart_agent_graceful("node1")?;
                (Some(r.took_over), Some(r.old_exited))
            }
            Restart::Hard => {
                bed.stop_agent("node1");
                bed.start_agent("node1")?;
                bed.enroll(&client)?;
                bed.enroll(&local)?;
                (Some(started.elapsed()), None)
            }
        };
        for (path, p) in [("same node", same), ("across nodes", cross)] {
            let load = finish(p, seconds)?;
            rows.push(Row { restart, path, load, serving_after, old_gone_after });
        }
    }
    drop(servers);
    bed.finish();

    let ms = |d: Option<Duration>| d.map(|d| format!("{} ms", d.as_millis())).unwrap_or_else(|| "-".into());
    let mut table = String::new();
    table.push_str("| restart of node1's agent | path | requests ok | failed | p50 (µs) | p99 (µs) | max (µs) | new agent serving after | old agent gone after |\n");
    table.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        let l = &r.load;
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.restart.name(), r.path, l.count, l.failed, l.p50_us, l.p99_us, l.max_us, ms(r.serving_after), ms(r.old_gone_after)
        );
    }
    let mut doc = String::new();
    let _ = writeln!(doc, "- date: {}", mesh_tests::proc::host(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default().trim());
    let _ = writeln!(doc, "- machine: {}", crate::doc::machine());
    let _ = writeln!(doc, "- command: `cargo xtask bench-restart --requests {requests} --seconds {seconds}` (root)");
    doc.push_str(&format!(
        "- method: two `mesh-rr --connect-each --keep-going` clients in pod `client` on node1 (each request:\n  \
         connect, 64 B each way, close; a connect bounded by 2 s), one to server-1 on node1, one to server-2\n  \
         on node2, each for {requests} requests or {seconds} s. One second in, node1's agent is left alone, replaced\n  \
         gracefully (`TestBed::restart_agent_graceful`: a new agent takes the listeners over the hand-over\n  \
         socket, the old one drains, `--drain-timeout 10s`), or stopped (SIGTERM) and started, the CNI hook then\n  \
         replaying the two pods. Failed: a connect or round trip that failed; a refused connect fails at\n  \
         once and the client tries again, so the hard rows count the gap times the retry rate. Max: the\n  \
         slowest request that succeeded, over the whole run (the baseline's shows this machine's noise).\n\n"
    ));
    doc.push_str(&table);
    println!("\n{table}");
    let path = crate::doc::replace_section(SECTION, &doc)?;
    println!("written to {}", path.display());
    Ok(())
}
