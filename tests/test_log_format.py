"""Log formatters: one record is one physical line, whatever characters a value holds."""
from __future__ import annotations

import json
import logging
import sys

from kolosal.log_format import JsonFormatter, TextFormatter, escape_control

BREAKS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def record(message: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"bad\n{message}")
        except ValueError:
            exc_info = sys.exc_info()
    item = logging.LogRecord("kolosal.access", logging.INFO, __file__, 1, message, args, exc_info)
    item.__dict__.update(extra)
    return item


def test_escape_control() -> None:
    assert escape_control("a\r\nb\tc") == "a\\r\\nb\\tc"
    assert escape_control("\x00\x1b\x7f\x85\u2028\u2029") == "\\x00\\x1b\\x7f\\x85\\u2028\\u2029"
    assert escape_control("héllo 世界 🙂") == "héllo 世界 🙂"  # printable text is untouched
    assert len(escape_control(BREAKS).splitlines()) == 1


def test_text_formatter_escapes_message_and_fields() -> None:
    line = TextFormatter().format(record("%s %s", "GET", f"/x{BREAKS}y", model=f"m{BREAKS}",
                                         request_id="r1", status=404))
    assert len(line.splitlines()) == 1
    assert "/x\\r\\n" in line and "model=m\\r\\n" in line and "status=404" in line


def test_text_formatter_indents_tracebacks() -> None:
    text = TextFormatter().format(record("boom\n2099-01-01 forged", exc=True))
    first, *rest = text.splitlines()
    assert "boom\\n2099-01-01 forged" in first
    assert rest and all(line.startswith("  ") for line in rest)


def test_json_formatter_one_object_per_line() -> None:
    value = f"m{BREAKS}\x7f{{\"forged\": 1}}"
    line = JsonFormatter().format(record("%s", f"p{BREAKS}", model=value, exc=True))
    assert len(line.splitlines()) == 1
    payload = json.loads(line)
    assert payload["model"] == value and payload["message"] == f"p{BREAKS}"
    assert "forged" not in payload
