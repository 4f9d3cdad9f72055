"""The one error type services raise for a request they refuse.

Django-free, so Django-free helpers (``registry.inspection``) can raise it too.
The API's exception handler (``core.api.exceptions``) turns it into the one
error shape, ``{code, detail, fields?}``; docs/api.md lists every code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class ServiceError(Exception):
    """A refusal with a stable machine-readable ``code``, a sentence for people and an HTTP status.

    ``fields`` names the request fields at fault (field -> messages);
    ``headers`` go out with the response (e.g. ``Retry-After`` on a 503).
    """

    def __init__(
        self,
        code: str,
        detail: str,
        status: int = 400,
        *,
        fields: Mapping[str, Iterable[str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status
        self.fields = {name: _messages(found) for name, found in fields.items()} if fields else None
        self.headers = dict(headers or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.detail!r}, {self.status})"


def _messages(found: Iterable[str]) -> list[str]:
    return [found] if isinstance(found, str) else [str(message) for message in found]
