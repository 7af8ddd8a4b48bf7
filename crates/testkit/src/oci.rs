//! OCI images for tests: a registry on loopback (Debian's `docker-registry`, storing in a
//! temporary folder), and images made with `umoci` layer by layer and pushed with `skopeo`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// A `docker-registry` serving on `127.0.0.1:port`, ended (by its pid) on drop.
pub struct LocalRegistry {
    /// Its port.
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl LocalRegistry {
    /// Starts a registry with empty storage and waits until it answers `GET /v2/`.
    pub fn start() -> LocalRegistry {
        let dir = tempfile::Builder::new().prefix("kreg-").tempdir().expect("registry folder");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let cfg = dir.path().join("config.yml");
        let storage = dir.path().join("storage");
        std::fs::write(
            &cfg,
            format!("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n", storage.display()),
        )
        .expect("registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry (apt-get install docker-registry; `make test` installs it)");
        let reg = LocalRegistry { port, child, dir };
        let up = crate::wait_until(Duration::from_secs(30), || http_status(port, "/v2/") == Some(200));
        assert!(up, "docker-registry did not answer on 127.0.0.1:{port}: {}", std::fs::read_to_string(reg.dir.path().join("registry.log")).unwrap_or_default());
        reg
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps the blob of this sha256 hex digest (to damage it in tests).
    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.dir.path().join(format!("storage/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of a plain `GET path` on `127.0.0.1:port`.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// An OCI image layout being made, one layer at a time.
pub struct ImageLayout {
    dir: tempfile::TempDir,
    tag: String,
}

impl ImageLayout {
    /// An image with no layers yet, tagged `tag` in its layout.
    pub fn new(tag: &str) -> ImageLayout {
        let dir = tempfile::Builder::new().prefix("koci-").tempdir().expect("layout folder");
        let l = ImageLayout { dir, tag: tag.to_owned() };
        run(Command::new("umoci").args(["init", "--layout"]).arg(l.layout()));
        run(Command::new("umoci").args(["new", "--image"]).arg(l.image()));
        l
    }

    fn layout(&self) -> PathBuf {
        self.dir.path().join("layout")
    }

    fn image(&self) -> String {
        format!("{}:{}", self.layout().display(), self.tag)
    }

    /// Adds a layer: `change` edits the image's tree as the layers so far left it (what it
    /// removes becomes a whiteout).
    pub fn layer(&self, change: impl FnOnce(&Path)) -> &Self {
        let bundle = self.dir.path().join("bundle");
        let _ = std::fs::remove_dir_all(&bundle);
        run(Command::new("umoci").args(["unpack", "--image"]).arg(self.image()).arg(&bundle));
        change(&bundle.join("rootfs"));
        run(Command::new("umoci").args(["repack", "--image"]).arg(self.image()).arg(&bundle));
        std::fs::remove_dir_all(&bundle).expect("remove bundle");
        self
    }

    /// Adds an uncompressed tar stream verbatim as the next layer (for hostile layers).
    pub fn raw_layer(&self, tar: &[u8]) -> &Self {
        let file = self.dir.path().join("raw-layer.tar");
        std::fs::write(&file, tar).expect("write layer");
        run(Command::new("umoci").args(["raw", "add-layer", "--image"]).arg(self.image()).arg(&file));
        self
    }

    /// Sets the image config's environment.
    pub fn env(&self, vars: &[&str]) -> &Self {
        let mut c = Command::new("umoci");
        c.args(["config", "--image"]).arg(self.image());
        for v in vars {
            c.arg(format!("--config.env={v}"));
        }
        run(&mut c);
        self
    }

    /// Pushes the image to `registry` as `name:tag`; returns the reference.
    pub fn push(&self, registry: &LocalRegistry, name_tag: &str) -> String {
        let reference = format!("{}/{name_tag}", registry.addr());
        run(Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
            .arg(format!("oci:{}", self.image()))
            .arg(format!("docker://{reference}")));
        reference
    }
}

/// Puts Debian's static busybox into `root` as `/bin/busybox`, with `/bin/sh` and common
/// applets as symlinks to it: a userland for test images.
pub fn busybox_userland(root: &Path) {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    let bin = BIN.get_or_init(|| {
        // Fetched once into the shared test cache (outside the checkout).
        let dir = kiln_image::Home::from_env().root().join("test-cache");
        let bin = dir.join("busybox-static");
        if !bin.is_file() {
            let work = dir.join(format!("busybox-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&work);
            let root = kiln_image::deb::fetch_and_unpack("busybox-static", &work).expect("busybox-static");
            let part = dir.join(format!("busybox-static.part{}", std::process::id()));
            std::fs::copy(root.join("bin/busybox"), &part).expect("copy busybox");
            std::fs::rename(&part, &bin).expect("store busybox");
            let _ = std::fs::remove_dir_all(&work);
        }
        bin
    });
    std::fs::create_dir_all(root.join("bin")).expect("bin");
    std::fs::copy(bin, root.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "cat", "echo", "ls", "env", "id", "stat", "test", "true", "mkdir", "rm", "printf", "readlink", "grep", "wc", "head", "sleep", "uname", "wget", "ln"] {
        std::os::unix::fs::symlink("/bin/busybox", root.join("bin").join(applet)).expect("applet link");
    }
}

/// A Debian userland (the host's release, minbase, plus `packages`) as an uncompressed tar
/// made by mmdebstrap with the host's apt configuration, without device nodes (as image
/// builders leave them out; kiln refuses them): a realistic image layer. Cached
/// under the shared kiln home (`test-cache/`), outside the checkout, by release and packages.
pub fn debian_userland_tar(packages: &[&str]) -> PathBuf {
    let suite = kiln_image::rootfs::host_codename();
    let key = kiln_image::Digest::of_bytes(format!("{suite}|minbase|{}", packages.join(",")).as_bytes());
    let dir = kiln_image::Home::from_env().root().join("test-cache");
    std::fs::create_dir_all(&dir).expect("test cache");
    let tar = dir.join(format!("debian-{suite}-{}.tar", key.short()));
    if tar.is_file() {
        return tar;
    }
    let _lock = kiln_image::lock::FileLock::acquire(&dir.join("debian-userland.lock")).expect("lock");
    if tar.is_file() {
        return tar;
    }
    let part = tar.with_extension(format!("part{}", std::process::id()));
    let mut c = Command::new("mmdebstrap");
    c.args(["--variant=minbase", "--mode=auto", "--format=tar", "--skip=output/dev", "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*"]);
    if !packages.is_empty() {
        c.arg(format!("--include={}", packages.join(",")));
    }
    c.arg(&suite).arg(&part).args(kiln_image::rootfs::host_sources()).stdin(Stdio::null());
    run(&mut c);
    std::fs::rename(&part, &tar).expect("store the userland tar");
    tar
}

/// One PEM certificate, for tests of extra CAs: the first of the host's store (any will do).
pub fn host_certificate() -> String {
    let host = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").expect("the host's CA bundle (ca-certificates)");
    let (begin, end) = ("-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----\n");
    let start = host.find(begin).expect("a certificate");
    let stop = host[start..].find(end).expect("its end") + start + end.len();
    host[start..stop].to_owned()
}

fn run(c: &mut Command) {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e} (`make test` installs umoci and skopeo)"));
    assert!(out.status.success(), "{c:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
