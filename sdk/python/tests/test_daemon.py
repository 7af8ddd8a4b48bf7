"""Integration tests against a real daemon (`kiln serve`), which boot real microVMs.

Skipped unless KILN_TEST_DAEMON=1; the daemon is then found through KILN_HOST (and KILN_TOKEN),
as any client would. The template is KILN_TEST_TEMPLATE, by default "tiny" (a busybox guest:
commands here stick to busybox sh and applets).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
from typing import Iterator

import pytest

from kiln import BadRequestError, Client, KilnError, NotFoundError, Sandbox

pytestmark = pytest.mark.skipif(os.environ.get("KILN_TEST_DAEMON") != "1",
                                reason="needs a running `kiln serve`: set KILN_TEST_DAEMON=1 (and KILN_HOST)")

TEMPLATE = os.environ.get("KILN_TEST_TEMPLATE", "tiny")
SDK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def daemon_up() -> None:
    """Fails (does not skip) when KILN_TEST_DAEMON=1 but the daemon cannot be reached."""
    assert Client().health().get("status") == "ok"


@pytest.fixture
def sbx() -> Iterator[Sandbox]:
    """A fresh sandbox on the test template, killed afterwards."""
    with Sandbox.create(template=TEMPLATE, ttl_seconds=300) as s:
        yield s


def assert_gone(sandbox_id: str) -> None:
    with pytest.raises(NotFoundError):
        Sandbox.connect(sandbox_id)


# -- the orchestrator pattern -----------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["success", "failure", "exception"])
def test_orchestrator_pattern(outcome: str) -> None:
    script = "echo building in $(pwd)\necho a warning >&2\nexit %d\n" % (0 if outcome == "success" else 3)
    sandbox_id = ""
    with pytest.raises(RuntimeError) if outcome == "exception" else contextlib.nullcontext():
        with Sandbox.create(template=TEMPLATE, ttl_seconds=120) as s:
            sandbox_id = s.id
            assert s.info.template == TEMPLATE and s.info.state == "running"
            s.filesystem.write("/src/build.sh", script, mode=0o755)
            result = s.exec("sh /src/build.sh", cwd="/src", timeout_seconds=60)
            assert result.stdout == "building in /src\n" and result.stderr == "a warning\n"
            assert result.exit_code == (0 if outcome == "success" else 3) and not result.timed_out
            if outcome == "exception":
                raise RuntimeError("the orchestrator itself failed")
    assert_gone(sandbox_id)


def test_example_script_propagates_the_exit_code() -> None:
    before = {i.id for i in Sandbox.list()}
    p = subprocess.run([sys.executable, os.path.join(SDK_DIR, "examples", "build_project.py"), TEMPLATE],
                       env={**os.environ, "PYTHONPATH": SDK_DIR}, capture_output=True, text=True, timeout=600)
    if p.returncode == 0:
        assert "hello from the microVM" in p.stdout
    else:  # a template without a C compiler (tiny)
        assert p.returncode == 127 and "not found" in p.stderr, (p.returncode, p.stdout, p.stderr)
    assert {i.id for i in Sandbox.list()} <= before


# -- exec ------------------------------------------------------------------------------------------


def test_exec_exit_codes_and_argv(sbx: Sandbox) -> None:
    assert sbx.exec(["echo", "a  b"]).stdout == "a  b\n"
    assert sbx.exec("exit 7").exit_code == 7
    assert sbx.exec("no-such-command-here").exit_code == 127
    assert sbx.exec("cat", stdin="from stdin").stdout == "from stdin"
    assert sbx.exec("echo $K", env={"K": "V"}).stdout == "V\n"


def test_exec_timeout_kills_the_whole_command(sbx: Sandbox) -> None:
    start = time.monotonic()
    result = sbx.exec("sleep 1000 & while true; do :; done", timeout_seconds=2)
    elapsed = time.monotonic() - start
    assert result.timed_out and result.exit_code == 124
    assert elapsed < 8, f"the 2 s timeout took {elapsed:.1f} s"
    deadline = time.monotonic() + 2
    while True:
        ps = sbx.exec(["ps", "-o", "pid,args"]).stdout
        leftovers = [line for line in ps.splitlines() if "while" in line or "sleep 1000" in line]
        if not leftovers or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not leftovers, ps


def test_exec_stream_delivers_output_live(sbx: Sandbox) -> None:
    seen: list[tuple[float, str]] = []
    result = sbx.exec("echo first; echo oops >&2; sleep 2; echo second", timeout_seconds=30,
                      on_stdout=lambda t: seen.append((time.monotonic(), t)))
    done = time.monotonic()
    assert "".join(t for _, t in seen) == result.stdout == "first\nsecond\n"
    assert result.stderr == "oops\n" and result.exit_code == 0
    assert done - seen[0][0] > 1.5, "the first line came only at the end: not streamed"


# -- fork, files, TTL ------------------------------------------------------------------------------


def test_fork_gives_independent_sandboxes() -> None:
    with Sandbox.create(template=TEMPLATE, ttl_seconds=120, forkable=True) as parent:
        parent.filesystem.write("/tmp/from-parent", "shared")
        clones = parent.fork(count=2)
        try:
            assert len(clones) == 2 and len({parent.id, clones[0].id, clones[1].id}) == 3
            a, b = clones
            assert a.info.parent == parent.id and a.info.mode == "forked"
            assert a.filesystem.read_text("/tmp/from-parent") == "shared"
            a.filesystem.write("/tmp/only-in-a", "a")
            assert a.exec("cat /tmp/only-in-a").stdout == "a"
            assert not b.filesystem.exists("/tmp/only-in-a")
            assert b.exec("test -e /tmp/only-in-a").exit_code == 1
            assert not parent.filesystem.exists("/tmp/only-in-a")
        finally:
            for c in clones:
                c.kill()
    for c in clones:
        assert_gone(c.id)


def test_files_round_trip_one_mib(sbx: Sandbox) -> None:
    blob = os.urandom(1 << 20)
    sbx.filesystem.write("/tmp/data/blob.bin", blob, mode=0o600)
    assert sbx.filesystem.read("/tmp/data/blob.bin") == blob
    st = sbx.filesystem.stat("/tmp/data/blob.bin")
    assert st.kind == "file" and st.size == len(blob) and st.mode == 0o600
    assert sbx.exec(["md5sum", "/tmp/data/blob.bin"]).stdout.split()[0] == hashlib.md5(blob).hexdigest()
    assert [e.name for e in sbx.filesystem.list("/tmp/data")] == ["blob.bin"]
    sbx.filesystem.mkdir("/tmp/data/sub")
    sbx.filesystem.remove("/tmp/data", recursive=True)
    assert not sbx.filesystem.exists("/tmp/data")


def test_ttl_expiry_kills_the_sandbox() -> None:
    s = Sandbox.create(template=TEMPLATE, ttl_seconds=5)
    try:
        time.sleep(max(0.0, 8 - (time.time() - s.info.created_at)))
        try:
            state = s.refresh().state
        except NotFoundError:
            return
        assert state in ("stopped", "failed"), f"still {state} 8 s after a 5 s TTL"
    finally:
        try:
            s.kill()
        except NotFoundError:
            pass


# -- bad requests ----------------------------------------------------------------------------------


def test_unknown_template_is_named_in_the_error() -> None:
    with pytest.raises((BadRequestError, NotFoundError), match="no-such-template-xyz"):
        Sandbox.create(template="no-such-template-xyz", ttl_seconds=60)


def test_negative_ttl_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError):
        Sandbox.create(template=TEMPLATE, ttl_seconds=-5)


@pytest.mark.parametrize("path", ["../etc/passwd", "etc/passwd"])
def test_relative_paths_are_bad_requests(sbx: Sandbox, path: str) -> None:
    for call in (lambda: sbx.filesystem.read(path), lambda: sbx.filesystem.write(path, "x"),
                 lambda: sbx.filesystem.stat(path), lambda: sbx.filesystem.list(path)):
        with pytest.raises(BadRequestError):
            call()


def test_errors_carry_code_and_status(sbx: Sandbox) -> None:
    with pytest.raises(NotFoundError) as info:
        sbx.filesystem.read("/no/such/file")
    assert isinstance(info.value, KilnError) and info.value.status == 404 and info.value.code == "not_found"
