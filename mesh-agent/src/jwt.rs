//! Istio RequestAuthentication: finding JWTs in a request, validating them against the
//! `jwtRules` that apply, and rewriting the request the way Envoy's `jwt_authn` filter
//! does when Istio configures it. Pure: keys arrive as JWKS text (see [`fetch`] for
//! `jwksUri`), the clock as an argument.
//!
//! # Semantics
//! Every location any rule names is searched (a header with its value prefix, a query
//! parameter, a cookie). No token anywhere: [`Outcome::Anonymous`], which passes
//! authentication (an AuthorizationPolicy may still demand `requestPrincipals`). More
//! than one distinct token: rejected, since which one counts would be a guess an
//! attacker could steer. One token (possibly at several locations): its unverified
//! `iss` picks the rules that name it *and* list a location it was found at; none is
//! "issuer not configured". Then, as Envoy orders the checks: `nbf`/`exp` with 60 s of
//! skew (both optional), the audiences (if the rule lists any, one must be in `aud`,
//! compared without `http(s)://` and a trailing `/`), then the signature. A token
//! passes when any candidate rule accepts it; otherwise the first rule's reason is
//! given. A header without the configured prefix is no token (Envoy does this).
//!
//! # Keys
//! Only public keys: RSA (RS256/384/512, PS256/384/512), EC P-256 (ES256), EC P-384
//! (ES384) and Ed25519 (EdDSA). `none` and HS* are refused outright: a JWKS is public,
//! so a symmetric key in one would let anyone mint tokens, and HS* verified with a
//! public key as the secret is the classic algorithm-confusion forgery. Keys of other
//! types, curves or uses in a JWKS are skipped. A token with `kid` is checked only
//! against keys with that `kid` or with none (Envoy's rule); without `kid`, against
//! every key whose type and `alg` fit. Rules whose keys are unknown (no JWKS yet, or a
//! bad one) reject their issuer's tokens: fail closed, never open.
//!
//! # Rewriting
//! On success the token is removed from where it was found unless
//! `forward_original_token`, and the `output_*` headers are set. Those output headers
//! are first stripped from every request, authenticated or not, so a client can never
//! supply them itself.
use std::collections::HashMap;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, COOKIE};
use http::uri::PathAndQuery;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

pub mod fetch;
#[cfg(test)]
mod tests;

/// A token longer than this is rejected unparsed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// A JWKS larger than this is refused, inline or fetched.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Allowed clock difference with the issuer for `exp` and `nbf` (Envoy's default).
pub const CLOCK_SKEW_SECS: u64 = 60;

/// One `jwtRules` entry of a RequestAuthentication, with its keys resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub issuer: String,
    /// Empty: any audience (or none) is accepted.
    pub audiences: Vec<String>,
    /// JWKS JSON; `None`: keys not known yet, so this issuer's tokens are rejected.
    pub jwks: Option<String>,
    /// With `from_params` and `from_cookies` all empty: `Authorization: Bearer <token>`
    /// and the query parameter `access_token`, as Istio defaults.
    pub from_headers: Vec<FromHeader>,
    pub from_params: Vec<String>,
    pub from_cookies: Vec<String>,
    /// False (Istio's default): the token is removed from the forwarded request.
    pub forward_original_token: bool,
    /// Header to receive the payload, base64url without padding, as Envoy sends it.
    pub output_payload_to_header: Option<String>,
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

/// A header carrying a token after `prefix` (e.g. `Authorization`, `"Bearer "`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FromHeader {
    pub name: String,
    pub prefix: String,
}

/// Copies a claim (a nested one as `a.b`) into a request header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

/// What authentication decided for a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// No token at any configured location: passes authentication (authorization may
    /// still require `requestPrincipals`).
    Anonymous,
    Authenticated(Claims),
    /// Answer 401 with this reason.
    Rejected(Reject),
}

/// Why a request is answered 401; the texts are Envoy's where it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("token exceeds 16384 bytes")]
    TooLarge,
    #[error("Jwt is ambiguous: the request carries more than one distinct token")]
    MultipleTokens,
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    BadFormat,
    #[error("Jwt header is an invalid Base64url encoded")]
    HeaderBase64,
    #[error("Jwt header is an invalid JSON")]
    HeaderJson,
    #[error("Jwt header [alg] field is required and must be a string")]
    AlgMissing,
    #[error("Jwt header [alg] is not supported")]
    AlgNotSupported,
    #[error("Jwt header [kid] field is not a string")]
    KidNotString,
    #[error("Jwt payload is an invalid Base64url encoded")]
    PayloadBase64,
    #[error("Jwt payload is an invalid JSON")]
    PayloadJson,
    #[error("Jwt payload [{0}] field is not a string")]
    ClaimNotString(&'static str),
    #[error("Jwt payload [aud] field is not a string or string list")]
    AudNotStrings,
    #[error("Jwt payload [{0}] field is not a positive integer")]
    TimeNotInteger(&'static str),
    #[error("Jwt signature is an invalid Base64url encoded")]
    SignatureBase64,
    #[error("Jwt issuer is not configured")]
    IssuerNotConfigured,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Jwt is expired")]
    Expired,
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    #[error("Jwks remote fetch is failed")]
    KeysUnknown,
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    NoMatchingKey,
    #[error("Jwt verification fails")]
    VerificationFails,
}

/// A rule that could not be compiled whole. The rule stays, with its keys treated as
/// unknown, so its issuer's tokens are rejected rather than let through.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("jwtRules[{index}] (issuer {issuer:?}): unusable JWKS, tokens of this issuer will be rejected: {source}")]
    Jwks {
        index: usize,
        issuer: String,
        #[source]
        source: JwksError,
    },
    #[error("jwtRules[{index}] (issuer {issuer:?}): {field} {name:?} is not a valid HTTP header name; tokens of this issuer will be rejected")]
    HeaderName { index: usize, issuer: String, field: &'static str, name: String },
}

/// Why a JWKS document cannot be used (inline, or fetched from `jwksUri`).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is {0} bytes, over the limit of 1 MiB")]
    TooLarge(usize),
    #[error("JWKS is not JSON of the form {{\"keys\": [...]}}: {0}")]
    Json(#[source] serde_json::Error),
    #[error("JWKS has none of its {0} keys usable for signatures (RSA of 2048 to 8192 bits, EC P-256/P-384, Ed25519; symmetric and encryption keys are never used)")]
    NoUsableKey(usize),
}

/// The verified token's identity and claims.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims {
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
    /// `azp`, the party the token was issued to.
    pub presenter: Option<String>,
    /// The whole payload.
    pub raw: Value,
}

impl Claims {
    /// `iss/sub`, Istio's `request.auth.principal`.
    pub fn principal(&self) -> String {
        format!("{}/{}", self.issuer, self.subject)
    }

    /// Istio's `request.auth.claims[a][b]`: the value at a nested path as strings. A
    /// string gives one, a list gives each of its strings, numbers and bools, a number
    /// or bool its JSON text; absent (or an object) gives nothing.
    pub fn claim(&self, path: &[&str]) -> Vec<String> {
        match lookup(&self.raw, path) {
            Some(Value::Array(items)) => items.iter().filter_map(scalar_text).collect(),
            Some(v) => scalar_text(v).into_iter().collect(),
            None => Vec::new(),
        }
    }
}

fn lookup<'v>(root: &'v Value, path: &[impl AsRef<str>]) -> Option<&'v Value> {
    path.iter().try_fold(root, |v, key| v.get(key.as_ref()))
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    }
}

/// A public key from a JWKS, checked usable for signatures.
#[derive(Clone)]
pub struct Key {
    kid: Option<String>,
    /// The JWK's `alg`, when it names one: the key is then used for that alone.
    alg: Option<Algorithm>,
    kind: KeyKind,
    key: DecodingKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

impl Key {
    /// The key in one JWK, or `None` when it is not a signature key we can use.
    fn from_jwk(value: Value) -> Option<Key> {
        let jwk: Jwk = serde_json::from_value(value).ok()?;
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return None;
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) if rsa_size_supported(&p.n) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => KeyKind::P256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => KeyKind::P384,
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => KeyKind::Ed25519,
            _ => return None,
        };
        // An `alg` we cannot verify with (e.g. RSA-OAEP) marks a key for something else.
        let alg = match jwk.common.key_algorithm {
            Some(a) => Some(Algorithm::from_str(&a.to_string()).ok().filter(|a| kind.fits(*a))?),
            None => None,
        };
        let key = DecodingKey::from_jwk(&jwk).ok()?;
        Some(Key { kid: jwk.common.key_id, alg, kind, key })
    }

    fn usable_for(&self, jwt: &Jwt) -> bool {
        let kid_fits = match (&jwt.kid, &self.kid) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        };
        kid_fits && self.kind.fits(jwt.alg) && self.alg.is_none_or(|a| a == jwt.alg)
    }

    /// Only after `usable_for`: jsonwebtoken panics on an RSA key with a non-RSA `alg`.
    fn verifies(&self, jwt: &Jwt) -> bool {
        jsonwebtoken::crypto::verify(jwt.signature, jwt.signed.as_bytes(), &self.key, jwt.alg).unwrap_or(false)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("alg", &self.alg).field("kind", &self.kind).finish()
    }
}

/// ring verifies RSA signatures with moduli of 2048 to 8192 bits only. Other sizes are
/// skipped when parsing, so a JWKS holding only those is reported as unusable instead
/// of every token failing verification.
fn rsa_size_supported(n: &str) -> bool {
    let significant = |n: Vec<u8>| n.iter().skip_while(|b| **b == 0).count();
    URL_SAFE_NO_PAD.decode(n).is_ok_and(|n| (256..=1024).contains(&significant(n)))
}

/// Parses a JWKS document into its usable keys; at least one is required.
pub fn parse_jwks(json: &str) -> Result<Vec<Key>, JwksError> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    if json.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge(json.len()));
    }
    let set: Set = serde_json::from_str(json).map_err(JwksError::Json)?;
    let total = set.keys.len();
    let keys: Vec<Key> = set.keys.into_iter().filter_map(Key::from_jwk).collect();
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey(total));
    }
    Ok(keys)
}

/// Where a token may be, Envoy's `JwtLocation`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
    Cookie(String),
}

struct CompiledRule {
    issuer: String,
    audiences: Vec<String>,
    /// `None`: keys unknown, every token of this issuer is rejected.
    keys: Option<Vec<Key>>,
    /// Indexes into `Compiled::locations`.
    locations: Vec<usize>,
    forward: bool,
    payload_header: Option<HeaderName>,
    claim_headers: Vec<(HeaderName, Vec<String>)>,
}

/// How many verified tokens a [`Compiled`] remembers (then it forgets them all).
const VERIFIED_CACHE: usize = 4096;

/// The `jwtRules` that apply to a workload, compiled once.
#[derive(Default)]
pub struct Compiled {
    rules: Vec<CompiledRule>,
    /// Every location of every rule, each once.
    locations: Vec<Location>,
    /// Tokens whose audience and signature a rule (by index) accepted: the same
    /// bytes are not verified again (clients send one token on many requests, and an
    /// RSA or ECDSA check costs more than the rest of the request). Time is checked
    /// on every request. A change of keys compiles a new `Compiled`, so nothing here
    /// outlives the keys it was checked with.
    verified: std::sync::Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Compiled({} rules)", self.rules.len())
    }
}

/// A token as found: its text and the locations (indexes) holding it.
struct Found {
    token: String,
    at: Vec<usize>,
}

impl Compiled {
    /// Compiles the rules. A rule with a bad JWKS or header name is reported and kept
    /// with its keys unknown (fail closed); the others work.
    pub fn new(rules: Vec<Rule>) -> (Compiled, Vec<RuleError>) {
        let mut compiled = Compiled::default();
        let mut errors = Vec::new();
        for (index, rule) in rules.into_iter().enumerate() {
            let rule = compiled.compile(index, rule, &mut errors);
            compiled.rules.push(rule);
        }
        (compiled, errors)
    }

    fn compile(&mut self, index: usize, rule: Rule, errors: &mut Vec<RuleError>) -> CompiledRule {
        let before = errors.len();
        let mut header = |field: &'static str, name: &str| match HeaderName::from_str(name) {
            Ok(h) => Some(h),
            Err(_) => {
                let (issuer, name) = (rule.issuer.clone(), name.to_owned());
                errors.push(RuleError::HeaderName { index, issuer, field, name });
                None
            }
        };
        let mut locations = Vec::new();
        for h in &rule.from_headers {
            if let Some(name) = header("fromHeaders name", &h.name) {
                locations.push(Location::Header { name, prefix: h.prefix.clone() });
            }
        }
        locations.extend(rule.from_params.iter().cloned().map(Location::Param));
        locations.extend(rule.from_cookies.iter().cloned().map(Location::Cookie));
        if rule.from_headers.is_empty() && rule.from_params.is_empty() && rule.from_cookies.is_empty() {
            locations.push(Location::Header { name: AUTHORIZATION, prefix: "Bearer ".into() });
            locations.push(Location::Param("access_token".into()));
        }
        let payload_header = rule.output_payload_to_header.as_deref().and_then(|h| header("outputPayloadToHeader", h));
        let claim_headers = (rule.output_claim_to_headers.iter())
            .filter_map(|c| Some((header("outputClaimToHeaders header", &c.header)?, split_claim(&c.claim))))
            .collect();
        let mut keys = rule.jwks.as_deref().and_then(|jwks| match parse_jwks(jwks) {
            Ok(keys) => Some(keys),
            Err(source) => {
                errors.push(RuleError::Jwks { index, issuer: rule.issuer.clone(), source });
                None
            }
        });
        if errors.len() > before {
            keys = None;
        }
        CompiledRule {
            locations: locations.into_iter().map(|l| self.location_index(l)).collect(),
            issuer: rule.issuer,
            audiences: rule.audiences,
            keys,
            forward: rule.forward_original_token,
            payload_header,
            claim_headers,
        }
    }

    fn location_index(&mut self, location: Location) -> usize {
        self.locations.iter().position(|l| *l == location).unwrap_or_else(|| {
            self.locations.push(location);
            self.locations.len() - 1
        })
    }

    /// Finds the token in the request, validates it, and on success rewrites the
    /// request (token removal, output headers). `now` is UNIX seconds.
    pub fn authenticate(&self, req: &mut http::request::Parts, now: u64) -> Outcome {
        let found = self.extract(req);
        self.strip_outputs(&mut req.headers);
        let token = match found.as_slice() {
            [] => return Outcome::Anonymous,
            [one] => one,
            _ => return Outcome::Rejected(Reject::MultipleTokens),
        };
        match self.validate(token, now) {
            Ok((rule, jwt)) => {
                if !rule.forward {
                    self.remove_token(req, &token.at);
                }
                rule.write_outputs(&mut req.headers, &jwt);
                Outcome::Authenticated(jwt.claims)
            }
            Err(reason) => Outcome::Rejected(reason),
        }
    }

    /// The distinct tokens at all locations, each with where it was found.
    fn extract(&self, req: &http::request::Parts) -> Vec<Found> {
        let mut found: Vec<Found> = Vec::new();
        for (index, location) in self.locations.iter().enumerate() {
            for token in tokens_at(location, req) {
                match found.iter_mut().find(|f| f.token == token) {
                    Some(f) => f.at.push(index),
                    None => found.push(Found { token, at: vec![index] }),
                }
            }
        }
        found
    }

    fn validate<'t>(&self, found: &'t Found, now: u64) -> Result<(&CompiledRule, Jwt<'t>), Reject> {
        let jwt = Jwt::parse(&found.token)?;
        let issuer = &jwt.claims.issuer;
        let mut rules = (self.rules.iter())
            .filter(|r| !issuer.is_empty() && r.issuer == *issuer && r.locations.iter().any(|l| found.at.contains(l)))
            .peekable();
        if rules.peek().is_none() {
            return Err(Reject::IssuerNotConfigured);
        }
        jwt.check_time(now)?;
        let known = self.verified.lock().unwrap_or_else(|e| e.into_inner()).get(&found.token).copied();
        if let Some(rule) = known.and_then(|i| rules.clone().find(|r| std::ptr::eq(*r, &self.rules[i]))) {
            return Ok((rule, jwt));
        }
        let mut first_reason = None;
        for rule in rules {
            match rule.verify(&jwt) {
                Ok(()) => {
                    let index = self.rules.iter().position(|r| std::ptr::eq(r, rule)).expect("a rule of ours");
                    let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
                    if verified.len() >= VERIFIED_CACHE {
                        verified.clear();
                    }
                    verified.insert(found.token.clone(), index);
                    return Ok((rule, jwt));
                }
                Err(reason) => _ = first_reason.get_or_insert(reason),
            }
        }
        Err(first_reason.unwrap_or(Reject::VerificationFails))
    }

    fn strip_outputs(&self, headers: &mut http::HeaderMap) {
        for rule in &self.rules {
            for name in rule.payload_header.iter().chain(rule.claim_headers.iter().map(|(h, _)| h)) {
                headers.remove(name);
            }
        }
    }

    fn remove_token(&self, req: &mut http::request::Parts, at: &[usize]) {
        for location in at.iter().map(|&i| &self.locations[i]) {
            match location {
                Location::Header { name, .. } => _ = req.headers.remove(name),
                Location::Param(param) => remove_param(&mut req.uri, param),
                Location::Cookie(cookie) => remove_cookie(&mut req.headers, cookie),
            }
        }
    }
}

impl CompiledRule {
    /// Audience, then keys and signature; time is checked once before.
    fn verify(&self, jwt: &Jwt) -> Result<(), Reject> {
        let wanted = |aud: &String| self.audiences.iter().any(|a| same_audience(a, aud));
        if !self.audiences.is_empty() && !jwt.claims.audiences.iter().any(wanted) {
            return Err(Reject::AudienceNotAllowed);
        }
        let keys = self.keys.as_ref().ok_or(Reject::KeysUnknown)?;
        let mut candidates = keys.iter().filter(|k| k.usable_for(jwt)).peekable();
        if candidates.peek().is_none() {
            return Err(Reject::NoMatchingKey);
        }
        match candidates.any(|k| k.verifies(jwt)) {
            true => Ok(()),
            false => Err(Reject::VerificationFails),
        }
    }

    fn write_outputs(&self, headers: &mut http::HeaderMap, jwt: &Jwt) {
        if let Some(name) = &self.payload_header {
            // The payload segment passed strict base64url decoding: valid header text.
            if let Ok(value) = HeaderValue::from_str(jwt.payload) {
                headers.insert(name, value);
            }
        }
        for (name, path) in &self.claim_headers {
            let text = match lookup(&jwt.claims.raw, path) {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => continue,
            };
            match HeaderValue::from_str(&text) {
                Ok(value) => _ = headers.insert(name, value),
                Err(_) => tracing::debug!(header = %name, "claim value is not valid header text; header not set"),
            }
        }
    }
}

/// Envoy compares audiences without an `http://`/`https://` scheme and trailing `/`.
fn same_audience(a: &str, b: &str) -> bool {
    let bare = |s: &str| {
        let s = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).unwrap_or(s);
        s.strip_suffix('/').unwrap_or(s).to_owned()
    };
    bare(a) == bare(b)
}

fn split_claim(claim: &str) -> Vec<String> {
    claim.split('.').map(str::to_owned).collect()
}

/// The non-empty tokens at one location. Values are taken as they are: a token has no
/// characters that need percent-decoding.
fn tokens_at(location: &Location, req: &http::request::Parts) -> Vec<String> {
    let mut tokens: Vec<String> = match location {
        Location::Header { name, prefix } => (req.headers.get_all(name).iter())
            .filter_map(|v| strip_prefix_ignore_case(v.to_str().ok()?, prefix))
            .map(|t| t.trim().to_owned())
            .collect(),
        Location::Param(param) => (req.uri.query().unwrap_or("").split('&'))
            .filter_map(|pair| pair.split_once('=').filter(|(k, _)| k == param).map(|(_, v)| v.to_owned()))
            .collect(),
        Location::Cookie(cookie) => (req.headers.get_all(COOKIE).iter())
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('=').filter(|(k, _)| k == cookie).map(|(_, v)| v.to_owned()))
            .collect(),
    };
    tokens.retain(|t| !t.is_empty());
    tokens
}

/// Authentication schemes are case-insensitive (RFC 9110), so `bearer x` counts too.
fn strip_prefix_ignore_case<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &value[prefix.len()..])
}

fn remove_param(uri: &mut http::Uri, param: &str) {
    let Some(query) = uri.query() else { return };
    let kept: Vec<&str> = query.split('&').filter(|p| p.split_once('=').map_or(*p, |(k, _)| k) != param).collect();
    let path_and_query = match kept.is_empty() {
        true => uri.path().to_owned(),
        false => format!("{}?{}", uri.path(), kept.join("&")),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = PathAndQuery::from_str(&path_and_query).ok();
    match http::Uri::from_parts(parts) {
        Ok(new) => *uri = new,
        Err(e) => tracing::warn!("could not remove the token parameter {param:?} from the URI: {e}"),
    }
}

fn remove_cookie(headers: &mut http::HeaderMap, cookie: &str) {
    let values: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    headers.remove(COOKIE);
    for value in values {
        let Ok(text) = value.to_str() else {
            headers.append(COOKIE, value);
            continue;
        };
        let kept: Vec<&str> =
            text.split(';').map(str::trim).filter(|c| c.split_once('=').map_or(*c, |(k, _)| k) != cookie).collect();
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            if !kept.is_empty() {
                headers.append(COOKIE, v);
            }
        }
    }
}

/// A token split and decoded, its signature not yet checked.
struct Jwt<'t> {
    alg: Algorithm,
    kid: Option<String>,
    /// `header.payload`: what the signature covers.
    signed: &'t str,
    payload: &'t str,
    signature: &'t str,
    claims: Claims,
    nbf: Option<u64>,
    exp: Option<u64>,
}

impl<'t> Jwt<'t> {
    fn parse(token: &'t str) -> Result<Jwt<'t>, Reject> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Reject::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reject::BadFormat);
        };
        let head = decode_object(header, Reject::HeaderBase64, Reject::HeaderJson)?;
        let alg = head.get("alg").and_then(Value::as_str).ok_or(Reject::AlgMissing)?;
        let alg = supported_alg(alg).ok_or(Reject::AlgNotSupported)?;
        let kid = match head.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(Reject::KidNotString),
        };
        let body = decode_object(payload, Reject::PayloadBase64, Reject::PayloadJson)?;
        URL_SAFE_NO_PAD.decode(signature).map_err(|_| Reject::SignatureBase64)?;
        let (nbf, exp) = (unix_time(&body, "nbf")?, unix_time(&body, "exp")?);
        let claims = claims_of(body)?;
        let signed = &token[..header.len() + 1 + payload.len()];
        Ok(Jwt { alg, kid, signed, payload, signature, claims, nbf, exp })
    }

    fn check_time(&self, now: u64) -> Result<(), Reject> {
        if self.nbf.is_some_and(|nbf| nbf > now.saturating_add(CLOCK_SKEW_SECS)) {
            return Err(Reject::NotYetValid);
        }
        if self.exp.is_some_and(|exp| now > exp.saturating_add(CLOCK_SKEW_SECS)) {
            return Err(Reject::Expired);
        }
        Ok(())
    }
}

/// The asymmetric algorithms; `none` and HS* are never accepted (see the module doc).
fn supported_alg(alg: &str) -> Option<Algorithm> {
    use Algorithm::*;
    Algorithm::from_str(alg)
        .ok()
        .filter(|a| matches!(a, RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 | EdDSA))
}

fn decode_object(segment: &str, bad_base64: Reject, bad_json: Reject) -> Result<Map<String, Value>, Reject> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| bad_base64)?;
    serde_json::from_slice(&bytes).map_err(|_| bad_json)
}

/// A NumericDate: a non-negative integer, possibly written as `1700000000.0`.
fn unix_time(payload: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, Reject> {
    let Some(v) = payload.get(name) else { return Ok(None) };
    let float = || v.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < u64::MAX as f64).map(|f| f as u64);
    v.as_u64().or_else(float).map(Some).ok_or(Reject::TimeNotInteger(name))
}

fn claims_of(payload: Map<String, Value>) -> Result<Claims, Reject> {
    let text = |name: &'static str| match payload.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Reject::ClaimNotString(name)),
    };
    let audiences = match payload.get("aud") {
        None => Vec::new(),
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(list)) => {
            list.iter().map(|v| v.as_str().map(str::to_owned)).collect::<Option<_>>().ok_or(Reject::AudNotStrings)?
        }
        Some(_) => return Err(Reject::AudNotStrings),
    };
    Ok(Claims {
        issuer: text("iss")?.unwrap_or_default(),
        subject: text("sub")?.unwrap_or_default(),
        presenter: text("azp")?,
        audiences,
        raw: Value::Object(payload),
    })
}
