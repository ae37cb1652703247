//! Unpacking a package into its task's directory: `.tar.gz`, `.tar` and `.zip`, told apart by
//! their first bytes. Nothing is written outside the directory: a path that is absolute or
//! climbs out with `..`, an entry that would be written through a link unpacked before it,
//! and a link whose target is absolute or climbs out, fail the task; so does an archive that
//! unpacks to more than its limit (by default [`MAX_UNPACKED`] bytes: a zip bomb), counted
//! from the bytes actually written, not from what the archive declares.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Component, Path, PathBuf};

/// Most bytes one package may unpack to, unless the worker is told otherwise.
pub const MAX_UNPACKED: u64 = 8 * 1024 * 1024 * 1024;

/// Unpacks `archive` into `dir` (which exists); how many files it wrote.
///
/// # Errors
/// Why it was refused or failed, naming the entry.
pub fn unpack(archive: &Path, dir: &Path, limit: u64) -> Result<u64, String> {
    let mut f = File::open(archive).map_err(|e| format!("cannot open the package: {e}"))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(|e| e.to_string())?;
    f.rewind().map_err(|e| e.to_string())?;
    match &magic[..n] {
        [0x1f, 0x8b, ..] => tar(flate2::read::GzDecoder::new(f), dir, limit),
        [b'P', b'K', 3, 4] | [b'P', b'K', 5, 6] => zip(f, dir, limit),
        _ if is_tar(archive) => tar(f, dir, limit),
        _ => Err("the package is not a .tar.gz, .tar or .zip archive".to_owned()),
    }
}

/// A tar archive has `ustar` at offset 257.
fn is_tar(archive: &Path) -> bool {
    let mut head = [0u8; 263];
    File::open(archive)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head[257..262] == b"ustar")
}

/// The path of an entry inside `dir`, or why it would leave it: its name must not climb
/// out, and nothing is ever written through a link (no directory on its way and not the
/// entry itself may be a link already unpacked), so a link can only be read, never used to
/// place a file elsewhere.
fn inside(dir: &Path, name: &Path) -> Result<PathBuf, String> {
    let outside = || {
        format!(
            "entry {} would be written outside the task directory",
            name.display()
        )
    };
    let mut out = dir.to_path_buf();
    for part in name.components() {
        match part {
            Component::Normal(p) => {
                out.push(p);
                let is_link =
                    std::fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink());
                if is_link {
                    return Err(format!(
                        "entry {} would be written through the link {}, outside the task directory",
                        name.display(),
                        out.strip_prefix(dir).unwrap_or(&out).display()
                    ));
                }
            }
            Component::CurDir => {}
            _ => return Err(outside()),
        }
    }
    if out == dir {
        return Err(outside());
    }
    Ok(out)
}

/// Whether a link at `at` (relative to `dir`) pointing to `target` stays inside `dir`.
fn link_stays_inside(at: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = at.components().count() as i64 - 1;
    for part in target.components() {
        match part {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// Counts written bytes against the limit.
struct Budget {
    limit: u64,
    left: u64,
}

impl Budget {
    fn copy(&mut self, from: &mut impl Read, to: &Path, name: &Path) -> Result<(), String> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", name.display()))?;
        }
        let mut out = File::create(to).map_err(|e| format!("{}: {e}", name.display()))?;
        // One byte more than is left: reading it means the limit was passed.
        let mut limited = from.take(self.left.saturating_add(1));
        let n = std::io::copy(&mut limited, &mut out)
            .map_err(|e| format!("{}: {e}", name.display()))?;
        if n > self.left {
            return Err(format!(
                "the package unpacks to more than {} bytes (at {}): refused as a possible archive bomb",
                self.limit,
                name.display()
            ));
        }
        self.left -= n;
        Ok(())
    }
}

fn tar(reader: impl Read, dir: &Path, limit: u64) -> Result<u64, String> {
    let mut archive = tar::Archive::new(reader);
    let mut budget = Budget { limit, left: limit };
    let mut files = 0;
    let entries = archive
        .entries()
        .map_err(|e| format!("unreadable archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("unreadable archive: {e}"))?;
        let name = entry.path().map_err(|e| e.to_string())?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            // Metadata (`git archive` writes a global header with the commit): no file.
            continue;
        }
        let to = inside(dir, &name)?;
        if kind.is_dir() {
            std::fs::create_dir_all(&to).map_err(|e| format!("{}: {e}", name.display()))?;
        } else if kind.is_file() {
            budget.copy(&mut entry, &to, &name)?;
            if let Ok(mode) = entry.header().mode() {
                set_mode(&to, mode);
            }
            files += 1;
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("link {} has no target", name.display()))?
                .into_owned();
            if !link_stays_inside(&name, &target) {
                return Err(format!(
                    "link {} -> {} points outside the task directory",
                    name.display(),
                    target.display()
                ));
            }
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::os::unix::fs::symlink(&target, &to)
                .map_err(|e| format!("{}: {e}", name.display()))?;
        } else {
            return Err(format!(
                "entry {} is a {kind:?}; only files, directories and links inside are unpacked",
                name.display()
            ));
        }
    }
    Ok(files)
}

fn zip(f: File, dir: &Path, limit: u64) -> Result<u64, String> {
    let mut archive = zip::ZipArchive::new(f).map_err(|e| format!("unreadable zip: {e}"))?;
    let mut budget = Budget { limit, left: limit };
    let mut files = 0;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| format!("unreadable zip: {e}"))?;
        let name = PathBuf::from(entry.name());
        let to = inside(dir, &name)?;
        if entry.is_symlink() {
            return Err(format!(
                "zip entry {} is a link; links are unpacked from tar archives only",
                name.display()
            ));
        }
        if entry.is_dir() {
            std::fs::create_dir_all(&to).map_err(|e| format!("{}: {e}", name.display()))?;
            continue;
        }
        budget.copy(&mut entry, &to, &name)?;
        if let Some(mode) = entry.unix_mode() {
            set_mode(&to, mode);
        }
        files += 1;
    }
    Ok(files)
}

/// Keeps the permission bits an entry had (executables stay executable).
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o777));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_may_point_within_the_directory_only() {
        assert!(link_stays_inside(Path::new("a/b"), Path::new("c")));
        assert!(link_stays_inside(Path::new("a/b"), Path::new("../c")));
        assert!(!link_stays_inside(Path::new("a/b"), Path::new("../../c")));
        assert!(!link_stays_inside(Path::new("b"), Path::new("/etc/passwd")));
    }

    #[test]
    fn an_entry_may_not_climb_out() {
        let d = Path::new("/nonexistent-t");
        assert_eq!(
            inside(d, Path::new("./a/b")),
            Ok(PathBuf::from("/nonexistent-t/a/b"))
        );
        assert!(inside(d, Path::new("a/../../b")).is_err());
        assert!(inside(d, Path::new("/etc/x")).is_err());
        assert!(inside(d, Path::new(".")).is_err());
    }

    /// A tar of entries written as given (links and names no tool would write).
    fn tar_of(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if !link.is_empty() {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).expect("appends");
        }
        b.into_inner().expect("finishes")
    }

    fn unpack_tar(
        entries: &[(&str, tar::EntryType, &str, &[u8])],
    ) -> (tempfile::TempDir, Result<u64, String>) {
        let root = tempfile::tempdir().expect("tempdir");
        let archive = root.path().join("p.tar");
        std::fs::write(&archive, tar_of(entries)).expect("writes");
        let dir = root.path().join("task").join("package");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let r = unpack(&archive, &dir, 1 << 20);
        (root, r)
    }

    #[test]
    fn a_chain_of_links_cannot_carry_a_file_outside() {
        use tar::EntryType::{Regular, Symlink};
        let (root, r) = unpack_tar(&[
            ("l", Symlink, ".", b""),
            ("l/l/l/x", Symlink, "../../..", b""),
            ("x/escaped", Regular, "", b"gotcha"),
        ]);
        let err = r.expect_err("refused");
        assert!(err.contains("through the link"), "{err}");
        assert!(!root.path().join("escaped").exists());
        assert!(!root.path().join("task").join("escaped").exists());
    }

    #[test]
    fn links_inside_files_and_git_archive_headers_unpack() {
        use tar::EntryType::{Directory, Regular, Symlink, XGlobalHeader};
        let (root, r) = unpack_tar(&[
            (
                "pax_global_header",
                XGlobalHeader,
                "",
                b"52 comment=0123456789abcdef0123456789abcdef01234567\n",
            ),
            ("app/", Directory, "", b""),
            ("app/run.sh", Regular, "", b"echo hi\n"),
            ("current", Symlink, "app", b""),
        ]);
        assert_eq!(r, Ok(1));
        let dir = root.path().join("task").join("package");
        assert_eq!(
            std::fs::read(dir.join("current/run.sh")).expect("reads"),
            b"echo hi\n"
        );
    }

    #[test]
    fn an_archive_bomb_stops_at_the_limit() {
        use std::io::Write as _;
        let root = tempfile::tempdir().expect("tempdir");
        let archive = root.path().join("bomb.zip");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&archive).expect("creates"));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.start_file("zeros", opts).expect("starts");
        z.write_all(&vec![0u8; 4 << 20]).expect("writes");
        z.finish().expect("finishes");
        let dir = root.path().join("out");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let err = unpack(&archive, &dir, 1 << 20).expect_err("over the limit");
        assert!(err.contains("archive bomb"), "{err}");
        assert!(std::fs::metadata(dir.join("zeros")).expect("partial").len() <= (1 << 20) + 1);
        let dir2 = root.path().join("out2");
        std::fs::create_dir_all(&dir2).expect("mkdir");
        assert_eq!(
            unpack(&archive, &dir2, 8 << 20),
            Ok(1),
            "under the limit it unpacks"
        );
    }
}
