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
    // The application sees the caller's own address, not the agent's or its own.
    let from_client = format!("from {}:", scene.client.ip);
    assert!(printed.matches(&from_client).count() >= 2, "echo-1 saw the client's address:\n{printed}");

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

    // Prometheus metrics: the proxy's connections and the kernel's counters.
    let metric = |series: &str| bed.metric("node1", series);
    assert!(metric(r#"mesh_connections_total{direction="outbound",result="success"}"#)? >= 2);
    assert!(metric(r#"mesh_connections_total{direction="inbound",result="success"}"#)? >= 2);
    assert!(metric(r#"mesh_kernel_events_total{event="connect_redirected"}"#)? >= 2);
    // Flow events from the kernel's ring buffer: both connections opened and closed.
    mesh_tests::wait_until("flow events for both connections", std::time::Duration::from_secs(5), || {
        let open = metric(r#"mesh_kernel_flows_total{event="open"}"#)?;
        let close = metric(r#"mesh_kernel_flows_total{event="close"}"#)?;
        let sent = metric(r#"mesh_kernel_flow_bytes_total{direction="sent"}"#)?;
        Ok((open >= 2 && close >= 2 && sent > 0).then_some(()))
    })?;

    // The operator's live view: two refreshes of counters, as JSON lines.
    let bin = mesh_tests::meshctl_binary()?;
    let bpffs = bed.bpffs("node1");
    let out = mesh_tests::proc::run(
        &[bin.to_str().unwrap_or("meshctl"), "--bpffs", bpffs.to_str().unwrap_or_default(), "--json", "maps", "watch", "--count", "2", "--interval", "0.1"],
        None,
        None,
        std::time::Duration::from_secs(10),
    )?;
    assert!(out.status.success(), "meshctl maps watch: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2);
    assert!(lines[1]["connect_redirected"].as_u64().unwrap_or(0) >= 2, "watch shows the redirects: {lines:?}");
    scene.finish();
    Ok(())
}
