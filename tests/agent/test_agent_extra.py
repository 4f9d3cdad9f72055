"""``pip install 'edgefleet[agent]'`` stays light: its requirement closure holds no Django, Celery or psycopg.

The extra's own requirements come from pyproject.toml (the installed metadata of an editable
install may predate an edit); the rest of the closure from the installed distributions'
metadata, which takes milliseconds where a real install into a fresh environment takes minutes.
"""

from __future__ import annotations

from importlib import metadata

import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.paths import ROOT

SERVER_ONLY = {"django", "djangorestframework", "celery", "psycopg", "psycopg2", "psycopg2-binary", "django-filter"}

PYPROJECT = ROOT / "pyproject.toml"


def _requires(name: str) -> list[str]:
    if canonicalize_name(name) != "edgefleet":
        return metadata.distribution(name).requires or []
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    lines = list(project.get("dependencies", []))
    for extra, requirements in project["optional-dependencies"].items():
        lines += [f"{r}; extra == '{extra}'" for r in requirements]
    return lines


def closure(root: str, extras: set[str]) -> set[str]:
    seen: set[str] = set()
    pending: list[tuple[str, set[str]]] = [(root, extras)]
    expanded: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, wanted = pending.pop()
        if (name, frozenset(wanted)) in expanded:
            continue
        expanded.add((name, frozenset(wanted)))
        for line in _requires(name):
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is not None and not any(
                marker.evaluate({**default_environment(), "extra": extra}) for extra in (wanted or {""})
            ):
                continue
            child = canonicalize_name(requirement.name)
            if child == canonicalize_name(root):
                pending.append((root, set(requirement.extras)))  # edgefleet[server] pulls edgefleet[agent]
                continue
            if child not in seen:
                seen.add(child)
                pending.append((child, set(requirement.extras)))
    return seen


def test_the_agent_extra_pulls_no_django_celery_or_psycopg() -> None:
    agent = closure("edgefleet", {"agent"})
    assert {"onnxruntime", "paho-mqtt", "numpy", "cryptography"} <= agent
    assert not agent & SERVER_ONLY, sorted(agent & SERVER_ONLY)


def test_the_check_would_notice_a_server_dependency() -> None:
    # The same resolution on the server extra finds Django: the test above is not vacuous.
    assert "django" in closure("edgefleet", {"server"})
