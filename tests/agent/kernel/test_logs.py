"""One log line per event, in logfmt or JSON: a short message and the call's fields, the same on both sides."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from agent.kernel import logs


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tests.kernel.logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.handlers[:] = []


def emit(lines: tuple[logging.Logger, io.StringIO], output: logs.LogFormat, *args: object, **kwargs: object) -> str:
    logger, stream = lines
    logger.handlers[0].setFormatter(logs.StructuredFormatter(output))
    stream.seek(0)
    stream.truncate()
    logger.info(*args, **kwargs)  # type: ignore[arg-type]
    return stream.getvalue()


def test_a_logfmt_line_has_time_level_logger_message_and_the_fields_quoted_only_when_needed(lines) -> None:
    line = emit(lines, "logfmt", "model swapped", extra={"model": "parts", "path": "/a b", "fallback": False, "n": 3})

    assert line.endswith("\n") and line.count("\n") == 1
    head, rest = line.split(" ", 1)
    assert head.startswith("ts=") and head.endswith("Z") and "T" in head
    assert rest.rstrip("\n") == (
        'level=info logger=tests.kernel.logs msg="model swapped" model=parts path="/a b" fallback=false n=3'
    )


def test_a_json_line_holds_the_same_keys_and_keeps_numbers_and_objects(lines) -> None:
    line = emit(lines, "json", "bridge counters", extra={"accepted": {"status": 2}, "seq": 7, "none": None})

    entry = json.loads(line)
    assert list(entry) == ["ts", "level", "logger", "msg", "accepted", "seq", "none"]
    assert entry["msg"] == "bridge counters" and entry["accepted"] == {"status": 2} and entry["seq"] == 7
    assert entry["none"] is None


def test_quotes_newlines_and_a_traceback_stay_on_one_line(lines) -> None:
    logger, stream = lines
    logger.handlers[0].setFormatter(logs.StructuredFormatter("logfmt"))
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logger.exception("update failed", extra={"detail": 'say "hi"\nthen go'})

    line = stream.getvalue()
    assert line.count("\n") == 1
    assert 'detail="say \\"hi\\"\\nthen go"' in line
    assert 'exc="Traceback (most recent call last):\\n' in line and "ValueError: bad\\nvalue" in line


def test_a_field_never_hides_the_line_s_own_keys(lines) -> None:
    entry = json.loads(emit(lines, "json", "clash", extra={"ts": "mine", "level": "mine"}))
    assert entry["ts"].endswith("Z") and entry["level"] == "info"
    assert entry["ts_"] == "mine" and entry["level_"] == "mine"


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text"):
        logs.StructuredFormatter("text")  # type: ignore[arg-type]
