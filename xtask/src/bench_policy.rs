//! `cargo xtask bench-policy`: nanoseconds per packet of `policy_ingress` with 1k, 10k
//! and 100k L4 rules, through BPF_PROG_TEST_RUN with `repeat` (the kernel reports the
//! mean time per run). Also how long the compiler and the map update take. Prints a
//! table and replaces the "L4 policy program" section of docs/benchmarks.md.
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use mesh_agent::kernel::policy::{VERDICT_DROP, VERDICT_PASS};
use mesh_agent::kernel::Kernel;
use mesh_agent::l4policy::{compile, Action, L4Policy, Operation, Prefix, Rule, Source};

const POD: &str = "10.250.0.10";

/// `n` ALLOW rules, rule i: from one /32 in 10.0.0.0/8 to port 8000 + i % 16; every
/// eighth rule is a /24 instead. Plus one DENY policy for 10.200.0.0/16.
fn policies(n: u32) -> Vec<L4Policy> {
    let rules = (0..n)
        .map(|i| {
            let (a, b, c) = ((i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
            let block = if i % 8 == 7 { format!("11.{a}.{b}.0/24") } else { format!("10.{a}.{b}.{c}/32") };
            Rule {
                from: vec![Source { ip_blocks: vec![Prefix::parse(&block).unwrap()], ..Default::default() }],
                to: vec![Operation { ports: vec![8000 + (i % 16) as u16], ..Default::default() }],
            }
        })
        .collect();
    let deny = Rule {
        from: vec![Source { ip_blocks: vec![Prefix::parse("10.200.0.0/16").unwrap()], ..Default::default() }],
        to: vec![],
    };
    vec![
        L4Policy { name: "bench/allow".into(), action: Action::Allow, rules },
        L4Policy { name: "bench/deny".into(), action: Action::Deny, rules: vec![deny] },
    ]
}

fn tcp_frame(src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 2;
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

struct Row {
    rules: u32,
    entries: usize,
    compile_ms: f64,
    write_ms: f64,
    ns: [f64; 4],
}

pub fn run(repeat: u32) -> Result<()> {
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/mesh-bench-policy-{}", std::process::id()));
    let kernel = Kernel::load(&bpffs).map_err(|e| anyhow::anyhow!(mesh_agent::error_chain(&e)))?;
    let result = measure(&kernel, repeat);
    kernel.shutdown();
    // The tables hold up to a million entries: free them with the folder.
    let _ = Kernel::uninstall(&bpffs);
    let rows = result?;
    let table = render(&rows, repeat);
    println!("{table}");
    write_doc(&table)
}

fn measure(kernel: &Kernel, repeat: u32) -> Result<Vec<Row>> {
    let pod: IpAddr = POD.parse()?;
    let dst = [10, 250, 0, 10];
    let mut rows = Vec::new();
    for n in [1_000u32, 10_000, 100_000] {
        let ps = policies(n);
        let t = Instant::now();
        let entries = compile(&ps)?.entries.len();
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        kernel.set_policy(pod, &ps).context("writing the policy maps")?;
        // set_policy compiles again: subtract the compile time measured above.
        let write_ms = (t.elapsed().as_secs_f64() * 1e3 - compile_ms).max(0.0);
        let mid = n / 2 - (n / 2) % 8; // a /32 rule
        let (a, b, c) = (((mid >> 16) & 0xff) as u8, ((mid >> 8) & 0xff) as u8, (mid & 0xff) as u8);
        let probes = [
            (tcp_frame([10, a, b, c], dst, 8000 + (mid % 16) as u16), VERDICT_PASS), // allowed
            (tcp_frame([192, 168, 1, 1], dst, 8000), VERDICT_DROP),               // no ALLOW matches
            (tcp_frame([10, 200, 1, 1], dst, 8000), VERDICT_DROP),                // DENY
            (tcp_frame([10, a, b, c], [10, 250, 0, 99], 8000), VERDICT_PASS),     // pod without policy
        ];
        let mut ns = [0.0; 4];
        for (i, (frame, want)) in probes.iter().enumerate() {
            let (got, mean) = kernel.test_run_policy(frame, repeat)?;
            anyhow::ensure!(got == *want, "probe {i} with {n} rules: verdict {got:#x}, expected {want:#x}");
            ns[i] = mean.as_nanos() as f64;
        }
        eprintln!("{n} rules: {entries} entries, {ns:?} ns");
        rows.push(Row { rules: n, entries, compile_ms, write_ms, ns });
    }
    kernel.set_policy(pod, &[])?;
    Ok(rows)
}

fn render(rows: &[Row], repeat: u32) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| rules | LPM entries | compile (ms) | map write (ms) | allowed (ns/pkt) | no ALLOW match, dropped (ns/pkt) | DENY, dropped (ns/pkt) | pod without policy (ns/pkt) |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.rules, r.entries, r.compile_ms, r.write_ms, r.ns[0], r.ns[1], r.ns[2], r.ns[3]
        );
    }
    let _ = write!(s, "\n(BPF_PROG_TEST_RUN, {repeat} runs per cell, mean per run as the kernel reports it)");
    let _ = write!(
        s,
        "\n\nLPM entries include the HBONE port's table (15008 passes whatever any port allows, \
         see docs/architecture.md), which about doubles them for these policies."
    );
    s
}

fn write_doc(table: &str) -> Result<()> {
    let uname = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    let body = format!(
        "- command: `cargo xtask bench-policy` (root)\n- machine: kernel {}, {cpu}, {cpus} cores\n\
         - method: the real `policy_ingress` from the agent's object, maps filled through `Kernel::set_policy` \
         for one pod: one ALLOW policy with N rules (each one /32, every eighth a /24, to one of 16 ports) \
         and one DENY policy (a /16). One TCP SYN per column, run with BPF_PROG_TEST_RUN `repeat`.\n\n{table}\n",
        uname.trim()
    );
    crate::doc::replace_section("## L4 policy program", &body)?;
    Ok(())
}
