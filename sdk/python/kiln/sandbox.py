"""Sandboxes: create, connect, exec, fork, extend and kill microVMs through the daemon.

    with Sandbox.create(template="tiny", ttl_seconds=300) as sbx:
        sbx.filesystem.write("/src/build.sh", "echo hello\\n")
        result = sbx.exec("sh /src/build.sh", timeout_seconds=60)

The ``with`` block kills the sandbox when it ends, however it ends.
"""

from __future__ import annotations

import builtins
import dataclasses
from types import TracebackType
from typing import Any, Callable, Mapping, Sequence

from .client import EXEC_TIMEOUT_MARGIN, Client, quote_segment
from .errors import KilnError, NotFoundError
from .filesystem import Filesystem
from .stream import ExecStreamReader, iter_events
from .types import ExecResult, SandboxInfo

__all__ = ["Sandbox"]


def _number(value: float) -> int | float:
    """An integral float as an int (a daemon may parse seconds as an integer)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def exec_request(
    cmd: str | Sequence[str],
    timeout_seconds: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin: str | bytes | None = None,
    max_output_bytes: int | None = None,
) -> dict[str, Any]:
    """The JSON body of an exec request: a ``str`` is a shell command (``cmd``, run with
    ``/bin/sh -c``), a sequence an argument vector (``argv``)."""
    body: dict[str, Any] = {}
    if isinstance(cmd, str):
        body["cmd"] = cmd
    elif isinstance(cmd, (bytes, bytearray)):
        raise TypeError("cmd must be a str (shell command) or a list of str (argv), not bytes")
    else:
        argv = [str(a) for a in cmd]
        if not argv:
            raise ValueError("argv must not be empty")
        body["argv"] = argv
    if env:
        body["env"] = {str(k): str(v) for k, v in env.items()}
    if cwd is not None:
        body["cwd"] = cwd
    if timeout_seconds is not None:
        body["timeout_seconds"] = _number(timeout_seconds)
    if max_output_bytes is not None:
        if isinstance(max_output_bytes, bool) or not isinstance(max_output_bytes, int) or max_output_bytes < 1:
            raise ValueError(f"max_output_bytes must be a positive int, not {max_output_bytes!r}")
        body["max_output_bytes"] = max_output_bytes
    if stdin is not None:
        if isinstance(stdin, (bytes, bytearray)):
            try:
                stdin = bytes(stdin).decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("stdin bytes must be valid UTF-8 (the API carries stdin as a JSON string)") from None
        body["stdin"] = stdin
    return body


class Sandbox:
    """A microVM run by the kiln daemon.

    Get one with :meth:`create` or :meth:`connect`; use it as a context manager to have it
    killed when the block ends. ``info`` is the last :class:`SandboxInfo` seen (``refresh()``
    updates it), ``filesystem`` reaches its files.
    """

    def __init__(self, info: SandboxInfo, client: Client | None = None) -> None:
        self.client: Client = client if client is not None else Client()
        self.info: SandboxInfo = info
        self.filesystem: Filesystem = Filesystem(self.client, self._path)

    # -- getting one -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        template: str = "base",
        ttl_seconds: int | None = None,
        cpus: int | None = None,
        memory_mib: int | None = None,
        env: Mapping[str, str] | None = None,
        forkable: bool = False,
        *,
        image: str | None = None,
        client: Client | None = None,
    ) -> Sandbox:
        """Starts a sandbox from ``template``; the daemon kills it ``ttl_seconds`` from now
        (its default when None). ``cpus`` and ``memory_mib`` override the template's; ``env`` is
        added to every command's environment; ``forkable`` allows :meth:`fork`. ``image`` (an
        OCI reference, ``HOST[:PORT]/NAME:TAG``) boots that image instead of a template: the
        daemon makes a template of it once per digest, if its ``--images`` patterns allow it
        (or the token is an admin's)."""
        client = client if client is not None else Client()
        body: dict[str, Any] = {"forkable": bool(forkable)}
        if image is not None:
            body["image"] = str(image)
        else:
            body["template"] = template
        if ttl_seconds is not None:
            body["ttl_seconds"] = _number(ttl_seconds)
        if cpus is not None:
            body["cpus"] = cpus
        if memory_mib is not None:
            body["memory_mib"] = memory_mib
        if env:
            body["env"] = {str(k): str(v) for k, v in env.items()}
        answer = client.request_json("POST", "/v1/sandboxes", json_body=body, timeout=client.long_timeout)
        return cls(_sandbox_info(answer), client)

    @classmethod
    def connect(cls, id: str, *, client: Client | None = None) -> Sandbox:
        """Attaches to the existing sandbox ``id`` (NotFoundError if it is gone)."""
        client = client if client is not None else Client()
        answer = client.request_json("GET", "/v1/sandboxes/" + quote_segment(id), timeout=client.timeout)
        return cls(_sandbox_info(answer), client)

    @classmethod
    def list(cls, *, client: Client | None = None) -> builtins.list[SandboxInfo]:
        """The live sandboxes."""
        client = client if client is not None else Client()
        answer = client.request_json("GET", "/v1/sandboxes", timeout=client.timeout)
        if isinstance(answer, dict) and isinstance(answer.get("sandboxes"), builtins.list):
            answer = answer["sandboxes"]
        if not isinstance(answer, builtins.list):
            raise KilnError(f"the kiln daemon answered the sandbox list with {str(answer)[:200]!r}", code="bad_response")
        return [SandboxInfo.from_json(s) for s in answer if isinstance(s, dict)]

    # -- what it is --------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The sandbox's id (``sbx-...``)."""
        return self.info.id

    @property
    def _path(self) -> str:
        return "/v1/sandboxes/" + quote_segment(self.info.id)

    def __repr__(self) -> str:
        i = self.info
        return f"<Sandbox {i.id} template={i.template!r} state={i.state!r} mode={i.mode!r} deadline={i.deadline}>"

    def refresh(self) -> SandboxInfo:
        """Fetches the sandbox's current description into ``info`` and returns it."""
        answer = self.client.request_json("GET", self._path, timeout=self.client.timeout)
        self.info = _sandbox_info(answer)
        return self.info

    # -- running things ----------------------------------------------------------------------

    def exec(
        self,
        cmd: str | Sequence[str],
        timeout_seconds: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: str | bytes | None = None,
        on_stdout: Callable[[str], None] | None = None,
        on_stderr: Callable[[str], None] | None = None,
        max_output_bytes: int | None = None,
    ) -> ExecResult:
        """Runs a command and waits for it to end.

        A ``str`` runs with ``/bin/sh -c``; a list is an argument vector. ``timeout_seconds``
        is a hard limit: the command and every process it started are killed, and the result
        has ``timed_out`` and exit code 124. With ``on_stdout`` or ``on_stderr``, output is
        streamed and each callback gets text as it arrives (the result holds all of it too).
        Output past ``max_output_bytes`` (default 256 MiB) is dropped and a marker line is
        added to stderr. Raises SandboxFailedError if the sandbox dies meanwhile.
        """
        body = exec_request(cmd, timeout_seconds, env, cwd, stdin, max_output_bytes)
        http_timeout = None if timeout_seconds is None else float(timeout_seconds) + EXEC_TIMEOUT_MARGIN
        if on_stdout is None and on_stderr is None:
            answer = self.client.request_json("POST", self._path + "/exec", json_body=body, timeout=http_timeout)
            if not isinstance(answer, dict):
                raise KilnError(f"the kiln daemon answered exec with {str(answer)[:200]!r}", code="bad_response")
            return ExecResult.from_json(answer)
        with self.client.stream("POST", self._path + "/exec/stream", json_body=body, timeout=http_timeout) as stream:
            return ExecStreamReader(on_stdout, on_stderr).run(iter_events(stream.readline))

    # -- lifecycle ---------------------------------------------------------------------------

    def fork(self, count: int = 1) -> builtins.list[Sandbox]:
        """Clones this running sandbox (created with ``forkable=True``) into ``count`` new
        sandboxes with copies of its memory and disk; kill each of them when done."""
        answer = self.client.request_json("POST", self._path + "/fork", json_body={"count": int(count)},
                                          timeout=self.client.long_timeout)
        items = answer.get("sandboxes") if isinstance(answer, dict) else answer
        if not isinstance(items, builtins.list):
            raise KilnError(f"the kiln daemon answered fork with {str(answer)[:200]!r}", code="bad_response")
        return [Sandbox(SandboxInfo.from_json(s), self.client) for s in items if isinstance(s, dict)]

    def extend(self, ttl_seconds: int) -> SandboxInfo:
        """Moves the deadline to ``ttl_seconds`` from now (capped by the daemon's maximum)."""
        answer = self.client.request_json("POST", self._path + "/extend", json_body={"ttl_seconds": _number(ttl_seconds)},
                                          timeout=self.client.timeout)
        if isinstance(answer, dict) and answer.get("id"):
            self.info = SandboxInfo.from_json(answer)
        return self.info

    def kill(self) -> None:
        """Destroys the VM (NotFoundError if it is already gone)."""
        self.client.request("DELETE", self._path, timeout=self.client.timeout)
        self.info = dataclasses.replace(self.info, state="stopped")

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Kills the sandbox; an error doing so is raised only if the block itself succeeded
        (otherwise it is added as a note to the block's exception, which goes on)."""
        try:
            self.kill()
        except NotFoundError:
            pass
        except Exception as cleanup:
            if exc is None:
                raise
            exc.add_note(f"kiln: killing sandbox {self.id} failed too: {cleanup}")


def _sandbox_info(answer: Any) -> SandboxInfo:
    if isinstance(answer, dict) and isinstance(answer.get("sandbox"), dict):
        answer = answer["sandbox"]
    if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
        raise KilnError(f"the kiln daemon answered with {str(answer)[:200]!r} instead of a sandbox", code="bad_response")
    return SandboxInfo.from_json(answer)
