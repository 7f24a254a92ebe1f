//! Table tests of the networking kinds' validation (each invalid case names the field
//! path and why), the folder's handling of them, and (in `convert`) their served forms.
use super::*;

mod convert;
mod folder;

/// Reads `spec` (flow YAML) as `kind` in namespace `shop` and checks it; serde errors
/// come back as `<path>: <why>` too.
fn validate(kind: &str, spec: &str) -> Result<(), String> {
    fn read<S: serde::de::DeserializeOwned + SpecCheck + Default>(text: &str) -> Result<(), String> {
        let o: Object<S> = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
        o.validate()
    }
    let text = format!("metadata: {{name: n, namespace: shop}}\nspec: {spec}\n");
    match kind {
        "VirtualService" => read::<virtual_service::Spec>(&text),
        "DestinationRule" => read::<destination_rule::Spec>(&text),
        "Gateway" => read::<gateway::Spec>(&text),
        "ServiceEntry" => read::<service_entry::Spec>(&text),
        "Sidecar" => read::<sidecar::Spec>(&text),
        "WorkloadEntry" => read::<service_entry::WorkloadEntrySpec>(&text),
        _ => panic!("unknown kind {kind}"),
    }
}

fn run<S: AsRef<str>>(kind: &str, cases: &[(S, Result<(), &str>)]) -> usize {
    for (spec, want) in cases {
        let spec = spec.as_ref();
        match (validate(kind, spec), want) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(w)) => assert!(e.contains(w), "{kind} {spec}:\n  got  {e}\n  want {w}"),
            (got, _) => panic!("{kind} {spec}: got {got:?}, want {want:?}"),
        }
    }
    cases.len()
}

const ROUTE: &str = "route: [{destination: {host: reviews}}]";

#[test]
fn virtual_service() {
    let r = |http: &str| format!("{{hosts: [reviews], http: [{{{http}}}]}}");
    let owned: Vec<(String, Result<(), &str>)> = vec![
        (r(ROUTE), Ok(())),
        (r("route: [{destination: {host: reviews, subset: v1}, weight: 75}, {destination: {host: reviews, subset: v2}, weight: 25}]"), Ok(())),
        (r("route: [{destination: {host: reviews}, weight: 0}]"), Ok(())),
        (r("redirect: {uri: /v2, redirectCode: 302}"), Ok(())),
        (r("directResponse: {status: 503, body: {string: down}}"), Ok(())),
        (r("directResponse: {status: 200, body: {bytes: aGVsbG8=}}"), Ok(())),
        (r(&format!("match: [{{headers: {{x-user: {{}}}}}}], {ROUTE}")), Ok(())),
        (r(&format!("match: [{{uri: {{regex: '^/v[0-9]+/.*'}}, method: {{exact: GET}}, queryParams: {{debug: {{exact: '1'}}}}}}], {ROUTE}")), Ok(())),
        (r(&format!("timeout: 1.5s, retries: {{attempts: 3, perTryTimeout: 100ms, retryOn: '5xx,connect-failure,503'}}, {ROUTE}")), Ok(())),
        (r(&format!("fault: {{delay: {{fixedDelay: 5s, percentage: {{value: 10}}}}, abort: {{httpStatus: 503, percentage: {{value: 0.5}}}}}}, {ROUTE}")), Ok(())),
        (r(&format!("fault: {{abort: {{grpcStatus: UNAVAILABLE}}}}, {ROUTE}")), Ok(())),
        (r(&format!("mirror: {{host: shadow}}, mirrorPercentage: {{value: 50}}, {ROUTE}")), Ok(())),
        (r(&format!("mirrors: [{{destination: {{host: shadow}}, percentage: {{value: 5}}}}], {ROUTE}")), Ok(())),
        (r(&format!("rewrite: {{uri: /}}, headers: {{request: {{set: {{x-a: b}}, remove: [x-c]}}, response: {{add: {{x-d: e}}}}}}, {ROUTE}")), Ok(())),
        (r(&format!("headers: {{request: {{set: {{host: other.example.com}}}}}}, {ROUTE}")), Ok(())),
        (r(&format!("headers: {{request: {{set: {{x-node: '%HOSTNAME%', x-pct: '100%%'}}}}}}, {ROUTE}")), Ok(())),
        (r(&format!("corsPolicy: {{allowOrigins: [{{exact: 'https://a.example'}}, {{regex: '.*\\.example'}}], allowMethods: [GET, POST], allowHeaders: ['*'], maxAge: 24h}}, {ROUTE}")), Ok(())),
        (r(&format!("rewrite: {{uriRegexRewrite: {{match: '^/old/(.*)', rewrite: '/new/\\1'}}}}, {ROUTE}")), Ok(())),
        // Conflicting or missing actions.
        (r(&format!("redirect: {{uri: /x}}, {ROUTE}")), Err("spec.http[0].route: HTTP route cannot contain both route and redirect")),
        (r(&format!("directResponse: {{status: 200}}, {ROUTE}")), Err("spec.http[0].route: HTTP route cannot contain both route and directResponse")),
        (r("redirect: {uri: /x}, directResponse: {status: 200}"), Err("spec.http[0].directResponse: HTTP route cannot contain both directResponse and redirect")),
        (r("redirect: {uri: /x}, fault: {abort: {httpStatus: 500}}"), Err("spec.http[0].fault: HTTP route cannot contain both fault and redirect")),
        (r("redirect: {uri: /x}, rewrite: {uri: /y}"), Err("spec.http[0].rewrite: HTTP route cannot contain both rewrite and redirect")),
        (r("directResponse: {status: 200}, rewrite: {uri: /y}"), Err("spec.http[0].rewrite: HTTP route cannot contain both rewrite and directResponse")),
        (r("name: empty"), Err("spec.http[0].route: HTTP route, redirect or directResponse is required")),
        // Redirect and direct response.
        (r("redirect: {redirectCode: 301}"), Err("spec.http[0].redirect: redirect must specify URI, authority, scheme, or port")),
        (r("redirect: {uri: /x, redirectCode: 200}"), Err("spec.http[0].redirect.redirectCode: 200 is not a valid redirect code, must be 3xx")),
        (r("redirect: {scheme: ftp}"), Err("spec.http[0].redirect.scheme: invalid redirect scheme")),
        (r("redirect: {port: 8443, derivePort: FROM_REQUEST_PORT}"), Err("spec.http[0].redirect: set port or derivePort, not both")),
        (r("redirect: {port: 70000}"), Err("spec.http[0].redirect.port: port number 70000 must be in the range 1..65535")),
        (r("redirect: {derivePort: FROM_NOWHERE}"), Err("spec.http[0].redirect.derivePort: unknown variant `FROM_NOWHERE`")),
        (r("directResponse: {status: 700}"), Err("spec.http[0].directResponse.status: HTTP status 700 is not in range 200-599")),
        (r("directResponse: {status: 200, body: {string: a, bytes: YQ==}}"), Err("spec.http[0].directResponse.body: set string or bytes, not both")),
        (r("directResponse: {status: 200, body: {bytes: '!!!'}}"), Err("spec.http[0].directResponse.body.bytes: not base64")),
        // Matches.
        (r(&format!("match: [{{uri: {{exact: /a, prefix: /b}}}}], {ROUTE}")), Err("spec.http[0].match[0].uri: set one of exact, prefix or regex, not several")),
        (r(&format!("match: [{{uri: {{}}}}], {ROUTE}")), Err("spec.http[0].match[0].uri: one of exact, prefix or regex is required")),
        (r(&format!("match: [{{uri: {{regex: 'a(b'}}}}], {ROUTE}")), Err("spec.http[0].match[0].uri.regex: \"a(b\" is not a valid regex")),
        (r(&format!("match: [{{authority: {{regex: ''}}}}], {ROUTE}")), Err("spec.http[0].match[0].authority.regex: regex string match should not be empty")),
        (r(&format!("match: [{{headers: {{'bad header': {{exact: x}}}}}}], {ROUTE}")), Err("spec.http[0].match[0].headers.bad header: \"bad header\" is not a valid header name")),
        (r(&format!("match: [{{withoutHeaders: {{x-a: {{regex: '*'}}}}}}], {ROUTE}")), Err("spec.http[0].match[0].withoutHeaders.x-a.regex: \"*\" is not a valid regex")),
        (r(&format!("match: [{{queryParams: {{q: {{exact: a, regex: b}}}}}}], {ROUTE}")), Err("spec.http[0].match[0].queryParams.q: set one of exact, prefix or regex")),
        (r(&format!("match: [{{port: 70000}}], {ROUTE}")), Err("spec.http[0].match[0].port: port number 70000 must be in the range 1..65535")),
        (r(&format!("match: [{{sourceNamespace: Bad_NS}}], {ROUTE}")), Err("spec.http[0].match[0].sourceNamespace: sourceNamespace match \"Bad_NS\" is invalid")),
        (r(&format!("match: [{{sourceLabels: {{'-bad': x}}}}], {ROUTE}")), Err("spec.http[0].match[0].sourceLabels.\"-bad\": invalid label key")),
        (r(&format!("match: [{{gateways: [Bad/gw]}}], {ROUTE}")), Err("spec.http[0].match[0].gateways[0]: invalid value for namespace: \"Bad\"")),
        (r(&format!("match: [{{headers: {{'@request.auth.claims.group': {{exact: admin}}}}}}], {ROUTE}")), Err("spec.http[0]: JWT claim based routing (key: @request.auth.claims.group) is only supported for gateways")),
        (r(&format!("match: [{{uri: {{prefix: /a}}, urii: {{}}}}], {ROUTE}")), Err("spec.http[0].match[0]: unknown field `urii`")),
        // Destinations and weights.
        (r("route: [{destination: {subset: v1}}]"), Err("spec.http[0].route[0].destination.host: required")),
        (r("route: [{destination: {host: '*'}}]"), Err("spec.http[0].route[0].destination.host: invalid destination host *")),
        (r("route: [{destination: {host: Reviews}}]"), Err("spec.http[0].route[0].destination.host: domain name \"Reviews\" invalid")),
        (r("route: [{destination: {host: reviews, subset: V1}}]"), Err("spec.http[0].route[0].destination.subset: subset name is invalid: \"V1\"")),
        (r("route: [{destination: {host: reviews, port: {number: 0}}}]"), Err("spec.http[0].route[0].destination.port.number: port number 0 must be in the range")),
        (r("route: [{destination: {host: reviews}, weight: -5}]"), Err("spec.http[0].route[0].weight: weight -5 < 0")),
        (r("route: [{destination: {host: reviews, subset: v1}}, {destination: {host: reviews, subset: v2}}]"), Err("spec.http[0].route: total destination weight = 0")),
        (r("route: [{weight: 100}]"), Err("spec.http[0].route[0].destination: required")),
        (r("route: [{destination: {host: reviews}, weight: 10, headers: {response: {set: {':status': '200'}}}}]"), Err("spec.http[0].route[0].headers.response.set.:status: invalid header")),
        // Timeouts, retries.
        (r(&format!("timeout: '10', {ROUTE}")), Err("spec.http[0].timeout: \"10\" is not a duration")),
        (r(&format!("timeout: 500us, {ROUTE}")), Err("spec.http[0].timeout: \"500us\": duration must be at least 1ms")),
        (r(&format!("timeout: 1.0005s, {ROUTE}")), Err("spec.http[0].timeout: \"1.0005s\": only durations to ms precision are supported")),
        (r(&format!("retries: {{attempts: -1}}, {ROUTE}")), Err("spec.http[0].retries.attempts: attempts cannot be negative")),
        (r(&format!("retries: {{attempts: 0, perTryTimeout: 1s}}, {ROUTE}")), Err("spec.http[0].retries.attempts: http retry policy configured when attempts are set to 0")),
        (r(&format!("retries: {{attempts: 2, retryOn: 'sometimes'}}, {ROUTE}")), Err("spec.http[0].retries.retryOn: \"sometimes\" is not a valid retryOn policy")),
        (r(&format!("retries: {{attempts: 2, perTryTimeout: 2x}}, {ROUTE}")), Err("spec.http[0].retries.perTryTimeout: \"2x\" is not a duration")),
        // Fault.
        (r(&format!("fault: {{}}, {ROUTE}")), Err("spec.http[0].fault: HTTP fault injection must have an abort and/or a delay")),
        (r(&format!("fault: {{abort: {{httpStatus: 503, percentage: {{value: 101}}}}}}, {ROUTE}")), Err("spec.http[0].fault.abort.percentage.value: percentage 101 is neither 0.0, nor in range [0.0001, 100.0]")),
        (r(&format!("fault: {{abort: {{httpStatus: 99}}}}, {ROUTE}")), Err("spec.http[0].fault.abort.httpStatus: HTTP status 99 is not in range 200-599")),
        (r(&format!("fault: {{abort: {{grpcStatus: NOPE}}}}, {ROUTE}")), Err("spec.http[0].fault.abort.grpcStatus: gRPC status \"NOPE\" is not supported")),
        (r(&format!("fault: {{abort: {{http2Error: x}}}}, {ROUTE}")), Err("spec.http[0].fault.abort.http2Error: HTTP/2 abort fault injection not supported yet")),
        (r(&format!("fault: {{abort: {{httpStatus: 500, grpcStatus: INTERNAL}}}}, {ROUTE}")), Err("spec.http[0].fault.abort: set one of httpStatus, grpcStatus or http2Error")),
        (r(&format!("fault: {{delay: {{fixedDelay: 1s, percent: 150}}}}, {ROUTE}")), Err("spec.http[0].fault.delay.percent: percentage 150 is not in range 0..100")),
        (r(&format!("fault: {{delay: {{exponentialDelay: 1s}}}}, {ROUTE}")), Err("spec.http[0].fault.delay.exponentialDelay: exponentialDelay not supported yet")),
        (r(&format!("fault: {{delay: {{percentage: {{value: 5}}}}}}, {ROUTE}")), Err("spec.http[0].fault.delay.fixedDelay: required")),
        (r(&format!("fault: {{delay: {{fixedDelay: 0s}}}}, {ROUTE}")), Err("spec.http[0].fault.delay.fixedDelay: \"0s\": duration must be at least 1ms")),
        // Mirrors.
        (r(&format!("mirror: {{host: shadow}}, mirrorPercentage: {{value: 150}}, {ROUTE}")), Err("spec.http[0].mirrorPercentage.value: percentage 150 is not in range 0..100")),
        (r(&format!("mirror: {{host: shadow}}, mirrorPercent: 101, {ROUTE}")), Err("spec.http[0].mirrorPercent: mirror_percent must have a max value of 100")),
        (r(&format!("mirror: {{host: a}}, mirrors: [{{destination: {{host: b}}}}], {ROUTE}")), Err("spec.http[0].mirrors: HTTP route cannot contain both mirror and mirrors")),
        (r(&format!("mirrors: [{{percentage: {{value: 5}}}}], {ROUTE}")), Err("spec.http[0].mirrors[0].destination: required")),
        (r(&format!("mirrors: [{{destination: {{host: b}}, percentage: {{value: -1}}}}], {ROUTE}")), Err("spec.http[0].mirrors[0].percentage.value: percentage -1 is not in range 0..100")),
        (r(&format!("mirror: {{host: ''}}, {ROUTE}")), Err("spec.http[0].mirror.host: required")),
        // Rewrite and headers.
        (r(&format!("rewrite: {{}}, {ROUTE}")), Err("spec.http[0].rewrite: rewrite must specify at least one of uri, uriRegexRewrite, or authority")),
        (r(&format!("rewrite: {{uri: /, uriRegexRewrite: {{match: a, rewrite: b}}}}, {ROUTE}")), Err("spec.http[0].rewrite: rewrite may only contain one of uri or uriRegexRewrite")),
        (r(&format!("rewrite: {{uriRegexRewrite: {{match: a}}}}, {ROUTE}")), Err("spec.http[0].rewrite.uriRegexRewrite: uriRegexRewrite requires both rewrite and match")),
        (r(&format!("rewrite: {{uriRegexRewrite: {{match: '(', rewrite: b}}}}, {ROUTE}")), Err("spec.http[0].rewrite.uriRegexRewrite.match: \"(\" is not a valid regex")),
        (r(&format!("headers: {{response: {{set: {{host: x}}}}}}, {ROUTE}")), Err("spec.http[0].headers.response.set.host: invalid header \"host\"")),
        (r(&format!("headers: {{request: {{remove: [':path']}}}}, {ROUTE}")), Err("spec.http[0].headers.request.remove[0]: invalid header \":path\"")),
        (r(&format!("headers: {{request: {{add: {{'': x}}}}}}, {ROUTE}")), Err("spec.http[0].headers.request.add.: header name cannot be empty")),
        (r(&format!("headers: {{request: {{set: {{x-a: '100%'}}}}}}, {ROUTE}")), Err("spec.http[0].headers.request.set.x-a: header value \"100%\"")),
        (r(&format!("rewrite: {{authority: a.example}}, headers: {{request: {{set: {{host: b.example}}}}}}, {ROUTE}")), Err("spec.http[0].headers.request: authority header cannot be set multiple times")),
        // CORS.
        (r(&format!("corsPolicy: {{allowMethods: [FETCH]}}, {ROUTE}")), Err("spec.http[0].corsPolicy.allowMethods[0]: \"FETCH\" is not a supported HTTP method")),
        (r(&format!("corsPolicy: {{maxAge: 1.5s}}, {ROUTE}")), Err("spec.http[0].corsPolicy.maxAge: max_age duration is accurate only to seconds precision")),
        (r(&format!("corsPolicy: {{allowOrigins: [{{exact: ''}}]}}, {ROUTE}")), Err("spec.http[0].corsPolicy.allowOrigins[0]: '' is not a valid match for CORS allow origins")),
        (r(&format!("corsPolicy: {{allowHeaders: ['bad header']}}, {ROUTE}")), Err("spec.http[0].corsPolicy.allowHeaders[0]: \"bad header\" is not a valid header name")),
        (r(&format!("corsPolicy: {{unmatchedPreflights: DROP}}, {ROUTE}")), Err("spec.http[0].corsPolicy.unmatchedPreflights: unknown variant `DROP`")),
    ];
    let mut n = run("VirtualService", &owned);
    n += run(
        "VirtualService",
        &[
            ("{hosts: ['*.example.com'], gateways: [istio-system/ingress], http: [{route: [{destination: {host: web.shop.svc.cluster.local, port: {number: 8080}}}]}]}", Ok(())),
            ("{hosts: ['*'], gateways: [ingress], http: [{route: [{destination: {host: web}}]}]}", Ok(())),
            ("{hosts: ['10.0.0.1'], http: [{route: [{destination: {host: web}}]}]}", Ok(())),
            ("{hosts: [a.example.com], gateways: [ingress], http: [{match: [{headers: {'@request.auth.claims.group': {exact: admin}}}], route: [{destination: {host: a}}]}]}", Ok(())),
            ("{gateways: [gw], http: [{route: [{destination: {host: a}}]}]}", Err("spec.gateways: a delegate VirtualService (one without hosts) must have no gateways")),
            ("{hosts: ['*'], http: [{route: [{destination: {host: a}}]}]}", Err("spec.hosts[0]: wildcard host * is not allowed for virtual services bound to the mesh gateway")),
            ("{hosts: ['*'], gateways: [mesh, gw], http: [{route: [{destination: {host: a}}]}]}", Err("spec.hosts[0]: wildcard host * is not allowed")),
            ("{hosts: [Reviews], http: [{route: [{destination: {host: a}}]}]}", Err("spec.hosts[0]: domain name \"Reviews\" invalid (label \"Reviews\" invalid)")),
            ("{hosts: [a.example.com, '*.example.com'], http: [{route: [{destination: {host: a}}]}]}", Err("spec.hosts[0]: duplicate hosts in virtual service: a.example.com & *.example.com")),
            ("{hosts: [reviews]}", Err("spec.http: http, tcp or tls must be provided in virtual service")),
            ("{hosts: [reviews], gateways: [ns/Bad_Gw], http: [{route: [{destination: {host: a}}]}]}", Err("spec.gateways[0]: invalid value for gateway name: \"Bad_Gw\"")),
            ("{hosts: [reviews], gateways: [/gw], http: [{route: [{destination: {host: a}}]}]}", Err("spec.gateways[0]: config namespace and gateway name cannot be empty")),
            ("{hosts: [reviews], exportTo: ['~'], http: [{route: [{destination: {host: a}}]}]}", Err("spec.exportTo[0]: \"~\" is not \".\", \"*\" or a namespace name (`~` is for ServiceEntry only)")),
            ("{hosts: [reviews], exportTo: ['.', '*'], http: [{route: [{destination: {host: a}}]}]}", Err("spec.exportTo: cannot have both public (*) and non-public exportTo values")),
            ("{hosts: [reviews], exportTo: [shop, '.'], http: [{route: [{destination: {host: a}}]}]}", Err("spec.exportTo[1]: duplicate entries in exportTo: . and current namespace shop")),
            ("{hosts: [reviews], exportTo: ['.', shop], http: [{route: [{destination: {host: a}}]}]}", Err("spec.exportTo[1]: duplicate entries in exportTo for entry shop")),
            ("{hosts: [reviews], htp: []}", Err("spec: unknown field `htp`")),
            // Delegation.
            ("{hosts: [a.example.com], http: [{match: [{uri: {prefix: /r}}], delegate: {name: reviews, namespace: shop}}]}", Ok(())),
            ("{http: [{match: [{uri: {prefix: /r/v1}}], route: [{destination: {host: reviews}}]}]}", Ok(())),
            ("{hosts: [a.example.com], http: [{delegate: {name: r}, route: [{destination: {host: a}}]}]}", Err("spec.http[0].route: a route with delegate must not specify route")),
            ("{hosts: [a.example.com], http: [{delegate: {name: r}, redirect: {uri: /}}]}", Err("spec.http[0].redirect: a route with delegate must not specify redirect")),
            ("{hosts: [a.example.com], http: [{delegate: {namespace: shop}}]}", Err("spec.http[0].delegate.name: required")),
            ("{hosts: [a.example.com], http: [{match: [{uri: {regex: '/r.*'}}], delegate: {name: r}}]}", Err("spec.http[0].match[0].uri: regex match is not supported in delegating or delegate routes")),
            ("{http: [{delegate: {name: x}}]}", Err("spec.http[0].delegate: delegate HTTP route cannot contain delegate")),
            ("{http: [{match: [{headers: {x-a: {regex: 'a.*'}}}], route: [{destination: {host: a}}]}]}", Err("spec.http[0].match[0].headers.x-a: regex match is not supported in delegating or delegate routes")),
            ("{tcp: [{route: [{destination: {host: a}}]}]}", Err("spec.tcp: a delegate VirtualService (one without hosts) must have no tcp routes")),
            // TLS and TCP routes.
            ("{hosts: ['*.example.com'], tls: [{match: [{sniHosts: [a.example.com], port: 443}], route: [{destination: {host: a.example.com}}]}]}", Ok(())),
            ("{hosts: ['*.example.com'], tls: [{route: [{destination: {host: a.example.com}}]}]}", Err("spec.tls[0].match: at least one match (with sniHosts) is required")),
            ("{hosts: ['*.example.com'], tls: [{match: [{port: 443}], route: [{destination: {host: a}}]}]}", Err("spec.tls[0].match[0].sniHosts: at least one SNI host is required")),
            ("{hosts: ['*.example.com'], tls: [{match: [{sniHosts: [b.other.com]}], route: [{destination: {host: a}}]}]}", Err("spec.tls[0].match[0].sniHosts[0]: SNI host \"b.other.com\" is not a compatible subset of any of the virtual service hosts: [*.example.com]")),
            ("{hosts: ['*.example.com'], tls: [{match: [{sniHosts: [a.example.com]}]}]}", Err("spec.tls[0].route: at least one route destination is required")),
            ("{hosts: ['*.example.com'], tls: [{match: [{sniHosts: [a.example.com], destinationSubnets: [bad]}], route: [{destination: {host: a}}]}]}", Err("spec.tls[0].match[0].destinationSubnets[0]: bad is not a valid IP")),
            ("{hosts: [db], tcp: [{match: [{port: 5432, destinationSubnets: [10.0.0.0/8]}], route: [{destination: {host: db, port: {number: 5432}}}]}]}", Ok(())),
            ("{hosts: [db], tcp: [{match: [{destinationSubnets: [10.0.0.0/33]}], route: [{destination: {host: db}}]}]}", Err("spec.tcp[0].match[0].destinationSubnets[0]: 10.0.0.0/33 is not a valid CIDR block")),
            ("{hosts: [db], tcp: [{match: [{port: 5432}]}]}", Err("spec.tcp[0].route: at least one route destination is required")),
            ("{hosts: [db], tcp: [{route: [{destination: {host: db}, weight: 1}, {destination: {host: db2}, weight: -1}]}]}", Err("spec.tcp[0].route[1].weight: weight -1 < 0")),
            ("{hosts: [db], tcp: [{match: [{sourceSubnet: 'x/8'}], route: [{destination: {host: db}}]}]}", Err("spec.tcp[0].match[0].sourceSubnet: x/8 is not a valid CIDR block")),
        ],
    );
    assert!(n >= 120, "{n} cases");
}

#[test]
fn destination_rule() {
    let n = run(
        "DestinationRule",
        &[
            (
                "{host: reviews, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}, connectionPool: {tcp: {maxConnections: 100, connectTimeout: 30ms, tcpKeepalive: {time: 7200s, interval: 75s}}, http: {http2MaxRequests: 1000, idleTimeout: 1h}}, outlierDetection: {consecutive5xxErrors: 7, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 50}, tls: {mode: ISTIO_MUTUAL}}, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}]}",
                Ok(()),
            ),
            ("{host: '*.example.com', trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}}}}}", Ok(())),
            ("{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}}}", Ok(())),
            ("{host: reviews, trafficPolicy: {portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: RANDOM}}]}}", Ok(())),
            ("{host: reviews, trafficPolicy: {tls: {mode: MUTUAL, credentialName: client-cert}}}", Ok(())),
            ("{host: reviews, workloadSelector: {matchLabels: {app: r}}, exportTo: ['.']}", Ok(())),
            ("{host: reviews, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: us-west/*, to: {'us-west/*': 80, 'us-east/*': 20}}]}}}}", Ok(())),
            ("{subsets: [{name: v1}]}", Err("spec.host: required")),
            ("{host: bad_host}", Err("spec.host: domain name \"bad_host\" invalid")),
            ("{host: reviews, subsets: [{name: v1}, {name: v1}]}", Err("spec.subsets[1].name: duplicate subset names: v1")),
            ("{host: reviews, subsets: [{labels: {version: v1}}]}", Err("spec.subsets[0].name: subset name cannot be empty")),
            ("{host: reviews, subsets: [{name: v1, labels: {'a b': v1}}]}", Err("spec.subsets[0].labels.\"a b\": invalid label key")),
            ("{host: reviews, subsets: [{name: v1, labels: {version: 'v 1'}}]}", Err("spec.subsets[0].labels.\"version\": invalid label value \"v 1\"")),
            ("{host: reviews, subsets: [{name: v1, trafficPolicy: {}}]}", Err("spec.subsets[0].trafficPolicy: traffic policy must have at least one field")),
            ("{host: reviews, trafficPolicy: {}}", Err("spec.trafficPolicy: traffic policy must have at least one field")),
            ("{host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}}", Err("spec.trafficPolicy.loadBalancer: set simple or consistentHash, not both")),
            ("{host: reviews, trafficPolicy: {loadBalancer: {simple: FASTEST}}}", Err("spec.trafficPolicy.loadBalancer.simple: unknown variant `FASTEST`")),
            ("{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {ttl: 10s}}}}}", Err("spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name: name required for HttpCookie")),
            ("{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, httpHeaderName: x-user}}}}", Err("spec.trafficPolicy.loadBalancer.consistentHash: set one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName")),
            ("{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 100}}}}}", Err("spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: tableSize must be a prime number for maglev")),
            ("{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 1024, ringHash: {minimumRingSize: 1024}}}}}", Err("spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize: only one of minimumRingSize or maglev/ringHash")),
            ("{host: reviews, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: a/*, to: {'b/*': 90}}]}}}}", Err("spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: total locality weight 90 != 100")),
            ("{host: reviews, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: a, to: {b: 100}}], failover: [{from: a, to: b}]}}}}", Err("spec.trafficPolicy.loadBalancer.localityLbSetting: can not simultaneously specify 'distribute' and 'failover'")),
            ("{host: reviews, trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: us-east, to: us-east}]}}}}", Err("spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0]: locality lb failover settings must specify different regions")),
            ("{host: reviews, trafficPolicy: {connectionPool: {}}}", Err("spec.trafficPolicy.connectionPool: connection pool must have at least one field")),
            ("{host: reviews, trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}}", Err("spec.trafficPolicy.connectionPool.tcp.maxConnections: max connections must be non-negative")),
            ("{host: reviews, trafficPolicy: {connectionPool: {http: {maxRetries: -3}}}}", Err("spec.trafficPolicy.connectionPool.http.maxRetries: max retries must be non-negative")),
            ("{host: reviews, trafficPolicy: {connectionPool: {http: {idleTimeout: 1x}}}}", Err("spec.trafficPolicy.connectionPool.http.idleTimeout: \"1x\" is not a duration")),
            ("{host: reviews, trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}}}}", Err("spec.trafficPolicy.connectionPool.http.useClientProtocol: use client protocol must not be true when h2UpgradePolicy is UPGRADE")),
            ("{host: reviews, trafficPolicy: {connectionPool: {tcp: {tcpKeepalive: {time: 0s}}}}}", Err("spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time: \"0s\": duration must be at least 1ms")),
            ("{host: reviews, trafficPolicy: {outlierDetection: {maxEjectionPercent: 150}}}", Err("spec.trafficPolicy.outlierDetection.maxEjectionPercent: percentage 150 is not in range 0..100")),
            ("{host: reviews, trafficPolicy: {outlierDetection: {minHealthPercent: -1}}}", Err("spec.trafficPolicy.outlierDetection.minHealthPercent: percentage -1 is not in range 0..100")),
            ("{host: reviews, trafficPolicy: {outlierDetection: {consecutiveLocalOriginFailures: 3}}}", Err("spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures: outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false")),
            ("{host: reviews, trafficPolicy: {outlierDetection: {interval: 0s}}}", Err("spec.trafficPolicy.outlierDetection.interval: \"0s\": duration must be at least 1ms")),
            ("{host: reviews, trafficPolicy: {tls: {mode: MUTUAL}}}", Err("spec.trafficPolicy.tls.clientCertificate: client certificate required for mutual tls")),
            ("{host: reviews, trafficPolicy: {tls: {mode: MUTUAL, clientCertificate: /c.pem}}}", Err("spec.trafficPolicy.tls.privateKey: private key required for mutual tls")),
            ("{host: reviews, trafficPolicy: {tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca.pem}}}", Err("spec.trafficPolicy.tls.credentialName: cannot specify client certificates or CA certificate or CA CRL if credentialName is set")),
            ("{host: reviews, trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true, caCertificates: /ca.pem}}}", Err("spec.trafficPolicy.tls.insecureSkipVerify: cannot specify caCertificates")),
            ("{host: reviews, trafficPolicy: {tls: {mode: STRICT}}}", Err("spec.trafficPolicy.tls.mode: unknown variant `STRICT`")),
            ("{host: reviews, trafficPolicy: {portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}}", Err("spec.trafficPolicy.portLevelSettings[0].port: portTrafficPolicy must have valid port")),
            ("{host: reviews, trafficPolicy: {portLevelSettings: [{port: {number: 80}}]}}", Err("spec.trafficPolicy.portLevelSettings[0]: port traffic policy must have at least one field")),
            ("{host: reviews, trafficPolicy: {portLevelSettings: [{port: {number: 0}, tls: {mode: SIMPLE}}]}}", Err("spec.trafficPolicy.portLevelSettings[0].port.number: port number 0 must be in the range")),
            ("{host: reviews, trafficPolicy: {portLevelSettings: [{port: {number: 80}, outlierDetection: {maxEjectionPercent: 101}}]}}", Err("spec.trafficPolicy.portLevelSettings[0].outlierDetection.maxEjectionPercent: percentage 101")),
            ("{host: reviews, trafficPolicy: {tunnel: {protocol: GET, targetHost: a.example.com, targetPort: 443}}}", Err("spec.trafficPolicy.tunnel.protocol: tunnel protocol must be \"CONNECT\" or \"POST\"")),
            ("{host: reviews, trafficPolicy: {tunnel: {targetHost: a.example.com, targetPort: 443}, proxyProtocol: {version: V2}}}", Err("spec.trafficPolicy: tunnel and proxyProtocol must not be set together")),
            ("{host: reviews, workloadSelector: {matchLabels: {app: r}}, exportTo: [other]}", Err("spec.exportTo: destination rule with workload selector cannot have exportTo beyond current namespace")),
            ("{host: reviews, workloadSelector: {matchLabels: {app: r}}, exportTo: ['.', other]}", Err("spec.exportTo: destination rule with workload selector cannot have multiple entries in exportTo")),
            ("{host: reviews, workloadSelector: {matchLabels: {app: 'r*'}}}", Err("spec.workloadSelector.matchLabels.\"app\": wildcard is not supported in selector")),
            ("{host: reviews, exportTo: [Other_NS]}", Err("spec.exportTo[0]: \"Other_NS\" is not \".\", \"*\" or a namespace name")),
            ("{host: reviews, subset: [{name: v1}]}", Err("spec: unknown field `subset`")),
        ],
    );
    assert!(n >= 45, "{n} cases");
}

#[test]
fn gateway() {
    let server = |s: &str| format!("{{servers: [{s}]}}");
    let owned: Vec<(String, Result<(), &str>)> = vec![
        (server("{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}, {port: {number: 443, name: https, protocol: HTTPS}, hosts: [shop/web.example.com], tls: {mode: SIMPLE, credentialName: web-cert}}"), Ok(())),
        (server("{port: {number: 80, name: http, protocol: HTTP}, hosts: ['./*.example.com', '*/*'], tls: {httpsRedirect: true}}"), Ok(())),
        (server("{port: {number: 443, name: mtls, protocol: HTTPS}, hosts: ['*/a.example.com'], tls: {mode: MUTUAL, serverCertificate: /s.pem, privateKey: /k.pem, caCertificates: /ca.pem}}"), Ok(())),
        (server("{port: {number: 443, name: pass, protocol: TLS}, hosts: ['*.example.com'], tls: {mode: PASSTHROUGH}}"), Ok(())),
        (server("{port: {number: 80, name: http, protocol: HTTP}, hosts: ['10.0.0.1']}"), Ok(())),
        (server("{port: {number: 15443, name: tls, protocol: TLS}, hosts: ['*.local'], tls: {mode: ISTIO_MUTUAL}}"), Ok(())),
        ("{servers: []}".into(), Err("spec.servers: at least one server is required")),
        (server("{port: {number: 80, name: http, protocol: HTTP}}"), Err("spec.servers[0].hosts: at least one host is required")),
        (server("{port: {number: 80, name: http, protocol: HTTP}, hosts: [web]}"), Err("spec.servers[0].hosts[0]: short names (non FQDN) are not allowed: \"web\"")),
        (server("{port: {number: 80, name: http, protocol: HTTP}, hosts: [Bad/web.example.com]}"), Err("spec.servers[0].hosts[0]: invalid namespace value \"Bad\" in gateway")),
        (server("{port: {number: 80, name: http, protocol: HTTP}, hosts: ['~/web.example.com']}"), Err("spec.servers[0].hosts[0]: invalid namespace value \"~\" in gateway")),
        (server("{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*/a*.example.com']}"), Err("spec.servers[0].hosts[0]: domain name \"a*.example.com\" invalid")),
        (server("{port: {number: 80, name: http, protocol: HTTP}, hosts: ['/web.example.com']}"), Err("spec.servers[0].hosts[0]: config namespace and dnsName in host entry \"/web.example.com\" cannot be empty")),
        (server("{hosts: ['*']}"), Err("spec.servers[0].port: port is required")),
        (server("{port: {number: 21, name: ftp, protocol: FTP}, hosts: ['*']}"), Err("spec.servers[0].port.protocol: invalid protocol \"FTP\"")),
        (server("{port: {number: 80, name: http}, hosts: ['*']}"), Err("spec.servers[0].port.protocol: invalid protocol \"\"")),
        (server("{port: {number: 0, name: http, protocol: HTTP}, hosts: ['*']}"), Err("spec.servers[0].port.number: port number 0 must be in the range 1..65535")),
        (server("{port: {number: 80, protocol: HTTP}, hosts: ['*']}"), Err("spec.servers[0].port.name: port name must be set")),
        (server("{port: {number: 80, name: http, protocol: HTTP, targetPort: 8080}, hosts: ['*']}"), Err("spec.servers[0].port.targetPort: targetPort has no impact on Gateways")),
        (server("{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*']}"), Err("spec.servers[0].tls: server must have TLS settings for HTTPS/TLS protocols")),
        (server("{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: SIMPLE}}"), Err("spec.servers[0].tls.serverCertificate: SIMPLE TLS requires a server certificate")),
        (server("{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: SIMPLE, serverCertificate: /s.pem}}"), Err("spec.servers[0].tls.privateKey: SIMPLE TLS requires a private key")),
        (server("{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: MUTUAL, serverCertificate: /s.pem, privateKey: /k.pem}}"), Err("spec.servers[0].tls.caCertificates: MUTUAL TLS requires a client CA bundle")),
        (server("{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: ISTIO_MUTUAL, credentialName: c}}"), Err("spec.servers[0].tls.credentialName: ISTIO_MUTUAL TLS cannot have an associated credentialName")),
        (server("{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: SIMPLE, credentialName: c, credentialNames: [d]}}"), Err("spec.servers[0].tls.credentialNames: set credentialName or credentialNames, not both")),
        (server("{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: SIMPLE, serverCertificate: /s, privateKey: /k, caCrl: /crl}}"), Err("spec.servers[0].tls.caCrl: CRL is not supported with SIMPLE TLS")),
        (server("{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: BOGUS}}"), Err("spec.servers[0].tls.mode: unknown variant `BOGUS`")),
        (server("{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*'], tls: {mode: SIMPLE, credentialName: c}}"), Err("spec.servers[0].tls: server cannot have TLS settings for plain text HTTP ports")),
        (server("{port: {number: 5432, name: pg, protocol: TCP}, hosts: ['*'], tls: {httpsRedirect: true}}"), Err("spec.servers[0].tls: server cannot have TLS settings for non HTTPS/TLS ports")),
        (server("{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}, {port: {number: 8080, name: http, protocol: HTTP}, hosts: ['*']}"), Err("spec.servers[1].port.name: port names in servers must be unique: duplicate name http")),
        (server("{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*'], bind: not-an-ip}"), Err("spec.servers[0].bind: not-an-ip is not a valid IP")),
        (server("{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*'], bind: 'unix://relative.sock'}"), Err("spec.servers[0].bind: relative.sock is not an absolute path to a file")),
        (server("{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*'], tlss: {}}"), Err("spec.servers[0]: unknown field `tlss`")),
    ];
    assert!(run("Gateway", &owned) >= 30);
    // The name is checked too: it is what `ns/name` references name.
    let named = |name: &str| -> Result<(), String> {
        let text = format!("metadata: {{name: {name}}}\nspec: {{servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ['*']}}]}}");
        serde_yaml::from_str::<Gateway>(&text).unwrap().validate()
    };
    assert_eq!(named("ingress"), Ok(()));
    assert!(named("My_GW").unwrap_err().starts_with("metadata.name: invalid gateway name: \"My_GW\""));
}

#[test]
fn service_entry() {
    let n = run(
        "ServiceEntry",
        &[
            ("{hosts: [api.example.com], ports: [{number: 443, name: https, protocol: TLS}], location: MESH_EXTERNAL, resolution: DNS}", Ok(())),
            ("{hosts: [db.internal], addresses: [10.9.0.1], ports: [{number: 5432, name: tcp-pg, protocol: TCP}], resolution: STATIC, endpoints: [{address: 10.1.0.5, ports: {tcp-pg: 15432}}, {address: 10.1.0.6}]}", Ok(())),
            ("{hosts: ['*.example.com'], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS, endpoints: [{address: proxy.example.com}]}", Ok(())),
            ("{hosts: [a.example.com, b.example.com], addresses: [10.0.0.0/24], ports: [{number: 9000, name: tcp, protocol: TCP}], resolution: NONE}", Ok(())),
            ("{hosts: [a.example.com], ports: [{number: 80, name: http}], exportTo: ['~']}", Ok(())),
            ("{hosts: [vm.shop.svc.cluster.local], ports: [{number: 80, name: http, targetPort: 8080}], location: MESH_INTERNAL, resolution: STATIC, workloadSelector: {labels: {app: vm}}}", Ok(())),
            ("{hosts: [uds.local], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 'unix:///var/run/a.sock'}]}", Ok(())),
            ("{ports: [{number: 80, name: http}]}", Err("spec.hosts: at least one host is required")),
            ("{hosts: ['*']}", Err("spec.hosts[0]: invalid host *")),
            ("{hosts: [Bad.Example]}", Err("spec.hosts[0]: domain name \"Bad.Example\" invalid")),
            ("{hosts: [a.example.com], addresses: [10.0.0.300]}", Err("spec.addresses[0]: 10.0.0.300 is not a valid IP")),
            ("{hosts: [a.example.com], addresses: [10.0.0.0/24], resolution: DNS}", Err("spec.addresses: CIDR addresses are allowed only for NONE/STATIC resolution types")),
            ("{hosts: [a.example.com], ports: [{number: 80, name: http}, {number: 80, name: web}]}", Err("spec.ports[1].number: service entry port 80 already defined")),
            ("{hosts: [a.example.com], ports: [{number: 80, name: http}, {number: 81, name: http}]}", Err("spec.ports[1].name: service entry port name \"http\" already defined")),
            ("{hosts: [a.example.com], ports: [{number: 80}]}", Err("spec.ports[0].name: invalid port name: \"\"")),
            ("{hosts: [a.example.com], ports: [{number: 25, name: smtp, protocol: SMTP}]}", Err("spec.ports[0].protocol: unsupported protocol \"SMTP\"")),
            ("{hosts: [a.example.com], ports: [{number: 0, name: http}]}", Err("spec.ports[0].number: port number 0 must be in the range")),
            ("{hosts: [a.example.com], ports: [{number: 80, name: http, targetPort: 70000}]}", Err("spec.ports[0].targetPort: port number 70000 must be in the range")),
            ("{hosts: [a.example.com], resolution: NONE, endpoints: [{address: 10.0.0.1}]}", Err("spec.endpoints: no endpoints should be provided for resolution type NONE")),
            ("{hosts: [a.example.com], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: db.example.com}]}", Err("spec.endpoints[0].address: endpoint address \"db.example.com\" is not a valid IP address")),
            ("{hosts: [a.example.com], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 10.0.0.1, ports: {grpc: 9000}}]}", Err("spec.endpoints[0].ports.grpc: endpoint port \"grpc\" is not defined by the service entry")),
            ("{hosts: [a.example.com], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 'unix:///a.sock', ports: {http: 80}}]}", Err("spec.endpoints[0].ports: unix endpoint unix:///a.sock must not include ports")),
            ("{hosts: [a.example.com], ports: [{number: 80, name: http}, {number: 81, name: h2}], resolution: STATIC, endpoints: [{address: 'unix:///a.sock'}]}", Err("spec.endpoints[0].address: exactly 1 service port required for unix endpoints")),
            ("{hosts: [a.example.com], resolution: STATIC, endpoints: [{labels: {app: a}}]}", Err("spec.endpoints[0].address: address is required")),
            ("{hosts: ['*.example.com'], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}", Err("spec.hosts[0]: hosts must be FQDN if no endpoints are provided for resolution mode DNS")),
            ("{hosts: [a.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS_ROUND_ROBIN, endpoints: [{address: a.example.net}, {address: b.example.net}]}", Err("spec.endpoints: there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN")),
            ("{hosts: [a.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS, endpoints: [{address: 'not a host'}]}", Err("spec.endpoints[0].address: endpoint address \"not a host\" is not a valid FQDN or an IP address")),
            ("{hosts: [a.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS, endpoints: [{address: a.example.net, ports: {web: 8080}}]}", Err("spec.endpoints[0].ports.web: endpoint port \"web\" is not defined by the service entry")),
            ("{hosts: [a.example.com], workloadSelector: {labels: {app: a}}, endpoints: []}", Err("spec.endpoints: only one of workloadSelector or endpoints is allowed in a ServiceEntry")),
            ("{hosts: [a.example.com], workloadSelector: {labels: {'*': a}}}", Err("spec.workloadSelector.labels.\"*\": wildcard is not supported in selector")),
            ("{hosts: [a.example.com, b.example.com], ports: [{number: 9000, name: tcp, protocol: TCP}], resolution: DNS}", Err("spec.ports[0].protocol: multiple hosts provided with non-HTTP, non-TLS ports")),
            ("{hosts: [a.example.com], exportTo: ['~', '*']}", Err("spec.exportTo: cannot have both public (*) and non-public exportTo values")),
            ("{hosts: [a.example.com], exportTo: ['~', shop]}", Err("spec.exportTo: cannot export service entry to no one (~) and someone")),
            ("{hosts: [a.example.com], resolution: MAGIC}", Err("spec.resolution: unknown variant `MAGIC`")),
            ("{hosts: [a.example.com], location: OUTSIDE}", Err("spec.location: unknown variant `OUTSIDE`")),
        ],
    );
    assert!(n >= 35, "{n}");
}

#[test]
fn sidecar() {
    let n = run(
        "Sidecar",
        &[
            ("{egress: [{hosts: ['./*', 'istio-system/*']}], outboundTrafficPolicy: {mode: REGISTRY_ONLY}}", Ok(())),
            ("{workloadSelector: {labels: {app: r}}, egress: [{port: {number: 9080, protocol: HTTP, name: http}, hosts: ['~/*']}, {hosts: ['*/*.example.com']}]}", Ok(())),
            ("{ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: '127.0.0.1:8080'}, {port: {number: 9090}, defaultEndpoint: 'unix:///var/run/app.sock'}]}", Ok(())),
            ("{ingress: [{port: {number: 9080}, defaultEndpoint: '[::1]:8080'}]}", Ok(())),
            ("{outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: egress.example.com, port: {number: 3128}}}}", Ok(())),
            ("{egress: [{port: {number: 0, name: uds, protocol: HTTP}, bind: 'unix:///var/run/out.sock', hosts: ['*/*']}]}", Ok(())),
            ("{}", Err("spec: sidecar: empty configuration provided")),
            ("{egress: [{hosts: [reviews.shop.svc.cluster.local]}]}", Err("spec.egress[0].hosts[0]: host \"reviews.shop.svc.cluster.local\" must be of form namespace/dnsName")),
            ("{egress: [{hosts: ['Bad/*']}]}", Err("spec.egress[0].hosts[0]: invalid namespace value \"Bad\" in sidecar")),
            ("{egress: [{hosts: [shop/reviews]}]}", Err("spec.egress[0].hosts[0]: short names (non FQDN) are not allowed: \"reviews\"")),
            ("{egress: [{hosts: ['shop/a*.example.com']}]}", Err("spec.egress[0].hosts[0]: domain name \"a*.example.com\" invalid")),
            ("{egress: [{hosts: ['./10.0.0.1']}]}", Err("spec.egress[0].hosts[0]: domain name \"10.0.0.1\" invalid")),
            ("{egress: [{port: {number: 80}}]}", Err("spec.egress[0].hosts: at least one host (namespace/dnsName) is required")),
            ("{egress: [{hosts: ['./*']}, {hosts: ['*/*']}]}", Err("spec.egress[0].port: sidecar: the egress listener with empty port should be the last listener in the list")),
            ("{egress: [{port: {number: 80}, hosts: ['./*']}, {port: {number: 80}, hosts: ['*/*']}]}", Err("spec.egress[1].port.number: sidecar: ports on IP bound listeners must be unique")),
            ("{egress: [{port: {number: 0}, hosts: ['./*']}]}", Err("spec.egress[0].bind: sidecar: ports with 0 value must have a unix domain socket bind address")),
            ("{egress: [{port: {number: 80, name: HTTP}, hosts: ['./*']}]}", Err("spec.egress[0].port.name: invalid port name: \"HTTP\"")),
            ("{egress: [{port: {number: 80, protocol: QUIC}, hosts: ['./*']}]}", Err("spec.egress[0].port.protocol: unsupported protocol \"QUIC\"")),
            ("{egress: [{port: {number: 80}, bind: 'nope', hosts: ['./*']}]}", Err("spec.egress[0].bind: nope is not a valid IP")),
            ("{egress: [{port: {number: 80, targetPort: 8080}, hosts: ['./*']}]}", Err("spec.egress[0].port.targetPort: targetPort has no impact on Sidecars")),
            ("{ingress: [{defaultEndpoint: '127.0.0.1:8080'}]}", Err("spec.ingress[0].port: sidecar: port is required for ingress listeners")),
            ("{ingress: [{port: {number: 9080}, defaultEndpoint: '10.0.0.1:8080'}]}", Err("spec.ingress[0].defaultEndpoint: sidecar: defaultEndpoint must be of form 127.0.0.1:<port>")),
            ("{ingress: [{port: {number: 9080}, defaultEndpoint: '127.0.0.1:http'}]}", Err("spec.ingress[0].defaultEndpoint: sidecar: defaultEndpoint port (http) is not a number")),
            ("{ingress: [{port: {number: 9080}}, {port: {number: 9080}}]}", Err("spec.ingress[1].port.number: sidecar: ports on IP bound listeners must be unique")),
            ("{ingress: [{port: {number: 9080}, tls: {mode: ISTIO_MUTUAL}}]}", Err("spec.ingress[0].tls.mode: cannot set mode to IstioMutual in sidecar ingress tls")),
            ("{ingress: [{port: {number: 9080}, tls: {mode: SIMPLE}}]}", Err("spec.ingress[0].tls.serverCertificate: SIMPLE TLS requires a server certificate")),
            ("{ingress: [{port: {number: 9080}, connectionPool: {tcp: {maxConnections: -1}}}]}", Err("spec.ingress[0].connectionPool.tcp.maxConnections: max connections must be non-negative")),
            ("{outboundTrafficPolicy: {mode: REGISTRY_ONLY, egressProxy: {host: egress.example.com, port: {number: 3128}}}}", Err("spec.outboundTrafficPolicy.egressProxy: sidecar: egressProxy must be set only with ALLOW_ANY")),
            ("{outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: egress.example.com}}}", Err("spec.outboundTrafficPolicy.egressProxy.port: sidecar: egressProxy port must be set")),
            ("{outboundTrafficPolicy: {mode: OPEN}}", Err("spec.outboundTrafficPolicy.mode: unknown variant `OPEN`")),
            ("{workloadSelector: {labels: {'': x}}, egress: [{hosts: ['./*']}]}", Err("spec.workloadSelector.labels: empty key is not supported in selector")),
            ("{egres: []}", Err("spec: unknown field `egres`")),
        ],
    );
    assert!(n >= 30, "{n}");
}

#[test]
fn workload_entry() {
    let n = run(
        "WorkloadEntry",
        &[
            ("{address: 10.0.0.5, ports: {http: 8080}, labels: {app: vm, version: v1}, serviceAccount: vm-sa, network: net1, weight: 10}", Ok(())),
            ("{address: 'fd00::5'}", Ok(())),
            ("{address: vm1.example.com}", Ok(())),
            ("{address: 'unix:///var/run/app.sock'}", Ok(())),
            ("{network: net2}", Ok(())),
            ("{address: 'unix:///var/run/app.sock', ports: {http: 80}}", Err("spec.ports: unix endpoint unix:///var/run/app.sock must not include ports")),
            ("{address: 'unix://app.sock'}", Err("spec.address: app.sock is not an absolute path to a file")),
            ("{labels: {app: vm}}", Err("spec.address: address is required")),
            ("{address: 'not an address!'}", Err("spec.address: endpoint address \"not an address!\" is not a valid FQDN or an IP address")),
            ("{address: 10.0.0.5, ports: {http: 70000}}", Err("spec.ports.http: port number 70000 must be in the range 1..65535")),
            ("{address: 10.0.0.5, ports: {HTTP: 80}}", Err("spec.ports.HTTP: invalid port name: \"HTTP\"")),
            ("{address: 10.0.0.5, labels: {app: 'a b'}}", Err("spec.labels.\"app\": invalid label value \"a b\"")),
            ("{address: 10.0.0.5, serviceAccount: Bad_SA}", Err("spec.serviceAccount: \"Bad_SA\" is not a service account name")),
            ("{address: 10.0.0.5, ports: {http: -1}}", Err("invalid type: integer `-1`, expected u32")),
            ("{address: 10.0.0.5, adress: x}", Err("spec: unknown field `adress`")),
        ],
    );
    assert!(n >= 15, "{n}");
}
