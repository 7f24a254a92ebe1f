//! A broken YAML file in the config folder: the control plane names the file and the
//! line, and keeps serving the last good config, so traffic keeps working.

use std::time::Duration;

use mesh_tests::require_root;
use mesh_tests::scenario::{curl_ok, Options, Scene, ECHO_VIP};

#[test]
fn bad_yaml_is_reported_and_traffic_keeps_working() -> anyhow::Result<()> {
    if !require_root("bad_config") {
        return Ok(());
    }
    let scene = Scene::start("bad-config", Options { second_node: false, outsider: false })?;
    let bed = &scene.bed;
    assert_eq!(curl_ok(&scene.client, &format!("http://{ECHO_VIP}/"), 5)?.trim(), "hello from echo-1");

    // Line 5 has an unclosed flow sequence.
    let bad = "apiVersion: v1\nkind: Service\nmetadata:\n  name: broken\n  labels: [unclosed\n  namespace: default\n";
    bed.write_config("zz-broken.yaml", bad)?;
    let line = mesh_tests::wait_until("control plane error naming zz-broken.yaml", Duration::from_secs(10), || {
        let log = bed.control_plane_log();
        let lines: Vec<&str> = log.lines().collect();
        // The message may continue on the next lines ("caused by: ... line 5").
        Ok(lines.iter().position(|l| l.contains("zz-broken.yaml")).map(|i| lines[i..(i + 4).min(lines.len())].join("\n")))
    })?;
    let lower = line.to_lowercase();
    let numbered = line
        .split("zz-broken.yaml")
        .nth(1)
        .map(|rest| rest.starts_with(':') && rest[1..].starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(false);
    assert!(numbered || lower.contains("line"), "error does not give a line number: {line}");
    assert!(lower.contains("error") || lower.contains("warn") || lower.contains("invalid"), "not reported as an error: {line}");

    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        assert_eq!(curl_ok(&scene.client, &format!("http://{ECHO_VIP}/"), 3)?.trim(), "hello from echo-1");
    }
    bed.wait_for_service("node1", ECHO_VIP, 1)?;
    scene.finish();
    Ok(())
}
