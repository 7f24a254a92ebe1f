//! A pod outside the mesh (namespace `legacy`, never enrolled) reaches echo-1 by IP
//! directly: no outbound capture, no access-log line naming it, no redirect counted.
//! And an enrolled pod calling a destination outside the mesh is not captured either.

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
    // Nothing of this connection passed through the agent: no outbound capture on the
    // outsider's side and, as inbound plaintext is not steered yet, no inbound line.
    assert!(new_lines.is_empty(), "access log has lines for a connection outside the mesh: {new_lines:?}");

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
