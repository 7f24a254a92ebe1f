//! RequestAuthentication semantics, table-driven, with real keys: RSA fixtures made
//! with `openssl genrsa -traditional 2048` for these tests, EC and Ed25519 generated
//! per run with ring.
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents};
use serde_json::json;

use super::*;

const NOW: u64 = 1_700_000_000;
const ISS: &str = "https://issuer.example";
const OTHER_ISS: &str = "https://other.example";

/// A private key to sign with and its public JWK (without `kid`).
struct Signer {
    key: EncodingKey,
    jwk: Value,
}

struct Keys {
    rsa: Signer,
    rsa2: Signer,
    es256: Signer,
    es384: Signer,
    ed: Signer,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa: rsa(RSA_1),
        rsa2: rsa(RSA_2),
        es256: ec(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256"),
        es384: ec(&sig::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384"),
        ed: ed25519(),
    })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa(pem: &str) -> Signer {
    let der = STANDARD.decode(pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>()).unwrap();
    let public: RsaPublicKeyComponents<Vec<u8>> = RsaKeyPair::from_der(&der).unwrap().public().into();
    Signer {
        key: EncodingKey::from_rsa_der(&der),
        jwk: json!({"kty": "RSA", "n": b64(&public.n), "e": b64(&public.e)}),
    }
}

fn ec(alg: &'static sig::EcdsaSigningAlgorithm, curve: &str) -> Signer {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let point = &pair.public_key().as_ref()[1..]; // after the 0x04 (uncompressed) tag
    let (x, y) = point.split_at(point.len() / 2);
    Signer {
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": curve, "x": b64(x), "y": b64(y)}),
    }
}

fn ed25519() -> Signer {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
    Signer { key: EncodingKey::from_ed_der(pkcs8.as_ref()), jwk }
}

/// A JWKS of these keys, each with an optional `kid`.
fn jwks(keys: &[(&Signer, Option<&str>)]) -> String {
    let keys: Vec<Value> = (keys.iter())
        .map(|(s, kid)| {
            let mut jwk = s.jwk.clone();
            if let Some(kid) = kid {
                jwk["kid"] = json!(kid);
            }
            jwk
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

fn sign(signer: &Signer, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let header = Header { kid: kid.map(str::to_owned), ..Header::new(alg) };
    encode(&header, claims, &signer.key).unwrap()
}

/// `iss`, `sub` and an `exp` ten minutes ahead, with `extra` merged over them.
fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISS, "sub": "alice", "exp": NOW + 600});
    for (k, v) in extra.as_object().unwrap() {
        match v {
            Value::Null => _ = c.as_object_mut().unwrap().remove(k),
            v => c[k] = v.clone(),
        }
    }
    c
}

fn rs256(extra: Value) -> String {
    sign(&keys().rsa, Algorithm::RS256, None, &claims(extra))
}

/// A token assembled by hand: any header, any payload, any signature text.
fn raw(header: Value, payload: Value, signature: &str) -> String {
    format!("{}.{}.{signature}", b64(header.to_string().as_bytes()), b64(payload.to_string().as_bytes()))
}

/// The default rule for `ISS`, keyed by these keys.
fn rule(keys: &[(&Signer, Option<&str>)]) -> Rule {
    Rule { issuer: ISS.into(), jwks: Some(jwks(keys)), ..Rule::default() }
}

fn rsa_rule() -> Rule {
    rule(&[(&keys().rsa, None)])
}

fn req(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn bearer(token: &str) -> http::request::Parts {
    req("/", &[("authorization", &format!("Bearer {token}"))])
}

fn authenticate(rules: Vec<Rule>, req: &mut http::request::Parts) -> Outcome {
    let (compiled, errors) = Compiled::new(rules);
    assert!(errors.is_empty(), "{errors:?}");
    compiled.authenticate(req, NOW)
}

#[derive(Debug)]
enum Want {
    Anonymous,
    /// Authenticated as this principal.
    Principal(&'static str),
    Rejected(Reject),
}

#[test]
fn request_authentication_follows_istio_semantics() {
    use Reject::*;
    use Want::{Anonymous as Anon, Principal as Ok_, Rejected as No};
    let k = keys();
    let alice = "https://issuer.example/alice";
    let at = |name: &str, prefix: &str| FromHeader { name: name.into(), prefix: prefix.into() };
    let valid = rs256(json!({}));
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        format!("{}.{}.{}", parts[0], b64(claims(json!({"sub": "mallory"})).to_string().as_bytes()), parts[2])
    };
    let rsa_jwks = jwks(&[(&k.rsa, None)]);
    let alg_confusion =
        encode(&Header::new(Algorithm::HS256), &claims(json!({})), &EncodingKey::from_secret(rsa_jwks.as_bytes()))
            .unwrap();
    let sig = valid.rsplit('.').next().unwrap().to_owned();
    let huge = rs256(json!({"pad": "x".repeat(MAX_TOKEN_BYTES)}));
    let with_alg = |alg: &str| -> Rule {
        let mut jwk = k.rsa.jwk.clone();
        jwk["alg"] = json!(alg);
        Rule { jwks: Some(json!({"keys": [jwk]}).to_string()), ..rsa_rule() }
    };
    let two_issuers = || {
        vec![
            Rule { from_headers: vec![at("x-a", "")], ..rsa_rule() },
            Rule { issuer: OTHER_ISS.into(), from_headers: vec![at("x-b", "")], ..rule(&[(&k.es256, None)]) },
        ]
    };
    let other_token = sign(&k.es256, Algorithm::ES256, None, &claims(json!({"iss": OTHER_ISS, "sub": "bob"})));

    type Case = (&'static str, Vec<Rule>, http::request::Parts, Want);
    let cases: Vec<Case> = vec![
        // Algorithms and keys.
        ("RS256", vec![rsa_rule()], bearer(&valid), Ok_(alice)),
        ("RS512", vec![rsa_rule()], bearer(&sign(&k.rsa, Algorithm::RS512, None, &claims(json!({})))), Ok_(alice)),
        ("PS256", vec![rsa_rule()], bearer(&sign(&k.rsa, Algorithm::PS256, None, &claims(json!({})))), Ok_(alice)),
        (
            "ES256",
            vec![rule(&[(&k.es256, None)])],
            bearer(&sign(&k.es256, Algorithm::ES256, None, &claims(json!({})))),
            Ok_(alice),
        ),
        (
            "ES384",
            vec![rule(&[(&k.es384, None)])],
            bearer(&sign(&k.es384, Algorithm::ES384, None, &claims(json!({})))),
            Ok_(alice),
        ),
        (
            "EdDSA",
            vec![rule(&[(&k.ed, None)])],
            bearer(&sign(&k.ed, Algorithm::EdDSA, None, &claims(json!({})))),
            Ok_(alice),
        ),
        (
            "alg none",
            vec![rsa_rule()],
            bearer(&raw(json!({"alg": "none"}), claims(json!({})), "")),
            No(AlgNotSupported),
        ),
        ("HS256 signed with the public JWKS as secret", vec![rsa_rule()], bearer(&alg_confusion), No(AlgNotSupported)),
        ("alg missing", vec![rsa_rule()], bearer(&raw(json!({"typ": "JWT"}), claims(json!({})), &sig)), No(AlgMissing)),
        (
            "alg not a string",
            vec![rsa_rule()],
            bearer(&raw(json!({"alg": 256}), claims(json!({})), &sig)),
            No(AlgMissing),
        ),
        ("tampered payload", vec![rsa_rule()], bearer(&tampered), No(VerificationFails)),
        (
            "signed by another key",
            vec![rsa_rule()],
            bearer(&sign(&k.rsa2, Algorithm::RS256, None, &claims(json!({})))),
            No(VerificationFails),
        ),
        (
            "ES256 token, only RSA keys",
            vec![rsa_rule()],
            bearer(&sign(&k.es256, Algorithm::ES256, None, &claims(json!({})))),
            No(NoMatchingKey),
        ),
        (
            "ES384 token, P-256 key",
            vec![rule(&[(&k.es256, None)])],
            bearer(&sign(&k.es384, Algorithm::ES384, None, &claims(json!({})))),
            No(NoMatchingKey),
        ),
        (
            "EdDSA token, P-256 key",
            vec![rule(&[(&k.es256, None)])],
            bearer(&sign(&k.ed, Algorithm::EdDSA, None, &claims(json!({})))),
            No(NoMatchingKey),
        ),
        ("JWK alg RS512, token RS256", vec![with_alg("RS512")], bearer(&valid), No(NoMatchingKey)),
        ("JWK alg RS256, token RS256", vec![with_alg("RS256")], bearer(&valid), Ok_(alice)),
        (
            "kid picks its key",
            vec![rule(&[(&k.rsa2, Some("two")), (&k.rsa, Some("one"))])],
            bearer(&sign(&k.rsa, Algorithm::RS256, Some("one"), &claims(json!({})))),
            Ok_(alice),
        ),
        (
            "kid of another key",
            vec![rule(&[(&k.rsa2, Some("two")), (&k.rsa, Some("one"))])],
            bearer(&sign(&k.rsa, Algorithm::RS256, Some("two"), &claims(json!({})))),
            No(VerificationFails),
        ),
        (
            "kid unknown",
            vec![rule(&[(&k.rsa, Some("one"))])],
            bearer(&sign(&k.rsa, Algorithm::RS256, Some("zzz"), &claims(json!({})))),
            No(NoMatchingKey),
        ),
        (
            "kid, JWK without kid is tried (Envoy)",
            vec![rule(&[(&k.rsa, None)])],
            bearer(&sign(&k.rsa, Algorithm::RS256, Some("any"), &claims(json!({})))),
            Ok_(alice),
        ),
        (
            "no kid, several keys: each fitting one tried",
            vec![rule(&[(&k.es256, None), (&k.rsa2, None), (&k.rsa, None)])],
            bearer(&valid),
            Ok_(alice),
        ),
        (
            "kid not a string",
            vec![rsa_rule()],
            bearer(&raw(json!({"alg": "RS256", "kid": 7}), claims(json!({})), &sig)),
            No(KidNotString),
        ),
        (
            "unusable keys beside a good one are skipped",
            vec![Rule {
                jwks: Some(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}, k.rsa.jwk]}).to_string()),
                ..rsa_rule()
            }],
            bearer(&valid),
            Ok_(alice),
        ),
        // Time.
        ("expired", vec![rsa_rule()], bearer(&rs256(json!({"exp": NOW - 61}))), No(Expired)),
        ("expired within skew", vec![rsa_rule()], bearer(&rs256(json!({"exp": NOW - 60}))), Ok_(alice)),
        ("nbf in the future", vec![rsa_rule()], bearer(&rs256(json!({"nbf": NOW + 61}))), No(NotYetValid)),
        ("nbf within skew", vec![rsa_rule()], bearer(&rs256(json!({"nbf": NOW + 60}))), Ok_(alice)),
        ("no exp", vec![rsa_rule()], bearer(&rs256(json!({"exp": null}))), Ok_(alice)),
        ("exp as integral float", vec![rsa_rule()], bearer(&rs256(json!({"exp": (NOW + 600) as f64}))), Ok_(alice)),
        ("exp a string", vec![rsa_rule()], bearer(&rs256(json!({"exp": "tomorrow"}))), No(TimeNotInteger("exp"))),
        ("exp negative", vec![rsa_rule()], bearer(&rs256(json!({"exp": -1}))), No(TimeNotInteger("exp"))),
        // Issuers.
        ("issuer not configured", vec![rsa_rule()], bearer(&rs256(json!({"iss": OTHER_ISS}))), No(IssuerNotConfigured)),
        ("no iss", vec![rsa_rule()], bearer(&rs256(json!({"iss": null}))), No(IssuerNotConfigured)),
        ("iss not a string", vec![rsa_rule()], bearer(&rs256(json!({"iss": ["a"]}))), No(ClaimNotString("iss"))),
        (
            "second rule's issuer",
            vec![rsa_rule(), Rule { issuer: OTHER_ISS.into(), ..rule(&[(&k.es256, None)]) }],
            bearer(&other_token),
            Ok_("https://other.example/bob"),
        ),
        (
            "issuer at its own header",
            two_issuers(),
            req("/", &[("x-b", &other_token)]),
            Ok_("https://other.example/bob"),
        ),
        (
            "issuer at another issuer's header",
            two_issuers(),
            req("/", &[("x-a", &other_token)]),
            No(IssuerNotConfigured),
        ),
        (
            "same issuer in two rules, second accepts",
            vec![rule(&[(&k.rsa2, None)]), rsa_rule()],
            bearer(&valid),
            Ok_(alice),
        ),
        (
            "same issuer in two rules, none accepts: first reason",
            vec![rule(&[(&k.rsa2, None)]), Rule { jwks: None, ..rsa_rule() }],
            bearer(&valid),
            No(VerificationFails),
        ),
        // Audiences.
        (
            "audience matches",
            vec![Rule { audiences: vec!["api".into()], ..rsa_rule() }],
            bearer(&rs256(json!({"aud": "api"}))),
            Ok_(alice),
        ),
        (
            "audience mismatch",
            vec![Rule { audiences: vec!["api".into()], ..rsa_rule() }],
            bearer(&rs256(json!({"aud": "web"}))),
            No(AudienceNotAllowed),
        ),
        (
            "audience in an array",
            vec![Rule { audiences: vec!["x".into(), "api".into()], ..rsa_rule() }],
            bearer(&rs256(json!({"aud": ["web", "api"]}))),
            Ok_(alice),
        ),
        (
            "audience required, none in token",
            vec![Rule { audiences: vec!["api".into()], ..rsa_rule() }],
            bearer(&valid),
            No(AudienceNotAllowed),
        ),
        (
            "audience without scheme and slash",
            vec![Rule { audiences: vec!["https://api.example/".into()], ..rsa_rule() }],
            bearer(&rs256(json!({"aud": "api.example"}))),
            Ok_(alice),
        ),
        ("no audiences configured: any", vec![rsa_rule()], bearer(&rs256(json!({"aud": "whatever"}))), Ok_(alice)),
        ("aud a number", vec![rsa_rule()], bearer(&rs256(json!({"aud": 5}))), No(AudNotStrings)),
        // Malformed.
        ("two parts", vec![rsa_rule()], bearer("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0"), No(BadFormat)),
        ("four parts", vec![rsa_rule()], bearer(&format!("{valid}.x")), No(BadFormat)),
        ("not a JWT", vec![rsa_rule()], bearer("opaque-access-token"), No(BadFormat)),
        ("header bad base64", vec![rsa_rule()], bearer(&format!("!!{valid}")), No(HeaderBase64)),
        (
            "header bad JSON",
            vec![rsa_rule()],
            bearer(&format!("{}.{}", b64(b"{alg"), valid.split_once('.').unwrap().1)),
            No(HeaderJson),
        ),
        (
            "payload bad base64",
            vec![rsa_rule()],
            bearer(&format!("{}.*.{sig}", valid.split('.').next().unwrap())),
            No(PayloadBase64),
        ),
        (
            "payload not an object",
            vec![rsa_rule()],
            bearer(&raw(json!({"alg": "RS256"}), json!([1, 2]), &sig)),
            No(PayloadJson),
        ),
        (
            "signature bad base64",
            vec![rsa_rule()],
            bearer(&format!("{}.s+g", valid.rsplit_once('.').unwrap().0)),
            No(SignatureBase64),
        ),
        ("oversized token", vec![rsa_rule()], bearer(&huge), No(TooLarge)),
        // Locations.
        ("no token", vec![rsa_rule()], req("/", &[]), Anon),
        ("no rules", vec![], bearer(&valid), Anon),
        (
            "header without the prefix",
            vec![rsa_rule()],
            req("/", &[("authorization", &format!("Basic {valid}"))]),
            Anon,
        ),
        ("empty bearer", vec![rsa_rule()], req("/", &[("authorization", "Bearer ")]), Anon),
        (
            "scheme case-insensitive",
            vec![rsa_rule()],
            req("/", &[("authorization", &format!("bearer {valid}"))]),
            Ok_(alice),
        ),
        (
            "custom header and prefix",
            vec![Rule { from_headers: vec![at("X-Token", "Jwt ")], ..rsa_rule() }],
            req("/", &[("x-token", &format!("Jwt {valid}"))]),
            Ok_(alice),
        ),
        (
            "custom header: Authorization not searched",
            vec![Rule { from_headers: vec![at("x-token", "")], ..rsa_rule() }],
            bearer(&valid),
            Anon,
        ),
        ("default query parameter", vec![rsa_rule()], req(&format!("/p?a=1&access_token={valid}"), &[]), Ok_(alice)),
        (
            "custom query parameter",
            vec![Rule { from_params: vec!["jwt".into()], ..rsa_rule() }],
            req(&format!("/p?jwt={valid}"), &[]),
            Ok_(alice),
        ),
        (
            "cookie",
            vec![Rule { from_cookies: vec!["session".into()], ..rsa_rule() }],
            req("/", &[("cookie", &format!("a=b; session={valid}"))]),
            Ok_(alice),
        ),
        (
            "two different tokens",
            vec![rsa_rule()],
            req(
                &format!("/?access_token={}", rs256(json!({"sub": "bob"}))),
                &[("authorization", &format!("Bearer {valid}"))],
            ),
            No(MultipleTokens),
        ),
        (
            "two Authorization headers",
            vec![rsa_rule()],
            req("/", &[("authorization", &format!("Bearer {valid}")), ("authorization", "Bearer other")]),
            No(MultipleTokens),
        ),
        (
            "same token twice",
            vec![rsa_rule()],
            req(&format!("/?access_token={valid}"), &[("authorization", &format!("Bearer {valid}"))]),
            Ok_(alice),
        ),
        // Keys not known.
        ("keys unknown", vec![Rule { jwks: None, ..rsa_rule() }], bearer(&valid), No(KeysUnknown)),
        ("keys unknown, no token", vec![Rule { jwks: None, ..rsa_rule() }], req("/", &[]), Anon),
    ];
    assert!(cases.len() >= 45);
    let mut failures = Vec::new();
    for (name, rules, mut parts, want) in cases {
        let got = authenticate(rules, &mut parts);
        let ok = match (&want, &got) {
            (Want::Anonymous, Outcome::Anonymous) => true,
            (Want::Principal(p), Outcome::Authenticated(c)) => c.principal() == *p,
            (Want::Rejected(r), Outcome::Rejected(got)) => r == got,
            _ => false,
        };
        if !ok {
            failures.push(format!("{name}: want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn a_verified_token_is_remembered_but_time_and_bytes_are_checked_each_time() {
    let (compiled, errors) = Compiled::new(vec![rsa_rule()]);
    assert!(errors.is_empty(), "{errors:?}");
    let token = rs256(json!({"exp": NOW + 60}));
    for _ in 0..3 {
        assert!(matches!(compiled.authenticate(&mut bearer(&token), NOW), Outcome::Authenticated(_)));
    }
    assert_eq!(compiled.verified.lock().unwrap().len(), 1, "verified once, remembered");
    // Past its expiry (and the skew) the remembered token is refused.
    let later = NOW + 60 + CLOCK_SKEW_SECS + 1;
    assert!(matches!(compiled.authenticate(&mut bearer(&token), later), Outcome::Rejected(Reject::Expired)));
    // Another signature on the same header and payload is verified, and refused.
    let (head, _) = token.rsplit_once('.').unwrap();
    let forged = format!("{head}.{}", b64(&[7u8; 256]));
    assert!(matches!(compiled.authenticate(&mut bearer(&forged), NOW), Outcome::Rejected(_)));
    // The cache is bounded.
    for i in 0..(VERIFIED_CACHE + 10) as u64 {
        let t = rs256(json!({"exp": NOW + 60, "jti": i}));
        assert!(matches!(compiled.authenticate(&mut bearer(&t), NOW), Outcome::Authenticated(_)));
    }
    assert!(compiled.verified.lock().unwrap().len() <= VERIFIED_CACHE);
}

#[test]
fn non_utf8_header_is_no_token() {
    let mut parts = req("/", &[]);
    parts.headers.insert(AUTHORIZATION, HeaderValue::from_bytes(b"Bearer \xff").unwrap());
    assert_eq!(authenticate(vec![rsa_rule()], &mut parts), Outcome::Anonymous);
}

#[test]
fn token_is_removed_unless_forwarded() {
    let valid = rs256(json!({}));
    let cookie_rule = || Rule { from_cookies: vec!["session".into()], ..rsa_rule() };
    type Case = (&'static str, Rule, http::request::Parts, &'static str, Option<&'static str>, Option<&'static str>);
    let bearer_header = format!("Bearer {valid}");
    let cases: Vec<Case> = vec![
        // (name, rule, request, URI after, Authorization after, Cookie after)
        ("header removed", rsa_rule(), bearer(&valid), "/", None, None),
        (
            "header forwarded",
            Rule { forward_original_token: true, ..rsa_rule() },
            bearer(&valid),
            "/",
            Some("kept"),
            None,
        ),
        (
            "param removed, others kept",
            rsa_rule(),
            req(&format!("/p?a=1&access_token={valid}&b=2"), &[]),
            "/p?a=1&b=2",
            None,
            None,
        ),
        ("only param removed", rsa_rule(), req(&format!("/p?access_token={valid}"), &[]), "/p", None, None),
        (
            "cookie removed, others kept",
            cookie_rule(),
            req("/", &[("cookie", &format!("a=1; session={valid}; b=2"))]),
            "/",
            None,
            Some("a=1; b=2"),
        ),
        ("only cookie removed", cookie_rule(), req("/", &[("cookie", &format!("session={valid}"))]), "/", None, None),
    ];
    for (name, rule, mut parts, uri, auth, cookie) in cases {
        assert!(matches!(authenticate(vec![rule], &mut parts), Outcome::Authenticated(_)), "{name}");
        assert_eq!(parts.uri, uri, "{name}");
        let got_auth = parts.headers.get(AUTHORIZATION).map(|v| v.to_str().unwrap());
        assert_eq!(got_auth.is_some(), auth.is_some(), "{name}");
        if auth.is_some() {
            assert_eq!(got_auth, Some(bearer_header.as_str()), "{name}");
        }
        assert_eq!(parts.headers.get(COOKIE).map(|v| v.to_str().unwrap()), cookie, "{name}");
    }
}

#[test]
fn outputs_payload_and_claims_to_headers() {
    let out = |header: &str, claim: &str| ClaimToHeader { header: header.into(), claim: claim.into() };
    let rule = Rule {
        output_payload_to_header: Some("x-jwt-payload".into()),
        output_claim_to_headers: vec![
            out("x-sub", "sub"),
            out("x-team", "org.team"),
            out("x-groups", "groups"),
            out("x-level", "level"),
            out("x-absent", "nope"),
            out("x-bad", "newline"),
        ],
        ..rsa_rule()
    };
    let extra = json!({"org": {"team": "core"}, "groups": ["a", "b"], "level": 3, "newline": "a\nb"});
    let token = rs256(extra);
    let spoofed = [("x-sub", "root"), ("x-absent", "spoof"), ("x-bad", "spoof"), ("x-jwt-payload", "spoof")];
    let mut headers = vec![("authorization", format!("Bearer {token}"))];
    headers.extend(spoofed.iter().map(|(k, v)| (*k, v.to_string())));
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut parts = req("/", &headers);
    let Outcome::Authenticated(claims) = authenticate(vec![rule.clone()], &mut parts) else {
        panic!("not authenticated")
    };
    let h = |name: &str| parts.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    let payload = URL_SAFE_NO_PAD.decode(h("x-jwt-payload").unwrap()).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap(), claims.raw);
    assert_eq!(h("x-sub").as_deref(), Some("alice"));
    assert_eq!(h("x-team").as_deref(), Some("core"));
    assert_eq!(h("x-groups").as_deref(), Some(r#"["a","b"]"#));
    assert_eq!(h("x-level").as_deref(), Some("3"));
    assert_eq!(h("x-absent"), None, "a client's own value is stripped, not passed on");
    assert_eq!(h("x-bad"), None, "a value that is not header text is not set");

    let mut anonymous = req("/", &[("x-sub", "root"), ("x-jwt-payload", "spoof")]);
    assert_eq!(authenticate(vec![rule], &mut anonymous), Outcome::Anonymous);
    assert!(anonymous.headers.is_empty(), "output headers are stripped from anonymous requests too");
}

#[test]
fn claims_read_as_istio_does() {
    let raw = claims(
        json!({"aud": ["a", "b"], "azp": "web", "groups": ["g1", "g2", 3, {"x": 1}], "org": {"team": "core", "n": 7, "ok": true}}),
    );
    let mut parts = bearer(&sign(&keys().rsa, Algorithm::RS256, None, &raw));
    let Outcome::Authenticated(c) = authenticate(vec![rsa_rule()], &mut parts) else { panic!("not authenticated") };
    assert_eq!(c.principal(), "https://issuer.example/alice");
    assert_eq!((c.issuer.as_str(), c.subject.as_str()), (ISS, "alice"));
    assert_eq!(c.audiences, ["a", "b"]);
    assert_eq!(c.presenter.as_deref(), Some("web"));
    assert_eq!(c.raw, raw);
    assert_eq!(c.claim(&["sub"]), ["alice"]);
    assert_eq!(c.claim(&["groups"]), ["g1", "g2", "3"]);
    assert_eq!(c.claim(&["org", "team"]), ["core"]);
    assert_eq!(c.claim(&["org", "n"]), ["7"]);
    assert_eq!(c.claim(&["org", "ok"]), ["true"]);
    assert!(c.claim(&["org"]).is_empty(), "an object has no string form");
    assert!(c.claim(&["org", "missing"]).is_empty());
    assert!(c.claim(&["sub", "deeper"]).is_empty());
}

#[test]
fn bad_rules_are_reported_and_fail_closed() {
    let unusable = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0"},
        {"kty": "RSA", "n": b64(&[0xc5; 128]), "e": "AQAB"},
        {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
        {"kty": "OKP", "crv": "X25519", "x": "AA"},
        {"kty": "RSA", "use": "enc", "n": keys().rsa.jwk["n"], "e": "AQAB"},
        {"kty": "RSA", "alg": "RSA-OAEP", "n": keys().rsa.jwk["n"], "e": "AQAB"}
    ]})
    .to_string();
    let huge = format!(r#"{{"keys": [], "pad": "{}"}}"#, " ".repeat(MAX_JWKS_BYTES));
    let named = |issuer: &str, jwks: &str| Rule { issuer: issuer.into(), jwks: Some(jwks.into()), ..Rule::default() };
    let bad_header = Rule {
        issuer: "h1".into(),
        from_headers: vec![FromHeader { name: "bad header".into(), prefix: String::new() }],
        ..rsa_rule()
    };
    let bad_output = Rule { issuer: "h2".into(), output_payload_to_header: Some("x:y".into()), ..rsa_rule() };
    let bad_claim_output = Rule {
        issuer: "h3".into(),
        output_claim_to_headers: vec![ClaimToHeader { header: "".into(), claim: "sub".into() }],
        ..rsa_rule()
    };
    let rules = vec![
        named("j1", "not json"),
        named("j2", &huge),
        named("j3", &unusable),
        named("j4", "{\"keys\": []}"),
        bad_header,
        bad_output,
        bad_claim_output,
        rsa_rule(),
    ];
    let (compiled, errors) = Compiled::new(rules);
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(texts.len(), 7, "{texts:#?}");
    assert!(matches!(&errors[0], RuleError::Jwks { index: 0, source: JwksError::Json(_), .. }), "{}", texts[0]);
    assert!(matches!(&errors[1], RuleError::Jwks { index: 1, source: JwksError::TooLarge(_), .. }), "{}", texts[1]);
    assert!(matches!(&errors[2], RuleError::Jwks { index: 2, source: JwksError::NoUsableKey(6), .. }), "{}", texts[2]);
    assert!(matches!(&errors[3], RuleError::Jwks { index: 3, source: JwksError::NoUsableKey(0), .. }), "{}", texts[3]);
    assert!(matches!(&errors[4], RuleError::HeaderName { index: 4, field: "fromHeaders name", .. }), "{}", texts[4]);
    assert!(
        matches!(&errors[5], RuleError::HeaderName { index: 5, field: "outputPayloadToHeader", .. }),
        "{}",
        texts[5]
    );
    assert!(matches!(&errors[6], RuleError::HeaderName { index: 6, .. }), "{}", texts[6]);
    assert!(texts[0].contains("jwtRules[0]") && texts[0].contains("\"j1\""), "{}", texts[0]);
    assert!(texts[4].contains("\"bad header\""), "{}", texts[4]);

    let for_issuer = |iss: &str| rs256(json!({"iss": iss}));
    for iss in ["j1", "j2", "j3", "j4", "h2", "h3"] {
        let got = compiled.authenticate(&mut bearer(&for_issuer(iss)), NOW);
        assert_eq!(got, Outcome::Rejected(Reject::KeysUnknown), "{iss}");
    }
    // h1's only location was invalid: its tokens cannot be found anywhere else.
    let got = compiled.authenticate(&mut bearer(&for_issuer("h1")), NOW);
    assert_eq!(got, Outcome::Rejected(Reject::IssuerNotConfigured));
    assert!(matches!(compiled.authenticate(&mut bearer(&rs256(json!({}))), NOW), Outcome::Authenticated(_)));
    let hs =
        encode(&Header::new(Algorithm::HS256), &claims(json!({"iss": "j3"})), &EncodingKey::from_secret(b"secret"))
            .unwrap();
    assert_eq!(compiled.authenticate(&mut bearer(&hs), NOW), Outcome::Rejected(Reject::AlgNotSupported));
}

#[test]
fn mangled_tokens_never_panic_nor_pass() {
    let k = keys();
    let rules = vec![rule(&[(&k.rsa, None), (&k.es256, None), (&k.ed, None)])];
    let (compiled, _) = Compiled::new(rules);
    let tokens = [
        rs256(json!({})),
        sign(&k.es256, Algorithm::ES256, None, &claims(json!({}))),
        sign(&k.ed, Algorithm::EdDSA, None, &claims(json!({}))),
    ];
    for token in &tokens {
        assert!(matches!(compiled.authenticate(&mut bearer(token), NOW), Outcome::Authenticated(_)));
        let mut mangled: Vec<String> = (0..token.len()).map(|i| token[..i].to_owned()).collect();
        for (i, c) in token.char_indices().step_by(3) {
            for sub in ['.', 'A', '_', '-', '=', '%', 'z'] {
                if sub != c {
                    mangled.push(format!("{}{sub}{}", &token[..i], &token[i + 1..]));
                }
            }
        }
        for m in mangled {
            let got = compiled.authenticate(&mut req("/", &[("authorization", &format!("Bearer {m}"))]), NOW);
            assert!(!matches!(got, Outcome::Authenticated(_)), "mangled token accepted: {m}");
        }
    }
}

const RSA_1: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEowIBAAKCAQEAkdJgqPEIqOrlY3I72mD0HtS6AcMMLRDeg6hlbcms5OJecg1y\n\
ZEjxePrSv2wbSWcTz2rZ6YGYlglSUjoNfNUWnMpEd2DyNg8aYb2QqMkUYzGs9ceB\n\
CIMAbPvyLk/bGZDxCnXZ0dSQ/qp7TZ2WVH4TZpEgmRqyW6S0mUrCNDfQ0QmdO9iA\n\
rF9AfEdHW83GMa8qtIJ65+L/K6Hnw581r94gPHeGDrdxVU5F2jpKpjcWRfSCMaxD\n\
5gMlKnd6oqGPvMj3sY8KzQZW03OnlelsiL6LhTOj5TkbfLOTt7qtINk3vlHzv8GW\n\
YBtmSFbEO01ujSawDZjyNyNIGpsahPpJbdDncQIDAQABAoIBABvNiFd9yYBndQAe\n\
hjHvfWwpdCOk3Dv1dO+WWmxx4PCtBoPpc2+ShtPhwu/zfUpkCF9qSI0ghAbLVTJP\n\
VkYAXPTdDevTBKtw+r87BQthd20oSgl8leoZDCo7aWQSHrzDqWmsqbC7vj+IIsVc\n\
MA8BENLkBdqbP/mAMFzv55JMOBi62kfHFzKRBBaLq01dAcHf1SDfpIvy5BTvKsAo\n\
dR55fPdbLRHg2wS5YpdodPPEiafFQx2grggB9vBnb91nF1TJqunSw5GVrBb+croB\n\
LSS/7UI4Upx0G+YQ7/zeOz/OTvwn0A+vqpi3R1q/qCRGjIsyDFyxAYrToyqX8wGl\n\
f1gSXc8CgYEAysq6aBj4bPuEl4neyTARYx/aDtDBpUhaH/voA5EizHqi5rauO3dV\n\
3nDG334ViTbj2BgdeyDv/Py47w8KBYbidYGTDSrOtxbeqTBMBvARGJzgLVamK7L4\n\
3Nx0XWia5wr2LiRdO+XdtW1ipDG9eszVk9J770WWEhX0lSe+RbIBWw8CgYEAuBUK\n\
KYveQRF1Iox2+yT3J938pcAMyppJ/T7bDaIn89QFOvHDuCent9weIeuHlGhR7eey\n\
F0tJp4qIwAcKCf4ngCjMxQJ450Zw1tjWe12hqH/elgpVbSWMAICdEBMs6l3uJlaR\n\
+7cu6GLBAup6o4SFxZr5+SoNVtWO0KSiAtyLlX8CgYAnL7WFmA2pQZEFl2atidRS\n\
Sz1fz4cb4TdJJuxWhB0tViVUX8ibRRwat8A2P675rNmqUD6iJGM7h7pUt5tAJihs\n\
fHVl/fej+Y9dMi/+xzUGhIntOOkzWIouY4s44ZXNP5kCoZRCltCY1mJRSCtNJ3e9\n\
8NZyDghJxmRUzjE+Vn9ckQKBgQCyJDpHZoHZOkm++2wRMv6z6BGdXbODRbigiPl3\n\
whsjzWSaXGjpiAa42R2X+dSk/Cd9MaGZBVTr/BbGrok6jmgvkExJw1C5j+OXJxS5\n\
Ii1VYRlI3gs5qwJHYi+c5NGspOXY2CJCFE4iuZ7LcZrpL1A9oPKT++wYwmaI5ymZ\n\
11CFhQKBgHHocjR5Nz8ZbHQouxE02H5IkpFsxC3qS4QPzVxJIpVXIPeAgP4IClGs\n\
WtlZrALLy57DMhhcFgM/+3OSovcoVEYBt7a6ZS5Slf3bJIwaBZZL9eLGuWgPkR8Z\n\
O/+JA28xoRp2iE4DHnFaGxatxr1R6kq3Yv6b3rt6HvfDzTwF5cLS\n\
-----END RSA PRIVATE KEY-----\n\
";
const RSA_2: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEogIBAAKCAQEAst2Mvn82fBQvn5aznN6gemQonsm8lIPh88zLrCfBR845O4tF\n\
NQi8MD87md+jFzLX5RjusrmK4P/U6zFaHQ4oPVZTDmadtxWKQvFDpsl4zCZPNkqB\n\
/OXOMRRvbcO5HRVbbOjwOUtTo9jSQXuU6sxVmpowalhX8AGBNGbas2EbB0qJIz9d\n\
wA39cLc7uXm7+u5p4UVC95jeOp4Pzie40V0pvC7Zm1QzVnj5ADARQWFaKg+uMnMx\n\
tLyrLb1dFot6+PQaBKPZWMjF0vVO+h+z/H8xTk++GCmZZuGTC2d1rGaRFEt3M4lT\n\
kW7IOwzQndPqSAlrBpEAbKQ1h0ZU0/nptprG4QIDAQABAoIBAAgXPnkVfwzwytCw\n\
u/IyHdc7dZztKjMbnhptnp7sc3FAklUvsRM7kGusSJFmzNVNTvfFf3KlMvOHjwWO\n\
h3F+BPL1Vy91E9hGyKjLihBe17CAYR/nEeczK/cLYhj4fASlRSvxg4BL+H4WXjhp\n\
Eyzlzk9+fwcodN3d647HwkfP8i2LrYiioieCalr7R5NJRBiLXZ0a+SjGQChsIGrl\n\
UKigLTryr/Hi5BcIzOHPBZPmF0AZRNZGC7Lsn0y+wE78FrAhpCA21BUEBktXoh64\n\
QyL2YY4SknnV8Wd3jMvZmR81DrEmlSLRyUope+HdcKd2yl1GveNow5h/WWAx9BGf\n\
imQsltMCgYEA9jR0crtjY9kkngKk3J0GdZghuwOtgVd4V8j5ypD+cbNBrZnoLCSj\n\
IKZ9byBEGki1LmAaujHSOYnZrwRjK+do0Gm7yCiFP+fHFOUt9606k+RmYHGtznXx\n\
GeFwLUIyKnogJyHwLG0pHdzlGzGTqAabKYLaS2TdRHJE2nzlSeJyJbcCgYEAuftB\n\
rLNbYXhX+dl5QoTbB83yEeJEfLzH825A7JKYKFQ8PUUui5VpkBrW6Y1NgluAVBQ+\n\
piVSe4oQlH1KO0YxPXEHNz3P8/1oY+8AV46QmyEaaVD0q1fK18ZSN6K1bJYAHEOa\n\
yMKJn4sTPagOiHTjpD+nE5EWLv6ynOAo9bDBOCcCgYBpzu9Ao4G6VoajFZXObflp\n\
rkDIw3LchD/m0itvv9JqANS4C824suIcVRDRIjfCZ/7deFXkMSccrT6NNcB9DM2B\n\
y/70rV1esnhfZYLUz3C+QEkzJ4e/k/ZS3gy8lpdCpAuPZcl2/k7OU7Fud2byriwe\n\
seqovidNlCI9F7Heh9/wjwKBgFHFfk+/oGsPrabGDsHHhkI9M7TXRoONwWBv1o3t\n\
uobo2n+Z/mgS7pIUqu+PWEf7kUXmjNEiUczNnJKdL9k1+IpqOuD4BYninlZqDD1z\n\
CnOar3Ekzh7T//S1VwrtOFWg8jV7KAAjQL1sOa5/SLyIoFpkPkKlJRrOk5vUF05H\n\
Q/07AoGAH4YL54EAzY45hVPd3CNFrnryn8lqJne11J/jUg6nDJluNcIh1SDkyBY1\n\
ojeaacPkv0pCT6f3Yk7EdU4hxivg3jbba4BhUFRfa7T6xKHXCKSqv7RJfzGt2QyL\n\
qRokEnKopHUbnwHVis3vU9rxbjTmYN0QCr74AW3IZln47vzgseY=\n\
-----END RSA PRIVATE KEY-----\n\
";
