//! The CA: a self-generated root persisted in the state directory, and the
//! `IstioCertificateService` that signs workload CSRs for identities running on the caller's node.
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::model::Snapshot;
use crate::proto::ca::{istio_certificate_service_server::IstioCertificateService, IstioCertificateRequest, IstioCertificateResponse};
use crate::state::Identity;

/// gRPC metadata header naming the node that asks for a certificate.
pub const NODE_HEADER: &str = "x-mesh-node";
const ROOT_KEY: &str = "root-key.pem";
const ROOT_CERT: &str = "root-cert.pem";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {what} {path}: {source}; check that the state directory exists and is writable by the control plane")]
    Io { what: &'static str, path: PathBuf, #[source] source: std::io::Error },
    #[error("the CA root in {dir} is unusable ({what}): {source}; restore it from backup, or move both root files away to generate a new root (every agent then needs new certificates)")]
    Root { dir: PathBuf, what: &'static str, #[source] source: rcgen::Error },
    #[error("cannot generate the CA root: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("cannot sign a certificate: {0}")]
    Sign(#[source] rcgen::Error),
}

/// Why a CSR was refused; the text goes back to the agent in the gRPC status.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is not a valid PEM PKCS#10 request with a good signature (only the SAN, key usage and EKU extensions are accepted)")]
    Parse,
    #[error("the CSR must carry exactly one URI SAN spiffe://{0}/ns/<namespace>/sa/<account>, and no other SAN")]
    SanCount(String),
    #[error("the CSR's URI SAN {0:?} is not spiffe://{1}/ns/<namespace>/sa/<account>")]
    BadUri(String, String),
}

/// Checks a CSR and returns the identity it asks for and its public key.
pub fn validate_csr(pem: &str, trust_domain: &str) -> Result<(Identity, rcgen::PublicKey), CsrError> {
    let csr = CertificateSigningRequestParams::from_pem(pem).map_err(|_| CsrError::Parse)?;
    let sans = &csr.params.subject_alt_names;
    let [SanType::URI(uri)] = sans.as_slice() else {
        return Err(CsrError::SanCount(trust_domain.into()));
    };
    let uri = uri.as_str();
    let bad = || CsrError::BadUri(uri.escape_debug().to_string(), trust_domain.into());
    if uri.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad());
    }
    let id: Identity = uri.parse().map_err(|_| bad())?;
    if id.trust_domain != trust_domain || id.to_string() != uri {
        return Err(bad());
    }
    Ok((id, csr.public_key))
}

/// The CA's root key and certificate.
pub struct Ca {
    key: KeyPair,
    issuer: rcgen::Certificate,
    root_pem: String,
    ttl: Duration,
}

impl Ca {
    /// Loads the root from `dir`, or creates it there (ECDSA P-256, `CN=mesh root`).
    pub fn load_or_create(dir: &Path, ttl: Duration) -> Result<Self, Error> {
        let key_path = dir.join(ROOT_KEY);
        let cert_path = dir.join(ROOT_CERT);
        fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
            move |source| Error::Io { what, path: path.to_path_buf(), source }
        }
        if key_path.exists() || cert_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path).map_err(io("read", &key_path))?;
            let root_pem = std::fs::read_to_string(&cert_path).map_err(io("read", &cert_path))?;
            let root = |what| move |source| Error::Root { dir: dir.to_path_buf(), what, source };
            let key = KeyPair::from_pem(&key_pem).map_err(root("parsing the key"))?;
            let params = CertificateParams::from_ca_cert_pem(&root_pem).map_err(root("parsing the certificate"))?;
            // Re-signing rebuilds rcgen's issuer from the same name and key; we hand out
            // the original root PEM, which is what agents verify against.
            let issuer = params.self_signed(&key).map_err(root("re-reading the certificate"))?;
            tracing::info!(dir = %dir.display(), "ca: using the existing root");
            return Ok(Self { key, issuer, root_pem, ttl });
        }
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(Error::Generate)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "mesh root");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
        let issuer = params.self_signed(&key).map_err(Error::Generate)?;
        let root_pem = issuer.pem();
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io("write", &key_path))?;
        write_file(&cert_path, root_pem.as_bytes(), 0o644).map_err(io("write", &cert_path))?;
        tracing::info!(dir = %dir.display(), "ca: generated a new root");
        Ok(Self { key, issuer, root_pem, ttl })
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Signs a leaf for `id` over `public_key`: URI SAN only, not a CA, for TLS both ways.
    pub fn sign(&self, id: &Identity, public_key: &rcgen::PublicKey, ttl: Duration) -> Result<String, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = rcgen::Ia5String::try_from(id.to_string()).map_err(Error::Sign)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(300)).into();
        params.not_after = (now + ttl.min(self.ttl)).into();
        let mut serial = [0u8; 16];
        serial.iter_mut().for_each(|b| *b = fastrand::u8(..));
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = params.signed_by(public_key, &self.issuer, &self.key).map_err(Error::Sign)?;
        Ok(cert.pem())
    }
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The gRPC face of the CA.
#[derive(Clone)]
pub struct CaService {
    ca: Arc<Ca>,
    trust_domain: String,
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl CaService {
    pub fn new(ca: Arc<Ca>, trust_domain: String, snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        Self { ca, trust_domain, snapshots }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let node = request
            .metadata()
            .get(NODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                Status::unauthenticated(format!("missing gRPC header {NODE_HEADER}: the agent must say which node it runs on"))
            })?;
        let req = request.into_inner();
        let (id, public_key) =
            validate_csr(&req.csr, &self.trust_domain).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !self.snapshots.borrow().node_runs(&node, &id) {
            tracing::warn!(node, identity = %id, "ca: refused a certificate: no pod on that node runs as that identity");
            return Err(Status::permission_denied(format!(
                "node {node:?} runs no pod with identity {id} (per the control plane's config); a node gets certificates only for its own pods"
            )));
        }
        let ttl = match u64::try_from(req.validity_duration) {
            Ok(s) if s > 0 => Duration::from_secs(s),
            _ => self.ca.ttl,
        };
        let leaf = self.ca.sign(&id, &public_key, ttl).map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(node, identity = %id, "ca: issued a certificate");
        Ok(Response::new(IstioCertificateResponse { cert_chain: vec![leaf, self.ca.root_pem.clone()] }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(sans: Vec<SanType>) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(rcgen::Ia5String::try_from(s).unwrap())
    }

    #[test]
    fn accepts_exactly_one_spiffe_uri() {
        let (id, _) = validate_csr(&csr(vec![uri("spiffe://td/ns/demo/sa/web")]), "td").unwrap();
        assert_eq!(id.to_string(), "spiffe://td/ns/demo/sa/web");
    }

    #[test]
    fn rejects_everything_else() {
        let count = CsrError::SanCount("td".into());
        assert_eq!(validate_csr(&csr(vec![]), "td").unwrap_err(), count);
        let two = vec![uri("spiffe://td/ns/a/sa/b"), uri("spiffe://td/ns/a/sa/c")];
        assert_eq!(validate_csr(&csr(two), "td").unwrap_err(), count);
        let dns = vec![SanType::DnsName(rcgen::Ia5String::try_from("web.demo").unwrap())];
        assert_eq!(validate_csr(&csr(dns), "td").unwrap_err(), count);
        let mixed = vec![uri("spiffe://td/ns/a/sa/b"), SanType::DnsName(rcgen::Ia5String::try_from("x").unwrap())];
        assert_eq!(validate_csr(&csr(mixed), "td").unwrap_err(), count);
        for bad in ["spiffe://other/ns/a/sa/b", "spiffe://td/ns/a/sa/b\0x", "spiffe://td/ns/a\0/sa/b", "https://td/ns/a/sa/b", "spiffe://td/ns/a/sa/b/c", "spiffe://td/ns//sa/b"] {
            assert!(matches!(validate_csr(&csr(vec![uri(bad)]), "td"), Err(CsrError::BadUri(..))), "{bad:?}");
        }
        assert_eq!(validate_csr("not a csr", "td").unwrap_err(), CsrError::Parse);
    }

    #[test]
    fn root_persists_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ca::load_or_create(dir.path(), Duration::from_secs(3600)).unwrap();
        let b = Ca::load_or_create(dir.path(), Duration::from_secs(3600)).unwrap();
        assert_eq!(a.root_pem(), b.root_pem());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(ROOT_KEY)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A leaf signed after the restart still chains to the saved root.
        let (id, pk) = validate_csr(&csr(vec![uri("spiffe://td/ns/a/sa/b")]), "td").unwrap();
        let leaf = b.sign(&id, &pk, Duration::from_secs(60)).unwrap();
        verify(&leaf, a.root_pem());
    }

    pub(crate) fn verify(leaf_pem: &str, root_pem: &str) {
        use rustls_pki_types::{pem::PemObject as _, CertificateDer, UnixTime};
        let leaf = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).unwrap();
        let root = CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap();
        let anchor = webpki::anchor_from_trusted_cert(&root).unwrap();
        let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .unwrap();
    }
}
