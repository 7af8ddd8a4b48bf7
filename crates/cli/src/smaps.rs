//! Reading a process's memory use from `/proc/PID/smaps`.

/// Memory figures of one process, in KiB.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemUse {
    /// Private_Clean + Private_Dirty over all mappings.
    pub private_kib: u64,
    /// Proportional set size over all mappings.
    pub pss_kib: u64,
    /// Private_Dirty of the mappings whose path ends with the given suffix (guest RAM pages
    /// this process copied on write).
    pub mapping_private_dirty_kib: u64,
}

/// Parses smaps text.
pub fn parse(text: &str, suffix: &str) -> MemUse {
    let mut m = MemUse::default();
    let mut in_target = false;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some(first) = parts.next() else { continue };
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) && !first.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode [path]".
            let path = line.split_whitespace().nth(5).unwrap_or("");
            in_target = !suffix.is_empty() && path.ends_with(suffix);
            continue;
        }
        let kib: u64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match first {
            "Private_Clean:" => m.private_kib += kib,
            "Private_Dirty:" => {
                m.private_kib += kib;
                if in_target {
                    m.mapping_private_dirty_kib += kib;
                }
            }
            "Pss:" => m.pss_kib += kib,
            _ => {}
        }
    }
    m
}

/// Reads `/proc/PID/smaps` (zeros if the process is gone).
pub fn read(pid: u32, suffix: &str) -> MemUse {
    std::fs::read_to_string(format!("/proc/{pid}/smaps")).map(|t| parse(&t, suffix)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_target_mapping() {
        let text = "7f00-7f10 rw-p 00000000 fd:01 123 /run/fork-x/memory\n\
                    Pss: 100 kB\nPrivate_Clean: 4 kB\nPrivate_Dirty: 8 kB\n\
                    5600-5700 rw-p 00000000 00:00 0 \n\
                    Pss: 50 kB\nPrivate_Clean: 0 kB\nPrivate_Dirty: 40 kB\n";
        let m = parse(text, "/memory");
        assert_eq!(m, MemUse { private_kib: 52, pss_kib: 150, mapping_private_dirty_kib: 8 });
    }
}
