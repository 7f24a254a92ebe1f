//! Removing a pod: after unenroll and deletion of its Pod object, the kernel maps
//! forget its namespace (PODS, OUTBOUND_EXCLUDED_PORTS) and its address (MESH_DESTS,
//! INBOUND, INBOUND_PORTS, INBOUND_LISTENERS) within 5 s.

use std::time::Duration;

use mesh_tests::require_root;
use mesh_tests::scenario::{Options, Scene};
use serde_json::{json, Value};

fn pods_has_cookie(dump: &Value, cookie: u64) -> bool {
    dump.as_array().into_iter().flatten().any(|p| p["netns_cookie"].as_u64() == Some(cookie))
}

fn dests_has_ip(dump: &Value, ip: &str) -> bool {
    dump.as_array().into_iter().flatten().any(|d| d["addr"].as_str() == Some(ip))
}

fn has_pod(dump: &Value, ip: &str) -> bool {
    dump.as_array().into_iter().flatten().any(|d| d["pod"].as_str() == Some(ip))
}

/// Whether each of echo-1's inbound and exclusion maps holds an entry for it.
fn inbound_entries(bed: &mesh_tests::TestBed, ip: &str, cookie: u64) -> anyhow::Result<[bool; 4]> {
    Ok([
        has_pod(&bed.map_dump("node1", "INBOUND")?, ip),
        has_pod(&bed.map_dump("node1", "INBOUND_PORTS")?, ip),
        has_pod(&bed.map_dump("node1", "INBOUND_LISTENERS")?, ip),
        pods_has_cookie(&bed.map_dump("node1", "OUTBOUND_EXCLUDED_PORTS")?, cookie),
    ])
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
    // Enroll again with every kind of per-pod entry.
    bed.enroll_with(&echo1, json!({
        "peer_authentication": "STRICT",
        "port_level_mtls": {"9090": "PERMISSIVE"},
        "annotations": {
            "traffic.sidecar.istio.io/excludeInboundPorts": "8081",
            "traffic.sidecar.istio.io/excludeOutboundPorts": "5432",
        },
    }))?;
    assert_eq!(inbound_entries(bed, &echo1.ip, cookie)?, [true; 4], "INBOUND, INBOUND_PORTS, INBOUND_LISTENERS, OUTBOUND_EXCLUDED_PORTS");
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
    assert_eq!(inbound_entries(bed, &echo1.ip, cookie)?, [false; 4], "INBOUND, INBOUND_PORTS, INBOUND_LISTENERS, OUTBOUND_EXCLUDED_PORTS");
    bed.wait_for_workload_gone("node1", &echo1.ip)?;
    // The client is still enrolled.
    let client_cookie = scene.client.netns_cookie()?;
    assert!(pods_has_cookie(&bed.map_dump("node1", "PODS")?, client_cookie));
    scene.finish();
    Ok(())
}
