//! The record of every connection a sandbox attempted, for its CI report.

use std::sync::Mutex;

/// Records an [`EgressLog`] keeps by default; later ones are only counted.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// One connection attempt. The record and the log's contents are wire shapes (the sandbox's
/// egress route, the CI report), so they are `kiln-api`'s.
pub use kiln_api::EgressAttempt as Attempt;
/// A copy of an [`EgressLog`]'s contents, ready to serialize into a report.
pub use kiln_api::EgressLog as LogSnapshot;

/// Thread-safe, bounded log of [`Attempt`]s: the first `capacity` are kept, later ones only
/// counted in `dropped`.
#[derive(Debug)]
pub struct EgressLog {
    capacity: usize,
    inner: Mutex<LogSnapshot>,
}

impl Default for EgressLog {
    fn default() -> Self {
        EgressLog::new()
    }
}

impl EgressLog {
    /// A log keeping [`DEFAULT_CAPACITY`] records.
    pub fn new() -> EgressLog {
        EgressLog::with_capacity(DEFAULT_CAPACITY)
    }

    /// A log keeping at most `capacity` records.
    pub fn with_capacity(capacity: usize) -> EgressLog {
        EgressLog { capacity, inner: Mutex::new(LogSnapshot::default()) }
    }

    /// Adds one attempt (or counts it as dropped if the log is full).
    pub fn record(&self, attempt: Attempt) {
        let mut inner = self.lock();
        if inner.attempts.len() < self.capacity {
            inner.attempts.push(attempt);
        } else {
            inner.dropped += 1;
        }
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> LogSnapshot {
        self.lock().clone()
    }

    /// Everything recorded so far, leaving the log empty (and the dropped count at 0).
    pub fn take(&self) -> LogSnapshot {
        std::mem::take(&mut *self.lock())
    }

    /// Attempts kept.
    pub fn len(&self) -> usize {
        self.lock().attempts.len()
    }

    /// True if nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogSnapshot> {
        // A panic while holding the lock cannot leave the Vec inconsistent: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(port: u16) -> Attempt {
        Attempt { method: "CONNECT".into(), host: "example.com".into(), port, allowed: true, reason: None, bytes_up: 1, bytes_down: 2, started_unix_ms: 3, duration_ms: 4, via: None }
    }

    #[test]
    fn bounded_then_counts() {
        let log = EgressLog::with_capacity(3);
        for p in 1..=5 {
            log.record(attempt(p));
        }
        let s = log.snapshot();
        assert_eq!(s.attempts.iter().map(|a| a.port).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(s.dropped, 2);
        assert_eq!(log.len(), 3);
        let taken = log.take();
        assert_eq!(taken, s);
        assert!(log.is_empty());
        assert_eq!(log.snapshot().dropped, 0);
    }

    #[test]
    fn default_capacity_and_json() {
        let log = EgressLog::new();
        for _ in 0..DEFAULT_CAPACITY + 7 {
            log.record(attempt(443));
        }
        let s = log.snapshot();
        assert_eq!((s.attempts.len(), s.dropped), (DEFAULT_CAPACITY, 7));
        let v = serde_json::to_value(&s.attempts[0]).unwrap();
        assert_eq!(v, serde_json::json!({"method": "CONNECT", "host": "example.com", "port": 443, "allowed": true, "reason": null, "bytes_up": 1, "bytes_down": 2, "started_unix_ms": 3, "duration_ms": 4}));
    }
}
