//! Encryption at rest of secrets' data: AES-256-GCM (ring) with a random
//! 96-bit nonce per value, and the object's kind, name and version as
//! associated data (a sealed value moved to another name or version does
//! not open). The 32-byte key lives in a file apart from the store
//! (`--secrets-key-file`); the store keeps a sealed check value, so a
//! wrong key is refused at start, never read as garbage.

use std::io::Write as _;
use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const KEY_LEN: usize = 32;
const CHECK: &[u8] = b"bronze secrets key check";
const CHECK_AAD: &str = "key-check";

pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("secrets key file {path}: {message}")]
    File { path: String, message: String },
    #[error(
        "the secrets key does not open this store's secrets (a different key file than the one \
         they were sealed with?)"
    )]
    Wrong,
}

/// A sealed value that does not open (wrong key, or tampered).
#[derive(Debug, thiserror::Error)]
#[error("a sealed value does not open with this key")]
pub struct OpenError;

impl Sealer {
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        Some(Self {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// A key of this process only (a scheduler whose state is in memory).
    pub fn ephemeral() -> Self {
        let rng = SystemRandom::new();
        let mut bytes = [0u8; KEY_LEN];
        rng.fill(&mut bytes)
            .expect("the system's random source works");
        Self::from_bytes(&bytes).expect("a 32-byte key")
    }

    /// Reads the key (64 hex digits) from `path`, or creates the file
    /// (mode 0600) with a new random key when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let err = |message: String| KeyError::File {
            path: path.display().to_string(),
            message,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = decode_hex(text.trim()).ok_or_else(|| {
                    err("expected 64 hex digits (a 256-bit key) and nothing else".into())
                })?;
                Self::from_bytes(&bytes).ok_or_else(|| err("not a 256-bit key".into()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = SystemRandom::new();
                let mut bytes = [0u8; KEY_LEN];
                rng.fill(&mut bytes)
                    .map_err(|_| err("the system's random source failed".into()))?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
                }
                let mut f = open_new_private(path).map_err(|e| err(e.to_string()))?;
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                f.write_all(format!("{hex}\n").as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| err(e.to_string()))?;
                tracing::info!(path = %path.display(), "created a new secrets key");
                Self::from_bytes(&bytes).ok_or_else(|| err("not a 256-bit key".into()))
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Nonce, then ciphertext and tag.
    pub fn seal(&self, aad: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the system's random source works");
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut body,
            )
            .expect("sealing a value within AES-GCM's limits");
        out.extend_from_slice(&body);
        out
    }

    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError)?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut body)
            .map_err(|_| OpenError)?;
        Ok(plain.to_vec())
    }

    /// The value the store keeps to recognise its key.
    pub fn check_value(&self) -> Vec<u8> {
        self.seal(CHECK_AAD, CHECK)
    }

    /// Whether `stored` (a [`Self::check_value`]) was made with this key.
    pub fn verify(&self, stored: &[u8]) -> Result<(), KeyError> {
        match self.open(CHECK_AAD, stored) {
            Ok(v) if v == CHECK => Ok(()),
            _ => Err(KeyError::Wrong),
        }
    }
}

/// The associated data of a secret's version.
pub fn aad(name: &str, version: u64) -> String {
    format!("secret/{name}/{version}")
}

fn open_new_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o.open(path)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != KEY_LEN * 2 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_refuses_the_wrong_key_or_name() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("keys").join("secrets.key");
        let a = Sealer::load_or_create(&path).expect("created");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = Sealer::load_or_create(&path).expect("read back");
        let sealed = a.seal(&aad("db", 1), b"hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            again.open(&aad("db", 1), &sealed).expect("opens"),
            b"hunter2"
        );
        assert!(
            again.open(&aad("db", 2), &sealed).is_err(),
            "bound to its version"
        );
        assert!(
            again.open(&aad("other", 1), &sealed).is_err(),
            "bound to its name"
        );
        let check = a.check_value();
        again.verify(&check).expect("same key");
        let other = Sealer::ephemeral();
        assert!(matches!(other.verify(&check), Err(KeyError::Wrong)));
        assert!(other.open(&aad("db", 1), &sealed).is_err());
        std::fs::write(&path, "not hex").expect("write");
        let e = Sealer::load_or_create(&path)
            .expect_err("bad file")
            .to_string();
        assert!(e.contains("64 hex digits"), "{e}");
    }
}
