//! Bad input from agents: malformed gRPC frames, oversized requests, unknown types, an
//! agent that never ACKs and one that stops reading. Each ends or costs only its own
//! stream, with a status naming the problem, and the others keep getting every push.
use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::push::{get, metric, Raw};
use super::{start, Running, CONFIG};
use crate::controlplane::limits;
use crate::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use crate::proto::ADDRESS_TYPE_URL;

/// A gRPC message frame: compressed flag, big-endian length, message.
fn frame(compressed: u8, declared: u32, message: &[u8]) -> Vec<u8> {
    let mut f = vec![compressed];
    f.extend_from_slice(&declared.to_be_bytes());
    f.extend_from_slice(message);
    f
}

fn subscribe(node: &str, type_url: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(Node { id: node.into(), ..Default::default() }),
        type_url: type_url.into(),
        ..Default::default()
    }
}

type BodyTx = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// A delta ADS call over a raw HTTP/2 connection, with `node`'s token, whose request
/// body is whatever the test writes; `window` is the client's stream flow-control
/// window (a client that never reads stops the server's sending once it is full).
async fn raw_call(cp: &Running, node: &str, window: u32) -> (BodyTx, http::Response<Incoming>) {
    let tcp = tokio::net::TcpStream::connect(&cp.addr).await.unwrap();
    let mut builder = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.initial_stream_window_size(window).adaptive_window(false);
    let (mut sender, conn) = builder.handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(16);
    let uri = format!("http://{}/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources", cp.addr);
    let req = http::Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {}", cp.tokens.issue(node).unwrap()))
        .body(StreamBody::new(ReceiverStream::new(rx)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(3), sender.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    (tx, resp)
}

/// Reads the response to its end: the messages, and the status in its trailers.
async fn finish(resp: http::Response<Incoming>) -> (Vec<DeltaDiscoveryResponse>, tonic::Status) {
    if let Some(s) = tonic::Status::from_header_map(resp.headers()) {
        return (Vec::new(), s);
    }
    let (mut body, mut data) = (resp.into_body(), Vec::new());
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(3), body.frame())
            .await
            .expect("the server ends the stream within 3 s")
            .expect("trailers before the end")
            .expect("a readable response");
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => {
                let trailers = f.into_trailers().expect("data or trailers");
                let status = tonic::Status::from_header_map(&trailers).expect("grpc-status in the trailers");
                let mut messages = Vec::new();
                let mut rest = &data[..];
                while rest.len() >= 5 {
                    let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
                    messages.push(DeltaDiscoveryResponse::decode(&rest[5..5 + len]).unwrap());
                    rest = &rest[5 + len..];
                }
                return (messages, status);
            }
        }
    }
}

/// The `/debug/syncz` row of `node`'s agent, if connected.
async fn syncz_of(cp: &Running, node: &str) -> Option<serde_json::Value> {
    let (_, body) = get(&cp.admin, "/debug/syncz").await;
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    doc["agents"].as_array().unwrap().iter().find(|a| a["node"] == node).cloned()
}

/// Moves the echo pod to `ip`: a change to every node's Address scope.
fn move_echo(cp: &Running, ip: &str) {
    std::fs::write(cp.config.path().join("demo.yaml"), CONFIG.replace("10.0.0.6", ip)).unwrap();
}

/// The next Address push to `good`, which must come within `within` of the change.
async fn push_within(good: &mut Raw, within: Duration) -> DeltaDiscoveryResponse {
    let t = Instant::now();
    let push = good.next_of(ADDRESS_TYPE_URL).await;
    assert!(t.elapsed() < within, "a well-behaved agent waited {:?} for a push", t.elapsed());
    good.answer(&push, None).await;
    push
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_end_only_their_stream_with_a_clear_status() {
    let cp = start(&[("demo.yaml", CONFIG)]).await;
    let mut good = Raw::connect(&cp, "node1").await;
    let valid = subscribe("node2", ADDRESS_TYPE_URL).encode_to_vec();
    use tonic::Code::{Internal, OutOfRange};
    // What is sent, whether the request ends there, the status, and answers before it.
    type Case = (&'static str, Vec<u8>, bool, tonic::Code, &'static str, usize);
    let cases: Vec<Case> = vec![
        ("garbage", frame(0, 8, &[0xff; 8]), false, Internal, "failed to decode Protobuf message", 0),
        ("truncated", frame(0, 100, &[0; 10]), true, Internal, "Unexpected EOF decoding stream", 0),
        ("huge length", frame(0, u32::MAX, &[]), false, OutOfRange, "requests are limited to 4194304 bytes, MAX_REQUEST_BYTES", 0),
        ("compressed", frame(1, 2, &[0x0a, 0x00]), false, Internal, "compressed-flag but no grpc-encoding", 0),
        (
            "garbage after a subscription",
            [frame(0, valid.len() as u32, &valid), frame(0, 3, &[0xff; 3])].concat(),
            false,
            Internal,
            "failed to decode Protobuf message",
            1,
        ),
    ];
    for (what, bytes, end, code, want, answered) in cases {
        let (tx, resp) = raw_call(&cp, "node2", 65_535).await;
        tx.send(Ok(Frame::data(Bytes::from(bytes)))).await.unwrap();
        // Unless the request ends, it stays open: the server ends the call on its own.
        let _open = (!end).then_some(tx);
        let (messages, status) = finish(resp).await;
        assert_eq!(status.code(), code, "{what}: {status:?}");
        let msg = status.message();
        assert!(msg.starts_with("the control plane cannot read this agent's delta ADS request"), "{what}: {msg}");
        assert!(msg.contains(want), "{what}: {msg}");
        assert_eq!(messages.len(), answered, "{what}: {messages:?}");
    }

    // The well-behaved agent was not disturbed, and the bad ones are gone.
    move_echo(&cp, "10.0.0.7");
    push_within(&mut good, Duration::from_secs(3)).await;
    assert!(syncz_of(&cp, "node2").await.is_none(), "a refused stream is still listed");
    let (_, metrics) = get(&cp.admin, "/metrics").await;
    assert_eq!(metric(&metrics, "mesh_cp_connected_agents "), Some(1.0), "{metrics}");
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_naming_the_limit() {
    let cp = start(&[("demo.yaml", CONFIG)]).await;
    let mut good = Raw::connect(&cp, "node1").await;
    let refused = |req: DeltaDiscoveryRequest| async {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", cp.addr)).await.unwrap();
        let call = client.delta_aggregated_resources(cp.authorized("node2", tokio_stream::iter(vec![req])));
        let mut stream = tokio::time::timeout(Duration::from_secs(5), call).await.unwrap().unwrap().into_inner();
        tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap_err()
    };
    let version = "0123456789abcdef".to_string();

    // Over 4 MiB: a resume naming 100,000 resources with long names.
    let mut big = subscribe("node2", ADDRESS_TYPE_URL);
    big.initial_resource_versions = (0..100_000).map(|i| (format!("Kubernetes//Pod/some-namespace/pod-{i:08}"), version.clone())).collect();
    assert!(big.encoded_len() > limits::MAX_REQUEST_BYTES);
    let s = refused(big).await;
    assert_eq!(s.code(), tonic::Code::OutOfRange, "{s:?}");
    assert!(s.message().contains("requests are limited to 4194304 bytes, MAX_REQUEST_BYTES"), "{}", s.message());

    // Under 4 MiB but 250,000 made-up names.
    let mut many = subscribe("node2", ADDRESS_TYPE_URL);
    many.initial_resource_versions = (0..250_000).map(|i| (format!("{i:x}"), String::new())).collect();
    assert!(many.encoded_len() < limits::MAX_REQUEST_BYTES);
    let s = refused(many).await;
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("names 250000 resources") && s.message().contains("at most 200000 (MAX_RESUME_NAMES)"), "{}", s.message());

    // A type URL of 10 KB.
    let s = refused(subscribe("node2", &"t".repeat(10_000))).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("at most 256 (MAX_TYPE_URL_BYTES)"), "{}", s.message());

    // A NACK whose reason is 1 MB: kept cut to 4 KiB.
    move_echo(&cp, "10.0.0.7");
    let push = good.next_of(ADDRESS_TYPE_URL).await;
    let name = push.resources[0].name.clone();
    let reason = format!("{name}: {}", "x".repeat(1 << 20));
    good.answer(&push, Some(&reason)).await;
    let mut kept = String::new();
    for _ in 0..100 {
        let row = syncz_of(&cp, "node1").await.unwrap();
        if let Some(r) = row["types"][ADDRESS_TYPE_URL]["nacks"][&name]["reason"].as_str() {
            kept = r.to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(kept.starts_with(&format!("{name}: xxx")), "{kept:.80}");
    assert!(kept.len() <= limits::MAX_NACK_REASON_BYTES + 40, "{} bytes kept", kept.len());
    assert!(kept.ends_with(&format!("(cut from {} bytes)", reason.len())), "{}", &kept[kept.len() - 40..]);

    // The well-behaved agent is still served.
    move_echo(&cp, "10.0.0.8");
    push_within(&mut good, Duration::from_secs(3)).await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_are_answered_once_each_and_bounded() {
    let cp = start(&[("demo.yaml", CONFIG)]).await;
    let (tx, rx) = mpsc::channel(64);
    let cluster = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    tx.send(subscribe("node1", cluster)).await.unwrap();
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", cp.addr)).await.unwrap();
    let mut stream = client.delta_aggregated_resources(cp.authorized("node1", ReceiverStream::new(rx))).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(3), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.type_url, cluster);
    assert!(first.resources.is_empty() && first.removed_resources.is_empty() && !first.nonce.is_empty());
    // Asked again, and ACKed: nothing more.
    tx.send(subscribe("node1", cluster)).await.unwrap();
    tx.send(DeltaDiscoveryRequest { type_url: cluster.into(), response_nonce: first.nonce, ..Default::default() }).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), stream.message()).await.is_err(), "an unknown type was answered twice");

    // 31 more distinct ones are answered; the next ends the stream naming the limit.
    for i in 1..limits::MAX_UNKNOWN_TYPES {
        tx.send(subscribe("node1", &format!("type.googleapis.com/made.up.T{i}"))).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(3), stream.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(r.type_url, format!("type.googleapis.com/made.up.T{i}"));
    }
    tx.send(subscribe("node1", "type.googleapis.com/made.up.OneTooMany")).await.unwrap();
    let s = tokio::time::timeout(Duration::from_secs(3), stream.message()).await.unwrap().unwrap_err();
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("more than 32 types this control plane does not serve (MAX_UNKNOWN_TYPES)"), "{}", s.message());
    assert!(s.message().contains("made.up.OneTooMany") && s.message().contains(ADDRESS_TYPE_URL), "{}", s.message());
    cp.stop().await;
}

/// An agent that reads every push and ACKs none: at most 64 are remembered for it, it
/// shows as not in sync, and a well-behaved agent gets every change promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_acks_costs_at_most_64_pushes() {
    let cp = start(&[("demo.yaml", CONFIG)]).await;
    let mut good = Raw::connect(&cp, "node1").await;
    let mut silent = Raw::connect(&cp, "node2").await;
    for i in 0..70 {
        move_echo(&cp, &format!("10.0.1.{i}"));
        let push = push_within(&mut good, Duration::from_secs(1)).await;
        assert!(push.resources.iter().any(|r| r.name == "Kubernetes//Pod/demo/echo"), "change {i}: {push:?}");
        let unanswered = silent.next().await.expect("the silent agent is still pushed to");
        assert_eq!(unanswered.type_url, ADDRESS_TYPE_URL);
    }
    let mut rows = (serde_json::Value::Null, serde_json::Value::Null);
    for _ in 0..100 {
        rows = (syncz_of(&cp, "node1").await.unwrap(), syncz_of(&cp, "node2").await.unwrap());
        if rows.0["types"][ADDRESS_TYPE_URL]["in_sync"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (good_row, silent_row) = (&rows.0["types"][ADDRESS_TYPE_URL], &rows.1["types"][ADDRESS_TYPE_URL]);
    assert_eq!(good_row["in_sync"], true, "{good_row}");
    assert_eq!(good_row["unanswered"], 0, "{good_row}");
    assert_eq!(silent_row["in_sync"], false, "{silent_row}");
    assert_eq!(silent_row["unanswered"], 64, "{silent_row}");
    assert!(silent_row["last_sent_nonce"].as_u64().unwrap() >= silent_row["last_acked_nonce"].as_u64().unwrap() + 70);
    cp.stop().await;
}

/// Agents that stop reading their stream (flow control full): each one's task waits,
/// having queued only a few responses, while a well-behaved agent gets every change
/// within 1 s; and once their turn for first answers passes, a new agent is served
/// although more of them than `FIRST_ANSWERS_AT_ONCE` (16) took one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_stop_reading_block_only_themselves() {
    let cp = start(&[("demo.yaml", CONFIG)]).await;
    let mut good = Raw::connect(&cp, "node1").await;
    let connected = Instant::now();
    let mut stuck = Vec::new();
    for i in 0..17 {
        // A 64-byte window: the first answers alone fill it.
        let (tx, resp) = raw_call(&cp, &format!("stuck{i}"), 64).await;
        for t in crate::controlplane::scope::TYPES {
            let m = subscribe(&format!("stuck{i}"), t).encode_to_vec();
            tx.send(Ok(Frame::data(Bytes::from(frame(0, m.len() as u32, &m))))).await.unwrap();
        }
        stuck.push((tx, resp));
    }
    for i in 0..12 {
        move_echo(&cp, &format!("10.0.2.{i}"));
        push_within(&mut good, Duration::from_secs(1)).await;
    }
    let before = sent_to_stuck(&cp, 17).await;
    for i in 12..17 {
        move_echo(&cp, &format!("10.0.2.{i}"));
        push_within(&mut good, Duration::from_secs(1)).await;
    }
    let after = sent_to_stuck(&cp, 17).await;
    // Blocked: 3 first answers, 4 in the channel, a few in flight; no more pushes made.
    assert_eq!(before, after, "pushes were made for agents that do not read");
    assert!(after.iter().all(|n| *n <= 12), "more than a few pushes queued for an agent that does not read: {after:?}");

    // Past the turn's deadline (5 s), a new agent gets its first answers.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(connected.elapsed())).await;
    let t = Instant::now();
    let _late = Raw::connect(&cp, "node3").await;
    assert!(t.elapsed() < Duration::from_secs(2), "a new agent waited {:?}", t.elapsed());
    let (_, metrics) = get(&cp.admin, "/metrics").await;
    assert_eq!(metric(&metrics, "mesh_cp_connected_agents "), Some(19.0), "the stuck agents stay connected");
    drop(stuck);
    cp.stop().await;
}

/// The last Address nonce sent to each of the agents `stuck0..stuck{n-1}`.
async fn sent_to_stuck(cp: &Running, n: usize) -> Vec<u64> {
    let mut sent = Vec::new();
    for i in 0..n {
        let row = syncz_of(cp, &format!("stuck{i}")).await.unwrap_or_else(|| panic!("stuck{i} is not connected"));
        sent.push(row["types"][ADDRESS_TYPE_URL]["last_sent_nonce"].as_u64().unwrap_or(0));
    }
    sent
}
