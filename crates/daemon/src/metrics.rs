//! The daemon's counters, rendered in Prometheus text format.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets it.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the create-latency histogram, in seconds.
pub const BUCKETS: [f64; 13] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0];

/// A histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; 13],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation in seconds.
    pub fn observe(&self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }
}

/// All of the daemon's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Sandboxes alive.
    pub running: Gauge,
    /// Sandboxes created.
    pub creates: Counter,
    /// Create latency.
    pub create_latency: Histogram,
    /// Execs run.
    pub execs: Counter,
    /// Sandboxes reaped by their TTL.
    pub reaps: Counter,
    /// Failures: creates that failed, sandboxes that died.
    pub failures: Counter,
    /// Requests refused by a limit.
    pub limit_refusals: Counter,
    /// Creates served from the warm pool.
    pub pool_hits: Counter,
    /// Creates of a pooled template and shape that found the pool empty.
    pub pool_misses: Counter,
    /// Sandboxes the pool restored.
    pub pool_fills: Counter,
    /// Refills that failed.
    pub pool_fill_failures: Counter,
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
        };
        metric("kiln_sandboxes_running", "gauge", "Sandboxes alive now.", self.running.get().to_string());
        metric("kiln_creates_total", "counter", "Sandboxes created.", self.creates.get().to_string());
        metric("kiln_execs_total", "counter", "Commands run.", self.execs.get().to_string());
        metric("kiln_ttl_reaps_total", "counter", "Sandboxes destroyed when their TTL expired.", self.reaps.get().to_string());
        metric("kiln_failures_total", "counter", "Creates that failed and sandboxes that died.", self.failures.get().to_string());
        metric("kiln_limit_refusals_total", "counter", "Requests refused by a limit.", self.limit_refusals.get().to_string());
        metric("kiln_pool_hits_total", "counter", "Creates served from the warm pool.", self.pool_hits.get().to_string());
        metric("kiln_pool_misses_total", "counter", "Creates of a pooled template and shape that found the pool empty (and restored).", self.pool_misses.get().to_string());
        metric("kiln_pool_fills_total", "counter", "Sandboxes the warm pool restored ahead of time.", self.pool_fills.get().to_string());
        metric("kiln_pool_fill_failures_total", "counter", "Warm pool refills that failed.", self.pool_fill_failures.get().to_string());
        let h = &self.create_latency;
        s.push_str("# HELP kiln_create_seconds Time to create a sandbox.\n# TYPE kiln_create_seconds histogram\n");
        for (i, b) in BUCKETS.iter().enumerate() {
            s.push_str(&format!("kiln_create_seconds_bucket{{le=\"{b}\"}} {}\n", h.counts[i].load(Ordering::Relaxed)));
        }
        let count = h.count.load(Ordering::Relaxed);
        s.push_str(&format!("kiln_create_seconds_bucket{{le=\"+Inf\"}} {count}\n"));
        s.push_str(&format!("kiln_create_seconds_sum {}\n", h.sum_us.load(Ordering::Relaxed) as f64 / 1e6));
        s.push_str(&format!("kiln_create_seconds_count {count}\n"));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.creates.inc();
        m.create_latency.observe(0.12);
        m.running.set(3);
        let t = m.render();
        assert!(t.contains("kiln_sandboxes_running 3\n"), "{t}");
        assert!(t.contains("kiln_create_seconds_bucket{le=\"0.1\"} 0\n"), "{t}");
        assert!(t.contains("kiln_create_seconds_bucket{le=\"0.15\"} 1\n"), "{t}");
        assert!(t.contains("kiln_create_seconds_count 1\n"), "{t}");
    }
}
