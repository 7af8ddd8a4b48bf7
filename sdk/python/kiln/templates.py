"""Templates: list them, build one, bake its snapshot.

    from kiln import list_templates, build_template
    for t in list_templates():
        print(t.name, t.digest)
"""

from __future__ import annotations

from typing import Any

from .client import Client, quote_segment
from .errors import KilnError
from .types import BakeResult, TemplateInfo

__all__ = ["list_templates", "build_template", "bake_template"]


def _client(client: Client | None) -> Client:
    return client if client is not None else Client()


def _object(answer: Any, what: str) -> dict[str, Any]:
    if isinstance(answer, dict) and isinstance(answer.get("template"), dict):
        answer = answer["template"]
    if not isinstance(answer, dict):
        raise KilnError(f"the kiln daemon answered {what} with {str(answer)[:200]!r}", code="bad_response")
    return answer


def list_templates(*, client: Client | None = None) -> list[TemplateInfo]:
    """The templates the daemon knows (``digest`` is None for those not built yet)."""
    c = _client(client)
    answer = c.request_json("GET", "/v1/templates", timeout=c.timeout)
    if isinstance(answer, dict) and isinstance(answer.get("templates"), list):
        answer = answer["templates"]
    if not isinstance(answer, list):
        raise KilnError(f"the kiln daemon answered the template list with {str(answer)[:200]!r}", code="bad_response")
    return [TemplateInfo.from_json(t) for t in answer if isinstance(t, dict)]


def build_template(name: str, force: bool = False, *, client: Client | None = None,
                   timeout: float | None = None) -> TemplateInfo:
    """Builds template ``name`` (again, with ``force``) and returns it; blocks until built
    (``timeout`` defaults to the client's long timeout, 300 s)."""
    c = _client(client)
    answer = c.request_json("POST", f"/v1/templates/{quote_segment(name)}/build", json_body={"force": bool(force)},
                            timeout=c.long_timeout if timeout is None else timeout)
    return TemplateInfo.from_json(_object(answer, "build"))


def bake_template(name: str, *, client: Client | None = None, timeout: float | None = None) -> BakeResult:
    """Bakes template ``name``'s snapshot (what sandboxes are restored from) and returns it."""
    c = _client(client)
    answer = c.request_json("POST", f"/v1/templates/{quote_segment(name)}/bake",
                            timeout=c.long_timeout if timeout is None else timeout)
    if not isinstance(answer, dict):
        raise KilnError(f"the kiln daemon answered bake with {str(answer)[:200]!r}", code="bad_response")
    return BakeResult.from_json(answer)
