//! Envelope encryption of private keys at rest (DESIGN.md §9).
//!
//! Each sealed record gets a fresh 256-bit data key. The record is encrypted with AES-256-GCM
//! under that data key, with the record's id as associated data, so a ciphertext copied onto
//! another row fails to open instead of silently yielding the wrong key. The data key is wrapped
//! (RFC 5649 AES key wrap with padding) under the master key. Rows remember which master key
//! wrapped them (`kid`), so the master key can be rotated by rewrapping data keys alone.
//!
//! Blob layout, version 1: `[1][wrapped key len: u8][wrapped key][nonce: 12][ciphertext+tag]`.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::digest;
use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
use base64::Engine;
use zeroize::Zeroizing;

const FORMAT_V1: u8 = 1;
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("master key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error(
        "record {record} is sealed with master key {kid}, which is not loaded (loaded: {loaded}); \
         configure the right secrets.master-key-file, or list the old key in secrets.previous-master-key-files"
    )]
    UnknownKey {
        record: String,
        kid: String,
        loaded: String,
    },
    #[error("record {record} cannot be opened: the master key or the stored ciphertext is wrong")]
    Corrupt { record: String },
    #[error("encryption failed")]
    Crypto,
}

/// A master key's bytes, on the heap from the moment they are read: moving a key around moves
/// the pointer, never the bytes (a moved array leaves a copy behind on the stack, M1).
pub type KeyBytes = Box<Zeroizing<[u8; KEY_LEN]>>;

/// A zeroed key to fill in place.
fn key_bytes() -> KeyBytes {
    Box::new(Zeroizing::new([0u8; KEY_LEN]))
}

/// One master key with its id. The bytes never leave this module.
struct MasterKey {
    kid: String,
    bytes: KeyBytes,
}

impl MasterKey {
    fn new(bytes: KeyBytes) -> Self {
        // The id is a hash of the key under a fixed label: stable, short, and it reveals
        // nothing about the key.
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"certkeeper master key id\0");
        ctx.update(bytes.as_slice());
        let hash = ctx.finish();
        let kid = hash.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self { kid, bytes }
    }
}

/// The master keys the daemon holds: the current one seals, every one can open.
pub struct Keyring {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

/// A sealed record as stored: the blob and the id of the master key that wraps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub kid: String,
    pub blob: Vec<u8>,
}

impl Keyring {
    pub fn new(current: KeyBytes, previous: Vec<KeyBytes>) -> Self {
        Self {
            current: MasterKey::new(current),
            previous: previous.into_iter().map(MasterKey::new).collect(),
        }
    }

    /// A keyring of one key given as bytes (tests and benchmarks).
    pub fn from_bytes(current: &[u8; KEY_LEN]) -> Self {
        let mut bytes = key_bytes();
        bytes.copy_from_slice(current);
        Self::new(bytes, Vec::new())
    }

    /// Loads the current key from `current` (creating it when `create` is set and the file
    /// does not exist) and older keys from `previous`.
    pub fn load(
        current: &Path,
        create: bool,
        previous: &[PathBuf],
    ) -> Result<(Self, bool), SealError> {
        let created = create && !current.exists();
        if created {
            write_new_key_file(current)?;
        }
        let mut old = Vec::with_capacity(previous.len());
        for path in previous {
            old.push(read_key_file(path)?);
        }
        Ok((Self::new(read_key_file(current)?, old), created))
    }

    pub fn current_kid(&self) -> &str {
        &self.current.kid
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.current.kid.as_str())
            .chain(self.previous.iter().map(|k| k.kid.as_str()))
    }

    /// Encrypts `plaintext` for the record `record_id` under a fresh data key.
    pub fn seal(&self, record_id: &str, plaintext: &[u8]) -> Result<Sealed, SealError> {
        let mut data_key = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(data_key.as_mut()).map_err(|_| SealError::Crypto)?;
        let wrapped = wrap(&self.current, data_key.as_ref())?;

        let aead = RandomizedNonceKey::new(&AES_256_GCM, data_key.as_ref())
            .map_err(|_| SealError::Crypto)?;
        let mut body = plaintext.to_vec();
        let nonce = aead
            .seal_in_place_append_tag(Aad::from(record_id.as_bytes()), &mut body)
            .map_err(|_| SealError::Crypto)?;

        let mut blob = Vec::with_capacity(2 + wrapped.len() + NONCE_LEN + body.len());
        blob.push(FORMAT_V1);
        blob.push(u8::try_from(wrapped.len()).map_err(|_| SealError::Crypto)?);
        blob.extend_from_slice(&wrapped);
        blob.extend_from_slice(nonce.as_ref());
        blob.extend_from_slice(&body);
        Ok(Sealed {
            kid: self.current.kid.clone(),
            blob,
        })
    }

    /// Decrypts a record sealed by [`Keyring::seal`] for the same `record_id`.
    pub fn open(&self, record_id: &str, sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let key = self.key(record_id, &sealed.kid)?;
        let corrupt = || SealError::Corrupt {
            record: record_id.to_owned(),
        };
        let parts = split_blob(&sealed.blob).ok_or_else(corrupt)?;
        let data_key = unwrap(key, parts.wrapped).ok_or_else(corrupt)?;
        let aead =
            RandomizedNonceKey::new(&AES_256_GCM, data_key.as_ref()).map_err(|_| corrupt())?;
        let nonce = Nonce::try_assume_unique_for_key(parts.nonce).map_err(|_| corrupt())?;
        let mut body = Zeroizing::new(parts.body.to_vec());
        let len = aead
            .open_in_place(nonce, Aad::from(record_id.as_bytes()), body.as_mut_slice())
            .map_err(|_| corrupt())?
            .len();
        body.truncate(len);
        Ok(body)
    }

    /// Re-wraps the data key of `sealed` under the current master key. The encrypted body is
    /// untouched, so rotation costs one key unwrap and one wrap per record.
    pub fn rewrap(&self, record_id: &str, sealed: &Sealed) -> Result<Sealed, SealError> {
        let key = self.key(record_id, &sealed.kid)?;
        let corrupt = || SealError::Corrupt {
            record: record_id.to_owned(),
        };
        let parts = split_blob(&sealed.blob).ok_or_else(corrupt)?;
        let data_key = unwrap(key, parts.wrapped).ok_or_else(corrupt)?;
        let wrapped = wrap(&self.current, data_key.as_ref())?;
        let mut blob = Vec::with_capacity(sealed.blob.len());
        blob.push(FORMAT_V1);
        blob.push(u8::try_from(wrapped.len()).map_err(|_| SealError::Crypto)?);
        blob.extend_from_slice(&wrapped);
        blob.extend_from_slice(parts.nonce);
        blob.extend_from_slice(parts.body);
        Ok(Sealed {
            kid: self.current.kid.clone(),
            blob,
        })
    }

    fn key(&self, record_id: &str, kid: &str) -> Result<&MasterKey, SealError> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.kid == kid)
            .ok_or_else(|| SealError::UnknownKey {
                record: record_id.to_owned(),
                kid: kid.to_owned(),
                loaded: self.kids().collect::<Vec<_>>().join(", "),
            })
    }
}

struct BlobParts<'a> {
    wrapped: &'a [u8],
    nonce: &'a [u8],
    body: &'a [u8],
}

fn split_blob(blob: &[u8]) -> Option<BlobParts<'_>> {
    let (&format, rest) = blob.split_first()?;
    if format != FORMAT_V1 {
        return None;
    }
    let (&wrapped_len, rest) = rest.split_first()?;
    let (wrapped, rest) = rest.split_at_checked(usize::from(wrapped_len))?;
    let (nonce, body) = rest.split_at_checked(NONCE_LEN)?;
    Some(BlobParts {
        wrapped,
        nonce,
        body,
    })
}

fn wrap(master: &MasterKey, data_key: &[u8]) -> Result<Vec<u8>, SealError> {
    let kek = AesKek::new(&AES_256, master.bytes.as_slice()).map_err(|_| SealError::Crypto)?;
    let mut out = vec![0u8; KEY_LEN + 16];
    let len = kek
        .wrap_with_padding(data_key, &mut out)
        .map_err(|_| SealError::Crypto)?
        .len();
    out.truncate(len);
    Ok(out)
}

fn unwrap(master: &MasterKey, wrapped: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let kek = AesKek::new(&AES_256, master.bytes.as_slice()).ok()?;
    let mut out = Zeroizing::new(vec![0u8; wrapped.len()]);
    let len = kek
        .unwrap_with_padding(wrapped, out.as_mut_slice())
        .ok()?
        .len();
    out.truncate(len);
    (len == KEY_LEN).then_some(out)
}

/// Makes a new random master key as base64 text (the form `master-key generate` prints).
pub fn new_key_text() -> Result<Zeroizing<String>, SealError> {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    aws_lc_rs::rand::fill(bytes.as_mut()).map_err(|_| SealError::Crypto)?;
    let mut text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes.as_ref()));
    text.push('\n');
    Ok(text)
}

/// Reads a master key: 32 raw bytes, or 32 bytes as base64 or hex text (a trailing newline is
/// fine), from a secret file ([`crate::secret_file`]: private, ours or root's, not empty).
fn read_key_file(path: &Path) -> Result<KeyBytes, SealError> {
    let fail = |reason: String| SealError::KeyFile {
        path: path.to_owned(),
        reason,
    };
    let raw = crate::secret_file::read(path).map_err(|e| fail(e.problem.to_string()))?;
    decode_key(&raw)
        .ok_or_else(|| fail("expected 32 bytes, raw or as base64 or hex text".to_owned()))
}

/// Decodes straight into the key's own buffer (and a zeroized scratch buffer for base64), so
/// no partial copy of the key is left in freed memory.
fn decode_key(raw: &[u8]) -> Option<KeyBytes> {
    let mut key = key_bytes();
    if raw.len() == KEY_LEN {
        key.copy_from_slice(raw);
        return Some(key);
    }
    let text = std::str::from_utf8(raw).ok()?.trim();
    if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        return Some(key);
    }
    // Room for base64's estimate of a 32-byte key (and a little more, to tell a longer key).
    let mut scratch = Zeroizing::new([0u8; 2 * KEY_LEN]);
    let len = base64::engine::general_purpose::STANDARD
        .decode_slice(text, scratch.as_mut_slice())
        .ok()?;
    (len == KEY_LEN).then(|| {
        key.copy_from_slice(&scratch[..KEY_LEN]);
        key
    })
}

/// Creates a new key file with mode 0400, never overwriting one (create_new), written in full
/// before it becomes visible under its name.
fn write_new_key_file(path: &Path) -> Result<(), SealError> {
    let text = new_key_text()?;
    crate::atomic_file::create_new(path, text.as_bytes(), 0o400).map_err(|e| SealError::KeyFile {
        path: path.to_owned(),
        reason: format!("cannot create: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(byte: u8) -> Keyring {
        Keyring::from_bytes(&[byte; KEY_LEN])
    }

    #[test]
    fn seal_then_open() {
        let ring = keyring(1);
        let sealed = ring.seal("ck-1/1", b"secret key").unwrap();
        assert_eq!(sealed.kid, ring.current_kid());
        assert!(!sealed.blob.windows(10).any(|w| w == b"secret key"));
        assert_eq!(
            ring.open("ck-1/1", &sealed).unwrap().as_slice(),
            b"secret key"
        );
    }

    #[test]
    fn same_plaintext_seals_differently() {
        let ring = keyring(1);
        assert_ne!(
            ring.seal("r", b"k").unwrap().blob,
            ring.seal("r", b"k").unwrap().blob
        );
    }

    #[test]
    fn wrong_record_id_fails() {
        let ring = keyring(1);
        let sealed = ring.seal("ck-1/1", b"secret").unwrap();
        assert!(matches!(
            ring.open("ck-2/1", &sealed),
            Err(SealError::Corrupt { .. })
        ));
    }

    #[test]
    fn wrong_master_key_is_named() {
        let sealed = keyring(1).seal("r", b"secret").unwrap();
        let err = keyring(2).open("r", &sealed).unwrap_err();
        assert!(matches!(err, SealError::UnknownKey { .. }), "{err}");
        // Same id, tampered blob: corrupt, not garbage.
        let mut bad = sealed.clone();
        let last = bad.blob.len() - 1;
        bad.blob[last] ^= 1;
        assert!(matches!(
            keyring(1).open("r", &bad),
            Err(SealError::Corrupt { .. })
        ));
        bad.blob.truncate(5);
        assert!(matches!(
            keyring(1).open("r", &bad),
            Err(SealError::Corrupt { .. })
        ));
    }

    #[test]
    fn rotation_rewraps_under_the_new_key() {
        let old = keyring(1);
        let sealed = old.seal("r", b"secret").unwrap();
        let both = Keyring::new(
            Box::new(Zeroizing::new([2; KEY_LEN])),
            vec![Box::new(Zeroizing::new([1; KEY_LEN]))],
        );
        let rewrapped = both.rewrap("r", &sealed).unwrap();
        assert_eq!(rewrapped.kid, both.current_kid());
        assert_eq!(
            keyring(2).open("r", &rewrapped).unwrap().as_slice(),
            b"secret"
        );
    }

    #[test]
    fn key_file_formats_and_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master-key");
        let (ring, created) = Keyring::load(&path, true, &[]).unwrap();
        assert!(created);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o400
        );
        let (again, created) = Keyring::load(&path, true, &[]).unwrap();
        assert!(!created);
        assert_eq!(ring.current_kid(), again.current_kid());

        let hex = dir.path().join("hex");
        std::fs::write(&hex, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&hex, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Keyring::load(&hex, false, &[]).is_ok());

        std::fs::set_permissions(&hex, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keyring::load(&hex, false, &[]).err().unwrap().to_string();
        assert!(err.contains("0644"), "{err}");

        let short = dir.path().join("short");
        std::fs::write(&short, "c2hvcnQ=\n").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o400)).unwrap();
        let err = Keyring::load(&short, false, &[]).err().unwrap().to_string();
        assert!(err.contains("expected 32 bytes"), "{err}");
    }
}
