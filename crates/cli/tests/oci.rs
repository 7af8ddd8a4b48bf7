//! Templates made from OCI images: a registry on loopback (Debian's `docker-registry`), images
//! made by the test with `umoci` and pushed with `skopeo`, pulled by kiln's registry client,
//! and booted as real VMs with `kiln run --template FILE`.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Output;

use kiln_image::oci::remote::{self, PullError, PullLimits};
use kiln_image::oci::{self, Reference};
use kiln_image::Store;
use kiln_testkit::oci::{busybox_userland, ImageLayout, LocalRegistry};
use kiln_testkit::TestHome;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn kiln(th: &TestHome, args: &[&str]) -> Output {
    kiln_testkit::kiln!(th).args(args).output().expect("run kiln")
}

/// Two layers over a busybox userland: the second replaces a file, removes one (a whiteout),
/// adds a hard link; owners, modes and a symlink are set in the first.
fn sample_image(greeting: &str) -> ImageLayout {
    let img = ImageLayout::new("1");
    img.layer(|root| {
        busybox_userland(root);
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/greeting"), "one\n").unwrap();
        std::fs::write(root.join("etc/gone"), "removed by the next layer\n").unwrap();
        std::fs::write(root.join("etc/owned"), "x").unwrap();
        std::os::unix::fs::chown(root.join("etc/owned"), Some(1234), Some(5678)).unwrap();
        std::fs::set_permissions(root.join("etc/owned"), std::fs::Permissions::from_mode(0o640)).unwrap();
        symlink("greeting", root.join("etc/link")).unwrap();
    });
    img.layer(|root| {
        std::fs::write(root.join("etc/greeting"), format!("{greeting}\n")).unwrap();
        std::fs::remove_file(root.join("etc/gone")).unwrap();
        std::fs::hard_link(root.join("etc/greeting"), root.join("etc/hardlink")).unwrap();
    });
    img.env(&["PATH=/opt/tools/bin:/usr/bin:/bin", "IMAGE_VAR=from-the-image"]);
    img
}

/// One ustar entry: a regular file named exactly `name` (no checks: for hostile layers).
fn tar_entry(name: &str, body: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let field = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0width$o}\0", width = len - 1);
        h[at..at + len].copy_from_slice(s.as_bytes());
    };
    field(&mut h, 100, 8, 0o644);
    field(&mut h, 108, 8, 0);
    field(&mut h, 116, 8, 0);
    field(&mut h, 124, 12, body.len() as u64);
    field(&mut h, 136, 12, 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn tar_end(mut entries: Vec<u8>) -> Vec<u8> {
    entries.extend_from_slice(&[0u8; 1024]);
    entries
}

#[test]
#[ignore = "needs docker-registry, umoci and skopeo (make test installs them)"]
fn pull_resolves_checks_digests_and_applies_layers() {
    let reg = LocalRegistry::start();
    let reference = sample_image("two").push(&reg, "test/img:1");
    let r = Reference::parse(&reference).unwrap();
    let resolved = remote::resolve(&r, &PullLimits::default()).unwrap();
    assert_eq!(resolved.layers.len(), 2);

    let t = tempfile::tempdir().unwrap();
    let store = Store::new(t.path().join("store"));
    let lines = std::sync::Mutex::new(Vec::new());
    let pulled = remote::pull(&r, &store, &t.path().join("tmp"), &PullLimits::default(), &|l| lines.lock().unwrap().push(l.to_owned())).unwrap();
    assert_eq!(pulled.resolved.manifest_digest, resolved.manifest_digest);
    assert!(pulled.config.config.env.contains(&"IMAGE_VAR=from-the-image".to_owned()));
    let tree = t.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let layers: Vec<_> = pulled.layers.iter().map(|(p, c)| (std::fs::File::open(p).unwrap(), *c)).collect();
    oci::apply_layers(&tree, layers, &oci::Limits::default()).unwrap();
    assert_eq!(std::fs::read_to_string(tree.join("etc/greeting")).unwrap(), "two\n");
    assert!(!tree.join("etc/gone").exists(), "the whiteout removed it");
    assert_eq!(std::fs::read_link(tree.join("etc/link")).unwrap(), Path::new("greeting"));
    let (a, b) = (std::fs::metadata(tree.join("etc/greeting")).unwrap(), std::fs::metadata(tree.join("etc/hardlink")).unwrap());
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&a), std::os::unix::fs::MetadataExt::ino(&b), "a hard link");
    let owned = std::fs::metadata(tree.join("etc/owned")).unwrap();
    assert_eq!((std::os::unix::fs::MetadataExt::uid(&owned), std::os::unix::fs::MetadataExt::gid(&owned), owned.permissions().mode() & 0o7777), (1234, 5678, 0o640));

    // Pulled again: every blob is in the store, nothing is fetched.
    lines.lock().unwrap().clear();
    remote::pull(&r, &store, &t.path().join("tmp"), &PullLimits::default(), &|l| lines.lock().unwrap().push(l.to_owned())).unwrap();
    assert_eq!(lines.lock().unwrap().iter().filter(|l| l.contains("cached")).count(), 2, "{:?}", lines.lock().unwrap());

    // A pinned digest that the registry's manifest does not have.
    let wrong = Reference::parse(&format!("{}/test/img@sha256:{}", reg.addr(), "0".repeat(64))).unwrap();
    let e = remote::resolve(&wrong, &PullLimits::default()).unwrap_err();
    assert!(matches!(e, PullError::Status { status: 404, .. } | PullError::Mismatch { .. }), "{e}");
    // An unknown tag says so.
    let e = remote::resolve(&Reference::parse(&format!("{}/test/img:nope", reg.addr())).unwrap(), &PullLimits::default()).unwrap_err().to_string();
    assert!(e.contains("404") && e.contains("no such image"), "{e}");
    // Caps: a manifest larger than allowed is not read.
    let e = remote::resolve(&r, &PullLimits { max_manifest_bytes: 100, ..PullLimits::default() }).unwrap_err();
    assert!(matches!(e, PullError::TooBig { .. }), "{e}");

    // A layer whose bytes the registry changed: refused by digest, nothing kept.
    let top = &resolved.layers[1];
    let blob = reg.blob_path(top.digest.hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let fresh = Store::new(t.path().join("store2"));
    let e = remote::pull(&r, &fresh, &t.path().join("tmp"), &PullLimits::default(), &|_| {}).unwrap_err().to_string();
    assert!(e.contains("digest"), "{e}");
    assert!(!fresh.contains(&top.digest));
}

#[test]
#[ignore = "boots VMs; needs docker-registry, umoci and skopeo (make test installs them)"]
fn an_oci_image_becomes_a_template_that_kiln_run_boots() {
    let th = TestHome::new();
    let reg = LocalRegistry::start();
    let first = sample_image("two");
    let reference = first.push(&reg, "test/app:1");
    let dir = tempfile::tempdir().unwrap();
    // A name of its own per run: the template's records live in the shared home.
    let file = dir.path().join(format!("oci-app-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        format!("description = \"from an OCI image\"\n[vm]\ncpus = 1\nmemory_mib = 256\n[rootfs]\nkind = \"oci\"\nimage = \"{reference}\"\n\n[[files]]\npath = \"/etc/motd\"\ncontent = \"added by kiln\\n\"\n"),
    )
    .unwrap();
    let file = file.display().to_string();

    let out = kiln(&th, &["template", "build", &file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("pulling"), "{}", text(&out.stderr));

    let script = "cat /etc/greeting /etc/motd; echo \"$IMAGE_VAR\"; echo \"$PATH\"; test -e /etc/gone || echo gone; stat -c '%u:%g %a' /etc/owned; readlink /etc/link; cat /etc/hostname 2>/dev/null; true";
    let out = kiln(&th, &["run", "--template", &file, "--timeout", "120", "--", "sh", "-c", script]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(&lines[..7], ["two", "added by kiln", "from-the-image", "/opt/tools/bin:/usr/bin:/bin", "gone", "1234:5678 640", "greeting"], "{stdout}");

    // The same image again: not pulled, not built.
    let out = kiln(&th, &["template", "build", &file]);
    assert!(out.status.success() && !text(&out.stderr).contains("pulling"), "{}", text(&out.stderr));

    // The tag moves: the next run builds the new image.
    sample_image("three").push(&reg, "test/app:1");
    let out = kiln(&th, &["run", "--template", &file, "--timeout", "120", "--", "cat", "/etc/greeting"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "three\n");
    assert!(text(&out.stderr).contains("pulling"), "{}", text(&out.stderr));

    // And moves back: that digest was built before and is not built again.
    first.push(&reg, "test/app:1");
    let out = kiln(&th, &["run", "--template", &file, "--timeout", "120", "--", "cat", "/etc/greeting"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "two\n");
    assert!(text(&out.stderr).contains("built before"), "{}", text(&out.stderr));
    th.assert_clean();
}

#[test]
#[ignore = "needs docker-registry, umoci and skopeo (make test installs them)"]
fn hostile_images_are_refused_with_a_clear_error() {
    let th = TestHome::new();
    let reg = LocalRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_owned();
    let cases: [(&str, Vec<u8>, &str); 2] = [
        ("climbs", tar_end(tar_entry("../../escaped-by-a-layer", b"x")), "climbs out"),
        ("beneath", tar_end(tar_entry("evil/planted", b"x")), "beneath a symlink"),
    ];
    for (name, layer, says) in cases {
        let img = ImageLayout::new("1");
        img.layer(|root| {
            busybox_userland(root);
            symlink(&target, root.join("evil")).unwrap();
        });
        img.raw_layer(&layer);
        let reference = img.push(&reg, &format!("test/{name}:1"));
        let file = dir.path().join(format!("oci-{name}-{}.toml", std::process::id()));
        std::fs::write(&file, format!("[rootfs]\nkind = \"oci\"\nimage = \"{reference}\"\nsize_mib = 64\n")).unwrap();
        let out = kiln(&th, &["template", "build", &file.display().to_string()]);
        assert!(!out.status.success(), "a hostile image was built");
        let err = text(&out.stderr);
        assert!(err.contains(says) && err.contains(&reference), "{err}");
    }
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "nothing was written through the symlink");
    assert!(!Path::new("/escaped-by-a-layer").exists() && !th.home.root().join("escaped-by-a-layer").exists());

    // A reference that names no registry, and a registry that is not there.
    let file = dir.path().join("oci-noreg.toml");
    std::fs::write(&file, "[rootfs]\nkind = \"oci\"\nimage = \"node:20\"\n").unwrap();
    let out = kiln(&th, &["template", "build", &file.display().to_string()]);
    assert!(!out.status.success() && text(&out.stderr).contains("HOST[:PORT]/NAME"), "{}", text(&out.stderr));
    let file = dir.path().join("oci-down.toml");
    std::fs::write(&file, "[rootfs]\nkind = \"oci\"\nimage = \"127.0.0.1:9/test/img:1\"\n").unwrap();
    let out = kiln(&th, &["template", "build", &file.display().to_string()]);
    assert!(!out.status.success() && text(&out.stderr).contains("cannot reach"), "{}", text(&out.stderr));
}

#[test]
#[ignore = "boots VMs; needs docker-registry, umoci and skopeo (make test installs them)"]
fn the_daemon_boots_the_images_its_patterns_allow() {
    let th = TestHome::for_daemon();
    let reg = LocalRegistry::start();
    let allowed = sample_image("two").push(&reg, "allowed/app:1");
    let other = sample_image("two").push(&reg, "other/app:1");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let d = kiln_testkit::Daemon::start(kiln_testkit::kiln!(&th), &th, &["--listen", &addr, "--images", "127.0.0.1:*/allowed/*"]);
    assert!(kiln_testkit::wait_until(std::time::Duration::from_secs(10), || std::net::TcpStream::connect(&addr).is_ok()), "{}", d.stderr());
    let o = kiln(&th, &["token", "create", "dev"]);
    let token = text(&o.stdout).trim().to_owned();
    let over_tcp = |args: &[&str]| kiln_testkit::kiln!(&th).args(args).env("KILN_HOST", format!("http://{addr}")).env("KILN_TOKEN", &token).output().unwrap();

    let o = over_tcp(&["sandbox", "create", "--image", &other, "--json"]);
    assert!(!o.status.success(), "an image no pattern allows was booted");
    assert!(text(&o.stderr).contains("--images"), "{}", text(&o.stderr));

    let o = over_tcp(&["sandbox", "create", "--image", &allowed, "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = info["id"].as_str().unwrap().to_owned();
    let o = over_tcp(&["sandbox", "exec", &id, "--", "sh", "-c", "cat /etc/greeting; echo $IMAGE_VAR"]);
    assert_eq!(text(&o.stdout), "two\nfrom-the-image\n", "{}", text(&o.stderr));
    assert!(over_tcp(&["sandbox", "kill", &id]).status.success());
    drop(d);
    th.assert_clean();
}

#[test]
#[ignore = "boots VMs; needs docker-registry, umoci and skopeo (make test installs them)"]
fn tls_ca_files_reach_the_guests_trust_store() {
    let th = TestHome::new();
    let reg = LocalRegistry::start();
    let img = ImageLayout::new("1");
    img.layer(|root| {
        busybox_userland(root);
        std::fs::create_dir_all(root.join("etc/ssl/certs")).unwrap();
        std::fs::write(root.join("etc/ssl/certs/ca-certificates.crt"), "# the image's own bundle\n").unwrap();
    });
    let reference = img.push(&reg, "test/tls:1");
    let dir = tempfile::tempdir().unwrap();
    let cert = kiln_testkit::oci::host_certificate();
    let cert = cert.as_str();
    let ca = dir.path().join("corp-root.pem");
    std::fs::write(&ca, cert).unwrap();
    let file = dir.path().join(format!("oci-tls-{}.toml", std::process::id()));
    std::fs::write(&file, format!("[rootfs]\nkind = \"oci\"\nimage = \"{reference}\"\n\n[tls]\nca_files = [\"{}\"]\n", ca.display())).unwrap();
    let script = "cat /etc/ssl/certs/ca-certificates.crt; echo \"node=$NODE_EXTRA_CA_CERTS ssl=$SSL_CERT_FILE\"; ls /usr/local/share/ca-certificates";
    let out = kiln(&th, &["run", "--template", &file.display().to_string(), "--timeout", "120", "--", "sh", "-c", script]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with(&format!("# the image's own bundle\n{cert}")), "{stdout}");
    assert!(stdout.contains("node=/etc/ssl/certs/ca-certificates.crt ssl=/etc/ssl/certs/ca-certificates.crt"), "{stdout}");
    assert!(stdout.contains("kiln-0-corp-root.crt"), "{stdout}");
    th.assert_clean();
}

#[test]
#[ignore = "boots VMs; needs docker-registry, umoci, skopeo and mmdebstrap (make test installs them)"]
fn kiln_ci_run_builds_a_repository_in_an_oci_image() {
    let th = TestHome::new();
    let reg = LocalRegistry::start();
    // A Debian userland with git (which the source step uses) as the image's only layer.
    let img = ImageLayout::new("1");
    img.raw_layer(&std::fs::read(kiln_testkit::oci::debian_userland_tar(&["git", "ca-certificates"])).unwrap());
    img.env(&["PATH=/usr/local/bin:/usr/bin:/bin", "FROM_IMAGE=yes"]);
    let reference = img.push(&reg, "test/debian-git:1");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("oci-debian-{}.toml", std::process::id()));
    std::fs::write(&file, format!("[vm]\ncpus = 1\nmemory_mib = 512\n[rootfs]\nkind = \"oci\"\nimage = \"{reference}\"\n")).unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("build.sh"), "echo \"image=$FROM_IMAGE\"; . /etc/os-release; echo \"os=$ID\"; mkdir -p dist; echo built > dist/out.txt\n").unwrap();
    let sh = |cmd: &str| assert!(std::process::Command::new("sh").arg("-c").arg(cmd).current_dir(&repo).status().unwrap().success(), "{cmd}");
    sh("git init -q && git add -A && git -c user.email=a@b -c user.name=a commit -qm init");
    let out = dir.path().join("out");
    let o = kiln(&th, &["ci", "run", "--repo", repo.to_str().unwrap(), "--ref", "HEAD", "--template", file.to_str().unwrap(), "--build", "sh build.sh", "--artifact", "dist/*", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    let log = std::fs::read_to_string(out.join("build/build.log")).unwrap();
    assert!(log.contains("image=yes") && log.contains("os=debian"), "{log}");
    assert_eq!(std::fs::read_to_string(out.join("build/artifacts/dist/out.txt")).unwrap(), "built\n");
    th.assert_clean();
}
