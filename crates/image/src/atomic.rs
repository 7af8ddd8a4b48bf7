//! Replacing a file whole: readers see the old content or the new, never half of it.

use std::path::Path;

use crate::error::{ImageError, Result};

/// Writes a file by writing a temporary sibling and renaming it over.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(ImageError::io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(ImageError::io("rename", path))
}
