//! Sandboxes of OCI images: a create that names an image instead of a template gets the
//! template kiln makes for that image (written beneath the home's `image-templates/`, built
//! the first time per image digest). Any token may name an image that matches one of the
//! daemon's `--images` patterns; others need the admin scope. Building one pulls and unpacks
//! the image's layers (checked like everything from outside) and runs none of its programs.

use kiln_core::error::SandboxError;
use kiln_image::oci::{pattern_matches, Reference};

use crate::access::{Principal, Scope};
use crate::manager::{Manager, ManagerError};

impl Manager {
    /// The path of the template file for `image`, built (or found built) for its current digest.
    pub(crate) async fn image_template(&self, image: &str, who: &Principal) -> Result<String, ManagerError> {
        let reference = Reference::parse(image).map_err(|e| ManagerError::Invalid(e.to_string()))?;
        let canonical = reference.to_string();
        if !who.may(Scope::Admin) && !self.limits.images.iter().any(|p| pattern_matches(p, &canonical)) {
            let patterns = if self.limits.images.is_empty() { "none are set".to_owned() } else { self.limits.images.join(", ") };
            return Err(ManagerError::Forbidden(format!(
                "image {canonical} matches none of the daemon's --images patterns ({patterns}); start `kiln serve --images PATTERN`, or use an admin token"
            )));
        }
        let (name, text) = kiln_image::template::for_image(&reference);
        let dir = self.home.root().join("image-templates");
        let path = dir.join(format!("{name}.toml"));
        let home = self.home.clone();
        let answer = path.display().to_string();
        let built = tokio::task::spawn_blocking(move || -> Result<(), SandboxError> {
            std::fs::create_dir_all(&dir).map_err(|e| SandboxError::Invalid(format!("create {}: {e}", dir.display())))?;
            // Two creates of one image at once (two jobs) write the same file: one at a time.
            let _lock = kiln_image::lock::FileLock::acquire(&dir.join(format!("{name}.lock")))?;
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                kiln_image::atomic::write_atomic(&path, text.as_bytes())?;
            }
            let def = kiln_image::TemplateDef::find(&path.display().to_string())?;
            kiln_image::rootfs::build(&home, &def, false, &kiln_image::quiet)?;
            Ok(())
        })
        .await
        .map_err(|e| ManagerError::Invalid(format!("building the template of {canonical}: {e}")))?;
        built?;
        Ok(answer)
    }
}
