//! RequestAuthentication (`security.istio.io/v1` and `v1beta1`) from the config folder:
//! checked while parsing, and served to agents as `mesh.security.RequestAuthentication`
//! with every issuer's keys inline. Keys named by `jwksUri` are fetched here, as istiod
//! does by default, so agents need no route to the issuer; until they are known the
//! rule goes out without keys and agents reject that issuer's tokens (never accept).
use std::collections::BTreeMap;

use serde::Deserialize;

use super::authorization::{Selector, TargetRef, ROOT_NAMESPACE};
use super::folder::Metadata;
use crate::proto::mesh_security as mesh;

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct RequestAuthentication {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Spec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub selector: Option<Selector>,
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
    /// Deprecated singular form of `targetRefs`.
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    /// Services whose pods it applies to (see `authorization::TargetRef`).
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub jwks: Option<String>,
    #[serde(default)]
    pub from_headers: Vec<FromHeader>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long to wait for the JWKS server (Istio's default 5s); accepted, the
    /// control plane's own fetch timeout applies.
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FromHeader {
    pub name: String,
    #[serde(default)]
    pub prefix: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

fn header_name(path: &str, v: &str) -> Result<(), String> {
    http::HeaderName::from_bytes(v.as_bytes()).map(|_| ()).map_err(|_| format!("{path}: {v:?} is not a valid header name"))
}

impl Spec {
    pub fn targets(&self) -> impl Iterator<Item = &TargetRef> {
        super::authorization::targets(&self.target_refs, &self.target_ref)
    }

    /// Istio's validation: what is wrong, by field path.
    pub fn validate(&self) -> Result<(), String> {
        super::authorization::check_attachment(&self.selector, &self.target_refs, &self.target_ref)?;
        if let Some((k, _)) = self.selector.iter().flat_map(|s| &s.match_labels).find(|(k, _)| k.is_empty()) {
            return Err(format!("spec.selector.matchLabels.{k:?}: empty label key"));
        }
        let mut issuers = std::collections::BTreeSet::new();
        for (i, r) in self.jwt_rules.iter().enumerate() {
            let at = |f: &str| format!("spec.jwtRules[{i}].{f}");
            if r.issuer.is_empty() {
                return Err(format!("{}: required", at("issuer")));
            }
            if !issuers.insert(r.issuer.as_str()) {
                return Err(format!("{}: issuer {:?} appears in two rules", at("issuer"), r.issuer));
            }
            match (&r.jwks, &r.jwks_uri) {
                (Some(_), Some(_)) => return Err(format!("{}: set jwks or jwksUri, not both", at("jwks"))),
                (None, None) => return Err(format!("{}: one of jwks or jwksUri is required", at("jwksUri"))),
                (Some(j), None) => crate::jwt::parse_jwks(j).map(|_| ()).map_err(|e| format!("{}: {e}", at("jwks")))?,
                (None, Some(u)) if !(u.starts_with("https://") || u.starts_with("http://")) => {
                    return Err(format!("{}: {u:?} is not an http:// or https:// URL", at("jwksUri")));
                }
                (None, Some(_)) => {}
            }
            for (j, h) in r.from_headers.iter().enumerate() {
                header_name(&at(&format!("fromHeaders[{j}].name")), &h.name)?;
            }
            if let Some(h) = &r.output_payload_to_header {
                header_name(&at("outputPayloadToHeader"), h)?;
            }
            for (j, c) in r.output_claim_to_headers.iter().enumerate() {
                header_name(&at(&format!("outputClaimToHeaders[{j}].header")), &c.header)?;
                if c.claim.is_empty() {
                    return Err(format!("{}: required", at(&format!("outputClaimToHeaders[{j}].claim"))));
                }
            }
        }
        Ok(())
    }
}

/// The served form; `jwks` gives the keys fetched for a `jwksUri` (or `None` while
/// unknown).
pub fn convert(namespace: &str, name: &str, spec: &Spec, jwks: &dyn Fn(&str) -> Option<String>) -> mesh::RequestAuthentication {
    let rules = spec
        .jwt_rules
        .iter()
        .map(|r| mesh::JwtRule {
            issuer: r.issuer.clone(),
            audiences: r.audiences.clone(),
            jwks: match (&r.jwks, &r.jwks_uri) {
                (Some(j), _) => j.clone(),
                (None, Some(u)) => jwks(u).unwrap_or_default(),
                (None, None) => String::new(),
            },
            jwks_uri: r.jwks_uri.clone().unwrap_or_default(),
            from_headers: r.from_headers.iter().map(|h| mesh::JwtHeader { name: h.name.clone(), prefix: h.prefix.clone() }).collect(),
            from_params: r.from_params.clone(),
            from_cookies: r.from_cookies.clone(),
            forward_original_token: r.forward_original_token,
            output_payload_to_header: r.output_payload_to_header.clone().unwrap_or_default(),
            output_claim_to_headers: r
                .output_claim_to_headers
                .iter()
                .map(|c| mesh::ClaimToHeader { header: c.header.clone(), claim: c.claim.clone() })
                .collect(),
        })
        .collect();
    let selector: BTreeMap<String, String> = spec.selector.iter().flat_map(|s| s.match_labels.clone()).collect();
    mesh::RequestAuthentication {
        name: name.to_string(),
        namespace: namespace.to_string(),
        selector: selector.into_iter().collect(),
        mesh_wide: namespace == ROOT_NAMESPACE,
        rules,
        workloads: Vec::new(),
        by_workload: false,
    }
}

/// Every `jwksUri` the specs name.
pub fn jwks_uris<'a>(specs: impl Iterator<Item = &'a Spec>) -> std::collections::HashSet<String> {
    specs.flat_map(|s| &s.jwt_rules).filter_map(|r| r.jwks_uri.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> Result<(), String> {
        let s: Spec = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        s.validate()
    }

    const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"k1","alg":"ES256"}]}"#;

    #[test]
    fn validation_names_the_field() {
        let cases: &[(&str, Result<(), &str>)] = &[
            (&format!("jwtRules: [{{issuer: a, jwks: '{JWKS}'}}]"), Ok(())),
            ("jwtRules: [{issuer: a, jwksUri: 'https://idp/keys'}]", Ok(())),
            ("jwtRules: [{jwksUri: 'https://idp/keys', issuer: ''}]", Err("spec.jwtRules[0].issuer: required")),
            ("jwtRules: [{issuer: a}]", Err("one of jwks or jwksUri")),
            ("jwtRules: [{issuer: a, jwksUri: 'ftp://x'}]", Err("jwksUri: \"ftp://x\" is not an http")),
            ("jwtRules: [{issuer: a, jwks: 'not json'}]", Err("spec.jwtRules[0].jwks:")),
            (
                "jwtRules: [{issuer: a, jwksUri: 'http://x', fromHeaders: [{name: 'bad header'}]}]",
                Err("fromHeaders[0].name: \"bad header\" is not a valid header name"),
            ),
            ("jwtRules: [{issuer: a, jwksUri: 'http://x'}, {issuer: a, jwksUri: 'http://y'}]", Err("appears in two rules")),
            ("jwtRules: [{issuer: a, jwksUri: 'http://x', outputClaimToHeaders: [{header: x-sub, claim: ''}]}]", Err("claim: required")),
        ];
        for (yaml, want) in cases {
            match (spec(yaml), want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(w)) => assert!(e.contains(w), "{yaml}: {e} should contain {w}"),
                (got, _) => panic!("{yaml}: got {got:?}, want {want:?}"),
            }
        }
        let unknown: Result<Spec, _> = serde_yaml::from_str("jwtRules: [{issuer: a, jwksUri: 'http://x', bogus: 1}]");
        assert!(unknown.unwrap_err().to_string().contains("bogus"));
    }

    #[test]
    fn keys_by_uri_are_inlined_and_absent_until_fetched() {
        let s: Spec = serde_yaml::from_str("jwtRules: [{issuer: a, jwksUri: 'http://idp/k'}]").unwrap();
        let none = convert("ns", "r", &s, &|_| None);
        assert_eq!(none.rules[0].jwks, "");
        assert_eq!(none.rules[0].jwks_uri, "http://idp/k");
        let some = convert("ns", "r", &s, &|u| (u == "http://idp/k").then(|| JWKS.to_string()));
        assert_eq!(some.rules[0].jwks, JWKS);
        assert!(!some.mesh_wide);
        assert!(convert(ROOT_NAMESPACE, "r", &s, &|_| None).mesh_wide);
    }
}
