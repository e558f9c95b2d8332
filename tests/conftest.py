"""Shared fixtures: small problems whose exact answers are known; the Hypothesis profiles."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Hypothesis profiles, chosen by HYPOTHESIS_PROFILE (default "ci"):
# - "ci": derandomized — every run draws the same examples (seeded from each test's source), no
#   example database (a failure found while exploring is not replayed into CI) and no check that
#   depends on wall-clock time (deadline, too_slow), so `pytest -n 2` on a loaded machine gives
#   the same verdict every time. A failure prints the blob that reproduces it.
# - "dev": explores new examples on every run (and keeps the database), to look for failures.
# Tests set only max_examples (their cost); they inherit everything else from the profile.
_TIMING = [HealthCheck.too_slow]
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=_TIMING,
)  # fmt: skip
settings.register_profile("dev", derandomize=False, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The slowest test files start first. With `--dist loadfile` each file is one unit of work, and
# pytest-xdist by default queues the files by their number of tests, so the few-but-slow files
# (an example run, the TMS subprocess, the kill -9 study) came last and one worker finished
# early; `--no-loadscope-reorder` (pyproject addopts) keeps this collection order instead.
# Order measured with `pytest -n 2 --durations=0` on the 2-core VM (worker-seconds per file:
# estimator 236, examples 112, readme 88, calibration 69, tms 61, study_crash 59, devices 55,
# kernels 51, models 47, chains 46, restriction 46, transformer 44); files not named follow
# in their usual order.
SLOWEST_FIRST = (
    "test_estimator.py", "test_examples.py", "test_readme.py", "test_calibration.py",
    "test_tms.py", "test_study_crash.py", "test_devices.py", "test_kernels.py", "test_models.py",
    "test_chains.py", "test_restriction.py", "test_transformer.py",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files keep order


# A regular quadratic model L(w) = L0 + ½ Σ_i h_i (w_i − w*_i)² with w* ≠ 0 and L0 ≠ 0, so that
# both the centring on w* and the subtraction of L_n(w*) are exercised. The loss ignores the
# data (full-batch SGLD on it is exactly the Gaussian AR(1) process of jaxslt.truth).
HESSIAN = np.array([0.5, 2.0, 8.0])
CENTER = np.array([0.3, -1.2, 2.0])
L0 = 0.7


def quadratic_loss(params, batch):
    del batch
    h = jnp.asarray(HESSIAN, params["w"].dtype)
    c = jnp.asarray(CENTER, params["w"].dtype)
    return L0 + 0.5 * jnp.sum(h * (params["w"] - c) ** 2)


def quadratic_params():
    return {"w": jnp.asarray(CENTER, jnp.float32)}


def dummy_data(n: int = 64):
    return jnp.zeros((n, 1), jnp.float32)


@pytest.fixture(scope="module")
def restore_compilation_cache():
    """study.run points JAX's persistent compilation cache at the store's folder for the rest
    of the process; undo it after the module that ran studies, so no other test inherits it."""
    from jax.experimental.compilation_cache import compilation_cache

    saved = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    yield
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
    compilation_cache.reset_cache()


_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


@pytest.fixture
def traces():
    """A Counter of how many times each function (by name) was traced since the test started,
    from JAX's public monitoring events: a jitted function traced again missed its cache, so
    ``traces["sample_llc"]`` unchanged across calls means the compiled program was reused."""
    import collections

    seen: collections.Counter = collections.Counter()

    def listener(event, duration, **kwargs):
        del duration
        if event == _TRACE_EVENT:
            seen[kwargs.get("fun_name")] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield seen
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture
def compiles():
    """A Counter of XLA compiles since the test started, by (function name, thread name), from
    JAX's public monitoring events."""
    import collections
    import threading

    seen: collections.Counter = collections.Counter()

    def listener(event, duration, **kwargs):
        del duration
        if event == "/jax/core/compile/backend_compile_duration":
            seen[kwargs.get("fun_name"), threading.current_thread().name] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield seen
    jax.monitoring.unregister_event_duration_listener(listener)


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@contextlib.contextmanager
def example_module(name: str):
    """``examples/<name>.py`` imported as a module (the examples are scripts, not a package),
    registered in ``sys.modules`` while in use (dataclasses resolve annotations through it),
    with the examples folder on ``sys.path`` as when it runs as a script (its sibling
    ``_training``)."""
    spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
        sys.path.remove(str(EXAMPLES))
