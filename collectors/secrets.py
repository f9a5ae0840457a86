"""Credentials read from a file or an environment variable, never written in a config file.

An SNMP community, a USM key or a bearer token is configured as a *reference*:

    community: {file: /etc/scaler/snmp-community}      # first line of the file, stripped
    auth_key:  {env: SCALER_SNMP_AUTH_KEY}

and resolved once when the configuration is validated. A relative `file` is relative to the
`base_dir` given in the validation context (the service passes the directory of scaler.yaml, as
Prometheus does for its `*_file` settings), else to the working directory. The resolved value is a
`pydantic.SecretStr`: its
`repr`/`str` print `**********`, so it cannot leak into a log line, an exception message or an API
answer by accident; call `.get_secret_value()` only where the protocol needs the bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, SecretStr, ValidationInfo, model_validator

__all__ = ["Secret", "SecretRef", "resolve_secret"]


class SecretRef(BaseModel):
    """Where a secret lives: exactly one of `file` (its first line) or `env` (a variable's value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.file is None) == (self.env is None):
            raise ValueError("a secret needs exactly one of 'file' or 'env'")
        return self

    def describe(self) -> str:
        return f"file {self.file}" if self.file is not None else f"env ${self.env}"

    def read(self, base_dir: Path | None = None) -> SecretStr:
        """The secret's value. Raises ValueError naming the file or variable (never the value)."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ValueError(f"environment variable {self.env} is not set")
        else:
            assert self.file is not None
            path = self.file if self.file.is_absolute() or base_dir is None else base_dir / self.file
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"cannot read secret file {path}: {exc.strerror or exc}") from None
            lines = text.splitlines()
            value = lines[0].strip() if lines else ""
        if not value:
            raise ValueError(f"secret from {self.describe()} is empty")
        return SecretStr(value)


def resolve_secret(value: Any, info: ValidationInfo) -> Any:
    """Pydantic before-validator: `{file: …}` / `{env: …}` → SecretStr. A plain string is refused so
    that no credential ends up in a config file (or in its version control)."""
    if isinstance(value, SecretStr):
        return value
    if isinstance(value, str):
        raise ValueError("write credentials as {file: PATH} or {env: VARIABLE}, not inline")
    base = (info.context or {}).get("base_dir") if info.context is not None else None
    return SecretRef.model_validate(value).read(Path(base) if base is not None else None)


# A config field holding a credential: `community: Secret`.
Secret = Annotated[SecretStr, BeforeValidator(resolve_secret)]
