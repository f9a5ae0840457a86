"""Errors of the service. Each names what is wrong and where.

    ScalerError
    ├── ConfigError        scaler.yaml or a policy file is invalid; `.problems` lists every one as
    │                      "FILE:LINE:COL: key.path: message"
    ├── StoreError         the database cannot be opened, migrated or locked
    └── LifecycleError     an operation step failed (wraps the actuator's error)

Collector and actuator errors are defined in their own packages and wrapped here with context.
"""

from __future__ import annotations


class ScalerError(Exception):
    """Base class of the service's errors."""


class ConfigError(ScalerError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class StoreError(ScalerError):
    pass


class LifecycleError(ScalerError):
    pass
