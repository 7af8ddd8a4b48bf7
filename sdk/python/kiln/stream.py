"""The exec stream: server-sent events parsed incrementally and turned into callbacks.

Events (see docs/api.md): ``stdout`` / ``stderr`` with ``{"b64": ...}``, then ``exit`` with
``{"exit_code", "timed_out", "duration_ms"}``, or ``error`` with ``{"code", "message"}`` when the
sandbox died.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .errors import KilnError, SandboxFailedError
from .types import ExecResult

__all__ = ["Event", "SSEParser", "iter_events", "ExecStreamReader"]

OutputCallback = Callable[[str], None]


@dataclass(frozen=True)
class Event:
    """One server-sent event: its name (``message`` when unnamed) and its data lines joined by
    newlines."""

    event: str
    data: str


class SSEParser:
    """Feeds on lines, yields events when a blank line ends one (the WHATWG rules: ``field:
    value`` with one optional space after the colon, several ``data`` lines joined by ``\\n``,
    lines starting with ``:`` are comments, ``id`` and ``retry`` are ignored)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._has_data = False

    def feed(self, line: str) -> Event | None:
        """Takes one line (without its end); returns the event it completes, if any."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._has_data = True
        return None

    def finish(self) -> Event | None:
        """At the end of the stream: the last event if it had data but no closing blank line
        (lenient: the standard would drop it)."""
        return self._dispatch()

    def _dispatch(self) -> Event | None:
        if not self._has_data:
            self._event = ""
            return None
        event = Event(self._event or "message", "\n".join(self._data))
        self._event, self._data, self._has_data = "", [], False
        return event


def iter_events(readline: Callable[[], bytes]) -> Iterator[Event]:
    """Yields the events read through ``readline`` (which returns b"" at the end), as soon as
    each one is complete."""
    parser = SSEParser()
    while True:
        raw = readline()
        if not raw:
            break
        line = raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", errors="replace")
        event = parser.feed(line)
        if event is not None:
            yield event
    last = parser.finish()
    if last is not None:
        yield last


class _Output:
    """One output stream: an incremental UTF-8 decoder, the text so far and a callback."""

    def __init__(self, callback: OutputCallback | None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []
        self._callback = callback

    def push(self, data: bytes, final: bool = False) -> None:
        """Decodes a chunk (keeping an incomplete character for the next one) and passes on the text."""
        text = self._decoder.decode(data, final=final)
        if text:
            self._parts.append(text)
            if self._callback is not None:
                self._callback(text)

    def text(self) -> str:
        """All the text so far."""
        return "".join(self._parts)


def _json_object(event: Event) -> dict[str, Any]:
    try:
        value = json.loads(event.data)
    except ValueError as e:
        raise KilnError(f"the kiln daemon sent a malformed {event.event!r} event: {e}", code="bad_response") from None
    if not isinstance(value, dict):
        raise KilnError(f"the kiln daemon sent a malformed {event.event!r} event: {event.data[:200]!r}", code="bad_response")
    return value


class ExecStreamReader:
    """Consumes an exec stream's events: calls ``on_stdout`` / ``on_stderr`` with text as it
    arrives and builds the :class:`ExecResult` (with the whole output) at ``exit``."""

    def __init__(self, on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None) -> None:
        self._out = {"stdout": _Output(on_stdout), "stderr": _Output(on_stderr)}

    def _flush(self) -> None:
        for out in self._out.values():
            out.push(b"", final=True)

    def run(self, events: Iterator[Event]) -> ExecResult:
        """Reads events until ``exit`` (returns the result) or ``error`` (raises
        SandboxFailedError); unknown events are ignored."""
        for event in events:
            if event.event in self._out:
                b64 = _json_object(event).get("b64", "")
                try:
                    chunk = base64.b64decode(b64 if isinstance(b64, str) else "", validate=True)
                except (binascii.Error, ValueError) as e:
                    raise KilnError(f"the kiln daemon sent bad base64 in a {event.event} event: {e}", code="bad_response") from None
                self._out[event.event].push(chunk)
            elif event.event == "exit":
                d = _json_object(event)
                self._flush()
                return ExecResult.from_json({**d, "stdout": self._out["stdout"].text(), "stderr": self._out["stderr"].text()})
            elif event.event == "error":
                self._flush()
                try:
                    d = _json_object(event)
                except KilnError:
                    d = {"message": event.data}
                code = d.get("code") if isinstance(d.get("code"), str) else "sandbox_failed"
                message = d.get("message") if isinstance(d.get("message"), str) else "the sandbox failed during exec"
                raise SandboxFailedError(str(message), code=str(code), status=502)
        self._flush()
        raise SandboxFailedError("the exec stream ended without an exit event (the daemon or the sandbox went away)",
                                 code="sandbox_failed", status=502)

    @property
    def stdout(self) -> str:
        """The stdout text received so far."""
        return self._out["stdout"].text()

    @property
    def stderr(self) -> str:
        """The stderr text received so far."""
        return self._out["stderr"].text()
