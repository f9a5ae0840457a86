"""Errors raised by collectors. "I could not read it" is an error, never a zero.

    CollectorError             the source could not be read; the message names target and reason
    ├── CollectorTimeout       no answer within the target's timeout
    ├── CollectorAuthError     credentials refused (HTTP 401/403, SNMP auth/priv failure)
    └── CollectorParseError    the source answered something we cannot parse

`reason` is a short stable word ("timeout", "auth", "http_503", "parse", "connect", ...) used as a
metric label and shown by `scaler why`.
"""


class CollectorError(Exception):
    """A source could not be read."""

    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class CollectorTimeout(CollectorError):
    reason = "timeout"


class CollectorAuthError(CollectorError):
    reason = "auth"


class CollectorParseError(CollectorError):
    reason = "parse"
