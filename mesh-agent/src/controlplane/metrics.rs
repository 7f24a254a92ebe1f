//! The control plane's Prometheus metrics (`mesh_cp_*`), served on its admin listener.
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
/// Labels of the per-push metrics: fixed strings, so counting a push allocates nothing.
type Static<const N: usize> = [(&'static str, &'static str); N];

/// One set per control plane.
pub struct CpMetrics {
    /// Pushes by type (`Address`, `Authorization`, `RequestAuthentication`) and reason.
    pub pushes: Family<Static<2>, Counter>,
    /// Snapshot published -> the agent's ACK of the push that carried it.
    pub push_latency: Histogram,
    pub connected_agents: Gauge,
    pub nacks: Family<Static<1>, Counter>,
    /// Bytes of the resources each node's agent holds (labels: nodes, bounded).
    pub config_bytes: Family<Labels, Gauge>,
    /// Bytes of resources sent in pushes, by type.
    pub pushed_bytes: Family<Static<1>, Counter>,
    /// Snapshots published (builds that changed something, and the first).
    pub snapshot_builds: Counter,
    pub registry: Registry,
}

impl Default for CpMetrics {
    fn default() -> Self {
        let pushes = Family::<Static<2>, Counter>::default();
        // 1 ms .. ~16 s
        let push_latency = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15));
        let connected_agents = Gauge::default();
        let nacks = Family::<Static<1>, Counter>::default();
        let config_bytes = Family::<Labels, Gauge>::default();
        let pushed_bytes = Family::<Static<1>, Counter>::default();
        let snapshot_builds = Counter::default();
        let mut registry = Registry::with_prefix("mesh_cp");
        registry.register("pushes", "xDS pushes by type and reason (initial, resume, change)", pushes.clone());
        registry.register(
            "push_latency_seconds",
            "From a snapshot being published to the agent's ACK of the push carrying it",
            push_latency.clone(),
        );
        registry.register("connected_agents", "Agents with an open delta ADS stream", connected_agents.clone());
        registry.register("nacks", "Pushes an agent rejected, by type", nacks.clone());
        registry.register("config_bytes", "Encoded bytes of the resources a node's agent holds", config_bytes.clone());
        registry.register("pushed_bytes", "Encoded bytes of resources sent, by type", pushed_bytes.clone());
        registry.register("snapshot_builds", "Snapshots published to the xDS server", snapshot_builds.clone());
        CpMetrics {
            pushes,
            push_latency,
            connected_agents,
            nacks,
            config_bytes,
            pushed_bytes,
            snapshot_builds,
            registry,
        }
    }
}

impl CpMetrics {
    pub fn push(&self, type_name: &'static str, reason: &'static str, bytes: u64) {
        self.pushes.get_or_create(&[("type", type_name), ("reason", reason)]).inc();
        self.pushed_bytes.get_or_create(&[("type", type_name)]).inc_by(bytes);
    }

    pub fn nack(&self, type_name: &'static str) {
        self.nacks.get_or_create(&[("type", type_name)]).inc();
    }

    pub fn set_config_bytes(&self, node: &str, bytes: u64) {
        self.config_bytes.get_or_create(&vec![("node", node.to_string())]).set(bytes as i64);
    }

    pub fn forget_node(&self, node: &str) {
        self.config_bytes.remove(&vec![("node", node.to_string())]);
    }

    pub fn encode(&self) -> String {
        crate::metrics::encode(&self.registry)
    }
}
