//! Init (PID 1 only): kernel filesystems, console, clock, modules, the switch to the root disk,
//! runtime mounts, `/dev` links, loopback and hostname. Every step logs its failure and the
//! boot carries on: a half-working guest that answers the host beats a kernel panic.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::cmdline;
use crate::port::POLL_INTERVAL;
use crate::{identity, sys};

/// How long to wait for the root device node to appear.
const ROOT_WAIT: Duration = Duration::from_secs(10);
const MODULES_DIR: &str = "/kiln/modules";
const MODULES_ORDER: &str = "/kiln/modules.order";
const NEWROOT: &str = "/newroot";

/// A filesystem to mount: source, target, type, flags, data.
type Mount = (&'static str, &'static str, &'static str, libc::c_ulong, Option<&'static str>);

const KERNEL_FS: [Mount; 3] = [
    ("proc", "/proc", "proc", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, None),
    ("sysfs", "/sys", "sysfs", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, None),
    ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, Some("mode=0755")),
];

const RUNTIME_FS: [Mount; 4] = [
    ("tmpfs", "/tmp", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, Some("mode=1777")),
    ("tmpfs", "/run", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, Some("mode=0755")),
    ("tmpfs", "/dev/shm", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, Some("mode=1777")),
    ("devpts", "/dev/pts", "devpts", libc::MS_NOSUID | libc::MS_NOEXEC, Some("mode=0620,ptmxmode=0666")),
];

/// cgroup v2, preferably with `favordynmods`: every exec moves its command into a cgroup of
/// its own, and without that option each move waits for an RCU grace period (about 8 ms per
/// exec measured under TCG). Kernels before 6.0 do not know the option.
fn mount_cgroup2() {
    let target = Path::new("/sys/fs/cgroup");
    if is_mount_point(target) {
        return;
    }
    mkdir_p(target);
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if sys::mount("cgroup2", target, Some("cgroup2"), flags, Some("favordynmods")).is_ok() {
        return;
    }
    if let Err(e) = sys::mount("cgroup2", target, Some("cgroup2"), flags, None) {
        log!("mount cgroup2 on {}: {e}", target.display());
    }
}

/// Symlinks created in `/dev` when missing: (target, link).
const DEV_LINKS: [(&str, &str); 5] = [
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
];

/// Boots the guest. Returns once it is ready to serve.
pub fn boot() {
    let start = Instant::now();
    mount_all(&KERNEL_FS);
    ensure_console();
    let text = fs::read_to_string("/proc/cmdline").unwrap_or_else(|e| {
        log!("read /proc/cmdline: {e}");
        String::new()
    });
    let cfg = cmdline::parse(&text);
    if let Some(secs) = cfg.time {
        if let Err(e) = identity::set_clock_ns(u128::from(secs) * 1_000_000_000) {
            log!("set clock from kiln.time: {e}");
        }
    }
    load_modules(&text);
    match &cfg.root {
        Some(root) => {
            if let Err(e) = switch_root(root) {
                log!("switch to root {root}: {e}; staying in the initramfs");
                let _ = std::env::set_current_dir("/");
            }
        }
        None => log!("no kiln.root: staying in the initramfs"),
    }
    // After the switch (or a failed one) make sure the kernel filesystems are there.
    mount_all(&KERNEL_FS);
    mount_all(&RUNTIME_FS);
    mount_cgroup2();
    crate::cgroup::Cgroup::prepare();
    dev_links();
    if let Err(e) = loopback_up() {
        log!("bring up lo: {e}");
    }
    if let Some(name) = &cfg.hostname {
        if let Err(e) = sys::sethostname(name) {
            log!("sethostname {name}: {e}");
        }
    }
    log!("booted in {:?}", start.elapsed());
}

/// Whether `path` is a mount point (on another device than its parent).
fn is_mount_point(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (fs::metadata(path), fs::metadata(parent)) {
        (Ok(p), Ok(q)) => p.dev() != q.dev(),
        _ => false,
    }
}

fn mkdir_p(path: &Path) {
    if let Err(e) = fs::create_dir_all(path) {
        log!("mkdir {}: {e}", path.display());
    }
}

/// Mounts each filesystem whose target is not a mount point yet.
fn mount_all(mounts: &[Mount]) {
    for &(src, target, fstype, flags, data) in mounts {
        let target = Path::new(target);
        if is_mount_point(target) {
            continue;
        }
        mkdir_p(target);
        if let Err(e) = sys::mount(src, target, Some(fstype), flags, data) {
            log!("mount {fstype} on {}: {e}", target.display());
        }
    }
}

/// Opens `/dev/console` as stdin, stdout and stderr if the kernel could not (an initramfs
/// without a `/dev/console` node), so logs reach the serial console.
fn ensure_console() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only queries the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        // SAFETY: the path is a NUL-terminated literal.
        let console = unsafe { libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
        if console < 0 {
            return;
        }
        if console != fd {
            // SAFETY: both are descriptors of this process; `console` was just opened by us.
            unsafe {
                libc::dup2(console, fd);
                libc::close(console);
            }
        }
    }
}

fn load_modules(cmdline: &str) {
    let order = match fs::read_to_string(MODULES_ORDER) {
        Ok(text) => text,
        Err(e) => return log!("read {MODULES_ORDER}: {e}; loading no modules"),
    };
    for name in cmdline::module_list(&order) {
        let params = cmdline::module_params(cmdline, &name);
        match load_module(&Path::new(MODULES_DIR).join(&name), &params) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => log!("load module {name}: {e}"),
        }
    }
}

fn load_module(path: &Path, params: &str) -> io::Result<()> {
    let file = File::open(path)?;
    let params = CString::new(params).unwrap_or_default();
    // SAFETY: finit_module reads the module from an open descriptor; the parameter string is
    // NUL-terminated and outlives the call, and the flags are zero.
    let ret = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Mounts the root device on /newroot and makes it `/`, moving /dev, /proc and /sys along.
fn switch_root(root: &str) -> io::Result<()> {
    let newroot = Path::new(NEWROOT);
    mkdir_p(newroot);
    mount_root(root, newroot)?;
    for dir in ["/dev", "/proc", "/sys"] {
        let target = newroot.join(&dir[1..]);
        mkdir_p(&target);
        if let Err(e) = sys::mount(dir, &target, None, libc::MS_MOVE, None) {
            log!("move {dir} to {}: {e}", target.display());
        }
    }
    std::env::set_current_dir(newroot)?;
    sys::mount(".", Path::new("/"), None, libc::MS_MOVE, None)?;
    sys::chroot(Path::new("."))?;
    std::env::set_current_dir("/")
}

/// Waits for the device node (it can appear after its driver's module is loaded), then mounts
/// it as ext4.
fn mount_root(dev: &str, target: &Path) -> io::Result<()> {
    let deadline = Instant::now() + ROOT_WAIT;
    loop {
        let result = if Path::new(dev).exists() {
            sys::mount(dev, target, Some("ext4"), 0, Some("noinit_itable"))
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, format!("{dev} did not appear within {ROOT_WAIT:?}")))
        };
        match result {
            Ok(()) => return Ok(()),
            // A missing or not yet usable device is worth waiting for; other errors are final.
            Err(e) if Instant::now() < deadline && matches!(e.raw_os_error(), None | Some(libc::ENOENT | libc::ENXIO)) => {
                std::thread::sleep(POLL_INTERVAL);
            }
            Err(e) => return Err(e),
        }
    }
}

fn dev_links() {
    for (target, link) in DEV_LINKS {
        if fs::symlink_metadata(link).is_err() {
            if let Err(e) = std::os::unix::fs::symlink(target, link) {
                log!("symlink {link}: {e}");
            }
        }
    }
}

/// Sets IFF_UP (and IFF_RUNNING) on the loopback interface.
fn loopback_up() -> io::Result<()> {
    // SAFETY: plain system call with integer arguments.
    let fd = sys::check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket succeeded, so `fd` is an open descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `ifr` is a valid ifreq naming the interface, for the kernel to fill.
    sys::check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) })?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: `ifr` is a valid ifreq with the name and the new flags.
    sys::check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) }).map(drop)
}
