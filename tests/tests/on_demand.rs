//! Scoped workloads and on-demand lookups across two nodes. The mesh default Sidecar
//! lets each pod call its own namespace only, so node2 (running echo-2) holds the
//! endpoints of `echo` and not `client`, which backs no service. The client calls
//! echo-2 over HBONE anyway: node2's agent asks the control plane who 10.x (the
//! client's address) is, gets the client's workload, checks its certificate against
//! it, and serves the request. From then on node2 holds the client.

use std::time::Duration;

use mesh_tests::scenario::{curl_ok, ECHO_PORT};
use mesh_tests::bed::find_workload;
use mesh_tests::{binary, default_config, require_root, TestBed};

const MESH_DEFAULT_SIDECAR: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec: {egress: [{hosts: ['./*']}]}
";

#[test]
fn an_agent_looks_up_a_caller_it_does_not_hold() -> anyhow::Result<()> {
    if !require_root("on_demand") {
        return Ok(());
    }
    let mut bed = TestBed::new("on-demand")?;
    bed.add_node("node1")?;
    bed.add_node("node2")?;
    let client = bed.add_pod("node1", "default", "client", "sleep", &[("app", "client")])?;
    let echo2 = bed.add_pod("node2", "default", "echo-2", "echo", &[("app", "echo")])?;
    bed.write_config("sidecar.yaml", MESH_DEFAULT_SIDECAR)?;
    bed.start_control_plane(&default_config())?;
    bed.start_agent("node1")?;
    bed.start_agent("node2")?;
    bed.enroll(&client)?;
    bed.enroll(&echo2)?;
    let echo_bin = binary("mesh-echo")?;
    let _server = echo2.spawn(&[echo_bin.to_str().unwrap(), "--port", &ECHO_PORT.to_string(), "--name", "echo-2"])?;
    echo2.wait_listening(ECHO_PORT, Duration::from_secs(10))?;
    bed.wait_for_workload("node1", &echo2.ip)?;
    bed.wait_for_workload("node2", &echo2.ip)?;

    // Scoped: node2 holds its own pod and echo's endpoints, not the client.
    let dump = bed.config_dump("node2")?;
    assert!(find_workload(&dump, &client.ip).is_none(), "node2 holds the client before any call: {}", dump["workloads"]);
    assert_eq!(dump["looked_up"], serde_json::json!([]));

    let body = curl_ok(&client, &format!("http://{}:{ECHO_PORT}/", echo2.ip), 3)?;
    assert_eq!(body.trim(), "hello from echo-2");

    let dump = bed.config_dump("node2")?;
    let held = find_workload(&dump, &client.ip).unwrap_or_else(|| panic!("node2 did not keep the caller: {}", dump["workloads"]));
    assert_eq!(held["identity"], "spiffe://cluster.local/ns/default/sa/sleep");
    assert_eq!(dump["looked_up"], serde_json::json!([client.ip]));
    assert!(bed.metric("node2", "mesh_ondemand_lookups_total{outcome=\"found\"}")? >= 1);
    assert_eq!(bed.metric("node2", "mesh_ondemand_lookups_total{outcome=\"timeout\"}")?, 0);
    bed.finish();
    Ok(())
}
