//! Sidecar: which services a workload may reach (egress hosts as `namespace/host`)
//! and how its inbound ports are served, checked as Istio's `ValidateSidecar` does.
use serde::Deserialize;

use super::check::{self, at, on, Check};
use super::destination_rule::ConnectionPool;
use super::gateway::{ServerTls, ServerTlsMode};
use super::{Destination, Labels, Port};
use crate::controlplane::folder::Metadata;

pub type Sidecar = super::Object<Spec>;

impl super::SpecCheck for Spec {
    fn check(&self, _: &Metadata) -> Check {
        self.validate()
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub workload_selector: Option<Labels>,
    #[serde(default)]
    pub ingress: Vec<Ingress>,
    #[serde(default)]
    pub egress: Vec<Egress>,
    #[serde(default)]
    pub inbound_connection_pool: Option<ConnectionPool>,
    #[serde(default)]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    #[default]
    Default,
    Iptables,
    None,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ingress {
    #[serde(default)]
    pub port: Option<Port>,
    #[serde(default)]
    pub bind: String,
    #[serde(default)]
    pub capture_mode: CaptureMode,
    #[serde(default)]
    pub default_endpoint: String,
    #[serde(default)]
    pub tls: Option<ServerTls>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Egress {
    #[serde(default)]
    pub port: Option<Port>,
    #[serde(default)]
    pub bind: String,
    #[serde(default)]
    pub capture_mode: CaptureMode,
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    #[default]
    RegistryOnly,
    AllowAny,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    #[serde(default)]
    pub mode: OutboundMode,
    #[serde(default)]
    pub egress_proxy: Option<Destination>,
}

/// Name (optional), protocol and number of a listener port.
fn listener_port(path: &str, port: &Port, unix_ok: bool) -> Check {
    if port.target_port.is_some_and(|t| t > 0) {
        return Err(at(&format!("{path}.targetPort"), "targetPort has no impact on Sidecars"));
    }
    if !port.name.is_empty() {
        on(&format!("{path}.name"), check::port_name(&port.name))?;
    }
    on(&format!("{path}.protocol"), check::protocol(&port.protocol))?;
    if !(unix_ok && port.number == 0) {
        on(&format!("{path}.number"), check::port(port.number.into()))?;
    }
    Ok(())
}

impl Spec {
    /// Istio's validation: what is wrong, by field path.
    pub fn validate(&self) -> Check {
        if let Some(s) = &self.workload_selector {
            check::selector("spec.workloadSelector.labels", &s.labels)?;
        }
        if self.ingress.is_empty() && self.egress.is_empty() && self.outbound_traffic_policy.is_none() && self.inbound_connection_pool.is_none() {
            return Err(at("spec", "sidecar: empty configuration provided"));
        }
        let mut ports = std::collections::BTreeSet::new();
        for (i, l) in self.ingress.iter().enumerate() {
            let path = format!("spec.ingress[{i}]");
            let Some(port) = &l.port else { return Err(at(&format!("{path}.port"), "sidecar: port is required for ingress listeners")) };
            listener_port(&format!("{path}.port"), port, false)?;
            if !l.bind.is_empty() {
                on(&format!("{path}.bind"), check::ip(&l.bind))?;
            }
            if !ports.insert(port.number) {
                return Err(at(&format!("{path}.port.number"), "sidecar: ports on IP bound listeners must be unique"));
            }
            on(&format!("{path}.defaultEndpoint"), default_endpoint(&l.default_endpoint))?;
            if let Some(tls) = &l.tls {
                let path = format!("{path}.tls");
                if !tls.subject_alt_names.is_empty() {
                    return Err(at(&format!("{path}.subjectAltNames"), "sidecar: subjectAltNames is not supported in ingress tls"));
                }
                if tls.https_redirect {
                    return Err(at(&format!("{path}.httpsRedirect"), "sidecar: httpsRedirect is not supported"));
                }
                if !tls.credential_name.is_empty() {
                    return Err(at(&format!("{path}.credentialName"), "sidecar: credentialName is not currently supported"));
                }
                if matches!(tls.mode, ServerTlsMode::IstioMutual | ServerTlsMode::AutoPassthrough) {
                    return Err(at(&format!("{path}.mode"), format!("cannot set mode to {:?} in sidecar ingress tls", tls.mode)));
                }
                tls.validate(&path)?;
            }
            if let Some(c) = &l.connection_pool {
                c.validate(&format!("{path}.connectionPool"))?;
            }
        }
        if let Some(c) = &self.inbound_connection_pool {
            c.validate("spec.inboundConnectionPool")?;
        }
        self.validate_egress()?;
        if let Some(o) = &self.outbound_traffic_policy {
            if let Some(proxy) = &o.egress_proxy {
                let path = "spec.outboundTrafficPolicy.egressProxy";
                if o.mode != OutboundMode::AllowAny {
                    return Err(at(path, "sidecar: egressProxy must be set only with ALLOW_ANY outboundTrafficPolicy mode"));
                }
                on(&format!("{path}.host"), check::fqdn(&proxy.host))?;
                if proxy.port.is_none() {
                    return Err(at(&format!("{path}.port"), "sidecar: egressProxy port must be set"));
                }
                proxy.validate(path)?;
            }
        }
        Ok(())
    }

    fn validate_egress(&self) -> Check {
        let (mut ports, mut sockets) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
        let mut catch_all = false;
        for (i, l) in self.egress.iter().enumerate() {
            let path = format!("spec.egress[{i}]");
            match &l.port {
                None if catch_all => return Err(at(&format!("{path}.port"), "sidecar: egress can have only one listener with empty port")),
                None if i != self.egress.len() - 1 => {
                    return Err(at(&format!("{path}.port"), "sidecar: the egress listener with empty port should be the last listener in the list"));
                }
                None => catch_all = true,
                Some(port) => {
                    listener_port(&format!("{path}.port"), port, true)?;
                    if port.number == 0 {
                        let Some(sock) = l.bind.strip_prefix("unix://") else {
                            return Err(at(&format!("{path}.bind"), "sidecar: ports with 0 value must have a unix domain socket bind address"));
                        };
                        on(&format!("{path}.bind"), super::unix_address(sock))?;
                        if l.capture_mode == CaptureMode::Iptables {
                            return Err(at(&format!("{path}.captureMode"), "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners"));
                        }
                        if !sockets.insert(l.bind.as_str()) {
                            return Err(at(&format!("{path}.bind"), "sidecar: unix domain socket values for listeners must be unique"));
                        }
                    } else {
                        if !l.bind.is_empty() {
                            on(&format!("{path}.bind"), check::ip(&l.bind))?;
                        }
                        if !ports.insert(port.number) {
                            return Err(at(&format!("{path}.port.number"), "sidecar: ports on IP bound listeners must be unique"));
                        }
                    }
                }
            }
            super::required(&format!("{path}.hosts"), &l.hosts, "host (namespace/dnsName)")?;
            for (j, h) in l.hosts.iter().enumerate() {
                on(&format!("{path}.hosts[{j}]"), check::namespace_slash_host(h, false))?;
            }
        }
        Ok(())
    }
}

/// `127.0.0.1:<port>`, `0.0.0.0:<port>`, `[::1]:<port>`, `[::]:<port>`, `:<port>`,
/// `unix://<path>`, or unset.
fn default_endpoint(e: &str) -> Result<(), String> {
    if e.is_empty() {
        return Ok(());
    }
    if let Some(sock) = e.strip_prefix("unix://") {
        return super::unix_address(sock);
    }
    let form = "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port>, unix://filepath or unset";
    let (host, port) = e.rsplit_once(':').ok_or_else(|| form.to_string())?;
    if !matches!(host, "" | "127.0.0.1" | "0.0.0.0" | "[::1]" | "[::]") {
        return Err(form.into());
    }
    let port: i64 = port.parse().map_err(|_| format!("sidecar: defaultEndpoint port ({port}) is not a number"))?;
    check::port(port)
}
