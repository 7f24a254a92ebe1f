//! The HBONE client: HTTP/2 CONNECT over mTLS to a destination's port 15008, with one
//! pooled HTTP/2 connection per (source identity, destination, destination identity).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::{connect_in, drained, CertSource, Drain, Error, CONNECT_TIMEOUT};
use crate::state::Identity;
use crate::tls;

type Sender = SendRequest<Empty<Bytes>>;
type Key = (Identity, SocketAddr, Identity);

/// The source side of a tunnel: whose certificate, from which namespace.
pub struct Source<'a> {
    pub identity: &'a Identity,
    pub netns: &'a Path,
}

/// Pooled HTTP/2 connections to HBONE peers.
#[derive(Default)]
pub struct Pool {
    conns: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Option<Sender>>>>>,
}

impl Pool {
    /// Opens a tunnel to `target` through the HBONE listener at `hbone`, which must
    /// present `dst_identity`. Reuses a live pooled connection, or dials a new one.
    pub async fn connect(
        &self,
        certs: &dyn CertSource,
        src: Source<'_>,
        hbone: SocketAddr,
        dst_identity: &Identity,
        target: SocketAddr,
        drain: Drain,
    ) -> Result<TokioIo<Upgraded>, Error> {
        let key = (src.identity.clone(), hbone, dst_identity.clone());
        let slot = self.conns.lock().unwrap().entry(key).or_default().clone();
        // The slot lock makes concurrent first connections share one dial.
        let mut guard = slot.lock().await;
        if let Some(sender) = guard.as_mut().filter(|s| !s.is_closed()) {
            if sender.ready().await.is_ok() {
                let sender = sender.clone();
                drop(guard);
                match connect_tunnel(sender, hbone, target).await {
                    // The peer agent may have handed over and sent GOAWAY as we
                    // asked: the stream was refused, so a new connection (to its
                    // successor) gets it.
                    Err(Error::Http { source, .. }) => {
                        tracing::debug!(peer = %hbone, "pooled HBONE connection refused a stream ({source}); dialling anew")
                    }
                    r => return r,
                }
                guard = slot.lock().await;
            }
        }
        let sender = dial(certs, &src, hbone, dst_identity, drain).await?;
        *guard = Some(sender.clone());
        drop(guard);
        connect_tunnel(sender, hbone, target).await
    }
}

/// Dials a new mTLS + HTTP/2 connection from inside the source's namespace.
pub async fn dial(
    certs: &dyn CertSource,
    src: &Source<'_>,
    hbone: SocketAddr,
    dst_identity: &Identity,
    drain: Drain,
) -> Result<SendRequest<Empty<Bytes>>, Error> {
    let cert = certs
        .fetch(src.identity)
        .await
        .map_err(|reason| Error::Cert { identity: src.identity.clone(), reason })?;
    let cfg = tls::client_config(&cert, dst_identity.clone())?;
    let tcp = connect_in(src.netns, hbone, "HBONE", "is the destination agent running?").await?;
    let name = ServerName::IpAddress(hbone.ip().into());
    let tls = match tokio::time::timeout(CONNECT_TIMEOUT, TlsConnector::from(Arc::new(cfg)).connect(name, tcp)).await {
        Ok(r) => r.map_err(|e| Error::Handshake { addr: hbone, source: tls::readable_io_error(e) })?,
        Err(_) => {
            return Err(Error::ConnectTimeout {
                addr: hbone,
                what: "HBONE mTLS handshake",
                hint: "is the destination agent healthy?",
            })
        }
    };
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(super::H2_STREAM_WINDOW)
        .initial_connection_window_size(super::H2_CONN_WINDOW)
        .max_frame_size(super::H2_MAX_FRAME)
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|source| Error::Http { addr: hbone, source })?;
    tokio::spawn(async move {
        tokio::select! {
            r = conn => if let Err(e) = r {
                tracing::debug!(peer = %hbone, "HBONE connection closed: {e}");
            },
            _ = drained(drain) => {}
        }
    });
    Ok(sender)
}

/// Sends `CONNECT target` on an HTTP/2 connection and returns the tunnel on 200.
pub async fn connect_tunnel(
    mut sender: Sender,
    hbone: SocketAddr,
    target: SocketAddr,
) -> Result<TokioIo<Upgraded>, Error> {
    let http = |source| Error::Http { addr: hbone, source };
    let req = Request::builder()
        .method(Method::CONNECT)
        .version(Version::HTTP_2)
        .uri(target.to_string())
        .body(Empty::new())
        .expect("CONNECT request from a socket address is well formed");
    sender.ready().await.map_err(http)?;
    let res = sender.send_request(req).await.map_err(http)?;
    if res.status() != StatusCode::OK {
        let status = res.status();
        let body = tokio::time::timeout(CONNECT_TIMEOUT, res.into_body().collect()).await;
        let reason = match body {
            Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).trim().chars().take(512).collect(),
            _ => String::new(),
        };
        return Err(Error::Refused { addr: hbone, target, status, reason });
    }
    let up = hyper::upgrade::on(res).await.map_err(http)?;
    Ok(TokioIo::new(up))
}
