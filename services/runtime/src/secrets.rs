//! The cryptography of sensitive variables, for the edges that hold keys: the planner's
//! master key (ChaCha20-Poly1305 from `ring`, a random nonce per value, the value bound to
//! its deployment, step and name as associated data) and the pools' curve25519 keys (nkeys
//! `XKey`: a one-time sender key per value, so only the pool's secret key opens it; the
//! value bound to its task, attempt and name inside what is sealed).
//!
//! Key files: the master key is 64 hex digits on one line; a pool's secret key is an nkeys
//! curve seed (`SX…`), its public key the matching `X…`. Every file with a secret in it is
//! created `0600` and never overwritten.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use shoal_shared::secret::{PoolKey, Sealed, SealedFor, SecretString, binding};
use std::path::{Path, PathBuf};

const NONCE_LEN: usize = 12;

/// What went wrong with a key or a sealed value. Never holds a value in clear.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a key file of the expected kind: {why}")]
    BadKeyFile { path: PathBuf, why: String },
    #[error(
        "key file {path} is readable by others (mode {mode:o}); make it private: chmod 600 {path}"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "sensitive variable {name} is sealed for the master key {wanted}, but this planner has master key {have}; start it with the master key the log was written with (--master-key / SHOAL_MASTER_KEY)"
    )]
    WrongMasterKey {
        name: String,
        wanted: String,
        have: String,
    },
    #[error(
        "sensitive variable {name} is sealed for pool key {wanted}, which this worker does not hold (it holds: {have}); give it that pool's secret key with --pool-key / SHOAL_POOL_KEY"
    )]
    NotOurKey {
        name: String,
        wanted: String,
        have: String,
    },
    #[error(
        "sensitive variable {name} does not open: it was altered or moved from another {scope}"
    )]
    DoesNotOpen { name: String, scope: &'static str },
    #[error("no random numbers from the operating system")]
    Random,
}

/// The planner's master key: seals sensitive values for the log.
pub struct MasterKey {
    key: LessSafeKey,
    /// For MACs of what must be compared but not guessed (a request's fingerprint), derived
    /// from the key so that it is never the sealing key itself.
    mac: ring::hmac::Key,
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    fn from_bytes(bytes: &[u8; 32]) -> MasterKey {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let id = shoal_shared::hex::encode(&digest.as_ref()[..8]);
        // 32 bytes is ChaCha20-Poly1305's key length: `new` cannot fail.
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map(LessSafeKey::new)
            .unwrap_or_else(|_| unreachable!("32-byte key"));
        let mut derived = b"shoal master key: mac\n".to_vec();
        derived.extend_from_slice(bytes);
        let mac_key = ring::digest::digest(&ring::digest::SHA256, &derived);
        let mac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, mac_key.as_ref());
        MasterKey { key, mac, id }
    }

    /// HMAC-SHA256 (hex) of `bytes` under a key derived from the master key, bound to
    /// `purpose`: a fingerprint that can be compared and recorded without letting anyone
    /// who reads it test guesses of what it covers.
    pub fn fingerprint(&self, purpose: &str, bytes: &[u8]) -> String {
        let mut ctx = ring::hmac::Context::with_key(&self.mac);
        ctx.update(purpose.as_bytes());
        ctx.update(b"\n");
        ctx.update(bytes);
        shoal_shared::hex::encode(ctx.sign().as_ref())
    }

    /// The key's id: the first 8 bytes of its SHA-256, hex. Recorded with every value it
    /// seals, so a wrong key is named, not guessed.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads a master key file.
    ///
    /// # Errors
    /// The file cannot be read, is readable by others, or is not 64 hex digits.
    pub fn load(path: &Path) -> Result<MasterKey, SecretError> {
        let text = read_private(path)?;
        // Upper case is read too: a key may have been copied by hand.
        let bytes = shoal_shared::hex::decode(&text.trim().to_ascii_lowercase())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| SecretError::BadKeyFile {
                path: path.to_owned(),
                why: "a master key is 64 hex digits".to_owned(),
            })?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(MasterKey::from_bytes(&key))
    }

    /// Makes a new random master key and writes it to `path` (`0600`, never over an
    /// existing file).
    ///
    /// # Errors
    /// No randomness, or the file exists or cannot be written.
    pub fn create(path: &Path) -> Result<MasterKey, SecretError> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| SecretError::Random)?;
        write_private(path, &format!("{}\n", shoal_shared::hex::encode(&key)))?;
        Ok(MasterKey::from_bytes(&key))
    }

    /// Seals a value for the log, bound to `scope` (`deployment/<id>/<step>`) and `name`.
    ///
    /// # Errors
    /// No randomness for the nonce.
    pub fn seal(
        &self,
        scope: &str,
        name: &str,
        value: &SecretString,
    ) -> Result<Sealed, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretError::Random)?;
        let mut data = value.expose().as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(binding(scope, name)),
                &mut data,
            )
            .map_err(|_| SecretError::Random)?;
        let mut out = nonce.to_vec();
        out.append(&mut data);
        Ok(Sealed {
            to: SealedFor::Planner,
            key: self.id.clone(),
            from: String::new(),
            data: out,
        })
    }

    /// Opens a value sealed by [`MasterKey::seal`] with the same `scope` and `name`.
    ///
    /// # Errors
    /// Sealed for another key, altered, or bound elsewhere.
    pub fn open(
        &self,
        scope: &str,
        name: &str,
        sealed: &Sealed,
    ) -> Result<SecretString, SecretError> {
        if sealed.to != SealedFor::Planner || sealed.key != self.id {
            return Err(SecretError::WrongMasterKey {
                name: name.to_owned(),
                wanted: sealed.key.clone(),
                have: self.id.clone(),
            });
        }
        let fail = || SecretError::DoesNotOpen {
            name: name.to_owned(),
            scope: "deployment or step",
        };
        if sealed.data.len() < NONCE_LEN {
            return Err(fail());
        }
        let (nonce, ct) = sealed.data.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail())?;
        let mut buf = ct.to_vec();
        let clear = self
            .key
            .open_in_place(nonce, Aad::from(binding(scope, name)), &mut buf)
            .map_err(|_| fail())?;
        let text = String::from_utf8(clear.to_vec()).map_err(|_| fail());
        zeroize::Zeroize::zeroize(&mut buf);
        text.map(SecretString::new)
    }
}

/// The scope a value is bound to in the log.
pub fn rest_scope(deployment: &impl std::fmt::Display, step: &str) -> String {
    format!("deployment/{deployment}/{step}")
}

/// The scope a value is bound to in a task message.
pub fn wire_scope(task: &impl std::fmt::Display, attempt: u32) -> String {
    format!("task/{task}/{attempt}")
}

/// A pool's secret key, held by its workers (and by the planner for the built-in worker's
/// default pool).
#[derive(Clone)]
pub struct PoolSecretKey {
    key: nkeys::XKey,
    public: PoolKey,
}

impl std::fmt::Debug for PoolSecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PoolSecretKey({})", self.public)
    }
}

impl PoolSecretKey {
    /// A new random pool key.
    pub fn generate() -> PoolSecretKey {
        let key = nkeys::XKey::new();
        let public = PoolKey::parse(key.public_key())
            .unwrap_or_else(|e| unreachable!("nkeys makes valid keys: {e}"));
        PoolSecretKey { key, public }
    }

    /// Its public key, to register with the pool.
    pub fn public(&self) -> &PoolKey {
        &self.public
    }

    /// Reads a pool secret key file (an nkeys curve seed, `SX…`).
    ///
    /// # Errors
    /// The file cannot be read, is readable by others, or holds no curve seed.
    pub fn load(path: &Path) -> Result<PoolSecretKey, SecretError> {
        let text = read_private(path)?;
        let key = nkeys::XKey::from_seed(text.trim()).map_err(|e| SecretError::BadKeyFile {
            path: path.to_owned(),
            why: format!("a pool secret key is an nkeys curve seed (SX…): {e}"),
        })?;
        let public = PoolKey::parse(key.public_key()).map_err(|why| SecretError::BadKeyFile {
            path: path.to_owned(),
            why,
        })?;
        Ok(PoolSecretKey { key, public })
    }

    /// Writes the secret key to `path` (`0600`, never over an existing file).
    ///
    /// # Errors
    /// The file exists or cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), SecretError> {
        let seed = self.key.seed().map_err(|e| SecretError::BadKeyFile {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        write_private(path, &format!("{seed}\n"))
    }
}

/// Seals a value so that only the holders of `pool`'s secret key can open it, bound to
/// `scope` (`task/<id>/<attempt>`) and `name`.
///
/// # Errors
/// The public key does not decode.
pub fn seal_for_pool(
    pool: &PoolKey,
    scope: &str,
    name: &str,
    value: &SecretString,
) -> Result<Sealed, SecretError> {
    let recipient =
        nkeys::XKey::from_public_key(pool.as_str()).map_err(|e| SecretError::BadKeyFile {
            path: PathBuf::from("(registered pool key)"),
            why: e.to_string(),
        })?;
    let sender = nkeys::XKey::new();
    let mut clear = binding(scope, name);
    clear.extend_from_slice(value.expose().as_bytes());
    let data = sender.seal(&clear, &recipient);
    zeroize::Zeroize::zeroize(&mut clear);
    let data = data.map_err(|_| SecretError::Random)?;
    Ok(Sealed {
        to: SealedFor::Pool,
        key: pool.as_str().to_owned(),
        from: sender.public_key(),
        data,
    })
}

/// Opens a value sealed by [`seal_for_pool`] with one of `keys` (several during a key
/// rotation), checking it was sealed for this `scope` and `name`.
///
/// # Errors
/// Sealed for a key not in `keys`, altered, or bound to another task, attempt or name.
pub fn open_for_pool(
    keys: &[PoolSecretKey],
    scope: &str,
    name: &str,
    sealed: &Sealed,
) -> Result<SecretString, SecretError> {
    let key = keys
        .iter()
        .find(|k| sealed.to == SealedFor::Pool && k.public.as_str() == sealed.key)
        .ok_or_else(|| SecretError::NotOurKey {
            name: name.to_owned(),
            wanted: if sealed.to == SealedFor::Pool {
                sealed.key.clone()
            } else {
                format!("(none: sealed for the planner's master key {})", sealed.key)
            },
            have: if keys.is_empty() {
                "none".to_owned()
            } else {
                keys.iter()
                    .map(|k| k.public.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })?;
    let fail = || SecretError::DoesNotOpen {
        name: name.to_owned(),
        scope: "task, attempt or variable",
    };
    let sender = nkeys::XKey::from_public_key(&sealed.from).map_err(|_| fail())?;
    let mut clear = key.key.open(&sealed.data, &sender).map_err(|_| fail())?;
    let bound = binding(scope, name);
    let value = clear
        .strip_prefix(bound.as_slice())
        .ok_or_else(fail)
        .and_then(|v| std::str::from_utf8(v).map_err(|_| fail()))
        .map(SecretString::new);
    zeroize::Zeroize::zeroize(&mut clear);
    value
}

/// Reads a file holding a secret, refusing one that others may read.
fn read_private(path: &Path) -> Result<String, SecretError> {
    crate::private_file::read(path).map_err(|e| match e {
        crate::private_file::ReadError::Io(source) => SecretError::Read {
            path: path.to_owned(),
            source,
        },
        crate::private_file::ReadError::TooOpen(mode) => SecretError::TooOpen {
            path: path.to_owned(),
            mode,
        },
    })
}

/// Writes a new file only its owner may read; never replaces one.
fn write_private(path: &Path, text: &str) -> Result<(), SecretError> {
    crate::private_file::create(path, text, 0o600).map_err(|source| SecretError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Writes a public file (a pool's public key); never replaces one.
///
/// # Errors
/// The file exists or cannot be written.
pub fn write_public(path: &Path, text: &str) -> Result<(), SecretError> {
    crate::private_file::create(path, text, 0o644).map_err(|source| SecretError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_master_key_opens_only_what_it_sealed_where_it_sealed_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/master.key");
        let key = MasterKey::create(&path).expect("created");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(MasterKey::create(&path).is_err(), "never overwritten");
        let again = MasterKey::load(&path).expect("loads");
        assert_eq!(again.id(), key.id());
        let value = SecretString::new("s3cr3t-value");
        let sealed = key.seal("deployment/d/s", "PW", &value).expect("sealed");
        assert!(!sealed.data.windows(6).any(|w| w == b"s3cr3t"));
        let opened = again.open("deployment/d/s", "PW", &sealed).expect("opens");
        assert_eq!(opened.expose(), "s3cr3t-value");
        assert!(again.open("deployment/d/s", "OTHER", &sealed).is_err());
        assert!(again.open("deployment/e/s", "PW", &sealed).is_err());
        let other = MasterKey::create(&dir.path().join("other.key")).expect("created");
        assert!(matches!(
            other.open("deployment/d/s", "PW", &sealed),
            Err(SecretError::WrongMasterKey { .. })
        ));
    }

    #[test]
    fn only_the_pools_key_opens_what_is_sealed_for_it() {
        let pool = PoolSecretKey::generate();
        let other = PoolSecretKey::generate();
        let value = SecretString::new("pool-secret");
        let sealed = seal_for_pool(pool.public(), "task/t/1", "PW", &value).expect("sealed");
        let opened = open_for_pool(&[other.clone(), pool.clone()], "task/t/1", "PW", &sealed)
            .expect("opens");
        assert_eq!(opened.expose(), "pool-secret");
        assert!(matches!(
            open_for_pool(std::slice::from_ref(&other), "task/t/1", "PW", &sealed),
            Err(SecretError::NotOurKey { .. })
        ));
        assert!(open_for_pool(std::slice::from_ref(&pool), "task/t/2", "PW", &sealed).is_err());
        let mut altered = sealed.clone();
        if let Some(b) = altered.data.last_mut() {
            *b ^= 1;
        }
        assert!(open_for_pool(std::slice::from_ref(&pool), "task/t/1", "PW", &altered).is_err());
    }

    #[test]
    fn a_pool_key_survives_its_file_and_a_shared_key_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("eu.xkey");
        let key = PoolSecretKey::generate();
        key.save(&path).expect("saved");
        assert_eq!(
            PoolSecretKey::load(&path).expect("loads").public(),
            key.public()
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            PoolSecretKey::load(&path),
            Err(SecretError::TooOpen { .. })
        ));
    }
}
