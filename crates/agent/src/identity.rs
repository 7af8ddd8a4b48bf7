//! Who the guest is: wall clock, kernel RNG seed, hostname and machine id (`SetIdentity`,
//! sent after boot and after every restore from a snapshot).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::AsRawFd;

use kiln_proto::Identity;

use crate::sys;

/// `RNDADDENTROPY` from `<linux/random.h>`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG` from `<linux/random.h>`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Applies the system-wide parts of an identity, logging (not failing) on each error.
pub fn apply(identity: &Identity) {
    if let Err(e) = set_clock_ns(identity.unix_time_ns) {
        log!("set clock: {e}");
    }
    if !identity.entropy.is_empty() {
        if let Err(e) = add_entropy(&identity.entropy) {
            log!("credit entropy: {e}; mixing it in uncredited");
            if let Err(e) = OpenOptions::new().write(true).open("/dev/urandom").and_then(|mut f| f.write_all(&identity.entropy)) {
                log!("write /dev/urandom: {e}");
            }
        }
        // Clones of one snapshot start with the same CRNG state; new input alone only takes
        // effect at the next periodic reseed, so force one now (boot ids, /dev/urandom and
        // every later random number then differ between clones).
        if let Err(e) = reseed() {
            log!("reseed the kernel RNG: {e}");
        }
    }
    if !identity.hostname.is_empty() {
        if let Err(e) = sys::sethostname(&identity.hostname) {
            log!("sethostname {}: {e}", identity.hostname);
        }
    }
    if is_machine_id(&identity.machine_id) {
        if let Err(e) = std::fs::write("/etc/machine-id", format!("{}\n", identity.machine_id)) {
            log!("write /etc/machine-id: {e}");
        }
    } else if !identity.machine_id.is_empty() {
        log!("ignoring machine id that is not 32 hex digits");
    }
}

/// A machine id is 32 lowercase hex digits (`machine-id(5)`).
fn is_machine_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Sets `CLOCK_REALTIME` to `ns` nanoseconds since the epoch.
pub fn set_clock_ns(ns: u128) -> io::Result<()> {
    let secs = i64::try_from(ns / 1_000_000_000).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let ts = libc::timespec { tv_sec: secs, tv_nsec: (ns % 1_000_000_000) as libc::c_long };
    // SAFETY: `ts` is a valid timespec that outlives the call.
    sys::check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(drop)
}

/// Mixes `bytes` into the kernel RNG and credits them as entropy (needs CAP_SYS_ADMIN).
fn add_entropy(bytes: &[u8]) -> io::Result<()> {
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }, built in u32
    // words so the buffer is suitably aligned.
    let words = bytes.len().div_ceil(4);
    let mut info = vec![0u32; 2 + words];
    info[0] = (bytes.len() * 8) as u32;
    info[1] = bytes.len() as u32;
    for (word, chunk) in info[2..].iter_mut().zip(bytes.chunks(4)) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        *word = u32::from_ne_bytes(w);
    }
    let f = OpenOptions::new().write(true).open("/dev/urandom")?;
    // SAFETY: `info` is a rand_pool_info whose buf_size matches the bytes that follow it, and
    // it outlives the call.
    sys::check(unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) }).map(drop)
}

/// Forces the kernel CRNG to reseed from its input pool (needs CAP_SYS_ADMIN).
fn reseed() -> io::Result<()> {
    let f = OpenOptions::new().write(true).open("/dev/urandom")?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    sys::check(unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_id_shape() {
        assert!(is_machine_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_machine_id("0123456789ABCDEF0123456789ABCDEF"));
        assert!(!is_machine_id("0123"));
        assert!(!is_machine_id("../../../../etc/passwd0123456789a"));
    }
}
