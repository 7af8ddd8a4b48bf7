//! Host randomness for ids, machine identities and guest entropy.

/// Fills a buffer from the kernel's CSPRNG.
pub fn fill(buf: &mut [u8]) {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[off..].as_mut_ptr().cast(), buf.len() - off, 0) };
        if n > 0 {
            off += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            panic!("getrandom failed: {}", std::io::Error::last_os_error());
        }
    }
}

/// `n` random bytes.
pub fn bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    fill(&mut v);
    v
}

/// `n` random bytes as lowercase hex.
pub fn hex(n: usize) -> String {
    hex::encode(bytes(n))
}

#[cfg(test)]
mod tests {
    #[test]
    fn distinct() {
        assert_ne!(super::hex(16), super::hex(16));
        assert_eq!(super::hex(6).len(), 12);
    }
}
