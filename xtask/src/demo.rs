//! `cargo xtask demo`: the standard scene, a few requests, and what the agent and the
//! kernel saw.

use std::time::Duration;

use anyhow::Result;
use mesh_tests::scenario::{Options, Scene, ECHO_VIP};
use mesh_tests::Pod;

fn title(t: &str) {
    println!("\n\x1b[1m== {t}\x1b[0m");
}

fn request(from: &Pod, url: &str) -> Result<()> {
    let (code, body) = from.curl(url)?;
    let shown = if code == 0 { format!("no response: {body}") } else { format!("HTTP {code}: {}", body.trim()) };
    println!("  {:<9} ({:<15}) GET {url:<28} -> {shown}", from.name, from.ip);
    Ok(())
}

pub fn run() -> Result<()> {
    title("building the test bed: 2 nodes, control plane, 2 agents");
    let mut scene = Scene::start("demo", Options { second_node: true, outsider: true })?;
    let echo2 = scene.echo2.clone().expect("echo-2");
    let outsider = scene.outsider.clone().expect("outsider");
    for p in scene.bed.pods() {
        let mesh = if p.namespace == "default" { "in mesh" } else { "not in mesh" };
        println!("  {:<9} {:<8} node={} ip={:<11} {mesh:<11} {}", p.name, p.namespace, p.node, p.ip, p.identity());
    }
    println!("  work dir and logs: {}", scene.bed.work.display());
    scene.start_echo(&outsider).ok();

    title("client -> echo service VIP (both backends answer)");
    for _ in 0..6 {
        request(&scene.client, &format!("http://{ECHO_VIP}/"))?;
    }
    title("client -> echo-1 by pod IP (same node)");
    request(&scene.client, &format!("http://{}:8080/", scene.echo1.ip))?;
    title("client -> echo-2 by pod IP (across nodes, HBONE on 15008)");
    request(&scene.client, &format!("http://{}:8080/", echo2.ip))?;
    title("outsider (namespace legacy, not in the mesh) -> echo-1: plaintext, steered in the kernel through echo-1's agent (PERMISSIVE)");
    request(&outsider, &format!("http://{}:8080/", scene.echo1.ip))?;
    std::thread::sleep(Duration::from_millis(500));

    title("an AuthorizationPolicy (DENY from the outsider's address) lands: the kernel drops it");
    let deny = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-outsider, namespace: default}}\n\
         spec:\n  selector: {{matchLabels: {{app: echo}}}}\n  action: DENY\n  rules:\n  - from: [{{source: {{ipBlocks: [\"{}/32\"]}}}}]\n",
        outsider.ip
    );
    scene.bed.write_config("demo-deny-outsider.yaml", &deny)?;
    let echo1_addr = format!("{}:8080", scene.echo1.ip);
    mesh_tests::wait_until("the policy in node1's kernel", Duration::from_secs(10), || {
        let why = scene.bed.explain("node1", &outsider.ip, &echo1_addr)?;
        Ok((why["reason"] == "policy_deny").then_some(()))
    })?;
    request(&outsider, &format!("http://{}:8080/", scene.echo1.ip))?;
    request(&scene.client, &format!("http://{}:8080/", scene.echo1.ip))?;
    println!("  --- meshctl explain {} {echo1_addr}", outsider.ip);
    scene.bed.explain_text("node1", &outsider.ip, &echo1_addr)?.lines().for_each(|l| println!("  {l}"));
    scene.bed.write_config("demo-deny-outsider.yaml", "")?;

    title("a policy on HTTP attributes: only GET /public/*; the agent judges each request, on the normalized path");
    let paths = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: echo-public, namespace: default}\n\
                 spec:\n  selector: {matchLabels: {app: echo}}\n  rules:\n  - to: [{operation: {methods: [GET], paths: [/public/*]}}]\n";
    scene.bed.write_config("demo-paths.yaml", paths)?;
    let private = format!("http://{}:8080/private", scene.echo1.ip);
    mesh_tests::wait_until("the path policy on node1", Duration::from_secs(10), || {
        Ok((scene.client.curl(&private)?.0 == 403).then_some(()))
    })?;
    for path in ["/public/hello", "/private", "/public/..%2Fprivate"] {
        request(&scene.client, &format!("http://{}:8080{path}", scene.echo1.ip))?;
    }
    scene.bed.write_config("demo-paths.yaml", "")?;

    title("what the echo servers saw");
    for (name, _) in &scene.servers {
        for line in scene.server_output(name).lines().filter(|l| !l.starts_with("  >")) {
            println!("  {name:<9} {line}");
        }
    }
    let bed = &scene.bed;
    for node in ["node1", "node2"] {
        title(&format!("access log of the agent on {node}"));
        let lines = bed.access_log(node);
        if lines.is_empty() {
            println!("  (none)");
        }
        for l in lines {
            println!("  {l}");
        }
    }
    title("kernel maps on node1 (meshctl maps dump)");
    for map in ["PODS", "MESH_DESTS", "COUNTERS"] {
        println!("  --- {map}");
        match bed.map_text("node1", map) {
            Ok(t) => t.lines().for_each(|l| println!("  {l}")),
            Err(e) => println!("  (could not read: {e:#})"),
        }
    }
    title("cleaning up");
    scene.finish();
    println!("  done: namespaces, cgroups, bpffs pins and processes removed");
    Ok(())
}
