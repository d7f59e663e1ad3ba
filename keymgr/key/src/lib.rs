//! Node keys: a private key that cannot leak through `Debug` or logs, a public key that prints as
//! base64, and the on-disk key file with the permissions WireGuard users expect (0600).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use zeroize::Zeroizing;

/// A Curve25519 public key. Prints and serialises as standard base64, like `wg pubkey`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// An all-zero key is what an unset key looks like; no peer may use it.
    pub fn is_zero(&self) -> bool {
        self.0.iter().fold(0u8, |acc, b| acc | b) == 0
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode_key(s.trim().as_bytes()).map(Self)
    }

    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        unhex(s).map(Self)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PublicKey::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

/// A node's X25519 private key. `Debug` prints `<redacted>`; the bytes are zeroed on drop.
#[derive(Clone)]
pub struct PrivateKey(x25519_dalek::StaticSecret);

impl PrivateKey {
    pub fn generate() -> Self {
        Self(x25519_dalek::StaticSecret::random_from_rng(
            rand_core::OsRng,
        ))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(x25519_dalek::StaticSecret::from(bytes))
    }

    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        unhex(s).map(Self::from_bytes)
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    pub fn secret(&self) -> &x25519_dalek::StaticSecret {
        &self.0
    }

    /// Hex form for the WireGuard UAPI `private_key=` line only; never for logs.
    pub fn to_hex_for_uapi(&self) -> Zeroizing<String> {
        Zeroizing::new(hex(self.0.as_bytes()))
    }

    fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key is not 32 bytes of base64 (as `wg genkey` prints)")]
    Malformed,
    #[error("key is not 64 hex digits")]
    MalformedHex,
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "key file {path} is accessible by group or others (mode {mode:04o}); \
         a private key must be readable by its owner only: run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "key file {path} is owned by {owner}, not by the user the agent runs as ({expected}); \
         another user could replace it with a key of their choosing: run `chown {expected_uid} {path}`"
    )]
    Owner {
        path: PathBuf,
        owner: String,
        expected: String,
        expected_uid: u32,
    },
    #[error(
        "key file {path} is malformed: expected one line of base64 holding 32 bytes \
         (as `wg genkey` writes); remove it to generate a new key, or restore a valid one"
    )]
    MalformedFile { path: PathBuf },
    #[error(
        "key state {path}: keyEpoch {epoch} is the last epoch a record may carry, so the key \
         cannot be rotated again; remove {path} to count epochs from 1 again"
    )]
    EpochExhausted { path: PathBuf, epoch: u64 },
}

/// The private key file: `<stateDir>/<interface>.key`, one line of base64 (the format of
/// `wg genkey`), mode 0600, created on first start and reused ever after.
#[derive(Debug, Clone)]
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the key, or creates it if the file does not exist. Refuses a file that group or
    /// others can access, or that does not hold a key, rather than guessing.
    pub fn load_or_create(&self) -> Result<(PrivateKey, bool), KeyError> {
        match fs::metadata(&self.path) {
            Ok(meta) => {
                self.check_owner(meta.uid())?;
                let mode = meta.permissions().mode() & 0o7777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::Permissions {
                        path: self.path.clone(),
                        mode,
                    });
                }
                let text = Zeroizing::new(fs::read(&self.path).map_err(|e| self.io(e))?);
                let bytes = decode_key(trim_ascii(&text)).map_err(|_| KeyError::MalformedFile {
                    path: self.path.clone(),
                })?;
                Ok((PrivateKey::from_bytes(bytes), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = PrivateKey::generate();
                self.store(&key)?;
                Ok((key, true))
            }
            Err(e) => Err(self.io(e)),
        }
    }

    /// Loads an existing key with the same checks as [`KeyFile::load_or_create`], never creating
    /// one (for processes that must use the key the agent made).
    pub fn load(&self) -> Result<PrivateKey, KeyError> {
        if !self.path.exists() {
            return Err(self.io(std::io::Error::from(std::io::ErrorKind::NotFound)));
        }
        self.load_or_create().map(|(k, _)| k)
    }

    /// Writes the key atomically: a 0600 temporary file in the same directory, fsync, rename.
    /// A crash leaves either the old key or the new one, never a torn file.
    pub fn store(&self, key: &PrivateKey) -> Result<(), KeyError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| KeyError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let tmp = tmp_path(&self.path);
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| KeyError::Io {
                path: tmp.clone(),
                source: e,
            })?;
        // Sized up front: growing the buffer would leave a copy of the key in freed memory.
        let b64 = key.to_base64();
        let mut line = Zeroizing::new(String::with_capacity(b64.len() + 1));
        line.push_str(&b64);
        line.push('\n');
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| KeyError::Io {
                path: tmp.clone(),
                source: e,
            })?;
        fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        Ok(())
    }

    /// Refuses a key file another user owns: whoever owns it can rewrite it, and so choose the
    /// key this node uses.
    fn check_owner(&self, owner: u32) -> Result<(), KeyError> {
        let me = nix::unistd::geteuid().as_raw();
        if owner == me {
            return Ok(());
        }
        let name = |uid: u32| match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
            Ok(Some(u)) => format!("uid {uid} ({})", u.name),
            _ => format!("uid {uid}"),
        };
        Err(KeyError::Owner {
            path: self.path.clone(),
            owner: name(owner),
            expected: name(me),
            expected_uid: me,
        })
    }

    fn io(&self, source: std::io::Error) -> KeyError {
        KeyError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

fn decode_key(b64: &[u8]) -> Result<[u8; 32], KeyError> {
    let bytes = Zeroizing::new(B64.decode(b64).map_err(|_| KeyError::Malformed)?);
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Malformed)
}

/// Sized up front, so that hex of a private key is never copied by a growing buffer.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

fn unhex(s: &str) -> Result<[u8; 32], KeyError> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return Err(KeyError::MalformedHex);
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let hi = (pair[0] as char)
            .to_digit(16)
            .ok_or(KeyError::MalformedHex)?;
        let lo = (pair[1] as char)
            .to_digit(16)
            .ok_or(KeyError::MalformedHex)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let kf = KeyFile::new(dir.path().join("wg0.key"));
        let (k1, created) = kf.load_or_create().unwrap();
        assert!(created);
        let mode = fs::metadata(kf.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = kf.load_or_create().unwrap();
        assert!(!created);
        assert_eq!(k1.public_key(), k2.public_key());
    }

    #[test]
    fn key_file_readable_by_others_is_refused_with_remedy() {
        let dir = tempfile::tempdir().unwrap();
        let kf = KeyFile::new(dir.path().join("wg0.key"));
        kf.load_or_create().unwrap();
        fs::set_permissions(kf.path(), fs::Permissions::from_mode(0o644)).unwrap();
        let err = kf.load_or_create().unwrap_err().to_string();
        assert!(err.contains("wg0.key"), "{err}");
        assert!(err.contains("0644"), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn key_file_owned_by_another_user_is_refused_with_remedy() {
        let dir = tempfile::tempdir().unwrap();
        let kf = KeyFile::new(dir.path().join("wg0.key"));
        kf.load_or_create().unwrap();
        let me = nix::unistd::geteuid();
        assert!(
            me.is_root(),
            "this test needs root (to chown the key file to another user)"
        );
        nix::unistd::chown(kf.path(), Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let err = kf.load_or_create().unwrap_err().to_string();
        assert!(
            err.contains("wg0.key") && err.contains("uid 65534"),
            "{err}"
        );
        assert!(err.contains("chown 0 "), "{err}");
        // The control: the same file back with its owner loads.
        nix::unistd::chown(kf.path(), Some(me), None).unwrap();
        kf.load_or_create().unwrap();
    }

    #[test]
    fn malformed_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg0.key");
        fs::write(&path, "not a key\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = KeyFile::new(&path).load_or_create().unwrap_err();
        assert!(matches!(err, KeyError::MalformedFile { .. }), "{err}");
    }

    #[test]
    fn key_file_accepts_wg_genkey_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg0.key");
        // RFC 7748 test vector private key, as `wg genkey` would print it.
        fs::write(&path, "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let (key, _) = KeyFile::new(&path).load_or_create().unwrap();
        assert_eq!(
            key.public_key().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn private_key_debug_is_redacted() {
        let key = PrivateKey::generate();
        let dbg = format!("{key:?}");
        assert!(!dbg.contains(&*key.to_base64()));
        assert!(!dbg.contains(&*key.to_hex_for_uapi()));
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn hex_round_trips() {
        let key = PrivateKey::generate().public_key();
        assert_eq!(PublicKey::from_hex(&key.to_hex()).unwrap(), key);
        assert!(PublicKey::from_hex("zz").is_err());
    }
}
