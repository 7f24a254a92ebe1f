//! The control plane goes away: the agent keeps serving its last config, says it is
//! retrying, and once the control plane is back it catches up with what changed.

use std::time::Duration;

use mesh_tests::require_root;
use mesh_tests::scenario::{curl_ok, Options, Scene, ECHO_VIP};

const LATE_VIP: &str = "10.96.0.20";

#[test]
fn agent_survives_control_plane_outage_and_catches_up() -> anyhow::Result<()> {
    if !require_root("control_plane_down") {
        return Ok(());
    }
    let mut scene = Scene::start("cp-down", Options { second_node: false, outsider: false })?;
    assert_eq!(curl_ok(&scene.client, &format!("http://{ECHO_VIP}/"), 5)?.trim(), "hello from echo-1");

    scene.bed.stop_control_plane().expect("control plane was running");
    mesh_tests::wait_until("agent reporting the lost control plane", Duration::from_secs(10), || {
        Ok(scene.bed.agent_log("node1").contains("cannot reach control plane").then_some(()))
    })?;
    // Last known good: traffic keeps flowing with the control plane down.
    for _ in 0..3 {
        assert_eq!(curl_ok(&scene.client, &format!("http://{ECHO_VIP}/"), 1)?.trim(), "hello from echo-1");
    }

    // A change made while the agent cannot hear about it...
    let late = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: late\n  namespace: default\nspec:\n  clusterIP: {LATE_VIP}\n  selector:\n    app: echo\n  ports:\n    - port: 80\n      targetPort: 8080\n"
    );
    scene.bed.write_config("late.yaml", &late)?;
    // ...reaches it once the control plane is back.
    scene.bed.restart_control_plane()?;
    scene.bed.wait_for_service("node1", LATE_VIP, 1)?;
    assert_eq!(curl_ok(&scene.client, &format!("http://{LATE_VIP}/"), 5)?.trim(), "hello from echo-1");
    scene.finish();
    Ok(())
}
