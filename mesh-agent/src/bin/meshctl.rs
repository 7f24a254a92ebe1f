//! `meshctl`: shows an operator what the kernel and the agent on this node hold.
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use mesh_agent::kernel::dump;

#[derive(Parser)]
#[command(name = "meshctl", version, about = "Inspect the mesh on this node")]
struct Cli {
    /// The agent's bpffs folder (its --bpffs).
    #[arg(long, env = "MESH_BPFFS", default_value = "/sys/fs/bpf/mesh", global = true)]
    bpffs: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Kernel maps: list them, or dump one decoded.
    Maps {
        #[command(subcommand)]
        what: Option<MapsCmd>,
    },
    /// Why the kernel passes, steers or drops a new TCP connection from SOURCE to
    /// DESTINATION (an enrolled pod's address and port), replayed on the pinned maps;
    /// with the drops counted so far for that pod.
    Explain {
        /// The connecting address, e.g. 10.201.1.7 or fd00::7.
        source: std::net::IpAddr,
        /// The pod's address and port, e.g. 10.201.1.3:8080 or [fd00::3]:8080.
        destination: std::net::SocketAddr,
    },
    /// Switch one pod's same-node fast path live (existing connections too).
    FastPath {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// The pod's network namespace cookie (as `meshctl maps dump PODS` shows).
        #[arg(long)]
        netns_cookie: u64,
    },
    /// Which resources each connected agent holds, and whether it is in sync with the
    /// control plane (read from the control plane's /debug/syncz).
    Sync {
        /// The control plane's admin address (its --admin).
        #[arg(long, env = "MESH_CP_ADMIN", default_value = "127.0.0.1:15014")]
        control_plane: String,
    },
}

#[derive(Subcommand)]
enum MapsCmd {
    /// Counters and drops, refreshed: totals and the change since the last refresh.
    Watch {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many refreshes (0: until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Every entry of one map, decoded (addresses, ports, cookies, counters).
    Dump {
        /// Map name, as `meshctl maps` lists it (PODS, MESH_DESTS, ORIG_DST, COUNTERS, ...).
        name: String,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Cmd::Sync { control_plane } = &cli.cmd {
        if let Err(e) = sync(control_plane, cli.json) {
            eprintln!("meshctl: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = run(&cli) {
        eprintln!("meshctl: {e}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<(), dump::DumpError> {
    match &cli.cmd {
        Cmd::Maps { what: None } => {
            let maps = dump::list(&cli.bpffs)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&maps).unwrap_or_default());
                return Ok(());
            }
            println!("{:<16} {:<16} {:>8} {:>10} {:>6} {:>6}", "NAME", "TYPE", "ENTRIES", "CAPACITY", "KEY", "VALUE");
            for m in maps {
                println!(
                    "{:<16} {:<16} {:>8} {:>10} {:>6} {:>6}",
                    m.name, m.kind, m.entries, m.capacity, m.key_size, m.value_size
                );
            }
        }
        Cmd::Explain { source, destination } => explain(cli, *source, *destination)?,
        Cmd::Sync { .. } => unreachable!("handled in main"),
        Cmd::FastPath { state, netns_cookie } => {
            if let Err(e) = mesh_agent::kernel::fastpath::set_pinned(&cli.bpffs, *netns_cookie, state == "on") {
                eprintln!("meshctl: {e}");
                std::process::exit(1);
            }
        }
        Cmd::Maps { what: Some(MapsCmd::Watch { interval, count }) } => watch(cli, *interval, *count)?,
        Cmd::Maps { what: Some(MapsCmd::Dump { name }) } => {
            let rows = dump::dump(&cli.bpffs, name)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
                return Ok(());
            }
            print_table(&rows);
        }
    }
    Ok(())
}

fn explain(cli: &Cli, source: std::net::IpAddr, destination: std::net::SocketAddr) -> Result<(), dump::DumpError> {
    use mesh_agent::kernel::explain;
    let view = explain::Pinned::open(&cli.bpffs)?;
    let e = explain::explain(&view, source, destination.ip(), destination.port());
    let pod = destination.ip().to_canonical().to_string();
    let drops: Vec<serde_json::Value> =
        dump::dump(&cli.bpffs, mesh_common::MAP_DROPS)?.into_iter().filter(|r| r["pod"].as_str() == Some(pod.as_str())).collect();
    if cli.json {
        let out = serde_json::json!({"steps": e.steps, "outcome": e.outcome, "reason": e.reason(), "verdict": e.verdict(), "drops": drops});
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    println!("TCP {source} -> {destination}");
    for s in &e.steps {
        println!("  {:<15} {}", s.program, s.finding);
    }
    println!("=> {}", e.verdict());
    if !drops.is_empty() {
        println!("\ndrops counted for {pod}:");
        print_table(&drops);
    }
    Ok(())
}

/// Prints COUNTERS and DROPS every `interval` seconds with the change since the last
/// print; `--json` prints one object per refresh (for scripts).
fn watch(cli: &Cli, interval: f64, count: u64) -> Result<(), dump::DumpError> {
    use std::collections::HashMap;
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut n = 0u64;
    loop {
        let mut rows = Vec::new();
        for r in dump::dump(&cli.bpffs, mesh_common::MAP_COUNTERS)? {
            rows.push((r["name"].as_str().unwrap_or("?").to_string(), r["value"].as_u64().unwrap_or(0)));
        }
        for r in dump::dump(&cli.bpffs, mesh_common::MAP_DROPS)? {
            let name = format!("drop {} {}", r["pod"].as_str().unwrap_or("?"), r["reason"].as_str().unwrap_or("?"));
            rows.push((name, r["count"].as_u64().unwrap_or(0)));
        }
        if cli.json {
            let obj: serde_json::Map<String, serde_json::Value> = rows.iter().map(|(k, v)| (k.clone(), (*v).into())).collect();
            println!("{}", serde_json::Value::Object(obj));
        } else {
            println!("{:<44} {:>12} {:>10}", "COUNTER", "TOTAL", "CHANGE");
            for (name, v) in &rows {
                let delta = v.saturating_sub(last.get(name).copied().unwrap_or(*v));
                println!("{name:<44} {v:>12} {delta:>+10}");
            }
            println!();
        }
        last = rows.into_iter().collect();
        n += 1;
        if count != 0 && n >= count {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(interval.max(0.05)));
    }
}

/// Rows of flat JSON objects as an aligned table, columns in first-row order.
fn print_table(rows: &[serde_json::Value]) {
    let Some(first) = rows.first().and_then(|r| r.as_object()) else {
        println!("(empty)");
        return;
    };
    let cols: Vec<&String> = first.keys().collect();
    let cell = |r: &serde_json::Value, c: &str| match &r[c] {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let widths: Vec<usize> = cols
        .iter()
        .map(|c| rows.iter().map(|r| cell(r, c).len()).chain([c.len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<String>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ")
    };
    println!("{}", line(cols.iter().map(|c| c.to_uppercase()).collect()));
    for r in rows {
        println!("{}", line(cols.iter().map(|c| cell(r, c)).collect()));
    }
}

/// GET `path` from `addr` over plain HTTP/1.0: the body of a 200 answer.
fn http_get(addr: &str, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(5);
    let sock: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, timeout).map_err(|e| {
        format!("cannot reach the control plane's admin listener at {addr}: {e}; is the control plane running, with --admin {addr}?")
    })?;
    s.set_read_timeout(Some(timeout)).ok();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).map_err(|e| format!("{addr}: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| format!("{addr}: reading the answer: {e}"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(format!("{addr}{path}: {status}"));
    }
    Ok(body.to_string())
}

/// `meshctl sync`: one row per connected agent and type.
fn sync(addr: &str, json: bool) -> Result<(), String> {
    let body = http_get(addr, "/debug/syncz")?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let doc: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{addr}/debug/syncz: not JSON: {e}"))?;
    let agents = doc["agents"].as_array().cloned().unwrap_or_default();
    println!("snapshot generation {}, {} agent(s) connected", doc["generation"], agents.len());
    println!("{:<20} {:<22} {:<22} {:>7} {:>6} {:>6} {:>5} {:<8}", "NODE", "PEER", "TYPE", "HELD", "SENT", "ACKED", "GEN", "STATUS");
    let nonce = |v: &serde_json::Value| v.as_u64().map_or("-".to_string(), |n| n.to_string());
    let mut nacks = Vec::new();
    for a in &agents {
        let node = a["node"].as_str().unwrap_or("?");
        let peer = a["peer"].as_str().unwrap_or("?");
        for (t, ts) in a["types"].as_object().into_iter().flatten() {
            let short = t.rsplit(['/', '.']).next().unwrap_or(t);
            let status = if ts["in_sync"] == true {
                "SYNCED"
            } else if ts["nacks"].as_object().is_some_and(|n| !n.is_empty()) {
                "NACKED"
            } else {
                "STALE"
            };
            println!(
                "{:<20} {:<22} {:<22} {:>7} {:>6} {:>6} {:>5} {:<8}",
                node, peer, short, ts["held"], nonce(&ts["last_sent_nonce"]), nonce(&ts["last_acked_nonce"]), ts["generation"], status
            );
            for (name, n) in ts["nacks"].as_object().into_iter().flatten() {
                nacks.push(format!("{node} {short} {name} (nonce {}): {}", n["nonce"], n["reason"].as_str().unwrap_or("?")));
            }
        }
    }
    if !nacks.is_empty() {
        println!("\nrejected by agents (they keep the previous version):");
        for n in nacks {
            println!("  {n}");
        }
    }
    Ok(())
}
