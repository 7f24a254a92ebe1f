//! JWKS from `jwksUri`: fetched in the background per URI, refreshed periodically, and
//! on any failure the last good keys are kept and the fetch retried with backoff.
//!
//! A fetched document is accepted only when it is a 2xx answer within 5 s, at most
//! 1 MiB, UTF-8, and a JWKS with at least one usable key ([`crate::jwt::parse_jwks`]).
//! One HTTP/1.1 connection per fetch: refreshes are minutes apart, a pool buys nothing.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::rt::{Read, Write};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_rustls::TlsConnector;

use crate::jwt::{parse_jwks, JwksError, MAX_JWKS_BYTES};

/// A fetch that has not completed by then has failed.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The first retry after a failure; each further one waits twice as long, up to
/// [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why one fetch of a JWKS was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("not an http:// or https:// URL with a host")]
    BadUri,
    #[error("cannot connect to {host}:{port}: {source}; is the issuer reachable from this node?")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {host} failed: {source}; does its certificate chain to the configured roots?")]
    Tls {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange failed: {0}")]
    Http(#[source] hyper::Error),
    #[error("server answered {0}")]
    Status(StatusCode),
    #[error("body exceeds 1 MiB")]
    TooLarge,
    #[error("reading the body failed: {0}")]
    Body(String),
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("body is not a usable JWKS: {0}")]
    Jwks(#[source] JwksError),
    #[error("no complete answer within 5 s")]
    Timeout,
}

/// The last good JWKS of each `jwksUri` in use, kept fresh by one task per URI.
/// Cloning shares the cache; the tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct JwksCache {
    inner: Arc<Inner>,
}

struct Inner {
    refresh: Duration,
    backoff: (Duration, Duration),
    tls: TlsConnector,
    runtime: Handle,
    entries: Mutex<HashMap<String, Entry>>,
    changed: watch::Sender<u64>,
}

struct Entry {
    jwks: Option<Arc<String>>,
    task: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let entries = self.entries.get_mut().unwrap_or_else(|e| e.into_inner());
        entries.values().for_each(|e| e.task.abort());
    }
}

impl JwksCache {
    /// A cache refreshing each URI every `refresh` (Istio's istiod uses 20 minutes),
    /// using `client_tls` for https.
    ///
    /// # Panics
    /// Outside a Tokio runtime, whose handle it keeps to spawn the fetch tasks.
    pub fn new(refresh: Duration, client_tls: Arc<rustls::ClientConfig>) -> Self {
        Self::with_backoff(refresh, client_tls, (MIN_BACKOFF, MAX_BACKOFF))
    }

    fn with_backoff(refresh: Duration, client_tls: Arc<rustls::ClientConfig>, backoff: (Duration, Duration)) -> Self {
        let inner = Inner {
            refresh,
            backoff,
            tls: TlsConnector::from(client_tls),
            runtime: Handle::current(),
            entries: Mutex::default(),
            changed: watch::Sender::new(0),
        };
        JwksCache { inner: Arc::new(inner) }
    }

    /// The last good JWKS of `uri`, or `None` before its first successful fetch. The
    /// URI is remembered and fetched in the background from now on.
    pub fn get(&self, uri: &str) -> Option<Arc<String>> {
        let mut entries = self.inner.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get(uri) {
            return entry.jwks.clone();
        }
        let task = self.inner.runtime.spawn(keep_fresh(Arc::downgrade(&self.inner), uri.to_owned()));
        entries.insert(uri.to_owned(), Entry { jwks: None, task: task.abort_handle() });
        None
    }

    /// Bumped whenever the keys of any URI change (first fetch included).
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Stops fetching, and drops the keys of, every URI not in `uris`.
    pub fn forget_except(&self, uris: &HashSet<String>) {
        let mut entries = self.inner.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|uri, entry| {
            let keep = uris.contains(uri);
            if !keep {
                entry.task.abort();
            }
            keep
        });
    }
}

impl Inner {
    /// Stores a good fetch; announces it only when the document changed.
    fn store(&self, uri: &str, jwks: String) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = entries.get_mut(uri) else { return };
        if entry.jwks.as_deref() != Some(&jwks) {
            entry.jwks = Some(Arc::new(jwks));
            drop(entries);
            tracing::debug!(uri, "JWKS changed");
            self.changed.send_modify(|n| *n += 1);
        }
    }
}

/// Fetches `uri` until the cache forgets it or is dropped.
async fn keep_fresh(cache: Weak<Inner>, uri: String) {
    let mut backoff = None;
    loop {
        let Some(inner) = cache.upgrade() else { return };
        let wait = match fetch(&inner.tls, &uri).await {
            Ok(jwks) => {
                inner.store(&uri, jwks);
                backoff = None;
                inner.refresh
            }
            Err(e) => {
                let (min, max) = inner.backoff;
                let wait = backoff.map_or(min, |b: Duration| (b * 2).min(max));
                backoff = Some(wait);
                tracing::warn!(uri, "JWKS fetch failed, keeping the last good keys, retrying in {wait:?}: {e}");
                wait
            }
        };
        drop(inner);
        tokio::time::sleep(wait).await;
    }
}

/// One fetch of a JWKS, accepted only if usable.
pub async fn fetch(tls: &TlsConnector, uri: &str) -> Result<String, FetchError> {
    let body = tokio::time::timeout(FETCH_TIMEOUT, get(tls, uri)).await.map_err(|_| FetchError::Timeout)??;
    let text = String::from_utf8(body.to_vec()).map_err(|_| FetchError::NotUtf8)?;
    parse_jwks(&text).map_err(FetchError::Jwks)?;
    Ok(text)
}

async fn get(tls: &TlsConnector, uri: &str) -> Result<Bytes, FetchError> {
    let uri: Uri = uri.parse().map_err(|_| FetchError::BadUri)?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(FetchError::BadUri),
    };
    let host = uri.host().ok_or(FetchError::BadUri)?.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = (TcpStream::connect((host.as_str(), port)).await).map_err(|source| FetchError::Connect {
        host: host.clone(),
        port,
        source,
    })?;
    if !https {
        return exchange(TokioIo::new(tcp), &uri).await;
    }
    let name = ServerName::try_from(host.clone()).map_err(|_| FetchError::BadUri)?;
    let stream = tls.connect(name, tcp).await.map_err(|source| FetchError::Tls { host, source })?;
    exchange(TokioIo::new(stream), &uri).await
}

/// `GET uri` on a fresh HTTP/1.1 connection; the body of a 2xx answer, capped.
async fn exchange<IO: Read + Write + Unpin>(io: IO, uri: &Uri) -> Result<Bytes, FetchError> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(FetchError::Http)?;
    let authority = uri.authority().map_or("", |a| a.as_str());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::get(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|_| FetchError::BadUri)?;
    let answer = async move {
        let response = sender.send_request(request).await.map_err(FetchError::Http)?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        match Limited::new(response.into_body(), MAX_JWKS_BYTES).collect().await {
            Ok(body) => Ok(body.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(FetchError::TooLarge),
            Err(e) => Err(FetchError::Body(e.to_string())),
        }
    };
    // Drive the connection alongside; once the answer is read it is dropped (closed).
    tokio::pin!(conn);
    tokio::select! {
        biased;
        answer = answer => answer,
        Err(e) = &mut conn => Err(FetchError::Http(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::Full;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// What the test server answers now, and how many requests it has seen.
    #[derive(Default)]
    struct Server {
        answer: Mutex<(u16, String)>,
        hits: AtomicUsize,
    }

    impl Server {
        fn set(&self, status: u16, body: impl Into<String>) {
            *self.answer.lock().unwrap() = (status, body.into());
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    /// Serves `server` on 127.0.0.1, over TLS when `tls` is given; its base URL.
    async fn serve(server: Arc<Server>, tls: Option<tokio_rustls::TlsAcceptor>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let uri = match tls {
            Some(_) => format!("https://localhost:{port}/keys.json"),
            None => format!("http://127.0.0.1:{port}/keys.json"),
        };
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (server, tls) = (server.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        server.hits.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = server.answer.lock().unwrap().clone();
                        let response = hyper::Response::builder().status(status).body(Full::new(Bytes::from(body)));
                        async move { Ok::<_, Infallible>(response.unwrap()) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                            Err(_) => return,
                        },
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                    };
                });
            }
        });
        uri
    }

    fn jwks(n: &str) -> String {
        format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"{n}","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}}]}}"#
        )
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A client trusting `roots` (none: every server certificate is refused).
    fn client_tls(roots: &[rustls::pki_types::CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(roots.iter().cloned());
        let builder = rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions();
        Arc::new(builder.unwrap().with_root_certificates(store).with_no_client_auth())
    }

    fn tls() -> Arc<rustls::ClientConfig> {
        client_tls(&[])
    }

    /// A self-signed `localhost` server and its certificate.
    fn tls_server() -> (tokio_rustls::TlsAcceptor, rustls::pki_types::CertificateDer<'static>) {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(["localhost".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
        let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions();
        let config = builder.unwrap().with_no_client_auth().with_single_cert(vec![cert.der().clone()], key).unwrap();
        (tokio_rustls::TlsAcceptor::from(Arc::new(config)), cert.der().clone())
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn fetch_accepts_only_usable_jwks() {
        let server = Arc::new(Server::default());
        let uri = serve(server.clone(), None).await;
        let tls = TlsConnector::from(tls());
        server.set(200, jwks("a"));
        assert_eq!(fetch(&tls, &uri).await.unwrap(), jwks("a"));
        server.set(500, "oops");
        assert!(matches!(fetch(&tls, &uri).await, Err(FetchError::Status(s)) if s == 500));
        server.set(200, format!("{}{}", jwks("a"), " ".repeat(MAX_JWKS_BYTES)));
        assert!(matches!(fetch(&tls, &uri).await, Err(FetchError::TooLarge)));
        server.set(200, "<html>not json</html>");
        assert!(matches!(fetch(&tls, &uri).await, Err(FetchError::Jwks(JwksError::Json(_)))));
        server.set(200, r#"{"keys":[]}"#);
        assert!(matches!(fetch(&tls, &uri).await, Err(FetchError::Jwks(JwksError::NoUsableKey(0)))));
        assert!(matches!(fetch(&tls, "ftp://x/").await, Err(FetchError::BadUri)));
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        assert!(matches!(fetch(&tls, &format!("http://{closed}/")).await, Err(FetchError::Connect { .. })));
        // An https server that is really plain HTTP fails in the handshake, not later.
        let https = uri.replace("http://", "https://");
        assert!(matches!(fetch(&tls, &https).await, Err(FetchError::Tls { .. })));
    }

    #[tokio::test]
    async fn fetch_over_https() {
        let server = Arc::new(Server::default());
        let (acceptor, cert) = tls_server();
        let uri = serve(server.clone(), Some(acceptor)).await;
        server.set(200, jwks("a"));
        let trusting = TlsConnector::from(client_tls(&[cert]));
        assert_eq!(fetch(&trusting, &uri).await.unwrap(), jwks("a"));
        let untrusting = TlsConnector::from(tls());
        assert!(matches!(fetch(&untrusting, &uri).await, Err(FetchError::Tls { .. })));
        assert_eq!(server.hits(), 1, "nothing is requested over an untrusted connection");
    }

    #[tokio::test]
    async fn cache_refreshes_and_keeps_last_good_keys() {
        let server = Arc::new(Server::default());
        let uri = serve(server.clone(), None).await;
        let backoff = (Duration::from_millis(20), Duration::from_millis(40));
        let cache = JwksCache::with_backoff(Duration::from_millis(50), tls(), backoff);
        let changed = cache.changed();
        server.set(200, jwks("a"));

        assert_eq!(cache.get(&uri), None, "nothing before the first fetch");
        wait_until("first fetch", || cache.get(&uri).is_some()).await;
        assert_eq!(*cache.get(&uri).unwrap(), jwks("a"));
        assert_eq!(*changed.borrow(), 1);

        let hits = server.hits();
        wait_until("refreshes of the same keys", || server.hits() >= hits + 2).await;
        assert_eq!(*changed.borrow(), 1, "unchanged keys are not announced");

        server.set(200, jwks("b"));
        wait_until("refresh picks up the new key", || *changed.borrow() == 2).await;
        assert_eq!(*cache.get(&uri).unwrap(), jwks("b"));

        for (status, body) in [(500, "oops".to_owned()), (200, jwks("c").repeat(20_000)), (200, "garbage".to_owned())] {
            server.set(status, body);
            let hits = server.hits();
            wait_until("failed fetches", || server.hits() >= hits + 2).await;
            assert_eq!(*cache.get(&uri).unwrap(), jwks("b"), "last good keys kept after {status}");
            assert_eq!(*changed.borrow(), 2);
        }

        server.set(200, jwks("d"));
        wait_until("recovery after failures", || *changed.borrow() == 3).await;
        assert_eq!(*cache.get(&uri).unwrap(), jwks("d"));

        cache.forget_except(&HashSet::new());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let hits = server.hits();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(server.hits(), hits, "a forgotten URI is no longer fetched");
    }
}
