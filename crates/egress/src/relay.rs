//! Copying bytes both ways between the sandbox and the destination, counted and bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a relay stopped before both sides finished.
#[derive(Debug)]
pub(crate) enum Cut {
    /// No bytes either way for the idle timeout.
    Idle(Duration),
    /// The connection carried its maximum.
    ConnLimit(u64),
    /// The sandbox carried its maximum.
    TotalLimit(u64),
    /// Reading or writing failed.
    Io { side: &'static str, err: std::io::Error },
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cut::Idle(d) => write!(f, "closed after {} s without traffic (idle timeout)", d.as_secs_f64()),
            Cut::ConnLimit(n) => write!(f, "closed at the per-connection limit of {n} bytes"),
            Cut::TotalLimit(n) => write!(f, "closed at the sandbox's egress limit of {n} bytes"),
            Cut::Io { side, err } => write!(f, "{side} connection failed: {err}"),
        }
    }
}

/// Shared accounting of one connection.
pub(crate) struct Meter<'a> {
    pub conn_max: u64,
    pub conn_used: AtomicU64,
    pub total: &'a AtomicU64,
    pub total_max: u64,
    pub up: AtomicU64,
    pub down: AtomicU64,
    start: Instant,
    /// Milliseconds since `start` of the last bytes moved.
    last: AtomicU64,
}

impl<'a> Meter<'a> {
    pub fn new(conn_max: u64, total: &'a AtomicU64, total_max: u64) -> Meter<'a> {
        Meter { conn_max, conn_used: AtomicU64::new(0), total, total_max, up: AtomicU64::new(0), down: AtomicU64::new(0), start: Instant::now(), last: AtomicU64::new(0) }
    }

    /// Reserves up to `n` bytes within both limits; returns how many may pass and, if fewer
    /// than `n` (or the limit is now reached), which limit cut them.
    pub fn take(&self, n: u64) -> (u64, Option<Cut>) {
        let conn = reserve(&self.conn_used, n, self.conn_max);
        let both = reserve(self.total, conn, self.total_max);
        if both < conn {
            self.conn_used.fetch_sub(conn - both, Ordering::Relaxed);
        }
        let cut = if both < n {
            Some(if conn < n { Cut::ConnLimit(self.conn_max) } else { Cut::TotalLimit(self.total_max) })
        } else {
            None
        };
        (both, cut)
    }

    fn touch(&self) {
        self.last.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves when nothing has moved for `idle`.
    async fn idle(&self, idle: Duration) -> Cut {
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let due = self.start + last + idle;
            if Instant::now() >= due {
                return Cut::Idle(idle);
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// Adds up to `n` to `counter` without passing `max`; returns how much was added.
fn reserve(counter: &AtomicU64, n: u64, max: u64) -> u64 {
    let mut got = 0;
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
        got = n.min(max.saturating_sub(used));
        Some(used + got)
    });
    got
}

/// Writes `data` (bytes the proxy forwards on the sandbox's behalf, such as a rewritten request
/// head) to the destination, counted as up and bounded like relayed bytes.
pub(crate) async fn send_up<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8], meter: &Meter<'_>, idle: Duration) -> Result<(), Cut> {
    send(w, data, meter, &meter.up, "destination", idle).await
}

/// Writes `data` (bytes the destination sent before the relay started, such as what an
/// upstream proxy read past its answer) to the sandbox, counted as down and bounded like
/// relayed bytes.
pub(crate) async fn send_down<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8], meter: &Meter<'_>, idle: Duration) -> Result<(), Cut> {
    send(w, data, meter, &meter.down, "sandbox", idle).await
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8], meter: &Meter<'_>, count: &AtomicU64, side: &'static str, idle: Duration) -> Result<(), Cut> {
    if data.is_empty() {
        return Ok(());
    }
    let (n, cut) = meter.take(data.len() as u64);
    let write = async {
        w.write_all(&data[..n as usize]).await?;
        w.flush().await
    };
    match tokio::time::timeout(idle, write).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return Err(Cut::Io { side, err }),
        Err(_) => return Err(Cut::Idle(idle)),
    }
    count.fetch_add(n, Ordering::Relaxed);
    meter.touch();
    cut.map_or(Ok(()), Err)
}

/// Copies both ways until both sides have finished sending (each end of input is passed on as
/// a half close), or until a limit, the idle timeout or an error cuts the connection.
pub(crate) async fn relay<C, U>(client: C, upstream: U, meter: &Meter<'_>, idle: Duration) -> Result<(), Cut>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    relay_up_to(client, upstream, meter, idle, None).await
}

/// Like [`relay`], but at most `up_limit` bytes go from the sandbox to the destination (the
/// rest of a request's body); whatever the sandbox sends after it (a second, smuggled request)
/// is never forwarded.
pub(crate) async fn relay_up_to<C, U>(client: C, upstream: U, meter: &Meter<'_>, idle: Duration, up_limit: Option<u64>) -> Result<(), Cut>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    meter.touch();
    let up = pump(&mut cr, &mut uw, meter, &meter.up, ("sandbox", "destination"), up_limit);
    let down = pump(&mut ur, &mut cw, meter, &meter.down, ("destination", "sandbox"), None);
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => r.map(|_| ()),
        cut = meter.idle(idle) => Err(cut),
    }
}

async fn pump<R, W>(r: &mut R, w: &mut W, meter: &Meter<'_>, count: &AtomicU64, (from, to): (&'static str, &'static str), mut limit: Option<u64>) -> Result<(), Cut>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if limit == Some(0) {
            // All that may pass has passed; what the sender has left is not forwarded.
            return Ok(());
        }
        let want = limit.map_or(buf.len(), |l| buf.len().min(l.try_into().unwrap_or(usize::MAX)));
        let n = r.read(&mut buf[..want]).await.map_err(|err| Cut::Io { side: from, err })?;
        if let Some(l) = limit.as_mut() {
            *l -= n as u64;
        }
        if n == 0 {
            // Pass the half close on; the other direction may still be running.
            let _ = w.shutdown().await;
            return Ok(());
        }
        meter.touch();
        let (ok, cut) = meter.take(n as u64);
        if ok > 0 {
            w.write_all(&buf[..ok as usize]).await.map_err(|err| Cut::Io { side: to, err })?;
            w.flush().await.map_err(|err| Cut::Io { side: to, err })?;
            count.fetch_add(ok, Ordering::Relaxed);
            meter.touch();
        }
        if let Some(cut) = cut {
            return Err(cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_respects_both_limits() {
        let total = AtomicU64::new(0);
        let m = Meter::new(10, &total, 100);
        assert!(matches!(m.take(4), (4, None)));
        assert!(matches!(m.take(6), (6, None)));
        assert!(matches!(m.take(1), (0, Some(Cut::ConnLimit(10)))));
        assert_eq!(total.load(Ordering::Relaxed), 10);

        let total = AtomicU64::new(95);
        let m = Meter::new(10, &total, 100);
        assert!(matches!(m.take(8), (5, Some(Cut::TotalLimit(100)))));
        assert_eq!(m.conn_used.load(Ordering::Relaxed), 5);
        assert_eq!(total.load(Ordering::Relaxed), 100);
    }
}
