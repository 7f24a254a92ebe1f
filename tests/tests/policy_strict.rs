//! A DENY `notPrincipals: ["*"]` (how Istio reads STRICT) over the whole namespace:
//! the agent recognises the shape and the kernel drops all plaintext to its pods as
//! STRICT (the outsider's, to echo-1 and to the client), while the mesh keeps working
//! both ways: the client's calls to echo-1 go out over HBONE and their replies come
//! back in.

use std::time::Duration;

use mesh_tests::scenario::{curl_ok, Options, Scene, ECHO_VIP};
use mesh_tests::{require_root, wait_until};

const STRICT: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: strict, namespace: default}
spec:
  action: DENY
  rules:
  - from:
    - source: {notPrincipals: [\"*\"]}
";

#[test]
fn strict_drops_plaintext_and_keeps_the_mesh_working() -> anyhow::Result<()> {
    if !require_root("policy_strict") {
        return Ok(());
    }
    let scene = Scene::start("policy-strict", Options { second_node: false, outsider: true })?;
    let (client, echo1) = (scene.client.clone(), scene.echo1.clone());
    let outsider = scene.outsider.clone().expect("outsider");
    let bed = &scene.bed;
    let url = format!("http://{}:8080/", echo1.ip);
    assert_eq!(curl_ok(&outsider, &url, 3)?.trim(), "hello from echo-1", "before any policy");

    bed.write_config("strict.yaml", STRICT)?;
    // Both pods become STRICT: the outsider's plaintext is dropped as strict_plaintext
    // at echo-1 and at the client (nothing listens there; otherwise: refused).
    for (pod, target) in [(&echo1, url.clone()), (&client, format!("http://{}:8080/", client.ip))] {
        wait_until(&format!("the kernel to drop plaintext to {}", pod.name), Duration::from_secs(15), || {
            let before = bed.drops("node1", &pod.ip, "strict_plaintext")?;
            outsider.curl(&target)?;
            Ok((bed.drops("node1", &pod.ip, "strict_plaintext")? > before).then_some(()))
        })?;
    }
    assert_eq!(outsider.curl(&url)?.0, 0, "plaintext got through STRICT");

    // The mesh client is served, by address and by service: its HBONE goes out and the
    // replies from echo-1's 15008 come back to its ephemeral port.
    assert_eq!(curl_ok(&client, &url, 5)?.trim(), "hello from echo-1");
    assert_eq!(curl_ok(&client, &format!("http://{ECHO_VIP}/"), 5)?.trim(), "hello from echo-1");
    scene.finish();
    Ok(())
}
