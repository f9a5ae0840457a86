"""scaler: autoscaler for fleets of HAProxy load-balancer VMs sharing one ECMP-routed /32 VIP.

`__version__` has one source: the `version` of pyproject.toml, as the installed distribution reports
it (`scaler --version`, the API document, `scaler_build_info`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scaler")
except PackageNotFoundError:        # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
