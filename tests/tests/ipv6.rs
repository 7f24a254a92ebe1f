//! Dual stack: every pod has an IPv4 and an IPv6 address. A connection to a pod's
//! IPv6 address is captured by connect6, carried over HBONE on IPv6, on the same node
//! and across nodes, and the application sees the caller's IPv6 address.

use std::time::Duration;

use mesh_tests::require_root;
use mesh_tests::scenario::{curl_ok, Options, Scene};

#[test]
fn ipv6_through_the_mesh() -> anyhow::Result<()> {
    if !require_root("ipv6") {
        return Ok(());
    }
    let scene = Scene::start("ipv6", Options { second_node: true, outsider: false })?;
    let echo2 = scene.echo2.clone().expect("echo-2");
    let bed = &scene.bed;
    for (node, ip) in [("node1", &scene.echo1.ip6), ("node1", &echo2.ip6), ("node2", &scene.client.ip6)] {
        bed.wait_for_workload(node, ip)?;
    }
    let redirected = bed.counter("node1", "connect_redirected")?;
    for (pod, name) in [(&scene.echo1, "echo-1"), (&echo2, "echo-2")] {
        let body = curl_ok(&scene.client, &format!("http://[{}]:8080/", pod.ip6), 5)?;
        assert_eq!(body.trim(), format!("hello from {name}"));
        let printed = scene.server_output(name);
        assert!(printed.contains(&format!("from [{}]:", scene.client.ip6)), "{name} saw the client's IPv6 address:\n{printed}");
    }
    assert!(bed.counter("node1", "connect_redirected")? >= redirected + 2, "connect6 did not redirect");
    let want = format!("[{}]:8080", echo2.ip6);
    mesh_tests::wait_until("IPv6 access-log line on node2", Duration::from_secs(5), || {
        Ok(bed.access_log("node2").into_iter().find(|l| {
            mesh_tests::log_field(l, "dst.addr").as_deref() == Some(want.as_str())
                && mesh_tests::log_field(l, "src.identity").as_deref() == Some("spiffe://cluster.local/ns/default/sa/sleep")
        }))
    })?;
    scene.finish();
    Ok(())
}
