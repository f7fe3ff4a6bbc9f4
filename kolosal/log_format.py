"""Logging setup: text or JSON lines, with the per-request fields the access log attaches.

Every logged value may carry client bytes (a percent-encoded CR/LF in the path, a ``model``
string), so both formats escape control characters: one record is always one physical
line, and nobody can forge a second one."""
from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

REQUEST_FIELDS = ("request_id", "status", "model", "key", "duration_ms", "ttft_ms", "prompt_tokens",
                  "completion_tokens", "prompt")  # prompt: only with --log-prompts

# C0 and C1 controls, DEL, and every character Python's str.splitlines() treats as a line
# break (\x1c-\x1e, \x85, U+2028, U+2029); log readers split on some of them.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return SHORT_ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100
                                       else f"\\u{ord(char):04x}")


def escape_control(text: str) -> str:
    """``text`` with each control or line-breaking character written as an escape."""
    return CONTROL.sub(_escape_char, text)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # The message is rendered, escaped, then formatted as a plain string.
        safe = logging.makeLogRecord({**record.__dict__, "msg": escape_control(record.getMessage()),
                                      "args": None, "exc_info": None, "exc_text": None,
                                      "stack_info": None})
        line = super().format(safe)
        fields = [f"{key}={self._field(key, getattr(record, key))}" for key in REQUEST_FIELDS
                  if getattr(record, key, None) is not None]
        if fields:
            line = f"{line} {' '.join(fields)}"
        trace = self._trace(record)
        # A traceback stays readable, but each of its lines is indented: no line of it can
        # pass for a record of its own.
        return line + "".join(f"\n  {escape_control(part)}" for part in trace.splitlines())

    @staticmethod
    def _field(key: str, value: Any) -> str:
        if key == "prompt":
            return repr(value)  # quoted, with its escapes
        return escape_control(str(value))

    def _trace(self, record: logging.LogRecord) -> str:
        parts = []
        if record.exc_info:
            parts.append(self.formatException(record.exc_info))
        elif record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return "\n".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                   "message": record.getMessage()}
        for key in REQUEST_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        # json escapes C0 controls itself; DEL, C1 and U+2028/2029 pass through raw with
        # ensure_ascii=False, and they can only occur inside strings, where \\uXXXX is valid.
        return CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(payload, ensure_ascii=False))


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # libllama is chatty at INFO; show its warnings unless debugging.
    logging.getLogger("kolosal.libllama").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
