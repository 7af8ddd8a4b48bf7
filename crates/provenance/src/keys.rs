//! The host's signing key. It lives only on the host, in `$KILN_HOME/keys`:
//!
//! - `signing.key`: the ed25519 private key, PKCS#8 PEM (as `openssl genpkey -algorithm
//!   ed25519` writes it), mode 0600, created with that mode so it is never readable by others,
//!   even briefly. A key file that gives group or others any access is refused.
//! - `signing.pub`: the public key, SubjectPublicKeyInfo PEM (`openssl pkey -pubout`), 0644.
//!   Hand it to whoever verifies provenance (`kiln verify --key`).
//!
//! The folder is 0700. A key id is the first 16 hex digits of the sha256 of the 32 public key
//! bytes.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

use crate::{ProvenanceError, Result};

/// The key folder's name under `$KILN_HOME`.
pub const KEYS_DIR: &str = "keys";
/// File name of the private key.
pub const PRIVATE_FILE: &str = "signing.key";
/// File name of the public key.
pub const PUBLIC_FILE: &str = "signing.pub";

/// DER prefix of a PKCS#8 v1 ed25519 private key; the 32-byte seed follows.
const PKCS8_PREFIX: [u8; 16] = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
/// DER prefix of an ed25519 SubjectPublicKeyInfo; the 32-byte key follows.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// Key files are tiny; refuse to read anything bigger than this.
const MAX_KEY_FILE: u64 = 4096;

/// The key folder.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

/// A public key and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The key.
    pub key: VerifyingKey,
    /// Its id ([`keyid`]).
    pub keyid: String,
}

impl PublicKey {
    /// Wraps a key.
    pub fn new(key: VerifyingKey) -> PublicKey {
        PublicKey { keyid: keyid(&key), key }
    }
}

impl KeyStore {
    /// The store in `dir` (the caller passes `$KILN_HOME/keys`). Nothing is touched yet.
    pub fn new(dir: impl Into<PathBuf>) -> KeyStore {
        KeyStore { dir: dir.into() }
    }

    /// The store of a kiln home: `<home_root>/keys` (pass `kiln_image::Home::root()`).
    pub fn in_home(home_root: &Path) -> KeyStore {
        KeyStore::new(home_root.join(KEYS_DIR))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/signing.key`.
    pub fn private_path(&self) -> PathBuf {
        self.dir.join(PRIVATE_FILE)
    }

    /// `<dir>/signing.pub`.
    pub fn public_path(&self) -> PathBuf {
        self.dir.join(PUBLIC_FILE)
    }

    /// The signing key, created on first use. Also (re)writes `signing.pub` if it is missing or
    /// does not match. Safe against another process creating the key at the same time: the
    /// first one to publish its key wins and the other loads it.
    pub fn load_or_create(&self) -> Result<SigningKey> {
        self.ensure_dir()?;
        let key = match self.load_private()? {
            Some(k) => k,
            None => self.create()?,
        };
        self.ensure_public(&key.verifying_key())?;
        Ok(key)
    }

    /// The signing key if it exists (checking its mode), without creating anything.
    pub fn load_private(&self) -> Result<Option<SigningKey>> {
        let path = self.private_path();
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ProvenanceError::io("open", &path)(e)),
        };
        let meta = f.metadata().map_err(ProvenanceError::io("stat", &path))?;
        if !meta.is_file() {
            return Err(bad_key(&path, "not a regular file"));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(ProvenanceError::KeyFileMode { path, mode });
        }
        let text = read_small(&mut f, &path)?;
        let der = pem_body(&text, "PRIVATE KEY").ok_or_else(|| bad_key(&path, "not a PEM \"PRIVATE KEY\""))?;
        let seed = der
            .strip_prefix(&PKCS8_PREFIX[..])
            .and_then(|s| <[u8; 32]>::try_from(s).ok())
            .ok_or_else(|| bad_key(&path, "not a PKCS#8 ed25519 private key"))?;
        Ok(Some(SigningKey::from_bytes(&seed)))
    }

    /// The public key from `signing.pub`.
    pub fn public_key(&self) -> Result<PublicKey> {
        load_public_key(&self.public_path())
    }

    fn ensure_dir(&self) -> Result<()> {
        if let Some(parent) = self.dir.parent() {
            fs::create_dir_all(parent).map_err(ProvenanceError::io("create", parent))?;
        }
        match DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ProvenanceError::io("create", &self.dir)(e)),
        }
        let meta = fs::metadata(&self.dir).map_err(ProvenanceError::io("stat", &self.dir))?;
        if !meta.is_dir() {
            return Err(ProvenanceError::io("use", &self.dir)(std::io::Error::other("not a directory")));
        }
        if meta.mode() & 0o077 != 0 {
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(ProvenanceError::io("chmod 700", &self.dir))?;
        }
        Ok(())
    }

    fn create(&self) -> Result<SigningKey> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| ProvenanceError::Random(e.to_string()))?;
        let key = SigningKey::from_bytes(&seed);
        let mut der = PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        let pem = pem("PRIVATE KEY", &der);
        der.fill(0);
        seed.fill(0);

        let path = self.private_path();
        let tmp = self.temp_path(PRIVATE_FILE);
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(pem.as_bytes())?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(ProvenanceError::io("write", &tmp)(e));
        }
        // Publish atomically; a link never replaces an existing key.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&self.dir);
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.load_private()?.ok_or_else(|| bad_key(&path, "vanished while being created"))
            }
            Err(e) => Err(ProvenanceError::io("create", &path)(e)),
        }
    }

    fn ensure_public(&self, key: &VerifyingKey) -> Result<()> {
        let path = self.public_path();
        let want = public_key_pem(key);
        let current = fs::read_to_string(&path).ok();
        let mode_ok = fs::metadata(&path).map(|m| m.mode() & 0o777 == 0o644).unwrap_or(false);
        if current.as_deref() == Some(want.as_str()) && mode_ok {
            return Ok(());
        }
        let tmp = self.temp_path(PUBLIC_FILE);
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
            f.write_all(want.as_bytes())?;
            // The umask may have taken bits away; a public key is meant to be read.
            f.set_permissions(fs::Permissions::from_mode(0o644))?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            ProvenanceError::io("write", &path)(e)
        })?;
        sync_dir(&self.dir);
        Ok(())
    }

    fn temp_path(&self, name: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        self.dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()))
    }
}

/// The key id: the first 16 hex digits of sha256 over the 32 public key bytes.
pub fn keyid(key: &VerifyingKey) -> String {
    let mut h = hex::encode(Sha256::digest(key.as_bytes()));
    h.truncate(16);
    h
}

/// The public key as SubjectPublicKeyInfo PEM (what `signing.pub` holds).
pub fn public_key_pem(key: &VerifyingKey) -> String {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    pem("PUBLIC KEY", &der)
}

/// Reads a public key file (for `kiln verify --key`): SubjectPublicKeyInfo PEM as in
/// `signing.pub`, or the 32 key bytes as hex or base64 on one line.
pub fn load_public_key(path: &Path) -> Result<PublicKey> {
    let mut f = File::open(path).map_err(ProvenanceError::io("open", path))?;
    let text = read_small(&mut f, path)?;
    parse_public_key(&text).map(PublicKey::new).ok_or_else(|| {
        bad_key(path, "expected an ed25519 public key (PEM \"PUBLIC KEY\", or 32 bytes as hex or base64)")
    })
}

/// Parses a public key in any of the forms [`load_public_key`] accepts.
pub fn parse_public_key(text: &str) -> Option<VerifyingKey> {
    let t = text.trim();
    let bytes: Vec<u8> = if t.starts_with("-----BEGIN") {
        let der = pem_body(t, "PUBLIC KEY")?;
        der.strip_prefix(&SPKI_PREFIX[..])?.to_vec()
    } else if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(t).ok()?
    } else {
        let raw = STANDARD.decode(t).ok()?;
        match raw.strip_prefix(&SPKI_PREFIX[..]) {
            Some(k) => k.to_vec(),
            None => raw,
        }
    };
    let arr = <[u8; 32]>::try_from(bytes.as_slice()).ok()?;
    VerifyingKey::from_bytes(&arr).ok()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_body(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let rest = &text[text.find(&begin)? + begin.len()..];
    let body = &rest[..rest.find(&end)?];
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(b64).ok()
}

fn read_small(f: &mut File, path: &Path) -> Result<String> {
    let mut buf = String::new();
    f.take(MAX_KEY_FILE + 1).read_to_string(&mut buf).map_err(ProvenanceError::io("read", path))?;
    if buf.len() as u64 > MAX_KEY_FILE {
        return Err(bad_key(path, "too large to be a key"));
    }
    Ok(buf)
}

fn bad_key(path: &Path, reason: &str) -> ProvenanceError {
    ProvenanceError::BadKey { path: path.to_path_buf(), reason: reason.to_string() }
}

/// Makes a new entry in `dir` durable (best effort).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn created_once_with_tight_modes() {
        let t = tempfile::tempdir().unwrap();
        let ks = KeyStore::new(t.path().join("home/keys"));
        let k1 = ks.load_or_create().unwrap();
        assert_eq!(mode(ks.dir()), 0o700);
        assert_eq!(mode(&ks.private_path()), 0o600);
        assert_eq!(mode(&ks.public_path()), 0o644);
        let k2 = ks.load_or_create().unwrap();
        assert_eq!(k1.to_bytes(), k2.to_bytes(), "the same key the second time");
        let pk = ks.public_key().unwrap();
        assert_eq!(pk.key, k1.verifying_key());
        assert_eq!(pk.keyid.len(), 16);
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(ks.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // Another store, another key.
        let other = KeyStore::new(t.path().join("other")).load_or_create().unwrap();
        assert_ne!(other.to_bytes(), k1.to_bytes());
    }

    #[test]
    fn refuses_readable_private_key() {
        let t = tempfile::tempdir().unwrap();
        let ks = KeyStore::new(t.path().join("keys"));
        ks.load_or_create().unwrap();
        fs::set_permissions(ks.private_path(), fs::Permissions::from_mode(0o640)).unwrap();
        let e = ks.load_or_create().unwrap_err();
        assert!(matches!(e, ProvenanceError::KeyFileMode { mode: 0o640, .. }));
        assert!(e.to_string().contains("chmod 600"), "{e}");
        fs::set_permissions(ks.private_path(), fs::Permissions::from_mode(0o600)).unwrap();
        ks.load_or_create().unwrap();
    }

    #[test]
    fn repairs_public_key_and_folder_mode() {
        let t = tempfile::tempdir().unwrap();
        let ks = KeyStore::new(t.path().join("keys"));
        let k = ks.load_or_create().unwrap();
        fs::remove_file(ks.public_path()).unwrap();
        fs::set_permissions(ks.dir(), fs::Permissions::from_mode(0o755)).unwrap();
        ks.load_or_create().unwrap();
        assert_eq!(mode(ks.dir()), 0o700);
        assert_eq!(ks.public_key().unwrap().key, k.verifying_key());
    }

    #[test]
    fn private_key_is_pkcs8_pem() {
        let t = tempfile::tempdir().unwrap();
        let ks = KeyStore::new(t.path().join("keys"));
        let k = ks.load_or_create().unwrap();
        let text = fs::read_to_string(ks.private_path()).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI"), "{text}");
        let der = pem_body(&text, "PRIVATE KEY").unwrap();
        assert_eq!(&der[16..], k.to_bytes());
        fs::write(ks.private_path(), "garbage").unwrap();
        assert!(matches!(ks.load_or_create(), Err(ProvenanceError::BadKey { .. })));
    }

    #[test]
    fn public_key_forms() {
        let k = SigningKey::from_bytes(&[9; 32]).verifying_key();
        let pem = public_key_pem(&k);
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"), "{pem}");
        assert_eq!(parse_public_key(&pem), Some(k));
        assert_eq!(parse_public_key(&format!("{}\n", hex::encode(k.as_bytes()))), Some(k));
        assert_eq!(parse_public_key(&STANDARD.encode(k.as_bytes())), Some(k));
        assert_eq!(parse_public_key("nope"), None);
        assert_eq!(parse_public_key(&STANDARD.encode([1u8; 31])), None);
        assert_eq!(keyid(&k), hex::encode(Sha256::digest(k.as_bytes()))[..16]);

        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("k.pub");
        fs::write(&p, "not a key").unwrap();
        let e = load_public_key(&p).unwrap_err();
        assert!(e.to_string().contains("bad key file"), "{e}");
        assert!(matches!(load_public_key(&t.path().join("missing")), Err(ProvenanceError::Io { .. })));
    }
}
