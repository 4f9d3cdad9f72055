"""Query-string helpers the dashboard's paginated, filtered pages share."""

from __future__ import annotations

from django.http import QueryDict


def without(params: QueryDict, *names: str) -> str:
    """The query string less ``names``, to append page and sort links to."""
    kept = params.copy()
    for name in names:
        kept.pop(name, None)
    return kept.urlencode()
