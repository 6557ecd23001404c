"""The dataset tests' local Ray: one per test module that asks for it, 2 CPUs, bound to 127.0.0.1, no dashboard,
shut down when the module's tests are done."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def local_ray():
    """Start Ray for the module (modules opt in with pytest.mark.usefixtures("local_ray"))."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    assert ray.util.get_node_ip_address() == "127.0.0.1", "the test Ray must listen on the loopback address only"
    yield
    ray.shutdown()
