//! Removing a pod: after unenroll and deletion of its Pod object, the kernel maps
//! forget its namespace (PODS) and its address (MESH_DESTS) within 5 s.

use std::time::Duration;

use mesh_tests::require_root;
use mesh_tests::scenario::{Options, Scene};
use serde_json::Value;

fn pods_has_cookie(dump: &Value, cookie: u64) -> bool {
    dump.as_array().into_iter().flatten().any(|p| p["netns_cookie"].as_u64() == Some(cookie))
}

fn dests_has_ip(dump: &Value, ip: &str) -> bool {
    dump.as_array().into_iter().flatten().any(|d| d["addr"].as_str() == Some(ip))
}

#[test]
fn removed_pods_leave_the_kernel_maps() -> anyhow::Result<()> {
    if !require_root("remove_pod") {
        return Ok(());
    }
    let mut scene = Scene::start("remove-pod", Options { second_node: false, outsider: false })?;
    let echo1 = scene.echo1.clone();
    let cookie = echo1.netns_cookie()?;
    let bed = &scene.bed;
    mesh_tests::wait_until("echo-1 in PODS and MESH_DESTS", Duration::from_secs(5), || {
        let pods = bed.map_dump("node1", "PODS")?;
        let dests = bed.map_dump("node1", "MESH_DESTS")?;
        Ok((pods_has_cookie(&pods, cookie) && dests_has_ip(&dests, &echo1.ip)).then_some(()))
    })?;

    scene.servers.retain(|(n, _)| n != "echo-1");
    scene.bed.unenroll(&echo1)?;
    scene.bed.remove_pod(&echo1)?;
    let bed = &scene.bed;
    mesh_tests::wait_until("echo-1 gone from PODS and MESH_DESTS", Duration::from_secs(5), || {
        let pods = bed.map_dump("node1", "PODS")?;
        let dests = bed.map_dump("node1", "MESH_DESTS")?;
        Ok((!pods_has_cookie(&pods, cookie) && !dests_has_ip(&dests, &echo1.ip)).then_some(()))
    })?;
    bed.wait_for_workload_gone("node1", &echo1.ip)?;
    // The client is still enrolled.
    let client_cookie = scene.client.netns_cookie()?;
    assert!(pods_has_cookie(&bed.map_dump("node1", "PODS")?, client_cookie));
    scene.finish();
    Ok(())
}
