//! The evaluator from the YAML users write: each case's policies go through the
//! control plane's parser and conversion (`mesh_rules`) and the agent's `convert`, then
//! one connection (and request, if any) is judged. Istio's documented semantics for
//! HTTP attributes, request authentication, not-forms and normalization bypasses.
use super::*;
use crate::controlplane::authorization::{self as cp, PolicySpec};

/// `ACTION:` then the spec's YAML (flow style).
fn policy(name: &str, yaml: &str) -> Arc<Policy> {
    let spec: PolicySpec = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{name}: {e}"));
    let served = cp::convert("ns", name, &spec).expect("not AUDIT");
    Arc::new(convert(&format!("ns/{name}"), &served).unwrap_or_else(|e| panic!("{name}: {e}")))
}

const SLEEP: &str = "spiffe://td/ns/default/sa/sleep";

struct Req {
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    auth: Option<RequestAuth>,
    sni: Option<&'static str>,
}

fn get(path: &'static str) -> Req {
    Req { method: "GET", host: "echo.ns.svc:8080", path, headers: vec![], auth: None, sni: None }
}

fn with_method(mut r: Req, m: &'static str) -> Req {
    r.method = m;
    r
}

fn with_host(mut r: Req, h: &'static str) -> Req {
    r.host = h;
    r
}

fn with_header(mut r: Req, k: &'static str, v: &'static str) -> Req {
    r.headers.push((k, v));
    r
}

fn with_sni(mut r: Req, s: &'static str) -> Req {
    r.sni = Some(s);
    r
}

fn token(iss: &str, sub: &str, claims: serde_json::Value) -> RequestAuth {
    let aud = claims.get("aud").map(|a| match a {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(v) => v.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        _ => vec![],
    });
    RequestAuth {
        principal: format!("{iss}/{sub}"),
        audiences: aud.unwrap_or_default(),
        presenter: claims.get("azp").and_then(|v| v.as_str()).map(str::to_string),
        claims,
    }
}

fn with_token(mut r: Req, a: RequestAuth) -> Req {
    r.auth = Some(a);
    r
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    Allow,
    Deny,
    /// Without a request: must be served as HTTP.
    Pending,
}

fn judge(policies: &[Arc<Policy>], caller: Option<&str>, port: u16, req: Option<&Req>) -> Want {
    let attrs = Attrs {
        src_ip: "10.0.0.9".parse().unwrap(),
        identity: caller.map(|c| c.parse().unwrap()),
        dst_ip: "10.0.0.100".parse().unwrap(),
        dst_port: port,
    };
    let decision = match req {
        None => decide(policies, &attrs, None),
        Some(r) => {
            let mut headers = ::http::HeaderMap::new();
            for (k, v) in &r.headers {
                headers.append(::http::HeaderName::from_static(k), v.parse().unwrap());
            }
            let Ok(path) = http::normalize(r.path, http::Normalization::default()) else { return Want::Deny };
            let matched = path.match_path();
            let request = Request {
                method: r.method,
                host: r.host,
                path: &matched,
                headers: &headers,
                auth: r.auth.as_ref(),
                sni: r.sni,
            };
            decide(policies, &attrs, Some(&request))
        }
    };
    match decision {
        d if d.is_allowed() => Want::Allow,
        Decision::Pending(_) => Want::Pending,
        _ => Want::Deny,
    }
}

type Case = (&'static str, Vec<(&'static str, &'static str)>, Option<&'static str>, u16, Option<Req>, Want);

fn run(cases: Vec<Case>) {
    let mut failed = Vec::new();
    let n = cases.len();
    for (what, specs, caller, port, req, want) in cases {
        let policies: Vec<Arc<Policy>> = specs.iter().map(|(name, y)| policy(name, y)).collect();
        let got = judge(&policies, caller, port, req.as_ref());
        if got != want {
            failed.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failed.is_empty(), "{} of {n} cases failed:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn operations_methods_paths_hosts() {
    use Want::*;
    let allow_get = ("a", "{action: ALLOW, rules: [{to: [{operation: {methods: [GET]}}]}]}");
    let deny_admin = ("d", "{action: DENY, rules: [{to: [{operation: {paths: [/admin, /admin/*]}}]}]}");
    let allow_api = ("a", "{rules: [{to: [{operation: {paths: [/api/*], methods: [GET, HEAD]}}]}]}");
    let cases: Vec<Case> = vec![
        ("ALLOW methods: GET passes", vec![allow_get], None, 80, Some(get("/")), Allow),
        ("ALLOW methods: POST is not allowed", vec![allow_get], None, 80, Some(with_method(get("/"), "POST")), Deny),
        ("ALLOW methods: method names are case-sensitive", vec![allow_get], None, 80, Some(with_method(get("/"), "get")), Deny),
        ("ALLOW methods: no request yet is pending", vec![allow_get], None, 80, None, Pending),
        (
            "notMethods excludes",
            vec![("a", "{rules: [{to: [{operation: {notMethods: [DELETE]}}]}]}")],
            None,
            80,
            Some(with_method(get("/"), "DELETE")),
            Deny,
        ),
        ("notMethods lets the rest in", vec![("a", "{rules: [{to: [{operation: {notMethods: [DELETE]}}]}]}")], None, 80, Some(get("/")), Allow),
        ("paths prefix and methods together", vec![allow_api], None, 80, Some(get("/api/v1/items")), Allow),
        ("paths prefix: outside it", vec![allow_api], None, 80, Some(get("/apix")), Deny),
        ("paths and methods: both must match", vec![allow_api], None, 80, Some(with_method(get("/api/x"), "POST")), Deny),
        ("paths: HEAD is listed", vec![allow_api], None, 80, Some(with_method(get("/api/x"), "HEAD")), Allow),
        ("paths: query is not part of the path", vec![allow_api], None, 80, Some(get("/api/x?admin=1")), Allow),
        ("DENY exact path", vec![deny_admin], None, 80, Some(get("/admin")), Deny),
        ("DENY prefix path", vec![deny_admin], None, 80, Some(get("/admin/users")), Deny),
        ("DENY: other paths pass", vec![deny_admin], None, 80, Some(get("/public")), Allow),
        ("DENY with L7 at connection time is pending", vec![deny_admin], None, 80, None, Pending),
        ("bypass: double slash", vec![deny_admin], None, 80, Some(get("//admin")), Deny),
        ("bypass: dot segment", vec![deny_admin], None, 80, Some(get("/./admin")), Deny),
        ("bypass: parent segment", vec![deny_admin], None, 80, Some(get("/public/../admin")), Deny),
        ("bypass: encoded slash %2F", vec![deny_admin], None, 80, Some(get("/public%2F..%2Fadmin")), Deny),
        ("bypass: encoded slash %2f", vec![deny_admin], None, 80, Some(get("/public%2f..%2fadmin")), Deny),
        ("bypass: encoded letters", vec![deny_admin], None, 80, Some(get("/%61dmin")), Deny),
        ("bypass: path parameter", vec![deny_admin], None, 80, Some(get("/admin;jsessionid=1")), Deny),
        ("bypass: backslash", vec![deny_admin], None, 80, Some(get("/public/..%5Cadmin")), Deny),
        ("bypass: encoded dots", vec![deny_admin], None, 80, Some(get("/x/%2e%2e/admin")), Deny),
        ("bypass: trailing slash", vec![deny_admin], None, 80, Some(get("/admin/")), Deny),
        ("bypass: fragment", vec![deny_admin], None, 80, Some(get("/admin#frag")), Deny),
        ("bad path: encoded NUL is refused", vec![], None, 80, Some(get("/admin%00")), Deny),
        ("paths are case-sensitive (Istio)", vec![deny_admin], None, 80, Some(get("/ADMIN")), Allow),
        (
            "ALLOW prefix cannot be escaped with ..",
            vec![("a", "{rules: [{to: [{operation: {paths: [/public/*]}}]}]}")],
            None,
            80,
            Some(get("/public/../admin")),
            Deny,
        ),
        (
            "ALLOW prefix cannot be escaped with ..;",
            vec![("a", "{rules: [{to: [{operation: {paths: [/public/*]}}]}]}")],
            None,
            80,
            Some(get("/public/..;/admin")),
            Deny,
        ),
        (
            "paths suffix",
            vec![("a", "{rules: [{to: [{operation: {paths: ['*.png']}}]}]}")],
            None,
            80,
            Some(get("/img/logo.png")),
            Allow,
        ),
        (
            "paths presence matches any path",
            vec![("a", "{rules: [{to: [{operation: {paths: ['*']}}]}]}")],
            None,
            80,
            Some(get("/anything")),
            Allow,
        ),
        (
            "path template {*}: one segment",
            vec![("a", "{rules: [{to: [{operation: {paths: ['/users/{*}/profile']}}]}]}")],
            None,
            80,
            Some(get("/users/42/profile")),
            Allow,
        ),
        (
            "path template {*}: not two segments",
            vec![("a", "{rules: [{to: [{operation: {paths: ['/users/{*}/profile']}}]}]}")],
            None,
            80,
            Some(get("/users/4/2/profile")),
            Deny,
        ),
        (
            "path template {**}: several segments",
            vec![("a", "{rules: [{to: [{operation: {paths: ['/files/{**}']}}]}]}")],
            None,
            80,
            Some(get("/files/a/b/c.txt")),
            Allow,
        ),
        ("notPaths", vec![("a", "{rules: [{to: [{operation: {notPaths: [/admin]}}]}]}")], None, 80, Some(get("/admin")), Deny),
        ("notPaths: others pass", vec![("a", "{rules: [{to: [{operation: {notPaths: [/admin]}}]}]}")], None, 80, Some(get("/x")), Allow),
        (
            "hosts: case-insensitive, any port",
            vec![("a", "{rules: [{to: [{operation: {hosts: [Echo.NS.svc]}}]}]}")],
            None,
            80,
            Some(get("/")),
            Allow,
        ),
        (
            "hosts: other host denied",
            vec![("a", "{rules: [{to: [{operation: {hosts: [echo.ns.svc]}}]}]}")],
            None,
            80,
            Some(with_host(get("/"), "evil.example")),
            Deny,
        ),
        (
            "hosts: suffix wildcard",
            vec![("a", "{rules: [{to: [{operation: {hosts: ['*.ns.svc']}}]}]}")],
            None,
            80,
            Some(get("/")),
            Allow,
        ),
        (
            "notHosts",
            vec![("a", "{rules: [{to: [{operation: {notHosts: [echo.ns.svc]}}]}]}")],
            None,
            80,
            Some(get("/")),
            Deny,
        ),
        (
            "operation ports and paths: port decided at connection time",
            vec![("a", "{rules: [{to: [{operation: {ports: ['9090'], paths: [/x]}}]}]}")],
            None,
            80,
            None,
            Deny,
        ),
        (
            "operation ports and paths: right port is pending",
            vec![("a", "{rules: [{to: [{operation: {ports: ['9090'], paths: [/x]}}]}]}")],
            None,
            9090,
            None,
            Pending,
        ),
        (
            "two to entries are ORed",
            vec![("a", "{rules: [{to: [{operation: {paths: [/a]}}, {operation: {paths: [/b]}}]}]}")],
            None,
            80,
            Some(get("/b")),
            Allow,
        ),
        (
            "an L4 ALLOW rule decides without a request",
            vec![("a", "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}, {to: [{operation: {paths: [/x]}}]}]}")],
            None,
            80,
            None,
            Allow,
        ),
        (
            "DENY L7 plus ALLOW that fails at L4: denied without waiting",
            vec![deny_admin, ("a", "{rules: [{from: [{source: {principals: [td/ns/x/sa/y]}}]}]}")],
            Some(SLEEP),
            80,
            None,
            Deny,
        ),
        (
            "DENY L7 on another port: no need to wait",
            vec![("d", "{action: DENY, rules: [{to: [{operation: {ports: ['9090'], paths: [/admin]}}]}]}")],
            None,
            80,
            None,
            Allow,
        ),
    ];
    run(cases);
}

#[test]
fn conditions_and_request_authentication() {
    use Want::*;
    let jwt = |iss: &str, sub: &str, c: serde_json::Value| token(iss, sub, c);
    let require_jwt = ("a", "{rules: [{from: [{source: {requestPrincipals: ['*']}}]}]}");
    let admins = ("a", "{rules: [{when: [{key: 'request.auth.claims[groups]', values: [admins]}]}]}");
    let cases: Vec<Case> = vec![
        ("requestPrincipals *: no token is denied", vec![require_jwt], None, 80, Some(get("/")), Deny),
        ("requestPrincipals *: a token passes", vec![require_jwt], None, 80, Some(with_token(get("/"), jwt("iss", "u", serde_json::json!({})))), Allow),
        ("requestPrincipals *: pending at connection", vec![require_jwt], None, 80, None, Pending),
        (
            "requestPrincipals exact",
            vec![("a", "{rules: [{from: [{source: {requestPrincipals: [https://idp/alice]}}]}]}")],
            None,
            80,
            Some(with_token(get("/"), jwt("https://idp", "alice", serde_json::json!({})))),
            Allow,
        ),
        (
            "requestPrincipals exact: other subject",
            vec![("a", "{rules: [{from: [{source: {requestPrincipals: [https://idp/alice]}}]}]}")],
            None,
            80,
            Some(with_token(get("/"), jwt("https://idp", "bob", serde_json::json!({})))),
            Deny,
        ),
        (
            "requestPrincipals prefix by issuer",
            vec![("a", "{rules: [{from: [{source: {requestPrincipals: ['https://idp/*']}}]}]}")],
            None,
            80,
            Some(with_token(get("/"), jwt("https://idp", "bob", serde_json::json!({})))),
            Allow,
        ),
        (
            "notRequestPrincipals in ALLOW: no token does not pass",
            vec![("a", "{rules: [{from: [{source: {notRequestPrincipals: [https://idp/bob]}}]}]}")],
            None,
            80,
            Some(get("/")),
            Deny,
        ),
        (
            "notRequestPrincipals in ALLOW: another token passes",
            vec![("a", "{rules: [{from: [{source: {notRequestPrincipals: [https://idp/bob]}}]}]}")],
            None,
            80,
            Some(with_token(get("/"), jwt("https://idp", "alice", serde_json::json!({})))),
            Allow,
        ),
        (
            "notRequestPrincipals * in DENY: no token is denied (Istio's require-JWT)",
            vec![("d", "{action: DENY, rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]}")],
            None,
            80,
            Some(get("/")),
            Deny,
        ),
        (
            "notRequestPrincipals * in DENY: a token passes",
            vec![("d", "{action: DENY, rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]}")],
            None,
            80,
            Some(with_token(get("/"), jwt("i", "s", serde_json::json!({})))),
            Allow,
        ),
        ("claims: list claim contains the value", vec![admins], None, 80, Some(with_token(get("/"), jwt("i", "s", serde_json::json!({"groups": ["dev", "admins"]})))), Allow),
        ("claims: list claim without it", vec![admins], None, 80, Some(with_token(get("/"), jwt("i", "s", serde_json::json!({"groups": ["dev"]})))), Deny),
        ("claims: string claim", vec![admins], None, 80, Some(with_token(get("/"), jwt("i", "s", serde_json::json!({"groups": "admins"})))), Allow),
        ("claims: absent token", vec![admins], None, 80, Some(get("/")), Deny),
        (
            "claims: nested",
            vec![("a", "{rules: [{when: [{key: 'request.auth.claims[realm][role]', values: [ops]}]}]}")],
            None,
            80,
            Some(with_token(get("/"), jwt("i", "s", serde_json::json!({"realm": {"role": "ops"}})))),
            Allow,
        ),
        (
            "claims: nested, wrong value",
            vec![("a", "{rules: [{when: [{key: 'request.auth.claims[realm][role]', values: [ops]}]}]}")],
            None,
            80,
            Some(with_token(get("/"), jwt("i", "s", serde_json::json!({"realm": {"role": "dev"}})))),
            Deny,
        ),
        (
            "claims: number claim as text",
            vec![("a", "{rules: [{when: [{key: 'request.auth.claims[level]', values: ['3']}]}]}")],
            None,
            80,
            Some(with_token(get("/"), jwt("i", "s", serde_json::json!({"level": 3})))),
            Allow,
        ),
        (
            "audiences: any of them",
            vec![("a", "{rules: [{when: [{key: request.auth.audiences, values: [api]}]}]}")],
            None,
            80,
            Some(with_token(get("/"), jwt("i", "s", serde_json::json!({"aud": ["web", "api"]})))),
            Allow,
        ),
        (
            "presenter",
            vec![("a", "{rules: [{when: [{key: request.auth.presenter, values: [cli]}]}]}")],
            None,
            80,
            Some(with_token(get("/"), jwt("i", "s", serde_json::json!({"azp": "cli"})))),
            Allow,
        ),
        (
            "request.auth.principal",
            vec![("a", "{rules: [{when: [{key: request.auth.principal, values: [i/s]}]}]}")],
            None,
            80,
            Some(with_token(get("/"), jwt("i", "s", serde_json::json!({})))),
            Allow,
        ),
        (
            "notValues on a claim, ALLOW, no token: not admitted",
            vec![("a", "{rules: [{when: [{key: 'request.auth.claims[groups]', notValues: [banned]}]}]}")],
            None,
            80,
            Some(get("/")),
            Deny,
        ),
        (
            "notValues on a claim, DENY, no token: denied",
            vec![("d", "{action: DENY, rules: [{when: [{key: 'request.auth.claims[groups]', notValues: [admins]}]}]}")],
            None,
            80,
            Some(get("/")),
            Deny,
        ),
        (
            "header exact",
            vec![("a", "{rules: [{when: [{key: 'request.headers[x-tenant]', values: [blue]}]}]}")],
            None,
            80,
            Some(with_header(get("/"), "x-tenant", "blue")),
            Allow,
        ),
        (
            "header names are case-insensitive",
            vec![("a", "{rules: [{when: [{key: 'request.headers[X-Tenant]', values: [blue]}]}]}")],
            None,
            80,
            Some(with_header(get("/"), "x-tenant", "blue")),
            Allow,
        ),
        (
            "header prefix",
            vec![("a", "{rules: [{when: [{key: 'request.headers[user-agent]', values: ['curl/*']}]}]}")],
            None,
            80,
            Some(with_header(get("/"), "user-agent", "curl/8.0")),
            Allow,
        ),
        (
            "header absent",
            vec![("a", "{rules: [{when: [{key: 'request.headers[x-tenant]', values: [blue]}]}]}")],
            None,
            80,
            Some(get("/")),
            Deny,
        ),
        (
            "header presence",
            vec![("a", "{rules: [{when: [{key: 'request.headers[x-tenant]', values: ['*']}]}]}")],
            None,
            80,
            Some(with_header(get("/"), "x-tenant", "green")),
            Allow,
        ),
        (
            "header repeated: values joined with a comma",
            vec![("d", "{action: DENY, rules: [{when: [{key: 'request.headers[x-role]', values: ['*admin*']}]}]}")],
            None,
            80,
            Some(with_header(with_header(get("/"), "x-role", "user"), "x-role", "admin")),
            Allow,
        ),
        (
            "header notValues: absent header passes (not an identity)",
            vec![("a", "{rules: [{when: [{key: 'request.headers[x-debug]', notValues: ['*']}]}]}")],
            None,
            80,
            Some(get("/")),
            Allow,
        ),
        (
            "connection.sni",
            vec![("a", "{rules: [{when: [{key: connection.sni, values: ['*.ns.svc']}]}]}")],
            Some(SLEEP),
            80,
            Some(with_sni(get("/"), "echo.ns.svc")),
            Allow,
        ),
        (
            "connection.sni absent (plaintext)",
            vec![("a", "{rules: [{when: [{key: connection.sni, values: ['*.ns.svc']}]}]}")],
            None,
            80,
            Some(get("/")),
            Deny,
        ),
        (
            "remote.ip is the source address: decided at connection time",
            vec![("a", "{rules: [{when: [{key: remote.ip, values: [10.0.0.0/8]}]}]}")],
            None,
            80,
            None,
            Allow,
        ),
        (
            "remoteIpBlocks outside",
            vec![("a", "{rules: [{from: [{source: {remoteIpBlocks: [192.168.0.0/16]}}]}]}")],
            None,
            80,
            None,
            Deny,
        ),
        (
            "notRemoteIpBlocks",
            vec![("d", "{action: DENY, rules: [{from: [{source: {notRemoteIpBlocks: [192.168.0.0/16]}}]}]}")],
            None,
            80,
            None,
            Deny,
        ),
        (
            "identity and path together (HBONE caller)",
            vec![("a", "{rules: [{from: [{source: {principals: [td/ns/default/sa/sleep]}}], to: [{operation: {paths: [/api/*]}}]}]}")],
            Some(SLEEP),
            80,
            Some(get("/api/x")),
            Allow,
        ),
        (
            "identity and path together: plaintext denied at connection time",
            vec![("a", "{rules: [{from: [{source: {principals: [td/ns/default/sa/sleep]}}], to: [{operation: {paths: [/api/*]}}]}]}")],
            None,
            80,
            None,
            Deny,
        ),
    ];
    run(cases);
}

#[test]
fn not_forms_and_plaintext() {
    use Want::*;
    let not_bad = ("a", "{rules: [{from: [{source: {notPrincipals: [td/ns/default/sa/bad]}}]}]}");
    let not_ns = ("a", "{rules: [{from: [{source: {notNamespaces: [evil]}}]}]}");
    let deny_not_ns = ("d", "{action: DENY, rules: [{from: [{source: {notNamespaces: [default]}}]}]}");
    let cases: Vec<Case> = vec![
        ("ALLOW notPrincipals: plaintext is not let in", vec![not_bad], None, 80, None, Deny),
        ("ALLOW notPrincipals: another identity passes", vec![not_bad], Some(SLEEP), 80, None, Allow),
        ("ALLOW notPrincipals: the excluded identity is denied", vec![not_bad], Some("spiffe://td/ns/default/sa/bad"), 80, None, Deny),
        ("ALLOW notNamespaces: plaintext is not let in", vec![not_ns], None, 80, None, Deny),
        ("ALLOW notNamespaces: other namespace passes", vec![not_ns], Some(SLEEP), 80, None, Allow),
        ("DENY notNamespaces: plaintext is denied", vec![deny_not_ns], None, 80, None, Deny),
        ("DENY notNamespaces: the named namespace passes", vec![deny_not_ns], Some(SLEEP), 80, None, Allow),
        (
            "an ALLOW naming no identity admits plaintext explicitly",
            vec![not_bad, ("p", "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]}")],
            None,
            80,
            None,
            Allow,
        ),
        (
            "ALLOW notIpBlocks is not an identity: plaintext passes",
            vec![("a", "{rules: [{from: [{source: {notIpBlocks: [192.168.0.0/16]}}]}]}")],
            None,
            80,
            None,
            Allow,
        ),
        (
            "when source.principal notValues in ALLOW: plaintext not let in",
            vec![("a", "{rules: [{when: [{key: source.principal, notValues: [td/ns/default/sa/bad]}]}]}")],
            None,
            80,
            None,
            Deny,
        ),
    ];
    run(cases);
}

#[test]
fn kernel_form_of_http_rules_never_drops_what_the_agent_may_allow() {
    // An ALLOW whose only rule needs HTTP: the kernel must let every source in (the
    // agent decides per request); a DENY on HTTP attributes drops nothing.
    let allow = policy("a", "{rules: [{to: [{operation: {paths: [/x]}}]}]}");
    let deny = policy("d", "{action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}");
    for p in [allow, deny] {
        let l4 = to_l4(&p, &[]).unwrap();
        let compiled = compile(&[l4]).unwrap();
        for src in ["10.0.0.9", "192.168.1.1", "fd00::1"] {
            for port in [80u16, 8080, HBONE_PORT] {
                assert_eq!(lookup(&compiled, ip(src), port), Some(L4::Allow), "{}: {src}:{port}", p.key());
            }
        }
    }
    // An ALLOW by notPrincipals: plaintext on application ports is dropped, HBONE is not.
    let not_bad = policy("n", "{rules: [{from: [{source: {notPrincipals: [td/ns/default/sa/bad]}}]}]}");
    let compiled = compile(&[to_l4(&not_bad, &[]).unwrap()]).unwrap();
    assert_ne!(lookup(&compiled, ip("10.0.0.9"), 8080), Some(L4::Allow));
    assert_eq!(lookup(&compiled, ip("10.0.0.9"), HBONE_PORT), Some(L4::Allow));
}

#[test]
fn written_rules_are_validated_by_the_agent_too() {
    use crate::proto::mesh_security as mesh;
    let mut a = cp::convert("ns", "p", &serde_yaml::from_str("{rules: [{to: [{operation: {paths: [/x]}}]}]}").unwrap()).unwrap();
    let m = &mut a.mesh_rules.as_mut().unwrap().groups[0].clauses[0].matches[0];
    m.paths = vec!["/a/{**}/b/{**}".into()];
    assert!(convert("ns/p", &a).unwrap_err().to_string().contains("path"));
    let m = &mut a.mesh_rules.as_mut().unwrap().groups[0].clauses[0].matches[0];
    *m = mesh::HttpMatch { source_ips: vec!["10.0.0.300/8".into()], ..Default::default() };
    assert!(convert("ns/p", &a).unwrap_err().to_string().contains("10.0.0.300"));
    let m = &mut a.mesh_rules.as_mut().unwrap().groups[0].clauses[0].matches[0];
    *m = mesh::HttpMatch {
        conditions: vec![mesh::Condition { key: "experimental.envoy.filters.x".into(), values: vec!["1".into()], not_values: vec![] }],
        ..Default::default()
    };
    assert!(convert("ns/p", &a).unwrap_err().to_string().contains("experimental"));
    // Without our extension (istiod, or an older control plane), the L4 form is used:
    // the ALLOW rule needing HTTP was dropped, so the policy allows nothing.
    a.mesh_rules = None;
    let p = Arc::new(convert("ns/p", &a).unwrap());
    assert_eq!(judge(&[p], None, 80, Some(&get("/x"))), Want::Deny);
}
