//! Parsing the boot inputs: the `kiln.*` kernel parameters and `/kiln/modules.order`.

/// What the kernel command line tells the agent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BootConfig {
    /// `kiln.root=`: the root block device (ext4); stay in the initramfs when absent.
    pub root: Option<String>,
    /// `kiln.hostname=`.
    pub hostname: Option<String>,
    /// `kiln.time=`: seconds since the epoch, to set the clock early.
    pub time: Option<u64>,
}

/// Reads the `kiln.*` parameters of a kernel command line; others are ignored, the last
/// occurrence of a parameter wins, and empty or unparsable values count as absent.
pub fn parse(cmdline: &str) -> BootConfig {
    let mut cfg = BootConfig::default();
    for word in cmdline.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else { continue };
        let value = value.trim_matches('"');
        let text = (!value.is_empty()).then(|| value.to_string());
        match key {
            "kiln.root" => cfg.root = text,
            "kiln.hostname" => cfg.hostname = text,
            "kiln.time" => cfg.time = value.parse().ok(),
            _ => {}
        }
    }
    cfg
}

/// The module file names of a `modules.order`, in order: one per line, blank lines and `#`
/// comments skipped; a line with directories (as in the kernel's own file) keeps its last
/// component, and `.`/`..` are refused so a name cannot leave the modules directory.
pub fn module_list(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.rsplit('/').next())
        .filter(|name| !name.is_empty() && *name != "." && *name != "..")
        .map(str::to_string)
        .collect()
}

/// The parameters the kernel command line gives a module (`name.param=value`, with `-` and `_`
/// alike in the name), as the string `finit_module` takes: what modprobe would pass.
pub fn module_params(cmdline: &str, module_file: &str) -> String {
    let module = module_file.strip_suffix(".ko").unwrap_or(module_file).replace('-', "_");
    cmdline
        .split_whitespace()
        .filter_map(|word| {
            let (name, param) = word.split_once('.')?;
            (name.replace('-', "_") == module && !param.is_empty()).then_some(param)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kiln_params_and_ignores_others() {
        let cfg = parse("console=ttyS0 lpj=123 kiln.root=/dev/vda quiet kiln.hostname=box-1 kiln.time=1700000000\n");
        assert_eq!(
            cfg,
            BootConfig { root: Some("/dev/vda".into()), hostname: Some("box-1".into()), time: Some(1_700_000_000) }
        );
    }

    #[test]
    fn missing_or_bad_values_are_absent() {
        assert_eq!(parse("root=/dev/sda kiln.time=soon kiln.root="), BootConfig::default());
        assert_eq!(parse(""), BootConfig::default());
        assert_eq!(parse("kiln.root=/dev/vda kiln.root=/dev/vdb").root.as_deref(), Some("/dev/vdb"));
        assert_eq!(parse("kiln.hostname=\"quoted\"").hostname.as_deref(), Some("quoted"));
    }

    #[test]
    fn module_list_keeps_order_and_file_names() {
        let text = "virtio_ring.ko\n\n# comment\n  virtio.ko  \nkernel/drivers/virtio/virtio_mmio.ko\n..\nvirtio_console.ko";
        assert_eq!(module_list(text), ["virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "virtio_console.ko"]);
        assert!(module_list("").is_empty());
        assert!(module_list("dir/\n").is_empty());
    }

    #[test]
    fn module_params_come_from_the_cmdline() {
        let cmdline = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 virtio-mmio.device=512@0xfeb00c00:11 virtio_blk.x kiln.root=/dev/vda";
        assert_eq!(module_params(cmdline, "virtio_mmio.ko"), "device=512@0xfeb00e00:12 device=512@0xfeb00c00:11");
        assert_eq!(module_params(cmdline, "virtio_blk.ko"), "x");
        assert_eq!(module_params(cmdline, "virtio_console.ko"), "");
    }
}
