//! `cargo xtask bench`: the same pods measured twice, first before enrollment (direct
//! pod-to-pod TCP) and then enrolled (captured by the agent: HBONE between agents),
//! same node and across nodes. Writes the table to docs/benchmarks.md.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mesh_tests::proc::Proc;
use mesh_tests::{binary, default_config, Pod, TestBed};
use serde_json::Value;

/// This command's section of docs/benchmarks.md.
const SECTION: &str = "## Pod-to-pod traffic: direct vs meshed";
const IPERF_PORT: &str = "5201";
const ECHO_PORT: u16 = 8080;
const RR_PORT: &str = "7000";

struct Sample {
    gbps: f64,
    p50_us: f64,
    p99_us: f64,
    rr_count: u64,
    /// A new connection per round trip: connect, 64 B each way, close.
    conn_p50_us: f64,
    conn_p99_us: f64,
    /// h2load, HTTP/1.1 to mesh-echo: requests per second and mean request time.
    http_rps: f64,
    http_mean_us: f64,
    /// Agent CPU seconds (all agents) spent during the iperf3 and RR runs.
    agent_cpu_s: f64,
}

pub(crate) fn iperf(client: &Pod, ip: &str, seconds: u32) -> Result<f64> {
    let t = seconds.to_string();
    let out = client.run_timeout(&["iperf3", "-c", ip, "-p", IPERF_PORT, "-t", &t, "-J"], Duration::from_secs(seconds as u64 + 20))?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3 to {ip}: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3: no end.sum_received")?;
    Ok(bps / 1e9)
}

fn rr(client: &Pod, ip: &str, round_trips: u32, connect_each: bool) -> Result<(f64, f64, u64)> {
    rr_sized(client, &format!("{ip}:{RR_PORT}"), 64, round_trips, connect_each)
}

/// `mesh-rr client` to `addr` with `size`-byte messages, `round_trips` or 20 s:
/// (p50 µs, p99 µs, round trips done).
pub(crate) fn rr_sized(client: &Pod, addr: &str, size: usize, round_trips: u32, connect_each: bool) -> Result<(f64, f64, u64)> {
    let bin = binary("mesh-rr")?;
    let n = round_trips.to_string();
    let size = size.to_string();
    let mut args = vec![bin.to_str().context("path")?, "client", "--addr", addr, "--size", &size, "--count", &n, "--seconds", "20"];
    if connect_each {
        args.push("--connect-each");
    }
    let out = client.run_timeout(&args, Duration::from_secs(30))?;
    if !out.status.success() {
        bail!("mesh-rr to {addr}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok((v["p50_us"].as_f64().unwrap_or(0.0), v["p99_us"].as_f64().unwrap_or(0.0), v["count"].as_u64().unwrap_or(0)))
}

/// `h2load --h1` against mesh-echo in the server pod: 10 keep-alive connections,
/// `requests` requests; (requests/s, mean request time in µs).
fn h2load(client: &Pod, ip: &str, requests: u32) -> Result<(f64, f64)> {
    let r = h2load_url(client, &format!("http://{ip}:{ECHO_PORT}/"), requests, None)?;
    Ok((r.rps, r.mean_us))
}

/// What one h2load run measured.
pub(crate) struct H2load {
    pub rps: f64,
    pub mean_us: f64,
    /// Failed requests plus those answered with other than 2xx.
    pub failed: u64,
}

/// `h2load --h1 -n requests -c 10 -t 1 [-H header] url` from `client`.
pub(crate) fn h2load_url(client: &Pod, url: &str, requests: u32, header: Option<&str>) -> Result<H2load> {
    let n = requests.to_string();
    let mut args = vec!["h2load", "--h1", "-n", &n, "-c", "10", "-t", "1"];
    if let Some(h) = header {
        args.extend(["-H", h]);
    }
    args.push(url);
    let out = client.run_timeout(&args, Duration::from_secs(120))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "finished in 1.23s, 4065.04 req/s, ..." and "time for request:  min  max  mean  sd ..."
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in ").and_then(|r| r.split(", ").nth(1)).and_then(|r| r.strip_suffix(" req/s")))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("h2load to {url}: {text}"))?;
    let mean_us = text
        .lines()
        .find(|l| l.trim_start().starts_with("time for request:"))
        .and_then(|l| l.split_whitespace().nth(5))
        .map(parse_duration_us)
        .unwrap_or(0.0);
    // "requests: 1000 total, 1000 started, 1000 done, 1000 succeeded, 0 failed, ..."
    // and "status codes: 990 2xx, 0 3xx, 10 4xx, 0 5xx".
    let count = |line: &str, suffix: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(line))
            .into_iter()
            .flat_map(|l| l.split(", "))
            .filter(|p| p.ends_with(suffix))
            .filter_map(|p| p.split_whitespace().rev().nth(1)?.parse::<u64>().ok())
            .sum()
    };
    let failed = count("requests:", " failed") + count("status codes:", "4xx") + count("status codes:", "5xx") + count("status codes:", "3xx");
    Ok(H2load { rps, mean_us, failed })
}

/// `123.45us`, `1.23ms` or `1.2s` in µs.
fn parse_duration_us(s: &str) -> f64 {
    let (num, scale) = if let Some(v) = s.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1e3)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e6)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().map(|v| v * scale).unwrap_or(0.0)
}

/// utime + stime of a process, seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn measure(bed: &TestBed, client: &Pod, server: &Pod, seconds: u32, round_trips: u32) -> Result<Sample> {
    let pids: Vec<u32> = ["node1", "node2"].iter().filter_map(|n| bed.agent_pid(n).ok()).collect();
    let cpu0: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
    let gbps = iperf(client, &server.ip, seconds)?;
    let (p50_us, p99_us, rr_count) = rr(client, &server.ip, round_trips, false)?;
    let (conn_p50_us, conn_p99_us, _) = rr(client, &server.ip, (round_trips / 10).max(100), true)?;
    let (http_rps, http_mean_us) = h2load(client, &server.ip, round_trips)?;
    let cpu1: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
    Ok(Sample { gbps, p50_us, p99_us, rr_count, conn_p50_us, conn_p99_us, http_rps, http_mean_us, agent_cpu_s: cpu1 - cpu0 })
}

fn ratio(meshed: f64, direct: f64) -> String {
    if direct > 0.0 {
        format!("{:.2}x", meshed / direct)
    } else {
        "-".into()
    }
}

/// The date and machine lines every benchmark section starts with.
pub(crate) fn machine() -> String {
    format!("- date: {}\n- machine: {}\n", sh(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]), crate::doc::machine())
}

pub(crate) fn sh(args: &[&str]) -> String {
    mesh_tests::proc::host(args).map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

pub fn run(seconds: u32, round_trips: u32) -> Result<()> {
    println!("bench: building 2 nodes (client + server on node1, server on node2)");
    let mut bed = TestBed::new("bench")?;
    bed.add_node("node1")?;
    bed.add_node("node2")?;
    let client = bed.add_pod("node1", "default", "client", "sleep", &[("app", "client")])?;
    let local = bed.add_pod("node1", "default", "server-1", "echo", &[("app", "bench")])?;
    let remote = bed.add_pod("node2", "default", "server-2", "echo", &[("app", "bench")])?;
    bed.start_control_plane(&default_config())?;
    bed.start_agent("node1")?;
    bed.start_agent("node2")?;

    let rr_bin = binary("mesh-rr")?;
    let rr_bin = rr_bin.to_str().context("path")?;
    let echo_bin = binary("mesh-echo")?;
    let echo_bin = echo_bin.to_str().context("path")?;
    let mut servers: Vec<Proc> = Vec::new();
    for s in [&local, &remote] {
        servers.push(s.spawn(&["iperf3", "-s", "-p", IPERF_PORT])?);
        servers.push(s.spawn(&[rr_bin, "server", "--port", RR_PORT, "--size", "64"])?);
        servers.push(s.spawn(&[echo_bin, "--port", &ECHO_PORT.to_string(), "--name", &s.name])?);
        s.wait_listening(ECHO_PORT, Duration::from_secs(10))?;
        s.wait_listening(5201, Duration::from_secs(10))?;
        s.wait_listening(7000, Duration::from_secs(10))?;
    }

    println!("bench: direct (pods not enrolled)");
    let direct_same = measure(&bed, &client, &local, seconds, round_trips)?;
    let direct_cross = measure(&bed, &client, &remote, seconds, round_trips)?;

    println!("bench: meshed (pods enrolled; connections captured by the agents)");
    for p in [&client, &local, &remote] {
        bed.enroll(p)?;
    }
    for ip in [&client.ip, &local.ip, &remote.ip] {
        bed.wait_for_workload("node1", ip)?;
        bed.wait_for_workload("node2", ip)?;
    }
    let redirected_before = bed.counter("node1", "connect_redirected").unwrap_or(0);
    let meshed_same = measure(&bed, &client, &local, seconds, round_trips)?;
    let meshed_cross = measure(&bed, &client, &remote, seconds, round_trips)?;
    let redirected = bed.counter("node1", "connect_redirected").unwrap_or(0).saturating_sub(redirected_before);
    let rss: Vec<String> = ["node1", "node2"]
        .iter()
        .map(|n| format!("{n} {:.1} MiB", bed.agent_pid(n).map(peak_rss_mib).unwrap_or(0.0)))
        .collect();
    drop(servers);
    bed.finish();

    let mut table = String::new();
    table.push_str("| metric | path | direct | meshed | meshed/direct | agent CPU in meshed run |\n|---|---|---|---|---|---|\n");
    for (path, d, m) in [("same node", &direct_same, &meshed_same), ("across nodes", &direct_cross, &meshed_cross)] {
        let cpu = format!("{:.2} s (direct run: {:.2} s)", m.agent_cpu_s, d.agent_cpu_s);
        let _ = writeln!(table, "| TCP throughput, 1 stream (Gbit/s) | {path} | {:.2} | {:.2} | {} | {cpu} |", d.gbps, m.gbps, ratio(m.gbps, d.gbps));
        let _ = writeln!(table, "| RR latency p50, 64 B (µs) | {path} | {:.0} | {:.0} | {} | |", d.p50_us, m.p50_us, ratio(m.p50_us, d.p50_us));
        let _ = writeln!(table, "| RR latency p99, 64 B (µs) | {path} | {:.0} | {:.0} | {} | |", d.p99_us, m.p99_us, ratio(m.p99_us, d.p99_us));
        let _ = writeln!(table, "| RR round trips done | {path} | {} | {} | | |", d.rr_count, m.rr_count);
        let _ = writeln!(table, "| new connection + RR p50 (µs) | {path} | {:.0} | {:.0} | {} | |", d.conn_p50_us, m.conn_p50_us, ratio(m.conn_p50_us, d.conn_p50_us));
        let _ = writeln!(table, "| new connection + RR p99 (µs) | {path} | {:.0} | {:.0} | {} | |", d.conn_p99_us, m.conn_p99_us, ratio(m.conn_p99_us, d.conn_p99_us));
        let _ = writeln!(table, "| HTTP/1.1 req/s, h2load 10 conns | {path} | {:.0} | {:.0} | {} | |", d.http_rps, m.http_rps, ratio(m.http_rps, d.http_rps));
        let _ = writeln!(table, "| HTTP/1.1 mean request time (µs) | {path} | {:.0} | {:.0} | {} | |", d.http_mean_us, m.http_mean_us, ratio(m.http_mean_us, d.http_mean_us));
    }

    let mut doc = machine();
    let _ = writeln!(doc, "- command: `scripts/bench.sh` (runs `cargo xtask bench --seconds {seconds} --round-trips {round_trips}`)");
    doc.push_str("- method: the same three pods (client and server-1 on node1, server-2 on node2, network namespaces\n");
    doc.push_str("  joined by veth and bridges) are measured first before enrollment (direct pod-to-pod TCP), then\n");
    doc.push_str("  enrolled, so the client's connections are captured in the kernel and carried by the agents\n");
    doc.push_str(&format!(
        "  (HBONE, mTLS). Throughput: `iperf3 -t {seconds}`, one stream. Latency: `mesh-rr`, 64-byte ping-pong on\n  one connection, {round_trips} round trips or 20 s; and a new connection per round trip (connect,\n  64 B each way, close), {} times. HTTP: `h2load --h1 -n {round_trips} -c 10 -t 1` against a small\n  HTTP/1.1 server (mesh-echo). Agent CPU: utime+stime of both agents across the run.\n",
        (round_trips / 10).max(100)
    ));
    let _ = writeln!(doc, "- agent peak RSS (VmHWM): {}; connects redirected on node1 during the meshed runs: {redirected}\n", rss.join(", "));
    doc.push_str(&table);
    println!("\n{table}");
    println!("agent peak RSS: {}", rss.join(", "));
    let path = crate::doc::replace_section(SECTION, &doc)?;
    println!("written to {}", path.display());
    Ok(())
}
