//! Getting the source into the VM. A local repository becomes a `git bundle` of the ref on the
//! host (no checkout, no hook, no filter, no fsmonitor runs on the host) that the VM clones
//! from; a URL is cloned by the VM itself, through the egress proxy.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::CiError;

/// Where the repository is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local repository and the bundle made of it.
    Bundle {
        /// The bundle file on the host.
        bundle: PathBuf,
        /// The commit the ref names.
        commit: String,
        /// The path given, relative to the repository's top (`examples/hello-c/`), or empty.
        prefix: String,
    },
    /// A remote URL the guest clones.
    Url(String),
}

/// Whether `repo` is a URL (`http(s)://`, `git://`, `ssh://`) rather than a path.
pub fn is_url(repo: &str) -> bool {
    ["http://", "https://", "git://", "ssh://"].iter().any(|p| repo.starts_with(p))
}

fn git(repo: &Path) -> Command {
    let mut c = Command::new("git");
    // Nothing from the (untrusted) repository's configuration may run code on the host.
    c.args(["-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null", "-c", "protocol.allow=never"]).arg("-C").arg(repo);
    c.env("GIT_CONFIG_NOSYSTEM", "1").env("GIT_TERMINAL_PROMPT", "0");
    c
}

fn run(c: &mut Command, what: &str) -> Result<String, CiError> {
    let out = c.output().map_err(CiError::io(format!("{what}: cannot run git (apt-get install git)")))?;
    if !out.status.success() {
        return Err(CiError::Source { what: what.to_owned(), detail: String::from_utf8_lossy(&out.stderr).trim().to_owned() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// What names a repository for the CI cache, chosen by the runner rather than the pull
/// request: the folder it was checked out in and its `origin` (the checkout's `.git/config`
/// is not part of the commit).
pub fn identity(repo: &str) -> String {
    if is_url(repo) {
        return format!("url {repo}");
    }
    let path = std::fs::canonicalize(repo).map(|p| p.display().to_string()).unwrap_or_else(|_| repo.to_owned());
    let origin = run(git(Path::new(repo)).args(["config", "--get", "remote.origin.url"]), "git config").unwrap_or_default();
    format!("path {path}\norigin {origin}")
}

/// The folders of the repository git finds at `repo` (canonical): its work tree's top (when it
/// has one), its git folder and its common git folder. Git looks upward from `repo`, and a
/// `.git` file can name a git folder anywhere, so a daemon that allows paths beneath a root
/// checks all of these, not only `repo`: otherwise a folder beneath the root could bundle a
/// repository outside it. `None`: no repository there.
pub fn repository_folders(repo: &Path) -> Option<Vec<PathBuf>> {
    let git_dir = run(git(repo).args(["rev-parse", "--absolute-git-dir"]), "git rev-parse").ok()?;
    let common = run(git(repo).args(["rev-parse", "--path-format=absolute", "--git-common-dir"]), "git rev-parse").ok()?;
    let top = run(git(repo).args(["rev-parse", "--show-toplevel"]), "git rev-parse").ok().filter(|t| !t.is_empty());
    top.into_iter().chain([git_dir, common]).map(|p| std::fs::canonicalize(p).ok()).collect()
}

/// Makes a bundle of `git_ref` of the local repository `repo` in `dir`.
pub fn bundle(repo: &Path, git_ref: &str, dir: &Path) -> Result<Source, CiError> {
    if run(git(repo).args(["rev-parse", "--git-dir"]), "").is_err() {
        return Err(CiError::Invalid(format!("source: {} is not in a git repository", repo.display())));
    }
    let prefix = run(git(repo).args(["rev-parse", "--show-prefix"]), "git rev-parse").unwrap_or_default();
    if prefix.split('/').any(|c| c == "..") {
        return Err(CiError::Invalid(format!("source: bad path {}", repo.display())));
    }
    if git_ref.starts_with('-') {
        return Err(CiError::Invalid(format!("source: bad ref {git_ref:?}")));
    }
    let commit = run(git(repo).args(["rev-parse", "--verify", "--end-of-options"]).arg(format!("{git_ref}^{{commit}}")), &format!("ref {git_ref}"))?;
    let bundle = dir.join("source.bundle");
    let _ = std::fs::remove_file(&bundle);
    let named = run(git(repo).args(["bundle", "create", "--quiet"]).arg(&bundle).arg(git_ref), "git bundle");
    if named.is_err() {
        // A bare commit id names no ref a bundle can carry. Not `--all` (that would ship every
        // ref of the runner's checkout into the VM): a scratch repository borrows the objects
        // and names only this commit.
        let scratch = dir.join("one-ref.git");
        let objects = run(git(repo).args(["rev-parse", "--path-format=absolute", "--git-common-dir"]), "git rev-parse")?;
        run(Command::new("git").args(["init", "--quiet", "--bare"]).arg(&scratch), "git init")?;
        std::fs::write(scratch.join("objects/info/alternates"), format!("{objects}/objects\n")).map_err(CiError::io(format!("write {}", scratch.display())))?;
        run(git(&scratch).args(["update-ref", "refs/heads/kiln-build", &commit]), "git update-ref")?;
        run(git(&scratch).args(["bundle", "create", "--quiet"]).arg(&bundle).arg("refs/heads/kiln-build"), "git bundle")?;
    }
    Ok(Source::Bundle { bundle, commit, prefix })
}

impl Source {
    /// The folder in the guest where the steps run: the checkout, or the subfolder given.
    pub fn workdir(&self) -> String {
        match self {
            Source::Bundle { prefix, .. } if !prefix.is_empty() => format!("/work/src/{}", prefix.trim_end_matches('/')),
            _ => "/work/src".into(),
        }
    }
}

/// The shell (run in the guest) that clones from the bundle at `/tmp/kiln-source.bundle` or
/// from `url` into `/work/src`, checks out the commit or ref, and prints the commit.
pub fn clone_script(source: &Source, git_ref: &str) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    match source {
        Source::Bundle { commit, .. } => format!(
            "set -e; rm -rf /work/src; git clone -q /tmp/kiln-source.bundle /work/src 2>/dev/null || git init -q /work/src; \
             cd /work/src; git fetch -q /tmp/kiln-source.bundle '+refs/*:refs/kiln/*' 2>/dev/null || true; \
             git -c advice.detachedHead=false checkout -q -f {commit}; git rev-parse HEAD"
        ),
        Source::Url(url) => format!(
            "set -e; rm -rf /work/src; git clone -q {} /work/src; cd /work/src; \
             git -c advice.detachedHead=false checkout -q -f {}; git rev-parse HEAD",
            q(url),
            q(git_ref)
        ),
    }
}

/// The shell that moves an existing `/work/src` (from a cached setup) to the new commit.
pub fn update_script(commit: &str) -> String {
    format!(
        "set -e; cd /work/src; git fetch -q /tmp/kiln-source.bundle '+refs/*:refs/kiln/*' 2>/dev/null || true; \
         git -c advice.detachedHead=false checkout -q -f {commit}; git rev-parse HEAD"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_a_ref_without_running_hooks() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("r");
        let sh = |cmd: &str| assert!(Command::new("sh").arg("-c").arg(cmd).current_dir(t.path()).status().unwrap().success(), "{cmd}");
        sh("git init -q r && cd r && git config user.email a@b && git config user.name a && echo hi > f && git add f && git commit -qm one");
        // A hook that would leave a mark if anything ran it.
        sh("mkdir -p r/.git/hooks && printf '#!/bin/sh\\ntouch /tmp/kiln-hook-ran\\n' > r/.git/hooks/pre-push && chmod +x r/.git/hooks/pre-push");
        let out = t.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let s = bundle(&repo, "HEAD", &out).unwrap();
        let Source::Bundle { bundle: file, commit, prefix } = s else { panic!() };
        assert_eq!(prefix, "");
        assert_eq!(commit.len(), 40);
        assert!(file.exists());
        assert!(bundle(&repo, "no-such-ref", &out).is_err());
        let outside = tempfile::tempdir().unwrap();
        assert!(bundle(outside.path(), "HEAD", &out).is_err());
        assert!(is_url("https://example.com/x.git") && !is_url("./x"));
    }

    #[test]
    fn the_repository_folders_are_where_git_finds_the_repository() {
        let t = tempfile::tempdir().unwrap();
        let sh = |cmd: &str| assert!(Command::new("sh").arg("-c").arg(cmd).current_dir(t.path()).status().unwrap().success(), "{cmd}");
        sh("git init -q r && mkdir -p r/sub/deeper && git init -q --bare b.git && mkdir plain");
        let r = std::fs::canonicalize(t.path().join("r")).unwrap();
        let of_r = Some(vec![r.clone(), r.join(".git"), r.join(".git")]);
        assert_eq!(repository_folders(&r), of_r);
        // A folder inside a repository is that repository.
        assert_eq!(repository_folders(&r.join("sub/deeper")), of_r);
        let b = std::fs::canonicalize(t.path().join("b.git")).unwrap();
        assert_eq!(repository_folders(&b), Some(vec![b.clone(), b]));
        assert_eq!(repository_folders(&t.path().join("plain")), None);
        assert_eq!(repository_folders(&t.path().join("missing")), None);
        // A `.git` file naming a git folder elsewhere: that folder is one of them.
        sh("mkdir w && echo \"gitdir: $PWD/r/.git\" > w/.git");
        let w = std::fs::canonicalize(t.path().join("w")).unwrap();
        assert!(repository_folders(&w).unwrap().contains(&r.join(".git")));
    }

    #[test]
    fn a_bare_commit_ships_only_itself() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("r");
        let sh = |cmd: &str| assert!(Command::new("sh").arg("-c").arg(cmd).current_dir(t.path()).status().unwrap().success(), "{cmd}");
        sh("git init -q r && cd r && git config user.email a@b && git config user.name a && echo hi > f && git add f && git commit -qm one \
            && git checkout -qb private-work && echo secret > s && git add s && git commit -qm private && git checkout -q -");
        let head = run(git(&repo).args(["rev-parse", "HEAD"]), "").unwrap();
        let out = t.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let Source::Bundle { bundle: file, commit, .. } = bundle(&repo, &head, &out).unwrap() else { panic!() };
        assert_eq!(commit, head);
        let heads = run(Command::new("git").args(["bundle", "list-heads"]).arg(&file), "").unwrap();
        assert_eq!(heads, format!("{head} refs/heads/kiln-build"), "only the commit asked for: {heads}");
        // The runner's checkout is unchanged: no new ref.
        let refs = run(git(&repo).args(["for-each-ref", "--format=%(refname)"]), "").unwrap();
        assert!(!refs.contains("kiln"), "{refs}");
    }

    #[test]
    fn identity_is_the_runner_s_not_the_commit_s() {
        let t = tempfile::tempdir().unwrap();
        let sh = |cmd: &str| assert!(Command::new("sh").arg("-c").arg(cmd).current_dir(t.path()).status().unwrap().success(), "{cmd}");
        sh("git init -q a && git init -q b && git -C b remote add origin https://example.com/b.git");
        let (a, b) = (identity(&t.path().join("a").display().to_string()), identity(&t.path().join("b").display().to_string()));
        assert_ne!(a, b);
        assert!(b.contains("origin https://example.com/b.git"), "{b}");
        assert_eq!(identity("https://example.com/x.git"), "url https://example.com/x.git");
    }
}
