//! The HBONE port (15008) seen from `openssl s_client` in a pod outside the mesh:
//! without a client certificate, or with a self-signed one carrying a mesh SPIFFE
//! identity, the handshake is refused (and the agent says why); with a certificate
//! the mesh CA signed, it completes, and the pod presents its own SPIFFE identity in
//! a chain that verifies against the mesh root.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use mesh_tests::crypto::openssl;
use mesh_tests::scenario::{Options, Scene};
use mesh_tests::{require_root, wait_until, Pod};

/// A P-256 key and a certificate for `uri`, signed by `ca` (cert, key) or self-signed.
fn client_cert(dir: &Path, name: &str, uri: &str, ca: Option<(&Path, &Path)>) -> Result<(String, String)> {
    let p = |ext: &str| dir.join(format!("{name}.{ext}")).to_str().unwrap_or_default().to_string();
    let (key, csr, crt, ext) = (p("key"), p("csr"), p("crt"), p("ext"));
    openssl(&["ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", &key])?;
    std::fs::write(&ext, format!("subjectAltName=critical,{uri}\nextendedKeyUsage=clientAuth,serverAuth\nkeyUsage=critical,digitalSignature\n"))?;
    openssl(&["req", "-new", "-key", &key, "-subj", "/O=test", "-out", &csr])?;
    let mut sign = vec!["x509", "-req", "-in", &csr, "-days", "1", "-extfile", &ext, "-out", &crt];
    let (ca_cert, ca_key);
    match ca {
        Some((c, k)) => {
            (ca_cert, ca_key) = (c.to_str().unwrap_or_default().to_string(), k.to_str().unwrap_or_default().to_string());
            sign.extend(["-CA", &ca_cert, "-CAkey", &ca_key, "-CAcreateserial"]);
        }
        None => sign.extend(["-key", &key]),
    }
    openssl(&sign)?;
    Ok((crt, key))
}

/// `openssl s_client` from `pod` to `addr`, offering h2; returns stdout and stderr.
fn s_client(pod: &Pod, addr: &str, extra: &[&str]) -> Result<String> {
    let mut args = vec!["openssl", "s_client", "-connect", addr, "-alpn", "h2", "-showcerts"];
    args.extend_from_slice(extra);
    let out = pod.run_timeout(&args, Duration::from_secs(10))?;
    Ok(format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn hbone_port_refuses_callers_without_a_mesh_certificate() -> Result<()> {
    if !require_root("mtls_clients") {
        return Ok(());
    }
    let scene = Scene::start("mtls-clients", Options { second_node: false, outsider: true })?;
    let outsider = scene.outsider.clone().expect("outsider");
    let bed = &scene.bed;
    let hbone = format!("{}:15008", scene.echo1.ip);
    let dir = bed.work.join("certs");
    std::fs::create_dir_all(&dir)?;
    let state = bed.work.join("cp-state");
    let (root, root_key) = (state.join("root-cert.pem"), state.join("root-key.pem"));
    let root_s = root.to_str().unwrap_or_default().to_string();
    let refusals = |log: &str| log.matches("mTLS handshake from").count();

    // In TLS 1.3 the client finishes its handshake before the server has judged the
    // client's certificate: `-ign_eof` keeps s_client reading until the server's
    // alert (or close) arrives.
    let refused = |what: &str, extra: &[&str], agent_says: &str| -> Result<()> {
        let before = refusals(&bed.agent_log("node1"));
        let mut args = vec!["-CAfile", root_s.as_str(), "-ign_eof"];
        args.extend_from_slice(extra);
        let out = s_client(&outsider, &hbone, &args)?;
        assert!(out.contains("alert"), "{what}: the handshake was not refused:\n{out}");
        let line = wait_until(&format!("{what}: the agent logs the refusal"), Duration::from_secs(5), || {
            let log = bed.agent_log("node1");
            Ok((refusals(&log) > before).then(|| log.lines().rfind(|l| l.contains("mTLS handshake from")).unwrap_or_default().to_string()))
        })?;
        assert!(line.contains(agent_says), "{what}: the agent's reason: {line}");
        Ok(())
    };
    refused("no client certificate", &[], "certificate")?;
    // A self-signed certificate claiming the client's identity.
    let (crt, key) = client_cert(&dir, "forged", "URI:spiffe://cluster.local/ns/default/sa/sleep", None)?;
    refused("a self-signed certificate", &["-cert", &crt, "-key", &key], "certificate")?;

    // A certificate the mesh CA signed: the handshake completes, and the pod shows its
    // own identity in a chain that verifies against the mesh root.
    let (crt, key) = client_cert(&dir, "signed", "URI:spiffe://cluster.local/ns/legacy/sa/default", Some((&root, &root_key)))?;
    let out = s_client(&outsider, &hbone, &["-cert", &crt, "-key", &key, "-CAfile", &root_s, "-verify_return_error"])?;
    assert!(out.contains("Verify return code: 0 (ok)"), "the pod's chain does not verify against the mesh root:\n{out}");
    assert!(out.contains("ALPN protocol: h2"), "HBONE did not offer h2:\n{out}");
    let leaf = dir.join("served.pem");
    let first = out.split("-----END CERTIFICATE-----").next().context("no certificate served")?;
    let pem = &first[first.find("-----BEGIN CERTIFICATE-----").context("no certificate served")?..];
    std::fs::write(&leaf, format!("{pem}-----END CERTIFICATE-----\n"))?;
    let text = Command::new("openssl").args(["x509", "-noout", "-ext", "subjectAltName", "-in"]).arg(&leaf).output()?;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("URI:spiffe://cluster.local/ns/default/sa/echo"), "echo-1 presented another identity:\n{text}");
    scene.finish();
    Ok(())
}
