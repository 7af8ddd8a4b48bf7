//! The warm pool: for each template and shape an admin asks for, sandboxes restored ahead of
//! time and kept paused ([`kiln_core::warm::Warm`]), handed out by a create and refilled in
//! the background, one at a time (creation is CPU-bound, and the jobs come first).
//!
//! Pooled VMs count against the daemon's memory limit (they hold guest memory) but never
//! against its sandbox count, nor anyone's: they are no one's until a create claims one.

use std::collections::BTreeMap;
use std::sync::Mutex;

use kiln_core::warm::Warm;

/// A template and machine shape: what a pooled sandbox must match to serve a create.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shape {
    /// Template name.
    pub template: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} vCPU, {} MiB)", self.template, self.cpus, self.memory_mib)
    }
}

/// Most pooled sandboxes of one shape.
pub const MAX_POOL: usize = 64;

/// One entry of `--pool`: `NAME=N`, or `NAME:CPUSxMIB=N` for a shape other than the
/// template's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolEntry {
    /// Template name.
    pub template: String,
    /// vCPUs, the template's default when `None`.
    pub cpus: Option<u32>,
    /// Memory in MiB, the template's default when `None`.
    pub memory_mib: Option<u32>,
    /// Sandboxes to keep ready.
    pub size: usize,
}

/// Parses `tiny=4,base=2` (or `tiny:2x512=4`); an empty string is no pool.
pub fn parse_spec(spec: &str) -> Result<Vec<PoolEntry>, String> {
    let mut out: Vec<PoolEntry> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, size) = part.split_once('=').ok_or_else(|| format!("{part:?}: expected TEMPLATE=N, e.g. tiny=4"))?;
        let size: usize = size.trim().parse().map_err(|_| format!("{part:?}: {size:?} is not a number of sandboxes"))?;
        if size > MAX_POOL {
            return Err(format!("{part:?}: at most {MAX_POOL} pooled sandboxes per template and shape"));
        }
        let (template, shape) = match name.split_once(':') {
            None => (name.trim(), None),
            Some((t, s)) => {
                let (c, m) = s.split_once('x').ok_or_else(|| format!("{part:?}: a shape is CPUSxMIB, e.g. tiny:2x512=4"))?;
                let c: u32 = c.parse().map_err(|_| format!("{part:?}: {c:?} is not a number of vCPUs"))?;
                let m: u32 = m.parse().map_err(|_| format!("{part:?}: {m:?} is not a memory size in MiB"))?;
                (t.trim(), Some((c, m)))
            }
        };
        if template.is_empty() {
            return Err(format!("{part:?}: no template name"));
        }
        let entry = PoolEntry { template: template.to_owned(), cpus: shape.map(|s| s.0), memory_mib: shape.map(|s| s.1), size };
        if out.iter().any(|e| e.template == entry.template && e.cpus == entry.cpus && e.memory_mib == entry.memory_mib) {
            return Err(format!("{part:?}: {template} is named twice"));
        }
        out.push(entry);
    }
    Ok(out)
}

/// What the pool holds and wants.
#[derive(Debug, Default)]
pub(crate) struct PoolState {
    /// Sandboxes to keep ready, per shape.
    pub(crate) targets: BTreeMap<Shape, usize>,
    /// Those ready, oldest first.
    pub(crate) ready: BTreeMap<Shape, Vec<Warm>>,
    /// The shape being restored right now.
    pub(crate) filling: Option<Shape>,
    /// The last failure to fill, per shape (cleared by a success).
    pub(crate) last_error: BTreeMap<Shape, String>,
}

/// The pool.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    pub(crate) state: Mutex<PoolState>,
    /// Wakes the refiller (a take, a new target, a shutdown).
    pub(crate) wake: tokio::sync::Notify,
    /// Set at shutdown: nothing is refilled any more.
    pub(crate) closed: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// Whether creates of `shape` are served by the pool.
    pub(crate) fn serves(&self, shape: &Shape) -> bool {
        lock(&self.state).targets.get(shape).is_some_and(|n| *n > 0)
    }

    /// A ready sandbox of `shape` (the oldest that is still alive), and a refill started.
    pub(crate) fn take(&self, shape: &Shape) -> Option<Warm> {
        let mut dead = Vec::new();
        let got = {
            let mut st = lock(&self.state);
            let ready = st.ready.get_mut(shape)?;
            let mut got = None;
            while !ready.is_empty() {
                let w = ready.remove(0);
                if w.has_died() {
                    dead.push(w);
                } else {
                    got = Some(w);
                    break;
                }
            }
            got
        };
        drop(dead);
        self.wake.notify_one();
        got
    }

    /// Puts back a sandbox taken but not handed out (the caller was over a limit).
    pub(crate) fn put_back(&self, shape: Shape, w: Warm) {
        lock(&self.state).ready.entry(shape).or_default().insert(0, w);
    }

    /// Guest memory (MiB) of the pooled sandboxes and the one being restored.
    pub(crate) fn memory_mib(&self) -> u64 {
        let st = lock(&self.state);
        let ready: u64 = st.ready.iter().map(|(s, v)| u64::from(s.memory_mib) * v.len() as u64).sum();
        ready + st.filling.as_ref().map_or(0, |s| u64::from(s.memory_mib))
    }

    /// Replaces the targets; sandboxes of shapes no longer wanted (or beyond a smaller size)
    /// are destroyed.
    pub(crate) fn set_targets(&self, targets: BTreeMap<Shape, usize>) {
        let surplus = {
            let mut st = lock(&self.state);
            st.targets = targets.into_iter().filter(|(_, n)| *n > 0).collect();
            let PoolState { targets, last_error, .. } = &mut *st;
            last_error.retain(|s, _| targets.contains_key(s));
            surplus(&mut st)
        };
        drop(surplus);
        self.wake.notify_one();
    }

    /// Destroys every pooled sandbox and wants none.
    pub(crate) fn clear(&self) {
        self.set_targets(BTreeMap::new());
    }
}

/// Removes from the pool what is beyond its targets, dead, or (with `home`) restored from a
/// snapshot that is no longer current; the caller drops them outside the lock.
pub(crate) fn surplus(st: &mut PoolState) -> Vec<Warm> {
    let mut out = Vec::new();
    let targets = st.targets.clone();
    for (shape, ready) in st.ready.iter_mut() {
        let keep = targets.get(shape).copied().unwrap_or(0);
        let mut i = 0;
        while i < ready.len() {
            if ready[i].has_died() {
                out.push(ready.remove(i));
            } else {
                i += 1;
            }
        }
        while ready.len() > keep {
            out.extend(ready.pop());
        }
    }
    st.ready.retain(|_, v| !v.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pool_specs() {
        assert_eq!(parse_spec("").unwrap(), vec![]);
        let v = parse_spec("tiny=4, base=2,tiny:2x512=1").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], PoolEntry { template: "tiny".into(), cpus: None, memory_mib: None, size: 4 });
        assert_eq!(v[2], PoolEntry { template: "tiny".into(), cpus: Some(2), memory_mib: Some(512), size: 1 });
        for bad in ["tiny", "tiny=x", "=3", "tiny=65", "tiny:2=1", "tiny:ax512=1", "tiny=1,tiny=2"] {
            assert!(parse_spec(bad).is_err(), "{bad} accepted");
        }
    }
}
