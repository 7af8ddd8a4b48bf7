//! The guest kernel: Debian's cloud kernel, its virtio modules, and the boot parameters
//! kiln derives for it (`lpj=`, `tsc_early_khz=`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::deb;
use crate::error::{ImageError, Result};
use crate::lock::FileLock;
use crate::store::{Digest, Store};
use crate::{Home, Progress};

/// Meta-package that names the current cloud kernel.
pub const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// Modules the guest needs, in load order (their dependencies are added before them).
pub const WANTED_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_console",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
];

/// A fetched kernel, recorded in `kernels/<package>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Kernel {
    /// Debian package name.
    pub package: String,
    /// Package version.
    pub version: String,
    /// `uname -r` of the kernel.
    pub release: String,
    /// The bzImage in the store.
    pub vmlinuz: Digest,
    /// `CONFIG_HZ`, needed to turn a TSC frequency into `lpj`.
    pub hz: u32,
    /// The modules, in load order: (file name, digest in the store).
    pub modules: Vec<(String, Digest)>,
}

impl Kernel {
    /// The current kernel: the one the meta-package names, fetched on first use. With no apt
    /// lists (offline), the newest kernel already fetched is used. `KILN_KERNEL_PACKAGE`
    /// pins a package.
    pub fn ensure(home: &Home, progress: Progress<'_>) -> Result<Kernel> {
        let package = match std::env::var("KILN_KERNEL_PACKAGE") {
            Ok(p) => p,
            Err(_) => match resolve_current(home) {
                Ok(p) => p,
                Err(e) => return Self::newest_cached(home).ok_or(e),
            },
        };
        let record = home.kernels().join(format!("{package}.json"));
        if let Some(k) = Self::load(&record, home) {
            return Ok(k);
        }
        let _lock = FileLock::acquire(&home.locks().join("kernel.lock"))?;
        if let Some(k) = Self::load(&record, home) {
            return Ok(k);
        }
        progress(&format!("fetching guest kernel {package} with apt-get download"));
        let tmp = home.tmp().join(format!("kernel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let result = Self::fetch(home, &package, &tmp);
        let _ = std::fs::remove_dir_all(&tmp);
        let kernel = result?;
        std::fs::create_dir_all(home.kernels()).map_err(ImageError::io("create", home.kernels()))?;
        let json = serde_json::to_vec_pretty(&kernel).expect("kernel record serializes");
        write_atomic(&record, &json)?;
        progress(&format!("guest kernel {} stored ({})", kernel.release, kernel.vmlinuz.short()));
        Ok(kernel)
    }

    fn load(record: &Path, home: &Home) -> Option<Kernel> {
        let k: Kernel = serde_json::from_slice(&std::fs::read(record).ok()?).ok()?;
        let store = Store::new(home.store());
        (store.contains(&k.vmlinuz) && k.modules.iter().all(|(_, d)| store.contains(d))).then_some(k)
    }

    fn newest_cached(home: &Home) -> Option<Kernel> {
        let mut ks: Vec<Kernel> = std::fs::read_dir(home.kernels())
            .ok()?
            .filter_map(|e| Self::load(&e.ok()?.path(), home))
            .collect();
        ks.sort_by(|a, b| a.package.cmp(&b.package));
        ks.pop()
    }

    fn fetch(home: &Home, package: &str, tmp: &Path) -> Result<Kernel> {
        let version = deb::candidate_version(package).unwrap_or_default();
        let root = deb::fetch_and_unpack(package, tmp)?;
        let boot = root.join("boot");
        let find = |prefix: &str| -> Result<PathBuf> {
            std::fs::read_dir(&boot)
                .map_err(ImageError::io("list", &boot))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
                .ok_or_else(|| ImageError::Tool { tool: "dpkg -x".into(), detail: format!("{package} has no boot/{prefix}*") })
        };
        let vmlinuz_path = find("vmlinuz-")?;
        let release = vmlinuz_path.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_owned();
        let config = std::fs::read_to_string(find("config-")?).map_err(ImageError::io("read kernel config", &boot))?;
        let hz = parse_hz(&config).unwrap_or(250);
        let moddir = root.join("lib/modules").join(&release);
        let dep = modules_dep(&moddir)?;
        let order = module_order(&dep, WANTED_MODULES)?;
        let store = Store::new(home.store());
        let vmlinuz = store.put_file(&vmlinuz_path)?;
        let mut modules = Vec::new();
        for rel in order {
            let path = moddir.join(&rel);
            let name = Path::new(&rel).file_name().unwrap().to_string_lossy().into_owned();
            modules.push((name, store.put_file(&path)?));
        }
        Ok(Kernel { package: package.to_owned(), version, release, vmlinuz, hz, modules })
    }

    /// The kernel command line for a guest on this host.
    pub fn cmdline(&self, tsc_khz: Option<u64>, extra: &str) -> String {
        let mut s = String::from("console=ttyS0 reboot=t panic=-1 quiet loglevel=4 8250.nr_uarts=1 random.trust_cpu=on");
        if let Some(khz) = tsc_khz {
            let lpj = khz * 1000 / u64::from(self.hz.max(1));
            s.push_str(&format!(" lpj={lpj} tsc_early_khz={khz}"));
        }
        if !extra.is_empty() {
            s.push(' ');
            s.push_str(extra);
        }
        s
    }
}

/// The package the meta-package names, remembered until apt's lists change (asking apt
/// takes about a second, too slow for every sandbox).
fn resolve_current(home: &Home) -> Result<String> {
    let lists_mtime = std::fs::metadata("/var/lib/apt/lists")
        .and_then(|m| m.modified())
        .map(|t| format!("{t:?}"))
        .unwrap_or_default();
    let memo = home.kernels().join("current");
    if let Ok(text) = std::fs::read_to_string(&memo) {
        if let Some((stamp, package)) = text.trim().split_once('\n') {
            if stamp == lists_mtime && package.starts_with("linux-image-") {
                return Ok(package.to_owned());
            }
        }
    }
    let package = deb::resolve_dependency(META_PACKAGE, "linux-image-")?;
    if std::fs::create_dir_all(home.kernels()).is_ok() {
        let _ = write_atomic(&memo, format!("{lists_mtime}\n{package}\n").as_bytes());
    }
    Ok(package)
}

fn parse_hz(config: &str) -> Option<u32> {
    config.lines().find_map(|l| l.strip_prefix("CONFIG_HZ=")?.trim().parse().ok())
}

/// Resolves `wanted` module names against `modules.dep`, returning relative paths in an
/// order where every module comes after its dependencies.
pub fn module_order(modules_dep: &str, wanted: &[&str]) -> Result<Vec<String>> {
    use std::collections::HashMap;
    let mut deps: HashMap<String, Vec<String>> = HashMap::new();
    let mut by_name: HashMap<String, String> = HashMap::new();
    for line in modules_dep.lines() {
        let Some((module, rest)) = line.split_once(':') else { continue };
        let name = module_name(module);
        by_name.insert(name, module.to_owned());
        deps.insert(module.to_owned(), rest.split_whitespace().map(str::to_owned).collect());
    }
    fn visit(m: &str, deps: &HashMap<String, Vec<String>>, out: &mut Vec<String>, depth: usize) {
        if out.iter().any(|o| o == m) || depth > 32 {
            return;
        }
        for d in deps.get(m).into_iter().flatten() {
            visit(d, deps, out, depth + 1);
        }
        out.push(m.to_owned());
    }
    let mut out = Vec::new();
    for w in wanted {
        let path = by_name.get(*w).ok_or_else(|| ImageError::Tool {
            tool: "kernel modules".into(),
            detail: format!("module {w} not found in this kernel (built in? then drop it from the list)"),
        })?;
        visit(path, &deps, &mut out, 0);
    }
    Ok(out)
}

/// Builds the text of a `modules.dep` (which the package does not ship: `depmod` makes it at
/// install time) from the `depends=` field of each module's `.modinfo` section.
fn modules_dep(moddir: &Path) -> Result<String> {
    let mut files = Vec::new();
    let mut stack = vec![moddir.join("kernel")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(ImageError::io("list", &dir))?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ko") {
                files.push(p);
            }
        }
    }
    let rel = |p: &Path| p.strip_prefix(moddir).unwrap_or(p).to_string_lossy().into_owned();
    let by_name: std::collections::HashMap<String, String> = files.iter().map(|p| (module_name(&rel(p)), rel(p))).collect();
    // Read only the wanted modules and, transitively, what they depend on.
    let mut out = String::new();
    let mut queue: Vec<String> = WANTED_MODULES.iter().filter_map(|w| by_name.get(*w).cloned()).collect();
    let mut seen = std::collections::HashSet::new();
    while let Some(r) = queue.pop() {
        if !seen.insert(r.clone()) {
            continue;
        }
        let path = moddir.join(&r);
        let bytes = std::fs::read(&path).map_err(ImageError::io("read module", &path))?;
        let deps = modinfo(&bytes, "depends").unwrap_or_default();
        let deps: Vec<String> = deps.split(',').filter(|d| !d.is_empty()).filter_map(|d| by_name.get(&d.replace('-', "_")).cloned()).collect();
        out.push_str(&format!("{r}: {}\n", deps.join(" ")));
        queue.extend(deps);
    }
    // Modules not read are listed so that a missing wanted module is reported by name.
    for (_, r) in by_name.iter().filter(|(_, r)| !seen.contains(*r)) {
        out.push_str(&format!("{r}:\n"));
    }
    Ok(out)
}

/// A field of an ELF module's `.modinfo` section (NUL-separated `key=value` strings).
pub fn modinfo(elf: &[u8], key: &str) -> Option<String> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let u64_at = |o: usize| elf.get(o..o + 8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(|a| u64::from_le_bytes(a) as usize);
    if elf.get(..4)? != b"\x7fELF" {
        return None;
    }
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let section = |i: usize| -> Option<(usize, usize, usize)> {
        let h = shoff + i * shentsize;
        Some((u32_at(h)?, u64_at(h + 0x18)?, u64_at(h + 0x20)?))
    };
    let (_, stroff, strsize) = section(shstrndx)?;
    let names = elf.get(stroff..stroff + strsize)?;
    for i in 0..shnum {
        let (name, off, size) = section(i)?;
        let n = names.get(name..)?.split(|b| *b == 0).next()?;
        if n == b".modinfo" {
            let data = elf.get(off..off + size)?;
            let prefix = format!("{key}=");
            return data
                .split(|b| *b == 0)
                .find_map(|f| f.strip_prefix(prefix.as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned()));
        }
    }
    None
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split('.').next().unwrap_or(file).replace('-', "_")
}

/// The host's TSC frequency in kHz, from which `lpj=` and `tsc_early_khz=` are derived so the
/// guest skips delay-loop calibration (which hangs now and then under TCG). `KILN_TSC_KHZ`
/// overrides; otherwise sysfs, then `/proc/cpuinfo` when the TSC is constant.
pub fn host_tsc_khz() -> Option<u64> {
    if let Some(v) = std::env::var("KILN_TSC_KHZ").ok().and_then(|v| v.parse().ok()) {
        return Some(v);
    }
    if let Some(v) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz").ok().and_then(|s| s.trim().parse().ok()) {
        return Some(v);
    }
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    tsc_from_cpuinfo(&info)
}

fn tsc_from_cpuinfo(info: &str) -> Option<u64> {
    let first = info.split("\n\n").next()?;
    let flags = first.lines().find(|l| l.starts_with("flags"))?;
    if !flags.split_whitespace().any(|f| f == "constant_tsc") {
        return None;
    }
    let mhz: f64 = first.lines().find(|l| l.starts_with("cpu MHz"))?.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_dependencies_first() {
        let dep = "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n";
        let order = module_order(dep, &["virtio_blk"]).unwrap();
        assert_eq!(order, ["kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko", "kernel/drivers/block/virtio_blk.ko"]);
        assert!(module_order(dep, &["nope"]).is_err());
    }

    #[test]
    fn tsc_parsing() {
        let info = "processor\t: 0\ncpu MHz\t\t: 2445.430\nflags\t\t: fpu tsc constant_tsc\n\nprocessor : 1\n";
        assert_eq!(tsc_from_cpuinfo(info), Some(2_445_430));
        assert_eq!(tsc_from_cpuinfo("cpu MHz : 1000\nflags : fpu\n"), None);
        assert_eq!(parse_hz("CONFIG_X=1\nCONFIG_HZ=250\n"), Some(250));
    }

    #[test]
    fn cmdline_has_lpj() {
        let k = Kernel { package: "p".into(), version: "v".into(), release: "r".into(), vmlinuz: Digest::of_bytes(b""), hz: 250, modules: vec![] };
        let c = k.cmdline(Some(2_000_000), "kiln.root=/dev/vda");
        assert!(c.contains("lpj=8000000 tsc_early_khz=2000000"), "{c}");
        assert!(c.ends_with("kiln.root=/dev/vda"));
    }
}
