//! A policy change closes live connections it now denies: an idle keep-alive
//! connection from the client (HBONE) and one from the outsider (plaintext) are
//! closed by the agent when a DENY naming them lands, and the access log says why.

use std::time::Duration;

use mesh_tests::scenario::{Options, Scene};
use mesh_tests::{log_field, require_root, wait_until};

/// Opens a keep-alive connection, completes one request, says `ready`, then waits
/// up to 25 s for the connection to close (mesh-echo keeps idle ones for 30 s).
const HOLD: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], 8080), timeout=5)
s.sendall(b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n")
d = b""
while b"hello" not in d:
    d += s.recv(1000)
print("ready", flush=True)
s.settimeout(25)
t = time.time()
try:
    r = s.recv(1000)
    print("closed" if r == b"" else "data", round(time.time() - t, 1), flush=True)
except socket.timeout:
    print("open", flush=True)
except OSError as e:
    print("closed", e, flush=True)
"#;

fn policy(client_sa: &str, outsider_ip: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: cut-off, namespace: default}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: DENY
  rules:
  - from:
    - source: {{principals: [cluster.local/ns/default/sa/{client_sa}]}}
    - source: {{ipBlocks: [\"{outsider_ip}\"]}}
"
    )
}

#[test]
fn live_connections_close_when_a_deny_lands() -> anyhow::Result<()> {
    if !require_root("policy_live") {
        return Ok(());
    }
    let scene = Scene::start("policy-live", Options { second_node: false, outsider: true })?;
    let (client, echo1) = (scene.client.clone(), scene.echo1.clone());
    let outsider = scene.outsider.clone().expect("outsider");
    let bed = &scene.bed;
    let mut held = Vec::new();
    for pod in [&client, &outsider] {
        let p = pod.spawn(&["python3", "-c", HOLD, &echo1.ip])?;
        wait_until(&format!("{}'s connection to be ready", pod.name), Duration::from_secs(10), || {
            Ok(p.output().contains("ready").then_some(()))
        })?;
        held.push(p);
    }
    bed.write_config("cut-off.yaml", &policy("sleep", &outsider.ip))?;
    for (pod, p) in [&client, &outsider].iter().zip(&held) {
        let out = wait_until(&format!("{}'s connection to close", pod.name), Duration::from_secs(15), || {
            let out = p.output();
            Ok((out.contains("closed") || out.contains("open") || out.contains("data")).then_some(out))
        })?;
        assert!(out.contains("closed"), "{}: {out}", pod.name);
    }
    let lines = bed.access_log("node1");
    let revoked: Vec<_> = lines
        .iter()
        .filter(|l| log_field(l, "error").is_some_and(|e| e.contains("closed by a policy change: deny policy=default/cut-off")))
        .collect();
    let direction = |d: &str| revoked.iter().any(|l| log_field(l, "direction").as_deref() == Some(d));
    assert!(direction("inbound") && direction("inbound_plaintext"), "access log:\n{}", lines.join("\n"));
    scene.finish();
    Ok(())
}
