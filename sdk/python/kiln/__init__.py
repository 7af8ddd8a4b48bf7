"""kiln: run untrusted CI builds in disposable microVMs, from Python.

    from kiln import Sandbox

    with Sandbox.create(template="base", ttl_seconds=300) as sbx:
        sbx.filesystem.write("/src/build.sh", "make && make test\\n")
        result = sbx.exec("sh /src/build.sh", cwd="/src", timeout_seconds=120)
        print(result.stdout, result.exit_code)

The daemon (``kiln serve``) is found through ``KILN_HOST`` (``unix:///path/kiln.sock`` or
``http://host:port`` with ``KILN_TOKEN``), by default ``unix://$KILN_HOME/kiln.sock``.
"""

from .client import Client, __version__, default_host, parse_host
from .errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    KilnConnectionError,
    KilnError,
    KilnTimeoutError,
    LimitError,
    NotFoundError,
    SandboxFailedError,
)
from .filesystem import Filesystem
from .sandbox import Sandbox
from .templates import bake_template, build_template, list_templates
from .types import BakeResult, ExecResult, FileInfo, SandboxInfo, TemplateInfo

__all__ = [
    "__version__",
    "Client",
    "default_host",
    "parse_host",
    "Sandbox",
    "Filesystem",
    "SandboxInfo",
    "ExecResult",
    "FileInfo",
    "TemplateInfo",
    "BakeResult",
    "list_templates",
    "build_template",
    "bake_template",
    "KilnError",
    "BadRequestError",
    "AuthError",
    "NotFoundError",
    "ConflictError",
    "LimitError",
    "SandboxFailedError",
    "KilnConnectionError",
    "KilnTimeoutError",
]
