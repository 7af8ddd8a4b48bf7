//! Finishing a root filesystem tree for kiln's guest, whatever made it: the folders the agent
//! mounts on, the template's files, extra certificate authorities, and the environment that
//! every command in the guest starts from (`/etc/kiln/env`, read by the agent).
//!
//! A tree made from an OCI image is someone else's: it may hold symlinks such as
//! `etc -> /root` that would point outside it on the host. So every write here goes through a
//! [`kiln_fs::Dir`] handle on the tree, never following a symlink; a folder kiln needs that is
//! a symlink in the tree is an error that names it.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kiln_fs::Dir;

use crate::error::{ImageError, Result};
use crate::template::TemplateDef;

/// The file the agent reads the guest's default environment from.
pub const ENV_FILE: &str = "etc/kiln/env";
/// Its size cap (the agent applies the same).
pub const ENV_FILE_MAX: usize = 64 << 10;

/// Folders the agent mounts on or commands expect, with their modes.
const GUEST_DIRS: &[(&str, u32)] = &[("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("run", 0o755), ("tmp", 0o1777), ("root", 0o700), ("etc", 0o755), ("newroot", 0o755), ("var/tmp", 0o1777)];

/// Certificate bundles of the common distributions, appended to when present.
const BUNDLES: &[&str] = &["etc/ssl/certs/ca-certificates.crt", "etc/pki/tls/certs/ca-bundle.crt", "etc/ssl/cert.pem"];
/// Variables that point the common tools at the bundle when extra CAs were added.
const CA_VARS: &[&str] = &["SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "PIP_CERT", "CARGO_HTTP_CAINFO", "GIT_SSL_CAINFO"];
/// The largest CA file read from the build host, and the largest bundle read from the tree.
const CA_FILE_MAX: u64 = 1 << 20;
const BUNDLE_MAX: u64 = 16 << 20;

/// Finishes `tree` for template `def`; `image_env` is the image config's `NAME=value` list.
pub fn finish(tree: &Path, def: &TemplateDef, image_env: &[String]) -> Result<()> {
    let root = Dir::open(tree).map_err(ImageError::io("open", tree))?;
    let err = |what: &'static str, rel: &str| ImageError::io(what, tree.join(rel));
    for (d, mode) in GUEST_DIRS {
        let existed = root.open_dir(Path::new(d)).is_ok();
        let dir = root.create_dirs(Path::new(d)).map_err(err("create the guest folder", d))?;
        if !existed {
            chmod(&dir, *mode).map_err(err("chmod", d))?;
        }
    }
    for f in &def.files {
        let mode = u32::from_str_radix(&f.mode, 8).unwrap_or(0o644);
        write_file(&root, f.path.trim_start_matches('/'), f.content.as_bytes(), mode)?;
    }
    let mut env: Vec<(String, String)> = image_env.iter().filter_map(|e| env_entry(e)).collect();
    if !def.tls.ca_files.is_empty() {
        let bundle = add_cas(&root, &def.tls.ca_files)?;
        for v in CA_VARS {
            env.retain(|(k, _)| k != v);
            env.push(((*v).to_owned(), format!("/{bundle}")));
        }
    }
    let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    if text.len() > ENV_FILE_MAX {
        return Err(ImageError::BadTemplate { path: tree.to_owned(), detail: format!("the image's environment is larger than {ENV_FILE_MAX} bytes") });
    }
    write_file(&root, ENV_FILE, text.as_bytes(), 0o644)
}

/// A `NAME=value` entry kiln can pass on: a shell-style name, no newline or NUL.
fn env_entry(e: &str) -> Option<(String, String)> {
    let (k, v) = e.split_once('=')?;
    let name_ok = !k.is_empty() && !k.as_bytes()[0].is_ascii_digit() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    (name_ok && !v.contains(['\n', '\0'])).then(|| (k.to_owned(), v.to_owned()))
}

fn chmod(dir: &Dir, mode: u32) -> std::io::Result<()> {
    // The handle is the folder itself: fchmod on it follows nothing.
    let f = std::fs::File::from(std::os::fd::AsFd::as_fd(dir).try_clone_to_owned()?);
    f.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Writes `rel` (replacing a file or symlink that was there) with `mode`, creating its folders.
fn write_file(root: &Dir, rel: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let path = Path::new(rel);
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| ImageError::BadTemplate { path: PathBuf::from(rel), detail: "not a file path".into() })?;
    let parent = path.parent().unwrap_or(Path::new(""));
    let dir = if parent.as_os_str().is_empty() { root.try_clone() } else { root.create_dirs(parent) };
    let full = root.path().join(rel);
    let dir = dir.map_err(ImageError::io("create the folder of", &full))?;
    dir.replace(name, bytes).map_err(ImageError::io("write", &full))?;
    let f = dir.open_regular(Path::new(name)).map_err(ImageError::io("open", &full))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(ImageError::io("chmod", &full))
}

/// Adds the CA files to the tree's trust store: each as a file of
/// `/usr/local/share/ca-certificates` (where Debian's `update-ca-certificates` looks when the
/// guest runs it), and appended to every bundle the tree has (one is made if it has none).
/// Returns the bundle the tools are pointed at.
fn add_cas(root: &Dir, files: &[PathBuf]) -> Result<&'static str> {
    let mut pem = String::new();
    for (i, f) in files.iter().enumerate() {
        let text = read_ca(f)?;
        let stem = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let stem: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).take(64).collect();
        write_file(root, &format!("usr/local/share/ca-certificates/kiln-{i}-{stem}.crt"), text.as_bytes(), 0o644)?;
        pem.push_str(&text);
        if !text.ends_with('\n') {
            pem.push('\n');
        }
    }
    let mut first = None;
    for b in BUNDLES {
        let Ok(mut bytes) = root.read_bounded(Path::new(b), BUNDLE_MAX) else { continue };
        if !bytes.ends_with(b"\n") && !bytes.is_empty() {
            bytes.push(b'\n');
        }
        bytes.write_all(pem.as_bytes()).expect("a Vec takes writes");
        write_file(root, b, &bytes, 0o644)?;
        first.get_or_insert(*b);
    }
    match first {
        Some(b) => Ok(b),
        None => {
            write_file(root, BUNDLES[0], pem.as_bytes(), 0o644)?;
            Ok(BUNDLES[0])
        }
    }
}

/// Reads a CA file of the build host: PEM certificates only.
fn read_ca(path: &Path) -> Result<String> {
    let bad = |detail: String| ImageError::BadTemplate { path: path.to_owned(), detail };
    let bytes = kiln_fs::read_head_nofollow(path, CA_FILE_MAX + 1).map_err(ImageError::io("read the CA file", path))?;
    if bytes.len() as u64 > CA_FILE_MAX {
        return Err(bad(format!("tls.ca_files: larger than {CA_FILE_MAX} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|_| bad("tls.ca_files: not a PEM text file".into()))?;
    let begins = text.matches("-----BEGIN CERTIFICATE-----").count();
    if begins == 0 || begins != text.matches("-----END CERTIFICATE-----").count() {
        return Err(bad("tls.ca_files: not PEM certificates (-----BEGIN CERTIFICATE----- … -----END CERTIFICATE-----)".into()));
    }
    if text.contains("PRIVATE KEY") {
        return Err(bad("tls.ca_files: holds a private key; give only the certificate".into()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nTUlJ\n-----END CERTIFICATE-----\n";

    fn def(extra: &str) -> TemplateDef {
        TemplateDef::parse("t", &format!("[rootfs]\nkind = \"busybox\"\nsize_mib = 64\n{extra}"), Path::new("x")).unwrap()
    }

    #[test]
    fn finishes_a_tree_through_handles() {
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir_all(tree.join("etc/ssl/certs")).unwrap();
        std::fs::write(tree.join("etc/ssl/certs/ca-certificates.crt"), "OLD").unwrap();
        let ca = t.path().join("corp.pem");
        std::fs::write(&ca, CERT).unwrap();
        let d = def(&format!("[[files]]\npath = \"/etc/motd\"\ncontent = \"hi\"\nmode = \"0600\"\n[tls]\nca_files = [{:?}]\n", ca.display().to_string()));
        finish(&tree, &d, &["PATH=/opt/bin:/usr/bin".into(), "BAD NAME=x".into(), "X=a\nb".into()]).unwrap();
        assert_eq!(std::fs::read_to_string(tree.join("etc/motd")).unwrap(), "hi");
        assert_eq!(std::fs::metadata(tree.join("etc/motd")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(tree.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
        assert_eq!(std::fs::read_to_string(tree.join("etc/ssl/certs/ca-certificates.crt")).unwrap(), format!("OLD\n{CERT}"));
        assert!(tree.join("usr/local/share/ca-certificates/kiln-0-corp.crt").is_file());
        let env = std::fs::read_to_string(tree.join(ENV_FILE)).unwrap();
        assert!(env.starts_with("PATH=/opt/bin:/usr/bin\n"), "{env}");
        assert!(env.contains("NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt\n"), "{env}");
        assert!(!env.contains("BAD") && !env.contains("X="), "{env}");
    }

    #[test]
    fn never_writes_through_a_symlink_in_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let (tree, outside) = (t.path().join("tree"), t.path().join("outside"));
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        symlink(&outside, tree.join("etc")).unwrap();
        let e = finish(&tree, &def(""), &[]).unwrap_err().to_string();
        assert!(e.contains("etc"), "{e}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing was written outside the tree");
        // A file that is a symlink is replaced, not written through.
        std::fs::remove_file(tree.join("etc")).unwrap();
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        symlink(outside.join("motd"), tree.join("etc/motd")).unwrap();
        finish(&tree, &def("[[files]]\npath = \"/etc/motd\"\ncontent = \"hi\"\n"), &[]).unwrap();
        assert!(!outside.join("motd").exists());
        assert_eq!(std::fs::read_to_string(tree.join("etc/motd")).unwrap(), "hi");
    }

    #[test]
    fn refuses_what_is_not_a_certificate() {
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        for (name, text, says) in [("a.pem", "hello", "not PEM"), ("k.pem", &format!("{CERT}-----BEGIN PRIVATE KEY-----\n") as &str, "private key")] {
            let ca = t.path().join(name);
            std::fs::write(&ca, text).unwrap();
            let e = finish(&tree, &def(&format!("[tls]\nca_files = [{:?}]\n", ca.display().to_string())), &[]).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let e = finish(&tree, &def("[tls]\nca_files = [\"/nonexistent/ca.pem\"]\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
