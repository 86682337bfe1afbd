//! Secret files: the one way certkeeper reads a secret an operator put in a file (the master
//! key, a webhook's HMAC key, the TSIG secret, an ACME issuer's EAB key).
//!
//! Secrets come from files, never inline in the config (STYLE.md), so the file is the secret's
//! only protection. A secret file is accepted when:
//! - it is a regular file (a FIFO or device would hang or flood the read);
//! - it is owned by the daemon's user (effective uid) or by root: another user who owns it can
//!   read or replace it whatever its mode says;
//! - group and others have no permission bits at all: 0400 or 0600, as `master-key generate`
//!   writes and systemd's credentials (`LoadCredential=`, under `$CREDENTIALS_DIRECTORY`: 0400,
//!   owned by the service's user) are;
//! - it holds something besides whitespace, and at most [`MAX_LEN`] bytes.
//!
//! Its contents come back in a [`Zeroizing`] buffer sized before the read, so no copy of the
//! secret is left behind in freed memory by growing it. Errors name the file and what is wrong
//! with it, never anything of what it holds (L8 of the security review).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// The largest secret file read: keys are tens of bytes, a PEM key a few kilobytes.
pub const MAX_LEN: u64 = 64 * 1024;

/// A secret file that cannot be used; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct SecretFileError {
    pub path: PathBuf,
    pub problem: Problem,
}

/// What is wrong with a secret file (without its name: [`SecretFileError`] adds that).
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    #[error("not a regular file")]
    NotAFile,
    #[error("mode {mode:04o} gives group or others access; chmod 0400 it (0600 also works)")]
    Mode { mode: u32 },
    #[error(
        "owned by uid {owner}, neither the daemon's user (uid {daemon}) nor root; chown it to the daemon's user"
    )]
    Owner { owner: u32, daemon: u32 },
    #[error("is empty")]
    Empty,
    #[error("is larger than {max} bytes, too large for a secret")]
    TooLarge { max: u64 },
}

/// Reads the secret file at `path` after the checks of the module header.
pub fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, SecretFileError> {
    read_checked(path).map_err(|problem| SecretFileError {
        path: path.to_owned(),
        problem,
    })
}

fn read_checked(path: &Path) -> Result<Zeroizing<Vec<u8>>, Problem> {
    // Checked before opening too: opening a FIFO blocks until someone writes to it.
    let named = std::fs::metadata(path).map_err(Problem::Read)?;
    if !named.is_file() {
        return Err(Problem::NotAFile);
    }
    let file = std::fs::File::open(path).map_err(Problem::Read)?;
    // The checks that count are on what was opened, not on what the name pointed to before.
    let meta = file.metadata().map_err(Problem::Read)?;
    check(&meta, rustix::process::geteuid().as_raw())?;
    let mut contents = Zeroizing::new(Vec::with_capacity(
        usize::try_from(meta.len().min(MAX_LEN) + 1).unwrap_or(0),
    ));
    file.take(MAX_LEN + 1)
        .read_to_end(&mut contents)
        .map_err(Problem::Read)?;
    if contents.len() as u64 > MAX_LEN {
        return Err(Problem::TooLarge { max: MAX_LEN });
    }
    if contents.iter().all(u8::is_ascii_whitespace) {
        return Err(Problem::Empty);
    }
    Ok(contents)
}

/// The type, owner and mode rules for a secret file, `daemon` being our effective uid.
fn check(meta: &std::fs::Metadata, daemon: u32) -> Result<(), Problem> {
    if !meta.is_file() {
        return Err(Problem::NotAFile);
    }
    let owner = meta.uid();
    if owner != daemon && owner != 0 {
        return Err(Problem::Owner { owner, daemon });
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Problem::Mode { mode });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn file(dir: &Path, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn reads_a_private_file_and_refuses_the_others_naming_the_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let secret = b"s3cr3t-value\n";
        for mode in [0o400, 0o600, 0o700] {
            let path = file(dir.path(), "ok", secret, mode);
            assert_eq!(read(&path).unwrap().as_slice(), secret);
            std::fs::remove_file(&path).unwrap();
        }
        let cases: [(&str, &[u8], u32, &str); 5] = [
            (
                "world",
                secret,
                0o644,
                "mode 0644 gives group or others access; chmod 0400",
            ),
            ("group", secret, 0o640, "mode 0640"),
            ("groupwrite", secret, 0o620, "mode 0620"),
            ("empty", b"", 0o600, "is empty"),
            ("blank", b" \n\t\n", 0o600, "is empty"),
        ];
        for (name, contents, mode, want) in cases {
            let path = file(dir.path(), name, contents, mode);
            let err = read(&path).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
            assert!(err.contains(want), "{name}: {err}");
            assert!(!err.contains("s3cr3t"), "{err}");
        }
        let big = file(dir.path(), "big", &vec![b'x'; 70_000], 0o600);
        let err = read(&big).unwrap_err().to_string();
        assert!(err.contains("larger than 65536 bytes"), "{err}");

        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with(": not a regular file"), "{err}");
        let err = read(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(err.contains("missing: cannot read: No such file"), "{err}");
    }

    #[test]
    fn a_file_of_another_user_is_refused() {
        // Our own file, checked as if the daemon ran as someone else; root's files pass.
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "theirs", b"x", 0o600);
        let meta = std::fs::metadata(&path).unwrap();
        let ours = meta.uid();
        assert!(check(&meta, ours).is_ok());
        let other = ours.wrapping_add(1).max(1);
        let checked = check(&meta, other);
        if ours == 0 {
            assert!(checked.is_ok(), "root's files are accepted");
        } else {
            assert_eq!(
                checked.unwrap_err().to_string(),
                format!(
                    "owned by uid {ours}, neither the daemon's user (uid {other}) nor root; chown it to the daemon's user"
                )
            );
        }
    }
}
