"""Errors raised by actuators: every side effect fails with one of these, never a bare OSError.

    ActuatorError
    ├── OrchestratorError          create/delete/list of LB instances failed
    │   ├── InstanceNotFound       the instance the caller named does not exist
    │   ├── QuotaExceeded          the cloud refused: a quota is used up (instances, cores, ports, …)
    │   ├── OrchestratorConflict   the cloud refused: an object is in a state that forbids it (HTTP 409)
    │   ├── OrchestratorTimeout    the cloud did not answer within the call's deadline
    │   └── LaunchFailed           the instance exists but will never serve (what a launch breaker counts)
    │       ├── InstanceErrored    the cloud put it in ERROR (the message carries the cloud's fault)
    │       └── BuildTimeout       still building after the driver's build timeout
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


class QuotaExceeded(OrchestratorError):
    """The cloud refused to make an object because a quota is used up; retrying now will not help."""


class OrchestratorConflict(OrchestratorError):
    """The cloud refused the request because of the state of an object (e.g. a port already in use)."""


class OrchestratorTimeout(OrchestratorError):
    """A call to the cloud got no answer within its deadline; whether it took effect is unknown."""


class LaunchFailed(OrchestratorError):
    """The instance was made but will never serve: delete it; repeated ones should stop launches."""


class InstanceErrored(LaunchFailed):
    """The cloud reports the instance in its ERROR state."""


class BuildTimeout(LaunchFailed):
    """The instance stayed in the cloud's building state longer than the driver's build timeout."""


class RouterError(ActuatorError):
    """Reading or programming the VIP's next hops failed."""


class RouterConflict(RouterError):
    """An object with the id we would use exists and was not created by us."""
