"""Strict readers for settings that come from the environment.

Every reader names the variable in its error, so a typo in a deployment fails
at start-up with a message an operator can act on instead of a default that
silently does the wrong thing. ``NAME_FILE`` is honoured for secrets
(Docker/Kubernetes secrets are mounted as files).
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value


def string(name: str, default: str | None = None) -> str | None:
    value = _raw(name)
    return default if value is None else value


def secret(name: str, default: str | None = None) -> str | None:
    """Read NAME, or the contents of the file named by NAME_FILE."""
    direct = _raw(name)
    path = _raw(f"{name}_FILE")
    if direct is not None and path is not None:
        raise ImproperlyConfigured(f"Set {name} or {name}_FILE, not both.")
    if path is not None:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc}") from exc
    return default if direct is None else direct


def boolean(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use one of 1/0, true/false, yes/no, on/off).")


def integer(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum of {minimum}.")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={number} is above the maximum of {maximum}.")
    return number


def choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _raw(name)
    if value is None:
        return default
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not one of {', '.join(choices)}.")
    return value


def string_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def url(name: str, default: str, schemes: tuple[str, ...], *, from_file: bool = False) -> str:
    """A URL of one of ``schemes``; with ``from_file``, NAME_FILE may hold it (a URL that carries a password)."""
    from urllib.parse import urlsplit

    value = (secret(name) if from_file else _raw(name)) or default
    # Such a URL may carry a password: an error names the variable, never the value.
    shown = f"{name} (a URL that may hold a password)" if from_file else f"{name}={value!r}"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ImproperlyConfigured(f"{shown} is not a valid URL: {exc}.") from None
    if parts.scheme not in schemes:
        raise ImproperlyConfigured(f"{shown} has scheme {parts.scheme!r}; expected one of {', '.join(schemes)}.")
    return value
