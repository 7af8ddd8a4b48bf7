//! Everything a template needs to boot: kernel, initramfs (with the current agent) and the
//! root filesystem image, fetched or built on first use.

use std::path::PathBuf;

use kiln_image::store::{Digest, Store};
use kiln_image::template::RootfsKind;
use kiln_image::{initramfs, rootfs, BuiltTemplate, Home, Kernel, Progress, TemplateDef};

use crate::error::SandboxError;

/// The artifacts of one template, ready to boot.
#[derive(Debug, Clone)]
pub struct BootArtifacts {
    /// The template definition.
    pub def: TemplateDef,
    /// The built template.
    pub template: BuiltTemplate,
    /// The kernel.
    pub kernel: Kernel,
    /// Path of the bzImage.
    pub kernel_path: PathBuf,
    /// Digest of the initramfs.
    pub initramfs: Digest,
    /// Path of the initramfs.
    pub initrd_path: PathBuf,
    /// Path of the read-only root filesystem image.
    pub rootfs_path: PathBuf,
}

/// Kernel and initramfs only (enough for the accelerator probe).
pub fn kernel_and_initramfs(home: &Home, progress: Progress<'_>) -> Result<(Kernel, PathBuf, Digest, PathBuf), SandboxError> {
    let kernel = Kernel::ensure(home, progress)?;
    let agent = initramfs::find_agent()?;
    let initramfs = initramfs::ensure(home, &kernel, &agent)?;
    let store = Store::new(home.store());
    let kernel_path = store.get(&kernel.vmlinuz, false)?;
    let initrd_path = store.get(&initramfs, false)?;
    Ok((kernel, kernel_path, initramfs, initrd_path))
}

/// Resolves `template` (a name or a path to a `.toml`) and makes sure all its artifacts exist,
/// building what is missing (with progress).
pub fn prepare(home: &Home, template: &str, progress: Progress<'_>) -> Result<BootArtifacts, SandboxError> {
    let def = TemplateDef::find(template)?;
    let (kernel, kernel_path, initramfs, initrd_path) = kernel_and_initramfs(home, progress)?;
    let built = match BuiltTemplate::load(home, &def.name) {
        // An image's tag may have moved since: `build` asks the registry (and keeps using
        // this build when the registry cannot be reached).
        Some(t) if Some(&t.source_digest) == def.source_digest.as_ref() && def.rootfs.kind == RootfsKind::Oci => rootfs::build(home, &def, false, progress).unwrap_or(t),
        Some(t) if Some(&t.source_digest) == def.source_digest.as_ref() => t,
        Some(_) => {
            progress(&format!("template {} changed since it was built; rebuilding", def.name));
            rootfs::build(home, &def, false, progress)?
        }
        None => {
            progress(&format!("template {} is not built yet; building it now (once)", def.name));
            rootfs::build(home, &def, false, progress)?
        }
    };
    let rootfs_path = Store::new(home.store()).get(&built.rootfs, false)?;
    Ok(BootArtifacts { def, template: built, kernel, kernel_path, initramfs, initrd_path, rootfs_path })
}

/// [`prepare`] for a template that must already be built and unchanged since: never builds
/// (a build runs the template's commands as root), and says what to do instead.
pub fn prepare_built(home: &Home, template: &str, progress: Progress<'_>) -> Result<BootArtifacts, SandboxError> {
    let def = TemplateDef::find(template)?;
    match BuiltTemplate::load(home, &def.name) {
        Some(t) if Some(&t.source_digest) == def.source_digest.as_ref() => prepare(home, template, progress),
        _ => Err(SandboxError::Invalid(format!(
            "template {} is not built (or changed since it was built); build it first: `kiln template build {}`",
            def.name, def.name
        ))),
    }
}
