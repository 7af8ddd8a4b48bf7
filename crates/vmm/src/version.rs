//! Which QEMU: its binary (`KILN_QEMU`), its version (asked once per binary), and what that
//! version can do.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use crate::error::VmError;

/// A QEMU release number, from the first line of `--version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Micro.
    pub micro: u32,
}

impl QemuVersion {
    /// The first QEMU whose `memory-backend-file` takes `readonly=on,rom=off`: the file is
    /// opened read-only and mapped private, and the guest still sees ordinary RAM. Older QEMUs
    /// open a frozen RAM file read-write even when they map it copy-on-write.
    pub const READONLY_RAM: QemuVersion = QemuVersion { major: 8, minor: 2, micro: 0 };

    /// Parses "QEMU emulator version 10.0.2 (Debian …)".
    pub fn parse(line: &str) -> Option<QemuVersion> {
        let rest = &line[line.find("version ")? + "version ".len()..];
        let number = rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?;
        let mut parts = number.split('.').map(|p| p.parse::<u32>());
        let major = parts.next()?.ok()?;
        let minor = parts.next().unwrap_or(Ok(0)).ok()?;
        let micro = parts.next().unwrap_or(Ok(0)).ok()?;
        Some(QemuVersion { major, minor, micro })
    }

    /// Whether this QEMU can map a frozen RAM file read-only (see [`Self::READONLY_RAM`]).
    pub fn maps_frozen_ram_readonly(self) -> bool {
        self >= Self::READONLY_RAM
    }
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// `KILN_QEMU`, or `qemu-system-x86_64`.
pub fn binary_from_env() -> PathBuf {
    std::env::var_os("KILN_QEMU").map(PathBuf::from).unwrap_or_else(|| "qemu-system-x86_64".into())
}

/// Why a confined VMM cannot run on `release`.
pub fn old_qemu(release: QemuVersion) -> String {
    format!(
        "QEMU {release} cannot map a frozen RAM file read-only (that takes QEMU {}), so a confined VMM could write the RAM later clones start from; install qemu-system-x86 >= {} (`make deps` takes it from bookworm-backports on Debian 12)",
        QemuVersion::READONLY_RAM,
        QemuVersion::READONLY_RAM
    )
}

/// What `BINARY --version` said: its first line and the number in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// The first line, e.g. "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)".
    pub line: String,
    /// The number in it.
    pub version: QemuVersion,
}

/// `binary --version`, asked once per binary per process (a restore must not pay for a spawn).
pub fn of(binary: &Path) -> Result<VersionInfo, VmError> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, VersionInfo>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(binary) {
        return Ok(v.clone());
    }
    let ask = || -> Result<String, VmError> {
        let out = Command::new(binary)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map_err(|source| VmError::Spawn { binary: binary.display().to_string(), source })?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_owned())
    };
    // Across processes too, while the binary is the same file (see `crate::memo`).
    let line = match crate::memo::binary_identity(binary) {
        Some(id) => crate::memo::remembered("qemu-version", &id, ask)?,
        None => ask()?,
    };
    let version = QemuVersion::parse(&line).ok_or_else(|| {
        VmError::Unsupported(format!("{} --version printed {line:?}, not a QEMU version; is KILN_QEMU a QEMU?", binary.display()))
    })?;
    let info = VersionInfo { line, version };
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(binary.to_owned(), info.clone());
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_version_lines() {
        let v = |s| QemuVersion::parse(s).unwrap();
        assert_eq!(v("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"), QemuVersion { major: 10, minor: 0, micro: 2 });
        assert_eq!(v("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"), QemuVersion { major: 7, minor: 2, micro: 22 });
        assert_eq!(v("QEMU emulator version 8.2"), QemuVersion { major: 8, minor: 2, micro: 0 });
        assert_eq!(QemuVersion::parse("qemu-img version"), None);
        assert_eq!(QemuVersion::parse("hello"), None);
    }

    #[test]
    fn read_only_ram_from_8_2_on() {
        let v = |s| QemuVersion::parse(s).unwrap().maps_frozen_ram_readonly();
        assert!(!v("QEMU emulator version 7.2.22"));
        assert!(!v("QEMU emulator version 8.1.5"));
        assert!(v("QEMU emulator version 8.2.0"));
        assert!(v("QEMU emulator version 10.0.2 (Debian)"));
    }
}
