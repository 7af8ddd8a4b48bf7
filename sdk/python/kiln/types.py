"""Plain data returned by the SDK: sandboxes, exec results, files and templates.

Each ``from_json`` is lenient: unknown fields are kept in ``raw`` and missing ones get a
neutral default, so a newer daemon does not break an older SDK.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SandboxInfo", "ExecResult", "FileInfo", "TemplateInfo", "BakeResult"]


def _int(value: Any, default: int = 0) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _opt_int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the daemon describes it (``GET /v1/sandboxes/{id}``).

    ``state`` is one of creating, running, paused, stopping, stopped, failed; ``mode`` one of
    restored, cold, forked; ``created_at`` and ``deadline`` are unix seconds (the reaper kills
    the sandbox at ``deadline``); ``parent`` is the id it was forked from, if any.
    """

    id: str
    template: str = ""
    state: str = ""
    created_at: int = 0
    deadline: int | None = None
    cpus: int = 0
    memory_mib: int = 0
    mode: str = ""
    parent: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SandboxInfo:
        """Builds it from the daemon's JSON object."""
        return cls(
            id=_str(d.get("id")),
            template=_str(d.get("template")),
            state=_str(d.get("state")),
            created_at=_int(d.get("created_at")),
            deadline=_opt_int(d.get("deadline")),
            cpus=_int(d.get("cpus")),
            memory_mib=_int(d.get("memory_mib")),
            mode=_str(d.get("mode")),
            parent=_opt_str(d.get("parent")),
            raw=dict(d),
        )

    @property
    def is_live(self) -> bool:
        """Whether the sandbox is still usable or about to be (not stopping, stopped or failed)."""
        return self.state in ("creating", "running", "paused")


@dataclass
class ExecResult:
    """How a command ended and what it printed.

    ``exit_code`` follows the shell: 124 when ``timed_out``, 128+N when killed by signal N,
    127 when the command was not found. ``*_truncated`` is set when the blocking form kept only
    the first 16 MiB of a stream (the streaming form never truncates).
    """

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool = False
    duration_ms: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def ok(self) -> bool:
        """Whether the command exited 0 within its timeout."""
        return self.exit_code == 0 and not self.timed_out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ExecResult:
        """Builds it from the blocking exec answer."""
        return cls(
            stdout=_str(d.get("stdout")),
            stderr=_str(d.get("stderr")),
            exit_code=_int(d.get("exit_code"), -1),
            timed_out=bool(d.get("timed_out", False)),
            duration_ms=_int(d.get("duration_ms")),
            stdout_truncated=bool(d.get("stdout_truncated", False)),
            stderr_truncated=bool(d.get("stderr_truncated", False)),
        )


@dataclass(frozen=True)
class FileInfo:
    """One file in the guest: ``kind`` is file, dir, symlink or other; ``mode`` the permission
    bits; ``mtime`` unix seconds. ``name`` is the entry's name in a listing (the daemon may give
    the full path for ``stat``)."""

    name: str
    kind: str
    size: int = 0
    mode: int = 0
    mtime: int = 0

    @property
    def is_dir(self) -> bool:
        """Whether it is a directory."""
        return self.kind == "dir"

    @property
    def is_file(self) -> bool:
        """Whether it is a regular file."""
        return self.kind == "file"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FileInfo:
        """Builds it from the daemon's JSON object."""
        return cls(
            name=_str(d.get("name")),
            kind=_str(d.get("kind"), "other"),
            size=_int(d.get("size")),
            mode=_int(d.get("mode")),
            mtime=_int(d.get("mtime")),
        )


@dataclass(frozen=True)
class TemplateInfo:
    """A template the daemon knows: ``built`` is False (and ``digest``, ``built_at`` None) until
    it is built."""

    name: str
    built: bool = False
    digest: str | None = None
    size_bytes: int = 0
    built_at: int | None = None
    cpus: int = 0
    memory_mib: int = 0
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TemplateInfo:
        """Builds it from the daemon's JSON object."""
        digest = _opt_str(d.get("digest"))
        built = d.get("built")
        return cls(
            name=_str(d.get("name")),
            built=built if isinstance(built, bool) else digest is not None,
            digest=digest,
            size_bytes=_int(d.get("size_bytes")),
            built_at=_opt_int(d.get("built_at")),
            cpus=_int(d.get("cpus")),
            memory_mib=_int(d.get("memory_mib")),
            description=_str(d.get("description")),
            raw=dict(d),
        )


@dataclass(frozen=True)
class BakeResult:
    """The answer of a bake: the template, its snapshot's identifier and how long it took."""

    template: str
    snapshot: str
    bake_ms: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BakeResult:
        """Builds it from the daemon's JSON object."""
        snapshot = d.get("snapshot")
        return cls(
            template=_str(d.get("template")),
            snapshot=snapshot if isinstance(snapshot, str) else ("" if snapshot is None else str(snapshot)),
            bake_ms=_int(d.get("bake_ms")),
            raw=dict(d),
        )
