//! Workload certificates: a key and CSR per identity, signed by the CA
//! (`IstioCertificateService/CreateCertificate`), cached, and refreshed at half-life.
//!
//! One background task per identity does all CA calls for it, so concurrent callers
//! share one request; while the CA is down a still-valid certificate keeps serving.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::node_token::Credential;
use crate::proto::ca::{istio_certificate_service_client::IstioCertificateServiceClient, IstioCertificateRequest};
use crate::state::Identity;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("cannot create a key or CSR for {0}: {1}")]
    Csr(Identity, String),
    #[error("no certificate for {id}: {cause}")]
    Credential { id: Identity, cause: crate::node_token::CredentialError },
    #[error("the CA at {addr} refused a certificate for {id}: {message} ({code:?})")]
    Refused { addr: String, id: Identity, code: tonic::Code, message: String },
    #[error("cannot reach the CA at {addr} for {id}: {cause}; is the control plane running?")]
    Unreachable { addr: String, id: Identity, cause: String },
    #[error("the CA at {addr} returned an unusable certificate for {id}: {cause}")]
    BadResponse { addr: String, id: Identity, cause: String },
    #[error("the certificate manager is shutting down")]
    Stopped,
}

/// A workload's certificate, key and the roots to verify peers with.
#[derive(Debug)]
pub struct WorkloadCert {
    pub identity: Identity,
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub private_key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
}

impl WorkloadCert {
    fn valid(&self) -> bool {
        SystemTime::now() < self.not_after
    }
}

#[derive(Default, Clone)]
struct SlotState {
    cert: Option<Arc<WorkloadCert>>,
    last_error: Option<Error>,
    /// Completed CA calls, successful or not.
    attempts: u64,
}

struct Slot {
    state: watch::Sender<SlotState>,
    /// Wakes the refresher early when a caller is waiting and no valid cert exists.
    kick: Notify,
}

type SlotTask = (Arc<Slot>, JoinHandle<()>);

struct Inner {
    ca_addr: String,
    credential: Credential,
    /// Per identity: its slot and the task refreshing it.
    slots: Mutex<HashMap<Identity, SlotTask>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for (_, (_, task)) in self.slots.get_mut().unwrap().drain() {
            task.abort();
        }
    }
}

/// Obtains and refreshes workload certificates from the CA.
#[derive(Clone)]
pub struct CertManager {
    inner: Arc<Inner>,
}

impl CertManager {
    /// Talks to the CA at `ca_addr`, showing this node's `credential`.
    pub fn new(ca_addr: String, credential: Credential) -> Self {
        Self { inner: Arc::new(Inner { ca_addr, credential, slots: Mutex::new(HashMap::new()) }) }
    }

    /// A valid certificate for `id`, from the cache or from the CA.
    pub async fn fetch(&self, id: &Identity) -> Result<Arc<WorkloadCert>, Error> {
        let slot = self.slot(id);
        let mut rx = slot.state.subscribe();
        let seen = {
            let s = rx.borrow_and_update();
            if let Some(c) = s.cert.as_ref().filter(|c| c.valid()) {
                return Ok(c.clone());
            }
            s.attempts
        };
        slot.kick.notify_one();
        let s = rx
            .wait_for(|s| s.cert.as_ref().is_some_and(|c| c.valid()) || s.attempts > seen)
            .await
            .map_err(|_| Error::Stopped)?;
        match (&s.cert, &s.last_error) {
            (Some(c), _) if c.valid() => Ok(c.clone()),
            (_, Some(e)) => Err(e.clone()),
            _ => Err(Error::Stopped),
        }
    }

    /// The certificate held for each identity (for the admin dump).
    pub fn certificates(&self) -> Vec<Arc<WorkloadCert>> {
        let slots = self.inner.slots.lock().unwrap();
        let mut v: Vec<_> = slots.values().filter_map(|(slot, _)| slot.state.borrow().cert.clone()).collect();
        v.sort_by(|a, b| a.identity.cmp(&b.identity));
        v
    }

    /// Identities with a certificate, and when each expires.
    pub fn identities(&self) -> Vec<(Identity, SystemTime)> {
        self.certificates().iter().map(|c| (c.identity.clone(), c.not_after)).collect()
    }

    /// Stops refreshing `id` (its last pod left the node).
    pub fn forget(&self, id: &Identity) {
        if let Some((_, task)) = self.inner.slots.lock().unwrap().remove(id) {
            task.abort();
        }
    }

    fn slot(&self, id: &Identity) -> Arc<Slot> {
        let mut slots = self.inner.slots.lock().unwrap();
        if let Some((slot, _)) = slots.get(id) {
            return slot.clone();
        }
        let slot = Arc::new(Slot { state: watch::channel(SlotState::default()).0, kick: Notify::new() });
        let task = tokio::spawn(refresh(self.inner.ca_addr.clone(), self.inner.credential.clone(), id.clone(), slot.clone()));
        slots.insert(id.clone(), (slot.clone(), task));
        slot
    }
}

/// Keeps `slot` filled: fetch, then sleep until half-life; on failure back off
/// (1 s doubling to 60 s, jitter), sooner when a caller is waiting without a valid cert.
async fn refresh(addr: String, credential: Credential, id: Identity, slot: Arc<Slot>) {
    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);
    let mut backoff = MIN;
    loop {
        let result = request(&addr, &credential, &id).await;
        let wait = match &result {
            Ok(cert) => {
                backoff = MIN;
                let life = cert.not_after.duration_since(SystemTime::now()).unwrap_or_default();
                let serial = serial_of(&cert.cert_chain[0]).unwrap_or_default();
                tracing::info!(identity = %id, serial, expires_in = ?life, "identity: certificate issued");
                life / 2
            }
            Err(e) => {
                let still_valid = slot.state.borrow().cert.as_ref().is_some_and(|c| c.valid());
                if still_valid {
                    tracing::warn!(identity = %id, "identity: {e}; the current certificate keeps serving");
                } else {
                    tracing::warn!(identity = %id, "identity: {e}");
                }
                let d = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
                backoff = (backoff * 2).min(MAX);
                d
            }
        };
        slot.state.send_modify(|s| {
            s.attempts += 1;
            match result {
                Ok(cert) => {
                    s.cert = Some(Arc::new(cert));
                    s.last_error = None;
                }
                Err(e) => s.last_error = Some(e),
            }
        });
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = slot.kick.notified() => {
                    // Only worth an early call when nothing valid is held.
                    if !slot.state.borrow().cert.as_ref().is_some_and(|c| c.valid()) {
                        break;
                    }
                }
            }
        }
    }
}

/// One CA call: a fresh key, a CSR with the SPIFFE URI SAN, and the signed chain back.
async fn request(addr: &str, credential: &Credential, id: &Identity) -> Result<WorkloadCert, Error> {
    let csr_err = |e: rcgen::Error| Error::Csr(id.clone(), e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(csr_err)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = rcgen::Ia5String::try_from(id.to_string()).map_err(csr_err)?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params.serialize_request(&key).and_then(|c| c.pem()).map_err(csr_err)?;

    let mut req = tonic::Request::new(IstioCertificateRequest { csr, validity_duration: 0, metadata: None });
    credential.authorize(&mut req).map_err(|cause| Error::Credential { id: id.clone(), cause })?;
    req.set_timeout(Duration::from_secs(10));
    let unreachable = |cause: String| Error::Unreachable { addr: addr.into(), id: id.clone(), cause };
    let channel = crate::xds::endpoint(addr).map_err(unreachable)?.connect().await.map_err(|e| unreachable(e.to_string()))?;
    let mut client = IstioCertificateServiceClient::new(channel);
    let resp = client.create_certificate(req).await.map_err(|s| match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => unreachable(s.message().to_string()),
        code => Error::Refused { addr: addr.into(), id: id.clone(), code, message: s.message().to_string() },
    })?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    accept(&resp.into_inner().cert_chain, id, key)
        .map_err(|cause| Error::BadResponse { addr: addr.into(), id: id.clone(), cause })
}

/// The CA's answer (PEM: leaf, intermediates, root) as a certificate for `id` with
/// `key`, or why it is unusable. Pure.
fn accept(chain: &[String], id: &Identity, key: PrivateKeyDer<'static>) -> Result<WorkloadCert, String> {
    let mut ders = Vec::new();
    for pem in chain {
        for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            ders.push(der.map_err(|e| format!("bad PEM: {e:?}"))?);
        }
    }
    if ders.len() < 2 {
        return Err(format!("expected a chain of leaf and root, got {} certificate(s)", ders.len()));
    }
    let not_after = leaf_not_after(&ders[0], id)?;
    let roots = vec![ders.pop().unwrap()];
    Ok(WorkloadCert { identity: id.clone(), cert_chain: ders, private_key: key, roots, not_after })
}

/// A certificate's serial number in hex (as `openssl x509 -serial` prints it).
pub fn serial_of(der: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.raw_serial().iter().map(|b| format!("{b:02X}")).collect())
}

/// The leaf's expiry, after checking it names `id` and only `id`.
fn leaf_not_after(der: &CertificateDer<'_>, id: &Identity) -> Result<SystemTime, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("cannot parse the leaf: {e}"))?;
    let want = id.to_string();
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|s| s.value.general_names.iter().map(|n| n.to_string()).collect())
        .unwrap_or_default();
    let ok = cert.subject_alternative_name().ok().flatten().is_some_and(|s| {
        matches!(s.value.general_names.as_slice(), [GeneralName::URI(u)] if *u == want)
    });
    if !ok {
        return Err(format!("the leaf names {sans:?}, not {want}"));
    }
    let secs = u64::try_from(cert.validity().not_after.timestamp()).map_err(|_| "the leaf expired before 1970".to_string())?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_ca_is_a_clear_error() {
        let m = CertManager::new("127.0.0.1:1".into(), Credential::Token("v1.n1.x".into()));
        let id: Identity = "spiffe://td/ns/a/sa/b".parse().unwrap();
        let e = m.fetch(&id).await.unwrap_err();
        assert!(e.to_string().starts_with("cannot reach the CA at 127.0.0.1:1 for spiffe://td/ns/a/sa/b"), "{e}");
        assert!(m.identities().is_empty());
    }

    /// A root, and a leaf under it naming `sans` (PEM each).
    fn signed(sans: &[&str]) -> (String, String) {
        let root_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = p.self_signed(&root_key).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = sans.iter().map(|s| rcgen::SanType::URI(rcgen::Ia5String::try_from(*s).unwrap())).collect();
        (p.signed_by(&key, &root, &root_key).unwrap().pem(), root.pem())
    }

    fn key() -> PrivateKeyDer<'static> {
        let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der()))
    }

    #[test]
    fn an_answer_that_does_not_carry_the_identity_is_refused() {
        let id: Identity = "spiffe://td/ns/a/sa/b".parse().unwrap();
        let (leaf, root) = signed(&["spiffe://td/ns/a/sa/b"]);
        let cert = accept(&[leaf.clone(), root.clone()], &id, key()).unwrap();
        assert_eq!((cert.cert_chain.len(), cert.roots.len()), (1, 1));
        assert!(serial_of(&cert.cert_chain[0]).is_some_and(|s| !s.is_empty()));
        let cases: Vec<(&str, Vec<String>, &str)> = vec![
            ("another identity", { let (l, r) = signed(&["spiffe://td/ns/a/sa/c"]); vec![l, r] }, "not spiffe://td/ns/a/sa/b"),
            ("an extra SAN", { let (l, r) = signed(&["spiffe://td/ns/a/sa/b", "spiffe://td/ns/x/sa/y"]); vec![l, r] }, "not spiffe://td/ns/a/sa/b"),
            ("no SAN", { let (l, r) = signed(&[]); vec![l, r] }, "the leaf names []"),
            ("the leaf alone", vec![leaf.clone()], "got 1 certificate(s)"),
            ("nothing", vec![], "got 0 certificate(s)"),
            ("garbage PEM", vec!["-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n".into(), root.clone()], "bad PEM"),
            ("not PEM at all", vec!["hello".into(), "world".into()], "got 0 certificate(s)"),
            ("PEM of garbage", vec!["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(), root], "cannot parse the leaf"),
        ];
        for (what, chain, want) in cases {
            let err = accept(&chain, &id, key()).err().unwrap_or_else(|| panic!("{what}: accepted"));
            assert!(err.contains(want), "{what}: {err}");
        }
    }
}
