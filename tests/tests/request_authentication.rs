//! RequestAuthentication end to end: tokens signed with openssl are validated by the
//! agent (inline JWKS, and a jwksUri the control plane fetches); invalid ones (bad
//! signature, expired, wrong audience, unknown issuer, alg none, oversized) get 401;
//! a DENY on `notRequestPrincipals` answers 403 without one; claims reach the
//! application as headers and the token does not.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use mesh_tests::require_root;
use mesh_tests::scenario::{Options, Scene};
use mesh_tests::crypto::{b64url, Issuer};
use mesh_tests::wait_until;

/// Serves `body` on 127.0.0.1 (where the control plane runs) for a bounded number of
/// requests; returns the URL.
fn serve_jwks(body: String) -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/jwks.json", listener.local_addr()?);
    std::thread::spawn(move || {
        for conn in listener.incoming().take(100).flatten() {
            let mut conn = conn;
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(url)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[test]
fn request_authentication_validates_tokens() -> Result<()> {
    if !require_root("request_authentication") {
        return Ok(());
    }
    let scene = Scene::start("request-authn", Options { second_node: false, outsider: false })?;
    let client = scene.client.clone();
    let bed = &scene.bed;
    let keys = bed.config_dir.parent().context("work dir")?.join("jwt");
    std::fs::create_dir_all(&keys)?;
    let inline = Issuer::new(&keys, "inline-1")?;
    let remote = Issuer::new(&keys, "remote-1")?;
    let uri = serve_jwks(remote.jwks()?)?;
    let config = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: echo-jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  jwtRules:
  - issuer: https://inline.test
    jwks: '{}'
    audiences: [echo]
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
  - issuer: https://remote.test
    jwksUri: {uri}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: DENY
  rules:
  - from: [{{source: {{notRequestPrincipals: ['*']}}}}]
    to: [{{operation: {{paths: [/api/*]}}}}]
",
        inline.jwks()?
    );
    let url = format!("http://{}:8080/api/x", scene.echo1.ip);
    let bearer = |t: &str| format!("authorization: Bearer {t}");
    let exp = now() + 600;
    let good = inline.token(&serde_json::json!({"iss": "https://inline.test", "sub": "alice", "aud": "echo", "exp": exp}))?;
    bed.write_config("jwt.yaml", &config)?;
    wait_until("the require-jwt policy applies", Duration::from_secs(15), || {
        Ok((client.curl_with(&[&url])?.0 == 403).then_some(()))
    })?;
    let (code, body) = client.curl_with(&["-H", &bearer(&good), &url])?;
    assert_eq!(code, 200, "a valid token: {body}");
    let printed = scene.server_output("echo-1");
    assert!(printed.contains("  > x-jwt-sub: alice"), "the claim did not reach the app as a header:\n{printed}");
    assert!(!printed.to_ascii_lowercase().contains("> authorization:"), "the token was forwarded:\n{printed}");
    // Outside /api/* a request without a token passes; with a bad one it does not.
    assert_eq!(client.curl_with(&[&format!("http://{}:8080/", scene.echo1.ip)])?.0, 200, "no token, no rule");
    let cases = [
        ("garbage", "not.a.token".to_string()),
        ("expired", inline.token(&serde_json::json!({"iss": "https://inline.test", "sub": "a", "aud": "echo", "exp": now() - 3600}))?),
        ("wrong audience", inline.token(&serde_json::json!({"iss": "https://inline.test", "sub": "a", "aud": "other", "exp": exp}))?),
        ("unknown issuer", inline.token(&serde_json::json!({"iss": "https://evil.test", "sub": "a", "exp": exp}))?),
        ("signed by the other key", remote.token(&serde_json::json!({"iss": "https://inline.test", "sub": "a", "aud": "echo", "exp": exp}))?),
        ("alg none", format!("{}.{}.", b64url(br#"{"alg":"none"}"#), b64url(br#"{"iss":"https://inline.test","sub":"a","aud":"echo"}"#))),
        ("oversized", format!("{}.{}.x", "a".repeat(9000), "b".repeat(9000))),
    ];
    for (what, t) in &cases {
        let (code, body) = client.curl_with(&["-H", &bearer(t), &url])?;
        assert_eq!(code, 401, "{what}: {body}");
    }
    // The jwksUri issuer: its keys arrive through the control plane.
    let remote_token = remote.token(&serde_json::json!({"iss": "https://remote.test", "sub": "bob", "exp": exp}))?;
    wait_until("the jwksUri keys reach the agent", Duration::from_secs(20), || {
        Ok((client.curl_with(&["-H", &bearer(&remote_token), &url])?.0 == 200).then_some(()))
    })?;
    let log = bed.control_plane_log();
    assert!(log.contains("request_authentications=1"), "the control plane did not serve the RequestAuthentication:\n{log}");
    scene.finish();
    Ok(())
}
