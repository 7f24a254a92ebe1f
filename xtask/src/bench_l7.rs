//! `cargo xtask bench-l7`: what judging HTTP costs. The same meshed pods under four
//! policy setups, side by side in each round: no policy (bytes copied), an L4 ALLOW
//! by principal (still bytes), an ALLOW on methods and paths (every request parsed,
//! normalized and judged by the agent), and that plus a RequestAuthentication with a
//! token on every request (RS256 verified per request). h2load, HTTP/1.1, same node
//! and across nodes; medians over the rounds; replaces its section of
//! docs/benchmarks.md.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use mesh_tests::crypto::Issuer;
use mesh_tests::scenario::{Options, Scene};
use mesh_tests::wait_until;

const SECTION: &str = "## HTTP policy: bytes vs requests judged";

const L4: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bench, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
";

/// The L4 policy's rule with an HTTP operation added.
fn l7() -> String {
    format!("{L4}    to: [{{operation: {{methods: [GET], paths: [/bench/*]}}}}]\n")
}

/// The setups, in the order measured in each round.
const SETUPS: [&str; 4] = ["no policy", "L4 ALLOW (principal)", "HTTP ALLOW (method, path)", "HTTP ALLOW + JWT (RS256)"];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(requests: u32, rounds: u32) -> Result<()> {
    println!("bench-l7: building 2 nodes (client + echo-1 on node1, echo-2 on node2)");
    let scene = Scene::start("bench-l7", Options { second_node: true, outsider: false })?;
    let echo2 = scene.echo2.clone().context("echo-2")?;
    let bed = &scene.bed;
    let dir = bed.work.join("jwt");
    std::fs::create_dir_all(&dir)?;
    let issuer = Issuer::new(&dir, "bench")?;
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + 3600;
    let token = issuer.token(&serde_json::json!({"iss": "https://bench.test", "sub": "bench", "exp": exp}))?;
    let authn = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: bench, namespace: default}}\n\
         spec:\n  selector: {{matchLabels: {{app: echo}}}}\n  jwtRules:\n  - issuer: https://bench.test\n    jwks: '{}'\n---\n{}",
        issuer.jwks()?,
        l7()
    );
    let bearer = format!("authorization: Bearer {token}");
    let targets = [("same node", scene.echo1.ip.clone()), ("across nodes", echo2.ip.clone())];
    // results[setup][target] = (rps samples, mean samples, failures)
    let mut results = vec![vec![(Vec::new(), Vec::new(), 0u64); targets.len()]; SETUPS.len()];
    for round in 0..rounds {
        for (s, setup) in SETUPS.iter().enumerate() {
            let config = match s {
                0 => String::new(),
                1 => L4.to_string(),
                2 => l7(),
                _ => authn.clone(),
            };
            bed.write_config("bench.yaml", &config)?;
            let header = (s == 3).then_some(bearer.as_str());
            // Wait until the setup is in force: the HTTP setups refuse a path outside
            // /bench/*; the others serve it.
            let probe = format!("http://{}:8080/elsewhere", scene.echo1.ip);
            let want = if s >= 2 { 403 } else { 200 };
            wait_until(&format!("{setup} in force"), Duration::from_secs(15), || {
                Ok((scene.client.curl(&probe)?.0 == want).then_some(()))
            })?;
            for (t, (_, ip)) in targets.iter().enumerate() {
                let url = format!("http://{ip}:8080/bench/item");
                let crate::bench::H2load { rps, mean_us: mean, failed } = crate::bench::h2load_url(&scene.client, &url, requests, header)?;
                println!("  round {} {setup:<28} {:<12} {rps:>8.0} req/s {mean:>7.0} µs mean, {failed} failed", round + 1, targets[t].0);
                let r = &mut results[s][t];
                r.0.push(rps);
                r.1.push(mean);
                r.2 += failed;
            }
        }
    }
    bed.write_config("bench.yaml", "")?;

    let mut table = String::from("| setup | path | req/s | vs no policy | mean request time (µs) | failed |\n|---|---|---|---|---|---|\n");
    for (t, (path, _)) in targets.iter().enumerate() {
        let base = median(results[0][t].0.clone());
        for (s, setup) in SETUPS.iter().enumerate() {
            let (rps, mean, failed) = (&results[s][t].0, &results[s][t].1, results[s][t].2);
            let (rps, mean) = (median(rps.clone()), median(mean.clone()));
            let ratio = if base > 0.0 { format!("{:.2}x", rps / base) } else { "-".into() };
            let _ = writeln!(table, "| {setup} | {path} | {rps:.0} | {ratio} | {mean:.0} | {failed} |");
        }
    }
    let mut doc = crate::bench::machine();
    let _ = writeln!(doc, "- command: `cargo xtask bench-l7 --requests {requests} --rounds {rounds}`");
    doc.push_str("- method: the demo scene (client and echo-1 on node1, echo-2 on node2, all meshed). Each round\n");
    doc.push_str("  applies the four setups in turn and runs `h2load --h1 -n N -c 10 -t 1` to each echo pod; the\n");
    doc.push_str("  table gives medians over the rounds. The JWT setup sends the same RS256 token on every request:\n");
    doc.push_str("  the agent verifies its signature once and remembers it; parsing, expiry and claims are per\n");
    doc.push_str("  request. `failed` counts failed and non-2xx requests over all rounds.\n\n");
    doc.push_str(&table);
    println!("\n{table}");
    let path = crate::doc::replace_section(SECTION, &doc)?;
    println!("written to {}", path.display());
    scene.finish();
    Ok(())
}
