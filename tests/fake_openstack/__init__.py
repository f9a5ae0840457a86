"""A FAKE OpenStack cloud for tests (Keystone, Nova, Neutron, Glance, Heat over HTTP on loopback)."""

from tests.fake_openstack.cloud import ApiError, FakeCloud, Hooks, Knobs
from tests.fake_openstack.http import FakeOpenStack

__all__ = ["ApiError", "FakeCloud", "FakeOpenStack", "Hooks", "Knobs"]
