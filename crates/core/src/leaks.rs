//! What sandboxes leave behind on the host: processes, file descriptors, run folder entries,
//! RAM files and VMM cgroups. A [`HostState`] is a picture of them; [`Leaks`] is what one
//! picture has that an earlier one had not. `kiln bench load` and the integration tests' leak
//! checks both read the host through this module.
//!
//! Everything here only reads (`/proc`, folders, the cgroup file system): in particular, VMM
//! cgroups are listed without sweeping those of dead kiln processes, which would hide a leak.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kiln_image::Home;

/// The host as far as the sandboxes of this process in one home are concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostState {
    /// Descendant processes of this one, as "pid (comm)".
    pub processes: BTreeSet<String>,
    /// Open file descriptors of this process.
    pub fds: usize,
    /// Names in the home's run folder.
    pub run: BTreeSet<String>,
    /// Names in the home's RAM-file folder.
    pub shm: BTreeSet<String>,
    /// This process's VMM cgroups (paths, every hierarchy).
    pub cgroups: BTreeSet<String>,
}

impl HostState {
    /// The host now, for this process and `home`.
    pub fn now(home: &Home) -> HostState {
        let me = std::process::id();
        HostState {
            processes: descendants(me, &processes()),
            fds: std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0),
            run: names(home.run()),
            shm: names(home.shm()),
            cgroups: vmm_cgroups_of(me).into_iter().map(|p| p.display().to_string()).collect(),
        }
    }
}

/// What is in a later [`HostState`] and not in an earlier one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leaks {
    /// New descendant processes, as "pid (comm)".
    pub processes: Vec<String>,
    /// How many more file descriptors are open (fewer count as none).
    pub fds: usize,
    /// New run folder entries.
    pub run: Vec<String>,
    /// New RAM files.
    pub shm: Vec<String>,
    /// New VMM cgroups.
    pub cgroups: Vec<String>,
}

impl Leaks {
    /// What `after` has that `before` had not; what is gone is no leak.
    pub fn between(before: &HostState, after: &HostState) -> Leaks {
        let new = |a: &BTreeSet<String>, b: &BTreeSet<String>| b.difference(a).cloned().collect::<Vec<_>>();
        Leaks {
            processes: new(&before.processes, &after.processes),
            fds: after.fds.saturating_sub(before.fds),
            run: new(&before.run, &after.run),
            shm: new(&before.shm, &after.shm),
            cgroups: new(&before.cgroups, &after.cgroups),
        }
    }

    /// How many things leaked, of every kind together.
    pub fn total(&self) -> usize {
        self.processes.len() + self.fds + self.run.len() + self.shm.len() + self.cgroups.len()
    }
}

/// The pids in `/proc`.
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc").into_iter().flatten().flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

/// Every process now, as (pid, comm, ppid).
fn processes() -> Vec<(u32, String, u32)> {
    pids().filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()).filter_map(|t| parse_stat(&t)).collect()
}

/// (pid, comm, ppid) from the text of `/proc/PID/stat` (comm may hold spaces and parens).
fn parse_stat(text: &str) -> Option<(u32, String, u32)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut rest = text[close + 1..].split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((pid, comm, ppid))
}

/// The descendants of `root` among (pid, comm, ppid) entries, as "pid (comm)".
fn descendants(root: u32, procs: &[(u32, String, u32)]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut parents = vec![root];
    let mut seen = BTreeSet::from([root]);
    while let Some(p) = parents.pop() {
        for (pid, comm, ppid) in procs {
            if *ppid == p && seen.insert(*pid) {
                found.insert(format!("{pid} ({comm})"));
                parents.push(*pid);
            }
        }
    }
    found
}

/// The names in `dir` (none when it cannot be read).
pub fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
}

/// Pids of processes, other than this one, whose command line contains `needle`.
pub fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id();
    pids()
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// The VMM cgroups (in every hierarchy) that kiln process `pid` created and that still
/// exist. Reads the cgroup file system directly: unlike `kiln_vmm::confine::host()`, it does
/// not sweep the groups of dead processes, which would hide a leak.
pub fn vmm_cgroups_of(pid: u32) -> Vec<PathBuf> {
    let ops = kiln_vmm::hostops::RealHost;
    let prefix = format!("vmm-{pid}-");
    match kiln_vmm::confine::detect_layout(&ops) {
        Ok(l) => l.list(&ops).into_iter().filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix))).collect(),
        Err(_) => Vec::new(),
    }
}

/// CPU time (user and system, ms) the processes `pids` used so far.
pub fn cpu_ms(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // Fields after the command name, which ends at the last ')'.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        * 1000.0
        / tick
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(procs: &[&str], fds: usize, run: &[&str]) -> HostState {
        HostState {
            processes: procs.iter().map(|s| s.to_string()).collect(),
            fds,
            run: run.iter().map(|s| s.to_string()).collect(),
            ..HostState::default()
        }
    }

    #[test]
    fn leaks_are_what_is_new() {
        let before = state(&["10 (a)"], 12, &["sbx-old"]);
        let same = state(&["10 (a)"], 12, &["sbx-old"]);
        assert_eq!(Leaks::between(&before, &same).total(), 0);
        // Gone things and fewer fds are not leaks; new ones are.
        let fewer = state(&[], 9, &[]);
        assert_eq!(Leaks::between(&before, &fewer).total(), 0);
        let more = state(&["10 (a)", "42 (qemu)"], 15, &["sbx-old", "sbx-new"]);
        let l = Leaks::between(&before, &more);
        assert_eq!(l.processes, vec!["42 (qemu)".to_string()]);
        assert_eq!(l.fds, 3);
        assert_eq!(l.run, vec!["sbx-new".to_string()]);
        assert_eq!(l.total(), 5);
    }

    #[test]
    fn stat_lines_and_descendants() {
        assert_eq!(parse_stat("42 (qemu-system-x86) S 7 42 42 0"), Some((42, "qemu-system-x86".into(), 7)));
        assert_eq!(parse_stat("43 (a) b (c)) R 42 1"), Some((43, "a) b (c)".into(), 42)));
        assert_eq!(parse_stat("garbage"), None);
        let procs = vec![(42, "q".to_string(), 7), (43, "r".to_string(), 42), (44, "s".to_string(), 1), (7, "kiln".to_string(), 1)];
        let d = descendants(7, &procs);
        assert_eq!(d, BTreeSet::from(["42 (q)".to_string(), "43 (r)".to_string()]));
    }

    #[test]
    fn this_process_is_seen() {
        let me = std::process::id();
        assert!(processes().iter().any(|(pid, _, _)| *pid == me));
        assert!(names(Path::new("/no/such/folder")).is_empty());
    }
}
