//! Building a template's root filesystem into an ext4 image, without mounting anything:
//! a tree is assembled in a folder (busybox applets, or a Debian tree by mmdebstrap with the
//! host's apt configuration), then `mkfs.ext4 -d` turns it into an image.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::deb::{self, run_tool};
use crate::error::{ImageError, Result};
use crate::lock::FileLock;
use crate::oci::remote::{self, PullLimits, Resolved};
use crate::oci::{self, Reference, Usage};
use crate::registry::{BuiltTemplate, ImageOrigin};
use crate::store::Store;
use crate::template::{RootfsKind, TemplateDef};
use crate::{guest_tree, Home, Progress};

/// Builds `def` unless an image built from the same file is already stored (`force` rebuilds).
/// A template made from an OCI image is first resolved at its registry: a tag that moved is
/// built anew, and a manifest digest built before (from the same file) is never built again.
/// When the registry cannot be reached, an earlier build of the same file is used, with a note.
pub fn build(home: &Home, def: &TemplateDef, force: bool, progress: Progress<'_>) -> Result<BuiltTemplate> {
    let source = def.source_digest.clone().expect("parsed templates have a digest");
    let pinned = def.rootfs.image.as_deref().is_some_and(|i| i.contains("@sha256:"));
    if pinned && !force {
        // A digest names one image forever: no need to ask the registry again.
        let same = |t: &BuiltTemplate| t.source_digest == source && t.image.as_ref().is_some_and(|i| Some(&i.reference) == def.rootfs.image.as_ref());
        if let Some(t) = BuiltTemplate::load(home, &def.name).filter(same) {
            return Ok(t);
        }
    }
    let image = match def.rootfs.kind {
        RootfsKind::Oci => match resolve_image(def) {
            Ok(r) => Some(r),
            Err(e) => match BuiltTemplate::load(home, &def.name).filter(|t| t.source_digest == source && t.image.is_some() && !force) {
                Some(t) => {
                    progress(&format!("{e}; using the earlier build of {}", t.image.as_ref().map(|i| i.manifest.to_string()).unwrap_or_default()));
                    return Ok(t);
                }
                None => return Err(e),
            },
        },
        _ => None,
    };
    let manifest = image.as_ref().map(|r| r.manifest_digest.clone());
    let up_to_date = |t: &BuiltTemplate| t.source_digest == source && t.image.as_ref().map(|i| &i.manifest) == manifest.as_ref() && !force;
    if let Some(t) = BuiltTemplate::load(home, &def.name).filter(up_to_date) {
        return Ok(t);
    }
    let _lock = FileLock::acquire(&home.locks().join(format!("template-{}.lock", def.name)))?;
    if let Some(t) = BuiltTemplate::load(home, &def.name).filter(up_to_date) {
        return Ok(t);
    }
    if let (Some(m), false) = (&manifest, force) {
        if let Some(t) = BuiltTemplate::load_image_build(home, &def.name, &source, m) {
            progress(&format!("template {}: image {} was built before; using that build", def.name, m.short()));
            t.save(home)?;
            return Ok(t);
        }
    }
    let started = Instant::now();
    let work = home.tmp().join(format!("build-{}-{}", def.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(ImageError::io("create", &work))?;
    let result = build_in(home, def, image.as_ref(), &work, progress);
    let _ = std::fs::remove_dir_all(&work);
    let built = result?;
    progress(&format!(
        "template {} built in {:.1}s: {} ({} MiB)",
        def.name,
        started.elapsed().as_secs_f64(),
        built.rootfs.short(),
        built.size_bytes >> 20
    ));
    Ok(built)
}

/// The manifest an OCI template's image names now.
fn resolve_image(def: &TemplateDef) -> Result<Resolved> {
    let text = def.rootfs.image.as_deref().unwrap_or_default();
    let reference = Reference::parse(text).map_err(|e| ImageError::BadTemplate { path: def.name.clone().into(), detail: e.to_string() })?;
    remote::resolve(&reference, &PullLimits::default()).map_err(|source| ImageError::Pull { reference: text.to_owned(), source })
}

/// Pulls the resolved image and applies its layers onto `tree`; returns the image's
/// environment and the bytes and entries its layers hold.
fn image_tree(home: &Home, resolved: &Resolved, tree: &Path, progress: Progress<'_>) -> Result<(Vec<String>, Usage)> {
    let reference = resolved.reference.to_string();
    let pinned = Reference { digest: Some(resolved.manifest_digest.clone()), ..resolved.reference.clone() };
    let pulled = remote::pull(&pinned, &Store::new(home.store()), &home.tmp(), &PullLimits::default(), progress)
        .map_err(|source| ImageError::Pull { reference: reference.clone(), source })?;
    let mut files = Vec::new();
    for (path, compression) in &pulled.layers {
        files.push((std::fs::File::open(path).map_err(ImageError::io("open layer", path))?, *compression));
    }
    std::fs::create_dir(tree).map_err(ImageError::io("create", tree))?;
    let usage = oci::apply_layers(tree, files, &oci::Limits::default()).map_err(|source| ImageError::Layers { reference, source })?;
    Ok((pulled.config.config.env, usage))
}

/// An OCI template's image size: what the layers hold, a block per entry, and room to build.
fn auto_size_mib(usage: &Usage) -> u32 {
    let mib = (usage.bytes >> 20) * 5 / 4 + ((usage.entries * 4096) >> 20) + 1024;
    mib.min(65536) as u32
}

fn build_in(home: &Home, def: &TemplateDef, image: Option<&Resolved>, work: &Path, progress: Progress<'_>) -> Result<BuiltTemplate> {
    let tree = work.join("tree");
    let mut size_mib = def.rootfs.size_mib;
    let mut image_env = Vec::new();
    match def.rootfs.kind {
        RootfsKind::Busybox => {
            progress("[1/4] fetching busybox-static with apt-get download");
            busybox_tree(&work.join("pkg"), &tree)?;
        }
        RootfsKind::Debian => {
            let suite = def.rootfs.suite.clone().unwrap_or_else(host_codename);
            progress(&format!("[1/4] mmdebstrap {suite} ({} extra packages); this takes a minute or two", def.rootfs.packages.len()));
            debian_tree(def, &suite, &tree)?;
        }
        RootfsKind::Oci => {
            let resolved = image.expect("OCI templates are resolved first");
            progress(&format!("[1/4] pulling {} ({})", resolved.reference, resolved.manifest_digest.short()));
            let (env, usage) = image_tree(home, resolved, &tree, progress)?;
            progress(&format!("      applied {} layers: {} entries, {} MiB", resolved.layers.len(), usage.entries, usage.bytes >> 20));
            image_env = env;
            if size_mib == 0 {
                size_mib = auto_size_mib(&usage);
            }
        }
    }
    progress("[2/4] adding files and what the guest needs, running build commands");
    guest_tree::finish(&tree, def, &image_env)?;
    for cmd in &def.run {
        progress(&format!("      run: {cmd}"));
        run_tool(
            Command::new("chroot")
                .arg(&tree)
                .args(["/bin/sh", "-c", cmd])
                .env_clear()
                .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
                .env("HOME", "/root")
                .env("LANG", "C.UTF-8"),
            "chroot is part of coreutils",
        )?;
    }
    progress(&format!("[3/4] mkfs.ext4 ({size_mib} MiB)"));
    let img = work.join("rootfs.img");
    run_tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "kiln-root", "-m", "0"])
            .args(["-E", "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0"])
            .arg("-d")
            .arg(&tree)
            .arg(&img)
            .arg(format!("{size_mib}M")),
        "install e2fsprogs (apt-get install e2fsprogs)",
    )?;
    progress("[4/4] storing the image by digest");
    let size_bytes = std::fs::metadata(&img).map_err(ImageError::io("stat", &img))?.len();
    let rootfs = Store::new(home.store()).put_file(&img)?;
    let built = BuiltTemplate {
        name: def.name.clone(),
        description: def.description.clone(),
        source_digest: def.source_digest.clone().expect("digest"),
        rootfs,
        size_bytes,
        built_at: BuiltTemplate::now(),
        cpus: def.vm.cpus,
        memory_mib: def.vm.memory_mib,
        image: image.map(|r| ImageOrigin { reference: def.rootfs.image.clone().unwrap_or_default(), manifest: r.manifest_digest.clone() }),
    };
    built.save(home)?;
    Ok(built)
}

/// The host's Debian codename (`VERSION_CODENAME` in os-release), default "bookworm".
pub fn host_codename() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME=").map(|v| v.trim_matches('"').to_owned())))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "bookworm".into())
}

fn mkdirs(tree: &Path, dirs: &[&str]) -> Result<()> {
    for d in dirs {
        let p = tree.join(d);
        std::fs::create_dir_all(&p).map_err(ImageError::io("create", &p))?;
    }
    Ok(())
}

fn busybox_tree(pkg: &Path, tree: &Path) -> Result<()> {
    let root = deb::fetch_and_unpack("busybox-static", pkg)?;
    let bin = root.join("bin/busybox");
    mkdirs(tree, &["bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root", "var/tmp", "home", "mnt", "newroot"])?;
    let dest = tree.join("bin/busybox");
    std::fs::copy(&bin, &dest).map_err(ImageError::io("copy busybox", &dest))?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).map_err(ImageError::io("chmod", &dest))?;
    let list = run_tool(Command::new(&bin).arg("--list-full"), "busybox-static")?;
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty() && *l != "linuxrc" && *l != "bin/busybox") {
        let link = tree.join(applet);
        if link.exists() {
            continue;
        }
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).map_err(ImageError::io("create", parent))?;
        }
        symlink("/bin/busybox", &link).map_err(ImageError::io("symlink", &link))?;
    }
    let etc = [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
        ("etc/hostname", "kiln\n"),
        ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
        ("etc/os-release", "NAME=\"kiln tiny\"\nID=kiln-tiny\nPRETTY_NAME=\"kiln tiny (busybox)\"\n"),
    ];
    for (p, c) in etc {
        let path = tree.join(p);
        std::fs::write(&path, c).map_err(ImageError::io("write", &path))?;
    }
    std::fs::set_permissions(tree.join("tmp"), std::fs::Permissions::from_mode(0o1777)).map_err(ImageError::io("chmod", tree.join("tmp")))?;
    Ok(())
}

/// The host's apt source files, handed to mmdebstrap so the guest uses the same archive
/// configuration as the host (no mirror address appears in kiln).
pub fn host_sources() -> Vec<PathBuf> {
    let mut v = Vec::new();
    let list = PathBuf::from("/etc/apt/sources.list");
    if std::fs::read_to_string(&list).is_ok_and(|s| s.lines().any(|l| l.trim_start().starts_with("deb"))) {
        v.push(list);
    }
    let mut parts: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
        .collect();
    parts.sort();
    v.extend(parts);
    v
}

fn debian_tree(def: &TemplateDef, suite: &str, tree: &Path) -> Result<()> {
    let sources = host_sources();
    if sources.is_empty() {
        return Err(ImageError::Tool { tool: "mmdebstrap".into(), detail: "the host has no apt sources configured".into() });
    }
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg(format!("--variant={}", def.rootfs.variant.as_deref().unwrap_or("minbase")))
        .arg("--mode=auto")
        .arg("--dpkgopt=path-exclude=/usr/share/man/*")
        .arg("--dpkgopt=path-exclude=/usr/share/locale/*")
        .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
        .arg("--aptopt=Acquire::Languages \"none\"");
    if !def.rootfs.packages.is_empty() {
        cmd.arg(format!("--include={}", def.rootfs.packages.join(",")));
    }
    cmd.arg(suite).arg(tree).args(&sources).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
    let status = cmd.status().map_err(|e| ImageError::Tool {
        tool: "mmdebstrap".into(),
        detail: if e.kind() == std::io::ErrorKind::NotFound { "not installed; apt-get install mmdebstrap".into() } else { e.to_string() },
    })?;
    if !status.success() {
        return Err(ImageError::Tool { tool: "mmdebstrap".into(), detail: format!("exited with {status}; its messages are above") });
    }
    mkdirs(tree, &["newroot"])
}
