//! Writing the bundle's files: secrets (keys, seeds, passwords, configs that hold
//! passwords) readable by their owner only, certificates readable by all; a secret that
//! exists is read back, never replaced.

use crate::TrustError;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrustError + '_ {
    move |source| TrustError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_mode(path: &Path, text: &str, mode: u32) -> Result<(), TrustError> {
    // Written beside and renamed, so a reader (nats-server on reload) never sees half a file.
    let tmp = path.with_extension("tmp~");
    // Made anew, so a leftover of a crashed run cannot lend its (looser) mode to a secret.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp)(e)),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Writes a file only its owner may read.
///
/// # Errors
/// It cannot be written.
pub fn write_secret(path: &Path, text: &str) -> Result<(), TrustError> {
    write_mode(path, text, 0o600)
}

/// Writes a file anyone may read.
///
/// # Errors
/// It cannot be written.
pub fn write_public(path: &Path, text: &str) -> Result<(), TrustError> {
    write_mode(path, text, 0o644)
}

/// The text of `path`, or `make()` written there first (as a secret when `secret`).
///
/// # Errors
/// It cannot be read or written, or `make` failed.
pub fn read_or(
    path: &Path,
    make: impl FnOnce() -> Result<String, TrustError>,
    secret: bool,
) -> Result<String, TrustError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = make()?;
            if secret {
                write_secret(path, &text)?;
            } else {
                write_public(path, &text)?;
            }
            Ok(text)
        }
        Err(e) => Err(io(path)(e)),
    }
}
