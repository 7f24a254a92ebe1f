//! `cargo xtask bench-ondemand`: what an on-demand lookup costs a caller. Fresh caller
//! pods on node1 each call echo-2 on node2 twice, by pod IP (a new connection each
//! time), in two modes taken in turn in each round: open (no Sidecar: node2 holds
//! every workload) and narrowed (a mesh default Sidecar `./*`: node2 holds no caller,
//! so the first HBONE connection from each waits for node2's agent to look it up).
//! Replaces its section of docs/benchmarks.md.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mesh_tests::bed::find_workload;
use mesh_tests::{binary, default_config, wait_until, Pod, TestBed};

const SECTION: &str = "## On-demand lookup of a caller";
const ECHO_PORT: u16 = 8080;

const MESH_DEFAULT_SIDECAR: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec: {egress: [{hosts: ['./*']}]}
";

const MODES: [&str; 2] = ["open: node2 holds every caller", "narrowed: node2 looks each caller up"];

/// One request's total time (curl's `time_total`) in ms; fails on anything but 200.
fn timed(pod: &Pod, url: &str) -> Result<f64> {
    let out = pod.run_timeout(&["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", url], Duration::from_secs(10))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, secs) = text.trim().split_once(' ').context("curl -w output")?;
    if code != "200" {
        bail!("{} -> {url}: HTTP {code}: {}", pod.name, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(secs.parse::<f64>()? * 1e3)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    crate::bench_xds::percentile(&v, p)
}

pub fn run(callers: usize, rounds: u32) -> Result<()> {
    println!("bench-ondemand: building 2 nodes (echo-2 on node2, {callers} fresh callers per mode and round on node1)");
    let mut bed = TestBed::new("bench-ondemand")?;
    bed.add_node("node1")?;
    bed.add_node("node2")?;
    let echo2 = bed.add_pod("node2", "default", "echo-2", "echo", &[("app", "echo")])?;
    bed.start_control_plane(&default_config())?;
    bed.start_agent("node1")?;
    bed.start_agent("node2")?;
    bed.enroll(&echo2)?;
    let echo_bin = binary("mesh-echo")?;
    let _server = echo2.spawn(&[echo_bin.to_str().context("path")?, "--port", &ECHO_PORT.to_string(), "--name", "echo-2"])?;
    echo2.wait_listening(ECHO_PORT, Duration::from_secs(10))?;
    let url = format!("http://{}:{ECHO_PORT}/", echo2.ip);
    // (first requests, second requests) per mode, in ms.
    let mut times = vec![(Vec::new(), Vec::new()); MODES.len()];
    let mut lookups = vec![0u64; MODES.len()];
    let mut n = 0;
    for round in 0..rounds {
        for (m, mode) in MODES.iter().enumerate() {
            bed.write_config("sidecar.yaml", if m == 1 { MESH_DEFAULT_SIDECAR } else { "" })?;
            let mut pods = Vec::new();
            for _ in 0..callers {
                n += 1;
                let app = format!("caller-{n}");
                let pod = bed.add_pod("node1", "default", &app, "sleep", &[("app", &app)])?;
                bed.enroll(&pod)?;
                pods.push(pod);
            }
            for pod in &pods {
                bed.wait_for_workload("node1", &pod.ip)?;
            }
            bed.wait_for_workload("node1", &echo2.ip)?;
            // The mode is in force on node2: open holds every caller, narrowed none.
            wait_until(&format!("{mode} in force"), Duration::from_secs(15), || {
                let dump = bed.config_dump("node2")?;
                let held = pods.iter().filter(|p| find_workload(&dump, &p.ip).is_some()).count();
                Ok((held == if m == 0 { pods.len() } else { 0 }).then_some(()))
            })?;
            let before = bed.metric("node2", "mesh_ondemand_lookups_total{outcome=\"found\"}")?;
            for pod in &pods {
                let first = timed(pod, &url)?;
                let second = timed(pod, &url)?;
                times[m].0.push(first);
                times[m].1.push(second);
            }
            lookups[m] += bed.metric("node2", "mesh_ondemand_lookups_total{outcome=\"found\"}")? - before;
            let (f, s) = (&times[m].0, &times[m].1);
            println!("  round {} {mode:<38} first p50 {:>6.2} ms, second p50 {:>6.2} ms", round + 1, percentile(f, 0.5), percentile(s, 0.5));
            for pod in &pods {
                bed.unenroll(pod)?;
                bed.remove_pod(pod)?;
            }
        }
    }

    let base = percentile(&times[0].0, 0.5);
    let mut table = String::from(
        "| mode | first request p50 | p90 | max | vs open | second request p50 | lookups (found) |\n|---|---|---|---|---|---|---|\n",
    );
    for (m, mode) in MODES.iter().enumerate() {
        let (f, s) = (&times[m].0, &times[m].1);
        let p50 = percentile(f, 0.5);
        let _ = writeln!(
            table,
            "| {mode} | {p50:.2} ms | {:.2} ms | {:.2} ms | {:.2}x | {:.2} ms | {} of {} |",
            percentile(f, 0.9),
            percentile(f, 1.0),
            if base > 0.0 { p50 / base } else { 0.0 },
            percentile(s, 0.5),
            lookups[m],
            f.len()
        );
    }
    let mut doc = crate::bench::machine();
    let _ = writeln!(doc, "- command: `cargo xtask bench-ondemand --callers {callers} --rounds {rounds}`");
    doc.push_str("- method: two nodes; echo-2 on node2. Each round takes both modes in turn: with no Sidecar\n");
    doc.push_str("  node2 holds every workload; with a mesh default Sidecar (`istio-system/default`, egress `./*`)\n");
    doc.push_str("  node2 holds echo's endpoints but no caller (they back no service). Each mode gets fresh caller\n");
    doc.push_str("  pods on node1, each calling echo-2 by pod IP twice with curl (`time_total`, a new connection and a\n");
    doc.push_str("  new HBONE connection from the pod each time). The first request from a narrowed caller includes\n");
    doc.push_str("  node2's lookup: one round trip to the control plane before the caller's certificate is checked\n");
    doc.push_str("  against the workload at its address; its second request finds the caller held.\n\n");
    doc.push_str(&table);
    println!("\n{table}");
    let path = crate::doc::replace_section(SECTION, &doc)?;
    println!("written to {}", path.display());
    drop(_server);
    bed.finish();
    Ok(())
}
