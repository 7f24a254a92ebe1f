//! Two pods as network namespaces joined by a veth pair, each with a real `PodProxy`:
//! a connection captured in pod a reaches an echo server in pod b over HBONE (mTLS +
//! HTTP/2 CONNECT); wrong identities are refused on both sides.
//!
//! Needs root (network namespaces). Without root it fails when `CI=true`, and
//! otherwise says it did nothing.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use mesh_agent::identity::WorkloadCert;
use mesh_agent::netns;
use mesh_agent::proxy::{self, CertSource, EnrolledPod, OrigDstLookup, PodProxy, ProxyInputs};
use mesh_agent::state::{Identity, State, TunnelProtocol, Workload};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Deletes the test's namespaces (and with them the veth pair) however the test ends.
struct Netns {
    names: Vec<String>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).stderr(std::process::Stdio::null()).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip(8)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Issues workload certificates for any identity from a test CA: a root and an
/// intermediate under it that signs (as with a plugged-in `ca-cert.pem`), so every
/// handshake here also proves that chains with an intermediate verify.
struct TestCa {
    root: rcgen::Certificate,
    cert: rcgen::Certificate,
    key: KeyPair,
    issued: Mutex<HashMap<Identity, Arc<WorkloadCert>>>,
}

impl TestCa {
    fn new() -> Self {
        let ca_params = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
            p
        };
        let root_key = KeyPair::generate().unwrap();
        let root = ca_params("mesh hbone test root").self_signed(&root_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = ca_params("mesh hbone test intermediate").signed_by(&key, &root, &root_key).unwrap();
        TestCa { root, cert, key, issued: Default::default() }
    }

    fn issue(&self, id: &Identity) -> Arc<WorkloadCert> {
        let mut issued = self.issued.lock().unwrap();
        issued
            .entry(id.clone())
            .or_insert_with(|| {
                let key = KeyPair::generate().unwrap();
                let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
                p.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
                p.extended_key_usages =
                    vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
                let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
                Arc::new(WorkloadCert {
                    identity: id.clone(),
                    cert_chain: vec![cert.der().clone(), self.cert.der().clone()],
                    private_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                    roots: vec![self.root.der().clone()],
                    not_after: SystemTime::now() + Duration::from_secs(3600),
                })
            })
            .clone()
    }
}

impl CertSource for TestCa {
    fn fetch(&self, id: &Identity) -> BoxFuture<'_, Result<Arc<WorkloadCert>, String>> {
        let cert = self.issue(id);
        Box::pin(async move { Ok(cert) })
    }
}

/// Every captured connection "was headed" to the echo server.
struct AlwaysTo(SocketAddr);

impl OrigDstLookup for AlwaysTo {
    fn lookup(&self, _cookie: u64, _port: u16, _ipv6: bool) -> Option<SocketAddr> {
        Some(self.0)
    }
}

fn identity(sa: &str) -> Identity {
    format!("spiffe://cluster.local/ns/default/sa/{sa}").parse().unwrap()
}

fn workload(name: &str, sa: &str, ip: IpAddr) -> Workload {
    Workload {
        uid: format!("Kubernetes//Pod/default/{name}"),
        name: name.into(),
        namespace: "default".into(),
        service_account: sa.into(),
        trust_domain: "cluster.local".into(),
        node: "node1".into(),
        addresses: vec![ip],
        protocol: TunnelProtocol::Hbone,
        labels: Default::default(),
        healthy: true,
    }
}

fn pod(name: &str, ip: IpAddr, ns: &str) -> EnrolledPod {
    EnrolledPod {
        uid: format!("Kubernetes//Pod/default/{name}"),
        namespace: "default".into(),
        name: name.into(),
        service_account: name.into(),
        ips: vec![ip],
        netns: PathBuf::from(format!("/run/netns/{ns}")),
        identity: identity(name),
        inbound: Default::default(),
    }
}

/// Connects from inside `ns` to `addr`, sends `msg`, and returns what came back
/// before the other side closed (or the error).
async fn round_trip(ns: &std::path::Path, addr: SocketAddr, msg: &[u8]) -> Result<Vec<u8>, String> {
    let ns2 = ns.to_owned();
    let sock = tokio::task::spawn_blocking(move || {
        netns::run_in(&ns2, || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
    })
    .await
    .unwrap()
    .map_err(|e| e.to_string())?;
    let sock = tokio::net::TcpSocket::from_std_stream(sock.into());
    let mut s = sock.connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    s.write_all(msg).await.map_err(|e| e.to_string())?;
    let mut got = vec![0u8; msg.len()];
    let mut n = 0;
    while n < got.len() {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut got[n..])).await {
            Err(_) => return Err("timed out waiting for the echo".into()),
            Ok(Ok(0)) => break,
            Ok(Ok(k)) => n += k,
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
    got.truncate(n);
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbone_between_two_pods() {
    if !mesh_tests::require_root("hbone_between_two_pods") {
        return;
    }
    let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();

    let pid = std::process::id();
    let (na, nb) = (format!("mesh-hbone-test-{pid}-a"), format!("mesh-hbone-test-{pid}-b"));
    let guard = Netns { names: vec![na.clone(), nb.clone()] };
    drop(Netns { names: guard.names.clone() }); // leftovers from an earlier run with our pid
    let x = pid % 250 + 1;
    let (ip_a, ip_b): (IpAddr, IpAddr) =
        (format!("10.250.{x}.1").parse().unwrap(), format!("10.250.{x}.2").parse().unwrap());
    let (va, vb) = (format!("mh{pid}a"), format!("mh{pid}b"));
    ip(&["netns", "add", &na]);
    ip(&["netns", "add", &nb]);
    ip(&["link", "add", &va, "netns", &na, "type", "veth", "peer", "name", &vb, "netns", &nb]);
    for (ns, dev, addr) in [(&na, &va, ip_a), (&nb, &vb, ip_b)] {
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    // The application in pod b: a TCP echo server on 10.250.x.2:7777.
    let echo_addr = SocketAddr::new(ip_b, 7777);
    let std_listener =
        netns::run_in(&PathBuf::from(format!("/run/netns/{nb}")), || std::net::TcpListener::bind(echo_addr)).unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let echo = tokio::net::TcpListener::from_std(std_listener).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });

    let ca = Arc::new(TestCa::new());
    let state = State::default();
    state.upsert_workload(workload("a", "a", ip_a));
    state.upsert_workload(workload("b", "b", ip_b));
    let inputs = Arc::new(ProxyInputs {
        state,
        certs: ca.clone(),
        orig_dst: Arc::new(AlwaysTo(echo_addr)),
        node: "node1".into(),
        authz: Default::default(),
        path_normalization: Default::default(),
    });
    let (pod_a, pod_b) = (pod("a", ip_a, &na), pod("b", ip_b, &nb));
    let proxy_a = PodProxy::start(inputs.clone(), pod_a.clone()).await.expect("starting pod a's proxy");
    let _proxy_b = PodProxy::start(inputs.clone(), pod_b.clone()).await.expect("starting pod b's proxy");
    assert_ne!(proxy_a.netns_cookie(), _proxy_b.netns_cookie());
    let outbound: SocketAddr = "127.0.0.1:15001".parse().unwrap();

    // 1. A captured connection from a reaches b's echo server over HBONE, twice (the
    //    second reuses the pooled HTTP/2 connection).
    for msg in [&b"hello over hbone"[..], &b"and again"[..]] {
        let got = round_trip(&pod_a.netns, outbound, msg).await;
        assert_eq!(got.as_deref(), Ok(msg), "echo through the mesh");
    }

    // 2. The client side refuses a server that does not present the identity the
    //    control plane gives the destination: a's view says b runs as "impostor".
    proxy_a.shutdown_wait().await;
    let wrong_view = State::default();
    wrong_view.upsert_workload(workload("a", "a", ip_a));
    wrong_view.upsert_workload(workload("b", "impostor", ip_b));
    let inputs_wrong = Arc::new(ProxyInputs {
        state: wrong_view,
        certs: ca.clone(),
        orig_dst: Arc::new(AlwaysTo(echo_addr)),
        node: "node1".into(),
        authz: Default::default(),
        path_normalization: Default::default(),
    });
    let proxy_a = PodProxy::start(inputs_wrong, pod_a.clone()).await.expect("restarting pod a's proxy");
    let got = round_trip(&pod_a.netns, outbound, b"should not arrive").await;
    assert!(matches!(&got, Ok(v) if v.is_empty()) || got.is_err(), "wrong server identity accepted: {got:?}");
    proxy_a.shutdown_wait().await;

    // 3. The server side refuses a caller whose certificate is not the identity of its
    //    source address: pod a's address dialing with an "impostor" certificate.
    let (_keep, drain) = tokio::sync::watch::channel(());
    let impostor = identity("impostor");
    let src = proxy::hbone::Source { identity: &impostor, netns: &pod_a.netns };
    let hbone_b = SocketAddr::new(ip_b, proxy::HBONE_PORT);
    let sender = proxy::hbone::dial(&*ca, &src, hbone_b, &identity("b"), drain).await.expect("mTLS to b");
    match proxy::hbone::connect_tunnel(sender.clone(), hbone_b, echo_addr).await {
        Err(proxy::Error::Refused { status, reason, .. }) => {
            assert_eq!(status, http::StatusCode::FORBIDDEN);
            assert!(reason.contains("belongs to default/a"), "{reason}");
        }
        other => panic!("impostor caller not refused: {:?}", other.map(|_| "tunnel")),
    }

    // 4. A CONNECT to an address that is not the pod's is a bad request (a as itself).
    let src = proxy::hbone::Source { identity: &pod_a.identity, netns: &pod_a.netns };
    let (_keep2, drain) = tokio::sync::watch::channel(());
    let sender = proxy::hbone::dial(&*ca, &src, hbone_b, &identity("b"), drain).await.expect("mTLS to b");
    let elsewhere = SocketAddr::new(ip_a, 7777);
    match proxy::hbone::connect_tunnel(sender, hbone_b, elsewhere).await {
        Err(proxy::Error::Refused { status, .. }) => assert_eq!(status, http::StatusCode::BAD_REQUEST),
        other => panic!("CONNECT to another pod's address not refused: {:?}", other.map(|_| "tunnel")),
    }
    drop(guard);
}
