//! End-to-end tests of the agent's exec and file logic through `kiln-agent --stdio`, speaking
//! the real protocol on its stdin/stdout.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use kiln_proto::{
    encode, Command as Cmd, ErrorKind, ExecSpec, ExitStatus, FileKind, FrameDecoder, GuestMsg, HostMsg, Identity,
    RequestId, MAX_CHUNK, PROTOCOL_VERSION,
};

const TIMEOUT: Duration = Duration::from_secs(20);

/// An agent process and a demultiplexer of its replies by request id.
struct Agent {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<GuestMsg>,
    pending: HashMap<RequestId, VecDeque<GuestMsg>>,
    next_id: RequestId,
}

impl Agent {
    fn start() -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
            .arg("--stdio")
            .env("KILN_TEST_LEAK", "agent-env")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kiln-agent");
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut dec = FrameDecoder::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match out.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                dec.push(&buf[..n]);
                while let Some(msg) = dec.next::<GuestMsg>().expect("agent sent a bad frame") {
                    msg.validate().expect("agent sent an invalid message");
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
            }
        });
        let stdin = child.stdin.take();
        let mut agent = Agent { child, stdin, rx, pending: HashMap::new(), next_id: 100 };
        let id = agent.id();
        agent.send(&HostMsg::Hello { id, version: PROTOCOL_VERSION });
        assert!(matches!(agent.recv(id), GuestMsg::HelloAck { version: PROTOCOL_VERSION, .. }));
        agent
    }

    fn id(&mut self) -> RequestId {
        self.next_id += 1;
        self.next_id
    }

    fn send(&mut self, msg: &HostMsg) {
        self.send_raw(&encode(msg));
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// The next message for `id`.
    fn recv(&mut self, id: RequestId) -> GuestMsg {
        self.try_recv(id, TIMEOUT).unwrap_or_else(|| panic!("no reply for request {id} within {TIMEOUT:?}"))
    }

    fn try_recv(&mut self, id: RequestId, timeout: Duration) -> Option<GuestMsg> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(msg) = self.pending.get_mut(&id).and_then(VecDeque::pop_front) {
                return Some(msg);
            }
            match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(msg) => self.pending.entry(msg.id()).or_default().push_back(msg),
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => panic!("agent closed its stdout"),
            }
        }
    }

    fn exec(&mut self, spec: ExecSpec) -> RequestId {
        let id = self.id();
        self.send(&HostMsg::Exec { id, spec });
        id
    }

    /// Everything exec `id` sends, up to `Exited` or `Error`.
    fn collect(&mut self, id: RequestId) -> Run {
        self.finish(id, Run::default())
    }

    /// Waits for `Started` of exec `id`.
    fn started(&mut self, id: RequestId) -> Run {
        match self.recv(id) {
            GuestMsg::Started { pid, .. } => Run { pid: Some(pid), ..Run::default() },
            other => panic!("expected Started, got {other:?}"),
        }
    }

    /// The rest of what exec `id` sends, after what `run` holds already.
    fn finish(&mut self, id: RequestId, mut run: Run) -> Run {
        loop {
            match self.recv(id) {
                GuestMsg::Started { pid, .. } => {
                    assert!(run.pid.is_none(), "two Started");
                    run.pid = Some(pid);
                }
                GuestMsg::Stdout { data, .. } => {
                    assert!(run.pid.is_some(), "output before Started");
                    run.stdout.extend(data);
                }
                GuestMsg::Stderr { data, .. } => {
                    assert!(run.pid.is_some(), "output before Started");
                    run.stderr.extend(data);
                }
                GuestMsg::Exited { status, timed_out, duration_ms, .. } => {
                    assert!(run.pid.is_some(), "Exited before Started");
                    run.status = Some(status);
                    run.timed_out = timed_out;
                    run.duration_ms = duration_ms;
                    break;
                }
                GuestMsg::Error { kind, message, .. } => {
                    assert!(run.pid.is_none(), "Error after Started: {message}");
                    run.error = Some((kind, message));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // Nothing may follow Exited.
        assert_eq!(self.try_recv(id, Duration::from_millis(50)), None);
        run
    }

    fn run(&mut self, spec: ExecSpec) -> Run {
        let id = self.exec(spec);
        self.collect(id)
    }

    fn request(&mut self, f: impl FnOnce(RequestId) -> HostMsg) -> GuestMsg {
        let id = self.id();
        self.send(&f(id));
        self.recv(id)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Default)]
struct Run {
    pid: Option<u32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<ExitStatus>,
    timed_out: bool,
    duration_ms: u64,
    error: Option<(ErrorKind, String)>,
}

impl Run {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

fn shell(script: &str) -> ExecSpec {
    ExecSpec { command: Cmd::Shell(script.into()), env: vec![], cwd: None, stdin: false, timeout_ms: None, max_output: None }
}

fn argv(args: &[&str]) -> ExecSpec {
    ExecSpec { command: Cmd::Argv(args.iter().map(|s| s.to_string()).collect()), ..shell("") }
}

/// Pids of live (non-zombie) processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            found.push(pid);
        }
    }
    found
}

/// A marker unlikely to appear in another process's command line: a sleep duration
/// `<whole>.<digits of our pid>`.
fn marker(whole: u32) -> String {
    format!("{whole}.{}", std::process::id())
}

#[test]
fn hello_ping_and_version_mismatch() {
    let mut a = Agent::start();
    assert!(matches!(a.request(|id| HostMsg::Ping { id }), GuestMsg::Pong { .. }));
    match a.request(|id| HostMsg::Hello { id, version: PROTOCOL_VERSION }) {
        GuestMsg::HelloAck { version, agent, kernel, .. } => {
            assert_eq!(version, PROTOCOL_VERSION);
            assert_eq!(agent, env!("CARGO_PKG_VERSION"));
            assert!(!kernel.is_empty());
        }
        other => panic!("unexpected {other:?}"),
    }
    match a.request(|id| HostMsg::Hello { id, version: 99 }) {
        GuestMsg::Error { kind: ErrorKind::InvalidInput, message, .. } => {
            assert!(message.contains("99") && message.contains(&PROTOCOL_VERSION.to_string()), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn stdout_and_stderr_separate_and_ordered() {
    let mut a = Agent::start();
    let run = a.run(shell("for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done"));
    assert_eq!(run.status, Some(ExitStatus::Code(0)));
    assert!(!run.timed_out);
    assert_eq!(run.out(), "out1\nout2\nout3\nout4\nout5\n");
    assert_eq!(String::from_utf8_lossy(&run.stderr), "err1\nerr2\nerr3\nerr4\nerr5\n");
}

#[test]
fn exit_codes() {
    let mut a = Agent::start();
    assert_eq!(a.run(argv(&["true"])).status, Some(ExitStatus::Code(0)));
    assert_eq!(a.run(argv(&["false"])).status, Some(ExitStatus::Code(1)));
    assert_eq!(a.run(shell("exit 3")).status, Some(ExitStatus::Code(3)));
}

#[test]
fn start_failures_are_errors_instead_of_started() {
    let mut a = Agent::start();
    let run = a.run(argv(&["kiln-no-such-command"]));
    let (kind, message) = run.error.expect("an error");
    assert_eq!(kind, ErrorKind::NotFound);
    assert!(message.contains("command not found: kiln-no-such-command"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("not-executable");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = a.run(argv(&[script.to_str().unwrap()]));
    assert_eq!(run.error.expect("an error").0, ErrorKind::PermissionDenied);

    let run = a.run(ExecSpec { cwd: Some("/no/such/kiln/dir".into()), ..argv(&["true"]) });
    let (kind, message) = run.error.expect("an error");
    assert_eq!(kind, ErrorKind::NotFound);
    assert!(message.contains("/no/such/kiln/dir") && message.contains("does not exist"), "{message}");
}

#[test]
fn signals_reach_the_command() {
    let mut a = Agent::start();
    let run = a.run(shell("kill -9 $$"));
    assert_eq!(run.status, Some(ExitStatus::Signal(9)));
    assert!(!run.timed_out);

    let id = a.exec(argv(&["sleep", "100"]));
    let run = a.started(id);
    a.send(&HostMsg::Signal { id, signal: 9 });
    let run = a.finish(id, run);
    assert_eq!(run.status, Some(ExitStatus::Signal(9)));
    assert!(!run.timed_out);

    let id = a.exec(argv(&["sleep", "100"]));
    let run = a.started(id);
    a.send(&HostMsg::Signal { id, signal: libc::SIGTERM });
    assert_eq!(a.finish(id, run).status, Some(ExitStatus::Signal(libc::SIGTERM)));
}

#[test]
fn timeout_kills_the_whole_command() {
    let mut a = Agent::start();
    let m = marker(1000);
    let start = Instant::now();
    let run = a.run(ExecSpec { timeout_ms: Some(1000), ..shell(&format!("sleep {m} & while :; do :; done")) });
    let elapsed = start.elapsed();
    assert!(run.timed_out);
    assert_eq!(run.status, Some(ExitStatus::Signal(9)));
    assert!(elapsed >= Duration::from_millis(1000) && elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(run.duration_ms >= 1000 && run.duration_ms < 3000, "{}", run.duration_ms);
    assert_eq!(processes_with(&m), Vec::<u32>::new(), "background sleep survived the timeout");
}

#[test]
fn background_jobs_die_with_the_command() {
    let mut a = Agent::start();
    let m = marker(999);
    let start = Instant::now();
    let run = a.run(shell(&format!("sleep {m} & echo hi")));
    assert_eq!(run.out(), "hi\n");
    assert_eq!(run.status, Some(ExitStatus::Code(0)));
    // The sleep holds the output pipe: killing it, not the 2 s drain limit, ends the exec.
    assert!(start.elapsed() < Duration::from_millis(1900), "{:?}", start.elapsed());
    assert_eq!(processes_with(&m), Vec::<u32>::new(), "background sleep outlived its command");

    // Also one that let go of the pipes and left the process group.
    let m = marker(998);
    let run = a.run(shell(&format!("setsid sleep {m} >/dev/null 2>&1 </dev/null & exit 0")));
    assert_eq!(run.status, Some(ExitStatus::Code(0)));
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        processes_with(&m).is_empty()
    });
    if !gone {
        // Without cgroups (--stdio on a host without a writable cgroup2 mount) only the process
        // group is killed; a process that called setsid escapes it. Clean up after ourselves.
        for pid in processes_with(&m) {
            // SAFETY: sending a signal to a pid we found running our marker.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let cgroup2 = std::fs::read_to_string("/proc/mounts").unwrap().lines().any(|l| l.contains(" /sys/fs/cgroup cgroup2 "));
        assert!(!cgroup2, "with cgroup2 at /sys/fs/cgroup a setsid escapee must be killed too");
    }
}

#[test]
fn large_output_intact_and_in_order() {
    let mut a = Agent::start();
    let run = a.run(argv(&["seq", "1", "100000"]));
    assert_eq!(run.status, Some(ExitStatus::Code(0)));
    let expected: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(run.stdout.len(), expected.len());
    assert!(run.out() == expected, "output differs");
}

#[test]
fn output_past_max_output_is_drained_not_sent() {
    let mut a = Agent::start();
    // 20 MB is written and read in full (the command is not blocked on a full pipe), but only
    // the first 100,000 bytes are sent.
    let run = a.run(ExecSpec { max_output: Some(100_000), ..shell("head -c 20000000 /dev/zero; echo done >&2") });
    assert_eq!(run.status, Some(ExitStatus::Code(0)));
    assert_eq!(run.stdout.len() + run.stderr.len(), 100_000);
}

#[test]
fn environment_and_working_directory() {
    let mut a = Agent::start();
    let identity = Identity {
        unix_time_ns: 0,
        entropy: vec![1, 2, 3],
        hostname: "ignored-in-stdio".into(),
        machine_id: "0123456789abcdef0123456789abcdef".into(),
        env: vec![("SANDBOX".into(), "yes".into()), ("OVER".into(), "sandbox".into())],
    };
    assert!(matches!(a.request(|id| HostMsg::SetIdentity { id, identity }), GuestMsg::Done { .. }));
    let dir = tempfile::tempdir().unwrap();
    let spec = ExecSpec {
        env: vec![("OVER".into(), "spec".into())],
        cwd: Some(dir.path().to_str().unwrap().into()),
        ..argv(&["sh", "-c", "echo $SANDBOX $OVER $HOME $LANG; echo $PATH; pwd; echo leak=$KILN_TEST_LEAK"])
    };
    let run = a.run(spec);
    assert_eq!(run.status, Some(ExitStatus::Code(0)));
    let canonical = dir.path().canonicalize().unwrap();
    assert_eq!(
        run.out(),
        format!(
            "yes spec /root C.UTF-8\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n{}\nleak=\n",
            canonical.display()
        )
    );
    // A later identity replaces the sandbox environment.
    let identity = Identity { unix_time_ns: 0, entropy: vec![], hostname: String::new(), machine_id: String::new(), env: vec![] };
    assert!(matches!(a.request(|id| HostMsg::SetIdentity { id, identity }), GuestMsg::Done { .. }));
    assert_eq!(a.run(shell("echo \"[$SANDBOX]\"")).out(), "[]\n");
}

#[test]
fn stdin_round_trip_through_cat() {
    let mut a = Agent::start();
    let input: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let id = a.exec(ExecSpec { stdin: true, ..argv(&["cat"]) });
    for chunk in input.chunks(MAX_CHUNK) {
        a.send(&HostMsg::Stdin { id, data: chunk.to_vec() });
    }
    a.send(&HostMsg::StdinEof { id });
    let run = a.collect(id);
    assert_eq!(run.status, Some(ExitStatus::Code(0)));
    assert!(run.stdout == input, "cat changed the data ({} bytes back)", run.stdout.len());

    // Without stdin the command reads /dev/null.
    assert_eq!(a.run(argv(&["cat"])).stdout, b"");
}

#[test]
fn write_and_read_back_ten_mib() {
    let mut a = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/blob.bin");
    let path_s = path.to_str().unwrap().to_string();
    let mut data = vec![0u8; 10 << 20];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut data).unwrap();

    let id = a.id();
    a.send(&HostMsg::FileWrite { id, path: path_s.clone(), mode: 0o640, parents: true });
    for chunk in data.chunks(MAX_CHUNK) {
        a.send(&HostMsg::FileChunk { id, data: chunk.to_vec() });
    }
    a.send(&HostMsg::FileEnd { id });
    assert_eq!(a.recv(id), GuestMsg::Done { id });
    assert!(std::fs::read(&path).unwrap() == data);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o640);

    let id = a.id();
    a.send(&HostMsg::FileRead { id, path: path_s.clone(), max_bytes: 1 << 30 });
    assert_eq!(a.recv(id), GuestMsg::FileInfo { id, size: data.len() as u64, mode: 0o640 });
    let mut back = Vec::new();
    loop {
        match a.recv(id) {
            GuestMsg::FileChunk { data, .. } => back.extend(data),
            GuestMsg::FileEnd { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(back == data, "read back {} bytes that differ", back.len());

    // Too large for the caller's limit.
    match a.request(|id| HostMsg::FileRead { id, path: path_s.clone(), max_bytes: 1000 }) {
        GuestMsg::Error { kind: ErrorKind::InvalidInput, message, .. } => {
            assert!(message.contains(&data.len().to_string()) && message.contains("1000"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
    // Not a regular file.
    let d = dir.path().to_str().unwrap().to_string();
    match a.request(|id| HostMsg::FileRead { id, path: d.clone(), max_bytes: 1000 }) {
        GuestMsg::Error { kind: ErrorKind::InvalidInput, message, .. } => assert!(message.contains("not a regular file")),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn failed_write_replies_once() {
    let mut a = Agent::start();
    let id = a.id();
    a.send(&HostMsg::FileWrite { id, path: "/no/such/kiln/dir/file".into(), mode: 0o644, parents: false });
    a.send(&HostMsg::FileChunk { id, data: b"ignored".to_vec() });
    a.send(&HostMsg::FileEnd { id });
    assert!(matches!(a.recv(id), GuestMsg::Error { kind: ErrorKind::NotFound, .. }));
    assert!(matches!(a.request(|id| HostMsg::Ping { id }), GuestMsg::Pong { .. }));
    assert_eq!(a.try_recv(id, Duration::from_millis(100)), None);
}

#[test]
fn mkdir_list_stat_remove() {
    let mut a = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_str().unwrap().to_string();
    let nested = format!("{base}/a/b/c");
    assert!(matches!(a.request(|id| HostMsg::Mkdir { id, path: nested.clone(), mode: 0o750, parents: true }), GuestMsg::Done { .. }));
    assert_eq!(std::fs::metadata(&nested).unwrap().permissions().mode() & 0o7777, 0o750);
    // Again: fine with parents, AlreadyExists without.
    assert!(matches!(a.request(|id| HostMsg::Mkdir { id, path: nested.clone(), mode: 0o750, parents: true }), GuestMsg::Done { .. }));
    assert!(matches!(
        a.request(|id| HostMsg::Mkdir { id, path: nested.clone(), mode: 0o750, parents: false }),
        GuestMsg::Error { kind: ErrorKind::AlreadyExists, .. }
    ));

    std::fs::write(format!("{base}/a/file"), b"12345").unwrap();
    std::os::unix::fs::symlink("file", format!("{base}/a/link")).unwrap();
    match a.request(|id| HostMsg::List { id, path: format!("{base}/a") }) {
        GuestMsg::Entries { entries, last: true, .. } => {
            let got: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
            assert_eq!(got, [("b", FileKind::Dir), ("file", FileKind::File), ("link", FileKind::Symlink)]);
            assert_eq!(entries[1].size, 5);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        a.request(|id| HostMsg::List { id, path: nested.clone() }),
        GuestMsg::Entries { ref entries, last: true, .. } if entries.is_empty()
    ));
    match a.request(|id| HostMsg::Stat { id, path: format!("{base}/a/file") }) {
        GuestMsg::Stat { stat, .. } => {
            assert_eq!(stat.name, format!("{base}/a/file"));
            assert_eq!((stat.kind, stat.size), (FileKind::File, 5));
        }
        other => panic!("unexpected {other:?}"),
    }

    let top = format!("{base}/a");
    assert!(matches!(a.request(|id| HostMsg::Remove { id, path: top.clone(), recursive: false }), GuestMsg::Error { .. }));
    assert!(matches!(a.request(|id| HostMsg::Remove { id, path: format!("{base}/a/link"), recursive: false }), GuestMsg::Done { .. }));
    assert!(std::fs::metadata(format!("{base}/a/file")).is_ok(), "removing a symlink removed its target");
    assert!(matches!(a.request(|id| HostMsg::Remove { id, path: top.clone(), recursive: true }), GuestMsg::Done { .. }));
    assert!(matches!(a.request(|id| HostMsg::Stat { id, path: top.clone() }), GuestMsg::Error { kind: ErrorKind::NotFound, .. }));
    for root in ["/", "/tmp/.."] {
        assert!(matches!(
            a.request(|id| HostMsg::Remove { id, path: root.into(), recursive: true }),
            GuestMsg::Error { kind: ErrorKind::InvalidInput, .. }
        ));
    }
}

#[test]
fn bad_input_gets_errors_and_the_server_carries_on() {
    let mut a = Agent::start();
    // Invalid request: relative path.
    assert!(matches!(
        a.request(|id| HostMsg::Stat { id, path: "etc/passwd".into() }),
        GuestMsg::Error { kind: ErrorKind::InvalidInput, .. }
    ));
    // A frame that does not decode.
    a.send_raw(&[3, 0, 0, 0, 0xff, 0xff, 0xff]);
    assert!(matches!(a.recv(0), GuestMsg::Error { id: 0, kind: ErrorKind::Protocol, .. }));
    assert!(matches!(a.request(|id| HostMsg::Ping { id }), GuestMsg::Pong { .. }));
    // An oversized frame.
    a.send_raw(&u32::MAX.to_le_bytes());
    assert!(matches!(a.recv(0), GuestMsg::Error { id: 0, kind: ErrorKind::Protocol, .. }));
    assert!(matches!(a.request(|id| HostMsg::Ping { id }), GuestMsg::Pong { .. }));
}

#[test]
fn concurrent_execs() {
    let mut a = Agent::start();
    let slow = a.exec(shell("sleep 0.5; echo slow"));
    let fast = a.exec(shell("echo fast"));
    let fast_run = a.collect(fast);
    assert_eq!(fast_run.out(), "fast\n");
    assert_eq!(a.collect(slow).out(), "slow\n");
}

#[test]
fn eof_on_stdin_kills_commands_and_exits() {
    let mut a = Agent::start();
    let m = marker(997);
    let id = a.exec(argv(&["sleep", &m]));
    a.started(id);
    drop(a.stdin.take());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = a.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "agent did not exit at EOF");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(processes_with(&m), Vec::<u32>::new());
}
