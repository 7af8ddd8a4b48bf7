"""A toy shell for the fake daemon: just enough commands to test the SDK's plumbing.

Understood: ``echo [-n] WORDS [>&2]``, ``printf WORDS``, ``exit N``, ``true``, ``false``, ``:``,
``cat`` (stdin) / ``cat FILE``, ``printenv NAME``, ``pwd``, ``cd DIR``, ``set ...`` (ignored), ``sh FILE``, ``sleep N``, and
``while ...`` (an endless loop: it times out). Commands are separated by newlines or ``;``.
Anything else prints ``sh: NAME: not found`` and exits 127.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Callable


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class _TimedOut(Exception):
    pass


@dataclass
class Outcome:
    """What a run produced: output chunks in order, ``(stream, bytes)``, and how it ended."""

    chunks: list[tuple[str, bytes]] = field(default_factory=list)
    exit_code: int = 0
    timed_out: bool = False

    def text(self, stream: str) -> str:
        """All output of one stream, decoded."""
        return b"".join(c for s, c in self.chunks if s == stream).decode("utf-8", errors="replace")


@dataclass
class Context:
    """What a command sees: files (read-only here), environment, cwd, stdin and timeout."""

    read_file: Callable[[str], bytes | None]
    env: dict[str, str]
    cwd: str = "/root"
    stdin: str = ""
    timeout: float | None = None


def run(ctx: Context, cmd: str | None = None, argv: list[str] | None = None) -> Outcome:
    """Runs a shell string or an argument vector."""
    out = Outcome()
    try:
        if argv is not None:
            out.exit_code = _command(ctx, out, list(argv), depth=0)
        else:
            out.exit_code = _script(ctx, out, cmd or "", depth=0)
    except _Exit as e:
        out.exit_code = e.code
    except _TimedOut:
        out.timed_out, out.exit_code = True, 124
    return out


def _script(ctx: Context, out: Outcome, text: str, depth: int) -> int:
    code = 0
    for line in text.replace(";", "\n").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("while", "do ", "done")):
            if line.startswith("while"):
                raise _TimedOut()
            continue
        code = _command(ctx, out, shlex.split(line), depth)
    return code


def _command(ctx: Context, out: Outcome, words: list[str], depth: int) -> int:
    stream = "stdout"
    if words and words[-1] == ">&2":
        words, stream = words[:-1], "stderr"
    name, args = words[0], words[1:]
    if name == "echo":
        newline = b"\n"
        if args and args[0] == "-n":
            args, newline = args[1:], b""
        out.chunks.append((stream, " ".join(args).encode() + newline))
    elif name == "printf":
        out.chunks.append((stream, " ".join(args).encode().decode("unicode_escape").encode("latin-1")))
    elif name == "exit":
        raise _Exit(int(args[0]) if args else 0)
    elif name in ("true", ":", "set"):
        return 0
    elif name == "cd":
        ctx.cwd = args[0] if args else "/root"
    elif name == "false":
        return 1
    elif name == "cat":
        if not args:
            out.chunks.append((stream, ctx.stdin.encode()))
        else:
            data = ctx.read_file(args[0])
            if data is None:
                out.chunks.append(("stderr", f"cat: can't open '{args[0]}': No such file or directory\n".encode()))
                return 1
            out.chunks.append((stream, data))
    elif name == "printenv":
        if args[0] not in ctx.env:
            return 1
        out.chunks.append((stream, ctx.env[args[0]].encode() + b"\n"))
    elif name == "pwd":
        out.chunks.append((stream, ctx.cwd.encode() + b"\n"))
    elif name == "sleep":
        if ctx.timeout is not None and float(args[0]) > ctx.timeout:
            raise _TimedOut()
    elif name == "sh" and args and depth < 5:
        data = ctx.read_file(args[0])
        if data is None:
            out.chunks.append(("stderr", f"sh: can't open '{args[0]}': No such file or directory\n".encode()))
            return 2
        return _script(ctx, out, data.decode(), depth + 1)
    else:
        out.chunks.append(("stderr", f"sh: {name}: not found\n".encode()))
        return 127
    return 0
