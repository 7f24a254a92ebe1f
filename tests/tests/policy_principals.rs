//! ALLOW by principal and port, judged where each part can be: the client (sa sleep)
//! is served over HBONE; a mesh pod with another identity is refused by the agent on
//! the real port (403 on CONNECT, the access log names the policy); the outsider's
//! plaintext, which no rule could allow, is dropped in the kernel.

use std::time::Duration;

use mesh_tests::scenario::{curl_ok, Options, Scene, ECHO_VIP};
use mesh_tests::{log_field, require_root, wait_until};

const POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/sleep]}
    to:
    - operation: {ports: [\"8080\"]}
  # Lets the namespace reach 9090 (nothing listens there): so the kernel passes
  # HBONE from every pod of the namespace and the agent judges the real port.
  - from:
    - source: {namespaces: [default]}
    to:
    - operation: {ports: [\"9090\"]}
";

#[test]
fn allow_by_principal_serves_the_client_and_refuses_other_identities() -> anyhow::Result<()> {
    if !require_root("policy_principals") {
        return Ok(());
    }
    let mut scene = Scene::start("policy-principals", Options { second_node: false, outsider: true })?;
    let intruder = scene.bed.add_pod("node1", "default", "intruder", "other", &[("app", "intruder")])?;
    scene.bed.enroll(&intruder)?;
    scene.bed.wait_for_workload("node1", &intruder.ip)?;
    let (client, echo1) = (scene.client.clone(), scene.echo1.clone());
    let outsider = scene.outsider.clone().expect("outsider");
    let bed = &scene.bed;
    let url = format!("http://{}:8080/", echo1.ip);
    assert_eq!(curl_ok(&intruder, &url, 3)?.trim(), "hello from echo-1", "before any policy");

    bed.write_config("allow-sleep.yaml", POLICY)?;
    // The intruder is refused once the policy lands: by the agent, naming the policy.
    let line = wait_until("the agent to refuse the intruder", Duration::from_secs(15), || {
        if intruder.curl(&url)?.0 == 200 {
            return Ok(None);
        }
        Ok(bed.access_log("node1").into_iter().find(|l| {
            log_field(l, "direction").as_deref() == Some("inbound")
                && log_field(l, "src.identity").is_some_and(|s| s.ends_with("/sa/other"))
                && log_field(l, "error").is_some_and(|e| e.contains("403"))
        }))
    })?;
    let error = log_field(&line, "error").unwrap_or_default();
    assert!(error.contains("deny policy=default/allow-sleep"), "{line}");
    assert_eq!(log_field(&line, "dst.workload").as_deref(), Some("default/echo-1"), "{line}");

    // The agent shows what it holds.
    let dump = bed.config_dump("node1")?;
    let held = dump["authorization_policies"].as_array().cloned().unwrap_or_default();
    assert!(held.iter().any(|p| p["name"] == "default/allow-sleep" && p["action"] == "Allow"), "config_dump: {held:?}");

    // The client, by address and by service, is served.
    assert_eq!(curl_ok(&client, &url, 5)?.trim(), "hello from echo-1");
    assert_eq!(curl_ok(&client, &format!("http://{ECHO_VIP}/"), 5)?.trim(), "hello from echo-1");
    // ... and the access log names the policy that allowed it.
    let allowed = bed.access_log("node1").into_iter().any(|l| {
        log_field(&l, "direction").as_deref() == Some("inbound")
            && log_field(&l, "src.identity").is_some_and(|s| s.ends_with("/sa/sleep"))
            && log_field(&l, "authz").as_deref() == Some("allow policy=default/allow-sleep")
    });
    assert!(allowed, "no inbound line names the allowing policy:\n{}", bed.access_log("node1").join("\n"));

    // The outsider (plaintext: no principal) is dropped in the kernel.
    let drops = bed.drops("node1", &echo1.ip, "policy_no_allow_match")?;
    assert_eq!(outsider.curl(&url)?.0, 0, "plaintext got through an ALLOW by principal");
    assert!(bed.drops("node1", &echo1.ip, "policy_no_allow_match")? > drops, "the kernel did not drop the outsider");
    scene.finish();
    Ok(())
}
