//! Node tokens: how an agent proves to the control plane (xDS and CA) which node it
//! runs on. A token reads `v1.<node>.<mac>`: the MAC is HMAC-SHA256 under the control
//! plane's node-token key over `mesh-node-token-v1\0<node>`, in base64url without
//! padding. The control plane holds the key; an agent holds only its own node's token,
//! so it can speak for no other node. The agent sends it as `authorization: Bearer
//! <token>` gRPC metadata. (On Kubernetes a TokenReview of the agent's service-account
//! token can stand in for the MAC check: the rest stays the same.)
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::hmac;

/// The gRPC metadata that carries the token.
pub const METADATA: &str = "authorization";
/// The key file's name in the control plane's state directory when it is generated.
pub const KEY_FILE: &str = "node-token-key";
/// Shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;
const VERSION: &str = "v1";
/// What the MAC covers before the node name: a version and purpose, so that a MAC
/// under this key can never be taken for another use of it.
const CONTEXT: &[u8] = b"mesh-node-token-v1\0";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot {what} the node-token key {path}: {source}")]
    Io { what: &'static str, path: PathBuf, #[source] source: std::io::Error },
    #[error("the node-token key {path} holds {len} bytes; it needs at least {MIN_KEY_LEN} random bytes (e.g. `head -c 32 /dev/urandom > {path}`)")]
    Short { path: PathBuf, len: usize },
    #[error("cannot generate a node-token key: the system offers no randomness")]
    Random,
}

/// Why a token is refused. The text goes back to the agent in the gRPC status.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum TokenError {
    #[error("no node token: the request carries no `authorization: Bearer <token>` metadata; give the agent --node-token-file (`mesh-agent node-token --node NAME` prints its token)")]
    Missing,
    #[error("malformed node token: {0}; a token reads v1.<node>.<mac> (`mesh-agent node-token --node NAME` prints one)")]
    Malformed(&'static str),
    #[error("the node token for node {0:?} does not verify: it was made with another key (was the control plane's node-token key replaced?) or altered")]
    BadMac(String),
    #[error("{0:?} is not a node name: 1 to 253 of a-z, A-Z, 0-9, '-', '.', '_'")]
    BadNode(String),
}

/// The control plane's node-token key.
pub struct Key(hmac::Key);

impl Key {
    /// A key from its bytes; `None` when shorter than [`MIN_KEY_LEN`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Key> {
        (bytes.len() >= MIN_KEY_LEN).then(|| Key(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// The key in `explicit` (`--node-token-key`: the file must exist), or else the one
    /// in `state_dir`, generated there (32 random bytes, mode 0600) on first use.
    pub fn load(explicit: Option<&Path>, state_dir: &Path) -> Result<Key, KeyError> {
        match explicit {
            Some(path) => Self::read(path),
            None => Self::load_or_create(&state_dir.join(KEY_FILE)),
        }
    }

    fn read(path: &Path) -> Result<Key, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Io { what: "read", path: path.into(), source })?;
        Self::from_bytes(&bytes).ok_or_else(|| KeyError::Short { path: path.into(), len: bytes.len() })
    }

    /// Reads `path`, creating it first if it does not exist. Two processes racing to
    /// create it end up with the same key: the file appears whole (a hard link from a
    /// written temporary), and only the first link succeeds.
    fn load_or_create(path: &Path) -> Result<Key, KeyError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        if path.exists() {
            return Self::read(path);
        }
        let io = |what| move |source| KeyError::Io { what, path: path.into(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("create the folder of"))?;
        }
        let mut key = [0u8; MIN_KEY_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).map_err(|_| KeyError::Random)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()));
        let linked = written.and_then(|()| match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        });
        let _ = std::fs::remove_file(&tmp);
        linked.map_err(io("write"))?;
        tracing::info!(path = %path.display(), "node tokens: generated a new node-token key");
        Self::read(path)
    }

    /// The token of `node`.
    pub fn issue(&self, node: &str) -> Result<String, TokenError> {
        check_node(node)?;
        Ok(format!("{VERSION}.{node}.{}", B64.encode(hmac::sign(&self.0, &message(node)))))
    }

    /// The node a token names, once its MAC checks out (in constant time).
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        let (version, rest) = token.split_once('.').ok_or(TokenError::Malformed("no version"))?;
        if version != VERSION {
            return Err(TokenError::Malformed("unknown version (not v1)"));
        }
        // Node names may hold dots; base64url does not.
        let (node, mac) = rest.rsplit_once('.').ok_or(TokenError::Malformed("no MAC after the node name"))?;
        check_node(node).map_err(|_| TokenError::Malformed("the node name has characters a node name cannot"))?;
        let mac = B64.decode(mac).map_err(|_| TokenError::Malformed("the MAC is not base64url"))?;
        if mac.len() != 32 {
            return Err(TokenError::Malformed("the MAC is not 32 bytes (truncated?)"));
        }
        hmac::verify(&self.0, &message(node), &mac).map_err(|_| TokenError::BadMac(node.to_string()))?;
        Ok(node.to_string())
    }

    /// The node that the `authorization: Bearer` metadata of a request speaks for.
    pub fn verify_metadata(&self, metadata: &tonic::metadata::MetadataMap) -> Result<String, TokenError> {
        let Some(value) = metadata.get(METADATA) else { return Err(TokenError::Missing) };
        let value = value.to_str().map_err(|_| TokenError::Malformed("the authorization metadata is not text"))?;
        let token = value
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("bearer "))
            .map(|_| value[7..].trim())
            .ok_or(TokenError::Malformed("the authorization metadata is not `Bearer <token>`"))?;
        self.verify(token)
    }
}

fn message(node: &str) -> Vec<u8> {
    [CONTEXT, node.as_bytes()].concat()
}

fn check_node(node: &str) -> Result<(), TokenError> {
    let ok = (1..=253).contains(&node.len())
        && node.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(TokenError::BadNode(node.escape_debug().to_string()))
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read the node token file {path}: {cause}; `mesh-agent node-token --node NAME` on the control plane prints this node's token")]
    Read { path: PathBuf, cause: String },
    #[error("the node token file {0} is empty or not a token")]
    Unusable(PathBuf),
}

/// The agent's side: where its node token comes from.
#[derive(Clone, Debug)]
pub enum Credential {
    /// None configured: the control plane will refuse the agent.
    None,
    /// `--node-token-file`, read at every use, so a rotated file takes effect at the
    /// next CA call or xDS connection.
    File(PathBuf),
    /// A token held in memory (in-process tests).
    Token(String),
}

impl Credential {
    /// The token now, if one is configured.
    pub fn token(&self) -> Result<Option<String>, CredentialError> {
        match self {
            Credential::None => Ok(None),
            Credential::Token(t) => Ok(Some(t.clone())),
            Credential::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| CredentialError::Read { path: path.clone(), cause: e.to_string() })?;
                let token = text.trim();
                if token.is_empty() || token.contains(char::is_whitespace) {
                    return Err(CredentialError::Unusable(path.clone()));
                }
                Ok(Some(token.to_string()))
            }
        }
    }

    /// Adds `authorization: Bearer <token>` to `req` (nothing when none is configured:
    /// the control plane then says what is missing).
    pub fn authorize<T>(&self, req: &mut tonic::Request<T>) -> Result<(), CredentialError> {
        let Some(token) = self.token()? else { return Ok(()) };
        let value = format!("Bearer {token}").parse().map_err(|_| match self {
            Credential::File(p) => CredentialError::Unusable(p.clone()),
            _ => CredentialError::Unusable(PathBuf::from("(in memory)")),
        })?;
        req.metadata_mut().insert(METADATA, value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key::from_bytes(&[b; 32]).unwrap()
    }

    #[test]
    fn a_token_names_its_node_and_verifies_under_its_key() {
        for node in ["n1", "ip-10-0-0-1.ec2.internal", "Node_2"] {
            let t = key(1).issue(node).unwrap();
            assert!(t.starts_with(&format!("v1.{node}.")), "{t}");
            assert_eq!(key(1).verify(&t).unwrap(), node);
        }
        // Deterministic: the same key and node give the same token.
        assert_eq!(key(1).issue("n1").unwrap(), key(1).issue("n1").unwrap());
        assert!(Key::from_bytes(&[0; 31]).is_none(), "a short key is refused");
    }

    #[test]
    fn wrong_key_wrong_node_truncated_and_garbage_are_refused() {
        let t = key(1).issue("n1").unwrap();
        assert_eq!(key(2).verify(&t), Err(TokenError::BadMac("n1".into())));
        // The MAC of n1 under another node's name.
        let mac = t.rsplit_once('.').unwrap().1;
        assert_eq!(key(1).verify(&format!("v1.n2.{mac}")), Err(TokenError::BadMac("n2".into())));
        // Another node's token is not this node's.
        assert_eq!(key(1).verify(&key(1).issue("n2").unwrap()).unwrap(), "n2");
        let malformed = |s: &str| matches!(key(1).verify(s), Err(TokenError::Malformed(_)));
        assert!(malformed(&t[..t.len() - 4]), "truncated MAC");
        assert!(malformed(&format!("{t}AAAA")), "extended MAC");
        for bad in ["", "v1", "v1.n1", "v2.n1.abc", "garbage", "v1..abc", "v1.n 1.abc", "v1.n1.!!!", "v1.n\u{0}1.abc"] {
            assert!(malformed(bad), "{bad:?} was not refused as malformed: {:?}", key(1).verify(bad));
        }
        assert!(matches!(key(1).issue("a/b"), Err(TokenError::BadNode(_))));
        assert!(matches!(key(1).issue(""), Err(TokenError::BadNode(_))));
    }

    #[test]
    fn metadata_must_be_a_bearer_token() {
        let k = key(1);
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(k.verify_metadata(&md), Err(TokenError::Missing));
        md.insert(METADATA, "Basic abc".parse().unwrap());
        assert!(matches!(k.verify_metadata(&md), Err(TokenError::Malformed(_))));
        md.insert(METADATA, format!("bearer {}", k.issue("n1").unwrap()).parse().unwrap());
        assert_eq!(k.verify_metadata(&md).unwrap(), "n1");
    }

    #[test]
    fn the_key_is_generated_once_with_mode_0600_and_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = Key::load(None, &state).unwrap();
        let b = Key::load(None, &state).unwrap();
        assert_eq!(a.issue("n1").unwrap(), b.issue("n1").unwrap(), "the second load reads the first key");
        let path = state.join(KEY_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), MIN_KEY_LEN);
        // An explicit key must exist and be long enough.
        let missing = Key::load(Some(&dir.path().join("nope")), &state).err().unwrap();
        assert!(missing.to_string().contains("cannot read the node-token key"), "{missing}");
        std::fs::write(dir.path().join("short"), b"0123456789").unwrap();
        let short = Key::load(Some(&dir.path().join("short")), &state).err().unwrap();
        assert!(short.to_string().contains("holds 10 bytes"), "{short}");
    }

    #[test]
    fn the_agent_reads_its_token_file_at_each_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let cred = Credential::File(path.clone());
        assert!(matches!(cred.token(), Err(CredentialError::Read { .. })));
        std::fs::write(&path, "v1.n1.abc\n").unwrap();
        assert_eq!(cred.token().unwrap().as_deref(), Some("v1.n1.abc"));
        std::fs::write(&path, "v1.n1.def").unwrap();
        let mut req = tonic::Request::new(());
        cred.authorize(&mut req).unwrap();
        assert_eq!(req.metadata().get(METADATA).unwrap(), "Bearer v1.n1.def");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(cred.token(), Err(CredentialError::Unusable(_))));
        assert_eq!(Credential::None.token().unwrap(), None);
    }
}
