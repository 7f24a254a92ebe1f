//! `TestBed`: nodes and pods as network namespaces on one machine, with the control
//! plane and one agent per node as real processes.
//!
//! Addresses: node k (1-based) holds pods in 10.201.k.0/24 behind bridge `br0`
//! (10.201.k.1); nodes meet on a fabric namespace's bridge as 10.200.0.k/24 through
//! their `fab0` interface. Interface names are short and fixed because each lives in
//! its own namespace; only namespace names carry the bed prefix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::cleanup::{self, BPFFS_ROOT, CGROUP_ROOT, WORK_ROOT};
use crate::proc::{self, Proc};
use crate::{agent_binary, cni, meshctl_binary};

pub const TRUST_DOMAIN: &str = "cluster.local";

static BED_COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct Node {
    pub name: String,
    pub index: u8,
    /// Network namespace name (`/run/netns/<netns>`).
    pub netns: String,
    next_host: u8,
    next_veth: u32,
}

impl Node {
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }
    pub fn fabric_ip(&self) -> String {
        format!("10.200.0.{}", self.index)
    }
}

/// A simulated pod: its own network namespace, a veth to its node's bridge, a cgroup.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub uid: String,
    pub node: String,
    pub ip: String,
    /// The pod's IPv6 address (every pod is dual stack).
    pub ip6: String,
    pub labels: BTreeMap<String, String>,
    pub netns: String,
    pub cgroup: PathBuf,
    pub yaml: PathBuf,
    log_dir: PathBuf,
}

impl Pod {
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    pub fn identity(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}", self.namespace, self.service_account)
    }

    /// Starts `args` inside the pod (its cgroup, then its netns); logs to
    /// `<work>/logs/<pod>-<program>.log`; killed when the handle drops.
    pub fn spawn(&self, args: &[&str]) -> Result<Proc> {
        let cmd = proc::command(args, Some(&self.netns_path()), Some(&self.cgroup))?;
        let prog = Path::new(args[0]).file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let mut name = format!("{}-{}", self.name, prog);
        let mut n = 1;
        while self.log_dir.join(format!("{name}.log")).exists() {
            n += 1;
            name = format!("{}-{}-{n}", self.name, prog);
        }
        Proc::spawn(&name, cmd, &self.log_dir)
    }

    /// Runs `args` inside the pod to completion (at most 30 s).
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        self.run_timeout(args, Duration::from_secs(30))
    }

    pub fn run_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        proc::run(args, Some(&self.netns_path()), Some(&self.cgroup), timeout)
    }

    /// `curl` from this pod; returns (HTTP status, body). Status 0: no response.
    pub fn curl(&self, url: &str) -> Result<(u16, String)> {
        self.curl_with(&[url])
    }

    /// `curl` with more arguments (`-H ...`, `-X POST`, `--path-as-is`, the URL);
    /// returns (HTTP status, body), or (0, curl's error) when nothing answered.
    pub fn curl_with(&self, args: &[&str]) -> Result<(u16, String)> {
        let mut all = vec!["curl", "-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"];
        all.extend_from_slice(args);
        let out = self.run_timeout(&all, Duration::from_secs(10))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        let code = code.trim().parse().unwrap_or(0);
        if code == 0 {
            return Ok((0, String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        Ok((code, body.to_string()))
    }

    /// Waits until a TCP socket listens on `port` in the pod.
    pub fn wait_listening(&self, port: u16, timeout: Duration) -> Result<()> {
        let filter = format!("sport = :{port}");
        wait_until(&format!("{} listening on {port}", self.name), timeout, || {
            let out = self.run(&["ss", "-Hltn", &filter])?;
            Ok((!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(()))
        })
    }

    /// The kernel's cookie for this pod's network namespace (`SO_NETNS_COOKIE`).
    pub fn netns_cookie(&self) -> Result<u64> {
        let path = self.netns_path();
        std::thread::scope(|s| {
            s.spawn(|| -> Result<u64> {
                let f = std::fs::File::open(&path)?;
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
                let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
                let mut cookie: u64 = 0;
                let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
                // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
                let rc = unsafe {
                    libc::getsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&sock),
                        libc::SOL_SOCKET,
                        libc::SO_NETNS_COOKIE,
                        (&mut cookie as *mut u64).cast(),
                        &mut len,
                    )
                };
                if rc != 0 {
                    bail!("SO_NETNS_COOKIE: {}", std::io::Error::last_os_error());
                }
                Ok(cookie)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("netns cookie thread panicked"))?
        })
    }
}

struct Agent {
    proc: Proc,
    admin_port: u16,
    cni_socket: PathBuf,
    /// The `--drain-timeout` it was started with.
    drain_timeout: Duration,
}

pub struct TestBed {
    pub name: String,
    /// `/tmp/mesh-test/<bed>`: config dir, state dir, logs, sockets.
    pub work: PathBuf,
    pub config_dir: PathBuf,
    pub log_dir: PathBuf,
    cgroup_root: PathBuf,
    fabric: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    control_plane: Option<Proc>,
    cp_port: u16,
    /// The control plane's `--admin` port: picked once, kept across restarts.
    cp_admin_port: u16,
    agents: BTreeMap<String, Agent>,
    /// Other processes of the bed (node-level tools); killed on drop.
    pub procs: Vec<Proc>,
    /// Set by `finish`: a bed dropped without it (a panic or an early `?` return)
    /// prints its logs.
    finished: bool,
    /// `--drain-timeout` of the agents started from now on.
    pub drain_timeout: Duration,
    /// More flags for the control plane started from now on (e.g. `--cert-ttl 8s`).
    pub control_plane_args: Vec<String>,
}

/// How a graceful restart went (see [`TestBed::restart_agent_graceful`]).
#[derive(Debug, Clone, Copy)]
pub struct GracefulRestart {
    /// From starting the new agent until it served (took every pod over).
    pub took_over: Duration,
    /// From starting the new agent until the old one had drained and exited.
    pub old_exited: Duration,
}

impl TestBed {
    /// A fresh bed; also removes leftovers of earlier runs that were killed.
    pub fn new(purpose: &str) -> Result<TestBed> {
        cleanup::cleanup_stale();
        let n = BED_COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("mt{}b{n}", std::process::id());
        cleanup::register(&name);
        let work = Path::new(WORK_ROOT).join(&name);
        let _ = std::fs::remove_dir_all(&work);
        let config_dir = work.join("config");
        let log_dir = work.join("logs");
        std::fs::create_dir_all(&config_dir)?;
        std::fs::create_dir_all(&log_dir)?;
        std::fs::write(work.join("PURPOSE"), purpose)?;
        let cgroup_root = Path::new(CGROUP_ROOT).join(&name);
        std::fs::create_dir_all(cgroup_root.join("sys"))
            .with_context(|| format!("create cgroup {} (is cgroup v2 mounted at /sys/fs/cgroup/unified?)", cgroup_root.display()))?;
        let fabric = format!("{name}-fab");
        let bed = TestBed {
            name,
            work,
            config_dir,
            log_dir,
            cgroup_root,
            fabric,
            nodes: Vec::new(),
            pods: Vec::new(),
            control_plane: None,
            cp_port: 0,
            cp_admin_port: 0,
            agents: BTreeMap::new(),
            procs: Vec::new(),
            finished: false,
            drain_timeout: Duration::from_secs(15),
            control_plane_args: Vec::new(),
        };
        bed.ip(&["netns", "add", &bed.fabric.clone()])?;
        bed.ipn(&bed.fabric.clone(), &["link", "set", "lo", "up"])?;
        bed.ipn(&bed.fabric.clone(), &["link", "add", "br0", "type", "bridge"])?;
        bed.ipn(&bed.fabric.clone(), &["link", "set", "br0", "up"])?;
        Ok(bed)
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip"];
        full.extend_from_slice(args);
        proc::host(&full)
    }

    fn ipn(&self, netns: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "-n", netns];
        full.extend_from_slice(args);
        proc::host(&full)
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes.iter().find(|n| n.name == name).with_context(|| format!("no node {name} in bed"))
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn bpffs(&self, node: &str) -> PathBuf {
        Path::new(BPFFS_ROOT).join(&self.name).join(node)
    }

    /// A node: its namespace with bridge `br0` for pods, `fab0` on the fabric, routes
    /// to every other node's pod subnet, and forwarding on.
    pub fn add_node(&mut self, name: &str) -> Result<()> {
        if self.nodes.len() >= 200 {
            bail!("too many nodes");
        }
        let index = self.nodes.len() as u8 + 1;
        let netns = format!("{}-{name}", self.name);
        self.ip(&["netns", "add", &netns])?;
        proc::host(&["ip", "netns", "exec", &netns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])?;
        self.ipn(&netns, &["link", "set", "lo", "up"])?;
        self.ipn(&netns, &["link", "add", "br0", "type", "bridge"])?;
        self.ipn(&netns, &["addr", "add", &format!("10.201.{index}.1/24"), "dev", "br0"])?;
        self.ipn(&netns, &["addr", "add", &format!("fd00:201:{index}::1/64"), "dev", "br0", "nodad"])?;
        self.ipn(&netns, &["link", "set", "br0", "up"])?;
        let fab_if = format!("f{index}");
        let fabric = self.fabric.clone();
        self.ipn(&fabric, &["link", "add", &fab_if, "type", "veth", "peer", "name", "fab0", "netns", &netns])?;
        self.ipn(&fabric, &["link", "set", &fab_if, "master", "br0", "up"])?;
        self.ipn(&netns, &["addr", "add", &format!("10.200.0.{index}/24"), "dev", "fab0"])?;
        self.ipn(&netns, &["addr", "add", &format!("fd00:200::{index}/64"), "dev", "fab0", "nodad"])?;
        self.ipn(&netns, &["link", "set", "fab0", "up"])?;
        for other in &self.nodes {
            let to_other = format!("10.201.{}.0/24", other.index);
            self.ipn(&netns, &["route", "add", &to_other, "via", &other.fabric_ip()])?;
            let to_new = format!("10.201.{index}.0/24");
            self.ipn(&other.netns, &["route", "add", &to_new, "via", &format!("10.200.0.{index}")])?;
            let (o, i) = (other.index, index);
            self.ipn(&netns, &["-6", "route", "add", &format!("fd00:201:{o}::/64"), "via", &format!("fd00:200::{o}")])?;
            self.ipn(&other.netns, &["-6", "route", "add", &format!("fd00:201:{i}::/64"), "via", &format!("fd00:200::{i}")])?;
        }
        self.nodes.push(Node { name: name.to_string(), index, netns, next_host: 2, next_veth: 0 });
        Ok(())
    }

    /// A pod on `node`: namespace, veth `eth0` on the node bridge, address and default
    /// route, a cgroup, and its Pod object in the config folder.
    pub fn add_pod(&mut self, node: &str, namespace: &str, name: &str, sa: &str, labels: &[(&str, &str)]) -> Result<Pod> {
        let bed = self.name.clone();
        let log_dir = self.log_dir.clone();
        let cgroup_root = self.cgroup_root.clone();
        let config_dir = self.config_dir.clone();
        let n = self.nodes.iter_mut().find(|n| n.name == node).with_context(|| format!("no node {node}"))?;
        if n.next_host >= 250 {
            bail!("node {node} is full");
        }
        let ip = format!("10.201.{}.{}", n.index, n.next_host);
        let ip6 = format!("fd00:201:{}::{:x}", n.index, n.next_host);
        n.next_host += 1;
        let veth = format!("p{}", n.next_veth);
        n.next_veth += 1;
        let node_ns = n.netns.clone();
        let index = n.index;
        let netns = format!("{bed}-{node}-{namespace}-{name}");
        self.ip(&["netns", "add", &netns])?;
        self.ipn(&node_ns, &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
        self.ipn(&node_ns, &["link", "set", &veth, "master", "br0", "up"])?;
        self.ipn(&netns, &["link", "set", "lo", "up"])?;
        self.ipn(&netns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        self.ipn(&netns, &["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"])?;
        self.ipn(&netns, &["link", "set", "eth0", "up"])?;
        self.ipn(&netns, &["route", "add", "default", "via", &format!("10.201.{index}.1")])?;
        self.ipn(&netns, &["-6", "route", "add", "default", "via", &format!("fd00:201:{index}::1")])?;
        let cgroup = cgroup_root.join(format!("{node}-{namespace}-{name}"));
        std::fs::create_dir_all(&cgroup)?;
        let pod = Pod {
            name: name.to_string(),
            namespace: namespace.to_string(),
            service_account: sa.to_string(),
            uid: format!("{bed}-{namespace}-{name}"),
            node: node.to_string(),
            ip,
            ip6,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            netns,
            cgroup,
            yaml: config_dir.join(format!("pod-{namespace}-{name}.yaml")),
            log_dir,
        };
        write_atomic(&pod.yaml, &pod_yaml(&pod))?;
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// Deletes the pod's YAML, processes, namespace and cgroup.
    pub fn remove_pod(&mut self, pod: &Pod) -> Result<()> {
        let _ = std::fs::remove_file(&pod.yaml);
        let _ = std::fs::write(pod.cgroup.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(3);
        while std::fs::remove_dir(&pod.cgroup).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.ip(&["netns", "del", &pod.netns])?;
        self.pods.retain(|p| p.uid != pod.uid);
        Ok(())
    }

    /// Copies the YAML files of `src` into the config folder and starts the control
    /// plane on a free port; returns once it accepts connections.
    pub fn start_control_plane(&mut self, src: &Path) -> Result<()> {
        for e in std::fs::read_dir(src).with_context(|| format!("read {}", src.display()))? {
            let e = e?;
            let p = e.path();
            if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
                std::fs::copy(&p, self.config_dir.join(e.file_name()))?;
            }
        }
        let port = free_port()?;
        self.spawn_control_plane(port)
    }

    /// Stops the control plane (SIGTERM); agents keep their last config.
    pub fn stop_control_plane(&mut self) -> Option<std::process::ExitStatus> {
        let mut cp = self.control_plane.take()?;
        let st = cp.stop(Duration::from_secs(10));
        let _ = std::fs::copy(&cp.log, self.log_dir.join("control-plane.stopped.log"));
        st
    }

    /// Kills the control plane (SIGKILL), as a crash or an evicted pod would: no
    /// goodbye to the agents, no flushing. Returns once it is gone.
    pub fn kill_control_plane(&mut self) -> Option<std::process::ExitStatus> {
        let mut cp = self.control_plane.take()?;
        cp.signal(libc::SIGKILL);
        let st = cp.wait_timeout(Duration::from_secs(10));
        let _ = std::fs::copy(&cp.log, self.log_dir.join("control-plane.killed.log"));
        st
    }

    /// Starts the control plane again on the port the agents were given.
    pub fn restart_control_plane(&mut self) -> Result<()> {
        if self.cp_port == 0 {
            bail!("the control plane was never started");
        }
        self.spawn_control_plane(self.cp_port)
    }

    /// The control plane's `--state-dir` (its CA root and node-token key live there).
    pub fn cp_state_dir(&self) -> PathBuf {
        self.work.join("cp-state")
    }

    /// A file (mode 0600) holding `node`'s token, as `mesh-agent node-token` prints it
    /// with the control plane's key (made now if the control plane has not started yet).
    pub fn node_token_file(&self, node: &str) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.work.join(format!("token-{node}"));
        if !path.exists() {
            let bin = agent_binary()?;
            let state = self.cp_state_dir();
            let args = [bin.to_str().unwrap_or("mesh-agent"), "node-token", "--node", node, "--state-dir", state.to_str().unwrap_or_default()];
            let out = proc::run(&args, None, None, Duration::from_secs(10))?;
            if !out.status.success() {
                bail!("mesh-agent node-token --node {node} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            write_atomic(&path, &String::from_utf8_lossy(&out.stdout))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(path)
    }

    fn spawn_control_plane(&mut self, port: u16) -> Result<()> {
        let state = self.cp_state_dir();
        std::fs::create_dir_all(&state)?;
        let listen = format!("127.0.0.1:{port}");
        if self.cp_admin_port == 0 {
            self.cp_admin_port = free_port()?;
        }
        let admin = self.cp_admin();
        let bin = agent_binary()?;
        let args = [
            bin.to_str().unwrap_or("mesh-agent"),
            "control-plane",
            "--config-dir",
            self.config_dir.to_str().unwrap_or_default(),
            "--listen",
            &listen,
            "--state-dir",
            state.to_str().unwrap_or_default(),
            "--trust-domain",
            TRUST_DOMAIN,
            // Beds run side by side: a port of this bed's, the same after a restart.
            "--admin",
            &admin,
        ];
        let args: Vec<&str> = args.into_iter().chain(self.control_plane_args.iter().map(String::as_str)).collect();
        let mut cmd = proc::command(&args, None, Some(&self.cgroup_root.join("sys")))?;
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
        let mut cp = Proc::spawn("control-plane", cmd, &self.log_dir)?;
        let r = wait_until("control plane accepting connections", Duration::from_secs(30), || {
            if let Some(st) = cp.try_wait() {
                bail!("control plane exited ({st}):\n{}", tail(&cp.output(), 30));
            }
            Ok(std::net::TcpStream::connect(&listen).ok().map(|_| ()))
        });
        self.cp_port = port;
        self.control_plane = Some(cp);
        r
    }

    pub fn control_plane_log(&self) -> String {
        self.control_plane.as_ref().map(|p| p.output()).unwrap_or_default()
    }

    /// The control plane's admin address (its `--admin`: `/metrics`, `/debug/syncz`).
    pub fn cp_admin(&self) -> String {
        format!("127.0.0.1:{}", self.cp_admin_port)
    }

    /// The control plane's Prometheus metrics (`mesh_cp_*`).
    pub fn cp_metrics(&self) -> Result<String> {
        let url = format!("http://{}/metrics", self.cp_admin());
        let (code, body) = http_get(&url)?;
        if code != 200 {
            bail!("GET {url}: HTTP {code}");
        }
        Ok(body)
    }

    /// `meshctl sync --control-plane <admin>`: its table, one row per agent and type.
    pub fn cp_sync(&self) -> Result<String> {
        let bin = meshctl_binary()?;
        let admin = self.cp_admin();
        let out = proc::run(&[bin.to_str().unwrap_or("meshctl"), "sync", "--control-plane", &admin], None, None, Duration::from_secs(10))?;
        if !out.status.success() {
            bail!("meshctl sync --control-plane {admin} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts the agent of `node` in the host network namespace; returns once its CNI
    /// socket exists and `/ready` answers 200.
    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        self.node(node)?;
        if self.cp_port == 0 {
            bail!("start the control plane before agents");
        }
        let bpffs = self.bpffs(node);
        if let Some(parent) = bpffs.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("create {} (is bpffs mounted?)", parent.display()))?;
        }
        let cni_socket = self.work.join(format!("cni-{node}.sock"));
        let _ = std::fs::remove_file(&cni_socket);
        let admin_port = free_port()?;
        let admin = format!("127.0.0.1:{admin_port}");
        let mut p = self.spawn_agent(node, admin_port, &format!("agent-{node}"))?;
        let ready_url = format!("http://{admin}/ready");
        let r = wait_until(&format!("agent {node} ready"), Duration::from_secs(30), || {
            if let Some(st) = p.try_wait() {
                bail!("agent {node} exited ({st}):\n{}", tail(&p.output(), 30));
            }
            if !cni_socket.exists() {
                return Ok(None);
            }
            Ok(matches!(http_get(&ready_url), Ok((200, _))).then_some(()))
        });
        let drain_timeout = self.drain_timeout;
        self.agents.insert(node.to_string(), Agent { proc: p, admin_port, cni_socket, drain_timeout });
        r
    }

    /// The command line of `node`'s agent with admin port `admin_port` (each node has
    /// its own CNI socket, hand-over socket, node token and bpffs folder under the bed).
    pub fn agent_args(&self, node: &str, admin_port: u16) -> Result<Vec<String>> {
        let xds = format!("http://127.0.0.1:{}", self.cp_port);
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        let bin = agent_binary()?;
        let token = self.node_token_file(node)?;
        let args = [
            path(bin).as_str(), "agent", "--node", node, "--xds-address", &xds, "--ca-address", &xds,
            "--node-token-file", &path(token),
            "--cni-socket", &path(self.work.join(format!("cni-{node}.sock"))),
            "--handover-socket", &path(self.work.join(format!("handover-{node}.sock"))),
            "--drain-timeout", &format!("{}ms", self.drain_timeout.as_millis()),
            "--bpffs", &path(self.bpffs(node)),
            "--admin-address", &format!("127.0.0.1:{admin_port}"), "--metrics-address", "127.0.0.1:0",
        ]
        .map(String::from);
        Ok(args.to_vec())
    }

    fn spawn_agent(&self, node: &str, admin_port: u16, name: &str) -> Result<Proc> {
        let args = self.agent_args(node, admin_port)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = proc::command(&args, None, Some(&self.cgroup_root.join("sys")))?;
        cmd.env("RUST_LOG", "info,access=info").env("NO_COLOR", "1");
        Proc::spawn(name, cmd, &self.log_dir)
    }

    /// Replaces `node`'s agent without a gap: starts a new agent while the old one
    /// runs; the new one takes the old one's listeners over the hand-over socket and
    /// serves; the old one drains and exits. Returns once the old one has exited, which
    /// must happen within the drain timeout it was started with (plus 10 s).
    pub fn restart_agent_graceful(&mut self, node: &str) -> Result<GracefulRestart> {
        let mut old = self.agents.remove(node).with_context(|| format!("no agent running on {node}"))?;
        let start = Instant::now();
        let mut n = 2;
        while self.log_dir.join(format!("agent-{node}-{n}.log")).exists() {
            n += 1;
        }
        let mut new = match self.spawn_agent(node, old.admin_port, &format!("agent-{node}-{n}")) {
            Ok(p) => p,
            Err(e) => {
                self.agents.insert(node.to_string(), old);
                return Err(e);
            }
        };
        let served = wait_until(&format!("new agent {node} took over"), Duration::from_secs(60), || {
            if let Some(st) = new.try_wait() {
                bail!("new agent {node} exited ({st}):\n{}", tail(&new.output(), 30));
            }
            Ok(new.output().contains("agent ready for pods").then_some(()))
        });
        if let Err(e) = served {
            self.agents.insert(node.to_string(), old);
            return Err(e);
        }
        let took_over = start.elapsed();
        let (admin_port, cni_socket, drain_timeout) = (old.admin_port, old.cni_socket.clone(), self.drain_timeout);
        self.agents.insert(node.to_string(), Agent { proc: new, admin_port, cni_socket, drain_timeout });
        // The old agent drains: bounded by the drain timeout it was started with.
        let bound = old.drain_timeout + Duration::from_secs(10);
        let st = old.proc.wait_timeout(bound);
        let old_exited = start.elapsed();
        let _ = std::fs::copy(&old.proc.log, self.log_dir.join(format!("agent-{node}.drained-{}.log", n - 1)));
        match st {
            None => {
                old.proc.stop(Duration::from_secs(5));
                bail!("the old agent of {node} did not exit within {bound:?} of the hand-over:\n{}", tail(&old.proc.output(), 30))
            }
            Some(st) if !st.success() => bail!("the old agent of {node} exited with {st}:\n{}", tail(&old.proc.output(), 30)),
            Some(_) => Ok(GracefulRestart { took_over, old_exited }),
        }
    }

    fn agent(&self, node: &str) -> Result<&Agent> {
        self.agents.get(node).with_context(|| format!("no agent started on {node}"))
    }

    pub fn agent_pid(&self, node: &str) -> Result<u32> {
        Ok(self.agent(node)?.proc.pid())
    }

    pub fn agent_log(&self, node: &str) -> String {
        self.agents.get(node).map(|a| a.proc.output()).unwrap_or_default()
    }

    /// Stops the agent of `node` with SIGTERM (SIGKILL after 10 s); returns its exit status.
    pub fn stop_agent(&mut self, node: &str) -> Option<std::process::ExitStatus> {
        let mut a = self.agents.remove(node)?;
        let st = a.proc.stop(Duration::from_secs(10));
        // Keep the log readable after the stop.
        let _ = std::fs::copy(&a.proc.log, self.log_dir.join(format!("agent-{node}.stopped.log")));
        st
    }

    /// Access-log lines of the agent on `node`.
    pub fn access_log(&self, node: &str) -> Vec<String> {
        access_lines(&self.agent_log(node))
    }

    /// Tells the pod's agent that the pod exists, as the CNI hook would.
    pub fn enroll(&self, pod: &Pod) -> Result<()> {
        self.enroll_with(pod, json!({}))
    }

    /// Like [`TestBed::enroll`], with `extra` fields merged into the pod event, e.g.
    /// `{"annotations": {...}, "peer_authentication": "STRICT"}`. Enrolling an
    /// enrolled pod again replaces its enrollment.
    pub fn enroll_with(&self, pod: &Pod, extra: Value) -> Result<()> {
        let a = self.agent(&pod.node)?;
        let mut event = json!({
            "uid": pod.uid, "namespace": pod.namespace, "name": pod.name,
            "service_account": pod.service_account, "labels": pod.labels,
            "ips": [pod.ip, pod.ip6], "netns": pod.netns_path(), "cgroup": pod.cgroup,
        });
        if let (Some(e), Some(x)) = (event.as_object_mut(), extra.as_object()) {
            e.extend(x.clone());
        }
        let msg = json!({"op": "add", "pod": event});
        cni::request(&a.cni_socket, &msg).with_context(|| format!("enroll {}/{}", pod.namespace, pod.name))
    }

    pub fn unenroll(&self, pod: &Pod) -> Result<()> {
        let a = self.agent(&pod.node)?;
        cni::request(&a.cni_socket, &json!({"op": "delete", "uid": pod.uid}))
            .with_context(|| format!("unenroll {}/{}", pod.namespace, pod.name))
    }

    /// Writes a file into the watched config folder (atomically, by rename).
    pub fn write_config(&self, file: &str, text: &str) -> Result<()> {
        write_atomic(&self.config_dir.join(file), text)
    }

    /// How many drops `DROPS` holds for the pod at `ip` and `reason` (e.g. `strict_plaintext`).
    pub fn drops(&self, node: &str, ip: &str, reason: &str) -> Result<u64> {
        let dump = self.map_dump(node, "DROPS")?;
        Ok(dump
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["pod"] == ip && d["reason"] == reason)
            .and_then(|d| d["count"].as_u64())
            .unwrap_or(0))
    }

    /// The value of one metric series, e.g. `mesh_connections_total{direction="outbound",result="success"}`
    /// (0 when absent).
    pub fn metric(&self, node: &str, series: &str) -> Result<u64> {
        Ok(series_value(&self.metrics(node)?, series))
    }

    /// The agent's Prometheus metrics (text exposition).
    pub fn metrics(&self, node: &str) -> Result<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.agent(node)?.admin_port);
        let (code, body) = http_get(&url)?;
        if code != 200 {
            bail!("GET {url}: HTTP {code}");
        }
        Ok(body)
    }

    pub fn config_dump(&self, node: &str) -> Result<Value> {
        let a = self.agent(node)?;
        let (code, body) = http_get(&format!("http://127.0.0.1:{}/config_dump", a.admin_port))?;
        if code != 200 {
            bail!("config_dump of {node}: HTTP {code}: {body}");
        }
        serde_json::from_str(&body).context("config_dump is not JSON")
    }

    /// The serial (hex) and expiry (Unix seconds) of the certificate the agent on
    /// `node` holds for `identity` (its admin `certificates`), if it holds one.
    pub fn certificate(&self, node: &str, identity: &str) -> Result<Option<(String, u64)>> {
        let dump = self.config_dump(node)?;
        let found = dump["certificates"].as_array().into_iter().flatten().find(|c| c["identity"] == identity);
        Ok(found.and_then(|c| Some((c["serial"].as_str()?.to_string(), c["not_after_unix"].as_u64()?))))
    }

    /// Waits until the agent on `node` knows a workload with address `ip`.
    pub fn wait_for_workload(&self, node: &str, ip: &str) -> Result<Value> {
        wait_until(&format!("{node} knows workload {ip}"), Duration::from_secs(15), || {
            let dump = self.config_dump(node)?;
            Ok(find_workload(&dump, ip).cloned())
        })
    }

    /// Waits until the agent on `node` knows a service with `vip` and at least
    /// `endpoints` endpoints.
    pub fn wait_for_service(&self, node: &str, vip: &str, endpoints: usize) -> Result<Value> {
        wait_until(&format!("{node} knows service {vip} with {endpoints} endpoints"), Duration::from_secs(15), || {
            let dump = self.config_dump(node)?;
            Ok(find_service(&dump, vip)
                .filter(|s| s["endpoints"].as_array().map(|e| e.len()).unwrap_or(0) >= endpoints)
                .cloned())
        })
    }

    /// Waits until the agent on `node` no longer knows a workload with address `ip`.
    pub fn wait_for_workload_gone(&self, node: &str, ip: &str) -> Result<()> {
        wait_until(&format!("{node} forgets workload {ip}"), Duration::from_secs(15), || {
            Ok(find_workload(&self.config_dump(node)?, ip).is_none().then_some(()))
        })
    }

    /// `mesh-agent uninstall --bpffs <node's dir>` (stop the node's agent first);
    /// fails unless it succeeds and the folder is gone.
    pub fn uninstall(&self, node: &str) -> Result<()> {
        let bpffs = self.bpffs(node);
        let bin = agent_binary()?;
        let argv = [bin.to_str().unwrap_or("mesh-agent"), "uninstall", "--bpffs", bpffs.to_str().unwrap_or_default()];
        let out = proc::run(&argv, None, None, Duration::from_secs(30))?;
        if !out.status.success() {
            bail!("mesh-agent uninstall failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        if bpffs.exists() {
            bail!("{} still exists after uninstall", bpffs.display());
        }
        Ok(())
    }

    /// Runs `meshctl --bpffs <node's dir> <args>`.
    fn meshctl(&self, node: &str, args: &[&str]) -> Result<Output> {
        let bpffs = self.bpffs(node);
        let bin = meshctl_binary()?;
        let mut argv = vec![bin.to_str().unwrap_or("meshctl"), "--bpffs", bpffs.to_str().unwrap_or_default()];
        argv.extend_from_slice(args);
        proc::run(&argv, None, None, Duration::from_secs(10))
    }

    /// `meshctl ... <args> --json`, parsed.
    fn meshctl_json(&self, node: &str, args: &[&str]) -> Result<Value> {
        let mut argv = args.to_vec();
        argv.push("--json");
        let out = self.meshctl(node, &argv)?;
        if !out.status.success() {
            bail!("meshctl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("meshctl {}: not JSON", args.join(" ")))
    }

    /// `meshctl --bpffs <node's dir> maps dump <map> --json`.
    pub fn map_dump(&self, node: &str, map: &str) -> Result<Value> {
        self.meshctl_json(node, &["maps", "dump", map])
    }

    /// `meshctl explain <source> <destination> --json`: why the kernel of `node`
    /// passes, steers or drops that connection.
    pub fn explain(&self, node: &str, source: &str, destination: &str) -> Result<Value> {
        self.meshctl_json(node, &["explain", source, destination])
    }

    /// `meshctl explain <source> <destination>` in its human form, for the demo.
    pub fn explain_text(&self, node: &str, source: &str, destination: &str) -> Result<String> {
        let out = self.meshctl(node, &["explain", source, destination])?;
        Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    /// `meshctl maps dump <map>` in its human form, for the demo.
    pub fn map_text(&self, node: &str, map: &str) -> Result<String> {
        let out = self.meshctl(node, &["maps", "dump", map])?;
        Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    /// One named counter from the `COUNTERS` map of `node` (0 when absent).
    pub fn counter(&self, node: &str, name: &str) -> Result<u64> {
        let dump = self.map_dump(node, "COUNTERS")?;
        Ok(dump
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .and_then(|c| c["value"].as_u64())
            .unwrap_or(0))
    }

    /// Starts a command in a node's namespace (no cgroup of a pod), e.g. tcpdump.
    pub fn spawn_in_node(&self, node: &str, args: &[&str]) -> Result<Proc> {
        let n = self.node(node)?;
        let cmd = proc::command(args, Some(&n.netns_path()), Some(&self.cgroup_root.join("sys")))?;
        let prog = Path::new(args[0]).file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Proc::spawn(&format!("{node}-{prog}-{}", self.procs.len()), cmd, &self.log_dir)
    }

    pub fn run_in_node(&self, node: &str, args: &[&str]) -> Result<Output> {
        let n = self.node(node)?;
        proc::run(args, Some(&n.netns_path()), None, Duration::from_secs(30))
    }

    /// Every log of the bed, last lines of each: printed when a test fails.
    pub fn dump_logs(&self) -> String {
        let mut out = String::new();
        let mut files: Vec<_> = std::fs::read_dir(&self.log_dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let text = proc::strip_ansi(&std::fs::read_to_string(&f).unwrap_or_default());
            out.push_str(&format!("----- {} -----\n{}\n", f.display(), tail(&text, 80)));
        }
        out
    }
}

impl TestBed {
    /// Ends a bed that did its job: cleans up without printing logs.
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        if cleanup::STOPPING.load(Ordering::SeqCst) {
            // The signal thread is cleaning up and will exit the process.
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let failed = !self.finished || std::thread::panicking();
        if failed {
            eprintln!("===== test bed {} failed; logs follow (kept in {}) =====", self.name, self.work.display());
            eprintln!("{}", self.dump_logs());
        }
        let names: Vec<String> = self.agents.keys().cloned().collect();
        for n in names {
            self.stop_agent(&n);
        }
        if let Some(mut cp) = self.control_plane.take() {
            cp.stop(Duration::from_secs(5));
        }
        self.procs.clear();
        cleanup::cleanup_bed(&self.name);
        cleanup::unregister(&self.name);
        if !failed && std::env::var_os("MESH_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

fn pod_yaml(pod: &Pod) -> String {
    let v = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid, "labels": pod.labels},
        "spec": {"nodeName": pod.node, "serviceAccountName": pod.service_account,
                 "containers": [{"name": "app", "image": "none"}]},
        "status": {"phase": "Running", "podIP": pod.ip, "podIPs": [{"ip": pod.ip}, {"ip": pod.ip6}]},
    });
    serde_yaml::to_string(&v).unwrap_or_default()
}

/// Writes through a temporary file outside the watched folder's YAML pattern, then
/// renames, so a watcher never reads half a file.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let outside = path.parent().and_then(Path::parent).unwrap_or(Path::new("/tmp"));
    let tmp = outside.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The value of one series (`name{labels}` exactly as exposed) in a Prometheus text
/// exposition; 0 when absent.
pub fn series_value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn find_workload<'a>(dump: &'a Value, ip: &str) -> Option<&'a Value> {
    dump["workloads"].as_array()?.iter().find(|w| {
        w["addresses"].as_array().map(|a| a.iter().any(|x| x.as_str() == Some(ip))).unwrap_or(false)
    })
}

pub fn find_service<'a>(dump: &'a Value, vip: &str) -> Option<&'a Value> {
    dump["services"].as_array()?.iter().find(|s| {
        s["vips"].as_array().map(|a| a.iter().any(|x| x.as_str().map(|v| v.ends_with(vip)).unwrap_or(false))).unwrap_or(false)
    })
}

/// Lines of the `access` tracing target.
pub fn access_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("src.identity=") || l.contains(" access:"))
        .map(|l| l.to_string())
        .collect()
}

/// The value of `key=value` or `key="value"` in a log line.
pub fn log_field(line: &str, key: &str) -> Option<String> {
    let pat = format!("{key}=");
    let start = line.match_indices(&pat).find(|(i, _)| *i == 0 || line.as_bytes()[i - 1] == b' ')?.0 + pat.len();
    let rest = &line[start..];
    if let Some(q) = rest.strip_prefix('"') {
        return q.split_once('"').map(|(v, _)| v.to_string());
    }
    Some(rest.split_whitespace().next().unwrap_or("").to_string())
}

/// Polls `f` every 100 ms until it returns `Some`, or fails after `timeout` with the
/// last error seen.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last: Option<anyhow::Error> = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => {
                // A dead process will not come back: fail now.
                if e.to_string().contains(" exited (") {
                    return Err(e.context(format!("while waiting for {what}")));
                }
                last = Some(e)
            }
        }
        if Instant::now() > deadline {
            let why = last.map(|e| format!(": last error: {e:#}")).unwrap_or_default();
            bail!("timed out after {timeout:?} waiting for {what}{why}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET on the host's loopback with curl; returns (status, body).
pub fn http_get(url: &str) -> Result<(u16, String)> {
    let out = proc::run(&["curl", "-sS", "--max-time", "3", "-o", "-", "-w", "\n%{http_code}", url], None, None, Duration::from_secs(6))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    let code: u16 = code.trim().parse().unwrap_or(0);
    if code == 0 {
        bail!("GET {url}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok((code, body.to_string()))
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_workloads_and_services_in_a_dump() {
        let dump = json!({
            "workloads": [{"name": "echo-1", "addresses": ["10.201.1.3"]}],
            "services": [{"hostname": "echo.default.svc.cluster.local", "vips": ["10.96.0.10"], "endpoints": [1, 2]}],
        });
        assert_eq!(find_workload(&dump, "10.201.1.3").unwrap()["name"], "echo-1");
        assert!(find_workload(&dump, "10.201.1.4").is_none());
        assert!(find_service(&dump, "10.96.0.10").is_some());
        assert!(find_service(&dump, "10.96.0.11").is_none());
    }

    #[test]
    fn pod_objects_look_like_kubernetes() {
        let pod = Pod {
            name: "client".into(),
            namespace: "default".into(),
            service_account: "sleep".into(),
            uid: "u1".into(),
            node: "node1".into(),
            ip: "10.201.1.2".into(),
            ip6: "fd00:201:1::2".into(),
            labels: [("app".to_string(), "client".to_string())].into_iter().collect(),
            netns: "x".into(),
            cgroup: "/tmp".into(),
            yaml: "/tmp/p.yaml".into(),
            log_dir: "/tmp".into(),
        };
        let v: Value = serde_yaml::from_str(&pod_yaml(&pod)).unwrap();
        assert_eq!(v["kind"], "Pod");
        assert_eq!(v["spec"]["nodeName"], "node1");
        assert_eq!(v["spec"]["serviceAccountName"], "sleep");
        assert_eq!(v["status"]["podIPs"][0]["ip"], "10.201.1.2");
        assert_eq!(v["status"]["podIPs"][1]["ip"], "fd00:201:1::2");
        assert_eq!(v["metadata"]["labels"]["app"], "client");
        assert_eq!(pod.identity(), "spiffe://cluster.local/ns/default/sa/sleep");
    }

    #[test]
    fn access_lines_are_picked_out() {
        let log = "x INFO mesh: started\ny INFO access: connection complete src.identity=spiffe://a dst.identity=spiffe://b direction=outbound\n";
        assert_eq!(access_lines(log).len(), 1);
        let l = r#"INFO outbound{id=1}: access: connection closed direction="outbound" src.identity="spiffe://cluster.local/ns/default/sa/sleep" x.src.identity=no dst.addr=10.201.1.3:8080"#;
        assert_eq!(log_field(l, "src.identity").as_deref(), Some("spiffe://cluster.local/ns/default/sa/sleep"));
        assert_eq!(log_field(l, "direction").as_deref(), Some("outbound"));
        assert_eq!(log_field(l, "dst.addr").as_deref(), Some("10.201.1.3:8080"));
        assert_eq!(log_field(l, "dst.identity"), None);
    }
}
