//! A content-addressed store: every blob is named by the sha256 of its bytes and never
//! written again once stored (read-only on disk, and kiln never opens it for writing).

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{ImageError, Result};

/// A sha256 digest, written as 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Digest of a byte slice.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest(hex::encode(Sha256::digest(bytes)))
    }

    /// Digest of a file's contents, streamed.
    pub fn of_file(path: &Path) -> Result<Digest> {
        let mut f = File::open(path).map_err(ImageError::io("open", path))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(ImageError::io("read", path))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(Digest(hex::encode(h.finalize())))
    }

    /// Parses 64 hex digits.
    pub fn parse(s: &str) -> Option<Digest> {
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then(|| Digest(s.to_owned()))
    }

    /// The hex form.
    pub fn hex(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for display.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl TryFrom<String> for Digest {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        Digest::parse(&s).ok_or_else(|| format!("not a sha256 digest: {s:?}"))
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.short())
    }
}

/// The store folder.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// A store rooted at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    /// Where a blob lives (whether or not it exists).
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// Whether a blob is present.
    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// Moves `file` (on the same filesystem) into the store and makes it read-only.
    pub fn put_file(&self, file: &Path) -> Result<Digest> {
        let digest = Digest::of_file(file)?;
        std::fs::create_dir_all(&self.dir).map_err(ImageError::io("create store", &self.dir))?;
        let dest = self.path(&digest);
        if dest.is_file() {
            std::fs::remove_file(file).map_err(ImageError::io("remove", file))?;
        } else {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o444)).map_err(ImageError::io("chmod", file))?;
            std::fs::rename(file, &dest).map_err(ImageError::io("move into store", &dest))?;
        }
        Ok(digest)
    }

    /// Moves `file` into the store as `digest`, which the caller computed as it wrote the file.
    pub fn put_verified(&self, file: &Path, digest: &Digest) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let dest = self.path(digest);
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o444))?;
        std::fs::rename(file, &dest)?;
        Ok(dest)
    }

    /// Stores bytes.
    pub fn put_bytes(&self, bytes: &[u8], tmp_dir: &Path) -> Result<Digest> {
        let digest = Digest::of_bytes(bytes);
        if self.contains(&digest) {
            return Ok(digest);
        }
        std::fs::create_dir_all(tmp_dir).map_err(ImageError::io("create", tmp_dir))?;
        let tmp = tmp_dir.join(format!("put-{}-{}", std::process::id(), digest.short()));
        std::fs::write(&tmp, bytes).map_err(ImageError::io("write", &tmp))?;
        self.put_file(&tmp)
    }

    /// The path of a blob after checking that it is there; `verify` also re-hashes it.
    pub fn get(&self, d: &Digest, verify: bool) -> Result<PathBuf> {
        let p = self.path(d);
        if !p.is_file() {
            return Err(ImageError::Damaged(d.to_string()));
        }
        if verify && Digest::of_file(&p)? != *d {
            return Err(ImageError::Damaged(d.to_string()));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_and_verify() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::new(t.path().join("s"));
        let d = store.put_bytes(b"hello", &t.path().join("tmp")).unwrap();
        assert_eq!(d.hex(), "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        let p = store.get(&d, true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o444);
        // Tamper: the digest check catches it.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&p, b"hellO").unwrap();
        assert!(matches!(store.get(&d, true), Err(ImageError::Damaged(_))));
    }

    #[test]
    fn digest_parse() {
        assert!(Digest::parse("ab").is_none());
        assert!(Digest::parse(&"A".repeat(64)).is_none());
        assert!(Digest::parse(&"a".repeat(64)).is_some());
    }
}
