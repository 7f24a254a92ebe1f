//! A hand-over that fails leaves the running agent serving: a new agent for another
//! node is refused at hello; a new agent that cannot get certificates gives up after
//! it received the pods (the running agent had frozen enrollment and sent its
//! sockets). Each exits with an error that says why, no request of the load running
//! meanwhile fails, and the running agent still enrolls pods and hands over later.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use mesh_tests::scenario::{curl_ok, Options, Scene};
use mesh_tests::{binary, require_root};

/// Runs a new agent for node1 with `changes` applied to its arguments; returns what it
/// printed once it exited (it must fail).
fn failing_successor(scene: &Scene, changes: &[(&str, &str)]) -> Result<String> {
    let mut args = scene.bed.agent_args("node1", 0)?;
    for change in changes {
        let i = args.iter().position(|a| a == change.0).with_context(|| format!("no {} argument", change.0))?;
        args[i + 1] = change.1.to_string();
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = mesh_tests::proc::run(&args, None, None, Duration::from_secs(60))?;
    let text = mesh_tests::proc::strip_ansi(&format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    ensure!(!out.status.success(), "the new agent with {changes:?} did not fail:\n{text}");
    Ok(text)
}

#[test]
fn a_failed_hand_over_leaves_the_running_agent_serving() -> Result<()> {
    if !require_root("restart_handover_fails") {
        return Ok(());
    }
    let mut scene = Scene::start("restart-handover-fails", Options { second_node: false, outsider: false })?;
    let (client, echo1) = (scene.client.clone(), scene.echo1.clone());
    let rr_bin = binary("mesh-rr")?;
    let rr_bin = rr_bin.to_str().context("path")?;
    let _server = echo1.spawn(&[rr_bin, "server", "--port", "7000"])?;
    echo1.wait_listening(7000, Duration::from_secs(10))?;
    let addr = format!("{}:7000", echo1.ip);
    let mut load = client.spawn(&[rr_bin, "client", "--addr", &addr, "--connect-each", "--keep-going", "--count", "100000000", "--seconds", "8"])?;
    std::thread::sleep(Duration::from_millis(500));

    // node9's own token: the control plane serves it, the running agent refuses it.
    let token9 = scene.bed.node_token_file("node9")?;
    let wrong_node = failing_successor(&scene, &[("--node", "node9"), ("--node-token-file", token9.to_str().context("path")?)])?;
    ensure!(
        wrong_node.contains("hand-over refused by the running agent") && wrong_node.contains("give each node its own --handover-socket"),
        "unclear error for the wrong node:\n{wrong_node}"
    );
    let no_ca = failing_successor(&scene, &[("--ca-address", "http://127.0.0.1:9")])?;
    ensure!(
        no_ca.contains("not taking over from the running agent, which keeps serving") && no_ca.contains("no certificate for"),
        "unclear error without a CA:\n{no_ca}"
    );
    mesh_tests::wait_until("the running agent to log both failures", Duration::from_secs(10), || {
        Ok((scene.bed.agent_log("node1").matches("hand-over failed:").count() == 2).then_some(()))
    })?;
    mesh_tests::wait_until("the running agent restoring its attachments", Duration::from_secs(10), || {
        Ok(scene.bed.agent_log("node1").contains("kernel attachments restored after the failed hand-over").then_some(()))
    })?;

    let st = load.wait_timeout(Duration::from_secs(30)).context("load did not finish")?;
    let out = load.output();
    ensure!(st.success() && out.contains("\"failed\":0"), "requests failed during the failed hand-overs: {out}");
    // Still the agent of the node: CNI, data path, and a later hand-over.
    scene.bed.enroll(&echo1)?;
    assert_eq!(curl_ok(&client, &format!("http://{}:8080/", echo1.ip), 5)?.trim(), "hello from echo-1");
    scene.bed.restart_agent_graceful("node1")?;
    assert_eq!(curl_ok(&client, &format!("http://{}:8080/", echo1.ip), 5)?.trim(), "hello from echo-1");
    drop(scene.servers.drain(..));
    scene.finish();
    Ok(())
}
