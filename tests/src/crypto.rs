//! Certificates and JWTs for tests and benchmarks, made with the `openssl` command line
//! (a real signer, independent of the agent's own code): RSA keys, JWKS, RS256 tokens.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// RFC 4648 base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

pub fn openssl(args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("openssl").args(args).output().context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// An RSA key made with openssl, its JWKS, and RS256 tokens signed by openssl.
pub struct Issuer {
    key: PathBuf,
    kid: String,
}

impl Issuer {
    pub fn new(dir: &Path, kid: &str) -> Result<Issuer> {
        let key = dir.join(format!("{kid}.pem"));
        openssl(&["genrsa", "-out", key.to_str().unwrap_or_default(), "2048"])?;
        Ok(Issuer { key, kid: kid.to_string() })
    }

    pub fn jwks(&self) -> Result<String> {
        let out = String::from_utf8(openssl(&["rsa", "-in", self.key.to_str().unwrap_or_default(), "-noout", "-modulus"])?)?;
        let hex = out.trim().strip_prefix("Modulus=").context("openssl modulus")?;
        let n: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16)).collect::<Result<_, _>>()?;
        Ok(format!(r#"{{"keys":[{{"kty":"RSA","alg":"RS256","use":"sig","kid":"{}","n":"{}","e":"AQAB"}}]}}"#, self.kid, b64url(&n)))
    }

    pub fn token(&self, claims: &serde_json::Value) -> Result<String> {
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": self.kid});
        let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let file = self.key.with_extension("input");
        std::fs::write(&file, &input)?;
        let sig = openssl(&["dgst", "-sha256", "-sign", self.key.to_str().unwrap_or_default(), file.to_str().unwrap_or_default()])?;
        Ok(format!("{input}.{}", b64url(&sig)))
    }
}

