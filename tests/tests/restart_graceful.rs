//! Graceful restart: node1's agent is replaced while connections keep arriving. The
//! new agent takes the old one's listeners over the hand-over socket, the old one
//! drains and exits. Under connect-each load, same node (client -> echo-1, STRICT),
//! across nodes (client -> echo-2) and into node1 (echo-2 -> echo-1), no request fails; a connection opened before
//! the restart keeps working until it ends; plaintext to the STRICT pod is dropped in
//! the kernel all along and capture never lapses (node2 sees no plaintext from the
//! client); a SIGTERM to the draining agent does not cut its drain short. A second restart works too, and its drain ends at the drain timeout,
//! closing the long-lived connection that outlived it.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use mesh_tests::scenario::{curl_ok, rr, rr_finish as finish, Options, Scene, RR_PORT};
use mesh_tests::{binary, log_field, require_root};
use serde_json::json;

fn outbound_lines(log: &str) -> usize {
    mesh_tests::bed::access_lines(log)
        .iter()
        .filter(|l| log_field(l, "direction").as_deref() == Some("outbound"))
        .count()
}

#[test]
fn agent_restarts_without_a_failed_request() -> Result<()> {
    if !require_root("restart_graceful") {
        return Ok(());
    }
    let mut scene = Scene::start("restart-graceful", Options { second_node: true, outsider: true })?;
    let (client, echo1) = (scene.client.clone(), scene.echo1.clone());
    let echo2 = scene.echo2.clone().expect("echo-2");
    let outsider = scene.outsider.clone().expect("outsider");
    scene.bed.enroll_with(&echo1, json!({"peer_authentication": "STRICT"}))?;
    let rr_bin = binary("mesh-rr")?;
    let mut servers = Vec::new();
    for p in [&echo1, &echo2] {
        servers.push(p.spawn(&[rr_bin.to_str().context("path")?, "server", "--port", &RR_PORT.to_string()])?);
        p.wait_listening(RR_PORT, Duration::from_secs(10))?;
    }
    let url = format!("http://{}:8080/", echo1.ip);
    assert_eq!(curl_ok(&client, &url, 5)?.trim(), "hello from echo-1");
    // The agent the first restart starts drains for 3 s when the second one replaces it.
    scene.bed.drain_timeout = Duration::from_secs(3);

    // First restart, under load, with a long-lived connection and plaintext probes.
    let same = rr(&client, &echo1.ip, 12, true)?;
    let cross = rr(&client, &echo2.ip, 12, true)?;
    // Into node1 from node2: node2's pooled HBONE connection to the old agent gets
    // GOAWAY and its next streams go to the new agent.
    let into = rr(&echo2, &echo1.ip, 12, true)?;
    let long = rr(&client, &echo1.ip, 9, false)?;
    let drops = scene.bed.drops("node1", &echo1.ip, "strict_plaintext")?;
    let requests = scene.server_output("echo-1").matches("GET /").count();
    let probe = format!("for i in $(seq 1 10); do curl -s -o /dev/null --max-time 1 -w '%{{http_code}}\\n' {url}; done");
    let mut probes = outsider.spawn(&["sh", "-c", &probe])?;
    std::thread::sleep(Duration::from_millis(1500));
    // Kubernetes sends the old pod SIGTERM once the new one is ready: the drain goes on.
    let old_pid = scene.bed.agent_pid("node1")? as i32;
    let sigterm = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        // SAFETY: kill(2) on the bed's own child, which is draining until the long-lived connection ends.
        unsafe { libc::kill(old_pid, libc::SIGTERM) };
    });
    let first = scene.bed.restart_agent_graceful("node1")?;
    sigterm.join().expect("signal thread");
    eprintln!("first restart: {first:?}");

    let (ok, long_sum) = finish(long)?;
    ensure!(ok && long_sum["count"].as_u64() > Some(0), "the long-lived connection broke: {long_sum}");
    ensure!(first.old_exited > first.took_over + Duration::from_secs(3), "the old agent did not wait for the long-lived connection: {first:?}");
    for (what, p) in [("same node", same), ("across nodes", cross), ("from node2 into node1", into)] {
        let (ok, sum) = finish(p)?;
        eprintln!("{what}: {sum}");
        ensure!(ok && sum["failed"] == 0 && sum["count"].as_u64() > Some(100), "{what}: requests failed: {sum}");
    }
    let old_log = std::fs::read_to_string(scene.bed.log_dir.join("agent-node1.drained-1.log"))?;
    let new_log = scene.bed.agent_log("node1");
    for step in [
        "hand-over: a new agent asks for our pods",
        "hand-over: the new agent took over",
        "asked to stop while draining",
        "drained: every connection ended",
    ] {
        ensure!(old_log.contains(step), "the old agent did not log {step:?}");
    }
    for step in ["hand-over: received the running agent's pods", "hand-over: pods adopted", "hand-over complete"] {
        ensure!(new_log.contains(step), "the new agent did not log {step:?}");
    }
    // Both agents carried the load: the hand-over happened under it.
    ensure!(outbound_lines(&old_log) > 0 && outbound_lines(&new_log) > 0, "the load did not span the hand-over");

    // Enforcement never lapsed: every probe was dropped in the kernel, none reached echo-1.
    probes.wait_timeout(Duration::from_secs(30)).context("probes did not finish")?;
    let codes: Vec<String> = probes.output().lines().map(str::to_string).collect();
    ensure!(codes.len() == 10 && codes.iter().all(|c| c == "000"), "plaintext reached STRICT echo-1: {codes:?}");
    ensure!(scene.bed.drops("node1", &echo1.ip, "strict_plaintext")? >= drops + 10, "the kernel did not drop every probe");
    ensure!(scene.server_output("echo-1").matches("GET /").count() == requests, "echo-1 was reached around the agent");
    let plaintext_on_node2 = scene
        .bed
        .access_log("node2")
        .into_iter()
        .filter(|l| log_field(l, "direction").as_deref() == Some("inbound_plaintext"))
        .count();
    ensure!(plaintext_on_node2 == 0, "capture lapsed: node2 took plaintext from the client");

    // The new agent holds the pods: CNI, admin and data path answer.
    let pods = scene.bed.config_dump("node1")?["pods"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(pods == 2, "the new agent holds {pods} pods, expected 2");
    scene.bed.enroll_with(&echo1, json!({"peer_authentication": "STRICT"}))?;
    assert_eq!(curl_ok(&client, &url, 5)?.trim(), "hello from echo-1");

    // Second restart: no failed request either; the drain ends at its 3 s timeout and
    // closes the connection that outlived it.
    let same = rr(&client, &echo1.ip, 8, true)?;
    let long = rr(&client, &echo1.ip, 30, false)?;
    std::thread::sleep(Duration::from_millis(1500));
    let second = scene.bed.restart_agent_graceful("node1")?;
    eprintln!("second restart: {second:?}");
    let drained_for = second.old_exited - second.took_over;
    ensure!(drained_for < Duration::from_secs(8), "the drain took {drained_for:?}, past its 3 s timeout");
    let old_log = std::fs::read_to_string(scene.bed.log_dir.join("agent-node1.drained-2.log"))?;
    ensure!(old_log.contains("drain timeout: closing the remaining connections"), "no drain timeout in the old agent's log");
    let (ok, sum) = finish(same)?;
    ensure!(ok && sum["failed"] == 0 && sum["count"].as_u64() > Some(100), "second restart: requests failed: {sum}");
    let mut long = long;
    let st = long.wait_timeout(Duration::from_secs(60)).context("the long-lived mesh-rr did not finish")?;
    ensure!(!st.success(), "a connection outlived the drain timeout of its agent");
    assert_eq!(curl_ok(&client, &format!("http://{}:8080/", echo2.ip), 5)?.trim(), "hello from echo-2");
    drop(servers);
    scene.finish();
    Ok(())
}
