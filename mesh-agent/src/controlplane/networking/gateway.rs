//! Gateway: the listeners of an ingress or egress gateway (port, hosts by namespace,
//! TLS), checked as Istio's `ValidateGateway` and `validateServer` do. Its TLS
//! settings are also a Sidecar ingress listener's.
use std::collections::BTreeMap;

use serde::Deserialize;

use super::check::{self, at, on, Check, Protocol};
use super::Port;
use crate::controlplane::folder::Metadata;

pub type Gateway = super::Object<Spec>;

impl super::SpecCheck for Spec {
    /// The name too: Istio wants a DNS label (it is used in `ns/name` references).
    fn check(&self, meta: &Metadata) -> Check {
        if !check::dns1123_label(&meta.name) {
            return Err(at("metadata.name", format!("invalid gateway name: {:?} (a DNS label: a-z, 0-9, -)", meta.name)));
        }
        self.validate()
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub servers: Vec<Server>,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Server {
    #[serde(default)]
    pub port: Option<Port>,
    #[serde(default)]
    pub bind: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub tls: Option<ServerTls>,
    #[serde(default)]
    pub default_endpoint: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    #[default]
    Passthrough,
    Simple,
    Mutual,
    AutoPassthrough,
    IstioMutual,
    OptionalMutual,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsVersion {
    #[default]
    TlsAuto,
    #[serde(rename = "TLSV1_0")]
    TlsV1_0,
    #[serde(rename = "TLSV1_1")]
    TlsV1_1,
    #[serde(rename = "TLSV1_2")]
    TlsV1_2,
    #[serde(rename = "TLSV1_3")]
    TlsV1_3,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsCertificate {
    #[serde(default)]
    pub server_certificate: String,
    #[serde(default)]
    pub private_key: String,
    #[serde(default)]
    pub ca_certificates: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerTls {
    #[serde(default)]
    pub https_redirect: bool,
    #[serde(default)]
    pub mode: ServerTlsMode,
    #[serde(default)]
    pub server_certificate: String,
    #[serde(default)]
    pub private_key: String,
    #[serde(default)]
    pub ca_certificates: String,
    #[serde(default)]
    pub ca_crl: String,
    #[serde(default)]
    pub credential_name: String,
    #[serde(default)]
    pub credential_names: Vec<String>,
    #[serde(default)]
    pub tls_certificates: Vec<TlsCertificate>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub verify_certificate_spki: Vec<String>,
    #[serde(default)]
    pub verify_certificate_hash: Vec<String>,
    #[serde(default)]
    pub min_protocol_version: TlsVersion,
    #[serde(default)]
    pub max_protocol_version: TlsVersion,
    #[serde(default)]
    pub cipher_suites: Vec<String>,
}

impl Spec {
    /// Istio's validation: what is wrong, by field path.
    pub fn validate(&self) -> Check {
        super::required("spec.servers", &self.servers, "server")?;
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            let path = format!("spec.servers[{i}]");
            s.validate(&path)?;
            if let Some(p) = &s.port {
                if !names.insert(p.name.as_str()) {
                    return Err(at(&format!("{path}.port.name"), format!("port names in servers must be unique: duplicate name {}", p.name)));
                }
            }
        }
        Ok(())
    }
}

impl Server {
    fn validate(&self, path: &str) -> Check {
        let p = |f: &str| format!("{path}.{f}");
        super::required(&p("hosts"), &self.hosts, "host")?;
        for (i, h) in self.hosts.iter().enumerate() {
            on(&p(&format!("hosts[{i}]")), check::namespace_slash_host(h, true))?;
        }
        let Some(port) = &self.port else { return Err(at(&p("port"), "port is required")) };
        let Some(protocol) = Protocol::parse(&port.protocol) else {
            return Err(at(&p("port.protocol"), format!("invalid protocol {:?}, supported protocols are HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TLS, TCP, MONGO, REDIS, MYSQL", port.protocol)));
        };
        let unix = self.bind.starts_with("unix://");
        if port.number > 0 || !unix {
            on(&p("port.number"), check::port(port.number.into()))?;
        }
        if port.target_port.is_some_and(|t| t > 0) {
            return Err(at(&p("port.targetPort"), "targetPort has no impact on Gateways"));
        }
        if port.name.is_empty() {
            return Err(at(&p("port.name"), "port name must be set"));
        }
        if let Some(sock) = self.bind.strip_prefix("unix://") {
            on(&p("bind"), super::unix_address(sock))?;
            if port.number != 0 {
                return Err(at(&p("port.number"), "port number must be 0 for unix domain socket"));
            }
        } else if !self.bind.is_empty() {
            on(&p("bind"), check::ip(&self.bind))?;
        }
        if let Some(tls) = &self.tls {
            tls.validate(&p("tls"))?;
        }
        match &self.tls {
            None if protocol.is_tls() => Err(at(&p("tls"), "server must have TLS settings for HTTPS/TLS protocols")),
            Some(tls) if !protocol.is_tls() => {
                let passthrough = matches!(tls.mode, ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough);
                let certs = !tls.ca_certificates.is_empty() || !tls.private_key.is_empty() || !tls.server_certificate.is_empty();
                if !protocol.is_http() {
                    Err(at(&p("tls"), "server cannot have TLS settings for non HTTPS/TLS ports"))
                } else if !passthrough || certs {
                    Err(at(&p("tls"), "server cannot have TLS settings for plain text HTTP ports (httpsRedirect alone is fine)"))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }
}

impl ServerTls {
    /// Istio's `validateTLSOptions`: which mode needs which credentials.
    pub fn validate(&self, path: &str) -> Check {
        let p = |f: &str| format!("{path}.{f}");
        if self.mode == ServerTlsMode::IstioMutual {
            for (field, v) in [
                ("serverCertificate", &self.server_certificate),
                ("privateKey", &self.private_key),
                ("caCertificates", &self.ca_certificates),
                ("credentialName", &self.credential_name),
            ] {
                if !v.is_empty() {
                    return Err(at(&p(field), format!("ISTIO_MUTUAL TLS cannot have an associated {field}")));
                }
            }
            return Ok(());
        }
        if !self.credential_name.is_empty() && !self.credential_names.is_empty() {
            return Err(at(&p("credentialNames"), "set credentialName or credentialNames, not both"));
        }
        let remote = !self.credential_name.is_empty() || !self.credential_names.is_empty() || !self.tls_certificates.is_empty();
        let terminates = matches!(self.mode, ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual);
        if terminates && remote {
            // Credentials are fetched by name; the file fields are not needed.
            if !self.ca_crl.is_empty() && !self.credential_name.is_empty() {
                return Err(at(&p("caCrl"), "CRL is not supported with credentialName. CRL has to be specified in the credential"));
            }
            return Ok(());
        }
        let mode = if self.mode == ServerTlsMode::Simple { "SIMPLE" } else { "MUTUAL" };
        if terminates {
            if self.server_certificate.is_empty() {
                return Err(at(&p("serverCertificate"), format!("{mode} TLS requires a server certificate (or a credentialName)")));
            }
            if self.private_key.is_empty() {
                return Err(at(&p("privateKey"), format!("{mode} TLS requires a private key (or a credentialName)")));
            }
            if self.mode != ServerTlsMode::Simple && self.ca_certificates.is_empty() {
                return Err(at(&p("caCertificates"), "MUTUAL TLS requires a client CA bundle"));
            }
        }
        if !self.ca_crl.is_empty() && self.mode == ServerTlsMode::Simple {
            return Err(at(&p("caCrl"), "CRL is not supported with SIMPLE TLS"));
        }
        Ok(())
    }
}
