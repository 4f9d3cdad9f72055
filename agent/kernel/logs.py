"""One log format for the agent and the control plane: a short event message plus structured fields.

A log call names what happened in a few words and passes the facts as fields::

    log.info("model swapped", extra={"model": "parts", "version": "1.2.0"})

``StructuredFormatter`` writes that as one line, either ``logfmt``::

    ts=2026-11-23T01:37:01.473Z level=info logger=agent.updater msg="model swapped" model=parts version=1.2.0

or ``json`` (one object per line, the same keys). Times are UTC with
milliseconds: devices sit in many time zones and their logs are read side by
side with the control plane's. The fields are whatever the call put in
``extra`` (every record attribute the logging module does not set itself); a
traceback goes in ``exc``, on the same line. No Django: the agent configures
it with ``configure()``, the control plane names it in ``LOGGING``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any, Literal

LogFormat = Literal["logfmt", "json"]
FORMATS: tuple[LogFormat, ...] = ("logfmt", "json")

# What every record has: anything else on a record came from the call's ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
# logfmt values with any of these (or nothing at all) are quoted.
_NEEDS_QUOTES = frozenset(' "=\\')


def _plain(value: Any) -> Any:
    """A field's value as JSON holds it: scalars, and lists and objects of them, as they are; anything else as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (dict, list, tuple)):
        try:
            return json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError):
            pass
    return str(value)


def _logfmt_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = (
        json.dumps(value, separators=(",", ":"), ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
    )
    if not text or any(c in _NEEDS_QUOTES or not c.isprintable() for c in text):
        # JSON string escapes: quotes, backslashes, newlines and control characters stay on one line.
        return json.dumps(text, ensure_ascii=False)
    return text


def _logfmt_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in key) or "_"


class StructuredFormatter(logging.Formatter):
    """Formats each record as one ``logfmt`` or ``json`` line: ts, level, logger, msg, then the fields."""

    def __init__(self, output: LogFormat = "logfmt") -> None:
        super().__init__()
        if output not in FORMATS:
            raise ValueError(f"log format {output!r} is not one of {', '.join(FORMATS)}")
        self.output = output

    def entry(self, record: logging.LogRecord) -> dict[str, Any]:
        """The keys and values of one line, in order."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, Any] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD or key.startswith("_"):
                continue
            # A field never hides one of the four above.
            entry[f"{key}_" if key in entry else key] = _plain(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return entry

    def format(self, record: logging.LogRecord) -> str:
        entry = self.entry(record)
        if self.output == "json":
            return json.dumps(entry, ensure_ascii=False, default=str)
        return " ".join(f"{_logfmt_key(key)}={_logfmt_value(value)}" for key, value in entry.items())


def configure(level: str, output: LogFormat, *, stream: IO[str] | None = None) -> None:
    """Send every record at ``level`` or above to ``stream`` (stderr) as ``output`` lines; replaces other handlers."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(StructuredFormatter(output))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
