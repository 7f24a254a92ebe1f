//! The CA: a self-generated root persisted in the state directory, or the user's own
//! signing certificate (a root or an intermediate) in Istio's `cacerts` layout; and the
//! `IstioCertificateService` that signs workload CSRs for identities running on the
//! caller's node (named by its node token), answering leaf, intermediates, root.
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
use crate::node_token;
use crate::proto::ca::{istio_certificate_service_server::IstioCertificateService, IstioCertificateRequest, IstioCertificateResponse};
use crate::state::Identity;

/// The largest CSR accepted (a P-256 CSR with one URI SAN is under 1 KiB).
pub const MAX_CSR_BYTES: usize = 64 * 1024;
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
    #[error("the CA certificates in {dir} are unusable: {why}")]
    Plugged { dir: PathBuf, why: String },
}

/// Istio's plugged-in CA files (the `cacerts` secret): the signing certificate and its
/// key, the root, and the chain from the signing certificate up to the root.
const CA_CERT: &str = "ca-cert.pem";
const CA_KEY: &str = "ca-key.pem";
const CERT_CHAIN: &str = "cert-chain.pem";

/// Why a CSR was refused; the text goes back to the agent in the gRPC status.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is {0} bytes, more than the {MAX_CSR_BYTES} accepted")]
    TooLarge(usize),
    #[error("the CSR is not a PEM `CERTIFICATE REQUEST` block")]
    Pem,
    #[error("the CSR is not a PKCS#10 request: {0}")]
    Der(String),
    #[error("the CSR's signature does not verify with the public key it carries")]
    Signature,
    #[error("the CSR is not usable (only the SAN, key usage and EKU extensions are accepted, with an ECDSA or Ed25519 or RSA key)")]
    Parse,
    #[error("the CSR must carry exactly one URI SAN spiffe://{0}/ns/<namespace>/sa/<account>, and no other SAN")]
    SanCount(String),
    #[error("the CSR's URI SAN {0:?} is not spiffe://{1}/ns/<namespace>/sa/<account>")]
    BadUri(String, String),
}

/// Checks a CSR and returns the identity it asks for and its public key.
pub fn validate_csr(pem: &str, trust_domain: &str) -> Result<(Identity, rcgen::PublicKey), CsrError> {
    use rustls_pki_types::{pem::PemObject as _, CertificateSigningRequestDer};
    use x509_parser::prelude::FromDer as _;
    if pem.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge(pem.len()));
    }
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).map_err(|_| CsrError::Pem)?;
    let (_, parsed) = x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| CsrError::Der(e.to_string()))?;
    parsed.verify_signature().map_err(|_| CsrError::Signature)?;
    let csr = CertificateSigningRequestParams::from_der(&der).map_err(|_| CsrError::Parse)?;
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

/// The CA's signing key and certificate, and what it hands out with each leaf.
pub struct Ca {
    key: KeyPair,
    issuer: rcgen::Certificate,
    /// Certificates between the signing one and the root, the signing one first
    /// (empty when the root signs).
    intermediates: Vec<String>,
    root_pem: String,
    /// The signing certificate's expiry: no leaf outlives it.
    not_after: Option<SystemTime>,
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
            return Ok(Self { key, issuer, intermediates: Vec::new(), root_pem, not_after: None, ttl });
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
        Ok(Self { key, issuer, intermediates: Vec::new(), root_pem, not_after: None, ttl })
    }

    /// Loads the user's CA from `dir` in Istio's `cacerts` layout: `ca-cert.pem` (the
    /// signing certificate: the root itself or an intermediate), `ca-key.pem`,
    /// `root-cert.pem`, and `cert-chain.pem` (from `ca-cert.pem` up to the root;
    /// optional when the root signs). Checks that the key is the certificate's, that
    /// it is a CA, and that the chain verifies up to the root.
    pub fn from_files(dir: &Path, ttl: Duration) -> Result<Self, Error> {
        let bad = |why: String| Error::Plugged { dir: dir.to_path_buf(), why };
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| bad(format!("reading {name}: {e}")))
        };
        let (ca_pem, key_pem, root_pem) = (read(CA_CERT)?, read(CA_KEY)?, read(ROOT_CERT)?);
        let chain_pem = if dir.join(CERT_CHAIN).exists() { read(CERT_CHAIN)? } else { ca_pem.clone() };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(format!("{CA_KEY}: {e}")))?;
        let certs = |name: &str, pem: &str| -> Result<Vec<(String, Vec<u8>)>, Error> {
            let v = cert_blocks(pem).map_err(|e| bad(format!("{name}: {e}")))?;
            if v.is_empty() {
                return Err(bad(format!("{name}: no certificate in it")));
            }
            Ok(v)
        };
        let ca = certs(CA_CERT, &ca_pem)?.remove(0);
        let root = certs(ROOT_CERT, &root_pem)?.remove(0);
        let mut chain = certs(CERT_CHAIN, &chain_pem)?;
        chain.retain(|c| c.1 != root.1);
        if ca.1 != root.1 && chain.first().map(|c| &c.1) != Some(&ca.1) {
            return Err(bad(format!("{CERT_CHAIN} must start with {CA_CERT}")));
        }
        let ders: Vec<&[u8]> = chain.iter().map(|c| c.1.as_slice()).collect();
        let not_after = check_chain(&ca.1, &ders, &root.1, &key).map_err(bad)?;
        let params = CertificateParams::from_ca_cert_pem(&ca.0).map_err(|e| bad(format!("{CA_CERT}: {e}")))?;
        let issuer = params.self_signed(&key).map_err(|e| bad(format!("{CA_CERT}: {e}")))?;
        let intermediates: Vec<String> = chain.into_iter().map(|c| c.0).collect();
        let root_pem = root.0;
        tracing::info!(dir = %dir.display(), intermediates = intermediates.len(), "ca: using the plugged-in CA certificates");
        Ok(Self { key, issuer, intermediates, root_pem, not_after: Some(not_after), ttl })
    }

    /// What the CA answers for one signed leaf: leaf, intermediates, root.
    pub fn chain_for(&self, leaf: String) -> Vec<String> {
        std::iter::once(leaf).chain(self.intermediates.iter().cloned()).chain([self.root_pem.clone()]).collect()
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
        let until = now + ttl.min(self.ttl);
        params.not_after = self.not_after.map_or(until, |ca| until.min(ca)).into();
        let mut serial = [0u8; 16];
        serial.iter_mut().for_each(|b| *b = fastrand::u8(..));
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = params.signed_by(public_key, &self.issuer, &self.key).map_err(Error::Sign)?;
        Ok(cert.pem())
    }
}

/// Checks the plugged-in chain: `key` is `ca`'s, `ca` may sign certificates, each
/// certificate of `chain` (`ca` first) is signed by the next and the last by `root`,
/// and all are valid now. Returns `ca`'s expiry.
fn check_chain(ca: &[u8], chain: &[&[u8]], root: &[u8], key: &KeyPair) -> Result<SystemTime, String> {
    use x509_parser::prelude::*;
    fn parse<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, String> {
        X509Certificate::from_der(der).map(|(_, c)| c).map_err(|e| format!("{what}: cannot parse: {e}"))
    }
    let ca_cert = parse(ca, CA_CERT)?;
    if ca_cert.public_key().raw != key.public_key_der().as_slice() {
        return Err(format!("{CA_KEY} is not the key of {CA_CERT}"));
    }
    if !ca_cert.is_ca() {
        return Err(format!("{CA_CERT} is not a CA certificate (basicConstraints CA:TRUE)"));
    }
    let mut links: Vec<&[u8]> = if chain.is_empty() { vec![ca] } else { chain.to_vec() };
    links.push(root);
    for (i, pair) in links.windows(2).enumerate() {
        let (child, parent) = (parse(pair[0], CERT_CHAIN)?, parse(pair[1], ROOT_CERT)?);
        child.verify_signature(Some(parent.public_key())).map_err(|e| {
            format!("certificate {i} of the chain ({}) is not signed by the next ({}): {e}", child.subject(), parent.subject())
        })?;
    }
    let root_cert = parse(root, ROOT_CERT)?;
    root_cert.verify_signature(None).map_err(|e| format!("{ROOT_CERT} is not self-signed: {e}"))?;
    for (what, c) in [(CA_CERT, &ca_cert), (ROOT_CERT, &root_cert)] {
        if !c.validity().is_valid() {
            return Err(format!("{what} is not valid now (valid {} to {})", c.validity().not_before, c.validity().not_after));
        }
    }
    let secs = ca_cert.validity().not_after.timestamp().max(0) as u64;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// The certificates of a PEM text, each as its own PEM block and its DER.
fn cert_blocks(pem: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    use rustls_pki_types::{pem::PemObject as _, CertificateDer};
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(begin) = rest.find("-----BEGIN CERTIFICATE-----") {
        let tail = &rest[begin..];
        let end = tail.find(END).ok_or("a certificate without its END line")? + END.len();
        let block = format!("{}\n", &tail[..end]);
        let der = CertificateDer::from_pem_slice(block.as_bytes()).map_err(|e| format!("bad PEM: {e:?}"))?;
        out.push((block, der.to_vec()));
        rest = &tail[end..];
    }
    Ok(out)
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The gRPC face of the CA: the caller's node comes from its node token.
#[derive(Clone)]
pub struct CaService {
    ca: Arc<Ca>,
    trust_domain: String,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    tokens: Arc<node_token::Key>,
}

impl CaService {
    pub fn new(
        ca: Arc<Ca>,
        trust_domain: String,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        tokens: Arc<node_token::Key>,
    ) -> Self {
        Self { ca, trust_domain, snapshots, tokens }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = request.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let node = self.tokens.verify_metadata(request.metadata()).map_err(|e| {
            tracing::warn!(peer, "ca: refused an agent: {e}");
            Status::unauthenticated(e.to_string())
        })?;
        let req = request.into_inner();
        let (id, public_key) = validate_csr(&req.csr, &self.trust_domain).map_err(|e| {
            tracing::warn!(node, "ca: refused a CSR: {e}");
            Status::invalid_argument(e.to_string())
        })?;
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
        Ok(Response::new(IstioCertificateResponse { cert_chain: self.ca.chain_for(leaf) }))
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
        assert_eq!(validate_csr("not a csr", "td").unwrap_err(), CsrError::Pem);
    }

    fn pem_of(der: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", lines.join("\n"))
    }

    #[test]
    fn bad_input_gets_a_clear_error_and_no_certificate() {
        use rustls_pki_types::{pem::PemObject as _, CertificateSigningRequestDer};
        let good = csr(vec![uri("spiffe://td/ns/a/sa/b")]);
        let der = CertificateSigningRequestDer::from_pem_slice(good.as_bytes()).unwrap().as_ref().to_vec();
        assert_eq!(pem_of(&der), good, "pem_of writes what rcgen writes");
        // The last byte is the signature's: the request parses, its signature does not verify.
        let mut forged = der.clone();
        *forged.last_mut().unwrap() ^= 0x01;
        let oversized = format!("{good}{}", "#".repeat(MAX_CSR_BYTES));
        let cases: Vec<(&str, String, &str)> = vec![
            ("not PEM", "hello".into(), "is not a PEM `CERTIFICATE REQUEST` block"),
            ("a PEM block of another kind", good.replace("CERTIFICATE REQUEST", "CERTIFICATE"), "is not a PEM"),
            ("bad base64", "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n".into(), "is not a PEM"),
            ("PEM of garbage", pem_of(b"garbage bytes, not DER"), "is not a PKCS#10 request"),
            ("PEM of half a request", pem_of(&der[..der.len() / 2]), "is not a PKCS#10 request"),
            ("signature that does not verify", pem_of(&forged), "signature does not verify"),
            ("oversized", oversized, "more than the 65536 accepted"),
            ("two URI SANs", csr(vec![uri("spiffe://td/ns/a/sa/b"), uri("spiffe://td/ns/a/sa/c")]), "exactly one URI SAN"),
            ("a NUL in the URI", csr(vec![uri("spiffe://td/ns/a\0/sa/b")]), "is not spiffe://td/ns/<namespace>/sa/<account>"),
            ("a DNS SAN", csr(vec![SanType::DnsName(rcgen::Ia5String::try_from("b.a.svc").unwrap())]), "exactly one URI SAN"),
            ("another trust domain", csr(vec![uri("spiffe://other.td/ns/a/sa/b")]), "is not spiffe://td/"),
        ];
        for (what, pem, want) in cases {
            let err = validate_csr(&pem, "td").err().unwrap_or_else(|| panic!("{what}: accepted"));
            assert!(err.to_string().contains(want), "{what}: {err}");
        }
        // The NUL is shown escaped, so the operator sees where it is.
        let nul = validate_csr(&csr(vec![uri("spiffe://td/ns/a\0/sa/b")]), "td").unwrap_err();
        assert!(nul.to_string().contains(r#""spiffe://td/ns/a\\0/sa/b""#), "{nul}");
    }

    #[test]
    fn requested_validity_is_clamped_to_the_ca_maximum() {
        use x509_parser::prelude::FromDer as _;
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), Duration::from_secs(3600)).unwrap();
        let (id, pk) = validate_csr(&csr(vec![uri("spiffe://td/ns/a/sa/b")]), "td").unwrap();
        let not_after = |ttl| {
            let leaf = ca.sign(&id, &pk, ttl).unwrap();
            let der = rustls_pki_types::pem::PemObject::from_pem_slice(leaf.as_bytes()).map(|d: rustls_pki_types::CertificateDer| d.to_vec()).unwrap();
            let (_, c) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
            c.validity().not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp()
        };
        let ten_years = not_after(Duration::from_secs(10 * 365 * 24 * 3600));
        assert!((3590..=3600).contains(&ten_years), "asked 10 years, got {ten_years} s");
        let short = not_after(Duration::from_secs(60));
        assert!((50..=60).contains(&short), "asked 60 s, got {short} s");
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

    /// A CA certificate named `cn`, signed by `parent` (self-signed without one).
    fn ca_cert(cn: &str, parent: Option<(&rcgen::Certificate, &KeyPair)>, is_ca: bool) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = if is_ca { IsCa::Ca(BasicConstraints::Unconstrained) } else { IsCa::ExplicitNoCa };
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(30 * 24 * 3600)).into();
        let cert = match parent {
            Some((p, pk)) => params.signed_by(&key, p, pk).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        (cert, key)
    }

    /// Writes Istio's cacerts files; `chain` is cert-chain.pem's content.
    fn cacerts(ca: &rcgen::Certificate, key: &KeyPair, root: &rcgen::Certificate, chain: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CA_CERT), ca.pem()).unwrap();
        std::fs::write(dir.path().join(CA_KEY), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join(ROOT_CERT), root.pem()).unwrap();
        std::fs::write(dir.path().join(CERT_CHAIN), chain).unwrap();
        dir
    }

    #[test]
    fn a_plugged_in_intermediate_signs_and_the_chain_verifies_to_the_root() {
        let (root, root_key) = ca_cert("corp root", None, true);
        let (inter, inter_key) = ca_cert("mesh intermediate", Some((&root, &root_key)), true);
        let dir = cacerts(&inter, &inter_key, &root, &format!("{}{}", inter.pem(), root.pem()));
        let ca = Ca::from_files(dir.path(), Duration::from_secs(3600)).unwrap();
        let (id, pk) = validate_csr(&csr(vec![uri("spiffe://td/ns/a/sa/b")]), "td").unwrap();
        let chain = ca.chain_for(ca.sign(&id, &pk, Duration::from_secs(60)).unwrap());
        assert_eq!(chain.len(), 3, "leaf, intermediate, root");
        assert_eq!(chain[2], ca.root_pem());
        verify_chain(&chain[0], &chain[1..2], &chain[2]);
        // The root alone as the signing certificate (no cert-chain.pem needed).
        let dir = cacerts(&root, &root_key, &root, &root.pem());
        std::fs::remove_file(dir.path().join(CERT_CHAIN)).unwrap();
        let ca = Ca::from_files(dir.path(), Duration::from_secs(3600)).unwrap();
        let chain = ca.chain_for(ca.sign(&id, &pk, Duration::from_secs(60)).unwrap());
        assert_eq!(chain.len(), 2);
        verify(&chain[0], &chain[1]);
    }

    #[test]
    fn unusable_plugged_in_certificates_are_refused_with_the_reason() {
        let (root, root_key) = ca_cert("corp root", None, true);
        let (other_root, other_key) = ca_cert("other root", None, true);
        let (inter, inter_key) = ca_cert("mesh intermediate", Some((&root, &root_key)), true);
        let (leafish, leafish_key) = ca_cert("not a ca", Some((&root, &root_key)), false);
        let (stranger, stranger_key) = ca_cert("stranger", Some((&other_root, &other_key)), true);
        let cases: Vec<(&str, tempfile::TempDir, &str)> = vec![
            ("key of another certificate", cacerts(&inter, &root_key, &root, &inter.pem()), "is not the key of ca-cert.pem"),
            ("not a CA", cacerts(&leafish, &leafish_key, &root, &leafish.pem()), "is not a CA certificate"),
            ("signed under another root", cacerts(&stranger, &stranger_key, &root, &stranger.pem()), "is not signed by the next"),
            ("chain of another certificate", cacerts(&inter, &inter_key, &root, &stranger.pem()), "must start with ca-cert.pem"),
            ("garbage", cacerts(&inter, &inter_key, &root, "nothing here"), "no certificate in it"),
        ];
        for (what, dir, want) in cases {
            let err = Ca::from_files(dir.path(), Duration::from_secs(3600)).err().unwrap_or_else(|| panic!("{what}: accepted"));
            assert!(err.to_string().contains(want), "{what}: {err}");
        }
        let empty = tempfile::tempdir().unwrap();
        let err = Ca::from_files(empty.path(), Duration::from_secs(3600)).err().expect("an empty folder");
        assert!(err.to_string().contains("reading ca-cert.pem"), "{err}");
    }

    /// `leaf` verifies to `root` through `intermediates`.
    fn verify_chain(leaf_pem: &str, intermediates: &[String], root_pem: &str) {
        use rustls_pki_types::{pem::PemObject as _, CertificateDer, UnixTime};
        let leaf = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).unwrap();
        let root = CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap();
        let inter: Vec<CertificateDer> = intermediates.iter().map(|p| CertificateDer::from_pem_slice(p.as_bytes()).unwrap()).collect();
        let anchor = webpki::anchor_from_trusted_cert(&root).unwrap();
        let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
        ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &[anchor], &inter, UnixTime::now(), webpki::KeyUsage::client_auth(), None, None)
            .unwrap();
    }

    pub(crate) fn verify(leaf_pem: &str, root_pem: &str) {
        verify_chain(leaf_pem, &[], root_pem);
    }
}
