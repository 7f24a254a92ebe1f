//! A pod outside the mesh (namespace `legacy`, never enrolled) reaches echo-1 by IP:
//! no outbound capture and no redirect counted on its side; on echo-1's side the
//! plaintext is steered through the agent (one `inbound_plaintext` line, no mesh
//! identity). And an enrolled pod calling a destination outside the mesh is not
//! captured either.

use std::time::Duration;

use mesh_tests::require_root;
use mesh_tests::scenario::{curl_ok, Options, Scene};

#[test]
fn pods_outside_the_mesh_are_not_captured() -> anyhow::Result<()> {
    if !require_root("not_enrolled") {
        return Ok(());
    }
    let mut scene = Scene::start("not-enrolled", Options { second_node: false, outsider: true })?;
    let outsider = scene.outsider.clone().expect("outsider");
    scene.start_echo(&outsider)?;
    let bed = &scene.bed;
    // Let any start-up connections settle before reading the counter.
    std::thread::sleep(Duration::from_millis(500));
    let before = bed.counter("node1", "connect_redirected")?;
    let log_before = bed.access_log("node1").len();

    let body = curl_ok(&outsider, &format!("http://{}:8080/", scene.echo1.ip), 3)?;
    assert_eq!(body.trim(), "hello from echo-1");
    std::thread::sleep(Duration::from_millis(500));

    let after = bed.counter("node1", "connect_redirected")?;
    assert_eq!(before, after, "connect_redirected grew for a pod that is not enrolled");
    let new_lines: Vec<String> = bed.access_log("node1").into_iter().skip(log_before).collect();
    // No outbound capture on the outsider's side; exactly one inbound plaintext line on
    // echo-1's side, naming the outsider's address and no identity.
    let field = |l: &String, k| mesh_tests::log_field(l, k).unwrap_or_default();
    assert_eq!(new_lines.len(), 1, "expected one access-log line (inbound plaintext at echo-1): {new_lines:?}");
    let l = &new_lines[0];
    assert_eq!(field(l, "direction"), "inbound_plaintext", "{l}");
    assert!(field(l, "src.addr").starts_with(&format!("{}:", outsider.ip)), "{l}");
    assert_eq!(field(l, "src.identity"), "", "a pod outside the mesh has no identity: {l}");
    assert_eq!(field(l, "dst.addr"), format!("{}:8080", scene.echo1.ip), "{l}");

    // An enrolled pod to a destination outside the mesh: seen, not redirected.
    let seen_before = bed.counter("node1", "connect_seen")?;
    let body = curl_ok(&scene.client, &format!("http://{}:8080/", outsider.ip), 3)?;
    assert_eq!(body.trim(), "hello from outsider");
    assert!(bed.counter("node1", "connect_seen")? > seen_before, "the client's connect was not seen by connect4");
    assert_eq!(bed.counter("node1", "connect_redirected")?, after, "a connect to a non-mesh destination was redirected");

    // The mesh still works for enrolled pods, and that one is counted.
    let body = curl_ok(&scene.client, &format!("http://{}:8080/", scene.echo1.ip), 5)?;
    assert_eq!(body.trim(), "hello from echo-1");
    let counted = bed.counter("node1", "connect_redirected")?;
    assert!(counted > after, "an enrolled client's connect was not counted ({after} -> {counted})");
    scene.finish();
    Ok(())
}
