"""Logging setup: text or JSON lines, with the per-request fields the access log attaches."""
from __future__ import annotations

import json
import logging
import sys

REQUEST_FIELDS = ("request_id", "status", "model", "duration_ms", "ttft_ms", "prompt_tokens",
                  "completion_tokens", "prompt")  # prompt: only with --log-prompts


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{key}={getattr(record, key)!r}" if key == "prompt" else f"{key}={getattr(record, key)}"
                  for key in REQUEST_FIELDS
                  if getattr(record, key, None) is not None]
        return f"{line} {' '.join(fields)}" if fields else line


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
        return json.dumps(payload, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # libllama is chatty at INFO; show its warnings unless debugging.
    logging.getLogger("kolosal.libllama").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
