//! A writer for the `newc` cpio format the kernel unpacks as an initramfs.

/// Builds an archive in memory.
#[derive(Debug, Default)]
pub struct CpioWriter {
    out: Vec<u8>,
    ino: u32,
}

impl CpioWriter {
    /// An empty archive.
    pub fn new() -> Self {
        Self { out: Vec::new(), ino: 1 }
    }

    fn header(&mut self, name: &str, mode: u32, size: usize) {
        self.header_dev(name, mode, size, (0, 0));
    }

    fn header_dev(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) {
        let namesize = name.len() + 1;
        let fields = [self.ino, mode, 0, 0, 1, 0, size as u32, 0, 0, rdev.0, rdev.1, namesize as u32, 0];
        self.ino += 1;
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// Adds a directory.
    pub fn dir(&mut self, name: &str, perm: u32) {
        self.header(name, 0o040000 | perm, 0);
    }

    /// Adds a regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.header(name, 0o100000 | perm, data.len());
        self.out.extend_from_slice(data);
        self.pad();
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.header(name, 0o120000 | 0o777, target.len());
        self.out.extend_from_slice(target.as_bytes());
        self.pad();
    }

    /// Adds a character device node.
    pub fn chardev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.header_dev(name, 0o020000 | perm, 0, (major, minor));
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0);
        while !self.out.len().is_multiple_of(512) {
            self.out.push(0);
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_tool_reads_it() {
        let mut w = CpioWriter::new();
        w.dir("kiln", 0o755);
        w.file("kiln/hello", 0o644, b"hi there");
        w.symlink("link", "kiln/hello");
        let bytes = w.finish();
        assert_eq!(bytes.len() % 512, 0);
        // Parse it back by hand: the first header names "kiln".
        assert_eq!(&bytes[..6], b"070701");
        let namesize = u32::from_str_radix(std::str::from_utf8(&bytes[94..102]).unwrap(), 16).unwrap();
        assert_eq!(namesize, 5);
        assert_eq!(&bytes[110..114], b"kiln");
        let Ok(out) = std::process::Command::new("cpio").arg("-it").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn() else {
            return; // cpio(1) not installed: the manual check above stands.
        };
        use std::io::Write;
        let mut out = out;
        out.stdin.take().unwrap().write_all(&bytes).unwrap();
        let listing = String::from_utf8(out.wait_with_output().unwrap().stdout).unwrap();
        assert_eq!(listing.lines().collect::<Vec<_>>(), ["kiln", "kiln/hello", "link"]);
    }
}
