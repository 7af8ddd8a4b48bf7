"""Unit tests of the SDK against the fake daemon in fake_server.py (no VMs, no network)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Iterator

import pytest

import kiln
from kiln import (
    AuthError,
    BadRequestError,
    Client,
    ConflictError,
    KilnConnectionError,
    KilnError,
    KilnTimeoutError,
    LimitError,
    NotFoundError,
    Sandbox,
    SandboxFailedError,
)
from kiln.client import default_host, parse_host
from kiln.errors import error_from_response
from kiln.stream import SSEParser, iter_events

from fake_server import FakeDaemon

SDK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDaemon]:
    """A fake daemon on a loopback port, reached through KILN_HOST."""
    with FakeDaemon() as daemon:
        monkeypatch.setenv("KILN_HOST", daemon.host)
        monkeypatch.delenv("KILN_TOKEN", raising=False)
        yield daemon


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A folder with a short path (unix socket paths are limited to 107 bytes)."""
    d = tempfile.mkdtemp(prefix="kiln-t-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def last(fake: FakeDaemon, method: str, suffix: str) -> dict:
    """The JSON body of the last request ``method`` whose path ends with ``suffix``."""
    r = [r for r in fake.requests if r.method == method and r.path.endswith(suffix)][-1]
    return json.loads(r.body) if r.body else {}


# -- create, connect, list and the context manager --------------------------------------------


def test_create_sends_the_spec_body_and_parses_the_sandbox(fake: FakeDaemon) -> None:
    sbx = Sandbox.create(template="tiny", ttl_seconds=300, cpus=2, env={"A": "1"}, forkable=True)
    assert last(fake, "POST", "/v1/sandboxes") == {"template": "tiny", "ttl_seconds": 300, "cpus": 2,
                                                   "env": {"A": "1"}, "forkable": True}
    assert sbx.id.startswith("sbx-") and sbx.info.template == "tiny" and sbx.info.state == "running"
    assert sbx.info.cpus == 2 and sbx.info.memory_mib == 64 and sbx.info.mode == "restored"
    assert sbx.info.deadline is not None and sbx.info.deadline - time.time() > 290
    assert sbx.id in repr(sbx) and "tiny" in repr(sbx)
    assert sbx.exec("printenv A").stdout == "1\n"
    assert [i.id for i in Sandbox.list()] == [sbx.id]
    assert Sandbox.connect(sbx.id).info == sbx.info
    sbx.kill()
    assert Sandbox.list() == []


def test_create_from_an_image_sends_the_image_and_no_template(fake: FakeDaemon) -> None:
    with Sandbox.create(image="127.0.0.1:5000/ci/app:1", ttl_seconds=60):
        pass
    body = last(fake, "POST", "/v1/sandboxes")
    assert body["image"] == "127.0.0.1:5000/ci/app:1" and "template" not in body


def test_with_block_kills_on_success(fake: FakeDaemon) -> None:
    with Sandbox.create(template="tiny", ttl_seconds=60) as sbx:
        assert sbx.exec("echo hi").stdout == "hi\n"
    assert fake.deleted == [sbx.id] and not fake.sandboxes


def test_with_block_kills_when_the_build_fails(fake: FakeDaemon) -> None:
    with Sandbox.create(template="tiny") as sbx:
        result = sbx.exec("echo broken >&2; exit 3")
    assert (result.exit_code, result.stderr, result.ok) == (3, "broken\n", False)
    assert fake.deleted == [sbx.id]


def test_with_block_kills_on_exception_and_reraises_it(fake: FakeDaemon) -> None:
    with pytest.raises(ZeroDivisionError):
        with Sandbox.create(template="tiny") as sbx:
            1 / 0
    assert fake.deleted == [sbx.id]


def test_with_block_ignores_an_already_killed_sandbox(fake: FakeDaemon) -> None:
    with Sandbox.create(template="tiny") as sbx:
        sbx.kill()
    assert fake.deleted == [sbx.id]


def test_with_block_never_masks_the_original_exception(fake: FakeDaemon) -> None:
    with pytest.raises(RuntimeError, match="the build blew up") as info:
        with Sandbox.create(template="tiny") as sbx:
            fake.fail_next(502, "sandbox_failed", "the VM is wedged", path_contains=sbx.id)
            raise RuntimeError("the build blew up")
    assert any("the VM is wedged" in n for n in getattr(info.value, "__notes__", []))


def test_with_block_raises_a_kill_failure_after_success(fake: FakeDaemon) -> None:
    with pytest.raises(SandboxFailedError, match="wedged"):
        with Sandbox.create(template="tiny") as sbx:
            fake.fail_next(502, "sandbox_failed", "the VM is wedged", path_contains=sbx.id)


def test_connect_unknown_sandbox_raises_not_found(fake: FakeDaemon) -> None:
    with pytest.raises(NotFoundError, match="sbx-nope") as info:
        Sandbox.connect("sbx-nope")
    assert (info.value.status, info.value.code) == (404, "not_found")


def test_refresh_extend_and_fork(fake: FakeDaemon) -> None:
    with Sandbox.create(template="tiny", ttl_seconds=10, forkable=True) as sbx:
        info = sbx.extend(600)
        assert last(fake, "POST", "/extend") == {"ttl_seconds": 600}
        assert info.deadline is not None and info.deadline - time.time() > 590 and sbx.refresh() == info
        sbx.filesystem.write("/work/a", "parent")
        a, b = sbx.fork(count=2)
        assert last(fake, "POST", "/fork") == {"count": 2}
        assert (a.info.mode, a.info.parent) == ("forked", sbx.id) and a.id != b.id
        a.filesystem.write("/work/only-a", "x")
        assert b.filesystem.read_text("/work/a") == "parent" and not b.filesystem.exists("/work/only-a")
        for clone in (a, b):
            clone.kill()


def test_fork_of_a_non_forkable_sandbox_is_a_conflict(fake: FakeDaemon) -> None:
    with Sandbox.create(template="tiny") as sbx:
        with pytest.raises(ConflictError, match="forkable"):
            sbx.fork()


# -- exec --------------------------------------------------------------------------------------


def test_exec_blocking_shell_argv_env_cwd_stdin(fake: FakeDaemon) -> None:
    with Sandbox.create(template="tiny") as sbx:
        r = sbx.exec("echo hello world")
        assert (r.stdout, r.stderr, r.exit_code, r.timed_out, r.ok) == ("hello world\n", "", 0, False, True)
        assert last(fake, "POST", "/exec") == {"cmd": "echo hello world"}
        r = sbx.exec(["echo", "a b"], env={"K": "V"}, cwd="/src", stdin=b"in", timeout_seconds=5.0)
        assert r.stdout == "a b\n"
        assert last(fake, "POST", "/exec") == {"argv": ["echo", "a b"], "env": {"K": "V"}, "cwd": "/src",
                                               "timeout_seconds": 5, "stdin": "in"}
        assert sbx.exec("pwd", cwd="/src").stdout == "/src\n"
        assert sbx.exec("cat", stdin="piped\n").stdout == "piped\n"
        assert sbx.exec("printenv K", env={"K": "V"}).stdout == "V\n"
        assert sbx.exec("nosuchcmd").exit_code == 127
        sbx.exec("true", timeout_seconds=1.5)
        assert last(fake, "POST", "/exec")["timeout_seconds"] == 1.5


def test_exec_timeout_reports_timed_out(fake: FakeDaemon) -> None:
    with Sandbox.create(template="tiny") as sbx:
        r = sbx.exec("while true; do :; done", timeout_seconds=2)
        assert (r.timed_out, r.exit_code, r.ok) == (True, 124, False)


def test_exec_rejects_empty_argv_and_non_utf8_stdin(fake: FakeDaemon) -> None:
    with Sandbox.create(template="tiny") as sbx:
        with pytest.raises(ValueError):
            sbx.exec([])
        with pytest.raises(ValueError, match="UTF-8"):
            sbx.exec("cat", stdin=b"\xff")
        with pytest.raises(ValueError, match="max_output_bytes"):
            sbx.exec("true", max_output_bytes=0)


def test_exec_sends_the_output_cap(fake: FakeDaemon) -> None:
    with Sandbox.create(template="tiny") as sbx:
        sbx.exec("true", max_output_bytes=4096)
        assert last(fake, "POST", "/exec") == {"cmd": "true", "max_output_bytes": 4096}


def test_exec_stream_calls_back_and_accumulates(fake: FakeDaemon) -> None:
    out: list[str] = []
    err: list[str] = []
    with Sandbox.create(template="tiny") as sbx:
        r = sbx.exec("echo one; echo two >&2; echo three; exit 4", on_stdout=out.append, on_stderr=err.append)
    assert out == ["one\n", "three\n"] and err == ["two\n"]
    assert (r.stdout, r.stderr, r.exit_code, r.timed_out) == ("one\nthree\n", "two\n", 4, False)
    assert fake.requests[-2].path.endswith("/exec/stream")
    assert fake.requests[-2].headers["Accept"] == "text/event-stream"


def test_exec_stream_only_stderr_callback_still_streams(fake: FakeDaemon) -> None:
    err: list[str] = []
    with Sandbox.create(template="tiny") as sbx:
        r = sbx.exec("echo out; echo err >&2", on_stderr=err.append)
    assert err == ["err\n"] and r.stdout == "out\n"


def test_exec_stream_joins_a_utf8_character_split_across_chunks(fake: FakeDaemon) -> None:
    fake.script_stream([("stdout", b"caf\xc3"), ("stdout", b"\xa9 \xe2\x82"), ("stdout", b"\xac\n"),
                        ("stderr", b"\xf0\x9f"), ("stderr", b"\x94\xa5"),
                        ("exit", {"exit_code": 0, "timed_out": False, "duration_ms": 7})])
    out: list[str] = []
    err: list[str] = []
    with Sandbox.create(template="tiny") as sbx:
        r = sbx.exec("anything", on_stdout=out.append, on_stderr=err.append)
    assert "".join(out) == r.stdout == "café €\n"
    assert "".join(err) == r.stderr == "\U0001f525"
    assert all("\ufffd" not in c for c in out + err)
    assert (r.exit_code, r.duration_ms) == (0, 7)


def test_exec_stream_delivers_chunks_as_they_arrive(fake: FakeDaemon) -> None:
    gate = threading.Event()
    fake.script_stream([("stdout", b"first\n"), ("wait", gate), ("stdout", b"second\n"),
                        ("exit", {"exit_code": 0, "timed_out": False, "duration_ms": 1})])
    seen: list[str] = []

    def on_stdout(text: str) -> None:
        seen.append(text)
        gate.set()  # the fake sends the rest only once the first chunk reached us

    with Sandbox.create(template="tiny") as sbx:
        r = sbx.exec("anything", on_stdout=on_stdout)
    assert seen == ["first\n", "second\n"] and r.stdout == "first\nsecond\n"


def test_exec_stream_error_event_raises_sandbox_failed(fake: FakeDaemon) -> None:
    fake.script_stream([("stdout", b"partial\n"),
                        ("error", {"code": "sandbox_failed", "message": "the VM died (qemu exited 137)"})])
    out: list[str] = []
    with Sandbox.create(template="tiny") as sbx:
        with pytest.raises(SandboxFailedError, match="qemu exited 137") as info:
            sbx.exec("anything", on_stdout=out.append)
    assert out == ["partial\n"] and info.value.code == "sandbox_failed"


def test_exec_stream_cut_short_raises_sandbox_failed(fake: FakeDaemon) -> None:
    fake.script_stream([("stdout", b"partial\n")])
    with Sandbox.create(template="tiny") as sbx:
        with pytest.raises(SandboxFailedError, match="without an exit event"):
            sbx.exec("anything", on_stdout=lambda _: None)


def test_exec_stream_http_error_is_mapped(fake: FakeDaemon) -> None:
    with Sandbox.create(template="tiny") as sbx:
        fake.fail_next(409, "conflict", "the sandbox is paused", path_contains="/exec/stream")
        with pytest.raises(ConflictError, match="paused"):
            sbx.exec("echo x", on_stdout=print)


def test_sse_parser_follows_the_event_stream_rules() -> None:
    text = (b": a comment\r\nevent: stdout\r\ndata:{\"b64\":\r\ndata: \"\"}\r\n\r\n"
            b"data: plain\n\nevent: exit\ndata: {}\n")  # the last event lacks its blank line
    lines = iter(text.splitlines(keepends=True))
    events = list(iter_events(lambda: next(lines, b"")))
    assert [(e.event, e.data) for e in events] == [("stdout", '{"b64":\n""}'), ("message", "plain"), ("exit", "{}")]
    p = SSEParser()
    assert p.feed("event: x") is None and p.feed("") is None  # no data: nothing dispatched


# -- files -------------------------------------------------------------------------------------


def test_files_round_trip_binary_and_modes(fake: FakeDaemon) -> None:
    blob = bytes(range(256)) * 64 + os.urandom(65536)
    with Sandbox.create(template="tiny") as sbx:
        fs = sbx.filesystem
        fs.write("/data/blob.bin", blob, mode=0o600)
        put = [r for r in fake.requests if r.method == "PUT"][-1]
        assert put.query == {"path": "/data/blob.bin", "mode": "384"} and put.body == blob
        assert put.headers["Content-Type"] == "application/octet-stream"
        assert fs.read("/data/blob.bin") == blob
        fs.write("/data/t.txt", "héllo\n")
        assert [r for r in fake.requests if r.method == "PUT"][-1].query["mode"] == "420"
        assert fs.read_text("/data/t.txt") == "héllo\n"
        st = fs.stat("/data/blob.bin")
        assert (st.kind, st.size, st.mode, st.is_file, st.is_dir) == ("file", len(blob), 0o600, True, False)
        fs.mkdir("/data/sub/deeper")
        assert [r for r in fake.requests if r.path.endswith("/mkdir")][-1].query["mode"] == "493"
        assert [(e.name, e.kind) for e in fs.list("/data")] == [("blob.bin", "file"), ("sub", "dir"), ("t.txt", "file")]
        fs.remove("/data/t.txt")
        assert not fs.exists("/data/t.txt")
        with pytest.raises(ConflictError):
            fs.remove("/data/sub")
        fs.remove("/data/sub", recursive=True)
        assert [r for r in fake.requests if r.method == "DELETE"][-1].query["recursive"] == "true"
        with pytest.raises(NotFoundError):
            fs.read("/data/t.txt")


def test_file_paths_are_url_encoded(fake: FakeDaemon) -> None:
    odd = "/tmp/a b&c=d?e#f+g%h/ünï"
    with Sandbox.create(template="tiny") as sbx:
        sbx.filesystem.write(odd, b"x")
        assert sbx.filesystem.read(odd) == b"x"
    raw = [r for r in fake.requests if r.method == "PUT"][-1]
    assert raw.query["path"] == odd


def test_relative_and_traversal_paths_are_bad_requests(fake: FakeDaemon) -> None:
    with Sandbox.create(template="tiny") as sbx:
        for path in ("../etc/passwd", "etc/passwd", "/tmp/../../etc/passwd"):
            with pytest.raises(BadRequestError, match="etc/passwd"):
                sbx.filesystem.read(path)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status,code,cls", [
    (400, "bad_request", BadRequestError),
    (401, "unauthorized", AuthError),
    (404, "not_found", NotFoundError),
    (409, "conflict", ConflictError),
    (413, "too_large", BadRequestError),
    (429, "limit", LimitError),
    (500, "internal", KilnError),
    (502, "sandbox_failed", SandboxFailedError),
])
def test_error_bodies_map_to_exceptions(fake: FakeDaemon, status: int, code: str, cls: type) -> None:
    fake.fail_next(status, code, f"message for {status}: what to do")
    with pytest.raises(cls) as info:
        Sandbox.create(template="tiny")
    e = info.value
    assert isinstance(e, KilnError) and type(e) is cls
    assert (e.status, e.code, e.message, str(e)) == (status, code, f"message for {status}: what to do",
                                                     f"message for {status}: what to do")


def test_natural_errors_from_the_fake(fake: FakeDaemon) -> None:
    with pytest.raises(BadRequestError, match="no-such-template"):
        Sandbox.create(template="no-such-template")
    with pytest.raises(BadRequestError, match="ttl_seconds"):
        Sandbox.create(template="tiny", ttl_seconds=-5)
    fake.max_sandboxes = 1
    with Sandbox.create(template="tiny"):
        with pytest.raises(LimitError, match="limit"):
            Sandbox.create(template="tiny")


def test_error_bodies_that_are_not_json() -> None:
    e = error_from_response(502, b"<html>Bad Gateway</html>", "Bad Gateway")
    assert isinstance(e, SandboxFailedError) and e.message == "<html>Bad Gateway</html>" and e.code == "sandbox_failed"
    e = error_from_response(503, b"", "Service Unavailable")
    assert type(e) is KilnError and e.message == "HTTP 503 Service Unavailable" and e.status == 503


def test_a_read_cut_short_is_a_sandbox_failure(fake: FakeDaemon) -> None:
    with Sandbox.create(template="tiny") as sbx:
        sbx.filesystem.write("/big", b"x" * 10000)
        fake.truncate_reads = True
        with pytest.raises(SandboxFailedError, match="5000 bytes received, 5000 more expected"):
            sbx.filesystem.read("/big")


def test_a_slow_daemon_raises_a_timeout(fake: FakeDaemon) -> None:
    fake.delay = 1.0
    with pytest.raises(KilnTimeoutError, match="did not answer"):
        Sandbox.list(client=Client(fake.host, timeout=0.2))
    fake.delay = 0.0


def test_connection_error_when_no_socket(monkeypatch: pytest.MonkeyPatch, short_dir: str) -> None:
    sock = os.path.join(short_dir, "kiln.sock")
    monkeypatch.setenv("KILN_HOST", "unix://" + sock)
    with pytest.raises(KilnConnectionError) as info:
        Sandbox.create(template="tiny")
    msg = str(info.value)
    assert msg.startswith(f"cannot reach the kiln daemon at unix://{sock}")
    assert msg.endswith("start it with `kiln serve` (or set KILN_HOST)")


def test_connection_error_when_nothing_listens_on_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv("KILN_HOST", f"http://127.0.0.1:{port}")
    with pytest.raises(KilnConnectionError, match=f"127.0.0.1:{port} .*connection refused.*kiln serve"):
        Sandbox.list()


def test_connection_error_names_the_default_socket(monkeypatch: pytest.MonkeyPatch, short_dir: str) -> None:
    monkeypatch.delenv("KILN_HOST", raising=False)
    monkeypatch.setenv("KILN_HOME", short_dir)
    with pytest.raises(KilnConnectionError, match=f"unix://{short_dir}/kiln.sock"):
        kiln.list_templates()


# -- KILN_HOST, tokens and the unix transport ----------------------------------------------------


def test_parse_host() -> None:
    assert parse_host("unix:///run/kiln/kiln.sock").path == "/run/kiln/kiln.sock"
    assert parse_host("/tmp/k.sock").is_unix
    ep = parse_host("http://127.0.0.1:7777")
    assert (ep.scheme, ep.host, ep.port, ep.prefix, str(ep)) == ("http", "127.0.0.1", 7777, "", "http://127.0.0.1:7777")
    assert parse_host("http://kiln.internal/api/").prefix == "/api" and parse_host("http://h").port == 80
    assert parse_host("http://[::1]:7777").host == "::1"
    for bad in ("unix://relative.sock", "ftp://h:1", "127.0.0.1:7777", "http://h:notaport"):
        with pytest.raises(ValueError):
            parse_host(bad)


def test_default_host(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("KILN_HOST", "KILN_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", "/home/u")
    assert default_host() == "unix:///home/u/.local/share/kiln/kiln.sock"
    monkeypatch.setenv("XDG_DATA_HOME", "/xdg")
    assert default_host() == "unix:///xdg/kiln/kiln.sock"
    monkeypatch.setenv("KILN_HOME", "/srv/kiln")
    assert default_host() == "unix:///srv/kiln/kiln.sock"
    monkeypatch.setenv("KILN_HOST", "http://10.0.0.1:7777")
    assert default_host() == "http://10.0.0.1:7777" and Client().endpoint.port == 7777


def test_http_sends_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeDaemon(token="s3cret") as fake:
        monkeypatch.setenv("KILN_HOST", fake.host)
        monkeypatch.delenv("KILN_TOKEN", raising=False)
        with pytest.raises(AuthError, match="KILN_TOKEN"):
            Sandbox.list()
        assert "Authorization" not in fake.requests[-1].headers
        monkeypatch.setenv("KILN_TOKEN", "s3cret")
        assert Sandbox.list() == []
        assert fake.requests[-1].headers["Authorization"] == "Bearer s3cret"
        assert Client(fake.host, token="other").health() == {"status": "ok"}  # /healthz needs none
        with pytest.raises(AuthError):
            Sandbox.list(client=Client(fake.host, token="other"))


def test_unix_socket_transport(monkeypatch: pytest.MonkeyPatch, short_dir: str) -> None:
    with FakeDaemon(unix_path=os.path.join(short_dir, "kiln.sock")) as fake:
        monkeypatch.setenv("KILN_HOST", fake.host)
        monkeypatch.setenv("KILN_TOKEN", "not-for-unix")
        with Sandbox.create(template="tiny") as sbx:
            assert sbx.exec("echo over unix").stdout == "over unix\n"
            got: list[str] = []
            sbx.exec("echo streamed", on_stdout=got.append)
            assert got == ["streamed\n"]
            sbx.filesystem.write("/f", b"\x00\x01")
            assert sbx.filesystem.read("/f") == b"\x00\x01"
        assert fake.deleted == [sbx.id]
        assert all("Authorization" not in r.headers for r in fake.requests)
        assert fake.requests[0].headers["Host"] == "localhost"


# -- templates and the example ---------------------------------------------------------------------


def test_templates(fake: FakeDaemon) -> None:
    templates = kiln.list_templates()
    assert [(t.name, t.built) for t in templates] == [("tiny", True), ("base", True), ("unbuilt", False)]
    assert templates[2].digest is None and templates[2].built_at is None
    t = kiln.build_template("tiny", force=True)
    assert (t.name, t.memory_mib, t.digest) == ("tiny", 64, "sha256:" + "tiny" * 4)
    assert last(fake, "POST", "/build") == {"force": True}
    b = kiln.bake_template("tiny")
    assert (b.template, b.snapshot, b.bake_ms) == ("tiny", "snap-tiny", 1234)
    with pytest.raises(NotFoundError, match="nope"):
        kiln.build_template("nope")


def test_example_propagates_the_exit_code_and_kills_the_vm(fake: FakeDaemon) -> None:
    env = {**os.environ, "KILN_HOST": fake.host, "PYTHONPATH": SDK_DIR}
    p = subprocess.run([sys.executable, os.path.join(SDK_DIR, "examples", "build_project.py"), "tiny"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 127, p.stderr  # the fake shell knows no compiler
    assert "cc: not found" in p.stderr
    assert len(fake.deleted) == 1 and not fake.sandboxes
