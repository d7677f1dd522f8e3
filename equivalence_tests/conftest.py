"""Test configuration.

* A fixed hypothesis profile (derandomized), so CI runs the same examples every time.
* The fused optimizers run *uncompiled* (the same code, eagerly; `optimized.set_compile`) unless a test is
  marked `compiled`. On a cold inductor cache each graph variant costs 5-40 s to compile on 2 cores, and
  the suite exercises hundreds of them, so `make test` compiles one representative set (each class, each
  phase, fp32 and bf16, 8-bit) and runs every other case eagerly. `CAMEAMP_TEST_COMPILE=1` compiles
  everything; `make verify` always runs compiled.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

import optimized

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("thorough", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

COMPILE_ALL = os.environ.get("CAMEAMP_TEST_COMPILE") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "compiled: run the fused optimizers compiled (torch.compile)")


@pytest.fixture(autouse=True)
def compile_mode(request, monkeypatch):
    """Compile the fused steps only for tests marked `compiled` (or with CAMEAMP_TEST_COMPILE=1); child
    processes inherit the choice through CAMEAMP_COMPILE."""
    compiled = COMPILE_ALL or request.node.get_closest_marker("compiled") is not None
    monkeypatch.setenv("CAMEAMP_COMPILE", "1" if compiled else "0")
    optimized.set_compile(compiled)
    yield
    optimized.set_compile(True)
