//! Client → echo on the same node, by service VIP and by pod IP: HTTP 200, the body,
//! the request reached the server, and the agent logged both SPIFFE identities.

use mesh_tests::require_root;
use mesh_tests::scenario::{curl_ok, Options, Scene, ECHO_VIP};

#[test]
fn same_node_through_the_mesh() -> anyhow::Result<()> {
    if !require_root("same_node") {
        return Ok(());
    }
    let scene = Scene::start("same-node", Options { second_node: false, outsider: false })?;
    let body = curl_ok(&scene.client, &format!("http://{ECHO_VIP}/"), 5)?;
    assert_eq!(body.trim(), "hello from echo-1");
    let body = curl_ok(&scene.client, &format!("http://{}:8080/", scene.echo1.ip), 5)?;
    assert_eq!(body.trim(), "hello from echo-1");

    let printed = scene.server_output("echo-1");
    assert!(printed.matches("GET / HTTP/1.1").count() >= 2, "echo-1 printed both requests:\n{printed}");

    let client_id = scene.client.identity();
    let echo_id = scene.echo1.identity();
    assert_eq!(client_id, "spiffe://cluster.local/ns/default/sa/sleep");
    let bed = &scene.bed;
    mesh_tests::wait_until("access log with both identities", std::time::Duration::from_secs(5), || {
        let lines = bed.access_log("node1");
        Ok(lines
            .iter()
            .any(|l| {
                mesh_tests::log_field(l, "src.identity").as_deref() == Some(client_id.as_str())
                    && mesh_tests::log_field(l, "dst.identity").as_deref() == Some(echo_id.as_str())
            })
            .then_some(()))
    })?;
    scene.finish();
    Ok(())
}
