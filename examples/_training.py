"""Training for the examples: Adam in jitted segments between checkpoints.

Shared by ``icl_transformer.py`` and ``nnx_lm.py`` (imported as a sibling module: the examples
folder is on ``sys.path`` when an example runs as a script, and the tests and benchmarks put it
there when they load one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def make_train_segment(
    loss_fn: Callable, optimizer: optax.GradientTransformation, batch_at: Callable, seed: int
) -> Callable:
    """A jitted ``(params, opt_state, start, length) -> (params, opt_state, mean loss)`` running
    ``length`` optimizer steps from global step ``start`` in one ``fori_loop`` (one compile for
    every segment length); step s trains on ``batch_at(fold_in(fold_in(key(seed), 1), s))``, a
    fresh batch per step that does not depend on how the steps are split into segments."""
    data_key = jax.random.fold_in(jax.random.key(seed), 1)

    @jax.jit
    def segment(params: Any, opt_state: Any, start: Any, length: Any):
        def step(i, carry):
            params, opt_state, total = carry
            batch = batch_at(jax.random.fold_in(data_key, start + i))
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, total + loss

        params, opt_state, total = jax.lax.fori_loop(
            0, length, step, (params, opt_state, jnp.zeros(()))
        )
        return params, opt_state, total / jnp.maximum(length, 1)

    return segment
