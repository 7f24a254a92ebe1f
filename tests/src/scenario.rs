//! The standard scene of the demo and the tests, on top of `deploy/examples/default`:
//! node1 holds `client` (sa sleep) and `echo-1` (sa echo, app=echo), node2 holds
//! `echo-2`, and `outsider` in namespace `legacy` (not in the mesh) sits on node1.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::proc::Proc;
use crate::{binary, default_config, Pod, TestBed};

pub const ECHO_VIP: &str = "10.96.0.10";
pub const ECHO_PORT: u16 = 8080;

pub struct Options {
    pub second_node: bool,
    pub outsider: bool,
}

pub struct Scene {
    pub client: Pod,
    pub echo1: Pod,
    pub echo2: Option<Pod>,
    pub outsider: Option<Pod>,
    /// The echo servers, by pod name.
    pub servers: Vec<(String, Proc)>,
    // Dropped last: processes above die before the bed's namespaces go.
    pub bed: TestBed,
}

impl Scene {
    /// Builds the pods, starts the control plane and the agents, enrolls the mesh
    /// pods, starts echo servers and waits until node1's agent knows the service.
    pub fn start(purpose: &str, opts: Options) -> Result<Scene> {
        Self::start_in(TestBed::new(purpose)?, opts)
    }

    /// As [`Scene::start`], on a fresh bed the caller has set up (e.g. its
    /// `control_plane_args`).
    pub fn start_in(mut bed: TestBed, opts: Options) -> Result<Scene> {
        bed.add_node("node1")?;
        if opts.second_node {
            bed.add_node("node2")?;
        }
        let client = bed.add_pod("node1", "default", "client", "sleep", &[("app", "client")])?;
        let echo1 = bed.add_pod("node1", "default", "echo-1", "echo", &[("app", "echo")])?;
        let echo2 = if opts.second_node {
            Some(bed.add_pod("node2", "default", "echo-2", "echo", &[("app", "echo")])?)
        } else {
            None
        };
        let outsider = if opts.outsider {
            Some(bed.add_pod("node1", "legacy", "outsider", "default", &[("app", "outsider")])?)
        } else {
            None
        };
        bed.start_control_plane(&default_config())?;
        bed.start_agent("node1")?;
        if opts.second_node {
            bed.start_agent("node2")?;
        }
        bed.enroll(&client)?;
        bed.enroll(&echo1)?;
        if let Some(e) = &echo2 {
            bed.enroll(e)?;
        }
        let echo_bin = binary("mesh-echo")?;
        let echo_bin = echo_bin.to_str().context("path")?.to_string();
        let port = ECHO_PORT.to_string();
        let mut servers = Vec::new();
        for pod in [Some(&echo1), echo2.as_ref()].into_iter().flatten() {
            let p = pod.spawn(&[&echo_bin, "--port", &port, "--name", &pod.name])?;
            pod.wait_listening(ECHO_PORT, Duration::from_secs(10))?;
            servers.push((pod.name.clone(), p));
        }
        let backends = if opts.second_node { 2 } else { 1 };
        bed.wait_for_service("node1", ECHO_VIP, backends)?;
        bed.wait_for_workload("node1", &client.ip)?;
        bed.wait_for_workload("node1", &echo1.ip)?;
        if let Some(e) = &echo2 {
            bed.wait_for_workload("node1", &e.ip)?;
            bed.wait_for_workload("node2", &e.ip)?;
            bed.wait_for_workload("node2", &client.ip)?;
        }
        Ok(Scene { client, echo1, echo2, outsider, servers, bed })
    }

    /// Ends a scene that did its job (see `TestBed::finish`).
    pub fn finish(self) {
        let Scene { servers, bed, .. } = self;
        drop(servers);
        bed.finish();
    }

    /// What the echo server of `pod` printed so far.
    pub fn server_output(&self, pod: &str) -> String {
        self.servers.iter().find(|(n, _)| n == pod).map(|(_, p)| p.output()).unwrap_or_default()
    }

    /// A mesh-echo server in a pod that is not part of the scene (e.g. `outsider`).
    pub fn start_echo(&mut self, pod: &Pod) -> Result<()> {
        let echo_bin = binary("mesh-echo")?;
        let p = pod.spawn(&[echo_bin.to_str().context("path")?, "--port", &ECHO_PORT.to_string(), "--name", &pod.name])?;
        pod.wait_listening(ECHO_PORT, Duration::from_secs(10))?;
        self.servers.push((pod.name.clone(), p));
        Ok(())
    }
}

/// `curl` with a few retries: the first connection may race the agent's config.
pub fn curl_ok(pod: &Pod, url: &str, attempts: usize) -> Result<String> {
    let mut last = String::new();
    for i in 0..attempts.max(1) {
        let (code, body) = pod.curl(url)?;
        if code == 200 {
            return Ok(body);
        }
        last = format!("HTTP {code}: {body}");
        std::thread::sleep(Duration::from_millis(200 * (i as u64 + 1)));
    }
    anyhow::bail!("curl {url} from {} failed {attempts} times; last: {last}", pod.name)
}

/// The port the tests' `mesh-rr server` listens on.
pub const RR_PORT: u16 = 7000;

/// `mesh-rr client` in `pod` towards `ip:RR_PORT` for `seconds`, in the background: one
/// long-lived connection, or with `connect_each` a new connection per request (going
/// on after a failure, so that every failure is counted).
pub fn rr(pod: &Pod, ip: &str, seconds: u32, connect_each: bool) -> Result<Proc> {
    let bin = binary("mesh-rr")?;
    let addr = format!("{ip}:{RR_PORT}");
    let secs = seconds.to_string();
    let mut args = vec![bin.to_str().context("path")?, "client", "--addr", &addr, "--count", "100000000", "--seconds", &secs];
    if connect_each {
        args.extend(["--connect-each", "--keep-going"]);
    }
    pod.spawn(&args)
}

/// Waits for a background `mesh-rr` client and returns its exit success and JSON summary.
pub fn rr_finish(mut p: Proc) -> Result<(bool, serde_json::Value)> {
    let st = p.wait_timeout(Duration::from_secs(60)).context("mesh-rr did not finish")?;
    let out = p.output();
    let line = out.lines().find(|l| l.starts_with('{')).with_context(|| format!("no summary from mesh-rr: {out}"))?;
    Ok((st.success(), serde_json::from_str(line)?))
}
