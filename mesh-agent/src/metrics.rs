//! Prometheus metrics: connections and bytes counted by the proxy, and the kernel's
//! counters and drops read from the pinned maps at each scrape.
use std::path::PathBuf;
use std::sync::LazyLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of the proxy's connection metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// `outbound`, `inbound` (HBONE) or `inbound_plaintext`.
    pub direction: &'static str,
    /// `success` or `failure`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirLabels {
    pub direction: &'static str,
}

/// How an on-demand lookup of a caller ended: `found`, `missing` or `timeout`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// `open` or `close`.
    pub event: &'static str,
}

/// What the proxy counts; one set per process.
#[derive(Default)]
pub struct ProxyMetrics {
    pub connections: Family<ConnLabels, Counter>,
    pub bytes_sent: Family<DirLabels, Counter>,
    pub bytes_received: Family<DirLabels, Counter>,
    /// Captured connections as the kernel saw them (FLOW_EVENTS).
    pub flows: Family<FlowLabels, Counter>,
    /// Bytes of closed captured connections, by the pod socket's direction.
    pub flow_bytes: Family<DirLabels, Counter>,
    /// On-demand lookups of unknown callers (`crate::ondemand`).
    pub lookups: Family<OutcomeLabels, Counter>,
}

pub static PROXY: LazyLock<ProxyMetrics> = LazyLock::new(ProxyMetrics::default);

impl ProxyMetrics {
    /// Counts one finished connection.
    pub fn connection(&self, direction: &'static str, ok: bool, sent: u64, recv: u64) {
        let result = if ok { "success" } else { "failure" };
        self.connections.get_or_create(&ConnLabels { direction, result }).inc();
        self.bytes_sent.get_or_create(&DirLabels { direction }).inc_by(sent);
        self.bytes_received.get_or_create(&DirLabels { direction }).inc_by(recv);
    }
}

impl ProxyMetrics {
    /// Counts one flow event from the kernel (bytes are the pod socket's, at close).
    pub fn flow(&self, event: &'static str, sent: u64, recv: u64) {
        self.flows.get_or_create(&FlowLabels { event }).inc();
        if event == "close" {
            self.flow_bytes.get_or_create(&DirLabels { direction: "sent" }).inc_by(sent);
            self.flow_bytes.get_or_create(&DirLabels { direction: "received" }).inc_by(recv);
        }
    }
}

/// Reads COUNTERS and DROPS from the agent's pinned maps at each scrape.
#[derive(Debug)]
struct KernelCollector {
    bpffs: PathBuf,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    pod: String,
    reason: String,
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::kernel::dump;
        if let Ok(rows) = dump::dump(&self.bpffs, mesh_common::MAP_COUNTERS) {
            let counter = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(
                "kernel_events",
                "Events counted by the kernel programs (summed over CPUs)",
                None,
                counter.metric_type(),
            )?;
            for r in rows {
                let labels = EventLabels { event: r["name"].as_str().unwrap_or("?").to_string() };
                ConstCounter::new(r["value"].as_u64().unwrap_or(0)).encode(family.encode_family(&labels)?)?;
            }
        }
        if let Ok(rows) = dump::dump(&self.bpffs, mesh_common::MAP_DROPS) {
            let counter = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(
                "kernel_drops",
                "Traffic dropped in the kernel, by destination pod and numbered reason",
                None,
                counter.metric_type(),
            )?;
            for r in rows {
                let labels = DropLabels {
                    pod: r["pod"].as_str().unwrap_or("?").to_string(),
                    reason: r["reason"].as_str().unwrap_or("?").to_string(),
                };
                ConstCounter::new(r["count"].as_u64().unwrap_or(0)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The agent's registry: proxy metrics plus the kernel collector for `bpffs`.
pub fn registry(bpffs: PathBuf) -> Registry {
    let mut r = Registry::with_prefix("mesh");
    r.register("connections", "Connections handled by the proxy, by direction and result", PROXY.connections.clone());
    r.register("bytes_sent", "Bytes from the connection's client towards its server", PROXY.bytes_sent.clone());
    r.register("bytes_received", "Bytes from the connection's server back to its client", PROXY.bytes_received.clone());
    r.register("kernel_flows", "Captured connections opened and closed, as the kernel saw them", PROXY.flows.clone());
    r.register("kernel_flow_bytes", "Bytes of closed captured connections, from the pod socket's side", PROXY.flow_bytes.clone());
    r.register("ondemand_lookups", "Callers the agent did not hold, looked up from the control plane, by outcome", PROXY.lookups.clone());
    r.register_collector(Box::new(KernelCollector { bpffs }));
    r
}

/// The text exposition of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}
