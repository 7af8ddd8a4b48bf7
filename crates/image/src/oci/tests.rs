//! Layers built here with the tar crate's Builder (hostile names written into the header
//! bytes, where the Builder would refuse them), applied to a temporary tree.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use tar::{EntryType, Header};

use super::*;

/// A layer under construction.
struct Layer(tar::Builder<Vec<u8>>);

/// A header with `path` (and `link`) written into its bytes as they are, no check made.
fn header(path: &[u8], kind: EntryType, size: u64, mode: u32, link: &[u8]) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    let old = h.as_old_mut();
    old.name[..path.len()].copy_from_slice(path);
    old.linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    h
}

impl Layer {
    fn new() -> Self {
        Layer(tar::Builder::new(Vec::new()))
    }
    fn raw(mut self, h: Header, data: &[u8]) -> Self {
        self.0.append(&h, data).unwrap();
        self
    }
    fn file(self, path: &str, mode: u32, data: &[u8]) -> Self {
        self.raw(header(path.as_bytes(), EntryType::Regular, data.len() as u64, mode, b""), data)
    }
    fn file_owned(self, path: &str, mode: u32, uid: u64, gid: u64, mtime: u64, data: &[u8]) -> Self {
        let mut h = header(path.as_bytes(), EntryType::Regular, data.len() as u64, mode, b"");
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        h.set_cksum();
        self.raw(h, data)
    }
    fn dir(self, path: &str, mode: u32) -> Self {
        self.raw(header(path.as_bytes(), EntryType::Directory, 0, mode, b""), b"")
    }
    fn symlink(self, path: &str, target: &str) -> Self {
        self.raw(header(path.as_bytes(), EntryType::Symlink, 0, 0o777, target.as_bytes()), b"")
    }
    fn hard_link(self, path: &str, target: &str) -> Self {
        self.raw(header(path.as_bytes(), EntryType::Link, 0, 0o644, target.as_bytes()), b"")
    }
    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// A tree to unpack into, beside a sentinel folder with one file that must stay untouched.
struct Tree {
    _t: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"keep").unwrap();
        Tree { _t: t, root, outside }
    }
    fn apply(&self, layers: &[Vec<u8>]) -> Result<Usage, OciError> {
        apply_layers(&self.root, layers.iter().map(|l| (&l[..], Compression::None)), &Limits::default())
    }
    fn sentinel_intact(&self) {
        let names: Vec<_> = fs::read_dir(&self.outside).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["keep"], "something was written outside the tree");
        assert_eq!(fs::read(self.outside.join("keep")).unwrap(), b"keep");
        assert_eq!(fs::metadata(self.outside.join("keep")).unwrap().nlink(), 1);
    }
    fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.root.join(rel)).is_ok()
    }
}

#[test]
fn files_folders_links_modes_owners_and_times() {
    let tree = Tree::new();
    let layer = Layer::new()
        .dir("usr/", 0o755)
        .dir("usr/bin/", 0o755)
        .file_owned("usr/bin/sudo", 0o4755, 1000, 1001, 1_500_000_000, b"#!/bin/sh\n")
        .file("usr/bin/wall", 0o2755, b"w")
        .dir("tmp/", 0o1777)
        .symlink("bin", "usr/bin")
        .symlink("etc/abs", "/etc/passwd")
        .hard_link("usr/bin/sudo2", "usr/bin/sudo")
        .file("/etc/hostname", 0o644, b"kiln\n")
        .file("./etc/../etc/hosts", 0o600, b"h")
        .bytes();
    let usage = tree.apply(&[layer]).unwrap();
    assert_eq!(usage.entries, 10);
    let r = &tree.root;
    let sudo = fs::metadata(r.join("usr/bin/sudo")).unwrap();
    assert_eq!((sudo.mode() & 0o7777, sudo.uid(), sudo.gid(), sudo.mtime()), (0o4755, 1000, 1001, 1_500_000_000));
    assert_eq!(fs::read(r.join("usr/bin/sudo")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(fs::metadata(r.join("usr/bin/wall")).unwrap().mode() & 0o7777, 0o2755);
    let tmp = fs::metadata(r.join("tmp")).unwrap();
    assert!(tmp.is_dir());
    assert_eq!((tmp.mode() & 0o7777, tmp.mtime()), (0o1777, 1_600_000_000));
    assert_eq!(fs::metadata(r.join("usr/bin")).unwrap().mtime(), 1_600_000_000, "folder times are set after their entries");
    assert_eq!(fs::read_link(r.join("bin")).unwrap(), Path::new("usr/bin"));
    assert_eq!(fs::read_link(r.join("etc/abs")).unwrap(), Path::new("/etc/passwd"));
    assert_eq!(fs::symlink_metadata(r.join("bin")).unwrap().mtime(), 1_600_000_000);
    let sudo2 = fs::metadata(r.join("usr/bin/sudo2")).unwrap();
    assert_eq!((sudo2.ino(), sudo2.nlink()), (sudo.ino(), 2));
    assert_eq!(fs::read(r.join("etc/hostname")).unwrap(), b"kiln\n", "a leading / is dropped");
    assert_eq!(fs::metadata(r.join("etc/hosts")).unwrap().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(r.join("etc")).unwrap().mode() & 0o777, 0o755, "a missing parent is made 0755");
    tree.sentinel_intact();
}

#[test]
fn a_later_layer_replaces_entries() {
    let tree = Tree::new();
    let lower = Layer::new().file("a", 0o644, b"old").dir("d/", 0o700).file("d/x", 0o644, b"x").symlink("s", "a").bytes();
    let upper = Layer::new().dir("a/", 0o755).file("d", 0o644, b"now a file").file("s", 0o644, b"not a link").dir("a/", 0o750).bytes();
    tree.apply(&[lower, upper]).unwrap();
    let r = &tree.root;
    assert!(fs::metadata(r.join("a")).unwrap().is_dir());
    assert_eq!(fs::metadata(r.join("a")).unwrap().mode() & 0o777, 0o750);
    assert_eq!(fs::read(r.join("d")).unwrap(), b"now a file");
    assert!(!fs::symlink_metadata(r.join("s")).unwrap().file_type().is_symlink());
}

#[test]
fn whiteouts_remove_lower_entries() {
    let tree = Tree::new();
    let lower = Layer::new().file("etc/a", 0o644, b"a").file("etc/b", 0o644, b"b").dir("var/cache/", 0o755).file("var/cache/x/y", 0o644, b"y").bytes();
    let upper = Layer::new().file("etc/.wh.a", 0o644, b"").file("var/.wh.cache", 0o644, b"").file(".wh.missing", 0o644, b"").bytes();
    tree.apply(&[lower, upper]).unwrap();
    assert!(!tree.exists("etc/a") && tree.exists("etc/b"));
    assert!(!tree.exists("var/cache") && tree.exists("var"));
    assert!(!tree.exists("etc/.wh.a") && !tree.exists(".wh.missing"), "whiteouts are not written");
}

#[test]
fn a_whiteout_spares_its_own_layer() {
    let tree = Tree::new();
    let lower = Layer::new().file("f", 0o644, b"lower").file("d/old", 0o644, b"lower").bytes();
    let upper = Layer::new().file("g", 0o644, b"same layer").file(".wh.g", 0o644, b"").dir("d/", 0o755).file(".wh.d", 0o644, b"").bytes();
    tree.apply(&[lower, upper]).unwrap();
    assert_eq!(fs::read(tree.root.join("g")).unwrap(), b"same layer");
    assert!(tree.exists("f"));
    assert!(tree.exists("d/old"), "a folder of the same layer is not whited out, nor what it holds");
}

#[test]
fn an_opaque_folder_keeps_only_its_own_layer() {
    let tree = Tree::new();
    let lower = Layer::new().file("d/old", 0o644, b"o").file("d/sub/deep", 0o644, b"o").file("d/sub/also", 0o644, b"o").file("other", 0o644, b"o").bytes();
    // Entries of the same layer on both sides of the marker stay.
    let upper = Layer::new().dir("d/", 0o755).file("d/sub/new", 0o644, b"n").file("d/.wh..wh..opq", 0o644, b"").file("d/after", 0o644, b"a").bytes();
    tree.apply(&[lower, upper]).unwrap();
    let mut left: Vec<String> = walk(&tree.root.join("d"));
    left.sort();
    assert_eq!(left, ["after", "sub", "sub/new"]);
    assert!(tree.exists("other"));
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()).into_iter().map(|c| format!("{name}/{c}")));
        }
        out.push(name);
    }
    out
}

#[test]
fn writing_through_a_symlink_is_refused() {
    for (link, target) in [("a", "ABS"), ("a", "../outside"), ("a", "../../outside")] {
        let tree = Tree::new();
        let target = if target == "ABS" { tree.outside.to_str().unwrap().to_owned() } else { target.to_owned() };
        let plant = Layer::new().symlink(link, &target).bytes();
        for attack in [
            Layer::new().file("a/passwd", 0o644, b"pwned").bytes(),
            Layer::new().dir("a/sub/", 0o755).bytes(),
            Layer::new().file("a/.wh.keep", 0o644, b"").bytes(),
            Layer::new().file("a/.wh..wh..opq", 0o644, b"").bytes(),
            Layer::new().symlink("a/l", "/").bytes(),
            Layer::new().file("x", 0o644, b"x").hard_link("a/h", "x").bytes(),
        ] {
            let e = tree.apply(&[plant.clone(), attack]).unwrap_err();
            assert!(matches!(e, OciError::BeneathSymlink { .. }), "{e}");
            assert!(e.to_string().contains("beneath a symlink"), "{e}");
            tree.sentinel_intact();
        }
    }
}

#[test]
fn climbing_out_is_refused() {
    for path in [&b"../escaped"[..], b"a/../../escaped", b"/../escaped", b"./.."] {
        let tree = Tree::new();
        let e = tree.apply(&[Layer::new().raw(header(path, EntryType::Regular, 1, 0o644, b""), b"x").bytes()]).unwrap_err();
        assert!(matches!(&e, OciError::Escape { path: p } if p.as_bytes() == path), "{e}");
        assert!(!tree.root.parent().unwrap().join("escaped").exists());
        tree.sentinel_intact();
    }
}

#[test]
fn hard_links_out_of_the_tree_or_through_symlinks_are_refused() {
    let tree = Tree::new();
    let outside_abs = tree.outside.join("keep");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Layer::new().hard_link("h", "../outside/keep").bytes(), "climbs"),
        (Layer::new().hard_link("h", "../../../../outside/keep").bytes(), "climbs"),
        (Layer::new().symlink("s", tree.outside.to_str().unwrap()).hard_link("h", "s/keep").bytes(), "beneath a symlink"),
        (Layer::new().hard_link("h", "missing").bytes(), "not in the tree"),
        (Layer::new().dir("d/", 0o755).hard_link("h", "d").bytes(), "is a folder"),
        (Layer::new().file("f", 0o644, b"f").hard_link("f", "f").bytes(), "names itself"),
    ];
    for (layer, why) in cases {
        let e = tree.apply(&[layer]).unwrap_err();
        assert!(e.to_string().contains(why), "{e} (wanted {why})");
        assert!(!tree.exists("h"));
        tree.sentinel_intact();
    }
    // An absolute target is taken inside the tree: here it names nothing there.
    let e = tree.apply(&[Layer::new().hard_link("h", outside_abs.to_str().unwrap()).bytes()]).unwrap_err();
    assert!(e.to_string().contains("not in the tree"), "{e}");
    tree.sentinel_intact();
}

#[test]
fn devices_fifos_and_sparse_files_are_refused() {
    for (kind, name) in [(EntryType::Char, "character device"), (EntryType::Block, "block device"), (EntryType::Fifo, "FIFO")] {
        let tree = Tree::new();
        let e = tree.apply(&[Layer::new().raw(header(b"dev/node", kind, 0, 0o666, b""), b"").bytes()]).unwrap_err();
        assert!(matches!(&e, OciError::Unsupported { path, .. } if path == Path::new("dev/node")), "{e}");
        assert!(e.to_string().contains(name), "{e}");
        assert!(!tree.exists("dev/node"));
    }
}

#[test]
fn the_entry_cap_stops_a_layer() {
    let tree = Tree::new();
    let mut l = Layer::new();
    for i in 0..20 {
        l = l.file(&format!("f{i}"), 0o644, b"");
    }
    let limits = Limits { max_entries: 10, ..Limits::default() };
    let e = apply_layers(&tree.root, [(&l.bytes()[..], Compression::None)], &limits).unwrap_err();
    assert!(matches!(e, OciError::TooManyEntries { max: 10 }), "{e}");
    assert_eq!(fs::read_dir(&tree.root).unwrap().count(), 10);
}

#[test]
fn the_byte_cap_covers_the_whole_image() {
    let tree = Tree::new();
    let limits = Limits { max_bytes: 100 << 10, ..Limits::default() };
    // One file declared larger than the cap: refused before anything is written.
    let big = Layer::new().file("big", 0o644, &vec![7; 200 << 10]).bytes();
    let e = apply_layers(&tree.root, [(&big[..], Compression::None)], &limits).unwrap_err();
    assert!(matches!(e, OciError::TooManyBytes { max } if max == 100 << 10), "{e}");
    assert!(!tree.exists("big"));
    // Two layers under the cap each, over it together.
    let half = |n: &str| Layer::new().file(n, 0o644, &vec![1; 60 << 10]).bytes();
    let (a, b) = (half("a"), half("b"));
    let e = apply_layers(&tree.root, [(&a[..], Compression::None), (&b[..], Compression::None)], &limits).unwrap_err();
    assert!(matches!(e, OciError::TooManyBytes { .. }), "{e}");
    assert!(tree.exists("a") && !tree.exists("b"));
    // Headers count too: many empty folders pass the cap as the stream is read.
    let mut l = Layer::new();
    for i in 0..400 {
        l = l.dir(&format!("d{i}/"), 0o755);
    }
    let e = apply_layers(&tree.root, [(&l.bytes()[..], Compression::None)], &limits).unwrap_err();
    assert!(matches!(e, OciError::TooManyBytes { .. }), "{e}");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(bytes).unwrap();
    g.finish().unwrap()
}

#[test]
fn a_gzip_layer_is_applied() {
    let tree = Tree::new();
    let layer = gzip(&Layer::new().file("etc/motd", 0o644, b"hello").symlink("m", "etc/motd").bytes());
    let mut usage = Usage::default();
    apply_layer(&tree.root, &layer[..], Compression::Gzip, &Limits::default(), &mut usage).unwrap();
    assert_eq!(fs::read(tree.root.join("m")).unwrap(), b"hello");
    assert_eq!(usage.entries, 2);
    assert!(usage.bytes > layer.len() as u64, "uncompressed bytes are counted");
    // Garbage is a tar error, not a panic.
    let e = apply_layer(&tree.root, &b"not gzip at all"[..], Compression::Gzip, &Limits::default(), &mut usage).unwrap_err();
    assert!(matches!(e, OciError::Tar(_)), "{e}");
}

#[test]
fn a_zstd_layer_is_applied_frame_after_frame() {
    let tree = Tree::new();
    let tar = Layer::new().file("a", 0o644, b"first half").file("b", 0o644, &vec![3; 100 << 10]).bytes();
    // Two frames, split inside an entry.
    let mut layer = ruzstd::encoding::compress_to_vec(&tar[..700], ruzstd::encoding::CompressionLevel::Fastest);
    layer.extend(ruzstd::encoding::compress_to_vec(&tar[700..], ruzstd::encoding::CompressionLevel::Fastest));
    let mut usage = Usage::default();
    apply_layer(&tree.root, &layer[..], Compression::Zstd, &Limits::default(), &mut usage).unwrap();
    assert_eq!(fs::read(tree.root.join("a")).unwrap(), b"first half");
    assert_eq!(fs::read(tree.root.join("b")).unwrap(), vec![3; 100 << 10]);
    let limits = Limits { max_bytes: 50 << 10, ..Limits::default() };
    let e = apply_layer(&Tree::new().root, &layer[..], Compression::Zstd, &limits, &mut Usage::default()).unwrap_err();
    assert!(matches!(e, OciError::TooManyBytes { .. }), "{e}");
    for bad in [&b""[..], b"\x28\xb5\x2f\xfd garbage", &layer[..layer.len() / 2]] {
        let e = apply_layer(&Tree::new().root, bad, Compression::Zstd, &Limits::default(), &mut Usage::default()).unwrap_err();
        assert!(matches!(e, OciError::Tar(_)), "{e}");
    }
}

#[test]
fn a_gzip_bomb_stops_at_the_byte_cap() {
    let tree = Tree::new();
    // 8 MiB of zeros in files of 256 KiB: each under the cap, the stream far over it.
    let mut l = Layer::new();
    for i in 0..32 {
        l = l.file(&format!("z{i}"), 0o644, &vec![0; 256 << 10]);
    }
    let bomb = gzip(&l.bytes());
    assert!(bomb.len() < 64 << 10);
    let limits = Limits { max_bytes: 1 << 20, ..Limits::default() };
    let mut usage = Usage::default();
    let e = apply_layer(&tree.root, &bomb[..], Compression::Gzip, &limits, &mut usage).unwrap_err();
    assert!(matches!(e, OciError::TooManyBytes { max } if max == 1 << 20), "{e}");
    let written: u64 = fs::read_dir(&tree.root).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(written <= 1 << 20, "{written} bytes written");
    assert!(usage.bytes <= (1 << 20) + (64 << 10), "{}", usage.bytes);
}

#[test]
fn long_paths_and_long_headers_are_refused() {
    let tree = Tree::new();
    let limits = Limits { max_path_len: 64, ..Limits::default() };
    let long = "d/".repeat(40) + "f";
    // The Builder writes a GNU long-name entry for it.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    b.append_data(&mut h, &long, &b"x"[..]).unwrap();
    let layer = b.into_inner().unwrap();
    let e = apply_layers(&tree.root, [(&layer[..], Compression::None)], &limits).unwrap_err();
    assert!(matches!(e, OciError::PathTooLong { len: 81, max: 64, .. }), "{e}");
    assert!(!tree.exists("d"));
    // A long-name record far past the budget is not read into memory whole.
    let mut huge = header(b"././@LongLink", EntryType::GNULongName, 1 << 20, 0o644, b"");
    huge.set_cksum();
    let layer = Layer::new().raw(huge, &vec![b'a'; 1 << 20]).file("x", 0o644, b"x").bytes();
    let e = apply_layers(&tree.root, [(&layer[..], Compression::None)], &limits).unwrap_err();
    assert!(matches!(e, OciError::HeaderTooLong { .. }), "{e}");
    assert!(!tree.exists("x"));
}

#[test]
fn ownership_over_root_stays_as_recorded_and_setuid_survives_chown() {
    let tree = Tree::new();
    let lower = Layer::new().file_owned("bin/ping", 0o4755, 0, 0, 1, b"p").bytes();
    // Replaced by a file of another owner, setuid again.
    let upper = Layer::new().file_owned("bin/ping", 0o6711, 65534, 65534, 2, b"q").bytes();
    tree.apply(&[lower, upper]).unwrap();
    let m = fs::metadata(tree.root.join("bin/ping")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()), (0o6711, 65534, 65534, 2));
    assert_eq!(fs::Permissions::from_mode(m.mode()).mode() & 0o7000, 0o6000);
}
