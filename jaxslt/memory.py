"""How much memory a run needs, and how many chains to run at once.

The memory model (``chain_memory``): per live chain its kernel state, one gradient and what an
acceptance check holds (~2 more parameter copies), plus per-example moments with observables;
fixed: w*, one working copy of the sampled part, and the data. ``chain_batch_size="auto"``
compares it with 80% of the free memory of the devices (``available_memory``) and picks the
largest group of chains that fits (``auto_chain_batch_size``); ``benchmarks/memory_model.py``
checks the model against XLA's compiled memory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxslt.chains import data_size
from jaxslt.config import SamplingConfig
from jaxslt.core import restricted_loss
from jaxslt.kernels import make_kernel, sampler_capabilities
from jaxslt.posterior import localized_posterior
from jaxslt.restriction import Restriction
from jaxslt.types import PyTree

__all__ = [
    "MemoryModel",
    "auto_chain_batch_size",
    "available_memory",
    "chain_memory",
    "memory_chain_batch_size",
    "with_chain_groups",
]


def available_memory(device: jax.Device) -> int | None:
    """Bytes free for a new program on ``device``: the allocator's limit less what is in use on
    GPU/TPU, the host's available physical memory for a CPU device; None when unknown."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    if device.platform == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # not Linux
            return None
    return None


def auto_chain_batch_size(
    num_chains: int,
    *,
    chain_bytes: int,
    fixed_bytes: int,
    available: int | None,
    chain_axis: int = 1,
    budget: float = 0.8,
) -> int | None:
    """How many chains to run at once: ``None`` (all vmapped) when they fit, else the largest
    group size k (a divisor of ``num_chains``, a multiple of ``chain_axis``) with

        fixed_bytes + (k / chain_axis) · chain_bytes ≤ budget · available

    per device (``chain_bytes``: one live chain's bytes on a device, ``fixed_bytes``: w*, data
    and one working copy there). When even the smallest group does not fit, the smallest group
    (the run may then fail with an out-of-memory error that names the sizes). ``available``
    None (unknown): all chains at once."""
    groups = [k for k in range(chain_axis, num_chains + 1, chain_axis) if num_chains % k == 0]
    if available is None or not groups:
        return None
    fits = [k for k in groups if fixed_bytes + k // chain_axis * chain_bytes <= budget * available]
    if fits and fits[-1] == num_chains:
        return None
    return fits[-1] if fits else groups[0]


def _nbytes(tree: PyTree) -> int:
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


class MemoryModel(NamedTuple):
    """The memory model on one device without a mesh, in bytes: ``chain`` per live chain (its
    kernel state, one gradient, what an acceptance check holds, per-example moments for
    observables); ``params`` fixed and split with the parameters (w*, one working copy of the
    sampled part); ``data`` fixed and replicated."""

    chain: int
    params: int
    data: int


def chain_memory(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    config: SamplingConfig,
    *,
    restrict: Restriction | None = None,
    checks: bool,
) -> MemoryModel:
    """The ``MemoryModel`` of a run with ``config`` (its sampler, options, batch size and
    observables; ``checks``: whether acceptance checks are compiled)."""
    sampled_loss, sampled = (
        (loss_fn, params) if restrict is None else restricted_loss(loss_fn, params, restrict)
    )
    batch_size = min(data_size(data), config.batch_size or data_size(data))

    def init_state():
        posterior = localized_posterior(sampled_loss, sampled, nbeta=1.0, localization=1.0)
        kernel = make_kernel(config.sampler, sampled_loss, posterior, config.sampler_options).kernel
        batch = jax.tree.map(lambda x: x[:batch_size], data)
        return kernel.init(sampled, jax.random.key(0), batch)

    state_bytes, param_bytes = _nbytes(jax.eval_shape(init_state)), _nbytes(sampled)
    # one gradient; at an acceptance check XLA also holds the new position and its gradient
    # (the step's own gradient is reduced first): ~2.1 more copies (benchmarks/memory_model.py)
    chain_bytes = state_bytes + param_bytes * (4 if checks else 1)
    if config.observables:
        chain_bytes += 3 * 4 * data_size(data)  # running mean, M2 and log-sum-exp per example
    return MemoryModel(chain_bytes, _nbytes(params) + param_bytes, _nbytes(data))


def memory_chain_batch_size(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    config: SamplingConfig,
    *,
    restrict: Restriction | None = None,
    checks: bool,
) -> int | None:
    """``chain_batch_size="auto"`` resolved: ``chain_memory`` against the free memory of the
    devices (this process's devices of ``config.mesh``, else the first local device),
    parameter sizes split over the mesh's ``"model"`` axis."""
    memory = chain_memory(loss_fn, params, data, config, restrict=restrict, checks=checks)
    mesh = config.mesh
    shape = dict(mesh.shape) if mesh is not None else {}
    model = shape.get("model", 1)
    devices = mesh.devices.flat if mesh is not None else jax.local_devices()[:1]
    free = [available_memory(d) for d in devices if d.process_index == jax.process_index()]
    return auto_chain_batch_size(
        config.num_chains,
        chain_bytes=memory.chain // model,
        fixed_bytes=memory.params // model + memory.data,
        available=None if not free or None in free else min(free),
        chain_axis=shape.get("chain", 1),
    )


def with_chain_groups(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    config: SamplingConfig,
    *,
    restrict: Restriction | None = None,
) -> SamplingConfig:
    """``config`` with ``chain_batch_size="auto"`` resolved by ``memory_chain_batch_size``
    (acceptance checks counted when the sampler's steps get them); any other value kept."""
    if config.chain_batch_size != "auto":
        return config
    checks = config.acceptance_checks > 0 and sampler_capabilities(config.sampler).sgld_transition
    return dataclasses.replace(
        config,
        chain_batch_size=memory_chain_batch_size(
            loss_fn, params, data, config, restrict=restrict, checks=checks
        ),
    )
