//! DestinationRule: what happens to traffic for a host once routing chose it (subsets,
//! load balancing, connection pool, outlier detection, TLS), checked as Istio's
//! `ValidateDestinationRule` and `validateTrafficPolicy` do. The connection pool
//! settings are also a Sidecar's.
use std::collections::BTreeMap;

use serde::Deserialize;

use super::check::{self, at, on, Check};
use super::{MatchLabels, PortSelector};
use crate::controlplane::folder::Metadata;

pub type DestinationRule = super::Object<Spec>;

impl super::SpecCheck for Spec {
    fn check(&self, meta: &Metadata) -> Check {
        self.validate(super::namespace_of(meta))
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub workload_selector: Option<MatchLabels>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub tls: Option<ClientTls>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    #[serde(default)]
    pub tunnel: Option<Tunnel>,
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    #[serde(default)]
    pub port: Option<PortSelector>,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub tls: Option<ClientTls>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    #[default]
    Unspecified,
    /// Deprecated: LEAST_REQUEST.
    LeastConn,
    Random,
    Passthrough,
    RoundRobin,
    LeastRequest,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(default)]
    pub simple: Option<SimpleLb>,
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHash>,
    #[serde(default)]
    pub locality_lb_setting: Option<LocalityLb>,
    #[serde(default)]
    pub warmup_duration_secs: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsistentHash {
    #[serde(default)]
    pub http_header_name: Option<String>,
    #[serde(default)]
    pub http_cookie: Option<HttpCookie>,
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    #[serde(default)]
    pub ring_hash: Option<RingHash>,
    #[serde(default)]
    pub maglev: Option<Maglev>,
    /// Deprecated form of `ringHash.minimumRingSize`.
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpCookie {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub ttl: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RingHash {
    #[serde(default)]
    pub minimum_ring_size: u64,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Maglev {
    #[serde(default)]
    pub table_size: u64,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalityLb {
    #[serde(default)]
    pub distribute: Vec<Distribute>,
    #[serde(default)]
    pub failover: Vec<Failover>,
    #[serde(default)]
    pub failover_priority: Vec<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Distribute {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPool {
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    #[serde(default)]
    pub http: Option<HttpSettings>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSettings {
    #[serde(default)]
    pub max_connections: i32,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepalive>,
    #[serde(default)]
    pub max_connection_duration: Option<String>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepalive {
    #[serde(default)]
    pub probes: u32,
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub interval: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    #[default]
    Default,
    DoNotUpgrade,
    Upgrade,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSettings {
    #[serde(default)]
    pub http1_max_pending_requests: i32,
    #[serde(default)]
    pub http2_max_requests: i32,
    #[serde(default)]
    pub max_requests_per_connection: i32,
    #[serde(default)]
    pub max_retries: i32,
    #[serde(default)]
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub h2_upgrade_policy: H2UpgradePolicy,
    #[serde(default)]
    pub use_client_protocol: bool,
    #[serde(default)]
    pub max_concurrent_streams: i32,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Deprecated: 502, 503 and 504 responses, as `consecutiveGatewayErrors`.
    #[serde(default)]
    pub consecutive_errors: i32,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    #[serde(default)]
    pub max_ejection_percent: i32,
    #[serde(default)]
    pub min_health_percent: i32,
    #[serde(default)]
    pub split_external_local_origin_errors: bool,
    #[serde(default)]
    pub consecutive_local_origin_failures: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    #[default]
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientTls {
    #[serde(default)]
    pub mode: ClientTlsMode,
    #[serde(default)]
    pub client_certificate: String,
    #[serde(default)]
    pub private_key: String,
    #[serde(default)]
    pub ca_certificates: String,
    #[serde(default)]
    pub credential_name: String,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub sni: String,
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
    #[serde(default)]
    pub ca_crl: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tunnel {
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub target_host: String,
    #[serde(default)]
    pub target_port: u32,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
pub enum ProxyProtocolVersion {
    #[default]
    V1,
    V2,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocol {
    #[serde(default)]
    pub version: ProxyProtocolVersion,
}

impl Spec {
    /// Istio's validation: what is wrong, by field path.
    pub fn validate(&self, namespace: &str) -> Check {
        if self.host.is_empty() {
            return Err(at("spec.host", "required"));
        }
        on("spec.host", check::wildcard_domain(&self.host))?;
        if let Some(p) = &self.traffic_policy {
            p.validate("spec.trafficPolicy")?;
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.subsets.iter().enumerate() {
            let path = format!("spec.subsets[{i}]");
            on(&format!("{path}.name"), super::subset_name(&s.name))?;
            if !names.insert(s.name.as_str()) {
                return Err(at(&format!("{path}.name"), format!("duplicate subset names: {}", s.name)));
            }
            check::labels(&format!("{path}.labels"), &s.labels)?;
            if let Some(p) = &s.traffic_policy {
                p.validate(&format!("{path}.trafficPolicy"))?;
            }
        }
        check::export_to(namespace, &self.export_to, false, self.workload_selector.is_some())?;
        if let Some(s) = &self.workload_selector {
            check::selector("spec.workloadSelector.matchLabels", &s.match_labels)?;
        }
        Ok(())
    }
}

impl TrafficPolicy {
    pub fn validate(&self, path: &str) -> Check {
        let p = |f: &str| format!("{path}.{f}");
        if self == &TrafficPolicy::default() {
            return Err(at(path, "traffic policy must have at least one field"));
        }
        if self.tunnel.is_some() && self.proxy_protocol.is_some() {
            return Err(at(path, "tunnel and proxyProtocol must not be set together"));
        }
        policy_parts(
            path,
            self.load_balancer.as_ref(),
            self.connection_pool.as_ref(),
            self.outlier_detection.as_ref(),
            self.tls.as_ref(),
        )?;
        for (i, pl) in self.port_level_settings.iter().enumerate() {
            let path = p(&format!("portLevelSettings[{i}]"));
            let Some(port) = pl.port else { return Err(at(&format!("{path}.port"), "portTrafficPolicy must have valid port")) };
            on(&format!("{path}.port.number"), check::port(port.number.into()))?;
            let (lb, pool, od, tls) = (&pl.load_balancer, &pl.connection_pool, &pl.outlier_detection, &pl.tls);
            if lb.is_none() && pool.is_none() && od.is_none() && tls.is_none() {
                return Err(at(&path, "port traffic policy must have at least one field"));
            }
            policy_parts(&path, lb.as_ref(), pool.as_ref(), od.as_ref(), tls.as_ref())?;
        }
        if let Some(t) = &self.tunnel {
            let path = p("tunnel");
            if !t.protocol.is_empty() && t.protocol != "CONNECT" && t.protocol != "POST" {
                return Err(at(&format!("{path}.protocol"), "tunnel protocol must be \"CONNECT\" or \"POST\""));
            }
            if check::fqdn(&t.target_host).is_err() && !check::is_ip(&t.target_host) {
                return Err(at(&format!("{path}.targetHost"), format!("{:?} is not a valid FQDN or IP address", t.target_host)));
            }
            on(&format!("{path}.targetPort"), check::port(t.target_port.into()))?;
        }
        Ok(())
    }
}

fn policy_parts(
    path: &str,
    lb: Option<&LoadBalancer>,
    pool: Option<&ConnectionPool>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&ClientTls>,
) -> Check {
    if let Some(o) = outlier {
        o.validate(&format!("{path}.outlierDetection"))?;
    }
    if let Some(c) = pool {
        c.validate(&format!("{path}.connectionPool"))?;
    }
    if let Some(l) = lb {
        l.validate(&format!("{path}.loadBalancer"))?;
    }
    if let Some(t) = tls {
        t.validate(&format!("{path}.tls"))?;
    }
    Ok(())
}

fn optional_duration(path: &str, field: &str, d: &Option<String>) -> Check {
    match d {
        Some(d) => on(&format!("{path}.{field}"), check::duration(d)).map(|_| ()),
        None => Ok(()),
    }
}

fn non_negative(path: &str, field: &str, v: i32, what: &str) -> Check {
    if v < 0 { Err(at(&format!("{path}.{field}"), format!("{what} must be non-negative"))) } else { Ok(()) }
}

impl OutlierDetection {
    fn validate(&self, path: &str) -> Check {
        optional_duration(path, "baseEjectionTime", &self.base_ejection_time)?;
        optional_duration(path, "interval", &self.interval)?;
        if !self.split_external_local_origin_errors && self.consecutive_local_origin_failures.is_some_and(|v| v > 0) {
            return Err(at(
                &format!("{path}.consecutiveLocalOriginFailures"),
                "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
            ));
        }
        for (field, v) in [("maxEjectionPercent", self.max_ejection_percent), ("minHealthPercent", self.min_health_percent)] {
            if !(0..=100).contains(&v) {
                return Err(at(&format!("{path}.{field}"), format!("percentage {v} is not in range 0..100")));
            }
        }
        Ok(())
    }
}

impl ConnectionPool {
    pub fn validate(&self, path: &str) -> Check {
        if self.http.is_none() && self.tcp.is_none() {
            return Err(at(path, "connection pool must have at least one field"));
        }
        if let Some(h) = &self.http {
            let path = format!("{path}.http");
            non_negative(&path, "http1MaxPendingRequests", h.http1_max_pending_requests, "http1 max pending requests")?;
            non_negative(&path, "http2MaxRequests", h.http2_max_requests, "http2 max requests")?;
            non_negative(&path, "maxRequestsPerConnection", h.max_requests_per_connection, "max requests per connection")?;
            non_negative(&path, "maxRetries", h.max_retries, "max retries")?;
            non_negative(&path, "maxConcurrentStreams", h.max_concurrent_streams, "max concurrent streams")?;
            optional_duration(&path, "idleTimeout", &h.idle_timeout)?;
            if h.h2_upgrade_policy == H2UpgradePolicy::Upgrade && h.use_client_protocol {
                return Err(at(&format!("{path}.useClientProtocol"), "use client protocol must not be true when h2UpgradePolicy is UPGRADE"));
            }
        }
        if let Some(t) = &self.tcp {
            let path = format!("{path}.tcp");
            non_negative(&path, "maxConnections", t.max_connections, "max connections")?;
            optional_duration(&path, "connectTimeout", &t.connect_timeout)?;
            optional_duration(&path, "maxConnectionDuration", &t.max_connection_duration)?;
            optional_duration(&path, "idleTimeout", &t.idle_timeout)?;
            if let Some(k) = &t.tcp_keepalive {
                optional_duration(&path, "tcpKeepalive.time", &k.time)?;
                optional_duration(&path, "tcpKeepalive.interval", &k.interval)?;
            }
        }
        Ok(())
    }
}

impl LoadBalancer {
    fn validate(&self, path: &str) -> Check {
        if self.simple.is_some() && self.consistent_hash.is_some() {
            return Err(at(path, "set simple or consistentHash, not both"));
        }
        if let Some(c) = &self.consistent_hash {
            let path = format!("{path}.consistentHash");
            let keys = [c.http_header_name.is_some(), c.http_cookie.is_some(), c.use_source_ip.is_some(), c.http_query_parameter_name.is_some()];
            if keys.iter().filter(|k| **k).count() > 1 {
                return Err(at(&path, "set one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName, not several"));
            }
            if let Some(h) = &c.http_header_name {
                on(&format!("{path}.httpHeaderName"), check::header_name(h))?;
            }
            if let Some(cookie) = &c.http_cookie {
                if cookie.name.is_empty() {
                    return Err(at(&format!("{path}.httpCookie.name"), "name required for HttpCookie"));
                }
                if let Some(ttl) = &cookie.ttl {
                    on(&format!("{path}.httpCookie.ttl"), check::parse_duration(ttl))?;
                }
            }
            if c.ring_hash.is_some() && c.maglev.is_some() {
                return Err(at(&path, "set ringHash or maglev, not both"));
            }
            if c.minimum_ring_size.is_some() && (c.ring_hash.is_some() || c.maglev.is_some()) {
                return Err(at(&format!("{path}.minimumRingSize"), "only one of minimumRingSize or maglev/ringHash can be specified"));
            }
            if let Some(m) = &c.maglev {
                let at_size = format!("{path}.maglev.tableSize");
                if m.table_size == 0 {
                    return Err(at(&at_size, "tableSize must be set for maglev"));
                }
                if m.table_size >= 5_000_011 {
                    return Err(at(&at_size, "tableSize must be less than 5000011 for maglev"));
                }
                if !is_prime(m.table_size) {
                    return Err(at(&at_size, "tableSize must be a prime number for maglev"));
                }
            }
        }
        if let Some(l) = &self.locality_lb_setting {
            l.validate(&format!("{path}.localityLbSetting"))?;
        }
        optional_duration(path, "warmupDurationSecs", &self.warmup_duration_secs)
    }
}

fn is_prime(x: u64) -> bool {
    x >= 2 && (2..).take_while(|f| f * f <= x).all(|f| !x.is_multiple_of(f))
}

impl LocalityLb {
    fn validate(&self, path: &str) -> Check {
        if !self.distribute.is_empty() && !self.failover.is_empty() {
            return Err(at(path, "can not simultaneously specify 'distribute' and 'failover'"));
        }
        for (i, d) in self.distribute.iter().enumerate() {
            let path = format!("{path}.distribute[{i}]");
            if d.to.values().any(|w| !(1..=100).contains(w)) {
                return Err(at(&format!("{path}.to"), "locality weight must be in range [1, 100]"));
            }
            let total: u32 = d.to.values().sum();
            if total != 100 {
                return Err(at(&format!("{path}.to"), format!("total locality weight {total} != 100")));
            }
        }
        for (i, f) in self.failover.iter().enumerate() {
            let path = format!("{path}.failover[{i}]");
            if f.from == f.to {
                return Err(at(&path, "locality lb failover settings must specify different regions"));
            }
            if f.from.contains('/') || f.to.contains('/') {
                return Err(at(&path, "locality lb failover only specify region"));
            }
            if f.from.contains('*') || f.to.contains('*') {
                return Err(at(&path, "locality lb failover region should not contain '*' wildcard"));
            }
        }
        Ok(())
    }
}

impl ClientTls {
    /// Istio's `ValidateTLS`.
    fn validate(&self, path: &str) -> Check {
        if self.insecure_skip_verify == Some(true) {
            let bad = match self.mode {
                ClientTlsMode::Simple => !self.ca_certificates.is_empty() || !self.credential_name.is_empty() || !self.subject_alt_names.is_empty(),
                ClientTlsMode::Mutual => !self.ca_certificates.is_empty() || !self.subject_alt_names.is_empty(),
                _ => false,
            };
            if bad {
                return Err(at(&format!("{path}.insecureSkipVerify"), "cannot specify caCertificates, credentialName or subjectAltNames when insecureSkipVerify is true"));
            }
        }
        let simple_or_mutual = matches!(self.mode, ClientTlsMode::Simple | ClientTlsMode::Mutual);
        if simple_or_mutual && !self.credential_name.is_empty() {
            if !self.client_certificate.is_empty() || !self.ca_certificates.is_empty() || !self.private_key.is_empty() || !self.ca_crl.is_empty() {
                return Err(at(&format!("{path}.credentialName"), "cannot specify client certificates or CA certificate or CA CRL if credentialName is set"));
            }
            return Ok(());
        }
        if self.mode == ClientTlsMode::Mutual {
            if self.client_certificate.is_empty() {
                return Err(at(&format!("{path}.clientCertificate"), "client certificate required for mutual tls"));
            }
            if self.private_key.is_empty() {
                return Err(at(&format!("{path}.privateKey"), "private key required for mutual tls"));
            }
        }
        Ok(())
    }
}
