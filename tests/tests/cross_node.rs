//! Client on node1 → echo-2 on node2 by pod IP: works, and the wire between the nodes
//! carries HBONE (port 15008) and never the plaintext request.

use std::time::Duration;

use mesh_tests::require_root;
use mesh_tests::scenario::{curl_ok, Options, Scene};

#[test]
fn cross_node_is_encrypted_on_the_wire() -> anyhow::Result<()> {
    if !require_root("cross_node") {
        return Ok(());
    }
    let scene = Scene::start("cross-node", Options { second_node: true, outsider: false })?;
    let echo2 = scene.echo2.clone().expect("echo-2");
    let bed = &scene.bed;
    let pcap = bed.work.join("fab0.pcap");
    let pcap_s = pcap.to_str().unwrap().to_string();
    let mut tcpdump = bed.spawn_in_node("node1", &["tcpdump", "-i", "fab0", "-n", "-U", "--immediate-mode", "-s", "0", "-c", "2000", "-w", &pcap_s, "tcp"])?;
    mesh_tests::wait_until("tcpdump listening", Duration::from_secs(10), || Ok(tcpdump.output().contains("listening on").then_some(())))?;

    let url = format!("http://{}:8080/", echo2.ip);
    let body = curl_ok(&scene.client, &url, 5)?;
    assert_eq!(body.trim(), "hello from echo-2");
    assert!(scene.server_output("echo-2").contains("GET / HTTP/1.1"));

    // libpcap hands packets over in blocks; give the last block time to arrive.
    std::thread::sleep(Duration::from_millis(1200));
    tcpdump.signal(libc::SIGINT);
    tcpdump.wait_timeout(Duration::from_secs(5));
    drop(tcpdump);

    let bytes = std::fs::read(&pcap)?;
    let read = bed.run_in_node("node1", &["tcpdump", "-n", "-r", &pcap_s, "tcp port 15008"])?;
    let hbone_packets = String::from_utf8_lossy(&read.stdout).lines().count();
    assert!(hbone_packets > 0, "no port-15008 packets between the nodes ({} bytes captured)", bytes.len());
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(b"GET /"), "plaintext request line seen on the wire between nodes");
    assert!(!contains(format!("Host: {}", echo2.ip).as_bytes()), "plaintext Host header seen on the wire");
    assert!(!contains(b"hello from echo-2"), "plaintext response seen on the wire");

    let client_id = scene.client.identity();
    mesh_tests::wait_until("outbound access log on node1", Duration::from_secs(5), || {
        Ok(bed.access_log("node1").iter().any(|l| mesh_tests::log_field(l, "src.identity").as_deref() == Some(client_id.as_str())).then_some(()))
    })?;
    scene.finish();
    Ok(())
}
