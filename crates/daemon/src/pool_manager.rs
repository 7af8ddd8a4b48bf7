//! The manager's side of the warm pool: the refiller, the admin's settings, and the status
//! that `GET /v1/pool` and `/metrics` show.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_api::{PoolShape, PoolStatus, PoolTarget};
use kiln_core::warm::Warm;
use kiln_core::SandboxOptions;

use crate::access::{Principal, Scope};
use crate::manager::{Manager, ManagerError};
use crate::pool::{surplus, Shape, MAX_POOL};

/// How long the refiller waits when there is nothing to do (it also wakes on every take).
const IDLE: Duration = Duration::from_secs(2);
/// How long it waits after a refill failed.
const BACKOFF: Duration = Duration::from_secs(5);

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Manager {
    /// The shape a create of `template` with these overrides has.
    pub(crate) fn shape_of(def: &kiln_image::TemplateDef, cpus: Option<u32>, memory_mib: Option<u32>) -> Shape {
        Shape { template: def.name.clone(), cpus: cpus.unwrap_or(def.vm.cpus), memory_mib: memory_mib.unwrap_or(def.vm.memory_mib) }
    }

    /// Sets the pool (the admin scope): every template and shape to keep ready, and how many.
    /// The templates must exist (they are built on first refill if they are not); the pool's
    /// guest memory must fit the daemon's limit.
    pub fn set_pool(&self, targets: &[PoolTarget], who: &Principal) -> Result<PoolStatus, ManagerError> {
        if !who.may(Scope::Admin) {
            return Err(ManagerError::Forbidden("setting the warm pool needs the admin scope".into()));
        }
        let mut want = BTreeMap::new();
        for t in targets {
            if t.size > MAX_POOL {
                return Err(ManagerError::Invalid(format!("pool of {}: size {} is over the most, {MAX_POOL}", t.template, t.size)));
            }
            let def = self.template(&t.template, who)?;
            let shape = Self::shape_of(&def, t.cpus, t.memory_mib);
            if !(1..=64).contains(&shape.cpus) || !(64..=65536).contains(&shape.memory_mib) {
                return Err(ManagerError::Invalid(format!("pool of {shape}: cpus must be 1 to 64 and memory_mib 64 to 65536")));
            }
            if want.insert(shape.clone(), t.size).is_some() {
                return Err(ManagerError::Invalid(format!("pool of {shape} is named twice")));
            }
        }
        let mib: u64 = want.iter().map(|(s, n)| u64::from(s.memory_mib) * *n as u64).sum();
        if mib > self.limits.max_memory_mib {
            return Err(ManagerError::Invalid(format!(
                "the pool would hold {mib} MiB of guest memory; the daemon's limit is {} MiB (raise --max-memory, or pool fewer)",
                self.limits.max_memory_mib
            )));
        }
        let detail = want.iter().map(|(s, n)| format!("{s}={n}")).collect::<Vec<_>>().join(", ");
        self.pool.set_targets(want);
        let _ = self.store.event(None, "pool_set", if detail.is_empty() { "no pool" } else { &detail }, &who.name);
        Ok(self.pool_status())
    }

    /// What the pool holds and wants.
    pub fn pool_status(&self) -> PoolStatus {
        let st = lock(&self.pool.state);
        let pools = st
            .targets
            .iter()
            .map(|(s, n)| PoolShape {
                template: s.template.clone(),
                cpus: s.cpus,
                memory_mib: s.memory_mib,
                size: *n,
                ready: st.ready.get(s).map_or(0, Vec::len),
                last_error: st.last_error.get(s).cloned(),
            })
            .collect();
        drop(st);
        PoolStatus { pools, hits: self.metrics.pool_hits.get(), misses: self.metrics.pool_misses.get(), memory_mib: self.pool.memory_mib() }
    }

    /// The pool's lines of `/metrics`.
    pub(crate) fn pool_metrics(&self) -> String {
        let status = self.pool_status();
        let mut s = String::from("# HELP kiln_pool_ready Pooled sandboxes ready, per template and shape.\n# TYPE kiln_pool_ready gauge\n");
        for p in &status.pools {
            s.push_str(&format!("kiln_pool_ready{{template=\"{}\",cpus=\"{}\",memory_mib=\"{}\"}} {}\n", p.template, p.cpus, p.memory_mib, p.ready));
        }
        s.push_str("# HELP kiln_pool_size Pooled sandboxes wanted, per template and shape.\n# TYPE kiln_pool_size gauge\n");
        for p in &status.pools {
            s.push_str(&format!("kiln_pool_size{{template=\"{}\",cpus=\"{}\",memory_mib=\"{}\"}} {}\n", p.template, p.cpus, p.memory_mib, p.size));
        }
        s.push_str(&format!("# HELP kiln_pool_memory_mib Guest memory of pooled sandboxes.\n# TYPE kiln_pool_memory_mib gauge\nkiln_pool_memory_mib {}\n", status.memory_mib));
        s
    }

    /// Starts the refiller: it keeps each pooled template and shape at its size, one restore
    /// at a time, within the memory limit; it drops pooled sandboxes that died or whose
    /// snapshot is no longer current.
    pub fn spawn_pool(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let m = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(m) = m.upgrade() else { return };
                let wait = m.refill_once().await;
                if !wait.is_zero() {
                    let _ = tokio::time::timeout(wait, m.pool.wake.notified()).await;
                }
                if m.pool.closed.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
            }
        })
    }

    /// One step of the refiller; how long to wait before the next.
    pub(crate) async fn refill_once(&self) -> Duration {
        if self.pool.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return IDLE;
        }
        self.drop_stale();
        let (shape, accounted) = {
            let st = lock(&self.pool.state);
            let deficit = st.targets.iter().map(|(s, n)| (s, n.saturating_sub(st.ready.get(s).map_or(0, Vec::len)))).filter(|(_, d)| *d > 0);
            match deficit.max_by_key(|(_, d)| *d) {
                Some((s, _)) => (s.clone(), st.filling.is_some()),
                None => return IDLE,
            }
        };
        if accounted {
            return IDLE;
        }
        if let Err(why) = self.pool_room(u64::from(shape.memory_mib)) {
            lock(&self.pool.state).last_error.insert(shape, why);
            return IDLE;
        }
        lock(&self.pool.state).filling = Some(shape.clone());
        let opts = SandboxOptions { template: shape.template.clone(), cpus: Some(shape.cpus), memory_mib: Some(shape.memory_mib), ..SandboxOptions::default() };
        let r = Warm::prepare(&self.home, &opts, &kiln_image::quiet).await;
        let mut st = lock(&self.pool.state);
        st.filling = None;
        match r {
            Ok(w) if !self.pool.closed.load(std::sync::atomic::Ordering::Relaxed) => {
                self.metrics.pool_fills.inc();
                st.last_error.remove(&shape);
                st.ready.entry(shape).or_default().push(w);
                Duration::ZERO
            }
            Ok(w) => {
                drop(st);
                drop(w);
                IDLE
            }
            Err(e) => {
                self.metrics.pool_fill_failures.inc();
                let why = e.with_causes();
                st.last_error.insert(shape.clone(), why.clone());
                drop(st);
                let _ = self.store.event(None, "pool_failed", &format!("{shape}: {why}"), "kiln");
                BACKOFF
            }
        }
    }

    /// Drops pooled sandboxes that are beyond their target, dead, or restored from a snapshot
    /// that a create would no longer restore.
    fn drop_stale(&self) {
        let shapes: Vec<Shape> = lock(&self.pool.state).ready.keys().cloned().collect();
        let mut stale_shapes = Vec::new();
        for s in shapes {
            // One sandbox of each shape stands for all: they were restored from one snapshot
            // unless it changed meanwhile, and then the oldest is stale first.
            let oldest = {
                let st = lock(&self.pool.state);
                st.ready.get(&s).and_then(|v| v.first()).map(|w| (w.snapshot().to_owned(), w.accel()))
            };
            let Some((snap, accel)) = oldest else { continue };
            if kiln_core::warm::current_snapshot(&self.home, &s.template, accel, s.cpus, s.memory_mib).as_deref() != Some(snap.as_str()) {
                stale_shapes.push((s, snap));
            }
        }
        let gone = {
            let mut st = lock(&self.pool.state);
            let mut gone = Vec::new();
            for (s, snap) in &stale_shapes {
                if let Some(v) = st.ready.get_mut(s) {
                    let (old, keep): (Vec<Warm>, Vec<Warm>) = std::mem::take(v).into_iter().partition(|w| w.snapshot() == snap);
                    *v = keep;
                    gone.extend(old);
                }
            }
            gone.extend(surplus(&mut st));
            gone
        };
        drop(gone);
    }

    /// Whether one more pooled sandbox of `mib` fits the memory limit.
    fn pool_room(&self, mib: u64) -> Result<(), String> {
        let used = self.memory_in_use() + self.pool.memory_mib();
        if used + mib > self.limits.max_memory_mib {
            return Err(format!("waiting for memory: {used} MiB in use, the limit is {} MiB", self.limits.max_memory_mib));
        }
        Ok(())
    }
}
