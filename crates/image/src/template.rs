//! Template definitions: TOML files in `templates/` that say how to build a root filesystem
//! and how big the VM is by default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{ImageError, Result};
use crate::store::Digest;

/// The templates shipped with kiln, used when no file of that name is found on the search path.
pub const BUILTIN: &[(&str, &str)] = &[
    ("tiny", include_str!("../../../templates/tiny.toml")),
    ("base", include_str!("../../../templates/base.toml")),
    ("node", include_str!("../../../templates/node.toml")),
    ("python", include_str!("../../../templates/python.toml")),
    ("go", include_str!("../../../templates/go.toml")),
    ("rust", include_str!("../../../templates/rust.toml")),
];

/// A parsed template file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TemplateDef {
    /// One line for `kiln template ls`.
    #[serde(default)]
    pub description: String,
    /// Default machine shape.
    #[serde(default)]
    pub vm: VmDefaults,
    /// How to build the root filesystem.
    pub rootfs: RootfsDef,
    /// Files to place into the tree.
    #[serde(default)]
    pub files: Vec<FileDef>,
    /// Commands run in a chroot of the tree at build time (not for OCI images).
    #[serde(default)]
    pub run: Vec<String>,
    /// Certificates the guest trusts besides its own store.
    #[serde(default)]
    pub tls: TlsDef,
    /// The template's name (from its file name).
    #[serde(skip)]
    pub name: String,
    /// Digest of the file's text: a change means a rebuild.
    #[serde(skip)]
    pub source_digest: Option<Digest>,
}

/// Default vCPUs and memory.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmDefaults {
    /// vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
}

impl Default for VmDefaults {
    fn default() -> Self {
        VmDefaults { cpus: 1, memory_mib: 256 }
    }
}

/// The kind of root filesystem.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RootfsKind {
    /// Debian's static busybox and its applets.
    Busybox,
    /// A Debian tree by mmdebstrap.
    Debian,
    /// The layers of an OCI image from a registry.
    Oci,
}

/// Extra certificate authorities for the guest's trust store.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsDef {
    /// PEM files on the build host, added to the guest's trust store at build time.
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
}

/// Root filesystem recipe.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RootfsDef {
    /// Builder.
    pub kind: RootfsKind,
    /// Image size in MiB (for `oci`, 0 or absent: what the image holds plus room to build).
    #[serde(default)]
    pub size_mib: u32,
    /// The image reference (`oci`): `HOST[:PORT]/NAME:TAG` or `…@sha256:DIGEST`.
    #[serde(default)]
    pub image: Option<String>,
    /// Debian suite (default: the host's).
    #[serde(default)]
    pub suite: Option<String>,
    /// mmdebstrap variant.
    #[serde(default)]
    pub variant: Option<String>,
    /// Extra packages (debian).
    #[serde(default)]
    pub packages: Vec<String>,
}

/// A file to place into the tree.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileDef {
    /// Absolute path in the guest.
    pub path: String,
    /// Text contents.
    pub content: String,
    /// Octal permission bits, e.g. "0644".
    #[serde(default = "default_mode")]
    pub mode: String,
}

fn default_mode() -> String {
    "0644".into()
}

/// Checks a template name: lowercase letters, digits, `-` and `_`, at most 64.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with('-')
}

/// Folders searched for `NAME.toml`: `KILN_TEMPLATE_PATH` (colon-separated), `./templates`,
/// the `templates/` of the source tree the binary was built in, `/usr/local/share/kiln/templates`.
pub fn search_path() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::env::var("KILN_TEMPLATE_PATH")
        .map(|s| s.split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect())
        .unwrap_or_default();
    v.push(PathBuf::from("templates"));
    v.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates"));
    v.push(PathBuf::from("/usr/local/share/kiln/templates"));
    v
}

/// The template kiln makes for an OCI image named by a job or an API request: its name
/// (`image-` and 16 hex digits of the reference's digest) and its text (the image as it is,
/// 2 vCPUs and 1024 MiB).
pub fn for_image(reference: &crate::oci::Reference) -> (String, String) {
    let r = reference.to_string();
    let name = format!("image-{}", &Digest::of_bytes(r.as_bytes()).hex()[..16]);
    let text = format!("# Made by kiln for the OCI image {r}.\ndescription = \"OCI image {r}\"\n\n[vm]\ncpus = 2\nmemory_mib = 1024\n\n[rootfs]\nkind = \"oci\"\nimage = \"{r}\"\n");
    (name, text)
}

impl TemplateDef {
    /// Parses a template's text.
    pub fn parse(name: &str, text: &str, origin: &Path) -> Result<TemplateDef> {
        let mut def: TemplateDef =
            toml::from_str(text).map_err(|e| ImageError::BadTemplate { path: origin.to_owned(), detail: e.to_string() })?;
        def.name = name.to_owned();
        def.source_digest = Some(Digest::of_bytes(text.as_bytes()));
        def.check(origin)?;
        Ok(def)
    }

    fn check(&self, origin: &Path) -> Result<()> {
        let bad = |detail: String| Err(ImageError::BadTemplate { path: origin.to_owned(), detail });
        if !(1..=64).contains(&self.vm.cpus) {
            return bad(format!("vm.cpus must be 1..=64, not {}", self.vm.cpus));
        }
        if !(64..=65536).contains(&self.vm.memory_mib) {
            return bad(format!("vm.memory_mib must be 64..=65536, not {}", self.vm.memory_mib));
        }
        let auto_size = self.rootfs.kind == RootfsKind::Oci && self.rootfs.size_mib == 0;
        if !auto_size && !(16..=65536).contains(&self.rootfs.size_mib) {
            return bad(format!("rootfs.size_mib must be 16..=65536, not {}", self.rootfs.size_mib));
        }
        match (self.rootfs.kind, &self.rootfs.image) {
            (RootfsKind::Oci, None) => return bad("rootfs.image is required for kind = \"oci\" (HOST[:PORT]/NAME:TAG)".into()),
            (RootfsKind::Oci, Some(image)) => {
                if let Err(e) = crate::oci::Reference::parse(image) {
                    return bad(format!("rootfs.image: {e}"));
                }
                if !self.run.is_empty() {
                    return bad("run is not allowed with kind = \"oci\": it would run the image's programs on the build host as root; \
                                put such steps in the image itself, or in the job's --setup"
                        .into());
                }
                if !self.rootfs.packages.is_empty() || self.rootfs.suite.is_some() || self.rootfs.variant.is_some() {
                    return bad("rootfs.packages, suite and variant are for kind = \"debian\"; an OCI image brings its own userland".into());
                }
            }
            (_, Some(_)) => return bad("rootfs.image is only for kind = \"oci\"".into()),
            (_, None) => {}
        }
        for ca in &self.tls.ca_files {
            if !ca.is_absolute() {
                return bad(format!("tls.ca_files: {} must be an absolute path on the build host", ca.display()));
            }
        }
        for f in &self.files {
            if !f.path.starts_with('/') || f.path.split('/').any(|c| c == "..") {
                return bad(format!("files: path {:?} must be absolute without '..'", f.path));
            }
            if u32::from_str_radix(&f.mode, 8).map_or(true, |m| m > 0o7777) {
                return bad(format!("files: mode {:?} of {} is not octal permission bits", f.mode, f.path));
            }
        }
        for p in &self.rootfs.packages {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.:_".contains(&b)) {
                return bad(format!("rootfs.packages: {p:?} is not a package name"));
            }
        }
        Ok(())
    }

    /// Finds a template by name, or loads it from a path ending in `.toml`.
    pub fn find(name_or_path: &str) -> Result<TemplateDef> {
        if name_or_path.ends_with(".toml") || name_or_path.contains('/') {
            let path = PathBuf::from(name_or_path);
            let text = std::fs::read_to_string(&path).map_err(ImageError::io("read template", &path))?;
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            if !valid_name(&name) {
                return Err(ImageError::BadTemplate { path, detail: "file name must be NAME.toml with NAME of [a-z0-9_-]".into() });
            }
            return Self::parse(&name, &text, &path);
        }
        if !valid_name(name_or_path) {
            return Err(ImageError::UnknownTemplate { name: name_or_path.to_owned(), known: Self::known_names().join(", ") });
        }
        for dir in search_path() {
            let path = dir.join(format!("{name_or_path}.toml"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                return Self::parse(name_or_path, &text, &path);
            }
        }
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(name_or_path, text, Path::new(&format!("<builtin>/{name_or_path}.toml")));
        }
        Err(ImageError::UnknownTemplate { name: name_or_path.to_owned(), known: Self::known_names().join(", ") })
    }

    /// Names of every template on the search path and built in.
    pub fn known_names() -> Vec<String> {
        let mut names: Vec<String> = BUILTIN.iter().map(|(n, _)| (*n).to_owned()).collect();
        for dir in search_path() {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "toml") {
                    if let Some(stem) = p.file_stem().map(|s| s.to_string_lossy().into_owned()) {
                        if valid_name(&stem) && !names.contains(&stem) {
                            names.push(stem);
                        }
                    }
                }
            }
        }
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse() {
        for (name, text) in BUILTIN {
            let t = TemplateDef::parse(name, text, Path::new("x")).unwrap();
            assert_eq!(t.name, *name);
        }
    }

    #[test]
    fn rejects_bad_fields() {
        let base = "[rootfs]\nkind = \"busybox\"\nsize_mib = 64\n";
        assert!(TemplateDef::parse("t", base, Path::new("x")).is_ok());
        let e = TemplateDef::parse("t", &format!("{base}bogus = 1\n"), Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = TemplateDef::parse("t", &format!("{base}[[files]]\npath = \"/a/../b\"\ncontent = \"\"\n"), Path::new("x")).unwrap_err();
        assert!(e.to_string().contains(".."), "{e}");
        let e = TemplateDef::parse("t", &format!("[vm]\ncpus = 0\nmemory_mib = 256\n{base}"), Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("cpus"), "{e}");
        let e = TemplateDef::parse("t", "[rootfs]\nkind = \"busybox\"\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("size_mib"), "{e}");
    }

    #[test]
    fn oci_templates() {
        let ok = "[rootfs]\nkind = \"oci\"\nimage = \"127.0.0.1:5000/team/app:1\"\n";
        let t = TemplateDef::parse("t", ok, Path::new("x")).unwrap();
        assert_eq!((t.rootfs.kind, t.rootfs.size_mib), (RootfsKind::Oci, 0));
        for (text, says) in [
            ("[rootfs]\nkind = \"oci\"\n", "rootfs.image is required"),
            ("[rootfs]\nkind = \"oci\"\nimage = \"app:1\"\n", "HOST[:PORT]/NAME"),
            (&format!("run = [\"true\"]\n{ok}") as &str, "run is not allowed"),
            (&format!("{ok}packages = [\"curl\"]\n"), "brings its own userland"),
            ("[rootfs]\nkind = \"busybox\"\nsize_mib = 64\nimage = \"h.test/a:1\"\n", "only for kind"),
            (&format!("{ok}[tls]\nca_files = [\"ca.pem\"]\n"), "absolute path"),
        ] {
            let e = TemplateDef::parse("t", text, Path::new("x")).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn names() {
        assert!(valid_name("tiny"));
        assert!(!valid_name("../x"));
        assert!(!valid_name("Tiny"));
        assert!(matches!(TemplateDef::find("no-such-template"), Err(ImageError::UnknownTemplate { .. })));
    }
}
