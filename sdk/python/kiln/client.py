"""Transport: finds the kiln daemon and sends it HTTP requests, one connection per request.

The daemon is found through ``KILN_HOST``: ``unix:///path/to/kiln.sock`` or
``http://host:port`` (then ``KILN_TOKEN`` is sent as ``Authorization: Bearer``). By default it is
``unix://$KILN_HOME/kiln.sock``, ``KILN_HOME`` being ``$XDG_DATA_HOME/kiln`` or
``~/.local/share/kiln`` when unset.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import quote, urlencode, urlsplit

from .errors import KilnConnectionError, KilnError, KilnTimeoutError, SandboxFailedError, error_from_response

__all__ = [
    "Client",
    "Endpoint",
    "Response",
    "default_home",
    "default_host",
    "parse_host",
    "DEFAULT_TIMEOUT",
    "LONG_TIMEOUT",
    "EXEC_TIMEOUT_MARGIN",
]

__version__ = "0.1.0"

#: Seconds to wait for most answers.
DEFAULT_TIMEOUT = 30.0
#: Seconds to wait for answers that start VMs or build things (create, fork, build, bake).
LONG_TIMEOUT = 300.0
#: Seconds added to an exec's own ``timeout_seconds`` before the client gives up on the answer.
EXEC_TIMEOUT_MARGIN = 60.0

_START_HINT = "start it with `kiln serve` (or set KILN_HOST)"


def default_home() -> str:
    """``KILN_HOME``, else ``$XDG_DATA_HOME/kiln``, else ``~/.local/share/kiln`` (as the daemon)."""
    home = os.environ.get("KILN_HOME")
    if home:
        return home
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return os.path.join(xdg, "kiln")
    return os.path.join(os.path.expanduser("~"), ".local", "share", "kiln")


def default_host() -> str:
    """``KILN_HOST`` if set, else ``unix://<default_home()>/kiln.sock``."""
    host = os.environ.get("KILN_HOST")
    if host:
        return host
    return "unix://" + os.path.join(default_home(), "kiln.sock")


@dataclass(frozen=True)
class Endpoint:
    """Where the daemon listens: a unix socket ``path``, or ``host``:``port`` over http(s).

    ``prefix`` is a path prefix from the URL (``http://proxy/kiln`` gives ``/kiln``).
    """

    scheme: str
    path: str = ""
    host: str = ""
    port: int = 0
    prefix: str = ""

    @property
    def is_unix(self) -> bool:
        """Whether this is a unix socket."""
        return self.scheme == "unix"

    def __str__(self) -> str:
        if self.is_unix:
            return "unix://" + self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.prefix}"


def parse_host(url: str) -> Endpoint:
    """Parses a ``KILN_HOST`` value: ``unix:///abs/path.sock`` (or a bare absolute path),
    ``http://host:port`` or ``https://host:port``; raises ValueError otherwise."""
    url = url.strip()
    if url.startswith("/"):
        return Endpoint("unix", path=url)
    if url.startswith("unix:"):
        path = url[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path.startswith("/"):
            raise ValueError(f"KILN_HOST {url!r}: a unix socket needs an absolute path (unix:///path/to/kiln.sock)")
        return Endpoint("unix", path=path)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"KILN_HOST {url!r} is neither unix:///path/to/kiln.sock nor http://host:port")
    try:
        port = parts.port
    except ValueError as e:
        raise ValueError(f"KILN_HOST {url!r}: {e}") from None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return Endpoint(parts.scheme, host=parts.hostname, port=port, prefix=parts.path.rstrip("/"))


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection over a unix stream socket."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        """Connects to the socket at ``unix_path``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass
class Response:
    """A complete answer: status, headers and body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (None when empty)."""
        if not self.body:
            return None
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise KilnError(f"the kiln daemon answered {self.status} with a body that is not JSON: {e}",
                            code="bad_response", status=self.status) from None


class Stream:
    """An open answer read incrementally (server-sent events); close it when done."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, endpoint: Endpoint) -> None:
        self._conn = conn
        self.response = response
        self._endpoint = endpoint

    def readline(self) -> bytes:
        """Reads one line (with its end), b"" at the end; maps socket errors to KilnError."""
        try:
            return self.response.readline()
        except TimeoutError:
            raise KilnTimeoutError(f"the kiln daemon at {self._endpoint} sent nothing for too long") from None
        except (OSError, http.client.HTTPException) as e:
            raise KilnConnectionError(f"lost the connection to the kiln daemon at {self._endpoint}: {e}") from None

    def close(self) -> None:
        """Closes the answer and its connection."""
        try:
            self.response.close()
        finally:
            self._conn.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "no socket there"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, PermissionError):
        return "permission denied: the socket belongs to another user"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host name: {e.strerror or e}"
    if isinstance(e, TimeoutError):
        return "timed out while connecting"
    return e.strerror or str(e)


class Client:
    """A connection factory for one daemon, plus the timeouts to use with it.

    ``Client()`` reads ``KILN_HOST`` and ``KILN_TOKEN`` from the environment; pass ``host`` and
    ``token`` to override. The token is sent over http(s) only (the unix socket needs none).
    """

    def __init__(
        self,
        host: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        long_timeout: float = LONG_TIMEOUT,
    ) -> None:
        self.host: str = host if host else default_host()
        self.endpoint: Endpoint = parse_host(self.host)
        self.token: str | None = token if token is not None else (os.environ.get("KILN_TOKEN") or None)
        self.timeout: float = timeout
        self.long_timeout: float = long_timeout

    def __repr__(self) -> str:
        return f"Client(host={str(self.endpoint)!r})"

    # -- connections -------------------------------------------------------------------------

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        """A connected connection; connecting waits at most the short timeout, the answer
        ``timeout`` (None: forever)."""
        ep = self.endpoint
        connect_timeout = self.timeout if timeout is None else min(timeout, self.timeout)
        conn: http.client.HTTPConnection
        if ep.is_unix:
            conn = UnixHTTPConnection(ep.path, timeout=connect_timeout)
        elif ep.scheme == "https":
            conn = http.client.HTTPSConnection(ep.host, ep.port, timeout=connect_timeout)
        else:
            conn = http.client.HTTPConnection(ep.host, ep.port, timeout=connect_timeout)
        try:
            conn.connect()
        except OSError as e:
            conn.close()
            raise KilnConnectionError(f"cannot reach the kiln daemon at {ep} ({_reason(e)}): {_START_HINT}") from None
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def url(self, path: str, query: Mapping[str, str | int | bool] | None = None) -> str:
        """The request target for an API ``path`` (``/v1/...``) with a URL-encoded query."""
        target = self.endpoint.prefix + path
        if query:
            pairs = [(k, _query_value(v)) for k, v in query.items()]
            target += "?" + urlencode(pairs, quote_via=quote, safe="/")
        return target

    def _headers(self, content_type: str | None, accept: str) -> dict[str, str]:
        headers = {"User-Agent": f"kiln-python/{__version__}", "Accept": accept, "Connection": "close"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token and not self.endpoint.is_unix:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _send(self, method: str, target: str, body: bytes | None, content_type: str | None,
              accept: str, timeout: float | None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._connection(timeout)
        ep = self.endpoint
        try:
            try:
                conn.request(method, target, body=body, headers=self._headers(content_type, accept))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon may have answered (413, 401...) before reading the whole body
            response = conn.getresponse()
        except TimeoutError:
            conn.close()
            raise KilnTimeoutError(f"the kiln daemon at {ep} did not answer {method} {target} within {timeout} s") from None
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise KilnConnectionError(f"lost the connection to the kiln daemon at {ep} during {method} {target}: {e}") from None
        return conn, response

    # -- requests ----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        json_body: Any = None,
        body: bytes | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Response:
        """Sends one request and reads the whole answer; raises the matching KilnError for a
        status >= 400. ``json_body`` is sent as JSON, ``body`` as raw bytes."""
        target = self.url(path, query)
        content_type: str | None = None
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode("utf-8")
            content_type = "application/json"
        elif body is not None:
            content_type = "application/octet-stream"
        conn, response = self._send(method, target, body, content_type, "application/json, */*", timeout)
        try:
            data = response.read()
        except TimeoutError:
            raise KilnTimeoutError(f"the kiln daemon at {self.endpoint} did not finish answering {method} {target} within {timeout} s") from None
        except http.client.IncompleteRead as e:
            raise SandboxFailedError(f"the answer to {method} {target} ended early ({len(e.partial)} bytes received"
                                     f"{'' if e.expected is None else f', {e.expected} more expected'}): the sandbox or the daemon failed",
                                     code="sandbox_failed", status=response.status) from None
        except (OSError, http.client.HTTPException) as e:
            raise KilnConnectionError(f"lost the connection to the kiln daemon at {self.endpoint} during {method} {target}: {e}") from None
        finally:
            conn.close()
        if response.status >= 400:
            raise error_from_response(response.status, data, response.reason)
        return Response(response.status, dict(response.getheaders()), data)

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Like :meth:`request`, returning the answer's JSON (None for an empty body)."""
        return self.request(method, path, **kwargs).json()

    def stream(self, method: str, path: str, *, json_body: Any = None, timeout: float | None = DEFAULT_TIMEOUT) -> Stream:
        """Sends a request whose answer is read incrementally (server-sent events). Raises the
        matching KilnError when the status is >= 400; otherwise the caller closes the stream.
        ``timeout`` bounds each wait for more data, not the whole answer."""
        target = self.url(path)
        body = None if json_body is None else json.dumps(json_body, separators=(",", ":")).encode("utf-8")
        conn, response = self._send(method, target, body, "application/json" if body is not None else None,
                                    "text/event-stream", timeout)
        if response.status >= 400:
            try:
                data = response.read()
            except (OSError, http.client.HTTPException):
                data = b""
            finally:
                conn.close()
            raise error_from_response(response.status, data, response.reason)
        return Stream(conn, response, self.endpoint)

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok"}`` when the daemon is up."""
        answer = self.request_json("GET", "/healthz")
        return answer if isinstance(answer, dict) else {"status": answer}


def _query_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def quote_segment(segment: str) -> str:
    """Quotes one path segment (a sandbox id or template name) for use in a URL path."""
    return quote(segment, safe="")
