//! Bidirectional copy with byte counts, and the per-connection access log.
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read per step in each direction: large enough that bulk transfers fill
/// whole TLS records and HTTP/2 frames instead of many small ones.
const COPY_BUF: usize = 256 * 1024;

/// Copies both ways until both sides close, counting bytes into `log` (from `src`
/// to `dst` as sent, back as received; the counts hold even when the copy fails).
pub(super) async fn copy<A, B>(log: &AccessLog, src: A, dst: B) -> Option<io::Error>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a = Counted { inner: src, read: log.sent.clone(), written: None };
    let mut b = Counted { inner: dst, read: log.recv.clone(), written: None };
    tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUF, COPY_BUF).await.err()
}

/// The connection to the application, counting into `log` what is written to it
/// (sent) and read from it (received): for streams that are not copied by [`copy`].
pub(super) fn metered<S>(log: &AccessLog, app: S) -> Counted<S> {
    Counted { inner: app, read: log.recv.clone(), written: Some(log.sent.clone()) }
}

/// Counts the bytes read from the inner stream, and written to it if asked.
pub(super) struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
    written: Option<Arc<AtomicU64>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(w)) = (&r, &self.written) {
            w.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One connection's access-log record, written once when the connection ends (or,
/// if the task is cancelled by a shutdown, when it is dropped).
/// `bytes.sent` flows toward the destination, `bytes.recv` back from it, on both sides.
pub(super) struct AccessLog {
    pub direction: &'static str,
    /// The peer address, where the listener sees it (inbound plaintext).
    pub src_addr: Option<SocketAddr>,
    pub src_workload: String,
    pub src_identity: String,
    pub dst_workload: String,
    pub dst_identity: String,
    pub dst_service: Option<String>,
    pub dst_addr: Option<SocketAddr>,
    /// The AuthorizationPolicy decision (inbound), e.g. `allow policy=ns/name`.
    pub authz: Option<String>,
    /// Served as HTTP: requests admitted and refused.
    requests: std::sync::OnceLock<(u64, u64)>,
    pub start: Instant,
    sent: Arc<AtomicU64>,
    recv: Arc<AtomicU64>,
    done: AtomicBool,
}

impl AccessLog {
    pub fn new(direction: &'static str) -> Self {
        AccessLog {
            direction,
            src_addr: None,
            src_workload: String::new(),
            src_identity: String::new(),
            dst_workload: String::new(),
            dst_identity: String::new(),
            dst_service: None,
            dst_addr: None,
            authz: None,
            requests: std::sync::OnceLock::new(),
            start: Instant::now(),
            sent: Default::default(),
            recv: Default::default(),
            done: AtomicBool::new(false),
        }
    }

    /// For a connection served as HTTP: how many requests were admitted and refused.
    pub fn set_requests(&self, admitted: u64, refused: u64) {
        let _ = self.requests.set((admitted, refused));
    }

    /// Drops the record without writing it (the work it stood for is logged elsewhere).
    pub fn discard(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    /// Writes the record; later calls do nothing.
    pub fn finish(&self, error: Option<&dyn std::fmt::Display>) {
        if self.done.swap(true, Ordering::Relaxed) {
            return;
        }
        let error = error.map(|e| e.to_string());
        let (sent, recv) = (self.sent.load(Ordering::Relaxed), self.recv.load(Ordering::Relaxed));
        crate::metrics::PROXY.connection(self.direction, error.is_none(), sent, recv);
        tracing::info!(
            target: "access",
            direction = self.direction,
            src.addr = self.src_addr.map(|a| a.to_string()),
            src.workload = self.src_workload.as_str(),
            src.identity = self.src_identity.as_str(),
            dst.workload = self.dst_workload.as_str(),
            dst.identity = self.dst_identity.as_str(),
            dst.service = self.dst_service.as_deref(),
            dst.addr = self.dst_addr.map(|a| a.to_string()),
            authz = self.authz.as_deref(),
            http.admitted = self.requests.get().map(|r| r.0),
            http.refused = self.requests.get().map(|r| r.1),
            bytes.sent = sent,
            bytes.recv = recv,
            duration_ms = self.start.elapsed().as_millis() as u64,
            error = error.as_deref(),
            "connection closed"
        );
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.finish(Some(&"connection cancelled: the pod proxy shut down"));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_directions() {
        let (app, mut app_peer) = tokio::io::duplex(1024);
        let (up, mut up_peer) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move {
            let log = super::AccessLog::new("outbound");
            super::copy(&log, app, up).await;
            let counts = (log.sent.load(Ordering::Relaxed), log.recv.load(Ordering::Relaxed));
            log.finish(None);
            counts
        });
        app_peer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        up_peer.read_exact(&mut buf).await.unwrap();
        up_peer.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        app_peer.read_exact(&mut buf).await.unwrap();
        drop(app_peer);
        drop(up_peer);
        assert_eq!(task.await.unwrap(), (5, 2));
    }
}
