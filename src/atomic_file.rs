//! Writing files so that a reader never sees half of one, and a crash never leaves one.
//!
//! Two guarantees, one way each:
//!
//! - [`replace`]: the file at `path` is either the old one or the whole new one (exported
//!   certificates, HTTP-01 webroot files, and next deployed certificates);
//! - [`create_new`]: a file that must never overwrite an existing one (a new master key) appears
//!   whole under its name or not at all.
//!
//! Both write a temporary file in the same directory (a rename or link across file systems
//! would not be atomic), fsync it, give it its name, and fsync the directory so that the name
//! itself survives a crash. A failure removes the temporary file.
//!
//! The mode asked for is the mode the file gets, whatever the process umask: the packaged unit
//! runs with `UMask=0077`, under which `open(2)` alone would turn a 0644 HTTP-01 challenge
//! file into 0600, unreadable by the web server that must serve it.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with a file holding `bytes`, with exactly `mode`.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let (dir, tmp) = temporary(path)?;
    let result = write_synced(&tmp, bytes, mode)
        .and_then(|()| std::fs::rename(&tmp, path))
        .and_then(|()| sync_dir(dir));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `path` holding `bytes` with exactly `mode`; fails with `AlreadyExists` (and changes
/// nothing) when something is already there.
pub fn create_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let (dir, tmp) = temporary(path)?;
    // A hard link, unlike a rename, refuses to replace an existing name.
    let result = write_synced(&tmp, bytes, mode)
        .and_then(|()| std::fs::hard_link(&tmp, path))
        .and_then(|()| sync_dir(dir));
    let _ = std::fs::remove_file(&tmp);
    result
}

/// The directory of `path` and a temporary name beside it, unique to this process.
fn temporary(path: &Path) -> std::io::Result<(&Path, PathBuf)> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} is not a file path", path.display())))?;
    // Unique within this process too: two writers of one path must not share a temporary file.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    // Left over by a crash of an earlier process with the same pid: never ours to keep.
    let _ = std::fs::remove_file(&tmp);
    Ok((dir, tmp))
}

fn write_synced(tmp: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    // open(2) applied the umask to `mode`; fchmod does not, and the file has no name yet that
    // anyone could open with the narrower mode.
    file.set_permissions(Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn replaces_whole_file_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.pem");
        replace(&path, b"one", 0o600).unwrap();
        replace(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left behind"
        );
    }

    #[test]
    fn creates_only_what_does_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master-key");
        create_new(&path, b"first", 0o400).unwrap();
        assert_eq!(mode(&path), 0o400);
        let err = create_new(&path, b"second", 0o400).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first", "unchanged");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A directory that does not exist: an error, nothing created.
        let missing = dir.path().join("no/such/file");
        assert!(create_new(&missing, b"x", 0o600).is_err());
        assert!(replace(&missing, b"x", 0o600).is_err());
    }
}
