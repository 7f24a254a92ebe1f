//! VirtualService: how requests to a set of hosts are matched and routed (HTTP, TLS by
//! SNI, TCP), checked as Istio's `ValidateVirtualService` and `validateHTTPRoute` do.
use std::collections::BTreeMap;

use serde::Deserialize;

use super::check::Check;
use super::{Destination, Percent, StringMatch};
use crate::controlplane::folder::Metadata;

pub type VirtualService = super::Object<Spec>;

impl super::SpecCheck for Spec {
    fn check(&self, meta: &Metadata) -> Check {
        self.validate(super::namespace_of(meta))
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    #[serde(default)]
    pub export_to: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatch>,
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    #[serde(default)]
    pub redirect: Option<Redirect>,
    #[serde(default)]
    pub direct_response: Option<DirectResponse>,
    #[serde(default)]
    pub delegate: Option<Delegate>,
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<Retry>,
    #[serde(default)]
    pub fault: Option<Fault>,
    #[serde(default)]
    pub mirror: Option<Destination>,
    #[serde(default)]
    pub mirrors: Vec<Mirror>,
    /// Deprecated integer form of `mirrorPercentage`.
    #[serde(default)]
    pub mirror_percent: Option<u32>,
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    #[serde(default)]
    pub cors_policy: Option<CorsPolicy>,
    #[serde(default)]
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatch {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    #[serde(default)]
    pub method: Option<StringMatch>,
    #[serde(default)]
    pub authority: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub port: u32,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub ignore_uri_case: bool,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub source_namespace: String,
    #[serde(default)]
    pub stat_prefix: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpRouteDestination {
    #[serde(default)]
    pub destination: Option<Destination>,
    #[serde(default)]
    pub weight: i32,
    #[serde(default)]
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteDestination {
    #[serde(default)]
    pub destination: Option<Destination>,
    #[serde(default)]
    pub weight: i32,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DerivePort {
    #[default]
    FromProtocolDefault,
    FromRequestPort,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Redirect {
    #[serde(default)]
    pub uri: String,
    #[serde(default)]
    pub authority: String,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub derive_port: Option<DerivePort>,
    #[serde(default)]
    pub scheme: String,
    #[serde(default)]
    pub redirect_code: u32,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    #[serde(default)]
    pub status: u32,
    #[serde(default)]
    pub body: Option<Body>,
}

/// `string` or `bytes` (base64), not both.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Body {
    #[serde(default)]
    pub string: Option<String>,
    #[serde(default)]
    pub bytes: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Delegate {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rewrite {
    #[serde(default)]
    pub uri: String,
    #[serde(default)]
    pub authority: String,
    #[serde(default)]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    #[serde(default, rename = "match")]
    pub pattern: String,
    #[serde(default)]
    pub rewrite: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retry {
    #[serde(default)]
    pub attempts: i32,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    #[serde(default)]
    pub retry_on: String,
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
    #[serde(default)]
    pub retry_ignore_previous_hosts: Option<bool>,
    #[serde(default)]
    pub backoff: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default)]
    pub delay: Option<Delay>,
    #[serde(default)]
    pub abort: Option<Abort>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Delay {
    #[serde(default)]
    pub fixed_delay: Option<String>,
    #[serde(default)]
    pub exponential_delay: Option<String>,
    /// Deprecated integer form of `percentage`.
    #[serde(default)]
    pub percent: Option<i32>,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Abort {
    #[serde(default)]
    pub http_status: Option<i32>,
    #[serde(default)]
    pub grpc_status: Option<String>,
    #[serde(default)]
    pub http2_error: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    #[serde(default)]
    pub destination: Option<Destination>,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    #[default]
    Unspecified,
    Forward,
    Ignore,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Deprecated exact-match form of `allowOrigins`.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    #[serde(default)]
    pub unmatched_preflights: UnmatchedPreflights,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<TlsMatch>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsMatch {
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    #[serde(default)]
    pub port: u32,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub source_namespace: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TcpRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<L4Match>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L4Match {
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    #[serde(default)]
    pub port: u32,
    #[serde(default)]
    pub source_subnet: String,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub source_namespace: String,
}

mod validate;

pub use validate::{decode_base64, gateway_names};
