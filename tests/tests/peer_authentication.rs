//! PeerAuthentication from the config folder to the kernel, with nothing restarted:
//! a mesh-wide STRICT drops the outsider's plaintext to echo-1 in `steer_inbound`
//! (`strict_plaintext`, and `meshctl explain` says so) while the meshed client still
//! gets through over HBONE; a workload `portLevelMtls` PERMISSIVE opens 8080 again
//! (steered to the agent), a namespace PERMISSIVE opens every port; deleting the
//! files makes echo-1 PERMISSIVE again. The pod is enrolled once, without
//! `peer_authentication` in its event.

use std::time::Duration;

use anyhow::Context;
use mesh_tests::require_root;
use mesh_tests::scenario::{curl_ok, Options, Scene};
use mesh_tests::{wait_until, TestBed};

const MESH_STRICT: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
";

const ECHO_8080_PERMISSIVE: &str = "apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: echo-http, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
";

const NAMESPACE_PERMISSIVE: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: PERMISSIVE}
";

/// Waits until `meshctl explain` of `src` -> `dst` on node1 ends in `outcome`.
fn wait_outcome(bed: &TestBed, src: &str, dst: &str, outcome: &str) -> anyhow::Result<serde_json::Value> {
    wait_until(&format!("explain {src} -> {dst}: {outcome}"), Duration::from_secs(15), || {
        let why = bed.explain("node1", src, dst)?;
        Ok((why["outcome"] == outcome || why["reason"] == outcome).then_some(why))
    })
}

#[test]
fn peer_authentication_from_the_folder_reaches_the_kernel() -> anyhow::Result<()> {
    if !require_root("peer_authentication") {
        return Ok(());
    }
    let scene = Scene::start("peer-authentication", Options { second_node: false, outsider: true })?;
    let outsider = scene.outsider.clone().expect("outsider");
    let (client, echo1) = (scene.client.clone(), scene.echo1.clone());
    let bed = &scene.bed;
    let agent = bed.agent_pid("node1")?;
    let url = format!("http://{}:8080/", echo1.ip);
    let http = format!("{}:8080", echo1.ip);
    let other_port = format!("{}:9090", echo1.ip);
    assert_eq!(curl_ok(&outsider, &url, 3)?.trim(), "hello from echo-1", "PERMISSIVE at first");

    // Mesh-wide STRICT: the kernel drops the outsider's plaintext.
    bed.write_config("pa-mesh.yaml", MESH_STRICT)?;
    wait_outcome(bed, &outsider.ip, &http, "strict_plaintext")?;
    let modes = bed.map_dump("node1", "INBOUND")?;
    assert!(
        modes.as_array().into_iter().flatten().any(|m| m["pod"] == echo1.ip.as_str() && m["mode"] == "STRICT"),
        "INBOUND does not say echo-1 is STRICT: {modes}"
    );
    let drops = bed.drops("node1", &echo1.ip, "strict_plaintext")?;
    let seen = scene.server_output("echo-1").matches("GET / HTTP/1.1").count();
    let (code, err) = outsider.curl(&url)?;
    assert_eq!(code, 0, "plaintext to a STRICT pod got an HTTP answer: {err}");
    assert!(bed.drops("node1", &echo1.ip, "strict_plaintext")? > drops, "no strict_plaintext drop counted for echo-1");
    assert_eq!(scene.server_output("echo-1").matches("GET / HTTP/1.1").count(), seen, "the request reached the app");
    let why = bed.explain("node1", &outsider.ip, &http)?;
    assert_eq!(why["reason"], "strict_plaintext", "{why:#}");
    assert!(why["steps"].as_array().is_some_and(|s| s.iter().any(|s| s["program"] == "steer_inbound")), "{why:#}");
    // Not an L4 policy drop: PeerAuthentication stays out of policy_ingress.
    assert_eq!(bed.drops("node1", &echo1.ip, "policy_deny")?, 0, "STRICT became a policy_ingress drop");
    // The meshed client goes over HBONE.
    assert_eq!(curl_ok(&client, &url, 5)?.trim(), "hello from echo-1");

    // A workload exception: 8080 PERMISSIVE, steered to the agent; 9090 stays STRICT.
    bed.write_config("pa-echo.yaml", ECHO_8080_PERMISSIVE)?;
    wait_outcome(bed, &outsider.ip, &http, "steered_to_agent")?;
    assert_eq!(curl_ok(&outsider, &url, 3)?.trim(), "hello from echo-1", "8080 is PERMISSIVE for echo-1");
    let why = bed.explain("node1", &outsider.ip, &other_port)?;
    assert_eq!(why["reason"], "strict_plaintext", "9090 should stay STRICT: {why:#}");

    // The namespace PERMISSIVE instead: every port of echo-1 opens.
    std::fs::remove_file(bed.config_dir.join("pa-echo.yaml")).context("remove pa-echo.yaml")?;
    bed.write_config("pa-namespace.yaml", NAMESPACE_PERMISSIVE)?;
    wait_outcome(bed, &outsider.ip, &other_port, "steered_to_agent")?;
    let why = bed.explain("node1", &outsider.ip, &http)?;
    assert_eq!(why["outcome"], "steered_to_agent", "{why:#}");
    assert_eq!(curl_ok(&outsider, &url, 3)?.trim(), "hello from echo-1");

    // Back to the mesh STRICT alone, then nothing: PERMISSIVE again.
    std::fs::remove_file(bed.config_dir.join("pa-namespace.yaml")).context("remove pa-namespace.yaml")?;
    wait_outcome(bed, &outsider.ip, &http, "strict_plaintext")?;
    std::fs::remove_file(bed.config_dir.join("pa-mesh.yaml")).context("remove pa-mesh.yaml")?;
    wait_outcome(bed, &outsider.ip, &http, "steered_to_agent")?;
    let modes = bed.map_dump("node1", "INBOUND")?;
    assert!(
        modes.as_array().into_iter().flatten().any(|m| m["pod"] == echo1.ip.as_str() && m["mode"] == "PERMISSIVE"),
        "INBOUND does not say echo-1 is PERMISSIVE again: {modes}"
    );
    assert_eq!(curl_ok(&outsider, &url, 3)?.trim(), "hello from echo-1");
    assert_eq!(curl_ok(&client, &url, 3)?.trim(), "hello from echo-1");
    assert_eq!(bed.agent_pid("node1")?, agent, "the agent restarted");
    let log = bed.agent_log("node1");
    assert!(log.contains("kernel inbound mode updated"), "the agent did not log its mode updates");
    scene.finish();
    Ok(())
}
