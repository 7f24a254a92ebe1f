//! Node tokens: an agent gets certificates only with its own node's token, read from
//! its --node-token-file at each CA call. With a good token the mesh works across
//! nodes; with garbage, no file, or another node's token in that file the CA refuses
//! a new pod's certificate (UNAUTHENTICATED, or PERMISSION_DENIED: node2's token does
//! not cover node1's pod), the pod's traffic fails, and both the agent and the control
//! plane log why; putting the right token back (rotation) works without a restart.

use std::time::Duration;

use anyhow::{ensure, Result};
use mesh_tests::scenario::{curl_ok, Options, Scene};
use mesh_tests::{require_root, wait_until};

#[test]
fn certificates_need_the_nodes_own_token() -> Result<()> {
    if !require_root("node_token") {
        return Ok(());
    }
    let mut scene = Scene::start("node-token", Options { second_node: true, outsider: false })?;
    let echo1 = scene.echo1.clone();
    let echo2 = scene.echo2.clone().expect("echo-2");
    // A good token: certificates on both nodes, traffic across them.
    assert_eq!(curl_ok(&scene.client, &format!("http://{}:8080/", echo2.ip), 5)?.trim(), "hello from echo-2");
    for node in ["node1", "node2"] {
        ensure!(scene.bed.agent_log(node).contains("identity: certificate issued"), "{node}: no certificate issued");
    }

    // A new pod on node1 whose identity has no certificate yet.
    let late = scene.bed.add_pod("node1", "default", "late", "late", &[("app", "late")])?;
    scene.bed.enroll(&late)?;
    scene.bed.wait_for_workload("node1", &late.ip)?;
    let url = format!("http://{}:8080/", echo1.ip);
    let token_file = scene.bed.node_token_file("node1")?;
    let good = std::fs::read_to_string(&token_file)?;
    let node2_token = std::fs::read_to_string(scene.bed.node_token_file("node2")?)?;
    let refused = |what: &str, agent_says: &str, cp_says: &str| -> Result<()> {
        let (code, body) = late.curl(&url)?;
        ensure!(code != 200, "{what}: the pod's request went through ({code}: {body})");
        wait_until(&format!("{what}: the agent saying why"), Duration::from_secs(10), || {
            let log = scene.bed.agent_log("node1");
            Ok(log.lines().any(|l| l.contains("refused a certificate for spiffe://cluster.local/ns/default/sa/late") && l.contains(agent_says))
                .then_some(()))
        })?;
        wait_until(&format!("{what}: the control plane saying why"), Duration::from_secs(10), || {
            Ok(scene.bed.control_plane_log().contains(cp_says).then_some(()))
        })?;
        Ok(())
    };

    std::fs::write(&token_file, "garbage\n")?;
    refused("garbage", "malformed node token", "ca: refused an agent: malformed node token")?;

    std::fs::remove_file(&token_file)?;
    let (code, _) = late.curl(&url)?;
    ensure!(code != 200, "no token file: the pod's request went through");
    wait_until("no token file: the agent saying why", Duration::from_secs(10), || {
        let log = scene.bed.agent_log("node1");
        Ok(log.lines().any(|l| l.contains("no certificate for spiffe://cluster.local/ns/default/sa/late: cannot read the node token file")).then_some(()))
    })?;

    // node2's own, valid token: it names node2, which runs no pod as `late`.
    std::fs::write(&token_file, &node2_token)?;
    refused(
        "node2's token",
        "node \"node2\" runs no pod with identity spiffe://cluster.local/ns/default/sa/late",
        "ca: refused a certificate: no pod on that node runs as that identity",
    )?;

    // The right token again: the agent reads it at the next call.
    std::fs::write(&token_file, &good)?;
    assert_eq!(curl_ok(&late, &url, 10)?.trim(), "hello from echo-1");
    // Pods that had their certificates kept working all along.
    assert_eq!(curl_ok(&scene.client, &format!("http://{}:8080/", echo2.ip), 3)?.trim(), "hello from echo-2");
    scene.finish();
    Ok(())
}
