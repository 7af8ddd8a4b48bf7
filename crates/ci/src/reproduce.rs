//! `kiln ci run --rebuild N`: the verdict on N builds of one cell, each in its own VM forked
//! from the same setup. Every artifact is compared by sha256; for one that differs, the first
//! difference is found in the files on the host: the first differing member of a tar archive
//! (gzip-compressed or not), the first differing line of a text file, or the first differing
//! byte of anything else. The files were written by the guest: every read is bounded and goes
//! through the cell's directory handles.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use kiln_fs::Dir;
use serde::{Deserialize, Serialize};

use crate::artifacts::Artifact;

/// Most builds of one cell.
pub const MAX_REBUILDS: usize = 16;
/// Most bytes of one artifact read (decompressed) to find where it differs.
const MAX_SCAN: u64 = 1 << 30;
/// Most members of an archive compared.
const MAX_MEMBERS: usize = 100_000;
/// Most bytes of one line compared as text.
const MAX_LINE: u64 = 64 << 10;
/// Most characters of a line shown.
const SHOWN: usize = 120;

/// One build of a cell: what it returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Build {
    /// Exit code (124 timeout).
    pub exit_code: i32,
    /// Timed out.
    pub timed_out: bool,
    /// Duration.
    pub duration_ms: u64,
    /// Masked log on the host.
    pub log: std::path::PathBuf,
    /// Artifacts copied out (beneath the build's own `artifacts/`).
    pub artifacts: Vec<Artifact>,
    /// What went wrong, if kiln itself failed for this build.
    pub error: Option<String>,
}

/// An artifact that is not the same in every build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// Its path (relative to the checkout).
    pub path: String,
    /// Its sha256 in each build, in build order (`null`: the build did not produce it).
    pub sha256: Vec<Option<String>>,
    /// Where the first build and the first one that differs from it part (bounded), when
    /// both have the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_difference: Option<String>,
}

/// The verdict on a cell's builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Every build exited alike and produced the same artifacts.
    pub reproducible: bool,
    /// Builds that agree with the first (counting it): same exit code, same artifacts.
    pub agreed: u32,
    /// The artifacts that differ.
    pub differences: Vec<Difference>,
}

/// Compares builds: `builds[i]` is the i-th build's result and the folder its artifacts are
/// in (`None` when it has none on the host).
pub fn judge(builds: &[(&Build, Option<&Dir>)]) -> Verdict {
    let digests = |b: &Build| b.artifacts.iter().map(|a| (a.path.clone(), a.sha256.clone())).collect::<BTreeMap<_, _>>();
    let all: Vec<BTreeMap<String, String>> = builds.iter().map(|(b, _)| digests(b)).collect();
    let first = &all[0];
    let same = |i: usize| builds[i].0.exit_code == builds[0].0.exit_code && builds[i].0.error.is_none() && all[i] == *first;
    let agreed = (0..builds.len()).filter(|&i| same(i)).count() as u32;
    let mut paths: Vec<&String> = all.iter().flat_map(|m| m.keys()).collect();
    paths.sort();
    paths.dedup();
    let mut differences = Vec::new();
    for path in paths {
        let sha256: Vec<Option<String>> = all.iter().map(|m| m.get(path).cloned()).collect();
        if sha256.iter().all(|d| d.is_some() && *d == sha256[0]) {
            continue;
        }
        let other = sha256.iter().position(|d| *d != sha256[0]);
        let first_difference = match (other, &sha256[0]) {
            (Some(j), Some(_)) if sha256[j].is_some() => match (builds[0].1, builds[j].1) {
                (Some(a), Some(b)) => Some(describe(a, b, Path::new(path), j + 1)),
                _ => None,
            },
            _ => None,
        };
        differences.push(Difference { path: path.clone(), sha256, first_difference });
    }
    let reproducible = agreed as usize == builds.len() && differences.is_empty();
    Verdict { reproducible, agreed, differences }
}

/// Where `rel` beneath `a` (build 1) and beneath `b` (build `other`) part, in words.
fn describe(a: &Dir, b: &Dir, rel: &Path, other: usize) -> String {
    let open = |d: &Dir| d.open_regular(rel).map(|f| BufReader::new(f.take(MAX_SCAN)));
    match (open(a), open(b)) {
        (Ok(x), Ok(y)) => first_difference(x, y, other, MAX_SCAN).unwrap_or_else(|e| format!("could not compare: {e}")),
        (Err(e), _) | (_, Err(e)) => format!("could not open it: {e}"),
    }
}

/// What two streams look like, from their first bytes.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Gzip,
    Tar,
    Text,
    Binary,
}

fn kind(head: &[u8]) -> Kind {
    if head.starts_with(&[0x1f, 0x8b]) {
        Kind::Gzip
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Kind::Tar
    } else if !head.contains(&0) && std::str::from_utf8(&head[..head.len().min(4096)]).is_ok_or_cut() {
        Kind::Text
    } else {
        Kind::Binary
    }
}

/// `from_utf8` that accepts a multi-byte character cut at the end of the sample.
trait Utf8Cut {
    fn is_ok_or_cut(&self) -> bool;
}

impl Utf8Cut for Result<&str, std::str::Utf8Error> {
    fn is_ok_or_cut(&self) -> bool {
        match self {
            Ok(_) => true,
            Err(e) => e.error_len().is_none(),
        }
    }
}

/// The first difference between two streams, each decompressed to at most `max` bytes (one
/// level of gzip: a gzip stream inside one is compared as bytes).
fn first_difference(a: impl BufRead, b: impl BufRead, other: usize, max: u64) -> io::Result<String> {
    compare(Box::new(a), Box::new(b), other, max, true)
}

fn compare(mut a: Box<dyn BufRead + '_>, mut b: Box<dyn BufRead + '_>, other: usize, max: u64, gunzip: bool) -> io::Result<String> {
    let (ka, kb) = (kind(a.fill_buf()?), kind(b.fill_buf()?));
    if ka != kb {
        return Ok(format!("build 1 made {ka:?} data, build {other} {kb:?} data").to_lowercase());
    }
    match ka {
        Kind::Gzip if gunzip => {
            let a = BufReader::new(flate2::bufread::MultiGzDecoder::new(a).take(max));
            let b = BufReader::new(flate2::bufread::MultiGzDecoder::new(b).take(max));
            compare(Box::new(a), Box::new(b), other, max, false).map(|d| format!("gzip, decompressed: {d}"))
        }
        Kind::Tar => tar_difference(a, b, other),
        Kind::Text => text_difference(a, b, other),
        Kind::Gzip | Kind::Binary => byte_difference(a, b),
    }
}

fn text_difference(mut a: impl BufRead, mut b: impl BufRead, other: usize) -> io::Result<String> {
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    for n in 1.. {
        la.clear();
        lb.clear();
        let ea = (&mut a).take(MAX_LINE).read_until(b'\n', &mut la)?;
        let eb = (&mut b).take(MAX_LINE).read_until(b'\n', &mut lb)?;
        if ea == 0 && eb == 0 {
            return Ok("same text (the files differ beyond what was compared)".into());
        }
        if la != lb {
            let show = |l: &[u8]| if l.is_empty() { "end of file".to_owned() } else { format!("{:?}", shown(l)) };
            return Ok(format!("line {n}: build 1 has {}, build {other} has {}", show(&la), show(&lb)));
        }
    }
    unreachable!()
}

/// A line as shown: without its newline, control characters replaced, cut at [`SHOWN`].
fn shown(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    let s = s.trim_end_matches(['\n', '\r']);
    let mut out: String = s.chars().map(|c| if c.is_control() { '\u{fffd}' } else { c }).take(SHOWN).collect();
    if s.chars().count() > SHOWN {
        out.push('…');
    }
    out
}

fn byte_difference<A: Read, B: Read>(mut a: A, mut b: B) -> io::Result<String> {
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut a, &mut ba)?;
        let nb = read_full(&mut b, &mut bb)?;
        if let Some(i) = ba[..na.min(nb)].iter().zip(&bb[..na.min(nb)]).position(|(x, y)| x != y) {
            return Ok(format!("byte {} differs", offset + i as u64));
        }
        if na != nb {
            return Ok(format!("one build's file ends at byte {}", offset + na.min(nb) as u64));
        }
        if na == 0 {
            return Ok("same bytes (the files differ beyond what was compared)".into());
        }
        offset += na as u64;
    }
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// One tar member's header facts and content digest.
#[derive(PartialEq, Eq)]
struct Member {
    path: String,
    kind: String,
    mode: u32,
    owner: (u64, u64),
    mtime: u64,
    link: Option<String>,
    size: u64,
    sha256: [u8; 32],
}

fn members<R: Read>(r: R) -> io::Result<Vec<Member>> {
    use sha2::{Digest as _, Sha256};
    let mut archive = tar::Archive::new(r);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut e = entry?;
        let h = e.header();
        let m = Member {
            path: String::from_utf8_lossy(&e.path_bytes()).into_owned(),
            kind: format!("{:?}", h.entry_type()),
            mode: h.mode().unwrap_or(0),
            owner: (h.uid().unwrap_or(0), h.gid().unwrap_or(0)),
            mtime: h.mtime().unwrap_or(0),
            link: e.link_name_bytes().map(|l| String::from_utf8_lossy(&l).into_owned()),
            size: h.size().unwrap_or(0),
            sha256: {
                let mut hash = Sha256::new();
                io::copy(&mut e, &mut hash)?;
                hash.finalize().into()
            },
        };
        out.push(m);
        if out.len() > MAX_MEMBERS {
            break;
        }
    }
    Ok(out)
}

fn tar_difference<A: Read, B: Read>(a: A, b: B, other: usize) -> io::Result<String> {
    let (ma, mb) = (members(a)?, members(b)?);
    for (i, (x, y)) in ma.iter().zip(&mb).enumerate() {
        if x == y {
            continue;
        }
        let name = |p: &str| format!("{:?}", shown(p.as_bytes()));
        if x.path != y.path {
            return Ok(format!("member {}: build 1 has {}, build {other} has {}", i + 1, name(&x.path), name(&y.path)));
        }
        let what = if x.mtime != y.mtime {
            format!("mtime {} vs {}", x.mtime, y.mtime)
        } else if x.kind != y.kind || x.link != y.link {
            "type or link target".to_owned()
        } else if x.mode != y.mode || x.owner != y.owner {
            format!("mode or owner ({:o} {}:{} vs {:o} {}:{})", x.mode, x.owner.0, x.owner.1, y.mode, y.owner.0, y.owner.1)
        } else if x.size != y.size {
            format!("size {} vs {}", x.size, y.size)
        } else {
            "contents".to_owned()
        };
        return Ok(format!("member {} differs: {what}", name(&x.path)));
    }
    Ok(match ma.len().cmp(&mb.len()) {
        std::cmp::Ordering::Equal => "same members (the archives differ in padding or headers)".into(),
        _ => format!("build 1 has {} members, build {other} has {}", ma.len(), mb.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn tarball(files: &[(&str, &[u8], u64)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data, mtime) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(*mtime);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn diff(a: &[u8], b: &[u8]) -> String {
        first_difference(a, b, 2, MAX_SCAN).unwrap()
    }

    #[test]
    fn text_names_the_first_differing_line() {
        assert_eq!(diff(b"a\nbuilt Mon\nc\n", b"a\nbuilt Tue\nc\n"), r#"line 2: build 1 has "built Mon", build 2 has "built Tue""#);
        assert_eq!(diff(b"a\n", b"a\nb\n"), r#"line 2: build 1 has end of file, build 2 has "b""#);
        let long = [b"x".repeat(500), b"\x1b[31m".to_vec()].concat();
        let d = diff(&long, b"y");
        assert!(d.contains('…') && d.len() < 400, "{d}");
        assert!(!diff(b"\x1b[2Jq", b"\x1b[2Jr").contains('\x1b'));
    }

    #[test]
    fn archives_name_the_first_differing_member() {
        let a = tarball(&[("src/a.o", b"same", 100), ("VERSION", b"built at 1", 100)]);
        let b = tarball(&[("src/a.o", b"same", 100), ("VERSION", b"built at 2", 100)]);
        assert_eq!(diff(&a, &b), r#"member "VERSION" differs: contents"#);
        assert_eq!(diff(&gz(&a), &gz(&b)), r#"gzip, decompressed: member "VERSION" differs: contents"#);
        let later = tarball(&[("src/a.o", b"same", 200), ("VERSION", b"built at 1", 100)]);
        assert_eq!(diff(&a, &later), r#"member "src/a.o" differs: mtime 100 vs 200"#);
        let fewer = tarball(&[("src/a.o", b"same", 100)]);
        assert_eq!(diff(&a, &fewer), "build 1 has 2 members, build 2 has 1");
    }

    #[test]
    fn binaries_name_the_first_differing_byte() {
        assert_eq!(diff(b"\x7fELF\0\x01\x02", b"\x7fELF\0\x01\x03"), "byte 6 differs");
        assert_eq!(diff(b"\x7fELF\0", b"\x7fELF\0\0"), "one build's file ends at byte 5");
        assert_eq!(diff(b"\x7fELF\0", &gz(b"x")), "build 1 made binary data, build 2 gzip data");
    }

    #[test]
    fn a_gzip_bomb_is_read_only_so_far() {
        // 64 MiB of zeros, then a difference; read at most 1 MiB decompressed.
        let bomb = |last: u8| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..64 {
                e.write_all(&zeros).unwrap();
            }
            e.write_all(&[last]).unwrap();
            e.finish().unwrap()
        };
        let d = first_difference(&bomb(1)[..], &bomb(2)[..], 2, 1 << 20).unwrap();
        assert_eq!(d, "gzip, decompressed: same bytes (the files differ beyond what was compared)");
        let d = first_difference(&bomb(1)[..], &bomb(2)[..], 2, 65 << 20).unwrap();
        assert_eq!(d, "gzip, decompressed: byte 67108864 differs");
    }

    fn build(exit_code: i32, artifacts: &[(&str, &str)]) -> Build {
        Build {
            exit_code, timed_out: false, duration_ms: 1, log: "build.log".into(), error: None,
            artifacts: artifacts.iter().map(|(p, d)| Artifact { path: (*p).into(), size: 1, sha256: (*d).into() }).collect(),
        }
    }

    #[test]
    fn the_verdict_counts_agreeing_builds() {
        let (a, b) = (build(0, &[("app", "11"), ("app.sha", "22")]), build(0, &[("app", "11"), ("app.sha", "22")]));
        let v = judge(&[(&a, None), (&b, None), (&b, None)]);
        assert_eq!(v, Verdict { reproducible: true, agreed: 3, differences: vec![] });
        let c = build(0, &[("app", "33"), ("app.sha", "22"), ("extra", "44")]);
        let v = judge(&[(&a, None), (&b, None), (&c, None)]);
        assert!(!v.reproducible);
        assert_eq!(v.agreed, 2);
        let d = |p: &str, s: [Option<&str>; 3]| Difference { path: p.into(), sha256: s.map(|x| x.map(str::to_owned)).into(), first_difference: None };
        assert_eq!(v.differences, vec![d("app", [Some("11"), Some("11"), Some("33")]), d("extra", [None, None, Some("44")])]);
        // The same artifacts but another exit code: not reproducible.
        let failed = build(1, &[("app", "11"), ("app.sha", "22")]);
        let v = judge(&[(&a, None), (&failed, None)]);
        assert_eq!((v.reproducible, v.agreed, v.differences.len()), (false, 1, 0));
    }

    #[test]
    fn the_verdict_reads_the_files_through_the_cells_handles() {
        let t = tempfile::tempdir().unwrap();
        for (dir, text) in [("1", "v1\n"), ("2", "v2\n")] {
            std::fs::create_dir(t.path().join(dir)).unwrap();
            std::fs::write(t.path().join(dir).join("out.txt"), text).unwrap();
        }
        // A link the guest could not have made (artifacts are regular files) is not followed.
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("2/link")).unwrap();
        std::fs::write(t.path().join("1/link"), "x").unwrap();
        let (d1, d2) = (Dir::open(&t.path().join("1")).unwrap(), Dir::open(&t.path().join("2")).unwrap());
        let (a, b) = (build(0, &[("out.txt", "aa"), ("link", "cc")]), build(0, &[("out.txt", "bb"), ("link", "dd")]));
        let v = judge(&[(&a, Some(&d1)), (&b, Some(&d2))]);
        assert_eq!(v.differences[1].first_difference.as_deref(), Some(r#"line 1: build 1 has "v1", build 2 has "v2""#));
        assert!(v.differences[0].first_difference.as_deref().unwrap().starts_with("could not open it"), "{:?}", v.differences[0]);
    }
}
