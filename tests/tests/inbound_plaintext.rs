//! Plaintext from a pod outside the mesh to an enrolled pod (PERMISSIVE, the default)
//! is steered in the kernel (sk_lookup) to the agent's inbound listener in that pod,
//! which logs it with the original destination and the source and forwards it. A port
//! the pod excludes (`excludeInboundPorts`) is reached directly; a destination port an
//! enrolled client excludes (`excludeOutboundPorts`) is not redirected.

use std::time::Duration;

use mesh_tests::log_field;
use mesh_tests::require_root;
use mesh_tests::scenario::{curl_ok, Options, Scene, ECHO_VIP};
use serde_json::json;

const EXCLUDE_IN: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
const EXCLUDE_OUT: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";

fn plaintext_lines(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| log_field(l, "direction").as_deref() == Some("inbound_plaintext")).collect()
}

fn src_ip(line: &str) -> Option<String> {
    let a: std::net::SocketAddr = log_field(line, "src.addr")?.parse().ok()?;
    Some(a.ip().to_string())
}

#[test]
fn plaintext_to_an_enrolled_pod_goes_through_the_agent() -> anyhow::Result<()> {
    if !require_root("inbound_plaintext") {
        return Ok(());
    }
    let scene = Scene::start("inbound-plaintext", Options { second_node: false, outsider: true })?;
    let outsider = scene.outsider.clone().expect("outsider");
    let (client, echo1) = (scene.client.clone(), scene.echo1.clone());
    let bed = &scene.bed;
    let echo_addr = format!("{}:8080", echo1.ip);
    let url = format!("http://{echo_addr}/");

    // 1. PERMISSIVE: steered through echo-1's agent, original destination kept.
    let steered_before = bed.counter("node1", "inbound_steered")?;
    assert_eq!(curl_ok(&outsider, &url, 3)?.trim(), "hello from echo-1");
    let line = mesh_tests::wait_until("inbound_plaintext access-log line", Duration::from_secs(5), || {
        let lines = bed.access_log("node1");
        Ok(plaintext_lines(&lines).into_iter().find(|l| src_ip(l).as_deref() == Some(outsider.ip.as_str())).cloned())
    })?;
    assert_eq!(log_field(&line, "dst.addr").as_deref(), Some(echo_addr.as_str()), "{line}");
    assert_eq!(log_field(&line, "dst.workload").as_deref(), Some("default/echo-1"), "{line}");
    // The agent knows the outsider's Pod (not its identity: plaintext proves none).
    assert_eq!(log_field(&line, "src.workload").as_deref(), Some("legacy/outsider"), "{line}");
    assert_eq!(log_field(&line, "src.identity").as_deref(), Some(""), "{line}");
    assert!(log_field(&line, "error").is_none(), "{line}");
    assert!(bed.counter("node1", "inbound_steered")? > steered_before, "inbound_steered did not grow");
    // The application sees the outsider's address, not the agent's or its own.
    let printed = scene.server_output("echo-1");
    assert!(printed.contains(&format!("from {}:", outsider.ip)), "echo-1 did not see the outsider's address:\n{printed}");

    // 2. excludeInboundPorts: the port is reached directly, the agent sees nothing.
    bed.enroll_with(&echo1, json!({"annotations": {EXCLUDE_IN: "8080"}}))?;
    let rules = bed.map_dump("node1", "INBOUND_PORTS")?;
    assert!(
        rules.as_array().into_iter().flatten().any(|r| r["pod"] == echo1.ip.as_str() && r["port"] == 8080 && r["mode"] == "BYPASS"),
        "INBOUND_PORTS has no BYPASS rule for {echo_addr}: {rules}"
    );
    let before = plaintext_lines(&bed.access_log("node1")).len();
    assert_eq!(curl_ok(&outsider, &url, 3)?.trim(), "hello from echo-1");
    std::thread::sleep(Duration::from_millis(500));
    let after = bed.access_log("node1");
    assert_eq!(plaintext_lines(&after).len(), before, "an excluded port went through the agent: {after:?}");

    // 3. excludeOutboundPorts on the client: connect() to a mesh destination on 8080
    // is not redirected; it arrives at echo-1 (PERMISSIVE again) as plaintext.
    bed.enroll_with(&echo1, json!({}))?;
    bed.enroll_with(&client, json!({"annotations": {EXCLUDE_OUT: "8080"}}))?;
    let redirected = bed.counter("node1", "connect_redirected")?;
    let excluded = bed.counter("node1", "connect_excluded")?;
    assert_eq!(curl_ok(&client, &url, 3)?.trim(), "hello from echo-1");
    assert_eq!(bed.counter("node1", "connect_redirected")?, redirected, "a connect to an excluded port was redirected");
    assert!(bed.counter("node1", "connect_excluded")? > excluded, "connect_excluded did not grow");
    let line = mesh_tests::wait_until("client's plaintext at echo-1", Duration::from_secs(5), || {
        let lines = bed.access_log("node1");
        Ok(plaintext_lines(&lines).into_iter().find(|l| src_ip(l).as_deref() == Some(client.ip.as_str())).cloned())
    })?;
    assert_eq!(log_field(&line, "src.workload").as_deref(), Some("default/client"), "{line}");
    // Other ports are still captured.
    assert_eq!(curl_ok(&client, &format!("http://{ECHO_VIP}/"), 3)?.trim(), "hello from echo-1");
    assert!(bed.counter("node1", "connect_redirected")? > redirected, "port 80 was not captured");
    scene.finish();
    Ok(())
}
