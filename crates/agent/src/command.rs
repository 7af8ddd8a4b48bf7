//! Turning an `ExecSpec` into a process to start: environment, working directory, program and
//! arguments, and the errors reported when it cannot start.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln_proto::{Command as Cmd, ErrorKind, GuestMsg, RequestId};

use crate::errors::{error, kind_of};

/// The environment every command starts from; nothing of the agent's own leaks in.
const DEFAULT_ENV: [(&str, &str); 3] = [
    ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
];

/// The file of the root filesystem that holds its own defaults (`NAME=value` lines: an OCI
/// image's environment, the variables that point tools at extra CAs), written when the
/// template was built.
const IMAGE_ENV_FILE: &str = "/etc/kiln/env";
/// The most of it that is read, and the most entries taken.
const IMAGE_ENV_MAX: u64 = 64 << 10;
const IMAGE_ENV_ENTRIES: usize = 512;

/// The root filesystem's defaults from [`IMAGE_ENV_FILE`], read once (it is part of the
/// template, so it never changes under a running guest); a missing or unreadable file is none.
pub fn image_env() -> &'static [(String, String)] {
    static ENV: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut bytes = Vec::new();
        if let Ok(f) = std::fs::File::open(IMAGE_ENV_FILE) {
            let _ = std::io::Read::read_to_end(&mut std::io::Read::take(f, IMAGE_ENV_MAX), &mut bytes);
        }
        parse_env_file(&String::from_utf8_lossy(&bytes))
    })
}

/// `NAME=value` lines; others are skipped.
fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).take(IMAGE_ENV_ENTRIES).collect()
}

/// The defaults, then the root filesystem's, then the sandbox's environment, then the exec's
/// own: a later entry replaces an earlier one with the same name in place. Names that are
/// empty or contain `=` or NUL are dropped (they cannot be expressed in an environment).
pub fn compose_env(image: &[(String, String)], sandbox: &[(String, String)], spec: &[(String, String)]) -> Vec<(String, String)> {
    let defaults = DEFAULT_ENV.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in defaults.chain(image.iter().cloned()).chain(sandbox.iter().cloned()).chain(spec.iter().cloned()) {
        if k.is_empty() || k.contains(['=', '\0']) {
            continue;
        }
        match env.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => env.push((k, v)),
        }
    }
    env
}

/// The working directory: the requested one (which must be a directory), else `/root` if it
/// exists, else `/`.
pub fn resolve_cwd(id: RequestId, cwd: Option<&str>) -> Result<PathBuf, GuestMsg> {
    match cwd {
        Some(dir) => match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => Ok(PathBuf::from(dir)),
            Ok(_) => Err(error(id, ErrorKind::InvalidInput, format!("working directory {dir} is not a directory"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(error(id, ErrorKind::NotFound, format!("working directory {dir} does not exist")))
            }
            Err(e) => Err(error(id, kind_of(&e), format!("working directory {dir}: {e}"))),
        },
        None if Path::new("/root").is_dir() => Ok(PathBuf::from("/root")),
        None => Ok(PathBuf::from("/")),
    }
}

/// The program to run and its arguments.
pub fn program(command: &Cmd) -> (&str, Vec<&str>) {
    match command {
        Cmd::Shell(script) => ("/bin/sh", vec!["-c", script.as_str()]),
        Cmd::Argv(argv) => {
            let prog = argv.first().map_or("", String::as_str);
            (prog, argv.iter().skip(1).map(String::as_str).collect())
        }
    }
}

/// A `Command` with exactly this environment and directory, stdout and stderr piped, and stdin
/// piped or `/dev/null`. `argv[0]` is looked up in the command's own `PATH`.
pub fn build(command: &Cmd, env: &[(String, String)], cwd: &Path, stdin: bool) -> Command {
    let (prog, args) = program(command);
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The `Error` sent instead of `Started` when the program could not be started.
pub fn spawn_error(id: RequestId, command: &Cmd, e: &io::Error) -> GuestMsg {
    let (prog, _) = program(command);
    let message = match e.kind() {
        io::ErrorKind::NotFound => format!("command not found: {prog}"),
        io::ErrorKind::PermissionDenied => format!("permission denied: {prog}"),
        _ => format!("cannot run {prog}: {e}"),
    };
    error(id, kind_of(e), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn env_layers_override_in_order() {
        let sandbox = pairs(&[("HOME", "/home/ci"), ("CI", "true"), ("TOKEN", "a")]);
        let spec = pairs(&[("TOKEN", "b"), ("PATH", "/opt/bin"), ("X", "")]);
        let env = compose_env(&[], &sandbox, &spec);
        assert_eq!(
            env,
            pairs(&[("PATH", "/opt/bin"), ("HOME", "/home/ci"), ("LANG", "C.UTF-8"), ("CI", "true"), ("TOKEN", "b"), ("X", "")])
        );
        let image = parse_env_file("PATH=/usr/local/go/bin:/usr/bin\nGOPATH=/go\nnot an entry\nCI=image\n");
        let env = compose_env(&image, &sandbox, &[]);
        assert_eq!(
            env,
            pairs(&[("PATH", "/usr/local/go/bin:/usr/bin"), ("HOME", "/home/ci"), ("LANG", "C.UTF-8"), ("GOPATH", "/go"), ("CI", "true"), ("TOKEN", "a")])
        );
    }

    #[test]
    fn env_defaults_and_bad_names() {
        let env = compose_env(&[], &[], &pairs(&[("", "x"), ("A=B", "y"), ("N\0UL", "z")]));
        assert_eq!(env, pairs(&DEFAULT_ENV));
    }

    #[test]
    fn program_of_shell_and_argv() {
        assert_eq!(program(&Cmd::Shell("echo hi".into())), ("/bin/sh", vec!["-c", "echo hi"]));
        assert_eq!(program(&Cmd::Argv(vec!["ls".into(), "-l".into()])), ("ls", vec!["-l"]));
        assert_eq!(program(&Cmd::Argv(vec![])), ("", vec![]));
    }

    #[test]
    fn cwd_defaults_and_errors() {
        let root = if Path::new("/root").is_dir() { "/root" } else { "/" };
        assert_eq!(resolve_cwd(1, None).unwrap(), PathBuf::from(root));
        assert_eq!(resolve_cwd(1, Some("/")).unwrap(), PathBuf::from("/"));
        match resolve_cwd(2, Some("/no/such/dir/kiln")) {
            Err(GuestMsg::Error { id: 2, kind: ErrorKind::NotFound, message }) => assert!(message.contains("does not exist")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn spawn_errors_name_the_program() {
        let cmd = Cmd::Argv(vec!["nope".into()]);
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(spawn_error(3, &cmd, &e), error(3, ErrorKind::NotFound, "command not found: nope"));
        let e = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(spawn_error(3, &cmd, &e), error(3, ErrorKind::PermissionDenied, "permission denied: nope"));
    }
}
