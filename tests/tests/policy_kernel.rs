//! An AuthorizationPolicy written into the config folder reaches the kernel: a DENY
//! by ipBlock and port drops the outsider's plaintext to echo-1 in `policy_ingress`
//! (`meshctl maps dump DROPS` says `policy_deny` for echo-1); editing the file to
//! allow restores traffic without restarting anything. With the DENY back and the
//! agent stopped, the pinned policy links keep dropping; a new agent adopts them.

use std::time::Duration;

use mesh_tests::require_root;
use mesh_tests::scenario::{curl_ok, Options, Scene};
use mesh_tests::wait_until;

fn policy(action: &str, outsider_ip: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: outsider, namespace: default}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: {action}
  rules:
  - from:
    - source: {{ipBlocks: [\"{outsider_ip}/32\"]}}
    to:
    - operation: {{ports: [\"8080\"]}}
"
    )
}

#[test]
fn deny_by_ip_block_drops_in_the_kernel_and_outlives_the_agent() -> anyhow::Result<()> {
    if !require_root("policy_kernel") {
        return Ok(());
    }
    let mut scene = Scene::start("policy-kernel", Options { second_node: false, outsider: true })?;
    let (client, echo1) = (scene.client.clone(), scene.echo1.clone());
    let outsider = scene.outsider.clone().expect("outsider");
    let url = format!("http://{}:8080/", echo1.ip);
    assert_eq!(curl_ok(&outsider, &url, 3)?.trim(), "hello from echo-1");

    // DENY the outsider on 8080: dropped in the kernel, counted as policy_deny.
    let bed = &scene.bed;
    bed.write_config("policy.yaml", &policy("DENY", &outsider.ip))?;
    wait_until("the outsider to be dropped", Duration::from_secs(15), || {
        Ok((bed.drops("node1", &echo1.ip, "policy_deny")? > 0 || outsider.curl(&url)?.0 == 0).then_some(()))
    })?;
    let seen = scene.server_output("echo-1").matches("GET /").count();
    let drops = bed.drops("node1", &echo1.ip, "policy_deny")?;
    assert_eq!(outsider.curl(&url)?.0, 0, "the outsider got through a DENY");
    assert!(bed.drops("node1", &echo1.ip, "policy_deny")? > drops, "the kernel did not count policy_deny for echo-1");
    assert_eq!(scene.server_output("echo-1").matches("GET /").count(), seen, "echo-1 was reached");
    let text = bed.map_text("node1", "DROPS")?;
    assert!(text.contains("policy_deny") && text.contains(&echo1.ip), "meshctl maps dump DROPS:\n{text}");
    // The mesh client is another source: still served.
    assert_eq!(curl_ok(&client, &url, 3)?.trim(), "hello from echo-1");

    // Edit the file to ALLOW: traffic comes back with nothing restarted.
    bed.write_config("policy.yaml", &policy("ALLOW", &outsider.ip))?;
    wait_until("the outsider to be served again", Duration::from_secs(15), || {
        Ok((outsider.curl(&url)?.0 == 200).then_some(()))
    })?;
    // That ALLOW names only the outsider: the mesh client is now refused (by the agent
    // on the real port, or the kernel on 15008), and back when the file goes away.
    assert_ne!(client.curl(&url)?.0, 200, "an ALLOW for the outsider alone must refuse the client");

    // DENY again, then stop the agent: its pinned links keep dropping.
    bed.write_config("policy.yaml", &policy("DENY", &outsider.ip))?;
    wait_until("the DENY to be back", Duration::from_secs(15), || Ok((outsider.curl(&url)?.0 == 0).then_some(())))?;
    scene.bed.stop_agent("node1").expect("agent was running");
    let bed = &scene.bed;
    let drops = bed.drops("node1", &echo1.ip, "policy_deny")?;
    assert_eq!(outsider.curl(&url)?.0, 0, "the outsider got through with the agent down");
    assert!(bed.drops("node1", &echo1.ip, "policy_deny")? > drops, "the kernel stopped enforcing with the agent down");

    // A new agent adopts the links and tables; the policy still holds, and a change
    // made while it was away applies once it is back.
    scene.bed.start_agent("node1")?;
    scene.bed.enroll(&client)?;
    scene.bed.enroll(&echo1)?;
    let bed = &scene.bed;
    bed.wait_for_workload("node1", &echo1.ip)?;
    assert_eq!(outsider.curl(&url)?.0, 0, "the outsider got through after the restart");
    bed.write_config("policy.yaml", "# no policy\n")?;
    wait_until("the outsider to be served after removal", Duration::from_secs(15), || {
        Ok((outsider.curl(&url)?.0 == 200).then_some(()))
    })?;
    assert_eq!(curl_ok(&client, &url, 5)?.trim(), "hello from echo-1");
    scene.finish();
    Ok(())
}
