//! A Kubernetes API server stand-in for tests: real HTTP/1.1 on 127.0.0.1, the list/watch
//! protocol as kube-rs speaks it, over an in-memory store the test changes.
//!
//! - `GET /api/v1/<plural>` and `GET /apis/<group>/<version>/<plural>` (all namespaces):
//!   a `<Kind>List` with `metadata.resourceVersion`.
//! - the same with `watch=true&resourceVersion=N`: a chunked stream of JSON lines
//!   (`ADDED`/`MODIFIED`/`DELETED`, `BOOKMARK` when `allowWatchBookmarks=true` and the test
//!   asks for one), starting after N; an `ERROR` event with code 410 ("too old resource
//!   version") when N is older than the last compaction.
//!
//! One resourceVersion counter for all kinds, like etcd's revision. The test can compact
//! the history, close every open watch, and hold new watches back (a disconnected gap).
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub query: BTreeMap<String, String>,
}

impl Request {
    pub fn is_watch(&self) -> bool {
        self.query.get("watch").is_some_and(|w| w == "true" || w == "1")
    }
}

struct Event {
    rv: u64,
    path: String,
    kind: &'static str,
    object: Value,
}

struct Watcher {
    path: String,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Collection path -> `namespace/name` -> object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// Collection path -> (apiVersion, kind).
    kinds: BTreeMap<String, (String, String)>,
    log: Vec<Event>,
    /// A watch from a version older than this gets 410 Gone.
    compacted: u64,
    watchers: Vec<Watcher>,
    requests: Vec<Request>,
    /// Collection paths answered with 404, as for a CRD that is not installed.
    missing: Vec<String>,
}

/// The running stand-in; dropping it stops the server.
pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    gate: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `/api/v1/pods` for `v1` `Pod`, `/apis/security.istio.io/v1/authorizationpolicies`...
pub fn collection(api_version: &str, kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    // `policy` -> `policies`, `gateway` -> `gateways`.
    let plural = match lower.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'i', 'o', 'u']) => format!("{stem}ies"),
        _ => format!("{lower}s"),
    };
    if api_version.contains('/') {
        format!("/apis/{api_version}/{plural}")
    } else {
        format!("/api/{api_version}/{plural}")
    }
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

fn json_response(status: u16, v: &Value) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("static response parts")
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl ApiServer {
    pub async fn start() -> std::io::Result<ApiServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State { rv: 1, ..State::default() }));
        let (gate, gate_rx) = watch::channel(true);
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st = st.clone();
                let gate = gate_rx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        let gate = gate.clone();
                        async move { Ok::<_, Infallible>(handle(st, gate, req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });
        Ok(ApiServer { addr, state, gate, task })
    }

    /// `http://127.0.0.1:PORT`, the cluster URL for a kube client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates or replaces `object` (by apiVersion, kind, namespace, name); returns its resourceVersion.
    pub fn apply(&self, mut object: Value) -> u64 {
        let api_version = object["apiVersion"].as_str().unwrap_or("v1").to_string();
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let path = collection(&api_version, &kind);
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let meta = &mut object["metadata"];
        let key = format!("{}/{}", meta["namespace"].as_str().unwrap_or(""), meta["name"].as_str().unwrap_or(""));
        meta["resourceVersion"] = json!(rv.to_string());
        if meta["uid"].is_null() {
            meta["uid"] = json!(format!("uid-{rv}"));
        }
        if meta["creationTimestamp"].is_null() {
            meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        st.kinds.insert(path.clone(), (api_version, kind));
        let old = st.objects.entry(path.clone()).or_default().insert(key, object.clone());
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        st.publish(Event { rv, path, kind, object });
        rv
    }

    /// Deletes an object if it exists; returns whether it did.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let path = collection(api_version, kind);
        let mut st = self.lock();
        let Some(mut object) = st.objects.get_mut(&path).and_then(|m| m.remove(&format!("{namespace}/{name}"))) else {
            return false;
        };
        st.rv += 1;
        let rv = st.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.publish(Event { rv, path, kind: "DELETED", object });
        true
    }

    /// Forgets the history: a watch from any version before now gets 410 Gone.
    pub fn compact(&self) {
        let mut st = self.lock();
        st.compacted = st.rv;
        st.log.clear();
    }

    /// Ends every open watch stream cleanly (as the API server does at its timeout).
    pub fn drop_watches(&self) {
        self.lock().watchers.clear();
    }

    /// While held, new watch requests wait (a client cut off from the API server).
    pub fn hold_watches(&self, hold: bool) {
        self.gate.send_replace(!hold);
    }

    /// Sends a BOOKMARK with the current resourceVersion on every watch that allows them.
    pub fn bookmark(&self) -> u64 {
        let mut st = self.lock();
        let rv = st.rv;
        let kinds = st.kinds.clone();
        st.watchers.retain(|w| {
            if !w.bookmarks {
                return true;
            }
            let (api_version, kind) = kinds.get(&w.path).cloned().unwrap_or_default();
            let ev = json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind,
                "metadata": {"resourceVersion": rv.to_string()}}});
            w.tx.send(line(&ev)).is_ok()
        });
        rv
    }

    /// Answers 404 for `api_version` `kind` (as without its CRD), or serves it again.
    pub fn set_missing(&self, api_version: &str, kind: &str, missing: bool) {
        let path = collection(api_version, kind);
        let mut st = self.lock();
        st.missing.retain(|p| *p != path);
        if missing {
            st.missing.push(path);
        }
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// How many watch streams are open.
    pub fn open_watches(&self) -> usize {
        let mut st = self.lock();
        st.watchers.retain(|w| !w.tx.is_closed());
        st.watchers.len()
    }
}

impl State {
    fn publish(&mut self, ev: Event) {
        let msg = line(&json!({"type": ev.kind, "object": ev.object}));
        self.watchers.retain(|w| w.path != ev.path || w.tx.send(msg.clone()).is_ok());
        self.log.push(ev);
    }

    fn list(&self, path: &str) -> Value {
        let (api_version, kind) = self.kinds.get(path).cloned().unwrap_or_default();
        let items: Vec<Value> = self
            .objects
            .get(path)
            .into_iter()
            .flat_map(|m| m.values())
            .map(|o| {
                // As the real API server: list items carry no apiVersion/kind.
                let mut o = o.clone();
                if let Some(m) = o.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                o
            })
            .collect();
        json!({"apiVersion": api_version, "kind": format!("{kind}List"),
               "metadata": {"resourceVersion": self.rv.to_string()}, "items": items})
    }
}

async fn handle(state: Arc<Mutex<State>>, mut gate: watch::Receiver<bool>, req: hyper::Request<hyper::body::Incoming>) -> hyper::Response<Body> {
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let request = Request { path: path.clone(), query: query.clone() };
    let watch = request.is_watch();
    state.lock().unwrap_or_else(|e| e.into_inner()).requests.push(request);
    if req.method() != hyper::Method::GET {
        return json_response(405, &status(405, "MethodNotAllowed", "this stand-in only lists and watches"));
    }
    if state.lock().unwrap_or_else(|e| e.into_inner()).missing.contains(&path) {
        return json_response(404, &status(404, "NotFound", "the server could not find the requested resource"));
    }
    if !watch {
        let st = state.lock().unwrap_or_else(|e| e.into_inner());
        return json_response(200, &st.list(&path));
    }
    let _ = gate.wait_for(|open| *open).await;
    let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let (tx, rx) = mpsc::unbounded_channel();
    {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        if from == 0 {
            for o in st.objects.get(&path).into_iter().flat_map(|m| m.values()) {
                let _ = tx.send(line(&json!({"type": "ADDED", "object": o})));
            }
            st.watchers.push(Watcher { path, bookmarks, tx });
        } else if from < st.compacted {
            let msg = format!("too old resource version: {from} ({})", st.compacted);
            let _ = tx.send(line(&json!({"type": "ERROR", "object": status(410, "Expired", &msg)})));
            drop(tx);
        } else {
            for ev in st.log.iter().filter(|e| e.rv > from && e.path == path) {
                let _ = tx.send(line(&json!({"type": ev.kind, "object": ev.object})));
            }
            st.watchers.push(Watcher { path, bookmarks, tx });
        }
    }
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    hyper::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(StreamBody::new(frames).boxed())
        .expect("static response parts")
}
