//! HTTP attributes of AuthorizationPolicy, end to end with curl: where a policy
//! needs methods or paths, the agent serves the pod's inbound connections as HTTP
//! and judges each request (HBONE and plaintext alike, HTTP/1.1 and HTTP/2 to an
//! h2c application); the application receives the normalized path; the known path
//! bypasses get 403.

use std::time::Duration;

use anyhow::Result;
use mesh_tests::require_root;
use mesh_tests::scenario::{Options, Scene};
use mesh_tests::wait_until;

const PATHS: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-paths, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  rules:
  - to: [{operation: {methods: [GET], paths: [/public/*]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-secret, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/public/secret, /public/secret/*]}}]
";

#[test]
fn http_attributes_are_judged_per_request() -> Result<()> {
    if !require_root("policy_http") {
        return Ok(());
    }
    let scene = Scene::start("policy-http", Options { second_node: true, outsider: true })?;
    let (client, outsider) = (scene.client.clone(), scene.outsider.clone().expect("outsider"));
    let echo2 = scene.echo2.clone().expect("echo-2");
    let bed = &scene.bed;
    let base1 = format!("http://{}:8080", scene.echo1.ip);
    let base2 = format!("http://{}:8080", echo2.ip);

    bed.write_config("paths.yaml", PATHS)?;
    wait_until("the path policy applies", Duration::from_secs(15), || {
        Ok((client.curl_with(&[&format!("{base1}/private")])?.0 == 403).then_some(()))
    })?;
    // Requests before the policy arrived may have reached the app; none from here on.
    let private_seen = scene.server_output("echo-1").matches("GET /private").count();
    for base in [&base1, &base2] {
        let (code, body) = client.curl_with(&[&format!("{base}/public/a")])?;
        assert_eq!((code, body.trim()), (200, body.trim()), "GET /public/a via {base}: {body}");
        assert!(body.starts_with("hello from echo-"), "{body}");
        let (code, body) = client.curl_with(&[&format!("{base}/private")])?;
        assert_eq!((code, body.trim()), (403, "RBAC: access denied"), "GET /private via {base}");
        assert_eq!(client.curl_with(&["-X", "POST", &format!("{base}/public/a")])?.0, 403, "POST is not allowed");
    }
    // The known bypasses, sent as written (--path-as-is).
    for path in [
        "/public/../private",
        "/public/..%2Fprivate",
        "/public/..%2fprivate",
        "/public/secret",
        "/public/./secret",
        "//public//secret",
        "/public/secret;x=1",
        "/public/%73ecret",
        "/public/secret/",
        "/public/x/..%5C..%5Csecret",
    ] {
        let (code, body) = client.curl_with(&["--path-as-is", &format!("{base1}{path}")])?;
        assert_eq!(code, 403, "{path} must be denied, got {code}: {body}");
    }
    // The application receives the normalized path.
    let (code, _) = client.curl_with(&["--path-as-is", &format!("{base1}//public//a/./b?q=1")])?;
    assert_eq!(code, 200);
    let printed = scene.server_output("echo-1");
    assert!(printed.contains("GET /public/a/b?q=1 HTTP/1.1"), "echo-1 did not get the normalized path:\n{printed}");
    assert_eq!(printed.matches("GET /private").count(), private_seen, "a denied request reached the application:\n{printed}");
    // Plaintext is judged per request too.
    assert_eq!(outsider.curl_with(&[&format!("{base1}/public/a")])?.0, 200, "plaintext GET /public/a");
    assert_eq!(outsider.curl_with(&[&format!("{base1}/private")])?.0, 403, "plaintext GET /private");
    // HTTP/2 with prior knowledge, to an HTTP/2 application (nghttpd): judged per
    // stream, forwarded as HTTP/2.
    let docroot = bed.work.join("docroot");
    std::fs::create_dir_all(docroot.join("public"))?;
    std::fs::write(docroot.join("public/a"), "h2 public\n")?;
    std::fs::write(docroot.join("private"), "h2 private\n")?;
    let docroot_s = docroot.to_str().unwrap_or_default().to_string();
    let _h2 = scene.echo1.spawn(&["nghttpd", "--no-tls", "-d", &docroot_s, "9090"])?;
    scene.echo1.wait_listening(9090, Duration::from_secs(10))?;
    let h2 = format!("http://{}:9090", scene.echo1.ip);
    let (code, body) = client.curl_with(&["--http2-prior-knowledge", &format!("{h2}/public/a")])?;
    assert_eq!((code, body.trim()), (200, "h2 public"), "HTTP/2 GET /public/a");
    let (code, body) = client.curl_with(&["--http2-prior-knowledge", &format!("{h2}/private")])?;
    assert_eq!((code, body.trim()), (403, "RBAC: access denied"), "HTTP/2 GET /private");
    let out = client.run_timeout(&["h2load", "-n", "200", "-c", "4", "-m", "8", &format!("{h2}/public/a")], Duration::from_secs(30))?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("200 succeeded, 0 failed") && text.contains("200 2xx"), "h2load over HTTP/2:\n{text}");

    // The access log counts the requests of each connection.
    let refused = wait_until("an access-log line with refused requests", Duration::from_secs(5), || {
        Ok(bed.access_log("node1").into_iter().find(|l| {
            mesh_tests::log_field(l, "http.refused").and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n > 0)
        }))
    })?;
    assert!(refused.contains("per request"), "{refused}");

    // Policies removed: everything passes again, as bytes.
    bed.write_config("paths.yaml", "")?;
    wait_until("the path policy is gone", Duration::from_secs(15), || {
        Ok((client.curl_with(&[&format!("{base1}/private")])?.0 == 200).then_some(()))
    })?;
    scene.finish();
    Ok(())
}

