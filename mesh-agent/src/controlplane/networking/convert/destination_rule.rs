//! DestinationRule into `mesh.networking.DestinationRule`.
use super::{duration, hash, resolve_host};
use crate::controlplane::networking::destination_rule::{self as dr, ClientTlsMode, H2UpgradePolicy, SimpleLb};
use crate::proto::mesh_networking as mn;

/// The served form of a DestinationRule in `namespace`.
pub fn destination_rule(namespace: &str, name: &str, spec: &dr::Spec) -> mn::DestinationRule {
    mn::DestinationRule {
        name: name.to_string(),
        namespace: namespace.to_string(),
        host: resolve_host(&spec.host, namespace),
        traffic_policy: spec.traffic_policy.as_ref().map(traffic_policy),
        subsets: spec
            .subsets
            .iter()
            .map(|s| mn::Subset { name: s.name.clone(), labels: hash(&s.labels), traffic_policy: s.traffic_policy.as_ref().map(traffic_policy) })
            .collect(),
        export_to: spec.export_to.clone(),
        workload_selector: spec.workload_selector.as_ref().map(|s| hash(&s.match_labels)).unwrap_or_default(),
    }
}

fn traffic_policy(p: &dr::TrafficPolicy) -> mn::TrafficPolicy {
    mn::TrafficPolicy {
        load_balancer: p.load_balancer.as_ref().map(load_balancer),
        connection_pool: p.connection_pool.as_ref().map(connection_pool),
        outlier_detection: p.outlier_detection.as_ref().map(outlier_detection),
        tls: p.tls.as_ref().map(tls),
        port_level_settings: p
            .port_level_settings
            .iter()
            .map(|pl| mn::PortTrafficPolicy {
                port: pl.port.map_or(0, |p| p.number),
                load_balancer: pl.load_balancer.as_ref().map(load_balancer),
                connection_pool: pl.connection_pool.as_ref().map(connection_pool),
                outlier_detection: pl.outlier_detection.as_ref().map(outlier_detection),
                tls: pl.tls.as_ref().map(tls),
            })
            .collect(),
    }
}

fn load_balancer(l: &dr::LoadBalancer) -> mn::LoadBalancerSettings {
    use mn::load_balancer_settings::consistent_hash_lb::{HashAlgorithm, HashKey, HttpCookie, MagLev, RingHash};
    use mn::load_balancer_settings::{ConsistentHashLb, LbPolicy, SimpleLb as S};
    let simple = |s: SimpleLb| match s {
        SimpleLb::Unspecified => S::Unspecified,
        SimpleLb::LeastConn | SimpleLb::LeastRequest => S::LeastRequest,
        SimpleLb::Random => S::Random,
        SimpleLb::Passthrough => S::Passthrough,
        SimpleLb::RoundRobin => S::RoundRobin,
    };
    let lb_policy = match (&l.simple, &l.consistent_hash) {
        (Some(s), _) => Some(LbPolicy::Simple(simple(*s) as i32)),
        (None, Some(c)) => {
            let hash_key = if let Some(h) = &c.http_header_name {
                Some(HashKey::HttpHeaderName(h.clone()))
            } else if let Some(k) = &c.http_cookie {
                Some(HashKey::HttpCookie(HttpCookie { name: k.name.clone(), path: k.path.clone(), ttl: duration(&k.ttl) }))
            } else if let Some(ip) = c.use_source_ip {
                Some(HashKey::UseSourceIp(ip))
            } else {
                c.http_query_parameter_name.clone().map(HashKey::HttpQueryParameterName)
            };
            let hash_algorithm = match (&c.ring_hash, &c.maglev, c.minimum_ring_size) {
                (Some(r), _, _) => Some(HashAlgorithm::RingHash(RingHash { minimum_ring_size: r.minimum_ring_size })),
                (None, Some(m), _) => Some(HashAlgorithm::Maglev(MagLev { table_size: m.table_size })),
                (None, None, Some(size)) => Some(HashAlgorithm::RingHash(RingHash { minimum_ring_size: size })),
                (None, None, None) => None,
            };
            Some(LbPolicy::ConsistentHash(ConsistentHashLb { hash_key, hash_algorithm }))
        }
        (None, None) => None,
    };
    mn::LoadBalancerSettings {
        lb_policy,
        locality_lb_setting: l.locality_lb_setting.as_ref().map(|s| {
            use mn::locality_load_balancer_setting::{Distribute, Failover};
            mn::LocalityLoadBalancerSetting {
                distribute: s.distribute.iter().map(|d| Distribute { from: d.from.clone(), to: hash(&d.to) }).collect(),
                failover: s.failover.iter().map(|f| Failover { from: f.from.clone(), to: f.to.clone() }).collect(),
                failover_priority: s.failover_priority.clone(),
                enabled: s.enabled,
            }
        }),
        warmup_duration: duration(&l.warmup_duration_secs),
    }
}

fn connection_pool(c: &dr::ConnectionPool) -> mn::ConnectionPoolSettings {
    use mn::connection_pool_settings::http_settings::H2UpgradePolicy as H2;
    use mn::connection_pool_settings::tcp_settings::TcpKeepalive;
    use mn::connection_pool_settings::{HttpSettings, TcpSettings};
    mn::ConnectionPoolSettings {
        tcp: c.tcp.as_ref().map(|t| TcpSettings {
            max_connections: t.max_connections,
            connect_timeout: duration(&t.connect_timeout),
            tcp_keepalive: t.tcp_keepalive.as_ref().map(|k| TcpKeepalive { probes: k.probes, time: duration(&k.time), interval: duration(&k.interval) }),
            max_connection_duration: duration(&t.max_connection_duration),
            idle_timeout: duration(&t.idle_timeout),
        }),
        http: c.http.as_ref().map(|h| HttpSettings {
            http1_max_pending_requests: h.http1_max_pending_requests,
            http2_max_requests: h.http2_max_requests,
            max_requests_per_connection: h.max_requests_per_connection,
            max_retries: h.max_retries,
            idle_timeout: duration(&h.idle_timeout),
            h2_upgrade_policy: match h.h2_upgrade_policy {
                H2UpgradePolicy::Default => H2::Default,
                H2UpgradePolicy::DoNotUpgrade => H2::DoNotUpgrade,
                H2UpgradePolicy::Upgrade => H2::Upgrade,
            } as i32,
            use_client_protocol: h.use_client_protocol,
            max_concurrent_streams: h.max_concurrent_streams,
        }),
    }
}

fn outlier_detection(o: &dr::OutlierDetection) -> mn::OutlierDetection {
    let legacy = u32::try_from(o.consecutive_errors).ok().filter(|v| *v > 0);
    mn::OutlierDetection {
        consecutive_gateway_errors: o.consecutive_gateway_errors.or(legacy),
        consecutive_5xx_errors: o.consecutive_5xx_errors,
        interval: duration(&o.interval),
        base_ejection_time: duration(&o.base_ejection_time),
        max_ejection_percent: o.max_ejection_percent,
        min_health_percent: o.min_health_percent,
        split_external_local_origin_errors: o.split_external_local_origin_errors,
        consecutive_local_origin_failures: o.consecutive_local_origin_failures,
    }
}

fn tls(t: &dr::ClientTls) -> mn::ClientTlsSettings {
    use mn::client_tls_settings::TlSmode as M;
    mn::ClientTlsSettings {
        mode: match t.mode {
            ClientTlsMode::Disable => M::Disable,
            ClientTlsMode::Simple => M::Simple,
            ClientTlsMode::Mutual => M::Mutual,
            ClientTlsMode::IstioMutual => M::IstioMutual,
        } as i32,
        client_certificate: t.client_certificate.clone(),
        private_key: t.private_key.clone(),
        ca_certificates: t.ca_certificates.clone(),
        credential_name: t.credential_name.clone(),
        subject_alt_names: t.subject_alt_names.clone(),
        sni: t.sni.clone(),
        insecure_skip_verify: t.insecure_skip_verify,
        ca_crl: t.ca_crl.clone(),
    }
}
