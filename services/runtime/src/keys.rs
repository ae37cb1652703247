//! Key files of message signing: the planner's signing key (secret, mode 0600) beside its
//! public key (`<key file>.pub`, one line to put in workers' trusted keys), and the workers'
//! trusted keys file. The keys themselves are `shoal_shared::signed`.

use shoal_shared::signed::{KeyError, SigningKey, TrustedKeys};
use std::path::{Path, PathBuf};

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: KeyError },
    #[error(
        "{path} already exists; refusing to overwrite a signing key (move it away first, or choose another --out)"
    )]
    Exists { path: PathBuf },
    #[error(
        "{path} can be read by other users (mode {mode:o}); a signing key must be private: chmod 600 {path}"
    )]
    TooOpen { path: PathBuf, mode: u32 },
}

/// Where the public key of the signing key at `key` is written: `<key>.pub`.
pub fn public_key_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Makes a new signing key at `path` (mode 0600, never overwriting) and its public key at
/// `<path>.pub`.
///
/// # Errors
/// The file exists, or a file cannot be written.
pub fn generate(path: &Path) -> Result<SigningKey, KeyFileError> {
    let key = SigningKey::generate().map_err(|source| KeyFileError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    crate::private_file::create(path, &key.to_file_text(), 0o600).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists {
                path: path.to_owned(),
            }
        } else {
            KeyFileError::Write {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    let public = public_key_path(path);
    std::fs::write(&public, format!("{}\n", key.public().to_line())).map_err(|source| {
        KeyFileError::Write {
            path: public.clone(),
            source,
        }
    })?;
    Ok(key)
}

/// Reads the signing key at `path`, refusing one that others can read.
///
/// # Errors
/// The file cannot be read, is open to others, or is not a signing key.
pub fn load(path: &Path) -> Result<SigningKey, KeyFileError> {
    let text = crate::private_file::read(path).map_err(|e| match e {
        crate::private_file::ReadError::Io(source) => KeyFileError::Read {
            path: path.to_owned(),
            source,
        },
        crate::private_file::ReadError::TooOpen(mode) => KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        },
    })?;
    SigningKey::parse(&text).map_err(|source| KeyFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Reads the signing key at `path`, making it (and its `.pub`) first if there is none.
/// Returns the key and whether it was made now.
///
/// # Errors
/// As [`load`] and [`generate`].
pub fn load_or_generate(path: &Path) -> Result<(SigningKey, bool), KeyFileError> {
    if path.exists() {
        let key = load(path)?;
        // A lost .pub is written again: it is public and follows from the key.
        let public = public_key_path(path);
        if !public.exists() {
            let _ = std::fs::write(&public, format!("{}\n", key.public().to_line()));
        }
        return Ok((key, false));
    }
    Ok((generate(path)?, true))
}

/// Reads a trusted keys file (one `ed25519 <key id> <hex>` line per key).
///
/// # Errors
/// The file cannot be read or holds a line that is not a public key, or no key.
pub fn load_trusted(path: &Path) -> Result<TrustedKeys, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    TrustedKeys::parse(&text).map_err(|source| KeyFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_generated_key_is_private_loads_again_and_is_never_overwritten() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keys/signing.key");
        let key = generate(&path).expect("generated");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).expect("loads").public(), key.public());
        let trusted = load_trusted(&public_key_path(&path)).expect("the .pub is a trusted file");
        assert_eq!(trusted.key_ids(), vec![key.key_id().to_string()]);
        assert!(matches!(generate(&path), Err(KeyFileError::Exists { .. })));
        let (again, made) = load_or_generate(&path).expect("loads");
        assert!(!made);
        assert_eq!(again.public(), key.public());
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("signing.key");
        generate(&path).expect("generated");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(load(&path), Err(KeyFileError::TooOpen { .. })));
    }
}
