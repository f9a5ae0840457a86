"""The process's log output: `--log-format text` (one line per record, for a terminal) or `json` (one
JSON object per line, for journald, Loki, Elasticsearch …).

A JSON line has `ts` (ISO 8601 UTC, milliseconds), `level`, `logger`, `message`, the structured fields
a record carries — `pool`, `member` (the instance name), `operation` (the operation id), passed as
`log.info(…, extra={"pool": pool})` — and any other `extra` field, then `exc` with the traceback of an
exception. The text format prints the message only (which names pool and member in words).

Handlers write to whatever `sys.stderr` is when a record is emitted, so redirecting stderr later (a
test capturing it, a daemon re-opening it) keeps working.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final, TextIO

FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# The structured fields every part of the scaler uses by these names (first after the message).
FIELDS: Final = ("pool", "member", "operation")
# Libraries whose INFO lines are noise at our INFO level.
NOISY: Final = ("apscheduler", "httpx", "httpcore", "alembic")

# Attributes every LogRecord has: everything else on a record came from `extra`. color_message:
# uvicorn's coloured copy of the message.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message"}


def iso_ms(t: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds (as the API writes times)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages and tracebacks are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": iso_ms(record.created), "level": record.levelname, "logger": record.name,
                               "message": record.getMessage()}
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        for name in FIELDS:
            if extra.get(name) is not None:
                out[name] = extra[name]
        for name, value in extra.items():
            out.setdefault(name, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler on the current sys.stderr (looked up at every record)."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        logging.Handler.__init__(self, level)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {fmt!r} (one of: {', '.join(FORMATS)})")


def setup_logging(fmt: str = "text", verbose: bool = False) -> logging.Handler:
    """Send every record of the process (uvicorn's too: the service passes it no logging config) to
    stderr in `fmt`. Replaces the handler an earlier call installed; leaves other handlers alone."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _StderrHandler):
            root.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(formatter(fmt))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


__all__ = ["FIELDS", "FORMATS", "JsonFormatter", "formatter", "iso_ms", "setup_logging"]
