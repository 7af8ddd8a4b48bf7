//! Logging to stderr (the serial console when the agent is PID 1) and small helpers that keep
//! PID 1 alive: a lock that ignores poisoning and a thread spawner that never panics.

use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Writes one line to stderr, prefixed with `kiln-agent:`. Never panics, unlike `eprintln!`.
macro_rules! log {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let line = format!("kiln-agent: {}\n", format_args!($($arg)*));
        let _ = ::std::io::stderr().write_all(line.as_bytes());
    }};
}

/// Locks a mutex, recovering the data if another thread panicked while holding it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts a named thread; logs instead of panicking when the thread cannot be created.
pub fn spawn<F>(name: String, f: F) -> Option<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    match std::thread::Builder::new().name(name.clone()).spawn(f) {
        Ok(handle) => Some(handle),
        Err(e) => {
            log!("cannot start thread {name}: {e}");
            None
        }
    }
}

/// Runs `f`, logging instead of propagating a panic, so one bad request cannot end PID 1.
pub fn guarded<F: FnOnce()>(what: &str, f: F) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        log!("panic while handling {what}; carrying on");
    }
}
