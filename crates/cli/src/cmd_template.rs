//! `kiln template build|ls`.

use clap::Subcommand;
use kiln_image::{rootfs, BuiltTemplate, Home, Kernel, TemplateDef};

use crate::exit;

/// Template commands.
#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// Build a template's root filesystem (and fetch the guest kernel) if not already built.
    Build {
        /// Template name (templates/NAME.toml) or path to a template file.
        name: String,
        /// Rebuild even if an image built from the same file exists.
        #[arg(long)]
        force: bool,
    },
    /// Cold-boot a template once and save a snapshot that `kiln run` restores from.
    Bake {
        /// Template name or path to a template file.
        name: String,
        /// vCPUs of the snapshot (default: the template's).
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory of the snapshot in MiB (default: the template's).
        #[arg(long, value_name = "MiB")]
        memory: Option<u32>,
        /// Accelerator: auto, kvm or tcg.
        #[arg(long, default_value = "auto", env = "KILN_ACCEL")]
        accel: kiln_vmm::AccelChoice,
        /// Bake again even if a valid snapshot exists.
        #[arg(long)]
        force: bool,
    },
    /// List templates: built ones with digest, size and build time, and known unbuilt ones.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a template command.
pub async fn run(cmd: TemplateCmd) -> i32 {
    let home = Home::from_env();
    match cmd {
        TemplateCmd::Build { name, force } => {
            let progress = |m: &str| eprintln!("kiln: {m}");
            let result = tokio::task::spawn_blocking(move || -> Result<BuiltTemplate, kiln_image::ImageError> {
                let def = TemplateDef::find(&name)?;
                Kernel::ensure(&home, &progress)?;
                kiln_image::initramfs::find_agent()?;
                let t0 = std::time::Instant::now();
                let built = rootfs::build(&home, &def, force, &progress)?;
                if t0.elapsed().as_millis() < 50 {
                    eprintln!("kiln: template {} is up to date (built from the same file)", def.name);
                }
                Ok(built)
            })
            .await
            .expect("build task");
            match result {
                Ok(t) => {
                    println!("{}\t{}\t{} MiB", t.name, t.rootfs, t.size_bytes >> 20);
                    0
                }
                Err(e) => exit::report(&e.into()),
            }
        }
        TemplateCmd::Bake { name, cpus, memory, accel, force } => bake(&home, &name, cpus, memory, accel, force).await,
        TemplateCmd::Ls { json } => {
            let built = BuiltTemplate::list(&home);
            if json {
                println!("{}", serde_json::to_string_pretty(&built).expect("json"));
                return 0;
            }
            println!("{:<12} {:<14} {:>9} {:<20} {:>4} {:>7}  DESCRIPTION", "NAME", "DIGEST", "SIZE", "BUILT", "CPUS", "MEMORY");
            for t in &built {
                let when = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.built_at)).to_string();
                println!(
                    "{:<12} {:<14} {:>5} MiB {:<20} {:>4} {:>3} MiB  {}",
                    t.name,
                    t.rootfs.short(),
                    t.size_bytes >> 20,
                    when.trim_end_matches('Z').replace('T', " "),
                    t.cpus,
                    t.memory_mib,
                    t.description
                );
            }
            for n in TemplateDef::known_names() {
                if !built.iter().any(|t| t.name == n) {
                    println!("{n:<12} {:<14} {:>9} {:<20}", "-", "-", "not built (kiln template build NAME)");
                }
            }
            0
        }
    }
}

async fn bake(home: &Home, name: &str, cpus: Option<u32>, memory: Option<u32>, accel: kiln_vmm::AccelChoice, force: bool) -> i32 {
    use kiln_core::snapshot::Expected;
    let progress = |m: &str| eprintln!("kiln: {m}");
    let result = async {
        let artifacts = kiln_core::artifacts::prepare(home, name, &progress)?;
        let cpus = cpus.unwrap_or(artifacts.template.cpus);
        let memory = memory.unwrap_or(artifacts.template.memory_mib);
        let (accel, _) = kiln_core::accel::resolve(home, accel).await?;
        if force {
            let expected = Expected::new(&artifacts, kiln_core::sandbox::qemu_version()?, accel, cpus, memory);
            let dir = home.snapshots().join(expected.dir_name());
            if dir.exists() {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        kiln_core::sandbox::ensure_snapshot(home, &artifacts, accel, cpus, memory, std::time::Duration::from_secs(120), &progress).await
    }
    .await;
    match result {
        Ok(s) => {
            println!("{}\t{}\t{} vCPU\t{} MiB\t{}\tbaked in {} ms", s.meta.made_of.template, s.dir.display(), s.meta.made_of.cpus, s.meta.made_of.memory_mib, s.meta.made_of.accel, s.meta.bake_ms);
            0
        }
        Err(e) => exit::report(&e),
    }
}
