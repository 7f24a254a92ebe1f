//! A control plane that dies (SIGKILL) and comes back costs no traffic: two nodes,
//! load from the client to service VIPs (new connections to `rr`, long-lived HTTP to
//! `echo`) across two outages. The agents serve their last config meanwhile, then
//! reconnect naming what they hold, and the restarted control plane (same state
//! directory, same CA root) answers with a resume: nothing after an outage in which
//! nothing changed, only the changes after one in which a Service and a pod (with a
//! new identity) were added. Both agents show SYNCED in `meshctl sync`, the new
//! Service and pod take traffic, and no mTLS handshake fails.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use mesh_tests::bed::series_value;
use mesh_tests::proc::Proc;
use mesh_tests::scenario::{curl_ok, Options, Scene, ECHO_VIP, RR_PORT};
use mesh_tests::{binary, require_root, wait_until, Pod, TestBed};

const RR_VIP: &str = "10.96.0.11";
const LATE_VIP: &str = "10.96.0.20";
/// Each outage's load runs this long at most: kill, outage, restart and resync fit in it.
const LOAD_SECONDS: u64 = 25;
/// h2load: 2 connections at 8 requests/s each over LOAD_SECONDS.
const H2_CONNS: u64 = 2;
const H2_RPS: u64 = 8;
const H2_REQUESTS: u64 = H2_CONNS * H2_RPS * LOAD_SECONDS;
/// Every type an agent subscribes to; the agents here hold Address and Authorization
/// resources, and none of the others.
const TYPES: [&str; 5] = ["Address", "Authorization", "RequestAuthentication", "VirtualService", "DestinationRule"];
const HELD: [&str; 2] = ["Address", "Authorization"];

fn service(name: &str, vip: &str, port: u16, target: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {vip}\n  selector:\n    app: echo\n  ports:\n    - port: {port}\n      targetPort: {target}\n"
    )
}

/// A DENY that matches nobody: the agents hold an Authorization resource, so that
/// type has something to resume too.
const DENY_NOBODY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-nobody, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/nobody]}
";

/// Load from the client across one outage.
struct Load {
    /// mesh-rr, a new connection per request, to `RR_VIP`.
    rr: Proc,
    /// h2load, long-lived HTTP/1.1 connections, to `ECHO_VIP`.
    h2: Proc,
}

impl Load {
    fn start(client: &Pod) -> Result<Load> {
        let bin = binary("mesh-rr")?;
        let (addr, secs) = (format!("{RR_VIP}:{RR_PORT}"), LOAD_SECONDS.to_string());
        let rr = client.spawn(&[
            bin.to_str().context("path")?, "client", "--addr", &addr, "--count", "200000", "--seconds", &secs,
            "--connect-each", "--keep-going",
        ])?;
        let (n, c, rps) = (H2_REQUESTS.to_string(), H2_CONNS.to_string(), H2_RPS.to_string());
        let h2 = client.spawn(&["h2load", "--h1", "-n", &n, "-c", &c, "--rps", &rps, &format!("http://{ECHO_VIP}/")])?;
        Ok(Load { rr, h2 })
    }

    fn running(&mut self) -> bool {
        self.rr.try_wait().is_none() && self.h2.try_wait().is_none()
    }

    /// Waits for both; returns (requests, failures) of each, failing on any failure.
    fn finish(mut self, what: &str) -> Result<[(u64, u64); 2]> {
        let bound = Duration::from_secs(LOAD_SECONDS + 30);
        let rr_st = self.rr.wait_timeout(bound).context("mesh-rr did not finish")?;
        let out = self.rr.output();
        let line = out.lines().find(|l| l.starts_with('{')).with_context(|| format!("no summary from mesh-rr: {out}"))?;
        let sum: serde_json::Value = serde_json::from_str(line)?;
        let rr = (sum["count"].as_u64().unwrap_or(0), sum["failed"].as_u64().unwrap_or(u64::MAX));
        eprintln!("{what}: mesh-rr to {RR_VIP} (new connections): {sum}");
        ensure!(rr_st.success() && rr.1 == 0 && rr.0 > 100, "{what}: mesh-rr requests failed: {sum}\n{out}");

        let h2_st = self.h2.wait_timeout(bound).context("h2load did not finish")?;
        let out = self.h2.output();
        let requests = out.lines().find(|l| l.starts_with("requests:")).with_context(|| format!("no summary from h2load: {out}"))?;
        let codes = out.lines().find(|l| l.starts_with("status codes:")).unwrap_or_default();
        eprintln!("{what}: h2load to {ECHO_VIP} (long-lived): {requests}; {codes}");
        let field = |line: &str, name: &str| -> u64 {
            line.split(',').find(|p| p.trim_end().ends_with(name)).and_then(|p| p.split_whitespace().rev().nth(1)?.parse().ok()).unwrap_or(0)
        };
        let ok = field(requests, "succeeded");
        let two = field(codes, "2xx");
        ensure!(
            h2_st.success() && ok == H2_REQUESTS && two == H2_REQUESTS,
            "{what}: h2load: {ok} of {H2_REQUESTS} succeeded, {two} answered 2xx\n{out}"
        );
        Ok([rr, (H2_REQUESTS, H2_REQUESTS - two)])
    }
}

/// What the restarted control plane pushed for the agents' resumes.
struct Pushes {
    metrics: String,
}

impl Pushes {
    fn count(&self, t: &str, reason: &str) -> u64 {
        series_value(&self.metrics, &format!("mesh_cp_pushes_total{{type=\"{t}\",reason=\"{reason}\"}}"))
    }
    fn bytes(&self, t: &str) -> u64 {
        series_value(&self.metrics, &format!("mesh_cp_pushed_bytes_total{{type=\"{t}\"}}"))
    }
    fn total_bytes(&self) -> u64 {
        TYPES.iter().map(|t| self.bytes(t)).sum()
    }
    fn config_bytes(&self, node: &str) -> u64 {
        series_value(&self.metrics, &format!("mesh_cp_config_bytes{{node=\"{node}\"}}"))
    }
}

/// Kills the control plane under load, runs `during` while it is down, starts it
/// again and waits until both agents have resumed and are SYNCED. Returns what the
/// restarted control plane pushed, once the load is over and had no failure.
fn outage(scene: &mut Scene, what: &str, during: impl FnOnce(&mut Scene) -> Result<()>) -> Result<Pushes> {
    let root = std::fs::read_to_string(scene.bed.cp_state_dir().join("root-cert.pem")).context("the CA root in the state dir")?;
    let mut load = Load::start(&scene.client)?;
    std::thread::sleep(Duration::from_secs(2));
    let marks: Vec<usize> = ["node1", "node2"].iter().map(|n| scene.bed.agent_log(n).len()).collect();
    let since = |bed: &TestBed, i: usize, node: &str| bed.agent_log(node).get(marks[i]..).unwrap_or_default().to_string();

    let st = scene.bed.kill_control_plane().context("the control plane was not running")?;
    ensure!(std::os::unix::process::ExitStatusExt::signal(&st) == Some(libc::SIGKILL), "{what}: the control plane ended with {st}, not SIGKILL");
    let down = Instant::now();
    for (i, node) in ["node1", "node2"].iter().enumerate() {
        wait_until(&format!("{node} reporting the lost control plane"), Duration::from_secs(10), || {
            Ok(since(&scene.bed, i, node).contains("cannot reach control plane").then_some(()))
        })?;
    }
    during(scene)?;
    // Down long enough for the agents' reconnects to back off past a second.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(down.elapsed()));
    ensure!(load.running(), "{what}: the load ended during the outage");
    scene.bed.restart_control_plane()?;
    let up = Instant::now();
    let new_root = std::fs::read_to_string(scene.bed.cp_state_dir().join("root-cert.pem"))?;
    ensure!(new_root == root, "{what}: the restarted control plane made a new CA root");
    ensure!(scene.bed.control_plane_log().contains("ca: using the existing root"), "{what}: the restarted control plane did not reuse its root");

    // Each agent reconnects naming what it holds.
    for (i, node) in ["node1", "node2"].iter().enumerate() {
        let held = wait_until(&format!("{node} reconnecting"), Duration::from_secs(20), || {
            let log = since(&scene.bed, i, node);
            let line = log.lines().find(|l| l.contains("xds: connected to the control plane"));
            Ok(line.map(|l| mesh_tests::log_field(l, "held").and_then(|h| h.parse::<u64>().ok()).unwrap_or(0)))
        })?;
        ensure!(held > 0, "{what}: {node} reconnected holding nothing");
    }
    let sync = wait_until("meshctl sync: both agents SYNCED", Duration::from_secs(20), || {
        let table = scene.bed.cp_sync()?;
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("node")).collect();
        let synced = |node: &str| rows.iter().filter(|r| r.starts_with(node) && r.trim_end().ends_with("SYNCED")).count();
        Ok((rows.len() == 2 * TYPES.len() && synced("node1 ") == TYPES.len() && synced("node2 ") == TYPES.len()).then_some(table))
    })?;
    eprintln!("{what}: SYNCED {:?} after the restart, {:?} after the kill\n{sync}", up.elapsed(), down.elapsed());
    ensure!(load.running(), "{what}: the load ended before the agents resynced: it did not span the outage");
    let pushes = Pushes { metrics: scene.bed.cp_metrics()? };
    load.finish(what)?;
    for node in ["node1", "node2"] {
        let log = scene.bed.agent_log(node);
        let bad: Vec<&str> = log.lines().filter(|l| l.contains("mTLS handshake")).take(5).collect();
        ensure!(bad.is_empty(), "{what}: {node} logged failed handshakes:\n{}", bad.join("\n"));
    }
    for t in TYPES {
        eprintln!(
            "{what}: pushes of {t}: resume {}, initial {}, change {}; {} bytes",
            pushes.count(t, "resume"),
            pushes.count(t, "initial"),
            pushes.count(t, "change"),
            pushes.bytes(t)
        );
    }
    // Both agents hold Address and Authorization resources: those resume, one first
    // answer per agent. Of the other types they hold nothing; a first answer to an
    // agent that names nothing counts as initial (the protocol cannot tell it from a
    // new agent), and must carry nothing.
    for t in HELD {
        ensure!(pushes.count(t, "resume") == 2, "{what}: {t}: expected a resume per agent:\n{}", pushes.metrics);
        ensure!(pushes.count(t, "initial") == 0, "{what}: {t}: a full push instead of a resume:\n{}", pushes.metrics);
    }
    for t in TYPES.iter().filter(|t| !HELD.contains(t)) {
        ensure!(pushes.bytes(t) == 0, "{what}: {t} pushed to agents that hold none:\n{}", pushes.metrics);
    }
    Ok(pushes)
}

#[test]
fn agents_ride_out_a_control_plane_restart_and_resume() -> Result<()> {
    if !require_root("control_plane_restart") {
        return Ok(());
    }
    let t0 = Instant::now();
    let mut scene = Scene::start_in(TestBed::new("cp-restart")?, Options { second_node: true, outsider: false })?;
    let echo2 = scene.echo2.clone().expect("echo-2");
    scene.bed.write_config("rr.yaml", &service("rr", RR_VIP, RR_PORT, RR_PORT))?;
    scene.bed.write_config("deny-nobody.yaml", DENY_NOBODY)?;
    let rr_bin = binary("mesh-rr")?;
    let rr_bin = rr_bin.to_str().context("path")?.to_string();
    let mut rr_servers = Vec::new();
    for p in [&scene.echo1, &echo2] {
        rr_servers.push(p.spawn(&[&rr_bin, "server", "--port", &RR_PORT.to_string()])?);
        p.wait_listening(RR_PORT, Duration::from_secs(10))?;
    }
    for node in ["node1", "node2"] {
        scene.bed.wait_for_service(node, RR_VIP, 2)?;
    }
    wait_until("both agents hold the policy", Duration::from_secs(15), || {
        let held = |n: &str| -> Result<bool> { Ok(scene.bed.config_dump(n)?.to_string().contains("deny-nobody")) };
        Ok((held("node1")? && held("node2")?).then_some(()))
    })?;
    assert_eq!(curl_ok(&scene.client, &format!("http://{ECHO_VIP}/"), 5)?.matches("hello from echo-").count(), 1);
    let full = Pushes { metrics: scene.bed.cp_metrics()? };
    let full_bytes = full.bytes("Address");
    eprintln!("setup: {:?}; first control plane pushed {full_bytes} bytes of Address", t0.elapsed());

    // Outage 1: nothing changes; the resume answers carry nothing.
    let quiet = outage(&mut scene, "outage 1 (no change)", |_| Ok(()))?;
    ensure!(quiet.total_bytes() == 0, "outage 1: the resume re-sent resources nothing changed:\n{}", quiet.metrics);

    // Outage 2: a new Service, and a new echo pod on node2 with an identity the
    // restarted CA has to issue; both reach the agents on the resume.
    let mut echo3 = None;
    let changed = outage(&mut scene, "outage 2 (a Service and a pod added)", |scene| {
        scene.bed.write_config("late.yaml", &service("late", LATE_VIP, 80, 8080))?;
        let pod = scene.bed.add_pod("node2", "default", "echo-3", "echo-late", &[("app", "echo")])?;
        scene.bed.enroll(&pod)?;
        scene.start_echo(&pod)?;
        rr_servers.push(pod.spawn(&[&rr_bin, "server", "--port", &RR_PORT.to_string()])?);
        pod.wait_listening(RR_PORT, Duration::from_secs(10))?;
        echo3 = Some(pod);
        Ok(())
    })?;
    let echo3 = echo3.expect("echo-3");
    let resumed = changed.bytes("Address");
    let held = changed.config_bytes("node1") + changed.config_bytes("node2");
    eprintln!("outage 2: resume pushed {resumed} bytes of Address; the agents hold {held} bytes");
    ensure!(resumed > 0, "outage 2: the changes were not pushed");
    ensure!(resumed < held, "outage 2: the resume pushed {resumed} bytes, as much as the agents hold ({held}): a full push");
    for node in ["node1", "node2"] {
        scene.bed.wait_for_service(node, LATE_VIP, 3)?;
        scene.bed.wait_for_service(node, ECHO_VIP, 3)?;
        scene.bed.wait_for_workload(node, &echo3.ip)?;
    }
    assert_eq!(curl_ok(&scene.client, &format!("http://{LATE_VIP}/"), 5)?.matches("hello from echo-").count(), 1);
    // Across nodes, the client's certificate (from before the restarts) and echo-3's
    // (issued by the restarted CA) verify each other.
    assert_eq!(curl_ok(&scene.client, &format!("http://{}:8080/", echo3.ip), 5)?.trim(), "hello from echo-3");
    ensure!(scene.bed.certificate("node2", &echo3.identity())?.is_some(), "node2 holds no certificate for echo-3");
    for node in ["node1", "node2"] {
        ensure!(!scene.bed.agent_log(node).contains("mTLS handshake"), "{node} logged a failed handshake");
    }
    eprintln!("total: {:?}", t0.elapsed());
    drop(rr_servers);
    scene.finish();
    Ok(())
}
