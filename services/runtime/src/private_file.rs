//! Files that hold keys: made new (never replacing one) readable by their owner only, and
//! read only while no one else may read them. The signing key, the master key and the pool
//! keys are all kept this way.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Why a key file was not read.
#[derive(Debug)]
pub enum ReadError {
    /// It cannot be read.
    Io(std::io::Error),
    /// Others may read it (its permission bits).
    TooOpen(u32),
}

/// Writes `text` to a new file at `path` with `mode` (0o600 for a secret), making its
/// directory first; an existing file is never replaced (`ErrorKind::AlreadyExists`).
///
/// # Errors
/// The file exists or cannot be written.
pub fn create(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// The text of the key file at `path`, refused when group or others may read it.
///
/// # Errors
/// It cannot be read, or it is open to others.
pub fn read(path: &Path) -> Result<String, ReadError> {
    let mode = std::fs::metadata(path)
        .map_err(ReadError::Io)?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(ReadError::TooOpen(mode));
    }
    std::fs::read_to_string(path).map_err(ReadError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_made_private_never_replaced_and_refused_once_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keys/k");
        create(&path, "secret", 0o600).expect("made");
        assert_eq!(read(&path).ok().as_deref(), Some("secret"));
        let again = create(&path, "other", 0o600).expect_err("exists");
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(read(&path), Err(ReadError::TooOpen(0o644))));
    }
}
