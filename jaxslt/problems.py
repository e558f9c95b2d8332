"""Reference problems: everything ``estimate_llc`` needs, plus the exact answer.

Each builder returns a ``Problem(loss_fn, params, data, truth)``; ``truth`` is the exact
``(llc, multiplicity)`` of ``jaxslt.truth`` at the returned ``params`` = w*.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxslt import truth as _truth

PyTree = Any


class Problem(NamedTuple):
    loss_fn: Callable[[PyTree, PyTree], jax.Array]
    params: PyTree
    data: PyTree
    truth: _truth.LearningCoefficient


def dln_forward(weights: Sequence[jax.Array], x: jax.Array) -> jax.Array:
    """f(x) = W_L ⋯ W_1 x for a batch of row vectors x (weights stored as (H_{l-1}, H_l))."""
    for w in weights:
        x = x @ w
    return x


def dln_loss(weights: Sequence[jax.Array], batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Mean over the batch of the Gaussian negative log-likelihood ½·||y − f(x)||² (σ = 1)."""
    x, y = batch
    return 0.5 * jnp.mean(jnp.sum(jnp.square(y - dln_forward(weights, x)), axis=-1))


def identity_block(rows: int, cols: int, rank: int, dtype=jnp.float32) -> jax.Array:
    """The zero-padded identity block [[I_r, 0], [0, 0]] of shape (rows, cols)."""
    return jnp.eye(rows, cols, dtype=dtype) * (jnp.arange(cols) < rank)


def deep_linear_network(
    widths: Sequence[int],
    rank: int,
    *,
    key: jax.Array,
    num_examples: int = 10_000,
    noise: float = 0.0,
    dtype=jnp.float32,
) -> Problem:
    """A deep linear network teacher–student problem at a most-singular point.

    widths = (H_0 (input), …, H_L (output)). w* has every layer equal to the zero-padded
    identity block (w* = 0 when rank = 0), so the teacher map W_L⋯W_1 has rank ``rank``; inputs
    x ~ N(0, I), targets y = W*x + noise·ξ. The loss is the Gaussian NLL ½||y − f(x)||² averaged
    over examples. The truth is Aoyagi's λ for (widths, rank) — the local λ at this point. With
    ``noise > 0``, w* is the teacher, not the empirical minimum (see the reference's caution).
    """
    lc = _truth.deep_linear_network(widths, rank)
    params = tuple(identity_block(a, b, rank, dtype) for a, b in itertools.pairwise(widths))
    kx, kn = jax.random.split(key)
    x = jax.random.normal(kx, (num_examples, widths[0]), dtype)
    y = dln_forward(params, x) + noise * jax.random.normal(kn, (num_examples, widths[-1]), dtype)
    return Problem(dln_loss, params, (x, y), lc)
