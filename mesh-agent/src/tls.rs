//! rustls configurations that present and verify SPIFFE identities (HBONE mTLS).
//!
//! Both sides present a [`WorkloadCert`]. The client pins the server to exactly the
//! identity the control plane says the destination has ([`client_config`]); the server
//! accepts any client chained to the mesh roots ([`server_config`]) and the proxy then
//! checks the caller's identity with [`peer_identity`].
//!
//! The crypto provider is always rustls' ring provider, passed explicitly: nothing here
//! depends on a process-wide default.
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use crate::identity::WorkloadCert;
use crate::state::Identity;

/// ALPN protocol spoken inside the tunnel.
pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("workload certificate for {identity} is unusable: {source}")]
    BadWorkloadCert {
        identity: Box<Identity>,
        #[source]
        source: rustls::Error,
    },
    #[error("no trust roots in the workload certificate bundle for {0}; has the CA answered?")]
    NoRoots(Identity),
    #[error("trust root for {identity} is not a valid CA certificate: {source}")]
    BadRoot {
        identity: Box<Identity>,
        #[source]
        source: webpki::Error,
    },
    #[error("building the client-certificate verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("peer certificate: {0}")]
    BadSpiffe(#[from] SpiffeError),
}

/// Why a certificate does not carry a usable SPIFFE identity.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("certificate has no URI subject alternative name (not a mesh workload certificate)")]
    NoUriSan,
    #[error("certificate has {0} URI subject alternative names; exactly one SPIFFE ID is required")]
    ManyUriSans(usize),
    #[error("certificate URI SAN contains a NUL byte")]
    Nul,
    #[error("certificate URI SAN is not a SPIFFE workload ID: {0}")]
    NotSpiffe(String),
    #[error("peer presented {got} but {expected} was expected (the control plane's identity for that address)")]
    Mismatch { expected: Box<Identity>, got: Box<Identity> },
}

// rustls prints a custom certificate error with `{:?}`: make that the readable message.
impl std::fmt::Debug for SpiffeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The single SPIFFE identity in a certificate's URI SANs.
pub fn spiffe_identity(der: &CertificateDer<'_>) -> Result<Identity, SpiffeError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| SpiffeError::Parse(e.to_string()))?;
    let san = cert.subject_alternative_name().map_err(|e| SpiffeError::Parse(e.to_string()))?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let uri = match uris.as_slice() {
        [] => return Err(SpiffeError::NoUriSan),
        [one] => *one,
        many => return Err(SpiffeError::ManyUriSans(many.len())),
    };
    if uri.contains('\0') {
        return Err(SpiffeError::Nul);
    }
    uri.parse::<Identity>().map_err(SpiffeError::NotSpiffe)
}

/// The identity of the authenticated peer of a finished handshake.
pub fn peer_identity(conn: &rustls::CommonState) -> Result<Identity, Error> {
    let cert = conn.peer_certificates().and_then(|c| c.first()).ok_or(Error::NoPeerCertificate)?;
    Ok(spiffe_identity(cert)?)
}

/// A client configuration presenting `cert` and accepting only a server whose
/// certificate chains to `cert.roots` and names exactly `expected_server`.
pub fn client_config(cert: &WorkloadCert, expected_server: Identity) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    let verifier = SpiffeServerVerifier::new(cert, expected_server, &provider)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| bad_cert(cert, source))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(cert.cert_chain.clone(), cert.private_key.clone_key())
        .map_err(|source| bad_cert(cert, source))?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// A server configuration presenting `cert` and requiring a client certificate chained
/// to `cert.roots`; the client's identity is checked afterwards with [`peer_identity`].
pub fn server_config(cert: &WorkloadCert) -> Result<rustls::ServerConfig, Error> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for root in &cert.roots {
        roots.add(root.clone()).map_err(|source| bad_cert(cert, source))?;
    }
    if roots.is_empty() {
        return Err(Error::NoRoots(cert.identity.clone()));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| bad_cert(cert, source))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.cert_chain.clone(), cert.private_key.clone_key())
        .map_err(|source| bad_cert(cert, source))?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

fn bad_cert(cert: &WorkloadCert, source: rustls::Error) -> Error {
    Error::BadWorkloadCert { identity: Box::new(cert.identity.clone()), source }
}

/// Verifies the server's chain to the mesh roots (server-auth usage), then its identity.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Vec<rustls::pki_types::TrustAnchor<'static>>,
    expected: Identity,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    fn new(cert: &WorkloadCert, expected: Identity, provider: &CryptoProvider) -> Result<Self, Error> {
        let roots = cert
            .roots
            .iter()
            .map(|der| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|a| a.to_owned())
                    .map_err(|source| Error::BadRoot { identity: Box::new(cert.identity.clone()), source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if roots.is_empty() {
            return Err(Error::NoRoots(cert.identity.clone()));
        }
        Ok(Self { roots, expected, algs: provider.signature_verification_algorithms })
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(webpki_error)?;
        ee.verify_for_usage(
            self.algs.all,
            &self.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(webpki_error)?;
        let got = spiffe_identity(end_entity).map_err(other)?;
        if got != self.expected {
            return Err(other(SpiffeError::Mismatch { expected: Box::new(self.expected.clone()), got: Box::new(got) }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// rustls wraps our own certificate errors as `Other(OtherError(..))` in its messages;
/// this rewrites such an I/O error from a handshake to say just what went wrong.
pub fn readable_io_error(e: std::io::Error) -> std::io::Error {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(why)))) = inner {
        return std::io::Error::new(e.kind(), format!("invalid peer certificate: {why}"));
    }
    e
}

fn other(e: SpiffeError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn webpki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    let ce = match e {
        W::BadDer | W::BadDerTime => CertificateError::BadEncoding,
        W::CertExpired { .. } => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::CertRevoked => CertificateError::Revoked,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::time::{Duration, SystemTime};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        Ca { cert: p.self_signed(&key).unwrap(), key }
    }

    fn id(sa: &str) -> Identity {
        format!("spiffe://cluster.local/ns/default/sa/{sa}").parse().unwrap()
    }

    fn leaf(ca: &Ca, uris: &[&str], expired: bool) -> WorkloadCert {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = uris.iter().map(|u| SanType::URI((*u).try_into().unwrap())).collect();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
        WorkloadCert {
            identity: uris.first().and_then(|u| u.parse().ok()).unwrap_or_else(|| id("none")),
            cert_chain: vec![cert.der().clone()],
            private_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            roots: vec![ca.cert.der().clone()],
            not_after: SystemTime::now() + Duration::from_secs(3600),
        }
    }

    /// Runs a handshake between a client presenting `client` and expecting `expect`,
    /// and a server presenting `server`; returns the identity the server saw, or the
    /// client's error.
    async fn handshake(client: &WorkloadCert, expect: Identity, server: &WorkloadCert) -> Result<Identity, String> {
        let ccfg = Arc::new(client_config(client, expect).map_err(|e| e.to_string())?);
        let scfg = Arc::new(server_config(server).map_err(|e| e.to_string())?);
        let (a, b) = tokio::io::duplex(64 * 1024);
        let srv = tokio::spawn(async move {
            let mut tls = tokio_rustls::TlsAcceptor::from(scfg).accept(b).await.map_err(|e| e.to_string())?;
            let id = peer_identity(tls.get_ref().1).map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(id)
        });
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut tls = tokio_rustls::TlsConnector::from(ccfg).connect(name, a).await.map_err(|e| e.to_string())?;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_H2));
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        tls.flush().await.unwrap();
        srv.await.unwrap()
    }

    const A: &str = "spiffe://cluster.local/ns/default/sa/a";
    const B: &str = "spiffe://cluster.local/ns/default/sa/b";

    #[tokio::test]
    async fn right_identity_passes_both_ways() {
        let root = ca("root");
        let (a, b) = (leaf(&root, &[A], false), leaf(&root, &[B], false));
        assert_eq!(handshake(&a, id("b"), &b).await, Ok(id("a")));
    }

    #[tokio::test]
    async fn wrong_identity_fails() {
        let root = ca("root");
        let (a, b) = (leaf(&root, &[A], false), leaf(&root, &[B], false));
        let err = handshake(&a, id("c"), &b).await.unwrap_err();
        assert!(err.contains("sa/b but spiffe://cluster.local/ns/default/sa/c was expected"), "{err}");
    }

    #[tokio::test]
    async fn wrong_root_fails() {
        let (root, other) = (ca("root"), ca("other"));
        let a = leaf(&root, &[A], false);
        let b = leaf(&other, &[B], false);
        let err = handshake(&a, id("b"), &b).await.unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    #[tokio::test]
    async fn expired_fails() {
        let root = ca("root");
        let (a, b) = (leaf(&root, &[A], false), leaf(&root, &[B], true));
        let err = handshake(&a, id("b"), &b).await.unwrap_err();
        assert!(err.contains("Expired"), "{err}");
    }

    #[tokio::test]
    async fn two_uri_sans_fail() {
        let root = ca("root");
        let a = leaf(&root, &[A], false);
        let b = leaf(&root, &[B, A], false);
        let err = handshake(&a, id("b"), &b).await.unwrap_err();
        assert!(err.contains("2 URI subject alternative names"), "{err}");
    }

    #[tokio::test]
    async fn client_from_other_root_is_refused_by_server() {
        let (root, other) = (ca("root"), ca("other"));
        let mut a = leaf(&other, &[A], false);
        a.roots = vec![root.cert.der().clone()]; // a trusts b's root, but b does not trust a's
        let b = leaf(&root, &[B], false);
        assert!(handshake(&a, id("b"), &b).await.is_err());
    }

    #[test]
    fn spiffe_parsing() {
        let root = ca("root");
        let one = leaf(&root, &[A], false);
        assert_eq!(spiffe_identity(&one.cert_chain[0]), Ok(id("a")));
        let none = leaf(&root, &[], false);
        assert_eq!(spiffe_identity(&none.cert_chain[0]), Err(SpiffeError::NoUriSan));
        let http = leaf(&root, &["https://example.com/x"], false);
        assert!(matches!(spiffe_identity(&http.cert_chain[0]), Err(SpiffeError::NotSpiffe(_))));
        // Bad input: a NUL inside the SAN (a C consumer would stop reading at it),
        // extra path segments, and bytes that are no certificate at all.
        let nul = leaf(&root, &["spiffe://cluster.local/ns/default/sa/a\0.evil"], false);
        assert_eq!(spiffe_identity(&nul.cert_chain[0]), Err(SpiffeError::Nul));
        let deep = leaf(&root, &["spiffe://cluster.local/ns/default/sa/a/extra"], false);
        assert!(matches!(spiffe_identity(&deep.cert_chain[0]), Err(SpiffeError::NotSpiffe(_))));
        for garbage in [vec![], vec![0x30, 0x82, 0xff, 0xff], b"-----BEGIN CERTIFICATE-----".to_vec()] {
            assert!(matches!(spiffe_identity(&CertificateDer::from(garbage)), Err(SpiffeError::Parse(_))));
        }
    }
}
