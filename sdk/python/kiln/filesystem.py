"""A sandbox's files: ``sbx.filesystem.write/read/list/stat/mkdir/remove``.

Paths must be absolute and are interpreted inside the guest only; the daemon refuses others.
Modes are sent as decimal in the query (0o644 is ``mode=420``).
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

from .errors import KilnError, NotFoundError
from .types import FileInfo

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Filesystem"]


class Filesystem:
    """The files of one sandbox (get it as ``sbx.filesystem``)."""

    def __init__(self, client: Client, sandbox_path: str) -> None:
        self._client = client
        self._base = sandbox_path + "/files"

    def __repr__(self) -> str:
        return f"Filesystem({self._base!r})"

    def write(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        """Writes ``data`` (a str is encoded as UTF-8) to ``path``, creating missing parent
        directories; ``mode`` gives the permission bits."""
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self._client.request("PUT", self._base, query={"path": path, "mode": int(mode)}, body=payload,
                             timeout=self._client.long_timeout)

    def read(self, path: str) -> bytes:
        """The bytes of the file at ``path``."""
        return self._client.request("GET", self._base, query={"path": path},
                                    timeout=self._client.long_timeout).body

    def read_text(self, path: str, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The file at ``path`` decoded as text."""
        return self.read(path).decode(encoding, errors)

    def list(self, path: str) -> builtins.list[FileInfo]:
        """The entries of the directory at ``path``."""
        answer = self._client.request_json("GET", self._base + "/list", query={"path": path},
                                           timeout=self._client.timeout)
        return [FileInfo.from_json(e) for e in _as_list(answer) if isinstance(e, dict)]

    def stat(self, path: str) -> FileInfo:
        """The kind, size, mode and mtime of ``path`` (NotFoundError if it does not exist)."""
        answer = self._client.request_json("GET", self._base + "/stat", query={"path": path},
                                           timeout=self._client.timeout)
        if not isinstance(answer, dict):
            raise KilnError(f"the kiln daemon answered stat with {answer!r}", code="bad_response")
        return FileInfo.from_json(answer)

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists in the guest."""
        try:
            self.stat(path)
        except NotFoundError:
            return False
        return True

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """Creates the directory ``path`` and any missing parents."""
        self._client.request("POST", self._base + "/mkdir", query={"path": path, "mode": int(mode)},
                             timeout=self._client.timeout)

    def remove(self, path: str, recursive: bool = False) -> None:
        """Removes the file or empty directory at ``path`` (a whole tree with ``recursive``)."""
        self._client.request("DELETE", self._base, query={"path": path, "recursive": bool(recursive)},
                             timeout=self._client.timeout)


def _as_list(answer: Any) -> builtins.list[Any]:
    if isinstance(answer, builtins.list):
        return answer
    if isinstance(answer, dict) and isinstance(answer.get("entries"), builtins.list):
        return answer["entries"]
    raise KilnError(f"the kiln daemon answered a listing with {str(answer)[:200]!r}", code="bad_response")
