//! The same-node fast path (`--fast-path on`): curl works; 64 MiB echoed through the
//! mesh come back intact (sha256, both directions, IPv4 and IPv6); the counters show
//! redirects; switching a pod's fast path off live keeps an open connection working
//! and moves it to loopback TCP; a DENY closes a connection on the fast path;
//! unenrolling a pod removes its sockets from the map.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use mesh_tests::require_root;
use mesh_tests::scenario::{curl_ok, Options, Scene, ECHO_VIP};

const ECHO_PORT: &str = "9000";

/// Echo server on [::]:PORT (dual stack), one thread per connection.
const ECHO: &str = r#"
import socket, sys, threading
l = socket.socket(socket.AF_INET6)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
l.bind(("::", int(sys.argv[1]))); l.listen(64)
print("listening", flush=True)
def serve(c):
    while True:
        b = c.recv(262144)
        if not b: break
        c.sendall(b)
    c.close()
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Client: ROUNDS times, sends SIZE random bytes while reading the echo, and checks
/// the sha256 of what came back; pauses PAUSE seconds between rounds. One connection.
const CLIENT: &str = r#"
import hashlib, os, socket, sys, threading, time
host, port, size, rounds, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
s = socket.create_connection((host, port), timeout=30)
for r in range(rounds):
    data = os.urandom(size)
    def send():
        for i in range(0, size, 65536):
            s.sendall(data[i:i + 65536])
    t = threading.Thread(target=send); t.start()
    h, got = hashlib.sha256(), 0
    while got < size:
        b = s.recv(min(262144, size - got))
        if not b: sys.exit("connection closed after %d bytes of round %d" % (got, r))
        h.update(b); got += len(b)
    t.join()
    if h.digest() != hashlib.sha256(data).digest():
        sys.exit("round %d: echoed bytes differ from the bytes sent" % r)
    print("round", r, "ok", flush=True)
    time.sleep(pause)
print("done", flush=True)
"#;

/// DENY from the client's identity to echo's port 9000.
const DENY_CLIENT: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: fast-deny, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
    to: [{operation: {ports: [\"9000\"]}}]
";

fn python(pod: &mesh_tests::Pod, script: &str, args: &[&str], timeout: Duration) -> Result<String> {
    let mut argv = vec!["python3", "-c", script];
    argv.extend_from_slice(args);
    let out = pod.run_timeout(&argv, timeout)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "{} failed: {stdout}{}", pod.name, String::from_utf8_lossy(&out.stderr));
    Ok(stdout)
}

#[test]
fn fast_path_same_node() -> Result<()> {
    if !require_root("fast_path") {
        return Ok(());
    }
    // SAFETY: set before any thread of this test process starts; the agent inherits it.
    unsafe { std::env::set_var("MESH_FAST_PATH", "on") };
    let scene = Scene::start("fast-path", Options { second_node: false, outsider: false })?;
    let bed = &scene.bed;
    let counter = |name: &str| bed.counter("node1", name);

    // curl through the fast path, by VIP and by pod address.
    let body = curl_ok(&scene.client, &format!("http://{ECHO_VIP}/"), 5)?;
    assert_eq!(body.trim(), "hello from echo-1");
    let body = curl_ok(&scene.client, &format!("http://{}:8080/", scene.echo1.ip), 5)?;
    assert_eq!(body.trim(), "hello from echo-1");
    assert!(counter("fast_inserted")? >= 4, "both ends of both legs inserted: {}", bed.map_text("node1", "COUNTERS")?);
    assert!(counter("fast_redirected")? >= 4, "requests and responses redirected: {}", bed.map_text("node1", "COUNTERS")?);
    assert_eq!(counter("fast_missed")?, 0, "no leg lost its peer: {}", bed.map_text("node1", "COUNTERS")?);

    // 64 MiB each way, checked, IPv4; then 16 MiB over IPv6.
    let echo_bin = scene.echo1.spawn(&["python3", "-c", ECHO, ECHO_PORT])?;
    scene.echo1.wait_listening(9000, Duration::from_secs(10))?;
    let before = counter("fast_redirected")?;
    let big = (64 << 20).to_string();
    python(&scene.client, CLIENT, &[&scene.echo1.ip, ECHO_PORT, &big, "1", "0"], Duration::from_secs(120))?;
    let redirected = counter("fast_redirected")? - before;
    assert!(redirected > 1000, "the transfer went through the fast path ({redirected} redirects)");
    let before = counter("fast_redirected")?;
    let mid = (16 << 20).to_string();
    python(&scene.client, CLIENT, &[&scene.echo1.ip6, ECHO_PORT, &mid, "1", "0"], Duration::from_secs(60))?;
    let body = curl_ok(&scene.client, &format!("http://[{}]:8080/", scene.echo1.ip6), 5)?;
    assert_eq!(body.trim(), "hello from echo-1");
    assert!(counter("fast_redirected")? - before > 250, "IPv6 went through the fast path");
    assert_eq!(counter("fast_missed")?, 0, "no leg lost its peer: {}", bed.map_text("node1", "COUNTERS")?);

    // Live switch-off: a connection in the middle of 40 rounds carries on intact.
    let client_cookie = scene.client.netns_cookie()?;
    let echo_cookie = scene.echo1.netns_cookie()?;
    let mut long = scene.client.spawn(&["python3", "-c", CLIENT, &scene.echo1.ip, ECHO_PORT, "1048576", "40", "0.1"])?;
    mesh_tests::wait_until("a few fast rounds", Duration::from_secs(20), || Ok(long.output().contains("round 5 ok").then_some(())))?;
    let passed = counter("fast_passed")?;
    // `meshctl fast-path on|off` for both pods, live.
    let meshctl = mesh_tests::meshctl_binary()?;
    let bpffs = bed.bpffs("node1");
    let switch = |state: &str| -> Result<()> {
        for cookie in [client_cookie, echo_cookie] {
            let out = mesh_tests::proc::run(
                &[meshctl.to_str().context("path")?, "--bpffs", bpffs.to_str().context("path")?, "fast-path", state, "--netns-cookie", &cookie.to_string()],
                None,
                None,
                Duration::from_secs(10),
            )?;
            ensure!(out.status.success(), "meshctl fast-path {state}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    switch("off")?;
    let redirected_at_off = counter("fast_redirected")?;
    mesh_tests::wait_until("the long connection finished", Duration::from_secs(60), || {
        if let Some(st) = long.try_wait() {
            ensure!(st.success(), "client failed after the switch-off:\n{}", long.output());
            return Ok(Some(()));
        }
        Ok(None)
    })?;
    assert!(long.output().contains("done"), "{}", long.output());
    assert!(counter("fast_passed")? > passed + 100, "after the switch-off the bytes went over TCP");
    assert_eq!(counter("fast_redirected")?, redirected_at_off, "no redirect after the switch-off");

    // A policy change reaches a connection on the fast path: the agent judges it
    // again and closes it (the fast path only moves bytes between the agent's sockets
    // and the pods'; every connection still has the agent in the middle).
    switch("on")?;
    let mut cut = scene.client.spawn(&["python3", "-c", CLIENT, &scene.echo1.ip, ECHO_PORT, "65536", "600", "0.05"])?;
    mesh_tests::wait_until("a few fast rounds", Duration::from_secs(20), || Ok(cut.output().contains("round 3 ok").then_some(())))?;
    let before = counter("fast_redirected")?;
    mesh_tests::wait_until("redirects on the open connection", Duration::from_secs(10), || {
        Ok((counter("fast_redirected")? > before + 10).then_some(()))
    })?;
    bed.write_config("fast-deny.yaml", DENY_CLIENT)?;
    mesh_tests::wait_until("the fast-path connection to be closed by the policy", Duration::from_secs(20), || {
        Ok(cut.try_wait().map(|st| (st, cut.output())))
    })
    .and_then(|(st, out)| {
        ensure!(!st.success() && out.contains("connection closed after"), "the connection outlived the DENY:\n{out}");
        Ok(())
    })?;
    let revoked = bed.access_log("node1").iter().any(|l| {
        mesh_tests::log_field(l, "error").is_some_and(|e| e.contains("closed by a policy change: deny policy=default/fast-deny"))
    });
    assert!(revoked, "no access-log line says the policy closed it");
    let refused = python(&scene.client, CLIENT, &[&scene.echo1.ip, ECHO_PORT, "1024", "1", "0"], Duration::from_secs(20));
    assert!(refused.is_err(), "a new connection passed the DENY");
    bed.write_config("fast-deny.yaml", "")?;
    mesh_tests::wait_until("the DENY lifted", Duration::from_secs(20), || {
        Ok(python(&scene.client, CLIENT, &[&scene.echo1.ip, ECHO_PORT, "1024", "1", "0"], Duration::from_secs(10)).ok())
    })?;

    // Unenrolling a pod takes its sockets out of FAST_SOCKS: keep one open over it.
    let _open = scene.client.spawn(&["python3", "-c", CLIENT, &scene.echo1.ip, ECHO_PORT, "1024", "1", "30"])?;
    let of = |cookie: u64| -> Result<usize> {
        let dump = bed.map_dump("node1", "FAST_SOCKS")?;
        Ok(dump.as_array().into_iter().flatten().filter(|r| r["netns_cookie"].as_u64() == Some(cookie)).count())
    };
    // Both ends of leg 1 in the client's namespace, of leg 2 in echo-1's.
    mesh_tests::wait_until("the open connection's sockets in FAST_SOCKS", Duration::from_secs(10), || {
        Ok((of(client_cookie)? >= 2 && of(echo_cookie)? >= 2).then_some(()))
    })?;
    bed.unenroll(&scene.client)?;
    mesh_tests::wait_until("client's FAST_SOCKS entries gone", Duration::from_secs(10), || Ok((of(client_cookie)? == 0).then_some(())))?;
    let pods = bed.map_dump("node1", "FAST_PODS")?;
    assert!(
        !pods.as_array().into_iter().flatten().any(|r| r["netns_cookie"].as_u64() == Some(client_cookie)),
        "client's FAST_PODS entry gone: {pods}"
    );
    drop(echo_bin);
    scene.finish();
    Ok(())
}
