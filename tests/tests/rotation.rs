//! Certificate rotation under load: with an 8 s certificate lifetime each agent renews
//! its pods' certificates at half-life, several times during 20 s of load across both
//! nodes, over long-lived connections (one connection, many round trips) and over
//! a new connection per request. No request fails, and the certificate each agent
//! serves changes at least twice for every identity (serials from the admin dump).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use mesh_tests::scenario::{curl_ok, rr, rr_finish, Options, Scene, RR_PORT};
use mesh_tests::{binary, require_root, TestBed};

const LOAD_SECONDS: u32 = 20;

#[test]
fn certificates_rotate_under_load_without_a_failed_request() -> Result<()> {
    if !require_root("rotation") {
        return Ok(());
    }
    let mut bed = TestBed::new("rotation")?;
    bed.control_plane_args = ["--cert-ttl", "8s"].map(String::from).to_vec();
    let scene = Scene::start_in(bed, Options { second_node: true, outsider: false })?;
    let (client, echo1) = (scene.client.clone(), scene.echo1.clone());
    let echo2 = scene.echo2.clone().expect("echo-2");
    let rr_bin = binary("mesh-rr")?;
    let mut servers = Vec::new();
    for p in [&echo1, &echo2] {
        servers.push(p.spawn(&[rr_bin.to_str().context("path")?, "server", "--port", &RR_PORT.to_string()])?);
        p.wait_listening(RR_PORT, Duration::from_secs(10))?;
    }
    // Every identity gets its first certificate before the load starts.
    assert_eq!(curl_ok(&client, &format!("http://{}:8080/", echo2.ip), 5)?.trim(), "hello from echo-2");
    assert_eq!(curl_ok(&echo2, &format!("http://{}:8080/", echo1.ip), 5)?.trim(), "hello from echo-1");
    let watched = [("node1", client.identity()), ("node1", echo1.identity()), ("node2", echo2.identity())];

    let loads = vec![
        ("client -> echo-1, same node, new connections", rr(&client, &echo1.ip, LOAD_SECONDS, true)?),
        ("client -> echo-2, across nodes, new connections", rr(&client, &echo2.ip, LOAD_SECONDS, true)?),
        ("echo-2 -> echo-1, into node1, new connections", rr(&echo2, &echo1.ip, LOAD_SECONDS, true)?),
        ("client -> echo-1, same node, one connection", rr(&client, &echo1.ip, LOAD_SECONDS, false)?),
        ("client -> echo-2, across nodes, one connection", rr(&client, &echo2.ip, LOAD_SECONDS, false)?),
    ];
    // Meanwhile, the certificates the agents hold (and serve).
    let mut seen: BTreeMap<(&str, String), BTreeSet<String>> = BTreeMap::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(LOAD_SECONDS as u64) {
        for (node, id) in &watched {
            if let Some((serial, not_after)) = scene.bed.certificate(node, id)? {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
                ensure!(not_after + 1 >= now, "{node} holds an expired certificate for {id} (expired at {not_after}, now {now})");
                seen.entry((node, id.clone())).or_default().insert(serial);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for (what, p) in loads {
        let (ok, sum) = rr_finish(p)?;
        eprintln!("{what}: {sum}");
        ensure!(ok && sum["failed"] == 0 && sum["count"].as_u64() > Some(100), "{what}: requests failed: {sum}");
    }
    for (node, id) in &watched {
        let serials = seen.get(&(*node, id.clone())).map(BTreeSet::len).unwrap_or(0);
        eprintln!("{node} {id}: {serials} certificates during the load");
        // The first one and at least two renewals.
        ensure!(serials >= 3, "{node} served only {serials} certificate(s) for {id} in {LOAD_SECONDS} s with an 8 s lifetime");
    }
    let renewals = scene.bed.agent_log("node1").matches("identity: certificate issued").count();
    ensure!(renewals >= 6, "node1 logged only {renewals} issued certificates");
    drop(servers);
    scene.finish();
    Ok(())
}
