//! The agent stops: the kernel keeps what it was told. Its links are pinned, so a
//! STRICT pod keeps dropping plaintext in the kernel and captured connections fail
//! closed (no plaintext reaches the application around the agent). A new agent on
//! the same bpffs folder adopts the maps and links, and traffic flows again. Then
//! `mesh-agent uninstall` removes everything: pins gone, pods reached directly.


use mesh_tests::require_root;
use mesh_tests::scenario::{curl_ok, Options, Scene};
use serde_json::json;

#[test]
fn kernel_enforces_while_the_agent_is_down_and_a_new_agent_adopts() -> anyhow::Result<()> {
    if !require_root("restart") {
        return Ok(());
    }
    let mut scene = Scene::start("restart", Options { second_node: false, outsider: true })?;
    let (client, echo1) = (scene.client.clone(), scene.echo1.clone());
    let outsider = scene.outsider.clone().expect("outsider");
    let url = format!("http://{}:8080/", echo1.ip);
    let strict = json!({"peer_authentication": "STRICT"});
    scene.bed.enroll_with(&echo1, strict.clone())?;
    assert_eq!(curl_ok(&client, &url, 5)?.trim(), "hello from echo-1");

    // The agent stops: its pods' links stay pinned.
    scene.bed.stop_agent("node1").expect("agent was running");
    let links = scene.bed.bpffs("node1").join("links");
    assert!(std::fs::read_dir(&links).map(|mut d| d.next().is_some()).unwrap_or(false), "no pinned links in {}", links.display());
    let bed = &scene.bed;
    let seen = scene.server_output("echo-1").matches("GET /").count();
    let drops = bed.drops("node1", &echo1.ip, "strict_plaintext")?;
    let (code, _) = outsider.curl(&url)?;
    assert_eq!(code, 0, "plaintext reached STRICT echo-1 with the agent down");
    assert!(bed.drops("node1", &echo1.ip, "strict_plaintext")? > drops, "the kernel did not drop it");
    let (code, _) = client.curl(&url)?;
    assert_eq!(code, 0, "a captured connection got through with the agent down");
    assert_eq!(scene.server_output("echo-1").matches("GET /").count(), seen, "echo-1 was reached around the agent");

    // A new agent adopts the pinned maps and links; the CNI hook replays its pods.
    let redirected = bed.counter("node1", "connect_redirected")?;
    scene.bed.start_agent("node1")?;
    scene.bed.enroll(&client)?;
    scene.bed.enroll_with(&echo1, strict)?;
    scene.bed.wait_for_workload("node1", &echo1.ip)?;
    assert_eq!(curl_ok(&client, &url, 5)?.trim(), "hello from echo-1");
    assert!(scene.bed.counter("node1", "connect_redirected")? > redirected, "counters restarted instead of being adopted");

    // Uninstall: with the agent stopped, everything it made in the kernel goes.
    scene.bed.stop_agent("node1");
    scene.bed.uninstall("node1")?;
    // Nothing steers or drops any more: the outsider reaches echo-1 directly.
    assert_eq!(curl_ok(&outsider, &url, 3)?.trim(), "hello from echo-1");
    scene.finish();
    Ok(())
}
