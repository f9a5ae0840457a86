"""Errors raised by actuators: every side effect fails with one of these, never a bare OSError.

    ActuatorError
    ├── OrchestratorError          create/delete/list of LB instances failed
    │   └── InstanceNotFound       the instance the caller named does not exist
    └── RouterError                reading or programming VIP next hops failed
        └── RouterConflict         the router holds an object with our id that we did not create

Each carries a message that names the object (instance, VIP, next hop) and keeps the cause
(`raise RouterError(...) from exc`).
"""


class ActuatorError(Exception):
    """Base class of every actuator failure."""


class OrchestratorError(ActuatorError):
    """Creating, deleting, probing or listing LB instances failed."""


class InstanceNotFound(OrchestratorError):
    """The named instance does not exist."""


class RouterError(ActuatorError):
    """Reading or programming the VIP's next hops failed."""


class RouterConflict(RouterError):
    """An object with the id we would use exists and was not created by us."""
