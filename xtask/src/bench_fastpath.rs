//! `cargo xtask bench-fastpath`: the same-node fast path on vs off, in one run. One
//! node, a client and a server pod, enrolled, the agent started with the fast path;
//! each round measures with the pods' fast path on and with it off (`meshctl
//! fast-path`, the live switch), alternating which goes first. Prints a table of
//! medians over the rounds and replaces its section of docs/benchmarks.md.
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use mesh_tests::proc::Proc;
use mesh_tests::{binary, default_config, Pod, TestBed};

use crate::bench::{cpu_seconds, iperf, machine, rr_sized};

const SECTION: &str = "## Same-node fast path: on vs off";
const IPERF_PORT: u16 = 5201;
const RR_SMALL_PORT: u16 = 7000;
const RR_LARGE_PORT: u16 = 7001;
const LARGE: usize = 64 * 1024;

#[derive(Default, Clone)]
struct Sample {
    /// NaN when iperf3 failed (`iperf_error`).
    gbps: f64,
    iperf_error: Option<String>,
    /// Peak of the node's TCP memory (`/proc/net/sockstat`, all sockets) during iperf3, MiB.
    tcp_mem_peak_mib: f64,
    small_p50: f64,
    small_p99: f64,
    large_p50: f64,
    large_p99: f64,
    /// New connections per second, one after another (connect, 64 B each way, close).
    conns_per_s: f64,
    conn_p50: f64,
    agent_cpu_s: f64,
    redirected: u64,
}

fn measure(bed: &TestBed, client: &Pod, server: &Pod, seconds: u32, round_trips: u32) -> Result<Sample> {
    let pid = bed.agent_pid("node1")?;
    let cpu0 = cpu_seconds(pid);
    let redirected0 = bed.counter("node1", "fast_redirected")?;
    // With the fast path a bulk sender can fail: the redirect has no flow control.
    let sampler = TcpMemSampler::start();
    let (gbps, iperf_error) = match iperf(client, &server.ip, seconds) {
        Ok(g) => (g, None),
        Err(e) => (f64::NAN, Some(format!("{e:#}"))),
    };
    let tcp_mem_peak_mib = sampler.stop();
    let small = format!("{}:{RR_SMALL_PORT}", server.ip);
    let (small_p50, small_p99, _) = rr_sized(client, &small, 64, round_trips, false)?;
    let large = format!("{}:{RR_LARGE_PORT}", server.ip);
    let (large_p50, large_p99, _) = rr_sized(client, &large, LARGE, (round_trips / 4).max(100), false)?;
    let conns = (round_trips / 10).max(100);
    let t = std::time::Instant::now();
    let (conn_p50, _, done) = rr_sized(client, &small, 64, conns, true)?;
    let conns_per_s = done as f64 / t.elapsed().as_secs_f64();
    Ok(Sample {
        gbps,
        iperf_error,
        tcp_mem_peak_mib,
        small_p50,
        small_p99,
        large_p50,
        large_p99,
        conns_per_s,
        conn_p50,
        agent_cpu_s: cpu_seconds(pid) - cpu0,
        redirected: bed.counter("node1", "fast_redirected")? - redirected0,
    })
}

/// Samples the node's TCP memory every 50 ms (at most 2 minutes) until stopped.
struct TcpMemSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl TcpMemSampler {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            for _ in 0..2400 {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                peak = peak.max(tcp_mem_pages().unwrap_or(0));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        TcpMemSampler { stop, thread }
    }

    /// The peak, MiB.
    fn stop(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let pages = self.thread.join().unwrap_or(0);
        pages as f64 * 4096.0 / (1024.0 * 1024.0)
    }
}

/// `mem` of the `TCP:` line of /proc/net/sockstat: pages the node's TCP sockets hold.
fn tcp_mem_pages() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem")?;
    words.next()?.parse().ok()
}

/// `meshctl fast-path on|off` for each pod.
fn switch(bed: &TestBed, cookies: &[u64], on: bool) -> Result<()> {
    let meshctl = mesh_tests::meshctl_binary()?;
    let bpffs = bed.bpffs("node1");
    let state = if on { "on" } else { "off" };
    for cookie in cookies {
        let args = [
            meshctl.to_str().context("path")?,
            "--bpffs",
            bpffs.to_str().context("path")?,
            "fast-path",
            state,
            "--netns-cookie",
            &cookie.to_string(),
        ];
        let out = mesh_tests::proc::run(&args, None, None, Duration::from_secs(10))?;
        ensure!(out.status.success(), "meshctl fast-path {state}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn median(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(f).collect();
    v.retain(|x| !x.is_nan());
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn run(seconds: u32, round_trips: u32, rounds: u32) -> Result<()> {
    // The bed's agent inherits this: fast_sockops on the pods' and the agent's cgroups.
    // SAFETY: set before this process starts any thread.
    unsafe { std::env::set_var("MESH_FAST_PATH", "on") };
    println!("bench-fastpath: one node, client and server pods, {rounds} rounds of on and off");
    let mut bed = TestBed::new("bench-fast")?;
    bed.add_node("node1")?;
    let client = bed.add_pod("node1", "default", "client", "sleep", &[("app", "client")])?;
    let server = bed.add_pod("node1", "default", "server-1", "echo", &[("app", "bench")])?;
    bed.start_control_plane(&default_config())?;
    bed.start_agent("node1")?;
    for p in [&client, &server] {
        bed.enroll(p)?;
    }
    for ip in [&client.ip, &server.ip] {
        bed.wait_for_workload("node1", ip)?;
    }
    let rr_bin = binary("mesh-rr")?;
    let rr_bin = rr_bin.to_str().context("path")?;
    let servers: Vec<Proc> = vec![
        server.spawn(&["iperf3", "-s", "-p", &IPERF_PORT.to_string()])?,
        server.spawn(&[rr_bin, "server", "--port", &RR_SMALL_PORT.to_string(), "--size", "64"])?,
        server.spawn(&[rr_bin, "server", "--port", &RR_LARGE_PORT.to_string(), "--size", &LARGE.to_string()])?,
    ];
    for port in [IPERF_PORT, RR_SMALL_PORT, RR_LARGE_PORT] {
        server.wait_listening(port, Duration::from_secs(10))?;
    }
    let cookies = [client.netns_cookie()?, server.netns_cookie()?];
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        for fast in order {
            switch(&bed, &cookies, fast)?;
            println!("bench-fastpath: round {} of {rounds}, fast path {}", round + 1, if fast { "on" } else { "off" });
            let s = measure(&bed, &client, &server, seconds, round_trips)?;
            if fast { on.push(s) } else { off.push(s) }
        }
    }
    let missed = bed.counter("node1", "fast_missed")?;
    drop(servers);
    bed.finish();

    ensure!(off.iter().all(|s| s.redirected == 0), "redirects while the fast path was off: the switch did not work");
    ensure!(on.iter().all(|s| s.redirected > 0), "no redirects while the fast path was on");
    let table = table(&on, &off);
    let mut doc = machine();
    let _ = writeln!(doc, "- command: `cargo xtask bench-fastpath --seconds {seconds} --round-trips {round_trips} --rounds {rounds}` (root)");
    let _ = writeln!(
        doc,
        "- method: one node; client and server-1 enrolled, the agent started with `--fast-path on`. Each round\n  \
         measures once with both pods' fast path on and once off (`meshctl fast-path`, the live switch; new\n  \
         connections after an off are never put on the fast path), alternating which goes first; the table\n  \
         gives the median of {rounds} rounds. Both loopback legs are affected: the client's socket to the agent\n  \
         (15001) and the agent's forward to the server's socket; HBONE between the two pod namespaces is TCP\n  \
         either way. Throughput: `iperf3 -t {seconds}`, one stream. Latency: `mesh-rr` ping-pong on one\n  \
         connection, 64 B ({round_trips} round trips or 20 s) and 64 KiB ({} or 20 s). New connections: `mesh-rr\n  \
         --connect-each`, {} connections one after another (connect, 64 B each way, close).\n\
         - node TCP memory: the `mem` pages of /proc/net/sockstat (every TCP socket of the machine), sampled\n  \
         every 50 ms during iperf3; this machine's `net.ipv4.tcp_mem` is {}.\n\
         - fast-path misses during the run (leg without its peer in the map): {missed}\n",
        (round_trips / 4).max(100),
        (round_trips / 10).max(100),
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem").map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ")).unwrap_or_default()
    );
    doc.push_str(&table);
    for (mode, samples) in [("on", &on), ("off", &off)] {
        let failed: Vec<&str> = samples.iter().filter_map(|s| s.iperf_error.as_deref()).collect();
        if !failed.is_empty() {
            let _ = writeln!(doc, "\niperf3 failed in {} of {rounds} runs with the fast path {mode}: {}", failed.len(), failed[0]);
        }
    }
    doc.push_str(&verdict(&on, &off));
    println!("\n{doc}");
    let path = crate::doc::replace_section(SECTION, &doc)?;
    println!("written to {}", path.display());
    Ok(())
}

/// What the run says about the default, and what `--fast-path auto` is in the code.
fn verdict(on: &[Sample], off: &[Sample]) -> String {
    let failed = on.iter().filter(|s| s.iperf_error.is_some()).count();
    let faster = |f: fn(&Sample) -> f64| median(on, f) < median(off, f);
    let latency = [faster(|s| s.small_p50), faster(|s| s.large_p50), faster(|s| s.conn_p50)];
    let mut v = String::from(
        "\nReading the table: the agent CPU of the runs with the fast path on includes iperf3 runs that \
         failed early and carried less data, so it is not a like-for-like figure. New connections are TCP \
         handshakes on both legs either way; only their 64 B exchange can be redirected. p99 figures move a \
         lot between runs on this shared 2-core machine.\n\nDefault: ",
    );
    let auto = if mesh_agent::kernel::fastpath::Mode::Auto.enabled() { "on" } else { "off" };
    let _ = write!(v, "`--fast-path auto` is **{auto}** in this build. ");
    if failed > 0 {
        let _ = writeln!(
            v,
            "This run: a bulk sender failed with the fast path on in {failed} of {} runs (the redirect has no flow \
             control; see docs/architecture.md), so it is not safe to turn on by default, whatever the latency \
             figures; p50 latency with it on was lower for {} of 3 (64 B, 64 KiB, new connection).",
            on.len(),
            latency.iter().filter(|x| **x).count()
        );
    } else if latency.iter().all(|x| *x) && median(on, |s| s.gbps) >= median(off, |s| s.gbps) {
        v.push_str("This run: the fast path was faster in every row measured and no transfer failed.\n");
    } else {
        v.push_str("This run: the fast path was not faster everywhere; keep it off by default.\n");
    }
    v
}

fn table(on: &[Sample], off: &[Sample]) -> String {
    type Metric = (&'static str, fn(&Sample) -> f64, &'static str, bool);
    // (name, value, format precision marker, higher is better)
    let rows: [Metric; 10] = [
        ("TCP throughput, 1 stream (Gbit/s)", |s| s.gbps, "2", true),
        ("node TCP memory peak during iperf3 (MiB)", |s| s.tcp_mem_peak_mib, "0", false),
        ("RR latency p50, 64 B (µs)", |s| s.small_p50, "0", false),
        ("RR latency p99, 64 B (µs)", |s| s.small_p99, "0", false),
        ("RR latency p50, 64 KiB (µs)", |s| s.large_p50, "0", false),
        ("RR latency p99, 64 KiB (µs)", |s| s.large_p99, "0", false),
        ("new connections/s, one at a time", |s| s.conns_per_s, "0", true),
        ("new connection + RR p50 (µs)", |s| s.conn_p50, "0", false),
        ("agent CPU per measurement (s)", |s| s.agent_cpu_s, "2", false),
        ("fast-path redirects per measurement", |s| s.redirected as f64, "0", true),
    ];
    let mut t = String::from("| metric | fast path off | fast path on | on/off | better |\n|---|---|---|---|---|\n");
    for (name, f, prec, higher) in rows {
        let (a, b) = (median(off, f), median(on, f));
        if on.iter().chain(off).any(|s| f(s).is_nan()) {
            // A failed run has no figure: say how many failed instead of a median.
            let cell = |v: &[Sample], m: f64| {
                let failed = v.iter().filter(|s| f(s).is_nan()).count();
                if failed == v.len() { format!("failed ({failed}/{})", v.len()) } else { format!("{m:.2} ({failed} failed)") }
            };
            let _ = writeln!(t, "| {name} | {} | {} | - | {} |", cell(off, a), cell(on, b), if b > a { "on" } else { "off" });
            continue;
        }
        let fmt = |v: f64| if prec == "2" { format!("{v:.2}") } else { format!("{v:.0}") };
        let ratio = if a > 0.0 { format!("{:.2}x", b / a) } else { "-".into() };
        let better = if a == b || name.starts_with("fast-path") {
            "".to_string()
        } else if (b > a) == higher {
            "on".into()
        } else {
            "off".into()
        };
        let _ = writeln!(t, "| {name} | {} | {} | {ratio} | {better} |", fmt(a), fmt(b));
    }
    t
}
