//! What one agent's stream may make the control plane read and keep, and how large one
//! served resource may be. Each check is pure; its error names the limit it hit.
//!
//! Only an agent with a valid node token gets this far (the token is checked before
//! its stream is read), so these bound mistakes and broken agents more than attackers.
use std::collections::BTreeSet;

use tonic::Status;

use crate::proto::discovery::DeltaDiscoveryRequest;

/// Largest request the ADS service decodes (`max_decoding_message_size`). Requests are
/// subscriptions and ACKs; the largest an agent sends is a resume naming every resource
/// it holds of one type, ~65 bytes each on the wire (a ~45-byte name, our 16-digit
/// version, framing): ~0.7 MB for 10,000 workloads, so 4 MiB resumes ~60,000.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Names one resume (`initial_resource_versions`) may list. An entry carrying one of our
/// 16-digit versions costs at least 23 bytes, so a request within [`MAX_REQUEST_BYTES`]
/// that names our versions has fewer than 190,000; more means tiny made-up names.
pub const MAX_RESUME_NAMES: usize = 200_000;

/// Longest type URL accepted (real ones are under 100 bytes).
pub const MAX_TYPE_URL_BYTES: usize = 256;

/// Distinct types we do not serve that one stream may subscribe to (Envoy asks for
/// about ten); each is answered once with nothing, and remembered so that it is only
/// answered and logged once.
pub const MAX_UNKNOWN_TYPES: usize = 32;

/// Bytes of a NACK's reason kept (it is stored per rejected resource, up to 100 per
/// type): the rest is cut, and the cut said.
pub const MAX_NACK_REASON_BYTES: usize = 4096;

/// Largest encoded resource a snapshot should carry: one Kubernetes object is at most
/// ~1.5 MiB (etcd's request limit), and 4 MiB is a sixteenth of what the agent accepts
/// in one response (`xds::MAX_RESPONSE_BYTES`), so no single resource can make a push
/// unreadable.
pub const MAX_RESOURCE_BYTES: usize = 4 << 20;

/// Addresses one stream may have looked up by name at once (on-demand lookups of
/// callers). The agent keeps at most `ondemand::MAX_SUBSCRIBED` (4,096) and drops the
/// oldest, so more means a broken agent; each costs the server one set entry.
pub const MAX_DEMANDED: usize = 16_384;

/// A limit an agent's request or a resource went over.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("a type URL of {0} bytes; the control plane accepts at most {MAX_TYPE_URL_BYTES} (MAX_TYPE_URL_BYTES)")]
    TypeUrl(usize),
    #[error("initial_resource_versions names {names} resources of {type_url}; the control plane accepts at most {MAX_RESUME_NAMES} (MAX_RESUME_NAMES)")]
    ResumeNames { names: usize, type_url: String },
    #[error("subscribed to more than {MAX_UNKNOWN_TYPES} types this control plane does not serve (MAX_UNKNOWN_TYPES), the last {0:?}; it serves {served}", served = super::scope::TYPES.join(", "))]
    UnknownTypes(String),
    #[error("looked up {0} addresses by name on one stream; the control plane keeps at most {MAX_DEMANDED} (MAX_DEMANDED)")]
    Demanded(usize),
    #[error("{name}: its {type_url} resource encodes to {bytes} bytes, over the {MAX_RESOURCE_BYTES}-byte limit (MAX_RESOURCE_BYTES); split the object into smaller ones")]
    ResourceTooLarge { name: String, type_url: String, bytes: usize },
}

/// The status that ends the stream of an agent that went over a limit.
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::TypeUrl(_) => Status::invalid_argument(e.to_string()),
            _ => Status::resource_exhausted(e.to_string()),
        }
    }
}

/// Checks a request before it is acted on, and cuts what would be kept of it (a NACK's
/// reason) to its limit. An error ends the stream.
pub fn check_request(req: &mut DeltaDiscoveryRequest) -> Result<(), Error> {
    if req.type_url.len() > MAX_TYPE_URL_BYTES {
        return Err(Error::TypeUrl(req.type_url.len()));
    }
    if req.initial_resource_versions.len() > MAX_RESUME_NAMES {
        return Err(Error::ResumeNames { names: req.initial_resource_versions.len(), type_url: req.type_url.clone() });
    }
    if let Some(e) = &mut req.error_detail {
        cut(&mut e.message, MAX_NACK_REASON_BYTES);
    }
    Ok(())
}

/// Cuts `text` to at most `max` bytes plus a note of how long it was.
fn cut(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let len = text.len();
    let end = (0..=max).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
    text.truncate(end);
    text.push_str(&format!(" ... (cut from {len} bytes)"));
}

/// The types one stream subscribed to that we do not serve.
#[derive(Debug, Default)]
pub struct UnknownTypes(BTreeSet<String>);

impl UnknownTypes {
    /// True the first time the stream names `type_url` (answer it), false after. An
    /// error once more than [`MAX_UNKNOWN_TYPES`] distinct ones were named.
    pub fn first_time(&mut self, type_url: &str) -> Result<bool, Error> {
        if self.0.contains(type_url) {
            return Ok(false);
        }
        if self.0.len() == MAX_UNKNOWN_TYPES {
            return Err(Error::UnknownTypes(type_url.to_string()));
        }
        self.0.insert(type_url.to_string());
        Ok(true)
    }
}

/// Whether the resource `name` of `any.type_url` may be served ([`MAX_RESOURCE_BYTES`]). For the snapshot build:
/// an object failing it is reported like an invalid one and not served.
pub fn check_resource(name: &str, any: &prost_types::Any) -> Result<(), Error> {
    if any.value.len() <= MAX_RESOURCE_BYTES {
        return Ok(());
    }
    Err(Error::ResourceTooLarge { name: name.to_string(), type_url: any.type_url.clone(), bytes: any.value.len() })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prost::Message as _;

    use super::*;
    use crate::proto::discovery::Status as RpcStatus;
    use crate::proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

    #[test]
    fn the_smallest_resume_entry_with_our_version_is_23_bytes() {
        let one = |name: &str| DeltaDiscoveryRequest {
            initial_resource_versions: HashMap::from([(name.to_string(), "0123456789abcdef".to_string())]),
            ..Default::default()
        };
        assert_eq!(one("a").encoded_len(), 23);
        const { assert!(MAX_REQUEST_BYTES / 23 < MAX_RESUME_NAMES, "a resume within the byte limit is within the name limit") };
    }

    #[test]
    fn requests_over_a_limit_are_refused_naming_it() {
        let mut long = DeltaDiscoveryRequest { type_url: "t".repeat(MAX_TYPE_URL_BYTES + 1), ..Default::default() };
        let s = Status::from(check_request(&mut long).unwrap_err());
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("MAX_TYPE_URL_BYTES"), "{}", s.message());

        let names = (0..=MAX_RESUME_NAMES).map(|i| (i.to_string(), String::new())).collect();
        let mut many = DeltaDiscoveryRequest { type_url: ADDRESS_TYPE_URL.into(), initial_resource_versions: names, ..Default::default() };
        let s = Status::from(check_request(&mut many).unwrap_err());
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.message().contains("names 200001 resources") && s.message().contains("at most 200000"), "{}", s.message());

        let mut ok = DeltaDiscoveryRequest { type_url: AUTHORIZATION_TYPE_URL.into(), ..Default::default() };
        assert!(check_request(&mut ok).is_ok());
    }

    #[test]
    fn a_long_nack_reason_is_cut_on_a_char_boundary() {
        let reason = format!("ns/p: {}", "é".repeat(MAX_NACK_REASON_BYTES));
        let mut nack = DeltaDiscoveryRequest {
            response_nonce: "1".into(),
            error_detail: Some(RpcStatus { code: 3, message: reason.clone(), details: vec![] }),
            ..Default::default()
        };
        check_request(&mut nack).unwrap();
        let kept = nack.error_detail.unwrap().message;
        assert!(kept.starts_with("ns/p: é"));
        assert!(kept.ends_with(&format!(" ... (cut from {} bytes)", reason.len())), "{kept}");
        assert!(kept.len() < MAX_NACK_REASON_BYTES + 40);
    }

    #[test]
    fn unknown_types_are_answered_once_each_and_bounded() {
        let mut seen = UnknownTypes::default();
        assert_eq!(seen.first_time("type.googleapis.com/envoy.config.cluster.v3.Cluster").ok(), Some(true));
        assert_eq!(seen.first_time("type.googleapis.com/envoy.config.cluster.v3.Cluster").ok(), Some(false));
        for i in 1..MAX_UNKNOWN_TYPES {
            assert_eq!(seen.first_time(&format!("t{i}")).ok(), Some(true));
        }
        let s = Status::from(seen.first_time("one.more").unwrap_err());
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.message().contains("more than 32 types") && s.message().contains("\"one.more\""), "{}", s.message());
        assert_eq!(seen.first_time("t1").ok(), Some(false), "those seen are still known");
    }

    #[test]
    fn an_oversized_resource_is_named_with_the_limit() {
        let any = |bytes: usize| prost_types::Any { type_url: AUTHORIZATION_TYPE_URL.into(), value: vec![0; bytes] };
        assert_eq!(check_resource("ns/p", &any(MAX_RESOURCE_BYTES)), Ok(()));
        let e = check_resource("ns/p", &any(MAX_RESOURCE_BYTES + 1)).unwrap_err();
        assert!(matches!(e, Error::ResourceTooLarge { bytes, .. } if bytes == MAX_RESOURCE_BYTES + 1));
        let text = e.to_string();
        assert!(text.starts_with("ns/p: its type.googleapis.com/istio.security.Authorization resource encodes to 4194305 bytes"), "{text}");
    }

    /// A policy allowing 200,000 principals is over 8 MB once encoded: refused.
    #[test]
    fn a_policy_with_200k_principals_is_too_large() {
        use crate::proto::security::{string_match::MatchType, Authorization, Group, Match, Rules, StringMatch};
        let principals = (0..200_000)
            .map(|i| StringMatch { match_type: Some(MatchType::Exact(format!("cluster.local/ns/shop/sa/client-{i}"))) })
            .collect();
        let policy = Authorization {
            groups: vec![Group { rules: vec![Rules { matches: vec![Match { principals, ..Default::default() }] }] }],
            ..Default::default()
        };
        let any = prost_types::Any { type_url: AUTHORIZATION_TYPE_URL.into(), value: policy.encode_to_vec() };
        let e = check_resource("shop/allow-all-clients", &any).unwrap_err();
        assert!(matches!(e, Error::ResourceTooLarge { bytes, .. } if bytes > 8_000_000), "{e}");
    }
}
