//! The initramfs: the agent as `/init` plus the kernel's virtio modules and their load order.

use std::path::{Path, PathBuf};

use crate::cpio::CpioWriter;
use crate::error::{ImageError, Result};
use crate::kernel::Kernel;
use crate::store::{Digest, Store};
use crate::Home;

/// Where the agent binary is looked for, in order: `KILN_AGENT`, beside the running
/// executable, the cargo target folders around it, then the install locations.
pub fn agent_candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("KILN_AGENT") {
        v.push(PathBuf::from(p));
        return v;
    }
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(Path::to_path_buf);
        v.extend(dir.iter().map(|d| d.join("kiln-agent")));
        // target/{debug,release}/kiln and target/debug/deps/test-binary both reach
        // target/x86_64-unknown-linux-gnu/release/kiln-agent within three levels.
        for _ in 0..3 {
            let Some(d) = dir else { break };
            v.push(d.join("x86_64-unknown-linux-gnu/release/kiln-agent"));
            dir = d.parent().map(Path::to_path_buf);
        }
    }
    v.push(PathBuf::from("/usr/local/lib/kiln/kiln-agent"));
    v.push(PathBuf::from("/usr/lib/kiln/kiln-agent"));
    v
}

/// Finds the agent binary: the first candidate that is a static executable (a dynamically
/// linked build of the agent, e.g. from `cargo test`, cannot run in the guest and is skipped).
pub fn find_agent() -> Result<PathBuf> {
    let cands = agent_candidates();
    let mut dynamic = Vec::new();
    for p in cands.iter().filter(|p| p.is_file()) {
        // The ELF and program headers sit at the start: no need to read the whole binary.
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(std::fs::File::open(p).map_err(ImageError::io("read agent", p))?, 64 << 10), &mut bytes)
            .map_err(ImageError::io("read agent", p))?;
        if has_interpreter(&bytes) {
            dynamic.push(p.display().to_string());
            continue;
        }
        return Ok(p.clone());
    }
    if !dynamic.is_empty() {
        return Err(ImageError::Tool {
            tool: "kiln-agent".into(),
            detail: format!("only dynamically linked builds found ({}); the guest needs a static build: make build", dynamic.join(", ")),
        });
    }
    Err(ImageError::NoAgent(cands.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")))
}

/// Whether an ELF64 executable asks for a dynamic loader (has a PT_INTERP header).
fn has_interpreter(elf: &[u8]) -> bool {
    let rd16 = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let rd32 = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let rd64 = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    if elf.get(..4) != Some(b"\x7fELF") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd64(0x20), rd16(0x36), rd16(0x38)) else { return false };
    (0..phnum).any(|i| rd32(phoff + i * phentsize) == Some(3))
}

/// What the initramfs is made of, cheaply: the agent file's identity (path, size, inode,
/// mtime, ctime) and the kernel's release and module digests.
fn inputs_key(kernel: &Kernel, agent: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(agent).ok()?;
    let modules: Vec<String> = kernel.modules.iter().map(|(n, d)| format!("{n}={}", d.hex())).collect();
    Some(format!(
        "initramfs-v1\n{}\n{} {} {} {} {} {} {}\n{}\n{}\n{}",
        agent.display(),
        m.len(),
        m.ino(),
        m.dev(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        kernel.release,
        kernel.vmlinuz.hex(),
        modules.join(",")
    ))
}

/// Builds (or finds) the initramfs for this agent and kernel; returns its digest. The last
/// build is remembered by its inputs' identity ([`inputs_key`]), so a create whose agent and
/// kernel did not change neither reads the agent nor rebuilds and hashes the archive.
pub fn ensure(home: &Home, kernel: &Kernel, agent: &Path) -> Result<Digest> {
    let store = Store::new(home.store());
    let memo = home.root().join("initramfs.memo");
    let key = inputs_key(kernel, agent);
    if let (Some(key), Ok(text)) = (&key, std::fs::read_to_string(&memo)) {
        if let Some(d) = text.strip_prefix(key.as_str()).and_then(|rest| rest.strip_prefix("\n=")).and_then(|h| Digest::parse(h.trim())) {
            if store.contains(&d) {
                return Ok(d);
            }
        }
    }
    let digest = build(&store, home, kernel, agent)?;
    if let Some(key) = key {
        let _ = crate::atomic::write_atomic(&memo, format!("{key}\n={}\n", digest.hex()).as_bytes());
    }
    Ok(digest)
}

fn build(store: &Store, home: &Home, kernel: &Kernel, agent: &Path) -> Result<Digest> {
    let agent_bytes = std::fs::read(agent).map_err(ImageError::io("read agent", agent))?;
    let mut w = CpioWriter::new();
    w.dir("kiln", 0o755);
    w.dir("kiln/modules", 0o755);
    let mut order = String::new();
    for (name, digest) in &kernel.modules {
        let path = store.get(digest, false)?;
        let data = std::fs::read(&path).map_err(ImageError::io("read module", &path))?;
        w.file(&format!("kiln/modules/{name}"), 0o644, &data);
        order.push_str(name);
        order.push('\n');
    }
    w.file("kiln/modules.order", 0o644, order.as_bytes());
    w.file("kiln/kernel.release", 0o644, kernel.release.as_bytes());
    for d in ["dev", "proc", "sys", "newroot", "tmp"] {
        w.dir(d, 0o755);
    }
    // So the agent's earliest messages (before devtmpfs is mounted) reach the serial console.
    w.chardev("dev/console", 0o600, 5, 1);
    w.file("init", 0o755, &agent_bytes);
    store.put_bytes(&w.finish(), &home.tmp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_dynamic_executables() {
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(has_interpreter(&sh));
        assert!(!has_interpreter(b"not an elf"));
    }
}
