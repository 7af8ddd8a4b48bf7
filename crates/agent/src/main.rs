//! `kiln-agent`: the guest's PID 1 for kiln sandboxes; see the library for how it works.

fn main() {
    // SAFETY: getpid has no arguments and cannot fail.
    if unsafe { libc::getpid() } == 1 {
        kiln_agent::run_pid1();
    }
    match std::env::args().nth(1).as_deref() {
        Some("--stdio") => kiln_agent::run_stdio(),
        Some("--version") => println!("kiln-agent {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!("usage: kiln-agent --stdio   (serve the kiln protocol on stdin/stdout)");
            eprintln!("       as PID 1 it boots the guest and serves on the virtio port `{}`", kiln_proto::CONTROL_PORT);
            std::process::exit(2);
        }
    }
}
