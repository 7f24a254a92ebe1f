//! 100,000 short connections through the mesh leave the original-destination maps
//! as they were: every record made at connect() is removed when its socket closes.
//!
//! The connections go to four server ports in turn. One client address to one server
//! address and port can open only about 28,000 connections a minute, mesh or not (the
//! closing side keeps each 4-tuple in TIME_WAIT for 60 s); that limit is TCP's, not
//! what this test is about.

use std::time::{Duration, Instant};

use anyhow::Context;
use mesh_tests::require_root;
use mesh_tests::scenario::{Options, Scene};

const CONNECTIONS: u32 = 100_000;
const RR_PORTS: [u16; 4] = [7000, 7001, 7002, 7003];

#[test]
fn short_connections_leave_no_map_entries() -> anyhow::Result<()> {
    if !require_root("orig_dst_leak") {
        return Ok(());
    }
    let mut scene = Scene::start("orig-leak", Options { second_node: false, outsider: false })?;
    let rr = mesh_tests::binary("mesh-rr")?;
    let rr = rr.to_str().context("path")?.to_string();
    for port in RR_PORTS {
        let server = scene.echo1.spawn(&[&rr, "server", "--port", &port.to_string(), "--size", "1"])?;
        scene.servers.push((format!("rr-{port}"), server));
        scene.echo1.wait_listening(port, Duration::from_secs(10))?;
    }
    let bed = &scene.bed;
    let entries = |map: &str| -> anyhow::Result<usize> { Ok(bed.map_dump("node1", map)?.as_array().map_or(0, Vec::len)) };
    let (orig_before, cookie_before) = (entries("ORIG_DST")?, entries("ORIG_BY_COOKIE")?);
    let recorded_before = bed.counter("node1", "orig_recorded")?;

    let started = Instant::now();
    let addr = RR_PORTS.map(|p| format!("{}:{p}", scene.echo1.ip)).join(",");
    let n = CONNECTIONS.to_string();
    let out = scene.client.run_timeout(
        &[&rr, "client", "--addr", &addr, "--size", "1", "--count", &n, "--seconds", "240", "--connect-each"],
        Duration::from_secs(260),
    )?;
    assert!(out.status.success(), "mesh-rr failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["count"].as_u64(), Some(CONNECTIONS as u64), "not every connection completed: {report}");
    eprintln!("{CONNECTIONS} meshed connections in {:.1} s", started.elapsed().as_secs_f64());

    let recorded = bed.counter("node1", "orig_recorded")? - recorded_before;
    assert!(recorded >= CONNECTIONS as u64, "only {recorded} connections were captured");
    // Closing sockets finish their state changes shortly after the client exits.
    mesh_tests::wait_until("ORIG_DST and ORIG_BY_COOKIE back to where they were", Duration::from_secs(10), || {
        let now = (entries("ORIG_DST")?, entries("ORIG_BY_COOKIE")?);
        Ok((now.0 <= orig_before && now.1 <= cookie_before).then_some(()))
    })?;
    scene.finish();
    Ok(())
}
