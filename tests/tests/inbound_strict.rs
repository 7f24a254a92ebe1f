//! STRICT mTLS in the kernel: plaintext to a STRICT pod is dropped (and counted in
//! `DROPS`) before any userspace work, HBONE from a meshed client still works, the
//! kubelet probe source (169.254.7.127, the agent's default `--probe-source`) is let
//! through, and a port-level PERMISSIVE override opens one port again.

use std::time::Duration;

use mesh_tests::log_field;
use mesh_tests::require_root;
use mesh_tests::scenario::{curl_ok, Options, Scene};
use serde_json::json;

const PROBE_SOURCE: &str = "169.254.7.127";

#[test]
fn strict_pods_drop_plaintext_in_the_kernel() -> anyhow::Result<()> {
    if !require_root("inbound_strict") {
        return Ok(());
    }
    let scene = Scene::start("inbound-strict", Options { second_node: false, outsider: true })?;
    let outsider = scene.outsider.clone().expect("outsider");
    let (client, echo1) = (scene.client.clone(), scene.echo1.clone());
    let bed = &scene.bed;
    let url = format!("http://{}:8080/", echo1.ip);

    bed.enroll_with(&echo1, json!({"peer_authentication": "STRICT"}))?;
    let modes = bed.map_dump("node1", "INBOUND")?;
    assert!(
        modes.as_array().into_iter().flatten().any(|m| m["pod"] == echo1.ip.as_str() && m["mode"] == "STRICT"),
        "INBOUND does not say echo-1 is STRICT: {modes}"
    );
    let requests_before = scene.server_output("echo-1").matches("GET / HTTP/1.1").count();

    // Plaintext from outside the mesh: no answer (SYNs dropped), bounded by curl's 5 s.
    let (code, err) = outsider.curl(&url)?;
    assert_eq!(code, 0, "plaintext to a STRICT pod got an HTTP answer: {err}");
    let drops = bed.drops("node1", &echo1.ip, "strict_plaintext")?;
    assert!(drops >= 1, "DROPS has no strict_plaintext entry for echo-1");
    let series = format!(r#"mesh_kernel_drops_total{{pod="{}",reason="strict_plaintext"}}"#, echo1.ip);
    assert!(bed.metric("node1", &series)? >= drops, "{series} in /metrics is behind DROPS");
    assert_eq!(scene.server_output("echo-1").matches("GET / HTTP/1.1").count(), requests_before, "the request reached the app");
    let leaked: Vec<String> = bed
        .access_log("node1")
        .into_iter()
        .filter(|l| log_field(l, "direction").as_deref() == Some("inbound_plaintext"))
        .collect();
    assert!(leaked.is_empty(), "dropped plaintext reached the agent: {leaked:?}");
    // meshctl explains it: dropped by steer_inbound, STRICT, with the count so far.
    let why = bed.explain("node1", &outsider.ip, &format!("{}:8080", echo1.ip))?;
    assert_eq!(why["reason"], "strict_plaintext", "{why:#}");
    assert!(why["steps"].as_array().is_some_and(|s| s.iter().any(|s| s["program"] == "steer_inbound")), "{why:#}");
    assert!(why["drops"].as_array().is_some_and(|d| d.iter().any(|r| r["reason"] == "strict_plaintext")), "{why:#}");

    // HBONE from a meshed client still passes.
    assert_eq!(curl_ok(&client, &url, 5)?.trim(), "hello from echo-1");

    // The kubelet's probe source passes (not steered, not dropped), from the node.
    bed.run_in_node("node1", &["ip", "addr", "add", &format!("{PROBE_SOURCE}/32"), "dev", "br0"])?;
    let out = bed.run_in_node("node1", &["curl", "-sS", "--max-time", "5", "--interface", PROBE_SOURCE, &url])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello from echo-1", "probe: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(bed.drops("node1", &echo1.ip, "strict_plaintext")?, drops, "the probe was dropped");
    let why = bed.explain("node1", PROBE_SOURCE, &format!("{}:8080", echo1.ip))?;
    assert_eq!(why["outcome"], "delivered", "{why:#}");

    // A port-level PERMISSIVE override opens 8080 again (through the agent).
    bed.enroll_with(&echo1, json!({"peer_authentication": "STRICT", "port_level_mtls": {"8080": "PERMISSIVE"}}))?;
    assert_eq!(curl_ok(&outsider, &url, 3)?.trim(), "hello from echo-1");
    let why = bed.explain("node1", &outsider.ip, &format!("{}:8080", echo1.ip))?;
    assert_eq!(why["outcome"], "steered_to_agent", "{why:#}");
    mesh_tests::wait_until("inbound_plaintext line for the PERMISSIVE port", Duration::from_secs(5), || {
        Ok(bed
            .access_log("node1")
            .iter()
            .any(|l| log_field(l, "direction").as_deref() == Some("inbound_plaintext"))
            .then_some(()))
    })?;
    scene.finish();
    Ok(())
}
