//! The control plane goes away: the agent keeps serving its last config and its
//! still-valid certificates (a renewal due during the outage fails and is retried),
//! says it is retrying, and once the control plane is back it catches up with what
//! changed and renews the certificates.

use std::time::Duration;

use mesh_tests::scenario::{curl_ok, Options, Scene, ECHO_VIP};
use mesh_tests::{require_root, TestBed};

const LATE_VIP: &str = "10.96.0.20";

#[test]
fn agent_survives_control_plane_outage_and_catches_up() -> anyhow::Result<()> {
    if !require_root("control_plane_down") {
        return Ok(());
    }
    // Certificates for 30 s: renewal is due 15 s after issue, during the outage.
    let mut bed = TestBed::new("cp-down")?;
    bed.control_plane_args = ["--cert-ttl", "30s"].map(String::from).to_vec();
    let mut scene = Scene::start_in(bed, Options { second_node: false, outsider: false })?;
    assert_eq!(curl_ok(&scene.client, &format!("http://{ECHO_VIP}/"), 5)?.trim(), "hello from echo-1");
    let client_id = scene.client.identity();
    let (before, expires) = scene.bed.certificate("node1", &client_id)?.expect("a certificate for the client");

    scene.bed.stop_control_plane().expect("control plane was running");
    mesh_tests::wait_until("agent reporting the lost control plane", Duration::from_secs(10), || {
        Ok(scene.bed.agent_log("node1").contains("cannot reach control plane").then_some(()))
    })?;
    // Last known good: traffic keeps flowing with the control plane down.
    for _ in 0..3 {
        assert_eq!(curl_ok(&scene.client, &format!("http://{ECHO_VIP}/"), 1)?.trim(), "hello from echo-1");
    }
    // The renewal fails; the certificate, still valid, keeps serving.
    mesh_tests::wait_until("a failed renewal while the CA is down", Duration::from_secs(25), || {
        let log = scene.bed.agent_log("node1");
        Ok(log.lines().any(|l| l.contains(&client_id) && l.contains("the current certificate keeps serving")).then_some(()))
    })?;
    assert_eq!(curl_ok(&scene.client, &format!("http://{ECHO_VIP}/"), 1)?.trim(), "hello from echo-1");
    assert_eq!(scene.bed.certificate("node1", &client_id)?, Some((before.clone(), expires)), "the certificate changed without a CA");

    // A change made while the agent cannot hear about it...
    let late = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: late\n  namespace: default\nspec:\n  clusterIP: {LATE_VIP}\n  selector:\n    app: echo\n  ports:\n    - port: 80\n      targetPort: 8080\n"
    );
    scene.bed.write_config("late.yaml", &late)?;
    // ...reaches it once the control plane is back.
    scene.bed.restart_control_plane()?;
    scene.bed.wait_for_service("node1", LATE_VIP, 1)?;
    assert_eq!(curl_ok(&scene.client, &format!("http://{LATE_VIP}/"), 5)?.trim(), "hello from echo-1");
    // The next retry renews, before the old certificate expires.
    let renewed = mesh_tests::wait_until("the certificate renewed once the CA is back", Duration::from_secs(20), || {
        Ok(scene.bed.certificate("node1", &client_id)?.filter(|(serial, _)| *serial != before))
    })?;
    assert!(renewed.1 > expires, "the renewed certificate expires at {} <= {expires}", renewed.1);
    assert_eq!(curl_ok(&scene.client, &format!("http://{ECHO_VIP}/"), 3)?.trim(), "hello from echo-1");
    scene.finish();
    Ok(())
}
