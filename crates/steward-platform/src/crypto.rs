//! The master key (encrypts connector secrets at rest) and bearer tokens (stored as SHA-256 hashes).

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::error::{PlatformError, Result};

/// The environment variable that can hold the master key (64 hex characters or 32 bytes in base64).
pub const MASTER_KEY_ENV: &str = "STEWARD_MASTER_KEY";
/// The key file's name in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

/// The AES-256-GCM key that encrypts connector secrets.
pub struct MasterKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| PlatformError::Crypto("no randomness".into()))?;
    Ok(b)
}

fn decode_key(s: &str) -> Result<[u8; 32]> {
    let s = s.trim();
    let bytes = if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(s).map_err(|e| PlatformError::Crypto(e.to_string()))?
    } else {
        STANDARD
            .decode(s)
            .map_err(|_| PlatformError::Crypto("master key is neither 64 hex characters nor base64".into()))?
    };
    bytes
        .try_into()
        .map_err(|_| PlatformError::Crypto("master key must be 32 bytes".into()))
}

impl MasterKey {
    /// A key from 32 bytes.
    pub fn from_bytes(b: [u8; 32]) -> Result<Self> {
        let k = UnboundKey::new(&AES_256_GCM, &b).map_err(|_| PlatformError::Crypto("bad key".into()))?;
        Ok(Self {
            key: LessSafeKey::new(k),
        })
    }

    /// `STEWARD_MASTER_KEY` if set, else `<data_dir>/master.key`, created with mode 0600 if missing.
    /// An existing key file readable by group or others is refused.
    pub fn load_or_create(data_dir: Option<&Path>) -> Result<Self> {
        if let Ok(v) = std::env::var(MASTER_KEY_ENV) {
            return Self::from_bytes(decode_key(&v)?);
        }
        let Some(dir) = data_dir else {
            return Err(PlatformError::Crypto(format!(
                "no master key: set {MASTER_KEY_ENV} or give a data directory"
            )));
        };
        std::fs::create_dir_all(dir)?;
        let path = dir.join(MASTER_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::metadata(&path)?.permissions().mode();
                    if mode & 0o077 != 0 {
                        return Err(PlatformError::Crypto(format!(
                            "{} is readable by others (mode {:o}); run chmod 600 on it",
                            path.display(),
                            mode & 0o777
                        )));
                    }
                }
                Self::from_bytes(decode_key(&s)?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let b = random::<32>()?;
                let mut o = std::fs::OpenOptions::new();
                o.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    o.mode(0o600);
                }
                let mut f = o.open(&path)?;
                std::io::Write::write_all(&mut f, hex::encode(b).as_bytes())?;
                f.sync_all()?;
                Self::from_bytes(b)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Encrypts `plain` (nonce ‖ ciphertext ‖ tag, base64).
    pub fn encrypt(&self, plain: &[u8]) -> Result<String> {
        let nonce = random::<NONCE_LEN>()?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(b"steward-v1"),
                &mut buf,
            )
            .map_err(|_| PlatformError::Crypto("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(STANDARD.encode(out))
    }

    /// Decrypts what [`MasterKey::encrypt`] produced.
    pub fn decrypt(&self, text: &str) -> Result<Vec<u8>> {
        let raw = STANDARD
            .decode(text)
            .map_err(|_| PlatformError::Crypto("stored secret is not base64".into()))?;
        if raw.len() < NONCE_LEN {
            return Err(PlatformError::Crypto("stored secret is truncated".into()));
        }
        let (n, c) = raw.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(n).map_err(|_| PlatformError::Crypto("bad nonce".into()))?;
        let mut buf = c.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(b"steward-v1"), &mut buf)
            .map_err(|_| {
                PlatformError::Crypto("stored secret does not decrypt with this master key".into())
            })?;
        Ok(plain.to_vec())
    }
}

/// A new bearer token: `stw_` + 32 random bytes (base64url).
pub fn new_token() -> Result<String> {
    Ok(format!("stw_{}", URL_SAFE_NO_PAD.encode(random::<32>()?)))
}

/// The stored form of a token (tokens are high-entropy, so one SHA-256 is enough).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let k = MasterKey::from_bytes([7; 32]).unwrap();
        let c = k.encrypt(b"hunter2").unwrap();
        assert!(!c.contains("hunter2"));
        assert_eq!(k.decrypt(&c).unwrap(), b"hunter2");
        let other = MasterKey::from_bytes([8; 32]).unwrap();
        assert!(other.decrypt(&c).is_err());
    }

    #[test]
    fn key_file_is_0600_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let a = MasterKey::load_or_create(Some(d.path())).unwrap();
        let c = a.encrypt(b"x").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(d.path().join(MASTER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o600);
        }
        let b = MasterKey::load_or_create(Some(d.path())).unwrap();
        assert_eq!(b.decrypt(&c).unwrap(), b"x");
    }
}
