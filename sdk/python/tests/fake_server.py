"""A fake kiln daemon: the routes of docs/api.md, in memory, in a thread.

    with FakeDaemon() as fake:              # loopback TCP, a port chosen by the OS
        client = kiln.Client(fake.host)
    with FakeDaemon(unix_path=p) as fake:   # or a unix socket

Sandboxes are dicts and files; exec runs ``fake_shell``. Tests steer it with
``fake.fail_next(...)`` (the next matching request gets that error) and
``fake.script_stream(...)`` (the next exec stream sends exactly these events).
"""

from __future__ import annotations

import base64
import copy
import json
import posixpath
import re
import secrets
import socketserver
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

import fake_shell

TEMPLATES = {
    "tiny": {"cpus": 1, "memory_mib": 64, "description": "busybox"},
    "base": {"cpus": 2, "memory_mib": 512, "description": "Debian with a toolchain"},
}
MAX_TTL = 3600


class ApiError(Exception):
    """An error answer: status, code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


@dataclass
class FakeFile:
    data: bytes
    mode: int
    mtime: int = field(default_factory=lambda: int(time.time()))


@dataclass
class FakeSandbox:
    info: dict[str, Any]
    env: dict[str, str]
    forkable: bool
    expires: float
    files: dict[str, FakeFile] = field(default_factory=dict)
    dirs: dict[str, int] = field(default_factory=lambda: {"/": 0o755, "/root": 0o700, "/tmp": 0o1777})


@dataclass
class Recorded:
    """One request as the fake saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


def guest_path(query: dict[str, str]) -> str:
    path = query.get("path")
    if not path or not path.startswith("/") or "\0" in path:
        raise bad(f"guest paths must be absolute: {path!r}")
    if ".." in path.split("/"):
        raise bad(f"guest paths must not contain '..': {path!r}")
    return posixpath.normpath(path) if path != "/" else "/"


def parents(path: str) -> list[str]:
    out = []
    while path != "/":
        path = posixpath.dirname(path)
        out.append(path)
    return out


class FakeDaemon:
    """The fake daemon's state and server."""

    def __init__(self, unix_path: str | None = None, token: str | None = None, max_sandboxes: int = 8) -> None:
        self.unix_path, self.token, self.max_sandboxes = unix_path, token, max_sandboxes
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.requests: list[Recorded] = []
        self.deleted: list[str] = []
        self.lock = threading.RLock()
        self._failures: list[tuple[str, ApiError]] = []
        self._streams: list[list[tuple[str, Any]]] = []
        self._server: socketserver.BaseServer | None = None
        self.delay = 0.0  # seconds to wait before answering anything
        self.truncate_reads = False  # file reads announce their length but send half

    # -- steering ----------------------------------------------------------------------------

    def fail_next(self, status: int, code: str, message: str, path_contains: str = "") -> None:
        """The next request whose path contains ``path_contains`` gets this error."""
        self._failures.append((path_contains, ApiError(status, code, message)))

    def script_stream(self, events: list[tuple[str, Any]]) -> None:
        """The next exec stream sends these events: ``("stdout", b"...")``, ``("exit", {...})``,
        ``("error", {...})``, ``("raw", "text")`` or ``("wait", threading.Event)``."""
        self._streams.append(events)

    @property
    def host(self) -> str:
        """The KILN_HOST value that reaches this fake."""
        assert self._server is not None
        if self.unix_path:
            return "unix://" + self.unix_path
        return "http://127.0.0.1:%d" % self._server.server_address[1]  # type: ignore[index]

    # -- server ------------------------------------------------------------------------------

    def start(self) -> FakeDaemon:
        server: socketserver.BaseServer
        if self.unix_path:
            server = _UnixServer(self.unix_path, _Handler)
        else:
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()  # type: ignore[attr-defined]
            self._server = None

    def __enter__(self) -> FakeDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- routes ------------------------------------------------------------------------------

    def handle(self, h: _Handler, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        time.sleep(self.delay)
        with self.lock:
            self.requests.append(Recorded(method, path, query, dict(h.headers.items()), body))
            if self.token and path != "/healthz" and h.headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "unauthorized", "a valid token is needed: set KILN_TOKEN")
            for i, (needle, err) in enumerate(self._failures):
                if needle in path:
                    del self._failures[i]
                    raise err
            now = time.time()
            for sid in [s for s, v in self.sandboxes.items() if v.expires <= now]:
                del self.sandboxes[sid]
        for pattern, verb, fn in ROUTES:
            m = re.fullmatch(pattern, path)
            if m and verb == method:
                args = [unquote(g) for g in m.groups()]
                return fn(self, h, *args, query=query, body=body)
        raise ApiError(404, "not_found", f"no route {method} {path}")

    def _json(self, body: bytes) -> dict[str, Any]:
        try:
            value = json.loads(body or b"{}")
        except ValueError as e:
            raise bad(f"the body is not JSON: {e}") from None
        if not isinstance(value, dict):
            raise bad("the body must be a JSON object")
        return value

    def _sandbox(self, sid: str) -> FakeSandbox:
        sbx = self.sandboxes.get(sid)
        if sbx is None:
            raise ApiError(404, "not_found", f"no sandbox {sid} (it may have been killed or expired)")
        return sbx

    def _new_sandbox(self, template: str, ttl: int, cpus: int, memory: int, env: dict[str, str],
                     forkable: bool, mode: str, parent: str | None) -> FakeSandbox:
        if len(self.sandboxes) >= self.max_sandboxes:
            raise ApiError(429, "limit", f"over the limit of {self.max_sandboxes} sandboxes: kill some first")
        sid = "sbx-" + secrets.token_hex(6)
        now = int(time.time())
        info = {"id": sid, "template": template, "state": "running", "created_at": now, "deadline": now + ttl,
                "cpus": cpus, "memory_mib": memory, "mode": mode, "parent": parent}
        sbx = FakeSandbox(info, env, forkable, time.time() + ttl)
        self.sandboxes[sid] = sbx
        return sbx

    def create(self, h: _Handler, query: dict[str, str], body: bytes) -> None:
        req = self._json(body)
        name = req.get("template", "tiny")
        if name not in TEMPLATES:
            raise bad(f"unknown template {name!r}: see GET /v1/templates")
        ttl = req.get("ttl_seconds") if req.get("ttl_seconds") is not None else 300
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
            raise bad(f"ttl_seconds must be a positive integer, not {ttl!r}")
        env = req.get("env") or {}
        with self.lock:
            sbx = self._new_sandbox(name, min(ttl, MAX_TTL), req.get("cpus") or TEMPLATES[name]["cpus"],
                                    req.get("memory_mib") or TEMPLATES[name]["memory_mib"], dict(env),
                                    bool(req.get("forkable")), "restored", None)
        h.send_json(201, sbx.info)

    def list_sandboxes(self, h: _Handler, query: dict[str, str], body: bytes) -> None:
        h.send_json(200, [s.info for s in self.sandboxes.values()])

    def get(self, h: _Handler, sid: str, query: dict[str, str], body: bytes) -> None:
        h.send_json(200, self._sandbox(sid).info)

    def delete(self, h: _Handler, sid: str, query: dict[str, str], body: bytes) -> None:
        with self.lock:
            self._sandbox(sid)
            del self.sandboxes[sid]
            self.deleted.append(sid)
        h.send_empty()

    def extend(self, h: _Handler, sid: str, query: dict[str, str], body: bytes) -> None:
        sbx, ttl = self._sandbox(sid), self._json(body).get("ttl_seconds")
        if not isinstance(ttl, int) or ttl <= 0:
            raise bad("ttl_seconds must be a positive integer")
        ttl = min(ttl, MAX_TTL)
        sbx.expires, sbx.info["deadline"] = time.time() + ttl, int(time.time()) + ttl
        h.send_json(200, sbx.info)

    def fork(self, h: _Handler, sid: str, query: dict[str, str], body: bytes) -> None:
        parent, count = self._sandbox(sid), self._json(body).get("count", 1)
        if not isinstance(count, int) or not 1 <= count <= 16:
            raise bad("count must be between 1 and 16")
        if not parent.forkable:
            raise ApiError(409, "conflict", "this sandbox was not created forkable (create it with forkable=true)")
        clones = []
        with self.lock:
            for _ in range(count):
                i = parent.info
                c = self._new_sandbox(i["template"], int(parent.expires - time.time()) + 1, i["cpus"], i["memory_mib"],
                                      dict(parent.env), False, "forked", sid)
                c.files, c.dirs = copy.deepcopy(parent.files), dict(parent.dirs)
                clones.append(c.info)
        h.send_json(201, {"sandboxes": clones})

    def _run(self, sbx: FakeSandbox, body: bytes) -> fake_shell.Outcome:
        req = self._json(body)
        if ("cmd" in req) == ("argv" in req):
            raise bad("give exactly one of cmd and argv")
        timeout = req.get("timeout_seconds")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise bad("timeout_seconds must be a positive number")
        ctx = fake_shell.Context(read_file=lambda p: sbx.files[p].data if p in sbx.files else None,
                                 env={**sbx.env, **(req.get("env") or {})}, cwd=req.get("cwd") or "/root",
                                 stdin=req.get("stdin") or "", timeout=timeout)
        return fake_shell.run(ctx, cmd=req.get("cmd"), argv=req.get("argv"))

    def exec(self, h: _Handler, sid: str, query: dict[str, str], body: bytes) -> None:
        out = self._run(self._sandbox(sid), body)
        h.send_json(200, {"stdout": out.text("stdout"), "stderr": out.text("stderr"), "exit_code": out.exit_code,
                          "timed_out": out.timed_out, "duration_ms": 3,
                          "stdout_truncated": False, "stderr_truncated": False})

    def exec_stream(self, h: _Handler, sid: str, query: dict[str, str], body: bytes) -> None:
        sbx = self._sandbox(sid)
        if self._streams:
            self._json(body)
            events = self._streams.pop(0)
        else:
            out = self._run(sbx, body)
            events = list(out.chunks) + [("exit", {"exit_code": out.exit_code, "timed_out": out.timed_out,
                                                   "duration_ms": 3})]
        h.start_stream()
        for kind, value in events:
            if kind == "wait":
                if not value.wait(5):
                    h.send_chunk(_sse("stdout", {"b64": base64.b64encode(b"GATE NEVER OPENED").decode()}))
            elif kind == "raw":
                h.send_chunk(value.encode())
            elif kind in ("stdout", "stderr"):
                h.send_chunk(_sse(kind, {"b64": base64.b64encode(value).decode()}))
            else:
                h.send_chunk(_sse(kind, value))
        h.end_stream()

    # files

    def _stat(self, sbx: FakeSandbox, path: str, name: str) -> dict[str, Any]:
        if path in sbx.dirs:
            return {"name": name, "kind": "dir", "size": 0, "mode": sbx.dirs[path], "mtime": 0}
        if path in sbx.files:
            f = sbx.files[path]
            return {"name": name, "kind": "file", "size": len(f.data), "mode": f.mode, "mtime": f.mtime}
        raise ApiError(404, "not_found", f"no such file in the guest: {path}")

    def write_file(self, h: _Handler, sid: str, query: dict[str, str], body: bytes) -> None:
        sbx, path = self._sandbox(sid), guest_path(query)
        if path in sbx.dirs:
            raise ApiError(409, "conflict", f"{path} is a directory")
        for p in parents(path):
            sbx.dirs.setdefault(p, 0o755)
        sbx.files[path] = FakeFile(body, int(query.get("mode", "420")))
        h.send_empty()

    def read_file(self, h: _Handler, sid: str, query: dict[str, str], body: bytes) -> None:
        sbx, path = self._sandbox(sid), guest_path(query)
        if path not in sbx.files:
            self._stat(sbx, path, path)
            raise bad(f"{path} is not a regular file")
        data = sbx.files[path].data
        if self.truncate_reads:
            h.send_response(200)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.close_connection = True
            return
        h.send_bytes(200, data, "application/octet-stream")

    def remove(self, h: _Handler, sid: str, query: dict[str, str], body: bytes) -> None:
        sbx, path = self._sandbox(sid), guest_path(query)
        self._stat(sbx, path, path)
        under = [p for p in list(sbx.files) + list(sbx.dirs) if p.startswith(path.rstrip("/") + "/")]
        if under and query.get("recursive") != "true":
            raise ApiError(409, "conflict", f"{path} is not empty (use recursive=true)")
        for p in under + [path]:
            sbx.files.pop(p, None)
            sbx.dirs.pop(p, None)
        h.send_empty()

    def list_dir(self, h: _Handler, sid: str, query: dict[str, str], body: bytes) -> None:
        sbx, path = self._sandbox(sid), guest_path(query)
        if path not in sbx.dirs:
            self._stat(sbx, path, path)
            raise bad(f"{path} is not a directory")
        children = [p for p in list(sbx.dirs) + list(sbx.files) if p != "/" and posixpath.dirname(p) == path]
        h.send_json(200, [self._stat(sbx, p, posixpath.basename(p)) for p in sorted(children)])

    def stat(self, h: _Handler, sid: str, query: dict[str, str], body: bytes) -> None:
        sbx, path = self._sandbox(sid), guest_path(query)
        h.send_json(200, self._stat(sbx, path, path))

    def mkdir(self, h: _Handler, sid: str, query: dict[str, str], body: bytes) -> None:
        sbx, path = self._sandbox(sid), guest_path(query)
        if path in sbx.files:
            raise ApiError(409, "conflict", f"{path} is a file")
        for p in [path] + parents(path):
            sbx.dirs.setdefault(p, int(query.get("mode", "493")) if p == path else 0o755)
        h.send_empty()

    # templates and service

    def templates(self, h: _Handler, query: dict[str, str], body: bytes) -> None:
        h.send_json(200, [_template(n) for n in TEMPLATES] + [{"name": "unbuilt", "built": False}])

    def build(self, h: _Handler, name: str, query: dict[str, str], body: bytes) -> None:
        if name not in TEMPLATES:
            raise ApiError(404, "not_found", f"no template named {name!r}")
        self._json(body)
        h.send_json(200, _template(name))

    def bake(self, h: _Handler, name: str, query: dict[str, str], body: bytes) -> None:
        if name not in TEMPLATES:
            raise ApiError(404, "not_found", f"no template named {name!r}")
        h.send_json(200, {"template": name, "snapshot": "snap-" + name, "bake_ms": 1234})

    def healthz(self, h: _Handler, query: dict[str, str], body: bytes) -> None:
        h.send_json(200, {"status": "ok"})


def _template(name: str) -> dict[str, Any]:
    t = TEMPLATES[name]
    return {"name": name, "built": True, "digest": "sha256:" + name * 4, "size_bytes": 1 << 20, "built_at": 1795965982, **t}


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


S = r"/v1/sandboxes/([^/]+)"
ROUTES: list[tuple[str, str, Callable[..., None]]] = [
    (r"/healthz", "GET", FakeDaemon.healthz),
    (r"/v1/templates", "GET", FakeDaemon.templates),
    (r"/v1/templates/([^/]+)/build", "POST", FakeDaemon.build),
    (r"/v1/templates/([^/]+)/bake", "POST", FakeDaemon.bake),
    (r"/v1/sandboxes", "POST", FakeDaemon.create),
    (r"/v1/sandboxes", "GET", FakeDaemon.list_sandboxes),
    (S, "GET", FakeDaemon.get),
    (S, "DELETE", FakeDaemon.delete),
    (S + "/extend", "POST", FakeDaemon.extend),
    (S + "/fork", "POST", FakeDaemon.fork),
    (S + "/exec", "POST", FakeDaemon.exec),
    (S + "/exec/stream", "POST", FakeDaemon.exec_stream),
    (S + "/files", "GET", FakeDaemon.read_file),
    (S + "/files", "PUT", FakeDaemon.write_file),
    (S + "/files", "DELETE", FakeDaemon.remove),
    (S + "/files/list", "GET", FakeDaemon.list_dir),
    (S + "/files/stat", "GET", FakeDaemon.stat),
    (S + "/files/mkdir", "POST", FakeDaemon.mkdir),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def address_string(self) -> str:
        return "unix" if isinstance(self.client_address, (str, bytes)) else str(self.client_address[0])

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            self.server.fake.handle(self, self.command, parts.path, query, body)
        except ApiError as e:
            self.send_json(e.status, {"error": {"code": e.code, "message": e.message}})

    do_GET = do_POST = do_PUT = do_DELETE = _dispatch

    def send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, status: int, value: Any) -> None:
        self.send_bytes(status, json.dumps(value).encode(), "application/json")

    def send_empty(self) -> None:
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def send_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
