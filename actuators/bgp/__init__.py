"""The `bgp` router driver: `router` (the Router interface and ExaBGP's API stream), `speaker` (ExaBGP
as a supervised child process), `paths` (what the routers may hold, across restarts), `config` (its
options) and `bridge` (the API process ExaBGP runs). Re-exports the driver and its options.
"""

from actuators.bgp.config import BgpRouterConfig
from actuators.bgp.router import BgpRouter

__all__ = ["BgpRouter", "BgpRouterConfig"]
